//! Replication through the engine's `LogPublisher` hook, against an in-memory
//! replicated log that can be made unavailable and that fences like JetStream's
//! expected-last-sequence does: once another node published, a node's publish fails.

use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use surge_engine::wal::WalConfig;
use surge_engine::{
    Command, Durability, Engine, EngineConfig, EngineHandle, Error, LineReq, LogPublisher,
    PublishError, Query, QueryReply, RecoveryReport, Role,
};

/// The replicated log: records in order, and which node published last.
#[derive(Default)]
struct Log {
    records: Vec<(u64, Vec<u8>)>,
    last_node: Option<u32>,
    unavailable: bool,
}

type SharedLog = Arc<Mutex<Log>>;

struct FakePublisher {
    log: SharedLog,
    node: u32,
    /// When set, each publish tells `entered` and waits for a permit.
    gate: Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>,
}

impl FakePublisher {
    fn new(log: &SharedLog, node: u32) -> Box<FakePublisher> {
        Box::new(FakePublisher {
            log: Arc::clone(log),
            node,
            gate: None,
        })
    }

    fn check(&self, log: &Log) -> Result<(), PublishError> {
        if log.unavailable {
            return Err(PublishError::Unavailable("the test made it so".into()));
        }
        match log.last_node {
            Some(other) if other != self.node => {
                Err(PublishError::Fenced(format!("node {other} published last")))
            }
            _ => Ok(()),
        }
    }
}

impl LogPublisher for FakePublisher {
    fn resume(&mut self) -> Result<u64, PublishError> {
        let log = self.log.lock();
        self.check(&log)?;
        Ok(log.records.last().map_or(0, |(lsn, _)| *lsn))
    }

    fn publish(&mut self, records: &[(u64, Vec<u8>)]) -> Result<(), PublishError> {
        if let Some((entered, permit)) = &self.gate {
            let _ = entered.send(());
            let _ = permit.recv();
        }
        let mut log = self.log.lock();
        self.check(&log)?;
        let end = log.records.last().map_or(0, |(lsn, _)| *lsn);
        assert!(records.iter().all(|(lsn, _)| *lsn > end), "published twice");
        log.records.extend(records.iter().cloned());
        log.last_node = Some(self.node);
        Ok(())
    }
}

fn config(dir: &std::path::Path, durability: Durability, role: Role) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        durability,
        role,
        replicate: true,
        wal: WalConfig {
            segment_bytes: 16 * 4096,
            snapshots_kept: 2,
        },
        // These tests fence and cut the log by hand and let a write find out; the
        // idle check (its own test) would find out first now and then.
        stream_check_interval_ms: 3_600_000,
        ..EngineConfig::default()
    }
}

fn define(sku: &str, on_hand: u64) -> Command {
    Command::DefineSku {
        sku: sku.into(),
        name: sku.into(),
        on_hand,
        low_stock_threshold: 0,
    }
}

/// A SKU defined at its low-stock threshold: one record, two events
/// (`sku.defined`, `stock.low`).
fn define_low(sku: &str, on_hand: u64) -> Command {
    Command::DefineSku {
        sku: sku.into(),
        name: sku.into(),
        on_hand,
        low_stock_threshold: on_hand,
    }
}

fn reserve(sku: &str) -> Command {
    Command::Reserve {
        lines: vec![LineReq {
            sku: sku.into(),
            qty: 1,
        }],
        ttl_ms: 600_000,
        actor: "t".into(),
    }
}

fn write(handle: &EngineHandle, command: Command) -> Result<(), Error> {
    handle
        .submit(command, None)?
        .wait()
        .map(|acked| assert!(acked.outcome.is_ok(), "{:?}", acked.outcome))
}

fn digest(handle: &EngineHandle) -> u64 {
    match handle.query(Query::Digest).expect("queued").wait() {
        Ok(Ok(QueryReply::Digest(d))) => d,
        other => panic!("{other:?}"),
    }
}

/// Wait (bounded) for a condition another thread makes true.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

/// Open a leader over `config` and attach a publisher to `log` as node 1 (its
/// stage resumes on its own thread).
fn open_attached(config: EngineConfig, log: &SharedLog) -> (EngineHandle, RecoveryReport) {
    let (leader, report) = Engine::open(config).expect("open");
    leader
        .attach_publisher(FakePublisher::new(log, 1))
        .expect("queued")
        .wait()
        .expect("attached");
    (leader, report)
}

