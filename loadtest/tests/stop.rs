//! A drill stopped from outside (SIGTERM, SIGINT to the harness's pid only), by its
//! own `--time-max`, or SIGKILLed, leaves no server running; the first three leave
//! no temporary dir either.
//!
//! The harness runs as its own process with `--spawn --surge-bin <this test
//! binary>`: started with surge's arguments (`--listen ADDR --data-dir DIR ...`)
//! this binary is a stand-in surge ([`stand_in`]) that fills its data dir, answers
//! `/readyz` and never answers anything else, so the drill is under way (defining
//! its SKUs) until it is stopped, whatever the machine's speed. No surge build is
//! needed. Hence `harness = false` and a small runner in `main`.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]
#![allow(
    unsafe_code,
    reason = "kill(2) of the harness we started, by pid; signal(2) in the stand-in"
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the stand-in writes `pid starttime data_dir` (from the test, through the
/// harness's environment, which its spawned surge inherits).
const REPORT_ENV: &str = "STOP_TEST_STAND_IN_REPORT";
/// Set to make the stand-in ignore SIGTERM (the harness must SIGKILL it).
const IGNORE_TERM_ENV: &str = "STOP_TEST_STAND_IN_IGNORE_SIGTERM";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--listen") {
        stand_in(&args);
    }
    let tests: &[(&str, fn())] = &[
        (
            "sigterm_to_the_harness_stops_its_server_and_removes_its_dir",
            || signal_mid_drill(libc::SIGTERM, "SIGTERM", 143, false),
        ),
        (
            "sigint_to_the_harness_stops_its_server_and_removes_its_dir",
            || signal_mid_drill(libc::SIGINT, "SIGINT", 130, false),
        ),
        (
            "a_server_that_ignores_sigterm_is_sigkilled_after_the_grace",
            || signal_mid_drill(libc::SIGTERM, "SIGTERM", 143, true),
        ),
        ("time_max_stops_the_server_and_removes_its_dir", time_max),
        ("a_sigkilled_harness_takes_its_server_with_it", sigkill),
    ];
    // `cargo test -p surge-loadtest --test stop -- NAME`: plain words filter.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in tests {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        eprintln!("test {name} ...");
        match std::panic::catch_unwind(test) {
            Ok(()) => eprintln!("test {name} ... ok"),
            Err(_) => {
                eprintln!("test {name} ... FAILED");
                failed.push(*name);
            }
        }
    }
    eprintln!(
        "stop tests: {} passed, {} failed {failed:?}",
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}

/// The stand-in surge: `--listen ADDR --data-dir DIR --durability D ...`.
fn stand_in(args: &[String]) -> ! {
    let arg = |name: &str| {
        let i = args.iter().position(|a| a == name).unwrap();
        args[i + 1].clone()
    };
    let listen = arg("--listen");
    let data_dir = PathBuf::from(arg("--data-dir"));
    if std::env::var_os(IGNORE_TERM_ENV).is_some() {
        // SAFETY: signal(2) with SIG_IGN installs no handler of ours.
        unsafe {
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
        }
    }
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::write(data_dir.join("wal-0.seg"), vec![0u8; 1 << 20]).unwrap();
    let listener = TcpListener::bind(&listen).unwrap();
    let addr = listener.local_addr().unwrap();
    if let Some(report) = std::env::var_os(REPORT_ENV) {
        let me = std::process::id();
        let line = format!("{me} {} {}\n", start_time(me).unwrap(), data_dir.display());
        std::fs::write(report, line).unwrap();
    }
    println!("surge: listening on http://{addr}");
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || serve(conn));
    }
    std::process::exit(0)
}

/// `/readyz` 200 (keep-alive); any other request is never answered.
fn serve(mut conn: TcpStream) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            let lower = header.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if request_line.starts_with("GET /readyz ") {
            let body = r#"{"status":"ready"}"#;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            if conn.write_all(response.as_bytes()).is_err() {
                return;
            }
        } else {
            // Hold the request: the drill waits for it until it is stopped.
            let mut sink = Vec::new();
            let _ = reader.read_to_end(&mut sink);
            return;
        }
    }
}

/// Field 22 of /proc/PID/stat (start time in clock ticks since boot): tells our
/// stand-in from a process that reused its pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name's closing parenthesis: state is field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// The state letter of /proc/PID/stat, if the process (or its zombie) exists.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

/// The stand-in a harness spawned, as it reported itself.
struct StandIn {
    pid: u32,
    start_time: u64,
    data_dir: PathBuf,
}

impl StandIn {
    fn read(report: &Path) -> StandIn {
        let text = std::fs::read_to_string(report)
            .unwrap_or_else(|e| panic!("the stand-in surge wrote no report {report:?}: {e}"));
        let mut parts = text.trim_end().splitn(3, ' ');
        StandIn {
            pid: parts.next().unwrap().parse().unwrap(),
            start_time: parts.next().unwrap().parse().unwrap(),
            data_dir: PathBuf::from(parts.next().unwrap()),
        }
    }

    /// The harness's temporary dir: the data dir's parent.
    fn temp_dir(&self) -> &Path {
        self.data_dir.parent().unwrap()
    }

    /// Still running: its pid exists, is not a zombie, and is the same process.
    fn running(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
            && !matches!(state(self.pid), None | Some('Z' | 'X'))
    }

