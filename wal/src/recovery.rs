//! The read-only half of recovery: walk the segments, find the durable
//! watermark and the end of the valid log, and classify what follows it as a
//! torn tail or as rot. Shared by [`crate::Wal::open`] (which then acts on
//! the verdict) and [`crate::verify`] (which only reports it).

use crate::Lsn;
use crate::format::{
    HeaderCheck, ScanStop, SegmentHeader, nonzero_end, read_watermark, scan_frames,
};

/// Random access to the bytes of the i-th segment (in name order).
pub(crate) trait SegmentBytes {
    fn with_bytes<R>(&self, index: usize, f: impl FnOnce(&[u8]) -> R) -> R;
}

#[derive(Clone, Debug, Default)]
pub(crate) struct SegScan {
    pub header: Option<SegmentHeader>,
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
    Corrupt {
        segment: usize,
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

pub(crate) fn analyze(
    src: &impl SegmentBytes,
    names: &[String],
    snapshot_lsn: Lsn,
    payload_max: usize,
) -> Analysis {
    let n = names.len();
    let headers: Vec<HeaderCheck> = (0..n)
        .map(|i| src.with_bytes(i, SegmentHeader::check))
        .collect();
    let watermark = headers
        .iter()
        .enumerate()
        .filter_map(|(i, h)| match h {
            HeaderCheck::Valid(h) => Some(src.with_bytes(i, |b| read_watermark(b, h.first_lsn))),
            _ => None,
        })
        .max()
        .unwrap_or(0);
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
        return a;
    }
    if let HeaderCheck::Valid(h) = &headers[start] {
        a.last_lsn = h.prev_lsn;
        if h.prev_lsn > snapshot_lsn {
            a.outcome = Outcome::Corrupt {
                segment: start,
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
            scan_frames(b, header.prev_lsn, payload_max, |lsn, _| {
                after_snapshot += u64::from(lsn > snapshot_lsn);
                true
            })
        });
        a.last_lsn = end.last_lsn;
        a.live_end = i + 1;
        let invalid = match &end.stop {
            ScanStop::Invalid(d) => Some(d.clone()),
            _ => None,
        };
        a.scans[i] = Some(SegScan {
            header: Some(header),
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
    let detail_below = |detail: String, last: Lsn| {
        format!("{detail}; the last valid record is lsn {last} but lsn {watermark} was durable")
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
        segment,
        offset,
        detail,
    }
}
