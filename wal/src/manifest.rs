//! The MANIFEST: which segment and snapshot files must exist, and how far the
//! log was known durable when it was written (layout in the crate docs).
//!
//! It is replaced whole, never edited in place: temp file, fsync, rename over
//! the old one, directory fsync ([`publish`]). A crash leaves either the old or
//! the new file, both valid, so a MANIFEST that does not decode is damage, not
//! a crash artifact.
//!
//! Ordering rules that keep an ordinary crash from ever looking like a lost file:
//! - a file is listed only once it is durable (a new segment: header fsynced and
//!   directory entry fsynced; a snapshot: renamed into place and directory fsynced);
//! - a file is removed only once a durable MANIFEST no longer lists it.
//!
//! So after any crash, every listed file exists, and an unlisted segment file is
//! the leftover of an interrupted creation, retirement or tail cut.

use crate::format::{u32_at, u64_at};
use crate::storage::Storage;
use crate::{FORMAT_VERSION, Lsn};

pub(crate) const MANIFEST_NAME: &str = "MANIFEST";
pub(crate) const MANIFEST_TMP_NAME: &str = "MANIFEST.tmp";

/// The temp file of the MANIFEST that lists the segment starting at `first_lsn`:
/// written by the roll on the appending thread, renamed into place by the commit
/// thread once the segment left behind is durable. One name per roll, so a second
/// roll before the first is listed cannot overwrite the first one's temp file.
pub(crate) fn roll_tmp_name(first_lsn: u64) -> String {
    format!("MANIFEST-{first_lsn:020}.tmp")
}

/// The temp file of the MANIFEST written when the snapshot of `lsn` is published.
pub(crate) fn snapshot_tmp_name(lsn: u64) -> String {
    format!("MANIFEST-snap-{lsn:020}.tmp")
}

/// A MANIFEST temp file (a leftover of an interrupted publication, which open removes).
pub(crate) fn is_tmp_name(name: &str) -> bool {
    name == MANIFEST_TMP_NAME || (name.starts_with("MANIFEST-") && name.ends_with(".tmp"))
}
const MANIFEST_MAGIC: u64 = u64::from_le_bytes(*b"SURGEMAN");
const HEADER_BYTES: usize = 32;
const SEGMENT_ENTRY_BYTES: usize = 24;
const SNAPSHOT_ENTRY_BYTES: usize = 8;
const CRC_BYTES: usize = 4;
/// Largest MANIFEST read: about 700,000 segments, far beyond any disk.
pub(crate) const MANIFEST_BYTES_MAX: usize = 16 << 20;

/// One segment the log needs, as its header must read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SegmentEntry {
    pub first_lsn: Lsn,
    pub prev_lsn: Lsn,
    pub segment_bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// Every record up to this LSN was durable when the file was written; the
    /// recovered log must reach it.
    pub log_end: Lsn,
    /// Oldest first: the segments that must exist.
    pub segments: Vec<SegmentEntry>,
    /// Ascending: the snapshots that should exist.
    pub snapshots: Vec<Lsn>,
}

impl Manifest {
    /// Lists the same segments and snapshots as `newer`, and claims no more of
    /// the log than it does: still true of the log `newer` describes.
    pub fn lists_as(&self, newer: &Manifest) -> bool {
        self.segments == newer.segments
            && self.snapshots == newer.snapshots
            && self.log_end <= newer.log_end
    }

