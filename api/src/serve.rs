//! The accept loop: `axum::serve`'s, with the two limits it has no setting for.
//!
//! - **A request's headers must arrive within `header_read_timeout`**, on a fresh
//!   connection and between the requests of a kept-alive one; otherwise the
//!   connection is closed. Without it a client that opened a connection and sent
//!   nothing, or half a request line, held it (and a descriptor) for good. hyper's
//!   own header timer covers a request whose bytes have begun; a connection that
//!   sends nothing at all (fresh, or idle after its last answer) is closed by a
//!   watchdog of ours: nothing read for that long (up to half as long again). It asks for hyper's
//!   graceful close, which waits for an answer in progress (an event stream, a
//!   long export, a request waiting for the engine) and closes after it.
//! - **At most `connections_max` connections at once.** Past it the loop stops
//!   accepting until one closes: the kernel's backlog holds the rest, instead of
//!   every descriptor of the process going to idle sockets.
//!
//! Everything else is as `axum::serve` does it: one task per connection serving
//! HTTP/1.1 with upgrades, accept errors other than a peer's reset waited out for a
//! second (the process may be out of descriptors), and on shutdown the listener
//! closes, every connection finishes the request it is in and closes, and the
//! loop returns once the last has.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt as _;

/// The limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    pub header_read_timeout: Duration,
    pub connections_max: usize,
}

/// Default of [`ServeLimits::header_read_timeout`] (hyper's own, once it has a timer).
pub const HEADER_READ_TIMEOUT_MS_DEFAULT: u64 = 30_000;
/// Default of [`ServeLimits::connections_max`].
pub const CONNECTIONS_MAX_DEFAULT: usize = 10_000;

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
        let activity = Arc::new(Activity::new());
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|request: Request<Incoming>| request.map(Body::new)),
        );
        let mut stop = stop_rx.clone();
        let open = open_rx.clone();
        let timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            // HTTP/1.1 only, as the server is built: no sniffing for the HTTP/2
            // preface first, which waited for a silent client's bytes forever,
            // before any header timeout ran.
            let mut builder = Builder::new(TokioExecutor::new()).http1_only();
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout);
            let io = TokioIo::new(WatchedStream {
                inner: stream,
                activity: Arc::clone(&activity),
            });
            let mut connection = pin!(builder.serve_connection_with_upgrades(io, service));
            // Nothing read over two ticks of half the timeout: idle for at least the
            // timeout (and at most one and a half).
            let tick = (timeout / 2).max(Duration::from_millis(50));
            let mut watch = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
            let (mut reads_seen, mut quiet_ticks) = (activity.reads(), 0u32);
            let mut closing = false;
            loop {
                tokio::select! {
                    served = connection.as_mut() => {
                        if let Err(e) = served {
                            tracing::trace!("connection ended: {e:#}");
                        }
                        break;
                    }
                    _ = stop.changed(), if !closing => {
                        closing = true;
                        connection.as_mut().graceful_shutdown();
                    }
                    _ = watch.tick(), if !closing => {
                        let reads = activity.reads();
                        quiet_ticks = if reads == reads_seen { quiet_ticks + 1 } else { 0 };
                        reads_seen = reads;
                        if quiet_ticks >= 2 {
                            closing = true;
                            connection.as_mut().graceful_shutdown();
                        }
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

/// How many reads of one connection brought bytes: what its watchdog watches (a
/// count, not a clock, so a read costs one store).
struct Activity {
    reads: AtomicU64,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            reads: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        // One reader per connection: no lost update to guard against.
        let reads = self.reads.load(Ordering::Relaxed);
        self.reads.store(reads.wrapping_add(1), Ordering::Relaxed);
    }

    fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }
}

pin_project_lite::pin_project! {
    /// The connection's socket, noting when it last read a byte.
    struct WatchedStream {
        #[pin]
        inner: TcpStream,
        activity: Arc<Activity>,
    }
}

impl AsyncRead for WatchedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let read = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        read
    }
}

impl AsyncWrite for WatchedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}
