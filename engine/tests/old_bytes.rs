//! Old bytes: a data dir written by an earlier build must still open.
//!
//! `engine/tests/data/format-2/` holds a small data dir (WAL format version 2: a
//! snapshot, the log after it in 64 KiB segments, and the MANIFEST) written by
//! [`generate_format_2_data_dir`] below, an ignored test that builds it on the
//! simulated disk with a manual clock, so it writes the same bytes every time. It is
//! committed and never regenerated for a new version: if a change to the `Command`
//! enum, the codec, the snapshot or the WAL layout stops these files from loading,
//! or loads them as a different state, [`format_2_data_dir_opens_to_the_same_state`]
//! fails. Regenerate only for a new format, next to the old directory:
//!
//! ```text
//! cargo test -p surge-engine --test old_bytes -- --ignored generate --nocapture
//! ```
//!
//! and put the printed values into the new test.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use surge_engine::wal::{SimStorage, WalConfig};
use surge_engine::{
    AdjustReason, CancelReason, Clock, Command, Durability, Engine, EngineConfig, EngineHandle,
    IdempotencyKey, LineReq, OrderId, OrderLineReq, OrderStatus, Query, QueryReply, Reply,
    ReservationId, ReservationStatus,
};

const SEGMENT_BYTES: u64 = 16 * 4096;
const START_MS: u64 = 1_700_000_000_000;

/// What the generator printed when it wrote `data/format-2`.
const DIGEST: u64 = 3069792111112889600;
const SNAPSHOT_LSN: u64 = 12;
const NEXT_LSN: u64 = 19;
/// The clock when the generator finished (it moved 61 s).
const END_MS: u64 = START_MS + 61_000;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/format-2")
}

fn config(data_dir: &Path, clock: Clock) -> EngineConfig {
    EngineConfig {
        data_dir: data_dir.to_path_buf(),
        durability: Durability::Sync,
        wal: WalConfig {
            segment_bytes: SEGMENT_BYTES,
            snapshots_kept: 2,
        },
        clock,
        snapshot_every_records: 0,
        snapshot_every_segments: 0,
        snapshot_on_shutdown: false,
        snapshot_in_background: false,
        pipelined_commit: false,
        follower: false,
        // The timer never runs on its own: expiry is an explicit command.
        expire_interval_ms: 3_600_000,
        ..EngineConfig::default()
    }
}

fn key(name: &str) -> IdempotencyKey {
    IdempotencyKey {
        key: name.to_string(),
        fingerprint: EngineHandle::fingerprint(&[name.as_bytes()]),
    }
}

fn create_o1() -> Command {
    Command::CreateOrder {
        order_no: "n1".into(),
        customer_id: "c1".into(),
        lines: vec![OrderLineReq {
            sku: "A".into(),
            qty: 2,
            unit_price: 500,
        }],
        payment_ttl_ms: 600_000,
        reservation_id: None,
        actor: "gen".into(),
    }
}

fn run(handle: &EngineHandle, cmd: Command, key_name: Option<&str>) -> Reply {
    handle
        .execute(cmd.clone(), key_name.map(key))
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
        .unwrap_or_else(|r| panic!("{cmd:?}: {r:?}"))
}

