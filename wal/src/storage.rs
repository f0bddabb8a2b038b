//! The storage trait (a directory of files, in small primitive steps) and its
//! real-file implementation.
#![allow(
    unsafe_code,
    reason = "memory-maps segments and calls flock, fallocate and sync_file_range through libc"
)]

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{MmapMut, MmapOptions};

use crate::Error;
use crate::format::{parse_segment_name, parse_snapshot_name};

/// Handle of a mapped segment inside one [`Storage`] value.
pub type SegmentId = usize;

/// A directory of files, in the primitive steps the log needs. Nothing here
/// is durable until the matching sync: `sync_segment_range` / `sync_segment_all`
/// for segment contents, `sync_file` for small files, `sync_dir` for creating,
/// renaming and removing names.
pub trait Storage: Send + 'static {
    /// Names of the files in the directory (in no particular order).
    fn list(&self) -> io::Result<Vec<String>>;
    /// Creates a new segment file of `len_bytes` (which must not exist),
    /// reserves its blocks (fallocate), and maps it. On failure nothing is left
    /// behind; a full disk is reported as `ENOSPC`. The file may still have
    /// another name, a prepared one ([`Storage::prepared_name`]).
    fn create_segment(&mut self, name: &str, len_bytes: u64) -> io::Result<SegmentId>;
    /// Asked right after `create_segment`: the name the new segment's file still
    /// has when `create_segment` took a prepared file without renaming it. The
    /// caller renames it to the segment's name from another thread
    /// ([`FileWriter::rename`]), before the directory fsync that makes the segment
    /// part of the log; until then a crash leaves a prepared file, which the next
    /// open removes. `None`: the file was made under its name.
    fn prepared_name(&self, _seg: SegmentId) -> Option<String> {
        None
    }
    /// Maps an existing segment file.
    fn open_segment(&mut self, name: &str) -> io::Result<SegmentId>;
    /// Unmaps a segment (before removing it, say).
    fn close_segment(&mut self, seg: SegmentId);
    /// Runs `f` over the current (written) bytes of a mapped segment.
    fn with_segment<R>(&self, seg: SegmentId, f: impl FnOnce(&[u8]) -> R) -> R;
    /// Copies `bytes` into a mapped segment at `offset`.
    fn write_segment(&mut self, seg: SegmentId, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Makes `len` bytes from `offset` of a segment durable (msync).
    fn sync_segment_range(&mut self, seg: SegmentId, offset: u64, len: u64) -> io::Result<()>;
    /// Makes a whole segment durable, its size included (fsync).
    fn sync_segment_all(&mut self, seg: SegmentId) -> io::Result<()>;
    /// Creates or replaces a small file with `bytes` (not synced).
    fn write_file(&mut self, name: &str, bytes: &[u8]) -> io::Result<()>;
    /// Writes `bytes` as a small file that another thread makes durable
    /// ([`FileWriter::sync_staged`]) and renames into place (a temp MANIFEST).
    /// Storage that keeps small files ready writes them into one of those
    /// (allocated, zero-filled and synced: the write creates no file and needs no
    /// new block, so on a file system that overwrites in place, ext4 or xfs, a full
    /// disk cannot refuse it), under that file's name; else, or when none is ready
    /// or the bytes do not fit one, `write_file(name, ..)`.
    fn stage_file(&mut self, name: &str, bytes: &[u8]) -> io::Result<StagedFile> {
        self.write_file(name, bytes)?;
        Ok(StagedFile {
            name: name.to_string(),
            len_bytes: bytes.len() as u64,
        })
    }
    /// Makes a small file's contents durable (fsync).
    fn sync_file(&mut self, name: &str) -> io::Result<()>;
    /// Reads a whole small file.
    fn read_file(&self, name: &str) -> io::Result<Vec<u8>>;
    /// Atomically renames `from` to `to`, replacing `to`.
    fn rename(&mut self, from: &str, to: &str) -> io::Result<()>;
    /// Removes a file.
    fn remove(&mut self, name: &str) -> io::Result<()>;
    /// Removes a file the log no longer needs and will not name again while this
    /// storage is open (a retired segment or snapshot, a prepared file given up),
    /// off the calling thread where the storage can: freeing a large file's
    /// blocks is slow. Durable, like `remove`, after a directory fsync. Errors
    /// are not reported: a file left behind is a leftover the next open removes.
    fn retire(&mut self, name: &str) {
        let _ = self.remove(name);
    }
    /// Gets segments of `len_bytes` and small files ready in the background, without
    /// waiting (for `open` when the next record does not need a new segment, so
    /// that the first roll and the first staged file find theirs ready). Storage
    /// without spares does nothing.
    fn start_preparing(&mut self, _len_bytes: u64) {}
    /// Makes the directory entries durable (fsync of the directory).
    fn sync_dir(&mut self) -> io::Result<()>;
    /// A handle that makes ranges of one mapped segment durable from another thread
    /// (the pipelined group commit syncs batch N while the writer appends N+1). It
    /// stays usable after the segment is closed or removed.
    fn segment_syncer(&self, seg: SegmentId) -> io::Result<Arc<dyn SegmentSyncer>>;
    /// A handle for small files and directory steps from another thread: a large
    /// snapshot body reaches the disk without stalling the writer, and a segment
    /// roll or a snapshot's publication is made durable by the commit thread. The
    /// caller orders these steps against its own (the log installs its MANIFESTs,
    /// each from a temp file of its own, in the order it wrote them).
    fn file_writer(&self) -> Box<dyn FileWriter>;
    /// Gets the next segment of `len_bytes` ready before it is asked for, and
    /// waits until it is (for `open`, before the appending thread starts):
    /// `MmapStorage` prepares its spare (created, zero-filled, synced, mapped)
    /// now, so the first `create_segment` only takes it. A failure (a full disk,
    /// `ENOSPC`) is returned, so that the caller can say so before any write
    /// finds it; the first `create_segment` tries again. Storage without spares
    /// does nothing.
    fn prepare_segment(&mut self, _len_bytes: u64) -> io::Result<()> {
        Ok(())
    }
}

/// A small file written by [`Storage::stage_file`], to be made durable and
/// renamed into place by another thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StagedFile {
    /// The file's name: the one asked for, or the prepared file's written into.
    pub name: String,
    /// The length of what was written; a prepared file is longer until
    /// [`FileWriter::sync_staged`] cuts it.
    pub len_bytes: u64,
}

