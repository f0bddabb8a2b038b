//! The OpenAPI 3 document, generated from the handlers' annotations. The committed
//! copy `api/openapi.json` is checked against it by `tests/openapi.rs`; refresh it with
//! `cargo run -p surge-api --bin surge -- openapi > api/openapi.json`.

use std::sync::OnceLock;

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::{batch, console, dto, error, events, export, ops, order_ops, routes};

const DESCRIPTION: &str = "\
In-memory order and stock-reservation engine for flash sales.

**Auth.** `Authorization: Bearer <token>`; tokens map to roles. `storefront`: reservations; \
create, pay and cancel orders (reason `customer_request` or `payment_failed` only); read SKUs \
(one or the list), single reservations and orders; `/v1/batch`. `operator`: all of that, plus transitions, cancel \
with any reason, return, refund, stock adjustments and all reads. `admin`: everything, plus \
`PUT /v1/skus/{sku}` and `/v1/admin/*`. `viewer`: reads only (including lists, export, stats, \
events). No or unknown token: 401 `unauthorized`; a role that may not: 403 `forbidden`. \
`/healthz`, `/readyz`, `/metrics`, `/openapi.json` and `/` need no token. A server started \
without tokens (loopback only) treats every request as `admin`.

**Actors.** Order history records who did what: the caller's role name, refined by an optional \
`X-Actor` header (printable ASCII, no spaces): `X-Actor: alice` as operator records \
`operator:alice`. At most 64 bytes in all, else 400. A token may be named in the tokens file \
(`operator tk-7f3a lily`): its actor is then `operator:lily`, set by the server, and an \
`X-Actor` header is kept as whom it acted for: wherever an actor is shown (history, \
cancellation, hold, ledger, events) `\"actor\": \"operator:lily\"` comes with \
`\"on_behalf_of\": \"cs-7\"`; `on_behalf_of` is absent when nobody was acted for. Token names are \
1..=32 bytes of printable ASCII without spaces (else the server does not start).

**Idempotency.** Every write but `PUT /v1/skus/{sku}` (which sets what it names: a \
repeat sets the same values again, and is logged again) accepts `Idempotency-Key` (printable ASCII, at most 128 bytes): \
reservations, commit, release, orders, pay, transitions, cancel, hold, release-hold, \
return, refund, refunds, an order's `PATCH`, adjustments, and `/v1/batch` (one key for \
the request, at most 122 bytes: each op is kept under the key and its index). The same \
key with the same method, path and body (the same bytes: the same JSON written another \
way is another body) returns the original status and body, also after a restart; with a \
different request it is 422 `idempotency_conflict`. What the engine decided is kept, a \
refusal too (a 409 `insufficient_stock` replays as 409 after stock arrives: a new attempt \
takes a new key). A single request answered without a decision leaves the key unused, \
to be retried under it: refused as malformed (400, before the engine or by it), 401, 403, \
404 for an id that cannot be one, 408, 413, 415, 431, a 503 that says nothing was \
done, and a 503 for one of the engine's limits (held reservations, orders, actors). A \
batch's key is kept once any of its ops reached the engine: see `/v1/batch`. Keys are \
remembered for a retention window (`SURGE_IDEMPOTENCY_WINDOW_MS`, 24 hours by default) \
within a memory budget (`SURGE_IDEMPOTENCY_BUDGET_MB`, 2 GiB by default: about 29.8 \
million keys at 72 bytes each). Past the budget \
the oldest keys are forgotten first, so at a peak the window shortens \
(`surge_idempotency_window_seconds` in `/metrics`); a keyed write is never refused because \
of the number of keys.

