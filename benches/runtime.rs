//! The runtime end to end in process: 64 submitting threads, durability `sync` on a
//! real data dir (memory-mapped WAL, msync per group commit), one hot SKU vs 10k SKUs.
//!
//! `cargo bench --bench runtime`. Reservations/s from criterion's
//! `target/criterion/runtime_sync_64_threads/*/new/estimates.json`; latency
//! percentiles (per reservation, submit to durable reply) are printed and written to
//! `target/criterion/runtime_latency_<bench>.json`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use surge_engine::{Command, Durability, Engine, EngineConfig, LineReq};

// The `surge` binary runs on mimalloc; measure with the same allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const THREADS: u64 = 64;

/// An engine on a fresh data dir with `skus` SKUs of ample stock.
struct Fixture {
    handle: surge_engine::EngineHandle,
    names: Arc<Vec<String>>,
    _dir: tempfile::TempDir,
}

fn fixture(skus: usize, durability: Durability) -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix("surge-bench-")
        .tempdir_in(target_dir())
        .expect("tempdir");
    let config = EngineConfig {
        data_dir: dir.path().to_path_buf(),
        durability,
        ..EngineConfig::default()
    };
    let (handle, _) = Engine::open(config).expect("open");
    let names: Arc<Vec<String>> = Arc::new((0..skus).map(|i| format!("SKU-{i:05}")).collect());
    // Pipelined: every definition queued first, so they share group commits.
    let tickets: Vec<_> = names
        .iter()
        .map(|name| {
            let cmd = Command::DefineSku {
                sku: name.clone(),
                name: String::new(),
                on_hand: 1_000_000_000,
                low_stock_threshold: 0,
            };
            handle.submit(cmd, None).expect("room in the queue")
        })
        .collect();
    for t in tickets {
        t.wait().expect("answered").expect("defined");
    }
    Fixture {
        handle,
        names,
        _dir: dir,
    }
}

/// `iters` reservations from 64 threads, each keeping `window` requests in flight
/// (1: wait for each reply before sending the next).
fn run(
    fixture: &Fixture,
    window: usize,
    iters: u64,
    latencies: &Mutex<Histogram<u64>>,
) -> Duration {
    let per_thread = iters.div_ceil(THREADS);
    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = fixture.handle.clone();
            let names = Arc::clone(&fixture.names);
            std::thread::spawn(move || {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let mut in_flight = std::collections::VecDeque::with_capacity(window);
                let mut settle = |in_flight: &mut std::collections::VecDeque<(
                    Instant,
                    surge_engine::Ticket<surge_engine::Outcome>,
                )>| {
                    let (sent, ticket): (Instant, _) = in_flight.pop_front().expect("in flight");
                    ticket.wait().expect("answered").expect("held");
                    hist.record(sent.elapsed().as_micros() as u64)
                        .expect("in range");
                };
                for i in 0..per_thread {
                    let sku = names[((t * per_thread + i) as usize) % names.len()].clone();
                    let cmd = Command::Reserve {
                        lines: vec![LineReq { sku, qty: 1 }],
                        ttl_ms: 600_000,
                        actor: "bench".into(),
                    };
                    let sent = Instant::now();
                    let ticket = loop {
                        match handle.submit(cmd.clone(), None) {
                            Ok(ticket) => break ticket,
                            Err(surge_engine::Error::Overloaded(_)) if !in_flight.is_empty() => {
                                settle(&mut in_flight)
                            }
                            Err(surge_engine::Error::Overloaded(_)) => std::thread::yield_now(),
                            Err(e) => panic!("{e}"),
                        }
                    };
                    in_flight.push_back((sent, ticket));
                    if in_flight.len() >= window {
                        settle(&mut in_flight);
                    }
                }
                while !in_flight.is_empty() {
                    settle(&mut in_flight);
                }
                hist
            })
        })
        .collect();
    let mut merged = latencies.lock();
    for t in threads {
        merged.add(t.join().expect("thread")).expect("same bounds");
    }
    started.elapsed()
}

fn target_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).expect("target dir");
    dir
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("runtime_sync_64_threads");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    for (name, skus, durability, window) in [
        ("reserve_10k_skus", 10_000, Durability::Sync, 1),
        ("reserve_hot_sku", 1, Durability::Sync, 1),
        ("reserve_10k_skus_async", 10_000, Durability::Async, 1),
        (
            "reserve_10k_skus_64_in_flight_per_thread",
            10_000,
            Durability::Sync,
            64,
        ),
        (
            "reserve_hot_sku_64_in_flight_per_thread",
            1,
            Durability::Sync,
            64,
        ),
    ] {
        let latencies = Mutex::new(Histogram::<u64>::new(3).expect("histogram"));
        let fixture = fixture(skus, durability);
        group.bench_function(name, |b| {
            b.iter_custom(|iters| run(&fixture, window, iters, &latencies))
        });
        fixture.handle.shutdown();
        let h = latencies.lock();
        if h.is_empty() {
            continue; // filtered out on the command line
        }
        let line = format!(
            "{{\"bench\":\"{name}\",\"count\":{},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}}}",
            h.len(),
            h.value_at_quantile(0.50),
            h.value_at_quantile(0.99),
            h.value_at_quantile(0.999),
            h.max()
        );
        eprintln!("latency {line}");
        let path = target_dir()
            .join("criterion")
            .join(format!("runtime_latency_{name}.json"));
        let _ = std::fs::create_dir_all(path.parent().expect("parent"));
        std::fs::write(&path, line + "\n").expect("write latency report");
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
