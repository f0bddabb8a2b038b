//! The one home of the black-box tests' fixtures: the real `surge` binary (cargo
//! builds it for this package's tests and names it in `CARGO_BIN_EXE_surge`) started
//! on a free loopback port with a temporary data dir (`tempfile`), waited for, and
//! stopped; nats-server for the replication tests ([`nats`]); other programs found on
//! PATH; bounded polling; and HTTP/1.1 to the server with `ureq` (one connection per
//! request), its JSON read with `serde_json` and its event stream with a
//! `text/event-stream` parser.
#![allow(
    clippy::unwrap_used,
    reason = "test code: an unwrap that fails is a failing test"
)]
#![allow(dead_code)]

pub mod nats;

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use ureq::config::AutoHeaderValue;

pub const ADMIN: &str = "Bearer adm-secret";
pub const OPERATOR: &str = "Bearer op-secret";
pub const STOREFRONT: &str = "Bearer sf-secret";
pub const VIEWER: &str = "Bearer vw-secret";
pub const TOKENS: &str =
    "admin:adm-secret,operator:op-secret,storefront:sf-secret,viewer:vw-secret";
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`wait_for`] and [`eventually`] poll before the test fails.
pub const POLL_DEADLINE: Duration = Duration::from_secs(30);
/// How much of a server's log a failing test prints.
const LOG_TAIL_LINES: usize = 80;
const POLL_EVERY: Duration = Duration::from_millis(20);

/// The `surge` binary of this build (cargo builds it before the tests run).
pub fn surge_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_surge"))
}

/// `surge --listen LISTEN --data-dir DATA_DIR`, with the surge settings of the
/// environment the tests run in removed, so only what a test names reaches it.
pub fn surge_command(listen: &str, data_dir: &Path) -> Command {
    let mut command = Command::new(surge_binary());
    command
        .args(["--listen", listen, "--data-dir"])
        .arg(data_dir)
        .env_remove("SURGE_TOKENS")
        .env_remove("SURGE_TOKENS_FILE")
        .env_remove("SURGE_LISTEN")
        .env_remove("SURGE_DATA_DIR")
        .env_remove("SURGE_DURABILITY")
        .env_remove("SURGE_LOG_FORMAT")
        .env_remove("SURGE_DEMO")
        .env_remove("SURGE_PRETOUCH_MIB");
    command
}

/// Run `command` (from [`surge_command`]) expecting surge to refuse to start: it must
/// exit, unsuccessfully, within [`STARTUP_DEADLINE`]. Its stderr.
pub fn refused_start(mut command: Command) -> String {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning surge");
    // Drain stderr beside the wait, so a chatty server never blocks on the pipe.
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = Vec::new();
        stderr.read_to_end(&mut text).unwrap();
        String::from_utf8_lossy(&text).into_owned()
    });
    let exited = poll(STARTUP_DEADLINE, || child.try_wait().unwrap());
    let Some(status) = exited else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("surge kept running where it should refuse to start");
    };
    let stderr = reader.join().unwrap();
    assert!(!status.success(), "surge exited {status:?}: {stderr}");
    stderr
}

/// A free loopback port: bind port 0, read it, let it go.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The program the environment variable `env` names, else the first of `names` in a
/// directory of PATH, `/usr/bin` or `~/.local/bin`.
pub fn find_program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/bin"));
    let dirs: Vec<PathBuf> = std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .chain(home)
        .collect();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Call `probe` every 20 ms until it yields, for at most `within`.
pub fn poll<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Poll `probe` until it yields, or fail after [`POLL_DEADLINE`].
#[track_caller]
pub fn wait_for<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    poll(POLL_DEADLINE, probe).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// Poll until `done` holds, or fail after [`POLL_DEADLINE`].
#[track_caller]
pub fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    wait_for(what, || done().then_some(()));
}

