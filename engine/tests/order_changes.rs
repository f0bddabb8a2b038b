//! v1.1 order operations on the pure state machine: review hold, modification
//! (partial cancel), partial refunds and the ledger, intercept / refusal returns,
//! delay alerts, full event payloads and `stock.restored`, and idempotent replays
//! of answers the order has since moved past.
//!
//! Every state here runs the v1.1 rules (its first command is `SetOrderPolicy`), and
//! every command is checked against a replay of the log and a snapshot round trip.

mod common;

use surge_engine::{
    Address, CancelReason, Command, Event, EventKind, HoldReason, IdempotencyKey, LedgerFilter,
    LedgerKind, NewOrder, OrderChange, OrderId, OrderLineReq, OrderStatus, OrderView,
    PaymentStatus, Query, QueryReply, Rejection, Reply, ReturnKind, State,
};

const SLA_MS: u64 = 60_000;
const PRICE: u64 = 100;

struct World {
    state: State,
    now_ms: u64,
    events: Vec<Event>,
    log: Vec<(u64, Command, Option<IdempotencyKey>)>,
}

impl World {
    fn new(review_amount_min: Option<u64>) -> World {
        let mut w = World {
            state: State::new(),
            now_ms: 1_000,
            events: Vec::new(),
            log: Vec::new(),
        };
        w.ok(Command::SetOrderPolicy {
            ship_sla_ms: SLA_MS,
            review_amount_min,
        });
        for sku in ["A", "B"] {
            w.ok(Command::DefineSku {
                sku: sku.into(),
                name: sku.into(),
                on_hand: 10,
                low_stock_threshold: 0,
            });
        }
        w
    }

    fn apply(&mut self, cmd: Command, key: Option<&str>) -> Result<Reply, String> {
        let key = key.map(|k| IdempotencyKey {
            key: k.into(),
            fingerprint: 7,
        });
        let applied = self
            .state
            .apply(&cmd, key.as_ref(), self.now_ms, &mut self.events);
        if applied.lsn.is_some() {
            self.log.push((self.now_ms, cmd, key));
        }
        applied
            .outcome
            .map_err(|r| common::refusal_kind(&r).to_string())
    }

    fn run(&mut self, cmd: Command) -> Result<Reply, String> {
        self.apply(cmd, None)
    }

    fn ok(&mut self, cmd: Command) -> Reply {
        let name = cmd.name();
        self.run(cmd)
            .unwrap_or_else(|code| panic!("{name} failed: {code}"))
    }

    fn order(&self, id: OrderId) -> OrderView {
        match self.state.query(&Query::GetOrder { id }) {
            Ok(QueryReply::Order(o)) => *o,
            other => panic!("{other:?}"),
        }
    }

    /// (on_hand, reserved, available) of a SKU.
    fn stock(&self, sku: &str) -> (u64, u64, u64) {
        match self.state.query(&Query::GetSku { sku: sku.into() }) {
            Ok(QueryReply::Sku(s)) => (s.on_hand, s.reserved, s.available),
            other => panic!("{other:?}"),
        }
    }

    fn place(&mut self, no: &str, lines: &[(&str, u64, u64)]) -> OrderId {
        let reply = self.ok(place(no, lines));
        let Reply::Order(o) = reply else {
            panic!("{reply:?}")
        };
        o.id
    }

    fn pay(&mut self, id: OrderId) {
        let amount = self.order(id).total;
        self.ok(Command::PayOrder {
            id,
            amount,
            payment_ref: "pay-1".into(),
            actor: "shop".into(),
        });
    }

    /// Through picking and packing to shipped.
    fn ship(&mut self, id: OrderId) {
        for to in [
            OrderStatus::Picking,
            OrderStatus::Packed,
            OrderStatus::Shipped,
        ] {
            self.advance(id, to).expect("step");
        }
    }

    fn advance(&mut self, id: OrderId, to: OrderStatus) -> Result<Reply, String> {
        self.run(Command::AdvanceOrder {
            id,
            to,
            note: String::new(),
            tracking_no: "T1".into(),
            actor: "operator:wh".into(),
        })
    }

    fn ledger(&self, id: OrderId) -> Vec<(LedgerKind, u64)> {
        let query = Query::ListLedger {
            filter: LedgerFilter {
                order_id: Some(id),
                ..LedgerFilter::default()
            },
            cursor: None,
            limit: 1000,
        };
        match self.state.query(&query) {
            Ok(QueryReply::Ledger(page)) => page.items.iter().map(|e| (e.kind, e.amount)).collect(),
            other => panic!("{other:?}"),
        }
    }

    /// The types of the events since `from`.
    fn types_since(&self, from: usize) -> Vec<&'static str> {
        self.events[from..]
            .iter()
            .map(|e| e.kind.type_name())
            .collect()
    }

    /// Replay the log into a fresh state and round-trip a snapshot: both must land
    /// on this state exactly.
    fn check_replay(&self) {
        let mut replayed = State::new();
        for (now_ms, cmd, key) in &self.log {
            let applied = replayed.apply(cmd, key.as_ref(), *now_ms, &mut Vec::new());
            assert!(applied.lsn.is_some(), "{cmd:?} replayed without a record");
        }
        assert_eq!(replayed.digest(), self.state.digest(), "replay");
        let again = State::decode_snapshot(&self.state.encode_snapshot()).expect("decodes");
        assert_eq!(again.digest(), self.state.digest(), "snapshot");
        self.state.check_invariants();
    }
}

fn place(no: &str, lines: &[(&str, u64, u64)]) -> Command {
    Command::PlaceOrder {
        order: Box::new(NewOrder {
            order_no: no.into(),
            customer_id: "c1".into(),
            lines: order_lines(lines),
            payment_ttl_ms: 600_000,
            reservation_id: None,
            channel: "tmall".into(),
            shipping_address: Some(Address {
                name: Some("李雷".into()),
                city: Some("杭州".into()),
                ..Address::default()
            }),
            actor: "storefront".into(),
        }),
    }
}

fn order_lines(lines: &[(&str, u64, u64)]) -> Vec<OrderLineReq> {
    lines
        .iter()
        .map(|&(sku, qty, unit_price)| OrderLineReq {
            sku: sku.into(),
            qty,
            unit_price,
        })
        .collect()
}

fn modify(id: OrderId, lines: &[(&str, u64, u64)], reason: Option<CancelReason>) -> Command {
    Command::ModifyOrder {
        change: Box::new(OrderChange {
            id,
            lines: Some(order_lines(lines)),
            shipping_address: None,
            note: None,
            reason,
            actor: "operator:cs".into(),
        }),
    }
}

fn hold(id: OrderId) -> Command {
    Command::HoldOrder {
        id,
        reason: HoldReason::AddressCheck,
        note: "call the customer".into(),
        actor: "operator:cs".into(),
    }
}

fn refund(id: OrderId, amount: u64) -> Command {
    Command::RefundAmount {
        id,
        amount,
        reason: "goodwill".into(),
        refund_ref: "rf-1".into(),
        actor: "operator:fin".into(),
    }
}

