//! PKI tests: certificate contents, files on disk, and real TLS handshakes on loopback
//! (a tokio-rustls server that answers one HTTP/1.1 request with the peer identity it read,
//! and reqwest or tokio-rustls clients).

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use rustls::ServerConfig;
use rustls::pki_types::ServerName;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

const TIMEOUT: Duration = Duration::from_secs(10);

fn issue(ca: &ClusterCa, role: Role, name: &str, sans: &[&str]) -> Identity {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let (key_pem, csr_pem) = new_key_and_csr(role, name, &sans).unwrap();
    let cert_pem = ca.sign_csr(&csr_pem, role, name, &sans).unwrap();
    Identity::new(cert_pem, key_pem, ca.cert_pem().to_owned()).unwrap()
}

struct Pki {
    ca: ClusterCa,
    node: Identity,
    node2: Identity,
    admin: Identity,
    /// A node of another cluster (another CA), same name and addresses.
    foreign: Identity,
}

fn pki() -> Pki {
    install_crypto_provider();
    let ca = ClusterCa::generate("test").unwrap();
    let other = ClusterCa::generate("other").unwrap();
    Pki {
        node: issue(&ca, Role::Node, "node-1", &["127.0.0.1", "localhost"]),
        node2: issue(&ca, Role::Node, "node-2", &["127.0.0.1"]),
        admin: issue(&ca, Role::Admin, "alice", &[]),
        foreign: issue(&other, Role::Node, "node-1", &["127.0.0.1", "localhost"]),
        ca,
    }
}

/// What the server saw of one connection: the peer identity, or the handshake error.
type Seen = Result<Option<PeerIdentity>, String>;

struct TestServer {
    addr: SocketAddr,
    seen: mpsc::UnboundedReceiver<Seen>,
    task: JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    async fn start(config: Arc<ServerConfig>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, seen) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    };
                    let peer = tls.get_ref().1.peer_certificates().and_then(peer_identity);
                    let _ = tx.send(Ok(peer.clone()));
                    let body = match peer {
                        Some(p) => format!("{}:{}", p.role, p.name),
                        None => "anonymous".to_owned(),
                    };
                    // Read the request head (the tests send no body), then answer.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        TestServer { addr, seen, task }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}/", self.addr.port())
    }

    async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(TIMEOUT, self.seen.recv())
            .await
            .expect("server saw no connection in time")
            .expect("server stopped")
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

async fn get(client: &reqwest::Client, url: &str) -> Result<String, String> {
    match client.get(url).send().await {
        Ok(resp) => Ok(resp.text().await.map_err(|e| error_chain(&e))?),
        Err(e) => Err(error_chain(&e)),
    }
}

fn parse(pem: &str) -> Vec<u8> {
    super::ca::parse_cert_pem(pem, "test").unwrap().to_vec()
}

#[test]
fn crypto_provider_install_is_idempotent() {
    install_crypto_provider();
    install_crypto_provider();
    assert!(rustls::crypto::CryptoProvider::get_default().is_some());
}

