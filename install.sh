#!/usr/bin/env bash
# Installs smr on this machine (Debian/Ubuntu): smrmgr and smrctl from a package when there is one,
# else built from source; the Docker engine if missing; and, when start flags are given, starts the
# node (as a systemd service where systemd runs, otherwise as a background agent).
#
#   ./install.sh                                        # install only
#   ./install.sh ./smr_0.1.0_amd64.deb                  # install this package (or a smr-*.tar.gz)
#   ./install.sh -a smr-agent-1 -d vm1.example.com -n vm1.example.com              # install and start
#   ./install.sh ./smr_0.1.0_amd64.deb -a smr-agent-2 -d vm2.example.com -n vm2.example.com -j vm1.example.com:1443 --token T
#   # a VM behind NAT in another cloud (forward 1443/tcp, 9212/tcp, 51820/udp of the public address):
#   ./install.sh -a smr-agent-3 ... --ip 10.0.0.5 --public-ip 198.51.100.20 -j 203.0.113.10:1443 --token T
#   ./install.sh --from-source ...                      # build from source even beside a package
#
# Where smr comes from:
# - the package file given as the first argument (smr_<version>_amd64.deb or
#   smr-<version>-x86_64-linux.tar.gz, made by packaging/build.sh);
# - else such a file beside this script (the newest version; the .deb when both);
# - else a release build from this source tree (installs gcc, protoc and Rust; takes minutes and
#   GB of disk and memory).
# A .deb is installed with apt (its dependencies included): binaries in /usr/bin, smr.service in
# /lib/systemd/system, completions in Debian's paths. A tarball and a source build install into
# $PREFIX (default /usr/local): bin/, and completions under share/.
#
# Idempotent: running it again reinstalls (or rebuilds) and restarts.
set -euo pipefail

die() { echo "install.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

[ "$(id -u)" -eq 0 ] || die "run as root (sudo $0 $*)"
command -v apt-get >/dev/null || die "this installer supports Debian and Ubuntu (apt-get not found)"

# The package argument is resolved before the cd below: it is relative to the caller's directory.
package=
from_source=
case ${1:-} in
  --from-source) from_source=1; shift ;;
  *.deb | *.tar.gz)
    [ -f "$1" ] || die "no such package file: $1"
    package=$(realpath "$1")
    shift
    ;;
esac

cd "$(dirname "$0")"
PREFIX=${PREFIX:-/usr/local}

# The newest smr package beside this script (the .deb when a tarball has the same version).
find_package() {
  local best= best_version= f v
  for f in smr_*_amd64.deb smr-*-x86_64-linux.tar.gz; do
    [ -f "$f" ] || continue
    case $f in
      *.deb) v=${f#smr_}; v=${v%_amd64.deb} ;;
      *) v=${f#smr-}; v=${v%-x86_64-linux.tar.gz} ;;
    esac
    if [ -z "$best" ] || [ "$(printf '%s\n%s\n' "$best_version" "$v" | sort -V | tail -1)" != "$best_version" ]; then
      best=$f best_version=$v
    fi
  done
  [ -n "$best" ] && realpath "$best"
}
if [ -z "$package" ] && [ -z "$from_source" ]; then
  package=$(find_package || true)
  [ -z "$package" ] || step "found $package beside install.sh (--from-source builds instead)"
fi
if [ -n "$package" ]; then
  arch=$(dpkg --print-architecture)
  [ "$arch" = amd64 ] || die "$package is for amd64; this machine is $arch (use --from-source)"
fi

apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 && return 0
  apt-get update -qq || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" || die "could not install $*"
}

# What the chosen way needs: a source build its toolchain, a tarball the programs the agent runs
# (the .deb's dependencies come with it).
case $package in
  *.deb) packages=() ;;
  *.tar.gz) packages=(iptables ca-certificates) ;;
  *) packages=(gcc pkg-config libssl-dev protobuf-compiler libprotobuf-dev git curl ca-certificates iptables iproute2) ;;
esac
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  step "installing ${missing[*]}"
  apt_install "${missing[@]}"
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

