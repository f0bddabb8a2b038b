//! The runtime: a bounded queue into one writer thread that owns the [`State`].
//!
//! ```text
//! submit(cmd) --> bounded queue --> writer: drain up to batch_len_max
//!                                     apply each (pure) -> encode -> WAL append
//!                                     one commit (msync) for the batch
//!                                     publish events, send every reply
//! ```
//!
//! A reply is sent only after the batch holding its record is durable (`sync`), or
//! after apply (`async`: a flush follows within `async_flush_interval_ms`), or at
//! once (`none`: no log at all). Time is an input: the writer stamps each batch with
//! the wall clock, never earlier than the previous stamp, and logs the stamp.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::Mutex;
use surge_wal::{CommitJob, MmapStorage, Storage, Wal, WalConfig};

use crate::board::{BoardRead, StockBoard};
use crate::codec::{self, LogRecord};
use crate::command::{Acked, Command, IdempotencyKey, Outcome, Query, SkuView};
use crate::domain::{Millis, SkuIdx};
use crate::event::Event;
use crate::feed::EventLog;
use crate::query::QueryReply;
use crate::state::State;
use crate::{Field, IdempotencyPolicy, Rejection, Violation, fnv1a64};

mod replication;
pub use replication::{LogPublisher, PublishError, Role};
use replication::{PublishMsg, PublishStage};

/// How a reply waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Reply after the batch is flushed (default).
    Sync,
    /// Reply after apply; flush every few milliseconds (like Redis `everysec`, faster).
    Async,
    /// No WAL at all: state is lost on exit. For benchmarks and throwaway demos.
    None,
    /// Reply after the batch is flushed AND the replicated log (a [`LogPublisher`])
    /// acknowledged it: only this mode promises a failover without loss.
    Replicated,
}

impl Durability {
    /// Replies wait for the local commit (`sync` and `replicated`).
    fn waits_for_commit(self) -> bool {
        matches!(self, Durability::Sync | Durability::Replicated)
    }
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(Durability::Sync),
            "async" => Ok(Durability::Async),
            "none" => Ok(Durability::None),
            "replicated" => Ok(Durability::Replicated),
            other => Err(format!(
                "durability must be sync, async, none or replicated, not {other:?}"
            )),
        }
    }
}

/// Runtime configuration. Every field has a sensible default.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Commands waiting at once; a full queue answers `Overloaded` at once.
    pub queue_len_max: usize,
    /// Commands the writer applies per loop iteration; bounds an iteration's length.
    /// The sync thread merges the iterations that queue up during one sync.
    pub batch_len_max: usize,
    pub async_flush_interval_ms: u64,
    /// How often the writer checks for expired holds when idle.
    pub expire_interval_ms: u64,
    /// Take a snapshot after this many logged records (0: only on request and shutdown).
    pub snapshot_every_records: u64,
    /// Take a snapshot once this many WAL segments are on disk, so that the log (and
    /// start-up replay) stays bounded even when commits are small and padded.
    pub snapshot_every_segments: usize,
    /// Write a snapshot at clean shutdown (benchmarks of replay turn it off).
    pub snapshot_on_shutdown: bool,
    /// Write snapshot files on their own thread (the writer still encodes them).
    /// Off makes a run fully deterministic, for the seeded crash tests.
    pub snapshot_in_background: bool,
    /// Sync batch N on its own thread while the writer applies N+1 (pipelined
    /// group commit). Off syncs on the writer, which makes a run deterministic.
    pub pipelined_commit: bool,
    /// In `sync` mode, serve reads from a follower: a second copy of the state that
    /// applies each batch once it is durable, on its own thread. Reads then never
    /// wait in the writer's queue, and periodic snapshots are encoded there, not on
    /// the writer. Costs a second copy of the state in memory.
    pub follower: bool,
    /// Events kept in memory for the feed.
    pub events_kept: usize,
    pub wal: WalConfig,
    /// Where the writer reads the time; tests substitute a manual clock.
    pub clock: Clock,
    /// The idempotency window and budget to run with. When it differs from the
    /// recovered state's, it is logged (`Command::SetIdempotencyPolicy`) before any
    /// other command. `None` keeps the state's (offline tools).
    pub idempotency: Option<IdempotencyPolicy>,
    /// The order policy (ship SLA, review threshold) to run with; logged like the
    /// idempotency policy when it differs from the state's (and once, to move a data
    /// dir written before v1.1 to its rules). `None` keeps the state's.
    pub order_policy: Option<crate::command::OrderPolicy>,
    /// What this node does at start: a leader takes writes, a standby applies a
    /// leader's records ([`EngineHandle::replicate`]) until promoted.
    pub role: Role,
    /// A [`LogPublisher`] will be attached (or the standby may be promoted and
    /// publish): until records are published, log segments holding them are kept.
    pub replicate: bool,
}

/// A source of wall-clock milliseconds. The writer never lets its stamps go back,
/// whatever this returns.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Millis + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(wall_clock_ms))
    }

    /// A clock that reads `ms` (tests move it by hand).
    pub fn manual(ms: Arc<AtomicU64>) -> Clock {
        Clock(Arc::new(move || ms.load(Ordering::SeqCst)))
    }

    pub fn now_ms(&self) -> Millis {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now_ms())
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("./data"),
            durability: Durability::Sync,
            queue_len_max: 65_536,
            batch_len_max: 512,
            async_flush_interval_ms: 5,
            expire_interval_ms: 50,
            snapshot_every_records: 2_000_000,
            snapshot_every_segments: 16,
            snapshot_on_shutdown: true,
            snapshot_in_background: true,
            pipelined_commit: true,
            follower: true,
            events_kept: 1_000_000,
            wal: WalConfig::default(),
            clock: Clock::system(),
            idempotency: None,
            order_policy: None,
            role: Role::Leader,
            replicate: false,
        }
    }
}

/// Errors of the runtime layer (business refusals are [`Rejection`] values).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("the engine queue is full ({0} commands waiting): retry shortly")]
    Overloaded(usize),
    #[error("storage unavailable: {0}")]
    StorageUnavailable(String),
    #[error("the engine is shutting down")]
    ShuttingDown,
    #[error("write-ahead log: {0}")]
    Wal(#[from] surge_wal::Error),
    #[error("recovery failed: {0}")]
    Recovery(String),
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// A write on a standby, or on a former leader fenced by a newer one.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// A standby was given records that do not continue its log.
    #[error("replication: {0}")]
    Replication(String),
}

impl Error {
    /// The same error again, for answering several waiters (the WAL's error is
    /// carried as its message).
    fn duplicate(&self) -> Error {
        match self {
            Error::Overloaded(n) => Error::Overloaded(*n),
            Error::ShuttingDown => Error::ShuttingDown,
            Error::NotLeader(why) => Error::NotLeader(why.clone()),
            Error::Replication(why) => Error::Replication(why.clone()),
            other => Error::StorageUnavailable(other.to_string()),
        }
    }
}

/// What start-up found and did.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    pub wal: Option<surge_wal::RecoveryReport>,
    pub snapshot_lsn: u64,
    pub records_replayed: u64,
    pub events_restored: usize,
    pub duration: Duration,
    pub next_lsn: u64,
}

