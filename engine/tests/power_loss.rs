//! Simulated power loss through the whole runtime.
//!
//! Each seed drives the engine on the simulated disk with a seeded command mix
//! (reserves, orders, payments, cancellations, expiries, snapshots) across several
//! small WAL segments, lets the disk die at a seeded storage operation, then cuts the
//! power: unsynced pages are dropped, torn or garbled. The engine must reopen, and
//! its state must equal a reference built from exactly the acknowledged commands
//! plus a prefix of those still in flight: never a half-applied one.
//!
//! A failing seed is printed; `SURGE_SEED=<n> cargo test --test power_loss` reruns it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use surge_engine::wal::{SimStorage, WalConfig};
use surge_engine::{
    CancelReason, Clock, Command, Durability, Engine, EngineConfig, EngineHandle, Error, LineReq,
    OrderId, OrderLineReq, Query, QueryReply, ReservationId, State,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const SKUS: u64 = 8;
const SEGMENT_BYTES: u64 = 8 * 4096;
const OPS: u64 = 700;
const TTL_MS: u64 = 5_000;

fn config(clock: &Arc<AtomicU64>) -> EngineConfig {
    EngineConfig {
        durability: Durability::Sync,
        wal: WalConfig {
            segment_bytes: SEGMENT_BYTES,
            snapshots_kept: 2,
        },
        clock: Clock::manual(Arc::clone(clock)),
        snapshot_every_records: 0,
        // Snapshot files written on the writer thread keep a seed's run deterministic;
        // the background path has its own crash test in runtime.rs.
        snapshot_in_background: false,
        // Syncs on the writer too: the storage steps then come in one order per seed.
        pipelined_commit: false,
        expire_interval_ms: 1,
        ..EngineConfig::default()
    }
}

fn random_command(rng: &mut Rng, orders: u64, reservations: u64) -> Command {
    let actor = "sim".to_string();
    let sku = |rng: &mut Rng| format!("S{}", rng.below(SKUS));
    match rng.below(10) {
        0..=2 => Command::Reserve {
            lines: (0..1 + rng.below(3))
                .map(|_| LineReq {
                    sku: sku(rng),
                    qty: 1 + rng.below(4),
                })
                .collect(),
            ttl_ms: TTL_MS,
            actor,
        },
        3 => Command::ReleaseReservation {
            id: ReservationId(1 + rng.below(reservations + 1)),
            actor,
        },
        4 => Command::CommitReservation {
            id: ReservationId(1 + rng.below(reservations + 1)),
            actor,
        },
        5 | 6 => Command::CreateOrder {
            order_no: format!("n{}", rng.next() % 1_000_000),
            customer_id: format!("c{}", rng.below(20)),
            lines: (0..1 + rng.below(2))
                .map(|_| OrderLineReq {
                    sku: sku(rng),
                    qty: 1 + rng.below(3),
                    unit_price: 100 * (1 + rng.below(9)),
                })
                .collect(),
            payment_ttl_ms: TTL_MS,
            reservation_id: None,
            actor,
        },
        7 => {
            // Pay with the right amount is the common case; the engine checks it.
            let id = OrderId(1 + rng.below(orders + 1));
            Command::PayOrder {
                id,
                amount: 0,
                payment_ref: "p".into(),
                actor,
            }
        }
        8 => Command::CancelOrder {
            id: OrderId(1 + rng.below(orders + 1)),
            reason: CancelReason::ALL[rng.below(6) as usize],
            note: "power".into(),
            actor,
        },
        _ => Command::AdjustStock {
            sku: sku(rng),
            delta: 1 + rng.below(5) as i64,
            reason: surge_engine::AdjustReason::Inbound,
            note: String::new(),
            actor,
        },
    }
}

/// Fill in the order total for a pay command from the reference state.
fn with_amount(reference: &State, cmd: Command) -> Command {
    match cmd {
        Command::PayOrder {
            id,
            payment_ref,
            actor,
            ..
        } => {
            let amount = match reference.query(&Query::GetOrder { id }) {
                Ok(QueryReply::Order(o)) => o.total,
                _ => 1,
            };
            Command::PayOrder {
                id,
                amount,
                payment_ref,
                actor,
            }
        }
        other => other,
    }
}

fn digest_of(handle: &EngineHandle) -> u64 {
    match handle
        .query(Query::Digest)
        .expect("queue")
        .wait()
        .expect("answered")
    {
        Ok(QueryReply::Digest(d)) => d,
        other => panic!("{other:?}"),
    }
}

/// What one seed did, for the failure message.
#[derive(Debug)]
struct Trace {
    acked: usize,
    in_flight: usize,
    died_at_op: u64,
}

fn run_seed(seed: u64) -> Trace {
    let mut rng = Rng(seed);
    let clock = Arc::new(AtomicU64::new(1_700_000_000_000));
    let disk = SimStorage::new();
    let (handle, _) = Engine::open_with_storage(disk.clone(), config(&clock)).expect("open");
    let mut reference = State::new();
    let mut sink = Vec::new();
    let mut apply_ref = |reference: &mut State, cmd: &Command, now: u64| {
        reference.apply(cmd, None, now, &mut sink);
    };
    for i in 0..SKUS {
        let cmd = Command::DefineSku {
            sku: format!("S{i}"),
            name: String::new(),
            on_hand: 40,
            low_stock_threshold: 5,
        };
        handle
            .execute(cmd.clone(), None)
            .expect("define")
            .expect("accepted");
        apply_ref(&mut reference, &cmd, clock.load(Ordering::SeqCst));
    }
    let died_at_op = rng.below(OPS * 3);
    disk.fail_at_step(died_at_op);
    let mut acked = 0;
    let mut unacked: Vec<(Command, u64)> = Vec::new();
    let (mut orders, mut reservations) = (0u64, 0u64);
    'drive: for _ in 0..OPS {
        // Time passes, mostly a millisecond, sometimes a lot. The writer's timer
        // expires overdue holds by itself at the new time; an explicit Expire at the
        // same time tells the reference (and is a no-op if the timer came first).
        let jump = if rng.below(20) == 0 {
            rng.below(TTL_MS)
        } else {
            1
        };
        let now = clock.fetch_add(jump, Ordering::SeqCst) + jump;
        if reference.next_deadline_ms().is_some_and(|at| at <= now) {
            match handle.execute(Command::Expire, None) {
                Ok(_) => apply_ref(&mut reference, &Command::Expire, now),
                Err(_) => {
                    unacked.push((Command::Expire, now));
                    break 'drive;
                }
            }
        }
        match rng.below(20) {
            0 => {
                // A snapshot (and the segment deletion after it) at a random point.
                if handle.snapshot().expect("queue").wait().is_err() {
                    break 'drive;
                }
            }
            1 | 2 => {
                // A burst in flight at once: one group commit.
                let cmds: Vec<Command> = (0..2 + rng.below(6))
                    .map(|_| {
                        with_amount(&reference, random_command(&mut rng, orders, reservations))
                    })
                    .collect();
                let tickets: Vec<_> = cmds
                    .iter()
                    .map(|c| handle.submit(c.clone(), None).expect("queue"))
                    .collect();
                let mut failed = false;
                for (cmd, ticket) in cmds.into_iter().zip(tickets) {
                    match ticket.wait() {
                        Ok(_) if !failed => {
                            apply_ref(&mut reference, &cmd, now);
                            acked += 1;
                        }
                        Ok(_) => panic!(
                            "seed {seed}: acknowledged after an earlier failure in the same batch"
                        ),
                        Err(_) => {
                            failed = true;
                            unacked.push((cmd, now));
                        }
                    }
                }
                if failed {
                    break 'drive;
                }
            }
            _ => {
                let cmd = with_amount(&reference, random_command(&mut rng, orders, reservations));
                match handle.execute(cmd.clone(), None) {
                    Ok(_) => {
                        apply_ref(&mut reference, &cmd, now);
                        acked += 1;
                    }
                    Err(Error::StorageUnavailable(_)) => {
                        unacked.push((cmd, now));
                        break 'drive;
                    }
                    Err(e) => panic!("seed {seed}: {e}"),
                }
            }
        }
        orders = reference_orders(&reference);
        reservations = reference.next_reservation_hint();
    }
    // Power cut. The dying engine's own shutdown cannot write anything any more.
    let crashed = disk.crash(seed);
    drop(handle);
    let (recovered, _report) = Engine::open_with_storage(crashed, config(&clock))
        .unwrap_or_else(|e| panic!("seed {seed}: recovery failed: {e}"));
    let got = digest_of(&recovered);
    // The acknowledged prefix, plus any prefix of what was in flight, whole.
    let mut candidate = reference.clone();
    let mut digests = vec![candidate.digest()];
    let mut sink = Vec::new();
    for (cmd, now) in &unacked {
        candidate.apply(cmd, None, *now, &mut sink);
        digests.push(candidate.digest());
    }
    assert!(
        digests.contains(&got),
        "seed {seed}: recovered state matches no acknowledged prefix (acked {acked}, in flight {})",
        unacked.len()
    );
    recovered.shutdown();
    Trace {
        acked,
        in_flight: unacked.len(),
        died_at_op,
    }
}

