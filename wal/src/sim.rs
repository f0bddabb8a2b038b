//! A simulated disk for tests: what a power loss at any point would leave.
//!
//! Every file has a *written* image (what reads see) and a *durable* image
//! (what survives a crash). Directory entries likewise: the current directory
//! and the durable one, plus the list of directory operations since the last
//! directory sync. [`SimStorage::crash`] builds the disk a power loss would
//! leave: a prefix of the unsynced directory operations survives (journaling
//! file systems commit metadata in order), and every 4096-byte page whose
//! written content differs from its durable content is kept, dropped, torn
//! (a sector-aligned prefix kept) or garbled, as a seeded RNG decides.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::Arc;

use parking_lot::Mutex;
use rand_core::{Rng as _, SeedableRng};
use rand_xoshiro::SplitMix64;

use crate::PAGE_BYTES;
use crate::storage::{SegmentId, SegmentSyncer, Storage};

const SECTOR_BYTES: usize = 512;

/// Uniform-ish in `0..n` (`n > 0`): the simple modulo, so that a seed keeps
/// naming the crash it named before the generator came from `rand_xoshiro`.
fn below(rng: &mut SplitMix64, n: u64) -> u64 {
    assert!(n > 0);
    rng.next_u64() % n
}

#[derive(Clone, Debug, Default)]
struct SimFile {
    written: Vec<u8>,
    durable: Vec<u8>,
}

type FileId = u64;

#[derive(Clone, Debug)]
enum DirOp {
    Create { name: String, id: FileId },
    Rename { from: String, to: String },
    Remove { name: String },
}

fn apply(dir: &mut BTreeMap<String, FileId>, op: &DirOp) {
    match op {
        DirOp::Create { name, id } => {
            dir.insert(name.clone(), *id);
        }
        DirOp::Rename { from, to } => {
            if let Some(id) = dir.remove(from) {
                dir.insert(to.clone(), id);
            }
        }
        DirOp::Remove { name } => {
            dir.remove(name);
        }
    }
}

#[derive(Clone, Debug, Default)]
struct SimState {
    files: HashMap<FileId, SimFile>,
    next_id: FileId,
    dir: BTreeMap<String, FileId>,
    durable_dir: BTreeMap<String, FileId>,
    pending_dir_ops: Vec<DirOp>,
    handles: Vec<Option<FileId>>,
    fail_next_sync: bool,
    /// The disk dies at the first sync at or after this op.
    fail_from_sync_after_op: Option<u64>,
    disk_full: bool,
    small_files_full: bool,
    ops: u64,
    fail_from_op: Option<u64>,
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("simulated failure: {what}"))
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("no file {name}"))
}

/// The name a segment is made under until its roll step renames it.
fn prepared_name(id: FileId) -> String {
    format!("{PREPARED_PREFIX}{id}.tmp")
}

const PREPARED_PREFIX: &str = "wal-spare-";

fn is_prepared_name(name: &str) -> bool {
    name.starts_with(PREPARED_PREFIX)
}

fn no_space() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

impl SimState {
    /// Counts a mutating operation and fails it if a failure was armed for it.
    fn step(&mut self, what: &str) -> io::Result<()> {
        self.ops += 1;
        match self.fail_from_op {
            Some(n) if self.ops >= n => Err(injected(what)),
            _ => Ok(()),
        }
    }

    fn sync_step(&mut self, what: &str) -> io::Result<()> {
        if self
            .fail_from_sync_after_op
            .is_some_and(|n| self.ops + 1 >= n)
        {
            // The disk dies at this sync: it and everything after it fail.
            self.fail_from_op = Some(self.ops + 1);
        }
        self.step(what)?;
        if std::mem::take(&mut self.fail_next_sync) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        Ok(())
    }

    fn dir_op(&mut self, op: DirOp) {
        apply(&mut self.dir, &op);
        self.pending_dir_ops.push(op);
    }

    fn id(&self, name: &str) -> io::Result<FileId> {
        self.dir.get(name).copied().ok_or_else(|| not_found(name))
    }

    fn handle(&self, seg: SegmentId) -> FileId {
        self.handles
            .get(seg)
            .copied()
            .flatten()
            .expect("segment handle is open")
    }

    fn file_mut(&mut self, id: FileId) -> &mut SimFile {
        self.files
            .get_mut(&id)
            .expect("directory entries point at files")
    }

