//! Request and response bodies. Only the API knows JSON: these convert to and from
//! the engine's types. Every request body rejects unknown fields.

use serde::{Deserialize, Serialize};
use surge_engine::{
    CancelReason, CancellationView, HistoryView, LineReq, OrderLineReq, OrderStatus, OrderView,
    Reply, ReservationView, SkuView,
};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::time::{format_ms, write_ms};

// ---------------------------------------------------------------- requests

/// `PUT /v1/skus/{sku}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DefineSkuReq {
    /// Units in stock; may not go below the units reserved. Required for a new SKU;
    /// omitted on a redefinition, the level stays as it is (so a change of the rules
    /// never writes back a level read before units were sold). Not null. At most
    /// 1000000000000 when sent; stock given back (a cancel, a restocking return, a
    /// lowering modification) is never refused and may take the level past it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = u64, minimum = 0, maximum = 1_000_000_000_000_u64)]
    pub on_hand: Option<Option<u64>>,
    /// `stock.low` is emitted when `available` falls to or below this. Omitted:
    /// unchanged (0 for a new SKU). Not null. At most 1000000000000.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = u64, minimum = 0, maximum = 1_000_000_000_000_u64)]
    pub low_stock_threshold: Option<Option<u64>>,
    /// Display name. Omitted: unchanged (empty for a new SKU). Not null. At most 200
    /// bytes (UTF-8), no control characters.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, max_length = 200)]
    pub name: Option<Option<String>>,
    /// Units one customer may hold, have bought and have ordered at once; 0 for no
    /// limit. Omitted: unchanged (none for a new SKU). Not null (0 removes the
    /// limit, and forgets the counts). At most 1000000000000. A limit counts from
    /// when it is set: set where there was none, it counts the orders that count and
    /// the holds that kept their customer (taken while another of their SKUs had a
    /// limit); other holds, and reservations committed outright, from before it are
    /// not counted (the engine keeps no customer for them). Set it before the sale
    /// opens.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = u64, minimum = 0, maximum = 1_000_000_000_000_u64)]
    pub purchase_limit_per_customer: Option<Option<u64>>,
    /// RFC 3339: no new stock is taken before it; null: open. Omitted: unchanged.
    /// At the latest 9999-12-30T22:00:00.999Z (the latest time the server reads).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sale_starts_at: Option<Option<String>>,
    /// RFC 3339: no new stock is taken at or after it; null: open. Omitted: unchanged.
    /// At the latest 9999-12-30T22:00:00.999Z (the latest time the server reads).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub sale_ends_at: Option<Option<String>>,
}

/// A field of a request that keeps what it names when omitted, and has no null:
/// its value, or 400 naming it when it was given as null (which would otherwise
/// pass as omitted, and keep what the client meant to clear).
pub fn not_null<T>(field: &str, value: Option<Option<T>>) -> Result<Option<T>, ApiError> {
    match value {
        Some(None) => Err(ApiError::validation(field, "must not be null")),
        Some(Some(value)) => Ok(Some(value)),
        None => Ok(None),
    }
}

/// A field that may be absent (`None`), null (`Some(None)`) or set.
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AdjustReasonDto {
    Inbound,
    Correction,
}

/// `POST /v1/skus/{sku}/adjustments`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustReq {
    /// Units to add (positive) or remove (negative, `correction`); not zero. A raise
    /// may not take `on_hand` past 1000000000000; a lowering may not take it below
    /// the units reserved (stock given back may have taken it past the limit, and a
    /// correction brings it down).
    #[schema(minimum = -1_000_000_000_000_i64, maximum = 1_000_000_000_000_i64)]
    pub delta: i64,
    pub reason: AdjustReasonDto,
    /// At most 500 bytes (UTF-8), no control characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub note: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LineDto {
    /// SKU id: 1 to 64 bytes of `[A-Za-z0-9._:-]`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$")]
    pub sku: String,
    /// Units, 1..=1000000 (also summed per SKU within one request).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub qty: u64,
}

