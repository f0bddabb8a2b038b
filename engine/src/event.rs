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
    OrderCreated {
        id: OrderId,
        order: OrderBrief,
        total: u64,
    },
    OrderPaid {
        id: OrderId,
        order: OrderBrief,
        amount: u64,
        payment_ref: Box<str>,
    },
    OrderCancelled {
        id: OrderId,
        order: OrderBrief,
        reason: CancelReason,
        note: Box<str>,
        actor: Arc<str>,
        refund_due_amount: u64,
        /// Units given back to available, per SKU.
        restocked: Vec<(SkuIdx, u64)>,
    },
    OrderReturned {
        id: OrderId,
        order: OrderBrief,
        kind: ReturnKind,
        restock: bool,
        reason: Box<str>,
        note: Box<str>,
        actor: Arc<str>,
        refund_due_amount: u64,
        restocked: Vec<(SkuIdx, u64)>,
    },
    /// Lines, address or note changed (a partial cancel when lines went down).
    OrderModified {
        id: OrderId,
        order: OrderBrief,
        before: Vec<EventLine>,
        reason: Option<CancelReason>,
        actor: Arc<str>,
        /// Positive: taken from available; negative: given back.
        stock_delta: Vec<(SkuIdx, i64)>,
        total: u64,
        refund_due_added: u64,
    },
    OrderHeld {
        id: OrderId,
        order_no: Arc<str>,
        reason: HoldReason,
        note: Box<str>,
        actor: Arc<str>,
    },
    OrderHoldReleased {
        id: OrderId,
        order_no: Arc<str>,
        note: Box<str>,
        actor: Arc<str>,
    },
    /// Paid and not shipped within the ship SLA.
    OrderDelayed {
        id: OrderId,
        order_no: Arc<str>,
        customer_id: Arc<str>,
        paid_at_ms: Millis,
        delayed_since_ms: Millis,
    },
    /// Units came back to available (one per SKU per command).
    StockRestored {
        sku: SkuIdx,
        qty: u64,
        available: u64,
    },
    /// A refund paid back (v1.1: with its reference and what is still due).
    OrderRefundedAmount {
        id: OrderId,
        order_no: Arc<str>,
        amount: u64,
        reason: Box<str>,
        refund_ref: Box<str>,
        actor: Arc<str>,
        refunded_amount: u64,
        refund_due_amount: u64,
    },
}

/// Who an order event is about, so that downstream need not call back.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderBrief {
    pub order_no: Arc<str>,
    pub customer_id: Arc<str>,
    pub channel: Arc<str>,
    /// The order's lines after the command.
    pub lines: Vec<EventLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct EventLine {
    pub sku: SkuIdx,
    pub qty: u64,
    pub unit_price: u64,
}

impl EventKind {
    /// The event type of the HTTP contract.
    pub fn type_name(&self) -> &'static str {
        match self {
            EventKind::SkuDefined { .. } => "sku.defined",
            EventKind::StockAdjusted { .. } => "stock.adjusted",
            EventKind::StockLow { .. } => "stock.low",
            EventKind::StockOut { .. } => "stock.out",
            EventKind::ReservationHeld { .. } => "reservation.held",
            EventKind::ReservationCommitted { .. } => "reservation.committed",
            EventKind::ReservationReleased { .. } => "reservation.released",
            EventKind::ReservationExpired { .. } => "reservation.expired",
            EventKind::OrderCreated { .. } | EventKind::OrderCreatedV3 { .. } => "order.created",
            EventKind::OrderPaid { .. } | EventKind::OrderPaidV3 { .. } => "order.paid",
            EventKind::OrderStatusChanged { .. } => "order.status_changed",
            EventKind::OrderCancelled { .. } | EventKind::OrderCancelledV3 { .. } => {
                "order.cancelled"
            }
            EventKind::OrderExpired { .. } => "order.expired",
            EventKind::OrderReturned { .. } | EventKind::OrderReturnedV3 { .. } => "order.returned",
            EventKind::OrderRefunded { .. } | EventKind::OrderRefundedAmount { .. } => {
                "order.refunded"
            }
            EventKind::OrderModified { .. } => "order.modified",
            EventKind::OrderHeld { .. } => "order.held",
            EventKind::OrderHoldReleased { .. } => "order.hold_released",
            EventKind::OrderDelayed { .. } => "order.delayed",
            EventKind::StockRestored { .. } => "stock.restored",
        }
    }
}
