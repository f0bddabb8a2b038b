//! The MANIFEST: a missing, truncated or replaced file is noticed by open and
//! by verify; an ordinary crash at any step never looks like one.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use surge_wal::{
    Error, Lsn, ManifestReport, MmapStorage, Recovery, SimStorage, SnapshotImage, Storage, Verdict,
    Wal, verify,
};

const SEGMENT_BYTES: u64 = 64 * 1024;
const PAYLOAD_BYTES: usize = 100;
/// The payload of the records on the simulated disk's small segments.
const SMALL_PAYLOAD: usize = 64;

fn open_dir(dir: &Path) -> Result<(Wal<MmapStorage>, Recovery), Error> {
    Wal::open(MmapStorage::open(dir)?, config(SEGMENT_BYTES))
}

fn opened(dir: &Path) -> (Wal<MmapStorage>, Recovery) {
    open_dir(dir).unwrap_or_else(|e| panic!("open failed: {e}"))
}

fn snapshot_body(lsn: Lsn) -> Vec<u8> {
    format!("state as of lsn {lsn}").into_bytes()
}

/// A log of records 1..=n over several segments, committed in batches of 50,
/// with snapshots at each lsn of `snapshots`. Returns the segment names.
fn build(dir: &Path, n: Lsn, snapshots: &[Lsn]) -> Vec<String> {
    let (mut wal, _) = opened(dir);
    let mut lsn = 0;
    while lsn < n {
        let to = (lsn + 50).min(n);
        append_range(&mut wal, lsn + 1..=to, PAYLOAD_BYTES);
        wal.commit().expect("commit");
        lsn = to;
        for &s in snapshots
            .iter()
            .filter(|&&s| s > lsn.saturating_sub(50) && s <= lsn)
        {
            wal.write_snapshot(s, &snapshot_body(s)).expect("snapshot");
        }
    }
    wal.segment_names()
}

fn expect_missing(result: Result<(Wal<MmapStorage>, Recovery), Error>, file: &str) {
    match result {
        Err(Error::MissingSegment { file: f, detail }) => {
            assert_eq!(f, file, "{detail}");
            let message = Error::MissingSegment {
                file: f.clone(),
                detail,
            }
            .to_string();
            assert!(message.contains(file), "{message}");
        }
        Err(e) => panic!("expected MissingSegment {file}, got {e}"),
        Ok(_) => panic!("opened a log whose segment {file} is missing"),
    }
}

fn expect_corrupt(result: Result<(Wal<MmapStorage>, Recovery), Error>, file: &str) -> String {
    match result {
        Err(Error::Corrupt {
            segment, detail, ..
        }) => {
            assert_eq!(segment, file, "{detail}");
            detail
        }
        Err(e) => panic!("expected Corrupt naming {file}, got {e}"),
        Ok(_) => panic!("opened a log whose segment {file} is damaged"),
    }
}

/// The defect as reported: one segment and a snapshot taken halfway; the
/// segment is deleted. Start-up used to load the snapshot and serve.
#[test]
fn deleting_the_only_segment_behind_a_halfway_snapshot_stops_start_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let names = build(dir, 300, &[150]);
    assert_eq!(names.len(), 1, "one segment: {names:?}");
    fs::remove_file(dir.join(&names[0])).expect("delete");
    let report = verify(dir).expect("verify");
    assert!(!report.is_ok(), "{report}");
    assert!(
        matches!(&report.verdict, Verdict::MissingSegment { file, .. } if *file == names[0]),
        "{report}"
    );
    expect_missing(open_dir(dir), &names[0]);
}

