//! The drill report: every figure, as a table, as JSON.

use serde::Serialize;

use crate::audit::Audit;
use crate::crash::CrashReport;
use crate::failover::FailoverReport;
use crate::load::fmt_us;
use crate::stats::{RunStats, is_sold_out};

/// One system's run and its audit.
#[derive(Debug, Clone, Serialize)]
pub struct SystemRun {
    pub stats: RunStats,
    pub audit: Audit,
}

#[derive(Debug, Clone, Serialize)]
pub struct DrillReport {
    pub tool: String,
    pub scenario: String,
    /// RFC 3339-ish UTC start time (seconds since the epoch as well, for machines).
    pub started_unix_s: u64,
    pub command: String,
    pub config: serde_json::Value,
    pub runs: Vec<SystemRun>,
    pub crash: Option<CrashReport>,
    pub failover: Option<FailoverReport>,
    pub passed: bool,
}

impl DrillReport {
    pub fn failures(&self) -> Vec<String> {
        self.runs
            .iter()
            .flat_map(|r| {
                r.audit
                    .failures
                    .iter()
                    .map(move |f| format!("{}: {f}", r.stats.label))
            })
            .collect()
    }

    /// The final table, plain text.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!("\n== {} drill ==\n", self.scenario));
        out.push_str(&format!(
            "{:<22} {:>10} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}  audit\n",
            "system",
            "requests",
            "sold out",
            "errors",
            "req/s",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max"
        ));
        for r in &self.runs {
            let s = &r.stats;
            out.push_str(&format!(
                "{:<22} {:>10} {:>9} {:>9} {:>10.0} {:>9} {:>9} {:>9} {:>9} {:>9}  {}\n",
                s.label,
                s.requests,
                s.sold_out,
                s.errors,
                s.throughput_rps,
                fmt_us(s.latency.p50_us),
                fmt_us(s.latency.p90_us),
                fmt_us(s.latency.p99_us),
                fmt_us(s.latency.p999_us),
                fmt_us(s.latency.max_us),
                r.audit.verdict()
            ));
        }
        for r in &self.runs {
            let s = &r.stats;
            out.push_str(&format!(
                "\n{}: {} sessions in {:.1}s ({:.0}/s); {}\n",
                s.label,
                s.sessions,
                s.elapsed_s,
                s.sessions as f64 / s.elapsed_s.max(1e-9),
                s.coordinated_omission
            ));
            out.push_str(&format!(
                "  {:<18} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                "operation", "requests", "2xx", "p50", "p99", "max"
            ));
            for (op, o) in &s.per_op {
                out.push_str(&format!(
                    "  {:<18} {:>9} {:>9} {:>9} {:>9} {:>9}\n",
                    op,
                    o.requests,
                    o.ok,
                    fmt_us(o.latency.p50_us),
                    fmt_us(o.latency.p99_us),
                    fmt_us(o.latency.max_us)
                ));
            }
            if s.intended_refusals > 0 {
                out.push_str(&format!(
                    "  refused as the drill intends (not errors): {} ({})\n",
                    s.intended_refusals,
                    s.intended.join(", ")
                ));
            }
            if !s.answers_by_code.is_empty() {
                out.push_str("  answers by problem code:");
                for (code, n) in &s.answers_by_code {
                    let kind = if is_sold_out(code) { " (sold out)" } else { "" };
                    out.push_str(&format!(" {code}={n}{kind}"));
                }
                out.push('\n');
            }
            let a = &r.audit;
            out.push_str(&format!(
                "  audit: {} ({} checks, {} failures)\n",
                a.verdict(),
                a.checks,
                a.failures_total
            ));
            for n in &a.notes {
                out.push_str(&format!("    note: {n}\n"));
            }
            for f in &a.failures {
                out.push_str(&format!("    FAIL: {f}\n"));
            }
        }
        for other in self.runs.iter().skip(1) {
            let (a, b) = (&self.runs[0].stats, &other.stats);
            let sessions = |s: &crate::stats::RunStats| s.sessions as f64 / s.elapsed_s.max(1e-9);
            out.push_str(&format!(
                "\n{} / {}: requests/s x{:.2}, sessions/s x{:.2}, p99 x{:.2}\n",
                a.label,
                b.label,
                a.throughput_rps / b.throughput_rps.max(1e-9),
                sessions(a) / sessions(b).max(1e-9),
                a.latency.p99_us as f64 / (b.latency.p99_us.max(1)) as f64
            ));
        }
        if let Some(c) = &self.crash {
            out.push_str(&format!(
                "\ncrash: {} restarts, {} kills ({} while recovering, {} of them seen not ready), {} acknowledged writes ({} reservations, {} orders), {} lost\n",
                c.restarts_done,
                c.kills,
                c.kills_while_recovering,
                c.kills_confirmed_not_ready,
                c.acknowledged_writes,
                c.acknowledged_reservations,
                c.acknowledged_orders,
                c.lost_writes
            ));
            out.push_str(&format!(
                "recovery (spawn to /readyz 200): min {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
                c.recovery_ms_min, c.recovery_ms_p50, c.recovery_ms_p99, c.recovery_ms_max
            ));
        }
        if let Some(f) = &self.failover {
            out.push_str(&f.summary());
        }
        out.push_str(&format!(
            "\nverdict: {}\n",
            if self.passed { "PASS" } else { "FAIL" }
        ));
        out
    }
}
