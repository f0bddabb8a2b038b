//! `lifecycle`: orders driven through their whole life (paid, picked, packed,
//! shipped, delivered, completed), some cancelled with each reason at each stage,
//! some returned (with and without restock) and refunded, with reads and searches
//! mixed in. The audit checks every order ended where the drill drove it.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use serde_json::{Value, json};

use crate::audit::{Accounting, Audit, Ledger, OrderAck, SharedLedger, SkuDef, note, verify};
use crate::flash::{define_skus, run_tag};
use crate::http::{HttpClient, encode};
use crate::load::{self, LoadConfig};
use crate::rng::Rng;
use crate::stats::{Recorder, RunStats};

const REASONS: &[&str] = &[
    "customer_request",
    "out_of_stock",
    "payment_failed",
    "fraud_suspected",
    "system_error",
    "other",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Cancel with `REASONS[reason]` when the order reaches `stage` (0 reserved,
    /// 1 confirmed, 2 picking, 3 packed).
    Cancel { reason: usize, stage: u8 },
    /// Go as far as `stage` on the fulfilment path (4 shipped, 5 delivered, 6 completed).
    Fulfil { stage: u8 },
    /// Deliver, then return (restock or not), then maybe refund.
    Return { restock: bool, refund: bool },
}

const PATH: &[&str] = &[
    "reserved",
    "confirmed",
    "picking",
    "packed",
    "shipped",
    "delivered",
    "completed",
];

struct Ctx {
    client: HttpClient,
    recorder: Arc<Recorder>,
    ledger: SharedLedger,
    skus: Vec<SkuDef>,
    tag: String,
    seed: u64,
    customers: u64,
}

fn plan(rng: &mut Rng) -> Plan {
    match rng.below(10) {
        0..=2 => Plan::Cancel {
            reason: rng.below(REASONS.len() as u64) as usize,
            stage: rng.below(4) as u8,
        },
        3..=6 => Plan::Fulfil {
            stage: rng.range(4, 6) as u8,
        },
        _ => Plan::Return {
            restock: rng.chance(0.5),
            refund: rng.chance(0.7),
        },
    }
}

async fn session(ctx: Arc<Ctx>, n: u64, due: Instant) {
    let mut rng = Rng::for_item(ctx.seed, n);
    let plan = plan(&mut rng);
    let sku = &ctx.skus[rng.below(ctx.skus.len() as u64) as usize].sku;
    let qty = rng.range(1, 3);
    let price = rng.range(100, 10_000);
    let customer = format!("{}-c{}", ctx.tag, rng.below(ctx.customers.max(1)));
    let order_no = format!("{}-{n}", ctx.tag);
    let c = &ctx.client;
    let rec = &ctx.recorder;
    let body = json!({
        "order_no": order_no, "customer_id": customer,
        "lines": [{"sku": sku, "qty": qty, "unit_price": price}],
        "payment_ttl_ms": 3_600_000,
    });
    let a = c.post("/v1/orders", &body).await;
    note(rec, "create_order", due, &a);
    let id = match &a {
        Ok(r) if r.status == 201 => {
            match r
                .json()
                .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_string))
            {
                Some(id) => id,
                None => return,
            }
        }
        Ok(_) => return,
        Err(_) => {
            ctx.ledger
                .lock()
                .expect("ledger")
                .unanswered_order_nos
                .push(order_no);
            return;
        }
    };
    let mut ack = OrderAck {
        id: id.clone(),
        order_no: order_no.clone(),
        allowed: vec!["reserved"],
        payment: vec!["unpaid"],
        ..Default::default()
    };
    let base = format!("/v1/orders/{}", encode(&id));
    let tracking = format!("TRK-{n}");
    // Steps as (op, path, body, status after, payment after); stop at the first
    // that is not acknowledged.
    let mut steps: Vec<(&'static str, String, Value, &'static str, &'static str)> = Vec::new();
    let fulfil_to = match plan {
        Plan::Cancel { stage, .. } => stage,
        Plan::Fulfil { stage } => stage,
        Plan::Return { .. } => 5,
    };
    if fulfil_to >= 1 {
        steps.push((
            "pay",
            format!("{base}/pay"),
            json!({"amount": qty * price, "payment_ref": format!("pay-{n}")}),
            "confirmed",
            "paid",
        ));
    }
    for stage in 2..=fulfil_to {
        let to = PATH[stage as usize];
        let mut b = json!({"to": to, "note": "drill"});
        if to == "shipped" {
            b["tracking_no"] = json!(tracking);
        }
        steps.push(("transition", format!("{base}/transitions"), b, to, "paid"));
    }
    match plan {
        Plan::Cancel { reason, stage } => {
            let pay = if stage == 0 { "unpaid" } else { "refund_due" };
            steps.push((
                "cancel",
                format!("{base}/cancel"),
                json!({"reason": REASONS[reason], "note": "drill"}),
                "cancelled",
                pay,
            ));
            ack.cancel_reason = Some(REASONS[reason]);
        }
        Plan::Return { restock, refund } => {
            steps.push((
                "return",
                format!("{base}/return"),
                json!({"restock": restock, "reason": "damaged", "note": "drill"}),
                "returned",
                "refund_due",
            ));
            if refund {
                steps.push((
                    "refund",
                    format!("{base}/refund"),
                    json!({"refund_ref": format!("rf-{n}")}),
                    "returned",
                    "refunded",
                ));
            }
        }
        Plan::Fulfil { .. } => {}
    }
    if fulfil_to >= 4 {
        ack.tracking_no = Some(tracking);
    }
    let mut completed_all = true;
    for (op, path, body, status, pay) in steps {
        if rng.chance(0.3) {
            let t = Instant::now();
            let a = c.get(&base).await;
            note(rec, "read", t, &a);
        }
        if rng.chance(0.1) {
            let t = Instant::now();
            let a = c
                .get(&format!("/v1/orders/by-no/{}", encode(&order_no)))
                .await;
            note(rec, "read_by_no", t, &a);
        }
        if rng.chance(0.1) {
            let t = Instant::now();
            let a = c
                .get(&format!(
                    "/v1/orders?customer_id={}&limit=20",
                    encode(&customer)
                ))
                .await;
            note(rec, "search", t, &a);
        }
        let t = Instant::now();
        let a = c.post(&path, &body).await;
        note(rec, op, t, &a);
        match &a {
            Ok(r) if r.ok() => {
                ack.allowed = vec![status];
                ack.payment = vec![pay];
            }
            Ok(_) => {
                completed_all = false;
                break;
            }
            Err(_) => {
                ack.allowed.push(status);
                ack.payment.push(pay);
                completed_all = false;
                break;
            }
        }
    }
    if !completed_all && ack.cancel_reason.is_some() && !ack.allowed.contains(&"cancelled") {
        ack.cancel_reason = None;
    }
    if !ack
        .allowed
        .iter()
        .any(|s| ["shipped", "delivered", "completed", "returned"].contains(s))
    {
        ack.tracking_no = None;
    }
    // A cancel after shipment must be refused with `order_shipped`.
    if matches!(plan, Plan::Fulfil { .. }) && completed_all && rng.chance(0.2) {
        let t = Instant::now();
        let a = c
            .post(
                &format!("{base}/cancel"),
                &json!({"reason": "customer_request"}),
            )
            .await;
        // The audit catches a wrong yes: `allowed` does not include `cancelled`.
        note(rec, "cancel_after_ship", t, &a);
    }
    ctx.ledger.lock().expect("ledger").orders.push(ack);
}

