//! `smr_certificate_expiry_timestamp_seconds`: when this node's own certificates expire, read
//! at scrape time from the certificate it presents now (renewed ones included) and the CA.

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;
use std::time::UNIX_EPOCH;

use super::Labels;
use crate::node::Node;

/// `(certificate, notAfter in seconds since the epoch)`: `node` (this node's certificate) and
/// `ca` (the cluster CA), as this node presents them now.
pub fn gather(node: &Node) -> Vec<(&'static str, f64)> {
    let Some(live) = node.live_identity() else {
        return Vec::new();
    };
    let identity = live.get();
    let mut out = Vec::new();
    for (which, pem) in [("node", &identity.cert_pem), ("ca", &identity.ca_pem)] {
        if let Ok((_, not_after)) = crate::pki::validity(pem)
            && let Ok(at) = not_after.duration_since(UNIX_EPOCH)
        {
            out.push((which, at.as_secs_f64()));
        }
    }
    out
}

/// The series of [`gather`]'s answer, in a registry of their own.
pub fn render(expiries: &[(&'static str, f64)]) -> Registry {
    let mut r = Registry::with_prefix("smr");
    let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (which, at) in expiries {
        family
            .get_or_create(&vec![("certificate", which.to_string())])
            .set(*at);
    }
    r.register_with_unit(
        "certificate_expiry_timestamp",
        "When this node's certificate (certificate=\"node\", renewed at 2/3 of its lifetime) and \
         the cluster CA (certificate=\"ca\") expire (Unix time)",
        Unit::Seconds,
        family,
    );
    r
}

#[cfg(test)]
mod tests {
    #[test]
    fn expiries_render_as_one_gauge_per_certificate() {
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(
            &mut text,
            &super::render(&[("node", 1_800_000_000.0), ("ca", 2_000_000_000.0)]),
        )
        .expect("encodes");
        assert!(text.contains("# TYPE smr_certificate_expiry_timestamp_seconds gauge"));
        assert!(
            text.contains(
                r#"smr_certificate_expiry_timestamp_seconds{certificate="node"} 1800000000.0"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"smr_certificate_expiry_timestamp_seconds{certificate="ca"} 2000000000.0"#
            ),
            "{text}"
        );
    }
}
