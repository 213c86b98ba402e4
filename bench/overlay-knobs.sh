#!/usr/bin/env bash
# Where the VXLAN overlay loses single-flow TCP throughput: the overlay of smr rebuilt by hand
# (no agent, no dockerd) on two emulated VMs, then one setting changed at a time.
#
#   bench/overlay-knobs.sh [REPS] [SECONDS] [CONFIG...]     (defaults: 5 pairs of 5 s runs, all)
#
# As root. Needs iproute2, iptables, ethtool, iperf3 (Debian packages of those names).
# Two "VMs" = network namespaces ovkN on a host bridge ovkbr (veth, MTU 1500, the underlay),
# each with the vxlan device smr.1 (VNI 1, port 8472, nolearning, MTU 1450, one permanent
# neighbour/FDB/onlink route per peer, as the agent programs it), smr's SMR-MASQ nat chain, a
# Linux bridge `cluster` and a "container" namespace ovkcN behind a veth on it (as Docker's
# bridge network does it). Each configuration runs REPS pairs of iperf3 runs, container to
# container (overlay) and VM to VM (underlay), alternated with the order flipped every pair,
# and prints the median ratio overlay/underlay and its spread. Figures only: nothing asserted.
#
# Configurations: baseline, gro (NAPI GRO on every veth, as real NICs have GRO on),
# udp-gro-fwd (rx-udp-gro-forwarding on the VMs' eth0), notrack (raw NOTRACK for the vxlan UDP
# port), udpcsum (vxlan with outer UDP checksums), brnf-off (bridge-nf-call-iptables=0 in the
# VMs), host-gw (no encapsulation: a route per peer subnet via the peer's underlay address,
# MTU 1500 everywhere), split (one CPU per VM: clients on CPU 0, servers on CPU 1, RPS sends the
# receiving VM's and container's packet processing to CPU 1).
set -euo pipefail

REPS=${1:-5}
SECS=${2:-5}
shift $(($# < 2 ? $# : 2))
CONFIGS=("$@")
[[ ${#CONFIGS[@]} -gt 0 ]] ||
    CONFIGS=(baseline gro udp-gro-fwd notrack udpcsum brnf-off host-gw split baseline)

for tool in ip iptables ethtool iperf3 python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }
done
[[ $(id -u) == 0 ]] || { echo "run as root" >&2; exit 2; }

BR=ovkbr
NS=(ovk1 ovk2)
CNS=(ovkc1 ovkc2)
TMP=$(mktemp -d)
PIDS=()

teardown() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for ns in "${NS[@]}" "${CNS[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
    ip link del "$BR" 2>/dev/null || true
    iptables -D FORWARD -i "$BR" -o "$BR" -j ACCEPT 2>/dev/null || true
    rm -rf "$TMP"
}
trap teardown EXIT

in_vm() { ip netns exec "ovk$1" "${@:2}"; }
in_ct() { ip netns exec "ovkc$1" "${@:2}"; }
mac() { echo "02:00:00:00:00:0$1"; }

vxlan() { # vxlan I [udpcsum|noudpcsum]
    local i=$1 j=$((3 - $1))
    in_vm "$i" ip link del smr.1 2>/dev/null || true
    in_vm "$i" ip link add smr.1 type vxlan id 1 dev eth0 local "10.201.0.$i" dstport 8472 \
        nolearning "${2:-noudpcsum}"
    in_vm "$i" ip link set smr.1 mtu 1450 address "$(mac "$i")"
    in_vm "$i" ip addr add "10.210.$i.0/32" dev smr.1
    in_vm "$i" ip link set smr.1 up
    in_vm "$i" ip neigh replace "10.210.$j.0" lladdr "$(mac "$j")" dev smr.1 nud permanent
    in_vm "$i" bridge fdb append "$(mac "$j")" dev smr.1 dst "10.201.0.$j" self permanent
    in_vm "$i" ip route replace "10.210.$j.0/24" via "10.210.$j.0" dev smr.1 onlink
}

setup() {
    ip link add "$BR" type bridge
    ip link set "$BR" up
    iptables -I FORWARD -i "$BR" -o "$BR" -j ACCEPT
    for i in 1 2; do
        ip netns add "ovk$i"
        ip netns add "ovkc$i"
        ip link add "${BR}v$i" type veth peer name eth0 netns "ovk$i"
        ip link set "${BR}v$i" master "$BR" up
        in_vm "$i" ip link set lo up
        in_vm "$i" ip link set eth0 up
        in_vm "$i" ip addr add "10.201.0.$i/24" dev eth0
        in_vm "$i" sysctl -qw net.ipv4.ip_forward=1
        in_vm "$i" ip link add cluster type bridge
        in_vm "$i" ip link set cluster mtu 1450 up
        in_vm "$i" ip addr add "10.210.$i.1/24" dev cluster
        in_vm "$i" ip link add "vc$i" mtu 1450 type veth peer name eth0 netns "ovkc$i"
        in_vm "$i" ip link set "vc$i" master cluster up
        in_ct "$i" ip link set lo up
        in_ct "$i" ip link set eth0 up
        in_ct "$i" ip addr add "10.210.$i.2/24" dev eth0
        in_ct "$i" ip route add default via "10.210.$i.1"
        # smr's masquerade chain (overlay/src/masq.rs): loads conntrack as on a real node.
        in_vm "$i" iptables -t nat -N SMR-MASQ
        in_vm "$i" iptables -t nat -A SMR-MASQ -s 10.210.0.0/16 -d 10.210.0.0/16 -j RETURN
        in_vm "$i" iptables -t nat -A SMR-MASQ -s "10.210.$i.0/24" ! -d 10.210.0.0/16 -j MASQUERADE
        in_vm "$i" iptables -t nat -A POSTROUTING -j SMR-MASQ
    done
    vxlan 1
    vxlan 2
    in_ct 1 ping -c 1 -W 2 10.210.2.2 >/dev/null
    in_vm 1 ping -c 1 -W 2 10.201.0.2 >/dev/null
}

mtu_all() {
    for i in 1 2; do
        in_vm "$i" ip link set cluster mtu "$1"
        in_vm "$i" ip link set "vc$i" mtu "$1"
        in_ct "$i" ip link set eth0 mtu "$1"
    done
}

# knob CONFIG on|off
knob() {
    local on=$2 i j
    for i in 1 2; do
        j=$((3 - i))
        case $1 in
            baseline | split) ;;
            gro)
                in_vm "$i" ethtool -K eth0 gro "$on"
                ethtool -K "${BR}v$i" gro "$on"
                in_vm "$i" ethtool -K "vc$i" gro "$on"
                in_ct "$i" ethtool -K eth0 gro "$on"
                ;;
            udp-gro-fwd) in_vm "$i" ethtool -K eth0 rx-udp-gro-forwarding "$on" ;;
            notrack)
                local a; a=$([[ $on == on ]] && echo -A || echo -D)
                in_vm "$i" iptables -t raw "$a" PREROUTING -p udp --dport 8472 -j NOTRACK
                in_vm "$i" iptables -t raw "$a" OUTPUT -p udp --dport 8472 -j NOTRACK
                ;;
            udpcsum) ;; # below, once both are set up
            brnf-off)
                in_vm "$i" sysctl -qw net.bridge.bridge-nf-call-iptables="$([[ $on == on ]] && echo 0 || echo 1)"
                ;;
            host-gw)
                if [[ $on == on ]]; then
                    in_vm "$i" ip route replace "10.210.$j.0/24" via "10.201.0.$j" dev eth0
                else
                    in_vm "$i" ip route replace "10.210.$j.0/24" via "10.210.$j.0" dev smr.1 onlink
                fi
                ;;
            *) echo "unknown configuration $1" >&2; exit 2 ;;
        esac
    done
    case $1 in
        udpcsum) vxlan 1 "$([[ $on == on ]] && echo udpcsum || echo noudpcsum)"
                 vxlan 2 "$([[ $on == on ]] && echo udpcsum || echo noudpcsum)" ;;
        host-gw) mtu_all "$([[ $on == on ]] && echo 1500 || echo 1450)" ;;
        split) in_vm 2 sh -c "echo $([[ $on == on ]] && echo 2 || echo 0) > /sys/class/net/eth0/queues/rx-0/rps_cpus"
               in_ct 2 sh -c "echo $([[ $on == on ]] && echo 2 || echo 0) > /sys/class/net/eth0/queues/rx-0/rps_cpus" ;;
    esac
}

