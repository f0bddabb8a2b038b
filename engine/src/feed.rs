//! The event feed: the newest events, published by the writer once they are durable,
//! read by any number of subscribers (HTTP polling, Server-Sent Events).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::domain::SkuIdx;
use crate::event::Event;

/// Bounded in memory: the oldest events are dropped once `capacity` is reached; the
/// ring is part of every snapshot so that `seq`s survive a restart unchanged.
#[derive(Debug)]
pub struct EventLog {
    events: RwLock<EventRing>,
    sku_names: RwLock<Vec<Arc<str>>>,
    capacity: usize,
    last_seq: AtomicU64,
    /// The seq of the newest event dropped for room (0: none dropped).
    dropped_through: AtomicU64,
    notify: tokio::sync::Notify,
}

/// Events kept in one block of an [`EventRing`] (at most: a ring smaller than this
/// has blocks of its own capacity).
const RING_BLOCK_LEN: usize = 4096;

/// The events kept, oldest first, in shared blocks of a fixed length, so that a copy
/// of the whole ring costs one pointer per block.
///
/// The ring used to be one `VecDeque`, read-locked while a snapshot encoded it
/// whole: up to 110 ms at a million events on the (niced) encoder thread, and every
/// commit waited that long to publish its events (`runtime/writer_iterations` with
/// the publish timed, BENCHMARKS.md). A snapshot now copies the ring under the lock and
/// encodes the copy; the next publish copies at most the one block it appends to.
/// Blocks never double either: the ring grows a block at a time.
#[derive(Debug, Clone)]
pub(crate) struct EventRing {
    /// Every block but the last holds `block_len` events.
    blocks: VecDeque<Arc<Vec<Event>>>,
    /// Events at the front of the first block that were dropped already.
    front_skip: usize,
    len: usize,
    block_len: usize,
}

