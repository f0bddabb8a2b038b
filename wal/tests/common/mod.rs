//! Shared helpers for the wal integration tests.
#![allow(dead_code)]

use rand_core::{Rng as _, SeedableRng};
pub use rand_xoshiro::SplitMix64;
use surge_wal::{Lsn, Recovery, SimStorage, Storage, Wal, WalConfig};

pub const SEGMENT_BYTES_SMALL: u64 = 32 * 1024;
pub const DATA_OFFSET: u64 = surge_wal::SEGMENT_DATA_OFFSET;

pub fn config(segment_bytes: u64) -> WalConfig {
    WalConfig {
        segment_bytes,
        snapshots_kept: 2,
    }
}

/// A deterministic payload for an lsn (and a generation, so a rewritten lsn differs).
pub fn payload(lsn: Lsn, generation: u64, len: usize) -> Vec<u8> {
    let mut rng = SplitMix64::seed_from_u64(lsn ^ generation.rotate_left(32));
    let mut out = vec![0; len];
    rng.fill_bytes(&mut out);
    out
}

pub fn open_sim(disk: &SimStorage, segment_bytes: u64) -> (Wal<SimStorage>, Recovery) {
    match Wal::open(disk.clone(), config(segment_bytes)) {
        Ok(x) => x,
        Err(e) => panic!("open failed: {e}"),
    }
}

pub fn records<S: Storage>(wal: &Wal<S>, after: Lsn) -> Vec<(Lsn, Vec<u8>)> {
    let mut out = Vec::new();
    wal.replay(after, |lsn, p| {
        out.push((lsn, p.to_vec()));
        Ok(())
    })
    .expect("replay");
    out
}

pub fn append_range<S: Storage>(wal: &mut Wal<S>, lsns: std::ops::RangeInclusive<Lsn>, len: usize) {
    for lsn in lsns {
        wal.append(lsn, &payload(lsn, 0, len)).expect("append");
    }
}

/// Uniform-ish in `0..n` (`n > 0`) from the test workloads' seeded generator.
pub fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    rng.next_u64() % n
}

/// (lsn, offset, frame length without padding) of the records in a segment
/// image, read with the layout from the crate docs (padding frames skipped).
pub fn frames(segment: &[u8]) -> Vec<(Lsn, u64, u64)> {
    let mut out = Vec::new();
    let mut at = DATA_OFFSET as usize;
    while at + 16 <= segment.len() {
        let len = u32::from_le_bytes(segment[at..at + 4].try_into().expect("4 bytes")) as usize;
        let lsn = u64::from_le_bytes(segment[at + 8..at + 16].try_into().expect("8 bytes"));
        if len == 0 {
            break;
        }
        if lsn != 0 {
            out.push((lsn, at as u64, len as u64));
        }
        at += len.div_ceil(8) * 8;
    }
    out
}
