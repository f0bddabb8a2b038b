//! `limited-sale`: a flash sale under 限购 and a sale window. The drill's SKUs get a
//! purchase limit per customer and a window that opens `opens_after` into the drill
//! and closes `closes_after` into it. Three kinds of sessions, all with a customer id:
//!
//! - shoppers: reserve (or order directly), then pay, abandon or cancel; they retry a
//!   bounded number of times (`--retries`) on `sale_not_open` before the opening (at
//!   most 150 ms apart, as at a countdown), on `insufficient_stock` and on no answer;
//! - sessions due before the opening try early by construction (the load starts at
//!   once, the window `opens_after` later);
//! - scalpers: a few customer ids, each session many reservations in a row with one
//!   id, paying for every hold it gets, to push past the limit.
//!
//! The audit (after the holds have expired) checks, through the API:
//! - for every (SKU, customer) the drill used: `GET /v1/skus/{sku}/customers/{c}`
//!   answers `counted <= limit`, and a recount from the customer's acknowledged
//!   holds and orders (as the server shows them now) is at most the limit and equals
//!   `counted` when every create of that customer was answered;
//! - every acknowledged reservation, and every acknowledged order that took stock
//!   without a hold, was created in `[sale_starts_at, sale_ends_at)` as the SKU states
//!   them;
//! - the stock accounting of the plain flash sale (`audit::verify`).
//!
//! Refusals are reported by code.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::bail;
use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::{
    Accounting, Audit, COMMITTED, Ledger, OrderAck, ResAck, SkuDef, fan_out, get_json, note,
    str_of, verify,
};
use crate::flash::{Action, Mix, run_tag};
use crate::http::{Answer, HttpClient, encode};
use crate::load::{self, LoadConfig};
use crate::rng::{Rng, Zipf};
use crate::stats::{Recorder, RunStats};

#[derive(Debug, Clone, Serialize)]
pub struct LimitedConfig {
    pub skus: usize,
    pub stock: u64,
    pub shoppers: u64,
    pub zipf_s: f64,
    pub mix: Mix,
    /// Units per customer per SKU.
    pub limit: u64,
    /// The window opens this long after the SKUs are defined...
    #[serde(with = "as_millis")]
    pub opens_after: Duration,
    /// ...and closes this long after.
    #[serde(with = "as_millis")]
    pub closes_after: Duration,
    /// Share of sessions that are scalpers, percent.
    pub scalper_pct: u32,
    /// Distinct scalper customer ids.
    pub scalpers: u64,
    /// Reservations one scalper session tries.
    pub scalper_attempts: u32,
    /// Retries of one shopper at most.
    pub retries: u32,
    /// Share of shopper attempts that order without a hold, percent.
    pub direct_pct: u32,
    pub ttl_ms: u64,
    pub qty_max: u64,
    pub unit_price: u64,
    pub seed: u64,
}

/// Durations as milliseconds in the JSON report.
mod as_millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

/// One acknowledged write that takes stock for a customer.
#[derive(Debug, Clone)]
struct Taken {
    customer: String,
    sku: String,
    qty: u64,
    /// The hold (reservations) ...
    reservation_id: Option<String>,
    /// ... and/or the order; an order without a hold took stock itself.
    order_id: Option<String>,
}

#[derive(Default)]
struct Book {
    ledger: Ledger,
    taken: Vec<Taken>,
    /// Every (SKU, customer) the drill asked for.
    seen: BTreeSet<(String, String)>,
    /// Customers with a create that got no answer (their count may hold more).
    unanswered: BTreeSet<(String, String)>,
    /// Refusals and failures by code.
    codes: BTreeMap<String, u64>,
    /// `sale_not_open` answers that named `opens_at` (tried before the opening).
    early_refusals: u64,
    /// ... and `closed_at` (tried after the close).
    late_refusals: u64,
}

struct Shop {
    client: HttpClient,
    recorder: Arc<Recorder>,
    book: Mutex<Book>,
    skus: Vec<SkuDef>,
    zipf: Zipf,
    cfg: LimitedConfig,
    tag: String,
    opens_at: Instant,
    closes_at: Instant,
}

/// How one attempt to take stock ended.
enum Outcome {
    Done,
    /// Worth another try after this pause.
    Retry(Duration),
    /// A definite refusal that another try will not change.
    Stop,
}

