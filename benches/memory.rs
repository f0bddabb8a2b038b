//! Memory per live order and per held reservation at 1M of each, counted by a
//! global allocator that tracks live heap bytes. Not a timing: it prints bytes and
//! writes `target/criterion/memory.json`.
//!
//! `cargo bench --bench memory`

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use surge_engine::{Command, LineReq, OrderLineReq, State};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator and only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: ptr came from `alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

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

fn measure(what: &str, make: impl Fn(u64) -> Command) -> f64 {
    let mut state = with_skus();
    let mut events = Vec::with_capacity(64);
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for i in 0..N {
        events.clear();
        state
            .apply(&make(i), None, 1_000, &mut events)
            .outcome
            .expect("accepted");
    }
    events = Vec::new();
    drop(events);
    let per_item = (LIVE_BYTES.load(Ordering::Relaxed) - before) as f64 / N as f64;
    println!("{what}: {per_item:.0} bytes each at {N}");
    std::hint::black_box(&state);
    per_item
}

fn main() {
    // `cargo bench` passes flags such as --bench; nothing to parse.
    let order = measure("live order (reserved, 1 line, with its hold)", |i| {
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
    });
    let hold = measure("held reservation (1 line)", |i| Command::Reserve {
        lines: vec![LineReq {
            sku: format!("SKU-{:05}", i % SKUS),
            qty: 1,
        }],
        ttl_ms: 3_600_000,
        actor: "storefront".into(),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("criterion");
    let _ = std::fs::create_dir_all(&dir);
    let json = format!(
        "{{\"count\":{N},\"bytes_per_live_order\":{order:.0},\"bytes_per_held_reservation\":{hold:.0}}}\n"
    );
    std::fs::write(dir.join("memory.json"), json).expect("write memory.json");
}
