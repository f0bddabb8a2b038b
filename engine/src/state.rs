//! The pure state machine: `State::apply(command, now) -> outcome`.
//!
//! No I/O, no clock, no randomness: the same state, command and `now` give the same
//! outcome, the same new state and the same events. Replay depends on it.
//!
//! Every handler validates everything before it changes anything, so a rejection
//! leaves the state exactly as it was.
//!
//! This file holds the [`State`] struct, `apply` (idempotency keys, event numbering,
//! the clock) and its dispatch, the validation helpers every handler shares, actors,
//! and `Ctx`. The handlers are in one `impl State` module per concern:
//!
//! - `stock`: SKUs, their definitions and stock adjustments.
//! - `holds`: reservations: demand, hold, commit, release, expiry.
//! - `orders`: the order record and its status changes (create, pay, advance,
//!   cancel, return), with `order_changes.rs` for the changes that keep the status.
//! - `money`: amounts, the ledger, reversals and refunds.
//! - `invariants`: the cheap and the whole-state checks.
//! - `snapshot`: the snapshot formats, current and old.
//! - `sizes`: [`check_sizes`], the size limits checked before encoding.
//!
//! Elsewhere: the idempotency index and the policy command (`idempotency.rs`),
//! flash-sale rules (`sale.rs`), reads (`query.rs`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use bincode::{Decode, Encode};
use hashbrown::HashMap;

use crate::chunked::ChunkedVec;
use crate::command::{
    Address, Command, Field, IdempotencyKey, LineField, OrderPolicy, Outcome, Rejection,
    SkuDefinition, Unit, Violation,
};
use crate::domain::{Millis, OrderId, ReservationId, ReturnKind, SYSTEM_ACTOR, SkuIdx};
use crate::event::{Event, EventKind};
use crate::idempotency::{Entry, IdempotencyIndex, IdempotencyPolicy, key_hash};
use crate::limits::*;
use crate::reservations::Reservations;
use crate::sharded::ShardedIndex;

mod holds;
mod invariants;
mod money;
mod orders;
mod sizes;
mod snapshot;
mod stock;

pub use holds::EXPIRE_BATCH_MAX;
pub(crate) use holds::Reservation;
pub(crate) use money::{Amounts, LedgerEntry};
use orders::NewOrderRef;
pub(crate) use orders::{Cancellation, HistoryEntry, Hold, Order, OrderExtra, ReturnInfo};
pub use sizes::check_sizes;
// For the idempotency module's tests, which build old snapshots.
#[cfg(test)]
pub(crate) use snapshot::{IdempotencyEntryV1, SNAPSHOT_FORMAT};
pub(crate) use snapshot::{
    Snapshot, SnapshotRef, SnapshotTail, SnapshotV1, SnapshotV3, SnapshotV4,
};
pub(crate) use stock::Sku;

/// Counters kept as the state changes, so stats never scan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Counters {
    pub orders_by_status: [u64; 10],
    pub cancellations_by_reason: [u64; 6],
    pub orders_created: u64,
    pub paid_amount: u64,
    pub refunded_amount: u64,
}

/// Result of one `apply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub outcome: Outcome,
    /// The state changed: the command must be logged at `lsn` before it is acknowledged.
    pub lsn: Option<u64>,
    /// The LSN of the record that made this answer: `lsn`; for a replayed
    /// idempotency key the original record's (unknown, `None`, for keys carried over
    /// from a snapshot older than format 4); for a success that changed nothing (a
    /// repeated cancel) the last record's, whose state it answers from.
    pub answer_lsn: Option<u64>,
}

