//! Old bytes: a data dir written by an earlier build must still open.
//!
//! `engine/tests/data/format-N/` holds a small data dir (a snapshot, the log after it
//! in 64 KiB segments, and the MANIFEST; the WAL's file format is version 2 in all of
//! them) written by [`generate_current_data_dir`] below, an ignored test that builds
//! it on the simulated disk with a manual clock, so it writes the same bytes every
//! time. `N` is the snapshot format of the state inside the snapshot file:
//!
//! - `format-2`: the idempotency index with compact answers; refusals in stored
//!   answers carried a field path and a sentence.
//! - `format-3`: refusals are typed values (`Field`, `Violation`); the history also
//!   holds a keyed refusal before the snapshot, so a stored refusal is in the file.
//! - `format-4`: the v1.1 state (the ledger, order policy, stored SKU answers without
//!   sale rules), written by the last build before the flash-sale controls (issue 12,
//!   commit 980c289): a data dir of a v1.1 server must open with no sale rules.
//!
//! Each is committed and never regenerated: if a change to the `Command` enum, the
//! codec, the snapshot or the WAL layout stops these files from loading, or loads them
//! as a different state, its test fails. For a new format, point the generator at a
//! new directory next to the old ones:
//!
//! ```text
//! cargo test -p surge-engine --test old_bytes -- --ignored generate --nocapture
//! ```
//!
//! and put the printed values into a new [`Fixture`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use surge_engine::limits::QTY_PER_LINE_MAX;
use surge_engine::wal::{SimStorage, WalConfig};
use surge_engine::{
    AdjustReason, CancelReason, Clock, Command, Durability, Engine, EngineConfig, EngineHandle,
    Field, IdempotencyKey, LineField, LineReq, OrderId, OrderLineReq, OrderStatus, Query,
    QueryReply, Rejection, Reply, ReservationId, ReservationStatus, SaleRules, SkuDefinition, Unit,
    Violation,
};

const SEGMENT_BYTES: u64 = 16 * 4096;
const START_MS: u64 = 1_700_000_000_000;

/// The clock when the generator finished (it moved 61 s).
const END_MS: u64 = START_MS + 61_000;

/// A committed data dir and what it must open to.
struct Fixture {
    dir: &'static str,
    /// The snapshot format of the state in its snapshot file.
    format: u32,
    /// The digest of the state once opened by this build. Since snapshot format 4 a
    /// data dir from before v1.1 opens with the ledger its payments imply (entries
    /// numbered 0: the records that made them are older than the ledger), so this is
    /// no longer the digest of the same history run by this build: it pins the
    /// upgrade (digests printed by this build, 2026-11-30; again with format 5,
    /// whose encoding ends with the sale rules, none here).
    digest: u64,
    snapshot_lsn: u64,
    next_lsn: u64,
    /// Whether its history holds the keyed refusal (`k-bad`) before the snapshot.
    keyed_refusal: bool,
}

/// Written by the build of snapshot format 2 (which printed digest
/// 3069792111112889600, a hash of the format-2 encoding). Opened by this build it is
/// upgraded; `digest` is that of the same history written by this build (the scenario
/// without the keyed refusal), so the upgrade must give exactly that state.
const FORMAT_2: Fixture = Fixture {
    dir: "format-2",
    format: 2,
    digest: 14146841533292432705,
    snapshot_lsn: 12,
    next_lsn: 19,
    keyed_refusal: false,
};

/// What the generator printed when it wrote `data/format-3`.
const FORMAT_3: Fixture = Fixture {
    dir: "format-3",
    format: 3,
    digest: 7338539427172376914,
    snapshot_lsn: 14,
    next_lsn: 20,
    keyed_refusal: true,
};

/// Written by the build of snapshot format 4 (commit 980c289, before issue 12),
/// which printed digest 15085040030582649117 (a hash of the format-4 encoding);
/// `digest` is the one this build computes once it has opened it: the same as the
/// same history (with the keyed refusal) written by this build, so the upgrade to
/// format 5 (no sale rules) loses and adds nothing (checked 2026-11-30).
const FORMAT_4: Fixture = Fixture {
    dir: "format-4",
    format: 4,
    digest: 821243231356033246,
    snapshot_lsn: 14,
    next_lsn: 20,
    keyed_refusal: true,
};

/// Where the generator writes: the directory of the current format.
const CURRENT_DIR: &str = "format-5";

fn fixture_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
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

/// A reservation of no units: refused (`lines[0].qty`).
fn reserve_nothing() -> Command {
    Command::Reserve {
        lines: vec![LineReq {
            sku: "A".into(),
            qty: 0,
        }],
        ttl_ms: 60_000,
        actor: "gen".into(),
    }
}

/// The refusal of [`reserve_nothing`], as a typed value.
fn nothing_refused() -> Rejection {
    Rejection::Validation {
        field: Field::Line {
            index: 0,
            part: LineField::Qty,
        },
        violation: Violation::OutOfRange {
            min: 1,
            max: QTY_PER_LINE_MAX,
            unit: Unit::Count,
        },
    }
}

