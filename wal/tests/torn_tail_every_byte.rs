//! A crash in the middle of the last commit, at every byte of it, on real files
//! (`MmapStorage` over a temp dir).
//!
//! Segment files are created at their full length (fallocate, zero-filled, fsynced)
//! before the MANIFEST lists them, so a power loss cannot make a listed segment
//! shorter: what it leaves of an unfinished commit is the old content of those
//! pages, which is zeros. That is the first case below: the active segment zeroed
//! from every byte offset of the last committed batch (its records and the commit
//! padding frame). Open must then recover every record before the batch, plus
//! every frame of the batch left whole, and report a torn tail exactly when
//! non-zero bytes are left after the last whole frame (crate docs, "Telling a torn
//! tail from rot": such bytes are cut and reported in `RecoveryReport::torn_tail`;
//! a log that simply ends in zeros is a clean end).
//!
//! Shortening the file is not something a crash does to a listed segment, and the
//! crate documents what open does with it (crate docs, MANIFEST: a listed segment
//! whose length does not match is truncated or replaced, `Error::Corrupt`): the
//! second case truncates the file at every byte offset of the last batch and
//! expects open to refuse, naming the file and the length it found, and to leave
//! the file as it was.

mod common;

use std::path::Path;

use common::*;
use surge_wal::{Error, Lsn, MmapStorage, Recovery, Wal};

const SEGMENT_BYTES: u64 = 64 * 1024;
const EARLIER: Lsn = 40;
const LAST_BATCH: std::ops::RangeInclusive<Lsn> = 41..=44;

fn payload_len(lsn: Lsn) -> usize {
    // Varied lengths, so frames end at different alignments.
    40 + (lsn as usize * 7) % 23
}

/// A frame in the segment as written: where it starts, its length without the
/// alignment zeros, and its lsn (0 for commit padding).
#[derive(Clone, Copy, Debug)]
struct Frame {
    at: u64,
    len: u64,
    lsn: Lsn,
}

impl Frame {
    fn aligned_end(&self) -> u64 {
        self.at + self.len.div_ceil(8) * 8
    }
}

/// Every frame of a segment image, padding frames included.
fn all_frames(segment: &[u8]) -> Vec<Frame> {
    let mut out = Vec::new();
    let mut at = DATA_OFFSET;
    while at + 16 <= segment.len() as u64 {
        let i = at as usize;
        let len = u32::from_le_bytes(segment[i..i + 4].try_into().expect("4 bytes")) as u64;
        if len == 0 {
            break;
        }
        let lsn = u64::from_le_bytes(segment[i + 8..i + 16].try_into().expect("8 bytes"));
        let frame = Frame { at, len, lsn };
        out.push(frame);
        at = frame.aligned_end();
    }
    out
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    segment: String,
    image: Vec<u8>,
    frames: Vec<Frame>,
    /// Offset of the last batch's first frame, and the end of its padding frame's
    /// header (past it the padding frame holds only zeros).
    batch: (u64, u64),
}

/// A data dir with two commits before the last one, then the last batch.
fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let segment;
    {
        let (mut wal, _) = open_dir(&dir).expect("open a new dir");
        for range in [1..=20, 21..=EARLIER, LAST_BATCH] {
            for lsn in range {
                wal.append(lsn, &payload(lsn, 0, payload_len(lsn)))
                    .expect("append");
            }
            wal.commit().expect("commit");
        }
        let names = wal.segment_names();
        assert_eq!(names.len(), 1, "one segment holds the fixture");
        segment = names[0].clone();
    }
    let image = std::fs::read(dir.join(&segment)).expect("read segment");
    assert_eq!(image.len() as u64, SEGMENT_BYTES);
    let frames = all_frames(&image);
    let first = frames
        .iter()
        .find(|f| f.lsn == *LAST_BATCH.start())
        .expect("first frame of the last batch");
    let last = frames.last().expect("frames");
    assert_eq!(last.lsn, 0, "the last commit ends with a padding frame");
    assert_eq!(
        last.aligned_end() % surge_wal::PAGE_BYTES,
        0,
        "padding ends on a page"
    );
    let batch = (first.at, last.at + 16);
    Fixture {
        _tmp: tmp,
        dir,
        segment,
        image,
        frames,
        batch,
    }
}

fn open_dir(dir: &Path) -> Result<(Wal<MmapStorage>, Recovery), Error> {
    Wal::open(MmapStorage::open(dir)?, config(SEGMENT_BYTES))
}

/// A copy of the fixture's data dir (without the spare segments the storage
/// prepares on its own), with the active segment replaced by `segment`.
fn copy_with(fx: &Fixture, to: &Path, segment: &[u8]) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(&fx.dir).expect("read dir") {
        let name = entry.expect("entry").file_name();
        let name = name.to_string_lossy();
        if (name.starts_with("wal-spare") && name.ends_with(".tmp")) || name == "LOCK" {
            continue;
        }
        if name == fx.segment {
            std::fs::write(to.join(&*name), segment).expect("write segment");
        } else {
            std::fs::copy(fx.dir.join(&*name), to.join(&*name)).expect("copy");
        }
    }
}