/// The whole engine state. Owned by one writer thread.
#[derive(Debug, Clone)]
pub struct State {
    pub(crate) now_ms: Millis,
    /// Sequence number of the next event; a logged record takes the LSN of its first event.
    pub(crate) next_seq: u64,
    pub(crate) skus: Vec<Sku>,
    pub(crate) sku_index: HashMap<Arc<str>, SkuIdx>,
    pub(crate) reservations: Reservations,
    pub(crate) next_reservation_id: u64,
    pub(crate) held_count: usize,
    /// Held reservations by deadline. Entries go stale when a hold ends early; they
    /// are skipped when popped and the heap is rebuilt when stale entries dominate.
    pub(crate) expiry: BinaryHeap<Reverse<(Millis, ReservationId)>>,
    /// Orders by id: `orders[id - 1]`.
    pub(crate) orders: ChunkedVec<Order>,
    /// Orders by client order number; the key shares the order's string.
    pub(crate) order_no_index: ShardedIndex<OrderId>,
    pub(crate) actors: Vec<Arc<str>>,
    pub(crate) actor_index: HashMap<Arc<str>, u32>,
    /// Idempotency keys remembered, with their answers, within the window and budget.
    pub(crate) idempotency: IdempotencyIndex,
    pub(crate) counters: Counters,
    /// Every money movement, oldest first.
    pub(crate) ledger: ChunkedVec<LedgerEntry>,
    pub(crate) order_policy: OrderPolicy,
    /// Which rules the commands follow: [`RULES_V1`] for records logged before
    /// v1.1 (thin events), [`RULES_V11`] once a `SetOrderPolicy` was logged,
    /// [`RULES_V12`] once a `SetRules` named it. Only ever raised.
    pub(crate) rules: u32,
    /// Paid orders by ship deadline, in payment order (stale entries, of orders
    /// shipped or cancelled since, are skipped when their time comes): at most one
    /// 16-byte entry per order paid within the SLA.
    pub(crate) ship_deadlines: std::collections::VecDeque<(Millis, OrderId)>,
    /// The channel of orders without one, shared by their events. Not state.
    pub(crate) no_channel: Arc<str>,
    /// Flash-sale rules by SKU (`sales[idx]`), `None` where a SKU has none.
    pub(crate) sales: Vec<Option<Box<crate::sale::SkuSale>>>,
    /// Hashes customer ids for every SKU's counts (`sale::customer_hash`).
    pub(crate) customer_hasher: hashbrown::DefaultHashBuilder,
    /// (SKU, customer) pairs counted, over all limited SKUs.
    pub(crate) limited_pairs: usize,
    /// SKUs with sale rules (`Some` in `sales`): none, and no command looks further.
    pub(crate) ruled_skus: usize,
    /// The actor interned last (a cache in front of `actor_index`). Not state.
    pub(crate) last_actor: u32,
    /// The LSN of the last logged record (its first event's seq; 0: none known):
    /// what a success that changed nothing answers with. Set by each logged
    /// command, and after a snapshot load to the snapshot's LSN (recovery). Not
    /// part of the state: never snapshotted or compared.
    pub(crate) last_record_lsn: u64,
    /// SKUs whose stock or definition changed since they were last taken
    /// (`take_touched_sku_views`, `drain_touched_skus`), when tracked: the follower
    /// publishes their views to the stock board, the writer notes their LSN there.
    /// Not part of the state: never snapshotted or compared.
    pub(crate) touched_skus: Option<Vec<SkuIdx>>,
}

/// The expiry heap (and the reservations' window) get their full capacity (the held
/// limit, the window's length) once they reach this many entries: one small early copy, and address space reserved but not touched,
/// instead of doublings that copy millions of entries on the writer later (BENCHMARKS.md,
/// "The writer without directory syncs"). Not for hash tables: a table's entries
/// land all over its buckets, so reserving it whole would touch (fault in) nearly
/// all of it at once, the same pause earlier.
pub(crate) const EARLY_GROWTH_LEN: usize = 1 << 16;

