//! `/metrics` in the Prometheus text format 0.0.4, rendered by the `prometheus`
//! crate's `TextEncoder`; this module only gathers the values.
//!
//! - Per-route request counts by status and latency histograms are the crate's
//!   `IntCounterVec` and `HistogramVec` in a registry of this server's own. The
//!   handles of a route are resolved once and cached, so a request costs a read
//!   lock, a map look-up by the route template and a few atomic increments.
//! - The engine's counters, gauges and pre-bucketed latency histograms stay where
//!   the engine keeps them (its atomics): each scrape reads them into
//!   `MetricFamily` values, copying no state.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};
use surge_engine::{IdempotencyStats, LatencyHistogram};
use tower::{Layer, Service};

use crate::state::AppState;

/// Latency histogram bucket bounds, seconds.
const BUCKETS_S: [f64; 14] = [
    0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Status codes are 100..=599; index by code - 100 (higher codes count as 599).
const STATUS_SLOTS: usize = 500;
/// The route label of a request no route matched.
const UNMATCHED: &str = "unmatched";

/// One route's series, resolved from the vectors once.
struct RouteMetrics {
    route: Box<str>,
    /// The counter vector its per-status counters are taken from.
    requests: IntCounterVec,
    latency: prometheus::Histogram,
    /// Filled on the first request that answers with each status.
    by_status: Box<[OnceLock<IntCounter>]>,
}

impl RouteMetrics {
    fn record(&self, status: u16, elapsed_s: f64) {
        let slot = usize::from(status)
            .saturating_sub(100)
            .min(STATUS_SLOTS - 1);
        self.by_status[slot]
            .get_or_init(|| {
                let status = (slot + 100).to_string();
                self.requests.with_label_values(&[&*self.route, &status])
            })
            .inc();
        self.latency.observe(elapsed_s);
    }
}

/// Request counters keyed by route template (`/v1/orders/{id}`), never by raw path,
/// so the number of series is bounded by the routes.
pub struct HttpMetrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    routes: RwLock<HashMap<Box<str>, Arc<RouteMetrics>>>,
}

impl Default for HttpMetrics {
    fn default() -> HttpMetrics {
        let requests = IntCounterVec::new(
            Opts::new(
                "surge_http_requests_total",
                "HTTP requests by route template and status.",
            ),
            &["route", "status"],
        )
        .expect("a valid name and label names");
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "surge_http_request_duration_seconds",
                "HTTP request latency by route template.",
            )
            .buckets(BUCKETS_S.to_vec()),
            &["route"],
        )
        .expect("a valid name, label names and increasing buckets");
        let registry = Registry::new();
        registry
            .register(Box::new(requests.clone()))
            .expect("registered once");
        registry
            .register(Box::new(latency.clone()))
            .expect("registered once");
        HttpMetrics {
            registry,
            requests,
            latency,
            routes: RwLock::default(),
        }
    }
}

impl HttpMetrics {
    /// The series of `route`, created on its first request.
    fn route(&self, route: &str) -> Arc<RouteMetrics> {
        if let Some(m) = self.routes.read().expect("not poisoned").get(route) {
            return Arc::clone(m);
        }
        let mut routes = self.routes.write().expect("not poisoned");
        Arc::clone(routes.entry(route.into()).or_insert_with(|| {
            Arc::new(RouteMetrics {
                route: route.into(),
                requests: self.requests.clone(),
                latency: self.latency.with_label_values(&[route]),
                by_status: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
            })
        }))
    }

    pub fn record(&self, route: &str, status: u16, elapsed_s: f64) {
        self.route(route).record(status, elapsed_s);
    }

    pub fn requests_total(&self) -> u64 {
        let routes = self.routes.read().expect("not poisoned");
        routes.values().map(|m| m.latency.get_sample_count()).sum()
    }
}

/// The route templates of the service, matched against a request's path to name
/// its series. Each template's handles are resolved on its first request.
pub struct RouteTable {
    templates: matchit::Router<LazyRoute>,
    unmatched: LazyRoute,
}

struct LazyRoute {
    template: &'static str,
    metrics: OnceLock<Arc<RouteMetrics>>,
}

