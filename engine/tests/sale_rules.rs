//! Flash-sale rules in the pure state machine: purchase limits (what counts, what
//! comes back), sale windows by the logged clock, the order of refusals, and the
//! counts through a snapshot. The model test (`model.rs`) checks the same rules over
//! random interleavings; these are the cases named one by one.

use surge_engine::{
    CancelReason, Command, Field, LineReq, NewOrder, OrderId, OrderLineReq, Query, QueryReply,
    Rejection, Reply, ReservationId, SaleClosed, SkuDefinition, State, Violation,
};

const START_MS: u64 = 1_000_000;

struct Sale {
    state: State,
    now_ms: u64,
    orders: u64,
}

impl Sale {
    fn new() -> Sale {
        let mut sale = Sale {
            state: State::new(),
            now_ms: START_MS,
            orders: 0,
        };
        sale.ok(Command::SetOrderPolicy {
            ship_sla_ms: 3_600_000,
            review_amount_min: None,
        });
        sale
    }

    fn apply(&mut self, cmd: Command) -> Result<Reply, Rejection> {
        let mut events = Vec::new();
        let applied = self.state.apply(&cmd, None, self.now_ms, &mut events);
        self.state.check_invariants();
        applied.outcome
    }

    fn ok(&mut self, cmd: Command) -> Reply {
        let what = format!("{cmd:?}");
        self.apply(cmd)
            .unwrap_or_else(|e| panic!("{what}: refused: {e:?}"))
    }

    fn define(&mut self, sku: &str, on_hand: u64, limit: Option<u64>, window: Window) {
        self.ok(Command::DefineSkuSale {
            definition: Box::new(SkuDefinition {
                sku: sku.into(),
                name: Some(String::new()),
                on_hand: Some(on_hand),
                low_stock_threshold: Some(0),
                purchase_limit_per_customer: limit,
                sale_starts_at_ms: window.0,
                sale_ends_at_ms: window.1,
            }),
        });
    }

    fn reserve(&mut self, sku: &str, qty: u64, customer: Option<&str>) -> Result<Reply, Rejection> {
        let lines = vec![LineReq {
            sku: sku.into(),
            qty,
        }];
        self.apply(match customer {
            Some(customer) => Command::ReserveFor {
                lines,
                ttl_ms: 60_000,
                customer_id: customer.into(),
                actor: "shop".into(),
            },
            None => Command::Reserve {
                lines,
                ttl_ms: 60_000,
                actor: "shop".into(),
            },
        })
    }

    fn order(
        &mut self,
        sku: &str,
        qty: u64,
        customer: &str,
        hold: Option<ReservationId>,
    ) -> Result<OrderId, Rejection> {
        self.orders += 1;
        let reply = self.apply(Command::PlaceOrder {
            order: Box::new(NewOrder {
                order_no: format!("N{}", self.orders),
                customer_id: customer.into(),
                lines: vec![OrderLineReq {
                    sku: sku.into(),
                    qty,
                    unit_price: 100,
                }],
                payment_ttl_ms: 60_000,
                reservation_id: hold,
                channel: String::new(),
                shipping_address: None,
                actor: "shop".into(),
            }),
        })?;
        match reply {
            Reply::Order(o) => Ok(o.id),
            other => panic!("not an order: {other:?}"),
        }
    }

    fn counted(&self, sku: &str, customer: &str) -> (u64, u64) {
        match self.state.query(&Query::SkuCustomer {
            sku: sku.into(),
            customer_id: customer.into(),
        }) {
            Ok(QueryReply::SkuCustomer(v)) => (v.counted, v.limit),
            other => panic!("{other:?}"),
        }
    }
}

/// `(sale_starts_at_ms, sale_ends_at_ms)` of a definition: `None` keeps.
type Window = (Option<Option<u64>>, Option<Option<u64>>);
const KEEP: Window = (None, None);

fn held_id(reply: Result<Reply, Rejection>) -> ReservationId {
    match reply {
        Ok(Reply::Reservation(r)) => r.id,
        other => panic!("not held: {other:?}"),
    }
}

fn over_limit(reply: Result<Reply, Rejection>) -> (u64, u64, u64) {
    match reply {
        Err(Rejection::PurchaseLimitExceeded {
            limit,
            already,
            requested,
            ..
        }) => (limit, already, requested),
        other => panic!("not over the limit: {other:?}"),
    }
}

