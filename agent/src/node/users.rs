//! Client certificates for named users (`smrctl context export --user NAME`): an admin asks the
//! cluster to sign a CSR made on the admin's machine, so the user's private key never passes
//! through the cluster.

use super::features::Feature;
use super::{Consistency, Node, NodeError};
use crate::api::types::SignRequest;
use crate::state::{CommandResult, Op, UserCert};

/// The longest user name a certificate is signed for.
pub const MAX_USER_NAME: usize = 64;

/// Why `name` cannot name a user: 1 to 64 characters, ASCII letters, digits and `.`, `_`, `-`,
/// `@`, starting with a letter or a digit.
pub fn user_name_error(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_USER_NAME
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    (!ok).then(|| {
        format!(
            "user name {name:?} is refused: 1 to {MAX_USER_NAME} characters, letters, digits, \
             '.', '_', '-', '@', starting with a letter or a digit"
        )
    })
}

impl Node {
    /// An admin client certificate (`CN=name`, OU `smr-admin`) for the public key of `csr`,
    /// signed by the cluster CA (here or on the node holding its key), and the CA certificate.
    pub async fn sign_user(&self, name: &str, csr: &str) -> Result<(String, String), NodeError> {
        if let Some(why) = user_name_error(name) {
            return Err(NodeError::BadRequest(why));
        }
        let state = self.state(Consistency::Linearizable).await?;
        let ca = state
            .ca
            .as_ref()
            .ok_or_else(|| NodeError::Internal("the cluster has no CA recorded".into()))?;
        if let Some(next) = &ca.next {
            return Err(NodeError::Conflict(format!(
                "a CA rotation (to {}) is under way: ask for user certificates once it has \
                 finished (`smrmgr ca status`)",
                next.fingerprint
            )));
        }
        let request = SignRequest {
            csr: csr.to_string(),
            admin: true,
            name: name.to_string(),
            sans: vec![],
        };
        let cert = self.sign(request, ca.holder).await?;
        // Recorded before it is handed out, so that `smrmgr user revoke NAME` finds it.
        let unreadable = |e: crate::pki::PkiError| {
            NodeError::Internal(format!("reading the certificate just signed: {e}"))
        };
        let serial = crate::pki::pem_serial(&cert).map_err(unreadable)?;
        let (_, not_after) = crate::pki::validity(&cert).map_err(unreadable)?;
        let record = UserCert {
            name: name.to_string(),
            serial: serial.clone(),
            issued_ms: super::now_ms(),
            expires_ms: ms_since_epoch(not_after),
            revoked_ms: None,
        };
        // Not while a node of an older version applies the log: it would stop at the entry.
        // The certificate is then not recorded (revocable by serial only).
        let lacking = self.members_lacking(Feature::UserCerts, true).await;
        if !lacking.is_empty() {
            tracing::warn!(
                user = name,
                %serial,
                ?lacking,
                "signed a client certificate without recording it: nodes of an older version \
                 would not read the record; `smrmgr user revoke NAME` will not find it (revoke \
                 it by serial)"
            );
            return Ok((cert, ca.cert_pem.clone()));
        }
        if let CommandResult::Rejected { reason } = self
            .propose(Op::RecordUserCert { cert: record }, None)
            .await?
        {
            return Err(NodeError::Conflict(reason));
        }
        tracing::info!(user = name, %serial, "signed a client certificate");
        Ok((cert, ca.cert_pem.clone()))
    }

    /// `smrmgr user revoke`: revokes every certificate recorded for user `name`, or the one
    /// with `serial` (hex, `:` allowed); answers the user certificates the state records then.
    /// Every node's API refuses a revoked certificate once it has applied the revocation.
    pub async fn revoke_user(
        &self,
        name: Option<&str>,
        serial: Option<&str>,
    ) -> Result<Vec<UserCert>, NodeError> {
        let serial = serial.map(normalize_serial).transpose()?;
        if let Some(name) = name
            && let Some(why) = user_name_error(name)
        {
            return Err(NodeError::BadRequest(why));
        }
        if name.is_some() == serial.is_some() {
            return Err(NodeError::BadRequest(
                "revoke either a user (name) or one certificate (serial)".into(),
            ));
        }
        self.require_members_support(Feature::UserCerts, "revoking user certificates")
            .await?;
        // A serial the state does not record stays revoked as long as any certificate signed
        // now could last.
        let expires_ms = super::now_ms()
            + (crate::pki::LEAF_VALIDITY + std::time::Duration::from_secs(3600)).as_millis() as u64;
        let op = Op::RevokeUserCerts {
            name: name.map(str::to_owned),
            serial: serial.clone(),
            expires_ms,
        };
        match self.propose(op, None).await? {
            CommandResult::Rejected { reason } => return Err(NodeError::NotFound(reason)),
            _ => tracing::info!(?name, ?serial, "revoked user certificates"),
        }
        self.user_certs().await
    }

    /// The user certificates the state records (signed, and revoked by serial).
    pub async fn user_certs(&self) -> Result<Vec<UserCert>, NodeError> {
        Ok(self
            .state(Consistency::Linearizable)
            .await?
            .user_certs
            .clone())
    }
}

fn ms_since_epoch(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A serial number as revocations name it: lowercase hex without `:` (as `openssl x509
/// -serial` prints it, or with colons); 1 to 20 bytes.
pub fn normalize_serial(text: &str) -> Result<String, NodeError> {
    let hex: String = text
        .trim()
        .trim_start_matches("serial=")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    let ok = !hex.is_empty() && hex.len() <= 40 && hex.chars().all(|c| c.is_ascii_hexdigit());
    if !ok {
        return Err(NodeError::BadRequest(format!(
            "serial {text:?} is refused: 1 to 40 hex digits (`:` between bytes allowed)"
        )));
    }
    // Even length, as the certificate's bytes encode.
    Ok(if hex.len() % 2 == 1 {
        format!("0{hex}")
    } else {
        hex
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_read_as_openssl_prints_them() {
        for (text, want) in [
            ("5A:3F:01", "5a3f01"),
            ("serial=5A3F01", "5a3f01"),
            ("abc", "0abc"),
            (" 00ff ", "00ff"),
        ] {
            assert_eq!(normalize_serial(text).unwrap(), want, "{text}");
        }
        for bad in ["", "xyz", "12 34", &"a".repeat(41)] {
            assert!(normalize_serial(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn user_names() {
        for ok in ["alice", "bob.smith", "ci_deploy-2", "admin@vm1", "A1"] {
            assert_eq!(user_name_error(ok), None, "{ok}");
        }
        for bad in [
            "",
            "-x",
            ".x",
            "a b",
            "a/b",
            "a,OU=smr-node",
            "é",
            &"a".repeat(65),
        ] {
            assert!(user_name_error(bad).is_some(), "{bad:?}");
        }
    }
}
