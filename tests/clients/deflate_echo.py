"""Echo over permessage-deflate with Python's `websockets` (its own deflate implementation).

usage: deflate_echo.py ws://HOST:PORT
Connects to /echo offering permessage-deflate (websockets' default), sends messages above and
below the server's --deflate-min-size, text and binary, and prints one JSON line:
{"extensions": <the server's answer>, "ok": <every echo matched>}.
"""
import json
import sys

from websockets.sync.client import connect

url = sys.argv[1]
with connect(f"{url}/echo", max_size=None) as ws:
    answer = ws.response.headers.get("Sec-WebSocket-Extensions")
    msgs = ["x", "short", "long " * 500, b"\x00" * 10000, json.dumps({"data": list(range(300))})]
    ok = True
    for m in msgs:
        ws.send(m)
        ok = ok and ws.recv(timeout=10) == m
    print(json.dumps({"extensions": answer, "ok": ok}), flush=True)