/// The history a fixture holds: a snapshot in the middle, records on both sides;
/// with `keyed_refusal`, a refused keyed request is answered before the snapshot.
fn scenario(handle: &EngineHandle, clock: &AtomicU64, keyed_refusal: bool) {
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
    if keyed_refusal {
        let refused = handle
            .execute(reserve_nothing(), Some(key("k-bad")))
            .expect("answered");
        assert_eq!(refused, Err(nothing_refused()));
    }
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

fn opens_to_the_same_state(f: &Fixture) {
    let fixture = fixture_dir(f.dir);
    let mut names: Vec<String> = std::fs::read_dir(&fixture)
        .expect("the committed fixture")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let snap = format!("snap-{:020}.snap", f.snapshot_lsn);
    assert_eq!(
        names,
        ["MANIFEST", snap.as_str(), "wal-00000000000000000001.seg"]
    );
    // Every file says WAL file format version 2 (bytes 8..12, after the magic).
    for (name, magic) in [
        (&names[0], b"SURGEMAN"),
        (&names[1], b"SURGSNAP"),
        (&names[2], b"SURGEWAL"),
    ] {
        let bytes = std::fs::read(fixture.join(name)).expect("read");
        assert_eq!(&bytes[..8], magic, "{name}");
        assert_eq!(bytes[8..12], 2u32.to_le_bytes(), "{name}: format version");
        // The state inside the snapshot starts with its own format number, after the
        // file header (magic, version, checksum, lsn, lengths) and the body's first
        // field (the length of the state's bytes).
        if magic == b"SURGSNAP" {
            assert_eq!(
                bytes[48..52],
                f.format.to_le_bytes(),
                "{name}: snapshot format"
            );
        }
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
    assert_eq!(report.snapshot_lsn, f.snapshot_lsn);
    assert!(report.records_replayed > 0, "{report:?}");
    let wal = report.wal.as_ref().expect("wal report");
    assert_eq!(wal.torn_tail, None, "{wal:?}");
    assert_eq!(report.next_lsn, f.next_lsn);

    assert_eq!(digest(&handle), f.digest);
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
    assert_eq!(digest(&handle), f.digest);
    // A keyed refusal in the snapshot answers again with the same typed refusal.
    if f.keyed_refusal {
        let again = handle
            .execute(reserve_nothing(), Some(key("k-bad")))
            .expect("answered");
        assert_eq!(again, Err(nothing_refused()));
        assert_eq!(digest(&handle), f.digest);
    }
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

    // Nothing before format 5 had sale rules. A limit set now counts what the old
    // orders hold: c1's o1 (2 of A, picking) and o3 (1 of A, reserved).
    match ask(&handle, Query::GetSku { sku: "A".into() }) {
        QueryReply::Sku(s) => assert_eq!(s.sale, SaleRules::default()),
        other => panic!("{other:?}"),
    }
    run(
        &handle,
        Command::DefineSkuSale {
            definition: Box::new(SkuDefinition {
                sku: "A".into(),
                name: Some("sku A".into()),
                on_hand: Some(49),
                low_stock_threshold: Some(2),
                purchase_limit_per_customer: Some(3),
                sale_starts_at_ms: None,
                sale_ends_at_ms: None,
            }),
        },
        None,
    );
    match ask(
        &handle,
        Query::SkuCustomer {
            sku: "A".into(),
            customer_id: "c1".into(),
        },
    ) {
        QueryReply::SkuCustomer(v) => assert_eq!((v.counted, v.limit), (3, 3)),
        other => panic!("{other:?}"),
    }
    let over = handle
        .execute(
            Command::ReserveFor {
                lines: vec![LineReq {
                    sku: "A".into(),
                    qty: 1,
                }],
                ttl_ms: 60_000,
                customer_id: "c1".into(),
                actor: "t".into(),
            },
            None,
        )
        .expect("answered");
    assert_eq!(
        over,
        Err(Rejection::PurchaseLimitExceeded {
            sku: "A".into(),
            limit: 3,
            already: 3,
            requested: 1,
        })
    );
}

#[test]
fn format_2_data_dir_opens_to_the_same_state() {
    opens_to_the_same_state(&FORMAT_2);
}

#[test]
fn format_3_data_dir_opens_to_the_same_state() {
    opens_to_the_same_state(&FORMAT_3);
}

#[test]
fn format_4_data_dir_opens_to_the_same_state() {
    opens_to_the_same_state(&FORMAT_4);
}

/// Writes `tests/data/{CURRENT_DIR}` (replacing it). Run by hand for a new format only.
#[test]
#[ignore = "writes the committed fixture; run by hand for a new format only"]
fn generate_current_data_dir() {
    let clock = Arc::new(AtomicU64::new(START_MS));
    let disk = SimStorage::new();
    let (handle, _) = Engine::open_with_storage(
        disk.clone(),
        config(Path::new("unused"), Clock::manual(Arc::clone(&clock))),
    )
    .expect("open");
    scenario(&handle, &clock, true);
    let written_digest = digest(&handle);
    handle.shutdown();
    drop(handle);

    let out = fixture_dir(CURRENT_DIR);
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
    println!("digest: {written_digest}");
    println!("snapshot_lsn: {}", report.snapshot_lsn);
    println!("next_lsn: {}", report.next_lsn);
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

/// The digest this build gives the history without the keyed refusal (what
/// `format-2` was written from): the state a format-2 data dir must upgrade to.
#[test]
#[ignore = "prints a value for FORMAT_2; run by hand for a new format only"]
fn print_format_2_history_digest() {
    let clock = Arc::new(AtomicU64::new(START_MS));
    let (handle, _) = Engine::open_with_storage(
        SimStorage::new(),
        config(Path::new("unused"), Clock::manual(Arc::clone(&clock))),
    )
    .expect("open");
    scenario(&handle, &clock, false);
    println!("format-2 history digest: {}", digest(&handle));
}