/// `POST /v1/reservations`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReserveReq {
    /// 1 to 64 lines.
    #[schema(min_items = 1, max_items = 64)]
    pub lines: Vec<LineDto>,
    /// Hold time in milliseconds, 1000 (1 s) to 604800000 (7 days); the server
    /// default (15 minutes) when absent.
    #[schema(minimum = 1_000, maximum = 604_800_000)]
    pub ttl_ms: Option<u64>,
    /// The shopper the units are for: required when a SKU has a purchase limit,
    /// whose count the units then join. 1 to 64 bytes (UTF-8), no control characters.
    #[schema(min_length = 1, max_length = 64)]
    pub customer_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderLineDto {
    /// SKU id: 1 to 64 bytes of `[A-Za-z0-9._:-]`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:-]+$")]
    pub sku: String,
    /// Units, 1..=1000000 (also summed per SKU within one order).
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub qty: u64,
    /// Minor units (cents), at most 10000000000.
    #[schema(minimum = 0, maximum = 10_000_000_000_u64)]
    pub unit_price: u64,
}

/// `POST /v1/orders`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrderReq {
    /// The client's order number, unique: 1 to 64 bytes (UTF-8), no control characters.
    #[schema(min_length = 1, max_length = 64)]
    pub order_no: String,
    /// 1 to 64 bytes (UTF-8), no control characters.
    #[schema(min_length = 1, max_length = 64)]
    pub customer_id: String,
    /// 1 to 64 lines; `qty * unit_price` summed over them at most 1000000000000.
    #[schema(min_items = 1, max_items = 64)]
    pub lines: Vec<OrderLineDto>,
    /// Time to pay in milliseconds, 1000 (1 s) to 604800000 (7 days); the server
    /// default (15 minutes) when absent.
    #[schema(minimum = 1_000, maximum = 604_800_000)]
    pub payment_ttl_ms: Option<u64>,
    /// Adopt this held reservation (its lines must match) instead of holding anew.
    pub reservation_id: Option<String>,
    /// The sales channel: `tmall`, `jd`, `web`... At most 64 bytes (UTF-8), no
    /// control characters.
    #[serde(default)]
    #[schema(max_length = 64)]
    pub channel: String,
    pub shipping_address: Option<AddressBody>,
}

/// `POST /v1/orders/{id}/pay`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PayReq {
    /// Must equal the order total (so never over 1000000000000, the largest order
    /// total).
    #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
    pub amount: u64,
    /// At most 500 bytes (UTF-8), no control characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub payment_ref: String,
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransitionTo {
    Picking,
    Packed,
    Shipped,
    Delivered,
    Completed,
}

/// `POST /v1/orders/{id}/transitions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransitionReq {
    pub to: TransitionTo,
    /// At most 500 bytes (UTF-8), no control characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub note: String,
    /// Kept by `to: shipped` only: on another step it is checked and ignored (a
    /// client may send the parcel's number with every step). `shipped` repeated on a
    /// shipped order with another number is 409. At most 500 bytes (UTF-8), no
    /// control characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub tracking_no: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CancelReasonDto {
    CustomerRequest,
    OutOfStock,
    PaymentFailed,
    FraudSuspected,
    SystemError,
    Other,
}

/// `POST /v1/orders/{id}/cancel`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelReq {
    /// `storefront` may use only `customer_request` and `payment_failed`.
    pub reason: CancelReasonDto,
    /// At most 500 bytes (UTF-8), no control characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub note: String,
}

/// `POST /v1/orders/{id}/return`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReturnReq {
    /// `intercepted` (stopped in transit) or `refused` (refused at the door), from
    /// `shipped`; `customer_return` (the default), from `delivered` or `completed`.
    #[serde(default)]
    pub kind: ReturnKindDto,
    /// Put the units back into `on_hand`.
    pub restock: bool,
    /// At most 500 bytes (UTF-8), no control characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: String,
    /// At most 500 bytes (UTF-8), no control characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub note: String,
}

/// `POST /v1/orders/{id}/refund`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundReq {
    /// At most 500 bytes (UTF-8), no control characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub refund_ref: String,
}

