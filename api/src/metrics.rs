//! `/metrics` in the Prometheus text format, rendered by hand: per-route request
//! counts by status and latency histograms (atomics, one read lock per request),
//! plus the engine's runtime counters.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use surge_engine::IdempotencyStats;

use crate::state::AppState;

/// Latency histogram bucket bounds, seconds.
const BUCKETS_S: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Status codes are 100..=599; index by code - 100.
const STATUS_SLOTS: usize = 500;

struct RouteMetrics {
    by_status: Vec<AtomicU64>,
    buckets: [AtomicU64; BUCKETS_S.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl RouteMetrics {
    fn new() -> RouteMetrics {
        RouteMetrics {
            by_status: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }
}

/// Request counters keyed by route template (`/v1/orders/{id}`), never by raw path,
/// so the number of series is bounded by the routes.
#[derive(Default)]
pub struct HttpMetrics {
    routes: RwLock<HashMap<String, Arc<RouteMetrics>>>,
}

impl HttpMetrics {
    fn route(&self, route: &str) -> Arc<RouteMetrics> {
        if let Some(m) = self.routes.read().expect("not poisoned").get(route) {
            return Arc::clone(m);
        }
        let mut routes = self.routes.write().expect("not poisoned");
        Arc::clone(
            routes
                .entry(route.to_string())
                .or_insert_with(|| Arc::new(RouteMetrics::new())),
        )
    }

    pub fn record(&self, route: &str, status: u16, elapsed_s: f64) {
        let m = self.route(route);
        let slot = usize::from(status)
            .saturating_sub(100)
            .min(STATUS_SLOTS - 1);
        m.by_status[slot].fetch_add(1, Ordering::Relaxed);
        m.count.fetch_add(1, Ordering::Relaxed);
        m.sum_us
            .fetch_add((elapsed_s * 1e6) as u64, Ordering::Relaxed);
        if let Some(i) = BUCKETS_S.iter().position(|&b| elapsed_s <= b) {
            m.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn requests_total(&self) -> u64 {
        let routes = self.routes.read().expect("not poisoned");
        routes
            .values()
            .map(|m| m.count.load(Ordering::Relaxed))
            .sum()
    }
}

/// Middleware: count and time every request by route template and status.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| p.as_str())
        .to_string();
    let method = request.method().clone();
    let response = next.run(request).await;
    let elapsed = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    state.metrics().record(&route, status, elapsed);
    tracing::debug!(%method, route = %route, status, elapsed_ms = elapsed * 1e3, "request");
    response
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition; `idempotency` is the engine's index as just queried.
pub fn render(state: &AppState, idempotency: Option<&IdempotencyStats>) -> String {
    let mut out = String::with_capacity(8192);
    let routes: Vec<(String, Arc<RouteMetrics>)> = {
        let map = state.metrics().routes.read().expect("not poisoned");
        let mut v: Vec<_> = map
            .iter()
            .map(|(k, v)| (k.clone(), Arc::clone(v)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    out.push_str("# HELP surge_http_requests_total HTTP requests by route template and status.\n");
    out.push_str("# TYPE surge_http_requests_total counter\n");
    for (route, m) in &routes {
        for (i, c) in m.by_status.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "surge_http_requests_total{{route=\"{}\",status=\"{}\"}} {n}",
                    escape_label(route),
                    i + 100
                );
            }
        }
    }
    out.push_str(
        "# HELP surge_http_request_duration_seconds HTTP request latency by route template.\n",
    );
    out.push_str("# TYPE surge_http_request_duration_seconds histogram\n");
    for (route, m) in &routes {
        let route = escape_label(route);
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS_S.iter().zip(&m.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "surge_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = m.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "surge_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "surge_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
            m.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "surge_http_request_duration_seconds_count{{route=\"{route}\"}} {count}"
        );
    }
    let mut metric = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "surge_ready",
        "gauge",
        "1 when recovery has finished and the server takes requests.",
        u8::from(state.is_ready()).to_string(),
    );
    let Some(engine) = state.engine_opt() else {
        return out;
    };
    let s = engine.stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    metric(
        "surge_engine_queue_depth",
        "gauge",
        "Commands waiting in the engine queue.",
        engine.queue_len().to_string(),
    );
    metric(
        "surge_engine_queue_capacity",
        "gauge",
        "Engine queue capacity.",
        engine.queue_len_max().to_string(),
    );
    metric(
        "surge_engine_commands_applied_total",
        "counter",
        "Commands applied.",
        load(&s.commands_applied).to_string(),
    );
    metric(
        "surge_engine_commands_rejected_total",
        "counter",
        "Commands refused by the state machine.",
        load(&s.commands_rejected).to_string(),
    );
    metric(
        "surge_engine_records_logged_total",
        "counter",
        "Records written to the WAL.",
        load(&s.records_logged).to_string(),
    );
    metric(
        "surge_engine_batches_total",
        "counter",
        "Group commits.",
        load(&s.batches).to_string(),
    );
    metric(
        "surge_engine_batch_len_last",
        "gauge",
        "Commands in the last group commit.",
        load(&s.batch_len_last).to_string(),
    );
    metric(
        "surge_engine_batch_len_max",
        "gauge",
        "Most commands seen in one group commit.",
        load(&s.batch_len_max_seen).to_string(),
    );
    let batches = load(&s.batches);
    let avg = if batches == 0 {
        0.0
    } else {
        load(&s.records_logged) as f64 / batches as f64
    };
    metric(
        "surge_engine_batch_len_avg",
        "gauge",
        "Average logged records per group commit.",
        format!("{avg}"),
    );
    metric(
        "surge_wal_bytes_total",
        "counter",
        "Bytes appended to the WAL.",
        load(&s.wal_bytes).to_string(),
    );
    metric(
        "surge_wal_flushes_total",
        "counter",
        "WAL flushes (msync).",
        load(&s.flushes).to_string(),
    );
    metric(
        "surge_wal_flush_latency_seconds_last",
        "gauge",
        "Latency of the last WAL flush.",
        format!("{}", load(&s.flush_latency_us_last) as f64 / 1e6),
    );
    metric(
        "surge_wal_flush_latency_seconds_sum",
        "counter",
        "Total time spent flushing the WAL.",
        format!("{}", load(&s.flush_latency_us_total) as f64 / 1e6),
    );
    metric(
        "surge_wal_durable_lsn",
        "gauge",
        "Highest LSN known durable.",
        load(&s.durable_lsn).to_string(),
    );
    metric(
        "surge_snapshots_total",
        "counter",
        "Snapshots written.",
        load(&s.snapshots).to_string(),
    );
    metric(
        "surge_snapshot_lsn",
        "gauge",
        "LSN covered by the newest snapshot.",
        load(&s.snapshot_lsn).to_string(),
    );
    let snap_at = load(&s.snapshot_at_ms);
    let now_ms = crate::time::now_ms();
    let age = if snap_at == 0 {
        -1.0
    } else {
        now_ms.saturating_sub(snap_at) as f64 / 1e3
    };
    metric(
        "surge_snapshot_age_seconds",
        "gauge",
        "Seconds since the newest snapshot this process wrote (-1: none yet).",
        format!("{age}"),
    );
    metric(
        "surge_engine_overloaded_total",
        "counter",
        "Commands refused because the queue was full.",
        load(&s.overloaded).to_string(),
    );
    metric(
        "surge_stock_reads_behind_total",
        "counter",
        "Stock reads the stock board could not answer yet (behind the durable LSN), served through the follower's queue.",
        load(&s.board_behind).to_string(),
    );
    metric(
        "surge_reads_during_snapshot_total",
        "counter",
        "Reads sent through the writer's queue because the follower was encoding a snapshot.",
        load(&s.reads_during_snapshot).to_string(),
    );
    metric(
        "surge_engine_writes_refused",
        "gauge",
        "1 while the engine refuses writes (disk full, failed flush).",
        u8::from(engine.writes_refused().is_some()).to_string(),
    );
    metric(
        "surge_events_last_seq",
        "gauge",
        "Seq of the newest published event.",
        engine.events().last_seq().to_string(),
    );
    if let Some(idem) = idempotency {
        let effective_ms = idem.effective_window_ms(now_ms);
        let floor_ms = state.config().idempotency_window_floor_ms;
        metric(
            "surge_idempotency_window_seconds",
            "gauge",
            "How far back Idempotency-Keys are remembered now: the configured window, or at the memory budget the age of the oldest key remembered.",
            format!("{}", effective_ms as f64 / 1e3),
        );
        metric(
            "surge_idempotency_window_configured_seconds",
            "gauge",
            "The configured retention window of Idempotency-Keys.",
            format!("{}", idem.policy.window_ms as f64 / 1e3),
        );
        metric(
            "surge_idempotency_window_floor_seconds",
            "gauge",
            "The effective window below which surge warns (--idempotency-window-floor-ms).",
            format!("{}", floor_ms as f64 / 1e3),
        );
        metric(
            "surge_idempotency_window_below_floor",
            "gauge",
            "1 while the effective window is below the floor: raise the budget.",
            u8::from(effective_ms < floor_ms).to_string(),
        );
        metric(
            "surge_idempotency_at_budget",
            "gauge",
            "1 while keys younger than the window have been forgotten to stay within the budget: the effective window is then the age of the oldest key.",
            u8::from(idem.at_budget(now_ms)).to_string(),
        );
        metric(
            "surge_idempotency_keys",
            "gauge",
            "Idempotency-Keys remembered.",
            idem.keys.to_string(),
        );
        metric(
            "surge_idempotency_keys_max",
            "gauge",
            "Idempotency-Keys the budget holds when no answer needs storing whole.",
            idem.keys_max.to_string(),
        );
        metric(
            "surge_idempotency_bytes",
            "gauge",
            "Memory of the idempotency index and its stored answers.",
            idem.bytes.to_string(),
        );
        metric(
            "surge_idempotency_budget_bytes",
            "gauge",
            "The memory budget of the idempotency index.",
            idem.policy.budget_bytes.to_string(),
        );
    }
    histogram(
        &mut out,
        "surge_writer_iteration_seconds",
        "Writer loop iterations (apply, append, hand-over), the sync excluded.",
        &s.writer_iteration,
    );
    histogram(
        &mut out,
        "surge_wal_commit_seconds",
        "Group commit latency: one sync of the log, however many batches it covers.",
        &s.wal_commit,
    );
    render_replication(&mut out, state, engine);
    out
}

/// The node's role, and a standby's lag behind the stream.
fn render_replication(out: &mut String, state: &AppState, engine: &surge_engine::EngineHandle) {
    let role = engine.role();
    let _ = writeln!(
        out,
        "# HELP surge_replication_role This node's place in replication (1 for its role).\n\
         # TYPE surge_replication_role gauge"
    );
    for name in ["leader", "standby", "fenced"] {
        let _ = writeln!(
            out,
            "surge_replication_role{{role=\"{name}\"}} {}",
            u8::from(role.name() == name)
        );
    }
    let (lag_lsn, lag_seconds) = state.replication_lag();
    let _ = writeln!(
        out,
        "# HELP surge_replication_lag_lsn LSNs the stream holds that this standby has not applied.\n\
         # TYPE surge_replication_lag_lsn gauge\nsurge_replication_lag_lsn {lag_lsn}\n\
         # HELP surge_replication_lag_seconds Age of this standby's view while it is behind.\n\
         # TYPE surge_replication_lag_seconds gauge\nsurge_replication_lag_seconds {lag_seconds}\n\
         # HELP surge_replication_published_lsn The last LSN the replicated log acknowledged.\n\
         # TYPE surge_replication_published_lsn gauge\nsurge_replication_published_lsn {}",
        engine.stats().published_lsn.load(Ordering::Relaxed)
    );
    histogram(
        out,
        "surge_replication_publish_seconds",
        "One publish of durable records to the replicated log, until acknowledged.",
        &engine.stats().replication_publish,
    );
}

/// A Prometheus histogram: cumulative `_bucket` lines, `_sum` and `_count`.
fn histogram(out: &mut String, name: &str, help: &str, h: &surge_engine::LatencyHistogram) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    let (buckets, total) = h.cumulative();
    for (bound_us, count) in buckets {
        let le = bound_us as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
    let _ = writeln!(out, "{name}_sum {}", h.sum_seconds());
    let _ = writeln!(out, "{name}_count {}", h.count());
}
