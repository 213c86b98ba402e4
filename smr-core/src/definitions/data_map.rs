//! The string map of `configuration`, `secret` and `resource` objects.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A string map kept sorted by key in one allocation of `(key, value)` pairs.
///
/// It holds the data of every configuration, secret and resource object in the state, which has
/// one copy of each object per node. A `BTreeMap` spends a 544-byte node on a map of one or two
/// keys, more than the rest of such an object (issue 14: resident memory per object). Lookups are
/// binary searches; an insert moves the pairs after it (these maps are small and are read far
/// more than written). Reads, writes and compares exactly like the `BTreeMap<String, String>` it
/// replaces: serialized as a map in key order, a key given twice keeps its last value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct DataMap(Vec<(String, String)>);

impl DataMap {
    pub fn new() -> DataMap {
        DataMap(Vec::new())
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find<Q: Ord + ?Sized>(&self, key: &Q) -> Result<usize, usize>
    where
        String: Borrow<Q>,
    {
        self.0
            .binary_search_by(|(k, _)| Borrow::<Q>::borrow(k).cmp(key))
    }

    pub fn get<Q: Ord + ?Sized>(&self, key: &Q) -> Option<&String>
    where
        String: Borrow<Q>,
    {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key<Q: Ord + ?Sized>(&self, key: &Q) -> bool
    where
        String: Borrow<Q>,
    {
        self.find(key).is_ok()
    }

    /// Sets `key` to `value`; returns the value it replaced.
    pub fn insert(&mut self, key: String, value: String) -> Option<String> {
        match self.find(key.as_str()) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove<Q: Ord + ?Sized>(&mut self, key: &Q) -> Option<String>
    where
        String: Borrow<Q>,
    {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    /// Pairs in key order.
    pub fn iter(
        &self,
    ) -> impl DoubleEndedIterator<Item = (&String, &String)> + ExactSizeIterator + Clone {
        self.0.iter().map(|(k, v)| (k, v))
    }

    /// Pairs in key order, values mutable.
    pub fn iter_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = (&String, &mut String)> + ExactSizeIterator {
        self.0.iter_mut().map(|(k, v)| (&*k, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator + Clone {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator + Clone {
        self.0.iter().map(|(_, v)| v)
    }

    pub fn values_mut(
        &mut self,
    ) -> impl DoubleEndedIterator<Item = &mut String> + ExactSizeIterator {
        self.0.iter_mut().map(|(_, v)| v)
    }
}

impl fmt::Debug for DataMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl From<BTreeMap<String, String>> for DataMap {
    fn from(map: BTreeMap<String, String>) -> DataMap {
        // Sorted and unique already; the exact length is allocated.
        DataMap(map.into_iter().collect())
    }
}

impl<const N: usize> From<[(String, String); N]> for DataMap {
    fn from(pairs: [(String, String); N]) -> DataMap {
        pairs.into_iter().collect()
    }
}

impl FromIterator<(String, String)> for DataMap {
    /// A key given twice keeps its last value, as `BTreeMap` does.
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> DataMap {
        DataMap::from(iter.into_iter().collect::<BTreeMap<_, _>>())
    }
}

impl Extend<(String, String)> for DataMap {
    fn extend<I: IntoIterator<Item = (String, String)>>(&mut self, iter: I) {
        for (k, v) in iter {
            self.insert(k, v);
        }
    }
}

impl IntoIterator for DataMap {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a DataMap {
    type Item = (&'a String, &'a String);
    type IntoIter = std::iter::Map<
        std::slice::Iter<'a, (String, String)>,
        fn(&'a (String, String)) -> (&'a String, &'a String),
    >;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter().map(|(k, v)| (k, v))
    }
}

impl<Q: Ord + ?Sized> std::ops::Index<&Q> for DataMap
where
    String: Borrow<Q>,
{
    type Output = String;
    /// Panics when `key` is absent, as `BTreeMap`'s index does.
    fn index(&self, key: &Q) -> &String {
        self.get(key).expect("no entry found for key")
    }
}

impl Serialize for DataMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for DataMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DataMap, D::Error> {
        BTreeMap::<String, String>::deserialize(d).map(DataMap::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(map: &DataMap) -> Vec<(&str, &str)> {
        map.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
    }

    #[test]
    fn keeps_keys_sorted_and_unique_like_a_btreemap() {
        let mut map = DataMap::new();
        assert_eq!(map.insert("b".into(), "1".into()), None);
        assert_eq!(map.insert("a".into(), "2".into()), None);
        assert_eq!(map.insert("c".into(), "3".into()), None);
        assert_eq!(map.insert("b".into(), "4".into()), Some("1".into()));
        assert_eq!(pairs(&map), [("a", "2"), ("b", "4"), ("c", "3")]);
        assert_eq!(map.get("b").map(String::as_str), Some("4"));
        assert_eq!(map["c"], "3");
        assert!(map.contains_key("a") && !map.contains_key("d"));
        assert_eq!(map.remove("a"), Some("2".into()));
        assert_eq!(pairs(&map), [("b", "4"), ("c", "3")]);
        let collected: DataMap = [
            ("y".to_string(), "1".to_string()),
            ("x".into(), "2".into()),
            ("y".into(), "3".into()),
        ]
        .into_iter()
        .collect();
        assert_eq!(pairs(&collected), [("x", "2"), ("y", "3")]);
    }

    #[test]
    fn reads_and_writes_as_the_btreemap_did() {
        let json = r#"{"z":"1","a":"2","m":"3","a":"4"}"#;
        let map: DataMap = serde_json::from_str(json).unwrap();
        let btree: BTreeMap<String, String> = serde_json::from_str(json).unwrap();
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            serde_json::to_string(&btree).unwrap()
        );
        assert_eq!(map, DataMap::from(btree.clone()));
        assert_eq!(format!("{map:?}"), format!("{btree:?}"));
    }
}
