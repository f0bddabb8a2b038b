//! Idempotency keys: which keyed requests were already answered, and with what.
//!
//! Keys are remembered for a retention window, within a memory budget. Both are state,
//! set by the logged [`Command::SetIdempotencyPolicy`], so replay never depends on the
//! flags of the process that replays. A key older than the window is forgotten; when
//! a new key does not fit in the budget, the oldest keys are forgotten first. Nothing
//! here ever refuses a write: at the budget, what shrinks is the window.
//!
//! Per key, at the budget, 72 bytes:
//!
//! ```text
//! ring entry (64 B)  key hash 16 | request fingerprint 8 | time 8 | LSN 8 | answer 24
//! table      (8 B)   two 4-byte slots per key the budget allows (load at most 1/2)
//! ```
//!
//! - The ring holds the entries in the order they were remembered, which is time order
//!   (the writer's clock never goes back), in chunks of equal size: forgetting the
//!   oldest is popping the front, and growing never copies what is there.
//! - The table is open addressing with linear probing over slot numbers into the ring;
//!   a removal shifts the following slots back, so there are no tombstones and the
//!   table never needs rebuilding while the policy stays. It is allocated at its full
//!   size (the budget's) with the first key: it never pauses the writer to grow.
//! - The answer is compact: the id of the order or hold it made, or the one short SKU
//!   of an `insufficient_stock`, from which the original answer is rebuilt exactly
//!   (see [`State::replayed_outcome`]); anything else is stored encoded, and those
//!   bytes count against the budget too.
//!
//! The key itself is not kept: its hash is, the first 128 bits of SHA-256 of its text.
//! - By accident, two of n remembered keys collide with probability below
//!   n² / 2^129: 10^-21 for the 30 M keys of the default budget.
//! - On purpose, answering for someone else's key needs a second preimage of SHA-256
//!   (2^128 work), and knowing a key and its request already lets one replay it, so a
//!   collision gives nothing more. Colliding two keys of one's own (2^64 work) only
//!   confuses one's own requests.
//! - Placement in the table is by the hash too, so a client cannot aim keys at one
//!   region of the table to make probing slow.

use std::collections::VecDeque;
use std::sync::Arc;

use bincode::enc::Encoder;
use bincode::enc::write::Writer;
use bincode::error::EncodeError;
use bincode::{Decode, Encode};
use sha2::{Digest, Sha256};

use crate::command::{
    Field, LineView, OrderView, Outcome, Rejection, Reply, ReservationView, Shortage, Unit,
    Violation,
};
use crate::domain::{
    Millis, OrderId, OrderStatus, PaymentStatus, ReservationId, ReservationStatus, SkuIdx,
};
use crate::limits::{
    HISTORY_PER_ORDER_MAX, IDEMPOTENCY_BUDGET_BYTES_DEFAULT, IDEMPOTENCY_BUDGET_BYTES_MAX,
    IDEMPOTENCY_BUDGET_BYTES_MIN, IDEMPOTENCY_WINDOW_MS_DEFAULT, IDEMPOTENCY_WINDOW_MS_MAX,
    IDEMPOTENCY_WINDOW_MS_MIN,
};
use crate::state::{Ctx, State, invalid};

/// How long keys are remembered and how much memory they may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Encode, Decode)]
pub struct IdempotencyPolicy {
    /// A key is forgotten once it is this old.
    pub window_ms: u64,
    /// Index and stored answers together stay within this many bytes.
    pub budget_bytes: u64,
}

impl IdempotencyPolicy {
    /// The policy of a state that never had one set. Logs written before their first
    /// `SetIdempotencyPolicy` replay under it, so it must never change, whatever the
    /// defaults of the flags become.
    pub const INITIAL: IdempotencyPolicy = IdempotencyPolicy {
        window_ms: 24 * 60 * 60 * 1000,
        budget_bytes: 2 << 30,
    };

    /// The defaults of the server's flags (today the same as [`Self::INITIAL`]).
    pub const DEFAULT: IdempotencyPolicy = IdempotencyPolicy {
        window_ms: IDEMPOTENCY_WINDOW_MS_DEFAULT,
        budget_bytes: IDEMPOTENCY_BUDGET_BYTES_DEFAULT,
    };

    /// The policy's values are within the limits: `Err` names the field and the range.
    pub fn check(&self) -> Result<(), (Field, Violation)> {
        if !(IDEMPOTENCY_WINDOW_MS_MIN..=IDEMPOTENCY_WINDOW_MS_MAX).contains(&self.window_ms) {
            return Err((
                Field::WindowMs,
                Violation::OutOfRange {
                    min: IDEMPOTENCY_WINDOW_MS_MIN,
                    max: IDEMPOTENCY_WINDOW_MS_MAX,
                    unit: Unit::Millis,
                },
            ));
        }
        if !(IDEMPOTENCY_BUDGET_BYTES_MIN..=IDEMPOTENCY_BUDGET_BYTES_MAX)
            .contains(&self.budget_bytes)
        {
            return Err((
                Field::BudgetBytes,
                Violation::OutOfRange {
                    min: IDEMPOTENCY_BUDGET_BYTES_MIN,
                    max: IDEMPOTENCY_BUDGET_BYTES_MAX,
                    unit: Unit::Bytes,
                },
            ));
        }
        Ok(())
    }
}

/// What `/metrics` shows of the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyStats {
    pub policy: IdempotencyPolicy,
    /// Keys remembered now (some may be past the window until the next write).
    pub keys: u64,
    /// Keys the budget holds when no answer needs storing.
    pub keys_max: u64,
    /// Bytes counted against the budget: ring, table and stored answers.
    pub bytes: u64,
    pub oldest_at_ms: Option<Millis>,
    /// When the newest key forgotten to make room was remembered: the index forgot
    /// keys younger than the window while that time is within the window.
    pub room_made_through_ms: Option<Millis>,
}

impl IdempotencyStats {
    /// At `now_ms`, keys still within the window have been forgotten to make room.
    pub fn at_budget(&self, now_ms: Millis) -> bool {
        self.room_made_through_ms
            .is_some_and(|at| now_ms.saturating_sub(at) < self.policy.window_ms)
    }

    /// How far back keys are remembered at `now_ms`: the configured window, or at the
    /// budget the age of the oldest key remembered (never more than the window).
    pub fn effective_window_ms(&self, now_ms: Millis) -> u64 {
        match self.oldest_at_ms {
            Some(oldest) if self.at_budget(now_ms) => {
                now_ms.saturating_sub(oldest).min(self.policy.window_ms)
            }
            _ => self.policy.window_ms,
        }
    }
}

/// The first 128 bits of SHA-256 of the key text (the collision argument is at the
/// top of this file).
pub(crate) type KeyHash = [u64; 2];

pub(crate) fn key_hash(key: &str) -> KeyHash {
    let digest = Sha256::digest(key.as_bytes());
    let word = |i: usize| u64::from_le_bytes(digest[i..i + 8].try_into().expect("8 bytes"));
    [word(0), word(8)]
}

