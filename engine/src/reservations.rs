//! Reservation storage. Ids are dense and increasing, so the newest reservations live
//! in a window indexed by `id - base`: no hashing, neighbours in memory. When the
//! window is full its oldest entries leave it: finished ones are forgotten, held ones
//! move to the overflow until they end. Bounded either way.
//!
//! The overflow is a deque of chunks of up to [`OVERFLOW_CHUNK_LEN`] holds in id
//! order, not a hash map and not a B-tree. Holds leave the window in id order, so a
//! hold joins the overflow by an append to its last chunk: nothing rehashes (a hash
//! table doubling at millions of old holds stopped the writer for hundreds of
//! milliseconds, `runtime/writer_iterations` in BENCHMARKS.md) and nothing splits (a
//! B-tree filled in key order leaves its nodes about half full: 174 bytes a one-line
//! hold against 96 here, and the kernel's zeroing of that fresh memory was a tenth
//! of the writer's time under a sustained batch load, BENCHMARKS.md "The overflow of old
//! holds"). A finished hold leaves a hole; a chunk is compacted once an eighth of
//! it is holes, dropped once empty, and merged with a neighbour when the two fit in
//! one; only the last chunk has room beyond its slots. So the slots take at most
//! 8/7 of the room of the holds, plus one chunk, whatever order holds end in (which
//! keeps one-line holds within `HOLD_BYTES_BOUND`). The window
//! itself takes its full room once it holds `EARLY_GROWTH_LEN` entries, so it never
//! doubles at hundreds of thousands (`engine_apply/place_2m_orders_growth`).

use std::collections::VecDeque;
use std::ops::Index;

use crate::domain::{ReservationId, ReservationStatus};
use crate::limits::FINISHED_RESERVATIONS_KEPT;
use crate::state::{EARLY_GROWTH_LEN, Reservation};

/// Holds per overflow chunk: 4,096 slots of about 90 bytes, a few hundred KiB, so a
/// lookup is a binary search over at most a few thousand chunks and then one chunk,
/// and compacting one chunk moves well under a millisecond of memory.
const OVERFLOW_CHUNK_LEN: usize = 4096;

/// Held reservations older than the window, in id order.
#[derive(Debug, Clone)]
struct Overflow {
    /// Never an empty chunk; ids increase across chunks and within each; every
    /// chunk is more than 7/8 holds; no two adjacent chunks fit in one (so a chunk
    /// header is shared, on average, by at least `chunk_len / 2` slots); every chunk
    /// but the last has no room beyond its slots, and the last at most `chunk_len`.
    chunks: VecDeque<OverflowChunk>,
    /// Holds in all chunks (holes not counted).
    len: usize,
    /// Slots per chunk: [`OVERFLOW_CHUNK_LEN`] but in tests.
    chunk_len: usize,
}

impl Default for Overflow {
    fn default() -> Self {
        Overflow {
            chunks: VecDeque::new(),
            len: 0,
            chunk_len: OVERFLOW_CHUNK_LEN,
        }
    }
}

#[derive(Debug, Clone)]
struct OverflowChunk {
    /// The id of each slot, increasing: searched without touching the slots.
    ids: Vec<u64>,
    /// `None` where a hold finished and was forgotten.
    slots: Vec<Option<Reservation>>,
    /// Slots that are `Some`.
    live: usize,
}

impl Overflow {
    /// The chunk and slot of `id`, hole or not.
    fn position(&self, id: u64) -> Option<(usize, usize)> {
        // The last chunk whose first id is at most `id`.
        let chunk = self
            .chunks
            .partition_point(|chunk| chunk.ids[0] <= id)
            .checked_sub(1)?;
        let slot = self.chunks[chunk].ids.binary_search(&id).ok()?;
        Some((chunk, slot))
    }

    fn get(&self, id: u64) -> Option<&Reservation> {
        let (chunk, slot) = self.position(id)?;
        self.chunks[chunk].slots[slot].as_ref()
    }

    fn get_mut(&mut self, id: u64) -> Option<&mut Reservation> {
        let (chunk, slot) = self.position(id)?;
        self.chunks[chunk].slots[slot].as_mut()
    }