/// A leader in `replicated` mode publishing to `log` as node 1, its stage resumed.
fn publishing_leader(dir: &std::path::Path, log: &SharedLog) -> EngineHandle {
    let (leader, _) = open_attached(config(dir, Durability::Replicated, Role::Leader), log);
    wait_until("the publish stage to resume", || {
        leader.replication_down().is_none()
    });
    leader
}

/// Feed a standby everything the replicated log holds.
fn catch_up(standby: &EngineHandle, log: &SharedLog) -> u64 {
    let records = log.lock().records.clone();
    standby
        .replicate(records)
        .expect("queued")
        .wait()
        .expect("applied")
}

#[test]
fn replicated_answers_only_after_the_publish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SharedLog::default();
    let (leader, _) =
        Engine::open(config(dir.path(), Durability::Replicated, Role::Leader)).expect("open");
    // Before a publisher is attached nothing is acknowledged.
    assert!(matches!(
        write(&leader, define("A", 10)),
        Err(Error::StorageUnavailable(_))
    ));
    let (entered_tx, entered) = mpsc::channel();
    let (permit, permit_rx) = mpsc::channel();
    let mut publisher = FakePublisher::new(&log, 1);
    publisher.gate = Some((entered_tx, permit_rx));
    let attach = leader.attach_publisher(publisher).expect("queued");
    attach.wait().expect("attached");
    // Writes are taken once the stage has found where the replicated log ends.
    wait_until("the publish stage to resume", || {
        leader.replication_down().is_none()
    });
    let (done_tx, done) = mpsc::channel();
    let writer = leader.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(write(&writer, define("A", 10)));
    });
    entered.recv().expect("the publish began");
    assert!(
        done.recv_timeout(Duration::from_millis(200)).is_err(),
        "answered before the replicated log acknowledged"
    );
    permit.send(()).expect("permit");
    done.recv().expect("answered").expect("written");
    let published = log.lock().records.clone();
    assert_eq!(
        published.len(),
        1,
        "the one record is in the replicated log"
    );
    assert_eq!(
        leader
            .stats()
            .published_lsn
            .load(std::sync::atomic::Ordering::Acquire),
        published[0].0
    );
    // Later writes flow with a permit each.
    for _ in 0..5 {
        permit.send(()).expect("permit");
        write(&leader, reserve("A")).expect("written");
    }
    assert_eq!(log.lock().records.len(), 6);
}

#[test]
fn a_standby_follows_then_promotion_fences_the_old_leader() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let standby_dir = tempfile::tempdir().expect("tempdir");
    let log = SharedLog::default();
    let leader = publishing_leader(leader_dir.path(), &log);
    write(&leader, define("A", 100)).expect("written");
    for _ in 0..20 {
        write(&leader, reserve("A")).expect("written");
    }
    let (standby, _) =
        Engine::open(config(standby_dir.path(), Durability::Sync, Role::Standby)).expect("open");
    assert_eq!(standby.role(), Role::Standby);
    catch_up(&standby, &log);
    assert_eq!(
        digest(&standby),
        digest(&leader),
        "the standby has every write"
    );
    // Applying the same records again changes nothing (a resumed stream repeats).
    catch_up(&standby, &log);
    assert_eq!(digest(&standby), digest(&leader));
    assert!(matches!(
        write(&standby, reserve("A")),
        Err(Error::NotLeader(_))
    ));

    let published_digest = digest(&leader);
    // Promotion: the new leader fences the replicated log (here, by hand), then
    // publishes; the old one is refused.
    log.lock().last_node = Some(2);
    let published_before_promotion = log.lock().records.len();
    standby
        .promote(FakePublisher::new(&log, 2))
        .expect("queued")
        .wait()
        .expect("promoted");
    assert_eq!(standby.role(), Role::Leader);
    write(&standby, reserve("A")).expect("the new leader takes writes");
    wait_until("the new leader's publish", || {
        log.lock().records.len() == published_before_promotion + 1
    });
    let before = log.lock().records.len();
    assert!(matches!(
        write(&leader, reserve("A")),
        Err(Error::NotLeader(_))
    ));
    assert_eq!(leader.role(), Role::Fenced);
    assert!(matches!(
        write(&leader, reserve("A")),
        Err(Error::NotLeader(_))
    ));
    assert_eq!(
        log.lock().records.len(),
        before,
        "nothing of the old leader's"
    );
    // The fenced node still answers reads, from what it published: the record it
    // logged and could not publish is not waited for (nor seen).
    let (tx, rx) = mpsc::channel();
    let old = leader.clone();
    std::thread::spawn(move || {
        let _ = tx.send(digest(&old));
    });
    let fenced_digest = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("a read on the fenced node was never answered");
    assert_eq!(
        fenced_digest, published_digest,
        "it shows what it published"
    );
}

