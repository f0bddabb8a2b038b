//! Holds (reservations): a request's demand judged (shape, unknown SKUs, sale
//! rules, availability), the hold taken, committed (its units sold), released, and
//! expired by deadline together with the unpaid order it belongs to.

use std::cmp::Reverse;
use std::sync::Arc;

use bincode::{Decode, Encode};
use hashbrown::HashMap;

use super::{
    Ctx, EARLY_GROWTH_LEN, RULES_V1, RULES_V12, RULES_V15, State, at_line, check_line_count,
    check_qty, check_required_text, check_sku_id, check_ttl, invalid, touch, transition,
};
use crate::command::{Field, LineField, Outcome, Rejection, Reply, Shortage, Violation};
use crate::domain::{
    LineReq, Millis, OrderId, OrderStatus, ReservationId, ReservationStatus, SkuIdx,
};
use crate::event::EventKind;
use crate::few::Few;
use crate::limits::*;

/// Reservations expired by one `Expire` command; the timer sends another if more
/// are due, so one command never stalls the writer for long.
pub const EXPIRE_BATCH_MAX: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reservation {
    pub id: ReservationId,
    /// One entry per SKU: demand within one request is summed.
    pub lines: Box<[(SkuIdx, u32)]>,
    pub status: ReservationStatus,
    pub created_at_ms: Millis,
    pub expires_at_ms: Millis,
    pub order: Option<OrderId>,
    /// The customer a held reservation with a limited SKU was taken for, until it
    /// ends or is adopted (`sale.rs`). Not in the encoding above: snapshots carry
    /// it in their sale part, so the layout of formats 1 to 4 stands.
    pub customer: Option<Arc<str>>,
}

impl Encode for Reservation {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.id.encode(encoder)?;
        self.lines.encode(encoder)?;
        self.status.encode(encoder)?;
        self.created_at_ms.encode(encoder)?;
        self.expires_at_ms.encode(encoder)?;
        self.order.encode(encoder)
    }
}

impl<Context> Decode<Context> for Reservation {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        Ok(Reservation {
            id: Decode::decode(decoder)?,
            lines: Decode::decode(decoder)?,
            status: Decode::decode(decoder)?,
            created_at_ms: Decode::decode(decoder)?,
            expires_at_ms: Decode::decode(decoder)?,
            order: Decode::decode(decoder)?,
            customer: None,
        })
    }
}
bincode::impl_borrow_decode!(Reservation);

impl State {
    /// Resolve and sum request lines per SKU, then judge them, in the order of
    /// refusals API.md gives: every line's shape, then unknown SKUs, then (for new
    /// stock taken for `customer`) the sale windows and the purchase limits, then
    /// availability (all or nothing). Lines are judged in request order.
    pub(super) fn demand<'a>(
        &self,
        lines: impl ExactSizeIterator<Item = (&'a str, u64)> + Clone,
        customer: Option<crate::sale::Buyer<'_>>,
        now_ms: Millis,
    ) -> Result<Vec<(SkuIdx, u32)>, Rejection> {
        check_line_count(lines.len())?;
        for (i, (_, qty)) in lines.clone().enumerate() {
            if let Err(refused) = check_qty(|| at_line(i, LineField::Qty), qty) {
                if self.rules >= RULES_V15 {
                    // Request order: a malformed SKU id on this line or an earlier
                    // one comes first (under the v1.4 rules, every line's quantity
                    // was judged before any line's SKU id).
                    for (j, (sku, _)) in lines.clone().take(i + 1).enumerate() {
                        if !self.sku_index.contains_key(sku) {
                            check_sku_id(at_line(j, LineField::Sku), sku)?;
                        }
                    }
                }
                return Err(refused);
            }
        }
        let mut demand: Vec<(SkuIdx, u32)> = Vec::with_capacity(lines.len());
        let mut unknown: Option<&str> = None;
        for (i, (sku, qty)) in lines.enumerate() {
            let Some(&idx) = self.sku_index.get(sku) else {
                // Every line's shape is judged before any SKU is unknown.
                check_sku_id(at_line(i, LineField::Sku), sku)?;
                unknown.get_or_insert(sku);
                continue;
            };
            match demand.iter_mut().find(|(s, _)| *s == idx) {
                Some((_, total)) => {
                    let sum = u64::from(*total) + qty;
                    check_qty(
                        || {
                            at_line(
                                i,
                                LineField::SummedQty {
                                    sku: sku.to_string(),
                                },
                            )
                        },
                        sum,
                    )?;
                    *total = sum as u32;
                }
                None => demand.push((idx, qty as u32)),
            }
        }
        // A limited SKU needs a customer: a validation refusal, so it comes before
        // unknown SKUs and closed windows.
        // `customer` is `None` where no customer was named, or no SKU has rules.
        let ruled = self.ruled_skus > 0;
        if ruled && customer.is_none() && self.counts_for_customer(demand.iter().map(|d| d.0)) {
            return Err(invalid(Field::CustomerId, Violation::Required));
        }
        if let Some(sku) = unknown {
            return Err(Rejection::UnknownSku {
                sku: sku.to_string(),
            });
        }
        if ruled {
            self.check_sale(
                demand.iter().map(|&(idx, qty)| (idx, u64::from(qty))),
                customer,
                true,
                now_ms,
            )?;
        }
        let short =
            |&(idx, qty): &(SkuIdx, u32)| u64::from(qty) > self.skus[idx.0 as usize].available();
        // Judged first without building anything: most requests are not short.
        if demand.iter().any(short) {
            let shortages = demand
                .iter()
                .filter(|d| short(d))
                .map(|&(idx, qty)| {
                    let sku = &self.skus[idx.0 as usize];
                    Shortage {
                        sku: sku.id.to_string(),
                        requested: u64::from(qty),
                        available: sku.available(),
                    }
                })
                .collect();
            return Err(Rejection::InsufficientStock { lines: shortages });
        }
        Ok(demand)
    }

