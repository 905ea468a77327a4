#!/usr/bin/env bash
# Binding requests per second answered by turnd and by coturn's turnserver, measured in the same
# run with the same load generator (stunload), and their ratio (goal: turnd >= 2x coturn); and,
# from the same runs, each server's CPU time per answered request, and that ratio (coturn's CPU
# per answer / turnd's: how many times cheaper turnd answers).
#
# Usage: scripts/bench_binding.sh [options]
#   --quick            CI smoke mode: 1 round of 1 s per server; the ratio is printed, never
#                      asserted; if coturn is not installed, turnd alone is measured
#   --rounds N         rounds; each round measures every server once, the order rotating from
#                      round to round (default 3)
#   --duration S       measured seconds per server per round (default 4)
#   --warmup S         warm-up seconds before each measurement, not counted (default 1)
#   --threads N        server threads: turnd --workers N, coturn -m N (default: cores)
#   --shape SHAPE      the load's shape, a preset of --sockets and --window:
#                        pipelined      32 sockets x 32 requests in flight (the default)
#                        one-in-flight  64 sockets x 1 request in flight (a reply per socket
#                                       at a time: nothing for GSO to coalesce, and the load
#                                       generator takes a much larger share of the CPU)
#                      --sockets / --window, given as well, override the preset's value
#   --sockets N        stunload sockets, i.e. client source ports (default 32: enough flows
#                      for SO_REUSEPORT to spread them evenly over the servers' sockets; with 8
#                      an unlucky hash leaves one thread with most of the load)
#   --window N         stunload requests in flight per socket (default 32)
#   --load-threads N   stunload threads (default 1)
#   --variants         also measure turnd with --udp-io batch (recvmmsg/sendmmsg, no GSO)
#                      and --udp-io simple (one recv/send per datagram), for comparison
#   --no-build         use the binaries already built
#   --json FILE        also write the figures as JSON to FILE
#
# Environment: CARGO_TARGET_DIR (default: <workspace>/target), TURNSERVER (default: turnserver
# from PATH).
#
# The load: stunload, a closed loop. Each socket keeps --window Binding requests in flight and
# sends a new one for every valid success response (matched by transaction ID, XOR-MAPPED-ADDRESS
# checked); responses per second are counted after the warm-up. It sends each socket's batch of
# requests as one UDP GSO send (the server receives ordinary, separate datagrams), so that on a
# 2-core machine it takes as little CPU as possible from the server it measures. The same
# stunload with the same flags loads every server.
#
# Fairness: both servers are configured alike: UDP only, the same four RFC 5780 addresses
# (127.0.0.1 and 127.0.0.2, ports P and P+1), no authentication, no rate limiting (turnd
# --rate-limit 0; coturn: none configured), SOFTWARE on, and the same number of threads,
# each owning one SO_REUSEPORT socket per address: turnd --workers N, coturn -m N (N "general
# relay" threads, each listening on every address: coturn's default "UDP thread per CPU core"
# engine). N defaults to the number of cores, which is also coturn's best setting here (-m 2
# and -m 4 measured alike on 2 cores, -m 1 markedly slower). Both send the same 92-byte
# answer with the same five attributes (XOR-MAPPED-ADDRESS, MAPPED-ADDRESS, RESPONSE-ORIGIN,
# OTHER-ADDRESS, SOFTWARE): stunload prints them for each server.
#
# turnd coalesces the replies to one client address within a batch with UDP GSO (same datagrams
# on the wire, one trip through the kernel's stack). That pays off here because each stunload
# socket has --window requests in flight; with --window 1 nothing coalesces. --variants shows
# what turnd does without GSO (and without batching) on the same load.
#
# Two metrics. Throughput (requests/s answered) depends on the load's shape: the load generator
# shares the cores with the server (2 here), and the fewer requests each of its system calls
# carries (--window 1), the more CPU it takes from the server. CPU time per answer leaves that
# share out: for each measurement the script reads the server process's utime + stime (all
# its threads; /proc/PID/stat, in clock ticks, getconf CLK_TCK) just before and just after the
# stunload run and divides the difference by the answers stunload received in that whole run
# (warm-up included: stunload --json's total_responses), i.e. the CPU time the server spent per
# request it answered, in microseconds. It counts the kernel's work done on the server's behalf
# (system calls, and loopback delivery of its replies, which runs in the sending thread), not
# the load generator's. Without load both servers are all but idle (about 0.1 tick per second
# each, measured: under 0.1% of a run's count). stunload's own CPU per answer is printed too.
#
# CPU per answer is not independent of the shape either, where the server's own work depends
# on it: with one request in flight per socket, nothing batches or coalesces, so each datagram
# costs turnd a wake-up and its own system calls. Measured (2 cores shared with other work,
# load average 2-5; medians of 3-5 rounds, several runs):
#   pipelined      turnd 1.25-1.36 us, coturn 6.2-6.7 us per answer (coturn/turnd 4.9x);
#                  stunload 1.2 us per answer from turnd, 2.6-2.9 us from coturn
#   one-in-flight  turnd 5.0-5.5 us, coturn 7.1-8.3 us (1.4-1.5x); stunload 5.2-6.2 us
# With the cores saturated, the throughput ratio follows the sums of server + load generator
# CPU per answer: pipelined about (6.3 + 2.7) / (1.3 + 1.2) = 3.6 (measured 3.2-3.6x),
# one-in-flight about (7.6 + 5.7) / (5.3 + 5.2) = 1.3 (measured 1.2-1.3x). The goal verdict
# judges throughput; the CPU-efficiency verdict (coturn's CPU per answer >= 2x turnd's) is
# printed beside it.
#
# Traffic goes to loopback only. The script stops only the processes it started, by PID, on
# every exit path. It exits non-zero only when something fails to run (build, a server,
# stunload); a missed goal is reported, not an error.
set -euo pipefail