#[test]
fn deleting_the_last_segment_stops_start_up_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let names = build(dir, 2000, &[1000]);
    assert!(names.len() >= 3, "{names:?}");
    let last = names.last().expect("segments").clone();
    fs::remove_file(dir.join(&last)).expect("delete");
    let report = verify(dir).expect("verify");
    assert!(!report.is_ok(), "{report}");
    let text = report.to_string();
    assert!(text.contains(&last) && text.contains("MISSING"), "{text}");
    assert!(
        report
            .recovery
            .iter()
            .any(|s| s.contains("refuse to start")),
        "{text}"
    );
    expect_missing(open_dir(dir), &last);
    // Refusing changed nothing: the next try refuses the same way.
    expect_missing(open_dir(dir), &last);
}

#[test]
fn deleting_a_middle_segment_stops_start_up_naming_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let names = build(dir, 2000, &[]);
    assert!(names.len() >= 3, "{names:?}");
    let middle = names[1].clone();
    fs::remove_file(dir.join(&middle)).expect("delete");
    let report = verify(dir).expect("verify");
    assert!(
        matches!(&report.verdict, Verdict::MissingSegment { file, .. } if *file == middle),
        "{report}"
    );
    assert!(!report.is_ok());
    expect_missing(open_dir(dir), &middle);
}

#[test]
fn deleting_every_segment_stops_start_up_naming_the_first() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let names = build(dir, 2000, &[1500]);
    for name in &names {
        fs::remove_file(dir.join(name)).expect("delete");
    }
    let report = verify(dir).expect("verify");
    assert_eq!(
        report.problems.len(),
        names.len(),
        "each missing file is listed: {report}"
    );
    expect_missing(open_dir(dir), &names[0]);
}

#[test]
fn truncated_segments_stop_start_up_naming_them() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("base");
    let names = build(&base, 2000, &[]);
    assert!(names.len() >= 3, "{names:?}");
    for (name, len) in [
        (&names[1], SEGMENT_BYTES / 2),
        (names.last().expect("segments"), 0),
        (names.last().expect("segments"), SEGMENT_BYTES - 4096),
    ] {
        let dir = tmp.path().join(format!("cut-{name}-{len}"));
        copy_dir(&base, &dir);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(dir.join(name))
            .expect("open");
        f.set_len(len).expect("truncate");
        drop(f);
        let report = verify(&dir).expect("verify");
        assert!(!report.is_ok(), "{report}");
        assert!(
            matches!(&report.verdict, Verdict::Corrupt { segment, .. } if segment == name),
            "{report}"
        );
        let detail = expect_corrupt(open_dir(&dir), name);
        assert!(detail.contains("truncated"), "{detail}");
    }
}

