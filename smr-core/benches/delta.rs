//! What finding the changes between two versions of the state costs ([`ClusterState::delta`]),
//! against the size of the state: after 1 apply and after 100 applies of one 200-byte
//! configuration object each, and between a state and its unrelated copy (what a consumer pays
//! after a snapshot install: a full comparison).
//!
//!     cargo bench -p smr-core --bench delta            # SMR_STATE_SIZES=500,10000 to choose
//!
//! Prints figures; asserts nothing about speed.

use std::time::{Duration, Instant};

use smr_core::state::ClusterState;

mod common;
use common::{command, object};

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn micros(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

fn main() {
    let sizes: Vec<usize> = std::env::var("SMR_STATE_SIZES")
        .unwrap_or_else(|_| "500,10000,50000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("sizes are numbers"))
        .collect();
    println!("ClusterState::delta between versions, 200-byte configuration objects");
    println!(
        "{:>7} {:>14} {:>16} {:>16}",
        "objects", "after 1 apply", "after 100 applies", "unrelated copy"
    );
    for size in sizes {
        let mut op = 0;
        let mut state = ClusterState::default();
        for n in 0..size {
            op += 1;
            state.apply(&command(op, object(n, 0)));
        }
        let (mut one, mut hundred) = (Vec::new(), Vec::new());
        for round in 0..50 {
            let before = state.clone();
            op += 1;
            state.apply(&command(op, object((round * 7919) % size, op)));
            let t = Instant::now();
            let delta = ClusterState::delta(&before, &state);
            one.push(t.elapsed());
            assert_eq!(delta.objects.changed.len(), 1);
            let before = state.clone();
            for i in 0..100 {
                op += 1;
                state.apply(&command(op, object((round * 100 + i) % size, op)));
            }
            let t = Instant::now();
            let delta = ClusterState::delta(&before, &state);
            hundred.push(t.elapsed());
            assert!(!delta.objects.changed.is_empty());
        }
        let copy: ClusterState =
            serde_json::from_str(&serde_json::to_string(&state).expect("serializes"))
                .expect("deserializes");
        let t = Instant::now();
        let delta = ClusterState::delta(&copy, &state);
        let unrelated = t.elapsed();
        assert!(delta.objects.is_empty(), "equal contents: no change");
        println!(
            "{:>7} {:>14} {:>16} {:>16}",
            size,
            micros(median(one)),
            micros(median(hundred)),
            micros(unrelated)
        );
    }
}
