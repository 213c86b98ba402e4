//! Secret values sealed at rest with the cluster key ([`pki::ClusterKey::seal_value`]).
//!
//! ```text
//!  API apply / gitops sync ──► Node::propose_command: seal_op (every secret value) ──► Raft / etcd
//!  state, log, snapshots, etcd, backups: sealed ──► opened(state) in memory ──► reconciler, webhook
//! ```
//! Sealing is idempotent (a value that already opens at its place is kept as it is) and
//! deterministic, so an unchanged secret applied again is the same object and stays a no-op.
//! A cluster without a cluster key (created before it existed) keeps secrets as they come.

use std::collections::HashMap;

use crate::definitions::{Object, ObjectKey, Spec};
use crate::pki::{ClusterKey, PkiError, is_sealed_value};
use crate::state::{ClusterState, Op};

/// For tests only: set to `1`, the agent behaves as a version before secrets were sealed (it
/// proposes them in clear and does not seal those it finds), to test the migration.
pub const TEST_PLAIN_ENV: &str = "SMR_TEST_PLAIN_SECRETS";

/// Whether [`TEST_PLAIN_ENV`] is set (read once; a warning is logged).
pub fn test_plain() -> bool {
    static PLAIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLAIN.get_or_init(|| {
        let plain = std::env::var(TEST_PLAIN_ENV).is_ok_and(|v| v == "1");
        if plain {
            tracing::warn!("{TEST_PLAIN_ENV}=1: secrets are NOT sealed (for tests only)");
        }
        plain
    })
}

/// Where a secret value lives: `group/name:field` (the associated data of its seal).
pub fn place(object: &Object, field: &str) -> String {
    format!("{}/{}:{field}", object.meta.group, object.meta.name)
}

/// Whether every value of a secret object is sealed with `key` (always true for other kinds).
pub fn is_sealed(key: &ClusterKey, object: &Object) -> bool {
    match &object.spec {
        Spec::Secret(d) => d
            .data
            .iter()
            .all(|(field, v)| key.open_value(&place(object, field), v).is_ok()),
        _ => true,
    }
}

/// Seals the values of a secret object that are not sealed with `key` yet.
pub fn seal_object(key: &ClusterKey, object: &mut Object) {
    let (group, name) = (object.meta.group.clone(), object.meta.name.clone());
    if let Spec::Secret(d) = &mut object.spec {
        for (field, v) in d.data.iter_mut() {
            let place = format!("{group}/{name}:{field}");
            if !(is_sealed_value(v) && key.open_value(&place, v).is_ok()) {
                *v = key.seal_value(&place, v);
            }
        }
    }
}

/// Seals the secrets a command carries: objects applied by hand or by a gitops sync.
pub fn seal_op(key: &ClusterKey, op: &mut Op) {
    let objects = match op {
        Op::Apply { objects, .. } | Op::SealSecrets { objects } => objects,
        Op::GitopsSync { sync } => &mut sync.apply,
        _ => return,
    };
    for object in objects {
        seal_object(key, object);
    }
}

/// In `op` (sealed), each secret that is the sealed form of one `state` still holds in clear
/// (a previous version's, not sealed by [`Op::SealSecrets`] yet) replaced with the stored object:
/// applied again unchanged, it is no change, on every node of any version
/// ([`crate::state::clear_secrets`]). It stays in clear until `Op::SealSecrets`.
pub fn keep_stored_in_clear(key: &ClusterKey, state: &ClusterState, op: &mut Op) {
    let objects = match op {
        Op::Apply { objects, .. } => objects,
        Op::GitopsSync { sync } => &mut sync.apply,
        _ => return,
    };
    let kept = crate::state::clear_secrets::keep_stored(state, objects, |o| seal_object(key, o));
    if !kept.is_empty() {
        tracing::debug!("unchanged, stored in clear until sealed: {kept:?}");
    }
}

/// The secrets of `state` opened, for readers that run in memory (the reconciler rendering a
/// container, the webhook check). Never to be stored. A value that does not open (not sealed,
/// or sealed with another key) is left as it is.
pub fn opened(key: &ClusterKey, state: &ClusterState) -> ClusterState {
    SecretCache::default().opened(key, state)
}

/// Opened secret values kept between the passes of a reader that opens the state again and
/// again (the replicas reconciler), keyed by place and sealed text: sealing is deterministic
/// (AES-GCM-SIV with the place as associated data), so a sealed text at a place always opens to
/// the same value, and a changed secret is a new sealed text, opened anew. Holds the values of
/// the last state opened only (a secret that left it is dropped). In memory only: no `Debug`,
/// never logged nor stored.
#[derive(Default)]
pub struct SecretCache {
    /// (place, sealed text) -> plain value.
    values: HashMap<(String, String), String>,
}