/// The rules of records logged before v1.1: thin order events, no `stock.restored`.
pub(crate) const RULES_V1: u32 = 1;
/// The rules from the first `SetOrderPolicy` on: full event payloads.
pub(crate) const RULES_V11: u32 = 2;
/// The rules from the first `SetRules { rules: 3 }` on: `order.status_changed`,
/// `order.expired` and `stock.adjusted` carry what downstream needs to act (the
/// order's brief, the actor, the note, the tracking number).
pub(crate) const RULES_V12: u32 = 3;
/// The rules from the first `SetRules { rules: 4 }` on: an order totals at most
/// `ORDER_TOTAL_MAX` minor units, so the sums of all orders' amounts fit an int64.
pub(crate) const RULES_V13: u32 = 4;
/// The rules from the first `SetRules { rules: 5 }` on: paying a paid order again is
/// idempotent only with the same `payment_ref`; another one is refused (before, it
/// answered the order as paid, and a second charge went unrecorded). A purchase
/// limit set where there was none is refused (`LimitReached`) when what it counts
/// already would pass `LIMITED_PAIRS_MAX` counted (SKU, customer) pairs (before, one
/// definition could add millions at once, past the memory the bound stands for).
/// `order.created` and `order.paid` carry the actor (`OrderCreatedBy`, `OrderPaidBy`).
pub(crate) const RULES_V14: u32 = 5;
/// The rules from the first `SetRules { rules: 6 }` on: a hold's release is not
/// counted against an order's 20 changes that keep its status, and past them a
/// change is 409 `invalid_transition` (before: a release was counted, so a hold
/// taken as the 20th change stranded the order, and the refusal was 503); a modification that changes
/// nothing (the same lines in the same order, note and address) answers the order
/// with no event and no history entry (keyed, a record remembers the key)
/// (before, each one logged `order.modified` and took a history entry, so a
/// client's retries used up the order's changes); a modification that raises a
/// total to the review amount holds the order for review, as its creation would
/// have (before, raising a small order past it by PATCH skipped the review); a
/// payment repeated with the same `payment_ref` and amount answers the order
/// whatever became of it since (before, only while it was still `paid`: a
/// gateway's retried callback after a cancel got 409); a stock adjustment whose
/// delta alone is malformed is `validation_failed` on an unknown SKU too (before,
/// `unknown_sku` came first, against the contract's order of refusals); lines are
/// judged in request order (a malformed SKU id before a later line's bad quantity
/// or price, and before an earlier line's unknown SKU).
pub(crate) const RULES_V15: u32 = 6;
/// The rules from the first `SetRules { rules: 7 }` on, each from an outside probe:
/// a SKU redefined without `on_hand` keeps its level unjudged, and a stock adjustment
/// that lowers `on_hand` is judged against `reserved` only, so a level that stock
/// given back (a cancel, a restocking return, a lowering modification, never refused)
/// took past `ON_HAND_MAX` can be corrected in steps (before: 400 naming `on_hand`,
/// which was not sent, or "delta: on_hand would exceed" for a negative delta); an
/// order's SKU ids are judged before its `order_no` is found taken (before, an empty
/// id on a line came after 409 `duplicate_order_no`, against the contract's order of
/// refusals); a shipping step repeated with another tracking number is 409
/// `invalid_transition` (before: 200, the first number kept, the new one dropped
/// unsaid).
pub(crate) const RULES_V16: u32 = 7;
/// The rules from the first `SetRules { rules: 8 }` on, from a review: a single keyed
/// request refused because a limit of the engine's was reached (`LimitReached`, 503:
/// the held reservations, the orders, the actors, the limited pairs) is not logged
/// and leaves its key unused, as a malformed one does, so its retry under the same
/// key is judged afresh once there is room (before: the 503 was remembered under the
/// key and replayed for the whole retention window, though the answer said to retry).
pub(crate) const RULES_V17: u32 = 8;
/// The rules a server of this build logs at start (`Command::SetRules`).
pub const RULES_CURRENT: u32 = RULES_V17;

impl OrderPolicy {
    /// The policy of a state that never logged one: no SLA, no review threshold.
    pub const INITIAL: OrderPolicy = OrderPolicy {
        ship_sla_ms: 0,
        review_amount_min: None,
    };
}

/// Every part of an address: printable text within its limit.
pub(crate) fn check_address(address: &Address) -> Result<(), Rejection> {
    for (part, value) in address.parts() {
        if let Some(value) = value {
            check_text(Field::Address(part), value, ADDRESS_PART_LEN_MAX)?;
        }
    }
    Ok(())
}

