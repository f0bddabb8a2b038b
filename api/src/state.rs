//! What every handler shares: the engine handle, configuration, auth, metrics,
//! readiness and the shutdown signal.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use surge_engine::{EngineHandle, IdempotencyStats, Query, QueryReply};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::auth::AuthMode;
use crate::error::ApiError;
use crate::metrics::HttpMetrics;

/// Request handling limits and defaults.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Default `ttl_ms` of a reservation that does not give one.
    pub reservation_ttl_ms: u64,
    /// Default `payment_ttl_ms` of an order that does not give one.
    pub payment_ttl_ms: u64,
    /// Largest request body accepted (413 above).
    pub body_limit_bytes: usize,
    /// A request that takes longer is answered 503, unless the write it queued
    /// was taken by then: that one is answered when committed, up to as long
    /// again (`deadline`).
    pub request_timeout_ms: u64,
    /// A body that has not arrived this long after the headers is answered 408
    /// (below `request_timeout_ms`, so that the 408 comes first; half of it by
    /// default).
    pub body_timeout_ms: u64,
    /// A request's headers must arrive within this, or the connection is closed
    /// (`serve::ServeLimits`).
    pub header_read_timeout_ms: u64,
    /// How long connections may take to finish once a stop began (`serve`).
    pub drain_timeout_ms: u64,
    /// Connections served at once (`serve::ServeLimits`).
    pub connections_max: usize,
    /// Operations in one `/v1/batch` request.
    pub batch_ops_max: usize,
    /// Below this effective idempotency window (keys forgotten sooner because of the
    /// memory budget), `/metrics` flags it and the log warns.
    pub idempotency_window_floor_ms: u64,
}

/// Bounds of [`ApiConfig::request_timeout_ms`], in milliseconds.
pub const REQUEST_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 200..=3_600_000;
/// Bounds of [`ApiConfig::body_timeout_ms`], in milliseconds.
pub const BODY_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=3_600_000;

/// Rows of one CSV export (order lines).
pub const EXPORT_ROWS_MAX: usize = 100_000;
/// Exports (CSV or Excel) built or sent at once: each holds its whole file (about
/// 12 MB at `EXPORT_ROWS_MAX`) until its last bytes are handed to the connection.
/// One more is 503 `overloaded`.
pub const EXPORTS_AT_ONCE_MAX: usize = 16;
/// Event streams (`/v1/events` as `text/event-stream`) open at once. One more is
/// 503 `overloaded`.
pub const EVENT_STREAMS_MAX: usize = 1_000;
/// Events per page of `/v1/events`.
pub const EVENTS_LIMIT_MAX: usize = 1_000;
pub const EVENTS_LIMIT_DEFAULT: usize = 100;
/// Largest `/v1/batch` request, in operations.
pub const BATCH_OPS_MAX: usize = 10_000;
/// A free slot of `slots`, or 503 `overloaded` saying `why`.
fn take_slot(
    slots: &Arc<Semaphore>,
    why: impl FnOnce() -> String,
) -> Result<OwnedSemaphorePermit, ApiError> {
    Arc::clone(slots)
        .try_acquire_owned()
        .map_err(|_| ApiError::overloaded(why()))
}

/// Throughput samples kept (one a second): the window of "current throughput".
const THROUGHPUT_SAMPLES_MAX: usize = 11;
/// How often the background task checks the effective idempotency window.
const IDEMPOTENCY_CHECK_EVERY_S: u64 = 10;
/// While the window stays below the floor, the warning repeats this often.
const IDEMPOTENCY_WARN_EVERY: Duration = Duration::from_secs(60);

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            reservation_ttl_ms: surge_engine::limits::RESERVATION_TTL_MS_DEFAULT,
            payment_ttl_ms: surge_engine::limits::PAYMENT_TTL_MS_DEFAULT,
            body_limit_bytes: 1 << 20,
            request_timeout_ms: 10_000,
            body_timeout_ms: 5_000,
            header_read_timeout_ms: crate::serve::HEADER_READ_TIMEOUT_MS_DEFAULT,
            drain_timeout_ms: crate::serve::DRAIN_TIMEOUT_MS_DEFAULT,
            connections_max: crate::serve::CONNECTIONS_MAX_DEFAULT,
            batch_ops_max: BATCH_OPS_MAX,
            idempotency_window_floor_ms: surge_engine::limits::IDEMPOTENCY_WINDOW_FLOOR_MS_DEFAULT,
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    engine: OnceLock<EngineHandle>,
    /// A standby's link to the stream (and its promotion), when this node started
    /// as one.
    standby: OnceLock<Arc<crate::replication::Standby>>,
    config: ApiConfig,
    auth: AuthMode,
    /// Recovery finished and not draining.
    ready: AtomicBool,
    metrics: HttpMetrics,
    /// (when, commands done so far) sampled about once a second.
    throughput: Mutex<VecDeque<(Instant, u64)>>,
    /// When the log last warned that the idempotency window is below the floor
    /// (`None`: it is not below).
    idempotency_warned: Mutex<Option<Instant>>,
    shutdown: watch::Sender<bool>,
    /// Slots of the exports in progress (`EXPORTS_AT_ONCE_MAX`).
    exports: Arc<Semaphore>,
    /// Slots of the open event streams (`EVENT_STREAMS_MAX`).
    event_streams: Arc<Semaphore>,
}