impl From<AdjustReasonDto> for surge_engine::AdjustReason {
    fn from(r: AdjustReasonDto) -> Self {
        match r {
            AdjustReasonDto::Inbound => surge_engine::AdjustReason::Inbound,
            AdjustReasonDto::Correction => surge_engine::AdjustReason::Correction,
        }
    }
}

impl From<TransitionTo> for OrderStatus {
    fn from(t: TransitionTo) -> Self {
        match t {
            TransitionTo::Picking => OrderStatus::Picking,
            TransitionTo::Packed => OrderStatus::Packed,
            TransitionTo::Shipped => OrderStatus::Shipped,
            TransitionTo::Delivered => OrderStatus::Delivered,
            TransitionTo::Completed => OrderStatus::Completed,
        }
    }
}

impl From<CancelReasonDto> for CancelReason {
    fn from(r: CancelReasonDto) -> Self {
        match r {
            CancelReasonDto::CustomerRequest => CancelReason::CustomerRequest,
            CancelReasonDto::OutOfStock => CancelReason::OutOfStock,
            CancelReasonDto::PaymentFailed => CancelReason::PaymentFailed,
            CancelReasonDto::FraudSuspected => CancelReason::FraudSuspected,
            CancelReasonDto::SystemError => CancelReason::SystemError,
            CancelReasonDto::Other => CancelReason::Other,
        }
    }
}

pub fn line_reqs(lines: Vec<LineDto>) -> Vec<LineReq> {
    lines
        .into_iter()
        .map(|l| LineReq {
            sku: l.sku,
            qty: l.qty,
        })
        .collect()
}

pub fn order_line_reqs(lines: Vec<OrderLineDto>) -> Vec<OrderLineReq> {
    lines
        .into_iter()
        .map(|l| OrderLineReq {
            sku: l.sku,
            qty: l.qty,
            unit_price: l.unit_price,
        })
        .collect()
}

// ---------------------------------------------------------------- responses

#[derive(Debug, Serialize, ToSchema)]
pub struct SkuBody {
    pub sku: String,
    pub name: String,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    pub low_stock_threshold: u64,
    /// Units per customer; 0: no limit.
    pub purchase_limit_per_customer: u64,
    /// RFC 3339, or null when the sale has no start.
    pub sale_starts_at: Option<String>,
    /// RFC 3339, or null when the sale has no end.
    pub sale_ends_at: Option<String>,
}

/// `GET /v1/skus/{sku}/customers/{customer_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SkuCustomerBody {
    pub sku: String,
    pub customer_id: String,
    /// Units that count toward the limit: held, committed and ordered, since the
    /// limit was set (see `purchase_limit_per_customer` on the SKU).
    pub counted: u64,
    /// The SKU's limit per customer; 0: none (and nothing is counted).
    pub limit: u64,
}

impl From<surge_engine::SkuCustomerView> for SkuCustomerBody {
    fn from(v: surge_engine::SkuCustomerView) -> Self {
        SkuCustomerBody {
            sku: v.sku.to_string(),
            customer_id: v.customer_id,
            counted: v.counted,
            limit: v.limit,
        }
    }
}

