//! What a drill must not leave behind, and how it stops when it is stopped from
//! outside (SIGINT, SIGTERM, SIGHUP) or by its own `--time-max` watchdog.
//!
//! A process-wide registry holds the pids of the children we spawned and have not
//! reaped yet (surge, nats-server) and the temporary dirs we created (their data
//! dirs, surge's log). [`stop_and_exit`] is the one way out other than the drill's
//! own end: it SIGTERMs every listed child, SIGKILLs what is still running after
//! [`GRACE`], waits until each is gone, removes every listed dir, says so on
//! stderr and exits with the caller's code (no report, no audit: the drill did not
//! finish). The binary's `main` runs it from two threads: the watchdog (exit 3)
//! and a signal thread (`128 + signal`: 130 for SIGINT, 143 for SIGTERM, 129 for
//! SIGHUP), see [`handle_signals`].
//!
//! Children are also spawned with `PR_SET_PDEATHSIG` = SIGKILL ([`child_setup`]),
//! so a harness that is SIGKILLed (no chance to clean up) does not leave a surge
//! running. Linux sends that signal when the *thread* that forked the child ends,
//! not the process: the drill forks from the runtime's `block_on` thread (main)
//! and from its worker threads, which live until the runtime shuts down after the
//! drill, when our children are already stopped. A SIGKILLed harness still leaves
//! its temporary dir behind (nothing runs in it any more to remove it).
#![allow(
    unsafe_code,
    reason = "kill(2), waitid(2), sigwait(3), pthread_sigmask(3), prctl(2) by pid and signal number"
)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// How long a child has between our SIGTERM and our SIGKILL when the drill is
/// stopped.
pub const GRACE: Duration = Duration::from_secs(5);

struct Registry {
    /// Set once by [`stop_and_exit`]: from then on a new child is SIGKILLed as it
    /// is listed and a new temporary dir is refused.
    stopping: bool,
    children: Vec<u32>,
    dirs: Vec<PathBuf>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    stopping: false,
    children: Vec::new(),
    dirs: Vec::new(),
});

/// Held by whoever ends the process ([`exit`], [`stop_and_exit`]): one of them
/// exits, the other waits for that.
static EXIT: Mutex<()> = Mutex::new(());

fn registry() -> MutexGuard<'static, Registry> {
    // The registry stays consistent whatever panicked while holding it (each
    // change is one push or retain).
    REGISTRY.lock().unwrap_or_else(PoisonError::into_inner)
}

fn send(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) takes two integers and no pointers, so the call cannot touch
    // memory of ours whatever the pid; its failure (an already gone child) is
    // harmless and ignored. The pids are our own children's: each is listed at
    // spawn and forgotten right after it is reaped, so until then the pid cannot
    // have been reused by another process (only the instant between a reap and
    // its forget is open).
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// List a child we just spawned. Once the drill is stopping it is SIGKILLed at
/// once (it was spawned after the stop took its list).
pub fn register_child(pid: u32) {
    let mut r = registry();
    r.children.push(pid);
    if r.stopping {
        send(pid, libc::SIGKILL);
    }
}

/// Forget a child we reaped.
pub fn forget_child(pid: Option<u32>) {
    if let Some(pid) = pid {
        registry().children.retain(|&p| p != pid);
    }
}

/// Whether `pid` is listed (tests).
#[cfg(test)]
pub(crate) fn is_registered(pid: u32) -> bool {
    registry().children.contains(&pid)
}

/// SIGKILL every child listed (a drill that failed: its own stop did not run).
pub fn kill_all_children() {
    for &pid in &registry().children {
        send(pid, libc::SIGKILL);
    }
}

/// True once [`stop_and_exit`] has started: the drill's own end is moot, the
/// process is about to exit with the stop's code.
pub fn stopping() -> bool {
    registry().stopping
}

/// A temporary dir (`$TMPDIR/<prefix>XXXXXX`) listed for [`stop_and_exit`],
/// removed when dropped (the drill's own end) or by the stop.
pub struct DrillDir {
    dir: tempfile::TempDir,
}

