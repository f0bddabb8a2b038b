//! The one error type of the API: every failure becomes an RFC 9457
//! `application/problem+json` body with a stable `code`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use surge_engine::{
    Error as EngineError, Field, LineField, OrderStatus, Rejection, SaleClosed, Shortage, Unit,
    Violation,
};
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";

/// One SKU that is short (`insufficient_stock`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ShortLine {
    pub sku: String,
    pub requested: u64,
    pub available: u64,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:surge:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    pub title: &'static str,
    pub status: u16,
    /// The stable error code (`validation_failed`, `insufficient_stock`, ...).
    pub code: &'static str,
    /// A sentence for humans; for `validation_failed` it names the field.
    pub detail: String,
    /// The offending field or header (`lines[0].qty`, `Idempotency-Key`), when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// For `insufficient_stock`: one entry per SKU that is short.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<Vec<ShortLine>>,
    /// For `purchase_limit_exceeded` and `sale_not_open`: what was refused and why.
    #[serde(flatten)]
    pub sale: Option<SaleRefusal>,
}

/// The members of a `purchase_limit_exceeded` or `sale_not_open` problem.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SaleRefusal {
    /// The SKU refused (always there when the problem is one of these two; not
    /// required by the schema, which flattens these members into every problem:
    /// `serde(default)` tells utoipa so).
    #[serde(default)]
    pub sku: String,
    /// `purchase_limit_exceeded`: the SKU's limit per customer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// `purchase_limit_exceeded`: units that already count for the customer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub already: Option<u64>,
    /// `purchase_limit_exceeded`: units asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested: Option<u64>,
    /// `sale_not_open` before the sale: when it opens (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opens_at: Option<String>,
    /// `sale_not_open` after the sale: when it closed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_at: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
    pub lines: Option<Vec<ShortLine>>,
    pub sale: Option<Box<SaleRefusal>>,
    /// Seconds for a `Retry-After` header.
    pub retry_after_s: Option<u32>,
}

