//! `smrctl apply --wait`: follows the rollout of the `containers` objects an apply changed until
//! every replica runs the new template and is ready, showing progress (a bar on a terminal, plain
//! lines otherwise), or says why not when the time is up.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use api_types::client::{Client, ClientError};
use api_types::types::DescribeView;
use smr_core::definitions::ObjectKey;

/// Exit code of `smrctl apply` when the rollout is not ready in time.
pub const NOT_READY_EXIT: u8 = 8;

/// Where one object's rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectProgress {
    pub key: ObjectKey,
    /// Replicas the definition asks for.
    pub desired: usize,
    /// Replicas that run the current template and are ready.
    pub ready: usize,
    /// Replica count per state, e.g. `running 2, pending 1`.
    pub states: String,
    /// Why replicas are not ready: scheduling errors, crash loops, creation errors...
    pub problems: Vec<String>,
    /// Replicas in a crash loop or exited, whose log end is worth showing on failure.
    pub failing: Vec<String>,
    pub done: bool,
}

/// The progress of one object, from its describe view (pure).
pub fn progress(view: &DescribeView) -> ObjectProgress {
    let key = view.object.object.key();
    let desired = view
        .object
        .object
        .spec
        .as_containers()
        .map(|c| c.replicas as usize)
        .unwrap_or(0);
    let target = view.object.template_generation;
    let current = |r: &&api_types::types::ReplicaView| r.generation == target;
    let ready = view
        .replicas
        .iter()
        .filter(current)
        .filter(|r| r.ready && r.state == "running")
        .count();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for r in &view.replicas {
        let state = if r.generation != target {
            format!("{} (old)", r.state)
        } else if r.ready {
            "ready".to_string()
        } else {
            r.state.clone()
        };
        match counts.iter_mut().find(|(s, _)| *s == state) {
            Some((_, n)) => *n += 1,
            None => counts.push((state, 1)),
        }
    }
    let states = counts
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut problems = Vec::new();
    if let Some(error) = &view.placement_error {
        problems.push(format!("cannot place replicas: {error}"));
    }
    let mut failing = Vec::new();
    for r in view.replicas.iter().filter(|r| !r.ready) {
        let bad_state = matches!(
            r.state.as_str(),
            "crash-loop" | "restarting" | "exited" | "blocked"
        );
        if bad_state || r.message.is_some() {
            let mut line = format!("{} on {}: {}", r.name, r.node_name, r.state);
            if r.restarts > 0 {
                let _ = write!(line, " after {} restarts", r.restarts);
            }
            if let Some(message) = &r.message {
                let _ = write!(line, ": {message}");
            }
            problems.push(line);
        }
        if matches!(r.state.as_str(), "crash-loop" | "restarting" | "exited") {
            failing.push(r.name.clone());
        }
    }
    let done = view.replicas.len() == desired
        && ready == desired
        && view.replicas.iter().all(|r| r.generation == target);
    ObjectProgress {
        key,
        desired,
        ready,
        states,
        problems,
        failing,
        done,
    }
}

impl ObjectProgress {
    /// One line, e.g. `containers/g/web: 2/3 ready (ready 2, pending 1)`.
    pub fn line(&self) -> String {
        let mut line = format!("{}: {}/{} ready", self.key, self.ready, self.desired);
        if !self.states.is_empty() && !self.done {
            let _ = write!(line, " ({})", self.states);
        }
        line
    }
}

#[derive(Debug)]
pub enum WaitError {
    Client(ClientError),
    /// Not ready in time: the report says where each object stands and why.
    NotReady(String),
}

impl From<ClientError> for WaitError {
    fn from(e: ClientError) -> Self {
        WaitError::Client(e)
    }
}

