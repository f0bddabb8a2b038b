//! The runtime: a bounded queue into one writer thread that owns the [`State`](crate::State).
//!
//! ```text
//! submit(cmd) --> bounded queue --> writer: drain up to batch_len_max commands
//!                                     apply each (pure) -> encode -> WAL append
//!                                     one commit (msync) for the batch
//!                                     publish events, send every reply
//! ```
//!
//! A reply is sent only after the batch holding its record is durable (`sync`), or
//! after apply (`async`: a flush follows within `async_flush_interval_ms`), or at
//! once (`none`: no log at all). Time is an input: the writer stamps each batch with
//! the wall clock, never earlier than the previous stamp, and logs the stamp.
//!
//! The modules, in the order a command meets them:
//!
//! - `config`: [`Durability`], [`EngineConfig`], [`Clock`], the memory check.
//! - `recovery`: [`Engine::open`]: recover from snapshot and log, start the threads.
//! - `handle`: [`EngineHandle`] and [`Ticket`], the callers' side of the queue.
//! - `writer`: the writer: one `step` (apply, WAL append, expiry, snapshots) and
//!   the thread that batches requests into steps.
//! - `driven`: [`Core`], the same writer stepped on the caller's thread with the
//!   time as an argument (deterministic: the power-loss suite drives it).
//! - `sync_stage`: the pipelined group commit and what a durable batch releases.
//! - `replication`: the publish stage, [`LogPublisher`] and [`Role`].
//! - `follower`: the durable copy of the state that serves reads and snapshots.
//! - `stats`: [`RuntimeStats`] and [`LatencyHistogram`].
//!
//! This root holds what they share: the queue's `Request`s, the `Inner` state the
//! threads share with the handles, the runtime [`Error`], and `spawn_owner` (the
//! panic policy of the threads that own engine state).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::Rejection;
use crate::board::StockBoard;
use crate::command::{Acked, Command, IdempotencyKey, Query};
use crate::feed::EventLog;
use crate::query::QueryReply;

mod config;
mod driven;
mod follower;
mod handle;
mod queue;
mod recovery;
mod replication;
mod stats;
mod sync_stage;
mod writer;

pub use config::{BATCH_LEN_MAX_DEFAULT, Clock, Durability, EngineConfig, meminfo_bytes};
pub use driven::Core;
pub use handle::{EngineHandle, Ticket};
pub use recovery::{Engine, RecoveryReport};
pub use replication::{LogPublisher, PublishError, Role};
pub use stats::{LatencyHistogram, RuntimeStats};

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
    /// Its text includes the WAL error's, which is therefore not also its
    /// `source` (a report of the chain said everything twice).
    #[error("write-ahead log: {0}")]
    Wal(surge_wal::Error),
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

impl From<surge_wal::Error> for Error {
    fn from(e: surge_wal::Error) -> Error {
        Error::Wal(e)
    }
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

type ReplySender<T> = tokio::sync::oneshot::Sender<Result<T, Error>>;

/// Who decided a queued write's fate first: the writer, taking it (it is then
/// carried out, applied or refused by the rules, and answered), or its caller,
/// giving it up (it is then never applied).
/// One atomic decides, so a caller who gives up learns which it was: a request
/// that timed out can say whether it changed anything.
#[derive(Clone, Debug)]
pub struct Claim(Arc<AtomicU8>);

impl Claim {
    const QUEUED: u8 = 0;
    const TAKEN: u8 = 1;
    const ABANDONED: u8 = 2;

    fn new() -> Claim {
        Claim(Arc::new(AtomicU8::new(Claim::QUEUED)))
    }

    /// The writer's side: `true` if it may apply the write (its caller had not
    /// given it up), and from now on the caller cannot.
    fn take(&self) -> bool {
        self.0
            .compare_exchange(
                Claim::QUEUED,
                Claim::TAKEN,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// The caller's side: `true` if the write will never be applied (given up
    /// before the writer took it, now or before); `false` if the writer has
    /// taken it: it is applied and answered, whoever still waits.
    pub fn abandon(&self) -> bool {
        match self.0.compare_exchange(
            Claim::QUEUED,
            Claim::ABANDONED,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(decided) => decided == Claim::ABANDONED,
        }
    }
}

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
        claim: Claim,
    },
    /// Commands applied one after another in one writer iteration, answered
    /// together once durable (`POST /v1/batch`).
    /// The commands of one batch request, each with its idempotency key (derived
    /// from the request's, or none).
    Batch {
        commands: Vec<(Command, Option<IdempotencyKey>)>,
        reply: ReplySender<Vec<Result<Acked, Error>>>,
        claim: Claim,
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
        body: surge_wal::SnapshotImage,
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
        to_writer: queue::Sender<Request>,
        reply: ReplySender<u64>,
    },
    Shutdown,
}

impl Request {
    /// What the request counts for against an iteration's bound
    /// ([`EngineConfig::batch_len_max`]): its commands, and at least one.
    fn iteration_weight(&self) -> usize {
        self.command_count().max(1)
    }

