#!/usr/bin/env bash
# TURN relay benchmark: turnd against coturn's turnserver under the same turnutils_uclient load
# in the same run, printed as ratios (goal: turnd >= 1.5x coturn's relayed messages per second),
# plus the allocation rate of both (turnload) and turnd's memory (RSS) holding N allocations.
#
# Usage: scripts/bench_turn.sh [--quick] [--no-build] [--rounds N] [--sessions N]
#                              [--messages N] [--allocations N] [--threads N]
#   --quick          CI mode (< 30 s): 1 round, small loads, uclient over channels only (its
#                    Send figures repeat the channel ones), no saturating turnload section;
#                    ratios printed, never asserted
#   --no-build       use the release binaries already built
#   --rounds N       rounds; each measures every server once, alternating the order (default 2)
#   --sessions N     uclient sessions (-m; default 16)
#   --messages N     messages per session (-n; default 20000)
#   --allocations N  allocations for the allocation-rate and memory figures (default 10000)
#   --threads N      server threads: turnd --workers N, coturn --relay-threads N (default: cores)
#   --pin            server on CPU 0 with one thread, load tools and peer on the other CPUs:
#                    the server's capacity, not the load tool's, sets the rate
#
# The relay load: turnutils_uclient -c (no RTCP allocations) -z 0 with -m sessions, each
# sending -n messages of 100 bytes to turnutils_peer (an echo peer) through its allocation,
# over channels (uclient's default) and then with Send indications (-s). Each message is
# relayed twice (to the peer and back). uclient's send timer ticks every millisecond and sends
# up to 50 messages per session per tick while the session is due; -z 0 keeps every session
# due, so uclient floods open loop and the server drops what it cannot relay: with the default
# 16 x 20000 messages both servers lose messages (they are saturated) and the echoed count
# measures the server. (With paced sessions, -z > 0, uclient measures itself: 50 sessions at
# the default -z 20 give ~5000 msg/s whatever the server.) uclient starts its sessions at
# random over its first ~6 s and waits a few seconds after the last send, so its "Total
# transmit time" (whole seconds) is longer than the flood itself: the rate below is a lower
# bound, the same for both servers. Figures per run:
#  - messages/s: echoed messages received by uclient / uclient's "Total transmit time", and
#    the loss (offered - echoed) / offered;
#  - server CPU per echoed message (utime + stime of the server process over the whole run,
#    /proc/PID/stat); the ratio coturn/turnd says how many times cheaper turnd relays.
# Fair shares: both servers get the same thread count (turnd --workers N, coturn
# --relay-threads N, i.e. its -m N), and the same uclient and peer processes beside them.
# TURND=path/to/turnd compares another build (say the previous commit's).
# Every server is restarted before each measured run (uclient leaves its allocations behind). Both servers: UDP only, loopback, long-term credentials test:test,
# loopback peers allowed, no rate limits, the same relay thread count.
#
# The saturating relay load: uclient cannot saturate a server on a small machine, so the same
# comparison is also made with turnload's closed loop (64 allocations, each with a channel or a
# permission to turnutils_peer, 8 messages in flight per allocation): echoed messages/s and
# server CPU per message.
#
# The allocation rate: turnload creates --allocations allocations (the 401 round trip and the
# authenticated Allocate each) in waves of 256 sockets. turnd's RSS is read from /proc while
# turnload holds them, and compared with its RSS before.
#
# The machine is usually shared (other agents, the load tool, the peer and the server on 2 cores):
# compare ratios from one run, not absolute figures across runs.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
pin=0 quick=0 build=1 rounds=2 sessions=16 messages=20000 allocations=10000 load_allocs=64 load_seconds=5
threads="$(nproc)"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) quick=1 ;;
        --no-build) build=0 ;;
        --rounds) rounds="$2"; shift ;;
        --sessions) sessions="$2"; shift ;;
        --messages) messages="$2"; shift ;;
        --allocations) allocations="$2"; shift ;;
        --threads) threads="$2"; shift ;;
        --pin) pin=1 ;;
        -h|--help) sed -n '2,48p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
if [[ $quick == 1 ]]; then
    rounds=1 sessions=4 messages=2000 allocations=500 load_seconds=1
