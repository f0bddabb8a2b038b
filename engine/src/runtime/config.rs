//! How the engine runs: [`Durability`], [`EngineConfig`] and its defaults, the
//! [`Clock`] the writer reads, and the start-up check that the configured state fits
//! this machine's memory.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use surge_wal::WalConfig;

use super::{Error, Role};
use crate::IdempotencyPolicy;
use crate::domain::Millis;

/// How a reply waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Reply after the batch is flushed (default).
    Sync,
    /// Reply after apply; flush every few milliseconds (like Redis `everysec`, faster).
    Async,
    /// No WAL at all: state is lost on exit. For benchmarks and throwaway demos.
    None,
    /// Reply after the batch is flushed AND the replicated log (a
    /// [`LogPublisher`](super::LogPublisher)) acknowledged it: only this mode
    /// promises a failover without loss.
    Replicated,
}

impl Durability {
    /// Replies wait for the local commit (`sync` and `replicated`).
    pub(super) fn waits_for_commit(self) -> bool {
        matches!(self, Durability::Sync | Durability::Replicated)
    }

    /// A log is kept (every mode but `none`): a follower can apply it and encode
    /// the snapshots.
    pub(super) fn keeps_log(self) -> bool {
        self != Durability::None
    }
}

impl std::str::FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(Durability::Sync),
            "async" => Ok(Durability::Async),
            "none" => Ok(Durability::None),
            "replicated" => Ok(Durability::Replicated),
            other => Err(format!(
                "durability must be sync, async, none or replicated, not {other:?}"
            )),
        }
    }
}

/// Runtime configuration. Every field has a sensible default.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// Commands waiting at once; a full queue answers `Overloaded` at once.
    pub queue_len_max: usize,
    /// Commands the writer takes per loop iteration; bounds an iteration's length.
    /// A `/v1/batch` request counts as its commands and a read as one; an iteration
    /// takes at least one request, so it may pass the bound by one request's
    /// commands. The sync thread merges the iterations that queue up during one
    /// sync, so a smaller bound makes commits no smaller: it hands work to the sync
    /// thread sooner (BENCHMARKS.md, "Writer iterations bounded by commands").
    pub batch_len_max: usize,
    pub async_flush_interval_ms: u64,
    /// How often the writer checks for expired holds when idle.
    pub expire_interval_ms: u64,
    /// Take a snapshot after this many logged records (0: only on request and shutdown)
    /// once the log since the last snapshot is also at least
    /// `snapshot_log_percent_min` percent of that snapshot's size.
    pub snapshot_every_records: u64,
    /// A snapshot by record count also waits until the log written since the last
    /// snapshot (its bytes as written, each commit's padding to a page included) is
    /// at least this percent of that snapshot's body (0: the count alone). Keeps the cost of snapshots of a large state (millions of holds) in
    /// proportion to what is logged; the log replayed at start-up then grows to the
    /// larger of `snapshot_every_records` records and this share of a snapshot.
    pub snapshot_log_percent_min: u64,
    /// Take a snapshot once this many WAL segments are on disk, so that the log (and
    /// start-up replay) stays bounded even when commits are small and padded.
    pub snapshot_every_segments: usize,
    /// Write a snapshot at clean shutdown (benchmarks of replay turn it off).
    pub snapshot_on_shutdown: bool,
    /// Write snapshot files on their own thread (the writer still encodes them).
    /// Off makes a run fully deterministic, for the seeded crash tests.
    pub snapshot_in_background: bool,
    /// Sync batch N on its own thread while the writer applies N+1 (pipelined
    /// group commit). Off syncs on the writer, which makes a run deterministic.
    pub pipelined_commit: bool,
    /// Keep a follower: a second copy of the state that applies each batch once it
    /// is durable, on its own thread, and encodes the snapshots there, not on the
    /// writer (every mode with a log). In `sync` and `replicated` modes it also
    /// serves reads, which then never wait in the writer's queue; in `async` mode
    /// reads see the applied state, so the writer answers them. Costs a second
    /// copy of the state in memory.
    pub follower: bool,
    /// Events kept in memory for the feed.
    pub events_kept: usize,
    /// Nice steps the writer (and in `replicated` mode the publish thread) raises
    /// its own priority by at start (0: none). Every acknowledgement waits on the
    /// writer, and on a box with as few cores as busy threads the scheduler
    /// otherwise preempts it for HTTP workers and clients evenly (BENCHMARKS.md,
    /// "The commit path goes first"). The sync thread is not raised: at the
    /// writer's priority it preempted the writer each time it woke from a sync, to
    /// answer that commit's waiters on the writer's core (BENCHMARKS.md, "The sync
    /// thread at the process's priority"). Needs `CAP_SYS_NICE`: without it the
    /// writer stays at the default, and
    /// [`RuntimeStats::writer_nice`](super::RuntimeStats) says so.
    pub commit_priority_raise: i32,
    pub wal: WalConfig,
    /// Where the writer reads the time; tests substitute a manual clock.
    pub clock: Clock,
    /// The idempotency window and budget to run with. When it differs from the
    /// recovered state's, it is logged (`Command::SetIdempotencyPolicy`) before any
    /// other command. `None` keeps the state's (offline tools).
    pub idempotency: Option<IdempotencyPolicy>,
    /// The order policy (ship SLA, review threshold) to run with; logged like the
    /// idempotency policy when it differs from the state's (and once, to move a data
    /// dir written before v1.1 to its rules). `None` keeps the state's.
    pub order_policy: Option<crate::command::OrderPolicy>,
    /// What this node does at start: a leader takes writes, a standby applies a
    /// leader's records
    /// ([`EngineHandle::replicate`](super::EngineHandle::replicate)) until promoted.
    pub role: Role,
    /// A [`LogPublisher`](super::LogPublisher) will be attached (or the standby may
    /// be promoted and publish): until records are published, log segments holding
    /// them are kept.
    pub replicate: bool,
    /// How long a publishing leader's stage may go without a word from the
    /// replicated log: when no record came to publish for this long, it asks where
    /// the log ends, so a leader deposed by a promoted standby (`fenced`) or cut off
    /// from the log (`replicated`: writes refused) says so with no write to find out.
    pub stream_check_interval_ms: u64,
}

