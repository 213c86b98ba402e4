//! Node heartbeats, kept in the leader's memory and never in the replicated log (issue 14).
//!
//! ```text
//!  every node, every period:  POST internal/heartbeat {node}  --mTLS-->  leader
//!  leader:                    Heartbeats::beat(node, now)      (this memory, its own clock)
//!  leader's placement loop:   Liveness::observe(state, Heartbeats::last(), now) -> live or dead
//! ```
//! Like Swarm's dispatcher and Nomad's heartbeat TTLs: liveness costs one small request per node
//! and period, and no log entry, so a cluster where nothing changes writes nothing. The log
//! carries replica status only when it changes. A leader that just took over knows no heartbeat:
//! [`super::leader::Liveness`] counts every node as seen when it took over (a grace period of one
//! node timeout), so a leader change never makes the cluster look dead.
//!
//! The leader tells each node the period it wants ([`heartbeat_period`]: five beats per node
//! timeout), so the nodes follow the leader's `--node-timeout`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::state::NodeId;

/// The shortest period the leader asks for.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
/// The longest period the leader asks for.
pub const MAX_PERIOD: Duration = Duration::from_secs(5);

/// How often nodes should heartbeat a leader whose node timeout is `timeout`: five beats per
/// timeout (a node is declared dead only after about five lost in a row), between
/// [`MIN_PERIOD`] and [`MAX_PERIOD`].
pub fn heartbeat_period(timeout: Duration) -> Duration {
    (timeout / 5).clamp(MIN_PERIOD, MAX_PERIOD)
}

/// The leader's memory of the last heartbeat of each node, on the leader's own clock.
#[derive(Clone, Debug, Default)]
pub struct Heartbeats {
    last: BTreeMap<NodeId, Instant>,
    received: u64,
}

impl Heartbeats {
    /// Records a heartbeat of `node` received at `now`. An earlier `now` than one already
    /// recorded (two requests racing) does not move the time back.
    pub fn beat(&mut self, node: NodeId, now: Instant) {
        let last = self.last.entry(node).or_insert(now);
        *last = (*last).max(now);
        self.received += 1;
    }

    /// When each node was last heard from.
    pub fn last(&self) -> &BTreeMap<NodeId, Instant> {
        &self.last
    }

    /// How many heartbeats were recorded, ever.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Forgets the nodes `keep` refuses (removed from the cluster).
    pub fn retain(&mut self, mut keep: impl FnMut(NodeId) -> bool) {
        self.last.retain(|id, _| keep(*id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn period_is_a_fifth_of_the_timeout_within_bounds() {
        let s = Duration::from_secs;
        assert_eq!(heartbeat_period(s(15)), s(3));
        assert_eq!(heartbeat_period(s(5)), s(1));
        assert_eq!(heartbeat_period(s(8)), Duration::from_millis(1600));
        assert_eq!(heartbeat_period(s(2)), s(1));
        assert_eq!(heartbeat_period(s(3600)), s(5));
    }

    #[test]
    fn beats_keep_the_latest_time_and_count() {
        let t0 = Instant::now();
        let mut beats = Heartbeats::default();
        beats.beat(1, t0 + Duration::from_secs(2));
        beats.beat(1, t0);
        beats.beat(2, t0);
        assert_eq!(
            beats.last(),
            &BTreeMap::from([(1, t0 + Duration::from_secs(2)), (2, t0)])
        );
        assert_eq!(beats.received(), 3);
        beats.retain(|id| id != 2);
        assert_eq!(beats.last().keys().copied().collect::<Vec<_>>(), vec![1]);
        assert_eq!(beats.received(), 3);
    }
}
