//! Invariants: the cheap checks after every logged command, and the whole-state
//! check (DESIGN.md: stock, holds, orders, payments and the ledger agree) run after
//! recovery and, in debug builds, after every command on a small state.

use hashbrown::HashMap;

use super::{Amounts, State};
use crate::domain::{LedgerKind, OrderId, OrderStatus, PaymentStatus, ReservationStatus};
use crate::event::{Event, EventKind};

impl State {
    /// Cheap checks after every logged command: the SKUs this command touched.
    pub(super) fn check_cheap_invariants(&self, events: &[Event], from: usize) {
        for e in &events[from..] {
            if let EventKind::ReservationHeld { lines, .. } = &e.kind {
                for (idx, _) in lines {
                    let sku = &self.skus[idx.0 as usize];
                    assert!(
                        sku.reserved <= sku.on_hand,
                        "reserved > on_hand for {}",
                        sku.id
                    );
                }
            }
        }
        if cfg!(debug_assertions) && self.orders.len() < 2_000 && self.reservations.len() < 2_000 {
            self.check_invariants();
        }
    }

    /// Whole-state invariants (DESIGN.md): panics on a violation.
    pub fn check_invariants(&self) {
        self.check_sale_invariants();
        let mut reserved = vec![0u64; self.skus.len()];
        let mut held = 0;
        for r in self.reservations.iter() {
            if r.status == ReservationStatus::Held {
                held += 1;
                for &(idx, qty) in r.lines.iter() {
                    reserved[idx.0 as usize] += u64::from(qty);
                }
            }
        }
        assert_eq!(held, self.held_count, "held reservation count");
        for (sku, sum) in self.skus.iter().zip(&reserved) {
            assert!(
                sku.reserved <= sku.on_hand,
                "{}: reserved {} > on_hand {}",
                sku.id,
                sku.reserved,
                sku.on_hand
            );
            assert_eq!(
                sku.reserved, *sum,
                "{}: reserved differs from the sum of held lines",
                sku.id
            );
        }
        let mut by_status = [0u64; 10];
        for order in self.orders.iter() {
            by_status[order.status as usize] += 1;
            assert_eq!(
                order.history.first().map(|h| h.status),
                Some(OrderStatus::Reserved)
            );
            assert_eq!(order.history.last().map(|h| h.status), Some(order.status));
            assert_eq!(
                order.payment == PaymentStatus::Unpaid,
                matches!(order.status, OrderStatus::Reserved | OrderStatus::Expired)
                    || (order.status == OrderStatus::Cancelled
                        && order.extra.as_ref().is_none_or(|e| e.paid_at_ms.is_none())),
                "order {} payment {} with status {}",
                order.id,
                order.payment,
                order.status
            );
            let amounts = order.amounts();
            let was_paid = order.extra.as_ref().is_some_and(|e| e.paid_at_ms.is_some());
            assert_eq!(
                order.payment,
                amounts.status(was_paid),
                "order {}",
                order.id
            );
            assert!(
                amounts.refunded + amounts.refund_due <= amounts.paid,
                "order {}: refunded {} + due {} > paid {}",
                order.id,
                amounts.refunded,
                amounts.refund_due,
                amounts.paid
            );
            if order.hold().is_some() {
                assert!(
                    order.status.cancellable(),
                    "order {} {} on hold",
                    order.id,
                    order.status
                );
            }
        }
        self.check_ledger();
        assert_eq!(
            by_status, self.counters.orders_by_status,
            "orders by status"
        );
        assert_eq!(self.order_no_index.len(), self.orders.len());
    }

    /// Per order, the ledger adds up to its money: Σ charge = paid, Σ refund =
    /// refunded, Σ reversal − the refunds that paid what was due = refund due.
    fn check_ledger(&self) {
        let mut sums: HashMap<OrderId, Amounts> = HashMap::new();
        let mut last_at_ms = 0;
        for e in self.ledger.iter() {
            assert!(e.at_ms >= last_at_ms, "ledger out of time order");
            last_at_ms = e.at_ms;
            let sum = sums.entry(e.order).or_default();
            match e.kind {
                LedgerKind::Charge => sum.paid += e.amount,
                LedgerKind::Reversal => sum.refund_due += e.amount,
                LedgerKind::Refund => {
                    sum.refunded += e.amount;
                    sum.refund_due -= e.amount.min(sum.refund_due);
                }
            }
        }
        for order in self.orders.iter() {
            let expected = sums.remove(&order.id).unwrap_or_default();
            assert_eq!(order.amounts(), expected, "order {}: ledger", order.id);
        }
        assert!(sums.is_empty(), "ledger entries of unknown orders");
    }
}
