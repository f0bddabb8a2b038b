//! The largest valid command of every kind encodes within the log's record limit,
//! and anything larger is refused by `check_sizes` before it is encoded.

use surge_engine::check_sizes;
use surge_engine::codec::{LogRecord, encode_record};
use surge_engine::limits::*;
use surge_engine::wal::{RECORD_PAYLOAD_MAX_BYTES, WalConfig};
use surge_engine::{
    Address, AddressField, AdjustReason, CancelReason, Command, Field, HoldReason, IdempotencyKey,
    LineField, LineReq, NewOrder, OrderChange, OrderId, OrderLineReq, OrderStatus, Rejection,
    ReservationId, ReturnKind,
};

fn text(len: usize) -> String {
    "x".repeat(len)
}

/// One command of every kind with every string at its limit and every list full.
fn largest_commands() -> Vec<Command> {
    let actor = text(LOGGED_ACTOR_LEN_MAX);
    let note = text(NOTE_LEN_MAX);
    let part = || Some(text(ADDRESS_PART_LEN_MAX));
    let address = Address {
        name: part(),
        phone: part(),
        province: part(),
        city: part(),
        district: part(),
        line1: part(),
        postal_code: part(),
    };
    let sku = text(SKU_ID_LEN_MAX);
    let lines = vec![
        LineReq {
            sku: sku.clone(),
            qty: u64::MAX
        };
        LINES_PER_REQUEST_MAX
    ];
    let order_lines: Vec<OrderLineReq> = vec![
        OrderLineReq {
            sku: sku.clone(),
            qty: u64::MAX,
            unit_price: u64::MAX
        };
        LINES_PER_REQUEST_MAX
    ];
    let id = OrderId(u64::MAX);
    let all = vec![
        Command::DefineSku {
            sku: sku.clone(),
            name: text(SKU_NAME_LEN_MAX),
            on_hand: u64::MAX,
            low_stock_threshold: u64::MAX,
        },
        Command::AdjustStock {
            sku,
            delta: i64::MIN,
            reason: AdjustReason::ALL[0],
            note: note.clone(),
            actor: actor.clone(),
        },
        Command::Reserve {
            lines,
            ttl_ms: u64::MAX,
            actor: actor.clone(),
        },
        Command::CommitReservation {
            id: ReservationId(u64::MAX),
            actor: actor.clone(),
        },
        Command::ReleaseReservation {
            id: ReservationId(u64::MAX),
            actor: actor.clone(),
        },
        Command::CreateOrder {
            order_no: text(ORDER_NO_LEN_MAX),
            customer_id: text(CUSTOMER_ID_LEN_MAX),
            lines: order_lines.clone(),
            payment_ttl_ms: u64::MAX,
            reservation_id: Some(ReservationId(u64::MAX)),
            actor: actor.clone(),
        },
        Command::PlaceOrder {
            order: Box::new(NewOrder {
                order_no: text(ORDER_NO_LEN_MAX),
                customer_id: text(CUSTOMER_ID_LEN_MAX),
                lines: order_lines.clone(),
                payment_ttl_ms: u64::MAX,
                reservation_id: Some(ReservationId(u64::MAX)),
                channel: text(CHANNEL_LEN_MAX),
                shipping_address: Some(address.clone()),
                actor: actor.clone(),
            }),
        },
        Command::ModifyOrder {
            change: Box::new(OrderChange {
                id,
                lines: Some(order_lines.clone()),
                shipping_address: Some(address),
                note: Some(note.clone()),
                reason: Some(CancelReason::ALL[0]),
                actor: actor.clone(),
            }),
        },
        Command::HoldOrder {
            id,
            reason: HoldReason::ALL[0],
            note: note.clone(),
            actor: actor.clone(),
        },
        Command::ReleaseHold {
            id,
            note: note.clone(),
            actor: actor.clone(),
        },
        Command::RefundAmount {
            id,
            amount: u64::MAX,
            reason: note.clone(),
            refund_ref: note.clone(),
            actor: actor.clone(),
        },
        Command::ReturnOrderAs {
            id,
            kind: ReturnKind::ALL[0],
            restock: true,
            reason: note.clone(),
            note: note.clone(),
            actor: actor.clone(),
        },
        Command::SetOrderPolicy {
            ship_sla_ms: u64::MAX,
            review_amount_min: Some(u64::MAX),
        },
        Command::PayOrder {
            id,
            amount: u64::MAX,
            payment_ref: note.clone(),
            actor: actor.clone(),
        },
        Command::AdvanceOrder {
            id,
            to: OrderStatus::ALL[0],
            note: note.clone(),
            tracking_no: note.clone(),
            actor: actor.clone(),
        },
        Command::CancelOrder {
            id,
            reason: CancelReason::ALL[0],
            note: note.clone(),
            actor: actor.clone(),
        },
        Command::ReturnOrder {
            id,
            restock: true,
            reason: note.clone(),
            note: note.clone(),
            actor: actor.clone(),
        },
        Command::RefundOrder {
            id,
            refund_ref: note,
            actor,
        },
        Command::Expire,
        Command::SetIdempotencyPolicy {
            window_ms: u64::MAX,
            budget_bytes: u64::MAX,
        },
    ];
    all
}

