//! Sync planning, pure: given what git says (key -> content hash) and what the cluster
//! holds (key -> hash and owning gitops object), decide what to create, update and delete.
//! Objects that exist but are not owned by this gitops object (created by hand, or owned by
//! another gitops object) are never touched: they are reported as conflicts.
//!
//! Keys and hashes are opaque strings chosen by the caller (the agent uses something like
//! `kind/group/name` and a hash of the normalised definition).

use std::collections::BTreeMap;

/// What the cluster holds under one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actual {
    /// Content hash of the stored definition.
    pub hash: String,
    /// The gitops object that created it; `None` when it was applied by hand.
    pub owner: Option<String>,
}

impl Actual {
    pub fn new(hash: impl Into<String>, owner: Option<&str>) -> Self {
        Actual {
            hash: hash.into(),
            owner: owner.map(str::to_string),
        }
    }
}

/// The actions of one sync; every list is sorted by key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncPlan {
    /// In git, absent from the cluster.
    pub create: Vec<String>,
    /// In git and owned by this owner, with different content.
    pub update: Vec<String>,
    /// Owned by this owner but no longer in git.
    pub delete: Vec<String>,
    /// In git and owned by this owner, same content.
    pub unchanged: Vec<String>,
    /// In git but held by someone else (by hand or another gitops object): left alone.
    pub conflicts: Vec<(String, String)>,
}

impl SyncPlan {
    /// True when applying the plan would change nothing.
    pub fn is_noop(&self) -> bool {
        self.create.is_empty() && self.update.is_empty() && self.delete.is_empty()
    }
}

/// Computes the sync plan of gitops object `owner`.
pub fn plan_sync(
    owner: &str,
    desired: &BTreeMap<String, String>,
    actual: &BTreeMap<String, Actual>,
) -> SyncPlan {
    let mut plan = SyncPlan::default();
    for (key, hash) in desired {
        match actual.get(key) {
            None => plan.create.push(key.clone()),
            Some(a) => match a.owner.as_deref() {
                Some(o) if o == owner => {
                    if &a.hash == hash {
                        plan.unchanged.push(key.clone());
                    } else {
                        plan.update.push(key.clone());
                    }
                }
                Some(other) => plan
                    .conflicts
                    .push((key.clone(), format!("owned by gitops {other}"))),
                None => plan.conflicts.push((
                    key.clone(),
                    "exists and was not created by gitops (applied by hand)".to_string(),
                )),
            },
        }
    }
    for (key, a) in actual {
        if a.owner.as_deref() == Some(owner) && !desired.contains_key(key) {
            plan.delete.push(key.clone());
        }
    }
    plan
}

/// Keys owned by `owner` whose content in the cluster differs from git (drift).
pub fn drifted(
    owner: &str,
    desired: &BTreeMap<String, String>,
    actual: &BTreeMap<String, Actual>,
) -> Vec<String> {
    desired
        .iter()
        .filter(|(key, hash)| {
            actual
                .get(*key)
                .is_some_and(|a| a.owner.as_deref() == Some(owner) && &a.hash != *hash)
        })
        .map(|(key, _)| key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(items: &[(&str, &str)]) -> BTreeMap<String, String> {
        items
            .iter()
            .map(|(k, h)| (k.to_string(), h.to_string()))
            .collect()
    }

    fn actual(items: &[(&str, &str, Option<&str>)]) -> BTreeMap<String, Actual> {
        items
            .iter()
            .map(|(k, h, o)| (k.to_string(), Actual::new(*h, *o)))
            .collect()
    }

    fn keys(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn full_plan() {
        let d = desired(&[
            ("containers/app/new", "h1"),
            ("containers/app/same", "h2"),
            ("containers/app/changed", "h3"),
            ("containers/app/byhand", "h4"),
            ("containers/app/other", "h5"),
        ]);
        let a = actual(&[
            ("containers/app/same", "h2", Some("gitops/g/me")),
            ("containers/app/changed", "OLD", Some("gitops/g/me")),
            ("containers/app/byhand", "h4", None),
            ("containers/app/other", "h5", Some("gitops/g/them")),
            ("containers/app/gone", "h6", Some("gitops/g/me")),
            ("containers/app/unrelated", "h7", None),
            ("containers/app/theirs", "h8", Some("gitops/g/them")),
        ]);
        let plan = plan_sync("gitops/g/me", &d, &a);
        assert_eq!(
            plan,
            SyncPlan {
                create: keys(&["containers/app/new"]),
                update: keys(&["containers/app/changed"]),
                delete: keys(&["containers/app/gone"]),
                unchanged: keys(&["containers/app/same"]),
                conflicts: vec![
                    (
                        "containers/app/byhand".to_string(),
                        "exists and was not created by gitops (applied by hand)".to_string()
                    ),
                    (
                        "containers/app/other".to_string(),
                        "owned by gitops gitops/g/them".to_string()
                    ),
                ],
            }
        );
        assert!(!plan.is_noop());
    }

    #[test]
    fn empty_inputs() {
        let plan = plan_sync("me", &BTreeMap::new(), &BTreeMap::new());
        assert_eq!(plan, SyncPlan::default());
        assert!(plan.is_noop());
    }

    #[test]
    fn everything_removed_from_git_deletes_only_owned() {
        let a = actual(&[
            ("a", "1", Some("me")),
            ("b", "2", Some("you")),
            ("c", "3", None),
        ]);
        let plan = plan_sync("me", &BTreeMap::new(), &a);
        assert_eq!(plan.delete, keys(&["a"]));
        assert!(plan.create.is_empty() && plan.update.is_empty() && plan.conflicts.is_empty());
    }

    #[test]
    fn in_sync_is_noop() {
        let d = desired(&[("a", "1"), ("b", "2")]);
        let a = actual(&[("a", "1", Some("me")), ("b", "2", Some("me"))]);
        let plan = plan_sync("me", &d, &a);
        assert_eq!(plan.unchanged, keys(&["a", "b"]));
        assert!(plan.is_noop());
    }

    #[test]
    fn drift_only_owned_and_different() {
        let d = desired(&[("a", "1"), ("b", "2"), ("c", "3"), ("d", "4"), ("e", "5")]);
        let a = actual(&[
            ("a", "1", Some("me")),
            ("b", "X", Some("me")),
            ("c", "X", Some("you")),
            ("d", "X", None),
            ("z", "X", Some("me")),
        ]);
        assert_eq!(drifted("me", &d, &a), keys(&["b"]));
    }
}
