//! Docker names that two objects would share.
//!
//! smr names a `containers` definition's replicas `GROUP-NAME-N` and a `volume` object's Docker
//! volume `GROUP-NAME` (simplecontainer's naming). Group and name may themselves hold `-`, so
//! `a-b/c` and `a/b-c` both give `a-b-c` (and replicas `a-b-c-1`): the second would take over or
//! fight over the first one's containers or volume. Such a pair is refused when it is applied
//! (by hand, in one batch, or by a gitops sync), naming both objects. Replica names end in
//! `-INDEX` (digits only), so two replica names are equal exactly when their `GROUP-NAME` are.
//! Networks are named `smr.GROUP.NAME` (a dot is never in a group or name): no clash there.

use std::collections::{BTreeMap, BTreeSet};

use crate::definitions::{Kind, ObjectKey};

/// Two objects of one kind whose Docker names are the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerNameError {
    #[error(
        "{first} and {second} would both be named {name:?} in Docker (smr names {what}): rename one of them"
    )]
    Clash {
        first: String,
        second: String,
        name: String,
        what: &'static str,
    },
}

/// The Docker name shared by the objects of `key`'s kind (`GROUP-NAME`), if the kind has one.
fn base_name(key: &ObjectKey) -> Option<(String, &'static str)> {
    let what = match key.kind {
        Kind::Containers => "replicas GROUP-NAME-INDEX",
        Kind::Volume => "volumes GROUP-NAME",
        _ => return None,
    };
    Some((format!("{}-{}", key.group, key.name), what))
}

