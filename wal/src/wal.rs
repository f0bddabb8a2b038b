//! The log itself: open/recover, append, commit, replay, snapshots.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use crate::format::{
    self, FrameChecks, HeaderCheck, SegmentHeader, WATERMARK_SLOT_OFFSETS, align_up,
    decode_snapshot, encode_frame_header, encode_watermark, is_snapshot_tmp_name,
    parse_segment_name, parse_snapshot_name, read_watermark, scan_frames, segment_name,
    snapshot_name, snapshot_version,
};
use crate::manifest::{self, MANIFEST_NAME, Manifest, SegmentEntry};
use crate::recovery::{Outcome, SegmentBytes, Subset, analyze, refusal, survey};
use crate::storage::{SegmentId, SegmentSyncer, StagedFile, Storage};
use crate::{
    Error, FORMAT_VERSION, FRAME_HEADER_BYTES, Lsn, PAGE_BYTES, RECORD_PAYLOAD_MAX_BYTES,
    SEGMENT_DATA_OFFSET, SNAPSHOT_BODY_MAX_BYTES, WalConfig,
};

/// A tail cut at open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TornTail {
    /// Segment where the valid log ends.
    pub segment: String,
    /// Offset in it where the cut starts.
    pub offset: u64,
    /// Non-zero bytes zeroed in that segment.
    pub bytes_cut: u64,
    /// Later (or empty) segments removed.
    pub removed_segments: Vec<String>,
    /// Why the log ends there.
    pub detail: String,
}

/// What [`Wal::open`] found and did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// LSN of the snapshot loaded (0 if none).
    pub snapshot_lsn: Lsn,
    /// Segments holding the log after recovery.
    pub segments: usize,
    /// Records after the snapshot, to be replayed.
    pub records: u64,
    /// The last LSN (of the log, or of the snapshot if the log ends before it).
    pub last_lsn: Lsn,
    /// The durable watermark found on disk.
    pub watermark: Lsn,
    pub torn_tail: Option<TornTail>,
    /// Newer snapshots that were damaged, or listed in the MANIFEST and
    /// missing, and so skipped (newest first).
    pub fell_back_snapshots: Vec<String>,
    /// Files removed as leftovers: temp files (a snapshot or MANIFEST being
    /// written), then segment files the MANIFEST does not list (a segment
    /// creation, retirement or tail cut that a crash interrupted).
    pub leftovers_removed: Vec<String>,
}

/// The result of [`Wal::open`] besides the log: the snapshot to start from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    pub snapshot: Option<(Lsn, Vec<u8>)>,
    pub report: RecoveryReport,
}

/// Counters for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    pub bytes_written: u64,
    pub records_appended: u64,
    pub commits: u64,
    pub segments: usize,
    pub last_commit_latency_us: u64,
    pub snapshot_lsn: Lsn,
    pub last_lsn: Lsn,
    pub durable_lsn: Lsn,
}

#[derive(Debug)]
struct Segment {
    // (name, first_lsn, prev_lsn and len_bytes are what the MANIFEST lists.)
    name: String,
    /// None for a segment kept only for an older snapshot (not mapped).
    handle: Option<SegmentId>,
    /// From the name.
    first_lsn: Lsn,
    /// From the header; the LSN appended just before this segment.
    prev_lsn: Lsn,
    /// Last record's LSN (for an unmapped segment: an upper bound).
    last_lsn: Lsn,
    records: u64,
    /// Where the next frame goes.
    tail: u64,
    len_bytes: u64,
    /// Lowest offset written since the last sync.
    dirty_from: Option<u64>,
    watermark_written: Lsn,
    next_slot: usize,
    /// Commits since the header slots last claimed a watermark.
    commits_since_header_claim: u32,
}

impl Segment {
    fn entry(&self) -> SegmentEntry {
        SegmentEntry {
            first_lsn: self.first_lsn,
            prev_lsn: self.prev_lsn,
            segment_bytes: self.len_bytes,
        }
    }
}

/// A snapshot file built in place, in chunks of [`SnapshotImage::CHUNK_BYTES`]:
/// room for the header, then the body, appended ([`SnapshotImage::append`]) by
/// whoever encodes the state. [`SnapshotJob::run`] writes the header into that
/// room and the file from the chunks, and hands them back
/// ([`WrittenSnapshot::take_buffers`]) so the next snapshot is encoded into memory
/// that is already mapped. A snapshot of a large state is hundreds of MB: one
/// growing buffer would be copied at each doubling, and every fresh page costs the
/// kernel a zeroing; chunks are never moved, and reused they are never fresh.
pub struct SnapshotImage {
    /// Full chunks, in order; each has exactly `CHUNK_BYTES` of capacity.
    full: Vec<Vec<u8>>,
    /// The chunk being filled, after the full ones.
    current: Vec<u8>,
    /// Empty chunks to fill next.
    spare: Vec<Vec<u8>>,
}

impl SnapshotImage {
    pub const CHUNK_BYTES: usize = 4 << 20;

    /// An empty body in the memory of `buffers` (from [`WrittenSnapshot::take_buffers`]
    /// or [`SnapshotImage::into_buffers`]): their contents are dropped, their
    /// capacity kept.
    pub fn new(mut buffers: Vec<Vec<u8>>) -> Self {
        buffers.retain(|b| b.capacity() == Self::CHUNK_BYTES);
        buffers.iter_mut().for_each(Vec::clear);
        let current = buffers
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(Self::CHUNK_BYTES));
        let mut image = Self {
            full: Vec::new(),
            current,
            spare: buffers,
        };
        image.append(&[0; format::SNAPSHOT_HEADER_BYTES]);
        image
    }

    /// An image of a body already encoded elsewhere (copied).
    pub fn from_body(body: &[u8]) -> Self {
        let mut image = Self::new(Vec::new());
        image.append(body);
        image
    }

    /// The body's length in bytes.
    pub fn body_len(&self) -> usize {
        self.full.len() * Self::CHUNK_BYTES + self.current.len() - format::SNAPSHOT_HEADER_BYTES
    }

    /// The file's chunks in order: the header's room, then the body.
    fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        self.full
            .iter()
            .map(Vec::as_slice)
            .chain(std::iter::once(self.current.as_slice()))
    }

    /// The body, in pieces.
    pub fn body_parts(&self) -> impl Iterator<Item = &[u8]> {
        self.chunks().enumerate().map(|(i, chunk)| {
            let from = if i == 0 {
                format::SNAPSHOT_HEADER_BYTES
            } else {
                0
            };
            &chunk[from..]
        })
    }

    /// Overwrites body bytes from `body_offset` with `bytes`: what was written
    /// before its value was known (a length, say). Panics past the end.
    pub fn patch(&mut self, body_offset: usize, mut bytes: &[u8]) {
        let mut at = format::SNAPSHOT_HEADER_BYTES + body_offset;
        for chunk in self
            .full
            .iter_mut()
            .chain(std::iter::once(&mut self.current))
        {
            if bytes.is_empty() {
                return;
            }
            if at >= chunk.len() {
                at -= chunk.len();
                continue;
            }
            let n = bytes.len().min(chunk.len() - at);
            chunk[at..at + n].copy_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            at = 0;
        }
        assert!(bytes.is_empty(), "patch past the end of the snapshot image");
    }

    /// Appends to the body. Encoders append a field at a time: the common case,
    /// room in the current chunk, is kept as small as a `Vec`'s own append, to
    /// inline.
    #[inline]
    pub fn append(&mut self, bytes: &[u8]) {
        if Self::CHUNK_BYTES - self.current.len() >= bytes.len() {
            self.current.extend_from_slice(bytes);
        } else {
            self.append_across_chunks(bytes);
        }
    }

    #[cold]
    fn append_across_chunks(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = Self::CHUNK_BYTES - self.current.len();
            if room == 0 {
                let next = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(Self::CHUNK_BYTES));
                self.full.push(std::mem::replace(&mut self.current, next));
                continue;
            }
            let n = room.min(bytes.len());
            self.current.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
    }

    /// Writes the header into its room, for the body after it.
    fn frame(&mut self, lsn: Lsn) {
        let body_len = self.body_len();
        let crc = self.body_parts().fold(0, crc32c::crc32c_append);
        let header = format::snapshot_header(lsn, body_len as u64, crc);
        let first = self.full.first_mut().unwrap_or(&mut self.current);
        first[..format::SNAPSHOT_HEADER_BYTES].copy_from_slice(&header);
    }

    /// The chunks this image filled, for [`SnapshotImage::new`]; spare ones it did
    /// not need are freed, so what is kept follows the newest snapshot's size
    /// down as well as up.
    pub fn into_buffers(mut self) -> Vec<Vec<u8>> {
        self.full.push(self.current);
        self.full
    }
}

