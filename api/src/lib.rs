//! surge-api: the HTTP service in front of the engine. Only this crate knows HTTP and
//! JSON; its DTOs convert to and from engine types.
//!
//! [`router`] builds the whole service over an [`AppState`], so tests can drive it
//! without a socket; `main.rs` is the CLI around it.

pub mod auth;
pub mod batch;
pub mod console;
pub mod dto;
pub mod error;
pub mod events;
pub mod export;
pub mod extract;
pub mod metrics;
pub mod nats_events;
pub mod openapi;
pub mod ops;
pub mod order_ops;
pub mod replication;
pub mod routes;
pub mod state;
pub mod stats;
pub mod time;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::TimeoutLayer;

pub use auth::{AuthMode, Role, Tokens};
pub use error::ApiError;
pub use state::{ApiConfig, AppState};

/// The whole HTTP service.
pub fn router(state: AppState) -> Router {
    let config = state.config().clone();
    let v1 = Router::new()
        .route("/v1/skus", get(routes::list_skus))
        .route(
            "/v1/skus/{sku}",
            put(routes::define_sku).get(routes::get_sku),
        )
        .route("/v1/skus/{sku}/adjustments", post(routes::adjust_stock))
        .route(
            "/v1/skus/{sku}/customers/{customer_id}",
            get(routes::get_sku_customer),
        )
        .route("/v1/reservations", post(routes::create_reservation))
        .route("/v1/reservations/{id}", get(routes::get_reservation))
        .route(
            "/v1/reservations/{id}/commit",
            post(routes::commit_reservation),
        )
        .route(
            "/v1/reservations/{id}/release",
            post(routes::release_reservation),
        )
        .route(
            "/v1/orders",
            post(routes::create_order).get(routes::list_orders),
        )
        .route("/v1/orders/export.csv", get(export::export_csv))
        .route("/v1/orders/export.xlsx", get(export::export_xlsx))
        .route("/v1/orders/by-no/{order_no}", get(routes::get_order_by_no))
        .route(
            "/v1/orders/{id}",
            get(routes::get_order).patch(order_ops::modify_order),
        )
        .route("/v1/orders/{id}/hold", post(order_ops::hold_order))
        .route(
            "/v1/orders/{id}/release-hold",
            post(order_ops::release_hold),
        )
        .route("/v1/orders/{id}/refunds", post(order_ops::refund_amount))
        .route("/v1/ledger", get(order_ops::list_ledger))
        .route("/v1/ledger/export.csv", get(order_ops::export_ledger))
        .route("/v1/orders/{id}/pay", post(routes::pay_order))
        .route(
            "/v1/orders/{id}/transitions",
            post(routes::transition_order),
        )
        .route("/v1/orders/{id}/cancel", post(routes::cancel_order))
        .route("/v1/orders/{id}/return", post(routes::return_order))
        .route("/v1/orders/{id}/refund", post(routes::refund_order))
        .route("/v1/stats", get(routes::stats))
        .route("/v1/batch", post(batch::batch))
        .route("/v1/events", get(events::events))
        .route("/v1/admin/snapshot", post(ops::snapshot))
        .route("/v1/admin/promote", post(ops::promote));
    let operations = Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(ops::openapi));
    Router::new()
        .merge(v1)
        .merge(operations)
        .merge(console::routes())
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(CatchPanicLayer::custom(
            |_panic: Box<dyn std::any::Any + Send>| {
                tracing::error!("a request handler panicked");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
                .into_response()
            },
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_millis(config.request_timeout_ms),
        ))
        // A plain synchronous map (tower's), not axum's `map_response`, which boxes
        // a future and runs extractor machinery on every request for a function
        // that never awaits.
        .layer(tower::util::MapResponseLayer::new(problemify))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// Error responses produced outside our handlers (a timeout, a rejection from an
/// axum extractor) get a problem+json body like every other failure.
fn problemify(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(error::PROBLEM_JSON.as_bytes()));
    if is_problem {
        return response;
    }
    let error = match status {
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => {
            ApiError::overloaded("the request took too long; retry shortly")
        }
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            status,
            "validation_failed",
            "body: larger than the server's limit",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            ApiError::new(status, "validation_failed", "Content-Type: unsupported")
        }
        StatusCode::NOT_FOUND => ApiError::new(status, "not_found", "no such route"),
        StatusCode::METHOD_NOT_ALLOWED => ApiError::new(
            status,
            "method_not_allowed",
            "method not allowed on this route",
        ),
        s if s.is_client_error() => ApiError::new(
            StatusCode::BAD_REQUEST,
            "validation_failed",
            "the request is malformed",
        ),
        _ => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        ),
    };
    error.into_response()
}
