//! The cancel table: every (status, action) pair of the order graph, driven through
//! one `check` helper. Each row brings a fresh order to a status, applies one action
//! and states the outcome and the stock levels afterwards.

use surge_engine::{
    CancelReason, Command, Event, LineReq, OrderId, OrderLineReq, OrderStatus, PaymentStatus,
    Query, QueryReply, Reply, ReservationId, State,
};

const ON_HAND: u64 = 10;
const QTY: u64 = 3;
const PRICE: u64 = 250;
const TTL_MS: u64 = 60_000;

struct World {
    state: State,
    now_ms: u64,
    events: Vec<Event>,
}

impl World {
    fn new() -> World {
        let mut w = World {
            state: State::new(),
            now_ms: 1_000,
            events: Vec::new(),
        };
        w.ok(Command::DefineSku {
            sku: "A".into(),
            name: "A".into(),
            on_hand: ON_HAND,
            low_stock_threshold: 2,
        });
        w
    }

    fn run(&mut self, cmd: Command) -> Result<Reply, String> {
        self.state
            .apply(&cmd, None, self.now_ms, &mut self.events)
            .outcome
            .map_err(|r| r.code().to_string())
    }

    fn ok(&mut self, cmd: Command) -> Reply {
        let name = cmd.name();
        self.run(cmd)
            .unwrap_or_else(|code| panic!("{name} failed: {code}"))
    }

    fn stock(&self) -> (u64, u64) {
        match self.state.query(&Query::GetSku { sku: "A".into() }) {
            Ok(QueryReply::Sku(s)) => (s.on_hand, s.reserved),
            other => panic!("{other:?}"),
        }
    }

    fn order(&self, id: OrderId) -> (OrderStatus, PaymentStatus) {
        match self.state.query(&Query::GetOrder { id }) {
            Ok(QueryReply::Order(o)) => (o.status, o.payment.status),
            other => panic!("{other:?}"),
        }
    }

    /// Create one order and drive it to `status` along the graph.
    fn order_in(&mut self, status: OrderStatus) -> OrderId {
        let Reply::Order(order) = self.ok(Command::CreateOrder {
            order_no: format!("n{}", self.now_ms),
            customer_id: "c".into(),
            lines: vec![OrderLineReq {
                sku: "A".into(),
                qty: QTY,
                unit_price: PRICE,
            }],
            payment_ttl_ms: TTL_MS,
            reservation_id: None,
            actor: "shop".into(),
        }) else {
            panic!("not an order")
        };
        let id = order.id;
        let path = [
            OrderStatus::Confirmed,
            OrderStatus::Picking,
            OrderStatus::Packed,
            OrderStatus::Shipped,
            OrderStatus::Delivered,
            OrderStatus::Completed,
        ];
        match status {
            OrderStatus::Reserved => {}
            OrderStatus::Expired => {
                self.now_ms += TTL_MS;
                self.ok(Command::Expire);
            }
            OrderStatus::Cancelled => {
                self.ok(cancel(id, CancelReason::Other));
            }
            OrderStatus::Returned => {
                self.drive(id, &path);
                self.ok(Command::ReturnOrder {
                    id,
                    restock: true,
                    reason: "r".into(),
                    note: String::new(),
                    actor: "op".into(),
                });
            }
            target => {
                let end = path.iter().position(|s| *s == target).expect("on the path");
                self.drive(id, &path[..=end]);
            }
        }
        assert_eq!(self.order(id).0, status);
        id
    }

    fn drive(&mut self, id: OrderId, path: &[OrderStatus]) {
        for &to in path {
            if to == OrderStatus::Confirmed {
                self.ok(Command::PayOrder {
                    id,
                    amount: QTY * PRICE,
                    payment_ref: "p".into(),
                    actor: "shop".into(),
                });
            } else {
                self.ok(advance(id, to));
            }
        }
    }
}

fn cancel(id: OrderId, reason: CancelReason) -> Command {
    Command::CancelOrder {
        id,
        reason,
        note: "why".into(),
        actor: "cs".into(),
    }
}

