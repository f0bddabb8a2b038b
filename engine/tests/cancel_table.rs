//! The order table: every order status × every action the engine offers on an order
//! (`TABLE`, checked complete by `every_pair_is_in_the_table`). Each row brings a fresh
//! order to its status through the real commands, applies one action and states the
//! outcome (the status afterwards or the refusal code), the payment status, the SKU's
//! on_hand / reserved / units sold, and the events emitted.

mod common;

use surge_engine::{
    CancelReason, Command, Event, EventKind, LineReq, OrderId, OrderLineReq, OrderStatus,
    PaymentStatus, Query, QueryReply, Reply, ReservationId, State,
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
            .map_err(|r| common::refusal_kind(&r).to_string())
    }

    fn ok(&mut self, cmd: Command) -> Reply {
        let name = cmd.name();
        self.run(cmd)
            .unwrap_or_else(|code| panic!("{name} failed: {code}"))
    }

    /// SKU "A" through the public queries: (on_hand, reserved, units sold).
    fn stock(&self) -> (u64, u64, u64) {
        let sku = match self.state.query(&Query::GetSku { sku: "A".into() }) {
            Ok(QueryReply::Sku(s)) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(sku.available, sku.on_hand - sku.reserved, "available");
        let Ok(QueryReply::Stats(stats)) = self.state.query(&Query::Stats { top: 100 }) else {
            panic!("stats")
        };
        let sales = stats
            .top_skus
            .iter()
            .find(|s| &*s.sku == "A")
            .expect("A in the stats");
        assert_eq!(sales.units_held, sku.reserved, "units held");
        (sku.on_hand, sku.reserved, sales.units_sold)
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

/// Every action the engine offers on an existing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// The payment timer: `Expire` once the payment window has run out.
    Expire,
}

impl Action {
    const ALL: &[Action] = &[
        Pay, Pick, Pack, Ship, Deliver, Complete, Cancel, Return, Refund, Expire,
    ];
}

/// The table's actions a command can be. The match has no wildcard: a new `Command`
/// fails to compile here until it is placed (and, if it acts on an order, added to
/// `Action` and so to the table).
fn order_actions(cmd: &Command) -> &'static [Action] {
    match cmd {
        Command::PayOrder { .. } => &[Pay],
        Command::AdvanceOrder { .. } => &[Pick, Pack, Ship, Deliver, Complete],
        Command::CancelOrder { .. } => &[Cancel],
        Command::ReturnOrder { .. } | Command::ReturnOrderAs { .. } => &[Return],
        Command::RefundOrder { .. } => &[Refund],
        // Changes that keep the status: `engine/tests/order_changes.rs`.
        Command::HoldOrder { .. }
        | Command::ReleaseHold { .. }
        | Command::ModifyOrder { .. }
        | Command::RefundAmount { .. } => &[],
        Command::Expire => &[Expire],
        // Stock, holds, creating an order and settings: not actions on an order.
        Command::DefineSku { .. }
        | Command::AdjustStock { .. }
        | Command::Reserve { .. }
        | Command::CommitReservation { .. }
        | Command::ReleaseReservation { .. }
        | Command::CreateOrder { .. }
        | Command::PlaceOrder { .. }
        | Command::SetIdempotencyPolicy { .. }
        | Command::SetOrderPolicy { .. }
        | Command::SetRules { .. }
        | Command::DefineSkuSale { .. }
        | Command::ReserveFor { .. } => &[],
    }
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

use Action::*;
use OrderStatus as S;
use PaymentStatus as P;

/// SKU "A" after the action: (on_hand, reserved, units sold).
type Stock = (u64, u64, u64);

/// The order's hold is on the SKU.
const HELD: Stock = (ON_HAND, QTY, 0);
/// Nothing held, nothing sold: the units are back (or never left).
const FREE: Stock = (ON_HAND, 0, 0);
/// The order's units are committed: out of `on_hand`, counted as sold.
const SOLD: Stock = (ON_HAND - QTY, 0, QTY);

const NONE: &[&str] = &[];
const INVALID: Result<S, &str> = Err("invalid_transition");
const SHIPPED: Result<S, &str> = Err("order_shipped");

/// One row: from `status`, `action` gives `Ok(status afterwards)` or `Err(code)`, and
/// leaves the payment and the SKU as stated, having emitted exactly these events
/// (see [`describe`] for how an event is written).
type Row = (
    S,
    Action,
    Result<S, &'static str>,
    P,
    Stock,
    &'static [&'static str],
);

