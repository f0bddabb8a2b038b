//! Offline check of a data directory, for `surge wal verify <dir>`.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::format::{
    HeaderCheck, ScanStop, SegmentHeader, decode_snapshot, parse_segment_name, parse_snapshot_name,
    read_watermark, scan_frames,
};
use crate::recovery::{Outcome, SegmentBytes, analyze};
use crate::{Error, Lsn, RECORD_PAYLOAD_MAX_BYTES};

/// One segment file, checked on its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentReport {
    pub name: String,
    /// LSN of its first valid record.
    pub first_lsn: Option<Lsn>,
    pub records: u64,
    /// Offset just past its last valid frame.
    pub valid_bytes: u64,
    /// Offset of the first frame that does not hold, if any.
    pub first_bad_offset: Option<u64>,
    /// Highest valid watermark slot.
    pub watermark: Lsn,
    /// Header problem, or why the frames stop early.
    pub problem: Option<String>,
}

/// One snapshot file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotReport {
    pub name: String,
    pub lsn: Lsn,
    pub bytes: u64,
    /// Why it cannot be loaded, if it cannot.
    pub problem: Option<String>,
}

/// What opening the log would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every frame holds.
    Clean,
    /// Open would cut the log at this point (not acknowledged data).
    TornTail {
        segment: String,
        offset: u64,
        detail: String,
    },
    /// Open would refuse to start.
    Corrupt {
        segment: String,
        offset: u64,
        detail: String,
    },
}

/// The result of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub segments: Vec<SegmentReport>,
    pub snapshots: Vec<SnapshotReport>,
    /// LSN of the snapshot open would load (0 if none).
    pub snapshot_lsn: Lsn,
    pub watermark: Lsn,
    /// The last valid LSN of the log.
    pub last_lsn: Lsn,
    pub verdict: Verdict,
}

impl VerifyReport {
    /// True when the log would open (possibly cutting a torn tail).
    pub fn is_ok(&self) -> bool {
        !matches!(self.verdict, Verdict::Corrupt { .. })
    }
}

struct Maps(Vec<Mmap>);

impl SegmentBytes for Maps {
    fn with_bytes<R>(&self, index: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.0[index][..])
    }
}

/// Walks a data directory without changing it. Takes a shared lock on
/// `<dir>/LOCK` when there is one, so it fails with [`Error::Locked`] while a
/// process has the log open rather than reading it mid-write.
pub fn verify(dir: &Path) -> Result<VerifyReport, Error> {
    let _lock = lock_shared(dir)?;
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io("list data dir", e))? {
        let entry = entry.map_err(|e| Error::io("list data dir", e))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }

    let mut snap_files: Vec<(Lsn, String)> = names
        .iter()
        .filter_map(|n| parse_snapshot_name(n).map(|l| (l, n.clone())))
        .collect();
    snap_files.sort();
    let mut snapshots = Vec::new();
    for (lsn, name) in snap_files {
        let bytes = fs::read(dir.join(&name)).map_err(|e| Error::io("read snapshot", e))?;
        let problem = match decode_snapshot(&bytes) {
            Ok((l, _)) if l == lsn => None,
            Ok((l, _)) => Some(format!("header lsn {l} does not match the name")),
            Err(e) => Some(e),
        };
        snapshots.push(SnapshotReport {
            name,
            lsn,
            bytes: bytes.len() as u64,
            problem,
        });
    }
    let snapshot_lsn = snapshots
        .iter()
        .rev()
        .find(|s| s.problem.is_none())
        .map_or(0, |s| s.lsn);

    let mut seg_files: Vec<(Lsn, String)> = names
        .iter()
        .filter_map(|n| parse_segment_name(n).map(|l| (l, n.clone())))
        .collect();
    seg_files.sort();
    let seg_names: Vec<String> = seg_files.into_iter().map(|s| s.1).collect();
    let mut maps = Vec::with_capacity(seg_names.len());
    for name in &seg_names {
        let file = File::open(dir.join(name)).map_err(|e| Error::io("open segment", e))?;
        // SAFETY: a read-only private view of a segment; the shared lock keeps
        // a surge process (which holds the lock exclusively) from writing it
        // while we read.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("map segment", e))?;
        maps.push(map);
    }
    let maps = Maps(maps);

    let mut segments = Vec::with_capacity(seg_names.len());
    for (i, name) in seg_names.iter().enumerate() {
        let report = maps.with_bytes(i, |b| segment_report(name, b));
        segments.push(report);
    }
    let a = analyze(&maps, &seg_names, snapshot_lsn, RECORD_PAYLOAD_MAX_BYTES);
    let verdict = match a.outcome {
        Outcome::Clean => Verdict::Clean,
        Outcome::Torn {
            segment,
            offset,
            detail,
        } => Verdict::TornTail {
            segment: seg_names[segment].clone(),
            offset,
            detail,
        },
        Outcome::Corrupt {
            segment,
            offset,
            detail,
        } => Verdict::Corrupt {
            segment: seg_names[segment].clone(),
            offset,
            detail,
        },
    };
    Ok(VerifyReport {
        dir: dir.to_path_buf(),
        segments,
        snapshots,
        snapshot_lsn,
        watermark: a.watermark,
        last_lsn: a.last_lsn.max(snapshot_lsn),
        verdict,
    })
}

