//! Changes to an order that keep its status (v1.1): review hold and release,
//! modification (a partial cancel when lines go down), partial refunds, delay
//! alerts, and the order policy behind the last two.
//!
//! Like every handler of `State`, each validates everything before it changes
//! anything. Each keeps the order's changeable part as it was in its history entry
//! (`HistoryEntry::before`), so an idempotent replay can rebuild an earlier answer.

use std::sync::Arc;

use crate::command::{
    Field, LineField, OrderChange, OrderPolicy, Outcome, Rejection, Reply, Shortage, Violation,
};
use crate::domain::{
    HoldReason, Millis, OrderAction, OrderId, OrderLine, OrderStatus, ReservationStatus, SkuIdx,
    TransitionRefusal, order_changes_exhausted, order_transition,
};
use crate::event::EventKind;
use crate::limits::*;
use crate::state::{
    Ctx, Hold, Order, RULES_CURRENT, RULES_V11, RULES_V12, RULES_V15, State, at_line,
    check_address, check_line_count, check_qty, check_sku_id, check_text, invalid, touch,
    transition,
};

/// 409: the order has taken all the changes that keep its status it may.
fn changes_exhausted(id: OrderId) -> Rejection {
    transition(format!(
        "order {id} has taken the {ORDER_CHANGES_MAX} changes an order may (holds, \
         modifications, partial refunds, its status changes counted): its status can \
         still change, a hold be released and what is due be refunded (POST \
         /v1/orders/{id}/refund)"
    ))
}

/// Whether `change` leaves `order` as it is: every part it names (the lines
/// resolved as `new_lines`, the note, the address) equal to what the order has.
fn changes_nothing(order: &Order, change: &OrderChange, new_lines: Option<&[OrderLine]>) -> bool {
    let more = order.more();
    let lines_same = new_lines.is_none_or(|lines| *lines == *order.lines);
    let note_same = change
        .note
        .as_deref()
        .is_none_or(|note| more.map_or("", |m| &*m.note) == note);
    let address_same = change
        .shipping_address
        .as_ref()
        .is_none_or(|address| more.and_then(|m| m.address.as_deref()) == Some(address));
    lines_same && note_same && address_same
}

impl State {
    /// Changes that keep the status stop short of the history's cap, so that every
    /// status change (and the release of a hold) still has room for its entry.
    fn check_history_room(&self, id: OrderId) -> Result<(), Rejection> {
        if order_changes_exhausted(self.order(id)?.history.len()) {
            if self.rules < RULES_V15 {
                // As the v1.4 rules answered, so that an older log replays as it ran.
                return Err(Rejection::LimitReached {
                    what: format!("{ORDER_CHANGES_MAX} changes to order {id}"),
                });
            }
            return Err(changes_exhausted(id));
        }
        Ok(())
    }

    pub(crate) fn hold_order(
        &mut self,
        id: OrderId,
        reason: HoldReason,
        note: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        check_text(Field::Note, note, NOTE_LEN_MAX)?;
        let checked_actor = self.check_actor(actor)?;
        let order = self.order(id)?;
        match order_transition(order.status, OrderAction::Hold, order.facts()) {
            Ok(_) => {}
            Err(TransitionRefusal::AlreadyThere) => return Ok(self.order_reply(id)),
            Err(_) => {
                return Err(transition(format!(
                    "order {id} is {}: only a reserved, confirmed, picking or packed order can be held",
                    order.status
                )));
            }
        }
        self.check_history_room(id)?;
        let actor = self.intern_actor(checked_actor);
        let before = self.orders[(id.0 - 1) as usize].before(false);
        self.orders[(id.0 - 1) as usize].more_mut().hold = Some(Hold {
            reason,
            note: note.into(),
            at_ms: ctx.now_ms,
            actor,
        });
        let history_note = if note.is_empty() {
            format!("hold: {reason}")
        } else {
            format!("hold: {reason}: {note}")
        };
        self.push_history(id, actor, &history_note, ctx.now_ms, Some(before));
        self.emit_held(id, ctx);
        Ok(self.order_reply(id))
    }

