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

string_enum!(
    /// Payment state of an order, separate from its fulfilment status.
    PaymentStatus {
        Unpaid => "unpaid",
        Paid => "paid",
        RefundDue => "refund_due",
        Refunded => "refunded",
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

/// One line of an order request, with its unit price in minor units.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Encode, Decode)]
pub struct OrderLineReq {
    pub sku: String,
    pub qty: u64,
    pub unit_price: u64,
}

/// Who did it: `storefront`, `operator:alice`, `system` (expiry). Interned by the state.
pub const SYSTEM_ACTOR: &str = "system";
