//! Snapshots of the state: [`State::encode_snapshot`] and
//! [`State::decode_snapshot`], the current format (borrowed to encode, owned when
//! decoded) and the older formats read on load (the rest of their encodings is in
//! `legacy.rs`; the file's framing in `codec.rs`).

use std::cmp::Reverse;
use std::sync::Arc;

use bincode::{Decode, Encode};

use super::{Counters, LedgerEntry, Order, Reservation, Sku, State};
use crate::chunked::ChunkedVec;
use crate::codec;
use crate::command::OrderPolicy;
use crate::domain::{Millis, ReservationStatus, SkuIdx};
use crate::idempotency::{
    Answer, Entry, IdempotencyIndex, IdempotencyPolicy, IndexSnapshot, IndexSnapshotRef, key_hash,
};
use crate::limits::*;
use crate::reservations::Reservations;

impl State {
    /// Encode the whole state for a snapshot file.
    pub fn encode_snapshot(&self) -> Vec<u8> {
        codec::encode_snapshot(&self.to_snapshot())
    }

    /// The same bytes as [`State::encode_snapshot`], appended to `image` (reused
    /// from the last snapshot, say); how many.
    pub fn encode_snapshot_into(&self, image: &mut surge_wal::SnapshotImage) -> usize {
        codec::encode_snapshot_into(&self.to_snapshot(), image)
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

impl State {
    /// The state as a snapshot, borrowed: encoding it copies nothing first. It
    /// encodes to exactly the bytes of the owned [`Snapshot`] it decodes into.
    pub(crate) fn to_snapshot(&self) -> SnapshotRef<'_> {
        SnapshotRef {
            format: SNAPSHOT_FORMAT,
            now_ms: self.now_ms,
            next_seq: self.next_seq,
            skus: &self.skus,
            reservations: InIdOrder(&self.reservations),
            next_reservation_id: self.next_reservation_id,
            reservations_base: self.reservations.base(),
            orders: &self.orders,
            actors: &self.actors,
            idempotency: self.idempotency.to_snapshot(),
            counters: &self.counters,
            tail: SnapshotTailRef {
                ledger: &self.ledger,
                order_policy: &self.order_policy,
                rules: self.rules,
                sales: self.sales_snapshot(),
            },
        }
    }

    pub(crate) fn from_snapshot(s: Snapshot) -> Result<State, String> {
        if s.format != SNAPSHOT_FORMAT {
            return Err(format!(
                "snapshot format {} is not {SNAPSHOT_FORMAT}",
                s.format
            ));
        }
        let mut state = State::new();
        state.now_ms = s.now_ms;
        state.next_seq = s.next_seq;
        state.sku_index = s
            .skus
            .iter()
            .enumerate()
            .map(|(i, k)| (k.id.clone(), SkuIdx(i as u32)))
            .collect();
        state.skus = s.skus;
        state.next_reservation_id = s.next_reservation_id;
        for r in &s.reservations {
            if r.status == ReservationStatus::Held {
                state.held_count += 1;
                state.expiry.push(Reverse((r.expires_at_ms, r.id)));
            }
        }
        state.reservations = Reservations::restore(
            s.reservations_base,
            s.reservations,
            FINISHED_RESERVATIONS_KEPT,
        );
        state.restore_sales(s.tail.sales)?;
        state.order_no_index = s
            .orders
            .iter()
            .map(|o| (o.order_no.clone(), o.id))
            .collect();
        state.orders = ChunkedVec::from(s.orders);
        state.actor_index = s
            .actors
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), i as u32))
            .collect();
        state.actors = s.actors;
        state.idempotency = IdempotencyIndex::from_snapshot(s.idempotency)?;
        state.counters = s.counters;
        state.ledger = ChunkedVec::from(s.tail.ledger);
        state.order_policy = s.tail.order_policy;
        state.rules = s.tail.rules;
        state.rebuild_ship_deadlines();
        state.check_invariants();
        Ok(state)
    }
}

