//! Set-up shared by the engine benches and `examples/engine_ops.rs`: the same
//! states, so that their figures measure the same thing. Each includes this module
//! and uses part of it.
#![allow(dead_code)]

use surge_engine::limits::{SALE_INSTANT_MAX_MS, SHIP_SLA_MS_DEFAULT};
use surge_engine::{Command, NewOrder, OrderLineReq, SkuDefinition, State};

/// SKUs of the bench states: `SKU-00000`..`SKU-09999`.
pub const SKUS: usize = 10_000;

pub fn sku(i: usize) -> String {
    format!("SKU-{:05}", i % SKUS)
}

/// A state under the rules the server runs (this build's: full event payloads,
/// `stock.restored`, the ledger, ship deadlines, full status changes), with
/// 10 000 SKUs.
pub fn state_with_skus() -> State {
    let mut state = State::new();
    let mut events = Vec::new();
    let policy = Command::SetOrderPolicy {
        ship_sla_ms: SHIP_SLA_MS_DEFAULT,
        review_amount_min: None,
    };
    state
        .apply(&policy, None, 1, &mut events)
        .outcome
        .expect("policy");
    let rules = Command::SetRules {
        rules: surge_engine::RULES_CURRENT,
    };
    state
        .apply(&rules, None, 1, &mut events)
        .outcome
        .expect("rules");
    for i in 0..SKUS {
        let cmd = Command::DefineSku {
            sku: sku(i),
            name: String::new(),
            on_hand: 1_000_000_000,
            low_stock_threshold: 10,
        };
        state
            .apply(&cmd, None, 1, &mut events)
            .outcome
            .expect("defined");
    }
    state
}

/// Give every SKU of `state` a limit of 5 per customer and a sale window open from
/// t = 0 to the year 9999, keeping its level, name and threshold.
pub fn limit_every_sku(state: &mut State) {
    let mut events = Vec::new();
    for i in 0..SKUS {
        let cmd = Command::DefineSkuSale {
            definition: Box::new(SkuDefinition {
                sku: sku(i),
                name: None,
                on_hand: None,
                low_stock_threshold: None,
                purchase_limit_per_customer: Some(5),
                sale_starts_at_ms: Some(Some(0)),
                sale_ends_at_ms: Some(Some(SALE_INSTANT_MAX_MS)),
            }),
        };
        state
            .apply(&cmd, None, 1, &mut events)
            .outcome
            .expect("limited");
    }
}

/// A one-line order of SKU `i % SKUS` for one customer, as the order benches and
/// the example place it.
pub fn place_order(order_no: String, i: usize) -> Command {
    Command::PlaceOrder {
        order: Box::new(NewOrder {
            order_no,
            customer_id: "customer-42".to_string(),
            lines: vec![OrderLineReq {
                sku: sku(i),
                qty: 1,
                unit_price: 1999,
            }],
            payment_ttl_ms: 900_000,
            reservation_id: None,
            channel: String::new(),
            shipping_address: None,
            actor: "bench".to_string(),
        }),
    }
}
