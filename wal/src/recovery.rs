//! The read-only half of recovery: check the files against the MANIFEST
//! ([`survey`]), walk the segments, find the durable watermark and the end of
//! the valid log, and classify what follows it as a torn tail or as rot
//! ([`analyze`]). Shared by [`crate::Wal::open`] (which then acts on the
//! verdict) and [`crate::verify`] (which only reports it).

use std::collections::{BTreeMap, BTreeSet};

use crate::format::{
    FrameChecks, HeaderCheck, ScanStop, SegmentHeader, claims_after, nonzero_end, read_watermark,
    scan_frames, segment_name,
};
use crate::manifest::{MANIFEST_NAME, Manifest};
use crate::{Error, Lsn};

/// Random access to the bytes of the i-th segment (in name order).
pub(crate) trait SegmentBytes {
    fn with_bytes<R>(&self, index: usize, f: impl FnOnce(&[u8]) -> R) -> R;
}

/// Some of the segments of another [`SegmentBytes`], renumbered from 0.
pub(crate) struct Subset<'a, T> {
    pub src: &'a T,
    pub indices: &'a [usize],
}

impl<T: SegmentBytes> SegmentBytes for Subset<'_, T> {
    fn with_bytes<R>(&self, index: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        self.src.with_bytes(self.indices[index], f)
    }
}

/// The highest LSN known durable from outside the log's own segments.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Floor {
    pub lsn: Lsn,
    /// Where the claim comes from, for messages.
    pub source: String,
}

/// What the MANIFEST (or its absence) says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ManifestState {
    Present(Manifest),
    /// No MANIFEST. `legacy`: every file predates them (or there is no file),
    /// so the segment chain alone is checked.
    Absent {
        legacy: bool,
    },
    Damaged(String),
}

/// The data dir's files held against the MANIFEST, before any frame is read.
#[derive(Debug)]
pub(crate) struct Survey {
    pub manifest: ManifestState,
    /// Indices (into the segment files, in name order) of the files that form
    /// the log: the listed ones (or, without a MANIFEST, all of them).
    pub log: Vec<usize>,
    /// Indices of unlisted segment files before the first or after the last
    /// listed one: leftovers of an interrupted creation, retirement or tail
    /// cut, which open removes.
    pub leftovers: Vec<usize>,
    /// Missing, truncated or replaced files, a damaged or lost MANIFEST: open
    /// refuses on the first.
    pub problems: Vec<Error>,
    pub floor: Floor,
    /// Snapshots the MANIFEST lists that are not in the dir.
    pub missing_snapshots: Vec<String>,
}

