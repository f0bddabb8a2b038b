//! Issue 10: requests that used to stop a sale, sent to the real binary.

mod common;

use common::{OPERATOR, STOREFRONT, Server, TempDir};

/// §1: an operator's adjustment with a SKU of tens of thousands of characters in the
/// path and a note of about 1 MiB in the body encoded to a record over the WAL's
/// limit, and the writer then refused every write from every caller with 503 until a
/// restart. Now it is refused alone, naming the field, and the engine goes on.
#[test]
fn a_hostile_adjustment_is_refused_alone_and_the_next_reservation_succeeds() {
    let dir = TempDir::new("hostile-adjustment");
    let s = Server::start(&dir.data(), "hostile");
    s.define("MUG", 10);
    let before = s.digest();
    let sku = "S".repeat(40_000);
    // As large as the body limit (1 MiB) allows.
    let body = format!(
        r#"{{"delta":5,"reason":"inbound","note":"{}"}}"#,
        "n".repeat((1 << 20) - 200)
    );
    let r = s.as_(
        OPERATOR,
        "POST",
        &format!("/v1/skus/{sku}/adjustments"),
        Some(&body),
    );
    r.assert_problem(400, "validation_failed");
    assert_eq!(s.digest(), before, "the refused request changed the state");
    let r = s.as_(
        STOREFRONT,
        "POST",
        "/v1/reservations",
        Some(r#"{"lines":[{"sku":"MUG","qty":1}],"ttl_ms":60000}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let ready = s.call("GET", "/readyz", &[], None);
    assert_eq!(ready.status, 200, "{}", ready.body);
}
