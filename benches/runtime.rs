//! The runtime end to end in process: 64 submitting threads, durability `sync` on a
//! real data dir (memory-mapped WAL, pipelined group commit), one hot SKU vs 10k SKUs.
//!
//! `cargo bench --bench runtime`. Criterion ids (issue 8): `runtime/sync_closed_loop_64`,
//! `runtime/sync_closed_loop_64_hot`, `runtime/async_closed_loop_64`,
//! `runtime/sync_pipelined_64x64`, `runtime/writer_iterations`; and the harness's own
//! ceiling, `runtime/echo_closed_loop_64` (no engine behind the queue). Each counts exactly
//! the reservations it made: a sample of `iters` makes `iters` reservations, split
//! over the threads. The threads are spawned before the clock starts; latency
//! percentiles (submit to durable reply) leave out criterion's warm-up, and are
//! printed and written to `target/criterion/runtime_latency_<bench>.json`.
//!
//! `SURGE_PRETOUCH_MIB=N` pretouches N MiB first, as `surge --pretouch-mib` does before
//! a sale (`surge_alloc::pretouch`; BENCHMARKS.md, "The first touch of memory"); unset or 0,
//! the benches run on memory as the OS hands it out, like the server by default.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use crossbeam_channel::{Receiver, Sender};
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use surge_engine::{
    Command, Durability, Engine, EngineConfig, EngineHandle, LatencyHistogram, LineReq,
};

// The `surge` binary runs on mimalloc; measure with the same allocator.
#[global_allocator]
static ALLOCATOR: surge_alloc::Mimalloc = surge_alloc::Mimalloc;

const THREADS: usize = 64;
const WARM_UP: Duration = Duration::from_secs(3);

/// Reservations one fixture makes before a fresh one replaces it, between samples.
/// Its holds never end during a run (10-minute TTL) and the engine refuses a hold
/// beyond `HELD_RESERVATIONS_MAX` (10M): a fast run of the pipelined bench reached
/// that, its threads panicked on the refusal, and the run hung.
const HOLDS_PER_FIXTURE_MAX: u64 = surge_engine::limits::HELD_RESERVATIONS_MAX as u64 / 2;

/// One sample's work for one thread: how many reservations, from which offset.
struct Work {
    count: u64,
    offset: u64,
}

/// An engine on a fresh data dir with `skus` SKUs of ample stock, and 64 threads
/// parked until a sample hands them work.
struct Fixture {
    handle: EngineHandle,
    work: Vec<Sender<Work>>,
    start: Arc<Barrier>,
    /// Each thread's sample, or its panic (passed on, so that a failing thread
    /// stops the run instead of leaving it waiting).
    done: Receiver<std::thread::Result<Histogram<u64>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    created: Instant,
    /// Reservations made so far (all still held).
    holds: u64,
    _dir: tempfile::TempDir,
}

fn fixture(skus: usize, config: EngineConfig, window: usize) -> Fixture {
    let dir = tempfile::Builder::new()
        .prefix("surge-bench-")
        .tempdir_in(target_dir())
        .expect("tempdir");
    let config = EngineConfig {
        data_dir: dir.path().to_path_buf(),
        ..config
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
                on_hand: 1_000_000_000_000,
                low_stock_threshold: 0,
            };
            handle.submit(cmd, None).expect("room in the queue")
        })
        .collect();
    for t in tickets {
        t.wait().expect("answered").outcome.expect("defined");
    }
    let start = Arc::new(Barrier::new(THREADS + 1));
    let (done_tx, done) = crossbeam_channel::unbounded();
    let mut work = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..THREADS {
        let (tx, rx) = crossbeam_channel::bounded::<Work>(1);
        work.push(tx);
        let handle = handle.clone();
        let names = Arc::clone(&names);
        let start = Arc::clone(&start);
        let done_tx = done_tx.clone();
        threads.push(std::thread::spawn(move || {
            while let Ok(w) = rx.recv() {
                start.wait();
                let sample = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    reserve_loop(&handle, &names, window, &w)
                }));
                let failed = sample.is_err();
                done_tx.send(sample).expect("bench thread");
                if failed {
                    break;
                }
            }
        }));
    }
    Fixture {
        handle,
        work,
        start,
        done,
        threads,
        created: Instant::now(),
        holds: 0,
        _dir: dir,
    }
}

type InFlight = std::collections::VecDeque<(Instant, surge_engine::Ticket<surge_engine::Acked>)>;

