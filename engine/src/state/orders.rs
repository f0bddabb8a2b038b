//! Orders and their status changes: the order record (its rarely set parts boxed),
//! creation (on a new hold or an existing one), payment, the fulfilment steps,
//! cancel and return, each checked against the transition table, and the history
//! entry every change adds. The changes that keep an order's status are in
//! `order_changes.rs`; the money they move is in `money.rs`.

use std::cmp::Reverse;
use std::sync::Arc;

use bincode::{Decode, Encode};

use super::{
    Amounts, Ctx, RULES_V1, RULES_V12, RULES_V13, RULES_V14, RULES_V15, RULES_V16, State, at_line,
    check_address, check_line_count, check_qty, check_required_text, check_sku_id, check_text,
    check_ttl, invalid, transition,
};
use crate::command::{Address, Field, LineField, Outcome, Rejection, Violation};
use crate::domain::{
    CancelReason, HoldReason, LedgerKind, Millis, OrderAction, OrderFacts, OrderId, OrderLine,
    OrderLineReq, OrderStatus, PaymentStatus, ReservationId, ReservationStatus, ReturnKind, SkuIdx,
    TransitionRefusal, order_transition,
};
use crate::event::EventKind;
use crate::limits::*;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct HistoryEntry {
    pub status: OrderStatus,
    pub at_ms: Millis,
    pub actor: u32,
    pub note: Box<str>,
    /// The order's changeable part as it was before this entry's command, set
    /// whenever the command changed it (money, hold, delay, lines, address, note):
    /// an idempotent replay rebuilds an earlier answer from it (`order_as_of`).
    pub before: Option<Box<Before>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Hold {
    pub reason: HoldReason,
    pub note: Box<str>,
    pub at_ms: Millis,
    pub actor: u32,
}

/// An order's changeable part before a command (see [`HistoryEntry::before`]).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Before {
    pub amounts: Amounts,
    pub hold: Option<Hold>,
    pub delayed_since_ms: Option<Millis>,
    pub refund_ref: Box<str>,
    /// Set when the command changed lines, address or note.
    pub modified: Option<Box<Modified>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Modified {
    pub lines: Arc<[OrderLine]>,
    pub total: u64,
    pub address: Option<Box<Address>>,
    pub note: Box<str>,
}

/// Rarely set fields, boxed so that a plain order stays small.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub(crate) struct OrderExtra {
    pub payment_ref: Box<str>,
    pub paid_at_ms: Option<Millis>,
    pub refund_ref: Box<str>,
    pub tracking_no: Box<str>,
    pub cancellation: Option<Cancellation>,
    pub returned: Option<ReturnInfo>,
    pub channel: Option<Arc<str>>,
    pub amounts: Amounts,
    /// What few orders have: boxed again, so that a paid order stays small.
    pub more: Option<Box<OrderMore>>,
}