    pub(super) fn check_held_room(&self) -> Result<(), Rejection> {
        if self.held_count >= HELD_RESERVATIONS_MAX {
            return Err(Rejection::LimitReached {
                what: format!("{HELD_RESERVATIONS_MAX} held reservations"),
            });
        }
        Ok(())
    }

    /// Take the hold: every check has passed.
    pub(super) fn hold(
        &mut self,
        demand: Vec<(SkuIdx, u32)>,
        expires_at_ms: Millis,
        order: Option<OrderId>,
        customer: Option<Arc<str>>,
        ctx: &mut Ctx<'_>,
    ) -> ReservationId {
        let id = ReservationId(self.next_reservation_id);
        self.next_reservation_id += 1;
        for &(idx, qty) in &demand {
            touch(&mut self.touched_skus, idx);
            let sku = &mut self.skus[idx.0 as usize];
            sku.reserved += u64::from(qty);
            assert!(sku.reserved <= sku.on_hand, "oversell of {}", sku.id);
        }
        ctx.emit(EventKind::ReservationHeld {
            id,
            lines: demand.iter().map(|&(s, q)| (s, u64::from(q))).collect(),
            expires_at_ms,
        });
        // Demand holds each SKU once, so what was available before is what is
        // available now plus this hold's units.
        for &(idx, qty) in &demand {
            let available_before = self.skus[idx.0 as usize].available() + u64::from(qty);
            self.stock_crossings(idx, available_before, ctx);
        }
        self.reservations.push(Reservation {
            id,
            lines: demand.into_boxed_slice(),
            status: ReservationStatus::Held,
            created_at_ms: ctx.now_ms,
            expires_at_ms,
            order,
            customer,
        });
        self.held_count += 1;
        self.expiry.push(Reverse((expires_at_ms, id)));
        if self.expiry.len() == EARLY_GROWTH_LEN {
            self.expiry
                .reserve(HELD_RESERVATIONS_MAX - EARLY_GROWTH_LEN);
        }
        id
    }