/// Writes a snapshot's temp file and fsyncs it; safe to run on another thread.
pub struct SnapshotJob {
    lsn: Lsn,
    name: String,
    tmp: String,
    image: SnapshotImage,
    writer: Box<dyn crate::storage::FileWriter>,
}

/// A snapshot temp file that is on disk, waiting for [`Wal::finish_snapshot`].
pub struct WrittenSnapshot {
    lsn: Lsn,
    name: String,
    tmp: String,
    buffers: Vec<Vec<u8>>,
}

impl std::fmt::Debug for WrittenSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WrittenSnapshot")
            .field("lsn", &self.lsn)
            .field("name", &self.name)
            .field("tmp", &self.tmp)
            .field("buffers", &self.buffers.len())
            .finish()
    }
}

impl WrittenSnapshot {
    /// The chunks the file was written from, for [`SnapshotImage::new`] (none
    /// once taken).
    pub fn take_buffers(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.buffers)
    }
}

impl SnapshotJob {
    pub fn lsn(&self) -> Lsn {
        self.lsn
    }

    /// Frame the body (header, checksum) in place, write the temp file and fsync it.
    /// A failed write removes what it wrote: on a full disk, the part written would
    /// otherwise hold the space an operator frees until the next open, and the next
    /// roll would fail for it again.
    pub fn run(mut self) -> Result<WrittenSnapshot, Error> {
        self.image.frame(self.lsn);
        let parts: Vec<&[u8]> = self.image.chunks().collect();
        if let Err(e) = self.writer.write_synced(&self.tmp, &parts) {
            // Best effort: a temp file left anyway is removed at the next open.
            let _ = self.writer.remove(&self.tmp);
            return Err(Error::io("write snapshot", e));
        }
        Ok(WrittenSnapshot {
            lsn: self.lsn,
            name: self.name,
            tmp: self.tmp,
            buffers: self.image.into_buffers(),
        })
    }
}

/// One range of one segment to make durable.
struct SyncRange {
    syncer: Arc<dyn SegmentSyncer>,
    first_lsn: Lsn,
    from: u64,
    to: u64,
}

/// What makes a new segment part of the log, after everything before it is
/// durable: its header synced, the prepared file renamed to the segment's name,
/// that name and then the MANIFEST that lists it made durable. Built by
/// [`Wal::roll`] on the appending thread, run with the next [`CommitJob`] on the
/// thread that syncs, so the appending thread never waits for a roll's fsyncs
/// nor changes the directory.
struct RollStep {
    /// First LSN of the new segment.
    first_lsn: Lsn,
    header: Arc<dyn SegmentSyncer>,
    files: Box<dyn crate::storage::FileWriter>,
    /// The prepared file's name and the segment's, when the roll took a prepared
    /// file ([`Storage::prepared_name`]).
    rename: Option<(String, String)>,
    /// The MANIFEST listing the new segment, written (not synced) by the roll.
    manifest: StagedFile,
}

impl RollStep {
    fn run(&self) -> Result<(), Error> {
        self.header
            .sync_range(0, SEGMENT_DATA_OFFSET)
            .map_err(|e| Error::io("fsync new segment", e))?;
        if let Some((from, to)) = &self.rename {
            self.files
                .rename(from, to)
                .map_err(|e| Error::io("name new segment", e))?;
        }
        // The segment's name before a MANIFEST that lists it.
        self.files
            .sync_dir()
            .map_err(|e| Error::io("fsync data dir", e))?;
        install_manifest(self.files.as_ref(), &self.manifest)
    }
}

/// Makes a MANIFEST temp file durable and renames it into place, durably.
fn install_manifest(
    files: &dyn crate::storage::FileWriter,
    staged: &StagedFile,
) -> Result<(), Error> {
    files
        .sync_staged(staged)
        .map_err(|e| Error::io("write MANIFEST", e))?;
    files
        .rename(&staged.name, MANIFEST_NAME)
        .and_then(|()| files.sync_dir())
        .map_err(|e| Error::io("install MANIFEST", e))
}

/// What makes a published snapshot part of the log: its rename from the temp
/// name it was written under, made durable, then the MANIFEST that lists it and
/// no longer lists what it retires. The retired files are removed once the
/// commit job carrying this step has finished. Built by
/// [`Wal::publish_snapshot`] on the appending thread, which changes nothing in
/// the directory itself.
struct PublishStep {
    files: Box<dyn crate::storage::FileWriter>,
    /// The snapshot's temp name and its name.
    rename: (String, String),
    /// `None`: the MANIFEST could not be written (a full disk); the snapshot is
    /// published without it and nothing is retired.
    manifest: Option<StagedFile>,
}

impl PublishStep {
    fn run(&self) -> Result<(), Error> {
        let (from, to) = &self.rename;
        self.files
            .rename(from, to)
            .map_err(|e| Error::io("rename snapshot", e))?;
        self.files
            .sync_dir()
            .map_err(|e| Error::io("fsync data dir", e))?;
        match &self.manifest {
            Some(staged) => install_manifest(self.files.as_ref(), staged),
            None => Ok(()),
        }
    }
}

/// A change of the log's directory that the commit thread makes durable, in the
/// order the appending thread made it: every MANIFEST is computed and written
/// (to a temp file of its own) by the appending thread, and renamed into place
/// by the commit thread in that same order, so a later one never lands first.
enum Step {
    Roll(RollStep),
    Publish(PublishStep),
}

/// Files a published snapshot retires, removed once the MANIFEST without them
/// is durable (the commit job carrying its [`PublishStep`] has finished).
struct Retired {
    /// Snapshot files below this LSN go.
    snapshots_below: Lsn,
    segments: Vec<Segment>,
}

/// The durable half of a group commit ([`Wal::begin_commit`]): safe to run on
/// another thread. Jobs begun one after another may be merged and run once.
pub struct CommitJob {
    target: Lsn,
    ranges: Vec<SyncRange>,
    /// Directory steps since the last job, in the order they were made. A roll
    /// runs once the ranges of the segments before the new one are durable.
    steps: Vec<Step>,
}

impl CommitJob {
    /// Every record up to this LSN is durable when the job has run.
    pub fn target(&self) -> Lsn {
        self.target
    }

    /// Folds a later job into this one: one sync then covers both.
    pub fn merge(&mut self, later: CommitJob) {
        assert!(later.target >= self.target, "jobs merge in order");
        self.target = later.target;
        for range in later.ranges {
            match self
                .ranges
                .iter_mut()
                .find(|r| r.first_lsn == range.first_lsn)
            {
                Some(r) => {
                    r.from = r.from.min(range.from);
                    r.to = r.to.max(range.to);
                }
                None => self.ranges.push(range),
            }
        }
        self.ranges.sort_by_key(|r| r.first_lsn);
        self.steps.extend(later.steps);
    }

    /// Makes the ranges durable, older segments first, and runs the directory
    /// steps in order; each new segment is listed once everything before it is
    /// durable (so the MANIFEST's claim that the log reaches the new segment's
    /// start is true when it lands).
    pub fn run(&self) -> Result<(), Error> {
        let mut ranges = self.ranges.iter().peekable();
        let sync = |range: &SyncRange| {
            range
                .syncer
                .sync_range(range.from, range.to - range.from)
                .map_err(|e| Error::io("sync", e))
        };
        for step in &self.steps {
            match step {
                Step::Roll(roll) => {
                    while let Some(range) = ranges.next_if(|r| r.first_lsn < roll.first_lsn) {
                        sync(range)?;
                    }
                    roll.run()?;
                }
                Step::Publish(publish) => publish.run()?,
            }
        }
        ranges.try_for_each(sync)
    }
}

