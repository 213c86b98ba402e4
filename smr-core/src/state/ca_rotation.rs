//! The CA rotation (`smrmgr ca rotate`), after Swarm's root rotation: the state records the next
//! CA beside the current one ([`NextCa`]); every node then trusts both, renews its certificate
//! from the next CA at once and presents it with the next CA's certificate cross-signed by the
//! current one (peers that still trust only the current CA accept it through that). When every
//! member's certificate comes from the next CA, the leader finishes: the next CA becomes the CA
//! and the old one is trusted no longer.
//!
//! ```text
//!  ca = C, next = None      trust [C]     leaf of C            (steady)
//!  StartCaRotation(N)  -->  trust [C, N]  leaf of N + cross    (each node: Trust, Renew)
//!  all leaves of N     -->  FinishCaRotation(N)  (the leader)
//!  ca = N, next = None      trust [N]     leaf of N            (each node: Trust)
//! ```
//!
//! `smrmgr ca abort` goes back to the current CA in the same careful order: the rotation is
//! marked aborted ([`NextCa::aborted_ms`]), so the current CA signs again while every node
//! still trusts both; nodes whose leaf is of the next CA renew from the current one (until then
//! they keep presenting the cross certificate, so peers that trust only the current CA accept
//! them). Once every member's leaf is of the current CA, the leader drops the next CA.
//!
//! ```text
//!  ca = C, next = N         trust [C, N]  leaf of C or N (+ cross)
//!  AbortCaRotation(N)  -->  trust [C, N]  leaf of C            (each node with a leaf of N: Renew)
//!  all leaves of C     -->  FinishCaAbort(N)  (the leader)
//!  ca = C, next = None      trust [C]     leaf of C            (each node: Trust)
//! ```
//!
//! [`ca_actions`] decides what one node does, from what it holds and what the state says.

use super::{CaRecord, ClusterState, CommandResult, NextCa, NodeId};

impl ClusterState {
    pub(super) fn start_ca_rotation(&mut self, next: &NextCa) -> CommandResult {
        let Some(ca) = &mut self.ca else {
            return CommandResult::Rejected {
                reason: "the cluster has no CA recorded".into(),
            };
        };
        match &ca.next {
            Some(running) if running.fingerprint == next.fingerprint => {
                return CommandResult::Done {
                    revision: self.revision,
                };
            }
            Some(running) if running.aborted_ms.is_some() => {
                return CommandResult::Rejected {
                    reason: format!(
                        "the CA rotation to {} is being aborted; wait for the abort to finish \
                         (`smrmgr ca status`)",
                        running.fingerprint
                    ),
                };
            }
            Some(running) => {
                return CommandResult::Rejected {
                    reason: format!(
                        "a CA rotation to {} is under way; wait for it to finish (`smrmgr ca \
                         status`)",
                        running.fingerprint
                    ),
                };
            }
            None if next.fingerprint == ca.fingerprint => {
                return CommandResult::Rejected {
                    reason: "the next CA is the current CA".into(),
                };
            }
            None => {}
        }
        ca.next = Some(next.clone());
        self.bump()
    }

    pub(super) fn finish_ca_rotation(&mut self, fingerprint: &str) -> CommandResult {
        let Some(ca) = &mut self.ca else {
            return CommandResult::Rejected {
                reason: "the cluster has no CA recorded".into(),
            };
        };
        if ca.fingerprint == fingerprint && ca.next.is_none() {
            return CommandResult::Done {
                revision: self.revision,
            };
        }
        let Some(next) = ca.next.take_if(|n| n.fingerprint == fingerprint) else {
            return CommandResult::Rejected {
                reason: format!("no CA rotation to {fingerprint} is under way"),
            };
        };
        if next.aborted_ms.is_some() {
            let reason = format!(
                "the rotation to {fingerprint} was aborted; it cannot finish (`smrmgr ca status`)"
            );
            ca.next = Some(next);
            return CommandResult::Rejected { reason };
        }
        *ca = CaRecord {
            cert_pem: next.cert_pem,
            previous: Some(std::mem::take(&mut ca.fingerprint)),
            key_migrating: false,
            fingerprint: next.fingerprint,
            holder: ca.holder,
            key_sealed: Some(next.key_sealed),
            next: None,
        };
        self.bump()
    }

