#!/usr/bin/env bash
# Installs the Debian packages the build and the test suites need (tests/run.sh calls it).
# Idempotent: runs `apt-get update` and `apt-get install` only when something is missing.
set -euo pipefail

# package -> a command it provides (checked with `command -v`), or "-" to check dpkg only.
declare -A PKGS=(
  [busybox-static]=-
  [iproute2]=ip
  [iptables]=iptables
  [dnsutils]=dig
  [iputils-ping]=ping
  [procps]=pkill
  [psmisc]=fuser
  [util-linux]=nsenter
  [bsdutils]=script
  [gcc]=gcc
  [pkg-config]=pkg-config
  [libssl-dev]=-
  [protobuf-compiler]=protoc
  [libprotobuf-dev]=-
  [git]=git
  [iperf3]=iperf3
  [tcpdump]=tcpdump
  [ethtool]=ethtool
  [dnsperf]=dnsperf
  [dnsmasq-base]=dnsmasq
  [openssh-server]=/usr/sbin/sshd
  [etcd-server]=etcd
  [docker-registry]=docker-registry
  # packaging/build.sh and its test (smr/tests/package.rs): dpkg-shlibdeps, strip/objdump, file,
  # and a bookworm root without a toolchain to install the .deb into.
  [dpkg-dev]=dpkg-shlibdeps
  [binutils]=strip
  [file]=file
  [debootstrap]=debootstrap
  [prometheus]=prometheus
)

installed() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()
for pkg in "${!PKGS[@]}"; do
  cmd=${PKGS[$pkg]}
  if installed "$pkg"; then continue; fi
  if [[ $cmd != - ]] && command -v "$cmd" >/dev/null 2>&1; then continue; fi
  missing+=("$pkg")
done
# The Docker engine: only when no dockerd exists at all (any packaging of it will do).
if ! command -v dockerd >/dev/null 2>&1; then
  missing+=(docker.io)
fi

if ((${#missing[@]} == 0)); then
  echo "install-deps: all present"
  exit 0
fi

SUDO=
if [[ $(id -u) != 0 ]]; then SUDO=sudo; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# Servers the suites start themselves, on their own ports (etcd, sshd, a registry, Prometheus): installed without
# starting their system services, so running the tests leaves no daemon behind.
quiet=() rest=()
for pkg in "${missing[@]}"; do
  case $pkg in etcd-server | openssh-server | docker-registry | prometheus) quiet+=("$pkg") ;; *) rest+=("$pkg") ;; esac
done
if ((${#rest[@]})); then
  $SUDO apt-get install -y --no-install-recommends "${rest[@]}"
fi
if ((${#quiet[@]})); then
  policy=/usr/sbin/policy-rc.d
  if [[ -e $policy ]]; then
    $SUDO apt-get install -y --no-install-recommends "${quiet[@]}"
  else
    printf '#!/bin/sh\n# smr install-deps: no service starts during this install\nexit 101\n' |
      $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    trap '$SUDO rm -f "$policy"' EXIT
    $SUDO apt-get install -y --no-install-recommends "${quiet[@]}"
  fi
fi
