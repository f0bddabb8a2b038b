//! The audit can fail: test doubles that oversell, or lose an acknowledged order,
//! make the drill exit non-zero with the reason.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Says yes to every reservation and reports levels that break
    /// sold + held <= received.
    Oversell,
    /// Acknowledges every order and then answers 404 for it, as if a restart
    /// had lost it.
    LoseOrders,
}

#[derive(Clone)]
struct Double {
    fault: Fault,
    next: Arc<AtomicU64>,
}

async fn ok() -> Response {
    (StatusCode::OK, axum::Json(json!({}))).into_response()
}

async fn define(Path(sku): Path<String>, axum::Json(body): axum::Json<Value>) -> Response {
    let on_hand = body["on_hand"].as_u64().unwrap_or(0);
    axum::Json(json!({"sku": sku, "name": "", "on_hand": on_hand, "reserved": 0, "available": on_hand, "low_stock_threshold": 0})).into_response()
}

async fn reserve(State(d): State<Double>, axum::Json(body): axum::Json<Value>) -> Response {
    let n = d.next.fetch_add(1, Ordering::Relaxed);
    let lines = body["lines"].clone();
    (
        StatusCode::CREATED,
        axum::Json(
            json!({"id": format!("r{n}"), "status": "held", "lines": lines, "order_id": null}),
        ),
    )
        .into_response()
}

async fn reservation(Path(id): Path<String>) -> Response {
    // Whatever the drill expects last is the most forgiving answer: the double's
    // lie is in the levels and the orders.
    axum::Json(json!({"id": id, "status": "expired", "lines": [], "order_id": null}))
        .into_response()
}

async fn release(Path(id): Path<String>) -> Response {
    axum::Json(json!({"id": id, "status": "released", "lines": []})).into_response()
}

async fn create_order(State(d): State<Double>, axum::Json(body): axum::Json<Value>) -> Response {
    let n = d.next.fetch_add(1, Ordering::Relaxed);
    (
        StatusCode::CREATED,
        axum::Json(json!({"id": format!("o{n}"), "order_no": body["order_no"], "status": "reserved", "lines": body["lines"]})),
    )
        .into_response()
}

async fn order(State(d): State<Double>, Path(id): Path<String>) -> Response {
    if d.fault == Fault::LoseOrders {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"status": 404, "code": "unknown_order"})),
        )
            .into_response();
    }
    axum::Json(json!({"id": id, "order_no": "?", "status": "confirmed", "lines": [], "payment": {"status": "paid"}}))
        .into_response()
}

async fn sku(Path(sku): Path<String>) -> Response {
    // 10 held out of 3 on hand: more held than there is.
    axum::Json(json!({"sku": sku, "on_hand": 3, "reserved": 10, "available": 0})).into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({"status": 404, "code": "unknown_order"})),
    )
        .into_response()
}

fn double(fault: Fault) -> Router {
    Router::new()
        .route("/readyz", get(ok))
        .route("/v1/skus/{sku}", put(define).get(sku))
        .route("/v1/reservations", post(reserve))
        .route("/v1/reservations/{id}", get(reservation))
        .route("/v1/reservations/{id}/release", post(release))
        .route("/v1/orders", post(create_order))
        .route("/v1/orders/by-no/{no}", get(not_found))
        .route("/v1/orders/{id}", get(order))
        .route("/v1/orders/{id}/pay", post(ok))
        .route("/v1/orders/{id}/cancel", post(ok))
        .with_state(Double {
            fault,
            next: Arc::new(AtomicU64::new(1)),
        })
}

/// Serve the double, run a short flash-sale drill at it, return (exit code, stderr).
fn drill_against(fault: Fault) -> (Option<i32>, String) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(async move { axum::serve(listener, double(fault)).await });
    let target = format!("http://{addr}");
    let out = common::loadtest(&[
        "flash-sale",
        "--target",
        &target,
        "--duration",
        "1s",
        "--rate",
        "50",
        "--connections",
        "4",
        "--skus",
        "2",
        "--stock",
        "5",
        "--ttl-ms",
        "1000",
    ]);
    rt.shutdown_background();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(fault: Fault, exit: i32, reason: &str) {
    let (code, stderr) = drill_against(fault);
    assert_eq!(code, Some(exit), "exit status; stderr:\n{stderr}");
    assert!(stderr.contains("AUDIT FAILED"), "stderr:\n{stderr}");
    assert!(
        stderr.contains(reason),
        "stderr should name the reason {reason:?}:\n{stderr}"
    );
}

#[test]
fn an_overselling_server_fails_the_audit() {
    check(Fault::Oversell, 1, "oversold");
}

#[test]
fn a_server_that_loses_acknowledged_orders_fails_the_audit() {
    check(Fault::LoseOrders, 1, "acknowledged write was lost");
}

#[test]
fn non_loopback_targets_are_refused() {
    let out = common::loadtest(&["flash-sale", "--target", "http://192.0.2.1:80"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing non-loopback"));
    let out = common::loadtest(&[
        "flash-sale",
        "--spawn",
        "--baseline",
        "redis://192.0.2.1:6379",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing non-loopback"));
}
