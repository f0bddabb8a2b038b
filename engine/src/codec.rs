//! Byte encodings of what the engine logs: WAL record payloads and snapshots.
//! bincode 2.0.1 with an explicit configuration (little-endian, fixed-width
//! integers, a size limit) so that the bytes never depend on a default.

use bincode::{Decode, Encode, config};

use crate::command::{Command, IdempotencyKey, Outcome};
use crate::domain::Millis;
use crate::state::{Snapshot, SnapshotRef, SnapshotV1};

/// Largest encoded record (commands are bounded by `limits.rs`; this is a backstop).
pub const RECORD_BYTES_MAX: usize = 1 << 20;
/// Largest snapshot that will be decoded.
pub const SNAPSHOT_BYTES_MAX: usize = 1 << 40;

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
    Ok(outcome)
}

pub(crate) fn encode_snapshot(snapshot: &SnapshotRef<'_>) -> Vec<u8> {
    bincode::encode_to_vec(snapshot, SNAPSHOT_CONFIG).expect("encoding into a Vec cannot fail")
}

/// A snapshot of the current format, or one of an older format that the state
/// upgrades on load.
pub(crate) enum AnySnapshot {
    Current(Snapshot),
    V1(SnapshotV1),
}

pub(crate) fn decode_snapshot(bytes: &[u8]) -> Result<AnySnapshot, String> {
    // Every format starts with its number (a little-endian u32).
    let format = bytes
        .get(..4)
        .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
        .ok_or("a snapshot shorter than its format number")?;
    if format == 1 {
        return decode_whole(bytes).map(AnySnapshot::V1);
    }
    decode_whole(bytes).map(AnySnapshot::Current)
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
