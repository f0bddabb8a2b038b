//! Short drills against a spawned real surge pass, and the HTML report parses and
//! holds its charts.
//!
//! They live beside the surge binary's package so cargo builds it and names it in
//! `CARGO_BIN_EXE_surge`; the drill itself runs in this process through
//! `surge_loadtest::run_to_exit_code`, the entry point the `surge-loadtest` binary's
//! `main` calls after parsing its command line.

mod common;

use std::path::Path;
use std::sync::{Mutex, PoisonError, mpsc};

use clap::Parser;
use quick_xml::Reader;
use quick_xml::events::Event;
use surge_loadtest::Cli;
use tempfile::TempDir;

/// A hard bound on every drill, as `surge-loadtest --time-max` would be.
const TIME_MAX: &str = "120s";

/// What a drill ended with: the exit code the binary would have returned and what it
/// would have printed on stdout.
struct DrillOutput {
    code: u8,
    stdout: String,
}

/// One drill at a time: a drill that fails stops every child the process spawned
/// (`surge_loadtest::server::kill_all_children`), which in this shared test process
/// would include the servers of a drill running beside it.
static ONE_DRILL: Mutex<()> = Mutex::new(());

/// Run `surge-loadtest` with `args` (and a hard `--time-max`); past it the drill's
/// children are killed and the test fails.
fn loadtest(args: &[&str]) -> DrillOutput {
    let _alone = ONE_DRILL.lock().unwrap_or_else(PoisonError::into_inner);
    let argv: Vec<&str> = std::iter::once("surge-loadtest")
        .chain(args.iter().copied())
        .chain(["--time-max", TIME_MAX])
        .collect();
    let cli = Cli::try_parse_from(&argv).expect("drill arguments");
    let time_max = cli.common.time_max;
    let command_line = argv.join(" ");
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = Vec::new();
        let code = surge_loadtest::run_to_exit_code(&cli, command_line, &mut stdout);
        let _ = done.send(DrillOutput {
            code,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
        });
    });
    let out = match finished.recv_timeout(time_max) {
        Ok(out) => out,
        Err(mpsc::RecvTimeoutError::Timeout) => {
            surge_loadtest::server::kill_all_children();
            panic!("surge-loadtest {args:?}: --time-max {TIME_MAX} reached");
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("surge-loadtest {args:?} panicked"),
    };
    eprintln!(
        "--- surge-loadtest {args:?}: exit {}\n--- stdout\n{}",
        out.code, out.stdout
    );
    out
}

/// The surge binary of this build, as a drill argument.
fn surge() -> &'static str {
    common::surge_binary().to_str().expect("utf-8 path")
}

/// A temporary directory for one drill's files.
fn temp_dir(name: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("surge-drill-{name}-"))
        .tempdir()
        .expect("temp dir")
}

fn arg(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// `--json JSON --report HTML`.
fn outputs<'a>(json: &'a Path, html: &'a Path) -> [&'a str; 4] {
    ["--json", arg(json), "--report", arg(html)]
}

/// The load between the kills of the crash and failover drills.
const ROUND_LOAD: [&str; 6] = [
    "--connections",
    "8",
    "--load-ms-min",
    "200",
    "--load-ms-max",
    "600",
];

/// Parse the page as XML (it is written to be well-formed): every tag closes;
/// returns the ids of its `<svg>` elements.
fn svg_ids(html: &str) -> Vec<String> {
    let body = html
        .strip_prefix("<!DOCTYPE html>")
        .expect("starts with a doctype");
    let mut reader = Reader::from_str(body);
    let mut stack: Vec<String> = Vec::new();
    let mut ids = Vec::new();
    loop {
        match reader.read_event().expect("well-formed report") {
            Event::Start(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                if name == "svg" {
                    let id = e
                        .try_get_attribute("id")
                        .expect("attribute")
                        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
                        .unwrap_or_default();
                    ids.push(id);
                }
                stack.push(name);
            }
            Event::End(e) => {
                let name = String::from_utf8_lossy(e.name().as_ref()).into_owned();
                assert_eq!(stack.pop().as_deref(), Some(name.as_str()), "tags nest");
            }
            Event::Eof => break,
            _ => {}
        }
    }
    assert!(stack.is_empty(), "unclosed tags: {stack:?}");
    ids
}

