//! The domain vocabulary: ids, statuses, reasons, lines. Small `Copy` types, no I/O.

use std::fmt;
use std::str::FromStr;

use bincode::{Decode, Encode};

/// Milliseconds since the Unix epoch, as stamped by the writer (never decreasing).
pub type Millis = u64;

/// Dense index of an interned SKU id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub struct SkuIdx(pub u32);

/// Server-assigned reservation id; rendered as `r<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub struct ReservationId(pub u64);

/// Server-assigned order id; rendered as `o<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
pub struct OrderId(pub u64);

macro_rules! prefixed_id {
    ($ty:ident, $prefix:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
        impl FromStr for $ty {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                let digits = s.strip_prefix($prefix).ok_or(())?;
                // Reject "+1", "01" and the like so that one id has one spelling.
                if digits.is_empty()
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                    || (digits.len() > 1 && digits.starts_with('0'))
                {
                    return Err(());
                }
                digits.parse::<u64>().map($ty).map_err(|_| ())
            }
        }
    };
}
prefixed_id!(ReservationId, "r");
prefixed_id!(OrderId, "o");

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Encode, Decode)]
        pub enum $name { $($variant),+ }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
        impl FromStr for $name {
            type Err = ();
            fn from_str(s: &str) -> Result<Self, ()> {
                match s { $($text => Ok($name::$variant),)+ _ => Err(()) }
            }
        }
    };
}

string_enum!(
    /// Fulfilment status of an order.
    OrderStatus {
        Reserved => "reserved",
        Confirmed => "confirmed",
        Picking => "picking",
        Packed => "packed",
        Shipped => "shipped",
        Delivered => "delivered",
        Completed => "completed",
        Expired => "expired",
        Cancelled => "cancelled",
        Returned => "returned",
    }
);

impl OrderStatus {
    /// The next step of the fulfilment path that an operator may move an order to.
    pub fn next_fulfilment_step(self) -> Option<OrderStatus> {
        match self {
            OrderStatus::Confirmed => Some(OrderStatus::Picking),
            OrderStatus::Picking => Some(OrderStatus::Packed),
            OrderStatus::Packed => Some(OrderStatus::Shipped),
            OrderStatus::Shipped => Some(OrderStatus::Delivered),
            OrderStatus::Delivered => Some(OrderStatus::Completed),
            _ => None,
        }
    }
    /// Cancellation is allowed until shipment.
    pub fn cancellable(self) -> bool {
        matches!(
            self,
            OrderStatus::Reserved
                | OrderStatus::Confirmed
                | OrderStatus::Picking
                | OrderStatus::Packed
        )
    }
    /// Shipped or later on the fulfilment path: returned, not cancelled.
    pub fn has_shipped(self) -> bool {
        matches!(
            self,
            OrderStatus::Shipped
                | OrderStatus::Delivered
                | OrderStatus::Completed
                | OrderStatus::Returned
        )
    }
    /// Units of this order have left `on_hand` (committed) and not come back.
    pub fn holds_committed_stock(self) -> bool {
        matches!(
            self,
            OrderStatus::Confirmed
                | OrderStatus::Picking
                | OrderStatus::Packed
                | OrderStatus::Shipped
                | OrderStatus::Delivered
                | OrderStatus::Completed
        )
    }
}

/// What can happen to an order: the operators' steps, payment, cancel, return, the
/// payment timer, and the changes that keep the status (hold, modify, refund).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OrderAction {
    Pay,
    Pick,
    Pack,
    Ship,
    Deliver,
    Complete,
    Cancel,
    Return,
    Expire,
    Hold,
    ReleaseHold,
    Modify,
    Refund,
}

