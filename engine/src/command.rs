//! Commands in (one closed enum for mutations, one for reads), outcomes out.
//!
//! Mutations are logged to the WAL exactly as they arrive here (plus the writer's
//! time stamp), and replay applies them again: the state machine is deterministic.

use std::sync::Arc;

use bincode::{Decode, Encode};

use crate::domain::{
    AdjustReason, CancelReason, LineReq, Millis, OrderId, OrderLineReq, OrderStatus, PaymentStatus,
    ReservationId, ReservationStatus, SkuIdx,
};

/// A mutation of the state. Every field is validated by the state machine itself, so
/// a command from any source (HTTP, replay, a test) gets the same checks.
///
/// The WAL stores commands with bincode, which writes a variant as its position in
/// this enum: the order of the variants is the disk format. Append new variants at the
/// end; never reorder, remove or insert.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Command {
    /// Create or redefine a SKU. Redefinition may not take `on_hand` below `reserved`.
    DefineSku {
        sku: String,
        name: String,
        on_hand: u64,
        low_stock_threshold: u64,
    },
    /// Inbound (`delta > 0`) or correction; may not take `on_hand` below `reserved`.
    AdjustStock {
        sku: String,
        delta: i64,
        reason: AdjustReason,
        note: String,
        actor: String,
    },
    /// Hold stock over all lines or none.
    Reserve {
        lines: Vec<LineReq>,
        ttl_ms: u64,
        actor: String,
    },
    CommitReservation {
        id: ReservationId,
        actor: String,
    },
    ReleaseReservation {
        id: ReservationId,
        actor: String,
    },
    /// Create an order from fresh lines, or adopting a held reservation whose lines match.
    CreateOrder {
        order_no: String,
        customer_id: String,
        lines: Vec<OrderLineReq>,
        payment_ttl_ms: u64,
        reservation_id: Option<ReservationId>,
        actor: String,
    },
    PayOrder {
        id: OrderId,
        amount: u64,
        payment_ref: String,
        actor: String,
    },
    /// Move along the fulfilment path: picking, packed, shipped, delivered, completed.
    AdvanceOrder {
        id: OrderId,
        to: OrderStatus,
        note: String,
        tracking_no: String,
        actor: String,
    },
    CancelOrder {
        id: OrderId,
        reason: CancelReason,
        note: String,
        actor: String,
    },
    ReturnOrder {
        id: OrderId,
        restock: bool,
        reason: String,
        note: String,
        actor: String,
    },
    RefundOrder {
        id: OrderId,
        refund_ref: String,
        actor: String,
    },
    /// Expire every reservation and unpaid order whose deadline is at or before `now`.
    /// Driven by the runtime's timer through the queue, logged only when it expires something.
    Expire,
    /// Remember idempotency keys for `window_ms`, within `budget_bytes` of memory. The
    /// runtime submits it at start-up when the configured policy differs from the
    /// state's, so the policy is logged and replay never depends on today's flags.
    SetIdempotencyPolicy {
        window_ms: u64,
        budget_bytes: u64,
    },
}

impl Command {
    /// The name of the operation, for metrics and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::DefineSku { .. } => "define_sku",
            Command::AdjustStock { .. } => "adjust_stock",
            Command::Reserve { .. } => "reserve",
            Command::CommitReservation { .. } => "commit_reservation",
            Command::ReleaseReservation { .. } => "release_reservation",
            Command::CreateOrder { .. } => "create_order",
            Command::PayOrder { .. } => "pay_order",
            Command::AdvanceOrder { .. } => "advance_order",
            Command::CancelOrder { .. } => "cancel_order",
            Command::ReturnOrder { .. } => "return_order",
            Command::RefundOrder { .. } => "refund_order",
            Command::Expire => "expire",
            Command::SetIdempotencyPolicy { .. } => "set_idempotency_policy",
        }
    }
}

/// An idempotency key and the fingerprint of the request it came with (the API hashes
/// method, path and body). Same key + same fingerprint: the first outcome is returned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: u64,
}

/// A read. Reads go through the writer's queue so they see a consistent state; they
/// are never logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Query {
    GetSku {
        sku: String,
    },
    ListSkus {
        cursor: Option<SkuIdx>,
        limit: usize,
    },
    GetReservation {
        id: ReservationId,
    },
    GetOrder {
        id: OrderId,
    },
    GetOrderByNo {
        order_no: String,
    },
    ListOrders {
        filter: OrderFilter,
        cursor: Option<OrderId>,
        limit: usize,
    },
    Stats {
        top: usize,
    },
    /// A digest of the whole state: equal states have equal digests.
    Digest,
    /// The idempotency index: policy, keys, bytes, oldest key.
    IdempotencyStats,
}

/// Filters of an order list; all optional, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub customer_id: Option<String>,
    pub sku: Option<String>,
    pub created_from_ms: Option<Millis>,
    pub created_to_ms: Option<Millis>,
}

