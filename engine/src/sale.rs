//! Flash-sale rules: per-customer purchase limits (限购) and sale windows.
//!
//! Both are judged inside the writer, by the logged clock, so replay gives the same
//! answers. The limit counts, per (SKU, customer), the units that customer holds
//! (reservations taken for them), has bought outright (committed reservations) and
//! has ordered (orders not cancelled, expired or returned). Counts are kept only for
//! SKUs that have a limit, and an entry is dropped when it falls back to zero.
//!
//! Where the units of a customer come from:
//! - a reservation taken for a customer (`ReserveFor`) counts while held; its
//!   customer is kept in `State::reservation_customers` until it ends;
//! - committing it moves its units to `bought_outright`, which never comes back;
//! - releasing or expiring it counts the units back;
//! - adopting it into an order moves its units to the order (never twice);
//! - an order counts its lines while its status counts ([`counts_toward_limit`]);
//!   a modification counts the change.

use std::sync::Arc;

use bincode::{Decode, Encode};
use hashbrown::HashMap;

use crate::command::{Field, Rejection, SaleRules, SkuCustomerView, SkuDefinition, Violation};
use crate::domain::{Millis, OrderId, OrderStatus, ReservationId, ReservationStatus, SkuIdx};
use crate::limits::{CUSTOMER_HOLDS_MAX, LIMITED_PAIRS_MAX, ON_HAND_MAX, SALE_INSTANT_MAX_MS};
use crate::state::{State, invalid};

/// The rules of one SKU that has any, and its per-customer counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct SkuSale {
    pub rules: SaleRules,
    /// Per customer, only while the SKU has a limit.
    pub counted: HashMap<Arc<str>, Counted>,
}

/// What counts for one customer on one limited SKU (never both zero).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Counted {
    /// Units in held reservations taken for the customer and in their orders that
    /// count: these come back when the hold or the order ends.
    pub held_or_ordered: u64,
    /// Units of the customer's reservations committed outright: they never come back.
    pub bought_outright: u64,
}

impl Counted {
    pub fn total(&self) -> u64 {
        self.held_or_ordered + self.bought_outright
    }
}

/// The sale part of a snapshot: one entry per SKU with rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub(crate) struct SalesSnapshot {
    /// By SKU.
    pub skus: Vec<SkuSaleSnapshot>,
    /// By reservation id, sorted.
    pub reservation_customers: Vec<(ReservationId, Arc<str>)>,
}

/// One SKU's rules and counts (by customer id, sorted) in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct SkuSaleSnapshot {
    pub sku: SkuIdx,
    pub rules: SaleRules,
    pub counted: Vec<(Arc<str>, Counted)>,
}

/// Whether an order in `status` counts toward its customer's limits.
pub(crate) fn counts_toward_limit(status: OrderStatus) -> bool {
    !matches!(
        status,
        OrderStatus::Cancelled | OrderStatus::Expired | OrderStatus::Returned
    )
}

impl State {
    /// A SKU's rules (the default when it has none).
    pub(crate) fn sale_rules(&self, idx: SkuIdx) -> SaleRules {
        self.sales[idx.0 as usize]
            .as_ref()
            .map_or_else(SaleRules::default, |s| s.rules)
    }

    fn limited(&self, idx: SkuIdx) -> Option<&SkuSale> {
        self.sales[idx.0 as usize]
            .as_deref()
            .filter(|s| s.rules.limit().is_some())
    }

    /// The rules a definition asks for, from the current ones; checked.
    pub(crate) fn sale_rules_after(
        &self,
        current: SaleRules,
        definition: &SkuDefinition,
    ) -> Result<SaleRules, Rejection> {
        let rules = SaleRules {
            purchase_limit_per_customer: definition
                .purchase_limit_per_customer
                .unwrap_or(current.purchase_limit_per_customer),
            sale_starts_at_ms: definition
                .sale_starts_at_ms
                .unwrap_or(current.sale_starts_at_ms),
            sale_ends_at_ms: definition
                .sale_ends_at_ms
                .unwrap_or(current.sale_ends_at_ms),
        };
        if rules.purchase_limit_per_customer > ON_HAND_MAX {
            return Err(invalid(
                Field::PurchaseLimitPerCustomer,
                Violation::AboveMax { max: ON_HAND_MAX },
            ));
        }
        for (field, at) in [
            (Field::SaleStartsAt, rules.sale_starts_at_ms),
            (Field::SaleEndsAt, rules.sale_ends_at_ms),
        ] {
            if at.is_some_and(|at| at > SALE_INSTANT_MAX_MS) {
                return Err(invalid(
                    field,
                    Violation::AboveMax {
                        max: SALE_INSTANT_MAX_MS,
                    },
                ));
            }
        }
        if let (Some(starts), Some(ends)) = (rules.sale_starts_at_ms, rules.sale_ends_at_ms)
            && ends <= starts
        {
            return Err(invalid(Field::SaleEndsAt, Violation::NotAfterStart));
        }
        Ok(rules)
    }

