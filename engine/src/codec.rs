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

pub(crate) fn encode_snapshot_into(
    snapshot: &SnapshotRef<'_>,
    image: &mut surge_wal::SnapshotImage,
) -> usize {
    let before = image.body_len();
    bincode::encode_into_writer(snapshot, ImageWriter(image), SNAPSHOT_CONFIG)
        .expect("encoding into memory cannot fail");
    image.body_len() - before
}

/// Appends bincode's output to a snapshot image directly: through `io::Write`
/// (`bincode::encode_into_std_write`) every field would pay for an error path and
/// a byte count it cannot need.
struct ImageWriter<'a>(&'a mut surge_wal::SnapshotImage);

impl bincode::enc::write::Writer for ImageWriter<'_> {
    #[inline(always)]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.append(bytes);
        Ok(())
    }
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
#[cfg(test)]
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
/// Encodes the engine's snapshot body ([`EngineSnapshot`]: the state's bytes, then
/// the event ring's prefix through the state's last record) into `image`, in one
/// pass and with no copy: the state is encoded in place of its byte string, whose
/// length (a fixed-width u64, as bincode writes a slice's) is patched in after.
pub(crate) fn encode_engine_snapshot(
    state: &State,
    events: &EventLog,
    image: &mut surge_wal::SnapshotImage,
) {
    let length_at = image.body_len();
    image.append(&0u64.to_le_bytes());
    let state_len = state.encode_snapshot_into(image);
    image.patch(length_at, &(state_len as u64).to_le_bytes());
    let last_seq = state.next_seq().saturating_sub(1);
    let (ring, dropped_through) = events.ring();
    let kept = ring.partition_point(|e| e.seq <= last_seq);
    bincode::encode_into_writer(
        (RingPrefix(&ring, kept), dropped_through),
        ImageWriter(image),
        SNAPSHOT_CONFIG,
    )
    .expect("encoding into memory cannot fail");
}

pub(crate) fn decode_engine_snapshot(bytes: &[u8]) -> Result<EngineSnapshot, String> {
    decode_whole(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::LineReq;

    /// `count` commands that each emit events: two SKUs defined, then holds.
    fn apply_commands(state: &mut State, count: usize) -> Vec<Event> {
        let mut events = Vec::new();
        for i in 0..count {
            let command = if i < 2 {
                Command::DefineSku {
                    sku: format!("S{i}"),
                    name: String::new(),
                    on_hand: 100,
                    low_stock_threshold: 95,
                }
            } else {
                Command::Reserve {
                    lines: vec![LineReq {
                        sku: format!("S{}", i % 2),
                        qty: 1,
                    }],
                    ttl_ms: 60_000,
                    actor: "test".into(),
                }
            };
            let applied = state.apply(&command, None, 1 + i as u64, &mut events);
            assert!(applied.outcome.is_ok(), "{:?}", applied.outcome);
        }
        events
    }

    /// The body encoded in place is byte for byte what encoding the state first and
    /// then the body struct gave (the format on disk did not change), whatever the
    /// reused buffer held; the ring is cut at the state's last record.
    #[test]
    fn the_engine_snapshot_encoded_in_place_is_the_body_struct() {
        let mut behind = State::new();
        apply_commands(&mut behind, 9);
        let mut ahead = State::new();
        let mut emitted = apply_commands(&mut ahead, 12);
        let log = EventLog::new(1_000);
        log.publish(&mut emitted);

        let (ring, dropped_through) = log.ring();
        let last_seq = behind.next_seq() - 1;
        let kept = ring.partition_point(|e| e.seq <= last_seq);
        assert!(
            kept > 0 && kept < ring.len(),
            "the ring is cut: {kept} of {}",
            ring.len()
        );
        let expected = bincode::encode_to_vec(
            EngineSnapshotRef {
                state: &behind.encode_snapshot(),
                events: RingPrefix(&ring, kept),
                events_dropped_through: dropped_through,
            },
            SNAPSHOT_CONFIG,
        )
        .expect("encodes");

        let mut stale = Vec::with_capacity(surge_wal::SnapshotImage::CHUNK_BYTES);
        stale.resize(100_000, 0xEE);
        for reused in [Vec::new(), vec![stale]] {
            let mut image = surge_wal::SnapshotImage::new(reused);
            encode_engine_snapshot(&behind, &log, &mut image);
            let body = image.body_parts().collect::<Vec<_>>().concat();
            assert_eq!(body, expected);
            let decoded = decode_engine_snapshot(&body).expect("decodes");
            assert_eq!(decoded.events.len(), kept);
            let restored = State::decode_snapshot(&decoded.state).expect("the state decodes");
            assert_eq!(restored.next_seq(), behind.next_seq());
        }
    }
}
