//! Rolling upgrades: which kinds of log entries every member reads, and what members say of
//! themselves in their health answer ([`Claim`]).
//!
//! ```text
//!  GET /api/v1/health  -->  features: ["report-deltas", "user-certs", "ca-abort"]
//!  Node::members_support(f)  --all members list f-->  true, for good (a downgrade is not supported)
//!                            --one does not (or does not answer, never seen listing f)-->  false,
//!                              asked again at most every REPROBE ([`Node::members_lacking`] with
//!                              `now`: asked at once)
//! ```
//! A node of the previous version stops applying the log at an [`crate::state::Op`] variant it
//! does not know, so a new kind of entry is proposed only once every node that applies entries
//! (registered with a Raft port: simulated nodes apply none) says it reads it. Older peers read
//! the booleans of the health answer that came before this list (`report_deltas`), which stay.
//!
//! Every question to the members about themselves goes one way: [`Node::members_claim`] asks
//! each for its health answer ([`Node::members_health`]: all at once, one time limit, every answer
//! noted here) and reads a [`Claim`] from it: that it reads a feature, holds the cluster key
//! (`holds_cluster_key`, [`crate::migration`]) or seals secrets (`seals_secrets`,
//! [`crate::secrets`]).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use api_types::types::HealthResponse;

use super::{Consistency, Node};
use crate::state::NodeId;

/// A kind of log entry (and the state it writes) that a previous version does not read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Batched delta reports ([`crate::state::Op::Reports`]); health `report_deltas` before
    /// the list.
    ReportDeltas,
    /// Records of signed user certificates and their revocation
    /// ([`crate::state::Op::RecordUserCert`], [`crate::state::Op::RevokeUserCerts`]).
    UserCerts,
    /// Aborting a CA rotation ([`crate::state::Op::AbortCaRotation`],
    /// [`crate::state::Op::FinishCaAbort`]).
    CaAbort,
    /// Not a kind of entry: the route `internal/propose-batch`, by which a follower forwards
    /// many writes to the leader in one request ([`super::forward`]).
    ProposeBatch,
}

impl Feature {
    pub const ALL: [Feature; 4] = [
        Feature::ReportDeltas,
        Feature::UserCerts,
        Feature::CaAbort,
        Feature::ProposeBatch,
    ];

    /// The name in the health answer's `features`.
    pub fn name(self) -> &'static str {
        match self {
            Feature::ReportDeltas => "report-deltas",
            Feature::UserCerts => "user-certs",
            Feature::CaAbort => "ca-abort",
            Feature::ProposeBatch => "propose-batch",
        }
    }

    /// Whether `health` says its node reads this kind of entry: in `features`, or for the one
    /// that came before the list, its boolean.
    pub fn announced_in(self, health: &HealthResponse) -> bool {
        health.features.iter().any(|f| f == self.name())
            || (self == Feature::ReportDeltas && health.report_deltas)
    }

    /// Whether this node reads (and so may propose) this kind of entry: always, unless it plays
    /// the version before it in a test ([`TEST_LEGACY_FEATURES_ENV`],
    /// [`super::reports::TEST_LEGACY_ENV`]).
    pub fn here(self) -> bool {
        match self {
            Feature::ReportDeltas => !super::reports::test_legacy(),
            _ => !test_legacy_features().contains(&self.name()),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a member says of itself in its health answer, read by [`Node::members_claim`]: the one
/// way a node asks the others what they read or hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// It reads this kind of log entry ([`Feature::announced_in`]: the `features` list, or the
    /// boolean that came before it).
    Reads(Feature),
    /// It holds the cluster key (`holds_cluster_key`; [`crate::migration`] waits for every
    /// member to).
    HoldsClusterKey,
    /// It seals and opens secret values (`seals_secrets`; secrets stored in clear are sealed
    /// once every member does).
    SealsSecrets,
}

impl Claim {
    /// Whether `health` makes this claim. A health answer of a version before a claim existed
    /// lacks its field (read as `false`): such a member does not make it.
    pub fn made_in(self, health: &HealthResponse) -> bool {
        match self {
            Claim::Reads(feature) => feature.announced_in(health),
            Claim::HoldsClusterKey => health.holds_cluster_key,
            Claim::SealsSecrets => health.seals_secrets,
        }
    }
}

/// The features this node announces in its health answer.
pub fn announced() -> Vec<String> {
    Feature::ALL
        .iter()
        .filter(|f| f.here())
        .map(|f| f.name().to_string())
        .collect()
}

/// `SMR_TEST_LEGACY_FEATURES=user-certs,ca-abort` (tests only): this node plays the version
/// before these features: it does not announce them, does not propose their entries, and
/// refuses their commands as an upgraded node does while an older one is a member.
pub const TEST_LEGACY_FEATURES_ENV: &str = "SMR_TEST_LEGACY_FEATURES";

fn test_legacy_features() -> &'static [&'static str] {
    static LEGACY: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    LEGACY.get_or_init(|| {
        let Ok(list) = std::env::var(TEST_LEGACY_FEATURES_ENV) else {
            return Vec::new();
        };
        let legacy: Vec<&'static str> = Feature::ALL
            .iter()
            .map(|f| f.name())
            .filter(|name| list.split(',').any(|l| l.trim() == *name))
            .collect();
        tracing::warn!(
            ?legacy,
            "{TEST_LEGACY_FEATURES_ENV}={list}: playing a version without these features (tests only)"
        );
        legacy
    })
}

