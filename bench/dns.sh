#!/usr/bin/env bash
# Benchmark of the `*.private` DNS server against dnsmasq serving the same names.
#
#   bench/dns.sh [REPLICAS] [SECONDS]        (defaults: 10000 replicas, 10 s per run)
#
# Env: PROFILE (cargo profile, default release), PORT_SMR (15353), PORT_DNSMASQ (15354),
#      CLIENTS (dnsperf -c, default 4), OUTSTANDING (dnsperf -q, default 100).
# Needs: dnsperf, dnsmasq (Debian: dnsperf, dnsmasq-base), dig (dnsutils).
#
# Starts dns/examples/serve.rs with REPLICAS generated replicas (about 2 names each), writes
# the same names to a hosts file for dnsmasq (--addn-hosts), runs dnsperf against each over
# UDP on loopback and prints queries per second, the 99th percentile latency and the resident
# memory of both processes. Figures only: nothing is asserted. Both servers share 2 cores with
# dnsperf here, so compare them with each other, not with published numbers.
set -euo pipefail

REPLICAS=${1:-10000}
DURATION=${2:-10}
PROFILE=${PROFILE:-release}
PORT_SMR=${PORT_SMR:-15353}
PORT_DNSMASQ=${PORT_DNSMASQ:-15354}
CLIENTS=${CLIENTS:-4}
OUTSTANDING=${OUTSTANDING:-100}

for tool in dnsperf dnsmasq dig; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y dnsperf dnsmasq-base dnsutils)" >&2; exit 2; }
done

root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$root/target}
case $PROFILE in
    dev) profile_dir=debug ;;
    *) profile_dir=$PROFILE ;;
esac
(cd "$root" && cargo build -q -p dns --example serve --profile "$PROFILE")
serve_bin=$target/$profile_dir/examples/serve

tmp=$(mktemp -d)
chmod 755 "$tmp"   # dnsmasq drops to an unprivileged user before reading the hosts file
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

wait_answer() { # port name
    local deadline=$((SECONDS + 30))
    until dig @127.0.0.1 -p "$1" "$2" A +short +tries=1 +time=1 2>/dev/null | grep -q .; do
        if ((SECONDS > deadline)); then echo "server on port $1 never answered $2" >&2; exit 1; fi
        sleep 0.2
    done
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

"$serve_bin" "127.0.0.1:$PORT_SMR" "$REPLICAS" \
    --hosts-out "$tmp/hosts" --queries-out "$tmp/queries" >"$tmp/serve.log" 2>&1 &
pids+=($!)
smr_pid=$!
deadline=$((SECONDS + 60))
until [[ -s $tmp/queries ]] && grep -q serving "$tmp/serve.log"; do
    ((SECONDS < deadline)) || { echo "serve did not start:" >&2; cat "$tmp/serve.log" >&2; exit 1; }
    sleep 0.2
done
first_name=$(head -1 "$tmp/queries" | cut -d' ' -f1)
wait_answer "$PORT_SMR" "$first_name"
chmod 644 "$tmp/hosts"

dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts --no-poll \
    --addn-hosts="$tmp/hosts" --listen-address=127.0.0.1 --bind-interfaces \
    --port="$PORT_DNSMASQ" --local-ttl=5 --cache-size=10000 --pid-file= \
    >"$tmp/dnsmasq.log" 2>&1 &
pids+=($!)
dnsmasq_pid=$!
wait_answer "$PORT_DNSMASQ" "$first_name"

smr_rss_idle=$(rss_kib "$smr_pid")
names=$(wc -l <"$tmp/queries")

run() { # label port
    local out=$tmp/$1.out
    dnsperf -s 127.0.0.1 -p "$2" -d "$tmp/queries" -l "$DURATION" \
        -c "$CLIENTS" -q "$OUTSTANDING" -v >"$out" 2>&1
    local qps lost p50 p99
    qps=$(awk '/Queries per second:/ {print $4}' "$out")
    lost=$(awk '/Queries lost:/ {print $3}' "$out")
    read -r p50 p99 < <(awk '/^> / {print $NF}' "$out" | sort -g |
        awk '{a[NR]=$1} END {if (NR==0) {print "n/a n/a"; exit}
             i50=int(NR*0.50); if (i50<1) i50=1; i99=int(NR*0.99); if (i99<1) i99=1;
             printf "%.3f %.3f\n", a[i50]*1000, a[i99]*1000}')
    printf '%-8s %12s %10s %10s %10s\n' "$1" "$qps" "$p50" "$p99" "$lost"
}

echo "names: $names (from $REPLICAS replicas), $DURATION s per run, $CLIENTS clients, $OUTSTANDING outstanding, profile $PROFILE"
printf '%-8s %12s %10s %10s %10s\n' server qps p50_ms p99_ms lost
run smr "$PORT_SMR"
run dnsmasq "$PORT_DNSMASQ"
echo
echo "resident memory (KiB): smr serve idle $smr_rss_idle, after load $(rss_kib "$smr_pid"); dnsmasq $(rss_kib "$dnsmasq_pid")"
