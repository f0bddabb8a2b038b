//! Encodings that older snapshot formats stored and this build still reads, with
//! their conversion to today's types. Nothing here is written any more (tests aside).

use bincode::{Decode, Encode};

use crate::command::{Field, Outcome, Rejection, Reply, Shortage, Violation};
use crate::domain::{OrderId, OrderStatus, ReservationId};

/// [`Rejection`] as snapshot formats 1 and 2 stored it (idempotency answers): a
/// validation refusal carried its field as a JSON path and its reason as a sentence.
/// The variant order is that format's and must not change.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum RejectionV2 {
    Validation { field: String, detail: String },
    InsufficientStock { lines: Vec<Shortage> },
    UnknownSku { sku: String },
    UnknownOrder { order: String },
    UnknownReservation { id: ReservationId },
    InvalidTransition { detail: String },
    OrderShipped { id: OrderId, status: OrderStatus },
    DuplicateOrderNo { order_no: String, id: OrderId },
    IdempotencyConflict { key: String },
    LimitReached { what: String },
}

/// An outcome as snapshot formats 1 and 2 stored it.
pub(crate) type OutcomeV2 = Result<Reply, RejectionV2>;

impl From<RejectionV2> for Rejection {
    /// The text of an old validation refusal is kept as it was written (the API shows
    /// it verbatim, so a replayed answer reads as the first one did).
    fn from(old: RejectionV2) -> Rejection {
        match old {
            RejectionV2::Validation { field, detail } => Rejection::Validation {
                field: Field::Legacy(field),
                violation: Violation::Legacy(detail),
            },
            RejectionV2::InsufficientStock { lines } => Rejection::InsufficientStock { lines },
            RejectionV2::UnknownSku { sku } => Rejection::UnknownSku { sku },
            RejectionV2::UnknownOrder { order } => Rejection::UnknownOrder { order },
            RejectionV2::UnknownReservation { id } => Rejection::UnknownReservation { id },
            RejectionV2::InvalidTransition { detail } => Rejection::InvalidTransition { detail },
            RejectionV2::OrderShipped { id, status } => Rejection::OrderShipped { id, status },
            RejectionV2::DuplicateOrderNo { order_no, id } => {
                Rejection::DuplicateOrderNo { order_no, id }
            }
            RejectionV2::IdempotencyConflict { key } => Rejection::IdempotencyConflict { key },
            RejectionV2::LimitReached { what } => Rejection::LimitReached { what },
        }
    }
}

pub(crate) fn upgrade_outcome(old: OutcomeV2) -> Outcome {
    old.map(upgrade_reply).map_err(Rejection::from)
}

/// [`crate::command::PaymentView`] as snapshot format 3 stored it (in a stored
/// order answer), before the payment had amounts.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PaymentViewV3 {
    pub status: crate::domain::PaymentStatus,
    pub amount: u64,
    pub payment_ref: String,
    pub paid_at_ms: Option<crate::domain::Millis>,
    pub refund_ref: String,
    pub due_at_ms: crate::domain::Millis,
}

/// [`crate::command::OrderView`] as snapshot format 3 stored it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderViewV3 {
    pub id: OrderId,
    pub order_no: std::sync::Arc<str>,
    pub customer_id: std::sync::Arc<str>,
    pub status: OrderStatus,
    pub lines: Vec<crate::command::OrderLineView>,
    pub total: u64,
    pub payment: PaymentViewV3,
    pub reservation_id: ReservationId,
    pub created_at_ms: crate::domain::Millis,
    pub updated_at_ms: crate::domain::Millis,
    pub tracking_no: String,
    pub history: Vec<crate::command::HistoryView>,
    pub cancellation: Option<crate::command::CancellationView>,
    pub returned: Option<crate::command::ReturnView>,
}

