//! Query counters: every answer the servers of this process send, by response code.
//!
//! The counters are process-wide (one agent per process) and read with [`query_counts`]; the
//! agent turns them into its `smr_dns_queries_total` metric, so this crate needs no metrics
//! library.

use std::sync::atomic::{AtomicU64, Ordering};

use hickory_proto::op::ResponseCode;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};

/// The results counted, in the order of [`query_counts`].
pub const RESULTS: [&str; 7] = [
    "noerror", "nxdomain", "servfail", "refused", "formerr", "notimp", "other",
];

static COUNTS: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

fn slot(code: ResponseCode) -> usize {
    match code {
        ResponseCode::NoError => 0,
        ResponseCode::NXDomain => 1,
        ResponseCode::ServFail => 2,
        ResponseCode::Refused => 3,
        ResponseCode::FormErr => 4,
        ResponseCode::NotImp => 5,
        _ => 6,
    }
}

/// Queries answered since the process started, by result (`noerror`, `nxdomain`, ...).
pub fn query_counts() -> [(&'static str, u64); 7] {
    let mut out = [("", 0); 7];
    for (i, name) in RESULTS.iter().enumerate() {
        out[i] = (name, COUNTS[i].load(Ordering::Relaxed));
    }
    out
}

/// A request handler that counts the answers of the one it wraps.
pub(crate) struct Counted<H>(pub H);

#[async_trait::async_trait]
impl<H: RequestHandler> RequestHandler for Counted<H> {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let info = self
            .0
            .handle_request::<R, T>(request, response_handle)
            .await;
        COUNTS[slot(info.response_code)].fetch_add(1, Ordering::Relaxed);
        info
    }
}
