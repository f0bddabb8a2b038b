//! The event feed against its documentation: every event an order's whole life
//! emits (holds, orders, fulfilment, returns, refunds, review holds, modifications,
//! expiries, delay alerts, stock alerts) is checked against the schema
//! `/openapi.json` gives its type: no field undocumented, no required field
//! missing, each value of its documented JSON type; and every documented type is
//! seen, so the document names no type the server never sends.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{ADMIN, STOREFRONT, Server, TempDir};
use serde_json::Value;

/// Whether `value` is of the JSON type `schema` gives (the subset the event
/// schemas use: `type` as a name or a list, `oneOf`, `$ref`, array `items`,
/// object `required` / `properties`). `Err` says where it is not.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference.trim_start_matches("#/components/schemas/");
        return conforms(doc, &doc["components"]["schemas"][name], value, at);
    }
    if let Some(choices) = schema["oneOf"].as_array() {
        return choices
            .iter()
            .any(|c| conforms(doc, c, value, at).is_ok())
            .then_some(())
            .ok_or_else(|| format!("{at}: {value} is none of {choices:?}"));
    }
    let names: Vec<&str> = match &schema["type"] {
        Value::String(name) => vec![name.as_str()],
        Value::Array(names) => names.iter().filter_map(Value::as_str).collect(),
        _ => return Ok(()),
    };
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(value)
    {
        return Err(format!("{at}: {value} is none of {allowed:?}"));
    }
    let fits = names.iter().any(|name| match *name {
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        "array" => value.is_array(),
        "object" => value.is_object(),
        _ => false,
    });
    if !fits {
        return Err(format!("{at}: {value} is not {names:?}"));
    }
    if let (Some(items), Some(values)) = (schema.get("items"), value.as_array()) {
        for (i, item) in values.iter().enumerate() {
            conforms(doc, items, item, &format!("{at}[{i}]"))?;
        }
    }
    if let Some(object) = value.as_object()
        && let Some(properties) = schema["properties"].as_object()
    {
        for required in schema["required"].as_array().into_iter().flatten() {
            let name = required.as_str().unwrap();
            if !object.contains_key(name) {
                return Err(format!("{at}: `{name}` is documented as always there"));
            }
        }
        for (name, field) in object {
            let Some(field_schema) = properties.get(name) else {
                return Err(format!("{at}: `{name}` is not documented"));
            };
            conforms(doc, field_schema, field, &format!("{at}.{name}"))?;
        }
    }
    Ok(())
}