**Errors.** RFC 9457 `application/problem+json` with a stable `code`; `field` names the \
offending field for `validation_failed`. Malformed JSON, unknown fields, wrong types and \
out-of-range values: 400; a query parameter the endpoint does not take: 400 naming it (`field` \
is the parameter), so that a mistyped filter never widens a list; body not JSON: 415; body over the limit (1 MiB by default): 413; \
unknown SKU / order / reservation: 404 (ids that do not parse are unknown ids: 404); \
business conflicts: 409; queue full, request timeout, shutting down: 503 `overloaded` with \
`Retry-After`; a body that has not arrived within the body timeout (`SURGE_BODY_TIMEOUT_MS`, half \
the request timeout by default) after its headers: 408 `request_timeout` naming `body`, nothing \
done, the connection closed; storage failure: 503 `storage_unavailable`; a write to a standby or to a \
former leader a newer one fenced: 503 `not_leader` with `Retry-After`; any `/v1/` request, reads \
included, to a node whose state holds records the replicated log never got from it: 503 \
`not_leader` (fenced) or `storage_unavailable` (a `replicated` leader the stream has not caught \
up with yet). Unknown routes: 404 `not_found`; \
wrong method: 405 `method_not_allowed`. An endpoint that takes no body (a reservation's commit and release, the admin snapshot and promote) takes none or `{}`, and so does an order action whose fields are all optional (`/refund`, `/release-hold`); any other body is refused like a bad body elsewhere (400 naming the field, 415 if not JSON). A path parameter that cannot be read (a percent-encoding that is not UTF-8): 400 naming it. A request that fails changes nothing.

**Surge-Lsn.** Every 2xx answer to a write carries `Surge-Lsn`: the log position of the \
record that made the change (the seq of its first event). A replayed `Idempotency-Key` \
answers with the original record's LSN (keys remembered from a data dir older than \
snapshot format 4 have none); a write that changed nothing (a repeated cancel) answers \
with the LSN of the last record, whose state it shows. Rejections carry none. In `/v1/batch` each successful \
result carries `\"lsn\"`, and the answer's `Surge-Lsn` is the highest of them (none when \
no op succeeded). The admin snapshot and a promotion log no record: theirs is the \
`lsn` of their body, the last record the snapshot or the new leader holds.

**Strict queries.** Unknown query parameters are refused like unknown JSON fields: 400 \
`validation_failed` naming the parameter, on reads and writes alike (no write takes any).

**Units.** Quantities are positive integers; money is integer minor units; times in \
responses are RFC 3339 UTC with milliseconds; durations in requests are milliseconds. \
An integer field is written as a JSON integer: `2`, never `2.0` or `2e0` (400 naming the \
field). Text limits are in bytes of UTF-8, not characters; text fields hold no control \
characters (C0, DEL or C1) unless their description says otherwise.

**Query parameters** are declared as strings; their ranges and values are in their \
descriptions and checked by the server (400 naming the parameter). An empty `limit`, \
`cursor`, `after` or `bom` is taken as absent; any other empty filter is refused (omit \
it).

**Order of refusals.** Refusals decided from the headers alone come first, whoever \
sends them: a header given twice (`Authorization`, `X-Actor`, `Idempotency-Key`: 400), \
a body over the limit (413), not JSON (415), headers too large (431). Then 401 \
`unauthorized`, then 403 `forbidden`, then a malformed `X-Actor` or `Idempotency-Key` \
(400), then the request itself. A node whose state diverged from the replicated log \
answers any authenticated caller 503 `not_leader`.";

#[derive(OpenApi)]
#[openapi(
    info(title = "surge", description = DESCRIPTION, license(name = "MIT OR Apache-2.0")),
    paths(
        routes::define_sku, routes::get_sku, routes::list_skus, routes::adjust_stock,
        routes::get_sku_customer,
        routes::create_reservation, routes::commit_reservation, routes::release_reservation,
        routes::get_reservation,
        routes::create_order, routes::pay_order, routes::transition_order, routes::cancel_order,
        routes::return_order, routes::refund_order, routes::get_order, routes::get_order_by_no,
        routes::list_orders, export::export_csv, export::export_xlsx, routes::stats,
        order_ops::hold_order, order_ops::release_hold, order_ops::modify_order,
        order_ops::refund_amount, order_ops::list_ledger, order_ops::export_ledger,
        batch::batch, events::events,
        ops::healthz, ops::readyz, ops::metrics, ops::openapi, ops::snapshot, ops::promote,
        console::index,
    ),
    components(schemas(
        error::Problem, error::ShortLine, error::SaleRefusal, dto::LineDto, dto::OrderLineDto,
    )),
    modifiers(&Conventions),
    tags(
        (name = "skus", description = "SKUs and stock"),
        (name = "reservations", description = "Cart holds"),
        (name = "orders", description = "Orders, payment, fulfilment, cancellation, returns, review holds, modification, refunds"),
        (name = "ledger", description = "Money movements: charges, refunds, reversals"),
        (name = "batch", description = "Many commands at once"),
        (name = "events", description = "The event feed"),
        (name = "reports", description = "Statistics"),
        (name = "operations", description = "Health, readiness, metrics, snapshots"),
    )
)]
pub struct ApiDoc;

/// Adds what every `/v1` operation shares: bearer auth, the auth and validation
/// problems, the `X-Actor` / `Idempotency-Key` headers, and 503 `overloaded`.
struct Conventions;

fn problem(description: &str) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/problem+json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Problem")))
                .build(),
        )
        .build()
}

/// An optional request header of 1..=`max_len` bytes matching `pattern`, as the
/// server checks it (400 naming the header otherwise).
fn header_param(
    name: &str,
    description: &str,
    pattern: &str,
    max_len: usize,
) -> utoipa::openapi::path::Parameter {
    use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Header)
        .required(utoipa::openapi::Required::False)
        .description(Some(description))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(max_len))
                .pattern(Some(pattern)),
        ))
        .build()
}