/// `w.count` reservations keeping `window` in flight (1: closed loop, wait for
/// each reply before sending the next).
fn reserve_loop(
    handle: &EngineHandle,
    names: &[String],
    window: usize,
    w: &Work,
) -> Histogram<u64> {
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut in_flight: InFlight = std::collections::VecDeque::with_capacity(window);
    let mut settle = |in_flight: &mut InFlight| {
        let (sent, ticket) = in_flight.pop_front().expect("in flight");
        ticket.wait().expect("answered").outcome.expect("held");
        hist.record(sent.elapsed().as_micros() as u64)
            .expect("in range");
    };
    for i in 0..w.count {
        let sku = names[((w.offset + i) as usize) % names.len()].clone();
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
}

/// Exactly `iters` reservations over the 64 parked threads; the clock runs from
/// the moment all are released until the last one is done.
fn run(fixture: &Fixture, iters: u64, latencies: &Mutex<Histogram<u64>>) -> Duration {
    let threads = THREADS as u64;
    for (t, tx) in fixture.work.iter().enumerate() {
        let t = t as u64;
        let count = iters / threads + u64::from(t < iters % threads);
        tx.send(Work {
            count,
            offset: t * 1_000_003,
        })
        .expect("bench thread alive");
    }
    fixture.start.wait();
    let started = Instant::now();
    let mut merged = Histogram::<u64>::new(3).expect("histogram");
    for _ in 0..THREADS {
        match fixture.done.recv().expect("bench thread") {
            Ok(hist) => merged.add(hist).expect("same bounds"),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
    let elapsed = started.elapsed();
    if fixture.created.elapsed() > WARM_UP {
        latencies.lock().add(merged).expect("same bounds");
    }
    elapsed
}

/// One sample of `iters` reservations on `current`. When the sample would take it
/// past `HOLDS_PER_FIXTURE_MAX`, a fresh fixture from `make` takes its place first
/// (the warm-up counted as behind it) and the old one goes to `retire`.
fn sample(
    current: &Mutex<Fixture>,
    iters: u64,
    latencies: &Mutex<Histogram<u64>>,
    make: impl FnOnce() -> Fixture,
    retire: impl FnOnce(Fixture),
) -> Duration {
    let mut current = current.lock();
    if current.holds + iters > HOLDS_PER_FIXTURE_MAX {
        let mut fresh = make();
        fresh.created = current.created;
        retire(std::mem::replace(&mut *current, fresh));
    }
    current.holds += iters;
    run(&current, iters, latencies)
}

fn finish(fixture: Fixture) {
    let Fixture {
        handle,
        work,
        threads,
        ..
    } = fixture;
    drop(work);
    for t in threads {
        t.join().expect("bench thread");
    }
    handle.shutdown();
}

fn target_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).expect("target dir");
    dir
}

/// What a fixture's commits were: how long each took on average (µs) and how many
/// records each made durable (`None` when it committed nothing: no log).
fn commits_of(fixture: &Fixture) -> Option<(f64, f64)> {
    let stats = fixture.handle.stats();
    let commits = stats.wal_commit.count();
    let records = stats
        .records_logged
        .load(std::sync::atomic::Ordering::Relaxed);
    (commits > 0).then(|| {
        (
            stats.wal_commit.sum_seconds() * 1e6 / commits as f64,
            records as f64 / commits as f64,
        )
    })
}

/// Prints the run's round-trip latencies and, where it had a log, what the last
/// fixture's commits took (a closed loop's round trip is about two commits: the one
/// in progress when a request arrives, then its own).
fn report(name: &str, h: &Histogram<u64>, commits: Option<(f64, f64)>) {
    if h.is_empty() {
        return; // filtered out on the command line
    }
    let commits = commits.map_or_else(String::new, |(avg_us, records)| {
        format!(",\"commit_avg_us\":{avg_us:.0},\"records_per_commit\":{records:.1}")
    });
    let line = format!(
        "{{\"bench\":\"{name}\",\"count\":{},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{}{commits}}}",
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

/// `SURGE_PRETOUCH_MIB` MiB pretouched, as the server does with `--pretouch-mib`.
fn pretouch_from_env() {
    let mib: usize = match std::env::var("SURGE_PRETOUCH_MIB") {
        Ok(mib) => mib.parse().expect("SURGE_PRETOUCH_MIB: MiB, an integer"),
        Err(_) => 0,
    };
    if mib == 0 {
        return;
    }
    let started = Instant::now();
    let bytes = mib
        .checked_mul(1 << 20)
        .expect("SURGE_PRETOUCH_MIB: too large");
    let touched = surge_alloc::pretouch(bytes).expect("pretouch");
    eprintln!(
        "pretouched {} MiB in {:.1} s (SURGE_PRETOUCH_MIB)",
        touched >> 20,
        started.elapsed().as_secs_f64()
    );
}

fn bench(c: &mut Criterion) {
    pretouch_from_env();
    let mut group = c.benchmark_group("runtime");
    group.sample_size(10);
    group.warm_up_time(WARM_UP);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    let sync = EngineConfig::default();
    let no_follower = EngineConfig {
        follower: false,
        ..EngineConfig::default()
    };
    let asynchronous = EngineConfig {
        durability: Durability::Async,
        ..EngineConfig::default()
    };
    let no_durability = EngineConfig {
        durability: Durability::None,
        ..EngineConfig::default()
    };
    for (name, skus, config, window) in [
        ("sync_closed_loop_64", 10_000, &sync, 1),
        ("sync_closed_loop_64_hot", 1, &sync, 1),
        ("async_closed_loop_64", 10_000, &asynchronous, 1),
        // No log at all: the engine's closed loop without the disk's price.
        ("none_closed_loop_64", 10_000, &no_durability, 1),
        ("sync_pipelined_64x64", 10_000, &sync, 64),
        // The same without the follower: what the second copy costs on two cores.
        ("sync_pipelined_64x64_no_follower", 10_000, &no_follower, 64),
        ("sync_closed_loop_64_no_follower", 10_000, &no_follower, 1),
    ] {
        if !criterion_filter_matches(name) {
            continue;
        }
        let latencies = Mutex::new(Histogram::<u64>::new(3).expect("histogram"));
        let current = Mutex::new(fixture(skus, config.clone(), window));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let make = || fixture(skus, config.clone(), window);
                sample(&current, iters, &latencies, make, finish)
            })
        });
        let last = current.into_inner();
        let commits = commits_of(&last);
        finish(last);
        report(name, &latencies.lock(), commits);
    }
    echo_closed_loop(&mut group);
    writer_iterations(&mut group);
    group.finish();
}