/// Checks the objects there would be after applying `apply` and deleting `delete` (a gitops
/// sync does both in one step) on top of the stored objects (`stored` says whether a key is
/// stored): two objects of one kind with the same Docker name, one of them in `apply`, are
/// refused. A clash among objects already stored and not applied again is left alone (it was let
/// in before this check existed).
///
/// Costs O(batch x dashes x lookup), never a walk of the stored objects: the stored objects that
/// could share `GROUP-NAME` are the splits of that name at each `-`, looked up one by one.
pub fn check(
    stored: impl Fn(&ObjectKey) -> bool,
    apply: &[ObjectKey],
    delete: &[ObjectKey],
) -> Result<(), DockerNameError> {
    // Only containers and volumes have Docker names.
    if !apply.iter().any(|k| base_name(k).is_some()) {
        return Ok(());
    }
    let applied: BTreeSet<&ObjectKey> = apply.iter().collect();
    let deleted: BTreeSet<&ObjectKey> = delete.iter().collect();
    // Docker names taken by the objects of the batch seen so far.
    let mut taken: BTreeMap<(Kind, String), &ObjectKey> = BTreeMap::new();
    for key in apply {
        if deleted.contains(key) {
            continue;
        }
        let Some((name, what)) = base_name(key) else {
            continue;
        };
        // A stored object of that name, other than this one and not replaced or deleted by
        // this step (the first in key order, as a listing of the stored objects would give).
        let stored_clash = name
            .match_indices('-')
            .map(|(at, _)| ObjectKey::new(key.kind, &name[..at], &name[at + 1..]))
            .filter(|other| {
                other != key
                    && !applied.contains(other)
                    && !deleted.contains(other)
                    && stored(other)
            })
            .min();
        if let Some(first) = stored_clash {
            return Err(DockerNameError::Clash {
                first: first.to_string(),
                second: key.to_string(),
                name,
                what,
            });
        }
        match taken.get(&(key.kind, name.clone())) {
            Some(first) if *first != key => {
                return Err(DockerNameError::Clash {
                    first: first.to_string(),
                    second: key.to_string(),
                    name,
                    what,
                });
            }
            Some(_) => {}
            None => {
                taken.insert((key.kind, name), key);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> ObjectKey {
        text.parse().unwrap()
    }

    fn keys(texts: &[&str]) -> Vec<ObjectKey> {
        texts.iter().map(|t| key(t)).collect()
    }

    /// Whether a key is one of `stored`.
    fn within(stored: &[ObjectKey]) -> impl Fn(&ObjectKey) -> bool + '_ {
        |k| stored.contains(k)
    }

    #[test]
    fn a_clash_with_a_stored_object_names_both() {
        let existing = keys(&["containers/a-b/c", "volume/x/y"]);
        let err = check(within(&existing), &keys(&["containers/a/b-c"]), &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "containers/a-b/c and containers/a/b-c would both be named \"a-b-c\" in Docker (smr names replicas GROUP-NAME-INDEX): rename one of them"
        );
        let err = check(
            within(&existing),
            &keys(&["volume/x-y/z", "volume/x/y-z"]),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err,
            DockerNameError::Clash {
                first: "volume/x-y/z".into(),
                second: "volume/x/y-z".into(),
                name: "x-y-z".into(),
                what: "volumes GROUP-NAME",
            }
        );
    }

    #[test]
    fn a_clash_within_one_batch_is_refused() {
        let err = check(
            |_| false,
            &keys(&["configuration/a/b", "containers/a-b/c", "containers/a/b-c"]),
            &[],
        )
        .unwrap_err();
        assert_eq!(
            err,
            DockerNameError::Clash {
                first: "containers/a-b/c".into(),
                second: "containers/a/b-c".into(),
                name: "a-b-c".into(),
                what: "replicas GROUP-NAME-INDEX",
            }
        );
    }

    #[test]
    fn what_does_not_clash() {
        // Other kinds, different kinds, the same object again, and a different name.
        let existing = keys(&["containers/a-b/c", "volume/a-b/c", "configuration/a-b/c"]);
        check(
            within(&existing),
            &keys(&[
                "configuration/a/b-c",
                "secret/a/b-c",
                "network/a/b-c",
                "custom/a/b-c",
                "containers/a-b/c",
                "containers/a/bc",
                "containers/ab/c",
            ]),
            &[],
        )
        .unwrap();
        // A volume and a containers definition of the same Docker name live in separate
        // namespaces of Docker.
        check(
            within(&keys(&["volume/a-b/c"])),
            &keys(&["containers/a/b-c"]),
            &[],
        )
        .unwrap();
    }

    #[test]
    fn deleting_the_other_in_the_same_step_allows_a_rename() {
        let existing = keys(&["containers/a-b/c"]);
        check(
            within(&existing),
            &keys(&["containers/a/b-c"]),
            &keys(&["containers/a-b/c"]),
        )
        .unwrap();
        assert!(check(within(&existing), &keys(&["containers/a/b-c"]), &[]).is_err());
    }

    #[test]
    fn an_old_clash_between_stored_objects_is_left_alone() {
        let existing = keys(&["containers/a-b/c", "containers/a/b-c"]);
        check(within(&existing), &keys(&["containers/x/y"]), &[]).unwrap();
        // Applying one of them again is refused: it is the one that would clash.
        assert!(check(within(&existing), &keys(&["containers/a/b-c"]), &[]).is_err());
    }

    #[test]
    fn a_batch_without_containers_or_volumes_does_not_look_at_the_stored_objects() {
        let untouched = |_: &ObjectKey| -> bool {
            panic!("the stored objects were read for a batch of configurations")
        };
        assert_eq!(
            check(
                untouched,
                &keys(&["configuration/a/b", "secret/a-b/c"]),
                &[]
            ),
            Ok(())
        );
    }

    #[test]
    fn only_the_splits_of_a_name_are_looked_up() {
        let asked = std::cell::RefCell::new(Vec::new());
        let stored = |k: &ObjectKey| {
            asked.borrow_mut().push(k.to_string());
            false
        };
        check(
            stored,
            &keys(&["containers/a-b/c-d", "configuration/x/y"]),
            &[],
        )
        .unwrap();
        assert_eq!(
            asked.into_inner(),
            ["containers/a/b-c-d", "containers/a-b-c/d"],
            "the name itself (containers/a-b/c-d) and other kinds are not looked up"
        );
    }
}