    pub(super) fn abort_ca_rotation(&mut self, fingerprint: &str, now: u64) -> CommandResult {
        let Some(ca) = &mut self.ca else {
            return CommandResult::Rejected {
                reason: "the cluster has no CA recorded".into(),
            };
        };
        match &mut ca.next {
            Some(next) if next.fingerprint == fingerprint => {
                if next.aborted_ms.is_some() {
                    return CommandResult::Done {
                        revision: self.revision,
                    };
                }
                next.aborted_ms = Some(now);
                self.bump()
            }
            _ if ca.fingerprint == fingerprint => CommandResult::Rejected {
                reason: format!(
                    "the rotation to {fingerprint} has finished: it is the cluster CA now (rotate \
                     again to replace it)"
                ),
            },
            _ => CommandResult::Rejected {
                reason: format!("no CA rotation to {fingerprint} is under way"),
            },
        }
    }

    pub(super) fn finish_ca_abort(&mut self, fingerprint: &str) -> CommandResult {
        let Some(ca) = &mut self.ca else {
            return CommandResult::Rejected {
                reason: "the cluster has no CA recorded".into(),
            };
        };
        match &ca.next {
            Some(next) if next.fingerprint == fingerprint && next.aborted_ms.is_some() => {
                ca.next = None;
                self.bump()
            }
            Some(next) if next.fingerprint == fingerprint => CommandResult::Rejected {
                reason: format!("the rotation to {fingerprint} was not aborted"),
            },
            None if ca.fingerprint != fingerprint => CommandResult::Done {
                revision: self.revision,
            },
            _ => CommandResult::Rejected {
                reason: format!("no aborted CA rotation to {fingerprint} is under way"),
            },
        }
    }
}

/// What one node holds and knows when it decides ([`ca_actions`]).
#[derive(Clone, Debug)]
pub struct NodeCaView<'a> {
    /// The state's CA record.
    pub ca: &'a CaRecord,
    /// The fingerprints of the CAs this node trusts now, in order.
    pub trusted: &'a [String],
    /// Whether this node presents a cross-signed certificate after its leaf.
    pub presents_cross: bool,
    /// The fingerprint of the CA this node's leaf certificate comes from.
    pub leaf_ca: &'a str,
    /// On the leader only: the CA of each member's leaf as its health probe said (`None`: it
    /// did not answer).
    pub members: Option<&'a [(NodeId, Option<String>)]>,
}

/// One step of a node towards what the CA record asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CaAction {
    /// Trust exactly these CAs (fingerprints, in order), and present the cross-signed
    /// certificate after a leaf of the next CA while a rotation runs (only then).
    Trust { cas: Vec<String> },
    /// Renew this node's certificates now, from the CA that signs now (the next one during a
    /// rotation).
    Renew,
    /// The leader: every member's leaf comes from the next CA; finish the rotation.
    Finish { fingerprint: String },
    /// The leader, after an abort: every member's leaf comes from the current CA again; drop
    /// the next CA (`fingerprint`).
    FinishAbort { fingerprint: String },
}

/// The CAs a node trusts for `ca`: the current one, and the next one during a rotation.
pub fn trusted_cas(ca: &CaRecord) -> Vec<String> {
    let mut cas = vec![ca.fingerprint.clone()];
    cas.extend(ca.next.as_ref().map(|n| n.fingerprint.clone()));
    cas
}

/// The CA that signs certificates now: the next one during a rotation (not aborted), else the
/// current one.
pub fn signing_ca(ca: &CaRecord) -> &str {
    match &ca.next {
        Some(next) if next.aborted_ms.is_none() => &next.fingerprint,
        _ => &ca.fingerprint,
    }
}

/// Whether a rotation is being aborted (`smrmgr ca abort`).
pub fn aborting(ca: &CaRecord) -> bool {
    ca.next.as_ref().is_some_and(|n| n.aborted_ms.is_some())
}

/// Whether a node whose leaf comes from `leaf_ca` presents the cross-signed certificate.
pub fn presents_cross(ca: &CaRecord, leaf_ca: &str) -> bool {
    ca.next.as_ref().is_some_and(|n| n.fingerprint == leaf_ca)
}

/// What this node does now, in this order (see the module documentation).
pub fn ca_actions(view: &NodeCaView<'_>) -> Vec<CaAction> {
    let mut actions = Vec::new();
    let cas = trusted_cas(view.ca);
    if view.trusted != cas.as_slice()
        || view.presents_cross != presents_cross(view.ca, view.leaf_ca)
    {
        actions.push(CaAction::Trust { cas });
    }
    if view.leaf_ca != signing_ca(view.ca) {
        actions.push(CaAction::Renew);
    }
    if let (Some(next), Some(members)) = (&view.ca.next, view.members)
        && !members.is_empty()
        && members
            .iter()
            .all(|(_, leaf)| leaf.as_deref() == Some(signing_ca(view.ca)))
    {
        let fingerprint = next.fingerprint.clone();
        actions.push(match next.aborted_ms {
            None => CaAction::Finish { fingerprint },
            Some(_) => CaAction::FinishAbort { fingerprint },
        });
    }
    actions
}