#[test]
fn a_hold_stops_the_fulfilment_path_until_released_and_cancel_clears_it() {
    let mut w = World::new(None);
    let id = w.place("N-1", &[("A", 2, PRICE)]);
    w.pay(id);
    let before = w.events.len();
    w.ok(hold(id));
    assert_eq!(w.types_since(before), ["order.held"]);
    let o = w.order(id);
    assert_eq!(
        o.hold.as_ref().map(|h| h.reason),
        Some(HoldReason::AddressCheck)
    );
    // Holding again: unchanged, nothing logged.
    let logged = w.log.len();
    w.ok(hold(id));
    assert_eq!(w.log.len(), logged);
    assert_eq!(
        w.advance(id, OrderStatus::Picking),
        Err("order_on_hold".into())
    );
    // Any move to picking, packed or shipped is refused for the hold, the next
    // step or not (API.md).
    assert_eq!(
        w.advance(id, OrderStatus::Shipped),
        Err("order_on_hold".into())
    );
    w.ok(Command::ReleaseHold {
        id,
        note: "address confirmed".into(),
        actor: "operator:cs".into(),
    });
    assert!(w.order(id).hold.is_none());
    assert_eq!(
        w.run(Command::ReleaseHold {
            id,
            note: String::new(),
            actor: "operator:cs".into(),
        }),
        Err("invalid_transition".into())
    );
    w.advance(id, OrderStatus::Picking)
        .expect("picks once released");
    w.ok(hold(id));
    w.ok(Command::CancelOrder {
        id,
        reason: CancelReason::FraudSuspected,
        note: "confirmed fraud".into(),
        actor: "operator:cs".into(),
    });
    let o = w.order(id);
    assert!(o.hold.is_none(), "cancel clears the hold");
    assert_eq!(o.payment.status, PaymentStatus::RefundDue);
    assert_eq!(o.payment.refund_due_amount, 2 * PRICE);
    // A shipped order cannot be held.
    let id2 = w.place("N-2", &[("B", 1, PRICE)]);
    w.pay(id2);
    w.ship(id2);
    assert_eq!(w.run(hold(id2)), Err("invalid_transition".into()));
    w.check_replay();
}

#[test]
fn orders_reaching_the_review_amount_are_created_on_hold() {
    let mut w = World::new(Some(500));
    let small = w.place("N-1", &[("A", 1, 499)]);
    let from = w.events.len();
    let big = w.place("N-2", &[("A", 1, 500)]);
    assert!(w.order(small).hold.is_none());
    let hold = w.order(big).hold.expect("held for review");
    assert_eq!(hold.reason, HoldReason::Review);
    assert_eq!(&*hold.actor, "system");
    assert!(
        w.types_since(from)
            .ends_with(&["order.created", "order.held"])
    );
    w.check_replay();
}

#[test]
fn modifying_a_reserved_order_moves_its_hold_with_the_lines() {
    let mut w = World::new(None);
    let id = w.place("N-1", &[("A", 2, PRICE), ("B", 1, PRICE)]);
    assert_eq!(w.stock("A"), (10, 2, 8));
    // Up on A, B removed (a partial cancel: a reason is required), a new price.
    assert_eq!(
        w.run(modify(id, &[("A", 5, 90)], None)),
        Err("validation_failed".into())
    );
    assert_eq!(
        w.run(modify(id, &[], Some(CancelReason::CustomerRequest))),
        Err("validation_failed".into())
    );
    assert_eq!(
        w.run(modify(
            id,
            &[("A", 11, 90)],
            Some(CancelReason::CustomerRequest)
        )),
        Err("insufficient_stock".into())
    );
    let from = w.events.len();
    w.ok(modify(
        id,
        &[("A", 5, 90)],
        Some(CancelReason::CustomerRequest),
    ));
    assert_eq!(w.stock("A"), (10, 5, 5));
    assert_eq!(w.stock("B"), (10, 0, 10));
    let o = w.order(id);
    assert_eq!(o.total, 450);
    assert_eq!(o.lines.len(), 1);
    let types = w.types_since(from);
    assert_eq!(types, ["order.modified", "stock.restored"]);
    let EventKind::OrderModified(modified) = &w.events[from].kind else {
        panic!("{:?}", w.events[from])
    };
    let surge_engine::event::OrderModified {
        before,
        stock_delta,
        reason,
        ..
    } = &**modified;
    assert_eq!(before.len(), 2);
    assert_eq!(*reason, Some(CancelReason::CustomerRequest));
    let deltas: Vec<i64> = stock_delta.iter().map(|(_, d)| *d).collect();
    assert_eq!(deltas, [3, -1]);
    let EventKind::StockRestored { qty, available, .. } = &w.events[from + 1].kind else {
        panic!()
    };
    assert_eq!((*qty, *available), (1, 10));
    // Paying takes the new total; the units the order holds are the new ones.
    w.pay(id);
    assert_eq!(w.stock("A"), (5, 0, 5));
    w.check_replay();
}