/// The answer to a remembered request, kept compactly. The variant order is part of
/// the snapshot format: append new variants at the end.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum Answer {
    /// An order: the order as it was when it had `history_len` history entries and
    /// this payment status.
    Order {
        id: OrderId,
        history_len: u8,
        payment: PaymentStatus,
    },
    /// A fresh hold of one line, made at the key's time, expiring `ttl_ms` later.
    Held {
        id: ReservationId,
        sku: SkuIdx,
        qty: u32,
        ttl_ms: u32,
    },
    /// `insufficient_stock` on one SKU.
    Short {
        sku: SkuIdx,
        requested: u32,
        available: u64,
    },
    /// Any other outcome, encoded (`codec::encode_outcome`).
    Stored(Box<[u8]>),
    /// The slot of a forgotten key whose chunk is still in use. Never in a snapshot.
    Forgotten,
}

/// One remembered key. Field order is the snapshot format.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Entry {
    pub key: KeyHash,
    pub fingerprint: u64,
    pub at_ms: Millis,
    /// The LSN of the record that answered first (`Surge-Lsn` of a replay); 0 for
    /// keys carried over from a snapshot older than format 4.
    pub lsn: u64,
    pub answer: Answer,
}

const ENTRY_BYTES: u64 = std::mem::size_of::<Entry>() as u64;
const SLOT_BYTES: u64 = std::mem::size_of::<u32>() as u64;
/// Table slots per key the budget allows: linear probing stays short at load 1/2
/// (2.5 probes to find a key absent, 1.5 to find one present, on average).
const SLOTS_PER_KEY: u64 = 2;
/// What one key costs at the budget.
pub const IDEMPOTENCY_KEY_BYTES: u64 = ENTRY_BYTES + SLOTS_PER_KEY * SLOT_BYTES;
const CHUNK_HEADER_BYTES: u64 = std::mem::size_of::<Vec<Entry>>() as u64;
/// Slot values are `seq mod SLOT_MOD + 1`; 0 marks an empty slot.
const SLOT_MOD: u64 = u32::MAX as u64;

const _: () = assert!(std::mem::size_of::<Answer>() == 24);
const _: () = assert!(ENTRY_BYTES == 64);
const _: () = assert!(IDEMPOTENCY_KEY_BYTES == 72);
// Every key the largest budget holds has its own slot number.
const _: () = assert!(IDEMPOTENCY_BUDGET_BYTES_MAX / IDEMPOTENCY_KEY_BYTES < SLOT_MOD / 2);

/// Sizes that follow from the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    keys_max: u64,
    /// A power of two: entries are found by shifts, not divisions.
    chunk_len: u64,
    chunk_shift: u32,
    chunks_max: u64,
    table_slots: u64,
}

impl Layout {
    fn of(budget_bytes: u64) -> Layout {
        let rough = budget_bytes / IDEMPOTENCY_KEY_BYTES;
        // About 256 chunks at the budget, so a chunk is a small part of it.
        let chunk_len = (rough / 256).next_power_of_two().clamp(16, 16_384);
        debug_assert!(chunk_len.is_power_of_two());
        // The keys span at most two chunks more than they fill: one part-used at each end.
        let chunks_max = rough / chunk_len + 2;
        let slack = 2 * chunk_len * ENTRY_BYTES + chunks_max * CHUNK_HEADER_BYTES;
        let keys_max = budget_bytes.saturating_sub(slack) / IDEMPOTENCY_KEY_BYTES;
        assert!(keys_max > 0, "budget {budget_bytes} holds no key");
        Layout {
            keys_max,
            chunk_len,
            chunk_shift: chunk_len.trailing_zeros(),
            chunks_max,
            table_slots: SLOTS_PER_KEY * keys_max,
        }
    }
}

/// The remembered keys. Its memory is a pure function of what it holds (see
/// [`IdempotencyIndex::bytes`]), so a replayed or restored state forgets exactly the
/// keys the original forgot.
#[derive(Debug, Clone)]
pub(crate) struct IdempotencyIndex {
    policy: IdempotencyPolicy,
    layout: Layout,
    /// Keys are numbered in the order they are remembered; this is the oldest's.
    first_seq: u64,
    len: u64,
    /// Chunk `i` holds the keys numbered from `(first_seq / chunk_len + i) * chunk_len`.
    chunks: VecDeque<Vec<Entry>>,
    /// Empty, or `layout.table_slots` slots.
    slots: Vec<u32>,
    stored_bytes: u64,
    /// When the newest key forgotten to make room was remembered.
    room_made_through_ms: Option<Millis>,
}

impl IdempotencyIndex {
    pub fn new(policy: IdempotencyPolicy) -> IdempotencyIndex {
        IdempotencyIndex {
            policy,
            layout: Layout::of(policy.budget_bytes),
            first_seq: 0,
            len: 0,
            chunks: VecDeque::new(),
            slots: Vec::new(),
            stored_bytes: 0,
            room_made_through_ms: None,
        }
    }

    pub fn policy(&self) -> IdempotencyPolicy {
        self.policy
    }

    /// Bytes counted against the budget: the table and the chunk list are allocated
    /// whole while any key is remembered, chunks as the keys span them, and the stored
    /// answers' bytes.
    pub fn bytes(&self) -> u64 {
        self.bytes_with(self.len, self.stored_bytes)
    }

    fn bytes_with(&self, len: u64, stored_bytes: u64) -> u64 {
        if len == 0 {
            return 0;
        }
        let c = self.layout.chunk_len;
        let spanned = (self.first_seq + len - 1) / c - self.first_seq / c + 1;
        self.layout.table_slots * SLOT_BYTES
            + self.layout.chunks_max * CHUNK_HEADER_BYTES
            + spanned * c * ENTRY_BYTES
            + stored_bytes
    }

    /// One more key, with `stored` bytes of answer, fits in the budget.
    fn fits(&self, stored: u64) -> bool {
        self.len < self.layout.keys_max
            && self.bytes_with(self.len + 1, self.stored_bytes + stored) <= self.policy.budget_bytes
    }

    pub fn stats(&self) -> IdempotencyStats {
        IdempotencyStats {
            policy: self.policy,
            keys: self.len,
            keys_max: self.layout.keys_max,
            bytes: self.bytes(),
            oldest_at_ms: self.front().map(|e| e.at_ms),
            room_made_through_ms: self.room_made_through_ms,
        }
    }

    fn entry(&self, seq: u64) -> &Entry {
        debug_assert!(seq >= self.first_seq && seq < self.first_seq + self.len);
        let shift = self.layout.chunk_shift;
        let chunk = ((seq >> shift) - (self.first_seq >> shift)) as usize;
        &self.chunks[chunk][(seq & (self.layout.chunk_len - 1)) as usize]
    }

    fn front(&self) -> Option<&Entry> {
        (self.len > 0).then(|| self.entry(self.first_seq))
    }

    fn back(&self) -> Option<&Entry> {
        (self.len > 0).then(|| self.entry(self.first_seq + self.len - 1))
    }

