//! Smoke suite of the emulated-VM testbed: underlay reachability, one dockerd per VM,
//! partitions (cut/heal), clouds behind NAT with port forwards and a capture of the "internet",
//! clean teardown (explicit, concurrent, and on panic).
//! Needs root and dockerd; otherwise each test prints "skipped: <why>" and passes.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use smr_tests::testbed::{
    BUSYBOX_IMAGE, Inventory, Testbed, TestbedConfig, Vm, contains_bytes, poll_until,
    unsupported_reason,
};

fn skip() -> bool {
    if let Some(why) = unsupported_reason(true) {
        println!("skipped: {why}");
        return true;
    }
    false
}

fn start(cfg: TestbedConfig) -> Result<Testbed> {
    let tb = Testbed::start(cfg)?;
    println!(
        "testbed {} ({} VMs, underlay {}, dir {}): started in {:?}",
        tb.id(),
        tb.vms().len(),
        tb.underlay_cidr(),
        tb.dir().display(),
        tb.start_time
    );
    Ok(tb)
}

fn shutdown(mut tb: Testbed) -> Result<Inventory> {
    let inv = tb.inventory();
    let t = Instant::now();
    tb.shutdown()?;
    println!("testbed {}: teardown took {:?}", tb.id(), t.elapsed());
    // A second call is a no-op (and Drop will call it a third time).
    tb.shutdown()?;
    Ok(inv)
}

fn assert_clean(inv: &Inventory) {
    let left = inv.leftovers();
    assert!(left.is_empty(), "left after teardown: {left:#?}");
}

fn all_ping(tb: &Testbed) -> Result<()> {
    for a in tb.vms() {
        ensure!(a.ping(tb.bridge_ip()), "{} cannot ping the host", a.name);
        for b in tb.vms() {
            if a.index != b.index {
                ensure!(a.ping(b.ip), "{} cannot ping {} ({})", a.name, b.name, b.ip);
            }
        }
    }
    Ok(())
}

fn run_busybox(vm: &Vm, name: &str) -> Result<()> {
    vm.docker_ok(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "none",
        BUSYBOX_IMAGE,
        "sleep",
        "3600",
    ])
    .with_context(|| format!("docker run on {}", vm.name))?;
    let out = vm.docker_ok(&["exec", name, "echo", "hello from", &vm.name])?;
    ensure!(
        out == format!("hello from {}", vm.name),
        "exec said {out:?}"
    );
    Ok(())
}

#[test]
fn three_vms_ping_run_containers_partition_and_tear_down() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let tb = start(TestbedConfig::new(3))?;
    ensure!(tb.vms().len() == 3);

    // Every VM is its own host: eth0 with its address, its own daemon.
    for vm in tb.vms() {
        let addr = vm.run_ok("ip", &["-o", "-4", "addr", "show", "dev", "eth0"])?;
        ensure!(
            addr.contains(&format!("{}/24", vm.ip)),
            "{}: {addr}",
            vm.name
        );
        let name = vm.docker_ok(&["info", "--format", "{{.DockerRootDir}}"])?;
        ensure!(name.starts_with(&vm.dir.display().to_string()), "{name}");
    }
    let t = Instant::now();
    all_ping(&tb)?;
    println!("full mesh ping: {:?}", t.elapsed());

    // A container on each daemon; exec works.
    let t = Instant::now();
    for vm in tb.vms() {
        run_busybox(vm, "smoke")?;
        // The other daemons do not see it.
        for other in tb.vms() {
            if other.index != vm.index {
                let ps = other.docker_ok(&["ps", "-q", "--filter", "name=smoke"])?;
                ensure!(
                    other.index < vm.index || ps.is_empty(),
                    "{} sees {ps}",
                    other.name
                );
            }
        }
    }
    println!("3 containers run + exec: {:?}", t.elapsed());

    // Partition vm3: the others cannot reach it, but still each other.
    let (v1, v2, v3) = (tb.vm(0), tb.vm(1), tb.vm(2));
    tb.cut(v3)?;
    ensure!(!v1.ping(v3.ip), "vm1 still reaches cut vm3");
    ensure!(!v2.ping(v3.ip), "vm2 still reaches cut vm3");
    ensure!(!v3.ping(v1.ip), "cut vm3 still reaches vm1");
    ensure!(v1.ping(v2.ip), "vm1 lost vm2 although only vm3 was cut");
    tb.heal(v3)?;
    let t = Instant::now();
    poll_until(Duration::from_secs(15), "vm1 reaches healed vm3", || {
        Ok(v1.ping(v3.ip))
    })?;
    println!("heal -> reachable: {:?}", t.elapsed());
    ensure!(v2.ping(v3.ip) && v3.ping(v2.ip));

    // A long-running process inside a VM, recorded and stopped at teardown.
    let mut cmd = v1.cmd("sleep");
    cmd.arg("3600");
    let p = v1.spawn("sleeper", cmd)?;
    ensure!(v1.is_running(p.pid));
    // (nsenter joins the namespace, then execs the program under the same pid.)
    use std::os::unix::fs::MetadataExt;
    let vm_ns = std::fs::metadata(format!("/var/run/netns/{}", v1.netns))?.ino();
    poll_until(
        Duration::from_secs(5),
        "spawned process in vm1's netns",
        || {
            let ns = std::fs::metadata(format!("/proc/{}/ns/net", p.pid))?.ino();
            let exe = std::fs::read_link(format!("/proc/{}/exe", p.pid))?;
            Ok(ns == vm_ns && exe.ends_with("sleep"))
        },
    )?;

    let inv = shutdown(tb)?;
    ensure!(inv.pids.iter().any(|&(pid, _)| pid == p.pid));
    assert_clean(&inv);
    Ok(())
}