fn reference_orders(reference: &State) -> u64 {
    match reference.query(&Query::Stats { top: 1 }) {
        Ok(QueryReply::Stats(s)) => s.orders_total,
        _ => 0,
    }
}

trait Hint {
    fn next_reservation_hint(&self) -> u64;
}

impl Hint for State {
    /// Reservations are numbered densely; ask for ids until one is unknown.
    fn next_reservation_hint(&self) -> u64 {
        let mut n = 0;
        while self.reservation_status(ReservationId(n + 1)).is_some() {
            n += 1;
        }
        n
    }
}

#[test]
fn acknowledged_commands_survive_power_loss() {
    let seeds: Vec<u64> = match std::env::var("SURGE_SEED") {
        Ok(seed) => vec![seed.parse().expect("SURGE_SEED is a number")],
        Err(_) => {
            let count: u64 = std::env::var("SURGE_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(1_000);
            (0..count).collect()
        }
    };
    let mut acked_total = 0;
    let mut died_early = 0;
    for seed in seeds {
        let result = std::panic::catch_unwind(|| run_seed(seed));
        match result {
            Ok(trace) => {
                acked_total += trace.acked;
                if trace.in_flight > 0 {
                    died_early += 1;
                }
                let _ = trace.died_at_op;
            }
            Err(panic) => {
                eprintln!("power-loss seed {seed} failed; rerun with SURGE_SEED={seed}");
                std::panic::resume_unwind(panic);
            }
        }
    }
    assert!(acked_total > 0);
    eprintln!(
        "power loss: {acked_total} acknowledged commands checked; {died_early} runs ended with the disk dying mid-flight"
    );
}
