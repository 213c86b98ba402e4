//! `smrctl apply https://...`: definitions downloaded from a real HTTPS server on loopback whose
//! certificate comes from a throw-away CA, trusted through `--url-ca` (as an internal server's
//! would be). Without that CA the download fails the TLS handshake; bodies over the size cap
//! are refused whether or not the server announces their length.

use std::net::SocketAddr;
use std::sync::Arc;

use pki::{ClusterCa, Identity, Role};
use smrctl::source::{MAX_DOWNLOAD_BYTES, download};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const BUSYBOX: &str = "prefix: simplecontainer.io/v1\nkind: containers\nmeta:\n  group: web\n  name: busybox\nspec:\n  image: busybox\n  tag: latest\n  replicas: 1\n";

struct Server {
    addr: SocketAddr,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers GET /ok.yaml, /big (announced length), /big-stream (no length, connection close),
/// /redirect (to plain http) and anything else with 404.
async fn server() -> Server {
    pki::install_crypto_provider();
    let ca = ClusterCa::generate("download-test").unwrap();
    let (key_pem, csr) =
        pki::new_key_and_csr(Role::Node, "localhost", &["127.0.0.1".into()]).unwrap();
    let cert_pem = ca
        .sign_csr(&csr, Role::Node, "localhost", &["127.0.0.1".into()])
        .unwrap();
    let identity = Identity::new(cert_pem, key_pem, ca.cert_pem().to_string()).unwrap();
    let config = pki::api_server_config(&identity).unwrap();
    let acceptor =
        tokio_rustls::TlsAcceptor::from(Arc::<rustls_config::ServerConfig>::clone(&config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                let big = "#".repeat(MAX_DOWNLOAD_BYTES + 1);
                let reply: Vec<u8> = match path.as_str() {
                    "/ok.yaml" => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{BUSYBOX}",
                        BUSYBOX.len()
                    )
                    .into_bytes(),
                    "/big" => format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        big.len()
                    )
                    .into_bytes(),
                    "/big-stream" => {
                        let mut r = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
                        r.extend_from_slice(big.as_bytes());
                        r
                    }
                    "/redirect" => b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/x.yaml\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                };
                let _ = tls.write_all(&reply).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    Server {
        addr,
        ca_pem: ca.cert_pem().to_string(),
        task,
    }
}

mod rustls_config {
    pub use tokio_rustls::rustls::ServerConfig;
}

#[tokio::test]
async fn downloads_over_https_with_a_trusted_ca() {
    let s = server().await;
    let url = format!("https://127.0.0.1:{}/ok.yaml", s.addr.port());
    let text = download(&url, Some(&s.ca_pem), MAX_DOWNLOAD_BYTES)
        .await
        .unwrap();
    assert_eq!(text, BUSYBOX);
    let objects = smr_core::definitions::parse_str(&url, &text).unwrap();
    assert_eq!(objects[0].key().to_string(), "containers/web/busybox");
}

#[tokio::test]
async fn an_untrusted_certificate_fails() {
    let s = server().await;
    let url = format!("https://127.0.0.1:{}/ok.yaml", s.addr.port());
    let e = download(&url, None, MAX_DOWNLOAD_BYTES).await.unwrap_err();
    assert!(e.starts_with(&format!("{url}: cannot download: ")), "{e}");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test]
async fn bodies_over_the_cap_are_refused() {
    let s = server().await;
    let base = format!("https://127.0.0.1:{}", s.addr.port());
    let e = download(&format!("{base}/big"), Some(&s.ca_pem), MAX_DOWNLOAD_BYTES)
        .await
        .unwrap_err();
    assert!(
        e.ends_with(&format!(
            "{} bytes is more than the limit of {MAX_DOWNLOAD_BYTES} bytes",
            MAX_DOWNLOAD_BYTES + 1
        )),
        "{e}"
    );
    let e = download(
        &format!("{base}/big-stream"),
        Some(&s.ca_pem),
        MAX_DOWNLOAD_BYTES,
    )
    .await
    .unwrap_err();
    assert!(
        e.ends_with(&format!(
            "more than the limit of {MAX_DOWNLOAD_BYTES} bytes"
        )),
        "{e}"
    );
}

#[tokio::test]
async fn errors_and_redirects_to_plain_http() {
    let s = server().await;
    let base = format!("https://127.0.0.1:{}", s.addr.port());
    let e = download(
        &format!("{base}/missing.yaml"),
        Some(&s.ca_pem),
        MAX_DOWNLOAD_BYTES,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e,
        format!("{base}/missing.yaml: the server answered 404 Not Found")
    );
    let e = download(
        &format!("{base}/redirect"),
        Some(&s.ca_pem),
        MAX_DOWNLOAD_BYTES,
    )
    .await
    .unwrap_err();
    assert!(e.contains("cannot download"), "{e}");
    // The binary: a plain http:// URL is refused before anything is fetched (exit 3).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_smrctl"))
        .args(["apply", "--dry-run", "http://127.0.0.1:9/a.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("plain http:// is refused"));
}
