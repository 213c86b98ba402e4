//! The cluster CA and the certificates it issues.
//!
//! The CA is an ECDSA P-256 self-signed certificate valid 10 years (CA:true, pathlen 0,
//! keyCertSign + cRLSign). Leaf certificates are valid 1 year; their subject is
//! `CN=<name>, OU=smr-node|smr-admin, O=smr`, and the CA alone decides subject, SANs and
//! usages: from a CSR it takes only the public key, after checking the CSR's signature.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use x509_parser::prelude::FromDer;

use super::files::{self, CERT_MODE, KEY_MODE};
use super::{CA_CERT_FILE, CA_KEY_FILE, PkiError};

/// Validity of the cluster CA.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Validity of node and admin certificates.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// `notBefore` is set this far in the past to tolerate clock skew between nodes.
const BACKDATE: Duration = Duration::from_secs(3600);
/// The organisation written into every leaf subject.
const ORGANIZATION: &str = "smr";
/// The organisational unit of the CA subject.
const CA_OU: &str = "smr-ca";

/// What a certificate allows its holder to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A cluster node: TLS server (API, Raft) and client (Raft, forwarding). serverAuth + clientAuth.
    Node,
    /// An operator (smrctl): TLS client only. clientAuth.
    Admin,
}

impl Role {
    /// The organisational unit (OU) that encodes the role in a certificate subject.
    pub fn organizational_unit(self) -> &'static str {
        match self {
            Role::Node => "smr-node",
            Role::Admin => "smr-admin",
        }
    }

    /// The role whose OU is `ou`.
    pub fn from_organizational_unit(ou: &str) -> Option<Role> {
        match ou {
            "smr-node" => Some(Role::Node),
            "smr-admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Node => "node",
            Role::Admin => "admin",
        })
    }
}

/// The cluster certificate authority: its certificate and its private key.
pub struct ClusterCa {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Generates a new CA for the cluster `cluster_name`: ECDSA P-256, valid 10 years.
    pub fn generate(cluster_name: &str) -> Result<ClusterCa, PkiError> {
        validate_name(cluster_name)?;
        ClusterCa::generate_named(cluster_name, &format!("smr cluster CA {cluster_name}"))
    }

    /// A new CA to replace this one (`smrmgr ca rotate`): a new key, the same organisation
    /// (cluster name), a common name that tells it apart (`... rotated <unix seconds>`).
    pub fn generate_successor(&self) -> Result<ClusterCa, PkiError> {
        let (_, cluster_name) = ca_names(&self.cert_der)?;
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        ClusterCa::generate_named(
            &cluster_name,
            &format!("smr cluster CA {cluster_name} rotated {secs}"),
        )
    }

    /// The cross-signed certificate of `next`: `next`'s subject and key, issued by this CA.
    /// A leaf of `next` presented with it verifies against this CA alone (leaf -> cross
    /// certificate -> this CA), so peers that trust only this CA accept it during a rotation.
    pub fn cross_sign(&self, next: &ClusterCa) -> Result<String, PkiError> {
        let (common_name, cluster_name) = ca_names(next.cert_der())?;
        let mut params = ca_params(&cluster_name, &common_name);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::from_pem(&next.key_pem).map_err(|e| PkiError::Pem {
            what: "CA private key",
            reason: e.to_string(),
        })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(PkiError::Generate)?;
        Ok(cert.pem())
    }

