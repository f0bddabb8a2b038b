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

/// From an outside probe: the `Problem` schema flattened the members of a sale
/// refusal in as a `oneOf` of null and an object that required `sku`, so every
/// problem without `sku` (`validation_failed`, `unknown_order`, `insufficient_stock`
/// ...) failed the schema and strict generated clients rejected it. Every object a
/// problem must match, however it is reached, requires only what every problem has.
#[test]
fn a_problem_schema_requires_only_what_every_problem_has() {
    let doc: serde_json::Value =
        serde_json::from_str(surge_api::openapi::document_json()).expect("JSON");
    let schemas = &doc["components"]["schemas"];
    let mut required = Vec::new();
    let mut todo = vec![schemas["Problem"].clone()];
    while let Some(schema) = todo.pop() {
        if let Some(name) = schema["$ref"].as_str() {
            let name = name.trim_start_matches("#/components/schemas/");
            todo.push(schemas[name].clone());
            continue;
        }
        for combined in ["allOf", "oneOf", "anyOf"] {
            if let Some(parts) = schema[combined].as_array() {
                todo.extend(parts.iter().cloned());
            }
        }
        if let Some(names) = schema["required"].as_array() {
            required.extend(names.iter().map(|n| n.as_str().unwrap().to_string()));
        }
    }
    required.sort();
    assert_eq!(required, ["code", "detail", "status", "title", "type"]);
}

/// From an outside probe (schemathesis against the served document): the document
/// was looser than the server. Every write declares the `Surge-Lsn` its 2xx answers
/// carry, the `X-Actor` and `Idempotency-Key` headers say what the server accepts,
/// and every write declares the 408 its body's timeout answers (an empty body is
/// read too).
#[test]
fn writes_declare_their_surge_lsn_headers_and_timeouts() {
    let doc: serde_json::Value = serde_json::from_str(surge_api::openapi::document_json()).unwrap();
    let mut writes = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/v1/") {
            continue;
        }
        for method in ["put", "post", "patch"] {
            let Some(op) = item.get(method) else { continue };
            writes += 1;
            let responses = op["responses"].as_object().unwrap();
            for (code, response) in responses.iter().filter(|(c, _)| c.starts_with('2')) {
                assert_eq!(
                    response["headers"]["Surge-Lsn"]["schema"]["type"], "integer",
                    "{method} {path} {code} declares no Surge-Lsn"
                );
            }
            assert!(
                responses.contains_key("408"),
                "{method} {path} reads a body and declares no 408"
            );
            let header = |name: &str| {
                op["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == name && p["in"] == "header")
                    .map(|p| p["schema"].clone())
            };
            let actor = header("X-Actor").expect("every write takes X-Actor");
            assert_eq!(actor["pattern"], "^[!-~]+$", "{method} {path}");
            assert_eq!(actor["minLength"], 1, "{method} {path}");
            // What every role may send: 64 bytes of `role:actor` for `storefront`.
            assert_eq!(
                actor["maxLength"],
                64 - "storefront:".len(),
                "{method} {path}"
            );
            if let Some(key) = header("Idempotency-Key") {
                assert_eq!(key["pattern"], "^[!-~]([ -~]*[!-~])?$", "{method} {path}");
                let max = if path == "/v1/batch" { 122 } else { 128 };
                assert_eq!(key["maxLength"], max, "{method} {path}");
            }
        }
    }
    assert!(writes >= 18, "only {writes} writes in the document");
}
