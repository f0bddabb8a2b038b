//! What the drill was told (every 2xx), and checking it against the server.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;

use crate::http::{Answer, HttpClient, encode};
use crate::stats::Recorder;

/// Failures listed in a report at most (the total is always counted).
const FAILURES_LISTED_MAX: usize = 50;

/// Statuses whose units have left `on_hand` for good (sold).
pub(crate) const COMMITTED: &[&str] = &[
    "confirmed",
    "picking",
    "packed",
    "shipped",
    "delivered",
    "completed",
];

/// Record one answered (or unanswered) request; returns the problem code, if any.
pub fn note(rec: &Recorder, op: &'static str, since: Instant, answer: &Answer) {
    match answer {
        Ok(r) if r.ok() => rec.record(op, since, None),
        Ok(r) => rec.record(op, since, Some(&r.problem_code())),
        Err(e) => rec.record(op, since, Some(e.code())),
    }
}

/// A SKU the drill defined, and the units it received.
#[derive(Debug, Clone, Serialize)]
pub struct SkuDef {
    pub sku: String,
    pub received: u64,
}

/// An acknowledged reservation and the statuses it may have now.
#[derive(Debug, Clone)]
pub struct ResAck {
    pub id: String,
    pub allowed: Vec<&'static str>,
}

/// An acknowledged order and what it may look like now.
#[derive(Debug, Clone, Default)]
pub struct OrderAck {
    pub id: String,
    pub order_no: String,
    pub allowed: Vec<&'static str>,
    /// Empty: any payment status.
    pub payment: Vec<&'static str>,
    pub cancel_reason: Option<&'static str>,
    pub tracking_no: Option<String>,
}

/// Everything the server acknowledged to the drill.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    pub reservations: Vec<ResAck>,
    pub orders: Vec<OrderAck>,
    /// Orders created with no answer: they may or may not exist.
    pub unanswered_order_nos: Vec<String>,
    /// Reservations created with no answer (their holds are unknown to us).
    pub unanswered_reservations: u64,
}

pub type SharedLedger = Arc<Mutex<Ledger>>;

/// The verdict of an audit.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Audit {
    pub passed: bool,
    /// Acknowledged writes found missing.
    pub lost: u64,
    pub checks: u64,
    pub failures_total: u64,
    /// The first failures, each a sentence naming what and why.
    pub failures: Vec<String>,
    pub notes: Vec<String>,
    /// Per SKU: received, on_hand, reserved, sold (received - on_hand) and the
    /// units the drill can account for.
    pub skus: Vec<SkuAudit>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SkuAudit {
    pub sku: String,
    pub received: u64,
    pub on_hand: u64,
    pub reserved: u64,
    pub sold: u64,
    pub sold_by_known_orders: u64,
    pub held_by_known: u64,
}

impl Audit {
    pub fn new() -> Audit {
        Audit {
            passed: true,
            ..Default::default()
        }
    }

    /// The run's verdict as reports show it: FAIL, PASS, or "not audited" for a run
    /// that checked nothing (the failover drill's side-by-side load runs: they
    /// showed PASS with 0 checks).
    pub fn verdict(&self) -> &'static str {
        match (self.passed, self.checks) {
            (false, _) => "FAIL",
            (true, 0) => "not audited",
            (true, _) => "PASS",
        }
    }

    pub fn check(&mut self, ok: bool, why: impl FnOnce() -> String) {
        self.checks += 1;
        if !ok {
            self.fail(why());
        }
    }

    /// A kill drill (crash, failover) that reached its `--time-max` before round
    /// `next` of `asked` (`rounds`: "restarts", "kills") says so.
    pub fn rounds_cut_short(&mut self, next: u32, asked: u32, rounds: &str) {
        self.notes.push(format!(
            "stopped after {} of {asked} {rounds}: --time-max reached (less the 60 s kept \
             for the final check and the stop)",
            next - 1
        ));
    }

    pub fn fail(&mut self, why: String) {
        self.passed = false;
        self.failures_total += 1;
        if self.failures.len() < FAILURES_LISTED_MAX {
            self.failures.push(why);
        }
    }

    pub fn lost_write(&mut self, why: String) {
        self.lost += 1;
        self.fail(why);
    }

    pub fn merge(&mut self, other: Audit) {
        self.passed &= other.passed;
        self.checks += other.checks;
        self.failures_total += other.failures_total;
        self.lost += other.lost;
        for f in other.failures {
            if self.failures.len() < FAILURES_LISTED_MAX {
                self.failures.push(f);
            }
        }
        self.notes.extend(other.notes);
        self.skus.extend(other.skus);
    }
}