#[test]
fn a_limit_counts_holds_purchases_and_orders_and_gets_back_what_comes_back() {
    let mut sale = Sale::new();
    sale.define("HOT", 100, Some(3), KEEP);

    let r1 = held_id(sale.reserve("HOT", 1, Some("ann")));
    let r2 = held_id(sale.reserve("HOT", 1, Some("ann")));
    assert_eq!(sale.counted("HOT", "ann"), (2, 3));
    assert_eq!(over_limit(sale.reserve("HOT", 2, Some("ann"))), (3, 2, 2));
    // Another customer has a count of their own.
    held_id(sale.reserve("HOT", 3, Some("bob")));
    assert_eq!(sale.counted("HOT", "bob"), (3, 3));

    // A release counts back; a commit keeps counting (bought outright).
    sale.ok(Command::ReleaseReservation {
        id: r1,
        actor: "shop".into(),
    });
    assert_eq!(sale.counted("HOT", "ann"), (1, 3));
    sale.ok(Command::CommitReservation {
        id: r2,
        actor: "shop".into(),
    });
    assert_eq!(sale.counted("HOT", "ann"), (1, 3));

    // An order counts until it is cancelled.
    let o = sale.order("HOT", 2, "ann", None).expect("within the limit");
    assert_eq!(sale.counted("HOT", "ann"), (3, 3));
    assert_eq!(
        over_limit(sale.order("HOT", 1, "ann", None).map(|_| Reply::Expired {
            reservations: 0,
            orders: 0
        })),
        (3, 3, 1)
    );
    sale.ok(Command::CancelOrder {
        id: o,
        reason: CancelReason::CustomerRequest,
        note: String::new(),
        actor: "shop".into(),
    });
    assert_eq!(sale.counted("HOT", "ann"), (1, 3));

    // An expired hold counts back, at the logged clock.
    held_id(sale.reserve("HOT", 2, Some("ann")));
    assert_eq!(sale.counted("HOT", "ann"), (3, 3));
    sale.now_ms += 60_000;
    sale.ok(Command::Expire);
    assert_eq!(sale.counted("HOT", "ann"), (1, 3));
    assert_eq!(sale.counted("HOT", "bob"), (0, 3), "bob's hold expired too");
}

#[test]
fn adopting_a_hold_counts_once_and_is_allowed_after_the_window_closes() {
    let mut sale = Sale::new();
    let ends = START_MS + 10_000;
    sale.define("HOT", 100, Some(2), (Some(None), Some(Some(ends))));
    let hold = held_id(sale.reserve("HOT", 2, Some("ann")));
    assert_eq!(sale.counted("HOT", "ann"), (2, 2));

    sale.now_ms = ends;
    assert_eq!(
        sale.reserve("HOT", 1, Some("bob")),
        Err(Rejection::SaleNotOpen {
            sku: "HOT".into(),
            closed: SaleClosed::Over { closed_at_ms: ends },
        })
    );
    let o = sale
        .order("HOT", 2, "ann", Some(hold))
        .expect("the customer's own hold, taken inside the window");
    assert_eq!(sale.counted("HOT", "ann"), (2, 2), "not counted twice");

    // Modifying down counts back; up is new stock: the window is closed.
    sale.ok(Command::ModifyOrder {
        change: Box::new(surge_engine::OrderChange {
            id: o,
            lines: Some(vec![OrderLineReq {
                sku: "HOT".into(),
                qty: 1,
                unit_price: 100,
            }]),
            shipping_address: None,
            note: None,
            reason: Some(CancelReason::CustomerRequest),
            actor: "op".into(),
        }),
    });
    assert_eq!(sale.counted("HOT", "ann"), (1, 2));
    let up = sale.apply(Command::ModifyOrder {
        change: Box::new(surge_engine::OrderChange {
            id: o,
            lines: Some(vec![OrderLineReq {
                sku: "HOT".into(),
                qty: 2,
                unit_price: 100,
            }]),
            shipping_address: None,
            note: None,
            reason: None,
            actor: "op".into(),
        }),
    });
    assert!(matches!(up, Err(Rejection::SaleNotOpen { .. })), "{up:?}");
}