#[test]
fn a_segment_replaced_by_an_older_copy_stops_start_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = &tmp.path().join("live");
    let (mut wal, _) = opened(dir);
    append_range(&mut wal, 1..=100, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    let first = wal.segment_names()[0].clone();
    let first_then = fs::read(dir.join(&first)).expect("copy");
    append_range(&mut wal, 101..=700, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    let names = wal.segment_names();
    assert!(names.len() >= 2, "{names:?}");
    let last = names.last().expect("segments").clone();
    let last_then = fs::read(dir.join(&last)).expect("copy");
    append_range(&mut wal, 701..=760, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    append_range(&mut wal, 761..=780, PAYLOAD_BYTES);
    wal.commit().expect("commit");
    assert_eq!(
        wal.segment_names(),
        names,
        "no new segment since the copies"
    );
    drop(wal);
    // Reopening writes a MANIFEST that says the log reached lsn 780.
    drop(opened(dir));
    let base = tmp.path().join("base");
    copy_dir(dir, &base);

    // A middle (here: the first) segment put back as it was at lsn 100.
    let d = tmp.path().join("old-first");
    copy_dir(&base, &d);
    fs::write(d.join(&first), &first_then).expect("write");
    assert!(!verify(&d).expect("verify").is_ok());
    expect_corrupt(open_dir(&d), &first);

    // The newest segment put back as it was at lsn 700.
    let d = tmp.path().join("old-last");
    copy_dir(&base, &d);
    fs::write(d.join(&last), &last_then).expect("write");
    let report = verify(&d).expect("verify");
    assert!(!report.is_ok(), "{report}");
    let detail = expect_corrupt(open_dir(&d), &last);
    assert!(detail.contains("MANIFEST"), "{detail}");
}

#[test]
fn a_segment_replaced_by_a_fresh_file_stops_start_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("base");
    let names = build(&base, 2000, &[]);
    let last = names.last().expect("segments").clone();
    // A blank file of the right size, as a fresh, never-initialised segment.
    for name in [&names[0], &last] {
        let d = tmp.path().join(format!("blank-{name}"));
        copy_dir(&base, &d);
        fs::write(d.join(name), vec![0u8; SEGMENT_BYTES as usize]).expect("write");
        assert!(!verify(&d).expect("verify").is_ok());
        let detail = expect_corrupt(open_dir(&d), name);
        assert!(detail.contains("replaced"), "{detail}");
    }
    // A fresh segment of another log under the same name: its header differs.
    let other = tmp.path().join("other");
    {
        let (mut wal, _) = opened(&other);
        wal.append(5, b"x").expect("append");
        wal.commit().expect("commit");
        assert_eq!(wal.segment_names(), vec![segment_name(5)]);
    }
    let d = tmp.path().join("foreign");
    copy_dir(&base, &d);
    let foreign = fs::read(other.join(segment_name(5))).expect("read");
    let name = names
        .iter()
        .find(|n| n.as_str() != names[0])
        .expect("a second segment");
    fs::write(d.join(name), foreign).expect("write");
    let detail = expect_corrupt(open_dir(&d), name);
    assert!(detail.contains("replaced"), "{detail}");
}

#[test]
fn a_damaged_snapshot_with_the_log_behind_it_recovers_but_verify_fails() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let names = build(dir, 300, &[150]);
    assert_eq!(names.len(), 1, "the log from lsn 1 is still there");
    let snap = "snap-00000000000000000150.snap";
    flip(&dir.join(snap), 50);
    let report = verify(dir).expect("verify");
    assert!(!report.is_ok(), "{report}");
    assert_eq!(report.verdict, Verdict::Clean, "{report}");
    assert!(report.problems.iter().any(|p| p.file == snap), "{report}");
    let text = report.to_string();
    assert!(
        text.contains("skip snapshots") && text.contains("replay 300 records"),
        "says what recovery would do: {text}"
    );
    let (wal, rec) = opened(dir);
    assert_eq!(rec.snapshot, None);
    assert_eq!(rec.report.fell_back_snapshots, vec![snap.to_string()]);
    assert_eq!(records(&wal, 0).len(), 300);
}

#[test]
fn a_damaged_snapshot_without_the_log_behind_it_stops_start_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let names = build(dir, 2000, &[1500]);
    let first_prev_gt_0 = names[0] != segment_name(1);
    assert!(
        first_prev_gt_0,
        "segments before the snapshot retired: {names:?}"
    );
    let snap = "snap-00000000000000001500.snap";
    flip(&dir.join(snap), 50);
    let report = verify(dir).expect("verify");
    assert!(!report.is_ok(), "{report}");
    assert!(report.verdict.refuses(), "{report}");
    assert!(report.problems.iter().any(|p| p.file == snap), "{report}");
    let detail = expect_corrupt(open_dir(dir), &names[0]);
    assert!(
        detail.contains(snap),
        "names the damaged snapshot: {detail}"
    );
}

#[test]
fn a_missing_snapshot_is_reported_and_open_falls_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    build(dir, 2000, &[800, 1500]);
    let snap = "snap-00000000000000001500.snap";
    fs::remove_file(dir.join(snap)).expect("delete");
    let report = verify(dir).expect("verify");
    assert!(!report.is_ok(), "{report}");
    assert!(report.problems.iter().any(|p| p.file == snap), "{report}");
    let (wal, rec) = opened(dir);
    assert_eq!(rec.snapshot.map(|s| s.0), Some(800));
    assert_eq!(rec.report.fell_back_snapshots, vec![snap.to_string()]);
    assert_eq!(records(&wal, 800).len(), 1200);
}

