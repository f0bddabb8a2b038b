//! The HTTP contract (../shared/API.md) checked against the real binary: a bad-input
//! corpus with a state digest, the role matrix, and every endpoint's success and
//! documented errors.

mod common;

use common::{ADMIN, OPERATOR, STOREFRONT, Server, TempDir, VIEWER, send};
use serde_json::Value;

const JSON: &str = "application/json";
/// The body limit of the corpus server (`SURGE_BODY_LIMIT_BYTES`).
const BODY_LIMIT: usize = 4096;

/// One request of a table and what it must get.
#[derive(Debug, Clone)]
struct Case {
    method: &'static str,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    field: Option<String>,
}

impl Case {
    /// As admin, with a JSON content type when there is a body; expects 400
    /// `validation_failed` until told otherwise.
    fn new(method: &'static str, path: impl Into<String>, body: impl Into<Vec<u8>>) -> Case {
        let body = body.into();
        let mut headers = vec![("Authorization".to_string(), ADMIN.to_string())];
        if !body.is_empty() {
            headers.push(("Content-Type".to_string(), JSON.to_string()));
        }
        Case {
            method,
            path: path.into(),
            headers,
            body,
            status: 400,
            code: "validation_failed",
            field: None,
        }
    }

    fn post(path: impl Into<String>, body: impl Into<Vec<u8>>) -> Case {
        Case::new("POST", path, body)
    }

    fn get(path: impl Into<String>) -> Case {
        Case::new("GET", path, "")
    }

    fn expect(mut self, status: u16, code: &'static str) -> Case {
        self.status = status;
        self.code = code;
        self
    }

    fn field(mut self, field: impl Into<String>) -> Case {
        self.field = Some(field.into());
        self
    }

    /// Replace (or with `None` remove) a header.
    fn header(mut self, name: &str, value: Option<&str>) -> Case {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            self.headers.push((name.to_string(), v.to_string()));
        }
        self
    }

    fn run(&self, server: &Server) -> Result<(), String> {
        let headers: Vec<(&str, &str)> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let what = format!(
            "{} {} [{:?}] {:.120}",
            self.method,
            self.path,
            self.headers,
            String::from_utf8_lossy(&self.body)
        );
        let r = send(server.addr, self.method, &self.path, &headers, &self.body)
            .map_err(|e| format!("{what}: {e}"))?;
        let mut problems = Vec::new();
        if r.status >= 500 {
            problems.push("a 5xx".to_string());
        }
        if r.status != self.status {
            problems.push(format!("status {} (expected {})", r.status, self.status));
        }
        if r.header("content-type") != Some("application/problem+json") {
            problems.push(format!("content-type {:?}", r.header("content-type")));
        }
        match serde_json::from_str::<Value>(&r.body) {
            Err(e) => problems.push(format!("body is not JSON: {e}")),
            Ok(p) => {
                if p["code"] != self.code {
                    problems.push(format!("code {} (expected {})", p["code"], self.code));
                }
                if p["status"] != r.status {
                    problems.push(format!("problem status {}", p["status"]));
                }
                if let Some(field) = &self.field
                    && p["field"] != field.as_str()
                {
                    problems.push(format!("field {} (expected {field})", p["field"]));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what}: {} -> {:.300}",
                problems.join(", "),
                r.body
            ))
        }
    }
}

