//! The event feed's types and payloads, as `/openapi.json` documents them: one
//! schema per type (`Event.<type>`), and `Event`, the one of them an event is.
//!
//! The table below is the contract downstream consumers (finance, customer service,
//! the warehouse) write against; `api/tests/event_payloads.rs` checks every event a
//! full order life emits against it, both ways: no field undocumented, no documented
//! field missing.

use serde_json::{Map, Value, json};
use utoipa::openapi::schema::{ArrayItems, ObjectBuilder, Schema, Type};
use utoipa::openapi::{OpenApi, Ref, RefOr};

/// How a field's value is written.
#[derive(Clone, Copy)]
enum Shape {
    Text,
    /// RFC 3339 UTC.
    Time,
    Integer,
    /// May be negative.
    SignedInteger,
    Boolean,
    /// `[{"sku", "qty"}]`.
    SkuQtys,
    /// `[{"sku", "qty", "unit_price"}]`.
    OrderLines,
    /// The address object of an order, or null.
    Address,
    /// A string or null.
    NullableText,
}

/// One field: name, shape, whether every event of the type has it, what it holds.
type Field = (&'static str, Shape, bool, &'static str);

/// One event type: its name, when it is emitted, and its fields beside `seq`, `at`
/// and `type`.
pub struct EventDoc {
    name: &'static str,
    about: &'static str,
    fields: &'static [Field],
}

use Shape::{
    Address, Boolean, Integer, NullableText, OrderLines, SignedInteger, SkuQtys, Text, Time,
};

const ACTOR: Field = (
    "actor",
    Text,
    true,
    "Who did it, `role` or `role:name` (a named token, or `X-Actor` with an unnamed one)",
);
const ON_BEHALF_OF: Field = (
    "on_behalf_of",
    Text,
    false,
    "Whom a named token acted for (its `X-Actor`); absent otherwise",
);
const ORDER_ID: Field = ("order_id", Text, true, "The order's id (`o…`)");
const ORDER_NO: Field = ("order_no", Text, true, "The client's order number");
const CUSTOMER_ID: Field = ("customer_id", Text, true, "The order's customer");
const CHANNEL: Field = (
    "channel",
    Text,
    true,
    "The order's sales channel (may be empty)",
);
const LINES: Field = (
    "lines",
    OrderLines,
    true,
    "The order's lines now: `[{\"sku\", \"qty\", \"unit_price\"}]`",
);
const SKU: Field = ("sku", Text, true, "The SKU id");
const AVAILABLE: Field = (
    "available",
    Integer,
    true,
    "Units available after this command",
);
const NOTE: Field = ("note", Text, true, "The note given (may be empty)");
const REFUND_DUE_AMOUNT: Field = (
    "refund_due_amount",
    Integer,
    true,
    "The order's refund due after this command, minor units: its total due, not the part this command added",
);
const RESTOCKED: Field = (
    "restocked",
    SkuQtys,
    true,
    "Units given back to available stock by this command, per SKU (empty when none)",
);
const RESERVATION_ID: Field = ("reservation_id", Text, true, "The reservation's id (`r…`)");