/// Every (status, action) pair; `every_pair_is_in_the_table` fails if one is missing
/// or listed twice. A refusal changes nothing (the state's digest is compared too).
#[rustfmt::skip]
const TABLE: &[Row] = &[
    // reserved: unpaid, the units held
    (S::Reserved, Pay, Ok(S::Confirmed), P::Paid, SOLD, &["reservation.committed", "order.paid 750", "order.status_changed reserved>confirmed"]),
    (S::Reserved, Pick, INVALID, P::Unpaid, HELD, NONE),
    (S::Reserved, Pack, INVALID, P::Unpaid, HELD, NONE),
    (S::Reserved, Ship, INVALID, P::Unpaid, HELD, NONE),
    (S::Reserved, Deliver, INVALID, P::Unpaid, HELD, NONE),
    (S::Reserved, Complete, INVALID, P::Unpaid, HELD, NONE),
    (S::Reserved, Cancel, Ok(S::Cancelled), P::Unpaid, FREE, &["reservation.released", "order.cancelled customer_request refund_due=false"]),
    (S::Reserved, Return, INVALID, P::Unpaid, HELD, NONE),
    (S::Reserved, Refund, INVALID, P::Unpaid, HELD, NONE),
    (S::Reserved, Expire, Ok(S::Expired), P::Unpaid, FREE, &["reservation.expired", "order.expired"]),
    // confirmed: paid, the units sold
    (S::Confirmed, Pay, Ok(S::Confirmed), P::Paid, SOLD, NONE), // a repeated payment
    (S::Confirmed, Pick, Ok(S::Picking), P::Paid, SOLD, &["order.status_changed confirmed>picking"]),
    (S::Confirmed, Pack, INVALID, P::Paid, SOLD, NONE),
    (S::Confirmed, Ship, INVALID, P::Paid, SOLD, NONE),
    (S::Confirmed, Deliver, INVALID, P::Paid, SOLD, NONE),
    (S::Confirmed, Complete, INVALID, P::Paid, SOLD, NONE),
    (S::Confirmed, Cancel, Ok(S::Cancelled), P::RefundDue, FREE, &["order.cancelled customer_request refund_due=true"]),
    (S::Confirmed, Return, INVALID, P::Paid, SOLD, NONE),
    (S::Confirmed, Refund, INVALID, P::Paid, SOLD, NONE),
    (S::Confirmed, Expire, Ok(S::Confirmed), P::Paid, SOLD, NONE),
    // picking
    (S::Picking, Pay, Ok(S::Picking), P::Paid, SOLD, NONE),
    (S::Picking, Pick, Ok(S::Picking), P::Paid, SOLD, NONE), // a repeated step
    (S::Picking, Pack, Ok(S::Packed), P::Paid, SOLD, &["order.status_changed picking>packed"]),
    (S::Picking, Ship, INVALID, P::Paid, SOLD, NONE),
    (S::Picking, Deliver, INVALID, P::Paid, SOLD, NONE),
    (S::Picking, Complete, INVALID, P::Paid, SOLD, NONE),
    (S::Picking, Cancel, Ok(S::Cancelled), P::RefundDue, FREE, &["order.cancelled customer_request refund_due=true"]),
    (S::Picking, Return, INVALID, P::Paid, SOLD, NONE),
    (S::Picking, Refund, INVALID, P::Paid, SOLD, NONE),
    (S::Picking, Expire, Ok(S::Picking), P::Paid, SOLD, NONE),
    // packed
    (S::Packed, Pay, Ok(S::Packed), P::Paid, SOLD, NONE),
    (S::Packed, Pick, INVALID, P::Paid, SOLD, NONE),
    (S::Packed, Pack, Ok(S::Packed), P::Paid, SOLD, NONE),
    (S::Packed, Ship, Ok(S::Shipped), P::Paid, SOLD, &["order.status_changed packed>shipped"]),
    (S::Packed, Deliver, INVALID, P::Paid, SOLD, NONE),
    (S::Packed, Complete, INVALID, P::Paid, SOLD, NONE),
    (S::Packed, Cancel, Ok(S::Cancelled), P::RefundDue, FREE, &["order.cancelled customer_request refund_due=true"]),
    (S::Packed, Return, INVALID, P::Paid, SOLD, NONE),
    (S::Packed, Refund, INVALID, P::Paid, SOLD, NONE),
    (S::Packed, Expire, Ok(S::Packed), P::Paid, SOLD, NONE),
    // shipped: returned, not cancelled. DESIGN.md and API.md v1.1 also allow a return
    // from shipped (intercepted, refused); the engine's ReturnOrder has no kind yet and
    // refuses it: this row states what the engine does today.
    (S::Shipped, Pay, Ok(S::Shipped), P::Paid, SOLD, NONE),
    (S::Shipped, Pick, INVALID, P::Paid, SOLD, NONE),
    (S::Shipped, Pack, INVALID, P::Paid, SOLD, NONE),
    (S::Shipped, Ship, Ok(S::Shipped), P::Paid, SOLD, NONE),
    (S::Shipped, Deliver, Ok(S::Delivered), P::Paid, SOLD, &["order.status_changed shipped>delivered"]),
    (S::Shipped, Complete, INVALID, P::Paid, SOLD, NONE),
    (S::Shipped, Cancel, SHIPPED, P::Paid, SOLD, NONE),
    (S::Shipped, Return, INVALID, P::Paid, SOLD, NONE),
    (S::Shipped, Refund, INVALID, P::Paid, SOLD, NONE),
    (S::Shipped, Expire, Ok(S::Shipped), P::Paid, SOLD, NONE),
    // delivered
    (S::Delivered, Pay, Ok(S::Delivered), P::Paid, SOLD, NONE),
    (S::Delivered, Pick, INVALID, P::Paid, SOLD, NONE),
    (S::Delivered, Pack, INVALID, P::Paid, SOLD, NONE),
    (S::Delivered, Ship, INVALID, P::Paid, SOLD, NONE),
    (S::Delivered, Deliver, Ok(S::Delivered), P::Paid, SOLD, NONE),
    (S::Delivered, Complete, Ok(S::Completed), P::Paid, SOLD, &["order.status_changed delivered>completed"]),
    (S::Delivered, Cancel, SHIPPED, P::Paid, SOLD, NONE),
    (S::Delivered, Return, Ok(S::Returned), P::RefundDue, FREE, &["order.returned restock=true"]),
    (S::Delivered, Refund, INVALID, P::Paid, SOLD, NONE),
    (S::Delivered, Expire, Ok(S::Delivered), P::Paid, SOLD, NONE),
    // completed: only a return moves it
    (S::Completed, Pay, Ok(S::Completed), P::Paid, SOLD, NONE),
    (S::Completed, Pick, INVALID, P::Paid, SOLD, NONE),
    (S::Completed, Pack, INVALID, P::Paid, SOLD, NONE),
    (S::Completed, Ship, INVALID, P::Paid, SOLD, NONE),
    (S::Completed, Deliver, INVALID, P::Paid, SOLD, NONE),
    (S::Completed, Complete, Ok(S::Completed), P::Paid, SOLD, NONE),
    (S::Completed, Cancel, SHIPPED, P::Paid, SOLD, NONE),
    (S::Completed, Return, Ok(S::Returned), P::RefundDue, FREE, &["order.returned restock=true"]),
    (S::Completed, Refund, INVALID, P::Paid, SOLD, NONE),
    (S::Completed, Expire, Ok(S::Completed), P::Paid, SOLD, NONE),
    // expired (unpaid, the hold released by the timer): terminal
    (S::Expired, Pay, INVALID, P::Unpaid, FREE, NONE),
    (S::Expired, Pick, INVALID, P::Unpaid, FREE, NONE),
    (S::Expired, Pack, INVALID, P::Unpaid, FREE, NONE),
    (S::Expired, Ship, INVALID, P::Unpaid, FREE, NONE),
    (S::Expired, Deliver, INVALID, P::Unpaid, FREE, NONE),
    (S::Expired, Complete, INVALID, P::Unpaid, FREE, NONE),
    (S::Expired, Cancel, INVALID, P::Unpaid, FREE, NONE),
    (S::Expired, Return, INVALID, P::Unpaid, FREE, NONE),
    (S::Expired, Refund, INVALID, P::Unpaid, FREE, NONE),
    (S::Expired, Expire, Ok(S::Expired), P::Unpaid, FREE, NONE),
    // cancelled (here: unpaid, cancelled while reserved): terminal, cancel idempotent
    (S::Cancelled, Pay, INVALID, P::Unpaid, FREE, NONE),
    (S::Cancelled, Pick, INVALID, P::Unpaid, FREE, NONE),
    (S::Cancelled, Pack, INVALID, P::Unpaid, FREE, NONE),
    (S::Cancelled, Ship, INVALID, P::Unpaid, FREE, NONE),
    (S::Cancelled, Deliver, INVALID, P::Unpaid, FREE, NONE),
    (S::Cancelled, Complete, INVALID, P::Unpaid, FREE, NONE),
    (S::Cancelled, Cancel, Ok(S::Cancelled), P::Unpaid, FREE, NONE),
    (S::Cancelled, Return, INVALID, P::Unpaid, FREE, NONE),
    (S::Cancelled, Refund, INVALID, P::Unpaid, FREE, NONE),
    (S::Cancelled, Expire, Ok(S::Cancelled), P::Unpaid, FREE, NONE),
    // returned (from completed, restocked, refund due): only the refund is left
    (S::Returned, Pay, INVALID, P::RefundDue, FREE, NONE),
    (S::Returned, Pick, INVALID, P::RefundDue, FREE, NONE),
    (S::Returned, Pack, INVALID, P::RefundDue, FREE, NONE),
    (S::Returned, Ship, INVALID, P::RefundDue, FREE, NONE),
    (S::Returned, Deliver, INVALID, P::RefundDue, FREE, NONE),
    (S::Returned, Complete, INVALID, P::RefundDue, FREE, NONE),
    (S::Returned, Cancel, SHIPPED, P::RefundDue, FREE, NONE),
    (S::Returned, Return, Ok(S::Returned), P::RefundDue, FREE, NONE), // twice: idempotent
    (S::Returned, Refund, Ok(S::Returned), P::Refunded, FREE, &["order.refunded 750"]),
    (S::Returned, Expire, Ok(S::Returned), P::RefundDue, FREE, NONE),
];

