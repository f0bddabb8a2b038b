//! Commands in (one closed enum for mutations, one for reads), outcomes out.
//!
//! Mutations are logged to the WAL exactly as they arrive here (plus the writer's
//! time stamp), and replay applies them again: the state machine is deterministic.

use std::sync::Arc;

use bincode::{Decode, Encode};

use crate::domain::{
    AdjustReason, CancelReason, HoldReason, LedgerKind, LineReq, Millis, OrderId, OrderLineReq,
    OrderStatus, PaymentStatus, ReservationId, ReservationStatus, ReturnKind, SkuIdx,
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
    /// Create an order (v1.1): `CreateOrder` with a sales channel and a shipping
    /// address. The API sends this one; `CreateOrder` stays for logs written before.
    PlaceOrder {
        order: Box<NewOrder>,
    },
    /// Hold an order for review: it may not be picked, packed or shipped until released.
    HoldOrder {
        id: OrderId,
        reason: HoldReason,
        note: String,
        actor: String,
    },
    ReleaseHold {
        id: OrderId,
        note: String,
        actor: String,
    },
    /// Change an order before picking: its lines (a partial cancel when they go
    /// down), its address, its note.
    ModifyOrder {
        change: Box<OrderChange>,
    },
    /// Pay back part of what was paid: first what is due, beyond that goodwill.
    RefundAmount {
        id: OrderId,
        amount: u64,
        reason: String,
        refund_ref: String,
        actor: String,
    },
    /// Return (v1.1): intercepted in transit or refused at the door (from
    /// `shipped`), or a customer return (from `delivered` or `completed`).
    ReturnOrderAs {
        id: OrderId,
        kind: ReturnKind,
        restock: bool,
        reason: String,
        note: String,
        actor: String,
    },
    /// The order rules that change what a command does (the ship SLA behind delay
    /// alerts, the amount from which new orders are held for review): logged when
    /// they change, like the idempotency policy, so replay never depends on flags.
    SetOrderPolicy {
        ship_sla_ms: u64,
        review_amount_min: Option<u64>,
    },
    /// Create or redefine a SKU with its flash-sale rules (v1.1). A rule that is
    /// `None` keeps its current value. The API sends this one; `DefineSku` stays for
    /// logs written before.
    DefineSkuSale {
        definition: Box<SkuDefinition>,
    },
    /// `Reserve` for a named customer: the units count toward the customer's
    /// purchase limit on every limited SKU of the lines.
    ReserveFor {
        lines: Vec<LineReq>,
        ttl_ms: u64,
        customer_id: String,
        actor: String,
    },
    /// The rules the commands after it follow (`state::RULES_CURRENT` and before):
    /// logged at start by a build whose rules are newer than the state's, so the
    /// records logged before it replay under the rules they were logged with.
    SetRules {
        rules: u32,
    },
}

/// A SKU as `Command::DefineSkuSale` defines it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct SkuDefinition {
    pub sku: String,
    /// `None` keeps the current name (empty for a new SKU).
    pub name: Option<String>,
    /// `None` keeps the current level (required for a new SKU).
    pub on_hand: Option<u64>,
    /// `None` keeps the current threshold (0 for a new SKU).
    pub low_stock_threshold: Option<u64>,
    /// Units per customer, 0 for none; `None` keeps the current limit.
    pub purchase_limit_per_customer: Option<u64>,
    /// `Some(None)` opens the start; `None` keeps the current one.
    pub sale_starts_at_ms: Option<Option<Millis>>,
    /// `Some(None)` opens the end; `None` keeps the current one.
    pub sale_ends_at_ms: Option<Option<Millis>>,
}

/// A SKU's flash-sale rules (限购 and the sale window). The default is no rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Encode, Decode)]
pub struct SaleRules {
    /// Units one customer may hold, have bought and have ordered at once; 0: none.
    pub purchase_limit_per_customer: u64,
    /// New stock is taken from this instant on (`None`: since always).
    pub sale_starts_at_ms: Option<Millis>,
    /// New stock is taken before this instant (`None`: for ever).
    pub sale_ends_at_ms: Option<Millis>,
}

