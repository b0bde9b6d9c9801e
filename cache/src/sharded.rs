//! A persistent map for the cache and the DNS index: items hashed by their key into shards, each shard a
//! vector sorted by key and shared between index generations until one of them changes it
//! (copy on write). An item costs its own size and nothing else (no tree or trie nodes, no
//! empty buckets, no key kept apart from an item that holds it), a clone costs the shard
//! pointers, and a change copies one shard. Shards are added as the map grows, so a shard
//! stays small.

use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// Entries per shard, on average, before the map quadruples its shards.
const GROW_AT: usize = 128;

/// Shards of a new map.
const FIRST_SHARDS: usize = 16;

/// What a map holds: an item that knows its key.
pub trait Item: Clone {
    type Key: Ord + Hash;
    fn key(&self) -> &Self::Key;
}

/// What is held shared (`Arc<T>`) and knows its key.
pub trait Keyed {
    type Key: Ord + Hash;
    fn key(&self) -> &Self::Key;
}

impl<T: Keyed> Item for Arc<T> {
    type Key = T::Key;
    fn key(&self) -> &T::Key {
        T::key(self)
    }
}

/// A key and a value.
impl<K: Ord + Hash + Clone, V: Clone> Item for (K, V) {
    type Key = K;
    fn key(&self) -> &K {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct ShardedMap<T> {
    shards: Arc<Vec<Arc<Vec<T>>>>,
    len: usize,
}

impl<T> Default for ShardedMap<T> {
    fn default() -> Self {
        ShardedMap {
            shards: Arc::new((0..FIRST_SHARDS).map(|_| Arc::new(Vec::new())).collect()),
            len: 0,
        }
    }
}

fn hasher() -> foldhash::fast::FixedState {
    foldhash::fast::FixedState::with_seed(0x5ba4d)
}

impl<T: Item> ShardedMap<T> {
    fn shard_of(&self, key: &T::Key) -> usize {
        // The shard count is a power of two.
        (hasher().hash_one(key) as usize) & (self.shards.len() - 1)
    }

    fn find(shard: &[T], key: &T::Key) -> Result<usize, usize> {
        shard.binary_search_by(|item| item.key().cmp(key))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, key: &T::Key) -> Option<&T> {
        let shard = &self.shards[self.shard_of(key)];
        Self::find(shard, key).ok().map(|at| &shard[at])
    }

    /// The shard of `key`, this map's own copy.
    fn shard_mut(&mut self, key: &T::Key) -> &mut Vec<T> {
        let i = self.shard_of(key);
        Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[i])
    }

    /// The item of `key` to change in place (its key must stay).
    pub fn get_mut(&mut self, key: &T::Key) -> Option<&mut T> {
        // Only a present key's shard is copied.
        self.get(key)?;
        let shard = self.shard_mut(key);
        let at = Self::find(shard, key).ok()?;
        Some(&mut shard[at])
    }

    /// The item of `key`, inserted by `make` (an item with that key) when absent.
    pub fn get_or_insert_with(&mut self, key: &T::Key, make: impl FnOnce() -> T) -> &mut T {
        self.grow();
        let i = self.shard_of(key);
        let shard = Arc::make_mut(&mut Arc::make_mut(&mut self.shards)[i]);
        match Self::find(shard, key) {
            Ok(at) => &mut shard[at],
            Err(at) => {
                // Exactly: a shard holds no slack.
                shard.reserve_exact(1);
                shard.insert(at, make());
                self.len += 1;
                &mut shard[at]
            }
        }
    }

    /// Inserts `item`, returning the one of its key it replaced.
    pub fn insert(&mut self, item: T) -> Option<T> {
        self.grow();
        let shard = self.shard_mut(item.key());
        match Self::find(shard, item.key()) {
            Ok(at) => Some(std::mem::replace(&mut shard[at], item)),
            Err(at) => {
                shard.reserve_exact(1);
                shard.insert(at, item);
                self.len += 1;
                None
            }
        }
    }

    pub fn remove(&mut self, key: &T::Key) -> Option<T> {
        self.get(key)?;
        let shard = self.shard_mut(key);
        let at = Self::find(shard, key).ok()?;
        let item = shard.remove(at);
        self.len -= 1;
        Some(item)
    }

    /// Every item of `key`, in a map that holds several per key ([`Self::insert_among`]), in
    /// the order that sorted them there.
    pub fn get_all(&self, key: &T::Key) -> &[T] {
        let shard = &self.shards[self.shard_of(key)];
        let (start, len) = Self::equal_range(shard, key);
        &shard[start..start + len]
    }

    /// Inserts `item` among the items of its key, which `order` sorts (a map that holds
    /// several items per key; [`Self::insert`] and the lookups of one item do not apply to
    /// it). An item `order` finds equal to one held is not inserted again: false.
    pub fn insert_among(&mut self, item: T, order: impl Fn(&T, &T) -> std::cmp::Ordering) -> bool {
        if self
            .get_all(item.key())
            .binary_search_by(|held| order(held, &item))
            .is_ok()
        {
            return false;
        }
        self.grow();
        let shard = self.shard_mut(item.key());
        let (start, len) = Self::equal_range(shard, item.key());
        let at = start
            + shard[start..start + len]
                .binary_search_by(|held| order(held, &item))
                .unwrap_or_else(|at| at);
        shard.reserve_exact(1);
        shard.insert(at, item);
        self.len += 1;
        true
    }

    /// Keeps the items of `key` that `keep` accepts (of a map that holds several per key);
    /// `keep` may be asked twice of an item (the shard is copied only when one goes).
    pub fn retain_among(&mut self, key: &T::Key, mut keep: impl FnMut(&T) -> bool) {
        if self.get_all(key).iter().all(&mut keep) {
            return;
        }
        let shard = self.shard_mut(key);
        let (start, len) = Self::equal_range(shard, key);
        let kept: Vec<T> = shard.drain(start..start + len).filter(keep).collect();
        let gone = len - kept.len();
        shard.splice(start..start, kept);
        self.len -= gone;
    }

    fn equal_range(shard: &[T], key: &T::Key) -> (usize, usize) {
        let start = shard.partition_point(|item| item.key() < key);
        (
            start,
            shard[start..].partition_point(|item| item.key() == key),
        )
    }

    pub fn contains_key(&self, key: &T::Key) -> bool {
        self.get(key).is_some()
    }

    /// Every item, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.shards.iter().flat_map(|s| s.iter())
    }

