//! The process's allocator: mimalloc, asked through its plain entry points.
//!
//! A `GlobalAlloc` that passes every layout to `mi_malloc_aligned` (as the usual
//! wrapper crate does) sends most of the process's allocations down mimalloc's
//! aligned path. That path has a fast case only for blocks of at most 1 KiB; a
//! larger block whose size is not a power of two goes to the over-allocating
//! fallback, which asks for `size + alignment` and offsets into it. A batch's
//! buffers, a reply's body, a snapshot's chunks: all of those, on every request.
//! Yet every block mimalloc hands out is aligned to a pointer's size at least, so a
//! layout that asks for no more than that needs nothing but `mi_malloc`. Only
//! layouts aligned beyond it take the aligned entry points. Measured in BENCHMARKS.md
//! ("mimalloc's aligned path", 2026-12-02).

#![allow(unsafe_code, reason = "a global allocator is unsafe to implement")]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment of every block `mi_malloc` returns, whatever its size: blocks are
/// whole words, carved from word-aligned pages. (mimalloc's own `mi_realloc_aligned`
/// relies on the same: it reallocates plainly at this alignment or less.) Not so
/// in a build with mimalloc's guarded pages (its `debug` feature) sampling
/// allocations: a guarded block ends at its guard page, wherever that puts its
/// start. This crate does not enable that feature.
const PLAIN_ALIGN: usize = std::mem::size_of::<usize>();

/// Zeroed blocks up to this size are a plain allocation and a `memset`. mimalloc
/// zeroes a block with `rep stosb`, whose start-up costs more than the whole
/// `memset` of a short block: bincode decodes every string into a zeroed buffer, and
/// those zeroings were 5 % of a log replay's time (BENCHMARKS.md, 2026-12-02). Larger blocks
/// keep `mi_zalloc`, which skips the zeroing where the memory is fresh from the OS.
const ZEROED_BY_MEMSET_BYTES_MAX: usize = 1024;

/// mimalloc as the global allocator:
/// `#[global_allocator] static ALLOCATOR: surge_alloc::Mimalloc = surge_alloc::Mimalloc;`
#[derive(Debug, Clone, Copy, Default)]
pub struct Mimalloc;

