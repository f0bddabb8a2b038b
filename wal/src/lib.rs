//! surge-wal: a segmented, memory-mapped, checksummed write-ahead log plus
//! snapshot files. It knows bytes and log sequence numbers (LSNs), not orders.
//!
//! # On-disk layout (format version [`FORMAT_VERSION`])
//!
//! All integers are little-endian with the widths shown; nothing on disk is a
//! `usize`. A data directory holds:
//!
//! ```text
//! LOCK                              flock(LOCK_EX) held by the running process
//! MANIFEST                          the files that must exist (format version 2 on)
//! MANIFEST.tmp                      a MANIFEST being written; removed at open
//! wal-<first lsn, 20 digits>.seg    log segments, fixed size (WalConfig::segment_bytes)
//! snap-<lsn, 20 digits>.snap        snapshots (the newest `snapshots_kept` are kept)
//! snap-<lsn, 20 digits>.snap.tmp    a snapshot being written; removed at open
//! ```
//!
//! Format version 1 (no MANIFEST) still loads: a data dir whose files are all
//! version 1 and that has no MANIFEST is checked by the segment chain alone,
//! and open writes its first MANIFEST. A file of version 2 without a MANIFEST
//! beside it means the MANIFEST was lost, and open refuses.
//!
//! ## Segment file
//!
//! ```text
//! page 0  (offset     0) segment header, written and synced once at creation:
//!         0  u64 magic  "SURGEWAL"
//!         8  u32 format version (1 or 2)
//!        12  u32 page bytes (4096)
//!        16  u64 segment bytes (file length)
//!        24  u64 first lsn (the lsn in the file name)
//!        32  u64 prev lsn (the last lsn appended before this segment was created)
//!        40  u32 crc32c of bytes 0..40
//!        44  zero to the end of the page
//! page 1  (offset  4096) watermark slot 0: u64 lsn, u32 crc32c(lsn, slot u32, first lsn), u32 zero
//! page 2  (offset  8192) watermark slot 1: same layout
//! page 3.. (offset 12288) frames, back to back, each starting 8-byte aligned:
//!         0  u32 frame length = 16 + payload length (so never 0 for a real frame)
//!         4  u32 crc32c over (frame length u32, lsn u64, payload)
//!         8  u64 lsn
//!        16  payload, then zero padding to the next multiple of 8
//!         A frame whose 16 header bytes are all zero has never been written:
//!         it marks the end of the segment's data. A frame never straddles
//!         two segments; when one does not fit, the log rolls to a new segment.
//!         A frame with lsn 0 is commit padding (zero payload, checksummed like
//!         any frame) that must end exactly on a page boundary.
//! ```
//!
//! ## Never rewrite an acknowledged page
//!
//! A power loss while a page is being written can destroy the whole page, not
//! just the bytes that changed. So `commit` ends its data with a padding frame
//! up to the next page boundary, and the next batch starts on a fresh page:
//! pages holding acknowledged records are never written again (recovery pads a
//! surviving partial page the same way before appends resume). This costs up to
//! one page per commit, which group commit amortises, and the sync of one
//! page costs the same whether it is full or not.
//!
//! ## Snapshot file
//!
//! ```text
//!  0  u64 magic "SURGSNAP"
//!  8  u32 format version (1 or 2)
//! 12  u32 crc32c of the body
//! 16  u64 lsn covered (every record <= lsn is reflected in the body)
//! 24  u64 body length
//! 32  u32 crc32c of bytes 0..32
//! 36  u32 zero
//! 40  body
//! ```
//!
//! ## MANIFEST
//!
//! ```text
//!  0  u64 magic "SURGEMAN"
//!  8  u32 format version (2)
//! 12  u32 segment count n
//! 16  u32 snapshot count m
//! 20  u32 zero
//! 24  u64 log end: every lsn up to it was durable when the file was written
//! 32  n entries, oldest first, 24 bytes each: u64 first lsn, u64 prev lsn,
//!     u64 segment bytes (what that segment's header must say)
//!  .  m entries, ascending, 8 bytes each: u64 snapshot lsn
//!  .  u32 crc32c of every byte before it
//! ```
//!
//! It is replaced whole (temp file, fsync, rename, directory fsync) when a
//! segment is created, when a snapshot is published and segments or snapshots
//! are retired (before any file is removed), and at every open (after the
//! recovered log is durable, before leftovers are removed). So every file it
//! lists exists after any crash, and open refuses to start when one does not
//! ([`Error::MissingSegment`]), when a listed segment's length or header does
//! not match it (truncated or replaced: [`Error::Corrupt`]), or when the log
//! ends before its log end (the newest segment lost acknowledged records).
//! An unlisted segment is the leftover of an interrupted creation, retirement
//! or tail cut, and is removed; one between two listed segments is refused.
//!
//! A segment's creation (a roll) does not wait for the disk, nor change the
//! directory: the appending thread pads the segment it leaves, takes the
//! prepared spare (made, opened and mapped by the storage's own thread, still
//! under its spare name), writes the new header (whose watermark claims only
//! what is already durable) and the MANIFEST that lists it into a prepared
//! small file ([`Storage::stage_file`]; `MANIFEST-<first lsn>.tmp` where none is
//! ready), and appends on. The next commit job makes it part of the log, in
//! this order: the segment left behind synced to its end, the new header
//! synced, the spare renamed to the segment's name, the directory fsynced, the
//! temp MANIFEST cut to its length, fsynced, renamed into place and the
//! directory fsynced again; then the new segment's own range. Nothing in the
//! new segment is acknowledged before that job ends, and the MANIFEST's log end
//! (the last LSN before the new segment) is true when it lands. A crash before
//! it leaves the new segment unnamed or unlisted: a leftover. A snapshot is
//! published the same way ([`Wal::publish_snapshot`]): the appending thread
//! writes the MANIFEST without what it retires the same way; the next commit
//! job renames the snapshot into place, makes that durable and installs that
//! MANIFEST; the retired files are removed once that
//! job has finished. Every MANIFEST is computed and written by the appending
//! thread and installed by the commit thread in the same order, so a later one
//! never lands first.
//!
//! # Telling a torn tail from rot: the durable watermark
//!
//! A crash can leave the last, not-yet-synced pages of the log half written
//! (a *torn tail*): those records were never acknowledged, so cutting them is
//! correct. Damage to records that *were* acknowledged (*rot*) must instead stop
//! start-up, because silently dropping them would lose acknowledged work. The
//! frames alone cannot tell the two apart, so each segment carries a durable
//! watermark: the highest LSN known to be synced.
//!
//! At each `commit` the watermark claimed is the LSN that was durable *before*
//! this commit started (the previous commits' last LSN), so a torn commit never
//! over-claims. The claim travels in the stream: every commit ends with a
//! padding frame to the page boundary (the *commit mark*) whose payload starts
//! with that watermark, and the sync covers one contiguous range. The segment's
//! two header slots (on separate pages, written alternately, so a torn write of
//! one leaves the other readable) also claim it, but only every
//! [`HEADER_CLAIM_EVERY_COMMITS`] commits, at segment creation, and when no mark
//! fits before the segment end: a second range in every sync cost the device a
//! second write (measured: `wal/commit_1_record` 1.26x the raw device before,
//! about 1.04x after; BENCHMARKS.md).
//!
//! Commits start on fresh pages, so when a scan stops on a frame that does not
//! hold, recovery looks for the marks of later commits at the page boundaries
//! past it: a mark there that claims an LSN the log before the damage does not
//! reach proves the damage is rot. What cannot be decided: rot in the very last
//! commit (no later mark claims it), and the loss of the whole tail of the
//! newest segment, marks included, above its last header claim (at most
//! [`HEADER_CLAIM_EVERY_COMMITS`] commits). Those are cut and reported as a torn
//! tail. Segments written before commit marks have zero in the mark's place,
//! which claims nothing.
//!
//! Recovery takes the watermark as the maximum valid slot over all segments
//! (and the MANIFEST's log end, which does not live in a segment that could be
//! lost or replaced), walks the frames in LSN order and stops at the first invalid point:
//!
//! * if the last valid LSN before it is below the watermark, acknowledged data is
//!   damaged: [`Error::Corrupt`] names the segment and offset, and open fails;
//! * otherwise it is a torn tail: the rest of that segment is zeroed, later
//!   segments are removed, and [`RecoveryReport::torn_tail`] says what was cut.
//!
//! Segments chain: each header holds the LSN appended just before it was
//! created, so a segment whose tail lost records while a later segment survived
//! is detected (the next segment's `prev lsn` does not match) instead of
//! replaying a log with a hole in it. Before a new segment is created the
//! current one is synced to its end, and the new segment's first watermark
//! (and the MANIFEST written with it) claim that end: a record of a segment
//! that is no longer the newest is always below the watermark, so a hole
//! anywhere but in the newest segment is refused, never cut as a torn tail.
//!
//! Records are written into the segment file with `pwrite` (the memory map is for
//! reading) and a commit makes them durable with one `fdatasync` of the segment
//! ([`Wal::commit`]; ARCHITECTURE.md has the measurements that chose it over
//! `msync` of the dirty range). Segment files are reserved with
//! `fallocate` before they are mapped: writing to a mapped hole on a full disk
//! raises SIGBUS, while a failed `fallocate` is a clean `ENOSPC`.