#[test]
fn a_hold_of_another_customer_counts_for_the_order_and_is_judged_by_the_limit() {
    let mut sale = Sale::new();
    sale.define("HOT", 100, Some(2), KEEP);
    held_id(sale.reserve("HOT", 2, Some("ann")));
    let anonymous = held_id(sale.reserve("HOT", 1, Some("bob")));
    // Bob's hold adopted into an order of Ann's: Ann is at her limit.
    assert_eq!(
        over_limit(
            sale.order("HOT", 1, "ann", Some(anonymous))
                .map(|_| Reply::Expired {
                    reservations: 0,
                    orders: 0
                })
        ),
        (2, 2, 1)
    );
    sale.order("HOT", 1, "carl", Some(anonymous))
        .expect("Carl has room");
    assert_eq!(sale.counted("HOT", "bob"), (0, 2));
    assert_eq!(sale.counted("HOT", "carl"), (1, 2));
}

#[test]
fn windows_are_judged_by_the_logged_clock_to_the_millisecond() {
    let mut sale = Sale::new();
    let (opens, closes) = (START_MS + 5_000, START_MS + 9_000);
    sale.define("HOT", 100, None, (Some(Some(opens)), Some(Some(closes))));
    for (now, open) in [
        (opens - 1, false),
        (opens, true),
        (closes - 1, true),
        (closes, false),
    ] {
        sale.now_ms = now;
        let got = sale.reserve("HOT", 1, None);
        match (open, got) {
            (true, Ok(_)) => {}
            (false, Err(Rejection::SaleNotOpen { closed, .. })) => {
                let expected = if now < opens {
                    SaleClosed::NotYet { opens_at_ms: opens }
                } else {
                    SaleClosed::Over {
                        closed_at_ms: closes,
                    }
                };
                assert_eq!(closed, expected, "at {now}");
            }
            (open, got) => panic!("at {now} (open: {open}): {got:?}"),
        }
    }
    // An order without a hold is new stock too.
    sale.now_ms = closes;
    assert!(matches!(
        sale.order("HOT", 1, "ann", None),
        Err(Rejection::SaleNotOpen { .. })
    ));
}

#[test]
fn refusals_come_in_the_contracts_order() {
    let mut sale = Sale::new();
    let opens = START_MS + 5_000;
    sale.define("HOT", 1, Some(1), (Some(Some(opens)), None));
    sale.define("COLD", 1, None, KEEP);
    // Closed and over the limit and short: the window speaks first.
    assert!(matches!(
        sale.reserve("HOT", 5, Some("ann")),
        Err(Rejection::SaleNotOpen { .. })
    ));
    sale.now_ms = opens;
    // Over the limit and short of stock: the limit.
    assert_eq!(over_limit(sale.reserve("HOT", 5, Some("ann"))), (1, 0, 5));
    // Short only.
    assert!(matches!(
        sale.reserve("COLD", 5, Some("ann")),
        Err(Rejection::InsufficientStock { .. })
    ));
    // No customer on a limited SKU: a validation refusal, before the limit.
    assert_eq!(
        sale.reserve("HOT", 5, None),
        Err(Rejection::Validation {
            field: Field::CustomerId,
            violation: Violation::Required,
        })
    );
    // An unknown SKU on one line, a bad quantity on a later one: validation first.
    let got = sale.apply(Command::ReserveFor {
        lines: vec![
            LineReq {
                sku: "NOPE".into(),
                qty: 1,
            },
            LineReq {
                sku: "HOT".into(),
                qty: 0,
            },
        ],
        ttl_ms: 60_000,
        customer_id: "ann".into(),
        actor: "shop".into(),
    });
    assert!(matches!(got, Err(Rejection::Validation { .. })), "{got:?}");
    // A window that ends before it starts.
    let got = sale.apply(Command::DefineSkuSale {
        definition: Box::new(SkuDefinition {
            sku: "HOT".into(),
            name: Some(String::new()),
            on_hand: Some(1),
            low_stock_threshold: Some(0),
            purchase_limit_per_customer: None,
            sale_starts_at_ms: None,
            sale_ends_at_ms: Some(Some(opens)),
        }),
    });
    assert_eq!(
        got,
        Err(Rejection::Validation {
            field: Field::SaleEndsAt,
            violation: Violation::NotAfterStart,
        })
    );
    // A start alone past the end kept: the start is the field at fault.
    sale.define("HOT", 1, None, (Some(Some(opens)), Some(Some(opens + 10))));
    let got = sale.apply(Command::DefineSkuSale {
        definition: Box::new(SkuDefinition {
            sku: "HOT".into(),
            name: None,
            on_hand: None,
            low_stock_threshold: None,
            purchase_limit_per_customer: None,
            sale_starts_at_ms: Some(Some(opens + 10)),
            sale_ends_at_ms: None,
        }),
    });
    assert_eq!(
        got,
        Err(Rejection::Validation {
            field: Field::SaleStartsAt,
            violation: Violation::NotBeforeEnd,
        })
    );
}

