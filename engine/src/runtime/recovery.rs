//! Start-up: [`Engine::open`] takes the data directory, recovers the state (the
//! newest snapshot, then the log after it), logs configured policy changes, and
//! starts the sync stage, the follower and the writer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use surge_wal::{MmapStorage, Storage, Wal};

use super::config::check_memory_fits;
use super::driven::Core;
use super::follower::{Follower, FollowerLink, FollowerRuns};
use super::handle::Shared;
use super::sync_stage::SyncStage;
use super::writer::{SnapshotSizes, Writer};
use super::{Durability, EngineConfig, EngineHandle, Error, Inner, Role, spawn_owner};
use crate::codec;
use crate::command::Command;
use crate::domain::SkuIdx;
use crate::feed::EventLog;
use crate::state::State;
use crate::{Field, Rejection};

/// What start-up found and did.
#[derive(Debug, Clone)]
pub struct RecoveryReport {
    pub wal: Option<surge_wal::RecoveryReport>,
    pub snapshot_lsn: u64,
    pub records_replayed: u64,
    pub events_restored: usize,
    pub duration: Duration,
    pub next_lsn: u64,
}

/// Entry point: open (recover) and start the writer.
pub struct Engine;

impl Engine {
    /// Open the data directory (taking its lock), recover, and start the writer.
    pub fn open(config: EngineConfig) -> Result<(EngineHandle, RecoveryReport), Error> {
        if config.durability == Durability::None {
            return Engine::start::<MmapStorage>(None, config);
        }
        let storage = MmapStorage::open(&config.data_dir)?;
        Engine::open_with_storage(storage, config)
    }

    /// Open over any storage (tests use the simulated disk).
    pub fn open_with_storage<S: Storage>(
        storage: S,
        config: EngineConfig,
    ) -> Result<(EngineHandle, RecoveryReport), Error> {
        Engine::start(Some(storage), config)
    }

    fn start<S: Storage>(
        storage: Option<S>,
        config: EngineConfig,
    ) -> Result<(EngineHandle, RecoveryReport), Error> {
        let (writer, handle, report) = Engine::prepare(storage, config, true)?;
        let thread = spawn_owner("surge-writer", move || writer.run())
            .map_err(|e| Error::Recovery(format!("cannot start the writer thread: {e}")))?;
        *handle.shared.writer.lock() = Some(thread);
        Ok((handle, report))
    }

    /// Open over `storage` and recover, for a writer driven step by step on the
    /// caller's thread ([`Core`]) instead of its own. After the open everything runs
    /// on that thread: the commit inline in each step, the snapshot file, no
    /// follower. (The open's replay applies on a thread of its own, in log order,
    /// so a run is as deterministic.) A replicated configuration is refused (its
    /// publish stage is a thread of its own).
    pub fn open_core<S: Storage>(
        storage: S,
        config: EngineConfig,
    ) -> Result<(Core<S>, RecoveryReport), Error> {
        Engine::open_core_with(storage, config, false)
    }

    /// [`Engine::open_core`] with the pipelined commit: a step hands its batch over
    /// and its answers wait until the owner runs the sync thread's part
    /// ([`Core::sync`], or [`Core::begin_sync`] and [`Core::finish_sync`]). With
    /// `config.follower` (the default) the core keeps a follower too, which the
    /// owner runs with [`Core::follow`]: it applies what the syncs released,
    /// answers reads (in `sync` mode) and encodes the snapshots.
    pub fn open_core_pipelined<S: Storage>(
        storage: S,
        config: EngineConfig,
    ) -> Result<(Core<S>, RecoveryReport), Error> {
        Engine::open_core_with(storage, config, true)
    }

    fn open_core_with<S: Storage>(
        storage: S,
        mut config: EngineConfig,
        pipelined: bool,
    ) -> Result<(Core<S>, RecoveryReport), Error> {
        if config.replicate || config.durability == Durability::Replicated {
            return Err(Error::InvalidConfig(
                "the step-driven core does not replicate; open the engine for that".into(),
            ));
        }
        config.pipelined_commit = pipelined;
        // The pipelined core keeps the follower the configuration asks for, run by
        // the owner (`Core::follow`); the inline one has none.
        config.follower &= pipelined;
        config.snapshot_in_background = false;
        let (writer, handle, report) = Engine::prepare(Some(storage), config, false)?;
        Ok((Core::new(writer, handle), report))
    }