/// Counters the writer keeps for `/metrics`.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    /// Stock reads the board could not answer (behind the read index): they went
    /// through the follower's queue.
    pub board_behind: AtomicU64,
    /// Reads that went through the writer's queue because the follower was
    /// encoding a snapshot.
    pub reads_during_snapshot: AtomicU64,
    pub commands_applied: AtomicU64,
    pub commands_rejected: AtomicU64,
    pub records_logged: AtomicU64,
    pub batches: AtomicU64,
    pub batch_len_last: AtomicU64,
    pub batch_len_max_seen: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_latency_us_last: AtomicU64,
    pub flush_latency_us_total: AtomicU64,
    pub snapshot_at_ms: AtomicU64,
    pub snapshot_lsn: AtomicU64,
    pub snapshots: AtomicU64,
    pub durable_lsn: AtomicU64,
    /// The last LSN the replicated log acknowledged (leader with a publisher).
    pub published_lsn: AtomicU64,
    pub overloaded: AtomicU64,
    /// Writer loop iterations, the sync excluded (it runs on the sync thread).
    pub writer_iteration: LatencyHistogram,
    /// Group commit latency: one sync, however many batches it covers.
    pub wal_commit: LatencyHistogram,
    /// One publish to the replicated log, until its acknowledgement.
    pub replication_publish: LatencyHistogram,
}

/// A fixed-bucket latency histogram that threads record into without locks.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Counts per bucket of [`LatencyHistogram::BOUNDS_US`], plus one above the last.
    buckets: [AtomicU64; LatencyHistogram::BOUNDS_US.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Upper bounds of the buckets, in microseconds: 50 µs to 100 ms.
    pub const BOUNDS_US: [u64; 12] = [
        50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 75_000, 100_000,
    ];

    pub fn record(&self, elapsed: Duration) {
        let micros = elapsed.as_micros() as u64;
        let i = Self::BOUNDS_US.partition_point(|&bound| bound < micros);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = elapsed.as_nanos() as u64;
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(nanos, Ordering::Relaxed);
    }

    /// The longest duration recorded.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns.load(Ordering::Relaxed))
    }

    /// The smallest bucket bound (µs) at or below which a share `q` of the
    /// recordings fall; `None` if that is above the last bound (or nothing yet).
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        let (buckets, total) = self.cumulative();
        let wanted = (total as f64 * q).ceil() as u64;
        if total == 0 {
            return None;
        }
        buckets
            .into_iter()
            .find(|&(_, count)| count >= wanted)
            .map(|(bound, _)| bound)
    }

    /// Cumulative counts per bound (`le`), as Prometheus wants them, then the total.
    pub fn cumulative(&self) -> (Vec<(u64, u64)>, u64) {
        let mut running = 0;
        let mut out = Vec::with_capacity(Self::BOUNDS_US.len());
        for (i, bound) in Self::BOUNDS_US.iter().enumerate() {
            running += self.buckets[i].load(Ordering::Relaxed);
            out.push((*bound, running));
        }
        running += self.buckets[Self::BOUNDS_US.len()].load(Ordering::Relaxed);
        (out, running)
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

type ReplySender<T> = tokio::sync::oneshot::Sender<Result<T, Error>>;

/// Records as logged: (LSN, encoded record).
type LoggedRecords = Vec<(u64, Vec<u8>)>;

/// A read of the log for the publish stage: after which LSN, how many bytes, and
/// where the records go.
type LogRead = (u64, usize, ReplySender<LoggedRecords>);

enum Request {
    Command {
        command: Command,
        key: Option<IdempotencyKey>,
        reply: ReplySender<Acked>,
    },
    /// Commands applied one after another in one writer iteration, answered
    /// together once durable (`POST /v1/batch`).
    Batch {
        commands: Vec<Command>,
        reply: ReplySender<Vec<Result<Acked, Error>>>,
    },
    Query {
        query: Query,
        reply: ReplySender<Result<QueryReply, Rejection>>,
    },
    Snapshot {
        reply: ReplySender<u64>,
    },
    /// A snapshot body the follower encoded at `lsn`: the writer writes and
    /// publishes it (the WAL's snapshot steps stay with the log's owner).
    InstallSnapshot {
        lsn: u64,
        body: Vec<u8>,
    },
    /// A standby applies and logs a leader's records (LSN, record as logged);
    /// answered with the last LSN applied, once durable.
    Replicate {
        records: Vec<(u64, Vec<u8>)>,
        reply: ReplySender<u64>,
    },
    /// The publish stage catching up reads durable records from the WAL.
    ReadLog {
        after: u64,
        bytes_max: usize,
        reply: ReplySender<Vec<(u64, Vec<u8>)>>,
    },
    /// Start publishing the log (a leader at start, or a standby's promotion);
    /// answered with the last LSN logged before publishing started.
    AttachPublisher {
        publisher: Box<dyn LogPublisher>,
        promote: bool,
        /// For the stage's log reads (the writer holds no sender of its own queue).
        to_writer: Sender<Request>,
        reply: ReplySender<u64>,
    },
    Shutdown,
}

/// A pending answer: `.await` it from async code or `wait()` from a plain thread.
pub struct Ticket<T>(tokio::sync::oneshot::Receiver<Result<T, Error>>);

impl<T> Ticket<T> {
    pub fn wait(self) -> Result<T, Error> {
        self.0.blocking_recv().unwrap_or(Err(Error::ShuttingDown))
    }
}

impl<T> std::future::Future for Ticket<T> {
    type Output = Result<T, Error>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::ShuttingDown)))
    }
}

/// What the writer shares with the handles. The writer holds only this, not the
/// queue's sender, so dropping every handle disconnects the queue.
struct Inner {
    events: EventLog,
    stats: RuntimeStats,
    /// Why writes are refused right now (disk full, failed flush), if they are.
    writes_refused: Mutex<Option<String>>,
    /// `writes_refused.is_some()`, readable without the lock.
    writes_refused_flag: AtomicBool,
    /// The writer asks the follower for a snapshot (records or segments piled up).
    snapshot_wanted: AtomicBool,
    /// Reads waiting at the follower (bounded like the writer's queue).
    follower_reads: std::sync::atomic::AtomicUsize,
    /// Stock as the follower applied it, for reads on the caller's thread.
    board: StockBoard,
    /// The follower is encoding a snapshot: new reads go through the writer's queue
    /// meanwhile instead of waiting for it.
    follower_encoding: AtomicBool,
    /// [`Role`] as a byte.
    role: std::sync::atomic::AtomicU8,
    /// Why the replicated log is unavailable now, if it is (`replicated` mode
    /// refuses writes meanwhile); `replication_down_flag` mirrors `is_some()`.
    replication_down: Mutex<Option<String>>,
    replication_down_flag: AtomicBool,
    /// The engine is stopping: the publish stage gives up retrying.
    publish_stopping: AtomicBool,
    durability: Durability,
}