/// Holds the segment files (`seg_files`, sorted, with their first LSN) and the
/// snapshot files present against the MANIFEST. `newer_snapshot`: the name of
/// a valid snapshot of format version 2 or later, if there is one (such a
/// file is never written without a MANIFEST beside it).
pub(crate) fn survey(
    src: &impl SegmentBytes,
    seg_files: &[(Lsn, String)],
    manifest: Option<Result<Manifest, String>>,
    snapshot_names: &BTreeSet<String>,
    newer_snapshot: Option<&str>,
) -> Survey {
    let all: Vec<usize> = (0..seg_files.len()).collect();
    let mut s = Survey {
        manifest: ManifestState::Absent { legacy: true },
        log: Vec::new(),
        leftovers: Vec::new(),
        problems: Vec::new(),
        floor: Floor::default(),
        missing_snapshots: Vec::new(),
    };
    let m = match manifest {
        None => {
            let newer_segment =
                (0..seg_files.len()).find_map(|i| match src.with_bytes(i, SegmentHeader::check) {
                    HeaderCheck::Valid(h) if h.version >= 2 => Some(seg_files[i].1.as_str()),
                    _ => None,
                });
            if let Some(file) = newer_segment.or(newer_snapshot) {
                s.manifest = ManifestState::Absent { legacy: false };
                s.problems.push(Error::BadManifest {
                    detail: format!(
                        "{MANIFEST_NAME} is missing, but {file} was written by a version that keeps \
                         one, so a lost segment could not be told from a log that ends there; \
                         restore {MANIFEST_NAME}"
                    ),
                });
            }
            s.log = all;
            return s;
        }
        Some(Err(detail)) => {
            s.manifest = ManifestState::Damaged(detail.clone());
            s.problems.push(Error::BadManifest {
                detail: format!("{MANIFEST_NAME} is damaged: {detail}"),
            });
            s.log = all;
            return s;
        }
        Some(Ok(m)) => m,
    };
    s.floor = Floor {
        lsn: m.log_end,
        source: format!("the {MANIFEST_NAME}"),
    };
    let by_lsn: BTreeMap<Lsn, usize> = seg_files
        .iter()
        .enumerate()
        .map(|(i, (lsn, _))| (*lsn, i))
        .collect();
    let listed: BTreeSet<Lsn> = m.segments.iter().map(|e| e.first_lsn).collect();
    for (j, e) in m.segments.iter().enumerate() {
        let file = segment_name(e.first_lsn);
        let Some(&i) = by_lsn.get(&e.first_lsn) else {
            let holds = match m.segments.get(j + 1) {
                Some(next) => format!(
                    "the {MANIFEST_NAME} lists it as holding the log after lsn {} up to lsn {}",
                    e.prev_lsn, next.prev_lsn
                ),
                None => format!(
                    "the {MANIFEST_NAME} lists it as the newest segment, holding the log after lsn {}",
                    e.prev_lsn
                ),
            };
            s.problems.push(Error::MissingSegment {
                file,
                detail: format!("{holds}; restore it, or the records in it are lost"),
            });
            continue;
        };
        s.log.push(i);
        let len = src.with_bytes(i, |b| b.len() as u64);
        if len != e.segment_bytes {
            let what = if len < e.segment_bytes {
                "truncated: "
            } else {
                ""
            };
            s.problems.push(Error::Corrupt {
                segment: file,
                offset: len.min(e.segment_bytes),
                detail: format!(
                    "{what}the file holds {len} bytes, the {MANIFEST_NAME} lists it at {}",
                    e.segment_bytes
                ),
            });
            continue;
        }
        let problem = match src.with_bytes(i, SegmentHeader::check) {
            HeaderCheck::Valid(h) if h.prev_lsn == e.prev_lsn => None,
            HeaderCheck::Valid(h) => Some(format!(
                "replaced: its header says it follows lsn {}, the {MANIFEST_NAME} says lsn {}",
                h.prev_lsn, e.prev_lsn
            )),
            HeaderCheck::Blank => Some(format!(
                "replaced: its header is blank, but the {MANIFEST_NAME} lists it, so it was \
                 complete and synced"
            )),
            HeaderCheck::Bad(d) => Some(d),
        };
        if let Some(detail) = problem {
            s.problems.push(Error::Corrupt {
                segment: file,
                offset: 0,
                detail,
            });
        }
    }
    let (first, last) = match (m.segments.first(), m.segments.last()) {
        (Some(f), Some(l)) => (f.first_lsn, l.first_lsn),
        _ => (Lsn::MAX, 0),
    };
    for (i, (lsn, name)) in seg_files.iter().enumerate() {
        if listed.contains(lsn) {
            continue;
        }
        if *lsn < first || *lsn > last {
            s.leftovers.push(i);
            let w = match src.with_bytes(i, SegmentHeader::check) {
                HeaderCheck::Valid(h) => src.with_bytes(i, |b| read_watermark(b, h.first_lsn)),
                _ => 0,
            };
            if w > s.floor.lsn {
                s.floor = Floor {
                    lsn: w,
                    source: format!(
                        "the watermark in {name}, which the {MANIFEST_NAME} does not list"
                    ),
                };
            }
        } else {
            s.problems.push(Error::Corrupt {
                segment: name.clone(),
                offset: 0,
                detail: format!(
                    "not listed in the {MANIFEST_NAME}, which lists the segments before and after it"
                ),
            });
        }
    }
    s.missing_snapshots = m
        .snapshots
        .iter()
        .map(|&l| crate::format::snapshot_name(l))
        .filter(|n| !snapshot_names.contains(n))
        .collect();
    s.manifest = ManifestState::Present(m);
    s
}

#[derive(Clone, Debug, Default)]
pub(crate) struct SegScan {
    pub last_lsn: Lsn,
    pub records: u64,
    pub records_after_snapshot: u64,
    /// Offset just past the last valid frame.
    pub end: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Clean,
    /// The log ends early at (segment index, offset), above the watermark.
    Torn {
        segment: usize,
        offset: u64,
        detail: String,
    },
    /// Acknowledged data is damaged, or the segments do not form one log.
    /// `segment` is None when there is no segment to blame: the log has none
    /// but something durable says it went further.
    Corrupt {
        segment: Option<usize>,
        offset: u64,
        detail: String,
    },
}

