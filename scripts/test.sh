#!/usr/bin/env bash
# Everything CI checks: formatting, lints, the whole test suite (unit, loopback end-to-end,
# coturn interop, kernel-NAT namespaces: these need root), the fuzz targets build, and a short
# run of the benchmark script so it cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets -q -- -D warnings
echo "== cargo test"
cargo test --workspace 2>&1
if [ -x scripts/fuzz_build.sh ]; then
    echo "== fuzz targets build"
    scripts/fuzz_build.sh
fi
# Benchmark scripts in quick mode so they cannot rot; figures are printed, never asserted.
for bench in bench_binding bench_fabric bench_turn bench_ice bench_matrix; do
    if [ -x "scripts/$bench.sh" ]; then
        echo "== scripts/$bench.sh --quick"
        "scripts/$bench.sh" --quick
    fi
done
# Connectivity matrices against their committed baselines (each run as two shards joined with
# `sim merge`, as a CI job matrix would): fails when a cell regressed.
echo "== scripts/matrix_regress.sh --shards 2"
scripts/matrix_regress.sh --shards 2
