//! `--report FILE.html`: one self-contained page (inline CSS and SVG, no scripts,
//! no external assets) that opens offline. The SVG is written by hand.

use std::fmt::Write;

use crate::load::fmt_us;
use crate::report::DrillReport;
use crate::stats::is_sold_out;

const COLORS: &[&str] = &["#1f6feb", "#d1242f", "#1a7f37", "#9a6700"];
const W: f64 = 720.0;
const H: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 40.0;

pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A "nice" upper bound for an axis.
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

fn fmt_num(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if v >= 100.0 || v == v.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// A line chart; `x_labels` maps an x value to its tick label.
pub fn line_chart(
    id: &str,
    title: &str,
    x_title: &str,
    y_title: &str,
    series: &[Series],
    x_ticks: &[(f64, String)],
    x_max: f64,
) -> String {
    let y_max = nice_max(
        series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .fold(0.0, f64::max),
    );
    let x_max = if x_max > 0.0 { x_max } else { 1.0 };
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let sx = |x: f64| LEFT + x / x_max * pw;
    let sy = |y: f64| TOP + ph - y / y_max * ph;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="{id}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}">"#,
        t = esc(title)
    );
    let _ = write!(
        s,
        r#"<text x="{}" y="18" class="title">{}</text>"#,
        LEFT,
        esc(title)
    );
    for i in 0..=4 {
        let y = y_max * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{LEFT}" x2="{}" y1="{y1:.1}" y2="{y1:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            W - RIGHT,
            LEFT - 6.0,
            sy(y) + 4.0,
            fmt_num(y),
            y1 = sy(y)
        );
    }
    for (x, label) in x_ticks {
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"#,
            sx(*x),
            H - BOTTOM + 16.0,
            esc(label)
        );
    }
    let _ = write!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">{}</text>"#,
        LEFT + pw / 2.0,
        H - 6.0,
        esc(x_title)
    );
    let _ = write!(
        s,
        r#"<text x="14" y="{:.1}" text-anchor="middle" class="axis" transform="rotate(-90 14 {:.1})">{}</text>"#,
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_title)
    );
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for (i, ser) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let pts: Vec<String> = ser
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        if !pts.is_empty() {
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                pts.join(" ")
            );
        }
        let _ = write!(
            s,
            r#"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{color}"/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"#,
            W - RIGHT - 150.0,
            TOP + 8.0 + 16.0 * i as f64,
            W - RIGHT - 135.0,
            TOP + 17.0 + 16.0 * i as f64,
            esc(&ser.name)
        );
    }
    s.push_str("</svg>");
    s
}

/// A grouped bar chart: one group per metric, one bar per system, each group
/// scaled on its own (the numbers are printed on the bars).
/// One bar: system label, value, text printed above it.
pub type Bar = (String, f64, String);

pub fn bar_chart(id: &str, title: &str, groups: &[(String, Vec<Bar>)]) -> String {
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg id="{id}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><text x="{LEFT}" y="18" class="title">{t}</text>"#,
        t = esc(title)
    );
    let gw = pw / groups.len().max(1) as f64;
    for (g, (name, bars)) in groups.iter().enumerate() {
        let max = bars.iter().map(|b| b.1).fold(0.0, f64::max).max(1e-9);
        let bw = (gw * 0.7) / bars.len().max(1) as f64;
        let x0 = LEFT + gw * g as f64 + gw * 0.15;
        for (i, (label, v, text)) in bars.iter().enumerate() {
            let h = v / max * (ph - 20.0);
            let x = x0 + bw * i as f64;
            let y = TOP + ph - h;
            let _ = write!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}</title></rect><text x="{:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"#,
                bw * 0.9,
                COLORS[i % COLORS.len()],
                esc(label),
                x + bw * 0.45,
                y - 4.0,
                esc(text)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">{}</text>"#,
            LEFT + gw * (g as f64 + 0.5),
            H - BOTTOM + 18.0,
            esc(name)
        );
    }
    if let Some((_, bars)) = groups.first() {
        for (i, (label, _, _)) in bars.iter().enumerate() {
            let _ = write!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="10" height="10" fill="{}"/><text x="{:.1}" y="{:.1}" class="tick">{}</text>"#,
                W - RIGHT - 150.0,
                TOP + 8.0 + 16.0 * i as f64,
                COLORS[i % COLORS.len()],
                W - RIGHT - 135.0,
                TOP + 17.0 + 16.0 * i as f64,
                esc(label)
            );
        }
    }
    s.push_str("</svg>");
    s
}

fn time_ticks(max_s: f64) -> Vec<(f64, String)> {
    let step = nice_max(max_s / 6.0).max(1.0);
    let mut out = Vec::new();
    let mut t = 0.0;
    while t <= max_s + 1e-9 {
        out.push((t, format!("{t:.0}s")));
        t += step;
    }
    out
}

