//! The size limits of `limits.rs`, checked before a command is encoded for the log
//! ([`check_sizes`]).

use super::{at_line, invalid, too_long, too_many_lines};
use crate::command::{Address, Command, Field, IdempotencyKey, LineField, Rejection};
use crate::limits::*;

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
        Command::Expire
        | Command::SetIdempotencyPolicy { .. }
        | Command::SetOrderPolicy { .. }
        | Command::SetRules { .. } => Ok(()),
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
