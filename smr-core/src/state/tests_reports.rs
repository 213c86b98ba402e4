//! Reports as deltas and their merge (issue 14): exact outputs.

use super::tests::{cmd, node, obj};
use super::*;

/// Replica `index` of object `g/x` in `phase`.
fn r(index: u32, phase: &str) -> ReplicaReport {
    ReplicaReport {
        key: obj("x", "a").key(),
        index,
        name: format!("g-x-{index}"),
        container_id: Some(format!("c{index}")),
        phase: phase.into(),
        ready: phase == "running",
        ip: None,
        restarts: 0,
        generation: 1,
        image: "a:latest".into(),
        started_ms: None,
        message: None,
        ips: Default::default(),
    }
}

fn gone(index: u32) -> ReplicaRef {
    ReplicaRef {
        key: obj("x", "a").key(),
        index,
    }
}

fn delta(
    node: NodeId,
    seq: u64,
    base: u64,
    set: Vec<ReplicaReport>,
    removed: Vec<u32>,
) -> ReportDelta {
    ReportDelta {
        node,
        seq,
        at_ms: seq * 10,
        base: Some(base),
        set,
        removed: removed.into_iter().map(gone).collect(),
    }
}

fn held(seq: u64, replicas: Vec<ReplicaReport>) -> NodeReport {
    NodeReport {
        seq,
        at_ms: seq * 10,
        replicas,
    }
}

#[test]
fn between_names_only_what_changed_and_nothing_when_nothing_did() {
    let before = vec![r(1, "running"), r(2, "starting"), r(3, "running")];
    let after = vec![r(1, "running"), r(2, "running"), r(4, "pending")];
    assert_eq!(
        ReportDelta::between(7, 11, 110, 10, &before, &after),
        Some(delta(
            7,
            11,
            10,
            vec![r(2, "running"), r(4, "pending")],
            vec![3]
        ))
    );
    assert_eq!(ReportDelta::between(7, 11, 110, 10, &before, &before), None);
    // A list that names a replica twice goes in full.
    let twice = vec![r(1, "running"), r(1, "exited")];
    assert_eq!(
        ReportDelta::between(7, 11, 110, 10, &before, &twice),
        Some(ReportDelta::full(7, 11, 110, twice.clone()))
    );
}

#[test]
fn a_delta_applies_in_place_on_its_base_and_not_on_another() {
    let current = held(10, vec![r(1, "running"), r(2, "starting"), r(3, "running")]);
    let d = delta(7, 11, 10, vec![r(4, "pending"), r(2, "running")], vec![3]);
    assert_eq!(
        d.apply_to(Some(&current)),
        Ok(held(
            11,
            vec![r(1, "running"), r(2, "running"), r(4, "pending")]
        ))
    );
    assert_eq!(
        d.apply_to(Some(&held(9, vec![]))),
        Err(StaleBase {
            base: 10,
            held: Some(9)
        })
    );
    assert_eq!(
        d.apply_to(None),
        Err(StaleBase {
            base: 10,
            held: None
        })
    );
    let full = ReportDelta::full(7, 3, 30, vec![r(5, "running")]);
    assert_eq!(
        full.apply_to(Some(&current)),
        Ok(held(3, vec![r(5, "running")]))
    );
}

#[test]
fn merge_folds_each_nodes_chain_and_keeps_the_order_of_first_arrival() {
    let merged = merge_reports(vec![
        delta(1, 11, 10, vec![r(1, "starting"), r(2, "starting")], vec![9]),
        delta(2, 21, 20, vec![r(1, "running")], vec![]),
        // Builds on node 1's first: replaces replica 1 where it stands, removes 2, adds 3.
        delta(1, 12, 11, vec![r(3, "pending"), r(1, "running")], vec![2]),
        // Builds on a report node 2 never sent: kept as it is, where it arrived.
        delta(2, 31, 30, vec![r(2, "running")], vec![]),
        // A full report of node 3, then a delta on it: one full report.
        ReportDelta::full(3, 5, 50, vec![r(1, "starting"), r(2, "running")]),
        delta(3, 6, 5, vec![r(1, "running")], vec![2]),
    ]);
    assert_eq!(
        merged,
        vec![
            delta(
                1,
                12,
                10,
                vec![r(1, "running"), r(3, "pending")],
                vec![9, 2]
            ),
            delta(2, 21, 20, vec![r(1, "running")], vec![]),
            delta(2, 31, 30, vec![r(2, "running")], vec![]),
            ReportDelta::full(3, 6, 60, vec![r(1, "running")]),
        ]
    );
    // A full report replaces whatever came before it from the same node.
    assert_eq!(
        merge_reports(vec![
            delta(1, 11, 10, vec![r(1, "starting")], vec![]),
            ReportDelta::full(1, 12, 120, vec![]),
        ]),
        vec![ReportDelta::full(1, 12, 120, vec![])]
    );
}

