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
mod idempotency;
mod legacy;
pub mod limits;
mod order_changes;
mod query;
mod reservations;
mod sale;
mod state;

pub use command::*;
pub use domain::*;
pub use event::{Event, EventKind};
pub use idempotency::{IDEMPOTENCY_KEY_BYTES, IdempotencyPolicy, IdempotencyStats};
pub use query::{QueryReply, fnv1a64};
pub use state::{Applied, EXPIRE_BATCH_MAX, State, check_sizes};

impl State {
    /// Encode the whole state for a snapshot file.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        codec::encode_snapshot(&self.to_snapshot())
    }

    /// Decode a snapshot written by [`State::encode_snapshot`]; whole-state
    /// invariants are checked.
    pub fn decode_snapshot(bytes: &[u8]) -> Result<State, String> {
        match codec::decode_snapshot(bytes)? {
            codec::AnySnapshot::Current(snapshot) => State::from_snapshot(snapshot),
            codec::AnySnapshot::V4(snapshot) => State::from_snapshot_v4(snapshot),
            codec::AnySnapshot::V3(snapshot) => State::from_snapshot_v3(snapshot),
            codec::AnySnapshot::V2(snapshot) => State::from_snapshot_v2(snapshot),
            codec::AnySnapshot::V1(snapshot) => State::from_snapshot_v1(snapshot),
        }
    }
}

mod feed;
mod runtime;

pub use feed::{EventLog, FeedPage};
pub use runtime::{
    Clock, Durability, Engine, EngineConfig, EngineHandle, Error, LatencyHistogram, LogPublisher,
    PublishError, RecoveryReport, Role, RuntimeStats, Ticket,
};
pub use surge_wal as wal;
