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
    events: RwLock<VecDeque<Event>>,
    sku_names: RwLock<Vec<Arc<str>>>,
    capacity: usize,
    last_seq: AtomicU64,
    /// The seq of the newest event dropped for room (0: none dropped).
    dropped_through: AtomicU64,
    notify: tokio::sync::Notify,
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
            events: RwLock::new(VecDeque::with_capacity(capacity.min(1 << 16))),
            sku_names: RwLock::new(Vec::new()),
            capacity,
            last_seq: AtomicU64::new(0),
            dropped_through: AtomicU64::new(0),
            notify: tokio::sync::Notify::new(),
        }
    }

    /// Append durable events (writer only). Seqs must increase.
    pub(crate) fn publish(&self, batch: &[Event]) {
        if batch.is_empty() {
            return;
        }
        let mut events = self.events.write();
        for event in batch {
            assert!(
                events.back().is_none_or(|last| last.seq < event.seq),
                "event seqs must increase"
            );
            if events.len() == self.capacity {
                let dropped = events.pop_front().expect("full");
                self.dropped_through.store(dropped.seq, Ordering::Release);
            }
            events.push_back(event.clone());
        }
        self.last_seq
            .store(batch[batch.len() - 1].seq, Ordering::Release);
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

    /// Run `f` over the ring (for a snapshot) with the seq of the newest dropped event.
    pub(crate) fn with_ring<R>(&self, f: impl FnOnce(&VecDeque<Event>, u64) -> R) -> R {
        let events = self.events.read();
        f(&events, self.dropped_through.load(Ordering::Acquire))
    }

    /// Restore the ring from a snapshot (start-up only).
    pub(crate) fn restore(&self, events: Vec<Event>, dropped_through: u64) {
        self.dropped_through
            .store(dropped_through, Ordering::Release);
        self.publish(&events);
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
        let page: Vec<Event> = events.range(start..).take(limit).cloned().collect();
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