/// 2: idempotency keys as hashes with compact answers, and their policy.
/// 3: refusals are typed (`Field`, `Violation`) in stored answers, where format 2 had
/// a field path and a sentence (`legacy::RejectionV2`).
/// 4: v1.1 orders (money amounts, hold, channel, address, delays, history entries
/// that keep what they changed), the ledger, the order policy and rules, and the
/// LSN of each idempotency key's record (`legacy::OrderV3` and friends read 1–3).
/// 5: flash-sale rules and per-customer counts (`sale.rs`); stored SKU answers
/// carry the rules (`legacy::SkuViewV4` reads 1–4).
pub(crate) const SNAPSHOT_FORMAT: u32 = 5;

/// Format 1, before the idempotency window and budget: keys as text, each with its
/// whole outcome. Read so that a data dir written by an older surge still opens.
pub(crate) type SnapshotV1 = SnapshotV3<Vec<IdempotencyEntryV1>>;

/// Formats 1 to 3: orders in their old layout, no ledger, no order policy.
pub(crate) type SnapshotV3<K = crate::legacy::IndexSnapshotV3> =
    Snapshot<K, crate::legacy::OrderV3, ()>;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct IdempotencyEntryV1 {
    pub key: Box<str>,
    pub fingerprint: u64,
    pub at_ms: Millis,
    pub outcome: crate::legacy::OutcomeV2,
}

impl State {
    /// A format-1 snapshot: the state as it was, its keys hashed and their answers
    /// made compact, under the initial policy (which its log, if any, assumed too).
    pub(crate) fn from_snapshot_v1(s: SnapshotV1) -> Result<State, String> {
        let (s, keys) = s.with_idempotency(
            3,
            crate::legacy::IndexSnapshotV3 {
                policy: IdempotencyPolicy::INITIAL,
                first_seq: 0,
                room_made_through_ms: None,
                entries: Vec::new(),
            },
        );
        let mut state = State::from_snapshot_v3(s)?;
        for entry in keys {
            let key = key_hash(&entry.key);
            if state.idempotency.contains(&key) {
                return Err(format!(
                    "idempotency key {:?} twice in the snapshot",
                    entry.key
                ));
            }
            let outcome = crate::legacy::upgrade_outcome(entry.outcome);
            let answer = state.answer_of(&outcome, entry.at_ms);
            state.idempotency.remember(Entry {
                key,
                fingerprint: entry.fingerprint,
                at_ms: entry.at_ms,
                lsn: 0,
                answer,
            });
        }
        Ok(state)
    }

    /// A format-2 snapshot: format 3's layout, but a stored answer holds a refusal
    /// of that format; each is re-encoded as today's.
    pub(crate) fn from_snapshot_v2(mut s: SnapshotV3) -> Result<State, String> {
        if s.format != 2 {
            return Err(format!("snapshot format {} is not 2", s.format));
        }
        for entry in &mut s.idempotency.entries {
            if let Answer::Stored(bytes) = &mut entry.answer {
                *bytes = crate::codec::upgrade_outcome_v2(bytes)?.into_boxed_slice();
            }
        }
        s.format = 3;
        State::from_snapshot_v3(s)
    }

    /// A format-3 snapshot: its orders get today's layout (the money they had, as
    /// v1 knew it), the ledger what they paid and paid back, the order policy and
    /// rules those of the log it came with (v1's).
    /// Format 4: the current layout without sale rules (none existed).
    pub(crate) fn from_snapshot_v4(s: SnapshotV4) -> Result<State, String> {
        State::from_snapshot(s.map_tail(|tail| SnapshotTail {
            ledger: tail.ledger,
            order_policy: tail.order_policy,
            rules: tail.rules,
            sales: crate::sale::SalesSnapshot::default(),
        }))
    }

    pub(crate) fn from_snapshot_v3(s: SnapshotV3) -> Result<State, String> {
        if s.format != 3 {
            return Err(format!("snapshot format {} is not 3", s.format));
        }
        State::from_snapshot(crate::legacy::upgrade_snapshot_v3(s, SNAPSHOT_FORMAT))
    }
}

