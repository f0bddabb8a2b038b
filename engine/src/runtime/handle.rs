//! The caller's side: [`EngineHandle`] (submit, query, snapshot, replication
//! controls, shutdown) and the [`Ticket`] an answer comes back on. Handles share one
//! `Shared`; the last one dropped shuts the engine down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::queue::TrySendError;
use parking_lot::Mutex;

use super::follower::FollowerMsg;
use super::{Claim, Durability, Error, Inner, LogPublisher, Request, Role, RuntimeStats};
use crate::board::BoardRead;
use crate::command::{Acked, Command, IdempotencyKey, Outcome, Query, SkuView};
use crate::feed::EventLog;
use crate::query::QueryReply;
use crate::{FNV1A64_START, Rejection, fnv1a64_on};

/// A pending answer: `.await` it from async code or `wait()` from a plain thread.
///
/// A write's ticket dropped before the writer took the write gives it up: it is
/// never applied (the caller timed out, or stopped waiting). [`Ticket::claim`] lets a
/// caller that stops waiting learn which it was.
pub struct Ticket<T> {
    answer: tokio::sync::oneshot::Receiver<Result<T, Error>>,
    given_up_on_drop: Option<GiveUpOnDrop>,
}

/// Gives its write up when dropped, unless the writer took it first.
struct GiveUpOnDrop(Claim);

impl Drop for GiveUpOnDrop {
    fn drop(&mut self) {
        self.0.abandon();
    }
}

impl<T> Ticket<T> {
    fn read(answer: tokio::sync::oneshot::Receiver<Result<T, Error>>) -> Ticket<T> {
        Ticket {
            answer,
            given_up_on_drop: None,
        }
    }

    fn write(answer: tokio::sync::oneshot::Receiver<Result<T, Error>>, claim: Claim) -> Ticket<T> {
        Ticket {
            answer,
            given_up_on_drop: Some(GiveUpOnDrop(claim)),
        }
    }

    /// A write's [`Claim`]: with it a caller that stops waiting gives the write up
    /// and learns whether it was taken (`None` for a read, which changes nothing).
    pub fn claim(&self) -> Option<Claim> {
        self.given_up_on_drop.as_ref().map(|own| own.0.clone())
    }

    pub fn wait(self) -> Result<T, Error> {
        self.answer
            .blocking_recv()
            .unwrap_or(Err(Error::ShuttingDown))
    }

    /// The answer if it has come, without waiting (for the step-driven core's
    /// owner, who knows when answers can come); [`Error::ShuttingDown`] when none
    /// ever will. Call it until it answers, then no more.
    pub fn try_wait(&mut self) -> Option<Result<T, Error>> {
        match self.answer.try_recv() {
            Ok(answer) => Some(answer),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty) => None,
            Err(tokio::sync::oneshot::error::TryRecvError::Closed) => {
                Some(Err(Error::ShuttingDown))
            }
        }
    }
}

/// One read counted among those waiting for the stock board, until it is dropped
/// (answered, or its request gone).
struct BoardWaiter<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> BoardWaiter<'a> {
    /// `None` when `max` reads wait already.
    fn enter(count: &'a std::sync::atomic::AtomicUsize, max: usize) -> Option<BoardWaiter<'a>> {
        if count.fetch_add(1, Ordering::AcqRel) >= max {
            count.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(BoardWaiter(count))
    }
}

impl Drop for BoardWaiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a stock read answers from the board (counted when the SKU was unchanged
/// behind the read index); `None` when the board is behind.
fn board_answer(
    stats: &super::RuntimeStats,
    sku: &str,
    read: BoardRead,
) -> Option<Result<SkuView, Rejection>> {
    match read {
        BoardRead::Sku(view) => Some(Ok(view)),
        BoardRead::Unchanged(view) => {
            stats.board_unchanged.fetch_add(1, Ordering::Relaxed);
            Some(Ok(view))
        }
        BoardRead::Unknown => Some(Err(Rejection::UnknownSku {
            sku: sku.to_string(),
        })),
        BoardRead::Behind => None,
    }
}

impl<T> std::future::Future for Ticket<T> {
    type Output = Result<T, Error>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.answer)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::ShuttingDown)))
    }
}

pub(super) struct Shared {
    pub(super) tx: super::queue::Sender<Request>,
    /// Reads go here when there is a follower (sync mode).
    pub(super) follower_tx: Option<Sender<FollowerMsg>>,
    pub(super) inner: Arc<Inner>,
    pub(super) shutting_down: AtomicBool,
    pub(super) writer: Mutex<Option<JoinHandle<()>>>,
    pub(super) queue_len_max: usize,
    pub(super) durability: Durability,
}

