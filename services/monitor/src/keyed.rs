//! [`Keyed`]: a map whose entries also have a stable position, so the board
//! can look a model version or a feature up once, keep its position, and reach
//! its ledger entry by index on every later event instead of searching a map
//! by string each time.
//!
//! It serializes exactly as a `BTreeMap` of the same entries (a map in key
//! order), so snapshots written before it existed load unchanged, and two
//! `Keyed` with the same entries are equal whatever order they were inserted in.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Entries never move and are never removed: a position stays valid for the
/// life of the map.
#[derive(Clone)]
pub struct Keyed<K, V> {
    values: Vec<V>,
    /// Key → position in `values`; also the order of iteration and serialization.
    order: BTreeMap<K, usize>,
}

impl<K, V> Default for Keyed<K, V> {
    fn default() -> Self {
        Self {
            values: Vec::new(),
            order: BTreeMap::new(),
        }
    }
}

impl<K: Ord, V> Keyed<K, V> {
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The position of `key`'s entry.
    pub fn position<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.order.get(key).copied()
    }

    /// The position of `key`'s entry, inserting `make()` under `to_owned()` first if there is none.
    pub fn position_or_insert<Q>(
        &mut self,
        key: &Q,
        to_owned: impl FnOnce(&Q) -> K,
        make: impl FnOnce() -> V,
    ) -> usize
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        if let Some(&at) = self.order.get(key) {
            return at;
        }
        let at = self.values.len();
        self.values.push(make());
        self.order.insert(to_owned(key), at);
        at
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.values.get(*self.order.get(key)?)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.values.get_mut(*self.order.get(key)?)
    }

    /// The entry at a position [`Keyed::position`] answered.
    pub fn at(&self, position: usize) -> Option<&V> {
        self.values.get(position)
    }

    pub fn at_mut(&mut self, position: usize) -> Option<&mut V> {
        self.values.get_mut(position)
    }

    /// Adds or replaces `key`'s entry.
    pub fn insert(&mut self, key: K, value: V) {
        match self.order.get(&key) {
            Some(&at) => {
                if let Some(slot) = self.values.get_mut(at) {
                    *slot = value;
                }
            }
            None => {
                self.order.insert(key, self.values.len());
                self.values.push(value);
            }
        }
    }

    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Ord + ?Sized,
    {
        self.order.contains_key(key)
    }

    /// Keeps the entries `keep` answers true for. Positions change: take them anew.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let mut values: Vec<Option<V>> = std::mem::take(&mut self.values)
            .into_iter()
            .map(Some)
            .collect();
        for (k, at) in std::mem::take(&mut self.order) {
            if let Some(v) = values.get_mut(at).and_then(Option::take) {
                if keep(&k, &v) {
                    self.insert(k, v);
                }
            }
        }
    }

    /// Entries in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.order
            .iter()
            .filter_map(|(k, &at)| self.values.get(at).map(|v| (k, v)))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.order.keys()
    }
}

impl<K: Ord, V> FromIterator<(K, V)> for Keyed<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut keyed = Self::default();
        for (k, v) in iter {
            keyed.insert(k, v);
        }
        keyed
    }
}

impl<K: Ord, V: PartialEq> PartialEq for Keyed<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<K: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for Keyed<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<K, Q, V> std::ops::Index<&Q> for Keyed<K, V>
where
    K: Ord + Borrow<Q>,
    Q: Ord + ?Sized,
{
    type Output = V;

    /// Like `BTreeMap`'s: panics when there is no entry (tests and tools read with it).
    fn index(&self, key: &Q) -> &V {
        self.get(key)
            .unwrap_or_else(|| panic!("Keyed: no entry for the key"))
    }
}

impl<K: Ord + Serialize, V: Serialize> Serialize for Keyed<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // The length first: postcard needs it.
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (k, v) in self.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de, K, V> Deserialize<'de> for Keyed<K, V>
where
    K: Ord + Deserialize<'de>,
    V: Deserialize<'de>,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let map = BTreeMap::<K, V>::deserialize(deserializer)?;
        Ok(map.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_stay_put_and_iteration_is_in_key_order() {
        let mut k: Keyed<String, u32> = Keyed::default();
        let b = k.position_or_insert("b", str::to_string, || 2);
        let a = k.position_or_insert("a", str::to_string, || 1);
        assert_eq!((b, a), (0, 1), "positions in order of insertion");
        assert_eq!(k.position_or_insert("b", str::to_string, || 99), b);
        if let Some(v) = k.at_mut(b) {
            *v += 10;
        }
        let entries: Vec<(&str, u32)> = k.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(entries, [("a", 1), ("b", 12)]);
        assert_eq!(k["b"], 12);
        assert_eq!(k.get("c"), None);
        assert_eq!(k.at(7), None);
        k.insert("a".into(), 5);
        assert_eq!((k.len(), k.get("a")), (2, Some(&5)));
        k.insert("c".into(), 7);
        k.retain(|key, _| key != "a");
        let entries: Vec<(&str, u32)> = k.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(entries, [("b", 12), ("c", 7)]);
        assert_eq!(k.position("c").and_then(|at| k.at(at)), Some(&7));
    }

    #[test]
    fn serializes_byte_for_byte_as_a_btreemap_and_compares_by_content() {
        let mut keyed: Keyed<String, u64> = Keyed::default();
        let mut map = BTreeMap::new();
        for (key, v) in [("zeta", 3u64), ("alpha", 1), ("mid", 300)] {
            keyed.insert(key.to_string(), v);
            map.insert(key.to_string(), v);
        }
        let bytes = postcard::to_stdvec(&keyed).expect("encode");
        assert_eq!(bytes, postcard::to_stdvec(&map).expect("encode"));
        let back: Keyed<String, u64> = postcard::from_bytes(&bytes).expect("decode");
        // Loaded in key order, inserted in another: equal all the same.
        assert_eq!(back, keyed);
        assert_eq!(
            serde_json::to_string(&keyed).expect("json"),
            serde_json::to_string(&map).expect("json")
        );
    }
}