/// The history the fixture holds: a snapshot in the middle, records on both sides.
fn scenario(handle: &EngineHandle, clock: &AtomicU64) {
    let actor = || "gen".to_string();
    for (sku, on_hand) in [("A", 50), ("B", 20)] {
        run(
            handle,
            Command::DefineSku {
                sku: sku.into(),
                name: format!("sku {sku}"),
                on_hand,
                low_stock_threshold: 2,
            },
            None,
        );
    }
    // r1: a hold that expires after the snapshot.
    run(
        handle,
        Command::Reserve {
            lines: vec![LineReq {
                sku: "A".into(),
                qty: 3,
            }],
            ttl_ms: 60_000,
            actor: actor(),
        },
        None,
    );
    // o1 (r2): created with a key, paid, moved on to picking.
    run(handle, create_o1(), Some("k-o1"));
    run(
        handle,
        Command::PayOrder {
            id: OrderId(1),
            amount: 1_000,
            payment_ref: "pay-1".into(),
            actor: actor(),
        },
        None,
    );
    run(
        handle,
        Command::AdvanceOrder {
            id: OrderId(1),
            to: OrderStatus::Picking,
            note: String::new(),
            tracking_no: String::new(),
            actor: actor(),
        },
        None,
    );
    // o2 (r3): created, then cancelled.
    run(
        handle,
        Command::CreateOrder {
            order_no: "n2".into(),
            customer_id: "c2".into(),
            lines: vec![OrderLineReq {
                sku: "B".into(),
                qty: 4,
                unit_price: 250,
            }],
            payment_ttl_ms: 600_000,
            reservation_id: None,
            actor: actor(),
        },
        None,
    );
    run(
        handle,
        Command::CancelOrder {
            id: OrderId(2),
            reason: CancelReason::CustomerRequest,
            note: "changed mind".into(),
            actor: actor(),
        },
        None,
    );
    handle
        .snapshot()
        .expect("queued")
        .wait()
        .expect("snapshot written");
    clock.fetch_add(1_000, Ordering::SeqCst);
    run(
        handle,
        Command::AdjustStock {
            sku: "B".into(),
            delta: 5,
            reason: AdjustReason::Inbound,
            note: "truck".into(),
            actor: actor(),
        },
        None,
    );
    // o3 (r4): created with a key, left unpaid.
    run(
        handle,
        Command::CreateOrder {
            order_no: "n3".into(),
            customer_id: "c1".into(),
            lines: vec![
                OrderLineReq {
                    sku: "A".into(),
                    qty: 1,
                    unit_price: 700,
                },
                OrderLineReq {
                    sku: "B".into(),
                    qty: 1,
                    unit_price: 300,
                },
            ],
            payment_ttl_ms: 600_000,
            reservation_id: None,
            actor: actor(),
        },
        Some("k-o3"),
    );
    // r1 expires.
    clock.fetch_add(60_000, Ordering::SeqCst);
    run(handle, Command::Expire, None);
    // r5: held at the end.
    run(
        handle,
        Command::Reserve {
            lines: vec![LineReq {
                sku: "B".into(),
                qty: 2,
            }],
            ttl_ms: 3_600_000,
            actor: actor(),
        },
        None,
    );
}

fn ask(handle: &EngineHandle, query: Query) -> QueryReply {
    handle
        .query(query.clone())
        .expect("queued")
        .wait()
        .expect("answered")
        .unwrap_or_else(|r| panic!("{query:?}: {r:?}"))
}

fn digest(handle: &EngineHandle) -> u64 {
    match ask(handle, Query::Digest) {
        QueryReply::Digest(d) => d,
        other => panic!("{other:?}"),
    }
}

/// (on_hand, reserved, available) of a SKU.
fn sku_levels(handle: &EngineHandle, sku: &str) -> (u64, u64, u64) {
    match ask(handle, Query::GetSku { sku: sku.into() }) {
        QueryReply::Sku(s) => (s.on_hand, s.reserved, s.available),
        other => panic!("{other:?}"),
    }
}

fn order_status(handle: &EngineHandle, id: u64) -> OrderStatus {
    match ask(handle, Query::GetOrder { id: OrderId(id) }) {
        QueryReply::Order(o) => o.status,
        other => panic!("{other:?}"),
    }
}

fn reservation_status(handle: &EngineHandle, id: u64) -> ReservationStatus {
    match ask(
        handle,
        Query::GetReservation {
            id: ReservationId(id),
        },
    ) {
        QueryReply::Reservation(r) => r.status,
        other => panic!("{other:?}"),
    }
}

