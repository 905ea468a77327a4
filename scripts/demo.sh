#!/usr/bin/env bash
# The main job, offline: build, start turnd as an RFC 5780 server on 127.0.0.1 + 127.0.0.2,
# and classify the (absent) NAT in front of loopback with natprobe, as a table and as JSON;
# then (as root) run the double-NAT scenario in network namespaces with the simulator.
# On a machine with Internet access, `cargo run --release -p probe --bin natprobe` classifies
# your real NAT against public RFC 5780 servers.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p turn -p probe -p sim
target="${CARGO_TARGET_DIR:-target}/release"

out=$(mktemp)
"$target/turnd" --listen 127.0.0.1:0 --alt-ip 127.0.0.2 --rate-limit 0 >"$out" 2>/dev/null &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 50); do grep -q "turnd ready" "$out" && break; sleep 0.1; done
primary=$(awk '/turnd ready/ {print $3}' "$out")
[ -n "$primary" ] || { echo "demo: turnd did not start" >&2; exit 1; }
echo "turnd is serving RFC 5780 on: $(sed 's/turnd ready //' "$out")"
echo
"$target/natprobe" --fast "$primary"
echo
echo "The same as JSON (natprobe --json), top-level keys:"
"$target/natprobe" --fast --json "$primary" | python3 -c '
import json, sys
r = json.load(sys.stdin)
for k in ["server","local","mapped","nat","udp_blocked","rfc5780","mapping","filtering",
          "hairpinning","port_preservation","binding_lifetime_s","legacy"]:
    print(f"  {k}: {json.dumps(r[k])}")'

echo
if [ "$(id -u)" -eq 0 ]; then
    echo "The simulator: a home NAT behind a carrier-grade NAT, in network namespaces"
    echo "(sim scenarios/double_nat.toml; reports in reports/double_nat/):"
    "$target/sim" scenarios/double_nat.toml
    echo
    echo "ICE across NATs: the nine RFC 4787 mapping x filtering combinations against each other,"
    echo "trickle ICE with TURN over UDP, 81 cells (sim matrix scenarios/matrices/nine_by_nine.toml;"
    echo "heatmap in reports/nine_by_nine/matrix.html):"
    "$target/sim" matrix scenarios/matrices/nine_by_nine.toml
else
    echo "Run as root to see the simulator: sudo $target/sim scenarios/double_nat.toml"
fi