    /// The remembered entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        let skip = (self.first_seq % self.layout.chunk_len) as usize;
        self.chunks
            .iter()
            .flatten()
            .skip(skip)
            .take(self.len as usize)
    }

    /// The entry of a key within the window at `now_ms`, if remembered. A key past
    /// the window is not found even before it is removed.
    pub fn get(&self, key: &KeyHash, now_ms: Millis) -> Option<&Entry> {
        let entry = self.entry(self.find(key)?);
        (now_ms.saturating_sub(entry.at_ms) < self.policy.window_ms).then_some(entry)
    }

    /// The key is remembered, within the window or not.
    pub fn contains(&self, key: &KeyHash) -> bool {
        self.find(key).is_some()
    }

    /// Forget the keys that are past the window at `now_ms`.
    pub fn forget_expired(&mut self, now_ms: Millis) {
        while self
            .front()
            .is_some_and(|e| now_ms.saturating_sub(e.at_ms) >= self.policy.window_ms)
        {
            self.forget_oldest();
        }
    }

    /// Remember a key that is not remembered, forgetting the oldest keys first when
    /// it does not fit. An answer too big for the budget even alone is not
    /// remembered; none within the request limits is (the largest, an order view
    /// with 64 lines and 32 history entries of 500-byte notes, is under 30 KB, and
    /// the smallest budget, 64 KiB, leaves more than that for answers).
    pub fn remember(&mut self, entry: Entry) {
        debug_assert!(self.find(&entry.key).is_none(), "key remembered twice");
        assert!(
            self.back().is_none_or(|b| b.at_ms <= entry.at_ms),
            "keys are remembered in time order"
        );
        let stored = match &entry.answer {
            Answer::Stored(bytes) => bytes.len() as u64,
            Answer::Forgotten => panic!("remembering a forgotten entry"),
            _ => 0,
        };
        while !self.fits(stored) {
            let Some(oldest) = self.front() else {
                return;
            };
            self.room_made_through_ms = Some(oldest.at_ms);
            self.forget_oldest();
        }
        let seq = self.first_seq + self.len;
        let c = self.layout.chunk_len;
        if self.len == 0 {
            self.chunks = VecDeque::with_capacity(self.layout.chunks_max as usize);
            self.slots = vec![0; self.layout.table_slots as usize];
        }
        if self.len == 0 || seq.is_multiple_of(c) {
            let mut chunk = Vec::with_capacity(c as usize);
            // A chunk starts at a multiple of its length: pad a first chunk that starts
            // part-way (after everything was forgotten, or in a restored state).
            chunk.resize_with((seq % c) as usize, || Entry {
                key: [0, 0],
                fingerprint: 0,
                at_ms: 0,
                lsn: 0,
                answer: Answer::Forgotten,
            });
            self.chunks.push_back(chunk);
        }
        let back = self.chunks.back_mut().expect("a chunk");
        debug_assert_eq!(back.len() as u64, seq % c);
        let key = entry.key;
        back.push(entry);
        self.len += 1;
        self.stored_bytes += stored;
        self.table_insert(&key, seq);
        debug_assert!(self.bytes() <= self.policy.budget_bytes);
    }

    fn forget_oldest(&mut self) {
        assert!(self.len > 0);
        let seq = self.first_seq;
        let key = self.entry(seq).key;
        self.table_remove(&key, seq);
        let mask = self.layout.chunk_len - 1;
        let front = &mut self.chunks[0][(seq & mask) as usize];
        if let Answer::Stored(bytes) = &front.answer {
            self.stored_bytes -= bytes.len() as u64;
        }
        front.answer = Answer::Forgotten;
        self.first_seq += 1;
        self.len -= 1;
        if self.len == 0 {
            // Nothing left: give the memory back.
            self.chunks = VecDeque::new();
            self.slots = Vec::new();
            assert_eq!(self.stored_bytes, 0);
        } else if self.first_seq & mask == 0 {
            self.chunks.pop_front();
        }
    }

    /// Take a new policy: forget what is past the new window at `now_ms`, and when
    /// the budget changed, lay the keys out again, keeping the newest that fit.
    pub fn set_policy(&mut self, policy: IdempotencyPolicy, now_ms: Millis) {
        self.policy = policy;
        self.forget_expired(now_ms);
        let layout = Layout::of(policy.budget_bytes);
        if layout == self.layout && self.bytes() <= policy.budget_bytes {
            return;
        }
        let old = std::mem::replace(self, IdempotencyIndex::new(policy));
        self.first_seq = old.first_seq;
        self.room_made_through_ms = old.room_made_through_ms;
        for entry in old.into_entries() {
            self.remember(entry);
        }
    }

    /// The remembered entries by value, oldest first.
    fn into_entries(self) -> impl Iterator<Item = Entry> {
        let skip = (self.first_seq % self.layout.chunk_len) as usize;
        let len = self.len as usize;
        self.chunks.into_iter().flatten().skip(skip).take(len)
    }

    // ---- the table ------------------------------------------------------------

    fn home(&self, key: &KeyHash) -> usize {
        // The hash is uniform: scale its first word to the table (no modulo bias
        // worth the name, any table size).
        ((u128::from(key[0]) * self.slots.len() as u128) >> 64) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() { 0 } else { i + 1 }
    }

    fn slot_value(seq: u64) -> u32 {
        (seq % SLOT_MOD + 1) as u32
    }

    /// The key number in a slot: the one remembered key with that value.
    fn slot_seq(&self, value: u32) -> u64 {
        debug_assert!(value != 0);
        let base = self.first_seq % SLOT_MOD;
        self.first_seq + (u64::from(value - 1) + SLOT_MOD - base) % SLOT_MOD
    }

    fn find(&self, key: &KeyHash) -> Option<u64> {
        if self.slots.is_empty() {
            return None;
        }
        let mut i = self.home(key);
        loop {
            let value = self.slots[i];
            if value == 0 {
                return None;
            }
            let seq = self.slot_seq(value);
            if self.entry(seq).key == *key {
                return Some(seq);
            }
            i = self.next(i);
        }
    }

    fn table_insert(&mut self, key: &KeyHash, seq: u64) {
        let mut i = self.home(key);
        while self.slots[i] != 0 {
            i = self.next(i);
        }
        self.slots[i] = Self::slot_value(seq);
    }

    /// Remove a key's slot and shift the run after it back, so that every key stays
    /// reachable from its home slot without tombstones.
    fn table_remove(&mut self, key: &KeyHash, seq: u64) {
        let value = Self::slot_value(seq);
        let mut hole = self.home(key);
        while self.slots[hole] != value {
            assert!(self.slots[hole] != 0, "a remembered key is in the table");
            hole = self.next(hole);
        }
        let mut j = hole;
        loop {
            j = self.next(j);
            let value = self.slots[j];
            if value == 0 {
                break;
            }
            let home = self.home(&self.entry(self.slot_seq(value)).key);
            // The key at j stays unless its home lies cyclically outside (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = value;
                hole = j;
            }
        }
        self.slots[hole] = 0;
    }

    // ---- snapshots ------------------------------------------------------------

    pub fn to_snapshot(&self) -> IndexSnapshotRef<'_> {
        IndexSnapshotRef(self)
    }

    pub fn from_snapshot(s: IndexSnapshot) -> Result<IdempotencyIndex, String> {
        s.policy
            .check()
            .map_err(|(field, violation)| format!("idempotency policy {field:?}: {violation:?}"))?;
        let count = s.entries.len() as u64;
        let mut index = IdempotencyIndex::new(s.policy);
        let room_made_through_ms = s.room_made_through_ms;
        index.first_seq = s.first_seq;
        for entry in s.entries {
            if matches!(entry.answer, Answer::Forgotten) {
                return Err("a forgotten idempotency entry in the snapshot".into());
            }
            if index.find(&entry.key).is_some() {
                return Err("an idempotency key twice in the snapshot".into());
            }
            if index.back().is_some_and(|b| b.at_ms > entry.at_ms) {
                return Err("idempotency keys out of time order in the snapshot".into());
            }
            index.remember(entry);
        }
        // Memory is a function of the content, so what fitted fits again.
        if index.len != count || index.first_seq != s.first_seq {
            return Err(format!(
                "{count} idempotency keys do not fit their own budget of {} bytes",
                s.policy.budget_bytes
            ));
        }
        index.room_made_through_ms = room_made_through_ms;
        Ok(index)
    }
}

