//! The event feed: JSON polling and Server-Sent Events. `seq` is the WAL position, so
//! a client that resumes after its last `seq` (or `Last-Event-ID`) misses nothing and
//! sees nothing twice, across reconnects and server restarts.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use surge_engine::{EngineHandle, Event, EventKind, EventLog};
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Auth, Reader};
use crate::error::ApiError;
use crate::extract::ApiQuery;
use crate::state::{AppState, EVENTS_LIMIT_DEFAULT, EVENTS_LIMIT_MAX};
use crate::time::format_ms;

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventParams {
    /// Events with `seq` greater than this (default 0: from the oldest kept).
    /// For SSE, a `Last-Event-ID` header takes precedence.
    pub after: Option<String>,
    /// Events per page, 1..=1000 (default 100; JSON only).
    pub limit: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// `{"seq", "at", "type", ...}` with the fields of each type flattened; SKUs are
    /// named by their ids, orders and reservations by `order_id` / `reservation_id`.
    #[schema(value_type = Vec<Object>)]
    pub events: Vec<Value>,
    /// Pass as `after` for the next page.
    pub next: u64,
    /// Some events after `after` were dropped from memory before they were read
    /// (the feed keeps the newest 1,000,000).
    pub truncated: bool,
}

/// One event as JSON.
pub fn event_json(log: &EventLog, event: &Event) -> Value {
    let sku = |idx| Value::from(&*log.sku_name(idx));
    let mut m = Map::new();
    m.insert("seq".into(), event.seq.into());
    m.insert("at".into(), format_ms(event.at_ms).into());
    m.insert("type".into(), event.kind.type_name().into());
    let fields = match &event.kind {
        EventKind::SkuDefined {
            sku: s,
            on_hand,
            low_stock_threshold,
        } => {
            json!({"sku": sku(*s), "on_hand": on_hand, "low_stock_threshold": low_stock_threshold})
        }
        EventKind::StockAdjusted {
            sku: s,
            delta,
            reason,
            on_hand,
            available,
        } => json!({
            "sku": sku(*s), "delta": delta, "reason": reason.as_str(),
            "on_hand": on_hand, "available": available
        }),
        EventKind::StockLow {
            sku: s,
            available,
            threshold,
        } => {
            json!({"sku": sku(*s), "available": available, "threshold": threshold})
        }
        EventKind::StockOut { sku: s } => json!({"sku": sku(*s)}),
        EventKind::ReservationHeld {
            id,
            lines,
            expires_at_ms,
        } => json!({
            "reservation_id": id.to_string(),
            "lines": lines.iter().map(|(s, q)| json!({"sku": sku(*s), "qty": q})).collect::<Vec<_>>(),
            "expires_at": format_ms(*expires_at_ms),
        }),
        EventKind::ReservationCommitted { id }
        | EventKind::ReservationReleased { id }
        | EventKind::ReservationExpired { id } => json!({"reservation_id": id.to_string()}),
        EventKind::OrderCreatedV3 {
            id,
            order_no,
            customer_id,
            total,
        } => json!({
            "order_id": id.to_string(), "order_no": order_no.to_string(),
            "customer_id": customer_id.to_string(), "total": total
        }),
        EventKind::OrderPaidV3 { id, amount } => {
            json!({"order_id": id.to_string(), "amount": amount})
        }
        EventKind::OrderCreated(e) => Value::Object(created(log, e)),
        EventKind::OrderCreatedBy(e) => {
            let mut m = created(log, &e.created);
            insert_actor(&mut m, &e.actor);
            Value::Object(m)
        }
        EventKind::OrderPaid(e) => Value::Object(paid(log, e)),
        EventKind::OrderPaidBy(e) => {
            let mut m = paid(log, &e.paid);
            insert_actor(&mut m, &e.actor);
            Value::Object(m)
        }
        EventKind::OrderCancelled(e) => {
            let surge_engine::event::OrderCancelled {
                id,
                order,
                reason,
                note,
                actor,
                refund_due_amount,
                restocked,
            } = &**e;
            let mut m = brief(log, *id, order);
            m.insert("reason".into(), reason.as_str().into());
            insert_closing(&mut m, log, note, actor, *refund_due_amount, restocked);
            Value::Object(m)
        }
        EventKind::OrderReturned(e) => {
            let surge_engine::event::OrderReturned {
                id,
                order,
                kind,
                restock,
                reason,
                note,
                actor,
                refund_due_amount,
                restocked,
            } = &**e;
            let mut m = brief(log, *id, order);
            m.insert("kind".into(), kind.as_str().into());
            m.insert("restock".into(), (*restock).into());
            m.insert("reason".into(), reason.to_string().into());
            insert_closing(&mut m, log, note, actor, *refund_due_amount, restocked);
            Value::Object(m)
        }
        EventKind::OrderModified(e) => Value::Object(order_modified(log, e)),
        EventKind::OrderModifiedFull(e) => {
            let surge_engine::event::OrderModifiedFull {
                modified,
                shipping_address,
                note,
            } = &**e;
            let mut m = order_modified(log, modified);
            m.insert(
                "shipping_address".into(),
                shipping_address.as_ref().map_or(Value::Null, |a| {
                    serde_json::to_value(crate::dto::AddressBody::from(a.clone()))
                        .expect("an address serializes")
                }),
            );
            m.insert("note".into(), note.to_string().into());
            Value::Object(m)
        }
        EventKind::OrderHeld(e) => {
            let surge_engine::event::OrderHeld {
                id,
                order_no,
                reason,
                note,
                actor,
            } = &**e;
            let mut m = order_ref(*id, order_no);
            m.insert("reason".into(), reason.as_str().into());
            m.insert("note".into(), note.to_string().into());
            insert_actor(&mut m, actor);
            Value::Object(m)
        }
        EventKind::OrderHoldReleased(e) => {
            let surge_engine::event::OrderHoldReleased {
                id,
                order_no,
                note,
                actor,
            } = &**e;
            let mut m = order_ref(*id, order_no);
            m.insert("note".into(), note.to_string().into());
            insert_actor(&mut m, actor);
            Value::Object(m)
        }
        EventKind::OrderDelayed(e) => {
            let surge_engine::event::OrderDelayed {
                id,
                order_no,
                customer_id,
                paid_at_ms,
                delayed_since_ms,
            } = &**e;
            json!({
                "order_id": id.to_string(), "order_no": order_no.to_string(),
                "customer_id": customer_id.to_string(), "paid_at": format_ms(*paid_at_ms),
                "delayed_since": format_ms(*delayed_since_ms)
            })
        }
        EventKind::StockRestored {
            sku: s,
            qty,
            available,
        } => json!({"sku": sku(*s), "qty": qty, "available": available}),
        EventKind::OrderRefundedAmount(e) => {
            let surge_engine::event::OrderRefunded {
                id,
                order_no,
                amount,
                reason,
                refund_ref,
                actor,
                refunded_amount,
                refund_due_amount,
            } = &**e;
            let mut m = order_ref(*id, order_no);
            m.insert("amount".into(), (*amount).into());
            m.insert("reason".into(), reason.to_string().into());
            m.insert("refund_ref".into(), refund_ref.to_string().into());
            insert_actor(&mut m, actor);
            m.insert("refunded_amount".into(), (*refunded_amount).into());
            m.insert("refund_due_amount".into(), (*refund_due_amount).into());
            Value::Object(m)
        }
        EventKind::OrderStatusChanged { id, from, to } => {
            json!({"order_id": id.to_string(), "from": from.as_str(), "to": to.as_str()})
        }
        EventKind::OrderCancelledV3 {
            id,
            reason,
            actor,
            refund_due,
        } => {
            let mut m = Map::new();
            m.insert("order_id".into(), id.to_string().into());
            m.insert("reason".into(), reason.as_str().into());
            insert_actor(&mut m, actor);
            m.insert("refund_due".into(), (*refund_due).into());
            Value::Object(m)
        }
        EventKind::OrderExpired { id } => json!({"order_id": id.to_string()}),
        EventKind::OrderStatusChangedFull(e) => {
            let surge_engine::event::OrderStatusChanged {
                id,
                order,
                from,
                to,
                note,
                tracking_no,
                actor,
            } = &**e;
            let mut m = brief(log, *id, order);
            m.insert("from".into(), from.as_str().into());
            m.insert("to".into(), to.as_str().into());
            m.insert("note".into(), note.to_string().into());
            m.insert("tracking_no".into(), tracking_no.to_string().into());
            insert_actor(&mut m, actor);
            Value::Object(m)
        }
        EventKind::OrderExpiredFull(e) => {
            let surge_engine::event::OrderExpired { id, order } = &**e;
            Value::Object(brief(log, *id, order))
        }
        EventKind::StockAdjustedBy(e) => {
            let surge_engine::event::StockAdjusted {
                sku: s,
                delta,
                reason,
                on_hand,
                available,
                note,
                actor,
            } = &**e;
            let mut m = Map::new();
            m.insert("sku".into(), sku(*s));
            m.insert("delta".into(), (*delta).into());
            m.insert("reason".into(), reason.as_str().into());
            m.insert("on_hand".into(), (*on_hand).into());
            m.insert("available".into(), (*available).into());
            m.insert("note".into(), note.to_string().into());
            insert_actor(&mut m, actor);
            Value::Object(m)
        }
        EventKind::OrderReturnedV3 { id, restock } => {
            json!({"order_id": id.to_string(), "restock": restock})
        }
        EventKind::OrderRefunded { id, amount } => {
            json!({"order_id": id.to_string(), "amount": amount})
        }
    };
    if let Value::Object(fields) = fields {
        m.extend(fields);
    }
    Value::Object(m)
}

