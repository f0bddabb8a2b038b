//! The writer driven step by step on the caller's thread: the deterministic core.
//!
//! [`Engine::open_core`](super::Engine::open_core) recovers exactly as
//! [`Engine::open`](super::Engine::open) does, but starts no thread. Requests go
//! into the queue through the core's [`EngineHandle`] as usual; nothing happens to
//! them until [`Core::step`] takes them. The commit runs inline, the snapshot file
//! is written inline, and the time is an argument, so a run is a function of the
//! requests, the `now_ms` of each step and the storage: the power-loss suite replays
//! a seed exactly on the simulated disk.
//!
//! The writer thread ([`Engine::open`](super::Engine::open)) runs the same
//! [`Writer::step`]; it only adds the waiting on the queue, the wall clock and the
//! pipelined sync thread around it.

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
    /// `snapshot` and wait on the ticket after the step.
    pub fn handle(&self) -> &EngineHandle {
        &self.handle
    }

    /// One writer iteration at time `now_ms`: expire what is due, take the queued
    /// requests (up to `batch_len_max` commands, in queue order) as one batch, apply and
    /// log them, commit, and answer them. Answers the number of requests taken.
    pub fn step(&mut self, now_ms: Millis) -> usize {
        self.writer.take_queued(&mut self.batch);
        let taken = self.batch.len();
        self.writer.step(&mut self.batch, now_ms, true);
        taken
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
