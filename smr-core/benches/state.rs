//! What one apply of the replicated state machine costs against the size of the state.
//!
//! For each size (500, 10,000 and 50,000 `configuration` objects of about 200 bytes), in a fresh
//! process so that memory figures are its own: builds the state by applying the objects one
//! command each (as clients do, so the dedup window fills as it does in a cluster), then times
//! updates of existing objects, one command each:
//!
//! - `alone`: `ClusterState::apply` on a state nobody else holds;
//! - `reader`: the state behind an `Arc`, as the agent keeps it, while a reader holds the
//!   previous version (as the agent's loops do when a change wakes them): the write path is
//!   `Arc::make_mut(..).apply(..)`, which has to copy whatever the reader shares.
//!
//!     cargo bench -p smr-core --bench state            # SMR_STATE_SIZES=500,10000 to choose
//!
//! With `SMR_STATE_WINDOW=full`, 10,000 no-op commands are applied before the timed updates, so
//! the dedup window is full at every size, as in a cluster that has taken that many writes (by
//! default it holds what building the state put there: fewer entries for smaller states).
//! With `SMR_STATE_DEFINITIONS=N`, N `containers` definitions (each reading a configuration of
//! its own, none of the benchmark's) are in the state too.
//!
//! Prints figures; asserts nothing about speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use smr_core::state::{ClusterState, Command, Op};

mod common;
use common::{command, object};

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn micros(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

/// `VmRSS` and `VmHWM` of this process, in MiB.
fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
            .unwrap_or(0.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Runs one size in this process and prints its row.
fn one_size(size: usize) {
    let (rss_start, _) = rss_mib();
    let mut op = 0;
    let mut state = ClusterState::default();
    let build = Instant::now();
    for n in 0..size {
        op += 1;
        state.apply(&command(op, object(n, 0)));
    }
    let build = build.elapsed();
    let definitions: usize = std::env::var("SMR_STATE_DEFINITIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    for d in 0..definitions {
        op += 1;
        let yaml = format!(
            "kind: containers\nprefix: simplecontainer.io/v1\nmeta: {{group: bench, name: web-{d}}}\n\
             spec:\n  image: busybox\n  replicas: 2\n  configurations: [{{group: bench, name: web-{d}-settings}}]\n"
        );
        let objects =
            smr_core::definitions::parse_str("bench.yaml", &yaml).expect("valid definition");
        state.apply(&Command {
            op_id: format!("{op:032x}"),
            at_ms: 1_700_000_000_000 + op as u64,
            op: Op::Apply {
                objects,
                owner: None,
            },
        });
    }
    if std::env::var("SMR_STATE_WINDOW").as_deref() == Ok("full") {
        for _ in 0..10_000 {
            op += 1;
            state.apply(&Command {
                op_id: format!("{op:032x}"),
                at_ms: 1_700_000_000_000 + op as u64,
                op: Op::Noop,
            });
        }
    }
    let serialized = serde_json::to_vec(&state).expect("state serializes").len();
    let (rss_built, _) = rss_mib();

    let rounds = match size {
        s if s >= 50_000 => 300,
        s if s >= 10_000 => 1_000,
        _ => 2_000,
    };
    let mut alone = Vec::with_capacity(rounds);
    for i in 0..rounds {
        op += 1;
        let cmd = command(op, object((i * 7919) % size, i + 1));
        let t = Instant::now();
        state.apply(&cmd);
        alone.push(t.elapsed());
    }
    let mut shared = Arc::new(state);
    let mut reader_times = Vec::with_capacity(rounds);
    for i in 0..rounds {
        op += 1;
        let cmd = command(op, object((i * 7919) % size, rounds + i + 1));
        let reader = Arc::clone(&shared);
        let t = Instant::now();
        Arc::make_mut(&mut shared).apply(&cmd);
        reader_times.push(t.elapsed());
        drop(reader);
    }
    let (rss_end, hwm) = rss_mib();
    alone.sort();
    reader_times.sort();
    println!(
        "{:>7} {:>10} {:>10} {:>11} {:>11} {:>11} {:>11} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
        size,
        micros(build / size as u32),
        micros(percentile(&alone, 0.5)),
        micros(percentile(&alone, 0.99)),
        micros(percentile(&reader_times, 0.5)),
        micros(percentile(&reader_times, 0.99)),
        micros(percentile(&reader_times, 1.0)),
        serialized as f64 / (1024.0 * 1024.0),
        rss_built - rss_start,
        rss_end - rss_start,
        hwm,
    );
}

fn main() {
    if let Ok(size) = std::env::var("SMR_STATE_ONE_SIZE") {
        one_size(size.parse().expect("a size"));
        return;
    }
    let sizes: Vec<usize> = std::env::var("SMR_STATE_SIZES")
        .unwrap_or_else(|_| "500,10000,50000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes are numbers"))
        .collect();
    println!(
        "state machine apply, one 200-byte configuration object per command; dedup window: {}; \
         containers definitions: {}",
        match std::env::var("SMR_STATE_WINDOW").as_deref() {
            Ok("full") => "full",
            _ => "as built",
        },
        std::env::var("SMR_STATE_DEFINITIONS").unwrap_or_else(|_| "0".into())
    );
    println!(
        "{:>7} {:>10} {:>10} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9} {:>9} {:>9}",
        "objects",
        "build/obj",
        "alone p50",
        "alone p99",
        "reader p50",
        "reader p99",
        "reader max",
        "json MiB",
        "rss+ MiB",
        "rss+ end",
        "hwm MiB"
    );
    let exe = std::env::current_exe().expect("own path");
    for size in sizes {
        // A fresh process per size: its memory figures are its own.
        let status = std::process::Command::new(&exe)
            .env("SMR_STATE_ONE_SIZE", size.to_string())
            .status()
            .expect("bench runs");
        assert!(status.success(), "size {size} failed");
    }
}