/// A seq a client sends back: 0..=2^63-1, the `int64` the document declares (a
/// larger one would come back as `next`, past what JSON clients hold exactly).
fn parse_after(text: Option<&str>, field: &str) -> Result<u64, ApiError> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(0),
        Some(t) => t
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|&seq| i64::try_from(seq).is_ok())
            .ok_or_else(|| {
                ApiError::validation(field, format!("must be an integer seq in 0..={}", i64::MAX))
            }),
    }
}

fn wants_sse(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        // Media types are case-insensitive (RFC 9110 §8.3.1).
        .is_some_and(|a| {
            a.as_bytes()
                .windows(b"text/event-stream".len())
                .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
        })
}

#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventParams,
        ("Last-Event-ID" = Option<String>, Header, description = "SSE: resume after this seq"),
        ("Accept" = Option<String>, Header, description = "`text/event-stream` for a live Server-Sent Events stream (`id:` = seq, `event:` = type, `data:` = the event JSON; keep-alive comments every 15 s). The feed keeps the newest 1,000,000 events in memory: a stream that resumes from an older `Last-Event-ID`, or falls that far behind, first gets `event: truncated` (no `id:`) with `data: {\"type\": \"truncated\", \"after\": <seq>, \"resumes_at\": <seq>}` and goes on from the oldest event kept (a stream with no cursor starts after seq 0, so it is told too once events were dropped); the JSON page says `truncated: true`. Downstream that must see every event reads them from NATS JetStream (`--events-to`)")),
    responses((status = 200, description = "A page of events, or an SSE stream. `seq` is the log position: a record takes the position of its first event and its events are numbered on from it (a reservation and the `stock.low` it causes: `n`, `n+1`). Strictly increasing, never reused, the same after a restart, and with gaps: a logged record that emits no event still takes a position (such as a keyed request the engine refused for a reason other than its form or a limit, logged so that its key replays the refusal after a restart, or a keyed batch's op refused whatever the reason)", body = EventPage),
        (status = 503, description = "`overloaded` (with `Retry-After`): 1,000 event streams (`EVENT_STREAMS_MAX`) are open already; pages are not limited", body = crate::error::Problem, content_type = "application/problem+json")))]
