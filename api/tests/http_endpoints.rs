//! Every endpoint of the contract against the real binary: its success and each
//! documented error that the bad-input corpus (api/tests/http_contract.rs) does not
//! already cover with a valid-looking request.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]

mod common;

use common::{ADMIN, OPERATOR, STOREFRONT, Server, TempDir, VIEWER};
use serde_json::{Value, json};

fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().or(o["sku"].as_str()).unwrap().to_string())
        .collect()
}

#[test]
fn skus_define_read_page_and_adjust() {
    let dir = TempDir::new("ep-skus");
    let s = Server::start(&dir.data(), "skus");
    let r = s.admin(
        "PUT",
        "/v1/skus/SKU-1",
        Some(r#"{"on_hand":100,"low_stock_threshold":10,"name":"First"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json(),
        json!({"sku":"SKU-1","name":"First","on_hand":100,"reserved":0,"available":100,"low_stock_threshold":10,"purchase_limit_per_customer":0,"sale_starts_at":null,"sale_ends_at":null})
    );
    // Redefining changes what it names and keeps what it omits (API.md, v1.1).
    let r = s.admin("PUT", "/v1/skus/SKU-1", Some(r#"{"on_hand":50}"#));
    assert_eq!(
        r.json(),
        json!({"sku":"SKU-1","name":"First","on_hand":50,"reserved":0,"available":50,"low_stock_threshold":10,"purchase_limit_per_customer":0,"sale_starts_at":null,"sale_ends_at":null})
    );
    let r = s.admin(
        "PUT",
        "/v1/skus/SKU-1",
        Some(r#"{"name":"","low_stock_threshold":0}"#),
    );
    assert_eq!(
        r.json(),
        json!({"sku":"SKU-1","name":"","on_hand":50,"reserved":0,"available":50,"low_stock_threshold":0,"purchase_limit_per_customer":0,"sale_starts_at":null,"sale_ends_at":null})
    );
    // A new SKU needs its level.
    let r = s.admin("PUT", "/v1/skus/SKU-NEW", Some(r#"{"name":"x"}"#));
    assert_eq!(
        (r.status, r.json()["field"].clone()),
        (400, json!("on_hand")),
        "{}",
        r.body
    );
    for i in 2..=5 {
        s.define(&format!("SKU-{i}"), i);
    }
    assert_eq!(
        s.as_(VIEWER, "GET", "/v1/skus/SKU-3", None).json()["on_hand"],
        3
    );
    // Paging in definition order, to the end.
    let mut seen = Vec::new();
    let mut path = "/v1/skus?limit=2".to_string();
    loop {
        let page = s.as_(STOREFRONT, "GET", &path, None).json();
        let items = ids(&page);
        assert!(items.len() <= 2);
        seen.extend(items);
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/skus?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, ["SKU-1", "SKU-2", "SKU-3", "SKU-4", "SKU-5"]);
    assert_eq!(ids(&s.admin("GET", "/v1/skus", None).json()).len(), 5);
    // Adjustments: inbound and correction, by an operator.
    let r = s.as_(
        OPERATOR,
        "POST",
        "/v1/skus/SKU-1/adjustments",
        Some(r#"{"delta":25,"reason":"inbound","note":"truck 7"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["on_hand"], 75);
    let r = s.as_(
        OPERATOR,
        "POST",
        "/v1/skus/SKU-1/adjustments",
        Some(r#"{"delta":-5,"reason":"correction"}"#),
    );
    assert_eq!(
        (r.json()["on_hand"].as_u64(), r.json()["available"].as_u64()),
        (Some(70), Some(70))
    );
    let adjusted: Vec<Value> = s
        .all_events()
        .into_iter()
        .filter(|e| e["type"] == "stock.adjusted")
        .collect();
    assert_eq!(adjusted.len(), 2);
    assert_eq!(adjusted[0]["delta"], 25);
    assert_eq!(adjusted[0]["reason"], "inbound");
    assert_eq!(adjusted[1]["delta"], -5);
    assert_eq!(adjusted[1]["on_hand"], 70);
    // Holding stock, then redefining or correcting below it: 409.
    let r = s.admin(
        "POST",
        "/v1/reservations",
        Some(r#"{"lines":[{"sku":"SKU-2","qty":2}]}"#),
    );
    assert_eq!(r.status, 201);
    s.admin("PUT", "/v1/skus/SKU-2", Some(r#"{"on_hand":1}"#))
        .assert_problem(409, "invalid_transition");
    s.admin(
        "POST",
        "/v1/skus/SKU-2/adjustments",
        Some(r#"{"delta":-1,"reason":"correction"}"#),
    )
    .assert_problem(409, "invalid_transition");
    // Stock events: low and out.
    s.admin(
        "PUT",
        "/v1/skus/LOW",
        Some(r#"{"on_hand":3,"low_stock_threshold":2}"#),
    );
    // 3 -> 1 crosses the threshold (stock.low); 1 -> 0 is stock.out (which, from
    // above the threshold straight to 0, is emitted instead of stock.low).
    for qty in [2, 1] {
        let r = s.admin(
            "POST",
            "/v1/reservations",
            Some(&format!(r#"{{"lines":[{{"sku":"LOW","qty":{qty}}}]}}"#)),
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let types: Vec<String> = s
        .all_events()
        .iter()
        .filter(|e| e["sku"] == "LOW")
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert!(types.contains(&"stock.low".to_string()), "{types:?}");
    assert!(types.contains(&"stock.out".to_string()), "{types:?}");
}

/// `POST /v1/reservations/{id}/{step}` as the storefront: 200 with the reservation
/// in `status`; repeating it answers the same.
fn step_twice(s: &Server, id: &str, step: &str, status: &str) {
    let path = format!("/v1/reservations/{id}/{step}");
    let r = s.as_(STOREFRONT, "POST", &path, None);
    assert_eq!((r.status, r.json()["status"].as_str()), (200, Some(status)));
    let again = s.as_(STOREFRONT, "POST", &path, None);
    assert_eq!((again.status, &again.body), (200, &r.body));
}

#[test]
fn reservations_hold_commit_release() {
    let dir = TempDir::new("ep-res");
    let s = Server::start(&dir.data(), "res");
    s.define("A", 10);
    s.define("B", 10);
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/reservations",
        Some(r#"{"lines":[{"sku":"A","qty":2},{"sku":"B","qty":3}],"ttl_ms":60000}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let held = r.json();
    let id = held["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/reservations/{id}").as_str())
    );
    assert_eq!(held["status"], "held");
    assert_eq!(
        held["lines"],
        json!([{"sku":"A","qty":2},{"sku":"B","qty":3}])
    );
    assert!(held["expires_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        s.as_(VIEWER, "GET", &format!("/v1/reservations/{id}"), None)
            .json(),
        held
    );
    let a = s.admin("GET", "/v1/skus/A", None).json();
    assert_eq!(
        (a["reserved"].as_u64(), a["available"].as_u64()),
        (Some(2), Some(8))
    );
    // All or none: B is short, so A is not held either.
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/reservations",
        Some(r#"{"lines":[{"sku":"A","qty":1},{"sku":"B","qty":8}]}"#),
    );
    r.assert_problem(409, "insufficient_stock");
    assert_eq!(
        r.json()["lines"],
        json!([{"sku":"B","requested":8,"available":7}])
    );
    assert_eq!(s.admin("GET", "/v1/skus/A", None).json()["reserved"], 2);
    // Commit: the units leave on_hand; repeating returns the same state.
    step_twice(&s, &id, "commit", "committed");
    let a = s.admin("GET", "/v1/skus/A", None).json();
    assert_eq!(
        (a["on_hand"].as_u64(), a["reserved"].as_u64()),
        (Some(8), Some(0))
    );
    s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/reservations/{id}/release"),
        None,
    )
    .assert_problem(409, "invalid_transition");
    // Release: the units are available again; repeating returns the same state.
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/reservations",
        Some(r#"{"lines":[{"sku":"A","qty":5}]}"#),
    );
    let id2 = r.str_field("id");
    step_twice(&s, &id2, "release", "released");
    assert_eq!(s.admin("GET", "/v1/skus/A", None).json()["available"], 8);
    s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/reservations/{id2}/commit"),
        None,
    )
    .assert_problem(409, "invalid_transition");
    // Idempotency-Key on a hold: the same answer, and 422 for another body.
    let keyed = [("Authorization", STOREFRONT), ("Idempotency-Key", "hold-1")];
    let first = s.call(
        "POST",
        "/v1/reservations",
        &keyed,
        Some(r#"{"lines":[{"sku":"B","qty":1}]}"#),
    );
    let second = s.call(
        "POST",
        "/v1/reservations",
        &keyed,
        Some(r#"{"lines":[{"sku":"B","qty":1}]}"#),
    );
    assert_eq!((first.status, &first.body), (second.status, &second.body));
    // B: the first hold (3) was committed; this one holds 1, once.
    assert_eq!(s.admin("GET", "/v1/skus/B", None).json()["reserved"], 1);
    s.call(
        "POST",
        "/v1/reservations",
        &keyed,
        Some(r#"{"lines":[{"sku":"B","qty":2}]}"#),
    )
    .assert_problem(422, "idempotency_conflict");
}

#[test]
fn order_lifecycle_return_refund_and_cancel() {
    let dir = TempDir::new("ep-orders");
    let s = Server::start(&dir.data(), "orders");
    s.define("A", 10);
    let alice = [("Authorization", STOREFRONT), ("X-Actor", "alice")];
    let r = s.call(
        "POST",
        "/v1/orders",
        &alice,
        Some(r#"{"order_no":"N-1","customer_id":"c1","lines":[{"sku":"A","qty":2,"unit_price":1999}],"payment_ttl_ms":600000}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let o = r.json();
    let id = o["id"].as_str().unwrap().to_string();
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/orders/{id}").as_str())
    );
    assert_eq!(o["status"], "reserved");
    assert_eq!(o["payment"]["status"], "unpaid");
    assert_eq!(o["total"], 3998);
    assert_eq!(o["history"][0]["actor"], "storefront:alice");
    assert_eq!(s.as_(VIEWER, "GET", "/v1/orders/by-no/N-1", None).json(), o);
    assert_eq!(
        s.as_(STOREFRONT, "GET", &format!("/v1/orders/{id}"), None)
            .json(),
        o
    );
    assert_eq!(s.admin("GET", "/v1/skus/A", None).json()["reserved"], 2);
    // Pay: the amount must equal the total.
    s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/orders/{id}/pay"),
        Some(r#"{"amount":3997}"#),
    )
    .assert_problem(400, "validation_failed");
    let r = s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/orders/{id}/pay"),
        Some(r#"{"amount":3998,"payment_ref":"psp-1"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let paid = r.json();
    assert_eq!(paid["status"], "confirmed");
    assert_eq!(paid["payment"]["status"], "paid");
    assert_eq!(paid["payment"]["payment_ref"], "psp-1");
    let a = s.admin("GET", "/v1/skus/A", None).json();
    assert_eq!(
        (a["on_hand"].as_u64(), a["reserved"].as_u64()),
        (Some(8), Some(0))
    );
    // Fulfilment, by an operator.
    for (to, extra) in [
        ("picking", ""),
        ("packed", ""),
        ("shipped", r#","tracking_no":"TRK-9""#),
        ("delivered", ""),
    ] {
        let r = s.as_(
            OPERATOR,
            "POST",
            &format!("/v1/orders/{id}/transitions"),
            Some(&format!(r#"{{"to":"{to}","note":"step {to}"{extra}}}"#)),
        );
        assert_eq!(
            (r.status, r.json()["status"].as_str()),
            (200, Some(to)),
            "{}",
            r.body
        );
    }
    s.as_(
        OPERATOR,
        "POST",
        &format!("/v1/orders/{id}/cancel"),
        Some(r#"{"reason":"other"}"#),
    )
    .assert_problem(409, "order_shipped");
    s.as_(
        OPERATOR,
        "POST",
        &format!("/v1/orders/{id}/refund"),
        Some("{}"),
    )
    .assert_problem(409, "invalid_transition");
    // Return with restock, then refund.
    let r = s.as_(
        OPERATOR,
        "POST",
        &format!("/v1/orders/{id}/return"),
        Some(r#"{"restock":true,"reason":"damaged","note":"box crushed"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let returned = r.json();
    assert_eq!(returned["status"], "returned");
    assert_eq!(returned["payment"]["status"], "refund_due");
    assert_eq!(
        returned["returned"],
        json!({"kind":"customer_return","restock":true,"reason":"damaged","note":"box crushed"})
    );
    assert_eq!(s.admin("GET", "/v1/skus/A", None).json()["on_hand"], 10);
    let r = s.as_(
        OPERATOR,
        "POST",
        &format!("/v1/orders/{id}/refund"),
        Some(r#"{"refund_ref":"rf-1"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["payment"]["status"], "refunded");
    assert_eq!(r.json()["payment"]["refund_ref"], "rf-1");
    let o = s.admin("GET", &format!("/v1/orders/{id}"), None).json();
    assert_eq!(o["tracking_no"], "TRK-9");
    let statuses: Vec<&str> = o["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "reserved",
            "confirmed",
            "picking",
            "packed",
            "shipped",
            "delivered",
            "returned",
            "returned"
        ],
        "the refund is recorded in the history at status returned"
    );
    assert_eq!(o["history"][7]["actor"], "operator");
    assert_eq!(o["history"][2]["actor"], "operator");
    assert_eq!(o["history"][2]["note"], "step picking");
    // Cancel an unpaid order: the units come back; repeating returns the order.
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/orders",
        Some(r#"{"order_no":"N-2","customer_id":"c2","lines":[{"sku":"A","qty":4,"unit_price":10}]}"#),
    );
    let id2 = r.str_field("id");
    assert_eq!(s.admin("GET", "/v1/skus/A", None).json()["available"], 6);
    let r = s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/orders/{id2}/cancel"),
        Some(r#"{"reason":"customer_request","note":"changed my mind"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let c = r.json();
    assert_eq!(c["status"], "cancelled");
    assert_eq!(c["cancellation"]["reason"], "customer_request");
    assert_eq!(c["cancellation"]["note"], "changed my mind");
    assert_eq!(c["cancellation"]["actor"], "storefront");
    assert!(c["cancellation"]["at"].is_string());
    let again = s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/orders/{id2}/cancel"),
        Some(r#"{"reason":"customer_request","note":"changed my mind"}"#),
    );
    assert_eq!(
        (again.status, again.json()["status"].as_str()),
        (200, Some("cancelled"))
    );
    assert_eq!(s.admin("GET", "/v1/skus/A", None).json()["available"], 10);
    s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/orders/{id2}/pay"),
        Some(r#"{"amount":40}"#),
    )
    .assert_problem(409, "invalid_transition");
    let cancelled: Vec<Value> = s
        .all_events()
        .into_iter()
        .filter(|e| e["type"] == "order.cancelled")
        .collect();
    assert_eq!(cancelled.len(), 1);
    assert_eq!(cancelled[0]["reason"], "customer_request");
    // Adopting a hold: the order takes the reservation over.
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/reservations",
        Some(r#"{"lines":[{"sku":"A","qty":3}]}"#),
    );
    let rid = r.str_field("id");
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/orders",
        Some(&format!(
            r#"{{"order_no":"N-3","customer_id":"c3","lines":[{{"sku":"A","qty":3,"unit_price":5}}],"reservation_id":"{rid}"}}"#
        )),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id3 = r.str_field("id");
    assert_eq!(r.json()["reservation_id"], rid.as_str());
    assert_eq!(
        s.admin("GET", &format!("/v1/reservations/{rid}"), None)
            .json()["order_id"],
        id3.as_str()
    );
    assert_eq!(s.admin("GET", "/v1/skus/A", None).json()["reserved"], 3);
    s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/reservations/{rid}/release"),
        None,
    )
    .assert_problem(409, "invalid_transition");
}

#[test]
fn lists_filters_paging_export_and_stats() {
    let dir = TempDir::new("ep-lists");
    let s = Server::start(&dir.data(), "lists");
    s.define("A", 100);
    s.define("B", 100);
    let mut created = Vec::new();
    for i in 0..7 {
        let (sku, customer) = if i % 2 == 0 {
            ("A", "even")
        } else {
            ("B", "odd")
        };
        let r = s.admin(
            "POST",
            "/v1/orders",
            Some(&format!(
                r#"{{"order_no":"L-{i}","customer_id":"{customer}","lines":[{{"sku":"{sku}","qty":{q},"unit_price":100}}]}}"#,
                q = i + 1
            )),
        );
        assert_eq!(r.status, 201, "{}", r.body);
        created.push(r.str_field("id"));
    }
    // A two-line order with CSV-hostile text.
    let r = s.admin(
        "POST",
        "/v1/orders",
        Some(r#"{"order_no":"q,\"x\"","customer_id":"odd","lines":[{"sku":"A","qty":1,"unit_price":5},{"sku":"B","qty":2,"unit_price":7}]}"#),
    );
    created.push(r.str_field("id"));
    // Pay L-0 and L-1, cancel L-2 (out_of_stock) and L-3 (customer_request).
    s.admin(
        "POST",
        &format!("/v1/orders/{}/pay", created[0]),
        Some(r#"{"amount":100}"#),
    );
    s.admin(
        "POST",
        &format!("/v1/orders/{}/pay", created[1]),
        Some(r#"{"amount":200}"#),
    );
    s.admin(
        "POST",
        &format!("/v1/orders/{}/cancel", created[2]),
        Some(r#"{"reason":"out_of_stock"}"#),
    );
    s.admin(
        "POST",
        &format!("/v1/orders/{}/cancel", created[3]),
        Some(r#"{"reason":"customer_request"}"#),
    );

    // Newest first, paged by cursor, nothing missed or repeated.
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();
    let mut seen = Vec::new();
    let mut path = "/v1/orders?limit=3".to_string();
    loop {
        let page = s.as_(VIEWER, "GET", &path, None).json();
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => path = format!("/v1/orders?limit=3&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);
    // Filters, alone and together; empty values count as absent.
    let list = |q: &str| ids(&s.admin("GET", &format!("/v1/orders?{q}"), None).json());
    assert_eq!(
        list("status=confirmed"),
        [created[1].clone(), created[0].clone()]
    );
    assert_eq!(
        list("status=cancelled&customer_id=even"),
        [created[2].clone()]
    );
    assert_eq!(list("customer_id=odd").len(), 4);
    assert_eq!(list("sku=B").len(), 4);
    assert_eq!(list("sku=B&status=reserved").len(), 2);
    // A filter sent empty is refused by name, never read as no filter (a client
    // whose variable was unset would get every customer's orders).
    for (query, field) in [
        ("status=", "status"),
        ("customer_id=&status=confirmed", "customer_id"),
        ("sku=", "sku"),
        ("on_hold=", "on_hold"),
    ] {
        let r = s.admin("GET", &format!("/v1/orders?{query}"), None);
        r.assert_problem(400, "validation_failed");
        assert_eq!(r.json()["field"], field, "{query}: {}", r.body);
        let r = s.admin("GET", &format!("/v1/orders/export.csv?{query}"), None);
        r.assert_problem(400, "validation_failed");
    }
    // A text filter no field could match (longer than the field, or holding a
    // control character) is refused by name too, not answered with an empty list.
    let long = "x".repeat(65);
    for (query, field) in [
        (format!("customer_id={long}"), "customer_id"),
        (format!("order_no={long}"), "order_no"),
        (format!("channel={long}"), "channel"),
        ("channel=%00".to_string(), "channel"),
    ] {
        let r = s.admin("GET", &format!("/v1/orders?{query}"), None);
        r.assert_problem(400, "validation_failed");
        assert_eq!(r.json()["field"], field, "{query}: {}", r.body);
    }
    assert_eq!(list(&format!("customer_id={}", "x".repeat(64))).len(), 0);
    let r = s.admin("GET", "/v1/ledger?kind=", None);
    r.assert_problem(400, "validation_failed");
    assert_eq!(r.json()["field"], "kind", "{}", r.body);
    // The report's parameters too: an empty `from` read as absent answered the
    // all-time report, an empty `group_by` alone the plain totals.
    for (query, field) in [
        ("from=&group_by=day", "from"),
        ("group_by=day&to=", "to"),
        ("group_by=", "group_by"),
        ("group_by=sku&tz=", "tz"),
        ("top=", "top"),
    ] {
        let r = s.as_(VIEWER, "GET", &format!("/v1/stats?{query}"), None);
        r.assert_problem(400, "validation_failed");
        assert_eq!(r.json()["field"], field, "{query}: {}", r.body);
    }
    // An empty cursor or limit is a paging loop's first call: the first page.
    assert_eq!(list("cursor=&limit=").len(), 8);
    assert_eq!(
        list("created_from=2000-01-01T00:00:00Z&created_to=4102444800000").len(),
        8
    );
    assert!(list("created_to=2000-01-01T00:00:00Z").is_empty());
    assert!(list("created_from=4102444800000").is_empty());
    assert!(list("customer_id=nobody").is_empty());

    // CSV: a header, one row per order line, newest first, RFC 4180 quoting.
    let r = s.as_(VIEWER, "GET", "/v1/orders/export.csv", None);
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").unwrap().starts_with("text/csv"),
        "{:?}",
        r.headers
    );
    assert!(
        r.header("content-disposition")
            .unwrap()
            .contains("orders.csv")
    );
    let rows: Vec<&str> = r.body.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 1 + 9, "{}", r.body);
    // v1's columns first; v1.1 appends its own after them.
    assert!(
        rows[0].starts_with(
            "order_id,order_no,customer_id,status,payment_status,total,created_at,updated_at,cancel_reason,sku,qty,unit_price,line_total,"
        ),
        "{}",
        rows[0]
    );
    let last = &created[7];
    assert!(
        rows[1].starts_with(&format!("{last},\"q,\"\"x\"\"\",odd,reserved,unpaid,19,")),
        "{}",
        rows[1]
    );
    assert!(rows[1].contains(",A,1,5,5,"), "{}", rows[1]);
    assert!(rows[2].contains(",B,2,7,14,"), "{}", rows[2]);
    let cancelled_row = rows
        .iter()
        .find(|r| r.starts_with(&format!("{},", created[2])))
        .unwrap();
    assert!(
        cancelled_row.contains(",cancelled,unpaid,300,"),
        "{cancelled_row}"
    );
    assert!(
        cancelled_row.contains(",out_of_stock,A,3,100,300"),
        "{cancelled_row}"
    );
    let r = s.admin("GET", "/v1/orders/export.csv?status=confirmed&sku=A", None);
    let rows: Vec<&str> = r.body.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 2, "{}", r.body);
    assert!(rows[1].starts_with(&format!("{},L-0,even,confirmed,paid,100,", created[0])));

    // Stats: every documented field.
    let st = s.as_(VIEWER, "GET", "/v1/stats?top=1", None).json();
    assert_eq!(st["orders_total"], 8);
    assert_eq!(st["orders_by_status"]["confirmed"], 2);
    assert_eq!(st["orders_by_status"]["cancelled"], 2);
    assert_eq!(st["orders_by_status"]["reserved"], 4);
    assert_eq!(st["cancellations_by_reason"]["out_of_stock"], 1);
    assert_eq!(st["cancellations_by_reason"]["customer_request"], 1);
    assert!(
        (st["cancellation_rate"].as_f64().unwrap() - 0.25).abs() < 1e-9,
        "{st}"
    );
    assert_eq!(st["paid_amount"], 300);
    assert_eq!(st["refunded_amount"], 0);
    // Held: L-4 (A 5), L-5 (B 6), L-6 (A 7), and the two-line order (A 1, B 2).
    assert_eq!(st["reservations_held"], 4);
    let top = st["top_skus"].as_array().unwrap();
    assert_eq!(top.len(), 1);
    assert_eq!(top[0]["sku"], "B");
    assert_eq!(top[0]["units_sold"], 2);
    assert_eq!(top[0]["units_held"], 8);
    assert!(st["throughput"]["commands_per_s"].is_number());
    assert!(st["throughput"]["window_s"].is_number());
    let st = s.admin("GET", "/v1/stats", None).json();
    let a = st["top_skus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["sku"] == "A")
        .unwrap()
        .clone();
    assert_eq!(
        (a["units_sold"].as_u64(), a["units_held"].as_u64()),
        (Some(1), Some(13))
    );
}

#[test]
fn batch_mixed_success_and_failure() {
    let dir = TempDir::new("ep-batch");
    let s = Server::start(&dir.data(), "batch");
    s.define("A", 5);
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/reservations",
        Some(r#"{"lines":[{"sku":"A","qty":1}]}"#),
    );
    let held = r.str_field("id");
    let body = json!({"ops": [
        {"op": "reserve", "lines": [{"sku": "A", "qty": 2}]},
        {"op": "reserve", "lines": [{"sku": "A", "qty": 50}]},
        {"op": "release", "id": held},
        {"op": "commit", "id": held},
        {"op": "create_order", "order_no": "B-1", "customer_id": "c", "lines": [{"sku": "A", "qty": 1, "unit_price": 10}]},
        {"op": "create_order", "order_no": "B-1", "customer_id": "c", "lines": [{"sku": "A", "qty": 1, "unit_price": 10}]},
        {"op": "cancel", "id": "o999", "reason": "customer_request"},
        {"op": "teleport"},
        {"op": "reserve", "lines": [{"sku": "NOPE", "qty": 1}]},
        {"op": "reserve", "lines": [{"sku": "A", "qty": 0}]},
        {"op": "commit", "id": "r999"},
        {"op": "reserve", "lines": [{"sku": "A", "qty": 1}], "extra": true},
    ]});
    let r = s.as_(STOREFRONT, "POST", "/v1/batch", Some(&body.to_string()));
    assert_eq!(r.status, 200, "{}", r.body);
    let results = r.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 12);
    assert_eq!(results[0]["status"], "held");
    assert_eq!(results[1]["code"], "insufficient_stock");
    assert_eq!(results[1]["status"], 409);
    assert_eq!(results[2]["status"], "released");
    assert_eq!(results[3]["code"], "invalid_transition");
    assert_eq!(results[4]["status"], "reserved");
    assert_eq!(results[5]["code"], "duplicate_order_no");
    assert_eq!(results[6]["code"], "unknown_order");
    assert_eq!(results[7]["code"], "validation_failed");
    assert_eq!(results[7]["field"], "ops[7].op");
    assert_eq!(results[8]["code"], "unknown_sku");
    assert_eq!(results[9]["field"], "ops[9].lines[0].qty");
    assert_eq!(results[10]["code"], "unknown_reservation");
    assert_eq!(results[11]["field"], "ops[11].extra");
    // Each op alone: 2 held by op 0, 1 by the order; the released hold is back.
    let a = s.admin("GET", "/v1/skus/A", None).json();
    assert_eq!(a["reserved"], 3, "{a}");
    let order = s.admin("GET", "/v1/orders/by-no/B-1", None).json();
    let id = order["id"].as_str().unwrap();
    let body = json!({"ops": [
        {"op": "pay", "id": id, "amount": 10},
        {"op": "cancel", "id": id, "reason": "customer_request"},
    ]});
    let results = s
        .as_(OPERATOR, "POST", "/v1/batch", Some(&body.to_string()))
        .json()["results"]
        .clone();
    assert_eq!(results[0]["status"], "confirmed");
    assert_eq!(results[1]["status"], "cancelled");
    // A storefront may not cancel with another reason, in a batch too.
    let body = json!({"ops": [{"op": "cancel", "id": id, "reason": "fraud_suspected"}]});
    let results = s
        .as_(STOREFRONT, "POST", "/v1/batch", Some(&body.to_string()))
        .json()["results"]
        .clone();
    assert_eq!(results[0]["code"], "forbidden");
    assert_eq!(
        s.as_(STOREFRONT, "POST", "/v1/batch", Some(r#"{"ops":[]}"#))
            .json(),
        json!({"results": []})
    );
}

#[test]
fn event_feed_paging_and_operations_endpoints() {
    let dir = TempDir::new("ep-ops");
    let s = Server::start(&dir.data(), "ops");
    s.define("A", 10);
    for _ in 0..5 {
        s.admin(
            "POST",
            "/v1/reservations",
            Some(r#"{"lines":[{"sku":"A","qty":1}]}"#),
        );
    }
    // Paging the feed with after/limit: the same as reading it whole.
    let all = s.all_events();
    assert_eq!(all.len(), 6, "{all:?}");
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = s
            .as_(
                VIEWER,
                "GET",
                &format!("/v1/events?after={after}&limit=2"),
                None,
            )
            .json();
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            assert_eq!(page["next"], after);
            break;
        }
        assert!(events.len() <= 2);
        paged.extend(events.iter().cloned());
        after = page["next"].as_u64().unwrap();
        assert_eq!(after, events.last().unwrap()["seq"].as_u64().unwrap());
    }
    assert_eq!(paged, all);
    assert_eq!(all[0]["type"], "sku.defined");
    assert!(all[1..].iter().all(|e| e["type"] == "reservation.held"));
    assert!(all.iter().all(|e| e["at"].is_string()));
    let last = all.last().unwrap()["seq"].as_u64().unwrap();
    let page = s
        .admin("GET", &format!("/v1/events?after={last}"), None)
        .json();
    assert_eq!(page["events"], json!([]));

    let r = s.call("GET", "/healthz", &[], None);
    assert_eq!((r.status, r.json()), (200, json!({"status": "ok"})));
    let r = s.call("GET", "/readyz", &[], None);
    assert_eq!((r.status, r.json()), (200, json!({"status": "ready"})));
    let r = s.call("GET", "/metrics", &[], None);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    for name in [
        "surge_http_requests_total",
        "surge_http_request_duration_seconds",
        "surge_engine_queue_depth",
        "surge_engine_batch_len",
        "surge_wal_bytes_total",
        "surge_wal_flush_latency_seconds",
        "surge_snapshot_age_seconds",
    ] {
        assert!(r.body.contains(name), "no {name} in /metrics");
    }
    let r = s.call("GET", "/openapi.json", &[], None);
    // The document served is the one generated (its paths: `tests/openapi.rs`).
    assert_eq!(r.status, 200);
    assert!(
        r.body == surge_api::openapi::document_json(),
        "/openapi.json is not the generated document"
    );
    let r = s.call("GET", "/", &[], None);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let r = s.admin("POST", "/v1/admin/snapshot", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let snapshot_lsn = r.json()["lsn"].as_u64().unwrap();
    assert!(snapshot_lsn >= last.min(1));
    assert_eq!(
        r.header("surge-lsn"),
        Some(snapshot_lsn.to_string().as_str()),
        "the snapshot's answer carries its LSN as Surge-Lsn"
    );
    // Unknown routes and methods, and a body of the wrong type, once more here.
    s.admin("GET", "/v1/unknown", None)
        .assert_problem(404, "not_found");
    s.admin("DELETE", "/v1/orders", None)
        .assert_problem(405, "method_not_allowed");
    s.call(
        "POST",
        "/v1/reservations",
        &[("Authorization", ADMIN), ("Content-Type", "text/plain")],
        Some("lines=A"),
    )
    .assert_problem(415, "validation_failed");
}

/// Bug: a JSON array where an object is expected is accepted (serde's derived
/// `Deserialize` for structs also reads sequences, in field order), so
/// `[[{"sku":"A","qty":1}],null]` holds stock. The contract: wrong type, 400, and
/// nothing changes.
#[test]
fn json_arrays_are_not_accepted_as_objects() {
    let dir = TempDir::new("ep-arrays");
    let s = Server::start(&dir.data(), "arrays");
    s.define("A", 10);
    let before = s.digest();
    for (path, body) in [
        ("/v1/reservations", r#"[[{"sku":"A","qty":1}],null]"#),
        ("/v1/reservations", r#"{"lines":[["A",1]]}"#),
        ("/v1/skus/A/adjustments", r#"[5,"inbound",""]"#),
        ("/v1/orders", r#"["x","c",[["A",1,1]],null,null]"#),
    ] {
        let r = s.admin("POST", path, Some(body));
        assert_eq!(r.status, 400, "POST {path} {body}: {}", r.body);
        r.assert_problem(400, "validation_failed");
    }
    // The field named: an element that must be an object, or (an outside probe) a
    // field that takes no array at all, which serde names with what it takes.
    for (body, field, detail) in [
        (
            r#"{"lines":[["A",1]]}"#,
            "lines[0]",
            "must be a JSON object",
        ),
        (r#"{"lines":[["A"]]}"#, "lines[0]", "must be a JSON object"),
        (
            r#"{"lines":[{"sku":"A","qty":1}],"ttl_ms":[[1]]}"#,
            "ttl_ms",
            "invalid type: sequence",
        ),
        (
            r#"{"lines":[{"sku":[[1]],"qty":1}]}"#,
            "lines[0].sku",
            "invalid type: sequence, expected a string",
        ),
    ] {
        let r = s.admin("POST", "/v1/reservations", Some(body));
        r.assert_problem(400, "validation_failed");
        assert_eq!(r.json()["field"], field, "{body}: {}", r.body);
        let said = r.json()["detail"].as_str().unwrap_or_default().to_string();
        assert!(said.contains(detail), "{body}: {said}");
    }
    assert_eq!(s.digest(), before, "an array body changed the state");
}

/// Bug (cosmetic): a batch op that is not an object is reported with field
/// `ops[i].body` (a `body` field that does not exist) rather than `ops[i]`.
#[test]
fn batch_problem_names_the_op() {
    let dir = TempDir::new("ep-batch-field");
    let s = Server::start(&dir.data(), "batch-field");
    let r = s.admin("POST", "/v1/batch", Some(r#"{"ops":[5]}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["results"][0]["field"], "ops[0]", "{}", r.body);
}

/// Holds and unpaid orders expire on their own: the units come back, the events say
/// so, and late actions are refused.
#[test]
fn holds_and_unpaid_orders_expire() {
    let dir = TempDir::new("ep-expiry");
    let s = Server::start(&dir.data(), "expiry");
    s.define("X", 10);
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/reservations",
        Some(r#"{"lines":[{"sku":"X","qty":3}],"ttl_ms":1000}"#),
    );
    let rid = r.str_field("id");
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/orders",
        Some(r#"{"order_no":"slow/payer","customer_id":"c","lines":[{"sku":"X","qty":2,"unit_price":10}],"payment_ttl_ms":1000}"#),
    );
    let oid = r.str_field("id");
    assert_eq!(s.admin("GET", "/v1/skus/X", None).json()["available"], 5);
    common::eventually("the hold and the order to expire", || {
        let res = s
            .admin("GET", &format!("/v1/reservations/{rid}"), None)
            .json();
        let ord = s.admin("GET", &format!("/v1/orders/{oid}"), None).json();
        res["status"] == "expired" && ord["status"] == "expired"
    });
    assert_eq!(s.admin("GET", "/v1/skus/X", None).json()["available"], 10);
    let types: Vec<String> = s
        .all_events()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert!(types.contains(&"reservation.expired".into()), "{types:?}");
    assert!(types.contains(&"order.expired".into()), "{types:?}");
    s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/reservations/{rid}/commit"),
        None,
    )
    .assert_problem(409, "invalid_transition");
    s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/orders/{oid}/pay"),
        Some(r#"{"amount":20}"#),
    )
    .assert_problem(409, "invalid_transition");
    // by-no with a percent-encoded order number.
    let r = s.as_(VIEWER, "GET", "/v1/orders/by-no/slow%2Fpayer", None);
    assert_eq!(
        (r.status, r.json()["id"].as_str()),
        (200, Some(oid.as_str())),
        "{}",
        r.body
    );
    assert_eq!(
        s.admin("GET", "/v1/stats", None).json()["orders_by_status"]["expired"],
        1
    );
}