/// Makes a byte range of one segment durable; see [`Storage::segment_syncer`].
pub trait SegmentSyncer: Send + Sync + 'static {
    fn sync_range(&self, offset: u64, len: u64) -> io::Result<()>;
}

/// [`SegmentSyncer`] for [`MmapStorage`]: `fdatasync` on its own descriptor of the
/// segment file. On Linux `msync(MS_SYNC)` of a range is `fdatasync` restricted to
/// that range's pages; a whole-file `fdatasync` also writes pages a later batch has
/// dirtied meanwhile, which is harmless (they are not acknowledged by it).
struct FileSyncer(File);

impl SegmentSyncer for FileSyncer {
    fn sync_range(&self, _offset: u64, _len: u64) -> io::Result<()> {
        self.0.sync_data()
    }
}

/// Small-file and directory steps from a thread other than the storage's owner:
/// a snapshot body written and fsynced in the background, and a segment roll's
/// listing (the MANIFEST rename and the directory fsyncs) done by the thread that
/// syncs commits, after the commits before it (see [`Storage::file_writer`]).
pub trait FileWriter: Send + Sync + 'static {
    /// Creates or replaces `name` with the concatenation of `parts` and makes it durable.
    fn write_synced(&self, name: &str, parts: &[&[u8]]) -> io::Result<()>;
    /// Makes a small file's contents durable (fsync).
    fn sync_file(&self, name: &str) -> io::Result<()>;
    /// Cuts a staged file to the length written and makes it durable (fsync).
    fn sync_staged(&self, staged: &StagedFile) -> io::Result<()>;
    /// Atomically renames `from` to `to`, replacing `to` (durable after `sync_dir`).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes the directory entries durable (fsync of the directory).
    fn sync_dir(&self) -> io::Result<()>;
    /// Removes `name` (durable after `sync_dir`): a temp file a failed write left.
    fn remove(&self, name: &str) -> io::Result<()>;
}

/// Whether `parts` can be written with direct I/O: large enough to be worth it,
/// every part page-aligned in memory, every part but the last a whole number of
/// pages (so every write's file offset is too). Snapshot chunks are.
fn direct_writable(parts: &[&[u8]]) -> bool {
    let total: usize = parts.iter().map(|p| p.len()).sum();
    let Some((last, whole)) = parts.split_last() else {
        return false;
    };
    total >= DIRECT_MIN_BYTES
        && parts
            .iter()
            .all(|p| (p.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN_BYTES))
        && whole
            .iter()
            .all(|p| p.len().is_multiple_of(DIRECT_ALIGN_BYTES))
        && !last.is_empty()
}

/// One page, aligned as direct I/O asks.
#[repr(C, align(4096))]
struct AlignedPage([u8; DIRECT_ALIGN_BYTES]);

/// Write `parts` to a new `path` with `O_DIRECT` and make it durable: the bytes go
/// from the caller's buffers to the device without a copy into the page cache (for
/// a snapshot of gigabytes, that copy was the snapshot thread's main cost). The
/// last part's partial page goes through a zero-padded page of our own, and the
/// file is cut back to its length before the sync.
fn write_direct(path: &Path, parts: &[&[u8]]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    let (last, whole) = parts.split_last().expect("checked by direct_writable");
    let (pages, tail) = last.split_at(last.len() - last.len() % DIRECT_ALIGN_BYTES);
    let mut padded = Box::new(AlignedPage([0; DIRECT_ALIGN_BYTES]));
    padded.0[..tail.len()].copy_from_slice(tail);
    let padded = (!tail.is_empty()).then_some(&padded.0[..]);
    let mut offset = 0u64;
    for bytes in whole.iter().copied().chain([pages]).chain(padded) {
        f.write_all_at(bytes, offset)?;
        offset += bytes.len() as u64;
    }
    let len: usize = parts.iter().map(|p| p.len()).sum();
    f.set_len(len as u64)?;
    f.sync_all()
}

/// [`FileWriter`] for [`MmapStorage`]: plain files in the data directory.
struct DirFileWriter {
    dir: PathBuf,
}

/// Alignment (address, length, offset) direct I/O asks for: the page size, which
/// covers every logical block size a disk reports.
const DIRECT_ALIGN_BYTES: usize = 4096;

/// Files written through [`FileWriter::write_synced`] from at least this many bytes
/// go around the page cache when they can (snapshots; see `write_direct`).
const DIRECT_MIN_BYTES: usize = 1 << 20;