    /// `order.held` for the order's current hold.
    pub(crate) fn emit_held(&self, id: OrderId, ctx: &mut Ctx<'_>) {
        let order = &self.orders[(id.0 - 1) as usize];
        let hold = order.hold().expect("the order is held");
        ctx.emit(EventKind::OrderHeld(Box::new(crate::event::OrderHeld {
            id,
            order_no: Arc::clone(&order.order_no),
            reason: hold.reason,
            note: hold.note.clone(),
            actor: Arc::clone(&self.actors[hold.actor as usize]),
        })));
    }

    pub(crate) fn release_hold(
        &mut self,
        id: OrderId,
        note: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        check_text(Field::Note, note, NOTE_LEN_MAX)?;
        let checked_actor = self.check_actor(actor)?;
        let order = self.order(id)?;
        if order_transition(order.status, OrderAction::ReleaseHold, order.facts()).is_err() {
            return Err(transition(format!("order {id} is not on hold")));
        }
        // Not counted from the v1.5 rules on: a hold taken at the last change
        // allowed must be releasable (`HISTORY_ROOM_FOR_STATUS` keeps its entry's
        // room). Counted before, so that an older log replays as it ran.
        if self.rules < RULES_V15 {
            self.check_history_room(id)?;
        }
        let actor_id = self.intern_actor(checked_actor);
        let order = &mut self.orders[(id.0 - 1) as usize];
        let before = order.before(false);
        order.more_mut().hold = None;
        let history_note = if note.is_empty() {
            "hold released".to_string()
        } else {
            format!("hold released: {note}")
        };
        self.push_history(id, actor_id, &history_note, ctx.now_ms, Some(before));
        ctx.emit(EventKind::OrderHoldReleased(Box::new(
            crate::event::OrderHoldReleased {
                id,
                order_no: Arc::clone(&self.orders[(id.0 - 1) as usize].order_no),
                note: note.into(),
                actor: Arc::clone(&self.actors[actor_id as usize]),
            },
        )));
        Ok(self.order_reply(id))
    }

    pub(crate) fn refund_amount(
        &mut self,
        id: OrderId,
        amount: u64,
        reason: &str,
        refund_ref: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        check_text(Field::Reason, reason, NOTE_LEN_MAX)?;
        check_text(Field::RefundRef, refund_ref, NOTE_LEN_MAX)?;
        let checked_actor = self.check_actor(actor)?;
        if amount == 0 {
            return Err(invalid(Field::RefundAmount, Violation::Zero));
        }
        let order = self.order(id)?;
        let refundable = order.amounts().refundable();
        if amount > refundable {
            return Err(Rejection::RefundExceedsPaid {
                id,
                refundable,
                requested: amount,
            });
        }
        self.check_history_room(id)?;
        let actor = self.intern_actor(checked_actor);
        self.pay_back(id, amount, reason, refund_ref, actor, ctx);
        Ok(self.order_reply(id))
    }

