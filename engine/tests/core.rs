//! The deterministic core: the writer stepped on the test's thread, the time an
//! argument of each step (`Engine::open_core`).

use surge_engine::wal::{SimStorage, WalConfig};
use surge_engine::{
    Acked, Command, Core, Durability, Engine, EngineConfig, Error, LineReq, Query, QueryReply,
};

const T0_MS: u64 = 1_700_000_000_000;

fn config() -> EngineConfig {
    EngineConfig {
        durability: Durability::Sync,
        wal: WalConfig {
            segment_bytes: 64 * 1024,
            snapshots_kept: 2,
        },
        snapshot_every_records: 0,
        ..EngineConfig::default()
    }
}

fn available(core: &mut Core<SimStorage>, now_ms: u64) -> u64 {
    let ticket = core
        .handle()
        .query(Query::GetSku { sku: "S".into() })
        .expect("queued");
    core.step(now_ms);
    match ticket.wait().expect("answered") {
        Ok(QueryReply::Sku(view)) => view.available,
        other => panic!("{other:?}"),
    }
}

/// SKU `S` with `on_hand` units.
fn define(on_hand: u64) -> Command {
    Command::DefineSku {
        sku: "S".into(),
        name: String::new(),
        on_hand,
        low_stock_threshold: 0,
    }
}

fn reserve(ttl_ms: u64) -> Command {
    Command::Reserve {
        lines: vec![LineReq {
            sku: "S".into(),
            qty: 3,
        }],
        ttl_ms,
        actor: "test".into(),
    }
}

#[test]
fn nothing_happens_between_steps_and_the_time_is_the_steps_argument() {
    let disk = SimStorage::new();
    let (mut core, _) = Engine::open_core(disk.clone(), config()).expect("open");
    let defined = core.handle().submit(define(10), None).expect("queued");
    let held = core.handle().submit(reserve(1_000), None).expect("queued");
    // Queued, not taken: the core has no thread.
    assert_eq!(core.handle().queue_len(), 2);
    assert_eq!(core.step(T0_MS), 2, "both requests in one step");
    assert!(defined.wait().expect("answered").outcome.is_ok());
    assert!(held.wait().expect("answered").outcome.is_ok());
    assert_eq!(available(&mut core, T0_MS), 7);
    // One millisecond before the hold's deadline nothing expires; at it, the
    // step's own expiry gives the units back, with no command from us.
    core.tick(T0_MS + 999);
    assert_eq!(available(&mut core, T0_MS + 999), 7);
    core.tick(T0_MS + 1_000);
    assert_eq!(available(&mut core, T0_MS + 1_000), 10);
    // Time never runs backwards: a step at an earlier time runs at the latest.
    let again = core.handle().submit(reserve(1_000), None).expect("queued");
    core.step(T0_MS);
    assert!(again.wait().expect("answered").outcome.is_ok());
    core.tick(T0_MS + 1_999);
    assert_eq!(available(&mut core, T0_MS + 1_999), 7);
    core.tick(T0_MS + 2_000);
    assert_eq!(available(&mut core, T0_MS + 2_000), 10);
    core.close(T0_MS + 2_000);

    // What the steps acknowledged is durable: a reopened core has it.
    let (mut reopened, report) = Engine::open_core(disk, config()).expect("reopen");
    assert!(report.next_lsn > 1);
    assert_eq!(available(&mut reopened, T0_MS + 2_000), 10);
}

