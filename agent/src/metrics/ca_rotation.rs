//! The CA rotation (`smrmgr ca rotate`, `smrmgr ca abort`) as metrics, read at scrape time:
//! `smr_ca_rotation_in_progress` and `smr_ca_rotation_aborting` (0/1, from the state: the same
//! on every node up to replication lag), `smr_ca_rotation_started_timestamp_seconds` (while one
//! runs), and on the leader, which follows the rotation by probing every member each second,
//! `smr_ca_rotation_nodes_done` and `smr_ca_rotation_nodes` (what its last probe saw).

use std::sync::Mutex;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::node::{Consistency, Node};

/// The leader's last count: (next CA's fingerprint, nodes done, all nodes).
static PROGRESS: Mutex<Option<(String, usize, usize)>> = Mutex::new(None);

/// Hook of the leader's rotation step: `done` of `total` members have a certificate of the CA
/// that signs now, during the rotation (or abort) to `next`.
pub fn record_progress(next: &str, done: usize, total: usize) {
    *PROGRESS.lock().unwrap_or_else(|e| e.into_inner()) = Some((next.to_owned(), done, total));
}

/// What a scrape shows of the rotation.
#[derive(Debug, Default, PartialEq)]
pub struct Rotation {
    pub in_progress: bool,
    pub aborting: bool,
    /// When it started, in seconds since the epoch.
    pub started_s: Option<f64>,
    /// On the leader: (nodes done, all nodes).
    pub progress: Option<(usize, usize)>,
}

/// Reads the state's CA record (stale read) and, on the leader, its last count.
pub async fn gather(node: &Node) -> Rotation {
    let Ok(state) = node.state(Consistency::Stale).await else {
        return Rotation::default();
    };
    let Some(next) = state.ca.as_ref().and_then(|ca| ca.next.as_ref()) else {
        return Rotation::default();
    };
    let progress = PROGRESS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .filter(|(fingerprint, _, _)| *fingerprint == next.fingerprint && node.is_leader())
        .map(|(_, done, total)| (*done, *total));
    Rotation {
        in_progress: true,
        aborting: next.aborted_ms.is_some(),
        started_s: Some(next.started_ms as f64 / 1000.0),
        progress,
    }
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: i64) {
    let g = Gauge::<i64>::default();
    g.set(value);
    registry.register(name, help, g);
}

/// The series of a [`Rotation`], in a registry of their own.
pub fn render(rotation: &Rotation) -> Registry {
    let mut r = Registry::with_prefix("smr");
    gauge(
        &mut r,
        "ca_rotation_in_progress",
        "1 while a CA rotation (or its abort) is under way, else 0",
        rotation.in_progress as i64,
    );
    gauge(
        &mut r,
        "ca_rotation_aborting",
        "1 while a CA rotation is being aborted (`smrmgr ca abort`), else 0",
        rotation.aborting as i64,
    );
    if let Some(started) = rotation.started_s {
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(started);
        r.register_with_unit(
            "ca_rotation_started_timestamp",
            "When the CA rotation under way started (Unix time)",
            Unit::Seconds,
            g,
        );
    }
    if let Some((done, total)) = rotation.progress {
        gauge(
            &mut r,
            "ca_rotation_nodes_done",
            "On the leader, during a CA rotation: nodes whose certificate is of the CA that signs \
             now (the next CA; the current one during an abort)",
            done as i64,
        );
        gauge(
            &mut r,
            "ca_rotation_nodes",
            "On the leader, during a CA rotation: all nodes (the rotation ends when \
             smr_ca_rotation_nodes_done equals it)",
            total as i64,
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(rotation: &Rotation) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &render(rotation))
            .expect("encodes");
        text
    }

    #[test]
    fn no_rotation_shows_zeros_and_no_progress() {
        let text = text(&Rotation::default());
        assert!(text.contains("smr_ca_rotation_in_progress 0\n"), "{text}");
        assert!(text.contains("smr_ca_rotation_aborting 0\n"), "{text}");
        assert!(!text.contains("nodes"), "{text}");
        assert!(!text.contains("started"), "{text}");
    }

    #[test]
    fn a_rotation_on_the_leader_shows_its_progress() {
        let text = text(&Rotation {
            in_progress: true,
            aborting: true,
            started_s: Some(1_800_000_000.5),
            progress: Some((2, 3)),
        });
        for line in [
            "smr_ca_rotation_in_progress 1\n",
            "smr_ca_rotation_aborting 1\n",
            "# TYPE smr_ca_rotation_started_timestamp_seconds gauge\n",
            "smr_ca_rotation_started_timestamp_seconds 1800000000.5\n",
            "smr_ca_rotation_nodes_done 2\n",
            "smr_ca_rotation_nodes 3\n",
        ] {
            assert!(text.contains(line), "{line:?} in {text}");
        }
    }
}