/// The members whose leaf is not (known to be) of the CA that signs now: what a rotation, or
/// its abort, waits for. Empty when no rotation is under way.
pub fn waiting_for<'a>(
    ca: &CaRecord,
    members: &'a [(NodeId, Option<String>)],
) -> Vec<&'a (NodeId, Option<String>)> {
    if ca.next.is_none() {
        return Vec::new();
    }
    let signer = signing_ca(ca);
    members
        .iter()
        .filter(|(_, leaf)| leaf.as_deref() != Some(signer))
        .collect()
}

/// How far a rotation is: members whose leaf comes from the signing CA, and all members.
pub fn progress(ca: &CaRecord, members: &[(NodeId, Option<String>)]) -> (usize, usize) {
    let signer = signing_ca(ca);
    let done = members
        .iter()
        .filter(|(_, leaf)| leaf.as_deref() == Some(signer))
        .count();
    (done, members.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Op};

    fn record(next: Option<&str>) -> CaRecord {
        CaRecord {
            cert_pem: "OLD PEM".into(),
            fingerprint: "old".into(),
            holder: 1,
            key_sealed: Some("sealed old".into()),
            next: next.map(next_ca),
            previous: None,
            key_migrating: false,
        }
    }

    fn next_ca(fingerprint: &str) -> NextCa {
        NextCa {
            cert_pem: format!("{fingerprint} PEM"),
            fingerprint: fingerprint.into(),
            key_sealed: format!("sealed {fingerprint}"),
            cross_pem: "CROSS".into(),
            started_ms: 5,
            aborted_ms: None,
        }
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn view<'a>(
        ca: &'a CaRecord,
        trusted: &'a [String],
        cross: bool,
        leaf: &'a str,
        members: Option<&'a [(NodeId, Option<String>)]>,
    ) -> Vec<CaAction> {
        ca_actions(&NodeCaView {
            ca,
            trusted,
            presents_cross: cross,
            leaf_ca: leaf,
            members,
        })
    }

    #[test]
    fn a_node_in_step_with_its_ca_does_nothing() {
        let steady = record(None);
        assert_eq!(view(&steady, &s(&["old"]), false, "old", None), vec![]);
        let members = [(1, Some("old".to_string())), (2, Some("old".to_string()))];
        assert_eq!(
            view(&steady, &s(&["old"]), false, "old", Some(&members)),
            vec![]
        );
    }

    #[test]
    fn at_the_start_a_node_trusts_both_cas_and_renews_from_the_next_one() {
        let rotating = record(Some("new"));
        assert_eq!(
            view(&rotating, &s(&["old"]), false, "old", None),
            vec![
                CaAction::Trust {
                    cas: s(&["old", "new"])
                },
                CaAction::Renew
            ]
        );
        // Renewed: its leaf is of the next CA, presented with the cross certificate.
        assert_eq!(
            view(&rotating, &s(&["old", "new"]), true, "new", None),
            vec![]
        );
        // Renewed but not presenting the cross certificate: trust again (which adds it).
        assert_eq!(
            view(&rotating, &s(&["old", "new"]), false, "new", None),
            vec![CaAction::Trust {
                cas: s(&["old", "new"])
            }]
        );
    }

    #[test]
    fn the_leader_finishes_only_when_every_member_answered_with_a_leaf_of_the_next_ca() {
        let rotating = record(Some("new"));
        let trusted = s(&["old", "new"]);
        let new = || Some("new".to_string());
        let waiting: [&[(NodeId, Option<String>)]; 3] = [
            &[(1, new()), (2, Some("old".into())), (3, new())],
            &[(1, new()), (2, None), (3, new())],
            &[],
        ];
        for members in waiting {
            assert_eq!(
                view(&rotating, &trusted, true, "new", Some(members)),
                vec![],
                "{members:?}"
            );
        }
        let all = [(1, new()), (2, new()), (3, new())];
        assert_eq!(
            view(&rotating, &trusted, true, "new", Some(&all)),
            vec![CaAction::Finish {
                fingerprint: "new".into()
            }]
        );
        assert_eq!(progress(&rotating, waiting[0]), (2, 3));
        assert_eq!(progress(&rotating, &all), (3, 3));
    }

    #[test]
    fn after_the_finish_a_node_drops_the_old_ca_and_the_cross_certificate() {
        let mut finished = record(None);
        finished.fingerprint = "new".into();
        assert_eq!(
            view(&finished, &s(&["old", "new"]), true, "new", None),
            vec![CaAction::Trust { cas: s(&["new"]) }]
        );
        assert_eq!(view(&finished, &s(&["new"]), false, "new", None), vec![]);
        // A node that missed the whole rotation renews (from the new CA).
        assert_eq!(
            view(&finished, &s(&["old"]), false, "old", None),
            vec![CaAction::Trust { cas: s(&["new"]) }, CaAction::Renew]
        );
    }

    fn apply(state: &mut ClusterState, id: &str, op: Op) -> CommandResult {
        state.apply(&Command {
            op_id: id.into(),
            at_ms: 10,
            op,
        })
    }

    #[test]
    fn the_rotation_starts_once_and_finishes_only_to_the_ca_it_started() {
        let mut state = ClusterState::default();
        let start = |fp: &str| Op::StartCaRotation { next: next_ca(fp) };
        assert_eq!(
            apply(&mut state, "s0", start("new")),
            CommandResult::Rejected {
                reason: "the cluster has no CA recorded".into()
            }
        );
        apply(&mut state, "ca", Op::SetCa { ca: record(None) });
        assert!(matches!(
            apply(&mut state, "s1", start("old")),
            CommandResult::Rejected { .. }
        ));
        assert!(matches!(
            apply(&mut state, "s2", start("new")),
            CommandResult::Done { .. }
        ));
        let revision = state.revision;
        // The same start again changes nothing; another one is refused while it runs.
        assert_eq!(
            apply(&mut state, "s3", start("new")),
            CommandResult::Done { revision }
        );
        assert_eq!(
            apply(&mut state, "s4", start("other")),
            CommandResult::Rejected {
                reason: "a CA rotation to new is under way; wait for it to finish (`smrmgr ca \
                         status`)"
                    .into()
            }
        );
        let finish = |fp: &str| Op::FinishCaRotation {
            fingerprint: fp.into(),
        };
        assert_eq!(
            apply(&mut state, "f1", finish("other")),
            CommandResult::Rejected {
                reason: "no CA rotation to other is under way".into()
            }
        );
        assert_eq!(state.ca.as_ref().unwrap(), &record(Some("new")));
        assert!(matches!(
            apply(&mut state, "f2", finish("new")),
            CommandResult::Done { .. }
        ));
        assert_eq!(
            state.ca.as_ref().unwrap(),
            &CaRecord {
                cert_pem: "new PEM".into(),
                fingerprint: "new".into(),
                holder: 1,
                key_sealed: Some("sealed new".into()),
                next: None,
                previous: Some("old".into()),
                key_migrating: false,
            }
        );
        let revision = state.revision;
        assert_eq!(
            apply(&mut state, "f3", finish("new")),
            CommandResult::Done { revision }
        );
    }

    fn aborted(next: &str) -> CaRecord {
        let mut ca = record(Some(next));
        ca.next.as_mut().unwrap().aborted_ms = Some(7);
        ca
    }

    #[test]
    fn during_an_abort_nodes_renew_from_the_current_ca_and_keep_trusting_both() {
        let aborting = aborted("new");
        let both = s(&["old", "new"]);
        assert_eq!(signing_ca(&aborting), "old");
        // A node that renewed from the next CA renews again from the current one; until then
        // it keeps presenting the cross certificate.
        assert_eq!(
            view(&aborting, &both, true, "new", None),
            vec![CaAction::Renew]
        );
        // Renewed: a leaf of the current CA, no cross certificate, both CAs still trusted.
        assert_eq!(view(&aborting, &both, false, "old", None), vec![]);
        // A node that never saw the start trusts both too, and keeps its leaf.
        assert_eq!(
            view(&aborting, &s(&["old"]), false, "old", None),
            vec![CaAction::Trust { cas: both.clone() }]
        );
        // A leaf of the next CA presented without the cross certificate: trust again (adds it).
        assert_eq!(
            view(&aborting, &both, false, "new", None),
            vec![CaAction::Trust { cas: both.clone() }, CaAction::Renew]
        );
    }

    #[test]
    fn the_leader_drops_the_next_ca_only_when_every_member_is_back_on_the_current_one() {
        let aborting = aborted("new");
        let both = s(&["old", "new"]);
        let old = || Some("old".to_string());
        let waiting: [&[(NodeId, Option<String>)]; 3] = [
            &[(1, old()), (2, Some("new".into())), (3, old())],
            &[(1, old()), (2, None), (3, old())],
            &[],
        ];
        for members in waiting {
            assert_eq!(
                view(&aborting, &both, false, "old", Some(members)),
                vec![],
                "{members:?}"
            );
        }
        let all = [(1, old()), (2, old()), (3, old())];
        assert_eq!(
            view(&aborting, &both, false, "old", Some(&all)),
            vec![CaAction::FinishAbort {
                fingerprint: "new".into()
            }]
        );
        assert_eq!(progress(&aborting, waiting[0]), (2, 3));
        assert_eq!(progress(&aborting, &all), (3, 3));
        assert_eq!(
            waiting_for(&aborting, waiting[1]),
            vec![&(2, None::<String>)]
        );
        assert_eq!(
            waiting_for(&aborting, waiting[0]),
            vec![&(2, Some("new".to_string()))]
        );
        assert!(waiting_for(&aborting, &all).is_empty());
        // A rotation (not aborted) waits for the members whose leaf is not of the next CA.
        assert_eq!(
            waiting_for(&record(Some("new")), &all)
                .iter()
                .map(|(id, _)| *id)
                .collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(waiting_for(&record(None), waiting[0]).is_empty());
        // Once dropped, every node trusts the current CA only.
        let steady = record(None);
        assert_eq!(
            view(&steady, &both, false, "old", Some(&all)),
            vec![CaAction::Trust { cas: s(&["old"]) }]
        );
    }

    #[test]
    fn an_abort_applies_only_to_the_rotation_under_way_and_ends_on_the_current_ca() {
        let mut state = ClusterState::default();
        let abort = |fp: &str| Op::AbortCaRotation {
            fingerprint: fp.into(),
        };
        let drop_next = |fp: &str| Op::FinishCaAbort {
            fingerprint: fp.into(),
        };
        apply(&mut state, "ca", Op::SetCa { ca: record(None) });
        assert_eq!(
            apply(&mut state, "a0", abort("new")),
            CommandResult::Rejected {
                reason: "no CA rotation to new is under way".into()
            }
        );
        apply(
            &mut state,
            "s",
            Op::StartCaRotation {
                next: next_ca("new"),
            },
        );
        assert_eq!(
            apply(&mut state, "d0", drop_next("new")),
            CommandResult::Rejected {
                reason: "the rotation to new was not aborted".into()
            }
        );
        assert_eq!(
            apply(&mut state, "a1", abort("other")),
            CommandResult::Rejected {
                reason: "no CA rotation to other is under way".into()
            }
        );
        assert!(matches!(
            apply(&mut state, "a2", abort("new")),
            CommandResult::Done { .. }
        ));
        // Applied at the command's time (10 ms here).
        assert_eq!(state.ca.as_ref().unwrap(), &aborted_at("new", 10));
        let revision = state.revision;
        assert_eq!(
            apply(&mut state, "a3", abort("new")),
            CommandResult::Done { revision }
        );
        // An aborted rotation neither finishes nor lets another start.
        assert_eq!(
            apply(
                &mut state,
                "f",
                Op::FinishCaRotation {
                    fingerprint: "new".into()
                }
            ),
            CommandResult::Rejected {
                reason: "the rotation to new was aborted; it cannot finish (`smrmgr ca status`)"
                    .into()
            }
        );
        assert_eq!(
            apply(
                &mut state,
                "s2",
                Op::StartCaRotation {
                    next: next_ca("other")
                }
            ),
            CommandResult::Rejected {
                reason: "the CA rotation to new is being aborted; wait for the abort to finish \
                         (`smrmgr ca status`)"
                    .into()
            }
        );
        assert_eq!(state.ca.as_ref().unwrap(), &aborted_at("new", 10));
        assert!(matches!(
            apply(&mut state, "d1", drop_next("new")),
            CommandResult::Done { .. }
        ));
        // Back where it was: the current CA, no rotation, no previous CA.
        assert_eq!(state.ca.as_ref().unwrap(), &record(None));
        let revision = state.revision;
        assert_eq!(
            apply(&mut state, "d2", drop_next("new")),
            CommandResult::Done { revision }
        );
        // A rotation that finished cannot be aborted.
        apply(
            &mut state,
            "s3",
            Op::StartCaRotation {
                next: next_ca("new2"),
            },
        );
        apply(
            &mut state,
            "f2",
            Op::FinishCaRotation {
                fingerprint: "new2".into(),
            },
        );
        assert_eq!(
            apply(&mut state, "a4", abort("new2")),
            CommandResult::Rejected {
                reason: "the rotation to new2 has finished: it is the cluster CA now (rotate \
                         again to replace it)"
                    .into()
            }
        );
    }

    fn aborted_at(next: &str, at: u64) -> CaRecord {
        let mut ca = record(Some(next));
        ca.next.as_mut().unwrap().aborted_ms = Some(at);
        ca
    }
}