/// The index as written to a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct IndexSnapshot {
    pub policy: IdempotencyPolicy,
    pub first_seq: u64,
    pub room_made_through_ms: Option<Millis>,
    pub entries: Vec<Entry>,
}

/// [`IndexSnapshot`] by reference: encodes to the same bytes, entries straight from
/// the ring (bincode writes a `Vec` as its length, then its items).
pub(crate) struct IndexSnapshotRef<'a>(&'a IdempotencyIndex);

impl Encode for IndexSnapshotRef<'_> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        let index = self.0;
        index.policy.encode(encoder)?;
        index.first_seq.encode(encoder)?;
        index.room_made_through_ms.encode(encoder)?;
        index.len.encode(encoder)?;
        for entry in index.iter() {
            write_entry(entry, encoder.writer())?;
        }
        Ok(())
    }
}

/// At the budget the entries are most of a snapshot, and the writer encodes it:
/// write each entry in one call, as the bytes its derived encoding gives under the
/// snapshot's configuration (fixed-width little-endian integers, `u32` variant
/// numbers). A test holds the two together.
fn write_entry(entry: &Entry, writer: &mut impl Writer) -> Result<(), EncodeError> {
    let mut buf = [0u8; 72];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        buf[len..len + bytes.len()].copy_from_slice(bytes);
        len += bytes.len();
    };
    put(&entry.key[0].to_le_bytes());
    put(&entry.key[1].to_le_bytes());
    put(&entry.fingerprint.to_le_bytes());
    put(&entry.at_ms.to_le_bytes());
    put(&entry.lsn.to_le_bytes());
    let mut stored: &[u8] = &[];
    match &entry.answer {
        Answer::Order {
            id,
            history_len,
            payment,
        } => {
            put(&0u32.to_le_bytes());
            put(&id.0.to_le_bytes());
            put(&[*history_len]);
            put(&(*payment as u32).to_le_bytes());
        }
        Answer::Held {
            id,
            sku,
            qty,
            ttl_ms,
        } => {
            put(&1u32.to_le_bytes());
            put(&id.0.to_le_bytes());
            put(&sku.0.to_le_bytes());
            put(&qty.to_le_bytes());
            put(&ttl_ms.to_le_bytes());
        }
        Answer::Short {
            sku,
            requested,
            available,
        } => {
            put(&2u32.to_le_bytes());
            put(&sku.0.to_le_bytes());
            put(&requested.to_le_bytes());
            put(&available.to_le_bytes());
        }
        Answer::Stored(bytes) => {
            put(&3u32.to_le_bytes());
            put(&(bytes.len() as u64).to_le_bytes());
            stored = bytes;
        }
        Answer::Forgotten => unreachable!("only remembered entries are written"),
    }
    writer.write(&buf[..len])?;
    writer.write(stored)
}

// ---- the policy, as state ---------------------------------------------------------

impl State {
    /// A new window and budget. Keys past the new window are forgotten at once, and
    /// the oldest keys beyond a smaller budget.
    pub(crate) fn set_idempotency_policy(
        &mut self,
        policy: IdempotencyPolicy,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        policy
            .check()
            .map_err(|(field, violation)| invalid(field, violation))?;
        if policy != self.idempotency.policy() {
            self.idempotency.set_policy(policy, ctx.now_ms);
            ctx.changed = true;
        }
        Ok(Reply::IdempotencyPolicy {
            window_ms: policy.window_ms,
            budget_bytes: policy.budget_bytes,
        })
    }

    /// The window and budget in force.
    pub fn idempotency_policy(&self) -> IdempotencyPolicy {
        self.idempotency.policy()
    }

    pub fn idempotency_stats(&self) -> IdempotencyStats {
        self.idempotency.stats()
    }
}

// ---- answers ----------------------------------------------------------------------

impl State {
    /// The compact form of an outcome just produced at `now_ms`. A compact form is
    /// chosen only where [`State::replayed_outcome`] rebuilds it exactly, for as long
    /// as the key is remembered; everything else is stored encoded.
    pub(crate) fn answer_of(&self, outcome: &Outcome, now_ms: Millis) -> Answer {
        let compact = match outcome {
            // The view was made from the order as it is now: its history has this many
            // entries, and the history is below its cap, so every later change to
            // the order adds an entry (see `order_as_of`).
            Ok(Reply::Order(v))
                if !v.history.is_empty() && v.history.len() < HISTORY_PER_ORDER_MAX =>
            {
                Some(Answer::Order {
                    id: v.id,
                    history_len: u8::try_from(v.history.len()).expect("under the cap"),
                    payment: v.payment.status,
                })
            }
            Ok(Reply::Reservation(v))
                if v.status == ReservationStatus::Held
                    && v.order_id.is_none()
                    && v.lines.len() == 1
                    && v.created_at_ms == now_ms =>
            {
                let line = &v.lines[0];
                match (
                    self.sku_index.get(&line.sku),
                    u32::try_from(line.qty),
                    u32::try_from(v.expires_at_ms - v.created_at_ms),
                ) {
                    (Some(&sku), Ok(qty), Ok(ttl_ms)) => Some(Answer::Held {
                        id: v.id,
                        sku,
                        qty,
                        ttl_ms,
                    }),
                    _ => None,
                }
            }
            Err(Rejection::InsufficientStock { lines }) if lines.len() == 1 => {
                let short = &lines[0];
                match (
                    self.sku_index.get(short.sku.as_str()),
                    u32::try_from(short.requested),
                ) {
                    (Some(&sku), Ok(requested)) => Some(Answer::Short {
                        sku,
                        requested,
                        available: short.available,
                    }),
                    _ => None,
                }
            }
            _ => None,
        };
        match compact {
            Some(answer) => {
                debug_assert_eq!(
                    &self.rebuild(&answer, now_ms),
                    outcome,
                    "a compact answer must rebuild the outcome"
                );
                answer
            }
            None => Answer::Stored(crate::codec::encode_outcome(outcome).into_boxed_slice()),
        }
    }

    /// The original outcome of a remembered request.
    pub(crate) fn replayed_outcome(&self, entry: &Entry) -> Outcome {
        self.rebuild(&entry.answer, entry.at_ms)
    }

    fn rebuild(&self, answer: &Answer, at_ms: Millis) -> Outcome {
        match answer {
            Answer::Order {
                id,
                history_len,
                payment,
            } => Ok(Reply::Order(Box::new(self.order_as_of(
                *id,
                usize::from(*history_len),
                *payment,
            )))),
            Answer::Held {
                id,
                sku,
                qty,
                ttl_ms,
            } => Ok(Reply::Reservation(ReservationView {
                id: *id,
                status: ReservationStatus::Held,
                lines: crate::Few::map_slice(&[*qty], |&qty| LineView {
                    sku: Arc::clone(&self.skus[sku.0 as usize].id),
                    qty: u64::from(qty),
                }),
                created_at_ms: at_ms,
                expires_at_ms: at_ms + u64::from(*ttl_ms),
                order_id: None,
            })),
            Answer::Short {
                sku,
                requested,
                available,
            } => Err(Rejection::InsufficientStock {
                lines: vec![Shortage {
                    sku: self.skus[sku.0 as usize].id.to_string(),
                    requested: u64::from(*requested),
                    available: *available,
                }],
            }),
            Answer::Stored(bytes) => crate::codec::decode_outcome(bytes)
                .expect("a stored answer decodes: it was encoded by this code"),
            Answer::Forgotten => unreachable!("a forgotten key is never found"),
        }
    }