impl SaleRules {
    /// The limit, if there is one.
    pub fn limit(&self) -> Option<u64> {
        (self.purchase_limit_per_customer > 0).then_some(self.purchase_limit_per_customer)
    }

    /// Why the sale is not open at `now_ms`, if it is not.
    pub fn closed_at(&self, now_ms: Millis) -> Option<SaleClosed> {
        match (self.sale_starts_at_ms, self.sale_ends_at_ms) {
            (Some(opens_at_ms), _) if now_ms < opens_at_ms => {
                Some(SaleClosed::NotYet { opens_at_ms })
            }
            (_, Some(closed_at_ms)) if now_ms >= closed_at_ms => {
                Some(SaleClosed::Over { closed_at_ms })
            }
            _ => None,
        }
    }
}

/// Why a sale is not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum SaleClosed {
    NotYet { opens_at_ms: Millis },
    Over { closed_at_ms: Millis },
}

/// A new order as `Command::PlaceOrder` carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct NewOrder {
    pub order_no: String,
    pub customer_id: String,
    pub lines: Vec<OrderLineReq>,
    pub payment_ttl_ms: u64,
    pub reservation_id: Option<ReservationId>,
    pub channel: String,
    pub shipping_address: Option<Address>,
    pub actor: String,
}

/// What `Command::ModifyOrder` changes; `None` keeps the current value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct OrderChange {
    pub id: OrderId,
    /// The new full set of lines.
    pub lines: Option<Vec<OrderLineReq>>,
    pub shipping_address: Option<Address>,
    pub note: Option<String>,
    /// Required when a line is removed or reduced: it is a partial cancel.
    pub reason: Option<CancelReason>,
    pub actor: String,
}

/// A shipping address: every part optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Encode, Decode)]
pub struct Address {
    pub name: Option<String>,
    pub phone: Option<String>,
    pub province: Option<String>,
    pub city: Option<String>,
    pub district: Option<String>,
    pub line1: Option<String>,
    pub postal_code: Option<String>,
}

impl Address {
    /// The parts in a fixed order, with their field names.
    pub fn parts(&self) -> [(AddressField, Option<&str>); 7] {
        [
            (AddressField::Name, self.name.as_deref()),
            (AddressField::Phone, self.phone.as_deref()),
            (AddressField::Province, self.province.as_deref()),
            (AddressField::City, self.city.as_deref()),
            (AddressField::District, self.district.as_deref()),
            (AddressField::Line1, self.line1.as_deref()),
            (AddressField::PostalCode, self.postal_code.as_deref()),
        ]
    }
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
            Command::PlaceOrder { .. } => "create_order",
            Command::HoldOrder { .. } => "hold_order",
            Command::ReleaseHold { .. } => "release_hold",
            Command::ModifyOrder { .. } => "modify_order",
            Command::RefundAmount { .. } => "refund_amount",
            Command::ReturnOrderAs { .. } => "return_order",
            Command::SetOrderPolicy { .. } => "set_order_policy",
            Command::DefineSkuSale { .. } => "define_sku",
            Command::ReserveFor { .. } => "reserve",
            Command::SetRules { .. } => "set_rules",
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
    /// Money movements, oldest first; the cursor is the seq of the last one returned.
    ListLedger {
        filter: LedgerFilter,
        cursor: Option<u64>,
        limit: usize,
    },
    /// The order rules in force.
    OrderPolicy,
    /// What counts toward one customer's purchase limit on one SKU.
    SkuCustomer {
        sku: String,
        customer_id: String,
    },
}

