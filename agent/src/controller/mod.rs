//! The control loops that turn the replicated state into running containers.
//!
//! ```text
//!  leader only:  state --(schedule)--> Op::Place  (placements, rolling updates, rescheduling)
//!  every node:   state + Docker --(reconcile)--> Docker actions, Op::Report (replica status, heartbeat)
//! ```
//! Both loops are level-triggered: they wake on every state change and on a timer, read the whole
//! desired and observed state, and act on the difference computed by [`crate::scheduler`].

pub mod convert;
pub mod network;
pub mod schedule;