    /// `PATCH /v1/orders/{id}`: new lines (stock follows them atomically), a new
    /// address, a new note.
    pub(crate) fn modify_order(&mut self, change: &OrderChange, ctx: &mut Ctx<'_>) -> Outcome {
        let id = change.id;
        if let Some(note) = &change.note {
            check_text(Field::Note, note, NOTE_LEN_MAX)?;
        }
        if let Some(address) = &change.shipping_address {
            check_address(address)?;
        }
        let checked_actor = self.check_actor(&change.actor)?;
        let new_lines = match &change.lines {
            None => None,
            Some(lines) => {
                if lines.is_empty() {
                    return Err(invalid(Field::Lines, Violation::Empty));
                }
                check_line_count(lines.len())?;
                let mut out = Vec::with_capacity(lines.len());
                // From the v1.5 rules on, lines are judged in request order, each
                // line's SKU id first, and an unknown SKU only once every line's
                // shape passed (before, a line's SKU was looked up after its price
                // and quantity, and an unknown one answered at once).
                let in_order = self.rules >= RULES_V15;
                let mut unknown = None;
                for (i, line) in lines.iter().enumerate() {
                    let known = self.sku_index.get(line.sku.as_str()).copied();
                    if in_order && known.is_none() {
                        check_sku_id(at_line(i, LineField::Sku), &line.sku)?;
                    }
                    if line.unit_price > UNIT_PRICE_MAX {
                        return Err(invalid(
                            at_line(i, LineField::UnitPrice),
                            Violation::AboveMax {
                                max: UNIT_PRICE_MAX,
                            },
                        ));
                    }
                    check_qty(|| at_line(i, LineField::Qty), line.qty)?;
                    let sku = match known {
                        Some(sku) => sku,
                        None if in_order => {
                            unknown.get_or_insert_with(|| Rejection::UnknownSku {
                                sku: line.sku.clone(),
                            });
                            SkuIdx(0)
                        }
                        None => self.sku_idx(at_line(i, LineField::Sku), &line.sku)?,
                    };
                    out.push(OrderLine {
                        sku,
                        qty: line.qty as u32,
                        unit_price: line.unit_price,
                    });
                }
                if let Some(unknown) = unknown {
                    return Err(unknown);
                }
                Some(out)
            }
        };
        // Computed once, checked before anything changes, set with the lines below.
        let new_total: Option<u64> = new_lines
            .as_deref()
            .map(|lines| lines.iter().map(|l| u64::from(l.qty) * l.unit_price).sum());
        if let Some(total) = new_total {
            self.check_order_total(total)?;
        }
        let order = self.order(id)?;
        let status = order.status;
        if order_transition(status, OrderAction::Modify, order.facts()).is_err() {
            return Err(transition(format!(
                "order {id} is {status}: only a reserved or confirmed order can be modified"
            )));
        }
        if self.rules >= RULES_V15 && changes_nothing(order, change, new_lines.as_deref()) {
            return Ok(self.order_reply(id));
        }
        // Per SKU: the change in units (positive: more units wanted).
        let mut deltas: Vec<(SkuIdx, i64)> = Vec::new();
        if let Some(new_lines) = &new_lines {
            let old = self.per_sku(&order.lines);
            let new = self.per_sku(new_lines);
            for &(sku, qty) in &old {
                let now = new.iter().find(|(s, _)| *s == sku).map_or(0, |&(_, q)| q);
                if now != qty {
                    deltas.push((sku, now as i64 - qty as i64));
                }
            }
            for &(sku, qty) in &new {
                if !old.iter().any(|(s, _)| *s == sku) {
                    deltas.push((sku, qty as i64));
                }
            }
            // Per SKU, summed: a reason is needed when a SKU loses units.
            if deltas.iter().any(|&(_, d)| d < 0) && change.reason.is_none() {
                return Err(invalid(Field::Reason, Violation::Required));
            }
            for (i, &(sku, qty)) in new.iter().enumerate() {
                if qty > QTY_PER_LINE_MAX {
                    return Err(invalid(
                        at_line(
                            i,
                            LineField::SummedQty {
                                sku: self.sku_name(sku).to_string(),
                            },
                        ),
                        Violation::OutOfRange {
                            min: 1,
                            max: QTY_PER_LINE_MAX,
                            unit: crate::command::Unit::Count,
                        },
                    ));
                }
            }
            if status == OrderStatus::Confirmed {
                if deltas.iter().any(|&(_, d)| d > 0) {
                    return Err(transition(format!(
                        "order {id} is paid: its lines may only go down"
                    )));
                }
                // Per SKU and unit price, units may only go down: a line at a new
                // price, or units moved between lines of one SKU at different
                // prices, would change what was paid for (and could raise the
                // total above the amount paid).
                let units = |lines: &[OrderLine], sku: SkuIdx, price: u64| -> u64 {
                    lines
                        .iter()
                        .filter(|l| l.sku == sku && l.unit_price == price)
                        .map(|l| u64::from(l.qty))
                        .sum()
                };
                let price_changed = new_lines.iter().any(|line| {
                    units(new_lines, line.sku, line.unit_price)
                        > units(&order.lines, line.sku, line.unit_price)
                });
                if price_changed {
                    return Err(transition(format!(
                        "order {id} is paid: its prices may not change"
                    )));
                }
            } else {
                // More units of a SKU are new stock for the order's customer.
                let more = deltas
                    .iter()
                    .filter(|&&(_, d)| d > 0)
                    .map(|&(sku, d)| (sku, d as u64));
                let buyer = self.buyer(&order.customer_id);
                self.check_sale(more.clone(), Some(buyer), true, ctx.now_ms)?;
                self.check_pair_room(more, buyer)?;
                let shortages: Vec<Shortage> = deltas
                    .iter()
                    .filter(|&&(_, d)| d > 0)
                    .filter_map(|&(sku, d)| {
                        let s = &self.skus[sku.0 as usize];
                        (d as u64 > s.available()).then(|| Shortage {
                            sku: s.id.to_string(),
                            requested: d as u64,
                            available: s.available(),
                        })
                    })
                    .collect();
                if !shortages.is_empty() {
                    return Err(Rejection::InsufficientStock { lines: shortages });
                }
            }
        }
        self.check_history_room(id)?;
        let actor = self.intern_actor(checked_actor);
        let order = &self.orders[(id.0 - 1) as usize];
        let before = order.before(true);
        let before_lines = Arc::clone(&order.lines);
        let total_before = order.total;
        let reservation = order.reservation;
        let customer = Arc::clone(&order.customer_id);
        for &(sku, delta) in &deltas {
            self.count_units(sku, &customer, delta);
        }
        // Stock follows the new lines.
        let mut restored: Vec<(SkuIdx, u64)> = Vec::new();
        let mut befores: Vec<(SkuIdx, u64)> = Vec::new();
        for &(sku, delta) in &deltas {
            touch(&mut self.touched_skus, sku);
            let s = &mut self.skus[sku.0 as usize];
            befores.push((sku, s.available()));
            let qty = delta.unsigned_abs();
            if status == OrderStatus::Reserved {
                if delta > 0 {
                    s.reserved += qty;
                    assert!(s.reserved <= s.on_hand, "oversell of {}", s.id);
                } else {
                    s.reserved -= qty;
                    restored.push((sku, qty));
                }
            } else {
                assert!(delta < 0 && s.units_sold >= qty);
                s.units_sold -= qty;
                s.on_hand += qty;
                restored.push((sku, qty));
            }
        }
        if let (Some(new_lines), Some(total)) = (new_lines, new_total) {
            // The order's hold, or once paid its committed reservation, shows the
            // units the order now has (a paid order's used to keep the units sold
            // before the change). A hold is always kept; a committed reservation
            // only while it is among the newest (`FINISHED_RESERVATIONS_KEPT`), and
            // from the v1.2 rules on (a log of before replays as it ran).
            let held = self.per_sku(&new_lines);
            let follows = status == OrderStatus::Reserved || self.rules >= RULES_V12;
            let kept = self.reservations.get_mut(&reservation).filter(|_| follows);
            if status == OrderStatus::Reserved {
                assert!(
                    kept.as_ref()
                        .is_some_and(|r| r.status == ReservationStatus::Held),
                    "a reserved order holds its reservation"
                );
            }
            if let Some(r) = kept {
                assert!(matches!(
                    r.status,
                    ReservationStatus::Held | ReservationStatus::Committed
                ));
                r.lines = held.iter().map(|&(s, q)| (s, q as u32)).collect();
            }
            let order = &mut self.orders[(id.0 - 1) as usize];
            order.lines = new_lines.into();
            order.total = total;
        }
        let order = &mut self.orders[(id.0 - 1) as usize];
        if let Some(address) = &change.shipping_address {
            order.more_mut().address = Some(Box::new(address.clone()));
        }
        if let Some(note) = &change.note {
            order.more_mut().note = note.as_str().into();
        }
        let total = order.total;
        // A paid order that now costs less: the difference is due back.
        let amounts = order.amounts();
        let due_added = if status == OrderStatus::Confirmed {
            total_before
                .saturating_sub(total)
                .min(amounts.refundable() - amounts.refund_due)
        } else {
            0
        };
        self.reverse_money(id, due_added, actor, ctx);
        let history_note = match (&change.reason, &change.note) {
            (Some(reason), Some(note)) if !note.is_empty() => format!("modified: {reason}: {note}"),
            (Some(reason), _) => format!("modified: {reason}"),
            (None, Some(note)) if !note.is_empty() => format!("modified: {note}"),
            _ => "modified".to_string(),
        };
        self.push_history(id, actor, &history_note, ctx.now_ms, Some(before));
        let modified = crate::event::OrderModified {
            id,
            order: self.brief(id),
            before: before_lines,
            reason: change.reason,
            actor: Arc::clone(&self.actors[actor as usize]),
            stock_delta: deltas.clone(),
            total,
            refund_due_added: due_added,
        };
        if self.rules < RULES_V12 {
            ctx.emit(EventKind::OrderModified(Box::new(modified)));
        } else {
            let order = &self.orders[(id.0 - 1) as usize];
            let (shipping_address, note) = order.more().map_or((None, "".into()), |m| {
                (m.address.as_deref().cloned(), m.note.clone())
            });
            ctx.emit(EventKind::OrderModifiedFull(Box::new(
                crate::event::OrderModifiedFull {
                    modified,
                    shipping_address,
                    note,
                },
            )));
        }
        for (sku, available_before) in befores {
            self.stock_crossings(sku, available_before, ctx);
        }
        self.emit_restored(&restored, ctx);
        let review_min = self.order_policy.review_amount_min;
        let order = &self.orders[(id.0 - 1) as usize];
        let review = self.rules >= RULES_V15
            && total > total_before
            && review_min.is_some_and(|min| total >= min)
            && order.hold().is_none();
        if review {
            // As a creation at this total would have been: held by the system, with
            // no history entry of its own (the modification's is there).
            let system = self.system_actor();
            self.orders[(id.0 - 1) as usize].more_mut().hold = Some(Hold {
                reason: HoldReason::Review,
                note: format!("total {total} reaches the review amount").into(),
                at_ms: ctx.now_ms,
                actor: system,
            });
            self.emit_held(id, ctx);
        }
        Ok(self.order_reply(id))
    }