    /// Set a SKU's rules (checked by `sale_rules_after`). A limit counts from when
    /// it is set: where there was none, the orders that count are counted, and the
    /// holds kept by customer (those with another limited SKU); holds without a
    /// limited SKU and outright purchases from before are not (nothing kept their
    /// customer). A limit removed forgets the counts.
    pub(crate) fn set_sale_rules(&mut self, idx: SkuIdx, rules: SaleRules) {
        let slot = &mut self.sales[idx.0 as usize];
        let was_limited = slot.as_ref().is_some_and(|s| s.rules.limit().is_some());
        if rules == SaleRules::default() {
            if let Some(sale) = slot.take() {
                self.limited_pairs -= sale.counted.len();
            }
            return;
        }
        let sale = slot.get_or_insert_with(Box::default);
        sale.rules = rules;
        match (was_limited, rules.limit().is_some()) {
            (false, true) => {
                let counted = self.recount(idx);
                self.limited_pairs += counted.len();
                self.sales[idx.0 as usize]
                    .as_mut()
                    .expect("set above")
                    .counted = counted;
            }
            (true, false) => {
                self.limited_pairs -= sale.counted.len();
                sale.counted = HashMap::new();
            }
            _ => {}
        }
    }

    /// What holds and orders count on `idx` now, by customer (outright purchases
    /// are not included: nothing names their customer once they are committed).
    fn recount(&self, idx: SkuIdx) -> HashMap<Arc<str>, Counted> {
        let mut counted: HashMap<Arc<str>, Counted> = HashMap::new();
        for (id, customer) in &self.reservation_customers {
            let r = self
                .reservations
                .get(id)
                .expect("a reservation with a customer is held");
            for &(sku, qty) in r.lines.iter() {
                if sku == idx {
                    counted
                        .entry(Arc::clone(customer))
                        .or_default()
                        .held_or_ordered += u64::from(qty);
                }
            }
        }
        for order in self.orders.iter() {
            if !counts_toward_limit(order.status) {
                continue;
            }
            for line in order.lines.iter() {
                if line.sku == idx {
                    counted
                        .entry(Arc::clone(&order.customer_id))
                        .or_default()
                        .held_or_ordered += u64::from(line.qty);
                }
            }
        }
        counted
    }

    /// Refuse a customer's new units outside a sale window or past a limit, in the
    /// order API.md gives: the window of every line first, then the limits. `demand`
    /// is per SKU, in request order. `window` is false where the units are not new
    /// stock (adopting a hold).
    pub(crate) fn check_sale(
        &self,
        demand: impl Iterator<Item = (SkuIdx, u64)> + Clone,
        customer: Option<&str>,
        window: bool,
        now_ms: Millis,
    ) -> Result<(), Rejection> {
        // A limited SKU without a customer is a validation refusal: it comes before
        // the windows (API.md: validation_failed first).
        if customer.is_none() && demand.clone().any(|(idx, _)| self.limited(idx).is_some()) {
            return Err(invalid(Field::CustomerId, Violation::Required));
        }
        if window {
            for (idx, _) in demand.clone() {
                let Some(sale) = &self.sales[idx.0 as usize] else {
                    continue;
                };
                if let Some(closed) = sale.rules.closed_at(now_ms) {
                    return Err(Rejection::SaleNotOpen {
                        sku: self.sku_name(idx).to_string(),
                        closed,
                    });
                }
            }
        }
        for (idx, qty) in demand {
            let Some(sale) = self.limited(idx) else {
                continue;
            };
            let limit = sale.rules.purchase_limit_per_customer;
            let Some(customer) = customer else {
                return Err(invalid(Field::CustomerId, Violation::Required));
            };
            let already = sale.counted.get(customer).map_or(0, Counted::total);
            if already + qty > limit {
                return Err(Rejection::PurchaseLimitExceeded {
                    sku: self.sku_name(idx).to_string(),
                    limit,
                    already,
                    requested: qty,
                });
            }
        }
        Ok(())
    }

