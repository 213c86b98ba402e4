use super::*;
use crate::definitions::{Kind, Object, ObjectKey};
use crate::state::{CaRecord, Command, CommandResult, NetworkSettings, NodeRecord, NodeReport, Op};

fn node(name: &str) -> NodeRecord {
    NodeRecord {
        id: 0,
        name: name.into(),
        host: name.into(),
        domain: name.into(),
        ip: "127.0.0.1".into(),
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

fn object(kind: Kind, name: &str, yaml_spec: &str) -> Object {
    let text = format!(
        "kind: {}\nprefix: simplecontainer.io/v1\nmeta: {{group: g, name: {name}}}\nspec:\n{yaml_spec}",
        kind.as_str()
    );
    crate::definitions::parse_str("test.yaml", &text)
        .unwrap()
        .remove(0)
}

fn run(state: &mut ClusterState, op_id: &str, op: Op) -> CommandResult {
    state.apply(&Command {
        op_id: op_id.into(),
        at_ms: 1000,
        op,
    })
}

fn network() -> NetworkSettings {
    NetworkSettings {
        cidr: "10.10.0.0/16".parse().unwrap(),
        subnet_len: 24,
        backend: "vxlan".into(),
    }
}

/// A cluster of three nodes with a definition, a secret and reports.
fn cluster() -> ClusterState {
    let mut s = ClusterState::default();
    let ca = CaRecord {
        cert_pem: "PEM".into(),
        fingerprint: "ab12".into(),
        holder: 1,
        key_sealed: Some("sealed by the old cluster key".into()),
        next: None,
        previous: None,
        key_migrating: false,
    };
    run(&mut s, "ca", Op::SetCa { ca });
    run(&mut s, "net", Op::SetNetwork { network: network() });
    for name in ["n1", "n2", "n3"] {
        run(&mut s, name, Op::RegisterNode { node: node(name) });
    }
    let objects = vec![
        object(Kind::Containers, "web", "  image: busybox\n  replicas: 3\n"),
        object(Kind::Secret, "pw", "  data:\n    password: hunter2\n"),
    ];
    run(
        &mut s,
        "apply",
        Op::Apply {
            objects,
            owner: None,
        },
    );
    for id in [1, 2, 3] {
        run(
            &mut s,
            &format!("report{id}"),
            Op::Report {
                node: id,
                report: NodeReport {
                    seq: 1,
                    at_ms: 1000,
                    replicas: vec![],
                },
            },
        );
    }
    s
}

fn at() -> TakenAt {
    TakenAt {
        store: "raft".into(),
        index: 42,
        term: 3,
        taken_ms: 1_700_000_000_000,
        taken_by: "n2".into(),
    }
}

#[test]
fn a_backup_reads_back_as_the_same_state_with_its_header() {
    let state = cluster();
    let bytes = encode(&state, at()).unwrap();
    assert!(bytes.starts_with(b"smr-backup\n{\"format_version\":1,"));
    let backup = decode(&bytes).unwrap();
    assert_eq!(backup.state, state);
    let h = &backup.header;
    assert_eq!(
        (
            h.cluster_id.as_str(),
            h.store.as_str(),
            h.revision,
            h.index,
            h.term
        ),
        ("ab12", "raft", state.revision, 42, 3)
    );
    assert_eq!((h.taken_by.as_str(), h.objects), ("n2", 2));
    // The secret's value is in the file (it is the point of a backup).
    assert!(String::from_utf8_lossy(&bytes).contains("hunter2"));
}

#[test]
fn a_truncated_file_is_refused_wherever_it_is_cut() {
    let bytes = encode(&cluster(), at()).unwrap();
    // Cut inside the magic, the header, the body, or just before the final newline: every cut
    // but the last is refused (the last newline is optional).
    for cut in [0, 5, 11, 30, bytes.len() / 2, bytes.len() - 2] {
        let e = decode(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(
                e,
                BackupError::NotABackup | BackupError::Header(_) | BackupError::Truncated { .. }
            ),
            "cut at {cut}: {e}"
        );
    }
    assert!(decode(&bytes[..bytes.len() - 1]).is_ok());
    let e = decode(&bytes[..bytes.len() / 2]).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}

#[test]
fn a_changed_byte_in_the_body_is_found_by_the_checksum() {
    let mut bytes = encode(&cluster(), at()).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let at = text.find("hunter2").unwrap();
    bytes[at] = b'H';
    let e = decode(&bytes).unwrap_err();
    assert!(matches!(e, BackupError::Checksum { .. }), "{e}");
    assert!(e.to_string().contains("corrupt"), "{e}");
}

#[test]
fn another_format_version_or_another_file_is_refused() {
    let bytes = encode(&cluster(), at()).unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let newer = text.replacen("\"format_version\":1", "\"format_version\":2", 1);
    let e = decode(newer.as_bytes()).unwrap_err();
    assert_eq!(e, BackupError::Version { found: 2 });
    assert!(e.to_string().contains("format version 2"), "{e}");
    assert_eq!(
        decode(b"kind: containers\n").unwrap_err(),
        BackupError::NotABackup
    );
    assert!(matches!(
        decode(b"smr-backup\nnot json\n{}").unwrap_err(),
        BackupError::Header(_)
    ));
}

#[test]
fn a_body_that_matches_its_checksum_but_is_no_state_is_refused() {
    let body = b"[1,2,3]";
    let header = format!(
        "{{\"format_version\":1,\"cluster_id\":\"x\",\"store\":\"raft\",\"revision\":1,\"index\":1,\
         \"term\":1,\"taken_ms\":0,\"taken_by\":\"n\",\"objects\":0,\"body_bytes\":{},\
         \"body_sha256\":\"{}\"}}",
        body.len(),
        sha256_hex(body)
    );
    let file = format!("smr-backup\n{header}\n[1,2,3]\n");
    assert!(matches!(
        decode(file.as_bytes()).unwrap_err(),
        BackupError::Body(_)
    ));
}

#[test]
fn a_state_without_a_cluster_is_neither_written_nor_read() {
    assert_eq!(
        encode(&ClusterState::default(), at()).unwrap_err(),
        BackupError::NoCluster
    );
}

/// A new cluster as `smrmgr restore` creates it: its own CA, network and first node.
fn new_cluster() -> ClusterState {
    let mut s = ClusterState::default();
    let ca = CaRecord {
        cert_pem: "NEW".into(),
        fingerprint: "cd34".into(),
        holder: 1,
        key_sealed: Some("sealed by the new cluster key".into()),
        next: None,
        previous: None,
        key_migrating: false,
    };
    run(&mut s, "ca", Op::SetCa { ca });
    run(&mut s, "net", Op::SetNetwork { network: network() });
    run(
        &mut s,
        "n",
        Op::RegisterNode {
            node: node("fresh"),
        },
    );
    s
}

#[test]
fn restore_keeps_the_objects_and_nothing_of_the_old_membership() {
    let old = cluster();
    let mut s = new_cluster();
    let result = run(
        &mut s,
        "restore",
        Op::Restore {
            state: Box::new(restored(&old)),
        },
    );
    assert!(matches!(result, CommandResult::Done { .. }), "{result:?}");
    let keys: Vec<String> = s.objects.keys().map(ObjectKey::to_string).collect();
    assert_eq!(keys, ["containers/g/web", "secret/g/pw"]);
    assert_eq!(s.objects, old.objects);
    // The new cluster's own CA and node stay; no old node, report or placement comes along.
    let ca = s.ca.as_ref().unwrap();
    assert_eq!(ca.fingerprint, "cd34");
    assert_eq!(
        ca.key_sealed.as_deref(),
        Some("sealed by the new cluster key")
    );
    let names: Vec<&str> = s.nodes.values().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["fresh"]);
    assert!(s.reports.is_empty() && s.placements.is_empty());
    assert!(s.revision > old.revision);
    // Once objects are there, another restore is refused, and changes nothing.
    let before = s.clone();
    let again = run(
        &mut s,
        "restore2",
        Op::Restore {
            state: Box::new(restored(&old)),
        },
    );
    assert!(
        matches!(again, CommandResult::Rejected { ref reason } if reason.contains("already holds 2 object")),
        "{again:?}"
    );
    assert_eq!(s.objects, before.objects);
}

#[test]
fn restore_refuses_a_backup_of_another_network() {
    let mut old = cluster();
    old.network = Some(NetworkSettings {
        backend: "wireguard".into(),
        ..network()
    });
    let mut s = new_cluster();
    let result = run(
        &mut s,
        "restore",
        Op::Restore {
            state: Box::new(restored(&old)),
        },
    );
    assert!(
        matches!(result, CommandResult::Rejected { ref reason } if reason.contains("wireguard")),
        "{result:?}"
    );
    assert!(s.objects.is_empty());
}

#[test]
fn force_new_cluster_keeps_the_survivor_alone_with_everything_else() {
    let old = cluster();
    let mut s = ClusterState::default();
    let result = run(
        &mut s,
        "force",
        Op::ForceNewCluster {
            state: Box::new(old.clone()),
            keep: 1,
        },
    );
    assert!(matches!(result, CommandResult::Done { .. }), "{result:?}");
    assert_eq!(s.nodes.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(s.reports.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(s.objects, old.objects);
    assert_eq!(s.ca, old.ca);
    // New nodes get new ids: the old ones are never reused.
    assert_eq!(s.last_node_id, 3);
    let event = s.events.iter().last().unwrap();
    assert_eq!(event.reason, "ForcedNewCluster");
    assert!(
        event.message.contains("n2 (id 2), n3 (id 3)"),
        "{}",
        event.message
    );
    // Only into an empty state.
    let again = run(
        &mut s,
        "force2",
        Op::ForceNewCluster {
            state: Box::new(old),
            keep: 1,
        },
    );
    assert!(matches!(again, CommandResult::Rejected { .. }), "{again:?}");
}
