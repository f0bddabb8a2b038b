//! Events: what downstream systems are told. Every mutation emits at least one.
//!
//! An event's `seq` is its WAL position: the record's LSN plus its index within the
//! record. Replay regenerates the same events with the same numbers.

use std::sync::Arc;

use bincode::{Decode, Encode};

use crate::domain::{
    AdjustReason, CancelReason, HoldReason, Millis, OrderId, OrderStatus, ReservationId,
    ReturnKind, SkuIdx,
};

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Event {
    pub seq: u64,
    pub at_ms: Millis,
    pub kind: EventKind,
}

/// SKUs are named by their dense index; [`crate::EventLog`] resolves the names.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum EventKind {
    SkuDefined {
        sku: SkuIdx,
        on_hand: u64,
        low_stock_threshold: u64,
    },
    StockAdjusted {
        sku: SkuIdx,
        delta: i64,
        reason: AdjustReason,
        on_hand: u64,
        available: u64,
    },
    /// `available` fell to or below the threshold (and is above zero).
    StockLow {
        sku: SkuIdx,
        available: u64,
        threshold: u64,
    },
    /// `available` reached zero.
    StockOut {
        sku: SkuIdx,
    },
    ReservationHeld {
        id: ReservationId,
        lines: Vec<(SkuIdx, u64)>,
        expires_at_ms: Millis,
    },
    ReservationCommitted {
        id: ReservationId,
    },
    ReservationReleased {
        id: ReservationId,
    },
    ReservationExpired {
        id: ReservationId,
    },
    /// The thin payload of events written before v1.1 (kept in snapshots' rings).
    OrderCreatedV3 {
        id: OrderId,
        order_no: Arc<str>,
        customer_id: Arc<str>,
        total: u64,
    },
    /// The thin payload of events written before v1.1 (kept in snapshots' rings).
    OrderPaidV3 {
        id: OrderId,
        amount: u64,
    },
    OrderStatusChanged {
        id: OrderId,
        from: OrderStatus,
        to: OrderStatus,
    },
    /// The thin payload of events written before v1.1 (kept in snapshots' rings).
    OrderCancelledV3 {
        id: OrderId,
        reason: CancelReason,
        actor: Arc<str>,
        refund_due: bool,
    },
    OrderExpired {
        id: OrderId,
    },
    /// The thin payload of events written before v1.1 (kept in snapshots' rings).
    OrderReturnedV3 {
        id: OrderId,
        restock: bool,
    },
    OrderRefunded {
        id: OrderId,
        amount: u64,
    },
    OrderCreated(Box<OrderCreated>),
    OrderPaid(Box<OrderPaid>),
    OrderCancelled(Box<OrderCancelled>),
    OrderReturned(Box<OrderReturned>),
    /// Lines, address or note changed (a partial cancel when lines went down).
    OrderModified(Box<OrderModified>),
    OrderHeld(Box<OrderHeld>),
    OrderHoldReleased(Box<OrderHoldReleased>),
    /// Paid and not shipped within the ship SLA.
    OrderDelayed(Box<OrderDelayed>),
    /// Units came back to available (one per SKU per command).
    StockRestored {
        sku: SkuIdx,
        qty: u64,
        available: u64,
    },
    /// A refund paid back (v1.1: with its reference and what is still due).
    OrderRefundedAmount(Box<OrderRefunded>),
    // The v1.2 rules' payloads (`RULES_V12`), last so that the variants before them
    // keep their numbers in the snapshots' rings; the thin ones above stay for the
    // records logged under the earlier rules, which replay as they were.
    /// A status change with who it is about and who made it, and from shipment on
    /// the tracking number: fulfilment acts on it without calling back.
    OrderStatusChangedFull(Box<OrderStatusChanged>),
    /// An unpaid order expired, with who it was about.
    OrderExpiredFull(Box<OrderExpired>),
    /// A stock adjustment with its note and who made it.
    StockAdjustedBy(Box<StockAdjusted>),
    /// A modification with the order's shipping address and note after it (an
    /// address-only change told nothing of the new address).
    OrderModifiedFull(Box<OrderModifiedFull>),
    // The v1.4 rules' payloads (`RULES_V14`), last for the same reason.
    /// An order's creation with who created it (a named token's `role:name`).
    OrderCreatedBy(Box<OrderCreatedBy>),
    /// A payment with who recorded it.
    OrderPaidBy(Box<OrderPaidBy>),
}

