//! Spawning `surge` for `--spawn` and crash drills: a temporary data dir, a free
//! loopback port, readiness polling, SIGKILL and SIGTERM of our own child only.
//! Every child is listed in [`crate::stop`]'s registry while it runs.
#![allow(unsafe_code, reason = "SIGTERM goes through libc::kill, by pid")]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::http::{BaseUrl, HttpClient, parse_base};

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("loadtest/ has a parent")
        .to_path_buf()
}

/// `--surge-bin`, else `target/release/surge`, else `target/debug/surge` (under
/// `CARGO_TARGET_DIR` when set, else the workspace's `target/`).
pub fn find_surge(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if p.is_file() {
            return Ok(p.to_path_buf());
        }
        bail!("--surge-bin {}: no such file", p.display());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    for profile in ["release", "debug"] {
        let p = target.join(profile).join("surge");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no surge binary under {}/{{release,debug}}: build it with `cargo build --release -p surge-api` or pass --surge-bin",
        target.display()
    )
}

/// A free loopback port: bind port 0, read it, let it go. Another process could
/// take it in between; spawning then fails loudly, which is good enough here.
pub fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(l.local_addr()?.port())
}

#[derive(Debug, Clone)]
pub struct SpawnConfig {
    pub bin: PathBuf,
    /// Inside a directory the drill owns: surge's log goes beside it
    /// (`<data_dir>.stderr.log`).
    pub data_dir: PathBuf,
    pub port: u16,
    pub durability: String,
    /// Extra arguments passed as they are.
    pub extra_args: Vec<String>,
}

pub use crate::stop::kill_all_children;
use crate::stop::{forget_child, prepare_child, register_child};

/// A helper server this drill spawned (nats-server): listed for the watchdog and
/// the signal stop ([`crate::stop`]), SIGKILLed when dropped or when we die.
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    pub fn spawn(mut cmd: Command) -> std::io::Result<ChildGuard> {
        cmd.kill_on_drop(true);
        prepare_child(&mut cmd);
        let child = cmd.spawn()?;
        if let Some(pid) = child.id() {
            register_child(pid);
        }
        Ok(ChildGuard { child })
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let pid = self.child.id();
        // tokio reaps a killed child in the background.
        let _ = self.child.start_kill();
        forget_child(pid);
    }
}

/// One running `surge` child process.
pub struct Surge {
    child: Child,
    pub url: BaseUrl,
    pub spawned_at: Instant,
    stderr_path: PathBuf,
}

impl Drop for Surge {
    /// Dropped without `terminate` or `kill9` (an error path): `kill_on_drop` has
    /// tokio SIGKILL and reap it in the background, so it leaves the registry now.
    /// A pid left there could be another process's by the time a stop signals it.
    fn drop(&mut self) {
        forget_child(self.child.id());
    }
}

impl Surge {
    pub fn spawn(cfg: &SpawnConfig) -> anyhow::Result<Surge> {
        let listen = format!("127.0.0.1:{}", cfg.port);
        let (child, stderr_path) = Surge::start_process(cfg, &listen, Stdio::null())?;
        Ok(Surge {
            child,
            url: parse_base(&format!("http://{listen}"), "http", 80)?,
            spawned_at: Instant::now(),
            stderr_path,
        })
    }

