//! The `volume` kind: Docker named volumes that smr creates on the nodes that need them.
//!
//! A volume object `GROUP/NAME` is the Docker volume named `GROUP-NAME` (simplecontainer's
//! naming), created with the object's `driver` (default `local`) and `driver_opts`. A container
//! mounts it by that name (`volumes: [{type: volume, name: GROUP-NAME, mountPoint: ...}]`). smr
//! marks the volumes it creates with [`labels::MANAGED`], [`labels::OWNER`] (`volume/GROUP/NAME`)
//! and [`HASH`] (driver and options), and touches no other volume.
//!
//! What is decided here, without I/O: the Docker configuration of a volume object
//! ([`volume_config`]), which definitions use one ([`users_of`], refused deletions) and what a
//! node does about its volumes ([`plan_volumes`]).

use std::collections::{BTreeMap, BTreeSet};

use sha2::{Digest, Sha256};

use crate::container::{ContainerConfig, labels};
use crate::definitions::{ContainersSpec, Kind, Object, ObjectKey, Spec, VolumeMount, VolumeSpec};
use crate::node_resource::{self, Action, Plan, Resource, Shown};
use crate::state::{ClusterState, StoredObject};

/// Label with the hash of a volume's driver and options ([`VolumeConfig::hash`]).
pub const HASH: &str = "io.smr.volume-hash";

/// The driver of a volume object without `driver`.
pub const DEFAULT_DRIVER: &str = "local";

/// What Docker needs to create one named volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeConfig {
    /// The Docker volume name, `GROUP-NAME`.
    pub name: String,
    pub driver: String,
    pub driver_opts: BTreeMap<String, String>,
    /// smr's labels: managed, owner, hash.
    pub labels: BTreeMap<String, String>,
}

/// What Docker shows of one volume on a node.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct VolumeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Containers (by name, managed or not, in any state) that mount it.
    pub users: Vec<String>,
}

/// The Docker volume name of volume object `group/name`.
pub fn docker_name(group: &str, name: &str) -> String {
    format!("{group}-{name}")
}

/// The named volume a container mount refers to, if it is one (not a host path), read as
/// [`crate::convert`] renders it.
pub fn mounted_name(v: &VolumeMount) -> Option<&str> {
    match (v.kind.as_deref(), &v.host_path, &v.name) {
        (Some("volume"), _, Some(name)) => Some(name),
        (_, None, Some(name)) => Some(name),
        _ => None,
    }
}

/// The stable hash of a volume's driver and options: the volume on a node is the object's when
/// their hashes match.
pub fn spec_hash(spec: &VolumeSpec) -> String {
    let mut h = Sha256::new();
    h.update(spec.driver.as_deref().unwrap_or(DEFAULT_DRIVER).as_bytes());
    for (k, v) in &spec.driver_opts {
        h.update([0]);
        h.update(k.as_bytes());
        h.update([1]);
        h.update(v.as_bytes());
    }
    hex::encode(&h.finalize()[..12])
}

/// The Docker configuration of a volume object (`None` for another kind).
pub fn volume_config(stored: &StoredObject) -> Option<VolumeConfig> {
    let Spec::Volume(spec) = &stored.object.spec else {
        return None;
    };
    let key = stored.object.key();
    Some(VolumeConfig {
        name: docker_name(&key.group, &key.name),
        driver: spec.driver.clone().unwrap_or_else(|| DEFAULT_DRIVER.into()),
        driver_opts: spec.driver_opts.clone(),
        labels: BTreeMap::from([
            (labels::MANAGED.to_string(), "true".to_string()),
            (labels::OWNER.to_string(), key.to_string()),
            (HASH.to_string(), spec_hash(spec)),
        ]),
    })
}

fn spec_mounts(spec: &ContainersSpec, name: &str) -> bool {
    spec.volumes.iter().any(|v| mounted_name(v) == Some(name))
        || spec
            .init_container
            .as_ref()
            .is_some_and(|init| spec_mounts(init, name))
}

/// The `containers` definitions that mount volume object `key`, in key order, leaving out
/// `except` (definitions deleted together with it).
pub fn users_of(
    state: &ClusterState,
    key: &ObjectKey,
    except: &BTreeSet<ObjectKey>,
) -> Vec<ObjectKey> {
    users_after(state, &[], key, except)
}

/// [`users_of`] once `applied` (objects applied in the same step) replaced their stored versions.
fn users_after(
    state: &ClusterState,
    applied: &[Object],
    key: &ObjectKey,
    except: &BTreeSet<ObjectKey>,
) -> Vec<ObjectKey> {
    let name = docker_name(&key.group, &key.name);
    let mut specs: BTreeMap<ObjectKey, Option<&ContainersSpec>> = state
        .keyed_objects_of(Kind::Containers)
        .map(|(k, s)| (k.clone(), s.object.spec.as_containers()))
        .collect();
    for object in applied.iter().filter(|o| o.kind == Kind::Containers) {
        specs.insert(object.key(), object.spec.as_containers());
    }
    specs
        .into_iter()
        .filter(|(k, spec)| !except.contains(k) && spec.is_some_and(|s| spec_mounts(s, &name)))
        .map(|(k, _)| k)
        .collect()
}

