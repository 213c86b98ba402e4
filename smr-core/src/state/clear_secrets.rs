//! Secrets a previous version stored in clear, met again in their sealed form.
//!
//! A node seals every secret value it proposes (deterministically: the same value at the same
//! place seals to the same text). Until the leader's [`Op::SealSecrets`](super::Op) runs, the
//! state may still hold a secret in clear, written by a previous version (an upgrade) or during
//! the cluster-key migration ([`super::key_migration`]). That same secret applied again (a gitops
//! sync re-reading its repository, `smrctl apply` of the same file) arrives sealed, differs from
//! the stored text, and would be a change: a new generation and a rollout of its readers.
//!
//! ```text
//!  incoming (sealed) == seal(stored in clear)  -->  propose the stored object as it is:
//!                                                   Unchanged on every node, of any version;
//!                                                   Op::SealSecrets seals it later, same generation
//!  anything else                               -->  the incoming object, as before
//! ```
//!
//! The state machine holds no key, so the comparison is made where the key is, before proposing
//! ([`keep_stored`]), and by the gitops loop before comparing git with the cluster. The seal is
//! passed in (`seal`): this module stays pure.

/// How a sealed value begins (`pki::SEALED_VALUE_PREFIX`; the agent's tests check they agree): the
/// state machine holds no key, but tells a sealed value from one in clear.
pub const SEALED_PREFIX: &str = "smr-sealed:v1:";

use crate::definitions::{Object, ObjectKey, Spec};

use super::ClusterState;

/// The stored object to propose instead of `incoming` (sealed), when the stored object is a
/// secret holding values in clear that seal (with `seal`) to exactly `incoming`; `None` otherwise
/// (nothing stored, not a secret, the same text already, or a real change).
pub fn as_stored(
    state: &ClusterState,
    incoming: &Object,
    seal: impl Fn(&mut Object),
) -> Option<Object> {
    if !matches!(incoming.spec, Spec::Secret(_)) {
        return None;
    }
    let stored = &state.objects.get(&incoming.key())?.object;
    if stored == incoming || !matches!(stored.spec, Spec::Secret(_)) {
        return None;
    }
    let mut sealed = stored.clone();
    seal(&mut sealed);
    (sealed == *incoming).then(|| stored.clone())
}

