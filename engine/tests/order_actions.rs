//! The order's `actions` are read off the one transition table (issue 10 §5).

use surge_engine::{
    OrderAction, OrderStatus as S, PaymentStatus as P, order_actions, order_transition,
};

#[test]
fn actions_are_what_the_transition_table_allows() {
    let cases: [(S, P, &[&str]); 8] = [
        (S::Reserved, P::Unpaid, &["pay", "cancel"]),
        (S::Confirmed, P::Paid, &["pick", "cancel"]),
        (S::Packed, P::Paid, &["ship", "cancel"]),
        (S::Shipped, P::Paid, &["deliver"]),
        (S::Delivered, P::Paid, &["complete", "return"]),
        (S::Cancelled, P::RefundDue, &["refund"]),
        (S::Returned, P::Refunded, &[]),
        (S::Expired, P::Unpaid, &[]),
    ];
    for (status, payment, expected) in cases {
        assert_eq!(
            order_actions(status, payment),
            expected,
            "{status} / {payment}"
        );
    }
    // Every action listed for any status is one the table takes it through.
    for &status in S::ALL {
        for name in order_actions(status, P::Paid) {
            let action = OrderAction::ALL
                .into_iter()
                .find(|a| a.as_str() == name)
                .expect("a known action");
            assert!(order_transition(status, action).is_ok(), "{status}: {name}");
        }
    }
}