impl Shop {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().expect("book")
    }

    /// Count a refusal or a missing answer; what the shopper should do next.
    fn refused(&self, sku: &str, customer: &str, a: &Answer) -> Outcome {
        let mut b = self.book();
        match a {
            Err(e) => {
                *b.codes.entry(e.code().to_string()).or_default() += 1;
                b.unanswered.insert((sku.to_string(), customer.to_string()));
                Outcome::Retry(Duration::from_millis(100))
            }
            Ok(r) => {
                let code = r.problem_code();
                *b.codes.entry(code.clone()).or_default() += 1;
                let body = r.json().unwrap_or(Value::Null);
                match code.as_str() {
                    "sale_not_open" if body.get("opens_at").is_some_and(Value::is_string) => {
                        b.early_refusals += 1;
                        // Refresh again shortly, as a shopper at the countdown would (a
                        // session holds a connection slot while it waits, so not for long).
                        let wait = self.opens_at.saturating_duration_since(Instant::now());
                        Outcome::Retry(
                            wait.min(Duration::from_millis(150)) + Duration::from_millis(1),
                        )
                    }
                    "sale_not_open" => {
                        b.late_refusals += 1;
                        Outcome::Stop
                    }
                    "insufficient_stock" | "overloaded" => {
                        Outcome::Retry(Duration::from_millis(50))
                    }
                    _ => Outcome::Stop,
                }
            }
        }
    }
}

fn id_of(v: &Value) -> Option<String> {
    v.get("id").and_then(Value::as_str).map(str::to_string)
}

fn created(a: &Answer) -> Option<String> {
    match a {
        Ok(r) if r.status == 201 => r.json().as_ref().and_then(id_of),
        _ => None,
    }
}

/// Reserve `qty` of `sku` for `customer`, then do `action` with the hold.
#[allow(clippy::too_many_arguments)] // one attempt's coordinates, all distinct
async fn via_hold(
    shop: &Shop,
    since: Instant,
    n: u64,
    attempt: u32,
    sku: &str,
    customer: &str,
    qty: u64,
    action: Action,
    rng: &mut Rng,
) -> Outcome {
    let c = &shop.client;
    let rec = &shop.recorder;
    let body = json!({"lines": [{"sku": sku, "qty": qty}], "ttl_ms": shop.cfg.ttl_ms, "customer_id": customer});
    let a = c.post("/v1/reservations", &body).await;
    note(rec, "reserve", since, &a);
    let Some(rid) = created(&a) else {
        if a.is_err() {
            shop.book().ledger.unanswered_reservations += 1;
        }
        return shop.refused(sku, customer, &a);
    };
    let held_or_later: Vec<&'static str> = vec!["held", "expired", "committed", "released"];
    let mut res = ResAck {
        id: rid.clone(),
        allowed: vec!["expired"],
    };
    let mut taken = Taken {
        customer: customer.to_string(),
        sku: sku.to_string(),
        qty,
        reservation_id: Some(rid.clone()),
        order_id: None,
    };
    if action == Action::Abandon {
        let mut b = shop.book();
        b.ledger.reservations.push(res);
        b.taken.push(taken);
        return Outcome::Done;
    }
    if action == Action::Cancel && rng.chance(0.5) {
        let t = Instant::now();
        let a = c
            .post(
                &format!("/v1/reservations/{}/release", encode(&rid)),
                &json!({}),
            )
            .await;
        note(rec, "release", t, &a);
        res.allowed = match &a {
            Ok(r) if r.ok() => vec!["released"],
            _ => held_or_later,
        };
        let mut b = shop.book();
        b.ledger.reservations.push(res);
        b.taken.push(taken);
        return Outcome::Done;
    }
    let order_no = format!("{}-{n}-{attempt}", shop.tag);
    let body = json!({
        "order_no": order_no,
        "customer_id": customer,
        "lines": [{"sku": sku, "qty": qty, "unit_price": shop.cfg.unit_price}],
        "reservation_id": rid,
    });
    let t = Instant::now();
    let a = c.post("/v1/orders", &body).await;
    note(rec, "create_order", t, &a);
    let Some(oid) = created(&a) else {
        let mut b = shop.book();
        if a.is_err() {
            b.ledger.unanswered_order_nos.push(order_no);
        }
        res.allowed = held_or_later;
        b.ledger.reservations.push(res);
        b.taken.push(taken);
        return Outcome::Done;
    };
    taken.order_id = Some(oid.clone());
    let mut order = OrderAck {
        id: oid.clone(),
        order_no,
        ..Default::default()
    };
    settle(shop, n, &oid, qty, action, &mut order, Some(&mut res)).await;
    let mut b = shop.book();
    b.ledger.orders.push(order);
    b.ledger.reservations.push(res);
    b.taken.push(taken);
    Outcome::Done
}

