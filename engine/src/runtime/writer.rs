//! The writer: the one thread that owns the [`State`] and the WAL. Each loop
//! iteration drains a batch from the queue, applies it (commands, a standby's
//! replicated records, expiry), appends the records, and hands the batch to the
//! sync stage; it also starts and publishes snapshots and serves the publish
//! stage's log reads.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use super::queue::{self, RecvTimeoutError};
use surge_wal::{Storage, Wal};

use super::follower::{FollowerLink, FollowerMsg, FollowerRuns};
use super::replication::{PublishMsg, PublishStage};
use super::sync_stage::{Flush, FlushQueue, Pending, Release, SyncStage};
use super::{
    Durability, EngineConfig, Error, Inner, LogPublisher, LogRead, ReadAnswer, ReplySender,
    Request, Role, spawn_owner,
};
use crate::codec::{self, LogRecord};
use crate::command::{Acked, Command, IdempotencyKey, Outcome};
use crate::domain::{Millis, SkuIdx};
use crate::event::Event;
use crate::state::State;
use crate::{Field, Rejection, Violation};

pub(super) struct Writer<S: Storage> {
    pub(super) state: State,
    pub(super) wal: Option<Wal<S>>,
    pub(super) rx: queue::Receiver<Request>,
    pub(super) sku_names_published: usize,
    pub(super) shared: Arc<Inner>,
    pub(super) config: EngineConfig,
    pub(super) now_ms: Millis,
    pub(super) records_since_snapshot: u64,
    /// The newest snapshot published in this process (zeros: none yet): what
    /// [`snapshot_due_by_records`] judges the next one from.
    pub(super) last_snapshot: SnapshotSizes,
    /// The follower was asked for a snapshot and has not sent it yet: asked once.
    pub(super) snapshot_asked: bool,
    pub(super) record_buf: Vec<u8>,
    pub(super) events_buf: Vec<Event>,
    /// A record was logged in the current batch: it needs a flush.
    pub(super) appended: bool,
    pub(super) snapshot_job: Option<SnapshotInFlight>,
    /// Snapshot requests waiting, each with the last LSN logged when it was taken:
    /// it is answered by the first snapshot published at or past that LSN.
    pub(super) snapshot_waiting: Vec<(ReplySender<u64>, u64)>,
    /// The highest LSN the follower was asked to snapshot at or past for the
    /// requests waiting (0: not asked); cleared when no request waits.
    pub(super) follower_asked_upto: u64,
    /// The pipelined commit: flushes go to the sync thread, results come back.
    pub(super) to_syncer: Option<Arc<FlushQueue>>,
    pub(super) from_syncer: Option<Receiver<Result<u64, surge_wal::Error>>>,
    pub(super) syncer_thread: Option<JoinHandle<()>>,
    /// Runs flushes on the writer itself when the commit is not pipelined (the
    /// deterministic configuration of the seeded tests), or when the sync thread
    /// is gone.
    pub(super) syncer_inline: SyncStage,
    /// Without a sync thread (the step-driven core's pipelined commit): flushes
    /// taken from `to_syncer` as that thread takes them, not yet run.
    pub(super) sync_taken: Vec<Flush>,
    /// This batch's logged records, kept for the follower (only when there is one).
    pub(super) batch_records: Vec<(u64, Vec<u8>)>,
    /// The follower: its channel, and its thread (or the follower itself, in the
    /// step-driven core).
    pub(super) follower: Option<FollowerLink>,
    /// A snapshot the follower encoded, waiting for its LSN to be known durable here.
    pub(super) install_waiting: Option<(u64, surge_wal::SnapshotImage)>,
    /// The publish stage, once a publisher is attached.
    pub(super) publish_tx: Option<Sender<PublishMsg>>,
    /// The last LSN logged before the publish stage was attached: the follower has
    /// it (recovered, or released by the sync thread) whatever the stage publishes.
    pub(super) logged_before_publish: u64,
    pub(super) publish_thread: Option<JoinHandle<()>>,
    /// Reads of the log for the publish stage, answered once this iteration's
    /// frames are written out (so the reads never copy a staged segment).
    pub(super) log_reads: Vec<LogRead>,
    /// `open` is logging the configured policies, before any request is taken.
    pub(super) opening: bool,
    /// Promoted: this node's own policies and rules are still to be logged (tried
    /// at each step until the log takes them).
    pub(super) own_policy_due: bool,
    /// Answers waiting for this step's commit (kept between steps for its capacity).
    pub(super) pending: Vec<Pending>,
    /// Async mode: applied records not yet handed to durability.
    pub(super) async_dirty: bool,
    /// The disk is full: the payload length of the last record the log had no room
    /// for. Each step tries to make that room again, so that readiness comes back
    /// with the space, whether or not writes are arriving.
    pub(super) room_wanted_bytes: Option<usize>,
}

/// What one [`Writer::step`] did, for the thread around it.
pub(super) struct Stepped {
    /// A shutdown request was taken: the queue is drained and the loop ends.
    pub(super) shutdown: bool,
    /// Async mode: the applied records were handed to durability in this step.
    pub(super) flushed: bool,
}

impl<S: Storage> Writer<S> {
    /// The thread: wait for requests (or the expiry tick, or the async flush), take
    /// up to `batch_len_max` commands of them, and [`step`](Self::step). Everything that
    /// depends on wall time or on thread timing is here; the step is deterministic
    /// given its requests and `now_ms`.
    pub(super) fn run(mut self) {
        let nice = super::raise_commit_thread_priority(self.config.commit_priority_raise);
        self.shared
            .stats
            .writer_nice
            .store(nice.into(), Ordering::Relaxed);
        let mut batch: Vec<Request> = Vec::with_capacity(self.config.batch_len_max);
        let mut last_flush = Instant::now();
        let tick = Duration::from_millis(self.config.expire_interval_ms.max(1));
        let flush_every = Duration::from_millis(self.config.async_flush_interval_ms.max(1));
        let mut shutdown = false;
        while !shutdown {
            let timeout = if self.async_dirty {
                flush_every.saturating_sub(last_flush.elapsed())
            } else {
                tick
            };
            match self.rx.recv_timeout(timeout) {
                Ok(request) => batch.push(request),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => shutdown = true,
            }
            let iteration = Instant::now();
            let cpu_at_start = surge_wal::this_thread_cpu_time();
            self.take_queued(&mut batch);
            let now_ms = self.config.clock.now_ms();
            let flush_due = last_flush.elapsed() >= flush_every;
            let stepped = self.step(&mut batch, now_ms, flush_due || shutdown);
            shutdown |= stepped.shutdown;
            if stepped.flushed {
                last_flush = Instant::now();
            }
            // The CPU clock is read inside the wall clock's interval, so it measures
            // no more than the wall time (but for the clocks' drift: NTP may slew
            // CLOCK_MONOTONIC, not the scheduler's clock).
            let cpu_at_end = surge_wal::this_thread_cpu_time();
            let stats = &self.shared.stats;
            stats.writer_iteration.record(iteration.elapsed());
            if let (Some(start), Some(end)) = (cpu_at_start, cpu_at_end) {
                stats.writer_iteration_cpu.record(end.saturating_sub(start));
            }
        }
        self.stop();
    }

