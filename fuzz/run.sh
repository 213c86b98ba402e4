#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 15): what CI runs after the
# tests (tests/run.sh). Installs cargo-fuzz when it is missing. Exits non-zero on the first crash,
# after printing its reproducer (fuzz/artifacts/TARGET/crash-*: `cargo fuzz run TARGET FILE`).
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# Only stable Rust is needed: cargo-fuzz passes a few -Z flags, which RUSTC_BOOTSTRAP=1 lets a
# stable compiler take; no sanitizer (`--sanitizer none`), the targets assert their invariants.
# Builds into $CARGO_TARGET_DIR/fuzz (default target/fuzz) and keeps the corpus there
# (target/fuzz/corpus/TARGET), seeded from fuzz/seeds/TARGET, so later runs start from it.
set -euo pipefail

SECONDS_PER_TARGET=${1:-15}
shift || true
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export RUSTC_BOOTSTRAP=1
target_dir=${CARGO_TARGET_DIR:-$root/target}/fuzz

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

started=$(date +%s)
# The same build options for `build` and `run` (others would rebuild): no sanitizer, 16 codegen
# units (cargo-fuzz's release default of 1 makes the agent crate alone take minutes).
build=(--sanitizer none --codegen-units 16 --target-dir "$target_dir")
cargo fuzz build "${build[@]}"
echo "fuzz: targets built in $(( $(date +%s) - started )) s"

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
    echo "fuzz: $target for ${SECONDS_PER_TARGET} s"
    log=$target_dir/$target.log
    if ! cargo fuzz run "${build[@]}" "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $target FAILED; reproducers in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n 1)
    after=$(find "$corpus" -type f | wc -l)
    coverage=$(grep -oE 'cov: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    echo "fuzz: $target ok: ${execs:-?} executions, corpus $after inputs"
    rows+=("$(printf '%-14s %12s %10s %8s %8s %8s %8s' "$target" "${execs:-?}" \
        "$(( ${execs:-0} / SECONDS_PER_TARGET ))" "$before" "$after" "${coverage:-?}" "${rss:-?}")")
done
printf '%-14s %12s %10s %8s %8s %8s %8s\n' target executions exec/s corpus corpus edges "RSS MB"
printf '%-14s %12s %10s %8s %8s %8s %8s\n' "" "" "" before after covered peak
printf '%s\n' "${rows[@]}"