impl FileWriter for DirFileWriter {
    fn write_synced(&self, name: &str, parts: &[&[u8]]) -> io::Result<()> {
        let path = self.dir.join(name);
        if direct_writable(parts) {
            match write_direct(&path, parts) {
                Ok(()) => return Ok(()),
                // The file system takes no direct I/O (tmpfs): as before, below.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        for part in parts {
            f.write_all(part)?;
        }
        f.sync_all()
    }

    fn sync_file(&self, name: &str) -> io::Result<()> {
        File::open(self.dir.join(name))?.sync_all()
    }

    fn sync_staged(&self, staged: &StagedFile) -> io::Result<()> {
        let file = OpenOptions::new()
            .write(true)
            .open(self.dir.join(&staged.name))?;
        if file.metadata()?.len() != staged.len_bytes {
            file.set_len(staged.len_bytes)?;
        }
        file.sync_all()
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.dir.join(from), self.dir.join(to))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.dir.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

const LOCK_FILE: &str = "LOCK";

struct Mapped {
    file: File,
    map: MmapMut,
    /// The prepared file's name, until the caller renames it (`prepared_name`).
    prepared_name: Option<String>,
}

/// Real files: memmap2 maps, fallocate, msync/fsync, directory fsync. Holds an
/// exclusive `flock` on `<dir>/LOCK` for its lifetime.
pub struct MmapStorage {
    dir: PathBuf,
    // Held only for its flock; closing the file releases the lock.
    _lock: File,
    segments: Vec<Option<Mapped>>,
    /// The next segment file, made ready off the appending thread.
    spare: Option<SparePreparer>,
    /// Deletes retired segments off the appending thread.
    reclaimer: Option<Reclaimer>,
    /// Retired segments renamed so far (for unique trash names).
    retired: u64,
}

impl Drop for MmapStorage {
    /// The preparer and the reclaimer finish before the lock goes (the fields'
    /// own order would release it first): a storage opened on the directory next
    /// numbers its spares from 0 again, and must not meet this one's threads still
    /// making or unlinking files of the same names.
    fn drop(&mut self) {
        self.spare = None;
        self.reclaimer = None;
    }
}

/// Prefix of a retired segment's name while the reclaimer deletes it: storage-
/// internal like the spare (`list` hides it, `open` removes a leftover).
const RETIRED_PREFIX: &str = "wal-retired-";

/// A thread that deletes retired segment files. Freeing the blocks of a 64 MiB
/// file took 17 ms per `unlink` on the appending thread (measured with `strace -T`
/// during a snapshot's pruning: 16 segments, a 270 ms stall of every write). A file
/// `remove`d is renamed out of the log's names first (on the caller's thread), so a
/// later segment of the same name is never the one deleted; one `retire`d (a name
/// not used again while the storage is open) is sent as it is.
struct Reclaimer {
    tx: Option<std::sync::mpsc::Sender<PathBuf>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reclaimer {
    fn start() -> io::Result<Reclaimer> {
        let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
        let thread = std::thread::Builder::new()
            .name("surge-reclaimer".into())
            .spawn(move || {
                // Deleting old files is background work (`priority.rs`).
                let _ = crate::lower_this_thread_priority();
                for path in rx {
                    // A failure leaves a leftover that the next open removes.
                    let _ = fs::remove_file(path);
                }
            })?;
        Ok(Reclaimer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for Reclaimer {
    fn drop(&mut self) {
        self.tx = None; // ends the thread once it has deleted what it was given
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Prepared (allocated, zero-filled, synced) next segment files are named
/// `wal-spare-<n>.tmp`, and the prepared small files a temp MANIFEST is written
/// into `wal-spare-manifest-<n>.tmp`. They are storage-internal: `list` hides
/// them, `open` removes leftovers (and the single `wal-spare.tmp` of earlier
/// versions). `create_segment` maps the oldest ready spare without renaming it,
/// `stage_file` writes into a ready manifest file: the renames are the caller's,
/// on the thread that syncs.
const SPARE_PREFIX: &str = "wal-spare";
const SPARE_SUFFIX: &str = ".tmp";
const MANIFEST_SLOT_PREFIX: &str = "wal-spare-manifest";

/// Whether `name` is a spare segment file (this version's or an earlier one's) or
/// a prepared manifest file.
fn is_spare_name(name: &str) -> bool {
    name.starts_with(SPARE_PREFIX) && name.ends_with(SPARE_SUFFIX)
}

/// Spares kept ready ahead of the rolls. One was not enough: under a 64-thread
/// load with 16 MiB segments (a roll every 150-200 ms) the preparer now and then
/// needed 100-150 ms of CPU for one (fresh page-cache pages cost their first touch
/// on this VM), a roll found none ready three times in 16 s, and each time the
/// writer zero-filled the segment itself: 55-64 ms iterations, the maximum of
/// `runtime/writer_iterations` (BENCHMARKS.md, "Two spare segments"). Two absorb one slow
/// preparation; the price is one more segment's space on disk.
const SPARES_READY_MAX: usize = 2;

/// Prepared manifest files kept ready: a roll takes one, a snapshot publication
/// one, and two rolls can come within one commit.
const MANIFEST_SLOTS_READY_MAX: usize = 4;

/// Length of a prepared manifest file: a MANIFEST of up to 2,700 segments (170 GiB
/// of log at 64 MiB) fits; a longer one is written as a file of its own.
pub(crate) const MANIFEST_SLOT_BYTES: u64 = 64 << 10;

/// A spare ready for a roll: made, opened and mapped off the appending thread.
struct ReadySpare {
    name: String,
    len_bytes: u64,
    file: File,
    map: MmapMut,
}

/// A prepared manifest file, open for writing.
struct ManifestSlot {
    name: String,
    file: File,
}

/// What the preparer thread has made ready.
#[derive(Default)]
struct SpareSlot {
    /// Spares ready, oldest first.
    ready: std::collections::VecDeque<ReadySpare>,
    /// Manifest files ready.
    manifest_slots: std::collections::VecDeque<ManifestSlot>,
    /// The last manifest file's preparation failed (a full disk): none is made
    /// until one is asked for again (`stage_file` falls back to a file of its own).
    manifest_slot_failed: bool,
    /// Length the spares should have; `None` stops the thread.
    wanted_len_bytes: Option<u64>,
    /// The last preparation failed (full disk, say), and why. A roll that finds
    /// no spare ready and this set asks for a fresh attempt and waits for it; the
    /// roll reports the error when that attempt fails too.
    failed: Option<PreparationError>,
    /// Numbers the next spare's file.
    next_spare: u64,
    /// The preparer thread ended by a panic: no spare will come; every roll works
    /// inline.
    gone: bool,
}

impl SpareSlot {
    /// Spares of `len_bytes` from now on: ready ones of another length go. Whether
    /// that changed anything (the preparer must then be woken).
    fn want(&mut self, dir: &Path, len_bytes: u64) -> bool {
        if self.wanted_len_bytes == Some(len_bytes) {
            return false;
        }
        self.wanted_len_bytes = Some(len_bytes);
        self.failed = None;
        for spare in self.ready.drain(..) {
            // A leftover is removed by the next `open`.
            let _ = fs::remove_file(dir.join(spare.name));
        }
        true
    }

    /// Whether the preparer has nothing to do.
    fn idle(&self) -> bool {
        (self.ready.len() >= SPARES_READY_MAX || self.failed.is_some())
            && (self.manifest_slots.len() >= MANIFEST_SLOTS_READY_MAX || self.manifest_slot_failed)
    }
}

/// Why a spare's preparation failed, kept so that the roll that needed it can
/// report it (`io::Error` is not `Clone`).
struct PreparationError {
    raw_os_error: Option<i32>,
    kind: io::ErrorKind,
    text: String,
}

impl PreparationError {
    fn of(e: &io::Error) -> PreparationError {
        PreparationError {
            raw_os_error: e.raw_os_error(),
            kind: e.kind(),
            text: e.to_string(),
        }
    }

    fn to_io(&self) -> io::Error {
        match self.raw_os_error {
            Some(raw) => io::Error::from_raw_os_error(raw),
            None => io::Error::new(self.kind, format!("preparing a segment: {}", self.text)),
        }
    }
}

/// A thread that keeps up to [`SPARES_READY_MAX`] segment files ready (created,
/// `fallocate`d, written with zeros, fsynced, opened and mapped) and up to
/// [`MANIFEST_SLOTS_READY_MAX`] manifest files, so that rolling to a new segment
/// costs the appending thread no file creation, no rename and no 64 MiB of writes.
struct SparePreparer {
    dir: PathBuf,
    slot: Arc<(parking_lot::Mutex<SpareSlot>, parking_lot::Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SparePreparer {
    fn start(dir: PathBuf, len_bytes: u64) -> io::Result<SparePreparer> {
        let slot = Arc::new((
            parking_lot::Mutex::new(SpareSlot {
                wanted_len_bytes: Some(len_bytes),
                ..SpareSlot::default()
            }),
            parking_lot::Condvar::new(),
        ));
        let shared = Arc::clone(&slot);
        let thread_dir = dir.clone();
        let thread = std::thread::Builder::new()
            .name("surge-segment-prep".into())
            // Not lowered in priority (`priority.rs`): a roll that finds no spare
            // ready waits for this thread.
            .spawn(move || prepare_spares(&thread_dir, &shared))?;
        Ok(SparePreparer {
            dir,
            slot,
            thread: Some(thread),
        })
    }

    /// The oldest ready spare of this length (`Some`), waiting for one if none is
    /// ready yet. When the last preparation had failed (a full disk, say), the
    /// preparer is asked for a fresh attempt and the roll waits for it: the error
    /// of that attempt is this call's. The roll never creates, allocates or
    /// zero-fills a segment itself, nor races the preparer for space freed
    /// meanwhile. `None` only when the preparer thread is gone (it panicked): the
    /// caller then creates the segment itself. The preparer starts on the next
    /// spare at once.
    fn take(&self, len_bytes: u64) -> io::Result<Option<ReadySpare>> {
        let (lock, wake) = &*self.slot;
        let mut slot = lock.lock();
        if slot.want(&self.dir, len_bytes) {
            wake.notify_all();
        }
        if slot.ready.is_empty() && slot.failed.take().is_some() {
            // A failure from before this roll: the disk may have room again.
            wake.notify_all();
        }
        loop {
            if let Some(spare) = slot.ready.pop_front() {
                wake.notify_all();
                return Ok(Some(spare));
            }
            if slot.gone {
                return Ok(None);
            }
            if let Some(failed) = &slot.failed {
                // Left set: the next roll asks for a fresh attempt again.
                return Err(failed.to_io());
            }
            wake.wait(&mut slot);
        }
    }

    /// A ready manifest file, if one is (never waits). Taking one, or finding
    /// none, asks the preparer for more (also after a failed preparation).
    fn take_manifest_slot(&self) -> Option<ManifestSlot> {
        let (lock, wake) = &*self.slot;
        let mut slot = lock.lock();
        slot.manifest_slot_failed = false;
        let taken = slot.manifest_slots.pop_front();
        wake.notify_all();
        taken
    }

    /// Waits until a spare of this length is ready (`Ok`) or its preparation
    /// failed (that failure; the next roll asks for a fresh attempt). The
    /// preparer gone is `Ok`: the roll then makes its segment itself.
    fn wait_ready(&self, len_bytes: u64) -> io::Result<()> {
        let (lock, wake) = &*self.slot;
        let mut slot = lock.lock();
        if slot.want(&self.dir, len_bytes) {
            wake.notify_all();
        }
        loop {
            if !slot.ready.is_empty() || slot.gone {
                return Ok(());
            }
            if let Some(failed) = &slot.failed {
                return Err(failed.to_io());
            }
            wake.wait(&mut slot);
        }
    }
}

#[cfg(test)]
impl SparePreparer {
    /// Waits until `count` spares and every manifest file are ready; the spares'
    /// names, oldest first.
    fn wait_ready_count(&self, count: usize) -> Vec<String> {
        let (lock, wake) = &*self.slot;
        let mut slot = lock.lock();
        while (slot.ready.len() < count || slot.manifest_slots.len() < MANIFEST_SLOTS_READY_MAX)
            && slot.failed.is_none()
            && !slot.manifest_slot_failed
            && !slot.gone
        {
            wake.wait(&mut slot);
        }
        assert!(
            slot.failed.is_none() && !slot.manifest_slot_failed && !slot.gone,
            "a preparation failed"
        );
        slot.ready.iter().map(|spare| spare.name.clone()).collect()
    }
}

impl Drop for SparePreparer {
    fn drop(&mut self) {
        let (lock, wake) = &*self.slot;
        lock.lock().wanted_len_bytes = None;
        wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the preparer makes next.
enum Preparation {
    Spare { len_bytes: u64, name: String },
    ManifestSlot { name: String },
}

/// The preparer's loop: while fewer than [`SPARES_READY_MAX`] spares or
/// [`MANIFEST_SLOTS_READY_MAX`] manifest files are ready, make one.
fn prepare_spares(dir: &Path, slot: &(parking_lot::Mutex<SpareSlot>, parking_lot::Condvar)) {
    // The process's priority, not its creator's: the writer starts it when it rolls
    // before a spare was prepared (`priority.rs`).
    let _ = crate::reset_this_thread_priority();
    let (lock, wake) = slot;
    // Should this thread end by a panic, a roll waiting for it must not wait
    // forever: it finds the preparer gone and works inline.
    struct FailOnUnwind<'a>(&'a (parking_lot::Mutex<SpareSlot>, parking_lot::Condvar));
    impl Drop for FailOnUnwind<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let (lock, wake) = self.0;
                lock.lock().gone = true;
                wake.notify_all();
            }
        }
    }
    let _guard = FailOnUnwind(slot);
    loop {
        let next = {
            let mut s = lock.lock();
            while s.wanted_len_bytes.is_some() && s.idle() {
                wake.wait(&mut s);
            }
            let Some(len_bytes) = s.wanted_len_bytes else {
                return;
            };
            let n = s.next_spare;
            s.next_spare += 1;
            // A spare first when none is ready (a roll may wait for it), then the
            // manifest files, then the second spare.
            let spare_first = s.ready.is_empty() && s.failed.is_none();
            if !spare_first
                && s.manifest_slots.len() < MANIFEST_SLOTS_READY_MAX
                && !s.manifest_slot_failed
            {
                Preparation::ManifestSlot {
                    name: format!("{MANIFEST_SLOT_PREFIX}-{n}{SPARE_SUFFIX}"),
                }
            } else {
                Preparation::Spare {
                    len_bytes,
                    name: format!("{SPARE_PREFIX}-{n}{SPARE_SUFFIX}"),
                }
            }
        };
        match next {
            Preparation::ManifestSlot { name } => {
                let path = dir.join(&name);
                let _ = fs::remove_file(&path);
                let made = make_segment_file(&path, MANIFEST_SLOT_BYTES);
                let mut s = lock.lock();
                match made {
                    Ok(file) if s.wanted_len_bytes.is_some() => {
                        s.manifest_slots.push_back(ManifestSlot { name, file });
                    }
                    Ok(_) => {
                        let _ = fs::remove_file(&path);
                    }
                    Err(_) => {
                        let _ = fs::remove_file(&path);
                        s.manifest_slot_failed = true;
                    }
                }
            }
            Preparation::Spare { len_bytes, name } => {
                let path = dir.join(&name);
                let _ = fs::remove_file(&path);
                let made = make_spare(dir, &path, len_bytes).and_then(|file| {
                    let map = MmapStorage::map(&file, len_bytes)?;
                    Ok((file, map))
                });
                let mut s = lock.lock();
                match made {
                    Ok((file, map)) if s.wanted_len_bytes == Some(len_bytes) => {
                        s.ready.push_back(ReadySpare {
                            name,
                            len_bytes,
                            file,
                            map,
                        });
                    }
                    Ok(_) => {
                        // Made for a length no longer wanted.
                        let _ = fs::remove_file(&path);
                    }
                    Err(e) => {
                        let _ = fs::remove_file(&path);
                        // A failure at a length no longer wanted says nothing of the new one.
                        if s.wanted_len_bytes == Some(len_bytes) {
                            s.failed = Some(PreparationError::of(&e));
                        }
                    }
                }
            }
        }
        // For `take` and `wait_ready`.
        wake.notify_all();
    }
}

impl MmapStorage {
    /// Opens (creating if missing) a data directory and locks it.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        fs::create_dir_all(dir).map_err(|e| Error::io("create data dir", e))?;
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| Error::io("open lock file", e))?;
        // SAFETY: flock(2) only needs a valid descriptor: `lock` is an open File we
        // own for the whole call (and keep open to hold the lock); it takes no
        // pointers, so no memory of ours can be touched; failure is reported in rc.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                Error::Locked
            } else {
                Error::io("lock data dir", e)
            });
        }
        // Spares an earlier run left (one may be half written: new ones are made)
        // and retired segments it had not deleted yet.
        let entries = fs::read_dir(dir).map_err(|e| Error::io("list data dir", e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list data dir", e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if is_spare_name(name) {
                fs::remove_file(entry.path())
                    .map_err(|e| Error::io("remove leftover spare segment", e))?;
            } else if name.starts_with(RETIRED_PREFIX) {
                fs::remove_file(entry.path())
                    .map_err(|e| Error::io("remove leftover retired segment", e))?;
            }
        }
        Ok(MmapStorage {
            dir: dir.to_path_buf(),
            _lock: lock,
            segments: Vec::new(),
            spare: None,
            reclaimer: None,
            retired: 0,
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn mapped(&self, seg: SegmentId) -> &Mapped {
        self.segments
            .get(seg)
            .and_then(Option::as_ref)
            .expect("segment handle is open")
    }

    fn insert(&mut self, mapped: Mapped) -> SegmentId {
        if let Some(i) = self.segments.iter().position(Option::is_none) {
            self.segments[i] = Some(mapped);
            i
        } else {
            self.segments.push(Some(mapped));
            self.segments.len() - 1
        }
    }

    fn map(file: &File, len_bytes: u64) -> io::Result<MmapMut> {
        let len = usize::try_from(len_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large to map"))?;
        // SAFETY: the file is a segment of this data directory, which the
        // exclusive flock keeps every other surge process away from; its blocks
        // were reserved with fallocate (or it is an existing segment of this
        // exact length), so no access through the map can hit a hole. Other
        // programs truncating the file under us would still be a problem that
        // no mmap user can rule out.
        unsafe { MmapOptions::new().len(len).map_mut(file) }
    }
}

/// Room a spare's preparation leaves free on the file system: the small files a
/// roll and a snapshot publication write (the temp MANIFESTs, a few KiB) must
/// never meet `ENOSPC` because a spare took the last blocks.
const SPARE_HEADROOM_BYTES: u64 = 1 << 20;

/// Bytes an unprivileged writer can still allocate on `dir`'s file system.
fn available_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in the data dir"))?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string that outlives the call; `stat`
    // points to writable memory of the struct's size, which statvfs(3) fills on
    // success (rc 0) and only then is it read.
    let rc = unsafe { libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it initialised the struct.
    let stat = unsafe { stat.assume_init() };
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Creates a spare of `len_bytes` at `path`: allocated, zeroed and synced. Refused
/// with `ENOSPC` without allocating anything when the file system has not room for
/// it and [`SPARE_HEADROOM_BYTES`] besides: a failing `fallocate` would hold the
/// last free blocks for a moment, and a roll's temp MANIFEST written meanwhile
/// would fail on a disk that has room for it.
fn make_spare(dir: &Path, path: &Path, len_bytes: u64) -> io::Result<File> {
    // A file system that cannot say (statvfs fails: some FUSE, a stale NFS handle)
    // is left to fallocate's own answer.
    if let Ok(available) = available_bytes(dir)
        && available < len_bytes.saturating_add(SPARE_HEADROOM_BYTES)
    {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    make_segment_file(path, len_bytes)
}

/// Creates a segment file of `len_bytes` at `path`: allocated, written with zeros
/// and synced; returned open for reading and writing. The sync commits the extents the zeros converted from unwritten to
/// written; left to the first commits, that metadata made them journal commits,
/// some over 100 ms while a spare was being zero-filled beside them (BENCHMARKS.md, "The
/// log was mostly padding").
fn make_segment_file(path: &Path, len_bytes: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    reserve(&file, len_bytes)?;
    zero_fill(&file, len_bytes)?;
    file.sync_all()?;
    Ok(file)
}

fn reserve(file: &File, len_bytes: u64) -> io::Result<()> {
    let len = libc::off_t::try_from(len_bytes)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "segment too large"))?;
    // SAFETY: fallocate(2) only needs a valid descriptor: `file` is borrowed open
    // for the whole call; it takes no pointers (mode 0 allocates blocks and extends
    // the size), so no memory of ours is touched; failure is reported in rc/errno.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    // Filesystems without fallocate (tmpfs on old kernels, some FUSE): glibc's
    // posix_fallocate emulates it by writing a byte into every block.
    // SAFETY: as for fallocate above: a descriptor borrowed open for the call and
    // plain integers, no pointers. (It returns the error number instead of setting
    // errno, which the code below reads accordingly.)
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// Writes zeros over the whole file. `fallocate` leaves *unwritten* extents: the
/// first write to each block then converts it, and the next sync must commit that
/// metadata change too. A segment written once with zeros is synced like any
/// overwritten file: data only (measured in `wal/commit_1_record`).
///
/// The zeros go one chunk at a time, each written back
/// before the next is dirtied. Dirtying the whole segment and syncing it once
/// would queue tens of megabytes on the device (and, in ext4's ordered mode, in
/// front of the next journal commit) while the sync thread waits there for a
/// commit: measured, 25-50 ms stalls of every durable write at each roll
/// (ARCHITECTURE.md, "The write path"). Chunk by chunk, a commit waits for at
/// most one chunk.
fn zero_fill(file: &File, len_bytes: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut at = 0;
    while at < len_bytes {
        let n = (len_bytes - at).min(CHUNK as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        write_back(file, at, n as u64)?;
        at += n as u64;
    }
    Ok(())
}

/// Starts writeback of a range and waits for it (no metadata, no cache flush:
/// the caller syncs the file once at the end).
#[cfg(target_os = "linux")]
fn write_back(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    let (Ok(offset), Ok(len)) = (
        libc::off64_t::try_from(offset),
        libc::off64_t::try_from(len),
    ) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range too large",
        ));
    };
    // SAFETY: sync_file_range(2) only needs a valid descriptor: `file` is borrowed
    // open for the call; offset, length and flags are integers (checked to fit
    // off64_t above) and no pointer is passed, so no memory of ours is touched.
    let rc = unsafe { libc::sync_file_range(file.as_raw_fd(), offset, len, flags) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn write_back(_file: &File, _offset: u64, _len: u64) -> io::Result<()> {
    Ok(())
}

fn check_range(len: usize, offset: u64, bytes: u64) -> io::Result<(usize, usize)> {
    let start = usize::try_from(offset).ok();
    let end = offset
        .checked_add(bytes)
        .and_then(|e| usize::try_from(e).ok());
    match (start, end) {
        (Some(s), Some(e)) if e <= len => Ok((s, e)),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "range outside the segment",
        )),
    }
}

impl Storage for MmapStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file()
                && let Ok(name) = entry.file_name().into_string()
                && name != LOCK_FILE
                && !is_spare_name(&name)
                && !name.starts_with(RETIRED_PREFIX)
            {
                names.push(name);
            }
        }
        Ok(names)
    }

    fn create_segment(&mut self, name: &str, len_bytes: u64) -> io::Result<SegmentId> {
        let path = self.path(name);
        if path.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, name));
        }
        if self.spare.is_none() {
            self.spare = Some(SparePreparer::start(self.dir.clone(), len_bytes)?);
        }
        let spare = self.spare.as_ref().expect("started above");
        // Prepared off this thread: allocated, zeroed, synced, opened and mapped;
        // renamed into place by the caller's roll step, off this thread too. A
        // failed preparation is this call's error (`ENOSPC`: the caller refuses
        // the record cleanly); only with the preparer gone does the segment get
        // made here.
        if let Some(spare) = spare.take(len_bytes)? {
            debug_assert_eq!(spare.len_bytes, len_bytes);
            return Ok(self.insert(Mapped {
                file: spare.file,
                map: spare.map,
                prepared_name: Some(spare.name),
            }));
        }
        // The preparer is gone: made here, as it would have, under its name.
        let mapped = make_segment_file(&path, len_bytes).and_then(|file| {
            let map = Self::map(&file, len_bytes)?;
            Ok(Mapped {
                file,
                map,
                prepared_name: None,
            })
        });
        match mapped {
            Ok(mapped) => Ok(self.insert(mapped)),
            Err(e) => {
                // Best effort: the caller is told about the first error, which
                // matters more than a failure to clean up after it.
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    fn prepared_name(&self, seg: SegmentId) -> Option<String> {
        self.mapped(seg).prepared_name.clone()
    }

    fn open_segment(&mut self, name: &str) -> io::Result<SegmentId> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(name))?;
        let len = file.metadata()?.len();
        let map = Self::map(&file, len)?;
        Ok(self.insert(Mapped {
            file,
            map,
            prepared_name: None,
        }))
    }

    fn close_segment(&mut self, seg: SegmentId) {
        if let Some(slot) = self.segments.get_mut(seg) {
            *slot = None;
        }
    }

    fn with_segment<R>(&self, seg: SegmentId, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.mapped(seg).map[..])
    }