    /// Refuse before anything changes if counting `demand` for `customer` would add
    /// more (SKU, customer) entries than the bound allows.
    pub(crate) fn check_pair_room(
        &self,
        demand: impl Iterator<Item = (SkuIdx, u64)>,
        customer: &str,
    ) -> Result<(), Rejection> {
        let new_pairs = demand
            .filter(|&(idx, _)| {
                self.limited(idx)
                    .is_some_and(|s| !s.counted.contains_key(customer))
            })
            .count();
        if self.limited_pairs + new_pairs > LIMITED_PAIRS_MAX {
            return Err(Rejection::LimitReached {
                what: format!("{LIMITED_PAIRS_MAX} counted (SKU, customer) pairs"),
            });
        }
        Ok(())
    }

    /// Count `qty` more (or, negative, fewer) units of `idx` for `customer`, if the
    /// SKU has a limit.
    pub(crate) fn count_units(&mut self, idx: SkuIdx, customer: &Arc<str>, qty: i64) {
        let Some(sale) = self.sales[idx.0 as usize]
            .as_deref_mut()
            .filter(|s| s.rules.limit().is_some())
        else {
            return;
        };
        if qty >= 0 {
            let entry = match sale.counted.get_mut(&**customer) {
                Some(entry) => entry,
                None => {
                    self.limited_pairs += 1;
                    sale.counted.entry(Arc::clone(customer)).or_default()
                }
            };
            entry.held_or_ordered += qty as u64;
            return;
        }
        let entry = sale
            .counted
            .get_mut(&**customer)
            .expect("units counted back were counted");
        entry.held_or_ordered = entry
            .held_or_ordered
            .checked_sub(qty.unsigned_abs())
            .expect("never below zero");
        if entry.total() == 0 {
            sale.counted.remove(&**customer);
            self.limited_pairs -= 1;
        }
    }

    /// Whether a hold of `demand` for a customer is kept by customer: it has a
    /// limited SKU. Refused when too many such holds are kept already.
    pub(crate) fn check_customer_hold_room(
        &self,
        mut demand: impl Iterator<Item = SkuIdx>,
    ) -> Result<bool, Rejection> {
        if !demand.any(|idx| self.limited(idx).is_some()) {
            return Ok(false);
        }
        if self.reservation_customers.len() >= CUSTOMER_HOLDS_MAX {
            return Err(Rejection::LimitReached {
                what: format!("{CUSTOMER_HOLDS_MAX} holds for customers on limited SKUs"),
            });
        }
        Ok(true)
    }

    /// A reservation taken for `customer` on a limited SKU: its units count until
    /// it ends.
    pub(crate) fn count_reservation(&mut self, id: ReservationId, customer: &str) {
        let customer: Arc<str> = customer.into();
        let line_count = self.reservations.get(&id).expect("just held").lines.len();
        for i in 0..line_count {
            let (idx, qty) = self.reservations.get(&id).expect("just held").lines[i];
            self.count_units(idx, &customer, i64::from(qty));
        }
        self.reservation_customers.insert(id, customer);
    }

    /// A reservation ends or moves into an order: a customer's units of it no
    /// longer count as held. `committed`: they were bought outright, and stay counted.
    pub(crate) fn end_reservation_count(&mut self, id: ReservationId, committed: bool) {
        let Some(customer) = self.reservation_customers.remove(&id) else {
            return;
        };
        let line_count = self.reservations.get(&id).expect("still known").lines.len();
        for i in 0..line_count {
            let (idx, qty) = self.reservations.get(&id).expect("still known").lines[i];
            if committed {
                if let Some(sale) = self.sales[idx.0 as usize]
                    .as_deref_mut()
                    .filter(|s| s.rules.limit().is_some())
                {
                    let entry = sale
                        .counted
                        .get_mut(&*customer)
                        .expect("a held reservation's units are counted");
                    entry.held_or_ordered -= u64::from(qty);
                    entry.bought_outright += u64::from(qty);
                }
            } else {
                self.count_units(idx, &customer, -i64::from(qty));
            }
        }
    }

    /// The customer a held reservation was taken for, if any.
    pub(crate) fn reservation_customer(&self, id: ReservationId) -> Option<&Arc<str>> {
        self.reservation_customers.get(&id)
    }

    /// An order's units count (`sign` 1) or stop counting (`sign` -1).
    pub(crate) fn count_order(&mut self, id: OrderId, sign: i64) {
        let order = &self.orders[(id.0 - 1) as usize];
        let customer = Arc::clone(&order.customer_id);
        let lines = Arc::clone(&order.lines);
        for line in lines.iter() {
            self.count_units(line.sku, &customer, sign * i64::from(line.qty));
        }
    }