/// The v1.1 fields few orders have: a return's kind, an address, a note, a hold, a
/// delay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub(crate) struct OrderMore {
    pub return_kind: Option<ReturnKind>,
    pub address: Option<Box<Address>>,
    pub note: Box<str>,
    pub hold: Option<Hold>,
    /// When the ship SLA ran out (payment + SLA), once `order.delayed` was emitted.
    /// Shown while the order is not shipped, cancelled or returned.
    pub delayed_since_ms: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Cancellation {
    pub reason: CancelReason,
    pub note: Box<str>,
    pub at_ms: Millis,
    pub actor: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct ReturnInfo {
    pub restock: bool,
    pub reason: Box<str>,
    pub note: Box<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Order {
    pub id: OrderId,
    pub order_no: Arc<str>,
    pub customer_id: Arc<str>,
    /// Shared with the events that carry them (an order's lines change only as a
    /// whole, by a modification).
    pub lines: Arc<[OrderLine]>,
    pub total: u64,
    pub reservation: ReservationId,
    pub status: OrderStatus,
    pub payment: PaymentStatus,
    pub created_at_ms: Millis,
    pub updated_at_ms: Millis,
    pub payment_due_at_ms: Millis,
    pub history: Vec<HistoryEntry>,
    pub extra: Option<Box<OrderExtra>>,
}

impl Order {
    pub(crate) fn extra_mut(&mut self) -> &mut OrderExtra {
        self.extra.get_or_insert_with(Default::default)
    }
    pub(crate) fn amounts(&self) -> Amounts {
        self.extra
            .as_ref()
            .map_or_else(Amounts::default, |e| e.amounts)
    }
    pub(crate) fn more(&self) -> Option<&OrderMore> {
        self.extra.as_ref().and_then(|e| e.more.as_deref())
    }
    pub(crate) fn more_mut(&mut self) -> &mut OrderMore {
        self.extra_mut().more.get_or_insert_with(Default::default)
    }
    pub(crate) fn hold(&self) -> Option<&Hold> {
        self.more().and_then(|m| m.hold.as_ref())
    }
    /// Waiting to be shipped: confirmed, picking or packed.
    pub(crate) fn awaits_shipment(&self) -> bool {
        matches!(
            self.status,
            OrderStatus::Confirmed | OrderStatus::Picking | OrderStatus::Packed
        )
    }
    /// Money as v1 had it (paid the total; due or refunded all of it) and nothing
    /// else that `before` keeps: a replay derives this from the payment status.
    pub(crate) fn plain(&self) -> bool {
        self.amounts() == crate::legacy::amounts_of_v3(self.payment, self.total)
            && self
                .more()
                .is_none_or(|m| m.hold.is_none() && m.delayed_since_ms.is_none())
    }
    pub(crate) fn channel(&self) -> &str {
        self.extra
            .as_ref()
            .and_then(|e| e.channel.as_deref())
            .unwrap_or("")
    }
    /// What the transition table needs besides the status.
    pub(crate) fn facts(&self) -> OrderFacts {
        OrderFacts {
            on_hold: self.hold().is_some(),
            refundable_amount: self.amounts().refundable(),
        }
    }
    /// Paid, not shipped within the ship SLA, and not yet shipped, cancelled or
    /// returned: when the SLA ran out.
    pub(crate) fn delayed_since_ms(&self) -> Option<Millis> {
        let since = self.more()?.delayed_since_ms?;
        self.awaits_shipment().then_some(since)
    }
    /// The changeable part now, to keep in a history entry before changing it.
    pub(crate) fn before(&self, modified: bool) -> Box<Before> {
        let extra = self.extra.as_deref();
        let more = self.more();
        Box::new(Before {
            amounts: self.amounts(),
            hold: self.hold().cloned(),
            delayed_since_ms: more.and_then(|m| m.delayed_since_ms),
            refund_ref: extra.map_or_else(|| "".into(), |e| e.refund_ref.clone()),
            modified: modified.then(|| {
                Box::new(Modified {
                    lines: self.lines.clone(),
                    total: self.total,
                    address: more.and_then(|m| m.address.clone()),
                    note: more.map_or_else(|| "".into(), |m| m.note.clone()),
                })
            }),
        })
    }
}

/// `Command::CreateOrder` and `Command::PlaceOrder` alike, borrowed.
pub(super) struct NewOrderRef<'a> {
    pub(super) order_no: &'a str,
    pub(super) customer_id: &'a str,
    pub(super) lines: &'a [OrderLineReq],
    pub(super) payment_ttl_ms: u64,
    pub(super) reservation_id: Option<ReservationId>,
    pub(super) channel: &'a str,
    pub(super) shipping_address: Option<&'a Address>,
    pub(super) actor: &'a str,
}

impl State {
    /// From the v1.3 rules on an order totals at most `ORDER_TOTAL_MAX` (before
    /// them, records replay as they ran).
    pub(crate) fn check_order_total(&self, total: u64) -> Result<(), Rejection> {
        if self.rules >= RULES_V13 && total > ORDER_TOTAL_MAX {
            return Err(invalid(
                Field::Lines,
                Violation::OrderTotalAboveMax {
                    max: ORDER_TOTAL_MAX,
                    got: total,
                },
            ));
        }
        Ok(())
    }

    pub(crate) fn order(&self, id: OrderId) -> Result<&Order, Rejection> {
        id.0.checked_sub(1)
            .and_then(|i| self.orders.get(i as usize))
            .ok_or_else(|| Rejection::UnknownOrder {
                order: id.to_string(),
            })
    }

    pub(super) fn order_mut(&mut self, id: OrderId) -> &mut Order {
        &mut self.orders[(id.0 - 1) as usize]
    }

    fn set_status(&mut self, id: OrderId, to: OrderStatus, actor: u32, note: &str, now_ms: Millis) {
        self.set_status_after(id, to, actor, note, now_ms, None);
    }

    /// `set_status`, keeping `before` in the history entry (see `HistoryEntry::before`).
    pub(crate) fn set_status_after(
        &mut self,
        id: OrderId,
        to: OrderStatus,
        actor: u32,
        note: &str,
        now_ms: Millis,
        before: Option<Box<Before>>,
    ) {
        let order = self.order_mut(id);
        let from = order.status;
        let facts = OrderFacts {
            on_hold: false,
            refundable_amount: 0,
        };
        assert!(
            OrderAction::ALL
                .iter()
                .any(|&action| order_transition(from, action, facts) == Ok(to)),
            "order {id}: {from} -> {to} is not on the transition table"
        );
        order.status = to;
        if self.ruled_skus > 0
            && crate::sale::counts_toward_limit(from)
            && !crate::sale::counts_toward_limit(to)
        {
            self.count_order(id, -1);
        }
        self.counters.orders_by_status[from as usize] -= 1;
        self.counters.orders_by_status[to as usize] += 1;
        self.push_history(id, actor, note, now_ms, before);
    }

    /// Add a history entry with the order's current status. History has room for
    /// every status change: changes that keep the status stop short of the cap
    /// (`HISTORY_ROOM_FOR_STATUS`), so an entry with `before` is never dropped.
    pub(crate) fn push_history(
        &mut self,
        id: OrderId,
        actor: u32,
        note: &str,
        now_ms: Millis,
        before: Option<Box<Before>>,
    ) {
        let order = self.order_mut(id);
        order.updated_at_ms = now_ms;
        if order.history.len() < HISTORY_PER_ORDER_MAX {
            order.history.push(HistoryEntry {
                status: order.status,
                at_ms: now_ms,
                actor,
                note: note.into(),
                before,
            });
        } else {
            assert!(before.is_none(), "order {id}: history full");
        }
    }

    pub(super) fn create_order(&mut self, o: NewOrderRef<'_>, ctx: &mut Ctx<'_>) -> Outcome {
        let NewOrderRef {
            order_no,
            customer_id,
            lines,
            payment_ttl_ms,
            reservation_id,
            channel,
            shipping_address,
            actor,
        } = o;
        check_required_text(Field::OrderNo, order_no, ORDER_NO_LEN_MAX)?;
        check_text(Field::Channel, channel, CHANNEL_LEN_MAX)?;
        if let Some(address) = shipping_address {
            check_address(address)?;
        }
        check_required_text(Field::CustomerId, customer_id, CUSTOMER_ID_LEN_MAX)?;
        check_ttl(Field::PaymentTtlMs, payment_ttl_ms)?;
        let checked_actor = self.check_actor(actor)?;
        check_line_count(lines.len())?;
        let mut total: u64 = 0;
        for (i, line) in lines.iter().enumerate() {
            let price_and_qty = if line.unit_price > UNIT_PRICE_MAX {
                Err(invalid(
                    at_line(i, LineField::UnitPrice),
                    Violation::AboveMax {
                        max: UNIT_PRICE_MAX,
                    },
                ))
            } else {
                check_qty(|| at_line(i, LineField::Qty), line.qty)
            };
            if let Err(refused) = price_and_qty {
                if self.rules >= RULES_V15 {
                    // Request order: a malformed SKU id on this line or an earlier
                    // one comes first (under the v1.4 rules, every line's price and
                    // quantity were judged before any line's SKU id).
                    for (j, line) in lines[..=i].iter().enumerate() {
                        if !self.sku_index.contains_key(line.sku.as_str()) {
                            check_sku_id(at_line(j, LineField::Sku), &line.sku)?;
                        }
                    }
                }
                return Err(refused);
            }
            // Cannot overflow: bounded by the limits (checked in limits.rs).
            total += line.qty * line.unit_price;
        }
        self.check_order_total(total)?;
        if let Some(&id) = self.order_no_index.get(order_no) {
            if self.rules >= RULES_V16 {
                // Every line's SKU id is judged before the order number is found
                // taken (`validation_failed` first; on this refusal path only, so a
                // new order pays nothing for it): an id the index knows is well-formed.
                for (i, line) in lines.iter().enumerate() {
                    if !self.sku_index.contains_key(line.sku.as_str()) {
                        check_sku_id(at_line(i, LineField::Sku), &line.sku)?;
                    }
                }
            }
            return Err(Rejection::DuplicateOrderNo {
                order_no: order_no.to_string(),
                id,
            });
        }
        if self.orders.len() >= ORDERS_MAX {
            return Err(Rejection::LimitReached {
                what: format!("{ORDERS_MAX} orders"),
            });
        }
        let id = OrderId(self.orders.len() as u64 + 1);
        let due_at_ms = ctx.now_ms + payment_ttl_ms;
        // Built straight into the `Arc` the order keeps (one allocation: the
        // iterator's length is known), the first unknown SKU noted on the way.
        let mut unknown = None;
        let order_lines: Arc<[OrderLine]> = lines
            .iter()
            .enumerate()
            .map(|(i, line)| OrderLine {
                sku: match self.sku_idx(at_line(i, LineField::Sku), &line.sku) {
                    Ok(sku) => sku,
                    Err(rejection) => {
                        // A malformed id on a later line comes before an unknown
                        // one (the v1.5 rules; the first refusal before).
                        let malformed_first = self.rules >= RULES_V15
                            && matches!(rejection, Rejection::Validation { .. })
                            && matches!(unknown, Some(Rejection::UnknownSku { .. }));
                        if malformed_first {
                            unknown = Some(rejection);
                        } else {
                            unknown.get_or_insert(rejection);
                        }
                        SkuIdx(0)
                    }
                },
                qty: line.qty as u32,
                unit_price: line.unit_price,
            })
            .collect();
        if let Some(rejection) = unknown {
            return Err(rejection);
        }
        let reservation = match reservation_id {
            None => {
                let buyer = (self.ruled_skus > 0).then(|| self.buyer(customer_id));
                let demand = self.demand(
                    lines.iter().map(|l| (l.sku.as_str(), l.qty)),
                    buyer,
                    ctx.now_ms,
                )?;
                self.check_held_room()?;
                if let Some(buyer) = buyer {
                    self.check_pair_room(
                        demand.iter().map(|&(idx, qty)| (idx, u64::from(qty))),
                        buyer,
                    )?;
                }
                self.hold(demand, due_at_ms, Some(id), None, ctx)
            }
            Some(rid) => {
                let r = self
                    .reservations
                    .get(&rid)
                    .ok_or(Rejection::UnknownReservation { id: rid })?;
                if let Some(owner) = r.order {
                    return Err(transition(format!(
                        "reservation {rid} already belongs to order {owner}"
                    )));
                }
                if r.status != ReservationStatus::Held || r.expires_at_ms <= ctx.now_ms {
                    let status = if r.status == ReservationStatus::Held {
                        ReservationStatus::Expired
                    } else {
                        r.status
                    };
                    return Err(transition(format!(
                        "reservation {rid} is {status}: only a held reservation can be adopted"
                    )));
                }
                let mut wanted: Vec<(SkuIdx, u64)> = Vec::new();
                for line in order_lines.iter() {
                    match wanted.iter_mut().find(|(s, _)| *s == line.sku) {
                        Some((_, q)) => *q += u64::from(line.qty),
                        None => wanted.push((line.sku, u64::from(line.qty))),
                    }
                }
                let mut held: Vec<(SkuIdx, u64)> =
                    r.lines.iter().map(|&(s, q)| (s, u64::from(q))).collect();
                wanted.sort_unstable();
                held.sort_unstable();
                if wanted != held {
                    return Err(invalid(
                        Field::Lines,
                        Violation::LinesDifferFromReservation { id: rid },
                    ));
                }
                // A hold taken for this customer already counts (and its window
                // was judged when it was taken): adopting it counts nothing twice.
                // Any other hold counts for the order's customer from now on.
                if self.reservation_customer(rid).map(|c| &**c) != Some(customer_id) {
                    let adopted = self.per_sku(&order_lines);
                    let buyer = self.buyer(customer_id);
                    self.check_sale(adopted.iter().copied(), Some(buyer), false, ctx.now_ms)?;
                    self.check_pair_room(adopted.into_iter(), buyer)?;
                }
                self.end_reservation_count(rid, false);
                let r = self.reservations.get_mut(&rid).expect("checked above");
                r.order = Some(id);
                r.expires_at_ms = due_at_ms;
                self.expiry.push(Reverse((due_at_ms, rid)));
                rid
            }
        };
        let actor = self.intern_actor(checked_actor);
        let order_no: Arc<str> = order_no.into();
        let customer_id: Arc<str> = customer_id.into();
        let review = self
            .order_policy
            .review_amount_min
            .is_some_and(|min| total >= min);
        let more = (shipping_address.is_some() || review).then(|| {
            Box::new(OrderMore {
                address: shipping_address.cloned().map(Box::new),
                hold: review.then(|| Hold {
                    reason: HoldReason::Review,
                    note: format!("total {total} reaches the review amount").into(),
                    at_ms: ctx.now_ms,
                    actor: self.system_actor(),
                }),
                ..OrderMore::default()
            })
        });
        let extra = (!channel.is_empty() || more.is_some()).then(|| {
            Box::new(OrderExtra {
                channel: (!channel.is_empty()).then(|| channel.into()),
                more,
                ..OrderExtra::default()
            })
        });
        self.orders.push(Order {
            id,
            order_no: Arc::clone(&order_no),
            customer_id: Arc::clone(&customer_id),
            lines: order_lines,
            total,
            reservation,
            status: OrderStatus::Reserved,
            payment: PaymentStatus::Unpaid,
            created_at_ms: ctx.now_ms,
            updated_at_ms: ctx.now_ms,
            payment_due_at_ms: due_at_ms,
            history: {
                // Most orders see a few transitions: one allocation, not three.
                let mut history = Vec::with_capacity(4);
                history.push(HistoryEntry {
                    status: OrderStatus::Reserved,
                    at_ms: ctx.now_ms,
                    actor,
                    note: "".into(),
                    before: None,
                });
                history
            },
            extra,
        });
        self.order_no_index.insert(Arc::clone(&order_no), id);
        if self.ruled_skus > 0 {
            self.count_order(id, 1);
        }
        self.counters.orders_created += 1;
        self.counters.orders_by_status[OrderStatus::Reserved as usize] += 1;
        if self.rules == RULES_V1 {
            ctx.emit(EventKind::OrderCreatedV3 {
                id,
                order_no,
                customer_id,
                total,
            });
        } else {
            let order = self.brief(id);
            let created = crate::event::OrderCreated { id, order, total };
            if self.rules >= RULES_V14 {
                ctx.emit(EventKind::OrderCreatedBy(Box::new(
                    crate::event::OrderCreatedBy {
                        created,
                        actor: Arc::clone(&self.actors[actor as usize]),
                    },
                )));
            } else {
                ctx.emit(EventKind::OrderCreated(Box::new(created)));
            }
            if review {
                self.emit_held(id, ctx);
            }
        }
        Ok(self.order_reply(id))
    }

    pub(super) fn pay_order(
        &mut self,
        id: OrderId,
        amount: u64,
        payment_ref: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        check_text(Field::PaymentRef, payment_ref, NOTE_LEN_MAX)?;
        let checked_actor = self.check_actor(actor)?;
        let order = self.order(id)?;
        if order.payment != PaymentStatus::Unpaid {
            let paid_ref = order.extra.as_deref().map_or("", |e| &*e.payment_ref);
            let same_payment = payment_ref == paid_ref || self.rules < RULES_V14;
            if order.payment == PaymentStatus::Paid && amount == order.total && same_payment {
                return Ok(self.order_reply(id)); // a repeated payment: idempotent
            }
            let paid = order.amounts().paid;
            if self.rules >= RULES_V15 && same_payment && amount == paid {
                // The same payment told again after a cancel, return or refund.
                return Ok(self.order_reply(id));
            }
            if !same_payment {
                return Err(transition(format!(
                    "order {id} is already {} with payment_ref {paid_ref:?}, not {payment_ref:?}: \
                     a second payment is not taken",
                    order.payment
                )));
            }
            return Err(transition(format!(
                "order {id} is already {}",
                order.payment
            )));
        }
        if order.status != OrderStatus::Reserved {
            return Err(transition(format!(
                "order {id} is {}: it cannot be paid",
                order.status
            )));
        }
        if order.payment_due_at_ms <= ctx.now_ms {
            return Err(transition(format!(
                "order {id}: the payment window has closed"
            )));
        }
        if amount != order.total {
            return Err(invalid(
                Field::Amount,
                Violation::NotOrderTotal {
                    total: order.total,
                    got: amount,
                },
            ));
        }
        let reservation = order.reservation;
        let total = order.total;
        let actor = self.intern_actor(checked_actor);
        self.commit_hold(reservation, ctx);
        let ship_sla_ms = self.order_policy.ship_sla_ms;
        let order = self.order_mut(id);
        order.payment = PaymentStatus::Paid;
        let extra = order.extra_mut();
        extra.payment_ref = payment_ref.into();
        extra.paid_at_ms = Some(ctx.now_ms);
        extra.amounts.paid = total;
        if ship_sla_ms > 0 {
            // Payments come in time order and the SLA is one: deadlines queue up,
            // in (deadline, id) order as `rebuild_ship_deadlines` makes them after a
            // snapshot load or an SLA change, so that orders due in the same
            // millisecond are flagged in the same order by a replay. Orders paid in
            // one millisecond out of id order are the only inserts not at the back.
            let due = ctx.now_ms.saturating_add(ship_sla_ms);
            debug_assert!(self.ship_deadlines.back().is_none_or(|&(at, _)| at <= due));
            if self
                .ship_deadlines
                .back()
                .is_none_or(|&last| last < (due, id))
            {
                self.ship_deadlines.push_back((due, id));
            } else {
                let at = self.ship_deadlines.partition_point(|&d| d < (due, id));
                self.ship_deadlines.insert(at, (due, id));
            }
        }
        self.counters.paid_amount = self.counters.paid_amount.saturating_add(total);
        self.record_money(id, LedgerKind::Charge, total, payment_ref, actor, ctx);
        self.set_status(id, OrderStatus::Confirmed, actor, "", ctx.now_ms);
        if self.rules == RULES_V1 {
            ctx.emit(EventKind::OrderPaidV3 { id, amount });
        } else {
            let order = self.brief(id);
            let paid = crate::event::OrderPaid {
                id,
                order,
                amount,
                payment_ref: payment_ref.into(),
            };
            if self.rules >= RULES_V14 {
                ctx.emit(EventKind::OrderPaidBy(Box::new(
                    crate::event::OrderPaidBy {
                        paid,
                        actor: Arc::clone(&self.actors[actor as usize]),
                    },
                )));
            } else {
                ctx.emit(EventKind::OrderPaid(Box::new(paid)));
            }
        }
        self.emit_status_changed(id, OrderStatus::Reserved, actor, "", ctx);
        Ok(self.order_reply(id))
    }

    pub(super) fn advance_order(
        &mut self,
        id: OrderId,
        to: OrderStatus,
        note: &str,
        tracking_no: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        check_text(Field::Note, note, NOTE_LEN_MAX)?;
        check_text(Field::TrackingNo, tracking_no, NOTE_LEN_MAX)?;
        let checked_actor = self.check_actor(actor)?;
        if !matches!(
            to,
            OrderStatus::Picking
                | OrderStatus::Packed
                | OrderStatus::Shipped
                | OrderStatus::Delivered
                | OrderStatus::Completed
        ) {
            return Err(invalid(Field::To, Violation::NotAFulfilmentStep));
        }
        let order = self.order(id)?;
        let from = order.status;
        let step = OrderAction::advancing_to(to).expect("checked above: a fulfilment step");
        let decided = order_transition(from, step, order.facts());
        if decided == Err(TransitionRefusal::AlreadyThere) {
            // Repeating a step is idempotent; repeating the shipment with another
            // tracking number is not the same step (the v1.6 rules).
            let kept = order.extra.as_deref().map_or("", |e| &*e.tracking_no);
            if self.rules >= RULES_V16
                && to == OrderStatus::Shipped
                && !tracking_no.is_empty()
                && tracking_no != kept
            {
                let shipped = if kept.is_empty() {
                    "without a tracking number".to_string()
                } else {
                    format!("with tracking number {kept:?}")
                };
                return Err(transition(format!(
                    "order {id} is already shipped {shipped}: a repeat names the same \
                     number or none; another one ({tracking_no:?}) is not recorded"
                )));
            }
            return Ok(self.order_reply(id));
        }
        if decided == Err(TransitionRefusal::OnHold) {
            return Err(Rejection::OrderOnHold { id, status: from });
        }
        if decided != Ok(to) {
            let why = match from {
                OrderStatus::Cancelled => {
                    "it is cancelled and gets no further processing".to_string()
                }
                OrderStatus::Reserved => "it is not paid yet".to_string(),
                _ => match from.next_fulfilment_step() {
                    Some(next) => format!("the next step is {next}"),
                    None => format!("it is {from}"),
                },
            };
            return Err(transition(format!(
                "order {id} is {from}: cannot move to {to}: {why}"
            )));
        }
        let actor = self.intern_actor(checked_actor);
        if to == OrderStatus::Shipped && !tracking_no.is_empty() {
            self.order_mut(id).extra_mut().tracking_no = tracking_no.into();
        }
        self.set_status(id, to, actor, note, ctx.now_ms);
        self.emit_status_changed(id, from, actor, note, ctx);
        Ok(self.order_reply(id))
    }

    pub(super) fn cancel_order(
        &mut self,
        id: OrderId,
        reason: CancelReason,
        note: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        check_text(Field::Note, note, NOTE_LEN_MAX)?;
        let checked_actor = self.check_actor(actor)?;
        let order = self.order(id)?;
        let from = order.status;
        match order_transition(from, OrderAction::Cancel, order.facts()) {
            Ok(_) => {}
            // Cancelling twice: idempotent.
            Err(TransitionRefusal::AlreadyThere) => return Ok(self.order_reply(id)),
            Err(TransitionRefusal::Shipped) => {
                return Err(Rejection::OrderShipped { id, status: from });
            }
            Err(TransitionRefusal::NotAllowed | TransitionRefusal::OnHold) => {
                return Err(transition(format!(
                    "order {id} is {from}: it cannot be cancelled"
                )));
            }
        }
        let actor_id = self.intern_actor(checked_actor);
        let order = self.order(id)?;
        let reservation = order.reservation;
        let amounts = order.amounts();
        let due_added = amounts.refundable() - amounts.refund_due;
        let before = (!order.plain()).then(|| order.before(false));
        // Give the stock back exactly once: a hold is released; committed units
        // return to on_hand.
        let restocked = if from == OrderStatus::Reserved {
            let held = self.reservations[&reservation].lines.clone();
            self.end_hold(reservation, ReservationStatus::Released, ctx);
            held.iter().map(|&(s, q)| (s, u64::from(q))).collect()
        } else {
            assert!(from.holds_committed_stock());
            let lines = self.per_sku(&self.orders[(id.0 - 1) as usize].lines);
            self.unsell(&lines, true, ctx);
            lines
        };
        self.reverse_money(id, due_added, actor_id, ctx);
        let order = self.order_mut(id);
        if let Some(more) = order.extra.as_mut().and_then(|e| e.more.as_mut()) {
            more.hold = None;
        }
        let extra = order.extra_mut();
        extra.cancellation = Some(Cancellation {
            reason,
            note: note.into(),
            at_ms: ctx.now_ms,
            actor: actor_id,
        });
        self.counters.cancellations_by_reason[reason as usize] += 1;
        let with_note;
        let history_note = if note.is_empty() {
            reason.as_str()
        } else {
            with_note = format!("{reason}: {note}");
            &with_note
        };
        self.set_status_after(
            id,
            OrderStatus::Cancelled,
            actor_id,
            history_note,
            ctx.now_ms,
            before,
        );
        let actor = Arc::clone(&self.actors[actor_id as usize]);
        if self.rules == RULES_V1 {
            ctx.emit(EventKind::OrderCancelledV3 {
                id,
                reason,
                actor,
                refund_due: due_added > 0,
            });
        } else {
            let order = self.brief(id);
            let refund_due_amount = self.orders[(id.0 - 1) as usize].amounts().refund_due;
            ctx.emit(EventKind::OrderCancelled(Box::new(
                crate::event::OrderCancelled {
                    id,
                    order,
                    reason,
                    note: note.into(),
                    actor,
                    refund_due_amount,
                    restocked,
                },
            )));
        }
        Ok(self.order_reply(id))
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn return_order(
        &mut self,
        id: OrderId,
        kind: ReturnKind,
        restock: bool,
        reason: &str,
        note: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        check_text(Field::Reason, reason, NOTE_LEN_MAX)?;
        check_text(Field::Note, note, NOTE_LEN_MAX)?;
        let checked_actor = self.check_actor(actor)?;
        let order = self.order(id)?;
        let from = order.status;
        let decided = order_transition(from, OrderAction::Return, order.facts());
        if decided == Err(TransitionRefusal::AlreadyThere) {
            // The same return repeated answers the order; from the v1.2 rules on,
            // another kind or restock is refused, not answered as if it were done.
            let done_as = (
                order
                    .more()
                    .and_then(|m| m.return_kind)
                    .unwrap_or(ReturnKind::CustomerReturn),
                order
                    .extra
                    .as_ref()
                    .and_then(|e| e.returned.as_ref())
                    .map(|r| r.restock),
            );
            if self.rules < RULES_V12 || done_as == (kind, Some(restock)) {
                return Ok(self.order_reply(id));
            }
            return Err(transition(format!(
                "order {id} is already returned (a {} return, restock {}): another return \
                 is refused",
                done_as.0,
                done_as.1.unwrap_or(false)
            )));
        }
        if decided.is_err() || !kind.allowed_from(from) {
            let hint = if from.cancellable() {
                "; cancel it instead"
            } else {
                ""
            };
            let allowed = match kind {
                ReturnKind::Intercepted | ReturnKind::Refused => "a shipped order",
                ReturnKind::CustomerReturn => "a delivered or completed order",
            };
            return Err(transition(format!(
                "order {id} is {from}: a {kind} return is for {allowed}{hint}"
            )));
        }
        let actor_id = self.intern_actor(checked_actor);
        let order = self.order(id)?;
        let amounts = order.amounts();
        let due_added = amounts.refundable() - amounts.refund_due;
        let before = (!order.plain()).then(|| order.before(false));
        let lines = self.per_sku(&order.lines);
        self.unsell(&lines, restock, ctx);
        self.reverse_money(id, due_added, actor_id, ctx);
        let order = self.order_mut(id);
        if kind != ReturnKind::CustomerReturn {
            order.more_mut().return_kind = Some(kind);
        }
        let extra = order.extra_mut();
        extra.returned = Some(ReturnInfo {
            restock,
            reason: reason.into(),
            note: note.into(),
        });
        self.set_status_after(
            id,
            OrderStatus::Returned,
            actor_id,
            note,
            ctx.now_ms,
            before,
        );
        if self.rules == RULES_V1 {
            ctx.emit(EventKind::OrderReturnedV3 { id, restock });
        } else {
            let order = self.brief(id);
            let refund_due_amount = self.orders[(id.0 - 1) as usize].amounts().refund_due;
            ctx.emit(EventKind::OrderReturned(Box::new(
                crate::event::OrderReturned {
                    id,
                    order,
                    kind,
                    restock,
                    reason: reason.into(),
                    note: note.into(),
                    actor: Arc::clone(&self.actors[actor_id as usize]),
                    refund_due_amount,
                    restocked: if restock { lines } else { Vec::new() },
                },
            )));
        }
        Ok(self.order_reply(id))
    }

    /// Order lines summed per SKU, in first-seen order.
    pub(crate) fn per_sku(&self, lines: &[OrderLine]) -> Vec<(SkuIdx, u64)> {
        let mut out: Vec<(SkuIdx, u64)> = Vec::with_capacity(lines.len());
        for line in lines {
            match out.iter_mut().find(|(s, _)| *s == line.sku) {
                Some((_, q)) => *q += u64::from(line.qty),
                None => out.push((line.sku, u64::from(line.qty))),
            }
        }
        out
    }

    /// Who an order event is about.
    /// `order.status_changed` from `from` to the order's status now: thin under the
    /// rules before v1.2, else with the order's brief, the step's note, the tracking
    /// number and the actor.
    fn emit_status_changed(
        &self,
        id: OrderId,
        from: OrderStatus,
        actor: u32,
        note: &str,
        ctx: &mut Ctx<'_>,
    ) {
        let order = &self.orders[(id.0 - 1) as usize];
        let to = order.status;
        if self.rules < RULES_V12 {
            ctx.emit(EventKind::OrderStatusChanged { id, from, to });
            return;
        }
        let tracking_no = order
            .extra
            .as_ref()
            .map_or_else(|| "".into(), |e| e.tracking_no.clone());
        ctx.emit(EventKind::OrderStatusChangedFull(Box::new(
            crate::event::OrderStatusChanged {
                id,
                order: self.brief(id),
                from,
                to,
                note: note.into(),
                tracking_no,
                actor: Arc::clone(&self.actors[actor as usize]),
            },
        )));
    }

    pub(crate) fn brief(&self, id: OrderId) -> crate::event::OrderBrief {
        let o = &self.orders[(id.0 - 1) as usize];
        crate::event::OrderBrief {
            order_no: Arc::clone(&o.order_no),
            customer_id: Arc::clone(&o.customer_id),
            channel: o
                .extra
                .as_ref()
                .and_then(|e| e.channel.clone())
                .unwrap_or_else(|| Arc::clone(&self.no_channel)),
            lines: Arc::clone(&o.lines),
        }
    }
}