#[test]
fn every_event_an_orders_life_emits_is_documented_field_by_field() {
    let dir = TempDir::new("event-payloads");
    let tokens_file = dir.path().join("tokens");
    std::fs::write(&tokens_file, "operator tk-lily lily\n").unwrap();
    let s = Server::start_with(
        &dir.data(),
        "event-payloads",
        &[
            ("SURGE_TOKENS_FILE", tokens_file.to_str().unwrap()),
            ("SURGE_SHIP_SLA_MS", "1000"),
        ],
    );
    let ok = |token: &str, method: &str, path: &str, body: Option<&str>| {
        let r = s.as_(token, method, path, body);
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
        r
    };
    // A named operator acting for someone: `actor` and `on_behalf_of`.
    let lily = |method: &str, path: &str, body: &str| {
        let r = s.call(
            method,
            path,
            &[("Authorization", "Bearer tk-lily"), ("X-Actor", "cs-7")],
            Some(body),
        );
        assert!((200..300).contains(&r.status), "{path}: {}", r.body);
        r
    };
    let put = |sku: &str, body: &str| ok(ADMIN, "PUT", &format!("/v1/skus/{sku}"), Some(body));
    put("A", r#"{"on_hand":10,"low_stock_threshold":3}"#);
    put("B", r#"{"on_hand":100}"#);
    put("C", r#"{"on_hand":2,"low_stock_threshold":1}"#);
    lily(
        "POST",
        "/v1/skus/A/adjustments",
        r#"{"delta":5,"reason":"inbound","note":"dock 3"}"#,
    );
    // Holds: expired, released, committed; stock.low and stock.out on C.
    let hold = |body: &str| ok(STOREFRONT, "POST", "/v1/reservations", Some(body)).str_field("id");
    hold(r#"{"lines":[{"sku":"A","qty":1}],"ttl_ms":1000}"#);
    let released = hold(r#"{"lines":[{"sku":"A","qty":1}]}"#);
    ok(
        STOREFRONT,
        "POST",
        &format!("/v1/reservations/{released}/release"),
        None,
    );
    let committed = hold(r#"{"lines":[{"sku":"C","qty":1}]}"#);
    ok(
        STOREFRONT,
        "POST",
        &format!("/v1/reservations/{committed}/commit"),
        None,
    );
    hold(r#"{"lines":[{"sku":"C","qty":1}]}"#);

    let order = |no: &str, extra: &str| {
        let body = format!(
            r#"{{"order_no":"{no}","customer_id":"c-{no}","channel":"tmall","lines":[{{"sku":"B","qty":2,"unit_price":500}}]{extra}}}"#
        );
        ok(STOREFRONT, "POST", "/v1/orders", Some(&body)).str_field("id")
    };
    let at = |id: &str, action: &str| format!("/v1/orders/{id}/{action}");
    // Paid, delayed past the ship SLA, shipped, delivered, returned, refunded.
    let o1 = order("E-1", "");
    lily(
        "POST",
        &at(&o1, "pay"),
        r#"{"amount":1000,"payment_ref":"p-1"}"#,
    );
    lily(
        "POST",
        &at(&o1, "transitions"),
        r#"{"to":"picking","note":"n"}"#,
    );
    common::eventually("the ship SLA to run out", || {
        s.admin("GET", &format!("/v1/orders/{o1}"), None).json()["delayed_since"].is_string()
    });
    for (to, extra) in [
        ("packed", ""),
        ("shipped", r#","tracking_no":"SF123""#),
        ("delivered", ""),
    ] {
        let body = format!(r#"{{"to":"{to}"{extra}}}"#);
        lily("POST", &at(&o1, "transitions"), &body);
    }
    lily(
        "POST",
        &at(&o1, "return"),
        r#"{"kind":"customer_return","restock":true,"reason":"size","note":"n"}"#,
    );
    lily("POST", &at(&o1, "refund"), r#"{"refund_ref":"rf-1"}"#);
    // Modified (a partial cancel), held, released, cancelled.
    // Placed by the named operator.
    let o2 = lily(
        "POST",
        "/v1/orders",
        r#"{"order_no":"E-2","customer_id":"c-E-2","channel":"jd","lines":[{"sku":"B","qty":2,"unit_price":500}]}"#,
    )
    .str_field("id");
    lily(
        "PATCH",
        &format!("/v1/orders/{o2}"),
        r#"{"lines":[{"sku":"B","qty":1,"unit_price":500}],"reason":"customer_request","note":"one"}"#,
    );
    lily(
        "POST",
        &at(&o2, "hold"),
        r#"{"reason":"address_check","note":"n"}"#,
    );
    lily("POST", &at(&o2, "release-hold"), r#"{"note":"n"}"#);
    lily(
        "POST",
        &at(&o2, "cancel"),
        r#"{"reason":"out_of_stock","note":"n"}"#,
    );
    // Expired unpaid.
    let o3 = order("E-3", r#","payment_ttl_ms":1000"#);
    common::eventually("the unpaid order to expire", || {
        s.admin("GET", &format!("/v1/orders/{o3}"), None).json()["status"] == "expired"
    });

    let doc: Value = serde_json::from_str(&s.call("GET", "/openapi.json", &[], None).body).unwrap();
    let schemas = &doc["components"]["schemas"];
    let documented: BTreeSet<String> = schemas["Event"]["oneOf"]
        .as_array()
        .expect("Event is one of the event types")
        .iter()
        .map(|r| {
            let name = r["$ref"].as_str().unwrap();
            name.trim_start_matches("#/components/schemas/Event.")
                .to_string()
        })
        .collect();
    assert_eq!(
        doc["components"]["schemas"]["EventPage"]["properties"]["events"]["items"]["$ref"],
        "#/components/schemas/Event"
    );
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut fields_seen: BTreeSet<(String, String)> = BTreeSet::new();
    let mut on_behalf_of = 0;
    for event in s.all_events() {
        let kind = event["type"].as_str().unwrap().to_string();
        let schema = &schemas[format!("Event.{kind}")];
        assert!(schema.is_object(), "`{kind}` has no schema: {event}");
        if let Err(why) = conforms(&doc, schema, &event, &kind) {
            panic!("{why}\n{event}");
        }
        on_behalf_of += usize::from(event.get("on_behalf_of").is_some());
        for name in event.as_object().unwrap().keys() {
            fields_seen.insert((kind.clone(), name.clone()));
        }
        *seen.entry(kind).or_default() += 1;
    }
    // Every documented field, optional ones included, is sent by some event.
    for kind in &documented {
        let properties = schemas[format!("Event.{kind}")]["properties"]
            .as_object()
            .unwrap();
        for name in properties.keys() {
            assert!(
                fields_seen.contains(&(kind.clone(), name.clone())),
                "`{kind}` documents `{name}`, which no event sent"
            );
        }
    }
    let seen_types: BTreeSet<String> = seen.keys().cloned().collect();
    assert_eq!(seen_types, documented, "seen {seen:?}");
    assert!(
        on_behalf_of >= 8,
        "{on_behalf_of} events named whom the actor acted for"
    );
}
