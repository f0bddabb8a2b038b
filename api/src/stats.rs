//! `GET /v1/stats?from=&to=&group_by=&tz=`: orders created in a window, grouped by
//! local hour or day, SKU, customer, cancel reason or channel.
//!
//! The report pages through `Query::ListOrders` over the creation window (each page a
//! separate read, so other reads and writes go on between them) and aggregates as it
//! goes; it reads at most [`STATS_REPORT_ORDERS_MAX`] orders and refuses a window that
//! holds more, rather than answer with numbers that leave some out.
//!
//! Definitions, per group:
//! - `orders`: orders created in `[from, to)` that fall in the group;
//! - `cancelled`: those of them whose status is now `cancelled` (an order that expired
//!   unpaid is not a cancellation);
//! - `cancellation_rate`: `cancelled / orders` (for `reason`, see below);
//! - `paid_amount`, `refunded_amount`: the sums of the orders' payment amounts;
//! - `units_sold`: the units of orders whose stock is committed and has not come back:
//!   status `confirmed`, `picking`, `packed`, `shipped`, `delivered` or `completed`
//!   (not `reserved`, `expired`, `cancelled` or `returned`), with the lines as they are
//!   now (a modification that reduced a line counts the reduced quantity).
//!
//! By `sku`, each line counts toward its SKU: an order counts once in each of its
//! SKUs' groups, `units_sold` is the line's quantity, and the order's amounts are
//! split across its lines in proportion to line value (rounded down, the remainder to
//! the order's last line, so that the groups add up to the orders' totals).
//!
//! By `reason`, only cancelled orders count, keyed by cancel reason code: `orders` and
//! `cancelled` are the orders cancelled for that reason and `cancellation_rate` is
//! their share of all orders created in the window (so the rates add up to the
//! window's cancellation rate).

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::tz::TimeZone;
use serde::Serialize;
use surge_engine::limits::LIST_LIMIT_MAX;
use surge_engine::{OrderFilter, OrderStatus, OrderView, Query};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::routes::read;
use crate::state::AppState;
use crate::time::{format_ms, parse_rfc3339};

/// Orders one report may read; a window holding more is refused (400, naming `from`).
pub const STATS_REPORT_ORDERS_MAX: usize = 200_000;

/// What a report groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Hour,
    Day,
    Sku,
    Customer,
    Reason,
    Channel,
}

impl GroupBy {
    fn parse(text: &str) -> Option<GroupBy> {
        Some(match text {
            "hour" => GroupBy::Hour,
            "day" => GroupBy::Day,
            "sku" => GroupBy::Sku,
            "customer" => GroupBy::Customer,
            "reason" => GroupBy::Reason,
            "channel" => GroupBy::Channel,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            GroupBy::Hour => "hour",
            GroupBy::Day => "day",
            GroupBy::Sku => "sku",
            GroupBy::Customer => "customer",
            GroupBy::Reason => "reason",
            GroupBy::Channel => "channel",
        }
    }
}

/// The report's query, checked.
pub struct ReportSpec {
    pub from_ms: u64,
    /// Exclusive.
    pub to_ms: u64,
    pub group_by: GroupBy,
    /// The zone's name as asked (`UTC` by default).
    pub tz_name: String,
    pub tz: TimeZone,
}

/// The report's parameters as given (empty counts as absent).
pub struct ReportParams<'a> {
    pub from: Option<&'a str>,
    pub to: Option<&'a str>,
    pub group_by: Option<&'a str>,
    pub tz: Option<&'a str>,
}

