//! surge-api: the HTTP service in front of the engine. Only this crate knows HTTP and
//! JSON; its DTOs convert to and from engine types.
//!
//! [`router`] builds the whole service over an [`AppState`], so tests can drive it
//! without a socket; `main.rs` is the CLI around it.

pub mod auth;
pub mod batch;
pub mod console;
pub mod deadline;
pub mod dto;
pub mod error;
mod event_doc;
pub mod events;
pub mod export;
pub mod extract;
pub mod front;
pub mod gate;
pub mod hot;
pub mod metrics;
pub mod nats_events;
pub mod openapi;
pub mod ops;
pub mod order_ops;
mod plain_reserve;
pub mod replication;
pub mod routes;
pub mod serve;
pub mod state;
pub mod stats;
pub mod time;

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post, put};
use tower_http::catch_panic::CatchPanicLayer;

pub use auth::{AuthMode, Role, Tokens};
pub use error::ApiError;
pub use state::{ApiConfig, AppState};

/// The routes of the API and of operations, by template: the router is built from
/// this table, and so is the route table that names each request's series.
fn api_routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/v1/skus", get(routes::list_skus)),
        (
            "/v1/skus/{sku}",
            put(routes::define_sku).get(routes::get_sku),
        ),
        ("/v1/skus/{sku}/adjustments", post(routes::adjust_stock)),
        (
            "/v1/skus/{sku}/customers/{customer_id}",
            get(routes::get_sku_customer),
        ),
        ("/v1/reservations", post(routes::create_reservation)),
        ("/v1/reservations/{id}", get(routes::get_reservation)),
        (
            "/v1/reservations/{id}/commit",
            post(routes::commit_reservation),
        ),
        (
            "/v1/reservations/{id}/release",
            post(routes::release_reservation),
        ),
        (
            "/v1/orders",
            post(routes::create_order).get(routes::list_orders),
        ),
        ("/v1/orders/export.csv", get(export::export_csv)),
        ("/v1/orders/export.xlsx", get(export::export_xlsx)),
        ("/v1/orders/by-no/{order_no}", get(routes::get_order_by_no)),
        (
            "/v1/orders/{id}",
            get(routes::get_order).patch(order_ops::modify_order),
        ),
        ("/v1/orders/{id}/hold", post(order_ops::hold_order)),
        (
            "/v1/orders/{id}/release-hold",
            post(order_ops::release_hold),
        ),
        ("/v1/orders/{id}/refunds", post(order_ops::refund_amount)),
        ("/v1/ledger", get(order_ops::list_ledger)),
        ("/v1/ledger/export.csv", get(order_ops::export_ledger)),
        ("/v1/orders/{id}/pay", post(routes::pay_order)),
        (
            "/v1/orders/{id}/transitions",
            post(routes::transition_order),
        ),
        ("/v1/orders/{id}/cancel", post(routes::cancel_order)),
        ("/v1/orders/{id}/return", post(routes::return_order)),
        ("/v1/orders/{id}/refund", post(routes::refund_order)),
        ("/v1/stats", get(routes::stats)),
        ("/v1/batch", post(batch::batch)),
        ("/v1/events", get(events::events)),
        ("/v1/admin/snapshot", post(ops::snapshot)),
        ("/v1/admin/promote", post(ops::promote)),
        ("/healthz", get(ops::healthz)),
        ("/readyz", get(ops::readyz)),
        ("/metrics", get(ops::metrics)),
        ("/openapi.json", get(ops::openapi)),
    ]
}

/// The whole HTTP service.
///
/// The layers wrap the router once, as one service, instead of through
/// `Router::layer`, which wraps every route's endpoint in each layer, each boxed:
/// axum clones a route's service for every request, and that clone allocated and
/// copied one box per layer per request.
pub fn router(state: AppState) -> Router {
    let config = state.config().clone();
    let table: Vec<(&'static str, MethodRouter<AppState>)> =
        api_routes().into_iter().chain(console::routes()).collect();
    let routes = metrics::RouteTable::new(table.iter().map(|(template, _)| template));
    let mut app = Router::new();
    for (template, handlers) in table {
        app = app.route(template, handlers);
    }
    let app = app
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .with_state(state.clone());
    // Outermost first: every answer is counted (with what the layers below made of
    // it), then made problem+json where it is an error without a body of ours.
    let state_for_hot = state.clone();
    let layers = tower::ServiceBuilder::new()
        .layer(metrics::TrackLayer::new(state, routes))
        // A plain synchronous map (tower's), not axum's `map_response`, which boxes
        // a future and runs extractor machinery on every request for a function
        // that never awaits.
        .layer(tower::util::MapResponseLayer::new(problemify))
        .layer(deadline::DeadlineLayer::new(Duration::from_millis(
            config.request_timeout_ms,
        )))
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
        .layer(DefaultBodyLimit::max(config.body_limit_bytes));
    let app = front::Front::new(app, state_for_hot);
    Router::new().fallback_service(layers.service(app))
}

/// Error responses produced outside our handlers (a timeout, a rejection from an
/// axum extractor) get a problem+json body like every other failure. Also turns the
/// body the layers below answer with into axum's.
fn problemify<B>(response: axum::http::Response<B>) -> Response
where
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    let response = response.map(axum::body::Body::new);
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
        // The request timeout answers with its own problem (`deadline`), saying
        // whether the request's write was applied; nothing else answers a bare 503.
        StatusCode::SERVICE_UNAVAILABLE | StatusCode::REQUEST_TIMEOUT => {
            ApiError::overloaded("the server could not answer in time: retry it")
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
