//! A node's or an admin's own TLS identity (leaf certificate, private key, cluster CA
//! certificate) on disk, and the identity of a verified peer read from its certificate.

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ca::{Role, fingerprint_der, parse_cert_pem, parse_certs_pem};
use super::files::{self, CERT_MODE};
use super::{CA_CERT_FILE, PkiError};

/// Leaf certificate, its private key and the cluster CA certificate, all PEM.
///
/// During a CA rotation `cert_pem` holds the leaf followed by the cross-signed certificate of
/// the new CA (so peers that still trust only the old CA accept the leaf), and `ca_pem` holds
/// both CA certificates (the trust roots: old first, then new).
#[derive(Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("subject", &self.peer_identity().ok())
            .finish_non_exhaustive()
    }
}

/// Who a verified peer is, from the subject of its certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PeerIdentity {
    pub role: Role,
    pub name: String,
}

impl Identity {
    /// Builds an identity and checks it: the key belongs to the certificate, the certificate
    /// was issued by the CA, and its subject names an smr role.
    pub fn new(cert_pem: String, key_pem: String, ca_pem: String) -> Result<Identity, PkiError> {
        let id = Identity {
            cert_pem,
            key_pem,
            ca_pem,
        };
        id.check()?;
        Ok(id)
    }

    /// Loads `<prefix>.crt`, `<prefix>.key` and `ca.crt` from `dir`, then checks them as
    /// [`Identity::new`] does.
    /// A save that a crash interrupted is finished (or undone) first: see [`Identity::save`].
    pub fn load(dir: &Path, prefix: &str) -> Result<Identity, PkiError> {
        files::finish_pair(
            &dir.join(format!("{prefix}.key")),
            &dir.join(format!("{prefix}.crt")),
        )?;
        Identity::new(
            files::read_text(&dir.join(format!("{prefix}.crt")))?,
            files::read_text(&dir.join(format!("{prefix}.key")))?,
            files::read_text(&dir.join(CA_CERT_FILE))?,
        )
    }

    /// Saves `<prefix>.key` (0600), `<prefix>.crt` and `ca.crt` (0644) into `dir`, atomically.
    ///
    /// The key and the certificate are one pair, replaced together (a renewal replaces both):
    /// a crash at any point leaves the old pair or the new one, never a key of one with the
    /// certificate of the other. Both are first written in full beside the old pair
    /// (`<prefix>.key.next`, `<prefix>.crt.next`), then renamed over it, key first;
    /// [`Identity::load`] finishes a replacement a crash interrupted.
    pub fn save(&self, dir: &Path, prefix: &str) -> Result<(), PkiError> {
        files::ensure_dir(dir)?;
        files::write_pair(
            (&dir.join(format!("{prefix}.key")), self.key_pem.as_bytes()),
            (&dir.join(format!("{prefix}.crt")), self.cert_pem.as_bytes()),
        )?;
        files::write_atomic(&dir.join(CA_CERT_FILE), self.ca_pem.as_bytes(), CERT_MODE)
    }

