#!/usr/bin/env bash
# The simulator's packet fabric: UDP datagrams per second through one NAT hop (the fabric with a
# model NAT box, the fabric with a kernel NAT box, and a kernel-only veth + nftables masquerade
# hop as the reference, all measured in this run with the same sender (sendmmsg) and receiver
# (recvmmsg)): saturated throughput with where the losses happen, CPU time per datagram
# (saturated, and paced at 20000/s), and a zero-loss (RFC 2544 style) rate; the ratios
# fabric/kernel are printed, goal >= 1.0x. Then Fabric::up / Fabric::down times for 2, 20 and
# 200 hosts. Needs root, iproute2 and nftables. See the header of crates/sim/benches/fabric.rs
# for exactly what each column measures.
#
# Usage: scripts/bench_fabric.sh [--quick] [--duration SECS] [--no-zero-loss]
#   --quick            CI smoke mode: 0.5 s per figure, no zero-loss search, 2 and 20 hosts;
#                      nothing is asserted
#   --duration SECS    seconds per throughput figure (default 3; zero-loss trials take half)
#   --no-zero-loss     skip the zero-loss bisection (about 6 trials per path and size)
#
# Namespaces are named nsim<PID>x<N>-*; if the run is killed, `sim clean` (or
# sim::fabric::clean) removes them.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p sim --bench fabric --no-run -q 2>/dev/null || cargo bench -p sim --bench fabric --no-run
exec cargo bench -p sim --bench fabric -q -- "$@"