/// The write-ahead log over a [`Storage`].
pub struct Wal<S: Storage> {
    storage: S,
    config: WalConfig,
    payload_max: usize,
    /// Oldest first; the last one, if mapped, is the one appended to.
    segments: Vec<Segment>,
    last_lsn: Lsn,
    durable_lsn: Lsn,
    /// The last LSN handed to a [`CommitJob`] (durable once that job finishes).
    commit_begun_lsn: Lsn,
    /// Sync handles of the segments recently committed to, by first LSN.
    syncers: Vec<(Lsn, Arc<dyn SegmentSyncer>)>,
    poisoned: bool,
    snapshot_lsn: Lsn,
    /// LSNs of the valid snapshots on disk, ascending.
    snapshots: Vec<Lsn>,
    stats: WalStats,
    /// Frames appended to the active segment but not yet written to it: a batch
    /// goes to the file in one write at its commit (or roll), not one per frame
    /// (ARCHITECTURE.md, "The write path"). They start at `staged_at` and end at
    /// the segment's tail.
    staged: Vec<u8>,
    staged_at: u64,
    /// The commit mark that ended the last commit job, while an append may still
    /// take its place ([`Wal::continue_commit`]): the first LSN of its segment,
    /// where it starts and where it ends.
    last_mark: Option<(Lsn, u64, u64)>,
    /// Records after this LSN are kept whatever the snapshots allow: a replica has
    /// not taken them yet (`Lsn::MAX`: no replica holds anything back).
    retain_after: Lsn,
    /// Directory steps not yet handed to a commit job ([`Wal::begin_commit`]
    /// takes them), and the files their snapshot publications retire.
    steps_pending: Vec<Step>,
    retired_pending: Vec<Retired>,
    /// Targets of the commit jobs that carry steps and have not finished, with
    /// the files to remove when each has.
    steps_unfinished: Vec<(Lsn, Vec<Retired>)>,
}

/// The header slots claim the watermark at least every this many commits (each
/// commit's mark claims it in the stream).
pub const HEADER_CLAIM_EVERY_COMMITS: u32 = 16;

/// Staged frames are written out once they reach this size, so a huge batch does
/// not grow the buffer without bound.
const STAGED_BYTES_MAX: usize = 256 << 10;

struct Opened<'a, S> {
    storage: &'a S,
    handles: &'a [SegmentId],
}

impl<S: Storage> SegmentBytes for Opened<'_, S> {
    fn with_bytes<R>(&self, index: usize, f: impl FnOnce(&[u8]) -> R) -> R {
        self.storage.with_segment(self.handles[index], f)
    }
}

const ZERO_CHUNK_BYTES: usize = 64 << 10;

