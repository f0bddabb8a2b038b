//! v1.1 API additions over HTTP, against the real binary: strict query strings,
//! named tokens, the CSV byte-order mark, the Excel export and stats over time windows.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use common::{ADMIN, IO_TIMEOUT, STOREFRONT, Server, TempDir, VIEWER};

/// A GET whose body is kept as bytes (the common client reads text).
fn get_bytes(addr: SocketAddr, path: &str, token: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nAuthorization: {token}\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header end");
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&rest[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        let data = &rest[eol + 2..];
        out.extend_from_slice(&data[..size]);
        rest = &data[size + 2..];
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Create an order as storefront, returning its JSON.
fn create_order(s: &Server, order_no: &str, customer: &str, lines: &str) -> serde_json::Value {
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/orders",
        Some(&format!(
            r#"{{"order_no":"{order_no}","customer_id":"{customer}","lines":{lines}}}"#
        )),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

// ---------------------------------------------------------------- strict queries

#[test]
fn unknown_query_parameters_are_refused_by_name() {
    let dir = TempDir::new("v11-query");
    let s = Server::start(&dir.data(), "v11-query");
    s.define("A", 10);
    let order = create_order(&s, "Q-1", "c1", r#"[{"sku":"A","qty":1,"unit_price":100}]"#);
    let id = order["id"].as_str().unwrap();
    let reservation = s.as_(
        STOREFRONT,
        "POST",
        "/v1/reservations",
        Some(r#"{"lines":[{"sku":"A","qty":1}]}"#),
    );
    assert_eq!(reservation.status, 201, "{}", reservation.body);
    let rid = reservation.json()["id"].as_str().unwrap().to_string();

    // (path, the unknown parameter): a typo of a real filter, a stranger, and a
    // parameter of a sibling endpoint (paging on the export, `top` elsewhere).
    let cases = [
        ("/v1/orders?stauts=cancelled".to_string(), "stauts"),
        ("/v1/orders?status=reserved&foo=1".to_string(), "foo"),
        ("/v1/orders/export.csv?customer=c1".to_string(), "customer"),
        ("/v1/orders/export.csv?limit=10".to_string(), "limit"),
        ("/v1/orders/export.csv?cursor=o1".to_string(), "cursor"),
        ("/v1/stats?tops=3".to_string(), "tops"),
        ("/v1/stats?group=day".to_string(), "group"),
        ("/v1/skus?limt=2".to_string(), "limt"),
        ("/v1/events?afterr=3".to_string(), "afterr"),
        ("/v1/events?after=0&limit=10&x=1".to_string(), "x"),
        ("/v1/skus/A?verbose=true".to_string(), "verbose"),
        (format!("/v1/orders/{id}?expand=history"), "expand"),
        ("/v1/orders/by-no/Q-1?x=1".to_string(), "x"),
        (format!("/v1/reservations/{rid}?y=2"), "y"),
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

    // Known parameters still work, and so do parameters spelled right but empty.
    for path in [
        "/v1/orders?status=reserved&limit=5".to_string(),
        "/v1/orders?status=&customer_id=".to_string(),
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