fn title(code: &str) -> &'static str {
    match code {
        "validation_failed" => "Validation failed",
        "insufficient_stock" => "Insufficient stock",
        "unknown_sku" => "Unknown SKU",
        "unknown_order" => "Unknown order",
        "unknown_reservation" => "Unknown reservation",
        "invalid_transition" => "Invalid transition",
        "order_shipped" => "Order already shipped",
        "duplicate_order_no" => "Duplicate order number",
        "idempotency_conflict" => "Idempotency key conflict",
        "order_on_hold" => "Order on hold",
        "refund_exceeds_paid" => "Refund exceeds the amount paid",
        "purchase_limit_exceeded" => "Purchase limit exceeded",
        "sale_not_open" => "Sale not open",
        "unauthorized" => "Unauthorized",
        "forbidden" => "Forbidden",
        "overloaded" => "Overloaded",
        "request_timeout" => "Request timeout",
        "storage_unavailable" => "Storage unavailable",
        "not_leader" => "Not the leader",
        "not_found" => "Not found",
        "method_not_allowed" => "Method not allowed",
        "internal" => "Internal error",
        _ => "Error",
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            detail: detail.into(),
            field: None,
            lines: None,
            sale: None,
            retry_after_s: None,
        }
    }

    /// 400 `validation_failed` naming the field.
    pub fn validation(field: impl Into<String>, detail: impl AsRef<str>) -> ApiError {
        let field = field.into();
        let detail = format!("{field}: {}", detail.as_ref());
        ApiError {
            field: Some(field),
            ..ApiError::new(StatusCode::BAD_REQUEST, "validation_failed", detail)
        }
    }

    pub fn unauthorized(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    pub fn unknown_order(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_order",
            format!("order {id} does not exist"),
        )
    }

    pub fn unknown_reservation(id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_reservation",
            format!("reservation {id} does not exist"),
        )
    }

    /// 408 `request_timeout`: the body did not arrive in time; nothing was done.
    pub fn body_timed_out(limit_ms: u64) -> ApiError {
        ApiError {
            field: Some("body".into()),
            ..ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("body: not received within {limit_ms} ms of the headers; nothing was done"),
            )
        }
    }

    pub fn overloaded(detail: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_s: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", detail)
        }
    }

    /// A write on a standby, or on a former leader a newer one fenced.
    pub fn not_leader(detail: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_s: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", detail)
        }
    }

    pub fn storage_unavailable(detail: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_s: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                detail,
            )
        }
    }

    /// A business refusal from the engine: its stable code, status and sentence.
    pub fn from_rejection(rejection: &Rejection) -> ApiError {
        match rejection {
            // A quantity summed over the lines of one SKU: the field is the line
            // where the sum went over, the detail says it is a sum.
            Rejection::Validation {
                field:
                    Field::Line {
                        index,
                        part: LineField::SummedQty { sku },
                    },
                violation,
            } => ApiError::validation(
                format!("lines[{index}].qty"),
                format!(
                    "summed over the lines for SKU {sku}, {}",
                    violation_text(violation)
                ),
            ),
            Rejection::Validation { field, violation } => {
                ApiError::validation(field_path(field), violation_text(violation))
            }
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
                ApiError {
                    lines: Some(lines.iter().map(short_line).collect()),
                    ..ApiError::new(
                        StatusCode::CONFLICT,
                        "insufficient_stock",
                        format!("not enough stock for {}", parts.join(", ")),
                    )
                }
            }
            Rejection::UnknownSku { sku } => ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_sku",
                format!("SKU {sku:?} does not exist"),
            ),
            Rejection::UnknownOrder { order } => ApiError::unknown_order(order),
            Rejection::UnknownReservation { id } => ApiError::unknown_reservation(&id.to_string()),
            Rejection::InvalidTransition { detail } => {
                ApiError::new(StatusCode::CONFLICT, "invalid_transition", detail.clone())
            }
            Rejection::OrderShipped { id, status } => ApiError::new(
                StatusCode::CONFLICT,
                "order_shipped",
                if *status == OrderStatus::Returned {
                    // The return flow is behind it already: pointing there misleads.
                    format!(
                        "order {id} is returned: a shipped order cannot be cancelled, \
                         and this one has come back already"
                    )
                } else {
                    format!(
                        "order {id} is {status}: a shipped order cannot be cancelled; \
                         use the return flow (POST /v1/orders/{id}/return)"
                    )
                },
            ),
            Rejection::DuplicateOrderNo { order_no, id } => ApiError::new(
                StatusCode::CONFLICT,
                "duplicate_order_no",
                format!("order_no {order_no:?} is already used by order {id}"),
            ),
            Rejection::IdempotencyConflict { key } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_conflict",
                format!("{IDEMPOTENCY_KEY} {key:?} was already used with a different request"),
            ),
            // A capacity limit of the engine: the client may retry later.
            Rejection::LimitReached { what } => {
                ApiError::overloaded(format!("limit reached: {what}"))
            }
            Rejection::OrderOnHold { id, status } => ApiError::new(
                StatusCode::CONFLICT,
                "order_on_hold",
                format!(
                    "order {id} is {status} and on hold: release the hold first \
                     (POST /v1/orders/{id}/release-hold)"
                ),
            ),
            Rejection::RefundExceedsPaid {
                id,
                refundable,
                requested,
            } => ApiError {
                field: Some("amount".into()),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "refund_exceeds_paid",
                    format!(
                        "order {id}: a refund of {requested} exceeds the {refundable} paid and \
                         not yet refunded"
                    ),
                )
            },
            Rejection::PurchaseLimitExceeded {
                sku,
                limit,
                already,
                requested,
            } => ApiError {
                sale: Some(Box::new(SaleRefusal {
                    sku: sku.clone(),
                    limit: Some(*limit),
                    already: Some(*already),
                    requested: Some(*requested),
                    opens_at: None,
                    closed_at: None,
                })),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "purchase_limit_exceeded",
                    format!(
                        "SKU {sku:?} allows {limit} units per customer: {already} already \
                         count for this customer, {requested} more were asked for"
                    ),
                )
            },
            Rejection::SaleNotOpen { sku, closed } => {
                let (detail, opens_at, closed_at) = match *closed {
                    SaleClosed::NotYet { opens_at_ms } => {
                        let at = crate::time::format_ms(opens_at_ms);
                        (
                            format!("the sale of SKU {sku:?} opens at {at}"),
                            Some(at),
                            None,
                        )
                    }
                    SaleClosed::Over { closed_at_ms } => {
                        let at = crate::time::format_ms(closed_at_ms);
                        (
                            format!("the sale of SKU {sku:?} closed at {at}"),
                            None,
                            Some(at),
                        )
                    }
                };
                ApiError {
                    sale: Some(Box::new(SaleRefusal {
                        sku: sku.clone(),
                        limit: None,
                        already: None,
                        requested: None,
                        opens_at,
                        closed_at,
                    })),
                    ..ApiError::new(StatusCode::CONFLICT, "sale_not_open", detail)
                }
            }
        }
    }

    /// A runtime error of the engine (queue full, storage, shutdown).
    pub fn from_engine(error: EngineError) -> ApiError {
        match error {
            EngineError::Overloaded(_) => ApiError::overloaded(error.to_string()),
            // No code of the contract fits "shutting down" better: the client should
            // retry, here after a restart or elsewhere.
            EngineError::ShuttingDown => ApiError::overloaded(error.to_string()),
            EngineError::NotLeader(_) => ApiError::not_leader(error.to_string()),
            other => ApiError::storage_unavailable(other.to_string()),
        }
    }

    pub fn problem(&self) -> Problem {
        Problem {
            type_: format!("urn:surge:problem:{}", self.code),
            title: title(self.code),
            status: self.status.as_u16(),
            code: self.code,
            detail: self.detail.clone(),
            field: self.field.clone(),
            lines: self.lines.clone(),
            sale: self.sale.as_deref().cloned(),
        }
    }
}