#[test]
fn a_merged_delta_applies_to_what_the_two_apply_to_one_after_the_other() {
    let base = held(10, vec![r(1, "pending"), r(2, "pending"), r(9, "running")]);
    let first = delta(1, 11, 10, vec![r(1, "starting"), r(5, "pending")], vec![9]);
    let second = delta(1, 12, 11, vec![r(5, "running"), r(6, "pending")], vec![2]);
    let one_by_one = second
        .apply_to(Some(&first.apply_to(Some(&base)).expect("applies")))
        .expect("applies");
    let merged = merge_reports(vec![first, second]);
    assert_eq!(merged.len(), 1);
    assert_eq!(merged[0].apply_to(Some(&base)), Ok(one_by_one));
}

fn state_with_nodes(n: usize) -> ClusterState {
    let mut s = ClusterState::default();
    for i in 0..n {
        s.apply(&cmd(
            &format!("n{i}"),
            Op::RegisterNode {
                node: node(&format!("n{i}")),
            },
        ));
    }
    s
}

#[test]
fn a_delta_of_one_replica_leaves_the_others_untouched_with_one_event() {
    let mut s = state_with_nodes(1);
    s.apply(&cmd(
        "full",
        Op::Reports {
            reports: vec![ReportDelta::full(
                1,
                10,
                100,
                vec![r(1, "running"), r(2, "starting"), r(3, "running")],
            )],
        },
    ));
    let before = s.clone();
    let events = s.events.len();
    let result = s.apply(&cmd(
        "d",
        Op::Reports {
            reports: vec![delta(1, 11, 10, vec![r(2, "running")], vec![])],
        },
    ));
    assert_eq!(
        result,
        CommandResult::Reported {
            revision: before.revision + 1,
            resend: vec![],
            unknown: vec![]
        }
    );
    assert_eq!(
        s.reports.get(&1),
        Some(&held(
            11,
            vec![r(1, "running"), r(2, "running"), r(3, "running")]
        ))
    );
    let new: Vec<(&str, Option<&str>)> = s
        .events
        .iter()
        .skip(events)
        .map(|e| (e.reason.as_str(), e.replica.as_deref()))
        .collect();
    assert_eq!(new, vec![("Ready", Some("g-x-2"))]);
    let d = ClusterState::delta(&before, &s);
    assert_eq!(d.reports.changed, BTreeSet::from([1]));
    assert_eq!(d.replicas, BTreeSet::from([obj("x", "a").key()]));
}

#[test]
fn reports_of_many_nodes_make_one_revision_and_name_who_must_resend_or_is_unknown() {
    let mut s = state_with_nodes(3);
    let revision = s.revision;
    let result = s.apply(&cmd(
        "many",
        Op::Reports {
            reports: vec![
                ReportDelta::full(1, 10, 100, vec![r(1, "running")]),
                ReportDelta::full(2, 20, 200, vec![r(2, "running")]),
                // Node 3 has no report: a delta cannot apply.
                delta(3, 31, 30, vec![r(3, "running")], vec![]),
                ReportDelta::full(9, 1, 10, vec![]),
                // Builds on node 1's report just applied.
                delta(1, 11, 10, vec![], vec![1]),
            ],
        },
    ));
    assert_eq!(
        result,
        CommandResult::Reported {
            revision: revision + 1,
            resend: vec![3],
            unknown: vec![9]
        }
    );
    assert_eq!(s.revision, revision + 1);
    assert_eq!(s.reports.get(&1), Some(&held(11, vec![])));
    assert_eq!(s.reports.get(&2), Some(&held(20, vec![r(2, "running")])));
    assert_eq!(s.reports.get(&3), None);
    let reasons: Vec<&str> = s.events.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, vec!["Ready", "Ready", "Removed"]);
    // Nothing applies: the revision stays.
    let result = s.apply(&cmd(
        "stale",
        Op::Reports {
            reports: vec![delta(2, 22, 21, vec![], vec![2])],
        },
    ));
    assert_eq!(
        result,
        CommandResult::Reported {
            revision: revision + 1,
            resend: vec![2],
            unknown: vec![]
        }
    );
}