    fn generate_named(cluster_name: &str, common_name: &str) -> Result<ClusterCa, PkiError> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(PkiError::Generate)?;
        let params = ca_params(cluster_name, common_name);
        let cert = params.self_signed(&key).map_err(PkiError::Generate)?;
        Ok(ClusterCa {
            cert_pem: cert.pem(),
            cert_der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// Builds a CA from its PEM certificate and PEM (PKCS#8) private key, checking that the
    /// certificate is a CA and that the key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<ClusterCa, PkiError> {
        let cert_der = parse_cert_pem(cert_pem, "CA certificate")?;
        let (_, x509) = x509_parser::certificate::X509Certificate::from_der(&cert_der)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        let is_ca = x509
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(PkiError::BadCertificate(
                "the CA certificate is not a CA (basicConstraints CA:false)".into(),
            ));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| PkiError::Pem {
            what: "CA private key",
            reason: e.to_string(),
        })?;
        if key.subject_public_key_info() != x509.tbs_certificate.subject_pki.raw {
            return Err(PkiError::KeyMismatch("of the cluster CA"));
        }
        let issuer = Issuer::from_ca_cert_der(&cert_der, key)
            .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
        Ok(ClusterCa {
            cert_pem: cert_pem.to_owned(),
            cert_der,
            key_pem: key_pem.to_owned(),
            issuer,
        })
    }

    /// Loads `ca.crt` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<ClusterCa, PkiError> {
        let cert = files::read_text(&dir.join(CA_CERT_FILE))?;
        let key = files::read_text(&dir.join(CA_KEY_FILE))?;
        ClusterCa::from_pem(&cert, &key)
    }

    /// Saves `ca.crt` (0644) and `ca.key` (0600) into `dir` (created if missing), atomically.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        files::ensure_dir(dir)?;
        files::write_atomic(&dir.join(CA_KEY_FILE), self.key_pem.as_bytes(), KEY_MODE)?;
        files::write_atomic(&dir.join(CA_CERT_FILE), self.cert_pem.as_bytes(), CERT_MODE)
    }

    /// The CA private key, PEM: only for sealing it ([`super::ClusterKey::seal_ca`]).
    pub(crate) fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// Hex (lowercase) SHA-256 of the CA certificate DER: what join tokens carry.
    pub fn fingerprint(&self) -> String {
        fingerprint_der(&self.cert_der)
    }

    /// Issues a certificate for the public key of `csr_pem` (whose signature is checked).
    /// Subject (`CN=name, OU=<role>, O=smr`), SANs and usages are set here; whatever the CSR
    /// asks for besides its public key is ignored. `sans` are IP addresses or DNS names.
    pub fn sign_csr(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        sans: &[String],
    ) -> Result<String, PkiError> {
        self.sign_csr_valid_for(csr_pem, role, name, sans, LEAF_VALIDITY)
    }

    /// [`ClusterCa::sign_csr`] for a certificate valid `validity` (from now; `notBefore` is
    /// backdated by an hour, or a tenth of `validity` when that is shorter).
    pub fn sign_csr_valid_for(
        &self,
        csr_pem: &str,
        role: Role,
        name: &str,
        sans: &[String],
        validity: Duration,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
        // rcgen derives the key algorithm from the CSR's signature algorithm; make sure that
        // re-encoding the key gives exactly the SubjectPublicKeyInfo the CSR carries.
        let requested_spki = csr_spki(csr_pem)?;
        if csr.public_key.subject_public_key_info() != requested_spki {
            return Err(PkiError::InvalidCsr(
                "unsupported public key (use ECDSA P-256 with SHA-256)".into(),
            ));
        }
        let mut params = leaf_params(role, name, sans)?;
        set_validity(&mut params, validity);
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match role {
            Role::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.is_ca = IsCa::ExplicitNoCa;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(PkiError::Generate)?;
        Ok(cert.pem())
    }
}

/// Generates a private key (ECDSA P-256) here and a CSR for it, asking for `CN=name,
/// OU=<role>` and `sans` (the CA decides in the end). Returns `(key_pem, csr_pem)`.
pub fn new_key_and_csr(
    role: Role,
    name: &str,
    sans: &[String],
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(PkiError::Generate)?;
    let params = leaf_params(role, name, sans)?;
    let csr = params.serialize_request(&key).map_err(PkiError::Generate)?;
    let csr_pem = csr.pem().map_err(PkiError::Generate)?;
    Ok((key.serialize_pem(), csr_pem))
}

/// Hex SHA-256 of a DER certificate.
pub(crate) fn fingerprint_der(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// Decodes the first certificate of a PEM text.
pub(crate) fn parse_cert_pem(
    pem: &str,
    what: &'static str,
) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem {
        what,
        reason: e.to_string(),
    })
}

