#!/usr/bin/env bash
# The simulator at a chosen size (issue 14): one real agent (the leader, control plane only, on
# loopback) and NODES simulated nodes in one process that join through its API, heartbeat, and
# run what they are assigned through the real node reconciler on an engine in memory.
#
#   bench/scale.sh [--store etcd] NODES REPLICAS [KILLED]
#                                  (defaults: 100 nodes, 5000 replicas, 10 killed; store: raft)
#
# Env: PROFILE (cargo profile, default release; `dev` skips the release build).
#
# Runs smr/tests/simulator.rs (the CI test, which asserts correctness) at that size and prints
# its figures: placements/s and time to all running, Raft entries/s while idle (heartbeats
# only), the leader's RSS, and how long the killed nodes' replicas took to run elsewhere (node
# timeout 5 s), the leader's CPU, replica reports per log entry, and the p50/p99 of one
# `configuration` apply at that size. REPLICAS come in objects of NODES replicas each, spread
# uniform. The agent and the simulated nodes share this machine's cores. `--store etcd`: the
# agent keeps its state in a real etcd (one member on loopback, the `etcd` binary) instead of
# its own Raft log.
set -euo pipefail

STORE=raft
if [[ "${1:-}" == --store ]]; then
    STORE=${2:-}
    shift 2 || true
elif [[ "${1:-}" == --store=* ]]; then
    STORE=${1#--store=}
    shift
fi
[[ "$STORE" == raft || "$STORE" == etcd ]] || {
    echo "bench/scale.sh: --store takes raft or etcd, not '$STORE'" >&2
    exit 2
}
NODES=${1:-100}
REPLICAS=${2:-5000}
KILLED=${3:-10}
PROFILE=${PROFILE:-release}
for n in "$NODES" "$REPLICAS" "$KILLED"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "usage: bench/scale.sh NODES REPLICAS [KILLED] (numbers)" >&2; exit 2; }
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
SMR_SIM_NODES=$NODES SMR_SIM_REPLICAS=$REPLICAS SMR_SIM_KILL=$KILLED SMR_SIM_STORE=$STORE \
    cargo test --profile "$PROFILE" -p smr --test simulator -- --nocapture 2>&1 |
    grep -E '^(test result|[0-9]+ (simulated|replicas|nodes)|idle:|reports:|apply at|thread|Error)'
