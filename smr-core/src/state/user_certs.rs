//! User certificates (`smrctl context export --user NAME`) and their revocation
//! (`smrmgr user revoke`). The cluster records the serial of every user certificate it signs;
//! revoking a user marks all of that user's certificates revoked (one certificate: by serial).
//! Every node's API refuses a client certificate whose serial is revoked ([`revoked`]), on
//! its next request, as soon as it has applied the revocation.
//!
//! ```text
//!  sign user cert --> RecordUserCert {name, serial, expires}
//!  user revoke NAME --> RevokeUserCerts {name}   --> revoked_ms set on each of NAME's certs
//!  user revoke --serial S --> RevokeUserCerts {serial} (a serial not recorded is added)
//!  API request with an admin certificate --> revoked(state, serial)? --> 403
//! ```
//! Entries are dropped once their certificate has expired (at the next user-certificate write):
//! an expired certificate is refused by TLS anyway.

use serde::{Deserialize, Serialize};

use super::{ClusterState, CommandResult};

/// A user certificate the cluster signed, or a revoked one it was told the serial of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCert {
    /// The user (the certificate's CN); empty for a serial revoked without being recorded.
    pub name: String,
    /// The certificate's serial number, lowercase hex.
    pub serial: String,
    /// When it was signed (0: not known).
    pub issued_ms: u64,
    /// When it expires (`notAfter`).
    pub expires_ms: u64,
    /// When it was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

/// The revoked entry for certificate `serial` (lowercase hex), if it is revoked.
pub fn revoked<'a>(certs: &'a [UserCert], serial: &str) -> Option<&'a UserCert> {
    certs
        .iter()
        .find(|c| c.serial == serial && c.revoked_ms.is_some())
}

impl ClusterState {
    fn drop_expired_user_certs(&mut self, now: u64) -> bool {
        let before = self.user_certs.len();
        self.user_certs.retain(|c| c.expires_ms > now);
        self.user_certs.len() != before
    }

    pub(super) fn record_user_cert(&mut self, cert: &UserCert, now: u64) -> CommandResult {
        let mut changed = self.drop_expired_user_certs(now);
        if !self.user_certs.iter().any(|c| c.serial == cert.serial) {
            self.user_certs.push(cert.clone());
            changed = true;
        }
        self.bump_if(changed)
    }