    pub(super) fn reserve(
        &mut self,
        lines: &[LineReq],
        ttl_ms: u64,
        customer: Option<&str>,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        check_ttl(Field::TtlMs, ttl_ms)?;
        if let Some(customer) = customer {
            check_required_text(Field::CustomerId, customer, CUSTOMER_ID_LEN_MAX)?;
        }
        let checked_actor = self.check_actor(actor)?;
        // Without sale rules anywhere, the customer changes nothing: not hashed.
        let buyer = customer
            .filter(|_| self.ruled_skus > 0)
            .map(|id| self.buyer(id));
        let demand = self.demand(
            lines.iter().map(|l| (l.sku.as_str(), l.qty)),
            buyer,
            ctx.now_ms,
        )?;
        self.check_held_room()?;
        let counted_for = match buyer {
            Some(buyer) if self.counts_for_customer(demand.iter().map(|d| d.0)) => {
                self.check_pair_room(
                    demand.iter().map(|&(idx, qty)| (idx, u64::from(qty))),
                    buyer,
                )?;
                Some(buyer)
            }
            _ => None,
        };
        self.intern_actor(checked_actor);
        let customer = counted_for.map(|buyer| self.count_hold(&demand, buyer));
        let id = self.hold(demand, ctx.now_ms + ttl_ms, None, customer, ctx);
        let held = self.reservations.newest().expect("just pushed");
        debug_assert_eq!(held.id, id);
        Ok(Reply::Reservation(self.reservation_view(held)))
    }

    fn held_reservation(&self, id: ReservationId, action: &str) -> Result<&Reservation, Rejection> {
        // Not `ok_or`: it builds the refusal, and drops it, on every success.
        let Some(r) = self.reservations.get(&id) else {
            return Err(Rejection::UnknownReservation { id });
        };
        if let Some(order) = r.order {
            return Err(transition(format!(
                "reservation {id} belongs to order {order}: {action} the order instead"
            )));
        }
        Ok(r)
    }

    pub(super) fn commit_reservation(
        &mut self,
        id: ReservationId,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        self.check_actor(actor)?;
        let r = self.held_reservation(id, "pay")?;
        match r.status {
            ReservationStatus::Held if r.expires_at_ms <= ctx.now_ms => {
                return Err(transition(format!("reservation {id} expired")));
            }
            ReservationStatus::Held => {}
            ReservationStatus::Committed => {
                return Ok(Reply::Reservation(self.reservation_view(r)));
            }
            other => {
                return Err(transition(format!(
                    "reservation {id} is {other}: cannot commit"
                )));
            }
        }
        self.commit_hold(id, ctx);
        Ok(Reply::Reservation(
            self.reservation_view(&self.reservations[&id]),
        ))
    }

    /// Held units leave `on_hand`: they are sold.
    pub(super) fn commit_hold(&mut self, id: ReservationId, ctx: &mut Ctx<'_>) {
        self.leave_hold(id, ReservationStatus::Committed);
        self.finish_hold(id);
        ctx.emit(EventKind::ReservationCommitted { id });
    }

    /// A held reservation's units leave `reserved` and its sale counts are undone;
    /// `Committed`: the units are sold (they leave `on_hand` too), otherwise they go
    /// back to `available`. The reservation, now in `status`.
    fn leave_hold(&mut self, id: ReservationId, status: ReservationStatus) -> &Reservation {
        let sold = status == ReservationStatus::Committed;
        let r = self.reservations.get_mut(&id).expect("checked by caller");
        assert_eq!(r.status, ReservationStatus::Held);
        crate::sale::uncount_hold(
            &mut self.sales,
            &self.customer_hasher,
            &mut self.limited_pairs,
            r,
            sold,
        );
        for &(idx, qty) in r.lines.iter() {
            touch(&mut self.touched_skus, idx);
            let sku = &mut self.skus[idx.0 as usize];
            let qty = u64::from(qty);
            if sold {
                assert!(sku.reserved >= qty && sku.on_hand >= qty);
                sku.reserved -= qty;
                sku.on_hand -= qty;
                sku.units_sold += qty;
            } else {
                assert!(sku.reserved >= qty);
                sku.reserved -= qty;
            }
        }
        r.status = status;
        r
    }

    pub(super) fn release_reservation(
        &mut self,
        id: ReservationId,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        self.check_actor(actor)?;
        let r = self.held_reservation(id, "cancel")?;
        match r.status {
            ReservationStatus::Held => {}
            ReservationStatus::Released => return Ok(Reply::Reservation(self.reservation_view(r))),
            other => {
                return Err(transition(format!(
                    "reservation {id} is {other}: cannot release"
                )));
            }
        }
        self.end_hold(id, ReservationStatus::Released, ctx);
        Ok(Reply::Reservation(
            self.reservation_view(&self.reservations[&id]),
        ))
    }

