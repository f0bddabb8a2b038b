//! The pure state machine, single thread, no I/O: how fast can one writer apply?
//!
//! `cargo bench --bench engine`; ops/s = `Throughput::Elements` in
//! `target/criterion/engine_apply/*/new/estimates.json`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use surge_engine::wal::SnapshotImage;
use surge_engine::{CancelReason, Command, LineReq, OrderId, ReservationId, State};

// The `surge` binary runs on mimalloc; measure the engine with the same allocator.
#[global_allocator]
static ALLOCATOR: surge_alloc::Mimalloc = surge_alloc::Mimalloc;

mod common;

use common::{SKUS, limit_every_sku, state_with_skus};

/// Commands are built before the clock starts: building them is the HTTP layer's
/// work, on other threads; this measures what the writer does with them.
///
/// `for_customer`: each reservation names one of 100 000 customers (`ReserveFor`).
/// `limited`: besides, every SKU has a purchase limit and a sale window, so each
/// reservation judges
/// the window, looks up and counts the customer, keeps the hold's customer, and
/// its release counts back (the count falls to zero and its entry goes: the most
/// work a limited reservation can cost). Issue 12 bounds it at 1.3x the plain one.
fn reserve_release_bench(c: &mut Criterion, name: &str, for_customer: bool, limited: bool) {
    let mut group = c.benchmark_group("engine_apply");
    group.measurement_time(Duration::from_secs(5));
    // One element = one command; each iteration applies a reserve and a release.
    group.throughput(Throughput::Elements(2));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut state = state_with_skus();
            if limited {
                limit_every_sku(&mut state);
            }
            let commands: Vec<[Command; 2]> = (0..iters)
                .map(|i| {
                    let lines = vec![LineReq {
                        sku: format!("SKU-{:05}", i as usize % SKUS),
                        qty: 1,
                    }];
                    let reserve = if for_customer {
                        Command::ReserveFor {
                            lines,
                            ttl_ms: 60_000,
                            customer_id: format!("customer-{}", i % 100_000),
                            actor: "bench".to_string(),
                        }
                    } else {
                        Command::Reserve {
                            lines,
                            ttl_ms: 60_000,
                            actor: "bench".to_string(),
                        }
                    };
                    let release = Command::ReleaseReservation {
                        id: ReservationId(i + 1),
                        actor: "bench".to_string(),
                    };
                    [reserve, release]
                })
                .collect();
            let (elapsed, refused) = apply_cycles(&mut state, &commands);
            // The bench counts what it did: every command succeeded, nothing is left held.
            assert_eq!(refused, 0, "{refused} of {} commands refused", 2 * iters);
            drop(commands);
            elapsed
        })
    });
    group.finish();
}

/// Applies each cycle's commands in turn, all at one instant, on the clock (the
/// events they emit are dropped every 512); how long that took, and how many of the
/// commands were refused.
fn apply_cycles<const N: usize>(state: &mut State, cycles: &[[Command; N]]) -> (Duration, u64) {
    let mut events = Vec::with_capacity(1024);
    let now = 1_000;
    let mut refused = 0u64;
    let started = Instant::now();
    for cycle in cycles {
        for command in cycle {
            let applied = state.apply(command, None, now, &mut events);
            refused += u64::from(applied.outcome.is_err());
            black_box(&applied);
        }
        if events.len() > 512 {
            events.clear();
        }
    }
    (started.elapsed(), refused)
}

fn reserve_release(c: &mut Criterion) {
    reserve_release_bench(c, "reserve_release_10k_skus", false, false);
    reserve_release_bench(c, "reserve_release_for_customers_10k_skus", true, false);
    reserve_release_bench(c, "reserve_release_limited_10k_skus", true, true);
}

fn order_cycle(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine_apply");
    group.measurement_time(Duration::from_secs(5));
    // One element = one order taken through create -> pay -> cancel.
    group.throughput(Throughput::Elements(1));
    group.bench_function("create_pay_cancel_order", |b| {
        b.iter_custom(|iters| {
            let mut state = state_with_skus();
            let commands: Vec<[Command; 3]> = (0..iters)
                .map(|i| {
                    let id = OrderId(i + 1);
                    [
                        common::place_order(format!("N{i}"), i as usize),
                        Command::PayOrder {
                            id,
                            amount: 1999,
                            payment_ref: String::new(),
                            actor: "bench".to_string(),
                        },
                        Command::CancelOrder {
                            id,
                            reason: CancelReason::CustomerRequest,
                            note: String::new(),
                            actor: "bench".to_string(),
                        },
                    ]
                })
                .collect();
            let (elapsed, refused) = apply_cycles(&mut state, &commands);
            // Every order was created, paid and cancelled: none of the steps refused.
            assert_eq!(refused, 0, "{refused} of {} commands refused", 3 * iters);
            drop(commands);
            elapsed
        })
    });
    group.finish();
}

