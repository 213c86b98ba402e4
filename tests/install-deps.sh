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
  [gcc]=gcc
  [pkg-config]=pkg-config
  [libssl-dev]=-
  [protobuf-compiler]=protoc
  [libprotobuf-dev]=-
  [git]=git
  [iperf3]=iperf3
  [ethtool]=ethtool
  [dnsperf]=dnsperf
  [dnsmasq-base]=dnsmasq
  [openssh-server]=/usr/sbin/sshd
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
$SUDO apt-get install -y --no-install-recommends "${missing[@]}"