#[test]
fn format_2_data_dir_opens_to_the_same_state() {
    let fixture = fixture_dir();
    let mut names: Vec<String> = std::fs::read_dir(&fixture)
        .expect("the committed fixture")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "MANIFEST",
            "snap-00000000000000000012.snap",
            "wal-00000000000000000001.seg"
        ]
    );
    // Every file says format version 2 (bytes 8..12, after the magic).
    for (name, magic) in [
        (&names[0], b"SURGEMAN"),
        (&names[1], b"SURGSNAP"),
        (&names[2], b"SURGEWAL"),
    ] {
        let bytes = std::fs::read(fixture.join(name)).expect("read");
        assert_eq!(&bytes[..8], magic, "{name}");
        assert_eq!(bytes[8..12], 2u32.to_le_bytes(), "{name}: format version");
    }

    // Open a copy, with the real storage.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for name in &names {
        std::fs::copy(fixture.join(name), dir.join(name)).expect("copy");
    }
    let clock = Arc::new(AtomicU64::new(END_MS));
    let (handle, report) =
        Engine::open(config(&dir, Clock::manual(Arc::clone(&clock)))).expect("open old bytes");
    // Both halves were read: the snapshot, and the log after it.
    assert_eq!(report.snapshot_lsn, SNAPSHOT_LSN);
    assert!(report.records_replayed > 0, "{report:?}");
    let wal = report.wal.as_ref().expect("wal report");
    assert_eq!(wal.torn_tail, None, "{wal:?}");
    assert_eq!(report.next_lsn, NEXT_LSN);

    assert_eq!(digest(&handle), DIGEST);
    assert_eq!(sku_levels(&handle, "A"), (48, 1, 47));
    assert_eq!(sku_levels(&handle, "B"), (25, 3, 22));
    assert_eq!(order_status(&handle, 1), OrderStatus::Picking);
    assert_eq!(order_status(&handle, 2), OrderStatus::Cancelled);
    assert_eq!(order_status(&handle, 3), OrderStatus::Reserved);
    assert_eq!(reservation_status(&handle, 1), ReservationStatus::Expired);
    assert_eq!(reservation_status(&handle, 2), ReservationStatus::Committed);
    assert_eq!(reservation_status(&handle, 3), ReservationStatus::Released);
    assert_eq!(reservation_status(&handle, 4), ReservationStatus::Held);
    assert_eq!(reservation_status(&handle, 5), ReservationStatus::Held);

    // The idempotency keys came through too: a retry of o1's creation (its key is
    // in the snapshot) answers with the original answer (o1 as it was created,
    // reserved, not as it is now) and changes nothing.
    match run(&handle, create_o1(), Some("k-o1")) {
        Reply::Order(o) => assert_eq!((o.id, o.status), (OrderId(1), OrderStatus::Reserved)),
        other => panic!("{other:?}"),
    }
    assert_eq!(digest(&handle), DIGEST);
    // And the log takes new writes after the old ones.
    run(
        &handle,
        Command::AdjustStock {
            sku: "A".into(),
            delta: 1,
            reason: AdjustReason::Inbound,
            note: String::new(),
            actor: "t".into(),
        },
        None,
    );
    assert_eq!(sku_levels(&handle, "A"), (49, 1, 48));
}

/// Writes `tests/data/format-2` (replacing it). Run by hand for a new format only.
#[test]
#[ignore = "writes the committed fixture; run by hand for a new format only"]
fn generate_format_2_data_dir() {
    let clock = Arc::new(AtomicU64::new(START_MS));
    let disk = SimStorage::new();
    let (handle, _) = Engine::open_with_storage(
        disk.clone(),
        config(Path::new("unused"), Clock::manual(Arc::clone(&clock))),
    )
    .expect("open");
    scenario(&handle, &clock);
    let written_digest = digest(&handle);
    handle.shutdown();
    drop(handle);

    let out = fixture_dir();
    if out.exists() {
        std::fs::remove_dir_all(&out).expect("remove the old fixture");
    }
    std::fs::create_dir_all(&out).expect("mkdir");
    for name in disk.file_names() {
        let bytes = disk.file_bytes(&name).expect("file");
        println!("{name}: {} bytes", bytes.len());
        std::fs::write(out.join(&name), bytes).expect("write");
    }
    // Reopen what was written, to print what the test must find.
    let (handle, report) = Engine::open_with_storage(
        disk.crash(0),
        config(Path::new("unused"), Clock::manual(Arc::clone(&clock))),
    )
    .expect("reopen");
    assert_eq!(digest(&handle), written_digest);
    println!("const DIGEST: u64 = {written_digest};");
    println!("const SNAPSHOT_LSN: u64 = {};", report.snapshot_lsn);
    println!("const NEXT_LSN: u64 = {};", report.next_lsn);
    for sku in ["A", "B"] {
        println!("{sku}: {:?}", sku_levels(&handle, sku));
    }
    for id in 1..=3 {
        println!("o{id}: {:?}", order_status(&handle, id));
    }
    for id in 1..=5 {
        println!("r{id}: {:?}", reservation_status(&handle, id));
    }
}
