//! Offline check of a data directory, for `surge wal verify <dir>`.
#![allow(
    unsafe_code,
    reason = "maps segments read-only and takes a shared flock through libc"
)]

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::format::{
    FrameChecks, HeaderCheck, ScanStop, SegmentHeader, decode_snapshot, is_snapshot_tmp_name,
    parse_segment_name, parse_snapshot_name, read_watermark, scan_frames, snapshot_version,
};
use crate::manifest::{self, MANIFEST_NAME, Manifest};
use crate::recovery::{
    Analysis, ManifestState, Outcome, SegmentBytes, Subset, analyze, refusal, survey,
};
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
    /// Not listed in the MANIFEST: the leftover of an interrupted segment
    /// creation, retirement or tail cut, which open removes.
    pub leftover: bool,
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

/// What the MANIFEST says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManifestReport {
    Present {
        /// Every lsn up to it was durable when the MANIFEST was written.
        log_end: Lsn,
        segments: Vec<String>,
        snapshots: Vec<String>,
    },
    /// No MANIFEST. `legacy`: every file predates them, so open checks the
    /// segment chain alone and writes the first MANIFEST.
    Absent {
        legacy: bool,
    },
    Damaged {
        detail: String,
    },
}

/// A damaged, missing or unexpected file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    pub detail: String,
}

/// What opening the log would do.
#[non_exhaustive]
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
    /// Open would refuse to start: acknowledged data is damaged, or a file
    /// (segment or snapshot) does not match what the MANIFEST says.
    Corrupt {
        segment: String,
        offset: u64,
        detail: String,
    },
    /// Open would refuse to start: a segment the MANIFEST lists is missing.
    MissingSegment { file: String, detail: String },
    /// Open would refuse to start: the MANIFEST is damaged, or missing beside
    /// files that need one.
    BadManifest { detail: String },
}

impl Verdict {
    /// True when open would refuse to start.
    pub fn refuses(&self) -> bool {
        !matches!(self, Verdict::Clean | Verdict::TornTail { .. })
    }

    fn refusal(e: Error) -> Verdict {
        match e {
            Error::MissingSegment { file, detail } => Verdict::MissingSegment { file, detail },
            Error::BadManifest { detail } => Verdict::BadManifest { detail },
            Error::Corrupt {
                segment,
                offset,
                detail,
            } => Verdict::Corrupt {
                segment,
                offset,
                detail,
            },
            other => Verdict::Corrupt {
                segment: String::new(),
                offset: 0,
                detail: other.to_string(),
            },
        }
    }

    fn problem(&self) -> Option<Problem> {
        let (file, detail) = match self {
            Verdict::Clean | Verdict::TornTail { .. } => return None,
            Verdict::Corrupt {
                segment,
                offset,
                detail,
            } => (segment.clone(), format!("at offset {offset}: {detail}")),
            Verdict::MissingSegment { file, detail } => {
                (file.clone(), format!("missing: {detail}"))
            }
            Verdict::BadManifest { detail } => (MANIFEST_NAME.to_string(), detail.clone()),
        };
        Some(Problem { file, detail })
    }
}

/// The result of [`verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub dir: PathBuf,
    pub manifest: ManifestReport,
    pub segments: Vec<SegmentReport>,
    pub snapshots: Vec<SnapshotReport>,
    /// LSN of the snapshot open would load (0 if none).
    pub snapshot_lsn: Lsn,
    pub watermark: Lsn,
    /// The last valid LSN of the log.
    pub last_lsn: Lsn,
    /// What open would do.
    pub verdict: Verdict,
    /// Every damaged, missing or unexpected file, including those open would
    /// recover around (a damaged snapshot with the log behind it still there).
    pub problems: Vec<Problem>,
    /// What open would do, step by step.
    pub recovery: Vec<String>,
}

impl VerifyReport {
    /// True when every file is whole: open would start, at most cutting a torn
    /// tail or removing leftovers of an interrupted step (what a crash leaves).
    /// False on any damaged or missing file, even one open would recover around.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && !self.verdict.refuses()
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
    names.sort();
    let mut problems = Vec::new();
    let mut recovery = Vec::new();

