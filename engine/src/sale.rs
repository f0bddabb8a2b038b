//! Flash-sale rules: per-customer purchase limits (限购) and sale windows.
//!
//! Both are judged inside the writer, by the logged clock, so replay gives the same
//! answers. The limit counts, per (SKU, customer), the units that customer holds
//! (reservations taken for them), has bought outright (committed reservations) and
//! has ordered (orders not cancelled, expired or returned). Counts are kept only for
//! SKUs that have a limit, and an entry is dropped when it falls back to zero.
//!
//! Where the units of a customer come from:
//! - a reservation taken for a customer (`ReserveFor`) with a limited SKU counts
//!   while held; it keeps its customer (`Reservation::customer`) until it ends;
//! - committing it moves its units to `bought_outright`, which never comes back;
//! - releasing or expiring it counts the units back;
//! - adopting it into an order moves its units to the order (never twice);
//! - an order counts its lines while its status counts ([`counts_toward_limit`]);
//!   a modification counts the change.

use std::hash::BuildHasher;
use std::sync::Arc;

use bincode::{Decode, Encode};
use hashbrown::{DefaultHashBuilder, HashMap, HashTable};

use crate::command::{Field, Rejection, SaleRules, SkuCustomerView, SkuDefinition, Violation};
use crate::domain::{Millis, OrderId, OrderStatus, ReservationId, ReservationStatus, SkuIdx};
use crate::limits::{LIMITED_PAIRS_MAX, LINES_PER_REQUEST_MAX, ON_HAND_MAX, SALE_INSTANT_MAX_MS};
use crate::state::{RULES_V14, Reservation, State, invalid};

/// The rules of one SKU that has any, and its per-customer counts.
#[derive(Debug, Clone, Default)]
pub(crate) struct SkuSale {
    pub rules: SaleRules,
    /// Per customer, only while the SKU has a limit.
    pub counted: CustomerCounts,
}

/// Counts by customer id. A hash table keyed by a hash the caller computes once
/// per command ([`customer_hash`]) for every SKU it touches, instead of once per
/// lookup: a limited reservation hashes its customer once.
#[derive(Debug, Clone, Default)]
pub(crate) struct CustomerCounts(HashTable<(Arc<str>, Counted)>);

/// A customer id with its hash, computed once per command.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Buyer<'a> {
    pub id: &'a str,
    pub hash: u64,
}

/// The hash of a customer id in every [`CustomerCounts`] of a state.
pub(crate) fn customer_hash(hasher: &DefaultHashBuilder, customer: &str) -> u64 {
    hasher.hash_one(customer)
}

impl CustomerCounts {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &(Arc<str>, Counted)> {
        self.0.iter()
    }

    pub fn get(&self, hash: u64, customer: &str) -> Option<&(Arc<str>, Counted)> {
        self.0.find(hash, |(known, _)| &**known == customer)
    }

    /// Count `qty` more held or ordered units: the customer's id as kept, and
    /// whether the entry is new (`key` makes its id).
    pub fn add(
        &mut self,
        hasher: &DefaultHashBuilder,
        hash: u64,
        customer: &str,
        key: impl FnOnce() -> Arc<str>,
        qty: u64,
    ) -> (&Arc<str>, bool) {
        match self.0.entry(
            hash,
            |(known, _)| &**known == customer,
            |(known, _)| customer_hash(hasher, known),
        ) {
            hashbrown::hash_table::Entry::Occupied(entry) => {
                let (known, counted) = entry.into_mut();
                counted.held_or_ordered += qty;
                (known, false)
            }
            hashbrown::hash_table::Entry::Vacant(entry) => {
                let (known, _) = entry
                    .insert((
                        key(),
                        Counted {
                            held_or_ordered: qty,
                            bought_outright: 0,
                        },
                    ))
                    .into_mut();
                (known, true)
            }
        }
    }

    /// Count `qty` held or ordered units back (or, `bought`, as bought outright);
    /// whether the entry went (it fell to zero).
    pub fn sub(&mut self, hash: u64, customer: &str, qty: u64, bought: bool) -> bool {
        let Ok(mut entry) = self.0.find_entry(hash, |(known, _)| &**known == customer) else {
            panic!("units counted back were counted");
        };
        let counted = &mut entry.get_mut().1;
        counted.held_or_ordered = counted
            .held_or_ordered
            .checked_sub(qty)
            .expect("never below zero");
        if bought {
            counted.bought_outright += qty;
            return false;
        }
        if counted.total() == 0 {
            entry.remove();
            return true;
        }
        false
    }