ROUNDS=3
DURATION=4
WARMUP=1
THREADS=""
SHAPE=pipelined
SOCKETS=""
WINDOW=""
LOAD_THREADS=1
BUILD=1
VARIANTS=0
QUICK=0
JSON_OUT=""
GOAL=2

die() {
  echo "bench_binding: $*" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
  --quick) QUICK=1 ;;
  --rounds) ROUNDS="${2:?}"; shift ;;
  --duration) DURATION="${2:?}"; shift ;;
  --warmup) WARMUP="${2:?}"; shift ;;
  --threads) THREADS="${2:?}"; shift ;;
  --shape) SHAPE="${2:?}"; shift ;;
  --sockets) SOCKETS="${2:?}"; shift ;;
  --window) WINDOW="${2:?}"; shift ;;
  --load-threads) LOAD_THREADS="${2:?}"; shift ;;
  --variants) VARIANTS=1 ;;
  --no-build) BUILD=0 ;;
  --json) JSON_OUT="${2:?}"; shift ;;
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  *) die "unknown option $1 (see --help)" ;;
  esac
  shift
done
case "$SHAPE" in
pipelined) SOCKETS=${SOCKETS:-32} WINDOW=${WINDOW:-32} ;;
one-in-flight) SOCKETS=${SOCKETS:-64} WINDOW=${WINDOW:-1} ;;
*) die "unknown --shape $SHAPE (pipelined or one-in-flight)" ;;
esac
if [ "$QUICK" = 1 ]; then
  ROUNDS=1
  DURATION=1
  WARMUP=0.3
fi
for v in ROUNDS SOCKETS WINDOW LOAD_THREADS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
if [ -z "$THREADS" ]; then
  THREADS=$(nproc 2>/dev/null || echo 2)
fi
[[ "$THREADS" =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer"

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release"
TURNSERVER="${TURNSERVER:-$(command -v turnserver || true)}"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bench_binding.XXXXXX")
PIDS=()

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 30); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
  done
  PIDS=()
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$BUILD" = 1 ]; then
  echo "== building release binaries (turnd, stunload) into $TARGET_DIR"
  (cd "$ROOT" && cargo build --release --quiet -p turn --bin turnd --bin stunload) ||
    die "cargo build failed"
fi
for b in turnd stunload; do
  [ -x "$BIN/$b" ] || die "$BIN/$b is missing (build it or drop --no-build)"
done

HAVE_COTURN=1
if [ -z "$TURNSERVER" ] || [ ! -x "$TURNSERVER" ]; then
  if [ "$QUICK" = 1 ]; then
    echo "== coturn's turnserver is not installed: measuring turnd alone (no ratio)"
    HAVE_COTURN=0
  else
    die "coturn's turnserver not found (install coturn or set TURNSERVER=/path/to/turnserver)"
  fi
fi

# A UDP port pair (P, P+1) free on both loopback addresses, as far as ss can tell.
pick_ports() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 30000))
    if command -v ss >/dev/null 2>&1 &&
      ss -Hlun 2>/dev/null | awk '{print $4}' | grep -Eq ":($p|$((p + 1)))\$"; then
      continue
    fi
    echo "$p"
    return
  done
  die "no free port pair found"
}

