//! The pure state machine: `State::apply(command, now) -> outcome`.
//!
//! No I/O, no clock, no randomness: the same state, command and `now` give the same
//! outcome, the same new state and the same events. Replay depends on it.
//!
//! Every handler validates everything before it changes anything, so a rejection
//! leaves the state exactly as it was.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use bincode::{Decode, Encode};
use hashbrown::HashMap;

use crate::chunked::ChunkedVec;
use crate::command::{
    Address, Command, Field, IdempotencyKey, LineField, OrderPolicy, Outcome, Rejection, Reply,
    Shortage, SkuDefinition, Unit, Violation,
};
use crate::domain::{
    AdjustReason, CancelReason, HoldReason, LedgerKind, LineReq, Millis, OrderAction, OrderFacts,
    OrderId, OrderLine, OrderLineReq, OrderStatus, PaymentStatus, ReservationId, ReservationStatus,
    ReturnKind, SYSTEM_ACTOR, SkuIdx, TransitionRefusal, order_transition,
};
use crate::event::{Event, EventKind};
use crate::idempotency::{
    Answer, Entry, IdempotencyIndex, IdempotencyPolicy, IdempotencyStats, IndexSnapshot,
    IndexSnapshotRef, key_hash,
};
use crate::limits::*;
use crate::reservations::Reservations;

/// Reservations expired by one `Expire` command; the timer sends another if more
/// are due, so one command never stalls the writer for long.
pub const EXPIRE_BATCH_MAX: usize = 10_000;

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
    pub(crate) order_no_index: HashMap<Arc<str>, OrderId>,
    pub(crate) actors: Vec<Arc<str>>,
    pub(crate) actor_index: HashMap<Arc<str>, u32>,
    /// Idempotency keys remembered, with their answers, within the window and budget.
    pub(crate) idempotency: IdempotencyIndex,
    pub(crate) counters: Counters,
    /// Every money movement, oldest first.
    pub(crate) ledger: ChunkedVec<LedgerEntry>,
    pub(crate) order_policy: OrderPolicy,
    /// Which rules the commands follow: [`RULES_V1`] for records logged before
    /// v1.1 (thin events), [`RULES_V11`] once a `SetOrderPolicy` was logged.
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
    /// SKUs whose stock or definition changed since the last
    /// [`State::take_touched_skus`], when tracked (the follower publishes them to
    /// the stock board). Not part of the state: never snapshotted or compared.
    pub(crate) touched_skus: Option<Vec<SkuIdx>>,
}

/// The rules of records logged before v1.1: thin order events, no `stock.restored`.
pub(crate) const RULES_V1: u32 = 1;
/// The rules from the first `SetOrderPolicy` on: full event payloads.
pub(crate) const RULES_V11: u32 = 2;

impl OrderPolicy {
    /// The policy of a state that never logged one: no SLA, no review threshold.
    pub const INITIAL: OrderPolicy = OrderPolicy {
        ship_sla_ms: 0,
        review_amount_min: None,
    };
}

/// `Command::CreateOrder` and `Command::PlaceOrder` alike, borrowed.
struct NewOrderRef<'a> {
    order_no: &'a str,
    customer_id: &'a str,
    lines: &'a [OrderLineReq],
    payment_ttl_ms: u64,
    reservation_id: Option<ReservationId>,
    channel: &'a str,
    shipping_address: Option<&'a Address>,
    actor: &'a str,
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

fn check_len(field: Field, value: &str, max: usize) -> Result<(), Rejection> {
    if value.len() > max {
        return Err(invalid(field, too_long(max, value.len())));
    }
    Ok(())
}