    let temps: Vec<&String> = names
        .iter()
        .filter(|n| is_snapshot_tmp_name(n) || manifest::is_tmp_name(n))
        .collect();
    if !temps.is_empty() {
        recovery.push(format!(
            "remove temp files of an interrupted write: {}",
            join(temps.iter().map(|s| s.as_str()))
        ));
    }
    let manifest = if names.iter().any(|n| n == MANIFEST_NAME) {
        let bytes = fs::read(dir.join(MANIFEST_NAME)).map_err(|e| Error::io("read MANIFEST", e))?;
        Some(Manifest::decode(&bytes))
    } else {
        None
    };

    let mut snap_files: Vec<(Lsn, String)> = names
        .iter()
        .filter_map(|n| parse_snapshot_name(n).map(|l| (l, n.clone())))
        .collect();
    snap_files.sort();
    let snapshot_names: BTreeSet<String> = snap_files.iter().map(|s| s.1.clone()).collect();
    let mut snapshots = Vec::new();
    let mut newer_snapshot = None;
    for (lsn, name) in snap_files {
        let bytes = fs::read(dir.join(&name)).map_err(|e| Error::io("read snapshot", e))?;
        let problem = match decode_snapshot(&bytes) {
            Ok((l, _)) if l == lsn => {
                if snapshot_version(&bytes) >= 2 {
                    newer_snapshot.get_or_insert_with(|| name.clone());
                }
                None
            }
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
    let valid_snapshots: Vec<Lsn> = snapshots
        .iter()
        .filter(|s| s.problem.is_none())
        .map(|s| s.lsn)
        .collect();
    let snapshot_lsn = valid_snapshots.last().copied().unwrap_or(0);

    let mut seg_files: Vec<(Lsn, String)> = names
        .iter()
        .filter_map(|n| parse_segment_name(n).map(|l| (l, n.clone())))
        .collect();
    seg_files.sort();
    let mut maps = Vec::with_capacity(seg_files.len());
    for (_, name) in &seg_files {
        let file = File::open(dir.join(name)).map_err(|e| Error::io("open segment", e))?;
        // SAFETY: Mmap::map is unsafe because the file could change under the map.
        // This is a read-only view of a segment; the shared lock taken above keeps
        // a surge process (which holds the lock exclusively) from writing or
        // truncating it while we read, and nothing here writes through the map.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("map segment", e))?;
        maps.push(map);
    }
    let maps = Maps(maps);
    let mut segments: Vec<SegmentReport> = seg_files
        .iter()
        .enumerate()
        .map(|(i, (_, name))| maps.with_bytes(i, |b| segment_report(name, b)))
        .collect();

    let survey = survey(
        &maps,
        &seg_files,
        manifest,
        &snapshot_names,
        newer_snapshot.as_deref(),
    );
    let manifest = match &survey.manifest {
        ManifestState::Present(m) => ManifestReport::Present {
            log_end: m.log_end,
            segments: m
                .segments
                .iter()
                .map(|e| crate::format::segment_name(e.first_lsn))
                .collect(),
            snapshots: m
                .snapshots
                .iter()
                .map(|&l| crate::format::snapshot_name(l))
                .collect(),
        },
        ManifestState::Absent { legacy } => ManifestReport::Absent { legacy: *legacy },
        ManifestState::Damaged(detail) => ManifestReport::Damaged {
            detail: detail.clone(),
        },
    };
    for &i in &survey.leftovers {
        segments[i].leftover = true;
    }
    for s in &snapshots {
        if let Some(p) = &s.problem {
            let fate = if s.lsn > snapshot_lsn {
                "open would skip it (see below)"
            } else {
                "open would not need it"
            };
            problems.push(Problem {
                file: s.name.clone(),
                detail: format!("damaged: {p}; {fate}"),
            });
        }
    }
    for name in &survey.missing_snapshots {
        problems.push(Problem {
            file: name.clone(),
            detail: format!("missing: the {MANIFEST_NAME} lists it"),
        });
    }
    let mut fell_back: Vec<String> = snapshots
        .iter()
        .filter(|s| s.problem.is_some() && s.lsn > snapshot_lsn)
        .map(|s| s.name.clone())
        .chain(
            survey
                .missing_snapshots
                .iter()
                .filter(|n| parse_snapshot_name(n).is_some_and(|l| l > snapshot_lsn))
                .cloned(),
        )
        .collect();
    fell_back.sort_by(|a, b| b.cmp(a));

    let log_names: Vec<String> = survey.log.iter().map(|&i| seg_files[i].1.clone()).collect();
    let log = Subset {
        src: &maps,
        indices: &survey.log,
    };
    let mut watermark = survey.floor.lsn;
    let mut last_lsn = snapshot_lsn;
    let verdict = if let Some(first) = survey.problems.first() {
        let verdict = Verdict::refusal(clone_refusal(first));
        for e in &survey.problems {
            problems.push(
                Verdict::refusal(clone_refusal(e))
                    .problem()
                    .expect("a refusal is a problem"),
            );
        }
        recovery.push(format!("refuse to start: {first}"));
        verdict
    } else {
        let a = analyze(
            &log,
            &log_names,
            snapshot_lsn,
            RECORD_PAYLOAD_MAX_BYTES,
            &survey.floor,
        );
        watermark = a.watermark;
        last_lsn = a.last_lsn.max(snapshot_lsn);
        let verdict = match &a.outcome {
            Outcome::Clean => Verdict::Clean,
            Outcome::Torn {
                segment,
                offset,
                detail,
            } => Verdict::TornTail {
                segment: log_names[*segment].clone(),
                offset: *offset,
                detail: detail.clone(),
            },
            Outcome::Corrupt {
                segment,
                offset,
                detail,
            } => Verdict::refusal(refusal(*segment, *offset, detail, &log_names, &fell_back)),
        };
        if let Some(p) = verdict.problem() {
            problems.push(p);
        }
        // The segments kept for an older snapshot are only read when the newer
        // one is lost: check now that falling back would work.
        let first_prev = log_names.first().map(|_| {
            log.with_bytes(0, |b| match SegmentHeader::check(b) {
                HeaderCheck::Valid(h) => h.prev_lsn,
                _ => Lsn::MAX,
            })
        });
        let fallback = std::iter::once(0)
            .chain(valid_snapshots.iter().copied())
            .find(|&l| first_prev.is_some_and(|p| l >= p));
        if !verdict.refuses()
            && let Some(older) = fallback.filter(|&l| l < snapshot_lsn)
        {
            let b = analyze(
                &log,
                &log_names,
                older,
                RECORD_PAYLOAD_MAX_BYTES,
                &survey.floor,
            );
            if let Outcome::Corrupt {
                segment,
                offset,
                detail,
            } = &b.outcome
            {
                let file =
                    segment.map_or_else(|| MANIFEST_NAME.to_string(), |i| log_names[i].clone());
                problems.push(Problem {
                    file,
                    detail: format!(
                        "at offset {offset}: {detail}; open does not read it now, but falling \
                         back to the snapshot at lsn {older} would fail"
                    ),
                });
            }
        }
        plan(
            &mut recovery,
            &survey.manifest,
            &fell_back,
            snapshot_lsn,
            &a,
            &verdict,
            &log_names,
        );
        let leftovers: Vec<&str> = survey
            .leftovers
            .iter()
            .map(|&i| seg_files[i].1.as_str())
            .collect();
        if !leftovers.is_empty() && !verdict.refuses() {
            recovery.push(format!(
                "remove segment files the {MANIFEST_NAME} does not list (left by an interrupted \
                 segment creation, retirement or tail cut): {}",
                join(leftovers.into_iter())
            ));
        }
        verdict
    };
    Ok(VerifyReport {
        dir: dir.to_path_buf(),
        manifest,
        segments,
        snapshots,
        snapshot_lsn,
        watermark,
        last_lsn,
        verdict,
        problems,
        recovery,
    })
}

/// The steps open would take after a successful analysis.
fn plan(
    out: &mut Vec<String>,
    manifest: &ManifestState,
    fell_back: &[String],
    snapshot_lsn: Lsn,
    a: &Analysis,
    verdict: &Verdict,
    names: &[String],
) {
    if let Verdict::Corrupt { .. } | Verdict::MissingSegment { .. } | Verdict::BadManifest { .. } =
        verdict
    {
        let p = verdict.problem().expect("a refusal is a problem");
        out.push(format!("refuse to start: {}: {}", p.file, p.detail));
        return;
    }
    if !fell_back.is_empty() {
        out.push(format!(
            "skip snapshots that are damaged or missing: {}",
            fell_back.join(", ")
        ));
    }
    if snapshot_lsn > 0 {
        out.push(format!(
            "load {} (lsn {snapshot_lsn})",
            crate::format::snapshot_name(snapshot_lsn)
        ));
    } else {
        out.push("start from an empty state (no snapshot)".into());
    }
    let records: u64 = a
        .scans
        .iter()
        .skip(a.start)
        .take(a.live_end.saturating_sub(a.start))
        .flatten()
        .map(|s| s.records_after_snapshot)
        .sum();
    out.push(format!(
        "replay {records} records after lsn {snapshot_lsn}, up to lsn {}",
        a.last_lsn.max(snapshot_lsn)
    ));
    if let Verdict::TornTail {
        segment,
        offset,
        detail,
    } = verdict
    {
        let later: Vec<&str> = names.iter().skip(a.live_end).map(String::as_str).collect();
        let mut step = format!(
            "cut the torn tail (no later commit mark claims it: never acknowledged, unless \
             the disk lost or damaged the last commit's synced pages, which no log can tell) \
             at {segment} offset {offset}: {detail}"
        );
        if !later.is_empty() {
            step.push_str(&format!("; remove {}", join(later.into_iter())));
        }
        out.push(step);
    }
    match manifest {
        ManifestState::Absent { legacy: true } => out.push(format!(
            "write the first {MANIFEST_NAME} (the data dir predates them)"
        )),
        _ => out.push(format!("rewrite the {MANIFEST_NAME}")),
    }
}

/// Survey problems are plain values; `Error` is not `Clone` (it can hold an
/// `io::Error`), but the ones a survey yields can be copied field by field.
fn clone_refusal(e: &Error) -> Error {
    match e {
        Error::MissingSegment { file, detail } => Error::MissingSegment {
            file: file.clone(),
            detail: detail.clone(),
        },
        Error::BadManifest { detail } => Error::BadManifest {
            detail: detail.clone(),
        },
        Error::Corrupt {
            segment,
            offset,
            detail,
        } => Error::Corrupt {
            segment: segment.clone(),
            offset: *offset,
            detail: detail.clone(),
        },
        other => Error::BadManifest {
            detail: other.to_string(),
        },
    }
}

fn join<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
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
        leftover: false,
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
    let end = scan_frames(
        bytes,
        header.prev_lsn,
        RECORD_PAYLOAD_MAX_BYTES,
        FrameChecks::Full,
        |_, _| true,
    );
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
    // SAFETY: flock(2) only needs a valid descriptor: `lock` is an open File we own
    // for the whole call (and return, to hold the lock); it takes no pointers, so
    // no memory of ours can be touched; failure is reported in rc.
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
        match &self.manifest {
            ManifestReport::Present {
                log_end,
                segments,
                snapshots,
            } => writeln!(
                f,
                "{MANIFEST_NAME}: ok, lists {} segment(s) and {} snapshot(s), log durable to lsn \
                 {log_end}",
                segments.len(),
                snapshots.len()
            )?,
            ManifestReport::Absent { legacy: true } => writeln!(
                f,
                "{MANIFEST_NAME}: none (the data dir predates them; the segment chain alone is checked)"
            )?,
            ManifestReport::Absent { legacy: false } => writeln!(f, "{MANIFEST_NAME}: MISSING")?,
            ManifestReport::Damaged { detail } => {
                writeln!(f, "{MANIFEST_NAME}: DAMAGED: {detail}")?
            }
        }
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
            if s.leftover {
                write!(f, "  (not in the {MANIFEST_NAME}: leftover)")?;
            }
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
        if !self.problems.is_empty() {
            writeln!(f, "damaged or missing files:")?;
            for p in &self.problems {
                writeln!(f, "  {}: {}", p.file, p.detail)?;
            }
        }
        writeln!(f, "recovery would:")?;
        for step in &self.recovery {
            writeln!(f, "  - {step}")?;
        }
        match &self.verdict {
            Verdict::Clean if self.is_ok() => writeln!(f, "verdict: OK"),
            Verdict::TornTail {
                segment,
                offset,
                detail,
            } if self.is_ok() => writeln!(
                f,
                "verdict: OK with a torn tail (open will cut {segment} at offset {offset}: {detail})"
            ),
            Verdict::Clean | Verdict::TornTail { .. } => writeln!(
                f,
                "verdict: DAMAGED ({} file(s) damaged or missing; open would recover around them)",
                self.problems.len()
            ),
            Verdict::Corrupt {
                segment,
                offset,
                detail,
            } => {
                writeln!(f, "verdict: CORRUPT at {segment} offset {offset}: {detail}")
            }
            Verdict::MissingSegment { file, detail } => {
                writeln!(f, "verdict: MISSING {file}: {detail}")
            }
            Verdict::BadManifest { detail } => writeln!(f, "verdict: BAD MANIFEST: {detail}"),
        }
    }
}