/// Why volume `key` cannot be deleted: the definitions that mount it.
pub fn delete_refusal(key: &ObjectKey, users: &[ObjectKey]) -> String {
    let users: Vec<String> = users.iter().map(ToString::to_string).collect();
    format!(
        "{key} is used by {} (mounted as Docker volume {}): delete them or remove the mount first",
        users.join(", "),
        docker_name(&key.group, &key.name)
    )
}

/// Why a volume object's driver or options cannot change.
pub fn change_refusal(key: &ObjectKey) -> String {
    format!(
        "{key}: driver and driver_opts of an existing volume cannot change (the volume on each \
         node was created with them and holds data); delete the volume object and apply it again"
    )
}

/// Named volumes a container configuration mounts (`NAME:/target` binds).
pub fn named_binds(c: &ContainerConfig) -> impl Iterator<Item = &str> {
    c.binds.iter().filter_map(|b| {
        let source = b.split(':').next()?;
        (!source.is_empty() && !source.starts_with('/')).then_some(source)
    })
}

/// What a node does about a volume.
pub type VolumeAction = Action<VolumeConfig>;

/// The result of [`plan_volumes`].
pub type VolumePlan = Plan<VolumeConfig>;

impl Shown for VolumeInfo {
    fn name(&self) -> &str {
        &self.name
    }
    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
    fn users(&self) -> &[String] {
        &self.users
    }
    fn ours(&self) -> bool {
        self.labels.get(labels::MANAGED).map(String::as_str) == Some("true")
    }
}

impl Resource for VolumeConfig {
    type Shown = VolumeInfo;
    const NOUN: &'static str = "volume";
    const A_NOUN: &'static str = "a volume";
    const MATCH_LABEL: &'static str = HASH;

    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
    fn recreating(&self, name: &str) -> String {
        format!("recreating volume {name} with its new options")
    }
    fn mismatch_in_use(&self, name: &str, users: &str) -> String {
        format!(
            "volume {name} on this node has other options than its object and is used by {users}"
        )
    }
}

/// The volume actions of a node: `needed` are the Docker volume names its replicas mount,
/// `observed` what Docker shows (`Err`: it could not be listed), `errors` the last failed action
/// per volume name. Creates what a replica needs and is missing; removes what smr created for an
/// object that is gone once no container mounts it. A volume of an existing object that no
/// replica here needs is kept (it holds data).
pub fn plan_volumes(
    state: &ClusterState,
    needed: &BTreeSet<String>,
    observed: Result<&[VolumeInfo], &str>,
    errors: &BTreeMap<String, String>,
) -> VolumePlan {
    let objects: BTreeMap<String, VolumeConfig> = state
        .objects_of(Kind::Volume)
        .filter_map(volume_config)
        .map(|c| (c.name.clone(), c))
        .collect();
    // smr's volumes whose object is gone.
    let gone = |v: &VolumeInfo, _: &BTreeSet<&String>| {
        v.labels
            .get(labels::OWNER)
            .and_then(|o| o.parse::<ObjectKey>().ok())
            .is_none_or(|k| !state.objects.contains_key(&k))
    };
    node_resource::plan(&objects, needed, observed, errors, gone)
}

/// Why deleting `keys` (gitops cascades included) is refused: a volume object among them that
/// a definition left in place still mounts.
pub fn refuse_delete(state: &ClusterState, keys: &[ObjectKey]) -> Option<String> {
    refuse_delete_after(state, &[], keys)
}

/// [`refuse_delete`] for a step that also applies `applied` (a gitops sync).
pub fn refuse_delete_after(
    state: &ClusterState,
    applied: &[Object],
    keys: &[ObjectKey],
) -> Option<String> {
    let deleted: BTreeSet<ObjectKey> = keys.iter().cloned().collect();
    keys.iter()
        .filter(|k| k.kind == Kind::Volume && state.objects.contains_key(*k))
        .find_map(|key| {
            let users = users_after(state, applied, key, &deleted);
            (!users.is_empty()).then(|| delete_refusal(key, &users))
        })
}