/// The size limits of `limits.rs`, checked before a command is encoded for the log:
/// every string field (path parameters included) and every line count. It looks at
/// lengths only; the state machine still checks everything else. A command that
/// passes encodes below the WAL's record limit (`engine/tests/record_limit.rs` builds the
/// largest one of each kind), so one request can never make the log refuse a record.
pub fn check_sizes(cmd: &Command, key: Option<&IdempotencyKey>) -> Result<(), Rejection> {
    if let Some(key) = key {
        check_len(Field::IdempotencyKey, &key.key, IDEMPOTENCY_KEY_LEN_MAX)?;
    }
    let lines = |len: usize| {
        if len > LINES_PER_REQUEST_MAX {
            return Err(too_many_lines(len));
        }
        Ok(())
    };
    let actor = |actor: &str| check_len(Field::Actor, actor, LOGGED_ACTOR_LEN_MAX);
    let note = |note: &str| check_len(Field::Note, note, NOTE_LEN_MAX);
    match cmd {
        Command::DefineSku { sku, name, .. } => {
            check_len(Field::Sku, sku, SKU_ID_LEN_MAX)?;
            check_len(Field::Name, name, SKU_NAME_LEN_MAX)
        }
        Command::DefineSkuSale { definition } => {
            check_len(Field::Sku, &definition.sku, SKU_ID_LEN_MAX)?;
            check_len(
                Field::Name,
                definition.name.as_deref().unwrap_or(""),
                SKU_NAME_LEN_MAX,
            )
        }
        Command::ReserveFor {
            lines: reqs,
            customer_id,
            actor: who,
            ..
        } => {
            lines(reqs.len())?;
            for (i, line) in reqs.iter().enumerate() {
                check_len(at_line(i, LineField::Sku), &line.sku, SKU_ID_LEN_MAX)?;
            }
            check_len(Field::CustomerId, customer_id, CUSTOMER_ID_LEN_MAX)?;
            actor(who)
        }
        Command::AdjustStock {
            sku,
            note: text,
            actor: who,
            ..
        } => {
            check_len(Field::Sku, sku, SKU_ID_LEN_MAX)?;
            note(text)?;
            actor(who)
        }
        Command::Reserve {
            lines: reqs,
            actor: who,
            ..
        } => {
            lines(reqs.len())?;
            for (i, line) in reqs.iter().enumerate() {
                check_len(at_line(i, LineField::Sku), &line.sku, SKU_ID_LEN_MAX)?;
            }
            actor(who)
        }
        Command::CommitReservation { actor: who, .. }
        | Command::ReleaseReservation { actor: who, .. } => actor(who),
        Command::CreateOrder {
            order_no,
            customer_id,
            lines: reqs,
            actor: who,
            ..
        } => {
            check_len(Field::OrderNo, order_no, ORDER_NO_LEN_MAX)?;
            check_len(Field::CustomerId, customer_id, CUSTOMER_ID_LEN_MAX)?;
            lines(reqs.len())?;
            for (i, line) in reqs.iter().enumerate() {
                check_len(at_line(i, LineField::Sku), &line.sku, SKU_ID_LEN_MAX)?;
            }
            actor(who)
        }
        Command::PayOrder {
            payment_ref,
            actor: who,
            ..
        } => {
            check_len(Field::PaymentRef, payment_ref, NOTE_LEN_MAX)?;
            actor(who)
        }
        Command::AdvanceOrder {
            note: text,
            tracking_no,
            actor: who,
            ..
        } => {
            note(text)?;
            check_len(Field::TrackingNo, tracking_no, NOTE_LEN_MAX)?;
            actor(who)
        }
        Command::CancelOrder {
            note: text,
            actor: who,
            ..
        } => {
            note(text)?;
            actor(who)
        }
        Command::ReturnOrder {
            reason,
            note: text,
            actor: who,
            ..
        } => {
            check_len(Field::Reason, reason, NOTE_LEN_MAX)?;
            note(text)?;
            actor(who)
        }
        Command::RefundOrder {
            refund_ref,
            actor: who,
            ..
        } => {
            check_len(Field::RefundRef, refund_ref, NOTE_LEN_MAX)?;
            actor(who)
        }
        Command::PlaceOrder { order } => {
            check_len(Field::OrderNo, &order.order_no, ORDER_NO_LEN_MAX)?;
            check_len(Field::CustomerId, &order.customer_id, CUSTOMER_ID_LEN_MAX)?;
            check_len(Field::Channel, &order.channel, CHANNEL_LEN_MAX)?;
            lines(order.lines.len())?;
            for (i, line) in order.lines.iter().enumerate() {
                check_len(at_line(i, LineField::Sku), &line.sku, SKU_ID_LEN_MAX)?;
            }
            if let Some(address) = &order.shipping_address {
                address_sizes(address)?;
            }
            actor(&order.actor)
        }
        Command::HoldOrder {
            note: text,
            actor: who,
            ..
        }
        | Command::ReleaseHold {
            note: text,
            actor: who,
            ..
        } => {
            note(text)?;
            actor(who)
        }
        Command::ModifyOrder { change } => {
            if let Some(reqs) = &change.lines {
                lines(reqs.len())?;
                for (i, line) in reqs.iter().enumerate() {
                    check_len(at_line(i, LineField::Sku), &line.sku, SKU_ID_LEN_MAX)?;
                }
            }
            if let Some(text) = &change.note {
                note(text)?;
            }
            if let Some(address) = &change.shipping_address {
                address_sizes(address)?;
            }
            actor(&change.actor)
        }
        Command::RefundAmount {
            reason,
            refund_ref,
            actor: who,
            ..
        } => {
            check_len(Field::Reason, reason, NOTE_LEN_MAX)?;
            check_len(Field::RefundRef, refund_ref, NOTE_LEN_MAX)?;
            actor(who)
        }
        Command::ReturnOrderAs {
            reason,
            note: text,
            actor: who,
            ..
        } => {
            check_len(Field::Reason, reason, NOTE_LEN_MAX)?;
            note(text)?;
            actor(who)
        }
        Command::Expire | Command::SetIdempotencyPolicy { .. } | Command::SetOrderPolicy { .. } => {
            Ok(())
        }
    }
}

