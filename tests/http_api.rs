//! Black-box tests of the real `surge` binary: spawned on a free loopback port with a
//! temporary data dir, driven over plain HTTP/1.1 (a tiny std-only client, so these
//! tests need no extra dependencies).
//!
//! The binary is `target/<profile>/surge` next to this test's own executable; the
//! tests run `cargo build -p surge-api --bin surge` first so that it is never stale.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const ADMIN: &str = "Bearer adm-secret";
const STOREFRONT: &str = "Bearer sf-secret";
const TOKENS: &str = "admin:adm-secret,storefront:sf-secret,viewer:vw-secret";
const STARTUP_DEADLINE: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn surge_binary() -> PathBuf {
    if let Ok(path) = std::env::var("CARGO_BIN_EXE_surge") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/http_api-<hash> -> target/<profile>/surge
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
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
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
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Server {
    child: Child,
    addr: SocketAddr,
    stderr_path: PathBuf,
}

impl Server {
    /// Start on `127.0.0.1:0`, learn the port from stdout, wait for `/readyz`.
    fn start(data_dir: &Path, log_name: &str) -> Server {
        let stderr_path = data_dir.with_extension(format!("{log_name}.log"));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = Command::new(surge_binary())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("SURGE_TOKENS", TOKENS)
            .env_remove("SURGE_TOKENS_FILE")
            .env_remove("SURGE_LISTEN")
            .env_remove("SURGE_DURABILITY")
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawning surge");
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
        let server = Server {
            child,
            addr,
            stderr_path,
        };
        let deadline = Instant::now() + STARTUP_DEADLINE;
        loop {
            if let Ok(r) = try_request(server.addr, "GET", "/readyz", &[], None)
                && r.status == 200
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "surge not ready in time: {}",
                server.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
        try_request(self.addr, method, path, headers, body).expect("request")
    }

    fn kill_9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn sigterm_and_wait(mut self) -> ExitStatus {
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

#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The first `"key":"value"` string in the (compact JSON) body.
    fn str_field(&self, key: &str) -> String {
        let pattern = format!("\"{key}\":\"");
        let start = self
            .body
            .find(&pattern)
            .unwrap_or_else(|| panic!("no {key} in {}", self.body))
            + pattern.len();
        self.body[start..].split('"').next().unwrap().to_string()
    }

    /// The first `"key":<integer>` in the body.
    fn num_field(&self, key: &str) -> u64 {
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
}

fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<Resp> {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    let body = body.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no header end"))?;
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
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

fn admin_json(s: &Server, method: &str, path: &str, body: &str) -> Resp {
    s.call(method, path, &[("Authorization", ADMIN)], Some(body))
}

#[test]
fn round_trip_kill_9_restart_and_idempotent_replay() {
    let dir = TempDir::new("kill9");
    let data = dir.0.join("data");
    let server = Server::start(&data, "first");

    let r = server.call("GET", "/v1/skus", &[], None);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = server.call(
        "PUT",
        "/v1/skus/A",
        &[("Authorization", STOREFRONT)],
        Some(r#"{"on_hand": 1}"#),
    );
    assert_eq!(r.status, 403, "{}", r.body);
    let r = admin_json(
        &server,
        "PUT",
        "/v1/skus/A",
        r#"{"on_hand": 10, "name": "Apple"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);

    // A reservation round trip.
    let sf = [("Authorization", STOREFRONT)];
    let r = server.call(
        "POST",
        "/v1/reservations",
        &sf,
        Some(r#"{"lines":[{"sku":"A","qty":2}]}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let rid = r.str_field("id");
    assert_eq!(
        r.header("location"),
        Some(format!("/v1/reservations/{rid}").as_str())
    );
    let r = server.call("GET", &format!("/v1/reservations/{rid}"), &sf, None);
    assert_eq!(r.str_field("status"), "held");
    let r = server.call(
        "POST",
        &format!("/v1/reservations/{rid}/release"),
        &sf,
        None,
    );
    assert_eq!(
        (r.status, r.str_field("status").as_str()),
        (200, "released")
    );
    let r = server.call(
        "POST",
        "/v1/reservations",
        &sf,
        Some(r#"{"lines":[{"sku":"A","qty":11}]}"#),
    );
    assert_eq!(r.status, 409);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
    assert_eq!(r.str_field("code"), "insufficient_stock");

    // An order acknowledged with 201 under an Idempotency-Key, then paid.
    let order =
        r#"{"order_no":"k9-1","customer_id":"c1","lines":[{"sku":"A","qty":3,"unit_price":500}]}"#;
    let keyed = [
        ("Authorization", STOREFRONT),
        ("Idempotency-Key", "order-k9-1"),
    ];
    let created = server.call("POST", "/v1/orders", &keyed, Some(order));
    assert_eq!(created.status, 201, "{}", created.body);
    let oid = created.str_field("id");
    let paid = server.call(
        "POST",
        &format!("/v1/orders/{oid}/pay"),
        &sf,
        Some(r#"{"amount":1500}"#),
    );
    assert_eq!(paid.status, 200, "{}", paid.body);
    let events_before = server.call(
        "GET",
        "/v1/events?limit=1000",
        &[("Authorization", ADMIN)],
        None,
    );
    assert_eq!(events_before.status, 200);
    let sku_before = server.call("GET", "/v1/skus/A", &sf, None).body;

    server.kill_9();
    let server = Server::start(&data, "second");

    let r = server.call("GET", &format!("/v1/orders/{oid}"), &sf, None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.str_field("status"), "confirmed");
    assert_eq!(server.call("GET", "/v1/skus/A", &sf, None).body, sku_before);
    let events_after = server.call(
        "GET",
        "/v1/events?limit=1000",
        &[("Authorization", ADMIN)],
        None,
    );
    assert_eq!(
        events_after.body, events_before.body,
        "event seqs changed across the restart"
    );
    // The same key and body after the restart: the original status and body.
    let replay = server.call("POST", "/v1/orders", &keyed, Some(order));
    assert_eq!(
        (replay.status, &replay.body),
        (created.status, &created.body)
    );
    let conflict = server.call(
        "POST",
        "/v1/orders",
        &keyed,
        Some(&order.replace("c1", "c2")),
    );
    assert_eq!(conflict.status, 422, "{}", conflict.body);
}

#[test]
fn sigterm_drains_snapshots_and_exits_0() {
    let dir = TempDir::new("sigterm");
    let data = dir.0.join("data");
    let server = Server::start(&data, "first");
    admin_json(&server, "PUT", "/v1/skus/B", r#"{"on_hand": 5}"#);
    for _ in 0..3 {
        let r = admin_json(
            &server,
            "POST",
            "/v1/reservations",
            r#"{"lines":[{"sku":"B","qty":1}]}"#,
        );
        assert_eq!(r.status, 201, "{}", r.body);
    }
    let status = server.sigterm_and_wait();
    assert!(status.success(), "exit status {status:?}");
    let snapshots: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .collect();
    assert!(
        !snapshots.is_empty(),
        "no snapshot left in {}",
        data.display()
    );

    let server = Server::start(&data, "second");
    assert!(
        server.stderr().contains("records_replayed=0"),
        "the restart replayed records beyond the snapshot: {}",
        server.stderr()
    );
    let r = server.call("GET", "/v1/skus/B", &[("Authorization", ADMIN)], None);
    assert_eq!(r.num_field("reserved"), 3, "{}", r.body);
}

#[test]
fn sse_resumes_from_last_event_id_without_gaps_or_repeats() {
    let dir = TempDir::new("sse");
    let server = Server::start(&dir.0.join("data"), "only");
    admin_json(&server, "PUT", "/v1/skus/C", r#"{"on_hand": 100}"#);
    for _ in 0..4 {
        admin_json(
            &server,
            "POST",
            "/v1/reservations",
            r#"{"lines":[{"sku":"C","qty":1}]}"#,
        );
    }
    let read_ids = |last_event_id: Option<u64>, count: usize| -> Vec<u64> {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        write!(
            stream,
            "GET /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN}\r\nAccept: text/event-stream\r\n{resume}\r\n"
        )
        .unwrap();
        let mut ids = Vec::new();
        for line in BufReader::new(stream).lines() {
            let line = line.expect("SSE stream read");
            if let Some(id) = line
                .strip_prefix("id: ")
                .or_else(|| line.strip_prefix("id:"))
            {
                ids.push(id.trim().parse().unwrap());
                if ids.len() == count {
                    break;
                }
            }
        }
        ids // dropping the stream disconnects
    };
    let all = server.call("GET", "/v1/events", &[("Authorization", ADMIN)], None);
    let total = all.body.matches("\"seq\":").count();
    assert!(total >= 5, "{}", all.body);
    let first = read_ids(None, 2);
    // More events while disconnected.
    admin_json(
        &server,
        "POST",
        "/v1/reservations",
        r#"{"lines":[{"sku":"C","qty":1}]}"#,
    );
    let rest = read_ids(Some(*first.last().unwrap()), total + 1 - 2);
    let mut seen = first.clone();
    seen.extend(&rest);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "repeated or out of order: {seen:?}"
    );
    let json_seqs: Vec<u64> = all
        .body
        .match_indices("\"seq\":")
        .map(|(i, _)| {
            all.body[i + 6..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
                .parse()
                .unwrap()
        })
        .collect();
    assert_eq!(
        &seen[..json_seqs.len()],
        &json_seqs[..],
        "SSE missed events"
    );
}

#[test]
fn refuses_a_public_address_without_tokens() {
    let dir = TempDir::new("open");
    let output = Command::new(surge_binary())
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.0.join("data"))
        .env_remove("SURGE_TOKENS")
        .env_remove("SURGE_TOKENS_FILE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("without tokens"), "{stderr}");
}