impl Inner {
    fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }

    fn set_role(&self, role: Role) {
        self.role.store(role.as_u8(), Ordering::Release);
    }

    fn set_replication_down(&self, why: Option<String>) {
        if why.is_none() && !self.replication_down_flag.load(Ordering::Acquire) {
            return;
        }
        let mut down = self.replication_down.lock();
        self.replication_down_flag
            .store(why.is_some(), Ordering::Release);
        *down = why;
    }

    /// Why this node refuses a write now for its place in replication: a standby
    /// or fenced node, or `replicated` mode while the replicated log is down.
    fn replication_refusal(&self) -> Option<Error> {
        match self.role() {
            Role::Leader => {}
            Role::Standby => {
                return Some(Error::NotLeader(
                    "this node is a standby: send writes to the leader".into(),
                ));
            }
            Role::Fenced => {
                return Some(Error::NotLeader(
                    "this node was the leader and has been fenced by a newer one".into(),
                ));
            }
        }
        if self.durability == Durability::Replicated
            && self.replication_down_flag.load(Ordering::Acquire)
        {
            let why = self.replication_down.lock().clone().unwrap_or_default();
            return Some(Error::StorageUnavailable(format!(
                "the replicated log is unavailable ({why}): writes resume when it is back"
            )));
        }
        None
    }

    /// The LSN a read must see applied: every write acknowledged before it. In
    /// `replicated` mode a write is acknowledged once published, so a read never
    /// waits for (or sees) a record a failover could lose.
    fn read_index(&self) -> u64 {
        if self.durability == Durability::Replicated && self.role() == Role::Leader {
            self.stats.published_lsn.load(Ordering::Acquire)
        } else {
            self.stats.durable_lsn.load(Ordering::Acquire)
        }
    }

    /// Fail stop: refuse every write until a restart recovers from the log.
    fn refuse_writes(&self, reason: String) {
        let mut refused = self.writes_refused.lock();
        if refused.is_none() {
            *refused = Some(format!(
                "{reason}; writes are refused until a restart recovers from the log"
            ));
            self.writes_refused_flag.store(true, Ordering::Release);
        }
    }
}

/// A read answered from the writer's state, sent once what it saw is durable.
type ReadAnswer = (
    ReplySender<Result<QueryReply, Rejection>>,
    Result<QueryReply, Rejection>,
);

/// A batch handed from the writer to durability: its commit job (if it logged
/// anything) and everything to release once that job and every job before it
/// are durable.
struct Flush {
    job: Option<CommitJob>,
    release: Release,
    /// Where the records go once durable, when this node publishes its log; `true`:
    /// the release waits for the publish too (`replicated`).
    publish: Option<(Sender<PublishMsg>, bool)>,
}

/// What a batch releases once it is durable (and, in `replicated` mode, published).
struct Release {
    /// The records of this batch as logged, for the follower and the publisher.
    records: Vec<(u64, Vec<u8>)>,
    events: Vec<Event>,
    replies: Vec<Pending>,
    reads: Vec<ReadAnswer>,
}

impl Release {
    /// The batch is safe: feed the follower, publish the events, answer.
    fn release(self, shared: &Inner, to_follower: Option<&Sender<FollowerMsg>>) {
        if let Some(follower) = to_follower
            && !self.records.is_empty()
        {
            let _ = follower.send(FollowerMsg::Records(self.records));
        }
        shared.events.publish(&self.events);
        for p in self.replies {
            p.answer(None);
        }
        for (reply, answer) in self.reads {
            let _ = reply.send(Ok(answer));
        }
    }

    /// The batch will never be safe: every waiter gets `error`.
    fn refuse(self, error: &Error) {
        for p in self.replies {
            p.answer(Some(error));
        }
        for (reply, _) in self.reads {
            let _ = reply.send(Err(error.duplicate()));
        }
    }
}

/// The durable half of the pipelined group commit. On its own thread it syncs
/// batch N while the writer applies and appends N+1; flushes that queue up while
/// a sync runs are merged into the next one. Replies, reads and events of a flush
/// are released only when it and everything before it is durable. After a failed
/// sync nothing more is acknowledged: that flush and every later one fail.
struct SyncStage {
    shared: Arc<Inner>,
    failed: Option<String>,
    /// Durable records go on to the follower, in log order; failed ones never do.
    to_follower: Option<Sender<FollowerMsg>>,
}

impl SyncStage {
    fn run(mut self, rx: Receiver<Flush>, done: Sender<Result<u64, surge_wal::Error>>) {
        while let Ok(first) = rx.recv() {
            let mut flushes = vec![first];
            flushes.extend(rx.try_iter());
            if let Some(result) = self.process(flushes) {
                // The writer may be gone at shutdown; nothing waits for this then.
                let _ = done.send(result);
            }
        }
    }

    /// Sync what the flushes carry (one merged sync) and release them. Returns the
    /// commit's result for the writer's log, if there was a commit.
    fn process(&mut self, mut flushes: Vec<Flush>) -> Option<Result<u64, surge_wal::Error>> {
        let mut job: Option<CommitJob> = None;
        for flush in &mut flushes {
            if let Some(next) = flush.job.take() {
                match job.as_mut() {
                    Some(job) => job.merge(next),
                    None => job = Some(next),
                }
            }
        }
        let stats = &self.shared.stats;
        let result = match (&self.failed, job) {
            (Some(_), job) => job.map(|_| Err(surge_wal::Error::Poisoned)),
            (None, Some(job)) => {
                let started = Instant::now();
                let synced = job.run().map(|()| job.target());
                let elapsed = started.elapsed();
                let micros = elapsed.as_micros() as u64;
                stats.flushes.fetch_add(1, Ordering::Relaxed);
                stats.flush_latency_us_last.store(micros, Ordering::Relaxed);
                stats
                    .flush_latency_us_total
                    .fetch_add(micros, Ordering::Relaxed);
                stats.wal_commit.record(elapsed);
                Some(synced)
            }
            (None, None) => None,
        };
        let replies: usize = flushes.iter().map(|f| f.release.replies.len()).sum();
        stats.batches.fetch_add(1, Ordering::Relaxed);
        stats
            .batch_len_last
            .store(replies as u64, Ordering::Relaxed);
        stats
            .batch_len_max_seen
            .fetch_max(replies as u64, Ordering::Relaxed);
        match &result {
            Some(Err(e)) if self.failed.is_none() => {
                // Never retry a failed flush and trust it.
                let why = format!("flush failed: {e}");
                self.shared.refuse_writes(why.clone());
                self.failed = Some(why);
            }
            Some(Ok(durable)) => stats.durable_lsn.store(*durable, Ordering::Release),
            _ => {}
        }
        for mut flush in flushes {
            if let Some(why) = &self.failed {
                flush
                    .release
                    .refuse(&Error::StorageUnavailable(why.clone()));
                continue;
            }
            match flush.publish {
                None => flush
                    .release
                    .release(&self.shared, self.to_follower.as_ref()),
                Some((to_publisher, true)) => {
                    if let Err(crossbeam_channel::SendError(PublishMsg::Hold(release))) =
                        to_publisher.send(PublishMsg::Hold(flush.release))
                    {
                        release.refuse(&Error::StorageUnavailable(
                            "the publish stage has stopped".into(),
                        ));
                    }
                }
                Some((to_publisher, false)) => {
                    let records = match &self.to_follower {
                        Some(_) => flush.release.records.clone(),
                        None => std::mem::take(&mut flush.release.records),
                    };
                    flush
                        .release
                        .release(&self.shared, self.to_follower.as_ref());
                    if !records.is_empty() {
                        let _ = to_publisher.send(PublishMsg::Trail(records));
                    }
                }
            }
        }
        result
    }
}

struct Shared {
    tx: Sender<Request>,
    /// Reads go here when there is a follower (sync mode).
    follower_tx: Option<Sender<FollowerMsg>>,
    inner: Arc<Inner>,
    shutting_down: AtomicBool,
    writer: Mutex<Option<JoinHandle<()>>>,
    queue_len_max: usize,
    durability: Durability,
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
    shared: Arc<Shared>,
}