// The v1.1 payloads are boxed: an `EventKind` stays as small as the v1 ones (the
// feed keeps a million of them, and every command moves a few).

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderCreated {
    pub id: OrderId,
    pub order: OrderBrief,
    pub total: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderStatusChanged {
    pub id: OrderId,
    pub order: OrderBrief,
    pub from: OrderStatus,
    pub to: OrderStatus,
    /// The step's note (empty for a payment's confirmation).
    pub note: Box<str>,
    /// The order's tracking number (empty until it is shipped with one).
    pub tracking_no: Box<str>,
    pub actor: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderExpired {
    pub id: OrderId,
    pub order: OrderBrief,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct StockAdjusted {
    pub sku: SkuIdx,
    pub delta: i64,
    pub reason: AdjustReason,
    pub on_hand: u64,
    pub available: u64,
    pub note: Box<str>,
    pub actor: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderPaid {
    pub id: OrderId,
    pub order: OrderBrief,
    pub amount: u64,
    pub payment_ref: Box<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderCancelled {
    pub id: OrderId,
    pub order: OrderBrief,
    pub reason: CancelReason,
    pub note: Box<str>,
    pub actor: Arc<str>,
    pub refund_due_amount: u64,
    /// Units given back to available, per SKU.
    pub restocked: Vec<(SkuIdx, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderReturned {
    pub id: OrderId,
    pub order: OrderBrief,
    pub kind: ReturnKind,
    pub restock: bool,
    pub reason: Box<str>,
    pub note: Box<str>,
    pub actor: Arc<str>,
    pub refund_due_amount: u64,
    pub restocked: Vec<(SkuIdx, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderModified {
    pub id: OrderId,
    pub order: OrderBrief,
    pub before: Arc<[EventLine]>,
    pub reason: Option<CancelReason>,
    pub actor: Arc<str>,
    /// Positive: taken from available; negative: given back.
    pub stock_delta: Vec<(SkuIdx, i64)>,
    pub total: u64,
    pub refund_due_added: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderModifiedFull {
    pub modified: OrderModified,
    /// The order's shipping address after the change.
    pub shipping_address: Option<crate::command::Address>,
    /// The order's note after the change.
    pub note: Box<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderCreatedBy {
    pub created: OrderCreated,
    pub actor: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderPaidBy {
    pub paid: OrderPaid,
    pub actor: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderHeld {
    pub id: OrderId,
    pub order_no: Arc<str>,
    pub reason: HoldReason,
    pub note: Box<str>,
    pub actor: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderHoldReleased {
    pub id: OrderId,
    pub order_no: Arc<str>,
    pub note: Box<str>,
    pub actor: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderDelayed {
    pub id: OrderId,
    pub order_no: Arc<str>,
    pub customer_id: Arc<str>,
    pub paid_at_ms: Millis,
    pub delayed_since_ms: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderRefunded {
    pub id: OrderId,
    pub order_no: Arc<str>,
    pub amount: u64,
    pub reason: Box<str>,
    pub refund_ref: Box<str>,
    pub actor: Arc<str>,
    pub refunded_amount: u64,
    pub refund_due_amount: u64,
}

/// Who an order event is about, so that downstream need not call back.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderBrief {
    pub order_no: Arc<str>,
    pub customer_id: Arc<str>,
    pub channel: Arc<str>,
    /// The order's lines after the command (shared with the order).
    pub lines: Arc<[EventLine]>,
}

/// An order line in an event.
pub type EventLine = crate::domain::OrderLine;

impl EventKind {
    /// The event type of the HTTP contract.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::SkuDefined { .. } => "sku.defined",
            EventKind::StockAdjusted { .. } | EventKind::StockAdjustedBy(_) => "stock.adjusted",
            EventKind::StockLow { .. } => "stock.low",
            EventKind::StockOut { .. } => "stock.out",
            EventKind::ReservationHeld { .. } => "reservation.held",
            EventKind::ReservationCommitted { .. } => "reservation.committed",
            EventKind::ReservationReleased { .. } => "reservation.released",
            EventKind::ReservationExpired { .. } => "reservation.expired",
            EventKind::OrderCreated(_)
            | EventKind::OrderCreatedV3 { .. }
            | EventKind::OrderCreatedBy(_) => "order.created",
            EventKind::OrderPaid(_) | EventKind::OrderPaidV3 { .. } | EventKind::OrderPaidBy(_) => {
                "order.paid"
            }
            EventKind::OrderStatusChanged { .. } | EventKind::OrderStatusChangedFull(_) => {
                "order.status_changed"
            }
            EventKind::OrderCancelled(_) | EventKind::OrderCancelledV3 { .. } => "order.cancelled",
            EventKind::OrderExpired { .. } | EventKind::OrderExpiredFull(_) => "order.expired",
            EventKind::OrderReturned(_) | EventKind::OrderReturnedV3 { .. } => "order.returned",
            EventKind::OrderRefunded { .. } | EventKind::OrderRefundedAmount(_) => "order.refunded",
            EventKind::OrderModified(_) | EventKind::OrderModifiedFull(_) => "order.modified",
            EventKind::OrderHeld(_) => "order.held",
            EventKind::OrderHoldReleased(_) => "order.hold_released",
            EventKind::OrderDelayed(_) => "order.delayed",
            EventKind::StockRestored { .. } => "stock.restored",
        }
    }
}

// An event is no larger than the v1 ones: the feed keeps a million.
const _: () = assert!(std::mem::size_of::<EventKind>() <= 56);
