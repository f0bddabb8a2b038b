//! The pipelined commit at the WAL level: a commit job begun on the appending thread
//! may run later on another; a segment roll in between must not claim more than is on
//! disk (its watermark and the MANIFEST say "durable up to here").

mod common;

use common::{SEGMENT_BYTES_SMALL, open_sim, payload, records};
use surge_wal::SimStorage;

/// Begin a commit, keep its job unrun, append until the log rolls, then cut the power.
/// The roll claimed everything before it durable, so it must have made it durable
/// itself: recovery succeeds (no false "rot" below the watermark) and keeps every
/// record up to the roll.
#[test]
fn a_roll_while_a_commit_job_is_pending_never_over_claims() {
    for seed in 0..20u64 {
        let disk = SimStorage::new();
        let (mut wal, _) = open_sim(&disk, SEGMENT_BYTES_SMALL);
        let mut lsn = 0;
        for _ in 0..10 {
            lsn += 1;
            wal.append(lsn, &payload(lsn, 0, 200)).expect("append");
        }
        let pending = wal.begin_commit().expect("begin").expect("a job");
        let segments = wal.stats().segments;
        let mut rolled_after = None;
        while rolled_after.is_none() {
            lsn += 1;
            let before = lsn - 1;
            wal.append(lsn, &payload(lsn, 0, 200)).expect("append");
            if wal.stats().segments > segments {
                rolled_after = Some(before);
            }
        }
        let rolled_after = rolled_after.expect("rolled");
        let crashed = disk.crash(seed);
        drop(pending); // never run: its sync did not happen before the cut
        drop(wal);
        let (wal, rec) = open_sim(&crashed, SEGMENT_BYTES_SMALL);
        assert!(
            rec.report.last_lsn >= rolled_after,
            "seed {seed}: the roll claimed {rolled_after} durable, recovery has {}",
            rec.report.last_lsn
        );
        let got = records(&wal, 0);
        for (l, p) in got.iter().take_while(|(l, _)| *l <= rolled_after) {
            assert_eq!(p, &payload(*l, 0, 200), "seed {seed}: record {l}");
        }
        assert_eq!(
            got.iter().filter(|(l, _)| *l <= rolled_after).count() as u64,
            rolled_after,
            "seed {seed}"
        );
    }
}