// SAFETY: every method returns what mimalloc returns for a layout it satisfies:
// a block of at least `layout.size()` bytes aligned to `layout.align()` (plain entry
// points only when that alignment is at most `PLAIN_ALIGN`, which every mimalloc
// block has), or null on failure; blocks are freed by `mi_free`, which takes blocks
// from any of these entry points.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: mimalloc's allocation functions take any size and a power-of-two
        // alignment, which `Layout` guarantees.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if layout.align() <= PLAIN_ALIGN && layout.size() <= ZEROED_BY_MEMSET_BYTES_MAX {
                let block: *mut u8 = mi::mi_malloc(layout.size()).cast();
                if !block.is_null() {
                    block.write_bytes(0, layout.size());
                }
                block
            } else if layout.align() <= PLAIN_ALIGN {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from one of this allocator's entry points (the
        // `GlobalAlloc` contract), all of which `mi_free` takes.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is live and from this allocator; the new block keeps the
        // layout's alignment: plain blocks have `PLAIN_ALIGN`, larger alignments go
        // through the aligned entry point.
        unsafe {
            if layout.align() <= PLAIN_ALIGN {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

/// The size of the blocks `pretouch` takes: well inside mimalloc's arenas (blocks of
/// tens of MiB would come straight from the OS and go straight back), large enough
/// that a few thousand of them cover gigabytes.
const PRETOUCH_BLOCK_BYTES: usize = 64 << 10;

/// The page size every touch steps by: one write per page faults it in (with
/// transparent huge pages, its whole 2 MiB page).
const TOUCH_STRIDE_BYTES: usize = 4096;

/// mimalloc's `mi_option_purge_delay` (mimalloc.h, v3's `mi_option_e`): how long
/// freed memory stays mapped before it goes back to the OS, in ms; -1 never.
const MI_OPTION_PURGE_DELAY: i32 = 15;

/// Bytes `pretouch` touched in this process (0: none).
static PRETOUCHED_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Bytes made resident by [`pretouch`] in this process so far.
pub fn pretouched_bytes() -> usize {
    PRETOUCHED_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

unsafe extern "C" {
    fn mi_option_get(option: i32) -> std::ffi::c_long;
    fn mi_option_set(option: i32, value: std::ffi::c_long);
}

/// Makes `bytes` of the allocator's memory resident now, before the state needs
/// it, and keeps all memory the process frees from now on mapped (mimalloc never
/// purges it). Returns the bytes touched.
///
/// Memory fresh from the OS costs its first touch: the kernel zeroes every page,
/// and under a hypervisor the host backs it first. On the 2-vCPU KVM box the
/// BENCHMARKS.md measures that first touch at 0.3-0.6 GB/s, against 1.9-3.1 GB/s (4 KiB
/// pages) or 16-23 GB/s (2 MiB pages) for the same amount touched again in the
/// same process; a growing state paid it on the writer and the
/// follower for every new reservation. Touched at start-up instead, the sale
/// allocates from pages already there (the JVM's `AlwaysPreTouch`, TigerBeetle's
/// memory allocated up front). The blocks are freed again at once: they stay in
/// mimalloc's arenas, committed and resident, for whatever the threads allocate.
///
/// Call it once, at start-up, before the state is built (the server calls it on a
/// blocking thread while its HTTP workers already answer `/readyz` with 503: the
/// purge delay is a plain store that mimalloc reads at each purge). It overrides
/// a `MIMALLOC_PURGE_DELAY` set in the environment.
pub fn pretouch(bytes: usize) -> Result<usize, PretouchError> {
    // SAFETY: setting an option mimalloc reads at each purge; any value is allowed.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    let layout = Layout::from_size_align(PRETOUCH_BLOCK_BYTES, PLAIN_ALIGN).expect("valid layout");
    let blocks_len = bytes.div_ceil(PRETOUCH_BLOCK_BYTES);
    let mut blocks: Vec<*mut u8> = Vec::with_capacity(blocks_len);
    let mut failed = false;
    for _ in 0..blocks_len {
        // SAFETY: a non-zero size; the block is written only within its size.
        let block = unsafe { Mimalloc.alloc(layout) };
        if block.is_null() {
            failed = true;
            break;
        }
        for offset in (0..PRETOUCH_BLOCK_BYTES).step_by(TOUCH_STRIDE_BYTES) {
            // SAFETY: `offset` is within the block; volatile, so the write that
            // faults the page in is not elided.
            unsafe { block.add(offset).write_volatile(0) };
        }
        blocks.push(block);
    }
    let touched = blocks.len() * PRETOUCH_BLOCK_BYTES;
    PRETOUCHED_BYTES.fetch_add(touched, std::sync::atomic::Ordering::Relaxed);
    for block in blocks {
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { Mimalloc.dealloc(block, layout) };
    }
    if failed {
        return Err(PretouchError {
            bytes,
            touched_bytes: touched,
        });
    }
    Ok(touched)
}

/// The allocator ran out of memory `touched_bytes` into a pretouch of `bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PretouchError {
    pub bytes: usize,
    pub touched_bytes: usize,
}

impl std::fmt::Display for PretouchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "out of memory after touching {} of {} MiB",
            self.touched_bytes >> 20,
            self.bytes >> 20
        )
    }
}

impl std::error::Error for PretouchError {}