    /// Makes the pages covering `offset..offset + len` of a file durable (msync).
    fn sync_file_range(&mut self, id: FileId, offset: u64, len: u64) -> io::Result<()> {
        self.sync_step("msync")?;
        let file = self.file_mut(id);
        let page = PAGE_BYTES as usize;
        let start = (offset as usize / page) * page;
        let end = ((offset + len) as usize).div_ceil(page) * page;
        let end = end.min(file.written.len());
        if file.durable.len() < file.written.len() {
            file.durable.resize(file.written.len(), 0);
        }
        let start = start.min(end);
        let (written, durable) = (&file.written, &mut file.durable);
        durable[start..end].copy_from_slice(&written[start..end]);
        Ok(())
    }

    fn new_handle(&mut self, id: FileId) -> SegmentId {
        self.handles.push(Some(id));
        self.handles.len() - 1
    }
}

/// [`SegmentSyncer`] of the simulated disk: syncs by file, so it outlives the handle.
struct SimSyncer {
    state: Arc<Mutex<SimState>>,
    id: FileId,
}

impl SegmentSyncer for SimSyncer {
    fn sync_range(&self, offset: u64, len: u64) -> io::Result<()> {
        self.state.lock().sync_file_range(self.id, offset, len)
    }
}

/// In-memory disk for tests. Clones share the same disk.
#[derive(Clone, Debug, Default)]
pub struct SimStorage {
    state: Arc<Mutex<SimState>>,
}

impl SimStorage {
    pub fn new() -> Self {
        SimStorage::default()
    }

    /// Simulated power loss: a new, independent disk holding only what would
    /// survive. Deterministic for a given seed and history.
    pub fn crash(&self, seed: u64) -> SimStorage {
        self.crash_with_report(seed).0
    }

    /// [`SimStorage::crash`], and what the power loss destroyed: the same disk
    /// for the same seed and history, so a test can check that its faults
    /// really fired.
    pub fn crash_with_report(&self, seed: u64) -> (SimStorage, CrashReport) {
        let st = self.state.lock();
        let mut report = CrashReport {
            dir_ops_pending: st.pending_dir_ops.len(),
            ..CrashReport::default()
        };
        let mut rng = SplitMix64::seed_from_u64(seed);
        let mut dir = st.durable_dir.clone();
        let kept_ops = below(&mut rng, st.pending_dir_ops.len() as u64 + 1) as usize;
        report.dir_ops_lost = st.pending_dir_ops.len() - kept_ops;
        for op in &st.pending_dir_ops[..kept_ops] {
            apply(&mut dir, op);
        }
        // What the next open of a real disk removes first.
        dir.retain(|name, _| !is_prepared_name(name));
        let mut files = HashMap::new();
        for (name, &id) in &dir {
            if files.contains_key(&id) {
                continue;
            }
            let image = crash_image(name, &st.files[&id], &mut rng, &mut report);
            files.insert(
                id,
                SimFile {
                    written: image.clone(),
                    durable: image,
                },
            );
        }
        let state = SimState {
            files,
            next_id: st.next_id,
            durable_dir: dir.clone(),
            dir,
            ..SimState::default()
        };
        let crashed = SimStorage {
            state: Arc::new(Mutex::new(state)),
        };
        (crashed, report)
    }

    /// An independent deep copy of the disk as it is now (nothing lost).
    pub fn fork(&self) -> SimStorage {
        let mut st = self.state.lock().clone();
        st.handles.clear();
        SimStorage {
            state: Arc::new(Mutex::new(st)),
        }
    }

    /// The next msync/fsync (of any kind) reports an I/O error and syncs nothing.
    pub fn fail_next_sync(&self) {
        self.state.lock().fail_next_sync = true;
    }

    /// While full, creating a segment or writing a small file fails with ENOSPC.
    pub fn set_disk_full(&self, full: bool) {
        self.state.lock().disk_full = full;
    }

    /// While set, writing a small file (a snapshot, the MANIFEST) fails with
    /// ENOSPC while segments can still be created: the disk fills up between
    /// two steps.
    pub fn set_small_files_full(&self, full: bool) {
        self.state.lock().small_files_full = full;
    }

    /// The disk dies at the `step`-th mutating operation from now (0 = the
    /// next one): that operation and every later one fail and change nothing.
    /// Follow with [`SimStorage::crash`] to see what the death left behind.
    pub fn fail_at_step(&self, step: u64) {
        let mut st = self.state.lock();
        st.fail_from_op = Some(st.ops + 1 + step);
    }