impl EventRing {
    fn new(capacity: usize) -> EventRing {
        EventRing {
            blocks: VecDeque::new(),
            front_skip: 0,
            len: 0,
            block_len: capacity.clamp(1, RING_BLOCK_LEN),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn last(&self) -> Option<&Event> {
        self.blocks.back().and_then(|block| block.last())
    }

    fn push_back(&mut self, event: Event) {
        if self
            .blocks
            .back()
            .is_none_or(|block| block.len() == self.block_len)
        {
            self.blocks
                .push_back(Arc::new(Vec::with_capacity(self.block_len)));
        }
        let block = self.blocks.back_mut().expect("a block with room");
        if Arc::get_mut(block).is_none() {
            // A snapshot's copy shares this block: copy it, at the block's full
            // capacity so that it never grows.
            let mut own = Vec::with_capacity(self.block_len);
            own.extend_from_slice(block);
            *block = Arc::new(own);
        }
        Arc::get_mut(block).expect("copied above").push(event);
        self.len += 1;
    }

    /// Drop the oldest event; answers its seq.
    fn pop_front(&mut self) -> Option<u64> {
        let front = self.blocks.front()?;
        let seq = front[self.front_skip].seq;
        self.front_skip += 1;
        self.len -= 1;
        if self.front_skip == front.len() {
            self.blocks.pop_front();
            self.front_skip = 0;
        }
        Some(seq)
    }

    fn get(&self, index: usize) -> &Event {
        let at = self.front_skip + index;
        &self.blocks[at / self.block_len][at % self.block_len]
    }

    /// The number of leading events for which `pred` holds (it must hold for a
    /// prefix, as for `slice::partition_point`).
    pub(crate) fn partition_point(&self, mut pred: impl FnMut(&Event) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len);
        while low < high {
            let mid = low + (high - low) / 2;
            if pred(self.get(mid)) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }

    /// The events from the `start`th on, oldest first.
    pub(crate) fn iter_from(&self, start: usize) -> impl Iterator<Item = &Event> {
        let at = self.front_skip + start.min(self.len);
        let (first_block, offset) = (at / self.block_len, at % self.block_len);
        self.blocks
            .range(first_block..)
            .enumerate()
            .flat_map(move |(i, block)| block[if i == 0 { offset } else { 0 }..].iter())
    }
}

/// One page of the feed.
#[derive(Debug, Clone)]
pub struct FeedPage {
    pub events: Vec<Event>,
    /// The seq to pass as `after` for the next page.
    pub next: u64,
    /// Events after the requested position were dropped from memory before they
    /// were read: the reader missed some.
    pub truncated: bool,
}

impl EventLog {
    pub fn new(capacity: usize) -> EventLog {
        assert!(capacity > 0);
        EventLog {
            events: RwLock::new(EventRing::new(capacity)),
            sku_names: RwLock::new(Vec::new()),
            capacity,
            last_seq: AtomicU64::new(0),
            dropped_through: AtomicU64::new(0),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// Append durable events (writer only), moving them out of `batch` (left empty,
    /// its capacity kept for the next batch). Seqs must increase.
    pub(crate) fn publish(&self, batch: &mut Vec<Event>) {
        let Some(last_seq) = batch.last().map(|event| event.seq) else {
            return;
        };
        let mut events = self.events.write();
        for event in batch.drain(..) {
            assert!(
                events.last().is_none_or(|last| last.seq < event.seq),
                "event seqs must increase"
            );
            if events.len() == self.capacity {
                let dropped = events.pop_front().expect("full");
                self.dropped_through.store(dropped, Ordering::Release);
            }
            events.push_back(event);
        }
        self.last_seq.store(last_seq, Ordering::Release);
        drop(events);
        self.notify.notify_waiters();
    }

    pub(crate) fn set_sku_names(&self, names: impl Iterator<Item = Arc<str>>) {
        let mut table = self.sku_names.write();
        table.clear();
        table.extend(names);
    }

    pub(crate) fn add_sku_name(&self, name: Arc<str>) {
        self.sku_names.write().push(name);
    }

    /// A copy of the ring (for a snapshot: one pointer per block, so the lock that
    /// publishing needs is held only that long) with the seq of the newest dropped event.
    pub(crate) fn ring(&self) -> (EventRing, u64) {
        let events = self.events.read();
        (events.clone(), self.dropped_through.load(Ordering::Acquire))
    }

    /// Restore the ring from a snapshot (start-up only).
    pub(crate) fn restore(&self, mut events: Vec<Event>, dropped_through: u64) {
        self.dropped_through
            .store(dropped_through, Ordering::Release);
        self.publish(&mut events);
    }

    /// The client id of a SKU named in an event.
    pub fn sku_name(&self, sku: SkuIdx) -> Arc<str> {
        self.sku_names
            .read()
            .get(sku.0 as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from("?"))
    }

    /// The seq of the newest published event, 0 when none.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Ordering::Acquire)
    }

    /// Events with `seq > after`, at most `limit`.
    pub fn read_after(&self, after: u64, limit: usize) -> FeedPage {
        let events = self.events.read();
        let start = events.partition_point(|e| e.seq <= after);
        let truncated = after < self.dropped_through.load(Ordering::Acquire);
        let page: Vec<Event> = events.iter_from(start).take(limit).cloned().collect();
        let next = page.last().map_or(after, |e| e.seq);
        FeedPage {
            events: page,
            next,
            truncated,
        }
    }

    /// Wait until an event with `seq > after` is published (async; for SSE).
    pub async fn wait_after(&self, after: u64) {
        loop {
            let notified = self.notify.notified();
            if self.last_seq() > after {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::ReservationId;
    use crate::event::EventKind;

    fn event(seq: u64) -> Event {
        Event {
            seq,
            at_ms: 0,
            kind: EventKind::ReservationReleased {
                id: ReservationId(seq),
            },
        }
    }

    fn seqs<'a>(events: impl Iterator<Item = &'a Event>) -> Vec<u64> {
        events.map(|e| e.seq).collect()
    }

    /// Against the plain model (the newest `capacity` seqs), at capacities below,
    /// at and above one block, in batches that straddle block boundaries.
    #[test]
    fn the_ring_keeps_the_newest_events_across_blocks() {
        for capacity in [
            1,
            3,
            RING_BLOCK_LEN,
            RING_BLOCK_LEN + 1,
            3 * RING_BLOCK_LEN - 7,
        ] {
            let log = EventLog::new(capacity);
            let mut model: VecDeque<u64> = VecDeque::new();
            let mut next = 1;
            for batch_len in [1, 2, 999, RING_BLOCK_LEN, 5, 2 * RING_BLOCK_LEN + 3, 1] {
                let mut batch: Vec<Event> = (next..next + batch_len as u64).map(event).collect();
                next += batch_len as u64;
                for e in &batch {
                    if model.len() == capacity {
                        model.pop_front();
                    }
                    model.push_back(e.seq);
                }
                log.publish(&mut batch);
                assert!(batch.is_empty(), "published events are moved out");
                let (ring, dropped_through) = log.ring();
                assert_eq!(ring.len(), model.len(), "capacity {capacity}");
                assert_eq!(seqs(ring.iter_from(0)), Vec::from(model.clone()));
                assert_eq!(dropped_through, model[0] - 1, "capacity {capacity}");
                assert_eq!(log.last_seq(), next - 1);
                // Every page start: what `read_after` answers is the model's tail.
                for after in [0, model[0] - 1, model[0], model[model.len() / 2], next - 1] {
                    let page = log.read_after(after, 10);
                    let expected: Vec<u64> = model
                        .iter()
                        .copied()
                        .filter(|&s| s > after)
                        .take(10)
                        .collect();
                    assert_eq!(seqs(page.events.iter()), expected, "after {after}");
                    assert_eq!(page.truncated, after < model[0] - 1, "after {after}");
                    assert_eq!(page.next, expected.last().copied().unwrap_or(after));
                }
            }
        }
    }

    #[test]
    fn a_copy_of_the_ring_is_not_changed_by_later_publishing() {
        let log = EventLog::new(RING_BLOCK_LEN + 2);
        let mut first: Vec<Event> = (1..=RING_BLOCK_LEN as u64 + 1).map(event).collect();
        log.publish(&mut first);
        let (copy, dropped_through) = log.ring();
        let mut later: Vec<Event> = (RING_BLOCK_LEN as u64 + 2..=RING_BLOCK_LEN as u64 + 9)
            .map(event)
            .collect();
        log.publish(&mut later);
        assert_eq!(dropped_through, 0);
        assert_eq!(
            seqs(copy.iter_from(0)),
            (1..=RING_BLOCK_LEN as u64 + 1).collect::<Vec<_>>()
        );
        assert_eq!(copy.partition_point(|e| e.seq <= 100), 100);
        let (now, dropped_now) = log.ring();
        assert_eq!(dropped_now, 7);
        assert_eq!(
            seqs(now.iter_from(now.len() - 1)),
            vec![RING_BLOCK_LEN as u64 + 9]
        );
    }
}
