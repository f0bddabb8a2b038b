//! `POST /v1/batch`: many commands in one request. Every op is parsed and checked on
//! its own, all are queued before any is awaited (so they share group commits), and
//! each succeeds or fails alone.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use surge_engine::{Acked, Command};
use utoipa::ToSchema;

use crate::auth::{Auth, Principal, Storefront};
use crate::dto::{CancelReasonDto, CreateOrderReq, LineDto, line_reqs, reply_json};
use crate::error::ApiError;
use crate::extract::{ApiJson, parse_op};
use crate::routes::{check_cancel_reason, create_order_command, json_text};
use crate::state::AppState;

/// `POST /v1/batch`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchReq {
    /// At most 10,000 ops. Each is an object with `op` = `reserve` (`lines`, `ttl_ms`),
    /// `commit` / `release` (`id`), `create_order` (the body of `POST /v1/orders`),
    /// `pay` (`id`, `amount`, `payment_ref`) or `cancel` (`id`, `reason`, `note`).
    #[schema(value_type = Vec<Object>)]
    pub ops: Vec<Box<RawValue>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BatchResponse {
    /// One per op, in order: the success body of the op (a reservation or an order)
    /// or a problem document with its `status` and `code`.
    #[schema(value_type = Vec<Object>)]
    pub results: Vec<Box<RawValue>>,
}