impl SecretCache {
    /// [`opened`], opening only the values this cache does not hold yet.
    pub fn opened(&mut self, key: &ClusterKey, state: &ClusterState) -> ClusterState {
        self.opened_with(state, |place, sealed| key.open_value(place, sealed))
    }

    /// [`Self::opened`] with `open` opening a sealed value at its place.
    fn opened_with(
        &mut self,
        state: &ClusterState,
        mut open: impl FnMut(&str, &str) -> Result<String, PkiError>,
    ) -> ClusterState {
        let mut out = state.clone();
        let keys: Vec<_> = state
            .keyed_objects_of(crate::definitions::Kind::Secret)
            .filter(|(_, o)| {
                o.object
                    .spec
                    .data()
                    .is_some_and(|d| d.values().any(|v| is_sealed_value(v)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        let mut kept = HashMap::new();
        let Ok(()) = each_value(&mut out, keys, |k, field, place, v| {
            if !is_sealed_value(v) {
                return Ok::<(), std::convert::Infallible>(());
            }
            let at = (place.to_string(), std::mem::take(v));
            let plain = match self.values.remove(&at) {
                Some(plain) => plain,
                None => match open(place, &at.1) {
                    Ok(plain) => plain,
                    Err(e) => {
                        tracing::warn!("secret {}/{} key {field}: {e}", k.group, k.name);
                        *v = at.1;
                        return Ok(());
                    }
                },
            };
            v.clone_from(&plain);
            kept.insert(at, plain);
            Ok(())
        });
        self.values = kept;
        out
    }
}

/// Calls `f` with the key, field, place and value (which it may change) of every value of the
/// secrets `keys` of `state`; stops at its first error.
fn each_value<E>(
    state: &mut ClusterState,
    keys: Vec<ObjectKey>,
    mut f: impl FnMut(&ObjectKey, &str, &str, &mut String) -> Result<(), E>,
) -> Result<(), E> {
    for k in keys {
        let Some(stored) = state.objects.get_mut(&k) else {
            continue;
        };
        let object = &mut stored.object;
        let at = format!("{}/{}", object.meta.group, object.meta.name);
        if let Spec::Secret(d) = &mut object.spec {
            for (field, v) in d.data.iter_mut() {
                f(&k, field, &format!("{at}:{field}"), v)?;
            }
        }
    }
    Ok(())
}

/// The secret objects of `state` with a value not sealed with `key`, sealed: what the leader
/// proposes once ([`Op::SealSecrets`]) in a cluster a previous version filled.
pub fn unsealed(key: &ClusterKey, state: &ClusterState) -> Vec<Object> {
    state
        .objects_of(crate::definitions::Kind::Secret)
        .filter(|o| !is_sealed(key, &o.object))
        .map(|o| {
            let mut object = o.object.clone();
            seal_object(key, &mut object);
            object
        })
        .collect()
}

/// Whether `state` holds a sealed secret value.
pub fn holds_sealed(state: &ClusterState) -> bool {
    state
        .objects_of(crate::definitions::Kind::Secret)
        .filter_map(|o| o.object.spec.data())
        .any(|d| d.values().any(|v| is_sealed_value(v)))
}

/// The secrets of `state` sealed with `old` (a backup's cluster) sealed again with `new`.
/// Fails, naming the secret, when a sealed value does not open with `old` or there is no `old`;
/// values in clear (a backup of a previous version) are sealed with `new`.
pub fn reseal(
    old: Option<&ClusterKey>,
    new: &ClusterKey,
    state: &mut ClusterState,
) -> Result<(), String> {
    let keys: Vec<_> = state
        .keyed_objects_of(crate::definitions::Kind::Secret)
        .map(|(k, _)| k.clone())
        .collect();
    each_value(state, keys, |k, field, place, v| {
        let plain = if is_sealed_value(v) {
            let old = old.ok_or_else(|| {
                format!("{k} key {field} is sealed, and the key it was sealed with is not given")
            })?;
            old.open_value(place, v)
                .map_err(|e: PkiError| format!("{k} key {field}: {e}"))?
        } else {
            v.clone()
        };
        *v = new.seal_value(place, &plain);
        Ok(())
    })
}

/// Runs until `stop`: while this node is the leader, seals in one command ([`Op::SealSecrets`])
/// the secret values the state holds in clear (stored by a previous version), looking again
/// (at most once a second) whenever the state has changed since it last found none: a node of
/// the previous version, or a write that read the state just before the seal
/// ([`crate::state::clear_secrets`]), may store one in clear again. Not before every node says (in its health
/// answer) that it seals and opens secrets: an older one could not apply that command, nor open
/// what it seals; nor while the cluster key is on its way to every node (the migration of a
/// cluster created before the CA key was sealed: [`crate::migration`]).
pub async fn seal_plain_secrets(
    node: std::sync::Arc<crate::node::Node>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if test_plain() {
        return;
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    // The revision of the state last found to hold no secret in clear (as leader).
    let mut clean_at: Option<u64> = None;
    // While some node is of an older version, asked again at most every 10 s.
    let mut next_try = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = crate::shutdown::stopped(&mut stop) => return,
            _ = tick.tick() => {},
        }
        if !node.is_leader() {
            clean_at = None;
            continue;
        }
        if tokio::time::Instant::now() < next_try {
            continue;
        }
        // Nothing changed since the last look: no read through the leader's quorum.
        let Ok(local) = node.state(crate::node::Consistency::Stale).await else {
            continue;
        };
        if clean_at == Some(local.revision) {
            continue;
        }
        let Ok(state) = node.state(crate::node::Consistency::Linearizable).await else {
            continue;
        };
        // This node's key: loaded at start, or received by the migration since.
        let Some(key) = node.sealing_key(Some(&*state)).await else {
            continue;
        };
        let objects = unsealed(key, &state);
        if objects.is_empty() {
            clean_at = Some(state.revision);
            continue;
        }
        let count = objects.len();
        if !node.all_seal_secrets(&state).await {
            tracing::info!(
                "{count} secret(s) stored in clear wait for every node to seal secrets (upgrade \
                 the older ones)"
            );
            next_try = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            continue;
        }
        match node.propose(Op::SealSecrets { objects }, None).await {
            Ok(_) => tracing::info!("sealed the values of {count} secret(s) stored in clear"),
            Err(e) => tracing::warn!("sealing {count} secret(s) stored in clear: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_machine_tells_sealed_values_as_pki_seals_them() {
        assert_eq!(
            crate::state::clear_secrets::SEALED_PREFIX,
            pki::SEALED_VALUE_PREFIX
        );
    }
    use crate::definitions::{DataSpec, ObjectKey};
    use crate::state::{Command, CommandResult, GitopsStatus, GitopsSync, Outcome};

    fn secret(value: &str) -> Object {
        Object::new(
            "app",
            "db",
            Spec::Secret(DataSpec {
                data: [("password".to_string(), value.to_string())].into(),
            }),
        )
    }

    fn value(state: &ClusterState) -> String {
        let key: ObjectKey = "secret/app/db".parse().unwrap();
        state.objects.get(&key).unwrap().object.spec.data().unwrap()["password"].clone()
    }

    fn apply(state: &mut ClusterState, key: &ClusterKey, objects: Vec<Object>) -> CommandResult {
        let mut op = Op::Apply {
            objects,
            owner: None,
        };
        seal_op(key, &mut op);
        state.apply(&Command {
            op_id: crate::state::new_op_id(),
            at_ms: 1,
            op,
        })
    }

    fn outcome(result: &CommandResult) -> Outcome {
        match result {
            CommandResult::Objects { outcomes, .. } => outcomes[0].outcome,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn proposed_secrets_are_sealed_and_an_unchanged_one_applied_again_is_a_no_op() {
        let key = ClusterKey::generate();
        let mut state = ClusterState::default();
        let created = apply(&mut state, &key, vec![secret("pw-distinctive")]);
        assert_eq!(outcome(&created), Outcome::Created);
        let stored = value(&state);
        assert!(is_sealed_value(&stored), "{stored}");
        assert!(
            !serde_json::to_string(&state)
                .unwrap()
                .contains("pw-distinctive")
        );
        // Opened only in memory, for readers.
        assert_eq!(value(&opened(&key, &state)), "pw-distinctive");
        assert_eq!(value(&state), stored);

        let again = apply(&mut state, &key, vec![secret("pw-distinctive")]);
        assert_eq!(outcome(&again), Outcome::Unchanged);
        let changed = apply(&mut state, &key, vec![secret("pw-other")]);
        assert_eq!(outcome(&changed), Outcome::Configured);
        assert_eq!(value(&opened(&key, &state)), "pw-other");

        // A gitops sync's objects are sealed too, and a sealed value is not sealed twice.
        let mut op = Op::GitopsSync {
            sync: Box::new(GitopsSync {
                gitops: "gitops/ops/repo".parse().unwrap(),
                generation: 1,
                apply: vec![secret("pw-git")],
                delete: vec![],
                status: GitopsStatus::default(),
            }),
        };
        seal_op(&key, &mut op);
        let Op::GitopsSync { sync } = &op else {
            unreachable!()
        };
        let sealed = sync.apply[0].clone();
        assert!(is_sealed(&key, &sealed));
        let mut twice = sealed.clone();
        seal_object(&key, &mut twice);
        assert_eq!(twice, sealed);
    }

    #[test]
    fn plain_secrets_of_a_previous_version_are_sealed_by_one_command_without_a_rollout() {
        let key = ClusterKey::generate();
        let mut state = ClusterState::default();
        // As a previous version stored it: in clear.
        state.apply(&Command {
            op_id: "old".into(),
            at_ms: 1,
            op: Op::Apply {
                objects: vec![
                    secret("pw-old"),
                    Object::new("app", "c", Spec::Configuration(DataSpec::default())),
                ],
                owner: None,
            },
        });
        let objects = unsealed(&key, &state);
        assert_eq!(objects.len(), 1);
        let generation = state
            .objects
            .get(&"secret/app/db".parse().unwrap())
            .unwrap()
            .generation;
        state.apply(&Command {
            op_id: "seal".into(),
            at_ms: 2,
            op: Op::SealSecrets { objects },
        });
        let stored = state
            .objects
            .get(&"secret/app/db".parse().unwrap())
            .unwrap();
        assert_eq!(stored.generation, generation, "not a new generation");
        assert!(is_sealed(&key, &stored.object));
        assert_eq!(value(&opened(&key, &state)), "pw-old");
        assert!(unsealed(&key, &state).is_empty());
    }

    #[test]
    fn a_restore_seals_again_with_the_new_key_and_refuses_a_wrong_old_key() {
        let old = ClusterKey::generate();
        let mut state = ClusterState::default();
        apply(&mut state, &old, vec![secret("pw-backup")]);
        assert!(holds_sealed(&state));
        let new = ClusterKey::generate();

        let mut wrong = state.clone();
        let err = reseal(Some(&ClusterKey::generate()), &new, &mut wrong).unwrap_err();
        assert!(
            err.contains("secret/app/db key password") && err.contains("does not open"),
            "{err}"
        );

        let err = reseal(None, &new, &mut wrong).unwrap_err();
        assert!(err.contains("is not given"), "{err}");

        reseal(Some(&old), &new, &mut state).unwrap();
        assert!(is_sealed(
            &new,
            &state.objects.values().next().unwrap().object
        ));
        assert_eq!(value(&opened(&new, &state)), "pw-backup");
        assert_ne!(value(&opened(&old, &state)), "pw-backup");
    }

    #[test]
    fn a_second_pass_opens_no_value_again_and_a_changed_or_deleted_secret_is_not_kept() {
        let key = ClusterKey::generate();
        let mut state = ClusterState::default();
        let other = Object::new(
            "app",
            "api",
            Spec::Secret(DataSpec {
                data: [("token".to_string(), "tok-1".to_string())].into(),
            }),
        );
        apply(&mut state, &key, vec![secret("pw-1"), other]);
        let mut cache = SecretCache::default();
        let opens = std::cell::Cell::new(0);
        let pass = |cache: &mut SecretCache, state: &ClusterState| {
            cache.opened_with(state, |place, sealed| {
                opens.set(opens.get() + 1);
                key.open_value(place, sealed)
            })
        };

        assert_eq!(value(&pass(&mut cache, &state)), "pw-1");
        assert_eq!(opens.get(), 2);
        // Nothing changed: nothing is opened, the values are the same.
        let again = pass(&mut cache, &state);
        assert_eq!(opens.get(), 2);
        assert_eq!(again, opened(&key, &state));

        // A changed secret is opened anew, the other one is not.
        apply(&mut state, &key, vec![secret("pw-2")]);
        assert_eq!(value(&pass(&mut cache, &state)), "pw-2");
        assert_eq!(opens.get(), 3);
        assert_eq!(cache.values.len(), 2, "the old value is dropped");

        // A deleted secret leaves the cache.
        state.apply(&Command {
            op_id: crate::state::new_op_id(),
            at_ms: 2,
            op: Op::Delete {
                keys: vec!["secret/app/api".parse().unwrap()],
            },
        });
        pass(&mut cache, &state);
        assert_eq!(opens.get(), 3);
        assert_eq!(cache.values.len(), 1);
    }
}
