//! `POST /v1/batch`: many commands in one request. Every op is parsed and checked on
//! its own, all are queued before any is awaited (so they share group commits), and
//! each succeeds or fails alone.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use surge_engine::{Acked, Command, IdempotencyKey, LineReq, Rejection, Reply};
use utoipa::ToSchema;

use crate::auth::{Auth, Principal, Storefront};
use crate::dto::{CancelReasonDto, CreateOrderReq, LineDto, line_reqs, reply_json_into};
use crate::error::{ApiError, IDEMPOTENCY_KEY};
use crate::extract::{Idem, JsonBytes, NoQuery, parse_batch_envelope, parse_op, parse_op_name};
use crate::plain_reserve::{PlainReserve, plain_reserve, plain_reserve_batch};
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

/// [`BatchReq`] as the handler reads it: each op's text borrowed from the body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchOps<'a> {
    #[serde(borrow)]
    ops: Vec<&'a RawValue>,
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
    let parsed_tag;
    let tag = match leading_op_tag(raw.get()) {
        Some(tag) => tag,
        None => {
            parsed_tag = parse_op_name::<OpTag>(bytes, i)?;
            parsed_tag.op.as_str()
        }
    };
    let actor = who.actor.clone();
    let order_id = |id: &str| id.parse().map_err(|()| ApiError::unknown_order(id));
    let reservation_id = |id: &str| id.parse().map_err(|()| ApiError::unknown_reservation(id));
    Ok(match tag {
        "reserve" => {
            // Most ops are in the plain shape clients send: read off the bytes; any
            // other goes through serde, which judges it as ever.
            match plain_reserve(raw.get()) {
                Some(op) => plain_reserve_command(st, op, actor),
                None => {
                    let op: ReserveOp = parse_op(bytes, i)?;
                    reserve_command(st, line_reqs(op.lines), op.ttl_ms, op.customer_id, actor)
                }
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

fn plain_reserve_command(st: &AppState, op: PlainReserve<'_>, actor: String) -> Command {
    let lines = op
        .lines
        .into_iter()
        .map(|(sku, qty)| LineReq {
            sku: sku.to_string(),
            qty,
        })
        .collect();
    let customer_id = op.customer_id.map(str::to_string);
    reserve_command(st, lines, op.ttl_ms, customer_id, actor)
}

fn reserve_command(
    st: &AppState,
    lines: Vec<LineReq>,
    ttl_ms: Option<u64>,
    customer_id: Option<String>,
    actor: String,
) -> Command {
    let ttl_ms = ttl_ms.unwrap_or(st.config().reservation_ttl_ms);
    match customer_id {
        None => Command::Reserve {
            lines,
            ttl_ms,
            actor,
        },
        Some(customer_id) => Command::ReserveFor {
            lines,
            ttl_ms,
            customer_id,
            actor,
        },
    }
}

/// The op's name when the object starts with it (`{"op":"reserve",...`), as clients
/// write it: read straight off the bytes instead of parsing the op twice. Only a
/// name of plain letters and `_` is taken; anything else (escapes, `op` later in the
/// object) leaves it to the parse, which judges the name as before.
fn leading_op_tag(text: &str) -> Option<&str> {
    let rest = text.trim_start().strip_prefix('{')?.trim_start();
    let rest = rest.strip_prefix("\"op\"")?.trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    let name = &rest[..end];
    let plain = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    plain.then_some(name)
}

/// The problem body of op `index`. A field is named from the batch's body
/// (`ops[3].lines[0].qty`), whether the API or the engine refused the op.
fn push_problem(out: &mut String, error: &ApiError, index: usize) {
    let mut problem = error.problem();
    if let Some(field) = problem.field.as_mut()
        && !field.starts_with("ops[")
        && field != IDEMPOTENCY_KEY
    {
        let within = format!("ops[{index}].{field}");
        if let Some(rest) = problem.detail.strip_prefix(field.as_str())
            && rest.starts_with(':')
        {
            problem.detail = format!("{within}{rest}");
        }
        *field = within;
    }
    out.push_str(&serde_json::to_string(&problem).expect("a problem always serializes"));
}

#[utoipa::path(post, path = "/v1/batch", tag = "batch",
    request_body = BatchReq,
    description = "With an `Idempotency-Key`, the batch's first applied op is remembered under the key itself (so a single request under the same key conflicts with it, 422) and each later op under the key and its index; a keyed batch takes one key per op from the idempotency budget. It is remembered whatever its ops' answers once one op reached the engine, an op the engine refused as malformed (`qty` 0, say) included, so that another body can never reuse the key for part of a batch; only a batch all of whose ops were refused before the engine (an unknown `op`, a field of the wrong type) is not remembered. The same key with the same body answers each op as it was first answered (ops that failed included) and changes nothing; with another body, 422 `idempotency_conflict` and nothing applied. The key is then at most 128 bytes less the separator (2) and the digits of the largest op index a batch may have (`--batch-ops-max` less one: 122 bytes by default), whatever this batch's length.",
    responses(
        (status = 200, description = "One result per op, in order", body = BatchResponse),
        (status = 422, description = "`idempotency_conflict`: the Idempotency-Key was used with a different request; no op applied", body = crate::error::Problem, content_type = "application/problem+json"),
    ))]
pub async fn batch(
    State(st): State<AppState>,
    Auth(who, _): Auth<Storefront>,
    _query: NoQuery,
    idem: Idem,
    JsonBytes(body): JsonBytes,
) -> Result<Response, ApiError> {
    // A body of plain reserve ops only (a sale's usual batch) is read in one pass
    // off its bytes; any other takes the general path (the shape check, serde, then
    // op by op), where the ops borrow from the body: no copy of each op's text.
    let (plain, general): (Vec<PlainReserve<'_>>, Option<BatchOps<'_>>) =
        match std::str::from_utf8(&body)
            .ok()
            .and_then(plain_reserve_batch)
        {
            Some(ops) => (ops, None),
            None => (Vec::new(), Some(parse_batch_envelope(&body)?)),
        };
    let op_count = general.as_ref().map_or(plain.len(), |req| req.ops.len());
    let max = st.config().batch_ops_max;
    if op_count > max {
        return Err(ApiError::validation(
            "ops",
            format!("at most {max} ops per batch"),
        ));
    }
    if let Some(key) = idem.sent() {
        let len_max = Idem::batch_key_len_max(max);
        if key.len() > len_max {
            return Err(ApiError::validation(
                IDEMPOTENCY_KEY,
                format!(
                    "must be at most {len_max} bytes on /v1/batch (each op's key is the \
                     batch's and the op's index)"
                ),
            ));
        }
    }
    let engine = st.engine()?;
    if let Some(refusal) = engine.replication_refusal() {
        // None of its ops can succeed here: a standby or fenced node (the whole
        // batch goes to the leader), or the replicated log down. Answered as a
        // single write is, 503 with `Retry-After`.
        return Err(ApiError::from_engine(refusal));
    }
    // One queue entry for the whole batch: the writer applies the ops in order in
    // one iteration and they are answered together, from one buffer.
    // With an `Idempotency-Key`, each op is keyed by the batch's key and its index.
    // The first op submitted takes the batch's key itself: so another body under
    // the key conflicts whichever ops the API refused, and a single request under
    // the batch's key (or the reverse) too.
    let mut commands: Vec<(Command, Option<IdempotencyKey>)> = Vec::with_capacity(op_count);
    let batch_keys = idem.batch_keys(&body);
    let op_key = |commands: &[(Command, Option<IdempotencyKey>)], i: usize| {
        batch_keys
            .as_ref()
            .map(|keys| keys.op(i, commands.is_empty()))
    };
    let mut refused: Vec<(usize, ApiError)> = Vec::new();
    // A keyed op over a size limit (a SKU id or `customer_id` too long, too many
    // lines) is refused here, before the engine: the engine refuses such a command
    // without logging it, so the key it would take (the batch's own, for the first
    // op) would be left unremembered, free for another body.
    let sized = |command: Command| match batch_keys {
        Some(_) => surge_engine::check_sizes(&command, None)
            .map(|()| command)
            .map_err(|rejection| ApiError::from_rejection(&rejection)),
        None => Ok(command),
    };
    let mut admit = |command: Result<Command, ApiError>, i: usize| match command.and_then(sized) {
        Ok(command) => {
            let key = op_key(&commands, i);
            commands.push((command, key));
        }
        Err(e) => refused.push((i, e)),
    };
    for (i, op) in plain.into_iter().enumerate() {
        admit(Ok(plain_reserve_command(&st, op, who.actor.clone())), i);
    }
    for (i, raw) in general.iter().flat_map(|req| req.ops.iter()).enumerate() {
        admit(op_command(&st, &who, raw, i), i);
    }
    // A batch that cannot be queued (the queue full, shutting down) is answered
    // whole, as a single write is: 503 with `Retry-After`, nothing done; so is one
    // whose answer never comes (the engine stopped after taking it: its 503 then
    // says so, as a single write's). Each op used to carry the problem in a 200,
    // which a client reading the status took for an answer.
    let mut outcomes = if commands.is_empty() {
        Vec::new()
    } else {
        let ticket = engine
            .submit_keyed_batch(commands)
            .map_err(ApiError::from_engine)?;
        crate::deadline::register(ticket.claim());
        ticket.await.map_err(ApiError::from_engine)?
    };
    // Every op refused for the node's place or its storage (fenced, or the
    // replicated log or the disk gone, between the check above and the writer's
    // turn, or while publishing): answered whole, as a single write would be, 503
    // with `Retry-After` (a write may still have been applied where the stream
    // refused it, as the single write's answer says).
    let node_refused = |o: &Result<Acked, surge_engine::Error>| {
        matches!(
            o,
            Err(surge_engine::Error::NotLeader(_) | surge_engine::Error::StorageUnavailable(_))
        )
    };
    if refused.is_empty()
        && outcomes.iter().all(node_refused)
        && let Some(Err(refusal)) = outcomes.pop()
    {
        return Err(ApiError::from_engine(refusal));
    }
    let mut outcomes = outcomes.into_iter();
    // A batch repeated under its key with another body: the engine applied none of
    // it; answered as a single request is, 422 naming the key sent.
    if let (
        Some(key),
        Some(Ok(Acked {
            outcome: Err(Rejection::IdempotencyConflict { .. }),
            ..
        })),
    ) = (idem.sent(), outcomes.as_slice().first())
    {
        return Err(ApiError::from_rejection(&Rejection::IdempotencyConflict {
            key: key.to_string(),
        }));
    }
    let mut refused = refused.into_iter().peekable();
    // The batch's own `Surge-Lsn`: the last record among its successes.
    let mut last_lsn: Option<u64> = None;
    // The answer is written into one buffer, each result in place.
    let mut body = String::with_capacity(16 + 224 * op_count);
    body.push_str("{\"results\":[");
    for i in 0..op_count {
        if i > 0 {
            body.push(',');
        }
        if let Some((_, e)) = refused.next_if(|(at, _)| *at == i) {
            push_problem(&mut body, &e, i);
            continue;
        }
        match outcomes.next().expect("one outcome per submitted op") {
            Err(e) => push_problem(&mut body, &ApiError::from_engine(e), i),
            Ok(Acked {
                outcome: Err(rejection),
                ..
            }) => push_problem(&mut body, &ApiError::from_rejection(&rejection), i),
            Ok(Acked {
                outcome: Ok(reply),
                lsn,
            }) => {
                last_lsn = last_lsn.max(lsn);
                push_reply(&mut body, reply, lsn);
            }
        }
    }
    body.push_str("]}");
    let mut response = json_text(StatusCode::OK, body);
    if let Some(lsn) = last_lsn {
        response
            .headers_mut()
            .insert(crate::routes::SURGE_LSN_HEADER, lsn.into());
    }
    Ok(response)
}

/// A successful result of a batch carries its record's LSN (`"lsn"`) as the first
/// member, as a single write's answer carries `Surge-Lsn`: `{"lsn":N,` is written,
/// then the reply without its own opening brace (and for `{}`, without the comma).
fn push_reply(out: &mut String, reply: Reply, lsn: Option<u64>) {
    let Some(lsn) = lsn else {
        reply_json_into(reply, out);
        return;
    };
    out.push_str("{\"lsn\":");
    out.push_str(itoa::Buffer::new().format(lsn));
    let comma = out.len();
    out.push(',');
    reply_json_into(reply, out);
    let brace = out.remove(comma + 1);
    debug_assert_eq!(brace, '{', "a success body is a JSON object");
    if out[comma + 1..].trim_start().starts_with('}') {
        out.remove(comma);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plain_reserve::testing::{OP_PIECES, Owned, edit, owned};
    use surge_engine::{LineView, ReservationId, ReservationStatus, ReservationView};

    #[test]
    fn the_leading_op_name_is_read_off_the_bytes() {
        for (text, tag) in [
            (r#"{"op":"reserve","lines":[]}"#, Some("reserve")),
            (" {\n \"op\" : \"create_order\" }", Some("create_order")),
            (r#"{"op":"pay"}"#, Some("pay")),
            // Left to the parse: `op` not first, escapes, odd names, not an object.
            (r#"{"lines":[],"op":"reserve"}"#, None),
            (r#"{"op":"res\u0065rve"}"#, None),
            (r#"{"op":"Reserve"}"#, None),
            (r#"{"op":""}"#, None),
            (r#"{"op":7}"#, None),
            (r#"["op","reserve"]"#, None),
            (r#"{"opx":"reserve"}"#, None),
        ] {
            assert_eq!(leading_op_tag(text), tag, "{text}");
        }
    }

    /// What the general path makes of a body: its ops as reserve ops (lines,
    /// `ttl_ms`, `customer_id`), or `None` if it refuses the body or any op, or an
    /// op is not a reserve.
    fn general_reading(body: &str) -> Option<Vec<Owned>> {
        let req: BatchOps<'_> = parse_batch_envelope(body.as_bytes()).ok()?;
        let mut ops = Vec::new();
        for (i, raw) in req.ops.iter().enumerate() {
            let bytes = raw.get().as_bytes();
            let tag = match leading_op_tag(raw.get()) {
                Some(tag) => tag.to_string(),
                None => parse_op_name::<OpTag>(bytes, i).ok()?.op,
            };
            (tag == "reserve").then_some(())?;
            let op: ReserveOp = parse_op(bytes, i).ok()?;
            let lines = line_reqs(op.lines)
                .into_iter()
                .map(|l| (l.sku, l.qty))
                .collect();
            ops.push((lines, op.ttl_ms, op.customer_id));
        }
        Some(ops)
    }

    /// Generated bodies, most a valid batch of plain reserve ops and many a few random
    /// edits away from one (or with another kind of op in it): whenever the one-pass
    /// reader takes a body, the general path (shape check, serde, op by op) takes it
    /// too, and every op reads the same.
    #[test]
    fn a_plain_batch_reads_as_the_general_path_reads_it() {
        use rand_core::{Rng as _, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256StarStar::seed_from_u64(0x000b_a7c4);
        // The op pieces with `"ops"` among the punctuation and names, in this order.
        let mut pieces = OP_PIECES.to_vec();
        pieces.insert(7, "\"ops\"");
        pieces.extend([
            "[[]]",
            "null",
            "01",
            "7",
            r#"{"op":"release","id":"r1"}"#,
            r#"[{"sku":"S1","qty":1}]"#,
            "\"\\u0041\"",
        ]);
        let (mut read, mut total) = (0, 0);
        for _ in 0..50_000 {
            let mut body = String::from(r#"{"ops":["#);
            for i in 0..rng.next_u32() % 4 {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(&format!(
                    r#"{{"op":"reserve","lines":[{{"sku":"S{}","qty":{}}}]"#,
                    rng.next_u32() % 50,
                    rng.next_u32() % 5
                ));
                if rng.next_u32() % 3 == 0 {
                    body.push_str(&format!(r#","ttl_ms":{}"#, rng.next_u32()));
                }
                if rng.next_u32() % 3 == 0 {
                    body.push_str(r#","customer_id":"c-9""#);
                }
                body.push('}');
            }
            body.push_str("]}");
            // Up to two edits.
            edit(&mut rng, &mut body, 3, &pieces);
            total += 1;
            if let Some(ops) = plain_reserve_batch(&body) {
                read += 1;
                let plain: Vec<_> = ops.iter().map(owned).collect();
                assert_eq!(Some(plain), general_reading(&body), "{body}");
            }
        }
        assert!(read > total / 5 && read < total, "{read} of {total} read");
    }

    #[test]
    fn a_batch_with_anything_but_plain_reserve_ops_takes_the_general_path() {
        for body in [
            r#"{"ops":[{"op":"release","id":"r1"}]}"#,
            r#"{"ops":[{"op":"reserve","lines":[{"sku":"S1","qty":1}]}],"x":1}"#,
            r#"{"ops":[{"op":"reserve","lines":[[]]}]}"#,
            r#"{"ops":[[{"op":"reserve","lines":[]}]]}"#,
            r#"{"ops":[{"op":"reserve","lines":[]}],"ops":[]}"#,
            r#"[{"op":"reserve","lines":[]}]"#,
            r#"{"ops":[{"op":"reserve","lines":[]},]}"#,
            r#"{"ops":[{"lines":[{"sku":"A","qty":1}]}]}"#,
            r#"{"ops":[{"op":"reserve","lines":[]},{"lines":[]}]}"#,
        ] {
            assert_eq!(plain_reserve_batch(body), None, "{body}");
        }
        let read = plain_reserve_batch(" {\"ops\" : [ ] } ").expect("an empty batch is plain");
        assert!(read.is_empty());
    }

    fn reservation() -> Reply {
        Reply::Reservation(ReservationView {
            id: ReservationId(42),
            status: ReservationStatus::Held,
            lines: vec![LineView {
                sku: "S1".into(),
                qty: 2,
            }]
            .into(),
            created_at_ms: 0,
            expires_at_ms: 1000,
            order_id: None,
        })
    }

    #[test]
    fn a_result_carries_its_lsn_as_its_first_member() {
        let mut out = String::from("[");
        push_reply(&mut out, reservation(), Some(17));
        let with_lsn: serde_json::Value = serde_json::from_str(&out[1..]).unwrap();
        let mut plain = String::new();
        reply_json_into(reservation(), &mut plain);
        let mut expected: serde_json::Value = serde_json::from_str(&plain).unwrap();
        expected["lsn"] = 17.into();
        assert_eq!(with_lsn, expected);
        assert!(out.starts_with(r#"[{"lsn":17,"id":"r42","#), "{out}");

        let mut out = String::new();
        push_reply(&mut out, reservation(), None);
        assert_eq!(out, plain, "no LSN, the reply as it is");

        let mut out = String::from("x");
        push_reply(
            &mut out,
            Reply::Expired {
                reservations: 1,
                orders: 2,
            },
            Some(5),
        );
        assert_eq!(out, r#"x{"lsn":5,"reservations":1,"orders":2}"#);
    }
}
