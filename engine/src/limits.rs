//! Every limit of the engine, in one place, with the relationships between them
//! checked at compile time. A limit that is hit is a clear rejection, never growth
//! without bound.

/// Lines in one reservation or order.
pub const LINES_PER_REQUEST_MAX: usize = 64;
/// Units of one SKU in one line (and summed per SKU within one request).
pub const QTY_PER_LINE_MAX: u64 = 1_000_000;
/// Largest `on_hand` a SKU may have.
pub const ON_HAND_MAX: u64 = 1_000_000_000_000;
/// Largest unit price, in minor units (cents).
pub const UNIT_PRICE_MAX: u64 = 10_000_000_000;
/// Largest order total, in minor units (the v1.3 rules): the sums of every order's
/// amounts (`/v1/stats`, the reports) then stay within an int64 at `ORDERS_MAX`.
pub const ORDER_TOTAL_MAX: u64 = 1_000_000_000_000;
/// SKU id length in bytes: `[A-Za-z0-9._:-]`.
pub const SKU_ID_LEN_MAX: usize = 64;
/// SKU display name length in bytes.
pub const SKU_NAME_LEN_MAX: usize = 200;
/// Client order number length in bytes.
pub const ORDER_NO_LEN_MAX: usize = 64;
/// Customer id length in bytes.
pub const CUSTOMER_ID_LEN_MAX: usize = 64;
/// A sales channel (`tmall`, `jd`, `web`) in bytes.
pub const CHANNEL_LEN_MAX: usize = 64;
/// One part of a shipping address in bytes.
pub const ADDRESS_PART_LEN_MAX: usize = 200;
/// History entries an order keeps for its status changes: changes that keep the
/// status (hold, modify, partial refund) stop this short of `HISTORY_PER_ORDER_MAX`.
/// After the last change allowed, an order takes at most 10 more entries: the
/// release of a hold taken then, the delay flag (once), pay, pick, pack, ship,
/// deliver, complete, a cancel or return, and two refunds of what is due (one owed
/// before, one from that cancel or return); pay and the refund owed before exclude
/// each other (an unpaid order owes nothing), so 11 is a bound with one to spare.
/// An entry that keeps `before` must never find the history full (`push_history`
/// asserts it).
pub const HISTORY_ROOM_FOR_STATUS: usize = 12;
/// History entries (creation and status changes included) past which an order
/// takes no more changes that keep its status: 409 `invalid_transition`.
pub const ORDER_CHANGES_MAX: usize = HISTORY_PER_ORDER_MAX - HISTORY_ROOM_FOR_STATUS;
/// Ship SLA (delay alerts) bounds: 1 minute to 90 days; 0 turns alerts off.
pub const SHIP_SLA_MS_MAX: u64 = 90 * 24 * 3_600_000;
/// The default ship SLA: 48 hours.
pub const SHIP_SLA_MS_DEFAULT: u64 = 48 * 3_600_000;
/// Free-text notes, payment / refund references, tracking numbers.
pub const NOTE_LEN_MAX: usize = 500;
/// Actor names (who did it) in bytes: `role:name`, and the `X-Actor` it acted for.
pub const ACTOR_LEN_MAX: usize = 64;
/// A logged actor: the actor, a space, and whom it acted for (`domain::actor_on_behalf_of`).
pub const LOGGED_ACTOR_LEN_MAX: usize = 2 * ACTOR_LEN_MAX + 1;
/// Idempotency key length in bytes.
pub const IDEMPOTENCY_KEY_LEN_MAX: usize = 128;