fi

# --pin: taskset prefixes for the server and for the load side.
srv_cpu=() load_cpu=()
if [[ $pin == 1 ]]; then
    command -v taskset >/dev/null || { echo "--pin needs taskset (util-linux)" >&2; exit 1; }
    (( $(nproc) >= 2 )) || { echo "--pin needs 2 CPUs" >&2; exit 1; }
    threads=1
    srv_cpu=(taskset -c 0) load_cpu=(taskset -c "1-$(( $(nproc) - 1 ))")
fi

for tool in turnutils_uclient turnutils_peer; do
    command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install coturn" >&2; exit 1; }
done
turnserver="${TURNSERVER:-$(command -v turnserver || true)}"

if [[ $build == 1 ]]; then
    cargo build --release -p turn --bin turnd --bin turnload >&2
fi
turnd="${TURND:-$target/release/turnd}"
turnload="$target/release/turnload"

work="$(mktemp -d /tmp/bench_turn.XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# Ports: unlikely to collide with the test suite's.
srv_port=34870 peer_port=34874 relay_lo=45000 relay_hi=59999

now() { date +%s.%N; }

start_peer() {
    "${load_cpu[@]}" turnutils_peer -L 127.0.0.1 -p "$peer_port" >"$work/peer.log" 2>&1 &
    pids+=($!)
    sleep 0.3
}

# start_server NAME -> sets server_pid
start_server() {
    # turnd binds with SO_REUSEPORT: a server left on the port (another run of this script)
    # would silently share the load. Refuse rather than measure that.
    if command -v ss >/dev/null && [[ -n "$(ss -Hlun "sport = :$srv_port")" ]]; then
        echo "UDP port $srv_port is already in use (another benchmark running?)" >&2
        exit 1
    fi
    case "$1" in
        turnd)
            "${srv_cpu[@]}" "$turnd" --listen "127.0.0.1:$srv_port" --no-tcp --workers "$threads" \
                --user test:test --realm example.org --allow-peer 127.0.0.0/8 \
                --relay-ports "$relay_lo-$relay_hi" --rate-limit 0 \
                --user-quota 0 --total-quota 0 \
                >"$work/turnd.out" 2>"$work/turnd.err" &
            ;;
        coturn)
            "${srv_cpu[@]}" stdbuf -oL -eL "$turnserver" -n -L 127.0.0.1 --listening-port "$srv_port" \
                --no-tcp --no-tls --no-dtls --no-tcp-relay --no-cli --log-file=stdout \
                --simple-log --lt-cred-mech --user test:test --realm example.org \
                --allow-loopback-peers --relay-ip 127.0.0.1 --min-port "$relay_lo" \
                --max-port "$relay_hi" --relay-threads "$threads" --no-rfc5780 \
                >"$work/coturn.out" 2>&1 &
            ;;
    esac
    server_pid=$!
    pids+=("$server_pid")
    # Ready when it answers a Binding request.
    for _ in $(seq 50); do
        if timeout 1 turnutils_stunclient -p "$srv_port" 127.0.0.1 >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    echo "$1 did not start" >&2
    exit 1
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    sleep 0.2
}

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# relay_run NAME FLAGS -> sets r_rate (echoed msg/s over uclient's transmit time), r_echoed,
# r_cpu_us (server CPU microseconds per echoed message)
relay_run() {
    local name="$1" flags="$2" c0 c1 secs
    start_server "$name"
    c0="$(cpu_ticks "$server_pid")"
    # shellcheck disable=SC2086
    timeout 300 "${load_cpu[@]}" turnutils_uclient -c $flags -z 0 -m "$sessions" -n "$messages" -l 100 \
        -e 127.0.0.1 -r "$peer_port" -u test -w test -p "$srv_port" 127.0.0.1 \
        >"$work/uclient.log" 2>&1 || true
    c1="$(cpu_ticks "$server_pid")"
    stop_server
    r_echoed="$(grep -o 'start_mclient: tot_send_msgs=[0-9]*, tot_recv_msgs=[0-9]*' "$work/uclient.log" \
        | tail -1 | sed 's/.*tot_recv_msgs=//')"
    r_echoed="${r_echoed:-0}"
    # uclient reports its transmit phase in whole seconds (at least 1).
    secs="$(sed -n 's/.*Total transmit time is \([0-9]*\).*/\1/p' "$work/uclient.log" | tail -1)"
    secs="${secs:-0}"; (( secs > 0 )) || secs=1
    r_rate=$(( r_echoed / secs ))
    r_cpu_us="$(awk -v t="$(( c1 - c0 ))" -v hz="$(getconf CLK_TCK)" -v n="$r_echoed" \
        'BEGIN { printf "%.2f", (n ? t * 1e6 / hz / n : 0) }')"
}

