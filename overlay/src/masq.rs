//! Masquerading of traffic leaving the cluster CIDR, in an own nat chain.
//!
//! The chain `SMR-MASQ` (hooked first from `POSTROUTING`) RETURNs traffic from the
//! cluster CIDR to the cluster CIDR (never masqueraded) and MASQUERADEs traffic from the
//! node's lease to anywhere else. The rules are pure data ([`masq_rules`]); installing
//! them goes through the [`Iptables`] trait (the real one runs the `iptables` binary: the
//! kernel has no netlink API for it). Installation is idempotent: it checks before it
//! inserts, and rewrites the chain only when its content differs.

use std::future::Future;

use ipnet::Ipv4Net;

/// The nat chain the overlay owns.
pub const MASQ_CHAIN: &str = "SMR-MASQ";

/// Masquerade errors.
#[derive(Debug, thiserror::Error)]
pub enum MasqError {
    #[error("running iptables {args}: {source}")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("iptables {args} failed: {stderr}")]
    Failed { args: String, stderr: String },
}

/// The outcome of one iptables run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IptOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs iptables with the given arguments.
pub trait Iptables {
    fn run(&self, args: &[String]) -> impl Future<Output = Result<IptOutput, MasqError>> + Send;
}

/// The `iptables` binary (by default `iptables` from `PATH`), run with `-w` to wait for
/// the xtables lock.
#[derive(Debug, Clone)]
pub struct IptablesCmd {
    pub program: String,
}

impl Default for IptablesCmd {
    fn default() -> Self {
        IptablesCmd {
            program: "iptables".into(),
        }
    }
}

