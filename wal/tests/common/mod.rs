//! Shared helpers for the wal integration tests.
#![allow(dead_code)]

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
    let mut x =
        lsn.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ generation.wrapping_mul(0xD1B5_4A32_D192_ED03);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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

/// Small seeded generator for test workloads.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
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