impl OrderAction {
    pub const ALL: [OrderAction; 13] = [
        OrderAction::Pay,
        OrderAction::Pick,
        OrderAction::Pack,
        OrderAction::Ship,
        OrderAction::Deliver,
        OrderAction::Complete,
        OrderAction::Cancel,
        OrderAction::Return,
        OrderAction::Expire,
        OrderAction::Hold,
        OrderAction::ReleaseHold,
        OrderAction::Modify,
        OrderAction::Refund,
    ];

    /// The fulfilment step that moves an order to `to`, if `to` is one.
    pub fn advancing_to(to: OrderStatus) -> Option<OrderAction> {
        match to {
            OrderStatus::Picking => Some(OrderAction::Pick),
            OrderStatus::Packed => Some(OrderAction::Pack),
            OrderStatus::Shipped => Some(OrderAction::Ship),
            OrderStatus::Delivered => Some(OrderAction::Deliver),
            OrderStatus::Completed => Some(OrderAction::Complete),
            _ => None,
        }
    }

    /// The name in the API's vocabulary of order actions.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderAction::Pay => "pay",
            OrderAction::Pick => "pick",
            OrderAction::Pack => "pack",
            OrderAction::Ship => "ship",
            OrderAction::Deliver => "deliver",
            OrderAction::Complete => "complete",
            OrderAction::Cancel => "cancel",
            OrderAction::Return => "return",
            OrderAction::Expire => "expire",
            OrderAction::Hold => "hold",
            OrderAction::ReleaseHold => "release_hold",
            OrderAction::Modify => "modify",
            OrderAction::Refund => "refund",
        }
    }

    /// Moving the order along the fulfilment path, which a hold stops.
    pub fn stopped_by_hold(self) -> bool {
        matches!(
            self,
            OrderAction::Pick | OrderAction::Pack | OrderAction::Ship
        )
    }
}

/// What the transition table needs to know about an order besides its status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OrderFacts {
    pub on_hold: bool,
    /// Paid and not yet refunded (minor units): what a refund may still pay back.
    pub refundable_amount: u64,
}

/// The actions a caller may take on an order now, read off the transition table
/// (the timer's expiry is not a caller's action). Clients show these instead of
/// repeating the rules.
pub fn order_actions(status: OrderStatus, facts: OrderFacts) -> Vec<&'static str> {
    OrderAction::ALL
        .iter()
        .filter(|&&action| action != OrderAction::Expire)
        .filter(|&&action| order_transition(status, action, facts).is_ok())
        .map(|action| action.as_str())
        .collect()
}

/// Whether an order with `history_len` history entries has taken all the changes
/// that keep its status it may (holds, modifications, partial refunds): they stop
/// `HISTORY_ROOM_FOR_STATUS` short of the history's cap, so every status change,
/// the release of a hold and the refund of what is due still have room for their
/// entries. Past it they are 409 `invalid_transition`.
pub fn order_changes_exhausted(history_len: usize) -> bool {
    history_len >= crate::limits::ORDER_CHANGES_MAX
}

/// [`order_actions`] for an order with `history_len` history entries and
/// `refund_due_amount` owed back: past [`order_changes_exhausted`], without `hold`
/// and `modify`, and `refund` only while something is due (`/refund`).
pub fn order_actions_now(
    status: OrderStatus,
    facts: OrderFacts,
    history_len: usize,
    refund_due_amount: u64,
) -> Vec<&'static str> {
    let mut actions = order_actions(status, facts);
    if order_changes_exhausted(history_len) {
        actions.retain(|&action| match action {
            "hold" | "modify" => false,
            "refund" => refund_due_amount > 0,
            _ => true,
        });
    }
    actions
}

/// Why the transition table refuses an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransitionRefusal {
    /// The order is already where the action leads: repeating it changes nothing.
    AlreadyThere,
    /// Cancel after shipment: the order is returned, not cancelled.
    Shipped,
    /// Picking, packing or shipping an order on hold.
    OnHold,
    /// Not on the graph from this status.
    NotAllowed,
}

