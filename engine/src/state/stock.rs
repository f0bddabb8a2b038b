//! SKUs and their stock: definitions (with their sale rules, `sale.rs`), stock
//! adjustments, the `stock.low` / `stock.out` crossings, and units that come back
//! (`unsell`, `stock.restored`).

use std::sync::Arc;

use bincode::{Decode, Encode};

use super::{
    Ctx, RULES_V1, RULES_V12, RULES_V15, RULES_V16, State, check_sku_id, check_text, invalid,
    touch, transition,
};
use crate::command::{Field, Outcome, Rejection, Reply, SkuDefinition, Violation};
use crate::domain::{AdjustReason, SkuIdx};
use crate::event::EventKind;
use crate::limits::*;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Sku {
    pub id: Arc<str>,
    pub name: Arc<str>,
    pub on_hand: u64,
    pub reserved: u64,
    pub low_stock_threshold: u64,
    /// Units that left `on_hand` through a commit and did not come back.
    pub units_sold: u64,
}

impl Sku {
    pub fn available(&self) -> u64 {
        self.on_hand - self.reserved
    }
}

impl State {
    /// `field` names the command's field for a validation error.
    pub(crate) fn sku_idx(&self, field: Field, sku: &str) -> Result<SkuIdx, Rejection> {
        if let Some(&idx) = self.sku_index.get(sku) {
            return Ok(idx);
        }
        check_sku_id(field, sku)?;
        self.sku_index
            .get(sku)
            .copied()
            .ok_or_else(|| Rejection::UnknownSku {
                sku: sku.to_string(),
            })
    }

    pub(super) fn define_sku(&mut self, definition: &SkuDefinition, ctx: &mut Ctx<'_>) -> Outcome {
        let SkuDefinition {
            ref sku,
            ref name,
            on_hand,
            low_stock_threshold,
            ..
        } = *definition;
        check_sku_id(Field::Sku, sku)?;
        // A redefinition that omits a field keeps its value (API.md): a change of
        // the rules never writes back a level read earlier, while the sale moves it.
        let existing = self
            .sku_index
            .get(sku.as_str())
            .map(|&idx| &self.skus[idx.0 as usize]);
        let on_hand = match (on_hand, existing) {
            (Some(on_hand), _) => on_hand,
            (None, Some(existing)) => existing.on_hand,
            (None, None) => return Err(invalid(Field::OnHand, Violation::Required)),
        };
        let low_stock_threshold =
            low_stock_threshold.unwrap_or(existing.map_or(0, |e| e.low_stock_threshold));
        let name: Arc<str> = match (name, existing) {
            (Some(name), _) => name.as_str().into(),
            (None, Some(existing)) => Arc::clone(&existing.name),
            (None, None) => "".into(),
        };
        check_text(Field::Name, &name, SKU_NAME_LEN_MAX)?;
        // A level kept (not sent) is not judged: stock given back may have taken it
        // past the limit (the v1.6 rules).
        let on_hand_judged = definition.on_hand.is_some() || self.rules < RULES_V16;
        if on_hand_judged && on_hand > ON_HAND_MAX {
            return Err(invalid(
                Field::OnHand,
                Violation::AboveMax { max: ON_HAND_MAX },
            ));
        }
        if low_stock_threshold > ON_HAND_MAX {
            return Err(invalid(
                Field::LowStockThreshold,
                Violation::AboveMax { max: ON_HAND_MAX },
            ));
        }
        let current_rules = match self.sku_index.get(sku.as_str()) {
            Some(&idx) => self.sale_rules(idx),
            None => crate::command::SaleRules::default(),
        };
        let rules = self.sale_rules_after(current_rules, definition)?;
        let recounted;
        let idx = match self.sku_index.get(sku.as_str()) {
            Some(&idx) => {
                let existing = &self.skus[idx.0 as usize];
                if on_hand < existing.reserved {
                    return Err(transition(format!(
                        "SKU {sku:?} has {} units reserved: on_hand may not go below that (asked {on_hand})",
                        existing.reserved
                    )));
                }
                recounted = self.counted_by_new_limit(idx, current_rules, rules)?;
                idx
            }
            None => {
                if self.skus.len() >= SKUS_MAX {
                    return Err(Rejection::LimitReached {
                        what: format!("{SKUS_MAX} SKUs"),
                    });
                }
                let idx = SkuIdx(self.skus.len() as u32);
                let id: Arc<str> = sku.as_str().into();
                self.skus.push(Sku {
                    id: Arc::clone(&id),
                    name: "".into(),
                    on_hand: 0,
                    reserved: 0,
                    low_stock_threshold: 0,
                    units_sold: 0,
                });
                self.sales.push(None);
                self.sku_index.insert(id, idx);
                // A new SKU has nothing to count yet.
                recounted = rules.limit().map(|_| Default::default());
                idx
            }
        };
        touch(&mut self.touched_skus, idx);
        let entry = &mut self.skus[idx.0 as usize];
        let available_before = entry.available();
        let threshold_before = entry.low_stock_threshold;
        entry.name = name;
        entry.on_hand = on_hand;
        entry.low_stock_threshold = low_stock_threshold;
        if rules != current_rules {
            self.set_sale_rules(idx, rules, recounted);
        }
        ctx.emit(EventKind::SkuDefined {
            sku: idx,
            on_hand,
            low_stock_threshold,
        });
        // A new threshold may put the SKU under it without any unit moving.
        let before = if threshold_before == low_stock_threshold {
            available_before
        } else {
            u64::MAX
        };
        self.stock_crossings(idx, before, ctx);
        Ok(Reply::Sku(self.sku_view(idx)))
    }

