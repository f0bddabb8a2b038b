//! Start-up: replaying the WAL (1M holds, without and with idempotency keys), and
//! reopening from a snapshot with 1M live orders.
//!
//! The page cache is warm: the files were written by this process just before, so
//! these figures are CPU (decode, apply, checksums), not the disk. A cold start also
//! reads the log and snapshot from the device; that is not measured here.
//!
//! `cargo bench --bench recovery`. Records/s of replay from
//! `target/criterion/recovery/replay_1m_records/new/estimates.json` (and
//! `replay_1m_keyed_records`)
//! (`Throughput::Elements` = records); reopen time per iteration from
//! `target/criterion/recovery/reopen_1m_live_orders/new/estimates.json`.

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use surge_engine::{
    Command, Durability, Engine, EngineConfig, IdempotencyKey, LineReq, OrderLineReq,
};

// The `surge` binary runs on mimalloc; measure with the same allocator.
#[global_allocator]
static ALLOCATOR: surge_alloc::Mimalloc = surge_alloc::Mimalloc;

const RECORDS: u64 = 1_000_000;
const ORDERS: u64 = 1_000_000;

fn config(dir: &Path, snapshot_on_shutdown: bool) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        durability: Durability::Async,
        snapshot_every_records: 0,
        snapshot_every_segments: 0,
        snapshot_on_shutdown,
        ..EngineConfig::default()
    }
}

/// Submit `count` commands (each with its key, if any) from a few threads,
/// pipelined, then shut down.
fn fill(
    dir: &Path,
    snapshot_on_shutdown: bool,
    count: u64,
    make: impl Fn(u64) -> (Command, Option<IdempotencyKey>) + Sync,
) {
    let (handle, _) = Engine::open(config(dir, snapshot_on_shutdown)).expect("open");
    for i in 0..100 {
        let cmd = Command::DefineSku {
            sku: format!("SKU-{i}"),
            name: String::new(),
            on_hand: 1_000_000_000,
            low_stock_threshold: 0,
        };
        handle.execute(cmd, None).expect("queued").expect("defined");
    }
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let handle = handle.clone();
            let make = &make;
            s.spawn(move || {
                let mut pending = std::collections::VecDeque::new();
                for i in (t..count).step_by(4) {
                    let (command, key) = make(i);
                    pending.push_back(handle.submit(command, key).expect("room"));
                    if pending.len() >= 1024 {
                        pending
                            .pop_front()
                            .expect("non-empty")
                            .wait()
                            .expect("answered")
                            .outcome
                            .expect("accepted");
                    }
                }
                for p in pending {
                    p.wait().expect("answered").outcome.expect("accepted");
                }
            });
        }
    });
    handle.shutdown();
}

fn bench(c: &mut Criterion) {
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let mut group = c.benchmark_group("recovery");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));

    let hold = |i: u64| Command::Reserve {
        lines: vec![LineReq {
            sku: format!("SKU-{}", i % 100),
            qty: 1,
        }],
        ttl_ms: 7 * 24 * 3_600_000,
        actor: "bench".into(),
    };
    // A key like a client's (36 characters); replay hashes it and remembers it again.
    let key = |i: u64| IdempotencyKey {
        key: format!("{:08x}-0000-4000-8000-{i:012x}", i >> 16),
        fingerprint: i,
    };
    for (name, keyed) in [
        ("replay_1m_records", false),
        ("replay_1m_keyed_records", true),
    ] {
        let log_dir = tempfile::tempdir_in(&target).expect("tempdir");
        fill(log_dir.path(), false, RECORDS, |i| {
            (hold(i), keyed.then(|| key(i)))
        });
        group.throughput(Throughput::Elements(RECORDS + 100));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let started = Instant::now();
                    let (handle, report) =
                        Engine::open(config(log_dir.path(), false)).expect("reopen");
                    total += started.elapsed();
                    assert_eq!(report.records_replayed, RECORDS + 100);
                    handle.shutdown();
                }
                total
            })
        });
    }

    let orders_dir = tempfile::tempdir_in(&target).expect("tempdir");
    fill(orders_dir.path(), true, ORDERS, |i| {
        let order = Command::CreateOrder {
            order_no: format!("N{i:08}"),
            customer_id: format!("C{}", i % 50_000),
            lines: vec![OrderLineReq {
                sku: format!("SKU-{}", i % 100),
                qty: 1,
                unit_price: 1999,
            }],
            payment_ttl_ms: 7 * 24 * 3_600_000,
            reservation_id: None,
            actor: "bench".into(),
        };
        (order, None)
    });
    group.throughput(Throughput::Elements(ORDERS));
    group.bench_function("reopen_1m_live_orders", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let (handle, report) =
                    Engine::open(config(orders_dir.path(), false)).expect("reopen");
                total += started.elapsed();
                assert_eq!(report.records_replayed, 0, "a snapshot covers everything");
                handle.shutdown();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
