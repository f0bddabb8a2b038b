//! A fixed number of engine commands on one thread, no I/O, for counting
//! instructions (steady on a busy machine, where wall time is not). The commands
//! are built first; `apply_all` applies them as `benches/engine.rs` does on the
//! clock, so counting only it gives the bench's work per command:
//!
//! ```sh
//! cargo build --release --example engine_ops
//! valgrind --tool=callgrind --toggle-collect='engine_ops::apply_all' \
//!     target/release/examples/engine_ops order 40000
//! perf stat -e instructions:u,task-clock target/release/examples/engine_ops reserve 2000000
//! ```
//!
//! (Two counts, N and 2N cycles, subtracted, leave out the set-up.)
//!
//! `reserve`: reserve then release one unit (2 commands per cycle); `order`: create,
//! pay and cancel an order (3 commands per cycle); `reserve-for`: `reserve` for one
//! of 100 000 customers (`ReserveFor`); `reserve-limited`: the same on SKUs with a
//! purchase limit and a sale window. Same workloads as `benches/engine.rs`. `hold`:
//! reserve one unit for an hour and keep it (1 command per cycle), so past a million
//! cycles the oldest holds leave the reservation window for its overflow.

use std::hint::black_box;

use surge_engine::{CancelReason, Command, LineReq, OrderId, ReservationId, State};

#[global_allocator]
static ALLOCATOR: surge_alloc::Mimalloc = surge_alloc::Mimalloc;

#[path = "../benches/common/mod.rs"]
mod common;

fn main() {
    let mut args = std::env::args().skip(1);
    let workload = args.next().unwrap_or_else(|| "reserve".into());
    let cycles: u64 = args
        .next()
        .map_or(1_000_000, |n| n.parse().expect("a count"));
    let mut state = common::state_with_skus();
    if workload == "reserve-limited" {
        common::limit_every_sku(&mut state);
    }
    let customers: Vec<String> = (0..100_000).map(|i| format!("customer-{i}")).collect();
    let sku = |i: u64| common::sku(i as usize);
    // Built before they are applied, as the bench does: building them is the HTTP
    // layer's work. `apply_all` is what the bench times (callgrind:
    // `--toggle-collect='engine_ops::apply_all'`).
    let cycles: Vec<Vec<Command>> = (0..cycles)
        .map(|i| match workload.as_str() {
            "reserve" => vec![
                Command::Reserve {
                    lines: vec![LineReq {
                        sku: sku(i),
                        qty: 1,
                    }],
                    ttl_ms: 60_000,
                    actor: "bench".into(),
                },
                Command::ReleaseReservation {
                    id: ReservationId(i + 1),
                    actor: "bench".into(),
                },
            ],
            "hold" => vec![Command::Reserve {
                lines: vec![LineReq {
                    sku: sku(i),
                    qty: 1,
                }],
                ttl_ms: 3_600_000,
                actor: "bench".into(),
            }],
            "reserve-for" | "reserve-limited" => vec![
                Command::ReserveFor {
                    lines: vec![LineReq {
                        sku: sku(i),
                        qty: 1,
                    }],
                    ttl_ms: 60_000,
                    customer_id: customers[i as usize % customers.len()].clone(),
                    actor: "bench".into(),
                },
                Command::ReleaseReservation {
                    id: ReservationId(i + 1),
                    actor: "bench".into(),
                },
            ],
            "order" => vec![
                common::place_order(format!("N{i}"), i as usize),
                Command::PayOrder {
                    id: OrderId(i + 1),
                    amount: 1999,
                    payment_ref: String::new(),
                    actor: "bench".into(),
                },
                Command::CancelOrder {
                    id: OrderId(i + 1),
                    reason: CancelReason::CustomerRequest,
                    note: String::new(),
                    actor: "bench".into(),
                },
            ],
            other => {
                panic!(
                    "unknown workload {other:?}: reserve, hold, reserve-for, reserve-limited or order"
                )
            }
        })
        .collect();
    let refused = apply_all(&mut state, &cycles);
    assert_eq!(refused, 0, "commands refused");
    println!("{workload}: {} cycles", cycles.len());
}

/// Applies each cycle's commands in turn, all at one instant, dropping each answer
/// and the events every 512, as `benches/engine.rs` does on the clock; how many
/// commands were refused.
#[inline(never)]
fn apply_all(state: &mut State, cycles: &[Vec<Command>]) -> u64 {
    let mut events = Vec::with_capacity(1024);
    let mut refused = 0u64;
    for commands in cycles {
        for command in commands {
            let applied = state.apply(command, None, 1_000, &mut events);
            refused += u64::from(applied.outcome.is_err());
            black_box(&applied);
        }
        if events.len() > 512 {
            events.clear();
        }
    }
    refused
}
