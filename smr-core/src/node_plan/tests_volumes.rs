//! The volume half of a node's pass, asserted as exact action lists: volumes created before the
//! replicas that mount them, removed once their object is gone and no container mounts them.

use std::collections::BTreeMap;

use super::tests_resources::{NODE, Shown, T0, created, put, put_app, replica_config};
use super::*;
use crate::container::{ContainerConfig, ContainerInfo, State, labels};
use crate::definitions::{ContainersSpec, Kind, ObjectKey, Spec, VolumeMount, VolumeSpec};
use crate::state::{ClusterState, StoredObject};
use crate::volume::{self, VolumeAction, VolumeConfig, VolumeInfo};

fn put_volume(state: &mut ClusterState, group: &str, name: &str, spec: VolumeSpec) {
    put(state, Kind::Volume, group, name, Spec::Volume(spec));
}

fn tmpfs() -> VolumeSpec {
    VolumeSpec {
        driver: None,
        driver_opts: BTreeMap::from([
            ("type".into(), "tmpfs".into()),
            ("device".into(), "tmpfs".into()),
        ]),
    }
}

/// `app/db` mounting the Docker volume `mounts`.
fn mounting(mounts: &str) -> ContainersSpec {
    ContainersSpec {
        image: "db".into(),
        volumes: vec![VolumeMount {
            name: Some(mounts.into()),
            kind: Some("volume".into()),
            mount_point: "/data".into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn render(stored: &StoredObject, index: u32, generation: u64) -> Result<Rendered, String> {
    let spec = stored.object.spec.as_containers().unwrap();
    let binds = spec
        .volumes
        .iter()
        .filter_map(|v| Some(format!("{}:{}", volume::mounted_name(v)?, v.mount_point)))
        .collect();
    Ok(Rendered {
        container: ContainerConfig {
            image: spec.image.clone(),
            binds,
            ..replica_config(stored, index, generation)
        },
        init: None,
        files: Vec::new(),
    })
}

/// The volume Docker shows once `config` was created, used by `users`.
fn observed(config: &VolumeConfig, users: &[&str]) -> VolumeInfo {
    VolumeInfo {
        name: config.name.clone(),
        labels: config.labels.clone(),
        users: users.iter().map(|u| u.to_string()).collect(),
    }
}

fn config_of(state: &ClusterState, group: &str, name: &str) -> VolumeConfig {
    let key: ObjectKey = format!("volume/{group}/{name}").parse().unwrap();
    volume::volume_config(&state.objects[&key]).unwrap()
}

/// One pass: volume actions, replica actions and the reports' (phase, message) of `app-db-1`.
fn pass(
    planner: &mut NodePlanner,
    state: &ClusterState,
    volumes: Result<&[VolumeInfo], &str>,
    containers: &[ContainerInfo],
) -> (Vec<VolumeAction>, Vec<NodeAction>, Shown) {
    super::tests_resources::pass(planner, state, render, containers, |planner, d| {
        planner.plan_volumes(d, volumes)
    })
}

fn running(name: &str, owner: &str) -> ContainerInfo {
    ContainerInfo {
        id: format!("id-{name}"),
        name: name.into(),
        labels: BTreeMap::from([
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::OWNER.to_string(), owner.to_string()),
            (labels::REPLICA.to_string(), "1".to_string()),
            (labels::GENERATION.to_string(), "1".to_string()),
            (labels::CONFIG_HASH.to_string(), "h".to_string()),
        ]),
        state: State::Running,
        exit_code: None,
        started_ms: Some(T0),
        finished_ms: None,
        ips: BTreeMap::new(),
        image: "db".into(),
    }
}

#[test]
fn a_volume_is_created_before_the_replica_that_mounts_it() {
    let mut state = ClusterState::default();
    put_volume(&mut state, "storage", "data", tmpfs());
    put_app(&mut state, mounting("storage-data"));
    let config = config_of(&state, "storage", "data");
    assert_eq!(config.name, "storage-data");
    assert_eq!(config.driver, "local");
    assert_eq!(config.driver_opts["type"], "tmpfs");
    assert_eq!(config.labels[labels::OWNER], "volume/storage/data");
    let mut planner = NodePlanner::new(NODE, None);

    let (volumes, actions, report) = pass(&mut planner, &state, Ok(&[]), &[]);
    assert_eq!(volumes, vec![VolumeAction::Create(config.clone())]);
    assert_eq!(created(&actions), Vec::<String>::new());
    assert_eq!(
        report,
        Some((
            "pending".into(),
            Some("creating volume storage-data".into())
        ))
    );
    planner.record_volume("storage-data", Ok(()));

    // The volume is there: the replica is created, nothing more is done to the volume.
    let there = [observed(&config, &[])];
    let (volumes, actions, _) = pass(&mut planner, &state, Ok(&there), &[]);
    assert_eq!(volumes, vec![]);
    assert_eq!(created(&actions), vec!["app-db-1".to_string()]);
}

#[test]
fn a_failed_creation_blocks_the_replica_with_the_error_and_is_retried() {
    let mut state = ClusterState::default();
    put_volume(&mut state, "storage", "data", tmpfs());
    put_app(&mut state, mounting("storage-data"));
    let config = config_of(&state, "storage", "data");
    let mut planner = NodePlanner::new(NODE, None);
    pass(&mut planner, &state, Ok(&[]), &[]);
    planner.record_volume("storage-data", Err("plugin \"nfs\" not found".into()));

    let (volumes, actions, report) = pass(&mut planner, &state, Ok(&[]), &[]);
    assert_eq!(volumes, vec![VolumeAction::Create(config)]);
    assert_eq!(created(&actions), Vec::<String>::new());
    let (phase, message) = report.unwrap();
    assert!(phase.starts_with("blocked"), "{phase}");
    assert_eq!(
        message.as_deref(),
        Some("creating volume storage-data (last attempt: plugin \"nfs\" not found)")
    );
}

#[test]
fn a_volume_smr_did_not_create_is_left_alone_and_blocks_the_replica() {
    let mut state = ClusterState::default();
    put_volume(&mut state, "storage", "data", tmpfs());
    put_app(&mut state, mounting("storage-data"));
    let foreign = [VolumeInfo {
        name: "storage-data".into(),
        labels: BTreeMap::new(),
        users: vec![],
    }];
    let mut planner = NodePlanner::new(NODE, None);
    let (volumes, actions, report) = pass(&mut planner, &state, Ok(&foreign), &[]);
    assert_eq!(volumes, vec![]);
    assert_eq!(created(&actions), Vec::<String>::new());
    let message = report.unwrap().1.unwrap();
    assert!(
        message.contains("exists on this node that smr did not create"),
        "{message}"
    );
}

#[test]
fn volumes_that_cannot_be_listed_block_the_replicas_that_mount_them() {
    let mut state = ClusterState::default();
    put_volume(&mut state, "storage", "data", tmpfs());
    put_app(&mut state, mounting("storage-data"));
    let mut planner = NodePlanner::new(NODE, None);
    let (volumes, actions, report) = pass(&mut planner, &state, Err("docker: timeout"), &[]);
    assert_eq!(volumes, vec![]);
    assert_eq!(created(&actions), Vec::<String>::new());
    assert_eq!(
        report.unwrap().1.as_deref(),
        Some("cannot list volumes: docker: timeout")
    );
}

#[test]
fn a_name_no_volume_object_has_is_left_to_docker() {
    let mut state = ClusterState::default();
    put_app(&mut state, mounting("scratch"));
    let mut planner = NodePlanner::new(NODE, None);
    let (volumes, actions, _) = pass(&mut planner, &state, Ok(&[]), &[]);
    assert_eq!(volumes, vec![]);
    assert_eq!(created(&actions), vec!["app-db-1".to_string()]);
}

#[test]
fn a_running_replica_is_not_held_back_when_its_volume_goes_missing() {
    let mut state = ClusterState::default();
    put_volume(&mut state, "storage", "data", tmpfs());
    put_app(&mut state, mounting("storage-data"));
    let config = config_of(&state, "storage", "data");
    let mut planner = NodePlanner::new(NODE, None);
    let containers = [running("app-db-1", "containers/app/db")];
    let (volumes, actions, report) = pass(&mut planner, &state, Ok(&[]), &containers);
    assert_eq!(volumes, vec![VolumeAction::Create(config)]);
    assert_eq!(actions, vec![]);
    assert_eq!(report.unwrap().0, "running");
}

#[test]
fn a_volume_whose_object_is_gone_is_removed_once_no_container_mounts_it() {
    let mut state = ClusterState::default();
    put_volume(&mut state, "storage", "data", tmpfs());
    let config = config_of(&state, "storage", "data");
    let mut planner = NodePlanner::new(NODE, None);

    // The object exists and no replica here mounts it: kept (it holds data).
    let unused = [observed(&config, &[])];
    let (volumes, _, _) = pass(&mut planner, &state, Ok(&unused), &[]);
    assert_eq!(volumes, vec![]);

    state.objects.clear();
    let used = [observed(&config, &["app-db-1"])];
    let (volumes, _, _) = pass(&mut planner, &state, Ok(&used), &[]);
    assert_eq!(volumes, vec![]);
    let (volumes, _, _) = pass(&mut planner, &state, Ok(&unused), &[]);
    assert_eq!(
        volumes,
        vec![VolumeAction::Remove {
            name: "storage-data".into()
        }]
    );
}

#[test]
fn a_volume_with_other_options_is_recreated_only_when_unused() {
    let mut state = ClusterState::default();
    put_volume(&mut state, "storage", "data", VolumeSpec::default());
    let old = config_of(&state, "storage", "data");
    put_volume(&mut state, "storage", "data", tmpfs());
    put_app(&mut state, mounting("storage-data"));
    let mut planner = NodePlanner::new(NODE, None);

    let used = [observed(&old, &["other"])];
    let (volumes, actions, report) = pass(&mut planner, &state, Ok(&used), &[]);
    assert_eq!(volumes, vec![]);
    assert_eq!(created(&actions), Vec::<String>::new());
    let message = report.unwrap().1.unwrap();
    assert!(message.contains("is used by other"), "{message}");

    let unused = [observed(&old, &[])];
    let (volumes, actions, _) = pass(&mut planner, &state, Ok(&unused), &[]);
    assert_eq!(
        volumes,
        vec![VolumeAction::Remove {
            name: "storage-data".into()
        }]
    );
    assert_eq!(created(&actions), Vec::<String>::new());
}