pub async fn events(
    State(st): State<AppState>,
    _auth: Auth<Reader>,
    headers: HeaderMap,
    ApiQuery(p): ApiQuery<EventParams>,
) -> Result<Response, ApiError> {
    let engine = st.engine()?.clone();
    if wants_sse(&headers) {
        let after = match headers.get("last-event-id") {
            Some(v) => parse_after(v.to_str().ok().or(Some("x")), "Last-Event-ID")?,
            None => parse_after(p.after.as_deref(), "after")?,
        };
        let slot = st.event_stream_slot()?;
        return Ok(sse(st, engine, after, slot).into_response());
    }
    let after = parse_after(p.after.as_deref(), "after")?;
    let limit = match p.limit.as_deref().filter(|t| !t.is_empty()) {
        None => EVENTS_LIMIT_DEFAULT,
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=EVENTS_LIMIT_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::validation(
                    "limit",
                    format!("must be an integer in 1..={EVENTS_LIMIT_MAX}"),
                )
            })?,
    };
    let log = engine.events();
    let page = log.read_after(after, limit);
    Ok(axum::Json(EventPage {
        events: page.events.iter().map(|e| event_json(log, e)).collect(),
        next: page.next,
        truncated: page.truncated,
    })
    .into_response())
}

/// Events read from the log per wake-up of an SSE stream.
const SSE_PAGE: usize = 256;
/// The SSE event that says events were dropped from memory before the stream read
/// them: `{"type": "truncated", "after": <the last seq read>, "resumes_at": <the
/// seq it goes on with>}`, sent without an `id:`.
const TRUNCATED: &str = "truncated";

