#!/usr/bin/env bash
# Wall time of the full nine-by-nine trickle matrix with TURN (scenarios/matrices/nine_by_nine.toml:
# 81 cells, each its own scenario in network namespaces with turnd and two icepeer agents), and
# cells per minute. Goal: under 60 s on a 2-core machine. Prints the figures; asserts nothing.
#
# --quick: one ninth of the matrix (shard 1/9), debug build (CI: keeps the script from rotting).
# Other arguments go to `sim matrix` (e.g. --jobs 2). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

PROFILE=release
EXTRA=()
for a in "$@"; do
    case "$a" in
        --quick) PROFILE=dev; EXTRA+=(--shard 1/9) ;;
        *) EXTRA+=("$a") ;;
    esac
done
cargo build -q --profile "$PROFILE" -p sim
target_dir="${CARGO_TARGET_DIR:-target}"
if [ "$PROFILE" = dev ]; then SIM="$target_dir/debug/sim"; else SIM="$target_dir/release/sim"; fi

out=$(mktemp -d /tmp/bench-matrix-XXXXXX)
trap 'rm -rf "$out"' EXIT
start=$(date +%s.%N)
"$SIM" matrix scenarios/matrices/nine_by_nine.toml --quiet --out "$out/m.json" "${EXTRA[@]}" >/dev/null
end=$(date +%s.%N)
python3 - "$out/m.json" "$start" "$end" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
wall = float(sys.argv[3]) - float(sys.argv[2])
s = m["summary"]
print(f"nine_by_nine: {s['cells']} cells ({s['connected']} connected: {s['direct']} direct, "
      f"{s['relayed']} relayed; {s['flagged']} flagged), {m['jobs']} in parallel")
print(f"wall time {wall:.1f} s (sim's own {m['elapsed_ms'] / 1000:.1f} s), "
      f"{s['cells'] * 60 / wall:.0f} cells/min; goal for the full 81: under 60 s")
times = sorted(c["time_to_connected_ms"] for c in m["cells"] if c["time_to_connected_ms"])
if times:
    print(f"time to connected: median {times[len(times) // 2]:.0f} ms, max {times[-1]:.0f} ms")
PY