# load_run NAME MODE -> sets l_rate (echoed msg/s from turnload's closed loop), l_cpu_us
load_run() {
    local name="$1" mode="$2" c0 c1 flags=""
    [[ $mode == send ]] && flags="--send"
    start_server "$name"
    c0="$(cpu_ticks "$server_pid")"
    # shellcheck disable=SC2086
    "${load_cpu[@]}" "$turnload" --server "127.0.0.1:$srv_port" --user test:test --allocations "$load_allocs" \
        --peer "127.0.0.1:$peer_port" $flags --seconds "$load_seconds" --in-flight 8 \
        >"$work/load.out" 2>"$work/load.err" || true
    c1="$(cpu_ticks "$server_pid")"
    stop_server
    l_rate="$(sed -n 's/^turnload relay .*rate=\([0-9]*\).*/\1/p' "$work/load.out")"
    l_rate="${l_rate:-0}"
    local echoed
    echoed="$(sed -n 's/^turnload relay .*echoed=\([0-9]*\).*/\1/p' "$work/load.out")"
    l_cpu_us="$(awk -v t="$(( c1 - c0 ))" -v hz="$(getconf CLK_TCK)" -v n="${echoed:-0}" \
        'BEGIN { printf "%.2f", (n ? t * 1e6 / hz / n : 0) }')"
}

rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

alloc_run() {
    local name="$1" before after
    start_server "$name"
    before="$(rss_kb "$server_pid")"
    "$turnload" --server "127.0.0.1:$srv_port" --user test:test --allocations "$allocations" \
        --hold 2 >"$work/turnload.out" 2>"$work/turnload.err" &
    local lp=$!
    pids+=("$lp")
    sleep 1
    while ! grep -q holding "$work/turnload.out" 2>/dev/null; do
        kill -0 "$lp" 2>/dev/null || break
        sleep 0.2
    done
    after="$(rss_kb "$server_pid")"
    wait "$lp" || true
    line="$(grep '^turnload allocated' "$work/turnload.out" || echo 'turnload allocated=0 rate=0')"
    stop_server
    line="$line before_kb=$before after_kb=$after"
}

start_peer
have_coturn=1
[[ -n "$turnserver" ]] || { have_coturn=0; echo "turnserver not found: measuring turnd alone" >&2; }

servers=(turnd)
[[ $have_coturn == 1 ]] && servers+=(coturn)