    /// Append a hold newer than every hold here.
    fn push(&mut self, reservation: Reservation) {
        let id = reservation.id.0;
        let last = self.chunks.back().and_then(|chunk| chunk.ids.last());
        assert!(last.is_none_or(|&last| last < id), "overflow ids increase");
        if self
            .chunks
            .back()
            .is_none_or(|chunk| chunk.ids.len() == self.chunk_len)
        {
            self.chunks.push_back(OverflowChunk {
                ids: Vec::new(),
                slots: Vec::new(),
                live: 0,
            });
        }
        let chunk_len = self.chunk_len;
        let chunk = self.chunks.back_mut().expect("a chunk with room");
        if chunk.ids.len() == chunk.ids.capacity() {
            // New, or shrunk or merged to its length: room up to a full chunk, not
            // the doubling a push would take.
            chunk.ids.reserve_exact(chunk_len - chunk.ids.len());
            chunk.slots.reserve_exact(chunk_len - chunk.slots.len());
        }
        chunk.ids.push(id);
        chunk.slots.push(Some(reservation));
        chunk.live += 1;
        self.len += 1;
    }

    /// Forget the hold `id`, if it is here. A chunk an eighth holes is compacted
    /// (each compaction of `n` slots removes at least `n / 8` holes), an emptied one
    /// dropped, and neighbours that fit in one chunk are merged, so no two adjacent
    /// chunks hold `chunk_len` slots or fewer. Amortized O(1) moves per hold: a
    /// compaction is paid for by the holes it removes, a merge (at most a chunk's
    /// slots) by the creation of the chunk it removes, one per `chunk_len` pushes.
    fn remove(&mut self, id: u64) {
        let Some((index, slot)) = self.position(id) else {
            return;
        };
        let chunk = &mut self.chunks[index];
        if chunk.slots[slot].take().is_none() {
            return;
        }
        chunk.live -= 1;
        self.len -= 1;
        if chunk.live == 0 {
            // It was one slot (a chunk of more is compacted before its last hold
            // ends), so both neighbours were full: they do not fit in one.
            self.chunks.remove(index);
        } else if chunk.live * 8 <= chunk.slots.len() * 7 {
            let OverflowChunk { ids, slots, .. } = chunk;
            let mut kept = 0;
            for i in 0..slots.len() {
                if slots[i].is_some() {
                    ids.swap(kept, i);
                    slots.swap(kept, i);
                    kept += 1;
                }
            }
            ids.truncate(kept);
            slots.truncate(kept);
            let mut at = index;
            self.merge_with_next(at);
            if at > 0 && self.merge_with_next(at - 1) {
                at -= 1;
            }
            if at + 1 < self.chunks.len() {
                // No hold is appended here again: give the room back.
                let chunk = &mut self.chunks[at];
                chunk.ids.shrink_to_fit();
                chunk.slots.shrink_to_fit();
            }
        }
    }

    /// Merge chunk `index + 1` into chunk `index` if both fit in one; `true` if
    /// they did. The merged chunk's room is exactly its slots (a chunk that ends
    /// up last gets more at its next push).
    fn merge_with_next(&mut self, index: usize) -> bool {
        let Some(next) = self.chunks.get(index + 1) else {
            return false;
        };
        if self.chunks[index].slots.len() + next.slots.len() > self.chunk_len {
            return false;
        }
        let next = self.chunks.remove(index + 1).expect("checked");
        let chunk = &mut self.chunks[index];
        chunk.ids.reserve_exact(next.ids.len());
        chunk.slots.reserve_exact(next.slots.len());
        chunk.ids.extend(next.ids);
        chunk.slots.extend(next.slots);
        chunk.live += next.live;
        true
    }