    /// A new order policy. A new SLA applies to every paid order not yet shipped,
    /// counted from its payment.
    pub(crate) fn set_order_policy(&mut self, policy: OrderPolicy, ctx: &mut Ctx<'_>) -> Outcome {
        if policy.ship_sla_ms > SHIP_SLA_MS_MAX {
            return Err(invalid(
                Field::ShipSlaMs,
                Violation::AboveMax {
                    max: SHIP_SLA_MS_MAX,
                },
            ));
        }
        if policy.review_amount_min == Some(0) {
            return Err(invalid(Field::ReviewAmountMin, Violation::Zero));
        }
        if policy != self.order_policy || self.rules < RULES_V11 {
            let sla_changed = policy.ship_sla_ms != self.order_policy.ship_sla_ms;
            self.order_policy = policy;
            // Raised to v1.1 at least; never lowered (later rules came with `SetRules`).
            self.rules = self.rules.max(RULES_V11);
            ctx.changed = true;
            if sla_changed {
                self.rebuild_ship_deadlines();
            }
        }
        Ok(Reply::OrderPolicy(policy))
    }

    /// Whether the state runs `wanted` under the v1.1 rules (or later) already.
    pub fn runs_order_policy(&self, wanted: OrderPolicy) -> bool {
        self.order_policy == wanted && self.rules >= RULES_V11
    }

