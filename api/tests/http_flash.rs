//! Flash-sale controls over HTTP, against the real binary (issue 12): per-customer
//! purchase limits under 200 concurrent clients (reservations, orders and the batch
//! endpoint racing), sale windows judged to the millisecond by the logged clock (the
//! stamps the server answers with are compared, never the test's own sleeps), what
//! counts back, the order in which refusals win, and exact counts after kill -9.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Barrier;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{
    OPERATOR, Resp, STOREFRONT, Server, TempDir, VIEWER, eventually, now_ms, parse_rfc3339_ms,
    request, rfc3339_ms,
};
use rand_core::{Rng as _, SeedableRng};
use rand_xoshiro::SplitMix64;
use serde_json::{Value, json};

const PRICE: u64 = 100;

fn define_sale(s: &Server, sku: &str, body: Value) -> Resp {
    s.admin("PUT", &format!("/v1/skus/{sku}"), Some(&body.to_string()))
}

#[track_caller]
fn define_ok(s: &Server, sku: &str, body: Value) -> Value {
    let r = define_sale(s, sku, body);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn get_sku(s: &Server, sku: &str) -> Value {
    let r = s.as_(VIEWER, "GET", &format!("/v1/skus/{sku}"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// (counted, limit) of `GET /v1/skus/{sku}/customers/{customer}`.
#[track_caller]
fn counted(s: &Server, sku: &str, customer: &str) -> (u64, u64) {
    let r = s.as_(
        VIEWER,
        "GET",
        &format!("/v1/skus/{sku}/customers/{customer}"),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (v["sku"].as_str(), v["customer_id"].as_str()),
        (Some(sku), Some(customer))
    );
    (v["counted"].as_u64().unwrap(), v["limit"].as_u64().unwrap())
}

fn reserve_body(lines: &[(&str, u64)], customer: Option<&str>, ttl_ms: Option<u64>) -> Value {
    let mut body = json!({
        "lines": lines.iter().map(|(sku, qty)| json!({"sku": sku, "qty": qty})).collect::<Vec<_>>(),
    });
    if let Some(c) = customer {
        body["customer_id"] = json!(c);
    }
    if let Some(ttl) = ttl_ms {
        body["ttl_ms"] = json!(ttl);
    }
    body
}

fn order_body(order_no: &str, customer: &str, lines: &[(&str, u64)]) -> Value {
    json!({
        "order_no": order_no,
        "customer_id": customer,
        "lines": lines
            .iter()
            .map(|(sku, qty)| json!({"sku": sku, "qty": qty, "unit_price": PRICE}))
            .collect::<Vec<_>>(),
    })
}

fn post(s: &Server, token: &str, path: &str, body: &Value) -> Resp {
    s.as_(token, "POST", path, Some(&body.to_string()))
}

fn reserve(s: &Server, sku: &str, qty: u64, customer: Option<&str>) -> Resp {
    post(
        s,
        STOREFRONT,
        "/v1/reservations",
        &reserve_body(&[(sku, qty)], customer, None),
    )
}

fn order(s: &Server, order_no: &str, customer: &str, sku: &str, qty: u64) -> Resp {
    post(
        s,
        STOREFRONT,
        "/v1/orders",
        &order_body(order_no, customer, &[(sku, qty)]),
    )
}

#[track_caller]
fn created(r: Resp) -> Value {
    assert_eq!(r.status, 201, "{}", r.body);
    r.json()
}

#[track_caller]
fn ok(r: Resp) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// A `purchase_limit_exceeded` problem (a response, or a batch result) with exactly
/// these members.
#[track_caller]
fn assert_over_limit(p: &Value, sku: &str, limit: u64, already: u64, requested: u64) {
    assert_eq!(p["code"], "purchase_limit_exceeded", "{p}");
    assert_eq!(p["status"], 409, "{p}");
    assert_eq!(
        (&p["sku"], &p["limit"], &p["already"], &p["requested"]),
        (
            &json!(sku),
            &json!(limit),
            &json!(already),
            &json!(requested)
        ),
        "{p}"
    );
}

#[track_caller]
fn assert_validation(r: &Resp, status: u16, field: &str) {
    r.assert_problem(status, "validation_failed");
    assert_eq!(r.json()["field"], field, "{}", r.body);
}

/// `n` clients, each on its own thread and its own connection, released together by
/// a barrier; `req(i)` is client i's (path, body). Answers in client order.
fn race(addr: SocketAddr, n: usize, req: impl Fn(usize) -> (String, Value) + Sync) -> Vec<Resp> {
    let barrier = Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, req) = (&barrier, &req);
                scope.spawn(move || {
                    let (path, body) = req(i);
                    let body = body.to_string();
                    barrier.wait();
                    request(
                        addr,
                        "POST",
                        &path,
                        &[("Authorization", STOREFRONT)],
                        Some(&body),
                    )
                    .unwrap_or_else(|e| panic!("client {i}: {e}"))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

// ---------------------------------------------------------------- the race

#[test]
fn two_hundred_clients_of_one_customer_get_exactly_the_limit() {
    let dir = TempDir::new("flash-race");
    let s = Server::start(&dir.data(), "race");
    let sku = define_ok(
        &s,
        "HOT",
        json!({"on_hand": 1000, "purchase_limit_per_customer": 2}),
    );
    assert_eq!(sku["purchase_limit_per_customer"], 2);
    assert_eq!(counted(&s, "HOT", "solo"), (0, 2));

    // Round 1: 200 reservations of one unit each for one customer.
    let answers = race(s.addr, 200, |_| {
        (
            "/v1/reservations".into(),
            reserve_body(&[("HOT", 1)], Some("solo"), None),
        )
    });
    let mut won = 0;
    for r in &answers {
        match r.status {
            201 => {
                let v = r.json();
                assert_eq!(v["status"], "held", "{}", r.body);
                assert_eq!(v["lines"], json!([{"sku": "HOT", "qty": 1}]));
                won += 1;
            }
            _ => {
                r.assert_problem(409, "purchase_limit_exceeded");
                assert_over_limit(&r.json(), "HOT", 2, 2, 1);
            }
        }
    }
    assert_eq!(won, 2, "exactly the limit is held");
    assert_eq!(counted(&s, "HOT", "solo"), (2, 2));
    assert_eq!(get_sku(&s, "HOT")["reserved"], 2);

    // Round 2: reservations, orders and batches (two reserve ops each) race for
    // another customer.
    let answers = race(s.addr, 200, |i| match i % 3 {
        0 => (
            "/v1/reservations".into(),
            reserve_body(&[("HOT", 1)], Some("mix"), None),
        ),
        1 => (
            "/v1/orders".into(),
            order_body(&format!("mix-{i}"), "mix", &[("HOT", 1)]),
        ),
        _ => {
            let op = {
                let mut op = reserve_body(&[("HOT", 1)], Some("mix"), None);
                op["op"] = json!("reserve");
                op
            };
            ("/v1/batch".into(), json!({"ops": [op.clone(), op]}))
        }
    });
    let (mut units, mut refused, mut orders_won) = (0, 0, 0);
    for (i, r) in answers.iter().enumerate() {
        if i % 3 == 2 {
            assert_eq!(r.status, 200, "{}", r.body);
            let results = r.json()["results"].as_array().unwrap().clone();
            assert_eq!(results.len(), 2, "{}", r.body);
            for result in results {
                if result.get("code").is_some() {
                    assert_over_limit(&result, "HOT", 2, 2, 1);
                    refused += 1;
                } else {
                    assert_eq!(result["status"], "held", "{result}");
                    assert!(result["lsn"].as_u64().is_some(), "{result}");
                    units += 1;
                }
            }
        } else if r.status == 201 {
            units += 1;
            if i % 3 == 1 {
                assert_eq!(r.json()["customer_id"], "mix");
                orders_won += 1;
            }
        } else {
            r.assert_problem(409, "purchase_limit_exceeded");
            assert_over_limit(&r.json(), "HOT", 2, 2, 1);
            refused += 1;
        }
    }
    let batch_clients = (0..200).filter(|i| i % 3 == 2).count();
    let ops = (200 - batch_clients) + 2 * batch_clients;
    assert_eq!(units, 2, "exactly the limit across the three paths");
    assert_eq!(units + refused, ops);
    assert_eq!(counted(&s, "HOT", "mix"), (2, 2));
    let listed = ok(s.as_(
        OPERATOR,
        "GET",
        "/v1/orders?customer_id=mix&limit=1000",
        None,
    ));
    assert_eq!(listed["items"].as_array().unwrap().len(), orders_won);
    let hot = get_sku(&s, "HOT");
    assert_eq!(
        (&hot["reserved"], &hot["available"]),
        (&json!(4), &json!(996))
    );

    // The limit is per customer: a third one still gets its two.
    created(reserve(&s, "HOT", 2, Some("third")));
    assert_over_limit(&reserve(&s, "HOT", 1, Some("third")).json(), "HOT", 2, 2, 1);
    assert_eq!(counted(&s, "HOT", "third"), (2, 2));
}

// ---------------------------------------------------------------- the window

/// What one attempt on the windowed SKU got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    /// Held, with the logged stamp (`created_at`).
    Held(u64),
    /// `sale_not_open` with `opens_at`.
    NotYet,
    /// `sale_not_open` with `closed_at`.
    Closed,
}

struct Shot {
    sent: Instant,
    answered: Instant,
    got: Got,
    /// For a batch `[U, W, U]`: the stamps of the two holds of the unwindowed SKU.
    sandwich: Option<(u64, u64)>,
}

/// Judge a success body or a problem (a response body or a batch result) of the
/// windowed SKU `W`.
#[track_caller]
fn judge(v: &Value, starts: &str, ends: &str) -> Got {
    if v["status"] == "held" {
        assert_eq!(v["lines"], json!([{"sku": "W", "qty": 1}]), "{v}");
        return Got::Held(parse_rfc3339_ms(v["created_at"].as_str().unwrap()));
    }
    assert_eq!(
        (&v["code"], &v["status"]),
        (&json!("sale_not_open"), &json!(409)),
        "{v}"
    );
    assert_eq!(v["sku"], "W", "{v}");
    match (v.get("opens_at"), v.get("closed_at")) {
        (Some(opens), None) => {
            assert_eq!(opens, starts, "{v}");
            Got::NotYet
        }
        (None, Some(closed)) => {
            assert_eq!(closed, ends, "{v}");
            Got::Closed
        }
        _ => panic!("sale_not_open names exactly one of opens_at and closed_at: {v}"),
    }
}

#[test]
fn a_sale_window_is_exact_to_the_logged_millisecond() {
    let dir = TempDir::new("flash-window");
    let s = Server::start(&dir.data(), "window");
    // U: no rules, the witness of the logged clock in a batch.
    define_ok(&s, "U", json!({"on_hand": 1_000_000}));
    // The window: from a little in the future, with a millisecond fraction, for 1.2 s.
    let mut starts_ms = now_ms() + 1500;
    if starts_ms.is_multiple_of(1000) {
        starts_ms += 7;
    }
    let ends_ms = starts_ms + 1201;
    let (starts, ends) = (rfc3339_ms(starts_ms), rfc3339_ms(ends_ms));
    let w = define_ok(
        &s,
        "W",
        json!({"on_hand": 1_000_000, "sale_starts_at": starts, "sale_ends_at": ends}),
    );
    assert_eq!(
        (&w["sale_starts_at"], &w["sale_ends_at"]),
        (&json!(starts), &json!(ends))
    );
    assert_eq!(w["purchase_limit_per_customer"], 0);
    assert!(
        now_ms() + 300 < starts_ms,
        "the set-up took too long to see the opening"
    );

    // Hammer across the opening and the closing until the clock has passed the end:
    // half the clients send single reservations of W, half batches [U, W, U].
    let clients = 6;
    let hard_stop = Instant::now() + Duration::from_secs(30);
    let shots: Vec<Shot> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (addr, starts, ends) = (s.addr, &starts, &ends);
                scope.spawn(move || {
                    let mut shots = Vec::new();
                    let single = reserve_body(&[("W", 1)], Some(&format!("c{c}")), None);
                    let u = json!({"op": "reserve", "lines": [{"sku": "U", "qty": 1}]});
                    let mut w = single.clone();
                    w["op"] = json!("reserve");
                    let batch = json!({"ops": [u, w, u]});
                    // A full second past the end: on a loaded box (tests run side by
                    // side on two cores) 150 ms could pass without one answer.
                    while now_ms() <= ends_ms + 1000 && Instant::now() < hard_stop {
                        let (path, body) = if c % 2 == 0 {
                            ("/v1/reservations", &single)
                        } else {
                            ("/v1/batch", &batch)
                        };
                        let body = body.to_string();
                        let sent = Instant::now();
                        let r = request(
                            addr,
                            "POST",
                            path,
                            &[("Authorization", STOREFRONT)],
                            Some(&body),
                        )
                        .unwrap_or_else(|e| panic!("client {c}: {e}"));
                        let answered = Instant::now();
                        let (got, sandwich) = if c % 2 == 0 {
                            assert!(matches!(r.status, 201 | 409), "{}", r.body);
                            (judge(&r.json(), starts, ends), None)
                        } else {
                            assert_eq!(r.status, 200, "{}", r.body);
                            let results = r.json()["results"].clone();
                            let stamp = |v: &Value| {
                                assert_eq!(v["status"], "held", "{v}");
                                parse_rfc3339_ms(v["created_at"].as_str().unwrap())
                            };
                            (
                                judge(&results[1], starts, ends),
                                Some((stamp(&results[0]), stamp(&results[2]))),
                            )
                        };
                        shots.push(Shot {
                            sent,
                            answered,
                            got,
                            sandwich,
                        });
                    }
                    shots
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(now_ms() > ends_ms, "the hammering stopped before the end");

    // No hold is stamped outside [starts, ends).
    let held: Vec<u64> = shots
        .iter()
        .filter_map(|s| match s.got {
            Got::Held(t) => Some(t),
            _ => None,
        })
        .collect();
    for &t in &held {
        assert!(
            (starts_ms..ends_ms).contains(&t),
            "held at {} outside [{starts}, {ends})",
            rfc3339_ms(t)
        );
    }
    let count = |g: fn(&Got) -> bool| shots.iter().filter(|s| g(&s.got)).count();
    let (not_yet, closed) = (count(|g| *g == Got::NotYet), count(|g| *g == Got::Closed));
    assert!(
        !held.is_empty() && not_yet > 0 && closed > 0,
        "the hammering must see all three: held {}, not yet {not_yet}, closed {closed}",
        held.len()
    );

    // Sandwiches: U, W, U applied in that order by one writer with a clock that
    // never goes back, so W was judged between the two stamps; when they are equal,
    // at exactly that millisecond.
    let mut exact = 0;
    let mut exact_near_edges = 0;
    for shot in &shots {
        let Some((u1, u2)) = shot.sandwich else {
            continue;
        };
        assert!(u1 <= u2, "the logged clock went back: {u1} > {u2}");
        match shot.got {
            Got::Held(t) => assert!(u1 <= t && t <= u2, "W held at {t} outside [{u1}, {u2}]"),
            Got::NotYet => assert!(u1 < starts_ms, "refused as not yet open at >= {u1}"),
            Got::Closed => assert!(u2 >= ends_ms, "refused as closed at <= {u2}"),
        }
        if u1 == u2 {
            exact += 1;
            let expected = if u1 < starts_ms {
                Got::NotYet
            } else if u1 < ends_ms {
                Got::Held(u1)
            } else {
                Got::Closed
            };
            assert_eq!(shot.got, expected, "W judged at exactly {}", rfc3339_ms(u1));
            if u1.abs_diff(starts_ms) <= 20 || u1.abs_diff(ends_ms) <= 20 {
                exact_near_edges += 1;
            }
        }
    }
    assert!(exact > 0, "no batch was applied within one millisecond");

    // Real time: an attempt sent after an answer was received was applied after it,
    // so at a logged time no earlier.
    let first_answer = |g: fn(&Got) -> bool| {
        shots
            .iter()
            .filter(|s| g(&s.got))
            .map(|s| s.answered)
            .min()
            .unwrap()
    };
    let first_held = first_answer(|g| matches!(g, Got::Held(_)));
    let first_closed = first_answer(|g| *g == Got::Closed);
    for shot in &shots {
        match shot.got {
            Got::NotYet => assert!(
                shot.sent <= first_held && shot.sent <= first_closed,
                "refused as not yet open, sent after an answer of an open or closed sale"
            ),
            Got::Held(_) => assert!(
                shot.sent <= first_closed,
                "held, sent after an answer of a closed sale"
            ),
            Got::Closed => {}
        }
    }

    // Refusals took nothing: W holds exactly the units answered held.
    assert_eq!(get_sku(&s, "W")["reserved"], held.len() as u64);
    println!(
        "window: {} attempts, held {}, not yet {not_yet}, closed {closed}, exact sandwiches {exact} ({exact_near_edges} within 20 ms of an edge)",
        shots.len(),
        held.len()
    );
}

// ---------------------------------------------------------------- counting back

#[test]
fn units_that_come_back_count_back() {
    let dir = TempDir::new("flash-back");
    let s = Server::start(&dir.data(), "back");
    define_ok(
        &s,
        "L",
        json!({"on_hand": 100, "purchase_limit_per_customer": 2}),
    );
    let path = |what: &str, id: &str| format!("/v1/{what}/{id}");
    let order_id = |o: &Value| o["id"].as_str().unwrap().to_string();

    // Release.
    let r = created(reserve(&s, "L", 2, Some("rel")));
    assert_eq!(counted(&s, "L", "rel"), (2, 2));
    assert_over_limit(&reserve(&s, "L", 1, Some("rel")).json(), "L", 2, 2, 1);
    ok(s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/reservations/{}/release", r["id"].as_str().unwrap()),
        None,
    ));
    assert_eq!(counted(&s, "L", "rel"), (0, 2));
    created(reserve(&s, "L", 2, Some("rel")));
    assert_eq!(counted(&s, "L", "rel"), (2, 2));

    // Commit: bought outright, it keeps counting.
    let r = created(reserve(&s, "L", 2, Some("buy")));
    ok(s.as_(
        STOREFRONT,
        "POST",
        &format!("/v1/reservations/{}/commit", r["id"].as_str().unwrap()),
        None,
    ));
    assert_eq!(counted(&s, "L", "buy"), (2, 2));
    assert_over_limit(&order(&s, "buy-1", "buy", "L", 1).json(), "L", 2, 2, 1);

    // Expiry of a hold and of an unpaid order (shortest TTLs), by polling.
    let hold = created(post(
        &s,
        STOREFRONT,
        "/v1/reservations",
        &reserve_body(&[("L", 2)], Some("exp"), Some(1000)),
    ));
    let mut unpaid = order_body("exp-1", "oexp", &[("L", 2)]);
    unpaid["payment_ttl_ms"] = json!(1000);
    let unpaid = created(post(&s, STOREFRONT, "/v1/orders", &unpaid));
    assert_eq!(counted(&s, "L", "exp"), (2, 2));
    assert_eq!(counted(&s, "L", "oexp"), (2, 2));
    eventually("the hold and the order to expire", || {
        counted(&s, "L", "exp").0 == 0 && counted(&s, "L", "oexp").0 == 0
    });
    let hold_id = hold["id"].as_str().unwrap();
    assert_eq!(
        ok(s.as_(OPERATOR, "GET", &path("reservations", hold_id), None))["status"],
        "expired"
    );
    assert_eq!(
        ok(s.as_(OPERATOR, "GET", &path("orders", &order_id(&unpaid)), None))["status"],
        "expired"
    );
    created(reserve(&s, "L", 2, Some("exp")));
    created(order(&s, "exp-2", "oexp", "L", 2));

    // Cancel.
    let o = created(order(&s, "can-1", "can", "L", 2));
    assert_eq!(counted(&s, "L", "can"), (2, 2));
    assert_over_limit(&order(&s, "can-2", "can", "L", 1).json(), "L", 2, 2, 1);
    ok(post(
        &s,
        STOREFRONT,
        &format!("/v1/orders/{}/cancel", order_id(&o)),
        &json!({"reason": "customer_request"}),
    ));
    assert_eq!(counted(&s, "L", "can"), (0, 2));
    // Cancelling again (idempotent) counts nothing back twice.
    ok(post(
        &s,
        STOREFRONT,
        &format!("/v1/orders/{}/cancel", order_id(&o)),
        &json!({"reason": "customer_request"}),
    ));
    created(order(&s, "can-3", "can", "L", 1));
    assert_eq!(counted(&s, "L", "can"), (1, 2));

    // Return after shipping (intercepted, restocked) and after delivery (a customer
    // return, not restocked): paying and shipping keep the count; the return gives it
    // back either way.
    for (customer, kind, restock, last) in [
        ("ret", "intercepted", true, "shipped"),
        ("ret2", "customer_return", false, "delivered"),
    ] {
        let o = created(order(&s, &format!("{customer}-1"), customer, "L", 2));
        let id = order_id(&o);
        ok(post(
            &s,
            STOREFRONT,
            &format!("/v1/orders/{id}/pay"),
            &json!({"amount": 2 * PRICE, "payment_ref": format!("p-{id}")}),
        ));
        for to in ["picking", "packed", "shipped", "delivered"] {
            ok(post(
                &s,
                OPERATOR,
                &format!("/v1/orders/{id}/transitions"),
                &json!({"to": to, "tracking_no": "SF1"}),
            ));
            assert_eq!(counted(&s, "L", customer), (2, 2), "{customer} {to}");
            if to == last {
                break;
            }
        }
        assert_over_limit(&reserve(&s, "L", 1, Some(customer)).json(), "L", 2, 2, 1);
        let returned = ok(post(
            &s,
            OPERATOR,
            &format!("/v1/orders/{id}/return"),
            &json!({"kind": kind, "restock": restock, "reason": "test"}),
        ));
        assert_eq!(returned["status"], "returned");
        assert_eq!(
            counted(&s, "L", customer),
            (0, 2),
            "{customer} after the return"
        );
        created(reserve(&s, "L", 2, Some(customer)));
    }

    // Modify: down counts back, up beyond the limit is refused (nothing changes),
    // up within it counts.
    let o = created(order(&s, "mod-1", "mod", "L", 2));
    let id = order_id(&o);
    let patch = |qty: u64, reason: Option<&str>| {
        let mut body = json!({"lines": [{"sku": "L", "qty": qty, "unit_price": PRICE}]});
        if let Some(reason) = reason {
            body["reason"] = json!(reason);
        }
        s.as_(
            OPERATOR,
            "PATCH",
            &format!("/v1/orders/{id}"),
            Some(&body.to_string()),
        )
    };
    let modified = ok(patch(1, Some("customer_request")));
    assert_eq!(modified["lines"][0]["qty"], 1);
    assert_eq!(counted(&s, "L", "mod"), (1, 2));
    let refused = patch(3, None);
    refused.assert_problem(409, "purchase_limit_exceeded");
    let p = refused.json();
    assert_eq!((&p["sku"], &p["limit"]), (&json!("L"), &json!(2)), "{p}");
    assert!(
        p["already"].as_u64().unwrap() + p["requested"].as_u64().unwrap() > 2,
        "the refusal shows why: {p}"
    );
    assert_eq!(counted(&s, "L", "mod"), (1, 2));
    assert_eq!(
        ok(s.as_(OPERATOR, "GET", &path("orders", &id), None))["lines"][0]["qty"],
        1
    );
    ok(patch(2, None));
    assert_eq!(counted(&s, "L", "mod"), (2, 2));
    assert_over_limit(&reserve(&s, "L", 1, Some("mod")).json(), "L", 2, 2, 1);

    // Adopting the customer's own hold counts once (at the limit, it is allowed); its
    // cancel counts back once.
    let hold = created(reserve(&s, "L", 2, Some("adopt")));
    let mut adopt = order_body("adopt-1", "adopt", &[("L", 2)]);
    adopt["reservation_id"] = hold["id"].clone();
    let o = created(post(&s, STOREFRONT, "/v1/orders", &adopt));
    assert_eq!(counted(&s, "L", "adopt"), (2, 2));
    assert_over_limit(&reserve(&s, "L", 1, Some("adopt")).json(), "L", 2, 2, 1);
    ok(post(
        &s,
        STOREFRONT,
        &format!("/v1/orders/{}/cancel", order_id(&o)),
        &json!({"reason": "customer_request"}),
    ));
    assert_eq!(counted(&s, "L", "adopt"), (0, 2));
    // The released hold is not counted back a second time later either.
    assert_eq!(
        ok(s.as_(
            OPERATOR,
            "GET",
            &path("reservations", hold["id"].as_str().unwrap()),
            None
        ))["order_id"],
        o["id"]
    );
    created(reserve(&s, "L", 2, Some("adopt")));
    assert_eq!(counted(&s, "L", "adopt"), (2, 2));

    // The stock agrees with the counts: every unit of L is held, ordered or bought by
    // a customer above (bought: buy 2, ret2's return not restocked 2, ret's restocked).
    let l = get_sku(&s, "L");
    let customers = [
        "rel", "buy", "exp", "oexp", "can", "ret", "ret2", "mod", "adopt",
    ];
    let total: u64 = customers.iter().map(|c| counted(&s, "L", c).0).sum();
    // buy's 2 left on_hand when committed; ret2's 2 were shipped and not restocked.
    assert_eq!(l["on_hand"], 100 - 2 - 2);
    assert_eq!(l["reserved"].as_u64().unwrap() + 2, total, "{l}");
}

// ---------------------------------------------------------------- refusal order

#[test]
fn refusals_win_in_the_contracts_order() {
    let dir = TempDir::new("flash-order");
    let s = Server::start(&dir.data(), "order");
    define_ok(
        &s,
        "RO",
        json!({"on_hand": 1, "purchase_limit_per_customer": 2}),
    );
    define_ok(
        &s,
        "OPEN",
        json!({"on_hand": 100, "purchase_limit_per_customer": 2}),
    );
    define_ok(&s, "SHORT", json!({"on_hand": 0}));

    // Over the limit and short of stock: the limit.
    assert_over_limit(&reserve(&s, "RO", 3, Some("x")).json(), "RO", 2, 0, 3);
    assert_over_limit(&order(&s, "ro-1", "x", "RO", 3).json(), "RO", 2, 0, 3);
    // Within it and short: stock (the control).
    reserve(&s, "RO", 2, Some("x")).assert_problem(409, "insufficient_stock");
    // Across lines: the limit of a later line beats the stock of an earlier one.
    let r = post(
        &s,
        STOREFRONT,
        "/v1/reservations",
        &reserve_body(&[("SHORT", 1), ("OPEN", 3)], Some("x"), None),
    );
    assert_over_limit(&r.json(), "OPEN", 2, 0, 3);

    // A start an hour away (omitted fields keep their values): outside the window and
    // over the limit and short of stock is sale_not_open.
    let starts = rfc3339_ms(now_ms() + 3_600_000);
    let ro = define_ok(&s, "RO", json!({"on_hand": 1, "sale_starts_at": starts}));
    assert_eq!(
        (
            &ro["purchase_limit_per_customer"],
            &ro["sale_starts_at"],
            &ro["sale_ends_at"]
        ),
        (&json!(2), &json!(starts), &Value::Null)
    );
    for r in [
        reserve(&s, "RO", 3, Some("x")),
        order(&s, "ro-2", "x", "RO", 3),
        // Every line's window before any line's limit.
        post(
            &s,
            STOREFRONT,
            "/v1/reservations",
            &reserve_body(&[("OPEN", 3), ("RO", 1)], Some("x"), None),
        ),
    ] {
        r.assert_problem(409, "sale_not_open");
        let p = r.json();
        assert_eq!(
            (&p["sku"], &p["opens_at"]),
            (&json!("RO"), &json!(starts)),
            "{p}"
        );
        assert!(p.get("closed_at").is_none(), "{p}");
    }
    // No customer on a limited SKU is a validation refusal: before the window too.
    assert_validation(&reserve(&s, "RO", 1, None), 400, "customer_id");
    let batch = ok(post(
        &s,
        STOREFRONT,
        "/v1/batch",
        &json!({"ops": [{"op": "reserve", "lines": [{"sku": "RO", "qty": 3}], "customer_id": "x"}]}),
    ));
    assert_eq!(batch["results"][0]["code"], "sale_not_open", "{batch}");

    // Unknown SKUs before windows, validation before unknown SKUs, whatever the
    // order of the lines.
    for lines in [[("NOPE", 1), ("RO", 1)], [("RO", 1), ("NOPE", 1)]] {
        let r = post(
            &s,
            STOREFRONT,
            "/v1/reservations",
            &reserve_body(&lines, Some("x"), None),
        );
        r.assert_problem(404, "unknown_sku");
        let r = post(
            &s,
            STOREFRONT,
            "/v1/orders",
            &order_body("ro-3", "x", &lines),
        );
        r.assert_problem(404, "unknown_sku");
    }
    let r = post(
        &s,
        STOREFRONT,
        "/v1/reservations",
        &reserve_body(&[("NOPE", 1), ("RO", 0)], Some("x"), None),
    );
    assert_validation(&r, 400, "lines[1].qty");
    let r = post(
        &s,
        STOREFRONT,
        "/v1/orders",
        &order_body("ro-4", "x", &[("NOPE", 1), ("RO", 0)]),
    );
    assert_validation(&r, 400, "lines[1].qty");

    // An existing count, then the window closes: outside it and over the limit is
    // sale_not_open; the customer's own hold is still adopted after the close.
    let hold = created(reserve(&s, "OPEN", 2, Some("y")));
    let closed = rfc3339_ms(now_ms() - 1000);
    define_ok(&s, "OPEN", json!({"on_hand": 100, "sale_ends_at": closed}));
    for r in [
        reserve(&s, "OPEN", 1, Some("y")),
        order(&s, "open-1", "y", "OPEN", 1),
    ] {
        r.assert_problem(409, "sale_not_open");
        let p = r.json();
        assert_eq!(
            (&p["sku"], &p["closed_at"]),
            (&json!("OPEN"), &json!(closed)),
            "{p}"
        );
    }
    let mut adopt = order_body("open-2", "y", &[("OPEN", 2)]);
    adopt["reservation_id"] = hold["id"].clone();
    created(post(&s, STOREFRONT, "/v1/orders", &adopt));
    assert_eq!(counted(&s, "OPEN", "y"), (2, 2));
    // null opens the window again (the limit is kept).
    let open = define_ok(&s, "OPEN", json!({"on_hand": 100, "sale_ends_at": null}));
    assert_eq!(
        (&open["sale_ends_at"], &open["purchase_limit_per_customer"]),
        (&Value::Null, &json!(2))
    );
    assert_over_limit(&reserve(&s, "OPEN", 1, Some("y")).json(), "OPEN", 2, 2, 1);

    // A limited SKU needs a customer: reservation, batch op, order.
    assert_validation(&reserve(&s, "OPEN", 1, None), 400, "customer_id");
    let batch = ok(post(
        &s,
        STOREFRONT,
        "/v1/batch",
        &json!({"ops": [{"op": "reserve", "lines": [{"sku": "OPEN", "qty": 1}]}]}),
    ));
    let p = &batch["results"][0];
    assert_eq!(
        (&p["code"], &p["field"]),
        (&json!("validation_failed"), &json!("ops[0].customer_id")),
        "{p}"
    );
    assert_validation(&order(&s, "anon-1", "", "OPEN", 1), 400, "customer_id");
    // Nothing of the refusals above took stock.
    assert_eq!(get_sku(&s, "OPEN")["reserved"], 2);
    assert_eq!(get_sku(&s, "RO")["reserved"], 0);

    // The window's end must come after its start, also against a kept start.
    let t = now_ms() - 600_000;
    let before = get_sku(&s, "OPEN");
    for body in [
        json!({"on_hand": 100, "sale_starts_at": rfc3339_ms(t), "sale_ends_at": rfc3339_ms(t)}),
        json!({"on_hand": 100, "sale_starts_at": rfc3339_ms(t), "sale_ends_at": rfc3339_ms(t - 1)}),
    ] {
        assert_validation(&define_sale(&s, "OPEN", body), 400, "sale_ends_at");
    }
    // An impossible date is a bad timestamp like any other.
    let r = define_sale(
        &s,
        "OPEN",
        json!({"on_hand": 100, "sale_starts_at": "2026-02-31T00:00:00Z"}),
    );
    assert_validation(&r, 400, "sale_starts_at");
    assert_eq!(
        get_sku(&s, "OPEN"),
        before,
        "a refused definition changes nothing"
    );
    define_ok(
        &s,
        "OPEN",
        json!({"on_hand": 100, "sale_starts_at": rfc3339_ms(t)}),
    );
    let r = define_sale(
        &s,
        "OPEN",
        json!({"on_hand": 100, "sale_ends_at": rfc3339_ms(t - 1)}),
    );
    assert_validation(&r, 400, "sale_ends_at");
    let r = define_sale(
        &s,
        "OPEN",
        json!({"on_hand": 100, "sale_ends_at": rfc3339_ms(t)}),
    );
    assert_validation(&r, 400, "sale_ends_at");
    let open = define_ok(
        &s,
        "OPEN",
        json!({"on_hand": 100, "sale_ends_at": rfc3339_ms(t + 1)}),
    );
    assert_eq!(
        (
            &open["sale_starts_at"],
            &open["sale_ends_at"],
            &open["purchase_limit_per_customer"]
        ),
        (&json!(rfc3339_ms(t)), &json!(rfc3339_ms(t + 1)), &json!(2))
    );
    // A start alone at or past the end kept names the start, the field sent (it
    // named `sale_ends_at`, which was not).
    for starts in [t + 1, t + 2] {
        let r = define_sale(&s, "OPEN", json!({"sale_starts_at": rfc3339_ms(starts)}));
        assert_validation(&r, 400, "sale_starts_at");
    }
    // Offsets are instants: +08:00 is answered in UTC.
    let open = define_ok(
        &s,
        "OPEN",
        json!({"on_hand": 100, "sale_starts_at": null, "sale_ends_at": "2099-01-01T08:00:00.250+08:00"}),
    );
    assert_eq!(open["sale_ends_at"], "2099-01-01T00:00:00.250Z");
    assert_eq!(open["sale_starts_at"], Value::Null);

    // null opens the start; 0 removes the limit (no customer needed, nothing counted).
    let ro = define_ok(&s, "RO", json!({"on_hand": 1, "sale_starts_at": null}));
    assert_eq!(ro["sale_starts_at"], Value::Null);
    created(reserve(&s, "RO", 1, Some("x")));
    define_ok(
        &s,
        "OPEN",
        json!({"on_hand": 100, "purchase_limit_per_customer": 0}),
    );
    created(reserve(&s, "OPEN", 5, None));
    assert_eq!(counted(&s, "OPEN", "y"), (0, 0));
}

// ---------------------------------------------------------------- recovery

/// Uniform-ish in `0..n` from a client's seeded generator (splitmix64).
fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    rng.next_u64() % n
}

const SALE_SKUS: [(&str, u64); 2] = [("SALE", 3), ("DUO", 2)];
const CUSTOMERS: usize = 5;

/// One hold a client knows of: answered 201, or learnt by a retry of its key.
#[derive(Debug, Clone)]
struct KnownHold {
    id: String,
    customer: String,
    lines: Vec<(String, u64)>,
    /// A release or an adoption was sent for it (answered or not).
    touched: bool,
}

/// What a client was sending when the server died.
#[derive(Debug, Clone)]
struct Unanswered {
    path: String,
    key: Option<String>,
    body: Value,
}

#[derive(Debug, Default)]
struct Client {
    holds: Vec<KnownHold>,
    /// Orders answered 201, by id, and whether a cancel was sent for them.
    orders: Vec<(String, String, bool)>,
    unanswered: Option<Unanswered>,
}

fn customer_name(i: u64) -> String {
    format!("cust-{i}")
}

/// One client of the sale: random reservations (one or both SKUs), orders, adoptions,
/// releases and cancels for random customers, keyed, until the server dies.
fn shop(addr: SocketAddr, seed: usize, acked: &AtomicUsize) -> Client {
    let mut rng = SplitMix64::seed_from_u64(seed as u64);
    let mut me = Client::default();
    let deadline = Instant::now() + Duration::from_secs(120);
    for n in 0.. {
        assert!(Instant::now() < deadline, "the server was never killed");
        let customer = customer_name(below(&mut rng, CUSTOMERS as u64));
        let key = format!("k-{seed}-{n}");
        let pick = below(&mut rng, 10);
        let (path, body, keyed, touched_hold, cancelled_order) = match pick {
            0..=3 => {
                let mut lines = vec![("SALE", 1 + below(&mut rng, 2))];
                if below(&mut rng, 3) == 0 {
                    lines.push(("DUO", 1));
                }
                let body = reserve_body(&lines, Some(&customer), None);
                ("/v1/reservations".to_string(), body, true, None, None)
            }
            4 | 5 => {
                let lines = [("SALE", 1), ("DUO", below(&mut rng, 2) + 1)];
                let lines = &lines[..1 + below(&mut rng, 2) as usize];
                let body = order_body(&format!("o-{seed}-{n}"), &customer, lines);
                ("/v1/orders".to_string(), body, true, None, None)
            }
            6 | 7 => {
                let Some(i) = me.holds.iter().position(|h| !h.touched) else {
                    continue;
                };
                let h = &me.holds[i];
                if pick == 6 {
                    let path = format!("/v1/reservations/{}/release", h.id);
                    (path, Value::Null, false, Some(i), None)
                } else {
                    let lines: Vec<(&str, u64)> =
                        h.lines.iter().map(|(s, q)| (s.as_str(), *q)).collect();
                    let mut body = order_body(&format!("o-{seed}-{n}"), &h.customer, &lines);
                    body["reservation_id"] = json!(h.id);
                    ("/v1/orders".to_string(), body, true, Some(i), None)
                }
            }
            _ => {
                let Some(i) = me.orders.iter().position(|o| !o.2) else {
                    continue;
                };
                let path = format!("/v1/orders/{}/cancel", me.orders[i].0);
                (
                    path,
                    json!({"reason": "customer_request"}),
                    false,
                    None,
                    Some(i),
                )
            }
        };
        if let Some(i) = touched_hold {
            me.holds[i].touched = true;
        }
        if let Some(i) = cancelled_order {
            me.orders[i].2 = true;
        }
        let text = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let mut headers = vec![("Authorization", STOREFRONT)];
        if keyed {
            headers.push(("Idempotency-Key", key.as_str()));
        }
        let answer = request(
            addr,
            "POST",
            &path,
            &headers,
            (!text.is_empty()).then_some(text.as_str()),
        );
        let r = match answer {
            Ok(r) if r.status != 503 => r,
            _ => {
                // The server is gone (or going): this one may or may not have happened.
                me.unanswered = Some(Unanswered {
                    path,
                    key: keyed.then_some(key),
                    body,
                });
                return me;
            }
        };
        match r.status {
            200 => {}
            201 if path == "/v1/reservations" => me.holds.push(held_from(&r.json(), &customer)),
            201 => {
                let o = r.json();
                me.orders.push((
                    o["id"].as_str().unwrap().into(),
                    o["customer_id"].as_str().unwrap().into(),
                    false,
                ));
            }
            409 => {
                let code = r.json()["code"].as_str().unwrap().to_string();
                assert!(
                    code == "purchase_limit_exceeded" || code == "invalid_transition",
                    "{path}: {}",
                    r.body
                );
                if code == "purchase_limit_exceeded" {
                    let p = r.json();
                    let limit = SALE_SKUS.iter().find(|s| p["sku"] == s.0).unwrap().1;
                    assert_eq!(p["limit"], limit, "{p}");
                    assert!(
                        p["already"].as_u64().unwrap() + p["requested"].as_u64().unwrap() > limit,
                        "{p}"
                    );
                }
            }
            _ => panic!("{path} {body}: {} {}", r.status, r.body),
        }
        acked.fetch_add(1, Ordering::SeqCst);
    }
    unreachable!()
}

fn held_from(v: &Value, customer: &str) -> KnownHold {
    assert_eq!(v["status"], "held", "{v}");
    KnownHold {
        id: v["id"].as_str().unwrap().into(),
        customer: customer.into(),
        lines: v["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| {
                (
                    l["sku"].as_str().unwrap().into(),
                    l["qty"].as_u64().unwrap(),
                )
            })
            .collect(),
        touched: false,
    }
}

/// Every order of a customer, paged.
fn customer_orders(s: &Server, customer: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let page = ok(s.as_(
            OPERATOR,
            "GET",
            &format!("/v1/orders?customer_id={customer}&limit=1000{cursor}"),
            None,
        ));
        out.extend(page["items"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return out,
        }
    }
}

/// The counts the server answers, (SKU, customer) -> counted, checked against a
/// recount from the orders and the known holds, and against the limits.
fn check_counts(s: &Server, holds: &[KnownHold]) -> BTreeMap<(String, String), u64> {
    let mut recount: BTreeMap<(String, String), u64> = BTreeMap::new();
    for c in 0..CUSTOMERS as u64 {
        let customer = customer_name(c);
        for o in customer_orders(s, &customer) {
            assert_eq!(o["customer_id"], customer.as_str());
            if matches!(
                o["status"].as_str(),
                Some("cancelled" | "expired" | "returned")
            ) {
                continue;
            }
            for l in o["lines"].as_array().unwrap() {
                *recount
                    .entry((l["sku"].as_str().unwrap().into(), customer.clone()))
                    .or_default() += l["qty"].as_u64().unwrap();
            }
        }
    }
    let mut held_units: BTreeMap<String, u64> = BTreeMap::new();
    for h in holds {
        let r = ok(s.as_(OPERATOR, "GET", &format!("/v1/reservations/{}", h.id), None));
        if r["status"] == "held" && r["order_id"].is_null() {
            for (sku, qty) in &h.lines {
                *recount
                    .entry((sku.clone(), h.customer.clone()))
                    .or_default() += qty;
                *held_units.entry(sku.clone()).or_default() += qty;
            }
        } else {
            assert!(
                h.touched,
                "hold {} was answered held, never touched, and is {r}",
                h.id
            );
        }
    }
    let mut answered = BTreeMap::new();
    for (sku, limit) in SALE_SKUS {
        let mut sum = 0;
        for c in 0..CUSTOMERS as u64 {
            let customer = customer_name(c);
            let (n, l) = counted(s, sku, &customer);
            assert_eq!(l, limit);
            assert!(
                n <= limit,
                "{customer} counts {n} of {sku}, over the limit {limit}"
            );
            let expected = recount
                .get(&(sku.to_string(), customer.clone()))
                .copied()
                .unwrap_or(0);
            assert_eq!(n, expected, "{sku}/{customer}: answered vs recounted");
            answered.insert((sku.to_string(), customer), n);
            sum += n;
        }
        // Nothing is paid or committed: every reserved unit is a customer's.
        assert_eq!(get_sku(s, sku)["reserved"], sum, "{sku}");
    }
    answered
}

#[test]
fn counts_are_exact_after_kill_9_in_the_middle_of_a_limited_sale() {
    let dir = TempDir::new("flash-kill");
    let s = Server::start(&dir.data(), "kill-1");
    for (sku, limit) in SALE_SKUS {
        define_ok(
            &s,
            sku,
            json!({"on_hand": 100_000, "purchase_limit_per_customer": limit}),
        );
    }
    let clients = 16;
    let acked = AtomicUsize::new(0);
    let addr = s.addr;
    let all: Vec<Client> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let acked = &acked;
                scope.spawn(move || shop(addr, c, acked))
            })
            .collect();
        // Kill in the middle of the sale, while every client is sending.
        eventually("400 answers before the kill", || {
            acked.load(Ordering::SeqCst) >= 400
        });
        s.kill_9();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let answered_before = acked.load(Ordering::SeqCst);

    let s = Server::start(&dir.data(), "kill-2");
    // What was in flight may or may not have happened: a keyed retry tells (the
    // original answer if it did), and then the test knows every hold.
    let mut holds: Vec<KnownHold> = Vec::new();
    let mut retried = 0;
    for client in &all {
        holds.extend(client.holds.iter().cloned());
        let Some(u) = &client.unanswered else {
            continue;
        };
        let Some(key) = &u.key else { continue };
        retried += 1;
        let r = s.call(
            "POST",
            &u.path,
            &[("Authorization", STOREFRONT), ("Idempotency-Key", key)],
            Some(&u.body.to_string()),
        );
        assert!(matches!(r.status, 201 | 409), "{}: {}", u.path, r.body);
        if r.status == 201 && u.path == "/v1/reservations" {
            let customer = u.body["customer_id"].as_str().unwrap();
            holds.push(held_from(&r.json(), customer));
        }
    }
    let before = check_counts(&s, &holds);
    assert!(before.values().any(|&n| n > 0), "the sale counted nothing");

    // Once more through a snapshot: snapshot, kill -9, restart: the same counts.
    ok(s.admin("POST", "/v1/admin/snapshot", None));
    s.kill_9();
    let s = Server::start(&dir.data(), "kill-3");
    assert_eq!(check_counts(&s, &holds), before);
    // And the limits still hold after the restarts.
    for (sku, limit) in SALE_SKUS {
        let customer = customer_name(0);
        let n = before[&(sku.to_string(), customer.clone())];
        let r = reserve(&s, sku, limit - n + 1, Some(&customer));
        assert_over_limit(&r.json(), sku, limit, n, limit - n + 1);
    }
    println!(
        "kill -9: {answered_before} answers before the kill, {} holds known, {retried} keyed retries",
        holds.len()
    );
}