/// A request whose caller stopped waiting before the writer took it (an HTTP request
/// timed out, a client went away) is not applied: a 503 for it changes nothing, and
/// the writer sheds what nobody waits for. One whose caller waits is applied.
#[test]
fn a_request_abandoned_before_the_writer_takes_it_is_not_applied() {
    let (mut core, _) = Engine::open_core(SimStorage::new(), config()).expect("open");
    let defined = core.handle().submit(define(10), None).expect("queued");
    core.step(T0_MS);
    assert!(defined.wait().expect("answered").outcome.is_ok());
    let abandoned = core.handle().submit(reserve(60_000), None).expect("queued");
    let abandoned_batch = core
        .handle()
        .submit_batch(vec![reserve(60_000), reserve(60_000)])
        .expect("queued");
    let kept = core.handle().submit(reserve(60_000), None).expect("queued");
    drop(abandoned);
    drop(abandoned_batch);
    core.step(T0_MS);
    assert!(kept.wait().expect("answered").outcome.is_ok());
    assert_eq!(
        available(&mut core, T0_MS),
        7,
        "only the kept hold took stock"
    );
    let stats = core.handle().stats();
    assert_eq!(
        stats
            .commands_abandoned
            .load(std::sync::atomic::Ordering::Relaxed),
        3
    );
}

#[test]
fn a_closed_core_takes_no_more_requests() {
    let (core, _) = Engine::open_core(SimStorage::new(), config()).expect("open");
    let handle = core.handle().clone();
    core.close(T0_MS);
    assert!(matches!(
        handle.submit(reserve(1_000), None),
        Err(Error::ShuttingDown)
    ));
}

#[test]
fn a_replicated_configuration_is_refused() {
    let config = EngineConfig {
        replicate: true,
        ..config()
    };
    assert!(matches!(
        Engine::open_core(SimStorage::new(), config),
        Err(Error::InvalidConfig(_))
    ));
}

#[test]
fn a_step_takes_requests_up_to_its_bound_in_commands() {
    let config = EngineConfig {
        batch_len_max: 4,
        ..config()
    };
    let (mut core, _) = Engine::open_core(SimStorage::new(), config).expect("open");
    let defined = core.handle().submit(define(1_000), None).expect("queued");
    assert_eq!(core.step(T0_MS), 1);
    assert!(defined.wait().expect("answered").outcome.is_ok());
    let handle = core.handle().clone();
    // A batch counts as its commands: three, then one single reservation reaches
    // the bound of four, and the next two wait for the next step.
    let batch = handle
        .submit_batch(vec![reserve(60_000), reserve(60_000), reserve(60_000)])
        .expect("queued");
    let singles: Vec<_> = (0..3)
        .map(|_| handle.submit(reserve(60_000), None).expect("queued"))
        .collect();
    assert_eq!(core.step(T0_MS), 2, "the batch of three and one single");
    assert_eq!(core.handle().queue_len(), 2);
    assert_eq!(core.step(T0_MS), 2, "the two singles left");
    let read = || {
        handle
            .query(Query::GetSku { sku: "S".into() })
            .expect("queued")
    };
    // A read counts as one; a batch larger than the bound is taken whole, alone
    // when it comes after four reads.
    let reads: Vec<_> = (0..4).map(|_| read()).collect();
    let large = handle
        .submit_batch((0..6).map(|_| reserve(60_000)).collect())
        .expect("queued");
    assert_eq!(core.step(T0_MS), 4, "four reads");
    assert_eq!(core.step(T0_MS), 1, "the batch of six, whole");
    // The request that reaches the bound is taken whole, past it: three reads and
    // a batch of two make one step of five commands; the read after it waits.
    let more_reads: Vec<_> = (0..3).map(|_| read()).collect();
    let pair = handle
        .submit_batch(vec![reserve(60_000), reserve(60_000)])
        .expect("queued");
    let last_read = read();
    assert_eq!(core.step(T0_MS), 4, "three reads and the pair");
    assert_eq!(core.step(T0_MS), 1, "the read after them");
    assert_eq!(pair.wait().expect("answered").len(), 2);
    for answer in more_reads.into_iter().chain([last_read]) {
        assert!(answer.wait().expect("answered").is_ok());
    }
    for answer in batch.wait().expect("answered") {
        assert!(answer.expect("applied").outcome.is_ok());
    }
    for single in singles {
        assert!(single.wait().expect("answered").outcome.is_ok());
    }
    for answer in reads {
        assert!(answer.wait().expect("answered").is_ok());
    }
    assert_eq!(large.wait().expect("answered").len(), 6);
    assert_eq!(available(&mut core, T0_MS), 1_000 - 14 * 3);
    core.close(T0_MS);
}