    /// The view of an order as it was when its history had `history_len` entries.
    ///
    /// Orders are never removed, and what changes in one changes with an entry in its
    /// history (while the history is below its cap), so the entries up to then tell
    /// the status and when it was set. The rest follows from that status and the
    /// payment status then:
    /// - the payment reference and time are set when it is paid (payment not unpaid);
    /// - the refund reference when it is refunded;
    /// - the tracking number when it is shipped (a `shipped` entry);
    /// - the cancellation when it is cancelled, the return when returned (both final:
    ///   only a refund follows, with an entry of the same status).
    fn order_as_of(&self, id: OrderId, history_len: usize, payment: PaymentStatus) -> OrderView {
        let order = &self.orders[(id.0 - 1) as usize];
        let mut view = self.order_view(order);
        assert!((1..=view.history.len()).contains(&history_len));
        // The view shows a delay only while the order waits to ship: an answer from
        // then shows the stored flag (hidden below again if it was not waiting).
        view.delayed_since_ms = order.more().and_then(|m| m.delayed_since_ms);
        // The changeable part (money, hold, delay, lines, address, note) as the first
        // later entry that changed it kept it (`HistoryEntry::before`).
        let later = &order.history[history_len..];
        // The first later change of money: it kept `before`, or (a cancel or return
        // of a plain order, see `Order::plain`) the money then followed from the
        // payment status.
        let first_change = later.iter().find(|h| {
            h.before.is_some() || matches!(h.status, OrderStatus::Cancelled | OrderStatus::Returned)
        });
        if let Some(before) = first_change.and_then(|h| h.before.as_deref()) {
            view.payment.paid_amount = before.amounts.paid;
            view.payment.refunded_amount = before.amounts.refunded;
            view.payment.refund_due_amount = before.amounts.refund_due;
            view.payment.refund_ref = before.refund_ref.to_string();
            view.hold = before.hold.as_ref().map(|h| {
                Box::new(crate::command::HoldView {
                    reason: h.reason,
                    note: h.note.to_string(),
                    at_ms: h.at_ms,
                    actor: Arc::clone(&self.actors[h.actor as usize]),
                })
            });
            view.delayed_since_ms = before.delayed_since_ms;
        } else if first_change.is_some() || payment != view.payment.status {
            // Nothing kept: a payment, or an order from before v1.1, whose money
            // followed its payment status.
            let amounts = crate::legacy::amounts_of_v3(payment, view.total);
            view.payment.paid_amount = amounts.paid;
            view.payment.refunded_amount = amounts.refunded;
            view.payment.refund_due_amount = amounts.refund_due;
            if first_change.is_some() {
                view.hold = None;
                view.delayed_since_ms = None;
            }
        }
        if let Some(modified) = later
            .iter()
            .find_map(|h| h.before.as_deref().and_then(|b| b.modified.as_deref()))
        {
            view.lines =
                crate::Few::map_slice(&modified.lines, |l| crate::command::OrderLineView {
                    sku: Arc::clone(&self.skus[l.sku.0 as usize].id),
                    qty: u64::from(l.qty),
                    unit_price: l.unit_price,
                });
            view.total = modified.total;
            view.payment.amount = modified.total;
            view.shipping_address = modified.address.clone();
            view.note = modified.note.to_string();
        }
        view.history.truncate(history_len);
        let last = view.history.last().expect("an order has history");
        view.status = last.status;
        view.updated_at_ms = last.at_ms;
        view.payment.status = payment;
        if payment == PaymentStatus::Unpaid {
            // Paid once, and everything else about money comes after.
            view.payment.payment_ref.clear();
            view.payment.paid_at_ms = None;
            view.payment.paid_amount = 0;
            view.payment.refunded_amount = 0;
            view.payment.refund_due_amount = 0;
        }
        if view.payment.refunded_amount == 0 {
            view.payment.refund_ref.clear();
        }
        if !matches!(
            view.status,
            OrderStatus::Confirmed | OrderStatus::Picking | OrderStatus::Packed
        ) {
            view.delayed_since_ms = None;
        }
        if !view
            .history
            .iter()
            .any(|h| h.status == OrderStatus::Shipped)
        {
            view.tracking_no.clear();
        }
        if view.status != OrderStatus::Cancelled {
            view.cancellation = None;
        }
        if view.status != OrderStatus::Returned {
            view.returned = None;
            view.return_kind = None;
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use rand_core::{Rng as _, SeedableRng};
    use rand_xoshiro::SplitMix64;

    use super::*;
    use crate::command::{Command, IdempotencyKey, Query};
    use crate::domain::{CancelReason, LineReq, OrderLineReq};
    use crate::event::Event;
    use crate::limits::IDEMPOTENCY_BUDGET_BYTES_MIN;
    use crate::state::SNAPSHOT_FORMAT;

    const T0: Millis = 1_000_000;
    const WINDOW_MS: u64 = 60_000;
    /// The smallest budget: under a thousand keys.
    const SMALL: IdempotencyPolicy = IdempotencyPolicy {
        window_ms: WINDOW_MS,
        budget_bytes: IDEMPOTENCY_BUDGET_BYTES_MIN,
    };

    /// A state and the log of what it applied, so that tests can replay it.
    struct Run {
        state: State,
        log: Vec<(Millis, Command, Option<IdempotencyKey>)>,
        events: Vec<Event>,
    }

    fn policy_command(policy: IdempotencyPolicy) -> Command {
        Command::SetIdempotencyPolicy {
            window_ms: policy.window_ms,
            budget_bytes: policy.budget_bytes,
        }
    }

    fn reserve(sku: &str, qty: u64) -> Command {
        Command::Reserve {
            lines: vec![LineReq {
                sku: sku.into(),
                qty,
            }],
            ttl_ms: 600_000,
            actor: "shop".into(),
        }
    }

    /// One unit each of A and B: a hold of two lines, whose answer is stored encoded.
    fn reserve_a_and_b() -> Command {
        Command::Reserve {
            lines: vec![
                LineReq {
                    sku: "A".into(),
                    qty: 1,
                },
                LineReq {
                    sku: "B".into(),
                    qty: 1,
                },
            ],
            ttl_ms: 600_000,
            actor: "shop".into(),
        }
    }

    impl Run {
        /// SKU A with plenty of stock, SKU B with 2 units, and `policy`.
        fn new(policy: IdempotencyPolicy) -> Run {
            let mut run = Run {
                state: State::new(),
                log: Vec::new(),
                events: Vec::new(),
            };
            for (sku, on_hand) in [("A", 1_000_000), ("B", 2)] {
                let define = Command::DefineSku {
                    sku: sku.into(),
                    name: String::new(),
                    on_hand,
                    low_stock_threshold: 0,
                };
                run.apply(T0, define, None).expect("defined");
            }
            if policy != IdempotencyPolicy::INITIAL {
                run.apply(T0, policy_command(policy), None).expect("set");
            }
            run
        }

        /// Apply with an optional key (fingerprint: the command's debug text).
        fn apply(&mut self, at: Millis, command: Command, key: Option<&str>) -> Outcome {
            self.apply_logged(at, command, key).0
        }

        fn apply_logged(
            &mut self,
            at: Millis,
            command: Command,
            key: Option<&str>,
        ) -> (Outcome, bool) {
            let key = key.map(|k| IdempotencyKey {
                key: k.into(),
                fingerprint: crate::fnv1a64(format!("{command:?}").as_bytes()),
            });
            let applied = self
                .state
                .apply(&command, key.as_ref(), at, &mut self.events);
            let logged = applied.lsn.is_some();
            if logged {
                self.log.push((at, command, key));
            }
            (applied.outcome, logged)
        }

        fn replayed(&self) -> State {
            let mut state = State::new();
            let mut events = Vec::new();
            for (at, command, key) in &self.log {
                let applied = state.apply(command, key.as_ref(), *at, &mut events);
                assert!(applied.lsn.is_some(), "a logged command replays as logged");
            }
            state
        }

        fn stats(&self) -> IdempotencyStats {
            self.state.idempotency_stats()
        }
    }

    fn held_id(outcome: &Outcome) -> ReservationId {
        match outcome {
            Ok(Reply::Reservation(v)) => v.id,
            other => panic!("not a reservation: {other:?}"),
        }
    }

    #[test]
    fn at_the_budget_the_oldest_keys_are_forgotten_first_and_no_write_is_refused() {
        let mut run = Run::new(SMALL);
        let keys_max = run.stats().keys_max;
        assert!((800..900).contains(&keys_max), "{keys_max}");
        let n = 3 * keys_max;
        let mut originals = Vec::new();
        for i in 0..n {
            let (outcome, logged) =
                run.apply_logged(T0 + i, reserve("A", 1), Some(&format!("k{i}")));
            // A new hold every time: never refused, never taken for another key.
            assert_eq!(held_id(&outcome), ReservationId(i + 1), "key {i}");
            assert!(logged);
            let stats = run.stats();
            assert!(stats.bytes <= SMALL.budget_bytes, "{stats:?}");
            assert_eq!(stats.keys, (i + 1).min(keys_max));
            originals.push(outcome);
        }
        let stats = run.stats();
        let oldest = n - keys_max;
        assert!(stats.at_budget(T0 + n));
        assert_eq!(stats.oldest_at_ms, Some(T0 + oldest));
        let now = T0 + n;
        assert_eq!(stats.effective_window_ms(now), keys_max);
        // Once the keys forgotten for room would have expired anyway, the window is
        // whole again.
        assert!(!stats.at_budget(T0 + oldest - 1 + WINDOW_MS));
        assert_eq!(
            stats.effective_window_ms(T0 + oldest - 1 + WINDOW_MS),
            WINDOW_MS
        );
        // The newest and the oldest remembered: the original answers, nothing logged.
        for i in [n - 1, n - 2, oldest + 1, oldest] {
            let (again, logged) = run.apply_logged(now, reserve("A", 1), Some(&format!("k{i}")));
            assert_eq!(again, originals[i as usize], "key {i}");
            assert!(!logged);
        }
        // Forgotten: the request is new again, and now the oldest goes.
        let forgotten = oldest - 1;
        let again = run.apply(now, reserve("A", 1), Some(&format!("k{forgotten}")));
        assert_eq!(held_id(&again), ReservationId(n + 1));
        assert_eq!(run.stats().oldest_at_ms, Some(T0 + oldest + 1));
        assert_eq!(run.replayed().digest(), run.state.digest());
    }

    #[test]
    fn stored_answers_count_against_the_budget() {
        let mut run = Run::new(SMALL);
        let keys_max = run.stats().keys_max;
        // A hold of two lines is stored encoded: fewer keys fit.
        let two_lines = reserve_a_and_b();
        let mut at = T0;
        for i in 0..keys_max {
            let release = Command::ReleaseReservation {
                id: ReservationId(i + 1),
                actor: "shop".into(),
            };
            assert!(
                run.apply(at, two_lines.clone(), Some(&format!("k{i}")))
                    .is_ok()
            );
            assert!(run.apply(at, release, None).is_ok());
            at += 1;
        }
        let stats = run.stats();
        assert!(stats.at_budget(at), "{stats:?}");
        assert!(stats.keys < keys_max * 3 / 4, "{stats:?}");
        assert!(stats.bytes <= SMALL.budget_bytes);
        let stored = run
            .state
            .idempotency
            .iter()
            .filter(|e| matches!(e.answer, Answer::Stored(_)))
            .count() as u64;
        assert_eq!(stored, stats.keys);
    }

    #[test]
    fn keys_past_the_window_are_forgotten() {
        let mut run = Run::new(SMALL);
        let first = run.apply(T0, reserve("A", 1), Some("k"));
        let (again, logged) = run.apply_logged(T0 + WINDOW_MS - 1, reserve("A", 1), Some("k"));
        assert_eq!(again, first);
        assert!(!logged);
        // At the window's end the key is new again.
        let (second, logged) = run.apply_logged(T0 + WINDOW_MS, reserve("A", 1), Some("k"));
        assert!(logged);
        assert_ne!(held_id(&second), held_id(&first));
        let again = run.apply(T0 + WINDOW_MS + 1, reserve("A", 1), Some("k"));
        assert_eq!(again, second);
        assert_eq!(run.stats().keys, 1);
        // Any logged command forgets the keys past the window: the memory goes back.
        let later = T0 + 3 * WINDOW_MS;
        assert!(run.apply(later, reserve("A", 1), None).is_ok());
        let stats = run.stats();
        assert_eq!((stats.keys, stats.bytes, stats.oldest_at_ms), (0, 0, None));
        assert_eq!(stats.effective_window_ms(later), WINDOW_MS);
        assert_eq!(run.replayed().digest(), run.state.digest());
    }

    /// One keyed command of every kind of answer, then changes to what they made.
    fn mixed_run() -> (Run, Vec<(Command, &'static str, Outcome)>) {
        let mut run = Run::new(SMALL);
        let order = Command::CreateOrder {
            order_no: "N-1".into(),
            customer_id: "c1".into(),
            lines: vec![OrderLineReq {
                sku: "A".into(),
                qty: 2,
                unit_price: 150,
            }],
            payment_ttl_ms: 600_000,
            reservation_id: None,
            actor: "shop".into(),
        };
        let pay = Command::PayOrder {
            id: OrderId(1),
            amount: 300,
            payment_ref: "p-1".into(),
            actor: "shop".into(),
        };
        let keyed = [
            (reserve("A", 3), "held"),
            (reserve_a_and_b(), "two-lines"),
            (reserve("B", 5), "short"),
            (reserve("A", 0), "invalid"),
            (order, "order"),
            (pay, "pay"),
            (
                Command::CommitReservation {
                    id: ReservationId(1),
                    actor: "shop".into(),
                },
                "commit",
            ),
        ];
        let mut originals = Vec::new();
        for (i, (command, key)) in keyed.into_iter().enumerate() {
            let outcome = run.apply(T0 + i as u64, command.clone(), Some(key));
            originals.push((command, key, outcome));
        }
        // Move on: ship (with a tracking number), deliver, return, refund.
        let at = T0 + 100;
        for to in [
            OrderStatus::Picking,
            OrderStatus::Packed,
            OrderStatus::Shipped,
            OrderStatus::Delivered,
        ] {
            let advance = Command::AdvanceOrder {
                id: OrderId(1),
                to,
                note: String::new(),
                tracking_no: "TRK-1".into(),
                actor: "ops".into(),
            };
            assert!(run.apply(at, advance, None).is_ok());
        }
        let give_back = Command::ReturnOrder {
            id: OrderId(1),
            restock: true,
            reason: "damaged".into(),
            note: String::new(),
            actor: "ops".into(),
        };
        assert!(run.apply(at, give_back, None).is_ok());
        let refund = Command::RefundOrder {
            id: OrderId(1),
            refund_ref: "rf-1".into(),
            actor: "ops".into(),
        };
        assert!(run.apply(at, refund, None).is_ok());
        let cancel = Command::CancelOrder {
            id: OrderId(1),
            reason: CancelReason::CustomerRequest,
            note: String::new(),
            actor: "ops".into(),
        };
        assert!(run.apply(at, cancel, None).is_err());
        (run, originals)
    }

    #[test]
    fn every_kind_of_answer_survives_a_snapshot_and_a_replay() {
        let (run, originals) = mixed_run();
        let mut kinds: Vec<&str> = run
            .state
            .idempotency
            .iter()
            .map(|e| match e.answer {
                Answer::Order { .. } => "order",
                Answer::Held { .. } => "held",
                Answer::Short { .. } => "short",
                Answer::Stored(_) => "stored",
                Answer::Forgotten => "forgotten",
            })
            .collect();
        kinds.dedup();
        assert_eq!(
            kinds,
            ["held", "stored", "short", "stored", "order", "stored"]
        );
        let restored = State::decode_snapshot(&run.state.encode_snapshot()).expect("decodes");
        assert_eq!(restored.digest(), run.state.digest());
        assert_eq!(restored.idempotency_stats(), run.state.idempotency_stats());
        let replayed = run.replayed();
        assert_eq!(replayed.digest(), run.state.digest());
        for mut state in [run.state, restored, replayed] {
            for (command, key, original) in &originals {
                let key = IdempotencyKey {
                    key: (*key).into(),
                    fingerprint: crate::fnv1a64(format!("{command:?}").as_bytes()),
                };
                let again = state.apply(command, Some(&key), T0 + 1_000, &mut Vec::new());
                assert_eq!(&again.outcome, original, "{}", key.key);
                assert_eq!(again.lsn, None);
            }
        }
    }

    /// The hand-written entry encoding of snapshots is the derived one.
    #[test]
    fn entries_are_written_as_derived() {
        let (run, _) = mixed_run();
        let config = bincode::config::standard()
            .with_little_endian()
            .with_fixed_int_encoding();
        let mut kinds = 0;
        for entry in run.state.idempotency.iter() {
            let derived = bincode::encode_to_vec(entry, config).expect("encodes");
            let mut written = bincode::enc::write::SizeWriter::default();
            write_entry(entry, &mut written).expect("written");
            let mut by_hand = Vec::new();
            bincode::encode_into_std_write(WrittenByHand(entry), &mut by_hand, config)
                .expect("encodes");
            assert_eq!(by_hand, derived, "{entry:?}");
            assert_eq!(written.bytes_written, derived.len());
            kinds += 1;
        }
        assert_eq!(kinds, 7);
    }

    struct WrittenByHand<'a>(&'a Entry);

    impl Encode for WrittenByHand<'_> {
        fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
            write_entry(self.0, encoder.writer())
        }
    }

