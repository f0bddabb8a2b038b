//! Idempotency keys: which keyed requests were already answered, and with what.
//!
//! Keys are remembered for a retention window, within a memory budget. Both are state,
//! set by the logged [`Command::SetIdempotencyPolicy`], so replay never depends on the
//! flags of the process that replays. A key older than the window is forgotten; when
//! a new key does not fit in the budget, the oldest keys are forgotten first. Nothing
//! here ever refuses a write: at the budget, what shrinks is the window.
//!
//! Per key, at the budget, 64 bytes:
//!
//! ```text
//! ring entry (56 B)  key hash 16 | request fingerprint 8 | time 8 | answer 24
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
//!   n² / 2^129: 10^-21 for the 33 M keys of the default budget.
//! - On purpose, answering for someone else's key needs a second preimage of SHA-256
//!   (2^128 work), and knowing a key and its request already lets one replay it, so a
//!   collision gives nothing more. Colliding two keys of one's own (2^64 work) only
//!   confuses one's own requests.
//! - Placement in the table is by the hash too, so a client cannot aim keys at one
//!   region of the table to make probing slow.

use std::collections::VecDeque;
use std::sync::Arc;

use bincode::enc::Encoder;
use bincode::error::EncodeError;
use bincode::{Decode, Encode};
use sha2::{Digest, Sha256};

use crate::command::{LineView, OrderView, Outcome, Rejection, Reply, ReservationView, Shortage};
use crate::domain::{
    Millis, OrderId, OrderStatus, PaymentStatus, ReservationId, ReservationStatus, SkuIdx,
};
use crate::limits::{
    HISTORY_PER_ORDER_MAX, IDEMPOTENCY_BUDGET_BYTES_DEFAULT, IDEMPOTENCY_BUDGET_BYTES_MAX,
    IDEMPOTENCY_BUDGET_BYTES_MIN, IDEMPOTENCY_WINDOW_MS_DEFAULT, IDEMPOTENCY_WINDOW_MS_MAX,
    IDEMPOTENCY_WINDOW_MS_MIN,
};
use crate::state::State;

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
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        if !(IDEMPOTENCY_WINDOW_MS_MIN..=IDEMPOTENCY_WINDOW_MS_MAX).contains(&self.window_ms) {
            return Err((
                "window_ms",
                format!(
                    "must be between {IDEMPOTENCY_WINDOW_MS_MIN} and {IDEMPOTENCY_WINDOW_MS_MAX} ms"
                ),
            ));
        }
        if !(IDEMPOTENCY_BUDGET_BYTES_MIN..=IDEMPOTENCY_BUDGET_BYTES_MAX)
            .contains(&self.budget_bytes)
        {
            return Err((
                "budget_bytes",
                format!(
                    "must be between {IDEMPOTENCY_BUDGET_BYTES_MIN} and {IDEMPOTENCY_BUDGET_BYTES_MAX} bytes"
                ),
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
    /// A new key would make the index forget one that is still within the window.
    pub at_budget: bool,
}

impl IdempotencyStats {
    /// How far back keys are remembered: the configured window, or, at the budget,
    /// the age of the oldest key remembered (never more than the window).
    pub fn effective_window_ms(&self, now_ms: Millis) -> u64 {
        match self.oldest_at_ms {
            Some(oldest) if self.at_budget => {
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
const _: () = assert!(ENTRY_BYTES == 56);
const _: () = assert!(IDEMPOTENCY_KEY_BYTES == 64);
// Every key the largest budget holds has its own slot number.
const _: () = assert!(IDEMPOTENCY_BUDGET_BYTES_MAX / IDEMPOTENCY_KEY_BYTES < SLOT_MOD / 2);

/// Sizes that follow from the budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    keys_max: u64,
    chunk_len: u64,
    chunks_max: u64,
    table_slots: u64,
}

impl Layout {
    fn of(budget_bytes: u64) -> Layout {
        let rough = budget_bytes / IDEMPOTENCY_KEY_BYTES;
        // About 256 chunks at the budget, so a chunk is a small part of it.
        let chunk_len = (rough / 256).next_power_of_two().clamp(16, 16_384);
        // The keys span at most two chunks more than they fill: one part-used at each end.
        let chunks_max = rough / chunk_len + 2;
        let slack = 2 * chunk_len * ENTRY_BYTES + chunks_max * CHUNK_HEADER_BYTES;
        let keys_max = budget_bytes.saturating_sub(slack) / IDEMPOTENCY_KEY_BYTES;
        assert!(keys_max > 0, "budget {budget_bytes} holds no key");
        Layout {
            keys_max,
            chunk_len,
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
            at_budget: !self.fits(0),
        }
    }

    fn entry(&self, seq: u64) -> &Entry {
        debug_assert!(seq >= self.first_seq && seq < self.first_seq + self.len);
        let c = self.layout.chunk_len;
        let chunk = (seq / c - self.first_seq / c) as usize;
        &self.chunks[chunk][(seq % c) as usize]
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
    /// remembered (no answer can be: the smallest budget holds the largest).
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
            if self.len == 0 {
                return;
            }
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
        let c = self.layout.chunk_len;
        let front = &mut self.chunks[0][(seq % c) as usize];
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
        } else if self.first_seq.is_multiple_of(c) {
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
            .map_err(|(field, detail)| format!("idempotency policy {field} {detail}"))?;
        let count = s.entries.len() as u64;
        let mut index = IdempotencyIndex::new(s.policy);
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
        Ok(index)
    }
}

/// The index as written to a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct IndexSnapshot {
    pub policy: IdempotencyPolicy,
    pub first_seq: u64,
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
        index.len.encode(encoder)?;
        for entry in index.iter() {
            entry.encode(encoder)?;
        }
        Ok(())
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
                lines: vec![LineView {
                    sku: Arc::clone(&self.skus[sku.0 as usize].id),
                    qty: u64::from(*qty),
                }],
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
        view.history.truncate(history_len);
        let last = view.history.last().expect("an order has history");
        view.status = last.status;
        view.updated_at_ms = last.at_ms;
        view.payment.status = payment;
        if payment == PaymentStatus::Unpaid {
            view.payment.payment_ref.clear();
            view.payment.paid_at_ms = None;
        }
        if payment != PaymentStatus::Refunded {
            view.payment.refund_ref.clear();
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
        }
        view
    }
}