/// How often members are asked again while one of them does not read a feature.
const REPROBE: Duration = Duration::from_secs(10);

/// What was last learned of one feature.
#[derive(Default)]
struct Probe {
    /// Every member read it: true for good.
    all: bool,
    at: Option<Instant>,
    /// The members (names) that did not say they read it, when last asked.
    lacking: Vec<String>,
}

/// Per feature, whether every member reads it and when they were last asked; and the nodes
/// seen announcing it in any health answer this process got (for good: a downgrade is not
/// supported), which count as reading it while they do not answer.
#[derive(Default)]
pub(crate) struct Probes {
    probes: [Mutex<Probe>; Feature::ALL.len()],
    seen: Mutex<std::collections::BTreeMap<NodeId, Vec<&'static str>>>,
}

impl Probes {
    /// Notes the features a node's health answer announces.
    pub(crate) fn note(&self, health: &HealthResponse) {
        let announced: Vec<&'static str> = Feature::ALL
            .iter()
            .filter(|f| f.announced_in(health))
            .map(|f| f.name())
            .collect();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let known = seen.entry(health.id).or_default();
        for name in announced {
            if !known.contains(&name) {
                known.push(name);
            }
        }
    }

    fn seen(&self, node: NodeId, feature: Feature) -> bool {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&node)
            .is_some_and(|names| names.contains(&feature.name()))
    }

    fn get(&self, feature: Feature) -> std::sync::MutexGuard<'_, Probe> {
        self.probes[feature.index()]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

/// How a member that said (`Some`) or did not say (`None`: no answer) it reads a feature is
/// listed among those lacking it: not at all when it reads it, or when it does not answer now but
/// was `seen` reading it before (paused or cut off).
fn lacking(name: &str, said: Option<bool>, seen: impl FnOnce() -> bool) -> Option<String> {
    match said {
        Some(true) => None,
        Some(false) => Some(name.to_string()),
        None if seen() => None,
        None => Some(format!("{name} (unreachable)")),
    }
}

impl Node {
    /// Whether every node that applies log entries reads `feature`: asked over their health
    /// route ([`Node::members_claim`]), again at most every [`REPROBE`] while one does not (an
    /// older version in a rolling upgrade, which would stop on such an entry), never again once
    /// all do.
    pub async fn members_support(&self, feature: Feature) -> bool {
        self.members_lacking(feature, false).await.is_empty()
    }

    /// The nodes (names) that do not say they read `feature` (or do not answer and were never
    /// seen saying so in a health answer this process got); empty when every node does. With `now`, members are asked at once (an explicit command) unless all
    /// did already; else the answer of the last [`REPROBE`] is reused.
    pub async fn members_lacking(&self, feature: Feature, now: bool) -> Vec<String> {
        if !feature.here() {
            return vec![self.name.clone()];
        }
        {
            let mut probe = self.features.get(feature);
            if probe.all {
                return Vec::new();
            }
            if !now && probe.at.is_some_and(|t| t.elapsed() < REPROBE) {
                return probe.lacking.clone();
            }
            probe.at = Some(Instant::now());
            // What callers meanwhile are answered until this probe ends (or if it ends early):
            // not "every member", which they would act on.
            if probe.lacking.is_empty() {
                probe.lacking = vec!["(the members are being asked)".into()];
            }
        }
        let state = match self.state(Consistency::Stale).await {
            Ok(state) => state,
            Err(e) => return vec![format!("(the member list: {e})")],
        };
        // A node that has not applied its own join yet holds an older member list: one without
        // the members that joined before it, which would count as reading everything (for good).
        if !state.nodes.contains_key(&self.id) {
            return vec![format!(
                "(the member list: {} has not applied its own join yet)",
                self.name
            )];
        }
        let applying = state.nodes.values().filter(|n| n.raft_port != 0);
        let lacking: Vec<String> = self
            .members_claim(applying, Claim::Reads(feature))
            .await
            .into_iter()
            .filter_map(|(n, said)| lacking(&n.name, said, || self.features.seen(n.id, feature)))
            .collect();
        let mut probe = self.features.get(feature);
        if lacking.is_empty() {
            probe.all = true;
        } else {
            tracing::info!(
                feature = feature.name(),
                ?lacking,
                "nodes do not read this kind of log entry yet (an older version)"
            );
        }
        probe.lacking = lacking.clone();
        lacking
    }

