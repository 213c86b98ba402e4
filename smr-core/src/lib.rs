//! smr's pure core: everything that decides, nothing that waits on I/O.
//!
//! - [`definitions`]: the YAML definitions model (simplecontainer-compatible), parsing, validation.
//! - [`state`]: the replicated state machine (pure: commands in, results out).
//! - [`scheduler`]: placement of replicas on nodes, rollout planning and per-node replica plans.
//! - [`backend`]: the cluster network's backend (wireguard, vxlan, host-gw, none).
//! - [`container`]: the container model (configuration, what the engine shows, smr's labels).
//! - [`convert`]: definitions mapped onto the scheduler's inputs and rendered into container
//!   configurations (templates).
//! - [`node_plan`]: what a node's reconciler does with its replicas, as exact actions.
//! - [`repo_sync`]: what the leader's repository sync proposes for a `gitops` object.
//! - [`credentials`]: a user and password that is never shown.
//! - [`backup`]: backup files, and the states a restored or forced cluster starts from.
//! - [`volume`]: the `volume` kind: Docker named volumes, their users and a node's volume plan.
//! - [`networks`]: `network` objects (overlay networks with their own pools): what is accepted,
//!   which networks a replica joins, what each node needs.
//! - [`docker_names`]: objects whose Docker names would be the same (`a-b/c` and `a/b-c`).
//!
//! The crate has no async runtime, HTTP, Docker or Raft dependency: the agent crate is the I/O
//! shell around it, and smrctl links it without any of those.
#![forbid(unsafe_code)]

pub mod backend;
pub mod backup;
pub mod container;
pub mod convert;
pub mod credentials;
pub mod definitions;
pub mod docker_names;
pub mod networks;
pub mod node_plan;
pub mod node_resource;
pub mod repo_sync;
pub mod scheduler;
pub mod state;
pub mod volume;