fn address_sizes(address: &Address) -> Result<(), Rejection> {
    for (part, value) in address.parts() {
        if let Some(value) = value {
            check_len(Field::Address(part), value, ADDRESS_PART_LEN_MAX)?;
        }
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
            order_no_index: HashMap::new(),
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
            touched_skus: None,
        };
        state.intern_actor(SYSTEM_ACTOR).expect("empty actor table");
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

    /// Apply one command at time `now_ms`. Events are appended to `events`, numbered
    /// from the record's LSN. `now_ms` must not go backwards.
    pub fn apply(
        &mut self,
        cmd: &Command,
        key: Option<&IdempotencyKey>,
        now_ms: Millis,
        events: &mut Vec<Event>,
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
        // refusal, and replay must remember it too.
        let changed = emitted > 0 || key.is_some() || changed_quietly;
        if !changed {
            // A success that changed nothing (a repeat): the state it answers from is
            // the one logged through the last record.
            let answer_lsn = (outcome.is_ok() && lsn > 1).then(|| lsn - 1);
            return Applied {
                outcome,
                lsn: None,
                answer_lsn,
            };
        }
        // Only logged commands change the index, so replay forgets exactly what the
        // original forgot: the keys past the window now, and at the budget the oldest.
        self.idempotency.forget_expired(now_ms);
        if let (Some(key), Some(hash)) = (key, hash) {
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

    // ---- idempotency ----------------------------------------------------------

    /// A new window and budget. Keys past the new window are forgotten at once, and
    /// the oldest keys beyond a smaller budget.
    fn set_idempotency_policy(&mut self, policy: IdempotencyPolicy, ctx: &mut Ctx<'_>) -> Outcome {
        policy
            .check()
            .map_err(|(field, violation)| invalid(field, violation))?;
        if policy != self.idempotency.policy() {
            self.idempotency.set_policy(policy, ctx.now_ms);
            ctx.changed = true;
        }
        Ok(Reply::IdempotencyPolicy {
            window_ms: policy.window_ms,
            budget_bytes: policy.budget_bytes,
        })
    }

    /// The window and budget in force.
    pub fn idempotency_policy(&self) -> IdempotencyPolicy {
        self.idempotency.policy()
    }

    pub fn idempotency_stats(&self) -> IdempotencyStats {
        self.idempotency.stats()
    }

    // ---- SKUs and stock -------------------------------------------------------

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

    fn define_sku(&mut self, definition: &SkuDefinition, ctx: &mut Ctx<'_>) -> Outcome {
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
        if on_hand > ON_HAND_MAX {
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
        let idx = match self.sku_index.get(sku.as_str()) {
            Some(&idx) => {
                let existing = &self.skus[idx.0 as usize];
                if on_hand < existing.reserved {
                    return Err(transition(format!(
                        "SKU {sku:?} has {} units reserved: on_hand may not go below that (asked {on_hand})",
                        existing.reserved
                    )));
                }
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
            self.set_sale_rules(idx, rules);
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

    fn adjust_stock(
        &mut self,
        sku: &str,
        delta: i64,
        reason: AdjustReason,
        note: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        let idx = self.sku_idx(Field::Sku, sku)?;
        check_text(Field::Note, note, NOTE_LEN_MAX)?;
        self.check_actor(actor)?;
        if delta == 0 {
            return Err(invalid(Field::Delta, Violation::Zero));
        }
        if reason == AdjustReason::Inbound && delta < 0 {
            return Err(invalid(Field::Delta, Violation::InboundNotPositive));
        }
        let entry = &self.skus[idx.0 as usize];
        let on_hand = i128::from(entry.on_hand) + i128::from(delta);
        if on_hand < i128::from(entry.reserved) {
            return Err(transition(format!(
                "SKU {sku:?}: on_hand {} with {} reserved cannot change by {delta}",
                entry.on_hand, entry.reserved
            )));
        }
        if on_hand > i128::from(ON_HAND_MAX) {
            return Err(invalid(
                Field::Delta,
                Violation::OnHandAboveMax { max: ON_HAND_MAX },
            ));
        }
        self.intern_actor(actor)?;
        touch(&mut self.touched_skus, idx);
        let entry = &mut self.skus[idx.0 as usize];
        let available_before = entry.available();
        entry.on_hand = on_hand as u64;
        let (on_hand, available) = (entry.on_hand, entry.available());
        ctx.emit(EventKind::StockAdjusted {
            sku: idx,
            delta,
            reason,
            on_hand,
            available,
        });
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

    // ---- reservations ---------------------------------------------------------

    /// Resolve and sum request lines per SKU, then judge them, in the order of
    /// refusals API.md gives: every line's shape, then unknown SKUs, then (for new
    /// stock taken for `customer`) the sale windows and the purchase limits, then
    /// availability (all or nothing). Lines are judged in request order.
    fn demand<'a>(
        &self,
        lines: impl ExactSizeIterator<Item = (&'a str, u64)> + Clone,
        customer: Option<crate::sale::Buyer<'_>>,
        now_ms: Millis,
    ) -> Result<Vec<(SkuIdx, u32)>, Rejection> {
        check_line_count(lines.len())?;
        for (i, (_, qty)) in lines.clone().enumerate() {
            check_qty(|| at_line(i, LineField::Qty), qty)?;
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
        let shortages: Vec<Shortage> = demand
            .iter()
            .filter_map(|&(idx, qty)| {
                let sku = &self.skus[idx.0 as usize];
                (u64::from(qty) > sku.available()).then(|| Shortage {
                    sku: sku.id.to_string(),
                    requested: u64::from(qty),
                    available: sku.available(),
                })
            })
            .collect();
        if !shortages.is_empty() {
            return Err(Rejection::InsufficientStock { lines: shortages });
        }
        Ok(demand)
    }

    fn check_held_room(&self) -> Result<(), Rejection> {
        if self.held_count >= HELD_RESERVATIONS_MAX {
            return Err(Rejection::LimitReached {
                what: format!("{HELD_RESERVATIONS_MAX} held reservations"),
            });
        }
        Ok(())
    }

    /// Take the hold: every check has passed.
    fn hold(
        &mut self,
        demand: Vec<(SkuIdx, u32)>,
        expires_at_ms: Millis,
        order: Option<OrderId>,
        customer: Option<Arc<str>>,
        ctx: &mut Ctx<'_>,
    ) -> ReservationId {
        let id = ReservationId(self.next_reservation_id);
        self.next_reservation_id += 1;
        let mut befores = [0u64; LINES_PER_REQUEST_MAX];
        for (i, &(idx, qty)) in demand.iter().enumerate() {
            touch(&mut self.touched_skus, idx);
            let sku = &mut self.skus[idx.0 as usize];
            befores[i] = sku.available();
            sku.reserved += u64::from(qty);
            assert!(sku.reserved <= sku.on_hand, "oversell of {}", sku.id);
        }
        ctx.emit(EventKind::ReservationHeld {
            id,
            lines: demand.iter().map(|&(s, q)| (s, u64::from(q))).collect(),
            expires_at_ms,
        });
        for (i, &(idx, _)) in demand.iter().enumerate() {
            self.stock_crossings(idx, befores[i], ctx);
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
        id
    }

    fn reserve(
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
        self.check_actor(actor)?;
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
        self.intern_actor(actor)?;
        let customer = counted_for.map(|buyer| self.count_hold(&demand, buyer));
        let id = self.hold(demand, ctx.now_ms + ttl_ms, None, customer, ctx);
        Ok(Reply::Reservation(
            self.reservation_view(&self.reservations[&id]),
        ))
    }

    fn held_reservation(&self, id: ReservationId, action: &str) -> Result<&Reservation, Rejection> {
        let r = self
            .reservations
            .get(&id)
            .ok_or(Rejection::UnknownReservation { id })?;
        if let Some(order) = r.order {
            return Err(transition(format!(
                "reservation {id} belongs to order {order}: {action} the order instead"
            )));
        }
        Ok(r)
    }

    fn commit_reservation(&mut self, id: ReservationId, actor: &str, ctx: &mut Ctx<'_>) -> Outcome {
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
    fn commit_hold(&mut self, id: ReservationId, ctx: &mut Ctx<'_>) {
        let r = self.reservations.get_mut(&id).expect("checked by caller");
        assert_eq!(r.status, ReservationStatus::Held);
        crate::sale::uncount_hold(
            &mut self.sales,
            &self.customer_hasher,
            &mut self.limited_pairs,
            r,
            true,
        );
        for &(idx, qty) in r.lines.iter() {
            touch(&mut self.touched_skus, idx);
            let sku = &mut self.skus[idx.0 as usize];
            let qty = u64::from(qty);
            assert!(sku.reserved >= qty && sku.on_hand >= qty);
            sku.reserved -= qty;
            sku.on_hand -= qty;
            sku.units_sold += qty;
        }
        r.status = ReservationStatus::Committed;
        self.finish_hold(id);
        ctx.emit(EventKind::ReservationCommitted { id });
    }

    fn release_reservation(
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
    fn end_hold(&mut self, id: ReservationId, status: ReservationStatus, ctx: &mut Ctx<'_>) {
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
    ) -> Vec<(SkuIdx, u64)> {
        let r = self.reservations.get_mut(&id).expect("checked by caller");
        assert_eq!(r.status, ReservationStatus::Held);
        crate::sale::uncount_hold(
            &mut self.sales,
            &self.customer_hasher,
            &mut self.limited_pairs,
            r,
            false,
        );
        for &(idx, qty) in r.lines.iter() {
            touch(&mut self.touched_skus, idx);
            let sku = &mut self.skus[idx.0 as usize];
            assert!(sku.reserved >= u64::from(qty));
            sku.reserved -= u64::from(qty);
        }
        r.status = status;
        let lines: Vec<(SkuIdx, u64)> = if self.rules == RULES_V1 {
            Vec::new()
        } else {
            r.lines.iter().map(|&(s, q)| (s, u64::from(q))).collect()
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

    fn expire(&mut self, ctx: &mut Ctx<'_>) -> Reply {
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
                ctx.emit(EventKind::OrderExpired { id: order_id });
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

    // ---- orders ---------------------------------------------------------------

    pub(crate) fn order(&self, id: OrderId) -> Result<&Order, Rejection> {
        id.0.checked_sub(1)
            .and_then(|i| self.orders.get(i as usize))
            .ok_or_else(|| Rejection::UnknownOrder {
                order: id.to_string(),
            })
    }

    fn order_mut(&mut self, id: OrderId) -> &mut Order {
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

    fn create_order(&mut self, o: NewOrderRef<'_>, ctx: &mut Ctx<'_>) -> Outcome {
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
        self.check_actor(actor)?;
        check_line_count(lines.len())?;
        let mut total: u64 = 0;
        for (i, line) in lines.iter().enumerate() {
            if line.unit_price > UNIT_PRICE_MAX {
                return Err(invalid(
                    at_line(i, LineField::UnitPrice),
                    Violation::AboveMax {
                        max: UNIT_PRICE_MAX,
                    },
                ));
            }
            check_qty(|| at_line(i, LineField::Qty), line.qty)?;
            // Cannot overflow: bounded by the limits (checked in limits.rs).
            total += line.qty * line.unit_price;
        }
        if let Some(&id) = self.order_no_index.get(order_no) {
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
        let mut order_lines = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let sku = self.sku_idx(at_line(i, LineField::Sku), &line.sku)?;
            order_lines.push(OrderLine {
                sku,
                qty: line.qty as u32,
                unit_price: line.unit_price,
            });
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
                self.intern_actor(actor)?;
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
                for line in &order_lines {
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
                self.intern_actor(actor)?;
                self.end_reservation_count(rid, false);
                let r = self.reservations.get_mut(&rid).expect("checked above");
                r.order = Some(id);
                r.expires_at_ms = due_at_ms;
                self.expiry.push(Reverse((due_at_ms, rid)));
                rid
            }
        };
        let actor = self.intern_actor(actor)?;
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
            lines: order_lines.into(),
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
            ctx.emit(EventKind::OrderCreated(Box::new(
                crate::event::OrderCreated { id, order, total },
            )));
            if review {
                self.emit_held(id, ctx);
            }
        }
        Ok(self.order_reply(id))
    }

    fn pay_order(
        &mut self,
        id: OrderId,
        amount: u64,
        payment_ref: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        check_text(Field::PaymentRef, payment_ref, NOTE_LEN_MAX)?;
        self.check_actor(actor)?;
        let order = self.order(id)?;
        if order.payment != PaymentStatus::Unpaid {
            if order.payment == PaymentStatus::Paid && amount == order.total {
                return Ok(self.order_reply(id)); // a repeated payment: idempotent
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
        let actor = self.intern_actor(actor)?;
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
        self.counters.paid_amount += total;
        self.record_money(id, LedgerKind::Charge, total, payment_ref, actor, ctx);
        self.set_status(id, OrderStatus::Confirmed, actor, "", ctx.now_ms);
        if self.rules == RULES_V1 {
            ctx.emit(EventKind::OrderPaidV3 { id, amount });
        } else {
            let order = self.brief(id);
            ctx.emit(EventKind::OrderPaid(Box::new(crate::event::OrderPaid {
                id,
                order,
                amount,
                payment_ref: payment_ref.into(),
            })));
        }
        ctx.emit(EventKind::OrderStatusChanged {
            id,
            from: OrderStatus::Reserved,
            to: OrderStatus::Confirmed,
        });
        Ok(self.order_reply(id))
    }

    fn advance_order(
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
        self.check_actor(actor)?;
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
            return Ok(self.order_reply(id)); // repeating a step: idempotent
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
        let actor = self.intern_actor(actor)?;
        if to == OrderStatus::Shipped && !tracking_no.is_empty() {
            self.order_mut(id).extra_mut().tracking_no = tracking_no.into();
        }
        self.set_status(id, to, actor, note, ctx.now_ms);
        ctx.emit(EventKind::OrderStatusChanged { id, from, to });
        Ok(self.order_reply(id))
    }

    fn cancel_order(
        &mut self,
        id: OrderId,
        reason: CancelReason,
        note: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        check_text(Field::Note, note, NOTE_LEN_MAX)?;
        self.check_actor(actor)?;
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
        let actor_id = self.intern_actor(actor)?;
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
        let history_note = if note.is_empty() {
            reason.as_str().to_string()
        } else {
            format!("{reason}: {note}")
        };
        self.set_status_after(
            id,
            OrderStatus::Cancelled,
            actor_id,
            &history_note,
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
    fn return_order(
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
        self.check_actor(actor)?;
        let order = self.order(id)?;
        let from = order.status;
        let decided = order_transition(from, OrderAction::Return, order.facts());
        if decided == Err(TransitionRefusal::AlreadyThere) {
            return Ok(self.order_reply(id));
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
        let actor_id = self.intern_actor(actor)?;
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

    /// `POST /refund`: pay back exactly what is due.
    fn refund_order(
        &mut self,
        id: OrderId,
        refund_ref: &str,
        actor: &str,
        ctx: &mut Ctx<'_>,
    ) -> Outcome {
        check_text(Field::RefundRef, refund_ref, NOTE_LEN_MAX)?;
        self.check_actor(actor)?;
        let order = self.order(id)?;
        let amounts = order.amounts();
        if amounts.refund_due == 0 {
            if order.payment == PaymentStatus::Refunded {
                return Ok(self.order_reply(id)); // repeating the refund: idempotent
            }
            return Err(transition(format!(
                "order {id} payment is {}: nothing is due back",
                order.payment
            )));
        }
        let actor_id = self.intern_actor(actor)?;
        self.pay_back(id, amounts.refund_due, "", refund_ref, actor_id, ctx);
        Ok(self.order_reply(id))
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
        self.counters.refunded_amount += amount;
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

    /// Who an order event is about.
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

    // ---- actors -----------------------------------------------------------------

    pub(crate) fn check_actor(&self, actor: &str) -> Result<(), Rejection> {
        if self
            .actors
            .get(self.last_actor as usize)
            .is_some_and(|last| **last == *actor)
            || self.actor_index.contains_key(actor)
        {
            return Ok(()); // known actors were checked when they were interned
        }
        check_required_text(Field::Actor, actor, LOGGED_ACTOR_LEN_MAX)?;
        if self.actors.len() >= ACTORS_MAX {
            return Err(Rejection::LimitReached {
                what: format!("{ACTORS_MAX} distinct actors"),
            });
        }
        Ok(())
    }

    pub(crate) fn intern_actor(&mut self, actor: &str) -> Result<u32, Rejection> {
        // Most commands in a row come from the same actor (the storefront): a
        // comparison instead of hashing the name.
        let last = self.last_actor;
        if self
            .actors
            .get(last as usize)
            .is_some_and(|name| **name == *actor)
        {
            return Ok(last);
        }
        if let Some(&id) = self.actor_index.get(actor) {
            self.last_actor = id;
            return Ok(id);
        }
        self.check_actor(actor)?;
        let id = self.actors.len() as u32;
        let name: Arc<str> = actor.into();
        self.actors.push(Arc::clone(&name));
        self.actor_index.insert(name, id);
        self.last_actor = id;
        Ok(id)
    }

    /// The system actor (expiry) is interned first, by `State::new`.
    pub(crate) fn system_actor(&self) -> u32 {
        self.actor_index[SYSTEM_ACTOR]
    }

    // ---- invariants -------------------------------------------------------------

    /// Cheap checks after every logged command: the SKUs this command touched.
    fn check_cheap_invariants(&self, events: &[Event], from: usize) {
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

    // ---- snapshots ----------------------------------------------------------------

    /// The state as a snapshot, borrowed: encoding it copies nothing first. It
    /// encodes to exactly the bytes of the owned [`Snapshot`] it decodes into.
    pub(crate) fn to_snapshot(&self) -> SnapshotRef<'_> {
        let mut reservations: Vec<&Reservation> = self.reservations.iter().collect();
        reservations.sort_unstable_by_key(|r| r.id);
        SnapshotRef {
            format: SNAPSHOT_FORMAT,
            now_ms: self.now_ms,
            next_seq: self.next_seq,
            skus: &self.skus,
            reservations,
            next_reservation_id: self.next_reservation_id,
            reservations_base: self.reservations.base(),
            orders: &self.orders,
            actors: &self.actors,
            idempotency: self.idempotency.to_snapshot(),
            counters: &self.counters,
            tail: SnapshotTailRef {
                ledger: &self.ledger,
                order_policy: &self.order_policy,
                rules: self.rules,
                sales: self.sales_snapshot(),
            },
        }
    }

    pub(crate) fn from_snapshot(s: Snapshot) -> Result<State, String> {
        if s.format != SNAPSHOT_FORMAT {
            return Err(format!(
                "snapshot format {} is not {SNAPSHOT_FORMAT}",
                s.format
            ));
        }
        let mut state = State::new();
        state.now_ms = s.now_ms;
        state.next_seq = s.next_seq;
        state.sku_index = s
            .skus
            .iter()
            .enumerate()
            .map(|(i, k)| (k.id.clone(), SkuIdx(i as u32)))
            .collect();
        state.skus = s.skus;
        state.next_reservation_id = s.next_reservation_id;
        for r in &s.reservations {
            if r.status == ReservationStatus::Held {
                state.held_count += 1;
                state.expiry.push(Reverse((r.expires_at_ms, r.id)));
            }
        }
        state.reservations = Reservations::restore(
            s.reservations_base,
            s.reservations,
            FINISHED_RESERVATIONS_KEPT,
        );
        state.restore_sales(s.tail.sales)?;
        state.order_no_index = s
            .orders
            .iter()
            .map(|o| (o.order_no.clone(), o.id))
            .collect();
        state.orders = ChunkedVec::from(s.orders);
        state.actor_index = s
            .actors
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), i as u32))
            .collect();
        state.actors = s.actors;
        state.idempotency = IdempotencyIndex::from_snapshot(s.idempotency)?;
        state.counters = s.counters;
        state.ledger = ChunkedVec::from(s.tail.ledger);
        state.order_policy = s.tail.order_policy;
        state.rules = s.tail.rules;
        state.rebuild_ship_deadlines();
        state.check_invariants();
        Ok(state)
    }
}

/// 2: idempotency keys as hashes with compact answers, and their policy.
/// 3: refusals are typed (`Field`, `Violation`) in stored answers, where format 2 had
/// a field path and a sentence (`legacy::RejectionV2`).
/// 4: v1.1 orders (money amounts, hold, channel, address, delays, history entries
/// that keep what they changed), the ledger, the order policy and rules, and the
/// LSN of each idempotency key's record (`legacy::OrderV3` and friends read 1–3).
/// 5: flash-sale rules and per-customer counts (`sale.rs`); stored SKU answers
/// carry the rules (`legacy::SkuViewV4` reads 1–4).
pub(crate) const SNAPSHOT_FORMAT: u32 = 5;

/// Format 1, before the idempotency window and budget: keys as text, each with its
/// whole outcome. Read so that a data dir written by an older surge still opens.
pub(crate) type SnapshotV1 = SnapshotV3<Vec<IdempotencyEntryV1>>;

/// Formats 1 to 3: orders in their old layout, no ledger, no order policy.
pub(crate) type SnapshotV3<K = crate::legacy::IndexSnapshotV3> =
    Snapshot<K, crate::legacy::OrderV3, ()>;

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct IdempotencyEntryV1 {
    pub key: Box<str>,
    pub fingerprint: u64,
    pub at_ms: Millis,
    pub outcome: crate::legacy::OutcomeV2,
}

impl State {
    /// A format-1 snapshot: the state as it was, its keys hashed and their answers
    /// made compact, under the initial policy (which its log, if any, assumed too).
    pub(crate) fn from_snapshot_v1(s: SnapshotV1) -> Result<State, String> {
        let (s, keys) = s.with_idempotency(
            3,
            crate::legacy::IndexSnapshotV3 {
                policy: IdempotencyPolicy::INITIAL,
                first_seq: 0,
                room_made_through_ms: None,
                entries: Vec::new(),
            },
        );
        let mut state = State::from_snapshot_v3(s)?;
        for entry in keys {
            let key = key_hash(&entry.key);
            if state.idempotency.contains(&key) {
                return Err(format!(
                    "idempotency key {:?} twice in the snapshot",
                    entry.key
                ));
            }
            let outcome = crate::legacy::upgrade_outcome(entry.outcome);
            let answer = state.answer_of(&outcome, entry.at_ms);
            state.idempotency.remember(Entry {
                key,
                fingerprint: entry.fingerprint,
                at_ms: entry.at_ms,
                lsn: 0,
                answer,
            });
        }
        Ok(state)
    }

    /// A format-2 snapshot: format 3's layout, but a stored answer holds a refusal
    /// of that format; each is re-encoded as today's.
    pub(crate) fn from_snapshot_v2(mut s: SnapshotV3) -> Result<State, String> {
        if s.format != 2 {
            return Err(format!("snapshot format {} is not 2", s.format));
        }
        for entry in &mut s.idempotency.entries {
            if let Answer::Stored(bytes) = &mut entry.answer {
                *bytes = crate::codec::upgrade_outcome_v2(bytes)?.into_boxed_slice();
            }
        }
        s.format = 3;
        State::from_snapshot_v3(s)
    }

    /// A format-3 snapshot: its orders get today's layout (the money they had, as
    /// v1 knew it), the ledger what they paid and paid back, the order policy and
    /// rules those of the log it came with (v1's).
    /// Format 4: the current layout without sale rules (none existed).
    pub(crate) fn from_snapshot_v4(s: SnapshotV4) -> Result<State, String> {
        State::from_snapshot(s.map_tail(|tail| SnapshotTail {
            ledger: tail.ledger,
            order_policy: tail.order_policy,
            rules: tail.rules,
            sales: crate::sale::SalesSnapshot::default(),
        }))
    }

    pub(crate) fn from_snapshot_v3(s: SnapshotV3) -> Result<State, String> {
        if s.format != 3 {
            return Err(format!("snapshot format {} is not 3", s.format));
        }
        State::from_snapshot(crate::legacy::upgrade_snapshot_v3(s, SNAPSHOT_FORMAT))
    }
}

/// The state as written to a snapshot file: plain vectors in a deterministic order.
/// (`K` is the idempotency part: its older format differs.)
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct Snapshot<K = IndexSnapshot, O = Order, T = SnapshotTail> {
    pub format: u32,
    pub now_ms: Millis,
    pub next_seq: u64,
    pub skus: Vec<Sku>,
    pub reservations: Vec<Reservation>,
    pub next_reservation_id: u64,
    /// The first id of the dense reservation window.
    pub reservations_base: u64,
    pub orders: Vec<O>,
    pub actors: Vec<Arc<str>>,
    pub idempotency: K,
    pub counters: Counters,
    /// What format 4 added at the end (`()` in older formats).
    pub tail: T,
}

/// The part of a snapshot that formats 4 and 5 added.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) struct SnapshotTail<S = crate::sale::SalesSnapshot> {
    pub ledger: Vec<LedgerEntry>,
    pub order_policy: OrderPolicy,
    pub rules: u32,
    /// Format 5: the flash-sale rules and counts (`()` in format 4).
    pub sales: S,
}

/// Format 4: no flash-sale rules.
pub(crate) type SnapshotV4 = Snapshot<IndexSnapshot, Order, SnapshotTail<()>>;

#[derive(Encode)]
pub(crate) struct SnapshotTailRef<'a> {
    pub ledger: &'a ChunkedVec<LedgerEntry>,
    pub order_policy: &'a OrderPolicy,
    pub rules: u32,
    pub sales: crate::sale::SalesSnapshot,
}

impl<K, O, T> Snapshot<K, O, T> {
    /// The same state in the current format, with another tail.
    pub(crate) fn map_tail<U>(self, tail: impl FnOnce(T) -> U) -> Snapshot<K, O, U> {
        Snapshot {
            format: SNAPSHOT_FORMAT,
            now_ms: self.now_ms,
            next_seq: self.next_seq,
            skus: self.skus,
            reservations: self.reservations,
            next_reservation_id: self.next_reservation_id,
            reservations_base: self.reservations_base,
            orders: self.orders,
            actors: self.actors,
            idempotency: self.idempotency,
            counters: self.counters,
            tail: tail(self.tail),
        }
    }

    /// The same state in another format, with another idempotency part; and the
    /// part it had.
    pub(crate) fn with_idempotency<L>(self, format: u32, idempotency: L) -> (Snapshot<L, O, T>, K) {
        let snapshot = Snapshot {
            format,
            now_ms: self.now_ms,
            next_seq: self.next_seq,
            skus: self.skus,
            reservations: self.reservations,
            next_reservation_id: self.next_reservation_id,
            reservations_base: self.reservations_base,
            orders: self.orders,
            actors: self.actors,
            idempotency,
            counters: self.counters,
            tail: self.tail,
        };
        (snapshot, self.idempotency)
    }
}

/// [`Snapshot`] by reference, field for field (bincode encodes `&[T]`, `Vec<&T>` and
/// `Vec<T>` alike). A test checks that the two stay in step.
#[derive(Encode)]
pub(crate) struct SnapshotRef<'a> {
    pub format: u32,
    pub now_ms: Millis,
    pub next_seq: u64,
    pub skus: &'a [Sku],
    pub reservations: Vec<&'a Reservation>,
    pub next_reservation_id: u64,
    pub reservations_base: u64,
    pub orders: &'a ChunkedVec<Order>,
    pub actors: &'a [Arc<str>],
    pub idempotency: IndexSnapshotRef<'a>,
    pub counters: &'a Counters,
    pub tail: SnapshotTailRef<'a>,
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
