//! The one service in front of axum's router. What the request's headers alone
//! decide ([`gate::refusal`](crate::gate::refusal)) and the hottest read of a sale
//! ([`hot::stock_read`](crate::hot::stock_read)) are answered here, without the
//! router; everything else goes to the router unchanged.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::Request;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
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
    type Future = Either<Ready<Result<Response, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let answer = match gate::refusal(request.headers(), self.body_limit_bytes) {
            Some(refused) => Some(refused.into_response()),
            None => {
                diverged(&self.state, &request).or_else(|| hot::stock_read(&self.state, &request))
            }
        };
        match answer {
            Some(answer) => Either::Left(ready(Ok(answer))),
            None => Either::Right(self.inner.call(request)),
        }
    }
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
