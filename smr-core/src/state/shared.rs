//! Persistent collections for [`ClusterState`](super::ClusterState).
//!
//! A clone shares everything with the original in O(1); a change copies only the path to what
//! changed (O(log n) tree nodes). A reader that holds a version of the state therefore no longer
//! makes the next write copy the whole state, and two versions can be compared in time
//! proportional to what differs ([`SharedMap::diff`]).
//!
//! Keys and values sit behind an `Arc`, so copying a tree node clones pointers, not definitions
//! or key strings. The API
//! follows `BTreeMap` and `VecDeque` where it can (readers see `&V`), and the serialized form is
//! theirs: a snapshot written before this type existed reads the same, and the other way round.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::RangeBounds;
use std::sync::Arc;

use imbl::{OrdMap, Vector};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A value shared between versions: equal when it is the same allocation (without looking
/// inside) or has equal contents. Opaque: it only appears in the iterator types.
pub struct Shared<V>(Arc<V>);

impl<V> Clone for Shared<V> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<V: PartialEq> PartialEq for Shared<V> {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}

/// An ordered map with structural sharing (a B+ tree of `Arc`ed keys and values).
pub struct SharedMap<K, V> {
    map: OrdMap<Arc<K>, Shared<V>>,
}

/// A difference between two versions of a [`SharedMap`] (see [`SharedMap::diff`]).
#[derive(Debug, PartialEq, Eq)]
pub enum MapChange<'a, K, V> {
    Added(&'a K, &'a V),
    Changed { key: &'a K, old: &'a V, new: &'a V },
    Removed(&'a K, &'a V),
}

type Pair<'a, K, V> = (&'a Arc<K>, &'a Shared<V>);

fn unshare<'a, K, V>((k, v): Pair<'a, K, V>) -> (&'a K, &'a V) {
    (k, &v.0)
}

/// Iterator over a [`SharedMap`]'s entries in key order.
pub type Iter<'a, K, V> = std::iter::Map<
    imbl::ordmap::Iter<'a, Arc<K>, Shared<V>, DefaultPtr>,
    fn(Pair<'a, K, V>) -> (&'a K, &'a V),
>;
/// Iterator over a key range of a [`SharedMap`].
pub type Range<'a, K, V> = std::iter::Map<
    imbl::ordmap::RangedIter<'a, Arc<K>, Shared<V>, DefaultPtr>,
    fn(Pair<'a, K, V>) -> (&'a K, &'a V),
>;
type DefaultPtr = imbl::shared_ptr::DefaultSharedPtr;

impl<K, V> SharedMap<K, V> {
    pub fn new() -> Self {
        SharedMap { map: OrdMap::new() }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// True when both are the same version (cheap; false does not prove they differ).
    pub fn ptr_eq(&self, other: &Self) -> bool {
        self.map.ptr_eq(&other.map)
    }
}

impl<K: Ord, V> SharedMap<K, V> {
    pub fn iter(&self) -> Iter<'_, K, V> {
        self.map.iter().map(unshare as fn(_) -> _)
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &K> + ExactSizeIterator {
        self.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.iter().map(|(_, v)| v)
    }
}

impl<K: Ord + Clone, V: Clone> SharedMap<K, V> {
    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|v| &*v.0)
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    /// The value for `key` to change in place (copied first if another version shares it).
    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.map.get_mut(key).map(|v| Arc::make_mut(&mut v.0))
    }

    /// The value for `key`, inserted with `default` first if absent, to change in place.
    pub fn get_or_insert_with(&mut self, key: K, default: impl FnOnce() -> V) -> &mut V {
        let slot = self
            .map
            .entry(Arc::new(key))
            .or_insert_with(|| Shared(Arc::new(default())));
        Arc::make_mut(&mut slot.0)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        self.map
            .insert(Arc::new(key), Shared(Arc::new(value)))
            .map(|old| Arc::unwrap_or_clone(old.0))
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.map.remove(key).map(|old| Arc::unwrap_or_clone(old.0))
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Keeps the entries `keep` says yes to.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let gone: Vec<Arc<K>> = self
            .map
            .iter()
            .filter(|(k, v)| !keep(k, &v.0))
            .map(|(k, _)| Arc::clone(k))
            .collect();
        for key in gone {
            self.map.remove(&*key);
        }
    }

    pub fn range<R: RangeBounds<K>>(&self, range: R) -> Range<'_, K, V> {
        self.map.range(range).map(unshare as fn(_) -> _)
    }

    pub fn first_key_value(&self) -> Option<(&K, &V)> {
        self.map.get_min().map(|(k, v)| (&**k, &*v.0))
    }

    pub fn last_key_value(&self) -> Option<(&K, &V)> {
        self.map.get_max().map(|(k, v)| (&**k, &*v.0))
    }
}