/// The header that carries an idempotency key.
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// Where a field of an engine command came from in the request: a JSON path into the
/// body (`lines[0].qty`), a path parameter's name, or a header.
pub fn field_path(field: &Field) -> String {
    let name = match field {
        Field::Sku => "sku",
        Field::Name => "name",
        Field::OnHand => "on_hand",
        Field::LowStockThreshold => "low_stock_threshold",
        Field::Delta => "delta",
        Field::Note => "note",
        Field::Actor => "actor",
        Field::TtlMs => "ttl_ms",
        Field::PaymentTtlMs => "payment_ttl_ms",
        Field::Lines => "lines",
        Field::OrderNo => "order_no",
        Field::CustomerId => "customer_id",
        Field::Amount => "amount",
        Field::PaymentRef => "payment_ref",
        Field::To => "to",
        Field::TrackingNo => "tracking_no",
        Field::Reason => "reason",
        Field::RefundRef => "refund_ref",
        Field::IdempotencyKey => IDEMPOTENCY_KEY,
        Field::WindowMs => "window_ms",
        Field::BudgetBytes => "budget_bytes",
        // The whole command: the request body it came from.
        Field::Command => "body",
        Field::Line { index, part } => {
            return match part {
                LineField::Sku => format!("lines[{index}].sku"),
                LineField::Qty => format!("lines[{index}].qty"),
                LineField::UnitPrice => format!("lines[{index}].unit_price"),
                LineField::SummedQty { sku } => {
                    format!("lines[{index}].qty (summed for SKU {sku})")
                }
            };
        }
        Field::Legacy(path) => return path.clone(),
        Field::Channel => "channel",
        Field::Address(part) => return format!("shipping_address.{}", part.as_str()),
        Field::RefundAmount => "amount",
        Field::ShipSlaMs => "SURGE_SHIP_SLA_MS",
        Field::ReviewAmountMin => "SURGE_REVIEW_AMOUNT_MIN",
        Field::PurchaseLimitPerCustomer => "purchase_limit_per_customer",
        Field::SaleStartsAt => "sale_starts_at",
        Field::SaleEndsAt => "sale_ends_at",
        Field::Rules => "rules",
    };
    name.to_string()
}

