//! The writer's command queue: bounded, many senders, one receiver, and a receiver
//! that never spins on a sender.
//!
//! It replaced crossbeam's bounded channel. There a sender claims a slot (a
//! compare-and-swap on the tail) before it writes the message and stamps the slot,
//! and a receiver that finds the head slot claimed but not stamped spins until it
//! is: `try_recv` included, with no yield. With 64 submitting threads on two cores a
//! sender preempted inside that window left the writer spinning on one core while
//! the sender waited for the other: stretches of 21-22 ms of the writer's CPU in
//! `Backoff::spin`, the longest writer iterations left (BENCHMARKS.md, "What is left of the
//! writer's maximum"). Here the queue is a `VecDeque` under a `parking_lot` mutex:
//! a sender holds the lock for a push, the writer for a whole batch's drain; a
//! holder preempted with the lock makes the other side park on the lock, not spin
//! past a few rounds. Senders wake the receiver only when it waits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub(crate) use crossbeam_channel::{RecvTimeoutError, SendError, TryRecvError, TrySendError};
use parking_lot::{Condvar, Mutex};

struct Inner<T> {
    state: Mutex<State<T>>,
    /// The receiver waits here for a message (or for the last sender to go).
    not_empty: Condvar,
    /// Blocking senders wait here for room (or for the receiver to go).
    not_full: Condvar,
    capacity: usize,
    /// `state.items.len()`, kept under the lock, read without it: the receiver
    /// looks here for a while before it sleeps.
    queued: AtomicUsize,
}

/// Rounds the receiver looks for a message before it sleeps: pauses of 1 to 64
/// spins, then three yields, as crossbeam's channel does before it parks. Without it every message of a closed loop paid a futex wake: the
/// closed-loop bench fell 9-19 %. Bounded, unlike the spin on a claimed slot.
const LOOK_ROUNDS: u32 = 10;
const SPIN_ROUNDS: u32 = 6;

struct State<T> {
    items: VecDeque<T>,
    senders: usize,
    receiver_alive: bool,
    receiver_waiting: bool,
    senders_waiting: usize,
}

/// A bounded queue of at most `capacity` messages (at least one).
pub(crate) fn bounded<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let capacity = capacity.max(1);
    let inner = Arc::new(Inner {
        state: Mutex::new(State {
            items: VecDeque::with_capacity(capacity.min(1 << 16)),
            senders: 1,
            receiver_alive: true,
            receiver_waiting: false,
            senders_waiting: 0,
        }),
        not_empty: Condvar::new(),
        not_full: Condvar::new(),
        capacity,
        queued: AtomicUsize::new(0),
    });
    (
        Sender {
            inner: Arc::clone(&inner),
        },
        Receiver { inner },
    )
}

pub(crate) struct Sender<T> {
    inner: Arc<Inner<T>>,
}

pub(crate) struct Receiver<T> {
    inner: Arc<Inner<T>>,
}

impl<T> Sender<T> {
    /// Queues `message` unless the queue is full or the receiver is gone.
    pub(crate) fn try_send(&self, message: T) -> Result<(), TrySendError<T>> {
        let state = self.inner.state.lock();
        if !state.receiver_alive {
            return Err(TrySendError::Disconnected(message));
        }
        if state.items.len() >= self.inner.capacity {
            return Err(TrySendError::Full(message));
        }
        self.push(state, message);
        Ok(())
    }

    /// Queues `message`, waiting for room; fails only when the receiver is gone.
    pub(crate) fn send(&self, message: T) -> Result<(), SendError<T>> {
        let mut state = self.inner.state.lock();
        loop {
            if !state.receiver_alive {
                return Err(SendError(message));
            }
            if state.items.len() < self.inner.capacity {
                break;
            }
            state.senders_waiting += 1;
            self.inner.not_full.wait(&mut state);
            state.senders_waiting -= 1;
        }
        self.push(state, message);
        Ok(())
    }

