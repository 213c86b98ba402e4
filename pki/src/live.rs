//! A node's own certificate, replaceable while servers and clients run: the API and Raft servers
//! and the node-to-node client resolve the certificate at each handshake from a
//! [`LiveIdentity`], so a renewed certificate is presented from the next connection on, with no
//! restart. Connections already open keep the certificate they were made with.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SignatureScheme};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::identity::Identity;
use super::{PkiError, provider};

/// An [`Identity`] that can be replaced; see the module documentation.
/// Its trust roots (the CA certificates of `ca_pem`) are live too: the verifiers of the live
/// configurations read them at each handshake, so a CA rotation changes whom this node trusts
/// with no restart.
#[derive(Debug)]
pub struct LiveIdentity {
    current: RwLock<Current>,
}

#[derive(Debug)]
struct Current {
    identity: Identity,
    key: Arc<CertifiedKey>,
    roots: Arc<RootCertStore>,
}

fn current(identity: Identity) -> Result<Current, PkiError> {
    Ok(Current {
        key: certified(&identity)?,
        roots: super::tls::ca_roots(&identity.ca_pem)?,
        identity,
    })
}

fn certified(identity: &Identity) -> Result<Arc<CertifiedKey>, PkiError> {
    let key = provider()
        .key_provider
        .load_private_key(identity.private_key()?)?;
    Ok(Arc::new(CertifiedKey::new(identity.chain()?, key)))
}

impl LiveIdentity {
    pub fn new(identity: Identity) -> Result<Arc<LiveIdentity>, PkiError> {
        Ok(Arc::new(LiveIdentity {
            current: RwLock::new(current(identity)?),
        }))
    }

    /// The identity presented now.
    pub fn get(&self) -> Identity {
        self.read().identity.clone()
    }

    /// Presents `identity` and trusts its CA certificates from the next handshake on.
    pub fn replace(&self, identity: Identity) -> Result<(), PkiError> {
        let next = current(identity)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Current> {
        self.current.read().unwrap_or_else(|e| e.into_inner())
    }

    fn key(&self) -> Arc<CertifiedKey> {
        self.read().key.clone()
    }

    /// The trust roots now.
    pub(crate) fn roots(&self) -> Arc<RootCertStore> {
        self.read().roots.clone()
    }
}

impl ResolvesServerCert for LiveIdentity {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }
}

impl ResolvesClientCert for LiveIdentity {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.key())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `notBefore` and `notAfter` of a PEM certificate.
pub fn validity(cert_pem: &str) -> Result<(SystemTime, SystemTime), PkiError> {
    let der = super::ca::parse_cert_pem(cert_pem, "certificate")?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let at = |t: x509_parser::time::ASN1Time| {
        let secs = t.timestamp();
        if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH
        }
    };
    let v = cert.validity();
    Ok((at(v.not_before), at(v.not_after)))
}

/// When a certificate valid from `not_before` to `not_after` is renewed: at 2/3 of its lifetime.
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let lifetime = not_after.duration_since(not_before).unwrap_or_default();
    not_before + lifetime * 2 / 3
}