    /// Move queued requests into `batch` without waiting, until it holds
    /// `batch_len_max` commands (a read or a control request counts as one) or the
    /// queue is empty. The request that reaches the bound is taken whole.
    pub(super) fn take_queued(&mut self, batch: &mut Vec<Request>) {
        let mut taken: usize = batch.iter().map(Request::iteration_weight).sum();
        let bound = self.config.batch_len_max;
        // One hold of the queue's lock for the whole batch.
        self.rx.drain_while(batch, |request| {
            if taken >= bound {
                return false;
            }
            taken += request.iteration_weight();
            true
        });
    }

    /// One iteration of the writer, with no thread and no clock of its own: take in
    /// the finished commits, advance the time to `now_ms` (never backwards), expire
    /// what is due, apply `batch` (emptied), hand what was logged to durability,
    /// and start or publish a snapshot when one is due. `flush_async`: in `async`
    /// mode, hand the applied records to durability in this step.
    pub(super) fn step(
        &mut self,
        batch: &mut Vec<Request>,
        now_ms: Millis,
        flush_async: bool,
    ) -> Stepped {
        let mut shutdown = false;
        let mut pending = std::mem::take(&mut self.pending);
        // The last step's buffers went to the sync thread with its batch: size this
        // step's from its commands at once, instead of growing them push by push
        // (nine copies for a batch of 512; a `/v1/batch` request is 1,000 commands).
        pending.reserve(batch.len());
        let commands: usize = batch.iter().map(Request::command_count).sum();
        if commands > 0 {
            // The batch `batch_len_max` bounds, in commands: a `/v1/batch` of n ops
            // is n (and one request), whatever the durability mode.
            let stats = &self.shared.stats;
            stats
                .batch_len_last
                .store(commands as u64, Ordering::Relaxed);
            stats
                .batch_len_max_seen
                .fetch_max(commands as u64, Ordering::Relaxed);
        }
        self.events_buf.reserve(commands);
        if self.follower.is_some() || self.publish_tx.is_some() {
            self.batch_records.reserve(commands);
        }
        self.collect_commits(false);
        self.now_ms = self.now_ms.max(now_ms);
        let mut snapshot_replies = Vec::new();
        let mut reads = Vec::new();
        if self.shared.role() == Role::Leader {
            if self.own_policy_due {
                self.adopt_own_policy(&mut pending);
            }
            // A standby's expiries come from its leader's log.
            self.expire_due(&mut pending);
        }
        // A standby too: its leader's records need the room, and its full disk
        // (set at start or by a record refused) must end with the space.
        if self.shared.role() != Role::Fenced {
            self.retry_room();
        }
        for request in batch.drain(..) {
            shutdown |= self.take(request, &mut pending, &mut reads, &mut snapshot_replies);
        }
        if shutdown {
            // Drain whatever is still queued: accepted commands are finished (but one whose caller
            // stopped waiting, as everywhere, is skipped).
            while let Ok(request) = self.rx.try_recv() {
                self.take(request, &mut pending, &mut reads, &mut snapshot_replies);
            }
        }
        let logged = std::mem::take(&mut self.appended);
        let mut flushed = false;
        match self.config.durability {
            Durability::Sync | Durability::Replicated => {
                self.hand_over(logged, &mut pending, reads)
            }
            Durability::Async => {
                // Reply now (reads see the applied state); the flush follows
                // within the interval, or now for a snapshot request (the
                // follower that encodes it applies only what is flushed).
                self.async_dirty |= logged;
                self.reply_now(&mut pending, reads);
                if self.async_dirty && (flush_async || shutdown || !snapshot_replies.is_empty()) {
                    self.hand_over(true, &mut pending, Vec::new());
                    self.async_dirty = false;
                    flushed = true;
                }
            }
            Durability::None => {
                self.shared.events.publish(&mut self.events_buf);
                self.reply_now(&mut pending, reads);
            }
        }
        self.pending = pending;
        self.snapshot_waiting.extend(snapshot_replies);
        // A snapshot just published moves what the next one is judged from.
        self.poll_snapshot(shutdown);
        let (log_bytes, segments) = self.wal.as_ref().map_or((0, 0), |w| {
            let stats = w.stats();
            (stats.bytes_written, stats.segments)
        });
        let due = self.records_since_snapshot > 0
            && (snapshot_due_by_records(
                self.records_since_snapshot,
                self.config.snapshot_every_records,
                log_bytes.saturating_sub(self.last_snapshot.log_bytes),
                self.last_snapshot.body_bytes,
                self.config.snapshot_log_percent_min,
            ) || (self.config.snapshot_every_segments > 0
                && segments >= self.config.snapshot_every_segments));
        if shutdown {
            // The last snapshot is written in the foreground: the process is
            // about to exit.
            if self.config.snapshot_on_shutdown {
                self.start_snapshot(false);
            }
            // The snapshot in place answers once its publication is durable.
            match self.drain_commits().and_then(|()| self.snapshot_current()) {
                Ok(lsn) => self.answer_snapshot_waiters_upto(lsn),
                Err(why) => self.answer_snapshot_waiters(Err(why)),
            }
            // Requests the newest snapshot does not cover get none: the engine stops
            // (without `snapshot_on_shutdown`, or after its snapshot failed).
            for (reply, _) in self.snapshot_waiting.drain(..) {
                let _ = reply.send(Err(Error::ShuttingDown));
            }
        } else if self.follower.is_some() {
            if due
                && !self.snapshot_asked
                && self.install_waiting.is_none()
                && self.snapshot_job.is_none()
            {
                self.snapshot_asked = true;
                self.shared.snapshot_wanted.store(true, Ordering::Release);
            }
            if self.snapshot_job.is_none() {
                self.install_follower_snapshot();
                self.ask_follower_for_requested_snapshots();
            }
        } else if (due || !self.snapshot_waiting.is_empty()) && self.snapshot_job.is_none() {
            self.start_snapshot(self.config.snapshot_in_background);
        }
        self.answer_log_reads();
        Stepped { shutdown, flushed }
    }

    /// After the last step: wait for the commits in flight, then stop the sync
    /// thread, the publish stage and the follower, in that order.
    pub(super) fn stop(&mut self) {
        if self.durable_pending() {
            let _ = self.drain_commits();
        }
        // Closing the queue ends the sync thread once it has answered everything.
        if let Some(queue) = self.to_syncer.take() {
            queue.close();
        }
        if let Some(thread) = self.syncer_thread.take() {
            let _ = thread.join();
        }
        // Then the publish stage: it finishes what it holds (or gives up if the
        // replicated log is down), and may still ask this thread for log reads.
        self.shared.publish_stopping.store(true, Ordering::Release);
        self.publish_tx = None;
        if let Some(thread) = self.publish_thread.take() {
            while !thread.is_finished() {
                if let Ok(Request::ReadLog {
                    after,
                    bytes_max,
                    reply,
                }) = self.rx.recv_timeout(Duration::from_millis(5))
                {
                    self.log_reads.push((after, bytes_max, reply));
                    self.answer_log_reads();
                }
            }
            let _ = thread.join();
        }
        self.syncer_inline.to_follower = None;
        if let Some(follower) = self.follower.take() {
            follower.stop();
        }
    }

