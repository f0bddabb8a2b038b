//! Crash, tear and rot tests on the simulated disk.

mod common;

use common::*;
use rand_core::SeedableRng;
use surge_wal::{Error, HEADER_CLAIM_EVERY_COMMITS, Lsn, SimStorage, Wal};

const PAYLOAD_BYTES: usize = 64;
const FRAME_BYTES: u64 = 16 + PAYLOAD_BYTES as u64;

/// A log of `n` 64-byte records over several segments; the last three are in
/// the newest segment, appended after the next-to-last commit so they sit
/// above the durable watermark. Returns the disk, the newest segment and the
/// (lsn, offset, length) of its frames.
fn torn_fixture(n: Lsn) -> (SimStorage, String, Vec<(Lsn, u64, u64)>) {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    append_range(&mut wal, 1..=n - 3, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    append_range(&mut wal, n - 2..=n, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    let names = wal.segment_names();
    assert!(names.len() >= 2, "fixture spans segments: {names:?}");
    let newest = names.last().expect("segments").clone();
    let frames = frames(&disk.file_bytes(&newest).expect("segment"));
    assert!(
        frames.iter().any(|f| f.0 == n - 2),
        "last three records share the newest segment"
    );
    (disk, newest, frames)
}

fn frame_of(frames: &[(Lsn, u64, u64)], lsn: Lsn) -> (u64, u64) {
    let f = frames.iter().find(|f| f.0 == lsn).expect("frame present");
    (f.1, f.2)
}

/// Opens a copy of the disk and checks it holds exactly records 1..=expect_last.
fn check_prefix(disk: &SimStorage, expect_last: Lsn, context: &str) -> Wal<SimStorage> {
    let (wal, rec) = open_sim(disk, SEGMENT_BYTES_SMALL);
    let got = records(&wal, 0);
    assert_eq!(got.len() as u64, expect_last, "{context}: record count");
    for (i, (lsn, p)) in got.iter().enumerate() {
        assert_eq!(*lsn, i as Lsn + 1, "{context}");
        assert_eq!(
            p,
            &payload(*lsn, 0, PAYLOAD_BYTES),
            "{context}: payload of lsn {lsn}"
        );
    }
    assert_eq!(wal.last_lsn(), expect_last, "{context}");
    assert_eq!(rec.report.last_lsn, expect_last, "{context}");
    wal
}

#[test]
fn torn_tail_at_every_byte_offset_recovers_the_longest_valid_prefix() {
    let n = 700;
    let (disk, newest, frames) = torn_fixture(n);
    let start = frame_of(&frames, n - 2).0;
    let end = frame_of(&frames, n).0 + FRAME_BYTES;
    for cut in start..=end {
        let d = disk.fork();
        d.zero_from(&newest, cut);
        let whole = (n - 2..=n)
            .filter(|&l| {
                let (at, len) = frame_of(&frames, l);
                at + len <= cut
            })
            .count() as Lsn;
        let expect_last = n - 3 + whole;
        let mut wal = check_prefix(&d, expect_last, &format!("cut at {cut}"));
        if cut % 37 == 0 {
            // The log keeps going after a cut, and the continuation survives.
            wal.append(expect_last + 1, &payload(expect_last + 1, 0, PAYLOAD_BYTES))
                .expect("append");
            wal.commit().expect("commit");
            drop(wal);
            check_prefix(
                &d,
                expect_last + 1,
                &format!("continued after cut at {cut}"),
            );
        }
    }
}

#[test]
fn every_bit_flip_in_the_unacknowledged_tail_is_cut_never_returned() {
    let n = 700;
    let (disk, newest, frames) = torn_fixture(n);
    for lsn in n - 2..=n {
        let (at, len) = frame_of(&frames, lsn);
        for byte in at..at + len {
            for bit in 0..8 {
                let d = disk.fork();
                d.corrupt(&newest, byte, 1 << bit);
                let (_wal, rec) = {
                    let wal = check_prefix(&d, lsn - 1, &format!("flip {byte}.{bit}"));
                    let (w, r) = open_sim(&d, SEGMENT_BYTES_SMALL);
                    drop(wal);
                    (w, r)
                };
                // The first open cut the tail; a second open finds it clean.
                assert_eq!(rec.report.torn_tail, None, "flip {byte}.{bit}");
            }
        }
    }
}

#[test]
fn rot_below_the_watermark_refuses_to_open_naming_segment_and_offset() {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    append_range(&mut wal, 1..=300, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    append_range(&mut wal, 301..=310, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    let names = wal.segment_names();
    drop(wal);
    let first_seg = &names[0];
    let first_frames = frames(&disk.file_bytes(first_seg).expect("segment"));
    let cases = [
        // (segment, offset to flip, offset reported)
        (
            first_seg.clone(),
            frame_of(&first_frames, 50).0 + 20,
            frame_of(&first_frames, 50).0,
        ),
        (
            first_seg.clone(),
            frame_of(&first_frames, 1).0 + 2,
            frame_of(&first_frames, 1).0,
        ),
        (names[1].clone(), 30, 0),
    ];
    for (segment, flip_at, reported) in cases {
        let d = disk.fork();
        d.corrupt(&segment, flip_at, 0x04);
        match Wal::open(d.clone(), config(SEGMENT_BYTES_SMALL)) {
            Err(Error::Corrupt {
                segment: s,
                offset,
                detail,
            }) => {
                assert_eq!(
                    (s.as_str(), offset),
                    (segment.as_str(), reported),
                    "{detail}"
                );
            }
            Err(e) => panic!("expected Corrupt, got {e}"),
            Ok(_) => panic!("opened a log with rot below the watermark at {segment}:{flip_at}"),
        }
    }
}

const SEGMENT_BYTES_ONE_MIB: u64 = 1 << 20;

/// Records lost from the end of the log, commit marks and all, are rot when a
/// claim outside the lost tail says they were durable: the header slots claim the
/// watermark at least every `HEADER_CLAIM_EVERY_COMMITS` commits, and a roll
/// claims the whole segment it leaves. A loss of only the last few commits
/// (marks included) cannot be told from a torn tail: it is cut and reported.
#[test]
fn a_lost_tail_below_a_header_claim_is_rot() {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_ONE_MIB);
    append_range(&mut wal, 1..=20, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    let mut lsn = 20;
    for _ in 0..HEADER_CLAIM_EVERY_COMMITS {
        lsn += 1;
        append_range(&mut wal, lsn..=lsn, PAYLOAD_BYTES);
        wal.commit().expect("commit");
    }
    let names = wal.segment_names();
    assert_eq!(names.len(), 1, "the fixture stays in one segment");
    drop(wal);
    let newest = &names[0];
    let newest_frames = frames(&disk.file_bytes(newest).expect("segment"));
    let d = disk.fork();
    d.zero_from(newest, newest_frames[5].1);
    match Wal::open(d, config(SEGMENT_BYTES_ONE_MIB)) {
        Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("durable"), "{detail}"),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened a log that lost acknowledged records"),
    }
}

/// Rot in the newest segment's last commits is proven by the commit marks of the
/// commits after it (commits start on fresh pages, so recovery finds them past
/// the damage).
#[test]
fn rot_is_proven_by_a_later_commit_mark() {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    for lsn in 1..=4 {
        append_range(&mut wal, lsn..=lsn, PAYLOAD_BYTES);
        wal.commit().expect("commit");
    }
    let names = wal.segment_names();
    drop(wal);
    let newest = &names[0];
    let newest_frames = frames(&disk.file_bytes(newest).expect("segment"));
    // Record 2 was durable before commit 4 began: commit 4's mark claims it.
    let (at, _) = frame_of(&newest_frames, 2);
    let d = disk.fork();
    d.corrupt(newest, at + 20, 0x10);
    match Wal::open(d, config(SEGMENT_BYTES_SMALL)) {
        Err(Error::Corrupt { offset, detail, .. }) => {
            assert_eq!(offset, at, "{detail}");
            assert!(detail.contains("commit mark"), "{detail}");
        }
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened a log with rot below a commit mark"),
    }
    // Record 4, the last commit: no later mark claims it, so it is a torn tail.
    let (at, _) = frame_of(&newest_frames, 4);
    let d = disk.fork();
    d.corrupt(newest, at + 20, 0x10);
    let (_, recovery) = open_sim(&d, SEGMENT_BYTES_SMALL);
    assert!(recovery.report.torn_tail.is_some());
}

fn snapshot_body(lsn: Lsn) -> Vec<u8> {
    format!("state as of lsn {lsn}").into_bytes()
}

#[test]
fn snapshot_failure_or_crash_at_any_step_leaves_a_loadable_snapshot_and_consistent_log() {
    let base = SimStorage::new();
    {
        let (mut wal, _) = open_sim(&base, SEGMENT_BYTES_SMALL);
        append_range(&mut wal, 1..=300, PAYLOAD_BYTES);
        wal.commit().expect("commit");
        wal.write_snapshot(100, &snapshot_body(100))
            .expect("snapshot");
        wal.write_snapshot(200, &snapshot_body(200))
            .expect("snapshot");
        append_range(&mut wal, 301..=900, PAYLOAD_BYTES);
        wal.commit().expect("commit");
    }
    // How many storage steps a snapshot takes.
    let steps = {
        let d = base.fork();
        let (mut wal, _) = open_sim(&d, SEGMENT_BYTES_SMALL);
        let before = d.op_count();
        wal.write_snapshot(800, &snapshot_body(800))
            .expect("snapshot");
        d.op_count() - before
    };
    assert!(
        steps >= 6,
        "temp write, fsync, rename, MANIFEST, dir fsyncs, removals: {steps}"
    );
    let mut failed = 0;
    for step in 0..=steps {
        for seed in 0..6 {
            let d = base.fork();
            let (mut wal, _) = open_sim(&d, SEGMENT_BYTES_SMALL);
            d.fail_at_step(step);
            let result = wal.write_snapshot(800, &snapshot_body(800));
            // A failure while retired files are removed leaves them for open.
            assert!(result.is_ok() || step < steps, "step {step}");
            failed += u32::from(result.is_err());
            let after = d.crash(seed);
            let (wal, rec) = open_sim(&after, SEGMENT_BYTES_SMALL);
            let (snap_lsn, body) = rec.snapshot.expect("a snapshot survives");
            assert!(
                snap_lsn == 200 || snap_lsn == 800,
                "step {step} seed {seed}: {snap_lsn}"
            );
            if result.is_ok() {
                assert_eq!(snap_lsn, 800);
            }
            assert_eq!(body, snapshot_body(snap_lsn));
            let got = records(&wal, snap_lsn);
            let lsns: Vec<Lsn> = got.iter().map(|r| r.0).collect();
            assert_eq!(
                lsns,
                (snap_lsn + 1..=900).collect::<Vec<_>>(),
                "step {step} seed {seed}"
            );
            for (lsn, p) in got {
                assert_eq!(p, payload(lsn, 0, PAYLOAD_BYTES));
            }
        }
    }
    assert!(
        failed >= 6 * 6,
        "the cuts hit the publication's own steps: {failed}"
    );
}

#[test]
fn damaged_newest_snapshot_falls_back_to_the_older_one() {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    append_range(&mut wal, 1..=900, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    wal.write_snapshot(300, &snapshot_body(300))
        .expect("snapshot");
    wal.write_snapshot(800, &snapshot_body(800))
        .expect("snapshot");
    drop(wal);
    let newest = "snap-00000000000000000800.snap";
    disk.corrupt(newest, 45, 0x80);
    let (wal, rec) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    assert_eq!(rec.snapshot, Some((300, snapshot_body(300))));
    assert_eq!(rec.report.fell_back_snapshots, vec![newest.to_string()]);
    let lsns: Vec<Lsn> = records(&wal, 300).iter().map(|r| r.0).collect();
    assert_eq!(lsns, (301..=900).collect::<Vec<_>>());
}

#[test]
fn failed_sync_poisons_the_log_and_nothing_after_it_is_trusted() {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    append_range(&mut wal, 1..=10, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    append_range(&mut wal, 11..=20, PAYLOAD_BYTES);
    disk.fail_next_sync();
    assert!(matches!(wal.commit(), Err(Error::Io { .. })));
    assert!(wal.is_poisoned());
    assert_eq!(wal.durable_lsn(), 10);
    assert!(matches!(wal.commit(), Err(Error::Poisoned)));
    assert!(matches!(wal.append(21, b"x"), Err(Error::Poisoned)));
    assert!(matches!(wal.write_snapshot(10, b"s"), Err(Error::Poisoned)));
    // A restart recovers from what the disk really holds.
    for seed in 0..20 {
        let (wal, _) = open_sim(&disk.crash(seed), SEGMENT_BYTES_SMALL);
        let got = records(&wal, 0);
        assert!(
            got.len() >= 10 && got.len() <= 20,
            "seed {seed}: {}",
            got.len()
        );
        for (lsn, p) in got {
            assert_eq!(p, payload(lsn, 0, PAYLOAD_BYTES));
        }
    }
}

/// Two commit jobs begun back to back (the pipelined commit): the first fails, the
/// second's sync then succeeds. Its success must not make anything durable: the
/// pages the first job lost are behind it.
#[test]
fn a_job_that_succeeds_after_an_earlier_failure_claims_nothing() {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    append_range(&mut wal, 1..=5, PAYLOAD_BYTES);
    let first = wal.begin_commit().expect("begin").expect("a job");
    append_range(&mut wal, 6..=10, PAYLOAD_BYTES);
    let second = wal.begin_commit().expect("begin").expect("a job");
    disk.fail_next_sync();
    let failed = first.run();
    assert!(failed.is_err(), "the armed sync failure fired");
    assert!(wal.finish_commit(first.target(), failed).is_err());
    second.run().expect("the disk works again");
    assert!(matches!(
        wal.finish_commit(second.target(), Ok(())),
        Err(Error::Poisoned)
    ));
    assert_eq!(wal.durable_lsn(), 0);
    assert!(wal.is_poisoned());
}

#[test]
fn disk_full_refuses_the_append_that_needs_a_segment_then_recovers() {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    let per_segment = (SEGMENT_BYTES_SMALL - DATA_OFFSET) / FRAME_BYTES;
    append_range(&mut wal, 1..=per_segment, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    let files = disk.file_names();
    disk.set_disk_full(true);
    let next = per_segment + 1;
    assert!(matches!(
        wal.append(next, &payload(next, 0, PAYLOAD_BYTES)),
        Err(Error::NoSpace)
    ));
    assert!(matches!(
        wal.write_snapshot(per_segment, b"s"),
        Err(Error::NoSpace)
    ));
    assert_eq!(disk.file_names(), files, "nothing partially written");
    assert_eq!(wal.last_lsn(), per_segment);
    assert!(!wal.is_poisoned());
    wal.commit().expect("commit still works");
    disk.set_disk_full(false);
    append_range(&mut wal, next..=next + 5, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    drop(wal);
    let (wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    assert_eq!(records(&wal, 0).len() as Lsn, next + 5);
}

#[test]
fn limits_are_enforced() {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    let max = wal.config().record_payload_max_bytes();
    assert!(matches!(
        wal.append(1, &vec![0; max + 1]),
        Err(Error::RecordTooLarge { .. })
    ));
    wal.append(1, &vec![7; max])
        .expect("largest record fits a segment");
    wal.append(2, b"").expect("empty payloads are fine");
    assert!(matches!(
        wal.append(2, b"x"),
        Err(Error::LsnNotIncreasing { lsn: 2, last: 2 })
    ));
    assert!(matches!(
        wal.write_snapshot(2, b"s"),
        Err(Error::SnapshotAhead { .. })
    ));
    wal.commit().expect("commit");
    wal.append(10, b"gap").expect("gaps are fine");
    wal.commit().expect("commit");
    drop(wal);
    let (wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    let lsns: Vec<Lsn> = records(&wal, 0).iter().map(|r| r.0).collect();
    assert_eq!(lsns, vec![1, 2, 10]);
    for bad in [
        surge_wal::WalConfig {
            segment_bytes: 5000,
            snapshots_kept: 2,
        },
        config(SEGMENT_BYTES_SMALL),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, mut c)| {
        if i == 1 {
            c.snapshots_kept = 1;
        }
        c
    }) {
        assert!(matches!(
            Wal::open(SimStorage::new(), bad),
            Err(Error::InvalidConfig(_))
        ));
    }
}

/// Random workloads with power losses at random points: every committed record
/// survives intact, uncommitted ones are whole or absent (a prefix), and the
/// log continues correctly after each restart.
#[test]
fn power_loss_keeps_every_committed_record_over_many_seeds() {
    const SEGMENT_BYTES: u64 = 16 * 1024;
    for seed in 0..300u64 {
        let mut rng = SplitMix64::seed_from_u64(seed);
        let mut disk = SimStorage::new();
        // lsn -> payload of everything appended and not known lost.
        let mut model: std::collections::BTreeMap<Lsn, Vec<u8>> = Default::default();
        let mut committed: Lsn = 0;
        let mut snapshot_ok: Lsn = 0;
        for life in 0..3u64 {
            let (mut wal, rec) = open_sim(&disk, SEGMENT_BYTES);
            let ctx = format!("seed {seed} life {life}");
            let snap = rec.snapshot.as_ref().map_or(0, |s| s.0);
            assert!(
                snap >= snapshot_ok,
                "{ctx}: snapshot {snap} < {snapshot_ok}"
            );
            if let Some((lsn, body)) = &rec.snapshot {
                assert_eq!(body, &snapshot_body(*lsn), "{ctx}");
            }
            let got = records(&wal, snap);
            let expect: Vec<Lsn> = model
                .range(snap + 1..)
                .map(|(l, _)| *l)
                .take(got.len())
                .collect();
            let got_lsns: Vec<Lsn> = got.iter().map(|r| r.0).collect();
            assert_eq!(
                got_lsns, expect,
                "{ctx}: recovered records are a prefix of those appended"
            );
            for (lsn, p) in &got {
                assert_eq!(Some(p), model.get(lsn), "{ctx}: payload of {lsn}");
            }
            let last = got.last().map_or(snap, |r| r.0).max(snap);
            assert!(
                last >= committed,
                "{ctx}: lost committed records: last {last} < {committed}"
            );
            model.retain(|&l, _| l <= last);
            committed = last;
            assert_eq!(
                wal.last_lsn(),
                last.max(model.keys().next_back().copied().unwrap_or(0))
                    .max(snap)
            );

            let mut lsn = wal.last_lsn();
            for _ in 0..below(&mut rng, 120) {
                match below(&mut rng, 20) {
                    0..=13 => {
                        lsn += 1 + below(&mut rng, 2);
                        let p = payload(lsn, seed * 8 + life, 1 + below(&mut rng, 300) as usize);
                        wal.append(lsn, &p).expect("append");
                        model.insert(lsn, p);
                    }
                    14..=18 => {
                        wal.commit().expect("commit");
                        committed = lsn;
                    }
                    _ => {
                        let at = wal.durable_lsn();
                        if at > wal.snapshot_lsn() {
                            wal.write_snapshot(at, &snapshot_body(at))
                                .expect("snapshot");
                            snapshot_ok = at;
                        }
                    }
                }
            }
            disk = disk.crash(seed.wrapping_mul(31).wrapping_add(life));
        }
    }
}

#[test]
fn reserve_rolls_ahead_so_disk_full_refuses_before_anything_changes() {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    let per_segment = (SEGMENT_BYTES_SMALL - DATA_OFFSET) / FRAME_BYTES;
    append_range(&mut wal, 1..=per_segment, PAYLOAD_BYTES);
    disk.set_disk_full(true);
    let files = disk.file_names();
    assert!(matches!(
        wal.reserve(per_segment + 1, PAYLOAD_BYTES),
        Err(Error::NoSpace)
    ));
    assert_eq!(disk.file_names(), files, "nothing written");
    disk.set_disk_full(false);
    wal.reserve(per_segment + 1, PAYLOAD_BYTES)
        .expect("reserve once space is back");
    let segments = |names: &[String]| names.iter().filter(|n| n.ends_with(".seg")).count();
    // Made under a prepared name; the next commit names it.
    assert_eq!(segments(&disk.file_names()), segments(&files));
    // A reserved segment may be named below its first record.
    wal.append(per_segment + 5, &payload(per_segment + 5, 0, PAYLOAD_BYTES))
        .expect("append");
    wal.commit().expect("commit");
    // Both segments named by the commit's steps: the first, then the reserved one.
    assert_eq!(segments(&disk.file_names()), 2);
    drop(wal);
    let (wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    let lsns: Vec<Lsn> = records(&wal, 0).iter().map(|r| r.0).collect();
    let mut expect: Vec<Lsn> = (1..=per_segment).collect();
    expect.push(per_segment + 5);
    assert_eq!(lsns, expect);
}

/// A power loss between creating a segment and listing it in the MANIFEST can
/// leave it with a torn header; unlisted, it is a leftover, removed, not rot.
#[test]
fn segment_whose_creation_was_torn_is_dropped_not_reported_corrupt() {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    append_range(&mut wal, 1..=100, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    append_range(&mut wal, 101..=110, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    drop(wal);
    let torn = "wal-00000000000000000999.seg";
    for header in [vec![0u8; 64], vec![0x5Au8; 64]] {
        let d = disk.fork();
        // Fake the leftover: a segment file whose header page is garbage and data zero.
        let mut image = vec![0u8; SEGMENT_BYTES_SMALL as usize];
        image[..64].copy_from_slice(&header);
        let mut storage = d.clone();
        surge_wal::Storage::write_file(&mut storage, torn, &image).expect("write");
        let (wal, rec) = open_sim(&d, SEGMENT_BYTES_SMALL);
        assert_eq!(rec.report.leftovers_removed, vec![torn.to_string()]);
        assert_eq!(rec.report.torn_tail, None);
        assert_eq!(records(&wal, 0).len(), 110);
        assert!(!d.file_names().contains(&torn.to_string()));
    }
}

/// A snapshot's or MANIFEST's temp file that a crash left is removed at open and
/// named in the report, so an operator can tell where the space went.
#[test]
fn temp_files_left_over_are_removed_and_reported() {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    append_range(&mut wal, 1..=20, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    drop(wal);
    let temps = [
        "snap-00000000000000000020.snap.tmp".to_string(),
        "MANIFEST.tmp".to_string(),
    ];
    let mut storage = disk.clone();
    for name in &temps {
        surge_wal::Storage::write_file(&mut storage, name, b"half written").expect("write");
    }
    let (wal, rec) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    let mut reported = rec.report.leftovers_removed.clone();
    reported.sort();
    let mut expected = temps.to_vec();
    expected.sort();
    assert_eq!(reported, expected);
    assert_eq!(records(&wal, 0).len(), 20);
    let files = disk.file_names();
    assert!(!files.iter().any(|f| f.ends_with(".tmp")), "{files:?}");
}

/// A roll refused for a full disk writes nothing, however often it is tried (each
/// command tries it, and the engine's writer retries it while idle): it used to pad
/// the segment left behind to its next page first, a whole page per attempt once
/// the tail sat on a boundary, eating the room records still had there.
#[test]
fn a_roll_refused_for_a_full_disk_writes_nothing_however_often_it_is_tried() {
    // Refused at the new segment (the disk full), or at its MANIFEST (a segment
    // prepared while there was room, no room left for the small file).
    for manifest_only in [false, true] {
        roll_refused_writes_nothing(manifest_only);
    }
}

fn roll_refused_writes_nothing(manifest_only: bool) {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    let per_segment = (SEGMENT_BYTES_SMALL - DATA_OFFSET) / FRAME_BYTES;
    // Room left for small records, not for a large one.
    append_range(&mut wal, 1..=per_segment / 2, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    if manifest_only {
        disk.set_small_files_full(true);
    } else {
        disk.set_disk_full(true);
    }
    let active = wal.segment_names().pop().expect("a segment");
    let active_bytes = disk.file_bytes(&active).expect("segment");
    let written = wal.stats().bytes_written;
    let large = (SEGMENT_BYTES_SMALL / 2) as usize;
    for _ in 0..3 {
        assert!(matches!(
            wal.reserve(per_segment / 2 + 1, large),
            Err(Error::NoSpace)
        ));
    }
    assert_eq!(wal.stats().bytes_written, written, "nothing staged");
    wal.commit().expect("commit");
    assert!(
        disk.file_bytes(&active).expect("segment") == active_bytes,
        "the active segment is unchanged"
    );
    // The small records still fit where they did.
    let next = per_segment / 2 + 1;
    append_range(&mut wal, next..=next + 5, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    assert_eq!(wal.segment_names(), vec![active]);
}
