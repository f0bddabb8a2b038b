//! Byte encodings of what the engine logs: WAL record payloads and snapshots. The one
//! home of both formats: bincode 2.0.1 with an explicit configuration (little-endian,
//! fixed-width integers, a size limit) so that the bytes never depend on a default.
//!
//! A snapshot file's body (the WAL adds its own header and checksum) is an
//! [`EngineSnapshot`]: the state's own encoding ([`SnapshotRef`], versioned) and the
//! event ring up to the state's last event.

use bincode::{Decode, Encode, config};

use crate::command::{Command, IdempotencyKey, Outcome};
use crate::domain::Millis;
use crate::event::Event;
use crate::feed::{EventLog, EventRing};
use crate::state::{Snapshot, SnapshotRef, SnapshotV1, SnapshotV3, State};

/// Largest encoded record (commands are bounded by `limits.rs`; this is a backstop).
pub const RECORD_BYTES_MAX: usize = 1 << 20;
/// Largest snapshot body that will be written or decoded: the WAL's limit on a
/// snapshot file's body (4 GiB).
pub const SNAPSHOT_BYTES_MAX: usize = surge_wal::SNAPSHOT_BODY_MAX_BYTES as usize;

const RECORD_CONFIG: config::Configuration<
    config::LittleEndian,
    config::Fixint,
    config::Limit<RECORD_BYTES_MAX>,
> = config::standard()
    .with_little_endian()
    .with_fixed_int_encoding()
    .with_limit::<RECORD_BYTES_MAX>();
const SNAPSHOT_CONFIG: config::Configuration<
    config::LittleEndian,
    config::Fixint,
    config::Limit<SNAPSHOT_BYTES_MAX>,
> = config::standard()
    .with_little_endian()
    .with_fixed_int_encoding()
    .with_limit::<SNAPSHOT_BYTES_MAX>();

/// One WAL record: a command as the writer applied it, with its time stamp and
/// idempotency key. Replay applies it again and must get the same LSN.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct LogRecord {
    pub now_ms: Millis,
    pub command: Command,
    pub key: Option<IdempotencyKey>,
}

pub fn encode_record(record: &LogRecord, out: &mut Vec<u8>) {
    out.clear();
    bincode::encode_into_std_write(record, out, RECORD_CONFIG)
        .expect("encoding into a Vec cannot fail");
}

pub fn decode_record(bytes: &[u8]) -> Result<LogRecord, String> {
    let (record, used) =
        bincode::decode_from_slice(bytes, RECORD_CONFIG).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the record",
            bytes.len() - used
        ));
    }
    Ok(record)
}

/// An outcome kept as the answer to an idempotency key (stored in snapshots: the
/// variant order of `Reply`, `Rejection` and the views is part of the format).
pub(crate) fn encode_outcome(outcome: &Outcome) -> Vec<u8> {
    bincode::encode_to_vec(outcome, RECORD_CONFIG).expect("encoding into a Vec cannot fail")
}

pub(crate) fn decode_outcome(bytes: &[u8]) -> Result<Outcome, String> {
    let (outcome, used) =
        bincode::decode_from_slice(bytes, RECORD_CONFIG).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the outcome",
            bytes.len() - used
        ));
    }
    let outcome: Outcome = outcome;
    Ok(outcome.map(crate::legacy::upgrade_reply))
}

/// A stored answer of snapshot format 2 (an outcome with a refusal of that format),
/// re-encoded as today's outcome.
pub(crate) fn upgrade_outcome_v2(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let (old, used): (crate::legacy::OutcomeV2, usize) =
        bincode::decode_from_slice(bytes, RECORD_CONFIG).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after a format-2 outcome",
            bytes.len() - used
        ));
    }
    Ok(encode_outcome(&crate::legacy::upgrade_outcome(old)))
}

#[cfg(test)]
pub(crate) fn encode_outcome_v2(outcome: &crate::legacy::OutcomeV2) -> Vec<u8> {
    bincode::encode_to_vec(outcome, RECORD_CONFIG).expect("encoding into a Vec cannot fail")
}

pub(crate) fn encode_snapshot(snapshot: &SnapshotRef<'_>) -> Vec<u8> {
    bincode::encode_to_vec(snapshot, SNAPSHOT_CONFIG).expect("encoding into a Vec cannot fail")
}

/// A snapshot of the current format, or one of an older format that the state
/// upgrades on load.
pub(crate) enum AnySnapshot {
    Current(Snapshot),
    /// Format 4: no sale rules.
    V4(crate::state::SnapshotV4),
    /// Format 3: orders in their old layout, no ledger.
    V3(SnapshotV3),
    /// Format 2: format 3's layout, but its stored answers hold old refusals.
    V2(SnapshotV3),
    V1(SnapshotV1),
}

pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<AnySnapshot, String> {
    // Every format starts with its number (a little-endian u32).
    let format = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or("a snapshot shorter than its format number")?;
    match format {
        1 => decode_whole(bytes).map(AnySnapshot::V1),
        2 => decode_whole(bytes).map(AnySnapshot::V2),
        3 => decode_whole(bytes).map(AnySnapshot::V3),
        4 => decode_whole(bytes).map(AnySnapshot::V4),
        _ => decode_whole(bytes).map(AnySnapshot::Current),
    }
}

fn decode_whole<T: bincode::Decode<()>>(bytes: &[u8]) -> Result<T, String> {
    let (snapshot, used) =
        bincode::decode_from_slice(bytes, SNAPSHOT_CONFIG).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the snapshot",
            bytes.len() - used
        ));
    }
    Ok(snapshot)
}

#[cfg(test)]
pub(crate) fn encode_snapshot_v1(snapshot: &SnapshotV1) -> Vec<u8> {
    bincode::encode_to_vec(snapshot, SNAPSHOT_CONFIG).expect("encoding into a Vec cannot fail")
}

/// The engine's snapshot file body: the state and the event ring.
#[derive(Decode)]
pub(crate) struct EngineSnapshot {
    pub state: Vec<u8>,
    pub events: Vec<Event>,
    pub events_dropped_through: u64,
}

/// [`EngineSnapshot`] by reference, encoded without copying the ring first.
#[derive(Encode)]
struct EngineSnapshotRef<'a> {
    state: &'a [u8],
    events: RingPrefix<'a>,
    events_dropped_through: u64,
}

/// The first `.1` events of the ring, encoded as a sequence (like a `Vec<Event>`).
struct RingPrefix<'a>(&'a EventRing, usize);

impl Encode for RingPrefix<'_> {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        (self.1 as u64).encode(encoder)?;
        for event in self.0.iter_from(0).take(self.1) {
            event.encode(encoder)?;
        }
        Ok(())
    }
}

/// The snapshot body of `state`: its encoding and the event ring up to the state's
/// last event (the feed may already hold later events; replay regenerates them).
pub(crate) fn encode_engine_snapshot(state: &State, events: &EventLog) -> Vec<u8> {
    let state_bytes = state.encode_snapshot();
    let last_seq = state.next_seq().saturating_sub(1);
    let (ring, dropped_through) = events.ring();
    let kept = ring.partition_point(|e| e.seq <= last_seq);
    let body = EngineSnapshotRef {
        state: &state_bytes,
        events: RingPrefix(&ring, kept),
        events_dropped_through: dropped_through,
    };
    bincode::encode_to_vec(&body, SNAPSHOT_CONFIG).expect("encoding into a Vec cannot fail")
}

pub(crate) fn decode_engine_snapshot(bytes: &[u8]) -> Result<EngineSnapshot, String> {
    decode_whole(bytes)
}
