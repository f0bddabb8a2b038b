//! The request timeout (`--request-timeout-ms`), and an answer past it that says
//! what it did.
//!
//! A request still running at its deadline is answered 503 `overloaded`. For a
//! write that answer used to say only that it "may still take effect": the
//! write could be queued (then the writer skipped it), or taken (then applied).
//! Here the write's handler registers its [`Claim`] as it queues it
//! ([`register`]), and at the deadline the layer gives the write up
//! ([`Claim::abandon`]), one atomic step against the writer taking it:
//!
//! - given up: nothing was done; the 503 says so, and a retry is safe;
//! - already taken: it is applied and answered once committed, so the layer
//!   waits for that answer up to one more request timeout (a commit takes
//!   milliseconds; in `replicated` mode it also waits for the stream), and
//!   answers it, whatever it is. Only past that second bound is the answer a
//!   503 that says the write may still take effect.
//!
//! A request with no write registered (a read, or a write whose body or checks
//! were not done yet) is answered 503 at the deadline, having done nothing. An
//! action that runs on once begun (a promotion, a snapshot) registers as running
//! ([`register_running`]) and is awaited like a taken write.
//! The claim lives in a task-local slot the layer scopes around its request, so
//! a handler registers it without anything passed down to it.

use std::cell::RefCell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Request;
use axum::response::{IntoResponse, Response};
use surge_engine::Claim;
use tokio::task::futures::TaskLocalFuture;
use tokio::time::Sleep;
use tower::{Layer, Service};

use crate::error::ApiError;

/// What the current request has set going that its deadline must not misreport.
pub enum Begun {
    /// A write queued for the writer: given up at the deadline if not yet taken.
    Write(Claim),
    /// An action that runs on once begun, whoever waits (a promotion, a snapshot):
    /// its answer is awaited like a taken write's.
    Running,
}

tokio::task_local! {
    /// What the current request set going, if anything.
    static BEGUN: RefCell<Option<Begun>>;
}

/// Note the write the current request has queued, for its deadline to give up or
/// wait for (outside a [`DeadlineLayer`], as in a test calling a handler
/// directly, nothing is noted).
pub fn register(claim: Option<Claim>) {
    let _ = BEGUN.try_with(|slot| *slot.borrow_mut() = claim.map(Begun::Write));
}

/// Note that the current request has begun an action that cannot be given up (a
/// promotion, a snapshot): at the deadline its answer is awaited up to one more
/// timeout, and past that the 503 says it may still take effect, never that
/// nothing was done.
pub fn register_running() {
    let _ = BEGUN.try_with(|slot| *slot.borrow_mut() = Some(Begun::Running));
}

/// Answers a request 503 at `timeout` unless the write it queued was taken by
/// then; a taken write's answer is awaited up to `timeout` more.
#[derive(Clone, Copy)]
pub struct DeadlineLayer {
    timeout: Duration,
}

impl DeadlineLayer {
    pub fn new(timeout: Duration) -> DeadlineLayer {
        DeadlineLayer { timeout }
    }
}

impl<S> Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;

    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            timeout: self.timeout,
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S, B, R> Service<Request<B>> for Deadline<S>
where
    S: Service<Request<B>, Response = axum::http::Response<R>, Error = Infallible>,
    R: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    R::Error: Into<axum::BoxError>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = TaskLocalFuture<RefCell<Option<Begun>>, Timed<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let timed = Timed {
            answer: self.inner.call(request),
            timer: tokio::time::sleep(self.timeout),
            grace: self.timeout,
            taken: false,
        };
        BEGUN.scope(RefCell::new(None), timed)
    }
}

pin_project_lite::pin_project! {
    /// The request's answer, raced against its deadline; polled inside the scope
    /// of its [`BEGUN`] slot.
    pub struct Timed<F> {
        #[pin]
        answer: F,
        #[pin]
        timer: Sleep,
        grace: Duration,
        // The deadline passed with the request's write taken: waiting for its
        // answer, up to `grace` more.
        taken: bool,
    }
}

impl<F, R> Future for Timed<F>
where
    F: Future<Output = Result<axum::http::Response<R>, Infallible>>,
    R: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    R::Error: Into<axum::BoxError>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(Ok(answer)) = this.answer.poll(cx) {
            return Poll::Ready(Ok(answer.map(axum::body::Body::new)));
        }
        if this.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        if *this.taken {
            return Poll::Ready(Ok(ApiError::overloaded(
                "the request took too long: the engine had begun it, and it may still \
                 take effect: read it back, or retry it with the same Idempotency-Key \
                 where the endpoint takes one",
            )
            .into_response()));
        }
        let begun = BEGUN
            .try_with(|slot| slot.borrow_mut().take())
            .ok()
            .flatten();
        let given_up = match begun {
            Some(Begun::Write(claim)) => claim.abandon(),
            Some(Begun::Running) => false,
            None => true,
        };
        if given_up {
            // Given up before the writer took it, or nothing begun: nothing done.
            return Poll::Ready(Ok(ApiError::overloaded(
                "the request took too long; nothing was done (the engine had taken no \
                 write of it): retry it",
            )
            .into_response()));
        }
        // Taken (or running): it is carried out and answered; wait for that, up to
        // `grace` more. Polling the reset timer registers its waker; one already
        // due (a zero grace) has this task polled again, to answer above.
        *this.taken = true;
        let until = this.timer.deadline() + *this.grace;
        this.timer.as_mut().reset(until);
        if this.timer.poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
        Poll::Pending
    }
}