    fn write_segment(&mut self, seg: SegmentId, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let m = self
            .segments
            .get_mut(seg)
            .and_then(Option::as_mut)
            .expect("segment handle is open");
        check_range(m.map.len(), offset, bytes.len() as u64)?;
        // pwrite, not a store through the map: the page cache is the same (the map
        // reads what was written), but a store faults on every fresh page and
        // write-protecting it again after each sync sends TLB shoot-downs to the
        // other cores (measured: `wal/commit_1_record`, ARCHITECTURE.md).
        m.file.write_all_at(bytes, offset)
    }

    fn sync_segment_range(&mut self, seg: SegmentId, offset: u64, len: u64) -> io::Result<()> {
        let m = self.mapped(seg);
        let (s, e) = check_range(m.map.len(), offset, len)?;
        m.map.flush_range(s, e - s)
    }

    fn sync_segment_all(&mut self, seg: SegmentId) -> io::Result<()> {
        let m = self.mapped(seg);
        m.map.flush()?;
        m.file.sync_all()
    }

    fn write_file(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let path = self.path(name);
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        f.write_all(bytes)
    }

    fn sync_file(&mut self, name: &str) -> io::Result<()> {
        File::open(self.path(name))?.sync_all()
    }

    fn stage_file(&mut self, name: &str, bytes: &[u8]) -> io::Result<StagedFile> {
        let len_bytes = bytes.len() as u64;
        let slot = (len_bytes <= MANIFEST_SLOT_BYTES)
            .then(|| {
                self.spare
                    .as_ref()
                    .and_then(SparePreparer::take_manifest_slot)
            })
            .flatten();
        if let Some(slot) = slot {
            // Into blocks allocated and written with zeros: no new block, no
            // `ENOSPC`. Past `len_bytes` the file holds zeros until `sync_staged`.
            return match slot.file.write_all_at(bytes, 0) {
                Ok(()) => Ok(StagedFile {
                    name: slot.name,
                    len_bytes,
                }),
                Err(e) => {
                    // A leftover is removed by the next `open`.
                    let _ = fs::remove_file(self.path(&slot.name));
                    Err(e)
                }
            };
        }
        self.write_file(name, bytes)?;
        Ok(StagedFile {
            name: name.to_string(),
            len_bytes,
        })
    }