/// Note that a SKU changed, if changes are tracked.
pub(crate) fn touch(touched: &mut Option<Vec<SkuIdx>>, idx: SkuIdx) {
    if let Some(touched) = touched {
        touched.push(idx);
    }
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

pub(crate) fn invalid(field: Field, violation: Violation) -> Rejection {
    Rejection::Validation { field, violation }
}

pub(crate) fn at_line(index: usize, part: LineField) -> Field {
    Field::Line {
        index: index as u32,
        part,
    }
}

pub(crate) fn transition(detail: String) -> Rejection {
    Rejection::InvalidTransition { detail }
}

fn too_long(max: usize, got: usize) -> Violation {
    Violation::TooLong {
        max: max as u64,
        got: got as u64,
    }
}

fn too_many_lines(got: usize) -> Rejection {
    invalid(
        Field::Lines,
        Violation::TooManyLines {
            max: LINES_PER_REQUEST_MAX as u64,
            got: got as u64,
        },
    )
}

pub(crate) fn check_text(field: Field, value: &str, max: usize) -> Result<(), Rejection> {
    if value.len() > max {
        return Err(invalid(field, too_long(max, value.len())));
    }
    if value.chars().any(|c| c.is_control()) {
        return Err(invalid(field, Violation::ControlCharacters));
    }
    Ok(())
}

pub(crate) fn check_required_text(field: Field, value: &str, max: usize) -> Result<(), Rejection> {
    if value.is_empty() {
        return Err(invalid(field, Violation::Empty));
    }
    check_text(field, value, max)
}

/// SKU ids: 1..=64 bytes of `[A-Za-z0-9._:-]`, so they are safe in paths and CSV.
pub fn check_sku_id(field: Field, sku: &str) -> Result<(), Rejection> {
    if sku.is_empty() || sku.len() > SKU_ID_LEN_MAX {
        return Err(invalid(
            field,
            Violation::SkuIdLength {
                min: 1,
                max: SKU_ID_LEN_MAX as u64,
            },
        ));
    }
    if !sku
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(invalid(field, Violation::SkuIdCharacters));
    }
    Ok(())
}

fn check_ttl(field: Field, ttl_ms: u64) -> Result<(), Rejection> {
    if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&ttl_ms) {
        return Err(invalid(
            field,
            Violation::OutOfRange {
                min: TTL_MS_MIN,
                max: TTL_MS_MAX,
                unit: Unit::Millis,
            },
        ));
    }
    Ok(())
}

/// `field` is built only for a refusal.
pub(crate) fn check_qty(field: impl FnOnce() -> Field, qty: u64) -> Result<(), Rejection> {
    if qty == 0 || qty > QTY_PER_LINE_MAX {
        return Err(invalid(
            field(),
            Violation::OutOfRange {
                min: 1,
                max: QTY_PER_LINE_MAX,
                unit: Unit::Count,
            },
        ));
    }
    Ok(())
}

pub(crate) fn check_line_count(len: usize) -> Result<(), Rejection> {
    if len == 0 {
        return Err(invalid(Field::Lines, Violation::Empty));
    }
    if len > LINES_PER_REQUEST_MAX {
        return Err(too_many_lines(len));
    }
    Ok(())
}

impl State {
    pub fn new() -> State {
        let mut state = State {
            now_ms: 0,
            next_seq: 1,
            skus: Vec::new(),
            sku_index: HashMap::new(),
            reservations: Reservations::default(),
            next_reservation_id: 1,
            held_count: 0,
            expiry: BinaryHeap::new(),
            orders: ChunkedVec::default(),
            order_no_index: ShardedIndex::new(),
            actors: Vec::new(),
            actor_index: HashMap::new(),
            idempotency: IdempotencyIndex::new(IdempotencyPolicy::INITIAL),
            counters: Counters::default(),
            ledger: ChunkedVec::default(),
            order_policy: OrderPolicy::INITIAL,
            rules: RULES_V1,
            ship_deadlines: std::collections::VecDeque::new(),
            no_channel: "".into(),
            sales: Vec::new(),
            customer_hasher: hashbrown::DefaultHashBuilder::default(),
            limited_pairs: 0,
            ruled_skus: 0,
            last_actor: 0,
            last_record_lsn: 0,
            touched_skus: None,
        };
        let system = state.check_actor(SYSTEM_ACTOR).expect("empty actor table");
        state.intern_actor(system);
        state
    }