/// Something that notices traffic to `proto` `port` in `vm`: a one-shot busybox nc listener
/// for tcp (what it receives lands in its log), a one-packet tcpdump for udp.
fn listen(vm: &Vm, proto: &str, port: u16) -> Result<smr_tests::testbed::Spawned> {
    let name = format!("listen-{proto}-{port}");
    let spawned = if proto == "udp" {
        let mut cmd = vm.cmd("tcpdump");
        cmd.args(["-n", "-c", "1", "-i", "eth0", "-A", "udp", "dst", "port"])
            .arg(port.to_string());
        vm.spawn(&name, cmd)?
    } else {
        let mut cmd = vm.cmd("/bin/busybox");
        cmd.args(["nc", "-l", "-p", &port.to_string()]);
        vm.spawn(&name, cmd)?
    };
    if proto == "udp" {
        poll_until(Duration::from_secs(10), "tcpdump in the VM", || {
            Ok(std::fs::read_to_string(&spawned.log)?.contains("listening on"))
        })?;
    }
    Ok(spawned)
}

#[test]
fn two_clouds_behind_nat_with_the_same_private_addresses() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let mut cfg = TestbedConfig::clouds(&[1, 1]);
    cfg.docker = false;
    let tb = start(cfg)?;
    let (a, b) = (tb.vm(0).clone(), tb.vm(1).clone());
    ensure!(
        a.ip == b.ip && a.ip.to_string() == "10.1.0.11",
        "{a:?} {b:?}"
    );
    let (pa, pb) = (
        a.public_ip.context("public ip")?,
        b.public_ip.context("public ip")?,
    );
    ensure!(pa != pb && tb.cloud_public_ip(2) == Some(pb));
    ensure!(a.ping("10.1.0.1".parse()?), "a reaches its router");
    ensure!(a.ping(pb), "a reaches cloud b's public address");
    ensure!(a.ping(tb.bridge_ip()), "a reaches the host on the internet");

    let capture = tb.capture("smoke")?;
    // The forwarded ports of cloud b reach b's VM, from a's VM, across both NATs.
    for (proto, port) in [("tcp", 1443), ("tcp", 9212), ("udp", 51820)] {
        let marker = format!("across-nat-{proto}-{port}");
        let listener = listen(&b, proto, port)?;
        poll_until(
            Duration::from_secs(20),
            &format!("{proto} {port} through the port forward"),
            || {
                let sh = if proto == "udp" {
                    format!("echo {marker} > /dev/udp/{pb}/{port}")
                } else {
                    // The marker is in nc's stdin before nc starts: the listener's stdin is
                    // /dev/null, so it half-closes as soon as it accepts, and a client still
                    // waiting for a piped `echo` would read that EOF, exit without sending,
                    // and use up the one-shot listener.
                    format!("/bin/busybox nc -w 1 {pb} {port} <<< {marker}")
                };
                a.run("bash", &["-c", &sh])?;
                Ok(std::fs::read_to_string(&listener.log)?.contains(&marker))
            },
        )?;
        b.stop(listener.pid, Duration::from_secs(2))?;
    }
    // Not forwarded: nothing listens on cloud a's public side for 8472.
    let bytes = tb.stop_capture(&capture)?;
    ensure!(
        contains_bytes(&bytes, b"across-nat-tcp-1443"),
        "capture sees clear text"
    );
    ensure!(
        capture.count("net 10.1.0.0/24")? == 0,
        "private addresses crossed the internet"
    );
    ensure!(capture.count(&format!("src host {pa} and dst host {pb}"))? > 0);
    assert_clean(&shutdown(tb)?);
    Ok(())
}

