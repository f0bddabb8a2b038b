//! `flash-sale`: K hot SKUs with small stock, Zipf-skewed demand; each shopper
//! reserves, then pays, abandons (the hold expires) or cancels.

use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::{
    Accounting, Audit, Ledger, OrderAck, ResAck, SharedLedger, SkuDef, note, verify,
};
use crate::http::{HttpClient, encode};
use crate::load::{self, LoadConfig};
use crate::rng::{Rng, Zipf};
use crate::stats::{Recorder, RunStats};

/// What shoppers do after their hold succeeds, in percent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mix {
    pub pay: u32,
    pub abandon: u32,
    pub cancel: u32,
}

impl FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Mix, String> {
        let mut mix = Mix {
            pay: 0,
            abandon: 0,
            cancel: 0,
        };
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected name=weight"))?;
            let v: u32 = v
                .trim()
                .parse()
                .map_err(|_| format!("{v:?}: not a number"))?;
            match k.trim() {
                "pay" => mix.pay = v,
                "abandon" => mix.abandon = v,
                "cancel" => mix.cancel = v,
                other => return Err(format!("{other:?}: expected pay, abandon or cancel")),
            }
        }
        if mix.pay + mix.abandon + mix.cancel == 0 {
            return Err("the weights add up to 0".into());
        }
        Ok(mix)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pay,
    Abandon,
    Cancel,
}

