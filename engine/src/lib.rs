//! surge-engine: the domain, the pure state machine, and the single-writer runtime.
//!
//! - [`State`] is deterministic: `apply(command, now)` does no I/O and reads no clock.
//! - [`Engine`] owns a `State` on one writer thread, takes commands from a bounded
//!   queue, logs every mutation to the WAL, commits once per batch, then replies.

pub mod board;
mod chunked;
pub mod codec;
pub mod command;
pub mod domain;
pub mod event;
mod few;
mod idempotency;
mod legacy;
pub mod limits;
mod order_changes;
mod query;
mod reservations;
mod sale;
mod sharded;
mod state;

pub use command::*;
pub use domain::*;
pub use event::{Event, EventKind};
pub use few::Few;
pub use idempotency::{IDEMPOTENCY_KEY_BYTES, IdempotencyPolicy, IdempotencyStats};
pub use query::{FNV1A64_START, QueryReply, fnv1a64, fnv1a64_on};
pub use state::{Applied, EXPIRE_BATCH_MAX, RULES_CURRENT, State, check_sizes};

mod feed;
mod runtime;

pub use feed::{EventLog, FeedPage};
pub use runtime::{
    BATCH_LEN_MAX_DEFAULT, Claim, Clock, Core, Durability, Engine, EngineConfig, EngineHandle,
    Error, LatencyHistogram, LogPublisher, PublishError, RecoveryReport, Role, RuntimeStats,
    Ticket, meminfo_bytes,
};
pub use surge_wal as wal;