/// A crash leaves a torn tail; verify reports it and passes, open cuts it.
#[test]
fn a_torn_tail_is_reported_and_verify_passes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let names = build(dir, 700, &[300]);
    {
        // Records 701..=703 sit above the watermark (one commit back).
        let (mut wal, _) = opened(dir);
        append_range(&mut wal, 701..=703, PAYLOAD_BYTES);
        wal.commit().expect("commit");
    }
    let last = names.last().expect("segments");
    let bytes = fs::read(dir.join(last)).expect("read");
    let (_, at, _) = *frames(&bytes)
        .iter()
        .find(|f| f.0 == 702)
        .expect("frame 702");
    flip(&dir.join(last), at + 20);
    let report = verify(dir).expect("verify");
    assert!(report.is_ok(), "{report}");
    assert!(
        matches!(&report.verdict, Verdict::TornTail { segment, offset, .. }
            if segment == last && *offset == at),
        "{report}"
    );
    assert!(report.problems.is_empty(), "{report}");
    assert!(
        report
            .recovery
            .iter()
            .any(|s| s.contains("cut the torn tail")),
        "{report}"
    );
    let (wal, rec) = opened(dir);
    assert_eq!(rec.report.torn_tail.map(|t| t.offset), Some(at));
    assert_eq!(wal.last_lsn(), 701);
}

#[test]
fn a_lost_or_damaged_manifest_stops_start_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let base = tmp.path().join("base");
    build(&base, 1000, &[500]);

    let d = tmp.path().join("lost");
    copy_dir(&base, &d);
    fs::remove_file(d.join("MANIFEST")).expect("delete");
    let report = verify(&d).expect("verify");
    assert_eq!(report.manifest, ManifestReport::Absent { legacy: false });
    assert!(!report.is_ok(), "{report}");
    assert!(matches!(open_dir(&d), Err(Error::BadManifest { .. })));

    // Even with every segment gone too: the snapshot says a MANIFEST was kept.
    for name in fs::read_dir(&d).expect("list").flatten() {
        let name = name.file_name().into_string().expect("utf-8");
        if name.ends_with(".seg") {
            fs::remove_file(d.join(name)).expect("delete");
        }
    }
    assert!(matches!(open_dir(&d), Err(Error::BadManifest { .. })));

    let d = tmp.path().join("damaged");
    copy_dir(&base, &d);
    flip(&d.join("MANIFEST"), 30);
    let report = verify(&d).expect("verify");
    assert!(
        matches!(report.manifest, ManifestReport::Damaged { .. }),
        "{report}"
    );
    assert!(!report.is_ok());
    match open_dir(&d) {
        Err(e @ Error::BadManifest { .. }) => {
            assert!(e.to_string().contains("MANIFEST"), "{e}");
        }
        Err(e) => panic!("expected BadManifest, got {e}"),
        Ok(_) => panic!("opened with a damaged MANIFEST"),
    }
}

#[test]
fn an_unlisted_segment_between_listed_ones_stops_start_up() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let names = build(dir, 2000, &[]);
    // A copy of the second segment under a name between the first two.
    let first: Lsn = lsn_of(&names[0]);
    let second: Lsn = lsn_of(&names[1]);
    assert!(second > first + 1);
    let stray = segment_name(first + 1);
    fs::copy(dir.join(&names[1]), dir.join(&stray)).expect("copy");
    assert!(!verify(dir).expect("verify").is_ok());
    let detail = expect_corrupt(open_dir(dir), &stray);
    assert!(detail.contains("not listed"), "{detail}");
}

