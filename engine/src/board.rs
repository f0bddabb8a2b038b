//! The stock board: every SKU's stock as the follower last applied it, readable
//! from any thread without a queue or a wake-up.
//!
//! "How many are left" is the hottest request of a flash sale. Through the
//! follower's queue it costs two cross-thread hand-offs; from the board it costs
//! a read lock and a map lookup on the HTTP worker itself.
//!
//! Linearizable like every read (ARCHITECTURE.md, "Reads"): a reader notes the
//! durable LSN when it arrives (its read index) and may answer from the board only
//! if the board has applied at least that LSN. Otherwise it takes the follower's
//! queue and waits there, as before. The follower updates the SKUs a batch touched
//! and then raises `applied_lsn` (release), so a reader that sees the LSN (acquire)
//! sees those SKUs. The board holds only durable state: the follower applies only
//! durable records.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::command::SkuView;

#[derive(Debug, Default)]
pub struct StockBoard {
    skus: RwLock<HashMap<Arc<str>, SkuView>>,
    /// The LSN the board reflects, in the measure of a read index.
    applied_lsn: AtomicU64,
}

/// What the board can say about one SKU for a read index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoardRead {
    Sku(SkuView),
    /// The SKU does not exist as of the read index.
    Unknown,
    /// The board is behind the read index: ask the follower.
    Behind,
}

impl StockBoard {
    /// The SKU as of a state that includes `read_index`.
    pub fn read(&self, sku: &str, read_index: u64) -> BoardRead {
        if self.applied_lsn.load(Ordering::Acquire) < read_index {
            return BoardRead::Behind;
        }
        match self.skus.read().get(sku) {
            Some(view) => BoardRead::Sku(view.clone()),
            None => BoardRead::Unknown,
        }
    }

    /// Publish the views of the SKUs a batch changed, then the LSN it reached.
    pub(crate) fn publish(&self, views: impl IntoIterator<Item = SkuView>, applied_lsn: u64) {
        {
            let mut skus = self.skus.write();
            for view in views {
                skus.insert(Arc::clone(&view.sku), view);
            }
        }
        self.applied_lsn.store(applied_lsn, Ordering::Release);
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
        board.publish([view("A", 10, 2)], 5);
        assert_eq!(board.read("A", 5), BoardRead::Sku(view("A", 10, 2)));
        assert_eq!(board.read("B", 5), BoardRead::Unknown);
        assert_eq!(board.read("A", 6), BoardRead::Behind);
        board.publish([view("A", 10, 3)], 6);
        assert_eq!(board.read("A", 6), BoardRead::Sku(view("A", 10, 3)));
        assert_eq!(board.len(), 1);
    }
}
