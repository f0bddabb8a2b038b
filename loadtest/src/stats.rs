//! Latency and outcome recording: HdrHistograms overall, per operation and per second.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, 1 us to 10 minutes.
const LATENCY_US_MAX: u64 = 600_000_000;
/// Per-second buckets kept at most (a drill longer than this folds into the last).
const SECONDS_MAX: usize = 24 * 3600;

fn histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, sigfig).expect("valid histogram bounds")
}

/// Problem codes that say the stock ran out: during a flash sale that is the sale
/// working (it sold out), not something a user should worry about, so the report
/// counts these as "sold out", apart from the errors.
pub const SOLD_OUT_CODES: &[&str] = &["insufficient_stock"];

/// Whether an answer's problem code is a sold-out answer rather than an error.
pub fn is_sold_out(code: &str) -> bool {
    SOLD_OUT_CODES.contains(&code)
}

/// How latencies are corrected for coordinated omission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loop {
    /// Each latency is measured from the intended send time: nothing to correct.
    Open,
    /// As fast as possible, one request at a time per connection: correct with
    /// `record_correct` using the mean latency so far as the expected interval.
    Closed,
}

struct Second {
    requests: u64,
    sold_out: u64,
    errors: u64,
    hist: Histogram<u64>,
}

struct Inner {
    all: Histogram<u64>,
    intended: u64,
    per_op: BTreeMap<&'static str, (Histogram<u64>, u64, u64)>,
    codes: BTreeMap<String, u64>,
    seconds: Vec<Second>,
    requests: u64,
    sold_out: u64,
    errors: u64,
    sessions: u64,
}

/// Shared by every task of one run. A mutex is fine at the rates a 2-core box
/// reaches; the critical section is a few histogram increments.
pub struct Recorder {
    mode: Loop,
    /// (operation, problem code) answers the drill provokes on purpose.
    intended: &'static [(&'static str, &'static str)],
    started: Instant,
    inner: Mutex<Inner>,
}

/// A point-in-time view for progress lines.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub elapsed: Duration,
    pub requests: u64,
    pub sold_out: u64,
    pub errors: u64,
    pub p99_us: u64,
    pub last_second_rps: u64,
}

impl Recorder {
    pub fn new(mode: Loop) -> Recorder {
        Recorder::with_intended(mode, &[])
    }

    /// A recorder for a drill that provokes some refusals on purpose: each
    /// (operation, problem code) in `intended` (a purchase over its limit, an order
    /// before the sale opens, a cancel after shipment) is the server doing what the
    /// drill checks, counted as `intended_refusals`, not as an error.
    pub fn with_intended(
        mode: Loop,
        intended: &'static [(&'static str, &'static str)],
    ) -> Recorder {
        Recorder {
            mode,
            intended,
            started: Instant::now(),
            inner: Mutex::new(Inner {
                all: histogram(3),
                intended: 0,
                per_op: BTreeMap::new(),
                codes: BTreeMap::new(),
                seconds: Vec::new(),
                requests: 0,
                sold_out: 0,
                errors: 0,
                sessions: 0,
            }),
        }
    }

