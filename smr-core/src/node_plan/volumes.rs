//! The volumes of a node's pass: [`NodePlanner::plan_volumes`] decides the volume actions (see
//! [`crate::volume::plan_volumes`]) and remembers which volumes are missing, so that
//! [`NodePlanner::plan`] holds back the replicas that mount one until it exists. What it
//! remembers between passes ([`ResourceMemory`]) serves bridge networks the same way.

use std::collections::{BTreeMap, BTreeSet};

use super::pass::{Desired, NodePlanner, Rendered};
use crate::container::{ContainerConfig, ContainerInfo};
use crate::node_resource::{Action, Missing, Plan};
use crate::scheduler::{DesiredReplica, Phase};
use crate::volume::{self, VolumeAction, VolumeInfo};

/// What the planner remembers about one kind of node resource (volumes, bridge networks)
/// between passes.
#[derive(Default)]
pub(super) struct ResourceMemory {
    /// Needed resources that are not there, from the last [`Self::plan`].
    missing: BTreeMap<String, Missing>,
    /// The last failed action per resource name.
    errors: BTreeMap<String, String>,
}

/// What the planner remembers about volumes between passes.
pub(super) type VolumeMemory = ResourceMemory;

impl ResourceMemory {
    /// The resource actions of a pass: `plan` (given the names that `names` lists of the
    /// replicas' containers and the last errors) decides them; what it finds missing is
    /// remembered for [`Self::hold`], and only the errors of what is still missing are kept.
    pub(super) fn plan<'d, I: Iterator<Item = &'d str>, C>(
        &mut self,
        d: &'d Desired,
        names: impl Fn(&'d ContainerConfig) -> I,
        plan: impl FnOnce(&BTreeSet<String>, &BTreeMap<String, String>) -> Plan<C>,
    ) -> Vec<Action<C>> {
        let needed: BTreeSet<String> = d
            .replicas
            .iter()
            .filter_map(|r| r.rendered.as_ref().ok())
            .flat_map(|r| std::iter::once(&r.container).chain(&r.init))
            .flat_map(names)
            .map(str::to_string)
            .collect();
        let plan = plan(&needed, &self.errors);
        self.errors
            .retain(|name, _| plan.missing.contains_key(name));
        self.missing = plan.missing;
        plan.actions
    }

    /// What came of an action on resource `name`.
    pub(super) fn record(&mut self, name: &str, result: Result<(), String>) {
        match result {
            Ok(()) => self.errors.remove(name),
            Err(e) => self.errors.insert(name.to_string(), e),
        };
    }

    /// Moves the replicas without a container that need a missing resource (what `names` lists
    /// of a container: volumes, bridge networks) from `wanted` to `waiting`, blocked or pending
    /// with the reason.
    #[allow(clippy::type_complexity)]
    pub(super) fn hold<'r, I: Iterator<Item = &'r str>>(
        &self,
        names: impl Fn(&'r ContainerConfig) -> I,
        wanted: Vec<(DesiredReplica, Option<&'r Rendered>)>,
        waiting: &mut Vec<(DesiredReplica, Phase, String)>,
        containers: &[&ContainerInfo],
    ) -> Vec<(DesiredReplica, Option<&'r Rendered>)> {
        if self.missing.is_empty() {
            return wanted;
        }
        let mut now = Vec::with_capacity(wanted.len());
        for (replica, rendered) in wanted {
            let exists = containers.iter().any(|c| c.name == replica.name);
            let needs = rendered.filter(|_| !exists).and_then(|r| {
                std::iter::once(&r.container)
                    .chain(&r.init)
                    .flat_map(&names)
                    .find_map(|name| self.missing.get(name))
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
}

impl NodePlanner {
    /// The volume actions of a pass, to run before [`Self::plan`]'s (whose creations wait for
    /// the volumes they mount). `observed`: the engine's volumes, or why they could not be listed.
    pub fn plan_volumes(
        &mut self,
        d: &Desired,
        observed: Result<&[VolumeInfo], &str>,
    ) -> Vec<VolumeAction> {
        self.volumes.plan(d, volume::named_binds, |needed, errors| {
            volume::plan_volumes(d.state, needed, observed, errors)
        })
    }

    /// What came of a volume action on volume `name`.
    pub fn record_volume(&mut self, name: &str, result: Result<(), String>) {
        self.volumes.record(name, result);
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
    memory.hold(volume::named_binds, wanted, waiting, containers)
}