impl Mix {
    pub fn pick(&self, rng: &mut Rng) -> Action {
        let total = u64::from(self.pay + self.abandon + self.cancel);
        let x = rng.below(total);
        if x < u64::from(self.pay) {
            Action::Pay
        } else if x < u64::from(self.pay + self.abandon) {
            Action::Abandon
        } else {
            Action::Cancel
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FlashConfig {
    pub skus: usize,
    pub stock: u64,
    pub shoppers: u64,
    pub zipf_s: f64,
    pub mix: Mix,
    pub ttl_ms: u64,
    pub qty_max: u64,
    pub unit_price: u64,
    pub seed: u64,
}

impl FlashConfig {
    /// The load of round `n` of a crash or failover drill: this one with a seed of
    /// its own, so that each round's shoppers differ and the drill still repeats.
    pub fn for_round(&self, n: u32) -> FlashConfig {
        let mut flash = self.clone();
        flash.seed = self.seed ^ u64::from(n).wrapping_mul(0x9E37_79B9);
        flash
    }
}

/// A short tag that keeps one drill's SKUs and order numbers apart from another's.
pub fn run_tag(seed: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    format!("{:08x}", (Rng::new(seed ^ nanos).next_u64() as u32))
}

pub fn sku_name(tag: &str, k: usize) -> String {
    format!("fs-{tag}-{k}")
}

/// Define (or redefine) the drill's SKUs as admin.
pub async fn define_skus(client: &HttpClient, skus: &[SkuDef]) -> anyhow::Result<()> {
    for def in skus {
        let path = format!("/v1/skus/{}", encode(&def.sku));
        let body = json!({"on_hand": def.received, "low_stock_threshold": 0, "name": "loadtest"});
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
    Ok(())
}

fn id_of(v: &Value) -> Option<String> {
    v.get("id").and_then(Value::as_str).map(str::to_string)
}

/// The shopper sessions' shared state.
pub struct Shop {
    pub client: HttpClient,
    pub recorder: Arc<Recorder>,
    pub ledger: SharedLedger,
    pub skus: Vec<SkuDef>,
    pub zipf: Zipf,
    pub cfg: FlashConfig,
    pub tag: String,
    /// Whether a later state is legal for acknowledged holds (crash drills keep
    /// going after an answer was lost; holds may also expire between checks).
    pub lenient: bool,
}

/// One shopper: reserve, then pay / abandon / cancel. Everything acknowledged
/// goes into the ledger with the statuses it may have at audit time.
pub async fn shopper(shop: Arc<Shop>, n: u64, due: Instant) {
    let mut rng = Rng::for_item(shop.cfg.seed, n);
    let k = shop.zipf.sample(&mut rng);
    let sku = shop.skus[k].sku.clone();
    let qty = rng.range(1, shop.cfg.qty_max.max(1));
    let action = shop.cfg.mix.pick(&mut rng);
    let customer = format!("cust-{}", rng.below(shop.cfg.shoppers.max(1)));
    let rec = &shop.recorder;
    let c = &shop.client;

    let body = json!({"lines": [{"sku": sku, "qty": qty}], "ttl_ms": shop.cfg.ttl_ms});
    let a = c.post("/v1/reservations", &body).await;
    note(rec, "reserve", due, &a);
    let rid = match &a {
        Ok(r) if r.status == 201 => match r.json().as_ref().and_then(id_of) {
            Some(id) => id,
            None => return,
        },
        Ok(_) => return,
        Err(_) => {
            shop.ledger.lock().expect("ledger").unanswered_reservations += 1;
            return;
        }
    };
    // Statuses a hold may reach on its own: it may expire before its next step.
    let held_or_later: Vec<&'static str> = vec!["held", "expired", "committed", "released"];
    let mut res = ResAck {
        id: rid.clone(),
        allowed: if shop.lenient {
            held_or_later.clone()
        } else {
            vec!["expired"]
        },
    };
    let release_only = action == Action::Cancel && rng.chance(0.5);
    if action == Action::Abandon {
        shop.ledger.lock().expect("ledger").reservations.push(res);
        return;
    }
    if release_only {
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
            Ok(_) => held_or_later.clone(),
            Err(_) => held_or_later.clone(),
        };
        shop.ledger.lock().expect("ledger").reservations.push(res);
        return;
    }
    // Pay or cancel both go through an order adopting the hold.
    let order_no = format!("{}-{n}", shop.tag);
    let total = qty * shop.cfg.unit_price;
    let body = json!({
        "order_no": order_no,
        "customer_id": customer,
        "lines": [{"sku": sku, "qty": qty, "unit_price": shop.cfg.unit_price}],
        "reservation_id": rid,
    });
    let t = Instant::now();
    let a = c.post("/v1/orders", &body).await;
    note(rec, "create_order", t, &a);
    let oid = match &a {
        Ok(r) if r.status == 201 => r.json().as_ref().and_then(id_of),
        Ok(_) => None,
        Err(_) => {
            shop.ledger
                .lock()
                .expect("ledger")
                .unanswered_order_nos
                .push(order_no.clone());
            None
        }
    };
    let Some(oid) = oid else {
        res.allowed = held_or_later;
        shop.ledger.lock().expect("ledger").reservations.push(res);
        return;
    };
    let mut order = OrderAck {
        id: oid.clone(),
        order_no,
        allowed: vec!["reserved"],
        payment: vec!["unpaid"],
        ..Default::default()
    };
    // From here the order owns the hold; check the order, and that the hold ended
    // the way the order did.
    let t = Instant::now();
    let (ok, answered) = if action == Action::Pay {
        let a = c
            .post(
                &format!("/v1/orders/{}/pay", encode(&oid)),
                &json!({"amount": total, "payment_ref": format!("pay-{n}")}),
            )
            .await;
        note(rec, "pay", t, &a);
        (matches!(&a, Ok(r) if r.ok()), a.is_ok())
    } else {
        let a = c
            .post(
                &format!("/v1/orders/{}/cancel", encode(&oid)),
                &json!({"reason": "customer_request", "note": "changed my mind"}),
            )
            .await;
        note(rec, "cancel", t, &a);
        (matches!(&a, Ok(r) if r.ok()), a.is_ok())
    };
    let (done_order, done_pay, done_res): (&'static str, &'static str, &'static str) =
        if action == Action::Pay {
            ("confirmed", "paid", "committed")
        } else {
            ("cancelled", "unpaid", "released")
        };
    if ok {
        order.allowed = vec![done_order];
        order.payment = vec![done_pay];
        if action == Action::Cancel {
            order.cancel_reason = Some("customer_request");
        }
        res.allowed = vec![done_res];
    } else if !answered || shop.lenient {
        order.allowed = vec!["reserved", "expired", done_order];
        order.payment = vec!["unpaid", done_pay];
        res.allowed = held_or_later;
    } else {
        // A definite refusal changes nothing: still reserved, still held.
        order.allowed = vec!["reserved", "expired"];
        order.payment = vec!["unpaid"];
        res.allowed = vec!["held", "expired"];
    }
    let mut l = shop.ledger.lock().expect("ledger");
    l.orders.push(order);
    l.reservations.push(res);
}

/// Run the flash sale against surge: define SKUs, drive load, wait for abandoned
/// holds to expire, audit.
pub async fn run(
    client: HttpClient,
    cfg: FlashConfig,
    load_cfg: &LoadConfig,
    label: &str,
    audit_concurrency: usize,
) -> anyhow::Result<(RunStats, Audit)> {
    let tag = run_tag(cfg.seed);
    let skus: Vec<SkuDef> = (0..cfg.skus)
        .map(|k| SkuDef {
            sku: sku_name(&tag, k),
            received: cfg.stock,
        })
        .collect();
    define_skus(&client, &skus).await.context("defining SKUs")?;
    let recorder = Arc::new(Recorder::new(load_cfg.mode()));
    let shop = Arc::new(Shop {
        client: client.clone(),
        recorder: Arc::clone(&recorder),
        ledger: Arc::new(Mutex::new(Ledger::default())),
        skus: skus.clone(),
        zipf: Zipf::new(cfg.skus, cfg.zipf_s),
        cfg: cfg.clone(),
        tag: format!("fs-{tag}"),
        lenient: false,
    });
    let s = Arc::clone(&shop);
    // Abandoned holds must be gone before the levels are compared exactly.
    let (stats, outcome) =
        load::run_then_let_holds_expire(label, load_cfg, &recorder, cfg.ttl_ms, move |n, due| {
            shopper(Arc::clone(&s), n, due)
        })
        .await;
    let ledger = std::mem::take(&mut *shop.ledger.lock().expect("ledger"));
    let mut audit = verify(
        &client,
        &ledger,
        &skus,
        Accounting::Exact,
        audit_concurrency,
    )
    .await;
    audit.notes.extend(outcome.notes());
    audit.notes.push(format!(
        "{} reservations and {} orders acknowledged and checked",
        ledger.reservations.len(),
        ledger.orders.len()
    ));
    Ok((stats, audit))
}
