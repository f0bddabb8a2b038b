//! The writer driven step by step on the caller's thread: the deterministic core.
//!
//! [`Engine::open_core`](super::Engine::open_core) recovers exactly as
//! [`Engine::open`](super::Engine::open) does, but starts no long-lived thread.
//! Requests go into the queue through the core's [`EngineHandle`] as usual;
//! nothing happens to them until [`Core::step`] takes them. From `open_core` the
//! commit runs inline in the step and there is no follower; from
//! [`Engine::open_core_pipelined`](super::Engine::open_core_pipelined) the step
//! hands its batch over as the writer thread does, and the batches handed over
//! wait, their answers with them, until the owner runs the sync thread's part with
//! [`Core::sync`] (one merged sync for all of them), and the follower (when
//! configured) runs when the owner calls [`Core::follow`]: the owner decides how
//! many batches are in flight and how far the follower is behind. The snapshot
//! file is written inline (a follower encodes on a scoped thread it joins at once,
//! a pure function of its state), and the time is an argument, so a run is a
//! function of the requests, the `now_ms` of each step, the order of steps, syncs
//! and follower turns, and the storage: the power-loss suites replay a seed
//! exactly on the simulated disk. A panic of the inline follower (a divergence from
//! the writer) comes out of `follow` or `close`: there is no thread to lose.
//!
//! The writer thread ([`Engine::open`](super::Engine::open)) runs the same
//! [`Writer::step`], the sync thread the same `SyncStage::process` and the follower
//! thread the same loop; they only add the waiting on the queues and the wall
//! clock around them.

use surge_wal::Storage;

use super::EngineHandle;
use super::writer::Writer;
use crate::domain::Millis;

/// The engine's writer, stepped by its owner. Dropping it without [`close`]
/// stops it where it is, like a power cut: nothing in flight is committed.
///
/// [`close`]: Core::close
pub struct Core<S: Storage> {
    writer: Writer<S>,
    handle: EngineHandle,
    batch: Vec<super::Request>,
}

impl<S: Storage> Core<S> {
    pub(super) fn new(writer: Writer<S>, handle: EngineHandle) -> Core<S> {
        let batch = Vec::with_capacity(writer.config.batch_len_max);
        Core {
            writer,
            handle,
            batch,
        }
    }

    /// The handle that queues requests for the next step. Its blocking calls
    /// (`execute`) would wait for a step that cannot come: use `submit`, `query`,
    /// `snapshot` and wait on the ticket after the step (pipelined: after the
    /// [`Core::sync`] that follows it, and for reads and snapshots with a follower
    /// after [`Core::follow`] too; or poll it with `Ticket::try_wait`).
    pub fn handle(&self) -> &EngineHandle {
        &self.handle
    }

    /// One writer iteration at time `now_ms`: expire what is due, take the queued
    /// requests (up to `batch_len_max` commands, in queue order) as one batch, apply and
    /// log them, and commit and answer them (pipelined: begin the commit and hand
    /// the batch over for [`Core::sync`], joining a batch handed over before and
    /// not synced yet). Answers the number of requests taken.
    pub fn step(&mut self, now_ms: Millis) -> usize {
        self.writer.take_queued(&mut self.batch);
        let taken = self.batch.len();
        self.writer.step(&mut self.batch, now_ms, true);
        taken
    }

    /// The sync thread's part of a pipelined commit: make every batch handed over
    /// since the last sync durable with one sync, then answer them in order, and
    /// let the writer know. After a failed sync nothing more is acknowledged, as
    /// with the thread. `false`: nothing was handed over (or the core is not
    /// pipelined, and each step committed its batch).
    pub fn sync(&mut self) -> bool {
        self.writer.sync_queued()
    }

    /// The first half of [`Core::sync`]: take the batches handed over, as the sync
    /// thread takes them before its sync. Steps until [`Core::finish_sync`] then
    /// apply and append the next batches while these are, as it were, being synced:
    /// they begin commits of their own instead of joining these. Batches taken
    /// before and not finished are kept, in order. Answers how many flushes it
    /// holds.
    /// A snapshot or the shutdown inside a step makes everything durable first,
    /// the taken batches before the queued ones.
    pub fn begin_sync(&mut self) -> usize {
        self.writer.take_queued_flushes()
    }

    /// The follower's turn (a core opened pipelined with a follower): it takes
    /// what the syncs released to it, the reads sent to it and the writer's
    /// snapshot requests, as its thread would; a snapshot it encodes goes to the
    /// writer's queue, for the next step to install. Answers how many messages it
    /// took.
    pub fn follow(&mut self) -> usize {
        self.writer.step_follower()
    }

    /// Flushes [`Core::begin_sync`] took that are not durable yet.
    pub fn flushes_taken(&self) -> usize {
        self.writer.sync_taken.len()
    }

    /// The second half of [`Core::sync`]: make the taken batches durable (one
    /// sync), answer them, and let the writer know. `false`: none was taken.
    pub fn finish_sync(&mut self) -> bool {
        self.writer.sync_taken_flushes()
    }

    /// A step with no requests: the timer's work (expiry, a snapshot that is due).
    pub fn tick(&mut self, now_ms: Millis) {
        self.writer.step(&mut Vec::new(), now_ms, true);
    }

    /// Shut down as the writer thread does: finish what is queued, commit, write
    /// the shutdown snapshot if configured, and stop taking requests.
    pub fn close(mut self, now_ms: Millis) {
        self.handle
            .shared
            .shutting_down
            .store(true, std::sync::atomic::Ordering::Release);
        self.batch.push(super::Request::Shutdown);
        self.writer.step(&mut self.batch, now_ms, true);
        self.writer.stop();
    }
}