    pub(super) fn revoke_user_certs(
        &mut self,
        name: Option<&str>,
        serial: Option<&str>,
        expires_ms: u64,
        now: u64,
    ) -> CommandResult {
        let mut changed = self.drop_expired_user_certs(now);
        match (name, serial) {
            (Some(name), None) => {
                if !self.user_certs.iter().any(|c| c.name == name) {
                    return CommandResult::Rejected {
                        reason: format!(
                            "no certificate of user {name:?} is recorded (certificates signed \
                             before revocation existed are revoked by serial: `smrmgr user \
                             revoke --serial HEX`)"
                        ),
                    };
                }
                for cert in self.user_certs.iter_mut().filter(|c| c.name == name) {
                    if cert.revoked_ms.is_none() {
                        cert.revoked_ms = Some(now);
                        changed = true;
                    }
                }
            }
            (None, Some(serial)) => match self.user_certs.iter_mut().find(|c| c.serial == serial) {
                Some(cert) if cert.revoked_ms.is_some() => {}
                Some(cert) => {
                    cert.revoked_ms = Some(now);
                    changed = true;
                }
                None => {
                    self.user_certs.push(UserCert {
                        name: String::new(),
                        serial: serial.to_owned(),
                        issued_ms: 0,
                        expires_ms,
                        revoked_ms: Some(now),
                    });
                    changed = true;
                }
            },
            _ => {
                return CommandResult::Rejected {
                    reason: "revoke either a user (by name) or one certificate (by serial)".into(),
                };
            }
        }
        self.bump_if(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Op};

    fn apply(state: &mut ClusterState, id: &str, at_ms: u64, op: Op) -> CommandResult {
        state.apply(&Command {
            op_id: id.into(),
            at_ms,
            op,
        })
    }

    fn cert(name: &str, serial: &str, expires_ms: u64) -> UserCert {
        UserCert {
            name: name.into(),
            serial: serial.into(),
            issued_ms: 5,
            expires_ms,
            revoked_ms: None,
        }
    }

    fn revoke(name: Option<&str>, serial: Option<&str>) -> Op {
        Op::RevokeUserCerts {
            name: name.map(str::to_owned),
            serial: serial.map(str::to_owned),
            expires_ms: 900,
        }
    }

    #[test]
    fn revoking_a_user_revokes_all_its_certificates_and_no_other() {
        let mut state = ClusterState::default();
        for (i, c) in [
            cert("alice", "a1", 1000),
            cert("alice", "a2", 1000),
            cert("bob", "b1", 1000),
        ]
        .into_iter()
        .enumerate()
        {
            apply(
                &mut state,
                &format!("r{i}"),
                10,
                Op::RecordUserCert { cert: c },
            );
        }
        // Recording the same certificate again changes nothing.
        let revision = state.revision;
        assert_eq!(
            apply(
                &mut state,
                "again",
                10,
                Op::RecordUserCert {
                    cert: cert("alice", "a1", 1000)
                }
            ),
            CommandResult::Done { revision }
        );
        assert!(matches!(
            apply(&mut state, "v1", 20, revoke(Some("alice"), None)),
            CommandResult::Done { .. }
        ));
        assert_eq!(
            revoked(&state.user_certs, "a1").unwrap().revoked_ms,
            Some(20)
        );
        assert_eq!(
            revoked(&state.user_certs, "a2").unwrap().revoked_ms,
            Some(20)
        );
        assert_eq!(revoked(&state.user_certs, "b1"), None);
        assert_eq!(revoked(&state.user_certs, "zz"), None);
        // Again: nothing changes (the first time is kept).
        let revision = state.revision;
        assert_eq!(
            apply(&mut state, "v2", 30, revoke(Some("alice"), None)),
            CommandResult::Done { revision }
        );
        assert_eq!(
            revoked(&state.user_certs, "a1").unwrap().revoked_ms,
            Some(20)
        );
        // A new certificate of alice, recorded after, is not revoked.
        apply(
            &mut state,
            "r3",
            40,
            Op::RecordUserCert {
                cert: cert("alice", "a3", 1000),
            },
        );
        assert_eq!(revoked(&state.user_certs, "a3"), None);
        assert_eq!(
            apply(&mut state, "v3", 40, revoke(Some("carol"), None)),
            CommandResult::Rejected {
                reason: "no certificate of user \"carol\" is recorded (certificates signed \
                         before revocation existed are revoked by serial: `smrmgr user revoke \
                         --serial HEX`)"
                    .into()
            }
        );
        for bad in [revoke(None, None), revoke(Some("bob"), Some("b1"))] {
            assert_eq!(
                apply(&mut state, "bad", 40, bad),
                CommandResult::Rejected {
                    reason: "revoke either a user (by name) or one certificate (by serial)".into()
                }
            );
        }
    }

    #[test]
    fn a_serial_is_revoked_recorded_or_not_and_entries_go_once_expired() {
        let mut state = ClusterState::default();
        apply(
            &mut state,
            "r",
            10,
            Op::RecordUserCert {
                cert: cert("bob", "b1", 100),
            },
        );
        apply(&mut state, "v1", 20, revoke(None, Some("b1")));
        assert_eq!(revoked(&state.user_certs, "b1").unwrap().name, "bob");
        // A serial the cluster never recorded (signed before this version): added, revoked.
        apply(&mut state, "v2", 30, revoke(None, Some("0f")));
        assert_eq!(
            revoked(&state.user_certs, "0f"),
            Some(&UserCert {
                name: String::new(),
                serial: "0f".into(),
                issued_ms: 0,
                expires_ms: 900,
                revoked_ms: Some(30),
            })
        );
        // Past b1's expiry, the next user-certificate write drops it.
        apply(
            &mut state,
            "r2",
            150,
            Op::RecordUserCert {
                cert: cert("carol", "c1", 1000),
            },
        );
        assert_eq!(
            state
                .user_certs
                .iter()
                .map(|c| c.serial.as_str())
                .collect::<Vec<_>>(),
            vec!["0f", "c1"]
        );
    }
}