impl<K: Ord + Clone, V: Clone + PartialEq> SharedMap<K, V> {
    /// What differs from `before` to `self`, in key order. Subtrees the two versions share are
    /// skipped, so comparing a version with its successor costs about what changed.
    pub fn diff<'a>(&'a self, before: &'a Self) -> impl Iterator<Item = MapChange<'a, K, V>> {
        before.map.diff(&self.map).map(|item| match item {
            imbl::ordmap::DiffItem::Add(k, v) => MapChange::Added(&**k, &*v.0),
            imbl::ordmap::DiffItem::Update { old, new } => MapChange::Changed {
                key: &**new.0,
                old: &*old.1.0,
                new: &*new.1.0,
            },
            imbl::ordmap::DiffItem::Remove(k, v) => MapChange::Removed(&**k, &*v.0),
        })
    }
}

impl<K, V> Default for SharedMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Clone, V> Clone for SharedMap<K, V> {
    fn clone(&self) -> Self {
        SharedMap {
            map: self.map.clone(),
        }
    }
}

impl<K: Ord + PartialEq, V: PartialEq> PartialEq for SharedMap<K, V> {
    fn eq(&self, other: &Self) -> bool {
        self.map == other.map
    }
}

impl<K: Ord + Eq, V: Eq> Eq for SharedMap<K, V> {}

impl<K: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for SharedMap<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<'a, K: Ord, V> IntoIterator for &'a SharedMap<K, V> {
    type Item = (&'a K, &'a V);
    type IntoIter = Iter<'a, K, V>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<K: Ord + Clone, V: Clone> FromIterator<(K, V)> for SharedMap<K, V> {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut map = SharedMap::new();
        map.extend(iter);
        map
    }
}

