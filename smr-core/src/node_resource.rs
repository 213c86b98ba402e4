//! What Docker volumes and bridge networks have in common on a node, pure: both are engine
//! resources named after their object, created on the nodes whose replicas need them before
//! those replicas' containers, and marked with smr's labels (one of which tells whether the
//! engine's copy still matches its object). A same-named one smr did not create is never touched:
//! the replicas that need it are blocked, saying so. [`plan`] decides what a node does about one
//! kind of them; [`crate::volume`] and [`crate::networks::bridge`] say what differs (the words,
//! which label must match, which of smr's leftovers go).

use std::collections::{BTreeMap, BTreeSet};

/// What a node does about a resource whose creation configuration is `C`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<C> {
    Create(C),
    /// Removes a resource smr created that is no longer wanted here (or that is recreated to
    /// match its object), only once no container uses it.
    Remove {
        name: String,
    },
}

/// The result of [`plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan<C> {
    pub actions: Vec<Action<C>>,
    /// Resources needed on this node that are not there yet: the replicas that need one are not
    /// created yet.
    pub missing: BTreeMap<String, Missing>,
}

impl<C> Default for Plan<C> {
    fn default() -> Self {
        Plan {
            actions: Vec::new(),
            missing: BTreeMap::new(),
        }
    }
}

/// Why a needed resource is not there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Missing {
    /// Not on its way: an action failed or something stands in the way (replicas are reported
    /// `blocked`, else `pending`).
    pub blocked: bool,
    pub why: String,
}

fn on_its_way(why: String) -> Missing {
    Missing {
        blocked: false,
        why,
    }
}

fn blocked(why: String) -> Missing {
    Missing { blocked: true, why }
}

/// What the engine shows of one resource on a node.
pub trait Shown {
    fn name(&self) -> &str;
    fn labels(&self) -> &BTreeMap<String, String>;
    /// Containers (by name, managed or not, in any state) that use it.
    fn users(&self) -> &[String];
    /// smr created it (else it is never touched).
    fn ours(&self) -> bool;
}

/// The configuration of one kind of resource (what the engine needs to create one), with what
/// [`plan`] needs to know of that kind.
pub trait Resource: Clone {
    /// What the engine shows of one.
    type Shown: Shown;
    /// The word for one in messages and in the Docker CLI: `volume`, `network`.
    const NOUN: &'static str;
    /// How a message introduces one: `a volume`, `a Docker network`.
    const A_NOUN: &'static str;
    /// The label whose value differs when the engine's resource no longer matches its object.
    const MATCH_LABEL: &'static str;

    /// smr's labels, as the resource is created with them.
    fn labels(&self) -> &BTreeMap<String, String>;
    /// Why the replicas wait while the engine's `name`, which does not match this
    /// configuration, is removed to be created again.
    fn recreating(&self, name: &str) -> String;
    /// Why the replicas are blocked: the engine's `name` does not match this configuration and
    /// containers (`users`, joined) use it.
    fn mismatch_in_use(&self, name: &str, users: &str) -> String;
}

/// The actions of a node about one kind of resource: `objects` the configurations of its
/// objects by engine name, `needed` the names its replicas use (names no object has are left to
/// Docker), `observed` what the engine shows (`Err`: it could not be listed), `errors` the last
/// failed action per name. Creates what a replica needs and is missing (recreates one that does
/// not match its object once unused); removes smr's resources that `unwanted` (given the needed
/// names that are objects) says are no longer wanted here, once no container uses them.
pub fn plan<R: Resource>(
    objects: &BTreeMap<String, R>,
    needed: &BTreeSet<String>,
    observed: Result<&[R::Shown], &str>,
    errors: &BTreeMap<String, String>,
    unwanted: impl Fn(&R::Shown, &BTreeSet<&String>) -> bool,
) -> Plan<R> {
    let mut plan = Plan::default();
    let noun = R::NOUN;
    let needed: BTreeSet<&String> = needed.iter().filter(|n| objects.contains_key(*n)).collect();
    let observed = match observed {
        Ok(observed) => observed,
        Err(why) => {
            for name in needed {
                plan.missing
                    .insert(name.clone(), blocked(format!("cannot list {noun}s: {why}")));
            }
            return plan;
        }
    };
    let by_name: BTreeMap<&str, &R::Shown> = observed.iter().map(|s| (s.name(), s)).collect();
    for &name in &needed {
        let config = &objects[name];
        // After a failed action the replicas are blocked, with the error.
        let waiting = |why: String| match errors.get(name) {
            Some(e) => blocked(format!("{why} (last attempt: {e})")),
            None => on_its_way(why),
        };
        let why = match by_name.get(name.as_str()) {
            None => {
                plan.actions.push(Action::Create(config.clone()));
                waiting(format!("creating {noun} {name}"))
            }
            Some(s) if !s.ours() => blocked(format!(
                "{} named {name} exists on this node that smr did not create; remove it \
                 (docker {noun} rm {name}) or rename the {noun} object",
                R::A_NOUN
            )),
            Some(s) if s.labels().get(R::MATCH_LABEL) != config.labels().get(R::MATCH_LABEL) => {
                if s.users().is_empty() {
                    plan.actions.push(Action::Remove { name: name.clone() });
                    waiting(config.recreating(name))
                } else {
                    blocked(config.mismatch_in_use(name, &s.users().join(", ")))
                }
            }
            Some(_) => continue,
        };
        plan.missing.insert(name.clone(), why);
    }
    for s in observed.iter().filter(|s| s.ours()) {
        if s.users().is_empty() && unwanted(s, &needed) {
            plan.actions.push(Action::Remove {
                name: s.name().to_string(),
            });
        }
    }
    plan
}
