//! Real files: MmapStorage round trip, lock exclusion, offline verify.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};

use common::*;
use surge_wal::{Error, Lsn, MmapStorage, Verdict, Wal, verify};

const SEGMENT_BYTES: u64 = 64 * 1024;

fn open_dir(dir: &std::path::Path) -> (Wal<MmapStorage>, surge_wal::Recovery) {
    let storage = MmapStorage::open(dir).expect("lock data dir");
    Wal::open(storage, config(SEGMENT_BYTES)).expect("open wal")
}

#[test]
fn mmap_storage_round_trip_with_lock_exclusion() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    {
        let (mut wal, rec) = open_dir(&dir);
        assert_eq!(rec.report.last_lsn, 0);
        assert!(matches!(MmapStorage::open(&dir), Err(Error::Locked)));
        assert!(matches!(verify(&dir), Err(Error::Locked)));
        append_range(&mut wal, 1..=2000, 100);
        wal.commit().expect("commit");
        wal.write_snapshot(1500, b"snapshot at 1500")
            .expect("snapshot");
        append_range(&mut wal, 2001..=2100, 100);
        wal.commit().expect("commit");
        assert!(wal.stats().segments >= 2);
    }
    let (mut wal, rec) = open_dir(&dir);
    assert_eq!(rec.snapshot, Some((1500, b"snapshot at 1500".to_vec())));
    assert_eq!(rec.report.records, 600);
    assert_eq!(rec.report.torn_tail, None);
    let got = records(&wal, 1500);
    assert_eq!(got.len(), 600);
    for (lsn, p) in &got {
        assert_eq!(p, &payload(*lsn, 0, 100));
    }
    append_range(&mut wal, 2101..=2110, 100);
    wal.commit().expect("commit after reopen");
    drop(wal);
    let report = verify(&dir).expect("verify");
    assert_eq!(report.verdict, Verdict::Clean, "{report}");
    assert_eq!(report.last_lsn, 2110);
}

#[test]
fn verify_reports_the_offset_of_rot() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let first_segment;
    {
        let (mut wal, _) = open_dir(dir);
        append_range(&mut wal, 1..=100, 64);
        wal.commit().expect("commit");
        append_range(&mut wal, 101..=110, 64);
        wal.commit().expect("commit");
        first_segment = wal.segment_names()[0].clone();
    }
    let path = dir.join(&first_segment);
    let mut bytes = Vec::new();
    std::fs::File::open(&path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .expect("read");
    let (lsn, at, _) = frames(&bytes)[40];
    assert_eq!(lsn, 41);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open segment");
    f.seek(SeekFrom::Start(at + 20)).expect("seek");
    f.write_all(&[bytes[(at + 20) as usize] ^ 0x01])
        .expect("write");
    drop(f);

    let report = verify(dir).expect("verify");
    let text = report.to_string();
    assert!(!report.is_ok(), "{text}");
    assert_eq!(
        report.verdict,
        Verdict::Corrupt {
            segment: first_segment.clone(),
            offset: at,
            detail: match &report.verdict {
                Verdict::Corrupt { detail, .. } => detail.clone(),
                _ => String::new(),
            },
        }
    );
    assert_eq!(report.segments[0].first_bad_offset, Some(at));
    assert_eq!(report.segments[0].records, 40);
    assert!(
        text.contains("CORRUPT") && text.contains(&at.to_string()),
        "{text}"
    );
    let open = Wal::open(MmapStorage::open(dir).expect("lock"), config(SEGMENT_BYTES));
    match open {
        Err(Error::Corrupt {
            segment, offset, ..
        }) => assert_eq!((segment, offset), (first_segment, at)),
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened a log with rot below the watermark"),
    }
}