    pub(super) fn adjust_stock(
        &mut self,
        sku: &str,
        delta: i64,
        reason: AdjustReason,
        note: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        // What the request alone decides: a malformed delta is 400 on any SKU,
        // also one that does not exist (from the v1.5 rules on; before, an unknown
        // SKU's 404 came first).
        let delta_alone = || {
            if delta == 0 {
                return Err(invalid(Field::Delta, Violation::Zero));
            }
            if reason == AdjustReason::Inbound && delta < 0 {
                return Err(invalid(Field::Delta, Violation::InboundNotPositive));
            }
            if delta > 0 && delta.unsigned_abs() > ON_HAND_MAX {
                return Err(invalid(
                    Field::Delta,
                    Violation::OnHandAboveMax { max: ON_HAND_MAX },
                ));
            }
            Ok(())
        };
        if self.rules >= RULES_V15 {
            check_sku_id(Field::Sku, sku)?;
            check_text(Field::Note, note, NOTE_LEN_MAX)?;
            delta_alone()?;
        }
        let idx = self.sku_idx(Field::Sku, sku)?;
        check_text(Field::Note, note, NOTE_LEN_MAX)?;
        let checked_actor = self.check_actor(actor)?;
        delta_alone()?;
        let entry = &self.skus[idx.0 as usize];
        let on_hand = i128::from(entry.on_hand) + i128::from(delta);
        if on_hand < i128::from(entry.reserved) {
            return Err(transition(format!(
                "SKU {sku:?}: on_hand {} with {} reserved cannot change by {delta}",
                entry.on_hand, entry.reserved
            )));
        }
        // A lowering correction is judged against `reserved` only (the v1.6 rules):
        // stock given back may have taken the level past the limit.
        let raises = delta > 0 || self.rules < RULES_V16;
        if raises && on_hand > i128::from(ON_HAND_MAX) {
            return Err(invalid(
                Field::Delta,
                Violation::OnHandAboveMax { max: ON_HAND_MAX },
            ));
        }
        let actor = self.intern_actor(checked_actor);
        touch(&mut self.touched_skus, idx);
        let entry = &mut self.skus[idx.0 as usize];
        let available_before = entry.available();
        entry.on_hand = on_hand as u64;
        let (on_hand, available) = (entry.on_hand, entry.available());
        if self.rules < RULES_V12 {
            ctx.emit(EventKind::StockAdjusted {
                sku: idx,
                delta,
                reason,
                on_hand,
                available,
            });
        } else {
            ctx.emit(EventKind::StockAdjustedBy(Box::new(
                crate::event::StockAdjusted {
                    sku: idx,
                    delta,
                    reason,
                    on_hand,
                    available,
                    note: note.into(),
                    actor: Arc::clone(&self.actors[actor as usize]),
                },
            )));
        }
        self.stock_crossings(idx, available_before, ctx);
        Ok(Reply::Sku(self.sku_view(idx)))
    }

    /// Emit `stock.low` / `stock.out` when `available` crosses the threshold or zero
    /// going down.
    pub(crate) fn stock_crossings(&self, idx: SkuIdx, available_before: u64, ctx: &mut Ctx<'_>) {
        let sku = &self.skus[idx.0 as usize];
        let available = sku.available();
        if available >= available_before {
            return;
        }
        if available == 0 {
            ctx.emit(EventKind::StockOut { sku: idx });
        } else if available <= sku.low_stock_threshold && available_before > sku.low_stock_threshold
        {
            ctx.emit(EventKind::StockLow {
                sku: idx,
                available,
                threshold: sku.low_stock_threshold,
            });
        }
    }

    /// Units of committed lines come back from the customer: no longer sold, and
    /// with `restock` back on hand (and so available: `stock.restored`).
    pub(crate) fn unsell(&mut self, lines: &[(SkuIdx, u64)], restock: bool, ctx: &mut Ctx<'_>) {
        for &(idx, qty) in lines {
            touch(&mut self.touched_skus, idx);
            let sku = &mut self.skus[idx.0 as usize];
            assert!(sku.units_sold >= qty);
            sku.units_sold -= qty;
            if restock {
                sku.on_hand += qty;
            }
        }
        if restock {
            self.emit_restored(lines, ctx);
        }
    }

    /// One `stock.restored` per SKU that got units back (v1.1 rules).
    pub(crate) fn emit_restored(&self, lines: &[(SkuIdx, u64)], ctx: &mut Ctx<'_>) {
        if self.rules == RULES_V1 {
            return;
        }
        for &(sku, qty) in lines {
            ctx.emit(EventKind::StockRestored {
                sku,
                qty,
                available: self.skus[sku.0 as usize].available(),
            });
        }
    }
}