/// An event as the table writes it: its type and the payload fields that matter
/// here. Every order event must name the order under test.
fn describe(event: &Event, order: OrderId) -> String {
    let of = |id: OrderId| assert_eq!(id, order, "{event:?} names another order");
    let ty = event.kind.type_name();
    match &event.kind {
        EventKind::OrderPaidV3 { id, amount } | EventKind::OrderRefunded { id, amount } => {
            of(*id);
            format!("{ty} {amount}")
        }
        EventKind::OrderStatusChanged { id, from, to } => {
            of(*id);
            format!("{ty} {from}>{to}")
        }
        EventKind::OrderCancelledV3 {
            id,
            reason,
            refund_due,
            ..
        } => {
            of(*id);
            format!("{ty} {reason} refund_due={refund_due}")
        }
        EventKind::OrderReturnedV3 { id, restock } => {
            of(*id);
            format!("{ty} restock={restock}")
        }
        EventKind::OrderExpired { id } | EventKind::OrderCreatedV3 { id, .. } => {
            of(*id);
            ty.to_string()
        }
        _ => ty.to_string(),
    }
}

/// Run one row from a fresh state and compare everything it states.
fn check_row(&(from, act, expected, payment, stock, events): &Row) {
    let pair = format!("{from} + {act:?}");
    let mut w = World::new();
    let id = w.order_in(from);
    if matches!(act, Action::Expire) {
        w.now_ms += TTL_MS;
    }
    let before_digest = w.state.digest();
    let before_events = w.events.len();
    let got = w.run(action(id, act));
    let emitted: Vec<String> = w.events[before_events..]
        .iter()
        .map(|e| describe(e, id))
        .collect();
    match (&got, expected) {
        (Ok(Reply::Order(view)), Ok(to)) => {
            assert_eq!(view.status, to, "{pair}: the answer's status");
            assert_eq!(view.payment.status, payment, "{pair}: the answer's payment");
        }
        (Ok(Reply::Expired { .. }), Ok(_)) => {}
        (Ok(other), Ok(_)) => panic!("{pair}: unexpected answer {other:?}"),
        (Err(code), Err(want)) => {
            assert_eq!(code, want, "{pair}: refusal code");
            assert_eq!(
                w.state.digest(),
                before_digest,
                "{pair}: a refusal changed the state"
            );
        }
        (got, want) => panic!("{pair}: got {got:?}, the table says {want:?}"),
    }
    let status_after = expected.unwrap_or(from);
    assert_eq!(
        w.order(id),
        (status_after, payment),
        "{pair}: (status, payment) afterwards"
    );
    assert_eq!(
        w.stock(),
        stock,
        "{pair}: (on_hand, reserved, sold) afterwards"
    );
    assert_eq!(emitted, events, "{pair}: events emitted");
    w.state.check_invariants();
}

