#!/usr/bin/env bash
# WireGuard overlay throughput and latency beside the underlay and kernel VXLAN, in one run.
#
#   bench/wireguard.sh [SECONDS]        (default 5 s per iperf3 run; as root)
#
# Two "VMs" = network namespaces joined by a veth pair (MTU 1500, the underlay). Measured
# side by side, namespace to namespace: plain veth (underlay), a kernel vxlan device (MTU
# 1450) and smr's userspace WireGuard (the real `Overlay`, wireguard backend, run by the
# example overlay/examples/wg_bench_node.rs in each namespace, MTU 1440). For each: iperf3
# with one TCP flow and with 4 flows, and ping p50/p99 over 500 pings 5 ms apart. For
# WireGuard also the CPU seconds both WireGuard processes spent per GB moved. Figures only:
# nothing is asserted. Needs iproute2, iperf3, python3 (Debian packages of those names;
# iperf3 is installed with apt-get when missing).
set -euo pipefail

SECS=${1:-5}
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 2; }
command -v iperf3 >/dev/null || { apt-get install -y -qq iperf3 >/dev/null; }
for tool in ip iperf3 python3 ping; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q -p overlay --example wg_bench_node --manifest-path "$ROOT/Cargo.toml"
NODE="$ROOT/target/release/examples/wg_bench_node"