    /// A data dir written before the window and budget (snapshot format 1, keys as
    /// text with whole outcomes) opens, and its keys answer as before.
    #[test]
    fn a_format_1_snapshot_is_upgraded_with_its_keys() {
        let (run, originals) = mixed_run();
        let crate::codec::AnySnapshot::Current(current) =
            crate::codec::decode_snapshot(&run.state.encode_snapshot()).expect("decodes")
        else {
            panic!("the current format");
        };
        let keys = originals
            .iter()
            .enumerate()
            .map(
                |(i, (command, key, outcome))| crate::state::IdempotencyEntryV1 {
                    key: (*key).into(),
                    fingerprint: crate::fnv1a64(format!("{command:?}").as_bytes()),
                    at_ms: T0 + i as u64,
                    outcome: as_format_2(outcome),
                },
            )
            .collect();
        let (v1, _) = current.with_idempotency(1, keys);
        let bytes = crate::codec::encode_snapshot_v1(&crate::legacy::downgrade_to_v3(v1, |k| k));
        let mut upgraded = State::decode_snapshot(&bytes).expect("format 1 opens");
        assert_eq!(upgraded.idempotency_policy(), IdempotencyPolicy::INITIAL);
        assert_eq!(upgraded.idempotency_stats().keys, originals.len() as u64);
        for (command, key, original) in &originals {
            let key = IdempotencyKey {
                key: (*key).into(),
                fingerprint: crate::fnv1a64(format!("{command:?}").as_bytes()),
            };
            let again = upgraded.apply(command, Some(&key), T0 + 1_000, &mut Vec::new());
            assert_eq!(again.outcome, as_upgraded(original), "{}", key.key);
        }
        // Written again, it is the current format.
        let again = State::decode_snapshot(&upgraded.encode_snapshot()).expect("decodes");
        assert_eq!(again.digest(), upgraded.digest());
    }