impl<S: Storage> Wal<S> {
    /// Opens the log: loads the newest valid snapshot (falling back to an
    /// older one when the newest is damaged), validates every frame, cuts a
    /// torn tail and refuses to start on rot below the durable watermark.
    pub fn open(mut storage: S, config: WalConfig) -> Result<(Wal<S>, Recovery), Error> {
        config.validate()?;
        let payload_max = config.record_payload_max_bytes();
        let names = storage.list().map_err(|e| Error::io("list data dir", e))?;
        let mut temp_removed = Vec::new();
        for name in names
            .iter()
            .filter(|n| is_snapshot_tmp_name(n) || manifest::is_tmp_name(n))
        {
            storage
                .remove(name)
                .map_err(|e| Error::io("remove temp file", e))?;
            temp_removed.push(name.clone());
        }
        let manifest = if names.iter().any(|n| n == MANIFEST_NAME) {
            let bytes = storage
                .read_file(MANIFEST_NAME)
                .map_err(|e| Error::io("read MANIFEST", e))?;
            Some(Manifest::decode(&bytes))
        } else {
            None
        };

        // Snapshots, newest first; the first valid one is used.
        let mut snap_files: Vec<(Lsn, &String)> = names
            .iter()
            .filter_map(|n| parse_snapshot_name(n).map(|l| (l, n)))
            .collect();
        snap_files.sort();
        let snapshot_names: BTreeSet<String> = snap_files.iter().map(|s| s.1.clone()).collect();
        let mut snapshots = Vec::new();
        let mut snapshot: Option<(Lsn, Vec<u8>)> = None;
        let mut fell_back = Vec::new();
        let mut newer_snapshot = None;
        for &(lsn, name) in snap_files.iter().rev() {
            let bytes = storage
                .read_file(name)
                .map_err(|e| Error::io("read snapshot", e))?;
            match decode_snapshot(&bytes) {
                Ok((l, body)) if l == lsn => {
                    if snapshot_version(&bytes) >= 2 {
                        newer_snapshot.get_or_insert_with(|| name.clone());
                    }
                    snapshots.push(lsn);
                    if snapshot.is_none() {
                        snapshot = Some((lsn, body.to_vec()));
                    }
                }
                _ if snapshot.is_none() => fell_back.push(name.clone()),
                _ => {}
            }
        }
        snapshots.reverse();
        let snapshot_lsn = snapshot.as_ref().map_or(0, |s| s.0);

        // Segments, in LSN order.
        let mut seg_files: Vec<(Lsn, String)> = names
            .iter()
            .filter_map(|n| parse_segment_name(n).map(|l| (l, n.clone())))
            .collect();
        seg_files.sort();
        let mut handles = Vec::with_capacity(seg_files.len());
        for (_, name) in &seg_files {
            handles.push(
                storage
                    .open_segment(name)
                    .map_err(|e| Error::io("open segment", e))?,
            );
        }
        let opened = Opened {
            storage: &storage,
            handles: &handles,
        };
        let listed_before = manifest.clone().and_then(Result::ok);
        let survey = survey(
            &opened,
            &seg_files,
            manifest,
            &snapshot_names,
            newer_snapshot.as_deref(),
        );
        if let Some(problem) = survey.problems.into_iter().next() {
            return Err(problem);
        }
        // A snapshot the MANIFEST lists that is gone counts as one that is damaged.
        fell_back.extend(
            survey
                .missing_snapshots
                .iter()
                .filter(|n| parse_snapshot_name(n).is_some_and(|l| l > snapshot_lsn))
                .cloned(),
        );
        fell_back.sort_by(|a, b| b.cmp(a));

        // From here on, only the segments that form the log.
        let log = &survey.log;
        let seg_names: Vec<String> = log.iter().map(|&i| seg_files[i].1.clone()).collect();
        let log_handles: Vec<SegmentId> = log.iter().map(|&i| handles[i]).collect();
        let a = analyze(
            &Subset {
                src: &opened,
                indices: log,
            },
            &seg_names,
            snapshot_lsn,
            RECORD_PAYLOAD_MAX_BYTES,
            &survey.floor,
        );
        let headers: Vec<Option<SegmentHeader>> = log_handles
            .iter()
            .map(|&h| match storage.with_segment(h, SegmentHeader::check) {
                HeaderCheck::Valid(header) => Some(header),
                _ => None,
            })
            .collect();
        let (torn_at, detail) = match &a.outcome {
            Outcome::Corrupt {
                segment,
                offset,
                detail,
            } => return Err(refusal(*segment, *offset, detail, &seg_names, &fell_back)),
            Outcome::Torn {
                segment,
                offset,
                detail,
            } => (Some((*segment, *offset)), detail.clone()),
            Outcome::Clean => (None, String::new()),
        };

        // Files to remove once the new MANIFEST no longer lists them: the cut
        // tail, segments left empty, and leftovers nobody lists.
        let mut removed = Vec::new();
        let mut live_end = a.live_end;
        let mut bytes_cut = 0;
        for i in (live_end..seg_names.len()).rev() {
            storage.close_segment(log_handles[i]);
            removed.push(seg_names[i].clone());
        }
        if let (Some(garbage_end), Some(last)) = (a.garbage_end, live_end.checked_sub(1)) {
            let end = a.scans[last]
                .as_ref()
                .map_or(SEGMENT_DATA_OFFSET, |s| s.end);
            zero_range(&mut storage, log_handles[last], end, garbage_end)?;
            bytes_cut = garbage_end - end;
        }
        // A segment left without records is dropped: the next append rolls to
        // a fresh segment named after its real first record.
        while live_end > a.start
            && a.scans[live_end - 1]
                .as_ref()
                .is_none_or(|s| s.records == 0)
        {
            live_end -= 1;
            storage.close_segment(log_handles[live_end]);
            removed.push(seg_names[live_end].clone());
        }
        let leftovers: Vec<String> = survey
            .leftovers
            .iter()
            .map(|&i| {
                storage.close_segment(handles[i]);
                seg_files[i].1.clone()
            })
            .collect();
        let torn_tail = match torn_at {
            Some((segment, offset)) => Some(TornTail {
                segment: seg_names[segment].clone(),
                offset,
                bytes_cut,
                removed_segments: removed.clone(),
                detail,
            }),
            None if !removed.is_empty() => Some(TornTail {
                segment: removed[0].clone(),
                offset: SEGMENT_DATA_OFFSET,
                bytes_cut,
                removed_segments: removed.clone(),
                detail: "newest segment holds no record".into(),
            }),
            None => None,
        };

        let mut segments = Vec::with_capacity(live_end);
        for i in 0..live_end {
            let header = headers[i].expect("analyze refuses a log segment with a bad header");
            let h = log_handles[i];
            if i < a.start {
                // Kept only for an older snapshot; every record in it is at or
                // below the lsn the next segment follows.
                storage.close_segment(h);
                let next = headers[i + 1].expect("the segment after a kept one has a valid header");
                segments.push(Segment {
                    name: seg_names[i].clone(),
                    handle: None,
                    first_lsn: header.first_lsn,
                    prev_lsn: header.prev_lsn,
                    last_lsn: next.prev_lsn,
                    records: 0,
                    tail: 0,
                    len_bytes: header.segment_bytes,
                    dirty_from: None,
                    watermark_written: 0,
                    next_slot: 0,
                    commits_since_header_claim: 0,
                });
                continue;
            }
            let scan = a.scans[i].as_ref().expect("live segments were scanned");
            segments.push(Segment {
                name: seg_names[i].clone(),
                handle: Some(h),
                first_lsn: header.first_lsn,
                prev_lsn: header.prev_lsn,
                last_lsn: if scan.records > 0 {
                    scan.last_lsn
                } else {
                    header.prev_lsn
                },
                records: scan.records,
                tail: scan.end,
                len_bytes: header.segment_bytes,
                dirty_from: None,
                watermark_written: storage.with_segment(h, |b| read_watermark(b, header.first_lsn)),
                next_slot: 0,
                commits_since_header_claim: 0,
            });
        }

        // Appends resume on a fresh page, so that no page holding records
        // that are now part of the log is ever rewritten.
        if let Some(seg) = segments.last_mut().filter(|s| s.handle.is_some())
            && let Some(pad) = padding_len(seg)
        {
            let frame = format::encode_padding(pad, 0);
            let h = seg.handle.expect("filtered on a handle");
            storage
                .write_segment(h, seg.tail, &frame)
                .map_err(|e| Error::io("write padding", e))?;
            seg.dirty_from.get_or_insert(seg.tail);
            seg.tail += frame.len() as u64;
        }
        // A process that was killed (not a power loss) leaves its last writes
        // in the page cache only: make them durable before a watermark can
        // claim them.
        for seg in &mut segments {
            if let Some(h) = seg.handle {
                storage
                    .sync_segment_range(h, 0, seg.tail)
                    .map_err(|e| Error::io("msync recovered segment", e))?;
                seg.dirty_from = None;
            }
        }

        let log_last = segments
            .iter()
            .filter(|s| s.handle.is_some())
            .map(|s| s.last_lsn)
            .max()
            .unwrap_or(0);
        let last_lsn = log_last.max(snapshot_lsn);

        // The log as recovered is durable: list it (this also writes the first
        // MANIFEST of a data dir from before them), then remove what it no
        // longer lists.
        let manifest = Manifest {
            log_end: last_lsn,
            segments: segments.iter().map(Segment::entry).collect(),
            snapshots: snapshots.clone(),
        };
        match manifest::publish(&mut storage, &manifest) {
            // A full disk, and the MANIFEST there lists these very files (its log
            // end is older: a lower bound, still true): the start goes on without
            // rewriting it, and the next roll writes the new one. Refusing to
            // start would stop the reads too, over a file that says nothing new.
            Err(e)
                if crate::is_no_space(&e)
                    && listed_before
                        .as_ref()
                        .is_some_and(|before| before.lists_as(&manifest)) => {}
            published => published.map_err(|e| Error::io("write MANIFEST", e))?,
        }
        for name in removed.iter().chain(&leftovers) {
            storage
                .remove(name)
                .map_err(|e| Error::io("remove segment", e))?;
        }
        if !removed.is_empty() || !leftovers.is_empty() {
            storage
                .sync_dir()
                .map_err(|e| Error::io("fsync data dir", e))?;
        }

        let records = (a.start..live_end)
            .filter_map(|i| a.scans[i].as_ref())
            .map(|s| s.records_after_snapshot)
            .sum();
        let report = RecoveryReport {
            snapshot_lsn,
            segments: segments.iter().filter(|s| s.handle.is_some()).count(),
            records,
            last_lsn,
            watermark: a.watermark,
            torn_tail,
            fell_back_snapshots: fell_back,
            leftovers_removed: temp_removed.into_iter().chain(leftovers).collect(),
        };
        let stats = WalStats {
            segments: segments.len(),
            snapshot_lsn,
            last_lsn,
            durable_lsn: last_lsn,
            ..WalStats::default()
        };
        let wal = Wal {
            storage,
            config,
            payload_max,
            segments,
            last_lsn,
            durable_lsn: last_lsn,
            commit_begun_lsn: last_lsn,
            syncers: Vec::new(),
            poisoned: false,
            snapshot_lsn,
            snapshots,
            stats,
            staged: Vec::new(),
            staged_at: 0,
            last_mark: None,
            retain_after: Lsn::MAX,
            steps_pending: Vec::new(),
            retired_pending: Vec::new(),
            steps_unfinished: Vec::new(),
        };
        Ok((wal, Recovery { snapshot, report }))
    }

    /// Visits every record with lsn > `after`, in LSN order, reading the
    /// mapped segments. Each frame's structure (length, bounds, LSN order) is
    /// checked again as it is read back, and the end must be where the log ends;
    /// not its checksum: every mapped segment's frames were checked at open (a
    /// segment kept only for an older snapshot is not mapped) or written by this
    /// log since. Computing it twice was 13 % of a start-up's replay (BENCHMARKS.md,
    /// 2026-12-02).
    pub fn replay(
        &self,
        after: Lsn,
        mut f: impl FnMut(Lsn, &[u8]) -> Result<(), String>,
    ) -> Result<u64, Error> {
        let mut count = 0;
        let active = self.segments.len().saturating_sub(1);
        for (i, seg) in self.segments.iter().enumerate() {
            let Some(h) = seg.handle else { continue };
            if seg.records == 0 || seg.last_lsn <= after {
                continue;
            }
            let mut failed = None;
            let end = self.storage.with_segment(h, |mapped| {
                // Frames appended since the last commit are still staged: read
                // them as they will be written.
                let with_staged;
                let bytes = if i == active && !self.staged.is_empty() {
                    let at = self.staged_at as usize;
                    let mut copy = mapped.to_vec();
                    copy[at..at + self.staged.len()].copy_from_slice(&self.staged);
                    with_staged = copy;
                    &with_staged[..]
                } else {
                    mapped
                };
                // Frames are read with the format's limit, not this config's: a
                // segment written under a larger segment size stays readable.
                scan_frames(
                    bytes,
                    seg.prev_lsn,
                    RECORD_PAYLOAD_MAX_BYTES,
                    FrameChecks::Structure,
                    |lsn, payload| {
                        if lsn <= after {
                            return true;
                        }
                        match f(lsn, payload) {
                            Ok(()) => {
                                count += 1;
                                true
                            }
                            Err(message) => {
                                failed = Some(Error::Replay { lsn, message });
                                false
                            }
                        }
                    },
                )
            });
            if let Some(e) = failed {
                return Err(e);
            }
            if end.end != seg.tail || end.last_lsn != seg.last_lsn {
                return Err(Error::Corrupt {
                    segment: seg.name.clone(),
                    offset: end.end,
                    detail: format!(
                        "read back ends at offset {} lsn {}, written up to offset {} lsn {}",
                        end.end, end.last_lsn, seg.tail, seg.last_lsn
                    ),
                });
            }
        }
        Ok(count)
    }