/// The amounts a format-3 order had: before v1.1 a payment was the whole total,
/// and a refund (or the refund due after a cancel or return) was all of it.
pub(crate) fn amounts_of_v3(
    status: crate::domain::PaymentStatus,
    total: u64,
) -> crate::state::Amounts {
    use crate::domain::PaymentStatus as P;
    let (paid, refunded, refund_due) = match status {
        P::Unpaid => (0, 0, 0),
        P::Paid => (total, 0, 0),
        P::RefundDue => (total, 0, total),
        P::Refunded | P::PartiallyRefunded => (total, total, 0),
    };
    crate::state::Amounts {
        paid,
        refunded,
        refund_due,
    }
}

impl From<OrderViewV3> for crate::command::OrderView {
    fn from(v: OrderViewV3) -> crate::command::OrderView {
        let amounts = amounts_of_v3(v.payment.status, v.total);
        crate::command::OrderView {
            id: v.id,
            order_no: v.order_no,
            customer_id: v.customer_id,
            status: v.status,
            lines: v.lines.into(),
            total: v.total,
            payment: crate::command::PaymentView {
                status: v.payment.status,
                amount: v.payment.amount,
                payment_ref: v.payment.payment_ref,
                paid_at_ms: v.payment.paid_at_ms,
                refund_ref: v.payment.refund_ref,
                due_at_ms: v.payment.due_at_ms,
                paid_amount: amounts.paid,
                refunded_amount: amounts.refunded,
                refund_due_amount: amounts.refund_due,
            },
            reservation_id: v.reservation_id,
            created_at_ms: v.created_at_ms,
            updated_at_ms: v.updated_at_ms,
            tracking_no: v.tracking_no,
            history: v.history.into(),
            cancellation: v.cancellation,
            return_kind: v
                .returned
                .as_ref()
                .map(|_| crate::domain::ReturnKind::CustomerReturn),
            returned: v.returned.map(Box::new),
            channel: String::new(),
            shipping_address: None,
            note: String::new(),
            hold: None,
            delayed_since_ms: None,
        }
    }
}

/// Today's reply for a reply a format-3 snapshot stored.
pub(crate) fn upgrade_reply(reply: crate::command::Reply) -> crate::command::Reply {
    match reply {
        crate::command::Reply::OrderV3(v) => crate::command::Reply::Order(Box::new((*v).into())),
        crate::command::Reply::SkuV4(v) => crate::command::Reply::Sku(v.into()),
        other => other,
    }
}

/// A SKU's view as snapshot formats 1 to 4 stored it: before sale rules.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SkuViewV4 {
    pub sku: std::sync::Arc<str>,
    pub name: std::sync::Arc<str>,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    pub low_stock_threshold: u64,
}

impl From<SkuViewV4> for crate::command::SkuView {
    fn from(v: SkuViewV4) -> Self {
        crate::command::SkuView {
            sku: v.sku,
            name: v.name,
            on_hand: v.on_hand,
            reserved: v.reserved,
            available: v.available,
            low_stock_threshold: v.low_stock_threshold,
            // No rules existed when it was stored.
            sale: crate::command::SaleRules::default(),
        }
    }
}

