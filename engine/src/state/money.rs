//! Money: an order's amounts (paid, refunded, due back), the ledger that records
//! every movement, reversals (what a cancel, a return or a lower total makes due
//! back) and refunds (`POST /refund` pays back what is due; `pay_back` any amount).

use std::sync::Arc;

use bincode::{Decode, Encode};

use super::{Ctx, RULES_V1, RULES_V12, State, check_text, transition};
use crate::command::{Field, Outcome};
use crate::domain::{LedgerKind, Millis, OrderId, PaymentStatus};
use crate::event::EventKind;
use crate::limits::*;

/// What an order's money is: paid, paid back, and due back.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Amounts {
    pub paid: u64,
    pub refunded: u64,
    pub refund_due: u64,
}

impl Amounts {
    /// The payment status these amounts make; `was_paid` keeps a paid order of
    /// total 0 `paid`.
    pub fn status(&self, was_paid: bool) -> PaymentStatus {
        match PaymentStatus::of(self.paid, self.refunded, self.refund_due) {
            PaymentStatus::Unpaid if was_paid => PaymentStatus::Paid,
            status => status,
        }
    }
    /// Paid and not yet paid back.
    pub fn refundable(&self) -> u64 {
        self.paid - self.refunded
    }
}

/// One money movement. `seq` is the LSN of the record that made it (0 for the
/// payments and refunds carried over from a snapshot older than the ledger).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct LedgerEntry {
    pub seq: u64,
    pub at_ms: Millis,
    pub order: OrderId,
    pub kind: LedgerKind,
    pub amount: u64,
    pub reference: Box<str>,
    pub actor: u32,
}

impl State {
    /// `POST /refund`: pay back exactly what is due.
    pub(super) fn refund_order(
        &mut self,
        id: OrderId,
        refund_ref: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        check_text(Field::RefundRef, refund_ref, NOTE_LEN_MAX)?;
        let checked_actor = self.check_actor(actor)?;
        let order = self.order(id)?;
        let amounts = order.amounts();
        if amounts.refund_due == 0 {
            // Before the v1.2 rules a repeat on a refunded order answered the order;
            // API.md says 409 whenever nothing is due.
            if order.payment == PaymentStatus::Refunded && self.rules < RULES_V12 {
                return Ok(self.order_reply(id));
            }
            return Err(transition(format!(
                "order {id} payment is {}: nothing is due back",
                order.payment
            )));
        }
        let actor_id = self.intern_actor(checked_actor);
        self.pay_back(id, amounts.refund_due, "", refund_ref, actor_id, ctx);
        Ok(self.order_reply(id))
    }

    /// Make `amount` due back (a cancel, a return, a lower total): a reversal.
    pub(crate) fn reverse_money(
        &mut self,
        id: OrderId,
        amount: u64,
        actor: u32,
        ctx: &mut Ctx<'_>,
    ) {
        if amount == 0 {
            return;
        }
        let order = self.order_mut(id);
        let extra = order.extra_mut();
        extra.amounts.refund_due += amount;
        order.payment = order.amounts().status(true);
        self.record_money(id, LedgerKind::Reversal, amount, "", actor, ctx);
    }

    /// Pay `amount` back: first what is due, beyond that goodwill.
    pub(crate) fn pay_back(
        &mut self,
        id: OrderId,
        amount: u64,
        reason: &str,
        refund_ref: &str,
        actor: u32,
        ctx: &mut Ctx<'_>,
    ) {
        let order = self.order(id).expect("checked by the caller");
        let before = Some(order.before(false));
        let order = self.order_mut(id);
        let extra = order.extra_mut();
        assert!(amount <= extra.amounts.refundable());
        extra.amounts.refunded += amount;
        extra.amounts.refund_due -= amount.min(extra.amounts.refund_due);
        extra.refund_ref = refund_ref.into();
        let amounts = extra.amounts;
        order.payment = amounts.status(true);
        self.counters.refunded_amount = self.counters.refunded_amount.saturating_add(amount);
        self.record_money(id, LedgerKind::Refund, amount, refund_ref, actor, ctx);
        let note = if reason.is_empty() {
            format!("refunded {amount}")
        } else {
            format!("refunded {amount}: {reason}")
        };
        self.push_history(id, actor, &note, ctx.now_ms, before);
        if self.rules == RULES_V1 {
            ctx.emit(EventKind::OrderRefunded { id, amount });
        } else {
            ctx.emit(EventKind::OrderRefundedAmount(Box::new(
                crate::event::OrderRefunded {
                    id,
                    order_no: Arc::clone(&self.orders[(id.0 - 1) as usize].order_no),
                    amount,
                    reason: reason.into(),
                    refund_ref: refund_ref.into(),
                    actor: Arc::clone(&self.actors[actor as usize]),
                    refunded_amount: amounts.refunded,
                    refund_due_amount: amounts.refund_due,
                },
            )));
        }
    }

    /// Add a ledger entry, numbered by this record's LSN.
    pub(crate) fn record_money(
        &mut self,
        id: OrderId,
        kind: LedgerKind,
        amount: u64,
        reference: &str,
        actor: u32,
        ctx: &mut Ctx<'_>,
    ) {
        self.ledger.push(LedgerEntry {
            seq: ctx.lsn,
            at_ms: ctx.now_ms,
            order: id,
            kind,
            amount,
            reference: reference.into(),
            actor,
        });
    }
}
