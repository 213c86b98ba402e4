use super::*;
use std::path::Path;

fn set(ids: &[u64]) -> BTreeSet<u64> {
    ids.iter().copied().collect()
}

#[test]
fn voter_policy() {
    assert_eq!(desired_voters(&set(&[1]), &set(&[])), set(&[1]));
    assert_eq!(desired_voters(&set(&[1, 2]), &set(&[1])), set(&[1]));
    assert_eq!(
        desired_voters(&set(&[1, 2, 3]), &set(&[1])),
        set(&[1, 2, 3])
    );
    assert_eq!(
        desired_voters(&set(&[1, 2, 3, 4]), &set(&[1, 2, 3])),
        set(&[1, 2, 3])
    );
    assert_eq!(
        desired_voters(&set(&[1, 2, 3, 4, 5, 6]), &set(&[1, 2, 3])),
        set(&[1, 2, 3, 4, 5])
    );
    // A voter leaves: a learner is promoted, the other voters stay.
    assert_eq!(
        desired_voters(&set(&[1, 3, 4, 5]), &set(&[1, 2, 3])),
        set(&[1, 3, 4])
    );
    // Existing voters are kept even when lower ids are learners.
    assert_eq!(
        desired_voters(&set(&[1, 2, 3, 4, 5]), &set(&[3, 4, 5])),
        set(&[1, 2, 3, 4, 5])
    );
    assert_eq!(
        desired_voters(&set(&[1, 2, 3, 4]), &set(&[2, 3, 4])),
        set(&[2, 3, 4])
    );
}

#[test]
fn etcd_urls() {
    let c = EtcdConfig::parse_url("etcd://10.0.0.1:2379,10.0.0.2:2379/").unwrap();
    assert_eq!(c.endpoints, vec!["10.0.0.1:2379", "10.0.0.2:2379"]);
    assert_eq!(c.prefix, "/smr/");
    assert_eq!(
        EtcdConfig::parse_url("etcd://h:1").unwrap().endpoints,
        vec!["h:1"]
    );
    assert!(EtcdConfig::parse_url("http://h:1").is_err());
    assert!(EtcdConfig::parse_url("etcd://").is_err());
    assert!(EtcdConfig::parse_url("h:1").is_err());
}

/// A tmpfs of `size` mounted on a fresh temporary directory, unmounted (by that path) on drop.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(status.success(), "mounting a tmpfs needs root: {status}");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A read-only view of this file system (a read-only bind mount), unmounted on drop. (A
    /// remount read-only of the tmpfs itself is refused while redb holds a file open for writing.)
    fn read_only_view(&self) -> ReadOnlyView {
        let dir = tempfile::tempdir().expect("tempdir");
        for args in [
            vec!["--bind".to_string()],
            vec!["-o".to_string(), "remount,bind,ro".to_string()],
        ] {
            let mut cmd = std::process::Command::new("mount");
            cmd.args(&args);
            if args[0] == "--bind" {
                cmd.arg(self.path());
            }
            let status = cmd.arg(dir.path()).status().expect("mount runs");
            assert!(status.success(), "mount {args:?}: {status}");
        }
        ReadOnlyView { dir }
    }

    /// Writes a file until the file system is full; returns its path.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        for chunk in [1024 * 1024, 4096, 1] {
            let block = vec![0x5a; chunk];
            while file.write_all(&block).is_ok() {}
        }
        let _ = file.sync_all();
        path
    }
}

struct ReadOnlyView {
    dir: tempfile::TempDir,
}

impl Drop for ReadOnlyView {
    fn drop(&mut self) {
        unmount(self.dir.path());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(self.dir.path());
    }
}