/// `runtime/echo_closed_loop_64`: the ceiling of this harness on this machine. The
/// same 64 threads, each with one request in flight, hand a reply channel (the
/// engine's own kind, a tokio oneshot, waited on the same way) through a bounded
/// crossbeam queue to one thread that answers everything it finds at once and
/// does nothing else: no state, no log, no second hop. A closed loop of threads
/// costs a wake-up and a context switch per request on each side, which no engine
/// behind the queue can avoid; the engine's closed-loop rate divided by this one
/// is how much of that ceiling it reaches.
fn echo_closed_loop(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    type Reply = tokio::sync::oneshot::Sender<u64>;
    let name = "echo_closed_loop_64";
    if !criterion_filter_matches(name) {
        return;
    }
    let (to_echo, queue) =
        crossbeam_channel::bounded::<Reply>(EngineConfig::default().queue_len_max);
    let echo = std::thread::spawn(move || {
        let mut answered = 0_u64;
        let mut batch = Vec::with_capacity(THREADS);
        while let Ok(first) = queue.recv() {
            batch.push(first);
            batch.extend(queue.try_iter().take(THREADS - 1));
            for reply in batch.drain(..) {
                answered += 1;
                let _ = reply.send(answered);
            }
        }
    });
    let latencies = Mutex::new(Histogram::<u64>::new(3).expect("histogram"));
    let created = Instant::now();
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Barrier::new(THREADS + 1);
            let merged = Mutex::new(Histogram::<u64>::new(3).expect("histogram"));
            let started = std::thread::scope(|scope| {
                for t in 0..THREADS as u64 {
                    let (to_echo, start, merged) = (to_echo.clone(), &start, &merged);
                    let count = iters / THREADS as u64 + u64::from(t < iters % THREADS as u64);
                    scope.spawn(move || {
                        let mut hist = Histogram::<u64>::new(3).expect("histogram");
                        start.wait();
                        for _ in 0..count {
                            let sent = Instant::now();
                            let (reply, answer) = tokio::sync::oneshot::channel();
                            to_echo.send(reply).expect("echo thread");
                            answer.blocking_recv().expect("answered");
                            hist.record(sent.elapsed().as_micros() as u64)
                                .expect("in range");
                        }
                        merged.lock().add(hist).expect("same bounds");
                    });
                }
                start.wait();
                // The scope joins the threads: the clock stops when the last is done.
                Instant::now()
            });
            let elapsed = started.elapsed();
            if created.elapsed() > WARM_UP {
                latencies
                    .lock()
                    .add(merged.into_inner())
                    .expect("same bounds");
            }
            elapsed
        })
    });
    drop(to_echo);
    echo.join().expect("echo thread");
    report(name, &latencies.lock(), None);
}