mod format;
mod manifest;
mod priority;
mod recovery;
mod sim;
mod storage;
mod verify;
mod wal;

pub use priority::{
    lower_this_thread_priority, raise_this_thread_priority, reset_this_thread_priority,
    this_thread_cpu_time, this_thread_nice,
};
pub use sim::{CrashReport, SimStorage};
pub use storage::{FileWriter, MmapStorage, SegmentId, SegmentSyncer, Storage};
pub use verify::{
    ManifestReport, Problem, SegmentReport, SnapshotReport, Verdict, VerifyReport, verify,
};
pub use wal::{
    CommitJob, HEADER_CLAIM_EVERY_COMMITS, Recovery, RecoveryReport, SnapshotImage, SnapshotJob,
    TornTail, Wal, WalStats, WrittenSnapshot,
};

/// Log sequence number. 0 means "nothing".
pub type Lsn = u64;

/// Version of the byte layout above, written into every new file. Bump it when
/// the layout changes. Version 2 added the MANIFEST.
pub const FORMAT_VERSION: u32 = 2;
/// Oldest version still read.
pub const FORMAT_VERSION_OLDEST: u32 = 1;
/// Page size the layout is drawn in; segment sizes are multiples of it.
pub const PAGE_BYTES: u64 = 4096;
/// Where frames start in a segment: after the header page and two watermark pages.
pub const SEGMENT_DATA_OFFSET: u64 = 3 * PAGE_BYTES;
/// Bytes of a frame header (length, crc, lsn).
pub const FRAME_HEADER_BYTES: u64 = 16;
/// Frames start at multiples of this.
pub const FRAME_ALIGN_BYTES: u64 = 8;
/// Largest record payload accepted by [`Wal::append`] (a smaller segment lowers it).
pub const RECORD_PAYLOAD_MAX_BYTES: usize = 1 << 20;
/// Default segment size.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;
/// Smallest segment size accepted: the header pages plus one data page.
pub const SEGMENT_BYTES_MIN: u64 = SEGMENT_DATA_OFFSET + PAGE_BYTES;
/// Largest segment size accepted (offsets are u64 on disk, but a map must fit memory).
pub const SEGMENT_BYTES_MAX: u64 = 1 << 30;
/// Largest snapshot body accepted, written or read.
pub const SNAPSHOT_BODY_MAX_BYTES: u64 = 4 << 30;