    /// Recover and build the writer (with its sync thread and follower, when
    /// configured), logging the configured policies; the writer is not started.
    /// Without `threads` (the step-driven core) a pipelined commit gets its queue
    /// and no sync thread: [`Core::sync`](super::Core::sync) runs it.
    fn prepare<S: Storage>(
        storage: Option<S>,
        config: EngineConfig,
        threads: bool,
    ) -> Result<(Writer<S>, EngineHandle, RecoveryReport), Error> {
        assert!(config.queue_len_max > 0 && config.batch_len_max > 0);
        let record_room = config.wal.record_payload_max_bytes();
        if config.durability != Durability::None
            && record_room < crate::limits::RECORD_ENCODED_BYTES_MAX
        {
            return Err(Error::Wal(surge_wal::Error::InvalidConfig(format!(
                "segments of {} bytes hold records of at most {record_room} bytes; the \
                 largest valid command needs {}",
                config.wal.segment_bytes,
                crate::limits::RECORD_ENCODED_BYTES_MAX
            ))));
        }
        check_memory_fits(&config)?;
        let started = Instant::now();
        let events = EventLog::new(config.events_kept);
        let (recovered, wal) = match storage {
            Some(storage) if config.durability != Durability::None => {
                let (wal, recovery) = Wal::open(storage, config.wal.clone())?;
                (recover(&wal, recovery, &events)?, Some(wal))
            }
            _ => (
                Recovered {
                    state: State::new(),
                    report_wal: None,
                    snapshot_lsn: 0,
                    replayed: 0,
                    events_restored: 0,
                },
                None,
            ),
        };
        let Recovered {
            state,
            report_wal,
            snapshot_lsn,
            replayed,
            events_restored,
        } = recovered;
        events.set_sku_names(
            (0..state.sku_count()).map(|i| Arc::from(state.sku_name(SkuIdx(i as u32)))),
        );
        let report = RecoveryReport {
            wal: report_wal,
            snapshot_lsn,
            records_replayed: replayed,
            events_restored,
            duration: started.elapsed(),
            next_lsn: state.next_seq(),
        };
        let state_sku_count = state.sku_count();
        let (tx, rx) = super::queue::bounded(config.queue_len_max);
        // The follower encodes the snapshots in every mode with a log; it serves
        // reads only where they wait for the commit (in `async` mode they see the
        // applied state, which only the writer has).
        let with_follower = config.keeps_follower() && wal.is_some();
        let follower_reads = with_follower && config.durability.waits_for_commit();
        let (follower_tx, follower_rx) = if with_follower {
            let (ftx, frx) = crossbeam_channel::unbounded();
            (Some(ftx), Some(frx))
        } else {
            (None, None)
        };
        let inner = Arc::new(Inner::new(events, config.role, config.durability));
        if config.durability == Durability::Replicated {
            // No write is acknowledged before a publisher is attached.
            inner.set_replication_down(Some("no replicated log attached yet".into()));
        }
        let shared = Arc::new(Shared {
            tx,
            follower_tx: follower_tx.clone().filter(|_| follower_reads),
            inner: Arc::clone(&inner),
            shutting_down: AtomicBool::new(false),
            writer: Mutex::new(None),
            queue_len_max: config.queue_len_max,
            durability: config.durability,
        });
        inner
            .stats
            .snapshot_lsn
            .store(snapshot_lsn, Ordering::Relaxed);
        // Record LSNs, as the sync and publish stages count them (a record's LSN is
        // its first event's seq; the last event's seq is higher when the record
        // has several, an order's creation or payment): the last record recovered.
        let recovered_lsn = wal
            .as_ref()
            .map_or(state.next_seq().saturating_sub(1), Wal::last_lsn);
        inner
            .stats
            .durable_lsn
            .store(recovered_lsn, Ordering::Relaxed);
        inner
            .stats
            .recovered_lsn
            .store(recovered_lsn, Ordering::Relaxed);
        let (to_syncer, from_syncer, syncer_thread) =
            if config.pipelined_commit && wal.is_some() && !threads {
                (
                    Some(Arc::new(super::sync_stage::FlushQueue::default())),
                    None,
                    None,
                )
            } else if config.pipelined_commit && wal.is_some() {
                let queue = Arc::new(super::sync_stage::FlushQueue::default());
                let (done_tx, done_rx) = crossbeam_channel::unbounded();
                let stage = SyncStage {
                    shared: Arc::clone(&inner),
                    failed: None,
                    to_follower: follower_tx.clone(),
                };
                let for_stage = Arc::clone(&queue);
                let thread = spawn_owner("surge-sync", move || {
                    // The process's priority, never raised (and never inherited
                    // from a raised creator): raised, the sync thread preempted the
                    // writer at every wake from its sync to answer the commit's
                    // waiters on the writer's core (ARCHITECTURE.md, "The commit
                    // path goes first").
                    let _ = surge_wal::reset_this_thread_priority();
                    stage.run(for_stage, done_tx)
                })
                .map_err(|e| Error::Recovery(format!("cannot start the sync thread: {e}")))?;
                (Some(queue), Some(done_rx), Some(thread))
            } else {
                (None, None, None)
            };
        let pending = Vec::with_capacity(config.batch_len_max);
        let mut writer = Writer {
            to_syncer,
            from_syncer,
            syncer_thread,
            syncer_inline: SyncStage {
                shared: Arc::clone(&inner),
                failed: None,
                to_follower: follower_tx.clone(),
            },
            sync_taken: Vec::new(),
            batch_records: Vec::new(),
            follower: None,
            install_waiting: None,
            state,
            wal,
            rx,
            sku_names_published: state_sku_count,
            shared: inner,
            config,
            now_ms: 0,
            records_since_snapshot: replayed,
            last_snapshot: SnapshotSizes::default(),
            snapshot_asked: false,
            record_buf: Vec::with_capacity(256),
            events_buf: Vec::new(),
            appended: false,
            snapshot_job: None,
            snapshot_waiting: Vec::new(),
            follower_asked_upto: 0,
            publish_tx: None,
            logged_before_publish: 0,
            publish_thread: None,
            log_reads: Vec::new(),
            opening: true,
            own_policy_due: false,
            pending,
            async_dirty: false,
            room_wanted_bytes: None,
        };
        writer.now_ms = writer.state.now_ms();
        if let Some(wal) = writer.wal.as_mut()
            && config_replicates_as_leader(&writer.config)
        {
            // Until the publish stage says how far the replicated log goes, keep
            // every segment: none may be pruned before it is published.
            wal.retain_after(0);
        }
        if writer.config.role == Role::Leader {
            // The configured policies, and this build's rules for a server (it runs
            // an order policy; the records before keep the rules they were logged
            // with when replayed): logged before the writer takes any other command,
            // on this thread: no reply to wait for, so `open` may run inside an async
            // runtime. A promoted standby logs the same (`Writer::adopt_own_policy`).
            for command in writer.own_policy_commands() {
                let what = command.clone();
                if let Err(rejection) = writer.apply_at_start(command)? {
                    return Err(policy_refused(&what, rejection));
                }
            }
        }
        if let (Some(ftx), Some(frx)) = (follower_tx, follower_rx) {
            // The follower starts from the writer's state as recovered (and after the
            // policy record above): both then apply the same durable records.
            let mut state = writer.state.clone();
            if follower_reads {
                state.track_touched_skus();
                // The writer notes what each record changes for the board's readers.
                writer.state.track_touched_skus();
                writer
                    .shared
                    .board
                    .publish(state.all_sku_views(), state.next_seq().saturating_sub(1));
            }
            let follower = Follower {
                state,
                rx: frx,
                to_writer: shared.tx.clone(),
                shared: Arc::clone(&writer.shared),
                waiting: std::collections::VecDeque::new(),
                events_scratch: Vec::new(),
                last_record_lsn: writer.wal.as_ref().map_or(0, Wal::last_lsn),
                records_since_snapshot: 0,
                requested_upto: None,
                unsent: None,
                encoded_upto: 0,
            };
            let runs = if threads {
                let thread = spawn_owner("surge-follower", move || follower.run())
                    .map_err(|e| Error::Recovery(format!("cannot start the follower: {e}")))?;
                FollowerRuns::Thread(thread)
            } else {
                FollowerRuns::Inline(Box::new(follower))
            };
            writer.follower = Some(FollowerLink { tx: ftx, runs });
        }
        if let Some(wal) = writer.wal.as_mut() {
            // A new log (or one whose last segment is full) gets the segment for its
            // next record ready here, on the opening thread: zero-filled and synced,
            // 50–60 ms for 16 MiB on the reference box, which otherwise the writer's
            // first command waited for, every time (the maximum of
            // `runtime/writer_iterations`). Its first roll is then a rename.
            if let Err(e @ surge_wal::Error::NoSpace) = wal.prepare_next_segment() {
                // Restarted on a full disk: say so now (`/readyz`), not at the first
                // write refused; the writer's retry takes it back with the space.
                let payload_len = writer.config.wal.record_payload_max_bytes();
                writer.note_no_room(&e, payload_len);
            }
        }
        writer.opening = false;
        Ok((writer, EngineHandle { shared }, report))
    }
}