impl From<SkuView> for SkuBody {
    fn from(v: SkuView) -> Self {
        SkuBody {
            sku: v.sku.to_string(),
            name: v.name.to_string(),
            on_hand: v.on_hand,
            reserved: v.reserved,
            available: v.available,
            low_stock_threshold: v.low_stock_threshold,
            purchase_limit_per_customer: v.sale.purchase_limit_per_customer,
            sale_starts_at: v.sale.sale_starts_at_ms.map(format_ms),
            sale_ends_at: v.sale.sale_ends_at_ms.map(format_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LineBody {
    pub sku: String,
    pub qty: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReservationBody {
    /// `r<n>`.
    pub id: String,
    /// `held`, `committed`, `released` or `expired`.
    pub status: &'static str,
    pub lines: Vec<LineBody>,
    pub created_at: String,
    pub expires_at: String,
    /// The order that adopted this hold, if any.
    pub order_id: Option<String>,
}

/// The JSON of a reservation, written straight into one buffer: the same text as
/// serializing [`ReservationBody`] (a test holds them equal), without its six
/// allocations and serde's struct machinery. This is the answer of the hottest
/// write of a sale (`POST /v1/reservations`) and of every `reserve` op in a batch.
pub fn reservation_json(v: &ReservationView, out: &mut String) {
    // Ids and numbers are ASCII digits and letters: only the SKUs need escaping.
    let mut digits = itoa::Buffer::new();
    out.push_str("{\"id\":\"r");
    out.push_str(digits.format(v.id.0));
    out.push_str("\",\"status\":\"");
    out.push_str(v.status.as_str());
    out.push_str("\",\"lines\":[");
    for (i, line) in v.lines.iter().enumerate() {
        out.push_str(if i == 0 { "{\"sku\":" } else { ",{\"sku\":" });
        push_json_str(out, &line.sku);
        out.push_str(",\"qty\":");
        out.push_str(digits.format(line.qty));
        out.push('}');
    }
    out.push_str("],\"created_at\":\"");
    write_ms(out, v.created_at_ms);
    out.push_str("\",\"expires_at\":\"");
    write_ms(out, v.expires_at_ms);
    match &v.order_id {
        Some(id) => {
            out.push_str("\",\"order_id\":\"o");
            out.push_str(digits.format(id.0));
            out.push_str("\"}");
        }
        None => out.push_str("\",\"order_id\":null}"),
    }
}

/// [`SkuBody`]'s JSON, written straight into `out`: the stock read is the hottest
/// read of a sale ("how many are left"), and serde spent about 4k instructions on
/// these nine fields. A test holds it equal to serde's rendering of `SkuBody`.
pub fn sku_json(v: &SkuView, out: &mut String) {
    let mut digits = itoa::Buffer::new();
    out.push_str("{\"sku\":");
    push_json_str(out, &v.sku);
    out.push_str(",\"name\":");
    push_json_str(out, &v.name);
    for (key, value) in [
        (",\"on_hand\":", v.on_hand),
        (",\"reserved\":", v.reserved),
        (",\"available\":", v.available),
        (",\"low_stock_threshold\":", v.low_stock_threshold),
        (
            ",\"purchase_limit_per_customer\":",
            v.sale.purchase_limit_per_customer,
        ),
    ] {
        out.push_str(key);
        out.push_str(digits.format(value));
    }
    for (key, at_ms) in [
        (",\"sale_starts_at\":", v.sale.sale_starts_at_ms),
        (",\"sale_ends_at\":", v.sale.sale_ends_at_ms),
    ] {
        out.push_str(key);
        match at_ms {
            Some(ms) => {
                out.push('"');
                write_ms(out, ms);
                out.push('"');
            }
            None => out.push_str("null"),
        }
    }
    out.push('}');
}

/// Append `s` as a JSON string literal, escaped as serde_json escapes it.
pub fn push_json_str(out: &mut String, s: &str) {
    use std::fmt::Write as _;
    out.push('"');
    let mut start = 0;
    for (i, byte) in s.bytes().enumerate() {
        let escaped = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.push_str(escaped);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// The serde rendering [`reservation_json`] must match (and the OpenAPI schema).
impl From<ReservationView> for ReservationBody {
    fn from(v: ReservationView) -> Self {
        ReservationBody {
            id: v.id.to_string(),
            status: v.status.as_str(),
            lines: v
                .lines
                .into_iter()
                .map(|l| LineBody {
                    sku: l.sku.to_string(),
                    qty: l.qty,
                })
                .collect(),
            created_at: format_ms(v.created_at_ms),
            expires_at: format_ms(v.expires_at_ms),
            order_id: v.order_id.map(|id| id.to_string()),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderLineBody {
    pub sku: String,
    pub qty: u64,
    pub unit_price: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentBody {
    /// From the amounts, first match wins: `refund_due` (refund_due_amount > 0),
    /// `refunded` (refunded = paid > 0), `partially_refunded` (refunded > 0), `paid`
    /// (paid > 0), `unpaid`.
    pub status: &'static str,
    /// The order total, minor units.
    pub amount: u64,
    pub payment_ref: String,
    pub paid_at: Option<String>,
    /// The reference of the last refund.
    pub refund_ref: String,
    /// Deadline for payment while the order is `reserved`.
    pub due_at: String,
    pub paid_amount: u64,
    pub refunded_amount: u64,
    /// Made due back by a cancel, a return or a lower total, not yet refunded.
    pub refund_due_amount: u64,
}

/// A shipping address; every part optional, at most 200 bytes (UTF-8) each, no
/// control characters.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressBody {
    #[schema(max_length = 200)]
    pub name: Option<String>,
    #[schema(max_length = 200)]
    pub phone: Option<String>,
    #[schema(max_length = 200)]
    pub province: Option<String>,
    #[schema(max_length = 200)]
    pub city: Option<String>,
    #[schema(max_length = 200)]
    pub district: Option<String>,
    #[schema(max_length = 200)]
    pub line1: Option<String>,
    #[schema(max_length = 200)]
    pub postal_code: Option<String>,
}

impl From<AddressBody> for surge_engine::Address {
    fn from(a: AddressBody) -> Self {
        surge_engine::Address {
            name: a.name,
            phone: a.phone,
            province: a.province,
            city: a.city,
            district: a.district,
            line1: a.line1,
            postal_code: a.postal_code,
        }
    }
}

impl From<surge_engine::Address> for AddressBody {
    fn from(a: surge_engine::Address) -> Self {
        AddressBody {
            name: a.name,
            phone: a.phone,
            province: a.province,
            city: a.city,
            district: a.district,
            line1: a.line1,
            postal_code: a.postal_code,
        }
    }
}

/// A review hold (订单审核).
#[derive(Debug, Serialize, ToSchema)]
pub struct HoldBody {
    /// `review`, `address_check`, `fraud_check`, `customer_request` or `other`.
    pub reason: &'static str,
    pub note: String,
    pub at: String,
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HistoryBody {
    pub status: &'static str,
    pub at: String,
    /// `role` or `role:name` (a named token, or an unnamed token's `X-Actor`).
    pub actor: String,
    /// A named token's `X-Actor`: whom the actor acted for. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    pub note: String,
}

impl From<HistoryView> for HistoryBody {
    fn from(h: HistoryView) -> Self {
        let (actor, on_behalf_of) = split_actor(&h.actor);
        HistoryBody {
            status: h.status.as_str(),
            at: format_ms(h.at_ms),
            actor: actor.to_string(),
            on_behalf_of: on_behalf_of.map(str::to_string),
            note: h.note.to_string(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CancellationBody {
    pub reason: &'static str,
    pub note: String,
    pub at: String,
    /// `role` or `role:name`.
    pub actor: String,
    /// A named token's `X-Actor`: whom the actor acted for. Absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

impl From<CancellationView> for CancellationBody {
    fn from(c: CancellationView) -> Self {
        let (actor, on_behalf_of) = split_actor(&c.actor);
        CancellationBody {
            reason: c.reason.as_str(),
            note: c.note.to_string(),
            at: format_ms(c.at_ms),
            actor: actor.to_string(),
            on_behalf_of: on_behalf_of.map(str::to_string),
        }
    }
}

/// The logged actor split into who acted and whom for (a named token's `X-Actor`).
fn split_actor(logged: &str) -> (&str, Option<&str>) {
    surge_engine::split_actor(logged)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReturnBody {
    /// `intercepted`, `refused` or `customer_return`.
    pub kind: &'static str,
    pub restock: bool,
    pub reason: String,
    pub note: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderBody {
    /// `o<n>`.
    pub id: String,
    pub order_no: String,
    pub customer_id: String,
    /// `reserved`, `confirmed`, `picking`, `packed`, `shipped`, `delivered`,
    /// `completed`, `expired`, `cancelled` or `returned`.
    pub status: &'static str,
    /// The actions allowed now, from the engine's transition table: `pay`, `pick`,
    /// `pack`, `ship`, `deliver`, `complete`, `cancel`, `hold`, `release_hold`,
    /// `modify`, `return`, `refund`.
    pub actions: Vec<&'static str>,
    pub lines: Vec<OrderLineBody>,
    /// Minor units.
    pub total: u64,
    pub payment: PaymentBody,
    pub reservation_id: String,
    pub created_at: String,
    pub updated_at: String,
    pub tracking_no: String,
    pub history: Vec<HistoryBody>,
    /// Present once cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancellation: Option<CancellationBody>,
    /// Present once returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub returned: Option<ReturnBody>,
    /// The sales channel (`tmall`, `jd`, `web`...), `""` when not given.
    pub channel: String,
    pub shipping_address: Option<AddressBody>,
    /// The order's note (set by a modification).
    pub note: String,
    /// The review hold, `null` when not held.
    pub hold: Option<HoldBody>,
    /// When the ship SLA ran out, while the order is paid and not shipped.
    pub delayed_since: Option<String>,
}

impl From<OrderView> for OrderBody {
    fn from(o: OrderView) -> Self {
        OrderBody {
            id: o.id.to_string(),
            order_no: o.order_no.to_string(),
            customer_id: o.customer_id.to_string(),
            status: o.status.as_str(),
            actions: o.actions(),
            lines: o
                .lines
                .into_iter()
                .map(|l| OrderLineBody {
                    sku: l.sku.to_string(),
                    qty: l.qty,
                    unit_price: l.unit_price,
                })
                .collect(),
            total: o.total,
            payment: PaymentBody {
                status: o.payment.status_shown().as_str(),
                amount: o.payment.amount,
                payment_ref: o.payment.payment_ref.to_string(),
                paid_at: o.payment.paid_at_ms.map(format_ms),
                refund_ref: o.payment.refund_ref.to_string(),
                due_at: format_ms(o.payment.due_at_ms),
                paid_amount: o.payment.paid_amount,
                refunded_amount: o.payment.refunded_amount,
                refund_due_amount: o.payment.refund_due_amount,
            },
            reservation_id: o.reservation_id.to_string(),
            created_at: format_ms(o.created_at_ms),
            updated_at: format_ms(o.updated_at_ms),
            tracking_no: o.tracking_no.to_string(),
            history: o.history.into_iter().map(HistoryBody::from).collect(),
            cancellation: o.cancellation.map(CancellationBody::from),
            returned: o.returned.map(|r| ReturnBody {
                kind: o.return_kind.map_or("customer_return", |k| k.as_str()),
                restock: r.restock,
                reason: r.reason.to_string(),
                note: r.note.to_string(),
            }),
            channel: o.channel,
            shipping_address: o.shipping_address.map(|a| AddressBody::from(*a)),
            note: o.note,
            hold: o.hold.map(|h| {
                let (actor, on_behalf_of) = surge_engine::split_actor(&h.actor);
                HoldBody {
                    reason: h.reason.as_str(),
                    note: h.note,
                    at: format_ms(h.at_ms),
                    actor: actor.to_string(),
                    on_behalf_of: on_behalf_of.map(str::to_string),
                }
            }),
            delayed_since: o.delayed_since_ms.map(format_ms),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SkuPage {
    pub items: Vec<SkuBody>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    /// Newest first.
    pub items: Vec<OrderBody>,
    /// Pass as `cursor` for the next page; `null` when there is no more.
    pub next_cursor: Option<String>,
}

/// The JSON text of a successful engine reply, written straight from its DTO (no
/// intermediate `Value` tree, no re-parse: this runs for every response and every
/// batch op).
pub fn reply_json(reply: Reply) -> String {
    if let Reply::Reservation(v) = &reply {
        let mut out = String::with_capacity(192);
        reservation_json(v, &mut out);
        return out;
    }
    let mut out = String::new();
    reply_json_into(reply, &mut out);
    out
}

/// [`reply_json`], appended to `out`: a batch writes every answer into one buffer.
pub fn reply_json_into(reply: Reply, out: &mut String) {
    let text = match reply {
        Reply::Reservation(v) => {
            reservation_json(&v, out);
            return;
        }
        Reply::Sku(v) => {
            sku_json(&v, out);
            return;
        }
        Reply::SkuV4(v) => {
            sku_json(&SkuView::from(v), out);
            return;
        }
        Reply::Order(v) => serde_json::to_string(&OrderBody::from(*v)),
        Reply::OrderV3(v) => serde_json::to_string(&OrderBody::from(OrderView::from(*v))),
        Reply::OrderPolicy(p) => Ok(format!(
            "{{\"ship_sla_ms\":{},\"review_amount_min\":{}}}",
            p.ship_sla_ms,
            p.review_amount_min
                .map_or_else(|| "null".to_string(), |m| m.to_string())
        )),
        Reply::Expired {
            reservations,
            orders,
        } => Ok(format!(
            "{{\"reservations\":{reservations},\"orders\":{orders}}}"
        )),
        Reply::IdempotencyPolicy {
            window_ms,
            budget_bytes,
        } => Ok(format!(
            "{{\"window_ms\":{window_ms},\"budget_bytes\":{budget_bytes}}}"
        )),
    };
    out.push_str(&text.expect("bodies always serialize"));
}

#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReturnKindDto {
    Intercepted,
    Refused,
    #[default]
    CustomerReturn,
}

impl From<ReturnKindDto> for surge_engine::ReturnKind {
    fn from(k: ReturnKindDto) -> Self {
        match k {
            ReturnKindDto::Intercepted => surge_engine::ReturnKind::Intercepted,
            ReturnKindDto::Refused => surge_engine::ReturnKind::Refused,
            ReturnKindDto::CustomerReturn => surge_engine::ReturnKind::CustomerReturn,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HoldReasonDto {
    Review,
    AddressCheck,
    FraudCheck,
    CustomerRequest,
    Other,
}

impl From<HoldReasonDto> for surge_engine::HoldReason {
    fn from(r: HoldReasonDto) -> Self {
        match r {
            HoldReasonDto::Review => surge_engine::HoldReason::Review,
            HoldReasonDto::AddressCheck => surge_engine::HoldReason::AddressCheck,
            HoldReasonDto::FraudCheck => surge_engine::HoldReason::FraudCheck,
            HoldReasonDto::CustomerRequest => surge_engine::HoldReason::CustomerRequest,
            HoldReasonDto::Other => surge_engine::HoldReason::Other,
        }
    }
}

/// `POST /v1/orders/{id}/hold`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldReq {
    pub reason: HoldReasonDto,
    /// At most 500 bytes (UTF-8), no control characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub note: String,
}

/// `POST /v1/orders/{id}/release-hold`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReleaseHoldReq {
    /// At most 500 bytes (UTF-8), no control characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub note: String,
}

/// `PATCH /v1/orders/{id}`: any of the fields; absent ones keep their value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModifyOrderReq {
    /// The new full set of lines: 1 to 64 (not empty: cancel the order instead);
    /// `qty * unit_price` summed over them at most 1000000000000.
    /// Not null.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Vec<OrderLineDto>, required = false, min_items = 1, max_items = 64)]
    pub lines: Option<Option<Vec<OrderLineDto>>>,
    /// Replaces the order's address. Not null: an address is replaced, not removed.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = AddressBody, required = false)]
    pub shipping_address: Option<Option<AddressBody>>,
    /// At most 500 bytes (UTF-8), no control characters. Not null (`""` clears it).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = String, required = false, max_length = 500)]
    pub note: Option<Option<String>>,
    /// Required when a line is removed or reduced (a partial cancel): a cancel
    /// reason; `storefront` may use only `customer_request` and `payment_failed`.
    pub reason: Option<CancelReasonDto>,
}

/// `POST /v1/orders/{id}/refunds`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundsReq {
    /// Minor units, at least 1 and at most `paid_amount - refunded_amount` (so
    /// never over 1000000000000, the largest order total).
    #[schema(minimum = 1, maximum = 1_000_000_000_000_u64)]
    pub amount: u64,
    /// At most 500 bytes (UTF-8), no control characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub reason: String,
    /// At most 500 bytes (UTF-8), no control characters.
    #[serde(default)]
    #[schema(max_length = 500)]
    pub refund_ref: String,
}

/// One money movement.
#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerEntryBody {
    /// The LSN of the record that made it (0: carried over from before the ledger).
    pub seq: u64,
    pub at: String,
    pub order_id: String,
    pub order_no: String,
    /// `charge` (a payment), `refund` (money paid back) or `reversal` (money made
    /// due back by a cancel, a return or a modification: 撤销核销).
    pub kind: &'static str,
    /// Minor units.
    pub amount: u64,
    /// The payment or refund reference.
    #[serde(rename = "ref")]
    pub reference: String,
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
}

impl From<surge_engine::LedgerEntryView> for LedgerEntryBody {
    fn from(e: surge_engine::LedgerEntryView) -> Self {
        let (actor, on_behalf_of) = surge_engine::split_actor(&e.actor);
        LedgerEntryBody {
            seq: e.seq,
            at: format_ms(e.at_ms),
            order_id: e.order_id.to_string(),
            order_no: e.order_no.to_string(),
            kind: e.kind.as_str(),
            amount: e.amount,
            reference: e.reference,
            actor: actor.to_string(),
            on_behalf_of: on_behalf_of.map(str::to_string),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LedgerPage {
    /// Oldest first.
    pub items: Vec<LedgerEntryBody>,
    /// Pass as `cursor` for the next page; `null` when there is no more.
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use surge_engine::{LineView, OrderId, ReservationId, ReservationStatus};

    use super::*;

    /// Every ASCII byte, quotes, backslashes, multi-byte UTF-8 and the odd
    /// characters serde_json does not escape (DEL, U+2028).
    fn awkward_strings() -> Vec<String> {
        let mut strings: Vec<String> = (0u8..=0x7f).map(|b| format!("a{}b", b as char)).collect();
        strings.extend(
            [
                "",
                "S1",
                "\"",
                "\\\\\"",
                "\u{7f}\u{2028}雙11",
                "\n\r\t\u{8}\u{c}\u{1}",
            ]
            .map(String::from),
        );
        strings
    }

    #[test]
    fn push_json_str_escapes_as_serde_json_does() {
        for s in awkward_strings() {
            let mut out = String::new();
            push_json_str(&mut out, &s);
            assert_eq!(out, serde_json::to_string(&s).unwrap(), "for {s:?}");
        }
    }

    #[test]
    fn reservation_json_is_the_serde_rendering_of_its_body() {
        let skus = awkward_strings();
        let statuses = [
            ReservationStatus::Held,
            ReservationStatus::Committed,
            ReservationStatus::Released,
            ReservationStatus::Expired,
        ];
        for (i, sku) in skus.iter().enumerate() {
            let lines = (0..i % 4)
                .map(|n| LineView {
                    sku: Arc::from(format!("{sku}{n}").as_str()),
                    qty: (n as u64) * 1_000_000_007,
                })
                .collect();
            let view = ReservationView {
                id: ReservationId(i as u64 * 7919),
                status: statuses[i % statuses.len()],
                lines,
                created_at_ms: (i as u64) * 86_400_123,
                expires_at_ms: u64::MAX / (i as u64 + 1),
                order_id: (i % 2 == 0).then_some(OrderId(i as u64 + 1)),
            };
            let mut out = String::new();
            reservation_json(&view, &mut out);
            let expected = serde_json::to_string(&ReservationBody::from(view)).unwrap();
            assert_eq!(out, expected);
        }
    }

    #[test]
    fn sku_json_is_the_serde_rendering_of_its_body() {
        let names = awkward_strings();
        for (i, text) in names.iter().enumerate() {
            let i = i as u64;
            let view = SkuView {
                sku: Arc::from(format!("S{text}").as_str()),
                name: Arc::from(text.as_str()),
                on_hand: i * 1_000_000_007,
                reserved: i,
                available: u64::MAX - i,
                low_stock_threshold: i % 3,
                sale: surge_engine::SaleRules {
                    purchase_limit_per_customer: i % 5,
                    sale_starts_at_ms: i.is_multiple_of(2).then_some(i * 86_400_123),
                    sale_ends_at_ms: i.is_multiple_of(3).then_some(u64::MAX / (i + 1)),
                },
            };
            let mut out = String::new();
            sku_json(&view, &mut out);
            let expected = serde_json::to_string(&SkuBody::from(view)).unwrap();
            assert_eq!(out, expected);
        }
    }
}