fn segment_report(name: &str, bytes: &[u8]) -> SegmentReport {
    let mut r = SegmentReport {
        name: name.to_string(),
        first_lsn: None,
        records: 0,
        valid_bytes: 0,
        first_bad_offset: None,
        watermark: 0,
        problem: None,
    };
    let header = match SegmentHeader::check(bytes) {
        HeaderCheck::Valid(h) => h,
        HeaderCheck::Blank => {
            r.problem = Some("blank header (creation never completed)".into());
            return r;
        }
        HeaderCheck::Bad(d) => {
            r.problem = Some(d);
            r.first_bad_offset = Some(0);
            return r;
        }
    };
    let end = scan_frames(bytes, header.prev_lsn, RECORD_PAYLOAD_MAX_BYTES, |_, _| {
        true
    });
    r.first_lsn = end.first_lsn;
    r.records = end.records;
    r.valid_bytes = end.end;
    r.watermark = read_watermark(bytes, header.first_lsn);
    if let ScanStop::Invalid(d) = end.stop {
        r.first_bad_offset = Some(end.end);
        r.problem = Some(d);
    }
    r
}

fn lock_shared(dir: &Path) -> Result<Option<File>, Error> {
    let lock = match OpenOptions::new().read(true).open(dir.join("LOCK")) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("open lock file", e)),
    };
    // SAFETY: flock on a file descriptor we own and keep open; no memory is involved.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Error::Locked
        } else {
            Error::io("lock data dir", e)
        });
    }
    Ok(Some(lock))
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "data dir: {}", self.dir.display())?;
        writeln!(f, "snapshots:")?;
        if self.snapshots.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for s in &self.snapshots {
            let state = s.problem.as_deref().unwrap_or("ok");
            writeln!(f, "  {}  lsn {}  {} bytes  {state}", s.name, s.lsn, s.bytes)?;
        }
        writeln!(f, "segments:")?;
        if self.segments.is_empty() {
            writeln!(f, "  (none)")?;
        }
        for s in &self.segments {
            let first = s
                .first_lsn
                .map_or_else(|| "-".to_string(), |l| l.to_string());
            write!(
                f,
                "  {}  first lsn {first}  records {}  valid bytes {}  watermark {}",
                s.name, s.records, s.valid_bytes, s.watermark
            )?;
            match (&s.first_bad_offset, &s.problem) {
                (Some(at), Some(p)) => writeln!(f, "  first bad offset {at}: {p}")?,
                (None, Some(p)) => writeln!(f, "  {p}")?,
                _ => writeln!(f)?,
            }
        }
        writeln!(
            f,
            "snapshot lsn {}  watermark {}  last lsn {}",
            self.snapshot_lsn, self.watermark, self.last_lsn
        )?;
        match &self.verdict {
            Verdict::Clean => writeln!(f, "verdict: OK"),
            Verdict::TornTail {
                segment,
                offset,
                detail,
            } => writeln!(
                f,
                "verdict: OK with a torn tail (open will cut {segment} at offset {offset}: {detail})"
            ),
            Verdict::Corrupt {
                segment,
                offset,
                detail,
            } => {
                writeln!(f, "verdict: CORRUPT at {segment} offset {offset}: {detail}")
            }
        }
    }
}
