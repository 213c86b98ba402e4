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

fn nat(rest: &str) -> Vec<String> {
    let mut v = vec!["-t".to_string(), "nat".to_string()];
    v.extend(words(rest));
    v
}

async fn must<I: Iptables>(ipt: &I, args: Vec<String>) -> Result<IptOutput, MasqError> {
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

const JUMP: &str = "POSTROUTING -j SMR-MASQ";

/// Installs the chain, its rules and the POSTROUTING jump; returns `true` if anything changed.
pub async fn ensure_masquerade<I: Iptables>(
    ipt: &I,
    lease: Ipv4Net,
    cluster: Ipv4Net,
) -> Result<bool, MasqError> {
    let mut changed = false;
    let want = masq_rules(lease, cluster);
    let listed = ipt.run(&nat(&format!("-S {MASQ_CHAIN}"))).await?;
    let have: Vec<String> = if listed.success {
        listed
            .stdout
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("-A "))
            .map(str::to_string)
            .collect()
    } else {
        must(ipt, nat(&format!("-N {MASQ_CHAIN}"))).await?;
        changed = true;
        Vec::new()
    };
    if have != want {
        if !have.is_empty() {
            must(ipt, nat(&format!("-F {MASQ_CHAIN}"))).await?;
        }
        for rule in &want {
            must(ipt, nat(rule)).await?;
        }
        changed = true;
    }
    if !ipt.run(&nat(&format!("-C {JUMP}"))).await?.success {
        must(ipt, nat(&format!("-I {JUMP}"))).await?;
        changed = true;
    }
    Ok(changed)
}

/// Removes the jump and the chain; `true` if anything was there.
pub async fn remove_masquerade<I: Iptables>(ipt: &I) -> Result<bool, MasqError> {
    let mut changed = false;
    // Remove every copy of the jump (a crashed older run may have left more than one).
    while ipt.run(&nat(&format!("-C {JUMP}"))).await?.success {
        must(ipt, nat(&format!("-D {JUMP}"))).await?;
        changed = true;
    }
    if ipt.run(&nat(&format!("-S {MASQ_CHAIN}"))).await?.success {
        must(ipt, nat(&format!("-F {MASQ_CHAIN}"))).await?;
        must(ipt, nat(&format!("-X {MASQ_CHAIN}"))).await?;
        changed = true;
    }
    Ok(changed)
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
