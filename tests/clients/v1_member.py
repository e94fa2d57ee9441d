"""A c100k.v1 room member written with Python's `websockets` (an independent client stack).

usage: v1_member.py ws://HOST:PORT ROOM
Joins ROOM with presence, prints {"ready": <joined reply>}, waits for one message, publishes
{"echo": <its data>, "seq": <its seq>} back, prints {"got": <msg>, "published": <reply>},
then resumes: reconnects with `since` at that message and prints {"resumed": <joined>,
"replay": [<msgs>]} for the messages published meanwhile (it waits for a line on stdin first).
"""
import json
import sys

from websockets.sync.client import connect


def next_op(ws, op):
    while True:
        m = json.loads(ws.recv(timeout=10))
        if m.get("op") == op:
            return m
        if m.get("op") == "error":
            raise SystemExit(f"error reply: {m}")


def say(obj):
    print(json.dumps(obj), flush=True)


url, room = sys.argv[1], sys.argv[2]
with connect(f"{url}/ws?user=py", subprotocols=["c100k.v1"]) as ws:
    assert ws.subprotocol == "c100k.v1", ws.subprotocol
    ws.send(json.dumps({"op": "join", "id": 1, "room": room, "presence": True}))
    joined = next_op(ws, "joined")
    say({"ready": joined})
    got = next_op(ws, "msg")
    ws.send(json.dumps({"op": "publish", "id": 2, "room": room, "data": {"echo": got["data"], "seq": got["seq"]}}))
    published = next_op(ws, "published")
    say({"got": got, "published": published})

sys.stdin.readline()  # the test publishes while we are away
with connect(f"{url}/ws?user=py", subprotocols=["c100k.v1"]) as ws:
    since = {"epoch": joined["epoch"], "seq": published["seq"]}
    ws.send(json.dumps({"op": "join", "id": 3, "room": room, "since": since}))
    resumed = next_op(ws, "joined")
    replay = [next_op(ws, "msg") for _ in range(resumed["seq"] - published["seq"])]
    say({"resumed": resumed, "replay": replay})
    ws.close(1000)