fn sse(
    st: AppState,
    engine: EngineHandle,
    after: u64,
    slot: tokio::sync::OwnedSemaphorePermit,
) -> impl IntoResponse {
    struct Cursor {
        engine: EngineHandle,
        after: u64,
        buffer: VecDeque<SseEvent>,
        stop: tokio::sync::watch::Receiver<bool>,
        /// The stream's slot (`EVENT_STREAMS_MAX`), given back when it is dropped.
        _slot: tokio::sync::OwnedSemaphorePermit,
    }
    let cursor = Cursor {
        engine,
        after,
        buffer: VecDeque::new(),
        stop: st.shutdown_signal(),
        _slot: slot,
    };
    let stream = futures_util::stream::unfold(cursor, |mut c| async move {
        loop {
            if let Some(event) = c.buffer.pop_front() {
                return Some((Ok::<_, Infallible>(event), c));
            }
            if *c.stop.borrow() {
                return None;
            }
            let log = c.engine.events();
            let page = log.read_after(c.after, SSE_PAGE);
            if page.truncated {
                // Events after `after` were dropped from memory before this stream
                // read them (a resume from too old a `Last-Event-ID`, or a reader
                // that fell more than the feed's window behind): said in the stream,
                // with no `id:`, so a reconnect resumes after the last event sent.
                let resumes_at = page.events.first().map_or(page.next, |e| e.seq);
                c.buffer.push_back(
                    SseEvent::default().event(TRUNCATED).data(
                        json!({"type": TRUNCATED, "after": c.after, "resumes_at": resumes_at})
                            .to_string(),
                    ),
                );
            }
            if let Some(last) = page.events.last() {
                c.after = last.seq;
                for e in &page.events {
                    let data = event_json(log, e).to_string();
                    c.buffer.push_back(
                        SseEvent::default()
                            .id(e.seq.to_string())
                            .event(e.kind.type_name())
                            .data(data),
                    );
                }
                continue;
            }
            let engine = c.engine.clone();
            let after = c.after;
            tokio::select! {
                () = engine.events().wait_after(after) => {}
                changed = c.stop.changed() => {
                    if changed.is_err() || *c.stop.borrow() {
                        return None;
                    }
                }
            }
        }
    });
    Sse::new(stream).keep_alive(
        KeepAlive::new()
            .interval(Duration::from_secs(15))
            .text("keep-alive"),
    )
}