/// One command, submitted and stepped at `now_ms`: its answer.
fn step_one(core: &mut Core<SimStorage>, command: Command, now_ms: u64) -> Result<Acked, Error> {
    let ticket = core.handle().submit(command, None).expect("queued");
    core.step(now_ms);
    ticket.wait()
}

/// A core on the simulated disk with SKU `S` defined (1,000,000 units), the disk
/// still with room.
fn core_with_stock() -> (SimStorage, Core<SimStorage>) {
    let disk = SimStorage::new();
    let (mut core, _) = Engine::open_core(disk.clone(), config()).expect("open");
    let defined = step_one(&mut core, define(1_000_000), T0_MS);
    assert!(defined.expect("answered").outcome.is_ok());
    (disk, core)
}

/// Holds of 3 units of `S` on a full disk until the one that needs a new segment
/// is refused: how many went through, and the refusal's text.
fn hold_until_refused(core: &mut Core<SimStorage>) -> (u64, String) {
    let mut accepted = 0;
    loop {
        match step_one(core, reserve(600_000), T0_MS) {
            Ok(applied) => {
                assert!(applied.outcome.is_ok());
                accepted += 1;
            }
            Err(Error::StorageUnavailable(why)) => return (accepted, why),
            Err(other) => panic!("{other:?}"),
        }
        assert!(accepted < 10_000, "the segment never filled");
    }
}

/// A full disk makes the engine say so (`storage_full`, which `/readyz` reads), and
/// the step after space is freed takes it back, with no write needed to find out:
/// a load balancer that took the node out of service sends none.
#[test]
fn a_full_disk_is_reported_until_space_is_back_even_with_no_write() {
    let (disk, mut core) = core_with_stock();
    assert_eq!(core.handle().storage_full(), None);
    disk.set_disk_full(true);
    let (accepted, why) = hold_until_refused(&mut core);
    let full = core.handle().storage_full().expect("reported");
    assert!(
        full.contains("space") && why.contains("space"),
        "{full} / {why}"
    );
    // Still full: a step changes nothing.
    core.tick(T0_MS + 1);
    assert!(core.handle().storage_full().is_some());
    assert_eq!(core.handle().writes_refused(), None, "not a fail-stop");
    // Space back: the next step, with no request, finds the room.
    disk.set_disk_full(false);
    core.tick(T0_MS + 2);
    assert_eq!(core.handle().storage_full(), None);
    assert_eq!(available(&mut core, T0_MS + 2), 1_000_000 - 3 * accepted);
    let again = step_one(&mut core, reserve(600_000), T0_MS + 3);
    assert!(again.expect("answered").outcome.is_ok());
    core.close(T0_MS + 3);
    let (mut reopened, _) = Engine::open_core(disk, config()).expect("reopen");
    assert_eq!(
        available(&mut reopened, T0_MS + 3),
        1_000_000 - 3 * (accepted + 1)
    );
}