    /// Raise the rules the commands after this one follow to `rules`: known to this
    /// build, and not below those in force (a log's rules never go back).
    pub(crate) fn set_rules(&mut self, rules: u32, ctx: &mut Ctx<'_>) -> Outcome {
        if !(self.rules..=RULES_CURRENT).contains(&rules) {
            return Err(invalid(
                Field::Rules,
                Violation::OutOfRange {
                    min: u64::from(self.rules),
                    max: u64::from(RULES_CURRENT),
                    unit: crate::command::Unit::Count,
                },
            ));
        }
        if rules > self.rules {
            self.rules = rules;
            ctx.changed = true;
        }
        Ok(Reply::OrderPolicy(self.order_policy))
    }

    /// The rules the next command follows.
    pub fn rules(&self) -> u32 {
        self.rules
    }

    /// The order policy in force.
    pub fn order_policy(&self) -> OrderPolicy {
        self.order_policy
    }

    /// The ship deadlines in force, from the orders: every paid order awaiting
    /// shipment and not yet delayed, at its payment + the SLA, in time order.
    pub(crate) fn rebuild_ship_deadlines(&mut self) {
        let sla = self.order_policy.ship_sla_ms;
        let mut deadlines: Vec<(Millis, OrderId)> = if sla == 0 {
            Vec::new()
        } else {
            self.orders
                .iter()
                .filter(|o| o.awaits_shipment())
                .filter(|o| o.more().is_none_or(|m| m.delayed_since_ms.is_none()))
                .filter_map(|o| {
                    let paid = o.extra.as_deref()?.paid_at_ms?;
                    Some((paid.saturating_add(sla), o.id))
                })
                .collect()
        };
        deadlines.sort_unstable();
        self.ship_deadlines = deadlines.into();
    }