    /// The disk dies at the first sync at least `step` operations from now: that
    /// sync and every operation after it fail (so what was written before it is
    /// on the disk unsynced when the power goes).
    pub fn fail_at_sync_after_step(&self, step: u64) {
        let mut st = self.state.lock();
        st.fail_from_sync_after_op = Some(st.ops + 1 + step);
    }

    /// Clears failures armed with `fail_at_step`, `fail_at_sync_after_step` and
    /// `fail_next_sync`.
    pub fn clear_failures(&self) {
        let mut st = self.state.lock();
        st.fail_from_op = None;
        st.fail_from_sync_after_op = None;
        st.fail_next_sync = false;
    }

    /// Mutating operations performed so far (to size `fail_at_step` loops).
    pub fn op_count(&self) -> u64 {
        self.state.lock().ops
    }

    /// Bit rot: xors a byte of a file in both images.
    pub fn corrupt(&self, file: &str, offset: u64, xor: u8) {
        self.edit(file, |image| {
            if let Some(b) = image.get_mut(offset as usize) {
                *b ^= xor;
            }
        });
    }

    /// Zeroes a file from `offset` to its end in both images (a torn tail that
    /// lost everything from there on).
    pub fn zero_from(&self, file: &str, offset: u64) {
        self.edit(file, |image| {
            let from = (offset as usize).min(image.len());
            image[from..].fill(0);
        });
    }

    /// Overwrites bytes of a file in both images.
    pub fn overwrite(&self, file: &str, offset: u64, bytes: &[u8]) {
        self.edit(file, |image| {
            let from = (offset as usize).min(image.len());
            let to = (from + bytes.len()).min(image.len());
            image[from..to].copy_from_slice(&bytes[..to - from]);
        });
    }

    /// The written image of a file in the current directory.
    pub fn file_bytes(&self, file: &str) -> Option<Vec<u8>> {
        let st = self.state.lock();
        let id = st.dir.get(file)?;
        Some(st.files[id].written.clone())
    }

    /// Names in the current directory, sorted.
    pub fn file_names(&self) -> Vec<String> {
        self.state.lock().dir.keys().cloned().collect()
    }

    fn edit(&self, file: &str, f: impl Fn(&mut Vec<u8>)) {
        let mut st = self.state.lock();
        let Some(&id) = st.dir.get(file) else { return };
        let sim = st.file_mut(id);
        f(&mut sim.written);
        f(&mut sim.durable);
    }
}

/// What a simulated power loss did ([`SimStorage::crash_with_report`]), counted
/// over the files that survive in the directory. A page is *unsynced* when its
/// written content differs from its durable content.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Directory operations (create, rename, remove) not yet made durable.
    pub dir_ops_pending: usize,
    /// Of those, how many the crash undid (the newest ones).
    pub dir_ops_lost: usize,
    /// Unsynced pages in the surviving files.
    pub pages_unsynced: u64,
    /// Unsynced pages that kept their new content whole.
    pub pages_kept: u64,
    /// Unsynced pages that went back to their durable content.
    pub pages_dropped: u64,
    /// Unsynced pages torn: a sector-aligned prefix (possibly empty) of the new
    /// content over the durable content.
    pub pages_torn: u64,
    /// Unsynced pages filled with random bytes.
    pub pages_garbled: u64,
    /// Which: (file name, page index), in name order.
    pub garbled: Vec<(String, u64)>,
    /// Files cut back to their durable length, shorter than what was written.
    pub files_shortened: usize,
}

impl CrashReport {
    /// Whether the crash destroyed anything: an unsynced page dropped, torn or
    /// garbled, a file shortened, or a directory operation undone.
    pub fn lost_anything(&self) -> bool {
        self.pages_dropped + self.pages_torn + self.pages_garbled > 0
            || self.files_shortened > 0
            || self.dir_ops_lost > 0
    }
}