impl Shared {
    fn shutdown(&self) {
        let Some(thread) = self.writer.lock().take() else {
            return;
        };
        self.shutting_down.store(true, Ordering::Release);
        // The queue may be full: a blocking send waits for room, which the writer makes.
        // The writer stops the follower after the last flush.
        let _ = self.tx.send(Request::Shutdown);
        let _ = thread.join();
    }
}

impl Drop for Shared {
    /// The last handle gone: shut down cleanly (drain, flush, snapshot).
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A cheap, cloneable handle to a running engine, usable from tokio and from threads.
#[derive(Clone)]
pub struct EngineHandle {
    pub(super) shared: Arc<Shared>,
}

impl EngineHandle {
    fn send(&self, request: Request) -> Result<(), Error> {
        if self.shared.shutting_down.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        match self.shared.tx.try_send(request) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => {
                self.shared
                    .inner
                    .stats
                    .overloaded
                    .fetch_add(1, Ordering::Relaxed);
                Err(Error::Overloaded(self.shared.queue_len_max))
            }
            Err(TrySendError::Disconnected(_)) => Err(Error::ShuttingDown),
        }
    }

    /// Queue a command. A full queue is refused at once with [`Error::Overloaded`].
    pub fn submit(
        &self,
        command: Command,
        key: Option<IdempotencyKey>,
    ) -> Result<Ticket<Acked>, Error> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let claim = Claim::new();
        self.send(Request::Command {
            command,
            key,
            reply,
            claim: claim.clone(),
        })?;
        Ok(Ticket::write(rx, claim))
    }

    /// Submit and wait (plain threads).
    pub fn execute(&self, command: Command, key: Option<IdempotencyKey>) -> Result<Outcome, Error> {
        Ok(self.submit(command, key)?.wait()?.outcome)
    }

    /// A read. With a follower (sync mode) it is answered there once the follower
    /// has applied everything durable when the read arrived, so it sees every write
    /// acknowledged before it and nothing that is not durable (the ReadIndex idea);
    /// otherwise it goes through the writer's queue and sees every command queued
    /// before it.
    pub fn query(&self, query: Query) -> Result<Ticket<Result<QueryReply, Rejection>>, Error> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let inner = &self.shared.inner;
        match &self.shared.follower_tx {
            // While the follower encodes a snapshot, a read through the writer's
            // queue is answered with the next commit instead of after the encoding
            // (linearizable too: the answer waits until what it saw is durable).
            Some(_) if inner.follower_encoding.load(Ordering::Acquire) => {
                inner
                    .stats
                    .reads_during_snapshot
                    .fetch_add(1, Ordering::Relaxed);
                self.send(Request::Query { query, reply })?
            }
            Some(follower) => {
                if self.shared.shutting_down.load(Ordering::Acquire) {
                    return Err(Error::ShuttingDown);
                }
                if inner.follower_reads.fetch_add(1, Ordering::AcqRel) >= self.shared.queue_len_max
                {
                    inner.follower_reads.fetch_sub(1, Ordering::AcqRel);
                    inner.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                    return Err(Error::Overloaded(self.shared.queue_len_max));
                }
                let read_index = inner.read_index();
                follower
                    .send(FollowerMsg::Read {
                        query,
                        read_index,
                        reply,
                    })
                    .map_err(|_| Error::ShuttingDown)?;
            }
            None => self.send(Request::Query { query, reply })?,
        }
        Ok(Ticket::read(rx))
    }

    /// Submit the commands of one batch request as one queue entry: the writer
    /// applies them in order in one iteration, and they are answered together
    /// once durable (each its own outcome, or its own error).
    pub fn submit_batch(
        &self,
        commands: Vec<Command>,
    ) -> Result<Ticket<Vec<Result<Acked, Error>>>, Error> {
        self.submit_keyed_batch(commands.into_iter().map(|c| (c, None)).collect())
    }

    /// [`Self::submit_batch`] with a key per command. If any key is remembered with
    /// another fingerprint, no command is applied: each is answered
    /// [`Rejection::IdempotencyConflict`] (a batch repeated under its key with another
    /// body changes nothing, whichever of its commands the first one reached).
    pub fn submit_keyed_batch(
        &self,
        commands: Vec<(Command, Option<IdempotencyKey>)>,
    ) -> Result<Ticket<Vec<Result<Acked, Error>>>, Error> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let claim = Claim::new();
        self.send(Request::Batch {
            commands,
            reply,
            claim: claim.clone(),
        })?;
        Ok(Ticket::write(rx, claim))
    }

    /// A SKU's stock read on the caller's thread, linearizable like [`Self::query`]
    /// (the board answers once it has applied the read index noted now, or when no
    /// record past its LSN changed this SKU; `board.rs`).
    /// `None`: the board cannot answer (no follower in this durability mode, or
    /// it is behind): use [`Self::query`].
    pub fn read_sku(&self, sku: &str) -> Option<Result<SkuView, Rejection>> {
        self.shared.follower_tx.as_ref()?;
        let inner = &self.shared.inner;
        let read_index = inner.read_index();
        let answer = board_answer(&inner.stats, sku, inner.board.read(sku, read_index));
        if answer.is_none() {
            inner.stats.board_behind.fetch_add(1, Ordering::Relaxed);
        }
        answer
    }

    /// [`Self::read_sku`], waiting on the caller's task, while the board is behind
    /// the read index noted now, for the follower's next publishes instead of
    /// taking its queue: a read of a SKU written all the time (the hot one of a
    /// sale) sends the follower nothing and has it build no answer; each publish
    /// wakes the waiting tasks. `None` where the board cannot answer: no follower,
    /// the follower encoding a snapshot (the board stands still meanwhile) or
    /// stopped, or as many reads waiting already as the writer's queue holds: use
    /// [`Self::query`] (bounded too).
    pub async fn read_sku_waiting(&self, sku: &str) -> Option<Result<SkuView, Rejection>> {
        self.shared.follower_tx.as_ref()?;
        let inner = &self.shared.inner;
        let read_index = inner.read_index();
        let mut waiting: Option<BoardWaiter<'_>> = None;
        loop {
            // Made before the board is looked at: a publish in between wakes it.
            let moved = inner.board.moved();
            if let Some(answer) = board_answer(&inner.stats, sku, inner.board.read(sku, read_index))
            {
                return Some(answer);
            }
            if inner.follower_encoding.load(Ordering::Acquire) || inner.board.is_closed() {
                return None;
            }
            if waiting.is_none() {
                let count = &inner.board_waiters;
                waiting = Some(BoardWaiter::enter(count, self.shared.queue_len_max)?);
                inner.stats.board_waits.fetch_add(1, Ordering::Relaxed);
            }
            moved.await;
        }
    }

    /// Start publishing the log through `publisher` (a leader, at start): every
    /// durable record goes to the replicated log, those logged before now first.
    /// In `replicated` mode no write is acknowledged before this. Answers the last
    /// LSN logged before publishing started.
    pub fn attach_publisher(&self, publisher: Box<dyn LogPublisher>) -> Result<Ticket<u64>, Error> {
        self.attach(publisher, false)
    }

    /// Promote this standby: it takes writes from now on and publishes its log
    /// (which continues the old leader's) through `publisher`. The caller has
    /// caught up with and fenced the replicated log first.
    pub fn promote(&self, publisher: Box<dyn LogPublisher>) -> Result<Ticket<u64>, Error> {
        self.attach(publisher, true)
    }

    fn attach(
        &self,
        publisher: Box<dyn LogPublisher>,
        promote: bool,
    ) -> Result<Ticket<u64>, Error> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Request::AttachPublisher {
            publisher,
            promote,
            to_writer: self.shared.tx.clone(),
            reply,
        })?;
        Ok(Ticket::read(rx))
    }

    /// A standby applies its leader's records (LSN and the record as logged, in
    /// log order); answers the last LSN applied, once durable here.
    pub fn replicate(&self, records: Vec<(u64, Vec<u8>)>) -> Result<Ticket<u64>, Error> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Request::Replicate { records, reply })?;
        Ok(Ticket::read(rx))
    }

    /// This node's place in replication now.
    pub fn role(&self) -> Role {
        self.shared.inner.role()
    }

    /// Why the replicated log is unavailable now, if it is.
    pub fn replication_down(&self) -> Option<String> {
        self.shared.inner.replication_down.get()
    }

    /// Why this node refuses every write now for its place in replication, if it
    /// does: a standby or fenced node (`NotLeader`), or `replicated` mode while the
    /// replicated log is down (`StorageUnavailable`). What a single write would be
    /// answered, for a request (a batch) to be refused whole.
    pub fn replication_refusal(&self) -> Option<Error> {
        self.shared.inner.replication_refusal()
    }

    /// Why this node refuses reads now, if it does: its readable state holds
    /// records the replicated log never got from it (a fenced node's unpublished
    /// tail, for good; a restarted `replicated` leader's, until the stream has it).
    pub fn reads_refused(&self) -> Option<Error> {
        self.shared
            .inner
            .reads_diverge(self.shared.follower_tx.is_none())
    }

    /// Waits until this node is a leader whose writes are not refused for the
    /// replicated log: at once in any mode but `replicated`, or when it is not a
    /// leader (a standby or a fenced node never will be by waiting). A promotion
    /// waits here, so that its answer means writes are taken: the publish stage
    /// clears "no replicated log attached yet" only once it has resumed the stream.
    pub async fn wait_until_writable(&self) {
        let inner = &self.shared.inner;
        loop {
            let mut changed = std::pin::pin!(inner.writable_changed.notified());
            // Registered before the check, so a change in between still wakes it.
            changed.as_mut().enable();
            if inner.role() != Role::Leader || inner.replication_refusal().is_none() {
                return;
            }
            changed.await;
        }
    }

    /// Take a snapshot now; answers its LSN.
    pub fn snapshot(&self) -> Result<Ticket<u64>, Error> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Request::Snapshot { reply })?;
        Ok(Ticket::read(rx))
    }

    pub fn events(&self) -> &EventLog {
        &self.shared.inner.events
    }

    pub fn stats(&self) -> &RuntimeStats {
        &self.shared.inner.stats
    }

    pub fn queue_len(&self) -> usize {
        self.shared.tx.len()
    }

    pub fn queue_len_max(&self) -> usize {
        self.shared.queue_len_max
    }

    pub fn durability(&self) -> Durability {
        self.shared.durability
    }

    /// Why writes are refused now (disk full, failed flush), if they are.
    pub fn writes_refused(&self) -> Option<String> {
        self.shared.inner.writes_refused.lock().clone()
    }

    /// Why writes are refused for want of disk space now, if they are. It passes
    /// once space is freed: a leader's writer tries again at each step (every
    /// `expire_interval_ms` when idle); a standby's, when its leader's records
    /// arrive again.
    pub fn storage_full(&self) -> Option<String> {
        self.shared.inner.storage_full.get()
    }

    /// Why this node's storage refuses writes now, for `/readyz` and the log: a
    /// failed flush (until a restart), or on a leader a full disk (until space is
    /// freed). A standby's or fenced node's writes are refused for its place
    /// anyway, which is what it reports.
    pub fn storage_refusal(&self) -> Option<String> {
        self.writes_refused().or_else(|| {
            if self.role() == Role::Leader {
                self.storage_full()
            } else {
                None
            }
        })
    }

    /// Why this node's storage refuses writes now, whatever its role: a failed
    /// flush, or a full disk, where a standby cannot log its leader's records and
    /// falls behind (its `/readyz` still says `standby`, with the lag: it serves
    /// reads). For the gauge and the log.
    pub fn storage_problem(&self) -> Option<String> {
        self.writes_refused().or_else(|| self.storage_full())
    }

    /// Drain the queue, flush, snapshot and stop the writer. Later submissions get
    /// [`Error::ShuttingDown`]. Safe to call more than once.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }

    /// A stable fingerprint of a request for idempotency keys.
    pub fn fingerprint(parts: &[&[u8]]) -> u64 {
        Self::fingerprint_on(FNV1A64_START, parts)
    }

    /// [`Self::fingerprint`] carried on from `hash`, the fingerprint of the parts
    /// before these: `fingerprint_on(fingerprint(a), b) == fingerprint(a ++ b)`. So
    /// the parts the ops of a batch share (its whole body) are hashed once, not once
    /// per op.
    pub fn fingerprint_on(hash: u64, parts: &[&[u8]]) -> u64 {
        parts.iter().fold(hash, |hash, part| {
            let hash = fnv1a64_on(hash, &(part.len() as u64).to_le_bytes());
            fnv1a64_on(hash, part)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::BoardWaiter;

    /// At most `max` reads wait for the board; a read that stops waiting (answered
    /// or dropped with its request) makes room.
    #[test]
    fn reads_waiting_for_the_board_are_bounded() {
        let count = AtomicUsize::new(0);
        let first = BoardWaiter::enter(&count, 2).expect("room");
        let second = BoardWaiter::enter(&count, 2).expect("room");
        assert!(BoardWaiter::enter(&count, 2).is_none());
        drop(first);
        let third = BoardWaiter::enter(&count, 2).expect("room again");
        assert!(BoardWaiter::enter(&count, 2).is_none());
        drop((second, third));
        assert_eq!(count.into_inner(), 0);
    }
}