/// The state the corpus runs against; returns (held reservation, released
/// reservation, shipped order).
fn corpus_setup(s: &Server) -> (String, String, String) {
    s.define("A", 10);
    s.define("B", 5);
    // o1: reserved, unpaid (total 100).
    let r = s.admin(
        "POST",
        "/v1/orders",
        Some(r#"{"order_no":"keep","customer_id":"c1","lines":[{"sku":"A","qty":1,"unit_price":100}]}"#),
    );
    assert_eq!(
        (r.status, r.str_field("id").as_str()),
        (201, "o1"),
        "{}",
        r.body
    );
    // A held reservation, remembered under an Idempotency-Key.
    let r = s.call(
        "POST",
        "/v1/reservations",
        &[("Authorization", ADMIN), ("Idempotency-Key", "corpus-key")],
        Some(r#"{"lines":[{"sku":"B","qty":1}]}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let held = r.str_field("id");
    let r = s.admin(
        "POST",
        "/v1/reservations",
        Some(r#"{"lines":[{"sku":"B","qty":1}]}"#),
    );
    let released = r.str_field("id");
    let r = s.admin(
        "POST",
        &format!("/v1/reservations/{released}/release"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // A shipped order.
    let r = s.admin(
        "POST",
        "/v1/orders",
        Some(r#"{"order_no":"shipped","customer_id":"c2","lines":[{"sku":"A","qty":2,"unit_price":50}]}"#),
    );
    let shipped = r.str_field("id");
    let r = s.admin(
        "POST",
        &format!("/v1/orders/{shipped}/pay"),
        Some(r#"{"amount":100}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    for to in ["picking", "packed", "shipped"] {
        let r = s.admin(
            "POST",
            &format!("/v1/orders/{shipped}/transitions"),
            Some(&format!(r#"{{"to":"{to}"}}"#)),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
    (held, released, shipped)
}

fn corpus(held: &str, released: &str, shipped: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    // Every endpoint that takes a JSON body, with a valid body.
    let bodied: Vec<(&'static str, String, String)> = vec![
        ("POST", "/v1/reservations".into(), r#"{"lines":[{"sku":"A","qty":1}]}"#.into()),
        (
            "POST",
            "/v1/orders".into(),
            r#"{"order_no":"new-1","customer_id":"c","lines":[{"sku":"A","qty":1,"unit_price":1}]}"#
                .into(),
        ),
        ("PUT", "/v1/skus/A".into(), r#"{"on_hand":20}"#.into()),
        (
            "POST",
            "/v1/skus/A/adjustments".into(),
            r#"{"delta":1,"reason":"inbound"}"#.into(),
        ),
        ("POST", "/v1/orders/o1/pay".into(), r#"{"amount":100}"#.into()),
        (
            "POST",
            "/v1/orders/o1/cancel".into(),
            r#"{"reason":"customer_request"}"#.into(),
        ),
        (
            "POST",
            format!("/v1/orders/{shipped}/transitions"),
            r#"{"to":"delivered"}"#.into(),
        ),
        (
            "POST",
            format!("/v1/orders/{shipped}/return"),
            r#"{"restock":true}"#.into(),
        ),
        ("POST", "/v1/orders/o1/refund".into(), r#"{}"#.into()),
        (
            "POST",
            "/v1/batch".into(),
            r#"{"ops":[{"op":"reserve","lines":[{"sku":"A","qty":1}]}]}"#.into(),
        ),
    ];

    // 1. Broken JSON, for every body-taking endpoint.
    let broken: Vec<Vec<u8>> = vec![
        b"{".to_vec(),
        b"{\"lines\": [}".to_vec(),
        b"{'lines': []}".to_vec(),
        b"{\"lines\":[{\"sku\":\"A\",\"qty\":1}],}".to_vec(),
        b"{\"a\":1} trailing".to_vec(),
        b"null".to_vec(),
        b"\"a string\"".to_vec(),
        b"42".to_vec(),
        b"true".to_vec(),
        b"\xff\xfe{}".to_vec(),
        b"{\"x\x00\":1}".to_vec(),
        b"  ".to_vec(),
    ];
    for (method, path, _) in &bodied {
        for body in &broken {
            cases.push(Case::new(method, path.clone(), body.clone()));
        }
        // An empty body that claims to be JSON.
        cases.push(Case::new(method, path.clone(), "").header("Content-Type", Some(JSON)));
    }

    // 2. Wrong content types (415), and bodies over the limit (413).
    for (method, path, body) in &bodied {
        for ct in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/xml"),
            Some("application/jsonx"),
        ] {
            cases.push(
                Case::new(method, path.clone(), body.clone())
                    .header("Content-Type", ct)
                    .expect(415, "validation_failed")
                    .field("Content-Type"),
            );
        }
        let mut big = body.clone();
        big.truncate(big.len() - 1);
        big.push_str(&" ".repeat(BODY_LIMIT + 100));
        big.push('}');
        cases.push(Case::new(method, path.clone(), big).expect(413, "validation_failed"));
    }

    // 3. Wrong types, named fields.
    let reserve = |body: &str, field: &str| Case::post("/v1/reservations", body).field(field);
    for (value, field) in [
        (r#""x""#, "lines"),
        ("1", "lines"),
        ("{}", "lines"),
        ("null", "lines"),
        (r#"["A"]"#, "lines[0]"),
        ("[1]", "lines[0]"),
        ("[null]", "lines[0]"),
    ] {
        cases.push(reserve(&format!(r#"{{"lines":{value}}}"#), field));
    }
    for (value, field) in [
        (r#"{"sku":1,"qty":1}"#, "lines[0].sku"),
        (r#"{"sku":null,"qty":1}"#, "lines[0].sku"),
        (r#"{"sku":true,"qty":1}"#, "lines[0].sku"),
        (r#"{"sku":["A"],"qty":1}"#, "lines[0].sku"),
        (r#"{"sku":"A","qty":"1"}"#, "lines[0].qty"),
        (r#"{"sku":"A","qty":1.5}"#, "lines[0].qty"),
        (r#"{"sku":"A","qty":true}"#, "lines[0].qty"),
        (r#"{"sku":"A","qty":null}"#, "lines[0].qty"),
        (r#"{"sku":"A","qty":[1]}"#, "lines[0].qty"),
        (r#"{"sku":"A","qty":{}}"#, "lines[0].qty"),
        (r#"{"sku":"A"}"#, "lines[0].qty"),
        (r#"{"qty":1}"#, "lines[0].sku"),
        (r#"{"sku":"A","qty":1,"extra":1}"#, "lines[0].extra"),
        (r#"{"sku":"A","qty":1,"qty":2}"#, "lines[0].qty"),
    ] {
        cases.push(reserve(&format!(r#"{{"lines":[{value}]}}"#), field));
    }
    for (value, field) in [
        (r#""1000""#, "ttl_ms"),
        ("-1", "ttl_ms"),
        ("1.5", "ttl_ms"),
        ("true", "ttl_ms"),
    ] {
        cases.push(reserve(
            &format!(r#"{{"lines":[{{"sku":"A","qty":1}}],"ttl_ms":{value}}}"#),
            field,
        ));
    }
    cases.push(reserve(r#"{"ttl_ms":60000}"#, "lines"));
    cases.push(reserve(r#"{}"#, "lines"));
    cases.push(reserve(
        r#"{"lines":[{"sku":"A","qty":1}],"color":"red"}"#,
        "color",
    ));
    cases.push(reserve(
        r#"{"lines":[{"sku":"A","qty":1}],"lines":[]}"#,
        "lines",
    ));

    let order = |fields: &str, field: &str| {
        Case::post(
            "/v1/orders",
            format!(
                r#"{{"customer_id":"c","lines":[{{"sku":"A","qty":1,"unit_price":1}}],{fields}}}"#
            ),
        )
        .field(field)
    };
    for (fields, field) in [
        (r#""order_no":1"#, "order_no"),
        (r#""order_no":null"#, "order_no"),
        (r#""order_no":["x"]"#, "order_no"),
        (r#""order_no":"x","customer_id":"c""#, "customer_id"),
        (
            r#""order_no":"x","payment_ttl_ms":"soon""#,
            "payment_ttl_ms",
        ),
        (r#""order_no":"x","payment_ttl_ms":-5"#, "payment_ttl_ms"),
        (r#""order_no":"x","reservation_id":5"#, "reservation_id"),
        (r#""order_no":"x","coupon":"FREE""#, "coupon"),
        (r#""order_no":"""#, "order_no"),
        (r#""order_no":"a\u0001b""#, "order_no"),
        (r#""order_no":"a\nb""#, "order_no"),
    ] {
        cases.push(order(fields, field));
    }
    let order_line = |line: &str, field: &str| {
        Case::post(
            "/v1/orders",
            format!(r#"{{"order_no":"x","customer_id":"c","lines":[{line}]}}"#),
        )
        .field(field)
    };
    for (line, field) in [
        (
            r#"{"sku":"A","qty":1,"unit_price":"1"}"#,
            "lines[0].unit_price",
        ),
        (
            r#"{"sku":"A","qty":1,"unit_price":-1}"#,
            "lines[0].unit_price",
        ),
        (
            r#"{"sku":"A","qty":1,"unit_price":1.99}"#,
            "lines[0].unit_price",
        ),
        (r#"{"sku":"A","qty":1}"#, "lines[0].unit_price"),
        (r#"{"sku":"A","qty":0,"unit_price":1}"#, "lines[0].qty"),
        (r#"{"sku":"A","qty":-2,"unit_price":1}"#, "lines[0].qty"),
        (
            r#"{"sku":"A","qty":1,"unit_price":10000000001}"#,
            "lines[0].unit_price",
        ),
        (
            r#"{"sku":"A","qty":1000001,"unit_price":1}"#,
            "lines[0].qty",
        ),
        (
            r#"{"sku":"A","qty":1,"unit_price":1,"discount":1}"#,
            "lines[0].discount",
        ),
    ] {
        cases.push(order_line(line, field));
    }
    cases.push(
        Case::post(
            "/v1/orders",
            r#"{"order_no":"x","customer_id":"c","lines":[]}"#,
        )
        .field("lines"),
    );
    cases.push(
        Case::post(
            "/v1/orders",
            r#"{"order_no":"x","customer_id":"c","lines":[{"sku":"A","qty":1,"unit_price":1}],"payment_ttl_ms":0}"#,
        )
        .field("payment_ttl_ms"),
    );

    let sku = |body: &str, field: &str| Case::new("PUT", "/v1/skus/A", body).field(field);
    for (body, field) in [
        (r#"{"on_hand":"5"}"#, "on_hand"),
        (r#"{"on_hand":-1}"#, "on_hand"),
        (r#"{"on_hand":1.5}"#, "on_hand"),
        (r#"{"on_hand":null}"#, "on_hand"),
        (r#"{"low_stock_threshold":null}"#, "low_stock_threshold"),
        // Was taken as omitted (the limit kept) while the other fields refuse null.
        (
            r#"{"purchase_limit_per_customer":null}"#,
            "purchase_limit_per_customer",
        ),
        (r#"{"on_hand":1000000000001}"#, "on_hand"),
        (r#"{"on_hand":18446744073709551616}"#, "on_hand"),
        (
            r#"{"on_hand":10,"low_stock_threshold":-1}"#,
            "low_stock_threshold",
        ),
        (
            r#"{"on_hand":10,"low_stock_threshold":1000000000001}"#,
            "low_stock_threshold",
        ),
        (r#"{"on_hand":10,"name":5}"#, "name"),
        (r#"{"on_hand":10,"price":5}"#, "price"),
    ] {
        cases.push(sku(body, field));
    }
    let adjust = |body: &str, field: &str| Case::post("/v1/skus/A/adjustments", body).field(field);
    for (body, field) in [
        (r#"{"delta":0,"reason":"inbound"}"#, "delta"),
        (r#"{"delta":-1,"reason":"inbound"}"#, "delta"),
        (r#"{"delta":"1","reason":"inbound"}"#, "delta"),
        (r#"{"delta":1.5,"reason":"inbound"}"#, "delta"),
        (r#"{"delta":null,"reason":"inbound"}"#, "delta"),
        (
            r#"{"delta":9223372036854775808,"reason":"inbound"}"#,
            "delta",
        ),
        (
            r#"{"delta":-9223372036854775809,"reason":"correction"}"#,
            "delta",
        ),
        (r#"{"delta":1000000000000,"reason":"inbound"}"#, "delta"),
        (r#"{"delta":1,"reason":"theft"}"#, "reason"),
        (r#"{"delta":1,"reason":5}"#, "reason"),
        (r#"{"delta":1}"#, "reason"),
        (r#"{"delta":1,"reason":"inbound","who":"me"}"#, "who"),
    ] {
        cases.push(adjust(body, field));
    }
    let pay = |body: &str, field: &str| Case::post("/v1/orders/o1/pay", body).field(field);
    for (body, field) in [
        (r#"{"amount":"lots"}"#, "amount"),
        (r#"{"amount":-100}"#, "amount"),
        (r#"{"amount":100.0}"#, "amount"),
        (r#"{"amount":null}"#, "amount"),
        (r#"{}"#, "amount"),
        (r#"{"amount":99}"#, "amount"),
        (r#"{"amount":18446744073709551616}"#, "amount"),
        (r#"{"amount":100,"currency":"EUR"}"#, "currency"),
        (r#"{"amount":100,"payment_ref":7}"#, "payment_ref"),
    ] {
        cases.push(pay(body, field));
    }
    let cancel = |body: &str, field: &str| Case::post("/v1/orders/o1/cancel", body).field(field);
    for (body, field) in [
        (r#"{"reason":"bored"}"#, "reason"),
        (r#"{"reason":5}"#, "reason"),
        (r#"{}"#, "reason"),
        (r#"{"reason":"customer_request","force":true}"#, "force"),
        (r#"{"reason":"customer_request","note":5}"#, "note"),
    ] {
        cases.push(cancel(body, field));
    }
    let transition = |body: &str, field: &str| {
        Case::post(format!("/v1/orders/{shipped}/transitions"), body).field(field)
    };
    for (body, field) in [
        (r#"{"to":"flying"}"#, "to"),
        (r#"{"to":"reserved"}"#, "to"),
        (r#"{"to":"cancelled"}"#, "to"),
        (r#"{"to":5}"#, "to"),
        (r#"{}"#, "to"),
        (r#"{"to":"delivered","from":"shipped"}"#, "from"),
        (r#"{"to":"delivered","tracking_no":5}"#, "tracking_no"),
    ] {
        cases.push(transition(body, field));
    }
    let ret = |body: &str, field: &str| {
        Case::post(format!("/v1/orders/{shipped}/return"), body).field(field)
    };
    for (body, field) in [
        (r#"{"restock":"yes"}"#, "restock"),
        (r#"{"restock":1}"#, "restock"),
        (r#"{"restock":null}"#, "restock"),
        (r#"{}"#, "restock"),
        (r#"{"restock":true,"refund":true}"#, "refund"),
    ] {
        cases.push(ret(body, field));
    }
    cases.push(Case::post("/v1/orders/o1/refund", r#"{"refund_ref":5}"#).field("refund_ref"));
    cases.push(Case::post("/v1/orders/o1/refund", r#"{"amount":5}"#).field("amount"));
    for (body, field) in [
        (r#"{"ops":"x"}"#, "ops"),
        (r#"{"ops":null}"#, "ops"),
        (r#"{}"#, "ops"),
        (r#"{"ops":[],"atomic":true}"#, "atomic"),
        (r#"{"ops":[1,2,3,4,5,6]}"#, "ops"),
    ] {
        cases.push(Case::post("/v1/batch", body).field(field));
    }

    // 4. Overlong strings, too many lines, bad SKU ids.
    let long = |n: usize| "x".repeat(n);
    cases.push(reserve(
        &format!(r#"{{"lines":[{{"sku":"{}","qty":1}}]}}"#, long(65)),
        "lines[0].sku",
    ));
    for bad in ["A B", "é", "A/B", "A%", ""] {
        cases.push(reserve(
            &format!(r#"{{"lines":[{{"sku":"{bad}","qty":1}}]}}"#),
            "lines[0].sku",
        ));
    }
    cases.push(reserve(
        &format!(
            r#"{{"lines":[{}]}}"#,
            vec![r#"{"sku":"A","qty":1}"#; 65].join(",")
        ),
        "lines",
    ));
    cases.push(reserve(r#"{"lines":[]}"#, "lines"));
    for (fields, field) in [
        (format!(r#""order_no":"{}""#, long(65)), "order_no"),
        (
            format!(r#""order_no":"y","customer_id":"{}""#, long(65)),
            "customer_id",
        ),
    ] {
        cases.push(order(&fields, field));
    }
    cases.push(sku(
        &format!(r#"{{"on_hand":1,"name":"{}"}}"#, long(201)),
        "name",
    ));
    cases.push(Case::new("PUT", format!("/v1/skus/{}", long(65)), r#"{"on_hand":1}"#).field("sku"));
    cases.push(Case::new("PUT", "/v1/skus/a%20b", r#"{"on_hand":1}"#).field("sku"));
    cases.push(adjust(
        &format!(r#"{{"delta":1,"reason":"inbound","note":"{}"}}"#, long(501)),
        "note",
    ));
    cases.push(pay(
        &format!(r#"{{"amount":100,"payment_ref":"{}"}}"#, long(501)),
        "payment_ref",
    ));
    cases.push(cancel(
        &format!(r#"{{"reason":"customer_request","note":"{}"}}"#, long(501)),
        "note",
    ));
    cases.push(transition(
        &format!(r#"{{"to":"delivered","note":"{}"}}"#, long(501)),
        "note",
    ));
    cases.push(transition(
        &format!(r#"{{"to":"delivered","tracking_no":"{}"}}"#, long(501)),
        "tracking_no",
    ));
    cases.push(ret(
        &format!(r#"{{"restock":true,"reason":"{}"}}"#, long(501)),
        "reason",
    ));
    cases.push(ret(
        &format!(r#"{{"restock":true,"note":"{}"}}"#, long(501)),
        "note",
    ));
    cases.push(
        Case::post(
            format!("/v1/orders/{shipped}/refund"),
            format!(r#"{{"refund_ref":"{}"}}"#, long(501)),
        )
        .field("refund_ref"),
    );
    // Zero and overflowing TTLs.
    for ttl in ["0", "999", "604800001", "18446744073709551615"] {
        cases.push(reserve(
            &format!(r#"{{"lines":[{{"sku":"A","qty":1}}],"ttl_ms":{ttl}}}"#),
            "ttl_ms",
        ));
    }
    for qty in ["0", "-1", "1000001", "18446744073709551616", "1e30", "-0.0"] {
        cases.push(reserve(
            &format!(r#"{{"lines":[{{"sku":"A","qty":{qty}}}]}}"#),
            "lines[0].qty",
        ));
    }

    // 5. Unknown things (404).
    let unknown_sku = |c: Case| c.expect(404, "unknown_sku");
    cases.push(unknown_sku(Case::post(
        "/v1/reservations",
        r#"{"lines":[{"sku":"NOPE","qty":1}]}"#,
    )));
    cases.push(unknown_sku(Case::post(
        "/v1/reservations",
        r#"{"lines":[{"sku":"A","qty":1},{"sku":"NOPE","qty":1}]}"#,
    )));
    cases.push(unknown_sku(Case::post(
        "/v1/orders",
        r#"{"order_no":"x","customer_id":"c","lines":[{"sku":"NOPE","qty":1,"unit_price":1}]}"#,
    )));
    cases.push(unknown_sku(Case::post(
        "/v1/skus/NOPE/adjustments",
        r#"{"delta":1,"reason":"inbound"}"#,
    )));
    cases.push(unknown_sku(Case::get("/v1/skus/NOPE")));
    cases.push(unknown_sku(Case::get("/v1/skus/a%20b")));
    cases.push(unknown_sku(Case::get(format!("/v1/skus/{}", long(65)))));
    let unknown_order = |c: Case| c.expect(404, "unknown_order");
    for id in [
        "x",
        "o999",
        "o0",
        "o-1",
        "r1",
        "o1x",
        "99999999999999999999999",
    ] {
        cases.push(unknown_order(Case::get(format!("/v1/orders/{id}"))));
        cases.push(unknown_order(Case::post(
            format!("/v1/orders/{id}/pay"),
            r#"{"amount":100}"#,
        )));
    }
    cases.push(unknown_order(Case::post(
        "/v1/orders/o999/cancel",
        r#"{"reason":"customer_request"}"#,
    )));
    cases.push(unknown_order(Case::post(
        "/v1/orders/o999/transitions",
        r#"{"to":"picking"}"#,
    )));
    cases.push(unknown_order(Case::post(
        "/v1/orders/o999/return",
        r#"{"restock":true}"#,
    )));
    cases.push(unknown_order(Case::post("/v1/orders/o999/refund", "{}")));
    cases.push(unknown_order(Case::get("/v1/orders/by-no/nope")));
    cases.push(unknown_order(Case::get("/v1/orders/by-no/KEEP")));
    let unknown_reservation = |c: Case| c.expect(404, "unknown_reservation");
    for id in ["x", "r999", "r0", "o1", "r99999999999999999999999"] {
        cases.push(unknown_reservation(Case::get(format!(
            "/v1/reservations/{id}"
        ))));
        cases.push(unknown_reservation(Case::post(
            format!("/v1/reservations/{id}/commit"),
            "",
        )));
        cases.push(unknown_reservation(Case::post(
            format!("/v1/reservations/{id}/release"),
            "",
        )));
    }
    cases.push(unknown_reservation(Case::post(
        "/v1/orders",
        r#"{"order_no":"x","customer_id":"c","lines":[{"sku":"A","qty":1,"unit_price":1}],"reservation_id":"r999"}"#,
    )));

    // 6. Engine refusals (409 / 422 / 400).
    cases.push(
        Case::post("/v1/reservations", r#"{"lines":[{"sku":"A","qty":11}]}"#)
            .expect(409, "insufficient_stock"),
    );
    cases.push(
        Case::post(
            "/v1/reservations",
            r#"{"lines":[{"sku":"A","qty":5},{"sku":"A","qty":5}]}"#,
        )
        .expect(409, "insufficient_stock"),
    );
    cases.push(
        Case::post(
            "/v1/orders",
            r#"{"order_no":"keep","customer_id":"c","lines":[{"sku":"A","qty":1,"unit_price":1}]}"#,
        )
        .expect(409, "duplicate_order_no"),
    );
    cases.push(
        Case::post(
            "/v1/orders",
            r#"{"order_no":"shipped","customer_id":"zz","lines":[{"sku":"B","qty":1,"unit_price":9}]}"#,
        )
        .expect(409, "duplicate_order_no"),
    );
    cases.push(
        Case::post(
            "/v1/orders",
            format!(r#"{{"order_no":"adopt","customer_id":"c","lines":[{{"sku":"B","qty":1,"unit_price":1}}],"reservation_id":"{released}"}}"#),
        )
        .expect(409, "invalid_transition"),
    );
    cases.push(
        Case::post(
            "/v1/orders",
            format!(r#"{{"order_no":"adopt","customer_id":"c","lines":[{{"sku":"B","qty":2,"unit_price":1}}],"reservation_id":"{held}"}}"#),
        )
        .field("lines"),
    );
    cases.push(
        Case::post(format!("/v1/reservations/{released}/commit"), "")
            .expect(409, "invalid_transition"),
    );
    cases.push(
        Case::post("/v1/orders/o1/transitions", r#"{"to":"shipped"}"#)
            .expect(409, "invalid_transition"),
    );
    cases.push(
        Case::post(
            format!("/v1/orders/{shipped}/transitions"),
            r#"{"to":"picking"}"#,
        )
        .expect(409, "invalid_transition"),
    );
    cases.push(Case::post("/v1/orders/o1/refund", "{}").expect(409, "invalid_transition"));
    cases.push(
        Case::post("/v1/orders/o1/return", r#"{"restock":true}"#).expect(409, "invalid_transition"),
    );
    cases.push(
        Case::post(
            format!("/v1/orders/{shipped}/cancel"),
            r#"{"reason":"other"}"#,
        )
        .expect(409, "order_shipped"),
    );
    cases.push(
        Case::post(
            "/v1/skus/A/adjustments",
            r#"{"delta":-100,"reason":"correction"}"#,
        )
        .expect(409, "invalid_transition"),
    );
    cases
        .push(Case::new("PUT", "/v1/skus/B", r#"{"on_hand":0}"#).expect(409, "invalid_transition"));
    cases.push(
        Case::post("/v1/reservations", r#"{"lines":[{"sku":"B","qty":2}]}"#)
            .header("Idempotency-Key", Some("corpus-key"))
            .expect(422, "idempotency_conflict"),
    );

    // 7. Auth: missing or wrong (401), role without the right (403).
    let no_auth =
        |c: Case, value: Option<&str>| c.header("Authorization", value).expect(401, "unauthorized");
    for value in [
        None,
        Some("Bearer wrong"),
        Some("Bearer adm-secretX"),
        Some("Bearer"),
        Some("Bearer "),
        Some("Basic YWRtaW46YWRtaW4="),
        Some("Token adm-secret"),
        Some("adm-secret"),
    ] {
        cases.push(no_auth(
            Case::post("/v1/reservations", r#"{"lines":[{"sku":"A","qty":1}]}"#),
            value,
        ));
        cases.push(no_auth(
            Case::new("PUT", "/v1/skus/A", r#"{"on_hand":1}"#),
            value,
        ));
        cases.push(no_auth(Case::get("/v1/skus/A"), value));
    }
    cases.push(
        Case::post("/v1/reservations", r#"{"lines":[{"sku":"A","qty":1}]}"#)
            .header("Authorization", Some(VIEWER))
            .expect(403, "forbidden"),
    );
    cases.push(
        Case::new("PUT", "/v1/skus/A", r#"{"on_hand":1}"#)
            .header("Authorization", Some(STOREFRONT))
            .expect(403, "forbidden"),
    );
    cases.push(
        Case::post(
            "/v1/skus/A/adjustments",
            r#"{"delta":1,"reason":"inbound"}"#,
        )
        .header("Authorization", Some(STOREFRONT))
        .expect(403, "forbidden"),
    );
    for reason in ["out_of_stock", "fraud_suspected", "system_error", "other"] {
        cases.push(
            Case::post(
                "/v1/orders/o1/cancel",
                format!(r#"{{"reason":"{reason}"}}"#),
            )
            .header("Authorization", Some(STOREFRONT))
            .expect(403, "forbidden"),
        );
    }
    cases.push(
        Case::post("/v1/admin/snapshot", "")
            .header("Authorization", Some(OPERATOR))
            .expect(403, "forbidden"),
    );

    // 8. Bad headers.
    cases.push(
        Case::post("/v1/reservations", r#"{"lines":[{"sku":"A","qty":1}]}"#)
            .header("Idempotency-Key", Some(&long(129)))
            .field("Idempotency-Key"),
    );
    cases.push(
        Case::post("/v1/reservations", r#"{"lines":[{"sku":"A","qty":1}]}"#)
            .header("X-Actor", Some("has space"))
            .field("X-Actor"),
    );
    cases.push(
        Case::post("/v1/reservations", r#"{"lines":[{"sku":"A","qty":1}]}"#)
            .header("X-Actor", Some(&long(80)))
            .field("X-Actor"),
    );

    // 9. Bad query parameters.
    for (query, field) in [
        ("/v1/orders?limit=0", "limit"),
        ("/v1/orders?limit=1001", "limit"),
        ("/v1/orders?limit=-1", "limit"),
        ("/v1/orders?limit=abc", "limit"),
        ("/v1/orders?status=lost", "status"),
        ("/v1/orders?created_from=yesterday", "created_from"),
        ("/v1/orders?created_to=2020-13-01T00:00:00Z", "created_to"),
        (
            "/v1/orders?created_from=99999999999999999999999",
            "created_from",
        ),
        ("/v1/orders?cursor=zz", "cursor"),
        ("/v1/orders/export.csv?status=nope", "status"),
        ("/v1/orders/export.csv?created_to=soon", "created_to"),
        ("/v1/skus?limit=0", "limit"),
        ("/v1/skus?limit=100000", "limit"),
        ("/v1/skus?cursor=abc", "cursor"),
        ("/v1/events?after=-1", "after"),
        ("/v1/events?after=x", "after"),
        ("/v1/events?limit=0", "limit"),
        ("/v1/events?limit=1001", "limit"),
        ("/v1/stats?top=0", "top"),
        ("/v1/stats?top=101", "top"),
        ("/v1/stats?top=x", "top"),
    ] {
        cases.push(Case::get(query).field(field));
    }
    cases.push(
        Case::get("/v1/events")
            .header("Accept", Some("text/event-stream"))
            .header("Last-Event-ID", Some("abc"))
            .field("Last-Event-ID"),
    );

    // 10. No such route (404) or method (405).
    for path in [
        "/v1/nope",
        "/v2/skus",
        "/v1/orders/o1/ship",
        "/v1/skus/A/B/C",
    ] {
        cases.push(Case::get(path).expect(404, "not_found"));
    }
    for (method, path) in [
        ("DELETE", "/v1/skus/A"),
        ("PATCH", "/v1/skus/A"),
        ("GET", "/v1/reservations"),
        ("PUT", "/v1/orders"),
        ("GET", "/v1/batch"),
        ("DELETE", "/v1/events"),
        ("GET", "/v1/admin/snapshot"),
        ("POST", "/v1/stats"),
    ] {
        cases.push(Case::new(method, path, "").expect(405, "method_not_allowed"));
    }
    cases
}

/// At least 200 bad requests: each gets its 4xx, problem+json, the expected code (and
/// field), never a 5xx, and the state digest does not move.
#[test]
fn bad_input_corpus_changes_nothing() {
    let dir = TempDir::new("corpus");
    let limit = BODY_LIMIT.to_string();
    let server = Server::start_with(
        &dir.data(),
        "corpus",
        &[
            ("SURGE_BODY_LIMIT_BYTES", &limit),
            ("SURGE_BATCH_OPS_MAX", "5"),
        ],
    );
    let (held, released, shipped) = corpus_setup(&server);
    let cases = corpus(&held, &released, &shipped);
    // The README states this number: change both together.
    assert_eq!(
        cases.len(),
        466,
        "the corpus changed size: update the README"
    );
    let before = server.digest();
    let failures: Vec<String> = cases.iter().filter_map(|c| c.run(&server).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(server.digest(), before, "bad input changed the state");
    // And the requests are all still answerable: the server is healthy.
    assert_eq!(server.call("GET", "/readyz", &[], None).status, 200);
    eprintln!("{} bad requests refused", cases.len());
}

/// Create an order of one unit of `sku` at 100 (admin); returns its id.
fn order(s: &Server, order_no: &str, sku: &str) -> String {
    let r = s.admin(
        "POST",
        "/v1/orders",
        Some(&format!(
            r#"{{"order_no":"{order_no}","customer_id":"c-{order_no}","lines":[{{"sku":"{sku}","qty":1,"unit_price":100}}]}}"#
        )),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.str_field("id")
}

fn advance(s: &Server, id: &str, steps: &[&str]) {
    for to in steps {
        let r = s.admin(
            "POST",
            &format!("/v1/orders/{id}/transitions"),
            Some(&format!(r#"{{"to":"{to}"}}"#)),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }
}

fn reservation(s: &Server, sku: &str) -> String {
    let r = s.admin(
        "POST",
        "/v1/reservations",
        Some(&format!(r#"{{"lines":[{{"sku":"{sku}","qty":1}}]}}"#)),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.str_field("id")
}

/// Each caller (storefront, operator, admin, viewer, no token, wrong token) against
/// each endpoint: allowed (a 2xx), 401 or 403, never a 5xx.
#[test]
fn role_matrix() {
    let dir = TempDir::new("roles");
    let s = Server::start(&dir.data(), "roles");
    s.define("A", 100_000);
    let to_commit = reservation(&s, "A");
    let to_release = reservation(&s, "A");
    let to_pay = order(&s, "pay-me", "A");
    let to_cancel = order(&s, "cancel-me", "A");
    let to_pick = order(&s, "pick-me", "A");
    s.admin(
        "POST",
        &format!("/v1/orders/{to_pick}/pay"),
        Some(r#"{"amount":100}"#),
    );
    // Returned and refunded once per allowed caller (operator, admin).
    let delivered: Vec<String> = (0..2)
        .map(|i| {
            let id = order(&s, &format!("deliver-{i}"), "A");
            s.admin(
                "POST",
                &format!("/v1/orders/{id}/pay"),
                Some(r#"{"amount":100}"#),
            );
            advance(&s, &id, &["picking", "packed", "shipped", "delivered"]);
            id
        })
        .collect();

    const SF: usize = 0;
    const OP: usize = 1;
    const AD: usize = 2;
    const VW: usize = 3;
    let all = [true; 4];
    let writers = [true, true, true, false];
    let operators = [false, true, true, false];
    let admins = [false, false, true, false];
    let readers = [false, true, true, true];
    // (method, path, body, allowed for [storefront, operator, admin, viewer]);
    // `{n}` in a body is replaced by a counter, `{who}` by the caller's index.
    let rows: Vec<(&str, String, String, [bool; 4])> = vec![
        ("PUT", "/v1/skus/A".into(), r#"{"on_hand":100000}"#.into(), admins),
        ("GET", "/v1/skus/A".into(), String::new(), all),
        ("GET", "/v1/skus".into(), String::new(), all),
        ("POST", "/v1/skus/A/adjustments".into(), r#"{"delta":1,"reason":"inbound"}"#.into(), operators),
        ("POST", "/v1/reservations".into(), r#"{"lines":[{"sku":"A","qty":1}]}"#.into(), writers),
        ("GET", format!("/v1/reservations/{to_commit}"), String::new(), all),
        ("POST", format!("/v1/reservations/{to_commit}/commit"), String::new(), writers),
        ("POST", format!("/v1/reservations/{to_release}/release"), String::new(), writers),
        (
            "POST",
            "/v1/orders".into(),
            r#"{"order_no":"m-{n}","customer_id":"c","lines":[{"sku":"A","qty":1,"unit_price":5}]}"#.into(),
            writers,
        ),
        ("POST", format!("/v1/orders/{to_pay}/pay"), r#"{"amount":100}"#.into(), writers),
        (
            "POST",
            format!("/v1/orders/{to_cancel}/cancel"),
            r#"{"reason":"customer_request"}"#.into(),
            writers,
        ),
        ("POST", format!("/v1/orders/{to_pick}/transitions"), r#"{"to":"picking"}"#.into(), operators),
        ("POST", "/v1/orders/{ret}/return".into(), r#"{"restock":true}"#.into(), operators),
        ("POST", "/v1/orders/{ret}/refund".into(), r#"{"refund_ref":"R"}"#.into(), operators),
        ("GET", format!("/v1/orders/{to_pay}"), String::new(), all),
        ("GET", "/v1/orders/by-no/pay-me".into(), String::new(), all),
        ("GET", "/v1/orders".into(), String::new(), readers),
        ("GET", "/v1/orders/export.csv".into(), String::new(), readers),
        ("GET", "/v1/stats".into(), String::new(), readers),
        ("GET", "/v1/events".into(), String::new(), readers),
        ("POST", "/v1/batch".into(), r#"{"ops":[{"op":"reserve","lines":[{"sku":"A","qty":1}]}]}"#.into(), writers),
        ("POST", "/v1/admin/snapshot".into(), String::new(), admins),
    ];
    let callers: [(&str, Option<&str>); 6] = [
        ("storefront", Some(STOREFRONT)),
        ("operator", Some(OPERATOR)),
        ("admin", Some(ADMIN)),
        ("viewer", Some(VIEWER)),
        ("no token", None),
        ("wrong token", Some("Bearer not-a-token")),
    ];
    let mut n = 0;
    let mut failures = Vec::new();
    let mut checked = 0;
    for (method, path, body, allowed) in &rows {
        for (who, (name, token)) in callers.iter().enumerate() {
            n += 1;
            let body = body.replace("{n}", &n.to_string());
            // Return and refund: one delivered order per allowed caller.
            let path = match who {
                OP => path.replace("{ret}", &delivered[0]),
                AD => path.replace("{ret}", &delivered[1]),
                _ => path.replace("{ret}", &delivered[0]),
            };
            let mut headers = Vec::new();
            if let Some(t) = token {
                headers.push(("Authorization", *t));
            }
            let r = s.call(method, &path, &headers, (!body.is_empty()).then_some(&body));
            let expected = match who {
                SF | OP | AD | VW if allowed[who] => None,
                SF | OP | AD | VW => Some((403, "forbidden")),
                _ => Some((401, "unauthorized")),
            };
            checked += 1;
            let ok = match expected {
                None => (200..300).contains(&r.status),
                Some((status, code)) => {
                    r.status == status
                        && r.header("content-type") == Some("application/problem+json")
                        && r.json()["code"] == code
                }
            };
            if !ok || r.status >= 500 {
                failures.push(format!(
                    "{method} {path} as {name}: expected {}, got {} {:.200}",
                    expected.map_or("2xx".to_string(), |(s, c)| format!("{s} {c}")),
                    r.status,
                    r.body
                ));
            }
        }
    }
    // The public operations endpoints: every caller, even without a token.
    for path in ["/healthz", "/readyz", "/metrics", "/openapi.json", "/"] {
        for (name, token) in &callers {
            let mut headers = Vec::new();
            if let Some(t) = token {
                headers.push(("Authorization", *t));
            }
            let r = s.call("GET", path, &headers, None);
            checked += 1;
            if r.status != 200 {
                failures.push(format!(
                    "GET {path} as {name}: {} {:.200}",
                    r.status, r.body
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(checked, (rows.len() + 5) * callers.len());
}
