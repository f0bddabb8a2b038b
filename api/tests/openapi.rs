//! The committed `api/openapi.json` must be what the code generates. When this fails,
//! refresh it with:
//!
//!     cargo run -p surge-api --bin surge -- openapi > api/openapi.json

#[test]
fn committed_openapi_document_matches_the_code() {
    let committed = include_str!("../openapi.json");
    let generated = surge_api::openapi::document_json();
    assert!(
        committed == generated,
        "api/openapi.json is stale; refresh it with: cargo run -p surge-api --bin surge -- openapi > api/openapi.json"
    );
    // Every error code of the contract is documented, `not_leader` among them.
    for code in [
        "validation_failed",
        "unauthorized",
        "forbidden",
        "overloaded",
        "storage_unavailable",
        "not_leader",
        "idempotency_conflict",
        "insufficient_stock",
        "invalid_transition",
    ] {
        assert!(
            generated.contains(code),
            "{code} is not in the OpenAPI document"
        );
    }
    let doc: serde_json::Value = serde_json::from_str(generated).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/skus",
        "/v1/skus/{sku}",
        "/v1/skus/{sku}/adjustments",
        "/v1/reservations",
        "/v1/reservations/{id}",
        "/v1/reservations/{id}/commit",
        "/v1/reservations/{id}/release",
        "/v1/orders",
        "/v1/orders/export.csv",
        "/v1/orders/by-no/{order_no}",
        "/v1/orders/{id}",
        "/v1/orders/{id}/pay",
        "/v1/orders/{id}/transitions",
        "/v1/orders/{id}/cancel",
        "/v1/orders/{id}/return",
        "/v1/orders/{id}/refund",
        "/v1/stats",
        "/v1/batch",
        "/v1/events",
        "/v1/admin/snapshot",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
}