    /// `outcome` as formats 1 and 2 stored it. The one validation refusal of
    /// [`mixed_run`] is written with the text those formats held.
    fn as_format_2(outcome: &Outcome) -> crate::legacy::OutcomeV2 {
        use crate::legacy::RejectionV2 as Old;
        outcome.clone().map_err(|rejection| match rejection {
            Rejection::Validation { field, violation } => {
                let qty = Field::Line {
                    index: 0,
                    part: crate::command::LineField::Qty,
                };
                assert_eq!(field, qty, "{violation:?}");
                Old::Validation {
                    field: "lines[0].qty".into(),
                    detail: "must be between 1 and 1000000".into(),
                }
            }
            Rejection::InsufficientStock { lines } => Old::InsufficientStock { lines },
            Rejection::UnknownSku { sku } => Old::UnknownSku { sku },
            Rejection::UnknownOrder { order } => Old::UnknownOrder { order },
            Rejection::UnknownReservation { id } => Old::UnknownReservation { id },
            Rejection::InvalidTransition { detail } => Old::InvalidTransition { detail },
            Rejection::OrderShipped { id, status } => Old::OrderShipped { id, status },
            Rejection::DuplicateOrderNo { order_no, id } => Old::DuplicateOrderNo { order_no, id },
            Rejection::IdempotencyConflict { key } => Old::IdempotencyConflict { key },
            Rejection::LimitReached { what } => Old::LimitReached { what },
            other => panic!("no format-2 form: {other:?}"),
        })
    }

    /// What an answer stored by format 1 or 2 replays as: an old validation refusal
    /// keeps its text (the API renders it verbatim); everything else is unchanged.
    fn as_upgraded(outcome: &Outcome) -> Outcome {
        crate::legacy::upgrade_outcome(as_format_2(outcome))
    }