/// A fresh directory under the system temp dir (`tempfile` makes and removes it),
/// named after the test so a leftover says whose it is.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir(
            tempfile::Builder::new()
                .prefix(&format!("surge-http-{tag}-"))
                .tempdir()
                .unwrap(),
        )
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    pub fn data(&self) -> PathBuf {
        self.path().join("data")
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
        let mut command = surge_command("127.0.0.1:0", data_dir);
        command
            .env("SURGE_TOKENS", TOKENS)
            .env("RUST_LOG", "info")
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
        let ready = poll(STARTUP_DEADLINE, || {
            request(self.addr, "GET", "/readyz", &[], None)
                .is_ok_and(|r| r.status == 200)
                .then_some(())
        });
        assert!(
            ready.is_some(),
            "surge not ready in time: {}",
            self.stderr()
        );
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
        poll(STARTUP_DEADLINE, || self.child.try_wait().unwrap())
            .expect("surge did not stop after SIGTERM")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what each of its servers logged: the log file goes
        // with the server, and a timeout alone rarely says why.
        if std::thread::panicking() {
            let log = self.stderr();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "--- the last {} lines of {} ---\n{}",
                tail.len(),
                self.stderr_path.display(),
                tail.join("\n")
            );
        }
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

/// Header names and values, in the order they came.
pub type Headers = Vec<(String, String)>;

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Headers,
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

    /// The string `key` of the JSON body: the top-level field, else the shallowest
    /// nested one.
    pub fn str_field(&self, key: &str) -> String {
        find_field(&self.json(), key, Value::is_string)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no string {key} in {}", self.body))
            .to_string()
    }

    /// The unsigned integer `key` of the JSON body, found like [`Resp::str_field`].
    pub fn num_field(&self, key: &str) -> u64 {
        find_field(&self.json(), key, Value::is_u64)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("no unsigned integer {key} in {}", self.body))
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

/// The first `key` whose value passes `fits`, the shallowest first: the top-level
/// field when there is one, else one nested in an object or array.
fn find_field<'a>(value: &'a Value, key: &str, fits: fn(&Value) -> bool) -> Option<&'a Value> {
    let mut level = vec![value];
    while !level.is_empty() {
        let mut next = Vec::new();
        for v in level {
            match v {
                Value::Object(map) => {
                    if let Some(found) = map.get(key).filter(|f| fits(f)) {
                        return Some(found);
                    }
                    next.extend(map.values());
                }
                Value::Array(items) => next.extend(items),
                _ => {}
            }
        }
        level = next;
    }
    None
}

/// The HTTP client of the tests: `ureq`, one connection per request as a plain
/// client would open (servers are killed and restarted mid-test, so no pooled socket
/// may outlive one), every status an answer rather than an error, and no automatic
/// `Accept` or `User-Agent`, so a request carries only the headers a test names.
fn agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_idle_connections(0)
            .accept(AutoHeaderValue::None)
            .user_agent(AutoHeaderValue::None)
            .timeout_connect(Some(IO_TIMEOUT))
            .timeout_per_read(Some(IO_TIMEOUT))
            .timeout_per_write(Some(IO_TIMEOUT))
            .build()
            .into()
    })
}

/// Send one request with exactly these headers (ureq adds Host and the body's
/// framing) and return the answer with its body unread.
fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<ureq::http::Response<ureq::Body>> {
    let mut builder = ureq::http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    let bodyless = body.is_empty() && matches!(method, "GET" | "HEAD" | "DELETE" | "OPTIONS");
    let result = if bodyless {
        agent().run(builder.body(()).map_err(std::io::Error::other)?)
    } else {
        agent().run(builder.body(body).map_err(std::io::Error::other)?)
    };
    result.map_err(|e| std::io::Error::other(format!("{method} {path}: {e}")))
}

/// An answer's status, headers (names lower-case) and body bytes.
pub fn send_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Headers, Vec<u8>)> {
    let mut response = exchange(addr, method, path, headers, body)?;
    let head: Headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
            (k.as_str().to_string(), value)
        })
        .collect();
    let mut bytes = Vec::new();
    response.body_mut().as_reader().read_to_end(&mut bytes)?;
    Ok((response.status().as_u16(), head, bytes))
}

/// One request with exactly these headers (plus Host and Content-Length).
pub fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Resp> {
    let (status, headers, bytes) = send_bytes(addr, method, path, headers, body)?;
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    })
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

/// One Server-Sent Event: the fields of the `text/event-stream` format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The event's own `id:` field, if it had one.
    pub id: Option<String>,
    /// `event:`, or `message` when the event names no type.
    pub event: String,
    /// The `data:` lines joined with line feeds.
    pub data: String,
}