#[test]
fn ca_certificate_properties() {
    let ca = ClusterCa::generate("prod").unwrap();
    let der = parse(ca.cert_pem());
    assert_eq!(ca.fingerprint(), hex::encode(sha2::Sha256::digest(&der)));
    assert_eq!(ca.fingerprint().len(), 64);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(cert.basic_constraints().unwrap().unwrap().value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    let days =
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86400;
    assert!((3650..=3651).contains(&days), "{days}");
    assert_eq!(
        cert.subject().to_string(),
        "CN=smr cluster CA prod, OU=smr-ca, O=prod"
    );
    // ECDSA P-256.
    assert_eq!(
        cert.public_key().algorithm.algorithm.to_id_string(),
        "1.2.840.10045.2.1"
    );
    assert!(ClusterCa::generate("").is_err());
    assert!(ClusterCa::generate("a b").is_err());
}

#[test]
fn csr_signing_takes_only_the_public_key() {
    install_crypto_provider();
    let ca = ClusterCa::generate("test").unwrap();
    // The CSR asks for another name, role, SANs and even to be a CA.
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["evil.example".to_string(), "1.2.3.4".to_string()])
            .unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "root");
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "smr-admin");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
    let csr_pem = params.serialize_request(&key).unwrap().pem().unwrap();

    let cert_pem = ca
        .sign_csr(
            &csr_pem,
            Role::Node,
            "node-2",
            &["10.0.0.2".into(), "node-2.private".into()],
        )
        .unwrap();
    let der = parse(&cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert_eq!(cert.subject().to_string(), "CN=node-2, OU=smr-node, O=smr");
    assert_eq!(
        cert.issuer(),
        X509Certificate::from_der(ca.cert_der())
            .unwrap()
            .1
            .subject()
    );
    let sans: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::IPAddress(b) => format!("ip:{b:?}"),
            GeneralName::DNSName(d) => format!("dns:{d}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(sans, ["ip:[10, 0, 0, 2]", "dns:node-2.private"]);
    assert!(!cert.is_ca());
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && !ku.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let days =
        (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp()) / 86400;
    assert_eq!(days, 365);
    // The public key is the CSR's.
    assert_eq!(
        cert.public_key().raw,
        rcgen::PublicKeyData::subject_public_key_info(&key)
    );
    assert_eq!(
        peer_identity(&[der.clone().into()]),
        Some(PeerIdentity {
            role: Role::Node,
            name: "node-2".into()
        })
    );

    // Admin certificates: clientAuth only.
    let admin = issue(&ca, Role::Admin, "alice", &[]);
    let der = parse(&admin.cert_pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(!eku.server_auth && eku.client_auth);
    assert_eq!(
        admin.peer_identity().unwrap(),
        PeerIdentity {
            role: Role::Admin,
            name: "alice".into()
        }
    );
}

#[test]
fn csr_with_bad_signature_or_bad_input_is_rejected() {
    let ca = ClusterCa::generate("test").unwrap();
    let (_, csr_pem) = new_key_and_csr(Role::Node, "node-1", &[]).unwrap();
    let b64: String = csr_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let mut der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    // Change one character of the subject ("node-1" -> "node-2"): the signature breaks.
    let pos = der.windows(6).position(|w| w == b"node-1").unwrap();
    der[pos + 5] = b'2';
    let tampered = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    let err = ca
        .sign_csr(&tampered, Role::Node, "node-1", &[])
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidCsr(_)), "{err}");
    assert!(ca.sign_csr("garbage", Role::Node, "node-1", &[]).is_err());
    let err = ca
        .sign_csr(&csr_pem, Role::Node, "node 1", &[])
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidName { .. }), "{err}");
    let err = ca
        .sign_csr(&csr_pem, Role::Node, "node-1", &["bad name".into()])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid subject alternative name \"bad name\": must be an IP address or a DNS name"
    );
}

#[test]
fn files_are_saved_with_modes_and_load_back() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ClusterCa::generate("test").unwrap();
    // A pre-existing, too open key file gets 0600 too.
    std::fs::write(dir.path().join("ca.key"), "old").unwrap();
    std::fs::set_permissions(
        dir.path().join("ca.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    ca.save(dir.path()).unwrap();
    let mode = |f: &str| {
        std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca.key"), 0o600);
    assert_eq!(mode("ca.crt"), 0o644);
    let loaded = ClusterCa::load(dir.path()).unwrap();
    assert_eq!(loaded.fingerprint(), ca.fingerprint());
    // The loaded CA signs certificates that chain to the original.
    let node = issue(&loaded, Role::Node, "node-1", &["127.0.0.1"]);
    assert_eq!(node.ca_fingerprint().unwrap(), ca.fingerprint());

    node.save(dir.path(), "node").unwrap();
    assert_eq!(mode("node.key"), 0o600);
    assert_eq!(mode("node.crt"), 0o644);
    let back = Identity::load(dir.path(), "node").unwrap();
    assert_eq!(back.cert_pem, node.cert_pem);
    assert_eq!(back.key_pem, node.key_pem);
    // No temporary files are left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["ca.crt", "ca.key", "node.crt", "node.key"]);

    // Mismatched parts are refused.
    let other = ClusterCa::generate("other").unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    other.save(other_dir.path()).unwrap();
    let other_key = std::fs::read_to_string(other_dir.path().join("ca.key")).unwrap();
    let err = ClusterCa::from_pem(ca.cert_pem(), &other_key).unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch(_)), "{err}");
    let admin = issue(&ca, Role::Admin, "alice", &[]);
    let err = Identity::new(
        node.cert_pem.clone(),
        admin.key_pem.clone(),
        node.ca_pem.clone(),
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::KeyMismatch(_)), "{err}");
    let err = Identity::new(
        node.cert_pem.clone(),
        node.key_pem.clone(),
        other.cert_pem().into(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "certificate could not be parsed: the certificate was not issued by the cluster CA"
    );
    let err = ClusterCa::load(&dir.path().join("missing")).unwrap_err();
    assert!(err.to_string().starts_with("reading "), "{err}");
}

