//! `crash`: run surge on a temporary data dir, drive load, SIGKILL it at random
//! moments (some while it is still recovering), restart it, and after each restart
//! check that every acknowledged write is there and the stock invariants hold.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::audit::{Accounting, Audit, Ledger, SkuDef, verify};
use crate::flash::{FlashConfig, Shop, define_skus, run_tag, shopper, sku_name};
use crate::http::HttpClient;
use crate::load::{self, LoadConfig};
use crate::rng::{Rng, Zipf};
use crate::server::{SpawnConfig, Surge, free_port};
use crate::stats::{Recorder, RunStats};

#[derive(Debug, Clone)]
pub struct CrashConfig {
    pub bin: PathBuf,
    pub restarts: u32,
    pub durability: String,
    pub extra_args: Vec<String>,
    pub flash: FlashConfig,
    pub connections: usize,
    /// Load runs this long (uniformly drawn) before each kill.
    pub load_ms_min: u64,
    pub load_ms_max: u64,
    /// Share of restarts that are killed again while recovering, in percent.
    pub recovery_kill_pct: u32,
    /// Check everything after a restart while the ledger is at most this big;
    /// beyond it, check what is new since the last check plus a random sample of
    /// the rest, and everything every 10th restart and at the end.
    pub verify_full_max: usize,
    pub ready_timeout: Duration,
    pub request_timeout: Duration,
    pub audit_concurrency: usize,
    /// Stop after this long in all, whatever the restart count.
    pub time_max: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Restart {
    pub n: u32,
    /// Load before the kill.
    pub load_ms: u64,
    /// Killed again this many times before it became ready.
    pub killed_while_recovering: u32,
    /// Spawn to `/readyz` 200 of the start that became ready.
    pub recovery_ms: f64,
    pub checked_reservations: usize,
    pub checked_orders: usize,
    pub full_check: bool,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct CrashReport {
    pub restarts_done: u32,
    pub kills: u32,
    pub kills_while_recovering: u32,
    /// Of those, kills when `/readyz` was observed not ready just before.
    pub kills_confirmed_not_ready: u32,
    pub acknowledged_writes: u64,
    pub acknowledged_reservations: usize,
    pub acknowledged_orders: usize,
    pub lost_writes: u64,
    pub recovery_ms_min: f64,
    pub recovery_ms_p50: f64,
    pub recovery_ms_p99: f64,
    pub recovery_ms_max: f64,
    pub restarts: Vec<Restart>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

/// Everything from `from` on, plus `extra` random picks from before it.
fn sample<T: Clone>(v: &[T], from: usize, extra: usize, rng: &mut Rng) -> Vec<T> {
    let mut out = v[from..].to_vec();
    for _ in 0..extra.min(from) {
        out.push(v[rng.below(from as u64) as usize].clone());
    }
    out
}

pub async fn run(cfg: CrashConfig) -> anyhow::Result<(RunStats, Audit, CrashReport)> {
    let started = Instant::now();
    let dir = crate::stop::DrillDir::new("surge-crash-").context("the crash drill's data dir")?;
    let port = free_port()?;
    let spawn_cfg = SpawnConfig {
        bin: cfg.bin.clone(),
        data_dir: dir.path().join("data"),
        port,
        durability: cfg.durability.clone(),
        extra_args: cfg.extra_args.clone(),
    };
    let new_client =
        |surge: &Surge| HttpClient::new(&surge.url, None, cfg.connections, cfg.request_timeout);
    let mut surge = Surge::spawn(&spawn_cfg)?;
    let mut client = new_client(&surge);
    let first_ready = surge.wait_ready(&client, cfg.ready_timeout).await?;
    println!(
        "[crash] surge {} on {} (data {}), ready in {:.1} ms",
        cfg.bin.display(),
        surge.url.base,
        dir.path().display(),
        first_ready.as_secs_f64() * 1e3
    );
    let tag = run_tag(cfg.flash.seed);
    let skus: Vec<SkuDef> = (0..cfg.flash.skus)
        .map(|k| SkuDef {
            sku: sku_name(&tag, k),
            received: cfg.flash.stock,
        })
        .collect();
    define_skus(&client, &skus).await.context("defining SKUs")?;
    let recorder = Arc::new(Recorder::new(crate::stats::Loop::Closed));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Rng::new(cfg.flash.seed ^ 0xC0A5_C0A5);
    let mut report = CrashReport {
        restarts_done: 0,
        kills: 0,
        kills_while_recovering: 0,
        kills_confirmed_not_ready: 0,
        acknowledged_writes: 0,
        acknowledged_reservations: 0,
        acknowledged_orders: 0,
        lost_writes: 0,
        recovery_ms_min: 0.0,
        recovery_ms_p50: 0.0,
        recovery_ms_p99: 0.0,
        recovery_ms_max: 0.0,
        restarts: Vec::new(),
    };
    let mut audit = Audit::new();
    let mut checked_res = 0usize;
    let mut checked_orders = 0usize;
    let mut last_recovery = first_ready;
    let load_started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let progress = load::spawn_progress(
        "crash".into(),
        Arc::clone(&recorder),
        cfg.time_max,
        Arc::clone(&done),
    );
    for n in 1..=cfg.restarts {
        if started.elapsed() >= cfg.time_max {
            audit.rounds_cut_short(n, cfg.restarts, "restarts");
            break;
        }
        let flash = cfg.flash.for_round(n);
        let shop = Arc::new(Shop {
            client: client.clone(),
            recorder: Arc::clone(&recorder),
            ledger: Arc::clone(&ledger),
            skus: skus.clone(),
            zipf: Zipf::new(flash.skus, flash.zipf_s),
            cfg: flash,
            tag: format!("cr-{tag}-{n}"),
            lenient: true,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let load_cfg = LoadConfig {
            rate_per_s: 0.0,
            duration: Duration::from_secs(3600),
            connections: cfg.connections,
            requests_max: u64::MAX,
            drain: cfg.request_timeout * 3,
        };
        let load_task = {
            let stop = Arc::clone(&stop);
            let recorder = Arc::clone(&recorder);
            let shop = Arc::clone(&shop);
            tokio::spawn(async move {
                load::run(&load_cfg, recorder, stop, move |k, due| {
                    shopper(Arc::clone(&shop), k, due)
                })
                .await
            })
        };
        let load_ms = rng.range(cfg.load_ms_min, cfg.load_ms_max.max(cfg.load_ms_min));
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        surge.kill9().await?;
        report.kills += 1;
        stop.store(true, Ordering::Relaxed);
        load_task.await.context("load task")?;

        // Restart; sometimes kill it again while it is recovering.
        let mut killed_while_recovering = 0u32;
        let recovery = loop {
            surge = Surge::spawn(&spawn_cfg)?;
            client = new_client(&surge);
            if killed_while_recovering < 2 && rng.below(100) < u64::from(cfg.recovery_kill_pct) {
                let within_us = (last_recovery.as_micros() as u64).max(200);
                tokio::time::sleep(Duration::from_micros(rng.below(within_us))).await;
                let ready = matches!(
                    tokio::time::timeout(Duration::from_millis(2), client.get("/readyz")).await,
                    Ok(Ok(r)) if r.status == 200
                );
                surge.kill9().await?;
                report.kills += 1;
                report.kills_while_recovering += 1;
                if !ready {
                    report.kills_confirmed_not_ready += 1;
                }
                killed_while_recovering += 1;
                continue;
            }
            break surge.wait_ready(&client, cfg.ready_timeout).await?;
        };
        last_recovery = recovery;

        // Check.
        let snapshot = ledger.lock().expect("ledger").clone();
        let total = snapshot.reservations.len() + snapshot.orders.len();
        let full = total <= cfg.verify_full_max || n % 10 == 0 || n == cfg.restarts;
        let part = if full {
            snapshot
        } else {
            let extra = cfg.verify_full_max / 4;
            Ledger {
                reservations: sample(&snapshot.reservations, checked_res, extra, &mut rng),
                orders: sample(&snapshot.orders, checked_orders, extra, &mut rng),
                unanswered_order_nos: Vec::new(),
                unanswered_reservations: snapshot.unanswered_reservations,
            }
        };
        let accounting = if full {
            Accounting::Exact
        } else {
            Accounting::Invariants
        };
        let mut a = verify(&client, &part, &skus, accounting, cfg.audit_concurrency).await;
        a.skus.clear();
        // Per-restart notes repeat; the final check writes the summary.
        a.notes.clear();
        {
            let l = ledger.lock().expect("ledger");
            checked_res = l.reservations.len();
            checked_orders = l.orders.len();
        }
        let passed = a.passed;
        if !passed {
            println!(
                "[crash] restart {n}: audit FAILED: {}",
                a.failures.first().map_or("", String::as_str)
            );
        }
        report.restarts.push(Restart {
            n,
            load_ms,
            killed_while_recovering,
            recovery_ms: recovery.as_secs_f64() * 1e3,
            checked_reservations: part.reservations.len(),
            checked_orders: part.orders.len(),
            full_check: full,
            passed,
        });
        report.restarts_done = n;
        audit.merge(a);
    }
    done.store(true, Ordering::Relaxed);
    let _ = progress.await;
    let stats = recorder.summary("surge (crash)", load_started.elapsed());
    // A final full check of everything, then a clean stop.
    let snapshot = ledger.lock().expect("ledger").clone();
    let mut last = verify(
        &client,
        &snapshot,
        &skus,
        Accounting::Exact,
        cfg.audit_concurrency,
    )
    .await;
    // The final check covers every write acknowledged: its losses are all of them
    // (each restart's check saw the same losses again, so summing counted a write
    // lost at the first restart once per check since).
    report.lost_writes = last.lost;
    if report.restarts_done == 0 {
        last.fail(format!(
            "no restart ran (0 of {}): the drill checked nothing it was asked to",
            cfg.restarts
        ));
    }
    report.acknowledged_reservations = snapshot.reservations.len();
    report.acknowledged_orders = snapshot.orders.len();
    report.acknowledged_writes = stats.per_op.values().map(|o| o.ok).sum();
    last.notes.push(format!(
        "final check: {} reservations and {} orders acknowledged across {} kills",
        snapshot.reservations.len(),
        snapshot.orders.len(),
        report.kills
    ));
    audit.merge(last);
    surge.terminate(Duration::from_secs(10)).await?;
    let mut rec: Vec<f64> = report.restarts.iter().map(|r| r.recovery_ms).collect();
    rec.sort_by(f64::total_cmp);
    report.recovery_ms_min = rec.first().copied().unwrap_or(0.0);
    report.recovery_ms_p50 = percentile(&rec, 0.5);
    report.recovery_ms_p99 = percentile(&rec, 0.99);
    report.recovery_ms_max = rec.last().copied().unwrap_or(0.0);
    Ok((stats, audit, report))
}