#[test]
fn flash_sale_drill_passes_and_reports() {
    let tmp = temp_dir("flash");
    let dir = tmp.path();
    let json = dir.join("drill.json");
    let html = dir.join("drill.html");
    let out = loadtest(&[
        "flash-sale",
        "--spawn",
        "--surge-bin",
        surge(),
        "--duration",
        "3s",
        "--rate",
        "300",
        "--connections",
        "16",
        "--skus",
        "4",
        "--stock",
        "100",
        "--ttl-ms",
        "1000",
        "--json",
        arg(&json),
        "--report",
        arg(&html),
    ]);
    assert_eq!(out.code, 0, "drill failed");
    let stdout = &out.stdout;
    assert!(stdout.contains("verdict: PASS"));

    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["passed"], true);
    let run = &report["runs"][0];
    assert!(run["stats"]["requests"].as_u64().unwrap() > 500);
    assert!(run["stats"]["latency"]["p99_us"].as_u64().unwrap() > 0);
    assert!(run["stats"]["per_op"]["reserve"]["ok"].as_u64().unwrap() > 0);
    assert!(!run["stats"]["timeline"].as_array().unwrap().is_empty());
    assert_eq!(run["audit"]["passed"], true);
    // Sold-out answers are counted apart from the errors, and both add up to the
    // answers by code.
    let stats = &run["stats"];
    let by_code = stats["answers_by_code"].as_object().unwrap();
    let sold_out = by_code
        .get("insufficient_stock")
        .map_or(0, |n| n.as_u64().unwrap());
    assert_eq!(stats["sold_out"].as_u64().unwrap(), sold_out);
    let all: u64 = by_code.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(stats["errors"].as_u64().unwrap() + sold_out, all);
    assert!(stdout.contains("sold out"));

    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("<th>sold out</th><th>errors</th>"));
    assert!(
        !page.contains("http://") || !page.contains("src=\"http"),
        "no external assets"
    );
    assert!(!page.contains("<script"));
    let ids = svg_ids(&page);
    for chart in ["throughput", "p99", "distribution"] {
        assert!(ids.iter().any(|i| i == chart), "chart {chart} in {ids:?}");
    }
    assert!(page.contains("<polyline"));
}

#[test]
fn crash_drill_passes_with_three_restarts() {
    let tmp = temp_dir("crash");
    let dir = tmp.path();
    let html = dir.join("crash.html");
    let json = dir.join("crash.json");
    let out = loadtest(
        &[
            &["crash", "--surge-bin", surge(), "--restarts", "3"][..],
            &ROUND_LOAD,
            &[
                "--recovery-kill-pct",
                "50",
                "--skus",
                "4",
                "--stock",
                "100000",
            ],
            &outputs(&json, &html),
        ]
        .concat(),
    );
    assert_eq!(out.code, 0, "crash drill failed");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let crash = &report["crash"];
    assert_eq!(crash["restarts_done"], 3);
    assert_eq!(crash["lost_writes"], 0);
    assert!(crash["acknowledged_writes"].as_u64().unwrap() > 0);
    assert_eq!(crash["restarts"].as_array().unwrap().len(), 3);
    let ids = svg_ids(&std::fs::read_to_string(&html).unwrap());
    assert!(ids.iter().any(|i| i == "recovery"), "{ids:?}");
}

