#!/usr/bin/env bash
# Brings a Debian machine to the point where xdplb builds, runs and tests:
# system packages, bpffs, npm packages, the native addon, BPF objects and the
# TypeScript build. Idempotent; a few seconds when nothing is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'xdplb bootstrap: %s\n' "$*" >&2; }

# Everything the build, the lab and the tests use from Debian.
PACKAGES=(clang llvm libbpf-dev bpftool pkg-config cmake make g++ iproute2 ethtool
  tshark tcpdump python3-scapy xdp-tools python3-grpcio protobuf-compiler protobuf-compiler-grpc libprotobuf-dev
  prometheus # promtool: the metrics tests check the exposition format
  bird2) # the BGP speaker of the optional bgp: section (src/bgp), and the tests' router

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null | grep -q '^ii' || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) != 0 ]]; then
    say "missing packages; as root run: apt-get install -y ${missing[*]}"
    exit 1
  fi
  say "installing ${missing[*]}"
  apt-get update -qq
  # tshark asks whether non-root users may capture; noninteractive keeps the default (no).
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! mountpoint -q /sys/fs/bpf; then
  if [[ $(id -u) != 0 ]]; then
    say "bpffs is not mounted; as root run: mount -t bpf bpf /sys/fs/bpf"
    exit 1
  fi
  mount -t bpf bpf /sys/fs/bpf
fi

# npm install only when the lockfile is newer than what is installed.
if [[ ! -f node_modules/.package-lock.json || package-lock.json -nt node_modules/.package-lock.json || package.json -nt node_modules/.package-lock.json ]]; then
  say "npm install"
  npm install --no-audit --no-fund --loglevel=error
  touch node_modules/.package-lock.json
fi

# Build the addon against the machine's own Node.js headers; never download them.
if [[ -z ${npm_config_nodedir:-} && -f /usr/include/node/node_api.h ]]; then
  export npm_config_nodedir=/usr
fi
node_modules/.bin/cmake-js build --out build --CDCMAKE_BUILD_TYPE=Release --log-level error >/dev/null ||
  { say "native/BPF build failed; rerun: npx cmake-js build --out build"; exit 1; }
node_modules/.bin/tsc -p tsconfig.json