/// A data dir written before MANIFESTs existed (format version 1) opens by its
/// segment chain and gets its first MANIFEST; from then on it is protected.
#[test]
fn a_data_dir_from_before_manifests_opens_and_gets_one() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let names = build(dir, 2000, &[800, 1500]);
    make_version_1(dir);
    let report = verify(dir).expect("verify");
    assert_eq!(report.manifest, ManifestReport::Absent { legacy: true });
    assert!(report.is_ok(), "{report}");
    assert!(
        report.recovery.iter().any(|s| s.contains("first MANIFEST")),
        "{report}"
    );
    {
        let (mut wal, rec) = opened(dir);
        assert_eq!(rec.snapshot.map(|s| s.0), Some(1500));
        assert_eq!(records(&wal, 1500).len(), 500);
        // The log continues in version-2 segments next to the old ones.
        append_range(&mut wal, 2001..=2600, PAYLOAD_BYTES);
        wal.commit().expect("commit");
    }
    assert!(dir.join("MANIFEST").exists());
    let report = verify(dir).expect("verify");
    assert!(report.is_ok(), "{report}");
    assert!(matches!(report.manifest, ManifestReport::Present { .. }));
    // Protected now: losing an old segment is noticed.
    let last_old = names.last().expect("segments");
    fs::remove_file(dir.join(last_old)).expect("delete");
    expect_missing(open_dir(dir), last_old);
}

/// Crash (power loss) at every storage step of a batch whose appends roll to
/// a new segment, on the simulated disk: open always succeeds, never reports
/// a missing file, keeps every committed record, and the log goes on.
#[test]
fn crash_at_every_step_of_segment_creation_recovers_without_a_false_alarm() {
    // Frames of 80 bytes; the second commit ends one page (51 frames) short of
    // the end of the 32 KiB segment.
    let (base, segments) = build_sim(&[(40, Some(40)), (193, None)]);
    assert_eq!(segments.len(), 1);
    let batch = |wal: &mut Wal<SimStorage>| -> Result<(), Error> {
        for lsn in 194..=260 {
            wal.append(lsn, &payload(lsn, 0, SMALL_PAYLOAD))?;
        }
        wal.commit()
    };
    let steps = {
        let d = base.fork();
        let (mut wal, _) = open_sim(&d, SEGMENT_BYTES_SMALL);
        let (steps, ()) = count_steps(&d, || batch(&mut wal).expect("batch"));
        assert_eq!(wal.segment_names().len(), 2, "the batch rolls");
        steps
    };
    assert!(
        steps >= 9,
        "msync, create, header, fsyncs, MANIFEST: {steps}"
    );
    for step in 0..=steps {
        for seed in 0..8 {
            let (ok, after) = cut_then_crash(&base, step, seed, |wal| batch(wal).is_ok());
            assert_eq!(ok, step == steps, "step {step}");
            let ctx = format!("step {step} seed {seed}");
            let committed = if ok { 260 } else { 193 };
            check_recovered(&after.fork(), 40, committed, &ctx);
            // Crash again at every step of that recovery itself.
            let f = after.fork();
            let (open_steps, ()) = count_steps(&f, || drop(open_sim(&f, SEGMENT_BYTES_SMALL)));
            for open_step in 0..open_steps {
                let f = after.fork();
                f.fail_at_step(open_step);
                assert!(Wal::open(f.clone(), config(SEGMENT_BYTES_SMALL)).is_err());
                let again = f.crash(seed ^ 0x55);
                check_recovered(
                    &again,
                    40,
                    committed,
                    &format!("{ctx}, open crashed at {open_step}"),
                );
            }
            // The log goes on, through more segments, and reopens clean.
            let (mut wal, _) = open_sim(&after, SEGMENT_BYTES_SMALL);
            let next = wal.last_lsn() + 1;
            append_range(&mut wal, next..=next + 600, SMALL_PAYLOAD);
            wal.commit().expect("commit");
            drop(wal);
            let (wal, rec) = open_sim(&after, SEGMENT_BYTES_SMALL);
            assert_eq!(rec.report.torn_tail, None, "{ctx}");
            assert!(rec.report.leftovers_removed.is_empty(), "{ctx}");
            assert_eq!(wal.last_lsn(), next + 600, "{ctx}");
        }
    }
}