/// An order as snapshot formats 1 to 3 stored it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct OrderV3 {
    pub id: OrderId,
    pub order_no: std::sync::Arc<str>,
    pub customer_id: std::sync::Arc<str>,
    pub lines: Box<[crate::domain::OrderLine]>,
    pub total: u64,
    pub reservation: ReservationId,
    pub status: OrderStatus,
    pub payment: crate::domain::PaymentStatus,
    pub created_at_ms: crate::domain::Millis,
    pub updated_at_ms: crate::domain::Millis,
    pub payment_due_at_ms: crate::domain::Millis,
    pub history: Vec<HistoryEntryV3>,
    pub extra: Option<Box<OrderExtraV3>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct HistoryEntryV3 {
    pub status: OrderStatus,
    pub at_ms: crate::domain::Millis,
    pub actor: u32,
    pub note: Box<str>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub(crate) struct OrderExtraV3 {
    pub payment_ref: Box<str>,
    pub paid_at_ms: Option<crate::domain::Millis>,
    pub refund_ref: Box<str>,
    pub tracking_no: Box<str>,
    pub cancellation: Option<crate::state::Cancellation>,
    pub returned: Option<crate::state::ReturnInfo>,
}

/// The idempotency part of snapshot formats 2 and 3: entries without their LSN.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct IndexSnapshotV3 {
    pub policy: crate::idempotency::IdempotencyPolicy,
    pub first_seq: u64,
    pub room_made_through_ms: Option<crate::domain::Millis>,
    pub entries: Vec<EntryV3>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct EntryV3 {
    pub key: crate::idempotency::KeyHash,
    pub fingerprint: u64,
    pub at_ms: crate::domain::Millis,
    pub answer: crate::idempotency::Answer,
}

impl From<OrderV3> for crate::state::Order {
    fn from(o: OrderV3) -> crate::state::Order {
        let amounts = amounts_of_v3(o.payment, o.total);
        let extra = match o.extra {
            Some(e) => Some(Box::new(crate::state::OrderExtra {
                payment_ref: e.payment_ref,
                paid_at_ms: e.paid_at_ms,
                refund_ref: e.refund_ref,
                tracking_no: e.tracking_no,
                cancellation: e.cancellation,
                returned: e.returned,
                amounts,
                ..Default::default()
            })),
            None if amounts != crate::state::Amounts::default() => {
                Some(Box::new(crate::state::OrderExtra {
                    amounts,
                    ..Default::default()
                }))
            }
            None => None,
        };
        crate::state::Order {
            id: o.id,
            order_no: o.order_no,
            customer_id: o.customer_id,
            lines: o.lines.into(),
            total: o.total,
            reservation: o.reservation,
            status: o.status,
            payment: o.payment,
            created_at_ms: o.created_at_ms,
            updated_at_ms: o.updated_at_ms,
            payment_due_at_ms: o.payment_due_at_ms,
            history: o
                .history
                .into_iter()
                .map(|h| crate::state::HistoryEntry {
                    status: h.status,
                    at_ms: h.at_ms,
                    actor: h.actor,
                    note: h.note,
                    before: None,
                })
                .collect(),
            extra,
        }
    }
}

/// The ledger a format-3 state implies: each payment a charge; each refund due a
/// reversal (at the cancel or return); each refund a refund (at the last change).
/// Numbered 0: the records that made them are older than the ledger.
fn ledger_of_v3(orders: &[crate::state::Order]) -> Vec<crate::state::LedgerEntry> {
    use crate::domain::LedgerKind;
    let mut ledger = Vec::new();
    for o in orders {
        let Some(extra) = o.extra.as_deref() else {
            continue;
        };
        let amounts = extra.amounts;
        if amounts.paid == 0 {
            continue;
        }
        let paid_at_ms = extra.paid_at_ms.unwrap_or(o.created_at_ms);
        let paid_by = o
            .history
            .iter()
            .find(|h| h.status == OrderStatus::Confirmed)
            .map_or(0, |h| h.actor);
        let entry = |kind, at_ms, amount, reference: &str, actor| crate::state::LedgerEntry {
            seq: 0,
            at_ms,
            order: o.id,
            kind,
            amount,
            reference: reference.into(),
            actor,
        };
        ledger.push(entry(
            LedgerKind::Charge,
            paid_at_ms,
            amounts.paid,
            &extra.payment_ref,
            paid_by,
        ));
        if amounts.refund_due > 0 || amounts.refunded > 0 {
            let reversed = o
                .history
                .iter()
                .find(|h| matches!(h.status, OrderStatus::Cancelled | OrderStatus::Returned));
            let (at_ms, actor) = reversed.map_or((paid_at_ms, 0), |h| (h.at_ms, h.actor));
            ledger.push(entry(LedgerKind::Reversal, at_ms, amounts.paid, "", actor));
        }
        if amounts.refunded > 0 {
            let last = o.history.last().expect("an order has history");
            ledger.push(entry(
                LedgerKind::Refund,
                last.at_ms,
                amounts.refunded,
                &extra.refund_ref,
                last.actor,
            ));
        }
    }
    // The ledger is in time order (reads bound their scan by it).
    ledger.sort_by_key(|e| e.at_ms);
    ledger
}

/// A format-3 snapshot in today's layout.
pub(crate) fn upgrade_snapshot_v3(
    s: crate::state::SnapshotV3,
    format: u32,
) -> crate::state::Snapshot {
    let orders: Vec<crate::state::Order> = s.orders.into_iter().map(Into::into).collect();
    let ledger = ledger_of_v3(&orders);
    crate::state::Snapshot {
        format,
        now_ms: s.now_ms,
        next_seq: s.next_seq,
        skus: s.skus,
        reservations: s.reservations,
        next_reservation_id: s.next_reservation_id,
        reservations_base: s.reservations_base,
        orders,
        actors: s.actors,
        idempotency: crate::idempotency::IndexSnapshot {
            policy: s.idempotency.policy,
            first_seq: s.idempotency.first_seq,
            room_made_through_ms: s.idempotency.room_made_through_ms,
            entries: s
                .idempotency
                .entries
                .into_iter()
                .map(|e| crate::idempotency::Entry {
                    key: e.key,
                    fingerprint: e.fingerprint,
                    at_ms: e.at_ms,
                    lsn: 0,
                    answer: e.answer,
                })
                .collect(),
        },
        counters: s.counters,
        tail: crate::state::SnapshotTail {
            ledger,
            order_policy: crate::command::OrderPolicy::INITIAL,
            rules: crate::state::RULES_V1,
            sales: crate::sale::SalesSnapshot::default(),
        },
    }
}

/// A state in the layout of formats 1 to 3 (tests write old snapshots with it):
/// orders lose what v1.1 added, and the tail goes.
#[cfg(test)]
pub(crate) fn downgrade_to_v3<K, L>(
    s: crate::state::Snapshot<K>,
    index: impl FnOnce(K) -> L,
) -> crate::state::Snapshot<L, OrderV3, ()> {
    let orders = s
        .orders
        .into_iter()
        .map(|o| OrderV3 {
            id: o.id,
            order_no: o.order_no,
            customer_id: o.customer_id,
            lines: o.lines.iter().cloned().collect(),
            total: o.total,
            reservation: o.reservation,
            status: o.status,
            payment: o.payment,
            created_at_ms: o.created_at_ms,
            updated_at_ms: o.updated_at_ms,
            payment_due_at_ms: o.payment_due_at_ms,
            history: o
                .history
                .into_iter()
                .map(|h| HistoryEntryV3 {
                    status: h.status,
                    at_ms: h.at_ms,
                    actor: h.actor,
                    note: h.note,
                })
                .collect(),
            extra: o.extra.map(|e| {
                Box::new(OrderExtraV3 {
                    payment_ref: e.payment_ref,
                    paid_at_ms: e.paid_at_ms,
                    refund_ref: e.refund_ref,
                    tracking_no: e.tracking_no,
                    cancellation: e.cancellation,
                    returned: e.returned,
                })
            }),
        })
        .collect();
    crate::state::Snapshot {
        format: s.format,
        now_ms: s.now_ms,
        next_seq: s.next_seq,
        skus: s.skus,
        reservations: s.reservations,
        next_reservation_id: s.next_reservation_id,
        reservations_base: s.reservations_base,
        orders,
        actors: s.actors,
        idempotency: index(s.idempotency),
        counters: s.counters,
        tail: (),
    }
}

/// The idempotency part in the layout of formats 2 and 3 (no LSNs).
#[cfg(test)]
pub(crate) fn downgrade_index(i: crate::idempotency::IndexSnapshot) -> IndexSnapshotV3 {
    IndexSnapshotV3 {
        policy: i.policy,
        first_seq: i.first_seq,
        room_made_through_ms: i.room_made_through_ms,
        entries: i
            .entries
            .into_iter()
            .map(|e| EntryV3 {
                key: e.key,
                fingerprint: e.fingerprint,
                at_ms: e.at_ms,
                answer: e.answer,
            })
            .collect(),
    }
}
