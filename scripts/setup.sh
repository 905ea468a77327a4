#!/usr/bin/env bash
# Install what natscope needs on a fresh Debian 12 machine (run as root, or with sudo).
# Rust itself comes from rustup (https://rustup.rs); this script checks for it.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# coturn: the reference STUN/TURN server and clients we test against.
# iproute2 + nftables: network namespaces and kernel NAT for the namespace tests and `sim`.
# iputils-ping: scenarios ping through the emulated NATs. tshark: tests open sim's pcap files.
$SUDO apt-get install -y -qq --no-install-recommends \
    coturn iproute2 nftables procps iputils-ping tshark ca-certificates build-essential \
    pkg-config python3 python3-pip >/dev/null
# Debian enables a coturn service; natscope starts its own instances, never this one.
$SUDO systemctl disable --now coturn >/dev/null 2>&1 || true

# aioice: the third-party ICE peer our agent is tested against (PyPI, pinned).
python3 -m pip install --break-system-packages --quiet aioice==0.13.0

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: cargo not found. Install Rust with rustup (https://rustup.rs), then re-run." >&2
    exit 1
fi
echo "setup: done ($(cargo --version), $(turnserver --version 2>/dev/null | head -n1 || echo coturn))"