/// What one file holds after a power loss.
fn crash_image(
    name: &str,
    file: &SimFile,
    rng: &mut SplitMix64,
    report: &mut CrashReport,
) -> Vec<u8> {
    let len = if file.written.len() == file.durable.len() || below(rng, 2) == 0 {
        file.durable.len()
    } else {
        file.written.len()
    };
    if len < file.written.len() {
        report.files_shortened += 1;
    }
    let mut image = vec![0u8; len];
    let page = PAGE_BYTES as usize;
    for start in (0..len).step_by(page) {
        let end = (start + page).min(len);
        let pick = |src: &[u8], i: usize| src.get(i).copied().unwrap_or(0);
        let same = (start..end).all(|i| pick(&file.written, i) == pick(&file.durable, i));
        let choice = if same { 1 } else { below(rng, 4) };
        if !same {
            report.pages_unsynced += 1;
            match choice {
                0 => report.pages_kept += 1,
                1 => report.pages_dropped += 1,
                2 => report.pages_torn += 1,
                _ => {
                    report.pages_garbled += 1;
                    report
                        .garbled
                        .push((name.to_string(), (start / page) as u64));
                }
            }
        }
        let torn_at = start + SECTOR_BYTES * below(rng, (page / SECTOR_BYTES) as u64) as usize;
        for (i, byte) in image.iter_mut().enumerate().take(end).skip(start) {
            *byte = match choice {
                0 => pick(&file.written, i),
                1 => pick(&file.durable, i),
                2 if i < torn_at => pick(&file.written, i),
                2 => pick(&file.durable, i),
                _ => rng.next_u64() as u8,
            };
        }
    }
    image
}

/// The background writer shares the simulated disk (and its failure injection).
impl crate::storage::FileWriter for SimStorage {
    fn write_synced(&self, name: &str, parts: &[&[u8]]) -> io::Result<()> {
        let mut disk = self.clone();
        disk.write_file(name, &parts.concat())?;
        disk.sync_file(name)
    }

    fn sync_file(&self, name: &str) -> io::Result<()> {
        Storage::sync_file(&mut self.clone(), name)
    }

    fn sync_staged(&self, staged: &crate::storage::StagedFile) -> io::Result<()> {
        let mut st = self.state.lock();
        st.sync_step("fsync file")?;
        let id = st.id(&staged.name)?;
        let file = st.file_mut(id);
        file.written.truncate(staged.len_bytes as usize);
        file.durable = file.written.clone();
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Storage::rename(&mut self.clone(), from, to)
    }

    fn sync_dir(&self) -> io::Result<()> {
        Storage::sync_dir(&mut self.clone())
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        Storage::remove(&mut self.clone(), name)
    }
}

impl Storage for SimStorage {
    fn list(&self) -> io::Result<Vec<String>> {
        // Prepared segments are storage-internal, as on a real disk.
        let mut names = self.file_names();
        names.retain(|name| !is_prepared_name(name));
        Ok(names)
    }

