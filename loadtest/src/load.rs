//! The generator: open loop at a target rate, or closed loop as fast as possible.
//!
//! Open loop: session `k` is due at `start + k / rate`; a scheduler thread spawns it then
//! whether or not earlier ones have finished, and waits for one of `connections`
//! slots. Its first request's latency counts from the due time, so a stalled
//! server shows up in the percentiles instead of silently slowing the generator
//! (coordinated omission). Closed loop: `connections` workers run sessions back to
//! back; the recorder corrects with `record_correct`.

use std::future::Future;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::stats::{Loop, Recorder, RunStats};

/// Sessions spawned and not yet finished, at most (open loop). When reached, the
/// generator waits; the sessions it then starts late still count from their due
/// time, so the wait shows up as latency.
const BACKLOG_MAX: usize = 100_000;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Sessions started per second; 0 runs closed loop.
    pub rate_per_s: f64,
    pub duration: Duration,
    pub connections: usize,
    /// Stop starting sessions once this many requests were made.
    pub requests_max: u64,
    /// After the duration, wait this long for sessions in flight, then abort them.
    pub drain: Duration,
}

impl LoadConfig {
    pub fn mode(&self) -> Loop {
        if self.rate_per_s > 0.0 {
            Loop::Open
        } else {
            Loop::Closed
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOutcome {
    pub started: u64,
    /// Sessions still running at the end of the drain, aborted.
    pub aborted: u64,
    /// Open loop: sessions due that were never started, the schedule having fallen
    /// further behind than the drain allows (the rate is past what was served).
    pub behind_schedule: u64,
    /// Wall time from the first session to the end of the load phase, or, if later,
    /// to when the last session got a connection to start on: an overloaded
    /// server's backlog (sessions due, waiting for a connection) counts against the
    /// time it took to serve (it ended at the last session scheduled, and reported
    /// the offered rate as the throughput), while one slow answer at the end does
    /// not stretch it.
    pub elapsed: Duration,
}

impl LoadOutcome {
    /// What the audit's notes say of the load itself: sessions aborted at the end of
    /// the drain, and sessions never started because the schedule fell behind.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.aborted > 0 {
            notes.push(format!(
                "{} sessions were still running at the end of the drain and were aborted",
                self.aborted
            ));
        }
        if self.behind_schedule > 0 {
            notes.push(format!(
                "{} sessions due were never started: the schedule fell further behind \
                 than the drain allows (the rate is past what was served; the throughput \
                 above is what was)",
                self.behind_schedule
            ));
        }
        notes
    }
}

/// Run sessions: `session(k, due)` performs session number `k`, due at `due`.
/// `stop` ends the load early (crash drills).
pub async fn run<F, Fut>(
    cfg: &LoadConfig,
    recorder: Arc<Recorder>,
    stop: Arc<AtomicBool>,
    session: F,
) -> LoadOutcome
where
    F: Fn(u64, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let session = Arc::new(session);
    let started: u64;
    let start = Instant::now();
    let end = start + cfg.duration;
    let mut set = JoinSet::new();
    let stopped =
        |rec: &Recorder| stop.load(Ordering::Relaxed) || rec.requests() >= cfg.requests_max;
    if cfg.rate_per_s > 0.0 {
        // Due times come from a plain thread with nanosleep: tokio's timer has 1 ms
        // granularity, and measuring from the due time would charge that slop to
        // the server as latency.
        let interval = Duration::from_secs_f64(1.0 / cfg.rate_per_s);
        let late_end = end + cfg.drain;
        let slots = Arc::new(Semaphore::new(cfg.connections.max(1)));
        // Nanoseconds after `start` at which the latest session got its connection.
        let last_slot_ns = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let in_flight = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (abort_tx, abort_rx) = tokio::sync::watch::channel(false);
        let handle = tokio::runtime::Handle::current();
        let generator = {
            let recorder = Arc::clone(&recorder);
            let stop = Arc::clone(&stop);
            let in_flight = Arc::clone(&in_flight);
            let session = Arc::clone(&session);
            let last_slot_ns = Arc::clone(&last_slot_ns);
            let requests_max = cfg.requests_max;
            std::thread::Builder::new()
                .name("loadtest-schedule".into())
                .spawn(move || {
                    let mut started = 0u64;
                    loop {
                        let due = start + interval.mul_f64(started as f64);
                        if due >= end
                            || stop.load(Ordering::Relaxed)
                            || recorder.requests() >= requests_max
                        {
                            return (started, false);
                        }
                        // Late sessions still start (counted from their due time),
                        // but not past the drain's length behind the load phase's
                        // end: an unreachable rate ran until --time-max.
                        if Instant::now() >= late_end {
                            return (started, true);
                        }
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                        if in_flight.load(Ordering::Relaxed) >= BACKLOG_MAX {
                            // Later sessions start late and count from their due
                            // time, so this wait shows up as latency.
                            std::thread::sleep(Duration::from_millis(1));
                            continue;
                        }
                        in_flight.fetch_add(1, Ordering::Relaxed);
                        let slots = Arc::clone(&slots);
                        let session = Arc::clone(&session);
                        let recorder = Arc::clone(&recorder);
                        let in_flight = Arc::clone(&in_flight);
                        let last_slot_ns = Arc::clone(&last_slot_ns);
                        let mut abort = abort_rx.clone();
                        let k = started;
                        handle.spawn(async move {
                            let run = async {
                                let Ok(_slot) = slots.acquire().await else {
                                    return;
                                };
                                let at_ns =
                                    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                                last_slot_ns.fetch_max(at_ns, Ordering::Relaxed);
                                session(k, due).await;
                                recorder.session_done();
                            };
                            tokio::select! {
                                () = run => {}
                                _ = abort.wait_for(|a| *a) => {}
                            }
                            in_flight.fetch_sub(1, Ordering::Relaxed);
                        });
                        started += 1;
                    }
                })
                .expect("spawning the scheduler thread")
        };
        let (started_open, fell_behind) = tokio::task::spawn_blocking(move || generator.join())
            .await
            .expect("scheduler join")
            .expect("scheduler thread");
        let behind_schedule = if fell_behind {
            let due = (cfg.duration.as_secs_f64() * cfg.rate_per_s).ceil() as u64;
            due.saturating_sub(started_open)
        } else {
            0
        };
        let scheduled = start.elapsed();
        let drain_end = Instant::now() + cfg.drain;
        while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let elapsed = scheduled.max(Duration::from_nanos(last_slot_ns.load(Ordering::Relaxed)));
        let aborted = in_flight.load(Ordering::Relaxed) as u64;
        if aborted > 0 {
            let _ = abort_tx.send(true);
            while in_flight.load(Ordering::Relaxed) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        return LoadOutcome {
            started: started_open,
            aborted,
            behind_schedule,
            elapsed,
        };
    }
    {
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        for _ in 0..cfg.connections.max(1) {
            let next = Arc::clone(&next);
            let session = Arc::clone(&session);
            let recorder = Arc::clone(&recorder);
            let stop = Arc::clone(&stop);
            let requests_max = cfg.requests_max;
            set.spawn(async move {
                while Instant::now() < end
                    && !stop.load(Ordering::Relaxed)
                    && recorder.requests() < requests_max
                {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    session(k, Instant::now()).await;
                    recorder.session_done();
                }
            });
        }
        // Wait for the end (or a stop) without busy-looping.
        while Instant::now() < end && !stopped(&recorder) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started = next.load(Ordering::Relaxed);
    }
    let elapsed = start
        .elapsed()
        .min(cfg.duration.max(Duration::from_millis(1)));
    let elapsed = if stop.load(Ordering::Relaxed) {
        start.elapsed()
    } else {
        elapsed
    };
    let drain_end = tokio::time::Instant::now() + cfg.drain;
    let mut aborted = 0;
    loop {
        match tokio::time::timeout_at(drain_end, set.join_next()).await {
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                aborted = set.len() as u64;
                set.abort_all();
                while set.join_next().await.is_some() {}
                break;
            }
        }
    }
    LoadOutcome {
        started,
        aborted,
        behind_schedule: 0,
        elapsed,
    }
}

/// [`run`] with the progress display (`label`) running beside it, stopped when the
/// load is over: what every scenario does.
pub async fn run_with_progress<F, Fut>(
    label: &str,
    cfg: &LoadConfig,
    recorder: Arc<Recorder>,
    session: F,
) -> LoadOutcome
where
    F: Fn(u64, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let done = Arc::new(AtomicBool::new(false));
    let progress = spawn_progress(
        label.to_string(),
        Arc::clone(&recorder),
        cfg.duration,
        Arc::clone(&done),
    );
    let outcome = run(cfg, recorder, Arc::new(AtomicBool::new(false)), session).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = progress.await;
    outcome
}

/// Live progress until `done` is set: an indicatif bar on a TTY, plain lines
/// every few seconds otherwise.
pub fn spawn_progress(
    label: String,
    recorder: Arc<Recorder>,
    total: Duration,
    done: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tty = std::io::stdout().is_terminal();
        let bar = if tty {
            let bar = indicatif::ProgressBar::new(total.as_millis() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{prefix} [{bar:30}] {elapsed_precise} {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_prefix(label.clone());
            Some(bar)
        } else {
            None
        };
        let mut tick = 0u64;
        while !done.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            tick += 1;
            let p = recorder.progress();
            let msg = format!(
                "{} req/s  requests {}  sold out {}  errors {}  p99 {}",
                p.last_second_rps,
                p.requests,
                p.sold_out,
                p.errors,
                fmt_us(p.p99_us)
            );
            match &bar {
                Some(bar) => {
                    bar.set_position(p.elapsed.as_millis() as u64);
                    bar.set_message(msg);
                }
                None if tick.is_multiple_of(20) => {
                    println!("[{label}] t={:.0}s {msg}", p.elapsed.as_secs_f64());
                }
                None => {}
            }
        }
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
    })
}

pub fn fmt_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}

/// A drill's load with holds that may be abandoned: run the sessions (with progress),
/// then wait the hold time and 1.5 s more, so that every abandoned hold has expired
/// before the audit compares levels exactly. The run's figures and its outcome.
pub async fn run_then_let_holds_expire<F, Fut>(
    label: &str,
    cfg: &LoadConfig,
    recorder: &Arc<Recorder>,
    ttl_ms: u64,
    session: F,
) -> (RunStats, LoadOutcome)
where
    F: Fn(u64, Instant) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let outcome = run_with_progress(label, cfg, Arc::clone(recorder), session).await;
    let stats = recorder.summary(label, outcome.elapsed);
    let wait = Duration::from_millis(ttl_ms + 1_500);
    println!(
        "[{label}] load done: {} sessions; waiting {:.1}s for abandoned holds to expire, then auditing",
        outcome.started,
        wait.as_secs_f64()
    );
    tokio::time::sleep(wait).await;
    (stats, outcome)
}