    /// When the next record may need a new segment (a new log, or a last segment
    /// without room for a record of [`WalConfig::record_payload_max_bytes`]), has
    /// the storage get it ready now, on the caller's thread
    /// ([`Storage::prepare_segment`]); otherwise starts preparing it in the
    /// background. Called by `open`'s caller before the appending thread starts,
    /// so that thread's first roll only takes it. Nothing is created in the log
    /// itself: an idle restart finds it as it was.
    ///
    /// [`Error::NoSpace`]: the disk has no room for that segment, so a record of
    /// the largest size would be refused now (smaller ones may still fit in the
    /// active segment's last bytes); the caller can say so before a write finds
    /// it. The first roll tries again. Other failures are left to that roll.
    pub fn prepare_next_segment(&mut self) -> Result<(), Error> {
        if !self.needs_roll(self.payload_max) {
            self.storage.start_preparing(self.config.segment_bytes);
            return Ok(());
        }
        match self.storage.prepare_segment(self.config.segment_bytes) {
            Err(e) if crate::is_no_space(&e) => Err(Error::NoSpace),
            _ => Ok(()),
        }
    }

    /// Makes room for a record before the caller commits to writing it: checks
    /// the limits and, when the active segment cannot hold a `payload_len`-byte
    /// record, rolls to a new segment now. After `Ok`, an `append` of a record
    /// of at most that size with an lsn >= `lsn` can only fail on an I/O error
    /// (which poisons the log). A full disk is [`Error::NoSpace`] with nothing
    /// written, so the caller can refuse the command before changing any state.
    pub fn reserve(&mut self, lsn: Lsn, payload_len: usize) -> Result<(), Error> {
        self.check_usable()?;
        self.check_record(lsn, payload_len)?;
        if self.needs_roll(payload_len) {
            self.roll(lsn)?;
        }
        Ok(())
    }

    fn check_record(&self, lsn: Lsn, payload_len: usize) -> Result<(), Error> {
        if payload_len > self.payload_max {
            return Err(Error::RecordTooLarge {
                len: payload_len,
                max: self.payload_max,
            });
        }
        if lsn <= self.last_lsn {
            return Err(Error::LsnNotIncreasing {
                lsn,
                last: self.last_lsn,
            });
        }
        Ok(())
    }

    fn needs_roll(&self, payload_len: usize) -> bool {
        let frame_len = FRAME_HEADER_BYTES + payload_len as u64;
        match self.active() {
            Some(seg) => seg.tail + align_up(frame_len) > seg.len_bytes,
            None => true,
        }
    }

    /// Appends one record (not durable until [`Wal::commit`]). `lsn` must be
    /// above the last one; gaps are allowed.
    pub fn append(&mut self, lsn: Lsn, payload: &[u8]) -> Result<(), Error> {
        self.check_usable()?;
        self.check_record(lsn, payload.len())?;
        let frame_len = FRAME_HEADER_BYTES + payload.len() as u64;
        if self.needs_roll(payload.len()) {
            self.roll(lsn)?;
        }
        let seg = self
            .segments
            .last_mut()
            .expect("roll leaves an active segment");
        assert!(seg.handle.is_some(), "the active segment is mapped");
        let at = seg.tail;
        // Checked before writing; the frame is checked again when read back.
        assert!(at >= SEGMENT_DATA_OFFSET && at.is_multiple_of(crate::FRAME_ALIGN_BYTES));
        assert!(
            at + align_up(frame_len) <= seg.len_bytes,
            "frame fits its segment"
        );
        assert!(lsn > seg.last_lsn || seg.records == 0);
        let header = encode_frame_header(lsn, payload);
        if self.staged.is_empty() {
            self.staged_at = at;
        }
        debug_assert_eq!(self.staged_at + self.staged.len() as u64, at);
        // The frame with its alignment gap: the bytes after the tail are zero in
        // a fresh segment, and stay zero.
        let staged_len = self.staged.len() + align_up(frame_len) as usize;
        self.staged.extend_from_slice(&header);
        self.staged.extend_from_slice(payload);
        self.staged.resize(staged_len, 0);
        seg.tail = at + align_up(frame_len);
        seg.dirty_from.get_or_insert(at);
        seg.last_lsn = lsn;
        seg.records += 1;
        self.last_lsn = lsn;
        self.stats.records_appended += 1;
        self.stats.bytes_written += frame_len;
        self.stats.last_lsn = lsn;
        if self.staged.len() >= STAGED_BYTES_MAX {
            self.write_staged()?;
        }
        Ok(())
    }

    /// Ends the data of the active segment's last partly used page with a padding
    /// frame (staged), so the next frame starts on a fresh page. Without it, the
    /// next batch would rewrite the page holding this commit's last records, and a
    /// power loss during that rewrite could tear records already acknowledged.
    fn pad_to_page(&mut self, watermark: Lsn) -> bool {
        let Some(seg) = self.segments.last_mut().filter(|s| s.handle.is_some()) else {
            return false;
        };
        let Some(pad) = padding_len(seg) else {
            return false;
        };
        if self.staged.is_empty() {
            self.staged_at = seg.tail;
        }
        format::append_padding(&mut self.staged, pad, watermark);
        seg.dirty_from.get_or_insert(seg.tail);
        seg.tail += pad;
        self.stats.bytes_written += pad;
        true
    }

    /// Whether this commit also claims the watermark in the active segment's header
    /// slots: every [`HEADER_CLAIM_EVERY_COMMITS`] commits, and whenever no commit
    /// mark fit (the segment's last page). A second synced range in every commit
    /// would cost the device a second write (BENCHMARKS.md, "The writer"); the header
    /// claims still matter: a loss of the log's whole tail, marks included, is rot
    /// only if a claim outside that tail says so.
    fn header_claim_due(&mut self, marked: bool, watermark: Lsn) -> bool {
        let Some(seg) = self.segments.last_mut().filter(|s| s.handle.is_some()) else {
            return false;
        };
        seg.commits_since_header_claim += 1;
        let due = (!marked || seg.commits_since_header_claim >= HEADER_CLAIM_EVERY_COMMITS)
            && seg.watermark_written < watermark;
        if due {
            seg.commits_since_header_claim = 0;
        }
        due
    }

