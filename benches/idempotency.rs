//! Idempotency at peak, as a drill: millions of distinct keyed reservations through
//! the in-process runtime (durability `sync`, a real data dir), with a memory budget
//! that holds about a third of them. Every reservation must succeed (none refused
//! because of the number of keys), the index must stay within its budget throughout,
//! a retried recent key must get its original hold back, and the keys must survive a
//! restart. Also the cost of a key on the writer: apply with and without a key, and
//! the snapshot's share.
//!
//! `cargo bench --bench idempotency`; `SURGE_DRILL_KEYS` (3000000) and
//! `SURGE_DRILL_BUDGET_MB` (64) change the size. Prints a summary and writes
//! `target/criterion/idempotency_drill.json`.
#![allow(
    unsafe_code,
    reason = "a global allocator that counts live heap bytes must implement GlobalAlloc"
)]

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use surge_engine::{
    Acked, Command, Durability, Engine, EngineConfig, EngineHandle, IdempotencyKey,
    IdempotencyPolicy, IdempotencyStats, LineReq, Outcome, Query, QueryReply, Reply, State, Ticket,
};

/// The `surge` binary runs on mimalloc: the same allocator, counting live bytes.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every method forwards to `surge_alloc::Mimalloc` (a sound GlobalAlloc) with the
// arguments it was given, unchanged, and returns its result, so each pointer handed
// out is mimalloc's and goes back to it with the layout it was made with. The
// counting is one relaxed atomic add, which neither allocates (no re-entry) nor
// panics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds GlobalAlloc's contract for `layout` (non-zero
        // size), which is all mimalloc needs; the layout is passed unchanged.
        unsafe { surge_alloc::Mimalloc.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller upholds GlobalAlloc's contract for `layout` (non-zero
        // size), which is all mimalloc needs; the layout is passed unchanged.
        unsafe { surge_alloc::Mimalloc.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller guarantees `ptr` was allocated by this allocator with
        // `layout`; every allocation of ours is mimalloc's with that same layout.
        unsafe { surge_alloc::Mimalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: the caller guarantees `ptr` is ours with `layout` and that
        // `new_size` is valid for it; `ptr` is mimalloc's with that layout, so
        // mimalloc's realloc contract holds with the arguments unchanged.
        unsafe { surge_alloc::Mimalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const THREADS: u64 = 16;
const IN_FLIGHT_PER_THREAD: usize = 64;
const SKU: &str = "FLASH-1";
const WINDOW_MS: u64 = 24 * 60 * 60 * 1000;
/// Recent keys retried after the run and after the restart.
const RETRIED: u64 = 10_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A key like a client's: 36 characters, UUID-shaped, distinct for each `i`.
fn key_text(i: u64) -> String {
    let mixed = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
        mixed >> 32,
        (mixed >> 16) & 0xffff,
        (mixed >> 4) & 0xfff,
        i >> 48,
        i & 0xffff_ffff_ffff
    )
}

fn reserve() -> Command {
    Command::Reserve {
        lines: vec![LineReq {
            sku: SKU.into(),
            qty: 1,
        }],
        ttl_ms: 3_600_000,
        actor: "storefront".into(),
    }
}

fn key(i: u64) -> IdempotencyKey {
    IdempotencyKey {
        key: key_text(i),
        fingerprint: EngineHandle::fingerprint(&[b"POST", b"/v1/reservations", b"{}"]),
    }
}

fn hold_id(outcome: &Outcome) -> u64 {
    match outcome {
        Ok(Reply::Reservation(v)) => v.id.0,
        other => panic!("not a hold: {other:?}"),
    }
}

fn stats(handle: &EngineHandle) -> IdempotencyStats {
    match handle
        .query(Query::IdempotencyStats)
        .expect("queued")
        .wait()
    {
        Ok(Ok(QueryReply::Idempotency(stats))) => stats,
        other => panic!("{other:?}"),
    }
}

fn reserved(handle: &EngineHandle) -> u64 {
    match handle
        .query(Query::GetSku { sku: SKU.into() })
        .expect("queued")
        .wait()
    {
        Ok(Ok(QueryReply::Sku(s))) => s.reserved,
        other => panic!("{other:?}"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn mib(bytes: impl Into<f64>) -> f64 {
    bytes.into() / (1 << 20) as f64
}

fn target_dir() -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    std::fs::create_dir_all(&dir).expect("target dir");
    dir
}

/// Send `keys` keyed reservations from `THREADS` threads, each keeping
/// `IN_FLIGHT_PER_THREAD` in flight; the hold id each key got, by key number.
fn send_all(handle: &EngineHandle, keys: u64) -> (Vec<u64>, Histogram<u64>, Duration) {
    let started = Instant::now();
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = handle.clone();
            std::thread::spawn(move || {
                let mut hist = Histogram::<u64>::new(3).expect("histogram");
                let mut ids = Vec::new();
                let mut in_flight: std::collections::VecDeque<(u64, Instant, Ticket<Acked>)> =
                    std::collections::VecDeque::with_capacity(IN_FLIGHT_PER_THREAD);
                let mut settle =
                    |in_flight: &mut std::collections::VecDeque<(u64, Instant, Ticket<Acked>)>| {
                        let (i, sent, ticket) = in_flight.pop_front().expect("in flight");
                        let outcome = ticket.wait().expect("answered").outcome;
                        assert!(outcome.is_ok(), "key {i} refused: {outcome:?}");
                        ids.push((i, hold_id(&outcome)));
                        hist.record(sent.elapsed().as_micros() as u64)
                            .expect("in range");
                    };
                let mut i = t;
                while i < keys {
                    let sent = Instant::now();
                    let ticket = loop {
                        match handle.submit(reserve(), Some(key(i))) {
                            Ok(ticket) => break ticket,
                            Err(surge_engine::Error::Overloaded(_)) if !in_flight.is_empty() => {
                                settle(&mut in_flight)
                            }
                            Err(surge_engine::Error::Overloaded(_)) => std::thread::yield_now(),
                            Err(e) => panic!("{e}"),
                        }
                    };
                    in_flight.push_back((i, sent, ticket));
                    if in_flight.len() >= IN_FLIGHT_PER_THREAD {
                        settle(&mut in_flight);
                    }
                    i += THREADS;
                }
                while !in_flight.is_empty() {
                    settle(&mut in_flight);
                }
                (ids, hist)
            })
        })
        .collect();
    let mut ids = vec![0u64; keys as usize];
    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    for worker in workers {
        let (pairs, h) = worker.join().expect("worker");
        for (i, id) in pairs {
            ids[i as usize] = id;
        }
        hist.add(h).expect("same bounds");
    }
    (ids, hist, started.elapsed())
}

/// Retry keys `from..to`: how many got their original hold back.
fn retry(handle: &EngineHandle, ids: &[u64], from: u64, to: u64) -> u64 {
    let tickets: Vec<_> = (from..to)
        .map(|i| (i, handle.submit(reserve(), Some(key(i))).expect("room")))
        .collect();
    tickets
        .into_iter()
        .map(|(i, t)| u64::from(hold_id(&t.wait().expect("answered").outcome) == ids[i as usize]))
        .sum()
}

/// The writer's cost of a key: `State::apply` of one-line holds with and without a
/// key, past the budget; and the snapshot's encoding with and without the keys.
fn apply_cost(policy: IdempotencyPolicy, n: u64) -> serde_json::Value {
    let mut timings = Vec::new();
    let mut snapshots = Vec::new();
    for keyed in [false, true] {
        let (mut best_apply, mut best_encode, mut size) = (f64::MAX, f64::MAX, 0);
        let mut remembered = 0;
        // Best of three: the machine has two cores and other work on them.
        for _ in 0..3 {
            let mut state = State::new();
            let mut events = Vec::new();
            let setup = [
                Command::SetIdempotencyPolicy {
                    window_ms: policy.window_ms,
                    budget_bytes: policy.budget_bytes,
                },
                Command::DefineSku {
                    sku: SKU.into(),
                    name: String::new(),
                    on_hand: 1_000_000_000_000,
                    low_stock_threshold: 0,
                },
            ];
            for command in &setup {
                state
                    .apply(command, None, 1, &mut events)
                    .outcome
                    .expect("set up");
            }
            let keys: Vec<Option<IdempotencyKey>> = (0..n).map(|i| keyed.then(|| key(i))).collect();
            let command = reserve();
            let started = Instant::now();
            for (i, key) in keys.iter().enumerate() {
                events.clear();
                let applied =
                    state.apply(&command, key.as_ref(), 1_000 + i as u64 / 1000, &mut events);
                assert!(applied.outcome.is_ok());
            }
            best_apply = best_apply.min(started.elapsed().as_nanos() as f64 / n as f64);
            let started = Instant::now();
            size = state.encode_snapshot().len();
            best_encode = best_encode.min(started.elapsed().as_secs_f64() * 1e3);
            remembered = state.idempotency_stats().keys;
        }
        timings.push(best_apply);
        snapshots.push((best_encode, size));
        if keyed {
            println!(
                "apply, one-line hold: {:.0} ns without a key, {:.0} ns with one ({remembered} keys remembered)",
                timings[0], timings[1]
            );
            println!(
                "snapshot encoding on the writer: {:.0} ms / {:.1} MiB without keys, {:.0} ms / {:.1} MiB with {remembered} keys",
                snapshots[0].0,
                mib(snapshots[0].1 as f64),
                snapshots[1].0,
                mib(snapshots[1].1 as f64),
            );
            return serde_json::json!({
                "apply_ns_without_key": timings[0],
                "apply_ns_with_key": timings[1],
                "snapshot_ms_without_keys": snapshots[0].0,
                "snapshot_ms_with_keys": snapshots[1].0,
                "snapshot_bytes_without_keys": snapshots[0].1,
                "snapshot_bytes_with_keys": snapshots[1].1,
                "snapshot_keys": remembered,
            });
        }
    }
    unreachable!()
}

fn main() {
    let keys = env_u64("SURGE_DRILL_KEYS", 3_000_000);
    let budget_mb = env_u64("SURGE_DRILL_BUDGET_MB", 64);
    let policy = IdempotencyPolicy {
        window_ms: WINDOW_MS,
        budget_bytes: budget_mb << 20,
    };
    // First, in a fresh process: what a key costs the writer.
    let cost = apply_cost(policy, keys.min(1_500_000));
    let dir = tempfile::Builder::new()
        .prefix("surge-idem-drill-")
        .tempdir_in(target_dir())
        .expect("tempdir");
    let config = EngineConfig {
        data_dir: dir.path().to_path_buf(),
        durability: Durability::Sync,
        idempotency: Some(policy),
        ..EngineConfig::default()
    };
    let (handle, _) = Engine::open(config.clone()).expect("open");
    let define = Command::DefineSku {
        sku: SKU.into(),
        name: "Flash sale".into(),
        on_hand: 1_000_000_000_000,
        low_stock_threshold: 0,
    };
    handle
        .execute(define, None)
        .expect("queued")
        .expect("defined");
    let keys_max = stats(&handle).keys_max;
    println!(
        "drill: {keys} distinct keyed reservations, {THREADS} threads x {IN_FLIGHT_PER_THREAD} in flight, \
         durability sync; budget {budget_mb} MiB = {keys_max} keys"
    );
    let heap_before = LIVE_BYTES.load(Ordering::Relaxed);
    let rss_before = rss_bytes();

    // Watch the index while the load runs: it must never pass its budget.
    let done = Arc::new(AtomicBool::new(false));
    let peak_bytes = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (handle, done, peak) = (handle.clone(), Arc::clone(&done), Arc::clone(&peak_bytes));
        std::thread::spawn(move || {
            let mut samples = 0u64;
            while !done.load(Ordering::Relaxed) {
                let s = stats(&handle);
                assert!(s.bytes <= s.policy.budget_bytes, "over the budget: {s:?}");
                peak.fetch_max(s.bytes, Ordering::Relaxed);
                samples += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        })
    };
    let (ids, hist, elapsed) = send_all(&handle, keys);
    done.store(true, Ordering::Relaxed);
    let samples = watcher.join().expect("watcher");
    let rate = keys as f64 / elapsed.as_secs_f64();
    let end = stats(&handle);
    let heap = LIVE_BYTES.load(Ordering::Relaxed) - heap_before;
    let rss = rss_bytes();
    let effective_ms = end.effective_window_ms(now_ms());
    assert!(end.bytes <= policy.budget_bytes);
    assert_eq!(reserved(&handle), keys, "every keyed reservation held");
    println!(
        "sent: {keys} in {:.1} s = {rate:.0} keyed reservations/s, all held; p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        elapsed.as_secs_f64(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.value_at_quantile(0.999),
        hist.max()
    );
    println!(
        "index: {} keys remembered ({} forgotten, oldest first), {:.1} MiB counted of {budget_mb} MiB \
         (peak {:.1} MiB over {samples} samples); effective window {:.1} s at the end",
        end.keys,
        keys - end.keys,
        mib(end.bytes as f64),
        mib(peak_bytes.load(Ordering::Relaxed) as f64),
        effective_ms as f64 / 1e3
    );
    println!(
        "process: heap +{:.0} MiB (the holds and the index), RSS {:.0} -> {:.0} MiB",
        mib(heap as f64),
        mib(rss_before as f64),
        mib(rss as f64)
    );

    // Recent keys answer with their original hold; the oldest were forgotten.
    let recent = retry(&handle, &ids, keys - RETRIED, keys);
    assert_eq!(recent, RETRIED, "recent keys give back their hold");
    assert_eq!(reserved(&handle), keys, "retries held nothing more");
    let oldest = retry(&handle, &ids, 0, 1_000);
    if keys > keys_max {
        assert_eq!(oldest, 0, "the first keys were forgotten: they did not fit");
        println!(
            "retries: the newest {RETRIED} keys gave back their original holds; the first 1000 were forgotten and held anew"
        );
    } else {
        assert_eq!(oldest, 1_000, "every key fits the budget");
        println!(
            "retries: the newest {RETRIED} and the first 1000 keys gave back their original holds"
        );
    }

    // Restart: shutdown writes a snapshot; the keys come back with it.
    let before_restart = stats(&handle);
    let started = Instant::now();
    handle.shutdown();
    drop(handle);
    let shutdown_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let (handle, report) = Engine::open(config).expect("reopen");
    let reopen_s = started.elapsed().as_secs_f64();
    let after = stats(&handle);
    assert_eq!(after, before_restart, "the same index after the restart");
    let recent_after = retry(&handle, &ids, keys - RETRIED, keys);
    assert_eq!(recent_after, RETRIED, "keys survive a restart");
    println!(
        "restart: shutdown with snapshot {shutdown_s:.1} s, reopen {reopen_s:.1} s ({} records replayed); \
         {} keys remembered; the newest {RETRIED} still give back their holds",
        report.records_replayed, after.keys
    );
    handle.shutdown();

    let json = serde_json::json!({
        "keys_sent": keys,
        "budget_bytes": policy.budget_bytes,
        "keys_max": keys_max,
        "seconds": elapsed.as_secs_f64(),
        "keyed_reservations_per_s": rate,
        "refused": 0,
        "p50_us": hist.value_at_quantile(0.5),
        "p99_us": hist.value_at_quantile(0.99),
        "p999_us": hist.value_at_quantile(0.999),
        "keys_remembered": end.keys,
        "index_bytes": end.bytes,
        "index_bytes_peak": peak_bytes.load(Ordering::Relaxed),
        "effective_window_s": effective_ms as f64 / 1e3,
        "heap_bytes_after": heap,
        "rss_bytes_after": rss,
        "shutdown_s": shutdown_s,
        "reopen_s": reopen_s,
        "writer": cost,
    });
    let path = target_dir()
        .join("criterion")
        .join("idempotency_drill.json");
    let _ = std::fs::create_dir_all(path.parent().expect("parent"));
    std::fs::write(&path, format!("{json}\n")).expect("write the drill report");
}
