//! The deduplication window: the results of the last [`DEDUP_WINDOW`] operation ids.
//!
//! Looked up by id on every apply, so it is indexed (O(log n)) rather than scanned (a scan of
//! 10,000 ids was most of an apply's cost once the window had filled). Serialized as before: a
//! list of `(op_id, result)` pairs, oldest first.

use std::sync::Arc;

use imbl::{OrdMap, Vector};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{CommandResult, DEDUP_WINDOW};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RecentOps {
    /// Operation ids, oldest first.
    order: Vector<Arc<str>>,
    results: OrdMap<Arc<str>, Arc<CommandResult>>,
}

impl RecentOps {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The result of `op_id`, if it is in the window.
    pub fn get(&self, op_id: &str) -> Option<&CommandResult> {
        self.results.get(op_id).map(|r| &**r)
    }

    /// Remembers `op_id`'s result, forgetting the oldest beyond [`DEDUP_WINDOW`]. An id already
    /// in the window keeps its first result (the state machine never records one twice).
    pub fn push(&mut self, op_id: String, result: CommandResult) {
        if self.results.contains_key(op_id.as_str()) {
            return;
        }
        let op_id: Arc<str> = op_id.into();
        self.results.insert(Arc::clone(&op_id), Arc::new(result));
        self.order.push_back(op_id);
        while self.order.len() > DEDUP_WINDOW {
            if let Some(oldest) = self.order.pop_front() {
                self.results.remove(&*oldest);
            }
        }
    }

    /// `(op_id, result)` pairs, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &CommandResult)> {
        self.order
            .iter()
            .filter_map(|id| Some((&**id, &**self.results.get(&**id)?)))
    }
}

impl Serialize for RecentOps {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for RecentOps {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(String, CommandResult)>::deserialize(deserializer)?;
        let mut recent = RecentOps::default();
        for (op_id, result) in pairs {
            recent.push(op_id, result);
        }
        Ok(recent)
    }
}
