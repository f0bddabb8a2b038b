//! Shared helpers of the black-box tests: spawn the real `surge` binary on a free
//! loopback port with a temporary data dir, and talk to it over plain HTTP/1.1 with a
//! tiny std-only client (one connection per request, `Connection: close`).
//!
//! The binary is `target/<profile>/surge` next to the test executable; the first
//! server of a test process runs `cargo build -p surge-api --bin surge` so that it is
//! never stale.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const ADMIN: &str = "Bearer adm-secret";
pub const OPERATOR: &str = "Bearer op-secret";
pub const STOREFRONT: &str = "Bearer sf-secret";
pub const VIEWER: &str = "Bearer vw-secret";
pub const TOKENS: &str =
    "admin:adm-secret,operator:op-secret,storefront:sf-secret,viewer:vw-secret";
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

pub fn surge_binary() -> PathBuf {
    if let Ok(path) = std::env::var("CARGO_BIN_EXE_surge") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test>-<hash> -> target/<profile>/surge
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let binary = profile_dir.join(format!("surge{}", std::env::consts::EXE_SUFFIX));
    // Always ask cargo: a no-op when the binary is fresh, and `cargo test -p surge`
    // alone does not rebuild another package's binary. Once per test process.
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "-p", "surge-api", "--bin", "surge"]);
        build.current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "cargo build -p surge-api failed");
    });
    binary
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "surge-http-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn data(&self) -> PathBuf {
        self.0.join("data")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    stderr_path: PathBuf,
}

impl Server {
    /// Start with the four test tokens on `127.0.0.1:0`, wait for `/readyz`.
    pub fn start(data_dir: &Path, log_name: &str) -> Server {
        Server::start_with(data_dir, log_name, &[])
    }

    /// Like [`Server::start`], with extra environment variables for the server.
    pub fn start_with(data_dir: &Path, log_name: &str, env: &[(&str, &str)]) -> Server {
        let server = Server::spawn_with(data_dir, log_name, env);
        server.wait_ready();
        server
    }

    /// Start and return once it listens, ready or not.
    pub fn spawn_with(data_dir: &Path, log_name: &str, env: &[(&str, &str)]) -> Server {
        let stderr_path = data_dir.with_extension(format!("{log_name}.log"));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut command = Command::new(surge_binary());
        command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("SURGE_TOKENS", TOKENS)
            .env("RUST_LOG", "info")
            .env_remove("SURGE_TOKENS_FILE")
            .env_remove("SURGE_LISTEN")
            .env_remove("SURGE_DATA_DIR")
            .env_remove("SURGE_DURABILITY")
            .env_remove("SURGE_LOG_FORMAT")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawning surge");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let first = lines.next().expect("surge printed nothing").unwrap();
        let addr: SocketAddr = first
            .strip_prefix("surge: listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {first}"))
            .parse()
            .unwrap();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server {
            child,
            addr,
            stderr_path,
        }
    }

    /// Wait until `/readyz` answers 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(r) = request(self.addr, "GET", "/readyz", &[], None)
                && r.status == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "surge not ready in time: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A request; a JSON content type is added when there is a body and the headers
    /// name none.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Resp {
        request(self.addr, method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A request as `token` (`"Bearer ..."`).
    pub fn as_(&self, token: &str, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.call(method, path, &[("Authorization", token)], body)
    }

    pub fn admin(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        self.as_(ADMIN, method, path, body)
    }

    /// Define a SKU (admin), asserting success.
    pub fn define(&self, sku: &str, on_hand: u64) {
        let r = self.admin(
            "PUT",
            &format!("/v1/skus/{sku}"),
            Some(&format!(r#"{{"on_hand": {on_hand}, "name": "{sku}"}}"#)),
        );
        assert_eq!(r.status, 200, "{}", r.body);
    }

    /// Every event of the JSON feed, paged through from the start.
    pub fn all_events(&self) -> Vec<Value> {
        let mut events = Vec::new();
        let mut after = 0u64;
        loop {
            let r = self.admin("GET", &format!("/v1/events?after={after}&limit=1000"), None);
            assert_eq!(r.status, 200, "{}", r.body);
            let page = r.json();
            let batch = page["events"].as_array().unwrap().clone();
            if batch.is_empty() {
                return events;
            }
            after = page["next"].as_u64().unwrap();
            events.extend(batch);
        }
    }

    /// What the API shows of the whole state: stats (without the throughput window),
    /// every SKU's levels, every order, and the last event seq. Bad input must leave
    /// it unchanged.
    pub fn digest(&self) -> String {
        let mut stats = self.admin("GET", "/v1/stats?top=100", None).json();
        stats.as_object_mut().unwrap().remove("throughput");
        let skus = self.admin("GET", "/v1/skus?limit=1000", None).json();
        let orders = self.admin("GET", "/v1/orders?limit=1000", None).json();
        let last_seq = self
            .all_events()
            .last()
            .map_or(0, |e| e["seq"].as_u64().unwrap());
        format!("stats={stats}\nskus={skus}\norders={orders}\nlast_seq={last_seq}")
    }

    pub fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn sigterm_and_wait(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "surge did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:.400}", self.body))
    }

    /// The first `"key":"value"` string in the (compact JSON) body.
    pub fn str_field(&self, key: &str) -> String {
        let pattern = format!("\"{key}\":\"");
        let start = self
            .body
            .find(&pattern)
            .unwrap_or_else(|| panic!("no {key} in {}", self.body))
            + pattern.len();
        self.body[start..].split('"').next().unwrap().to_string()
    }

    /// The first `"key":<integer>` in the body.
    pub fn num_field(&self, key: &str) -> u64 {
        let pattern = format!("\"{key}\":");
        let start = self
            .body
            .find(&pattern)
            .unwrap_or_else(|| panic!("no {key} in {}", self.body))
            + pattern.len();
        let digits: String = self.body[start..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits
            .parse()
            .unwrap_or_else(|_| panic!("{key} is not a number in {}", self.body))
    }

    /// Assert an RFC 9457 problem with this status and code.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(
            self.header("content-type"),
            Some("application/problem+json"),
            "{}",
            self.body
        );
        let p = self.json();
        assert_eq!(p["code"], code, "{}", self.body);
        assert_eq!(p["status"], status, "{}", self.body);
        assert!(
            p["type"].is_string() && p["title"].is_string() && p["detail"].is_string(),
            "{}",
            self.body
        );
    }
}

