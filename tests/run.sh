#!/usr/bin/env bash
# The project's test command (README.md): installs what the suites need, checks formatting and
# lints, builds once, then runs every suite: unit tests, the loopback cluster suites of real agent
# processes, and the emulated-VM suites (network namespaces + one dockerd per VM; needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
  exec sudo -E env "PATH=$PATH" bash "$0" "$@"
fi
export CARGO_TERM_COLOR=never
started=$(date +%s)
phase() { echo; echo "==> [$(( $(date +%s) - started ))s] $*"; }

phase "installing test dependencies"
bash tests/install-deps.sh

phase "cargo fmt --check"
cargo fmt --all -- --check

phase "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

phase "building tests"
cargo test --workspace --locked --no-run

phase "running tests"
cargo test --workspace --locked --no-fail-fast

# A short fuzzing run of every parser of untrusted input (fuzz/): FUZZ_SECONDS per target.
phase "fuzzing (${FUZZ_SECONDS:-15} s per target)"
bash fuzz/run.sh "${FUZZ_SECONDS:-15}"

phase "done"
