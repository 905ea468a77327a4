#!/usr/bin/env bash
# The simulator's packet fabric: UDP packets per second through one NAT hop (the fabric with a
# model NAT box, the fabric with a kernel NAT box, and a kernel-only veth + nftables masquerade
# hop as the reference, all measured in this run with the same sender and receiver; the ratio
# fabric/kernel is printed, goal >= 1.0x), and Fabric::up / Fabric::down times for 2, 20 and
# 200 hosts. Needs root, iproute2 and nftables.
#
# Usage: scripts/bench_fabric.sh [--quick] [--duration SECS]
#   --quick            CI smoke mode: 0.5 s per figure, 2 and 20 hosts; nothing is asserted
#   --duration SECS    seconds per throughput figure (default 3)
#
# Namespaces are named nsim<PID>x<N>-*; if the run is killed, `sim clean` (or
# sim::fabric::clean) removes them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p sim --bench fabric --no-run -q 2>/dev/null || cargo bench -p sim --bench fabric --no-run
exec cargo bench -p sim --bench fabric -q -- "$@"
