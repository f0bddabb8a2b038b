//! The pipelined commit at the WAL level: a commit job begun on the appending thread
//! may run later on another; a segment roll in between claims nothing until the
//! commit job after it has run (its syncs and the MANIFEST that lists the new segment
//! are that job's roll step), and a power cut at any point of that job loses nothing
//! a finished job made durable.

mod common;

use common::{SEGMENT_BYTES_SMALL, frames, open_sim, payload, records};
use surge_wal::{SimStorage, SnapshotImage};

/// Appends 200-byte records from `lsn + 1` until the log rolls to a new segment;
/// returns the last LSN written before the roll.
fn append_until_roll(wal: &mut surge_wal::Wal<SimStorage>, lsn: &mut u64) -> u64 {
    let segments = wal.stats().segments;
    loop {
        *lsn += 1;
        wal.append(*lsn, &payload(*lsn, 0, 200)).expect("append");
        if wal.stats().segments > segments {
            return *lsn - 1;
        }
    }
}

/// Recovery keeps every record through `kept`, intact and in order.
fn assert_kept(crashed: &SimStorage, kept: u64, what: &str) -> u64 {
    let (wal, rec) = open_sim(crashed, SEGMENT_BYTES_SMALL);
    assert!(
        rec.report.last_lsn >= kept,
        "{what}: {kept} was durable, recovery has {}",
        rec.report.last_lsn
    );
    let got = records(&wal, 0);
    for (i, (l, p)) in got.iter().enumerate() {
        assert_eq!(*l, i as u64 + 1, "{what}: no gap");
        assert_eq!(p, &payload(*l, 0, 200), "{what}: record {l}");
    }
    rec.report.last_lsn
}

/// Begin a commit, keep its job unrun, append until the log rolls, then cut the
/// power: the roll claimed nothing (its watermark only what was durable, and the new
/// segment is not listed), so recovery succeeds, with no false "rot" below a
/// watermark. Run the first job, then the one that carries the roll, with the disk
/// dying at each of its steps in turn: whatever the cut, every record the first job
/// covered survives; once the second job has run, every record before the new
/// segment survives and the new segment is listed.
#[test]
fn a_roll_is_listed_by_the_commit_job_after_it_and_claims_nothing_before() {
    let (mut cut_short, mut completed) = (0, 0);
    for seed in 0..20u64 {
        let disk = SimStorage::new();
        let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
        let mut lsn = 0;
        for _ in 0..10 {
            lsn += 1;
            wal.append(lsn, &payload(lsn, 0, 200)).expect("append");
        }
        let first = wal.begin_commit().expect("begin").expect("a job");
        let rolled_after = append_until_roll(&mut wal, &mut lsn);
        assert!(wal.steps_in_flight());
        assert_kept(&disk.crash(seed), 0, &format!("seed {seed}, nothing run"));

        first.run().expect("the first job");
        wal.finish_commit(first.target(), Ok(())).expect("finish");
        assert_kept(
            &disk.crash(seed),
            10,
            &format!("seed {seed}, first job run"),
        );

        let second = wal.begin_commit().expect("begin").expect("a job");
        assert_eq!(second.target(), lsn);
        // The disk dies at one step of the second job (the old segment's range,
        // the new header, the new segment's rename from its prepared name, the
        // directory, the MANIFEST's fsync, rename, directory, the new segment's
        // range), or just after it.
        let at_step = seed % 9;
        let cut = disk.clone();
        cut.fail_at_step(at_step);
        let ran = second.run();
        let what = format!("seed {seed}, disk dead at step {at_step} of the roll's job");
        let crashed = cut.crash(seed);
        cut.clear_failures();
        if ran.is_ok() {
            completed += 1;
            let last = assert_kept(&crashed, lsn, &what);
            assert_eq!(last, lsn, "{what}");
            let (reopened, _) = open_sim(&crashed, SEGMENT_BYTES_SMALL);
            assert_eq!(
                reopened.segment_names().len(),
                2,
                "{what}: the new segment is listed"
            );
        } else {
            cut_short += 1;
            assert_kept(&crashed, 10, &what);
        }
        assert!(rolled_after > 10);
        drop(wal);
    }
    // The job has eight steps (the old segment's range, the roll's six, the new
    // segment's range): steps 0..=7 cut it short, step 8 comes after it.
    assert_eq!((cut_short, completed), (18, 2), "the cuts fell where meant");
}