/// Filters of the ledger; all optional, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LedgerFilter {
    pub from_ms: Option<Millis>,
    /// Exclusive.
    pub to_ms: Option<Millis>,
    pub order_id: Option<OrderId>,
    pub kind: Option<LedgerKind>,
}

/// Filters of an order list; all optional, combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderFilter {
    pub status: Option<OrderStatus>,
    pub customer_id: Option<String>,
    pub sku: Option<String>,
    pub created_from_ms: Option<Millis>,
    pub created_to_ms: Option<Millis>,
    pub payment_status: Option<PaymentStatus>,
    /// Order numbers starting with this.
    pub order_no_prefix: Option<String>,
    pub channel: Option<String>,
    /// `Some(true)`: only orders past their ship SLA and not shipped; `Some(false)`: the others.
    pub delayed: Option<bool>,
    pub on_hold: Option<bool>,
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
    pub sale: SaleRules,
}

/// What counts toward one customer's limit on one SKU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkuCustomerView {
    pub sku: Arc<str>,
    pub customer_id: String,
    /// Units held, committed and ordered that count.
    pub counted: u64,
    /// 0: the SKU has no limit (and nothing is counted).
    pub limit: u64,
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
    /// Inline for up to three lines: a reservation answer allocates nothing.
    pub lines: crate::Few<LineView>,
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

/// The payment of an order. Its status follows from the three amounts
/// ([`PaymentStatus::of`]).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PaymentView {
    pub status: PaymentStatus,
    /// The order total (what is to be paid).
    pub amount: u64,
    pub payment_ref: String,
    pub paid_at_ms: Option<Millis>,
    /// The reference of the last refund.
    pub refund_ref: String,
    /// Deadline for payment while the order is `reserved`.
    pub due_at_ms: Millis,
    pub paid_amount: u64,
    pub refunded_amount: u64,
    pub refund_due_amount: u64,
}

impl PaymentView {
    /// The status the API shows: API.md's rule over the three amounts, first match
    /// wins. It is `status` but for an order of total 0 that went through payment,
    /// which the engine keeps `paid` (its transitions need to know) and the rule
    /// shows `unpaid` (nothing was paid).
    pub fn status_shown(&self) -> PaymentStatus {
        PaymentStatus::of(
            self.paid_amount,
            self.refunded_amount,
            self.refund_due_amount,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct HoldView {
    pub reason: HoldReason,
    pub note: String,
    pub at_ms: Millis,
    pub actor: Arc<str>,
}

/// One money movement (`seq` is the LSN of the record that made it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntryView {
    pub seq: u64,
    pub at_ms: Millis,
    pub order_id: OrderId,
    pub order_no: Arc<str>,
    pub kind: LedgerKind,
    pub amount: u64,
    pub reference: String,
    pub actor: Arc<str>,
}

/// The order rules in force (`Command::SetOrderPolicy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub struct OrderPolicy {
    pub ship_sla_ms: u64,
    pub review_amount_min: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct OrderView {
    pub id: OrderId,
    pub order_no: Arc<str>,
    pub customer_id: Arc<str>,
    pub status: OrderStatus,
    /// Inline up to three lines (see [`crate::Few`]); encoded as a `Vec`.
    pub lines: crate::Few<OrderLineView>,
    pub total: u64,
    pub payment: PaymentView,
    pub reservation_id: ReservationId,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
    pub tracking_no: String,
    /// Inline up to three entries (see [`crate::Few`]); encoded as a `Vec`.
    pub history: crate::Few<HistoryView>,
    pub cancellation: Option<CancellationView>,
    /// Set once returned: whether the units went back to stock, and why. Boxed:
    /// few orders are returned, and every order answer moves the view.
    pub returned: Option<Box<ReturnView>>,
    /// How it came back, once returned.
    pub return_kind: Option<ReturnKind>,
    pub channel: String,
    pub shipping_address: Option<Box<Address>>,
    /// The order's note (set by a modification).
    pub note: String,
    pub hold: Option<Box<HoldView>>,
    /// When the ship SLA ran out, if the order was paid and not shipped within it.
    pub delayed_since_ms: Option<Millis>,
}

impl OrderView {
    /// What may be done to this order now, as answers list it:
    /// [`crate::order_actions_now`] from the view's own facts.
    pub fn actions(&self) -> Vec<&'static str> {
        crate::order_actions_now(
            self.status,
            crate::OrderFacts {
                on_hold: self.hold.is_some(),
                refundable_amount: self.payment.paid_amount - self.payment.refunded_amount,
            },
            self.history.len(),
            self.payment.refund_due_amount,
        )
    }
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
    /// A SKU as snapshot format 4 stored it (no sale rules): decoded, then made a
    /// `Sku` (`codec::decode_outcome`); never produced.
    SkuV4(crate::legacy::SkuViewV4),
    Reservation(ReservationView),
    /// An order as snapshot format 3 stored it: decoded, then made an `Order`
    /// (`codec::decode_outcome`); never produced.
    OrderV3(Box<crate::legacy::OrderViewV3>),
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
    Order(Box<OrderView>),
    /// `SetOrderPolicy` took effect.
    OrderPolicy(OrderPolicy),
    Sku(SkuView),
}

/// One SKU that is short in a reservation.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Shortage {
    pub sku: String,
    pub requested: u64,
    pub available: u64,
}