    /// What counts for one customer on one SKU.
    pub(crate) fn sku_customer(
        &self,
        sku: &str,
        customer_id: &str,
    ) -> Result<SkuCustomerView, Rejection> {
        crate::state::check_sku_id(Field::Sku, sku)?;
        crate::state::check_required_text(
            Field::CustomerId,
            customer_id,
            crate::limits::CUSTOMER_ID_LEN_MAX,
        )?;
        let idx = *self
            .sku_index
            .get(sku)
            .ok_or_else(|| Rejection::UnknownSku {
                sku: sku.to_string(),
            })?;
        let rules = self.sale_rules(idx);
        let counted = self
            .limited(idx)
            .and_then(|s| s.counted.get(customer_id))
            .map_or(0, Counted::total);
        Ok(SkuCustomerView {
            sku: Arc::clone(&self.skus[idx.0 as usize].id),
            customer_id: customer_id.to_string(),
            counted,
            limit: rules.purchase_limit_per_customer,
        })
    }

    pub(crate) fn sales_snapshot(&self) -> SalesSnapshot {
        let skus = self
            .sales
            .iter()
            .enumerate()
            .filter_map(|(i, sale)| {
                let sale = sale.as_ref()?;
                let mut counted: Vec<(Arc<str>, Counted)> = sale
                    .counted
                    .iter()
                    .map(|(c, n)| (Arc::clone(c), *n))
                    .collect();
                counted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                Some(SkuSaleSnapshot {
                    sku: SkuIdx(i as u32),
                    rules: sale.rules,
                    counted,
                })
            })
            .collect();
        let mut reservation_customers: Vec<(ReservationId, Arc<str>)> = self
            .reservation_customers
            .iter()
            .map(|(id, c)| (*id, Arc::clone(c)))
            .collect();
        reservation_customers.sort_unstable_by_key(|(id, _)| *id);
        SalesSnapshot {
            skus,
            reservation_customers,
        }
    }

    pub(crate) fn restore_sales(&mut self, snapshot: SalesSnapshot) -> Result<(), String> {
        self.sales = vec![None; self.skus.len()];
        self.limited_pairs = 0;
        for SkuSaleSnapshot {
            sku: idx,
            rules,
            counted,
        } in snapshot.skus
        {
            let slot = self
                .sales
                .get_mut(idx.0 as usize)
                .ok_or_else(|| format!("sale rules of SKU #{} that does not exist", idx.0))?;
            self.limited_pairs += counted.len();
            *slot = Some(Box::new(SkuSale {
                rules,
                counted: counted.into_iter().collect(),
            }));
        }
        self.reservation_customers = snapshot.reservation_customers.into_iter().collect();
        Ok(())
    }

    /// The counts equal a recount from the holds and orders, plus what was bought
    /// outright; no entry is zero; the customers of reservations are of held,
    /// unadopted reservations.
    pub(crate) fn check_sale_invariants(&self) {
        assert_eq!(self.sales.len(), self.skus.len(), "sale rules by SKU");
        for (id, _) in &self.reservation_customers {
            let r = self
                .reservations
                .get(id)
                .unwrap_or_else(|| panic!("reservation {id} with a customer is unknown"));
            assert_eq!(r.status, ReservationStatus::Held, "reservation {id}");
            assert_eq!(r.order, None, "reservation {id} with a customer is adopted");
        }
        let mut pairs = 0;
        for (i, sale) in self.sales.iter().enumerate() {
            let Some(sale) = sale else { continue };
            assert_ne!(
                sale.rules,
                SaleRules::default(),
                "SKU #{i}: empty rules kept"
            );
            if sale.rules.limit().is_none() {
                assert!(sale.counted.is_empty(), "SKU #{i}: counts without a limit");
                continue;
            }
            let recount = self.recount(SkuIdx(i as u32));
            for (customer, counted) in &sale.counted {
                assert_ne!(counted.total(), 0, "SKU #{i}, {customer}: a zero entry");
                assert_eq!(
                    counted.held_or_ordered,
                    recount.get(customer).map_or(0, |c| c.held_or_ordered),
                    "SKU #{i}, {customer}: held or ordered"
                );
            }
            for customer in recount.keys() {
                assert!(
                    sale.counted.contains_key(customer),
                    "SKU #{i}, {customer}: not counted"
                );
            }
            pairs += sale.counted.len();
        }
        assert_eq!(pairs, self.limited_pairs, "counted pairs");
    }
}
