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

/// The device's price and the log's, side by side in one run (issue 8):
/// `wal/raw_pwrite_fdatasync_baseline` is one 512-byte `pwrite` + `fdatasync` into
/// a pre-written file, each on a fresh page as the log's commits are;
/// `wal/commit_1_record` is one 64-byte record appended and committed. Operations
/// during which the log rolled to a new segment (or snapshotted to prune) are
/// timed apart and replaced, so the figure is append + commit alone.
fn device_vs_commit(c: &mut Criterion) {
    use std::io::Write as _;
    use std::os::unix::fs::FileExt as _;
    use std::time::Instant;
    let mut group = c.benchmark_group("wal");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .throughput(Throughput::Elements(1));

    const FILE_BYTES: u64 = 64 << 20;
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("wal-bench-raw-{}", std::process::id()));
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .expect("raw file");
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..(FILE_BYTES >> 20) {
        file.write_all(&zeros).expect("pre-write");
    }
    file.sync_all().expect("fsync pre-written file");
    let record = [0x5Au8; 512];
    let mut page = 0u64;
    group.bench_function("raw_pwrite_fdatasync_baseline", |b| {
        b.iter(|| {
            file.write_all_at(&record, page * 4096).expect("pwrite");
            file.sync_data().expect("fdatasync");
            page = (page + 1) % (FILE_BYTES / 4096);
        })
    });
    drop(file);
    let _ = std::fs::remove_file(&path);

    let mut log = BenchLog::new("commit-1");
    let payload = [0xA5u8; PAYLOAD_BYTES];
    group.bench_function("commit_1_record", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            while done < iters {
                let segments = log.wal.as_ref().expect("open").stats().segments;
                let started = Instant::now();
                log.lsn += 1;
                let wal = log.wal.as_mut().expect("open");
                wal.append(log.lsn, black_box(&payload)).expect("append");
                wal.commit().expect("commit");
                let took = started.elapsed();
                if wal.stats().segments == segments {
                    timed += took;
                    done += 1;
                } else if wal.stats().segments > SEGMENTS_KEPT_MAX {
                    wal.write_snapshot(log.lsn, b"bench").expect("snapshot");
                }
            }
            timed
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    device_vs_commit,
    append_commit_records,
    append_commit_bytes
);
criterion_main!(benches);