    fn push(&self, mut state: parking_lot::MutexGuard<'_, State<T>>, message: T) {
        state.items.push_back(message);
        self.inner
            .queued
            .store(state.items.len(), Ordering::Release);
        let wake = state.receiver_waiting;
        drop(state);
        if wake {
            self.inner.not_empty.notify_one();
        }
    }

    /// Messages queued now (without the lock, which the writer holds for a whole
    /// batch's drain).
    pub(crate) fn len(&self) -> usize {
        self.inner.queued.load(Ordering::Acquire)
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.inner.state.lock().senders += 1;
        Sender {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut state = self.inner.state.lock();
        state.senders -= 1;
        let last = state.senders == 0;
        drop(state);
        if last {
            self.inner.not_empty.notify_all();
        }
    }
}

impl<T> Receiver<T> {
    /// The next message, if one is queued: never waits.
    pub(crate) fn try_recv(&self) -> Result<T, TryRecvError> {
        let mut state = self.inner.state.lock();
        match state.items.pop_front() {
            Some(message) => {
                self.made_room(state);
                Ok(message)
            }
            None if state.senders == 0 => Err(TryRecvError::Disconnected),
            None => Err(TryRecvError::Empty),
        }
    }

    /// The next message, waiting up to `timeout` for one.
    pub(crate) fn recv_timeout(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        let deadline = Instant::now().checked_add(timeout);
        let mut state = self.inner.state.lock();
        let mut looked = false;
        loop {
            if let Some(message) = state.items.pop_front() {
                self.made_room(state);
                return Ok(message);
            }
            if state.senders == 0 {
                return Err(RecvTimeoutError::Disconnected);
            }
            if !looked {
                // Look a little while before sleeping, without the lock; then check
                // again under it.
                looked = true;
                drop(state);
                self.look_for_a_message();
                state = self.inner.state.lock();
                continue;
            }
            state.receiver_waiting = true;
            let timed_out = match deadline {
                Some(deadline) => self
                    .inner
                    .not_empty
                    .wait_until(&mut state, deadline)
                    .timed_out(),
                None => {
                    self.inner.not_empty.wait(&mut state);
                    false
                }
            };
            state.receiver_waiting = false;
            if timed_out && state.items.is_empty() {
                return Err(if state.senders == 0 {
                    RecvTimeoutError::Disconnected
                } else {
                    RecvTimeoutError::Timeout
                });
            }
        }
    }

    /// Moves queued messages into `out` under one hold of the lock, oldest first,
    /// while `take` accepts the next one (it sees each before it is moved); never
    /// waits. How many it moved.
    pub(crate) fn drain_while(&self, out: &mut Vec<T>, mut take: impl FnMut(&T) -> bool) -> usize {
        let mut state = self.inner.state.lock();
        let mut moved = 0;
        while let Some(next) = state.items.front() {
            if !take(next) {
                break;
            }
            out.push(state.items.pop_front().expect("a front"));
            moved += 1;
        }
        if moved > 0 {
            self.made_room(state);
        }
        moved
    }

    /// Whether a message came within [`LOOK_ROUNDS`].
    fn look_for_a_message(&self) -> bool {
        for round in 0..LOOK_ROUNDS {
            if round <= SPIN_ROUNDS {
                for _ in 0..1u32 << round {
                    std::hint::spin_loop();
                }
            } else {
                std::thread::yield_now();
            }
            if self.inner.queued.load(Ordering::Acquire) > 0 {
                return true;
            }
        }
        false
    }

