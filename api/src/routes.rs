//! The v1 resources: SKUs, reservations, orders, reads, lists, export and stats.

use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use surge_engine::limits::{LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX, STATS_TOP_MAX};
use surge_engine::{
    Acked, Command, IdempotencyKey, OrderId, Outcome, Query, QueryReply, Reply, ReservationId,
    SkuIdx,
};
use utoipa::IntoParams;

use crate::auth::{Access, Admin, AnyRole, Auth, Operator, Principal, Reader, Role, Storefront};
use crate::dto::*;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, Idem, NoBody, NoQuery};
use crate::state::AppState;
use crate::time::parse_rfc3339;

/// Submit a command and wait for its outcome.
pub async fn execute(
    st: &AppState,
    command: Command,
    key: Option<IdempotencyKey>,
) -> Result<Acked, ApiError> {
    let ticket = st
        .engine()?
        .submit(command, key)
        .map_err(ApiError::from_engine)?;
    crate::deadline::register(ticket.claim());
    ticket.await.map_err(ApiError::from_engine)
}

/// Submit a command, wait until it is safe (durable; published in `replicated`
/// mode) and answer it: the one path of every write route.
pub async fn run(
    st: &AppState,
    command: Command,
    key: Option<IdempotencyKey>,
    success: Success,
) -> Result<Response, ApiError> {
    Ok(respond(execute(st, command, key).await?, success))
}

/// A write on one order (`POST /v1/orders/{id}/...`, `PATCH /v1/orders/{id}`): the
/// caller admitted by `A`, then its `Idempotency-Key`, the order id of the path and
/// the JSON body `T`, extracted in that order (so the same refusal wins as when each
/// handler listed the four extractors). The handler builds its command from the
/// body and hands it to [`OrderCall::run`].
pub struct OrderWrite<A, T>(pub OrderCall, pub T, pub PhantomData<A>);

/// What an [`OrderWrite`] handler needs beside its body.
pub struct OrderCall {
    st: AppState,
    /// The caller.
    pub who: Principal,
    idem: Idem,
    id: String,
    body: Bytes,
}

impl OrderCall {
    /// The order the path names (404 `unknown_order` if it cannot be one).
    pub fn order_id(&self) -> Result<OrderId, ApiError> {
        parse_order_id(&self.id)
    }

    /// The actor the command is logged under.
    pub fn actor(&self) -> String {
        self.who.actor.clone()
    }

    /// Submit `command` under the request's idempotency key and answer 200.
    pub async fn run(self, command: Command) -> Result<Response, ApiError> {
        run(&self.st, command, self.idem.key(&self.body), Success::Ok).await
    }
}

impl<A, T> FromRequest<AppState> for OrderWrite<A, T>
where
    A: Access + Send,
    T: DeserializeOwned,
{
    type Rejection = Response;

    async fn from_request(request: Request, st: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = request.into_parts();
        let Auth(who, _) = Auth::<A>::from_request_parts(&mut parts, st)
            .await
            .map_err(IntoResponse::into_response)?;
        let idem = Idem::from_request_parts(&mut parts, st)
            .await
            .map_err(IntoResponse::into_response)?;
        NoQuery::from_request_parts(&mut parts, st)
            .await
            .map_err(IntoResponse::into_response)?;
        let ApiPath(id) = ApiPath::<String>::from_request_parts(&mut parts, st)
            .await
            .map_err(IntoResponse::into_response)?;
        // A POST action whose fields are all optional may come without a body; a
        // PATCH always names what it changes.
        let request = Request::from_parts(parts, body);
        let ApiJson(req, body) = if request.method() == axum::http::Method::POST {
            ApiJson::<T>::from_request_or_empty(request, st).await
        } else {
            ApiJson::<T>::from_request(request, st).await
        }
        .map_err(IntoResponse::into_response)?;
        let call = OrderCall {
            st: st.clone(),
            who,
            idem,
            id,
            body,
        };
        Ok(OrderWrite(call, req, PhantomData))
    }
}

/// Run a read and take its answer in the shape `R` that the query answers
/// (`SkuView`, `Box<OrderView>`, a page...): no matching on `QueryReply` at the
/// call site. A reply of another shape would be an engine bug: 500, never a panic.
pub async fn read<R>(st: &AppState, query: Query) -> Result<R, ApiError>
where
    R: TryFrom<QueryReply, Error = QueryReply>,
{
    let ticket = st.engine()?.query(query).map_err(ApiError::from_engine)?;
    let reply = ticket
        .await
        .map_err(ApiError::from_engine)?
        .map_err(|r| ApiError::from_rejection(&r))?;
    R::try_from(reply).map_err(|other| {
        tracing::error!("a read was answered with an unexpected shape: {other:?}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the engine answered a read with an unexpected shape",
        )
    })
}

/// How a successful command is answered.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Success {
    Ok,
    /// 201 with a `Location` header.
    Created,
}

/// Render an outcome. An idempotent replay hands back the stored outcome, so it
/// renders to the same status and body as the original.
pub fn respond(acked: Acked, success: Success) -> Response {
    let response = respond_outcome(acked.outcome, success);
    match acked.lsn {
        Some(lsn) if response.status().is_success() => with_surge_lsn(response, lsn),
        _ => response,
    }
}

