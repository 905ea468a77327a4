#!/usr/bin/env bash
# Build natscope's cargo-fuzz targets (fuzz/), and optionally run each of them.
#
#   scripts/fuzz_build.sh          # install cargo-fuzz if missing, build every target (CI)
#   scripts/fuzz_build.sh 60       # ... then run each target for 60 seconds
#
# Environment:
#   FUZZ_TOOLCHAIN   toolchain for cargo-fuzz (default: nightly; installed with rustup if absent,
#                    else the active toolchain with RUSTC_BOOTSTRAP=1)
#   FUZZ_ARGS        extra libFuzzer flags for runs, e.g. "-max_len=65600 -jobs=2"
#
# Runs use fuzz/corpus/<target>/ (kept, git-ignored) on top of the checked-in seeds in
# fuzz/seeds/<target>/. A crash stops the script with a non-zero status; libFuzzer writes the
# reproducer under fuzz/artifacts/<target>/ (replay: cargo +nightly fuzz run <target> <file>).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
toolchain="${FUZZ_TOOLCHAIN:-nightly}"
seconds="${1:-}"

if [[ -n "$seconds" && ! "$seconds" =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi

if ! rustup run "$toolchain" rustc --version >/dev/null 2>&1; then
    echo "==> installing the $toolchain toolchain"
    if ! rustup toolchain install "$toolchain" --profile minimal; then
        # Offline machines cannot fetch a toolchain: cargo-fuzz also works on stable when
        # the compiler is allowed its unstable flags.
        toolchain="$(rustup show active-toolchain | cut -d' ' -f1)"
        echo "==> no nightly toolchain to be had; using $toolchain with RUSTC_BOOTSTRAP=1"
        export RUSTC_BOOTSTRAP=1
    fi
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$root/fuzz"
echo "==> cargo +$toolchain fuzz build ($(cargo fuzz --version))"
cargo +"$toolchain" fuzz build

mapfile -t targets < <(cargo +"$toolchain" fuzz list)
echo "==> built: ${targets[*]}"

if [[ -z "$seconds" ]]; then
    exit 0
fi

summary=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="$(mktemp)"
    echo "==> fuzzing $t for ${seconds}s"
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of flags
    if ! cargo +"$toolchain" fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$seconds" -print_final_stats=1 ${FUZZ_ARGS:-} 2>&1 | tee "$log"; then
        echo "==> $t FAILED; reproducer under fuzz/artifacts/$t/" >&2
        rm -f "$log"
        exit 1
    fi
    summary+=("$t: $(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1)")
    rm -f "$log"
done

echo "==> summary"
printf '    %s\n' "${summary[@]}"