    /// Take one request of this iteration; `true`: shut down after it.
    fn take(
        &mut self,
        request: Request,
        pending: &mut Vec<Pending>,
        reads: &mut Vec<ReadAnswer>,
        snapshot_replies: &mut Vec<(ReplySender<u64>, u64)>,
    ) -> bool {
        // A promoted node's own policies go before any command once the log takes
        // writes (the replicated log may resume within this step).
        if self.own_policy_due && matches!(request, Request::Command { .. } | Request::Batch { .. })
        {
            self.adopt_own_policy(pending);
        }
        match request {
            // A write whose caller gave it up before the writer took it (its HTTP
            // request timed out, or its future was dropped) is not applied: its
            // caller was told so, or is gone, and the writer sheds the work of
            // callers that gave up. One taken is applied and answered, and its
            // caller, if it gives up now, learns that it was taken.
            Request::Command { claim, .. } if !claim.take() => self.abandoned(1),
            Request::Batch {
                commands, claim, ..
            } if !claim.take() => self.abandoned(commands.len()),
            Request::Command {
                command,
                key,
                reply,
                ..
            } => self.apply(command, key, reply, pending),
            Request::Batch {
                commands, reply, ..
            } => self.apply_batch(commands, reply, pending),
            Request::Query { query, reply } => reads.push((reply, self.state.query(&query))),
            Request::Snapshot { reply } => {
                let logged = self
                    .wal
                    .as_ref()
                    .map_or_else(|| self.state.next_seq() - 1, |w| w.last_lsn());
                // In `replicated` mode a write is acknowledged once published, and
                // the follower applies only what is: the request covers what was
                // acknowledged when it came (a fenced or cut-off leader's unpublished
                // tail never reaches the follower, and is nobody's acknowledged write),
                // and at least what was logged before the publish stage was attached
                // (recovered at open, or a standby's before its promotion), which the
                // follower has however far the stage got.
                let covered = match (&self.publish_tx, self.config.durability) {
                    (Some(_), Durability::Replicated) => {
                        logged.min(self.shared.read_index().max(self.logged_before_publish))
                    }
                    _ => logged,
                };
                snapshot_replies.push((reply, covered));
            }
            Request::InstallSnapshot { lsn, body } => {
                // It answers any periodic ask too, also one raised while the
                // follower encoded it for a request (left raised, the follower
                // would encode again at its next batch).
                self.records_since_snapshot = 0;
                self.snapshot_asked = false;
                self.shared.snapshot_wanted.store(false, Ordering::Release);
                self.install_waiting = Some((lsn, body));
            }
            Request::Replicate { records, reply } => self.apply_replicated(records, reply, pending),
            Request::ReadLog {
                after,
                bytes_max,
                reply,
            } => self.log_reads.push((after, bytes_max, reply)),
            Request::AttachPublisher {
                publisher,
                promote,
                to_writer,
                reply,
            } => {
                let attached = self.attach_publisher(publisher, promote, to_writer);
                if promote && attached.is_ok() {
                    self.own_policy_due = true;
                    self.adopt_own_policy(pending);
                }
                let _ = reply.send(attached);
            }
            Request::Shutdown => return true,
        }
        false
    }

    /// Answer the publish stage's log reads (durable records only).
    fn answer_log_reads(&mut self) {
        for (after, bytes_max, reply) in std::mem::take(&mut self.log_reads) {
            let records = match self.wal.as_mut() {
                Some(wal) => wal
                    .durable_records_after(after, bytes_max)
                    .map_err(Error::from),
                None => Ok(Vec::new()),
            };
            let _ = reply.send(records);
        }
    }

    /// Start the publish stage: at start on a leader, or promoting a standby
    /// (whose log then continues as the leader's). Answers the last LSN logged.
    fn attach_publisher(
        &mut self,
        publisher: Box<dyn LogPublisher>,
        promote: bool,
        to_writer: queue::Sender<Request>,
    ) -> Result<u64, Error> {
        let role = self.shared.role();
        match (promote, role) {
            (true, Role::Standby) | (false, Role::Leader) => {}
            (true, _) => return Err(Error::InvalidConfig("only a standby is promoted".into())),
            (false, _) => {
                return Err(Error::NotLeader(format!(
                    "a {} does not publish its log",
                    role.name()
                )));
            }
        }
        if self.publish_tx.is_some() {
            return Err(Error::InvalidConfig(
                "a publisher is already attached".into(),
            ));
        }
        if self.wal.is_none() {
            return Err(Error::InvalidConfig(
                "durability none keeps no log to publish".into(),
            ));
        }
        // Everything logged so far must be durable: the stage reads it from the WAL.
        self.drain_commits().map_err(Error::StorageUnavailable)?;
        let logged_before = self.wal.as_ref().map_or(0, Wal::last_lsn);
        self.logged_before_publish = logged_before;
        let (tx, rx) = crossbeam_channel::unbounded();
        let to_follower = match self.config.durability {
            Durability::Replicated => self.follower.as_ref().map(|f| f.tx.clone()),
            _ => None,
        };
        let stage = PublishStage {
            shared: Arc::clone(&self.shared),
            publisher,
            to_follower,
            to_writer,
            logged_before,
            log_end: None,
            fenced: None,
            check_every: Duration::from_millis(self.config.stream_check_interval_ms.max(1)),
            rx,
            deferred: std::collections::VecDeque::new(),
        };
        // In `replicated` mode every acknowledgement waits on the publish stage too:
        // it goes first like the writer. Otherwise it trails behind the answers and
        // runs at the process's priority, not the writer's, which it would inherit.
        let raise = match self.config.durability {
            Durability::Replicated => self.config.commit_priority_raise,
            _ => 0,
        };
        let thread = spawn_owner("surge-publish", move || {
            super::raise_commit_thread_priority(raise);
            stage.run()
        })
        .map_err(|e| Error::Recovery(format!("cannot start the publish thread: {e}")))?;
        self.publish_tx = Some(tx);
        self.publish_thread = Some(thread);
        if let Some(wal) = self.wal.as_mut() {
            wal.retain_after(self.shared.stats.published_lsn.load(Ordering::Acquire));
        }
        if promote {
            self.now_ms = self
                .now_ms
                .max(self.state.now_ms())
                .max(self.config.clock.now_ms());
            self.shared.set_role(Role::Leader);
        }
        Ok(logged_before)
    }

    /// A promoted standby runs its own idempotency and order policies and this
    /// build's rules, as it would after a restart as the leader: logged (and
    /// published) like any command, so its followers and its replay take them at
    /// the same place. While the log refuses writes (the replicated log not yet
    /// resumed, a full disk) they stay due and are tried again at the next step.
    fn adopt_own_policy(&mut self, pending: &mut Vec<Pending>) {
        if self.refusal().is_some() || self.shared.replication_refusal().is_some() {
            return;
        }
        self.own_policy_due = false;
        for command in self.own_policy_commands() {
            match self.apply_command(command, None, false) {
                // Nobody waits on the answer. A policy the state refuses (the server
                // checks its configuration at start) would be refused again: not due.
                Ok(outcome) => {
                    let (reply, _) = tokio::sync::oneshot::channel();
                    pending.push(Pending::One { reply, outcome });
                }
                // The log refused it: it and those after it are still due, to be
                // logged in the order `open` logs them.
                Err(_) => {
                    self.own_policy_due = true;
                    break;
                }
            }
        }
    }

