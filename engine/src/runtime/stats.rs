//! What the runtime counts for `/metrics`: [`RuntimeStats`] and the lock-free
//! [`LatencyHistogram`] its latencies go into.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Counters the writer keeps for `/metrics`.
#[derive(Debug, Default)]
pub struct RuntimeStats {
    /// Stock reads the board could not answer at once (behind the read index).
    pub board_behind: AtomicU64,
    /// Stock reads that waited on their own task for the board to reach their read
    /// index (`EngineHandle::read_sku_waiting`).
    pub board_waits: AtomicU64,
    /// Stock reads the board answered while behind the read index, no record past
    /// the board's LSN having changed their SKU (`board.rs`).
    pub board_unchanged: AtomicU64,
    /// Reads that went through the writer's queue because the follower was
    /// encoding a snapshot.
    pub reads_during_snapshot: AtomicU64,
    pub commands_applied: AtomicU64,
    pub commands_rejected: AtomicU64,
    /// Commands not applied because their caller stopped waiting (a request timed
    /// out, or its future was dropped) before the writer took them.
    pub commands_abandoned: AtomicU64,
    pub records_logged: AtomicU64,
    pub batches: AtomicU64,
    pub batch_len_last: AtomicU64,
    pub batch_len_max_seen: AtomicU64,
    pub wal_bytes: AtomicU64,
    pub flushes: AtomicU64,
    pub flush_latency_us_last: AtomicU64,
    pub flush_latency_us_total: AtomicU64,
    pub snapshot_at_ms: AtomicU64,
    pub snapshot_lsn: AtomicU64,
    pub snapshots: AtomicU64,
    /// Snapshots the writer encoded itself: without a follower (or with one
    /// that stopped) and at shutdown. With a follower the periodic and the
    /// requested ones are the follower's.
    pub snapshots_encoded_by_writer: AtomicU64,
    /// Body bytes of the snapshots written (`snapshots` of them).
    pub snapshot_bytes: AtomicU64,
    pub durable_lsn: AtomicU64,
    /// The LSN of the last record recovered at open (from the snapshot and the
    /// local log).
    pub recovered_lsn: AtomicU64,
    /// The LSN of the last record the follower applied (a record's LSN, not its
    /// last event's seq: what the publish stage's `published_lsn` counts too).
    pub follower_record_lsn: AtomicU64,
    /// The last LSN the replicated log acknowledged (leader with a publisher).
    pub published_lsn: AtomicU64,
    pub overloaded: AtomicU64,
    /// The writer thread's nice value once it started (below 0: it raised its
    /// priority, `EngineConfig::commit_priority_raise`).
    pub writer_nice: AtomicI64,
    /// Writer loop iterations, the sync excluded (it runs on the sync thread).
    pub writer_iteration: LatencyHistogram,
    /// The same iterations' CPU time on the writer thread: an iteration whose wall
    /// time is well above it spent the rest off a core (preempted, blocked in the
    /// kernel, or, where the kernel accounts steal, its virtual CPU taken by the
    /// host), not in its own work.
    pub writer_iteration_cpu: LatencyHistogram,
    /// Group commit latency: one sync, however many batches it covers.
    pub wal_commit: LatencyHistogram,
    /// One publish to the replicated log, until its acknowledgement.
    pub replication_publish: LatencyHistogram,
}

/// A fixed-bucket latency histogram that threads record into without locks.
#[derive(Debug)]
pub struct LatencyHistogram {
    /// Counts per bucket of [`LatencyHistogram::BOUNDS_US`], plus one above the last.
    buckets: [AtomicU64; LatencyHistogram::BOUNDS_US.len() + 1],
    sum_ns: AtomicU64,
    count: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Upper bounds of the buckets, in microseconds: 50 µs to 100 ms.
    pub const BOUNDS_US: [u64; 12] = [
        50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 75_000, 100_000,
    ];

    pub fn record(&self, elapsed: Duration) {
        let micros = elapsed.as_micros() as u64;
        let i = Self::BOUNDS_US.partition_point(|&bound| bound < micros);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let nanos = elapsed.as_nanos() as u64;
        self.sum_ns.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Adds `other`'s recordings to these: a bench that ran several engines one
    /// after another reports their iterations as one run.
    pub fn absorb(&self, other: &LatencyHistogram) {
        for (mine, theirs) in self.buckets.iter().zip(&other.buckets) {
            mine.fetch_add(theirs.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        self.sum_ns
            .fetch_add(other.sum_ns.load(Ordering::Relaxed), Ordering::Relaxed);
        self.count
            .fetch_add(other.count.load(Ordering::Relaxed), Ordering::Relaxed);
        self.max_ns
            .fetch_max(other.max_ns.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// The longest duration recorded.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns.load(Ordering::Relaxed))
    }

    /// The smallest bucket bound (µs) at or below which a share `q` of the
    /// recordings fall; `None` if that is above the last bound (or nothing yet).
    pub fn quantile_bound_us(&self, q: f64) -> Option<u64> {
        let (buckets, total) = self.cumulative();
        let wanted = (total as f64 * q).ceil() as u64;
        if total == 0 {
            return None;
        }
        buckets
            .into_iter()
            .find(|&(_, count)| count >= wanted)
            .map(|(bound, _)| bound)
    }

    /// Cumulative counts per bound (`le`), as Prometheus wants them, then the total.
    pub fn cumulative(&self) -> (Vec<(u64, u64)>, u64) {
        let mut running = 0;
        let mut out = Vec::with_capacity(Self::BOUNDS_US.len());
        for (i, bound) in Self::BOUNDS_US.iter().enumerate() {
            running += self.buckets[i].load(Ordering::Relaxed);
            out.push((*bound, running));
        }
        running += self.buckets[Self::BOUNDS_US.len()].load(Ordering::Relaxed);
        (out, running)
    }

    pub fn sum_seconds(&self) -> f64 {
        self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two histograms absorbed into one hold what one histogram recording all of
    /// their durations holds: buckets, count, sum and max.
    #[test]
    fn absorbing_is_recording_both_into_one() {
        let micros = [3, 50, 51, 700, 999, 1_000, 1_001, 42_000, 100_000, 250_000];
        let (first, second, all) = (
            LatencyHistogram::default(),
            LatencyHistogram::default(),
            LatencyHistogram::default(),
        );
        for (i, &us) in micros.iter().enumerate() {
            let d = Duration::from_micros(us);
            if i % 3 == 0 { &first } else { &second }.record(d);
            all.record(d);
        }
        let merged = LatencyHistogram::default();
        merged.absorb(&first);
        merged.absorb(&second);
        assert_eq!(merged.cumulative(), all.cumulative());
        assert_eq!(merged.count(), all.count());
        assert_eq!(merged.sum_seconds(), all.sum_seconds());
        assert_eq!(merged.max(), all.max());
        assert_eq!(merged.max(), Duration::from_micros(250_000));
    }
}
