//! Background threads give way to the threads a request waits on.
//!
//! The threads that write snapshot files, delete old segments, and encode
//! snapshots do work nobody is waiting for, in long stretches (encoding walks the
//! whole state; writing copies the whole body into the page cache). On a box with as few cores as threads that matter (the writer,
//! the sync thread, the HTTP workers), the scheduler would otherwise share a core
//! between the writer and that work evenly, and a command would wait behind it.
//! Each such thread lowers its own priority by [`BACKGROUND_NICE_STEP`] when it
//! starts: it still runs whenever a core is free, and the scheduler's weights give it
//! about a tenth of a core's share against a thread at the default priority.
//!
//! Raising the niceness needs no privilege; nothing here ever lowers it.
//!
//! Not the segment preparer: the writer waits for its work in effect (a roll
//! that finds no spare ready makes its segment itself, zero-fill and sync on the
//! writer), and at a tenth of a share under load it fell behind the rolls.

#![allow(
    unsafe_code,
    reason = "getpriority and setpriority: the libc calls for a thread's niceness"
)]

use std::io;

/// How much nicer than the process a background thread makes itself (the nice
/// scale runs from -20 to 19; +10 weighs about a tenth of +0 in the scheduler).
pub const BACKGROUND_NICE_STEP: i32 = 10;

/// The nicest value Linux allows.
const NICE_MAX: i32 = 19;

/// The calling thread's nice value.
pub fn this_thread_nice() -> io::Result<i32> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // getpriority may return -1 as a value: errno tells the two apart.
    // SAFETY: errno is thread-local; writing it only affects this thread.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: plain system call on this thread's own id.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    if nice == -1 {
        let err = io::Error::last_os_error();
        if err.raw_os_error().is_some_and(|code| code != 0) {
            return Err(err);
        }
    }
    Ok(nice)
}

/// Make the calling thread (only this thread: on Linux the nice value is per
/// thread) [`BACKGROUND_NICE_STEP`] nicer than it is, at most 19. Returns the new
/// value. A failure leaves the thread as it was; callers go on regardless, since a
/// background thread at normal priority is slower for others, not wrong.
pub fn lower_this_thread_priority() -> io::Result<i32> {
    let nice = (this_thread_nice()? + BACKGROUND_NICE_STEP).min(NICE_MAX);
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain system call on this thread's own id.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(nice)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_thread_is_nicer_and_the_others_are_not() {
        let before = this_thread_nice().expect("nice");
        let (inside, after) = std::thread::spawn(move || {
            let set = lower_this_thread_priority().expect("setpriority");
            (set, this_thread_nice().expect("nice"))
        })
        .join()
        .expect("thread");
        let expected = (before + BACKGROUND_NICE_STEP).min(NICE_MAX);
        assert_eq!(inside, expected);
        assert_eq!(after, expected, "the thread reads back what it set");
        assert_eq!(
            this_thread_nice().expect("nice"),
            before,
            "the calling thread keeps its priority"
        );
    }
}