#[test]
fn a_limit_counts_from_when_it_is_set_and_is_forgotten_when_removed() {
    let mut sale = Sale::new();
    sale.define("HOT", 100, None, KEEP);
    sale.order("HOT", 2, "ann", None).expect("no limit yet");
    held_id(sale.reserve("HOT", 5, Some("ann")));
    // Set: the order is counted; the hold taken without a limit is not (nothing
    // kept its customer).
    sale.define("HOT", 100, Some(3), KEEP);
    assert_eq!(sale.counted("HOT", "ann"), (2, 3));
    assert_eq!(over_limit(sale.reserve("HOT", 2, Some("ann"))), (3, 2, 2));
    // Redefined without the field: kept.
    sale.define("HOT", 100, None, KEEP);
    assert_eq!(sale.counted("HOT", "ann"), (2, 3));
    // Removed: no limit, nothing counted.
    sale.define("HOT", 100, Some(0), KEEP);
    assert_eq!(sale.counted("HOT", "ann"), (0, 0));
    held_id(sale.reserve("HOT", 50, None));
}

#[test]
fn counts_survive_a_snapshot_exactly() {
    let mut sale = Sale::new();
    sale.define("HOT", 100, Some(4), (Some(Some(START_MS)), None));
    let r = held_id(sale.reserve("HOT", 1, Some("ann")));
    sale.ok(Command::CommitReservation {
        id: r,
        actor: "shop".into(),
    });
    held_id(sale.reserve("HOT", 1, Some("ann")));
    sale.order("HOT", 2, "bob", None).expect("order");
    let bytes = sale.state.encode_snapshot();
    let restored = State::decode_snapshot(&bytes).expect("decodes");
    assert_eq!(
        restored.query(&Query::Digest),
        sale.state.query(&Query::Digest)
    );
    let mut after = Sale {
        state: restored,
        now_ms: sale.now_ms,
        orders: sale.orders,
    };
    assert_eq!(after.counted("HOT", "ann"), (2, 4));
    assert_eq!(after.counted("HOT", "bob"), (2, 4));
    // The restored state keeps counting: Ann's hold still counts back when released.
    after.ok(Command::ReleaseReservation {
        id: ReservationId(r.0 + 1),
        actor: "shop".into(),
    });
    assert_eq!(after.counted("HOT", "ann"), (1, 4));
}

#[test]
fn a_redefinition_without_on_hand_keeps_the_level_the_sale_moved() {
    let mut sale = Sale::new();
    sale.define("HOT", 10, Some(5), KEEP);
    let r = held_id(sale.reserve("HOT", 3, Some("ann")));
    sale.ok(Command::CommitReservation {
        id: r,
        actor: "shop".into(),
    });
    // Rules changed without a level: the 3 units sold stay sold.
    let reply = sale.ok(Command::DefineSkuSale {
        definition: Box::new(SkuDefinition {
            sku: "HOT".into(),
            name: Some(String::new()),
            on_hand: None,
            low_stock_threshold: Some(0),
            purchase_limit_per_customer: Some(4),
            sale_starts_at_ms: None,
            sale_ends_at_ms: None,
        }),
    });
    let Reply::Sku(view) = reply else {
        panic!("{reply:?}")
    };
    assert_eq!(
        (view.on_hand, view.sale.purchase_limit_per_customer),
        (7, 4)
    );
    // A new SKU needs its level.
    let got = sale.apply(Command::DefineSkuSale {
        definition: Box::new(SkuDefinition {
            sku: "NEW".into(),
            name: Some(String::new()),
            on_hand: None,
            low_stock_threshold: Some(0),
            purchase_limit_per_customer: None,
            sale_starts_at_ms: None,
            sale_ends_at_ms: None,
        }),
    });
    assert_eq!(
        got,
        Err(Rejection::Validation {
            field: Field::OnHand,
            violation: Violation::Required,
        })
    );
}