/// A snapshot published without waiting (its rename and MANIFEST are a step of
/// the next commit job), then a roll before that job runs: the job installs the
/// two MANIFESTs in the order they were made. With the disk dying at each of
/// the job's steps, open always succeeds (no listed file missing, no segment
/// listed before its header is durable), and keeps every record after the
/// snapshot it loads; once the job has run, the new snapshot and the new segment
/// are both in force.
#[test]
fn a_publication_then_a_roll_land_in_order_whatever_the_cut() {
    let base = SimStorage::new();
    let mut lsn = 0;
    let lsn_at_first_snapshot = {
        let (mut wal, _) = open_sim(&base, SEGMENT_BYTES_SMALL);
        append_until_roll(&mut wal, &mut lsn); // the first segment, from nothing
        let first_segment_end = append_until_roll(&mut wal, &mut lsn);
        let second_segment_end = append_until_roll(&mut wal, &mut lsn);
        append_until_roll(&mut wal, &mut lsn);
        wal.commit().expect("commit");
        // Two snapshots kept: the next one retires the second segment and the
        // first snapshot.
        for at in [first_segment_end, second_segment_end] {
            wal.write_snapshot(at, format!("state at {at}").as_bytes())
                .expect("snapshot");
        }
        second_segment_end
    };
    let first_snapshot_lsn = lsn_at_first_snapshot;
    let (mut cut_short, mut completed) = (0, 0);
    for at_step in 0..16u64 {
        let disk = base.fork();
        let (mut wal, rec) = open_sim(&disk, SEGMENT_BYTES_SMALL);
        let mut lsn = rec.report.last_lsn;
        let snapshot_lsn = lsn;
        let job = wal
            .begin_snapshot(
                snapshot_lsn,
                SnapshotImage::from_body(format!("state at {snapshot_lsn}").as_bytes()),
            )
            .expect("begin")
            .expect("a job");
        let segments_at_open = wal.segment_names().len();
        wal.publish_snapshot(job.run()).expect("published");
        let segments_before = wal.segment_names().len();
        assert!(
            segments_before < segments_at_open,
            "the snapshot retires segments"
        );
        append_until_roll(&mut wal, &mut lsn);
        let commit = wal.begin_commit().expect("begin").expect("a job");
        disk.fail_at_step(at_step);
        let ran = commit.run();
        let what = format!("disk dead at step {at_step} of the job");
        let crashed = disk.crash(at_step);
        disk.clear_failures();
        let (reopened, rec) =
            match surge_wal::Wal::open(crashed, common::config(SEGMENT_BYTES_SMALL)) {
                Ok(x) => x,
                Err(e) => panic!("{what}: {e}"),
            };
        let loaded = rec.snapshot.as_ref().map_or(0, |s| s.0);
        assert!(
            loaded == first_snapshot_lsn || loaded == snapshot_lsn,
            "{what}: snapshot {loaded}"
        );
        let got = records(&reopened, loaded);
        // Everything durable before the job survives, from whichever snapshot.
        assert!(rec.report.last_lsn >= snapshot_lsn, "{what}");
        for (i, (l, p)) in got.iter().enumerate() {
            assert_eq!(*l, loaded + 1 + i as u64, "{what}: no gap");
            assert_eq!(p, &payload(*l, 0, 200), "{what}: record {l}");
        }
        if ran.is_ok() {
            completed += 1;
            assert_eq!(loaded, snapshot_lsn, "{what}");
            assert_eq!(rec.report.last_lsn, lsn, "{what}");
            assert_eq!(
                reopened.segment_names().len(),
                segments_before + 1,
                "{what}: retired segments gone, the new one listed"
            );
        } else {
            cut_short += 1;
        }
    }
    assert!(
        cut_short >= 5 && completed >= 1,
        "cuts: {cut_short} short, {completed} after"
    );
}

/// A commit job left unrun while more records arrive: `continue_commit` puts them
/// in the place of that job's commit mark, and the merged job covers both. The
/// records sit back to back on one page (no second mark between them), and a
/// power cut before the merged job has run, or at each of its steps, or after it,
/// loses nothing it made durable and never leaves a gap or a damaged record.
#[test]
fn records_queued_behind_an_unrun_commit_take_the_place_of_its_mark() {
    let (mut cut_short, mut completed) = (0, 0);
    for seed in 0..40u64 {
        let disk = SimStorage::new();
        let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
        // One commit run and finished first: its records must survive every cut.
        for lsn in 1..=3 {
            wal.append(lsn, &payload(lsn, 0, 200)).expect("append");
        }
        let done = wal.begin_commit().expect("begin").expect("a job");
        done.run().expect("the first job");
        wal.finish_commit(done.target(), Ok(())).expect("finish");

        for lsn in 4..=5 {
            wal.append(lsn, &payload(lsn, 0, 200)).expect("append");
        }
        let mut queued = wal.begin_commit().expect("begin").expect("a job");
        for lsn in 6..=8 {
            wal.append(lsn, &payload(lsn, 0, 200)).expect("append");
        }
        let more = wal.continue_commit().expect("continue").expect("a job");
        queued.merge(more);
        assert_eq!(queued.target(), 8);
        assert_kept(
            &disk.crash(seed),
            3,
            &format!("seed {seed}, merged job not run"),
        );

        // Back to back: record 6 starts where 5 ended (aligned), not on a new page.
        let image = disk
            .file_bytes("wal-00000000000000000004.seg")
            .unwrap_or_default();
        let image = if image.is_empty() {
            disk.file_bytes("wal-00000000000000000001.seg")
                .expect("the segment")
        } else {
            image
        };
        let at: std::collections::HashMap<u64, (u64, u64)> = frames(&image)
            .into_iter()
            .map(|(lsn, offset, len)| (lsn, (offset, len)))
            .collect();
        let (five_at, five_len) = at[&5];
        assert_eq!(
            at[&6].0,
            (five_at + five_len).div_ceil(8) * 8,
            "seed {seed}: no mark between 5 and 6"
        );

        let cut = disk.clone();
        cut.fail_at_step(seed % 4);
        let ran = queued.run();
        let kept = assert_kept(
            &disk.crash(seed),
            3,
            &format!("seed {seed}, merged job cut"),
        );
        match ran {
            Ok(()) => {
                completed += 1;
                wal.finish_commit(queued.target(), Ok(())).expect("finish");
                assert!(
                    kept >= 8,
                    "seed {seed}: the merged job ran, recovery has {kept}"
                );
            }
            Err(_) => cut_short += 1,
        }
    }
    assert!(
        cut_short > 0 && completed > 0,
        "both ends were exercised: {cut_short} cut short, {completed} completed"
    );
}
