//! `failover`: a NATS server (spawned, or `--nats`), a leader in `replicated` mode
//! and a standby following the stream. Under the flash-sale load, R times: SIGKILL
//! the leader at a random moment, promote the standby (`POST /v1/admin/promote`),
//! start a fresh standby from an empty data dir, go on against the new leader.
//! After each failover and at the end, every acknowledged write is checked on the
//! leader (0 lost, 0 oversold; a shopper does not retry, so a write that got no
//! answer counts as possibly applied). Time to promote is measured from the kill
//! to the promotion's answer, and to the first write the new leader acknowledges. Then the same load runs for a fixed time
//! against the final (replicated) leader and against a `sync` leader with
//! `--replicate-to` (its own NATS server), for the throughput of both modes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::json;

use crate::audit::{Accounting, Audit, Ledger, SkuDef, verify};
use crate::flash::{FlashConfig, Shop, define_skus, run_tag, shopper, sku_name};
use crate::http::HttpClient;
use crate::load::{self, LoadConfig};
use crate::rng::{Rng, Zipf};
use crate::server::{ChildGuard, SpawnConfig, Surge, free_port};
use crate::stats::{Loop, Recorder, RunStats};

#[derive(Debug, Clone)]
pub struct FailoverConfig {
    pub bin: PathBuf,
    pub kills: u32,
    /// A NATS server to use (`nats://127.0.0.1:PORT`); `None`: spawn one.
    pub nats: Option<String>,
    pub nats_bin: PathBuf,
    pub flash: FlashConfig,
    pub connections: usize,
    pub load_ms_min: u64,
    pub load_ms_max: u64,
    /// Load length of each throughput run (replicated, then sync).
    pub compare_ms: u64,
    pub ready_timeout: Duration,
    pub request_timeout: Duration,
    pub audit_concurrency: usize,
    pub time_max: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Failover {
    pub n: u32,
    pub load_ms: u64,
    /// From the SIGKILL to the promotion's 200.
    pub promote_ms: f64,
    /// From the SIGKILL to the new leader's first acknowledged write.
    pub first_write_ms: f64,
    /// LSNs the old leader announced durable that the stream never got.
    pub lost_lsns: u64,
    /// A fresh standby's catch-up from an empty data dir, before the next kill.
    pub standby_catch_up_ms: f64,
    pub passed: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailoverReport {
    pub kills_done: u32,
    pub acknowledged_writes: u64,
    pub acknowledged_reservations: usize,
    pub acknowledged_orders: usize,
    pub lost_writes: u64,
    pub promote_ms_p50: f64,
    pub promote_ms_p99: f64,
    pub promote_ms_max: f64,
    pub first_write_ms_p50: f64,
    pub first_write_ms_p99: f64,
    /// Requests/s of the same load against a `replicated` and a `sync` leader.
    pub replicated_rps: f64,
    pub sync_rps: f64,
    pub failovers: Vec<Failover>,
}

impl FailoverReport {
    /// The lines the text report and the HTML report print.
    pub fn summary(&self) -> String {
        format!(
            "\nfailover: {} kills of the leader, {} acknowledged writes ({} reservations, {} \
             orders), {} lost\ntime to promote (kill to promotion answered): p50 {:.0} ms, p99 \
             {:.0} ms, max {:.0} ms; to the first write acknowledged: p50 {:.0} ms, p99 {:.0} \
             ms\nthe same load: replicated {:.0} req/s, sync with --replicate-to {:.0} req/s \
             ({:.2}x)\n",
            self.kills_done,
            self.acknowledged_writes,
            self.acknowledged_reservations,
            self.acknowledged_orders,
            self.lost_writes,
            self.promote_ms_p50,
            self.promote_ms_p99,
            self.promote_ms_max,
            self.first_write_ms_p50,
            self.first_write_ms_p99,
            self.replicated_rps,
            self.sync_rps,
            self.replicated_rps / self.sync_rps.max(1e-9)
        )
    }
}

/// A nats-server with JetStream on a loopback port and a temporary store.
struct Nats {
    _child: ChildGuard,
    url: String,
}

impl Nats {
    async fn spawn(bin: &Path, store: &Path) -> anyhow::Result<Nats> {
        let port = free_port()?;
        let mut cmd = tokio::process::Command::new(bin);
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = ChildGuard::spawn(cmd).with_context(|| {
            format!(
                "spawning {} (install it with `bash .ci/setup`, or pass --nats-bin)",
                bin.display()
            )
        })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nats-server did not listen on port {port}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Nats {
            _child: child,
            url: format!("nats://127.0.0.1:{port}"),
        })
    }
}

/// The nats-server binary: `SURGE_NATS_SERVER`, else `nats-server` on PATH.
pub fn find_nats(explicit: Option<&Path>) -> PathBuf {
    if let Some(path) = explicit {
        return path.to_path_buf();
    }
    if let Ok(path) = std::env::var("SURGE_NATS_SERVER") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("nats-server"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("nats-server"))
}

/// A surge process and a client for it. Standbys run `replicated` too: once
/// promoted they answer only what the stream holds, like the leader they replace.
struct Node {
    surge: Surge,
    client: HttpClient,
    data_dir: PathBuf,
}

impl Node {
    async fn start(
        cfg: &FailoverConfig,
        data_dir: PathBuf,
        durability: &str,
        args: [&str; 2],
    ) -> anyhow::Result<Node> {
        let spawn = SpawnConfig {
            bin: cfg.bin.clone(),
            data_dir: data_dir.clone(),
            // Unused: the kernel picks the port (`spawn_any_port`).
            port: 0,
            durability: durability.into(),
            extra_args: args.iter().map(|a| a.to_string()).collect(),
        };
        let mut surge = Surge::spawn_any_port(&spawn).await?;
        let client = HttpClient::new(&surge.url, None, cfg.connections, cfg.request_timeout);
        surge.wait_ready(&client, cfg.ready_timeout).await?;
        Ok(Node {
            surge,
            client,
            data_dir,
        })
    }
}

impl Node {
    /// The durable LSN `/metrics` shows.
    async fn durable_lsn(&self) -> Option<u64> {
        let metrics = self.client.get("/metrics").await.ok()?;
        std::str::from_utf8(&metrics.body)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("surge_wal_durable_lsn "))
            .and_then(|v| v.trim().parse().ok())
    }

