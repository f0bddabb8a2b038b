//! Reads of the state: views with names resolved, lists with cursors, stats, digest.
//! Nothing here changes the state.

use std::sync::Arc;

use crate::command::{
    CancellationView, HistoryView, HoldView, LedgerEntryView, LedgerFilter, LineView, OrderFilter,
    OrderLineView, OrderPolicy, OrderView, Page, PaymentView, Query, Rejection, Reply,
    ReservationView, ReturnView, SkuSales, SkuView, StatsView,
};
use crate::domain::{CancelReason, OrderId, OrderStatus, PaymentStatus, ReservationId, SkuIdx};
use crate::few::Few;
use crate::limits::{LIST_LIMIT_MAX, LIST_SCAN_MAX, STATS_TOP_MAX};
use crate::state::{Order, Reservation, State, check_sku_id};

/// The answer to a [`Query`].
#[derive(Debug, Clone, PartialEq)]
pub enum QueryReply {
    Sku(SkuView),
    Skus(Page<SkuView, SkuIdx>),
    Reservation(ReservationView),
    Order(Box<OrderView>),
    Orders(Page<OrderView, OrderId>),
    Stats(Box<StatsView>),
    Digest(u64),
    Idempotency(crate::IdempotencyStats),
    /// Ledger entries; the cursor is the position of the next one.
    Ledger(Page<LedgerEntryView, u64>),
    OrderPolicy(OrderPolicy),
    SkuCustomer(crate::command::SkuCustomerView),
}

/// The answer a read expects, taken out of a [`QueryReply`]: each query answers
/// one shape, so the caller names the shape instead of matching the enum.
/// `Err` gives back a reply of another shape (a bug: a query answered with a shape
/// it never answers).
macro_rules! reply_shape {
    ($($variant:ident => $ty:ty),* $(,)?) => {
        $(
            impl TryFrom<QueryReply> for $ty {
                type Error = QueryReply;
                fn try_from(reply: QueryReply) -> Result<$ty, QueryReply> {
                    match reply {
                        QueryReply::$variant(answer) => Ok(answer),
                        other => Err(other),
                    }
                }
            }
        )*
    };
}

reply_shape! {
    Sku => SkuView,
    Skus => Page<SkuView, SkuIdx>,
    Reservation => ReservationView,
    Order => Box<OrderView>,
    Orders => Page<OrderView, OrderId>,
    Stats => Box<StatsView>,
    Digest => u64,
    Idempotency => crate::IdempotencyStats,
    Ledger => Page<LedgerEntryView, u64>,
    OrderPolicy => OrderPolicy,
    SkuCustomer => crate::command::SkuCustomerView,
}

/// FNV-1a, 64 bit: a fixed, portable hash for digests and request fingerprints.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    fnv1a64_on(FNV1A64_START, bytes)
}

/// [`fnv1a64`] of nothing: where a hash starts.
pub const FNV1A64_START: u64 = 0xcbf2_9ce4_8422_2325;