/// Run `f` on every item with `concurrency` tasks; results in item order.
pub async fn fan_out<T, R, F, Fut>(items: Vec<T>, concurrency: usize, f: F) -> Vec<R>
where
    T: Send + Sync + 'static,
    R: Send + 'static,
    F: Fn(&T) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = R> + Send,
{
    let items = Arc::new(items);
    let f = Arc::new(f);
    let workers = concurrency.max(1).min(items.len().max(1));
    let mut handles = Vec::new();
    for w in 0..workers {
        let items = Arc::clone(&items);
        let f = Arc::clone(&f);
        handles.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let mut i = w;
            while i < items.len() {
                out.push((i, f(&items[i]).await));
                i += workers;
            }
            out
        }));
    }
    let mut all: Vec<(usize, R)> = Vec::with_capacity(items.len());
    for h in handles {
        all.extend(h.await.expect("audit task"));
    }
    all.sort_by_key(|(i, _)| *i);
    all.into_iter().map(|(_, r)| r).collect()
}

/// GET with a few retries on no answer (the audit itself should not flake).
pub(crate) async fn get_json(client: &HttpClient, path: &str) -> Result<Option<Value>, String> {
    let mut last = String::new();
    for attempt in 0..5 {
        match client.get(path).await {
            Ok(r) if r.status == 200 => {
                return r
                    .json()
                    .map(Some)
                    .ok_or_else(|| format!("GET {path}: body is not JSON"));
            }
            Ok(r) if r.status == 404 => return Ok(None),
            Ok(r) => last = format!("GET {path}: {} {}", r.status, r.problem_code()),
            Err(e) => last = format!("GET {path}: {}", e.code()),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
    }
    Err(last)
}

pub(crate) fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// Units per SKU of one order body.
fn order_lines(v: &Value) -> Vec<(String, u64)> {
    v.get("lines")
        .and_then(Value::as_array)
        .map(|lines| {
            lines
                .iter()
                .map(|l| {
                    (
                        str_of(l, "sku").to_string(),
                        l.get("qty").and_then(Value::as_u64).unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How the drill wants SKU levels checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accounting {
    /// Invariants only (reserved <= on_hand, sold + held <= received).
    Invariants,
    /// Also: sold equals the units of the orders the drill knows in a sold state,
    /// and (when every reservation create was answered) held equals the units it
    /// knows to be held.
    Exact,
}

/// Check the ledger (or the part of it given) and the SKU levels against the server.
pub async fn verify(
    client: &HttpClient,
    ledger: &Ledger,
    skus: &[SkuDef],
    accounting: Accounting,
    concurrency: usize,
) -> Audit {
    let mut audit = Audit::new();
    let sold_states: &[&str] = COMMITTED;

    // Orders the server acknowledged.
    let acks = ledger.orders.clone();
    let c = client.clone();
    let fetched = fan_out(acks, concurrency, move |o: &OrderAck| {
        let c = c.clone();
        let path = format!("/v1/orders/{}", encode(&o.id));
        async move { get_json(&c, &path).await }
    })
    .await;
    // Units per SKU in a sold state / held by unpaid orders, from what we can see.
    let mut sold_known: BTreeMap<String, u64> = BTreeMap::new();
    let mut held_known: BTreeMap<String, u64> = BTreeMap::new();
    let mut tally = |v: &Value| {
        let status = str_of(v, "status");
        let restocked = v
            .get("returned")
            .and_then(|r| r.get("restock"))
            .and_then(Value::as_bool)
            .unwrap_or(true);
        for (sku, qty) in order_lines(v) {
            if sold_states.contains(&status) || (status == "returned" && !restocked) {
                *sold_known.entry(sku).or_default() += qty;
            } else if status == "reserved" {
                *held_known.entry(sku).or_default() += qty;
            }
        }
    };
    for (o, got) in ledger.orders.iter().zip(fetched) {
        match got {
            Err(e) => audit.fail(format!("order {}: could not be read: {e}", o.id)),
            Ok(None) => audit.lost_write(format!(
                "order {} ({}) was acknowledged but is missing (404): an acknowledged write was lost",
                o.id, o.order_no
            )),
            Ok(Some(v)) => {
                let status = str_of(&v, "status");
                audit.check(o.allowed.contains(&status), || {
                    format!(
                        "order {} ({}) is {status}, expected {}",
                        o.id,
                        o.order_no,
                        o.allowed.join(" or ")
                    )
                });
                audit.check(str_of(&v, "order_no") == o.order_no, || {
                    format!("order {} has order_no {:?}, expected {:?}", o.id, str_of(&v, "order_no"), o.order_no)
                });
                if !o.payment.is_empty() {
                    let pay = v.get("payment").map(|p| str_of(p, "status")).unwrap_or("");
                    audit.check(o.payment.contains(&pay), || {
                        format!("order {} payment is {pay}, expected {}", o.id, o.payment.join(" or "))
                    });
                }
                if let Some(reason) = o.cancel_reason {
                    let got = v
                        .get("cancellation")
                        .map(|c| str_of(c, "reason"))
                        .unwrap_or("");
                    audit.check(got == reason, || {
                        format!("order {} cancellation reason is {got:?}, expected {reason}", o.id)
                    });
                }
                if let Some(t) = &o.tracking_no {
                    let got = str_of(&v, "tracking_no");
                    audit.check(got == t, || {
                        format!("order {} tracking_no is {got:?}, expected {t:?}", o.id)
                    });
                }
                tally(&v);
            }
        }
    }

    // Orders created without an answer: they may exist; count them if they do.
    let nos = ledger.unanswered_order_nos.clone();
    let c = client.clone();
    let fetched = fan_out(nos, concurrency, move |no: &String| {
        let c = c.clone();
        let path = format!("/v1/orders/by-no/{}", encode(no));
        async move { get_json(&c, &path).await }
    })
    .await;
    let mut unanswered_found = 0u64;
    for (no, got) in ledger.unanswered_order_nos.iter().zip(fetched) {
        match got {
            Err(e) => audit.fail(format!("order_no {no}: could not be read: {e}")),
            Ok(None) => {}
            Ok(Some(v)) => {
                unanswered_found += 1;
                tally(&v);
            }
        }
    }
    if !ledger.unanswered_order_nos.is_empty() {
        audit.notes.push(format!(
            "{} order creates got no answer; {} of them exist on the server and are counted",
            ledger.unanswered_order_nos.len(),
            unanswered_found
        ));
    }

    // Reservations the server acknowledged.
    let acks = ledger.reservations.clone();
    let c = client.clone();
    let fetched = fan_out(acks, concurrency, move |r: &ResAck| {
        let c = c.clone();
        let path = format!("/v1/reservations/{}", encode(&r.id));
        async move { get_json(&c, &path).await }
    })
    .await;
    for (r, got) in ledger.reservations.iter().zip(fetched) {
        match got {
            Err(e) => audit.fail(format!("reservation {}: could not be read: {e}", r.id)),
            Ok(None) => audit.lost_write(format!(
                "reservation {} was acknowledged but is missing (404): an acknowledged write was lost",
                r.id
            )),
            Ok(Some(v)) => {
                let status = str_of(&v, "status");
                audit.check(r.allowed.contains(&status), || {
                    format!("reservation {} is {status}, expected {}", r.id, r.allowed.join(" or "))
                });
                // Holds not adopted by an order count as held units.
                if status == "held" && v.get("order_id").is_none_or(Value::is_null) {
                    for (sku, qty) in order_lines(&v) {
                        *held_known.entry(sku).or_default() += qty;
                    }
                }
            }
        }
    }

    // SKU levels: checked into their own verdict so that an oversell leads the list.
    let orders_audit = audit;
    let mut audit = Audit::new();
    for def in skus {
        let path = format!("/v1/skus/{}", encode(&def.sku));
        let v = match get_json(client, &path).await {
            Ok(Some(v)) => v,
            Ok(None) => {
                audit.fail(format!("SKU {} is missing (404)", def.sku));
                continue;
            }
            Err(e) => {
                audit.fail(format!("SKU {}: {e}", def.sku));
                continue;
            }
        };
        let on_hand = v.get("on_hand").and_then(Value::as_u64).unwrap_or(0);
        let reserved = v.get("reserved").and_then(Value::as_u64).unwrap_or(0);
        let sold = def.received.saturating_sub(on_hand);
        let sold_by_known = sold_known.get(&def.sku).copied().unwrap_or(0);
        let held_by_known = held_known.get(&def.sku).copied().unwrap_or(0);
        audit.check(reserved <= on_hand, || {
            format!(
                "SKU {}: reserved {reserved} > on_hand {on_hand} (oversold)",
                def.sku
            )
        });
        audit.check(on_hand <= def.received, || {
            format!(
                "SKU {}: on_hand {on_hand} > received {}",
                def.sku, def.received
            )
        });
        audit.check(sold + reserved <= def.received, || {
            format!(
                "SKU {}: sold {sold} + held {reserved} > received {} (oversold)",
                def.sku, def.received
            )
        });
        if accounting == Accounting::Exact {
            audit.check(sold == sold_by_known, || {
                format!(
                    "SKU {}: on_hand fell by {sold} but the drill's paid orders account for {sold_by_known}",
                    def.sku
                )
            });
            if ledger.unanswered_reservations == 0 {
                audit.check(reserved == held_by_known, || {
                    format!(
                        "SKU {}: {reserved} units reserved but the drill's holds account for {held_by_known}",
                        def.sku
                    )
                });
            } else {
                audit.check(reserved >= held_by_known, || {
                    format!(
                        "SKU {}: {reserved} units reserved, fewer than the {held_by_known} the drill holds",
                        def.sku
                    )
                });
            }
        }
        audit.skus.push(SkuAudit {
            sku: def.sku.clone(),
            received: def.received,
            on_hand,
            reserved,
            sold,
            sold_by_known_orders: sold_by_known,
            held_by_known,
        });
    }
    audit.merge(orders_audit);
    audit
}