/// Orders placed one after another into one state, to 2M: how long the longest
/// single `apply` takes while the order store and its indexes grow. Beside it, in
/// the same run, the longest insert of the same order numbers into one plain hash
/// table: what a table doubling costs at that size (the pause the sharded order
/// number index avoids). Prints both; criterion's figure is orders/s.
fn order_growth(c: &mut Criterion) {
    const ORDERS: u64 = 2_000_000;
    let mut group = c.benchmark_group("engine_apply");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(ORDERS));
    group.bench_function("place_2m_orders_growth", |b| {
        b.iter_custom(|iters| {
            let mut elapsed = Duration::ZERO;
            for _ in 0..iters {
                let mut state = state_with_skus();
                let mut events = Vec::with_capacity(1024);
                let order_nos: Vec<String> = (0..ORDERS).map(|i| format!("N{i}")).collect();
                let commands: Vec<Command> = order_nos
                    .iter()
                    .enumerate()
                    .map(|(i, order_no)| common::place_order(order_no.clone(), i))
                    .collect();
                // On this thread's CPU clock: a preemption on the shared box is not
                // a pause of the state machine.
                let (mut longest, mut over_1ms) = (Duration::ZERO, 0u32);
                let started = Instant::now();
                for command in &commands {
                    let one = thread_cpu_time();
                    let applied = state.apply(command, None, 1_000, &mut events);
                    let took = thread_cpu_time().saturating_sub(one);
                    assert!(applied.outcome.is_ok(), "{:?}", applied.outcome);
                    longest = longest.max(took);
                    over_1ms += u32::from(took > Duration::from_millis(1));
                    if events.len() > 512 {
                        events.clear();
                    }
                }
                elapsed += started.elapsed();
                drop(commands);
                // The same keys into one plain table.
                let mut plain: hashbrown::HashMap<std::sync::Arc<str>, u64> =
                    hashbrown::HashMap::new();
                let mut plain_longest = Duration::ZERO;
                for (i, order_no) in order_nos.into_iter().enumerate() {
                    let key: std::sync::Arc<str> = order_no.into();
                    let one = thread_cpu_time();
                    plain.insert(key, i as u64);
                    plain_longest = plain_longest.max(thread_cpu_time().saturating_sub(one));
                }
                black_box(&plain);
                eprintln!(
                    "place_2m_orders_growth (thread CPU time): longest apply {:.2} ms, {over_1ms} \
                     applies over 1 ms; longest insert into one plain table of the same keys {:.2} ms",
                    longest.as_secs_f64() * 1e3,
                    plain_longest.as_secs_f64() * 1e3
                );
            }
            elapsed
        })
    });
    group.finish();
}

/// Encoding the snapshot of a state holding 2M reservations, two ways in one run,
/// each on a thread started for it as the follower's encoder is: the three buffers
/// of before 3aaa0b2 re-enacted (the state into a `Vec` grown by doubling, copied
/// into the body's, copied again into the file's; the state's encoding itself is
/// today's, without the sorted list of reservations it collected then, and the
/// event ring is left out), and into a snapshot image whose 4 MiB chunks are those
/// of the last snapshot, as the follower encodes now.
/// Elements: reservations encoded.
fn snapshot_encoding(c: &mut Criterion) {
    const HOLDS: u64 = 2_000_000;
    let mut state = state_with_skus();
    let mut events = Vec::with_capacity(1024);
    for i in 0..HOLDS {
        let hold = Command::Reserve {
            lines: vec![LineReq {
                sku: common::sku(i as usize),
                qty: 1,
            }],
            ttl_ms: 3_600_000,
            actor: "bench".to_string(),
        };
        let applied = state.apply(&hold, None, 1_000, &mut events);
        assert!(applied.outcome.is_ok(), "{:?}", applied.outcome);
        events.clear();
    }
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(HOLDS));
    // Each encoding runs on a thread of its own, as the follower's does.
    let on_a_thread = |encode: &mut (dyn FnMut() -> usize + Send)| {
        std::thread::scope(|scope| scope.spawn(encode).join().expect("encoded"))
    };
    group.bench_function("encode_2m_holds_as_before", |b| {
        b.iter(|| {
            on_a_thread(&mut || {
                // The state into a Vec grown by doubling; the body (its length,
                // then its bytes) into a second; the file (header, body) into a third.
                let state_bytes = state.encode_snapshot();
                let mut body = Vec::new();
                body.extend_from_slice(&(state_bytes.len() as u64).to_le_bytes());
                body.extend_from_slice(&state_bytes);
                drop(state_bytes);
                let mut file = Vec::with_capacity(40 + body.len());
                file.extend_from_slice(&[0; 40]);
                file.extend_from_slice(&body);
                file.len()
            })
        })
    });
    let mut buffers = Vec::new();
    group.bench_function("encode_2m_holds_into_reused_chunks", |b| {
        b.iter(|| {
            on_a_thread(&mut || {
                let mut image = SnapshotImage::new(std::mem::take(&mut buffers));
                state.encode_snapshot_into(&mut image);
                let len = image.body_len();
                buffers = image.into_buffers();
                len
            })
        })
    });
    group.finish();
}

/// CPU time this thread has used (`CLOCK_THREAD_CPUTIME_ID`).
#[allow(unsafe_code, reason = "std has no per-thread CPU clock; one libc call")]
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

criterion_group!(
    benches,
    reserve_release,
    order_cycle,
    order_growth,
    snapshot_encoding
);
criterion_main!(benches);