# Wait until a STUN server answers on 127.0.0.1:$1 (stunload exits 0 once it got an answer).
wait_ready() {
  local port=$1 pid=$2 name=$3
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || die "$name exited during start-up (log: see below)
$(tail -n 20 "$WORK/$name.log" 2>/dev/null)"
    if "$BIN/stunload" --target "127.0.0.1:$port" --duration 0.1 --warmup 0 --sockets 1 \
      --window 1 >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  die "$name does not answer on 127.0.0.1:$port
$(tail -n 20 "$WORK/$name.log" 2>/dev/null)"
}

USED_PORTS=" "
# free_pair: a port pair not yet used by this script (and free as far as ss can tell).
free_pair() {
  local p
  for _ in $(seq 1 50); do
    p=$(pick_ports)
    case "$USED_PORTS" in
    *" $p "* | *" $((p + 1)) "* | *" $((p - 1)) "*) continue ;;
    esac
    USED_PORTS="$USED_PORTS$p $((p + 1)) "
    echo "$p"
    return
  done
  die "no free port pair found"
}

declare -A PORT
declare -A SPID # name -> the server's PID (the process itself: started with exec semantics)
NAMES=()

# start_turnd NAME IO: a turnd with --udp-io IO (gso: the default; batch; simple).
start_turnd() {
  local name=$1 io=$2 port
  port=$(free_pair)
  echo "== $name: turnd --udp-io $io --listen 127.0.0.1:$port --alt-ip 127.0.0.2" \
    "--alt-port $((port + 1)) --no-tcp --rate-limit 0 --workers $THREADS"
  RUST_LOG=warn "$BIN/turnd" --udp-io "$io" --listen "127.0.0.1:$port" --alt-ip 127.0.0.2 \
    --alt-port $((port + 1)) --no-tcp --rate-limit 0 --workers "$THREADS" \
    >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  wait_ready "$port" "${PIDS[-1]}" "$name"
  PORT[$name]=$port
  SPID[$name]=${PIDS[-1]}
  NAMES+=("$name")
}

start_coturn() {
  local port
  port=$(free_pair)
  # -n: no config file. --pidfile/--userdb: keep coturn's files in our scratch directory.
  # --no-tcp --no-tls --no-dtls: UDP only, like turnd --no-tcp. No auth (Binding needs none).
  # -m N: N relay threads, each with its own SO_REUSEPORT socket on every listening address.
  local args=(-n -L 127.0.0.1 -L 127.0.0.2 --listening-port="$port"
    --alt-listening-port=$((port + 1)) --no-tcp --no-tls --no-dtls --no-cli
    --no-auth --log-file=stdout --simple-log --pidfile "$WORK/turnserver.pid"
    --userdb "$WORK/turndb" -m "$THREADS")
  echo "== coturn: $TURNSERVER ${args[*]}"
  "$TURNSERVER" "${args[@]}" >"$WORK/coturn.log" 2>&1 &
  PIDS+=($!)
  wait_ready "$port" "${PIDS[-1]}" coturn
  echo "== coturn version: $("$TURNSERVER" --version 2>/dev/null | head -n 1 || echo '?')"
  PORT[coturn]=$port
  SPID[coturn]=${PIDS[-1]}
  NAMES+=(coturn)
}

start_turnd turnd gso
[ "$HAVE_COTURN" = 1 ] && start_coturn
if [ "$VARIANTS" = 1 ]; then
  start_turnd turnd-batch batch
  start_turnd turnd-simple simple
fi

LOAD_ARGS=(--duration "$DURATION" --warmup "$WARMUP" --sockets "$SOCKETS" --window "$WINDOW"
  --threads "$LOAD_THREADS")
