#!/usr/bin/env bash
# A longer fuzzing run of every cargo-fuzz target (fuzz/), as a benchmark: fuzz/run.sh with
# 300 s per target by default. It prints, per target, the executions, executions per second, the
# corpus size before and after, the edges covered and the peak RSS; the corpus grows in
# target/fuzz/corpus/TARGET. A crash stops the run with its reproducer in fuzz/artifacts/TARGET/.
#
#   bench/fuzz.sh [SECONDS] [TARGET...]      (default 300 s per target)
set -euo pipefail
duration=${1:-300}
shift || true
exec bash "$(dirname "$0")/../fuzz/run.sh" "$duration" "$@"