/// [`fnv1a64`] carried on from `hash`, the hash of what came before:
/// `fnv1a64_on(fnv1a64(a), b) == fnv1a64(a ++ b)`. So a shared prefix is hashed once.
pub fn fnv1a64_on(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl State {
    pub fn query(&self, query: &Query) -> Result<QueryReply, Rejection> {
        match query {
            Query::GetSku { sku } => {
                // A SKU id that could not be one is unknown (404), whichever path
                // answers the read (the hot stock read answers so in front of it).
                let idx = self
                    .sku_index
                    .get(sku.as_str())
                    .ok_or_else(|| Rejection::UnknownSku { sku: sku.clone() })?;
                Ok(QueryReply::Sku(self.sku_view(*idx)))
            }
            Query::ListSkus { cursor, limit } => {
                let limit = (*limit).clamp(1, LIST_LIMIT_MAX);
                let start = cursor.map_or(0, |c| c.0 as usize + 1).min(self.skus.len());
                let end = (start + limit).min(self.skus.len());
                let items = (start..end)
                    .map(|i| self.sku_view(SkuIdx(i as u32)))
                    .collect();
                let next_cursor = (end < self.skus.len()).then(|| SkuIdx(end as u32 - 1));
                Ok(QueryReply::Skus(Page { items, next_cursor }))
            }
            Query::GetReservation { id } => {
                let r = self
                    .reservations
                    .get(id)
                    .ok_or(Rejection::UnknownReservation { id: *id })?;
                Ok(QueryReply::Reservation(self.reservation_view(r)))
            }
            Query::GetOrder { id } => {
                let order = self
                    .order_by_id(*id)
                    .ok_or_else(|| Rejection::UnknownOrder {
                        order: id.to_string(),
                    })?;
                Ok(QueryReply::Order(Box::new(self.order_view(order))))
            }
            Query::GetOrderByNo { order_no } => {
                let id = self.order_no_index.get(order_no.as_str()).ok_or_else(|| {
                    Rejection::UnknownOrder {
                        order: format!("with order_no {order_no:?}"),
                    }
                })?;
                Ok(QueryReply::Order(Box::new(
                    self.order_view(self.order_by_id(*id).expect("indexed")),
                )))
            }
            Query::ListOrders {
                filter,
                cursor,
                limit,
            } => self.list_orders(filter, *cursor, *limit),
            Query::Stats { top } => Ok(QueryReply::Stats(Box::new(self.stats(*top)))),
            Query::Digest => Ok(QueryReply::Digest(self.digest())),
            Query::IdempotencyStats => Ok(QueryReply::Idempotency(self.idempotency_stats())),
            Query::ListLedger {
                filter,
                cursor,
                limit,
            } => Ok(QueryReply::Ledger(
                self.list_ledger(filter, *cursor, *limit),
            )),
            Query::OrderPolicy => Ok(QueryReply::OrderPolicy(self.order_policy)),
            Query::SkuCustomer { sku, customer_id } => Ok(QueryReply::SkuCustomer(
                self.sku_customer(sku, customer_id)?,
            )),
        }
    }

    /// A digest of everything that replay must reproduce.
    pub fn digest(&self) -> u64 {
        fnv1a64(&crate::codec::encode_snapshot(&self.to_snapshot()))
    }

    fn order_by_id(&self, id: OrderId) -> Option<&Order> {
        id.0.checked_sub(1)
            .and_then(|i| self.orders.get(i as usize))
    }

    /// Newest first. The cursor is the id of the last order returned; at most
    /// `LIST_SCAN_MAX` orders are examined per call, after which a cursor is returned
    /// even if the page is short, so a selective filter never stalls the writer.
    fn list_orders(
        &self,
        filter: &OrderFilter,
        cursor: Option<OrderId>,
        limit: usize,
    ) -> Result<QueryReply, Rejection> {
        let limit = limit.clamp(1, LIST_LIMIT_MAX);
        let sku = match &filter.sku {
            Some(sku) => {
                check_sku_id(crate::command::Field::Sku, sku)?;
                match self.sku_index.get(sku.as_str()) {
                    Some(idx) => Some(*idx),
                    None => {
                        return Ok(QueryReply::Orders(Page {
                            items: Vec::new(),
                            next_cursor: None,
                        }));
                    }
                }
            }
            None => None,
        };
        // Ids grow with creation time, so the created range bounds the scan.
        let mut end = cursor.map_or(self.orders.len(), |c| {
            (c.0.saturating_sub(1) as usize).min(self.orders.len())
        });
        if let Some(to) = filter.created_to_ms {
            end = end.min(self.orders.partition_point(|o| o.created_at_ms <= to));
        }
        let start = filter.created_from_ms.map_or(0, |from| {
            self.orders.partition_point(|o| o.created_at_ms < from)
        });
        let matches = |o: &Order| {
            filter.status.is_none_or(|s| o.status == s)
                && filter
                    .customer_id
                    .as_deref()
                    .is_none_or(|c| &*o.customer_id == c)
                && sku.is_none_or(|s| o.lines.iter().any(|l| l.sku == s))
                && filter.payment_status.is_none_or(|p| {
                    let amounts = o.amounts();
                    PaymentStatus::of(amounts.paid, amounts.refunded, amounts.refund_due) == p
                })
                && filter
                    .order_no_prefix
                    .as_deref()
                    .is_none_or(|p| o.order_no.starts_with(p))
                && filter.channel.as_deref().is_none_or(|c| o.channel() == c)
                && filter
                    .delayed
                    .is_none_or(|d| o.delayed_since_ms().is_some() == d)
                && filter.on_hold.is_none_or(|h| o.hold().is_some() == h)
        };
        let mut items = Vec::new();
        let mut scanned = 0;
        let mut i = end;
        while i > start && items.len() < limit && scanned < LIST_SCAN_MAX {
            i -= 1;
            scanned += 1;
            if matches(&self.orders[i]) {
                items.push(self.order_view(&self.orders[i]));
            }
        }
        // A full page: look on (within the same scan budget) for one more match,
        // so that the last page says so (`null`), not a cursor to an empty page.
        // The cursor skips the orders passed over meanwhile; it stops before the
        // match, or where the budget ran out.
        let mut next = i;
        if items.len() == limit {
            while next > start && scanned < LIST_SCAN_MAX {
                if matches(&self.orders[next - 1]) {
                    break;
                }
                next -= 1;
                scanned += 1;
            }
        }
        let next_cursor = (next > start).then(|| OrderId(next as u64 + 1));
        Ok(QueryReply::Orders(Page { items, next_cursor }))
    }

    /// Oldest first, from position `cursor`; at most `LIST_SCAN_MAX` entries are
    /// examined per call (then a cursor is returned even if the page is short).
    fn list_ledger(
        &self,
        filter: &LedgerFilter,
        cursor: Option<u64>,
        limit: usize,
    ) -> Page<LedgerEntryView, u64> {
        let limit = limit.clamp(1, LIST_LIMIT_MAX);
        // Entries are in time order: the window bounds the scan.
        let mut i = cursor.map_or(0, |c| c as usize).min(self.ledger.len());
        if let Some(from) = filter.from_ms {
            i = i.max(self.ledger.partition_point(|e| e.at_ms < from));
        }
        let end = filter.to_ms.map_or(self.ledger.len(), |to| {
            self.ledger.partition_point(|e| e.at_ms < to)
        });
        let matches = |e: &crate::state::LedgerEntry| {
            filter.order_id.is_none_or(|id| e.order == id)
                && filter.kind.is_none_or(|k| e.kind == k)
        };
        let mut items = Vec::new();
        let mut scanned = 0;
        while i < end && items.len() < limit && scanned < LIST_SCAN_MAX {
            let e = &self.ledger[i];
            i += 1;
            scanned += 1;
            if !matches(e) {
                continue;
            }
            let order = &self.orders[(e.order.0 - 1) as usize];
            items.push(LedgerEntryView {
                seq: e.seq,
                at_ms: e.at_ms,
                order_id: e.order,
                order_no: Arc::clone(&order.order_no),
                kind: e.kind,
                amount: e.amount,
                reference: e.reference.to_string(),
                actor: Arc::clone(&self.actors[e.actor as usize]),
            });
        }
        // A full page: look on for one more match, as the order list does.
        if items.len() == limit {
            while i < end && scanned < LIST_SCAN_MAX && !matches(&self.ledger[i]) {
                i += 1;
                scanned += 1;
            }
        }
        Page {
            items,
            next_cursor: (i < end).then_some(i as u64),
        }
    }

    fn stats(&self, top: usize) -> StatsView {
        let c = &self.counters;
        let orders_by_status = OrderStatus::ALL
            .iter()
            .map(|&s| (s, c.orders_by_status[s as usize]))
            .collect();
        let cancellations_by_reason = CancelReason::ALL
            .iter()
            .map(|&r| (r, c.cancellations_by_reason[r as usize]))
            .collect();
        let cancelled = c.orders_by_status[OrderStatus::Cancelled as usize];
        let cancellation_rate = if c.orders_created == 0 {
            0.0
        } else {
            cancelled as f64 / c.orders_created as f64
        };
        let mut ranked: Vec<&crate::state::Sku> = self.skus.iter().collect();
        ranked.sort_by(|a, b| {
            b.units_sold
                .cmp(&a.units_sold)
                .then(b.reserved.cmp(&a.reserved))
                .then(a.id.cmp(&b.id))
        });
        let top_skus = ranked
            .into_iter()
            .take(top.clamp(1, STATS_TOP_MAX))
            .map(|s| SkuSales {
                sku: Arc::clone(&s.id),
                units_sold: s.units_sold,
                units_held: s.reserved,
            })
            .collect();
        StatsView {
            orders_total: c.orders_created,
            orders_by_status,
            cancellations_by_reason,
            cancellation_rate,
            paid_amount: c.paid_amount,
            refunded_amount: c.refunded_amount,
            reservations_held: self.held_count as u64,
            top_skus,
        }
    }

    fn sku_arc(&self, idx: SkuIdx) -> Arc<str> {
        Arc::clone(&self.skus[idx.0 as usize].id)
    }

    /// Start noting which SKUs change (for the stock board).
    pub(crate) fn track_touched_skus(&mut self) {
        self.touched_skus = Some(Vec::new());
    }

    /// The views of the SKUs changed since the last call (each once).
    pub(crate) fn take_touched_sku_views(&mut self) -> Vec<(SkuIdx, SkuView)> {
        let Some(touched) = self.touched_skus.as_mut() else {
            return Vec::new();
        };
        let mut touched = std::mem::take(touched);
        touched.sort_unstable_by_key(|idx| idx.0);
        touched.dedup();
        touched
            .into_iter()
            .map(|idx| (idx, self.sku_view(idx)))
            .collect()
    }

    /// Each SKU changed since the last call (repeats included), to `each`; the
    /// list keeps its room.
    pub(crate) fn drain_touched_skus(&mut self, mut each: impl FnMut(SkuIdx)) {
        if let Some(touched) = self.touched_skus.as_mut() {
            touched.drain(..).for_each(&mut each);
        }
    }

    /// The views of every SKU.
    pub(crate) fn all_sku_views(&self) -> Vec<(SkuIdx, SkuView)> {
        (0..self.skus.len())
            .map(|i| (SkuIdx(i as u32), self.sku_view(SkuIdx(i as u32))))
            .collect()
    }

    pub(crate) fn sku_view(&self, idx: SkuIdx) -> SkuView {
        let s = &self.skus[idx.0 as usize];
        SkuView {
            sku: Arc::clone(&s.id),
            name: Arc::clone(&s.name),
            on_hand: s.on_hand,
            reserved: s.reserved,
            available: s.available(),
            low_stock_threshold: s.low_stock_threshold,
            sale: self.sale_rules(idx),
        }
    }

    pub(crate) fn reservation_view(&self, r: &Reservation) -> ReservationView {
        ReservationView {
            id: r.id,
            status: r.status,
            lines: Few::map_slice(&r.lines, |&(idx, qty)| LineView {
                sku: self.sku_arc(idx),
                qty: u64::from(qty),
            }),
            created_at_ms: r.created_at_ms,
            expires_at_ms: r.expires_at_ms,
            order_id: r.order,
        }
    }

    pub(crate) fn order_reply(&self, id: OrderId) -> Reply {
        Reply::Order(Box::new(
            self.order_view(self.order_by_id(id).expect("order exists")),
        ))
    }

    pub(crate) fn order_view(&self, o: &Order) -> OrderView {
        let actor = |a: u32| Arc::clone(&self.actors[a as usize]);
        let extra = o.extra.as_deref();
        OrderView {
            id: o.id,
            order_no: Arc::clone(&o.order_no),
            customer_id: Arc::clone(&o.customer_id),
            status: o.status,
            lines: Few::map_slice(&o.lines, |l| OrderLineView {
                sku: self.sku_arc(l.sku),
                qty: u64::from(l.qty),
                unit_price: l.unit_price,
            }),
            total: o.total,
            payment: {
                let amounts = o.amounts();
                PaymentView {
                    status: o.payment,
                    amount: o.total,
                    payment_ref: extra.map_or_else(String::new, |e| String::from(&*e.payment_ref)),
                    paid_at_ms: extra.and_then(|e| e.paid_at_ms),
                    refund_ref: extra.map_or_else(String::new, |e| String::from(&*e.refund_ref)),
                    due_at_ms: o.payment_due_at_ms,
                    paid_amount: amounts.paid,
                    refunded_amount: amounts.refunded,
                    refund_due_amount: amounts.refund_due,
                }
            },
            reservation_id: o.reservation,
            created_at_ms: o.created_at_ms,
            updated_at_ms: o.updated_at_ms,
            tracking_no: extra.map_or_else(String::new, |e| String::from(&*e.tracking_no)),
            history: Few::map_slice(&o.history, |h| HistoryView {
                status: h.status,
                at_ms: h.at_ms,
                actor: actor(h.actor),
                note: String::from(&*h.note),
            }),
            cancellation: extra
                .and_then(|e| e.cancellation.as_ref())
                .map(|c| CancellationView {
                    reason: c.reason,
                    note: String::from(&*c.note),
                    at_ms: c.at_ms,
                    actor: actor(c.actor),
                }),
            returned: extra.and_then(|e| e.returned.as_ref()).map(|r| {
                Box::new(ReturnView {
                    restock: r.restock,
                    reason: String::from(&*r.reason),
                    note: String::from(&*r.note),
                })
            }),
            return_kind: extra.and_then(|e| e.returned.as_ref()).map(|_| {
                o.more()
                    .and_then(|m| m.return_kind)
                    .unwrap_or(crate::domain::ReturnKind::CustomerReturn)
            }),
            channel: o.channel().to_string(),
            shipping_address: o.more().and_then(|m| m.address.clone()),
            note: o
                .more()
                .map_or_else(String::new, |m| String::from(&*m.note)),
            hold: o.hold().map(|h| {
                Box::new(HoldView {
                    reason: h.reason,
                    note: String::from(&*h.note),
                    at_ms: h.at_ms,
                    actor: actor(h.actor),
                })
            }),
            delayed_since_ms: o.delayed_since_ms(),
        }
    }

    /// The reservation's id is known: used by tests and the runtime.
    pub fn reservation_status(
        &self,
        id: ReservationId,
    ) -> Option<crate::domain::ReservationStatus> {
        self.reservations.get(&id).map(|r| r.status)
    }
}
