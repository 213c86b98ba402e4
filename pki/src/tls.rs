//! rustls configurations of the API (1443) and Raft RPC (9212) servers and of their clients,
//! all with the cluster CA as the only trust anchor and aws-lc-rs as the provider.
//!
//! - API server: client certificates optional at the TLS level (the join endpoints are called
//!   without one; the HTTP layer refuses everything else without a [`super::PeerIdentity`]), but
//!   a certificate from another CA fails the handshake.
//! - Raft server: a node certificate of the cluster CA is required (admin certificates fail).
//! - Pinned client: for a joiner that knows only the CA fingerprint from its token.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use sha2::{Digest, Sha256};

use super::ca::parse_certs_pem;
use super::identity::{Identity, peer_identity};
use super::live::LiveIdentity;
use super::{PkiError, Role, provider};

/// ALPN protocols offered by the servers.
const SERVER_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Message of the error a pinned client gets from a server of another cluster.
pub const CA_MISMATCH: &str = "server's CA does not match the join token";

/// A reason to refuse a peer certificate, carried inside a rustls error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(&'static str);

fn refused(reason: &'static str) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(Refused(
        reason,
    )))))
}

/// Every CA certificate of `ca_pem` as a trust root (two during a CA rotation).
pub(crate) fn ca_roots(ca_pem: &str) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    for der in parse_certs_pem(ca_pem, "CA certificate")? {
        roots.add(der)?;
    }
    Ok(Arc::new(roots))
}

fn server_config(
    identity: &Identity,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<ServerConfig>, PkiError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain()?, identity.private_key()?)?;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

fn live_server_config(
    live: &Arc<LiveIdentity>,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<Arc<ServerConfig>, PkiError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(live.clone());
    // No session resumption: a resumed session skips the certificate checks, so a client
    // whose CA was dropped from trust (after a CA rotation) could go on resuming.
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    config.alpn_protocols = SERVER_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// [`api_server_config`] presenting the certificate `live` holds, and trusting its CAs, at
/// each handshake.
pub fn api_server_config_live(live: &Arc<LiveIdentity>) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier = LiveClientVerifier {
        live: live.clone(),
        mandatory: false,
        provider: provider(),
    };
    live_server_config(live, Arc::new(verifier))
}

/// [`raft_server_config`] presenting the certificate `live` holds, and trusting its CAs, at
/// each handshake.
pub fn raft_server_config_live(live: &Arc<LiveIdentity>) -> Result<Arc<ServerConfig>, PkiError> {
    let inner = LiveClientVerifier {
        live: live.clone(),
        mandatory: true,
        provider: provider(),
    };
    live_server_config(
        live,
        Arc::new(NodeOnly {
            inner: Arc::new(inner),
        }),
    )
}

/// [`reqwest_client`] presenting the certificate `live` holds at each new connection (every
/// connection is a full handshake).
pub fn reqwest_client_live(
    live: &Arc<LiveIdentity>,
    timeout: Duration,
) -> Result<reqwest::Client, PkiError> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LiveServerVerifier {
            live: live.clone(),
            provider: provider(),
        }))
        .with_client_cert_resolver(live.clone());
    // No session resumption: a resumed session would carry the identity of the certificate it
    // was made with, so a renewed certificate would not be shown until the ticket expired.
    config.resumption = rustls::client::Resumption::disabled();
    to_reqwest(config, timeout)
}

/// The REST API server: presents `[node cert, CA cert]`; a client certificate is optional but,
/// if sent, must come from the cluster CA. ALPN h2 and http/1.1.
pub fn api_server_config(identity: &Identity) -> Result<Arc<ServerConfig>, PkiError> {
    let verifier =
        WebPkiClientVerifier::builder_with_provider(ca_roots(&identity.ca_pem)?, provider())
            .allow_unauthenticated()
            .build()?;
    server_config(identity, verifier)
}

/// The Raft RPC server: requires a node certificate of the cluster CA. ALPN h2 and http/1.1.
pub fn raft_server_config(identity: &Identity) -> Result<Arc<ServerConfig>, PkiError> {
    let inner =
        WebPkiClientVerifier::builder_with_provider(ca_roots(&identity.ca_pem)?, provider())
            .build()?;
    server_config(identity, Arc::new(NodeOnly { inner }))
}

