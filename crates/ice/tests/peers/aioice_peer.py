#!/usr/bin/env python3
"""An aioice peer that speaks icepeer's signaling, for interop tests and the benchmark.

Signaling is the same as icepeer's: vanilla sends one line (base64 of the SDP attribute
lines a=ice-ufrag, a=ice-pwd, a=ice-options, a=candidate..., a=end-of-candidates); trickle
sends the attribute lines themselves, one per line. Lines go to --signal-out (a file, or
stdout) and come from --signal-in (a file that is followed as it grows, or stdin).

Once connected, both sides exchange [0x80, seq, acked] datagrams every 20 ms until each has
seen the other acknowledge. The result is one JSON object on stdout with --json.
Exit status: 0 connected and datagrams went both ways, 1 not connected, 3 no datagrams.
"""

import argparse
import asyncio
import base64
import json
import os
import sys
import time

import aioice
import aioice.ice
from aioice import Candidate, Connection, TransportPolicy


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("role", choices=["offer", "answer"])
    p.add_argument("--trickle", action="store_true")
    p.add_argument("--loopback", action="store_true",
                   help="host candidates on 127.0.0.1 only (aioice skips loopback by itself)")
    p.add_argument("--stun", help="host:port")
    p.add_argument("--turn", help="host:port")
    p.add_argument("--turn-transport", default="udp", choices=["udp", "tcp"])
    p.add_argument("--turn-user", default="")
    p.add_argument("--turn-pass", default="")
    p.add_argument("--relay-only", action="store_true")
    p.add_argument("--signal-in")
    p.add_argument("--signal-out")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timeout", type=float, default=30.0)
    return p.parse_args()


def hostport(s):
    h, _, p = s.rpartition(":")
    return (h, int(p))


class Out:
    def __init__(self, path):
        self.f = open(path, "a") if path else sys.stdout

    def line(self, s):
        self.f.write(s + "\n")
        self.f.flush()


async def read_lines(path, queue):
    if path is None:
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            await queue.put(line.rstrip("\r\n"))
    while not os.path.exists(path):
        await asyncio.sleep(0.001)
    pending = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(4096)
            if not chunk:
                await asyncio.sleep(0.001)
                continue
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                await queue.put(line.decode().rstrip("\r"))


def description_lines(conn, trickle, with_candidates=True):
    lines = [f"a=ice-ufrag:{conn.local_username}", f"a=ice-pwd:{conn.local_password}"]
    if trickle:
        lines.append("a=ice-options:trickle")
    if with_candidates:
        lines += [f"a=candidate:{c.to_sdp()}" for c in conn.local_candidates]
        lines.append("a=end-of-candidates")
    return lines


async def apply_line(conn, line, state):
    line = line.strip()
    if not line:
        return
    if not line.startswith("a="):
        text = base64.b64decode(line).decode()
        for l in text.splitlines():
            await apply_line(conn, l, state)
        state["description"] = True
        return
    if line.startswith("a=ice-ufrag:"):
        conn.remote_username = line.split(":", 1)[1]
    elif line.startswith("a=ice-pwd:"):
        conn.remote_password = line.split(":", 1)[1]
    elif line == "a=ice-lite":
        conn.remote_is_lite = True
    elif line.startswith("a=candidate:"):
        c = Candidate.from_sdp(line[len("a=candidate:"):])
        if c.transport.lower() == "udp":
            await conn.add_remote_candidate(c)
    elif line == "a=end-of-candidates":
        await conn.add_remote_candidate(None)
        state["end"] = True
    if conn.remote_username and conn.remote_password:
        state["creds"] = True


