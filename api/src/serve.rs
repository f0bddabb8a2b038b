//! The accept loop: `axum::serve`'s, with the two limits it has no setting for.
//!
//! - **A request's headers must arrive within `header_read_timeout`**, on a fresh
//!   connection and between the requests of a kept-alive one (hyper's header timer,
//!   which `axum::serve` never gives a clock); otherwise the connection is closed.
//!   Without it a client that opened a connection and sent nothing, or half a
//!   request line, held it (and a descriptor) for good. The default, 75 s, outlasts
//!   the idle timeouts of common load balancers (60 s), which must close a kept-alive
//!   connection before the server does.
//! - **At most `connections_max` connections at once.** Past it the loop stops
//!   accepting until one closes: the kernel's backlog holds the rest, instead of
//!   every descriptor of the process going to idle sockets.
//!
//! - **A client that half-closes still gets its answer** (hyper's `half_close`):
//!   one that sent its request and shut down its sending side was answered with
//!   nothing while its write was carried out, so a retry without a key applied it
//!   twice.
//! - **Shutdown drains for at most `drain_timeout`**: a connection still open then
//!   (half a request head, a slow body) is closed, so a stop never waits for the
//!   header timeout (75 s) while an orchestrator is about to kill the process and
//!   lose its shutdown snapshot.
//!
//! Everything else is as `axum::serve` does it: one task per connection serving
//! HTTP/1.1 with upgrades, accept errors other than a peer's reset waited out for a
//! second (the process may be out of descriptors), and on shutdown the listener
//! closes, every connection finishes the request it is in and closes, and the
//! loop returns once the last has.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt as _;

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub header_read_timeout: Duration,
    pub connections_max: usize,
    /// How long a connection may take to finish once shutdown began.
    pub drain_timeout: Duration,
}

/// Default of [`ServeLimits::header_read_timeout`].
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 75_000;
/// Bounds of [`ServeLimits::header_read_timeout`], in milliseconds.
pub const HEADER_READ_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 1_000..=3_600_000;
/// Default of [`ServeLimits::drain_timeout`], in milliseconds: a write in flight
/// is answered within milliseconds and an export of the largest list within
/// seconds. The server raises it to 1 s above twice the request timeout (a write
/// the engine took by the timeout is awaited up to one more, `deadline`): 21 s with
/// the default 10 s timeout, still inside the 30 s an orchestrator commonly allows
/// a stop; a stop takes that long only while a connection holds a request open.
pub const DRAIN_TIMEOUT_MS_DEFAULT: u64 = 10_000;
/// Bounds of [`ServeLimits::drain_timeout`], in milliseconds.
pub const DRAIN_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 100..=600_000;
/// Default of [`ServeLimits::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;
/// Bounds of [`ServeLimits::connections_max`].
pub const CONNECTIONS_MAX_RANGE: std::ops::RangeInclusive<u64> = 1..=1_000_000;

/// Serve `app` on `listener` until `shutdown` completes, then drain.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    // Closed (dropped) to tell the connections to finish; each holds a receiver of
    // `open` until it has, so `open.closed()` says they all did.
    let (stop_tx, stop_rx) = watch::channel(());
    let (open_tx, open_rx) = watch::channel(());
    let mut shutdown = pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(e) => {
                    wait_out_accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|request: Request<Incoming>| request.map(Body::new)),
        );
        let mut stop = stop_rx.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            // hyper's HTTP/1.1 connection itself, not hyper-util's auto builder
            // (`axum::serve`'s), whose HTTP/2 preface sniffing waits for a silent
            // client's first bytes before hyper's header timer can run. The timer
            // starts whenever hyper waits for a request head: on a new connection
            // and after each answer of a kept-alive one.
            let mut builder = http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .half_close(true);
            let mut connection = pin!(
                builder
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
            );
            tokio::select! {
                served = connection.as_mut() => {
                    if let Err(e) = served {
                        tracing::trace!("connection ended: {e:#}");
                    }
                }
                _ = stop.changed() => {
                    connection.as_mut().graceful_shutdown();
                    match tokio::time::timeout(limits.drain_timeout, connection).await {
                        Ok(Err(e)) => tracing::trace!("connection ended: {e:#}"),
                        Ok(Ok(())) => {}
                        Err(_) => tracing::debug!(
                            drain_timeout_ms = limits.drain_timeout.as_millis() as u64,
                            "connection still open when the drain ended: closed"
                        ),
                    }
                }
            }
            drop(slot);
            drop(open);
        });
    }
    drop(listener);
    drop(stop_tx);
    drop(open_rx);
    open_tx.closed().await;
}

/// A peer that reset or aborted before we accepted costs nothing; anything else
/// (out of descriptors) is logged and waited out for a second, as hyper did.
async fn wait_out_accept_error(e: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("accepting a connection failed: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}