/// A source of wall-clock milliseconds. The writer never lets its stamps go back,
/// whatever this returns.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> Millis + Send + Sync>);

impl Clock {
    pub fn system() -> Clock {
        Clock(Arc::new(wall_clock_ms))
    }

    /// A clock that reads `ms` (tests move it by hand).
    pub fn manual(ms: Arc<AtomicU64>) -> Clock {
        Clock(Arc::new(move || ms.load(Ordering::SeqCst)))
    }

    pub fn now_ms(&self) -> Millis {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now_ms())
    }
}

/// The default [`EngineConfig::batch_len_max`]: 128 commands, about a quarter of a
/// millisecond of the writer's work here. At 512, one iteration in 28-79 of
/// `runtime/writer_iterations` took over 1 ms; at 128, one in 76-332, at the same
/// throughput within the noise (BENCHMARKS.md, "Writer iterations bounded by commands").
pub const BATCH_LEN_MAX_DEFAULT: usize = 128;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            data_dir: PathBuf::from("./data"),
            durability: Durability::Sync,
            queue_len_max: 65_536,
            batch_len_max: BATCH_LEN_MAX_DEFAULT,
            async_flush_interval_ms: 5,
            expire_interval_ms: 50,
            snapshot_every_records: 2_000_000,
            snapshot_log_percent_min: 100,
            snapshot_every_segments: 16,
            snapshot_on_shutdown: true,
            snapshot_in_background: true,
            pipelined_commit: true,
            follower: true,
            events_kept: 1_000_000,
            commit_priority_raise: 20,
            wal: WalConfig::default(),
            clock: Clock::system(),
            idempotency: None,
            order_policy: None,
            role: Role::Leader,
            replicate: false,
            stream_check_interval_ms: 1_000,
        }
    }
}

impl EngineConfig {
    /// A follower runs: asked for, and a log for it to apply (every mode but
    /// `none`). It serves reads only where they wait for the commit.
    pub(super) fn keeps_follower(&self) -> bool {
        self.follower && self.durability.keeps_log()
    }
}