/// `runtime/writer_iterations`: reservations from 64 threads with 64 in flight each,
/// a snapshot every 200k records and 16 MiB segments (so segments roll during the
/// run); prints the writer loop's iteration times (sync excluded) from the engine's
/// own histograms, those of every fixture the run used.
fn writer_iterations(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    let name = "writer_iterations";
    if !criterion_filter_matches(name) {
        return;
    }
    let config = EngineConfig {
        snapshot_every_records: 200_000,
        // Every 200k records, whatever the state's size (issue 8's bench).
        snapshot_log_percent_min: 0,
        wal: surge_engine::wal::WalConfig {
            segment_bytes: 16 << 20,
            ..surge_engine::wal::WalConfig::default()
        },
        ..EngineConfig::default()
    };
    let latencies = Mutex::new(Histogram::<u64>::new(3).expect("histogram"));
    let (iterations, commits) = (LatencyHistogram::default(), LatencyHistogram::default());
    let iterations_cpu = LatencyHistogram::default();
    // `rolls`: at least this many (a segment's padding and headers are not counted).
    let (mut snapshots, mut rolls) = (0, 0);
    let mut keep_figures = |fixture: &Fixture| {
        let stats = fixture.handle.stats();
        iterations.absorb(&stats.writer_iteration);
        iterations_cpu.absorb(&stats.writer_iteration_cpu);
        commits.absorb(&stats.wal_commit);
        snapshots += stats.snapshots.load(std::sync::atomic::Ordering::Relaxed);
        // Each segment the fixture's log filled was a roll.
        rolls +=
            stats.wal_bytes.load(std::sync::atomic::Ordering::Relaxed) / config.wal.segment_bytes;
    };
    let current = Mutex::new(fixture(10_000, config.clone(), 64));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let make = || fixture(10_000, config.clone(), 64);
            sample(&current, iters, &latencies, make, |replaced| {
                keep_figures(&replaced);
                finish(replaced);
            })
        })
    });
    let last = current.into_inner();
    keep_figures(&last);
    // The figures are only issue 8's if the run had what it asks for: snapshots
    // and segment rolls during the load.
    assert!(
        snapshots > 0 && rolls > 0,
        "the run took {snapshots} snapshots and {rolls} segment rolls: none is not the bench"
    );
    let bound = |h: &LatencyHistogram, q: f64| {
        h.quantile_bound_us(q)
            .map_or("> 100000".to_string(), |us| format!("<= {us}"))
    };
    // Iterations above 1, 5 and 10 ms: the buckets are too coarse for a
    // quantile to show a change below one bound.
    let over = |h: &LatencyHistogram, bound_us: u64| {
        let (cumulative, total) = h.cumulative();
        total
            - cumulative
                .iter()
                .find(|&&(bound, _)| bound == bound_us)
                .map_or(0, |&(_, count)| count)
    };
    let (h, cpu) = (&iterations, &iterations_cpu);
    // The `cpu_` figures are the writer thread's CPU time in the same iterations:
    // where the wall figures are above them, the writer was off a core.
    let line = format!(
        "{{\"bench\":\"{name}\",\"iterations\":{},\"p99_us\":\"{}\",\"p999_us\":\"{}\",\"over_1ms\":{},\"over_5ms\":{},\"over_10ms\":{},\"max_us\":{},\"cpu_p999_us\":\"{}\",\"cpu_over_1ms\":{},\"cpu_over_10ms\":{},\"cpu_max_us\":{},\"snapshots\":{},\"rolls_min\":{},\"commit_avg_us\":{:.0}}}",
        h.count(),
        bound(h, 0.99),
        bound(h, 0.999),
        over(h, 1_000),
        over(h, 5_000),
        over(h, 10_000),
        h.max().as_micros(),
        bound(cpu, 0.999),
        over(cpu, 1_000),
        over(cpu, 10_000),
        cpu.max().as_micros(),
        snapshots,
        rolls,
        commits.sum_seconds() * 1e6 / commits.count().max(1) as f64,
    );
    eprintln!("writer {line}");
    let path = target_dir()
        .join("criterion")
        .join(format!("runtime_{name}.json"));
    let _ = std::fs::create_dir_all(path.parent().expect("parent"));
    std::fs::write(&path, line + "\n").expect("write writer report");
    finish(last);
    // Its commits are in the `writer` line, over every fixture.
    report(name, &latencies.lock(), None);
}

/// Criterion filters by id on the command line; skip building fixtures for benches
/// that will not run (each one defines 10k SKUs on a fresh data dir).
fn criterion_filter_matches(name: &str) -> bool {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    filters.is_empty()
        || filters
            .iter()
            .any(|f| format!("runtime/{name}").contains(f.as_str()))
}

criterion_group!(benches, bench);
criterion_main!(benches);
