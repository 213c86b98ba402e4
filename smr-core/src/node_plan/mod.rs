//! The node plan: what this node's reconciler decides, as pure values.
//!
//! [`NodePlanner`] takes what the replicated state asks of this node, rendered ([`Desired`]),
//! and what the engine shows at one instant ([`Observed`]), and returns the exact
//! [`NodeAction`]s to run, in order. The executor (the agent's `controllers::replicas`) runs them
//! against its container runtime (Docker), feeds the results back as [`Outcome`]s, then asks for the
//! replica reports and the readiness [`Probe`]s to run. Nothing here does I/O or reads a clock:
//! time comes in as `now_ms`.
//!
//! It wraps [`crate::scheduler::plan_node`] (per object: create, start, stop, remove, restart
//! with backoff, adoption) with what needs memory across passes or the whole state: dependency
//! gating, the init-container state machine, background stops, batched creation and the
//! reports.

mod bridges;
mod pass;
mod volumes;

pub use pass::{
    Check, Desired, NodeAction, NodePlanner, Observed, Outcome, Pass, Probe, Rendered,
    RenderedReplica, desired_replicas, init_failure,
};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_bridges;
#[cfg(test)]
mod tests_resources;
#[cfg(test)]
mod tests_volumes;