#[test]
fn verify_reports_a_torn_tail_without_changing_anything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let newest;
    {
        let (mut wal, _) = open_dir(dir);
        append_range(&mut wal, 1..=50, 64);
        wal.commit().expect("commit");
        append_range(&mut wal, 51..=60, 64);
        wal.commit().expect("commit");
        newest = wal.segment_names().last().expect("segment").clone();
    }
    let path = dir.join(&newest);
    let bytes = std::fs::read(&path).expect("read");
    let (_, at, _) = *frames(&bytes).iter().find(|f| f.0 == 55).expect("frame 55");
    let mut torn = bytes.clone();
    torn[at as usize + 30] ^= 0xFF;
    std::fs::write(&path, &torn).expect("write");
    let report = verify(dir).expect("verify");
    assert!(report.is_ok());
    assert!(
        matches!(&report.verdict, Verdict::TornTail { offset, .. } if *offset == at),
        "{report}"
    );
    assert_eq!(
        std::fs::read(&path).expect("read"),
        torn,
        "verify changes nothing"
    );
    let (wal, rec) = open_dir(dir);
    assert_eq!(rec.report.torn_tail.as_ref().map(|t| t.offset), Some(at));
    let last: Vec<Lsn> = records(&wal, 0).iter().map(|r| r.0).collect();
    assert_eq!(last, (1..=54).collect::<Vec<_>>());
}

/// Pruning after a snapshot retires segments off the appending thread: each is
/// renamed out of the log's names and deleted by the reclaimer thread. Once the
/// storage is dropped every retired file is gone, and a leftover from a run that
/// died before deleting is removed at the next open.
#[test]
fn retired_segments_are_deleted_by_the_reclaimer_and_leftovers_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let segment_files = |dir: &std::path::Path| -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|n| n.ends_with(".seg") || n.starts_with("wal-retired-"))
            .collect();
        names.sort();
        names
    };
    let live = {
        let (mut wal, _) = open_dir(&dir);
        append_range(&mut wal, 1..=2000, 100);
        wal.commit().expect("commit");
        let before = wal.segment_names().len();
        wal.write_snapshot(2000, b"snapshot at 2000")
            .expect("snapshot");
        append_range(&mut wal, 2001..=2010, 100);
        wal.commit().expect("commit");
        wal.write_snapshot(2010, b"snapshot at 2010")
            .expect("snapshot");
        let live = wal.segment_names();
        assert!(
            live.len() < before,
            "nothing was pruned: {before} -> {live:?}"
        );
        live
    };
    // Dropped: the reclaimer finished, and only the live segments are left.
    let mut live_sorted = live.clone();
    live_sorted.sort();
    assert_eq!(segment_files(&dir), live_sorted);
    // A run that died before its reclaimer deleted a file leaves it behind.
    std::fs::write(dir.join("wal-retired-3.tmp"), b"leftover").expect("write");
    let (wal, rec) = open_dir(&dir);
    assert_eq!(rec.report.last_lsn, 2010);
    assert_eq!(segment_files(&dir), live_sorted);
    drop(wal);
    assert_eq!(verify(&dir).expect("verify").verdict, Verdict::Clean);
}

/// The open starts the spare preparer even when the last segment has room
/// (`Wal::prepare_next_segment`): its prepared manifest files are there before any
/// roll, so a snapshot published before the first roll stages its MANIFEST into
/// one instead of creating a file on the appending thread.
#[test]
fn the_preparer_starts_at_open_when_the_last_segment_has_room() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    {
        let (mut wal, _) = open_dir(&dir);
        append_range(&mut wal, 1..=10, 100);
        wal.commit().expect("commit");
    }
    let prepared_manifests = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .expect("entry")
                    .file_name()
                    .to_string_lossy()
                    .starts_with("wal-spare-manifest-")
            })
            .count()
    };
    let (mut wal, _) = open_dir(&dir);
    assert_eq!(prepared_manifests(&dir), 0, "the open removed the old ones");
    wal.prepare_next_segment().expect("room on the disk");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while prepared_manifests(&dir) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "no prepared manifest files without a roll"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    assert_eq!(wal.segment_names().len(), 1, "no roll");
    wal.write_snapshot(10, b"snapshot at 10").expect("snapshot");
    drop(wal);
    assert_eq!(verify(&dir).expect("verify").verdict, Verdict::Clean);
}
