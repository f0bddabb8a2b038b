//! Reservation storage. Ids are dense and increasing, so the newest reservations live
//! in a window indexed by `id - base`: no hashing, neighbours in memory. When the
//! window is full its oldest entries leave it: finished ones are forgotten, held ones
//! move to an overflow map until they end. Bounded either way.
//!
//! The overflow is a B-tree, not a hash map: it grows node by node as holds leave the
//! window in id order, where a hash table doubles and rehashes everything at once. At
//! millions of old holds that rehash (and the fresh pages of the doubled table) stopped
//! the writer for hundreds of milliseconds (`runtime/writer_iterations`, README). The
//! window itself takes its full room once it holds `EARLY_GROWTH_LEN` entries, so it
//! never doubles at hundreds of thousands (`engine_apply/place_2m_orders_growth`).

use std::collections::VecDeque;
use std::ops::Index;

use std::collections::BTreeMap;

use crate::domain::{ReservationId, ReservationStatus};
use crate::limits::FINISHED_RESERVATIONS_KEPT;
use crate::state::{EARLY_GROWTH_LEN, Reservation};

#[derive(Debug, Clone)]
pub(crate) struct Reservations {
    /// The id of `window[0]`.
    base: u64,
    window: VecDeque<Option<Reservation>>,
    /// Held reservations older than the window.
    overflow: BTreeMap<ReservationId, Reservation>,
    window_len_max: usize,
}

impl Default for Reservations {
    fn default() -> Self {
        Reservations::with_window(FINISHED_RESERVATIONS_KEPT)
    }
}

impl Reservations {
    pub fn with_window(window_len_max: usize) -> Reservations {
        assert!(window_len_max > 0);
        Reservations {
            base: 1,
            window: VecDeque::new(),
            overflow: BTreeMap::new(),
            window_len_max,
        }
    }

    pub fn get(&self, id: &ReservationId) -> Option<&Reservation> {
        match id.0.checked_sub(self.base) {
            Some(i) => self
                .window
                .get(usize::try_from(i).ok()?)
                .and_then(Option::as_ref),
            None => self.overflow.get(id),
        }
    }

    pub fn get_mut(&mut self, id: &ReservationId) -> Option<&mut Reservation> {
        match id.0.checked_sub(self.base) {
            Some(i) => self
                .window
                .get_mut(usize::try_from(i).ok()?)
                .and_then(Option::as_mut),
            None => self.overflow.get_mut(id),
        }
    }

    /// Add the next reservation: ids are handed out densely, in order.
    pub fn push(&mut self, reservation: Reservation) {
        if self.window.is_empty() && self.overflow.is_empty() {
            self.base = reservation.id.0;
        }
        assert_eq!(
            reservation.id.0,
            self.base + self.window.len() as u64,
            "reservation ids are dense"
        );
        self.window.push_back(Some(reservation));
        if self.window.len() == EARLY_GROWTH_LEN {
            // Take the window's full room now, while moving it is cheap: doubling
            // later copies up to half a million entries inside one command.
            self.window
                .reserve((self.window_len_max + 1).saturating_sub(EARLY_GROWTH_LEN));
        }
        while self.window.len() > self.window_len_max {
            let oldest = self.window.pop_front().expect("over the bound");
            self.base += 1;
            if let Some(r) = oldest.filter(|r| r.status == ReservationStatus::Held) {
                self.overflow.insert(r.id, r);
            }
        }
    }

    /// A held reservation in the overflow map finished: forget it.
    pub fn finished(&mut self, id: ReservationId) {
        if id.0 < self.base {
            self.overflow.remove(&id);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = &Reservation> {
        self.overflow.values().chain(self.window.iter().flatten())
    }

    pub fn len(&self) -> usize {
        self.overflow.len() + self.window.len()
    }

    /// Rebuild from a snapshot: `base` is the window's first id.
    pub fn restore(base: u64, mut all: Vec<Reservation>, window_len_max: usize) -> Reservations {
        all.sort_unstable_by_key(|r| r.id);
        let mut out = Reservations::with_window(window_len_max);
        out.base = base;
        for r in all {
            if r.id.0 < base {
                out.overflow.insert(r.id, r);
                continue;
            }
            let i = (r.id.0 - base) as usize;
            while out.window.len() < i {
                out.window.push_back(None);
            }
            out.window.push_back(Some(r));
        }
        out
    }

    pub fn base(&self) -> u64 {
        self.base
    }
}

impl Index<&ReservationId> for Reservations {
    type Output = Reservation;
    fn index(&self, id: &ReservationId) -> &Reservation {
        self.get(id).expect("reservation exists")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SkuIdx;

    fn hold(id: u64) -> Reservation {
        Reservation {
            id: ReservationId(id),
            lines: vec![(SkuIdx(0), 1)].into_boxed_slice(),
            status: ReservationStatus::Held,
            created_at_ms: 0,
            expires_at_ms: 10,
            order: None,
            customer: None,
        }
    }

    #[test]
    fn old_held_reservations_overflow_and_finished_ones_are_forgotten() {
        let mut rs = Reservations::with_window(3);
        for id in 1..=3 {
            rs.push(hold(id));
        }
        rs.get_mut(&ReservationId(2)).expect("in window").status = ReservationStatus::Released;
        rs.push(hold(4)); // 1 leaves the window, still held: overflow
        rs.push(hold(5)); // 2 leaves the window, released: forgotten
        assert_eq!(
            rs.get(&ReservationId(1)).map(|r| r.status),
            Some(ReservationStatus::Held)
        );
        assert!(rs.get(&ReservationId(2)).is_none());
        assert_eq!(rs.len(), 4);
        rs.get_mut(&ReservationId(1)).expect("overflow").status = ReservationStatus::Expired;
        rs.finished(ReservationId(1));
        assert!(rs.get(&ReservationId(1)).is_none());
        assert!(rs.get(&ReservationId(6)).is_none());
        // A snapshot round trip keeps the same layout.
        let all: Vec<Reservation> = rs.iter().cloned().collect();
        let mut restored = Reservations::restore(rs.base(), all, 3);
        assert_eq!(restored.base(), rs.base());
        let ids = |r: &Reservations| {
            let mut ids: Vec<u64> = r.iter().map(|r| r.id.0).collect();
            ids.sort_unstable();
            ids
        };
        assert_eq!(ids(&restored), ids(&rs));
        restored.push(hold(6));
        assert!(restored.get(&ReservationId(6)).is_some());
    }
}