    /// The records that would make the state run this node's configured policies
    /// and this build's rules, in the order they are logged (`open` logs them on a
    /// leader, a promoted standby when it takes the lead).
    pub(super) fn own_policy_commands(&self) -> Vec<Command> {
        let mut commands = Vec::new();
        if let Some(policy) = self
            .config
            .idempotency
            .filter(|wanted| *wanted != self.state.idempotency_policy())
        {
            commands.push(Command::SetIdempotencyPolicy {
                window_ms: policy.window_ms,
                budget_bytes: policy.budget_bytes,
            });
        }
        let Some(policy) = self.config.order_policy else {
            return commands;
        };
        if !self.state.runs_order_policy(policy) {
            commands.push(Command::SetOrderPolicy {
                ship_sla_ms: policy.ship_sla_ms,
                review_amount_min: policy.review_amount_min,
            });
        }
        if self.state.rules() < crate::state::RULES_CURRENT {
            commands.push(Command::SetRules {
                rules: crate::state::RULES_CURRENT,
            });
        }
        commands
    }

    /// A standby applies its leader's records: each must continue this log (one
    /// already applied is skipped: a resumed stream may repeat some), lands on the
    /// same LSN here, and is logged as the leader logged it.
    fn apply_replicated(
        &mut self,
        records: Vec<(u64, Vec<u8>)>,
        reply: ReplySender<u64>,
        pending: &mut Vec<Pending>,
    ) {
        if self.shared.role() != Role::Standby {
            let _ = reply.send(Err(Error::Replication(
                "only a standby applies a leader's records".into(),
            )));
            return;
        }
        if let Some(reason) = self.refusal() {
            let _ = reply.send(Err(Error::StorageUnavailable(reason)));
            return;
        }
        for (lsn, bytes) in records {
            let next = self.state.next_seq();
            if lsn < next {
                continue;
            }
            if lsn > next {
                let _ = reply.send(Err(Error::Replication(format!(
                    "the leader's record {lsn} does not continue this log, which expects {next} \
                     next: seed this standby from a copy of the leader's data dir"
                ))));
                return;
            }
            let record = match codec::decode_record(&bytes) {
                Ok(record) => record,
                Err(e) => {
                    let _ = reply.send(Err(Error::Replication(format!(
                        "the leader's record {lsn} does not decode: {e}"
                    ))));
                    return;
                }
            };
            // A record over this build's size limits was logged by a build with
            // wider ones; keyed, the state would log it as a refusal and diverge
            // silently: the standby stops following and says why.
            if let Err(rejection) = crate::state::check_sizes(&record.command, record.key.as_ref())
            {
                let _ = reply.send(Err(refused_by_this_build(lsn, &record.command, &rejection)));
                return;
            }
            if let Err(e) = self.reserve(lsn, bytes.len()) {
                let reason = format!("{e}");
                if !matches!(e, surge_wal::Error::NoSpace) {
                    self.fail_stop(reason.clone());
                }
                let _ = reply.send(Err(Error::StorageUnavailable(reason)));
                return;
            }
            let applied = self.state.apply(
                &record.command,
                record.key.as_ref(),
                record.now_ms,
                &mut self.events_buf,
            );
            // A record this build refuses (a newer leader's rules or limits) changed
            // nothing: the standby stops following there and says why (standbys
            // upgrade first).
            if let (None, Err(rejection)) = (applied.lsn, &applied.outcome) {
                let _ = reply.send(Err(refused_by_this_build(lsn, &record.command, rejection)));
                return;
            }
            // Pair assertion with the leader: the same record lands on the same LSN.
            assert_eq!(
                applied.lsn,
                Some(lsn),
                "standby diverged from its leader at record {lsn} ({})",
                record.command.name()
            );
            self.note_changed_skus();
            self.now_ms = self.now_ms.max(record.now_ms);
            self.records_since_snapshot += 1;
            self.appended = true;
            let stats = &self.shared.stats;
            stats.commands_applied.fetch_add(1, Ordering::Relaxed);
            stats.records_logged.fetch_add(1, Ordering::Relaxed);
            self.publish_new_sku_names();
            if let Some(wal) = self.wal.as_mut() {
                if let Err(e) = wal.append(lsn, &bytes) {
                    self.fail_stop(format!("append failed: {e}"));
                }
                if self.follower.is_some() {
                    self.batch_records.push((lsn, bytes));
                }
            }
        }
        let lsn = self.state.next_seq().saturating_sub(1);
        pending.push(Pending::Replicated { reply, lsn });
    }

    /// Write and publish the snapshot the follower encoded, once its LSN is known
    /// durable here (it always is on disk: the follower applies only durable
    /// records; this writer may not have collected the commit's result yet).
    fn install_follower_snapshot(&mut self) {
        let Some((lsn, _)) = self.install_waiting.as_ref() else {
            return;
        };
        let lsn = *lsn;
        if self.wal.is_none() {
            self.install_waiting = None;
            return;
        }
        if self.refusal().is_some() {
            return;
        }
        let wal = self.wal.as_mut().expect("checked");
        if wal.durable_lsn() < lsn {
            return; // next iteration
        }
        let (_, body) = self.install_waiting.take().expect("checked");
        if lsn <= wal.snapshot_lsn() {
            // A newer one is in place already; the requests it covers are answered
            // by `ask_follower_for_requested_snapshots`.
            self.shared.snapshot_wanted.store(false, Ordering::Release);
            return;
        }
        let body_bytes = body.body_len() as u64;
        match wal.begin_snapshot(lsn, body) {
            Ok(Some(job)) => {
                let sizes = SnapshotSizes {
                    body_bytes,
                    log_bytes: wal.stats().bytes_written,
                };
                self.records_since_snapshot = 0;
                self.shared.snapshot_wanted.store(false, Ordering::Release);
                self.run_snapshot_job(lsn, job, sizes, self.config.snapshot_in_background);
            }
            Ok(None) => self.shared.snapshot_wanted.store(false, Ordering::Release),
            Err(e) => {
                if wal.is_poisoned() {
                    self.fail_stop(format!("snapshot failed: {e}"));
                }
                // The requests waiting hear why rather than wait for it.
                self.answer_snapshot_waiters(Err(format!("snapshot failed: {e}")));
            }
        }
    }

    /// Requested snapshots in sync mode are the follower's to encode, like the
    /// periodic ones: the writer never walks the state for them. Those the
    /// snapshot in place covers are answered once its publication is durable; for
    /// the others the follower is asked once for a snapshot at or past the last
    /// LSN logged when they were taken (records it applies only once durable: a
    /// failed sync stops the engine, and the requests then hear why).
    fn ask_follower_for_requested_snapshots(&mut self) {
        if self.snapshot_waiting.is_empty() {
            self.follower_asked_upto = 0;
            return;
        }
        if let Some(why) = self.refusal() {
            self.answer_snapshot_waiters(Err(format!(
                "writes are refused: no snapshot of an unlogged state: {why}"
            )));
            return;
        }
        let Some(snapshot_lsn) = self.wal.as_ref().map(Wal::snapshot_lsn) else {
            return self.start_snapshot(false);
        };
        if self
            .snapshot_waiting
            .iter()
            .any(|(_, logged)| *logged <= snapshot_lsn)
        {
            // Its rename and MANIFEST are made durable by the commit after it.
            match self.drain_commits() {
                Ok(()) => self.answer_snapshot_waiters_upto(snapshot_lsn),
                Err(why) => return self.answer_snapshot_waiters(Err(why)),
            }
        }
        let Some(upto) = self
            .snapshot_waiting
            .iter()
            .map(|(_, logged)| *logged)
            .max()
        else {
            self.follower_asked_upto = 0;
            return;
        };
        let coming = self
            .snapshot_job
            .as_ref()
            .map(|job| job.lsn)
            .max(self.install_waiting.as_ref().map(|(lsn, _)| *lsn));
        // A follower that stopped (it panicked) answers nothing.
        let follower_alive = self.follower.as_ref().is_some_and(FollowerLink::alive);
        if follower_alive
            && (upto <= self.follower_asked_upto || coming.is_some_and(|lsn| upto <= lsn))
        {
            return; // asked already, or one being written covers them
        }
        let asked = follower_alive
            && self
                .follower
                .as_ref()
                .is_some_and(|f| f.tx.send(FollowerMsg::Snapshot { upto }).is_ok());
        if asked {
            self.follower_asked_upto = upto;
        } else {
            // The follower is gone: the writer encodes it, as without one.
            self.start_snapshot(self.config.snapshot_in_background);
        }
    }