/// Entry point: open (recover) and start the writer.
pub struct Engine;

impl Engine {
    /// Open the data directory (taking its lock), recover, and start the writer.
    pub fn open(config: EngineConfig) -> Result<(EngineHandle, RecoveryReport), Error> {
        if config.durability == Durability::None {
            return Engine::start::<MmapStorage>(None, config);
        }
        let storage = MmapStorage::open(&config.data_dir)?;
        Engine::open_with_storage(storage, config)
    }

    /// Open over any storage (tests use the simulated disk).
    pub fn open_with_storage<S: Storage>(
        storage: S,
        config: EngineConfig,
    ) -> Result<(EngineHandle, RecoveryReport), Error> {
        Engine::start(Some(storage), config)
    }

    fn start<S: Storage>(
        storage: Option<S>,
        config: EngineConfig,
    ) -> Result<(EngineHandle, RecoveryReport), Error> {
        assert!(config.queue_len_max > 0 && config.batch_len_max > 0);
        let record_room = config.wal.record_payload_max_bytes();
        if config.durability != Durability::None
            && record_room < crate::limits::RECORD_ENCODED_BYTES_MAX
        {
            return Err(Error::Wal(surge_wal::Error::InvalidConfig(format!(
                "segments of {} bytes hold records of at most {record_room} bytes; the \
                 largest valid command needs {}",
                config.wal.segment_bytes,
                crate::limits::RECORD_ENCODED_BYTES_MAX
            ))));
        }
        check_memory_fits(&config)?;
        let started = Instant::now();
        let events = EventLog::new(config.events_kept);
        let (recovered, wal) = match storage {
            Some(storage) if config.durability != Durability::None => {
                let (wal, recovery) = Wal::open(storage, config.wal.clone())?;
                (recover(&wal, recovery, &events)?, Some(wal))
            }
            _ => (
                Recovered {
                    state: State::new(),
                    report_wal: None,
                    snapshot_lsn: 0,
                    replayed: 0,
                    events_restored: 0,
                },
                None,
            ),
        };
        let Recovered {
            state,
            report_wal,
            snapshot_lsn,
            replayed,
            events_restored,
        } = recovered;
        events.set_sku_names(
            (0..state.sku_count()).map(|i| Arc::from(state.sku_name(SkuIdx(i as u32)))),
        );
        let report = RecoveryReport {
            wal: report_wal,
            snapshot_lsn,
            records_replayed: replayed,
            events_restored,
            duration: started.elapsed(),
            next_lsn: state.next_seq(),
        };
        let state_sku_count = state.sku_count();
        let policy_change = config
            .idempotency
            .filter(|wanted| *wanted != state.idempotency_policy());
        let order_policy_change = config
            .order_policy
            .filter(|wanted| !state.runs_order_policy(*wanted));
        let (tx, rx) = crossbeam_channel::bounded(config.queue_len_max);
        let with_follower =
            config.follower && config.durability.waits_for_commit() && wal.is_some();
        let (follower_tx, follower_rx) = if with_follower {
            let (ftx, frx) = crossbeam_channel::unbounded();
            (Some(ftx), Some(frx))
        } else {
            (None, None)
        };
        let inner = Arc::new(Inner {
            events,
            stats: RuntimeStats::default(),
            writes_refused: Mutex::new(None),
            writes_refused_flag: AtomicBool::new(false),
            snapshot_wanted: AtomicBool::new(false),
            follower_reads: std::sync::atomic::AtomicUsize::new(0),
            board: StockBoard::default(),
            follower_encoding: AtomicBool::new(false),
            role: std::sync::atomic::AtomicU8::new(config.role.as_u8()),
            replication_down: Mutex::new(None),
            replication_down_flag: AtomicBool::new(false),
            publish_stopping: AtomicBool::new(false),
            durability: config.durability,
        });
        if config.durability == Durability::Replicated {
            // No write is acknowledged before a publisher is attached.
            inner.set_replication_down(Some("no replicated log attached yet".into()));
        }
        let shared = Arc::new(Shared {
            tx,
            follower_tx: follower_tx.clone(),
            inner: Arc::clone(&inner),
            shutting_down: AtomicBool::new(false),
            writer: Mutex::new(None),
            queue_len_max: config.queue_len_max,
            durability: config.durability,
        });
        inner
            .stats
            .snapshot_lsn
            .store(snapshot_lsn, Ordering::Relaxed);
        inner
            .stats
            .durable_lsn
            .store(state.next_seq().saturating_sub(1), Ordering::Relaxed);
        let (to_syncer, from_syncer, syncer_thread) = if config.pipelined_commit && wal.is_some() {
            let (flush_tx, flush_rx) = crossbeam_channel::unbounded();
            let (done_tx, done_rx) = crossbeam_channel::unbounded();
            let stage = SyncStage {
                shared: Arc::clone(&inner),
                failed: None,
                to_follower: follower_tx.clone(),
            };
            let thread = spawn_owner("surge-sync", move || stage.run(flush_rx, done_tx))
                .map_err(|e| Error::Recovery(format!("cannot start the sync thread: {e}")))?;
            (Some(flush_tx), Some(done_rx), Some(thread))
        } else {
            (None, None, None)
        };
        let mut writer = Writer {
            to_syncer,
            from_syncer,
            syncer_thread,
            syncer_inline: SyncStage {
                shared: Arc::clone(&inner),
                failed: None,
                to_follower: follower_tx.clone(),
            },
            batch_records: Vec::new(),
            follower: None,
            install_waiting: None,
            state,
            wal,
            rx,
            sku_names_published: state_sku_count,
            shared: inner,
            config,
            now_ms: 0,
            records_since_snapshot: replayed,
            record_buf: Vec::with_capacity(256),
            events_buf: Vec::new(),
            appended: false,
            snapshot_job: None,
            snapshot_waiting: Vec::new(),
            publish_tx: None,
            publish_thread: None,
            log_reads: Vec::new(),
            opening: true,
        };
        writer.now_ms = writer.state.now_ms();
        if let Some(wal) = writer.wal.as_mut()
            && config_replicates_as_leader(&writer.config)
        {
            // Until the publish stage says how far the replicated log goes, keep
            // every segment: none may be pruned before it is published.
            wal.retain_after(0);
        }
        let standby = writer.config.role != Role::Leader;
        if let Some(policy) = policy_change.filter(|_| !standby) {
            // Logged before the writer takes any other command, on this thread: no
            // reply to wait for, so `open` may run inside an async runtime.
            let command = Command::SetIdempotencyPolicy {
                window_ms: policy.window_ms,
                budget_bytes: policy.budget_bytes,
            };
            if let Err(rejection) = writer.apply_at_start(command)? {
                // Named by the fields of `IdempotencyPolicy`, for the operator.
                let what = match rejection {
                    Rejection::Validation {
                        field: Field::WindowMs,
                        violation,
                    } => format!("window_ms: {violation:?}"),
                    Rejection::Validation {
                        field: Field::BudgetBytes,
                        violation,
                    } => format!("budget_bytes: {violation:?}"),
                    other => format!("{other:?}"),
                };
                return Err(Error::InvalidConfig(format!("idempotency policy {what}")));
            }
        }
        if let Some(policy) = order_policy_change.filter(|_| !standby) {
            let command = Command::SetOrderPolicy {
                ship_sla_ms: policy.ship_sla_ms,
                review_amount_min: policy.review_amount_min,
            };
            if let Err(rejection) = writer.apply_at_start(command)? {
                return Err(Error::InvalidConfig(format!("order policy {rejection:?}")));
            }
        }
        if let (Some(ftx), Some(frx)) = (follower_tx, follower_rx) {
            // The follower starts from the writer's state as recovered (and after the
            // policy record above): both then apply the same durable records.
            let mut state = writer.state.clone();
            state.track_touched_skus();
            writer
                .shared
                .board
                .publish(state.all_sku_views(), state.next_seq().saturating_sub(1));
            let follower = Follower {
                state,
                rx: frx,
                to_writer: shared.tx.clone(),
                shared: Arc::clone(&writer.shared),
                waiting: std::collections::VecDeque::new(),
                events_scratch: Vec::new(),
                last_record_lsn: writer.wal.as_ref().map_or(0, Wal::last_lsn),
                records_since_snapshot: 0,
                snapshot_every_records: writer.config.snapshot_every_records,
            };
            let thread = spawn_owner("surge-follower", move || follower.run())
                .map_err(|e| Error::Recovery(format!("cannot start the follower: {e}")))?;
            writer.follower = Some((ftx, thread));
        }
        writer.opening = false;
        let thread = spawn_owner("surge-writer", move || writer.run())
            .map_err(|e| Error::Recovery(format!("cannot start the writer thread: {e}")))?;
        *shared.writer.lock() = Some(thread);
        Ok((EngineHandle { shared }, report))
    }
}