fn recovered(wal: &Wal<MmapStorage>) -> Vec<(Lsn, Vec<u8>)> {
    records(wal, 0)
}

#[test]
fn zeroed_from_every_byte_of_the_last_batch_recovers_what_is_whole_and_reports_the_tear() {
    let fx = fixture();
    let scratch = tempfile::tempdir().expect("tempdir");
    let (mut torn_cases, mut clean_cases) = (0, 0);
    for cut in fx.batch.0..=fx.batch.1 {
        let mut image = fx.image.clone();
        image[cut as usize..].fill(0);
        // The oracle, from the layout alone: the frames left unchanged from the
        // start are whole; the log ends after them; anything non-zero past that
        // end is a torn tail.
        let whole: Vec<&Frame> = fx
            .frames
            .iter()
            .take_while(|f| {
                let r = f.at as usize..(f.at + f.len) as usize;
                image[r.clone()] == fx.image[r]
            })
            .collect();
        let end = whole.last().map_or(DATA_OFFSET, |f| f.aligned_end());
        let expect_torn = image[end as usize..].iter().any(|&b| b != 0);
        let expect_lsns: Vec<Lsn> = whole.iter().map(|f| f.lsn).filter(|&l| l != 0).collect();
        assert!(
            expect_lsns.len() as Lsn >= EARLIER,
            "cut {cut}: the oracle keeps every earlier record"
        );

        let dir = scratch.path().join(format!("cut-{cut}"));
        copy_with(&fx, &dir, &image);
        let (wal, rec) = open_dir(&dir).unwrap_or_else(|e| panic!("cut {cut}: open failed: {e}"));
        let got = recovered(&wal);
        let got_lsns: Vec<Lsn> = got.iter().map(|r| r.0).collect();
        assert_eq!(got_lsns, expect_lsns, "cut {cut}: records recovered");
        for (lsn, p) in &got {
            assert_eq!(
                p,
                &payload(*lsn, 0, payload_len(*lsn)),
                "cut {cut}: payload of {lsn}"
            );
        }
        assert_eq!(rec.report.last_lsn, *expect_lsns.last().expect("records"));
        match (&rec.report.torn_tail, expect_torn) {
            (Some(torn), true) => {
                torn_cases += 1;
                assert_eq!(torn.segment, fx.segment, "cut {cut}");
                assert_eq!(torn.offset, end, "cut {cut}: where the valid log ends");
                assert!(torn.bytes_cut > 0, "cut {cut}: {torn:?}");
                assert!(torn.removed_segments.is_empty(), "cut {cut}: {torn:?}");
            }
            (None, false) => clean_cases += 1,
            (got, _) => panic!("cut {cut}: expected a torn tail: {expect_torn}, got {got:?}"),
        }
        drop(wal);
        if cut % 7 == 0 {
            // The cut is made on disk: a second open finds a clean log, the same records.
            let (wal, rec) = open_dir(&dir).expect("reopen");
            assert_eq!(rec.report.torn_tail, None, "cut {cut}: second open");
            let again: Vec<Lsn> = recovered(&wal).iter().map(|r| r.0).collect();
            assert_eq!(again, expect_lsns, "cut {cut}: second open");
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
    // Both outcomes were exercised: cuts inside frames and cuts at frame starts.
    assert!(torn_cases > 100, "{torn_cases} torn, {clean_cases} clean");
    assert!(clean_cases >= 4, "{torn_cases} torn, {clean_cases} clean");
}

#[test]
fn truncated_at_every_byte_of_the_last_batch_is_refused_naming_the_file() {
    let fx = fixture();
    let scratch = tempfile::tempdir().expect("tempdir");
    for cut in fx.batch.0..=fx.batch.1 {
        let dir = scratch.path().join(format!("cut-{cut}"));
        copy_with(&fx, &dir, &fx.image[..cut as usize]);
        match open_dir(&dir) {
            Err(Error::Corrupt {
                segment,
                offset,
                detail,
            }) => {
                assert_eq!(segment, fx.segment, "cut {cut}");
                assert_eq!(offset, cut, "cut {cut}: the length found");
                assert!(detail.contains("truncated"), "cut {cut}: {detail}");
            }
            Err(e) => panic!("cut {cut}: expected Corrupt, got {e}"),
            Ok(_) => panic!("cut {cut}: opened a log whose listed segment is short"),
        }
        let left = std::fs::read(dir.join(&fx.segment)).expect("segment still there");
        assert_eq!(
            left,
            &fx.image[..cut as usize],
            "cut {cut}: the refused open changed the segment"
        );
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