/// Waits until every object in `keys` is rolled out and ready, or `timeout`. `since` is the
/// revision of the apply: events after it wake the wait up at once.
pub async fn wait(
    client: &Client,
    keys: &[ObjectKey],
    since: u64,
    timeout: Duration,
) -> Result<Vec<ObjectProgress>, WaitError> {
    let deadline = Instant::now() + timeout;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} ready {elapsed:>4} {wide_msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let mut since = since;
    let mut last_lines: Vec<String> = Vec::new();
    let result = loop {
        let mut all = Vec::with_capacity(keys.len());
        for key in keys {
            all.push(progress(&client.describe(key).await?));
        }
        let lines: Vec<String> = all.iter().map(ObjectProgress::line).collect();
        match &bar {
            Some(bar) => {
                bar.set_length(all.iter().map(|p| p.desired as u64).sum());
                bar.set_position(all.iter().map(|p| p.ready as u64).sum());
                let busy: Vec<&String> = all
                    .iter()
                    .zip(&lines)
                    .filter(|(p, _)| !p.done)
                    .map(|(_, l)| l)
                    .collect();
                bar.set_message(busy.first().map(|l| l.to_string()).unwrap_or_default());
            }
            None => {
                for line in lines.iter().filter(|l| !last_lines.contains(l)) {
                    eprintln!("{line}");
                }
            }
        }
        last_lines = lines;
        if all.iter().all(|p| p.done) {
            break Ok(all);
        }
        let now = Instant::now();
        if now >= deadline {
            break Err(not_ready(client, &all, timeout).await);
        }
        // Events (replica state changes, scheduling failures) end the pause early.
        let pause = (deadline - now).min(Duration::from_secs(1));
        if pause >= Duration::from_secs(1) {
            if let Some(last) = client.events(since, None, pause).await?.last() {
                since = last.revision;
            }
        } else {
            tokio::time::sleep(pause).await;
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

/// The failure report: each unfinished object with its problems and the log end of failing
/// replicas.
async fn not_ready(client: &Client, all: &[ObjectProgress], timeout: Duration) -> WaitError {
    let mut text = format!("not ready after {}s:", timeout.as_secs());
    for p in all.iter().filter(|p| !p.done) {
        let _ = write!(text, "\n  {}", p.line());
        for problem in &p.problems {
            let _ = write!(text, "\n    {problem}");
        }
        for name in p.failing.iter().take(3) {
            if let Ok(logs) = client.logs(name, Some(5)).await {
                let _ = write!(text, "\n    last lines of {name}'s log:");
                for line in logs.logs.lines() {
                    let _ = write!(text, "\n      {line}");
                }
            }
        }
    }
    WaitError::NotReady(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use api_types::types::ReplicaView;
    use smr_core::state::StoredObject;

    fn view(replicas: u32, template: u64, states: &[(&str, bool, u64)]) -> DescribeView {
        let yaml = format!(
            "kind: containers\nprefix: simplecontainer.io/v1\nmeta:\n  group: g\n  name: web\nspec:\n  image: busybox\n  replicas: {replicas}\n"
        );
        let object = smr_core::definitions::parse_str("t.yaml", &yaml)
            .expect("valid")
            .remove(0);
        let key = object.key();
        DescribeView {
            object: StoredObject {
                object,
                generation: template,
                template_generation: template,
                revision: 1,
                created_ms: 0,
                updated_ms: 0,
                owner: None,
            },
            placement_error: None,
            replicas: states
                .iter()
                .enumerate()
                .map(|(i, (state, ready, generation))| ReplicaView {
                    name: format!("g-web-{}", i + 1),
                    object: key.clone(),
                    index: i as u32 + 1,
                    node: 1,
                    node_name: "n1".into(),
                    generation: *generation,
                    state: state.to_string(),
                    ready: *ready,
                    image: "busybox:latest".into(),
                    ip: None,
                    restarts: 0,
                    started_ms: None,
                    container_id: None,
                    message: None,
                })
                .collect(),
            events: Vec::new(),
        }
    }

    #[test]
    fn done_only_when_every_replica_runs_the_current_template_and_is_ready() {
        let p = progress(&view(2, 2, &[("running", true, 2), ("running", true, 2)]));
        assert!(p.done);
        assert_eq!(p.line(), "containers/g/web: 2/2 ready");

        let p = progress(&view(2, 2, &[("running", true, 1), ("running", true, 2)]));
        assert!(!p.done, "one replica still runs the old template");
        assert_eq!(p.ready, 1);
        assert_eq!(
            p.line(),
            "containers/g/web: 1/2 ready (running (old) 1, ready 1)"
        );

        let p = progress(&view(2, 2, &[("running", true, 2)]));
        assert!(!p.done, "a replica is not placed yet");

        let p = progress(&view(1, 2, &[("running", true, 2), ("running", true, 2)]));
        assert!(!p.done, "a scale-down is not finished");
    }

    #[test]
    fn problems_name_the_replica_and_the_reason() {
        let mut v = view(2, 1, &[("crash-loop", false, 1), ("pending", false, 1)]);
        v.replicas[0].restarts = 3;
        v.replicas[0].message = Some("exited with code 3".into());
        v.replicas[1].message = Some("image smr/nope:1 is missing".into());
        v.placement_error = Some("no node matches".into());
        let p = progress(&v);
        assert!(!p.done);
        assert_eq!(
            p.problems,
            vec![
                "cannot place replicas: no node matches".to_string(),
                "g-web-1 on n1: crash-loop after 3 restarts: exited with code 3".to_string(),
                "g-web-2 on n1: pending: image smr/nope:1 is missing".to_string(),
            ]
        );
        assert_eq!(p.failing, vec!["g-web-1".to_string()]);
    }
}