#[test]
fn every_pair_is_in_the_table() {
    let mut missing = Vec::new();
    for &status in OrderStatus::ALL {
        for &act in Action::ALL {
            match TABLE.iter().filter(|r| r.0 == status && r.1 == act).count() {
                1 => {}
                n => missing.push(format!("{status} + {act:?}: {n} rows")),
            }
        }
    }
    assert!(missing.is_empty(), "want one row per pair: {missing:#?}");
    assert_eq!(TABLE.len(), OrderStatus::ALL.len() * Action::ALL.len());
    // Every command that acts on an existing order is one of the table's actions.
    for &act in Action::ALL {
        assert!(order_actions(&action(OrderId(1), act)).contains(&act));
    }
}

#[test]
fn the_table_holds() {
    for row in TABLE {
        check_row(row);
    }
}

/// `AdvanceOrder` to a status that is not a fulfilment step is refused whatever the
/// order's status, and changes nothing.
#[test]
fn advance_to_a_status_off_the_fulfilment_path_is_refused() {
    for &from in OrderStatus::ALL {
        for to in [
            S::Reserved,
            S::Confirmed,
            S::Expired,
            S::Cancelled,
            S::Returned,
        ] {
            let mut w = World::new();
            let id = w.order_in(from);
            let digest = w.state.digest();
            assert_eq!(
                w.run(advance(id, to)).unwrap_err(),
                "validation_failed",
                "{from} -> {to}"
            );
            assert_eq!(w.state.digest(), digest, "{from} -> {to}");
        }
    }
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
    assert_eq!(w.stock(), (10, 8, 0));
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
    // Repeating it succeeds too.
    for _ in 0..2 {
        w.ok(Command::CommitReservation {
            id: r1,
            actor: "s".into(),
        });
    }
    assert_eq!(
        w.run(Command::ReleaseReservation {
            id: r1,
            actor: "s".into()
        })
        .unwrap_err(),
        "invalid_transition"
    );
    // Repeating it succeeds too.
    for _ in 0..2 {
        w.ok(Command::ReleaseReservation {
            id: r2,
            actor: "s".into(),
        });
    }
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
    assert_eq!(w.stock(), (6, 0, 4));
}
