//! Shared by the engine tests: a config and a child runner for the tests that run a
//! child process of their own test binary, and a name for each kind of refusal.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command as Process, Output};

use surge_engine::{Durability, EngineConfig, Rejection};

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

/// A refusal's kind, named as the tests write it (the words of the HTTP contract's
/// codes; the engine itself has none, `api/src/error.rs` assigns them).
pub fn refusal_kind(rejection: &Rejection) -> &'static str {
    match rejection {
        Rejection::Validation { .. } => "validation_failed",
        Rejection::InsufficientStock { .. } => "insufficient_stock",
        Rejection::UnknownSku { .. } => "unknown_sku",
        Rejection::UnknownOrder { .. } => "unknown_order",
        Rejection::UnknownReservation { .. } => "unknown_reservation",
        Rejection::InvalidTransition { .. } => "invalid_transition",
        Rejection::OrderShipped { .. } => "order_shipped",
        Rejection::DuplicateOrderNo { .. } => "duplicate_order_no",
        Rejection::IdempotencyConflict { .. } => "idempotency_conflict",
        Rejection::LimitReached { .. } => "overloaded",
        Rejection::OrderOnHold { .. } => "order_on_hold",
        Rejection::RefundExceedsPaid { .. } => "refund_exceeds_paid",
        Rejection::PurchaseLimitExceeded { .. } => "purchase_limit_exceeded",
        Rejection::SaleNotOpen { .. } => "sale_not_open",
    }
}