    /// Writes the staged frames to the active segment (not synced).
    fn write_staged(&mut self) -> Result<(), Error> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let h = self
            .segments
            .last()
            .and_then(|seg| seg.handle)
            .expect("frames are staged only for a mapped active segment");
        if let Err(e) = self.storage.write_segment(h, self.staged_at, &self.staged) {
            self.poisoned = true;
            return Err(Error::io("write records", e));
        }
        self.staged.clear();
        Ok(())
    }

    /// Makes every record appended so far durable: one sync of the dirty
    /// range per touched segment. On failure the log is poisoned: this call
    /// returns the I/O error and every later write returns [`Error::Poisoned`],
    /// because after a failed flush the kernel may have dropped the dirty
    /// pages, and a retry that "succeeds" proves nothing.
    pub fn commit(&mut self) -> Result<(), Error> {
        let started = Instant::now();
        let Some(job) = self.begin_commit()? else {
            return Ok(());
        };
        let target = job.target();
        let result = job.run();
        self.finish_commit(target, result)?;
        self.stats.last_commit_latency_us =
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        Ok(())
    }

    /// The first half of a commit, on the thread that appends: ends the data with
    /// the commit mark (padding that carries the watermark, so the next append
    /// starts on a fresh page and the sync covers one range), writes the staged
    /// frames, and returns the job that makes it all durable. The job may run
    /// on another thread while later records are appended (pipelined group
    /// commit); [`Wal::finish_commit`] then records its result. `None`: nothing
    /// was appended since the last job.
    pub fn begin_commit(&mut self) -> Result<Option<CommitJob>, Error> {
        self.check_usable()?;
        if self.last_lsn == self.commit_begun_lsn && self.steps_pending.is_empty() {
            return Ok(None);
        }
        let target = self.last_lsn;
        // Only what is known durable may be claimed durable in the same sync (see
        // the crate docs); with commits in flight that may lag more than one commit.
        let watermark = self.durable_lsn;
        let n = self.segments.len();
        let mark_at = self.segments.last().map(|s| (s.first_lsn, s.tail));
        let marked = self.pad_to_page(watermark);
        self.last_mark = match (marked, mark_at, self.segments.last()) {
            (true, Some((first_lsn, at)), Some(seg)) if self.steps_pending.is_empty() => {
                Some((first_lsn, at, seg.tail))
            }
            _ => None,
        };
        self.write_staged()?;
        let claim_in_header = self.header_claim_due(marked, watermark);
        let mut ranges = Vec::with_capacity(1);
        for i in 0..n {
            let seg = &mut self.segments[i];
            let Some(h) = seg.handle else { continue };
            let mut from = seg.dirty_from.take();
            if i == n - 1 && claim_in_header {
                let slot = seg.next_slot;
                let at = WATERMARK_SLOT_OFFSETS[slot];
                let bytes = encode_watermark(slot, seg.first_lsn, watermark);
                if let Err(e) = self.storage.write_segment(h, at, &bytes) {
                    self.poisoned = true;
                    return Err(Error::io("write watermark", e));
                }
                seg.next_slot ^= 1;
                seg.watermark_written = watermark;
                from = Some(from.map_or(at, |f| f.min(at)));
            }
            let Some(from) = from else { continue };
            let first_lsn = seg.first_lsn;
            let len = seg.tail - from;
            let syncer = match self.syncers.iter().find(|(lsn, _)| *lsn == first_lsn) {
                Some((_, syncer)) => Arc::clone(syncer),
                None => {
                    let syncer = match self.storage.segment_syncer(h) {
                        Ok(syncer) => syncer,
                        Err(e) => {
                            self.poisoned = true;
                            return Err(Error::io("open segment for sync", e));
                        }
                    };
                    // Only segments still appended to need one.
                    self.syncers.retain(|(lsn, _)| *lsn >= first_lsn);
                    self.syncers.push((first_lsn, Arc::clone(&syncer)));
                    syncer
                }
            };
            ranges.push(SyncRange {
                syncer,
                first_lsn,
                from,
                to: from + len,
            });
        }
        self.commit_begun_lsn = target;
        let steps = std::mem::take(&mut self.steps_pending);
        if !steps.is_empty() {
            let retired = std::mem::take(&mut self.retired_pending);
            self.steps_unfinished.push((target, retired));
        }
        Ok(Some(CommitJob {
            target,
            ranges,
            steps,
        }))
    }

    /// Like [`Wal::begin_commit`], but the records appended since the last commit
    /// job take the place of that job's commit mark instead of following it on a
    /// fresh page, when they can: that mark is the last thing in the active
    /// segment, it carried no directory step, and nothing after it has been
    /// written to the file yet. The job returned then covers the old job's last
    /// page again and must be merged into it ([`CommitJob::merge`]).
    ///
    /// The caller must hold that old job unclaimed: no sync of it has begun, and
    /// none will begin before the merge (the engine holds the queue's lock). Its
    /// records are not acknowledged before the merged job has run, so rewriting
    /// the page under its mark rewrites no acknowledged record, which is what the
    /// mark's padding exists to prevent. Without it, each commit that queued up
    /// behind a running sync padded a page of its own: most of the log was
    /// padding (BENCHMARKS.md, "The log was mostly padding").
    pub fn continue_commit(&mut self) -> Result<Option<CommitJob>, Error> {
        self.check_usable()?;
        if let Some((first_lsn, start, end)) = self.last_mark
            && self.last_lsn > self.commit_begun_lsn
            && self.steps_pending.is_empty()
            && let Some(seg) = self.segments.last_mut()
            && seg.handle.is_some()
            && seg.first_lsn == first_lsn
            && !self.staged.is_empty()
            && self.staged_at == end
        {
            let moved = end - start;
            seg.tail -= moved;
            seg.dirty_from = Some(seg.dirty_from.map_or(start, |from| from.min(start)));
            self.staged_at = start;
            self.stats.bytes_written -= moved;
        }
        self.begin_commit()
    }

    /// The second half of a commit: records the result of a [`CommitJob`]. Jobs
    /// finish in the order they began. A failure poisons the log.
    pub fn finish_commit(&mut self, target: Lsn, result: Result<(), Error>) -> Result<(), Error> {
        if self.poisoned {
            // A job begun before an earlier one failed may still report success: its
            // sync says nothing of the pages the failed one lost. Never trust it.
            return Err(match result {
                Err(e) => e,
                Ok(()) => Error::Poisoned,
            });
        }
        if let Err(e) = result {
            self.poisoned = true;
            // Nothing is in flight any more: no later job runs, nothing is removed.
            self.steps_pending.clear();
            self.retired_pending.clear();
            self.steps_unfinished.clear();
            return Err(e);
        }
        assert!(
            target <= self.commit_begun_lsn.max(self.last_lsn),
            "commit of {target} finished beyond what was begun ({})",
            self.commit_begun_lsn
        );
        self.durable_lsn = self.durable_lsn.max(target);
        while self
            .steps_unfinished
            .first()
            .is_some_and(|(t, _)| *t <= target)
        {
            let (_, retired) = self.steps_unfinished.remove(0);
            for r in retired {
                self.remove_retired(r);
            }
        }
        self.stats.commits += 1;
        self.stats.durable_lsn = self.durable_lsn;
        Ok(())
    }

    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    pub fn durable_lsn(&self) -> Lsn {
        self.durable_lsn
    }

    /// Keep every segment holding a record after `lsn` when pruning, whatever
    /// the snapshots allow: a replica (or a downstream publisher) has not taken
    /// those records yet. `Lsn::MAX` releases the hold.
    pub fn retain_after(&mut self, lsn: Lsn) {
        self.retain_after = lsn;
    }

    /// The durable records after `after`, in log order, up to about `bytes_max`
    /// bytes of payload (at least one record when there is one). For a replica
    /// catching up from the log: staged, not yet durable frames are never read,
    /// and segments kept only for an older snapshot are opened for the read.
    pub fn durable_records_after(
        &mut self,
        after: Lsn,
        bytes_max: usize,
    ) -> Result<Vec<(Lsn, Vec<u8>)>, Error> {
        let durable = self.durable_lsn;
        let mut records: Vec<(Lsn, Vec<u8>)> = Vec::new();
        let mut bytes = 0;
        for i in 0..self.segments.len() {
            let seg = &self.segments[i];
            if seg.last_lsn <= after {
                continue;
            }
            let (handle, opened_here) = match seg.handle {
                Some(h) => (h, false),
                None => {
                    let h = self
                        .storage
                        .open_segment(&seg.name)
                        .map_err(|e| Error::io("open a kept segment", e))?;
                    (h, true)
                }
            };
            let prev_lsn = seg.prev_lsn;
            let mut full = false;
            self.storage.with_segment(handle, |mapped| {
                scan_frames(
                    mapped,
                    prev_lsn,
                    RECORD_PAYLOAD_MAX_BYTES,
                    FrameChecks::Full,
                    |lsn, payload| {
                        if lsn <= after {
                            return true;
                        }
                        if lsn > durable || (bytes >= bytes_max && !records.is_empty()) {
                            full = true;
                            return false;
                        }
                        bytes += payload.len();
                        records.push((lsn, payload.to_vec()));
                        true
                    },
                );
            });
            if opened_here {
                self.storage.close_segment(handle);
            }
            if full {
                break;
            }
        }
        Ok(records)
    }

    /// True after a failed flush or write: the log refuses all writes.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    pub fn config(&self) -> &WalConfig {
        &self.config
    }

    /// LSN of the newest snapshot (0 if none).
    pub fn snapshot_lsn(&self) -> Lsn {
        self.snapshot_lsn
    }

    /// Names of the segment files the log currently keeps, oldest first.
    pub fn segment_names(&self) -> Vec<String> {
        self.segments.iter().map(|s| s.name.clone()).collect()
    }

    pub fn stats(&self) -> WalStats {
        let mut s = self.stats.clone();
        s.segments = self.segments.len();
        s
    }

    /// Writes a snapshot covering every record up to `lsn` (which must be durable):
    /// temp file, fsync, rename, fsync of the directory; then keeps the newest
    /// `snapshots_kept` snapshots and deletes the segments only older ones needed.
    /// The same as [`Wal::begin_snapshot`], [`SnapshotJob::run`] and
    /// [`Wal::finish_snapshot`] in a row.
    pub fn write_snapshot(&mut self, lsn: Lsn, bytes: &[u8]) -> Result<(), Error> {
        let Some(job) = self.begin_snapshot(lsn, SnapshotImage::from_body(bytes))? else {
            return Ok(());
        };
        let written = job.run();
        self.finish_snapshot(written)
    }

    /// Checks a snapshot of `lsn` may be written and hands back the job that writes
    /// and fsyncs its temp file, which may run on another thread. `None`: the newest
    /// snapshot already is at `lsn`. Only one job at a time: finish it first.
    pub fn begin_snapshot(
        &self,
        lsn: Lsn,
        image: SnapshotImage,
    ) -> Result<Option<SnapshotJob>, Error> {
        self.check_usable()?;
        if lsn > self.durable_lsn {
            return Err(Error::SnapshotAhead {
                lsn,
                durable: self.durable_lsn,
            });
        }
        if lsn == self.snapshot_lsn && self.snapshots.last() == Some(&lsn) {
            return Ok(None);
        }
        if lsn <= self.snapshot_lsn {
            return Err(Error::LsnNotIncreasing {
                lsn,
                last: self.snapshot_lsn,
            });
        }
        if image.body_len() as u64 > SNAPSHOT_BODY_MAX_BYTES {
            return Err(Error::SnapshotTooLarge {
                len: image.body_len() as u64,
                max: SNAPSHOT_BODY_MAX_BYTES,
            });
        }
        let name = snapshot_name(lsn);
        let tmp = format!("{name}{}", format::TMP_SUFFIX);
        Ok(Some(SnapshotJob {
            lsn,
            name,
            tmp,
            image,
            writer: self.storage.file_writer(),
        }))
    }

    /// Publishes a snapshot whose temp file a [`SnapshotJob`] wrote and makes it
    /// durable at once: [`Wal::publish_snapshot`], then a commit that runs its
    /// step here. For callers that run commits themselves ([`Wal::commit`]).
    pub fn finish_snapshot(
        &mut self,
        written: Result<WrittenSnapshot, Error>,
    ) -> Result<(), Error> {
        let published = self.publish_snapshot(written);
        if self.poisoned {
            return published;
        }
        self.commit()?;
        published
    }

    /// Publishes a snapshot whose temp file a [`SnapshotJob`] wrote, without
    /// waiting for the disk or changing the directory: keeps the newest
    /// `snapshots_kept` snapshots and retires the segments only older ones needed,
    /// and stages the MANIFEST that says so ([`Storage::stage_file`]). The next
    /// commit job renames the snapshot into place and makes it durable (directory
    /// fsync, the MANIFEST's fsync and rename); the retired files are removed once that job has finished. A full
    /// disk while the MANIFEST is written is [`Error::NoSpace`]: the snapshot is
    /// published, nothing is retired, and the log stays usable.
    pub fn publish_snapshot(
        &mut self,
        written: Result<WrittenSnapshot, Error>,
    ) -> Result<(), Error> {
        let written = match written {
            Ok(written) => written,
            Err(e) => {
                if let Error::Io { .. } = e {
                    // A failed fsync may have dropped pages: never trust that file.
                    self.poisoned = true;
                }
                return Err(e);
            }
        };
        self.check_usable()?;
        if written.lsn <= self.snapshot_lsn {
            return Err(Error::LsnNotIncreasing {
                lsn: written.lsn,
                last: self.snapshot_lsn,
            });
        }
        // Renamed into place by the step (on the thread that syncs), before the
        // directory fsync that makes the name durable.
        let rename = (written.tmp, written.name);
        self.snapshot_lsn = written.lsn;
        self.snapshots.push(written.lsn);
        self.stats.snapshot_lsn = written.lsn;

        let dropped = self
            .snapshots
            .len()
            .saturating_sub(self.config.snapshots_kept);
        let oldest_kept = self.snapshots[dropped];
        // Never the last segment: it is the one appended to.
        let mut retired = 0;
        let prunable_through = oldest_kept.min(self.retain_after);
        while retired + 1 < self.segments.len()
            && self.segments[retired].last_lsn <= prunable_through
        {
            retired += 1;
        }
        let manifest = Manifest {
            log_end: self.durable_lsn,
            segments: self.segments[retired..]
                .iter()
                .map(Segment::entry)
                .collect(),
            snapshots: self.snapshots[dropped..].to_vec(),
        };
        let tmp = manifest::snapshot_tmp_name(written.lsn);
        let files = self.storage.file_writer();
        let staged = match self.storage.stage_file(&tmp, &manifest.encode()) {
            Ok(staged) => staged,
            Err(e) => {
                // Best effort: a leftover temp file is removed at the next open anyway.
                let _ = self.storage.remove(&tmp);
                // The snapshot is still renamed, durably.
                self.steps_pending.push(Step::Publish(PublishStep {
                    files,
                    rename,
                    manifest: None,
                }));
                if crate::is_no_space(&e) {
                    return Err(Error::NoSpace);
                }
                self.poisoned = true;
                return Err(Error::io("write MANIFEST", e));
            }
        };
        self.snapshots.drain(..dropped);
        let segments: Vec<Segment> = self.segments.drain(..retired).collect();
        self.syncers
            .retain(|(first, _)| segments.iter().all(|s| s.first_lsn != *first));
        self.retired_pending.push(Retired {
            snapshots_below: oldest_kept,
            segments,
        });
        self.steps_pending.push(Step::Publish(PublishStep {
            files,
            rename,
            manifest: Some(staged),
        }));
        Ok(())
    }

    /// Removes what a published snapshot retired, now that the MANIFEST without it
    /// is durable. A failure leaves a file behind, not a problem: an old snapshot
    /// goes with the next publication, a segment before the log is a leftover that
    /// open removes. The removals become durable with the next directory fsync
    /// (a later roll's or publication's); until then a crash only brings such
    /// leftovers back.
    fn remove_retired(&mut self, retired: Retired) {
        if let Ok(names) = self.storage.list() {
            for name in names
                .iter()
                .filter(|n| parse_snapshot_name(n).is_some_and(|l| l < retired.snapshots_below))
            {
                self.storage.retire(name);
            }
        }
        for seg in retired.segments {
            if let Some(h) = seg.handle {
                self.storage.close_segment(h);
            }
            self.storage.retire(&seg.name);
        }
    }

    fn sync(
        &mut self,
        f: impl FnOnce(&mut S) -> std::io::Result<()>,
        op: &'static str,
    ) -> Result<(), Error> {
        f(&mut self.storage).map_err(|e| {
            self.poisoned = true;
            Error::Io { op, error: e }
        })
    }

    fn check_usable(&self) -> Result<(), Error> {
        if self.poisoned {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    fn active(&self) -> Option<&Segment> {
        self.segments.last().filter(|s| s.handle.is_some())
    }

    /// Starts a new segment whose first record will be `lsn`, without waiting for
    /// the disk: the segment left behind ends with a commit mark (written, not
    /// synced); the new one is taken from the storage, prepared and possibly still
    /// under another name (a full disk fails here, before anything is written:
    /// [`Error::NoSpace`]), gets its header and a first watermark that claims only
    /// what is already durable, and the MANIFEST that lists it is staged
    /// ([`Storage::stage_file`]). The syncs and directory changes (the segment left
    /// behind, the new header, the new segment's name, the directory, the
    /// MANIFEST's rename) are the next commit job's [`RollStep`], in that order:
    /// until it has run, a crash leaves the new segment unnamed or unlisted, a
    /// leftover that open removes, and nothing in it was
    /// acknowledged. So a segment that is not the newest is wholly below the
    /// MANIFEST's `log_end`, and a hole in it is rot, never a torn tail.
    fn roll(&mut self, lsn: Lsn) -> Result<(), Error> {
        let name = segment_name(lsn);
        let len_bytes = self.config.segment_bytes;
        // The new segment and its MANIFEST first: a full disk refuses the roll with
        // nothing written to the log (a roll tried again and again while the disk
        // is full, by each command or by the writer's retry, must not pad the
        // active segment page by page); the padding follows, below.
        let h = match self.storage.create_segment(&name, len_bytes) {
            Ok(h) => h,
            Err(e) if crate::is_no_space(&e) => return Err(Error::NoSpace),
            Err(e) => {
                self.poisoned = true;
                return Err(Error::io("create segment", e));
            }
        };
        let log_end = self.last_lsn;
        let header = SegmentHeader {
            version: FORMAT_VERSION,
            segment_bytes: len_bytes,
            first_lsn: lsn,
            prev_lsn: log_end,
        };
        let encoded = header.encode();
        let watermark = encode_watermark(0, lsn, self.durable_lsn);
        let init = self.storage.write_segment(h, 0, &encoded).and_then(|()| {
            self.storage
                .write_segment(h, WATERMARK_SLOT_OFFSETS[0], &watermark)
        });
        if let Err(e) = init {
            self.poisoned = true;
            return Err(Error::io("write segment header", e));
        }
        // Pair check: the header reads back as written.
        assert_eq!(
            self.storage.with_segment(h, SegmentHeader::check),
            HeaderCheck::Valid(header),
            "segment header reads back"
        );
        let segment = Segment {
            name,
            handle: Some(h),
            first_lsn: lsn,
            prev_lsn: log_end,
            last_lsn: log_end,
            records: 0,
            tail: SEGMENT_DATA_OFFSET,
            len_bytes,
            dirty_from: None,
            watermark_written: self.durable_lsn,
            next_slot: 1,
            commits_since_header_claim: 0,
        };
        let manifest = Manifest {
            log_end,
            segments: self
                .segments
                .iter()
                .chain([&segment])
                .map(Segment::entry)
                .collect(),
            snapshots: self.snapshots.clone(),
        };
        let manifest_tmp = manifest::roll_tmp_name(lsn);
        let prepared_name = self.storage.prepared_name(h);
        let listed = self
            .storage
            .stage_file(&manifest_tmp, &manifest.encode())
            .and_then(|staged| match self.storage.segment_syncer(h) {
                Ok(syncer) => Ok((staged, syncer)),
                Err(e) => {
                    if staged.name != manifest_tmp {
                        // A prepared file (the fallback's is removed below).
                        self.storage.retire(&staged.name);
                    }
                    Err(e)
                }
            });
        let (staged, header_syncer) = match listed {
            Ok(listed) => listed,
            Err(e) => {
                // Not listed, so nothing may go into it: take it back.
                let _ = self.storage.remove(&manifest_tmp);
                self.storage.close_segment(h);
                if !crate::is_no_space(&e) {
                    self.poisoned = true;
                    return Err(Error::io("write MANIFEST", e));
                }
                match &prepared_name {
                    // Never named: its blocks are freed off this thread.
                    Some(prepared) => self.storage.retire(prepared),
                    None => {
                        self.sync(|s| s.remove(&segment.name), "remove unlisted segment")?;
                        self.sync(|s| s.sync_dir(), "fsync data dir")?;
                    }
                }
                return Err(Error::NoSpace);
            }
        };
        // The segment left behind is padded to a page boundary, like a commit, so
        // that open never has to pad (rewrite) a page holding records that are
        // claimed. A failure here poisons the log; the new segment and its
        // MANIFEST, not installed, are leftovers that open removes.
        self.pad_to_page(self.durable_lsn);
        if let Err(e) = self.write_staged() {
            self.storage.close_segment(h);
            return Err(e);
        }
        // Sync handles: the segment left behind (its last range is still to be
        // synced) and the new one.
        let left_first_lsn = self.segments.last().map_or(lsn, |s| s.first_lsn);
        self.syncers.retain(|(first, _)| *first >= left_first_lsn);
        self.syncers.push((lsn, Arc::clone(&header_syncer)));
        self.steps_pending.push(Step::Roll(RollStep {
            first_lsn: lsn,
            header: header_syncer,
            files: self.storage.file_writer(),
            rename: prepared_name.map(|prepared| (prepared, segment.name.clone())),
            manifest: staged,
        }));
        self.segments.push(segment);
        Ok(())
    }

    /// Whether a roll or a snapshot publication is not durable yet (its step
    /// waits for, or runs in, a commit job).
    pub fn steps_in_flight(&self) -> bool {
        !self.steps_pending.is_empty() || !self.steps_unfinished.is_empty()
    }
}

/// The length of the padding frame (commit mark) that ends a segment's last
/// partly used page (see [`Wal::pad_to_page`]); `None` when it does not fit
/// before the segment end: nothing will ever be appended to that segment again.
fn padding_len(seg: &Segment) -> Option<u64> {
    let boundary = seg.tail.next_multiple_of(PAGE_BYTES);
    let mut pad = boundary - seg.tail;
    if pad < format::PADDING_BYTES_MIN {
        // Also on a boundary already: the commit mark takes a page of its own.
        pad += PAGE_BYTES;
    }
    if seg.tail + pad > seg.len_bytes {
        return None;
    }
    Some(pad)
}

/// Zeroes `from..to` of a segment and makes it durable.
fn zero_range<S: Storage>(storage: &mut S, h: SegmentId, from: u64, to: u64) -> Result<(), Error> {
    let zeros = vec![0u8; ZERO_CHUNK_BYTES];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZERO_CHUNK_BYTES as u64);
        storage
            .write_segment(h, at, &zeros[..n as usize])
            .map_err(|e| Error::io("zero torn tail", e))?;
        at += n;
    }
    storage
        .sync_segment_range(h, from, to - from)
        .map_err(|e| Error::io("msync torn tail", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of two and a half chunks, appended in odd-sized pieces and patched
    /// across a chunk boundary, frames into the file `decode_snapshot` reads back;
    /// the chunks handed back hold nothing of it in the next image.
    #[test]
    fn a_snapshot_image_frames_across_chunks_and_is_reused_empty() {
        let chunk = SnapshotImage::CHUNK_BYTES;
        let mut body: Vec<u8> = (0..chunk * 5 / 2).map(|i| (i * 7 % 251) as u8).collect();
        let mut image = SnapshotImage::new(Vec::new());
        for piece in body.chunks(1_000_003) {
            image.append(piece);
        }
        assert_eq!(image.body_len(), body.len());
        let across = chunk - format::SNAPSHOT_HEADER_BYTES - 3;
        image.patch(across, b"patched!");
        body[across..across + 8].copy_from_slice(b"patched!");
        image.frame(42);
        assert_eq!(image.chunks().count(), 3);
        let file = image.chunks().collect::<Vec<_>>().concat();
        assert_eq!(format::decode_snapshot(&file), Ok((42, &body[..])));

        let buffers = image.into_buffers();
        assert!(buffers.iter().all(|b| b.capacity() == chunk));
        let mut again = SnapshotImage::new(buffers);
        again.append(b"small");
        assert_eq!(again.body_parts().collect::<Vec<_>>(), [&b"small"[..]]);
        assert_eq!(again.spare.len(), 2, "the other chunks wait, unused");
        assert_eq!(again.chunks().count(), 1);
        // A smaller image hands back only what it filled.
        assert_eq!(again.into_buffers().len(), 1);
    }

    #[test]
    #[should_panic(expected = "past the end")]
    fn a_patch_past_the_end_panics() {
        let mut image = SnapshotImage::from_body(b"four");
        image.patch(2, b"xyz");
    }
}
