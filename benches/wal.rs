//! WAL append + commit throughput on real files (MmapStorage, default 64 MiB
//! segments), one commit (msync of the dirty range) per batch, as the engine's
//! group commit does. Run: `cargo bench --bench wal`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use surge_wal::{Lsn, MmapStorage, Wal, WalConfig};

const PAYLOAD_BYTES: usize = 64;
const BATCH_LENS: [u64; 4] = [1, 64, 1024, 8192];
/// Snapshot (which prunes old segments) when more segments than this pile up,
/// so a long run does not fill the disk.
const SEGMENTS_KEPT_MAX: usize = 4;

struct BenchLog {
    dir: PathBuf,
    wal: Option<Wal<MmapStorage>>,
    lsn: Lsn,
}

impl BenchLog {
    fn new(name: &str) -> BenchLog {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("wal-bench-{name}-{}", std::process::id()));
        // A leftover from an interrupted run would only add replay time.
        let _ = std::fs::remove_dir_all(&dir);
        let storage = MmapStorage::open(&dir).expect("open bench dir");
        let (wal, _) = Wal::open(storage, WalConfig::default()).expect("open wal");
        BenchLog {
            dir,
            wal: Some(wal),
            lsn: 0,
        }
    }

    fn batch(&mut self, len: u64, payload: &[u8]) {
        let wal = self.wal.as_mut().expect("open");
        for _ in 0..len {
            self.lsn += 1;
            wal.append(self.lsn, black_box(payload)).expect("append");
        }
        wal.commit().expect("commit");
        if wal.stats().segments > SEGMENTS_KEPT_MAX {
            wal.write_snapshot(self.lsn, b"bench").expect("snapshot");
        }
    }
}

impl Drop for BenchLog {
    fn drop(&mut self) {
        drop(self.wal.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn group(c: &mut Criterion, name: &str, throughput: impl Fn(u64) -> Throughput) {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let payload = [0xA5u8; PAYLOAD_BYTES];
    for batch_len in BATCH_LENS {
        let mut log = BenchLog::new(&format!("{name}-{batch_len}"));
        group.throughput(throughput(batch_len));
        group.bench_with_input(
            BenchmarkId::from_parameter(batch_len),
            &batch_len,
            |b, &len| {
                b.iter(|| log.batch(len, &payload));
            },
        );
    }
    group.finish();
}

fn append_commit_records(c: &mut Criterion) {
    group(c, "wal_append_commit_records", Throughput::Elements);
}

fn append_commit_bytes(c: &mut Criterion) {
    // Payload bytes only: frame headers and commit padding are overhead.
    group(c, "wal_append_commit_bytes", |len| {
        Throughput::Bytes(len * PAYLOAD_BYTES as u64)
    });
}

criterion_group!(benches, append_commit_records, append_commit_bytes);
criterion_main!(benches);