    /// Quadruples the shards once they hold [`GROW_AT`] items each on average.
    fn grow(&mut self) {
        if self.len < self.shards.len() * GROW_AT {
            return;
        }
        let mut bigger: Vec<Vec<T>> = (0..self.shards.len() * 4).map(|_| Vec::new()).collect();
        let mask = bigger.len() - 1;
        for item in self.iter() {
            bigger[(hasher().hash_one(item.key()) as usize) & mask].push(item.clone());
        }
        for shard in &mut bigger {
            shard.sort_by(|a, b| a.key().cmp(b.key()));
            shard.shrink_to_fit();
        }
        self.shards = Arc::new(bigger.into_iter().map(Arc::new).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn a_sharded_map_agrees_with_a_btree_map_and_its_clones_do_not_see_later_changes() {
        let mut map: ShardedMap<(u32, u32)> = ShardedMap::default();
        let mut want = BTreeMap::new();
        let mut seen = Vec::new();
        // Enough keys to quadruple the shards; removals and replacements between.
        for i in 0..10_000u32 {
            let k = i.wrapping_mul(2_654_435_761) % 7_919;
            match i % 5 {
                0 => assert_eq!(map.remove(&k).map(|(_, v)| v), want.remove(&k)),
                1 => map.get_or_insert_with(&k, || (k, 0)).1 += 1,
                _ => assert_eq!(map.insert((k, i)).map(|(_, v)| v), want.insert(k, i)),
            }
            if i % 5 == 1 {
                *want.entry(k).or_insert(0) += 1;
            }
            if i % 1000 == 0 {
                seen.push((map.clone(), want.clone()));
            }
        }
        for (map, want) in seen.iter().chain([(map.clone(), want.clone())].iter()) {
            assert_eq!(map.len(), want.len());
            let got: BTreeMap<u32, u32> = map.iter().copied().collect();
            assert_eq!(&got, want);
            for k in 0..7_919 {
                assert_eq!(map.get(&k).map(|(_, v)| v), want.get(&k));
            }
        }
        assert!(map.shards.len() > FIRST_SHARDS, "grew");
    }

    #[test]
    fn a_map_of_several_items_per_key_keeps_each_keys_items_sorted_across_growth() {
        use std::collections::BTreeSet;
        let mut map: ShardedMap<(u32, u32)> = ShardedMap::default();
        let mut want: BTreeMap<u32, BTreeSet<u32>> = BTreeMap::new();
        let by_value = |a: &(u32, u32), b: &(u32, u32)| a.1.cmp(&b.1);
        for i in 0..20_000u32 {
            let k = i.wrapping_mul(2_654_435_761) % 3_001;
            let v = i % 7;
            if i % 4 == 0 {
                map.retain_among(&k, |(_, held)| *held != v);
                want.entry(k).or_default().remove(&v);
            } else {
                let added = map.insert_among((k, v), by_value);
                assert_eq!(added, want.entry(k).or_default().insert(v));
            }
        }
        assert!(map.shards.len() > FIRST_SHARDS, "grew");
        assert_eq!(map.len(), want.values().map(BTreeSet::len).sum::<usize>());
        for k in 0..3_001 {
            let got: Vec<u32> = map.get_all(&k).iter().map(|(_, v)| *v).collect();
            let want: Vec<u32> = want.get(&k).into_iter().flatten().copied().collect();
            assert_eq!(got, want, "key {k}");
        }
    }
}
