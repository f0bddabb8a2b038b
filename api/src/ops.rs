//! Operations endpoints: health, readiness, metrics, the OpenAPI document, snapshots,
//! and the problem+json answers for unknown routes and methods.

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Admin, Auth};
use crate::error::ApiError;
use crate::extract::{NoBody, NoQuery};
use crate::replication::PromoteError;
use crate::state::AppState;

#[derive(Debug, Serialize, ToSchema)]
pub struct StatusBody {
    /// `ok` (healthz); `ready` (a leader) or `standby` (readyz).
    pub status: &'static str,
    /// A standby's lag behind the stream, in LSNs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_lsn: Option<u64>,
    /// A standby's lag in seconds: how old its view is (0 when caught up). A standby
    /// that has not heard from the stream for 5 s reports that silence, caught up
    /// or not: it cannot know what it misses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
}

impl StatusBody {
    fn plain(status: &'static str) -> StatusBody {
        StatusBody {
            status,
            lag_lsn: None,
            lag_seconds: None,
        }
    }
}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process is up", body = StatusBody)))]
pub async fn healthz(_query: NoQuery) -> axum::Json<StatusBody> {
    axum::Json(StatusBody::plain("ok"))
}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Recovery finished: `ready` (a leader, accepting writes) or `standby` (serving reads, with its lag)", body = StatusBody),
        (status = 503, description = "Recovering (`overloaded`), draining, writes refused (`storage_unavailable`: a failed flush until a restart, or a full disk until space is freed), or fenced by a newer leader (`not_leader`). An idle leader publishing its log checks the stream every second, so a fence (any mode) or, in `replicated` mode, the stream gone shows here with no write; in `sync` mode the stream gone does not make a leader unready (its writes go on, published later)", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn readyz(
    State(st): State<AppState>,
    _query: NoQuery,
) -> Result<axum::Json<StatusBody>, ApiError> {
    readiness(&st).map(axum::Json)
}

/// Why a `replicated` leader refuses every write now: its replicated log is
/// unavailable (`None` in any other mode or role, or with the log up).
pub fn replicated_log_down(engine: &surge_engine::EngineHandle) -> Option<String> {
    if engine.role() != surge_engine::Role::Leader
        || engine.durability() != surge_engine::Durability::Replicated
    {
        return None;
    }
    engine.replication_down()
}

/// What `/readyz` answers now (`Ok`: 200), and what `surge_ready` says.
pub fn readiness(st: &AppState) -> Result<StatusBody, ApiError> {
    let Some(engine) = st.engine_opt() else {
        return Err(ApiError::overloaded("recovery is still running"));
    };
    if let Some(reason) = engine.storage_refusal() {
        return Err(ApiError::storage_unavailable(reason));
    }
    if !st.is_ready() {
        return Err(ApiError::overloaded(
            "not ready: the server is shutting down",
        ));
    }
    match engine.role() {
        surge_engine::Role::Leader => {
            if let Some(why) = replicated_log_down(engine) {
                // Every write is refused until the replicated log is back.
                return Err(ApiError::storage_unavailable(format!(
                    "the replicated log is unavailable: {why}"
                )));
            }
            Ok(StatusBody::plain("ready"))
        }
        surge_engine::Role::Standby => {
            let (lag_lsn, lag_seconds) = st.replication_lag();
            Ok(StatusBody {
                status: "standby",
                lag_lsn: Some(lag_lsn),
                lag_seconds: Some(lag_seconds),
            })
        }
        surge_engine::Role::Fenced => Err(ApiError::not_leader(
            "this node was the leader and has been fenced by a newer one",
        )),
    }
}

#[utoipa::path(post, path = "/v1/admin/promote", tag = "operations",
    responses(
        (status = 200, description = "This standby caught up with the stream, fenced it, and is the leader now, taking writes (in `replicated` mode the answer waits, at most 5 s, for the stream to be resumed; past that writes are refused until it is, and `/readyz` says why). `lost_lsns` counts what the old leader announced durable beyond the stream: a lower bound in `sync` mode, where what it acknowledged while cut off from the stream went unannounced", body = crate::replication::Promotion, headers(("Surge-Lsn" = u64, description = "The promotion's `lsn`: the last record the new leader holds"))),
        (status = 409, description = "`invalid_transition`: this node is not a standby, or a promotion of it is under way", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 503, description = "`storage_unavailable`: this standby cannot write, or the stream could not be reached (within 2 s) or fenced: nothing was fenced, the leader goes on; or the stream was fenced and what came before it could not be taken (the message says so: promote again); or `overloaded` when the request timed out first, in which case the promotion runs on to its end (`/readyz` says `ready` once it led, `standby` if it gave up)", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn promote(
    State(st): State<AppState>,
    _auth: Auth<Admin>,
    _query: NoQuery,
    _body: NoBody,
) -> Result<Response, ApiError> {
    let engine = st.engine()?;
    let standby = match st.standby() {
        Some(standby) if engine.role() == surge_engine::Role::Standby => standby,
        _ => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_transition",
                format!(
                    "this node is not a standby: it is {}",
                    match engine.role() {
                        surge_engine::Role::Leader => "the leader",
                        surge_engine::Role::Fenced => "fenced: another node leads",
                        surge_engine::Role::Standby => "a standby with no stream to follow",
                    }
                ),
            ));
        }
    };
    crate::deadline::register_running();
    let promotion = standby.promote().await.map_err(|e| match e {
        PromoteError::NotNow(why) => ApiError::new(StatusCode::CONFLICT, "invalid_transition", why),
        PromoteError::Unavailable(why) => ApiError::storage_unavailable(why),
    })?;
    let lsn = promotion.lsn;
    Ok(crate::routes::with_surge_lsn(
        axum::Json(promotion).into_response(),
        lsn,
    ))
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics(State(st): State<AppState>, _query: NoQuery) -> Response {
    let idempotency = st.idempotency_stats().await;
    let mut response = crate::metrics::render(&st, idempotency.as_ref()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object)))]
pub async fn openapi(_query: NoQuery) -> Response {
    let mut response = crate::openapi::document_json().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotBody {
    /// Every record up to this LSN is in the snapshot.
    pub lsn: u64,
}

#[utoipa::path(post, path = "/v1/admin/snapshot", tag = "operations",
    responses(
        (status = 200, description = "Snapshot written", body = SnapshotBody, headers(("Surge-Lsn" = u64, description = "The snapshot's `lsn`: the last record it holds"))),
        (status = 503, description = "`storage_unavailable`", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn snapshot(
    State(st): State<AppState>,
    _auth: Auth<Admin>,
    _query: NoQuery,
    _body: NoBody,
) -> Result<Response, ApiError> {
    let ticket = st.engine()?.snapshot().map_err(ApiError::from_engine)?;
    crate::deadline::register_running();
    let lsn = ticket.await.map_err(|e| {
        // The operator's log says so too: a snapshot that cannot be written (a full
        // disk) keeps the old segments, which is where the space goes.
        tracing::warn!("snapshot asked for by an admin failed: {e}");
        ApiError::from_engine(e)
    })?;
    Ok(crate::routes::with_surge_lsn(
        axum::Json(SnapshotBody { lsn }).into_response(),
        lsn,
    ))
}

pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}