    /// Sync mode: hand the batch to durability. Replies (and reads, which may have
    /// seen this batch's writes) go out once everything before them is durable.
    ///
    /// With the sync thread, the queue's lock is held from the commit's beginning
    /// to its hand-over. When the flush handed over last is still queued (the sync
    /// thread is busy with an earlier one), this batch joins it: its records take
    /// the place of that flush's commit mark (`Wal::continue_commit`) instead of
    /// padding a page of their own, and its answers wait with that flush's. The
    /// lock keeps the sync thread from taking that flush meanwhile.
    fn hand_over(&mut self, logged: bool, pending: &mut Vec<Pending>, reads: Vec<ReadAnswer>) {
        let queue = self.to_syncer.clone();
        let mut locked = queue.as_ref().map(|q| q.lock());
        // The queued flush must go where this batch goes: a flush queued before the
        // publish stage was attached is not published (its records reach the
        // stream through the stage's catch-up, which stops at the attach), and
        // this batch's must be.
        let publish = self
            .publish_tx
            .as_ref()
            .map(|tx| (tx.clone(), self.config.durability == Durability::Replicated));
        let publish_mode = publish.as_ref().map(|(_, wait)| *wait);
        let joining = locked.as_ref().is_some_and(|state| {
            !state.closed
                && state.flushes.last().is_some_and(|f| {
                    f.job.is_some() && f.publish.as_ref().map(|(_, wait)| *wait) == publish_mode
                })
        });
        let job = if logged {
            let begun = self.wal.as_mut().map(|wal| {
                if joining {
                    wal.continue_commit()
                } else {
                    wal.begin_commit()
                }
            });
            match begun {
                Some(Ok(job)) => job,
                Some(Err(e)) => {
                    drop(locked.take());
                    self.fail_stop(format!("flush failed: {e}"));
                    None
                }
                None => None,
            }
        } else {
            None
        };
        if self.refusal().is_some() && job.is_none() && logged {
            drop(locked);
            // The commit could not even begin: nothing of this batch is durable.
            self.events_buf.clear();
            self.batch_records.clear();
            self.reply_all(pending, false);
            for (reply, _) in reads {
                let _ = reply.send(Err(Error::StorageUnavailable(
                    self.refusal().unwrap_or_default(),
                )));
            }
            return;
        }
        if job.is_none() && !self.durable_pending() {
            drop(locked);
            // Nothing new and nothing in flight: everything seen is durable.
            self.reply_now(pending, reads);
            return;
        }
        if job.is_none() && pending.is_empty() && reads.is_empty() {
            return;
        }
        let release = Release {
            records: std::mem::take(&mut self.batch_records),
            events: std::mem::take(&mut self.events_buf),
            replies: std::mem::take(pending),
            reads,
        };
        match locked {
            Some(mut state) if !state.closed => {
                // The sync thread owns the flush now; it outlives the writer's loop.
                match state.flushes.last_mut().filter(|_| joining) {
                    Some(queued) => queued.extend(job, release),
                    None => {
                        state.flushes.push(Flush::new(job, release, publish));
                        drop(state);
                        if let Some(queue) = &queue {
                            queue.notify();
                        }
                    }
                }
            }
            locked => {
                drop(locked);
                // No sync thread (or it has stopped): the flush runs here.
                let flush = Flush::new(job, release, publish);
                if let Some(done) = self.syncer_inline.process(vec![flush]) {
                    self.finish_commit(done);
                }
            }
        }
    }

    /// Something appended is not yet known durable (a commit is in flight).
    fn durable_pending(&self) -> bool {
        self.wal
            .as_ref()
            .is_some_and(|w| w.durable_lsn() < w.last_lsn() || w.steps_in_flight())
    }

    /// Take in the results of commits that finished on the sync thread (`block`:
    /// wait for at least one).
    fn collect_commits(&mut self, block: bool) {
        let Some(done_rx) = self.from_syncer.clone() else {
            return;
        };
        if block && let Ok(done) = done_rx.recv() {
            self.finish_commit(done);
        }
        while let Ok(done) = done_rx.try_recv() {
            self.finish_commit(done);
        }
    }

    fn finish_commit(&mut self, done: Result<u64, surge_wal::Error>) {
        let Some(wal) = self.wal.as_mut() else {
            return;
        };
        let target = *done.as_ref().unwrap_or(&0);
        if let Err(e) = wal.finish_commit(target, done.map(|_| ())) {
            self.fail_stop(format!("flush failed: {e}"));
        }
    }

    /// The step-driven core's follower: take what was sent to it (records, reads,
    /// snapshot requests), as its thread would. How many messages.
    pub(super) fn step_follower(&mut self) -> usize {
        match self.follower.as_mut().map(|f| &mut f.runs) {
            Some(FollowerRuns::Inline(follower)) => follower.step_queued(),
            _ => 0,
        }
    }

    /// Without a sync thread (the step-driven core's pipelined commit): run the
    /// flushes queued for it, as it would (one merged sync, then their releases),
    /// and take in the result. Whether there were any.
    pub(super) fn sync_queued(&mut self) -> bool {
        self.take_queued_flushes();
        self.sync_taken_flushes()
    }

    /// Without a sync thread: take what is queued for it, as it would take it
    /// (later batches then start flushes of their own instead of joining these),
    /// after what was taken before. How many flushes are taken and not yet run.
    pub(super) fn take_queued_flushes(&mut self) -> usize {
        if let (Some(queue), None) = (&self.to_syncer, &self.syncer_thread) {
            let queued = std::mem::take(&mut queue.lock().flushes);
            self.sync_taken.extend(queued);
        }
        self.sync_taken.len()
    }

    /// Without a sync thread: run the flushes taken for it (one merged sync, then
    /// their releases) and take in the result. Whether there were any.
    pub(super) fn sync_taken_flushes(&mut self) -> bool {
        let flushes = std::mem::take(&mut self.sync_taken);
        if flushes.is_empty() {
            return false;
        }
        if let Some(done) = self.syncer_inline.process(flushes) {
            self.finish_commit(done);
        }
        true
    }

    /// Make everything appended durable and wait for it (snapshots, shutdown).
    fn drain_commits(&mut self) -> Result<(), String> {
        self.hand_over(true, &mut Vec::new(), Vec::new());
        self.sync_queued();
        while self.durable_pending() && self.refusal().is_none() {
            self.collect_commits(true);
            if self.from_syncer.is_none() {
                break;
            }
        }
        match self.refusal() {
            Some(why) => Err(why),
            None if self.durable_pending() => Err("the log could not be flushed".into()),
            None => Ok(()),
        }
    }