#[derive(Clone, Debug)]
pub(crate) struct Analysis {
    pub watermark: Lsn,
    /// Segments before `start` only hold records covered by the snapshot.
    pub start: usize,
    /// Segments `start..live_end` hold the log; later ones are to be removed.
    pub live_end: usize,
    pub scans: Vec<Option<SegScan>>,
    /// In the last live segment: offset past the last non-zero byte, when
    /// there is something non-zero after its last valid frame.
    pub garbage_end: Option<u64>,
    /// LSN of the last valid record (or the LSN before the log, if none).
    pub last_lsn: Lsn,
    pub outcome: Outcome,
}

/// `floor`: what is known durable from outside these segments (the MANIFEST);
/// the watermark is never below it.
pub(crate) fn analyze(
    src: &impl SegmentBytes,
    names: &[String],
    snapshot_lsn: Lsn,
    payload_max: usize,
    floor: &Floor,
) -> Analysis {
    let n = names.len();
    let headers: Vec<HeaderCheck> = (0..n)
        .map(|i| src.with_bytes(i, SegmentHeader::check))
        .collect();
    let (mut watermark, mut source) = (floor.lsn, floor.source.clone());
    for (i, h) in headers.iter().enumerate() {
        if let HeaderCheck::Valid(h) = h {
            let w = src.with_bytes(i, |b| read_watermark(b, h.first_lsn));
            if w > watermark {
                watermark = w;
                source = format!("the watermark in {}", names[i]);
            }
        }
    }
    // The log proper starts at the newest segment created when everything
    // before it was already covered by the snapshot; older segments are kept
    // only for falling back to an older snapshot.
    let start = (0..n)
        .rev()
        .find(|&i| matches!(&headers[i], HeaderCheck::Valid(h) if h.prev_lsn <= snapshot_lsn))
        .unwrap_or(0);
    let mut a = Analysis {
        watermark,
        start,
        live_end: start,
        scans: vec![None; n],
        garbage_end: None,
        last_lsn: snapshot_lsn,
        outcome: Outcome::Clean,
    };
    if n == 0 {
        if snapshot_lsn < watermark {
            a.outcome = Outcome::Corrupt {
                segment: None,
                offset: 0,
                detail: format!(
                    "no segment holds the log after lsn {snapshot_lsn}, but lsn {watermark} was \
                     durable ({source})"
                ),
            };
        }
        return a;
    }
    // Segments kept for an older snapshot are not read now, but must be whole.
    for (i, h) in headers.iter().enumerate().take(start) {
        let detail = match h {
            HeaderCheck::Valid(_) => continue,
            HeaderCheck::Blank => "segment header is blank".to_string(),
            HeaderCheck::Bad(d) => d.clone(),
        };
        a.outcome = corrupt(i, 0, detail);
        return a;
    }
    if let HeaderCheck::Valid(h) = &headers[start] {
        a.last_lsn = h.prev_lsn;
        if h.prev_lsn > snapshot_lsn {
            a.outcome = Outcome::Corrupt {
                segment: Some(start),
                offset: 0,
                detail: format!(
                    "the log resumes after lsn {} but the snapshot only covers lsn {snapshot_lsn}",
                    h.prev_lsn
                ),
            };
            return a;
        }
    }

    let mut brk: Option<(usize, u64, String)> = None;
    for i in start..n {
        let header = match &headers[i] {
            HeaderCheck::Valid(h) => *h,
            HeaderCheck::Blank | HeaderCheck::Bad(_)
                if i == n - 1 && src.with_bytes(i, data_is_zero) =>
            {
                // The newest segment's creation never completed: its header
                // (and first watermark) were torn or never synced. A segment is
                // synced, header included, before any record goes into it, so
                // with no data in it there is nothing to lose.
                brk = Some(match i.checked_sub(1).filter(|&p| p >= start) {
                    Some(p) => (
                        p,
                        scan_end(&a, p),
                        format!("segment {} was never initialised", names[i]),
                    ),
                    None => (i, 0, "segment was never initialised".to_string()),
                });
                break;
            }
            HeaderCheck::Blank => {
                a.outcome = corrupt(i, 0, "segment header is blank".into());
                return a;
            }
            HeaderCheck::Bad(d) => {
                a.outcome = corrupt(i, 0, d.clone());
                return a;
            }
        };
        if i > start && header.prev_lsn != a.last_lsn {
            let p = i - 1;
            brk = Some((
                p,
                scan_end(&a, p),
                format!(
                    "segment {} follows lsn {} but the log before it ends at lsn {}",
                    names[i], header.prev_lsn, a.last_lsn
                ),
            ));
            break;
        }
        let mut after_snapshot = 0;
        let end = src.with_bytes(i, |b| {
            scan_frames(
                b,
                header.prev_lsn,
                payload_max,
                FrameChecks::Full,
                |lsn, _| {
                    after_snapshot += u64::from(lsn > snapshot_lsn);
                    true
                },
            )
        });
        a.last_lsn = end.last_lsn;
        a.live_end = i + 1;
        if end.claimed > watermark {
            watermark = end.claimed;
            source = format!("a commit mark in {}", names[i]);
        }
        let invalid = match &end.stop {
            ScanStop::Invalid(d) => Some(d.clone()),
            _ => None,
        };
        a.scans[i] = Some(SegScan {
            last_lsn: end.last_lsn,
            records: end.records,
            records_after_snapshot: after_snapshot,
            end: end.end,
        });
        if let Some(detail) = invalid {
            brk = Some((i, end.end, detail));
            break;
        }
    }

    if a.live_end > start {
        let last = a.live_end - 1;
        let end = scan_end(&a, last);
        let garbage = src.with_bytes(last, |b| nonzero_end(b, end));
        if garbage > end {
            a.garbage_end = Some(garbage);
            brk.get_or_insert((
                last,
                end,
                "unreadable bytes after the last valid frame".into(),
            ));
        }
    }
    // Commits after a break: their marks can prove that what the break cut was
    // durable (rot), which the marks before it cannot.
    if let Some((i, offset, _)) = &brk {
        let claimed = src.with_bytes(*i, |b| claims_after(b, *offset, payload_max));
        if claimed > watermark {
            watermark = claimed;
            source = format!("a commit mark after offset {offset} in {}", names[*i]);
        }
    }
    a.watermark = watermark;
    let detail_below = |detail: String, last: Lsn| {
        format!(
            "{detail}; the last valid record is lsn {last} but lsn {watermark} was durable \
             ({source})"
        )
    };
    a.outcome = match brk {
        Some((segment, offset, detail)) if a.last_lsn < watermark => {
            corrupt(segment, offset, detail_below(detail, a.last_lsn))
        }
        Some((segment, offset, detail)) => Outcome::Torn {
            segment,
            offset,
            detail,
        },
        None if a.last_lsn < watermark => {
            let segment = a.live_end.saturating_sub(1).max(start);
            let offset = a.scans[segment].as_ref().map_or(0, |s| s.end);
            corrupt(
                segment,
                offset,
                detail_below("the log ends early".into(), a.last_lsn),
            )
        }
        None => Outcome::Clean,
    };
    a
}