impl LazyRoute {
    fn new(template: &'static str) -> LazyRoute {
        LazyRoute {
            template,
            metrics: OnceLock::new(),
        }
    }
}

impl RouteTable {
    /// `templates` in axum's syntax (`/v1/orders/{id}`), each once.
    pub fn new<'a>(templates: impl IntoIterator<Item = &'a &'static str>) -> RouteTable {
        let mut table = matchit::Router::new();
        for &template in templates {
            table
                .insert(template, LazyRoute::new(template))
                .expect("route templates are distinct and well-formed");
        }
        RouteTable {
            templates: table,
            unmatched: LazyRoute::new(UNMATCHED),
        }
    }

    fn lazy_route(&self, path: &str) -> &LazyRoute {
        self.templates
            .at(path)
            .map_or(&self.unmatched, |found| found.value)
    }
}

/// Counts and times every request by route template and status. It is the
/// outermost layer, applied once around the whole router (not per route), so the
/// answers the layers inside it make (a timeout's 503, a panic's 500, a refused
/// body) are counted under their route too. The route is found by matching the path
/// against the [`RouteTable`] before the request runs.
#[derive(Clone)]
pub struct TrackLayer {
    state: AppState,
    routes: Arc<RouteTable>,
}

impl TrackLayer {
    pub fn new(state: AppState, routes: RouteTable) -> TrackLayer {
        TrackLayer {
            state,
            routes: Arc::new(routes),
        }
    }
}

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`TrackLayer`].
#[derive(Clone)]
pub struct Track<S> {
    inner: S,
    layer: TrackLayer,
}

impl<S> Service<Request> for Track<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let started = Instant::now();
        let lazy = self.layer.routes.lazy_route(request.uri().path());
        let metrics = self.layer.state.metrics();
        let route = Arc::clone(lazy.metrics.get_or_init(|| metrics.route(lazy.template)));
        let method = request.method().clone();
        TrackFuture {
            inner: self.inner.call(request),
            done: Some(Finished {
                started,
                route,
                method,
            }),
        }
    }
}

struct Finished {
    started: Instant,
    route: Arc<RouteMetrics>,
    method: axum::http::Method,
}

pin_project_lite::pin_project! {
    /// The future of [`Track`]: the inner answer, counted when it is ready.
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        done: Option<Finished>,
    }
}

impl<F, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let (Ok(response), Some(done)) = (&result, this.done.take()) {
            let elapsed = done.started.elapsed().as_secs_f64();
            let status = response.status().as_u16();
            done.route.record(status, elapsed);
            tracing::debug!(method = %done.method, route = &*done.route.route, status, elapsed_ms = elapsed * 1e3, "request");
        }
        Poll::Ready(result)
    }
}

/// The whole exposition; `idempotency` is the engine's index as just queried.
pub fn render(state: &AppState, idempotency: Option<&IdempotencyStats>) -> String {
    let mut families = state.metrics().registry.gather();
    families.extend(engine_families(state, idempotency));
    let mut out = String::with_capacity(8192);
    prometheus::TextEncoder::new()
        .encode_utf8(&families, &mut out)
        .expect("every family has a name and a sample");
    out
}

/// A family of one sample without labels.
fn single(name: &str, help: &str, kind: MetricType, value: f64) -> MetricFamily {
    let mut metric = proto::Metric::default();
    if kind == MetricType::COUNTER {
        let mut counter = proto::Counter::default();
        counter.set_value(value);
        metric.set_counter(counter);
    } else {
        let mut gauge = proto::Gauge::default();
        gauge.set_value(value);
        metric.set_gauge(gauge);
    }
    family(name, help, kind, vec![metric])
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<proto::Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_string());
    family.set_help(help.to_string());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

/// A histogram family from the engine's own bucket counters. The encoder adds the
/// `+Inf` bucket from the count, which is the buckets' total as read here (not the
/// engine's separate count), so that no bucket ever exceeds it within a scrape.
fn histogram(name: &str, help: &str, h: &LatencyHistogram) -> MetricFamily {
    let (cumulative, total) = h.cumulative();
    let mut histogram = proto::Histogram::default();
    histogram.set_bucket(
        cumulative
            .into_iter()
            .map(|(bound_us, count)| {
                let mut bucket = proto::Bucket::default();
                bucket.set_upper_bound(bound_us as f64 / 1e6);
                bucket.set_cumulative_count(count);
                bucket
            })
            .collect(),
    );
    histogram.set_sample_sum(h.sum_seconds());
    histogram.set_sample_count(total);
    let mut metric = proto::Metric::default();
    metric.set_histogram(histogram);
    family(name, help, MetricType::HISTOGRAM, vec![metric])
}