    fn segment_syncer(&self, seg: SegmentId) -> io::Result<Arc<dyn SegmentSyncer>> {
        Ok(Arc::new(FileSyncer(self.mapped(seg).file.try_clone()?)))
    }

    fn file_writer(&self) -> Box<dyn FileWriter> {
        Box::new(DirFileWriter {
            dir: self.dir.clone(),
        })
    }

    fn prepare_segment(&mut self, len_bytes: u64) -> io::Result<()> {
        if self.spare.is_none() {
            self.spare = Some(SparePreparer::start(self.dir.clone(), len_bytes)?);
        }
        self.spare
            .as_ref()
            .expect("started above")
            .wait_ready(len_bytes)
    }

    fn start_preparing(&mut self, len_bytes: u64) {
        if self.spare.is_none() {
            // A failure is left to `create_segment`, which starts it (or reports why
            // not); `stage_file` writes a file of its own meanwhile.
            self.spare = SparePreparer::start(self.dir.clone(), len_bytes).ok();
        }
    }

    fn retire(&mut self, name: &str) {
        // Unlinked by the reclaimer, without a rename first: the name is not used
        // again while this storage is open (`remove` renames first because a name
        // removed at open, a torn tail's segment, can come back).
        if self.reclaimer.is_none() {
            match Reclaimer::start() {
                Ok(reclaimer) => self.reclaimer = Some(reclaimer),
                Err(_) => {
                    let _ = self.remove(name);
                    return;
                }
            }
        }
        if let Some(tx) = self.reclaimer.as_ref().and_then(|r| r.tx.as_ref()) {
            let _ = tx.send(self.path(name));
        }
    }

    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(name))
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        // Segments and snapshots are large: freeing their blocks goes to the
        // reclaimer; small files are unlinked here.
        if parse_segment_name(name).is_none() && parse_snapshot_name(name).is_none() {
            return fs::remove_file(self.path(name));
        }
        if self.reclaimer.is_none() {
            self.reclaimer = Some(Reclaimer::start()?);
        }
        let trash = self.path(&format!("{RETIRED_PREFIX}{}.tmp", self.retired));
        self.retired += 1;
        fs::rename(self.path(name), &trash)?;
        if let Some(tx) = self.reclaimer.as_ref().and_then(|r| r.tx.as_ref()) {
            let _ = tx.send(trash);
        }
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .filter(|name| is_spare_name(name) && !name.starts_with(MANIFEST_SLOT_PREFIX))
            .collect();
        names.sort();
        names
    }

    /// Every file in `dir`, sorted.
    fn all_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        names
    }

    /// The preparer keeps two spares ready; a roll takes the oldest without a
    /// change of the directory (no file made, none renamed: the segment's name
    /// does not exist yet, the spare still has its own), its mapping is the
    /// spare's file, and the caller's rename gives it its name; the preparer
    /// makes the next. A staged MANIFEST goes into a prepared file the same way,
    /// cut to its length by `sync_staged`. `list` never shows a spare or a
    /// prepared manifest file, and `open` removes those a run left.
    #[test]
    fn two_spares_are_kept_ready_and_each_roll_takes_the_oldest() {
        const LEN_BYTES: u64 = 16 * 4096;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut storage = MmapStorage::open(dir.path()).expect("open");
        storage
            .prepare_segment(LEN_BYTES)
            .expect("room for a spare");
        for roll in 0..3u64 {
            let ready = storage
                .spare
                .as_ref()
                .expect("a preparer")
                .wait_ready_count(SPARES_READY_MAX);
            assert_eq!(ready.len(), SPARES_READY_MAX);
            assert_eq!(spare_files(dir.path()), {
                let mut sorted = ready.clone();
                sorted.sort();
                sorted
            });
            let name = format!("wal-{roll:020}.seg");
            let files_before = all_files(dir.path());
            let seg = storage.create_segment(&name, LEN_BYTES).expect("rolled");
            let manifest = b"a MANIFEST's bytes";
            let staged = storage
                .stage_file(&format!("MANIFEST-{roll}.tmp"), manifest)
                .expect("staged");
            // Nothing renamed or removed, nothing made but the preparer's next.
            let files_after = all_files(dir.path());
            assert!(
                files_before.iter().all(|f| files_after.contains(f))
                    && files_after
                        .iter()
                        .all(|f| files_before.contains(f) || is_spare_name(f)),
                "roll {roll}: {files_before:?} became {files_after:?}"
            );
            assert!(!dir.path().join(&name).exists());
            assert_eq!(storage.prepared_name(seg).as_ref(), Some(&ready[0]));
            assert!(is_spare_name(&staged.name), "{staged:?}");
            storage
                .write_segment(seg, 4096, b"record")
                .expect("written");
            let files = storage.file_writer();
            files.rename(&ready[0], &name).expect("named");
            files.sync_staged(&staged).expect("synced");
            assert_eq!(
                fs::read(dir.path().join(&staged.name)).expect("staged"),
                manifest
            );
            fs::remove_file(dir.path().join(&staged.name)).expect("remove staged");
            let segment = fs::read(dir.path().join(&name)).expect("segment");
            assert_eq!(segment.len() as u64, LEN_BYTES);
            assert_eq!(&segment[4096..4102], b"record");
            let listed = storage.list().expect("list");
            assert!(listed.iter().all(|n| !is_spare_name(n)), "{listed:?}");
        }
        drop(storage);
        assert!(
            !spare_files(dir.path()).is_empty(),
            "the run left its spares"
        );
        assert!(
            all_files(dir.path())
                .iter()
                .any(|f| f.starts_with(MANIFEST_SLOT_PREFIX)),
            "the run left its prepared manifest files"
        );
        let reopened = MmapStorage::open(dir.path()).expect("reopen");
        let left: Vec<String> = all_files(dir.path())
            .into_iter()
            .filter(|f| is_spare_name(f))
            .collect();
        assert_eq!(left, Vec::<String>::new());
        assert_eq!(reopened.list().expect("list").len(), 3);
    }

    /// `len` bytes of a pattern starting on a page boundary, in a buffer of their own.
    fn page_aligned(len: usize, seed: u8) -> (Vec<u8>, usize) {
        let mut buf = vec![0u8; len + DIRECT_ALIGN_BYTES];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
        for (i, b) in buf[start..start + len].iter_mut().enumerate() {
            *b = seed.wrapping_add((i % 251) as u8);
        }
        (buf, start)
    }

    /// A preparer of `len_bytes` spares in a temp dir, with its spares ready.
    fn spares_ready(len_bytes: u64) -> (tempfile::TempDir, SparePreparer) {
        let dir = tempfile::tempdir().expect("tempdir");
        let spares = SparePreparer::start(dir.path().to_path_buf(), len_bytes).expect("start");
        spares.wait_ready_count(SPARES_READY_MAX);
        (dir, spares)
    }

    /// A preparation that failed for want of space.
    fn no_space() -> Option<PreparationError> {
        Some(PreparationError::of(&io::Error::from_raw_os_error(
            libc::ENOSPC,
        )))
    }

    /// A failed preparation does not hide a spare that is ready: the roll takes the
    /// ready one. A roll asking for another length is served one of that length (the
    /// preparer, idle with its two ready, is woken to make it).
    #[test]
    fn a_roll_takes_a_ready_spare_after_a_failure_and_a_new_length_wakes_the_preparer() {
        const LEN_BYTES: u64 = 4 * 4096;
        let (dir, spares) = spares_ready(LEN_BYTES);
        // As if the next preparation had failed (a disk with room for no more).
        spares.slot.0.lock().failed = no_space();
        let first = spares
            .take(LEN_BYTES)
            .expect("take")
            .expect("the ready spare was skipped");
        assert_eq!(first.map.len() as u64, LEN_BYTES);
        assert!(dir.path().join(&first.name).exists());

        spares.slot.0.lock().failed = None;
        spares.slot.1.notify_all();
        spares.wait_ready_count(SPARES_READY_MAX);
        let longer = spares
            .take(2 * LEN_BYTES)
            .expect("take")
            .expect("the preparer is alive");
        assert_eq!(
            fs::metadata(dir.path().join(&longer.name))
                .expect("prepared")
                .len(),
            2 * LEN_BYTES
        );
    }

    /// A roll that finds no spare ready and a failed preparation behind it asks for
    /// a fresh attempt and takes its spare (the disk has room again), instead of
    /// failing on the stale failure.
    #[test]
    fn a_roll_after_a_failed_preparation_takes_the_fresh_attempts_spare() {
        const LEN_BYTES: u64 = 4 * 4096;
        let (dir, spares) = spares_ready(LEN_BYTES);
        {
            let mut slot = spares.slot.0.lock();
            for spare in slot.ready.drain(..) {
                fs::remove_file(dir.path().join(spare.name)).expect("remove spare");
            }
            slot.failed = no_space();
        }
        let spare = spares
            .take(LEN_BYTES)
            .expect("a fresh attempt succeeds")
            .expect("the preparer is alive");
        assert_eq!(
            fs::metadata(dir.path().join(&spare.name))
                .expect("prepared")
                .len(),
            LEN_BYTES
        );
    }

    /// A snapshot-sized file of page-aligned parts is written around the page cache
    /// (or as before where the file system refuses) and reads back byte for byte,
    /// its partial last page cut back; parts that are not aligned, or too small,
    /// take the buffered path and read back the same.
    #[test]
    fn a_file_written_synced_reads_back_whatever_path_it_took() {
        let dir = tempfile::tempdir().expect("tempdir");
        let writer = DirFileWriter {
            dir: dir.path().to_path_buf(),
        };
        let (a, a_at) = page_aligned(DIRECT_MIN_BYTES, 1);
        let (b, b_at) = page_aligned(3 * DIRECT_ALIGN_BYTES + 1_234, 7);
        let whole = &a[a_at..a_at + DIRECT_MIN_BYTES];
        let last = &b[b_at..b_at + 3 * DIRECT_ALIGN_BYTES + 1_234];
        let cases: [(&str, Vec<&[u8]>, bool); 4] = [
            ("direct", vec![whole, last], true),
            (
                "direct-pages-only",
                vec![whole, &last[..DIRECT_ALIGN_BYTES]],
                true,
            ),
            ("unaligned", vec![whole, &last[1..]], false),
            ("small", vec![&last[..100]], false),
        ];
        for (name, parts, direct) in cases {
            assert_eq!(direct_writable(&parts), direct, "{name}");
            writer.write_synced(name, &parts).expect("written");
            let read = fs::read(dir.path().join(name)).expect("read");
            assert_eq!(read, parts.concat(), "{name}");
        }
        // The direct path itself, where this file system takes it.
        let parts = [whole, last];
        match write_direct(&dir.path().join("by-hand"), &parts) {
            Ok(()) => {
                let read = fs::read(dir.path().join("by-hand")).expect("read");
                assert_eq!(read, parts.concat());
            }
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}"),
        }
    }
}
