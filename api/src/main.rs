//! `surge`: serve the HTTP API (the default), or run an offline tool on a data dir.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use surge_api::{ApiConfig, AppState, AuthMode, Tokens};
use surge_engine::limits::{
    IDEMPOTENCY_BUDGET_BYTES_DEFAULT, IDEMPOTENCY_WINDOW_FLOOR_MS_DEFAULT,
    IDEMPOTENCY_WINDOW_MS_DEFAULT, PAYMENT_TTL_MS_DEFAULT, RESERVATION_TTL_MS_DEFAULT, TTL_MS_MAX,
    TTL_MS_MIN,
};
use surge_engine::{
    Command, Durability, Engine, EngineConfig, EngineHandle, IdempotencyPolicy, Query,
};

// The engine allocates small strings and vectors on every command; mimalloc's
// thread-local free lists cost less than glibc's arenas on that pattern.
#[global_allocator]
static ALLOCATOR: surge_alloc::Mimalloc = surge_alloc::Mimalloc;

/// How far below the request timeout the body timeout must be: the request's timer
/// starts before the body's (at the request, not after its headers are read).
const BODY_TIMEOUT_MARGIN_MS: u64 = 100;

#[derive(Debug, Parser)]
#[command(name = "surge", version, about = "In-memory order and stock-reservation engine for flash sales, over HTTP.", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the HTTP API (the default when no subcommand is given).
    Serve,
    /// Write-ahead log tools.
    Wal {
        #[command(subcommand)]
        command: WalCmd,
    },
    /// Open a data dir (recovering it), take a snapshot, and shut down cleanly.
    Snapshot {
        /// The data directory.
        dir: PathBuf,
    },
    /// Print the OpenAPI document (refresh the committed copy:
    /// `cargo run -p surge-api --bin surge -- openapi > api/openapi.json`).
    Openapi,
}

