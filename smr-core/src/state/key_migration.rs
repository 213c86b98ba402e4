//! The migration of a cluster created before the CA key was sealed in the state (the first
//! version of smr): no node has a cluster key, only the node that created the cluster holds the
//! CA key (`pki/ca.key`). After an upgrade, with nothing for the operator to do:
//!
//! ```text
//!  key_sealed = None                      the node holding ca.key: MakeKey, SealCa
//!  SetCa(key_sealed, key_migrating) -->   every node without the key: FetchKey (from any node
//!                                         holding it, with its node certificate), until it has it
//!  every node says it holds the key  -->  the leader: FinishKeyMigration
//!  key_migrating = false                  as a cluster created with a cluster key: any node
//!                                         signs, secrets are sealed, the CA can be rotated
//! ```
//!
//! The key is sealed with [`Op::SetCa`](super::Op::SetCa), which every version applies (the first
//! one ignores the fields it does not know), so a node still running the first version during a
//! rolling upgrade applies that entry too. [`Op::FinishKeyMigration`](super::Op) is proposed only
//! once every node said (in its health answer) that it holds the key: an older node does not.
//!
//! [`key_actions`] decides what one node does, from what it holds and what the state says.

use super::{CaRecord, ClusterState, CommandResult, NodeId};

impl ClusterState {
    pub(super) fn finish_key_migration(&mut self, fingerprint: &str) -> CommandResult {
        let Some(ca) = &mut self.ca else {
            return CommandResult::Rejected {
                reason: "the cluster has no CA recorded".into(),
            };
        };
        if ca.fingerprint != fingerprint {
            return CommandResult::Rejected {
                reason: format!("the cluster CA is {}, not {fingerprint}", ca.fingerprint),
            };
        }
        if !ca.key_migrating {
            return CommandResult::Done {
                revision: self.revision,
            };
        }
        ca.key_migrating = false;
        self.bump()
    }

    /// Whether some node may not hold the cluster key yet (a migration runs): the CA is not
    /// rotated.
    pub fn key_migrating(&self) -> bool {
        self.ca.as_ref().is_some_and(|ca| ca.key_migrating)
    }

    /// Whether every node holds the cluster key: the CA key is sealed and no migration runs.
    /// Only then are secret values sealed (a node without the key could not open them).
    pub fn cluster_key_everywhere(&self) -> bool {
        self.ca
            .as_ref()
            .is_some_and(|ca| ca.key_sealed.is_some() && !ca.key_migrating)
    }
}

/// What one node holds and knows when it decides ([`key_actions`]).
#[derive(Clone, Debug)]
pub struct NodeKeyView<'a> {
    /// The state's CA record, once there is one.
    pub ca: Option<&'a CaRecord>,
    /// Whether this node holds the private key of the record's CA (`pki/ca.key` of the node
    /// that created the cluster).
    pub holds_ca_key: bool,
    /// Whether this node holds a cluster key (loaded at start, made or fetched since).
    pub has_cluster_key: bool,
    /// On the leader during a migration: whether each member said it holds the cluster key
    /// (`false` for a member that did not answer). `None` elsewhere.
    pub members: Option<&'a [(NodeId, bool)]>,
}

/// One step of a node towards a cluster key on every node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyAction {
    /// Make a new cluster key and save it where this node keeps it (before anything else, so
    /// that a crash after [`KeyAction::SealCa`] cannot lose it).
    MakeKey,
    /// Seal the CA key with this node's cluster key into the CA record
    /// ([`Op::SetCa`](super::Op::SetCa) with `key_migrating`): the migration starts.
    SealCa,
    /// Fetch the cluster key from a node that holds it (node certificate), check that it opens
    /// the sealed CA key, and save it.
    FetchKey,
    /// The leader: every member holds the key; end the migration.
    Finish { fingerprint: String },
}

