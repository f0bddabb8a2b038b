//! Encodings that older snapshot formats stored and this build still reads, with
//! their conversion to today's types. Nothing here is written any more (tests aside).

use bincode::{Decode, Encode};

use crate::command::{Field, Outcome, Rejection, Reply, Shortage, Violation};
use crate::domain::{OrderId, OrderStatus, ReservationId};

/// [`Rejection`] as snapshot formats 1 and 2 stored it (idempotency answers): a
/// validation refusal carried its field as a JSON path and its reason as a sentence.
/// The variant order is that format's and must not change.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub(crate) enum RejectionV2 {
    Validation { field: String, detail: String },
    InsufficientStock { lines: Vec<Shortage> },
    UnknownSku { sku: String },
    UnknownOrder { order: String },
    UnknownReservation { id: ReservationId },
    InvalidTransition { detail: String },
    OrderShipped { id: OrderId, status: OrderStatus },
    DuplicateOrderNo { order_no: String, id: OrderId },
    IdempotencyConflict { key: String },
    LimitReached { what: String },
}

/// An outcome as snapshot formats 1 and 2 stored it.
pub(crate) type OutcomeV2 = Result<Reply, RejectionV2>;

impl From<RejectionV2> for Rejection {
    /// The text of an old validation refusal is kept as it was written (the API shows
    /// it verbatim, so a replayed answer reads as the first one did).
    fn from(old: RejectionV2) -> Rejection {
        match old {
            RejectionV2::Validation { field, detail } => Rejection::Validation {
                field: Field::Legacy(field),
                violation: Violation::Legacy(detail),
            },
            RejectionV2::InsufficientStock { lines } => Rejection::InsufficientStock { lines },
            RejectionV2::UnknownSku { sku } => Rejection::UnknownSku { sku },
            RejectionV2::UnknownOrder { order } => Rejection::UnknownOrder { order },
            RejectionV2::UnknownReservation { id } => Rejection::UnknownReservation { id },
            RejectionV2::InvalidTransition { detail } => Rejection::InvalidTransition { detail },
            RejectionV2::OrderShipped { id, status } => Rejection::OrderShipped { id, status },
            RejectionV2::DuplicateOrderNo { order_no, id } => {
                Rejection::DuplicateOrderNo { order_no, id }
            }
            RejectionV2::IdempotencyConflict { key } => Rejection::IdempotencyConflict { key },
            RejectionV2::LimitReached { what } => Rejection::LimitReached { what },
        }
    }
}

pub(crate) fn upgrade_outcome(old: OutcomeV2) -> Outcome {
    old.map_err(Rejection::from)
}
