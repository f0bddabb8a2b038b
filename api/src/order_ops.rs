//! v1.1 order operations: review hold and release, modification (partial cancel),
//! partial refunds, and the ledger.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use surge_engine::limits::{LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX};
use surge_engine::{Command, LedgerFilter, LedgerKind, OrderChange, Query};
use utoipa::IntoParams;

use crate::auth::{Auth, Operator, Reader, Storefront};
use crate::dto::*;
use crate::error::{ApiError, Problem};
use crate::extract::ApiQuery;
use crate::routes::{
    OrderWrite, check_cancel_reason, csv_field, filter_value, non_empty, parse_limit, parse_time,
    read,
};
use crate::state::{AppState, EXPORT_ROWS_MAX};
use crate::time::format_ms;

#[utoipa::path(post, path = "/v1/orders/{id}/hold", tag = "orders",
    params(("id" = String, Path, description = "Order id (`o<n>`)")),
    request_body = HoldReq,
    responses(
        (status = 200, description = "The order with its `hold` (holding a held order returns it unchanged); event `order.held`", body = OrderBody),
        (status = 404, description = "`unknown_order`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: only reserved, confirmed, picking or packed orders can be held, and only while the order can take changes. An order takes at most 20 changes that keep its status (holds, modifications, partial refunds; its creation and status changes count): past them, 409 `invalid_transition`; its status can still change, a hold be released and what is due be refunded.", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn hold_order(
    OrderWrite(call, req, ..): OrderWrite<Operator, HoldReq>,
) -> Result<Response, ApiError> {
    let command = Command::HoldOrder {
        id: call.order_id()?,
        reason: req.reason.into(),
        note: req.note,
        actor: call.actor(),
    };
    call.run(command).await
}

#[utoipa::path(post, path = "/v1/orders/{id}/release-hold", tag = "orders",
    params(("id" = String, Path, description = "Order id (`o<n>`)")),
    request_body(content = ReleaseHoldReq, description = "Optional: every field is; without a body (no `Content-Type`) it is `{}`"),
    responses(
        (status = 200, description = "`hold` is null; event `order.hold_released`", body = OrderBody),
        (status = 404, description = "`unknown_order`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: the order is not on hold", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn release_hold(
    OrderWrite(call, req, ..): OrderWrite<Operator, ReleaseHoldReq>,
) -> Result<Response, ApiError> {
    let command = Command::ReleaseHold {
        id: call.order_id()?,
        note: req.note,
        actor: call.actor(),
    };
    call.run(command).await
}

#[utoipa::path(patch, path = "/v1/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "Order id (`o<n>`)")),
    request_body = ModifyOrderReq,
    responses(
        (status = 200, description = "The order as modified; stock follows the new lines; event `order.modified`. On a paid order a lower total adds the difference to `refund_due_amount`, capped so that refunded plus due never passes what was paid (after a goodwill refund less is added, `refund_due_added` says how much; after a full one, nothing). A change that raises the total to the review amount (`SURGE_REVIEW_AMOUNT_MIN`) holds the order for review (`hold.reason` `review`, event `order.held`). A change that changes nothing (the same lines in the same order, note and address) answers the order as it is, with no event and no history entry, and takes none of its changes", body = OrderBody),
        (status = 400, description = "`validation_failed`: nothing to change (none of `lines`, `shipping_address`, `note`), one of them null, empty `lines`, or no `reason` while lines go down", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "`forbidden`: storefront with a reason other than customer_request / payment_failed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_order` / `unknown_sku`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`insufficient_stock`, or `invalid_transition` (not reserved or confirmed; a paid order's lines going up or prices changing; no changes left). An order takes at most 20 changes that keep its status (holds, modifications, partial refunds; its creation and status changes count): past them, 409 `invalid_transition`; its status can still change, a hold be released and what is due be refunded.", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn modify_order(
    OrderWrite(call, req, ..): OrderWrite<Storefront, ModifyOrderReq>,
) -> Result<Response, ApiError> {
    let lines = not_null("lines", req.lines)?;
    let shipping_address = not_null("shipping_address", req.shipping_address)?;
    let note = not_null("note", req.note)?;
    if lines.is_none() && shipping_address.is_none() && note.is_none() {
        // "Any of": a request that names nothing to change is a mistake, not a
        // modification to log and announce.
        return Err(ApiError::validation(
            "body",
            "nothing to change: give lines, shipping_address or note",
        ));
    }
    if let Some(reason) = req.reason {
        check_cancel_reason(call.who.role, reason)?;
    }
    let command = Command::ModifyOrder {
        change: Box::new(OrderChange {
            id: call.order_id()?,
            lines: lines.map(order_line_reqs),
            shipping_address: shipping_address.map(Into::into),
            note,
            reason: req.reason.map(Into::into),
            actor: call.actor(),
        }),
    };
    call.run(command).await
}

#[utoipa::path(post, path = "/v1/orders/{id}/refunds", tag = "orders",
    params(("id" = String, Path, description = "Order id (`o<n>`)")),
    request_body = RefundsReq,
    responses(
        (status = 200, description = "The order; the refund first pays what is due, beyond that it is goodwill. Honours `Idempotency-Key`", body = OrderBody),
        (status = 400, description = "`validation_failed`: amount 0, or over the largest order total", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_order`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`refund_exceeds_paid`: more than paid and not yet refunded; `invalid_transition`: the order has taken the 20 changes that keep its status it may (`POST /v1/orders/{id}/refund` still pays what is due)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn refund_amount(
    OrderWrite(call, req, ..): OrderWrite<Operator, RefundsReq>,
) -> Result<Response, ApiError> {
    // The schema's range: no order is paid more than it totals, so an amount past
    // the largest total is a bad field (400), whatever the order (not 409).
    let max = surge_engine::limits::ORDER_TOTAL_MAX;
    if req.amount > max {
        return Err(ApiError::validation(
            "amount",
            format!("must be at most {max}: no order totals more"),
        ));
    }
    let command = Command::RefundAmount {
        id: call.order_id()?,
        amount: req.amount,
        reason: req.reason,
        refund_ref: req.refund_ref,
        actor: call.actor(),
    };
    call.run(command).await
}

/// Filters of the ledger and its export. A filter given empty is refused; an empty
/// `cursor` or `limit` counts as absent.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LedgerParams {
    /// At or after: RFC 3339 (or milliseconds since the epoch).
    pub from: Option<String>,
    /// Before (exclusive): RFC 3339 (or milliseconds since the epoch).
    pub to: Option<String>,
    /// Order id (`o<n>`).
    pub order_id: Option<String>,
    /// `charge`, `refund` or `reversal`.
    pub kind: Option<String>,
    /// `next_cursor` of the previous page (list only).
    pub cursor: Option<String>,
    /// Page size, 1..=1000 (default 50; list only).
    pub limit: Option<String>,
}

/// The ledger export's parameters: the list's filters, without paging (the export
/// is the whole window).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LedgerExportParams {
    /// At or after: RFC 3339 (or milliseconds since the epoch).
    pub from: Option<String>,
    /// Before (exclusive): RFC 3339 (or milliseconds since the epoch).
    pub to: Option<String>,
    /// Order id (`o<n>`).
    pub order_id: Option<String>,
    /// `charge`, `refund` or `reversal`.
    pub kind: Option<String>,
}

impl LedgerParams {
    fn filter(&self) -> Result<LedgerFilter, ApiError> {
        ledger_filter(&self.from, &self.to, &self.order_id, &self.kind)
    }

    fn cursor(&self) -> Result<Option<u64>, ApiError> {
        match non_empty(&self.cursor) {
            None => Ok(None),
            Some(c) => c
                .parse()
                .map(Some)
                .map_err(|_| ApiError::validation("cursor", "not a cursor of this list")),
        }
    }
}

impl LedgerExportParams {
    fn filter(&self) -> Result<LedgerFilter, ApiError> {
        ledger_filter(&self.from, &self.to, &self.order_id, &self.kind)
    }
}

/// The ledger's filters, as the list and the export take them.
fn ledger_filter(
    from: &Option<String>,
    to: &Option<String>,
    order_id: &Option<String>,
    kind: &Option<String>,
) -> Result<LedgerFilter, ApiError> {
    Ok(LedgerFilter {
        from_ms: parse_time("from", filter_value("from", from)?)?,
        to_ms: parse_time("to", filter_value("to", to)?)?,
        order_id: match filter_value("order_id", order_id)? {
            None => None,
            Some(id) => Some(
                id.parse()
                    .map_err(|()| ApiError::validation("order_id", "not an order id"))?,
            ),
        },
        kind: match filter_value("kind", kind)? {
            None => None,
            Some(k) => Some(k.parse::<LedgerKind>().map_err(|()| {
                ApiError::validation("kind", "must be charge, refund or reversal")
            })?),
        },
    })
}

async fn ledger_page(
    st: &AppState,
    filter: LedgerFilter,
    cursor: Option<u64>,
    limit: usize,
) -> Result<surge_engine::Page<surge_engine::LedgerEntryView, u64>, ApiError> {
    let query = Query::ListLedger {
        filter,
        cursor,
        limit,
    };
    let page = read::<surge_engine::Page<surge_engine::LedgerEntryView, u64>>(st, query).await?;
    Ok(page)
}

#[utoipa::path(get, path = "/v1/ledger", tag = "ledger", params(LedgerParams),
    responses(
        (status = 200, description = "Money movements, oldest first", body = LedgerPage),
        (status = 400, description = "`validation_failed`: a bad filter or an unknown parameter", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_ledger(
    State(st): State<AppState>,
    _auth: Auth<Reader>,
    ApiQuery(p): ApiQuery<LedgerParams>,
) -> Result<Response, ApiError> {
    let limit = parse_limit(non_empty(&p.limit), LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX)?;
    let page = ledger_page(&st, p.filter()?, p.cursor()?, limit).await?;
    Ok(axum::Json(LedgerPage {
        items: page.items.into_iter().map(LedgerEntryBody::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    })
    .into_response())
}

#[utoipa::path(get, path = "/v1/ledger/export.csv", tag = "ledger", params(LedgerExportParams),
    responses((status = 200, description = "CSV (RFC 4180): `seq,at,order_id,order_no,kind,amount,ref,actor`, oldest first (a text cell that starts with `=`, `+`, `-` or `@` gets a leading `'`, against spreadsheet formulas); at most 100,000 rows, `X-Export-Truncated: true` when cut", content_type = "text/csv", body = String)))]
pub async fn export_ledger(
    State(st): State<AppState>,
    _auth: Auth<Reader>,
    // The export is the whole window: paging parameters are refused as unknown.
    ApiQuery(p): ApiQuery<LedgerExportParams>,
) -> Result<Response, ApiError> {
    let filter = p.filter()?;
    let mut out = String::from("seq,at,order_id,order_no,kind,amount,ref,actor\r\n");
    let mut cursor = None;
    let mut rows = 0usize;
    let mut truncated = false;
    'pages: loop {
        let page = ledger_page(&st, filter.clone(), cursor, LIST_LIMIT_MAX).await?;
        for e in page.items {
            if rows == EXPORT_ROWS_MAX {
                truncated = true;
                break 'pages;
            }
            let (actor, _) = surge_engine::split_actor(&e.actor);
            let fields = [
                e.seq.to_string(),
                format_ms(e.at_ms),
                e.order_id.to_string(),
                e.order_no.to_string(),
                e.kind.as_str().to_string(),
                e.amount.to_string(),
                e.reference,
                actor.to_string(),
            ];
            for (i, field) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                csv_field(&mut out, field);
            }
            out.push_str("\r\n");
            rows += 1;
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let mut response = out.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"ledger.csv\""),
    );
    if truncated {
        headers.insert("x-export-truncated", HeaderValue::from_static("true"));
    }
    Ok(response)
}
