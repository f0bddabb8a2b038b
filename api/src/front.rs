//! The one service in front of axum's router. What the request's headers alone
//! decide ([`gate::refusal`](crate::gate::refusal)) and the hottest read of a sale
//! ([`hot::stock_read`](crate::hot::stock_read)) are answered here, without the
//! router; everything else goes to the router unchanged.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready as ready_poll};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, Request, Version, header};
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use hyper::body::{Frame, SizeHint};
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
    type Future =
        Either<Ready<Result<Response, Infallible>>, Either<S::Future, CloseUnlessRead<S::Future>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let body_declared = declares_body(request.headers());
        let version = request.version();
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
                    close_after(&mut answer, version);
                }
                Either::Left(ready(Ok(answer)))
            }
            None if body_declared => {
                let read_to_end = Arc::new(AtomicBool::new(false));
                let request = request.map(|body| {
                    Body::new(Watched {
                        inner: body,
                        read_to_end: Arc::clone(&read_to_end),
                    })
                });
                Either::Right(Either::Right(CloseUnlessRead {
                    answer: self.inner.call(request),
                    read_to_end,
                    version,
                }))
            }
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

pin_project_lite::pin_project! {
    /// The router's answer to a request that declared a body, with `Connection:
    /// close` when the body was not read to its end: a refused token or role, a
    /// method the route does not take, an unknown route, a query or path refused,
    /// a `Content-Type` refused, a body over the limit. hyper closes such a
    /// connection unless the unread rest was already in its buffer (a body of some
    /// KiB is not), and the next request a client sent on it found it gone (an
    /// outside probe lost 81 of 471 requests so in a failover): said, the client
    /// opens a new one instead. An answer after the body was read keeps the
    /// connection (a 409 at a sale's peak must not cost a reconnect).
    pub struct CloseUnlessRead<F> {
        #[pin]
        answer: F,
        read_to_end: Arc<AtomicBool>,
        version: Version,
    }
}

impl<F> Future for CloseUnlessRead<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut response) = ready_poll!(this.answer.poll(cx));
        let closes = response
            .headers()
            .get(header::CONNECTION)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        if closes || !this.read_to_end.load(Ordering::Acquire) {
            close_after(&mut response, *this.version);
        }
        Poll::Ready(Ok(response))
    }
}

/// A request's body that notes when it has been read to its end.
struct Watched {
    inner: Body,
    read_to_end: Arc<AtomicBool>,
}

impl hyper::body::Body for Watched {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let frame = ready_poll!(Pin::new(&mut self.inner).poll_frame(cx));
        if frame.is_none() || self.inner.is_end_stream() {
            self.read_to_end.store(true, Ordering::Release);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `Connection: close` on `response` to a request of HTTP `version`. To an HTTP/1.0
/// request the answer is marked HTTP/1.0 as well: hyper otherwise appends
/// `keep-alive` for a 1.0 client that asked for it (`close, keep-alive`), and such a
/// client sent its next request on a connection the server then closed.
fn close_after(response: &mut Response, version: Version) {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    if version == Version::HTTP_10 {
        *response.version_mut() = Version::HTTP_10;
    }
}

/// The API's answer on a node whose state diverged from the replicated log's
/// (`EngineHandle::reads_refused`: a fenced former leader restarted with a tail it
/// never published): 503 `not_leader` for every `/v1/` request, reads included.
/// The operations endpoints (`/healthz`, `/readyz`, `/metrics`) still answer, and
/// a caller without a valid token is answered 401 by the router first (it was told
/// the node's state instead).
fn diverged(state: &AppState, request: &Request<Body>) -> Option<Response> {
    if !request.uri().path().starts_with("/v1/") {
        return None;
    }
    let refusal = state.engine_opt()?.reads_refused()?;
    crate::auth::authenticate(state, request.headers()).ok()?;
    Some(crate::error::ApiError::from_engine(refusal).into_response())
}
