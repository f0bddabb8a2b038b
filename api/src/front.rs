//! The one service in front of axum's router. What the request's headers alone
//! decide ([`gate::refusal`](crate::gate::refusal)) and the hottest read of a sale
//! ([`hot::stock_read`](crate::hot::stock_read)) are answered here, without the
//! router; everything else goes to the router unchanged.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use futures_util::future::{Either, Map};
use tower::Service;

use crate::state::AppState;
use crate::{gate, hot};

#[derive(Clone)]
pub struct Front<S> {
    inner: S,
    state: AppState,
    body_limit_bytes: u64,
}

impl<S> Front<S> {
    pub fn new(inner: S, state: AppState) -> Front<S> {
        let body_limit_bytes = state.config().body_limit_bytes as u64;
        Front {
            inner,
            state,
            body_limit_bytes,
        }
    }
}

impl<S> Service<Request<Body>> for Front<S>
where
    S: Service<Request<Body>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<
        Ready<Result<Response, Infallible>>,
        Either<
            S::Future,
            Map<S::Future, fn(Result<Response, Infallible>) -> Result<Response, Infallible>>,
        >,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let body_declared = declares_body(request.headers());
        let answer = match gate::refusal(request.headers(), self.body_limit_bytes) {
            Some(refused) => Some(refused.into_response()),
            None => {
                diverged(&self.state, &request).or_else(|| hot::stock_read(&self.state, &request))
            }
        };
        match answer {
            // Answered here: the body, if one comes, was not read.
            Some(mut answer) => {
                if body_declared {
                    close_after(&mut answer);
                }
                Either::Left(ready(Ok(answer)))
            }
            None if body_declared => Either::Right(Either::Right(
                self.inner
                    .call(request)
                    .map(close_after_early_refusal as fn(_) -> _),
            )),
            None => Either::Right(Either::Left(self.inner.call(request))),
        }
    }
}

/// The request says a body follows (a length above 0, or chunks).
fn declares_body(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0")
}

/// An answer given before the request's body was read (a refused token or role,
/// a method the route does not take; here in `Front`, an early 413 or 503): hyper
/// then closes the connection
/// unless the unread body was already in its buffer (a body of some KiB is not),
/// and the next request a client sends on it finds it gone (an outside probe lost
/// 81 of 471 requests so in a failover). Saying `Connection: close` lets the
/// client open a new one instead. These refusals come before any body extractor
/// in every handler; answers after the body was read keep the connection (a 409
/// at a sale's peak must not cost a reconnect).
fn close_after_early_refusal(answer: Result<Response, Infallible>) -> Result<Response, Infallible> {
    answer.map(|mut response| {
        if matches!(
            response.status(),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::METHOD_NOT_ALLOWED
        ) {
            close_after(&mut response);
        }
        response
    })
}

fn close_after(response: &mut Response) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
}

/// The API's answer on a node whose state diverged from the replicated log's
/// (`EngineHandle::reads_refused`: a fenced former leader restarted with a tail it
/// never published): 503 `not_leader` for every `/v1/` request, reads included.
/// The operations endpoints (`/healthz`, `/readyz`, `/metrics`) still answer.
fn diverged(state: &AppState, request: &Request<Body>) -> Option<Response> {
    if !request.uri().path().starts_with("/v1/") {
        return None;
    }
    let refusal = state.engine_opt()?.reads_refused()?;
    Some(crate::error::ApiError::from_engine(refusal).into_response())
}
