//! One agent on loopback for the benches that start, stop and restart a node from its data dir
//! (history, state_size): a control-plane-only node (backend none), and its figures from /proc.
#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

use agent::client::{Client, Context};
use anyhow::{Context as _, bail};

pub struct Node {
    pub smrmgr: PathBuf,
    pub home: PathBuf,
    pub data_dir: PathBuf,
    pub ip: Ipv4Addr,
}

impl Node {
    pub fn smrmgr(&self) -> Command {
        let mut cmd = Command::new(&self.smrmgr);
        cmd.env("HOME", &self.home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("DOCKER_HOST")
            .env("SMR_LOG", "info,openraft=warn");
        cmd
    }

    pub fn run(&self, mut cmd: Command) -> anyhow::Result<()> {
        let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
        if !out.status.success() {
            bail!(
                "{cmd:?}: {}\n{}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn create(&self) -> anyhow::Result<()> {
        let mut cmd = self.smrmgr();
        cmd.args([
            "start",
            "-a",
            "bench",
            "-d",
            "bench.example.com",
            "-n",
            "bench",
        ])
        .arg("--ip")
        .arg(self.ip.to_string())
        .arg("--data-dir")
        .arg(&self.data_dir)
        .args(["--backend", "none", "--no-workloads"])
        .arg("--metrics-addr")
        .arg(format!("{}:9213", self.ip));
        self.run(cmd)
    }

    pub fn restart(&self) -> anyhow::Result<()> {
        let mut cmd = self.smrmgr();
        cmd.arg("start").arg("--data-dir").arg(&self.data_dir);
        self.run(cmd)
    }

    pub fn stop(&self) -> anyhow::Result<()> {
        let mut cmd = self.smrmgr();
        cmd.arg("stop").arg("--data-dir").arg(&self.data_dir);
        self.run(cmd)
    }

    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data_dir.join("smr.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::from_context(&Context::load(
            &self.data_dir.join("admin.context"),
        )?)?)
    }

    pub fn kill(&self) {
        if let Some(pid) = self.pid() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// (resident MiB, CPU seconds) of a process, from /proc.
pub fn proc_figures(pid: u32) -> (f64, f64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0;
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which is in parentheses): utime is the 14th field.
            let rest = &s[s.rfind(')')? + 2..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0);
    (rss, cpu)
}
