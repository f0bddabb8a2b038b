//! Events: what downstream systems are told. Every mutation emits at least one.
//!
//! An event's `seq` is its WAL position: the record's LSN plus its index within the
//! record. Replay regenerates the same events with the same numbers.

use std::sync::Arc;

use bincode::{Decode, Encode};

use crate::domain::{
    AdjustReason, CancelReason, Millis, OrderId, OrderStatus, ReservationId, SkuIdx,
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
    OrderCreated {
        id: OrderId,
        order_no: Arc<str>,
        customer_id: Arc<str>,
        total: u64,
    },
    OrderPaid {
        id: OrderId,
        amount: u64,
    },
    OrderStatusChanged {
        id: OrderId,
        from: OrderStatus,
        to: OrderStatus,
    },
    OrderCancelled {
        id: OrderId,
        reason: CancelReason,
        actor: Arc<str>,
        refund_due: bool,
    },
    OrderExpired {
        id: OrderId,
    },
    OrderReturned {
        id: OrderId,
        restock: bool,
    },
    OrderRefunded {
        id: OrderId,
        amount: u64,
    },
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
            EventKind::OrderCreated { .. } => "order.created",
            EventKind::OrderPaid { .. } => "order.paid",
            EventKind::OrderStatusChanged { .. } => "order.status_changed",
            EventKind::OrderCancelled { .. } => "order.cancelled",
            EventKind::OrderExpired { .. } => "order.expired",
            EventKind::OrderReturned { .. } => "order.returned",
            EventKind::OrderRefunded { .. } => "order.refunded",
        }
    }
}