    /// Like [`Surge::spawn`] on a port the kernel picks (`cfg.port` is ignored):
    /// surge prints the address it bound as its first line. No race with other
    /// processes for a port found free a moment before.
    pub async fn spawn_any_port(cfg: &SpawnConfig) -> anyhow::Result<Surge> {
        use tokio::io::AsyncBufReadExt;
        let (mut child, stderr_path) = Surge::start_process(cfg, "127.0.0.1:0", Stdio::piped())?;
        let stdout = child.stdout.take().context("surge's stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .context("surge printed no address within 60 s")??
            .context("surge exited before it printed its address")?;
        let addr = first
            .strip_prefix("surge: listening on ")
            .with_context(|| format!("unexpected first line from surge: {first}"))?;
        // Keep reading so surge never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Surge {
            child,
            url: parse_base(addr, "http", 80)?,
            spawned_at: Instant::now(),
            stderr_path,
        })
    }

    fn start_process(
        cfg: &SpawnConfig,
        listen: &str,
        stdout: Stdio,
    ) -> anyhow::Result<(Child, PathBuf)> {
        // Its log beside the data dir, quoted when it exits before it is ready.
        let stderr_path = cfg.data_dir.with_extension("stderr.log");
        let stderr = std::fs::File::create(&stderr_path)
            .map(Stdio::from)
            .unwrap_or_else(|_| Stdio::null());
        let mut cmd = Command::new(&cfg.bin);
        cmd.arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&cfg.data_dir)
            .arg("--durability")
            .arg(&cfg.durability)
            .args(&cfg.extra_args)
            // Open mode on loopback: the drill acts as admin. No tokens from our
            // own environment leak into the child.
            .env_remove("SURGE_TOKENS")
            .env_remove("SURGE_TOKENS_FILE")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        // Signals unblocked; SIGKILLed by the kernel if we die before we stop it.
        prepare_child(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", cfg.bin.display()))?;
        if let Some(pid) = child.id() {
            register_child(pid);
        }
        Ok((child, stderr_path))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Poll `/readyz` until it answers 200; the time from spawn to then.
    pub async fn wait_ready(
        &mut self,
        client: &HttpClient,
        limit: Duration,
    ) -> anyhow::Result<Duration> {
        let deadline = self.spawned_at + limit;
        loop {
            if let Ok(r) = client.get("/readyz").await
                && r.status == 200
            {
                return Ok(self.spawned_at.elapsed());
            }
            if let Some(exit) = self.exit_report()? {
                bail!("surge exited before it was ready: {exit}");
            }
            if Instant::now() >= deadline {
                bail!("surge not ready within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// How the process ended and its last log lines, once it has exited; `None`
    /// while it runs. An exited process is reaped here, so it leaves the registry
    /// of children to stop now (its pid may be another process's later).
    fn exit_report(&mut self) -> anyhow::Result<Option<String>> {
        let pid = self.child.id();
        let Some(status) = self.child.try_wait().context("looking at surge's state")? else {
            return Ok(None);
        };
        forget_child(pid);
        let log = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        Ok(Some(format!(
            "{status}; its last log lines: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )))
    }

    /// SIGKILL (std's and tokio's `kill` send SIGKILL on Unix) and reap. An error if
    /// it had already exited by itself: a drill kills a running server.
    pub async fn kill9(mut self) -> anyhow::Result<()> {
        if let Some(exit) = self.exit_report()? {
            bail!("surge exited during the drill, before the drill killed it: {exit}");
        }
        let pid = self.child.id();
        self.child.start_kill().context("SIGKILL surge")?;
        self.child.wait().await.context("reaping surge")?;
        forget_child(pid);
        Ok(())
    }

    /// SIGTERM for a clean shutdown; SIGKILL if it takes longer than `grace`. An
    /// error if it had already exited by itself: whatever the drill measured, it
    /// measured a server that died under it.
    pub async fn terminate(mut self, grace: Duration) -> anyhow::Result<()> {
        if let Some(exit) = self.exit_report()? {
            bail!("surge exited during the drill, before the drill stopped it: {exit}");
        }
        let pid = self.child.id();
        if let Some(pid) = pid {
            // Only ever our own child, by its pid.
            // SAFETY: kill(2) takes two integers and no pointers, so the call
            // cannot touch memory of ours. The pid is our child's and `self.child`
            // has not been waited for yet (tokio's `id()` is None once it has), so
            // the child is at worst a zombie and its pid not reused.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(r) => {
                r.context("reaping surge")?;
            }
            Err(_) => {
                self.child.start_kill().ok();
                self.child.wait().await.ok();
            }
        }
        forget_child(pid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: an unwrap that fails is a failing test"
    )]

    use super::*;

    /// A "surge" that is a shell script: `body` runs, surge's arguments ignored.
    fn stand_in(dir: &std::path::Path, body: &str) -> SpawnConfig {
        use std::os::unix::fs::PermissionsExt;
        let bin = dir.join("stand-in.sh");
        std::fs::write(&bin, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        SpawnConfig {
            bin,
            data_dir: dir.join("data"),
            port: free_port().unwrap(),
            durability: "sync".into(),
            extra_args: Vec::new(),
        }
    }

    /// Blocks until the child `pid` has exited, leaving it unreaped (`WNOWAIT`):
    /// its status is then the first `try_wait`'s to take.
    fn wait_exited_unreaped(pid: u32) {
        // SAFETY: `info` is a valid, writable siginfo_t for the call; the pid is
        // this test's own unreaped child.
        let rc = unsafe {
            let mut info: libc::siginfo_t = std::mem::zeroed();
            libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
        };
        assert_eq!(rc, 0, "waitid: {}", std::io::Error::last_os_error());
    }

    /// One test, every case in turn: the scripts are written before any is
    /// started, so no fork of another test's thread can hold a script open for
    /// writing while it is executed (ETXTBSY).
    #[tokio::test]
    async fn stopping_a_spawned_surge_says_whether_it_had_exited_by_itself() {
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let died = stand_in(dirs.0.path(), "echo 'out of memory, stopping' >&2\nexit 3");
        let runs = stand_in(dirs.1.path(), "exec sleep 60");

        // Exited by itself before the drill's stop, and before its kill -9.
        for kill9 in [false, true] {
            let surge = Surge::spawn(&died).unwrap();
            let pid = surge.pid().unwrap();
            wait_exited_unreaped(pid);
            let stopped = if kill9 {
                surge.kill9().await
            } else {
                surge.terminate(Duration::from_secs(5)).await
            };
            let why = format!("{:#}", stopped.unwrap_err());
            assert!(
                why.contains("surge exited during the drill, before the drill"),
                "{why}"
            );
            assert!(why.contains("exit status: 3"), "{why}");
            assert!(why.contains("out of memory, stopping"), "{why}");
            // Reaped, so no longer listed for a failed drill's SIGKILL.
            assert!(!crate::stop::is_registered(pid), "pid {pid} still listed");
        }

        // Still running: stopped, no error, no longer listed.
        let surge = Surge::spawn(&runs).unwrap();
        let pid = surge.pid().unwrap();
        surge.terminate(Duration::from_secs(5)).await.unwrap();
        assert!(!crate::stop::is_registered(pid), "pid {pid} still listed");
    }
}