/// What this node does now, in this order (see the module documentation).
pub fn key_actions(view: &NodeKeyView<'_>) -> Vec<KeyAction> {
    let Some(ca) = view.ca else {
        return Vec::new();
    };
    let mut actions = Vec::new();
    match &ca.key_sealed {
        // Only the node that holds the CA key can seal it; the others wait for it. (A rotation
        // needs a sealed key, so none runs here; the guard keeps the decision total.)
        None if view.holds_ca_key && ca.next.is_none() => {
            if !view.has_cluster_key {
                actions.push(KeyAction::MakeKey);
            }
            actions.push(KeyAction::SealCa);
        }
        None => {}
        // Given only while the migration runs (afterwards a node gets it when it joins): a
        // copy of a node's data dir kept away from its key (`--cluster-key-file`) cannot fetch it.
        Some(_) if ca.key_migrating && !view.has_cluster_key => actions.push(KeyAction::FetchKey),
        Some(_) => {}
    }
    if ca.key_migrating
        && ca.key_sealed.is_some()
        && let Some(members) = view.members
        && !members.is_empty()
        && members.iter().all(|(_, holds)| *holds)
    {
        actions.push(KeyAction::Finish {
            fingerprint: ca.fingerprint.clone(),
        });
    }
    actions
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, NextCa, Op};

    fn legacy() -> CaRecord {
        CaRecord {
            cert_pem: "PEM".into(),
            fingerprint: "ca".into(),
            holder: 1,
            key_sealed: None,
            next: None,
            previous: None,
            key_migrating: false,
        }
    }

    fn sealed(migrating: bool) -> CaRecord {
        CaRecord {
            key_sealed: Some("sealed".into()),
            key_migrating: migrating,
            ..legacy()
        }
    }

    fn decide(
        ca: Option<&CaRecord>,
        holds_ca_key: bool,
        has_cluster_key: bool,
        members: Option<&[(NodeId, bool)]>,
    ) -> Vec<KeyAction> {
        key_actions(&NodeKeyView {
            ca,
            holds_ca_key,
            has_cluster_key,
            members,
        })
    }

    #[test]
    fn the_node_holding_the_ca_key_makes_the_cluster_key_and_seals_the_ca_key() {
        let ca = legacy();
        assert_eq!(
            decide(Some(&ca), true, false, None),
            vec![KeyAction::MakeKey, KeyAction::SealCa]
        );
        // It made and saved the key, then stopped before the seal was committed: the same key.
        assert_eq!(decide(Some(&ca), true, true, None), vec![KeyAction::SealCa]);
        // The others wait for it, leader or not.
        assert_eq!(decide(Some(&ca), false, false, None), vec![]);
        assert_eq!(
            decide(Some(&ca), false, false, Some(&[(1, false), (2, false)])),
            vec![]
        );
        // No CA recorded yet (a node still bootstrapping): nothing.
        assert_eq!(decide(None, true, false, None), vec![]);
    }

    #[test]
    fn a_node_without_the_cluster_key_fetches_it_while_the_migration_runs() {
        let ca = sealed(true);
        assert_eq!(
            decide(Some(&ca), false, false, None),
            vec![KeyAction::FetchKey]
        );
        // The holder too, if it lost its key file.
        assert_eq!(
            decide(Some(&ca), true, false, None),
            vec![KeyAction::FetchKey]
        );
        assert_eq!(decide(Some(&ca), false, true, None), vec![]);
        assert_eq!(decide(Some(&ca), true, true, None), vec![]);
        // Once it is over (or in a cluster created with a cluster key) nothing is fetched.
        let steady = sealed(false);
        assert_eq!(decide(Some(&steady), false, false, None), vec![]);
        assert_eq!(decide(Some(&steady), true, true, None), vec![]);
    }

    #[test]
    fn the_leader_finishes_only_when_every_member_said_it_holds_the_key() {
        let ca = sealed(true);
        let waiting: [&[(NodeId, bool)]; 3] = [
            &[(1, true), (2, false), (3, true)],
            &[(1, true), (2, true), (3, false)],
            &[],
        ];
        for members in waiting {
            assert_eq!(
                decide(Some(&ca), false, true, Some(members)),
                vec![],
                "{members:?}"
            );
        }
        let all: &[(NodeId, bool)] = &[(1, true), (2, true), (3, true)];
        assert_eq!(
            decide(Some(&ca), false, true, Some(all)),
            vec![KeyAction::Finish {
                fingerprint: "ca".into()
            }]
        );
        // Done already, or a cluster created with a cluster key: nothing to finish.
        assert_eq!(decide(Some(&sealed(false)), false, true, Some(all)), vec![]);
        // A leader without the key fetches it (it answers for itself as not holding it).
        assert_eq!(
            decide(Some(&ca), false, false, Some(&[(1, false), (2, true)])),
            vec![KeyAction::FetchKey]
        );
    }

    fn apply(state: &mut ClusterState, id: &str, op: Op) -> CommandResult {
        state.apply(&Command {
            op_id: id.into(),
            at_ms: 1,
            op,
        })
    }

    #[test]
    fn the_state_records_the_migration_from_the_seal_to_the_finish() {
        let mut state = ClusterState::default();
        assert!(!state.cluster_key_everywhere());
        apply(&mut state, "ca", Op::SetCa { ca: legacy() });
        assert!(!state.key_migrating());
        assert!(!state.cluster_key_everywhere());
        // The holder seals the key (the same CA, a new record).
        let seal = apply(&mut state, "seal", Op::SetCa { ca: sealed(true) });
        assert!(matches!(seal, CommandResult::Done { .. }), "{seal:?}");
        assert!(state.key_migrating());
        assert!(!state.cluster_key_everywhere());
        // The first version sees only what it knows of that entry.
        let old: serde_json::Value = serde_json::to_value(state.ca.as_ref().unwrap()).unwrap();
        assert_eq!(old["fingerprint"], "ca");
        assert_eq!(old["key_migrating"], true);

        let finish = |fp: &str| Op::FinishKeyMigration {
            fingerprint: fp.into(),
        };
        assert_eq!(
            apply(&mut state, "f0", finish("other")),
            CommandResult::Rejected {
                reason: "the cluster CA is ca, not other".into()
            }
        );
        assert!(state.key_migrating());
        let revision = state.revision;
        assert!(matches!(
            apply(&mut state, "f1", finish("ca")),
            CommandResult::Done { .. }
        ));
        assert!(!state.key_migrating());
        assert!(state.cluster_key_everywhere());
        assert_eq!(state.revision, revision + 1);
        // Again (another leader): accepted, nothing changes.
        assert_eq!(
            apply(&mut state, "f2", finish("ca")),
            CommandResult::Done {
                revision: revision + 1
            }
        );
        // Serialized as before when no migration runs.
        let json = serde_json::to_string(state.ca.as_ref().unwrap()).unwrap();
        assert!(!json.contains("key_migrating"), "{json}");
    }

    #[test]
    fn a_ca_record_set_again_never_undoes_a_rotation_under_way() {
        let mut state = ClusterState::default();
        apply(&mut state, "ca", Op::SetCa { ca: sealed(false) });
        let next = NextCa {
            cert_pem: "NEXT".into(),
            fingerprint: "next".into(),
            key_sealed: "sealed next".into(),
            cross_pem: "CROSS".into(),
            started_ms: 1,
            aborted_ms: None,
        };
        apply(&mut state, "start", Op::StartCaRotation { next });
        // A late copy of the seal (proposed twice): refused, the rotation stays.
        assert_eq!(
            apply(&mut state, "late", Op::SetCa { ca: sealed(true) }),
            CommandResult::Rejected {
                reason: "a CA rotation is under way".into()
            }
        );
        let ca = state.ca.as_ref().unwrap();
        assert_eq!(ca.next.as_ref().unwrap().fingerprint, "next");
        assert!(!ca.key_migrating);
    }
}
