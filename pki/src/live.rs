//! A node's own certificate, replaceable while servers and clients run: the API and Raft servers
//! and the node-to-node client resolve the certificate at each handshake from a
//! [`LiveIdentity`], so a renewed certificate is presented from the next connection on, with no
//! restart. Connections already open keep the certificate they were made with; a
//! [`PeerClient`] therefore makes a new reqwest client (with a new, empty pool) once the identity
//! was replaced, so the next request presents the new certificate.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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
    /// How many times the identity was replaced.
    generation: AtomicU64,
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
            generation: AtomicU64::new(0),
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
        self.generation.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    /// How many times the identity was replaced ([`LiveIdentity::replace`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
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

/// The node-to-node HTTP client: a reqwest client presenting the certificate of a
/// [`LiveIdentity`], made again (with an empty connection pool) after each replacement of the
/// identity, so that requests after a renewal or a CA rotation step present the new certificate
/// instead of going over a pooled connection made with the old one. Connections of the previous
/// client close once the requests using them end. Cheap to clone.
#[derive(Clone)]
pub struct PeerClient {
    inner: Arc<PeerSource>,
}

enum PeerSource {
    Fixed(reqwest::Client),
    Live {
        live: Arc<LiveIdentity>,
        timeout: Duration,
        /// The client made for identity generation `.0`.
        built: Mutex<(u64, reqwest::Client)>,
    },
}

impl PeerClient {
    /// A client for `live`'s identity; `timeout` is each request's limit.
    pub fn live(live: &Arc<LiveIdentity>, timeout: Duration) -> Result<PeerClient, PkiError> {
        let generation = live.generation();
        let client = super::tls::reqwest_client_live(live, timeout)?;
        Ok(PeerClient {
            inner: Arc::new(PeerSource::Live {
                live: live.clone(),
                timeout,
                built: Mutex::new((generation, client)),
            }),
        })
    }

    /// The client to send the next request with.
    pub fn client(&self) -> reqwest::Client {
        match &*self.inner {
            PeerSource::Fixed(client) => client.clone(),
            PeerSource::Live {
                live,
                timeout,
                built,
            } => {
                let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
                let generation = live.generation();
                if built.0 != generation {
                    match super::tls::reqwest_client_live(live, *timeout) {
                        Ok(client) => *built = (generation, client),
                        // Cannot happen once the first one was made (same settings); the old
                        // client still works with the new certificate on new connections.
                        Err(_) => built.0 = generation,
                    }
                }
                built.1.clone()
            }
        }
    }
}

/// A client that is never made again (plain HTTP in tests, or a fixed identity).
impl From<reqwest::Client> for PeerClient {
    fn from(client: reqwest::Client) -> PeerClient {
        PeerClient {
            inner: Arc::new(PeerSource::Fixed(client)),
        }
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