#[tokio::test]
async fn api_accepts_cluster_client_certs_and_reads_identity() {
    let p = pki();
    let mut server = TestServer::start(api_server_config(&p.node).unwrap()).await;

    let admin = reqwest_client(p.ca.cert_pem(), Some(&p.admin), TIMEOUT).unwrap();
    assert_eq!(get(&admin, &server.url()).await.unwrap(), "admin:alice");
    assert_eq!(
        server.next_seen().await.unwrap(),
        Some(PeerIdentity {
            role: Role::Admin,
            name: "alice".into()
        })
    );

    let node2 = reqwest_client(p.ca.cert_pem(), Some(&p.node2), TIMEOUT).unwrap();
    assert_eq!(get(&node2, &server.url()).await.unwrap(), "node:node-2");
    server.next_seen().await.unwrap();
}

#[tokio::test]
async fn api_accepts_no_client_cert_without_identity() {
    let p = pki();
    let mut server = TestServer::start(api_server_config(&p.node).unwrap()).await;
    let anonymous = reqwest_client(p.ca.cert_pem(), None, TIMEOUT).unwrap();
    assert_eq!(get(&anonymous, &server.url()).await.unwrap(), "anonymous");
    assert_eq!(server.next_seen().await.unwrap(), None);
}

#[tokio::test]
async fn api_refuses_client_cert_of_another_ca() {
    let p = pki();
    let mut server = TestServer::start(api_server_config(&p.node).unwrap()).await;
    let client = reqwest_client(p.ca.cert_pem(), Some(&p.foreign), TIMEOUT).unwrap();
    let err = get(&client, &server.url()).await.unwrap_err();
    let seen = server.next_seen().await.unwrap_err();
    assert!(
        seen.contains("UnknownIssuer"),
        "server: {seen}; client: {err}"
    );
}

#[tokio::test]
async fn raft_requires_a_node_cert_of_the_cluster() {
    let p = pki();
    let mut server = TestServer::start(raft_server_config(&p.node).unwrap()).await;

    let node2 = reqwest_client(p.ca.cert_pem(), Some(&p.node2), TIMEOUT).unwrap();
    assert_eq!(get(&node2, &server.url()).await.unwrap(), "node:node-2");
    server.next_seen().await.unwrap();

    let anonymous = reqwest_client(p.ca.cert_pem(), None, TIMEOUT).unwrap();
    let err = get(&anonymous, &server.url()).await.unwrap_err();
    let seen = server.next_seen().await.unwrap_err();
    assert!(
        seen.contains("peer sent no certificates"),
        "server: {seen}; client: {err}"
    );

    let foreign = reqwest_client(p.ca.cert_pem(), Some(&p.foreign), TIMEOUT).unwrap();
    let err = get(&foreign, &server.url()).await.unwrap_err();
    let seen = server.next_seen().await.unwrap_err();
    assert!(
        seen.contains("UnknownIssuer"),
        "server: {seen}; client: {err}"
    );

    let admin = reqwest_client(p.ca.cert_pem(), Some(&p.admin), TIMEOUT).unwrap();
    let err = get(&admin, &server.url()).await.unwrap_err();
    let seen = server.next_seen().await.unwrap_err();
    assert!(
        seen.contains("Raft RPC accepts only node certificates"),
        "server: {seen}; client: {err}"
    );
}

#[tokio::test]
async fn clients_trust_only_the_cluster_ca() {
    let p = pki();
    let mut server = TestServer::start(api_server_config(&p.foreign).unwrap()).await;
    let client = reqwest_client(p.ca.cert_pem(), None, TIMEOUT).unwrap();
    let err = get(&client, &server.url()).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(server.next_seen().await.is_err());
}

#[tokio::test]
async fn pinned_client_accepts_the_token_ca_only() {
    let p = pki();
    let mut server = TestServer::start(api_server_config(&p.node).unwrap()).await;
    let pinned = pinned_reqwest_client(&p.ca.fingerprint(), TIMEOUT).unwrap();
    assert_eq!(get(&pinned, &server.url()).await.unwrap(), "anonymous");
    server.next_seen().await.unwrap();
    // Also by name (the node certificate has a DNS SAN "localhost").
    let url = format!("https://localhost:{}/", server.addr.port());
    assert_eq!(get(&pinned, &url).await.unwrap(), "anonymous");
    server.next_seen().await.unwrap();

    // A server of another cluster: refused, with the reason.
    let mut foreign = TestServer::start(api_server_config(&p.foreign).unwrap()).await;
    let err = get(&pinned, &foreign.url()).await.unwrap_err();
    assert!(err.contains(CA_MISMATCH), "{err}");
    assert!(foreign.next_seen().await.is_err());

    // The right CA, but the certificate is not valid for the address: refused.
    let elsewhere = issue(&p.ca, Role::Node, "node-9", &["10.9.9.9"]);
    let mut server = TestServer::start(api_server_config(&elsewhere).unwrap()).await;
    let err = get(&pinned, &server.url()).await.unwrap_err();
    assert!(err.contains("certificate not valid for name"), "{err}");
    assert!(server.next_seen().await.is_err());

    assert!(matches!(
        pinned_reqwest_client("abcd", TIMEOUT),
        Err(PkiError::InvalidFingerprint(_))
    ));
    assert!(pinned_client_config(&"zz".repeat(32)).is_err());
}

