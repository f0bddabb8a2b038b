//! Shared by the loadtest tests: find (or build) the surge binary, run the drill.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// target/<profile>/surge next to this test's executable, built by cargo if
/// needed (a no-op when fresh).
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
    let mut build = Command::new(env!("CARGO"));
    build.args(["build", "--quiet", "-p", "surge-api", "--bin", "surge"]);
    build.current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "cargo build -p surge-api failed");
    binary
}

/// Run `surge-loadtest` with `args`; a hard `--time-max` keeps every run bounded.
pub fn loadtest(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_surge-loadtest"))
        .args(args)
        .args(["--time-max", "120s"])
        .output()
        .expect("running surge-loadtest");
    eprintln!(
        "--- surge-loadtest {args:?}: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn temp_path(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("surge-loadtest-test-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