/// Every event type, in the order the feed documents them.
const EVENT_DOCS: &[EventDoc] = &[
    EventDoc {
        name: "sku.defined",
        about: "A SKU was created or redefined (`PUT /v1/skus/{sku}`)",
        fields: &[
            SKU,
            ("on_hand", Integer, true, "Units on hand after it"),
            (
                "low_stock_threshold",
                Integer,
                true,
                "The threshold after it",
            ),
        ],
    },
    EventDoc {
        name: "stock.adjusted",
        about: "An operator adjusted a SKU's stock (`POST /v1/skus/{sku}/adjustments`)",
        fields: &[
            SKU,
            (
                "delta",
                SignedInteger,
                true,
                "Units added (negative: removed)",
            ),
            ("reason", Text, true, "`inbound` or `correction`"),
            ("on_hand", Integer, true, "Units on hand after it"),
            AVAILABLE,
            NOTE,
            ACTOR,
            ON_BEHALF_OF,
        ],
    },
    EventDoc {
        name: "stock.low",
        about: "A SKU's available units fell to or below its low-stock threshold (once per crossing; re-armed when they rise above it)",
        fields: &[
            SKU,
            AVAILABLE,
            ("threshold", Integer, true, "The SKU's low-stock threshold"),
        ],
    },
    EventDoc {
        name: "stock.out",
        about: "A SKU's available units reached 0",
        fields: &[SKU],
    },
    EventDoc {
        name: "stock.restored",
        about: "Units came back to available: a hold released or expired, an order cancelled or expired, a return with restock, a modification that lowered a line. One per SKU per command",
        fields: &[
            SKU,
            ("qty", Integer, true, "Units that came back"),
            AVAILABLE,
        ],
    },
    EventDoc {
        name: "reservation.held",
        about: "A hold was taken (`POST /v1/reservations`, or an order placed without one)",
        fields: &[
            RESERVATION_ID,
            ("lines", SkuQtys, true, "Units held per SKU"),
            (
                "expires_at",
                Time,
                true,
                "When the hold expires unless committed, released or adopted by an order",
            ),
        ],
    },
    EventDoc {
        name: "reservation.committed",
        about: "A hold was committed: its units left on_hand (a reservation committed, or an order paid)",
        fields: &[RESERVATION_ID],
    },
    EventDoc {
        name: "reservation.released",
        about: "A hold was released: its units came back (see `stock.restored`)",
        fields: &[RESERVATION_ID],
    },
    EventDoc {
        name: "reservation.expired",
        about: "A hold's TTL ran out: its units came back (see `stock.restored`)",
        fields: &[RESERVATION_ID],
    },
    EventDoc {
        name: "order.created",
        about: "An order was placed (`POST /v1/orders`)",
        fields: &[
            ORDER_ID,
            ORDER_NO,
            CUSTOMER_ID,
            CHANNEL,
            LINES,
            ("total", Integer, true, "The order's total, minor units"),
            ACTOR,
            ON_BEHALF_OF,
        ],
    },
    EventDoc {
        name: "order.paid",
        about: "An order was paid: its stock is committed",
        fields: &[
            ORDER_ID,
            ORDER_NO,
            CUSTOMER_ID,
            CHANNEL,
            LINES,
            ("amount", Integer, true, "The amount paid, minor units"),
            (
                "payment_ref",
                Text,
                true,
                "The payment reference given (may be empty)",
            ),
            ACTOR,
            ON_BEHALF_OF,
        ],
    },
    EventDoc {
        name: "order.status_changed",
        about: "An order moved along its fulfilment (`picking`, `packed`, `shipped`, `delivered`, `completed`)",
        fields: &[
            ORDER_ID,
            ORDER_NO,
            CUSTOMER_ID,
            CHANNEL,
            LINES,
            ("from", Text, true, "The status before"),
            ("to", Text, true, "The status after"),
            NOTE,
            (
                "tracking_no",
                Text,
                true,
                "The tracking number (set when shipped; may be empty)",
            ),
            ACTOR,
            ON_BEHALF_OF,
        ],
    },
    EventDoc {
        name: "order.cancelled",
        about: "An order was cancelled: its stock came back (`restocked`, and a `stock.restored` per SKU), and a paid order owes a refund",
        fields: &[
            ORDER_ID,
            ORDER_NO,
            CUSTOMER_ID,
            CHANNEL,
            LINES,
            ("reason", Text, true, "The cancel reason code"),
            NOTE,
            ACTOR,
            ON_BEHALF_OF,
            REFUND_DUE_AMOUNT,
            RESTOCKED,
        ],
    },
    EventDoc {
        name: "order.expired",
        about: "An unpaid order's payment TTL ran out: its hold expired and its stock came back",
        fields: &[ORDER_ID, ORDER_NO, CUSTOMER_ID, CHANNEL, LINES],
    },
    EventDoc {
        name: "order.returned",
        about: "A shipped order came back (`POST /v1/orders/{id}/return`): intercepted, refused or returned by the customer",
        fields: &[
            ORDER_ID,
            ORDER_NO,
            CUSTOMER_ID,
            CHANNEL,
            LINES,
            (
                "kind",
                Text,
                true,
                "`intercepted`, `refused` or `customer_return`",
            ),
            (
                "restock",
                Boolean,
                true,
                "Whether the units went back to stock",
            ),
            ("reason", Text, true, "The reason given (may be empty)"),
            NOTE,
            ACTOR,
            ON_BEHALF_OF,
            REFUND_DUE_AMOUNT,
            RESTOCKED,
        ],
    },
    EventDoc {
        name: "order.refunded",
        about: "Money was paid back (`/refund` or `/refunds`)",
        fields: &[
            ORDER_ID,
            ORDER_NO,
            (
                "amount",
                Integer,
                true,
                "The amount refunded by this command, minor units",
            ),
            ("reason", Text, true, "The reason given (may be empty)"),
            (
                "refund_ref",
                Text,
                true,
                "The refund reference given (may be empty)",
            ),
            ACTOR,
            ON_BEHALF_OF,
            (
                "refunded_amount",
                Integer,
                true,
                "The order's refunded amount after it, minor units",
            ),
            REFUND_DUE_AMOUNT,
        ],
    },
    EventDoc {
        name: "order.modified",
        about: "An order was modified before picking (`PATCH /v1/orders/{id}`)",
        fields: &[
            ORDER_ID,
            ORDER_NO,
            CUSTOMER_ID,
            CHANNEL,
            ("before", OrderLines, true, "The lines before"),
            ("after", OrderLines, true, "The lines after"),
            (
                "reason",
                NullableText,
                true,
                "The cancel reason code of a partial cancel, or null",
            ),
            ACTOR,
            ON_BEHALF_OF,
            (
                "stock_delta",
                SkuQtys,
                true,
                "Units per SKU: positive taken from available, negative given back",
            ),
            (
                "total",
                Integer,
                true,
                "The order's total after it, minor units",
            ),
            (
                "refund_due_added",
                Integer,
                true,
                "What this modification added to the refund due (a paid order's lowered total, capped so that refunded plus due never passes what was paid), minor units",
            ),
            (
                "shipping_address",
                Address,
                true,
                "The shipping address after it, or null",
            ),
            (
                "note",
                Text,
                true,
                "The order's note after it (may be empty)",
            ),
        ],
    },
    EventDoc {
        name: "order.held",
        about: "An order was put on review hold (by an operator, or at creation past `SURGE_REVIEW_AMOUNT_MIN`)",
        fields: &[
            ORDER_ID,
            ORDER_NO,
            ("reason", Text, true, "The hold reason code"),
            NOTE,
            ACTOR,
            ON_BEHALF_OF,
        ],
    },
    EventDoc {
        name: "order.hold_released",
        about: "An order's review hold was released",
        fields: &[ORDER_ID, ORDER_NO, NOTE, ACTOR, ON_BEHALF_OF],
    },
    EventDoc {
        name: "order.delayed",
        about: "A paid order was not shipped within the ship SLA (`SURGE_SHIP_SLA_MS`): emitted once, when the SLA runs out",
        fields: &[
            ORDER_ID,
            ORDER_NO,
            CUSTOMER_ID,
            ("paid_at", Time, true, "When it was paid"),
            ("delayed_since", Time, true, "When the SLA ran out"),
        ],
    },
];

