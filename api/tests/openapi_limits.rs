//! The input limits the server enforces (`surge_engine::limits`) are the ones
//! `/openapi.json` documents on the request bodies: `api/src/dto.rs` writes them as
//! literals (utoipa takes no constants), so this fails when a constant changes
//! without the document. Strings are limited in bytes by the server and in
//! characters by JSON Schema, so each bounded text field says "bytes" as well.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]

use serde_json::Value;
use surge_engine::limits::*;

fn document() -> Value {
    serde_json::from_str(surge_api::openapi::document_json()).unwrap()
}

fn property<'a>(doc: &'a Value, schema: &str, field: &str) -> &'a Value {
    let p = &doc["components"]["schemas"][schema]["properties"][field];
    assert!(p.is_object(), "{schema}.{field} is not in the document");
    p
}

/// A field's description with its line breaks (from the doc comment) as spaces.
fn description(p: &Value) -> String {
    p["description"]
        .as_str()
        .unwrap_or_default()
        .replace('\n', " ")
}

fn number(p: &Value, keyword: &str, at: &str) -> i128 {
    let n = &p[keyword];
    n.as_u64()
        .map(i128::from)
        .or_else(|| n.as_i64().map(i128::from))
        .unwrap_or_else(|| panic!("{at} has no integer `{keyword}`: {p}"))
}

/// `keyword` of `schema.field` is `expected`, and the field's description, when it
/// has one, states the number too (it repeats it for readers).
fn assert_limit(doc: &Value, schema: &str, field: &str, keyword: &str, expected: i128) {
    let at = format!("{schema}.{field}");
    let p = property(doc, schema, field);
    assert_eq!(number(p, keyword, &at), expected, "{at}: `{keyword}`");
    let description = description(p);
    assert!(
        description.is_empty() || description.contains(&expected.unsigned_abs().to_string()),
        "{at}: the description does not state {expected}: {description:?}"
    );
}

fn assert_range(doc: &Value, schema: &str, field: &str, min: u64, max: u64) {
    assert_limit(doc, schema, field, "minimum", min.into());
    assert_limit(doc, schema, field, "maximum", max.into());
}

/// A text field of at most `max` bytes, refused when it holds control characters.
fn assert_text(doc: &Value, schema: &str, field: &str, max: usize) {
    assert_limit(doc, schema, field, "maxLength", max as i128);
    let description = description(property(doc, schema, field));
    assert!(
        description.contains("bytes") && description.contains("no control characters"),
        "{schema}.{field}: the description does not say bytes and no control characters: {description:?}"
    );
}

fn assert_lines(doc: &Value, schema: &str, field: &str) {
    assert_limit(doc, schema, field, "minItems", 1);
    assert_limit(
        doc,
        schema,
        field,
        "maxItems",
        LINES_PER_REQUEST_MAX as i128,
    );
    let description = description(property(doc, schema, field));
    assert!(
        description.contains(&ORDER_TOTAL_MAX.to_string()) || schema == "ReserveReq",
        "{schema}.{field}: the order total limit is not stated: {description:?}"
    );
}

fn assert_sku(doc: &Value, schema: &str) {
    assert_limit(doc, schema, "sku", "minLength", 1);
    assert_limit(doc, schema, "sku", "maxLength", SKU_ID_LEN_MAX as i128);
    assert_eq!(
        property(doc, schema, "sku")["pattern"],
        "^[A-Za-z0-9._:-]+$",
        "{schema}.sku"
    );
}

#[test]
fn sku_definition_and_adjustment_limits() {
    let doc = document();
    for field in [
        "on_hand",
        "low_stock_threshold",
        "purchase_limit_per_customer",
    ] {
        assert_range(&doc, "DefineSkuReq", field, 0, ON_HAND_MAX);
    }
    assert_text(&doc, "DefineSkuReq", "name", SKU_NAME_LEN_MAX);
    // The latest instant the server reads (RFC 3339 parsing stops at jiff's
    // `Timestamp::MAX`), within the engine's `SALE_INSTANT_MAX_MS`.
    let latest = "9999-12-30T22:00:00.999Z";
    let latest_ms = surge_api::time::parse_rfc3339(latest).unwrap();
    assert!(latest_ms <= SALE_INSTANT_MAX_MS);
    assert_eq!(
        surge_api::time::parse_rfc3339("9999-12-30T22:00:01.000Z"),
        None
    );
    for field in ["sale_starts_at", "sale_ends_at"] {
        let description = description(property(&doc, "DefineSkuReq", field));
        assert!(
            description.contains(latest),
            "DefineSkuReq.{field}: {latest} is not stated: {description:?}"
        );
    }
    // `on_hand` stays within 0..=ON_HAND_MAX, so no larger change can succeed.
    let on_hand_max = i128::from(ON_HAND_MAX);
    assert_limit(&doc, "AdjustReq", "delta", "minimum", -on_hand_max);
    assert_limit(&doc, "AdjustReq", "delta", "maximum", on_hand_max);
    assert_text(&doc, "AdjustReq", "note", NOTE_LEN_MAX);
}

