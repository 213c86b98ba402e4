#!/usr/bin/env bash
# Installs smr on this machine (Debian/Ubuntu): build dependencies, Docker engine if missing, the
# smrmgr and smrctl binaries in /usr/local/bin, and, when start flags are given, starts the node
# (as a systemd service where systemd runs, otherwise as a background agent).
#
#   ./install.sh                                        # install only
#   ./install.sh -a smr-agent-1 -d vm1.example.com -n vm1.example.com              # install and start
#   ./install.sh -a smr-agent-2 -d vm2.example.com -n vm2.example.com -j vm1.example.com:1443 --token T
#   # a VM behind NAT in another cloud (forward 1443/tcp, 9212/tcp, 51820/udp of the public address):
#   ./install.sh -a smr-agent-3 ... --ip 10.0.0.5 --public-ip 198.51.100.20 -j 203.0.113.10:1443 --token T
#
# Idempotent: running it again rebuilds, reinstalls and restarts.
set -euo pipefail

die() { echo "install.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

cd "$(dirname "$0")"
[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 $*)"
command -v apt-get >/dev/null || die "this installer supports Debian and Ubuntu (apt-get not found)"

PREFIX=${PREFIX:-/usr/local}
packages=(gcc pkg-config libssl-dev protobuf-compiler libprotobuf-dev git curl ca-certificates iptables iproute2)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  step "installing ${missing[*]}"
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" \
    || die "could not install ${missing[*]}"
fi

if ! docker info >/dev/null 2>&1; then
  step "installing the Docker engine (docker.io)"
  if ! command -v dockerd >/dev/null; then
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io || die "could not install docker.io"
  fi
  if [ -d /run/systemd/system ]; then
    systemctl enable --now docker || die "could not start docker"
  fi
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || die "Docker is installed but not answering (docker info fails)"
fi

if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] || {
    step "installing the Rust toolchain (rustup)"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal || die "could not install Rust; install it and rerun"
  }
  export PATH="$HOME/.cargo/bin:$PATH"
fi

step "building smr (release)"
cargo build --release --locked -p smr -p smrctl || die "build failed"
install -m 0755 target/release/smrmgr target/release/smrctl "$PREFIX/bin/" || die "could not install to $PREFIX/bin"
step "installed $PREFIX/bin/smrmgr and $PREFIX/bin/smrctl ($("$PREFIX/bin/smrmgr" --version))"

if [ "$#" -gt 0 ]; then
  if [ -d /run/systemd/system ]; then
    step "installing and starting the smr service"
    "$PREFIX/bin/smrmgr" service-install "$@" || die "smrmgr service-install failed"
  else
    step "starting the smr agent"
    "$PREFIX/bin/smrmgr" start "$@" || die "smrmgr start failed"
  fi
fi
