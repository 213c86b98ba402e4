use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use super::snapshot::{Input, render};
use crate::definitions;
use crate::scheduler::{Placement, ReplicaSlot};
use crate::state::{
    ClusterState, Command, GitopsState, GitopsStatus, NodeRecord, NodeReport, Op, ReplicaReport,
};
use crate::store::{ServerState, StoreStatus};

fn apply(state: &mut ClusterState, op: Op) {
    state.apply(&Command {
        op_id: String::new(),
        at_ms: 0,
        op,
    });
}

fn node(name: &str) -> NodeRecord {
    NodeRecord {
        id: 0,
        name: name.into(),
        host: String::new(),
        domain: String::new(),
        ip: "10.0.0.1".into(),
        api_port: 1443,
        raft_port: 9212,
        labels: Default::default(),
        joined_ms: 0,
        schedulable: true,
        lease: None,
        vtep_mac: None,
        public_ip: None,
        wg_port: None,
        wg_public_key: None,
    }
}

/// Two nodes, three replicas of g/n (two on n1, one running and ready, one crash-looping; one on
/// n2 not reported yet), a gitops object synced 90 s before `now`.
fn state() -> ClusterState {
    let mut state = ClusterState::default();
    apply(&mut state, Op::RegisterNode { node: node("n1") });
    apply(&mut state, Op::RegisterNode { node: node("n2") });
    let yaml = "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: n\nspec:\n  image: busybox\n  replicas: 3\n";
    let objects = definitions::parse_str("t.yaml", yaml).expect("valid");
    apply(
        &mut state,
        Op::Apply {
            objects,
            owner: None,
        },
    );
    let key: definitions::ObjectKey = "containers/g/n".parse().expect("key");
    let placement = Placement {
        replicas: BTreeMap::from([
            (1, ReplicaSlot::new(1, 1)),
            (2, ReplicaSlot::new(1, 1)),
            (3, ReplicaSlot::new(2, 1)),
        ]),
    };
    state.placements.insert(key.clone(), placement);
    let report = |index: u32, phase: &str, ready: bool| ReplicaReport {
        key: key.clone(),
        index,
        name: format!("g-n-{index}"),
        container_id: None,
        phase: phase.into(),
        ready,
        ip: None,
        restarts: 0,
        generation: 1,
        image: String::new(),
        started_ms: None,
        message: None,
        ips: Default::default(),
    };
    state.reports.insert(
        1,
        NodeReport {
            seq: 1,
            at_ms: 0,
            replicas: vec![report(1, "running", true), report(2, "crash-loop", false)],
        },
    );
    state.gitops.insert(
        "gitops/ops/app".parse().expect("key"),
        GitopsStatus {
            state: GitopsState::Synced,
            last_sync_ms: Some(1_000_000),
            ..Default::default()
        },
    );
    state
}