    /// Wait until this standby holds everything `leader` holds (the leader is
    /// idle meanwhile); answers how long that took.
    async fn caught_up(&self, leader: &Node, limit: Duration) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let target = leader
            .durable_lsn()
            .await
            .context("the leader's durable LSN")?;
        while self.durable_lsn().await.is_none_or(|lsn| lsn < target) {
            if started.elapsed() > limit {
                bail!("the standby did not catch up to LSN {target} within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(started.elapsed())
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Where a round of shoppers goes and what it records into.
struct Round<'a> {
    client: &'a HttpClient,
    recorder: &'a Arc<Recorder>,
    ledger: &'a Arc<Mutex<Ledger>>,
    skus: &'a [SkuDef],
}

impl Round<'_> {
    /// Run the shoppers until `stop`, or for `duration`.
    fn start(
        &self,
        flash: FlashConfig,
        tag: String,
        connections: usize,
        duration: Duration,
        stop: &Arc<AtomicBool>,
    ) -> tokio::task::JoinHandle<load::LoadOutcome> {
        let shop = Arc::new(Shop {
            client: self.client.clone(),
            recorder: Arc::clone(self.recorder),
            ledger: Arc::clone(self.ledger),
            skus: self.skus.to_vec(),
            zipf: Zipf::new(flash.skus, flash.zipf_s),
            cfg: flash,
            tag,
            lenient: true,
        });
        let load_cfg = LoadConfig {
            rate_per_s: 0.0,
            duration,
            connections,
            requests_max: u64::MAX,
            drain: Duration::from_secs(10),
        };
        let recorder = Arc::clone(self.recorder);
        let stop = Arc::clone(stop);
        tokio::spawn(async move {
            load::run(&load_cfg, recorder, stop, move |k, due| {
                shopper(Arc::clone(&shop), k, due)
            })
            .await
        })
    }
}

/// Promote `standby` (retrying while it catches up); answers the promotion body.
async fn promote(standby: &HttpClient, limit: Duration) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + limit;
    loop {
        let answer = standby.post("/v1/admin/promote", &json!({})).await;
        if let Ok(r) = &answer
            && r.status == 200
        {
            return Ok(r.json().unwrap_or_default());
        }
        if Instant::now() > deadline {
            bail!("the standby was not promoted within {limit:?}: {answer:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The first write the new leader acknowledges (a probe SKU outside the audit).
async fn first_write(leader: &HttpClient, n: u32, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    let path = format!("/v1/skus/failover-probe-{n}");
    loop {
        if let Ok(r) = leader
            .put(&path, &json!({"on_hand": 1, "name": "probe"}))
            .await
            && r.ok()
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the new leader took no write within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn run(cfg: FailoverConfig) -> anyhow::Result<(Vec<RunStats>, Audit, FailoverReport)> {
    let started = Instant::now();
    let dir = crate::stop::DrillDir::new("surge-failover-").context("the failover drill's dirs")?;
    let spawned_nats;
    let url = match &cfg.nats {
        Some(url) => url.clone(),
        None => {
            spawned_nats = Nats::spawn(&cfg.nats_bin, &dir.path().join("nats")).await?;
            spawned_nats.url.clone()
        }
    };
    let mut leader = Node::start(
        &cfg,
        dir.path().join("leader-0"),
        "replicated",
        ["--replicate-to", &url],
    )
    .await?;
    let mut standby = Node::start(
        &cfg,
        dir.path().join("standby-0"),
        "replicated",
        ["--standby", &url],
    )
    .await?;
    println!(
        "[failover] leader {} and standby {} on {url}",
        leader.surge.url.base, standby.surge.url.base
    );
    let tag = run_tag(cfg.flash.seed);
    let skus: Vec<SkuDef> = (0..cfg.flash.skus)
        .map(|k| SkuDef {
            sku: sku_name(&tag, k),
            received: cfg.flash.stock,
        })
        .collect();
    define_skus(&leader.client, &skus)
        .await
        .context("defining SKUs")?;
    let recorder = Arc::new(Recorder::new(Loop::Closed));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut rng = Rng::new(cfg.flash.seed ^ 0xFA11_0FE5);
    let mut audit = Audit::new();
    let mut failovers = Vec::new();
    let mut last_check_lost = 0;
    let load_started = Instant::now();
    for n in 1..=cfg.kills {
        if started.elapsed() >= cfg.time_max {
            audit.rounds_cut_short(n, cfg.kills, "kills");
            break;
        }
        let flash = cfg.flash.for_round(n);
        let stop = Arc::new(AtomicBool::new(false));
        let round = Round {
            client: &leader.client,
            recorder: &recorder,
            ledger: &ledger,
            skus: &skus,
        };
        let load_task = round.start(
            flash,
            format!("fo-{tag}-{n}"),
            cfg.connections,
            Duration::from_secs(3600),
            &stop,
        );
        let load_ms = rng.range(cfg.load_ms_min, cfg.load_ms_max.max(cfg.load_ms_min));
        tokio::time::sleep(Duration::from_millis(load_ms)).await;
        let killed = Instant::now();
        leader.surge.kill9().await?;
        // Never used again (a fenced leader's dir may not become a standby's):
        // its segments go now, so a 100-kill drill needs the disk of three nodes.
        let _ = std::fs::remove_dir_all(&leader.data_dir);
        let _ = std::fs::remove_file(leader.data_dir.with_extension("stderr.log"));
        let promotion = promote(&standby.client, cfg.ready_timeout).await?;
        let promote_ms = killed.elapsed().as_secs_f64() * 1e3;
        first_write(&standby.client, n, cfg.ready_timeout).await?;
        let first_write_ms = killed.elapsed().as_secs_f64() * 1e3;
        stop.store(true, Ordering::Relaxed);
        load_task.await.context("load task")?;
        // The promoted standby leads; a fresh standby follows from an empty dir
        // (the old leader's dir may hold a tail the stream never got).
        leader = standby;
        standby = Node::start(
            &cfg,
            dir.path().join(format!("standby-{n}")),
            "replicated",
            ["--standby", &url],
        )
        .await?;
        // A warm standby before the next kill: caught up with the stream (a fresh
        // one replays the whole log first), as an operator waits for one.
        let caught_up = standby.caught_up(&leader, cfg.ready_timeout).await?;
        let snapshot = ledger.lock().expect("ledger").clone();
        let mut a = verify(
            &leader.client,
            &snapshot,
            &skus,
            Accounting::Exact,
            cfg.audit_concurrency,
        )
        .await;
        a.notes.clear();
        let passed = a.passed;
        println!(
            "[failover] {n}: promoted in {promote_ms:.0} ms, first write at {first_write_ms:.0} ms, \
             audit {}",
            if passed { "passed" } else { "FAILED" }
        );
        failovers.push(Failover {
            n,
            load_ms,
            promote_ms,
            first_write_ms,
            lost_lsns: promotion["lost_lsns"].as_u64().unwrap_or(0),
            standby_catch_up_ms: caught_up.as_secs_f64() * 1e3,
            passed,
        });
        // Each check covers every write acknowledged so far: the last one's losses
        // are all of them (summing counted a loss once per check since).
        last_check_lost = a.lost;
        audit.merge(a);
    }
    if failovers.is_empty() {
        audit.fail(format!(
            "no failover ran (0 of {} kills): the drill checked nothing it was asked to",
            cfg.kills
        ));
    }
    let failover_stats = recorder.summary("surge (failover)", load_started.elapsed());
    // No load ran after the last failover's check: it covered every acknowledged
    // write on the final leader.
    let snapshot = ledger.lock().expect("ledger").clone();
    audit.notes.push(format!(
        "checked on each new leader: {} reservations and {} orders acknowledged across {} \
         failovers",
        snapshot.reservations.len(),
        snapshot.orders.len(),
        failovers.len()
    ));

    // Throughput of the same load: the replicated leader, then a sync one, each on
    // fresh SKUs (the failovers may have sold the drill's out, and a run of sold-out
    // answers is no comparison).
    let skus: Vec<SkuDef> = (0..cfg.flash.skus)
        .map(|k| SkuDef {
            sku: sku_name(&format!("{tag}-cmp"), k),
            received: cfg.flash.stock,
        })
        .collect();
    define_skus(&leader.client, &skus)
        .await
        .context("defining the comparison's SKUs")?;
    let replicated = compare_run(&cfg, &leader.client, &skus, "replicated").await;
    standby.surge.terminate(Duration::from_secs(10)).await?;
    leader.surge.terminate(Duration::from_secs(10)).await?;
    let sync_nats = Nats::spawn(&cfg.nats_bin, &dir.path().join("nats-sync")).await?;
    let sync_leader = Node::start(
        &cfg,
        dir.path().join("sync-leader"),
        "sync",
        ["--replicate-to", &sync_nats.url],
    )
    .await?;
    define_skus(&sync_leader.client, &skus).await?;
    let sync = compare_run(&cfg, &sync_leader.client, &skus, "sync").await;
    sync_leader.surge.terminate(Duration::from_secs(10)).await?;

    let mut promote: Vec<f64> = failovers.iter().map(|f| f.promote_ms).collect();
    promote.sort_by(f64::total_cmp);
    let mut first: Vec<f64> = failovers.iter().map(|f| f.first_write_ms).collect();
    first.sort_by(f64::total_cmp);
    let report = FailoverReport {
        kills_done: failovers.len() as u32,
        acknowledged_writes: failover_stats.per_op.values().map(|o| o.ok).sum(),
        acknowledged_reservations: snapshot.reservations.len(),
        acknowledged_orders: snapshot.orders.len(),
        lost_writes: last_check_lost,
        promote_ms_p50: percentile(&promote, 0.5),
        promote_ms_p99: percentile(&promote, 0.99),
        promote_ms_max: promote.last().copied().unwrap_or(0.0),
        first_write_ms_p50: percentile(&first, 0.5),
        first_write_ms_p99: percentile(&first, 0.99),
        replicated_rps: replicated.throughput_rps,
        sync_rps: sync.throughput_rps,
        failovers,
    };
    Ok((vec![failover_stats, replicated, sync], audit, report))
}

/// The shoppers against `client` for `compare_ms`, on their own recorder.
async fn compare_run(
    cfg: &FailoverConfig,
    client: &HttpClient,
    skus: &[SkuDef],
    mode: &str,
) -> RunStats {
    let recorder = Arc::new(Recorder::new(Loop::Closed));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut flash = cfg.flash.clone();
    flash.seed ^= 0x5EED_C0DE;
    let started = Instant::now();
    let round = Round {
        client,
        recorder: &recorder,
        ledger: &ledger,
        skus,
    };
    let task = round.start(
        flash,
        format!("cmp-{mode}-{}", run_tag(cfg.flash.seed)),
        cfg.connections,
        Duration::from_millis(cfg.compare_ms),
        &stop,
    );
    let _ = task.await;
    recorder.summary(&format!("surge ({mode}, same load)"), started.elapsed())
}