/// The whole page.
pub fn render(report: &DrillReport) -> String {
    let mut body = String::new();
    let verdict = if report.passed { "PASS" } else { "FAIL" };
    let _ = write!(
        body,
        r#"<h1>surge-loadtest: {} drill <span class="{}">{}</span></h1><p class="cmd"><code>{}</code></p>"#,
        esc(&report.scenario),
        verdict.to_lowercase(),
        verdict,
        esc(&report.command)
    );
    body.push_str("<h2>Summary</h2><table><thead><tr><th>system</th><th>requests</th><th>sold out</th><th>errors</th><th>req/s</th><th>sessions/s</th><th>p50</th><th>p90</th><th>p99</th><th>p99.9</th><th>max</th><th>audit</th></tr></thead><tbody>");
    for r in &report.runs {
        let s = &r.stats;
        let _ = write!(
            body,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.label),
            s.requests,
            s.sold_out,
            s.errors,
            s.throughput_rps,
            s.sessions as f64 / s.elapsed_s.max(1e-9),
            fmt_us(s.latency.p50_us),
            fmt_us(s.latency.p90_us),
            fmt_us(s.latency.p99_us),
            fmt_us(s.latency.p999_us),
            fmt_us(s.latency.max_us),
            r.audit.verdict()
        );
    }
    body.push_str("</tbody></table>");

    let max_t = report
        .runs
        .iter()
        .map(|r| r.stats.timeline.len() as f64)
        .fold(1.0, f64::max);
    let ticks = time_ticks(max_t);
    let throughput: Vec<Series> = report
        .runs
        .iter()
        .map(|r| Series {
            name: r.stats.label.clone(),
            points: r
                .stats
                .timeline
                .iter()
                // The last bucket is usually a partial second; leave it out.
                .filter(|s| (s.t_s as f64) + 1.0 <= r.stats.elapsed_s.floor().max(1.0))
                .map(|s| (s.t_s as f64 + 0.5, s.requests as f64))
                .collect(),
        })
        .collect();
    body.push_str("<h2>Throughput over time</h2>");
    body.push_str(&line_chart(
        "throughput",
        "Requests per second",
        "time since start",
        "req/s",
        &throughput,
        &ticks,
        max_t,
    ));
    let p99: Vec<Series> = report
        .runs
        .iter()
        .map(|r| Series {
            name: r.stats.label.clone(),
            points: r
                .stats
                .timeline
                .iter()
                .filter(|s| s.requests > 0)
                .map(|s| (s.t_s as f64 + 0.5, s.p99_us as f64 / 1e3))
                .collect(),
        })
        .collect();
    body.push_str("<h2>p99 latency over time</h2>");
    body.push_str(&line_chart(
        "p99",
        "p99 latency per second (ms)",
        "time since start",
        "ms",
        &p99,
        &ticks,
        max_t,
    ));
    // Distribution: x is the number of nines, -log10(1 - q), capped at 5 for max.
    let nines = |q: f64| if q >= 1.0 { 5.0 } else { -(1.0 - q).log10() };
    let dist: Vec<Series> = report
        .runs
        .iter()
        .map(|r| Series {
            name: r.stats.label.clone(),
            points: r
                .stats
                .distribution
                .iter()
                .map(|d| (nines(d.quantile), d.latency_us as f64 / 1e3))
                .collect(),
        })
        .collect();
    let dticks: Vec<(f64, String)> = [
        (0.0, "p0"),
        (1.0, "p90"),
        (2.0, "p99"),
        (3.0, "p99.9"),
        (4.0, "p99.99"),
        (5.0, "max"),
    ]
    .iter()
    .map(|(x, l)| (*x, l.to_string()))
    .collect();
    body.push_str("<h2>Latency distribution</h2>");
    body.push_str(&line_chart(
        "distribution",
        "Latency by percentile (ms)",
        "percentile",
        "ms",
        &dist,
        &dticks,
        5.0,
    ));
    if report.runs.len() >= 2 {
        let metric = |name: &str, f: &dyn Fn(&crate::stats::RunStats) -> (f64, String)| {
            (
                name.to_string(),
                report
                    .runs
                    .iter()
                    .map(|r| {
                        let (v, t) = f(&r.stats);
                        (r.stats.label.clone(), v, t)
                    })
                    .collect::<Vec<_>>(),
            )
        };
        let groups = vec![
            metric("requests/s", &|s| {
                (s.throughput_rps, format!("{:.0}", s.throughput_rps))
            }),
            metric("sessions/s", &|s| {
                let v = s.sessions as f64 / s.elapsed_s.max(1e-9);
                (v, format!("{v:.0}"))
            }),
            metric("p50", &|s| {
                (s.latency.p50_us as f64, fmt_us(s.latency.p50_us))
            }),
            metric("p99", &|s| {
                (s.latency.p99_us as f64, fmt_us(s.latency.p99_us))
            }),
            metric("reserve p99", &|s| {
                let v = s.per_op.get("reserve").map_or(0, |o| o.latency.p99_us);
                (v as f64, fmt_us(v))
            }),
        ];
        body.push_str("<h2>Side by side</h2>");
        body.push_str(&bar_chart("comparison", "surge vs baseline", &groups));
    }
    if let Some(f) = &report.failover {
        let _ = write!(
            body,
            "<h2>Failover drill</h2><pre>{}</pre>",
            esc(f.summary().trim())
        );
        let series = [Series {
            name: "promote ms".into(),
            points: f
                .failovers
                .iter()
                .map(|x| (f64::from(x.n), x.promote_ms))
                .collect(),
        }];
        let ticks: Vec<(f64, String)> = f
            .failovers
            .iter()
            .map(|x| (f64::from(x.n), x.n.to_string()))
            .collect();
        body.push_str(&line_chart(
            "promote",
            "Time to promote per failover (ms)",
            "failover",
            "ms",
            &series,
            &ticks,
            f.failovers.len().max(1) as f64,
        ));
    }
    if let Some(c) = &report.crash {
        let _ = write!(
            body,
            "<h2>Crash drill</h2><p>{} restarts, {} kills ({} while recovering), {} acknowledged writes, <b>{} lost</b>. Recovery (spawn to /readyz 200): min {:.1} ms, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms.</p>",
            c.restarts_done,
            c.kills,
            c.kills_while_recovering,
            c.acknowledged_writes,
            c.lost_writes,
            c.recovery_ms_min,
            c.recovery_ms_p50,
            c.recovery_ms_p99,
            c.recovery_ms_max
        );
        let series = [Series {
            name: "recovery ms".into(),
            points: c
                .restarts
                .iter()
                .map(|r| (f64::from(r.n), r.recovery_ms))
                .collect(),
        }];
        let n = c.restarts.len().max(1) as f64;
        let ticks: Vec<(f64, String)> = (0..=5)
            .map(|i| {
                let x = (n * f64::from(i) / 5.0).round();
                (x, format!("{x:.0}"))
            })
            .collect();
        body.push_str(&line_chart(
            "recovery",
            "Recovery time per restart (ms)",
            "restart",
            "ms",
            &series,
            &ticks,
            n,
        ));
    }
    body.push_str("<h2>Audit</h2>");
    for r in &report.runs {
        let _ = write!(
            body,
            "<h3>{}: {}</h3><p>{} checks, {} failures.</p><ul>",
            esc(&r.stats.label),
            r.audit.verdict(),
            r.audit.checks,
            r.audit.failures_total
        );
        for n in &r.audit.notes {
            let _ = write!(body, "<li>{}</li>", esc(n));
        }
        for f in &r.audit.failures {
            let _ = write!(body, r#"<li class="fail">{}</li>"#, esc(f));
        }
        body.push_str("</ul>");
        if !r.stats.answers_by_code.is_empty() {
            body.push_str(
                "<table><thead><tr><th>answer code</th><th>counted as</th><th>count</th></tr></thead><tbody>",
            );
            for (code, n) in &r.stats.answers_by_code {
                // As the table and the JSON count them: a refusal the drill provokes
                // on purpose (`intended`, "op: code") is not an error.
                let intended_for: Vec<&str> = r
                    .stats
                    .intended
                    .iter()
                    .filter_map(|entry| entry.split_once(": "))
                    .filter(|(_, intended)| intended == code)
                    .map(|(op, _)| op)
                    .collect();
                let kind = if is_sold_out(code) {
                    "sold out".to_string()
                } else if intended_for.is_empty() {
                    "error".to_string()
                } else {
                    format!("refused as intended ({})", intended_for.join(", "))
                };
                let _ = write!(
                    body,
                    "<tr><td>{}</td><td>{}</td><td>{n}</td></tr>",
                    esc(code),
                    esc(&kind)
                );
            }
            body.push_str("</tbody></table>");
        }
    }
    format!(
        r#"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/><title>surge-loadtest {scenario} report</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 780px; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.pass {{ color: #1a7f37; }} .fail {{ color: #d1242f; }}
svg {{ display: block; margin: 1em 0; }}
svg .title {{ font-size: 14px; font-weight: 600; }}
svg .tick {{ font-size: 11px; }} svg .axis {{ font-size: 12px; }}
code {{ font-size: 12px; word-break: break-all; }}
</style></head><body>
{body}
</body></html>
"#,
        scenario = esc(&report.scenario),
    )
}
