//! The order's `actions` are read off the one transition table (issue 10 §5, v1.1).

use surge_engine::{
    OrderAction, OrderFacts, OrderStatus as S, TransitionRefusal, order_actions, order_transition,
};

const PLAIN: OrderFacts = OrderFacts {
    on_hold: false,
    refundable_amount: 0,
};
const PAID: OrderFacts = OrderFacts {
    on_hold: false,
    refundable_amount: 1999,
};
const HELD: OrderFacts = OrderFacts {
    on_hold: true,
    refundable_amount: 1999,
};

#[test]
fn actions_are_what_the_transition_table_allows() {
    let cases: [(S, OrderFacts, &[&str]); 11] = [
        (S::Reserved, PLAIN, &["pay", "cancel", "hold", "modify"]),
        (
            S::Confirmed,
            PAID,
            &["pick", "cancel", "hold", "modify", "refund"],
        ),
        (S::Packed, PAID, &["ship", "cancel", "hold", "refund"]),
        (S::Shipped, PAID, &["deliver", "return", "refund"]),
        (S::Delivered, PAID, &["complete", "return", "refund"]),
        (S::Cancelled, PAID, &["refund"]),
        (S::Returned, PLAIN, &[]),
        (S::Expired, PLAIN, &[]),
        // A hold stops the fulfilment path, not cancel, modify or refund.
        (
            S::Confirmed,
            HELD,
            &["cancel", "release_hold", "modify", "refund"],
        ),
        (S::Packed, HELD, &["cancel", "release_hold", "refund"]),
        (
            S::Reserved,
            HELD,
            &["pay", "cancel", "release_hold", "modify", "refund"],
        ),
    ];
    for (status, facts, expected) in cases {
        assert_eq!(
            order_actions(status, facts),
            expected,
            "{status} / {facts:?}"
        );
    }
    // Every action listed for any status is one the table takes it through.
    for &status in S::ALL {
        for facts in [PLAIN, PAID, HELD] {
            for name in order_actions(status, facts) {
                let action = OrderAction::ALL
                    .into_iter()
                    .find(|a| a.as_str() == name)
                    .expect("a known action");
                assert!(
                    order_transition(status, action, facts).is_ok(),
                    "{status}: {name}"
                );
            }
        }
    }
}

#[test]
fn a_hold_refuses_every_move_to_picking_packed_or_shipped() {
    use TransitionRefusal::{AlreadyThere, NotAllowed, OnHold};
    let cases = [
        (S::Confirmed, OrderAction::Pick, HELD, OnHold),
        // Not the next step either: still the hold that is named (API.md: while
        // held, a move to picking, packed or shipped answers `order_on_hold`).
        (S::Confirmed, OrderAction::Ship, HELD, OnHold),
        (S::Reserved, OrderAction::Pack, HELD, OnHold),
        // A step repeated where the order is stays a repeat.
        (S::Picking, OrderAction::Pick, HELD, AlreadyThere),
        (S::Packed, OrderAction::Hold, HELD, AlreadyThere),
        (S::Shipped, OrderAction::Hold, PAID, NotAllowed),
    ];
    for (status, action, facts, refusal) in cases {
        assert_eq!(
            order_transition(status, action, facts),
            Err(refusal),
            "{status} / {action:?} / {facts:?}"
        );
    }
}