    /// The LSN the next logged record will take.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The time stamp of the last applied command.
    pub fn now_ms(&self) -> Millis {
        self.now_ms
    }

    /// The client id of a SKU index (for rendering events).
    pub fn sku_name(&self, sku: SkuIdx) -> &str {
        &self.skus[sku.0 as usize].id
    }

    pub fn sku_count(&self) -> usize {
        self.skus.len()
    }

    /// The earliest deadline of a held reservation, if any (stale entries included:
    /// waking early is harmless).
    pub fn next_deadline_ms(&self) -> Option<Millis> {
        let hold = self.expiry.peek().map(|Reverse((at, _))| *at);
        let ship = self.ship_deadlines.front().map(|&(at, _)| at);
        match (hold, ship) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// `key` is remembered (within the window at `now_ms`) for a request with
    /// another fingerprint: applying it would answer `IdempotencyConflict`.
    pub fn remembers_otherwise(&self, key: &IdempotencyKey, now_ms: Millis) -> bool {
        self.idempotency
            .get(&key_hash(&key.key), now_ms)
            .is_some_and(|entry| entry.fingerprint != key.fingerprint)
    }

    /// Apply one command at time `now_ms`. Events are appended to `events`, numbered
    /// from the record's LSN. `now_ms` must not go backwards. A keyed command that is
    /// refused is logged and its key remembered with the refusal (replay, a batch's
    /// ops); see [`State::apply_request`] for a client's single request.
    pub fn apply(
        &mut self,
        cmd: &Command,
        key: Option<&IdempotencyKey>,
        now_ms: Millis,
        events: &mut Vec<Event>,
    ) -> Applied {
        self.apply_with(cmd, key, now_ms, events, false)
    }

    /// [`State::apply`] for a client's single request: a keyed command refused as
    /// malformed (`validation_failed`) is neither logged nor remembered, so the
    /// client may correct it and retry under the same key (as with a request the
    /// HTTP layer refuses). Nothing of it reaches the log, so replay is unaffected.
    /// Not for a batch's ops: the op that holds the batch's key must be remembered
    /// whatever its answer, or another body could reuse the key.
    pub fn apply_request(
        &mut self,
        cmd: &Command,
        key: Option<&IdempotencyKey>,
        now_ms: Millis,
        events: &mut Vec<Event>,
    ) -> Applied {
        self.apply_with(cmd, key, now_ms, events, true)
    }

    /// [`State::apply`] (`forget_malformed` false) or [`State::apply_request`] (true).
    pub(crate) fn apply_with(
        &mut self,
        cmd: &Command,
        key: Option<&IdempotencyKey>,
        now_ms: Millis,
        events: &mut Vec<Event>,
        forget_malformed: bool,
    ) -> Applied {
        assert!(
            now_ms >= self.now_ms,
            "time went backwards: {now_ms} < {}",
            self.now_ms
        );
        let events_before = events.len();
        let hash = match key {
            None => None,
            Some(key) => {
                if let Err(rejection) =
                    check_required_text(Field::IdempotencyKey, &key.key, IDEMPOTENCY_KEY_LEN_MAX)
                {
                    return Applied {
                        outcome: Err(rejection),
                        lsn: None,
                        answer_lsn: None,
                    };
                }
                let hash = key_hash(&key.key);
                if let Some(entry) = self.idempotency.get(&hash, now_ms) {
                    let (outcome, answer_lsn) = if entry.fingerprint == key.fingerprint {
                        (
                            self.replayed_outcome(entry),
                            (entry.lsn > 0).then_some(entry.lsn),
                        )
                    } else {
                        let conflict = Rejection::IdempotencyConflict {
                            key: key.key.clone(),
                        };
                        (Err(conflict), None)
                    };
                    return Applied {
                        outcome,
                        lsn: None,
                        answer_lsn,
                    };
                }
                Some(hash)
            }
        };
        let lsn = self.next_seq;
        let mut ctx = Ctx {
            now_ms,
            lsn,
            events,
            first_event: events_before,
            changed: false,
        };
        let outcome = self.dispatch(cmd, &mut ctx);
        let changed_quietly = ctx.changed;
        let emitted = events.len() - events_before;
        assert!(
            outcome.is_ok() || emitted == 0,
            "a rejected command emitted events: {}",
            cmd.name()
        );
        // A keyed command is logged even when refused: its key now answers with the
        // refusal, and replay must remember it too. Not a single request's malformed
        // one (`apply_request`): the client corrects it and retries under the key;
        // nor (v1.7 rules) one refused for a limit of the engine's: the client
        // retries under the key once there is room.
        let forgotten = forget_malformed
            && key.is_some()
            && match outcome {
                Err(Rejection::Validation { .. }) => true,
                Err(Rejection::LimitReached { .. }) => self.rules >= RULES_V17,
                _ => false,
            };
        let changed = emitted > 0 || (key.is_some() && !forgotten) || changed_quietly;
        if !changed {
            // A success that changed nothing (a repeat): the state it answers from is
            // the one logged through the last record, whose LSN it answers.
            let answer_lsn =
                (outcome.is_ok() && self.last_record_lsn > 0).then_some(self.last_record_lsn);
            return Applied {
                outcome,
                lsn: None,
                answer_lsn,
            };
        }
        // Only logged commands change the index, so replay forgets exactly what the
        // original forgot: the keys past the window now, and at the budget the oldest.
        self.idempotency.forget_expired(now_ms);
        if let (Some(key), Some(hash), false) = (key, hash, forgotten) {
            let answer = self.answer_of(&outcome, now_ms);
            self.idempotency.remember(Entry {
                key: hash,
                fingerprint: key.fingerprint,
                at_ms: now_ms,
                lsn,
                answer,
            });
        }
        assert!(emitted <= EVENTS_PER_RECORD_MAX || matches!(cmd, Command::Expire));
        // Only logged commands move the state's clock: replay sees only those.
        self.now_ms = now_ms;
        self.next_seq = lsn + (emitted as u64).max(1);
        self.last_record_lsn = lsn;
        self.check_cheap_invariants(events, events_before);
        Applied {
            outcome,
            lsn: Some(lsn),
            answer_lsn: Some(lsn),
        }
    }

    fn dispatch(&mut self, cmd: &Command, ctx: &mut Ctx<'_>) -> Outcome {
        match cmd {
            Command::DefineSku {
                sku,
                name,
                on_hand,
                low_stock_threshold,
            } => self.define_sku(
                &SkuDefinition {
                    sku: sku.clone(),
                    name: Some(name.clone()),
                    on_hand: Some(*on_hand),
                    low_stock_threshold: Some(*low_stock_threshold),
                    purchase_limit_per_customer: None,
                    sale_starts_at_ms: None,
                    sale_ends_at_ms: None,
                },
                ctx,
            ),
            Command::DefineSkuSale { definition } => self.define_sku(definition, ctx),
            Command::ReserveFor {
                lines,
                ttl_ms,
                customer_id,
                actor,
            } => self.reserve(lines, *ttl_ms, Some(customer_id), actor, ctx),
            Command::AdjustStock {
                sku,
                delta,
                reason,
                note,
                actor,
            } => self.adjust_stock(sku, *delta, *reason, note, actor, ctx),
            Command::Reserve {
                lines,
                ttl_ms,
                actor,
            } => self.reserve(lines, *ttl_ms, None, actor, ctx),
            Command::CommitReservation { id, actor } => self.commit_reservation(*id, actor, ctx),
            Command::ReleaseReservation { id, actor } => self.release_reservation(*id, actor, ctx),
            Command::CreateOrder {
                order_no,
                customer_id,
                lines,
                payment_ttl_ms,
                reservation_id,
                actor,
            } => self.create_order(
                NewOrderRef {
                    order_no,
                    customer_id,
                    lines,
                    payment_ttl_ms: *payment_ttl_ms,
                    reservation_id: *reservation_id,
                    channel: "",
                    shipping_address: None,
                    actor,
                },
                ctx,
            ),
            Command::PlaceOrder { order } => self.create_order(
                NewOrderRef {
                    order_no: &order.order_no,
                    customer_id: &order.customer_id,
                    lines: &order.lines,
                    payment_ttl_ms: order.payment_ttl_ms,
                    reservation_id: order.reservation_id,
                    channel: &order.channel,
                    shipping_address: order.shipping_address.as_ref(),
                    actor: &order.actor,
                },
                ctx,
            ),
            Command::HoldOrder {
                id,
                reason,
                note,
                actor,
            } => self.hold_order(*id, *reason, note, actor, ctx),
            Command::ReleaseHold { id, note, actor } => self.release_hold(*id, note, actor, ctx),
            Command::ModifyOrder { change } => self.modify_order(change, ctx),
            Command::RefundAmount {
                id,
                amount,
                reason,
                refund_ref,
                actor,
            } => self.refund_amount(*id, *amount, reason, refund_ref, actor, ctx),
            Command::ReturnOrderAs {
                id,
                kind,
                restock,
                reason,
                note,
                actor,
            } => self.return_order(*id, *kind, *restock, reason, note, actor, ctx),
            Command::SetOrderPolicy {
                ship_sla_ms,
                review_amount_min,
            } => self.set_order_policy(
                OrderPolicy {
                    ship_sla_ms: *ship_sla_ms,
                    review_amount_min: *review_amount_min,
                },
                ctx,
            ),
            Command::SetRules { rules } => self.set_rules(*rules, ctx),
            Command::PayOrder {
                id,
                amount,
                payment_ref,
                actor,
            } => self.pay_order(*id, *amount, payment_ref, actor, ctx),
            Command::AdvanceOrder {
                id,
                to,
                note,
                tracking_no,
                actor,
            } => self.advance_order(*id, *to, note, tracking_no, actor, ctx),
            Command::CancelOrder {
                id,
                reason,
                note,
                actor,
            } => self.cancel_order(*id, *reason, note, actor, ctx),
            Command::ReturnOrder {
                id,
                restock,
                reason,
                note,
                actor,
            } => self.return_order(
                *id,
                ReturnKind::CustomerReturn,
                *restock,
                reason,
                note,
                actor,
                ctx,
            ),
            Command::RefundOrder {
                id,
                refund_ref,
                actor,
            } => self.refund_order(*id, refund_ref, actor, ctx),
            Command::Expire => Ok(self.expire(ctx)),
            Command::SetIdempotencyPolicy {
                window_ms,
                budget_bytes,
            } => self.set_idempotency_policy(
                IdempotencyPolicy {
                    window_ms: *window_ms,
                    budget_bytes: *budget_bytes,
                },
                ctx,
            ),
        }
    }

    /// The actor's name judged (a known one passes at once), before anything
    /// changes; the answer interns it afterwards without looking it up again.
    pub(crate) fn check_actor<'a>(&self, actor: &'a str) -> Result<CheckedActor<'a>, Rejection> {
        if let Some(id) = self.known_actor(actor) {
            // Known actors were judged when they were interned.
            return Ok(CheckedActor {
                name: actor,
                id: Some(id),
            });
        }
        check_required_text(Field::Actor, actor, LOGGED_ACTOR_LEN_MAX)?;
        if self.actors.len() >= ACTORS_MAX {
            return Err(Rejection::LimitReached {
                what: format!("{ACTORS_MAX} distinct actors"),
            });
        }
        Ok(CheckedActor {
            name: actor,
            id: None,
        })
    }

    fn known_actor(&self, actor: &str) -> Option<u32> {
        // Most commands in a row come from the same actor (the storefront): a
        // comparison instead of hashing the name.
        let last = self.last_actor;
        if self
            .actors
            .get(last as usize)
            .is_some_and(|name| **name == *actor)
        {
            return Some(last);
        }
        self.actor_index.get(actor).copied()
    }

    /// The actor's number, for an actor `check_actor` admitted in this command.
    pub(crate) fn intern_actor(&mut self, actor: CheckedActor<'_>) -> u32 {
        let id = match actor
            .id
            .or_else(|| self.actor_index.get(actor.name).copied())
        {
            Some(id) => id,
            None => {
                // Admitted by `check_actor` in this command, and a command names one
                // actor: the table had room then and has it still.
                assert!(
                    self.actors.len() < ACTORS_MAX,
                    "actor admitted over the limit"
                );
                let id = self.actors.len() as u32;
                let name: Arc<str> = actor.name.into();
                self.actors.push(Arc::clone(&name));
                self.actor_index.insert(name, id);
                id
            }
        };
        self.last_actor = id;
        id
    }

    /// The system actor (expiry) is interned first, by `State::new`.
    pub(crate) fn system_actor(&self) -> u32 {
        self.actor_index[SYSTEM_ACTOR]
    }
}