/// A `text/event-stream` body parsed as the HTML standard's event-stream
/// interpretation says, line by line over a buffered reader: an event may arrive
/// split across any number of reads (ureq undoes the chunked framing underneath).
/// Lines end in LF, CRLF or CR; a leading byte-order mark is dropped; `:` lines are
/// comments; a field without a colon has an empty value; one space after the colon
/// is not part of the value; an event is dispatched at a blank line if it has data.
pub struct Sse<R> {
    reader: R,
    /// Lines already read but not yet interpreted (from a CR-only line ending).
    pending: std::collections::VecDeque<String>,
    first_line: bool,
}

impl<R: BufRead> Sse<R> {
    pub fn new(reader: R) -> Sse<R> {
        Sse {
            reader,
            pending: std::collections::VecDeque::new(),
            first_line: true,
        }
    }

    /// The next line without its ending, or `None` at the end of the stream.
    fn line(&mut self) -> Option<String> {
        if let Some(line) = self.pending.pop_front() {
            return Some(line);
        }
        let mut raw = Vec::new();
        let n = self
            .reader
            .read_until(b'\n', &mut raw)
            .unwrap_or_else(|e| panic!("SSE read: {e}"));
        if n == 0 {
            return None;
        }
        if raw.last() == Some(&b'\n') {
            raw.pop();
        }
        let mut text = String::from_utf8_lossy(&raw).into_owned();
        if std::mem::take(&mut self.first_line) {
            text = text.strip_prefix('\u{feff}').unwrap_or(&text).to_string();
        }
        // A CR ends a line on its own; CRLF is one ending.
        let text = text.strip_suffix('\r').unwrap_or(&text);
        self.pending.extend(text.split('\r').map(str::to_string));
        self.pending.pop_front()
    }
}

impl<R: BufRead> Iterator for Sse<R> {
    type Item = SseEvent;

    fn next(&mut self) -> Option<SseEvent> {
        let (mut id, mut event, mut data) = (None, String::new(), None::<String>);
        loop {
            let line = self.line()?;
            if line.is_empty() {
                match data.take() {
                    Some(data) => {
                        let event = if event.is_empty() {
                            "message".into()
                        } else {
                            event
                        };
                        return Some(SseEvent { id, event, data });
                    }
                    None => {
                        (id, event) = (None, String::new());
                        continue;
                    }
                }
            }
            let (field, value) = line.split_once(':').unwrap_or((line.as_str(), ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "" => {} // a comment
                "event" => event = value.to_string(),
                "data" => match &mut data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                },
                "id" if !value.contains('\0') => id = Some(value.to_string()),
                _ => {} // `retry` and unknown fields
            }
        }
    }
}

/// Open an SSE stream of `/v1/events` (admin), optionally resuming; asserts a 200
/// `text/event-stream` answer.
pub fn open_sse(addr: SocketAddr, last_event_id: Option<u64>) -> Sse<impl BufRead> {
    let resume = last_event_id.map(|id| id.to_string());
    let mut headers = vec![("Authorization", ADMIN), ("Accept", "text/event-stream")];
    if let Some(id) = &resume {
        headers.push(("Last-Event-ID", id));
    }
    let response = exchange(addr, "GET", "/v1/events", &headers, b"").unwrap();
    assert_eq!(response.status(), 200, "SSE answered {}", response.status());
    let content_type = response.headers().get("content-type");
    assert!(
        content_type.is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream")),
        "SSE content type {content_type:?}"
    );
    Sse::new(BufReader::new(response.into_body().into_reader()))
}

/// Read Server-Sent Events: `(id, event type, data)` of each event (every event of
/// the feed has a numeric id), until `stop` says so (given everything read so far)
/// or the stream ends.
pub fn read_sse(
    events: impl Iterator<Item = SseEvent>,
    mut stop: impl FnMut(&[(u64, String, String)]) -> bool,
) -> Vec<(u64, String, String)> {
    let mut out = Vec::new();
    for e in events {
        let id = e.id.expect("an SSE event without an id");
        let seq = id
            .parse()
            .unwrap_or_else(|_| panic!("SSE id {id:?} is not a number"));
        out.push((seq, e.event, e.data));
        if stop(&out) {
            break;
        }
    }
    out
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