#[tokio::test]
async fn tokio_rustls_client_negotiates_alpn_and_server_sees_node() {
    let p = pki();
    let mut server = TestServer::start(api_server_config(&p.node).unwrap()).await;
    let mut config = Arc::unwrap_or_clone(client_config(p.ca.cert_pem(), Some(&p.node2)).unwrap());
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    tls.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut response = String::new();
    tls.read_to_string(&mut response).await.unwrap();
    assert!(response.ends_with("node:node-2"), "{response}");
    assert_eq!(
        server.next_seen().await.unwrap(),
        Some(PeerIdentity {
            role: Role::Node,
            name: "node-2".into()
        })
    );
}

#[test]
fn the_ca_key_sealed_with_the_cluster_key_opens_only_with_it() {
    let p = pki();
    let key = ClusterKey::generate();
    let sealed = key.seal_ca(&p.ca).unwrap();
    assert!(sealed.starts_with("v1:"), "{sealed}");
    // The sealed text does not carry the key in clear.
    let key_body: String =
        p.ca.key_pem()
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
    assert!(!sealed.contains(&key_body[..20]));
    // Two seals of the same key differ (a fresh nonce each time).
    assert_ne!(sealed, key.seal_ca(&p.ca).unwrap());

    // Opened with the right key: a CA that signs certificates the cluster accepts.
    let opened = key.open_ca(p.ca.cert_pem(), &sealed).unwrap();
    assert_eq!(opened.fingerprint(), p.ca.fingerprint());
    let node = issue(&opened, Role::Node, "node-9", &["127.0.0.1"]);
    assert_eq!(node.ca_fingerprint().unwrap(), p.ca.fingerprint());

    // Another cluster key, another CA's certificate, or an altered text: refused.
    let other = ClusterKey::generate();
    let err = other.open_ca(p.ca.cert_pem(), &sealed).unwrap_err();
    assert!(err.to_string().contains("does not open"), "{err}");
    let foreign = ClusterCa::generate("other").unwrap();
    assert!(key.open_ca(foreign.cert_pem(), &sealed).is_err());
    let mut altered = sealed.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
    assert!(
        key.open_ca(p.ca.cert_pem(), std::str::from_utf8(&altered).unwrap())
            .is_err()
    );
    assert!(key.open_ca(p.ca.cert_pem(), "v1:00").is_err());
    assert!(key.open_ca(p.ca.cert_pem(), "plain").is_err());
}

