//! `surge wal verify DIR`: its exit code and what it prints, on data dirs
//! written through the wal crate and then damaged the way an operator might
//! find them.

use std::fs;
use std::path::Path;
use std::process::Command;

use surge_engine::wal::{MmapStorage, Wal, WalConfig};

const SEGMENT_BYTES: u64 = 64 * 1024;

/// Records 1..=n of 100 bytes, committed in batches of 50, with a snapshot at
/// `snapshot` (if not 0). Returns the segment names.
fn build(dir: &Path, n: u64, snapshot: u64) -> Vec<String> {
    let storage = MmapStorage::open(dir).expect("lock data dir");
    let config = WalConfig {
        segment_bytes: SEGMENT_BYTES,
        snapshots_kept: 2,
    };
    let (mut wal, _) = Wal::open(storage, config).expect("open");
    for lsn in 1..=n {
        wal.append(lsn, &[lsn as u8; 100]).expect("append");
        if lsn % 50 == 0 || lsn == n {
            wal.commit().expect("commit");
        }
        if lsn == snapshot {
            wal.write_snapshot(lsn, format!("state at {lsn}").as_bytes())
                .expect("snapshot");
        }
    }
    wal.segment_names()
}

fn verify(dir: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_surge"))
        .args(["wal", "verify"])
        .arg(dir)
        .output()
        .expect("run surge wal verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().expect("exit code"), text)
}

#[test]
fn wal_verify_exits_0_on_a_whole_dir_and_on_a_torn_tail() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let names = build(dir, 700, 300);
    let (code, text) = verify(dir);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("verdict: OK"), "{text}");

    // A torn tail, as a crash leaves it: reported, and still exit 0.
    let last = dir.join(names.last().expect("segments"));
    let mut bytes = fs::read(&last).expect("read");
    let end = bytes.iter().rposition(|&b| b != 0).expect("data");
    bytes[end + 1..end + 64].fill(0x5A);
    fs::write(&last, bytes).expect("write");
    let (code, text) = verify(dir);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("torn tail"), "{text}");
}

#[test]
fn wal_verify_exits_1_naming_a_deleted_segment() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let names = build(dir, 300, 150);
    assert_eq!(names.len(), 1);
    fs::remove_file(dir.join(&names[0])).expect("delete");
    let (code, text) = verify(dir);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains(&names[0]) && text.contains("refuse to start"),
        "{text}"
    );
}

#[test]
fn wal_verify_exits_1_on_a_damaged_snapshot_that_recovery_could_work_around() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    build(dir, 300, 150);
    let snap = dir.join("snap-00000000000000000150.snap");
    let mut bytes = fs::read(&snap).expect("read");
    bytes[45] ^= 0x01;
    fs::write(&snap, bytes).expect("write");
    let (code, text) = verify(dir);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("snap-00000000000000000150.snap") && text.contains("replay 300 records"),
        "{text}"
    );
}
