#!/usr/bin/env python3
"""Run the Autobahn TestSuite fuzzingclient cases against a WebSocket server and judge them.

Engine: kosoku 0.1.0 (PyPI), which runs Autobahn's own case files and verdict logic.
Before the cases, one connection checks what kosoku does not: that the server answers the
handshake and, after a client-initiated closing handshake, drops TCP within 1 s (as wstest
requires). Prints the verdict counts per group, writes OUT/summary.json, and exits 1 if any
case FAILED (behaviour FAILED/ERROR, or closing behaviour FAILED/UNCLEAN), 2 on setup errors.

usage: autobahn.py ws://HOST:PORT/PATH --out DIR [--cases '1.*,2.*'] [--exclude '12.*,13.*']
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
from collections import Counter, defaultdict
from urllib.parse import urlsplit

from kosoku import FailureError, run_fuzzingclient

BAD_BEHAVIOR = {"FAILED", "ERROR"}
BAD_CLOSE = {"FAILED", "UNCLEAN"}


def preflight(url: str, timeout: float = 5.0) -> dict:
    """Handshake, send close 1000, expect the close reply and then the server's EOF within 1 s."""
    u = urlsplit(url)
    host, port = u.hostname, u.port or 80
    req = (f"GET {u.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    facts = {"handshake": False, "close_reply": False, "server_dropped_tcp_ms": None}
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(req)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                return facts
            buf += chunk
        head, _, rest = buf.partition(b"\r\n\r\n")
        facts["handshake"] = b" 101 " in head.split(b"\r\n", 1)[0] + b" "
        if not facts["handshake"]:
            return facts
        s.sendall(bytes([0x88, 0x82, 1, 2, 3, 4, 0x03 ^ 1, 0xE8 ^ 2]))  # masked close 1000
        data, t_reply = rest, None
        s.settimeout(1.0)
        while True:
            if t_reply is None and len(data) >= 4 and data[0] == 0x88:
                facts["close_reply"] = True
                t_reply = time.monotonic()
            try:
                chunk = s.recv(4096)
            except socket.timeout:
                return facts
            if not chunk:
                if t_reply is not None:
                    facts["server_dropped_tcp_ms"] = round((time.monotonic() - t_reply) * 1000)
                return facts
            data += chunk


async def run(url: str, cases: list[str], exclude: list[str], limit: float):
    try:
        return await asyncio.wait_for(run_fuzzingclient(url, cases, exclude), limit)
    except FailureError as failure:  # some case did not pass: its results are still the report
        return list(failure.results)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="*")
    ap.add_argument("--exclude", default="")
    ap.add_argument("--time-limit", type=float, default=900.0, help="whole run, seconds")
    a = ap.parse_args()
    split = lambda s: [c.strip() for c in s.split(",") if c.strip()]

    try:
        facts = preflight(a.url)
    except OSError as e:
        print(f"autobahn: cannot reach {a.url}: {e}", file=sys.stderr)
        return 2
    if not facts["handshake"]:
        print(f"autobahn: {a.url} did not answer the handshake with 101", file=sys.stderr)
        return 2

    t0 = time.monotonic()
    try:
        results = asyncio.run(run(a.url, split(a.cases), split(a.exclude), a.time_limit))
    except asyncio.TimeoutError:
        print(f"autobahn: run did not finish within {a.time_limit:.0f}s", file=sys.stderr)
        return 1
    wall = time.monotonic() - t0

    # A failing case is printed in full. (Cases 5.19/5.20 once failed intermittently with 1008
    # at 0 ms: a fragment and a ping in one read never started the message clock, so the
    # message looked 30 s overdue. Fixed in the session; no retry hides a failure any more.)
    def bad(r):
        return r.behavior.value in BAD_BEHAVIOR or r.behavior_close.value in BAD_CLOSE

    for r in results:
        if bad(r):
            print(f"autobahn: {r.case_id} failed ({r.behavior.value}/{r.behavior_close.value}, {r.duration} ms): "
                  f"result {r.result!r}; close {r.result_close!r}; local close {r.local_close_code}, "
                  f"remote close {r.remote_close_code}; response {r.http_response[:200]!r}")

    per_group: dict[str, Counter] = defaultdict(Counter)
    behavior, closing, failed, notes = Counter(), Counter(), [], defaultdict(list)
    for r in results:
        b, c = r.behavior.value, r.behavior_close.value
        behavior[b] += 1
        closing[c] += 1
        per_group[r.case_id.split(".")[0]][b] += 1
        if b in BAD_BEHAVIOR or c in BAD_CLOSE:
            failed.append(f"{r.case_id} ({b}/{c})")
        if b in ("NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED"):
            notes[b].append(r.case_id)

    verdicts = ["OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED", "ERROR"]
    print(f"autobahn: {len(results)} cases against {a.url} in {wall:.1f}s (engine kosoku 0.1.0)")
    print("  group " + "".join(f"{v:>15}" for v in verdicts))
    for g in sorted(per_group, key=int):
        print(f"  {g + '.*':<5} " + "".join(f"{per_group[g][v]:>15}" for v in verdicts))
    print("  total " + "".join(f"{behavior[v]:>15}" for v in verdicts))
    print("  closing behaviour: " + ", ".join(f"{k} {v}" for k, v in sorted(closing.items())))
    for k, ids in notes.items():
        print(f"  {k}: {', '.join(ids)}")
    dropped = facts["server_dropped_tcp_ms"]
    print(f"  preflight: close reply {'yes' if facts['close_reply'] else 'NO'}, "
          f"server dropped TCP {'after %d ms' % dropped if dropped is not None else 'NOT within 1 s'}")

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump({
            "url": a.url, "engine": "kosoku 0.1.0", "wall_seconds": round(wall, 1),
            "behavior": behavior, "closing": closing, "preflight": facts,
            "cases": {r.case_id: {"behavior": r.behavior.value, "closing": r.behavior_close.value,
                                  "duration_ms": r.duration} for r in results},
        }, f, indent=1)

    ok = not failed and facts["close_reply"] and dropped is not None
    if failed:
        print(f"autobahn: FAILED cases: {', '.join(failed)}")
    print("autobahn: PASS (0 failed)" if ok else "autobahn: FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    # The verdict is decided and written above; leave without interpreter finalization. Once in
    # a clean CI run the process was killed by SIGABRT after printing PASS, with nothing on
    # stderr: kosoku's native extension tearing down its threads during finalization. That
    # teardown carries no result, so it must not turn a passing run into exit 134.
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
