//! Memory per live order and per held reservation at 1M of each, and per remembered
//! idempotency key (index and answer, at the budget), counted by a global allocator
//! that tracks live heap bytes. Not a timing: it prints bytes and writes
//! `target/criterion/memory.json`.
//!
//! `cargo bench --bench memory`
#![allow(
    unsafe_code,
    reason = "a global allocator that counts live heap bytes must implement GlobalAlloc"
)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use surge_engine::{
    Command, IDEMPOTENCY_KEY_BYTES, IdempotencyKey, IdempotencyStats, LineReq, OrderLineReq, State,
};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to the system allocator (a sound GlobalAlloc) with the
// arguments it was given, unchanged, and returns its result, so each pointer handed
// out is the system allocator's and goes back to it with the layout it was made with. The
// counting is one relaxed atomic add, which neither allocates (no re-entry) nor
// panics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds GlobalAlloc's contract for `layout` (non-zero
        // size), which is all the system allocator needs; the layout is passed unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller guarantees `ptr` was allocated by this allocator with
        // `layout`; every allocation of ours is the system allocator's with that same layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller guarantees `ptr` is ours with `layout` and that
        // `new_size` is valid for it; `ptr` is the system allocator's with that layout, so
        // the system allocator's realloc contract holds with the arguments unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

mod common;

const N: u64 = 1_000_000;
const SKUS: u64 = 10_000;

fn with_skus() -> State {
    let mut state = State::new();
    let mut events = Vec::new();
    for i in 0..SKUS {
        let cmd = Command::DefineSku {
            sku: format!("SKU-{i:05}"),
            name: String::new(),
            on_hand: 1_000_000_000,
            low_stock_threshold: 0,
        };
        state
            .apply(&cmd, None, 1, &mut events)
            .outcome
            .expect("defined");
    }
    state
}

/// `with_skus`, every SKU with a purchase limit (`common::limit_every_sku`).
fn with_limited_skus() -> State {
    let mut state = with_skus();
    common::limit_every_sku(&mut state);
    state
}

fn measure(what: &str, make: impl Fn(u64) -> Command) -> f64 {
    measure_in(with_skus(), what, make)
}

/// Apply `make(0..N)`, every command accepted.
fn apply_all(state: &mut State, make: impl Fn(u64) -> Command) {
    let mut events = Vec::with_capacity(64);
    for i in 0..N {
        events.clear();
        state
            .apply(&make(i), None, 1_000, &mut events)
            .outcome
            .expect("accepted");
    }
}

fn measure_in(mut state: State, what: &str, make: impl Fn(u64) -> Command) -> f64 {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    apply_all(&mut state, make);
    let per_item = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / N as f64;
    println!("{what}: {per_item:.0} bytes each at {N}");
    std::hint::black_box(&state);
    per_item
}

/// Budget of the idempotency measurements: about a million keys.
const KEY_BUDGET_BYTES: u64 = 64 << 20;
/// Keyed commands sent: half again past the budget, so the index is full and forgets.
const KEYED: u64 = 1_500_000;

/// Live heap bytes left by `KEYED` commands, with keys or without, and the index.
fn keyed_run(make: &impl Fn(u64) -> Command, keyed: bool) -> (isize, IdempotencyStats) {
    let mut state = with_skus();
    let mut events = Vec::with_capacity(64);
    let policy = Command::SetIdempotencyPolicy {
        window_ms: 24 * 60 * 60 * 1000,
        budget_bytes: KEY_BUDGET_BYTES,
    };
    state
        .apply(&policy, None, 1, &mut events)
        .outcome
        .expect("policy");
    let empty = Command::DefineSku {
        sku: "EMPTY".into(),
        name: String::new(),
        on_hand: 0,
        low_stock_threshold: 0,
    };
    state
        .apply(&empty, None, 1, &mut events)
        .outcome
        .expect("defined");
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for i in 0..KEYED {
        events.clear();
        let command = make(i);
        // A key like a client's: a UUID's 36 characters.
        let key = keyed.then(|| IdempotencyKey {
            key: format!("{:08x}-0000-4000-8000-{:012x}", i >> 16, i),
            fingerprint: i,
        });
        let _ = state.apply(&command, key.as_ref(), 1_000 + i / 1000, &mut events);
    }
    events = Vec::new();
    drop(events);
    let live = LIVE_BYTES.load(Ordering::Relaxed) - before;
    let stats = state.idempotency_stats();
    std::hint::black_box(&state);
    (live, stats)
}