    fn collect(
        hasher: &DefaultHashBuilder,
        entries: impl IntoIterator<Item = (Arc<str>, Counted)>,
    ) -> CustomerCounts {
        let mut table = HashTable::new();
        for (customer, counted) in entries {
            let hash = customer_hash(hasher, &customer);
            table.insert_unique(hash, (customer, counted), |(known, _)| {
                customer_hash(hasher, known)
            });
        }
        CustomerCounts(table)
    }
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

/// `State::end_reservation_count` on a reservation the caller holds already (the
/// state's fields passed one by one, so a caller can hold `r` at the same time).
#[inline]
pub(crate) fn uncount_hold(
    sales: &mut [Option<Box<SkuSale>>],
    hasher: &DefaultHashBuilder,
    limited_pairs: &mut usize,
    r: &mut Reservation,
    committed: bool,
) {
    let Some(customer) = r.customer.take() else {
        return;
    };
    let hash = customer_hash(hasher, &customer);
    for &(idx, qty) in r.lines.iter() {
        let Some(sale) = sales[idx.0 as usize]
            .as_deref_mut()
            .filter(|s| s.rules.limit().is_some())
        else {
            continue;
        };
        if sale.counted.sub(hash, &customer, u64::from(qty), committed) {
            *limited_pairs -= 1;
        }
    }
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
            // Named by what was sent: the start alone, against the end kept, is the
            // start's fault; otherwise the end's.
            if definition.sale_ends_at_ms.is_none() {
                return Err(invalid(Field::SaleStartsAt, Violation::NotBeforeEnd));
            }
            return Err(invalid(Field::SaleEndsAt, Violation::NotAfterStart));
        }
        Ok(rules)
    }

    /// What a limit set on `idx` where there was none counts at once (`recount`);
    /// `None` where `rules` set no new limit. Under the v1.4 rules refused past the
    /// bound on counted pairs, as a hold or an order is: one definition could add
    /// millions of them.
    pub(crate) fn counted_by_new_limit(
        &self,
        idx: SkuIdx,
        current: SaleRules,
        rules: SaleRules,
    ) -> Result<Option<HashMap<Arc<str>, Counted>>, Rejection> {
        if current.limit().is_some() || rules.limit().is_none() {
            return Ok(None);
        }
        let counted = self.recount(idx);
        if self.rules >= RULES_V14
            && !counted.is_empty()
            && self.limited_pairs + counted.len() > LIMITED_PAIRS_MAX
        {
            return Err(Rejection::LimitReached {
                what: format!(
                    "{LIMITED_PAIRS_MAX} counted (SKU, customer) pairs: this limit would count \
                     {} customers of {:?} more",
                    counted.len(),
                    &*self.skus[idx.0 as usize].id
                ),
            });
        }
        Ok(Some(counted))
    }

    /// Set a SKU's rules (checked by `sale_rules_after`). A limit counts from when
    /// it is set: where there was none, the orders that count are counted, and the
    /// holds kept by customer (those with another limited SKU); holds without a
    /// limited SKU and outright purchases from before are not (nothing kept their
    /// customer). A limit removed forgets the counts. `recounted`: what a new limit
    /// counts ([`State::counted_by_new_limit`]).
    pub(crate) fn set_sale_rules(
        &mut self,
        idx: SkuIdx,
        rules: SaleRules,
        recounted: Option<HashMap<Arc<str>, Counted>>,
    ) {
        let slot = &mut self.sales[idx.0 as usize];
        let was_limited = slot.as_ref().is_some_and(|s| s.rules.limit().is_some());
        if rules == SaleRules::default() {
            if let Some(sale) = slot.take() {
                self.limited_pairs -= sale.counted.len();
                self.ruled_skus -= 1;
            }
            return;
        }
        if slot.is_none() {
            self.ruled_skus += 1;
        }
        let sale = slot.get_or_insert_with(Box::default);
        sale.rules = rules;
        match (was_limited, rules.limit().is_some()) {
            (false, true) => {
                let recounted = recounted.expect("a new limit comes with what it counts");
                let counted = CustomerCounts::collect(&self.customer_hasher, recounted);
                self.limited_pairs += counted.len();
                self.sales[idx.0 as usize]
                    .as_mut()
                    .expect("set above")
                    .counted = counted;
            }
            (true, false) => {
                self.limited_pairs -= sale.counted.len();
                sale.counted = CustomerCounts::default();
            }
            _ => {}
        }
    }

    /// What holds and orders count on `idx` now, by customer (outright purchases
    /// are not included: nothing names their customer once they are committed).
    fn recount(&self, idx: SkuIdx) -> HashMap<Arc<str>, Counted> {
        let mut counted: HashMap<Arc<str>, Counted> = HashMap::new();
        for r in self.reservations.iter() {
            let Some(customer) = &r.customer else {
                continue;
            };
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
        customer: Option<Buyer<'_>>,
        window: bool,
        now_ms: Millis,
    ) -> Result<(), Rejection> {
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
            let already = sale
                .counted
                .get(customer.hash, customer.id)
                .map_or(0, |(_, c)| c.total());
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
        customer: Buyer<'_>,
    ) -> Result<(), Rejection> {
        let mut demand = demand.peekable();
        if self.limited_pairs + LINES_PER_REQUEST_MAX <= LIMITED_PAIRS_MAX
            || demand.peek().is_none()
        {
            // Far from the bound: no line can reach it (no lookup needed).
            return Ok(());
        }
        let new_pairs = demand
            .filter(|&(idx, _)| {
                self.limited(idx)
                    .is_some_and(|s| s.counted.get(customer.hash, customer.id).is_none())
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
        let hash = customer_hash(&self.customer_hasher, customer);
        if qty >= 0 {
            let (_, new) = sale.counted.add(
                &self.customer_hasher,
                hash,
                customer,
                || Arc::clone(customer),
                qty as u64,
            );
            self.limited_pairs += usize::from(new);
        } else if sale.counted.sub(hash, customer, qty.unsigned_abs(), false) {
            self.limited_pairs -= 1;
        }
    }

    /// Whether a hold of `demand` for a customer keeps its customer: it has a
    /// limited SKU.
    pub(crate) fn counts_for_customer(&self, mut demand: impl Iterator<Item = SkuIdx>) -> bool {
        demand.any(|idx| self.limited(idx).is_some())
    }

    /// `id` with its hash.
    pub(crate) fn buyer<'a>(&self, id: &'a str) -> Buyer<'a> {
        Buyer {
            id,
            hash: customer_hash(&self.customer_hasher, id),
        }
    }

    /// A hold of `demand` about to be taken for `customer`, with a limited SKU: its
    /// units count until it ends. One probe per limited line; the customer id is
    /// allocated once, only when no count of the customer's holds it already, and is
    /// returned for the hold to keep.
    pub(crate) fn count_hold(&mut self, demand: &[(SkuIdx, u32)], customer: Buyer<'_>) -> Arc<str> {
        let mut shared: Option<Arc<str>> = None;
        for &(idx, qty) in demand {
            let Some(sale) = self.sales[idx.0 as usize]
                .as_deref_mut()
                .filter(|s| s.rules.limit().is_some())
            else {
                continue;
            };
            let (known, new) = sale.counted.add(
                &self.customer_hasher,
                customer.hash,
                customer.id,
                || shared.clone().unwrap_or_else(|| customer.id.into()),
                u64::from(qty),
            );
            shared.get_or_insert_with(|| Arc::clone(known));
            self.limited_pairs += usize::from(new);
        }
        shared.expect("a hold kept by customer has a limited SKU")
    }

    /// A reservation ends or moves into an order: a customer's units of it no
    /// longer count as held. `committed`: they were bought outright, and stay counted.
    pub(crate) fn end_reservation_count(&mut self, id: ReservationId, committed: bool) {
        let r = self.reservations.get_mut(&id).expect("still known");
        uncount_hold(
            &mut self.sales,
            &self.customer_hasher,
            &mut self.limited_pairs,
            r,
            committed,
        );
    }

    /// The customer a held reservation was taken for, if any.
    pub(crate) fn reservation_customer(&self, id: ReservationId) -> Option<&Arc<str>> {
        self.reservations.get(&id)?.customer.as_ref()
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
        // A SKU id that could not be one is an unknown SKU (404), as on
        // `GET /v1/skus/{sku}`: a read names no field to correct.
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
        let hash = customer_hash(&self.customer_hasher, customer_id);
        let counted = self
            .limited(idx)
            .and_then(|s| s.counted.get(hash, customer_id))
            .map_or(0, |(_, c)| c.total());
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
            .reservations
            .iter()
            .filter_map(|r| Some((r.id, Arc::clone(r.customer.as_ref()?))))
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
        self.ruled_skus = 0;
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
            self.ruled_skus += 1;
            *slot = Some(Box::new(SkuSale {
                rules,
                counted: CustomerCounts::collect(&self.customer_hasher, counted),
            }));
        }
        for (id, customer) in snapshot.reservation_customers {
            let r = self
                .reservations
                .get_mut(&id)
                .ok_or_else(|| format!("the customer of reservation {id}, which is unknown"))?;
            r.customer = Some(customer);
        }
        Ok(())
    }

    /// The counts equal a recount from the holds and orders, plus what was bought
    /// outright; no entry is zero; the customers of reservations are of held,
    /// unadopted reservations.
    pub(crate) fn check_sale_invariants(&self) {
        assert_eq!(self.sales.len(), self.skus.len(), "sale rules by SKU");
        for r in self.reservations.iter().filter(|r| r.customer.is_some()) {
            let id = r.id;
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
            for (customer, counted) in sale.counted.iter() {
                assert_ne!(counted.total(), 0, "SKU #{i}, {customer}: a zero entry");
                assert_eq!(
                    counted.held_or_ordered,
                    recount.get(customer).map_or(0, |c| c.held_or_ordered),
                    "SKU #{i}, {customer}: held or ordered"
                );
            }
            for customer in recount.keys() {
                let hash = customer_hash(&self.customer_hasher, customer);
                assert!(
                    sale.counted.get(hash, customer).is_some(),
                    "SKU #{i}, {customer}: not counted"
                );
            }
            pairs += sale.counted.len();
        }
        assert_eq!(pairs, self.limited_pairs, "counted pairs");
        assert_eq!(
            self.sales.iter().filter(|s| s.is_some()).count(),
            self.ruled_skus,
            "SKUs with rules"
        );
    }
}