/// The one transition table of an order: `(status, action, facts) -> next status |
/// refusal`. Actions that keep the status (hold, release, modify, refund) lead to
/// the same status. The state machine decides every change with it, and
/// `set_status` asserts that each status change it makes is on it.
pub fn order_transition(
    from: OrderStatus,
    action: OrderAction,
    facts: OrderFacts,
) -> Result<OrderStatus, TransitionRefusal> {
    let decided = transition_by_status(from, action, facts);
    if facts.on_hold && action.stopped_by_hold() && decided != Err(TransitionRefusal::AlreadyThere)
    {
        // API.md: "While held, moving the order to picking, packed or shipped
        // answers 409 order_on_hold", whichever step it is (a held order is
        // reserved, confirmed, picking or packed: releasing the hold comes first).
        // A step repeated where the order already is stays a repeat.
        return Err(TransitionRefusal::OnHold);
    }
    decided
}

fn transition_by_status(
    from: OrderStatus,
    action: OrderAction,
    facts: OrderFacts,
) -> Result<OrderStatus, TransitionRefusal> {
    use OrderAction as A;
    use OrderStatus as S;
    let to = match (from, action) {
        (S::Reserved, A::Pay) => S::Confirmed,
        (S::Reserved, A::Expire) => S::Expired,
        (S::Confirmed, A::Pick) => S::Picking,
        (S::Picking, A::Pack) => S::Packed,
        (S::Packed, A::Ship) => S::Shipped,
        (S::Shipped, A::Deliver) => S::Delivered,
        (S::Delivered, A::Complete) => S::Completed,
        (S::Reserved | S::Confirmed | S::Picking | S::Packed, A::Cancel) => S::Cancelled,
        (S::Shipped | S::Delivered | S::Completed, A::Return) => S::Returned,
        (S::Reserved | S::Confirmed | S::Picking | S::Packed, A::Hold) if !facts.on_hold => from,
        (S::Reserved | S::Confirmed | S::Picking | S::Packed, A::Hold) => {
            return Err(TransitionRefusal::AlreadyThere);
        }
        (_, A::ReleaseHold) if facts.on_hold => from,
        (S::Reserved | S::Confirmed, A::Modify) => from,
        (_, A::Refund) if facts.refundable_amount > 0 => from,
        (S::Cancelled, A::Cancel) | (S::Returned, A::Return) => {
            return Err(TransitionRefusal::AlreadyThere);
        }
        (S::Shipped | S::Delivered | S::Completed | S::Returned, A::Cancel) => {
            return Err(TransitionRefusal::Shipped);
        }
        (from, step) if OrderAction::advancing_to(from) == Some(step) => {
            return Err(TransitionRefusal::AlreadyThere);
        }
        _ => return Err(TransitionRefusal::NotAllowed),
    };
    Ok(to)
}

string_enum!(
    /// Payment state of an order, separate from its fulfilment status.
    PaymentStatus {
        Unpaid => "unpaid",
        Paid => "paid",
        RefundDue => "refund_due",
        Refunded => "refunded",
        PartiallyRefunded => "partially_refunded",
    }
);

impl PaymentStatus {
    /// The status that follows from an order's money, first match wins.
    pub fn of(paid: u64, refunded: u64, refund_due: u64) -> PaymentStatus {
        if refund_due > 0 {
            PaymentStatus::RefundDue
        } else if refunded > 0 && refunded == paid {
            PaymentStatus::Refunded
        } else if refunded > 0 {
            PaymentStatus::PartiallyRefunded
        } else if paid > 0 {
            PaymentStatus::Paid
        } else {
            PaymentStatus::Unpaid
        }
    }
}

string_enum!(
    /// Why an order is held for review (订单审核).
    HoldReason {
        Review => "review",
        AddressCheck => "address_check",
        FraudCheck => "fraud_check",
        CustomerRequest => "customer_request",
        Other => "other",
    }
);