/// What is wrong with a field, as the sentence after `field: `.
pub fn violation_text(violation: &Violation) -> String {
    match violation {
        Violation::Empty => "must not be empty".into(),
        Violation::TooLong { max, got } => format!("must be at most {max} bytes, got {got}"),
        Violation::ControlCharacters => "must not contain control characters".into(),
        Violation::SkuIdLength { min, max } => format!("must be {min} to {max} bytes"),
        Violation::SkuIdCharacters => "may contain only letters, digits and . _ : -".into(),
        Violation::OutOfRange { min, max, unit } => {
            let unit = match unit {
                Unit::Count => "",
                Unit::Millis => " ms",
                Unit::Bytes => " bytes",
            };
            format!("must be between {min} and {max}{unit}")
        }
        Violation::AboveMax { max } => format!("must be at most {max}"),
        Violation::TooManyLines { max, got } => format!("at most {max} lines, got {got}"),
        Violation::Zero => "must not be zero".into(),
        Violation::InboundNotPositive => {
            "an inbound adjustment must be positive; use reason correction".into()
        }
        Violation::OnHandAboveMax { max } => format!("on_hand would exceed {max}"),
        Violation::LinesDifferFromReservation { id } => {
            format!("must match the lines of reservation {id}")
        }
        Violation::NotOrderTotal { total, got } => {
            format!("must equal the order total {total}, got {got}")
        }
        Violation::NotAFulfilmentStep => {
            "must be one of picking, packed, shipped, delivered, completed".into()
        }
        Violation::RecordTooLarge { len, max } => format!(
            "the request encodes to {len} bytes, over the log's record limit of {max} bytes"
        ),
        Violation::Legacy(text) => text.clone(),
        Violation::Required => "is required here".into(),
        Violation::NotAfterStart => "must be after sale_starts_at".into(),
        Violation::NotBeforeEnd => "must be before sale_ends_at (the SKU's current end)".into(),
        Violation::OrderTotalAboveMax { max, got } => {
            format!("must total at most {max} minor units, got {got}")
        }
    }
}

