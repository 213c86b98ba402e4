//! A recording [`Runtime`] for tests: containers in memory, every call recorded by container
//! name. It mirrors Docker where the reconciler depends on it: a taken name is a
//! [`RuntimeError::Conflict`], stopping a stopped container is fine, an unknown id is
//! [`RuntimeError::NotFound`], only containers labelled [`labels::MANAGED`] are listed, and an
//! init run refuses a name held by a container that is not an init container.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use crate::runtime::{
    ContainerConfig, ContainerInfo, ExecOutput, Runtime, RuntimeError, State, VolumeConfig,
    VolumeInfo, labels,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Call {
    Create { name: String },
    Start { name: String },
    Stop { name: String },
    Remove { name: String },
    RunToCompletion { name: String },
    Exec { name: String, cmd: Vec<String> },
    CreateVolume { name: String },
    RemoveVolume { name: String },
}

#[derive(Default)]
struct Fake {
    /// By id.
    containers: BTreeMap<String, ContainerInfo>,
    clock_ms: u64,
    next_id: u64,
    calls: Vec<Call>,
    /// Exit code and log of the init container of this name (default: 0, "").
    inits: HashMap<String, (i64, String)>,
    /// Exit code of exec in the container of this name (default: 0).
    execs: HashMap<String, i64>,
    /// Named volumes by name (Docker creates one without labels for a container that mounts a
    /// name that does not exist).
    volumes: BTreeMap<String, VolumeInfo>,
    /// Named volumes each container (by id) mounts.
    mounts: BTreeMap<String, Vec<String>>,
    /// Networks by name (bridge networks smr creates).
    networks: BTreeMap<String, crate::runtime::NetworkInfo>,
    /// The networks each container (by id) is on: its config's.
    joined: BTreeMap<String, Vec<String>>,
}

impl Fake {
    fn by_id(&mut self, id: &str) -> Result<&mut ContainerInfo, RuntimeError> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    fn name_of(&self, id: &str) -> String {
        self.containers
            .get(id)
            .map(|c| c.name.clone())
            .unwrap_or_else(|| id.to_string())
    }

    /// Names of the containers on network `name`.
    fn users_of_network(&self, name: &str) -> Vec<String> {
        self.joined
            .iter()
            .filter(|(id, names)| {
                names.iter().any(|n| n == name) && self.containers.contains_key(*id)
            })
            .map(|(id, _)| self.name_of(id))
            .collect()
    }

    fn id_of(&self, name: &str) -> Option<String> {
        self.containers
            .values()
            .find(|c| c.name == name)
            .map(|c| c.id.clone())
    }
}

#[derive(Default)]
pub(crate) struct FakeRuntime {
    inner: Mutex<Fake>,
}

impl FakeRuntime {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Fake> {
        self.inner.lock().unwrap()
    }

    /// Sets the engine's clock (start and finish times of containers).
    pub(crate) fn set_clock(&self, ms: u64) {
        self.lock().clock_ms = ms;
    }

    /// A running container without smr's labels: never listed, but its name is taken.
    pub(crate) fn add_foreign(&self, name: &str) -> String {
        let id = format!("foreign-{name}");
        let mut fake = self.lock();
        let at = fake.clock_ms;
        fake.containers.insert(
            id.clone(),
            ContainerInfo {
                id: id.clone(),
                name: name.to_string(),
                labels: BTreeMap::new(),
                state: State::Running,
                exit_code: None,
                started_ms: Some(at),
                finished_ms: None,
                ips: BTreeMap::new(),
                image: "foreign".into(),
            },
        );
        id
    }

    /// The running container `name` exits with `code` now.
    pub(crate) fn exit(&self, name: &str, code: i64) {
        let mut fake = self.lock();
        let at = fake.clock_ms;
        let id = fake.id_of(name).expect("no such container");
        let c = fake.by_id(&id).unwrap();
        c.state = State::Exited;
        c.exit_code = Some(code);
        c.finished_ms = Some(at);
    }

    pub(crate) fn script_init(&self, name: &str, exit: i64, log: &str) {
        self.lock()
            .inits
            .insert(name.to_string(), (exit, log.to_string()));
    }

    pub(crate) fn script_exec(&self, name: &str, exit: i64) {
        self.lock().execs.insert(name.to_string(), exit);
    }

    /// The calls made so far (`list_managed` is not recorded), and forgets them.
    pub(crate) fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.lock().calls)
    }

    pub(crate) fn container(&self, name: &str) -> Option<ContainerInfo> {
        let fake = self.lock();
        fake.containers.values().find(|c| c.name == name).cloned()
    }
}

impl Runtime for FakeRuntime {
    async fn list_managed(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        Ok(self
            .lock()
            .containers
            .values()
            .filter(|c| c.labels.get(labels::MANAGED).map(String::as_str) == Some("true"))
            .cloned()
            .collect())
    }