const _: () = assert!(SEGMENT_BYTES_DEFAULT.is_multiple_of(PAGE_BYTES));
const _: () = assert!(SEGMENT_DATA_OFFSET.is_multiple_of(FRAME_ALIGN_BYTES));
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(
    SEGMENT_DATA_OFFSET + FRAME_HEADER_BYTES + RECORD_PAYLOAD_MAX_BYTES as u64
        <= SEGMENT_BYTES_DEFAULT
);
const _: () = assert!(RECORD_PAYLOAD_MAX_BYTES as u64 + FRAME_HEADER_BYTES <= u32::MAX as u64);

/// Tuning of a [`Wal`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalConfig {
    /// Size of each segment file; a multiple of [`PAGE_BYTES`], at least
    /// [`SEGMENT_BYTES_MIN`]. Default 64 MiB.
    pub segment_bytes: u64,
    /// How many snapshots to keep (at least 2, so a damaged newest one can fall
    /// back to the previous one, whose log segments are kept too). Default 2.
    pub snapshots_kept: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        WalConfig {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            snapshots_kept: 2,
        }
    }
}

impl WalConfig {
    /// Checks the relationships between the limits.
    pub fn validate(&self) -> Result<(), Error> {
        if !self.segment_bytes.is_multiple_of(PAGE_BYTES) {
            return Err(Error::InvalidConfig(format!(
                "segment_bytes {} is not a multiple of {PAGE_BYTES}",
                self.segment_bytes
            )));
        }
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(Error::InvalidConfig(format!(
                "segment_bytes {} is outside {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                self.segment_bytes
            )));
        }
        if self.snapshots_kept < 2 {
            return Err(Error::InvalidConfig(format!(
                "snapshots_kept {} is below 2",
                self.snapshots_kept
            )));
        }
        Ok(())
    }

    /// The largest payload one record may carry with this segment size.
    pub fn record_payload_max_bytes(&self) -> usize {
        let room = self
            .segment_bytes
            .saturating_sub(SEGMENT_DATA_OFFSET + FRAME_HEADER_BYTES);
        usize::try_from(room).map_or(RECORD_PAYLOAD_MAX_BYTES, |room| {
            room.min(RECORD_PAYLOAD_MAX_BYTES)
        })
    }
}