    /// 409 unless every node reads `feature` (asked at once): `what` is refused while a node of
    /// an older version is a member, named in the answer.
    pub async fn require_members_support(
        &self,
        feature: Feature,
        what: &str,
    ) -> Result<(), super::NodeError> {
        let lacking = self.members_lacking(feature, true).await;
        if lacking.is_empty() {
            return Ok(());
        }
        Err(super::NodeError::Conflict(format!(
            "{what} is refused until every node is upgraded: {} not yet (they do not read \
             `{}` log entries); upgrade them and try again",
            lacking.join(", "),
            feature.name()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(features: &[&str], report_deltas: bool) -> api_types::types::HealthResponse {
        api_types::types::HealthResponse {
            node: "n".into(),
            id: 1,
            state: "leader".into(),
            leader: None,
            revision: 0,
            problem: None,
            voters: vec![],
            learners: vec![],
            cert_expires_ms: None,
            seals_secrets: false,
            cert_ca: None,
            report_deltas,
            holds_cluster_key: false,
            features: features.iter().map(|f| f.to_string()).collect(),
        }
    }

    #[test]
    fn features_are_read_from_the_list_and_the_older_boolean() {
        let old = health(&[], false);
        assert!(Feature::ALL.iter().all(|f| !f.announced_in(&old)));
        // The version with delta reports and before the list.
        let deltas = health(&[], true);
        assert!(Feature::ReportDeltas.announced_in(&deltas));
        assert!(!Feature::UserCerts.announced_in(&deltas));
        let new = health(
            &["report-deltas", "user-certs", "ca-abort", "propose-batch"],
            false,
        );
        assert!(Feature::ALL.iter().all(|f| f.announced_in(&new)));
        // An older health answer (no `features`) still parses.
        let json = r#"{"node":"n","id":1,"state":"leader","leader":null,"revision":0}"#;
        let parsed: api_types::types::HealthResponse = serde_json::from_str(json).unwrap();
        assert!(parsed.features.is_empty());
    }

    #[test]
    fn a_node_seen_announcing_a_feature_is_remembered() {
        let probes = Probes::default();
        let mut h = health(&["user-certs"], true);
        h.id = 7;
        probes.note(&h);
        // A later answer without the list (cannot happen short of a downgrade) forgets nothing.
        h.features.clear();
        h.report_deltas = false;
        probes.note(&h);
        assert!(probes.seen(7, Feature::UserCerts));
        assert!(probes.seen(7, Feature::ReportDeltas));
        assert!(!probes.seen(7, Feature::CaAbort));
        assert!(!probes.seen(8, Feature::UserCerts));
    }

    #[test]
    fn claims_are_read_from_the_health_answer() {
        let mut h = health(&["user-certs"], false);
        assert!(Claim::Reads(Feature::UserCerts).made_in(&h));
        assert!(!Claim::Reads(Feature::CaAbort).made_in(&h));
        assert!(!Claim::HoldsClusterKey.made_in(&h));
        assert!(!Claim::SealsSecrets.made_in(&h));
        h.holds_cluster_key = true;
        assert!(Claim::HoldsClusterKey.made_in(&h));
        assert!(!Claim::SealsSecrets.made_in(&h));
        h.seals_secrets = true;
        assert!(Claim::SealsSecrets.made_in(&h));
        // The boolean before the list still counts for the feature it stood for.
        assert!(Claim::Reads(Feature::ReportDeltas).made_in(&health(&[], true)));
        // A version before all of these: its answer parses and claims nothing.
        let json = r#"{"node":"n","id":1,"state":"leader","leader":null,"revision":0}"#;
        let old: HealthResponse = serde_json::from_str(json).unwrap();
        let claims = Feature::ALL
            .map(Claim::Reads)
            .into_iter()
            .chain([Claim::HoldsClusterKey, Claim::SealsSecrets]);
        for claim in claims {
            assert!(!claim.made_in(&old), "{claim:?}");
        }
    }

    #[test]
    fn members_lacking_a_feature_are_named() {
        assert_eq!(lacking("n1", Some(true), || false), None);
        assert_eq!(lacking("n1", Some(false), || true), Some("n1".to_string()));
        assert_eq!(lacking("n1", None, || true), None);
        assert_eq!(
            lacking("n1", None, || false),
            Some("n1 (unreachable)".to_string())
        );
    }

    #[test]
    fn names_are_distinct_and_indexes_fit() {
        for (i, f) in Feature::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
        let mut names: Vec<_> = Feature::ALL.iter().map(|f| f.name()).collect();
        names.dedup();
        assert_eq!(names.len(), Feature::ALL.len());
    }
}