    pub fn encode(&self) -> Vec<u8> {
        let len = HEADER_BYTES
            + self.segments.len() * SEGMENT_ENTRY_BYTES
            + self.snapshots.len() * SNAPSHOT_ENTRY_BYTES
            + CRC_BYTES;
        assert!(
            len <= MANIFEST_BYTES_MAX,
            "MANIFEST of {len} bytes: more segments than any disk holds"
        );
        let count = |n: usize| u32::try_from(n).expect("bounded by MANIFEST_BYTES_MAX");
        let mut b = Vec::with_capacity(len);
        b.extend_from_slice(&MANIFEST_MAGIC.to_le_bytes());
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&count(self.segments.len()).to_le_bytes());
        b.extend_from_slice(&count(self.snapshots.len()).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.log_end.to_le_bytes());
        for s in &self.segments {
            b.extend_from_slice(&s.first_lsn.to_le_bytes());
            b.extend_from_slice(&s.prev_lsn.to_le_bytes());
            b.extend_from_slice(&s.segment_bytes.to_le_bytes());
        }
        for lsn in &self.snapshots {
            b.extend_from_slice(&lsn.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(b.len(), len);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Manifest, String> {
        if b.len() < HEADER_BYTES + CRC_BYTES {
            return Err(format!("{} bytes, shorter than its header", b.len()));
        }
        if b.len() > MANIFEST_BYTES_MAX {
            return Err(format!(
                "{} bytes, over the {MANIFEST_BYTES_MAX} limit",
                b.len()
            ));
        }
        let body = &b[..b.len() - CRC_BYTES];
        if crc32c::crc32c(body) != u32_at(b, body.len()) {
            return Err("checksum mismatch".into());
        }
        if u64_at(b, 0) != MANIFEST_MAGIC {
            return Err("bad magic".into());
        }
        let version = u32_at(b, 8);
        if !(2..=FORMAT_VERSION).contains(&version) {
            return Err(format!("unsupported format version {version}"));
        }
        let n = u32_at(b, 12) as usize;
        let m = u32_at(b, 16) as usize;
        if u32_at(b, 20) != 0
            || body.len() != HEADER_BYTES + n * SEGMENT_ENTRY_BYTES + m * SNAPSHOT_ENTRY_BYTES
        {
            return Err(format!(
                "{} bytes do not hold {n} segments and {m} snapshots",
                b.len()
            ));
        }
        let log_end = u64_at(b, 24);
        let segments: Vec<SegmentEntry> = (0..n)
            .map(|i| {
                let at = HEADER_BYTES + i * SEGMENT_ENTRY_BYTES;
                SegmentEntry {
                    first_lsn: u64_at(b, at),
                    prev_lsn: u64_at(b, at + 8),
                    segment_bytes: u64_at(b, at + 16),
                }
            })
            .collect();
        let at = HEADER_BYTES + n * SEGMENT_ENTRY_BYTES;
        let snapshots: Vec<Lsn> = (0..m)
            .map(|i| u64_at(b, at + i * SNAPSHOT_ENTRY_BYTES))
            .collect();
        // Checksummed, so these only fail for a file written by a buggy writer.
        let ordered = segments.iter().all(|s| s.prev_lsn < s.first_lsn)
            && segments.windows(2).all(|w| w[0].first_lsn < w[1].first_lsn)
            && snapshots.windows(2).all(|w| w[0] < w[1]);
        if !ordered {
            return Err("entries out of order".into());
        }
        Ok(Manifest {
            log_end,
            segments,
            snapshots,
        })
    }
}

/// Replaces the MANIFEST atomically and durably: [`write_temp`], then [`install`].
/// On an error the old MANIFEST may still be the durable one, so the caller
/// must not remove any file the old one lists.
pub(crate) fn publish<S: Storage>(storage: &mut S, manifest: &Manifest) -> std::io::Result<()> {
    write_temp(storage, manifest)?;
    install(storage)
}

/// Writes and fsyncs the temp file. On an error the old MANIFEST is untouched.
pub(crate) fn write_temp<S: Storage>(storage: &mut S, manifest: &Manifest) -> std::io::Result<()> {
    let bytes = manifest.encode();
    let written = storage
        .write_file(MANIFEST_TMP_NAME, &bytes)
        .and_then(|()| storage.sync_file(MANIFEST_TMP_NAME));
    if written.is_err() {
        // Best effort: a leftover temp file is removed at the next open anyway.
        let _ = storage.remove(MANIFEST_TMP_NAME);
    }
    written
}

/// Renames the temp file over the MANIFEST and fsyncs the directory.
pub(crate) fn install<S: Storage>(storage: &mut S) -> std::io::Result<()> {
    storage.rename(MANIFEST_TMP_NAME, MANIFEST_NAME)?;
    storage.sync_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            log_end: 900,
            segments: vec![
                SegmentEntry {
                    first_lsn: 1,
                    prev_lsn: 0,
                    segment_bytes: 32768,
                },
                SegmentEntry {
                    first_lsn: 401,
                    prev_lsn: 400,
                    segment_bytes: 32768,
                },
            ],
            snapshots: vec![300, 800],
        }
    }

    #[test]
    fn manifest_round_trips_and_every_bit_flip_is_detected() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Manifest::decode(&bytes), Ok(m));
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    Manifest::decode(&bad).is_err(),
                    "flip {i}.{bit} not detected"
                );
            }
        }
        for len in 0..bytes.len() {
            assert!(Manifest::decode(&bytes[..len]).is_err(), "cut at {len}");
        }
        let empty = Manifest {
            log_end: 0,
            segments: Vec::new(),
            snapshots: Vec::new(),
        };
        assert_eq!(Manifest::decode(&empty.encode()), Ok(empty));
    }

    /// What lets a start on a full disk keep the MANIFEST it found
    /// (`Wal::open`): the same files, and no claim past the log's end.
    #[test]
    fn an_older_manifest_still_lists_the_log_only_with_the_same_files() {
        let found = sample();
        let recovered = Manifest {
            log_end: 950,
            ..sample()
        };
        assert!(
            found.lists_as(&recovered),
            "an older log end is a lower bound"
        );
        assert!(found.lists_as(&found));
        assert!(!recovered.lists_as(&found), "a log end past the log's");
        let one_segment_less = Manifest {
            segments: found.segments[..1].to_vec(),
            ..recovered.clone()
        };
        assert!(!found.lists_as(&one_segment_less));
        let another_snapshot = Manifest {
            snapshots: vec![300, 800, 900],
            ..recovered
        };
        assert!(!found.lists_as(&another_snapshot));
    }
}