/// A leader that will publish its log holds its segments back from pruning.
fn config_replicates_as_leader(config: &EngineConfig) -> bool {
    config.replicate && config.role == Role::Leader
}

struct Recovered {
    state: State,
    report_wal: Option<surge_wal::RecoveryReport>,
    snapshot_lsn: u64,
    replayed: u64,
    events_restored: usize,
}

fn recover<S: Storage>(
    wal: &Wal<S>,
    recovery: surge_wal::Recovery,
    events: &EventLog,
) -> Result<Recovered, Error> {
    let (mut state, snapshot_lsn, events_restored) = match &recovery.snapshot {
        Some((lsn, bytes)) => {
            let snap = codec::decode_engine_snapshot(bytes)
                .map_err(|e| Error::Recovery(format!("snapshot at LSN {lsn}: {e}")))?;
            let state = State::decode_snapshot(&snap.state)
                .map_err(|e| Error::Recovery(format!("snapshot at LSN {lsn}: {e}")))?;
            assert!(
                state.next_seq() > *lsn || *lsn == 0,
                "snapshot LSN {lsn} beyond its state"
            );
            let restored = snap.events.len();
            events.restore(snap.events, snap.events_dropped_through);
            (state, *lsn, restored)
        }
        None => (State::new(), 0, 0),
    };
    let mut replay_events = Vec::new();
    let replayed = wal.replay(snapshot_lsn, |lsn, payload| {
        let record = codec::decode_record(payload).map_err(|e| format!("record {lsn}: {e}"))?;
        replay_events.clear();
        let applied = state.apply(
            &record.command,
            record.key.as_ref(),
            record.now_ms,
            &mut replay_events,
        );
        // Pair assertion: replay must log exactly what was logged.
        if applied.lsn != Some(lsn) {
            return Err(format!(
                "record {lsn} ({}) replayed as {:?}",
                record.command.name(),
                applied.lsn
            ));
        }
        events.publish(&replay_events);
        Ok(())
    })?;
    state.check_invariants();
    Ok(Recovered {
        state,
        report_wal: Some(recovery.report),
        snapshot_lsn,
        replayed,
        events_restored,
    })
}

/// The most memory this configuration may need at the state's limits: the state
/// and its idempotency budget, twice with a follower, plus one encoded snapshot in
/// flight (bounded by the in-memory size).
pub fn memory_worst_case_bytes(config: &EngineConfig) -> u64 {
    let budget = config
        .idempotency
        .map_or(crate::limits::IDEMPOTENCY_BUDGET_BYTES_DEFAULT, |p| {
            p.budget_bytes
        });
    let copy = crate::limits::STATE_BYTES_WORST_CASE + budget;
    let copies = if config.follower && config.durability.waits_for_commit() {
        2
    } else {
        1
    };
    copy * copies + copy
}

/// Start-up refuses a configuration whose worst case cannot fit this machine's
/// memory (`MemTotal`), keeping a tenth for the rest of the process and the OS.
fn check_memory_fits(config: &EngineConfig) -> Result<(), Error> {
    let Some(total) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
    else {
        return Ok(()); // not Linux, or no /proc: nothing to check against
    };
    let needed = memory_worst_case_bytes(config);
    if needed > total / 10 * 9 {
        return Err(Error::InvalidConfig(format!(
            "at its limits the state needs up to {} MiB (state and idempotency budget{}, \
             and a snapshot in flight), more than 90 % of this machine's {} MiB: lower \
             the idempotency budget{}",
            needed >> 20,
            if config.follower {
                ", twice for the follower"
            } else {
                ""
            },
            total >> 20,
            if config.follower {
                " or run without the follower"
            } else {
                ""
            },
        )));
    }
    Ok(())
}

/// Start a thread that owns engine state (the writer, a snapshot being written).
///
/// Panic policy: a panic on such a thread ends the process. A writer that died alone
/// would leave a zombie (reads and `/readyz` fine, every write refused forever); the
/// state it owned may be half-changed, so nothing may go on using it. Aborting is
/// safe because nothing is acknowledged before it is durable: a restart recovers
/// exactly the acknowledged state from the log.
fn spawn_owner<F>(name: &str, body: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let thread_name = name.to_string();
    std::thread::Builder::new()
        .name(thread_name.clone())
        .spawn(move || {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).is_err() {
                // The panic hook has printed the panic message and location above.
                eprintln!(
                    "surge: fatal: thread {thread_name:?} panicked while owning engine state; \
                 aborting the process (a restart recovers every acknowledged write from the log)"
                );
                std::process::abort();
            }
        })
}

fn wall_clock_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// An answer that waits for its batch to be durable.
enum Pending {
    One {
        reply: ReplySender<Acked>,
        outcome: Acked,
    },
    Batch {
        reply: ReplySender<Vec<Result<Acked, Error>>>,
        outcomes: Vec<Result<Acked, Error>>,
    },
    /// A standby's records from its leader, applied through `lsn`.
    Replicated { reply: ReplySender<u64>, lsn: u64 },
}

impl Pending {
    /// Send the answer: the outcomes once durable, `Err(refused)` for each when
    /// the batch could not be made durable (or published).
    fn answer(self, refused: Option<&Error>) {
        match (self, refused) {
            (Pending::One { reply, outcome }, None) => {
                let _ = reply.send(Ok(outcome));
            }
            (Pending::One { reply, .. }, Some(error)) => {
                let _ = reply.send(Err(error.duplicate()));
            }
            (Pending::Batch { reply, outcomes }, None) => {
                let _ = reply.send(Ok(outcomes));
            }
            (Pending::Batch { reply, outcomes }, Some(error)) => {
                let _ = reply.send(Ok(outcomes
                    .iter()
                    .map(|_| Err(error.duplicate()))
                    .collect()));
            }
            (Pending::Replicated { reply, lsn }, None) => {
                let _ = reply.send(Ok(lsn));
            }
            (Pending::Replicated { reply, .. }, Some(error)) => {
                let _ = reply.send(Err(error.duplicate()));
            }
        }
    }
}