    pub fn mode(&self) -> Loop {
        self.mode
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn session_done(&self) {
        self.inner.lock().expect("recorder lock").sessions += 1;
    }

    /// Record one request of operation `op` that was due at `since` and ended now.
    /// `code` is `None` for a 2xx, else the problem code (or transport error): a
    /// sold-out code ([`is_sold_out`]) counts as sold out, any other as an error.
    pub fn record(&self, op: &'static str, since: Instant, code: Option<&str>) {
        let now = Instant::now();
        let latency_us =
            (now.saturating_duration_since(since).as_micros() as u64).clamp(1, LATENCY_US_MAX);
        let second =
            (now.saturating_duration_since(self.started).as_secs() as usize).min(SECONDS_MAX - 1);
        let mut g = self.inner.lock().expect("recorder lock");
        let inner = &mut *g;
        match self.mode {
            Loop::Open => {
                inner.all.saturating_record(latency_us);
            }
            Loop::Closed => {
                let expected = inner.all.mean().max(1.0) as u64;
                inner
                    .all
                    .record_correct(latency_us, expected)
                    .unwrap_or_else(|_| inner.all.saturating_record(latency_us));
            }
        }
        let (h, n, ok) = inner
            .per_op
            .entry(op)
            .or_insert_with(|| (histogram(3), 0, 0));
        h.saturating_record(latency_us);
        *n += 1;
        if code.is_none() {
            *ok += 1;
        }
        while inner.seconds.len() <= second {
            inner.seconds.push(Second {
                requests: 0,
                sold_out: 0,
                errors: 0,
                hist: histogram(2),
            });
        }
        let s = &mut inner.seconds[second];
        s.requests += 1;
        s.hist.saturating_record(latency_us);
        inner.requests += 1;
        if let Some(code) = code {
            if is_sold_out(code) {
                s.sold_out += 1;
                inner.sold_out += 1;
            } else if self.intended.contains(&(op, code)) {
                inner.intended += 1;
            } else {
                s.errors += 1;
                inner.errors += 1;
            }
            match inner.codes.get_mut(code) {
                Some(c) => *c += 1,
                None => {
                    inner.codes.insert(code.to_string(), 1);
                }
            }
        }
    }

    pub fn requests(&self) -> u64 {
        self.inner.lock().expect("recorder lock").requests
    }

    pub fn progress(&self) -> Progress {
        let elapsed = self.started.elapsed();
        let g = self.inner.lock().expect("recorder lock");
        let now_s = elapsed.as_secs() as usize;
        let last_second_rps = if now_s >= 1 {
            g.seconds.get(now_s - 1).map_or(0, |s| s.requests)
        } else {
            g.seconds.first().map_or(0, |s| s.requests)
        };
        Progress {
            elapsed,
            requests: g.requests,
            sold_out: g.sold_out,
            errors: g.errors,
            p99_us: g.all.value_at_quantile(0.99),
            last_second_rps,
        }
    }

    /// Every figure of the run. `elapsed` is the load phase's wall time.
    pub fn summary(&self, label: &str, elapsed: Duration) -> RunStats {
        let g = self.inner.lock().expect("recorder lock");
        let secs = elapsed.as_secs_f64().max(1e-9);
        let distribution = [
            0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
        ]
        .iter()
        .map(|&q| DistPoint {
            quantile: q,
            latency_us: if q >= 1.0 {
                g.all.max()
            } else {
                g.all.value_at_quantile(q)
            },
        })
        .collect();
        RunStats {
            label: label.to_string(),
            coordinated_omission: match self.mode {
                Loop::Open => "open loop: measured from the intended send time".into(),
                Loop::Closed => {
                    "closed loop: record_correct with the mean latency as the interval".into()
                }
            },
            elapsed_s: secs,
            requests: g.requests,
            sessions: g.sessions,
            sold_out: g.sold_out,
            intended_refusals: g.intended,
            intended: self
                .intended
                .iter()
                .map(|(op, code)| format!("{op}: {code}"))
                .collect(),
            errors: g.errors,
            throughput_rps: g.requests as f64 / secs,
            latency: Latency::of(&g.all),
            per_op: g
                .per_op
                .iter()
                .map(|(op, (h, n, ok))| {
                    (
                        op.to_string(),
                        OpStats {
                            requests: *n,
                            ok: *ok,
                            latency: Latency::of(h),
                        },
                    )
                })
                .collect(),
            answers_by_code: g.codes.clone(),
            timeline: g
                .seconds
                .iter()
                .enumerate()
                .map(|(t, s)| SecondStats {
                    t_s: t as u64,
                    requests: s.requests,
                    sold_out: s.sold_out,
                    errors: s.errors,
                    p99_us: s.hist.value_at_quantile(0.99),
                })
                .collect(),
            distribution,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct OpStats {
    pub requests: u64,
    /// Answered 2xx.
    pub ok: u64,
    pub latency: Latency,
}

#[derive(Debug, Clone, Serialize)]
pub struct SecondStats {
    pub t_s: u64,
    pub requests: u64,
    pub sold_out: u64,
    pub errors: u64,
    pub p99_us: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DistPoint {
    pub quantile: f64,
    pub latency_us: u64,
}

/// The figures of one run against one system.
#[derive(Debug, Clone, Serialize)]
pub struct RunStats {
    pub label: String,
    pub coordinated_omission: String,
    pub elapsed_s: f64,
    pub requests: u64,
    pub sessions: u64,
    /// `insufficient_stock` answers ([`SOLD_OUT_CODES`]): the stock ran out, as a
    /// flash sale should; not errors.
    pub sold_out: u64,
    /// Refusals the drill provokes on purpose (`intended`): the server doing what the
    /// drill checks; not errors.
    pub intended_refusals: u64,
    /// The (operation: problem code) answers counted as `intended_refusals`.
    pub intended: Vec<String>,
    /// Other non-2xx answers and requests with no answer: what a user should worry about.
    pub errors: u64,
    pub throughput_rps: f64,
    /// Overall; in closed loop this includes the coordinated-omission correction.
    pub latency: Latency,
    pub per_op: BTreeMap<String, OpStats>,
    /// Every non-2xx answer (sold out and errors) and unanswered request, by code.
    pub answers_by_code: BTreeMap<String, u64>,
    pub timeline: Vec<SecondStats>,
    pub distribution: Vec<DistPoint>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sold_out_answers_are_not_errors() {
        let rec = Recorder::new(Loop::Open);
        let t = Instant::now();
        rec.record("reserve", t, None);
        rec.record("reserve", t, Some("insufficient_stock"));
        rec.record("reserve", t, Some("insufficient_stock"));
        rec.record("reserve", t, Some("overloaded"));
        rec.record("pay", t, Some("transport_error"));
        let p = rec.progress();
        assert_eq!((p.requests, p.sold_out, p.errors), (5, 2, 2));
        let s = rec.summary("surge", Duration::from_secs(1));
        assert_eq!((s.requests, s.sold_out, s.errors), (5, 2, 2));
        assert_eq!(s.answers_by_code["insufficient_stock"], 2);
        assert_eq!(s.answers_by_code.values().sum::<u64>(), 4);
        let second = &s.timeline[0];
        assert_eq!((second.sold_out, second.errors), (2, 2));
    }

    /// A refusal the drill provokes on purpose is counted apart, for its operation
    /// only: the same code from another operation is an error.
    #[test]
    fn intended_refusals_are_not_errors_for_their_operation_only() {
        let rec = Recorder::with_intended(Loop::Open, &[("cancel_after_ship", "order_shipped")]);
        let t = Instant::now();
        rec.record("cancel_after_ship", t, Some("order_shipped"));
        rec.record("cancel_after_ship", t, Some("order_shipped"));
        rec.record("cancel", t, Some("order_shipped"));
        rec.record("cancel_after_ship", t, Some("overloaded"));
        let s = rec.summary("surge", Duration::from_secs(1));
        assert_eq!((s.requests, s.intended_refusals, s.errors), (4, 2, 2));
        assert_eq!(s.intended, ["cancel_after_ship: order_shipped"]);
        assert_eq!(s.answers_by_code["order_shipped"], 3);
        assert_eq!(rec.progress().errors, 2);
    }
}