/// The limited sale: a window that opens 1 s in and closes 3 s in, a limit of 2,
/// scalpers; the audit passes and the refusals the rules make are reported.
#[test]
fn limited_sale_drill_passes_and_reports_refusals() {
    let tmp = temp_dir("limited");
    let dir = tmp.path();
    let json = dir.join("limited.json");
    let out = loadtest(&[
        "limited-sale",
        "--spawn",
        "--surge-bin",
        surge(),
        "--duration",
        "4s",
        "--rate",
        "200",
        "--connections",
        "16",
        "--skus",
        "2",
        "--stock",
        "50",
        "--shoppers",
        "200",
        "--ttl-ms",
        "1000",
        "--limit",
        "2",
        "--opens-after",
        "1s",
        "--closes-after",
        "3s",
        "--json",
        arg(&json),
        "--report",
        arg(&dir.join("limited.html")),
    ]);
    assert_eq!(out.code, 0, "limited-sale drill failed");
    // The HTML counts them as the table does: refused as intended, not errors.
    let html = std::fs::read_to_string(dir.join("limited.html")).unwrap();
    for code in ["sale_not_open", "purchase_limit_exceeded"] {
        let row = format!("<tr><td>{code}</td><td>refused as intended");
        assert!(
            html.contains(&row),
            "{code} not counted as intended: {html}"
        );
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["scenario"], "limited-sale");
    assert_eq!(report["passed"], true);
    let run = &report["runs"][0];
    assert_eq!(run["audit"]["passed"], true);
    let reserve = &run["stats"]["per_op"]["reserve"];
    assert!(reserve["ok"].as_u64().unwrap() > 0, "{reserve}");
    let notes = run["audit"]["notes"].to_string();
    for code in ["sale_not_open", "purchase_limit_exceeded"] {
        assert!(notes.contains(code), "no {code} refusals: {notes}");
    }
    assert!(
        notes.contains("sale_not_open before the opening")
            && !notes.contains("before the opening 0,"),
        "no tries before the opening: {notes}"
    );
    assert!(
        notes.contains("(SKU, customer) pairs checked against the limit of 2"),
        "{notes}"
    );
    // The refusals the sale's rules give are what the drill checks: counted apart,
    // not as errors (they were 44 % of a passing run's requests, all "errors").
    let stats = &run["stats"];
    let by_code = stats["answers_by_code"].as_object().unwrap();
    let count = |code: &str| by_code.get(code).map_or(0, |n| n.as_u64().unwrap());
    let intended = stats["intended_refusals"].as_u64().unwrap();
    assert!(intended > 0, "{stats}");
    assert_eq!(
        intended,
        count("sale_not_open") + count("purchase_limit_exceeded"),
        "{stats}"
    );
    let all: u64 = by_code.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(
        stats["errors"].as_u64().unwrap() + stats["sold_out"].as_u64().unwrap() + intended,
        all,
        "{stats}"
    );
}

#[test]
fn failover_drill_passes_with_three_kills() {
    let tmp = temp_dir("failover");
    let dir = tmp.path();
    let html = dir.join("failover.html");
    let json = dir.join("failover.json");
    let out = loadtest(
        &[
            &["failover", "--surge-bin", surge(), "--kills", "3"][..],
            &ROUND_LOAD,
            &["--compare-ms", "1500"],
            &outputs(&json, &html),
        ]
        .concat(),
    );
    assert_eq!(
        out.code, 0,
        "drill failed (nats-server missing? run `bash .ci/setup`)"
    );
    let stdout = &out.stdout;
    assert!(stdout.contains("verdict: PASS"));
    assert!(stdout.contains("time to promote"));
    // The side-by-side load runs check nothing: they say so, not PASS.
    assert!(
        stdout.contains("audit: not audited (0 checks, 0 failures)"),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json")).expect("parses");
    let failover = &report["failover"];
    assert_eq!(failover["kills_done"], 3);
    assert_eq!(failover["lost_writes"], 0);
    assert!(
        failover["acknowledged_reservations"]
            .as_u64()
            .expect("count")
            > 0
    );
    assert!(failover["promote_ms_p50"].as_f64().expect("p50") > 0.0);
    assert!(failover["replicated_rps"].as_f64().expect("rps") > 0.0);
    assert!(failover["sync_rps"].as_f64().expect("rps") > 0.0);
    let page = std::fs::read_to_string(&html).expect("html");
    assert!(page.contains("Failover drill"));
    assert!(svg_ids(&page).iter().any(|i| i == "promote"));
}