#[test]
fn an_unavailable_log_refuses_replicated_writes_until_it_is_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SharedLog::default();
    log.lock().unavailable = true;
    let (leader, _) = open_attached(
        config(dir.path(), Durability::Replicated, Role::Leader),
        &log,
    );
    wait_until("the stage to find the log down", || {
        leader
            .replication_down()
            .is_some_and(|why| why.contains("test"))
    });
    assert!(matches!(
        write(&leader, define("A", 5)),
        Err(Error::StorageUnavailable(_))
    ));
    log.lock().unavailable = false;
    wait_until("the stage to find the log back", || {
        leader.replication_down().is_none()
    });
    write(&leader, define("A", 5)).expect("written once the log is back");
    assert_eq!(log.lock().records.len(), 1);
}

/// An idle leader learns that it was deposed, or cut off from the replicated
/// log, with no write to find out: its publish stage asks the log where it ends
/// when nothing came to publish for `stream_check_interval_ms`. A load balancer
/// that took it out of service sends none, and `/readyz` reads these.
#[test]
fn an_idle_leader_finds_its_log_down_and_back_and_its_fence_with_no_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SharedLog::default();
    let checked = EngineConfig {
        stream_check_interval_ms: 20,
        ..config(dir.path(), Durability::Replicated, Role::Leader)
    };
    let (leader, _) = open_attached(checked, &log);
    wait_until("the publish stage to resume", || {
        leader.replication_down().is_none()
    });
    write(&leader, define("A", 5)).expect("written");
    log.lock().unavailable = true;
    wait_until("the idle leader to find the log down", || {
        leader
            .replication_down()
            .is_some_and(|why| why.contains("test"))
    });
    assert_eq!(leader.role(), Role::Leader);
    log.lock().unavailable = false;
    wait_until("the idle leader to find the log back", || {
        leader.replication_down().is_none()
    });
    // A standby promoted elsewhere fences the log.
    log.lock().last_node = Some(2);
    wait_until("the idle leader to find itself fenced", || {
        leader.role() == Role::Fenced
    });
    assert!(matches!(
        write(&leader, reserve("A")),
        Err(Error::NotLeader(_))
    ));
    assert_eq!(
        log.lock().records.len(),
        1,
        "nothing published after the fence"
    );
}

#[test]
fn a_restarted_leader_publishes_the_tail_it_never_published() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SharedLog::default();
    log.lock().unavailable = true;
    let mut leader_config = config(dir.path(), Durability::Sync, Role::Leader);
    // Snapshots every few records: pruning must still keep what is unpublished.
    leader_config.snapshot_every_records = 8;
    leader_config.snapshot_log_percent_min = 0;
    let expected = {
        let (leader, _) = open_attached(leader_config.clone(), &log);
        // `sync` answers after the local commit; publishing trails (and fails).
        write(&leader, define("A", 1_000)).expect("written");
        for i in 0..300 {
            write(&leader, reserve("A")).expect("written");
            if i % 50 == 0 {
                leader.snapshot().expect("queued").wait().expect("snapshot");
            }
        }
        let digest = digest(&leader);
        leader.shutdown();
        digest
    };
    assert!(log.lock().records.is_empty());
    log.lock().unavailable = false;
    let (leader, _) = Engine::open(leader_config).expect("reopen");
    let logged = leader
        .attach_publisher(FakePublisher::new(&log, 1))
        .expect("queued")
        .wait()
        .expect("attached");
    wait_until("the tail to be published", || {
        log.lock()
            .records
            .last()
            .is_some_and(|(lsn, _)| *lsn >= logged)
    });
    let standby_dir = tempfile::tempdir().expect("tempdir");
    let (standby, _) =
        Engine::open(config(standby_dir.path(), Durability::Sync, Role::Standby)).expect("open");
    catch_up(&standby, &log);
    assert_eq!(digest(&standby), expected, "every record, from the first");
}

