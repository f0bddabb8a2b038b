//! Shared by the engine tests that run a child process of their own test binary.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command as Process, Output};

use surge_engine::{Durability, EngineConfig};

/// A durable engine on a real data dir, with no snapshots of its own.
pub fn disk_config(dir: &Path) -> EngineConfig {
    EngineConfig {
        data_dir: dir.to_path_buf(),
        durability: Durability::Sync,
        snapshot_every_records: 0,
        snapshot_on_shutdown: false,
        ..EngineConfig::default()
    }
}

/// Run one `#[ignore]`d test of this same test binary as a child process, with
/// `env` set, and collect what it printed and how it ended.
pub fn run_child_test(test: &str, env: &[(&str, &std::ffi::OsStr)]) -> Output {
    let mut child = Process::new(std::env::current_exe().expect("test binary"));
    child.args([
        "--exact",
        test,
        "--include-ignored",
        "--nocapture",
        "--test-threads=1",
    ]);
    for (name, value) in env {
        child.env(name, value);
    }
    child.output().expect("run the child")
}