string_enum!(
    /// How a shipped order comes back.
    ReturnKind {
        Intercepted => "intercepted",
        Refused => "refused",
        CustomerReturn => "customer_return",
    }
);

impl ReturnKind {
    /// The statuses an order may be returned from, this way.
    pub fn allowed_from(self, status: OrderStatus) -> bool {
        match self {
            ReturnKind::Intercepted | ReturnKind::Refused => status == OrderStatus::Shipped,
            ReturnKind::CustomerReturn => {
                matches!(status, OrderStatus::Delivered | OrderStatus::Completed)
            }
        }
    }
}

string_enum!(
    /// A money movement in the ledger.
    LedgerKind {
        Charge => "charge",
        Refund => "refund",
        Reversal => "reversal",
    }
);

string_enum!(
    /// Why an order was cancelled; the list is closed so cancellations can be analysed.
    CancelReason {
        CustomerRequest => "customer_request",
        OutOfStock => "out_of_stock",
        PaymentFailed => "payment_failed",
        FraudSuspected => "fraud_suspected",
        SystemError => "system_error",
        Other => "other",
    }
);

/// Who may cancel for which reasons, as data beside the transition table: the
/// storefront cancels on the shopper's behalf, so only the shopper's own reasons;
/// operators and admins may give any reason. The API applies it to the caller's role.
pub const STOREFRONT_CANCEL_REASONS: &[CancelReason] =
    &[CancelReason::CustomerRequest, CancelReason::PaymentFailed];

string_enum!(
    /// State of a stock hold.
    ReservationStatus {
        Held => "held",
        Committed => "committed",
        Released => "released",
        Expired => "expired",
    }
);

string_enum!(
    /// Why stock was adjusted.
    AdjustReason {
        Inbound => "inbound",
        Correction => "correction",
    }
);

/// One line of a reservation request: `qty` units of a SKU named by its client id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct LineReq {
    pub sku: String,
    pub qty: u64,
}

/// One line of an order as the state keeps it (and its events carry it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct OrderLine {
    pub sku: SkuIdx,
    pub qty: u32,
    /// Minor units.
    pub unit_price: u64,
}

/// One line of an order request, with its unit price in minor units.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct OrderLineReq {
    pub sku: String,
    pub qty: u64,
    pub unit_price: u64,
}

/// Who did it: `storefront`, `operator:alice`, `system` (expiry). Interned by the state.
pub const SYSTEM_ACTOR: &str = "system";

/// Separates the actor from the person it acted for in a logged actor string:
/// `operator:lily cs-7` is `operator:lily` acting on behalf of `cs-7`. Neither part
/// may hold a space (the API refuses one in `X-Actor` and in token names).
const ON_BEHALF_OF_SEPARATOR: char = ' ';

/// The logged form of an actor acting on behalf of someone (a named token with an
/// `X-Actor` header): one string, so that every command keeps its one `actor` field.
pub fn actor_on_behalf_of(actor: &str, on_behalf_of: Option<&str>) -> String {
    match on_behalf_of {
        Some(other) => format!("{actor}{ON_BEHALF_OF_SEPARATOR}{other}"),
        None => actor.to_owned(),
    }
}

/// The actor and the person it acted for, from a logged actor string.
pub fn split_actor(logged: &str) -> (&str, Option<&str>) {
    match logged.split_once(ON_BEHALF_OF_SEPARATOR) {
        Some((actor, other)) => (actor, Some(other)),
        None => (logged, None),
    }
}

#[cfg(test)]
mod actor_tests {
    use super::*;

    #[test]
    fn an_actor_on_behalf_of_someone_splits_back() {
        let logged = actor_on_behalf_of("operator:lily", Some("cs-7"));
        assert_eq!(split_actor(&logged), ("operator:lily", Some("cs-7")));
        assert_eq!(split_actor("storefront"), ("storefront", None));
        assert_eq!(actor_on_behalf_of("storefront", None), "storefront");
    }
}