#[test]
fn trailing_records_of_an_outage_come_back_from_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SharedLog::default();
    let (leader, _) = open_attached(config(dir.path(), Durability::Sync, Role::Leader), &log);
    write(&leader, define("A", 1_000)).expect("written");
    wait_until("the first record to be published", || {
        log.lock().records.len() == 1
    });
    log.lock().unavailable = true;
    // `sync` goes on while the replicated log is down; the stage keeps only where
    // the trailing records end, not the records.
    for _ in 0..200 {
        write(&leader, reserve("A")).expect("written");
    }
    wait_until("the stage to find the log down", || {
        leader.replication_down().is_some()
    });
    log.lock().unavailable = false;
    let last = leader
        .stats()
        .durable_lsn
        .load(std::sync::atomic::Ordering::Acquire);
    wait_until("everything to be published", || {
        log.lock()
            .records
            .last()
            .is_some_and(|(lsn, _)| *lsn >= last)
    });
    let standby_dir = tempfile::tempdir().expect("tempdir");
    let (standby, _) =
        Engine::open(config(standby_dir.path(), Durability::Sync, Role::Standby)).expect("open");
    catch_up(&standby, &log);
    assert_eq!(digest(&standby), digest(&leader), "no gap, no duplicate");
}

/// A leader on a newer build logs rules (or limits) this standby's build does not
/// know: the standby refuses the record with the reason (it used to panic, "diverged"),
/// changes nothing, and follows again once the stream carries what it knows.
#[test]
fn a_standby_refuses_rules_newer_than_its_build() {
    let standby_dir = tempfile::tempdir().expect("tempdir");
    let (standby, _) =
        Engine::open(config(standby_dir.path(), Durability::Sync, Role::Standby)).expect("open");
    let keyed_record = |command: Command, key: Option<surge_engine::IdempotencyKey>| {
        let mut bytes = Vec::new();
        surge_engine::codec::encode_record(
            &surge_engine::codec::LogRecord {
                now_ms: 1,
                command,
                key,
            },
            &mut bytes,
        );
        bytes
    };
    let record = |command: Command| keyed_record(command, None);
    let defined = standby
        .replicate(vec![(1, record(define("A", 5)))])
        .expect("queued")
        .wait()
        .expect("applied");
    assert_eq!(defined, 1);
    let before = digest(&standby);
    let newer = Command::SetRules {
        rules: surge_engine::RULES_CURRENT + 1,
    };
    match standby
        .replicate(vec![(2, record(newer))])
        .expect("queued")
        .wait()
    {
        Err(Error::Replication(reason)) => {
            assert!(reason.contains("upgrade this standby"), "{reason}");
        }
        other => panic!("a record of unknown rules was taken: {other:?}"),
    }
    assert_eq!(digest(&standby), before, "nothing changed");
    // Any record this build refuses, not only newer rules (here a policy out of
    // this build's range), is refused with the reason and changes nothing.
    let out_of_range = Command::SetIdempotencyPolicy {
        window_ms: 1,
        budget_bytes: 1,
    };
    match standby
        .replicate(vec![(2, record(out_of_range))])
        .expect("queued")
        .wait()
    {
        Err(Error::Replication(reason)) => {
            assert!(reason.contains("refused by this build"), "{reason}");
        }
        other => panic!("a refused record was taken: {other:?}"),
    }
    // Keyed too, where the state would log the refusal under the key and diverge
    // silently: here an actor longer than this build logs.
    let long_actor = Command::Reserve {
        lines: vec![LineReq {
            sku: "A".into(),
            qty: 1,
        }],
        ttl_ms: 600_000,
        actor: "a".repeat(surge_engine::limits::LOGGED_ACTOR_LEN_MAX + 1),
    };
    let key = surge_engine::IdempotencyKey {
        key: "k".into(),
        fingerprint: 1,
    };
    let keyed = keyed_record(long_actor, Some(key));
    match standby.replicate(vec![(2, keyed)]).expect("queued").wait() {
        Err(Error::Replication(reason)) => {
            assert!(reason.contains("refused by this build"), "{reason}");
        }
        other => panic!("a keyed record over this build's limits was taken: {other:?}"),
    }
    assert_eq!(digest(&standby), before, "nothing changed");
    assert_eq!(standby.role(), Role::Standby);
    let next = standby
        .replicate(vec![(2, record(reserve("A")))])
        .expect("queued")
        .wait()
        .expect("it still follows");
    assert_eq!(next, 2);
}