# Completions for bash, zsh and fish under $PREFIX/share, from the directory $1 holding
# bash/<bin>, zsh/_<bin>, fish/<bin>.fish.
install_completions() {
  local from=$1 b
  for b in smrmgr smrctl; do
    install -D -m 0644 "$from/bash/$b" "$PREFIX/share/bash-completion/completions/$b"
    install -D -m 0644 "$from/zsh/_$b" "$PREFIX/share/zsh/site-functions/_$b"
    install -D -m 0644 "$from/fish/$b.fish" "$PREFIX/share/fish/vendor_completions.d/$b.fish"
  done
}

case $package in
  *.deb)
    step "installing $package"
    # --reinstall: the same version again (a rebuilt package) is installed anyway.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall --no-install-recommends "$package" >/dev/null 2>&1 || {
      apt-get update -qq || die "apt-get update failed"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --reinstall --no-install-recommends "$package" \
        || die "could not install $package"
    }
    BIN=/usr/bin
    # Binaries of an earlier tarball or source install would come first in PATH.
    if [ "$PREFIX/bin" != "$BIN" ]; then
      for b in smrmgr smrctl; do
        if [ -e "$PREFIX/bin/$b" ]; then
          step "removing $PREFIX/bin/$b of an earlier install (it would shadow $BIN/$b)"
          rm -f "$PREFIX/bin/$b"
        fi
      done
      # A unit that an earlier install wrote (flags and all) runs the package's binary now.
      unit=/etc/systemd/system/smr.service
      if [ -f "$unit" ] && grep -q "^ExecStart=$PREFIX/bin/smrmgr " "$unit"; then
        step "pointing $unit at $BIN/smrmgr"
        sed -i "s|^ExecStart=$PREFIX/bin/smrmgr |ExecStart=$BIN/smrmgr |" "$unit"
        [ ! -d /run/systemd/system ] || systemctl daemon-reload
      fi
    fi
    ;;
  *.tar.gz)
    step "installing $package into $PREFIX"
    unpacked=$(mktemp -d)
    trap 'rm -rf "$unpacked"' EXIT
    tar -C "$unpacked" -xzf "$package" || die "could not unpack $package"
    top=$(find "$unpacked" -mindepth 1 -maxdepth 1 -type d -name 'smr-*-x86_64-linux' | head -1)
    [ -n "$top" ] && [ -x "$top/smrmgr" ] && [ -x "$top/smrctl" ] \
      || die "$package holds no smr-<version>-x86_64-linux/ with smrmgr and smrctl"
    "$top/smrmgr" --version >/dev/null || die "the smrmgr of $package does not run here"
    install -d "$PREFIX/bin"
    install -m 0755 "$top/smrmgr" "$top/smrctl" "$PREFIX/bin/" || die "could not install to $PREFIX/bin"
    install_completions "$top/completions"
    # The unit that restarts the node of /var/lib/smr; never over one `smrmgr service-install` wrote.
    if [ -d /etc/systemd/system ] && [ ! -e /etc/systemd/system/smr.service ]; then
      sed "s|^ExecStart=[^ ]*/smrmgr |ExecStart=$PREFIX/bin/smrmgr |" "$top/smr.service" >/etc/systemd/system/smr.service
      [ ! -d /run/systemd/system ] || systemctl daemon-reload
    fi
    BIN=$PREFIX/bin
    ;;
  *)
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
    completions=$(mktemp -d)
    trap 'rm -rf "$completions"' EXIT
    mkdir -p "$completions/bash" "$completions/zsh" "$completions/fish"
    for b in smrmgr smrctl; do
      "$PREFIX/bin/$b" completion bash >"$completions/bash/$b"
      "$PREFIX/bin/$b" completion zsh >"$completions/zsh/_$b"
      "$PREFIX/bin/$b" completion fish >"$completions/fish/$b.fish"
    done
    install_completions "$completions"
    BIN=$PREFIX/bin
    ;;
esac
if [ "$BIN" != /usr/bin ] && dpkg -s smr >/dev/null 2>&1; then
  echo "install.sh: note: the smr package is installed too; $BIN comes first in PATH" >&2
fi
step "installed $BIN/smrmgr and $BIN/smrctl ($("$BIN/smrmgr" --version))"

if [ "$#" -gt 0 ]; then
  if [ -d /run/systemd/system ]; then
    step "installing and starting the smr service"
    "$BIN/smrmgr" service-install "$@" || die "smrmgr service-install failed"
  else
    step "starting the smr agent"
    "$BIN/smrmgr" start "$@" || die "smrmgr start failed"
  fi
fi