/// Why applying `object` is refused: it changes the driver or options of an existing volume.
pub fn refuse_change(state: &ClusterState, object: &Object) -> Option<String> {
    let Spec::Volume(new) = &object.spec else {
        return None;
    };
    let key = object.key();
    match state.objects.get(&key).map(|s| &s.object.spec) {
        Some(Spec::Volume(old)) if spec_hash(old) != spec_hash(new) => Some(change_refusal(&key)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::definitions::Meta;
    use crate::state::{Command, CommandResult, Op, Outcome};

    fn object(kind: Kind, group: &str, name: &str, spec: Spec) -> Object {
        Object {
            kind,
            prefix: "simplecontainer.io/v1".into(),
            meta: Meta {
                group: group.into(),
                name: name.into(),
                labels: Default::default(),
            },
            spec,
        }
    }

    fn volume(driver: Option<&str>) -> Object {
        let spec = VolumeSpec {
            driver: driver.map(str::to_string),
            driver_opts: BTreeMap::from([("type".into(), "tmpfs".into())]),
        };
        object(Kind::Volume, "storage", "data", Spec::Volume(spec))
    }

    fn app(name: &str, mounts: &str) -> Object {
        let spec = ContainersSpec {
            image: "busybox".into(),
            volumes: vec![VolumeMount {
                name: Some(mounts.into()),
                kind: Some("volume".into()),
                mount_point: "/data".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        object(
            Kind::Containers,
            "app",
            name,
            Spec::Containers(Box::new(spec)),
        )
    }

    fn run(state: &mut ClusterState, op: Op) -> CommandResult {
        state.apply(&Command {
            op_id: String::new(),
            at_ms: 1000,
            op,
        })
    }

    fn apply(state: &mut ClusterState, objects: Vec<Object>) -> CommandResult {
        run(
            state,
            Op::Apply {
                objects,
                owner: None,
            },
        )
    }

    fn delete(state: &mut ClusterState, keys: &[&str]) -> CommandResult {
        let keys = keys.iter().map(|k| k.parse().unwrap()).collect();
        run(state, Op::Delete { keys })
    }

    fn deleted(result: &CommandResult) -> Vec<String> {
        match result {
            CommandResult::Objects { outcomes, .. } => outcomes
                .iter()
                .filter(|o| o.outcome == Outcome::Deleted)
                .map(|o| o.key.to_string())
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deleting_a_mounted_volume_is_refused_naming_its_users() {
        let mut state = ClusterState::default();
        apply(
            &mut state,
            vec![
                volume(None),
                app("db", "storage-data"),
                app("web", "storage-data"),
                app("other", "scratch"),
            ],
        );
        let before = state.revision;
        assert_eq!(
            delete(&mut state, &["volume/storage/data"]),
            CommandResult::Rejected {
                reason: "volume/storage/data is used by containers/app/db, containers/app/web \
                         (mounted as Docker volume storage-data): delete them or remove the \
                         mount first"
                    .into()
            }
        );
        assert_eq!(state.revision, before);
        assert!(
            state
                .objects
                .contains_key(&"volume/storage/data".parse().unwrap())
        );

        // With one of its users: still refused, naming the other.
        let r = delete(&mut state, &["volume/storage/data", "containers/app/db"]);
        let CommandResult::Rejected { reason } = r else {
            panic!("{r:?}")
        };
        assert!(
            reason.contains("used by containers/app/web (mounted"),
            "{reason}"
        );

        // With all of them, or once they are gone: deleted.
        let r = delete(
            &mut state,
            &[
                "containers/app/web",
                "volume/storage/data",
                "containers/app/db",
            ],
        );
        assert_eq!(
            deleted(&r),
            vec![
                "containers/app/web",
                "volume/storage/data",
                "containers/app/db"
            ]
        );
    }

    #[test]
    fn an_init_container_mount_makes_a_user_too() {
        let mut state = ClusterState::default();
        let mut with_init = app("db", "scratch");
        if let Spec::Containers(spec) = &mut with_init.spec {
            let Spec::Containers(init) = app("init", "storage-data").spec else {
                unreachable!()
            };
            spec.init_container = Some(init);
        }
        apply(&mut state, vec![volume(None), with_init]);
        let r = delete(&mut state, &["volume/storage/data"]);
        assert!(matches!(r, CommandResult::Rejected { .. }), "{r:?}");
    }

    #[test]
    fn changing_the_driver_or_options_of_a_volume_is_refused() {
        let mut state = ClusterState::default();
        apply(&mut state, vec![volume(None)]);
        // `local` is the default driver: the same volume.
        let same = apply(&mut state, vec![volume(Some("local"))]);
        assert!(matches!(same, CommandResult::Objects { .. }), "{same:?}");
        assert_eq!(
            apply(&mut state, vec![volume(Some("nfs"))]),
            CommandResult::Rejected {
                reason: change_refusal(&"volume/storage/data".parse().unwrap())
            }
        );
        // Labels may change.
        let mut labelled = volume(None);
        labelled.meta.labels.insert("team".into(), "infra".into());
        let r = apply(&mut state, vec![labelled]);
        assert!(matches!(r, CommandResult::Objects { .. }), "{r:?}");
    }

    #[test]
    fn a_sync_that_deletes_a_mounted_volume_is_refused_unless_it_drops_the_mount() {
        let mut state = ClusterState::default();
        let keys = vec!["volume/storage/data".parse().unwrap()];
        apply(&mut state, vec![volume(None), app("db", "storage-data")]);
        assert!(refuse_delete_after(&state, &[], &keys).is_some());
        let unmounted = app("db", "scratch");
        assert_eq!(refuse_delete_after(&state, &[unmounted], &keys), None);
    }

    #[test]
    fn named_binds_are_the_sources_that_are_not_paths() {
        let c = ContainerConfig {
            binds: vec![
                "storage-data:/data".into(),
                "/srv/x:/x:ro".into(),
                "cache:/cache:ro".into(),
            ],
            ..Default::default()
        };
        assert_eq!(
            named_binds(&c).collect::<Vec<_>>(),
            vec!["storage-data", "cache"]
        );
    }
}