async def exchange(conn, count=3):
    got, peer_acked, acks_after, seq = 0, False, 0, 0

    async def receiver():
        nonlocal got, peer_acked
        while True:
            data = await conn.recv()
            if data[:1] == b"\x80":
                got += 1
                if len(data) > 2 and data[2] == 1:
                    peer_acked = True

    task = asyncio.ensure_future(receiver())
    try:
        end = time.monotonic() + 5
        while time.monotonic() < end:
            acked = 1 if got >= count else 0
            seq = (seq + 1) % 256
            await conn.send(bytes([0x80, seq, acked]))
            if peer_acked and acked:
                acks_after += 1
                if acks_after >= 3:
                    return True
            await asyncio.sleep(0.02)
        return got > 0 and peer_acked
    finally:
        task.cancel()


async def main():
    args = parse_args()
    if args.loopback:
        aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    started = time.monotonic()
    conn = Connection(
        ice_controlling=args.role == "offer",
        stun_server=hostport(args.stun) if args.stun else None,
        turn_server=hostport(args.turn) if args.turn else None,
        turn_username=args.turn_user or None,
        turn_password=args.turn_pass or None,
        turn_transport=args.turn_transport,
        use_ipv6=False,
        transport_policy=TransportPolicy.RELAY if args.relay_only else TransportPolicy.ALL,
    )
    # Count connectivity checks as aioice starts them (ordinary and triggered; aioice's own
    # transaction layer retransmits without telling us).
    checks = {"sent": 0}
    original_check_start = conn.check_start

    def counting_check_start(pair):
        checks["sent"] += 1
        return original_check_start(pair)

    conn.check_start = counting_check_start
    out = Out(args.signal_out)
    queue = asyncio.Queue()
    reader = asyncio.ensure_future(read_lines(args.signal_in, queue))
    state = {"creds": False, "end": False, "description": False}

    async def pump_until(pred):
        while not pred():
            line = await queue.get()
            await apply_line(conn, line, state)

    result = {"connected": False}
    try:
        if args.trickle:
            for l in description_lines(conn, True, with_candidates=False):
                out.line(l)
            await conn.gather_candidates()
            for c in conn.local_candidates:
                out.line(f"a=candidate:{c.to_sdp()}")
            out.line("a=end-of-candidates")
            await asyncio.wait_for(pump_until(lambda: state["creds"]), args.timeout)

            async def keep_reading():
                while True:
                    line = await queue.get()
                    await apply_line(conn, line, state)

            trickler = asyncio.ensure_future(keep_reading())
            await asyncio.wait_for(conn.connect(), args.timeout)
            trickler.cancel()
        else:
            if args.role == "offer":
                await conn.gather_candidates()
                out.line(base64.b64encode("\r\n".join(description_lines(conn, False)).encode() + b"\r\n").decode())
                await asyncio.wait_for(pump_until(lambda: state["description"]), args.timeout)
            else:
                gather = asyncio.ensure_future(conn.gather_candidates())
                await asyncio.wait_for(pump_until(lambda: state["description"]), args.timeout)
                await gather
                out.line(base64.b64encode("\r\n".join(description_lines(conn, False)).encode() + b"\r\n").decode())
            await asyncio.wait_for(conn.connect(), args.timeout)
        ttc = (time.monotonic() - started) * 1000.0
        result = {"connected": True, "time_to_connected_ms": ttc}
        pair = conn._nominated.get(1)
        if pair is not None:
            result["local"] = {"type": pair.local_candidate.type,
                               "address": f"{pair.local_candidate.host}:{pair.local_candidate.port}"}
            result["remote"] = {"type": pair.remote_candidate.type,
                                "address": f"{pair.remote_candidate.host}:{pair.remote_candidate.port}"}
        result["datagrams_ok"] = await exchange(conn)
    except (asyncio.TimeoutError, ConnectionError) as e:
        result = {"connected": False, "error": repr(e)}
    finally:
        reader.cancel()
        await conn.close()
    result["checks_sent"] = checks["sent"]
    if args.json:
        print(json.dumps(result), flush=True)
    else:
        print(f"aioice_peer: {result}", file=sys.stderr)
    if not result.get("connected"):
        return 1
    return 0 if result.get("datagrams_ok") else 3


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
