//! Where definitions come from on the command line: paths (files, directories, packs) and
//! `https://` URLs; and the ways a replica may be named.

use std::time::Duration;

use smr_core::definitions::{self, Loader, Object};

/// Largest definition file fetched from a URL (the API's body limit).
pub const MAX_DOWNLOAD_BYTES: usize = definitions::MAX_INPUT_BYTES;

/// One command-line source of definitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(std::path::PathBuf),
    Url(String),
}

impl Source {
    /// `https://...` is a URL; `http://...` is refused (definitions carry secrets and are
    /// applied as they are, so they are not fetched in the clear); anything else is a path.
    pub fn parse(arg: &str) -> Result<Source, String> {
        let lower = arg.to_ascii_lowercase();
        if lower.starts_with("https://") {
            Ok(Source::Url(arg.to_string()))
        } else if lower.starts_with("http://") {
            Err(format!(
                "{arg}: plain http:// is refused (definitions are applied as they are, and may carry secrets); use https://"
            ))
        } else {
            Ok(Source::Path(arg.into()))
        }
    }
}

/// Fetches `url` (https only), following up to 5 redirects that stay on https, refusing a body
/// larger than `cap` bytes (by its announced length, or once that many bytes have arrived).
/// `extra_ca_pem` is trusted besides the system's roots (e.g. an internal server's CA).
pub async fn download(url: &str, extra_ca_pem: Option<&str>, cap: usize) -> Result<String, String> {
    use futures::StreamExt as _;
    let fail = |what: String| format!("{url}: {what}");
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .connect_timeout(Duration::from_secs(10))
        .https_only(true)
        .redirect(reqwest::redirect::Policy::limited(5));
    if let Some(pem) = extra_ca_pem {
        let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
            .map_err(|e| format!("--url-ca: not a PEM certificate: {e}"))?;
        if certs.is_empty() {
            return Err("--url-ca: no certificate in the file".into());
        }
        builder = builder.tls_certs_merge(certs);
    }
    let client = builder
        .build()
        .map_err(|e| fail(api_types::client::error_chain(&e)))?;
    let response = client.get(url).send().await.map_err(|e| {
        fail(format!(
            "cannot download: {}",
            api_types::client::error_chain(&e)
        ))
    })?;
    let status = response.status();
    if !status.is_success() {
        return Err(fail(format!("the server answered {status}")));
    }
    if let Some(len) = response.content_length()
        && len > cap as u64
    {
        return Err(fail(format!(
            "{len} bytes is more than the limit of {cap} bytes"
        )));
    }
    let mut body = Vec::new();
    let mut chunks = response.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| {
            fail(format!(
                "download interrupted: {}",
                api_types::client::error_chain(&e)
            ))
        })?;
        if body.len() + chunk.len() > cap {
            return Err(fail(format!("more than the limit of {cap} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).map_err(|_| fail("the file is not UTF-8 text".into()))
}

/// Reads every source: paths through `loader` (packs get its `--set` values), URLs downloaded
/// and parsed as one file each. Checks the loader's `--set` use at the end.
pub async fn load_all(
    sources: &[Source],
    loader: &mut Loader,
    extra_ca_pem: Option<&str>,
) -> Result<Vec<Object>, String> {
    let mut objects = Vec::new();
    for source in sources {
        match source {
            Source::Path(p) => objects.extend(loader.load(p).map_err(|e| e.to_string())?),
            Source::Url(url) => {
                let text = download(url, extra_ca_pem, MAX_DOWNLOAD_BYTES).await?;
                objects.extend(definitions::parse_str(url, &text).map_err(|e| e.to_string())?);
            }
        }
    }
    loader.finish().map_err(|e| e.to_string())?;
    Ok(objects)
}

/// The replica a command names: `GROUP-NAME-N` as it is, or simplecontainer's
/// `containers/GROUP/NAME-N`.
pub fn replica_name(arg: &str) -> Result<String, String> {
    let Some(rest) = arg.strip_prefix("containers/") else {
        return Ok(arg.to_string());
    };
    let bad =
        || format!("{arg:?} is not containers/GROUP/NAME-N (N: the replica's number, from 1)");
    let (group, name_index) = rest.split_once('/').ok_or_else(bad)?;
    let (name, index) = name_index.rsplit_once('-').ok_or_else(bad)?;
    if group.is_empty()
        || name.is_empty()
        || name.contains('/')
        || index.is_empty()
        || !index.bytes().all(|b| b.is_ascii_digit())
        || index.starts_with('0')
    {
        return Err(bad());
    }
    Ok(format!("{group}-{name}-{index}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        assert_eq!(
            Source::parse("https://example.test/a.yaml"),
            Ok(Source::Url("https://example.test/a.yaml".into()))
        );
        assert_eq!(Source::parse("defs/"), Ok(Source::Path("defs/".into())));
        assert!(
            Source::parse("http://example.test/a.yaml")
                .unwrap_err()
                .contains("plain http:// is refused")
        );
    }

    #[test]
    fn replica_names() {
        assert_eq!(replica_name("web-nginx-2").unwrap(), "web-nginx-2");
        assert_eq!(
            replica_name("containers/web/nginx-2").unwrap(),
            "web-nginx-2"
        );
        assert_eq!(
            replica_name("containers/web/my-app-10").unwrap(),
            "web-my-app-10"
        );
        for bad in [
            "containers/web",
            "containers/web/nginx",
            "containers/web/nginx-",
            "containers/web/nginx-x",
            "containers/web/nginx-0",
            "containers//nginx-1",
            "containers/web/a/b-1",
        ] {
            assert!(replica_name(bad).is_err(), "{bad}");
        }
    }
}
