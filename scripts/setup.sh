#!/usr/bin/env bash
# Installs what building and testing Depot needs, where it is missing. Idempotent.
# Usage: scripts/setup.sh [run|test]
set -euo pipefail
mode=${1:-run}

missing=()
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists libzmq 2>/dev/null || missing+=(libzmq3-dev)
if [ "$mode" = test ]; then
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v logger >/dev/null 2>&1 || missing+=(bsdutils)
  command -v python3 >/dev/null 2>&1 || missing+=(python3 python3-pip)
  # Loss injection in the multicast tests (this kernel has no netem qdisc).
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
fi

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup: need root (or sudo) to install ${missing[*]}" >&2; exit 1; }
    sudo=sudo
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: the Rust toolchain (cargo) is needed; install it with rustup" >&2
  exit 1
fi

if [ "$mode" = test ] && ! python3 -c 'import zmq' >/dev/null 2>&1; then
  # The logd tests talk to Depot from Python's pyzmq (zmq.log.handlers.PUBHandler).
  echo "setup: installing pyzmq"
  python3 -m pip install --quiet pyzmq 2>/dev/null \
    || python3 -m pip install --quiet --break-system-packages pyzmq \
    || { echo "setup: cannot install pyzmq" >&2; exit 1; }
fi

if [ "$mode" = test ] && [ "$(id -u)" -eq 0 ]; then
  # PGM/EPGM tests run over loopback, which needs multicast enabled.
  ip link set lo multicast on 2>/dev/null || echo "setup: could not enable multicast on lo (multicast tests may fail)"
fi