/// The one error type of the wal layer.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Its text includes the I/O error's, which is therefore not also its `source`
    /// (a report of the chain said everything twice).
    #[error("wal i/o error during {op}: {error}")]
    Io {
        op: &'static str,
        error: std::io::Error,
    },
    #[error("wal corrupt: {segment} at offset {offset}: {detail}")]
    Corrupt {
        segment: String,
        offset: u64,
        detail: String,
    },
    /// A segment the MANIFEST lists is not in the data dir.
    #[error("wal segment {file} is missing: {detail}")]
    MissingSegment { file: String, detail: String },
    /// The MANIFEST is damaged, or missing beside files that need one.
    #[error("wal MANIFEST cannot be trusted: {detail}")]
    BadManifest { detail: String },
    #[error("no space left on device: cannot reserve a new wal segment or snapshot")]
    NoSpace,
    #[error("wal refuses writes after a failed flush; restart to recover from the log")]
    Poisoned,
    #[error("data directory is locked by another process")]
    Locked,
    #[error("record of {len} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge { len: usize, max: usize },
    #[error("snapshot of {len} bytes exceeds the limit of {max} bytes")]
    SnapshotTooLarge { len: u64, max: u64 },
    #[error("lsn {lsn} is not greater than the last lsn {last}")]
    LsnNotIncreasing { lsn: Lsn, last: Lsn },
    #[error("snapshot lsn {lsn} is beyond the durable lsn {durable}; commit first")]
    SnapshotAhead { lsn: Lsn, durable: Lsn },
    #[error("invalid wal config: {0}")]
    InvalidConfig(String),
    #[error("replay stopped at lsn {lsn}: {message}")]
    Replay { lsn: Lsn, message: String },
}

impl Error {
    /// Maps an I/O error, turning "disk full" into [`Error::NoSpace`].
    pub(crate) fn io(op: &'static str, source: std::io::Error) -> Error {
        if is_no_space(&source) {
            Error::NoSpace
        } else {
            Error::Io { op, error: source }
        }
    }
}

pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == std::io::ErrorKind::StorageFull
}