    /// Wait until it is gone; false past `limit`.
    fn gone_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.running() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// Stop it ourselves (a test that failed must not leave it running) and
    /// remove its dir.
    fn clean_up(&self) {
        if self.running() {
            // SAFETY: kill(2) takes integers only; the pid is checked to be our
            // stand-in (same start time) just above.
            unsafe {
                libc::kill(self.pid as libc::pid_t, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_dir_all(self.temp_dir());
    }
}

/// A harness running a flash-sale against a spawned stand-in, in a session of
/// its own (a signal to its pid reaches it alone, as from a supervisor or CI).
struct Harness {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    report: PathBuf,
    _scratch: tempfile::TempDir,
}

impl Harness {
    fn start(time_max: &str, ignore_term: bool) -> Harness {
        let scratch = tempfile::tempdir().unwrap();
        let report = scratch.path().join("stand-in");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_surge-loadtest"));
        cmd.args(["flash-sale", "--spawn", "--surge-bin"])
            .arg(std::env::current_exe().unwrap())
            .args(["--rate", "10", "--duration", "3s", "--connections", "2"])
            .args(["--skus", "1", "--request-timeout", "120s"])
            .args(["--time-max", time_max])
            .env(REPORT_ENV, &report)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if ignore_term {
            cmd.env(IGNORE_TERM_ENV, "1");
        } else {
            cmd.env_remove(IGNORE_TERM_ENV);
        }
        // A harness started as from a terminal: in a session of its own, with
        // SIGINT and SIGTERM at their defaults. This test may itself run with them
        // ignored (a non-interactive shell's background job ignores SIGINT, as CI
        // run by `setsid bash -c '...' &` showed), and the harness keeps a signal it
        // was started with ignored, as `nohup` asks.
        // SAFETY: setsid(2) and signal(2) in the forked child before exec touch no
        // memory of ours; both are async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::setsid();
                libc::signal(libc::SIGINT, libc::SIG_DFL);
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Harness {
            child,
            stdout,
            report,
            _scratch: scratch,
        }
    }

    /// Block until the harness says its spawned server is ready (the drill then
    /// starts and waits on the stand-in).
    fn wait_spawned(&mut self) -> StandIn {
        let mut line = String::new();
        loop {
            line.clear();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(n > 0, "the harness ended before its server was ready");
            if line.starts_with("spawned ") {
                break;
            }
        }
        let stand_in = StandIn::read(&self.report);
        assert!(stand_in.running(), "the stand-in is not running");
        assert!(stand_in.data_dir.is_dir());
        stand_in
    }

    fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill(2) takes integers only; the pid is our own child's, not
        // yet waited for.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, signal);
        }
    }

    /// Wait for the harness's end (its own --time-max bounds it): (exit code or
    /// signal, stderr).
    fn finish(mut self) -> (std::process::ExitStatus, String) {
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = self.child.wait().unwrap();
        eprintln!("--- surge-loadtest: {status}\n--- stderr\n{stderr}");
        (status, stderr)
    }
}

fn assert_cleaned_up(stand_in: &StandIn) {
    let running = stand_in.running();
    let dir_left = stand_in.temp_dir().exists();
    stand_in.clean_up();
    assert!(
        !running,
        "the spawned server (pid {}) outlived the harness",
        stand_in.pid
    );
    assert!(
        !dir_left,
        "the temporary dir {} was left behind",
        stand_in.temp_dir().display()
    );
}

fn signal_mid_drill(signal: libc::c_int, name: &str, code: i32, ignore_term: bool) {
    let mut harness = Harness::start("60s", ignore_term);
    let stand_in = harness.wait_spawned();
    harness.signal(signal);
    let (status, stderr) = harness.finish();
    assert_cleaned_up(&stand_in);
    assert_eq!(status.code(), Some(code), "{status}");
    assert!(stderr.contains(&format!("{name} received")), "{stderr}");
    assert!(stderr.contains("removed 1 temporary dir(s)"), "{stderr}");
    let killed = if ignore_term {
        "1 needed SIGKILL"
    } else {
        "0 needed SIGKILL"
    };
    assert!(stderr.contains(killed), "{stderr}");
}

fn time_max() {
    // The drill cannot end by itself (the stand-in never answers its SKU
    // definitions within the 120 s request timeout): the watchdog ends it.
    let mut harness = Harness::start("3s", false);
    let stand_in = harness.wait_spawned();
    let (status, stderr) = harness.finish();
    assert_cleaned_up(&stand_in);
    assert_eq!(status.code(), Some(3), "{status}");
    assert!(stderr.contains("--time-max 3s reached"), "{stderr}");
    assert!(stderr.contains("removed 1 temporary dir(s)"), "{stderr}");
}

fn sigkill() {
    let mut harness = Harness::start("60s", false);
    let stand_in = harness.wait_spawned();
    harness.signal(libc::SIGKILL);
    let (status, _) = harness.finish();
    // The kernel sent SIGKILL to the stand-in as the harness died (before the
    // harness could be waited for); its delivery is the stand-in's to finish.
    let gone = stand_in.gone_within(Duration::from_secs(10));
    // Nothing of the harness ran to remove its dir: ours to remove.
    stand_in.clean_up();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    assert!(
        gone,
        "the spawned server (pid {}) outlived a SIGKILLed harness",
        stand_in.pid
    );
}
