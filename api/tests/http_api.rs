//! Black-box tests of the real `surge` binary: spawned on a free loopback port with a
//! temporary data dir, driven over plain HTTP/1.1 (helpers in `api/tests/common`).

mod common;

use common::{ADMIN, STOREFRONT, Server, TempDir, refused_start, surge_command};

fn admin_json(s: &Server, method: &str, path: &str, body: &str) -> common::Resp {
    s.call(method, path, &[("Authorization", ADMIN)], Some(body))
}

#[test]
fn round_trip_kill_9_restart_and_idempotent_replay() {
    let dir = TempDir::new("kill9");
    let data = dir.path().join("data");
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
    let data = dir.path().join("data");
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
    let server = Server::start(&dir.path().join("data"), "only");
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
        let ids: Vec<u64> = common::read_sse(common::open_sse(server.addr, last_event_id), |got| {
            got.len() == count
        })
        .into_iter()
        .map(|(id, _, _)| id)
        .collect();
        ids // dropping the stream disconnects
    };
    let all = server.call("GET", "/v1/events", &[("Authorization", ADMIN)], None);
    let json_seqs: Vec<u64> = all.json()["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    let total = json_seqs.len();
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
    assert_eq!(
        &seen[..json_seqs.len()],
        &json_seqs[..],
        "SSE missed events"
    );
}

/// More memory to pretouch than the machine has available: refused at start,
/// naming the flag, before anything is allocated.
#[test]
fn refuses_a_pretouch_beyond_the_memory_available() {
    let dir = TempDir::new("pretouch-too-much");
    let mut command = surge_command("127.0.0.1:0", &dir.data());
    command.env("SURGE_PRETOUCH_MIB", (u64::MAX >> 20).to_string());
    let stderr = refused_start(command);
    assert!(stderr.contains("--pretouch-mib"), "{stderr}");
    assert!(stderr.contains("available on this machine"), "{stderr}");
}

/// An empty NATS server setting is refused at start, naming it: the node used to
/// log "ready", then answer nothing (not even `/healthz` or SIGTERM) while the
/// client spun over no server.
#[test]
fn refuses_an_empty_nats_server() {
    let nats = ["SURGE_REPLICATE_TO", "SURGE_STANDBY", "SURGE_EVENTS_TO"];
    for (variable, flag, value) in [
        ("SURGE_REPLICATE_TO", "--replicate-to", ""),
        ("SURGE_STANDBY", "--standby", " "),
        ("SURGE_EVENTS_TO", "--events-to", ""),
        ("SURGE_EVENTS_TO", "--events-to", " , "),
    ] {
        let dir = TempDir::new("nats-empty");
        let mut command = surge_command("127.0.0.1:0", &dir.data());
        for other in nats {
            command.env_remove(other);
        }
        command.env(variable, value);
        let stderr = refused_start(command);
        assert!(stderr.contains(flag), "{variable}={value:?}: {stderr}");
        assert!(
            stderr.contains("names no server"),
            "{variable}={value:?}: {stderr}"
        );
    }
    // The flag itself, given on the command line.
    let dir = TempDir::new("nats-empty-flag");
    let mut command = surge_command("127.0.0.1:0", &dir.data());
    for other in nats {
        command.env_remove(other);
    }
    command.args(["--events-to", ""]);
    let stderr = refused_start(command);
    assert!(stderr.contains("--events-to"), "{stderr}");
    assert!(stderr.contains("names no server"), "{stderr}");
}

/// The engine's worst case at its limits (state and idempotency budget, twice with
/// the follower, and a snapshot in flight) must fit the machine: the largest budget
/// accepted, 64 GiB, needs over 192 GiB, so start-up says so and stops.
#[test]
fn refuses_a_configuration_whose_worst_case_cannot_fit_the_machine() {
    let mem_total_gib = surge_engine::meminfo_bytes("MemTotal").expect("/proc/meminfo") >> 30;
    assert!(
        mem_total_gib < 192,
        "this test needs a machine of less than 192 GiB, not {mem_total_gib} GiB"
    );
    let dir = TempDir::new("memory-too-much");
    let mut command = surge_command("127.0.0.1:0", &dir.data());
    command.env("SURGE_IDEMPOTENCY_BUDGET_MB", (64u64 << 10).to_string());
    let stderr = refused_start(command);
    assert!(
        stderr.contains("more than 90 % of this machine's"),
        "{stderr}"
    );
    assert!(stderr.contains("lower the idempotency budget"), "{stderr}");
}