/// A client trusting only the cluster CA, presenting `identity` (if any) as its client
/// certificate. No ALPN is set (hyper's auto server then reads the preface).
pub fn client_config(
    ca_pem: &str,
    identity: Option<&Identity>,
) -> Result<Arc<ClientConfig>, PkiError> {
    Ok(Arc::new(build_client_config(ca_pem, identity)?))
}

fn build_client_config(
    ca_pem: &str,
    identity: Option<&Identity>,
) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(ca_roots(ca_pem)?);
    Ok(match identity {
        Some(id) => builder.with_client_auth_cert(id.client_chain()?, id.private_key()?)?,
        None => builder.with_no_client_auth(),
    })
}

/// A reqwest client on [`client_config`] (HTTP/1.1) with an overall request `timeout`.
pub fn reqwest_client(
    ca_pem: &str,
    identity: Option<&Identity>,
    timeout: Duration,
) -> Result<reqwest::Client, PkiError> {
    to_reqwest(build_client_config(ca_pem, identity)?, timeout)
}

/// A client for a joiner that has only the CA fingerprint of its join token: the server must
/// present, in its chain, a certificate whose SHA-256 is `ca_fingerprint`, and its leaf must
/// verify against that certificate (hostname included). Otherwise the handshake fails with
/// "server's CA does not match the join token".
pub fn pinned_client_config(ca_fingerprint: &str) -> Result<Arc<ClientConfig>, PkiError> {
    Ok(Arc::new(build_pinned_config(ca_fingerprint)?))
}

fn build_pinned_config(ca_fingerprint: &str) -> Result<ClientConfig, PkiError> {
    let bad = || PkiError::InvalidFingerprint(ca_fingerprint.to_owned());
    let bytes = hex::decode(ca_fingerprint).map_err(|_| bad())?;
    let fingerprint: [u8; 32] = bytes.try_into().map_err(|_| bad())?;
    let verifier = PinnedCa {
        fingerprint,
        provider: provider(),
    };
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// A reqwest client on [`pinned_client_config`] (HTTP/1.1) with an overall request `timeout`.
pub fn pinned_reqwest_client(
    ca_fingerprint: &str,
    timeout: Duration,
) -> Result<reqwest::Client, PkiError> {
    to_reqwest(build_pinned_config(ca_fingerprint)?, timeout)
}

fn to_reqwest(mut config: ClientConfig, timeout: Duration) -> Result<reqwest::Client, PkiError> {
    // The workspace builds reqwest without its http2 feature: never negotiate h2.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(timeout)
        .connect_timeout(timeout)
        .no_proxy()
        .build()
        .map_err(PkiError::HttpClient)
}

/// Client verifier of the Raft server: the WebPKI check against the cluster CA, then the
/// certificate must be a node's (`OU=smr-node`).
#[derive(Debug)]
struct NodeOnly {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for NodeOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        match peer_identity(std::slice::from_ref(end_entity)) {
            Some(id) if id.role == Role::Node => Ok(verified),
            _ => Err(refused("Raft RPC accepts only node certificates")),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server verifier pinned to a CA fingerprint (see [`pinned_client_config`]).
#[derive(Debug)]
struct PinnedCa {
    fingerprint: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned =
            |c: &CertificateDer<'_>| Sha256::digest(c.as_ref()).as_slice() == self.fingerprint;
        let ca = intermediates
            .iter()
            .find(|c| pinned(c))
            .ok_or_else(|| refused(CA_MISMATCH))?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let webpki =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        // The other certificates may link the leaf to the pinned CA: during a CA rotation a
        // leaf of the new CA reaches the old one through the cross-signed certificate.
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| !pinned(c))
            .cloned()
            .collect();
        webpki.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client verifier of the live servers: the WebPKI check against the trust roots `live` holds
/// at this handshake.
#[derive(Debug)]
struct LiveClientVerifier {
    live: Arc<LiveIdentity>,
    /// Whether a client certificate is required (Raft) or optional (API).
    mandatory: bool,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for LiveClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional; the roots change, and smr clients send their one certificate.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let mut builder =
            WebPkiClientVerifier::builder_with_provider(self.live.roots(), self.provider.clone());
        if !self.mandatory {
            builder = builder.allow_unauthenticated();
        }
        let inner = builder
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server verifier of the live client: the WebPKI check against the trust roots `live` holds
/// at this handshake.
#[derive(Debug)]
struct LiveServerVerifier {
    live: Arc<LiveIdentity>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LiveServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        WebPkiServerVerifier::builder_with_provider(self.live.roots(), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