    /// A data dir written before refusals were typed (snapshot format 2: stored
    /// answers hold a refusal with a field path and a sentence) opens, and its keys
    /// answer with the old text.
    #[test]
    fn a_format_2_snapshot_upgrades_its_stored_answers() {
        let (run, originals) = mixed_run();
        let crate::codec::AnySnapshot::Current(mut old) =
            crate::codec::decode_snapshot(&run.state.encode_snapshot()).expect("decodes")
        else {
            panic!("the current format");
        };
        // Write it as format 2 wrote it: every stored answer in that format's layout.
        old.format = 2;
        let mut stored = 0;
        for entry in &mut old.idempotency.entries {
            if let Answer::Stored(bytes) = &mut entry.answer {
                let outcome = crate::codec::decode_outcome(bytes).expect("decodes");
                *bytes = crate::codec::encode_outcome_v2(&as_format_2(&outcome)).into();
                stored += 1;
            }
        }
        assert!(
            stored >= 1,
            "the run stores at least the validation refusal"
        );
        let old = crate::legacy::downgrade_to_v3(old, crate::legacy::downgrade_index);
        let bytes = bincode::encode_to_vec(
            &old,
            bincode::config::standard()
                .with_little_endian()
                .with_fixed_int_encoding(),
        )
        .expect("encodes");
        let mut upgraded = State::decode_snapshot(&bytes).expect("format 2 opens");
        assert_eq!(upgraded.idempotency_stats().keys, originals.len() as u64);
        let mut legacy = 0;
        for (command, key, original) in &originals {
            let key = IdempotencyKey {
                key: (*key).into(),
                fingerprint: crate::fnv1a64(format!("{command:?}").as_bytes()),
            };
            let again = upgraded.apply(command, Some(&key), T0 + 1_000, &mut Vec::new());
            let expected = as_upgraded(original);
            if let Err(Rejection::Validation { field, violation }) = &expected {
                assert_eq!(field, &Field::Legacy("lines[0].qty".into()));
                assert_eq!(
                    violation,
                    &Violation::Legacy("must be between 1 and 1000000".into())
                );
                legacy += 1;
            }
            assert_eq!(again.outcome, expected, "{}", key.key);
        }
        assert_eq!(legacy, 1);
        // Written again, it is the current format, and reads back the same.
        let bytes = upgraded.encode_snapshot();
        assert_eq!(bytes[..4], SNAPSHOT_FORMAT.to_le_bytes());
        let again = State::decode_snapshot(&bytes).expect("decodes");
        assert_eq!(again.digest(), upgraded.digest());
    }

    #[test]
    fn the_policy_is_logged_and_replay_does_not_depend_on_todays_flags() {
        let mut run = Run::new(IdempotencyPolicy::INITIAL);
        let n = 1_500;
        for i in 0..n {
            assert!(
                run.apply(T0 + i, reserve("A", 1), Some(&format!("k{i}")))
                    .is_ok()
            );
        }
        assert_eq!(run.stats().keys, n);
        // A smaller budget: the newest that fit are kept, the oldest forgotten.
        let now = T0 + n;
        let (reply, logged) = run.apply_logged(now, policy_command(SMALL), None);
        assert!(logged);
        assert_eq!(
            reply,
            Ok(Reply::IdempotencyPolicy {
                window_ms: SMALL.window_ms,
                budget_bytes: SMALL.budget_bytes
            })
        );
        let stats = run.stats();
        assert_eq!(stats.policy, SMALL);
        assert_eq!(stats.keys, stats.keys_max);
        assert_eq!(stats.oldest_at_ms, Some(T0 + n - stats.keys_max));
        // The same policy again changes nothing and logs nothing; a bad one is refused.
        let digest = run.state.digest();
        let (_, logged) = run.apply_logged(now, policy_command(SMALL), None);
        assert!(!logged);
        let bad = IdempotencyPolicy {
            budget_bytes: 1,
            ..SMALL
        };
        let (refused, logged) = run.apply_logged(now, policy_command(bad), None);
        assert_eq!(
            refused.expect_err("refused"),
            Rejection::invalid(
                Field::BudgetBytes,
                Violation::OutOfRange {
                    min: IDEMPOTENCY_BUDGET_BYTES_MIN,
                    max: IDEMPOTENCY_BUDGET_BYTES_MAX,
                    unit: Unit::Bytes,
                }
            )
        );
        assert!(!logged);
        assert_eq!(run.state.digest(), digest);
        // A wider window keeps every key; later keys go under the new policy.
        let wide = IdempotencyPolicy {
            window_ms: 10 * WINDOW_MS,
            ..SMALL
        };
        assert!(run.apply(now + 1, policy_command(wide), None).is_ok());
        for i in n..n + 10 {
            assert!(
                run.apply(now + 2, reserve("A", 1), Some(&format!("k{i}")))
                    .is_ok()
            );
        }
        // Replay starts from a fresh state (the initial policy) and follows the log.
        let replayed = run.replayed();
        assert_eq!(replayed.idempotency_policy(), wide);
        assert_eq!(replayed.digest(), run.state.digest());
        assert_eq!(
            replayed.query(&Query::IdempotencyStats),
            run.state.query(&Query::IdempotencyStats)
        );
    }

    /// The table against a plain model: remembered keys found, forgotten ones not,
    /// with clustered homes and runs that wrap around the end of the table.
    #[test]
    fn the_table_finds_every_remembered_key_and_no_forgotten_one() {
        let mut index = IdempotencyIndex::new(SMALL);
        let keys_max = index.layout.keys_max;
        let mut live: VecDeque<(KeyHash, Millis)> = VecDeque::new();
        let mut gone: Vec<KeyHash> = Vec::new();
        let mut at = T0;
        let mut rng = SplitMix64::seed_from_u64(1);
        for i in 0..20 * keys_max {
            let x = rng.next_u64();
            // A third of the keys share eight homes, some at the very end of the
            // table; the rest spread.
            let first = match i % 3 {
                0 => u64::MAX - (x % 8),
                1 => (x % 8) << 56,
                _ => x,
            };
            let key = [first, i];
            at += x % 3;
            if i % 500 == 0 {
                at += WINDOW_MS; // everything expires now and then
            }
            index.forget_expired(at);
            while live
                .front()
                .is_some_and(|(_, t)| at.saturating_sub(*t) >= WINDOW_MS)
            {
                gone.push(live.pop_front().expect("front").0);
            }
            index.remember(Entry {
                key,
                fingerprint: i,
                at_ms: at,
                lsn: i + 1,
                answer: Answer::Held {
                    id: ReservationId(i),
                    sku: SkuIdx(0),
                    qty: 1,
                    ttl_ms: 1,
                },
            });
            live.push_back((key, at));
            if live.len() as u64 > keys_max {
                gone.push(live.pop_front().expect("front").0);
            }
            assert_eq!(index.len, live.len() as u64);
            if i % 211 == 0 {
                for (n, (key, _)) in live.iter().enumerate() {
                    let entry = index.get(key, at).expect("remembered");
                    assert_eq!(entry.key, *key, "live key {n}");
                }
                let start = gone.len().saturating_sub(2 * keys_max as usize);
                for key in &gone[start..] {
                    assert!(index.find(key).is_none());
                }
            }
        }
    }
}
