//! The stock board: every SKU's stock as the follower last applied it, readable
//! from any thread without a queue.
//!
//! "How many are left" is the hottest request of a flash sale. Through the
//! follower's queue it costs two cross-thread hand-offs; from the board it costs
//! a read lock and a map lookup on the HTTP worker itself.
//!
//! Linearizable like every read (ARCHITECTURE.md, "Reads"): a reader notes the
//! durable LSN when it arrives (its read index) and may answer from the board if
//! the board has applied at least that LSN, or (below) if no record past the
//! board's LSN changed the SKU. Otherwise it waits on its own task for the board
//! to move (`EngineHandle::read_sku_waiting`), or takes the follower's queue. The
//! follower updates the SKUs a batch touched and then raises `applied_lsn`
//! (release), so a reader that sees the LSN (acquire) sees those SKUs. The board holds only durable state: the follower applies only
//! durable records.
//!
//! Under writes the board is nearly always a batch behind the read index, and every
//! read then waited at the follower. Yet a read of one SKU needs only the records
//! that changed that SKU. So the writer notes, for each SKU, the LSN of the last
//! record it applied that changed it ([`StockBoard::note_changed`]), before that
//! record goes to the log. A board behind the read index still answers for a SKU
//! whose last change is at or below the board's LSN: every record that changed
//! it and is durable at the read index (so every acknowledged one) was applied by
//! the writer before the durable LSN passed it, hence noted before the reader read
//! the read index, hence is at or below the note the reader loads next, which is
//! at or below what the board has applied. A record that is noted but not durable
//! only makes the reader wait, never see it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use parking_lot::RwLock;

use crate::command::SkuView;
use crate::domain::SkuIdx;
use crate::limits::SKUS_MAX;

#[derive(Debug, Default)]
pub struct StockBoard {
    skus: RwLock<HashMap<Arc<str>, (SkuView, SkuIdx)>>,
    /// The LSN the board reflects, in the measure of a read index.
    applied_lsn: AtomicU64,
    /// Per SKU, the LSN (in the same measure) of the last record the writer applied
    /// that changed it; ahead of `applied_lsn` while that record is on its way.
    changed_lsn: ChangedLsns,
    /// Readers waiting for the board to move (`EngineHandle::read_sku_waiting`):
    /// woken by every publish, and when the follower starts a snapshot or stops.
    moved: tokio::sync::Notify,
    /// The follower stopped: the board moves no more.
    closed: std::sync::atomic::AtomicBool,
}

/// SKUs per chunk of [`ChangedLsns`].
const CHANGED_CHUNK_LEN: usize = 4096;

/// One LSN per SKU, in chunks made when the first SKU of a chunk is noted: room for
/// `SKUS_MAX` without taking memory for SKUs never defined (8 bytes per SKU).
#[derive(Debug)]
struct ChangedLsns {
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl Default for ChangedLsns {
    fn default() -> Self {
        ChangedLsns {
            chunks: (0..SKUS_MAX.div_ceil(CHANGED_CHUNK_LEN))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }
}

impl ChangedLsns {
    /// A SKU past `SKUS_MAX` (only a state restored from a snapshot beyond the
    /// limits could hold one) is not noted: `get` says it changed, always.
    fn note(&self, idx: SkuIdx, lsn: u64) {
        let i = idx.0 as usize;
        let Some(slot) = self.chunks.get(i / CHANGED_CHUNK_LEN) else {
            return;
        };
        let chunk =
            slot.get_or_init(|| (0..CHANGED_CHUNK_LEN).map(|_| AtomicU64::new(0)).collect());
        chunk[i % CHANGED_CHUNK_LEN].store(lsn, Ordering::Release);
    }

    /// 0 for a SKU never noted (its chunk not made yet); `u64::MAX` past the room.
    fn get(&self, idx: SkuIdx) -> u64 {
        let i = idx.0 as usize;
        match self.chunks.get(i / CHANGED_CHUNK_LEN) {
            None => u64::MAX,
            Some(slot) => slot.get().map_or(0, |chunk| {
                chunk[i % CHANGED_CHUNK_LEN].load(Ordering::Acquire)
            }),
        }
    }
}

/// What the board can say about one SKU for a read index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoardRead {
    Sku(SkuView),
    /// The board is behind the read index, but no record after the board's LSN
    /// changed this SKU (as far as the writer has applied): the same answer.
    Unchanged(SkuView),
    /// The SKU does not exist as of the read index.
    Unknown,
    /// The board is behind the read index: ask the follower.
    Behind,
}

impl StockBoard {
    /// The SKU as of a state that includes `read_index` (the read index loaded
    /// before this call).
    pub fn read(&self, sku: &str, read_index: u64) -> BoardRead {
        let applied_lsn = self.applied_lsn.load(Ordering::Acquire);
        let current = applied_lsn >= read_index;
        match self.skus.read().get(sku) {
            Some((view, _)) if current => BoardRead::Sku(view.clone()),
            // Loaded after the read index: see the module's comment.
            Some((view, idx)) if self.changed_lsn.get(*idx) <= applied_lsn => {
                BoardRead::Unchanged(view.clone())
            }
            Some(_) => BoardRead::Behind,
            None if current => BoardRead::Unknown,
            // A SKU defined after the board's LSN may exist at the read index.
            None => BoardRead::Behind,
        }
    }