/// A leader that will publish its log holds its segments back from pruning.
fn config_replicates_as_leader(config: &EngineConfig) -> bool {
    config.replicate && config.role == Role::Leader
}

struct Recovered {
    state: State,
    report_wal: Option<surge_wal::RecoveryReport>,
    snapshot_lsn: u64,
    replayed: u64,
    events_restored: usize,
}

fn recover<S: Storage>(
    wal: &Wal<S>,
    recovery: surge_wal::Recovery,
    events: &EventLog,
) -> Result<Recovered, Error> {
    let (mut state, snapshot_lsn, events_restored) = match &recovery.snapshot {
        Some((lsn, bytes)) => {
            let snap = codec::decode_engine_snapshot(bytes)
                .map_err(|e| Error::Recovery(format!("snapshot at LSN {lsn}: {e}")))?;
            let mut state = State::decode_snapshot(&snap.state)
                .map_err(|e| Error::Recovery(format!("snapshot at LSN {lsn}: {e}")))?;
            // A snapshot is taken at the last record it covers.
            state.last_record_lsn = *lsn;
            assert!(
                state.next_seq() > *lsn || *lsn == 0,
                "snapshot LSN {lsn} beyond its state"
            );
            let restored = snap.events.len();
            events.restore(snap.events, snap.events_dropped_through);
            (state, *lsn, restored)
        }
        None => (State::new(), 0, 0),
    };
    let replayed = replay_log(wal, &mut state, snapshot_lsn, events)?;
    state.check_invariants();
    Ok(Recovered {
        state,
        report_wal: Some(recovery.report),
        snapshot_lsn,
        replayed,
        events_restored,
    })
}

