//! DNS request packets, as a container or anyone on the `cluster` network sends them: no packet
//! panics the server; every answer is a well-formed DNS response to the request's id.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;

use dns::{RecordSet, answer_packet};
use libfuzzer_sys::fuzz_target;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

fn records() -> RecordSet {
    RecordSet::from_entries([
        (
            "cluster.web.web-web-1.private",
            vec![Ipv4Addr::new(10, 10, 1, 5)],
        ),
        (
            "cluster.web.web.private",
            vec![Ipv4Addr::new(10, 10, 1, 5), Ipv4Addr::new(10, 10, 2, 7)],
        ),
        (
            "smr-agent-1.node.private",
            vec![Ipv4Addr::new(192, 168, 1, 10)],
        ),
    ])
}

fuzz_target!(|data: &[u8]| {
    // The name helpers take any text without panicking.
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(name) = dns::records::normalize_name(text) {
            assert_eq!(
                dns::records::normalize_name(&name).as_deref(),
                Some(name.as_str())
            );
        }
    }
    let Some(answer) = runtime().block_on(answer_packet(records(), 5, data)) else {
        return;
    };
    assert!(answer.len() >= 12, "a response has a header");
    assert_eq!(
        &answer[..2],
        &data[..2],
        "the response carries the request's id"
    );
    assert_ne!(answer[2] & 0x80, 0, "the QR bit of a response is set");
});