#[test]
fn reservation_and_order_limits() {
    let doc = document();
    for schema in ["LineDto", "OrderLineDto"] {
        assert_sku(&doc, schema);
        assert_range(&doc, schema, "qty", 1, QTY_PER_LINE_MAX);
    }
    assert_range(&doc, "OrderLineDto", "unit_price", 0, UNIT_PRICE_MAX);

    assert_lines(&doc, "ReserveReq", "lines");
    assert_range(&doc, "ReserveReq", "ttl_ms", TTL_MS_MIN, TTL_MS_MAX);
    assert_text(&doc, "ReserveReq", "customer_id", CUSTOMER_ID_LEN_MAX);
    assert_limit(&doc, "ReserveReq", "customer_id", "minLength", 1);

    assert_lines(&doc, "CreateOrderReq", "lines");
    assert_range(
        &doc,
        "CreateOrderReq",
        "payment_ttl_ms",
        TTL_MS_MIN,
        TTL_MS_MAX,
    );
    assert_text(&doc, "CreateOrderReq", "order_no", ORDER_NO_LEN_MAX);
    assert_limit(&doc, "CreateOrderReq", "order_no", "minLength", 1);
    assert_text(&doc, "CreateOrderReq", "customer_id", CUSTOMER_ID_LEN_MAX);
    assert_limit(&doc, "CreateOrderReq", "customer_id", "minLength", 1);
    assert_text(&doc, "CreateOrderReq", "channel", CHANNEL_LEN_MAX);

    assert_lines(&doc, "ModifyOrderReq", "lines");
    assert_text(&doc, "ModifyOrderReq", "note", NOTE_LEN_MAX);

    for part in [
        "name",
        "phone",
        "province",
        "city",
        "district",
        "line1",
        "postal_code",
    ] {
        assert_limit(
            &doc,
            "AddressBody",
            part,
            "maxLength",
            ADDRESS_PART_LEN_MAX as i128,
        );
    }
    let address = description(&doc["components"]["schemas"]["AddressBody"]);
    assert!(
        address.contains(&format!("{ADDRESS_PART_LEN_MAX} bytes"))
            && address.contains("no control characters"),
        "AddressBody: {address:?}"
    );
}

#[test]
fn order_operation_limits() {
    let doc = document();
    for (schema, field) in [
        ("PayReq", "payment_ref"),
        ("TransitionReq", "note"),
        ("TransitionReq", "tracking_no"),
        ("CancelReq", "note"),
        ("ReturnReq", "reason"),
        ("ReturnReq", "note"),
        ("RefundReq", "refund_ref"),
        ("HoldReq", "note"),
        ("ReleaseHoldReq", "note"),
        ("RefundsReq", "reason"),
        ("RefundsReq", "refund_ref"),
    ] {
        assert_text(&doc, schema, field, NOTE_LEN_MAX);
    }
    // The engine refuses a refund of 0 (`validation_failed`), the API one over the
    // largest total any order can have; a payment must equal its order's total.
    assert_range(&doc, "RefundsReq", "amount", 1, ORDER_TOTAL_MAX);
    assert_range(&doc, "PayReq", "amount", 0, ORDER_TOTAL_MAX);
}

/// Every field of every request body states its bounds: a new text field, list or
/// number without one fails here unless it is named below with the reason.
#[test]
fn no_request_field_is_left_unbounded() {
    let doc = document();
    // Bounded by something other than a limit of their own.
    let exempt = [
        // An id (`r<n>`) that names a reservation or is unknown (404).
        ("CreateOrderReq", "reservation_id"),
        // RFC 3339 instants, bounded by value (stated in the description).
        ("DefineSkuReq", "sale_starts_at"),
        ("DefineSkuReq", "sale_ends_at"),
    ];
    let requests = [
        "DefineSkuReq",
        "AdjustReq",
        "LineDto",
        "ReserveReq",
        "OrderLineDto",
        "CreateOrderReq",
        "AddressBody",
        "PayReq",
        "TransitionReq",
        "CancelReq",
        "ReturnReq",
        "RefundReq",
        "HoldReq",
        "ReleaseHoldReq",
        "ModifyOrderReq",
        "RefundsReq",
    ];
    for schema in requests {
        let properties = doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{schema} is not in the document"));
        for (field, p) in properties {
            if exempt.contains(&(schema, field.as_str())) {
                continue;
            }
            let types: Vec<&str> = match &p["type"] {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(), // an enum or a nested schema
            };
            let needs = if types.contains(&"string") {
                "maxLength"
            } else if types.contains(&"array") {
                "maxItems"
            } else if types.contains(&"integer") {
                "maximum"
            } else {
                continue;
            };
            assert!(
                p[needs].is_number(),
                "{schema}.{field} has no `{needs}`: document the engine's limit in api/src/dto.rs"
            );
        }
    }
}