/// A SKU's stock levels.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct SkuView {
    pub sku: Arc<str>,
    pub name: Arc<str>,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    pub low_stock_threshold: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LineView {
    pub sku: Arc<str>,
    pub qty: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReservationView {
    pub id: ReservationId,
    pub status: ReservationStatus,
    pub lines: Vec<LineView>,
    pub created_at_ms: Millis,
    pub expires_at_ms: Millis,
    /// The order that adopted this hold, if any.
    pub order_id: Option<OrderId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderLineView {
    pub sku: Arc<str>,
    pub qty: u64,
    pub unit_price: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HistoryView {
    pub status: OrderStatus,
    pub at_ms: Millis,
    pub actor: Arc<str>,
    pub note: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct CancellationView {
    pub reason: CancelReason,
    pub note: String,
    pub at_ms: Millis,
    pub actor: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PaymentView {
    pub status: PaymentStatus,
    pub amount: u64,
    pub payment_ref: String,
    pub paid_at_ms: Option<Millis>,
    pub refund_ref: String,
    /// Deadline for payment while the order is `reserved`.
    pub due_at_ms: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderView {
    pub id: OrderId,
    pub order_no: Arc<str>,
    pub customer_id: Arc<str>,
    pub status: OrderStatus,
    pub lines: Vec<OrderLineView>,
    pub total: u64,
    pub payment: PaymentView,
    pub reservation_id: ReservationId,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
    pub tracking_no: String,
    pub history: Vec<HistoryView>,
    pub cancellation: Option<CancellationView>,
    /// Set once returned: whether the units went back to stock, and why.
    pub returned: Option<ReturnView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ReturnView {
    pub restock: bool,
    pub reason: String,
    pub note: String,
}

/// A page of a list and where the next page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next_cursor: Option<C>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuSales {
    pub sku: Arc<str>,
    pub units_sold: u64,
    pub units_held: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StatsView {
    pub orders_total: u64,
    pub orders_by_status: Vec<(OrderStatus, u64)>,
    pub cancellations_by_reason: Vec<(CancelReason, u64)>,
    /// Cancelled orders / orders created, 0 when none were created.
    pub cancellation_rate: f64,
    /// Sum of payments taken (minor units), refunds not subtracted.
    pub paid_amount: u64,
    pub refunded_amount: u64,
    pub reservations_held: u64,
    /// Top SKUs by units sold, with their units held.
    pub top_skus: Vec<SkuSales>,
}

/// A successful outcome. Outcomes stored as idempotency answers are bincode in
/// snapshots: as for `Command`, the variant order of `Reply` and `Rejection` is a disk
/// format (append only), and so is the field order of the views.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Reply {
    Sku(SkuView),
    Reservation(ReservationView),
    Order(Box<OrderView>),
    /// `Expire` ran: how many holds and orders it expired.
    Expired {
        reservations: u64,
        orders: u64,
    },
    /// `SetIdempotencyPolicy` took effect.
    IdempotencyPolicy {
        window_ms: u64,
        budget_bytes: u64,
    },
}

/// One SKU that is short in a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Shortage {
    pub sku: String,
    pub requested: u64,
    pub available: u64,
}

/// A business refusal: a value, not an error. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Rejection {
    /// A field is missing its shape; `field` is the JSON path (`lines[2].qty`).
    Validation {
        field: String,
        detail: String,
    },
    InsufficientStock {
        lines: Vec<Shortage>,
    },
    UnknownSku {
        sku: String,
    },
    UnknownOrder {
        order: String,
    },
    UnknownReservation {
        id: ReservationId,
    },
    InvalidTransition {
        detail: String,
    },
    /// Cancel after shipment: use the return flow.
    OrderShipped {
        id: OrderId,
        status: OrderStatus,
    },
    DuplicateOrderNo {
        order_no: String,
        id: OrderId,
    },
    IdempotencyConflict {
        key: String,
    },
    /// A capacity limit (`limits.rs`) is reached.
    LimitReached {
        what: String,
    },
}

impl Rejection {
    /// The stable error code of the HTTP contract.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::Validation { .. } => "validation_failed",
            Rejection::InsufficientStock { .. } => "insufficient_stock",
            Rejection::UnknownSku { .. } => "unknown_sku",
            Rejection::UnknownOrder { .. } => "unknown_order",
            Rejection::UnknownReservation { .. } => "unknown_reservation",
            Rejection::InvalidTransition { .. } => "invalid_transition",
            Rejection::OrderShipped { .. } => "order_shipped",
            Rejection::DuplicateOrderNo { .. } => "duplicate_order_no",
            Rejection::IdempotencyConflict { .. } => "idempotency_conflict",
            Rejection::LimitReached { .. } => "overloaded",
        }
    }

    /// A sentence for humans.
    pub fn detail(&self) -> String {
        match self {
            Rejection::Validation { field, detail } => format!("{field}: {detail}"),
            Rejection::InsufficientStock { lines } => {
                let parts: Vec<String> = lines
                    .iter()
                    .map(|s| {
                        format!(
                            "{} (requested {}, available {})",
                            s.sku, s.requested, s.available
                        )
                    })
                    .collect();
                format!("not enough stock for {}", parts.join(", "))
            }
            Rejection::UnknownSku { sku } => format!("SKU {sku:?} does not exist"),
            Rejection::UnknownOrder { order } => format!("order {order} does not exist"),
            Rejection::UnknownReservation { id } => format!("reservation {id} does not exist"),
            Rejection::InvalidTransition { detail } => detail.clone(),
            Rejection::OrderShipped { id, status } => format!(
                "order {id} is {status}: a shipped order cannot be cancelled; use the return flow (POST /v1/orders/{id}/return)"
            ),
            Rejection::DuplicateOrderNo { order_no, id } => {
                format!("order_no {order_no:?} is already used by order {id}")
            }
            Rejection::IdempotencyConflict { key } => {
                format!("Idempotency-Key {key:?} was already used with a different request")
            }
            Rejection::LimitReached { what } => format!("limit reached: {what}"),
        }
    }
}

pub type Outcome = Result<Reply, Rejection>;
