//! The volumes of a node's pass: [`NodePlanner::plan_volumes`] decides the volume actions (see
//! [`crate::volume::plan_volumes`]) and remembers which volumes are missing, so that
//! [`NodePlanner::plan`] holds back the replicas that mount one until it exists.

use std::collections::{BTreeMap, BTreeSet};

use super::pass::{Desired, NodePlanner, Rendered};
use crate::container::{ContainerConfig, ContainerInfo};
use crate::scheduler::{DesiredReplica, Phase};
use crate::volume::{self, Missing, VolumeAction, VolumeInfo};

/// What the planner remembers about volumes between passes.
#[derive(Default)]
pub(super) struct VolumeMemory {
    /// Needed volumes that are not there, from the last [`NodePlanner::plan_volumes`].
    missing: BTreeMap<String, Missing>,
    /// The last failed action per volume name.
    errors: BTreeMap<String, String>,
}

impl NodePlanner {
    /// The volume actions of a pass, to run before [`Self::plan`]'s (whose creations wait for
    /// the volumes they mount). `observed`: the engine's volumes, or why they could not be listed.
    pub fn plan_volumes(
        &mut self,
        d: &Desired,
        observed: Result<&[VolumeInfo], &str>,
    ) -> Vec<VolumeAction> {
        let needed: BTreeSet<String> = d
            .replicas
            .iter()
            .filter_map(|r| r.rendered.as_ref().ok())
            .flat_map(|r| std::iter::once(&r.container).chain(&r.init))
            .flat_map(volume::named_binds)
            .map(str::to_string)
            .collect();
        let memory = &mut self.volumes;
        let plan = volume::plan_volumes(d.state, &needed, observed, &memory.errors);
        memory
            .errors
            .retain(|name, _| plan.missing.contains_key(name));
        memory.missing = plan.missing;
        plan.actions
    }

    /// What came of a volume action on volume `name`.
    pub fn record_volume(&mut self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => self.volumes.errors.remove(name),
            Err(e) => self.volumes.errors.insert(name.to_string(), e),
        };
    }
}

/// Moves the replicas without a container that mount a missing volume from `wanted` to
/// `waiting`.
#[allow(clippy::type_complexity)]
pub(super) fn hold<'r>(
    memory: &VolumeMemory,
    wanted: Vec<(DesiredReplica, Option<&'r Rendered>)>,
    waiting: &mut Vec<(DesiredReplica, Phase, String)>,
    containers: &[&ContainerInfo],
) -> Vec<(DesiredReplica, Option<&'r Rendered>)> {
    hold_missing(
        &memory.missing,
        volume::named_binds,
        wanted,
        waiting,
        containers,
    )
}

/// Moves the replicas without a container that need something `missing` (a volume, a bridge
/// network: what `names` lists of a container) from `wanted` to `waiting`, blocked or pending
/// with the reason.
#[allow(clippy::type_complexity)]
pub(super) fn hold_missing<'r, I: Iterator<Item = &'r str>>(
    missing: &BTreeMap<String, Missing>,
    names: impl Fn(&'r ContainerConfig) -> I,
    wanted: Vec<(DesiredReplica, Option<&'r Rendered>)>,
    waiting: &mut Vec<(DesiredReplica, Phase, String)>,
    containers: &[&ContainerInfo],
) -> Vec<(DesiredReplica, Option<&'r Rendered>)> {
    if missing.is_empty() {
        return wanted;
    }
    let mut now = Vec::with_capacity(wanted.len());
    for (replica, rendered) in wanted {
        let exists = containers.iter().any(|c| c.name == replica.name);
        let needs = rendered.filter(|_| !exists).and_then(|r| {
            std::iter::once(&r.container)
                .chain(&r.init)
                .flat_map(&names)
                .find_map(|name| missing.get(name))
        });
        match needs {
            Some(m) if m.blocked => waiting.push((
                replica,
                Phase::Blocked {
                    reason: m.why.clone(),
                },
                m.why.clone(),
            )),
            Some(m) => waiting.push((replica, Phase::Pending, m.why.clone())),
            None => now.push((replica, rendered)),
        }
    }
    now
}