    /// The leaf certificate, DER.
    pub fn cert_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        parse_cert_pem(&self.cert_pem, "certificate")
    }

    /// The (first) CA certificate, DER.
    pub fn ca_der(&self) -> Result<CertificateDer<'static>, PkiError> {
        parse_cert_pem(&self.ca_pem, "CA certificate")
    }

    /// Every trusted CA certificate, DER (two during a CA rotation).
    pub fn ca_ders(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        parse_certs_pem(&self.ca_pem, "CA certificate")
    }

    /// Hex SHA-256 of the (first) CA certificate (the fingerprint join tokens carry).
    pub fn ca_fingerprint(&self) -> Result<String, PkiError> {
        Ok(fingerprint_der(&self.ca_der()?))
    }

    /// Hex SHA-256 of every trusted CA certificate, in `ca_pem`'s order.
    pub fn ca_fingerprints(&self) -> Result<Vec<String>, PkiError> {
        Ok(self.ca_ders()?.iter().map(|d| fingerprint_der(d)).collect())
    }

    /// The fingerprint of the trusted CA whose key signed the leaf certificate (directly, or
    /// as the key of the cross-signed certificate that follows the leaf).
    pub fn leaf_ca_fingerprint(&self) -> Result<String, PkiError> {
        let cert_der = self.cert_der()?;
        let (_, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        for ca_der in self.ca_ders()? {
            let (_, ca) = X509Certificate::from_der(&ca_der)
                .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
            if cert.verify_signature(Some(ca.public_key())).is_ok() {
                return Ok(fingerprint_der(&ca_der));
            }
        }
        Err(PkiError::BadCertificate(
            "the certificate was not issued by a trusted cluster CA".into(),
        ))
    }

    /// The chain a client presents: the leaf and what follows it in `cert_pem` (the
    /// cross-signed certificate during a CA rotation).
    pub fn client_chain(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        parse_certs_pem(&self.cert_pem, "certificate")
    }

    /// The chain a server presents: [`Identity::client_chain`], then the CA certificates (a
    /// joiner pins one of them by its fingerprint).
    pub fn chain(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        let mut chain = self.client_chain()?;
        chain.extend(self.ca_ders()?);
        Ok(chain)
    }

    /// The private key, DER.
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|e| PkiError::Pem {
            what: "private key",
            reason: e.to_string(),
        })
    }

    /// Role and name written in the own certificate.
    pub fn peer_identity(&self) -> Result<PeerIdentity, PkiError> {
        let der = self.cert_der()?;
        peer_identity(std::slice::from_ref(&der)).ok_or_else(|| {
            PkiError::BadCertificate("the certificate subject names no smr role (OU)".into())
        })
    }

    fn check(&self) -> Result<(), PkiError> {
        let chain = self.client_chain()?;
        let (_, cert) = X509Certificate::from_der(&chain[0])
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        // The leaf's issuer: a trusted CA, or the cross-signed certificate after the leaf
        // (which must itself be issued by a trusted CA).
        let cas = self.ca_ders()?;
        let signed_by = |cert: &X509Certificate<'_>, issuers: &[CertificateDer<'_>]| {
            issuers.iter().any(|der| {
                X509Certificate::from_der(der)
                    .is_ok_and(|(_, ca)| cert.verify_signature(Some(ca.public_key())).is_ok())
            })
        };
        let by_cross = chain.len() > 1 && signed_by(&cert, &chain[1..2]) && {
            let (_, cross) = X509Certificate::from_der(&chain[1])
                .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
            signed_by(&cross, &cas)
        };
        if !by_cross && !signed_by(&cert, &cas) {
            return Err(PkiError::BadCertificate(
                "the certificate was not issued by the cluster CA".into(),
            ));
        }
        let key = rcgen::KeyPair::from_pem(&self.key_pem).map_err(|e| PkiError::Pem {
            what: "private key",
            reason: e.to_string(),
        })?;
        if rcgen::PublicKeyData::subject_public_key_info(&key)
            != cert.tbs_certificate.subject_pki.raw
        {
            return Err(PkiError::KeyMismatch("of this identity"));
        }
        self.peer_identity().map(|_| ())
    }
}

/// The identity written in the end-entity certificate (`certs[0]`) of a peer whose chain TLS
/// already verified (e.g. `ServerConnection::peer_certificates()`). `None` without a
/// certificate or when its subject has no smr role (OU) and name (CN).
pub fn peer_identity(certs: &[CertificateDer<'_>]) -> Option<PeerIdentity> {
    let (_, cert) = X509Certificate::from_der(certs.first()?).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?;
    let role = subject
        .iter_organizational_unit()
        .find_map(|ou| Role::from_organizational_unit(ou.as_str().ok()?))?;
    Some(PeerIdentity {
        role,
        name: name.to_owned(),
    })
}

/// The serial number of a DER certificate, lowercase hex (how revocations name it).
pub fn cert_serial(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(hex::encode(cert.raw_serial()))
}

/// The serial number of the first certificate of `pem`, lowercase hex.
pub fn pem_serial(pem: &str) -> Result<String, PkiError> {
    let der = super::ca::parse_cert_pem(pem, "certificate")?;
    cert_serial(&der).ok_or_else(|| PkiError::BadCertificate("unreadable certificate".into()))
}
