//! [`ShardedIndex`]: a string-keyed hash index split over many small tables.
//!
//! A hash table grows by doubling: the insert that crosses its load factor moves
//! every entry into a table twice the size. For the index of order numbers that is
//! millions of entries moved inside one command on the writer, a pause of tens to
//! hundreds of milliseconds every doubling. Split over [`SHARDS`] tables chosen by
//! the top bits of the key's hash, each doubling moves 1/[`SHARDS`] of the entries;
//! the hash is computed once and serves both the choice of table and the lookup.
//!
//! Which bits pick the table matters. hashbrown keeps the top 7 bits of the hash as
//! each slot's tag and compares keys only where the tag matches; it places entries
//! by the low bits. Taken from the top, the table's bits would be the same for every
//! key in a table, so every tag would match and every probe would compare strings
//! (a cache miss per occupied slot probed). The table is picked by the 8 bits just
//! below the tag, which neither the tag nor any table of fewer than 2^49 slots uses.

use std::hash::BuildHasher;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};

/// Tables in an index: a power of two; `SHARD_BITS` bits of the hash, just below
/// hashbrown's 7-bit tag, pick one.
pub(crate) const SHARDS: usize = 1 << SHARD_BITS;
const SHARD_BITS: u32 = 8;
/// The bits of the hash hashbrown keeps as a slot's tag: the top 7.
const TAG_BITS: u32 = 7;

/// One of the tables: entries are (key, value).
type Shard<V> = HashTable<(Arc<str>, V)>;

/// A map from `Arc<str>` keys to small `Copy` values, grown table by table.
#[derive(Clone)]
pub(crate) struct ShardedIndex<V> {
    shards: Box<[Shard<V>]>,
    hasher: DefaultHashBuilder,
    len: usize,
}

impl<V: Copy> ShardedIndex<V> {
    pub(crate) fn new() -> ShardedIndex<V> {
        ShardedIndex {
            shards: (0..SHARDS).map(|_| HashTable::new()).collect(),
            hasher: DefaultHashBuilder::default(),
            len: 0,
        }
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn shard_of(hash: u64) -> usize {
        ((hash >> (u64::BITS - TAG_BITS - SHARD_BITS)) as usize) & (SHARDS - 1)
    }

    pub(crate) fn get(&self, key: &str) -> Option<&V> {
        let hash = self.hash(key);
        self.shards[Self::shard_of(hash)]
            .find(hash, |(k, _)| &**k == key)
            .map(|(_, v)| v)
    }

    /// Insert or replace; answers the value replaced.
    pub(crate) fn insert(&mut self, key: Arc<str>, value: V) -> Option<V> {
        let hash = self.hash(&key);
        let hasher = &self.hasher;
        let shard = &mut self.shards[Self::shard_of(hash)];
        if let Some((_, old)) = shard.find_mut(hash, |(k, _)| *k == key) {
            return Some(std::mem::replace(old, value));
        }
        shard.insert_unique(hash, (key, value), |(k, _)| hasher.hash_one(&**k));
        self.len += 1;
        None
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl<V: Copy> Default for ShardedIndex<V> {
    fn default() -> ShardedIndex<V> {
        ShardedIndex::new()
    }
}

impl<V: Copy> FromIterator<(Arc<str>, V)> for ShardedIndex<V> {
    fn from_iter<I: IntoIterator<Item = (Arc<str>, V)>>(entries: I) -> ShardedIndex<V> {
        let mut index = ShardedIndex::new();
        for (key, value) in entries {
            index.insert(key, value);
        }
        index
    }
}

impl<V: std::fmt::Debug> std::fmt::Debug for ShardedIndex<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.shards.iter().flatten().map(|(k, v)| (k, v)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_what_it_holds_and_replaces_in_place() {
        let mut index = ShardedIndex::new();
        for i in 0..10_000u32 {
            assert_eq!(index.insert(Arc::from(format!("n{i}")), i), None);
        }
        assert_eq!(index.len(), 10_000);
        for i in 0..10_000u32 {
            assert_eq!(index.get(&format!("n{i}")), Some(&i));
        }
        assert_eq!(index.get("n10000"), None);
        assert_eq!(index.insert(Arc::from("n7"), 70), Some(7));
        assert_eq!(index.get("n7"), Some(&70));
        assert_eq!(index.len(), 10_000);
        // The keys spread over the tables: none holds more than twice its share.
        let most = index.shards.iter().map(Shard::len).max().unwrap_or(0);
        assert!(most <= 2 * 10_000 / SHARDS, "{most}");
        // Within a table the keys' tags (the hash's top 7 bits) still vary, so a
        // probe compares keys only where the tag matches: 10 000 keys over 256
        // tables are ~39 a table, which show ~34 of the 128 tags on average when the
        // tags are free of the table's bits, and one tag when they pick the table.
        let mut tags_in_shard = vec![std::collections::HashSet::new(); SHARDS];
        for i in 0..10_000u32 {
            let hash = index.hash(&format!("n{i}"));
            tags_in_shard[ShardedIndex::<u32>::shard_of(hash)]
                .insert(hash >> (u64::BITS - TAG_BITS));
        }
        let fewest = tags_in_shard
            .iter()
            .map(|tags| tags.len())
            .min()
            .unwrap_or(0);
        assert!(fewest >= 10, "a table's keys share {fewest} tags");
        let collected: ShardedIndex<u32> = [(Arc::from("a"), 1), (Arc::from("b"), 2)]
            .into_iter()
            .collect();
        assert_eq!(
            (collected.get("a"), collected.get("b")),
            (Some(&1), Some(&2))
        );
    }
}