fn data_is_zero(segment: &[u8]) -> bool {
    segment
        .get(crate::SEGMENT_DATA_OFFSET as usize..)
        .is_none_or(|d| d.iter().all(|&b| b == 0))
}

fn scan_end(a: &Analysis, i: usize) -> u64 {
    a.scans[i]
        .as_ref()
        .map_or(crate::SEGMENT_DATA_OFFSET, |s| s.end)
}

fn corrupt(segment: usize, offset: u64, detail: String) -> Outcome {
    Outcome::Corrupt {
        segment: Some(segment),
        offset,
        detail,
    }
}

/// The error open refuses with for an [`Outcome::Corrupt`]. `fell_back`: the
/// newer snapshots that could not be used (damaged or missing), newest first;
/// when the log is too short because of them, the message says so.
pub(crate) fn refusal(
    segment: Option<usize>,
    offset: u64,
    detail: &str,
    names: &[String],
    fell_back: &[String],
) -> Error {
    let detail = if fell_back.is_empty() {
        detail.to_string()
    } else {
        format!(
            "{detail} (newer snapshots damaged or missing: {})",
            fell_back.join(", ")
        )
    };
    match (segment, fell_back.first()) {
        (Some(i), _) => Error::Corrupt {
            segment: names[i].clone(),
            offset,
            detail,
        },
        (None, Some(snapshot)) => Error::Corrupt {
            segment: snapshot.clone(),
            offset: 0,
            detail,
        },
        (None, None) => Error::BadManifest { detail },
    }
}