#[test]
fn largest_valid_command_of_every_kind_encodes_below_the_record_limit() {
    let key = IdempotencyKey {
        key: text(IDEMPOTENCY_KEY_LEN_MAX),
        fingerprint: u64::MAX,
    };
    let mut buf = Vec::new();
    let mut largest = 0;
    for command in largest_commands() {
        check_sizes(&command, Some(&key))
            .unwrap_or_else(|r| panic!("{} at its limits refused: {r:?}", command.name()));
        let name = command.name();
        encode_record(
            &LogRecord {
                now_ms: u64::MAX,
                command,
                key: Some(key.clone()),
            },
            &mut buf,
        );
        assert!(
            buf.len() <= RECORD_ENCODED_BYTES_MAX,
            "{name} encodes to {} bytes, over RECORD_ENCODED_BYTES_MAX {RECORD_ENCODED_BYTES_MAX}",
            buf.len()
        );
        largest = largest.max(buf.len());
    }
    assert!(largest <= RECORD_PAYLOAD_MAX_BYTES);
    assert!(largest <= WalConfig::default().record_payload_max_bytes());
}

fn refused_field(command: &Command, key: Option<&IdempotencyKey>) -> Field {
    match check_sizes(command, key) {
        Err(Rejection::Validation { field, .. }) => field,
        other => panic!("{} over a limit was not refused: {other:?}", command.name()),
    }
}

#[test]
fn one_byte_over_any_limit_is_refused_naming_the_field() {
    // Grow each string of each command by one byte past its limit, one at a time.
    let over = |len: usize| text(len + 1);
    let cases: Vec<(Command, Field)> = vec![
        (
            Command::AdjustStock {
                sku: over(SKU_ID_LEN_MAX),
                delta: 1,
                reason: AdjustReason::ALL[0],
                note: String::new(),
                actor: "a".into(),
            },
            Field::Sku,
        ),
        (
            Command::AdjustStock {
                sku: "s".into(),
                delta: 1,
                reason: AdjustReason::ALL[0],
                note: over(NOTE_LEN_MAX),
                actor: "a".into(),
            },
            Field::Note,
        ),
        (
            Command::DefineSku {
                sku: "s".into(),
                name: over(SKU_NAME_LEN_MAX),
                on_hand: 1,
                low_stock_threshold: 0,
            },
            Field::Name,
        ),
        (
            Command::Reserve {
                lines: vec![
                    LineReq {
                        sku: "s".into(),
                        qty: 1
                    };
                    LINES_PER_REQUEST_MAX + 1
                ],
                ttl_ms: 1_000,
                actor: "a".into(),
            },
            Field::Lines,
        ),
        (
            Command::Reserve {
                lines: vec![
                    LineReq {
                        sku: "s".into(),
                        qty: 1,
                    },
                    LineReq {
                        sku: over(SKU_ID_LEN_MAX),
                        qty: 1,
                    },
                ],
                ttl_ms: 1_000,
                actor: "a".into(),
            },
            Field::Line {
                index: 1,
                part: LineField::Sku,
            },
        ),
        (
            Command::CommitReservation {
                id: ReservationId(1),
                actor: over(LOGGED_ACTOR_LEN_MAX),
            },
            Field::Actor,
        ),
        (
            Command::PlaceOrder {
                order: Box::new(NewOrder {
                    order_no: "n".into(),
                    customer_id: "c".into(),
                    lines: Vec::new(),
                    payment_ttl_ms: 1_000,
                    reservation_id: None,
                    channel: String::new(),
                    shipping_address: Some(Address {
                        city: Some(over(ADDRESS_PART_LEN_MAX)),
                        ..Address::default()
                    }),
                    actor: "a".into(),
                }),
            },
            Field::Address(AddressField::City),
        ),
        (
            Command::PlaceOrder {
                order: Box::new(NewOrder {
                    order_no: "n".into(),
                    customer_id: "c".into(),
                    lines: Vec::new(),
                    payment_ttl_ms: 1_000,
                    reservation_id: None,
                    channel: over(CHANNEL_LEN_MAX),
                    shipping_address: None,
                    actor: "a".into(),
                }),
            },
            Field::Channel,
        ),
        (
            Command::RefundAmount {
                id: OrderId(1),
                amount: 1,
                reason: String::new(),
                refund_ref: over(NOTE_LEN_MAX),
                actor: "a".into(),
            },
            Field::RefundRef,
        ),
        (
            Command::CreateOrder {
                order_no: "n".into(),
                customer_id: over(CUSTOMER_ID_LEN_MAX),
                lines: Vec::new(),
                payment_ttl_ms: 1_000,
                reservation_id: None,
                actor: "a".into(),
            },
            Field::CustomerId,
        ),
        (
            Command::ReturnOrder {
                id: OrderId(1),
                restock: false,
                reason: over(NOTE_LEN_MAX),
                note: String::new(),
                actor: "a".into(),
            },
            Field::Reason,
        ),
        (
            Command::RefundOrder {
                id: OrderId(1),
                refund_ref: over(NOTE_LEN_MAX),
                actor: "a".into(),
            },
            Field::RefundRef,
        ),
    ];
    for (command, field) in &cases {
        assert_eq!(refused_field(command, None), *field, "{}", command.name());
    }
    let key = IdempotencyKey {
        key: over(IDEMPOTENCY_KEY_LEN_MAX),
        fingerprint: 0,
    };
    assert_eq!(
        refused_field(&Command::Expire, Some(&key)),
        Field::IdempotencyKey
    );
}