    fn create_segment(&mut self, name: &str, len_bytes: u64) -> io::Result<SegmentId> {
        let mut st = self.state.lock();
        st.step("create segment")?;
        if st.disk_full {
            return Err(no_space());
        }
        if st.dir.contains_key(name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                name.to_string(),
            ));
        }
        let id = st.next_id;
        st.next_id += 1;
        let written = vec![0u8; len_bytes as usize];
        st.files.insert(
            id,
            SimFile {
                written,
                durable: Vec::new(),
            },
        );
        // Made under a prepared name, as `MmapStorage` maps a prepared spare: the
        // caller renames it into place (its roll step), so a crash before that
        // step leaves it unnamed.
        let prepared = prepared_name(id);
        st.dir_op(DirOp::Create { name: prepared, id });
        Ok(st.new_handle(id))
    }

    fn prepared_name(&self, seg: SegmentId) -> Option<String> {
        let st = self.state.lock();
        let id = st.handle(seg);
        let prepared = prepared_name(id);
        (st.dir.get(&prepared) == Some(&id)).then_some(prepared)
    }

    fn open_segment(&mut self, name: &str) -> io::Result<SegmentId> {
        let mut st = self.state.lock();
        let id = st.id(name)?;
        Ok(st.new_handle(id))
    }

    fn close_segment(&mut self, seg: SegmentId) {
        if let Some(h) = self.state.lock().handles.get_mut(seg) {
            *h = None;
        }
    }

    fn with_segment<R>(&self, seg: SegmentId, f: impl FnOnce(&[u8]) -> R) -> R {
        let st = self.state.lock();
        let id = st.handle(seg);
        f(&st.files[&id].written)
    }

    fn write_segment(&mut self, seg: SegmentId, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        st.step("write segment")?;
        let id = st.handle(seg);
        let file = st.file_mut(id);
        let start = offset as usize;
        let end = start + bytes.len();
        if end > file.written.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the segment",
            ));
        }
        file.written[start..end].copy_from_slice(bytes);
        Ok(())
    }

    fn sync_segment_range(&mut self, seg: SegmentId, offset: u64, len: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        let id = st.handle(seg);
        st.sync_file_range(id, offset, len)
    }

    fn segment_syncer(&self, seg: SegmentId) -> io::Result<Arc<dyn SegmentSyncer>> {
        let id = self.state.lock().handle(seg);
        Ok(Arc::new(SimSyncer {
            state: Arc::clone(&self.state),
            id,
        }))
    }

    fn sync_segment_all(&mut self, seg: SegmentId) -> io::Result<()> {
        let mut st = self.state.lock();
        st.sync_step("fsync segment")?;
        let id = st.handle(seg);
        let file = st.file_mut(id);
        file.durable = file.written.clone();
        Ok(())
    }

    /// As `MmapStorage` writes into a prepared file: under a prepared name, and
    /// longer than what was written (zeros to the next page) until `sync_staged`
    /// cuts it, so a MANIFEST installed uncut would not decode. A full disk still
    /// refuses it: the sim has no prepared files, so this is the fallback's file.
    fn stage_file(&mut self, _name: &str, bytes: &[u8]) -> io::Result<crate::storage::StagedFile> {
        let mut st = self.state.lock();
        st.step("write file")?;
        if st.disk_full || st.small_files_full {
            return Err(no_space());
        }
        let id = st.next_id;
        st.next_id += 1;
        let mut written = bytes.to_vec();
        written.resize(bytes.len().next_multiple_of(PAGE_BYTES as usize), 0);
        st.files.insert(
            id,
            SimFile {
                written,
                durable: Vec::new(),
            },
        );
        let name = format!("{PREPARED_PREFIX}manifest-{id}.tmp");
        st.dir_op(DirOp::Create {
            name: name.clone(),
            id,
        });
        Ok(crate::storage::StagedFile {
            name,
            len_bytes: bytes.len() as u64,
        })
    }

    fn write_file(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        let mut st = self.state.lock();
        st.step("write file")?;
        // As on a real disk: the file is created (or cut) before its bytes are
        // refused, and is left behind, empty.
        let full = st.disk_full || st.small_files_full;
        let bytes = if full { &[][..] } else { bytes };
        match st.dir.get(name).copied() {
            Some(id) => st.file_mut(id).written = bytes.to_vec(),
            None => {
                let id = st.next_id;
                st.next_id += 1;
                st.files.insert(
                    id,
                    SimFile {
                        written: bytes.to_vec(),
                        durable: Vec::new(),
                    },
                );
                st.dir_op(DirOp::Create {
                    name: name.to_string(),
                    id,
                });
            }
        }
        if full {
            return Err(no_space());
        }
        Ok(())
    }

    fn sync_file(&mut self, name: &str) -> io::Result<()> {
        let mut st = self.state.lock();
        st.sync_step("fsync file")?;
        let id = st.id(name)?;
        let file = st.file_mut(id);
        file.durable = file.written.clone();
        Ok(())
    }

    fn file_writer(&self) -> Box<dyn crate::storage::FileWriter> {
        Box::new(self.clone())
    }

    fn read_file(&self, name: &str) -> io::Result<Vec<u8>> {
        let st = self.state.lock();
        let id = st.id(name)?;
        Ok(st.files[&id].written.clone())
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let mut st = self.state.lock();
        st.step("rename")?;
        st.id(from)?;
        st.dir_op(DirOp::Rename {
            from: from.to_string(),
            to: to.to_string(),
        });
        Ok(())
    }

    fn remove(&mut self, name: &str) -> io::Result<()> {
        let mut st = self.state.lock();
        st.step("remove")?;
        st.id(name)?;
        st.dir_op(DirOp::Remove {
            name: name.to_string(),
        });
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let mut st = self.state.lock();
        st.sync_step("fsync dir")?;
        st.durable_dir = st.dir.clone();
        st.pending_dir_ops.clear();
        Ok(())
    }

    /// Nothing is prepared ahead here (`create_segment` makes it), but a full
    /// disk says so now, as a real preparation would find it.
    fn prepare_segment(&mut self, _len_bytes: u64) -> io::Result<()> {
        if self.state.lock().disk_full {
            return Err(no_space());
        }
        Ok(())
    }
}