    /// Commands this request brings to the writer: what its step's buffers (events,
    /// records for the follower) are sized from.
    fn command_count(&self) -> usize {
        match self {
            Request::Command { .. } => 1,
            Request::Batch { commands, .. } => commands.len(),
            Request::Replicate { records, .. } => records.len(),
            _ => 0,
        }
    }
}

/// Why something is refused now, if it is (the replicated log down, a full disk):
/// set and cleared by one thread, read on every request, so the answer to "is it?"
/// is one atomic load and the text is only locked for when it is.
#[derive(Default)]
struct Reason {
    why: Mutex<Option<String>>,
    /// `why.is_some()`, readable without the lock.
    set: AtomicBool,
}

impl Reason {
    /// Sets (or with `None` clears) the reason; `true` when that changed whether
    /// there is one or what it says.
    fn set(&self, why: Option<String>) -> bool {
        if why.is_none() && !self.set.load(Ordering::Acquire) {
            return false;
        }
        let mut held = self.why.lock();
        self.set.store(why.is_some(), Ordering::Release);
        let changed = *held != why;
        *held = why;
        changed
    }

    fn get(&self) -> Option<String> {
        if !self.set.load(Ordering::Acquire) {
            return None;
        }
        self.why.lock().clone()
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
    /// Why writes are refused for want of disk space now, if they are: set when the
    /// log has no room for a record, cleared once it has room for one at least as
    /// large (a leader's writer tries again at each step). Unlike
    /// `writes_refused`, it passes without a restart.
    storage_full: Reason,
    /// The writer asks the follower for a snapshot (records or segments piled up).
    snapshot_wanted: AtomicBool,
    /// Reads waiting at the follower (bounded like the writer's queue).
    follower_reads: std::sync::atomic::AtomicUsize,
    /// Reads waiting on their own task for the stock board (bounded like the
    /// writer's queue; `EngineHandle::read_sku_waiting`).
    board_waiters: std::sync::atomic::AtomicUsize,
    /// Stock as the follower applied it, for reads on the caller's thread.
    board: StockBoard,
    /// The follower is encoding a snapshot: new reads go through the writer's queue
    /// meanwhile instead of waiting for it.
    follower_encoding: AtomicBool,
    /// The chunks the newest snapshot file was written from, for the next one to
    /// be encoded into (see [`surge_wal::SnapshotImage`]): as much memory as that
    /// snapshot, kept. None until a snapshot is written.
    snapshot_buffers: Mutex<Vec<Vec<u8>>>,
    /// [`Role`] as a byte.
    role: AtomicU8,
    /// Why the replicated log is unavailable now, if it is (`replicated` mode
    /// refuses writes meanwhile).
    replication_down: Reason,
    /// Woken when `replication_down` clears or the role changes
    /// (`EngineHandle::wait_until_writable`).
    writable_changed: tokio::sync::Notify,
    /// The engine is stopping: the publish stage gives up retrying.
    publish_stopping: AtomicBool,
    durability: Durability,
}

impl Inner {
    /// Nothing refused, nothing counted yet.
    fn new(events: EventLog, role: Role, durability: Durability) -> Inner {
        Inner {
            events,
            stats: RuntimeStats::default(),
            writes_refused: Mutex::new(None),
            writes_refused_flag: AtomicBool::new(false),
            storage_full: Reason::default(),
            snapshot_wanted: AtomicBool::new(false),
            follower_reads: std::sync::atomic::AtomicUsize::new(0),
            board_waiters: std::sync::atomic::AtomicUsize::new(0),
            board: StockBoard::default(),
            follower_encoding: AtomicBool::new(false),
            snapshot_buffers: Mutex::new(Vec::new()),
            role: AtomicU8::new(role.as_u8()),
            replication_down: Reason::default(),
            writable_changed: tokio::sync::Notify::new(),
            publish_stopping: AtomicBool::new(false),
            durability,
        }
    }

