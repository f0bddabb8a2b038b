//! The one error type of the API: every failure becomes an RFC 9457
//! `application/problem+json` body with a stable `code`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use surge_engine::{Error as EngineError, Rejection, Shortage};
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
}

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
    pub lines: Option<Vec<ShortLine>>,
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
        "unauthorized" => "Unauthorized",
        "forbidden" => "Forbidden",
        "overloaded" => "Overloaded",
        "storage_unavailable" => "Storage unavailable",
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

    pub fn overloaded(detail: impl Into<String>) -> ApiError {
        ApiError {
            retry_after_s: Some(1),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", detail)
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

    /// A business refusal from the engine.
    pub fn from_rejection(rejection: &Rejection) -> ApiError {
        let code = rejection.code();
        let detail = rejection.detail();
        match rejection {
            Rejection::Validation { field, .. } => ApiError {
                field: Some(field.clone()),
                ..ApiError::new(StatusCode::BAD_REQUEST, code, detail)
            },
            Rejection::InsufficientStock { lines } => ApiError {
                lines: Some(lines.iter().map(short_line).collect()),
                ..ApiError::new(StatusCode::CONFLICT, code, detail)
            },
            Rejection::UnknownSku { .. }
            | Rejection::UnknownOrder { .. }
            | Rejection::UnknownReservation { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, code, detail)
            }
            Rejection::InvalidTransition { .. }
            | Rejection::OrderShipped { .. }
            | Rejection::DuplicateOrderNo { .. } => {
                ApiError::new(StatusCode::CONFLICT, code, detail)
            }
            Rejection::IdempotencyConflict { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
            }
            // A capacity limit of the engine: the client may retry later.
            Rejection::LimitReached { .. } => ApiError::overloaded(detail),
        }
    }

    /// A runtime error of the engine (queue full, storage, shutdown).
    pub fn from_engine(error: EngineError) -> ApiError {
        match error {
            EngineError::Overloaded(_) => ApiError::overloaded(error.to_string()),
            // No code of the contract fits "shutting down" better: the client should
            // retry, here after a restart or elsewhere.
            EngineError::ShuttingDown => ApiError::overloaded(error.to_string()),
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
}
