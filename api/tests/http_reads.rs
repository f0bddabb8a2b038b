//! Reads over HTTP are linearizable (issue 9): a stock read issued after an
//! acknowledged reservation sees it, while other callers keep writing beside it.
//! Reads are answered from the stock board when it is current and through the
//! follower's queue when it is not; both must obey the rule.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::{STOREFRONT, Server, TempDir};

const READERS: u64 = 4;
const ROUNDS: u64 = 60;

fn reserve(s: &Server, sku: &str) -> u16 {
    s.as_(
        STOREFRONT,
        "POST",
        "/v1/reservations",
        Some(&format!(r#"{{"lines":[{{"sku":"{sku}","qty":1}}]}}"#)),
    )
    .status
}

#[test]
fn a_stock_read_after_an_acknowledged_reservation_sees_it_under_load() {
    let dir = TempDir::new("reads");
    let s = Server::start(&dir.data(), "reads");
    s.define("LOAD", 1_000_000);
    for t in 0..READERS {
        s.define(&format!("R{t}"), 1_000);
    }
    let stop = AtomicBool::new(false);
    let load_held = AtomicU64::new(0);
    std::thread::scope(|scope| {
        // The load: reservations on another SKU for as long as the readers run.
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::Acquire) {
                    assert_eq!(reserve(&s, "LOAD"), 201);
                    load_held.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let readers: Vec<_> = (0..READERS)
            .map(|t| {
                let s = &s;
                scope.spawn(move || {
                    let sku = format!("R{t}");
                    for i in 1..=ROUNDS {
                        assert_eq!(reserve(s, &sku), 201);
                        // Acknowledged: every read from now on shows exactly i held
                        // (this caller is the only one writing this SKU).
                        let r = s.as_(STOREFRONT, "GET", &format!("/v1/skus/{sku}"), None);
                        assert_eq!(r.status, 200, "{}", r.body);
                        let v = r.json();
                        assert_eq!(
                            (v["on_hand"].as_u64(), v["reserved"].as_u64()),
                            (Some(1_000), Some(i)),
                            "{sku} after {i} acknowledged reservations: {v}"
                        );
                    }
                })
            })
            .collect();
        for reader in readers {
            reader.join().expect("reader");
        }
        stop.store(true, Ordering::Release);
    });
    // The load really ran beside the readers, and its holds are all there.
    let held = load_held.load(Ordering::Relaxed);
    assert!(held > 0, "no load ran beside the reads");
    let v = s.as_(STOREFRONT, "GET", "/v1/skus/LOAD", None).json();
    assert_eq!(v["reserved"].as_u64(), Some(held));
}