loadavg() { cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?'; }
echo "== shape $SHAPE: stunload ${LOAD_ARGS[*]} (1 socket = 1 source port; closed loop)"
echo "== machine: $(nproc) cores, load average $(loadavg)"

CLK_TCK=$(getconf CLK_TCK 2>/dev/null || true)
[[ "$CLK_TCK" =~ ^[1-9][0-9]*$ ]] || die "cannot read the clock tick rate (getconf CLK_TCK)"

# cpu_ticks PID: utime + stime of process PID, all its threads (the process totals of
# /proc/PID/stat, fields 14 and 15, in clock ticks). Field 2, the command name, is in
# parentheses and may hold spaces: the fields are counted from the last ')'.
cpu_ticks() {
  local stat f
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  read -r -a f <<<"${stat##*) }"
  # f[0] is field 3 (state): utime is f[11], stime f[12].
  [[ "${f[11]:-}" =~ ^[0-9]+$ && "${f[12]:-}" =~ ^[0-9]+$ ]] || return 1
  echo $((f[11] + f[12]))
}

# children_cpu FILE: user + system seconds of this shell's reaped children, from the output of
# the builtin `times` (second line, "XmY.YYYs XmY.YYYs"; the decimal mark follows the locale).
children_cpu() {
  awk 'NR == 2 { gsub(",", "."); s = 0
    for (i = 1; i <= 2; i++) { split($i, a, "m"); s += a[1] * 60 + a[2] }
    printf "%.3f", s }' "$1"
}

# jget KEY JSON: the value of a scalar KEY in stunload's flat JSON object (strings unquoted).
jget() {
  sed -n "s/.*\"$1\":\(\"[^\"]*\"\|[^,}]*\).*/\1/p" <<<"$2" | tr -d '"'
}

# measure NAME: sets RPS to the responses per second, CPU_US to the server's CPU microseconds
# per answer, LOAD_US to stunload's own, and prints stunload's result line, then the CPU
# figures. stunload runs in the background and is waited for, so a signal stops the run at
# once (the trap ends it too). stunload's CPU time: the shell's children's times (builtin
# `times`, redirected, so no subshell) before and after it is reaped; it is the only child
# reaped in between.
measure() {
  local name=$1 spid=${SPID[$1]} json pid status=0 c0 c1 answers attrs k lg
  local -A v
  c0=$(cpu_ticks "$spid") || die "$name (pid $spid) is gone before its run"
  times >"$WORK/times0"
  "$BIN/stunload" --json --target "127.0.0.1:${PORT[$name]}" --label "$name" "${LOAD_ARGS[@]}" \
    >"$WORK/stunload.out" 2>"$WORK/stunload.err" &
  pid=$!
  PIDS+=("$pid")
  wait "$pid" || status=$?
  times >"$WORK/times1"
  unset 'PIDS[-1]'
  c1=$(cpu_ticks "$spid") || die "$name (pid $spid) exited during its run
$(tail -n 20 "$WORK/$name.log" 2>/dev/null)"
  # A server that died (and was reaped) meanwhile would count in the children's times.
  for k in "${NAMES[@]}"; do
    kill -0 "${SPID[$k]}" 2>/dev/null || die "$k (pid ${SPID[$k]}) exited
$(tail -n 20 "$WORK/$k.log" 2>/dev/null)"
  done
  json=$(cat "$WORK/stunload.out")
  [ "$status" = 0 ] ||
    die "stunload against $name failed (exit $status): $json $(cat "$WORK/stunload.err")"
  for k in label target responses_per_sec responses seconds sent timeouts error_responses \
    invalid late socket_errors sockets window threads request_bytes gso response_bytes \
    total_responses; do
    v[$k]=$(jget "$k" "$json")
  done
  attrs=$(sed -n 's/.*"response_attributes":\[\([^]]*\)\].*/\1/p' <<<"$json" | tr -d '"')
  answers=${v[total_responses]}
  [[ "$answers" =~ ^[1-9][0-9]*$ && -n "${v[responses_per_sec]}" ]] ||
    die "cannot read stunload's JSON result: $json"
  RPS=$(awk -v x="${v[responses_per_sec]}" 'BEGIN { printf "%.0f", x }')
  CPU_US=$(awk -v t=$((c1 - c0)) -v hz="$CLK_TCK" -v n="$answers" \
    'BEGIN { printf "%.3f", t / hz * 1e6 / n }')
  lg=$(awk -v a="$(children_cpu "$WORK/times0")" -v b="$(children_cpu "$WORK/times1")" \
    'BEGIN { printf "%.3f", b - a }')
  LOAD_US=$(awk -v s="$lg" -v n="$answers" 'BEGIN { printf "%.3f", s * 1e6 / n }')
  # stunload's own text line (what it prints without --json), then the CPU figures.
  echo "   stunload label=${v[label]} target=${v[target]} rps=$RPS responses=${v[responses]}" \
    "secs=$(awk -v x="${v[seconds]}" 'BEGIN { printf "%.2f", x }') sent=${v[sent]}" \
    "timeouts=${v[timeouts]} errors=${v[error_responses]} invalid=${v[invalid]}" \
    "late=${v[late]} socket_errors=${v[socket_errors]} sockets=${v[sockets]}" \
    "window=${v[window]} threads=${v[threads]} request_bytes=${v[request_bytes]}" \
    "gso=${v[gso]} response_bytes=${v[response_bytes]} attrs=$attrs"
  echo "   $name cpu: $((c1 - c0)) ticks (1/$CLK_TCK s) for $answers answers (whole run," \
    "warm-up included) = $CPU_US us per answer; stunload's: $lg s = $LOAD_US us per answer"
}