impl Iptables for IptablesCmd {
    async fn run(&self, args: &[String]) -> Result<IptOutput, MasqError> {
        let out = tokio::process::Command::new(&self.program)
            .arg("-w")
            .args(args)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| MasqError::Spawn {
                args: args.join(" "),
                source,
            })?;
        Ok(IptOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// The chain's rules, in the form `iptables -S` prints them.
pub fn masq_rules(lease: Ipv4Net, cluster: Ipv4Net) -> Vec<String> {
    let (lease, cluster) = (lease.trunc(), cluster.trunc());
    vec![
        format!("-A {MASQ_CHAIN} -s {cluster} -d {cluster} -j RETURN"),
        format!("-A {MASQ_CHAIN} -s {lease} ! -d {cluster} -j MASQUERADE"),
    ]
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// One iptables chain of smr's own in `table`, filled with exactly its rules, and the rule in a
/// built-in chain that jumps to it (`jump`, e.g. `POSTROUTING -j SMR-MASQ`). smr owns nothing
/// else in the table: ensuring and removing touch only these.
pub(crate) struct OwnedChain {
    pub table: &'static str,
    pub name: &'static str,
    pub jump: &'static str,
}

impl OwnedChain {
    fn args(&self, rest: &str) -> Vec<String> {
        let mut v = vec!["-t".to_string(), self.table.to_string()];
        v.extend(words(rest));
        v
    }

    async fn must<I: Iptables>(&self, ipt: &I, rest: &str) -> Result<IptOutput, MasqError> {
        let args = self.args(rest);
        let out = ipt.run(&args).await?;
        if out.success {
            Ok(out)
        } else {
            Err(MasqError::Failed {
                args: args.join(" "),
                stderr: out.stderr.trim().to_string(),
            })
        }
    }

    async fn holds<I: Iptables>(&self, ipt: &I, rest: &str) -> Result<bool, MasqError> {
        Ok(ipt.run(&self.args(rest)).await?.success)
    }

    /// Installs the chain with exactly `want` (`-A` rules, as `-S` lists them) and the jump;
    /// `true` if anything changed. The chain is rewritten only when its content differs (the
    /// jump stays, so the rules apply throughout: a rewrite flushes and refills within one pass).
    pub(crate) async fn ensure<I: Iptables>(
        &self,
        ipt: &I,
        want: &[String],
    ) -> Result<bool, MasqError> {
        let name = self.name;
        let mut changed = false;
        let listed = ipt.run(&self.args(&format!("-S {name}"))).await?;
        let have: Vec<String> = if listed.success {
            listed
                .stdout
                .lines()
                .map(str::trim)
                .filter(|l| l.starts_with("-A "))
                .map(str::to_string)
                .collect()
        } else {
            self.must(ipt, &format!("-N {name}")).await?;
            changed = true;
            Vec::new()
        };
        if have != want {
            if !have.is_empty() {
                self.must(ipt, &format!("-F {name}")).await?;
            }
            for rule in want {
                self.must(ipt, rule).await?;
            }
            changed = true;
        }
        if !self.holds(ipt, &format!("-C {}", self.jump)).await? {
            self.must(ipt, &format!("-I {}", self.jump)).await?;
            changed = true;
        }
        Ok(changed)
    }

    /// Removes the jump and the chain; `true` if anything was there.
    pub(crate) async fn remove<I: Iptables>(&self, ipt: &I) -> Result<bool, MasqError> {
        let name = self.name;
        let mut changed = false;
        // Remove every copy of the jump (a crashed older run may have left more than one).
        while self.holds(ipt, &format!("-C {}", self.jump)).await? {
            self.must(ipt, &format!("-D {}", self.jump)).await?;
            changed = true;
        }
        if self.holds(ipt, &format!("-S {name}")).await? {
            self.must(ipt, &format!("-F {name}")).await?;
            self.must(ipt, &format!("-X {name}")).await?;
            changed = true;
        }
        Ok(changed)
    }
}

const MASQ: OwnedChain = OwnedChain {
    table: "nat",
    name: MASQ_CHAIN,
    jump: "POSTROUTING -j SMR-MASQ",
};

/// Installs the chain, its rules and the POSTROUTING jump; returns `true` if anything changed.
pub async fn ensure_masquerade<I: Iptables>(
    ipt: &I,
    lease: Ipv4Net,
    cluster: Ipv4Net,
) -> Result<bool, MasqError> {
    MASQ.ensure(ipt, &masq_rules(lease, cluster)).await
}

/// Removes the jump and the chain; `true` if anything was there.
pub async fn remove_masquerade<I: Iptables>(ipt: &I) -> Result<bool, MasqError> {
    MASQ.remove(ipt).await
}

/// The nat chain smr owns for the networks beyond `cluster` (overlay networks' slices and bridge
/// networks' subnets), beside [`MASQ_CHAIN`] (the `cluster` lease's).
pub const NETWORKS_MASQ_CHAIN: &str = "SMR-MASQ-NETS";

const NETWORKS_MASQ: OwnedChain = OwnedChain {
    table: "nat",
    name: NETWORKS_MASQ_CHAIN,
    jump: "POSTROUTING -j SMR-MASQ-NETS",
};

/// The rules of [`NETWORKS_MASQ_CHAIN`], in the form `iptables -S` prints them: traffic from
/// each of `sources` (this node's slices of the overlay networks' pools, the bridge networks'
/// subnets) to any of `ranges` (the cluster CIDR, every pool and bridge subnet) is left alone;
/// the rest from them, which leaves the cluster, is masqueraded.
pub fn networks_masq_rules(sources: &[Ipv4Net], ranges: &[Ipv4Net]) -> Vec<String> {
    let c = NETWORKS_MASQ_CHAIN;
    let mut rules = Vec::new();
    for source in sources {
        let source = source.trunc();
        for range in ranges {
            rules.push(format!("-A {c} -s {source} -d {} -j RETURN", range.trunc()));
        }
        rules.push(format!("-A {c} -s {source} -j MASQUERADE"));
    }
    rules
}

/// Installs [`NETWORKS_MASQ_CHAIN`] with its rules and its POSTROUTING jump (`true` if anything
/// changed); with no `sources` (no network beyond `cluster`) removes them.
pub async fn ensure_networks_masquerade<I: Iptables>(
    ipt: &I,
    sources: &[Ipv4Net],
    ranges: &[Ipv4Net],
) -> Result<bool, MasqError> {
    if sources.is_empty() {
        return remove_networks_masquerade(ipt).await;
    }
    NETWORKS_MASQ
        .ensure(ipt, &networks_masq_rules(sources, ranges))
        .await
}

/// Removes [`NETWORKS_MASQ_CHAIN`] and its jump; `true` if anything was there.
pub async fn remove_networks_masquerade<I: Iptables>(ipt: &I) -> Result<bool, MasqError> {
    NETWORKS_MASQ.remove(ipt).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A fake iptables holding the nat table as `-S` lines per chain.
    #[derive(Default)]
    struct Fake {
        chains: Mutex<std::collections::BTreeMap<String, Vec<String>>>,
        log: Mutex<Vec<String>>,
    }

    impl Iptables for Fake {
        async fn run(&self, args: &[String]) -> Result<IptOutput, MasqError> {
            let line = args.join(" ");
            self.log.lock().unwrap().push(line.clone());
            let mut chains = self.chains.lock().unwrap();
            chains.entry("POSTROUTING".into()).or_default();
            let ok = |stdout: String| IptOutput {
                success: true,
                stdout,
                stderr: String::new(),
            };
            let fail = IptOutput {
                success: false,
                stdout: String::new(),
                stderr: "no".into(),
            };
            let (cmd, chain) = (args[2].as_str(), args[3].clone());
            let rule = format!("-A {}", args[3..].join(" "));
            Ok(match cmd {
                "-S" => match chains.get(&chain) {
                    Some(r) => ok(format!("-N {chain}\n{}\n", r.join("\n"))),
                    None => fail,
                },
                "-N" => {
                    chains.insert(chain, vec![]);
                    ok(String::new())
                }
                "-F" => {
                    chains.insert(chain, vec![]);
                    ok(String::new())
                }
                "-X" => {
                    chains.remove(&chain);
                    ok(String::new())
                }
                "-A" | "-I" => {
                    chains.entry(chain).or_default().push(rule);
                    ok(String::new())
                }
                "-C" => {
                    if chains.get(&chain).is_some_and(|r| r.contains(&rule)) {
                        ok(String::new())
                    } else {
                        fail
                    }
                }
                "-D" => {
                    let r = chains.entry(chain).or_default();
                    match r.iter().position(|x| *x == rule) {
                        Some(i) => {
                            r.remove(i);
                            ok(String::new())
                        }
                        None => fail,
                    }
                }
                _ => fail,
            })
        }
    }

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn rules() {
        assert_eq!(
            masq_rules(net("10.10.3.0/24"), net("10.10.0.0/16")),
            vec![
                "-A SMR-MASQ -s 10.10.0.0/16 -d 10.10.0.0/16 -j RETURN",
                "-A SMR-MASQ -s 10.10.3.0/24 ! -d 10.10.0.0/16 -j MASQUERADE",
            ]
        );
    }

    #[tokio::test]
    async fn networks_beyond_cluster_are_masqueraded_leaving_the_cluster_only() {
        let f = Fake::default();
        let sources = [net("10.20.1.0/24"), net("172.30.0.0/24")];
        let ranges = [
            net("10.10.0.0/16"),
            net("10.20.0.0/16"),
            net("172.30.0.0/24"),
        ];
        assert!(
            ensure_networks_masquerade(&f, &sources, &ranges)
                .await
                .unwrap()
        );
        assert_eq!(
            f.chains.lock().unwrap()["SMR-MASQ-NETS"],
            vec![
                "-A SMR-MASQ-NETS -s 10.20.1.0/24 -d 10.10.0.0/16 -j RETURN",
                "-A SMR-MASQ-NETS -s 10.20.1.0/24 -d 10.20.0.0/16 -j RETURN",
                "-A SMR-MASQ-NETS -s 10.20.1.0/24 -d 172.30.0.0/24 -j RETURN",
                "-A SMR-MASQ-NETS -s 10.20.1.0/24 -j MASQUERADE",
                "-A SMR-MASQ-NETS -s 172.30.0.0/24 -d 10.10.0.0/16 -j RETURN",
                "-A SMR-MASQ-NETS -s 172.30.0.0/24 -d 10.20.0.0/16 -j RETURN",
                "-A SMR-MASQ-NETS -s 172.30.0.0/24 -d 172.30.0.0/24 -j RETURN",
                "-A SMR-MASQ-NETS -s 172.30.0.0/24 -j MASQUERADE",
            ]
        );
        assert_eq!(
            f.chains.lock().unwrap()["POSTROUTING"],
            vec!["-A POSTROUTING -j SMR-MASQ-NETS"]
        );
        f.log.lock().unwrap().clear();
        assert!(
            !ensure_networks_masquerade(&f, &sources, &ranges)
                .await
                .unwrap()
        );
        // The last network gone: chain and jump removed, `SMR-MASQ` untouched.
        assert!(ensure_networks_masquerade(&f, &[], &ranges).await.unwrap());
        assert!(!f.chains.lock().unwrap().contains_key("SMR-MASQ-NETS"));
        assert_eq!(
            f.chains.lock().unwrap()["POSTROUTING"],
            Vec::<String>::new()
        );
        assert!(!remove_networks_masquerade(&f).await.unwrap());
    }

    #[tokio::test]
    async fn idempotent_install_and_removal() {
        let f = Fake::default();
        let (l, c) = (net("10.10.3.0/24"), net("10.10.0.0/16"));
        assert!(ensure_masquerade(&f, l, c).await.unwrap());
        let log1: Vec<String> = f.log.lock().unwrap().drain(..).collect();
        assert_eq!(
            log1,
            vec![
                "-t nat -S SMR-MASQ",
                "-t nat -N SMR-MASQ",
                "-t nat -A SMR-MASQ -s 10.10.0.0/16 -d 10.10.0.0/16 -j RETURN",
                "-t nat -A SMR-MASQ -s 10.10.3.0/24 ! -d 10.10.0.0/16 -j MASQUERADE",
                "-t nat -C POSTROUTING -j SMR-MASQ",
                "-t nat -I POSTROUTING -j SMR-MASQ",
            ]
        );
        assert!(!ensure_masquerade(&f, l, c).await.unwrap());
        let log2: Vec<String> = f.log.lock().unwrap().drain(..).collect();
        assert_eq!(
            log2,
            vec!["-t nat -S SMR-MASQ", "-t nat -C POSTROUTING -j SMR-MASQ"]
        );
        // A changed lease rewrites the chain.
        assert!(ensure_masquerade(&f, net("10.10.4.0/24"), c).await.unwrap());
        assert_eq!(
            f.chains.lock().unwrap()["SMR-MASQ"][1],
            "-A SMR-MASQ -s 10.10.4.0/24 ! -d 10.10.0.0/16 -j MASQUERADE"
        );
        assert!(remove_masquerade(&f).await.unwrap());
        assert!(!f.chains.lock().unwrap().contains_key("SMR-MASQ"));
        assert_eq!(
            f.chains.lock().unwrap()["POSTROUTING"],
            Vec::<String>::new()
        );
        assert!(!remove_masquerade(&f).await.unwrap());
    }
}
