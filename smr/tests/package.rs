//! Issue 16: the `.deb` that `packaging/build.sh` makes installs with `dpkg -i` into a root with
//! no compiler or Rust toolchain (a debootstrap minbase chroot of Debian bookworm holding only what
//! the package's Depends name), and a node starts from what it installed: the installed smrmgr
//! creates a one-node cluster on a loopback address, the installed smrctl reads its health and
//! stores an object, and the command line of the installed systemd unit restarts that node. A
//! second test runs install.sh in such a root: the package beside it, a tarball, the .deb again. A
//! third boots such a root (with systemd) as a container whose init is systemd, and checks that
//! install.sh starts the node as `smr.service` and that systemd restarts it after a crash and a
//! reboot.
//!
//! The package is built from the debug binaries this test build already produced (`build.sh
//! --profile debug --bin-dir ...`): the release path is the same script with static binaries
//! (`SMR_PACKAGE_BIN_DIR=<release dir> SMR_PACKAGE_PROFILE=release` runs this suite on them).
//! The base root is made once by debootstrap (network to a Debian mirror, `$SMR_DEBIAN_MIRROR`,
//! default deb.debian.org) and cached as a tarball in /var/cache/smr-test/; every run extracts a
//! fresh copy. Needs root (chroot, mount). Everything the test starts or mounts is recorded and
//! undone by [`Root`]'s drop, also when an assertion fails: the agents are killed by the pids they
//! recorded (checked to run inside this root), /proc and /sys unmounted, and the tree removed only
//! once nothing is mounted under it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const SUITE: &str = "bookworm";
const CACHE_DIR: &str = "/var/cache/smr-test";

/// Why this machine cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not running as root (chroot and mount need it)".into());
    }
    for tool in [
        "debootstrap",
        "dpkg-deb",
        "dpkg-shlibdeps",
        "chroot",
        "mount",
        "umount",
        "tar",
        "strip",
    ] {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|d| d.join(tool).is_file());
        if !found {
            return Some(format!("`{tool}` not found (run tests/install-deps.sh)"));
        }
    }
    None
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Runs `cmd`; its stdout, or an error with both outputs.
fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The package names of a Depends field, without versions or alternatives beyond the first.
fn depends_names(field: &str) -> Vec<String> {
    let mut names: Vec<String> = field
        .split(',')
        .filter_map(|dep| dep.split('|').next())
        .filter_map(|dep| dep.split_whitespace().next())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Lines of /proc/self/mountinfo whose mount point is `dir` or below it.
fn mounts_under(dir: &Path) -> Vec<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = dir.to_string_lossy().into_owned();
    info.lines()
        .filter(|line| {
            line.split_whitespace()
                .nth(4)
                .is_some_and(|m| m == prefix || m.starts_with(&format!("{prefix}/")))
        })
        .map(str::to_string)
        .collect()
}