    /// The writer applied a record that changed `idx`, reaching `lsn`; called
    /// before that record is handed to the log.
    pub(crate) fn note_changed(&self, idx: SkuIdx, lsn: u64) {
        self.changed_lsn.note(idx, lsn);
    }

    /// A future that completes at the board's next move (or `wake_readers`), from
    /// the moment it is made, before its first poll.
    pub(crate) fn moved(&self) -> tokio::sync::futures::Notified<'_> {
        self.moved.notified()
    }

    /// Wake every reader waiting for the board, which will not move for a while (the
    /// follower encodes a snapshot) or ever again (`close`).
    pub(crate) fn wake_readers(&self) {
        self.moved.notify_waiters();
    }

    /// The follower stopped.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake_readers();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Publish the views of the SKUs a batch changed, then the LSN it reached.
    pub(crate) fn publish(
        &self,
        views: impl IntoIterator<Item = (SkuIdx, SkuView)>,
        applied_lsn: u64,
    ) {
        {
            let mut skus = self.skus.write();
            for (idx, view) in views {
                skus.insert(Arc::clone(&view.sku), (view, idx));
            }
        }
        self.applied_lsn.store(applied_lsn, Ordering::Release);
        self.moved.notify_waiters();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.skus.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(sku: &str, on_hand: u64, reserved: u64) -> SkuView {
        SkuView {
            sku: sku.into(),
            name: "n".into(),
            on_hand,
            reserved,
            available: on_hand - reserved,
            low_stock_threshold: 0,
            sale: crate::command::SaleRules::default(),
        }
    }

    #[test]
    fn answers_only_at_or_past_the_read_index() {
        let board = StockBoard::default();
        assert_eq!(board.read("A", 1), BoardRead::Behind);
        assert_eq!(board.read("A", 0), BoardRead::Unknown);
        board.note_changed(SkuIdx(0), 5);
        board.publish([(SkuIdx(0), view("A", 10, 2))], 5);
        assert_eq!(board.read("A", 5), BoardRead::Sku(view("A", 10, 2)));
        assert_eq!(board.read("B", 5), BoardRead::Unknown);
        board.note_changed(SkuIdx(0), 6);
        assert_eq!(board.read("A", 6), BoardRead::Behind);
        board.publish([(SkuIdx(0), view("A", 10, 3))], 6);
        assert_eq!(board.read("A", 6), BoardRead::Sku(view("A", 10, 3)));
        assert_eq!(board.len(), 1);
    }

    /// Behind the read index, the board answers for a SKU whose last change the
    /// writer noted at or below the board's LSN (a SKU never noted since the board
    /// was filled is one), and for no other: not one changed since, not an unknown
    /// one (it may have been defined since), not one past the notes' room.
    #[test]
    fn behind_the_read_index_it_answers_for_skus_unchanged_since() {
        let board = StockBoard::default();
        let far = SkuIdx(3 * CHANGED_CHUNK_LEN as u32 + 1);
        for (idx, lsn) in [(SkuIdx(0), 3), (SkuIdx(1), 5), (far, 4)] {
            board.note_changed(idx, lsn);
        }
        board.publish(
            [
                (SkuIdx(0), view("A", 10, 1)),
                (SkuIdx(1), view("B", 10, 2)),
                (far, view("F", 10, 0)),
            ],
            5,
        );
        // The writer goes on: B changes at 7, A at 8; durable through 9.
        board.note_changed(SkuIdx(1), 7);
        board.note_changed(SkuIdx(0), 8);
        assert_eq!(board.read("F", 9), BoardRead::Unchanged(view("F", 10, 0)));
        assert_eq!(board.read("A", 9), BoardRead::Behind);
        assert_eq!(board.read("B", 9), BoardRead::Behind);
        assert_eq!(board.read("C", 9), BoardRead::Behind);
        // The board reaches 7: B is answered, A still waits; at 9 all are current.
        board.publish([(SkuIdx(1), view("B", 10, 3))], 7);
        assert_eq!(board.read("B", 9), BoardRead::Unchanged(view("B", 10, 3)));
        assert_eq!(board.read("A", 9), BoardRead::Behind);
        board.publish([(SkuIdx(0), view("A", 10, 2))], 9);
        assert_eq!(board.read("A", 9), BoardRead::Sku(view("A", 10, 2)));
        assert_eq!(board.read("C", 9), BoardRead::Unknown);
        // A SKU in a chunk nobody noted has not changed since the board was filled.
        let quiet = SkuIdx(2 * CHANGED_CHUNK_LEN as u32);
        board.publish([(quiet, view("Q", 5, 0))], 9);
        assert_eq!(board.read("Q", 10), BoardRead::Unchanged(view("Q", 5, 0)));
        // Past the room for SKUS_MAX: never noted, never answered behind.
        let past = SkuIdx(SKUS_MAX.next_multiple_of(CHANGED_CHUNK_LEN) as u32);
        board.note_changed(past, 1);
        board.publish([(past, view("P", 5, 0))], 9);
        assert_eq!(board.read("P", 10), BoardRead::Behind);
        assert_eq!(board.read("P", 9), BoardRead::Sku(view("P", 5, 0)));
    }
}