#[derive(Deserialize)]
struct OpTag {
    op: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReserveOp {
    #[serde(rename = "op")]
    _op: serde::de::IgnoredAny,
    lines: Vec<LineDto>,
    ttl_ms: Option<u64>,
    customer_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IdOp {
    #[serde(rename = "op")]
    _op: serde::de::IgnoredAny,
    id: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateOrderOp {
    #[serde(rename = "op")]
    _op: serde::de::IgnoredAny,
    order_no: String,
    customer_id: String,
    lines: Vec<crate::dto::OrderLineDto>,
    payment_ttl_ms: Option<u64>,
    reservation_id: Option<String>,
    #[serde(default)]
    channel: String,
    shipping_address: Option<crate::dto::AddressBody>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PayOp {
    #[serde(rename = "op")]
    _op: serde::de::IgnoredAny,
    id: String,
    amount: u64,
    #[serde(default)]
    payment_ref: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelOp {
    #[serde(rename = "op")]
    _op: serde::de::IgnoredAny,
    id: String,
    reason: CancelReasonDto,
    #[serde(default)]
    note: String,
}

fn op_command(
    st: &AppState,
    who: &Principal,
    raw: &RawValue,
    i: usize,
) -> Result<Command, ApiError> {
    let bytes = raw.get().as_bytes();
    let tag: OpTag = parse_op(bytes, i)?;
    let actor = who.actor.clone();
    let order_id = |id: &str| id.parse().map_err(|()| ApiError::unknown_order(id));
    let reservation_id = |id: &str| id.parse().map_err(|()| ApiError::unknown_reservation(id));
    Ok(match tag.op.as_str() {
        "reserve" => {
            let op: ReserveOp = parse_op(bytes, i)?;
            let ttl_ms = op.ttl_ms.unwrap_or(st.config().reservation_ttl_ms);
            match op.customer_id {
                None => Command::Reserve {
                    lines: line_reqs(op.lines),
                    ttl_ms,
                    actor,
                },
                Some(customer_id) => Command::ReserveFor {
                    lines: line_reqs(op.lines),
                    ttl_ms,
                    customer_id,
                    actor,
                },
            }
        }
        "commit" => {
            let op: IdOp = parse_op(bytes, i)?;
            Command::CommitReservation {
                id: reservation_id(&op.id)?,
                actor,
            }
        }
        "release" => {
            let op: IdOp = parse_op(bytes, i)?;
            Command::ReleaseReservation {
                id: reservation_id(&op.id)?,
                actor,
            }
        }
        "create_order" => {
            let op: CreateOrderOp = parse_op(bytes, i)?;
            let req = CreateOrderReq {
                order_no: op.order_no,
                customer_id: op.customer_id,
                lines: op.lines,
                payment_ttl_ms: op.payment_ttl_ms,
                reservation_id: op.reservation_id,
                channel: op.channel,
                shipping_address: op.shipping_address,
            };
            create_order_command(st, req, actor)?
        }
        "pay" => {
            let op: PayOp = parse_op(bytes, i)?;
            Command::PayOrder {
                id: order_id(&op.id)?,
                amount: op.amount,
                payment_ref: op.payment_ref,
                actor,
            }
        }
        "cancel" => {
            let op: CancelOp = parse_op(bytes, i)?;
            check_cancel_reason(who.role, op.reason)?;
            Command::CancelOrder {
                id: order_id(&op.id)?,
                reason: op.reason.into(),
                note: op.note,
                actor,
            }
        }
        other => {
            return Err(ApiError::validation(
                format!("ops[{i}].op"),
                format!(
                    "unknown op {other:?}: reserve, commit, release, create_order, pay or cancel"
                ),
            ));
        }
    })
}

fn problem_json(error: &ApiError) -> String {
    serde_json::to_string(&error.problem()).expect("a problem always serializes")
}

#[utoipa::path(post, path = "/v1/batch", tag = "batch",
    request_body = BatchReq,
    responses((status = 200, description = "One result per op, in order", body = BatchResponse)))]
pub async fn batch(
    State(st): State<AppState>,
    Auth(who, _): Auth<Storefront>,
    ApiJson(req, _): ApiJson<BatchReq>,
) -> Result<Response, ApiError> {
    let max = st.config().batch_ops_max;
    if req.ops.len() > max {
        return Err(ApiError::validation(
            "ops",
            format!("at most {max} ops per batch"),
        ));
    }
    let engine = st.engine()?;
    if engine.role() != surge_engine::Role::Leader {
        // The whole batch goes to the leader: none of its ops can succeed here.
        return Err(ApiError::from_engine(surge_engine::Error::NotLeader(
            format!(
                "this node is a {}: send writes to the leader",
                engine.role().name()
            ),
        )));
    }
    // One queue entry for the whole batch: the writer applies the ops in order in
    // one iteration and they are answered together, from one buffer.
    let mut commands = Vec::with_capacity(req.ops.len());
    let mut refused: Vec<(usize, ApiError)> = Vec::new();
    for (i, raw) in req.ops.iter().enumerate() {
        match op_command(&st, &who, raw, i) {
            Ok(command) => commands.push(command),
            Err(e) => refused.push((i, e)),
        }
    }
    // Each op still fails alone: when the batch cannot be queued (overloaded,
    // shutting down), each of its ops carries that problem.
    let answered = if commands.is_empty() {
        Ok(Vec::new())
    } else {
        match engine.submit_batch(commands) {
            Ok(ticket) => ticket.await.map_err(ApiError::from_engine),
            Err(e) => Err(ApiError::from_engine(e)),
        }
    };
    let (mut outcomes, unanswered) = match answered {
        Ok(outcomes) => (outcomes.into_iter(), None),
        Err(e) => (Vec::new().into_iter(), Some(e)),
    };
    let mut refused = refused.into_iter().peekable();
    // The answer is written into one buffer: each result is JSON text already.
    let mut body = String::with_capacity(16 + 224 * req.ops.len());
    body.push_str("{\"results\":[");
    for i in 0..req.ops.len() {
        let value = match (refused.next_if(|(at, _)| *at == i), &unanswered) {
            (Some((_, e)), _) => problem_json(&e),
            (None, Some(e)) => problem_json(e),
            (None, None) => match outcomes.next().expect("one outcome per submitted op") {
                Err(e) => problem_json(&ApiError::from_engine(e)),
                Ok(Acked {
                    outcome: Err(rejection),
                    ..
                }) => problem_json(&ApiError::from_rejection(&rejection)),
                Ok(Acked {
                    outcome: Ok(reply),
                    lsn,
                }) => with_lsn(reply_json(reply), lsn),
            },
        };
        if i > 0 {
            body.push(',');
        }
        body.push_str(&value);
    }
    body.push_str("]}");
    Ok(json_text(StatusCode::OK, body))
}

/// A successful result of a batch carries its record's LSN (`"lsn"`), as a single
/// write's answer carries `Surge-Lsn`.
fn with_lsn(body: String, lsn: Option<u64>) -> String {
    let Some(lsn) = lsn else {
        return body;
    };
    let rest = body
        .strip_prefix('{')
        .expect("a success body is a JSON object");
    let separator = if rest.trim_start().starts_with('}') {
        ""
    } else {
        ","
    };
    format!("{{\"lsn\":{lsn}{separator}{rest}")
}