    fn reply_now(&mut self, pending: &mut Vec<Pending>, reads: Vec<ReadAnswer>) {
        self.reply_all(pending, true);
        for (reply, answer) in reads {
            let _ = reply.send(Ok(answer));
        }
    }

    /// Apply one command and make it durable before the writer thread starts.
    pub(super) fn apply_at_start(&mut self, command: Command) -> Result<Outcome, Error> {
        self.now_ms = self.now_ms.max(self.config.clock.now_ms());
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let mut pending = Vec::new();
        self.apply(command, None, reply, &mut pending);
        let logged = std::mem::take(&mut self.appended);
        if self.wal.is_none() {
            self.shared.events.publish(&mut self.events_buf);
            self.reply_all(&mut pending, true);
        } else {
            // Nothing else is in flight yet: commit on this thread, through the same
            // hand-over as the writer loop, with the sync stage run inline.
            let to_syncer = self.to_syncer.take();
            self.hand_over(logged, &mut pending, Vec::new());
            self.to_syncer = to_syncer;
        }
        answer
            .try_recv()
            .unwrap_or(Err(Error::ShuttingDown))
            .map(|acked| acked.outcome)
    }

    /// Refuse one command before it is logged; its answer waits with its batch's.
    fn refuse_alone(&self, rejection: Rejection) -> Acked {
        self.shared
            .stats
            .commands_rejected
            .fetch_add(1, Ordering::Relaxed);
        Acked {
            outcome: Err(rejection),
            lsn: None,
        }
    }

    /// Expire overdue holds and orders through the same path as any command.
    fn expire_due(&mut self, pending: &mut Vec<Pending>) {
        while self
            .state
            .next_deadline_ms()
            .is_some_and(|at| at <= self.now_ms)
        {
            if self.refusal().is_some() {
                return;
            }
            let (reply, _rx) = tokio::sync::oneshot::channel();
            let before = self.state.next_seq();
            self.apply(Command::Expire, None, reply, pending);
            if self.state.next_seq() == before {
                // Only stale heap entries were due: nothing to log.
                return;
            }
        }
    }

    fn refusal(&self) -> Option<String> {
        if !self.shared.writes_refused_flag.load(Ordering::Acquire) {
            return None; // the hot path: no lock
        }
        self.shared.writes_refused.lock().clone()
    }

