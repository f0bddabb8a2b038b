//! v1.1 order operations over HTTP, against the real binary: `Surge-Lsn`, order
//! fields and `actions`, review hold, PATCH (partial cancel), partial refunds and the
//! ledger, intercept / refusal returns, delay alerts, the new filters, full event
//! payloads, the role rules, and that all of it survives a restart.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]

mod common;

use common::{OPERATOR, STOREFRONT, Server, TempDir, VIEWER};
use serde_json::Value;

const PRICE: u64 = 100;

fn create(server: &Server, no: &str, qty: u64, extra: &str) -> Value {
    let body = format!(
        r#"{{"order_no": "{no}", "customer_id": "c1", "lines": [{{"sku": "A", "qty": {qty}, "unit_price": {PRICE}}}]{extra}}}"#
    );
    let r = server.as_(STOREFRONT, "POST", "/v1/orders", Some(&body));
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

fn pay(server: &Server, id: &str, amount: u64) -> Value {
    let r = server.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/orders/{id}/pay"),
        Some(&format!(
            r#"{{"amount": {amount}, "payment_ref": "p-{id}"}}"#
        )),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn step(server: &Server, id: &str, to: &str) -> common::Resp {
    server.as_(
        OPERATOR,
        "POST",
        &format!("/v1/orders/{id}/transitions"),
        Some(&format!(r#"{{"to": "{to}", "tracking_no": "SF1"}}"#)),
    )
}

fn actions(order: &Value) -> Vec<String> {
    order["actions"]
        .as_array()
        .expect("actions")
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

fn lsn(r: &common::Resp) -> u64 {
    r.header("surge-lsn")
        .unwrap_or_else(|| panic!("no Surge-Lsn: {:?}", r.headers))
        .parse()
        .expect("a number")
}

#[test]
fn writes_carry_surge_lsn_and_a_replayed_key_the_original() {
    let dir = TempDir::new("v11-lsn");
    let server = Server::start(&dir.data(), "lsn");
    server.define("A", 10);
    let body = r#"{"lines": [{"sku": "A", "qty": 1}]}"#;
    let key = [("Authorization", STOREFRONT), ("Idempotency-Key", "k1")];
    let first = server.call("POST", "/v1/reservations", &key, Some(body));
    assert_eq!(first.status, 201, "{}", first.body);
    let first_lsn = lsn(&first);
    // The LSN is the seq of the record's first event.
    let events = server.all_events();
    let held = events
        .iter()
        .find(|e| e["type"] == "reservation.held")
        .expect("held event");
    assert_eq!(held["seq"], first_lsn);
    let other = server.as_(STOREFRONT, "POST", "/v1/reservations", Some(body));
    assert!(lsn(&other) > first_lsn);
    let again = server.call("POST", "/v1/reservations", &key, Some(body));
    assert_eq!(
        (again.status, again.body.as_str()),
        (201, first.body.as_str())
    );
    assert_eq!(lsn(&again), first_lsn);
    // A refusal carries none.
    let refused = server.as_(
        STOREFRONT,
        "POST",
        "/v1/reservations",
        Some(r#"{"lines": [{"sku": "A", "qty": 100}]}"#),
    );
    refused.assert_problem(409, "insufficient_stock");
    assert_eq!(refused.header("surge-lsn"), None);
    // A repeat that changes nothing answers from the state logged so far: the
    // last record's LSN (the seq of its first event), here the release's own,
    // though the release logged two events; also after a restart from the
    // snapshot taken at shutdown, with nothing logged since.
    let id = first.str_field("id");
    let release = format!("/v1/reservations/{id}/release");
    let released = server.as_(STOREFRONT, "POST", &release, None);
    let repeated = server.as_(STOREFRONT, "POST", &release, None);
    assert_eq!((released.status, repeated.status), (200, 200));
    assert_eq!(lsn(&repeated), lsn(&released));
    let server = {
        assert!(server.sigterm_and_wait().success());
        Server::start(&dir.data(), "lsn-restarted")
    };
    let repeated = server.as_(STOREFRONT, "POST", &release, None);
    assert_eq!(repeated.status, 200, "{}", repeated.body);
    assert_eq!(lsn(&repeated), lsn(&released));
    // In a batch, each success carries "lsn".
    let batch = server.as_(
        STOREFRONT,
        "POST",
        "/v1/batch",
        Some(r#"{"ops": [{"op": "reserve", "lines": [{"sku": "A", "qty": 1}]}, {"op": "reserve", "lines": [{"sku": "A", "qty": 100}]}]}"#),
    );
    assert_eq!(batch.status, 200, "{}", batch.body);
    let results = batch.json()["results"].clone();
    assert!(results[0]["lsn"].as_u64().expect("lsn") > lsn(&other));
    assert!(results[1].get("lsn").is_none());
    // The batch's own Surge-Lsn is its last success's; a batch with none has none.
    assert_eq!(lsn(&batch), results[0]["lsn"].as_u64().unwrap());
    let failed = server.as_(
        STOREFRONT,
        "POST",
        "/v1/batch",
        Some(r#"{"ops": [{"op": "reserve", "lines": [{"sku": "A", "qty": 100}]}]}"#),
    );
    assert_eq!(failed.status, 200, "{}", failed.body);
    assert_eq!(failed.header("surge-lsn"), None);
}

#[test]
fn order_fields_hold_and_actions() {
    let dir = TempDir::new("v11-hold");
    let server = Server::start(&dir.data(), "hold");
    server.define("A", 10);
    let o = create(
        &server,
        "N-1",
        2,
        r#", "channel": "tmall", "shipping_address": {"name": "李雷", "city": "杭州", "line1": "文一西路 969 号"}"#,
    );
    let id = o["id"].as_str().unwrap().to_string();
    assert_eq!(o["channel"], "tmall");
    assert_eq!(o["shipping_address"]["city"], "杭州");
    assert_eq!(actions(&o), ["pay", "cancel", "hold", "modify"]);
    assert_eq!(o["payment"]["paid_amount"], 0);
    // An address part over 200 bytes is refused, naming it.
    let long = "x".repeat(201);
    let r = server.as_(
        STOREFRONT,
        "POST",
        "/v1/orders",
        Some(&format!(
            r#"{{"order_no": "N-9", "customer_id": "c1", "lines": [{{"sku": "A", "qty": 1, "unit_price": 1}}], "shipping_address": {{"phone": "{long}"}}}}"#
        )),
    );
    r.assert_problem(400, "validation_failed");
    assert_eq!(r.json()["field"], "shipping_address.phone");
    let o = pay(&server, &id, 2 * PRICE);
    assert_eq!(o["payment"]["paid_amount"], 2 * PRICE);

    // Hold: operator only.
    let hold_body = r#"{"reason": "address_check", "note": "call back"}"#;
    let path = format!("/v1/orders/{id}/hold");
    server
        .as_(STOREFRONT, "POST", &path, Some(hold_body))
        .assert_problem(403, "forbidden");
    let r = server.as_(OPERATOR, "POST", &path, Some(hold_body));
    assert_eq!(r.status, 200, "{}", r.body);
    let o = r.json();
    assert_eq!(o["hold"]["reason"], "address_check");
    assert_eq!(actions(&o), ["cancel", "release_hold", "modify", "refund"]);
    // Any move to picking, packed or shipped while held, the next step or not.
    for to in ["picking", "packed", "shipped"] {
        step(&server, &id, to).assert_problem(409, "order_on_hold");
    }
    let r = server.as_(
        OPERATOR,
        "GET",
        "/v1/orders?on_hold=true&channel=tmall",
        None,
    );
    assert_eq!(r.json()["items"].as_array().unwrap().len(), 1);
    let r = server.as_(
        OPERATOR,
        "POST",
        &format!("/v1/orders/{id}/release-hold"),
        Some(r#"{"note": "ok"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["hold"].is_null());
    server
        .as_(
            OPERATOR,
            "POST",
            &format!("/v1/orders/{id}/release-hold"),
            Some("{}"),
        )
        .assert_problem(409, "invalid_transition");
    assert_eq!(step(&server, &id, "picking").status, 200);
    let types: Vec<String> = server
        .all_events()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert!(types.contains(&"order.held".to_string()), "{types:?}");
    assert!(
        types.contains(&"order.hold_released".to_string()),
        "{types:?}"
    );
}

#[test]
fn patch_refunds_ledger_and_returns_survive_a_restart() {
    let dir = TempDir::new("v11-money");
    let server = Server::start(&dir.data(), "money");
    server.define("A", 10);
    let o = create(&server, "N-1", 3, "");
    let id = o["id"].as_str().unwrap().to_string();
    pay(&server, &id, 3 * PRICE);
    let path = format!("/v1/orders/{id}");
    // Lines going down need a reason; storefront only its two.
    server
        .as_(
            OPERATOR,
            "PATCH",
            &path,
            Some(r#"{"lines": [{"sku": "A", "qty": 1, "unit_price": 100}]}"#),
        )
        .assert_problem(400, "validation_failed");
    server
        .as_(
            STOREFRONT,
            "PATCH",
            &path,
            Some(r#"{"lines": [{"sku": "A", "qty": 1, "unit_price": 100}], "reason": "out_of_stock"}"#),
        )
        .assert_problem(403, "forbidden");
    server
        .as_(OPERATOR, "PATCH", &path, Some(r#"{"lines": []}"#))
        .assert_problem(400, "validation_failed");
    server
        .as_(
            OPERATOR,
            "PATCH",
            &path,
            Some(r#"{"lines": [{"sku": "A", "qty": 4, "unit_price": 100}]}"#),
        )
        .assert_problem(409, "invalid_transition");
    let r = server.as_(
        STOREFRONT,
        "PATCH",
        &path,
        Some(r#"{"lines": [{"sku": "A", "qty": 1, "unit_price": 100}], "reason": "customer_request", "note": "one is enough"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let o = r.json();
    assert_eq!(o["total"], PRICE);
    assert_eq!(o["payment"]["refund_due_amount"], 2 * PRICE);
    assert_eq!(o["payment"]["status"], "refund_due");
    assert_eq!(o["note"], "one is enough");
    let sku = server.admin("GET", "/v1/skus/A", None).json();
    assert_eq!(sku["on_hand"], 9, "two units back");

    // Refunds: more than refundable is refused; the due part first.
    let refunds = format!("/v1/orders/{id}/refunds");
    server
        .as_(OPERATOR, "POST", &refunds, Some(r#"{"amount": 301}"#))
        .assert_problem(409, "refund_exceeds_paid");
    // An amount no order could have been paid is a bad field, not a refusal.
    for amount in ["1000000000001", "18446744073709551615"] {
        let r = server.as_(
            OPERATOR,
            "POST",
            &refunds,
            Some(&format!(r#"{{"amount": {amount}}}"#)),
        );
        r.assert_problem(400, "validation_failed");
        assert_eq!(r.json()["field"], "amount", "{}", r.body);
    }
    let r = server.call(
        "POST",
        &refunds,
        &[("Authorization", OPERATOR), ("Idempotency-Key", "rf-1")],
        Some(r#"{"amount": 250, "reason": "goodwill", "refund_ref": "WX-1"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let o = r.json();
    assert_eq!(o["payment"]["refunded_amount"], 250);
    assert_eq!(o["payment"]["refund_due_amount"], 0);
    assert_eq!(o["payment"]["status"], "partially_refunded");
    // The same key again: the same answer, no second refund.
    let again = server.call(
        "POST",
        &refunds,
        &[("Authorization", OPERATOR), ("Idempotency-Key", "rf-1")],
        Some(r#"{"amount": 250, "reason": "goodwill", "refund_ref": "WX-1"}"#),
    );
    assert_eq!(again.body, r.body);
    server
        .as_(
            OPERATOR,
            "POST",
            &format!("/v1/orders/{id}/refund"),
            Some("{}"),
        )
        .assert_problem(409, "invalid_transition");

    // Ship, intercept: the rest is due back, the unit restocked.
    for to in ["picking", "packed", "shipped"] {
        assert_eq!(step(&server, &id, to).status, 200);
    }
    server
        .as_(
            OPERATOR,
            "POST",
            &format!("/v1/orders/{id}/cancel"),
            Some(r#"{"reason": "customer_request"}"#),
        )
        .assert_problem(409, "order_shipped");
    let r = server.as_(
        OPERATOR,
        "POST",
        &format!("/v1/orders/{id}/return"),
        Some(r#"{"kind": "intercepted", "restock": true, "reason": "stopped at the depot"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let o = r.json();
    assert_eq!(o["status"], "returned");
    assert_eq!(o["returned"]["kind"], "intercepted");
    assert_eq!(o["payment"]["refund_due_amount"], 50);

    // The new list filters.
    let other = create(&server, "M-1", 1, r#", "channel": "jd""#);
    let count = |query: &str| {
        let r = server.as_(VIEWER, "GET", &format!("/v1/orders?{query}"), None);
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        r.json()["items"].as_array().unwrap().len()
    };
    assert_eq!(count("payment_status=refund_due"), 1);
    assert_eq!(count("payment_status=unpaid"), 1);
    assert_eq!(count("order_no=N-"), 1);
    assert_eq!(count("order_no=M"), 1);
    assert_eq!(count("channel=jd"), 1);
    assert_eq!(count("on_hold=false"), 2);
    assert_eq!(other["channel"], "jd");
    server
        .as_(VIEWER, "GET", "/v1/orders?payment_status=owed", None)
        .assert_problem(400, "validation_failed");

    // The ledger: oldest first, filters, viewer may read, unknown parameter refused.
    let ledger = server.as_(VIEWER, "GET", &format!("/v1/ledger?order_id={id}"), None);
    assert_eq!(ledger.status, 200, "{}", ledger.body);
    let kinds: Vec<(String, u64)> = ledger.json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["amount"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected = [
        ("charge", 300),
        ("reversal", 200),
        ("refund", 250),
        ("reversal", 50),
    ];
    assert_eq!(kinds, expected.map(|(k, a)| (k.to_string(), a)),);
    let refunds_only = server
        .as_(VIEWER, "GET", "/v1/ledger?kind=refund", None)
        .json();
    assert_eq!(refunds_only["items"][0]["ref"], "WX-1");
    server
        .as_(VIEWER, "GET", "/v1/ledger?knd=refund", None)
        .assert_problem(400, "validation_failed");
    server
        .as_(STOREFRONT, "GET", "/v1/ledger", None)
        .assert_problem(403, "forbidden");
    let csv = server.as_(VIEWER, "GET", "/v1/ledger/export.csv", None);
    assert_eq!(csv.status, 200);
    assert!(
        csv.body
            .starts_with("seq,at,order_id,order_no,kind,amount,ref,actor\r\n"),
        "{}",
        csv.body
    );
    assert_eq!(csv.body.lines().count(), 5);
    server
        .as_(VIEWER, "GET", "/v1/ledger/export.csv?limit=2", None)
        .assert_problem(400, "validation_failed");

    // The full payloads downstream acts on.
    let events = server.all_events();
    let modified = events
        .iter()
        .find(|e| e["type"] == "order.modified")
        .expect("order.modified");
    assert_eq!(modified["reason"], "customer_request");
    assert_eq!(modified["before"][0]["qty"], 3);
    assert_eq!(modified["after"][0]["qty"], 1);
    assert_eq!(modified["stock_delta"][0]["qty"], -2);
    let returned = events
        .iter()
        .find(|e| e["type"] == "order.returned")
        .expect("order.returned");
    assert_eq!(returned["kind"], "intercepted");
    assert_eq!(returned["order_no"], "N-1");
    assert_eq!(returned["restocked"][0]["qty"], 1);
    let restored = events
        .iter()
        .filter(|e| e["type"] == "stock.restored")
        .count();
    assert_eq!(restored, 2, "the modification and the return");

    // All of it is logged state.
    let before = server.admin("GET", &format!("/v1/orders/{id}"), None).body;
    let ledger_before = ledger.body;
    let digest = server.digest();
    let status = server.sigterm_and_wait();
    assert!(status.success(), "{status:?}");
    let server = Server::start(&dir.data(), "money-again");
    assert_eq!(server.digest(), digest);
    assert_eq!(
        server.admin("GET", &format!("/v1/orders/{id}"), None).body,
        before
    );
    assert_eq!(
        server
            .as_(VIEWER, "GET", &format!("/v1/ledger?order_id={id}"), None)
            .body,
        ledger_before
    );
}

#[test]
fn delay_alerts_and_review_holds_follow_the_logged_policy() {
    let dir = TempDir::new("v11-delay");
    let server = Server::start_with(
        &dir.data(),
        "delay",
        &[
            ("SURGE_SHIP_SLA_MS", "300"),
            ("SURGE_REVIEW_AMOUNT_MIN", "1000"),
        ],
    );
    server.define("A", 100);
    let big = create(&server, "N-BIG", 10, "");
    assert_eq!(big["hold"]["reason"], "review");
    let o = create(&server, "N-1", 1, "");
    let id = o["id"].as_str().unwrap().to_string();
    pay(&server, &id, PRICE);
    // The timer flags it once the SLA runs out: wait for the event, bounded.
    let delayed = common::wait_for("order.delayed", || {
        let found: Vec<Value> = server
            .all_events()
            .into_iter()
            .filter(|e| e["type"] == "order.delayed")
            .collect();
        (!found.is_empty()).then_some(found)
    });
    assert_eq!(delayed.len(), 1);
    assert_eq!(delayed[0]["order_id"], id.as_str());
    let list = server
        .as_(OPERATOR, "GET", "/v1/orders?delayed=true", None)
        .json();
    assert_eq!(list["items"][0]["id"], id.as_str());
    assert!(list["items"][0]["delayed_since"].is_string());
    server
        .as_(OPERATOR, "GET", "/v1/orders?delayed=maybe", None)
        .assert_problem(400, "validation_failed");
    // Restarted with other flags (the defaults), the new policy is logged; what
    // happened stays.
    let digest_before = server.digest();
    assert!(server.sigterm_and_wait().success());
    let server = Server::start(&dir.data(), "delay-again");
    assert_eq!(
        server.digest(),
        digest_before,
        "what happened stays as it was"
    );
    let again = server
        .as_(OPERATOR, "GET", &format!("/v1/orders/{id}"), None)
        .json();
    assert!(again["delayed_since"].is_string());
    let types: Vec<Value> = server
        .all_events()
        .into_iter()
        .filter(|e| e["type"] == "order.delayed")
        .collect();
    assert_eq!(types.len(), 1, "exactly once, also after a restart");
}

/// Events downstream acts on without calling back (API.md, "Events with full
/// payloads"): a status change names the order (number, customer, channel, lines),
/// the step's note, who made it and, once shipped, the tracking number; a stock
/// adjustment its note and actor; a modification the address and note after it.
/// They carried the id alone (fulfilment had to call
/// back for the tracking number). The server logs the rules that say so once: a
/// restart replays the same events and logs nothing more.
#[test]
fn status_changes_and_adjustments_carry_what_downstream_acts_on() {
    let dir = TempDir::new("v12-events");
    let server = Server::start(&dir.data(), "v12-events");
    server.define("A", 10);
    let order = create(&server, "full-1", 2, r#", "channel": "tmall""#);
    let id = order["id"].as_str().unwrap().to_string();
    pay(&server, &id, 2 * PRICE);
    for to in ["picking", "packed", "shipped"] {
        let r = server.call(
            "POST",
            &format!("/v1/orders/{id}/transitions"),
            &[("Authorization", OPERATOR), ("X-Actor", "wh-7")],
            Some(&format!(
                r#"{{"to": "{to}", "note": "step {to}", "tracking_no": "SF1"}}"#
            )),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = server.call(
        "POST",
        "/v1/skus/A/adjustments",
        &[("Authorization", OPERATOR), ("X-Actor", "wh-7")],
        Some(r#"{"delta": 3, "reason": "inbound", "note": "dock 3"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // An address-only change tells the new address (and the order's note).
    let other = create(&server, "full-2", 1, "");
    let other_id = other["id"].as_str().unwrap().to_string();
    let r = server.as_(
        OPERATOR,
        "PATCH",
        &format!("/v1/orders/{other_id}"),
        Some(
            r#"{"shipping_address": {"name": "韩梅梅", "city": "上海"}, "note": "leave at door"}"#,
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let events = server.all_events();
    let modified = events
        .iter()
        .rfind(|e| e["type"] == "order.modified")
        .unwrap();
    assert_eq!(
        (
            &modified["order_no"],
            &modified["shipping_address"]["city"],
            &modified["note"]
        ),
        (
            &Value::from("full-2"),
            &Value::from("上海"),
            &Value::from("leave at door")
        ),
        "{modified}"
    );
    assert_eq!(modified["shipping_address"], r.json()["shipping_address"]);
    let changes: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "order.status_changed")
        .collect();
    assert_eq!(changes.len(), 4, "{changes:?}");
    let shipped = changes[3];
    for (field, want) in [
        ("order_id", Value::from(id.as_str())),
        ("order_no", "full-1".into()),
        ("customer_id", "c1".into()),
        ("channel", "tmall".into()),
        ("from", "packed".into()),
        ("to", "shipped".into()),
        ("note", "step shipped".into()),
        ("tracking_no", "SF1".into()),
        ("actor", "operator:wh-7".into()),
    ] {
        assert_eq!(shipped[field], want, "{field} in {shipped}");
    }
    assert_eq!(shipped["lines"][0]["sku"], "A", "{shipped}");
    assert_eq!(shipped["lines"][0]["qty"], 2, "{shipped}");
    // The payment's confirmation is a status change too, by the payer.
    assert_eq!(
        (&changes[0]["to"], &changes[0]["tracking_no"]),
        (&Value::from("confirmed"), &Value::from("")),
        "{}",
        changes[0]
    );
    let adjusted = events
        .iter()
        .rfind(|e| e["type"] == "stock.adjusted")
        .unwrap();
    assert_eq!(
        (&adjusted["note"], &adjusted["actor"]),
        (&Value::from("dock 3"), &Value::from("operator:wh-7")),
        "{adjusted}"
    );

    let last_seq = events.last().unwrap()["seq"].as_u64().unwrap();
    server.sigterm_and_wait();
    let server = Server::start(&dir.data(), "v12-events-again");
    assert_eq!(server.all_events(), events, "replayed events differ");
    let r = server.as_(
        STOREFRONT,
        "POST",
        "/v1/reservations",
        Some(r#"{"lines": [{"sku": "A", "qty": 1}]}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(lsn(&r), last_seq + 1, "a record was logged at the restart");
}
