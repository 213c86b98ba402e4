//! Node-local reconcile: what one agent does with ITS replicas of one workload.
//!
//! [`plan_node`] takes the replicas the placement gives this node ([`DesiredReplica`]) and the
//! containers Docker reports for the workload ([`ObservedContainer`]), and returns the
//! [`Action`]s to run plus a [`ReplicaStatus`] per desired replica. It is pure; the executor
//! runs the actions in order and plans again on the next event or at [`NodePlan::wake_at_ms`].
//!
//! Rules:
//! - Containers without the smr labels (`smr_managed == false`) are never touched. If one holds
//!   the name a replica needs, the replica is reported [`Phase::Blocked`] instead of created.
//! - Managed containers whose index is not desired (scale down, moved away, broken labels) are
//!   stopped if running and removed. These removals come first in the action list.
//! - A desired replica with a container of the same generation and config hash is adopted as
//!   it is: a running container gets no action, so an agent restart restarts nothing. A created
//!   one is started. If several containers claim one index, the best is kept (current config,
//!   then running, then most recently started) and the others are removed.
//! - A container of another generation or config hash is replaced: Stop (if running), Remove,
//!   Create, in that order, because the new container needs the same name. The rollout planner
//!   ([`super::rollout`]) decides when a slot's generation changes, so this is where the
//!   "one at a time" of a rolling update comes from.
//! - An exited container is restarted per its [`RestartPolicy`] with exponential [`Backoff`]:
//!   the n-th consecutive restart waits `initial * 2^n` (1 s, 2 s, 4 s, ... capped at 5 min)
//!   after the container finished; a run that lasted at least `reset_after_ms` (10 min) resets
//!   the count. A replica waiting after two or more quick exits is in [`Phase::CrashLoop`].
//!
//! [`Action::Create`] means "create and start the container of this index from its desired
//! spec". [`Action::Restart`] carries the absolute time (on the `now_ms` clock) when it is due:
//! the executor runs it once `now_ms >= after_ms` and increments its restart counter for that
//! replica (to [`ReplicaStatus::restarts`] + 1, which already accounts for a reset).

use std::cmp::Reverse;
use std::collections::BTreeSet;

use super::placement::NodeId;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestartPolicy {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// Restart backoff: `initial_ms * 2^restarts`, at most `max_ms`; the count resets after a run of
/// at least `reset_after_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial_ms: u64,
    pub max_ms: u64,
    pub reset_after_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial_ms: 1_000,
            max_ms: 300_000,
            reset_after_ms: 600_000,
        }
    }
}

impl Backoff {
    /// The wait before restart number `restarts + 1`.
    pub fn delay_ms(&self, restarts: u32) -> u64 {
        let factor = 1u64.checked_shl(restarts.min(63)).unwrap_or(u64::MAX);
        self.initial_ms.saturating_mul(factor).min(self.max_ms)
    }
}

/// A replica this node must run (from its placement slot and the rendered definition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredReplica {
    pub index: u32,
    /// The container name, [`super::replica_name`].
    pub name: String,
    pub generation: u64,
    /// Hash of the rendered container spec (catches changes of referenced configuration).
    pub config_hash: String,
    pub restart: RestartPolicy,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerState {
    Running,
    Exited { code: i64 },
    Created,
    Restarting,
}

/// A container as Docker reports it, with the smr labels decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    /// From the replica index label; `None` if missing or unreadable.
    pub index: Option<u32>,
    pub generation: u64,
    pub config_hash: String,
    pub state: ContainerState,
    pub ready: bool,
    /// Consecutive restarts done by the agent for this replica.
    pub restarts: u32,
    /// Carries the smr labels; only such containers are ever changed.
    pub smr_managed: bool,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create and start the container of this index from its desired spec.
    Create {
        index: u32,
    },
    Start {
        id: String,
    },
    Stop {
        id: String,
    },
    Remove {
        id: String,
    },
    /// Start the exited container again once `now_ms >= after_ms`.
    Restart {
        id: String,
        after_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No container yet; being created.
    Pending,
    /// Created or restarting; being started.
    Starting,
    Running,
    /// Of another generation or config; being replaced.
    Replacing,
    /// Exited once; restarted at `at_ms`.
    Restarting {
        at_ms: u64,
    },
    /// Exited repeatedly in quick succession; restarted at `at_ms`.
    CrashLoop {
        at_ms: u64,
    },
    /// Exited and not restarted (policy never).
    Exited {
        code: i64,
    },
    /// Exited with code 0 under policy on-failure.
    Completed,
    /// Cannot be created: `reason`.
    Blocked {
        reason: String,
    },
}

/// A phase equals its name (`"pending"`, `"blocked"`, ...), as reports carry it.
impl PartialEq<&str> for Phase {
    fn eq(&self, name: &&str) -> bool {
        self.as_str() == *name
    }
}