struct Writer<S: Storage> {
    state: State,
    wal: Option<Wal<S>>,
    rx: Receiver<Request>,
    sku_names_published: usize,
    shared: Arc<Inner>,
    config: EngineConfig,
    now_ms: Millis,
    records_since_snapshot: u64,
    record_buf: Vec<u8>,
    events_buf: Vec<Event>,
    /// A record was logged in the current batch: it needs a flush.
    appended: bool,
    snapshot_job: Option<SnapshotInFlight>,
    /// Snapshot requests waiting for the snapshot in flight (or the next one).
    snapshot_waiting: Vec<ReplySender<u64>>,
    /// The pipelined commit: flushes go to the sync thread, results come back.
    to_syncer: Option<Sender<Flush>>,
    from_syncer: Option<Receiver<Result<u64, surge_wal::Error>>>,
    syncer_thread: Option<JoinHandle<()>>,
    /// Runs flushes on the writer itself when the commit is not pipelined (the
    /// deterministic configuration of the seeded tests), or when the sync thread
    /// is gone.
    syncer_inline: SyncStage,
    /// This batch's logged records, kept for the follower (only when there is one).
    batch_records: Vec<(u64, Vec<u8>)>,
    /// The follower thread and its channel (sync mode).
    follower: Option<(Sender<FollowerMsg>, JoinHandle<()>)>,
    /// A snapshot the follower encoded, waiting for its LSN to be known durable here.
    install_waiting: Option<(u64, Vec<u8>)>,
    /// The publish stage, once a publisher is attached.
    publish_tx: Option<Sender<PublishMsg>>,
    publish_thread: Option<JoinHandle<()>>,
    /// Reads of the log for the publish stage, answered once this iteration's
    /// frames are written out (so the reads never copy a staged segment).
    log_reads: Vec<LogRead>,
    /// `open` is logging the configured policies, before any request is taken.
    opening: bool,
}