#[test]
fn a_paid_order_only_goes_down_and_the_difference_is_due_back() {
    let mut w = World::new(None);
    let id = w.place("N-1", &[("A", 3, PRICE)]);
    w.pay(id);
    assert_eq!(w.stock("A"), (7, 0, 7));
    assert_eq!(
        w.run(modify(id, &[("A", 4, PRICE)], None)),
        Err("invalid_transition".into())
    );
    assert_eq!(
        w.run(modify(id, &[("A", 3, PRICE + 1)], None)),
        Err("invalid_transition".into())
    );
    w.ok(modify(
        id,
        &[("A", 1, PRICE)],
        Some(CancelReason::OutOfStock),
    ));
    assert_eq!(w.stock("A"), (9, 0, 9), "two units back on hand");
    // Under the v1.1 rules its committed reservation keeps the units sold before
    // (a log of then replays as it ran); from the v1.2 rules on it shows the
    // units sold now.
    let committed_units = |w: &World, id| match w.state.query(&Query::GetReservation {
        id: w.order(id).reservation_id,
    }) {
        Ok(QueryReply::Reservation(r)) => {
            assert_eq!(r.status, surge_engine::ReservationStatus::Committed);
            r.lines.iter().map(|l| l.qty).collect::<Vec<u64>>()
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(committed_units(&w, id), [3]);
    let mut v12 = World::new(None);
    v12.ok(Command::SetRules { rules: 3 });
    let sold = v12.place("N-1", &[("A", 3, PRICE)]);
    v12.pay(sold);
    v12.ok(modify(
        sold,
        &[("A", 1, PRICE)],
        Some(CancelReason::OutOfStock),
    ));
    assert_eq!(committed_units(&v12, sold), [1]);
    v12.check_replay();
    let o = w.order(id);
    assert_eq!(o.payment.paid_amount, 3 * PRICE);
    assert_eq!(o.payment.refund_due_amount, 2 * PRICE);
    assert_eq!(o.payment.status, PaymentStatus::RefundDue);
    assert_eq!(
        w.ledger(id),
        [
            (LedgerKind::Charge, 3 * PRICE),
            (LedgerKind::Reversal, 2 * PRICE)
        ]
    );
    // Picking: no more modification.
    w.advance(id, OrderStatus::Picking).expect("pick");
    assert_eq!(
        w.run(modify(id, &[("A", 1, PRICE)], None)),
        Err("invalid_transition".into())
    );
    w.check_replay();
}

#[test]
fn partial_refunds_pay_what_is_due_first_then_goodwill() {
    let mut w = World::new(None);
    let id = w.place("N-1", &[("A", 4, PRICE)]);
    w.pay(id);
    assert_eq!(w.run(refund(id, 0)), Err("validation_failed".into()));
    assert_eq!(
        w.run(refund(id, 4 * PRICE + 1)),
        Err("refund_exceeds_paid".into())
    );
    // Goodwill on a paid order.
    w.ok(refund(id, 50));
    let p = w.order(id).payment;
    assert_eq!((p.refunded_amount, p.refund_due_amount), (50, 0));
    assert_eq!(p.status, PaymentStatus::PartiallyRefunded);
    // Cancel: what was paid and not refunded becomes due.
    w.ok(Command::CancelOrder {
        id,
        reason: CancelReason::CustomerRequest,
        note: String::new(),
        actor: "storefront".into(),
    });
    let p = w.order(id).payment;
    assert_eq!(p.refund_due_amount, 4 * PRICE - 50);
    // A refund pays the due part first.
    w.ok(refund(id, 100));
    let p = w.order(id).payment;
    assert_eq!((p.refunded_amount, p.refund_due_amount), (150, 250));
    // `/refund` pays exactly what is due, then there is nothing left.
    w.ok(Command::RefundOrder {
        id,
        refund_ref: "rf-2".into(),
        actor: "operator:fin".into(),
    });
    let p = w.order(id).payment;
    assert_eq!((p.refunded_amount, p.refund_due_amount), (400, 0));
    assert_eq!(p.status, PaymentStatus::Refunded);
    assert_eq!(w.run(refund(id, 1)), Err("refund_exceeds_paid".into()));
    assert_eq!(
        w.ledger(id),
        [
            (LedgerKind::Charge, 400),
            (LedgerKind::Refund, 50),
            (LedgerKind::Reversal, 350),
            (LedgerKind::Refund, 100),
            (LedgerKind::Refund, 250),
        ]
    );
    w.check_replay();
}

#[test]
fn a_shipped_order_is_intercepted_or_refused_not_cancelled() {
    let mut w = World::new(None);
    let id = w.place("N-1", &[("A", 2, PRICE)]);
    w.pay(id);
    w.ship(id);
    let ret = |kind| Command::ReturnOrderAs {
        id,
        kind,
        restock: true,
        reason: "parcel stopped".into(),
        note: String::new(),
        actor: "operator:wh".into(),
    };
    assert_eq!(
        w.run(ret(ReturnKind::CustomerReturn)),
        Err("invalid_transition".into())
    );
    let from = w.events.len();
    w.ok(ret(ReturnKind::Intercepted));
    let o = w.order(id);
    assert_eq!(o.status, OrderStatus::Returned);
    assert_eq!(o.return_kind, Some(ReturnKind::Intercepted));
    assert_eq!(o.payment.refund_due_amount, 2 * PRICE);
    assert_eq!(w.stock("A"), (10, 0, 10), "restocked");
    assert_eq!(w.types_since(from), ["stock.restored", "order.returned"]);
    // Returning again: the same order, nothing more back.
    let logged = w.log.len();
    w.ok(ret(ReturnKind::Intercepted));
    assert_eq!(w.log.len(), logged);
    assert_eq!(w.stock("A"), (10, 0, 10));
    w.check_replay();
}

/// From the v1.2 rules on, `/refund` with nothing due is 409 also on a refunded
/// order (API.md: "409 `invalid_transition` when it is 0"; it answered the order),
/// and a return repeated with another kind or restock is refused (it answered the
/// order as if done). The same return repeated still answers the order. Under the
/// v1.1 rules both answer as they did, so older logs replay as they ran.
#[test]
fn the_v12_rules_refuse_a_refund_of_nothing_and_a_different_return() {
    for rules in [None, Some(3)] {
        let mut w = World::new(None);
        if let Some(rules) = rules {
            w.ok(Command::SetRules { rules });
        }
        let id = w.place("N-1", &[("A", 2, PRICE)]);
        w.pay(id);
        w.ship(id);
        let ret = |kind, restock| Command::ReturnOrderAs {
            id,
            kind,
            restock,
            reason: "parcel stopped".into(),
            note: String::new(),
            actor: "operator:wh".into(),
        };
        w.ok(ret(ReturnKind::Intercepted, true));
        let logged = w.log.len();
        w.ok(ret(ReturnKind::Intercepted, true));
        let refused = |code: &str| match rules {
            Some(_) => Err(code.to_string()),
            None => Ok(()),
        };
        for other in [
            ret(ReturnKind::Refused, true),
            ret(ReturnKind::Intercepted, false),
        ] {
            assert_eq!(
                w.run(other).map(|_| ()),
                refused("invalid_transition"),
                "rules {rules:?}"
            );
        }
        let refund = || Command::RefundOrder {
            id,
            refund_ref: "rf-1".into(),
            actor: "operator:fin".into(),
        };
        w.ok(refund());
        assert_eq!(w.order(id).payment.status, PaymentStatus::Refunded);
        let refunded = w.log.len();
        assert_eq!(
            w.run(refund()).map(|_| ()),
            refused("invalid_transition"),
            "rules {rules:?}"
        );
        assert_eq!(w.log.len(), refunded, "nothing logged");
        assert_eq!(w.log.len(), logged + 1, "only the refund was logged");
        assert_eq!(w.stock("A"), (10, 0, 10), "restocked once");
        w.check_replay();
    }
}

#[test]
fn a_paid_order_not_shipped_within_the_sla_is_delayed_exactly_once() {
    let mut w = World::new(None);
    let late = w.place("N-1", &[("A", 1, PRICE)]);
    let shipped = w.place("N-2", &[("B", 1, PRICE)]);
    w.pay(late);
    w.pay(shipped);
    let paid_at = w.now_ms;
    assert_eq!(
        w.state.next_deadline_ms().map(|d| d <= paid_at + SLA_MS),
        Some(true)
    );
    w.ship(shipped);
    // Just before the SLA: nothing.
    w.now_ms = paid_at + SLA_MS - 1;
    let from = w.events.len();
    w.ok(Command::Expire);
    assert!(w.types_since(from).is_empty());
    w.now_ms = paid_at + SLA_MS;
    w.ok(Command::Expire);
    assert_eq!(w.types_since(from), ["order.delayed"]);
    assert_eq!(w.order(late).delayed_since_ms, Some(paid_at + SLA_MS));
    assert_eq!(w.order(shipped).delayed_since_ms, None);
    let delayed = Query::ListOrders {
        filter: surge_engine::OrderFilter {
            delayed: Some(true),
            ..Default::default()
        },
        cursor: None,
        limit: 10,
    };
    let Ok(QueryReply::Orders(page)) = w.state.query(&delayed) else {
        panic!()
    };
    assert_eq!(page.items.iter().map(|o| o.id).collect::<Vec<_>>(), [late]);
    // Once only.
    w.now_ms += SLA_MS;
    let from = w.events.len();
    w.ok(Command::Expire);
    assert!(w.types_since(from).is_empty());
    // Shipping clears it.
    w.ship(late);
    assert_eq!(w.order(late).delayed_since_ms, None);
    w.check_replay();
}

/// A filtered page that takes the last match says so (`next_cursor: None`),
/// also when older orders that do not match remain; a page with more matches
/// behind it gives a cursor that finds them (outside probe 8: a cursor to an empty
/// page when the limit equalled the matches). The ledger likewise.
#[test]
fn a_filtered_page_ending_on_the_last_match_gives_no_cursor() {
    let mut w = World::new(None);
    // Oldest first: A, B, A, B, B; newest first the A orders are the 3rd and 5th.
    let ids: Vec<OrderId> = ["A", "B", "A", "B", "B"]
        .iter()
        .enumerate()
        .map(|(n, sku)| w.place(&format!("P-{n}"), &[(sku, 1, PRICE)]))
        .collect();
    let page = |cursor, limit| {
        let query = Query::ListOrders {
            filter: surge_engine::OrderFilter {
                sku: Some("B".into()),
                ..Default::default()
            },
            cursor,
            limit,
        };
        let Ok(QueryReply::Orders(page)) = w.state.query(&query) else {
            panic!()
        };
        (
            page.items.iter().map(|o| o.id).collect::<Vec<_>>(),
            page.next_cursor,
        )
    };
    // Three B orders, an A order older than all but one of them.
    assert_eq!(page(None, 3), (vec![ids[4], ids[3], ids[1]], None));
    let (first, cursor) = page(None, 2);
    assert_eq!(first, [ids[4], ids[3]]);
    let cursor = cursor.expect("one more B");
    assert_eq!(page(Some(cursor), 2), (vec![ids[1]], None));
    let (all, none) = page(None, 10);
    assert_eq!((all.len(), none), (3, None));

    // The ledger, oldest first: a charge, a refund, a charge.
    w.pay(ids[0]);
    w.ok(refund(ids[0], 50));
    w.pay(ids[1]);
    let refunds = |cursor| {
        let query = Query::ListLedger {
            filter: surge_engine::LedgerFilter {
                kind: Some(LedgerKind::Refund),
                ..Default::default()
            },
            cursor,
            limit: 1,
        };
        let Ok(QueryReply::Ledger(page)) = w.state.query(&query) else {
            panic!()
        };
        (page.items.len(), page.next_cursor)
    };
    assert_eq!(refunds(None), (1, None), "the one refund, and no more");
}

#[test]
fn a_cancel_carries_the_order_and_gives_each_sku_back_once() {
    let mut w = World::new(None);
    let id = w.place("N-1", &[("A", 2, PRICE), ("B", 1, PRICE), ("A", 1, PRICE)]);
    let from = w.events.len();
    w.ok(Command::CancelOrder {
        id,
        reason: CancelReason::CustomerRequest,
        note: "changed mind".into(),
        actor: "storefront".into(),
    });
    assert_eq!(
        w.types_since(from),
        [
            "reservation.released",
            "stock.restored",
            "stock.restored",
            "order.cancelled"
        ]
    );
    let EventKind::OrderCancelled(cancelled) = &w.events.last().expect("events").kind else {
        panic!()
    };
    let surge_engine::event::OrderCancelled {
        order,
        note,
        restocked,
        refund_due_amount,
        ..
    } = &**cancelled;
    assert_eq!(&*order.order_no, "N-1");
    assert_eq!(&*order.channel, "tmall");
    assert_eq!(order.lines.len(), 3);
    assert_eq!(&**note, "changed mind");
    assert_eq!(*refund_due_amount, 0);
    let restocked: Vec<(&str, u64)> = restocked
        .iter()
        .map(|(s, q)| (w.state.sku_name(*s), *q))
        .collect();
    assert_eq!(restocked, [("A", 3), ("B", 1)]);
    assert_eq!(w.stock("A"), (10, 0, 10));
    w.check_replay();
}

#[test]
fn a_replayed_key_answers_as_the_order_was_then() {
    let mut w = World::new(None);
    let create = place("N-1", &[("A", 3, PRICE)]);
    let Ok(Reply::Order(first)) = w.apply(create.clone(), Some("k-create")) else {
        panic!()
    };
    let id = first.id;
    let pay = Command::PayOrder {
        id,
        amount: 3 * PRICE,
        payment_ref: "p".into(),
        actor: "shop".into(),
    };
    let Ok(Reply::Order(paid)) = w.apply(pay.clone(), Some("k-pay")) else {
        panic!()
    };
    w.ok(hold(id));
    w.ok(modify(
        id,
        &[("A", 1, PRICE)],
        Some(CancelReason::OutOfStock),
    ));
    w.ok(refund(id, 120));
    w.now_ms += 2 * SLA_MS;
    w.ok(Command::Expire);
    // The order moved on in every way since; the keys still answer as it was.
    let Ok(Reply::Order(again)) = w.apply(create, Some("k-create")) else {
        panic!()
    };
    assert_eq!(again, first);
    let Ok(Reply::Order(again)) = w.apply(pay, Some("k-pay")) else {
        panic!()
    };
    assert_eq!(again, paid);
    w.check_replay();
}

/// The kinds of the events since `from`, in order, as found by `pick`.
fn picked<T>(w: &World, from: usize, pick: impl Fn(&EventKind) -> Option<T>) -> Vec<T> {
    w.events[from..]
        .iter()
        .filter_map(|e| pick(&e.kind))
        .collect()
}

/// The v1.2 rules (`SetRules { rules: 3 }`, logged by a server of this build at
/// start): `order.status_changed`, `order.expired` and `stock.adjusted` carry what
/// downstream acts on (the order's brief, the step's note, the tracking number, the
/// actor). Before it, under `SetOrderPolicy` alone, the same commands emit the thin
/// events: records logged under v1.1 replay as they were. A later `SetOrderPolicy`
/// never lowers the rules, and `SetRules` never goes back or past this build's.
#[test]
fn the_v12_rules_tell_status_changes_expiries_and_adjustments_in_full() {
    let mut w = World::new(None);
    let adjust = |note: &str| Command::AdjustStock {
        sku: "A".into(),
        delta: 1,
        reason: surge_engine::AdjustReason::Inbound,
        note: note.into(),
        actor: "operator:wh".into(),
    };
    let thin = w.place("t-1", &[("A", 1, PRICE)]);
    let from = w.events.len();
    w.pay(thin);
    w.ok(adjust("dock 1"));
    assert_eq!(
        picked(&w, from, |k| match k {
            EventKind::OrderStatusChanged { id, .. } => Some(*id),
            _ => None,
        }),
        [thin]
    );
    assert!(matches!(
        w.events.last().map(|e| &e.kind),
        Some(EventKind::StockAdjusted { .. })
    ));

    w.ok(Command::SetRules { rules: 3 });
    for rules in [2, surge_engine::RULES_CURRENT + 1] {
        assert_eq!(
            w.run(Command::SetRules { rules }),
            Err("validation_failed".to_string()),
            "rules {rules}"
        );
    }
    // A new policy keeps the rules.
    w.ok(Command::SetOrderPolicy {
        ship_sla_ms: SLA_MS + 1,
        review_amount_min: None,
    });
    let full = w.place("f-1", &[("A", 2, PRICE)]);
    let from = w.events.len();
    w.pay(full);
    w.ship(full);
    w.ok(adjust("dock 3"));
    let changes = picked(&w, from, |k| match k {
        EventKind::OrderStatusChangedFull(e) => Some((**e).clone()),
        _ => None,
    });
    let steps: Vec<_> = changes
        .iter()
        .map(|e| (e.id, e.from, e.to, &*e.actor, &*e.tracking_no))
        .collect();
    assert_eq!(
        steps,
        [
            (
                full,
                OrderStatus::Reserved,
                OrderStatus::Confirmed,
                "shop",
                ""
            ),
            (
                full,
                OrderStatus::Confirmed,
                OrderStatus::Picking,
                "operator:wh",
                ""
            ),
            (
                full,
                OrderStatus::Picking,
                OrderStatus::Packed,
                "operator:wh",
                ""
            ),
            (
                full,
                OrderStatus::Packed,
                OrderStatus::Shipped,
                "operator:wh",
                "T1"
            ),
        ]
    );
    let brief = &changes[3].order;
    assert_eq!(
        (&*brief.order_no, &*brief.customer_id, &*brief.channel),
        ("f-1", "c1", "tmall")
    );
    assert_eq!(brief.lines.len(), 1);
    assert_eq!(brief.lines[0].qty, 2);
    let adjusted = picked(&w, from, |k| match k {
        EventKind::StockAdjustedBy(e) => Some((e.delta, e.note.to_string(), e.actor.to_string())),
        _ => None,
    });
    assert_eq!(
        adjusted,
        [(1, "dock 3".to_string(), "operator:wh".to_string())]
    );

    let unpaid = w.place("e-1", &[("B", 1, PRICE)]);
    w.now_ms += 600_000;
    let from = w.events.len();
    w.ok(Command::Expire);
    let expired = picked(&w, from, |k| match k {
        EventKind::OrderExpiredFull(e) => Some((e.id, e.order.order_no.to_string())),
        EventKind::OrderExpired { .. } => panic!("a thin order.expired under v1.2"),
        _ => None,
    });
    assert_eq!(expired, [(unpaid, "e-1".to_string())]);
    w.check_replay();
}

/// A client's single keyed request refused as malformed (`State::apply_request`) is
/// neither logged nor remembered, so the corrected request goes through under the
/// same key (before, the key answered the refusal again); a batch's op (and
/// replay) still remembers its refusal, so the op that holds a batch's key keeps
/// it. The v1.3 rules (`SetRules { rules: 4 }`): an order totals at most
/// `ORDER_TOTAL_MAX` minor units, at creation and after a modification (before, the
/// sums of all orders' amounts could pass an int64); under the v1.2 rules it is
/// taken, so older logs replay as they ran.
#[test]
fn a_malformed_single_request_keeps_its_key_and_the_v13_rules_bound_an_order_total() {
    const TOTAL_MAX: u64 = 1_000_000_000_000;
    const PRICE_MAX: u64 = 10_000_000_000;
    for rules in [3, 4] {
        let mut w = World::new(None);
        w.ok(Command::SetRules { rules });
        w.ok(Command::DefineSku {
            sku: "BIG".into(),
            name: "BIG".into(),
            on_hand: 1_000_000,
            low_stock_threshold: 0,
        });
        let reserve = |qty| Command::Reserve {
            lines: vec![surge_engine::LineReq {
                sku: "A".into(),
                qty,
            }],
            ttl_ms: 600_000,
            actor: "t".into(),
        };
        let key = |k: &str| IdempotencyKey {
            key: k.into(),
            fingerprint: 7,
        };
        // A single request: the refusal is not logged, the corrected one is taken.
        let refused = w
            .state
            .apply_request(&reserve(0), Some(&key("K")), w.now_ms, &mut w.events);
        assert_eq!(
            refused.lsn, None,
            "rules {rules}: a malformed request was logged"
        );
        assert!(refused.outcome.is_err());
        assert!(w.apply(reserve(1), Some("K")).is_ok(), "rules {rules}");
        assert_eq!(w.stock("A"), (10, 1, 9));
        // A batch's op (`apply`): the refusal is logged and keeps the key.
        assert_eq!(
            w.apply(reserve(0), Some("B")).err().as_deref(),
            Some("validation_failed")
        );
        assert_eq!(
            w.apply(reserve(1), Some("B")).err().as_deref(),
            Some("validation_failed"),
            "the key answers its refusal"
        );
        assert_eq!(w.stock("A"), (10, 1, 9));
        // At the bound exactly: taken under both rules.
        let at_max = w.place("at-max", &[("BIG", TOTAL_MAX / PRICE_MAX, PRICE_MAX)]);
        assert_eq!(w.order(at_max).total, TOTAL_MAX);
        let over = w.run(place(
            "over",
            &[("BIG", TOTAL_MAX / PRICE_MAX + 1, PRICE_MAX)],
        ));
        let raised = w.run(Command::ModifyOrder {
            change: Box::new(OrderChange {
                id: at_max,
                lines: Some(order_lines(&[(
                    "BIG",
                    TOTAL_MAX / PRICE_MAX + 1,
                    PRICE_MAX,
                )])),
                shipping_address: None,
                note: None,
                reason: None,
                actor: "t".into(),
            }),
        });
        if rules >= 4 {
            assert_eq!(over.err().as_deref(), Some("validation_failed"));
            assert_eq!(raised.err().as_deref(), Some("validation_failed"));
            assert_eq!(w.order(at_max).total, TOTAL_MAX);
        } else {
            assert!(over.is_ok(), "{over:?}");
            assert!(raised.is_ok(), "{raised:?}");
        }
        w.check_replay();
    }
}

/// The v1.4 rules (`SetRules { rules: 5 }`): paying a paid order again is idempotent
/// only with the same `payment_ref`; another one is 409 `invalid_transition` and
/// changes nothing (before, it answered the order as paid: a second charge went
/// unrecorded). Under the v1.3 rules it is answered as before, so older logs
/// replay as they ran.
#[test]
fn under_the_v14_rules_a_second_payment_with_another_reference_is_refused() {
    for rules in [4, 5] {
        let mut w = World::new(None);
        w.ok(Command::SetRules { rules });
        let id = w.place("P-1", &[("A", 2, PRICE)]);
        w.pay(id);
        let paid = w.order(id);
        let events = w.events.len();
        let again = |payment_ref: &str| Command::PayOrder {
            id,
            amount: 2 * PRICE,
            payment_ref: payment_ref.into(),
            actor: "shop".into(),
        };
        let other = w.run(again("second-charge"));
        if rules >= 5 {
            assert_eq!(other.err().as_deref(), Some("invalid_transition"));
        } else {
            assert!(other.is_ok(), "rules {rules}: {other:?}");
        }
        // The same payment again is the same answer under both.
        assert!(w.run(again("pay-1")).is_ok(), "rules {rules}");
        assert_eq!(w.order(id), paid, "rules {rules}");
        assert_eq!(w.events.len(), events, "rules {rules}: an event");
        assert_eq!(w.ledger(id), [(LedgerKind::Charge, 2 * PRICE)]);
        w.check_replay();
    }
}

/// The v1.4 rules (`SetRules { rules: 5 }`): `order.created` and `order.paid` say
/// who created and paid the order (the logged actor: a named token's `role:name`
/// and whom it acted for); under the v1.3 rules they carry no actor, so older logs
/// replay as they ran.
#[test]
fn the_v14_rules_tell_who_created_and_paid_an_order() {
    for rules in [4, 5] {
        let mut w = World::new(None);
        w.ok(Command::SetRules { rules });
        let from = w.events.len();
        let id = w.place("W-1", &[("A", 1, PRICE)]);
        w.pay(id);
        let told = picked(&w, from, |kind| match kind {
            EventKind::OrderCreated(c) if c.id == id => Some(("created", None)),
            EventKind::OrderPaid(p) if p.id == id => Some(("paid", None)),
            EventKind::OrderCreatedBy(c) if c.created.id == id => {
                Some(("created", Some(c.actor.to_string())))
            }
            EventKind::OrderPaidBy(p) if p.paid.id == id => {
                Some(("paid", Some(p.actor.to_string())))
            }
            _ => None,
        });
        let by = |actor: &str| (rules >= 5).then(|| actor.to_string());
        assert_eq!(
            told,
            [("created", by("storefront")), ("paid", by("shop"))],
            "rules {rules}"
        );
        w.check_replay();
    }
}

/// A probe from outside: the hold that took an order's history to the cap for
/// changes that keep the status was allowed, and its release was then refused for
/// good (503 `overloaded`, "retry"), so a paid order could never ship. A release is
/// not counted now, the cap refuses with 409, and the actions say what is left.
#[test]
fn a_hold_taken_at_the_last_change_allowed_is_released_and_the_order_ships() {
    let mut w = World::new(None);
    w.ok(Command::SetRules { rules: 6 });
    let id = w.place("N-1", &[("A", 2, PRICE)]);
    w.pay(id);
    let note = |i: usize| Command::ModifyOrder {
        change: Box::new(OrderChange {
            id,
            lines: None,
            shipping_address: None,
            note: Some(format!("call {i}")),
            reason: None,
            actor: "operator:cs".into(),
        }),
    };
    // Created and paid: two entries; notes up to one short of the cap.
    assert_eq!(w.order(id).history.len(), 2);
    let mut i = 0;
    while w.order(id).history.len() < 19 {
        w.ok(note(i));
        i += 1;
    }
    w.ok(hold(id));
    let o = w.order(id);
    assert_eq!(o.history.len(), 20);
    let actions = |o: &OrderView| o.actions();
    assert_eq!(actions(&o), ["cancel", "release_hold"]);
    assert_eq!(w.run(note(99)), Err("invalid_transition".into()));
    assert_eq!(w.run(refund(id, 1)), Err("invalid_transition".into()));
    w.ok(Command::ReleaseHold {
        id,
        note: "checked".into(),
        actor: "operator:cs".into(),
    });
    assert_eq!(w.run(hold(id)), Err("invalid_transition".into()));
    assert_eq!(actions(&w.order(id)), ["pick", "cancel"]);
    w.ship(id);
    for to in [OrderStatus::Delivered, OrderStatus::Completed] {
        w.advance(id, to).expect("step");
    }
    w.ok(Command::ReturnOrder {
        id,
        restock: true,
        reason: "too small".into(),
        note: String::new(),
        actor: "operator:cs".into(),
    });
    let o = w.order(id);
    assert_eq!(o.payment.refund_due_amount, 2 * PRICE);
    assert_eq!(actions(&o), ["refund"]);
    w.ok(Command::RefundOrder {
        id,
        refund_ref: "rf-9".into(),
        actor: "operator:fin".into(),
    });
    assert_eq!(w.order(id).payment.status, PaymentStatus::Refunded);
    w.check_replay();
}

/// The v1.5 rules (`SetRules { rules: 6 }`), each from an outside probe: a PATCH
/// that changes nothing logs nothing (each one took a history entry, so retries
/// used up the order's changes); a PATCH that raises a total to the review amount
/// holds the order for review (raising a small order by PATCH skipped it); the
/// same payment told again after a cancel answers the order (it was 409). Under the
/// v1.4 rules all three run as before, so older logs replay as they ran.
#[test]
fn the_v15_rules_keep_repeats_quiet_and_review_what_a_patch_raises() {
    for rules in [5, 6] {
        let mut w = World::new(Some(500));
        w.ok(Command::SetRules { rules });
        let id = w.place("R-1", &[("A", 1, PRICE)]);
        assert!(w.order(id).hold.is_none());
        let note = Command::ModifyOrder {
            change: Box::new(OrderChange {
                id,
                lines: Some(order_lines(&[("A", 1, PRICE)])),
                shipping_address: None,
                note: Some("leave at the door".into()),
                reason: None,
                actor: "operator:cs".into(),
            }),
        };
        w.ok(note.clone());
        let (logged, events, history) = (w.log.len(), w.events.len(), w.order(id).history.len());
        let again = w.ok(note);
        let Reply::Order(again) = again else {
            panic!("{again:?}")
        };
        if rules >= 6 {
            assert_eq!(w.log.len(), logged, "a repeat was logged");
            assert_eq!(w.events.len(), events, "a repeat told downstream");
            assert_eq!(again.history.len(), history);
        } else {
            assert_eq!(w.log.len(), logged + 1, "rules {rules}");
            assert_eq!(again.history.len(), history + 1, "rules {rules}");
        }

        // Raised to the review amount by PATCH.
        let from = w.events.len();
        w.ok(modify(id, &[("A", 5, PRICE)], None));
        let hold = w.order(id).hold;
        if rules >= 6 {
            let hold = hold.expect("held for review");
            assert_eq!(hold.reason, HoldReason::Review);
            assert_eq!(&*hold.actor, "system");
            assert_eq!(w.types_since(from), ["order.modified", "order.held"]);
        } else {
            assert!(hold.is_none(), "rules {rules}");
            assert_eq!(w.types_since(from), ["order.modified"]);
        }

        // The same payment after a cancel.
        let id = w.place("R-2", &[("B", 1, PRICE)]);
        w.pay(id);
        w.ok(Command::CancelOrder {
            id,
            reason: CancelReason::CustomerRequest,
            note: String::new(),
            actor: "operator:cs".into(),
        });
        let cancelled = w.order(id);
        let logged = w.log.len();
        let repeat = w.run(Command::PayOrder {
            id,
            amount: PRICE,
            payment_ref: "pay-1".into(),
            actor: "shop".into(),
        });
        if rules >= 6 {
            assert!(repeat.is_ok(), "{repeat:?}");
        } else {
            assert_eq!(repeat.err().as_deref(), Some("invalid_transition"));
        }
        let other = w.run(Command::PayOrder {
            id,
            amount: PRICE,
            payment_ref: "another".into(),
            actor: "shop".into(),
        });
        assert_eq!(other.err().as_deref(), Some("invalid_transition"));
        assert_eq!(w.log.len(), logged);
        assert_eq!(w.order(id), cancelled);
        w.check_replay();
    }
}

/// The v1.5 rules, from an outside probe: a stock adjustment whose delta alone is
/// malformed (zero, a negative inbound, more than `on_hand` can ever hold) is
/// `validation_failed` on an unknown SKU too, as the contract's order of refusals
/// says; under the v1.4 rules the unknown SKU's 404 came first.
#[test]
fn under_the_v15_rules_a_malformed_delta_is_refused_before_an_unknown_sku() {
    use surge_engine::AdjustReason;
    for rules in [5, 6] {
        let mut w = World::new(None);
        w.ok(Command::SetRules { rules });
        let adjust = |sku: &str, delta: i64, reason: AdjustReason| Command::AdjustStock {
            sku: sku.into(),
            delta,
            reason,
            note: String::new(),
            actor: "operator:wh".into(),
        };
        let unknown = if rules >= 6 {
            "validation_failed"
        } else {
            "unknown_sku"
        };
        for (delta, reason) in [
            (0, AdjustReason::Inbound),
            (-4, AdjustReason::Inbound),
            (1_000_000_000_001, AdjustReason::Correction),
        ] {
            assert_eq!(
                w.run(adjust("NOPE", delta, reason)).err().as_deref(),
                Some(unknown),
                "rules {rules}: {delta}"
            );
            assert_eq!(
                w.run(adjust("A", delta, reason)).err().as_deref(),
                Some("validation_failed"),
                "rules {rules}: {delta}"
            );
        }
        assert_eq!(
            w.run(adjust("NOPE", 5, AdjustReason::Inbound))
                .err()
                .as_deref(),
            Some("unknown_sku")
        );
        w.ok(adjust("A", 5, AdjustReason::Inbound));
        w.check_replay();
    }
}

/// The v1.5 rules, from an outside probe: lines are judged in request order, so a
/// malformed SKU id on a line comes before a bad quantity on a later line (under
/// the v1.4 rules every line's quantity was judged before any line's SKU id).
#[test]
fn under_the_v15_rules_lines_are_judged_in_request_order() {
    use surge_engine::{Field, LineField, LineReq, Rejection};
    for rules in [5, 6] {
        let mut w = World::new(None);
        w.ok(Command::SetRules { rules });
        let reserve = Command::Reserve {
            lines: vec![
                LineReq {
                    sku: "A".into(),
                    qty: 1,
                },
                LineReq {
                    sku: "bad sku".into(),
                    qty: 1,
                },
                LineReq {
                    sku: "A".into(),
                    qty: 0,
                },
            ],
            ttl_ms: 600_000,
            actor: "t".into(),
        };
        let refused = w.state.apply(&reserve, None, w.now_ms, &mut Vec::new());
        let Err(Rejection::Validation {
            field: Field::Line { index, part },
            ..
        }) = refused.outcome
        else {
            panic!("rules {rules}: {:?}", refused.outcome)
        };
        if rules >= 6 {
            assert_eq!((index, part), (1, LineField::Sku));
        } else {
            assert_eq!((index, part), (2, LineField::Qty));
        }
        // A bad quantity before a malformed id is still the first refusal.
        let reserve = Command::Reserve {
            lines: vec![
                LineReq {
                    sku: "A".into(),
                    qty: 0,
                },
                LineReq {
                    sku: "bad sku".into(),
                    qty: 1,
                },
            ],
            ttl_ms: 600_000,
            actor: "t".into(),
        };
        let refused = w.state.apply(&reserve, None, w.now_ms, &mut Vec::new());
        assert!(
            matches!(
                refused.outcome,
                Err(Rejection::Validation {
                    field: Field::Line {
                        index: 0,
                        part: LineField::Qty
                    },
                    ..
                })
            ),
            "rules {rules}: {:?}",
            refused.outcome
        );
        // An order: a malformed id before a later bad quantity, and before an
        // earlier unknown (well-formed) SKU.
        for (lines, v15, v14) in [
            (
                [("bad sku", 1, PRICE), ("A", 0, PRICE)],
                (0, LineField::Sku),
                Some((1, LineField::Qty)),
            ),
            (
                [("ZZZ", 1, PRICE), ("bad sku", 1, PRICE)],
                (1, LineField::Sku),
                None,
            ),
        ] {
            let order = place("Q-1", &lines);
            let outcome = w
                .state
                .apply(&order, None, w.now_ms, &mut Vec::new())
                .outcome;
            assert_line_refusal(outcome, if rules >= 6 { Some(v15) } else { v14 });
        }
        // A PATCH: it judged a line's SKU after its quantity but looked it up at
        // once, so an unknown SKU answered before a later line's malformed one.
        let id = w.place("M-1", &[("A", 1, PRICE)]);
        for (lines, v15, v14) in [
            (
                [("bad sku", 1, PRICE), ("A", 0, PRICE)],
                (0, LineField::Sku),
                Some((0, LineField::Sku)),
            ),
            (
                [("ZZZ", 1, PRICE), ("bad sku", 1, PRICE)],
                (1, LineField::Sku),
                None,
            ),
        ] {
            let change = modify(id, &lines, None);
            let outcome = w
                .state
                .apply(&change, None, w.now_ms, &mut Vec::new())
                .outcome;
            assert_line_refusal(outcome, if rules >= 6 { Some(v15) } else { v14 });
        }
        w.check_replay();
    }
}

/// A refusal naming line `expected` (index, part), or with `None` an unknown SKU.
fn assert_line_refusal(
    outcome: Result<Reply, surge_engine::Rejection>,
    expected: Option<(u32, surge_engine::LineField)>,
) {
    use surge_engine::{Field, Rejection};
    match (outcome, expected) {
        (
            Err(Rejection::Validation {
                field: Field::Line { index, part },
                ..
            }),
            Some(expected),
        ) => assert_eq!((index, part), expected),
        (Err(Rejection::UnknownSku { .. }), None) => {}
        (other, expected) => panic!("{other:?}, expected {expected:?}"),
    }
}

/// The v1.6 rules (`SetRules { rules: 7 }`), from an outside probe: stock given back
/// (here a paid order's cancel) may take `on_hand` past `ON_HAND_MAX`, and is never
/// refused for it; the SKU can then still be redefined without `on_hand` (its level
/// kept, not judged) and corrected downwards in steps. Under the v1.5 rules both
/// were refused as if the level had been sent too high.
#[test]
fn under_the_v16_rules_a_level_given_back_past_the_limit_can_be_corrected() {
    use surge_engine::{AdjustReason, SkuDefinition, limits::ON_HAND_MAX};
    for rules in [6, 7] {
        let mut w = World::new(None);
        w.ok(Command::SetRules { rules });
        let id = w.place("N-1", &[("A", 3, PRICE)]);
        w.pay(id);
        let define = |on_hand: Option<u64>, threshold: u64| Command::DefineSkuSale {
            definition: Box::new(SkuDefinition {
                sku: "A".into(),
                name: None,
                on_hand,
                low_stock_threshold: Some(threshold),
                purchase_limit_per_customer: None,
                sale_starts_at_ms: None,
                sale_ends_at_ms: None,
            }),
        };
        w.ok(define(Some(ON_HAND_MAX), 0));
        w.ok(Command::CancelOrder {
            id,
            reason: CancelReason::CustomerRequest,
            note: String::new(),
            actor: "operator:cs".into(),
        });
        assert_eq!(w.stock("A").0, ON_HAND_MAX + 3, "rules {rules}: given back");
        let lower = Command::AdjustStock {
            sku: "A".into(),
            delta: -1,
            reason: AdjustReason::Correction,
            note: String::new(),
            actor: "operator:wh".into(),
        };
        let kept = w.run(define(None, 2)).err();
        let lowered = w.run(lower).err();
        if rules >= 7 {
            assert_eq!((kept, lowered), (None, None), "rules {rules}");
            assert_eq!(w.stock("A").0, ON_HAND_MAX + 2);
        } else {
            let refused = Some("validation_failed".to_string());
            assert_eq!((kept, lowered), (refused.clone(), refused), "rules {rules}");
            assert_eq!(w.stock("A").0, ON_HAND_MAX + 3);
        }
        // Sent, a level past the limit is refused under both, and so is a raise.
        assert_eq!(
            w.run(define(Some(ON_HAND_MAX + 1), 0)).err().as_deref(),
            Some("validation_failed")
        );
        let raise = Command::AdjustStock {
            sku: "A".into(),
            delta: 1,
            reason: AdjustReason::Inbound,
            note: String::new(),
            actor: "operator:wh".into(),
        };
        assert_eq!(w.run(raise).err().as_deref(), Some("validation_failed"));
        w.check_replay();
    }
}

/// The v1.6 rules, from an outside probe: an order's SKU ids are judged before its
/// order number is found taken (the contract: `validation_failed` first). Under the
/// v1.5 rules a malformed id came after 409 `duplicate_order_no`.
#[test]
fn under_the_v16_rules_a_malformed_sku_id_comes_before_a_taken_order_number() {
    for rules in [6, 7] {
        let mut w = World::new(None);
        w.ok(Command::SetRules { rules });
        w.place("N-1", &[("A", 1, PRICE)]);
        for sku in ["", "bad sku"] {
            let refused = w.run(place("N-1", &[("A", 1, PRICE), (sku, 1, PRICE)]));
            let expected = if rules >= 7 {
                "validation_failed"
            } else {
                "duplicate_order_no"
            };
            assert_eq!(
                refused.err().as_deref(),
                Some(expected),
                "rules {rules}: {sku:?}"
            );
        }
        // A well-formed unknown SKU on a taken number: the number's 409 still.
        assert_eq!(
            w.run(place("N-1", &[("NOPE", 1, PRICE)])).err().as_deref(),
            Some("duplicate_order_no")
        );
        w.check_replay();
    }
}

/// The v1.6 rules, from an outside probe: the shipping step repeated with another
/// tracking number is 409 `invalid_transition` and changes nothing; with the same
/// number, or none, it stays idempotent. Under the v1.5 rules it answered 200 and
/// kept the first number, dropping the new one unsaid.
#[test]
fn under_the_v16_rules_a_shipment_repeated_with_another_tracking_number_is_refused() {
    for rules in [6, 7] {
        let mut w = World::new(None);
        w.ok(Command::SetRules { rules });
        let id = w.place("N-1", &[("A", 1, PRICE)]);
        w.pay(id);
        w.ship(id); // tracking number "T1"
        let ship = |tracking_no: &str| Command::AdvanceOrder {
            id,
            to: OrderStatus::Shipped,
            note: String::new(),
            tracking_no: tracking_no.into(),
            actor: "operator:wh".into(),
        };
        let before = w.order(id);
        let logged = w.log.len();
        for same in ["T1", ""] {
            assert!(w.run(ship(same)).is_ok(), "rules {rules}: {same:?}");
        }
        let other = w.run(ship("T2")).err();
        let expected = (rules >= 7).then(|| "invalid_transition".to_string());
        assert_eq!(other, expected, "rules {rules}");
        assert_eq!(w.order(id), before, "rules {rules}: the order changed");
        assert_eq!(w.log.len(), logged, "rules {rules}: a repeat was logged");
        w.check_replay();
    }
}

/// The v1.7 rules (`SetRules { rules: 8 }`), from a review: a single keyed request
/// refused because a limit of the engine's was reached (`LimitReached`, here the
/// distinct actors) is neither logged nor remembered, so its retry under the same
/// key is judged afresh, and taken once there is room (before, the key answered the
/// refusal for the whole retention window, though the 503 said to retry). Under the
/// v1.6 rules it is logged and remembered, so older logs replay as they ran.
#[test]
fn under_the_v17_rules_a_request_refused_at_a_limit_keeps_its_key() {
    use surge_engine::limits::ACTORS_MAX;
    for rules in [7, 8] {
        let mut w = World::new(None);
        w.ok(Command::SetRules { rules });
        let adjust = |actor: String| Command::AdjustStock {
            sku: "A".into(),
            delta: 1,
            reason: surge_engine::AdjustReason::Inbound,
            note: String::new(),
            actor,
        };
        // Every actor there is room for, then one more, refused.
        let mut full = false;
        for i in 0..=ACTORS_MAX {
            w.events.clear();
            match w.run(adjust(format!("a{i}"))) {
                Ok(_) => {}
                Err(code) => {
                    assert_eq!(code, "overloaded", "rules {rules}, actor {i}");
                    full = true;
                    break;
                }
            }
        }
        assert!(full, "rules {rules}: the actors never filled up");
        let key = IdempotencyKey {
            key: "K".into(),
            fingerprint: 7,
        };
        let request = |w: &mut World, cmd: Command| {
            w.events.clear();
            let applied = w
                .state
                .apply_request(&cmd, Some(&key), w.now_ms, &mut w.events);
            if applied.lsn.is_some() {
                w.log.push((w.now_ms, cmd, Some(key.clone())));
            }
            applied
        };
        let refused = request(&mut w, adjust("newcomer".into()));
        assert!(
            matches!(refused.outcome, Err(Rejection::LimitReached { .. })),
            "{:?}",
            refused.outcome
        );
        // The retry under the key, by an actor the engine knows (room enough).
        let retried = request(&mut w, adjust("a0".into()));
        if rules >= 8 {
            assert_eq!(refused.lsn, None, "a refusal at a limit was logged");
            assert!(retried.outcome.is_ok(), "{:?}", retried.outcome);
        } else {
            assert!(
                refused.lsn.is_some(),
                "rules {rules}: the refusal was not logged"
            );
            assert!(
                matches!(retried.outcome, Err(Rejection::LimitReached { .. })),
                "rules {rules}: the key did not answer its refusal: {:?}",
                retried.outcome
            );
        }
        w.check_replay();
    }
}