    fn iter(&self) -> impl Iterator<Item = &Reservation> {
        self.chunks
            .iter()
            .flat_map(|chunk| chunk.slots.iter().flatten())
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Reservations {
    /// The id of `window[0]`.
    base: u64,
    window: VecDeque<Option<Reservation>>,
    /// Held reservations older than the window.
    overflow: Overflow,
    window_len_max: usize,
}

impl Default for Reservations {
    fn default() -> Self {
        Reservations::with_window(FINISHED_RESERVATIONS_KEPT)
    }
}

impl Reservations {
    pub fn with_window(window_len_max: usize) -> Reservations {
        assert!(window_len_max > 0);
        Reservations {
            base: 1,
            window: VecDeque::new(),
            overflow: Overflow::default(),
            window_len_max,
        }
    }

    pub fn get(&self, id: &ReservationId) -> Option<&Reservation> {
        match id.0.checked_sub(self.base) {
            Some(i) => self
                .window
                .get(usize::try_from(i).ok()?)
                .and_then(Option::as_ref),
            None => self.overflow.get(id.0),
        }
    }

    pub fn get_mut(&mut self, id: &ReservationId) -> Option<&mut Reservation> {
        match id.0.checked_sub(self.base) {
            Some(i) => self
                .window
                .get_mut(usize::try_from(i).ok()?)
                .and_then(Option::as_mut),
            None => self.overflow.get_mut(id.0),
        }
    }

    /// Add the next reservation: ids are handed out densely, in order.
    pub fn push(&mut self, reservation: Reservation) {
        if self.window.is_empty() && self.overflow.len == 0 {
            self.base = reservation.id.0;
        }
        assert_eq!(
            reservation.id.0,
            self.base + self.window.len() as u64,
            "reservation ids are dense"
        );
        self.window.push_back(Some(reservation));
        if self.window.len() == EARLY_GROWTH_LEN {
            // Take the window's full room now, while moving it is cheap: doubling
            // later copies up to half a million entries inside one command.
            self.window
                .reserve((self.window_len_max + 1).saturating_sub(EARLY_GROWTH_LEN));
        }
        while self.window.len() > self.window_len_max {
            let oldest = self.window.pop_front().expect("over the bound");
            self.base += 1;
            if let Some(r) = oldest.filter(|r| r.status == ReservationStatus::Held) {
                self.overflow.push(r);
            }
        }
    }

    /// The reservation pushed last: the window's newest entry.
    pub fn newest(&self) -> Option<&Reservation> {
        self.window.back().and_then(Option::as_ref)
    }

    /// A held reservation in the overflow map finished: forget it.
    pub fn finished(&mut self, id: ReservationId) {
        if id.0 < self.base {
            self.overflow.remove(id.0);
        }
    }

    /// Every reservation kept, in id order: the overflow's ids are all below the
    /// window's. Snapshots encode them in this order as they come
    /// (`the_overflow_agrees_with_a_map` checks it against a sorted map).
    pub fn iter(&self) -> impl Iterator<Item = &Reservation> {
        self.overflow.iter().chain(self.window.iter().flatten())
    }

    pub fn len(&self) -> usize {
        self.overflow.len + self.window.len()
    }

    /// Rebuild from a snapshot: `base` is the window's first id.
    pub fn restore(base: u64, mut all: Vec<Reservation>, window_len_max: usize) -> Reservations {
        all.sort_unstable_by_key(|r| r.id);
        let mut out = Reservations::with_window(window_len_max);
        out.base = base;
        for r in all {
            if r.id.0 < base {
                out.overflow.push(r);
                continue;
            }
            let i = (r.id.0 - base) as usize;
            while out.window.len() < i {
                out.window.push_back(None);
            }
            out.window.push_back(Some(r));
        }
        out
    }

    pub fn base(&self) -> u64 {
        self.base
    }
}

impl Index<&ReservationId> for Reservations {
    type Output = Reservation;
    fn index(&self, id: &ReservationId) -> &Reservation {
        self.get(id).expect("reservation exists")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;
    use crate::domain::SkuIdx;

    fn hold(id: u64) -> Reservation {
        Reservation {
            id: ReservationId(id),
            lines: vec![(SkuIdx(0), 1)].into_boxed_slice(),
            status: ReservationStatus::Held,
            created_at_ms: 0,
            expires_at_ms: 10,
            order: None,
            customer: None,
        }
    }

    #[test]
    fn old_held_reservations_overflow_and_finished_ones_are_forgotten() {
        let mut rs = Reservations::with_window(3);
        for id in 1..=3 {
            rs.push(hold(id));
        }
        rs.get_mut(&ReservationId(2)).expect("in window").status = ReservationStatus::Released;
        rs.push(hold(4)); // 1 leaves the window, still held: overflow
        rs.push(hold(5)); // 2 leaves the window, released: forgotten
        assert_eq!(
            rs.get(&ReservationId(1)).map(|r| r.status),
            Some(ReservationStatus::Held)
        );
        assert!(rs.get(&ReservationId(2)).is_none());
        assert_eq!(rs.len(), 4);
        rs.get_mut(&ReservationId(1)).expect("overflow").status = ReservationStatus::Expired;
        rs.finished(ReservationId(1));
        assert!(rs.get(&ReservationId(1)).is_none());
        assert!(rs.get(&ReservationId(6)).is_none());
        // A snapshot round trip keeps the same layout.
        let all: Vec<Reservation> = rs.iter().cloned().collect();
        let mut restored = Reservations::restore(rs.base(), all, 3);
        assert_eq!(restored.base(), rs.base());
        let ids = |r: &Reservations| {
            let mut ids: Vec<u64> = r.iter().map(|r| r.id.0).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(ids(&restored), ids(&rs));
        restored.push(hold(6));
        assert!(restored.get(&ReservationId(6)).is_some());
    }

    /// What a test does to the store: take the next hold, or end the `n`th of the
    /// holds still held (modulo their count).
    #[derive(Debug, Clone)]
    enum Op {
        Push,
        Finish(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![3 => Just(Op::Push), 2 => any::<usize>().prop_map(Op::Finish)],
            1..600,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
        /// The window and its overflow (chunks of 1 to 39 slots here, so pushes span
        /// many chunks, and ends leave holes, compactions, merges and dropped
        /// chunks) agree
        /// with a map of what must be found: every reservation still in the window,
        /// every held one older than it, nothing else; iteration in id order; every
        /// chunk under an eighth holes; no two neighbours that fit in one chunk; no
        /// room beyond the slots but in the last chunk, and there at most a chunk.
        #[test]
        fn the_overflow_agrees_with_a_map(
            window_len_max in 1usize..12,
            chunk_len in 1usize..40,
            ops in ops(),
        ) {
            let mut rs = Reservations::with_window(window_len_max);
            rs.overflow.chunk_len = chunk_len;
            let mut expected: BTreeMap<u64, ReservationStatus> = BTreeMap::new();
            let mut next_id = 1u64;
            for op in ops {
                match op {
                    Op::Push => {
                        rs.push(hold(next_id));
                        prop_assert_eq!(rs.newest().map(|r| r.id), Some(ReservationId(next_id)));
                        expected.insert(next_id, ReservationStatus::Held);
                        next_id += 1;
                        // What left the window: finished ones are forgotten.
                        let base = next_id.saturating_sub(window_len_max as u64).max(1);
                        expected.retain(|&id, status| id >= base || *status == ReservationStatus::Held);
                    }
                    Op::Finish(n) => {
                        let held: Vec<u64> = expected
                            .iter()
                            .filter(|(_, status)| **status == ReservationStatus::Held)
                            .map(|(&id, _)| id)
                            .collect();
                        if held.is_empty() {
                            continue;
                        }
                        let id = held[n % held.len()];
                        rs.get_mut(&ReservationId(id)).expect("held").status =
                            ReservationStatus::Released;
                        rs.finished(ReservationId(id));
                        if id < rs.base() {
                            expected.remove(&id);
                        } else {
                            expected.insert(id, ReservationStatus::Released);
                        }
                    }
                }
                let found: Vec<(u64, ReservationStatus)> =
                    rs.iter().map(|r| (r.id.0, r.status)).collect();
                let wanted: Vec<(u64, ReservationStatus)> =
                    expected.iter().map(|(&id, &status)| (id, status)).collect();
                prop_assert_eq!(&found, &wanted);
                for id in 0..next_id + 2 {
                    prop_assert_eq!(
                        rs.get(&ReservationId(id)).map(|r| r.status),
                        expected.get(&id).copied(),
                        "id {}", id
                    );
                }
                prop_assert_eq!(rs.overflow.len, expected.range(..rs.base()).count());
                let chunks = &rs.overflow.chunks;
                for (chunk, next) in chunks.iter().zip(chunks.iter().skip(1)) {
                    prop_assert!(chunk.slots.len() + next.slots.len() > chunk_len, "neighbours fit in one");
                }
                for (i, chunk) in chunks.iter().enumerate() {
                    let room = chunk.slots.capacity().max(chunk.ids.capacity());
                    if i + 1 < chunks.len() {
                        prop_assert_eq!(room, chunk.slots.len(), "room beyond the slots");
                    } else {
                        prop_assert!(room <= chunk_len.max(chunk.slots.len()), "the last chunk's room");
                    }
                    prop_assert!(chunk.live * 8 > chunk.slots.len() * 7, "a chunk an eighth holes");
                    prop_assert_eq!(chunk.live, chunk.slots.iter().flatten().count());
                    prop_assert_eq!(chunk.ids.len(), chunk.slots.len());
                }
            }
        }
    }
}