#[test]
fn two_testbeds_at_once_do_not_collide() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let t = Instant::now();
    let h1 = thread::spawn(|| start(TestbedConfig::new(2)));
    let h2 = thread::spawn(|| start(TestbedConfig::new(2)));
    let a = h1.join().expect("start thread")?;
    let b = h2.join().expect("start thread")?;
    println!("two testbeds started concurrently in {:?}", t.elapsed());

    ensure!(a.id() != b.id());
    ensure!(a.bridge() != b.bridge());
    ensure!(a.underlay_cidr() != b.underlay_cidr());
    ensure!(a.dir() != b.dir());
    for (va, vb) in a.vms().iter().zip(b.vms()) {
        ensure!(va.netns != vb.netns && va.host_veth != vb.host_veth);
        ensure!(va.docker_host != vb.docker_host && va.ip != vb.ip);
    }
    all_ping(&a)?;
    all_ping(&b)?;
    // Separate underlays: no path between them.
    ensure!(!a.vm(0).ping(b.vm(0).ip), "testbeds are connected");
    // Same container name on both sides, separate daemons.
    run_busybox(a.vm(0), "twin")?;
    run_busybox(b.vm(0), "twin")?;

    let (ia, ib) = thread::scope(|s| {
        let ha = s.spawn(|| shutdown(a));
        let hb = s.spawn(|| shutdown(b));
        (ha.join().expect("join"), hb.join().expect("join"))
    });
    assert_clean(&ia?);
    assert_clean(&ib?);
    Ok(())
}

#[test]
fn teardown_runs_when_a_test_panics() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let inv: Arc<Mutex<Option<Inventory>>> = Arc::default();
    let inv2 = inv.clone();
    let res = thread::spawn(move || {
        let tb = start(TestbedConfig::new(1)).expect("start");
        run_busybox(tb.vm(0), "doomed").expect("container");
        let mut cmd = tb.vm(0).cmd("sleep");
        cmd.arg("3600");
        tb.vm(0).spawn("sleeper", cmd).expect("spawn");
        *inv2.lock().expect("lock") = Some(tb.inventory());
        panic!("deliberate failure inside a test");
    })
    .join();
    ensure!(res.is_err(), "the thread should have panicked");
    let inv = inv.lock().expect("lock").take().context("inventory")?;
    assert_clean(&inv);
    Ok(())
}

/// Not a test on its own: the child process of `sweeper_cleans_up_after_a_killed_run`.
/// Starts a testbed, writes its inventory to $SMR_TESTBED_HELPER_OUT and waits to be killed.
#[test]
#[ignore = "helper process of sweeper_cleans_up_after_a_killed_run"]
fn helper_start_and_wait_to_be_killed() -> Result<()> {
    let Some(out) = std::env::var_os("SMR_TESTBED_HELPER_OUT") else {
        return Ok(());
    };
    let tb = start(TestbedConfig::new(1))?;
    run_busybox(tb.vm(0), "orphan")?;
    let mut cmd = tb.vm(0).cmd("sleep");
    cmd.arg("3600");
    tb.vm(0).spawn("sleeper", cmd)?;
    let tmp = std::path::PathBuf::from(&out).with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&tb.inventory())?)?;
    std::fs::rename(&tmp, &out)?;
    // Waits for SIGKILL from the parent test (bounded, in case the parent died).
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[test]
fn sweeper_cleans_up_after_a_killed_run() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let out = tmp.path().join("inventory.json");
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .args([
            "--ignored",
            "--exact",
            "helper_start_and_wait_to_be_killed",
            "--nocapture",
        ])
        .env("SMR_TESTBED_HELPER_OUT", &out)
        .spawn()?;
    let waited = poll_until(
        Duration::from_secs(90),
        "helper wrote its inventory",
        || {
            if let Some(st) = child.try_wait()? {
                anyhow::bail!("helper exited early: {st}");
            }
            Ok(out.exists())
        },
    );
    child.kill()?; // SIGKILL: no Drop, no teardown
    child.wait()?;
    waited?;
    let inv: Inventory = serde_json::from_slice(&std::fs::read(&out)?)?;
    ensure!(
        !inv.leftovers().is_empty(),
        "a killed run should leave things behind"
    );

    let t = Instant::now();
    let swept = smr_tests::testbed::sweep_leftovers(&smr_tests::testbed::default_base_dir());
    println!("sweeper took {:?}: {swept:?}", t.elapsed());
    if swept.is_empty() {
        // A testbed started concurrently by another test claimed it first (its sweeper renamed
        // the state file); that sweep may still be running: wait for it to finish.
        let claimed_by_another = || {
            std::fs::read_dir(&inv.dir).is_ok_and(|rd| {
                rd.flatten().any(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("state.sweeping.")
                })
            })
        };
        ensure!(
            claimed_by_another() || inv.leftovers().is_empty(),
            "nobody swept the killed run: {:#?}",
            inv.leftovers()
        );
        poll_until(
            Duration::from_secs(60),
            "the concurrent sweep of the killed run",
            || Ok(inv.leftovers().is_empty()),
        )?;
    }
    assert_clean(&inv);
    Ok(())
}