/// A business refusal: a value, not an error. Nothing changed.
///
/// Refusals are plain data: the engine knows no error codes, JSON paths, header
/// names or routes. The API renders them (`api/src/error.rs`). The layout is part of
/// the snapshot format (stored idempotency answers): format 2 had
/// `Validation { field: String, detail: String }`, read through
/// `crate::legacy::RejectionV2`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Rejection {
    /// A field of the command does not have its shape.
    Validation {
        field: Field,
        violation: Violation,
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
    /// Cancel after shipment: the order can only be returned now.
    OrderShipped {
        id: OrderId,
        status: OrderStatus,
    },
    DuplicateOrderNo {
        order_no: String,
        id: OrderId,
    },
    /// The idempotency key came with a different request before.
    IdempotencyConflict {
        key: String,
    },
    /// A capacity limit (`limits.rs`) is reached.
    LimitReached {
        what: String,
    },
    /// Picking, packing or shipping an order on hold.
    OrderOnHold {
        id: OrderId,
        status: OrderStatus,
    },
    /// A refund larger than what was paid and not yet refunded.
    RefundExceedsPaid {
        id: OrderId,
        refundable: u64,
        requested: u64,
    },
    /// More units for one customer than the SKU's purchase limit allows.
    PurchaseLimitExceeded {
        sku: String,
        limit: u64,
        /// Units that already count for the customer.
        already: u64,
        requested: u64,
    },
    /// New stock of a SKU outside its sale window.
    SaleNotOpen {
        sku: String,
        closed: SaleClosed,
    },
}

impl Rejection {
    pub fn invalid(field: Field, violation: Violation) -> Rejection {
        Rejection::Validation { field, violation }
    }
}

/// The part of a command a validation refusal is about. Variant order is part of
/// the snapshot format (append only).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Field {
    Sku,
    /// A SKU's display name.
    Name,
    OnHand,
    LowStockThreshold,
    /// A stock adjustment's signed change.
    Delta,
    Note,
    Actor,
    /// A reservation's time to live.
    TtlMs,
    /// An order's time to pay.
    PaymentTtlMs,
    /// The list of lines as a whole (count, match with a reservation).
    Lines,
    /// One line of a reservation or an order (`index` from 0).
    Line {
        index: u32,
        part: LineField,
    },
    OrderNo,
    CustomerId,
    /// A payment's amount.
    Amount,
    PaymentRef,
    /// The status an order is advanced to.
    To,
    TrackingNo,
    /// A return's reason (free text).
    Reason,
    RefundRef,
    /// The idempotency key sent with the command.
    IdempotencyKey,
    /// The idempotency policy's window.
    WindowMs,
    /// The idempotency policy's memory budget.
    BudgetBytes,
    /// The command as a whole (its encoding).
    Command,
    /// A field named in a stored answer of snapshot format 1 or 2, kept as written.
    Legacy(String),
    Channel,
    /// One part of a shipping address.
    Address(AddressField),
    /// A money amount of a refund.
    RefundAmount,
    /// The ship SLA of the order policy.
    ShipSlaMs,
    /// The review threshold of the order policy.
    ReviewAmountMin,
    PurchaseLimitPerCustomer,
    SaleStartsAt,
    SaleEndsAt,
    /// The rules version of `Command::SetRules`.
    Rules,
}

