//! `surge-loadtest`: peak-readiness drills for surge.
//!
//! A library so the tests can drive drills and audits directly; the binary is a
//! thin `main`. It is a tool, so errors are `anyhow` throughout.

pub mod audit;
pub mod crash;
pub mod failover;
pub mod flash;
pub mod html;
pub mod http;
pub mod lifecycle;
pub mod limited;
pub mod load;
pub mod redis;
pub mod report;
pub mod rng;
pub mod server;
pub mod stats;
pub mod stop;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::flash::{FlashConfig, Mix};
use crate::http::{HttpClient, check_loopback, parse_base};
use crate::load::LoadConfig;
use crate::report::{DrillReport, SystemRun};
use crate::server::{SpawnConfig, Surge, find_surge, free_port};

#[derive(Debug, Parser)]
#[command(
    name = "surge-loadtest",
    version,
    about = "Peak-readiness drills for surge: open-loop load, audits, crash drills, reports."
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Args)]
pub struct Common {
    /// A running surge to drive, e.g. http://127.0.0.1:8080.
    #[arg(long, global = true, conflicts_with = "spawn")]
    pub target: Option<String>,
    /// Start surge on a temporary data dir and a free loopback port; stop it after
    /// (also when the drill is stopped by SIGINT, SIGTERM, SIGHUP or --time-max).
    #[arg(long, global = true)]
    pub spawn: bool,
    /// The surge binary for --spawn and crash (default: target/release/surge, then
    /// target/debug/surge under the workspace).
    #[arg(long, global = true)]
    pub surge_bin: Option<PathBuf>,
    /// Durability of a spawned surge: sync, async or none (--json records null for
    /// a --target server, whose durability the drill does not know).
    #[arg(long, global = true, default_value = "sync")]
    pub durability: String,
    /// Extra argument for a spawned surge (repeatable), e.g. --surge-arg=--snapshot-every-records=5000.
    #[arg(long = "surge-arg", global = true, allow_hyphen_values = true)]
    pub surge_args: Vec<String>,
    /// Bearer token (admin, to define the drill's SKUs).
    #[arg(
        long,
        global = true,
        env = "SURGE_LOADTEST_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Allow a target (or Redis) that is not a loopback address.
    #[arg(long, global = true)]
    pub allow_non_loopback: bool,
    /// Sessions started per second (open loop); 0 runs closed loop, as fast as possible.
    #[arg(long, global = true, default_value_t = 1000.0)]
    pub rate: f64,
    /// How long to generate load, e.g. 30s, 2m.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent connections (sessions in flight at most).
    #[arg(long, global = true, default_value_t = 32)]
    pub connections: usize,
    /// Seed: the same seed drives the same sessions.
    #[arg(long, global = true, default_value_t = 1)]
    pub seed: u64,
    /// Stop starting sessions after this many requests.
    #[arg(long, global = true, default_value_t = 50_000_000)]
    pub requests_max: u64,
    /// Per-request timeout.
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Hard limit on the whole drill; past it the process stops its children, removes
    /// its temporary dirs and exits 3.
    #[arg(long, global = true, default_value = "2h", value_parser = humantime::parse_duration)]
    pub time_max: Duration,
    /// Write every figure as JSON here.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report here.
    #[arg(long, global = true)]
    pub report: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct FlashArgs {
    /// Hot SKUs.
    #[arg(long, default_value_t = 16)]
    pub skus: usize,
    /// Units of each SKU at the start.
    #[arg(long, default_value_t = 500)]
    pub stock: u64,
    /// Distinct shoppers (customer ids).
    #[arg(long, default_value_t = 100_000)]
    pub shoppers: u64,
    /// Zipf exponent of SKU demand (0 = uniform).
    #[arg(long, default_value_t = 1.1)]
    pub zipf: f64,
    /// What shoppers do after a successful hold, in weights.
    #[arg(long, default_value = "pay=60,abandon=20,cancel=20")]
    pub mix: Mix,
    /// Hold time of reservations (abandoned ones expire after it).
    #[arg(long, default_value_t = 2000)]
    pub ttl_ms: u64,
    /// Units per reservation at most (1..=this).
    #[arg(long, default_value_t = 2)]
    pub qty_max: u64,
    #[arg(long, default_value_t = 1999)]
    pub unit_price: u64,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Hot SKUs, small stock, Zipf demand; reserve then pay / abandon / cancel; audit.
    FlashSale {
        #[command(flatten)]
        flash: FlashArgs,
        /// Also run the workload against Redis (Lua reserve/release), e.g.
        /// redis://127.0.0.1:6379; repeat for several Redis setups.
        #[arg(long)]
        baseline: Vec<String>,
        /// Labels of the baseline runs, in order (default: redis <host:port>).
        #[arg(long)]
        baseline_label: Vec<String>,
    },
    /// Orders driven through their whole life, cancels, returns, refunds, reads, searches.
    Lifecycle {
        #[arg(long, default_value_t = 8)]
        skus: usize,
        #[arg(long, default_value_t = 500)]
        customers: u64,
    },
    /// A flash sale under a purchase limit per customer and a sale window: shoppers
    /// who retry (some before the opening), scalpers who push past the limit; the
    /// audit checks every customer's count and that nothing was taken outside the window.
    LimitedSale {
        #[command(flatten)]
        flash: FlashArgs,
        /// Units one customer may hold, have bought and have ordered per SKU.
        #[arg(long, default_value_t = 2)]
        limit: u64,
        /// The sale opens this long after the SKUs are defined (load starts at once).
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        opens_after: Duration,
        /// The sale closes this long after the SKUs are defined (default: 3/4 of --duration).
        #[arg(long, value_parser = humantime::parse_duration)]
        closes_after: Option<Duration>,
        /// Share of sessions that are scalpers, percent.
        #[arg(long, default_value_t = 10)]
        scalper_pct: u32,
        /// Distinct scalper customer ids.
        #[arg(long, default_value_t = 5)]
        scalpers: u64,
        /// Reservations one scalper session tries with its one customer id.
        #[arg(long, default_value_t = 8)]
        scalper_attempts: u32,
        /// Retries of one shopper at most.
        #[arg(long, default_value_t = 3)]
        retries: u32,
        /// Share of shopper attempts that order without a hold, percent.
        #[arg(long, default_value_t = 20)]
        direct_pct: u32,
    },
    /// SIGKILL a spawned surge under load R times; check every acknowledged write.
    Crash {
        #[command(flatten)]
        flash: FlashArgs,
        /// Kills (each followed by a restart and a check).
        #[arg(long, default_value_t = 10)]
        restarts: u32,
        #[arg(long, default_value_t = 100)]
        load_ms_min: u64,
        #[arg(long, default_value_t = 1000)]
        load_ms_max: u64,
        /// Share of restarts killed again while recovering, percent.
        #[arg(long, default_value_t = 30)]
        recovery_kill_pct: u32,
        /// Check the whole ledger after a restart while it is at most this big.
        #[arg(long, default_value_t = 20_000)]
        verify_full_max: usize,
        /// Spawn-to-ready limit of one restart.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        ready_timeout: Duration,
    },
    /// A NATS server, a `replicated` leader and a standby: SIGKILL the leader under
    /// load R times, promote the standby, start a fresh one; check every
    /// acknowledged write on the final leader; time to promote; replicated vs sync.
    Failover {
        #[command(flatten)]
        flash: FlashArgs,
        /// Leader kills (each followed by a promotion and a check).
        #[arg(long, default_value_t = 3)]
        kills: u32,
        #[arg(long, default_value_t = 300)]
        load_ms_min: u64,
        #[arg(long, default_value_t = 1500)]
        load_ms_max: u64,
        /// Load length of each throughput run (replicated, then sync).
        #[arg(long, default_value_t = 5000)]
        compare_ms: u64,
        /// Use this NATS server (loopback) instead of spawning one.
        #[arg(long)]
        nats: Option<String>,
        /// The nats-server binary (default: SURGE_NATS_SERVER, then PATH).
        #[arg(long)]
        nats_bin: Option<PathBuf>,
        /// Limit of one spawn-to-ready, promotion or first write.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        ready_timeout: Duration,
    },
}

/// The fastest open loop the scheduler keeps (sessions per second): one thread
/// sleeping to each due time.
pub const RATE_MAX: f64 = 1_000_000.0;
/// The slowest open loop (sessions per second): one session an hour.
pub const RATE_MIN: f64 = 1.0 / 3600.0;

fn load_config(c: &Common) -> anyhow::Result<LoadConfig> {
    if !(c.rate == 0.0 || (RATE_MIN..=RATE_MAX).contains(&c.rate)) {
        bail!(
            "--rate must be 0 (closed loop) or from 1/3600 (one session an hour) to \
             1000000 sessions per second"
        );
    }
    if c.duration.is_zero() {
        bail!("--duration must be more than 0: a drill of no time runs no session");
    }
    if c.requests_max == 0 {
        bail!("--requests-max must be at least 1");
    }
    if c.connections == 0 || c.connections > 10_000 {
        bail!("--connections must be in 1..=10000");
    }
    Ok(LoadConfig {
        rate_per_s: c.rate,
        duration: c.duration,
        connections: c.connections,
        requests_max: c.requests_max,
        drain: c.request_timeout * 3,
    })
}

/// flash-sale and limited-sale wait, after their load, for the abandoned holds to
/// expire (`--ttl-ms` and 1.5 s) before the audit compares levels exactly, once
/// per system run. A wait that cannot end before `--time-max` is said up front
/// (a 7-day TTL was waited for in silence until `--time-max` stopped the drill
/// with no report); the drill still runs, as `--time-max` may be set short on
/// purpose, as a hard limit.
fn expiry_wait_warning(c: &Common, ttl_ms: u64, runs: u32) -> Option<String> {
    let per_run = c.duration + Duration::from_millis(ttl_ms + 1_500);
    let needed = per_run * runs.max(1);
    (needed >= c.time_max).then(|| {
        format!(
            "warning: --ttl-ms {ttl_ms}: the drill waits after its load for abandoned holds \
             to expire (--duration plus --ttl-ms plus 1.5 s, {} for {runs} run(s)), which \
             does not end before --time-max {}: it will be stopped with no report; lower \
             --ttl-ms or raise --time-max",
            humantime::format_duration(needed),
            humantime::format_duration(c.time_max)
        )
    })
}

/// What crash and failover may spend on their rounds: `--time-max` less the 60 s
/// they keep for the final check and the stop. A `--time-max` that leaves nothing
/// is refused (they ran no round and reported PASS).
fn kill_drill_budget(c: &Common) -> anyhow::Result<Duration> {
    let kept = Duration::from_secs(60);
    if c.time_max <= kept {
        bail!(
            "--time-max must be more than 60 s for crash and failover: they keep 60 s of it \
             for the final check and the stop (given {})",
            humantime::format_duration(c.time_max)
        );
    }
    Ok(c.time_max - kept)
}

fn flash_config(f: &FlashArgs, seed: u64) -> anyhow::Result<FlashConfig> {
    if f.skus == 0 || f.skus > 10_000 {
        bail!("--skus must be in 1..=10000");
    }
    if !(1_000..=604_800_000).contains(&f.ttl_ms) {
        bail!("--ttl-ms must be in 1000..=604800000 (the server's limits)");
    }
    Ok(FlashConfig {
        skus: f.skus,
        stock: f.stock,
        shoppers: f.shoppers,
        zipf_s: f.zipf.max(0.0),
        mix: f.mix,
        ttl_ms: f.ttl_ms,
        qty_max: f.qty_max.max(1),
        unit_price: f.unit_price,
        seed,
    })
}

/// The target: a given URL, or a spawned surge (kept alive by the returned guard).
async fn target(c: &Common) -> anyhow::Result<(HttpClient, Option<(Surge, stop::DrillDir)>)> {
    if c.spawn {
        let bin = find_surge(c.surge_bin.as_deref())?;
        let dir = stop::DrillDir::new("surge-loadtest-").context("the spawned surge's data dir")?;
        let cfg = SpawnConfig {
            bin,
            data_dir: dir.path().join("data"),
            port: free_port()?,
            durability: c.durability.clone(),
            extra_args: c.surge_args.clone(),
        };
        let mut surge = Surge::spawn(&cfg)?;
        let client = HttpClient::new(&surge.url, None, c.connections, c.request_timeout);
        let ready = surge.wait_ready(&client, Duration::from_secs(60)).await?;
        println!(
            "spawned {} on {} (durability {}), ready in {:.1} ms",
            cfg.bin.display(),
            surge.url.base,
            c.durability,
            ready.as_secs_f64() * 1e3
        );
        return Ok((client, Some((surge, dir))));
    }
    let Some(url) = &c.target else {
        bail!("give --target URL or --spawn");
    };
    let url = parse_base(url, "http", 80)?;
    check_loopback(&url, c.allow_non_loopback)?;
    let client = HttpClient::new(&url, c.token.as_deref(), c.connections, c.request_timeout);
    match client.get("/readyz").await {
        Ok(r) if r.status == 200 => {}
        Ok(r) => bail!("{}/readyz answered {}: not ready", url.base, r.status),
        Err(e) => bail!("{}/readyz: {}", url.base, e.code()),
    }
    Ok((client, None))
}

/// A run against the target, then the spawned surge (if any) stopped. A surge
/// that exited by itself during the run fails the drill, saying so, whether the
/// run itself failed (its requests refused) or not: its figures would describe a
/// server that died under the load.
async fn stop_spawned<T>(
    ran: anyhow::Result<T>,
    spawned: Option<(Surge, stop::DrillDir)>,
) -> anyhow::Result<T> {
    if let Some((surge, _dir)) = spawned
        && let Err(stopped) = surge.terminate(Duration::from_secs(30)).await
    {
        // The server's end first: it is the likelier cause of the run's error.
        return Err(match ran {
            Ok(_) => stopped,
            Err(run) => anyhow::anyhow!("{stopped:#}; the run's own error: {run:#}"),
        });
    }
    ran
}

/// Run the drill the command line asks for and build its report.
pub async fn run(cli: &Cli, command_line: String) -> anyhow::Result<DrillReport> {
    let c = &cli.common;
    let load_cfg = load_config(c)?;
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let audit_concurrency = c.connections.clamp(4, 64);
    let mut runs = Vec::new();
    let mut crash_report = None;
    let mut failover_report = None;
    let (scenario, config) = match &cli.scenario {
        Scenario::FlashSale {
            flash,
            baseline,
            baseline_label,
        } => {
            let fc = flash_config(flash, c.seed)?;
            if let Some(warning) = expiry_wait_warning(c, fc.ttl_ms, 1 + baseline.len() as u32) {
                eprintln!("surge-loadtest: {warning}");
            }
            // Check the baseline address before spending a run on surge.
            let mut redis_urls = Vec::new();
            for (i, u) in baseline.iter().enumerate() {
                let url = parse_base(u, "redis", 6379)?;
                check_loopback(&url, c.allow_non_loopback)?;
                redis::check_reachable(&url)
                    .await
                    .with_context(|| format!("--baseline {u}"))?;
                let label = baseline_label
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("redis {}:{}", url.host, url.port));
                redis_urls.push((url, label));
            }
            let (client, spawned) = target(c).await?;
            let ran = flash::run(client, fc.clone(), &load_cfg, "surge", audit_concurrency).await;
            let (stats, audit) = stop_spawned(ran, spawned).await?;
            runs.push(SystemRun { stats, audit });
            for (url, label) in redis_urls {
                let (stats, audit) = redis::run(url, fc.clone(), &load_cfg, &label).await?;
                runs.push(SystemRun { stats, audit });
            }
            ("flash-sale", json!({"flash": fc, "baseline": baseline}))
        }
        Scenario::Lifecycle { skus, customers } => {
            let (client, spawned) = target(c).await?;
            let ran = lifecycle::run(
                client,
                c.seed,
                *skus,
                *customers,
                &load_cfg,
                audit_concurrency,
            )
            .await;
            let (stats, audit) = stop_spawned(ran, spawned).await?;
            runs.push(SystemRun { stats, audit });
            ("lifecycle", json!({"skus": skus, "customers": customers}))
        }
        Scenario::LimitedSale {
            flash,
            limit,
            opens_after,
            closes_after,
            scalper_pct,
            scalpers,
            scalper_attempts,
            retries,
            direct_pct,
        } => {
            let fc = flash_config(flash, c.seed)?;
            if let Some(warning) = expiry_wait_warning(c, fc.ttl_ms, 1) {
                eprintln!("surge-loadtest: {warning}");
            }
            let lc = limited::LimitedConfig {
                skus: fc.skus,
                stock: fc.stock,
                shoppers: fc.shoppers,
                zipf_s: fc.zipf_s,
                mix: fc.mix,
                limit: *limit,
                opens_after: *opens_after,
                closes_after: closes_after.unwrap_or(c.duration * 3 / 4),
                scalper_pct: (*scalper_pct).min(100),
                scalpers: (*scalpers).max(1),
                scalper_attempts: (*scalper_attempts).min(1_000),
                retries: (*retries).min(100),
                direct_pct: (*direct_pct).min(100),
                ttl_ms: fc.ttl_ms,
                qty_max: fc.qty_max,
                unit_price: fc.unit_price,
                seed: c.seed,
            };
            let (client, spawned) = target(c).await?;
            let ran = limited::run(client, lc.clone(), &load_cfg, "surge", audit_concurrency).await;
            let (stats, audit) = stop_spawned(ran, spawned).await?;
            runs.push(SystemRun { stats, audit });
            ("limited-sale", json!({"limited": lc}))
        }
        Scenario::Crash {
            flash,
            restarts,
            load_ms_min,
            load_ms_max,
            recovery_kill_pct,
            verify_full_max,
            ready_timeout,
        } => {
            if c.target.is_some() {
                bail!("crash spawns its own surge: drop --target");
            }
            let mut fc = flash_config(flash, c.seed)?;
            // Holds must outlive a restart so their acknowledged state is checkable.
            fc.ttl_ms = fc.ttl_ms.max(600_000);
            let cfg = crash::CrashConfig {
                bin: find_surge(c.surge_bin.as_deref())?,
                restarts: *restarts,
                durability: c.durability.clone(),
                extra_args: c.surge_args.clone(),
                flash: fc.clone(),
                connections: c.connections,
                load_ms_min: *load_ms_min,
                load_ms_max: *load_ms_max,
                recovery_kill_pct: (*recovery_kill_pct).min(100),
                verify_full_max: *verify_full_max,
                ready_timeout: *ready_timeout,
                request_timeout: c.request_timeout,
                audit_concurrency,
                time_max: kill_drill_budget(c)?,
            };
            let (stats, audit, report) = crash::run(cfg).await?;
            runs.push(SystemRun { stats, audit });
            crash_report = Some(report);
            (
                "crash",
                json!({"flash": fc, "restarts": restarts, "load_ms": [load_ms_min, load_ms_max],
                       "recovery_kill_pct": recovery_kill_pct, "durability": c.durability}),
            )
        }
        Scenario::Failover {
            flash,
            kills,
            load_ms_min,
            load_ms_max,
            compare_ms,
            nats,
            nats_bin,
            ready_timeout,
        } => {
            if c.target.is_some() {
                bail!("failover spawns its own servers: drop --target");
            }
            if *kills == 0 {
                bail!("--kills must be at least 1");
            }
            if let Some(url) = nats {
                check_loopback(&parse_base(url, "nats", 4222)?, c.allow_non_loopback)?;
            }
            let mut fc = flash_config(flash, c.seed)?;
            // Holds must outlive the whole drill: the audit counts every acknowledged
            // hold as held (a 100-kill run outlasted a 10-minute TTL).
            let drill_ms = u64::try_from(c.time_max.as_millis()).unwrap_or(u64::MAX);
            fc.ttl_ms = fc
                .ttl_ms
                .max(drill_ms.saturating_add(600_000).min(604_800_000));
            let cfg = failover::FailoverConfig {
                bin: find_surge(c.surge_bin.as_deref())?,
                kills: *kills,
                nats: nats.clone(),
                nats_bin: failover::find_nats(nats_bin.as_deref()),
                flash: fc.clone(),
                connections: c.connections,
                load_ms_min: *load_ms_min,
                load_ms_max: *load_ms_max,
                compare_ms: *compare_ms,
                ready_timeout: *ready_timeout,
                request_timeout: c.request_timeout,
                audit_concurrency,
                time_max: kill_drill_budget(c)?,
            };
            let (stats, audit, report) = failover::run(cfg).await?;
            let mut stats = stats.into_iter();
            if let Some(first) = stats.next() {
                runs.push(SystemRun {
                    stats: first,
                    audit,
                });
            }
            runs.extend(stats.map(|stats| SystemRun {
                stats,
                audit: crate::audit::Audit::new(),
            }));
            failover_report = Some(report);
            (
                "failover",
                json!({"flash": fc, "kills": kills, "load_ms": [load_ms_min, load_ms_max],
                       "compare_ms": compare_ms}),
            )
        }
    };
    let lost = crash_report.as_ref().map_or(0, |r| r.lost_writes)
        + failover_report.as_ref().map_or(0, |r| r.lost_writes);
    let passed = runs.iter().all(|r| r.audit.passed) && lost == 0;
    let durability = known_durability(cli);
    let config = json!({
        "scenario": config,
        "rate_per_s": c.rate,
        "duration_s": c.duration.as_secs_f64(),
        "connections": c.connections,
        "seed": c.seed,
        "requests_max": c.requests_max,
        "target": c.target,
        "spawn": c.spawn,
        // null when the drill does not know it (a --target server).
        "durability": durability,
    });
    Ok(DrillReport {
        tool: format!("surge-loadtest {}", env!("CARGO_PKG_VERSION")),
        scenario: scenario.to_string(),
        started_unix_s,
        command: command_line,
        config,
        runs,
        crash: crash_report,
        failover: failover_report,
        passed,
    })
}

