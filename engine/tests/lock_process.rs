//! The data directory's lock holds against a second *process*, not just a second
//! open in the same process: while one process has the engine open, `Engine::open`
//! in another fails with `Error::Wal(surge_wal::Error::Locked)` and touches nothing;
//! once the first closes, the other opens and sees what the first wrote.
//!
//! The parent test runs this same test binary again as a child process (the child
//! test is `#[ignore]`d so a plain `cargo test` does not run it on its own). The
//! child prints one line saying how its open ended; the parent asserts on it.

mod common;

use std::path::Path;
use std::process::Output;

use surge_engine::{Command, Engine, EngineConfig, Error, Query, QueryReply, SkuView};

const CHILD_DIR: &str = "SURGE_TEST_LOCK_PROCESS_DIR";
const CHILD_TEST: &str = "child_opens_the_data_dir";

fn config(dir: &Path) -> EngineConfig {
    common::disk_config(dir)
}

/// The child: open the data dir named by the parent and print how that went.
#[test]
#[ignore = "run as a child process by a_second_process_is_locked_out_until_the_first_closes"]
fn child_opens_the_data_dir() {
    let dir = std::env::var(CHILD_DIR).expect("run by the parent test");
    match Engine::open(config(dir.as_ref())) {
        Err(Error::Wal(surge_wal::Error::Locked)) => println!("child open: locked"),
        Err(other) => println!("child open: other error: {other}"),
        Ok((handle, _)) => {
            let on_hand = match handle
                .query(Query::GetSku { sku: "A".into() })
                .expect("queued")
                .wait()
                .expect("answered")
            {
                Ok(QueryReply::Sku(SkuView { on_hand, .. })) => on_hand.to_string(),
                other => format!("{other:?}"),
            };
            println!("child open: ok, on_hand of A is {on_hand}");
            handle.shutdown();
        }
    }
}

fn run_child(dir: &Path) -> Output {
    common::run_child_test(CHILD_TEST, &[(CHILD_DIR, dir.as_os_str())])
}

/// The child's one report line (libtest may print its own status on the same line).
fn child_said(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the child failed:\n{stdout}\n{stderr}"
    );
    let lines: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.find("child open: ").map(|at| &l[at..]))
        .collect();
    assert_eq!(lines.len(), 1, "the child did not report once:\n{stdout}");
    lines[0].to_string()
}

#[test]
fn a_second_process_is_locked_out_until_the_first_closes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    let (handle, _) = Engine::open(config(&dir)).expect("the parent opens");
    handle
        .execute(
            Command::DefineSku {
                sku: "A".into(),
                name: "A".into(),
                on_hand: 17,
                low_stock_threshold: 0,
            },
            None,
        )
        .expect("queued")
        .expect("defined");
    let files_before = file_names(&dir);

    let locked = run_child(&dir);
    assert_eq!(child_said(&locked), "child open: locked");
    // The refused open left the directory as it was (names and bytes).
    assert_eq!(file_names(&dir), files_before);
    // And the parent still works.
    handle
        .execute(
            Command::AdjustStock {
                sku: "A".into(),
                delta: 3,
                reason: surge_engine::AdjustReason::Inbound,
                note: String::new(),
                actor: "t".into(),
            },
            None,
        )
        .expect("queued")
        .expect("adjusted");

    // `shutdown` joins the writer, which owns the storage and its lock.
    handle.shutdown();
    drop(handle);
    let opened = run_child(&dir);
    assert_eq!(child_said(&opened), "child open: ok, on_hand of A is 20");
}

/// The files of the data dir and their contents, but for the next segments that the
/// parent's storage prepares on its own thread (`wal-spare-<n>.tmp`), which may
/// appear at any time.
fn file_names(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("read data dir")
        .map(|e| e.expect("entry"))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !(name.starts_with("wal-spare") && name.ends_with(".tmp")))
        .map(|name| {
            let bytes = std::fs::read(dir.join(&name)).expect("read file");
            (name, bytes)
        })
        .collect();
    names.sort();
    names
}