/// Records the decoding side hands to the applying side at a time.
const REPLAY_BATCH_RECORDS: usize = 1024;
/// Batches decoded ahead of the applying side, at most.
const REPLAY_BATCHES_AHEAD: usize = 4;
/// Events the applying side gathers before it publishes them (one lock, moved).
const REPLAY_EVENTS_PER_PUBLISH: usize = 4096;

/// Replays the log after `snapshot_lsn` into `state`, in two stages on the two
/// threads start-up has to itself: this thread reads the mapped segments (frame
/// structure; the checksums were checked by the open's analysis) and decodes each
/// record; a scoped `surge-replay` thread applies them in LSN order and publishes
/// their events. Decoding is about as much work as applying, so the two overlap
/// (`recovery/replay_1m_records`, README). The state is the one a single thread
/// would build: one thread applies, in order.
fn replay_log<S: Storage>(
    wal: &Wal<S>,
    state: &mut State,
    snapshot_lsn: u64,
    events: &EventLog,
) -> Result<u64, Error> {
    type Batch = Vec<(u64, codec::LogRecord)>;
    let (decoded_tx, decoded_rx) = std::sync::mpsc::sync_channel::<Batch>(REPLAY_BATCHES_AHEAD);
    // Applied batches go back to the decoding side, records and all: a record is
    // freed by the thread that allocated it (mimalloc frees another thread's block
    // through an atomic list that its owner must collect: a fifth of the applying
    // side's time when it dropped them), and the buffers are reused.
    let (applied_tx, applied_rx) = std::sync::mpsc::channel::<Batch>();
    std::thread::scope(|scope| {
        let applier = std::thread::Builder::new()
            .name("surge-replay".into())
            .spawn_scoped(scope, move || -> Result<(), surge_wal::Error> {
                let mut replay_events = Vec::with_capacity(REPLAY_EVENTS_PER_PUBLISH);
                for batch in decoded_rx {
                    for &(lsn, ref record) in &batch {
                        let applied = state.apply(
                            &record.command,
                            record.key.as_ref(),
                            record.now_ms,
                            &mut replay_events,
                        );
                        // Pair assertion: replay must log exactly what was logged.
                        if applied.lsn != Some(lsn) {
                            return Err(surge_wal::Error::Replay {
                                lsn,
                                message: format!(
                                    "record {lsn} ({}) replayed as {:?}",
                                    record.command.name(),
                                    applied.lsn
                                ),
                            });
                        }
                        if replay_events.len() >= REPLAY_EVENTS_PER_PUBLISH {
                            events.publish(&mut replay_events);
                        }
                    }
                    let _ = applied_tx.send(batch);
                }
                events.publish(&mut replay_events);
                Ok(())
            })
            .map_err(|e| Error::Recovery(format!("cannot start the replay thread: {e}")))?;
        let mut batch = Vec::with_capacity(REPLAY_BATCH_RECORDS);
        let decoded = wal.replay(snapshot_lsn, |lsn, payload| {
            let record = codec::decode_record(payload).map_err(|e| format!("record {lsn}: {e}"))?;
            batch.push((lsn, record));
            if batch.len() == REPLAY_BATCH_RECORDS {
                let next = match applied_rx.try_recv() {
                    Ok(mut applied) => {
                        applied.clear();
                        applied
                    }
                    Err(_) => Vec::with_capacity(REPLAY_BATCH_RECORDS),
                };
                if decoded_tx
                    .send(std::mem::replace(&mut batch, next))
                    .is_err()
                {
                    // The applying side stopped on an error: it is reported below.
                    return Err("replay stopped".into());
                }
            }
            Ok(())
        });
        if !batch.is_empty() {
            let _ = decoded_tx.send(batch);
        }
        drop(decoded_tx);
        let applied = match applier.join() {
            Ok(applied) => applied,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        // The applying side's error comes first: it stopped the decoding side.
        applied?;
        Ok(decoded?)
    })
}

/// A configured policy the state refuses, named for the operator (the idempotency
/// policy by the fields of `IdempotencyPolicy`).
fn policy_refused(command: &Command, rejection: Rejection) -> Error {
    let what = match (command, rejection) {
        (
            Command::SetIdempotencyPolicy { .. },
            Rejection::Validation {
                field: Field::WindowMs,
                violation,
            },
        ) => format!("idempotency policy window_ms: {violation:?}"),
        (
            Command::SetIdempotencyPolicy { .. },
            Rejection::Validation {
                field: Field::BudgetBytes,
                violation,
            },
        ) => format!("idempotency policy budget_bytes: {violation:?}"),
        (Command::SetIdempotencyPolicy { .. }, other) => format!("idempotency policy {other:?}"),
        (Command::SetOrderPolicy { .. }, other) => format!("order policy {other:?}"),
        (_, other) => format!("rules {other:?}"),
    };
    Error::InvalidConfig(what)
}