fn series(input: &Input) -> Vec<String> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode_registry(&mut text, &render(input)).expect("encodes");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_scrape_renders_store_replicas_gitops_overlay_and_dns() {
    let input = Input {
        status: StoreStatus {
            id: 1,
            state: ServerState::Leader,
            leader: Some(1),
            term: 4,
            last_log_index: Some(42),
            last_applied: Some(41),
            voters: BTreeSet::from([1, 2, 3]),
            learners: BTreeSet::new(),
            members: BTreeMap::new(),
            problem: None,
        },
        commit_index: Some(41),
        state: Some(Arc::new(state())),
        peers: Vec::new(),
        dns: [
            ("noerror", 7),
            ("nxdomain", 2),
            ("servfail", 0),
            ("refused", 1),
            ("formerr", 0),
            ("notimp", 0),
            ("other", 0),
        ],
        now_ms: 1_090_000,
    };
    let expected = [
        r#"smr_node_info{id="1"} 1"#,
        r#"smr_store_role{role="leader"} 1"#,
        r#"smr_store_role{role="follower"} 0"#,
        r#"smr_store_role{role="candidate"} 0"#,
        r#"smr_store_role{role="learner"} 0"#,
        r#"smr_store_role{role="shutdown"} 0"#,
        r#"smr_store_role{role="degraded"} 0"#,
        "smr_store_term 4",
        "smr_store_last_log_index 42",
        "smr_store_commit_index 41",
        "smr_store_applied_index 41",
        "smr_store_voters 3",
        "smr_store_leader_id 1",
        "smr_store_degraded 0",
        r#"smr_replicas{node="n1",phase="crash-loop"} 1"#,
        r#"smr_replicas{node="n1",phase="running"} 1"#,
        r#"smr_replicas{node="n2",phase="pending"} 1"#,
        r#"smr_replicas_ready{node="n1"} 1"#,
        r#"smr_replicas_ready{node="n2"} 0"#,
        r#"smr_gitops_status{gitops="ops/app",state="pending"} 0"#,
        r#"smr_gitops_status{gitops="ops/app",state="synced"} 1"#,
        r#"smr_gitops_status{gitops="ops/app",state="out-of-sync"} 0"#,
        r#"smr_gitops_status{gitops="ops/app",state="drifted"} 0"#,
        r#"smr_gitops_status{gitops="ops/app",state="conflict"} 0"#,
        r#"smr_gitops_status{gitops="ops/app",state="error"} 0"#,
        r#"smr_gitops_last_sync_timestamp_seconds{gitops="ops/app"} 1000.0"#,
        r#"smr_gitops_last_sync_age_seconds{gitops="ops/app"} 90.0"#,
        "smr_overlay_peers 0",
        r#"smr_dns_queries_total{result="noerror"} 7"#,
        r#"smr_dns_queries_total{result="nxdomain"} 2"#,
        r#"smr_dns_queries_total{result="servfail"} 0"#,
        r#"smr_dns_queries_total{result="refused"} 1"#,
        r#"smr_dns_queries_total{result="formerr"} 0"#,
        r#"smr_dns_queries_total{result="notimp"} 0"#,
        r#"smr_dns_queries_total{result="other"} 0"#,
    ];
    let mut got = series(&input);
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn metrics_addr_is_ip_port_or_off() {
    assert_eq!(super::parse_addr("off"), Ok(None));
    assert_eq!(
        super::parse_addr("127.0.0.1:9213"),
        Ok(Some("127.0.0.1:9213".parse().expect("addr")))
    );
    let err = super::parse_addr("localhost").expect_err("no host names");
    assert!(err.contains("IP:PORT"), "{err}");
}

/// How `smr_replicas` was counted before `count_replicas`: from the views of every replica.
fn counted_from_views(state: &ClusterState) -> super::snapshot::ReplicaCounts {
    let mut counts = super::snapshot::ReplicaCounts::default();
    for view in crate::views::replicas(state, None) {
        let node = if view.node_name.is_empty() {
            view.node.to_string()
        } else {
            view.node_name.clone()
        };
        *counts
            .by_phase
            .entry((node.clone(), view.state.clone()))
            .or_default() += 1;
        *counts.ready.entry(node).or_default() += i64::from(view.ready);
    }
    counts
}

#[test]
fn replica_counts_say_what_the_views_say_and_follow_a_new_version() {
    let mut state = state();
    let key: definitions::ObjectKey = "containers/g/n".parse().expect("key");
    // A slot on a node without a record, a replica reported twice (the first counts), one
    // reported by a node it is not placed on (it does not count there).
    let mut placement = state.placements.get(&key).cloned().expect("placed");
    placement.replicas.insert(4, ReplicaSlot::new(7, 1));
    placement.replicas.insert(5, ReplicaSlot::new(2, 1));
    state.placements.insert(key.clone(), placement);
    let mut report = state.reports.get(&1).cloned().expect("reported");
    let mut again = report.replicas[0].clone();
    again.phase = "exited".into();
    again.ready = false;
    report.replicas.push(again);
    let mut elsewhere = report.replicas[0].clone();
    elsewhere.index = 5;
    report.replicas.push(elsewhere);
    state.reports.insert(1, report);
    let counts = super::snapshot::count_replicas(&state);
    assert_eq!(counts, counted_from_views(&state));
    assert_eq!(
        counts.by_phase,
        BTreeMap::from([
            (("7".to_string(), "pending".to_string()), 1),
            (("n1".to_string(), "crash-loop".to_string()), 1),
            (("n1".to_string(), "running".to_string()), 1),
            (("n2".to_string(), "pending".to_string()), 2),
        ])
    );

    // A scrape counts the version it reads: the same twice, then a changed report.
    let input = |state: &ClusterState| Input {
        status: StoreStatus {
            id: 1,
            state: ServerState::Leader,
            leader: Some(1),
            term: 1,
            last_log_index: None,
            last_applied: None,
            voters: BTreeSet::from([1]),
            learners: BTreeSet::new(),
            members: BTreeMap::new(),
            problem: None,
        },
        commit_index: None,
        state: Some(Arc::new(state.clone())),
        peers: Vec::new(),
        dns: [("noerror", 0); 7],
        now_ms: 0,
    };
    let running = r#"smr_replicas{node="n1",phase="running"} 1"#;
    assert!(series(&input(&state)).iter().any(|s| s == running));
    assert!(series(&input(&state)).iter().any(|s| s == running));
    let mut report = state.reports.get(&1).cloned().expect("reported");
    report.replicas[0].phase = "exited".into();
    state.reports.insert(1, report);
    let text = series(&input(&state));
    assert!(!text.iter().any(|s| s == running), "{text:?}");
    assert!(
        text.iter()
            .any(|s| s == r#"smr_replicas{node="n1",phase="exited"} 1"#)
    );
}