#[test]
fn the_cluster_key_text_and_file_round_trip_and_debug_hides_it() {
    let key = ClusterKey::generate();
    let text = key.to_text();
    assert!(
        text.starts_with("SMRKEY-1-") && text.len() == 9 + 64,
        "{text}"
    );
    assert_eq!(ClusterKey::from_text(&format!("  {text}\n")).unwrap(), key);
    assert!(ClusterKey::from_text("SMRKEY-1-abcd").is_err());
    assert!(ClusterKey::from_text(&text[9..]).is_err());
    assert_eq!(format!("{key:?}"), "ClusterKey(***)");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pki").join(CLUSTER_KEY_FILE);
    key.save(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(ClusterKey::load(&path).unwrap(), key);
}

#[test]
fn a_short_lifetime_is_renewed_at_two_thirds() {
    let p = pki();
    let (key_pem, csr) = new_key_and_csr(Role::Node, "node-1", &[]).unwrap();
    let cert =
        p.ca.sign_csr_valid_for(&csr, Role::Node, "node-1", &[], Duration::from_secs(90))
            .unwrap();
    Identity::new(cert.clone(), key_pem, p.ca.cert_pem().to_owned()).unwrap();
    let (nb, na) = validity(&cert).unwrap();
    // Backdated by a tenth of the lifetime (9 s), not an hour.
    assert_eq!(na.duration_since(nb).unwrap(), Duration::from_secs(99));
    assert_eq!(
        renew_at(nb, na).duration_since(nb).unwrap(),
        Duration::from_secs(66)
    );
    // The default lifetime: a year, backdated an hour.
    let (nb, na) = validity(&p.node.cert_pem).unwrap();
    assert_eq!(
        na.duration_since(nb).unwrap(),
        LEAF_VALIDITY + Duration::from_secs(3600)
    );
}

/// The certificate a server presented on a fresh connection (tokio-rustls client).
async fn presented(server: &TestServer, ca_pem: &str) -> Vec<u8> {
    let config = client_config(ca_pem, None).unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    tls.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let mut response = String::new();
    let _ = tls.read_to_string(&mut response).await;
    der
}

#[tokio::test]
async fn a_replaced_live_identity_is_presented_by_servers_and_clients_from_the_next_handshake() {
    let p = pki();
    let renewed = issue(&p.ca, Role::Node, "node-1", &["127.0.0.1", "localhost"]);
    assert_ne!(renewed.cert_pem, p.node.cert_pem);

    // Server side: the API server presents the renewed certificate, without a new config.
    let live = LiveIdentity::new(p.node.clone()).unwrap();
    let mut server = TestServer::start(api_server_config_live(&live).unwrap()).await;
    assert_eq!(
        presented(&server, p.ca.cert_pem()).await,
        parse(&p.node.cert_pem)
    );
    let _ = server.next_seen().await;
    live.replace(renewed.clone()).unwrap();
    assert_eq!(
        presented(&server, p.ca.cert_pem()).await,
        parse(&renewed.cert_pem)
    );
    let _ = server.next_seen().await;
    assert_eq!(live.get().cert_pem, renewed.cert_pem);

    // Client side: the same reqwest client presents the new certificate on its next connection
    // (the test server closes every connection after one answer).
    let client_live = LiveIdentity::new(p.node2.clone()).unwrap();
    let client = reqwest_client_live(&client_live, TIMEOUT).unwrap();
    assert_eq!(get(&client, &server.url()).await.unwrap(), "node:node-2");
    let _ = server.next_seen().await;
    let node3 = issue(&p.ca, Role::Node, "node-3", &["127.0.0.1"]);
    client_live.replace(node3).unwrap();
    assert_eq!(get(&client, &server.url()).await.unwrap(), "node:node-3");

    // A Raft server on a live identity still refuses admins.
    let mut raft = TestServer::start(raft_server_config_live(&live).unwrap()).await;
    let admin = reqwest_client(p.ca.cert_pem(), Some(&p.admin), TIMEOUT).unwrap();
    assert!(get(&admin, &raft.url()).await.is_err());
    assert!(raft.next_seen().await.is_err());
}

/// A renewal replaces `node.key` and `node.crt` together. A crash between any two steps of
/// the replacement leaves files that the next load turns into one whole pair, old or new: never
/// the new key with the old certificate (which the agent would refuse to start with).
#[test]
fn a_key_and_certificate_pair_survives_a_crash_at_any_step_of_its_replacement() {
    let ca = ClusterCa::generate("test").unwrap();
    let old = issue(&ca, Role::Node, "node-1", &["127.0.0.1"]);
    let new = issue(&ca, Role::Node, "node-1", &["127.0.0.1"]);
    let names = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let write = |dir: &std::path::Path, name: &str, text: &str| {
        std::fs::write(dir.join(name), text).unwrap();
    };
    // (files written after the old pair was saved, the pair the load must give)
    let crashes: [(&[(&str, &str)], &Identity); 4] = [
        // The new key written, not yet its certificate.
        (&[("node.key.next", &new.key_pem)], &old),
        // Both written, nothing renamed.
        (
            &[
                ("node.key.next", &new.key_pem),
                ("node.crt.next", &new.cert_pem),
            ],
            &new,
        ),
        // The key renamed, not yet the certificate.
        (
            &[("node.key", &new.key_pem), ("node.crt.next", &new.cert_pem)],
            &new,
        ),
        // Done.
        (
            &[("node.key", &new.key_pem), ("node.crt", &new.cert_pem)],
            &new,
        ),
    ];
    for (step, (files, want)) in crashes.iter().enumerate() {
        let dir = tempfile::tempdir().unwrap();
        old.save(dir.path(), "node").unwrap();
        for (name, text) in *files {
            write(dir.path(), name, text);
        }
        let loaded = Identity::load(dir.path(), "node")
            .unwrap_or_else(|e| panic!("crash after step {step}: {e}"));
        assert_eq!(loaded.key_pem, want.key_pem, "crash after step {step}");
        assert_eq!(loaded.cert_pem, want.cert_pem, "crash after step {step}");
        assert_eq!(
            names(dir.path()),
            ["ca.crt", "node.crt", "node.key"],
            "crash after step {step}"
        );
    }
    // An uninterrupted save leaves no `.next` file either.
    let dir = tempfile::tempdir().unwrap();
    old.save(dir.path(), "node").unwrap();
    new.save(dir.path(), "node").unwrap();
    assert_eq!(names(dir.path()), ["ca.crt", "node.crt", "node.key"]);
    assert_eq!(
        Identity::load(dir.path(), "node").unwrap().cert_pem,
        new.cert_pem
    );
}

#[test]
fn secret_values_seal_deterministically_and_open_only_with_their_key_and_place() {
    let key = ClusterKey::generate();
    let sealed = key.seal_value("app/db:password", "hunter2-distinctive");
    assert!(crate::is_sealed_value(&sealed), "{sealed}");
    assert!(!sealed.contains("hunter2"), "{sealed}");
    // The same value at the same place seals to the same text (re-applies stay no-ops)...
    assert_eq!(
        sealed,
        key.seal_value("app/db:password", "hunter2-distinctive")
    );
    // ...another value or another place to another one.
    assert_ne!(
        sealed,
        key.seal_value("app/db:password", "hunter3-distinctive")
    );
    assert_ne!(sealed, key.seal_value("app/db:user", "hunter2-distinctive"));
    assert_eq!(
        key.open_value("app/db:password", &sealed).unwrap(),
        "hunter2-distinctive"
    );
    assert_eq!(
        key.open_value("a/b:c", &key.seal_value("a/b:c", ""))
            .unwrap(),
        ""
    );

    // Another key, another place, an altered or malformed text: refused.
    let err = ClusterKey::generate()
        .open_value("app/db:password", &sealed)
        .unwrap_err();
    assert!(err.to_string().contains("does not open"), "{err}");
    assert!(key.open_value("app/db:user", &sealed).is_err());
    let mut altered = sealed.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'0' { b'1' } else { b'0' };
    assert!(
        key.open_value("app/db:password", std::str::from_utf8(&altered).unwrap())
            .is_err()
    );
    assert!(
        key.open_value("app/db:password", "smr-sealed:v1:00")
            .is_err()
    );
    assert!(key.open_value("app/db:password", "plain").is_err());
}

/// A CA rotation: the new CA, its certificate cross-signed by the old one, and a node's
/// identity while it runs (leaf of the new CA + cross certificate; trusting both CAs).
struct Rotation {
    old: ClusterCa,
    new: ClusterCa,
    cross: String,
}

fn rotation() -> Rotation {
    install_crypto_provider();
    let old = ClusterCa::generate("test").unwrap();
    let new = old.generate_successor().unwrap();
    let cross = old.cross_sign(&new).unwrap();
    Rotation { old, new, cross }
}

impl Rotation {
    /// A node of the new CA as it runs during the rotation (`with_cross`) or without the
    /// cross-signed certificate, trusting `roots`.
    fn node(&self, name: &str, with_cross: bool, roots: &[&ClusterCa]) -> Identity {
        let sans = vec!["127.0.0.1".to_string(), "localhost".to_string()];
        let (key_pem, csr) = new_key_and_csr(Role::Node, name, &sans).unwrap();
        let leaf = self.new.sign_csr(&csr, Role::Node, name, &sans).unwrap();
        let cert_pem = if with_cross {
            join_pem(&[&leaf, &self.cross])
        } else {
            leaf
        };
        let roots: Vec<&str> = roots.iter().map(|c| c.cert_pem()).collect();
        Identity::new(cert_pem, key_pem, join_pem(&roots)).unwrap()
    }
}

#[test]
fn the_successor_ca_is_a_new_key_and_name_of_the_same_cluster_and_the_cross_certificate_links_them()
{
    let r = rotation();
    assert_ne!(r.new.fingerprint(), r.old.fingerprint());
    let (_, old) = X509Certificate::from_der(r.old.cert_der()).unwrap();
    let (_, new) = X509Certificate::from_der(r.new.cert_der()).unwrap();
    let cross_der = parse(&r.cross);
    let (_, cross) = X509Certificate::from_der(&cross_der).unwrap();
    assert_ne!(new.subject(), old.subject());
    assert_eq!(
        new.subject()
            .iter_organization()
            .next()
            .unwrap()
            .as_str()
            .unwrap(),
        "test"
    );
    // The cross certificate: the new CA's subject and key, issued (signed) by the old CA.
    assert_eq!(cross.subject().as_raw(), new.subject().as_raw());
    assert_eq!(cross.issuer().as_raw(), old.subject().as_raw());
    assert_eq!(cross.public_key().raw, new.public_key().raw);
    cross.verify_signature(Some(old.public_key())).unwrap();
    assert!(cross.is_ca());

    let during = r.node("node-1", true, &[&r.old, &r.new]);
    assert_eq!(during.leaf_ca_fingerprint().unwrap(), r.new.fingerprint());
    assert_eq!(
        during.ca_fingerprints().unwrap(),
        vec![r.old.fingerprint(), r.new.fingerprint()]
    );
    assert_eq!(during.client_chain().unwrap().len(), 2);
    assert_eq!(during.chain().unwrap().len(), 4);
    let before = issue(&r.old, Role::Node, "node-2", &["127.0.0.1"]);
    assert_eq!(before.leaf_ca_fingerprint().unwrap(), r.old.fingerprint());
    // A leaf of the new CA does not pass for one of the old CA without the cross certificate.
    let (key_pem, csr) = new_key_and_csr(Role::Node, "node-3", &[]).unwrap();
    let leaf = r.new.sign_csr(&csr, Role::Node, "node-3", &[]).unwrap();
    assert!(Identity::new(leaf, key_pem, r.old.cert_pem().to_owned()).is_err());
}

#[tokio::test]
async fn a_leaf_of_the_new_ca_verifies_against_the_old_root_through_the_cross_certificate() {
    let r = rotation();
    let old_only = r.old.cert_pem();
    let new_only = r.new.cert_pem();

    // Server side: a rotated node presents [leaf, cross, old CA, new CA].
    let rotated = r.node("node-1", true, &[&r.old, &r.new]);
    let mut server = TestServer::start(api_server_config(&rotated).unwrap()).await;
    for roots in [old_only, new_only] {
        let client = reqwest_client(roots, None, TIMEOUT).unwrap();
        assert_eq!(get(&client, &server.url()).await.unwrap(), "anonymous");
        server.next_seen().await.unwrap();
    }
    // Client side: the same node's client certificate (with the cross certificate) passes a
    // Raft server that trusts only the old CA, and one that trusts only the new CA.
    let old_node = issue(&r.old, Role::Node, "node-2", &["127.0.0.1", "localhost"]);
    let new_node = r.node("node-3", false, &[&r.new]);
    for server_id in [&old_node, &new_node] {
        let mut raft = TestServer::start(raft_server_config(server_id).unwrap()).await;
        let client = reqwest_client(&server_id.ca_pem, Some(&rotated), TIMEOUT).unwrap();
        assert_eq!(get(&client, &raft.url()).await.unwrap(), "node:node-1");
        raft.next_seen().await.unwrap();
    }

    // Without the cross certificate, a peer that trusts only the old CA refuses the leaf,
    // as server and as client.
    let bare = r.node("node-4", false, &[&r.old, &r.new]);
    let mut server = TestServer::start(api_server_config(&bare).unwrap()).await;
    let client = reqwest_client(old_only, None, TIMEOUT).unwrap();
    let err = get(&client, &server.url()).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    assert!(server.next_seen().await.is_err());
    let mut raft = TestServer::start(raft_server_config(&old_node).unwrap()).await;
    let client = reqwest_client(old_only, Some(&bare), TIMEOUT).unwrap();
    assert!(get(&client, &raft.url()).await.is_err());
    let seen = raft.next_seen().await.unwrap_err();
    assert!(seen.contains("UnknownIssuer"), "{seen}");
}

#[tokio::test]
async fn live_servers_and_clients_pick_up_new_trust_roots_at_the_next_handshake() {
    let r = rotation();
    let old_admin = issue(&r.old, Role::Admin, "alice", &[]);
    let bare_new = r.node("node-2", false, &[&r.new]);
    let before = issue(&r.old, Role::Node, "node-1", &["127.0.0.1", "localhost"]);
    let live = LiveIdentity::new(before).unwrap();
    let mut server = TestServer::start(raft_server_config_live(&live).unwrap()).await;
    let mut api = TestServer::start(api_server_config_live(&live).unwrap()).await;
    let new_client = reqwest_client(r.new.cert_pem(), Some(&bare_new), TIMEOUT).unwrap();
    // An admin of the old CA that trusts both CAs (as a context written during the rotation).
    let both = join_pem(&[r.old.cert_pem(), r.new.cert_pem()]);
    let old_client = reqwest_client(&both, Some(&old_admin), TIMEOUT).unwrap();

    // Before: the old CA only. A new-CA leaf without the cross certificate is refused.
    assert!(get(&new_client, &server.url()).await.is_err());
    assert!(server.next_seen().await.is_err());

    // During: both CAs trusted, the new leaf presented with the cross certificate.
    live.replace(r.node("node-1", true, &[&r.old, &r.new]))
        .unwrap();
    assert_eq!(
        get(&new_client, &server.url()).await.unwrap(),
        "node:node-2"
    );
    server.next_seen().await.unwrap();
    assert_eq!(get(&old_client, &api.url()).await.unwrap(), "admin:alice");
    api.next_seen().await.unwrap();

    // After: the new CA only. The old CA's admin is refused at the handshake (its TLS session
    // of before is not resumed).
    live.replace(r.node("node-1", false, &[&r.new])).unwrap();
    assert_eq!(
        get(&new_client, &server.url()).await.unwrap(),
        "node:node-2"
    );
    server.next_seen().await.unwrap();
    let err = get(&old_client, &api.url()).await.unwrap_err();
    let seen = api.next_seen().await.unwrap_err();
    assert!(
        seen.contains("UnknownIssuer"),
        "server: {seen}; client: {err}"
    );

    // The node's own client follows its trust roots too.
    let peer_live = LiveIdentity::new(issue(&r.old, Role::Node, "node-5", &["127.0.0.1"])).unwrap();
    let peer = reqwest_client_live(&peer_live, TIMEOUT).unwrap();
    let err = get(&peer, &api.url()).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");
    let _ = api.next_seen().await;
    peer_live
        .replace(r.node("node-5", true, &[&r.old, &r.new]))
        .unwrap();
    assert_eq!(get(&peer, &api.url()).await.unwrap(), "node:node-5");
}

#[tokio::test]
async fn a_join_token_of_the_old_ca_works_during_a_rotation_and_is_refused_after_it() {
    let r = rotation();
    let pinned_old = pinned_reqwest_client(&r.old.fingerprint(), TIMEOUT).unwrap();
    let pinned_new = pinned_reqwest_client(&r.new.fingerprint(), TIMEOUT).unwrap();
    let during = r.node("node-1", true, &[&r.old, &r.new]);
    let mut server = TestServer::start(api_server_config(&during).unwrap()).await;
    for client in [&pinned_old, &pinned_new] {
        assert_eq!(get(client, &server.url()).await.unwrap(), "anonymous");
        server.next_seen().await.unwrap();
    }
    let after = r.node("node-1", false, &[&r.new]);
    let mut server = TestServer::start(api_server_config(&after).unwrap()).await;
    let err = get(&pinned_old, &server.url()).await.unwrap_err();
    assert!(err.contains(CA_MISMATCH), "{err}");
    let _ = server.next_seen().await;
    assert_eq!(get(&pinned_new, &server.url()).await.unwrap(), "anonymous");
}

/// A TLS server that keeps each connection open (HTTP/1.1 keep-alive) and answers every request
/// with the identity of the connection's client certificate and the connection's number.
async fn keep_alive_server(config: Arc<ServerConfig>) -> (String, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}/",
        listener.local_addr().unwrap().port()
    );
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let task = tokio::spawn(async move {
        for connection in 1.. {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let peer = tls.get_ref().1.peer_certificates().and_then(peer_identity);
                let body = match peer {
                    Some(p) => format!("{}:{} #{connection}", p.role, p.name),
                    None => format!("anonymous #{connection}"),
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        head.drain(..end + 4);
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if tls.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    (url, task)
}

#[tokio::test]
async fn a_peer_client_presents_a_replaced_identity_at_once_despite_pooled_connections() {
    let p = pki();
    let server_live = LiveIdentity::new(p.node.clone()).unwrap();
    let (url, task) = keep_alive_server(api_server_config_live(&server_live).unwrap()).await;
    let live = LiveIdentity::new(p.node2.clone()).unwrap();
    let peers = PeerClient::live(&live, TIMEOUT).unwrap();

    // Requests reuse the pooled connection.
    assert_eq!(get(&peers.client(), &url).await.unwrap(), "node:node-2 #1");
    assert_eq!(get(&peers.client(), &url).await.unwrap(), "node:node-2 #1");
    // The certificate is replaced (a renewal; here a new name to tell them apart): the next
    // request goes over a new connection that presents it.
    let before = peers.client();
    live.replace(issue(&p.ca, Role::Node, "node-3", &["127.0.0.1"]))
        .unwrap();
    assert_eq!(get(&peers.client(), &url).await.unwrap(), "node:node-3 #2");
    assert_eq!(get(&peers.client(), &url).await.unwrap(), "node:node-3 #2");
    // What a client made once would have done: its pooled connection still presents the old
    // certificate.
    assert_eq!(get(&before, &url).await.unwrap(), "node:node-2 #1");
    // A fixed client (plain, as in tests) is the same client every time.
    let fixed = PeerClient::from(reqwest_client_live(&live, TIMEOUT).unwrap());
    assert_eq!(get(&fixed.client(), &url).await.unwrap(), "node:node-3 #3");
    live.replace(p.node2.clone()).unwrap();
    assert_eq!(get(&fixed.client(), &url).await.unwrap(), "node:node-3 #3");
    task.abort();
}