/// Under the v1.4 rules a limit set where there was none is refused
/// (`LimitReached`) when counting what counts already would pass the bound on
/// counted (SKU, customer) pairs, as a hold or an order past it is: before, one
/// definition could add millions of pairs at once, past the memory the bound stands
/// for. Under the v1.3 rules it is taken, so older logs replay as they ran.
#[test]
fn under_the_v14_rules_a_limit_set_later_keeps_within_the_counted_pairs() {
    use surge_engine::limits::{LIMITED_PAIRS_MAX, LINES_PER_REQUEST_MAX};
    let skus = LINES_PER_REQUEST_MAX;
    let customers = LIMITED_PAIRS_MAX / skus;
    assert_eq!(customers * skus, LIMITED_PAIRS_MAX);
    for rules in [4, 5] {
        let mut sale = Sale::new();
        sale.ok(Command::SetRules { rules });
        for i in 0..skus {
            sale.define(&format!("L{i}"), 1_000_000, Some(1), KEEP);
        }
        sale.define("HOT", 100, None, KEEP);
        // Past 2,000 holds a debug build stops checking the whole state after each
        // command (it recounts every limited SKU): made first, while that is cheap.
        sale.define("FILL", 1_000_000, None, KEEP);
        let mut events = Vec::new();
        for _ in 0..2_000 {
            let fill = Command::Reserve {
                lines: vec![LineReq {
                    sku: "FILL".into(),
                    qty: 1,
                }],
                ttl_ms: 60_000,
                actor: "shop".into(),
            };
            events.clear();
            let applied = sale.state.apply(&fill, None, sale.now_ms, &mut events);
            assert!(applied.outcome.is_ok());
        }
        // Every pair the bound allows: each customer holds one of every limited SKU.
        for c in 0..customers {
            let lines = (0..skus)
                .map(|i| LineReq {
                    sku: format!("L{i}"),
                    qty: 1,
                })
                .collect();
            let hold = Command::ReserveFor {
                lines,
                ttl_ms: 60_000,
                customer_id: format!("c{c}"),
                actor: "shop".into(),
            };
            events.clear();
            let applied = sale.state.apply(&hold, None, sale.now_ms, &mut events);
            assert!(applied.outcome.is_ok(), "customer {c}");
        }
        let order = Command::PlaceOrder {
            order: Box::new(NewOrder {
                order_no: "late-1".into(),
                customer_id: "late".into(),
                lines: vec![OrderLineReq {
                    sku: "HOT".into(),
                    qty: 1,
                    unit_price: 100,
                }],
                payment_ttl_ms: 60_000,
                reservation_id: None,
                channel: String::new(),
                shipping_address: None,
                actor: "shop".into(),
            }),
        };
        let placed = sale.state.apply(&order, None, sale.now_ms, &mut events);
        assert!(placed.outcome.is_ok(), "{:?}", placed.outcome);
        let before = sale.state.query(&Query::Digest);
        let set = Command::DefineSkuSale {
            definition: Box::new(SkuDefinition {
                sku: "HOT".into(),
                name: None,
                on_hand: None,
                low_stock_threshold: None,
                purchase_limit_per_customer: Some(5),
                sale_starts_at_ms: None,
                sale_ends_at_ms: None,
            }),
        };
        let set = sale
            .state
            .apply(&set, None, sale.now_ms, &mut events)
            .outcome;
        if rules >= 5 {
            assert!(
                matches!(set, Err(Rejection::LimitReached { .. })),
                "{set:?}"
            );
            assert_eq!(sale.state.query(&Query::Digest), before);
            assert_eq!(sale.counted("HOT", "late"), (0, 0));
        } else {
            assert!(set.is_ok(), "rules {rules}: {set:?}");
            assert_eq!(sale.counted("HOT", "late"), (1, 5));
        }
    }
}