/// One request; adds `Content-Type: application/json` when there is a body and the
/// headers name no content type.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Resp> {
    let body = body.unwrap_or("");
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        all.push(("Content-Type", "application/json"));
    }
    send(addr, method, path, &all, body.as_bytes())
}

/// One request with exactly these headers (plus Host, Content-Length and
/// `Connection: close`).
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut message = head.into_bytes();
    message.extend_from_slice(body);
    // A server may answer (413) before reading the whole body and close: a failed
    // write is fine as long as the answer can be read.
    let written = stream.write_all(&message);
    let mut raw = Vec::new();
    let read = stream.read_to_end(&mut raw);
    if raw.is_empty() {
        written?;
        read?;
    }
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> std::io::Result<Resp> {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    Ok(Resp {
        status,
        headers,
        body,
    })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].strip_prefix("\r\n").unwrap_or(&after[size..]);
    }
    out
}

/// Read Server-Sent Events from an open stream: `(id, event type, data)` triples,
/// until `stop` says so (given everything read so far) or the stream ends.
pub fn read_sse(
    stream: TcpStream,
    mut stop: impl FnMut(&[(u64, String, String)]) -> bool,
) -> Vec<(u64, String, String)> {
    let mut reader = BufReader::new(stream);
    // Status line and headers first.
    let mut line = String::new();
    reader.read_line(&mut line).expect("SSE status line");
    assert!(line.contains(" 200 "), "SSE answered {line:?}");
    loop {
        line.clear();
        reader.read_line(&mut line).expect("SSE headers");
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut out = Vec::new();
    let (mut id, mut kind, mut data) = (None, String::new(), String::new());
    // Chunked framing: chunk-size lines are hex digits only; event lines have a colon
    // or are empty (the end of an event).
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return out,
            Ok(_) => {}
            Err(e) => panic!("SSE read: {e}"),
        }
        let l = line.trim_end_matches(['\r', '\n']);
        if let Some(v) = l.strip_prefix("id:") {
            id = Some(v.trim().parse::<u64>().expect("numeric SSE id"));
        } else if let Some(v) = l.strip_prefix("event:") {
            kind = v.trim().to_string();
        } else if let Some(v) = l.strip_prefix("data:") {
            data.push_str(v.trim_start());
        } else if l.is_empty() {
            if let Some(seq) = id.take() {
                out.push((seq, std::mem::take(&mut kind), std::mem::take(&mut data)));
                if stop(&out) {
                    return out;
                }
            }
            kind.clear();
            data.clear();
        }
    }
}

/// Open an SSE stream of `/v1/events` (admin), optionally resuming.
pub fn open_sse(addr: SocketAddr, last_event_id: Option<u64>) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    write!(
        stream,
        "GET /v1/events HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {ADMIN}\r\nAccept: text/event-stream\r\n{resume}\r\n"
    )
    .unwrap();
    stream
}

/// The wall clock in milliseconds since the epoch (the server's logged clock reads
/// the same clock on this machine).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `ms` since the epoch as RFC 3339 UTC with milliseconds (`2026-11-30T20:00:00.123Z`),
/// the form the server answers with.
pub fn rfc3339_ms(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let rem = ms % 86_400_000;
    // Days to a civil date (proleptic Gregorian; Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000
    )
}

/// The inverse of [`rfc3339_ms`]: exactly that form, nothing else.
#[track_caller]
pub fn parse_rfc3339_ms(text: &str) -> u64 {
    let b = text.as_bytes();
    assert!(
        b.len() == 24 && b[4] == b'-' && b[10] == b'T' && b[19] == b'.' && b[23] == b'Z',
        "not YYYY-MM-DDTHH:MM:SS.mmmZ: {text:?}"
    );
    let num = |from: usize, to: usize| -> i64 {
        text[from..to]
            .parse()
            .unwrap_or_else(|_| panic!("not a number at {from}..{to}: {text:?}"))
    };
    let (y, m, d) = (num(0, 4), num(5, 7), num(8, 10));
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + num(11, 13) * 3600 + num(14, 16) * 60 + num(17, 19);
    let ms = (secs * 1000 + num(20, 23)) as u64;
    assert_eq!(rfc3339_ms(ms), text, "round trip");
    ms
}
