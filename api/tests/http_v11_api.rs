//! v1.1 API additions over HTTP, against the real binary: strict query strings,
//! named tokens, the CSV byte-order mark, the Excel export and stats over time windows.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]

mod common;

use std::net::SocketAddr;

use common::{ADMIN, OPERATOR, STOREFRONT, Server, TempDir, VIEWER};

/// A GET whose body is kept as bytes (`Resp` holds text).
fn get_bytes(addr: SocketAddr, path: &str, token: &str) -> (u16, common::Headers, Vec<u8>) {
    common::send_bytes(addr, "GET", path, &[("Authorization", token)], b"").unwrap()
}

/// A header of [`get_bytes`]'s answer (whose names are lower-case).
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Create an order as storefront, returning its JSON.
fn create_order(s: &Server, order_no: &str, customer: &str, lines: &str) -> serde_json::Value {
    create_order_with(s, order_no, customer, lines, "")
}

/// Create an order with more fields (`extra` starts with a comma).
fn create_order_with(
    s: &Server,
    order_no: &str,
    customer: &str,
    lines: &str,
    extra: &str,
) -> serde_json::Value {
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/orders",
        Some(&format!(
            r#"{{"order_no":"{order_no}","customer_id":"{customer}","lines":{lines}{extra}}}"#
        )),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

/// Hold one unit of `A` as storefront, returning the reservation's id.
fn hold_one_a(s: &Server) -> String {
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/reservations",
        Some(r#"{"lines":[{"sku":"A","qty":1}]}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()["id"].as_str().unwrap().to_string()
}

// ---------------------------------------------------------------- strict queries

#[test]
fn unknown_query_parameters_are_refused_by_name() {
    let dir = TempDir::new("v11-query");
    let s = Server::start(&dir.data(), "v11-query");
    s.define("A", 10);
    let order = create_order(&s, "Q-1", "c1", r#"[{"sku":"A","qty":1,"unit_price":100}]"#);
    let id = order["id"].as_str().unwrap();
    let rid = hold_one_a(&s);

    // (path, the unknown parameter): a typo of a real filter, a stranger, and a
    // parameter of a sibling endpoint (paging on the export, `top` elsewhere).
    let cases = [
        ("/v1/orders?stauts=cancelled".to_string(), "stauts"),
        ("/v1/orders?status=reserved&foo=1".to_string(), "foo"),
        ("/v1/orders/export.csv?customer=c1".to_string(), "customer"),
        ("/v1/orders/export.csv?limit=10".to_string(), "limit"),
        ("/v1/orders/export.csv?cursor=o1".to_string(), "cursor"),
        ("/v1/ledger/export.csv?limit=2".to_string(), "limit"),
        ("/v1/ledger/export.csv?cursor=1".to_string(), "cursor"),
        ("/v1/stats?tops=3".to_string(), "tops"),
        ("/v1/stats?group=day".to_string(), "group"),
        ("/v1/skus?limt=2".to_string(), "limt"),
        ("/v1/events?afterr=3".to_string(), "afterr"),
        ("/v1/events?after=0&limit=10&x=1".to_string(), "x"),
        ("/v1/skus/A?verbose=true".to_string(), "verbose"),
        (format!("/v1/orders/{id}?expand=history"), "expand"),
        ("/v1/orders/by-no/Q-1?x=1".to_string(), "x"),
        (format!("/v1/reservations/{rid}?y=2"), "y"),
        // The operations endpoints too ("on reads and writes alike").
        ("/healthz?x=1".to_string(), "x"),
        ("/readyz?probe=1".to_string(), "probe"),
        ("/metrics?x=1".to_string(), "x"),
        ("/openapi.json?v=2".to_string(), "v"),
    ];
    for (path, parameter) in &cases {
        let r = s.as_(ADMIN, "GET", path, None);
        r.assert_problem(400, "validation_failed");
        let problem = r.json();
        assert_eq!(problem["field"], *parameter, "{path}: {}", r.body);
        let detail = problem["detail"].as_str().unwrap();
        assert!(
            detail.starts_with(&format!("{parameter}: unknown query parameter")),
            "{path}: {detail}"
        );
    }
    // The export.xlsx, when it exists, is held to the same rule (checked in its test).

    // Known parameters still work, and so does an empty cursor (a filter sent
    // empty is refused: `http_endpoints.rs`).
    for path in [
        "/v1/orders?status=reserved&limit=5".to_string(),
        "/v1/orders?cursor=&customer_id=c1".to_string(),
        "/v1/orders/export.csv?customer_id=c1&bom=false".to_string(),
        "/v1/stats?top=3".to_string(),
        "/v1/skus?limit=2".to_string(),
        "/v1/events?after=0&limit=10".to_string(),
        "/v1/skus/A".to_string(),
        format!("/v1/orders/{id}"),
    ] {
        let r = s.as_(ADMIN, "GET", &path, None);
        assert_eq!(r.status, 200, "{path}: {}", r.body);
    }
    // A refused request is refused before any work: a viewer gets the same 400.
    let r = s.as_(VIEWER, "GET", "/v1/orders?sttus=x", None);
    r.assert_problem(400, "validation_failed");
    // A value that is not UTF-8 once decoded is refused by name, as in a path (it
    // was read as U+FFFD and answered 200 with an empty list).
    let r = s.as_(VIEWER, "GET", "/v1/orders?customer_id=%FF", None);
    r.assert_problem(400, "validation_failed");
    assert_eq!(r.json()["field"], "customer_id", "{}", r.body);
}

/// A `delta` past the schema's range is a bad field (400), changing nothing (it
/// was 409 `invalid_transition` below the range); a `tracking_no` is kept by the
/// shipment only, as documented.
#[test]
fn a_delta_out_of_range_is_a_bad_field_and_tracking_no_is_kept_by_the_shipment() {
    let dir = TempDir::new("v11-fields");
    let s = Server::start(&dir.data(), "v11-fields");
    s.define("A", 10);
    let before = s.admin("GET", "/v1/skus/A", None).body;
    for delta in ["-1000000000001", "-9223372036854775808", "1000000000001"] {
        let r = s.as_(
            OPERATOR,
            "POST",
            "/v1/skus/A/adjustments",
            Some(&format!(r#"{{"delta":{delta},"reason":"correction"}}"#)),
        );
        r.assert_problem(400, "validation_failed");
        assert_eq!(r.json()["field"], "delta", "{delta}: {}", r.body);
    }
    assert_eq!(s.admin("GET", "/v1/skus/A", None).body, before);

    let order = create_order(&s, "T-1", "c1", r#"[{"sku":"A","qty":1,"unit_price":100}]"#);
    let id = order["id"].as_str().unwrap();
    let paid = s.as_(
        OPERATOR,
        "POST",
        &format!("/v1/orders/{id}/pay"),
        Some(r#"{"amount":100}"#),
    );
    assert_eq!(paid.status, 200, "{}", paid.body);
    let step = |body: &str| {
        s.as_(
            OPERATOR,
            "POST",
            &format!("/v1/orders/{id}/transitions"),
            Some(body),
        )
    };
    // Ignored before the shipment (checked all the same), kept by it.
    let early = step(r#"{"to":"picking","tracking_no":"EARLY"}"#);
    assert_eq!(early.status, 200, "{}", early.body);
    assert_eq!(early.json()["tracking_no"], "");
    let too_long = format!(r#"{{"to":"packed","tracking_no":"{}"}}"#, "x".repeat(501));
    step(&too_long).assert_problem(400, "validation_failed");
    assert_eq!(step(r#"{"to":"packed"}"#).status, 200);
    let shipped = step(r#"{"to":"shipped","tracking_no":"SF-1"}"#);
    assert_eq!(shipped.status, 200, "{}", shipped.body);
    assert_eq!(shipped.json()["tracking_no"], "SF-1");
}

/// Writes are held to the same rule as reads: a parameter on a write is refused by
/// name before anything is done (`?dry_run=true` on a commit used to commit), and
/// nothing changes.
#[test]
fn unknown_query_parameters_on_writes_are_refused_and_change_nothing() {
    let dir = TempDir::new("v11-write-query");
    let s = Server::start(&dir.data(), "v11-write-query");
    s.define("A", 10);
    let order = create_order(&s, "W-1", "c1", r#"[{"sku":"A","qty":1,"unit_price":100}]"#);
    let id = order["id"].as_str().unwrap().to_string();
    let rid = hold_one_a(&s);
    let before = s.digest();
    let reserve = r#"{"lines":[{"sku":"A","qty":1}]}"#;
    let cases: Vec<(&str, &str, String, Option<&str>)> = vec![
        (
            STOREFRONT,
            "POST",
            "/v1/reservations?foo=1".into(),
            Some(reserve),
        ),
        (
            STOREFRONT,
            "POST",
            format!("/v1/reservations/{rid}/commit?dry_run=true"),
            None,
        ),
        (
            STOREFRONT,
            "POST",
            format!("/v1/reservations/{rid}/release?x=1"),
            None,
        ),
        (
            STOREFRONT,
            "POST",
            "/v1/orders?validate_only=true".into(),
            Some(
                r#"{"order_no":"W-2","customer_id":"c1","lines":[{"sku":"A","qty":1,"unit_price":1}]}"#,
            ),
        ),
        (
            STOREFRONT,
            "POST",
            format!("/v1/orders/{id}/pay?x=1"),
            Some(r#"{"amount":100}"#),
        ),
        (
            STOREFRONT,
            "POST",
            format!("/v1/orders/{id}/cancel?x=1"),
            Some(r#"{"reason":"customer_request"}"#),
        ),
        (
            STOREFRONT,
            "PATCH",
            format!("/v1/orders/{id}?x=1"),
            Some(r#"{"note":"n"}"#),
        ),
        (
            OPERATOR,
            "POST",
            format!("/v1/orders/{id}/hold?x=1"),
            Some(r#"{"reason":"fraud_check"}"#),
        ),
        (
            OPERATOR,
            "POST",
            "/v1/skus/A/adjustments?x=1".into(),
            Some(r#"{"delta":5,"reason":"inbound"}"#),
        ),
        (
            ADMIN,
            "PUT",
            "/v1/skus/A?x=1".into(),
            Some(r#"{"on_hand":99}"#),
        ),
        (
            STOREFRONT,
            "POST",
            "/v1/batch?x=1".into(),
            Some(r#"{"ops":[{"op":"reserve","lines":[{"sku":"A","qty":1}]}]}"#),
        ),
        (ADMIN, "POST", "/v1/admin/snapshot?x=1".into(), None),
    ];
    for (token, method, path, body) in &cases {
        let r = s.as_(token, method, path, *body);
        r.assert_problem(400, "validation_failed");
        let problem = r.json();
        let parameter = path.split('?').nth(1).unwrap().split('=').next().unwrap();
        assert_eq!(problem["field"], parameter, "{method} {path}: {}", r.body);
    }
    assert_eq!(s.digest(), before, "a refused write changed something");
    // The same writes without the parameter go through.
    let r = s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/reservations/{rid}/commit"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// An endpoint that takes no body (commit, release, snapshot) accepts none or `{}`,
/// and refuses any other body as a body is refused elsewhere: malformed JSON, a
/// field (named), a body that is not JSON (415). A refused request changes nothing.
#[test]
fn a_body_on_an_endpoint_that_takes_none_is_refused() {
    let dir = TempDir::new("v11-no-body");
    let s = Server::start(&dir.data(), "v11-no-body");
    s.define("A", 10);
    let rid = hold_one_a(&s);
    let before = s.digest();
    for step in ["commit", "release"] {
        let path = format!("/v1/reservations/{rid}/{step}");
        let r = s.as_(STOREFRONT, "POST", &path, Some("{not json"));
        r.assert_problem(400, "validation_failed");
        let r = s.as_(STOREFRONT, "POST", &path, Some(r#"{"reason":"x"}"#));
        r.assert_problem(400, "validation_failed");
        assert_eq!(r.json()["field"], "reason", "{}", r.body);
        let r = s.call(
            "POST",
            &path,
            &[
                ("Authorization", STOREFRONT),
                ("Content-Type", "text/plain"),
            ],
            Some("garbage"),
        );
        r.assert_problem(415, "validation_failed");
    }
    let r = s.as_(ADMIN, "POST", "/v1/admin/snapshot", Some(r#"{"x":1}"#));
    r.assert_problem(400, "validation_failed");
    assert_eq!(s.digest(), before, "a refused request changed something");
    // No body, an empty object, or whitespace: taken.
    let r = s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/reservations/{rid}/commit"),
        Some("{}"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let other = hold_one_a(&s);
    let r = s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/reservations/{other}/release"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = s.as_(ADMIN, "POST", "/v1/admin/snapshot", Some(" \n"));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A `PATCH` that names nothing to change (none of `lines`, `shipping_address`,
/// `note`; a `reason` alone changes nothing) is refused, not logged as a
/// modification and announced with an `order.modified` of no change. A field given
/// as null is refused naming it: `"shipping_address": null` passed as omitted, so
/// an address a client meant to remove was kept (and with a note beside it, 200).
#[test]
fn a_modification_that_names_nothing_to_change_is_refused() {
    let dir = TempDir::new("v11-empty-patch");
    let s = Server::start(&dir.data(), "v11-empty-patch");
    s.define("A", 10);
    let order = create_order(&s, "E-1", "c1", r#"[{"sku":"A","qty":1,"unit_price":100}]"#);
    let path = format!("/v1/orders/{}", order["id"].as_str().unwrap());
    let before = s.digest();
    for (body, field) in [
        ("{}", "body"),
        (r#"{"reason":"customer_request"}"#, "body"),
        (r#"{"shipping_address":null}"#, "shipping_address"),
        (
            r#"{"note":"at the door","shipping_address":null}"#,
            "shipping_address",
        ),
        (r#"{"lines":null,"note":"x"}"#, "lines"),
        (r#"{"note":null}"#, "note"),
    ] {
        let r = s.as_(STOREFRONT, "PATCH", &path, Some(body));
        r.assert_problem(400, "validation_failed");
        assert_eq!(r.json()["field"], field, "{body}: {}", r.body);
    }
    assert_eq!(
        s.digest(),
        before,
        "a refused modification changed something"
    );
    let r = s.as_(
        STOREFRONT,
        "PATCH",
        &path,
        Some(r#"{"note":"leave at the door"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Paying a paid order again answers it as it is only with the same
/// `payment_ref`; another reference is 409 `invalid_transition` and changes
/// nothing (it was answered 200 as paid, and the second charge went unrecorded:
/// no ledger entry, no event).
#[test]
fn a_second_payment_with_another_reference_is_refused() {
    let dir = TempDir::new("v11-pay-twice");
    let s = Server::start(&dir.data(), "v11-pay-twice");
    s.define("A", 10);
    let order = create_order(&s, "P-1", "c1", r#"[{"sku":"A","qty":2,"unit_price":150}]"#);
    let pay = format!("/v1/orders/{}/pay", order["id"].as_str().unwrap());
    let first = s.as_(
        STOREFRONT,
        "POST",
        &pay,
        Some(r#"{"amount":300,"payment_ref":"pay-1"}"#),
    );
    assert_eq!(first.status, 200, "{}", first.body);
    let before = s.digest();
    let again = s.as_(
        STOREFRONT,
        "POST",
        &pay,
        Some(r#"{"amount":300,"payment_ref":"pay-1"}"#),
    );
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(again.json()["payment"], first.json()["payment"]);
    let other = s.as_(
        STOREFRONT,
        "POST",
        &pay,
        Some(r#"{"amount":300,"payment_ref":"pay-2"}"#),
    );
    other.assert_problem(409, "invalid_transition");
    assert!(other.body.contains("pay-1"), "{}", other.body);
    assert_eq!(
        s.digest(),
        before,
        "a refused second payment changed something"
    );
}

/// A path parameter that cannot be read (its percent-encoding is not UTF-8) is
/// refused naming it, like any field.
#[test]
fn an_unreadable_path_parameter_is_named() {
    let dir = TempDir::new("v11-path");
    let s = Server::start(&dir.data(), "v11-path");
    for (path, field) in [
        ("/v1/reservations/%FF", "id"),
        ("/v1/orders/by-no/%E4%E4%E4", "order_no"),
        ("/v1/skus/%FF/customers/c1", "sku"),
    ] {
        let r = s.as_(ADMIN, "GET", path, None);
        r.assert_problem(400, "validation_failed");
        assert_eq!(r.json()["field"], field, "{path}: {}", r.body);
    }
    let r = s.as_(STOREFRONT, "POST", "/v1/reservations/%FF/commit", None);
    r.assert_problem(400, "validation_failed");
    assert_eq!(r.json()["field"], "id", "{}", r.body);
}

/// API.md's rule for `payment.status` (first match wins; `paid` only if
/// paid_amount > 0), also for an order of total 0 that went through payment: it
/// is confirmed, and nothing was paid. The list filter and the CSV agree.
#[test]
fn a_paid_order_of_total_zero_shows_what_was_paid() {
    let dir = TempDir::new("v11-zero");
    let s = Server::start(&dir.data(), "v11-zero");
    s.define("A", 10);
    let order = create_order(&s, "Z-1", "c1", r#"[{"sku":"A","qty":1,"unit_price":0}]"#);
    let id = order["id"].as_str().unwrap().to_string();
    let r = s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/orders/{id}/pay"),
        Some(r#"{"amount":0}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let paid = r.json();
    assert_eq!(paid["status"], "confirmed", "{}", r.body);
    assert_eq!(paid["payment"]["paid_amount"], 0, "{}", r.body);
    assert_eq!(paid["payment"]["status"], "unpaid", "{}", r.body);
    let listed = s
        .admin("GET", "/v1/orders?payment_status=unpaid", None)
        .json();
    let ids: Vec<_> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].clone())
        .collect();
    assert!(ids.contains(&serde_json::json!(id)), "{listed}");
    let listed = s
        .admin("GET", "/v1/orders?payment_status=paid", None)
        .json();
    assert!(listed["items"].as_array().unwrap().is_empty(), "{listed}");
    // Paying again is a repeat, not a second payment.
    let again = s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/orders/{id}/pay"),
        Some(r#"{"amount":0}"#),
    );
    assert_eq!(again.status, 200, "{}", again.body);
    let csv = s.admin("GET", "/v1/orders/export.csv?bom=false", None);
    assert_eq!(csv.status, 200, "{}", csv.body);
    let row = csv.body.lines().nth(1).unwrap();
    assert!(row.contains(",confirmed,unpaid,"), "{row}");
}

// ---------------------------------------------------------------- CSV byte-order mark

#[test]
fn csv_export_starts_with_a_bom_only_when_asked() {
    let dir = TempDir::new("v11-bom");
    let s = Server::start(&dir.data(), "v11-bom");
    s.define("TEA", 10);
    create_order(
        &s,
        "BOM-1",
        "张三",
        r#"[{"sku":"TEA","qty":2,"unit_price":350}]"#,
    );

    let (status, headers, body) = get_bytes(s.addr, "/v1/orders/export.csv?bom=true", ADMIN);
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/csv; charset=utf-8")
    );
    assert_eq!(&body[..3], [0xEF, 0xBB, 0xBF], "{body:?}");
    let text = std::str::from_utf8(&body[3..]).unwrap();
    assert!(text.starts_with("order_id,order_no,customer_id,"), "{text}");
    assert!(text.contains(",张三,"), "{text}");

    for path in ["/v1/orders/export.csv", "/v1/orders/export.csv?bom=false"] {
        let (status, _, body) = get_bytes(s.addr, path, ADMIN);
        assert_eq!(status, 200);
        assert!(body.starts_with(b"order_id,"), "{path}: {body:?}");
    }
    let r = s.as_(ADMIN, "GET", "/v1/orders/export.csv?bom=yes", None);
    r.assert_problem(400, "validation_failed");
    assert_eq!(r.json()["field"], "bom");
}

// ---------------------------------------------------------------- named tokens

#[test]
fn a_named_token_sets_the_actor_and_keeps_x_actor_as_on_behalf_of() {
    let dir = TempDir::new("v11-named");
    let tokens_file = dir.path().join("tokens");
    std::fs::write(
        &tokens_file,
        "# named tokens\noperator tk-lily lily\nstorefront tk-shop checkout-1\n",
    )
    .unwrap();
    let s = Server::start_with(
        &dir.data(),
        "v11-named",
        &[("SURGE_TOKENS_FILE", tokens_file.to_str().unwrap())],
    );
    s.define("A", 10);
    let lily = "Bearer tk-lily";
    let call = |token: &str, path: &str, body: &str, x_actor: Option<&str>| {
        let mut headers = vec![("Authorization", token)];
        if let Some(x) = x_actor {
            headers.push(("X-Actor", x));
        }
        s.call("POST", path, &headers, Some(body))
    };

    // Named storefront token without X-Actor: the actor is role:name.
    let r = call(
        "Bearer tk-shop",
        "/v1/orders",
        r#"{"order_no":"N-1","customer_id":"c1","lines":[{"sku":"A","qty":1,"unit_price":100}]}"#,
        None,
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let id = r.json()["id"].as_str().unwrap().to_string();
    // Named operator token with X-Actor: the actor stays operator:lily; cs-7 is
    // whom she acted for.
    let r = call(
        lily,
        &format!("/v1/orders/{id}/pay"),
        r#"{"amount":100,"payment_ref":"p-1"}"#,
        Some("cs-7"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let r = call(
        lily,
        &format!("/v1/orders/{id}/cancel"),
        r#"{"reason":"out_of_stock","note":"gone"}"#,
        Some("cs-9"),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let order = r.json();
    let history = order["history"].as_array().unwrap();
    let actors: Vec<(&str, Option<&str>)> = history
        .iter()
        .map(|h| (h["actor"].as_str().unwrap(), h["on_behalf_of"].as_str()))
        .collect();
    assert_eq!(
        actors,
        [
            ("storefront:checkout-1", None),
            ("operator:lily", Some("cs-7")),
            ("operator:lily", Some("cs-9")),
        ],
        "{order}"
    );
    // Absent, not null, when nobody was acted for.
    assert!(history[0].get("on_behalf_of").is_none(), "{order}");
    assert_eq!(order["cancellation"]["actor"], "operator:lily");
    assert_eq!(order["cancellation"]["on_behalf_of"], "cs-9");
    // The same through a read, and in the event feed.
    let read = s.admin("GET", &format!("/v1/orders/{id}"), None).json();
    assert_eq!(read["history"], order["history"]);
    let events = s.all_events();
    let cancelled = events
        .iter()
        .find(|e| e["type"] == "order.cancelled")
        .expect("order.cancelled");
    assert_eq!(cancelled["actor"], "operator:lily", "{cancelled}");
    assert_eq!(cancelled["on_behalf_of"], "cs-9", "{cancelled}");
    // Who created and who paid (the v1.4 rules; they carried no actor).
    let told = |ty: &str| {
        let e = events.iter().find(|e| e["type"] == ty).expect(ty);
        (e["actor"].clone(), e["on_behalf_of"].clone())
    };
    assert_eq!(
        told("order.created"),
        (
            serde_json::json!("storefront:checkout-1"),
            serde_json::Value::Null
        )
    );
    assert_eq!(
        told("order.paid"),
        (
            serde_json::json!("operator:lily"),
            serde_json::json!("cs-7")
        )
    );

    // Unnamed tokens behave as before: X-Actor refines the actor.
    let r = call(
        common::STOREFRONT,
        "/v1/orders",
        r#"{"order_no":"N-2","customer_id":"c2","lines":[{"sku":"A","qty":1,"unit_price":100}]}"#,
        Some("alice"),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let h = &r.json()["history"][0];
    assert_eq!(h["actor"], "storefront:alice");
    assert!(h.get("on_behalf_of").is_none(), "{h}");

    // A named token's X-Actor is still checked.
    let r = call(
        lily,
        &format!("/v1/orders/{id}/cancel"),
        r#"{"reason":"out_of_stock"}"#,
        Some(&"x".repeat(65)),
    );
    r.assert_problem(400, "validation_failed");
    assert_eq!(r.json()["field"], "X-Actor");
}

#[test]
fn a_bad_token_name_stops_start_up_with_a_clear_error() {
    let dir = TempDir::new("v11-badname");
    let tokens_file = dir.path().join("tokens");
    std::fs::write(
        &tokens_file,
        format!("operator tk-1 ok\nviewer tk-2 {}\n", "n".repeat(33)),
    )
    .unwrap();
    let mut command = common::surge_command("127.0.0.1:0", &dir.data());
    command.env("SURGE_TOKENS_FILE", &tokens_file);
    let stderr = common::refused_start(command);
    assert!(
        stderr.contains("tokens file line 2") && stderr.contains("1..=32 bytes"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------- Excel export

/// Excel's serial date-time of a `created_at` such as `2026-11-30T12:00:00.123Z`.
fn excel_serial_of(rfc3339: &str) -> f64 {
    let (date, time) = rfc3339.trim_end_matches('Z').split_once('T').unwrap();
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let t: Vec<f64> = time.split(':').map(|p| p.parse().unwrap()).collect();
    // Days from 1899-12-30 by counting: fine for a test.
    let days_before = |y: i64, m: i64| -> i64 {
        let leap = |y: i64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
        let mut days = 0;
        for year in 1900..y {
            days += if leap(year) { 366 } else { 365 };
        }
        let month_days = [
            31,
            if leap(y) { 29 } else { 28 },
            31,
            30,
            31,
            30,
            31,
            31,
            30,
            31,
            30,
            31,
        ];
        days + month_days[..(m - 1) as usize].iter().sum::<i64>()
    };
    // Serial 1 is 1900-01-01, and Excel counts 1900-02-29 (serial 60), which never was.
    let serial_days = days_before(d[0], d[1]) + d[2] + 1;
    serial_days as f64 + (t[0] * 3600.0 + t[1] * 60.0 + t[2]) / 86_400.0
}

#[test]
fn xlsx_export_holds_the_orders_with_typed_cells_and_a_frozen_header() {
    use calamine::{Data, Reader, Xlsx};

    let dir = TempDir::new("v11-xlsx");
    let s = Server::start(&dir.data(), "v11-xlsx");
    s.define("TEA", 100);
    s.define("CUP", 100);
    let first = create_order_with(
        &s,
        "X-1",
        "张三",
        r#"[{"sku":"TEA","qty":2,"unit_price":350},{"sku":"CUP","qty":1,"unit_price":1200}]"#,
        r#","channel":"tmall","shipping_address":{"name":"张三","phone":"013800000000","city":"杭州"}"#,
    );
    let second = create_order(
        &s,
        "X-2",
        "c2",
        r#"[{"sku":"TEA","qty":5,"unit_price":300}]"#,
    );
    let r = s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/orders/{}/pay", second["id"].as_str().unwrap()),
        Some(r#"{"amount":1500}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // Another customer's order, left out by the filter below.
    create_order(
        &s,
        "Y-1",
        "c3",
        r#"[{"sku":"CUP","qty":1,"unit_price":1200}]"#,
    );

    let (status, headers, body) = get_bytes(s.addr, "/v1/orders/export.xlsx?order_no=X-", VIEWER);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(
        header(&headers, "content-type"),
        Some("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")
    );
    assert!(
        header(&headers, "content-disposition")
            .unwrap()
            .contains("orders.xlsx"),
        "{headers:?}"
    );
    assert!(header(&headers, "x-export-truncated").is_none());

    let mut workbook: Xlsx<_> = Xlsx::new(std::io::Cursor::new(body.clone())).unwrap();
    let sheet = workbook.worksheet_range("orders").unwrap();
    let rows: Vec<&[Data]> = sheet.rows().collect();
    // The header is the CSV's.
    let csv = s.as_(VIEWER, "GET", "/v1/orders/export.csv", None);
    let csv_header: Vec<&str> = csv.body.split("\r\n").next().unwrap().split(',').collect();
    let header_row: Vec<String> = rows[0].iter().map(|c| c.to_string()).collect();
    assert_eq!(header_row, csv_header);
    let col = |name: &str| csv_header.iter().position(|h| *h == name).unwrap();

    // Newest first: X-2's line, then X-1's two lines.
    assert_eq!(rows.len(), 1 + 3, "{rows:?}");
    let text = |row: usize, name: &str| match &rows[row][col(name)] {
        Data::String(s) => s.clone(),
        Data::Empty => String::new(),
        other => panic!("{name} in row {row} is not text: {other:?}"),
    };
    let number = |row: usize, name: &str| match &rows[row][col(name)] {
        Data::Float(f) => *f,
        Data::Int(i) => *i as f64,
        other => panic!("{name} in row {row} is not a number: {other:?}"),
    };
    assert_eq!(text(1, "order_id"), second["id"].as_str().unwrap());
    assert_eq!(text(1, "order_no"), "X-2");
    assert_eq!(text(1, "payment_status"), "paid");
    assert_eq!(number(1, "total"), 1500.0);
    assert_eq!(number(1, "qty"), 5.0);
    assert_eq!(number(1, "paid_amount"), 1500.0);
    assert_eq!(text(2, "order_no"), "X-1");
    assert_eq!(text(2, "customer_id"), "张三");
    assert_eq!(text(2, "sku"), "TEA");
    assert_eq!(number(2, "unit_price"), 350.0);
    assert_eq!(number(2, "line_total"), 700.0);
    assert_eq!(text(3, "sku"), "CUP");
    assert_eq!(number(3, "line_total"), 1200.0);
    assert_eq!(number(3, "total"), 1900.0);
    assert_eq!(text(3, "cancel_reason"), "");
    // The v1.1 columns: channel, the address (a phone stays text, leading zero and
    // all), amounts.
    assert_eq!(text(2, "channel"), "tmall");
    assert_eq!(text(2, "shipping_name"), "张三");
    assert_eq!(text(2, "shipping_phone"), "013800000000");
    assert_eq!(text(2, "shipping_city"), "杭州");
    assert_eq!(text(2, "shipping_province"), "");
    assert_eq!(number(2, "refund_due_amount"), 0.0);
    assert_eq!(text(1, "channel"), "");
    // Times are date cells holding the order's creation instant.
    match &rows[2][col("created_at")] {
        Data::DateTime(at) => {
            let expected = excel_serial_of(first["created_at"].as_str().unwrap());
            assert!(
                (at.as_f64() - expected).abs() < 1e-6,
                "{} vs {expected}",
                at.as_f64()
            );
        }
        other => panic!("created_at is not a date cell: {other:?}"),
    }

    // The header row is frozen.
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(body)).unwrap();
    let mut xml = String::new();
    std::io::Read::read_to_string(
        &mut zip.by_name("xl/worksheets/sheet1.xml").unwrap(),
        &mut xml,
    )
    .unwrap();
    assert!(
        xml.contains(r#"ySplit="1""#) && xml.contains(r#"state="frozen""#),
        "{:.600}",
        xml
    );

    // Same filters and strictness as the CSV; `bom` is a CSV option.
    for (path, field) in [
        ("/v1/orders/export.xlsx?bom=true", "bom"),
        ("/v1/orders/export.xlsx?statu=paid", "statu"),
        ("/v1/orders/export.xlsx?limit=10", "limit"),
        ("/v1/orders/export.xlsx?status=lost", "status"),
    ] {
        let r = s.as_(VIEWER, "GET", path, None);
        r.assert_problem(400, "validation_failed");
        assert_eq!(r.json()["field"], field, "{path}");
    }
    // A storefront may not export.
    let r = s.as_(STOREFRONT, "GET", "/v1/orders/export.xlsx", None);
    r.assert_problem(403, "forbidden");
    // An empty export is a header row.
    let (status, _, body) = get_bytes(s.addr, "/v1/orders/export.xlsx?customer_id=nobody", ADMIN);
    assert_eq!(status, 200);
    let mut workbook: Xlsx<_> = Xlsx::new(std::io::Cursor::new(body)).unwrap();
    assert_eq!(
        workbook.worksheet_range("orders").unwrap().rows().count(),
        1
    );
}

// ---------------------------------------------------------------- stats over windows

/// The day after `YYYY-MM-DD`.
fn next_day(date: &str) -> String {
    let d: Vec<u32> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (y, m, day) = (d[0], d[1], d[2]);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let len = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ][m as usize - 1];
    let (y, m, day) = if day < len {
        (y, m, day + 1)
    } else if m < 12 {
        (y, m + 1, 1)
    } else {
        (y + 1, 1, 1)
    };
    format!("{y:04}-{m:02}-{day:02}")
}

/// The Asia/Shanghai (UTC+8, no daylight saving) day of a UTC `created_at`: the next
/// day from 16:00 UTC on.
fn shanghai_day(created_at: &str) -> String {
    let date = &created_at[..10];
    let hour: u32 = created_at[11..13].parse().unwrap();
    if hour >= 16 {
        next_day(date)
    } else {
        date.to_string()
    }
}

#[test]
fn shanghai_days_roll_over_at_16_utc() {
    assert_eq!(shanghai_day("2026-11-29T23:30:00.000Z"), "2026-11-30");
    assert_eq!(shanghai_day("2026-11-29T15:59:59.999Z"), "2026-11-29");
    assert_eq!(shanghai_day("2026-12-31T16:00:00.000Z"), "2027-01-01");
    assert_eq!(shanghai_day("2028-02-28T20:00:00.000Z"), "2028-02-29");
}

#[test]
fn stats_over_a_window_grouped_by_time_sku_customer_reason_and_channel() {
    use std::collections::BTreeMap;

    let dir = TempDir::new("v11-stats");
    let s = Server::start(&dir.data(), "v11-stats");
    s.define("TEA", 100);
    s.define("CUP", 100);
    let op = |path: &str, body: &str| {
        let r = s.as_(common::OPERATOR, "POST", path, Some(body));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.json()
    };
    // o1: paid, 2 TEA + 1 CUP. o2: unpaid. o3: cancelled out of stock. o4: paid,
    // cancelled at the customer's request, refunded.
    let o1 = create_order_with(
        &s,
        "S-1",
        "c1",
        r#"[{"sku":"TEA","qty":2,"unit_price":350},{"sku":"CUP","qty":1,"unit_price":1200}]"#,
        r#","channel":"tmall""#,
    );
    let o2 = create_order_with(
        &s,
        "S-2",
        "c2",
        r#"[{"sku":"TEA","qty":5,"unit_price":300}]"#,
        r#","channel":"jd""#,
    );
    let o3 = create_order_with(
        &s,
        "S-3",
        "c1",
        r#"[{"sku":"CUP","qty":1,"unit_price":1200}]"#,
        r#","channel":"tmall""#,
    );
    let o4 = create_order(
        &s,
        "S-4",
        "c3",
        r#"[{"sku":"TEA","qty":1,"unit_price":100}]"#,
    );
    let id = |o: &serde_json::Value| o["id"].as_str().unwrap().to_string();
    op(&format!("/v1/orders/{}/pay", id(&o1)), r#"{"amount":1900}"#);
    op(
        &format!("/v1/orders/{}/cancel", id(&o3)),
        r#"{"reason":"out_of_stock"}"#,
    );
    op(&format!("/v1/orders/{}/pay", id(&o4)), r#"{"amount":100}"#);
    op(
        &format!("/v1/orders/{}/cancel", id(&o4)),
        r#"{"reason":"customer_request"}"#,
    );
    op(
        &format!("/v1/orders/{}/refund", id(&o4)),
        r#"{"refund_ref":"rf-1"}"#,
    );
    let orders = [&o1, &o2, &o3, &o4];

    let report = |query: &str| {
        let r = s.as_(VIEWER, "GET", &format!("/v1/stats?{query}"), None);
        assert_eq!(r.status, 200, "{query}: {}", r.body);
        r.json()
    };
    // group key -> (orders, cancelled, paid, refunded, units_sold)
    let groups = |v: &serde_json::Value| -> BTreeMap<String, (u64, u64, u64, u64, u64)> {
        v["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let n = |f: &str| g[f].as_u64().unwrap();
                (
                    g["key"].as_str().unwrap().to_string(),
                    (
                        n("orders"),
                        n("cancelled"),
                        n("paid_amount"),
                        n("refunded_amount"),
                        n("units_sold"),
                    ),
                )
            })
            .collect()
    };
    let from = "from=2000-01-01T00:00:00Z";

    // By day in Shanghai: each order's key is its Shanghai day, computed from the
    // creation time the server stamped (the next UTC day from 16:00 UTC on).
    let v = report(&format!("{from}&group_by=day&tz=Asia/Shanghai"));
    let v_by_day = v.clone();
    assert_eq!(v["tz"], "Asia/Shanghai");
    assert_eq!(v["group_by"], "day");
    assert_eq!(v["from"], "2000-01-01T00:00:00.000Z");
    assert!(
        v["to"].as_str().unwrap() >= o4["created_at"].as_str().unwrap(),
        "{v}"
    );
    let mut expected: BTreeMap<String, (u64, u64, u64, u64, u64)> = BTreeMap::new();
    let sums = [
        (1, 0, 1900, 0, 3),
        (1, 0, 0, 0, 0),
        (1, 1, 0, 0, 0),
        (1, 1, 100, 100, 0),
    ];
    for (o, add) in orders.iter().zip(sums) {
        let key = shanghai_day(o["created_at"].as_str().unwrap());
        let e = expected.entry(key).or_default();
        *e = (
            e.0 + add.0,
            e.1 + add.1,
            e.2 + add.2,
            e.3 + add.3,
            e.4 + add.4,
        );
    }
    assert_eq!(groups(&v), expected, "{v}");
    // By hour in UTC: keys are the creation hours.
    let v = report(&format!("{from}&group_by=hour"));
    assert_eq!(v["tz"], "UTC");
    let hours: Vec<String> = orders
        .iter()
        .map(|o| o["created_at"].as_str().unwrap()[..13].to_string())
        .collect();
    let mut keys: Vec<String> = groups(&v).into_keys().collect();
    keys.sort();
    let mut want = hours.clone();
    want.dedup();
    assert_eq!(keys, want, "{v}");
    assert_eq!(groups(&v).values().map(|g| g.0).sum::<u64>(), 4);

    // By SKU: an order counts in each of its SKUs; amounts split by line value.
    let v = report(&format!("{from}&group_by=sku"));
    assert_eq!(
        groups(&v),
        BTreeMap::from([
            ("CUP".to_string(), (2, 1, 1200, 0, 1)),
            ("TEA".to_string(), (3, 1, 700 + 100, 100, 2)),
        ]),
        "{v}"
    );
    // By customer.
    let v = report(&format!("{from}&group_by=customer"));
    assert_eq!(
        groups(&v),
        BTreeMap::from([
            ("c1".to_string(), (2, 1, 1900, 0, 3)),
            ("c2".to_string(), (1, 0, 0, 0, 0)),
            ("c3".to_string(), (1, 1, 100, 100, 0)),
        ]),
        "{v}"
    );
    let c1 = &v["groups"][0];
    assert_eq!(c1["cancellation_rate"], 0.5);
    // By reason: the cancelled orders, each reason's share of the window's orders.
    let v = report(&format!("{from}&group_by=reason"));
    assert_eq!(
        groups(&v),
        BTreeMap::from([
            ("customer_request".to_string(), (1, 1, 100, 100, 0)),
            ("out_of_stock".to_string(), (1, 1, 0, 0, 0)),
        ]),
        "{v}"
    );
    for g in v["groups"].as_array().unwrap() {
        assert_eq!(g["cancellation_rate"], 0.25, "{v}");
    }
    // By channel; an order without one is under the empty key.
    let v = report(&format!("{from}&group_by=channel"));
    assert_eq!(
        groups(&v),
        BTreeMap::from([
            (String::new(), (1, 1, 100, 100, 0)),
            ("jd".to_string(), (1, 0, 0, 0, 0)),
            ("tmall".to_string(), (2, 1, 1900, 0, 3)),
        ]),
        "{v}"
    );

    // The window bounds creation times, [from, to).
    let first_at = o1["created_at"].as_str().unwrap();
    let v = report(&format!(
        "from=2000-01-01T00:00:00Z&to={first_at}&group_by=day"
    ));
    assert!(v["groups"].as_array().unwrap().is_empty(), "{v}");
    let v = report("from=2100-01-01T00:00:00Z&to=2100-01-02T00:00:00Z&group_by=customer");
    assert!(v["groups"].as_array().unwrap().is_empty(), "{v}");
    let last_at = o4["created_at"].as_str().unwrap();
    let v = report(&format!("from={last_at}&group_by=customer"));
    assert_eq!(groups(&v)["c3"].0, 1, "{v}");
    let _ = o2;

    // Without `from`: every order since the start; the zone as the database spells it.
    let all = report("group_by=day&tz=asia/shanghai");
    assert_eq!(all["from"], "1970-01-01T00:00:00.000Z", "{all}");
    assert_eq!(all["tz"], "Asia/Shanghai", "{all}");
    assert_eq!(groups(&all), groups(&v_by_day), "{all}");

    // Without the report's parameters: the totals, as before.
    let totals = report("top=3");
    assert_eq!(totals["orders_total"], 4);
    assert!(totals.get("groups").is_none());

    // Refusals name their parameter.
    for (query, field) in [
        (format!("{from}&group_by=day&tz=Mars/Base"), "tz"),
        // A bad zone is named even without `group_by` (it named `group_by`).
        ("tz=Mars/Base".to_string(), "tz"),
        ("from=2026&tz=UTC".to_string(), "from"),
        ("from=2999-01-01T00:00:00Z&group_by=day".to_string(), "from"),
        (format!("{from}&group_by=week"), "group_by"),
        (from.to_string(), "group_by"),
        ("from=yesterday&group_by=day".to_string(), "from"),
        (format!("{from}&to=1999-01-01T00:00:00Z&group_by=day"), "to"),
        (format!("{from}&group_by=day&top=3"), "top"),
        (format!("{from}&group_by=day&zone=UTC"), "zone"),
    ] {
        let r = s.as_(VIEWER, "GET", &format!("/v1/stats?{query}"), None);
        r.assert_problem(400, "validation_failed");
        assert_eq!(r.json()["field"], field, "{query}: {}", r.body);
    }
}

/// A keyed `/v1/batch` is remembered across a crash: each op's key is logged with
/// its record, so after kill -9 and recovery the repeat answers the same results and
/// Surge-Lsn and holds nothing more.
#[test]
fn a_keyed_batch_replays_the_same_after_a_crash() {
    let dir = TempDir::new("keyed-batch");
    let s = Server::start(&dir.data(), "keyed-batch");
    s.define("A", 3);
    let body = r#"{"ops":[{"op":"reserve","lines":[{"sku":"A","qty":2}]},{"op":"reserve","lines":[{"sku":"A","qty":2}]}]}"#;
    let keyed = |s: &Server| {
        s.call(
            "POST",
            "/v1/batch",
            &[
                ("Authorization", STOREFRONT),
                ("Idempotency-Key", "kb-crash"),
            ],
            Some(body),
        )
    };
    let first = keyed(&s);
    assert_eq!(first.status, 200, "{}", first.body);
    let results = first.json()["results"].clone();
    assert_eq!(results[0]["status"], "held", "{}", first.body);
    assert_eq!(results[1]["code"], "insufficient_stock", "{}", first.body);
    s.kill_9();
    let s = Server::start(&dir.data(), "keyed-batch-again");
    s.admin(
        "POST",
        "/v1/skus/A/adjustments",
        Some(r#"{"delta": 5, "reason": "inbound"}"#),
    );
    let again = keyed(&s);
    assert_eq!((again.status, &again.body), (first.status, &first.body));
    assert_eq!(again.header("surge-lsn"), first.header("surge-lsn"));
    let a = s.admin("GET", "/v1/skus/A", None).json();
    assert_eq!(a["reserved"], 2, "{a}");
}

/// The status line and the rest of an answer read from a raw socket, within `within`
/// (a request the server holds instead of refusing fails the test).
fn raw_exchange(addr: SocketAddr, request: &str, within: std::time::Duration) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(within)).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&answer);
                // The whole problem body is in: the answer is complete.
                if text.contains("\r\n\r\n{") && text.trim_end().ends_with('}') {
                    break;
                }
            }
            Err(e) => panic!(
                "no complete answer within {within:?} ({e}); so far: {}",
                String::from_utf8_lossy(&answer)
            ),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// What the headers already decide is refused at once, changing nothing: a body
/// declared over the limit is 413 before it is sent (it waited for the body until
/// the request timeout, then said 503 "a write may still take effect"), also to a
/// client that waits for `100 Continue` (it was told to send it); a header that
/// names one thing given twice is 400 naming it (the first one won: an admin's
/// token then a viewer's acted as the admin); a body surge would misread is 415 (a
/// `Content-Encoding`, a charset other than UTF-8; both were read as UTF-8 JSON).
#[test]
fn what_the_headers_decide_is_refused_at_once() {
    let dir = TempDir::new("v11-gate");
    let s = Server::start(&dir.data(), "v11-gate");
    s.define("A", 10);
    let before = s.digest();
    // Well inside the 10 s request timeout.
    let within = std::time::Duration::from_secs(5);
    for expect in ["", "Expect: 100-continue\r\n"] {
        let answer = raw_exchange(
            s.addr,
            &format!(
                "POST /v1/reservations HTTP/1.1\r\nHost: surge\r\nAuthorization: {STOREFRONT}\r\n\
                 Content-Type: application/json\r\n{expect}Content-Length: 2000000\r\n\r\n"
            ),
            within,
        );
        assert!(answer.starts_with("HTTP/1.1 413"), "{expect:?}: {answer}");
        assert!(!answer.contains("100 Continue"), "{answer}");
        assert!(answer.contains("\"field\":\"body\""), "{answer}");
    }
    let hold = r#"{"lines":[{"sku":"A","qty":1}]}"#;
    for (headers, status, field) in [
        (
            &[("Authorization", ADMIN), ("Authorization", VIEWER)][..],
            400,
            "Authorization",
        ),
        (
            &[
                ("Authorization", STOREFRONT),
                ("Idempotency-Key", "k1"),
                ("Idempotency-Key", "k2"),
            ][..],
            400,
            "Idempotency-Key",
        ),
        (
            &[("Authorization", STOREFRONT), ("Content-Encoding", "gzip")][..],
            415,
            "Content-Encoding",
        ),
        (
            &[
                ("Authorization", STOREFRONT),
                ("Content-Type", "application/json; charset=utf-16"),
            ][..],
            415,
            "Content-Type",
        ),
    ] {
        let r = s.call("POST", "/v1/reservations", headers, Some(hold));
        r.assert_problem(status, "validation_failed");
        assert_eq!(r.json()["field"], field, "{}", r.body);
    }
    assert_eq!(s.digest(), before, "a refused request changed something");
    // The same hold, sent plainly (and with an explicit UTF-8 charset), is taken.
    let r = s.call(
        "POST",
        "/v1/reservations",
        &[
            ("Authorization", STOREFRONT),
            ("Content-Type", "application/json; charset=UTF-8"),
        ],
        Some(hold),
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

/// A body that does not arrive within the body timeout is 408 `request_timeout`
/// naming the body, the connection closed after it, and nothing done: it was 503
/// `overloaded` at the request timeout, saying "a write may still take effect" of a
/// request that never reached the engine. A body timeout that is not below the
/// request timeout stops the start.
#[test]
fn a_body_that_does_not_arrive_in_time_is_408_and_changes_nothing() {
    use std::io::Write;
    let dir = TempDir::new("v11-slow-body");
    let s = Server::start_with(
        &dir.data(),
        "v11-slow-body",
        &[("SURGE_BODY_TIMEOUT_MS", "300")],
    );
    s.define("A", 10);
    let before = s.digest();
    // Half the declared body, then nothing: the rest never comes.
    let mut stream = std::net::TcpStream::connect(s.addr).unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/reservations HTTP/1.1\r\nHost: surge\r\nAuthorization: {STOREFRONT}\r\n\
                 Content-Type: application/json\r\nContent-Length: 32\r\n\r\n{{\"lines\":[{{\"sku\""
            )
            .as_bytes(),
        )
        .unwrap();
    // Well inside the 10 s request timeout, which answered first before.
    let answer = raw_read_to_end(&mut stream, std::time::Duration::from_secs(5));
    let (head, body) = answer.split_once("\r\n\r\n").expect("a whole answer");
    assert!(head.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    let body: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert_eq!(body["code"], "request_timeout", "{body}");
    assert_eq!(body["field"], "body", "{body}");
    assert_eq!(body["status"], 408, "{body}");
    assert_eq!(
        s.digest(),
        before,
        "a body that never came changed something"
    );
    // The whole body, sent at once, is taken.
    let r = s.call(
        "POST",
        "/v1/reservations",
        &[("Authorization", STOREFRONT)],
        Some(r#"{"lines":[{"sku":"A","qty":1}]}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    drop(s);

    for value in ["10000", "9901", "99"] {
        let dir = TempDir::new("v11-slow-body-bad");
        let mut command = common::surge_command("127.0.0.1:0", &dir.data());
        command.env("SURGE_BODY_TIMEOUT_MS", value);
        let stderr = common::refused_start(command);
        assert!(stderr.contains("--body-timeout-ms"), "{value}: {stderr}");
    }
}

/// An answer given before the body was read (a refused token or role, an unknown
/// route, a query, path or `Content-Type` refused) says `Connection: close`: hyper closes the connection when the unread body was not
/// already in its buffer, and a client that sent its next request on it lost it
/// (an outside probe: 81 of 471 in a failover). An answer after the body was read,
/// a 409 included, keeps the connection for the next request.
#[test]
fn an_answer_before_the_body_is_read_closes_the_connection_and_says_so() {
    use std::io::{Read, Write};
    let dir = TempDir::new("v11-early");
    let s = Server::start(&dir.data(), "v11-early");
    s.define("A", 1);
    let note = "n".repeat(60_000);
    let large = format!(r#"{{"lines":[{{"sku":"A","qty":1}}],"note":"{note}"}}"#);
    let answer_head = |path: &str, content_type: &str, token: &str, body: &str| {
        let mut stream = std::net::TcpStream::connect(s.addr).unwrap();
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.1\r\nHost: surge\r\nAuthorization: {token}\r\n\
                     {content_type}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
            let n = stream.read(&mut buf).expect("an answer");
            assert!(n > 0, "closed without an answer");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
        text.split("\r\n\r\n").next().unwrap().to_string()
    };
    let json = "Content-Type: application/json\r\n";
    let refused_unread = [
        ("/v1/reservations", json, "Bearer nobody", "401"),
        ("/v1/reservations", json, VIEWER, "403"),
        ("/v1/no-such-route", json, STOREFRONT, "404"),
        ("/v1/reservations?unknown=1", json, STOREFRONT, "400"),
        ("/v1/orders/%FF/cancel", json, STOREFRONT, "400"),
        (
            "/v1/reservations",
            "Content-Type: text/plain\r\n",
            STOREFRONT,
            "415",
        ),
        ("/v1/reservations", "", STOREFRONT, "415"),
    ];
    for (path, content_type, token, status) in refused_unread {
        for body in [large.as_str(), r#"{"lines":[{"sku":"A","qty":1}]}"#] {
            let head = answer_head(path, content_type, token, body);
            assert!(
                head.starts_with(&format!("http/1.1 {status}")),
                "{path}: {head}"
            );
            assert!(
                head.contains("connection: close"),
                "{path} {status}: {head}"
            );
        }
    }
    // Read, then answered: the connection stays, refused or not.
    for (body, status) in [
        (r#"{"lines":[{"sku":"A","qty":5}]}"#, "409"),
        (r#"{"lines":[{"sku":"A","qty":1}],"bogus":1}"#, "400"),
        (r#"{"lines":[{"sku":"A","qty":1}]}"#, "201"),
    ] {
        let head = answer_head("/v1/reservations", json, STOREFRONT, body);
        assert!(head.starts_with(&format!("http/1.1 {status}")), "{head}");
        assert!(!head.contains("connection: close"), "{head}");
    }
}

/// A client that sends its request and then shuts down its sending side gets its
/// answer (hyper's `half_close`): it got none, while its write was carried out, so a
/// retry without a key applied it twice (an outside probe, 6 times of 6).
#[test]
fn a_client_that_half_closes_gets_its_answer() {
    use std::io::Write;
    use std::net::{Shutdown, TcpStream};
    let dir = TempDir::new("v11-half-close");
    let s = Server::start(&dir.data(), "v11-half-close");
    s.define("A", 5);
    let body = r#"{"lines":[{"sku":"A","qty":1}]}"#;
    for request in [
        format!(
            "POST /v1/reservations HTTP/1.1\r\nHost: surge\r\nAuthorization: {STOREFRONT}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        format!("GET /v1/orders HTTP/1.1\r\nHost: surge\r\nAuthorization: {ADMIN}\r\n\r\n"),
    ] {
        let mut stream = TcpStream::connect(s.addr).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let answer = raw_read_to_end(&mut stream, std::time::Duration::from_secs(10));
        let status = if request.starts_with("POST") {
            "201"
        } else {
            "200"
        };
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{request}: {answer:?}"
        );
    }
    let sku = s.as_(ADMIN, "GET", "/v1/skus/A", None);
    assert_eq!(
        sku.json()["available"],
        4,
        "the one reservation, once: {}",
        sku.body
    );
}

/// An HTTP/1.0 client that asked to keep the connection and is refused before its
/// body is read is told `close` alone, and the connection closes: hyper appended
/// `keep-alive` (`close, keep-alive`), and such a client's next request was lost.
#[test]
fn an_http_1_0_client_told_to_close_is_not_told_keep_alive() {
    use std::io::Write;
    let dir = TempDir::new("v11-http10");
    let s = Server::start(&dir.data(), "v11-http10");
    let body = r#"{"lines":[{"sku":"A","qty":1}]}"#;
    for (path, token) in [("/v1/reservations", ""), ("/v1/nowhere", ADMIN)] {
        let authorization = if token.is_empty() {
            String::new()
        } else {
            format!("Authorization: {token}\r\n")
        };
        let mut stream = std::net::TcpStream::connect(s.addr).unwrap();
        stream
            .write_all(
                format!(
                    "POST {path} HTTP/1.0\r\nConnection: keep-alive\r\n{authorization}\
                     Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
        let answer = raw_read_to_end(&mut stream, std::time::Duration::from_secs(10));
        let head = answer
            .split("\r\n\r\n")
            .next()
            .unwrap()
            .to_ascii_lowercase();
        assert!(head.contains("\r\nconnection: close\r\n"), "{path}: {head}");
        assert!(!head.contains("keep-alive"), "{path}: {head}");
    }
}

/// A stop closes connections still open after the drain timeout (here one holding
/// half a request head) instead of waiting for the header timeout (75 s), and
/// stops cleanly: an orchestrator would have killed it first, losing the snapshot.
#[test]
fn a_stop_drains_connections_for_at_most_the_drain_timeout() {
    use std::io::Write;
    let dir = TempDir::new("v11-drain");
    let s = Server::start_with(
        &dir.data(),
        "v11-drain",
        // The drain outlasts twice the request timeout by a second: 3 s here.
        &[
            ("SURGE_HTTP_DRAIN_TIMEOUT_MS", "500"),
            ("SURGE_REQUEST_TIMEOUT_MS", "1000"),
        ],
    );
    let mut half = std::net::TcpStream::connect(s.addr).unwrap();
    half.write_all(b"POST /v1/reservations HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // The request head has reached the server once it answers on another
    // connection (one task serves each, in order of arrival).
    assert_eq!(
        s.as_(ADMIN, "GET", "/healthz", None).status,
        200,
        "the server answers"
    );
    let status = s.sigterm_and_wait();
    assert!(status.success(), "exit status {status:?}");
    drop(half);
}

/// All `stream` sends until the server closes it, within `within`.
fn raw_read_to_end(stream: &mut std::net::TcpStream, within: std::time::Duration) -> String {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut rest = Vec::new();
    if let Err(e) = stream.read_to_end(&mut rest) {
        panic!("not closed within {within:?}: {e}");
    }
    String::from_utf8_lossy(&rest).into_owned()
}

/// Whether the server closes `stream` within `within`: EOF or a reset, not silence.
fn closed_by_server(stream: &mut std::net::TcpStream, within: std::time::Duration) -> bool {
    use std::io::{ErrorKind, Read};
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1024];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return true,
            Ok(_) => continue, // an answer (a 408, say) before the close
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true, // reset
        }
    }
}

/// A connection that sends no request, or half of one, is closed once the header
/// timeout passes (it was held open for good: one descriptor each); and past the
/// connection limit a new connection waits until one closes, then is served.
#[test]
fn idle_connections_are_closed_and_connections_are_limited() {
    use std::io::Write;
    use std::net::TcpStream;
    let dir = TempDir::new("v11-idle");
    let s = Server::start_with(
        &dir.data(),
        "v11-idle",
        &[("SURGE_HTTP_HEADER_TIMEOUT_MS", "1000")],
    );
    let mut silent = TcpStream::connect(s.addr).unwrap();
    let mut half = TcpStream::connect(s.addr).unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHo").unwrap();
    let within = std::time::Duration::from_secs(8);
    assert!(
        closed_by_server(&mut silent, within),
        "a silent connection stayed open"
    );
    assert!(
        closed_by_server(&mut half, within),
        "half a request stayed open"
    );
    drop(s);

    let dir = TempDir::new("v11-limit");
    let s = Server::start_with(
        &dir.data(),
        "v11-limit",
        &[("SURGE_HTTP_CONNECTIONS_MAX", "2")],
    );
    let first = TcpStream::connect(s.addr).unwrap();
    let _second = TcpStream::connect(s.addr).unwrap();
    let mut third = TcpStream::connect(s.addr).unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: surge\r\n\r\n")
        .unwrap();
    assert!(
        !closed_by_server(&mut third, std::time::Duration::from_millis(500)),
        "the third connection was served or closed while two were open"
    );
    drop(first);
    let answer = raw_read_answer(&mut third, std::time::Duration::from_secs(8));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    drop(s);

    // Settings outside their ranges stop the start, naming the flag.
    for (env, value) in [
        ("SURGE_HTTP_CONNECTIONS_MAX", "0"),
        ("SURGE_HTTP_CONNECTIONS_MAX", "99999999999999999"),
        ("SURGE_HTTP_HEADER_TIMEOUT_MS", "0"),
    ] {
        let dir = TempDir::new("v11-limit-bad");
        let mut command = common::surge_command("127.0.0.1:0", &dir.data());
        command.env(env, value);
        let stderr = common::refused_start(command);
        let flag = if env.ends_with("CONNECTIONS_MAX") {
            "--http-connections-max"
        } else {
            "--http-header-timeout-ms"
        };
        assert!(stderr.contains(flag), "{env}={value}: {stderr}");
    }
}

/// What `stream` answers within `within`, up to the end of its headers and body.
fn raw_read_answer(stream: &mut std::net::TcpStream, within: std::time::Duration) -> String {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("no answer within {within:?}: {e}"),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// Headers past the server's limit (64 KiB) were taken up to hyper's buffer (about
/// 400 KiB), past which hyper answers 431 with no body. Within that buffer they are
/// now 431 problem+json naming `headers`, and nothing is done; a request just under
/// the limit is served.
#[test]
fn headers_over_the_limit_are_431_naming_them_and_change_nothing() {
    let dir = TempDir::new("v11-big-headers");
    let s = Server::start(&dir.data(), "v11-big-headers");
    s.define("A", 10);
    let before = s.digest();
    let reserve = r#"{"lines":[{"sku":"A","qty":1}]}"#;
    let padding = "p".repeat(100 * 1024);
    let r = s.call(
        "POST",
        "/v1/reservations",
        &[("Authorization", STOREFRONT), ("X-Padding", &padding)],
        Some(reserve),
    );
    r.assert_problem(431, "validation_failed");
    assert_eq!(r.json()["field"], "headers", "{}", r.body);
    assert_eq!(s.digest(), before, "a refused request changed something");
    let padding = "p".repeat(60 * 1024);
    let r = s.call(
        "POST",
        "/v1/reservations",
        &[("Authorization", STOREFRONT), ("X-Padding", &padding)],
        Some(reserve),
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

/// From an outside probe: after 17 note edits of a paid order, a review hold took
/// its history to the cap for changes that keep the status, and the release was
/// then refused for good with 503 `overloaded` (clients retried forever) while
/// `actions` still offered it: the order could never ship. Now the release is
/// taken, the cap answers 409 `invalid_transition`, `actions` leaves out what the
/// cap refuses, and the order ships.
#[test]
fn a_hold_at_the_last_change_allowed_is_released_and_the_order_ships() {
    let dir = TempDir::new("v11-change-cap");
    let s = Server::start(&dir.data(), "v11-change-cap");
    s.define("A", 10);
    let order = create_order(
        &s,
        "CAP-1",
        "c1",
        r#"[{"sku":"A","qty":1,"unit_price":100}]"#,
    );
    let id = order["id"].as_str().unwrap().to_string();
    let path = |tail: &str| format!("/v1/orders/{id}{tail}");
    let r = s.as_(
        STOREFRONT,
        "POST",
        &path("/pay"),
        Some(r#"{"amount":100,"payment_ref":"p1"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for i in 0..17 {
        let r = s.as_(
            OPERATOR,
            "PATCH",
            &path(""),
            Some(&format!(r#"{{"note":"call {i}"}}"#)),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = s.as_(
        OPERATOR,
        "POST",
        &path("/hold"),
        Some(r#"{"reason":"address_check"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["history"].as_array().unwrap().len(),
        20,
        "{}",
        r.body
    );
    assert_eq!(
        r.json()["actions"],
        serde_json::json!(["cancel", "release_hold"]),
        "{}",
        r.body
    );
    let r = s.as_(OPERATOR, "PATCH", &path(""), Some(r#"{"note":"one more"}"#));
    r.assert_problem(409, "invalid_transition");
    let r = s.as_(
        OPERATOR,
        "POST",
        &path("/refunds"),
        Some(r#"{"amount":1,"reason":"goodwill"}"#),
    );
    r.assert_problem(409, "invalid_transition");
    let r = s.as_(
        OPERATOR,
        "POST",
        &path("/release-hold"),
        Some(r#"{"note":"checked"}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.header("surge-lsn").is_some(), "{}", r.body);
    for to in ["picking", "packed", "shipped"] {
        let r = s.as_(
            OPERATOR,
            "POST",
            &path("/transitions"),
            Some(&format!(r#"{{"to":"{to}"}}"#)),
        );
        assert_eq!(r.status, 200, "{to}: {}", r.body);
    }
}