/// What every event carries before its type's fields.
const COMMON: &[Field] = &[
    (
        "seq",
        Integer,
        true,
        "The event's position in the log: strictly increasing, never reused, the same after a restart. The events of one command have consecutive seqs (the first is the command's `Surge-Lsn`); their order among themselves is not part of the contract: match on `type`",
    ),
    (
        "at",
        Time,
        true,
        "When the command that made it was applied (the engine's logged clock)",
    ),
    ("type", Text, true, "The event type"),
];

fn shape_schema(shape: Shape) -> Value {
    let sku_qty = json!({"type": "object", "required": ["sku", "qty"], "properties": {
        "sku": {"type": "string"}, "qty": {"type": "integer"}}});
    match shape {
        Text => json!({"type": "string"}),
        Time => json!({"type": "string", "format": "date-time"}),
        Integer => json!({"type": "integer", "minimum": 0}),
        SignedInteger => json!({"type": "integer"}),
        Boolean => json!({"type": "boolean"}),
        SkuQtys => json!({"type": "array", "items": sku_qty}),
        OrderLines => json!({"type": "array", "items": {"type": "object",
            "required": ["sku", "qty", "unit_price"], "properties": {
                "sku": {"type": "string"}, "qty": {"type": "integer"},
                "unit_price": {"type": "integer"}}}}),
        Address => {
            json!({"oneOf": [{"$ref": "#/components/schemas/AddressBody"}, {"type": "null"}]})
        }
        NullableText => json!({"type": ["string", "null"]}),
    }
}

/// A schema written as JSON, as the document holds it.
fn schema(value: Value) -> RefOr<Schema> {
    serde_json::from_value(value).expect("a well-formed schema")
}

/// An event type's schema: its fields in the table's order (a JSON map would sort
/// them).
fn event_schema(doc: &EventDoc) -> RefOr<Schema> {
    let mut object = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(doc.about));
    for &(name, shape, always, about) in COMMON.iter().chain(doc.fields) {
        let mut field = shape_schema(shape);
        field["description"] = about.into();
        if name == "type" {
            field["enum"] = json!([doc.name]);
        }
        object = object.property(name, schema(field));
        if always {
            object = object.required(name);
        }
    }
    RefOr::T(Schema::Object(object.build()))
}

/// Put the event schemas into the OpenAPI document: one per type
/// (`Event.order.created`), `Event` (one of them, told apart by `type`), and the
/// items of `EventPage.events` made an `Event`.
pub fn document_events(openapi: &mut OpenApi) {
    let components = openapi.components.get_or_insert_with(Default::default);
    let mut one_of = Vec::new();
    let mut mapping = Map::new();
    for event in EVENT_DOCS {
        let name = format!("Event.{}", event.name);
        let reference = format!("#/components/schemas/{name}");
        components.schemas.insert(name, event_schema(event));
        one_of.push(json!({"$ref": reference}));
        mapping.insert(event.name.into(), reference.into());
    }
    components.schemas.insert(
        "Event".to_string(),
        schema(json!({
            "description": "One event of the feed (`GET /v1/events`, the SSE stream, and the NATS stream `SURGE_EVENTS` with `--events-to`): `seq`, `at`, `type` and the type's own fields. Events logged by versions before v1.1 carry fewer fields (the order events without `customer_id`, `channel` and `lines`; `order.cancelled` with `refund_due` in place of `refund_due_amount`); a consumer reads by `type`, and ignores fields it does not know: new fields may be added.",
            "oneOf": one_of,
            "discriminator": {"propertyName": "type", "mapping": mapping},
        })),
    );
    if let Some(RefOr::T(Schema::Object(page))) = components.schemas.get_mut("EventPage")
        && let Some(RefOr::T(Schema::Array(events))) = page.properties.get_mut("events")
    {
        events.items =
            ArrayItems::RefOrSchema(Box::new(RefOr::Ref(Ref::from_schema_name("Event"))));
    }
}
