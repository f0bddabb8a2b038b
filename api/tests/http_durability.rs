//! Concurrency and durability of the real binary: a 256-client race for 100 units,
//! kill -9 under load, SSE resume while events are produced, and SIGTERM under load.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};

use common::{ADMIN, STOREFRONT, Server, TempDir, open_sse, read_sse, request};
use serde_json::Value;

/// 256 clients at once for a SKU with 100 units: exactly 100 holds, the rest 409
/// `insufficient_stock`, and the counters exact.
#[test]
fn race_256_clients_for_100_units() {
    let dir = TempDir::new("race");
    let s = Server::start(&dir.data(), "race");
    s.define("RACE", 100);
    let addr = s.addr;
    let clients = 256;
    let barrier = Arc::new(Barrier::new(clients));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                request(
                    addr,
                    "POST",
                    "/v1/reservations",
                    &[("Authorization", STOREFRONT)],
                    Some(r#"{"lines":[{"sku":"RACE","qty":1}]}"#),
                )
                .expect("request")
            })
        })
        .collect();
    let mut held = 0;
    let mut refused = 0;
    let mut ids = std::collections::HashSet::new();
    for h in handles {
        let r = h.join().unwrap();
        match r.status {
            201 => {
                held += 1;
                assert!(ids.insert(r.str_field("id")), "an id was handed out twice");
            }
            409 => {
                r.assert_problem(409, "insufficient_stock");
                let p = r.json();
                assert_eq!(p["lines"][0]["sku"], "RACE", "{}", r.body);
                assert_eq!(p["lines"][0]["requested"], 1, "{}", r.body);
                refused += 1;
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!((held, refused), (100, 156));
    let sku = s.admin("GET", "/v1/skus/RACE", None).json();
    assert_eq!(sku["on_hand"], 100, "{sku}");
    assert_eq!(sku["reserved"], 100, "{sku}");
    assert_eq!(sku["available"], 0, "{sku}");
    let stats = s.admin("GET", "/v1/stats", None).json();
    assert_eq!(stats["reservations_held"], 100, "{stats}");
    let held_events = s
        .all_events()
        .iter()
        .filter(|e| e["type"] == "reservation.held")
        .count();
    assert_eq!(held_events, 100);
}

/// What a worker of the kill -9 test knows about one order or reservation: the state
/// of its last acknowledged request, and the state a request in flight at the kill
/// would have left (it may or may not have been applied).
#[derive(Debug, Clone)]
struct Known {
    path: String,
    acked: String,
    in_flight: Option<String>,
    /// For orders created under an Idempotency-Key: (key, body, status, response body).
    replay: Option<(String, String, u16, String)>,
}

const INITIAL: u64 = 1_000_000;

/// One worker: create orders (with Idempotency-Keys) and pay or cancel them, hold and
/// release reservations, until a request fails (the server is gone) or `stop`.
fn worker(
    addr: std::net::SocketAddr,
    w: usize,
    stop: &AtomicBool,
    acked: &AtomicUsize,
    known: &Mutex<Vec<Known>>,
) {
    let auth = [("Authorization", STOREFRONT)];
    let post = |path: &str, headers: &[(&str, &str)], body: &str| {
        request(addr, "POST", path, headers, Some(body)).ok()
    };
    for i in 0..400 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let sku = if i % 2 == 0 { "K1" } else { "K2" };
        let order_no = format!("w{w}-{i}");
        let body = format!(
            r#"{{"order_no":"{order_no}","customer_id":"cust-{w}","lines":[{{"sku":"{sku}","qty":2,"unit_price":150}}]}}"#
        );
        let key = format!("key-{order_no}");
        let headers = [
            ("Authorization", STOREFRONT),
            ("Idempotency-Key", key.as_str()),
        ];
        let Some(r) = post("/v1/orders", &headers, &body) else {
            return;
        };
        if r.status != 201 {
            // Overload under the kill is the only acceptable refusal.
            assert!(r.status == 503, "create: {} {}", r.status, r.body);
            return;
        }
        acked.fetch_add(1, Ordering::Relaxed);
        let id = r.str_field("id");
        let path = format!("/v1/orders/{id}");
        let slot = {
            let mut k = known.lock().unwrap();
            k.push(Known {
                path: path.clone(),
                acked: "reserved".into(),
                in_flight: None,
                replay: Some((key.clone(), body.clone(), r.status, r.body.clone())),
            });
            k.len() - 1
        };
        let (action, next, action_body) = if i % 3 == 0 {
            ("cancel", "cancelled", r#"{"reason":"customer_request"}"#)
        } else {
            ("pay", "confirmed", r#"{"amount":300}"#)
        };
        known.lock().unwrap()[slot].in_flight = Some(next.into());
        let Some(r) = post(&format!("{path}/{action}"), &auth, action_body) else {
            return;
        };
        assert_eq!(r.status, 200, "{action}: {}", r.body);
        acked.fetch_add(1, Ordering::Relaxed);
        {
            let mut k = known.lock().unwrap();
            k[slot].acked = next.into();
            k[slot].in_flight = None;
        }
        // A hold, released every other time.
        let Some(r) = post(
            "/v1/reservations",
            &auth,
            &format!(r#"{{"lines":[{{"sku":"{sku}","qty":1}}]}}"#),
        ) else {
            return;
        };
        assert_eq!(r.status, 201, "reserve: {}", r.body);
        acked.fetch_add(1, Ordering::Relaxed);
        let rid = r.str_field("id");
        let rpath = format!("/v1/reservations/{rid}");
        let slot = {
            let mut k = known.lock().unwrap();
            k.push(Known {
                path: rpath.clone(),
                acked: "held".into(),
                in_flight: (i % 2 == 0).then(|| "released".into()),
                replay: None,
            });
            k.len() - 1
        };
        if i % 2 == 0 {
            let Some(r) = post(&format!("{rpath}/release"), &auth, "") else {
                return;
            };
            assert_eq!(r.status, 200, "release: {}", r.body);
            acked.fetch_add(1, Ordering::Relaxed);
            let mut k = known.lock().unwrap();
            k[slot].acked = "released".into();
            k[slot].in_flight = None;
        }
    }
}

/// kill -9 while 8 clients write: after the restart every acknowledged write is there,
/// nothing is oversold, every event seen before the kill is unchanged, and an
/// Idempotency-Key retried after the restart returns the original response byte for
/// byte.
#[test]
fn kill_9_under_load_keeps_every_acknowledged_write() {
    let dir = TempDir::new("kill9-load");
    let data = dir.data();
    let s = Server::start(&data, "first");
    s.define("K1", INITIAL);
    s.define("K2", INITIAL);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let known = Arc::new(Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (stop, acked, known) = (stop.clone(), acked.clone(), known.clone());
            let addr = s.addr;
            std::thread::spawn(move || worker(addr, w, &stop, &acked, &known))
        })
        .collect();
    common::eventually("the load to get going", || {
        acked.load(Ordering::Relaxed) >= 600
    });
    // The feed as seen by a consumer, a moment before the kill, under load.
    let events_before = s.all_events();
    assert!(!events_before.is_empty());
    s.kill_9();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker panicked");
    }
    let known = known.lock().unwrap().clone();

    let s = Server::start(&data, "second");
    // Every acknowledged write is there.
    let mut failures = Vec::new();
    for k in &known {
        let r = s.admin("GET", &k.path, None);
        if r.status != 200 {
            failures.push(format!("{}: {} {}", k.path, r.status, r.body));
            continue;
        }
        let status = r.json()["status"].as_str().unwrap().to_string();
        if status != k.acked && Some(&status) != k.in_flight.as_ref() {
            failures.push(format!(
                "{}: {status}, acknowledged {} (in flight {:?})",
                k.path, k.acked, k.in_flight
            ));
        }
    }
    assert!(failures.is_empty(), "lost writes:\n{}", failures.join("\n"));
    // No oversell: stock adds up.
    let stats = s.admin("GET", "/v1/stats?top=10", None).json();
    for sku in ["K1", "K2"] {
        let v = s.admin("GET", &format!("/v1/skus/{sku}"), None).json();
        let (on_hand, reserved, available) = (
            v["on_hand"].as_u64().unwrap(),
            v["reserved"].as_u64().unwrap(),
            v["available"].as_u64().unwrap(),
        );
        assert!(reserved <= on_hand, "{v}");
        assert_eq!(available, on_hand - reserved, "{v}");
        let sold = stats["top_skus"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["sku"] == sku)
            .map_or(0, |t| t["units_sold"].as_u64().unwrap());
        assert_eq!(on_hand + sold, INITIAL, "{sku}: {v} sold {sold}");
    }
    // Events: everything seen before the kill is there with the same seq and payload.
    let events_after = s.all_events();
    let after: HashMap<u64, &Value> = events_after
        .iter()
        .map(|e| (e["seq"].as_u64().unwrap(), e))
        .collect();
    for e in &events_before {
        let seq = e["seq"].as_u64().unwrap();
        assert_eq!(
            after.get(&seq).copied(),
            Some(e),
            "event {seq} changed or vanished across kill -9"
        );
    }
    let seqs: Vec<u64> = events_after
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs not increasing");
    // Idempotent retries after the restart: the original response, byte for byte.
    let replays: Vec<_> = known.iter().filter_map(|k| k.replay.clone()).collect();
    assert!(replays.len() >= 100);
    for (key, body, status, original) in replays.iter().step_by(7) {
        let r = s.call(
            "POST",
            "/v1/orders",
            &[("Authorization", STOREFRONT), ("Idempotency-Key", key)],
            Some(body),
        );
        assert_eq!((r.status, &r.body), (*status, original), "replay of {key}");
    }
}

/// An SSE client that disconnects mid-stream while events are produced and resumes
/// with `Last-Event-ID`, three times, misses nothing and sees nothing twice: the
/// concatenation equals the JSON feed.
#[test]
fn sse_resume_while_producing_misses_nothing() {
    let dir = TempDir::new("sse-live");
    let s = Server::start(&dir.data(), "sse");
    s.define("E", 1_000_000);
    let addr = s.addr;
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let producing = producing.clone();
        std::thread::spawn(move || {
            for i in 0..400 {
                let body = if i % 5 == 4 {
                    r#"{"delta":1,"reason":"inbound"}"#
                } else {
                    r#"{"lines":[{"sku":"E","qty":1}]}"#
                };
                let path = if i % 5 == 4 {
                    "/v1/skus/E/adjustments"
                } else {
                    "/v1/reservations"
                };
                let r = request(addr, "POST", path, &[("Authorization", ADMIN)], Some(body))
                    .expect("producer request");
                assert!(r.status == 200 || r.status == 201, "{}", r.body);
            }
            producing.store(false, Ordering::Relaxed);
        })
    };
    let mut seen: Vec<(u64, String, String)> = Vec::new();
    // Three short sessions while the producer runs, each dropped mid-stream.
    for _ in 0..3 {
        let last = seen.last().map(|e| e.0);
        let got = read_sse(open_sse(addr, last), |got| got.len() >= 60);
        assert!(!got.is_empty());
        seen.extend(got);
    }
    assert!(
        producing.load(Ordering::Relaxed),
        "the producer finished before the reconnects: the test did not exercise a live stream"
    );
    producer.join().unwrap();
    let feed = s.all_events();
    let last_seq = feed.last().unwrap()["seq"].as_u64().unwrap();
    // The last session reads up to the end of the feed.
    let resume = seen.last().map(|e| e.0);
    seen.extend(read_sse(open_sse(addr, resume), |got| {
        got.last().is_some_and(|e| e.0 >= last_seq)
    }));
    let sse_seqs: Vec<u64> = seen.iter().map(|e| e.0).collect();
    let feed_seqs: Vec<u64> = feed.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(sse_seqs, feed_seqs, "SSE missed or repeated events");
    for ((seq, kind, data), e) in seen.iter().zip(&feed) {
        let data: Value = serde_json::from_str(data).expect("SSE data is JSON");
        assert_eq!(&data, e, "event {seq}");
        assert_eq!(e["type"], kind.as_str(), "event {seq}");
    }
}

/// SIGTERM while clients write: exit 0, every acknowledged write survives, a snapshot
/// is left, and the restart replays no record beyond it (log line and /metrics).
#[test]
fn sigterm_under_load_snapshots_and_replays_nothing() {
    let dir = TempDir::new("sigterm-load");
    let data = dir.data();
    let s = Server::start(&data, "first");
    s.define("T", 1_000_000);
    let acked = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let addr = s.addr;
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let (acked, count) = (acked.clone(), count.clone());
            std::thread::spawn(move || {
                for _ in 0..2000 {
                    let Ok(r) = request(
                        addr,
                        "POST",
                        "/v1/reservations",
                        &[("Authorization", STOREFRONT)],
                        Some(r#"{"lines":[{"sku":"T","qty":1}]}"#),
                    ) else {
                        return;
                    };
                    match r.status {
                        201 => {
                            acked.lock().unwrap().push(r.str_field("id"));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        // Draining: refused, not applied.
                        503 => return,
                        other => panic!("unexpected {other}: {}", r.body),
                    }
                }
            })
        })
        .collect();
    common::eventually("the load to get going", || {
        count.load(Ordering::Relaxed) >= 200
    });
    let status = s.sigterm_and_wait();
    assert!(status.success(), "exit status {status:?}");
    for w in writers {
        w.join().unwrap();
    }
    let snapshots = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .count();
    assert!(snapshots > 0, "no snapshot left in {}", data.display());

    let s = Server::start(&data, "second");
    assert!(
        s.stderr().contains("records_replayed=0"),
        "the restart replayed records beyond the snapshot: {}",
        s.stderr()
    );
    let metrics = s.call("GET", "/metrics", &[], None).body;
    let metric = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{metrics}"))
    };
    let snapshot_lsn = metric("surge_snapshot_lsn");
    assert!(snapshot_lsn > 0.0);
    assert_eq!(
        metric("surge_wal_durable_lsn"),
        snapshot_lsn,
        "records beyond the snapshot"
    );
    let acked = acked.lock().unwrap();
    let sku = s.admin("GET", "/v1/skus/T", None).json();
    // Every acknowledged hold; at most one more per writer (applied, but the answer
    // lost as the connection closed).
    let reserved = sku["reserved"].as_u64().unwrap();
    let acked_n = acked.len() as u64;
    assert!(
        (acked_n..=acked_n + 4).contains(&reserved),
        "{acked_n} acknowledged, {sku}"
    );
    for id in acked.iter().step_by(17) {
        let r = s.admin("GET", &format!("/v1/reservations/{id}"), None);
        assert_eq!(r.json()["status"], "held", "{}", r.body);
    }
}
