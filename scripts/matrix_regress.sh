#!/usr/bin/env bash
# Run a connectivity matrix and compare it with a committed baseline: exit nonzero when a cell
# regressed (stopped connecting, direct path now relayed, slower past the thresholds, or
# missing). See reports/README.md, "Connectivity matrices: matrix.json".
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: scripts/matrix_regress.sh [--matrix FILE] [--baseline FILE] [--reports DIR] [--update]

Build sim (release), run `sim matrix FILE --reports DIR`, then
`sim compare BASELINE DIR/<name>/matrix.json`, where <name> is the matrix file's top-level
`name = "..."` (default: the file's stem). Prints the comparison; exits 1 when it fails.

  --matrix FILE     matrix definition (default scenarios/matrix_ci.toml)
  --baseline FILE   baseline matrix.json (default reports/baselines/matrix_ci.json)
  --reports DIR     where sim writes reports (default reports)
  --update          copy the fresh matrix.json over the baseline instead of comparing
  -h, --help        this help

Extra arguments for `sim compare` can be passed in SIM_COMPARE_ARGS (e.g.
SIM_COMPARE_ARGS="--time-ratio 2 --time-abs-ms 400"); for `sim matrix` in SIM_MATRIX_ARGS
(e.g. "--jobs 2"). Needs root (network namespaces).
EOF
}

die() {
    echo "matrix_regress: $*" >&2
    exit 2
}

# Paths given on the command line are relative to the caller's directory; defaults to the
# repository's root.
abs() {
    case "$1" in
        /*) printf '%s\n' "$1" ;;
        *) printf '%s\n' "$PWD/$1" ;;
    esac
}

MATRIX=scenarios/matrix_ci.toml
BASELINE=reports/baselines/matrix_ci.json
REPORTS=reports
UPDATE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --matrix) [ $# -ge 2 ] || die "--matrix needs a file"; MATRIX=$(abs "$2"); shift 2 ;;
        --baseline) [ $# -ge 2 ] || die "--baseline needs a file"; BASELINE=$(abs "$2"); shift 2 ;;
        --reports) [ $# -ge 2 ] || die "--reports needs a directory"; REPORTS=$(abs "$2"); shift 2 ;;
        --update) UPDATE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done
cd "$(dirname "$0")/.."

[ -f "$MATRIX" ] || die "no matrix file $MATRIX"
if [ "$UPDATE" = 0 ] && [ ! -f "$BASELINE" ]; then
    die "no baseline $BASELINE (create it with --update after a run you trust)"
fi

# The matrix name: the top-level `name = "..."` of the TOML (before any [table]), else the stem.
name=$(awk '
    /^[[:space:]]*\[/ { exit }
    /^[[:space:]]*name[[:space:]]*=/ {
        line = $0
        sub(/^[^=]*=[[:space:]]*/, "", line)
        if (match(line, /^"[^"]*"/) || match(line, /^'\''[^'\'']*'\''/)) {
            print substr(line, 2, RLENGTH - 2)
        }
        exit
    }' "$MATRIX")
if [ -z "$name" ]; then
    name=$(basename "$MATRIX")
    name=${name%.*}
fi
case "$name" in
    */* | . | ..) die "matrix name $name is not a folder name" ;;
esac

cargo build -q --release -p sim
SIM="${CARGO_TARGET_DIR:-target}/release/sim"
[ -x "$SIM" ] || die "no sim binary at $SIM after the build"

FRESH="$REPORTS/$name/matrix.json"
rm -f "$FRESH"
# shellcheck disable=SC2086 # word splitting of the extra arguments is wanted
"$SIM" matrix "$MATRIX" --reports "$REPORTS" ${SIM_MATRIX_ARGS:-}
[ -f "$FRESH" ] || die "sim matrix wrote no $FRESH (is the name \"$name\" right?)"

if [ "$UPDATE" = 1 ]; then
    mkdir -p "$(dirname "$BASELINE")"
    cp "$FRESH" "$BASELINE"
    echo "matrix_regress: baseline $BASELINE updated from $FRESH"
    exit 0
fi

status=0
# shellcheck disable=SC2086
"$SIM" compare "$BASELINE" "$FRESH" ${SIM_COMPARE_ARGS:-} || status=$?
case "$status" in
    0) echo "matrix_regress: no regression against $BASELINE" ;;
    1) echo "matrix_regress: REGRESSION against $BASELINE (reports in $REPORTS/$name/)" >&2 ;;
    *) echo "matrix_regress: sim compare failed to run (exit $status)" >&2 ;;
esac
exit "$status"