    /// An empty snapshot image in the chunks of the last snapshot written.
    fn snapshot_image(&self) -> surge_wal::SnapshotImage {
        surge_wal::SnapshotImage::new(std::mem::take(&mut *self.snapshot_buffers.lock()))
    }

    fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }

    fn set_role(&self, role: Role) {
        self.role.store(role.as_u8(), Ordering::Release);
        self.writable_changed.notify_waiters();
    }

    fn set_replication_down(&self, why: Option<String>) {
        let up = why.is_none();
        if self.replication_down.set(why) && up {
            self.writable_changed.notify_waiters();
        }
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
            && let Some(why) = self.replication_down.get()
        {
            return Some(Error::StorageUnavailable(format!(
                "the replicated log is unavailable ({why}): writes resume when it is back"
            )));
        }
        None
    }

    /// Why reads are refused on a node whose readable state holds records the
    /// replicated log never got from it, which no other node has:
    /// - fenced: a tail it logged and could not publish, recovered at a restart (its
    ///   publication unknown, counted as none), durable in `sync` mode (a read waits
    ///   for the follower to apply it: counted from the commit, not from the apply,
    ///   which comes a moment later), or in the writer's state when reads go through
    ///   the writer (`writer_reads`: no follower, or the follower encoding a
    ///   snapshot): `NotLeader`, for good;
    /// - a `replicated` leader whose recovered log is ahead of the stream (restarted,
    ///   the stream not yet resumed or caught up): those records were never
    ///   acknowledged, and a read must not see them (`StorageUnavailable`, until the
    ///   stream has them).
    ///
    /// A fenced `replicated` node that was not restarted, reading from its follower
    /// (which applies only what was published), answers.
    fn reads_diverge(&self, writer_reads: bool) -> Option<Error> {
        let role = self.role();
        let replicated_leader = role == Role::Leader && self.durability == Durability::Replicated;
        if role != Role::Fenced && !replicated_leader {
            return None;
        }
        let published = self.stats.published_lsn.load(Ordering::Acquire);
        let recovered = self.stats.recovered_lsn.load(Ordering::Acquire);
        if replicated_leader {
            return (recovered > published).then(|| {
                Error::StorageUnavailable(format!(
                    "this node recovered records up to LSN {recovered}, and the replicated \
                     log does not hold those past LSN {published} as far as it has learned \
                     (a restarted node learns how far when it resumes the log): reads \
                     resume once it holds them all"
                ))
            });
        }
        // Record LSNs all (`published_lsn` is one; the board's applied LSN is the
        // last event's seq, above its record's LSN when the record has several).
        let mut visible = recovered.max(self.stats.follower_record_lsn.load(Ordering::Acquire));
        // A read waits for the durable LSN (`read_index`) but in `replicated` mode,
        // so it sees that far even while the follower is still behind it.
        if writer_reads
            || self.durability != Durability::Replicated
            || self.follower_encoding.load(Ordering::Acquire)
        {
            visible = visible.max(self.stats.durable_lsn.load(Ordering::Acquire));
        }
        (visible > published).then(|| {
            Error::NotLeader(format!(
                "this node was fenced by a newer leader and its state holds records the \
                 replicated log never got from it (LSN {} to {visible}, as far as the log \
                 told it): read from the leader",
                published + 1
            ))
        })
    }

    /// The LSN a read must see applied: every write acknowledged before it. In
    /// `replicated` mode a write is acknowledged once published, so a read never
    /// waits for (or sees) a record a failover could lose.
    fn read_index(&self) -> u64 {
        // A fenced node too: what it logged and could not publish never reaches its
        // follower, and a read must not wait for it (nor see it).
        if self.durability == Durability::Replicated && self.role() != Role::Standby {
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

/// Set the calling thread's priority `step` nice steps above the process's (the
/// writer, and in `replicated` mode the publish stage: every acknowledgement waits
/// on them); `step` 0 is the process's own value, whatever
/// the thread inherited. Answers the thread's nice value after: unchanged when the
/// raise is not allowed (no `CAP_SYS_NICE`).
fn raise_commit_thread_priority(step: i32) -> i32 {
    surge_wal::raise_this_thread_priority(step)
        .or_else(|_| surge_wal::this_thread_nice())
        .unwrap_or(0)
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