/// The cached base root for `packages`: a tarball of `debootstrap --variant=minbase
/// --include=<packages>`, made on the first run (written under a temporary name and renamed, so
/// a concurrent or interrupted run never sees half a tarball).
fn base_tarball(packages: &[String]) -> anyhow::Result<PathBuf> {
    let tarball = Path::new(CACHE_DIR).join(format!(
        "{SUITE}-minbase-{}.tar",
        packages.join("+").replace(['/', ' '], "_")
    ));
    if tarball.exists() {
        return Ok(tarball);
    }
    std::fs::create_dir_all(CACHE_DIR)?;
    let mirror = std::env::var("SMR_DEBIAN_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let scratch = tempfile::Builder::new()
        .prefix("debootstrap-")
        .tempdir_in(CACHE_DIR)?;
    let target = scratch.path().join("root");
    let began = Instant::now();
    let made = run(Command::new("debootstrap")
        .arg("--variant=minbase")
        .arg(format!("--include={}", packages.join(",")))
        .arg(SUITE)
        .arg(&target)
        .arg(&mirror));
    // debootstrap unmounts what it mounted in the target; never delete through a mount.
    let left = mounts_under(scratch.path());
    if !left.is_empty() {
        let _ = scratch.keep();
        bail!("debootstrap left mounts under its target (kept it): {left:?}");
    }
    made.with_context(|| format!("debootstrap {SUITE} from {mirror}"))?;
    let partial = Path::new(CACHE_DIR).join(format!(".{}.partial", std::process::id()));
    run(Command::new("tar")
        .arg("-C")
        .arg(&target)
        .args(["--numeric-owner", "-cf"])
        .arg(&partial)
        .arg("."))?;
    std::fs::rename(&partial, &tarball)?;
    println!(
        "made {} in {:.0?} (debootstrap from {mirror})",
        tarball.display(),
        began.elapsed()
    );
    Ok(tarball)
}

/// A root extracted from the base tarball, with /proc and /sys mounted. Drop kills the agents
/// running in it (by their pid files), unmounts, and removes the tree only when nothing is
/// mounted under it any more.
struct Root {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    mounted: Vec<PathBuf>,
    /// Agents started in the foreground by the test (the unit's command line).
    children: Vec<Child>,
}

impl Root {
    fn extract(tarball: &Path) -> anyhow::Result<Root> {
        let dir = tempfile::Builder::new()
            .prefix("smr-pkg-root-")
            .tempdir_in("/var/tmp")?;
        let path = dir.path().to_path_buf();
        let mut root = Root {
            dir: Some(dir),
            path,
            mounted: Vec::new(),
            children: Vec::new(),
        };
        run(Command::new("tar")
            .arg("-C")
            .arg(&root.path)
            .args(["--numeric-owner", "-xpf"])
            .arg(tarball))?;
        root.mount("proc", "proc", "proc")?;
        root.mount("sysfs", "sysfs", "sys")?;
        Ok(root)
    }

    fn mount(&mut self, fstype: &str, source: &str, at: &str) -> anyhow::Result<()> {
        let target = self.path.join(at);
        std::fs::create_dir_all(&target)?;
        run(Command::new("mount")
            .args(["-t", fstype, source])
            .arg(&target))?;
        self.mounted.push(target);
        Ok(())
    }

    fn file(&self, inside: &str) -> PathBuf {
        self.path.join(inside.trim_start_matches('/'))
    }

    /// `argv` run inside the root, with a clean environment.
    fn command(&self, argv: &[&str]) -> Command {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.path)
            .args(argv)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .env("SMR_LOG", "info,openraft=warn")
            .stdin(Stdio::null());
        cmd
    }

    /// The pid in `<root>/var/lib/smr/smr.pid`, if that process runs inside this root.
    fn agent_pid(&self) -> Option<Pid> {
        let text = std::fs::read_to_string(self.file("/var/lib/smr/smr.pid")).ok()?;
        let pid: i32 = text.trim().parse().ok()?;
        let its_root = std::fs::read_link(format!("/proc/{pid}/root")).ok()?;
        (its_root == self.path).then(|| Pid::from_raw(pid))
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self.agent_pid() {
            let _ = kill(pid, Signal::SIGKILL);
            let deadline = Instant::now() + Duration::from_secs(10);
            while kill(pid, None).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for target in self.mounted.iter().rev() {
            let unmounted = Command::new("umount")
                .arg(target)
                .status()
                .is_ok_and(|s| s.success());
            if !unmounted {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
        let left = mounts_under(&self.path);
        if let Some(dir) = self.dir.take()
            && !left.is_empty()
        {
            // Removing the tree would reach into what is still mounted: keep it, say so.
            let kept = dir.keep();
            eprintln!("kept {} with mounts under it: {left:?}", kept.display());
        }
    }
}

/// Polls `check` every 100 ms until it returns Some, failing after `limit` with the last error.
fn poll<T>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if Instant::now() > deadline {
            return Err(match last {
                Some(e) => e.context(format!("timed out after {limit:?}: {what}")),
                None => anyhow::anyhow!("timed out after {limit:?}: {what}"),
            });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A machine the test runs commands on: a chroot ([`Root`]) or a container booted with systemd
/// ([`Booted`]).
trait Runs {
    /// `argv` run there; its stdout, or an error with both outputs.
    fn run(&self, argv: &[&str]) -> anyhow::Result<String>;
}

impl Runs for Root {
    fn run(&self, argv: &[&str]) -> anyhow::Result<String> {
        run(&mut self.command(argv))
    }
}

/// The node list as the installed smrctl reports it: (name, health, role) of each node.
fn nodes(root: &impl Runs) -> anyhow::Result<Vec<(String, String, String)>> {
    let text = root.run(&["smrctl", "nodes", "-o", "json"])?;
    let list: Vec<serde_json::Value> =
        serde_json::from_str(&text).context("smrctl nodes -o json")?;
    Ok(list
        .iter()
        .map(|n| {
            let field = |k: &str| n[k].as_str().unwrap_or_default().to_string();
            (field("name"), field("health"), field("role"))
        })
        .collect())
}

fn healthy_alone(root: &impl Runs, name: &str) -> anyhow::Result<Option<()>> {
    let nodes = nodes(root)?;
    let want = vec![(name.to_string(), "healthy".to_string(), "voter".to_string())];
    Ok((nodes == want).then_some(()))
}

/// The packages built from this test build's binaries and the base roots for them: made once per
/// test process, shared by the tests.
struct Prepared {
    version: String,
    deb: PathBuf,
    tarball: PathBuf,
    /// Minbase and what the .deb's Depends name, nothing else.
    base: PathBuf,
    /// The same and ca-certificates, which install.sh installs with a tarball (there, so that no
    /// run needs the network once the roots are cached), and systemd.
    base_for_install_sh: PathBuf,
    build_time: Duration,
    root_time: Duration,
}

fn prepared() -> anyhow::Result<&'static Prepared> {
    static PREPARED: std::sync::Mutex<Option<&'static Prepared>> = std::sync::Mutex::new(None);
    let mut slot = PREPARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = *slot {
        return Ok(p);
    }
    // Built anew in this build's own scratch directory on every run.
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out)?;
    // `SMR_PACKAGE_BIN_DIR=DIR SMR_PACKAGE_PROFILE=release` runs the suite on other binaries,
    // e.g. the static release build (target/x86_64-unknown-linux-gnu/release).
    let bin_dir = match std::env::var_os("SMR_PACKAGE_BIN_DIR") {
        // Relative to the workspace (a test runs in its package directory).
        Some(dir) => workspace().join(dir),
        None => {
            common::smrctl_bin();
            Path::new(env!("CARGO_BIN_EXE_smrmgr"))
                .parent()
                .expect("bin dir")
                .to_path_buf()
        }
    };
    let profile = std::env::var("SMR_PACKAGE_PROFILE").unwrap_or_else(|_| "debug".into());
    let t = Instant::now();
    let built = run(Command::new(workspace().join("packaging/build.sh"))
        .args(["--profile", &profile, "--bin-dir"])
        .arg(&bin_dir)
        .arg(&out))?;
    print!("{built}");
    let build_time = t.elapsed();
    let version = run(Command::new(bin_dir.join("smrmgr")).arg("--version"))?;
    let version = version
        .split_whitespace()
        .nth(1)
        .expect("version")
        .to_string();
    let deb = out.join(format!("smr_{version}_amd64.deb"));
    let tarball = out.join(format!("smr-{version}-x86_64-linux.tar.gz"));
    ensure!(tarball.is_file(), "{} was not made", tarball.display());
    let depends = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Depends"))?;
    let mut packages = depends_names(depends.trim());
    ensure!(
        packages.contains(&"iptables".to_string()),
        "Depends lacks iptables: {depends}"
    );
    let t = Instant::now();
    let base = base_tarball(&packages)?;
    // ca-certificates, which install.sh installs with a tarball; systemd, so that the same root
    // boots as a container with systemd as its init (the systemd test).
    packages.extend(["ca-certificates", "systemd", "systemd-sysv"].map(String::from));
    packages.sort();
    let base_for_install_sh = base_tarball(&packages)?;
    let root_time = t.elapsed();
    let p = Box::leak(Box::new(Prepared {
        version,
        deb,
        tarball,
        base,
        base_for_install_sh,
        build_time,
        root_time,
    }));
    *slot = Some(p);
    Ok(p)
}

/// Asserts that `root` holds nothing to build software with.
fn assert_no_toolchain(root: &Root) -> anyhow::Result<()> {
    for tool in ["gcc", "cc", "c++", "rustc", "cargo", "rustup", "ld"] {
        for dir in ["usr/bin", "usr/local/bin", "root/.cargo/bin"] {
            let p = root.path.join(dir).join(tool);
            ensure!(
                !p.exists(),
                "the test root is meant to have no {tool}: {p:?} exists"
            );
        }
    }
    Ok(())
}

#[test]
fn deb_installs_into_a_root_without_toolchain_and_a_node_starts_from_it() -> anyhow::Result<()> {
    if let Some(why) = unsupported() {
        println!("skipped: {why}");
        return Ok(());
    }
    let began = Instant::now();
    let out = tempfile::tempdir()?;
    let Prepared {
        version,
        deb,
        tarball,
        base,
        build_time,
        root_time,
        ..
    } = prepared()?;

    // A root with the package's dependencies and nothing to build software with.
    let mut root = Root::extract(base)?;
    assert_no_toolchain(&root)?;

    // dpkg -i, as on a fresh machine.
    std::fs::copy(deb, root.file("/tmp/smr.deb"))?;
    let t = Instant::now();
    root.run(&["dpkg", "-i", "/tmp/smr.deb"])?;
    let install_time = t.elapsed();
    let status = root.run(&["dpkg-query", "-W", "-f=${Status} ${Version}", "smr"])?;
    assert_eq!(status, format!("install ok installed {version}"));
    for path in [
        "/usr/bin/smrmgr",
        "/usr/bin/smrctl",
        "/lib/systemd/system/smr.service",
        "/usr/share/bash-completion/completions/smrctl",
        "/usr/share/bash-completion/completions/smrmgr",
        "/usr/share/zsh/vendor-completions/_smrctl",
        "/usr/share/zsh/vendor-completions/_smrmgr",
        "/usr/share/fish/vendor_completions.d/smrctl.fish",
        "/usr/share/fish/vendor_completions.d/smrmgr.fish",
    ] {
        ensure!(
            root.file(path).is_file(),
            "the package did not install {path}"
        );
    }

    // The installed bash completion completes smrctl's subcommands.
    let completed = root.run(&[
        "bash",
        "-c",
        "source /usr/share/bash-completion/completions/smrctl; \
         COMP_WORDS=(smrctl no); COMP_CWORD=1; _smrctl smrctl no smrctl; echo \"${COMPREPLY[*]}\"",
    ])?;
    assert_eq!(completed.trim(), "nodes", "bash completion of `smrctl no`");

    // A node from the installed binaries, on a loopback address of its own.
    let ip = format!("127.99.{}.1", std::process::id() % 250 + 1);
    let t = Instant::now();
    root.run(&[
        "smrmgr",
        "start",
        "-a",
        "pkg-node",
        "-n",
        "pkg-node",
        "-d",
        "pkg-node.example.com",
        "--ip",
        &ip,
        "--backend",
        "none",
        "--no-workloads",
    ])?;
    poll(
        "the installed smrctl to see a healthy node",
        Duration::from_secs(60),
        || healthy_alone(&root, "pkg-node"),
    )?;
    let start_time = t.elapsed();
    ensure!(root.agent_pid().is_some(), "no agent runs inside the root");
    root.run(&["smrmgr", "status"])?;
    std::fs::write(
        root.file("/tmp/config.yaml"),
        "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: pkg\n  name: c1\nspec:\n  data:\n    installed: from-the-deb\n",
    )?;
    root.run(&["smrctl", "apply", "-f", "/tmp/config.yaml"])?;
    root.run(&["smrmgr", "stop"])?;
    ensure!(
        root.agent_pid().is_none(),
        "the agent still runs after smrmgr stop"
    );

    // The installed unit's command line restarts that node (systemd itself does not run in a
    // chroot; its ExecStart and condition are what it would run and check).
    let unit = std::fs::read_to_string(root.file("/lib/systemd/system/smr.service"))?;
    let value = |key: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .map(str::to_string)
            .with_context(|| format!("smr.service has no {key}="))
    };
    let condition = value("ConditionPathExists")?;
    ensure!(
        root.file(&condition).exists(),
        "the unit would not start: {condition} missing"
    );
    let exec_start = value("ExecStart")?;
    let argv: Vec<&str> = exec_start.split_whitespace().collect();
    ensure!(argv[0] == "/usr/bin/smrmgr", "ExecStart runs {}", argv[0]);
    let log = std::fs::File::create(out.path().join("unit.log"))?;
    let child = root
        .command(&argv)
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    root.children.push(child);
    poll(
        "the node to serve again under the unit's command",
        Duration::from_secs(60),
        || healthy_alone(&root, "pkg-node"),
    )
    .with_context(|| std::fs::read_to_string(out.path().join("unit.log")).unwrap_or_default())?;
    let stored = root.run(&["smrctl", "get", "configuration/pkg/c1", "-o", "json"])?;
    ensure!(
        stored.contains("from-the-deb"),
        "the object did not survive the restart: {stored}"
    );

    let deb_size = std::fs::metadata(deb)?.len();
    let tar_size = std::fs::metadata(tarball)?.len();
    println!(
        "deb {:.1} MiB, tarball {:.1} MiB; build.sh {build_time:.1?}, base root {root_time:.1?}, \
         dpkg -i {install_time:.1?}, node healthy {start_time:.1?}; total {:.1?}",
        deb_size as f64 / (1 << 20) as f64,
        tar_size as f64 / (1 << 20) as f64,
        began.elapsed()
    );
    drop(root);
    Ok(())
}

/// install.sh takes the package beside it (the .deb of two of the same version), or the file it is
/// given: a tarball into /usr/local, then the .deb again, which removes the tarball's binaries
/// that would shadow it and points the unit at the package's smrmgr, and starts a node from its
/// flags (no systemd in a chroot: a background agent). Docker is outside this test (the node runs
/// `--no-workloads`): a stand-in `docker` that answers `info` keeps install.sh from installing it.
#[test]
fn install_sh_installs_the_package_beside_it_or_the_one_given() -> anyhow::Result<()> {
    if let Some(why) = unsupported() {
        println!("skipped: {why}");
        return Ok(());
    }
    let began = Instant::now();
    let p = prepared()?;
    let root = Root::extract(&p.base_for_install_sh)?;
    assert_no_toolchain(&root)?;
    let opt = root.file("/opt/smr");
    std::fs::create_dir_all(&opt)?;
    std::fs::copy(workspace().join("install.sh"), opt.join("install.sh"))?;
    let deb_name = p
        .deb
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let tar_name = p
        .tarball
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    std::fs::copy(&p.deb, opt.join(&deb_name))?;
    std::fs::copy(&p.tarball, opt.join(&tar_name))?;
    let docker = root.file("/usr/local/bin/docker");
    std::fs::write(
        &docker,
        "#!/bin/sh\n# test stand-in: `docker info` answers\nexit 0\n",
    )?;
    std::fs::set_permissions(&docker, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let installed = |root: &Root| {
        root.run(&["dpkg-query", "-W", "-f=${Status}", "smr"])
            .is_ok_and(|s| s == "install ok installed")
    };

    // No argument: the .deb beside it, not the tarball of the same version.
    let said = root.run(&["bash", "/opt/smr/install.sh"])?;
    ensure!(
        said.contains(&format!("found /opt/smr/{deb_name} beside install.sh")),
        "{said}"
    );
    ensure!(
        installed(&root),
        "install.sh did not install the .deb:\n{said}"
    );
    ensure!(!root.file("/usr/local/bin/smrmgr").exists());

    // A tarball given (relative to the caller's directory) goes to /usr/local.
    let said = root.run(&[
        "bash",
        "-c",
        &format!("cd /opt && bash smr/install.sh smr/{tar_name}"),
    ])?;
    for path in [
        "/usr/local/bin/smrmgr",
        "/usr/local/bin/smrctl",
        "/usr/local/share/bash-completion/completions/smrctl",
        "/usr/local/share/zsh/site-functions/_smrctl",
        "/usr/local/share/fish/vendor_completions.d/smrctl.fish",
    ] {
        ensure!(
            root.file(path).is_file(),
            "install.sh {tar_name} did not install {path}:\n{said}"
        );
    }
    let unit = root.file("/etc/systemd/system/smr.service");
    let exec_start = |unit: &Path| {
        std::fs::read_to_string(unit)
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("ExecStart="))
            .map(str::to_string)
    };
    assert_eq!(
        exec_start(&unit).as_deref(),
        Some("ExecStart=/usr/local/bin/smrmgr start --foreground")
    );

    // The .deb again, with start flags.
    let ip = format!("127.99.{}.2", std::process::id() % 250 + 1);
    let said = root.run(&[
        "bash",
        "/opt/smr/install.sh",
        &format!("/opt/smr/{deb_name}"),
        "-a",
        "script-node",
        "--ip",
        &ip,
        "--backend",
        "none",
        "--no-workloads",
    ])?;
    ensure!(
        !root.file("/usr/local/bin/smrmgr").exists()
            && !root.file("/usr/local/bin/smrctl").exists(),
        "the tarball's binaries still shadow the package's:\n{said}"
    );
    assert_eq!(
        exec_start(&unit).as_deref(),
        Some("ExecStart=/usr/bin/smrmgr start --foreground")
    );
    ensure!(
        root.agent_pid().is_some(),
        "install.sh started no agent:\n{said}"
    );
    poll(
        "the node install.sh started to be healthy",
        Duration::from_secs(60),
        || healthy_alone(&root, "script-node"),
    )?;
    println!(
        "install.sh: three installs and a node in {:.1?}",
        began.elapsed()
    );
    drop(root);
    Ok(())
}

/// A container booted from a base root with systemd as its init, as a VM boots: loopback only,
/// the host's cgroups read-only, CAP_SYS_ADMIN for systemd's mounts. Drop removes the container
/// and then the image it was imported as, both by the ids recorded when they were made.
struct Booted {
    container: Option<String>,
    image: String,
}

impl Booted {
    fn boot(tarball: &Path) -> anyhow::Result<Booted> {
        let tag = format!("smr-test-systemd:{}", std::process::id());
        let image = run(Command::new("docker").arg("import").arg(tarball).arg(&tag))?;
        let mut booted = Booted {
            container: None,
            image: image.trim().to_string(),
        };
        let id = run(Command::new("docker")
            .args(["run", "-d", "--network", "none", "--cap-add", "SYS_ADMIN"])
            .args(["--tmpfs", "/run", "--tmpfs", "/run/lock"])
            .args(["-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro"])
            // What systemd takes as "halt": `docker restart` shuts the system down cleanly.
            .args(["--stop-signal", "SIGRTMIN+3"])
            .arg(&booted.image)
            .arg("/lib/systemd/systemd"))?;
        booted.container = Some(id.trim().to_string());
        booted.wait_booted()?;
        Ok(booted)
    }

    fn id(&self) -> &str {
        self.container.as_deref().expect("a container")
    }

    /// Until systemd says the boot is over (`degraded`: some unit of the minimal root failed,
    /// which is no concern here).
    fn wait_booted(&self) -> anyhow::Result<()> {
        poll("systemd to finish booting", Duration::from_secs(60), || {
            let out = Command::new("docker")
                .args(["exec", self.id(), "systemctl", "is-system-running"])
                .output()?;
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok(matches!(state.as_str(), "running" | "degraded").then_some(()))
        })
    }

    fn copy_in(&self, from: &Path, to: &str) -> anyhow::Result<()> {
        run(Command::new("docker")
            .arg("cp")
            .arg(from)
            .arg(format!("{}:{to}", self.id())))?;
        Ok(())
    }

    /// A property of the smr unit, as `systemctl show` gives it.
    fn unit(&self, property: &str) -> anyhow::Result<String> {
        Ok(self
            .run(&["systemctl", "show", "-p", property, "--value", "smr"])?
            .trim()
            .to_string())
    }
}

impl Runs for Booted {
    fn run(&self, argv: &[&str]) -> anyhow::Result<String> {
        run(Command::new("docker")
            .args(["exec", "-e", "SMR_LOG=info,openraft=warn", self.id()])
            .args(argv)
            .stdin(Stdio::null()))
    }
}

impl Drop for Booted {
    fn drop(&mut self) {
        if let Some(id) = self.container.take() {
            let _ = Command::new("docker").args(["rm", "-f", &id]).output();
        }
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

/// README's set-up command under a real systemd: install.sh, given the .deb and start flags,
/// installs it and starts the node as `smr.service` (through `smrmgr service-install`); systemd
/// restarts the agent when it is killed, starts it again when the machine reboots, and stops it
/// for good with `systemctl stop`. Docker is outside this test (the node runs `--no-workloads`,
/// a stand-in `docker` answers `info`).
#[test]
fn install_sh_starts_a_systemd_service_that_survives_a_crash_and_a_reboot() -> anyhow::Result<()> {
    if let Some(why) = unsupported() {
        println!("skipped: {why}");
        return Ok(());
    }
    if !Command::new("docker")
        .arg("info")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        println!("skipped: no Docker engine answers (`docker info` fails)");
        return Ok(());
    }
    let began = Instant::now();
    let p = prepared()?;
    let t = Instant::now();
    let vm = Booted::boot(&p.base_for_install_sh)?;
    let boot_time = t.elapsed();
    let files = tempfile::tempdir()?;
    let docker = files.path().join("docker");
    std::fs::write(
        &docker,
        "#!/bin/sh\n# test stand-in: `docker info` answers\nexit 0\n",
    )?;
    std::fs::set_permissions(&docker, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    vm.copy_in(&docker, "/usr/local/bin/docker")?;
    let config = files.path().join("config.yaml");
    std::fs::write(
        &config,
        "kind: configuration\nprefix: simplecontainer.io/v1\nmeta:\n  group: pkg\n  name: c1\nspec:\n  data:\n    installed: under-systemd\n",
    )?;
    vm.copy_in(&config, "/tmp/config.yaml")?;
    vm.run(&["mkdir", "-p", "/opt/smr"])?;
    vm.copy_in(&workspace().join("install.sh"), "/opt/smr/install.sh")?;
    vm.copy_in(&p.deb, "/opt/smr/smr.deb")?;

    let said = vm.run(&[
        "bash",
        "/opt/smr/install.sh",
        "/opt/smr/smr.deb",
        "-a",
        "sd-node",
        "--ip",
        "127.0.0.1",
        "--backend",
        "none",
        "--no-workloads",
    ])?;
    ensure!(
        said.contains("installing and starting the smr service"),
        "install.sh did not start the node as a service though systemd runs:\n{said}"
    );
    assert_eq!(vm.unit("ActiveState")?, "active");
    assert_eq!(vm.unit("UnitFileState")?, "enabled");
    poll(
        "the node of smr.service to be healthy",
        Duration::from_secs(60),
        || healthy_alone(&vm, "sd-node"),
    )?;
    vm.run(&["smrctl", "apply", "-f", "/tmp/config.yaml"])?;

    // The agent dies: systemd starts it again (Restart=on-failure).
    let first: u32 = vm.unit("MainPID")?.parse()?;
    ensure!(first != 0, "smr.service runs no process");
    vm.run(&["bash", "-c", &format!("kill -9 {first}")])?;
    let second = poll(
        "systemd to restart the killed agent and the node to be healthy",
        Duration::from_secs(60),
        || {
            let pid: u32 = vm.unit("MainPID")?.parse()?;
            if pid == 0 || pid == first || healthy_alone(&vm, "sd-node")?.is_none() {
                return Ok(None);
            }
            Ok(Some(pid))
        },
    )?;
    assert_eq!(vm.unit("NRestarts")?, "1");

    // The machine reboots: the enabled unit starts the node at boot, state and all.
    let t = Instant::now();
    run(Command::new("docker").args(["restart", "-t", "30", vm.id()]))?;
    vm.wait_booted()?;
    poll(
        "the node to be healthy again after a reboot",
        Duration::from_secs(60),
        || healthy_alone(&vm, "sd-node"),
    )?;
    let reboot_time = t.elapsed();
    let third: u32 = vm.unit("MainPID")?.parse()?;
    ensure!(
        third != 0 && third != second,
        "no new agent after the reboot"
    );
    let stored = vm.run(&["smrctl", "get", "configuration/pkg/c1", "-o", "json"])?;
    ensure!(
        stored.contains("under-systemd"),
        "the object did not survive the reboot: {stored}"
    );

    // `systemctl stop` stops it, and systemd does not bring it back.
    vm.run(&["systemctl", "stop", "smr"])?;
    assert_eq!(vm.unit("ActiveState")?, "inactive");
    assert_eq!(vm.unit("MainPID")?, "0");
    ensure!(
        vm.run(&["smrctl", "nodes"]).is_err(),
        "the agent still answers after systemctl stop"
    );
    println!(
        "systemd: booted in {boot_time:.1?}, reboot to healthy {reboot_time:.1?}, total {:.1?}",
        began.elapsed()
    );
    drop(vm);
    Ok(())
}

#[test]
fn depends_names_drop_versions_and_alternatives() {
    assert_eq!(
        depends_names("libc6 (>= 2.34), libssl3 (>= 3.0.0), iptables, docker.io | docker-ce"),
        vec!["docker.io", "iptables", "libc6", "libssl3"]
    );
}