/// Defines SKU A with 5 units and reserves 2 of them, over HTTP.
fn define_a_and_reserve_two(server: &Server) {
    server.define("A", 5);
    let r = server.call(
        "POST",
        "/v1/reservations",
        &[("Authorization", STOREFRONT)],
        Some(r#"{"lines":[{"sku":"A","qty":2}]}"#),
    );
    assert_eq!(r.status, 201, "{}", r.body);
}

/// `--follower false` (`SURGE_FOLLOWER=false`) runs without the follower's copy of
/// the state: an idempotency budget that does not fit three copies (state,
/// follower, snapshot in flight) but fits two is refused by default and taken
/// without the follower, and the server then reads through the writer.
#[test]
fn without_the_follower_a_budget_that_fits_two_copies_starts_and_serves() {
    let total = surge_engine::meminfo_bytes("MemTotal").expect("/proc/meminfo");
    let state = surge_engine::limits::STATE_BYTES_WORST_CASE;
    let room = total / 10 * 9;
    // Budgets that fit two copies and not three: (room / 3 - state, room / 2 - state).
    assert!(
        room / 2 > state + (1 << 30),
        "this test needs a machine of more than {} GiB",
        ((2 * (state + (1 << 30))) / 9 * 10) >> 30
    );
    let (low, high) = ((room / 3).saturating_sub(state), room / 2 - state);
    let high = high.min(surge_engine::limits::IDEMPOTENCY_BUDGET_BYTES_MAX);
    assert!(
        low + (1 << 30) < high,
        "on this machine no idempotency budget fits two copies and not three"
    );
    let budget_mib = (low / 2 + high / 2) >> 20;
    let budget = budget_mib.to_string();

    let dir = TempDir::new("follower-default");
    let mut command = surge_command("127.0.0.1:0", &dir.data());
    command.env("SURGE_IDEMPOTENCY_BUDGET_MB", &budget);
    let stderr = refused_start(command);
    assert!(stderr.contains("twice for the follower"), "{stderr}");

    let dir = TempDir::new("follower-off");
    let server = Server::start_with(
        &dir.data(),
        "follower-off",
        &[
            ("SURGE_IDEMPOTENCY_BUDGET_MB", &budget),
            ("SURGE_FOLLOWER", "false"),
        ],
    );
    define_a_and_reserve_two(&server);
    let r = server.call("GET", "/v1/skus/A", &[("Authorization", STOREFRONT)], None);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains(r#""reserved":2"#), "{}", r.body);
}

/// With a pretouch the server holds that memory resident once ready (the state of
/// an empty server alone is far smaller), says how long it took, and serves.
#[test]
fn pretouched_memory_is_resident_once_ready() {
    const PRETOUCH_MIB: u64 = 256;
    let dir = TempDir::new("pretouch");
    let server = Server::start_with(
        &dir.data(),
        "pretouch",
        &[("SURGE_PRETOUCH_MIB", &PRETOUCH_MIB.to_string())],
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).unwrap();
    let resident_mib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap()
        >> 10;
    assert!(
        resident_mib >= PRETOUCH_MIB,
        "{resident_mib} MiB resident after a pretouch of {PRETOUCH_MIB} MiB"
    );
    assert!(
        server.stderr().contains("memory pretouched"),
        "{}",
        server.stderr()
    );
    define_a_and_reserve_two(&server);
}

#[test]
fn refuses_a_public_address_without_tokens() {
    let dir = TempDir::new("open");
    let stderr = refused_start(surge_command("0.0.0.0:0", &dir.data()));
    assert!(stderr.contains("without tokens"), "{stderr}");
}