/// An admin write that logs no record (a snapshot, a promotion) answers with the last
/// record its answer stands for as `Surge-Lsn`, as a write that changed nothing does:
/// the position a client reads its own writes from.
pub(crate) fn with_surge_lsn(mut response: Response, lsn: u64) -> Response {
    response
        .headers_mut()
        .insert(SURGE_LSN_HEADER, HeaderValue::from(lsn));
    response
}

/// The header that carries the LSN of the record a write made (v1.1).
pub const SURGE_LSN: &str = "surge-lsn";
/// [`SURGE_LSN`] as a header name, made once: a name given as text is parsed and
/// allocated again by every insert.
pub(crate) const SURGE_LSN_HEADER: axum::http::HeaderName =
    axum::http::HeaderName::from_static(SURGE_LSN);

fn respond_outcome(outcome: Outcome, success: Success) -> Response {
    match outcome {
        Err(rejection) => ApiError::from_rejection(&rejection).into_response(),
        Ok(reply) => {
            // Only a creation names where it lives.
            let (status, location) = match (success, &reply) {
                (Success::Created, Reply::Reservation(r)) => (
                    StatusCode::CREATED,
                    Some(location("/v1/reservations/r", r.id.0)),
                ),
                (Success::Created, Reply::Order(o)) => {
                    (StatusCode::CREATED, Some(location("/v1/orders/o", o.id.0)))
                }
                (Success::Created, _) => (StatusCode::CREATED, None),
                (Success::Ok, _) => (StatusCode::OK, None),
            };
            let mut response = json_text(status, reply_json(reply));
            if let Some(loc) = location.and_then(|l| HeaderValue::try_from(l).ok()) {
                response.headers_mut().insert(header::LOCATION, loc);
            }
            response
        }
    }
}

/// `/v1/reservations/r42`: the collection and the id's prefix, then its number.
fn location(prefix: &str, number: u64) -> String {
    let mut path = String::with_capacity(prefix.len() + 20);
    path.push_str(prefix);
    path.push_str(itoa::Buffer::new().format(number));
    path
}