/// A CA certificate's parameters (subject `CN=common_name, OU=smr-ca, O=cluster_name`), valid
/// 10 years from now, a new serial. The same names always encode to the same subject.
fn ca_params(cluster_name: &str, common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn.push(DnType::OrganizationalUnitName, CA_OU);
    dn.push(DnType::OrganizationName, cluster_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_VALIDITY);
    params.serial_number = Some(random_serial());
    params
}

/// Common name and organisation (cluster name) of a CA certificate.
fn ca_names(der: &[u8]) -> Result<(String, String), PkiError> {
    let (_, x509) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let subject = x509.subject();
    let cn = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| PkiError::BadCertificate("the CA certificate has no common name".into()))?;
    let o = subject
        .iter_organization()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| PkiError::BadCertificate("the CA certificate has no organisation".into()))?;
    Ok((cn.to_owned(), o.to_owned()))
}

/// PEM texts one after the other (a chain or a bundle of trust roots), each ending with a
/// newline.
pub fn join_pem(parts: &[&str]) -> String {
    let mut out = String::new();
    for part in parts {
        let part = part.trim();
        if !part.is_empty() {
            out.push_str(part);
            out.push('\n');
        }
    }
    out
}

/// The first PEM block of a text (a chain's leaf), with its end line; the whole text when it
/// has no end line.
pub fn first_pem(pem: &str) -> &str {
    const END: &str = "-----END CERTIFICATE-----";
    match pem.find(END) {
        Some(at) => &pem[..at + END.len()],
        None => pem,
    }
}

/// Hex SHA-256 of every certificate of a PEM text, in order.
pub fn pem_fingerprints(pem: &str) -> Result<Vec<String>, PkiError> {
    Ok(parse_certs_pem(pem, "certificate")?
        .iter()
        .map(|d| fingerprint_der(d))
        .collect())
}

/// Every certificate of a PEM text, in order (at least one).
pub(crate) fn parse_certs_pem(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(PkiError::Pem {
            what,
            reason: "no certificate".into(),
        });
    }
    Ok(certs)
}

/// The DER SubjectPublicKeyInfo of a PEM CSR.
fn csr_spki(csr_pem: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::CertificateSigningRequestDer;
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
    let (_, csr) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| PkiError::InvalidCsr(e.to_string()))?;
    Ok(csr.certification_request_info.subject_pki.raw.to_vec())
}

/// Subject and SANs of a leaf certificate (also what a CSR asks for).
fn leaf_params(role: Role, name: &str, sans: &[String]) -> Result<CertificateParams, PkiError> {
    validate_name(name)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    dn.push(DnType::OrganizationalUnitName, role.organizational_unit());
    dn.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name = dn;
    params.subject_alt_names = sans
        .iter()
        .map(|s| parse_san(s))
        .collect::<Result<_, _>>()?;
    Ok(params)
}

fn parse_san(s: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let name = s.strip_suffix('.').unwrap_or(s);
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(PkiError::InvalidSan(s.to_owned()));
    }
    let ia5 = name
        .to_owned()
        .try_into()
        .map_err(|_| PkiError::InvalidSan(s.to_owned()))?;
    Ok(SanType::DnsName(ia5))
}

/// Names (node, admin, cluster) are 1 to 64 characters of `[A-Za-z0-9._@-]`.
fn validate_name(name: &str) -> Result<(), PkiError> {
    let reason = if name.is_empty() {
        "must not be empty"
    } else if name.len() > 64 {
        "must be at most 64 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'@' | b'-'))
    {
        "only letters, digits and . _ @ - are allowed"
    } else {
        return Ok(());
    };
    Err(PkiError::InvalidName {
        name: name.to_owned(),
        reason,
    })
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    let now = x509_parser::time::ASN1Time::now().to_datetime();
    params.not_before = now - BACKDATE.min(validity / 10);
    params.not_after = now + validity;
}

/// 128 random bits, positive.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}