/// A restart on a disk that is still full says so before any write: the next
/// segment cannot be prepared and the last one has no room for the largest
/// record (outside probe 7: `/readyz` said ready until the first write refused,
/// so an orchestrator put the node back in rotation). The space back, the
/// writer's retry takes it back with no write. A restart with room reports
/// nothing and leaves the log as it was.
#[test]
fn a_restart_on_a_full_disk_reports_it_before_any_write() {
    let (disk, mut core) = core_with_stock();
    disk.set_disk_full(true);
    let (accepted, _) = hold_until_refused(&mut core);
    core.close(T0_MS);
    let (mut restarted, _) = Engine::open_core(disk.clone(), config()).expect("reopen");
    let full = restarted
        .handle()
        .storage_full()
        .expect("reported at start");
    assert!(full.contains("space"), "{full}");
    assert_eq!(restarted.handle().writes_refused(), None, "not a fail-stop");
    restarted.tick(T0_MS + 1);
    assert!(restarted.handle().storage_full().is_some(), "still full");
    disk.set_disk_full(false);
    restarted.tick(T0_MS + 2);
    assert_eq!(restarted.handle().storage_full(), None);
    let again = step_one(&mut restarted, reserve(600_000), T0_MS + 3);
    assert!(again.expect("answered").outcome.is_ok());
    restarted.close(T0_MS + 3);
    // With room: nothing to report, no segment made by the start itself.
    let files = disk.file_names();
    let (mut idle, _) = Engine::open_core(disk.clone(), config()).expect("reopen");
    assert_eq!(idle.handle().storage_full(), None);
    assert_eq!(disk.file_names(), files, "an idle restart changes no file");
    assert_eq!(
        available(&mut idle, T0_MS + 3),
        1_000_000 - 3 * (accepted + 1)
    );
}

/// A restart on a full disk whose last segment still has room for the largest
/// record is ready: every write the API takes fits until that segment fills,
/// and the first refused one reports the disk (the test above).
#[test]
fn a_restart_on_a_full_disk_with_room_in_its_segment_is_ready() {
    let roomy = || EngineConfig {
        wal: WalConfig {
            segment_bytes: 4 << 20,
            snapshots_kept: 2,
        },
        ..config()
    };
    let disk = SimStorage::new();
    let (mut core, _) = Engine::open_core(disk.clone(), roomy()).expect("open");
    assert!(
        step_one(&mut core, define(1_000), T0_MS)
            .expect("answered")
            .outcome
            .is_ok()
    );
    core.close(T0_MS);
    disk.set_disk_full(true);
    let (mut restarted, _) = Engine::open_core(disk.clone(), roomy()).expect("reopen");
    assert_eq!(restarted.handle().storage_full(), None);
    let held = step_one(&mut restarted, reserve(600_000), T0_MS + 1);
    assert!(held.expect("room in the segment").outcome.is_ok());
}

/// A record small enough for the segment's last bytes goes through while the disk
/// stays full, and the full disk is still reported: only room for the record that
/// found none (a roll) ends it. It used to end at any success, so `/readyz` said
/// ready between two refusals under mixed-size traffic, and the retry stopped.
#[test]
fn a_small_record_that_still_fits_does_not_end_a_full_disk() {
    // About 4.7 KB: 64 lines of 64-byte SKU ids, unknown, so a rejection that logs
    // nothing whenever the log has room for it.
    let large = || Command::Reserve {
        lines: (0..64)
            .map(|i| LineReq {
                sku: format!("{i:064}"),
                qty: 1,
            })
            .collect(),
        ttl_ms: 600_000,
        actor: "test".into(),
    };
    let (disk, mut core) = core_with_stock();
    disk.set_disk_full(true);
    // Small holds until the large record no longer fits in the segment.
    let mut held = 0;
    loop {
        match step_one(&mut core, large(), T0_MS) {
            Ok(applied) => assert!(applied.outcome.is_err(), "an unknown SKU"),
            Err(Error::StorageUnavailable(_)) => break,
            Err(other) => panic!("{other:?}"),
        }
        let small = step_one(&mut core, reserve(600_000), T0_MS);
        assert!(small.expect("room").outcome.is_ok());
        held += 1;
        assert!(held < 10_000, "the segment never filled");
    }
    let small = step_one(&mut core, reserve(600_000), T0_MS + 1);
    assert!(small.expect("the last bytes").outcome.is_ok());
    assert!(core.handle().storage_full().is_some(), "still full");
    core.tick(T0_MS + 2);
    assert!(core.handle().storage_full().is_some(), "still full");
    disk.set_disk_full(false);
    core.tick(T0_MS + 3);
    assert_eq!(core.handle().storage_full(), None);
    let big = step_one(&mut core, large(), T0_MS + 4);
    assert!(big.expect("room again").outcome.is_err(), "an unknown SKU");
}