/// A standby promoted from a leader that ran older rules (here: none configured)
/// logs its own order policy and this build's rules, and publishes them, as it
/// would at a restart as the leader; in `replicated` mode too, where the log
/// refuses writes until the publish stage has resumed (they were lost then).
#[test]
fn a_promoted_standby_logs_its_policy_and_rules() {
    for durability in [Durability::Sync, Durability::Replicated] {
        promoted_standby_logs_its_policy_and_rules(durability);
    }
}

fn promoted_standby_logs_its_policy_and_rules(durability: Durability) {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let standby_dir = tempfile::tempdir().expect("tempdir");
    let log = SharedLog::default();
    let leader = publishing_leader(leader_dir.path(), &log);
    write(&leader, define("A", 10)).expect("written");
    let policy = surge_engine::OrderPolicy {
        ship_sla_ms: 3_600_000,
        review_amount_min: None,
    };
    let (standby, _) = Engine::open(EngineConfig {
        order_policy: Some(policy),
        ..config(standby_dir.path(), durability, Role::Standby)
    })
    .expect("open");
    catch_up(&standby, &log);
    assert_eq!(digest(&standby), digest(&leader));
    log.lock().last_node = Some(2);
    let published_before = log.lock().records.len();
    standby
        .promote(FakePublisher::new(&log, 2))
        .expect("queued")
        .wait()
        .expect("promoted");
    wait_until("the promoted leader's policy records to publish", || {
        log.lock().records.len() >= published_before + 2
    });
    let published: Vec<Command> = log.lock().records[published_before..]
        .iter()
        .map(|(_, bytes)| {
            surge_engine::codec::decode_record(bytes)
                .expect("decodes")
                .command
        })
        .collect();
    assert!(
        matches!(
            published.as_slice(),
            [
                Command::SetOrderPolicy { ship_sla_ms: 3_600_000, review_amount_min: None },
                Command::SetRules { rules },
            ] if *rules == surge_engine::RULES_CURRENT
        ),
        "{durability:?}: {published:?}"
    );
    write(&standby, reserve("A")).expect("the new leader takes writes");
}