/// Unmounts `path`, waiting a little for the store's last blocking calls to let go of its files;
/// lazily (still by this path) if they do not.
fn unmount(path: &Path) {
    for _ in 0..50 {
        let status = std::process::Command::new("umount").arg(path).status();
        if status.is_ok_and(|s| s.success()) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(path)
        .status();
}

fn transport() -> Transport {
    Transport {
        client: reqwest::Client::new().into(),
        scheme: "http".into(),
    }
}

fn command(op_id: &str, name: &str, filler: usize) -> Command {
    let yaml = format!(
        "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: disk\n  name: {name}\nspec:\n  data:\n    v: \"{}\"\n",
        "x".repeat(filler)
    );
    Command {
        op_id: op_id.into(),
        at_ms: 1,
        op: crate::state::Op::Apply {
            objects: crate::definitions::parse_str("t", &yaml).expect("definition"),
            owner: None,
        },
    }
}

/// Closes the store's disk when dropped, also while a failing test unwinds.
struct CloseOnDrop(std::sync::Arc<super::disk::Disk>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

async fn open_leader(dir: &Path, config: StoreConfig) -> RaftStore {
    let store = RaftStore::open(dir, 1, transport(), config)
        .await
        .expect("open");
    store
        .bootstrap(RaftPeer::default())
        .await
        .expect("bootstrap");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.status().state != ServerState::Leader {
        assert!(std::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store
}

fn stored(store: &RaftStore, name: &str) -> bool {
    store
        .sm
        .state()
        .objects
        .keys()
        .any(|k| k.group == "disk" && k.name == name)
}

/// Polls `write` until it succeeds or `limit` passes.
async fn write_within(store: &RaftStore, cmd: Command, limit: Duration) -> CommandResult {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match store.write(cmd.clone()).await {
            Ok(result) => return result,
            Err(e) if std::time::Instant::now() > deadline => {
                panic!("write {} still fails after {limit:?}: {e}", cmd.op_id)
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Disk full under the log (no reserve, so the append itself hits ENOSPC): the Raft core waits
/// instead of shutting down, new writes are refused as InsufficientStorage, and once space is
/// back everything resumes without a restart; the write that was in flight is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_under_the_log_is_waited_out() {
    let fs = Tmpfs::mount("3m");
    let config = StoreConfig {
        reserve_bytes: Some(0),
        write_timeout: Duration::from_secs(2),
        ..StoreConfig::default()
    };
    let store = open_leader(&fs.path().join("raft"), config).await;
    // A failing assertion must not leave the core waiting for space forever (the runtime's drop
    // would wait for it): closing the disk ends the wait.
    let _close = CloseOnDrop(store.disk.clone());
    store
        .write(command("before", "before", 10))
        .await
        .expect("write");

    let filler = fs.fill();
    // Bigger than what the log allocated ahead: the append must allocate more, and fails.
    let in_flight = command(
        "in-flight",
        "in-flight",
        segments::PREALLOCATE as usize + 512 * 1024,
    );
    // Appended nowhere durable, but proposed: whether it will apply is not known yet.
    let err = store.write(in_flight.clone()).await.unwrap_err();
    assert!(matches!(err, WriteError::Unknown(_)), "{err:?}");
    let problem = store
        .status()
        .problem
        .expect("degraded while the disk is full");
    assert!(problem.contains("No space left"), "{problem}");
    assert_ne!(store.status().state, ServerState::Shutdown);
    let refused = store
        .write(command("refused", "refused", 10))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, WriteError::InsufficientStorage(_)),
        "{refused:?}"
    );
    // A retry of the write that is waiting in the core must not claim it was not applied.
    let retry = store.write(in_flight.clone()).await.unwrap_err();
    assert!(matches!(retry, WriteError::Unknown(_)), "{retry:?}");

    std::fs::remove_file(filler).expect("free the space");
    let started = std::time::Instant::now();
    write_within(
        &store,
        command("after", "after", 10),
        Duration::from_secs(10),
    )
    .await;
    eprintln!(
        "writes resumed {:?} after the space came back",
        started.elapsed()
    );
    assert!(store.status().problem.is_none());
    // The write that was waiting in the core is applied once; its retry gets the same result.
    let retried = write_within(&store, in_flight, Duration::from_secs(5)).await;
    assert!(
        matches!(retried, CommandResult::Objects { .. }),
        "{retried:?}"
    );
    assert!(stored(&store, "before") && stored(&store, "in-flight") && stored(&store, "after"));
    assert!(!stored(&store, "refused"));
    store.shutdown().await;
}

/// Below the reserve writes are refused before anything is proposed (nothing reaches the log) and
/// accepted again as soon as space is back; a read-only file system is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_refused_below_the_reserve_and_read_only() {
    let fs = Tmpfs::mount("8m");
    let store = open_leader(&fs.path().join("raft"), StoreConfig::default()).await;
    // 5 % of 8 MiB.
    assert_eq!(store.disk.reserve(), 8 * 1024 * 1024 / 20);
    store.write(command("a", "a", 10)).await.expect("write");
    let last_log = store.status().last_log_index;

    let filler = fs.fill();
    let err = store.write(command("full", "full", 10)).await.unwrap_err();
    assert!(matches!(err, WriteError::InsufficientStorage(_)), "{err:?}");
    assert!(err.to_string().contains("kept in reserve"), "{err}");
    assert!(store.status().problem.is_some());
    std::fs::remove_file(filler).expect("free the space");
    assert!(store.status().problem.is_none());
    store
        .write(command("b", "b", 10))
        .await
        .expect("write after freeing");

    // The refused write never reached the log: 1 entry after `a`, for `b`.
    assert_eq!(
        store.status().last_log_index,
        last_log.map(|i| i + 1),
        "refused writes must not be proposed"
    );
    assert!(!stored(&store, "full"));
    store.shutdown().await;

    let view = fs.read_only_view();
    let problem = disk::fs_problem(view.dir.path(), 0).expect("read-only is a problem");
    assert!(problem.contains("read-only"), "{problem}");
    assert_eq!(disk::fs_problem(fs.path(), 0), None);
}

/// Entries in the log table (after purges).
fn log_entries(store: &RaftStore) -> u64 {
    store
        .disk
        .run("counting", |db| {
            use redb::{ReadableDatabase, ReadableTableMetadata};
            let txn = db.begin_read()?;
            Ok(txn
                .open_table(redb::TableDefinition::<u64, &[u8]>::new("logs"))?
                .len()?)
        })
        .expect("count")
}

/// Snapshots are taken every `snapshot_every` entries, the log is purged behind them and the
/// database compacted; a restart loads the snapshot and replays only the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_bound_the_log_and_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raft_dir = dir.path().join("raft");
    let config = StoreConfig {
        snapshot_every: 200,
        ..StoreConfig::default()
    };
    let store = open_leader(&raft_dir, config.clone()).await;
    let big = 4096;
    for n in 0..1500 {
        // 20 live objects, overwritten again and again: the history is 75 times the state.
        store
            .write(command(&format!("op{n}"), &format!("o{}", n % 20), big))
            .await
            .expect("write");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while log_entries(&store) > 2 * 200 + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "log not purged: {} entries",
            log_entries(&store)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let revision = store.sm.state().revision;
    store.shutdown().await;
    drop(store);

    // redb holds the vote, the purge point and the snapshot's id, not the log; the log's files
    // hold at most the segment being written and those with entries after the purge point.
    let size = std::fs::metadata(raft_dir.join("raft.redb"))
        .expect("redb")
        .len();
    assert!(
        size < 1024 * 1024,
        "raft.redb is {size} bytes after 1500 writes of {big} bytes"
    );
    let log: u64 = std::fs::read_dir(raft_dir.join(segments::DIR))
        .expect("segments")
        .flatten()
        .map(|e| e.metadata().expect("meta").len())
        .sum();
    assert!(
        log <= segments::SEGMENT_BYTES + segments::PREALLOCATE,
        "the log's files take {log} bytes"
    );
    let snapshots: Vec<_> = std::fs::read_dir(&raft_dir)
        .expect("dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("snapshot-"))
        .collect();
    assert_eq!(snapshots.len(), 1, "one snapshot file: {snapshots:?}");

    let store = open_leader(&raft_dir, config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.sm.state().revision < revision {
        assert!(std::time::Instant::now() < deadline, "state not restored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.sm.state().objects.len(), 20);
    store
        .write(command("later", "later", 10))
        .await
        .expect("write after restart");
    store.shutdown().await;
}

/// A log of few but large entries is snapshotted once it outgrows [`disk::SNAPSHOT_LOG_BYTES`],
/// long before `snapshot_every` entries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_log_is_snapshotted_by_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raft_dir = dir.path().join("raft");
    let config = StoreConfig {
        snapshot_every: 1_000_000,
        ..StoreConfig::default()
    };
    let store = open_leader(&raft_dir, config).await;
    let entry = 512 * 1024;
    let writes = disk::SNAPSHOT_LOG_BYTES as usize / entry + 4;
    for n in 0..writes {
        store
            .write(command(&format!("big{n}"), &format!("o{}", n % 3), entry))
            .await
            .expect("write");
    }
    let snapshot_file = || {
        std::fs::read_dir(&raft_dir)
            .expect("dir")
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("snapshot-"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !snapshot_file() {
        assert!(
            std::time::Instant::now() < deadline,
            "no snapshot after {writes} writes of {entry} bytes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    store.shutdown().await;
}

/// Group commit: writes proposed together go as few Raft entries, each caller gets its own
/// result (its own revision), and a refused member answers only itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_keep_their_own_results() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_leader(&dir.path().join("raft"), StoreConfig::default()).await;
    let before = store.sm.applied_index();
    let writes = 200;
    let tasks: Vec<_> = (0..writes)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move {
                let cmd = if n % 50 == 7 {
                    // Refused by the state: answers only this caller.
                    Command {
                        op_id: format!("bad{n}"),
                        at_ms: 1,
                        op: crate::state::Op::RemoveNode { id: 999 },
                    }
                } else {
                    command(&format!("op{n}"), &format!("o{n}"), 10)
                };
                (n, store.write(cmd).await.expect("write"))
            })
        })
        .collect();
    let mut revisions = BTreeSet::new();
    for task in tasks {
        let (n, result) = task.await.expect("task");
        match result {
            CommandResult::Rejected { reason } => {
                assert_eq!(n % 50, 7, "write {n} refused: {reason}");
                assert!(reason.contains("999"), "{reason}");
            }
            CommandResult::Objects { revision, outcomes } => {
                assert_ne!(n % 50, 7, "write {n} should be refused");
                assert_eq!(outcomes.len(), 1);
                assert_eq!(outcomes[0].key.name, format!("o{n}"));
                assert_eq!(outcomes[0].outcome, crate::state::Outcome::Created);
                assert!(revisions.insert(revision), "revision {revision} twice");
            }
            other => panic!("write {n}: {other:?}"),
        }
    }
    assert_eq!(revisions.len(), writes - 4);
    assert_eq!(store.sm.state().objects.len(), writes - 4);
    let entries = store.sm.applied_index() - before;
    assert!(
        entries < writes as u64 / 4,
        "{writes} concurrent writes took {entries} Raft entries"
    );
    store.shutdown().await;
}

/// Commands written together (a placement pass) go into one entry, even past the group-commit
/// bound: a reader sees all of them applied or none. Each keeps its own result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_written_together_are_one_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_leader(&dir.path().join("raft"), StoreConfig::default()).await;
    let before = store.sm.applied_index();
    // Six of 300 KiB: past batch::MAX_BYTES, which would cut them into two entries or more.
    let commands: Vec<Command> = (0..6)
        .map(|n| command(&format!("all{n}"), &format!("a{n}"), 300 * 1024))
        .collect();
    let total: usize = commands.iter().map(batch::json_size).sum();
    assert!(total > batch::MAX_BYTES);
    let results = store.write_all(commands).await;
    assert_eq!(results.len(), 6);
    let mut last = 0;
    for (n, result) in results.into_iter().enumerate() {
        match result.expect("write") {
            CommandResult::Objects { revision, outcomes } => {
                assert_eq!(outcomes[0].key.name, format!("a{n}"));
                assert!(revision > last, "results out of order");
                last = revision;
            }
            other => panic!("command {n}: {other:?}"),
        }
    }
    assert_eq!(store.sm.applied_index() - before, 1, "one entry");
    store.shutdown().await;
}

/// Rewrites the store's data dir as the JSON version wrote it: log entries as JSON in redb's
/// `logs` table (where versions before the segments kept them), the snapshot body as JSON in
/// `snapshot-<id>.json`.
fn rewrite_as_json(raft_dir: &Path) {
    let stored = segments::Segments::open(raft_dir, false)
        .expect("segments")
        .read(0, None)
        .expect("read the segments");
    assert!(!stored.is_empty());
    std::fs::remove_dir_all(raft_dir.join(segments::DIR)).expect("remove the segments");
    let db = redb::Database::open(raft_dir.join("raft.redb")).expect("open redb");
    let txn = db.begin_write().expect("txn");
    {
        let mut table = txn.open_table(log::LOGS).expect("logs");
        for bytes in stored {
            let entry: openraft::Entry<TypeConfig> = codec::decode(&bytes).expect("entry");
            let json = serde_json::to_vec(&entry).expect("json");
            assert_eq!(json[0], b'{');
            table
                .insert(entry.log_id.index, json.as_slice())
                .expect("insert");
        }
    }
    txn.commit().expect("commit");
    let mut bodies = 0;
    for entry in std::fs::read_dir(raft_dir).expect("dir").flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "snap") {
            let body: sm::SnapshotBody =
                codec::decode(&std::fs::read(&path).expect("read")).expect("body");
            std::fs::write(
                path.with_extension("json"),
                serde_json::to_vec(&body).expect("json"),
            )
            .expect("write");
            std::fs::remove_file(&path).expect("remove");
            bodies += 1;
        }
    }
    assert_eq!(bodies, 1, "one snapshot body");
}

/// A data dir written by the JSON version (log entries and snapshot body as JSON) still loads:
/// the snapshot, then the entries after it; new writes go on in the binary encoding, and the
/// next snapshot replaces the JSON one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_of_the_json_version_still_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let raft_dir = dir.path().join("raft");
    let config = StoreConfig {
        snapshot_every: 50,
        ..StoreConfig::default()
    };
    let store = open_leader(&raft_dir, config.clone()).await;
    let mut results = Vec::new();
    for n in 0..80 {
        results.push(
            store
                .write(command(&format!("op{n}"), &format!("o{n}"), 100))
                .await
                .expect("write"),
        );
    }
    let snapshot_file = || {
        std::fs::read_dir(&raft_dir)
            .expect("dir")
            .flatten()
            .any(|e| e.path().extension().is_some_and(|e| e == "snap"))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !snapshot_file() {
        assert!(std::time::Instant::now() < deadline, "no snapshot");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let revision = store.sm.state().revision;
    store.shutdown().await;
    drop(store);
    rewrite_as_json(&raft_dir);

    let local = recover::local_state(&raft_dir).expect("local state of the JSON data");
    assert_eq!(local.state.objects.len(), 80);
    assert_eq!(local.state.revision, revision);
    assert!(local.snapshot_index > 0 && local.last_index > local.snapshot_index);

    let store = open_leader(&raft_dir, config).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.sm.state().revision < revision {
        assert!(std::time::Instant::now() < deadline, "state not restored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.sm.state().objects.len(), 80);
    assert!((0..80).all(|n| stored(&store, &format!("o{n}"))));
    // A retry of a write applied by the JSON version gets its first result.
    let again = store.write(command("op3", "o3", 100)).await.expect("retry");
    assert_eq!(again, results[3]);
    for n in 80..140 {
        store
            .write(command(&format!("op{n}"), &format!("o{n}"), 100))
            .await
            .expect("write");
    }
    store.shutdown().await;
    drop(store);
    let local = recover::local_state(&raft_dir).expect("local state");
    assert_eq!(local.state.objects.len(), 140);
}

/// Serves `store`'s Raft RPCs on a loopback port; the server task ends when the handle drops.
async fn serve_rpc(listener: tokio::net::TcpListener, store: &RaftStore) -> AbortOnDrop {
    let router = store.rpc_router();
    AbortOnDrop(tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Two nodes over HTTP on loopback, each serving its Raft RPCs: `one` bootstrapped and leader,
/// `two` not a member yet (add it with `two_peer`).
struct TwoNodes {
    one: RaftStore,
    two: RaftStore,
    two_peer: RaftPeer,
    _serving: [AbortOnDrop; 2],
}

async fn two_nodes(dir: &Path, config: StoreConfig) -> TwoNodes {
    let (l1, l2) = (
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    );
    let peer = |l: &tokio::net::TcpListener, name: &str| RaftPeer {
        raft_addr: l.local_addr().expect("addr").to_string(),
        api_addr: String::new(),
        name: name.into(),
    };
    let (p1, two_peer) = (peer(&l1, "one"), peer(&l2, "two"));
    let one = RaftStore::open(&dir.join("one"), 1, transport(), config.clone())
        .await
        .expect("open");
    let serve1 = serve_rpc(l1, &one).await;
    one.bootstrap(p1).await.expect("bootstrap");
    let two = RaftStore::open(&dir.join("two"), 2, transport(), config)
        .await
        .expect("open");
    let serve2 = serve_rpc(l2, &two).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while one.status().state != ServerState::Leader {
        assert!(std::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    TwoNodes {
        one,
        two,
        two_peer,
        _serving: [serve1, serve2],
    }
}

/// Two nodes over HTTP on loopback: the leader learns from the follower's Raft RPC answers that
/// it reads batched entries, and concurrent writes then share entries; the follower applies the
/// same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_reads_batches_gets_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let TwoNodes {
        one,
        two,
        two_peer,
        _serving,
    } = two_nodes(dir.path(), StoreConfig::default()).await;
    one.add_member(2, two_peer).await.expect("add node 2");
    // Node 2's Raft RPC answers say it reads batches (the leader hears them with its appends).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !batch::members_read_batches(&one.raft, &one.peers) {
        assert!(
            std::time::Instant::now() < deadline,
            "the leader never heard that node 2 reads batches"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    assert_eq!(
        one.peers.of(2),
        net::PeerFeatures::parse(Some("batch,msgpack")),
        "node 2 said it reads MessagePack: the appends that follow are MessagePack"
    );

    let before = one.sm.applied_index();
    let writes = 100;
    let tasks: Vec<_> = (0..writes)
        .map(|n| {
            let one = one.clone();
            tokio::spawn(async move {
                one.write(command(&format!("op{n}"), &format!("o{n}"), 10))
                    .await
                    .expect("write")
            })
        })
        .collect();
    for task in tasks {
        assert!(matches!(
            task.await.expect("task"),
            CommandResult::Objects { .. }
        ));
    }
    let entries = one.sm.applied_index() - before;
    assert!(
        entries < writes as u64 / 4,
        "{writes} concurrent writes took {entries} Raft entries"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while two.sm.state().objects.len() < writes {
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        serde_json::to_value(&*two.sm.state()).expect("json"),
        serde_json::to_value(&*one.sm.state()).expect("json")
    );
    one.shutdown().await;
    two.shutdown().await;
}

/// A node that joins behind the log's start catches up, through large entries and a large
/// snapshot (a debug build is slow here; a link between clouds is in production). Both used to
/// time out on every attempt and be sent again, for ever: an AppendEntries of many large entries
/// (openraft gives it one heartbeat interval) and a snapshot chunk (openraft's default 200 ms for
/// 4 MiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_the_log_catches_up_from_a_large_snapshot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig {
        snapshot_every: 20,
        ..StoreConfig::default()
    };
    let TwoNodes {
        one,
        two,
        two_peer,
        _serving,
    } = two_nodes(dir.path(), config).await;
    // About 24 MiB of state; the log is purged behind the snapshots, so a new node needs one.
    let objects = 96;
    for n in 0..objects {
        one.write(command(&format!("op{n}"), &format!("o{n}"), 256 * 1024))
            .await
            .expect("write");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while one.raft.metrics().borrow().purged.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the log was not purged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    one.add_member(2, two_peer).await.expect("add node 2");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while two.sm.state().objects.len() < objects {
        assert!(
            std::time::Instant::now() < deadline,
            "node 2 did not apply the snapshot: {} objects of {objects}, applied {}, leader {} objects applied {}",
            two.sm.state().objects.len(),
            two.sm.applied_index(),
            one.sm.state().objects.len(),
            one.sm.applied_index()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    one.shutdown().await;
    two.shutdown().await;
}

/// The Raft RPC server reads JSON (what a node of an earlier version sends) and MessagePack, and
/// answers in the encoding of the request; a body in neither is a 400 that says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_rpcs_answer_in_the_encoding_of_the_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/raft/vote", listener.local_addr().expect("addr"));
    let one = RaftStore::open(
        &dir.path().join("one"),
        1,
        transport(),
        StoreConfig::default(),
    )
    .await
    .expect("open");
    let _serve = serve_rpc(listener, &one).await;
    let vote = openraft::raft::VoteRequest::<NodeId> {
        vote: openraft::Vote::new(1, 2),
        last_log_id: None,
    };
    type Answer = Result<openraft::raft::VoteResponse<NodeId>, openraft::error::RaftError<NodeId>>;
    let client = reqwest::Client::new();
    for (body, content_type) in [
        (serde_json::to_vec(&vote).expect("json"), "application/json"),
        (
            codec::encode(&vote).expect("msgpack"),
            "application/vnd.smr.msgpack",
        ),
    ] {
        let sent_msgpack = body[0] == codec::TAG_MSGPACK;
        let response = client.post(&url).body(body).send().await.expect("send");
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], content_type);
        assert_eq!(response.headers()[net::FEATURES_HEADER], "batch,msgpack");
        let bytes = response.bytes().await.expect("body");
        assert_eq!(bytes[0] == codec::TAG_MSGPACK, sent_msgpack);
        let answer: Answer = codec::decode(&bytes).expect("an answer");
        assert!(
            answer
                .expect("granted or not, an answer")
                .vote
                .leader_id()
                .term
                >= 1
        );
    }
    let response = client
        .post(&url)
        .body(vec![0x01, 0x02])
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 400);
    let text = response.text().await.expect("text");
    assert!(
        text.contains("raft rpc body") && text.contains("0x01"),
        "{text}"
    );
    one.shutdown().await;
}

/// The log store and the state machine, on a fresh data dir, for openraft's storage suite.
struct SuiteBuilder;

impl
    openraft::testing::StoreBuilder<
        TypeConfig,
        log::LogStore,
        sm::StateMachineStore,
        tempfile::TempDir,
    > for SuiteBuilder
{
    async fn build(
        &self,
    ) -> Result<
        (tempfile::TempDir, log::LogStore, sm::StateMachineStore),
        openraft::StorageError<NodeId>,
    > {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = Arc::new(disk::Disk::open(dir.path(), Some(0)).expect("open"));
        let log = log::LogStore::new(disk.clone()).expect("log store");
        let sm = sm::StateMachineStore::load(disk)?;
        Ok((dir, log, sm))
    }
}

/// openraft's conformance suite for storage: appends, reads, truncations, purges, the vote and
/// the commit point, the log state, membership, snapshots, against the real log store (its
/// in-memory tail and its writer thread) on redb.
#[test]
fn the_storage_passes_openraft_s_suite() {
    openraft::testing::Suite::test_all(SuiteBuilder).expect("openraft's storage suite");
}

/// Issue 14: the newest entries are read from memory (the tail), older ones from the segments;
/// the tail keeps every entry not durable yet and the newest durable ones, and a truncation or a
/// purge removes entries from both. A reopen reads the same log, and the commit point with it.
#[test]
fn the_log_reads_its_tail_from_memory_and_the_rest_from_the_segments() {
    use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};
    let entry = |index: u64| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Blank,
    };
    let indexes = |entries: &[Entry<TypeConfig>]| -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = Arc::new(disk::Disk::open(dir.path(), Some(0)).expect("open"));
        let mut store = log::LogStore::new(disk.clone()).expect("log store");
        let total = log::TAIL_KEEP as u64 + 44;
        store
            .blocking_append((1..=total).map(entry))
            .await
            .expect("append");
        // Flushed: every entry is in redb; the tail keeps only the newest.
        assert_eq!(store.stored(), (1..=total).collect::<Vec<_>>());
        assert_eq!(
            store.tail().indexes(),
            (total - log::TAIL_KEEP as u64 + 1..=total).collect::<Vec<_>>()
        );
        // A read across the tail's start takes the first part from the segments, the rest from
        // memory.
        let all = store.try_get_log_entries(1..=total).await.expect("read");
        assert_eq!(indexes(&all), (1..=total).collect::<Vec<_>>());
        let some = store.try_get_log_entries(10..50).await.expect("read");
        assert_eq!(indexes(&some), (10..50).collect::<Vec<_>>());
        // A truncation removes from both.
        store
            .truncate(LogId::new(CommittedLeaderId::new(1, 1), total - 9))
            .await
            .expect("truncate");
        assert_eq!(store.stored().last(), Some(&(total - 10)));
        assert_eq!(store.tail().indexes().last(), Some(&(total - 10)));
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(total - 10));
        // A purge too (up to an entry the tail holds).
        store
            .purge(LogId::new(CommittedLeaderId::new(1, 1), total - 50))
            .await
            .expect("purge");
        assert_eq!(store.stored().first(), Some(&(total - 49)));
        assert_eq!(store.tail().indexes().first(), Some(&(total - 49)));
        let rest = store.try_get_log_entries(0..).await.expect("read");
        assert_eq!(
            indexes(&rest),
            (total - 49..=total - 10).collect::<Vec<_>>()
        );
        // The commit point goes with the next append.
        let committed = Some(LogId::new(CommittedLeaderId::new(1, 1), total - 12));
        store.save_committed(committed).await.expect("commit point");
        store
            .blocking_append([entry(total - 9)])
            .await
            .expect("append");
        drop(store);
        disk.release();
        drop(disk);

        let disk = Arc::new(disk::Disk::open(dir.path(), Some(0)).expect("open"));
        let mut store = log::LogStore::new(disk.clone()).expect("log store");
        let state = store.get_log_state().await.expect("state");
        assert_eq!(state.last_log_id.map(|l| l.index), Some(total - 9));
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(total - 50));
        let rest = store.try_get_log_entries(0..).await.expect("read");
        assert_eq!(indexes(&rest), (total - 49..=total - 9).collect::<Vec<_>>());
        assert_eq!(store.read_committed().await.expect("read"), committed);
    });
}

/// Moving an earlier version's log out of redb: a crash after the segment was written but
/// before redb's rows were removed finds the segment and only removes the rows; a segment
/// written half (a `.tmp` file) is dropped and the rows moved again.
#[test]
fn a_log_moved_out_of_redb_is_moved_once() {
    use openraft::storage::RaftLogStorage;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftLogReader};
    let entry = |term: u64, index: u64| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(term, 1), index),
        payload: EntryPayload::Blank,
    };
    let put_in_redb = |dir: &Path, term: u64| {
        let db = redb::Database::open(dir.join("raft.redb")).expect("open redb");
        let txn = db.begin_write().expect("txn");
        {
            let mut table = txn.open_table(log::LOGS).expect("logs");
            for index in 1..=30 {
                let bytes = codec::encode(&entry(term, index)).expect("encode");
                table.insert(index, bytes.as_slice()).expect("insert");
            }
        }
        txn.commit().expect("commit");
    };
    let terms = |dir: &Path| {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async {
            let disk = Arc::new(disk::Disk::open(dir, Some(0)).expect("open"));
            let mut store = log::LogStore::new(disk.clone()).expect("log store");
            let entries = store.try_get_log_entries(0..).await.expect("read");
            let state = store.get_log_state().await.expect("state");
            drop(store);
            disk.release();
            (
                entries
                    .iter()
                    .map(|e| (e.log_id.index, e.log_id.leader_id.term))
                    .collect::<Vec<_>>(),
                state.last_log_id.map(|l| l.index),
            )
        })
    };
    let dir = tempfile::tempdir().expect("tempdir");
    drop(disk::Disk::open(dir.path(), Some(0)).expect("create"));
    put_in_redb(dir.path(), 1);
    // A first move cut short: only a temporary file.
    let segments = dir.path().join(segments::DIR);
    std::fs::create_dir_all(&segments).expect("dir");
    std::fs::write(segments.join("00000000000000000001.log.tmp"), b"half").expect("tmp");
    let (moved, last) = terms(dir.path());
    assert_eq!(moved, (1..=30).map(|i| (i, 1)).collect::<Vec<_>>());
    assert_eq!(last, Some(30));
    assert!(!segments.join("00000000000000000001.log.tmp").exists());
    // Rows left in redb after the move (a crash before their removal): the segment wins.
    put_in_redb(dir.path(), 7);
    let (again, _) = terms(dir.path());
    assert_eq!(again, moved);
    let db = redb::Database::open(dir.path().join("raft.redb")).expect("open redb");
    let txn = redb::ReadableDatabase::begin_read(&db).expect("txn");
    let table = txn.open_table(log::LOGS).expect("logs");
    assert!(redb::ReadableTableMetadata::is_empty(&table).expect("len"));
}