const GAUGE: MetricType = MetricType::GAUGE;
const COUNTER: MetricType = MetricType::COUNTER;

/// The engine's and the node's families, read from their atomics now.
fn engine_families(state: &AppState, idempotency: Option<&IdempotencyStats>) -> Vec<MetricFamily> {
    let mut singles: Vec<(&str, MetricType, &str, f64)> = vec![(
        "surge_ready",
        GAUGE,
        "1 when /readyz answers 200 (a leader taking writes, or a standby).",
        f64::from(u8::from(crate::ops::readiness(state).is_ok())),
    )];
    let Some(engine) = state.engine_opt() else {
        return to_families(singles);
    };
    let s = engine.stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    let batches = load(&s.batches);
    let avg = if batches == 0.0 {
        0.0
    } else {
        load(&s.records_logged) / batches
    };
    let snap_at = s.snapshot_at_ms.load(Ordering::Relaxed);
    let now_ms = crate::time::now_ms();
    let age = if snap_at == 0 {
        -1.0
    } else {
        now_ms.saturating_sub(snap_at) as f64 / 1e3
    };
    #[rustfmt::skip]
    singles.extend([
        ("surge_engine_queue_depth", GAUGE, "Commands waiting in the engine queue.", engine.queue_len() as f64),
        ("surge_engine_queue_capacity", GAUGE, "Engine queue capacity.", engine.queue_len_max() as f64),
        ("surge_engine_commands_applied_total", COUNTER, "Commands applied.", load(&s.commands_applied)),
        ("surge_engine_commands_rejected_total", COUNTER, "Commands refused by the state machine.", load(&s.commands_rejected)),
        ("surge_engine_commands_abandoned_total", COUNTER, "Commands never applied: their request timed out (or its future was dropped) before the writer took them.", load(&s.commands_abandoned)),
        ("surge_engine_records_logged_total", COUNTER, "Records written to the WAL.", load(&s.records_logged)),
        ("surge_engine_batches_total", COUNTER, "Group commits.", batches),
        ("surge_engine_batch_len_last", GAUGE, "Commands the writer took in its last batch (--batch-len-max bounds it, but the request that reaches the bound is taken whole: a /v1/batch of n ops counts n; a standby counts its leader's records).", load(&s.batch_len_last)),
        ("surge_engine_batch_len_max", GAUGE, "Most commands the writer took in one batch.", load(&s.batch_len_max_seen)),
        ("surge_engine_batch_len_avg", GAUGE, "Average logged records per group commit.", avg),
        ("surge_wal_bytes_total", COUNTER, "Bytes appended to the WAL.", load(&s.wal_bytes)),
        ("surge_wal_flushes_total", COUNTER, "WAL flushes: commits made durable (each one fdatasync, on the segment being appended to).", load(&s.flushes)),
        ("surge_wal_flush_latency_seconds_last", GAUGE, "Latency of the last WAL flush.", load(&s.flush_latency_us_last) / 1e6),
        ("surge_wal_flush_latency_seconds_sum", COUNTER, "Total time spent flushing the WAL (the same time as surge_wal_commit_seconds_sum; kept under this name for the dashboards that read it).", load(&s.flush_latency_us_total) / 1e6),
        ("surge_wal_durable_lsn", GAUGE, "Highest LSN known durable.", load(&s.durable_lsn)),
        ("surge_snapshots_total", COUNTER, "Snapshots written.", load(&s.snapshots)),
        ("surge_snapshots_encoded_by_writer_total", COUNTER, "Snapshots the writer thread encoded itself (no follower, or at shutdown); the others were the follower's.", load(&s.snapshots_encoded_by_writer)),
        ("surge_snapshot_bytes_total", COUNTER, "Body bytes of the snapshots written.", load(&s.snapshot_bytes)),
        ("surge_snapshot_lsn", GAUGE, "LSN covered by the newest snapshot.", load(&s.snapshot_lsn)),
        ("surge_snapshot_age_seconds", GAUGE, "Seconds since the newest snapshot this process wrote (-1: none yet).", age),
        ("surge_engine_overloaded_total", COUNTER, "Commands refused because the queue was full.", load(&s.overloaded)),
        ("surge_stock_reads_behind_total", COUNTER, "Stock reads the stock board could not answer at once (behind the read index).", load(&s.board_behind)),
        ("surge_stock_reads_waited_total", COUNTER, "Stock reads that waited on their own task for the stock board to reach their read index.", load(&s.board_waits)),
        ("surge_stock_reads_unchanged_total", COUNTER, "Stock reads the stock board answered while behind the read index, no record past the board's LSN having changed their SKU.", load(&s.board_unchanged)),
        ("surge_reads_during_snapshot_total", COUNTER, "Reads sent through the writer's queue because the follower was encoding a snapshot.", load(&s.reads_during_snapshot)),
        ("surge_engine_writes_refused", GAUGE, "1 while the engine refuses writes (disk full, failed flush; on a `replicated` leader, the replicated log unavailable; a fenced former leader); on a standby, its leader's records.", f64::from(u8::from(refusing_writes(engine)))),
        ("surge_events_last_seq", GAUGE, "Seq of the newest published event.", engine.events().last_seq() as f64),
    ]);
    if let Some(idem) = idempotency {
        let effective_ms = idem.effective_window_ms(now_ms);
        let floor_ms = state.config().idempotency_window_floor_ms;
        #[rustfmt::skip]
        singles.extend([
            ("surge_idempotency_window_seconds", GAUGE, "How far back Idempotency-Keys are remembered now: the configured window, or at the memory budget the age of the oldest key remembered.", effective_ms as f64 / 1e3),
            ("surge_idempotency_window_configured_seconds", GAUGE, "The configured retention window of Idempotency-Keys.", idem.policy.window_ms as f64 / 1e3),
            ("surge_idempotency_window_floor_seconds", GAUGE, "The effective window below which surge warns (--idempotency-window-floor-ms).", floor_ms as f64 / 1e3),
            ("surge_idempotency_window_below_floor", GAUGE, "1 while the effective window is below the floor: raise the budget.", f64::from(u8::from(effective_ms < floor_ms))),
            ("surge_idempotency_at_budget", GAUGE, "1 while keys younger than the window have been forgotten to stay within the budget: the effective window is then the age of the oldest key.", f64::from(u8::from(idem.at_budget(now_ms)))),
            ("surge_idempotency_keys", GAUGE, "Idempotency-Keys remembered.", idem.keys as f64),
            ("surge_idempotency_keys_max", GAUGE, "Idempotency-Keys the budget holds when no answer needs storing whole.", idem.keys_max as f64),
            ("surge_idempotency_bytes", GAUGE, "Memory of the idempotency index and its stored answers.", idem.bytes as f64),
            ("surge_idempotency_budget_bytes", GAUGE, "The memory budget of the idempotency index.", idem.policy.budget_bytes as f64),
        ]);
    }
    let (lag_lsn, lag_seconds) = state.replication_lag();
    #[rustfmt::skip]
    singles.extend([
        ("surge_replication_lag_lsn", GAUGE, "LSNs the stream holds that this standby has not applied.", lag_lsn as f64),
        ("surge_replication_lag_seconds", GAUGE, "Age of this standby's view while it is behind, or the time it has not heard from the stream (from 5 s).", lag_seconds),
        ("surge_replication_published_lsn", GAUGE, "The last LSN the replicated log acknowledged.", load(&s.published_lsn)),
        ("surge_writer_nice", GAUGE, "The writer thread's nice value: below the process's once it raised its priority (--commit-priority-raise), else the process's.", s.writer_nice.load(Ordering::Relaxed) as f64),
        ("surge_memory_pretouched_bytes", GAUGE, "Memory made resident at start-up (--pretouch-mib) and kept by the process.", surge_alloc::pretouched_bytes() as f64),
    ]);
    let mut families = to_families(singles);
    families.extend([
        histogram(
            "surge_writer_iteration_seconds",
            "Writer loop iterations (apply, append, hand-over), the sync excluded.",
            &s.writer_iteration,
        ),
        histogram(
            "surge_writer_iteration_cpu_seconds",
            "The writer thread's CPU time in those iterations: wall time well above it was spent off a core (preempted, blocked, or, where the kernel accounts steal, the virtual CPU taken by its host).",
            &s.writer_iteration_cpu,
        ),
        histogram(
            "surge_wal_commit_seconds",
            "Group commit latency: one sync of the log, however many batches it covers.",
            &s.wal_commit,
        ),
        replication_role(engine.role().name()),
        histogram(
            "surge_replication_publish_seconds",
            "One publish of durable records to the replicated log, until acknowledged.",
            &s.replication_publish,
        ),
    ]);
    families
}