impl ReportParams<'_> {
    /// Any of them given: the caller asks for a report, not the totals.
    pub fn any(&self) -> bool {
        self.from.is_some() || self.to.is_some() || self.group_by.is_some() || self.tz.is_some()
    }

    pub fn check(&self, now_ms: u64) -> Result<ReportSpec, ApiError> {
        // Without `from`, every order since the start (API.md gives `to` a default
        // and is silent on `from`; its OpenAPI parameter was already optional).
        let from_ms = match self.from {
            None => 0,
            Some(t) => instant("from", t)?,
        };
        let to_ms = match self.to {
            None => now_ms,
            Some(t) => instant("to", t)?,
        };
        if to_ms <= from_ms {
            return Err(match self.to {
                Some(_) => ApiError::validation("to", "must be later than from"),
                None => ApiError::validation("from", "must be in the past when to is left out"),
            });
        }
        let (tz_name, tz) = match self.tz {
            None => ("UTC".to_string(), TimeZone::UTC),
            // The zone's name as the time zone database spells it (the look-up
            // ignores case: `asia/shanghai` answers `Asia/Shanghai`).
            Some(name) => match TimeZone::get(name) {
                Ok(tz) => (tz.iana_name().unwrap_or(name).to_string(), tz),
                Err(_) => {
                    return Err(ApiError::validation(
                        "tz",
                        format!("unknown time zone {name:?}: an IANA name such as Asia/Shanghai"),
                    ));
                }
            },
        };
        // Each parameter given is checked first, so a bad one is named itself.
        let group_by = match self.group_by {
            None => {
                return Err(ApiError::validation(
                    "group_by",
                    "required with from/to/tz: hour, day, sku, customer, reason or channel",
                ));
            }
            Some(g) => GroupBy::parse(g).ok_or_else(|| {
                ApiError::validation(
                    "group_by",
                    format!("unknown grouping {g:?}: hour, day, sku, customer, reason or channel"),
                )
            })?,
        };
        Ok(ReportSpec {
            from_ms,
            to_ms,
            group_by,
            tz_name,
            tz,
        })
    }
}

fn instant(field: &str, text: &str) -> Result<u64, ApiError> {
    parse_rfc3339(text).ok_or_else(|| {
        ApiError::validation(
            field,
            format!(
                "must be an RFC 3339 instant {}",
                crate::routes::RFC3339_QUERY_HINT
            ),
        )
    })
}

/// The local hour or day of an instant, as a key: `YYYY-MM-DDTHH` or `YYYY-MM-DD`.
/// In a fall-back transition the repeated local hour is one key.
pub fn time_key(at_ms: u64, tz: &TimeZone, hourly: bool) -> String {
    // Engine times are far inside jiff's range (years -9999..=9999).
    let at = Timestamp::from_millisecond(at_ms as i64).expect("engine times are in range");
    let local = tz.to_datetime(at);
    if hourly {
        format!(
            "{:04}-{:02}-{:02}T{:02}",
            local.year(),
            local.month(),
            local.day(),
            local.hour()
        )
    } else {
        format!(
            "{:04}-{:02}-{:02}",
            local.year(),
            local.month(),
            local.day()
        )
    }
}

/// `amount` split across parts in proportion to `weights`, rounded down, the remainder
/// to the last part: the shares add up to `amount`. All zero weights: all to the last.
pub fn split_by_weight(amount: u64, weights: &[u64]) -> Vec<u64> {
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let mut shares: Vec<u64> = weights
        .iter()
        .map(|&w| {
            (u128::from(amount) * u128::from(w))
                .checked_div(total)
                .map_or(0, |share| share as u64)
        })
        .collect();
    let given: u64 = shares.iter().sum();
    if let Some(last) = shares.last_mut() {
        *last += amount - given;
    }
    shares
}

/// One group's sums.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Sums {
    pub orders: u64,
    pub cancelled: u64,
    pub paid_amount: u64,
    pub refunded_amount: u64,
    pub units_sold: u64,
}

/// The groups, by key, as orders are added.
pub struct Aggregate {
    group_by: GroupBy,
    tz: TimeZone,
    groups: BTreeMap<String, Sums>,
    /// Orders added (all of them, also those a `reason` report leaves out).
    orders: u64,
}

impl Aggregate {
    pub fn new(group_by: GroupBy, tz: TimeZone) -> Aggregate {
        Aggregate {
            group_by,
            tz,
            groups: BTreeMap::new(),
            orders: 0,
        }
    }

    fn group(&mut self, key: &str) -> &mut Sums {
        if !self.groups.contains_key(key) {
            self.groups.insert(key.to_string(), Sums::default());
        }
        self.groups.get_mut(key).expect("just inserted")
    }

    pub fn add(&mut self, o: &OrderView) {
        self.orders += 1;
        let cancelled = u64::from(o.status == OrderStatus::Cancelled);
        let sold = o.status.holds_committed_stock();
        let units: u64 = if sold {
            o.lines.iter().map(|l| l.qty).sum()
        } else {
            0
        };
        let whole = Sums {
            orders: 1,
            cancelled,
            paid_amount: o.payment.paid_amount,
            refunded_amount: o.payment.refunded_amount,
            units_sold: units,
        };
        let key = match self.group_by {
            GroupBy::Hour => time_key(o.created_at_ms, &self.tz, true),
            GroupBy::Day => time_key(o.created_at_ms, &self.tz, false),
            GroupBy::Customer => o.customer_id.to_string(),
            GroupBy::Channel => o.channel.clone(),
            GroupBy::Reason => match &o.cancellation {
                Some(c) if cancelled == 1 => c.reason.as_str().to_string(),
                _ => return,
            },
            GroupBy::Sku => {
                self.add_lines(o, cancelled, sold);
                return;
            }
        };
        let g = self.group(&key);
        g.orders += whole.orders;
        g.cancelled += whole.cancelled;
        g.paid_amount = g.paid_amount.saturating_add(whole.paid_amount);
        g.refunded_amount = g.refunded_amount.saturating_add(whole.refunded_amount);
        g.units_sold += whole.units_sold;
    }

