#!/usr/bin/env bash
# Run connectivity matrices and compare each with its committed baseline: exit 1 when a cell
# regressed (stopped connecting, a direct path became relayed, slower past the noise
# threshold, or missing). See reports/README.md, "Connectivity matrices: matrix.json".
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/matrix_regress.sh [--shards N] [--reports DIR] [--update] [MATRIX.toml ...]

For each matrix file (default: scenarios/matrices/ci_*.toml), build sim (release), run it
(with --shards N: as N shards one after the other, joined with `sim merge`, as a CI job
matrix would), then `sim compare reports/baselines/<name>.json DIR/<name>/matrix.json`,
where <name> is the file's top-level `name = "..."` (default: the file's stem). Prints each
comparison; exits 1 when any fails.

  --shards N        run each matrix as N shards and merge them (default 1)
  --reports DIR     where sim writes reports (default reports)
  --update          copy the fresh matrix.json over the baseline instead of comparing
  -h, --help        this help

Extra arguments for `sim compare` go in SIM_COMPARE_ARGS (e.g. "--time-ratio 2
--time-abs-ms 400"); for `sim matrix` in SIM_MATRIX_ARGS (e.g. "--jobs 2"). Needs root
(network namespaces).
EOF
}

die() {
    echo "matrix_regress: $*" >&2
    exit 2
}

# Paths given on the command line are relative to the caller's directory.
abs() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}

SHARDS=1
REPORTS=reports
UPDATE=0
MATRICES=()
while [ $# -gt 0 ]; do
    case "$1" in
        --shards) [ $# -ge 2 ] || die "--shards needs a number"; SHARDS=$2; shift 2 ;;
        --reports) [ $# -ge 2 ] || die "--reports needs a directory"; REPORTS=$(abs "$2"); shift 2 ;;
        --update) UPDATE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        -*) usage >&2; die "unknown argument: $1" ;;
        *) MATRICES+=("$(abs "$1")"); shift ;;
    esac
done
case "$SHARDS" in
    '' | *[!0-9]* | 0) die "--shards must be a positive number" ;;
esac
cd "$(dirname "$0")/.."
if [ ${#MATRICES[@]} -eq 0 ]; then
    MATRICES=(scenarios/matrices/ci_*.toml)
fi

cargo build -q --release -p sim
SIM="${CARGO_TARGET_DIR:-target}/release/sim"
[ -x "$SIM" ] || die "no sim binary at $SIM after the build"

# The matrix name: the top-level `name = "..."` of the TOML (before any [table]), else the stem.
matrix_name() {
    local n
    n=$(awk '
        /^[[:space:]]*\[/ { exit }
        /^[[:space:]]*name[[:space:]]*=/ {
            line = $0
            sub(/^[^=]*=[[:space:]]*/, "", line)
            if (match(line, /^"[^"]*"/)) print substr(line, 2, RLENGTH - 2)
            exit
        }' "$1")
    if [ -z "$n" ]; then
        n=$(basename "$1")
        n=${n%.*}
    fi
    case "$n" in
        */* | . | ..) die "matrix name $n is not a folder name" ;;
    esac
    printf '%s\n' "$n"
}

failed=0
for MATRIX in "${MATRICES[@]}"; do
    [ -f "$MATRIX" ] || die "no matrix file $MATRIX"
    name=$(matrix_name "$MATRIX")
    BASELINE="reports/baselines/$name.json"
    if [ "$UPDATE" = 0 ] && [ ! -f "$BASELINE" ]; then
        die "no baseline $BASELINE (create it with --update after a run you trust)"
    fi
    DIR="$REPORTS/$name"
    FRESH="$DIR/matrix.json"
    rm -f "$FRESH" "$DIR"/shard-*.json
    start=$(date +%s)
    if [ "$SHARDS" = 1 ]; then
        # shellcheck disable=SC2086 # word splitting of the extra arguments is wanted
        "$SIM" matrix "$MATRIX" --reports "$REPORTS" ${SIM_MATRIX_ARGS:-}
    else
        parts=()
        for i in $(seq 1 "$SHARDS"); do
            part="$DIR/shard-$i-of-$SHARDS.json"
            # shellcheck disable=SC2086
            "$SIM" matrix "$MATRIX" --shard "$i/$SHARDS" --out "$part" ${SIM_MATRIX_ARGS:-} >/dev/null
            parts+=("$part")
        done
        "$SIM" merge "$DIR" "${parts[@]}"
    fi
    echo "matrix_regress: $name ran in $(($(date +%s) - start)) s"
    [ -f "$FRESH" ] || die "sim wrote no $FRESH (is the name \"$name\" right?)"

    if [ "$UPDATE" = 1 ]; then
        mkdir -p "$(dirname "$BASELINE")"
        cp "$FRESH" "$BASELINE"
        echo "matrix_regress: baseline $BASELINE updated from $FRESH"
        continue
    fi
    status=0
    # shellcheck disable=SC2086
    "$SIM" compare "$BASELINE" "$FRESH" ${SIM_COMPARE_ARGS:-} || status=$?
    case "$status" in
        0) echo "matrix_regress: $name: no regression against $BASELINE" ;;
        1) echo "matrix_regress: $name: REGRESSION against $BASELINE (reports in $DIR/)" >&2; failed=1 ;;
        *) die "$name: sim compare failed to run (exit $status)" ;;
    esac
done
exit "$failed"