#[derive(Debug, Subcommand)]
enum WalCmd {
    /// Check every file of a data dir against its MANIFEST and say what recovery would
    /// do. Exit 0: every file whole (a torn tail, as a crash leaves, is reported);
    /// 1: a file is damaged or missing, even one recovery could work around; 2: the
    /// check could not run (say, the dir is locked by a running server).
    Verify {
        /// The data directory.
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DurabilityArg {
    /// Reply after the batch is flushed to disk.
    Sync,
    /// Reply after apply; flush every few milliseconds.
    Async,
    /// No WAL: state is lost on exit.
    None,
    /// Reply after the local flush AND the stream's acknowledgement (needs
    /// `--replicate-to` or `--standby`): a failover loses no acknowledged write.
    Replicated,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on. Without tokens only a loopback address is allowed.
    #[arg(long, env = "SURGE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Data directory (WAL segments and snapshots).
    #[arg(long, env = "SURGE_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
    /// When a write is acknowledged.
    #[arg(long, env = "SURGE_DURABILITY", value_enum, default_value = "sync")]
    durability: DurabilityArg,
    /// Default hold time of a reservation that gives no `ttl_ms`.
    #[arg(long, env = "SURGE_RESERVATION_TTL_MS", default_value_t = RESERVATION_TTL_MS_DEFAULT)]
    reservation_ttl_ms: u64,
    /// Default time to pay of an order that gives no `payment_ttl_ms`.
    #[arg(long, env = "SURGE_PAYMENT_TTL_MS", default_value_t = PAYMENT_TTL_MS_DEFAULT)]
    payment_ttl_ms: u64,
    /// Tokens as comma-separated `role:token` pairs (prefer the environment variable:
    /// command lines are visible to other users).
    #[arg(long, env = "SURGE_TOKENS", hide_env_values = true)]
    tokens: Option<String>,
    /// File of `role token` or `role token name` lines (`#` starts a comment). Roles:
    /// storefront, operator, admin, viewer. A named token acts as `role:name` and its
    /// `X-Actor` is kept as whom it acted for; a name is 1..=32 bytes of printable
    /// ASCII without spaces.
    #[arg(long, env = "SURGE_TOKENS_FILE")]
    tokens_file: Option<PathBuf>,
    /// Engine queue capacity; a full queue answers 503 `overloaded` at once.
    #[arg(long, env = "SURGE_QUEUE_LEN_MAX", default_value_t = 65_536)]
    queue_len_max: usize,
    /// Commands the writer takes per loop iteration (a batch request counts as its
    /// ops, a read as one; a group commit merges as many iterations as queue up
    /// during one sync).
    #[arg(long, env = "SURGE_BATCH_LEN_MAX", default_value_t = surge_engine::BATCH_LEN_MAX_DEFAULT)]
    batch_len_max: usize,
    /// Take a snapshot after this many logged records (0: only on request and at shutdown).
    #[arg(
        long,
        env = "SURGE_SNAPSHOT_EVERY_RECORDS",
        default_value_t = 2_000_000
    )]
    snapshot_every_records: u64,
    /// A snapshot by record count also waits until the log written since the last
    /// one is at least this percent of that snapshot's size (0: the count alone).
    #[arg(long, env = "SURGE_SNAPSHOT_LOG_PERCENT_MIN", default_value_t = 100)]
    snapshot_log_percent_min: u64,
    /// Largest request body accepted (413 above).
    #[arg(long, env = "SURGE_BODY_LIMIT_BYTES", default_value_t = 1 << 20)]
    body_limit_bytes: usize,
    /// Requests taking longer are answered 503 `overloaded`, having done nothing;
    /// except a write the engine took by then, whose answer is awaited up to as
    /// long again (past that, its 503 says it may still take effect). 200 to
    /// 3600000.
    #[arg(long, env = "SURGE_REQUEST_TIMEOUT_MS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(surge_api::state::REQUEST_TIMEOUT_MS_RANGE))]
    request_timeout_ms: u64,
    /// A request's body must arrive within this once its headers have, or the
    /// request is answered 408 `request_timeout` (nothing done). 100 to 3600000,
    /// and at least 100 below --request-timeout-ms; half of it by default.
    #[arg(long, env = "SURGE_BODY_TIMEOUT_MS",
        value_parser = clap::value_parser!(u64).range(surge_api::state::BODY_TIMEOUT_MS_RANGE))]
    body_timeout_ms: Option<u64>,
    /// A request's headers must arrive within this (on a new connection and between
    /// the requests of a kept-alive one: the idle time a kept-alive connection is
    /// given), or the connection is closed. 1000 to 3600000. Keep it above the
    /// idle timeout of a load balancer in front.
    #[arg(long, env = "SURGE_HTTP_HEADER_TIMEOUT_MS", default_value_t = surge_api::serve::HEADER_READ_TIMEOUT_MS_DEFAULT,
        value_parser = clap::value_parser!(u64).range(surge_api::serve::HEADER_READ_TIMEOUT_MS_RANGE))]
    http_header_timeout_ms: u64,
    /// Connections served at once, 1 to 1000000; past it new ones wait in the
    /// listen backlog until one closes.
    #[arg(long, env = "SURGE_HTTP_CONNECTIONS_MAX", default_value_t = surge_api::serve::CONNECTIONS_MAX_DEFAULT as u64,
        value_parser = clap::value_parser!(u64).range(surge_api::serve::CONNECTIONS_MAX_RANGE))]
    http_connections_max: u64,
    /// On a stop, how long connections may take to finish what they are in
    /// (100 to 600000; at least 1000 above twice --request-timeout-ms whatever is
    /// set, so a request in flight gets its answer); past it they are closed and
    /// the engine stops.
    #[arg(long, env = "SURGE_HTTP_DRAIN_TIMEOUT_MS", default_value_t = surge_api::serve::DRAIN_TIMEOUT_MS_DEFAULT,
        value_parser = clap::value_parser!(u64).range(surge_api::serve::DRAIN_TIMEOUT_MS_RANGE))]
    http_drain_timeout_ms: u64,
    /// Operations accepted in one `/v1/batch` request (at most 10000).
    #[arg(long, env = "SURGE_BATCH_OPS_MAX", default_value_t = surge_api::state::BATCH_OPS_MAX)]
    batch_ops_max: usize,
    /// Idempotency-Keys are forgotten once this old (at the memory budget, sooner:
    /// the oldest go first). Logged when it changes, so replay never depends on it.
    #[arg(long, env = "SURGE_IDEMPOTENCY_WINDOW_MS", default_value_t = IDEMPOTENCY_WINDOW_MS_DEFAULT)]
    idempotency_window_ms: u64,
    /// Memory for remembered Idempotency-Keys and their answers, in MiB (about 72
    /// bytes a key). The default holds about 29.8 M keys: 14.2 minutes at 35 k keyed
    /// requests/s. Logged when it changes.
    #[arg(long, env = "SURGE_IDEMPOTENCY_BUDGET_MB", default_value_t = IDEMPOTENCY_BUDGET_BYTES_DEFAULT >> 20)]
    idempotency_budget_mb: u64,
    /// Warn (log and `/metrics`) when keys are remembered for less than this because
    /// of the budget. The default is the default hold TTL.
    #[arg(long, env = "SURGE_IDEMPOTENCY_WINDOW_FLOOR_MS", default_value_t = IDEMPOTENCY_WINDOW_FLOOR_MS_DEFAULT)]
    idempotency_window_floor_ms: u64,
    /// Paid orders not shipped within this many ms emit `order.delayed` (0: off).
    /// Logged when it changes, so replay never depends on it.
    #[arg(long, env = "SURGE_SHIP_SLA_MS", default_value_t = surge_engine::limits::SHIP_SLA_MS_DEFAULT)]
    ship_sla_ms: u64,
    /// Orders whose total (minor units) reaches this are created on hold for review.
    /// Logged when it changes.
    #[arg(long, env = "SURGE_REVIEW_AMOUNT_MIN")]
    review_amount_min: Option<u64>,
    /// Keep a second copy of the state that applies each durable batch and encodes
    /// the snapshots (every durability with a log), and serves the reads (sync and
    /// replicated; async reads see the applied state, which the writer answers), so
    /// that neither waits for the writer nor pauses it (while the follower encodes a
    /// snapshot, reads go through the writer's queue instead, still linearizable;
    /// `surge_reads_during_snapshot_total` counts them). `false`: reads and snapshots
    /// go through the writer, and the state needs one copy of memory less (the
    /// start-up memory check counts it: ARCHITECTURE.md, "Memory: two copies").
    #[arg(long, env = "SURGE_FOLLOWER", default_value_t = true, action = clap::ArgAction::Set)]
    follower: bool,
    /// Threads serving HTTP (0: one less than the cores, at least one; ARCHITECTURE.md,
    /// "Thread budget").
    #[arg(long, env = "SURGE_HTTP_WORKERS", default_value_t = 0)]
    http_workers: usize,
    /// Nice steps above the process's that the writer (and in replicated mode the
    /// publish thread) raises its priority by (0..=20; 0: none, the default; the
    /// sync thread stays at the process's, ARCHITECTURE.md, "The commit path goes
    /// first"). Needs CAP_SYS_NICE; without it they run at the process's nice
    /// value, which `surge_writer_nice` in /metrics then shows. Over HTTP a raise
    /// costs throughput: every wake of the writer preempts the HTTP worker that feeds
    /// it, so batches shrink (ARCHITECTURE.md, "The commit path goes first").
    #[arg(long, env = "SURGE_COMMIT_PRIORITY_RAISE", default_value_t = 0,
          value_parser = clap::value_parser!(i32).range(0..=20))]
    commit_priority_raise: i32,
    /// MiB of memory to make resident at start-up, before recovery, while /readyz
    /// says 503 (0: none, the default). Fresh memory costs its first touch: on a
    /// virtual machine BENCHMARKS.md measured it at 0.3-0.6 GB/s, paid by the writer
    /// and the follower for every reservation a sale adds. Pretouched, the state
    /// grows into pages already there, and freed memory stays with the process
    /// (see `surge_alloc::pretouch`). Size it to the state a sale will build (about
    /// 300 bytes a held reservation, the follower's copy and the feed included); at
    /// most 90 % of the memory available at start (`MemAvailable`, which does not
    /// know a container's memory limit: stay within that too).
    #[arg(long, env = "SURGE_PRETOUCH_MIB", default_value_t = 0)]
    pretouch_mib: u64,
    /// Log format (`RUST_LOG` sets the level filter, default info).
    #[arg(long, env = "SURGE_LOG_FORMAT", value_enum, default_value = "human")]
    log_format: LogFormat,
    /// Seed a few demo SKUs (only those that do not exist yet).
    #[arg(long, env = "SURGE_DEMO")]
    demo: bool,
    #[command(flatten)]
    replication: ReplicationArgs,
}

