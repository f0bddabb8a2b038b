//! [`Few`]: a list that keeps up to three items inline and more on the heap.
//!
//! An order view is built for every order answer (create, pay, cancel...) and
//! dropped once the answer is written; most orders have one line and a few history
//! entries, so the view's lists would be two small allocations per answer. Inline,
//! they cost none: the view's one box holds them. A `Few` reads as a slice (`Deref`),
//! and encodes exactly as a `Vec` of the same items (the views are a disk format:
//! stored idempotency answers).

use std::ops::{Deref, DerefMut};

use bincode::de::{BorrowDecoder, Decoder};
use bincode::enc::Encoder;
use bincode::error::{DecodeError, EncodeError};
use bincode::{BorrowDecode, Decode, Encode};

/// Up to three items inline, more in a vector. Compares, prints and encodes as the
/// slice of its items, however they are kept.
#[derive(Clone)]
pub struct Few<T>(Repr<T>);

#[derive(Clone)]
enum Repr<T> {
    One([T; 1]),
    Two([T; 2]),
    Three([T; 3]),
    /// None (without allocating) or more than three (or decoded: kept as read).
    Heap(Vec<T>),
}

impl<T> Few<T> {
    pub const fn new() -> Few<T> {
        Few(Repr::Heap(Vec::new()))
    }

    pub fn as_slice(&self) -> &[T] {
        match &self.0 {
            Repr::One(a) => a,
            Repr::Two(a) => a,
            Repr::Three(a) => a,
            Repr::Heap(v) => v,
        }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        match &mut self.0 {
            Repr::One(a) => a,
            Repr::Two(a) => a,
            Repr::Three(a) => a,
            Repr::Heap(v) => v,
        }
    }

    /// `f` of each item of `items`, inline when there are three or fewer: built in
    /// place, no allocation.
    pub fn map_slice<S>(items: &[S], mut f: impl FnMut(&S) -> T) -> Few<T> {
        Few(match items {
            [a] => Repr::One([f(a)]),
            [a, b] => Repr::Two([f(a), f(b)]),
            [a, b, c] => Repr::Three([f(a), f(b), f(c)]),
            _ => Repr::Heap(items.iter().map(f).collect()),
        })
    }

    /// Keep the first `len` items (all of them if there are fewer).
    pub fn truncate(&mut self, len: usize) {
        if len < self.len() {
            let mut items = std::mem::take(self).into_vec();
            items.truncate(len);
            *self = Few::from(items);
        }
    }

    pub fn into_vec(self) -> Vec<T> {
        match self.0 {
            Repr::One(a) => Vec::from(a),
            Repr::Two(a) => Vec::from(a),
            Repr::Three(a) => Vec::from(a),
            Repr::Heap(v) => v,
        }
    }
}

impl<T> Default for Few<T> {
    fn default() -> Few<T> {
        Few::new()
    }
}

impl<T> Deref for Few<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T> DerefMut for Few<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

/// Collected into a vector (see [`Few::map_slice`] for the inline form).
impl<T> FromIterator<T> for Few<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Few<T> {
        Few(Repr::Heap(iter.into_iter().collect()))
    }
}

impl<T> From<Vec<T>> for Few<T> {
    fn from(items: Vec<T>) -> Few<T> {
        Few(Repr::Heap(items))
    }
}

impl<T> From<Few<T>> for Vec<T> {
    fn from(few: Few<T>) -> Vec<T> {
        few.into_vec()
    }
}

impl<'a, T> IntoIterator for &'a Few<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl<T> IntoIterator for Few<T> {
    type Item = T;
    type IntoIter = IntoIter<T>;
    fn into_iter(self) -> IntoIter<T> {
        IntoIter(match self.0 {
            Repr::One(a) => IterRepr::One(a.into_iter()),
            Repr::Two(a) => IterRepr::Two(a.into_iter()),
            Repr::Three(a) => IterRepr::Three(a.into_iter()),
            Repr::Heap(v) => IterRepr::Heap(v.into_iter()),
        })
    }
}

/// The items of a [`Few`], by value.
pub struct IntoIter<T>(IterRepr<T>);

enum IterRepr<T> {
    One(std::array::IntoIter<T, 1>),
    Two(std::array::IntoIter<T, 2>),
    Three(std::array::IntoIter<T, 3>),
    Heap(std::vec::IntoIter<T>),
}

impl<T> Iterator for IntoIter<T> {
    type Item = T;
    fn next(&mut self) -> Option<T> {
        match &mut self.0 {
            IterRepr::One(i) => i.next(),
            IterRepr::Two(i) => i.next(),
            IterRepr::Three(i) => i.next(),
            IterRepr::Heap(i) => i.next(),
        }
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = match &self.0 {
            IterRepr::One(i) => i.len(),
            IterRepr::Two(i) => i.len(),
            IterRepr::Three(i) => i.len(),
            IterRepr::Heap(i) => i.len(),
        };
        (len, Some(len))
    }
}

impl<T> ExactSizeIterator for IntoIter<T> {}

impl<T: std::fmt::Debug> std::fmt::Debug for Few<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_slice().fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Few<T> {
    fn eq(&self, other: &Few<T>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Eq> Eq for Few<T> {}

impl<T: PartialEq> PartialEq<Vec<T>> for Few<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: PartialEq> PartialEq<[T]> for Few<T> {
    fn eq(&self, other: &[T]) -> bool {
        self.as_slice() == other
    }
}

/// As a `Vec<T>`: the length, then the items.
impl<T: Encode> Encode for Few<T> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        self.as_slice().encode(encoder)
    }
}

impl<T: Decode<Context>, Context> Decode<Context> for Few<T> {
    fn decode<D: Decoder<Context = Context>>(decoder: &mut D) -> Result<Few<T>, DecodeError> {
        Vec::<T>::decode(decoder).map(Few::from)
    }
}

impl<'de, T: BorrowDecode<'de, Context>, Context> BorrowDecode<'de, Context> for Few<T> {
    fn borrow_decode<D: BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Few<T>, DecodeError> {
        Vec::<T>::borrow_decode(decoder).map(Few::from)
    }
}

#[cfg(test)]
mod tests {
    use super::Few;

    fn encoded<T: bincode::Encode>(value: &T) -> Vec<u8> {
        bincode::encode_to_vec(value, bincode::config::standard()).expect("encodes")
    }

    #[test]
    fn reads_encodes_and_decodes_as_a_vec_at_every_length() {
        for n in 0..9u64 {
            let items: Vec<(u64, String)> = (0..n).map(|i| (i, format!("item {i}"))).collect();
            let few = Few::map_slice(&items, Clone::clone);
            assert_eq!(few, items.iter().cloned().collect::<Few<_>>());
            assert_eq!(few.len(), items.len());
            assert_eq!(few, items);
            assert_eq!(format!("{few:?}"), format!("{items:?}"));
            assert_eq!(encoded(&few), encoded(&items));
            let (decoded, _): (Few<(u64, String)>, usize) =
                bincode::decode_from_slice(&encoded(&items), bincode::config::standard())
                    .expect("decodes");
            assert_eq!(decoded, few);
            assert_eq!(few.clone().into_iter().collect::<Vec<_>>(), items);
            assert_eq!((&few).into_iter().count(), items.len());
            for len in 0..=n as usize + 1 {
                let mut cut = few.clone();
                cut.truncate(len);
                assert_eq!(cut, items[..len.min(items.len())].to_vec());
            }
        }
    }
}