impl<K: Ord + Clone, V: Clone> Extend<(K, V)> for SharedMap<K, V> {
    fn extend<I: IntoIterator<Item = (K, V)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl<K: Ord + Clone, V: Clone> std::ops::Index<&K> for SharedMap<K, V> {
    type Output = V;
    fn index(&self, key: &K) -> &V {
        self.get(key).expect("no entry for the key in SharedMap")
    }
}

impl<K: Ord + Clone, V: Clone> From<BTreeMap<K, V>> for SharedMap<K, V> {
    fn from(map: BTreeMap<K, V>) -> Self {
        map.into_iter().collect()
    }
}

impl<K: Ord + Clone, V: Clone, const N: usize> From<[(K, V); N]> for SharedMap<K, V> {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<K: Ord + Serialize, V: Serialize> Serialize for SharedMap<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de, K, V> Deserialize<'de> for SharedMap<K, V>
where
    K: Deserialize<'de> + Ord + Clone,
    V: Deserialize<'de> + Clone,
{
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        BTreeMap::<K, V>::deserialize(deserializer).map(SharedMap::from)
    }
}

/// A sequence with structural sharing (an RRB vector of `Arc`ed items): push at the back, pop
/// at the front, as the bounded logs of the state do.
pub struct SharedList<T> {
    items: Vector<Shared<T>>,
}

impl<T> SharedList<T> {
    pub fn new() -> Self {
        SharedList {
            items: Vector::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &T> + ExactSizeIterator {
        self.items.iter().map(|v| &*v.0)
    }

    pub fn get(&self, index: usize) -> Option<&T> {
        self.items.get(index).map(|v| &*v.0)
    }

    pub fn front(&self) -> Option<&T> {
        self.items.front().map(|v| &*v.0)
    }

    pub fn back(&self) -> Option<&T> {
        self.items.back().map(|v| &*v.0)
    }

    pub fn push_back(&mut self, item: T) {
        self.items.push_back(Shared(Arc::new(item)));
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }
}

impl<T: Clone> SharedList<T> {
    pub fn pop_front(&mut self) -> Option<T> {
        self.items.pop_front().map(|v| Arc::unwrap_or_clone(v.0))
    }
}

impl<T> Default for SharedList<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for SharedList<T> {
    fn clone(&self) -> Self {
        SharedList {
            items: self.items.clone(),
        }
    }
}

impl<T: PartialEq> PartialEq for SharedList<T> {
    fn eq(&self, other: &Self) -> bool {
        self.items == other.items
    }
}

impl<T: Eq> Eq for SharedList<T> {}

impl<T: fmt::Debug> fmt::Debug for SharedList<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl<T> FromIterator<T> for SharedList<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut list = SharedList::new();
        for item in iter {
            list.push_back(item);
        }
        list
    }
}

impl<T: Serialize> Serialize for SharedList<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for SharedList<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(deserializer).map(|items| items.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_map_behaves_like_a_btree_map() {
        let mut map: SharedMap<String, u32> = SharedMap::new();
        let mut reference = BTreeMap::new();
        for (i, word) in ["b", "d", "a", "c", "b", "e"].iter().enumerate() {
            assert_eq!(
                map.insert(word.to_string(), i as u32),
                reference.insert(word.to_string(), i as u32)
            );
        }
        assert_eq!(map.remove(&"d".to_string()), reference.remove("d"));
        assert_eq!(map.remove(&"zz".to_string()), None);
        *map.get_mut(&"a".to_string()).unwrap() += 10;
        *reference.get_mut("a").unwrap() += 10;
        map.retain(|_, v| *v != 3);
        reference.retain(|_, v| *v != 3);
        let all: Vec<(&String, &u32)> = map.iter().collect();
        assert_eq!(all, reference.iter().collect::<Vec<_>>());
        assert_eq!(
            map.range("b".to_string()..)
                .map(|(k, _)| k.as_str())
                .collect::<Vec<_>>(),
            ["b", "e"]
        );
        assert_eq!(map.first_key_value(), Some((&"a".to_string(), &12)));
        assert_eq!(map.last_key_value(), Some((&"e".to_string(), &5)));
        assert_eq!(map.len(), 3);
        assert_eq!(map[&"b".to_string()], 4);
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            serde_json::to_string(&reference).unwrap()
        );
        let back: SharedMap<String, u32> =
            serde_json::from_str(&serde_json::to_string(&reference).unwrap()).unwrap();
        assert_eq!(back, map);
    }

    #[test]
    fn a_clone_is_a_snapshot_and_diff_names_what_differs() {
        let mut map: SharedMap<u32, String> = (0..1000).map(|i| (i, format!("v{i}"))).collect();
        let before = map.clone();
        assert!(map.ptr_eq(&before));
        map.insert(5, "five".into());
        map.remove(&7);
        map.insert(2000, "new".into());
        map.get_or_insert_with(3000, || "made".into());
        assert_eq!(before.get(&5).map(String::as_str), Some("v5"));
        assert_eq!(before.len(), 1000);
        let changes: Vec<String> = map
            .diff(&before)
            .map(|c| match c {
                MapChange::Added(k, v) => format!("+{k}={v}"),
                MapChange::Changed { key, old, new } => format!("~{key}:{old}->{new}"),
                MapChange::Removed(k, v) => format!("-{k}={v}"),
            })
            .collect();
        assert_eq!(changes, ["~5:v5->five", "-7=v7", "+2000=new", "+3000=made"]);
        assert_eq!(before.diff(&before.clone()).count(), 0);
    }

    #[test]
    fn a_shared_list_pushes_back_and_pops_front() {
        let mut list: SharedList<u32> = (1..=3).collect();
        let snapshot = list.clone();
        list.push_back(4);
        assert_eq!(list.pop_front(), Some(1));
        assert_eq!(list.iter().copied().collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(snapshot.iter().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            (list.front(), list.back(), list.get(1)),
            (Some(&2), Some(&4), Some(&3))
        );
        assert_eq!(serde_json::to_string(&list).unwrap(), "[2,3,4]");
        let back: SharedList<u32> = serde_json::from_str("[2,3,4]").unwrap();
        assert_eq!(back, list);
    }
}