/// Crash at every storage step of publishing a snapshot that retires
/// segments and an older snapshot: open never reports a missing file.
#[test]
fn crash_at_every_step_of_segment_retirement_recovers_without_a_false_alarm() {
    let (base, _) = build_sim(&[(300, Some(100)), (700, Some(600)), (1200, None)]);
    let (steps, retired) = {
        let d = base.fork();
        let (mut wal, _) = open_sim(&d, SEGMENT_BYTES_SMALL);
        let segments = wal.segment_names().len();
        let (steps, ()) = count_steps(&d, || {
            wal.write_snapshot(1100, &snapshot_body(1100))
                .expect("snapshot")
        });
        (steps, segments - wal.segment_names().len())
    };
    assert!(retired >= 2, "the snapshot retires segments: {retired}");
    let mut failed = 0;
    for step in 0..=steps {
        for seed in 0..8 {
            let (ok, after) = cut_then_crash(&base, step, seed, |wal| {
                wal.write_snapshot(1100, &snapshot_body(1100)).is_ok()
            });
            // A failure up to the MANIFEST's installation fails the publication; one
            // while the retired files are removed leaves them for open to remove.
            assert!(ok || step < steps, "step {step}");
            failed += u32::from(!ok);
            let ctx = format!("step {step} seed {seed}");
            let (wal, rec) = match Wal::open(after.clone(), config(SEGMENT_BYTES_SMALL)) {
                Ok(x) => x,
                Err(e) => panic!("{ctx}: {e}"),
            };
            let snap = rec.snapshot.as_ref().map_or(0, |s| s.0);
            assert!(snap == 600 || snap == 1100, "{ctx}: {snap}");
            if ok {
                assert_eq!(snap, 1100, "{ctx}");
            }
            let lsns: Vec<Lsn> = records(&wal, snap).iter().map(|r| r.0).collect();
            assert_eq!(lsns, (snap + 1..=1200).collect::<Vec<_>>(), "{ctx}");
            drop(wal);
            // Whatever the crash left over is gone after that open.
            let (_, rec) = open_sim(&after, SEGMENT_BYTES_SMALL);
            assert!(rec.report.leftovers_removed.is_empty(), "{ctx}");
            let files = after.file_names();
            assert!(
                !files.iter().any(|f| f.ends_with(".tmp")),
                "{ctx}: {files:?}"
            );
        }
    }
    assert!(
        failed >= 8 * 5,
        "the cuts hit the publication's own steps: {failed}"
    );
}

/// The simulated disk, through the Storage trait: a listed segment removed is
/// refused by name (the same check as on real files).
#[test]
fn a_removed_segment_is_refused_on_the_simulated_disk() {
    let disk = SimStorage::new();
    let names = {
        let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
        append_range(&mut wal, 1..=1000, 64);
        wal.commit().expect("commit");
        wal.segment_names()
    };
    assert!(names.len() >= 3);
    for name in [&names[0], &names[1], names.last().expect("segments")] {
        let d = disk.fork();
        let mut storage = d.clone();
        storage.remove(name).expect("remove");
        storage.sync_dir().expect("sync");
        match Wal::open(d, config(SEGMENT_BYTES_SMALL)) {
            Err(Error::MissingSegment { file, .. }) => assert_eq!(&file, name),
            Err(e) => panic!("expected MissingSegment {name}, got {e}"),
            Ok(_) => panic!("opened without {name}"),
        }
    }
}