/// The durability of the server the drill ran against, as far as the drill knows
/// it: `--durability` for the servers it spawns (`--spawn`, crash), `replicated`
/// for failover's leaders, `None` for a `--target` server (surge shows its mode
/// neither in `/metrics` nor in `/readyz`, and `--durability` only applies to a
/// server we start).
pub fn known_durability(cli: &Cli) -> Option<&str> {
    let c = &cli.common;
    match &cli.scenario {
        Scenario::Failover { .. } => Some("replicated"),
        Scenario::Crash { .. } => Some(c.durability.as_str()),
        Scenario::FlashSale { .. } | Scenario::Lifecycle { .. } | Scenario::LimitedSale { .. } => {
            c.spawn.then_some(c.durability.as_str())
        }
    }
}

/// Everything `surge-loadtest` does once its command line is parsed, but the
/// `--time-max` watchdog and the signal handling (the caller's, see [`stop`]): run
/// the drill on a runtime of its own, print the table to `out`, write the `--json`
/// and `--report` files, judge the audit. Returns the process exit code: 0 passed,
/// 1 the audit failed, 2 the drill could not run, or was stopped by
/// [`stop::stop_and_exit`] (which exits with its own code: end the process through
/// [`stop::exit`] so that it can). The binary's `main` and the drill tests both go
/// through here.
pub fn run_to_exit_code(cli: &Cli, command_line: String, out: &mut dyn Write) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("surge-loadtest: starting the runtime: {e}");
            return 2;
        }
    };
    let result = runtime.block_on(run(cli, command_line));
    if stop::stopping() {
        // Stopped from outside (a signal, --time-max): the drill's end is moot and
        // its errors are the stop's doing; the stop exits with its own code.
        return 2;
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("surge-loadtest: {e:#}");
            server::kill_all_children();
            return 2;
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Err(e) = out
        .write_all(report.table().as_bytes())
        .and_then(|()| out.flush())
    {
        eprintln!("surge-loadtest: printing the table: {e}");
        return 2;
    }
    if let Err(e) = write_outputs(&cli.common, &report) {
        eprintln!("surge-loadtest: {e:#}");
        return 2;
    }
    match verdict(&report) {
        Ok(()) => 0,
        Err(failures) => {
            eprintln!("surge-loadtest: AUDIT FAILED");
            for f in failures.iter().take(20) {
                eprintln!("  {f}");
            }
            1
        }
    }
}