/// Replaces each of `objects` (sealed) that is the sealed form of a secret `state` holds in clear
/// with the stored object ([`as_stored`]); returns the keys replaced, in order.
pub fn keep_stored(
    state: &ClusterState,
    objects: &mut [Object],
    seal: impl Fn(&mut Object),
) -> Vec<ObjectKey> {
    let mut kept = Vec::new();
    for object in objects.iter_mut() {
        if let Some(stored) = as_stored(state, object, &seal) {
            kept.push(object.key());
            *object = stored;
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::DataSpec;
    use crate::state::{Command, CommandResult, ObjectOutcome, Op, Outcome};

    /// A stand-in for the cluster key's seal: idempotent and deterministic, like the real one.
    fn seal(object: &mut Object) {
        let place = format!("{}/{}", object.meta.group, object.meta.name);
        if let Spec::Secret(d) = &mut object.spec {
            for (field, v) in d.data.iter_mut() {
                if !v.starts_with(SEALED_PREFIX) {
                    *v = format!("{SEALED_PREFIX}{place}:{field}:{v}");
                }
            }
        }
    }

    fn secret(name: &str, value: &str) -> Object {
        Object::new(
            "app",
            name,
            Spec::Secret(DataSpec {
                data: [("password".to_string(), value.to_string())].into(),
            }),
        )
    }

    fn sealed(name: &str, value: &str) -> Object {
        let mut o = secret(name, value);
        seal(&mut o);
        o
    }

    fn apply(state: &mut ClusterState, id: &str, objects: Vec<Object>) -> CommandResult {
        state.apply(&Command {
            op_id: id.into(),
            at_ms: 1,
            op: Op::Apply {
                objects,
                owner: None,
            },
        })
    }

    fn outcomes(result: CommandResult) -> Vec<(String, Outcome, u64)> {
        match result {
            CommandResult::Objects { outcomes, .. } => outcomes
                .into_iter()
                .map(
                    |ObjectOutcome {
                         key,
                         outcome,
                         generation,
                     }| { (key.to_string(), outcome, generation) },
                )
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_sealed_secret_equal_to_the_one_stored_in_clear_is_no_change() {
        let mut state = ClusterState::default();
        // Stored in clear by a previous version: db and cache; api already sealed.
        apply(
            &mut state,
            "old",
            vec![
                secret("db", "s3cret"),
                secret("cache", "c"),
                sealed("api", "k"),
            ],
        );
        // The same db, cache changed, api the same, web new: all sealed, as a node proposes them.
        let mut objects = vec![
            sealed("db", "s3cret"),
            sealed("cache", "other"),
            sealed("api", "k"),
            sealed("web", "w"),
        ];
        let kept = keep_stored(&state, &mut objects, seal);
        assert_eq!(
            kept.iter().map(|k| k.to_string()).collect::<Vec<_>>(),
            ["secret/app/db"]
        );
        assert_eq!(objects[0], secret("db", "s3cret"));
        assert_eq!(objects[1], sealed("cache", "other"));
        assert_eq!(
            outcomes(apply(&mut state, "again", objects)),
            [
                ("secret/app/db".to_string(), Outcome::Unchanged, 1),
                ("secret/app/cache".to_string(), Outcome::Configured, 2),
                ("secret/app/api".to_string(), Outcome::Unchanged, 1),
                ("secret/app/web".to_string(), Outcome::Created, 1),
            ]
        );
        // db stays in clear, at generation 1, until Op::SealSecrets.
        let db = &state.objects[&"secret/app/db".parse().unwrap()];
        assert_eq!((&db.object, db.generation), (&secret("db", "s3cret"), 1));
    }

    #[test]
    fn once_sealed_the_same_secret_is_compared_as_it_is() {
        let mut state = ClusterState::default();
        apply(&mut state, "old", vec![secret("db", "s3cret")]);
        let seal_op = state.apply(&Command {
            op_id: "seal".into(),
            at_ms: 2,
            op: Op::SealSecrets {
                objects: vec![sealed("db", "s3cret")],
            },
        });
        assert!(matches!(seal_op, CommandResult::Done { .. }), "{seal_op:?}");
        let mut objects = vec![sealed("db", "s3cret")];
        assert!(keep_stored(&state, &mut objects, seal).is_empty());
        assert_eq!(
            outcomes(apply(&mut state, "again", objects)),
            [("secret/app/db".to_string(), Outcome::Unchanged, 1)]
        );
    }

    #[test]
    fn other_kinds_and_other_labels_are_left_as_they_come() {
        let mut state = ClusterState::default();
        apply(&mut state, "old", vec![secret("db", "s3cret")]);
        // The same value with a label added: a change (a new generation), as any label change.
        let mut labelled = sealed("db", "s3cret");
        labelled.meta.labels.insert("tier".into(), "db".into());
        assert_eq!(as_stored(&state, &labelled, seal), None);
        // Nothing stored under the key.
        assert_eq!(as_stored(&state, &sealed("web", "w"), seal), None);
    }

    #[test]
    fn a_seal_of_an_older_value_leaves_a_newer_sealed_one_alone() {
        let mut state = ClusterState::default();
        apply(&mut state, "old", vec![secret("db", "v1")]);
        // The leader sealed v1 from the state it read; v2 (sealed by the node that took it) is
        // committed before that seal.
        apply(&mut state, "new", vec![sealed("db", "v2")]);
        let seal_op = state.apply(&Command {
            op_id: "seal".into(),
            at_ms: 2,
            op: Op::SealSecrets {
                objects: vec![sealed("db", "v1")],
            },
        });
        assert!(matches!(seal_op, CommandResult::Done { .. }), "{seal_op:?}");
        let db = &state.objects[&"secret/app/db".parse().unwrap()];
        assert_eq!((&db.object, db.generation), (&sealed("db", "v2"), 2));
    }
}