/// A response whose JSON body is already rendered (`Content-Type:
/// application/json`): no second serialization pass over it.
pub fn json_text(status: StatusCode, text: String) -> Response {
    let mut response = Response::new(axum::body::Body::from(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn parse_reservation_id(id: &str) -> Result<ReservationId, ApiError> {
    id.parse().map_err(|()| ApiError::unknown_reservation(id))
}

pub(crate) fn parse_order_id(id: &str) -> Result<OrderId, ApiError> {
    id.parse().map_err(|()| ApiError::unknown_order(id))
}

pub(crate) fn parse_limit(
    text: Option<&str>,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match text.filter(|t| !t.is_empty()) {
        None => Ok(default),
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::validation("limit", format!("must be an integer in 1..={max}"))
            }),
    }
}

// ---------------------------------------------------------------- SKUs

#[utoipa::path(put, path = "/v1/skus/{sku}", tag = "skus",
    params(("sku" = String, Path, description = "SKU id: 1..=64 bytes of [A-Za-z0-9._:-], not `.` or `..` (path steps that HTTP clients resolve away)")),
    request_body = DefineSkuReq,
    responses(
        (status = 200, description = "The SKU as defined", body = SkuBody),
        (status = 409, description = "`invalid_transition`: on_hand below reserved", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "`overloaded`, \"limit reached\": a new SKU past the SKU limit, or a purchase limit set where there was none that would count more (SKU, customer) pairs than the engine keeps (2,000,000); a retry succeeds only once counts are freed", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn define_sku(
    State(st): State<AppState>,
    _auth: Auth<Admin>,
    _query: NoQuery,
    ApiPath(sku): ApiPath<String>,
    ApiJson(req, _): ApiJson<DefineSkuReq>,
) -> Result<Response, ApiError> {
    // `.` and `..` fit the id's bytes, but as path segments URL parsers (browsers,
    // the console, most HTTP libraries) resolve them away: such a SKU could be
    // defined here and never read or adjusted by an ordinary client. Refused here,
    // before the engine, so that logs holding one still replay.
    if sku == "." || sku == ".." {
        return Err(ApiError::validation(
            "sku",
            "`.` and `..` are path steps that HTTP clients resolve away: not a SKU id",
        ));
    }
    let instant = |field: &str, value: Option<Option<String>>| match value {
        None => Ok(None),
        Some(None) => Ok(Some(None)),
        Some(Some(text)) => crate::time::parse_rfc3339(&text)
            .map(|ms| Some(Some(ms)))
            .ok_or_else(|| ApiError::validation(field, "must be an RFC 3339 date-time or null")),
    };
    let definition = surge_engine::SkuDefinition {
        sku,
        name: not_null("name", req.name)?,
        on_hand: not_null("on_hand", req.on_hand)?,
        low_stock_threshold: not_null("low_stock_threshold", req.low_stock_threshold)?,
        purchase_limit_per_customer: not_null(
            "purchase_limit_per_customer",
            req.purchase_limit_per_customer,
        )?,
        sale_starts_at_ms: instant("sale_starts_at", req.sale_starts_at)?,
        sale_ends_at_ms: instant("sale_ends_at", req.sale_ends_at)?,
    };
    let command = Command::DefineSkuSale {
        definition: Box::new(definition),
    };
    run(&st, command, None, Success::Ok).await
}

#[utoipa::path(get, path = "/v1/skus/{sku}/customers/{customer_id}", tag = "skus",
    params(
        ("sku" = String, Path, description = "SKU id"),
        ("customer_id" = String, Path, description = "The customer"),
    ),
    responses(
        (status = 200, description = "What counts toward the customer's purchase limit on the SKU", body = SkuCustomerBody),
        (status = 404, description = "`unknown_sku`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_sku_customer(
    State(st): State<AppState>,
    _auth: Auth<Reader>,
    _query: NoQuery,
    ApiPath((sku, customer_id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let view =
        read::<surge_engine::SkuCustomerView>(&st, Query::SkuCustomer { sku, customer_id }).await?;
    Ok(axum::Json(SkuCustomerBody::from(view)).into_response())
}

#[utoipa::path(get, path = "/v1/skus/{sku}", tag = "skus",
    params(("sku" = String, Path, description = "SKU id")),
    responses(
        (status = 200, description = "The SKU's stock levels", body = SkuBody),
        (status = 404, description = "`unknown_sku`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_sku(
    State(st): State<AppState>,
    _auth: Auth<AnyRole>,
    _query: NoQuery,
    ApiPath(sku): ApiPath<String>,
) -> Result<Response, ApiError> {
    // The hottest read of a sale: answered from the stock board on this thread
    // when it can, waiting here for the board to reach the read index when it is
    // behind (`Engine::read_sku_waiting`), through a queue only when the board
    // cannot serve. (Most of these requests never get here: `front::Front`
    // answers those the board can answer at once before the router.)
    match st.engine()?.read_sku_waiting(&sku).await {
        Some(Ok(v)) => return Ok(sku_answer(v)),
        Some(Err(rejection)) => return Err(ApiError::from_rejection(&rejection)),
        None => {}
    }
    match read::<surge_engine::SkuView>(&st, Query::GetSku { sku: sku.clone() }).await {
        Ok(v) => Ok(sku_answer(v)),
        // A malformed id names no SKU: 404 like any other unknown SKU.
        Err(e) if e.code == "validation_failed" => Err(ApiError::from_rejection(
            &surge_engine::Rejection::UnknownSku { sku },
        )),
        Err(e) => Err(e),
    }
}

/// A SKU's stock levels as `GET /v1/skus/{sku}` answers them.
pub fn sku_answer(view: surge_engine::SkuView) -> Response {
    let mut body = String::with_capacity(256);
    crate::dto::sku_json(&view, &mut body);
    json_text(StatusCode::OK, body)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SkuListParams {
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Page size, 1..=1000 (default 50).
    pub limit: Option<String>,
}

#[utoipa::path(get, path = "/v1/skus", tag = "skus", params(SkuListParams),
    responses((status = 200, description = "A page of SKUs in definition order", body = SkuPage)))]
pub async fn list_skus(
    State(st): State<AppState>,
    _auth: Auth<AnyRole>,
    ApiQuery(p): ApiQuery<SkuListParams>,
) -> Result<Response, ApiError> {
    let limit = parse_limit(p.limit.as_deref(), LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX)?;
    let cursor = match p.cursor.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(SkuIdx(c.parse().map_err(|_| {
            ApiError::validation("cursor", "not a cursor of this list")
        })?)),
    };
    let page = read::<surge_engine::Page<surge_engine::SkuView, surge_engine::SkuIdx>>(
        &st,
        Query::ListSkus { cursor, limit },
    )
    .await?;
    Ok(axum::Json(SkuPage {
        items: page.items.into_iter().map(SkuBody::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.0.to_string()),
    })
    .into_response())
}

#[utoipa::path(post, path = "/v1/skus/{sku}/adjustments", tag = "skus",
    params(("sku" = String, Path, description = "SKU id")),
    request_body = AdjustReq,
    responses(
        (status = 200, description = "The SKU after the adjustment", body = SkuBody),
        (status = 404, description = "`unknown_sku`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: on_hand would go below reserved", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn adjust_stock(
    State(st): State<AppState>,
    Auth(who, _): Auth<Operator>,
    _query: NoQuery,
    idem: Idem,
    ApiPath(sku): ApiPath<String>,
    ApiJson(req, body): ApiJson<AdjustReq>,
) -> Result<Response, ApiError> {
    // The schema's range: a raise past it can never be taken (a raise may not take
    // `on_hand` past ON_HAND_MAX), so it is a bad field (400), not a transition
    // refused (409).
    let bound = surge_engine::limits::ON_HAND_MAX as i64;
    if !(-bound..=bound).contains(&req.delta) {
        return Err(ApiError::validation(
            "delta",
            format!("must be within -{bound}..={bound}"),
        ));
    }
    let command = Command::AdjustStock {
        sku,
        delta: req.delta,
        reason: req.reason.into(),
        note: req.note,
        actor: who.actor,
    };
    run(&st, command, idem.key(&body), Success::Ok).await
}

// ---------------------------------------------------------------- reservations

#[utoipa::path(post, path = "/v1/reservations", tag = "reservations",
    request_body = ReserveReq,
    responses(
        (status = 201, description = "Held: all lines or none", body = ReservationBody,
            headers(("Location" = String, description = "/v1/reservations/{id}"))),
        (status = 404, description = "`unknown_sku`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`sale_not_open` (`opens_at` or `closed_at`), `purchase_limit_exceeded` (`sku`, `limit`, `already`, `requested`), `insufficient_stock` with `lines`: the first that applies", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_reservation(
    State(st): State<AppState>,
    Auth(who, _): Auth<Storefront>,
    _query: NoQuery,
    idem: Idem,
    ApiJson(req, body): ApiJson<ReserveReq>,
) -> Result<Response, ApiError> {
    let ttl_ms = req.ttl_ms.unwrap_or(st.config().reservation_ttl_ms);
    let command = match req.customer_id {
        None => Command::Reserve {
            lines: line_reqs(req.lines),
            ttl_ms,
            actor: who.actor,
        },
        Some(customer_id) => Command::ReserveFor {
            lines: line_reqs(req.lines),
            ttl_ms,
            customer_id,
            actor: who.actor,
        },
    };
    run(&st, command, idem.key(&body), Success::Created).await
}

#[utoipa::path(post, path = "/v1/reservations/{id}/commit", tag = "reservations",
    params(("id" = String, Path, description = "Reservation id (`r<n>`)")),
    responses(
        (status = 200, description = "Committed: the units left `on_hand` (repeating returns the same state)", body = ReservationBody),
        (status = 404, description = "`unknown_reservation` (a reservation is remembered once finished, committed, released or expired, only while it is among the newest 1,000,000 reservations made, by id, `FINISHED_RESERVATIONS_KEPT`; one still held is always kept)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn commit_reservation(
    State(st): State<AppState>,
    Auth(who, _): Auth<Storefront>,
    _query: NoQuery,
    idem: Idem,
    ApiPath(id): ApiPath<String>,
    _body: NoBody,
) -> Result<Response, ApiError> {
    reservation_step(&st, who, idem, &id, |id, actor| {
        Command::CommitReservation { id, actor }
    })
    .await
}

#[utoipa::path(post, path = "/v1/reservations/{id}/release", tag = "reservations",
    params(("id" = String, Path, description = "Reservation id (`r<n>`)")),
    responses(
        (status = 200, description = "Released: the units are available again (repeating returns the same state)", body = ReservationBody),
        (status = 404, description = "`unknown_reservation` (a reservation is remembered once finished, committed, released or expired, only while it is among the newest 1,000,000 reservations made, by id, `FINISHED_RESERVATIONS_KEPT`; one still held is always kept)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn release_reservation(
    State(st): State<AppState>,
    Auth(who, _): Auth<Storefront>,
    _query: NoQuery,
    idem: Idem,
    ApiPath(id): ApiPath<String>,
    _body: NoBody,
) -> Result<Response, ApiError> {
    reservation_step(&st, who, idem, &id, |id, actor| {
        Command::ReleaseReservation { id, actor }
    })
    .await
}

/// Commit and release: the reservation the path names, taken a step by the caller
/// (`step` builds the command from the id and the actor), keyed by an empty body.
async fn reservation_step(
    st: &AppState,
    who: Principal,
    idem: Idem,
    id: &str,
    step: fn(ReservationId, String) -> Command,
) -> Result<Response, ApiError> {
    let command = step(parse_reservation_id(id)?, who.actor);
    run(st, command, idem.key(b""), Success::Ok).await
}

#[utoipa::path(get, path = "/v1/reservations/{id}", tag = "reservations",
    params(("id" = String, Path, description = "Reservation id (`r<n>`)")),
    responses(
        (status = 200, description = "The reservation", body = ReservationBody),
        (status = 404, description = "`unknown_reservation` (a reservation is remembered once finished, committed, released or expired, only while it is among the newest 1,000,000 reservations made, by id, `FINISHED_RESERVATIONS_KEPT`; one still held is always kept)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_reservation(
    State(st): State<AppState>,
    _auth: Auth<AnyRole>,
    _query: NoQuery,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_reservation_id(&id)?;
    let v = read::<surge_engine::ReservationView>(&st, Query::GetReservation { id }).await?;
    let mut text = String::with_capacity(192);
    reservation_json(&v, &mut text);
    Ok(json_text(StatusCode::OK, text))
}

// ---------------------------------------------------------------- orders

#[utoipa::path(post, path = "/v1/orders", tag = "orders",
    request_body = CreateOrderReq,
    responses(
        (status = 201, description = "Created: `status: reserved`, `payment.status: unpaid`", body = OrderBody,
            headers(("Location" = String, description = "/v1/orders/{id}"))),
        (status = 400, description = "`validation_failed` (`field` names it), also `lines` when they differ from the lines of the reservation adopted (the same units per SKU; how they are split into lines may differ)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_sku` / `unknown_reservation`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`sale_not_open`, `purchase_limit_exceeded`, `insufficient_stock`, `duplicate_order_no`, `invalid_transition` (the reservation adopted is no longer held)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_order(
    State(st): State<AppState>,
    Auth(who, _): Auth<Storefront>,
    _query: NoQuery,
    idem: Idem,
    ApiJson(req, body): ApiJson<CreateOrderReq>,
) -> Result<Response, ApiError> {
    let key = idem.key(&body);
    let command = create_order_command(&st, req, who.actor)?;
    run(&st, command, key, Success::Created).await
}

pub fn create_order_command(
    st: &AppState,
    req: CreateOrderReq,
    actor: String,
) -> Result<Command, ApiError> {
    let reservation_id = match req.reservation_id {
        None => None,
        Some(id) => Some(parse_reservation_id(&id)?),
    };
    Ok(Command::PlaceOrder {
        order: Box::new(surge_engine::NewOrder {
            order_no: req.order_no,
            customer_id: req.customer_id,
            lines: order_line_reqs(req.lines),
            payment_ttl_ms: req.payment_ttl_ms.unwrap_or(st.config().payment_ttl_ms),
            reservation_id,
            channel: req.channel,
            shipping_address: req.shipping_address.map(Into::into),
            actor,
        }),
    })
}

#[utoipa::path(post, path = "/v1/orders/{id}/pay", tag = "orders",
    params(("id" = String, Path, description = "Order id (`o<n>`)")),
    request_body = PayReq,
    responses(
        (status = 200, description = "`confirmed`, payment `paid`, stock committed; paying again with the same `amount` and `payment_ref` answers the order as it is, also once it was cancelled, returned or refunded since (a gateway's retried callback)", body = OrderBody),
        (status = 400, description = "`validation_failed`: amount differs from the total", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_order`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: not payable now, or already paid with another `payment_ref` (a second payment is not taken)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn pay_order(
    OrderWrite(call, req, ..): OrderWrite<Storefront, PayReq>,
) -> Result<Response, ApiError> {
    let command = Command::PayOrder {
        id: call.order_id()?,
        amount: req.amount,
        payment_ref: req.payment_ref,
        actor: call.actor(),
    };
    call.run(command).await
}

#[utoipa::path(post, path = "/v1/orders/{id}/transitions", tag = "orders",
    params(("id" = String, Path, description = "Order id (`o<n>`)")),
    request_body = TransitionReq,
    responses(
        (status = 200, description = "Moved along the fulfilment path; a step repeated where the order already is answers it as it is", body = OrderBody),
        (status = 404, description = "`unknown_order`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`order_on_hold`: the order is on hold, and any move to `picking`, `packed` or `shipped` waits for its release (the next step or not); `invalid_transition`: not the next step; or `shipped` repeated with another `tracking_no` than the one kept (the number is not changed)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn transition_order(
    OrderWrite(call, req, ..): OrderWrite<Operator, TransitionReq>,
) -> Result<Response, ApiError> {
    let command = Command::AdvanceOrder {
        id: call.order_id()?,
        to: req.to.into(),
        note: req.note,
        tracking_no: req.tracking_no,
        actor: call.actor(),
    };
    call.run(command).await
}

/// `storefront` may cancel only for the reasons the engine lists for it
/// (`STOREFRONT_CANCEL_REASONS`, beside the transition table).
pub fn check_cancel_reason(role: Role, reason: CancelReasonDto) -> Result<(), ApiError> {
    let allowed = surge_engine::STOREFRONT_CANCEL_REASONS;
    if role == Role::Storefront && !allowed.contains(&reason.into()) {
        let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
        return Err(ApiError::forbidden(format!(
            "role storefront may cancel only with reason {}",
            names.join(" or ")
        )));
    }
    Ok(())
}

#[utoipa::path(post, path = "/v1/orders/{id}/cancel", tag = "orders",
    params(("id" = String, Path, description = "Order id (`o<n>`)")),
    request_body = CancelReq,
    responses(
        (status = 200, description = "`cancelled` (repeating returns the order)", body = OrderBody),
        (status = 403, description = "`forbidden`: storefront with a reason other than customer_request / payment_failed", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "`unknown_order`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`order_shipped` (use the return flow) or `invalid_transition`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn cancel_order(
    OrderWrite(call, req, ..): OrderWrite<Storefront, CancelReq>,
) -> Result<Response, ApiError> {
    check_cancel_reason(call.who.role, req.reason)?;
    let command = Command::CancelOrder {
        id: call.order_id()?,
        reason: req.reason.into(),
        note: req.note,
        actor: call.actor(),
    };
    call.run(command).await
}

#[utoipa::path(post, path = "/v1/orders/{id}/return", tag = "orders",
    params(("id" = String, Path, description = "Order id (`o<n>`)")),
    request_body = ReturnReq,
    responses(
        (status = 200, description = "`returned`, payment `refund_due`; the same return repeated answers the order", body = OrderBody),
        (status = 404, description = "`unknown_order`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: not returnable so, or already returned with another kind or restock", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn return_order(
    OrderWrite(call, req, ..): OrderWrite<Operator, ReturnReq>,
) -> Result<Response, ApiError> {
    let command = Command::ReturnOrderAs {
        id: call.order_id()?,
        kind: req.kind.into(),
        restock: req.restock,
        reason: req.reason,
        note: req.note,
        actor: call.actor(),
    };
    call.run(command).await
}

#[utoipa::path(post, path = "/v1/orders/{id}/refund", tag = "orders",
    params(("id" = String, Path, description = "Order id (`o<n>`)")),
    request_body(content = RefundReq, description = "Optional: every field is; without a body (no `Content-Type`) it is `{}`"),
    responses(
        (status = 200, description = "payment `refunded`", body = OrderBody),
        (status = 404, description = "`unknown_order`", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`invalid_transition`: no refund is due (also on an order already refunded)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn refund_order(
    OrderWrite(call, req, ..): OrderWrite<Operator, RefundReq>,
) -> Result<Response, ApiError> {
    let command = Command::RefundOrder {
        id: call.order_id()?,
        refund_ref: req.refund_ref,
        actor: call.actor(),
    };
    call.run(command).await
}

#[utoipa::path(get, path = "/v1/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "Order id (`o<n>`)")),
    responses(
        (status = 200, description = "The order with its history", body = OrderBody),
        (status = 404, description = "`unknown_order`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_order(
    State(st): State<AppState>,
    _auth: Auth<AnyRole>,
    _query: NoQuery,
    ApiPath(id): ApiPath<String>,
) -> Result<Response, ApiError> {
    let id = parse_order_id(&id)?;
    let v = read::<Box<surge_engine::OrderView>>(&st, Query::GetOrder { id }).await?;
    Ok(axum::Json(OrderBody::from(*v)).into_response())
}

#[utoipa::path(get, path = "/v1/orders/by-no/{order_no}", tag = "orders",
    params(("order_no" = String, Path, description = "The client's order number")),
    responses(
        (status = 200, description = "The order with its history", body = OrderBody),
        (status = 404, description = "`unknown_order`", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_order_by_no(
    State(st): State<AppState>,
    _auth: Auth<AnyRole>,
    _query: NoQuery,
    ApiPath(order_no): ApiPath<String>,
) -> Result<Response, ApiError> {
    let v = read::<Box<surge_engine::OrderView>>(&st, Query::GetOrderByNo { order_no }).await?;
    Ok(axum::Json(OrderBody::from(*v)).into_response())
}

/// Declares a query-parameter struct (for [`ApiQuery`]) whose parameters are the
/// order filters of the list and the exports, `status` to `on_hold`, followed by the
/// endpoint's own, with `filter()` to check them. A macro rather than
/// `#[serde(flatten)]`: `ApiQuery` must see every parameter name.
macro_rules! order_filter_params {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Default, ::serde::Deserialize, ::utoipa::IntoParams)]
        #[into_params(parameter_in = Query)]
        pub struct $name {
            /// An order status (`reserved`, `confirmed`, ..., `returned`).
            pub status: Option<String>,
            /// The customer, exactly (at most 64 bytes, as the field).
            #[param(max_length = 64)]
            pub customer_id: Option<String>,
            /// Orders with a line of this SKU.
            pub sku: Option<String>,
            /// Created at or after: RFC 3339, or milliseconds since the epoch.
            pub created_from: Option<String>,
            /// Created at or before: RFC 3339, or milliseconds since the epoch.
            pub created_to: Option<String>,
            /// `unpaid`, `paid`, `partially_refunded`, `refund_due` or `refunded`.
            pub payment_status: Option<String>,
            /// Order numbers starting with this (at most 64 bytes, as the field).
            #[param(max_length = 64)]
            pub order_no: Option<String>,
            /// Sales channel, exactly (at most 64 bytes, as the field).
            #[param(max_length = 64)]
            pub channel: Option<String>,
            /// `true`: only orders past their ship SLA and not shipped.
            pub delayed: Option<String>,
            /// `true`: only orders on hold; `false`: only orders not on hold.
            pub on_hold: Option<String>,
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $name {
            /// The filters, checked (400 `validation_failed` naming the parameter,
            /// an empty value included: see [`filter_value`]).
            pub fn filter(
                &self,
            ) -> Result<::surge_engine::OrderFilter, $crate::error::ApiError> {
                use $crate::error::ApiError;
                use $crate::routes::{filter_value, parse_flag, parse_time, text_filter};
                use ::surge_engine::limits::{CHANNEL_LEN_MAX, CUSTOMER_ID_LEN_MAX, ORDER_NO_LEN_MAX};
                let status = match filter_value("status", &self.status)? {
                    None => None,
                    Some(s) => Some(s.parse::<::surge_engine::OrderStatus>().map_err(|()| {
                        ApiError::validation("status", format!("unknown order status {s:?}"))
                    })?),
                };
                Ok(::surge_engine::OrderFilter {
                    status,
                    customer_id: text_filter("customer_id", &self.customer_id, CUSTOMER_ID_LEN_MAX)?.map(str::to_string),
                    sku: filter_value("sku", &self.sku)?.map(str::to_string),
                    created_from_ms: parse_time("created_from", filter_value("created_from", &self.created_from)?)?,
                    created_to_ms: parse_time("created_to", filter_value("created_to", &self.created_to)?)?,
                    payment_status: match filter_value("payment_status", &self.payment_status)? {
                        None => None,
                        Some(p) => Some(p.parse::<::surge_engine::PaymentStatus>().map_err(
                            |()| {
                                ApiError::validation(
                                    "payment_status",
                                    format!("unknown payment status {p:?}"),
                                )
                            },
                        )?),
                    },
                    order_no_prefix: text_filter("order_no", &self.order_no, ORDER_NO_LEN_MAX)?.map(str::to_string),
                    channel: text_filter("channel", &self.channel, CHANNEL_LEN_MAX)?.map(str::to_string),
                    delayed: parse_flag("delayed", filter_value("delayed", &self.delayed)?)?,
                    on_hold: parse_flag("on_hold", filter_value("on_hold", &self.on_hold)?)?,
                })
            }
        }
    };
}
pub(crate) use order_filter_params;

order_filter_params! {
    /// Filters of the order list, and its paging. A filter given empty is refused;
    /// an empty `cursor` or `limit` counts as absent (a paging loop's first call).
    pub struct OrderListParams {
        /// `next_cursor` of the previous page (list only).
        pub cursor: Option<String>,
        /// Page size, 1..=1000 (default 50; list only).
        pub limit: Option<String>,
    }
}

/// `true` or `false`.
pub(crate) fn parse_flag(field: &str, text: Option<&str>) -> Result<Option<bool>, ApiError> {
    match text {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(_) => Err(ApiError::validation(field, "must be true or false")),
    }
}

pub(crate) fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// A list filter's (or a report parameter's) value: an empty one (`customer_id=`)
/// is 400 naming it, never read as no filter, so a client that meant to narrow the
/// list and sent an empty value (an unset variable) is told, and is not answered
/// with everything (every customer's orders, say, or the all-time totals in place of
/// a report). Omitting the parameter lists without the filter.
pub(crate) fn filter_value<'a>(
    name: &str,
    value: &'a Option<String>,
) -> Result<Option<&'a str>, ApiError> {
    match value.as_deref() {
        Some("") => Err(ApiError::validation(
            name,
            "empty: omit the parameter to go without it",
        )),
        other => Ok(other),
    }
}

/// [`filter_value`] for a text filter that matches a field of at most `max_bytes`:
/// a longer value, or one holding a control character, could match nothing, so it is
/// refused naming the parameter (it was answered with an empty list, as if nothing
/// matched) as the field itself would be.
pub(crate) fn text_filter<'a>(
    name: &str,
    value: &'a Option<String>,
    max_bytes: usize,
) -> Result<Option<&'a str>, ApiError> {
    let value = filter_value(name, value)?;
    if let Some(text) = value {
        if text.len() > max_bytes {
            return Err(ApiError::validation(
                name,
                format!("must be at most {max_bytes} bytes, as the field it matches"),
            ));
        }
        if text.chars().any(char::is_control) {
            return Err(ApiError::validation(
                name,
                "must not hold control characters, as the field it matches",
            ));
        }
    }
    Ok(value)
}

/// How a time is written in a query string: `+` there is read as a space.
pub(crate) const RFC3339_QUERY_HINT: &str = "such as 2026-11-11T00:00:00Z or \
     2026-11-11T00:00:00%2B08:00 (in a query string a + reads as a space: send it as %2B)";

pub(crate) fn parse_time(field: &str, text: Option<&str>) -> Result<Option<u64>, ApiError> {
    match text {
        None => Ok(None),
        Some(t) if t.bytes().all(|b| b.is_ascii_digit()) => t
            .parse()
            .map(Some)
            .map_err(|_| ApiError::validation(field, "milliseconds out of range")),
        Some(t) => parse_rfc3339(t).map(Some).ok_or_else(|| {
            ApiError::validation(
                field,
                format!("must be milliseconds or an RFC 3339 time {RFC3339_QUERY_HINT}"),
            )
        }),
    }
}

impl OrderListParams {
    fn cursor(&self) -> Result<Option<OrderId>, ApiError> {
        match non_empty(&self.cursor) {
            None => Ok(None),
            Some(c) => c
                .parse()
                .map(Some)
                .map_err(|()| ApiError::validation("cursor", "not a cursor of this list")),
        }
    }
}

#[utoipa::path(get, path = "/v1/orders", tag = "orders", params(OrderListParams),
    responses((status = 200, description = "A page of orders, newest first", body = OrderPage)))]
pub async fn list_orders(
    State(st): State<AppState>,
    _auth: Auth<Reader>,
    ApiQuery(p): ApiQuery<OrderListParams>,
) -> Result<Response, ApiError> {
    let filter = p.filter()?;
    let cursor = p.cursor()?;
    let limit = parse_limit(p.limit.as_deref(), LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX)?;
    let page = read::<surge_engine::Page<surge_engine::OrderView, surge_engine::OrderId>>(
        &st,
        Query::ListOrders {
            filter,
            cursor,
            limit,
        },
    )
    .await?;
    Ok(axum::Json(OrderPage {
        items: page.items.into_iter().map(OrderBody::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    })
    .into_response())
}

/// The CSV quoting, shared with the ledger export (`order_ops`).
pub(crate) use crate::export::csv_field;

// ---------------------------------------------------------------- stats

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// SKUs in `top_skus`, 1..=100 (default 10). Totals only: refused with a report.
    pub top: Option<String>,
    /// Report: the window's start, an RFC 3339 instant (inclusive). With any of
    /// `from`, `to`, `group_by`, `tz`, the answer is a report (`StatsReportBody`).
    pub from: Option<String>,
    /// Report: the window's end, an RFC 3339 instant (exclusive; default now).
    pub to: Option<String>,
    /// Report: `hour`, `day`, `sku`, `customer`, `reason` or `channel` (required).
    pub group_by: Option<String>,
    /// Report: the IANA zone of `hour` and `day` keys (default `UTC`).
    pub tz: Option<String>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SkuSalesBody {
    pub sku: String,
    /// Units that left `on_hand` through a commit, a paid order's or a reservation
    /// committed outright, and did not come back (a cancel after payment, a return,
    /// a modification that lowered the line). Not the report's `units_sold` (with
    /// `group_by`), which counts the lines of orders only.
    pub units_sold: u64,
    /// Units reserved now: held by reservations and unpaid orders.
    pub units_held: u64,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ThroughputBody {
    /// Commands applied or refused by the engine per second over the window.
    pub commands_per_s: f64,
    /// Length of the window in seconds (up to 10).
    pub window_s: f64,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct StatsBody {
    pub orders_total: u64,
    /// Order status -> count.
    #[schema(value_type = Object)]
    pub orders_by_status: serde_json::Map<String, serde_json::Value>,
    /// Cancel reason -> count.
    #[schema(value_type = Object)]
    pub cancellations_by_reason: serde_json::Map<String, serde_json::Value>,
    /// Cancelled orders / orders created.
    pub cancellation_rate: f64,
    /// Payments taken, minor units (refunds not subtracted).
    pub paid_amount: u64,
    pub refunded_amount: u64,
    pub reservations_held: u64,
    /// Top SKUs by units sold, with units held.
    pub top_skus: Vec<SkuSalesBody>,
    pub throughput: ThroughputBody,
}

#[utoipa::path(get, path = "/v1/stats", tag = "reports", params(StatsParams),
    responses((status = 200, description = "Without `from`/`to`/`group_by`/`tz`: the totals (`StatsBody`): orders by status, cancellations by reason, cancellation rate, paid amount, units sold and held per SKU (top N), current throughput. With them: a report over orders created in `[from, to)` (`StatsReportBody`; `from` defaults to the start, every order, and `to` to now; `tz` is answered as the time zone database spells it), grouped by local hour or day, SKU, customer, cancel reason or channel; a report reads at most 200,000 orders (`STATS_REPORT_ORDERS_MAX`) and refuses a larger window (400 naming `from`). Unknown `tz`: 400 naming `tz`. Definitions: `orders` = orders created in the window in the group; `cancelled` = those now `cancelled` (not `expired`); `cancellation_rate` = cancelled / orders (by `reason`: over all orders of the window); `paid_amount`, `refunded_amount` = sums of the orders' payment amounts; `units_sold` = units of orders whose stock is committed and has not come back (`confirmed` through `completed`; not `returned`). By `sku` an order counts in each of its SKUs' groups, with its amounts split across its lines by line value. `reason` counts cancelled orders only.", body = crate::stats::StatsAnswer)))]
pub async fn stats(
    State(st): State<AppState>,
    _auth: Auth<Reader>,
    ApiQuery(p): ApiQuery<StatsParams>,
) -> Result<Response, ApiError> {
    let report = crate::stats::ReportParams {
        from: filter_value("from", &p.from)?,
        to: filter_value("to", &p.to)?,
        group_by: filter_value("group_by", &p.group_by)?,
        tz: filter_value("tz", &p.tz)?,
    };
    if report.any() {
        if p.top.is_some() {
            return Err(ApiError::validation(
                "top",
                "applies to the totals, not to a report (from/to/group_by/tz)",
            ));
        }
        let spec = report.check(crate::time::now_ms())?;
        return Ok(axum::Json(crate::stats::report(&st, spec).await?).into_response());
    }
    let top = match filter_value("top", &p.top)? {
        None => 10,
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=STATS_TOP_MAX).contains(n))
            .ok_or_else(|| {
                ApiError::validation("top", format!("must be an integer in 1..={STATS_TOP_MAX}"))
            })?,
    };
    let s = read::<Box<surge_engine::StatsView>>(&st, Query::Stats { top }).await?;
    let (commands_per_s, window_s) = st.throughput();
    let body = StatsBody {
        orders_total: s.orders_total,
        orders_by_status: s
            .orders_by_status
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), (*v).into()))
            .collect(),
        cancellations_by_reason: s
            .cancellations_by_reason
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), (*v).into()))
            .collect(),
        cancellation_rate: s.cancellation_rate,
        paid_amount: s.paid_amount,
        refunded_amount: s.refunded_amount,
        reservations_held: s.reservations_held,
        top_skus: s
            .top_skus
            .iter()
            .map(|t| SkuSalesBody {
                sku: t.sku.to_string(),
                units_sold: t.units_sold,
                units_held: t.units_held,
            })
            .collect(),
        throughput: ThroughputBody {
            commands_per_s,
            window_s,
        },
    };
    Ok(axum::Json(body).into_response())
}
