//! A vector that grows by whole chunks and never moves what it holds. A plain `Vec`
//! doubles by copying everything: with ten million orders that is a copy of gigabytes
//! on the writer thread, a stall every reply waits behind. Here growth allocates one
//! more chunk and nothing else.

use std::ops::{Index, IndexMut};

use bincode::Encode;
use bincode::enc::Encoder;
use bincode::error::EncodeError;

/// Items per chunk (a power of two, so indexing is a shift and a mask).
const CHUNK_LEN_LOG2: u32 = 16;
const CHUNK_LEN: usize = 1 << CHUNK_LEN_LOG2;

#[derive(Debug, Clone)]
pub(crate) struct ChunkedVec<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        ChunkedVec {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> ChunkedVec<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn push(&mut self, item: T) {
        if self.len.is_multiple_of(CHUNK_LEN) {
            self.chunks.push(Vec::with_capacity(CHUNK_LEN));
        }
        let chunk = self.chunks.last_mut().expect("a chunk with room");
        debug_assert!(chunk.len() < CHUNK_LEN);
        chunk.push(item);
        self.len += 1;
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        self.chunks
            .get(i >> CHUNK_LEN_LOG2)?
            .get(i & (CHUNK_LEN - 1))
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.chunks
            .get_mut(i >> CHUNK_LEN_LOG2)?
            .get_mut(i & (CHUNK_LEN - 1))
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> {
        self.chunks.iter().flatten()
    }

    /// The index of the first item for which `pred` is false, items being
    /// partitioned (all `true` first), like `slice::partition_point`.
    pub fn partition_point(&self, mut pred: impl FnMut(&T) -> bool) -> usize {
        let (mut lo, mut hi) = (0, self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if pred(&self[mid]) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

impl<T> From<Vec<T>> for ChunkedVec<T> {
    fn from(items: Vec<T>) -> Self {
        let mut out = ChunkedVec::default();
        for item in items {
            out.push(item);
        }
        out
    }
}

impl<T> Index<usize> for ChunkedVec<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        self.get(i).expect("index in bounds")
    }
}

impl<T> IndexMut<usize> for ChunkedVec<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        self.get_mut(i).expect("index in bounds")
    }
}

/// Encodes exactly like a `Vec<T>` (length, then the items), so snapshots decode
/// into a plain `Vec`.
impl<T: Encode> Encode for ChunkedVec<T> {
    fn encode<E: Encoder>(&self, encoder: &mut E) -> Result<(), EncodeError> {
        (self.len as u64).encode(encoder)?;
        for item in self.iter() {
            item.encode(encoder)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indexes_across_chunks_and_encodes_like_a_vec() {
        let n = CHUNK_LEN * 2 + 3;
        let mut v = ChunkedVec::default();
        for i in 0..n {
            v.push(i as u32);
        }
        assert_eq!(v.len(), n);
        assert_eq!(v[CHUNK_LEN], CHUNK_LEN as u32);
        assert_eq!(v.get(n), None);
        v[5] = 99;
        assert_eq!(v.iter().next_back(), Some(&((n - 1) as u32)));
        assert_eq!(v.partition_point(|&x| x < 1000 || x == 99), 1000);
        let config = bincode::config::standard()
            .with_little_endian()
            .with_fixed_int_encoding();
        let plain: Vec<u32> = v.iter().copied().collect();
        assert_eq!(
            bincode::encode_to_vec(&v, config).expect("encodes"),
            bincode::encode_to_vec(&plain, config).expect("encodes")
        );
    }
}