ID=$$
A=smrbw${ID}a
B=smrbw${ID}b
TMP=$(mktemp -d)
PIDS=()
cleanup() {
    exec 7>&- 8>&- 2>/dev/null || true
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    ip netns del "$A" 2>/dev/null || true
    ip netns del "$B" 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT

ip netns add "$A"
ip netns add "$B"
ip link add bw${ID}a netns "$A" type veth peer name bw${ID}b netns "$B"
for x in "$A 192.168.79.1 bw${ID}a" "$B 192.168.79.2 bw${ID}b"; do
    set -- $x
    ip -n "$1" link set lo up
    ip -n "$1" addr add "$2/24" dev "$3"
    ip -n "$1" link set "$3" up
done

# Kernel vxlan (VNI 42, port 4789) with static remotes.
ip -n "$A" link add vxb type vxlan id 42 local 192.168.79.1 remote 192.168.79.2 dstport 4789 dev bw${ID}a
ip -n "$B" link add vxb type vxlan id 42 local 192.168.79.2 remote 192.168.79.1 dstport 4789 dev bw${ID}b
ip -n "$A" addr add 10.99.0.1/24 dev vxb && ip -n "$A" link set vxb mtu 1450 up
ip -n "$B" addr add 10.99.0.2/24 dev vxb && ip -n "$B" link set vxb mtu 1450 up

# smr's userspace WireGuard.
KA=$(python3 -c 'import os,base64;k=bytearray(os.urandom(32));k[0]&=248;k[31]=(k[31]&127)|64;print(base64.b64encode(bytes(k)).decode())')
KB=$(python3 -c 'import os,base64;k=bytearray(os.urandom(32));k[0]&=248;k[31]=(k[31]&127)|64;print(base64.b64encode(bytes(k)).decode())')
pub() { python3 - "$1" <<'PY'
import sys, base64
# X25519 public key of a private key (RFC 7748), to hand each node its peer's key.
p = 2**255 - 19
k = bytearray(base64.b64decode(sys.argv[1])); k[0] &= 248; k[31] &= 127; k[31] |= 64
n = int.from_bytes(k, 'little'); x1 = 9; x2, z2, x3, z3 = 1, 0, 9, 1; swap = 0
for t in reversed(range(255)):
    b = (n >> t) & 1; swap ^= b
    if swap: x2, x3, z2, z3 = x3, x2, z3, z2
    swap = b
    A = x2 + z2; AA = A*A; Bv = x2 - z2; BB = Bv*Bv; E = AA - BB; C = x3 + z3; D = x3 - z3
    DA = D*A; CB = C*Bv; x3 = (DA+CB)**2 % p; z3 = x1*(DA-CB)**2 % p
    x2 = AA*BB % p; z2 = E*(AA + 121665*E) % p
if swap: x2, x3, z2, z3 = x3, x2, z3, z2
print(base64.b64encode((x2*pow(z2, p-2, p) % p).to_bytes(32, 'little')).decode())
PY
}
PA=$(pub "$KA")
PB=$(pub "$KB")
mkfifo "$TMP/ina" "$TMP/inb"
ip netns exec "$A" "$NODE" 192.168.79.1 10.42.1.0/24 "$KA" 192.168.79.2 10.42.2.0/24 "$PB" \
    <"$TMP/ina" >"$TMP/outa" 2>"$TMP/loga" &
WGA=$!
PIDS+=($WGA)
ip netns exec "$B" "$NODE" 192.168.79.2 10.42.2.0/24 "$KB" 192.168.79.1 10.42.1.0/24 "$PA" \
    <"$TMP/inb" >"$TMP/outb" 2>"$TMP/logb" &
WGB=$!
PIDS+=($WGB)
exec 7>"$TMP/ina" 8>"$TMP/inb"
for i in $(seq 100); do
    ip netns exec "$A" ping -c1 -W1 10.42.2.0 >/dev/null 2>&1 && break
    [[ $i == 100 ]] && { echo "wireguard never came up"; cat "$TMP/loga" "$TMP/logb"; exit 1; }
done
grep -h "WireGuard:" "$TMP/loga" | sed 's/\x1b\[[0-9;]*m//g' | head -1

# In the background of this shell (not -D): its pid is known at once, so cleanup always stops it.
ip netns exec "$B" iperf3 -s >/dev/null 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do # until it listens, 10 s at most
    ip netns exec "$B" ss -Hltn 'sport = :5201' | grep -q . && break
    sleep 0.1
done

cpu() { # utime+stime of a pid in seconds
    awk -v t="$(getconf CLK_TCK)" '{print ($14+$15)/t}' "/proc/$1/stat"
}
iperf() { # target flows -> "gbit bytes"
    local out
    for try in 1 2 3; do
        if out=$(ip netns exec "$A" iperf3 -c "$1" -P "$2" -t "$SECS" -J 2>/dev/null); then
            python3 -c 'import json,sys;e=json.load(sys.stdin)["end"]["sum_received"];print("%.2f %d"%(e["bits_per_second"]/1e9,e["bytes"]))' <<<"$out"
            return
        fi
        sleep 0.5
    done
    echo "0 0"
}
pingstat() { # target -> "p50 p99" in ms
    ip netns exec "$A" ping -c 500 -i 0.005 "$1" | python3 -c '
import re,sys
t=sorted(float(m.group(1)) for m in re.finditer(r"time=([0-9.]+)", sys.stdin.read()))
q=lambda p: t[min(len(t)-1,int(p*len(t)))]
print("%.3f %.3f"%(q(0.5),q(0.99)))'
}

printf "%-22s %10s %10s %9s %9s %s\n" path "1 flow" "4 flows" "ping p50" "ping p99" "wg CPU s/GB (sender+receiver)"
for row in "underlay 192.168.79.2" "vxlan(kernel) 10.99.0.2" "wireguard(userspace) 10.42.2.0"; do
    set -- $row
    c0=$(( 0 )); ca=$(cpu $WGA); cb=$(cpu $WGB)
    read -r g1 b1 < <(iperf "$2" 1)
    read -r g4 b4 < <(iperf "$2" 4)
    ca2=$(cpu $WGA); cb2=$(cpu $WGB)
    read -r p50 p99 < <(pingstat "$2")
    extra=""
    if [[ $1 == wireguard* ]]; then
        extra=$(python3 -c "print('%.2f (%.2f + %.2f)'%(($ca2-$ca+$cb2-$cb)/(($b1+$b4)/1e9),($ca2-$ca)/(($b1+$b4)/1e9),($cb2-$cb)/(($b1+$b4)/1e9)))")
    fi
    printf "%-22s %7s Gb %7s Gb %6s ms %6s ms %s\n" "$1" "$g1" "$g4" "$p50" "$p99" "$extra"
done
