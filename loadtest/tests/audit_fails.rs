//! The audit can fail: test doubles that oversell, or lose an acknowledged order,
//! make the drill exit non-zero with the reason.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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
    /// Ignores the purchase limit: counts 99 units for every customer.
    OverLimit,
    /// Ignores the sale window: stamps every hold and order 2000-01-01.
    OutsideWindow,
}

#[derive(Clone)]
struct Double {
    fault: Fault,
    next: Arc<AtomicU64>,
    /// The last SKU definition (the limited drill's rules).
    defined: Arc<Mutex<Value>>,
}

impl Double {
    /// When the double says a hold or an order was made.
    fn stamp(&self) -> Value {
        match self.fault {
            Fault::OutsideWindow => json!("2000-01-01T00:00:00.000Z"),
            _ => self.defined.lock().unwrap()["sale_starts_at"].clone(),
        }
    }
}

async fn ok() -> Response {
    (StatusCode::OK, axum::Json(json!({}))).into_response()
}

async fn define(
    State(d): State<Double>,
    Path(sku): Path<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    *d.defined.lock().unwrap() = body.clone();
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

async fn reservation(State(d): State<Double>, Path(id): Path<String>) -> Response {
    // Whatever the drill expects last is the most forgiving answer: the double's
    // lie is in the levels and the orders.
    axum::Json(json!({"id": id, "status": "expired", "lines": [], "order_id": null, "created_at": d.stamp()}))
        .into_response()
}

async fn sku_customer(
    State(d): State<Double>,
    Path((sku, customer)): Path<(String, String)>,
) -> Response {
    let counted = if d.fault == Fault::OverLimit { 99 } else { 0 };
    let limit = d.defined.lock().unwrap()["purchase_limit_per_customer"].clone();
    axum::Json(json!({"sku": sku, "customer_id": customer, "counted": counted, "limit": limit}))
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
    axum::Json(json!({"id": id, "order_no": "?", "status": "confirmed", "lines": [], "payment": {"status": "paid"}, "created_at": d.stamp()}))
        .into_response()
}

async fn sku(State(d): State<Double>, Path(sku): Path<String>) -> Response {
    // 10 held out of 3 on hand: more held than there is. The rules as defined.
    let def = d.defined.lock().unwrap().clone();
    axum::Json(
        json!({"sku": sku, "on_hand": 3, "reserved": 10, "available": 0,
        "purchase_limit_per_customer": def["purchase_limit_per_customer"],
        "sale_starts_at": def["sale_starts_at"], "sale_ends_at": def["sale_ends_at"]}),
    )
    .into_response()
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
        .route("/v1/skus/{sku}/customers/{customer}", get(sku_customer))
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
            defined: Arc::new(Mutex::new(Value::Null)),
        })
}

/// Serve the double, run a short drill (`scenario` and its own flags) at it; return
/// (exit code, stderr).
fn drill_at(fault: Fault, scenario: &[&str]) -> (Option<i32>, String) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(async move { axum::serve(listener, double(fault)).await });
    let target = format!("http://{addr}");
    let mut args = scenario.to_vec();
    args.extend([
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
    let out = loadtest(&args);
    rt.shutdown_background();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check(fault: Fault, exit: i32, reason: &str) {
    check_at(fault, &["flash-sale"], exit, reason);
}

fn check_at(fault: Fault, scenario: &[&str], exit: i32, reason: &str) {
    let (code, stderr) = drill_at(fault, scenario);
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
    let out = loadtest(&["flash-sale", "--target", "http://192.0.2.1:80"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing non-loopback"));
    let out = loadtest(&[
        "flash-sale",
        "--spawn",
        "--baseline",
        "redis://192.0.2.1:6379",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing non-loopback"));
}

/// `--json` states only what the drill knows: the durability of a `--target`
/// server is not that (`--durability` is the spawned server's), so it is null.
#[test]
fn json_records_no_durability_for_a_target_server() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("drill.json");
    let (code, stderr) = drill_at(
        Fault::Oversell,
        &["flash-sale", "--json", path.to_str().unwrap()],
    );
    assert_eq!(code, Some(1), "exit status; stderr:\n{stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let config = report["config"].as_object().unwrap();
    assert_eq!(config.get("durability"), Some(&Value::Null), "{config:?}");
    assert_eq!(config["spawn"], json!(false));
    assert!(
        config["target"]
            .as_str()
            .unwrap()
            .starts_with("http://127.0.0.1:")
    );
}

/// The limited sale's own checks: a window of 0.2 s .. 0.8 s into a 1 s drill.
const LIMITED: &[&str] = &[
    "limited-sale",
    "--limit",
    "2",
    "--opens-after",
    "200ms",
    "--closes-after",
    "800ms",
];

#[test]
fn a_server_that_ignores_the_purchase_limit_fails_the_audit() {
    check_at(Fault::OverLimit, LIMITED, 1, "over the limit of 2");
}

#[test]
fn a_server_that_sells_outside_the_window_fails_the_audit() {
    check_at(Fault::OutsideWindow, LIMITED, 1, "outside the sale window");
}

/// Run `surge-loadtest` with `args`; a hard `--time-max` keeps every run bounded.
pub fn loadtest(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_surge-loadtest"))
        .args(args)
        .args(["--time-max", "120s"])
        .output()
        .expect("running surge-loadtest");
    eprintln!(
        "--- surge-loadtest {args:?}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