    /// Apply one command; its answer waits in `pending` for the batch's commit
    /// (an error that needs no commit is sent at once).
    fn apply(
        &mut self,
        command: Command,
        key: Option<IdempotencyKey>,
        reply: ReplySender<Acked>,
        pending: &mut Vec<Pending>,
    ) {
        match self.apply_command(command, key, true) {
            Ok(outcome) => pending.push(Pending::One { reply, outcome }),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Commands skipped, never applied: their caller stopped waiting first.
    fn abandoned(&self, commands: usize) {
        self.shared
            .stats
            .commands_abandoned
            .fetch_add(commands as u64, Ordering::Relaxed);
    }

    /// Apply the commands of one batch request in order; the answers wait together.
    fn apply_batch(
        &mut self,
        commands: Vec<(Command, Option<IdempotencyKey>)>,
        reply: ReplySender<Vec<Result<Acked, Error>>>,
        pending: &mut Vec<Pending>,
    ) {
        let conflict = commands.iter().find_map(|(_, key)| {
            let key = key.as_ref()?;
            self.state.remembers_otherwise(key, self.now_ms).then(|| {
                Rejection::IdempotencyConflict {
                    key: key.key.clone(),
                }
            })
        });
        let outcomes = match conflict {
            // Nothing applied: every command answers the conflict (none is logged).
            Some(conflict) => commands
                .iter()
                .map(|_| {
                    Ok(Acked {
                        outcome: Err(conflict.clone()),
                        lsn: None,
                    })
                })
                .collect(),
            None => commands
                .into_iter()
                .map(|(command, key)| self.apply_command(command, key, false))
                .collect(),
        };
        pending.push(Pending::Batch { reply, outcomes });
    }

    /// Apply one command: its outcome (to be answered once durable), or an error
    /// to answer now (writes refused, disk full). `single`: a client's request on
    /// its own, whose malformed keyed refusal is not remembered
    /// (`State::apply_request`); a batch's op is remembered whatever its answer.
    fn apply_command(
        &mut self,
        command: Command,
        key: Option<IdempotencyKey>,
        single: bool,
    ) -> Result<Acked, Error> {
        if let Some(reason) = self.refusal() {
            return Err(Error::StorageUnavailable(reason));
        }
        // The policy records logged while opening are published with the rest
        // of the log once a publisher is attached.
        if !self.opening
            && let Some(refusal) = self.shared.replication_refusal()
        {
            return Err(refusal);
        }
        // A command over a size limit is refused alone, before it is encoded: it
        // must never reach the log as a record the log cannot take.
        if let Err(rejection) = crate::state::check_sizes(&command, key.as_ref()) {
            return Ok(self.refuse_alone(rejection));
        }
        // Encode before applying so that the record's room in the log is reserved
        // first: a disk that is full refuses the command before it changes anything.
        let record = LogRecord {
            now_ms: self.now_ms,
            command,
            key,
        };
        if self.wal.is_some() {
            codec::encode_record(&record, &mut self.record_buf);
            if let Err(e) = self.reserve(self.state.next_seq(), self.record_buf.len()) {
                let reason = format!("{e}");
                return match e {
                    // Transient: the next command tries again.
                    surge_wal::Error::NoSpace => Err(Error::StorageUnavailable(reason)),
                    // This command alone does not fit; the log is fine. `check_sizes`
                    // makes this unreachable for valid commands (a test proves it).
                    surge_wal::Error::RecordTooLarge { len, max } => {
                        Ok(self.refuse_alone(Rejection::invalid(
                            Field::Command,
                            Violation::RecordTooLarge {
                                len: len as u64,
                                max: max as u64,
                            },
                        )))
                    }
                    // Only a real storage failure stops the engine.
                    _ => {
                        self.fail_stop(reason.clone());
                        Err(Error::StorageUnavailable(reason))
                    }
                };
            }
        }
        let applied = self.state.apply_with(
            &record.command,
            record.key.as_ref(),
            self.now_ms,
            &mut self.events_buf,
            single,
        );
        self.note_changed_skus();
        let shared = Arc::clone(&self.shared);
        let stats = &shared.stats;
        if applied.outcome.is_ok() {
            stats.commands_applied.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.commands_rejected.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(lsn) = applied.lsn {
            #[cfg(feature = "fault-injection")]
            fault_injection::writer_panic_at(lsn);
            self.records_since_snapshot += 1;
            self.appended = true;
            stats.records_logged.fetch_add(1, Ordering::Relaxed);
            self.publish_new_sku_names();
            if let Some(wal) = self.wal.as_mut() {
                stats
                    .wal_bytes
                    .fetch_add(self.record_buf.len() as u64 + 16, Ordering::Relaxed);
                if self.follower.is_some() || self.publish_tx.is_some() {
                    self.batch_records.push((lsn, self.record_buf.clone()));
                }
                if let Err(e) = wal.append(lsn, &self.record_buf) {
                    // The room was reserved, so this is an I/O failure: the state is
                    // now ahead of the log; stop taking writes, a restart recovers.
                    self.fail_stop(format!("append failed: {e}"));
                }
            }
        }
        Ok(Acked {
            outcome: applied.outcome,
            lsn: applied.answer_lsn,
        })
    }

    /// Tell the stock board which SKUs the record just applied changed, before the
    /// record goes to the log (`board.rs`). Only tracked where a follower keeps a
    /// board. A refused command changed none; if it touched one, the LSN noted is
    /// the last record's, still at or past that SKU's last change.
    fn note_changed_skus(&mut self) {
        let lsn = self.state.next_seq().saturating_sub(1);
        let board = &self.shared.board;
        self.state
            .drain_touched_skus(|idx| board.note_changed(idx, lsn));
    }

    /// New SKUs get their names into the feed's table before their events publish.
    fn publish_new_sku_names(&mut self) {
        while self.sku_names_published < self.state.sku_count() {
            let idx = SkuIdx(self.sku_names_published as u32);
            self.shared
                .events
                .add_sku_name(Arc::from(self.state.sku_name(idx)));
            self.sku_names_published += 1;
        }
    }

    fn fail_stop(&self, reason: String) {
        self.shared.refuse_writes(reason);
    }

    /// [`surge_wal::Wal::reserve`], keeping `Inner::storage_full` true to the
    /// disk: set on [`surge_wal::Error::NoSpace`], cleared by the next success of a
    /// record at least as large as the one refused.
    fn reserve(&mut self, lsn: u64, payload_len: usize) -> Result<(), surge_wal::Error> {
        let Some(wal) = self.wal.as_mut() else {
            return Ok(());
        };
        let reserved = wal.reserve(lsn, payload_len);
        match &reserved {
            // Room for the record that found none (or a larger one): it fit without
            // a roll, or the roll went through. A smaller one may still fit in the
            // segment's last bytes while no roll can.
            Ok(())
                if self
                    .room_wanted_bytes
                    .is_some_and(|wanted| payload_len >= wanted) =>
            {
                self.room_wanted_bytes = None;
                self.shared.storage_full.set(None);
            }
            Ok(()) => {}
            Err(e @ surge_wal::Error::NoSpace) => self.note_no_room(e, payload_len),
            Err(_) => {}
        }
        reserved
    }

    /// No room for a `payload_len`-byte record: the disk is full until the retry
    /// (or a write) finds room for one at least that large.
    pub(super) fn note_no_room(&mut self, no_space: &surge_wal::Error, payload_len: usize) {
        if self.room_wanted_bytes.is_none() {
            self.shared.storage_full.set(Some(format!(
                "{no_space}: writes are refused until space is freed in the data dir"
            )));
        }
        self.room_wanted_bytes = Some(payload_len);
    }

    /// The disk was full at the last write: try to make that write's room now (a
    /// new segment, prepared ahead like any roll), so that readiness comes back
    /// with the space even while no write arrives. Nothing is logged.
    fn retry_room(&mut self) {
        // After a fail-stop nothing is written again (and the reason is that one).
        // The writer's own field first: every step comes here.
        if let Some(payload_len) = self.room_wanted_bytes
            && self.refusal().is_none()
        {
            let lsn = self.state.next_seq();
            // Its outcome is kept by `reserve`; another failure is the fail-stop's.
            if let Err(e) = self.reserve(lsn, payload_len)
                && !matches!(e, surge_wal::Error::NoSpace)
            {
                self.fail_stop(format!("{e}"));
            }
        }
    }

    fn reply_all(&mut self, pending: &mut Vec<Pending>, durable: bool) {
        let refused = (!durable).then(|| {
            Error::StorageUnavailable(self.refusal().unwrap_or_else(|| "flush failed".into()))
        });
        for p in pending.drain(..) {
            p.answer(refused.as_ref());
        }
    }

    /// Start a snapshot of everything logged so far: the state and the event ring
    /// are encoded here (the writer must not change them meanwhile); writing and
    /// fsyncing the file runs on its own thread when `background`, and the writer
    /// publishes it (rename, directory fsync, pruning) once it is on disk.
    fn start_snapshot(&mut self, background: bool) {
        if self.wal.is_none() {
            let lsn = self.state.next_seq() - 1;
            self.answer_snapshot_waiters(Ok(lsn));
            return;
        }
        if self.refusal().is_some() {
            self.answer_snapshot_waiters(Err(
                "writes are refused: no snapshot of an unlogged state".into(),
            ));
            return;
        }
        // The snapshot covers every logged record: wait until they are durable
        // (commits may be in flight, or in async mode not yet begun).
        if let Err(reason) = self.drain_commits() {
            self.answer_snapshot_waiters(Err(reason));
            return;
        }
        let wal = self.wal.as_mut().expect("checked above");
        let lsn = wal.last_lsn();
        if lsn == wal.snapshot_lsn() {
            // Nothing logged since the newest snapshot (or nothing at all): it is current.
            self.records_since_snapshot = 0;
            self.answer_snapshot_waiters(Ok(lsn));
            return;
        }
        let mut image = self.shared.snapshot_image();
        codec::encode_engine_snapshot(&self.state, &self.shared.events, &mut image);
        self.shared
            .stats
            .snapshots_encoded_by_writer
            .fetch_add(1, Ordering::Relaxed);
        let body_bytes = image.body_len() as u64;
        let job = match wal.begin_snapshot(lsn, image) {
            Ok(Some(job)) => {
                // This snapshot answers a request to the follower not yet taken:
                // withdraw it rather than encode the state twice.
                if self.shared.snapshot_wanted.swap(false, Ordering::AcqRel) {
                    self.snapshot_asked = false;
                }
                job
            }
            Ok(None) => {
                self.answer_snapshot_waiters(Ok(lsn));
                return;
            }
            Err(e) => {
                self.answer_snapshot_waiters(Err(e.to_string()));
                return;
            }
        };
        let sizes = SnapshotSizes {
            body_bytes,
            log_bytes: self.wal.as_ref().map_or(0, |w| w.stats().bytes_written),
        };
        self.records_since_snapshot = 0;
        self.run_snapshot_job(lsn, job, sizes, background);
    }

    /// Write a snapshot file (on its own thread when `background`); the writer
    /// publishes it in `poll_snapshot` once it is on disk.
    fn run_snapshot_job(
        &mut self,
        lsn: u64,
        job: surge_wal::SnapshotJob,
        sizes: SnapshotSizes,
        background: bool,
    ) {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        if background {
            let spawned = spawn_owner("surge-snapshot", move || {
                // Writing the file is background work (`surge_wal::lower_this_thread_priority`).
                let _ = surge_wal::lower_this_thread_priority();
                let _ = done_tx.send(job.run());
            });
            if let Err(e) = spawned {
                self.answer_snapshot_waiters(Err(format!("cannot start the snapshot thread: {e}")));
                return;
            }
        } else {
            let _ = done_tx.send(job.run());
        }
        self.snapshot_job = Some(SnapshotInFlight {
            lsn,
            sizes,
            done: done_rx,
        });
        self.poll_snapshot(!background);
    }

    /// Publish the snapshot in flight once its file is on disk (`block`: wait for it).
    fn poll_snapshot(&mut self, block: bool) {
        let Some(job) = self.snapshot_job.as_ref() else {
            return;
        };
        let written = if block {
            job.done.recv().unwrap_or(Err(surge_wal::Error::Poisoned))
        } else {
            match job.done.try_recv() {
                Ok(written) => written,
                Err(crossbeam_channel::TryRecvError::Empty) => return,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    Err(surge_wal::Error::Poisoned)
                }
            }
        };
        let (lsn, sizes) = (job.lsn, job.sizes);
        self.snapshot_job = None;
        let mut written = written;
        if let Ok(written) = written.as_mut() {
            *self.shared.snapshot_buffers.lock() = written.take_buffers();
        }
        let wal = self.wal.as_mut().expect("a snapshot job implies a log");
        if self.publish_tx.is_some() {
            // Pruning keeps what the replicated log does not hold yet.
            wal.retain_after(self.shared.stats.published_lsn.load(Ordering::Acquire));
        }
        // The rename and the MANIFEST are made durable by the next commit job, on
        // the sync thread; the writer does not wait for them.
        let mut result = wal
            .publish_snapshot(written)
            .map(|()| lsn)
            .map_err(|e| e.to_string());
        let poisoned = wal.is_poisoned();
        if let Err(e) = &result
            && poisoned
        {
            self.fail_stop(format!("snapshot failed: {e}"));
        }
        if !poisoned {
            self.hand_over(true, &mut Vec::new(), Vec::new());
            if result.is_ok()
                && self
                    .snapshot_waiting
                    .iter()
                    .any(|(_, logged)| *logged <= lsn)
            {
                // Someone asked for this snapshot: answer once it is durable.
                if let Err(why) = self.drain_commits() {
                    result = Err(why);
                }
            }
        }
        if result.is_ok() {
            let stats = &self.shared.stats;
            stats.snapshot_lsn.store(lsn, Ordering::Relaxed);
            stats.snapshot_at_ms.store(self.now_ms, Ordering::Relaxed);
            stats.snapshots.fetch_add(1, Ordering::Relaxed);
            stats
                .snapshot_bytes
                .fetch_add(sizes.body_bytes, Ordering::Relaxed);
            // The next snapshot by count is judged from this one, once it is in place.
            self.last_snapshot = sizes;
        }
        match result {
            Ok(lsn) => self.answer_snapshot_waiters_upto(lsn),
            Err(why) => self.answer_snapshot_waiters(Err(why)),
        }
    }

    /// What a snapshot request answers when no new snapshot is needed.
    fn snapshot_current(&self) -> Result<u64, String> {
        match self.wal.as_ref() {
            Some(wal) => Ok(wal.snapshot_lsn()),
            None => Ok(self.state.next_seq() - 1),
        }
    }

    fn answer_snapshot_waiters(&mut self, result: Result<u64, String>) {
        for (reply, _) in self.snapshot_waiting.drain(..) {
            let _ = reply.send(result.clone().map_err(Error::StorageUnavailable));
        }
        // A later request asks the follower afresh, even at the same LSN; after a
        // failure the follower encodes afresh too (the snapshot it sent last may be
        // the one that failed).
        self.follower_asked_upto = 0;
        if result.is_err()
            && let Some(follower) = self.follower.as_ref()
        {
            let _ = follower.tx.send(FollowerMsg::InstallFailed);
        }
    }

    /// Answers the requests a snapshot at `lsn` covers (those taken when at most
    /// `lsn` was logged); the others wait for the next one, which the next step
    /// starts.
    fn answer_snapshot_waiters_upto(&mut self, lsn: u64) {
        let covered: Vec<_> = self
            .snapshot_waiting
            .extract_if(.., |(_, logged)| *logged <= lsn)
            .collect();
        for (reply, _) in covered {
            let _ = reply.send(Ok(lsn));
        }
    }
}

/// A snapshot whose file is being written on its own thread.
pub(super) struct SnapshotInFlight {
    lsn: u64,
    sizes: SnapshotSizes,
    done: crossbeam_channel::Receiver<Result<surge_wal::WrittenSnapshot, surge_wal::Error>>,
}

/// A snapshot's body bytes, and the log's bytes written when it was begun: what
/// [`snapshot_due_by_records`] judges the next one from once it is published.
#[derive(Clone, Copy, Default)]
pub(super) struct SnapshotSizes {
    body_bytes: u64,
    log_bytes: u64,
}

/// Faults the engine's tests trigger; compiled only with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
mod fault_injection {
    use std::sync::OnceLock;

    /// Panic on the writer, before logging record `lsn`, if
    /// `SURGE_FAULT_WRITER_PANIC_AT_LSN` asks for it.
    pub(super) fn writer_panic_at(lsn: u64) {
        static AT: OnceLock<Option<u64>> = OnceLock::new();
        let at = AT.get_or_init(|| {
            std::env::var("SURGE_FAULT_WRITER_PANIC_AT_LSN")
                .ok()
                .and_then(|v| v.parse().ok())
        });
        if *at == Some(lsn) {
            panic!("fault injection: writer panic before logging LSN {lsn}");
        }
    }
}

/// Whether a snapshot is due by what was logged since the last one: at least
/// `every_records` records (0: never by count), and log bytes of at least
/// `log_percent_min` percent of the last snapshot's body (`last_snapshot_bytes`,
/// 0 when there was none; a percent of 0 leaves the count alone). A snapshot costs
/// its whole state while a record costs its own bytes: without the second bound, a
/// state of millions of holds would be encoded and written again every
/// `every_records` records. With it, snapshot work stays within a constant share of
/// log work however large the state; the log replayed after a snapshot grows to
/// the larger of the two bounds.
fn snapshot_due_by_records(
    records: u64,
    every_records: u64,
    log_bytes: u64,
    last_snapshot_bytes: u64,
    log_percent_min: u64,
) -> bool {
    every_records > 0
        && records >= every_records
        && u128::from(log_bytes) * 100
            >= u128::from(last_snapshot_bytes) * u128::from(log_percent_min)
}

/// A leader's record this standby's build refuses: it was logged by a build with
/// other limits or rules.
fn refused_by_this_build(lsn: u64, command: &Command, rejection: &Rejection) -> Error {
    Error::Replication(format!(
        "the leader's record {lsn} ({}) is refused by this build: {rejection:?}; upgrade \
         this standby to the leader's build",
        command.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::snapshot_due_by_records;

    #[test]
    fn a_snapshot_by_count_waits_for_a_snapshots_worth_of_log() {
        // No snapshot yet: the count alone.
        assert!(!snapshot_due_by_records(99, 100, 0, 0, 100));
        assert!(snapshot_due_by_records(100, 100, 0, 0, 100));
        // A 1 MB snapshot: 100 records are not enough until 1 MB was logged.
        assert!(!snapshot_due_by_records(100, 100, 999_999, 1_000_000, 100));
        assert!(snapshot_due_by_records(100, 100, 1_000_000, 1_000_000, 100));
        // Nor is the log without the count.
        assert!(!snapshot_due_by_records(99, 100, 5_000_000, 1_000_000, 100));
        // Half the snapshot's size at 50 percent; the count alone at 0.
        assert!(snapshot_due_by_records(100, 100, 500_000, 1_000_000, 50));
        assert!(!snapshot_due_by_records(100, 100, 499_999, 1_000_000, 50));
        assert!(snapshot_due_by_records(100, 100, 0, 1_000_000, 0));
        // 0 records: never by count; no overflow at the extremes.
        assert!(!snapshot_due_by_records(u64::MAX, 0, u64::MAX, 0, 100));
        assert!(!snapshot_due_by_records(
            u64::MAX,
            1,
            u64::MAX - 1,
            u64::MAX,
            u64::MAX
        ));
        assert!(snapshot_due_by_records(
            u64::MAX,
            1,
            u64::MAX,
            u64::MAX,
            100
        ));
    }
}