fn short_line(s: &Shortage) -> ShortLine {
    ShortLine {
        sku: s.sku.to_string(),
        requested: s.requested,
        available: s.available,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).expect("a problem always serializes");
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(secs) = self.retry_after_s {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: the connection cannot
            // carry another request after it.
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_errors_map_to_503_with_retry_after() {
        for error in [
            EngineError::Overloaded(8),
            EngineError::ShuttingDown,
            EngineError::StorageUnavailable("disk full".into()),
        ] {
            let response = ApiError::from_engine(error).into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(response.headers().contains_key(header::RETRY_AFTER));
            assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        }
        let e = ApiError::from_engine(EngineError::Overloaded(8));
        assert_eq!(e.code, "overloaded");
        let e = ApiError::from_engine(EngineError::StorageUnavailable("x".into()));
        assert_eq!(e.code, "storage_unavailable");
    }

    /// Every refusal renders as it did when the engine built the text: the codes,
    /// field paths and sentences of the contract.
    #[test]
    fn refusals_render_with_the_contracts_codes_fields_and_sentences() {
        use surge_engine::{OrderId, OrderStatus, ReservationId};
        let line = |index, part| Field::Line { index, part };
        let cases: Vec<(Rejection, u16, &str, Option<&str>, &str)> = vec![
            (
                Rejection::invalid(
                    line(0, LineField::Qty),
                    Violation::OutOfRange {
                        min: 1,
                        max: 1_000_000,
                        unit: Unit::Count,
                    },
                ),
                400,
                "validation_failed",
                Some("lines[0].qty"),
                "lines[0].qty: must be between 1 and 1000000",
            ),
            (
                Rejection::invalid(
                    line(2, LineField::SummedQty { sku: "A".into() }),
                    Violation::OutOfRange {
                        min: 1,
                        max: 1_000_000,
                        unit: Unit::Count,
                    },
                ),
                400,
                "validation_failed",
                Some("lines[2].qty"),
                "lines[2].qty: summed over the lines for SKU A, must be between 1 and 1000000",
            ),
            (
                Rejection::invalid(
                    Field::TtlMs,
                    Violation::OutOfRange {
                        min: 1_000,
                        max: 604_800_000,
                        unit: Unit::Millis,
                    },
                ),
                400,
                "validation_failed",
                Some("ttl_ms"),
                "ttl_ms: must be between 1000 and 604800000 ms",
            ),
            (
                Rejection::invalid(
                    Field::IdempotencyKey,
                    Violation::TooLong { max: 128, got: 129 },
                ),
                400,
                "validation_failed",
                Some("Idempotency-Key"),
                "Idempotency-Key: must be at most 128 bytes, got 129",
            ),
            (
                Rejection::invalid(Field::Sku, Violation::SkuIdLength { min: 1, max: 64 }),
                400,
                "validation_failed",
                Some("sku"),
                "sku: must be 1 to 64 bytes",
            ),
            (
                Rejection::invalid(line(1, LineField::Sku), Violation::SkuIdCharacters),
                400,
                "validation_failed",
                Some("lines[1].sku"),
                "lines[1].sku: may contain only letters, digits and . _ : -",
            ),
            (
                Rejection::invalid(
                    line(0, LineField::UnitPrice),
                    Violation::AboveMax {
                        max: 10_000_000_000,
                    },
                ),
                400,
                "validation_failed",
                Some("lines[0].unit_price"),
                "lines[0].unit_price: must be at most 10000000000",
            ),
            (
                Rejection::invalid(Field::Lines, Violation::TooManyLines { max: 64, got: 65 }),
                400,
                "validation_failed",
                Some("lines"),
                "lines: at most 64 lines, got 65",
            ),
            (
                Rejection::invalid(
                    Field::Lines,
                    Violation::LinesDifferFromReservation {
                        id: ReservationId(7),
                    },
                ),
                400,
                "validation_failed",
                Some("lines"),
                "lines: must match the lines of reservation r7",
            ),
            (
                Rejection::invalid(Field::Delta, Violation::InboundNotPositive),
                400,
                "validation_failed",
                Some("delta"),
                "delta: an inbound adjustment must be positive; use reason correction",
            ),
            (
                Rejection::invalid(
                    Field::Amount,
                    Violation::NotOrderTotal {
                        total: 300,
                        got: 200,
                    },
                ),
                400,
                "validation_failed",
                Some("amount"),
                "amount: must equal the order total 300, got 200",
            ),
            (
                Rejection::invalid(Field::To, Violation::NotAFulfilmentStep),
                400,
                "validation_failed",
                Some("to"),
                "to: must be one of picking, packed, shipped, delivered, completed",
            ),
            (
                Rejection::invalid(
                    Field::Command,
                    Violation::RecordTooLarge {
                        len: 2_000_000,
                        max: 1_048_576,
                    },
                ),
                400,
                "validation_failed",
                Some("body"),
                "body: the request encodes to 2000000 bytes, over the log's record limit of 1048576 bytes",
            ),
            (
                Rejection::invalid(
                    Field::Legacy("lines[0].qty".into()),
                    Violation::Legacy("must be between 1 and 1000000".into()),
                ),
                400,
                "validation_failed",
                Some("lines[0].qty"),
                "lines[0].qty: must be between 1 and 1000000",
            ),
            (
                Rejection::OrderShipped {
                    id: OrderId(3),
                    status: OrderStatus::Shipped,
                },
                409,
                "order_shipped",
                None,
                "order o3 is shipped: a shipped order cannot be cancelled; use the return flow (POST /v1/orders/o3/return)",
            ),
            (
                Rejection::OrderShipped {
                    id: OrderId(3),
                    status: OrderStatus::Returned,
                },
                409,
                "order_shipped",
                None,
                "order o3 is returned: a shipped order cannot be cancelled, and this one has come back already",
            ),
            (
                Rejection::IdempotencyConflict { key: "k1".into() },
                422,
                "idempotency_conflict",
                None,
                "Idempotency-Key \"k1\" was already used with a different request",
            ),
            (
                Rejection::UnknownSku { sku: "X".into() },
                404,
                "unknown_sku",
                None,
                "SKU \"X\" does not exist",
            ),
            (
                Rejection::UnknownReservation {
                    id: ReservationId(9),
                },
                404,
                "unknown_reservation",
                None,
                "reservation r9 does not exist",
            ),
            (
                Rejection::LimitReached {
                    what: "10 SKUs".into(),
                },
                503,
                "overloaded",
                None,
                "limit reached: 10 SKUs",
            ),
        ];
        for (rejection, status, code, field, detail) in cases {
            let e = ApiError::from_rejection(&rejection);
            assert_eq!(e.status.as_u16(), status, "{rejection:?}");
            assert_eq!(e.code, code, "{rejection:?}");
            assert_eq!(e.field.as_deref(), field, "{rejection:?}");
            assert_eq!(e.detail, detail, "{rejection:?}");
        }
    }
}