/// mimalloc's purge delay now, in ms (-1: freed memory is never given back).
pub fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: reading an option has no precondition.
    unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resident_bytes() -> usize {
        let status = std::fs::read_to_string("/proc/self/status").expect("Linux /proc");
        let kib: usize = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in kB");
        kib << 10
    }

    /// The option index is mimalloc's purge delay (its v3 default, 1000 ms, unless
    /// the environment set one); a pretouch leaves its memory resident after its
    /// blocks are freed, and turns purging off so that it stays.
    #[test]
    fn pretouched_memory_is_resident_and_never_purged() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 1000);
        }
        const BYTES: usize = 96 << 20;
        let before = resident_bytes();
        assert!(before < BYTES, "{} MiB resident already", before >> 20);
        assert_eq!(pretouch(BYTES), Ok(BYTES));
        // All the blocks were live and touched at once, and stay mapped once
        // freed: at least that much is resident. (Not "before + BYTES": the other
        // tests of this binary free memory the pretouch may take, resident already.)
        let after = resident_bytes();
        assert!(
            after >= BYTES,
            "resident {} MiB before, {} MiB after touching {} MiB",
            before >> 20,
            after >> 20,
            BYTES >> 20
        );
        assert_eq!(purge_delay_ms(), -1);
        assert_eq!(pretouched_bytes(), BYTES);
    }

    /// A zeroed block is zeroed even where its memory was just used: mimalloc hands
    /// the block freed last back first, so each size gets the dirty block again.
    #[test]
    fn a_zeroed_block_is_zeroed_when_reused() {
        for size in (1..=1100).step_by(7).chain([1023, 1024, 1025]) {
            let layout = Layout::from_size_align(size, 8).expect("valid layout");
            // SAFETY: non-zero sizes; each block is used within its size and freed
            // once, with its layout.
            unsafe {
                let dirty = Mimalloc.alloc(layout);
                assert!(!dirty.is_null());
                dirty.write_bytes(0xa5, size);
                Mimalloc.dealloc(dirty, layout);
                let zeroed = Mimalloc.alloc_zeroed(layout);
                assert!(!zeroed.is_null());
                assert!(
                    std::slice::from_raw_parts(zeroed, size)
                        .iter()
                        .all(|&b| b == 0),
                    "size {size}"
                );
                Mimalloc.dealloc(zeroed, layout);
            }
        }
    }

    /// Sizes from 1 B to about 768 KiB, at every alignment from 1 B to 4 KiB, sizes
    /// below the alignment included: the block is aligned, writable over its whole
    /// size, zeroed when asked, and keeps its bytes through growing and shrinking
    /// reallocations.
    #[test]
    fn blocks_are_aligned_zeroed_and_kept_through_realloc() {
        let sizes = (0..20)
            .map(|shift| 1usize << shift)
            .flat_map(|size| [size, size + 1, size + size / 2 + 7]);
        for size in sizes {
            for align in (0..=12).map(|shift| 1usize << shift) {
                let layout = Layout::from_size_align(size, align).expect("valid layout");
                // SAFETY: the layout has a non-zero size; each block is used within
                // its size and freed once, with its layout.
                unsafe {
                    let zeroed = Mimalloc.alloc_zeroed(layout);
                    assert!(!zeroed.is_null());
                    assert_eq!(zeroed as usize % align, 0, "zeroed {size} at {align}");
                    assert!(
                        std::slice::from_raw_parts(zeroed, size)
                            .iter()
                            .all(|&b| b == 0)
                    );
                    Mimalloc.dealloc(zeroed, layout);

                    let block = Mimalloc.alloc(layout);
                    assert!(!block.is_null());
                    assert_eq!(block as usize % align, 0, "{size} at {align}");
                    for i in 0..size {
                        block.add(i).write(i as u8);
                    }
                    let grown_size = size * 3 + align;
                    let grown = Mimalloc.realloc(block, layout, grown_size);
                    assert_eq!(grown as usize % align, 0, "grown {size} at {align}");
                    assert!((0..size).all(|i| grown.add(i).read() == i as u8));
                    let grown_layout = Layout::from_size_align(grown_size, align).expect("valid");
                    let shrunk = Mimalloc.realloc(grown, grown_layout, align);
                    assert_eq!(shrunk as usize % align, 0, "shrunk {size} at {align}");
                    assert!((0..align.min(size)).all(|i| shrunk.add(i).read() == i as u8));
                    Mimalloc.dealloc(
                        shrunk,
                        Layout::from_size_align(align, align).expect("valid"),
                    );
                }
            }
        }
    }
}