gbits() {
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
}

measure() { # measure CONFIG
    local cpre=() spre=() o u r rs=() os=() us=()
    if [[ $1 == split ]]; then cpre=(taskset -c 0); spre=(taskset -c 1); fi
    "${spre[@]}" ip netns exec ovkc2 iperf3 -s -p 5201 >/dev/null 2>&1 &
    PIDS+=($!)
    "${spre[@]}" ip netns exec ovk2 iperf3 -s -p 5202 >/dev/null 2>&1 &
    PIDS+=($!)
    local deadline=$((SECONDS + 10))
    until in_ct 2 ss -ltn | grep -q :5201 && in_vm 2 ss -ltn | grep -q :5202; do
        ((SECONDS < deadline)) || { echo "iperf3 servers did not listen" >&2; exit 1; }
        sleep 0.05
    done
    over() { "${cpre[@]}" ip netns exec ovkc1 iperf3 -c 10.210.2.2 -p 5201 -t "$SECS" -J | gbits; }
    under() { "${cpre[@]}" ip netns exec ovk1 iperf3 -c 10.201.0.2 -p 5202 -t "$SECS" -J | gbits; }
    for ((r = 0; r < REPS; r++)); do
        if ((r % 2 == 0)); then o=$(over); u=$(under); else u=$(under); o=$(over); fi
        os+=("$o"); us+=("$u")
    done
    kill "${PIDS[-1]}" "${PIDS[-2]}" 2>/dev/null || true
    wait "${PIDS[-1]}" "${PIDS[-2]}" 2>/dev/null || true
    python3 - "$1" "${os[*]}" "${us[*]}" <<'PY'
import statistics, sys
name, o, u = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
r = [a / b for a, b in zip(o, u)]
load = open("/proc/loadavg").read().split()[0]
print(f"{name:<12} overlay {statistics.median(o):6.2f}  underlay {statistics.median(u):6.2f} Gbit/s"
      f"  ratio median {statistics.median(r) * 100:4.0f}%  min {min(r) * 100:4.0f}%  max {max(r) * 100:4.0f}%"
      f"  load {load}  pairs {' '.join(f'{a:.2f}/{b:.2f}' for a, b in zip(o, u))}")
PY
}

setup
echo "kernel $(uname -r), $(nproc) CPUs, $REPS pairs of $SECS s single-flow iperf3 runs per configuration"
for c in "${CONFIGS[@]}"; do
    knob "$c" on
    measure "$c"
    knob "$c" off
done