    fn add_lines(&mut self, o: &OrderView, cancelled: u64, sold: bool) {
        let values: Vec<u64> = o.lines.iter().map(|l| l.qty * l.unit_price).collect();
        let paid = split_by_weight(o.payment.paid_amount, &values);
        let refunded = split_by_weight(o.payment.refunded_amount, &values);
        // An order counts once per SKU, even with two lines of it.
        let mut seen: Vec<&str> = Vec::with_capacity(o.lines.len());
        for (i, line) in o.lines.iter().enumerate() {
            let first = !seen.contains(&&*line.sku);
            if first {
                seen.push(&line.sku);
            }
            let g = self.group(&line.sku);
            if first {
                g.orders += 1;
                g.cancelled += cancelled;
            }
            g.paid_amount = g.paid_amount.saturating_add(paid[i]);
            g.refunded_amount = g.refunded_amount.saturating_add(refunded[i]);
            if sold {
                g.units_sold += line.qty;
            }
        }
    }

    pub fn finish(self) -> Vec<GroupBody> {
        let window_orders = self.orders;
        let by_reason = self.group_by == GroupBy::Reason;
        self.groups
            .into_iter()
            .map(|(key, s)| {
                let base = if by_reason { window_orders } else { s.orders };
                GroupBody {
                    key,
                    orders: s.orders,
                    cancelled: s.cancelled,
                    cancellation_rate: if base == 0 {
                        0.0
                    } else {
                        s.cancelled as f64 / base as f64
                    },
                    paid_amount: s.paid_amount,
                    refunded_amount: s.refunded_amount,
                    units_sold: s.units_sold,
                }
            })
            .collect()
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct GroupBody {
    /// `YYYY-MM-DDTHH` (hour) or `YYYY-MM-DD` (day), local to `tz`; the SKU id; the
    /// customer id; the cancel reason code; the channel (`""`: orders without one).
    pub key: String,
    pub orders: u64,
    pub cancelled: u64,
    /// `cancelled / orders`; by `reason`, the reason's cancellations over all orders
    /// created in the window.
    pub cancellation_rate: f64,
    /// Minor units (by `sku`: the order's amount split by line value).
    pub paid_amount: u64,
    pub refunded_amount: u64,
    pub units_sold: u64,
}

/// `GET /v1/stats` with `from`/`to`/`group_by`/`tz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatsReportBody {
    /// The window's start, RFC 3339 UTC (inclusive).
    pub from: String,
    /// The window's end, RFC 3339 UTC (exclusive; now when not given).
    pub to: String,
    /// The IANA zone of the hour and day keys.
    pub tz: String,
    /// `hour`, `day`, `sku`, `customer`, `reason` or `channel`.
    pub group_by: &'static str,
    /// Groups with at least one order, in ascending key order.
    pub groups: Vec<GroupBody>,
}

/// What `GET /v1/stats` answers: the totals, or a report (for the OpenAPI document).
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum StatsAnswer {
    Totals(crate::routes::StatsBody),
    Report(StatsReportBody),
}

/// Answer a report.
pub async fn report(st: &AppState, spec: ReportSpec) -> Result<StatsReportBody, ApiError> {
    let filter = OrderFilter {
        created_from_ms: Some(spec.from_ms),
        // The engine's bound is inclusive; the window's end is not.
        created_to_ms: Some(spec.to_ms - 1),
        ..OrderFilter::default()
    };
    let mut aggregate = Aggregate::new(spec.group_by, spec.tz);
    let mut read_so_far = 0usize;
    let mut cursor = None;
    loop {
        let query = Query::ListOrders {
            filter: filter.clone(),
            cursor,
            limit: LIST_LIMIT_MAX,
        };
        let page =
            read::<surge_engine::Page<surge_engine::OrderView, surge_engine::OrderId>>(st, query)
                .await?;
        read_so_far += page.items.len();
        if read_so_far > STATS_REPORT_ORDERS_MAX {
            return Err(ApiError::validation(
                "from",
                format!(
                    "the window holds more than {STATS_REPORT_ORDERS_MAX} orders, the most one report reads: narrow it"
                ),
            ));
        }
        for o in &page.items {
            aggregate.add(o);
        }
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(StatsReportBody {
        from: format_ms(spec.from_ms),
        to: format_ms(spec.to_ms),
        tz: spec.tz_name,
        group_by: spec.group_by.as_str(),
        groups: aggregate.finish(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> u64 {
        parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn keys_are_local_to_the_zone() {
        let shanghai = TimeZone::get("Asia/Shanghai").unwrap();
        let late = ms("2026-11-29T23:30:00Z");
        // 23:30 UTC on day D is 07:30 on D+1 in Shanghai (UTC+8).
        assert_eq!(time_key(late, &shanghai, false), "2026-11-30");
        assert_eq!(time_key(late, &shanghai, true), "2026-11-30T07");
        assert_eq!(time_key(late, &TimeZone::UTC, false), "2026-11-29");
        assert_eq!(time_key(late, &TimeZone::UTC, true), "2026-11-29T23");
        // Before 16:00 UTC it is the same day there.
        let early = ms("2026-11-29T15:59:59.999Z");
        assert_eq!(time_key(early, &shanghai, false), "2026-11-29");
        assert_eq!(time_key(early, &shanghai, true), "2026-11-29T23");
        // A zone with daylight saving time: New York is UTC-4 in July, UTC-5 in December.
        let new_york = TimeZone::get("America/New_York").unwrap();
        assert_eq!(
            time_key(ms("2026-07-01T03:30:00Z"), &new_york, true),
            "2026-06-30T23"
        );
        assert_eq!(
            time_key(ms("2026-12-01T03:30:00Z"), &new_york, true),
            "2026-11-30T22"
        );
    }

    #[test]
    fn the_tz_database_is_bundled() {
        // No system files are needed: the database is compiled in.
        for name in ["UTC", "Asia/Shanghai", "Europe/Berlin", "America/Sao_Paulo"] {
            assert!(TimeZone::get(name).is_ok(), "{name}");
        }
        assert!(TimeZone::get("Mars/Olympus_Mons").is_err());
    }

    #[test]
    fn report_parameters_are_checked() {
        let params = |from, to, group_by, tz| ReportParams {
            from,
            to,
            group_by,
            tz,
        };
        let now = ms("2026-11-30T00:00:00Z");
        let spec = params(
            Some("2026-11-29T00:00:00+08:00"),
            None,
            Some("day"),
            Some("Asia/Shanghai"),
        )
        .check(now)
        .unwrap();
        assert_eq!(spec.from_ms, ms("2026-11-28T16:00:00Z"));
        assert_eq!(spec.to_ms, now);
        assert_eq!(spec.group_by, GroupBy::Day);
        let field = |p: ReportParams<'_>| p.check(now).err().unwrap().field.unwrap();
        assert_eq!(
            field(params(
                Some("2026-11-29T00:00:00Z"),
                None,
                Some("day"),
                Some("Asia/Nowhere")
            )),
            "tz"
        );
        assert_eq!(
            field(params(
                Some("2026-11-29T00:00:00Z"),
                None,
                Some("week"),
                None
            )),
            "group_by"
        );
        assert_eq!(
            field(params(Some("2026-11-29T00:00:00Z"), None, None, None)),
            "group_by"
        );
        assert!(params(None, None, Some("day"), None).check(1_000).is_ok());
        assert_eq!(
            field(params(Some("yesterday"), None, Some("day"), None)),
            "from"
        );
        assert_eq!(
            field(params(
                Some("2026-11-29T00:00:00Z"),
                Some("2026-11-29T00:00:00Z"),
                Some("day"),
                None
            )),
            "to"
        );
        assert!(!params(None, None, None, None).any());
    }

    #[test]
    fn amounts_split_by_line_value_add_up() {
        assert_eq!(split_by_weight(1000, &[700, 1200]), vec![368, 632]);
        assert_eq!(split_by_weight(10, &[1, 1, 1]), vec![3, 3, 4]);
        assert_eq!(split_by_weight(0, &[5, 5]), vec![0, 0]);
        assert_eq!(split_by_weight(7, &[0, 0]), vec![0, 7]);
        assert_eq!(
            split_by_weight(u64::MAX, &[u64::MAX, 1])
                .iter()
                .map(|&s| u128::from(s))
                .sum::<u128>(),
            u128::from(u64::MAX)
        );
        assert!(split_by_weight(5, &[]).is_empty());
    }
}