declare -A sum_ch sum_send cpu_ch cpu_send
for s in "${servers[@]}"; do sum_ch[$s]=0; sum_send[$s]=0; cpu_ch[$s]=0; cpu_send[$s]=0; done
for r in $(seq "$rounds"); do
    order=("${servers[@]}")
    if (( r % 2 == 0 )) && [[ ${#order[@]} == 2 ]]; then order=(coturn turnd); fi
    for s in "${order[@]}"; do
        relay_run "$s" ""
        ch=$r_rate nch=$r_echoed cch=$r_cpu_us
        # --quick: channels only (each uclient run lasts >= ~6 s whatever its load).
        if [[ $quick == 0 ]]; then relay_run "$s" "-s"; fi
        sd=$r_rate nsd=$r_echoed csd=$r_cpu_us
        offered=$(( sessions * messages ))
        lch=$(( offered > 0 ? (offered - nch) * 100 / offered : 0 ))
        lsd=$(( offered > 0 ? (offered - nsd) * 100 / offered : 0 ))
        echo "round $r $s: channels $ch msg/s ($nch of $offered echoed, ${lch}% lost, ${cch} us CPU/msg), send indications $sd msg/s ($nsd echoed, ${lsd}% lost, ${csd} us CPU/msg)"
        sum_ch[$s]=$(( ${sum_ch[$s]} + ch ))
        sum_send[$s]=$(( ${sum_send[$s]} + sd ))
        cpu_ch[$s]="$(awk -v a="${cpu_ch[$s]}" -v b="$cch" 'BEGIN { print a + b }')"
        cpu_send[$s]="$(awk -v a="${cpu_send[$s]}" -v b="$csd" 'BEGIN { print a + b }')"
    done
done

echo
echo "== relay throughput (mean of $rounds rounds; $sessions sessions x $messages msgs x 100 B)"
for s in "${servers[@]}"; do
    echo "$s: channels $(( ${sum_ch[$s]} / rounds )) msg/s, send indications $(( ${sum_send[$s]} / rounds )) msg/s"
done
if [[ $have_coturn == 1 ]]; then
    awk -v a="${sum_ch[turnd]}" -v b="${sum_ch[coturn]}" -v c="${sum_send[turnd]}" -v d="${sum_send[coturn]}" \
        'BEGIN { printf "ratio turnd/coturn messages/s: channels %.2fx, send indications %.2fx (goal >= 1.5x)\n", (b ? a / b : 0), (d ? c / d : 0) }'
    awk -v a="${cpu_ch[turnd]}" -v b="${cpu_ch[coturn]}" -v c="${cpu_send[turnd]}" -v d="${cpu_send[coturn]}" \
        'function r(x, y) { return (x > 0 && y > 0) ? sprintf("%.2fx", y / x) : "n/a (too few CPU ticks)" }
         BEGIN { printf "ratio coturn/turnd server CPU per message: channels %s, send indications %s\n", r(a, b), r(c, d) }'
fi

if [[ $quick == 0 ]]; then
echo
echo "== saturating relay load (turnload: $load_allocs allocations x 8 in flight, ${load_seconds} s, 100 B)"
declare -A lrate_ch lrate_send
for s in "${servers[@]}"; do
    load_run "$s" channel; lrate_ch[$s]=$l_rate; lcpu_ch=$l_cpu_us
    load_run "$s" send; lrate_send[$s]=$l_rate; lcpu_send=$l_cpu_us
    echo "$s: channels ${lrate_ch[$s]} msg/s (${lcpu_ch} us CPU/msg), send indications ${lrate_send[$s]} msg/s (${lcpu_send} us CPU/msg)"
done
if [[ $have_coturn == 1 ]]; then
    awk -v a="${lrate_ch[turnd]}" -v b="${lrate_ch[coturn]}" -v c="${lrate_send[turnd]}" -v d="${lrate_send[coturn]}" \
        'BEGIN { printf "ratio turnd/coturn messages/s: channels %.2fx, send indications %.2fx (goal >= 1.5x)\n", (b ? a / b : 0), (d ? c / d : 0) }'
fi
fi

echo
echo "== allocations ($allocations via turnload)"
for s in "${servers[@]}"; do
    alloc_run "$s"
    rate="$(sed -n 's/.*rate=\([0-9]*\).*/\1/p' <<<"$line")"
    got="$(sed -n 's/.*allocated=\([0-9]*\).*/\1/p' <<<"$line")"
    before="$(sed -n 's/.*before_kb=\([0-9]*\).*/\1/p' <<<"$line")"
    after="$(sed -n 's/.*after_kb=\([0-9]*\).*/\1/p' <<<"$line")"
    echo "$s: $got allocations at $rate/s; RSS ${before} kB idle -> ${after} kB holding them ($(( (after - before) * 1024 / (got > 0 ? got : 1) )) B per allocation)"
    eval "rate_$s=$rate"
done
if [[ $have_coturn == 1 ]]; then
    # shellcheck disable=SC2154
    awk -v a="$rate_turnd" -v b="$rate_coturn" 'BEGIN { printf "ratio turnd/coturn: allocation rate %.2fx\n", (b ? a / b : 0) }'
fi
echo
echo "note: figures from a shared machine; compare the ratios, re-measure on a quiet one."
