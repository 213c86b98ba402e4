//! Client certificates for named users (`smrctl context export --user NAME`): an admin asks the
//! cluster to sign a CSR made on the admin's machine, so the user's private key never passes
//! through the cluster.

use super::{Consistency, Node, NodeError};
use crate::api::types::SignRequest;

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
        tracing::info!(user = name, "signed a client certificate");
        Ok((cert, ca.cert_pem.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