/// The state as written to a snapshot file: plain vectors in a deterministic order.
/// (`K` is the idempotency part: its older format differs.)
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Snapshot<K = IndexSnapshot, O = Order, T = SnapshotTail> {
    pub format: u32,
    pub now_ms: Millis,
    pub next_seq: u64,
    pub skus: Vec<Sku>,
    pub reservations: Vec<Reservation>,
    pub next_reservation_id: u64,
    /// The first id of the dense reservation window.
    pub reservations_base: u64,
    pub orders: Vec<O>,
    pub actors: Vec<Arc<str>>,
    pub idempotency: K,
    pub counters: Counters,
    /// What format 4 added at the end (`()` in older formats).
    pub tail: T,
}

/// The part of a snapshot that formats 4 and 5 added.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct SnapshotTail<S = crate::sale::SalesSnapshot> {
    pub ledger: Vec<LedgerEntry>,
    pub order_policy: OrderPolicy,
    pub rules: u32,
    /// Format 5: the flash-sale rules and counts (`()` in format 4).
    pub sales: S,
}

/// Format 4: no flash-sale rules.
pub(crate) type SnapshotV4 = Snapshot<IndexSnapshot, Order, SnapshotTail<()>>;

#[derive(Encode)]
pub(crate) struct SnapshotTailRef<'a> {
    pub ledger: &'a ChunkedVec<LedgerEntry>,
    pub order_policy: &'a OrderPolicy,
    pub rules: u32,
    pub sales: crate::sale::SalesSnapshot,
}

impl<K, O, T> Snapshot<K, O, T> {
    /// The same state in the current format, with another tail.
    pub(crate) fn map_tail<U>(self, tail: impl FnOnce(T) -> U) -> Snapshot<K, O, U> {
        Snapshot {
            format: SNAPSHOT_FORMAT,
            now_ms: self.now_ms,
            next_seq: self.next_seq,
            skus: self.skus,
            reservations: self.reservations,
            next_reservation_id: self.next_reservation_id,
            reservations_base: self.reservations_base,
            orders: self.orders,
            actors: self.actors,
            idempotency: self.idempotency,
            counters: self.counters,
            tail: tail(self.tail),
        }
    }

    /// The same state in another format, with another idempotency part; and the
    /// part it had.
    pub(crate) fn with_idempotency<L>(self, format: u32, idempotency: L) -> (Snapshot<L, O, T>, K) {
        let snapshot = Snapshot {
            format,
            now_ms: self.now_ms,
            next_seq: self.next_seq,
            skus: self.skus,
            reservations: self.reservations,
            next_reservation_id: self.next_reservation_id,
            reservations_base: self.reservations_base,
            orders: self.orders,
            actors: self.actors,
            idempotency,
            counters: self.counters,
            tail: self.tail,
        };
        (snapshot, self.idempotency)
    }
}

/// The reservations encoded as a `Vec<Reservation>` in id order, the order
/// [`Reservations::iter`] yields them in (the overflow's old ids, then the
/// window's): straight from the state, with no list of them collected and sorted
/// first (millions of holds are tens of MB).
pub(crate) struct InIdOrder<'a>(&'a Reservations);

impl Encode for InIdOrder<'_> {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        // Counted by a pass of their own: the length written must be what follows,
        // whatever `Reservations::len` counts (a restored window's empty slots).
        let count = self.0.iter().count();
        (count as u64).encode(encoder)?;
        let mut last_id = None;
        for reservation in self.0.iter() {
            debug_assert!(
                last_id < Some(reservation.id),
                "reservations out of id order"
            );
            last_id = Some(reservation.id);
            reservation.encode(encoder)?;
        }
        Ok(())
    }
}

/// [`Snapshot`] by reference, field for field (bincode encodes `&[T]`, `Vec<&T>` and
/// `Vec<T>` alike). A test checks that the two stay in step.
#[derive(Encode)]
pub(crate) struct SnapshotRef<'a> {
    pub format: u32,
    pub now_ms: Millis,
    pub next_seq: u64,
    pub skus: &'a [Sku],
    pub reservations: InIdOrder<'a>,
    pub next_reservation_id: u64,
    pub reservations_base: u64,
    pub orders: &'a ChunkedVec<Order>,
    pub actors: &'a [Arc<str>],
    pub idempotency: IndexSnapshotRef<'a>,
    pub counters: &'a Counters,
    pub tail: SnapshotTailRef<'a>,
}