/// Whether the engine refuses writes now: for its storage (disk full, a failed
/// flush), on a `replicated` leader for its replicated log, or because a newer
/// leader fenced it. (A standby refuses writes by design: it reports its leader's.)
fn refusing_writes(engine: &surge_engine::EngineHandle) -> bool {
    engine.storage_problem().is_some()
        || crate::ops::replicated_log_down(engine).is_some()
        || engine.role() == surge_engine::Role::Fenced
}

fn to_families(singles: Vec<(&str, MetricType, &str, f64)>) -> Vec<MetricFamily> {
    singles
        .into_iter()
        .map(|(name, kind, help, value)| single(name, help, kind, value))
        .collect()
}

/// The node's place in replication: one gauge per role, 1 for this node's.
fn replication_role(role: &str) -> MetricFamily {
    let metrics = ["leader", "standby", "fenced"]
        .into_iter()
        .map(|name| {
            let mut label = proto::LabelPair::default();
            label.set_name("role".to_string());
            label.set_value(name.to_string());
            let mut gauge = proto::Gauge::default();
            gauge.set_value(f64::from(u8::from(role == name)));
            let mut metric = proto::Metric::from_label(vec![label]);
            metric.set_gauge(gauge);
            metric
        })
        .collect();
    family(
        "surge_replication_role",
        "This node's place in replication (1 for its role).",
        GAUGE,
        metrics,
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn text(families: &[MetricFamily]) -> String {
        let mut out = String::new();
        prometheus::TextEncoder::new()
            .encode_utf8(families, &mut out)
            .unwrap();
        out
    }

    #[test]
    fn an_engine_histogram_keeps_its_bounds_and_ends_at_its_buckets_total() {
        let h = LatencyHistogram::default();
        h.record(Duration::from_micros(40));
        h.record(Duration::from_millis(200));
        let out = text(&[histogram("x_seconds", "Help.", &h)]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[..3],
            [
                "# HELP x_seconds Help.",
                "# TYPE x_seconds histogram",
                "x_seconds_bucket{le=\"0.00005\"} 1",
            ]
        );
        assert_eq!(
            lines[lines.len() - 4..],
            [
                "x_seconds_bucket{le=\"0.1\"} 1",
                "x_seconds_bucket{le=\"+Inf\"} 2",
                "x_seconds_sum 0.20004",
                "x_seconds_count 2",
            ]
        );
    }

    #[test]
    fn requests_count_by_route_and_status_with_codes_past_599_as_599() {
        let metrics = HttpMetrics::default();
        metrics.record("/a", 200, 0.000_1);
        metrics.record("/a", 200, 20.0);
        metrics.record("/a", 999, 0.003);
        assert_eq!(metrics.requests_total(), 3);
        let out = text(&metrics.registry.gather());
        for line in [
            "surge_http_requests_total{route=\"/a\",status=\"200\"} 2",
            "surge_http_requests_total{route=\"/a\",status=\"599\"} 1",
            "surge_http_request_duration_seconds_bucket{route=\"/a\",le=\"0.00025\"} 1",
            "surge_http_request_duration_seconds_bucket{route=\"/a\",le=\"0.005\"} 2",
            "surge_http_request_duration_seconds_bucket{route=\"/a\",le=\"10\"} 2",
            "surge_http_request_duration_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3",
            "surge_http_request_duration_seconds_count{route=\"/a\"} 3",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing:\n{out}");
        }
    }
}