    fn made_room(&self, state: parking_lot::MutexGuard<'_, State<T>>) {
        self.inner
            .queued
            .store(state.items.len(), Ordering::Release);
        let wake = state.senders_waiting > 0;
        drop(state);
        if wake {
            self.inner.not_full.notify_all();
        }
    }
}

impl<T> Drop for Receiver<T> {
    /// Senders are refused from now on, and what is still queued is dropped (as
    /// crossbeam's channel did): a request's reply sender goes with it, so its
    /// caller hears that the engine stopped instead of waiting while any sender
    /// lives.
    fn drop(&mut self) {
        let mut state = self.inner.state.lock();
        state.receiver_alive = false;
        let left = std::mem::take(&mut state.items);
        self.inner.queued.store(0, Ordering::Release);
        drop(state);
        self.inner.not_full.notify_all();
        drop(left);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_empty_and_disconnected_are_told_apart() {
        let (tx, rx) = bounded::<u32>(2);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        tx.try_send(1).expect("room");
        tx.try_send(2).expect("room");
        assert_eq!(tx.try_send(3), Err(TrySendError::Full(3)));
        assert_eq!(tx.len(), 2);
        assert_eq!(rx.try_recv(), Ok(1));
        let mut out = Vec::new();
        assert_eq!(rx.drain_while(&mut out, |_| true), 1);
        assert_eq!(out, vec![2]);
        assert_eq!(
            rx.recv_timeout(Duration::from_millis(1)),
            Err(RecvTimeoutError::Timeout)
        );
        let second = tx.clone();
        drop(tx);
        second.try_send(4).expect("room");
        drop(second);
        // Queued messages outlive their senders; then the queue says so.
        assert_eq!(rx.try_recv(), Ok(4));
        assert_eq!(rx.try_recv(), Err(TryRecvError::Disconnected));
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Err(RecvTimeoutError::Disconnected)
        );
        let (tx, rx) = bounded::<u32>(1);
        drop(rx);
        assert_eq!(tx.try_send(5), Err(TrySendError::Disconnected(5)));
        assert_eq!(tx.send(6), Err(SendError(6)));
    }

    /// Dropping the receiver drops what was queued: a reply channel inside a
    /// message tells its caller, even while senders live.
    #[test]
    fn a_dropped_receiver_drops_what_was_queued() {
        let (tx, rx) = bounded::<tokio::sync::oneshot::Sender<u32>>(4);
        let (reply, mut answer) = tokio::sync::oneshot::channel();
        tx.try_send(reply).expect("room");
        assert_eq!(tx.len(), 1);
        drop(rx);
        assert_eq!(tx.len(), 0);
        assert_eq!(
            answer.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        );
    }

    #[test]
    fn drain_while_stops_where_told_and_keeps_the_order() {
        let (tx, rx) = bounded::<u32>(8);
        for i in 0..5 {
            tx.try_send(i).expect("room");
        }
        let mut out = Vec::new();
        let mut seen = 0;
        rx.drain_while(&mut out, |_| {
            seen += 1;
            seen <= 3
        });
        assert_eq!(out, vec![0, 1, 2]);
        assert_eq!(rx.try_recv(), Ok(3));
    }

    /// Many senders, a blocking send waiting for room, a receiver that waits: every
    /// message arrives once, each sender's in its order.
    #[test]
    fn every_message_arrives_once_in_each_senders_order() {
        const SENDERS: u64 = 8;
        const EACH: u64 = 20_000;
        let (tx, rx) = bounded::<(u64, u64)>(16);
        let threads: Vec<_> = (0..SENDERS)
            .map(|s| {
                let tx = tx.clone();
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        if s % 2 == 0 {
                            tx.send((s, i)).expect("receiver alive");
                        } else {
                            let mut message = (s, i);
                            loop {
                                match tx.try_send(message) {
                                    Ok(()) => break,
                                    Err(TrySendError::Full(m)) => {
                                        message = m;
                                        std::thread::yield_now();
                                    }
                                    Err(TrySendError::Disconnected(_)) => panic!("receiver gone"),
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        drop(tx);
        let mut next = vec![0u64; SENDERS as usize];
        let mut batch = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(first) => batch.push(first),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("stalled at {next:?}"),
            }
            rx.drain_while(&mut batch, |_| true);
            for (s, i) in batch.drain(..) {
                assert_eq!(i, next[s as usize], "sender {s}");
                next[s as usize] += 1;
            }
        }
        for thread in threads {
            thread.join().expect("sender");
        }
        assert_eq!(next, vec![EACH; SENDERS as usize]);
    }
}