/// Number of distinct SKUs.
pub const SKUS_MAX: usize = 1_000_000;
/// Number of distinct actors (interned).
pub const ACTORS_MAX: usize = 100_000;
/// Orders kept in memory (all statuses; ids are dense). Sized so that the state at
/// its limits, its follower copy and a snapshot in flight fit a 24 GiB machine with
/// headroom; see [`STATE_BYTES_WORST_CASE`] and ARCHITECTURE.md.
pub const ORDERS_MAX: usize = 6_000_000;
/// Reservations held at once.
pub const HELD_RESERVATIONS_MAX: usize = 10_000_000;
/// (SKU, customer) pairs counted toward purchase limits at once (`sale.rs`).
pub const LIMITED_PAIRS_MAX: usize = 2_000_000;
/// The latest sale window instant: 9999-12-31T23:59:59.999Z, in ms since the epoch.
pub const SALE_INSTANT_MAX_MS: u64 = 253_402_300_799_999;
/// Finished (committed / released / expired) reservations remembered for reads and
/// idempotent repeats, newest kept.
pub const FINISHED_RESERVATIONS_KEPT: usize = 1_000_000;
/// Idempotency keys are remembered for a retention window within a memory budget
/// (`idempotency.rs`): past the window a key is forgotten; past the budget the oldest
/// keys are forgotten first. Neither ever refuses a write. Default window: 24 h.
pub const IDEMPOTENCY_WINDOW_MS_DEFAULT: u64 = 24 * 60 * 60 * 1000;
pub const IDEMPOTENCY_WINDOW_MS_MIN: u64 = 1_000;
pub const IDEMPOTENCY_WINDOW_MS_MAX: u64 = 30 * 24 * 60 * 60 * 1000;
/// Default memory budget of the idempotency index: 2 GiB holds about 29.8 M keys at
/// 72 bytes each, which is 14.2 minutes of keys at 35 k keyed requests per second
/// (the rate one server sustained over HTTP, README): just short of the default
/// 15-minute hold and payment TTLs, so at that rate the window warns below its floor
/// (2,176 MiB would outlast them). About a twelfth of the 24 GiB machines surge runs
/// on, counted three times in the start-up memory check.
pub const IDEMPOTENCY_BUDGET_BYTES_DEFAULT: u64 = 2 << 30;
/// Smallest budget: room for about a thousand keys and the largest stored answer.
pub const IDEMPOTENCY_BUDGET_BYTES_MIN: u64 = 64 << 10;
/// Largest budget: the index numbers its slots with 32 bits (1 G keys at 64 bytes).
pub const IDEMPOTENCY_BUDGET_BYTES_MAX: u64 = 64 << 30;
/// The window below which `/metrics` and the log warn by default: the default hold
/// and payment TTL, for the reason given at the budget.
pub const IDEMPOTENCY_WINDOW_FLOOR_MS_DEFAULT: u64 = 15 * 60 * 1000;
/// History entries per order (the graph has at most ~9 transitions; the rest is slack).
pub const HISTORY_PER_ORDER_MAX: usize = 32;

/// Reservation and payment TTLs.
pub const TTL_MS_MIN: u64 = 1_000;
pub const TTL_MS_MAX: u64 = 7 * 24 * 60 * 60 * 1000;
/// Default reservation TTL: 15 minutes.
pub const RESERVATION_TTL_MS_DEFAULT: u64 = 15 * 60 * 1000;
/// Default payment TTL for orders: 15 minutes.
pub const PAYMENT_TTL_MS_DEFAULT: u64 = 15 * 60 * 1000;

/// Page size of list queries.
pub const LIST_LIMIT_MAX: usize = 1_000;
pub const LIST_LIMIT_DEFAULT: usize = 50;
/// Orders examined by one filtered list query before it returns a cursor: reads run
/// on the writer thread, so one query may not stall writes for long.
pub const LIST_SCAN_MAX: usize = 200_000;
/// `top N` in stats.
pub const STATS_TOP_MAX: usize = 100;
/// Events one record may carry: event seq = record LSN + index.
pub const EVENTS_PER_RECORD_MAX: usize = 6 * LINES_PER_REQUEST_MAX + 8;

const _: () =
    assert!(TTL_MS_MIN <= RESERVATION_TTL_MS_DEFAULT && RESERVATION_TTL_MS_DEFAULT <= TTL_MS_MAX);
