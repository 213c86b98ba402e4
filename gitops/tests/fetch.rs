//! Fetching from real git servers on loopback: git daemon (git://), git http-backend with
//! basic auth (http://) and a private sshd (ssh://).

mod support;

use gitops::{Auth, Fetcher, FetcherConfig, GitError, HostKeyPolicy, Limits, PackInfo, RepoSpec};
use support::{GitDaemon, HttpGit, Sshd, TestRepo};

fn paths(checkout: &gitops::Checkout) -> Vec<&str> {
    checkout.files.iter().map(|f| f.path.as_str()).collect()
}

fn text<'a>(checkout: &'a gitops::Checkout, path: &str) -> &'a str {
    &checkout
        .files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} missing"))
        .text
}

fn spec(url: &str, revision: Option<&str>, directory: &str) -> RepoSpec {
    RepoSpec {
        url: url.to_string(),
        revision: revision.map(str::to_string),
        directory: directory.to_string(),
        auth: Auth::None,
    }
}

fn sample_repo(name: &str) -> (TestRepo, String) {
    let repo = TestRepo::new(name);
    repo.write("apps/a.yaml", "kind: containers # a v1\n");
    repo.write("apps/sub/b.yml", "kind: configuration\n");
    repo.write("apps/README.md", "not a definition\n");
    repo.write("other/c.yaml", "kind: containers # other\n");
    let sha = repo.commit("first");
    (repo, sha)
}

#[tokio::test]
async fn git_daemon_initial_fetch_then_new_commit() {
    let (repo, first) = sample_repo("initial");
    let daemon = GitDaemon::start(&repo.base());
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(cache.path());
    let s = spec(&daemon.url("initial"), None, "apps");

    let c = fetcher.fetch(&s).await.unwrap();
    assert_eq!(c.commit, first);
    assert_eq!(paths(&c), ["a.yaml", "sub/b.yml"]);
    assert_eq!(text(&c, "a.yaml"), "kind: containers # a v1\n");
    assert_eq!(c.pack, None);
    assert!(fetcher.repo_dir(&s.url).join("HEAD").exists(), "bare cache");

    repo.write("apps/a.yaml", "kind: containers # a v2\n");
    repo.write("apps/c.yaml", "kind: secret\n");
    repo.remove("apps/sub");
    let second = repo.commit("second");
    let c = fetcher.fetch(&s).await.unwrap();
    assert_eq!(c.commit, second);
    assert_eq!(paths(&c), ["a.yaml", "c.yaml"]);
    assert_eq!(text(&c, "a.yaml"), "kind: containers # a v2\n");

    // The whole repository from its root.
    let root = fetcher.fetch(&spec(&s.url, None, "")).await.unwrap();
    assert_eq!(paths(&root), ["apps/a.yaml", "apps/c.yaml", "other/c.yaml"]);
}

#[tokio::test]
async fn revisions_branch_tag_sha() {
    let (repo, first) = sample_repo("revs");
    repo.tag("v1");
    repo.write("apps/a.yaml", "kind: containers # main v2\n");
    let main2 = repo.commit("main v2");
    repo.checkout("dev", true);
    repo.write("apps/a.yaml", "kind: containers # dev\n");
    let dev = repo.commit("dev");
    repo.checkout("main", false);

    let daemon = GitDaemon::start(&repo.base());
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(cache.path());
    let url = daemon.url("revs");
    let fetch = |rev: Option<&str>| {
        let fetcher = fetcher.clone();
        let s = spec(&url, rev, "apps");
        async move { fetcher.fetch(&s).await }
    };

    let head = fetch(None).await.unwrap();
    assert_eq!(head.commit, main2);
    assert_eq!(text(&head, "a.yaml"), "kind: containers # main v2\n");

    let c = fetch(Some("dev")).await.unwrap();
    assert_eq!(c.commit, dev);
    assert_eq!(text(&c, "a.yaml"), "kind: containers # dev\n");
    assert_eq!(fetch(Some("refs/heads/dev")).await.unwrap().commit, dev);

    let c = fetch(Some("v1")).await.unwrap();
    assert_eq!(c.commit, first, "annotated tag peeled to its commit");
    assert_eq!(text(&c, "a.yaml"), "kind: containers # a v1\n");
    assert_eq!(fetch(Some("refs/tags/v1")).await.unwrap().commit, first);

    assert_eq!(fetch(Some(&first)).await.unwrap().commit, first);
    assert_eq!(fetch(Some(&first[..8])).await.unwrap().commit, first);

    match fetch(Some("nope")).await {
        Err(GitError::RevisionNotFound { url: u, revision }) => {
            assert_eq!(u, url);
            assert_eq!(revision, "nope");
        }
        other => panic!("expected RevisionNotFound, got {other:?}"),
    }
    assert!(matches!(
        fetch(Some("deadbeefdeadbeef")).await,
        Err(GitError::RevisionNotFound { .. })
    ));
}