/// `Surge-Lsn` on a write's 2xx answer, where the operation does not describe it
/// itself (API.md v1.1, "Strict requests, consistent answers").
fn surge_lsn_header(path: &str) -> utoipa::openapi::header::Header {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let description = if path == "/v1/batch" {
        "The last record among the ops that succeeded (each carries its own `lsn`); absent when none did"
    } else {
        "The log position of the record that made the change (the seq of its first event); a repeat that changed nothing, or a replayed Idempotency-Key, answers with the record its answer stands for"
    };
    utoipa::openapi::header::HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .minimum(Some(1)),
        )
        .description(Some(description))
        .build()
}

/// The POST actions that may come without a body (every field optional).
const BODY_OPTIONAL: [&str; 2] = ["/v1/orders/{id}/refund", "/v1/orders/{id}/release-hold"];

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        crate::event_doc::document_events(openapi);
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            // Every POST but the admin's two (they create nothing a retry could repeat).
            let idempotent_post = path != "/v1/admin/snapshot" && path != "/v1/admin/promote";
            let ops = [
                (false, false, item.get.as_mut()),
                (true, false, item.put.as_mut()),
                (true, idempotent_post, item.post.as_mut()),
                // `PATCH /v1/orders/{id}` takes a key like the order's other writes.
                (true, true, item.patch.as_mut()),
            ];
            for (write, idempotent, op) in ops {
                let Some(op) = op else { continue };
                // An action whose fields are all optional takes no body too
                // (`ApiJson::from_request_or_empty`).
                if BODY_OPTIONAL.contains(&path.as_str())
                    && let Some(body) = op.request_body.as_mut()
                {
                    body.required = Some(utoipa::openapi::Required::False);
                }
                op.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                let responses = &mut op.responses.responses;
                for (code, text) in [
                    (
                        "400",
                        "`validation_failed`: a field or query parameter is malformed, out of range or unknown (`field` names it)",
                    ),
                    ("401", "`unauthorized`: no or unknown token"),
                    ("403", "`forbidden`: the role may not do this"),
                    (
                        "503",
                        "`overloaded` (queue full, timeout; with `Retry-After`; a write still queued at the request timeout is dropped unapplied and its detail says nothing was done; one the engine had taken is answered with its outcome, up to one more timeout, past which the detail says it may still take effect: read it back, or retry with the same `Idempotency-Key`), `storage_unavailable`, or for a write to a standby or a fenced former leader `not_leader` (with `Retry-After`; reads too on a fenced node whose state holds records the replicated log never got from it)",
                    ),
                ] {
                    responses
                        .entry(code.to_string())
                        .or_insert_with(|| problem(text).into());
                }
                let params = op.parameters.get_or_insert_with(Vec::new);
                if write {
                    for (code, text) in [
                        ("413", "`validation_failed`: body over the limit"),
                        ("415", "`validation_failed`: body not application/json"),
                    ] {
                        responses
                            .entry(code.to_string())
                            .or_insert_with(|| problem(text).into());
                    }
                    // Every write reads its body, an empty one included, within the
                    // body timeout.
                    responses.entry("408".to_string()).or_insert_with(|| {
                        problem("`request_timeout`: the body (an empty one included) did not arrive within the body timeout of the headers (`field` is `body`); nothing was done").into()
                    });
                    for (code, response) in responses.iter_mut() {
                        if let (true, utoipa::openapi::RefOr::T(response)) =
                            (code.starts_with('2'), response)
                        {
                            response
                                .headers
                                .entry("Surge-Lsn".to_string())
                                .or_insert_with(|| surge_lsn_header(path));
                        }
                    }
                    params.push(header_param(
                        "X-Actor",
                        "Who is acting, recorded as `role:actor` in history (printable ASCII without spaces). For an unnamed token `role:actor` is at most 64 bytes, so the header at most 64 less the role and the colon (53 for `storefront`, 58 for `admin`: the declared maximum is the one every role may send); for a named token it is kept as `on_behalf_of`, at most 64 bytes",
                        "^[!-~]+$",
                        surge_engine::limits::ACTOR_LEN_MAX - "storefront:".len(),
                    ));
                }
                if idempotent {
                    responses.entry("422".to_string()).or_insert_with(|| {
                        problem("`idempotency_conflict`: the Idempotency-Key was used with a different request, or by another caller").into()
                    });
                    params.push(header_param(
                        "Idempotency-Key",
                        "Replay protection: printable ASCII (spaces inside only: HTTP drops them at the ends), at most 128 bytes (on `/v1/batch` 122 by default, see the operation); the same key and request from the same caller (the same Authorization) return the original response; another request under the key, or another caller's, is 422",
                        // Spaces inside, never at the ends: HTTP strips them there.
                        "^[!-~]([ -~]*[!-~])?$",
                        if path == "/v1/batch" {
                            crate::extract::Idem::batch_key_len_max(crate::state::BATCH_OPS_MAX)
                        } else {
                            surge_engine::limits::IDEMPOTENCY_KEY_LEN_MAX
                        },
                    ));
                }
            }
        }
    }
}

/// The document as pretty JSON (computed once).
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut text = ApiDoc::openapi()
            .to_pretty_json()
            .expect("the document serializes");
        text.push('\n');
        text
    })
}