impl DrillDir {
    pub fn new(prefix: &str) -> anyhow::Result<DrillDir> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a temporary dir")?;
        let mut r = registry();
        if r.stopping {
            // Dropping `dir` removes it.
            bail!("the drill is stopping");
        }
        r.dirs.push(dir.path().to_path_buf());
        Ok(DrillDir { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for DrillDir {
    fn drop(&mut self) {
        let path = self.dir.path();
        registry().dirs.retain(|d| d != path);
        // `self.dir` removes the dir right after this.
    }
}

/// Whether our child `pid` has ended: waitid(2) with WNOWAIT looks without
/// reaping (the child stays tokio's to reap). A pid that is no longer our child
/// (reaped meanwhile) counts as ended.
fn ended(pid: u32) -> bool {
    // SAFETY: siginfo_t is plain data (integers and a union of integers); all
    // zeroes is a valid value, and waitid(2) fills it when a child has changed
    // state. The pointer is to our own live local for the duration of the call.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        rc != 0 || info.si_pid() != 0
    }
}

/// Wait until every pid has ended or `deadline`; the pids still running.
fn wait_ended(pids: &[u32], deadline: Instant) -> Vec<u32> {
    let mut running: Vec<u32> = pids.to_vec();
    loop {
        running.retain(|&p| !ended(p));
        if running.is_empty() || Instant::now() >= deadline {
            return running;
        }
        // Polling a child's state (no pidfd on every kernel we run on): 5 ms
        // adds nothing noticeable to a stop.
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM, then SIGKILL past `grace`: (how many needed SIGKILL, pids still
/// running after that).
fn stop_children(pids: &[u32], grace: Duration) -> (usize, Vec<u32>) {
    for &pid in pids {
        send(pid, libc::SIGTERM);
    }
    let stubborn = wait_ended(pids, Instant::now() + grace);
    for &pid in &stubborn {
        send(pid, libc::SIGKILL);
    }
    let left = wait_ended(&stubborn, Instant::now() + Duration::from_secs(5));
    (stubborn.len(), left)
}

/// Stop the drill from outside its own flow: stop our children (SIGTERM, SIGKILL
/// after [`GRACE`]), remove our temporary dirs, say what was done and exit with
/// `code`. Runs once: a second caller (the watchdog during a signal's stop, or the
/// other way round) waits for the first one's exit.
pub fn stop_and_exit(code: i32, why: &str) -> ! {
    let _exit = EXIT.lock().unwrap_or_else(PoisonError::into_inner);
    let (children, dirs) = {
        let mut r = registry();
        r.stopping = true;
        (r.children.clone(), r.dirs.clone())
    };
    eprintln!("surge-loadtest: {why}; stopping the drill (no report, no audit)");
    let (mut killed, mut left) = stop_children(&children, GRACE);
    let mut stopped = children.len();
    // Children listed after the stop took its list were SIGKILLed as they were
    // listed; wait for them too.
    let late: Vec<u32> = registry()
        .children
        .iter()
        .filter(|p| !children.contains(p))
        .copied()
        .collect();
    if !late.is_empty() {
        let (_, l) = stop_children(&late, Duration::ZERO);
        stopped += late.len();
        killed += late.len();
        left.extend(l);
    }
    // Our children no longer write in our dirs. The list taken above is the
    // whole of them (stopping refuses a new one); the drill may have removed some
    // meanwhile (its own end, once its server was gone), which is as good.
    let mut removed = Vec::new();
    for dir in &dirs {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => removed.push(dir.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                removed.push(dir.display().to_string());
            }
            Err(e) => eprintln!("surge-loadtest: removing {}: {e}", dir.display()),
        }
    }
    eprintln!(
        "surge-loadtest: stopped {stopped} child process(es) ({killed} needed SIGKILL after {GRACE:?}), removed {} temporary dir(s){}{}; exit {code}",
        removed.len(),
        if removed.is_empty() { "" } else { ": " },
        removed.join(", ")
    );
    if !left.is_empty() {
        eprintln!("surge-loadtest: still running after SIGKILL: pids {left:?}");
    }
    std::process::exit(code)
}

/// End the process with `code` (the drill's own end), unless a stop is under way:
/// then wait for its exit.
pub fn exit(code: u8) -> ! {
    let _exit = EXIT.lock().unwrap_or_else(PoisonError::into_inner);
    std::process::exit(i32::from(code))
}

fn signal_name(signal: libc::c_int) -> &'static str {
    match signal {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

/// Turn SIGINT, SIGTERM and SIGHUP into [`stop_and_exit`] with `128 + signal`.
///
/// Call it first in `main`, before any thread exists: it blocks those signals in
/// the calling thread, every thread started after inherits the mask, and one
/// thread of its own takes them with sigwait(3). Our children must not inherit
/// the mask: spawn them through [`prepare_child`], which clears it. A signal the
/// process was started with ignored (nohup, `&` in a non-interactive shell) stays
/// ignored.
pub fn handle_signals() -> anyhow::Result<()> {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before any use.
    // sigaction(2) with a null new action only reads the current one into our
    // local `old` (plain data, zero-initialised). pthread_sigmask(3) reads our
    // local set. All pointers are to live locals for the duration of each call.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        let mut any = false;
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
            {
                continue;
            }
            libc::sigaddset(&mut set, signal);
            any = true;
        }
        if !any {
            return Ok(());
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            bail!(
                "blocking SIGINT/SIGTERM: {}",
                std::io::Error::from_raw_os_error(rc)
            );
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            loop {
                let mut signal: libc::c_int = 0;
                // SAFETY: sigwait(3) reads our local set and writes the signal
                // number into our local `signal`; both live through the call.
                let rc = unsafe { libc::sigwait(&set, &mut signal) };
                if rc == 0 {
                    stop_and_exit(128 + signal, &format!("{} received", signal_name(signal)));
                }
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// For a child's `pre_exec`: unblock the signals [`handle_signals`] blocked (the
/// mask survives fork and exec: a surge started with SIGTERM blocked would never
/// see our SIGTERM), ask the kernel to SIGKILL the child when the thread that
/// forked it ends (see the module's notes), and end at once if our process is
/// already gone. Only async-signal-safe calls (sigemptyset, pthread_sigmask,
/// prctl, getppid) and no allocation, as `pre_exec` requires.
pub fn child_setup(parent: u32) -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use, and
    // the pointers are to our live local. prctl(2) with PR_SET_PDEATHSIG takes
    // integers only; getppid(2) takes nothing. Reading errno allocates nothing.
    unsafe {
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        let rc = libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::getppid() as u32 != parent {
            // "No such process": the harness ended before its child started.
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// Set [`child_setup`] on a command we spawn.
pub fn prepare_child(cmd: &mut tokio::process::Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions; it allocates nothing and captures one integer.
    unsafe {
        cmd.pre_exec(move || child_setup(parent));
    }
}