/// The most memory this configuration may need at the state's limits: the state
/// and its idempotency budget, twice with a follower, plus one encoded snapshot in
/// flight (bounded by the in-memory size).
pub fn memory_worst_case_bytes(config: &EngineConfig) -> u64 {
    let budget = config
        .idempotency
        .map_or(crate::limits::IDEMPOTENCY_BUDGET_BYTES_DEFAULT, |p| {
            p.budget_bytes
        });
    let copy = crate::limits::STATE_BYTES_WORST_CASE + budget;
    let copies = if config.keeps_follower() { 2 } else { 1 };
    copy * copies + copy
}

/// A field of `/proc/meminfo` (`MemTotal`, `MemAvailable`, ...) in bytes; `None`
/// where there is no such file or field (not Linux).
pub fn meminfo_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let value = text
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?;
    let kib: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Start-up refuses a configuration whose worst case cannot fit this machine's
/// memory (`MemTotal`), keeping a tenth for the rest of the process and the OS.
pub(super) fn check_memory_fits(config: &EngineConfig) -> Result<(), Error> {
    match meminfo_bytes("MemTotal") {
        Some(total) => memory_fits(config, total),
        None => Ok(()), // not Linux, or no /proc: nothing to check against
    }
}

/// [`check_memory_fits`] against a machine of `total` bytes.
fn memory_fits(config: &EngineConfig, total: u64) -> Result<(), Error> {
    let needed = memory_worst_case_bytes(config);
    let follower = config.keeps_follower();
    if needed > total / 10 * 9 {
        return Err(Error::InvalidConfig(format!(
            "at its limits the state needs up to {} MiB (state and idempotency budget{}, \
             and a snapshot in flight), more than 90 % of this machine's {} MiB: lower \
             the idempotency budget{}",
            needed >> 20,
            if follower {
                ", twice for the follower"
            } else {
                ""
            },
            total >> 20,
            if follower {
                " or run without the follower"
            } else {
                ""
            },
        )));
    }
    Ok(())
}

fn wall_clock_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{IDEMPOTENCY_BUDGET_BYTES_DEFAULT, STATE_BYTES_WORST_CASE};

    const GIB: u64 = 1 << 30;

    fn with_budget(budget_bytes: u64, follower: bool) -> EngineConfig {
        EngineConfig {
            follower,
            idempotency: Some(IdempotencyPolicy {
                window_ms: 60_000,
                budget_bytes,
            }),
            ..EngineConfig::default()
        }
    }

    #[test]
    fn the_worst_case_counts_the_follower_copy_and_a_snapshot_in_flight() {
        let copy = STATE_BYTES_WORST_CASE + IDEMPOTENCY_BUDGET_BYTES_DEFAULT;
        let config = with_budget(IDEMPOTENCY_BUDGET_BYTES_DEFAULT, true);
        assert_eq!(memory_worst_case_bytes(&config), 3 * copy);
        let config = with_budget(IDEMPOTENCY_BUDGET_BYTES_DEFAULT, false);
        assert_eq!(memory_worst_case_bytes(&config), 2 * copy);
    }

    #[test]
    fn start_up_refuses_a_configuration_that_cannot_fit_and_takes_one_that_can() {
        // The defaults fit the 24 GiB machine surge is sized for.
        let defaults = EngineConfig::default();
        memory_fits(&defaults, 24 * GIB).expect("the defaults fit 24 GiB");
        // A budget of 16 GiB, three times over, does not.
        let big = with_budget(16 * GIB, true);
        let Err(Error::InvalidConfig(why)) = memory_fits(&big, 24 * GIB) else {
            panic!("a 16 GiB idempotency budget with a follower fits 24 GiB?");
        };
        assert!(why.contains("more than 90 %"), "{why}");
        assert!(why.contains("twice for the follower"), "{why}");
        // Exactly at 90 % of the machine it fits; a byte less machine refuses.
        let needed = memory_worst_case_bytes(&big);
        let at_ninety_pct = needed.div_ceil(9) * 10;
        memory_fits(&big, at_ninety_pct).expect("fits at 90 %");
        assert!(memory_fits(&big, at_ninety_pct - 1).is_err());
        // Without a follower the same budget needs one copy less.
        let alone = with_budget(16 * GIB, false);
        assert!(memory_worst_case_bytes(&alone) < needed);
    }
}