impl Phase {
    /// The phase's name, as reports and `smrctl` show it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Starting => "starting",
            Phase::Running => "running",
            Phase::Replacing => "replacing",
            Phase::Restarting { .. } => "restarting",
            Phase::CrashLoop { .. } => "crash-loop",
            Phase::Exited { .. } => "exited",
            Phase::Completed => "completed",
            Phase::Blocked { .. } => "blocked",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub index: u32,
    pub name: String,
    /// The container that stays (None when it is to be created or replaced).
    pub container: Option<String>,
    pub phase: Phase,
    /// Running, ready, and of the desired generation and config.
    pub ready: bool,
    /// Consecutive restarts, after any reset.
    pub restarts: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlan {
    pub node: NodeId,
    pub actions: Vec<Action>,
    /// One per desired replica, by index.
    pub replicas: Vec<ReplicaStatus>,
    /// When to plan again without a new event (the earliest pending restart).
    pub wake_at_ms: Option<u64>,
}

/// Plan one workload's replicas on node `node` (see the module doc).
pub fn plan_node(
    node: NodeId,
    desired: &[DesiredReplica],
    observed: &[ObservedContainer],
    now_ms: u64,
    backoff: &Backoff,
) -> NodePlan {
    let mut desired: Vec<&DesiredReplica> = desired.iter().collect();
    desired.sort_by_key(|d| d.index);
    desired.dedup_by_key(|d| d.index);
    let wanted: BTreeSet<u32> = desired.iter().map(|d| d.index).collect();

    let mut actions = Vec::new();
    let mut replicas = Vec::new();
    let mut wake_at_ms: Option<u64> = None;

    // Managed containers that no desired replica claims go first.
    let mut unwanted: Vec<&ObservedContainer> = observed
        .iter()
        .filter(|c| c.smr_managed && !c.index.is_some_and(|i| wanted.contains(&i)))
        .collect();
    unwanted.sort_by(|a, b| (a.index, &a.id).cmp(&(b.index, &b.id)));
    for c in unwanted {
        discard(c, &mut actions);
    }

    for d in desired {
        let up_to_date =
            |c: &ObservedContainer| c.generation == d.generation && c.config_hash == d.config_hash;
        let mut claims: Vec<&ObservedContainer> = observed
            .iter()
            .filter(|c| c.smr_managed && c.index == Some(d.index))
            .collect();
        // Best first: current config, then by state, then most recently started, then id.
        claims.sort_by(|a, b| {
            let key = |c: &ObservedContainer| {
                (
                    !up_to_date(c),
                    state_rank(c.state),
                    Reverse(c.started_ms),
                    c.id.clone(),
                )
            };
            key(a).cmp(&key(b))
        });
        let mut claims = claims.into_iter();
        let best = claims.next();
        for extra in claims {
            discard(extra, &mut actions);
        }
        let mut status = ReplicaStatus {
            index: d.index,
            name: d.name.clone(),
            container: None,
            phase: Phase::Pending,
            ready: false,
            restarts: 0,
        };
        match best {
            None => {
                let squatter = observed.iter().find(|c| !c.smr_managed && c.name == d.name);
                if let Some(c) = squatter {
                    status.phase = Phase::Blocked {
                        reason: format!(
                            "the name {} is taken by container {} which smr does not manage",
                            d.name, c.id
                        ),
                    };
                } else {
                    actions.push(Action::Create { index: d.index });
                }
            }
            Some(c) if !up_to_date(c) => {
                discard(c, &mut actions);
                actions.push(Action::Create { index: d.index });
                status.phase = Phase::Replacing;
            }
            Some(c) => {
                status.container = Some(c.id.clone());
                status.restarts = c.restarts;
                match c.state {
                    ContainerState::Running => {
                        status.phase = Phase::Running;
                        status.ready = c.ready;
                    }
                    ContainerState::Restarting => status.phase = Phase::Starting,
                    ContainerState::Created => {
                        status.phase = Phase::Starting;
                        actions.push(Action::Start { id: c.id.clone() });
                    }
                    ContainerState::Exited { code } => {
                        let restart = match d.restart {
                            RestartPolicy::Always => true,
                            RestartPolicy::OnFailure => code != 0,
                            RestartPolicy::Never => false,
                        };
                        if !restart {
                            status.phase = if code == 0 && d.restart == RestartPolicy::OnFailure {
                                Phase::Completed
                            } else {
                                Phase::Exited { code }
                            };
                        } else {
                            let finished = c.finished_ms.unwrap_or(0);
                            let ran = finished.saturating_sub(c.started_ms.unwrap_or(finished));
                            let restarts = if ran >= backoff.reset_after_ms {
                                0
                            } else {
                                c.restarts
                            };
                            let at_ms = finished.saturating_add(backoff.delay_ms(restarts));
                            status.restarts = restarts;
                            status.phase = if restarts >= 1 {
                                Phase::CrashLoop { at_ms }
                            } else {
                                Phase::Restarting { at_ms }
                            };
                            actions.push(Action::Restart {
                                id: c.id.clone(),
                                after_ms: at_ms,
                            });
                            if at_ms > now_ms {
                                wake_at_ms = Some(wake_at_ms.map_or(at_ms, |w| w.min(at_ms)));
                            }
                        }
                    }
                }
            }
        }
        replicas.push(status);
    }
    NodePlan {
        node,
        actions,
        replicas,
        wake_at_ms,
    }
}

fn state_rank(state: ContainerState) -> u8 {
    match state {
        ContainerState::Running => 0,
        ContainerState::Restarting => 1,
        ContainerState::Created => 2,
        ContainerState::Exited { .. } => 3,
    }
}

/// Stop (if it may be running) and remove a managed container.
fn discard(c: &ObservedContainer, actions: &mut Vec<Action>) {
    if matches!(
        c.state,
        ContainerState::Running | ContainerState::Restarting
    ) {
        actions.push(Action::Stop { id: c.id.clone() });
    }
    actions.push(Action::Remove { id: c.id.clone() });
}

#[cfg(test)]
mod tests;