impl AppState {
    pub fn new(config: ApiConfig, auth: AuthMode) -> AppState {
        AppState {
            inner: Arc::new(Inner {
                engine: OnceLock::new(),
                standby: OnceLock::new(),
                config,
                auth,
                ready: AtomicBool::new(false),
                metrics: HttpMetrics::default(),
                throughput: Mutex::new(VecDeque::new()),
                idempotency_warned: Mutex::new(None),
                shutdown: watch::channel(false).0,
                exports: Arc::new(Semaphore::new(EXPORTS_AT_ONCE_MAX)),
                event_streams: Arc::new(Semaphore::new(EVENT_STREAMS_MAX)),
            }),
        }
    }

    /// A slot for one export, held until its body is sent; 503 when all are taken.
    pub fn export_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        take_slot(&self.inner.exports, || {
            format!("at most {EXPORTS_AT_ONCE_MAX} exports run at once: retry shortly")
        })
    }

    /// A slot for one event stream, held while it is open; 503 when all are taken.
    pub fn event_stream_slot(&self) -> Result<OwnedSemaphorePermit, ApiError> {
        take_slot(&self.inner.event_streams, || {
            format!(
                "at most {EVENT_STREAMS_MAX} event streams are open at once: retry shortly, \
                 or page with GET /v1/events?after="
            )
        })
    }

    /// A state over an open engine, ready at once (tests, embedding).
    pub fn with_engine(config: ApiConfig, auth: AuthMode, engine: EngineHandle) -> AppState {
        let state = AppState::new(config, auth);
        state.set_engine(engine);
        state.set_ready(true);
        state
    }

    /// Recovery has finished: the engine is there.
    pub fn set_engine(&self, engine: EngineHandle) {
        assert!(self.inner.engine.set(engine).is_ok(), "engine set twice");
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// The engine, or 503 while recovery is still running.
    pub fn engine(&self) -> Result<&EngineHandle, ApiError> {
        self.inner
            .engine
            .get()
            .ok_or_else(|| ApiError::overloaded("recovery is still running"))
    }

    pub fn engine_opt(&self) -> Option<&EngineHandle> {
        self.inner.engine.get()
    }

    pub fn set_standby(&self, standby: Arc<crate::replication::Standby>) {
        assert!(self.inner.standby.set(standby).is_ok(), "standby set twice");
    }

    pub fn standby(&self) -> Option<&Arc<crate::replication::Standby>> {
        self.inner.standby.get()
    }

    /// A standby's lag: LSNs behind the stream, and seconds (0 when caught up,
    /// and on a leader).
    pub fn replication_lag(&self) -> (u64, f64) {
        let standing_by = self
            .engine_opt()
            .is_some_and(|e| e.role() == surge_engine::Role::Standby);
        match self.standby() {
            Some(standby) if standing_by => {
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64);
                (standby.status.lag_lsn(), standby.status.lag_seconds(now_ms))
            }
            _ => (0, 0.0),
        }
    }

    pub fn config(&self) -> &ApiConfig {
        &self.inner.config
    }

    pub fn auth(&self) -> &AuthMode {
        &self.inner.auth
    }

    pub fn metrics(&self) -> &HttpMetrics {
        &self.inner.metrics
    }

    /// Readiness off and long-lived streams told to end: the server is draining.
    pub fn begin_shutdown(&self) {
        self.set_ready(false);
        self.inner.shutdown.send_replace(true);
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    /// Record one throughput sample; the background sampler calls this each second.
    pub fn sample_throughput(&self) {
        let Some(engine) = self.engine_opt() else {
            return;
        };
        let stats = engine.stats();
        let done = stats.commands_applied.load(Ordering::Relaxed)
            + stats.commands_rejected.load(Ordering::Relaxed);
        let mut samples = self.inner.throughput.lock().expect("not poisoned");
        if samples.len() == THROUGHPUT_SAMPLES_MAX {
            samples.pop_front();
        }
        samples.push_back((Instant::now(), done));
    }

    /// Tell the operator's log when writes start or stop being refused (a full
    /// disk, a failed flush): the clients get the reason in each answer, the log
    /// gets it once. `last`: the reason the previous call saw.
    pub fn log_write_refusal(&self, last: &mut Option<String>) {
        let Some(engine) = self.engine_opt() else {
            return;
        };
        let now = engine.storage_problem();
        match (&*last, &now) {
            (None, Some(why)) => tracing::error!("writes refused: {why}"),
            (Some(before), Some(why)) if before != why => {
                tracing::error!("writes refused: {why}")
            }
            (Some(_), None) => tracing::warn!("writes taken again: the disk has room"),
            _ => {}
        }
        *last = now;
    }

    /// Commands per second over the sampled window (up to ten seconds), and the window.
    pub fn throughput(&self) -> (f64, f64) {
        let samples = self.inner.throughput.lock().expect("not poisoned");
        match (samples.front(), samples.back()) {
            (Some(first), Some(last)) if last.0 > first.0 => {
                let secs = (last.0 - first.0).as_secs_f64();
                ((last.1 - first.1) as f64 / secs, secs)
            }
            _ => (0.0, 0.0),
        }
    }

    /// The idempotency index as the engine sees it now (`None` while recovering or
    /// shutting down).
    pub async fn idempotency_stats(&self) -> Option<IdempotencyStats> {
        let ticket = self.engine_opt()?.query(Query::IdempotencyStats).ok()?;
        match ticket.await {
            Ok(Ok(QueryReply::Idempotency(stats))) => Some(stats),
            _ => None,
        }
    }

    /// Warn when the effective idempotency window is below the floor: keys are being
    /// forgotten sooner than operations asked for, because of the memory budget. The
    /// warning repeats every minute while it lasts; its end is logged once.
    pub async fn check_idempotency_window(&self) {
        let Some(stats) = self.idempotency_stats().await else {
            return;
        };
        let floor_ms = self.config().idempotency_window_floor_ms;
        let effective_ms = stats.effective_window_ms(crate::time::now_ms());
        let mut warned = self.inner.idempotency_warned.lock().expect("not poisoned");
        if effective_ms < floor_ms {
            if warned.is_none_or(|at| at.elapsed() >= IDEMPOTENCY_WARN_EVERY) {
                tracing::warn!(
                    effective_window_s = effective_ms / 1000,
                    floor_s = floor_ms / 1000,
                    keys = stats.keys,
                    bytes = stats.bytes,
                    budget_bytes = stats.policy.budget_bytes,
                    "idempotency keys are remembered for {} s only, below the floor of {} s: \
                     keys were forgotten to stay within the memory budget; if this lasts, \
                     raise --idempotency-budget-mb",
                    effective_ms / 1000,
                    floor_ms / 1000
                );
                *warned = Some(Instant::now());
            }
        } else if warned.take().is_some() {
            tracing::info!(
                effective_window_s = effective_ms / 1000,
                floor_s = floor_ms / 1000,
                "idempotency window back above the floor"
            );
        }
    }

    /// Sample throughput every second and check the idempotency window every ten,
    /// until shutdown.
    pub fn spawn_background(&self) {
        let state = self.clone();
        let mut stop = self.shutdown_signal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut ticks: u64 = 0;
            let mut writes_refused: Option<String> = None;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        state.sample_throughput();
                        state.log_write_refusal(&mut writes_refused);
                        if ticks.is_multiple_of(IDEMPOTENCY_CHECK_EVERY_S) {
                            state.check_idempotency_window().await;
                        }
                        ticks += 1;
                    }
                    _ = stop.changed() => return,
                }
            }
        });
    }
}
