//! Router-level tests: the whole service without a socket, over an engine that keeps
//! no log (`Durability::None`). Every endpoint's success and documented errors.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]

use std::collections::{BTreeMap, BTreeSet};

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use surge_api::{ApiConfig, AppState, AuthMode, Tokens};
use surge_engine::{
    Durability, Engine, EngineConfig, EngineHandle, IdempotencyPolicy, Query, QueryReply,
};
use tower::ServiceExt;

const ADMIN: &str = "adm-token";
const OPERATOR: &str = "op-token";
const STOREFRONT: &str = "sf-token";
const VIEWER: &str = "vw-token";

struct Api {
    router: Router,
    engine: EngineHandle,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
    json: Value,
}

impl Api {
    fn new() -> Api {
        Api::with_config(ApiConfig::default())
    }

    fn with_config(config: ApiConfig) -> Api {
        Api::with_configs(
            config,
            EngineConfig {
                durability: Durability::None,
                ..Default::default()
            },
        )
    }

    fn with_configs(config: ApiConfig, engine: EngineConfig) -> Api {
        let (engine, _) = Engine::open(engine).expect("engine opens");
        Api::with_engine(config, engine)
    }

    fn with_engine(config: ApiConfig, engine: EngineHandle) -> Api {
        let mut tokens = Tokens::default();
        tokens
            .parse_env(&format!(
                "admin:{ADMIN},operator:{OPERATOR},storefront:{STOREFRONT},viewer:{VIEWER}"
            ))
            .unwrap();
        let state = AppState::with_engine(config, AuthMode::Tokens(tokens), engine.clone());
        Api {
            router: surge_api::router(state),
            engine,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Reply {
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some()
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("content-type", "application/json");
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(Body::from(body.unwrap_or("").to_string()))
            .unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            json,
        }
    }

    /// A viewer's bodiless GET of `path` with `headers`, answered with its body
    /// unread: a stream or an export, which holds its slot until it is done with.
    async fn open_as_viewer(
        &self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> axum::response::Response {
        let mut request = Request::builder()
            .uri(path)
            .header("authorization", format!("Bearer {VIEWER}"));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request.body(Body::empty()).unwrap();
        self.router.clone().oneshot(request).await.unwrap()
    }

    /// A storefront's `POST` of `body`.
    async fn storefront_post(&self, path: &str, body: &Value) -> Reply {
        self.call("POST", path, Some(STOREFRONT), &[], Some(&body.to_string()))
            .await
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| b.to_string());
        self.call(method, path, Some(ADMIN), &[], body.as_deref())
            .await
    }

    /// Each (method, path, status, code): the admin's bodiless request is refused
    /// with that problem.
    async fn assert_admin_refusals(&self, cases: &[(&str, &str, u16, &str)]) {
        for &(method, path, status, code) in cases {
            assert_problem(&self.admin(method, path, None).await, status, code);
        }
    }

    async fn digest(&self) -> u64 {
        match self
            .engine
            .query(Query::Digest)
            .unwrap()
            .await
            .unwrap()
            .unwrap()
        {
            QueryReply::Digest(d) => d,
            _ => unreachable!(),
        }
    }

    async fn define(&self, sku: &str, on_hand: u64) {
        let r = self
            .admin(
                "PUT",
                &format!("/v1/skus/{sku}"),
                Some(json!({"on_hand": on_hand, "name": sku})),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

fn assert_problem(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status.as_u16(), status, "{}", r.text);
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "application/problem+json",
        "{}",
        r.text
    );
    assert_eq!(r.json["code"], code, "{}", r.text);
    assert_eq!(r.json["status"], status, "{}", r.text);
    assert!(
        r.json["type"].is_string() && r.json["title"].is_string() && r.json["detail"].is_string()
    );
}

#[tokio::test]
async fn skus_define_read_list_adjust() {
    let api = Api::new();
    let r = api
        .admin(
            "PUT",
            "/v1/skus/A",
            Some(json!({"on_hand": 10, "low_stock_threshold": 2, "name": "Apple"})),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json,
        json!({"sku": "A", "name": "Apple", "on_hand": 10, "reserved": 0, "available": 10, "low_stock_threshold": 2, "purchase_limit_per_customer": 0, "sale_starts_at": null, "sale_ends_at": null})
    );
    for sku in ["B", "C"] {
        api.define(sku, 5).await;
    }
    let r = api
        .call("GET", "/v1/skus/A", Some(STOREFRONT), &[], None)
        .await;
    assert_eq!(r.json["available"], 10);
    assert_problem(
        &api.call("GET", "/v1/skus/NOPE", Some(VIEWER), &[], None)
            .await,
        404,
        "unknown_sku",
    );
    assert_problem(
        &api.call("GET", "/v1/skus/bad%20id", Some(VIEWER), &[], None)
            .await,
        404,
        "unknown_sku",
    );

    let page = api.admin("GET", "/v1/skus?limit=2", None).await;
    assert_eq!(page.json["items"].as_array().unwrap().len(), 2);
    let cursor = page.json["next_cursor"].as_str().unwrap().to_string();
    let page = api
        .admin("GET", &format!("/v1/skus?limit=2&cursor={cursor}"), None)
        .await;
    assert_eq!(page.json["items"][0]["sku"], "C");
    assert!(page.json["next_cursor"].is_null());
    assert_problem(
        &api.admin("GET", "/v1/skus?limit=0", None).await,
        400,
        "validation_failed",
    );
    assert_problem(
        &api.admin("GET", "/v1/skus?cursor=x", None).await,
        400,
        "validation_failed",
    );

    let r = api
        .call(
            "POST",
            "/v1/skus/A/adjustments",
            Some(OPERATOR),
            &[],
            Some(r#"{"delta": 5, "reason": "inbound", "note": "truck"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["on_hand"], 15);
    let r = api
        .admin(
            "POST",
            "/v1/skus/NOPE/adjustments",
            Some(json!({"delta": 1, "reason": "inbound"})),
        )
        .await;
    assert_problem(&r, 404, "unknown_sku");
    let r = api
        .admin(
            "POST",
            "/v1/skus/A/adjustments",
            Some(json!({"delta": 1, "reason": "gift"})),
        )
        .await;
    assert_problem(&r, 400, "validation_failed");
    assert_eq!(r.json["field"], "reason");

    // Redefining or correcting below what is reserved is refused.
    let r = api
        .admin(
            "POST",
            "/v1/reservations",
            Some(json!({"lines": [{"sku": "B", "qty": 4}]})),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = api
        .admin("PUT", "/v1/skus/B", Some(json!({"on_hand": 3})))
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
    let r = api
        .admin(
            "POST",
            "/v1/skus/B/adjustments",
            Some(json!({"delta": -2, "reason": "correction"})),
        )
        .await;
    assert_eq!(r.status, 409, "{}", r.text);
}

#[tokio::test]
async fn reservations_hold_commit_release() {
    let api = Api::new();
    api.define("A", 5).await;
    let r = api
        .admin(
            "POST",
            "/v1/reservations",
            Some(json!({"lines": [{"sku": "A", "qty": 2}], "ttl_ms": 60000})),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.headers.get("location").unwrap(),
        &format!("/v1/reservations/{id}")
    );
    assert_eq!(r.json["status"], "held");
    assert_eq!(r.json["lines"], json!([{"sku": "A", "qty": 2}]));
    assert!(r.json["expires_at"].as_str().unwrap().ends_with('Z'));

    let r = api
        .admin(
            "POST",
            "/v1/reservations",
            Some(json!({"lines": [{"sku": "A", "qty": 4}]})),
        )
        .await;
    assert_problem(&r, 409, "insufficient_stock");
    assert_eq!(
        r.json["lines"],
        json!([{"sku": "A", "requested": 4, "available": 3}])
    );
    let r = api
        .admin(
            "POST",
            "/v1/reservations",
            Some(json!({"lines": [{"sku": "Z", "qty": 1}]})),
        )
        .await;
    assert_problem(&r, 404, "unknown_sku");

    let r = api
        .call(
            "GET",
            &format!("/v1/reservations/{id}"),
            Some(STOREFRONT),
            &[],
            None,
        )
        .await;
    assert_eq!(r.json["status"], "held");
    let r = api
        .admin("POST", &format!("/v1/reservations/{id}/commit"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "committed");
    let again = api
        .admin("POST", &format!("/v1/reservations/{id}/commit"), None)
        .await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json["status"], "committed");
    assert_problem(
        &api.admin("POST", &format!("/v1/reservations/{id}/release"), None)
            .await,
        409,
        "invalid_transition",
    );
    let sku = api.admin("GET", "/v1/skus/A", None).await;
    assert_eq!(
        (sku.json["on_hand"].as_u64(), sku.json["reserved"].as_u64()),
        (Some(3), Some(0))
    );

    let r = api
        .admin(
            "POST",
            "/v1/reservations",
            Some(json!({"lines": [{"sku": "A", "qty": 1}]})),
        )
        .await;
    let id2 = r.json["id"].as_str().unwrap().to_string();
    let r = api
        .admin("POST", &format!("/v1/reservations/{id2}/release"), None)
        .await;
    assert_eq!(r.json["status"], "released");
    api.assert_admin_refusals(&[
        (
            "POST",
            "/v1/reservations/r999/commit",
            404,
            "unknown_reservation",
        ),
        (
            "POST",
            "/v1/reservations/zzz/release",
            404,
            "unknown_reservation",
        ),
        ("GET", "/v1/reservations/zzz", 404, "unknown_reservation"),
    ])
    .await;
}

async fn new_order(api: &Api, order_no: &str, qty: u64) -> Value {
    let body = json!({"order_no": order_no, "customer_id": "c9", "lines": [{"sku": "A", "qty": qty, "unit_price": 1999}]});
    let r = api
        .call(
            "POST",
            "/v1/orders",
            Some(STOREFRONT),
            &[],
            Some(&body.to_string()),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    r.json
}

#[tokio::test]
async fn orders_full_lifecycle() {
    let api = Api::new();
    api.define("A", 10).await;
    let order = new_order(&api, "n-1", 2).await;
    let id = order["id"].as_str().unwrap().to_string();
    assert_eq!(order["status"], "reserved");
    assert_eq!(order["payment"]["status"], "unpaid");
    assert_eq!(order["total"], 3998);
    assert_eq!(order["history"][0]["status"], "reserved");
    assert_eq!(order["history"][0]["actor"], "storefront");

    let dup = json!({"order_no": "n-1", "customer_id": "c9", "lines": [{"sku": "A", "qty": 1, "unit_price": 1}]});
    assert_problem(
        &api.admin("POST", "/v1/orders", Some(dup)).await,
        409,
        "duplicate_order_no",
    );
    let r = api
        .admin(
            "POST",
            &format!("/v1/orders/{id}/pay"),
            Some(json!({"amount": 1})),
        )
        .await;
    assert!(r.status.is_client_error(), "{}", r.text);
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/pay"),
            Some(STOREFRONT),
            &[],
            Some(r#"{"amount": 3998, "payment_ref": "psp-1"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (
            r.json["status"].as_str(),
            r.json["payment"]["status"].as_str()
        ),
        (Some("confirmed"), Some("paid"))
    );

    for to in ["picking", "packed"] {
        let r = api
            .call(
                "POST",
                &format!("/v1/orders/{id}/transitions"),
                Some(OPERATOR),
                &[("x-actor", "alice")],
                Some(&json!({"to": to}).to_string()),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json["status"], to);
    }
    let r = api
        .admin(
            "POST",
            &format!("/v1/orders/{id}/transitions"),
            Some(json!({"to": "completed"})),
        )
        .await;
    assert_problem(&r, 409, "invalid_transition");
    let r = api
        .admin(
            "POST",
            &format!("/v1/orders/{id}/transitions"),
            Some(json!({"to": "cancelled"})),
        )
        .await;
    assert_problem(&r, 400, "validation_failed");
    let r = api
        .admin(
            "POST",
            &format!("/v1/orders/{id}/transitions"),
            Some(json!({"to": "shipped", "tracking_no": "TRK1"})),
        )
        .await;
    assert_eq!(r.json["tracking_no"], "TRK1");
    let r = api
        .admin(
            "POST",
            &format!("/v1/orders/{id}/cancel"),
            Some(json!({"reason": "other"})),
        )
        .await;
    assert_problem(&r, 409, "order_shipped");
    for to in ["delivered", "completed"] {
        api.admin(
            "POST",
            &format!("/v1/orders/{id}/transitions"),
            Some(json!({"to": to})),
        )
        .await;
    }
    let r = api
        .admin(
            "POST",
            &format!("/v1/orders/{id}/return"),
            Some(json!({"restock": true, "reason": "damaged"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        (
            r.json["status"].as_str(),
            r.json["payment"]["status"].as_str()
        ),
        (Some("returned"), Some("refund_due"))
    );
    let r = api
        .admin(
            "POST",
            &format!("/v1/orders/{id}/refund"),
            Some(json!({"refund_ref": "rf-1"})),
        )
        .await;
    assert_eq!(r.json["payment"]["status"], "refunded");

    let r = api
        .call("GET", &format!("/v1/orders/{id}"), Some(VIEWER), &[], None)
        .await;
    let history: Vec<&str> = r.json["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        history[..8],
        [
            "reserved",
            "confirmed",
            "picking",
            "packed",
            "shipped",
            "delivered",
            "completed",
            "returned"
        ]
    );
    assert_eq!(r.json["history"][2]["actor"], "operator:alice");
    let r = api
        .call("GET", "/v1/orders/by-no/n-1", Some(STOREFRONT), &[], None)
        .await;
    assert_eq!(r.json["id"], id.as_str());
    api.assert_admin_refusals(&[
        ("GET", "/v1/orders/by-no/none", 404, "unknown_order"),
        ("GET", "/v1/orders/zzz", 404, "unknown_order"),
        ("GET", "/v1/orders/o999", 404, "unknown_order"),
    ])
    .await;
    assert_problem(
        &api.admin("POST", "/v1/orders/zzz/pay", Some(json!({"amount": 1})))
            .await,
        404,
        "unknown_order",
    );
}

#[tokio::test]
async fn cancel_and_adopt_a_hold() {
    let api = Api::new();
    api.define("A", 10).await;
    let r = api
        .admin(
            "POST",
            "/v1/reservations",
            Some(json!({"lines": [{"sku": "A", "qty": 3}]})),
        )
        .await;
    let rid = r.json["id"].as_str().unwrap().to_string();
    let body = json!({"order_no": "n-2", "customer_id": "c1", "reservation_id": rid, "lines": [{"sku": "A", "qty": 3, "unit_price": 100}]});
    let r = api.admin("POST", "/v1/orders", Some(body)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.json["reservation_id"], rid.as_str());
    let id = r.json["id"].as_str().unwrap().to_string();
    let body = json!({"order_no": "n-3", "customer_id": "c1", "reservation_id": "zzz", "lines": [{"sku": "A", "qty": 3, "unit_price": 100}]});
    assert_problem(
        &api.admin("POST", "/v1/orders", Some(body)).await,
        404,
        "unknown_reservation",
    );

    // The storefront may cancel only for the customer or a failed payment.
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/cancel"),
            Some(STOREFRONT),
            &[],
            Some(r#"{"reason": "fraud_suspected"}"#),
        )
        .await;
    assert_problem(&r, 403, "forbidden");
    let r = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/cancel"),
            Some(STOREFRONT),
            &[],
            Some(r#"{"reason": "customer_request", "note": "oops"}"#),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["status"], "cancelled");
    assert_eq!(r.json["cancellation"]["reason"], "customer_request");
    assert_eq!(r.json["cancellation"]["note"], "oops");
    assert_eq!(r.json["cancellation"]["actor"], "storefront");
    let again = api
        .call(
            "POST",
            &format!("/v1/orders/{id}/cancel"),
            Some(STOREFRONT),
            &[],
            Some(r#"{"reason": "customer_request"}"#),
        )
        .await;
    assert_eq!(again.status, 200);
    let sku = api.admin("GET", "/v1/skus/A", None).await;
    assert_eq!(sku.json["available"], 10);
}

#[tokio::test]
async fn lists_export_and_stats() {
    let api = Api::new();
    api.define("A", 100).await;
    api.define("B", 100).await;
    for i in 0..5 {
        new_order(&api, &format!("L-{i}"), 1).await;
    }
    let body = json!({"order_no": "q,\"x\"", "customer_id": "c2", "lines": [{"sku": "A", "qty": 1, "unit_price": 5}, {"sku": "B", "qty": 2, "unit_price": 7}]});
    assert_eq!(
        api.admin("POST", "/v1/orders", Some(body)).await.status,
        201
    );
    api.admin(
        "POST",
        "/v1/orders/o1/cancel",
        Some(json!({"reason": "out_of_stock"})),
    )
    .await;

    let r = api
        .call("GET", "/v1/orders?limit=4", Some(VIEWER), &[], None)
        .await;
    let ids: Vec<&str> = r.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["o6", "o5", "o4", "o3"]);
    let cursor = r.json["next_cursor"].as_str().unwrap();
    let r = api
        .admin("GET", &format!("/v1/orders?limit=4&cursor={cursor}"), None)
        .await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 2);
    assert!(r.json["next_cursor"].is_null());
    let r = api
        .admin("GET", "/v1/orders?status=cancelled&cursor=", None)
        .await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
    let r = api.admin("GET", "/v1/orders?sku=B", None).await;
    assert_eq!(r.json["items"][0]["customer_id"], "c2");
    let r = api
        .admin(
            "GET",
            "/v1/orders?customer_id=c2&created_from=2000-01-01T00:00:00Z&created_to=4102444800000",
            None,
        )
        .await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1);
    api.assert_admin_refusals(&[
        ("GET", "/v1/orders?status=lost", 400, "validation_failed"),
        (
            "GET",
            "/v1/orders?created_from=yesterday",
            400,
            "validation_failed",
        ),
        ("GET", "/v1/orders?cursor=zz", 400, "validation_failed"),
    ])
    .await;

    let r = api
        .call(
            "GET",
            "/v1/orders/export.csv?customer_id=c2",
            Some(VIEWER),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers
            .get("content-type")
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let rows: Vec<&str> = r.text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 3, "{}", r.text);
    assert!(rows[0].starts_with("order_id,order_no"));
    assert!(rows[1].starts_with("o6,\"q,\"\"x\"\"\",c2,"), "{}", rows[1]);

    let r = api
        .call("GET", "/v1/stats?top=1", Some(VIEWER), &[], None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["orders_total"], 6);
    assert_eq!(r.json["orders_by_status"]["cancelled"], 1);
    assert_eq!(r.json["orders_by_status"]["reserved"], 5);
    assert_eq!(r.json["cancellations_by_reason"]["out_of_stock"], 1);
    assert!((r.json["cancellation_rate"].as_f64().unwrap() - 1.0 / 6.0).abs() < 1e-9);
    assert_eq!(r.json["top_skus"].as_array().unwrap().len(), 1);
    assert!(r.json["throughput"]["commands_per_s"].is_number());
    assert_problem(
        &api.admin("GET", "/v1/stats?top=0", None).await,
        400,
        "validation_failed",
    );
}

#[tokio::test]
async fn idempotency_keys_replay_and_conflict() {
    let api = Api::new();
    api.define("A", 10).await;
    let body = r#"{"lines": [{"sku": "A", "qty": 2}]}"#;
    let key = [("idempotency-key", "key-1")];
    let first = api
        .call(
            "POST",
            "/v1/reservations",
            Some(STOREFRONT),
            &key,
            Some(body),
        )
        .await;
    let second = api
        .call(
            "POST",
            "/v1/reservations",
            Some(STOREFRONT),
            &key,
            Some(body),
        )
        .await;
    assert_eq!(first.status, 201);
    assert_eq!((second.status, &second.text), (first.status, &first.text));
    assert_eq!(
        api.admin("GET", "/v1/skus/A", None).await.json["reserved"],
        2
    );
    let other = api
        .call(
            "POST",
            "/v1/reservations",
            Some(STOREFRONT),
            &key,
            Some(r#"{"lines": [{"sku": "A", "qty": 3}]}"#),
        )
        .await;
    assert_problem(&other, 422, "idempotency_conflict");
    // Keys are the caller's: another token's request under the same key and body
    // is a conflict, not answered with the first caller's stored hold.
    let someone_else = api
        .call("POST", "/v1/reservations", Some(ADMIN), &key, Some(body))
        .await;
    assert_problem(&someone_else, 422, "idempotency_conflict");
    assert!(
        !someone_else.text.contains("\"id\""),
        "{}",
        someone_else.text
    );
    // A refusal is remembered too: the same status and body again.
    let big = r#"{"lines": [{"sku": "A", "qty": 50}]}"#;
    let k2 = [("idempotency-key", "key-2")];
    let a = api
        .call("POST", "/v1/reservations", Some(STOREFRONT), &k2, Some(big))
        .await;
    let b = api
        .call("POST", "/v1/reservations", Some(STOREFRONT), &k2, Some(big))
        .await;
    assert_eq!((a.status.as_u16(), &a.text), (b.status.as_u16(), &b.text));
    let long = "k".repeat(129);
    let r = api
        .call(
            "POST",
            "/v1/reservations",
            Some(STOREFRONT),
            &[("idempotency-key", &long)],
            Some(body),
        )
        .await;
    assert_problem(&r, 400, "validation_failed");
    assert_eq!(r.json["field"], "Idempotency-Key");
}

/// At the memory budget no keyed write is refused: the oldest keys are forgotten,
/// and `/metrics` shows the effective window falling below the floor.
#[tokio::test]
async fn keyed_writes_past_the_idempotency_budget_all_succeed() {
    let api = Api::with_configs(
        ApiConfig {
            idempotency_window_floor_ms: 3_600_000,
            ..ApiConfig::default()
        },
        EngineConfig {
            durability: Durability::None,
            idempotency: Some(IdempotencyPolicy {
                window_ms: 86_400_000,
                budget_bytes: 64 << 10,
            }),
            ..Default::default()
        },
    );
    api.define("A", 1_000_000).await;
    let metric = |text: &str, name: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    let metrics = api.call("GET", "/metrics", None, &[], None).await.text;
    assert_eq!(
        metric(&metrics, "surge_idempotency_window_seconds"),
        86_400.0
    );
    assert_eq!(
        metric(&metrics, "surge_idempotency_window_below_floor"),
        0.0
    );
    let keys_max = metric(&metrics, "surge_idempotency_keys_max") as usize;
    let body = r#"{"lines": [{"sku": "A", "qty": 1}]}"#;
    let mut first = None;
    for i in 0..keys_max + 100 {
        let key = format!("sale-{i}");
        let r = api
            .call(
                "POST",
                "/v1/reservations",
                Some(STOREFRONT),
                &[("idempotency-key", &key)],
                Some(body),
            )
            .await;
        assert_eq!(r.status, 201, "key {i}: {}", r.text);
        first.get_or_insert(r.text);
    }
    let metrics = api.call("GET", "/metrics", None, &[], None).await.text;
    assert_eq!(metric(&metrics, "surge_idempotency_at_budget"), 1.0);
    assert_eq!(
        metric(&metrics, "surge_idempotency_window_below_floor"),
        1.0
    );
    assert!(metric(&metrics, "surge_idempotency_window_seconds") < 3_600.0);
    assert!(metric(&metrics, "surge_idempotency_keys") <= keys_max as f64);
    assert!(metric(&metrics, "surge_idempotency_bytes") <= (64 << 10) as f64);
    // The first key is forgotten: sent again, it holds again (a new reservation).
    let again = api
        .call(
            "POST",
            "/v1/reservations",
            Some(STOREFRONT),
            &[("idempotency-key", "sale-0")],
            Some(body),
        )
        .await;
    assert_eq!(again.status, 201);
    assert_ne!(Some(again.text), first);
    // The newest is remembered: the same answer.
    let last = format!("sale-{}", keys_max + 99);
    let a = api
        .call(
            "POST",
            "/v1/reservations",
            Some(STOREFRONT),
            &[("idempotency-key", &last)],
            Some(body),
        )
        .await;
    let b = api
        .call(
            "POST",
            "/v1/reservations",
            Some(STOREFRONT),
            &[("idempotency-key", &last)],
            Some(body),
        )
        .await;
    assert_eq!((a.status, &a.text), (b.status, &b.text));
}

#[tokio::test]
async fn batch_ops_succeed_or_fail_alone() {
    let api = Api::new();
    api.define("A", 3).await;
    let body = json!({"ops": [
        {"op": "reserve", "lines": [{"sku": "A", "qty": 2}]},
        {"op": "reserve", "lines": [{"sku": "A", "qty": 2}]},
        {"op": "commit", "id": "r1"},
        {"op": "release", "id": "r77"},
        {"op": "create_order", "order_no": "b-1", "customer_id": "c", "lines": [{"sku": "A", "qty": 1, "unit_price": 10}]},
        {"op": "pay", "id": "o1", "amount": 10},
        {"op": "cancel", "id": "o1", "reason": "other"},
        {"op": "reserve", "lines": [{"sku": "A", "qty": 0}]},
        {"op": "fly"},
        {"op": "reserve", "lines": [], "extra": 1},
    ]});
    let r = api.storefront_post("/v1/batch", &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let results = r.json["results"].as_array().unwrap();
    assert_eq!(results.len(), 10);
    assert_eq!(results[0]["status"], "held");
    assert_eq!(results[1]["code"], "insufficient_stock");
    assert_eq!(results[2]["status"], "committed");
    assert_eq!(results[3]["code"], "unknown_reservation");
    assert_eq!(results[4]["status"], "reserved");
    assert_eq!(results[5]["status"], "confirmed");
    assert_eq!(
        (results[6]["code"].as_str(), results[6]["status"].as_u64()),
        (Some("forbidden"), Some(403))
    );
    // The engine's refusal names the field from the batch's body, as the API's do.
    assert_eq!(results[7]["field"], "ops[7].lines[0].qty");
    assert!(
        results[7]["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("ops[7].lines[0].qty: ")),
        "{}",
        results[7]
    );
    assert_eq!(results[8]["field"], "ops[8].op");
    assert_eq!(results[9]["field"], "ops[9].extra");

    let api = Api::with_config(ApiConfig {
        batch_ops_max: 2,
        ..ApiConfig::default()
    });
    let body = json!({"ops": [{"op": "fly"}, {"op": "fly"}, {"op": "fly"}]});
    assert_problem(
        &api.admin("POST", "/v1/batch", Some(body)).await,
        400,
        "validation_failed",
    );
    // The same limit for a batch of plain reserve ops, which is read in one pass.
    let reserve = json!({"op": "reserve", "lines": [{"sku": "A", "qty": 1}]});
    let body = json!({"ops": [reserve.clone(), reserve.clone(), reserve]});
    let r = api.admin("POST", "/v1/batch", Some(body)).await;
    assert_problem(&r, 400, "validation_failed");
    assert_eq!(r.json["field"], "ops", "{}", r.text);
    // An op without `op` is not a reserve: refused alone, naming the field.
    let r = api
        .admin(
            "POST",
            "/v1/batch",
            Some(json!({"ops": [{"lines": [{"sku": "A", "qty": 1}]}]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.json["results"][0]["code"], "validation_failed",
        "{}",
        r.text
    );
    let r = api
        .call(
            "POST",
            "/v1/batch",
            Some(VIEWER),
            &[],
            Some(r#"{"ops": []}"#),
        )
        .await;
    assert_problem(&r, 403, "forbidden");
}

/// An order action whose fields are all optional (`/refund`, `/release-hold`) takes
/// no body, as a reservation's commit does (it was 415, "not JSON"); one with a
/// required field still refuses a missing body.
#[tokio::test]
async fn order_actions_with_only_optional_fields_take_no_body() {
    // The document says so: these two bodies are optional, every other one required.
    let doc: Value = serde_json::from_str(surge_api::openapi::document_json()).unwrap();
    let mut optional = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if let Some(body) = op.get("requestBody")
                && body["required"] != json!(true)
            {
                optional.push(format!("{method} {path}"));
            }
        }
    }
    optional.sort();
    assert_eq!(
        optional,
        [
            "post /v1/orders/{id}/refund",
            "post /v1/orders/{id}/release-hold"
        ]
    );
    let api = Api::new();
    api.define("A", 10).await;
    let order = json!({"order_no": "nb-1", "customer_id": "c",
        "lines": [{"sku": "A", "qty": 1, "unit_price": 700}]});
    let r = api.admin("POST", "/v1/orders", Some(order)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let id = r.json["id"].as_str().unwrap().to_string();
    let at = |action: &str| format!("/v1/orders/{id}/{action}");
    let r = api
        .admin("POST", &at("pay"), Some(json!({"amount": 700})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .admin("POST", &at("hold"), Some(json!({"reason": "review"})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    // No body: the hold released, with an empty note.
    let r = api.admin("POST", &at("release-hold"), None).await;
    assert_eq!(
        (r.status, &r.json["hold"]),
        (StatusCode::OK, &Value::Null),
        "{}",
        r.text
    );
    // A JSON Content-Type promises a JSON body: a blank one is malformed JSON (the
    // bad-input corpus holds it to 400), and nothing changes.
    let r = api
        .admin("POST", &at("hold"), Some(json!({"reason": "review"})))
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .call(
            "POST",
            &at("release-hold"),
            Some(ADMIN),
            &[("content-type", "application/json")],
            Some(""),
        )
        .await;
    assert_problem(&r, 400, "validation_failed");
    let r = api.admin("POST", &at("release-hold"), None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    // A required field: still refused without a body, and nothing changes.
    assert_problem(
        &api.admin("POST", &at("cancel"), None).await,
        415,
        "validation_failed",
    );
    assert_problem(
        &api.admin("PATCH", &format!("/v1/orders/{id}"), None).await,
        415,
        "validation_failed",
    );
    let r = api
        .admin("POST", &at("cancel"), Some(json!({"reason": "other"})))
        .await;
    assert_eq!(r.json["payment"]["refund_due_amount"], 700, "{}", r.text);
    let r = api.admin("POST", &at("refund"), None).await;
    assert_eq!(
        (r.status, r.json["payment"]["status"].as_str()),
        (StatusCode::OK, Some("refunded")),
        "{}",
        r.text
    );
    // A body that is not JSON is still refused.
    let r = api
        .call(
            "POST",
            &at("release-hold"),
            Some(ADMIN),
            &[("content-type", "text/plain")],
            Some("note"),
        )
        .await;
    assert_problem(&r, 415, "validation_failed");
}

/// A SKU id of `.` or `..` fits the id's bytes but no ordinary client could reach it
/// (URL parsers resolve it away): refused by name, and nothing is defined.
#[tokio::test]
async fn a_sku_named_like_a_path_step_is_refused() {
    let api = Api::new();
    for path in [
        "/v1/skus/..",
        "/v1/skus/.",
        "/v1/skus/%2E%2E",
        "/v1/skus/%2e",
    ] {
        let r = api.admin("PUT", path, Some(json!({"on_hand": 1}))).await;
        assert_problem(&r, 400, "validation_failed");
        assert_eq!(r.json["field"], "sku", "{path}: {}", r.text);
    }
    let list = api.admin("GET", "/v1/skus", None).await;
    assert_eq!(list.json["items"], json!([]), "{}", list.text);
    // Dots beside other bytes are ids like any other.
    api.define("..a", 1).await;
    api.define("a.b", 1).await;
    // A read of a SKU id that could not be one is an unknown SKU, on every SKU read
    // (the customer count answered 400 where the stock read answered 404).
    for path in [
        "/v1/skus/a%20b",
        "/v1/skus/a%20b/customers/c-1",
        "/v1/skus/%C3%A9/customers/c-1",
    ] {
        assert_problem(&api.admin("GET", path, None).await, 404, "unknown_sku");
    }
}

/// An op holding an array of arrays (valid JSON; a request body may not) fails
/// alone, naming its field: it made the whole batch 400, and the other ops were
/// refused with it.
#[tokio::test]
async fn a_batch_op_holding_an_array_of_arrays_fails_alone() {
    let api = Api::new();
    api.define("A", 10).await;
    let reserve = json!({"op": "reserve", "lines": [{"sku": "A", "qty": 1}]});
    let body = json!({"ops": [
        reserve.clone(),
        {"op": "reserve", "lines": [[1]]},
        {"op": "cancel", "id": "o1", "reason": "customer_request", "x": [[0]]},
        [[1]],
        {"op": "reserve", "lines": [{"sku": "A", "qty": 1}], "customer_id": [[]]},
        reserve,
    ]});
    let r = api.storefront_post("/v1/batch", &body).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let results = r.json["results"].as_array().unwrap();
    let fields: Vec<_> = results.iter().map(|r| r["field"].as_str()).collect();
    assert_eq!(
        fields,
        [
            None,
            Some("ops[1].lines[0]"),
            Some("ops[2].x"),
            Some("ops[3]"),
            Some("ops[4].customer_id"),
            None
        ],
        "{}",
        r.text
    );
    assert_eq!(
        (results[0]["status"].as_str(), results[5]["status"].as_str()),
        (Some("held"), Some("held"))
    );
    for refused in &results[1..5] {
        assert_eq!(refused["code"], "validation_failed", "{refused}");
    }
    let sku = api.admin("GET", "/v1/skus/A", None).await;
    assert_eq!(sku.json["reserved"], 2, "{}", sku.text);
}

/// `surge_engine_batch_len_max` counts commands: a `/v1/batch` of n ops is n
/// commands in the writer's batch (it counted the answers of a sync commit, so a
/// batch read 1, and without a sync nothing: here, with no log, it read 0).
#[tokio::test]
async fn a_batchs_ops_count_in_the_group_commits_length() {
    let api = Api::new();
    api.define("A", 100).await;
    let reserve = json!({"op": "reserve", "lines": [{"sku": "A", "qty": 1}]});
    let body = json!({"ops": vec![reserve; 7]});
    let r = api.admin("POST", "/v1/batch", Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let metrics = api.call("GET", "/metrics", None, &[], None).await.text;
    let gauge = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing: {metrics}"))
    };
    assert!(gauge("surge_engine_batch_len_max") >= 7, "{metrics}");
}

/// `/v1/batch` honours `Idempotency-Key` (it ignored it: a retried batch held the
/// stock again). The same key and body answer the same results, refusals and
/// Surge-Lsn included, and change nothing; another body under the key is 422 and
/// applies none of its ops, also ops past the first batch's count.
#[tokio::test]
async fn a_keyed_batch_replays_and_conflicts_as_a_whole() {
    let api = Api::new();
    api.define("A", 3).await;
    api.define("B", 10).await;
    let reserved = |sku: &'static str| {
        let api = &api;
        async move {
            api.admin("GET", &format!("/v1/skus/{sku}"), None)
                .await
                .json["reserved"]
                .clone()
        }
    };
    let batch = |key: String, body: Value| {
        let api = &api;
        async move {
            api.call(
                "POST",
                "/v1/batch",
                Some(STOREFRONT),
                &[("idempotency-key", &key)],
                Some(&body.to_string()),
            )
            .await
        }
    };
    let mixed = json!({"ops": [
        {"op": "reserve", "lines": [{"sku": "A", "qty": 2}]},
        {"op": "reserve", "lines": [{"sku": "A", "qty": 2}]},
        {"op": "create_order", "order_no": "kb-1", "customer_id": "c", "lines": [{"sku": "A", "qty": 1, "unit_price": 10}]},
        {"op": "fly"},
    ]});
    let first = batch("bk-1".into(), mixed.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.json["results"][0]["status"], "held", "{}", first.text);
    assert_eq!(first.json["results"][1]["code"], "insufficient_stock");
    assert_eq!(first.json["results"][2]["status"], "reserved");
    api.admin(
        "POST",
        "/v1/skus/A/adjustments",
        Some(json!({"delta": 5, "reason": "inbound"})),
    )
    .await;
    // With stock back, a new batch would now hold op 1: the repeat answers as first.
    let again = batch("bk-1".into(), mixed.clone()).await;
    assert_eq!((again.status, &again.text), (first.status, &first.text));
    assert_eq!(
        again.headers.get("surge-lsn"),
        first.headers.get("surge-lsn")
    );
    assert_eq!(reserved("A").await, 3);

    // The one-pass path of plain reserve ops is keyed the same way.
    let one = json!({"op": "reserve", "lines": [{"sku": "B", "qty": 1}]});
    let two = json!({"ops": [one.clone(), one.clone()]});
    let first = batch("bk-2".into(), two.clone()).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let again = batch("bk-2".into(), two).await;
    assert_eq!((again.status, &again.text), (first.status, &first.text));
    assert_eq!(reserved("B").await, 2);

    // Another body under a used key: 422, nothing applied (not even a third op,
    // whose own key was never used).
    let three = json!({"ops": [one.clone(), one.clone(), one.clone()]});
    let conflict = batch("bk-2".into(), three).await;
    assert_problem(&conflict, 422, "idempotency_conflict");
    assert!(conflict.text.contains("bk-2"), "{}", conflict.text);
    let conflict = batch("bk-1".into(), json!({"ops": [one]})).await;
    assert_problem(&conflict, 422, "idempotency_conflict");
    assert_eq!(reserved("B").await, 2);

    // Ops the API refused take no key: another body under the key still conflicts,
    // wherever its ops stand.
    let refused_first = json!({"ops": [{"op": "fly"}, one.clone()]});
    let first = batch("bk-3".into(), refused_first).await;
    assert_eq!(first.json["results"][1]["status"], "held", "{}", first.text);
    assert_eq!(reserved("B").await, 3);
    let moved =
        json!({"ops": [{"op": "reserve", "lines": [{"sku": "B", "qty": 5}]}, {"op": "fly"}]});
    let conflict = batch("bk-3".into(), moved).await;
    assert_problem(&conflict, 422, "idempotency_conflict");
    assert_eq!(reserved("B").await, 3);

    // A batch's key and a single request's are one key: either way round, 422.
    let single = |key: &'static str| {
        let api = &api;
        async move {
            api.call(
                "POST",
                "/v1/reservations",
                Some(STOREFRONT),
                &[("idempotency-key", key)],
                Some(&json!({"lines": [{"sku": "B", "qty": 1}]}).to_string()),
            )
            .await
        }
    };
    assert_problem(&single("bk-2").await, 422, "idempotency_conflict");
    let held = single("bk-4").await;
    assert_eq!(held.status, 201, "{}", held.text);
    assert_eq!(reserved("B").await, 4);
    let conflict = batch("bk-4".into(), json!({"ops": [one.clone()]})).await;
    assert_problem(&conflict, 422, "idempotency_conflict");
    assert_eq!(reserved("B").await, 4);

    // The key leaves room for the op's index (`·` and the digits of the largest).
    let ops_max = ApiConfig::default().batch_ops_max;
    let len_max = 128 - 2 - (ops_max - 1).to_string().len();
    assert_eq!(
        surge_api::extract::Idem::batch_key_len_max(ops_max),
        len_max
    );
    let long = batch("k".repeat(len_max + 1), json!({"ops": []})).await;
    assert_problem(&long, 400, "validation_failed");
    assert_eq!(long.json["field"], "Idempotency-Key");
    let fits = batch("k".repeat(len_max), json!({"ops": []})).await;
    assert_eq!(fits.status, 200, "{}", fits.text);
}

#[tokio::test]
async fn event_feed_pages() {
    let api = Api::new();
    api.define("A", 2).await;
    api.admin(
        "POST",
        "/v1/reservations",
        Some(json!({"lines": [{"sku": "A", "qty": 2}]})),
    )
    .await;
    let r = api.call("GET", "/v1/events", Some(VIEWER), &[], None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    let events = r.json["events"].as_array().unwrap();
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert!(
        types.contains(&"sku.defined")
            && types.contains(&"reservation.held")
            && types.contains(&"stock.out"),
        "{types:?}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(r.json["next"], *seqs.last().unwrap());
    assert_eq!(
        events
            .iter()
            .find(|e| e["type"] == "reservation.held")
            .unwrap()["lines"][0]["sku"],
        "A"
    );
    let r = api
        .admin(
            "GET",
            &format!("/v1/events?after={}&limit=1", seqs[0]),
            None,
        )
        .await;
    assert_eq!(r.json["events"].as_array().unwrap().len(), 1);
    assert_eq!(r.json["events"][0]["seq"], seqs[1]);
    let r = api
        .admin(
            "GET",
            &format!("/v1/events?after={}", seqs.last().unwrap()),
            None,
        )
        .await;
    assert_eq!(r.json["events"], json!([]));
    assert_problem(
        &api.admin("GET", "/v1/events?after=-1", None).await,
        400,
        "validation_failed",
    );
    // A seq is an int64, as the document declares it: one past that is refused,
    // not echoed back as `next`.
    let r = api
        .admin("GET", &format!("/v1/events?after={}", i64::MAX), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["next"], i64::MAX);
    let r = api
        .admin("GET", &format!("/v1/events?after={}", u64::MAX), None)
        .await;
    assert_problem(&r, 400, "validation_failed");
    assert_eq!(r.json["field"], "after");
    assert_problem(
        &api.admin("GET", "/v1/events?limit=100000", None).await,
        400,
        "validation_failed",
    );
    assert_problem(
        &api.call("GET", "/v1/events", Some(STOREFRONT), &[], None)
            .await,
        403,
        "forbidden",
    );
}

/// Every answer is counted under the template its path routes to, whoever made it:
/// a handler, the method-not-allowed fallback, or no route at all.
#[tokio::test]
async fn requests_are_counted_by_route_template() {
    let api = Api::new();
    for (method, path, status) in [
        ("GET", "/v1/reservations/r999", 401),
        ("GET", "/v1/orders/o7/nothing-here", 404),
        ("DELETE", "/v1/orders", 405),
        ("GET", "/v1/skus/S1", 401),
    ] {
        let r = api.call(method, path, None, &[], None).await;
        assert_eq!(r.status, status, "{method} {path}: {}", r.text);
    }
    let r = api
        .call("GET", "/v1/reservations/r999", Some(ADMIN), &[], None)
        .await;
    assert_eq!(r.status, 404, "{}", r.text);
    let metrics = api.call("GET", "/metrics", None, &[], None).await.text;
    for line in [
        "surge_http_requests_total{route=\"/v1/reservations/{id}\",status=\"401\"} 1",
        "surge_http_requests_total{route=\"/v1/reservations/{id}\",status=\"404\"} 1",
        "surge_http_requests_total{route=\"unmatched\",status=\"404\"} 1",
        "surge_http_requests_total{route=\"/v1/orders\",status=\"405\"} 1",
        "surge_http_requests_total{route=\"/v1/skus/{sku}\",status=\"401\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from /metrics:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn operations_endpoints() {
    let api = Api::new();
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/"] {
        let r = api.call("GET", path, None, &[], None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
    }
    let metrics = api.call("GET", "/metrics", None, &[], None).await.text;
    for name in [
        "surge_http_requests_total{route=\"/healthz\",status=\"200\"}",
        "surge_http_request_duration_seconds_bucket",
        "surge_engine_queue_depth",
        "surge_engine_batch_len_max",
        "surge_wal_bytes_total",
        "surge_wal_flush_latency_seconds_sum",
        "surge_snapshot_age_seconds",
        "surge_engine_overloaded_total",
        "surge_idempotency_window_seconds",
        "surge_idempotency_keys",
        "surge_idempotency_bytes",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let doc = api.call("GET", "/openapi.json", None, &[], None).await.json;
    assert!(doc["paths"]["/v1/orders/{id}/cancel"]["post"].is_object());
    assert!(
        api.call("GET", "/", None, &[], None)
            .await
            .text
            .contains("<html")
    );
    let r = api.admin("POST", "/v1/admin/snapshot", None).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.json["lsn"].is_u64());
    assert_problem(
        &api.call("POST", "/v1/admin/snapshot", Some(OPERATOR), &[], None)
            .await,
        403,
        "forbidden",
    );
    assert_problem(
        &api.call("GET", "/v2/nothing", None, &[], None).await,
        404,
        "not_found",
    );
    assert_problem(
        &api.call("DELETE", "/v1/orders", Some(ADMIN), &[], None)
            .await,
        405,
        "method_not_allowed",
    );
}

/// Each role against each kind of endpoint: allowed, 401 or 403 (never a 5xx).
#[tokio::test]
async fn role_matrix() {
    let api = Api::new();
    api.define("A", 1000).await;
    // (method, path, body, roles allowed among [storefront, operator, admin, viewer])
    let cases: &[(&str, &str, &str, [bool; 4])] = &[
        (
            "PUT",
            "/v1/skus/A",
            r#"{"on_hand": 1000}"#,
            [false, false, true, false],
        ),
        ("GET", "/v1/skus/A", "", [true, true, true, true]),
        ("GET", "/v1/skus", "", [true, true, true, true]),
        (
            "POST",
            "/v1/skus/A/adjustments",
            r#"{"delta": 1, "reason": "inbound"}"#,
            [false, true, true, false],
        ),
        (
            "POST",
            "/v1/reservations",
            r#"{"lines": [{"sku": "A", "qty": 1}]}"#,
            [true, true, true, false],
        ),
        ("GET", "/v1/reservations/r1", "", [true, true, true, true]),
        (
            "POST",
            "/v1/orders/o1/transitions",
            r#"{"to": "picking"}"#,
            [false, true, true, false],
        ),
        (
            "POST",
            "/v1/orders/o1/return",
            r#"{"restock": false}"#,
            [false, true, true, false],
        ),
        (
            "POST",
            "/v1/orders/o1/refund",
            r#"{}"#,
            [false, true, true, false],
        ),
        ("GET", "/v1/orders/o1", "", [true, true, true, true]),
        ("GET", "/v1/orders", "", [false, true, true, true]),
        (
            "GET",
            "/v1/orders/export.csv",
            "",
            [false, true, true, true],
        ),
        ("GET", "/v1/stats", "", [false, true, true, true]),
        ("GET", "/v1/events", "", [false, true, true, true]),
        (
            "POST",
            "/v1/batch",
            r#"{"ops": []}"#,
            [true, true, true, false],
        ),
        (
            "POST",
            "/v1/admin/snapshot",
            "",
            [false, false, true, false],
        ),
    ];
    new_order(&api, "m-1", 1).await;
    for (method, path, body, allowed) in cases {
        let body = (!body.is_empty()).then_some(*body);
        for (token, ok) in [STOREFRONT, OPERATOR, ADMIN, VIEWER].iter().zip(allowed) {
            let r = api.call(method, path, Some(token), &[], body).await;
            if *ok {
                assert!(
                    r.status.as_u16() != 401 && r.status.as_u16() != 403,
                    "{method} {path} as {token}: {}",
                    r.text
                );
            } else {
                assert_problem(&r, 403, "forbidden");
                // The role is judged before the `X-Actor` header: a caller without
                // it learns only that, not how its header is wrong.
                let r = api
                    .call(method, path, Some(token), &[("x-actor", "two words")], body)
                    .await;
                assert_problem(&r, 403, "forbidden");
            }
            assert!(!r.status.is_server_error(), "{method} {path}: {}", r.text);
        }
        let r = api.call(method, path, None, &[], body).await;
        assert_problem(&r, 401, "unauthorized");
        let r = api.call(method, path, Some("wrong"), &[], body).await;
        assert_problem(&r, 401, "unauthorized");
    }
}

/// Bad input: the expected 4xx, never a 5xx, and the state digest unchanged.
#[tokio::test]
async fn bad_input_changes_nothing() {
    let api = Api::with_config(ApiConfig {
        body_limit_bytes: 4096,
        ..ApiConfig::default()
    });
    api.define("A", 10).await;
    new_order(&api, "keep", 1).await;
    let before = api.digest().await;
    let huge_string = format!(
        r#"{{"lines": [{{"sku": "{}", "qty": 1}}]}}"#,
        "S".repeat(3000)
    );
    let huge_body = format!(
        r#"{{"lines": [{{"sku": "A", "qty": 1}}], "ttl_ms": 1000{}}}"#,
        " ".repeat(5000)
    );
    let many_lines = format!(
        r#"{{"lines": [{}]}}"#,
        vec![r#"{"sku": "A", "qty": 1}"#; 65].join(",")
    );
    let json = "application/json";
    // (path, content type, body, status, field)
    let cases: Vec<(&str, &str, String, u16, Option<&str>)> = vec![
        ("/v1/reservations", json, "{".into(), 400, None),
        ("/v1/reservations", json, "".into(), 400, None),
        ("/v1/reservations", json, "[]".into(), 400, None),
        ("/v1/reservations", json, "null".into(), 400, None),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "A", "qty": 1}]} trailing"#.into(), 400, None),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "A", "qty": 0}]}"#.into(), 400, Some("lines[0].qty")),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "A", "qty": -1}]}"#.into(), 400, Some("lines[0].qty")),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "A", "qty": 1.5}]}"#.into(), 400, Some("lines[0].qty")),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "A", "qty": 18446744073709551616}]}"#.into(), 400, Some("lines[0].qty")),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "A", "qty": 1e30}]}"#.into(), 400, Some("lines[0].qty")),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "A", "qty": "1"}]}"#.into(), 400, Some("lines[0].qty")),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "A", "qty": 1, "qty": 2}]}"#.into(), 400, Some("lines[0].qty")),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "A", "qty": 1}], "color": "red"}"#.into(), 400, Some("color")),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "A"}]}"#.into(), 400, Some("lines[0].qty")),
        ("/v1/reservations", json, r#"{"lines": []}"#.into(), 400, Some("lines")),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "A", "qty": 1}], "ttl_ms": 0}"#.into(), 400, Some("ttl_ms")),
        ("/v1/reservations", json, many_lines, 400, Some("lines")),
        ("/v1/reservations", json, huge_string, 400, Some("lines[0].sku")),
        ("/v1/reservations", json, huge_body, 413, None),
        ("/v1/reservations", "text/plain", r#"{"lines": [{"sku": "A", "qty": 1}]}"#.into(), 415, None),
        ("/v1/reservations", "", r#"{"lines": [{"sku": "A", "qty": 1}]}"#.into(), 415, None),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "NOPE", "qty": 1}]}"#.into(), 404, None),
        ("/v1/reservations", json, r#"{"lines": [{"sku": "A", "qty": 11}]}"#.into(), 409, None),
        ("/v1/orders", json, r#"{"order_no": "", "customer_id": "c", "lines": [{"sku": "A", "qty": 1, "unit_price": 1}]}"#.into(), 400, Some("order_no")),
        ("/v1/orders", json, r#"{"order_no": "keep", "customer_id": "c", "lines": [{"sku": "A", "qty": 1, "unit_price": 1}]}"#.into(), 409, None),
        ("/v1/orders", json, r#"{"order_no": "x", "customer_id": "c", "lines": [{"sku": "A", "qty": 1, "unit_price": -5}]}"#.into(), 400, Some("lines[0].unit_price")),
        ("/v1/orders/o1/pay", json, r#"{"amount": 1}"#.into(), 400, None),
        ("/v1/orders/o1/pay", json, r#"{"amount": "lots"}"#.into(), 400, Some("amount")),
        ("/v1/orders/o1/cancel", json, r#"{"reason": "bored"}"#.into(), 400, Some("reason")),
        ("/v1/orders/o1/cancel", json, r#"{}"#.into(), 400, Some("reason")),
        ("/v1/orders/o1/transitions", json, r#"{"to": "shipped"}"#.into(), 409, None),
        ("/v1/orders/o1/return", json, r#"{"restock": "yes"}"#.into(), 400, Some("restock")),
        ("/v1/orders/o1/refund", json, r#"{"refund_ref": "x"}"#.into(), 409, None),
        ("/v1/orders/o9/refund", json, r#"{}"#.into(), 404, None),
        ("/v1/skus/A/adjustments", json, r#"{"delta": 0, "reason": "inbound"}"#.into(), 400, Some("delta")),
        ("/v1/skus/A/adjustments", json, r#"{"delta": -100, "reason": "correction"}"#.into(), 409, None),
        ("/v1/skus/A/adjustments", json, r#"{"delta": 9223372036854775808, "reason": "inbound"}"#.into(), 400, Some("delta")),
    ];
    for (path, content_type, body, status, field) in &cases {
        let headers: Vec<(&str, &str)> = if content_type.is_empty() {
            vec![]
        } else {
            vec![("content-type", content_type)]
        };
        let mut request = Request::builder()
            .method("POST")
            .uri(*path)
            .header("authorization", format!("Bearer {ADMIN}"));
        for (k, v) in &headers {
            request = request.header(*k, *v);
        }
        let response = api
            .router
            .clone()
            .oneshot(request.body(Body::from(body.clone())).unwrap())
            .await
            .unwrap();
        let got = response.status().as_u16();
        let text =
            String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes())
                .to_string();
        assert_eq!(got, *status, "POST {path} {body:.80}: {text}");
        let problem: Value = serde_json::from_str(&text).unwrap();
        if let Some(field) = field {
            assert_eq!(problem["field"], *field, "POST {path} {body:.80}: {text}");
        }
    }
    let r = api
        .call(
            "GET",
            "/v1/orders",
            Some(ADMIN),
            &[("x-actor", "has space")],
            None,
        )
        .await;
    assert_problem(&r, 400, "validation_failed");
    let long_actor = "a".repeat(80);
    let r = api
        .call(
            "POST",
            "/v1/reservations",
            Some(ADMIN),
            &[("x-actor", &long_actor)],
            Some(r#"{"lines": [{"sku": "A", "qty": 1}]}"#),
        )
        .await;
    assert_problem(&r, 400, "validation_failed");
    assert_eq!(api.digest().await, before, "bad input changed the state");
}

/// The shape of a Prometheus text exposition, family by family (as its `# TYPE`
/// lines name them): the type, the label names of its samples (`le` apart) and,
/// for a histogram, its bucket bounds in order.
fn exposition_shape(text: &str) -> BTreeMap<String, (String, BTreeSet<String>, Vec<String>)> {
    let mut families: BTreeMap<String, (String, BTreeSet<String>, Vec<String>)> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            families.insert(name.into(), (kind.into(), BTreeSet::new(), Vec::new()));
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "sample value: {line}");
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (name, labels.strip_suffix('}').unwrap()),
            None => (series, ""),
        };
        let family = if families.contains_key(name) {
            name
        } else {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| families[*f].0 == "histogram")
                })
                .unwrap_or_else(|| panic!("sample of no declared family: {line}"))
        };
        let (_, names, bounds) = families.get_mut(family).unwrap();
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once("=\"").unwrap();
            if key == "le" {
                let bound = value.trim_end_matches('"').to_string();
                if !bounds.contains(&bound) {
                    bounds.push(bound);
                }
            } else {
                names.insert(key.to_string());
            }
        }
    }
    families
}

/// `/metrics` is part of the contract: every family keeps its name, type, label
/// names and histogram buckets, whatever renders it.
#[tokio::test]
async fn metrics_exposition_keeps_its_names_types_labels_and_buckets() {
    let api = Api::new();
    api.call("GET", "/healthz", None, &[], None).await;
    let r = api.call("GET", "/metrics", None, &[], None).await;
    // The Prometheus text format 0.0.4, not OpenMetrics (no `# EOF`, counters named
    // as they are).
    assert_eq!(
        r.headers.get("content-type").unwrap(),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = r.text;
    assert!(!text.contains("# EOF"), "{text}");
    const HTTP_BUCKETS: &[&str] = &[
        "0.00025", "0.0005", "0.001", "0.002", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
        "0.5", "1", "2.5", "10", "+Inf",
    ];
    const ENGINE_BUCKETS: &[&str] = &[
        "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
        "0.05", "0.075", "0.1", "+Inf",
    ];
    #[rustfmt::skip]
    let expected: &[(&str, &str, &[&str], &[&str])] = &[
        ("surge_engine_batch_len_avg", "gauge", &[], &[]),
        ("surge_engine_batch_len_last", "gauge", &[], &[]),
        ("surge_engine_batch_len_max", "gauge", &[], &[]),
        ("surge_engine_batches_total", "counter", &[], &[]),
        ("surge_engine_commands_applied_total", "counter", &[], &[]),
        ("surge_engine_commands_rejected_total", "counter", &[], &[]),
        ("surge_engine_commands_abandoned_total", "counter", &[], &[]),
        ("surge_engine_overloaded_total", "counter", &[], &[]),
        ("surge_engine_queue_capacity", "gauge", &[], &[]),
        ("surge_engine_queue_depth", "gauge", &[], &[]),
        ("surge_engine_records_logged_total", "counter", &[], &[]),
        ("surge_engine_writes_refused", "gauge", &[], &[]),
        ("surge_events_last_seq", "gauge", &[], &[]),
        ("surge_http_request_duration_seconds", "histogram", &["route"], HTTP_BUCKETS),
        ("surge_http_requests_total", "counter", &["route", "status"], &[]),
        ("surge_idempotency_at_budget", "gauge", &[], &[]),
        ("surge_idempotency_budget_bytes", "gauge", &[], &[]),
        ("surge_idempotency_bytes", "gauge", &[], &[]),
        ("surge_idempotency_keys", "gauge", &[], &[]),
        ("surge_idempotency_keys_max", "gauge", &[], &[]),
        ("surge_idempotency_window_below_floor", "gauge", &[], &[]),
        ("surge_idempotency_window_configured_seconds", "gauge", &[], &[]),
        ("surge_idempotency_window_floor_seconds", "gauge", &[], &[]),
        ("surge_idempotency_window_seconds", "gauge", &[], &[]),
        ("surge_reads_during_snapshot_total", "counter", &[], &[]),
        ("surge_ready", "gauge", &[], &[]),
        ("surge_memory_pretouched_bytes", "gauge", &[], &[]),
        ("surge_replication_lag_lsn", "gauge", &[], &[]),
        ("surge_replication_lag_seconds", "gauge", &[], &[]),
        ("surge_replication_publish_seconds", "histogram", &[], ENGINE_BUCKETS),
        ("surge_replication_published_lsn", "gauge", &[], &[]),
        ("surge_replication_role", "gauge", &["role"], &[]),
        ("surge_snapshot_age_seconds", "gauge", &[], &[]),
        ("surge_snapshot_bytes_total", "counter", &[], &[]),
        ("surge_snapshot_lsn", "gauge", &[], &[]),
        ("surge_snapshots_total", "counter", &[], &[]),
        ("surge_snapshots_encoded_by_writer_total", "counter", &[], &[]),
        ("surge_stock_reads_behind_total", "counter", &[], &[]),
        ("surge_stock_reads_unchanged_total", "counter", &[], &[]),
        ("surge_stock_reads_waited_total", "counter", &[], &[]),
        ("surge_wal_bytes_total", "counter", &[], &[]),
        ("surge_wal_commit_seconds", "histogram", &[], ENGINE_BUCKETS),
        ("surge_wal_durable_lsn", "gauge", &[], &[]),
        ("surge_wal_flush_latency_seconds_last", "gauge", &[], &[]),
        ("surge_wal_flush_latency_seconds_sum", "counter", &[], &[]),
        ("surge_wal_flushes_total", "counter", &[], &[]),
        ("surge_writer_iteration_seconds", "histogram", &[], ENGINE_BUCKETS),
        ("surge_writer_iteration_cpu_seconds", "histogram", &[], ENGINE_BUCKETS),
        ("surge_writer_nice", "gauge", &[], &[]),
    ];
    let expected: BTreeMap<String, (String, BTreeSet<String>, Vec<String>)> = expected
        .iter()
        .map(|&(name, kind, labels, bounds)| {
            let labels = labels.iter().map(|l| l.to_string()).collect();
            let bounds = bounds.iter().map(|b| b.to_string()).collect();
            (name.to_string(), (kind.to_string(), labels, bounds))
        })
        .collect();
    assert_eq!(exposition_shape(&text), expected, "{text}");
}

/// `GET /v1/skus/{sku}` is answered in front of the router when it is plain
/// (`front::Front`). The same read in forms the router takes (an empty query
/// string, the id percent-encoded) must get the same answer, byte for byte, for
/// every caller: each role, none, an unknown token, a bad `X-Actor`; and for SKUs
/// known, unknown, with a sale window, and with a name that needs escaping.
#[tokio::test]
async fn the_stock_read_in_front_of_the_router_answers_as_the_route_does() {
    // The stock board is the follower's, and `none` keeps no follower.
    let dir = tempfile::tempdir().unwrap();
    let api = Api::with_configs(
        ApiConfig::default(),
        EngineConfig {
            durability: Durability::Sync,
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        },
    );
    api.define("S1", 7).await;
    let r = api
        .admin(
            "PUT",
            "/v1/skus/ODD-1.x_y:z",
            Some(json!({"on_hand": 3, "name": "quote \" slash \\ é ✓"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .admin(
            "PUT",
            "/v1/skus/SALE",
            Some(json!({"on_hand": 5, "sale_starts_at": "2030-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let r = api
        .call(
            "POST",
            "/v1/reservations",
            Some(STOREFRONT),
            &[],
            Some(r#"{"lines":[{"sku":"S1","qty":2}]}"#),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    // Through the follower: it has applied every write once this returns, and it
    // publishes the stock board before answering, so the board is current.
    api.engine
        .query(Query::GetSku { sku: "S1".into() })
        .unwrap()
        .await
        .unwrap()
        .unwrap();
    let percent_encoded = |sku: &str| sku.bytes().map(|b| format!("%{b:02X}")).collect::<String>();
    // (token, extra headers) of each caller.
    type Caller<'a> = (Option<&'a str>, &'a [(&'a str, &'a str)]);
    let callers: [Caller; 7] = [
        (Some(ADMIN), &[]),
        (Some(OPERATOR), &[]),
        (Some(STOREFRONT), &[("x-actor", "till-7")]),
        (Some(VIEWER), &[]),
        (None, &[]),
        (Some("no-such-token"), &[]),
        (Some(ADMIN), &[("x-actor", "two words")]),
    ];
    let mut answered_200 = 0;
    for sku in ["S1", "ODD-1.x_y:z", "SALE", "NOPE"] {
        for (token, headers) in callers {
            let hot = api
                .call("GET", &format!("/v1/skus/{sku}"), token, headers, None)
                .await;
            for routed_path in [
                format!("/v1/skus/{sku}?"),
                format!("/v1/skus/{}", percent_encoded(sku)),
            ] {
                let routed = api.call("GET", &routed_path, token, headers, None).await;
                let what = format!("{sku} as {token:?} {headers:?}, beside {routed_path}");
                assert_eq!(hot.status, routed.status, "{what}");
                assert_eq!(hot.text, routed.text, "{what}");
                assert_eq!(
                    hot.headers.get("content-type"),
                    routed.headers.get("content-type"),
                    "{what}"
                );
            }
            if hot.status == StatusCode::OK {
                answered_200 += 1;
                assert_eq!(hot.json["sku"], sku);
            }
        }
    }
    // Three known SKUs, four callers the route admits.
    assert_eq!(answered_200, 3 * 4);
    let s1 = api
        .call("GET", "/v1/skus/S1", Some(VIEWER), &[], None)
        .await;
    assert_eq!(
        (s1.json["on_hand"].as_u64(), s1.json["reserved"].as_u64()),
        (Some(7), Some(2))
    );
}

/// Exports and event streams each have a limit of how many run at once
/// (`EXPORTS_AT_ONCE_MAX`, `EVENT_STREAMS_MAX`): one more is 503 `overloaded` with
/// `Retry-After`, and a slot comes back once the body that holds it is done with
/// (an export's is held until its last bytes are taken: a slow reader keeps it).
#[tokio::test]
async fn exports_and_event_streams_are_limited_to_so_many_at_once() {
    use surge_api::state::{EVENT_STREAMS_MAX, EXPORTS_AT_ONCE_MAX};
    let api = Api::new();
    api.define("A", 10).await;
    let open = |path: &'static str, accept: &'static str| {
        let api = &api;
        async move { api.open_as_viewer(path, &[("accept", accept)]).await }
    };
    for (path, max) in [
        ("/v1/orders/export.csv", EXPORTS_AT_ONCE_MAX),
        ("/v1/events", EVENT_STREAMS_MAX),
    ] {
        let accept = if path == "/v1/events" {
            "text/event-stream"
        } else {
            "*/*"
        };
        // Answers whose bodies nobody reads: each holds its slot.
        let mut held = Vec::new();
        for _ in 0..max {
            let response = open(path, accept).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            held.push(response);
        }
        let refused = open(path, accept).await;
        assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(refused.headers()["retry-after"], "1");
        let body = refused.into_body().collect().await.unwrap().to_bytes();
        let problem: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "overloaded", "{problem}");
        // One body read to its end (an export) or dropped (a stream): its slot is back.
        let first = held.remove(0);
        if path == "/v1/events" {
            drop(first);
        } else {
            first.into_body().collect().await.unwrap();
        }
        let again = open(path, accept).await;
        assert_eq!(again.status(), StatusCode::OK, "{path}");
        drop(again);
        drop(held);
    }
    // The Excel export shares the export slots.
    let mut held = Vec::new();
    for _ in 0..EXPORTS_AT_ONCE_MAX {
        held.push(open("/v1/orders/export.csv", "*/*").await);
    }
    let refused = open("/v1/orders/export.xlsx", "*/*").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// A single keyed request refused as malformed by the engine keeps its key free:
/// the corrected request goes through under it. A batch's op holding the batch's
/// key keeps it whatever its answer: another body under that key is 422, with
/// nothing applied, also when the batch's first op was refused as malformed.
#[tokio::test]
async fn a_malformed_single_request_keeps_its_key_a_batch_op_does_not() {
    let api = Api::new();
    api.define("A", 10).await;
    let keyed = |path: &'static str, key: &'static str, body: Value| {
        let api = &api;
        async move {
            api.call(
                "POST",
                path,
                Some(STOREFRONT),
                &[("idempotency-key", key)],
                Some(&body.to_string()),
            )
            .await
        }
    };
    let hold = |qty: u64| json!({"lines": [{"sku": "A", "qty": qty}]});
    let r = keyed("/v1/reservations", "K1", hold(0)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let r = keyed("/v1/reservations", "K1", hold(1)).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    let first = json!({"ops": [
        {"op": "reserve", "lines": [{"sku": "A", "qty": 0}]},
        {"op": "reserve", "lines": [{"sku": "A", "qty": 1}]},
    ]});
    let r = keyed("/v1/batch", "K2", first.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["results"][0]["status"], 400, "{}", r.text);
    assert_eq!(r.json["results"][1]["status"], "held", "{}", r.text);
    let before = api.digest().await;
    let other = json!({"ops": [{"op": "reserve", "lines": [{"sku": "A", "qty": 5}]}]});
    let r = keyed("/v1/batch", "K2", other).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = keyed("/v1/reservations", "K2", hold(5)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(
        api.digest().await,
        before,
        "a conflicting request changed something"
    );
    // The same batch again answers as it did, changing nothing.
    let r = keyed("/v1/batch", "K2", first).await;
    assert_eq!(r.json["results"][0]["status"], 400, "{}", r.text);
    assert_eq!(r.json["results"][1]["status"], "held", "{}", r.text);
    assert_eq!(api.digest().await, before);

    // From a review: a first op over a size limit (a SKU id of 65 bytes) took the
    // batch's own key, and the engine refused it without logging it, so the key was
    // never remembered and a single request under it was applied. Refused before
    // the engine, it leaves the key to the next op.
    let long_sku = "x".repeat(65);
    let oversized = json!({"ops": [
        {"op": "reserve", "lines": [{"sku": long_sku, "qty": 1}]},
        {"op": "reserve", "lines": [{"sku": "A", "qty": 1}]},
    ]});
    let r = keyed("/v1/batch", "K3", oversized.clone()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["results"][0]["status"], 400, "{}", r.text);
    assert_eq!(
        r.json["results"][0]["field"], "ops[0].lines[0].sku",
        "{}",
        r.text
    );
    assert_eq!(r.json["results"][1]["status"], "held", "{}", r.text);
    let before = api.digest().await;
    let r = keyed("/v1/reservations", "K3", hold(1)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = keyed("/v1/batch", "K3", oversized).await;
    assert_eq!(r.json["results"][0]["status"], 400, "{}", r.text);
    assert_eq!(r.json["results"][1]["status"], "held", "{}", r.text);
    assert_eq!(
        api.digest().await,
        before,
        "a replay or a conflict changed something"
    );
}

/// From an outside probe: a stream that resumed from a `Last-Event-ID` older than
/// the feed's window (or fell that far behind) went on from the oldest event kept
/// and said nothing, so downstream lost events without knowing; the JSON page said
/// `truncated`. Now the stream says it first (`event: truncated`, no `id:`), then
/// goes on; a stream that missed nothing gets no such event.
#[tokio::test]
async fn a_stream_that_missed_events_is_told_before_it_goes_on() {
    let api = Api::with_configs(
        ApiConfig::default(),
        EngineConfig {
            durability: Durability::None,
            events_kept: 16,
            ..Default::default()
        },
    );
    api.define("A", 100).await;
    for _ in 0..40 {
        let r = api
            .call(
                "POST",
                "/v1/reservations",
                Some(STOREFRONT),
                &[],
                Some(r#"{"lines":[{"sku":"A","qty":1}]}"#),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let page = api
        .call("GET", "/v1/events?after=0&limit=1", Some(VIEWER), &[], None)
        .await;
    assert_eq!(page.json["truncated"], true, "{}", page.text);
    let oldest = page.json["events"][0]["seq"].as_u64().unwrap();
    let last = api
        .call(
            "GET",
            "/v1/events?after=0&limit=1000",
            Some(VIEWER),
            &[],
            None,
        )
        .await
        .json["next"]
        .as_u64()
        .unwrap();
    // The first two SSE events of a stream resuming after `from`.
    let first_two = |from: u64| {
        let api = &api;
        async move {
            let from = from.to_string();
            let headers = [("accept", "text/event-stream"), ("last-event-id", &from)];
            let mut body = api.open_as_viewer("/v1/events", &headers).await.into_body();
            let mut text = String::new();
            while text.matches("\n\n").count() < 2 {
                let frame = body.frame().await.expect("the stream goes on").unwrap();
                if let Some(data) = frame.data_ref() {
                    text.push_str(std::str::from_utf8(data).unwrap());
                }
            }
            text.split("\n\n")
                .take(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        }
    };
    let told = first_two(1).await;
    assert!(told[0].starts_with("event: truncated\n"), "{told:?}");
    assert!(!told[0].contains("id:"), "{told:?}");
    let data: Value = serde_json::from_str(told[0].split("data: ").nth(1).unwrap().trim()).unwrap();
    assert_eq!(
        data,
        json!({"type": "truncated", "after": 1, "resumes_at": oldest})
    );
    assert!(told[1].contains(&format!("id: {oldest}\n")), "{told:?}");
    // Resuming inside the window: events only.
    let events = first_two(oldest).await;
    assert!(
        events
            .iter()
            .all(|e| e.contains("id: ") && !e.contains("truncated")),
        "{events:?}"
    );
    assert!(oldest < last);
}

/// SKU `A` with 10 on hand, as a command for a hand-stepped core.
fn define_a() -> surge_engine::Command {
    surge_engine::Command::DefineSku {
        sku: "A".into(),
        name: String::new(),
        on_hand: 10,
        low_stock_threshold: 0,
    }
}

/// The command behind `ticket` was answered, and applied.
fn assert_applied(ticket: &mut surge_engine::Ticket<surge_engine::Acked>) {
    let acked = ticket.try_wait().expect("answered").expect("acked");
    assert!(acked.outcome.is_ok(), "{:?}", acked.outcome);
}

/// Polls `call` once; it must not have answered yet.
async fn poll_once_pending(call: std::pin::Pin<&mut impl std::future::Future<Output = Reply>>) {
    let mut call = call;
    std::future::poll_fn(|cx| {
        assert!(call.as_mut().poll(cx).is_pending(), "answered too soon");
        std::task::Poll::Ready(())
    })
    .await;
}

/// Polls `call` and steps `core` until the writer takes the request's write.
async fn until_taken(
    mut call: std::pin::Pin<&mut impl std::future::Future<Output = Reply>>,
    core: &mut surge_engine::Core<surge_engine::wal::SimStorage>,
) {
    for _ in 0..100 {
        poll_once_pending(call.as_mut()).await;
        if core.step(0) > 0 {
            return;
        }
    }
    panic!("the write never reached the queue");
}

/// A full queue refuses a `/v1/batch` whole, as a single write: 503 `overloaded`
/// with `Retry-After`, nothing done (it was a 200 whose every op carried the 503,
/// read by clients as an answer).
#[tokio::test]
async fn a_batch_the_full_queue_cannot_take_is_refused_whole() {
    let config = EngineConfig {
        durability: Durability::Sync,
        follower: false,
        snapshot_every_records: 0,
        queue_len_max: 1,
        ..Default::default()
    };
    let (mut core, _) =
        Engine::open_core(surge_engine::wal::SimStorage::new(), config).expect("open");
    let api = Api::with_engine(ApiConfig::default(), core.handle().clone());
    // The one place in the queue, taken until the writer steps.
    let mut defined = core.handle().submit(define_a(), None).expect("queued");
    let batch = json!({"ops": [
        {"op": "reserve", "lines": [{"sku": "A", "qty": 1}]},
        {"op": "reserve", "lines": [{"sku": "A", "qty": 0}]},
    ]});
    let r = api.storefront_post("/v1/batch", &batch).await;
    assert_problem(&r, 503, "overloaded");
    assert_eq!(r.headers.get("retry-after").unwrap(), "1", "{}", r.text);
    core.step(0);
    assert_applied(&mut defined);
    let mut read = core
        .handle()
        .query(Query::GetSku { sku: "A".into() })
        .expect("queued");
    core.step(0);
    match read.try_wait().expect("answered").expect("read") {
        Ok(QueryReply::Sku(view)) => assert_eq!(view.available, 10, "nothing held"),
        other => panic!("{other:?}"),
    }
}

/// At the request timeout a write the writer has not taken is given up: 503 saying
/// nothing was done, and the writer skips it. One taken before the timeout is
/// applied, so its request waits for its answer (up to one more timeout) and
/// answers it; past that, 503 says it may still take effect. Time is paused: the
/// deadlines pass when the test advances the clock, and the writer is stepped by
/// hand, so each case falls on its side of the deadline every run.
#[tokio::test(start_paused = true)]
async fn a_write_past_the_request_timeout_is_answered_with_what_it_did() {
    let config = EngineConfig {
        durability: Durability::Sync,
        follower: false,
        snapshot_every_records: 0,
        ..Default::default()
    };
    let (mut core, _) =
        Engine::open_core_pipelined(surge_engine::wal::SimStorage::new(), config).expect("open");
    let timeout = std::time::Duration::from_millis(1_000);
    let api = Api::with_engine(
        ApiConfig {
            request_timeout_ms: 1_000,
            ..ApiConfig::default()
        },
        core.handle().clone(),
    );
    let mut defined = core.handle().submit(define_a(), None).expect("queued");
    core.step(0);
    core.sync();
    assert_applied(&mut defined);
    let hold = json!({"lines": [{"sku": "A", "qty": 1}], "ttl_ms": 600000}).to_string();
    let reserve = || {
        api.call(
            "POST",
            "/v1/reservations",
            Some(STOREFRONT),
            &[],
            Some(&hold),
        )
    };

    // Never taken: the clock runs to the deadline while nothing steps the writer.
    let r = reserve().await;
    assert_problem(&r, 503, "overloaded");
    assert!(r.text.contains("nothing was done"), "{}", r.text);
    core.step(0);
    core.sync();
    let abandoned = |core: &surge_engine::Core<_>| {
        core.handle()
            .stats()
            .commands_abandoned
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(abandoned(&core), 1, "the writer skipped it");

    // Taken before the deadline, committed after it: its answer.
    let mut call = std::pin::pin!(reserve());
    until_taken(call.as_mut(), &mut core).await;
    tokio::time::advance(timeout + std::time::Duration::from_millis(1)).await;
    poll_once_pending(call.as_mut()).await;
    core.sync();
    let r = call.await;
    assert_eq!(r.status, 201, "{}", r.text);

    // A batch taken before the deadline, committed after it: its answer too.
    let batch = json!({"ops": [
        {"op": "reserve", "lines": [{"sku": "A", "qty": 1}], "ttl_ms": 600000},
        {"op": "reserve", "lines": [{"sku": "A", "qty": 1}], "ttl_ms": 600000},
    ]})
    .to_string();
    let mut call =
        std::pin::pin!(api.call("POST", "/v1/batch", Some(STOREFRONT), &[], Some(&batch)));
    until_taken(call.as_mut(), &mut core).await;
    tokio::time::advance(timeout + std::time::Duration::from_millis(1)).await;
    poll_once_pending(call.as_mut()).await;
    core.sync();
    let r = call.await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json["results"][1]["status"], "held", "{}", r.text);

    // An admin's snapshot runs on once asked for: never "nothing was done".
    let r = api.admin("POST", "/v1/admin/snapshot", None).await;
    assert_problem(&r, 503, "overloaded");
    assert!(r.text.contains("may still take effect"), "{}", r.text);
    core.step(0);
    core.sync();

    // Taken, and not committed within one more timeout: 503 saying it may still
    // take effect (and it does, once committed).
    let mut call = std::pin::pin!(reserve());
    until_taken(call.as_mut(), &mut core).await;
    tokio::time::advance(timeout + std::time::Duration::from_millis(1)).await;
    poll_once_pending(call.as_mut()).await;
    tokio::time::advance(timeout).await;
    let r = call.await;
    assert_problem(&r, 503, "overloaded");
    assert!(r.text.contains("may still take effect"), "{}", r.text);
    core.sync();
    let mut read = core
        .handle()
        .query(Query::GetSku { sku: "A".into() })
        .expect("queued");
    core.step(0);
    core.sync();
    match read.try_wait().expect("answered").expect("read") {
        Ok(QueryReply::Sku(view)) => assert_eq!(view.available, 6, "the four taken holds"),
        other => panic!("{other:?}"),
    }
    assert_eq!(abandoned(&core), 1);
}

/// `/readyz` tells what a full disk does to writes: 503 `storage_unavailable` while
/// the log has no room for them (so a load balancer takes the node out of service),
/// and 200 again once space is freed, found by the writer's own timer: the node out
/// of service gets no write that could find it out.
#[tokio::test]
async fn readyz_is_503_while_the_disk_is_full_and_200_once_space_is_back() {
    let disk = surge_engine::wal::SimStorage::new();
    let config = EngineConfig {
        wal: surge_engine::wal::WalConfig {
            segment_bytes: 16 * 4096,
            snapshots_kept: 2,
        },
        snapshot_every_records: 0,
        ..Default::default()
    };
    let (engine, _) = Engine::open_with_storage(disk.clone(), config).expect("engine opens");
    let api = Api::with_engine(ApiConfig::default(), engine);
    api.define("A", 1_000_000).await;
    let ready = api.call("GET", "/readyz", None, &[], None).await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    disk.set_disk_full(true);
    let hold = json!({"lines": [{"sku": "A", "qty": 1}], "ttl_ms": 600000});
    let mut accepted = 0;
    loop {
        let r = api
            .admin("POST", "/v1/reservations", Some(hold.clone()))
            .await;
        if r.status == 503 {
            assert_problem(&r, 503, "storage_unavailable");
            break;
        }
        assert_eq!(r.status, 201, "{}", r.text);
        accepted += 1;
        assert!(accepted < 10_000, "the disk never filled");
    }
    let r = api.call("GET", "/readyz", None, &[], None).await;
    assert_problem(&r, 503, "storage_unavailable");
    assert!(
        r.json["detail"].as_str().unwrap().contains("space"),
        "{}",
        r.text
    );
    let metrics = api.call("GET", "/metrics", None, &[], None).await.text;
    assert!(
        metrics
            .lines()
            .any(|l| l == "surge_engine_writes_refused 1"),
        "{metrics}"
    );
    // Space back, and no write sent: the writer's timer finds the room.
    disk.set_disk_full(false);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let r = api.call("GET", "/readyz", None, &[], None).await;
        if r.status == 200 {
            assert_eq!(r.json["status"], "ready");
            break;
        }
        assert_problem(&r, 503, "storage_unavailable");
        assert!(std::time::Instant::now() < deadline, "never ready again");
        // Polled: the timer runs on the writer's thread, with nothing to await.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let r = api.admin("POST", "/v1/reservations", Some(hold)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let sku = api.admin("GET", "/v1/skus/A", None).await;
    assert_eq!(sku.json["reserved"], accepted + 1);
}