/// A log on a new simulated disk, in small segments of records of `SMALL_PAYLOAD`
/// bytes: each `(last, snapshot)` appends and commits the records up to `last` in
/// one batch, then writes the snapshot at `snapshot` if there is one. Returns the
/// disk and the segment names.
fn build_sim(batches: &[(Lsn, Option<Lsn>)]) -> (SimStorage, Vec<String>) {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    let mut lsn = 0;
    for &(last, snapshot) in batches {
        append_range(&mut wal, lsn + 1..=last, SMALL_PAYLOAD);
        wal.commit().expect("commit");
        lsn = last;
        if let Some(s) = snapshot {
            wal.write_snapshot(s, &snapshot_body(s)).expect("snapshot");
        }
    }
    (disk, wal.segment_names())
}

/// How many storage steps `op` takes on `disk`, and what it returned.
fn count_steps<T>(disk: &SimStorage, op: impl FnOnce() -> T) -> (u64, T) {
    let before = disk.op_count();
    let out = op();
    (disk.op_count() - before, out)
}

/// Opens a fork of `base`, runs `op` on it with the storage failing at `step`, then
/// loses power (`seed`): whether `op` succeeded, and the disk the crash left.
fn cut_then_crash(
    base: &SimStorage,
    step: u64,
    seed: u64,
    op: impl FnOnce(&mut Wal<SimStorage>) -> bool,
) -> (bool, SimStorage) {
    let d = base.fork();
    let (mut wal, _) = open_sim(&d, SEGMENT_BYTES_SMALL);
    d.fail_at_step(step);
    let ok = op(&mut wal);
    drop(wal);
    (ok, d.crash(seed))
}

/// Opens and checks the records: every lsn from `snap_floor`'s snapshot (or
/// 1) up to at least `committed`, each payload intact. Returns the last lsn.
fn check_recovered(disk: &SimStorage, snap_floor: Lsn, committed: Lsn, ctx: &str) -> Lsn {
    let (wal, rec) = match Wal::open(disk.clone(), config(SEGMENT_BYTES_SMALL)) {
        Ok(x) => x,
        Err(e) => panic!("{ctx}: {e}"),
    };
    let snap = rec.snapshot.as_ref().map_or(0, |s| s.0);
    assert!(snap >= snap_floor, "{ctx}: snapshot {snap}");
    let got = records(&wal, snap);
    for (i, (lsn, p)) in got.iter().enumerate() {
        assert_eq!(*lsn, snap + 1 + i as Lsn, "{ctx}");
        assert_eq!(p, &payload(*lsn, 0, 64), "{ctx}: payload of {lsn}");
    }
    let last = wal.last_lsn();
    assert!(
        last >= committed,
        "{ctx}: lost committed records: {last} < {committed}"
    );
    last
}

fn segment_name(lsn: Lsn) -> String {
    format!("wal-{lsn:020}.seg")
}

fn lsn_of(segment: &str) -> Lsn {
    segment[4..24].parse().expect("segment name")
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).expect("read");
    bytes[offset as usize] ^= 0x08;
    fs::write(path, bytes).expect("write");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("mkdir");
    for entry in fs::read_dir(from).expect("list").flatten() {
        let name = entry.file_name();
        if name != "LOCK" {
            fs::copy(entry.path(), to.join(name)).expect("copy");
        }
    }
}

/// Rewrites a data dir as format version 1 wrote it: no MANIFEST, version 1
/// in every segment and snapshot header (checksums recomputed, per the
/// layout in the crate docs).
fn make_version_1(dir: &Path) {
    fs::remove_file(dir.join("MANIFEST")).expect("delete MANIFEST");
    for entry in fs::read_dir(dir).expect("list").flatten() {
        let name = entry.file_name().into_string().expect("utf-8");
        let path = entry.path();
        let mut b = fs::read(&path).expect("read");
        if name.ends_with(".seg") {
            b[8..12].copy_from_slice(&1u32.to_le_bytes());
            let crc = crc32c::crc32c(&b[0..40]);
            b[40..44].copy_from_slice(&crc.to_le_bytes());
        } else if name.ends_with(".snap") {
            b[8..12].copy_from_slice(&1u32.to_le_bytes());
            let crc = crc32c::crc32c(&b[0..32]);
            b[32..36].copy_from_slice(&crc.to_le_bytes());
        } else {
            continue;
        }
        fs::write(&path, b).expect("write");
    }
}