/// A requested snapshot, answered within 30 s (a request left waiting fails the
/// test instead of hanging it).
fn snapshot_within(handle: &EngineHandle) -> u64 {
    let (tx, rx) = mpsc::channel();
    let ticket = handle.snapshot().expect("queued");
    std::thread::spawn(move || {
        let _ = tx.send(ticket.wait());
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("a snapshot request was never answered")
        .expect("snapshot")
}

fn encoded_by_writer(handle: &EngineHandle) -> u64 {
    handle
        .stats()
        .snapshots_encoded_by_writer
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// In `replicated` mode the follower encodes requested snapshots, as in `sync`
/// mode: the writer encodes none. A request covers what was acknowledged when it
/// came (published, for a leader), which the follower has: so a leader fenced
/// with a record it logged and could not publish still gets its snapshot (the
/// writer encoded it before), and a standby's covers what it applied.
#[test]
fn in_replicated_mode_the_follower_encodes_requested_snapshots_also_when_fenced() {
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let log = SharedLog::default();
    let leader = publishing_leader(leader_dir.path(), &log);
    write(&leader, define("A", 100)).expect("written");
    for _ in 0..10 {
        write(&leader, reserve("A")).expect("written");
    }
    let published = |log: &SharedLog| log.lock().records.last().map_or(0, |(lsn, _)| *lsn);
    let lsn = snapshot_within(&leader);
    assert!(lsn >= published(&log), "snapshot at {lsn}");
    for _ in 0..10 {
        write(&leader, reserve("A")).expect("written");
    }
    let published_digest = digest(&leader);
    log.lock().last_node = Some(2);
    assert!(matches!(
        write(&leader, reserve("A")),
        Err(Error::NotLeader(_))
    ));
    assert_eq!(leader.role(), Role::Fenced);
    let fenced_lsn = snapshot_within(&leader);
    assert!(
        fenced_lsn >= published(&log) && fenced_lsn > lsn,
        "snapshot at {fenced_lsn}, {} published, the one before at {lsn}",
        published(&log)
    );
    assert_eq!(encoded_by_writer(&leader), 0);
    let standby_dir = tempfile::tempdir().expect("tempdir");
    let (standby, _) = Engine::open(config(
        standby_dir.path(),
        Durability::Replicated,
        Role::Standby,
    ))
    .expect("open");
    let applied = catch_up(&standby, &log);
    let standby_lsn = snapshot_within(&standby);
    assert!(
        standby_lsn >= applied,
        "snapshot at {standby_lsn}, {applied} applied"
    );
    assert_eq!(digest(&standby), published_digest);
    assert_eq!(encoded_by_writer(&standby), 0);
}

/// A restarted leader whose replicated log is down has published nothing in this
/// run: a requested snapshot still covers what it recovered (the follower holds
/// it), not only what this run published (nothing).
#[test]
fn a_restarted_leader_snapshots_what_it_recovered_while_its_log_is_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SharedLog::default();
    let mut leader_config = config(dir.path(), Durability::Replicated, Role::Leader);
    leader_config.snapshot_on_shutdown = false;
    let logged = {
        let (leader, _) = open_attached(leader_config.clone(), &log);
        wait_until("the publish stage to resume", || {
            leader.replication_down().is_none()
        });
        write(&leader, define("A", 100)).expect("written");
        for _ in 0..10 {
            write(&leader, reserve("A")).expect("written");
        }
        leader.shutdown();
        log.lock().records.last().map_or(0, |(lsn, _)| *lsn)
    };
    log.lock().unavailable = true;
    let (leader, report) = Engine::open(leader_config).expect("reopen");
    assert!(report.records_replayed > 0, "{report:?}");
    leader
        .attach_publisher(FakePublisher::new(&log, 1))
        .expect("queued")
        .wait()
        .expect("attached");
    wait_until("the stage to find the log down", || {
        leader.replication_down().is_some()
    });
    let lsn = snapshot_within(&leader);
    assert!(lsn >= logged, "snapshot at {lsn}, {logged} recovered");
    assert_eq!(encoded_by_writer(&leader), 0);
}

/// A fenced node refuses reads when its readable state holds what it could not
/// publish: with no follower its reads go through the writer, whose state has the
/// write the fence refused (a review found the first check looked at the
/// follower's board only); a `sync`-mode follower applies what the local commit
/// acknowledged. A `replicated` node with a follower reads what it published, and
/// answers.
#[test]
fn a_fenced_node_refuses_reads_of_what_it_could_not_publish() {
    for (durability, follower, refused) in [
        (Durability::Replicated, false, true),
        (Durability::Sync, false, true),
        (Durability::Sync, true, true),
        (Durability::Replicated, true, false),
    ] {
        let case = format!("{durability:?}, follower {follower}");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = SharedLog::default();
        let mut leader_config = config(dir.path(), durability, Role::Leader);
        leader_config.follower = follower;
        let (leader, _) = open_attached(leader_config, &log);
        wait_until("resumed", || leader.replication_down().is_none());
        // The last record published has two events (`sku.defined`, `stock.low`):
        // its LSN, the first event's seq, is below the last event's.
        write(&leader, define_low("A", 100)).expect("written");
        wait_until("published", || !log.lock().records.is_empty());
        assert!(leader.reads_refused().is_none(), "{case}");
        let published = digest(&leader);
        // Another node promoted: the next publish is refused.
        log.lock().last_node = Some(2);
        let _ = write(&leader, reserve("A"));
        wait_until("fenced", || leader.role() == Role::Fenced);
        match leader.reads_refused() {
            Some(Error::NotLeader(why)) => {
                assert!(refused && why.contains("never got"), "{case}: {why}")
            }
            None => {
                assert!(!refused, "{case}: reads answered");
                assert_eq!(digest(&leader), published, "{case}");
            }
            Some(other) => panic!("{case}: {other:?}"),
        }
    }
}

/// A `replicated` leader restarted while the stream is down has recovered records
/// the stream may never have taken (never acknowledged): it reads none of them
/// until the stream holds them.
#[test]
fn a_replicated_leader_reads_nothing_the_stream_does_not_hold_yet() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = SharedLog::default();
    {
        let leader = publishing_leader(dir.path(), &log);
        // The last record has two events: the stream holds it by its first.
        write(&leader, define_low("A", 100)).expect("written");
        wait_until("published", || !log.lock().records.is_empty());
        leader.shutdown();
    }
    // Restarted with the stream holding everything: it reads (an outside probe saw
    // such a leader refuse every read and write for good, comparing the last event's
    // seq with the last record's LSN).
    {
        let (leader, _) = open_attached(
            config(dir.path(), Durability::Replicated, Role::Leader),
            &log,
        );
        wait_until("the stream resumed", || leader.replication_down().is_none());
        assert!(
            leader.reads_refused().is_none(),
            "{:?}",
            leader.reads_refused()
        );
        leader.shutdown();
    }
    log.lock().records.clear();
    log.lock().unavailable = true;
    let (leader, _) = open_attached(
        config(dir.path(), Durability::Replicated, Role::Leader),
        &log,
    );
    match leader.reads_refused() {
        Some(Error::StorageUnavailable(why)) => assert!(why.contains("does not hold"), "{why}"),
        other => panic!("{other:?}"),
    }
    log.lock().unavailable = false;
    wait_until("the recovered tail published", || {
        leader.reads_refused().is_none()
    });
    assert!(!log.lock().records.is_empty());
}

/// A standby whose disk fills says so (`storage_problem`, the gauge and the log;
/// `/readyz` still says `standby`, with its lag), and takes it back once space
/// is freed, with no record to find out: its writer retries the room as a
/// leader's does. Also when it starts on the full disk. (The standby runs as a
/// step-driven core on the simulated disk; its leader's records come from a
/// leader publishing to the in-memory log.)
#[test]
fn a_standby_reports_its_full_disk_and_takes_it_back_with_the_space() {
    use surge_engine::wal::SimStorage;
    const T_MS: u64 = 1_700_000_000_000;
    let leader_dir = tempfile::tempdir().expect("tempdir");
    let log = SharedLog::default();
    let leader = publishing_leader(leader_dir.path(), &log);
    write(&leader, define("A", 100_000)).expect("written");
    for _ in 0..1_500 {
        write(&leader, reserve("A")).expect("written");
    }
    wait_until("everything published", || log.lock().records.len() == 1_501);
    let records = log.lock().records.clone();
    // The core publishes nothing (nor is it promoted here): `replicate` off.
    let standby_config = || EngineConfig {
        replicate: false,
        ..config(
            std::path::Path::new("unused"),
            Durability::Sync,
            Role::Standby,
        )
    };
    let disk = SimStorage::new();
    let (mut standby, _) = Engine::open_core(disk.clone(), standby_config()).expect("open");
    let apply = |core: &mut surge_engine::Core<SimStorage>, chunk: &[(u64, Vec<u8>)]| {
        let ticket = core.handle().replicate(chunk.to_vec()).expect("queued");
        core.step(T_MS);
        ticket.wait()
    };
    disk.set_disk_full(true);
    // One record at a time until the segment is full.
    let mut applied = 0;
    let refusal = loop {
        assert!(applied < records.len(), "the segment never filled");
        match apply(&mut standby, &records[applied..=applied]) {
            Ok(_) => applied += 1,
            Err(e) => break e,
        }
    };
    assert!(
        matches!(refusal, Error::StorageUnavailable(_)),
        "{refusal:?}"
    );
    let handle = standby.handle().clone();
    assert!(
        handle
            .storage_problem()
            .is_some_and(|why| why.contains("space"))
    );
    assert_eq!(
        handle.storage_refusal(),
        None,
        "a standby is not refused for it"
    );
    assert_eq!(handle.role(), Role::Standby);
    // Restarted on the still-full disk: said at once.
    standby.close(T_MS);
    let (mut standby, _) = Engine::open_core(disk.clone(), standby_config()).expect("reopen");
    assert!(
        standby.handle().storage_problem().is_some(),
        "said at start"
    );
    standby.tick(T_MS + 1);
    assert!(standby.handle().storage_problem().is_some(), "still full");
    // Space back: the next step takes it back with no record.
    disk.set_disk_full(false);
    standby.tick(T_MS + 2);
    assert_eq!(standby.handle().storage_problem(), None);
    assert_eq!(
        apply(&mut standby, &records[applied..]).expect("applied"),
        records.last().expect("records").0
    );
    // The segment the retry made (named before its first record came) reopens
    // with everything: the leader's state.
    standby.close(T_MS + 3);
    let (mut again, _) = Engine::open_core(disk, standby_config()).expect("reopen");
    let ticket = again.handle().query(Query::Digest).expect("queued");
    again.step(T_MS + 3);
    let Ok(Ok(QueryReply::Digest(reopened))) = ticket.wait() else {
        panic!("no digest")
    };
    assert_eq!(reopened, digest(&leader));
}
