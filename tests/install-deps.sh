#!/usr/bin/env bash
# Installs the Debian packages the build and the test suites need, only those missing.
set -euo pipefail
packages=(gcc pkg-config libssl-dev protobuf-compiler libprotobuf-dev git iproute2 iptables procps)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