/// The disk fills up between creating a segment and listing it: the record is
/// refused with NoSpace, the segment taken back, the log stays usable; and a
/// snapshot published while the MANIFEST cannot be rewritten removes nothing.
#[test]
fn a_full_disk_while_the_manifest_is_written_refuses_cleanly() {
    let disk = SimStorage::new();
    let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    // 256 frames of 80 bytes fill the 32 KiB segment exactly.
    append_range(&mut wal, 1..=256, 64);
    wal.commit().expect("commit");
    let files = disk.file_names();
    disk.set_small_files_full(true);
    assert!(matches!(wal.reserve(257, 64), Err(Error::NoSpace)));
    assert!(!wal.is_poisoned());
    assert_eq!(disk.file_names(), files, "the new segment was taken back");
    assert_eq!(disk.crash(1).file_names(), files, "durably");
    disk.set_small_files_full(false);
    append_range(&mut wal, 257..=600, 64);
    wal.commit().expect("commit");
    assert!(wal.segment_names().len() >= 3);

    // Publishing a snapshot: its file is written, then the disk fills up.
    let job = wal
        .begin_snapshot(500, SnapshotImage::from_body(&snapshot_body(500)))
        .expect("begin")
        .expect("a job");
    let written = job.run();
    disk.set_small_files_full(true);
    let files = disk.file_names();
    assert!(matches!(wal.finish_snapshot(written), Err(Error::NoSpace)));
    assert!(!wal.is_poisoned());
    // The temp file renamed into place; nothing else changed.
    let mut expect: Vec<String> = files
        .iter()
        .map(|f| f.trim_end_matches(".tmp").to_string())
        .collect();
    expect.sort();
    assert!(expect.contains(&"snap-00000000000000000500.snap".to_string()));
    assert_eq!(
        disk.file_names(),
        expect,
        "nothing removed, the snapshot published"
    );
    disk.set_small_files_full(false);
    append_range(&mut wal, 601..=610, 64);
    wal.commit().expect("commit");
    drop(wal);
    let (wal, rec) = open_sim(&disk, SEGMENT_BYTES_SMALL);
    assert_eq!(rec.snapshot.map(|s| s.0), Some(500));
    assert_eq!(records(&wal, 500).len(), 110);
}

/// Segments kept only for falling back to an older snapshot are not read at
/// open, but verify checks that the fallback would work.
#[test]
fn damage_in_a_segment_kept_for_the_older_snapshot_fails_verify() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let names = build(dir, 2000, &[800, 1500]);
    let report = verify(dir).expect("verify");
    assert!(report.is_ok(), "{report}");
    // A segment holding records between the two snapshots.
    let kept = names
        .iter()
        .zip(names.iter().skip(1))
        .find(|(a, b)| lsn_of(a) > 800 && lsn_of(b) <= 1500)
        .map(|(a, _)| a.clone())
        .expect("a segment wholly between the snapshots");
    let bytes = fs::read(dir.join(&kept)).expect("read");
    let (_, at, _) = frames(&bytes)[10];
    flip(&dir.join(&kept), at + 20);
    let report = verify(dir).expect("verify");
    assert!(!report.is_ok(), "{report}");
    assert!(!report.verdict.refuses(), "{report}");
    assert!(report.problems.iter().any(|p| p.file == kept), "{report}");
    let (_, rec) = opened(dir);
    assert_eq!(rec.snapshot.map(|s| s.0), Some(1500));
}