fn advance(id: OrderId, to: OrderStatus) -> Command {
    Command::AdvanceOrder {
        id,
        to,
        note: String::new(),
        tracking_no: "T1".into(),
        actor: "wh".into(),
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Pay,
    Pick,
    Pack,
    Ship,
    Deliver,
    Complete,
    Cancel,
    Return,
    Refund,
    Expire,
}

fn action(id: OrderId, action: Action) -> Command {
    match action {
        Action::Pay => Command::PayOrder {
            id,
            amount: QTY * PRICE,
            payment_ref: "p".into(),
            actor: "shop".into(),
        },
        Action::Pick => advance(id, OrderStatus::Picking),
        Action::Pack => advance(id, OrderStatus::Packed),
        Action::Ship => advance(id, OrderStatus::Shipped),
        Action::Deliver => advance(id, OrderStatus::Delivered),
        Action::Complete => advance(id, OrderStatus::Completed),
        Action::Cancel => cancel(id, CancelReason::CustomerRequest),
        Action::Return => Command::ReturnOrder {
            id,
            restock: true,
            reason: "r".into(),
            note: String::new(),
            actor: "op".into(),
        },
        Action::Refund => Command::RefundOrder {
            id,
            refund_ref: "rf".into(),
            actor: "fin".into(),
        },
        Action::Expire => Command::Expire,
    }
}

/// One row: from `status`, `act` gives `outcome` ("ok" or an error code), leaving the
/// order in `after` and the SKU at (on_hand, reserved).
fn check(
    status: OrderStatus,
    act: Action,
    outcome: &str,
    after: (OrderStatus, PaymentStatus),
    stock: (u64, u64),
) {
    let mut w = World::new();
    let id = w.order_in(status);
    if matches!(act, Action::Expire) {
        w.now_ms += TTL_MS;
    }
    let before_digest = w.state.digest();
    let got = w.run(action(id, act));
    let got_code = match &got {
        Ok(_) => "ok".to_string(),
        Err(code) => code.clone(),
    };
    assert_eq!(got_code, outcome, "{status} + {act:?}");
    if got.is_err() {
        assert_eq!(
            w.state.digest(),
            before_digest,
            "{status} + {act:?}: a refusal changed the state"
        );
    }
    assert_eq!(w.order(id), after, "{status} + {act:?}: order afterwards");
    assert_eq!(
        w.stock(),
        stock,
        "{status} + {act:?}: (on_hand, reserved) afterwards"
    );
    w.state.check_invariants();
}

use Action::*;
use OrderStatus as S;
use PaymentStatus as P;

const HELD: (u64, u64) = (ON_HAND, QTY);
const FREE: (u64, u64) = (ON_HAND, 0);
const SOLD: (u64, u64) = (ON_HAND - QTY, 0);

#[test]
fn reserved_order() {
    check(S::Reserved, Pay, "ok", (S::Confirmed, P::Paid), SOLD);
    check(
        S::Reserved,
        Pick,
        "invalid_transition",
        (S::Reserved, P::Unpaid),
        HELD,
    );
    check(
        S::Reserved,
        Ship,
        "invalid_transition",
        (S::Reserved, P::Unpaid),
        HELD,
    );
    check(S::Reserved, Cancel, "ok", (S::Cancelled, P::Unpaid), FREE);
    check(
        S::Reserved,
        Return,
        "invalid_transition",
        (S::Reserved, P::Unpaid),
        HELD,
    );
    check(
        S::Reserved,
        Refund,
        "invalid_transition",
        (S::Reserved, P::Unpaid),
        HELD,
    );
    check(S::Reserved, Expire, "ok", (S::Expired, P::Unpaid), FREE);
}

#[test]
fn confirmed_through_packed_orders() {
    check(S::Confirmed, Pay, "ok", (S::Confirmed, P::Paid), SOLD); // repeated pay: idempotent
    check(S::Confirmed, Pick, "ok", (S::Picking, P::Paid), SOLD);
    check(
        S::Confirmed,
        Pack,
        "invalid_transition",
        (S::Confirmed, P::Paid),
        SOLD,
    );
    check(
        S::Confirmed,
        Cancel,
        "ok",
        (S::Cancelled, P::RefundDue),
        FREE,
    );
    check(
        S::Confirmed,
        Return,
        "invalid_transition",
        (S::Confirmed, P::Paid),
        SOLD,
    );
    check(
        S::Confirmed,
        Refund,
        "invalid_transition",
        (S::Confirmed, P::Paid),
        SOLD,
    );
    check(S::Confirmed, Expire, "ok", (S::Confirmed, P::Paid), SOLD);
    check(S::Picking, Pack, "ok", (S::Packed, P::Paid), SOLD);
    check(S::Picking, Pick, "ok", (S::Picking, P::Paid), SOLD); // repeated step
    check(
        S::Picking,
        Ship,
        "invalid_transition",
        (S::Picking, P::Paid),
        SOLD,
    );
    check(S::Picking, Cancel, "ok", (S::Cancelled, P::RefundDue), FREE);
    check(S::Packed, Ship, "ok", (S::Shipped, P::Paid), SOLD);
    check(
        S::Packed,
        Deliver,
        "invalid_transition",
        (S::Packed, P::Paid),
        SOLD,
    );
    check(S::Packed, Cancel, "ok", (S::Cancelled, P::RefundDue), FREE);
}

#[test]
fn shipped_and_later_orders_are_returned_not_cancelled() {
    check(
        S::Shipped,
        Cancel,
        "order_shipped",
        (S::Shipped, P::Paid),
        SOLD,
    );
    check(S::Shipped, Deliver, "ok", (S::Delivered, P::Paid), SOLD);
    check(
        S::Shipped,
        Return,
        "invalid_transition",
        (S::Shipped, P::Paid),
        SOLD,
    );
    check(
        S::Delivered,
        Cancel,
        "order_shipped",
        (S::Delivered, P::Paid),
        SOLD,
    );
    check(S::Delivered, Complete, "ok", (S::Completed, P::Paid), SOLD);
    check(
        S::Delivered,
        Return,
        "ok",
        (S::Returned, P::RefundDue),
        FREE,
    );
    check(
        S::Completed,
        Cancel,
        "order_shipped",
        (S::Completed, P::Paid),
        SOLD,
    );
    check(
        S::Completed,
        Return,
        "ok",
        (S::Returned, P::RefundDue),
        FREE,
    );
    check(
        S::Completed,
        Pick,
        "invalid_transition",
        (S::Completed, P::Paid),
        SOLD,
    );
    check(
        S::Returned,
        Cancel,
        "order_shipped",
        (S::Returned, P::RefundDue),
        FREE,
    );
    check(S::Returned, Return, "ok", (S::Returned, P::RefundDue), FREE); // twice: idempotent
    check(S::Returned, Refund, "ok", (S::Returned, P::Refunded), FREE);
    check(
        S::Returned,
        Ship,
        "invalid_transition",
        (S::Returned, P::RefundDue),
        FREE,
    );
}

#[test]
fn cancelled_orders_get_no_further_processing() {
    check(S::Cancelled, Cancel, "ok", (S::Cancelled, P::Unpaid), FREE); // twice: idempotent
    check(
        S::Cancelled,
        Pay,
        "invalid_transition",
        (S::Cancelled, P::Unpaid),
        FREE,
    );
    check(
        S::Cancelled,
        Pick,
        "invalid_transition",
        (S::Cancelled, P::Unpaid),
        FREE,
    );
    check(
        S::Cancelled,
        Ship,
        "invalid_transition",
        (S::Cancelled, P::Unpaid),
        FREE,
    );
    check(
        S::Cancelled,
        Return,
        "invalid_transition",
        (S::Cancelled, P::Unpaid),
        FREE,
    );
    check(
        S::Cancelled,
        Refund,
        "invalid_transition",
        (S::Cancelled, P::Unpaid),
        FREE,
    );
    check(S::Cancelled, Expire, "ok", (S::Cancelled, P::Unpaid), FREE);
}

#[test]
fn expired_orders_stay_expired() {
    check(
        S::Expired,
        Pay,
        "invalid_transition",
        (S::Expired, P::Unpaid),
        FREE,
    );
    check(
        S::Expired,
        Cancel,
        "invalid_transition",
        (S::Expired, P::Unpaid),
        FREE,
    );
    check(
        S::Expired,
        Pick,
        "invalid_transition",
        (S::Expired, P::Unpaid),
        FREE,
    );
    check(
        S::Expired,
        Return,
        "invalid_transition",
        (S::Expired, P::Unpaid),
        FREE,
    );
}

#[test]
fn paid_then_cancelled_then_refunded() {
    let mut w = World::new();
    let id = w.order_in(S::Packed);
    w.ok(cancel(id, CancelReason::FraudSuspected));
    assert_eq!(w.order(id), (S::Cancelled, P::RefundDue));
    // Cancelling again gives no stock back a second time.
    w.ok(cancel(id, CancelReason::Other));
    assert_eq!(w.stock(), FREE);
    w.ok(action(id, Refund));
    assert_eq!(w.order(id), (S::Cancelled, P::Refunded));
    let Ok(QueryReply::Order(view)) = w.state.query(&Query::GetOrder { id }) else {
        panic!()
    };
    let cancellation = view.cancellation.expect("cancellation recorded");
    assert_eq!(
        (
            cancellation.reason,
            &*cancellation.actor,
            cancellation.note.as_str()
        ),
        (CancelReason::FraudSuspected, "cs", "why")
    );
    let statuses: Vec<S> = view.history.iter().map(|h| h.status).collect();
    assert_eq!(
        statuses,
        [
            S::Reserved,
            S::Confirmed,
            S::Picking,
            S::Packed,
            S::Cancelled,
            S::Cancelled
        ]
    );
}

#[test]
fn expiry_racing_pay() {
    // Pay lands in the same millisecond the payment window closes: the window is
    // half-open, so pay is refused and the expiry that follows releases the hold.
    let mut w = World::new();
    let id = w.order_in(S::Reserved);
    w.now_ms += TTL_MS;
    assert_eq!(w.run(action(id, Pay)).unwrap_err(), "invalid_transition");
    w.ok(Command::Expire);
    assert_eq!(w.order(id), (S::Expired, P::Unpaid));
    assert_eq!(w.stock(), FREE);
    // One millisecond earlier pay wins and expiry finds nothing to do.
    let mut w = World::new();
    let id = w.order_in(S::Reserved);
    w.now_ms += TTL_MS - 1;
    w.ok(action(id, Pay));
    w.now_ms += 1;
    assert_eq!(
        w.ok(Command::Expire),
        Reply::Expired {
            reservations: 0,
            orders: 0
        }
    );
    assert_eq!(w.order(id), (S::Confirmed, P::Paid));
}

#[test]
fn plain_reservations_commit_release_and_repeat() {
    let mut w = World::new();
    let hold = |w: &mut World| match w.ok(Command::Reserve {
        lines: vec![LineReq {
            sku: "A".into(),
            qty: 4,
        }],
        ttl_ms: TTL_MS,
        actor: "s".into(),
    }) {
        Reply::Reservation(r) => r.id,
        other => panic!("{other:?}"),
    };
    let r1 = hold(&mut w);
    let r2 = hold(&mut w);
    assert_eq!(w.stock(), (10, 8));
    assert_eq!(
        w.run(Command::Reserve {
            lines: vec![LineReq {
                sku: "A".into(),
                qty: 3
            }],
            ttl_ms: TTL_MS,
            actor: "s".into()
        })
        .unwrap_err(),
        "insufficient_stock"
    );
    w.ok(Command::CommitReservation {
        id: r1,
        actor: "s".into(),
    });
    w.ok(Command::CommitReservation {
        id: r1,
        actor: "s".into(),
    });
    assert_eq!(
        w.run(Command::ReleaseReservation {
            id: r1,
            actor: "s".into()
        })
        .unwrap_err(),
        "invalid_transition"
    );
    w.ok(Command::ReleaseReservation {
        id: r2,
        actor: "s".into(),
    });
    w.ok(Command::ReleaseReservation {
        id: r2,
        actor: "s".into(),
    });
    assert_eq!(
        w.run(Command::CommitReservation {
            id: r2,
            actor: "s".into()
        })
        .unwrap_err(),
        "invalid_transition"
    );
    assert_eq!(
        w.run(Command::CommitReservation {
            id: ReservationId(99),
            actor: "s".into()
        })
        .unwrap_err(),
        "unknown_reservation"
    );
    assert_eq!(w.stock(), (6, 0));
}