const _: () = assert!(TTL_MS_MIN <= PAYMENT_TTL_MS_DEFAULT && PAYMENT_TTL_MS_DEFAULT <= TTL_MS_MAX);
const _: () = assert!(LIST_LIMIT_DEFAULT <= LIST_LIMIT_MAX && LIST_LIMIT_MAX <= LIST_SCAN_MAX);
// The sums of all orders' amounts fit an int64 (JSON clients read them as one).
const _: () = assert!((ORDERS_MAX as u128) * (ORDER_TOTAL_MAX as u128) <= i64::MAX as u128);
// Totals are u64 minor units: the biggest order must not overflow.
const _: () = assert!(
    (LINES_PER_REQUEST_MAX as u128) * (QTY_PER_LINE_MAX as u128) * (UNIT_PRICE_MAX as u128)
        < u64::MAX as u128
);
const _: () = assert!(
    IDEMPOTENCY_WINDOW_MS_MIN <= IDEMPOTENCY_WINDOW_MS_DEFAULT
        && IDEMPOTENCY_WINDOW_MS_DEFAULT <= IDEMPOTENCY_WINDOW_MS_MAX
);
const _: () = assert!(
    IDEMPOTENCY_BUDGET_BYTES_MIN <= IDEMPOTENCY_BUDGET_BYTES_DEFAULT
        && IDEMPOTENCY_BUDGET_BYTES_DEFAULT <= IDEMPOTENCY_BUDGET_BYTES_MAX
);
// Keys must outlive the holds and payment windows they protect, by default.
const _: () = assert!(IDEMPOTENCY_WINDOW_FLOOR_MS_DEFAULT >= RESERVATION_TTL_MS_DEFAULT);
const _: () = assert!(IDEMPOTENCY_WINDOW_FLOOR_MS_DEFAULT <= IDEMPOTENCY_WINDOW_MS_DEFAULT);

/// Upper bound of one encoded log record (command, time stamp and idempotency key)
/// when every field is within the limits above. `engine/tests/record_limit.rs` builds
/// the largest command of every kind and checks it encodes within this bound; the
/// engine refuses to start over a log whose records could not hold it.
pub const RECORD_ENCODED_BYTES_MAX: usize = 16 * 1024;

// The largest valid command always fits a WAL record with the default segment size,
// so a request within the field limits can never make the log refuse its record.
const _: () = assert!(RECORD_ENCODED_BYTES_MAX <= surge_wal::RECORD_PAYLOAD_MAX_BYTES);

/// Heap bytes one live order may take, an upper bound of the measured 399 B
/// (`cargo bench --bench memory`).
pub const ORDER_BYTES_BOUND: u64 = 512;
/// Heap bytes one held reservation may take, on average at the limits.
/// `cargo bench --bench memory` (2026-12-02): 96 B for a one-line hold older than
/// the window (its overflow slot and id, 88 B, and its lines, 8 B), which the
/// overflow keeps within 8/7 of the slots plus one chunk whatever order holds end
/// in (`reservations.rs`); the window's full room (80 MB) and the expiry heap's room
/// for `HELD_RESERVATIONS_MAX` entries (160 MB) are taken at once. At the limits, at
/// worst: 240 MB + 1M window holds' lines (8 MB) + 10M old holds at 88 * 8 / 7 + 8 B
/// (1,086 MB) = 1,334 MB, under 11M * 128 B = 1,408 MB.
pub const HOLD_BYTES_BOUND: u64 = 128;
/// Heap bytes of one counted (SKU, customer) pair: a hash table slot (32 bytes and
/// a control byte) at the lowest load factor a table keeps (7/16, just grown), and a
/// customer id of its longest (64 bytes) with its reference counts, not shared. An
/// upper bound of the measured 74 bytes (`cargo bench --bench memory`). A hold that
/// keeps its customer shares the id with a count of its own, so holds add nothing
/// beyond [`HOLD_BYTES_BOUND`].
pub const LIMITED_PAIR_BYTES_BOUND: u64 = 160;
/// The state's worst case at its limits, without the idempotency budget (which is
/// configured): every order and hold slot used, plus the finished holds kept, plus
/// the purchase-limit counts.
pub const STATE_BYTES_WORST_CASE: u64 = ORDERS_MAX as u64 * ORDER_BYTES_BOUND
    + (HELD_RESERVATIONS_MAX + FINISHED_RESERVATIONS_KEPT) as u64 * HOLD_BYTES_BOUND
    + LIMITED_PAIRS_MAX as u64 * LIMITED_PAIR_BYTES_BOUND;
/// Delayed orders flagged by one `Expire` command (the timer sends another if more are due).
pub const EXPIRE_BATCH_DELAYS_MAX: usize = 10_000;