/// An actor's name that `State::check_actor` admitted, and its number when it is
/// known already: `State::intern_actor` takes it once every other check passed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CheckedActor<'a> {
    name: &'a str,
    id: Option<u32>,
}

/// Where the events of one command go and how they are numbered.
pub(crate) struct Ctx<'a> {
    pub(crate) now_ms: Millis,
    pub(crate) lsn: u64,
    events: &'a mut Vec<Event>,
    first_event: usize,
    /// The command changed the state without an event: it must be logged all the same.
    pub(crate) changed: bool,
}

impl Ctx<'_> {
    pub(crate) fn emit(&mut self, kind: EventKind) {
        let seq = self.lsn + (self.events.len() - self.first_event) as u64;
        self.events.push(Event {
            seq,
            at_ms: self.now_ms,
            kind,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Reply;
    use crate::domain::{LineReq, OrderLineReq};

    fn order(order_no: &str, reservation_id: Option<ReservationId>, actor: &str) -> Command {
        Command::CreateOrder {
            order_no: order_no.into(),
            customer_id: "c1".into(),
            lines: vec![OrderLineReq {
                sku: "S1".into(),
                qty: 1,
                unit_price: 100,
            }],
            payment_ttl_ms: 60_000,
            reservation_id,
            actor: actor.into(),
        }
    }

    /// Each actor is interned once, when a command of theirs changes the state, on
    /// every path of a command that checks the name first and interns it last; a
    /// refused command interns nobody.
    #[test]
    fn an_actor_is_interned_once_and_only_by_a_command_that_changes_the_state() {
        let mut state = State::new();
        let mut events = Vec::new();
        let mut apply = |state: &mut State, cmd: Command| {
            events.clear();
            state.apply(&cmd, None, 1_000, &mut events).outcome
        };
        let define = Command::DefineSku {
            sku: "S1".into(),
            name: String::new(),
            on_hand: 10,
            low_stock_threshold: 0,
        };
        apply(&mut state, define).expect("defined");
        let before = state.actors.len();
        // Refused (no such order; an empty name): nobody new.
        let refused = Command::PayOrder {
            id: OrderId(9),
            amount: 1,
            payment_ref: String::new(),
            actor: "ops:new".into(),
        };
        assert!(apply(&mut state, refused).is_err());
        assert!(apply(&mut state, order("N0", None, "")).is_err());
        assert_eq!(state.actors.len(), before);
        // An order taking its own hold, then one adopting a reservation, each by an
        // actor not seen before; then a known actor again.
        apply(&mut state, order("N1", None, "shop:a")).expect("created");
        let reserve = Command::Reserve {
            lines: vec![LineReq {
                sku: "S1".into(),
                qty: 1,
            }],
            ttl_ms: 60_000,
            actor: "shop:b".into(),
        };
        let Ok(Reply::Reservation(held)) = apply(&mut state, reserve) else {
            panic!("reserved");
        };
        apply(&mut state, order("N2", Some(held.id), "shop:c")).expect("adopted");
        apply(&mut state, order("N3", None, "shop:a")).expect("created");
        let names: Vec<&str> = state.actors[before..].iter().map(|a| &**a).collect();
        assert_eq!(names, ["shop:a", "shop:b", "shop:c"]);
        assert_eq!(state.actor_index.len(), state.actors.len());
        for (i, name) in state.actors.iter().enumerate() {
            assert_eq!(state.actor_index[name] as usize, i, "{name}");
        }
    }
}