    /// Held units go back to `available` (release or expiry).
    pub(super) fn end_hold(
        &mut self,
        id: ReservationId,
        status: ReservationStatus,
        ctx: &mut Ctx<'_>,
    ) {
        let lines = self.end_hold_quietly(id, status, ctx);
        self.emit_restored(&lines, ctx);
    }

    /// `end_hold` without its `stock.restored`: the units given back per SKU (none
    /// under the v1 rules), for a caller that ends several holds in one command and
    /// emits one `stock.restored` per SKU for all of them.
    fn end_hold_quietly(
        &mut self,
        id: ReservationId,
        status: ReservationStatus,
        ctx: &mut Ctx<'_>,
    ) -> Few<(SkuIdx, u64)> {
        debug_assert_ne!(status, ReservationStatus::Committed, "commit_hold sells");
        let v1 = self.rules == RULES_V1;
        let r = self.leave_hold(id, status);
        // Inline for up to three lines: a release allocates nothing for them.
        let lines = if v1 {
            Few::new()
        } else {
            Few::map_slice(&r.lines, |&(s, q)| (s, u64::from(q)))
        };
        self.finish_hold(id);
        ctx.emit(match status {
            ReservationStatus::Expired => EventKind::ReservationExpired { id },
            _ => EventKind::ReservationReleased { id },
        });
        lines
    }

    fn finish_hold(&mut self, id: ReservationId) {
        self.held_count -= 1;
        self.reservations.finished(id);
        // Drop stale deadline entries once they outnumber live ones: the heap stays
        // within a constant factor of the held reservations, at amortised O(1).
        if self.expiry.len() > 2 * self.held_count + 1024 {
            let reservations = &self.reservations;
            self.expiry.retain(|Reverse((at, id))| {
                reservations
                    .get(id)
                    .is_some_and(|r| r.status == ReservationStatus::Held && r.expires_at_ms == *at)
            });
        }
    }

    pub(super) fn expire(&mut self, ctx: &mut Ctx<'_>) -> Reply {
        let (mut reservations, mut orders) = (0u64, 0u64);
        // Units given back, per SKU in first-seen order: one `stock.restored` per
        // SKU for the whole command, however many holds of it expire.
        let mut restored: Vec<(SkuIdx, u64)> = Vec::new();
        let mut restored_at: HashMap<SkuIdx, usize> = HashMap::new();
        while let Some(&Reverse((at, id))) = self.expiry.peek() {
            if at > ctx.now_ms || reservations as usize >= EXPIRE_BATCH_MAX {
                break;
            }
            self.expiry.pop();
            let Some(r) = self.reservations.get(&id) else {
                continue;
            };
            if r.status != ReservationStatus::Held || r.expires_at_ms != at {
                continue; // stale entry
            }
            let order = r.order;
            for (sku, qty) in self.end_hold_quietly(id, ReservationStatus::Expired, ctx) {
                match restored_at.get(&sku) {
                    Some(&i) => restored[i].1 += qty,
                    None => {
                        restored_at.insert(sku, restored.len());
                        restored.push((sku, qty));
                    }
                }
            }
            reservations += 1;
            if let Some(order_id) = order {
                let actor = self.system_actor();
                let order = self.order_mut(order_id);
                assert_eq!(order.status, OrderStatus::Reserved);
                // Only a cancellable order can be on hold: expiry clears the hold,
                // as a cancel does, keeping it in the history for earlier answers.
                let before = order.hold().is_some().then(|| order.before(false));
                if before.is_some() {
                    order.more_mut().hold = None;
                }
                let note = "payment window closed";
                self.set_status_after(
                    order_id,
                    OrderStatus::Expired,
                    actor,
                    note,
                    ctx.now_ms,
                    before,
                );
                if self.rules < RULES_V12 {
                    ctx.emit(EventKind::OrderExpired { id: order_id });
                } else {
                    let order = self.brief(order_id);
                    ctx.emit(EventKind::OrderExpiredFull(Box::new(
                        crate::event::OrderExpired {
                            id: order_id,
                            order,
                        },
                    )));
                }
                orders += 1;
            }
        }
        self.emit_restored(&restored, ctx);
        self.flag_delays(ctx);
        Reply::Expired {
            reservations,
            orders,
        }
    }
}