    /// Flag the paid orders whose ship SLA ran out by now: `order.delayed`, once.
    pub(crate) fn flag_delays(&mut self, ctx: &mut Ctx<'_>) {
        let mut flagged = 0;
        let sla = self.order_policy.ship_sla_ms;
        while let Some(&(due, id)) = self.ship_deadlines.front() {
            if due > ctx.now_ms || flagged >= EXPIRE_BATCH_DELAYS_MAX {
                break;
            }
            self.ship_deadlines.pop_front();
            let order = &self.orders[(id.0 - 1) as usize];
            let live = order.awaits_shipment()
                && order.more().is_none_or(|m| m.delayed_since_ms.is_none())
                && order
                    .extra
                    .as_deref()
                    .and_then(|e| e.paid_at_ms)
                    .is_some_and(|paid| paid.saturating_add(sla) == due);
            if !live {
                continue; // stale: shipped, cancelled, or rescheduled
            }
            let before = order.before(false);
            let paid_at_ms: Millis = order
                .extra
                .as_deref()
                .and_then(|e| e.paid_at_ms)
                .expect("a paid order");
            self.orders[(id.0 - 1) as usize].more_mut().delayed_since_ms = Some(due);
            let system = self.system_actor();
            self.push_history(
                id,
                system,
                "delayed: not shipped within the SLA",
                ctx.now_ms,
                Some(before),
            );
            let order = &self.orders[(id.0 - 1) as usize];
            ctx.emit(EventKind::OrderDelayed(Box::new(
                crate::event::OrderDelayed {
                    id,
                    order_no: Arc::clone(&order.order_no),
                    customer_id: Arc::clone(&order.customer_id),
                    paid_at_ms,
                    delayed_since_ms: due,
                },
            )));
            flagged += 1;
        }
    }
}