/// A part of a shipping address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum AddressField {
    Name,
    Phone,
    Province,
    City,
    District,
    Line1,
    PostalCode,
}

impl AddressField {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressField::Name => "name",
            AddressField::Phone => "phone",
            AddressField::Province => "province",
            AddressField::City => "city",
            AddressField::District => "district",
            AddressField::Line1 => "line1",
            AddressField::PostalCode => "postal_code",
        }
    }
}

/// A field of one line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub enum LineField {
    Sku,
    Qty,
    UnitPrice,
    /// The quantity of this line added to the earlier lines of the same SKU.
    SummedQty {
        sku: String,
    },
}

/// What is wrong with a field. Variant order is part of the snapshot format (append
/// only).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Violation {
    /// Empty where a value is required.
    Empty,
    /// Longer than `max` bytes.
    TooLong {
        max: u64,
        got: u64,
    },
    ControlCharacters,
    /// A SKU id outside `min..=max` bytes.
    SkuIdLength {
        min: u64,
        max: u64,
    },
    /// A SKU id with a byte outside `[A-Za-z0-9._:-]`.
    SkuIdCharacters,
    /// Outside `min..=max` (in `unit`).
    OutOfRange {
        min: u64,
        max: u64,
        unit: Unit,
    },
    /// Above `max`.
    AboveMax {
        max: u64,
    },
    /// More than `max` lines.
    TooManyLines {
        max: u64,
        got: u64,
    },
    Zero,
    /// An inbound stock adjustment with a negative delta.
    InboundNotPositive,
    /// The change would take on_hand above `max`.
    OnHandAboveMax {
        max: u64,
    },
    /// The lines differ from those of the reservation being adopted.
    LinesDifferFromReservation {
        id: ReservationId,
    },
    /// A payment amount other than the order total.
    NotOrderTotal {
        total: u64,
        got: u64,
    },
    /// A status that is not a fulfilment step.
    NotAFulfilmentStep,
    /// The command encodes to `len` bytes, over the log's record limit.
    RecordTooLarge {
        len: u64,
        max: u64,
    },
    /// A reason from a stored answer of snapshot format 1 or 2, kept as written.
    Legacy(String),
    /// Required here (a reduced or removed line needs a reason; a limited SKU
    /// needs the customer).
    Required,
    /// A sale window that ends at or before it starts.
    NotAfterStart,
    /// The order's lines total more than `max` minor units (the v1.3 rules).
    OrderTotalAboveMax {
        max: u64,
        got: u64,
    },
    /// A sale window's new start at or after the end it keeps (the start was the
    /// field sent; appended: the variants are a disk format).
    NotBeforeEnd,
}

/// The unit of an [`Violation::OutOfRange`] bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub enum Unit {
    Count,
    Millis,
    Bytes,
}

pub type Outcome = Result<Reply, Rejection>;

/// An outcome as acknowledged, with the LSN of the record that made it (`Surge-Lsn`):
/// `None` when nothing was logged (a refusal, a repeat that changed nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acked {
    pub outcome: Outcome,
    pub lsn: Option<u64>,
}