# median FORMAT: the median of the whitespace-separated numbers on stdin.
median() {
  tr ' ' '\n' | grep -v '^$' | sort -g | awk -v f="$1" '{a[NR]=$1} END {
    if (NR == 0) { m = 0 } else if (NR % 2) { m = a[(NR+1)/2] }
    else { m = (a[NR/2] + a[NR/2+1]) / 2 }
    printf f "\n", m }'
}

ratio() {
  awk -v t="$1" -v c="$2" 'BEGIN { printf "%.2f", (c > 0 ? t / c : 0) }'
}

declare -A ALL     # name -> "rps rps ..."
declare -A ROUND   # "name,r" -> rps
declare -A CPU_ALL # name -> "us us ..." (server CPU microseconds per answer)
declare -A CPU_ROUND # "name,r" -> us
declare -A LOAD_ALL  # name -> "us us ..." (stunload's CPU microseconds per answer)
RATIOS=""          # per-round turnd/coturn (throughput)
CPU_RATIOS=""      # per-round coturn/turnd (CPU per answer)
N=${#NAMES[@]}
for r in $(seq 1 "$ROUNDS"); do
  echo "-- round $r/$ROUNDS"
  # Rotate the order every round so no server always runs first (or right after another).
  for k in $(seq 0 $((N - 1))); do
    name=${NAMES[$(((k + r - 1) % N))]}
    measure "$name"
    v=$RPS
    ROUND["$name,$r"]=$v
    ALL[$name]="${ALL[$name]:-} $v"
    CPU_ROUND["$name,$r"]=$CPU_US
    CPU_ALL[$name]="${CPU_ALL[$name]:-} $CPU_US"
    LOAD_ALL[$name]="${LOAD_ALL[$name]:-} $LOAD_US"
  done
  if [ "$HAVE_COTURN" = 1 ]; then
    RATIOS="$RATIOS $(ratio "${ROUND[turnd,$r]}" "${ROUND[coturn,$r]}")"
    CPU_RATIOS="$CPU_RATIOS $(ratio "${CPU_ROUND[coturn,$r]}" "${CPU_ROUND[turnd,$r]}")"
  fi
done

echo
printf '%-7s' round
for name in "${NAMES[@]}"; do printf ' %14s' "$name"; done
[ "$HAVE_COTURN" = 1 ] && printf ' %14s' turnd/coturn
echo
for r in $(seq 1 "$ROUNDS"); do
  printf '%-7s' "$r"
  for name in "${NAMES[@]}"; do printf ' %14s' "${ROUND[$name,$r]}"; done
  [ "$HAVE_COTURN" = 1 ] && printf ' %14s' "$(ratio "${ROUND[turnd,$r]}" "${ROUND[coturn,$r]}")"
  echo
done
declare -A MED
printf '%-7s' median
for name in "${NAMES[@]}"; do
  MED[$name]=$(median %.0f <<<"${ALL[$name]}")
  printf ' %14s' "${MED[$name]}"
done
RATIO=""
if [ "$HAVE_COTURN" = 1 ]; then
  RATIO=$(ratio "${MED[turnd]}" "${MED[coturn]}")
  printf ' %14s' "$RATIO"
fi
echo
echo "(requests/s answered: valid Binding success responses matched by transaction ID)"

echo
printf '%-7s' round
for name in "${NAMES[@]}"; do printf ' %14s' "$name"; done
[ "$HAVE_COTURN" = 1 ] && printf ' %14s' coturn/turnd
echo
for r in $(seq 1 "$ROUNDS"); do
  printf '%-7s' "$r"
  for name in "${NAMES[@]}"; do printf ' %14s' "${CPU_ROUND[$name,$r]}"; done
  [ "$HAVE_COTURN" = 1 ] &&
    printf ' %14s' "$(ratio "${CPU_ROUND[coturn,$r]}" "${CPU_ROUND[turnd,$r]}")"
  echo
done
declare -A CPU_MED
printf '%-7s' median
for name in "${NAMES[@]}"; do
  CPU_MED[$name]=$(median %.3f <<<"${CPU_ALL[$name]}")
  printf ' %14s' "${CPU_MED[$name]}"
done
CPU_RATIO=""
if [ "$HAVE_COTURN" = 1 ]; then
  CPU_RATIO=$(ratio "${CPU_MED[coturn]}" "${CPU_MED[turnd]}")
  printf ' %14s' "$CPU_RATIO"
fi
echo
echo "(server CPU microseconds (utime + stime, all threads) per answered request; lower is better)"
declare -A LOAD_MED
printf '%-7s' stunload
for name in "${NAMES[@]}"; do
  LOAD_MED[$name]=$(median %.3f <<<"${LOAD_ALL[$name]}")
  printf ' %14s' "${LOAD_MED[$name]}"
done
echo
echo "(median CPU microseconds the load generator spent per answer from each server: its share of"
echo " the same cores, one reason why the throughput ratio depends on the load's shape)"

echo
echo "shape $SHAPE: $SOCKETS sockets x $WINDOW in flight; load average at the end: $(loadavg)"
if [ "$HAVE_COTURN" = 1 ]; then
  for name in "${NAMES[@]}"; do
    [ "$name" = coturn ] && continue
    echo "ratio of medians $name/coturn: $(ratio "${MED[$name]}" "${MED[coturn]}")"
  done
  echo "median of per-round turnd/coturn ratios: $(median %.2f <<<"$RATIOS")"
  for name in "${NAMES[@]}"; do
    [ "$name" = coturn ] && continue
    echo "CPU per answer, ratio of medians coturn/$name: $(ratio "${CPU_MED[coturn]}" \
      "${CPU_MED[$name]}") (${CPU_MED[coturn]} us / ${CPU_MED[$name]} us)"
  done
  echo "median of per-round coturn/turnd CPU-per-answer ratios: $(median %.2f <<<"$CPU_RATIOS")"
  if awk -v r="$RATIO" -v g="$GOAL" 'BEGIN { exit !(r >= g) }'; then
    echo "goal (turnd >= ${GOAL}x coturn): MET ($RATIO)"
  else
    echo "goal (turnd >= ${GOAL}x coturn): NOT MET ($RATIO)"
  fi
  if awk -v r="$CPU_RATIO" -v g="$GOAL" 'BEGIN { exit !(r >= g) }'; then
    echo "CPU efficiency (turnd >= ${GOAL}x cheaper per answer than coturn): MET ($CPU_RATIO)"
  else
    echo "CPU efficiency (turnd >= ${GOAL}x cheaper per answer than coturn): NOT MET ($CPU_RATIO)"
  fi
fi

if [ -n "$JSON_OUT" ]; then
  {
    printf '{"rounds":%s,"duration":%s,"threads":%s,"shape":"%s","sockets":%s,"window":%s' \
      "$ROUNDS" "$DURATION" "$THREADS" "$SHAPE" "$SOCKETS" "$WINDOW"
    for name in "${NAMES[@]}"; do
      # shellcheck disable=SC2086
      printf ',"%s":[%s],"%s_median":%s' "$name" "$(echo ${ALL[$name]} | tr ' ' ',')" \
        "$name" "${MED[$name]}"
      # shellcheck disable=SC2086
      printf ',"%s_cpu_us_per_answer":[%s],"%s_cpu_us_per_answer_median":%s' "$name" \
        "$(echo ${CPU_ALL[$name]} | tr ' ' ',')" "$name" "${CPU_MED[$name]}"
      printf ',"%s_stunload_cpu_us_per_answer_median":%s' "$name" "${LOAD_MED[$name]}"
    done
    printf ',"ratio":%s,"cpu_ratio":%s}\n' "${RATIO:-null}" "${CPU_RATIO:-null}"
  } >"$JSON_OUT"
fi