/// Pay or cancel an acknowledged order; what it (and its hold) may be at audit time.
async fn settle(
    shop: &Shop,
    n: u64,
    oid: &str,
    qty: u64,
    action: Action,
    order: &mut OrderAck,
    res: Option<&mut ResAck>,
) {
    let c = &shop.client;
    let t = Instant::now();
    let pay = action != Action::Cancel;
    let a = if pay {
        c.post(
            &format!("/v1/orders/{}/pay", encode(oid)),
            &json!({"amount": qty * shop.cfg.unit_price, "payment_ref": format!("pay-{n}")}),
        )
        .await
    } else {
        c.post(
            &format!("/v1/orders/{}/cancel", encode(oid)),
            &json!({"reason": "customer_request", "note": "changed my mind"}),
        )
        .await
    };
    note(&shop.recorder, if pay { "pay" } else { "cancel" }, t, &a);
    let (done_order, done_pay, done_res) = if pay {
        ("confirmed", "paid", "committed")
    } else {
        ("cancelled", "unpaid", "released")
    };
    let held_or_later: Vec<&'static str> = vec!["held", "expired", "committed", "released"];
    let res_allowed;
    match &a {
        Ok(r) if r.ok() => {
            order.allowed = vec![done_order];
            order.payment = vec![done_pay];
            if !pay {
                order.cancel_reason = Some("customer_request");
            }
            res_allowed = vec![done_res];
        }
        Ok(_) => {
            order.allowed = vec!["reserved", "expired"];
            order.payment = vec!["unpaid"];
            res_allowed = vec!["held", "expired"];
        }
        Err(_) => {
            order.allowed = vec!["reserved", "expired", done_order];
            order.payment = vec!["unpaid", done_pay];
            res_allowed = held_or_later;
        }
    }
    if let Some(res) = res {
        res.allowed = res_allowed;
    }
}

/// Order `qty` of `sku` without a hold, then pay (or cancel) it.
#[allow(clippy::too_many_arguments)] // one attempt's coordinates, all distinct
async fn direct(
    shop: &Shop,
    since: Instant,
    n: u64,
    attempt: u32,
    sku: &str,
    customer: &str,
    qty: u64,
    action: Action,
) -> Outcome {
    let order_no = format!("{}-{n}-{attempt}", shop.tag);
    let body = json!({
        "order_no": order_no,
        "customer_id": customer,
        "lines": [{"sku": sku, "qty": qty, "unit_price": shop.cfg.unit_price}],
    });
    let a = shop.client.post("/v1/orders", &body).await;
    note(&shop.recorder, "create_order", since, &a);
    let Some(oid) = created(&a) else {
        if a.is_err() {
            shop.book().ledger.unanswered_order_nos.push(order_no);
        }
        return shop.refused(sku, customer, &a);
    };
    let mut order = OrderAck {
        id: oid.clone(),
        order_no,
        ..Default::default()
    };
    // An abandoned direct order is left unpaid: it expires with its hold.
    if action == Action::Abandon {
        order.allowed = vec!["reserved", "expired"];
        order.payment = vec!["unpaid"];
    } else {
        settle(shop, n, &oid, qty, action, &mut order, None).await;
    }
    let mut b = shop.book();
    b.ledger.orders.push(order);
    b.taken.push(Taken {
        customer: customer.to_string(),
        sku: sku.to_string(),
        qty,
        reservation_id: None,
        order_id: Some(oid),
    });
    Outcome::Done
}