/// The NATS servers a flag names: `nats://HOST:PORT`, several separated by commas
/// (empty entries between commas are skipped, `replication::server_list`; the client
/// reads the rest). A value that names no server at all (empty, as an environment
/// variable set to nothing, the usual way to switch a setting off) is refused: the
/// client looped over no server, on a thread of the HTTP runtime, and the process
/// looked started while it answered nothing, not even SIGTERM.
fn nats_servers(value: &str) -> Result<String, String> {
    if surge_api::replication::server_list(value).is_empty() {
        return Err(format!(
            "{value:?} names no server (it is empty): give the NATS server as \
             nats://HOST:PORT (several separated by commas), or leave the setting out \
             to go without"
        ));
    }
    Ok(value.to_string())
}

/// Replication and downstream delivery over NATS JetStream.
#[derive(Debug, Clone, clap::Args)]
struct ReplicationArgs {
    /// Publish every committed batch to the JetStream stream SURGE_LOG at this
    /// NATS server (`nats://HOST:PORT`; a cluster's servers separated by commas):
    /// this node is the leader.
    #[arg(long, env = "SURGE_REPLICATE_TO", value_parser = nats_servers)]
    replicate_to: Option<String>,
    /// Follow SURGE_LOG at this NATS server into the data dir and serve reads;
    /// writes answer 503 `not_leader` until `POST /v1/admin/promote`.
    #[arg(long, env = "SURGE_STANDBY", conflicts_with = "replicate_to", value_parser = nats_servers)]
    standby: Option<String>,
    /// Publish every event as JSON to `surge.events.<type>` in the stream
    /// SURGE_EVENTS at this NATS server.
    #[arg(long, env = "SURGE_EVENTS_TO", value_parser = nats_servers)]
    events_to: Option<String>,
    /// Replicas of the streams surge creates (a NATS cluster of at least as many
    /// servers).
    #[arg(long, env = "SURGE_STREAM_REPLICAS", default_value_t = 1)]
    stream_replicas: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None | Some(Cmd::Serve) => {
            init_logging(cli.serve.log_format);
            match serve(cli.serve) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("surge: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Some(Cmd::Wal {
            command: WalCmd::Verify { dir },
        }) => match surge_engine::wal::verify(&dir) {
            Ok(report) => {
                print!("{report}");
                if report.is_ok() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(e) => {
                eprintln!("surge wal verify: {e}");
                ExitCode::from(2)
            }
        },
        Some(Cmd::Snapshot { dir }) => match offline_snapshot(dir) {
            Ok(lsn) => {
                println!("snapshot at LSN {lsn} covers every record");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("surge snapshot: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some(Cmd::Openapi) => {
            print!("{}", surge_api::openapi::document_json());
            ExitCode::SUCCESS
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn offline_snapshot(dir: PathBuf) -> anyhow::Result<u64> {
    let config = EngineConfig {
        data_dir: dir,
        durability: Durability::Sync,
        ..Default::default()
    };
    let (handle, report) = Engine::open(config).context("opening the data dir")?;
    eprintln!(
        "recovered: snapshot at LSN {}, {} records replayed",
        report.snapshot_lsn, report.records_replayed
    );
    // Answers the newest snapshot's LSN when nothing was logged after it.
    let lsn = handle.snapshot()?.wait()?;
    handle.shutdown();
    Ok(lsn)
}

fn check_ttl(name: &str, ttl_ms: u64) -> anyhow::Result<()> {
    if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&ttl_ms) {
        bail!("{name} must be in {TTL_MS_MIN}..={TTL_MS_MAX}");
    }
    Ok(())
}

fn load_tokens(args: &ServeArgs) -> anyhow::Result<Tokens> {
    let mut tokens = Tokens::default();
    if let Some(text) = &args.tokens {
        tokens.parse_env(text).map_err(anyhow::Error::msg)?;
    }
    if let Some(path) = &args.tokens_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading tokens file {}", path.display()))?;
        tokens.parse_file(&text).map_err(anyhow::Error::msg)?;
    }
    Ok(tokens)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    check_ttl("--reservation-ttl-ms", args.reservation_ttl_ms)?;
    check_ttl("--payment-ttl-ms", args.payment_ttl_ms)?;
    if args.queue_len_max == 0 || args.batch_len_max == 0 {
        bail!("--queue-len-max and --batch-len-max must be positive");
    }
    if !(1..=surge_api::state::BATCH_OPS_MAX).contains(&args.batch_ops_max) {
        bail!(
            "--batch-ops-max must be in 1..={}",
            surge_api::state::BATCH_OPS_MAX
        );
    }
    let idempotency = IdempotencyPolicy {
        window_ms: args.idempotency_window_ms,
        budget_bytes: args.idempotency_budget_mb.saturating_mul(1 << 20),
    };
    if let Err((field, violation)) = idempotency.check() {
        let flag = match field {
            surge_engine::Field::WindowMs => "--idempotency-window-ms",
            _ => "--idempotency-budget-mb (in MiB)",
        };
        bail!("{flag}: {}", surge_api::error::violation_text(&violation));
    }
    if args.idempotency_window_floor_ms > args.idempotency_window_ms {
        bail!("--idempotency-window-floor-ms must not exceed --idempotency-window-ms");
    }
    // Half the request timeout (at least 100 ms: the request timeout's range starts
    // at 200).
    let body_timeout_ms = args.body_timeout_ms.unwrap_or(args.request_timeout_ms / 2);
    if body_timeout_ms + BODY_TIMEOUT_MARGIN_MS > args.request_timeout_ms {
        // The request's own timeout, which starts first, would answer before it: 503
        // "a write may still take effect", for a body that never arrived.
        bail!(
            "--body-timeout-ms must be at least {BODY_TIMEOUT_MARGIN_MS} ms below --request-timeout-ms"
        );
    }
    let addrs: Vec<SocketAddr> = args
        .listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {}", args.listen))?
        .collect();
    let Some(&addr) = addrs.first() else {
        bail!("--listen {} resolves to nothing", args.listen)
    };
    let tokens = load_tokens(&args)?;
    for warning in tokens.warnings() {
        tracing::warn!("{warning}");
        eprintln!("WARNING: {warning}");
    }
    let auth = if tokens.is_empty() {
        if !addrs.iter().all(|a| a.ip().is_loopback()) {
            bail!(
                "refusing to listen on {} without tokens: set SURGE_TOKENS or --tokens-file, or listen on a loopback address",
                args.listen
            );
        }
        tracing::warn!(
            "NO TOKENS CONFIGURED: the API is OPEN and every request acts as admin (loopback only)"
        );
        eprintln!(
            "WARNING: no tokens configured; the API is open to anyone on this machine and every request acts as admin."
        );
        AuthMode::Open
    } else {
        tracing::info!(tokens = tokens.len(), "bearer tokens loaded");
        AuthMode::Tokens(tokens)
    };
    let api_config = ApiConfig {
        reservation_ttl_ms: args.reservation_ttl_ms,
        payment_ttl_ms: args.payment_ttl_ms,
        body_limit_bytes: args.body_limit_bytes,
        request_timeout_ms: args.request_timeout_ms,
        body_timeout_ms,
        header_read_timeout_ms: args.http_header_timeout_ms,
        drain_timeout_ms: args.http_drain_timeout_ms,
        connections_max: usize::try_from(args.http_connections_max)
            .expect("the range of --http-connections-max fits a usize"),
        batch_ops_max: args.batch_ops_max,
        idempotency_window_floor_ms: args.idempotency_window_floor_ms,
    };
    let durability = match args.durability {
        DurabilityArg::Sync => Durability::Sync,
        DurabilityArg::Async => Durability::Async,
        DurabilityArg::None => Durability::None,
        DurabilityArg::Replicated => Durability::Replicated,
    };
    let replication = args.replication.clone();
    let nats = replication.replicate_to.is_some() || replication.standby.is_some();
    if durability == Durability::Replicated && !nats {
        bail!("--durability replicated needs --replicate-to (a leader) or --standby");
    }
    if durability == Durability::None && (nats || replication.events_to.is_some()) {
        bail!("--durability none keeps no log to replicate or events to deliver");
    }
    if !(1..=5).contains(&replication.stream_replicas) {
        bail!("--stream-replicas must be in 1..=5 (JetStream's limit)");
    }
    let engine_config = EngineConfig {
        data_dir: args.data_dir.clone(),
        durability,
        queue_len_max: args.queue_len_max,
        batch_len_max: args.batch_len_max,
        snapshot_every_records: args.snapshot_every_records,
        snapshot_log_percent_min: args.snapshot_log_percent_min,
        commit_priority_raise: args.commit_priority_raise,
        follower: args.follower,
        idempotency: Some(idempotency),
        order_policy: Some(surge_engine::OrderPolicy {
            ship_sla_ms: args.ship_sla_ms,
            review_amount_min: args.review_amount_min,
        }),
        role: if replication.standby.is_some() {
            surge_engine::Role::Standby
        } else {
            surge_engine::Role::Leader
        },
        replicate: nats,
        ..Default::default()
    };
    check_pretouch(args.pretouch_mib)?;
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let http_workers = match args.http_workers {
        0 => http_workers_default(cores),
        n => n,
    };
    tracing::info!(
        cores,
        http_workers,
        commit_priority_raise = args.commit_priority_raise,
        "thread budget"
    );
    if args.commit_priority_raise > 0
        && let Err(why) = commit_priority_allowed(args.commit_priority_raise)
    {
        tracing::warn!(
            "the writer cannot raise its priority ({why}): it runs at \
             the process's; grant CAP_SYS_NICE, or set --commit-priority-raise 0 to say so"
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(http_workers)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(
        addr,
        auth,
        api_config,
        engine_config,
        args.demo,
        replication,
        args.pretouch_mib,
    ))
}

/// `--pretouch-mib` must fit in 90 % of the memory available now (`MemAvailable`):
/// more would push the machine into swap or the OOM killer before the sale starts.
fn check_pretouch(pretouch_mib: u64) -> anyhow::Result<()> {
    if pretouch_mib == 0 {
        return Ok(());
    }
    let available_mib = surge_engine::meminfo_bytes("MemAvailable").map(|bytes| bytes >> 20);
    match available_mib {
        Some(available_mib) if pretouch_mib > available_mib / 10 * 9 => bail!(
            "--pretouch-mib {pretouch_mib} is more than 90 % of the {available_mib} MiB \
             available on this machine"
        ),
        Some(_) => Ok(()),
        None => bail!("--pretouch-mib needs /proc/meminfo to check the memory available"),
    }
}

/// Pretouch `pretouch_mib` MiB (see `ServeArgs::pretouch_mib`), logging how long it took.
fn pretouch(pretouch_mib: u64) -> anyhow::Result<()> {
    if pretouch_mib == 0 {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let bytes = pretouch_mib
        .checked_mul(1 << 20)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .context("--pretouch-mib: too large for this machine's addresses")?;
    let touched = surge_alloc::pretouch(bytes).context("--pretouch-mib")?;
    tracing::info!(
        touched_mib = touched >> 20,
        duration_ms = started.elapsed().as_millis() as u64,
        "memory pretouched"
    );
    Ok(())
}

/// Whether a thread of this process may raise its priority `step` nice steps (tried
/// on a throwaway thread, so that no thread that stays keeps the change).
fn commit_priority_allowed(step: i32) -> std::io::Result<i32> {
    std::thread::spawn(move || surge_engine::wal::raise_this_thread_priority(step))
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the probe thread panicked")))
}

/// HTTP workers for a machine with `cores` cores. The writer needs a core of its own
/// at peak and the sync and follower threads take slices of another; the rest serve
/// HTTP. (ARCHITECTURE.md, "Thread budget", has the measurements behind it.)
fn http_workers_default(cores: usize) -> usize {
    cores.saturating_sub(1).max(1)
}

async fn run(
    addr: SocketAddr,
    auth: AuthMode,
    api_config: ApiConfig,
    engine_config: EngineConfig,
    demo: bool,
    replication: ReplicationArgs,
    pretouch_mib: u64,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    let local = listener.local_addr()?;
    let state = AppState::new(api_config, auth);
    // Serve from the start: /healthz answers and /readyz says 503 while recovering.
    let app = surge_api::router(state.clone());
    let limits = surge_api::serve::ServeLimits {
        header_read_timeout: std::time::Duration::from_millis(
            state.config().header_read_timeout_ms,
        ),
        connections_max: state.config().connections_max,
        // A request in flight is answered within twice the request timeout (a
        // write the engine took by the first is awaited up to the second,
        // `deadline`): the drain outlasts it, or a write cut off unanswered and
        // retried without a key would be applied twice.
        drain_timeout: std::time::Duration::from_millis(
            state
                .config()
                .drain_timeout_ms
                .max(2 * state.config().request_timeout_ms + 1_000),
        ),
    };
    let mut stop = state.shutdown_signal();
    let server = tokio::spawn(surge_api::serve::serve(listener, app, limits, async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
    }));
    println!("surge: listening on http://{local}");
    let data_dir = engine_config.data_dir.clone();
    // Before recovery allocates the state, while /readyz says 503.
    if let Err(e) = tokio::task::spawn_blocking(move || pretouch(pretouch_mib)).await? {
        state.begin_shutdown();
        let _ = server.await;
        return Err(e);
    }
    let opened = tokio::task::spawn_blocking(move || Engine::open(engine_config)).await?;
    let (engine, report) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            state.begin_shutdown();
            let _ = server.await;
            return Err(e).with_context(|| format!("recovering {}", data_dir.display()));
        }
    };
    tracing::info!(
        snapshot_lsn = report.snapshot_lsn,
        records_replayed = report.records_replayed,
        next_lsn = report.next_lsn,
        duration_ms = report.duration.as_millis() as u64,
        "recovered"
    );
    if let Some(wal) = &report.wal {
        tracing::info!("WAL recovery: {wal:?}");
    }
    state.set_engine(engine.clone());
    start_replication(&state, &engine, &replication, &data_dir).await?;
    if let Some(stats) = state.idempotency_stats().await {
        tracing::info!(
            window_ms = stats.policy.window_ms,
            budget_bytes = stats.policy.budget_bytes,
            keys = stats.keys,
            keys_max = stats.keys_max,
            "idempotency keys"
        );
    }
    if demo {
        seed_demo(&engine).await;
    }
    state.set_ready(true);
    state.spawn_background();
    println!(
        "surge: ready (data in {}, durability {:?})",
        data_dir.display(),
        engine.durability()
    );
    println!("  API:      http://{local}/v1/");
    println!("  console:  http://{local}/");
    println!("  metrics:  http://{local}/metrics");
    println!("  OpenAPI:  http://{local}/openapi.json");

    wait_for_signal().await;
    tracing::info!("shutting down: readiness off, draining requests");
    state.begin_shutdown();
    if let Err(e) = server.await {
        tracing::error!("server task: {e}");
    }
    tracing::info!("draining the engine queue, flushing the WAL, writing a snapshot");
    let stats_engine = engine.clone();
    tokio::task::spawn_blocking(move || engine.shutdown()).await?;
    let stats = stats_engine.stats();
    let snapshot_lsn = stats
        .snapshot_lsn
        .load(std::sync::atomic::Ordering::Acquire);
    let durable_lsn = stats.durable_lsn.load(std::sync::atomic::Ordering::Acquire);
    if snapshot_lsn < durable_lsn {
        // A snapshot that failed (a full disk) or was not asked for: nothing is
        // lost, the log still holds every record, but the next start replays them.
        tracing::warn!(
            snapshot_lsn,
            durable_lsn,
            "stopped without a snapshot of the last records: the next start replays the log after the snapshot"
        );
    } else {
        tracing::info!(snapshot_lsn, "stopped cleanly");
    }
    Ok(())
}

/// Connect to NATS as the flags say: publish the log (leader), follow it
/// (standby), publish events. Nothing here waits for NATS to be reachable.
async fn start_replication(
    state: &AppState,
    engine: &EngineHandle,
    args: &ReplicationArgs,
    data_dir: &std::path::Path,
) -> anyhow::Result<()> {
    use std::sync::Arc;
    use surge_api::replication::{NatsLink, NatsPublisher, Standby, announce_durable};
    let replicas = args.stream_replicas;
    if let Some(url) = &args.replicate_to {
        let link = Arc::new(NatsLink::connect(url, replicas, data_dir).await?);
        link.mark_leader()?;
        let publisher = NatsPublisher::new(Arc::clone(&link), None);
        let logged = engine.attach_publisher(Box::new(publisher))?.await?;
        tracing::info!(
            url,
            node = format!("{:016x}", link.node()),
            logged,
            "publishing the log to SURGE_LOG"
        );
        tokio::spawn(announce_durable(link, engine.clone()));
    }
    if let Some(url) = &args.standby {
        NatsLink::check_standby_dir(data_dir)?;
        let link = Arc::new(NatsLink::connect(url, replicas, data_dir).await?);
        tracing::info!(
            url,
            node = format!("{:016x}", link.node()),
            "standby: following SURGE_LOG"
        );
        tokio::spawn(announce_durable(Arc::clone(&link), engine.clone()));
        state.set_standby(Standby::start(link, engine.clone()));
    }
    if let Some(url) = &args.events_to {
        let js = surge_api::nats_events::connect(url).await?;
        tracing::info!(url, "publishing events to SURGE_EVENTS");
        tokio::spawn(surge_api::nats_events::publish_events(
            js,
            replicas,
            engine.clone(),
            state.shutdown_signal(),
        ));
    }
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A few SKUs to try the API with at once.
async fn seed_demo(engine: &EngineHandle) {
    let skus = [
        ("TSHIRT-RED-M", "Red T-shirt, size M", 100, 10),
        ("MUG-LOGO", "Logo mug", 250, 20),
        ("SNEAKER-42", "Limited sneaker, size 42", 20, 5),
        ("HOODIE-L", "Hoodie, size L", 50, 5),
    ];
    for (sku, name, on_hand, low) in skus {
        let exists = match engine.query(Query::GetSku { sku: sku.into() }) {
            Ok(ticket) => matches!(ticket.await, Ok(Ok(_))),
            Err(_) => false,
        };
        if exists {
            continue;
        }
        let command = Command::DefineSku {
            sku: sku.into(),
            name: name.into(),
            on_hand,
            low_stock_threshold: low,
        };
        match engine.submit(command, None) {
            Ok(ticket) => match ticket.await {
                Ok(surge_engine::Acked { outcome: Ok(_), .. }) => {
                    tracing::info!(sku, on_hand, "demo SKU defined")
                }
                other => tracing::warn!(sku, "demo SKU not defined: {other:?}"),
            },
            Err(e) => tracing::warn!(sku, "demo SKU not defined: {e}"),
        }
    }
}