    async fn create(&self, config: &ContainerConfig) -> Result<String, RuntimeError> {
        let mut fake = self.lock();
        fake.calls.push(Call::Create {
            name: config.name.clone(),
        });
        if fake.id_of(&config.name).is_some() {
            return Err(RuntimeError::Conflict(config.name.clone()));
        }
        fake.next_id += 1;
        let id = format!("c{:04}", fake.next_id);
        let named: Vec<String> = smr_core::volume::named_binds(config)
            .map(str::to_string)
            .collect();
        for name in &named {
            fake.volumes
                .entry(name.clone())
                .or_insert_with(|| VolumeInfo {
                    name: name.clone(),
                    ..Default::default()
                });
        }
        fake.mounts.insert(id.clone(), named);
        let joined = smr_core::networks::bridge::joined(config)
            .map(str::to_string)
            .collect();
        fake.joined.insert(id.clone(), joined);
        fake.containers.insert(
            id.clone(),
            ContainerInfo {
                id: id.clone(),
                name: config.name.clone(),
                labels: config.labels.clone(),
                state: State::Created,
                exit_code: None,
                started_ms: None,
                finished_ms: None,
                ips: BTreeMap::new(),
                image: config.image.clone(),
            },
        );
        Ok(id)
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut fake = self.lock();
        let name = fake.name_of(id);
        fake.calls.push(Call::Start { name });
        let at = fake.clock_ms;
        let c = fake.by_id(id)?;
        if c.state != State::Running {
            c.state = State::Running;
            c.exit_code = None;
            c.started_ms = Some(at);
            c.finished_ms = None;
        }
        Ok(())
    }

    async fn stop(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        let mut fake = self.lock();
        let name = fake.name_of(id);
        fake.calls.push(Call::Stop { name });
        let at = fake.clock_ms;
        let c = fake.by_id(id)?;
        if c.state == State::Running {
            c.state = State::Exited;
            c.exit_code = Some(137);
            c.finished_ms = Some(at);
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut fake = self.lock();
        let name = fake.name_of(id);
        fake.calls.push(Call::Remove { name });
        fake.containers
            .remove(id)
            .map(|_| ())
            .ok_or_else(|| RuntimeError::NotFound(id.to_string()))
    }

    async fn run_to_completion(
        &self,
        config: &ContainerConfig,
    ) -> Result<(i64, String), RuntimeError> {
        let mut fake = self.lock();
        fake.calls.push(Call::RunToCompletion {
            name: config.name.clone(),
        });
        if let Some(id) = fake.id_of(&config.name) {
            if !fake.containers[&id].labels.contains_key(labels::INIT) {
                return Err(RuntimeError::Conflict(format!(
                    "{}: the name is taken by a container smr does not manage",
                    config.name
                )));
            }
            fake.containers.remove(&id);
        }
        Ok(fake
            .inits
            .get(&config.name)
            .cloned()
            .unwrap_or((0, String::new())))
    }

    async fn exec(&self, id: &str, cmd: &[String]) -> Result<ExecOutput, RuntimeError> {
        let mut fake = self.lock();
        let name = fake.name_of(id);
        fake.calls.push(Call::Exec {
            name: name.clone(),
            cmd: cmd.to_vec(),
        });
        if fake.by_id(id)?.state != State::Running {
            return Err(RuntimeError::Docker(format!(
                "container {id} is not running"
            )));
        }
        Ok(ExecOutput {
            exit_code: fake.execs.get(&name).copied().unwrap_or(0),
            output: String::new(),
        })
    }

    async fn list_volumes(&self) -> Result<Vec<VolumeInfo>, RuntimeError> {
        let fake = self.lock();
        Ok(fake
            .volumes
            .values()
            .map(|v| VolumeInfo {
                users: fake
                    .mounts
                    .iter()
                    .filter(|(id, names)| {
                        names.contains(&v.name) && fake.containers.contains_key(*id)
                    })
                    .map(|(id, _)| fake.name_of(id))
                    .collect(),
                ..v.clone()
            })
            .collect())
    }

    async fn create_volume(&self, config: &VolumeConfig) -> Result<(), RuntimeError> {
        let mut fake = self.lock();
        fake.calls.push(Call::CreateVolume {
            name: config.name.clone(),
        });
        crate::runtime::volumes::create_in_memory(&mut fake.volumes, config)
    }

    async fn remove_volume(&self, name: &str) -> Result<(), RuntimeError> {
        let mut fake = self.lock();
        fake.calls.push(Call::RemoveVolume {
            name: name.to_string(),
        });
        let used = fake
            .mounts
            .iter()
            .any(|(id, names)| names.iter().any(|n| n == name) && fake.containers.contains_key(id));
        if used {
            return Err(RuntimeError::Conflict(format!("volume {name} is in use")));
        }
        fake.volumes
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))
    }

    async fn list_networks(&self) -> Result<Vec<crate::runtime::NetworkInfo>, RuntimeError> {
        let fake = self.lock();
        Ok(fake
            .networks
            .values()
            .map(|n| crate::runtime::NetworkInfo {
                users: fake.users_of_network(&n.name),
                ..n.clone()
            })
            .collect())
    }

    async fn create_network(
        &self,
        config: &crate::runtime::BridgeConfig,
    ) -> Result<(), RuntimeError> {
        crate::runtime::networks::create_in_memory(&mut self.lock().networks, config)
    }

    async fn remove_network(&self, name: &str) -> Result<(), RuntimeError> {
        let mut fake = self.lock();
        if !fake.users_of_network(name).is_empty() {
            return Err(RuntimeError::Conflict(format!(
                "network {name} has active endpoints"
            )));
        }
        fake.networks
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| RuntimeError::NotFound(name.to_string()))
    }
}