/// The order an event is about: id, number, customer, channel, lines.
/// `order.modified`: the order's brief with its lines before and after, the reason,
/// the actor, the stock moved and the money.
fn order_modified(log: &EventLog, e: &surge_engine::event::OrderModified) -> Map<String, Value> {
    let surge_engine::event::OrderModified {
        id,
        order,
        before,
        reason,
        actor,
        stock_delta,
        total,
        refund_due_added,
    } = e;
    let mut m = brief(log, *id, order);
    let after = m.remove("lines").unwrap_or(Value::Null);
    m.insert("before".into(), event_lines(log, before));
    m.insert("after".into(), after);
    m.insert(
        "reason".into(),
        reason.map_or(Value::Null, |r| r.as_str().into()),
    );
    insert_actor(&mut m, actor);
    m.insert("stock_delta".into(), sku_qtys(log, stock_delta));
    m.insert("total".into(), (*total).into());
    m.insert("refund_due_added".into(), (*refund_due_added).into());
    m
}

/// `order_id` and `order_no`: how every order event starts.
fn order_ref(id: surge_engine::OrderId, order_no: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("order_id".into(), id.to_string().into());
    m.insert("order_no".into(), order_no.into());
    m
}

fn brief(
    log: &EventLog,
    id: surge_engine::OrderId,
    order: &surge_engine::event::OrderBrief,
) -> Map<String, Value> {
    let mut m = order_ref(id, &order.order_no);
    m.insert("customer_id".into(), order.customer_id.to_string().into());
    m.insert("channel".into(), order.channel.to_string().into());
    m.insert("lines".into(), event_lines(log, &order.lines));
    m
}

fn event_lines(log: &EventLog, lines: &[surge_engine::event::EventLine]) -> Value {
    lines
        .iter()
        .map(|l| json!({"sku": &*log.sku_name(l.sku), "qty": l.qty, "unit_price": l.unit_price}))
        .collect::<Vec<_>>()
        .into()
}

/// `[{"sku", "qty"}]`: units per SKU (signed for a modification's stock moved).
fn sku_qtys<Q: serde::Serialize>(log: &EventLog, lines: &[(surge_engine::SkuIdx, Q)]) -> Value {
    lines
        .iter()
        .map(|(s, q)| json!({"sku": &*log.sku_name(*s), "qty": q}))
        .collect::<Vec<_>>()
        .into()
}

/// What a cancelled and a returned order both tell, in this order: `note`, the actor,
/// `refund_due_amount` and the units `restocked`.
fn insert_closing(
    m: &mut Map<String, Value>,
    log: &EventLog,
    note: &str,
    actor: &str,
    refund_due_amount: u64,
    restocked: &[(surge_engine::SkuIdx, u64)],
) {
    m.insert("note".into(), note.into());
    insert_actor(m, actor);
    m.insert("refund_due_amount".into(), refund_due_amount.into());
    m.insert("restocked".into(), sku_qtys(log, restocked));
}

/// `order.created`'s payload: the order's brief and total.
fn created(log: &EventLog, e: &surge_engine::event::OrderCreated) -> Map<String, Value> {
    let mut m = brief(log, e.id, &e.order);
    m.insert("total".into(), e.total.into());
    m
}

/// `order.paid`'s payload: the order's brief, the amount and the payment reference.
fn paid(log: &EventLog, e: &surge_engine::event::OrderPaid) -> Map<String, Value> {
    let mut m = brief(log, e.id, &e.order);
    m.insert("amount".into(), e.amount.into());
    m.insert("payment_ref".into(), e.payment_ref.to_string().into());
    m
}

/// `actor`, and `on_behalf_of` when the actor acted for someone (a named token).
fn insert_actor(m: &mut Map<String, Value>, logged: &str) {
    let (actor, on_behalf_of) = surge_engine::split_actor(logged);
    m.insert("actor".into(), actor.into());
    if let Some(other) = on_behalf_of {
        m.insert("on_behalf_of".into(), other.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stream_is_asked_for_in_any_case() {
        let asks = |accept: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::ACCEPT, accept.parse().unwrap());
            wants_sse(&headers)
        };
        assert!(asks("text/event-stream"));
        assert!(asks("TEXT/Event-Stream"));
        assert!(asks("application/json, text/event-stream;q=0.9"));
        assert!(!asks("application/json"));
        assert!(!wants_sse(&HeaderMap::new()));
    }
}