impl<S: Storage> Writer<S> {
    fn run(mut self) {
        let mut batch: Vec<Request> = Vec::with_capacity(self.config.batch_len_max);
        let mut pending: Vec<Pending> = Vec::with_capacity(self.config.batch_len_max);
        let mut last_flush = Instant::now();
        let mut dirty = false; // async mode: applied but not yet flushed
        let tick = Duration::from_millis(self.config.expire_interval_ms.max(1));
        let flush_every = Duration::from_millis(self.config.async_flush_interval_ms.max(1));
        let mut shutdown = false;
        while !shutdown {
            let timeout = if dirty {
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
            while batch.len() < self.config.batch_len_max {
                match self.rx.try_recv() {
                    Ok(request) => batch.push(request),
                    Err(_) => break,
                }
            }
            self.collect_commits(false);
            self.now_ms = self.now_ms.max(self.config.clock.now_ms());
            let mut snapshot_replies = Vec::new();
            let mut reads = Vec::new();
            if self.shared.role() == Role::Leader {
                // A standby's expiries come from its leader's log.
                self.expire_due(&mut pending);
            }
            for request in batch.drain(..) {
                shutdown |= self.take(request, &mut pending, &mut reads, &mut snapshot_replies);
            }
            if shutdown {
                // Drain whatever is still queued: accepted commands are finished.
                while let Ok(request) = self.rx.try_recv() {
                    self.take(request, &mut pending, &mut reads, &mut snapshot_replies);
                }
            }
            let logged = std::mem::take(&mut self.appended);
            let durability = self.config.durability;
            match durability {
                Durability::Sync | Durability::Replicated => {
                    self.hand_over(logged, &mut pending, reads)
                }
                Durability::Async => {
                    // Reply now (reads see the applied state); the flush follows
                    // within the interval.
                    dirty |= logged;
                    self.reply_now(&mut pending, reads);
                    if dirty && (last_flush.elapsed() >= flush_every || shutdown) {
                        self.hand_over(true, &mut pending, Vec::new());
                        dirty = false;
                        last_flush = Instant::now();
                    }
                }
                Durability::None => {
                    self.shared.events.publish(&self.events_buf);
                    self.events_buf.clear();
                    self.reply_now(&mut pending, reads);
                }
            }
            let due = self.records_since_snapshot > 0
                && ((self.config.snapshot_every_records > 0
                    && self.records_since_snapshot >= self.config.snapshot_every_records)
                    || (self.config.snapshot_every_segments > 0
                        && self.wal.as_ref().is_some_and(|w| {
                            w.stats().segments >= self.config.snapshot_every_segments
                        })));
            self.snapshot_waiting.extend(snapshot_replies);
            self.poll_snapshot(shutdown);
            if shutdown {
                // The last snapshot is written in the foreground: the process is
                // about to exit.
                if self.config.snapshot_on_shutdown {
                    self.start_snapshot(false);
                }
                self.answer_snapshot_waiters(self.snapshot_current());
            } else if self.follower.is_some() {
                if due && self.install_waiting.is_none() && self.snapshot_job.is_none() {
                    self.shared.snapshot_wanted.store(true, Ordering::Release);
                }
                if !self.snapshot_waiting.is_empty() && self.snapshot_job.is_none() {
                    self.start_snapshot(self.config.snapshot_in_background);
                } else if self.snapshot_job.is_none() {
                    self.install_follower_snapshot();
                }
            } else if (due || !self.snapshot_waiting.is_empty()) && self.snapshot_job.is_none() {
                self.start_snapshot(self.config.snapshot_in_background);
            }
            self.answer_log_reads();
            self.shared
                .stats
                .writer_iteration
                .record(iteration.elapsed());
        }
        if self.durable_pending() {
            let _ = self.drain_commits();
        }
        // Dropping the sender ends the sync thread once it has answered everything.
        self.to_syncer = None;
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
        if let Some((tx, thread)) = self.follower.take() {
            let _ = tx.send(FollowerMsg::Stop);
            drop(tx);
            let _ = thread.join();
        }
    }

    /// Take one request of this iteration; `true`: shut down after it.
    fn take(
        &mut self,
        request: Request,
        pending: &mut Vec<Pending>,
        reads: &mut Vec<ReadAnswer>,
        snapshot_replies: &mut Vec<ReplySender<u64>>,
    ) -> bool {
        match request {
            Request::Command {
                command,
                key,
                reply,
            } => self.apply(command, key, reply, pending),
            Request::Batch { commands, reply } => self.apply_batch(commands, reply, pending),
            Request::Query { query, reply } => reads.push((reply, self.state.query(&query))),
            Request::Snapshot { reply } => snapshot_replies.push(reply),
            Request::InstallSnapshot { lsn, body } => {
                self.records_since_snapshot = 0;
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
        to_writer: Sender<Request>,
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
        let (tx, rx) = crossbeam_channel::unbounded();
        let to_follower = match self.config.durability {
            Durability::Replicated => self.follower.as_ref().map(|(tx, _)| tx.clone()),
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
            rx,
            deferred: std::collections::VecDeque::new(),
        };
        let thread = spawn_owner("surge-publish", move || stage.run())
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
            if let Some(wal) = self.wal.as_mut()
                && let Err(e) = wal.reserve(lsn, bytes.len())
            {
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
            // Pair assertion with the leader: the same record lands on the same LSN.
            assert_eq!(
                applied.lsn,
                Some(lsn),
                "standby diverged from its leader at record {lsn} ({})",
                record.command.name()
            );
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
            self.shared.snapshot_wanted.store(false, Ordering::Release);
            return;
        }
        match wal.begin_snapshot(lsn, body) {
            Ok(Some(job)) => {
                self.records_since_snapshot = 0;
                self.shared.snapshot_wanted.store(false, Ordering::Release);
                self.run_snapshot_job(lsn, job, self.config.snapshot_in_background);
            }
            Ok(None) => self.shared.snapshot_wanted.store(false, Ordering::Release),
            Err(e) => {
                if wal.is_poisoned() {
                    self.fail_stop(format!("snapshot failed: {e}"));
                }
            }
        }
    }

    /// Sync mode: hand the batch to durability. Replies (and reads, which may have
    /// seen this batch's writes) go out once everything before them is durable.
    fn hand_over(&mut self, logged: bool, pending: &mut Vec<Pending>, reads: Vec<ReadAnswer>) {
        let job = if logged {
            match self.wal.as_mut().map(Wal::begin_commit) {
                Some(Ok(job)) => job,
                Some(Err(e)) => {
                    self.fail_stop(format!("flush failed: {e}"));
                    None
                }
                None => None,
            }
        } else {
            None
        };
        if self.refusal().is_some() && job.is_none() && logged {
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
            // Nothing new and nothing in flight: everything seen is durable.
            self.reply_now(pending, reads);
            return;
        }
        if job.is_none() && pending.is_empty() && reads.is_empty() {
            return;
        }
        let flush = Flush {
            job,
            release: Release {
                records: std::mem::take(&mut self.batch_records),
                events: std::mem::take(&mut self.events_buf),
                replies: std::mem::take(pending),
                reads,
            },
            publish: self
                .publish_tx
                .as_ref()
                .map(|tx| (tx.clone(), self.config.durability == Durability::Replicated)),
        };
        match self.to_syncer.as_ref() {
            Some(tx) => {
                // The sync thread owns the flush now; it outlives the writer's loop.
                if let Err(crossbeam_channel::SendError(flush)) = tx.send(flush) {
                    self.syncer_inline.process(vec![flush]);
                }
            }
            None => {
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
            .is_some_and(|w| w.durable_lsn() < w.last_lsn())
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

    /// Make everything appended durable and wait for it (snapshots, shutdown).
    fn drain_commits(&mut self) -> Result<(), String> {
        self.hand_over(true, &mut Vec::new(), Vec::new());
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
    fn apply_at_start(&mut self, command: Command) -> Result<Outcome, Error> {
        self.now_ms = self.now_ms.max(self.config.clock.now_ms());
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        let mut pending = Vec::new();
        self.apply(command, None, reply, &mut pending);
        let logged = std::mem::take(&mut self.appended);
        if self.wal.is_none() {
            self.shared.events.publish(&self.events_buf);
            self.events_buf.clear();
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
        match self.apply_command(command, key) {
            Ok(outcome) => pending.push(Pending::One { reply, outcome }),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Apply the commands of one batch request in order; the answers wait together.
    fn apply_batch(
        &mut self,
        commands: Vec<Command>,
        reply: ReplySender<Vec<Result<Acked, Error>>>,
        pending: &mut Vec<Pending>,
    ) {
        let outcomes = commands
            .into_iter()
            .map(|command| self.apply_command(command, None))
            .collect();
        pending.push(Pending::Batch { reply, outcomes });
    }

    /// Apply one command: its outcome (to be answered once durable), or an error
    /// to answer now (writes refused, disk full).
    fn apply_command(
        &mut self,
        command: Command,
        key: Option<IdempotencyKey>,
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
        if let Some(wal) = self.wal.as_mut() {
            codec::encode_record(&record, &mut self.record_buf);
            if let Err(e) = wal.reserve(self.state.next_seq(), self.record_buf.len()) {
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
        let applied = self.state.apply(
            &record.command,
            record.key.as_ref(),
            self.now_ms,
            &mut self.events_buf,
        );
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
        let bytes = codec::encode_engine_snapshot(&self.state, &self.shared.events);
        let job = match wal.begin_snapshot(lsn, bytes) {
            Ok(Some(job)) => job,
            Ok(None) => {
                self.answer_snapshot_waiters(Ok(lsn));
                return;
            }
            Err(e) => {
                self.answer_snapshot_waiters(Err(e.to_string()));
                return;
            }
        };
        self.records_since_snapshot = 0;
        self.run_snapshot_job(lsn, job, background);
    }

    /// Write a snapshot file (on its own thread when `background`); the writer
    /// publishes it in `poll_snapshot` once it is on disk.
    fn run_snapshot_job(&mut self, lsn: u64, job: surge_wal::SnapshotJob, background: bool) {
        let (done_tx, done_rx) = crossbeam_channel::bounded(1);
        if background {
            let spawned = spawn_owner("surge-snapshot", move || {
                let _ = done_tx.send(job.run());
            });
            if let Err(e) = spawned {
                self.answer_snapshot_waiters(Err(format!("cannot start the snapshot thread: {e}")));
                return;
            }
        } else {
            let _ = done_tx.send(job.run());
        }
        self.snapshot_job = Some(SnapshotInFlight { lsn, done: done_rx });
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
        let lsn = job.lsn;
        self.snapshot_job = None;
        let wal = self.wal.as_mut().expect("a snapshot job implies a log");
        if self.publish_tx.is_some() {
            // Pruning keeps what the replicated log does not hold yet.
            wal.retain_after(self.shared.stats.published_lsn.load(Ordering::Acquire));
        }
        let result = wal
            .finish_snapshot(written)
            .map(|()| lsn)
            .map_err(|e| e.to_string());
        match &result {
            Ok(_) => {
                let stats = &self.shared.stats;
                stats.snapshot_lsn.store(lsn, Ordering::Relaxed);
                stats.snapshot_at_ms.store(self.now_ms, Ordering::Relaxed);
                stats.snapshots.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) if wal.is_poisoned() => self.fail_stop(format!("snapshot failed: {e}")),
            Err(_) => {}
        }
        self.answer_snapshot_waiters(result);
    }

    /// What a snapshot request answers when no new snapshot is needed.
    fn snapshot_current(&self) -> Result<u64, String> {
        match self.wal.as_ref() {
            Some(wal) => Ok(wal.snapshot_lsn()),
            None => Ok(self.state.next_seq() - 1),
        }
    }

    fn answer_snapshot_waiters(&mut self, result: Result<u64, String>) {
        for reply in self.snapshot_waiting.drain(..) {
            let _ = reply.send(result.clone().map_err(Error::StorageUnavailable));
        }
    }
}

/// What the follower receives: durable records (from the sync stage, in log
/// order) and reads (from handles).
enum FollowerMsg {
    Records(Vec<(u64, Vec<u8>)>),
    Read {
        query: Query,
        /// The durable LSN when the read arrived: it is answered once applied.
        read_index: u64,
        reply: ReplySender<Result<QueryReply, Rejection>>,
    },
    Stop,
}

/// A read waiting at the follower for its read index to be applied.
type WaitingRead = (u64, Query, ReplySender<Result<QueryReply, Rejection>>);

/// A second copy of the state that applies each batch once it is durable. It
/// serves reads (so they never queue behind the writer) and encodes periodic
/// snapshots (so the writer never does). It sees only durable records: a batch
/// whose sync failed never reaches it.
struct Follower {
    state: State,
    rx: Receiver<FollowerMsg>,
    to_writer: Sender<Request>,
    shared: Arc<Inner>,
    /// Reads waiting for their read index, in arrival order.
    waiting: std::collections::VecDeque<WaitingRead>,
    events_scratch: Vec<Event>,
    last_record_lsn: u64,
    records_since_snapshot: u64,
    snapshot_every_records: u64,
}

impl Follower {
    fn run(mut self) {
        while let Ok(msg) = self.rx.recv() {
            match msg {
                FollowerMsg::Records(records) => {
                    for (lsn, bytes) in records {
                        self.apply(lsn, &bytes);
                    }
                    self.shared
                        .board
                        .publish(self.state.take_touched_sku_views(), self.applied());
                    self.answer_ready();
                    self.maybe_snapshot();
                }
                FollowerMsg::Read {
                    query,
                    read_index,
                    reply,
                } => {
                    if read_index <= self.applied() {
                        self.answer(&query, reply);
                    } else {
                        self.waiting.push_back((read_index, query, reply));
                    }
                }
                FollowerMsg::Stop => break,
            }
        }
        // Reads still waiting (or queued) are dropped: their tickets say ShuttingDown.
        self.waiting.clear();
        while self.rx.try_recv().is_ok() {}
    }

    fn apply(&mut self, lsn: u64, bytes: &[u8]) {
        let record = codec::decode_record(bytes)
            .unwrap_or_else(|e| panic!("follower: record {lsn} does not decode: {e}"));
        self.events_scratch.clear();
        let applied = self.state.apply(
            &record.command,
            record.key.as_ref(),
            record.now_ms,
            &mut self.events_scratch,
        );
        // Pair assertion with the writer: the same record lands on the same LSN.
        assert_eq!(
            applied.lsn,
            Some(lsn),
            "follower diverged from the writer at record {lsn} ({})",
            record.command.name()
        );
        self.last_record_lsn = lsn;
        self.records_since_snapshot += 1;
    }

    /// How far this copy has applied, in the measure of the durable LSN a read
    /// notes: a record's LSN is at most `next_seq - 1` once it is applied, and the
    /// next record's LSN is `next_seq`.
    fn applied(&self) -> u64 {
        self.state.next_seq().saturating_sub(1)
    }

    fn answer(&self, query: &Query, reply: ReplySender<Result<QueryReply, Rejection>>) {
        self.shared.follower_reads.fetch_sub(1, Ordering::AcqRel);
        let _ = reply.send(Ok(self.state.query(query)));
    }

    fn answer_ready(&mut self) {
        while self
            .waiting
            .front()
            .is_some_and(|(index, _, _)| *index <= self.applied())
        {
            let (_, query, reply) = self.waiting.pop_front().expect("checked");
            self.answer(&query, reply);
        }
    }

    /// Encode a snapshot here when enough records were applied (or the writer asks,
    /// because segments piled up), and hand it to the writer to write and publish.
    fn maybe_snapshot(&mut self) {
        let wanted = self.shared.snapshot_wanted.load(Ordering::Acquire);
        let due = self.snapshot_every_records > 0
            && self.records_since_snapshot >= self.snapshot_every_records;
        if !(due || wanted) || self.records_since_snapshot == 0 {
            return;
        }
        // Answer the reads that are ready first: encoding pauses this thread, and
        // reads that arrive meanwhile take the writer's queue.
        self.answer_ready();
        self.shared.follower_encoding.store(true, Ordering::Release);
        let body = codec::encode_engine_snapshot(&self.state, &self.shared.events);
        self.shared
            .follower_encoding
            .store(false, Ordering::Release);
        let request = Request::InstallSnapshot {
            lsn: self.last_record_lsn,
            body,
        };
        if self.to_writer.try_send(request).is_ok() {
            self.records_since_snapshot = 0;
            self.shared.snapshot_wanted.store(false, Ordering::Release);
        }
    }
}

/// A snapshot whose file is being written on its own thread.
struct SnapshotInFlight {
    lsn: u64,
    done: crossbeam_channel::Receiver<Result<surge_wal::WrittenSnapshot, surge_wal::Error>>,
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
        self.send(Request::Command {
            command,
            key,
            reply,
        })?;
        Ok(Ticket(rx))
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
        Ok(Ticket(rx))
    }

    /// Submit the commands of one batch request as one queue entry: the writer
    /// applies them in order in one iteration, and they are answered together
    /// once durable (each its own outcome, or its own error).
    pub fn submit_batch(
        &self,
        commands: Vec<Command>,
    ) -> Result<Ticket<Vec<Result<Acked, Error>>>, Error> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Request::Batch { commands, reply })?;
        Ok(Ticket(rx))
    }

    /// A SKU's stock read on the caller's thread, linearizable like [`Self::query`]
    /// (the board answers only once it has applied the durable LSN noted now).
    /// `None`: the board cannot answer (no follower in this durability mode, or
    /// it is behind): use [`Self::query`].
    pub fn read_sku(&self, sku: &str) -> Option<Result<SkuView, Rejection>> {
        self.shared.follower_tx.as_ref()?;
        let inner = &self.shared.inner;
        let read_index = inner.read_index();
        match inner.board.read(sku, read_index) {
            BoardRead::Sku(view) => Some(Ok(view)),
            BoardRead::Unknown => Some(Err(Rejection::UnknownSku {
                sku: sku.to_string(),
            })),
            BoardRead::Behind => {
                inner.stats.board_behind.fetch_add(1, Ordering::Relaxed);
                None
            }
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
        Ok(Ticket(rx))
    }

    /// A standby applies its leader's records (LSN and the record as logged, in
    /// log order); answers the last LSN applied, once durable here.
    pub fn replicate(&self, records: Vec<(u64, Vec<u8>)>) -> Result<Ticket<u64>, Error> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Request::Replicate { records, reply })?;
        Ok(Ticket(rx))
    }

    /// This node's place in replication now.
    pub fn role(&self) -> Role {
        self.shared.inner.role()
    }

    /// Why the replicated log is unavailable now, if it is.
    pub fn replication_down(&self) -> Option<String> {
        self.shared.inner.replication_down.lock().clone()
    }

    /// Take a snapshot now; answers its LSN.
    pub fn snapshot(&self) -> Result<Ticket<u64>, Error> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.send(Request::Snapshot { reply })?;
        Ok(Ticket(rx))
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

    /// Drain the queue, flush, snapshot and stop the writer. Later submissions get
    /// [`Error::ShuttingDown`]. Safe to call more than once.
    pub fn shutdown(&self) {
        self.shared.shutdown();
    }

    /// A stable fingerprint of a request for idempotency keys.
    pub fn fingerprint(parts: &[&[u8]]) -> u64 {
        let mut joined = Vec::new();
        for part in parts {
            joined.extend_from_slice(&(part.len() as u64).to_le_bytes());
            joined.extend_from_slice(part);
        }
        fnv1a64(&joined)
    }
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