pub async fn run(
    client: HttpClient,
    seed: u64,
    sku_count: usize,
    customers: u64,
    load_cfg: &LoadConfig,
    audit_concurrency: usize,
) -> anyhow::Result<(RunStats, Audit)> {
    let tag = format!("lc-{}", run_tag(seed));
    let skus: Vec<SkuDef> = (0..sku_count.max(1))
        .map(|k| SkuDef {
            sku: format!("{tag}-{k}"),
            received: 1_000_000_000,
        })
        .collect();
    define_skus(&client, &skus).await.context("defining SKUs")?;
    let recorder = Arc::new(Recorder::with_intended(
        load_cfg.mode(),
        // The drill cancels some shipped orders to check they are refused.
        &[("cancel_after_ship", "order_shipped")],
    ));
    let ctx = Arc::new(Ctx {
        client: client.clone(),
        recorder: Arc::clone(&recorder),
        ledger: Arc::new(Mutex::new(Ledger::default())),
        skus: skus.clone(),
        tag,
        seed,
        customers,
    });
    let c2 = Arc::clone(&ctx);
    let outcome = load::run_with_progress(
        "lifecycle",
        load_cfg,
        Arc::clone(&recorder),
        move |n, due| session(Arc::clone(&c2), n, due),
    )
    .await;
    let stats = recorder.summary("surge", outcome.elapsed);
    let mut ledger = std::mem::take(&mut *ctx.ledger.lock().expect("ledger"));
    ledger.unanswered_reservations += outcome.aborted;
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
        "{} orders acknowledged and checked",
        ledger.orders.len()
    ));
    Ok((stats, audit))
}
