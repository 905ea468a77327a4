#!/usr/bin/env bash
# Time to connected on loopback: an icepeer pair against an aioice pair, in the same run, median
# of 20 runs each (interleaved), vanilla ICE, host candidates only; then both relay-only through
# coturn (a fresh coturn per run: aioice drops its relay candidate on a 437 from a lingering
# allocation). Prints the medians, the ratio icepeer/aioice (goal: at most 0.5) and the STUN
# transactions icepeer needed.
#
# Time to connected of a pair = the later of its two peers, each measured from the start of its
# agent (after the interpreter's imports for aioice) to the connected state; both processes
# start together and signal through files.
#
# --quick: 3 runs, debug build (CI: keeps the script from rotting; figures not asserted).
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=20
PROFILE=release
if [ "${1:-}" = "--quick" ]; then
    RUNS=3
    PROFILE=dev
fi
cargo build -q --profile "$PROFILE" -p ice --bin icepeer
target_dir="${CARGO_TARGET_DIR:-target}"
if [ "$PROFILE" = dev ]; then BIN="$target_dir/debug/icepeer"; else BIN="$target_dir/release/icepeer"; fi
if ! python3 -c "import aioice" 2>/dev/null; then
    echo "bench_ice: python3 with aioice is required (pip install aioice)" >&2
    exit 1
fi
command -v turnserver >/dev/null || { echo "bench_ice: coturn's turnserver is required" >&2; exit 1; }

exec python3 - "$BIN" "$RUNS" crates/ice/tests/peers/aioice_peer.py <<'EOF'
import json, os, shutil, socket, statistics, subprocess, sys, tempfile, time

BIN, RUNS, PEER = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tmp = tempfile.mkdtemp(prefix="bench-ice-")

def free_port():
    while True:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        p = u.getsockname()[1]
        t = socket.socket()
        try:
            t.bind(("127.0.0.1", p))
            return p
        except OSError:
            pass
        finally:
            u.close()
            t.close()

def coturn():
    port = free_port()
    p = subprocess.Popen(["turnserver", "-n", "-L", "127.0.0.1", f"--listening-port={port}",
                          "--no-tls", "--no-dtls", "--no-cli", "--lt-cred-mech", "--user=test:test",
                          "--realm=example.org", "--allow-loopback-peers", "--relay-ip=127.0.0.1",
                          "--pidfile", os.path.join(tmp, "turnserver.pid")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.05)
    req = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + b"benchicepeer"
    for _ in range(200):
        s.sendto(req, ("127.0.0.1", port))
        try:
            s.recvfrom(512)
            break
        except OSError:
            pass
    s.close()
    return p, port

def run_pair(impl, extra):
    d = tempfile.mkdtemp(dir=tmp)
    a_out, b_out = os.path.join(d, "a"), os.path.join(d, "b")
    def cmd(role, sin, sout):
        base = [BIN] if impl == "icepeer" else ["python3", PEER]
        return base + [role, "--loopback", "--json", "--timeout", "15",
                       "--signal-in", sin, "--signal-out", sout] + extra
    pa = subprocess.Popen(cmd("offer", b_out, a_out), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    pb = subprocess.Popen(cmd("answer", a_out, b_out), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    ra = json.loads(pa.communicate()[0] or b"{}")
    rb = json.loads(pb.communicate()[0] or b"{}")
    shutil.rmtree(d, ignore_errors=True)
    if not (ra.get("connected") and rb.get("connected")):
        return None
    return (max(ra["time_to_connected_ms"], rb["time_to_connected_ms"]),
            ra.get("stun_transactions"), rb.get("stun_transactions"))

def series(name, relay):
    res = {"icepeer": [], "aioice": []}
    tx = []
    failed = {"icepeer": 0, "aioice": 0}
    for i in range(RUNS):
        for impl in ("icepeer", "aioice"):
            extra, srv = [], None
            if relay:
                srv, port = coturn()
                if impl == "icepeer":
                    extra = ["--relay-only", "--turn", f"turn:127.0.0.1:{port}",
                             "--turn-user", "test", "--turn-pass", "test"]
                else:
                    extra = ["--relay-only", "--turn", f"127.0.0.1:{port}",
                             "--turn-user", "test", "--turn-pass", "test"]
            try:
                r = run_pair(impl, extra)
            finally:
                if srv:
                    srv.terminate()
                    srv.wait()
            if r is None:
                failed[impl] += 1
                continue
            res[impl].append(r[0])
            if impl == "icepeer":
                tx.append((r[1], r[2]))
    mi = statistics.median(res["icepeer"]) if res["icepeer"] else float("nan")
    ma = statistics.median(res["aioice"]) if res["aioice"] else float("nan")
    ratio = mi / ma if res["icepeer"] and res["aioice"] else float("nan")
    txs = sorted(set(tx))
    print(f"{name:<22} icepeer median {mi:7.1f} ms ({len(res['icepeer'])}/{RUNS} ok)   "
          f"aioice median {ma:7.1f} ms ({len(res['aioice'])}/{RUNS} ok)   ratio {ratio:.2f}x   "
          f"icepeer STUN transactions (offer, answer): {txs}")
    return ratio

try:
    print(f"bench_ice: {RUNS} runs per series, loopback, vanilla ICE")
    r1 = series("host", False)
    r2 = series("relayed (coturn)", True)
    print(f"goal: icepeer at most 0.5x aioice's time: host {'met' if r1 <= 0.5 else 'NOT met'}, "
          f"relayed {'met' if r2 <= 0.5 else 'NOT met'}")
finally:
    shutil.rmtree(tmp, ignore_errors=True)
EOF