/// Write the `--json` and `--report` files the command line asked for.
pub fn write_outputs(c: &Common, report: &DrillReport) -> anyhow::Result<()> {
    if let Some(p) = &c.json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &c.report {
        std::fs::write(p, html::render(report))
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// An audit that failed, for callers that only need the verdict.
pub fn verdict(report: &DrillReport) -> Result<(), Vec<String>> {
    if report.passed {
        Ok(())
    } else {
        let mut f = report.failures();
        let lost = report.crash.as_ref().map_or(0, |c| c.lost_writes)
            + report.failover.as_ref().map_or(0, |c| c.lost_writes);
        if lost > 0 {
            f.push(format!("{lost} acknowledged writes lost"));
        }
        Err(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn durability(args: &[&str]) -> Option<String> {
        let cli = Cli::parse_from(std::iter::once("surge-loadtest").chain(args.iter().copied()));
        known_durability(&cli).map(str::to_string)
    }

    #[test]
    fn durability_is_recorded_only_when_known() {
        let t = "http://127.0.0.1:8080";
        assert_eq!(durability(&["flash-sale", "--target", t]), None);
        assert_eq!(
            durability(&["lifecycle", "--target", t, "--durability", "none"]),
            None
        );
        assert_eq!(durability(&["limited-sale", "--target", t]), None);
        assert_eq!(durability(&["flash-sale", "--spawn"]), Some("sync".into()));
        assert_eq!(
            durability(&["lifecycle", "--spawn", "--durability", "none"]),
            Some("none".into())
        );
        assert_eq!(
            durability(&["crash", "--durability", "async"]),
            Some("async".into())
        );
        assert_eq!(durability(&["failover"]), Some("replicated".into()));
    }

    fn common(args: &[&str]) -> Common {
        Cli::parse_from(std::iter::once("surge-loadtest").chain(args.iter().copied())).common
    }

    /// A rate the scheduler cannot keep (its interval rounds to nothing: the load
    /// never ended) or cannot represent (a panic), no time, or no request: refused
    /// by name, not run (nor passed).
    #[test]
    fn a_load_that_cannot_run_as_asked_is_refused() {
        for (args, flag) in [
            (&["flash-sale", "--rate", "1e10"][..], "--rate"),
            (&["flash-sale", "--rate", "1e-20"][..], "--rate"),
            (&["flash-sale", "--rate=-1"][..], "--rate"),
            (&["flash-sale", "--duration", "0s"][..], "--duration"),
            (&["flash-sale", "--requests-max", "0"][..], "--requests-max"),
        ] {
            let refused = load_config(&common(args)).expect_err("refused");
            assert!(refused.to_string().contains(flag), "{args:?}: {refused}");
        }
        for rate in ["0", "0.001", "1000", "1000000"] {
            assert!(
                load_config(&common(&["flash-sale", "--rate", rate])).is_ok(),
                "{rate}"
            );
        }
    }

    /// A hold time the drill would wait out past --time-max is said up front.
    #[test]
    fn an_expiry_wait_past_the_time_max_is_said() {
        let c = common(&["flash-sale", "--duration", "10s", "--time-max", "60s"]);
        let warning = expiry_wait_warning(&c, 604_800_000, 1).expect("warned");
        assert!(warning.contains("--ttl-ms"), "{warning}");
        assert!(expiry_wait_warning(&c, 2_000, 1).is_none());
        // Each baseline run waits again.
        assert!(expiry_wait_warning(&c, 20_000, 2).is_some());
    }

    /// crash and failover keep 60 s of --time-max: one that leaves nothing ran no
    /// round and passed; it is refused.
    #[test]
    fn a_kill_drill_needs_time_beyond_its_final_check() {
        let refused =
            kill_drill_budget(&common(&["crash", "--time-max", "60s"])).expect_err("refused");
        assert!(refused.to_string().contains("--time-max"), "{refused}");
        assert_eq!(
            kill_drill_budget(&common(&["failover", "--time-max", "90s"])).expect("kept"),
            Duration::from_secs(30)
        );
    }
}