/// Bytes per remembered key, index and answer: the heap left with keys minus without,
/// over the keys remembered at the end.
fn measure_keys(what: &str, make: impl Fn(u64) -> Command) -> f64 {
    let (plain, _) = keyed_run(&make, false);
    let (keyed, stats) = keyed_run(&make, true);
    let index = (keyed - plain) as f64;
    let per_key = index / stats.keys as f64;
    println!(
        "idempotency key, {what}: {per_key:.1} bytes each ({:.1} counted); {} of {} keys \
         remembered, index {:.1} MiB of a {:.0} MiB budget (counted {:.1} MiB)",
        stats.bytes as f64 / stats.keys as f64,
        stats.keys,
        KEYED,
        index / (1 << 20) as f64,
        KEY_BUDGET_BYTES as f64 / (1 << 20) as f64,
        stats.bytes as f64 / (1 << 20) as f64,
    );
    assert!(
        index <= KEY_BUDGET_BYTES as f64,
        "{what}: the index went over its budget"
    );
    per_key
}

/// Order number `i`: one unit of one of the SKUs, for one of 100 000 customers.
fn one_line_order(i: u64) -> Command {
    Command::CreateOrder {
        order_no: format!("ORD-{i:010}"),
        customer_id: format!("CUST-{:06}", i % 100_000),
        lines: vec![OrderLineReq {
            sku: format!("SKU-{:05}", i % SKUS),
            qty: 1,
            unit_price: 1999,
        }],
        payment_ttl_ms: 3_600_000,
        reservation_id: None,
        actor: "storefront".into(),
    }
}

/// Hold number `i`: one unit of one of the SKUs, for an hour.
fn one_line_hold(i: u64) -> Command {
    Command::Reserve {
        lines: vec![LineReq {
            sku: format!("SKU-{:05}", i % SKUS),
            qty: 1,
        }],
        ttl_ms: 3_600_000,
        actor: "storefront".into(),
    }
}

fn main() {
    // `cargo bench` passes flags such as --bench; nothing to parse.
    let order = measure(
        "live order (reserved, 1 line, with its hold)",
        one_line_order,
    );
    let hold = measure("held reservation (1 line)", one_line_hold);
    // A million more holds push the first million out of the reservation window
    // (`FINISHED_RESERVATIONS_KEPT` ids): still held, they move to its overflow.
    assert_eq!(N as usize, surge_engine::limits::FINISHED_RESERVATIONS_KEPT);
    let mut window_full = with_skus();
    apply_all(&mut window_full, one_line_hold);
    let old_hold = measure_in(
        window_full,
        "held reservation (1 line), the window full: one older hold moves to the overflow",
        |i| one_line_hold(N + i),
    );
    // A million customers, one unit each on a limited SKU: each hold keeps its
    // customer and makes one (SKU, customer) count.
    let limited_hold = measure_in(
        with_limited_skus(),
        "held reservation for a customer on a limited SKU (1 line, a new count)",
        |i| Command::ReserveFor {
            lines: vec![LineReq {
                sku: format!("SKU-{:05}", i % SKUS),
                qty: 1,
            }],
            ttl_ms: 3_600_000,
            customer_id: format!("CUST-{i:08}"),
            actor: "storefront".into(),
        },
    );
    let limited_pair = limited_hold - hold;
    println!(
        "a counted (SKU, customer) pair with the customer kept by its hold: {limited_pair:.0} bytes"
    );
    let key_held = measure_keys("answer: a one-line hold", one_line_hold);
    let key_order = measure_keys("answer: an order", one_line_order);
    let key_short = measure_keys("answer: insufficient stock", |_| Command::Reserve {
        lines: vec![LineReq {
            sku: "EMPTY".into(),
            qty: 1,
        }],
        ttl_ms: 3_600_000,
        actor: "storefront".into(),
    });
    let key_stored = measure_keys("answer: a two-line hold, stored encoded", |i| {
        Command::Reserve {
            lines: vec![
                LineReq {
                    sku: format!("SKU-{:05}", i % SKUS),
                    qty: 1,
                },
                LineReq {
                    sku: format!("SKU-{:05}", (i + 1) % SKUS),
                    qty: 1,
                },
            ],
            ttl_ms: 3_600_000,
            actor: "storefront".into(),
        }
    });
    println!("idempotency key, by design: {IDEMPOTENCY_KEY_BYTES} bytes at the budget");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("criterion");
    let _ = std::fs::create_dir_all(&dir);
    let json = format!(
        "{{\"count\":{N},\"bytes_per_live_order\":{order:.0},\"bytes_per_held_reservation\":{hold:.0},\
         \"bytes_per_held_reservation_with_overflow\":{old_hold:.0},\
         \"bytes_per_limited_pair_and_customer_hold\":{limited_pair:.0},\
         \"idempotency_budget_bytes\":{KEY_BUDGET_BYTES},\"idempotency_keyed_commands\":{KEYED},\
         \"bytes_per_key_hold\":{key_held:.1},\"bytes_per_key_order\":{key_order:.1},\
         \"bytes_per_key_insufficient_stock\":{key_short:.1},\"bytes_per_key_stored\":{key_stored:.1}}}\n"
    );
    std::fs::write(dir.join("memory.json"), json).expect("write memory.json");
}
