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
if [ -x scripts/bench_binding.sh ]; then
    echo "== benchmark script (quick mode; figures are not asserted)"
    scripts/bench_binding.sh --quick
fi
