//! Issue 15, the parts that need no agent change, against a real agent on loopback: files in
//! simplecontainer's format and its CLI habits through the smrctl binary. Positional paths (a
//! repository root with `.github/` and a pack with variables and `--set`), `template`, a custom
//! object under its own prefix (and another of the same kind, group and name under another
//! prefix), `inspect`/`remove`, `edit` with $EDITOR a script (accepted, refused then fixed,
//! abandoned), `containers/GROUP/NAME-N` replicas, and a context exported for a colleague whose
//! own smrctl (another HOME) imports it and uses it. A pack using template functions and
//! conditionals, and two definitions whose Docker names clash (both dry runs).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Cluster, output, run, smrctl};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../smr-core/tests/fixtures/simplecontainer")
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An editor script: runs `body` (sh) with the file as $1, and appends what it was shown to
/// `seen`.
fn editor(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    let seen = dir.join(format!("{name}.seen"));
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nset -e\ncat \"$1\" >> '{}'\necho '=====' >> '{}'\n{body}\n",
            seen.display(),
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn edit(context: &Path, editor: &Path, key: &str) -> std::process::Output {
    let mut cmd = smrctl(context);
    cmd.args(["edit", key])
        .env("EDITOR", editor)
        .env_remove("VISUAL");
    output(cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simplecontainer_files_and_cli_habits() -> anyhow::Result<()> {
    let mut cluster = Cluster::new();
    cluster.start_first()?;
    let context = cluster.nodes[0].context_path();
    let client = cluster.client(0);
    let repo = fixtures().join("repo");
    let work = tempfile::tempdir()?;

    // A repository root, positional: .github/ is skipped, the pack gets its variables and --set.
    let mut cmd = smrctl(&context);
    cmd.args(["apply", "--no-wait"]).arg(&repo).args([
        "--set",
        "redis.tag=7.4",
        "--set",
        "replicas=2",
    ]);
    let out = run(cmd)?;
    assert!(out.contains("containers/apps/busybox created"), "{out}");
    assert!(out.contains("containers/cache/redis created"), "{out}");
    let redis = client.get(&"containers/cache/redis".parse()?).await?;
    let spec = redis.object.spec.as_containers().unwrap();
    assert_eq!(spec.image_ref(), "redis:7.4");
    assert_eq!(spec.replicas, 2);
    // A --set no template uses is refused, nothing applied.
    let mut cmd = smrctl(&context);
    cmd.args(["apply", "--no-wait"])
        .arg(&repo)
        .args(["--set", "replica=3"]);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("--set replica: no template of the pack uses"),
        "{}",
        stderr(&out)
    );
    // template shows the rendered pack.
    let mut cmd = smrctl(&context);
    cmd.arg("template")
        .arg(repo.join("packs/redis"))
        .args(["--set", "redis.tag=7.4"]);
    let out = run(cmd)?;
    assert!(out.contains("image: redis\n  tag: \"7.4\"\n"), "{out}");
    assert!(out.contains("# Source: "), "{out}");
    // A lone Pack.yaml.
    let mut cmd = smrctl(&context);
    cmd.arg("apply").arg(repo.join("packs/redis/Pack.yaml"));
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("this is pack metadata; apply the pack folder"),
        "{}",
        stderr(&out)
    );

    // Every construct of simplecontainer's documentation, validated by the cluster (dry run).
    let mut cmd = smrctl(&context);
    cmd.args(["apply", "--dry-run"])
        .arg(fixtures().join("docs"));
    let out = run(cmd)?;
    assert_eq!(out.matches("created (dry run)").count(), 9, "{out}");
    assert!(out.contains("gitops/shop/apps created (dry run)"), "{out}");
    // A pack whose templates use simplecontainer's functions and conditionals, validated by the
    // cluster, and shown rendered.
    let mut cmd = smrctl(&context);
    cmd.args(["apply", "--dry-run"])
        .arg(fixtures().join("functions-pack"))
        .args(["--set", "debug=1"]);
    let out = run(cmd)?;
    assert!(
        out.contains("configuration/demo/who-am-i created (dry run)")
            && out.contains("containers/demo/who-am-i created (dry run)"),
        "{out}"
    );
    let mut cmd = smrctl(&context);
    cmd.arg("template")
        .arg(fixtures().join("functions-pack"))
        .args(["--set", "debug=1"]);
    let out = run(cmd)?;
    assert!(
        out.contains(
            "    - APP_NAME=who_am_i\n    - DEBUG=1\n    - HOST_WHOAMI=whoami.example.test\n"
        ) && out.contains("    password: \"Y2hhbmdlbWU=\"\n"),
        "{out}"
    );
    // Two definitions whose Docker names would be the same are refused, naming both.
    let mut cmd = smrctl(&context);
    cmd.args(["apply", "--dry-run"])
        .arg(fixtures().join("name-clash.yaml"));
    let out = output(cmd);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains(
            "containers/a-b/c and containers/a/b-c would both be named \"a-b-c\" in Docker"
        ),
        "{}",
        stderr(&out)
    );
    // A node-local network (driver bridge) is accepted (vms_bridge.rs runs one).
    let mut cmd = smrctl(&context);
    cmd.args(["apply", "--dry-run"])
        .arg(fixtures().join("network-bridge.yaml"));
    let out = run(cmd)?;
    assert!(
        out.contains("network/shop/backend created (dry run)"),
        "{out}"
    );

    // A custom object under its own prefix: stored with it, listed and fetched by it.
    let mut cmd = smrctl(&context);
    cmd.args(["apply", "--no-wait"])
        .arg(fixtures().join("traefik-dynamic.yaml"));
    run(cmd)?;
    let mut cmd = smrctl(&context);
    cmd.args(["list", "traefik.io/v1/custom"]);
    let out = run(cmd)?;
    assert!(out.contains("custom/proxy/routes"), "{out}");
    let mut cmd = smrctl(&context);
    cmd.args(["list", "other.io/v1/custom"]);
    assert!(!run(cmd)?.contains("custom/proxy/routes"));
    let mut cmd = smrctl(&context);
    cmd.args(["inspect", "traefik.io/v1/custom/proxy/routes"]);
    let out = run(cmd)?;
    assert!(
        out.contains("prefix: traefik.io/v1") && out.contains("web-router"),
        "{out}"
    );
    let mut cmd = smrctl(&context);
    cmd.args(["inspect", "other.io/v1/custom/proxy/routes"]);
    assert_eq!(output(cmd).status.code(), Some(4));
    // The same kind, group and name under another prefix is another object: both are kept,
    // each fetched, listed and deleted by its own address.
    let mut cmd = smrctl(&context);
    cmd.args(["apply", "--no-wait"])
        .arg(fixtures().join("custom-other-prefix.yaml"));
    let out = run(cmd)?;
    assert!(
        out.contains("example.com/v2/custom/proxy/routes created"),
        "{out}"
    );
    let other = client
        .get(&"example.com/v2/custom/proxy/routes".parse()?)
        .await?;
    assert_eq!(other.object.prefix, "example.com/v2");
    let traefik = client
        .get(&"traefik.io/v1/custom/proxy/routes".parse()?)
        .await?;
    assert_eq!(traefik.object.prefix, "traefik.io/v1");
    assert_eq!(traefik.generation, 1, "not replaced by the other prefix");
    let mut cmd = smrctl(&context);
    cmd.args(["list", "example.com/v2/custom"]);
    let out = run(cmd)?;
    assert!(
        out.contains("example.com/v2/custom/proxy/routes")
            && !out.contains("traefik.io/v1/custom/proxy/routes"),
        "{out}"
    );
    let mut cmd = smrctl(&context);
    cmd.args(["delete", "example.com/v2/custom/proxy/routes"]);
    let out = run(cmd)?;
    assert!(
        out.contains("example.com/v2/custom/proxy/routes deleted"),
        "{out}"
    );
    let mut cmd = smrctl(&context);
    cmd.args(["inspect", "traefik.io/v1/custom/proxy/routes"]);
    assert!(run(cmd)?.contains("web-router"));

    // edit: an accepted edit is applied.
    let bump = editor(
        work.path(),
        "bump",
        "sed -i 's/replicas: 1/replicas: 3/' \"$1\"",
    );
    let out = edit(&context, &bump, "containers/apps/busybox");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("containers/apps/busybox configured"));
    let busybox = client.get(&"containers/apps/busybox".parse()?).await?;
    assert_eq!(busybox.object.spec.as_containers().unwrap().replicas, 3);

    // A refused edit is opened again with the reason on top; the fix is applied.
    let counter = work.path().join("rounds");
    let twice = editor(
        work.path(),
        "twice",
        &format!(
            "n=$(cat '{c}' 2>/dev/null || echo 0); n=$((n+1)); echo $n > '{c}'\n\
             if [ $n = 1 ]; then sed -i 's/replicas: 3/replicas: many/' \"$1\"; \
             else sed -i 's/replicas: many/replicas: 4/' \"$1\"; fi",
            c = counter.display()
        ),
    );
    let out = edit(&context, &twice, "containers/apps/busybox");
    assert!(out.status.success(), "{}", stderr(&out));
    let seen = std::fs::read_to_string(work.path().join("twice.seen"))?;
    let rounds: Vec<&str> = seen.split("=====\n").collect();
    assert!(!rounds[0].starts_with('#'), "{seen}");
    assert!(
        rounds[1].starts_with("# smrctl edit: the cluster refused this edit:\n#   "),
        "{seen}"
    );
    assert!(rounds[1].contains("spec.replicas"), "{seen}");
    assert!(
        rounds[1].contains("replicas: many"),
        "the user's text is kept: {seen}"
    );
    let busybox = client.get(&"containers/apps/busybox".parse()?).await?;
    assert_eq!(busybox.object.spec.as_containers().unwrap().replicas, 4);

    // Saving without a change applies nothing.
    let same = editor(work.path(), "same", "true");
    let out = edit(&context, &same, "containers/apps/busybox");
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("unchanged"));
    assert_eq!(
        client
            .get(&"containers/apps/busybox".parse()?)
            .await?
            .generation,
        busybox.generation
    );

    // containers/GROUP/NAME-N names the replica GROUP-NAME-N (none runs on this control-plane node).
    let mut cmd = smrctl(&context);
    cmd.args(["logs", "containers/apps/busybox-1"]);
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("apps-busybox-1"), "{}", stderr(&out));

    // A context exported for a colleague: their smrctl (own HOME) imports it and reads the cluster.
    let exported = work.path().join("for-bob.context");
    let mut cmd = smrctl(&context);
    cmd.args(["context", "export"])
        .arg(&exported)
        .args(["--name", "loopback"]);
    run(cmd)?;
    let bob = tempfile::tempdir()?;
    let bob_smrctl = |args: &[&str]| {
        let mut cmd = Command::new(common::smrctl_bin());
        cmd.args(args)
            .env("HOME", bob.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("SMR_CONTEXT");
        cmd
    };
    run(bob_smrctl(&[
        "context",
        "import",
        exported.to_str().unwrap(),
        "--use",
    ]))?;
    let out = run(bob_smrctl(&["list", "containers"]))?;
    assert!(
        out.contains("containers/apps/busybox") && out.contains("containers/cache/redis"),
        "{out}"
    );

    // delete by path (positional) and remove (alias) by address.
    let mut cmd = smrctl(&context);
    cmd.arg("delete")
        .arg(repo.join("packs/redis"))
        .args(["--set", "replicas=2"]);
    let out = run(cmd)?;
    assert!(out.contains("containers/cache/redis deleted"), "{out}");
    let mut cmd = smrctl(&context);
    cmd.args([
        "remove",
        "containers/apps/busybox",
        "containers/proxy/provider",
        "traefik.io/v1/custom/proxy/routes",
    ]);
    let out = run(cmd)?;
    assert!(
        out.contains("containers/apps/busybox deleted")
            && out.contains("custom/proxy/routes deleted"),
        "{out}"
    );
    let left = run(bob_smrctl(&["list"]))?;
    assert!(!left.contains("containers/"), "{left}");
    Ok(())
}
