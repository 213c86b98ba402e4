#!/usr/bin/env bash
# A longer fuzzing run of every cargo-fuzz target (fuzz/), as a benchmark: prints, per target,
# the executions, executions per second, the corpus size before and after and the new inputs.
#
#   bench/fuzz.sh [SECONDS] [TARGET...]      (default 300 s per target)
#
# Builds like fuzz/run.sh (stable Rust, RUSTC_BOOTSTRAP=1, no sanitizer) into target/fuzz and
# grows the corpus kept in target/fuzz/corpus/TARGET. Figures only; a crash stops the run with its
# reproducer in fuzz/artifacts/TARGET/.
set -euo pipefail

DURATION=${1:-300}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export RUSTC_BOOTSTRAP=1
target_dir=${CARGO_TARGET_DIR:-$root/target}/fuzz
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
started=$(date +%s)
# The same build options for `build` and `run` (others would rebuild): no sanitizer, 16 codegen
# units (cargo-fuzz's release default of 1 makes the agent crate alone take minutes).
build=(--sanitizer none --codegen-units 16 --target-dir "$target_dir")
cargo fuzz build "${build[@]}"
echo "targets built in $(( $(date +%s) - started )) s"

targets=("$@")
if ((${#targets[@]} == 0)); then
    mapfile -t targets < <(cargo fuzz list)
fi
rows=()
for target in "${targets[@]}"; do
    corpus=$target_dir/corpus/$target
    mkdir -p "$corpus"
    before=$(find "$corpus" -type f | wc -l)
    seeds=()
    if [[ -d fuzz/seeds/$target ]]; then seeds=("fuzz/seeds/$target"); fi
    log=$target_dir/$target.bench.log
    echo "fuzzing $target for $DURATION s"
    if ! cargo fuzz run "${build[@]}" "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$DURATION" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "$target FAILED; reproducers in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
    after=$(find "$corpus" -type f | wc -l)
    coverage=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    rows+=("$(printf '%-14s %12s %10s %8s %8s %8s %8s' "$target" "$execs" \
        "$(( ${execs:-0} / DURATION ))" "$before" "$after" "${coverage:-?}" "${rss:-?}")")
done
printf '%-14s %12s %10s %8s %8s %8s %8s\n' target executions exec/s "corpus" "corpus" edges "RSS MB"
printf '%-14s %12s %10s %8s %8s %8s %8s\n' "" "" "" before after covered peak
printf '%s\n' "${rows[@]}"