/// One session: a shopper (with bounded retries) or a scalper.
/// The first request of a session is timed from its due time (open loop: a late
/// start is latency), retries from when they are sent.
async fn session(shop: Arc<Shop>, n: u64, due: Instant) {
    let cfg = &shop.cfg;
    let mut rng = Rng::for_item(cfg.seed, n);
    let k = shop.zipf.sample(&mut rng);
    let sku = shop.skus[k].sku.clone();
    let scalper = rng.below(100) < u64::from(cfg.scalper_pct);
    let customer = if scalper {
        format!("{}-scalper-{}", shop.tag, rng.below(cfg.scalpers.max(1)))
    } else {
        format!("{}-c{}", shop.tag, rng.below(cfg.shoppers.max(1)))
    };
    shop.book().seen.insert((sku.clone(), customer.clone()));
    if scalper {
        // Many attempts with one id, keeping (paying) everything it gets.
        for attempt in 0..cfg.scalper_attempts {
            let qty = rng.range(1, cfg.limit.max(1));
            let since = if attempt == 0 { due } else { Instant::now() };
            let _ = via_hold(
                &shop,
                since,
                n,
                attempt,
                &sku,
                &customer,
                qty,
                Action::Pay,
                &mut rng,
            )
            .await;
        }
        return;
    }
    let action = cfg.mix.pick(&mut rng);
    let qty = rng.range(1, cfg.qty_max.max(1));
    let give_up = shop.closes_at + Duration::from_secs(1);
    for attempt in 0..=cfg.retries {
        let since = if attempt == 0 { due } else { Instant::now() };
        let outcome = if rng.below(100) < u64::from(cfg.direct_pct) {
            direct(&shop, since, n, attempt, &sku, &customer, qty, action).await
        } else {
            via_hold(
                &shop, since, n, attempt, &sku, &customer, qty, action, &mut rng,
            )
            .await
        };
        match outcome {
            Outcome::Done | Outcome::Stop => return,
            Outcome::Retry(pause) => {
                if Instant::now() + pause > give_up {
                    return;
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// RFC 3339 with milliseconds, UTC.
fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn instant_of(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(text).ok()
}

/// Whether `created` lies in `[starts, ends)` (a missing bound is open).
pub fn in_window(
    created: SystemTime,
    starts: Option<SystemTime>,
    ends: Option<SystemTime>,
) -> bool {
    starts.is_none_or(|s| created >= s) && ends.is_none_or(|e| created < e)
}

/// The failures of one (SKU, customer) pair: the server's count and the drill's
/// recount against the limit, and against each other when every create was answered.
pub fn customer_failures(
    sku: &str,
    customer: &str,
    limit: u64,
    counted: u64,
    recount: u64,
    all_answered: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    if counted > limit {
        out.push(format!(
            "SKU {sku}, customer {customer}: the server counts {counted} units, over the limit of {limit}"
        ));
    }
    if recount > limit {
        out.push(format!(
            "SKU {sku}, customer {customer}: holds and orders acknowledged to the drill add up to {recount} units, over the limit of {limit}"
        ));
    }
    if all_answered && recount != counted {
        out.push(format!(
            "SKU {sku}, customer {customer}: the server counts {counted} units, a recount of the customer's holds and orders finds {recount}"
        ));
    } else if recount > counted {
        out.push(format!(
            "SKU {sku}, customer {customer}: the server counts {counted} units, fewer than the {recount} the drill's holds and orders show"
        ));
    }
    out
}

/// Statuses of an order whose units count toward the limit.
fn order_counts(status: &str) -> bool {
    status == "reserved" || COMMITTED.contains(&status)
}

async fn audit_rules(
    client: &HttpClient,
    book: &Book,
    skus: &[SkuDef],
    limit: u64,
    concurrency: usize,
) -> Audit {
    let mut audit = Audit::new();
    // The window each SKU states.
    let mut windows: BTreeMap<String, (Option<SystemTime>, Option<SystemTime>)> = BTreeMap::new();
    for def in skus {
        match get_json(client, &format!("/v1/skus/{}", encode(&def.sku))).await {
            Ok(Some(v)) => {
                audit.check(
                    v.get("purchase_limit_per_customer").and_then(Value::as_u64) == Some(limit),
                    || {
                        format!(
                            "SKU {}: limit {} , expected {limit}",
                            def.sku, v["purchase_limit_per_customer"]
                        )
                    },
                );
                let starts = instant_of(str_of(&v, "sale_starts_at"));
                let ends = instant_of(str_of(&v, "sale_ends_at"));
                audit.check(starts.is_some() && ends.is_some(), || {
                    format!("SKU {}: the window is not what the drill set: {v}", def.sku)
                });
                windows.insert(def.sku.clone(), (starts, ends));
            }
            Ok(None) => audit.fail(format!("SKU {} is missing (404)", def.sku)),
            Err(e) => audit.fail(format!("SKU {}: {e}", def.sku)),
        }
    }

    // What the server shows now for every acknowledged hold and order.
    let taken = book.taken.clone();
    let c = client.clone();
    let fetched = fan_out(taken, concurrency, move |t: &Taken| {
        let c = c.clone();
        let res = t.reservation_id.clone();
        let ord = t.order_id.clone();
        async move {
            let r = match res {
                Some(id) => get_json(&c, &format!("/v1/reservations/{}", encode(&id))).await,
                None => Ok(None),
            };
            let o = match ord {
                Some(id) => get_json(&c, &format!("/v1/orders/{}", encode(&id))).await,
                None => Ok(None),
            };
            (r, o)
        }
    })
    .await;
    let mut recount: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut checked_in_window = 0u64;
    for (t, (r, o)) in book.taken.iter().zip(fetched) {
        let key = (t.sku.clone(), t.customer.clone());
        let (r, o) = match (r, o) {
            (Ok(r), Ok(o)) => (r, o),
            (Err(e), _) | (_, Err(e)) => {
                audit.fail(format!("{t:?}: could not be read: {e}"));
                continue;
            }
        };
        // Which stamp took the stock: the hold's, or a holdless order's.
        let stamp = match (&t.reservation_id, &r, &o) {
            (Some(_), Some(r), _) => Some(str_of(r, "created_at").to_string()),
            (None, _, Some(o)) => Some(str_of(o, "created_at").to_string()),
            _ => None,
        };
        let Some(stamp) = stamp else {
            audit.fail(format!("{t:?}: acknowledged but missing (404)"));
            continue;
        };
        let (starts, ends) = windows.get(&t.sku).copied().unwrap_or((None, None));
        match instant_of(&stamp) {
            None => audit.fail(format!("{t:?}: created_at {stamp:?} is not RFC 3339")),
            Some(at) => {
                checked_in_window += 1;
                audit.check(in_window(at, starts, ends), || {
                    format!(
                        "SKU {}: stock taken at {stamp} for {} ({}), outside the sale window [{}, {})",
                        t.sku,
                        t.customer,
                        t.reservation_id.as_deref().or(t.order_id.as_deref()).unwrap_or("?"),
                        starts.map(rfc3339).unwrap_or_default(),
                        ends.map(rfc3339).unwrap_or_default()
                    )
                });
            }
        }
        let units = match &o {
            Some(o) if order_counts(str_of(o, "status")) => t.qty,
            Some(_) => 0,
            None => match &r {
                Some(r) if str_of(r, "status") == "held" => t.qty,
                _ => 0,
            },
        };
        *recount.entry(key).or_default() += units;
    }

    // Every (SKU, customer) seen, as the server counts it.
    let pairs: Vec<(String, String)> = book.seen.iter().cloned().collect();
    let c = client.clone();
    let counts = fan_out(
        pairs.clone(),
        concurrency,
        move |(sku, cust): &(String, String)| {
            let c = c.clone();
            let path = format!("/v1/skus/{}/customers/{}", encode(sku), encode(cust));
            async move { get_json(&c, &path).await }
        },
    )
    .await;
    let mut at_limit = 0u64;
    for ((sku, cust), got) in pairs.iter().zip(counts) {
        let v = match got {
            Ok(Some(v)) => v,
            Ok(None) => {
                audit.fail(format!("SKU {sku}, customer {cust}: 404"));
                continue;
            }
            Err(e) => {
                audit.fail(format!("SKU {sku}, customer {cust}: {e}"));
                continue;
            }
        };
        let counted = v.get("counted").and_then(Value::as_u64).unwrap_or(u64::MAX);
        let answered_limit = v.get("limit").and_then(Value::as_u64).unwrap_or(0);
        audit.check(answered_limit == limit, || {
            format!("SKU {sku}, customer {cust}: limit answered {answered_limit}, expected {limit}")
        });
        let mine = recount
            .get(&(sku.clone(), cust.clone()))
            .copied()
            .unwrap_or(0);
        let all_answered = !book.unanswered.contains(&(sku.clone(), cust.clone()));
        audit.checks += 1;
        for f in customer_failures(sku, cust, limit, counted, mine, all_answered) {
            audit.fail(f);
        }
        if counted == limit {
            at_limit += 1;
        }
    }
    audit.notes.push(format!(
        "{} (SKU, customer) pairs checked against the limit of {limit} ({at_limit} at the limit); {checked_in_window} acknowledged stock takings checked inside the sale window",
        pairs.len()
    ));
    audit
}

/// Run the limited sale against surge: define the SKUs with the rules, drive load,
/// wait for the holds to expire, audit.
pub async fn run(
    client: HttpClient,
    cfg: LimitedConfig,
    load_cfg: &LoadConfig,
    label: &str,
    audit_concurrency: usize,
) -> anyhow::Result<(RunStats, Audit)> {
    if cfg.limit == 0 {
        bail!("--limit must be at least 1");
    }
    if cfg.opens_after >= cfg.closes_after {
        bail!("--opens-after must come before --closes-after");
    }
    let tag = run_tag(cfg.seed);
    let skus: Vec<SkuDef> = (0..cfg.skus)
        .map(|k| SkuDef {
            sku: format!("ls-{tag}-{k}"),
            received: cfg.stock,
        })
        .collect();
    let now = SystemTime::now();
    let start = Instant::now();
    let (starts, ends) = (
        rfc3339(now + cfg.opens_after),
        rfc3339(now + cfg.closes_after),
    );
    for def in &skus {
        let path = format!("/v1/skus/{}", encode(&def.sku));
        let body = json!({
            "on_hand": def.received, "low_stock_threshold": 0, "name": "loadtest limited",
            "purchase_limit_per_customer": cfg.limit,
            "sale_starts_at": starts, "sale_ends_at": ends,
        });
        let r = client
            .put(&path, &body)
            .await
            .map_err(|e| anyhow::anyhow!("PUT {path}: {}", e.code()))?;
        if !r.ok() {
            bail!(
                "PUT {path}: {} {} (is --token an admin token?)",
                r.status,
                String::from_utf8_lossy(&r.body)
            );
        }
    }
    println!(
        "[{label}] sale window {starts} .. {ends}, limit {} per customer",
        cfg.limit
    );
    let recorder = Arc::new(Recorder::with_intended(
        load_cfg.mode(),
        // Shoppers try before the opening and after the close, and past the limit:
        // the sale's rules refusing them is what the drill checks.
        &[
            ("reserve", "sale_not_open"),
            ("reserve", "purchase_limit_exceeded"),
            ("create_order", "sale_not_open"),
            ("create_order", "purchase_limit_exceeded"),
        ],
    ));
    let shop = Arc::new(Shop {
        client: client.clone(),
        recorder: Arc::clone(&recorder),
        book: Mutex::new(Book::default()),
        skus: skus.clone(),
        zipf: Zipf::new(cfg.skus, cfg.zipf_s),
        cfg: cfg.clone(),
        tag: format!("ls-{tag}"),
        opens_at: start + cfg.opens_after,
        closes_at: start + cfg.closes_after,
    });
    let s = Arc::clone(&shop);
    let (stats, outcome) =
        load::run_then_let_holds_expire(label, load_cfg, &recorder, cfg.ttl_ms, move |n, due| {
            session(Arc::clone(&s), n, due)
        })
        .await;
    let book = std::mem::take(&mut *shop.book());
    // The rules' failures lead the list; then the stock accounting of the plain drill.
    let mut audit = audit_rules(&client, &book, &skus, cfg.limit, audit_concurrency).await;
    audit.merge(
        verify(
            &client,
            &book.ledger,
            &skus,
            Accounting::Exact,
            audit_concurrency,
        )
        .await,
    );
    audit.notes.extend(outcome.notes());
    let codes = book
        .codes
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    audit.notes.push(format!(
        "refusals by code: {}; sale_not_open before the opening {}, after the close {}",
        if codes.is_empty() {
            "none".to_string()
        } else {
            codes
        },
        book.early_refusals,
        book.late_refusals
    ));
    audit.notes.push(format!(
        "{} reservations and {} orders acknowledged and checked",
        book.ledger.reservations.len(),
        book.ledger.orders.len()
    ));
    Ok((stats, audit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_is_half_open() {
        let t = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        assert!(in_window(t(1000), Some(t(1000)), Some(t(2000))));
        assert!(!in_window(t(999), Some(t(1000)), Some(t(2000))));
        assert!(!in_window(t(2000), Some(t(1000)), Some(t(2000))));
        assert!(in_window(t(1999), Some(t(1000)), None));
        assert!(in_window(t(5), None, None));
    }

    #[test]
    fn a_customer_over_the_limit_or_miscounted_fails() {
        assert!(customer_failures("s", "c", 2, 2, 2, true).is_empty());
        assert!(customer_failures("s", "c", 2, 1, 0, false).is_empty());
        assert_eq!(customer_failures("s", "c", 2, 3, 3, true).len(), 2);
        assert_eq!(customer_failures("s", "c", 2, 2, 3, true).len(), 2);
        assert_eq!(customer_failures("s", "c", 2, 2, 1, true).len(), 1);
        assert_eq!(customer_failures("s", "c", 2, 1, 2, false).len(), 1);
    }
}