#[tokio::test]
async fn hostile_directory_and_symlinks_refused() {
    let repo = TestRepo::new("hostile");
    repo.write("apps/a.yaml", "kind: containers\n");
    repo.symlink("apps/evil.yaml", "/etc/passwd");
    repo.write("safe/a.yaml", "kind: containers\n");
    repo.symlink("linked", "safe");
    repo.write("clean/a.yaml", "kind: containers\n");
    repo.commit("links");
    let daemon = GitDaemon::start(&repo.base());
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(cache.path());
    let url = daemon.url("hostile");

    for dir in ["../etc", "/etc", "apps/../../x", "a/.git"] {
        match fetcher.fetch(&spec(&url, None, dir)).await {
            Err(GitError::HostilePath { path, .. }) => assert_eq!(path, dir),
            other => panic!("{dir}: expected HostilePath, got {other:?}"),
        }
    }
    match fetcher.fetch(&spec(&url, None, "apps")).await {
        Err(e @ GitError::Symlink { .. }) => {
            assert!(e.to_string().contains("\"apps/evil.yaml\""), "{e}");
        }
        other => panic!("expected Symlink, got {other:?}"),
    }
    match fetcher.fetch(&spec(&url, None, "linked")).await {
        Err(GitError::Symlink { path, .. }) => assert_eq!(path, "linked"),
        other => panic!("expected Symlink, got {other:?}"),
    }
    match fetcher.fetch(&spec(&url, None, "missing")).await {
        Err(GitError::DirectoryNotFound { directory, .. }) => assert_eq!(directory, "missing"),
        other => panic!("expected DirectoryNotFound, got {other:?}"),
    }
    let ok = fetcher.fetch(&spec(&url, None, "clean")).await.unwrap();
    assert_eq!(paths(&ok), ["a.yaml"]);
}

#[tokio::test]
async fn pack_layout() {
    let repo = TestRepo::new("pack");
    repo.write("packs/redis/Pack.yaml", "name: redis\nversion: 1.2.0\n");
    repo.write(
        "packs/redis/definitions/x.yaml",
        "kind: containers\nimage: redis:{{ .tag }}\n",
    );
    repo.write("packs/redis/definitions/variables.yaml", "tag: 7.2\n");
    repo.write("packs/redis/definitions/.hidden/z.yaml", "kind: skipped\n");
    repo.write("broken/Pack.yaml", "name: broken\nversion: 1\n");
    repo.write("broken/definitions/a.yaml", "kind: x\nimage: {{ .nope }}\n");
    repo.write(".github/workflows/ci.yaml", "on: push\n");
    repo.write("root.yaml", "kind: containers\n");
    repo.write(
        "packs/redis/definitions/nested/y.yml",
        "kind: configuration\n",
    );
    repo.write("packs/redis/definitions/notes.txt", "ignored\n");
    repo.write(
        "packs/redis/other.yaml",
        "kind: ignored-outside-definitions\n",
    );
    repo.write("packs/redis/README.md", "# redis\n");
    repo.commit("pack");
    let daemon = GitDaemon::start(&repo.base());
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(cache.path());
    let c = fetcher
        .fetch(&spec(&daemon.url("pack"), None, "packs/redis"))
        .await
        .unwrap();
    assert_eq!(
        c.pack,
        Some(PackInfo {
            name: "redis".into(),
            version: "1.2.0".into()
        })
    );
    // variables.yaml is not a definition: its values are put into the templates.
    assert_eq!(
        paths(&c),
        ["definitions/nested/y.yml", "definitions/x.yaml"]
    );
    assert_eq!(c.files[1].text, "kind: containers\nimage: redis:7.2\n");
    // The repository root: `.github/` (CI workflows) is skipped, packs below are read as packs.
    match fetcher.fetch(&spec(&daemon.url("pack"), None, "")).await {
        Err(e @ GitError::BadPack { .. }) => assert!(e.to_string().contains("broken/"), "{e}"),
        other => panic!("expected BadPack for the broken pack, got {other:?}"),
    }
    // An undefined variable names the file, the line and the variable.
    match fetcher
        .fetch(&spec(&daemon.url("pack"), None, "broken"))
        .await
    {
        Err(e @ GitError::BadPack { .. }) => {
            let text = e.to_string();
            assert!(text.contains("broken/definitions/a.yaml"), "{text}");
            assert!(
                text.contains("line 2: variable `nope` is not defined"),
                "{text}"
            );
        }
        other => panic!("expected BadPack, got {other:?}"),
    }
}

