//! Background threads give way to the threads a request waits on, and the threads
//! every acknowledgement waits on may go first.
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
//! Making a thread nicer needs no privilege. [`raise_this_thread_priority`] goes the
//! other way (the writer, and in `replicated` mode the publish thread): that needs
//! `CAP_SYS_NICE` or a
//! `RLIMIT_NICE` that allows it, and fails, changing nothing, otherwise.
//!
//! A new thread starts with its creator's nice value, so a thread whose priority
//! matters sets it itself, from the process's ([`reset_this_thread_priority`] for
//! the default): otherwise one started by the raised writer would run raised too.
//!
//! Not lowered: the segment preparer. The writer waits for its work in effect (a
//! roll that finds no spare ready waits for the one in preparation), and at a
//! tenth of a share under load it fell behind the rolls.

#![allow(
    unsafe_code,
    reason = "getpriority, setpriority and clock_gettime: the libc calls for a thread's niceness and its CPU clock"
)]

use std::io;

/// How much nicer than the process a background thread makes itself (the nice
/// scale runs from -20 to 19; +10 weighs about a tenth of +0 in the scheduler).
pub const BACKGROUND_NICE_STEP: i32 = 10;

/// The nicest value Linux allows.
const NICE_MAX: i32 = 19;
/// The least nice (highest priority) value.
const NICE_MIN: i32 = -20;

/// The calling thread's nice value.
pub fn this_thread_nice() -> io::Result<i32> {
    // SAFETY: gettid has no preconditions.
    nice_of(unsafe { libc::gettid() })
}

/// The process's nice value: its main thread's (on Linux the nice value is per
/// thread, and a new thread starts with its creator's).
fn process_nice() -> io::Result<i32> {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    nice_of(pid)
}

fn nice_of(tid: libc::pid_t) -> io::Result<i32> {
    // getpriority may return -1 as a value: errno tells the two apart.
    // SAFETY: errno is thread-local; writing it only affects this thread.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: plain system call on a thread id of this process.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    if nice == -1 {
        let err = io::Error::last_os_error();
        if err.raw_os_error().is_some_and(|code| code != 0) {
            return Err(err);
        }
    }
    Ok(nice)
}

/// Make the calling thread (only this thread) [`BACKGROUND_NICE_STEP`] nicer than
/// the process, at most 19, whatever thread started it: a snapshot thread started
/// by the writer would otherwise inherit the writer's raised priority
/// ([`raise_this_thread_priority`]). Returns the new value. A failure leaves the
/// thread as it was; callers go on regardless, since a background thread at normal
/// priority is slower for others, not wrong.
pub fn lower_this_thread_priority() -> io::Result<i32> {
    let nice = (process_nice()? + BACKGROUND_NICE_STEP).min(NICE_MAX);
    set_this_thread_nice(nice)
}

fn set_this_thread_nice(nice: i32) -> io::Result<i32> {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain system call on this thread's own id.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(nice)
}

/// Make the calling thread `step` steps less nice than the process (a larger share
/// of a core), at least -20, whatever thread started it. Needs `CAP_SYS_NICE` (or a
/// `RLIMIT_NICE` that allows the value); without it the thread stays as it was and
/// the error says so. Returns the new value.
pub fn raise_this_thread_priority(step: i32) -> io::Result<i32> {
    let step = step.clamp(0, NICE_MAX - NICE_MIN);
    set_this_thread_nice((process_nice()? - step).max(NICE_MIN))
}

/// CPU time the calling thread has run (user and system), from its CPU clock
/// (`CLOCK_THREAD_CPUTIME_ID`): over a stretch of work, wall time well above it was
/// spent off a core (preempted, blocked, or, where the kernel leaves stolen time
/// out of a thread's clock as `CONFIG_PARAVIRT_TIME_ACCOUNTING` does, the virtual
/// CPU taken by its host).
/// `None` if the clock cannot be read.
pub fn this_thread_cpu_time() -> Option<std::time::Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec for the call's duration, and the
    // clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if rc != 0 {
        return None;
    }
    Some(std::time::Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    ))
}

/// Put the calling thread at the process's nice value, whatever thread started it.
/// Returns the value.
pub fn reset_this_thread_priority() -> io::Result<i32> {
    set_this_thread_nice(process_nice()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_cpu_clock_counts_work_and_not_sleep() {
        use std::time::{Duration, Instant};
        // Sleep: the wall clock moves, this thread's CPU clock hardly does.
        let before_sleep = this_thread_cpu_time().expect("clock");
        std::thread::sleep(Duration::from_millis(50));
        let slept = this_thread_cpu_time().expect("clock") - before_sleep;
        assert!(slept < Duration::from_millis(25), "{slept:?} of CPU asleep");
        // Work, the CPU clock read inside the wall clock's interval: it moves, and
        // not faster than the wall clock (10 % allowed for NTP slewing the wall
        // clock).
        let wall = Instant::now();
        let start = this_thread_cpu_time().expect("clock");
        let worked = Duration::from_millis(60);
        let mut x = 1u64;
        while this_thread_cpu_time().expect("clock") - start < worked
            && wall.elapsed() < Duration::from_secs(30)
        {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let spent = this_thread_cpu_time().expect("clock") - start;
        let elapsed = wall.elapsed();
        assert!(spent >= worked, "{spent:?} of CPU after 30 s of work");
        assert!(
            spent <= elapsed.mul_f64(1.1),
            "{spent:?} of CPU in {elapsed:?}"
        );
    }

    #[test]
    fn a_background_thread_is_nicer_and_the_others_are_not() {
        let before = this_thread_nice().expect("nice");
        let base = process_nice().expect("nice");
        let (inside, after) = std::thread::spawn(move || {
            let set = lower_this_thread_priority().expect("setpriority");
            (set, this_thread_nice().expect("nice"))
        })
        .join()
        .expect("thread");
        let expected = (base + BACKGROUND_NICE_STEP).min(NICE_MAX);
        assert_eq!(inside, expected);
        assert_eq!(after, expected, "the thread reads back what it set");
        assert_eq!(
            this_thread_nice().expect("nice"),
            before,
            "the calling thread keeps its priority"
        );
    }

    /// A background thread started by a raised thread (the writer starts the
    /// snapshot thread) still ends up nicer than the process, not than its creator.
    #[test]
    fn a_background_thread_started_by_a_raised_thread_is_nicer_than_the_process() {
        let base = process_nice().expect("nice");
        let (raised, background) = std::thread::spawn(move || {
            // Without CAP_SYS_NICE the raise fails and the thread stays at the base.
            let raised = raise_this_thread_priority(5).unwrap_or(base);
            let background = std::thread::spawn(|| {
                lower_this_thread_priority().expect("setpriority");
                this_thread_nice().expect("nice")
            })
            .join()
            .expect("thread");
            (raised, background)
        })
        .join()
        .expect("thread");
        assert!(raised <= base);
        assert_eq!(background, (base + BACKGROUND_NICE_STEP).min(NICE_MAX));
    }

    #[test]
    fn a_thread_started_by_a_raised_thread_is_put_back_at_the_process_value() {
        let base = process_nice().expect("nice");
        let reset = std::thread::spawn(move || {
            let _ = raise_this_thread_priority(i32::MAX);
            std::thread::spawn(|| {
                reset_this_thread_priority().expect("setpriority");
                this_thread_nice().expect("nice")
            })
            .join()
            .expect("thread")
        })
        .join()
        .expect("thread");
        assert_eq!(reset, base);
    }
}