#[tokio::test]
async fn size_caps_and_non_utf8() {
    let repo = TestRepo::new("caps");
    repo.write("big/a.yaml", "x".repeat(2000));
    repo.write("many/a.yaml", "x".repeat(600));
    repo.write("many/b.yaml", "x".repeat(600));
    repo.write("bin/a.yaml", [0xffu8, 0xfe, 0x00, 0x41]);
    repo.commit("caps");
    let daemon = GitDaemon::start(&repo.base());
    let cache = tempfile::tempdir().unwrap();
    let limits = Limits {
        max_file_bytes: 1000,
        max_total_bytes: 1000,
    };
    let fetcher = Fetcher::with_config(
        cache.path(),
        FetcherConfig {
            limits,
            ..FetcherConfig::default()
        },
    );
    let url = daemon.url("caps");
    match fetcher.fetch(&spec(&url, None, "big")).await {
        Err(GitError::FileTooLarge {
            path, size, limit, ..
        }) => {
            assert_eq!((path.as_str(), size, limit), ("big/a.yaml", 2000, 1000));
        }
        other => panic!("expected FileTooLarge, got {other:?}"),
    }
    assert!(matches!(
        fetcher.fetch(&spec(&url, None, "many")).await,
        Err(GitError::TotalTooLarge { limit: 1000, .. })
    ));
    match fetcher.fetch(&spec(&url, None, "bin")).await {
        Err(GitError::NotUtf8 { path, .. }) => assert_eq!(path, "bin/a.yaml"),
        other => panic!("expected NotUtf8, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_repo_and_closed_port() {
    let (repo, _) = sample_repo("exists");
    let daemon = GitDaemon::start(&repo.base());
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(cache.path());
    match fetcher.fetch(&spec(&daemon.url("absent"), None, "")).await {
        Err(e @ GitError::RepoNotFound { .. }) => {
            assert!(e.to_string().contains(&daemon.url("absent")), "{e}")
        }
        other => panic!("expected RepoNotFound, got {other:?}"),
    }
    // Local repositories are refused unless allowed.
    let local = repo.bare().display().to_string();
    assert!(matches!(
        fetcher.fetch(&spec(&local, None, "")).await,
        Err(GitError::UnsupportedUrl { .. })
    ));
    let local_ok = Fetcher::with_config(
        cache.path(),
        FetcherConfig {
            allow_local_urls: true,
            ..FetcherConfig::default()
        },
    );
    assert_eq!(
        local_ok
            .fetch(&spec(&local, None, "apps"))
            .await
            .unwrap()
            .files
            .len(),
        2
    );

    let port = support::free_port();
    let url = format!("git://127.0.0.1:{port}/x.git");
    match fetcher.fetch(&spec(&url, None, "")).await {
        Err(GitError::Network { url: u, .. }) => assert_eq!(u, url),
        other => panic!("expected Network, got {other:?}"),
    }
}

#[tokio::test]
async fn http_basic_auth() {
    let (repo, first) = sample_repo("private");
    let server = HttpGit::start(&repo.base(), "alice", "correct-horse").await;
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(cache.path());
    let url = server.url("private");

    let mut good = spec(&url, Some("main"), "apps");
    good.auth = Auth::Basic {
        username: "alice".into(),
        password: "correct-horse".into(),
    };
    let c = fetcher.fetch(&good).await.unwrap();
    assert_eq!(c.commit, first);
    assert_eq!(paths(&c), ["a.yaml", "sub/b.yml"]);

    let mut bad = good.clone();
    bad.auth = Auth::Basic {
        username: "alice".into(),
        password: "Tr0ub4dor-wrong".into(),
    };
    let err = fetcher.fetch(&bad).await.unwrap_err();
    let shown = format!("{err} / {err:?} / {bad:?}");
    assert!(matches!(err, GitError::AuthRefused { .. }), "{shown}");
    assert!(shown.contains(&url), "{shown}");
    assert!(!shown.contains("Tr0ub4dor"), "{shown}");

    // Credentials embedded in the URL are stripped from errors too.
    let port = server.port;
    let mut in_url = spec(
        &format!("http://alice:Embedded-s3cret@127.0.0.1:{port}/private.git"),
        None,
        "apps",
    );
    let err = fetcher.fetch(&in_url).await.unwrap_err();
    let shown = format!("{err} / {err:?} / {in_url:?}");
    assert!(matches!(err, GitError::AuthRefused { .. }), "{shown}");
    assert!(shown.contains(&url), "{shown}");
    assert!(!shown.contains("Embedded-s3cret"), "{shown}");
    in_url.url = format!("http://alice:correct-horse@127.0.0.1:{port}/private.git");
    in_url.auth = good.auth.clone();
    assert_eq!(fetcher.fetch(&in_url).await.unwrap().commit, first);

    let none = spec(&url, None, "apps");
    match fetcher.fetch(&none).await {
        Err(GitError::AuthRefused { detail, .. }) => {
            assert!(detail.contains("none are configured"), "{detail}")
        }
        other => panic!("expected AuthRefused, got {other:?}"),
    }
}

#[tokio::test]
async fn ssh_key_auth() {
    let Some(sshd) = Sshd::start() else {
        eprintln!("SKIPPED: /usr/sbin/sshd missing (apt-get install openssh-server)");
        return;
    };
    let (repo, first) = sample_repo("viassh");
    let url = sshd.url(&repo.bare());
    let safe_url = url.replacen("root@", "", 1);
    let cache = tempfile::tempdir().unwrap();

    let mut good = spec(&url, None, "apps");
    good.auth = Auth::SshKey {
        private_key_pem: sshd.client_key.clone(),
        passphrase: None,
    };
    // Trust on first use, then the remembered key is accepted again.
    let fetcher = Fetcher::new(cache.path());
    let c = fetcher.fetch(&good).await.unwrap();
    assert_eq!(c.commit, first);
    assert_eq!(paths(&c), ["a.yaml", "sub/b.yml"]);
    let known = std::fs::read_to_string(cache.path().join("known_hosts")).unwrap();
    assert_eq!(
        known,
        format!("127.0.0.1:{} {}\n", sshd.port, sshd.host_fingerprint)
    );
    repo.write("apps/d.yaml", "kind: secret\n");
    let second = repo.commit("second");
    assert_eq!(fetcher.fetch(&good).await.unwrap().commit, second);

    // Pinned fingerprints.
    let pinned_cache = tempfile::tempdir().unwrap();
    let pinned = Fetcher::with_config(
        pinned_cache.path(),
        FetcherConfig {
            host_keys: HostKeyPolicy::Pinned(vec![sshd.host_fingerprint.clone()]),
            ..FetcherConfig::default()
        },
    );
    assert_eq!(pinned.fetch(&good).await.unwrap().commit, second);
    let wrong_pin = Fetcher::with_config(
        pinned_cache.path(),
        FetcherConfig {
            host_keys: HostKeyPolicy::Pinned(vec![
                "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
            ]),
            ..FetcherConfig::default()
        },
    );
    match wrong_pin.fetch(&good).await {
        Err(e @ GitError::HostKey { .. }) => assert!(e.to_string().contains("pinned"), "{e}"),
        other => panic!("expected HostKey, got {other:?}"),
    }

    // A key the server does not know.
    let mut stranger = good.clone();
    stranger.auth = Auth::SshKey {
        private_key_pem: sshd.stranger_key.clone(),
        passphrase: None,
    };
    let err = fetcher.fetch(&stranger).await.unwrap_err();
    let shown = format!("{err} / {err:?} / {stranger:?}");
    assert!(matches!(err, GitError::AuthRefused { .. }), "{shown}");
    assert!(shown.contains(&safe_url), "{shown}");
    assert!(!shown.contains("PRIVATE KEY"), "{shown}");
    let key_body = sshd.stranger_key.lines().nth(1).unwrap();
    assert!(!shown.contains(key_body), "{shown}");
}

#[tokio::test]
async fn remote_head_prune_and_concurrency() {
    let (repo, _) = sample_repo("heads");
    repo.checkout("trunk", true);
    repo.write("apps/a.yaml", "kind: containers # trunk\n");
    let trunk = repo.commit("trunk");
    repo.checkout("gone", true);
    repo.write("apps/g.yaml", "kind: gone\n");
    let gone = repo.commit("gone");
    // The server's HEAD names `trunk`, neither main nor master.
    support::git(&repo.bare(), &["symbolic-ref", "HEAD", "refs/heads/trunk"]);
    let daemon = GitDaemon::start(&repo.base());
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(cache.path());
    let url = daemon.url("heads");

    // Several fetches of one URL at once share the cache safely.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let fetcher = fetcher.clone();
        let s = spec(&url, None, "apps");
        tasks.push(tokio::spawn(async move { fetcher.fetch(&s).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().unwrap().commit, trunk);
    }
    assert_eq!(
        fetcher
            .fetch(&spec(&url, Some("gone"), "apps"))
            .await
            .unwrap()
            .commit,
        gone
    );

    // A branch deleted upstream is pruned from the cache.
    repo.checkout("main", false);
    support::git(&repo.work(), &["push", "-q", "origin", "--delete", "gone"]);
    assert!(matches!(
        fetcher.fetch(&spec(&url, Some("gone"), "apps")).await,
        Err(GitError::RevisionNotFound { .. })
    ));

    // A corrupt cache directory is rebuilt.
    let dir = fetcher.repo_dir(&url);
    std::fs::remove_file(dir.join("HEAD")).unwrap();
    assert_eq!(
        fetcher
            .fetch(&spec(&url, None, "apps"))
            .await
            .unwrap()
            .commit,
        trunk
    );
}

#[tokio::test]
async fn stalled_server_times_out() {
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            sockets.push(sock);
        }
    });
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::with_config(
        cache.path(),
        FetcherConfig {
            timeout: Some(std::time::Duration::from_secs(1)),
            ..FetcherConfig::default()
        },
    );
    let url = format!("git://127.0.0.1:{port}/stalled.git");
    let started = std::time::Instant::now();
    match fetcher.fetch(&spec(&url, None, "")).await {
        Err(GitError::Timeout { url: u, .. }) => assert_eq!(u, url),
        other => panic!("expected Timeout, got {other:?}"),
    }
    // The first worker is still stuck on the socket: the next fetch of the same URL gives
    // up at its own deadline instead of queueing forever.
    match fetcher.fetch(&spec(&url, None, "")).await {
        Err(e @ GitError::Timeout { .. }) => {
            assert!(e.to_string().contains("still running"), "{e}")
        }
        other => panic!("expected Timeout, got {other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // Closing the sockets releases the stuck worker threads.
    held.abort();
}

#[tokio::test]
async fn repository_root_skips_dot_folders_and_reads_packs_below() {
    let repo = TestRepo::new("rootscan");
    repo.write(".github/workflows/ci.yaml", "on: push\njobs: {}\n");
    repo.write(".hidden.yaml", "kind: skipped\n");
    repo.write("apps/a.yaml", "kind: containers\n");
    repo.write("tools/Pack.yaml", "name: tools\nversion: 0.1.0\n");
    repo.write(
        "tools/definitions/variables.yaml",
        "image: {tag: \"1.37\"}\n",
    );
    repo.write("tools/definitions/t.yaml", "tag: {{ .image.tag }}\n");
    repo.commit("root");
    let daemon = GitDaemon::start(&repo.base());
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(cache.path());
    let c = fetcher
        .fetch(&spec(&daemon.url("rootscan"), None, ""))
        .await
        .unwrap();
    assert_eq!(paths(&c), ["apps/a.yaml", "tools/definitions/t.yaml"]);
    assert_eq!(text(&c, "tools/definitions/t.yaml"), "tag: 1.37\n");
    assert_eq!(c.pack, None);
}
