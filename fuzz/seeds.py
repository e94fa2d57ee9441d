#!/usr/bin/env python3
"""Write the hand-made seed inputs of every fuzz target into corpus/<target>/ (named files; the
fuzzer's own finds are named by their SHA-1). Run from fuzz/: python3 seeds.py"""
import os, struct, zlib

def put(target, name, data):
    d = f"corpus/{target}"
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    open(f"{d}/{name}", "wb").write(data)

key = "dGhlIHNhbXBsZSBub25jZQ=="
def up(path, extra=""):
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n")
tok = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbm4iLCJyb29tcyI6WyJsb2JieSJdfQ.c2lnbmF0dXJl"
http = {
    "upgrade_echo": up("/echo"),
    "upgrade_deflate": up("/echo", "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"),
    "upgrade_v1": up("/ws?token=" + tok, "Sec-WebSocket-Protocol: c100k.v1\r\nOrigin: https://ok.example\r\n"),
    "upgrade_raw_room": up("/ws?room=a%20b+c&user=ann", "Authorization: Bearer " + tok + "\r\n"),
    "sse_rooms": "GET /sse?room=a&room=b%2Cc&presence=1&token=" + tok + " HTTP/1.1\r\nHost: x\r\nLast-Event-ID: a:e1:4,b%2Cc:e2:9\r\n\r\n",
    "poll": "GET /poll?room=r&since=e%3A7 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok + "\r\n\r\n",
    "post_chunked": "POST /rooms/r/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nAuthorization: Bearer " + tok + "\r\n\r\n7\r\n{\"data\"\r\n4\r\n:[1]\r\n1\r\n}\r\n0\r\n\r\n",
    "api_publish": "POST /api/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fuzz-key\r\nContent-Length: 27\r\n\r\n{\"room\":\"r\",\"data\":{\"a\":1}}",
    "api_history": "GET /api/rooms/r/history?since=e:5&limit=10 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer fuzz-key\r\n\r\n",
    "pipelined": "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\nOPTIONS /rooms/r/messages HTTP/1.1\r\nHost: x\r\nOrigin: https://ok.example\r\n\r\n",
    "absolute_form": "GET http://x:80/echo HTTP/1.1\r\nHost: x\r\n\r\n",
    "tls_hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(32)),
    "demo": "GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /client/c100k.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
}
for k, v in http.items():
    put("http_request", k, v)

def raw_deflate(b, level=6):
    c = zlib.compressobj(level, zlib.DEFLATED, -15)
    out = c.compress(b) + c.flush(zlib.Z_SYNC_FLUSH)
    return out[:-4] if out.endswith(b"\x00\x00\xff\xff") else out

def frame(op, payload, fin=True, mask=b"\x01\x02\x03\x04", rsv=0):
    b0 = (0x80 if fin else 0) | rsv | op
    n = len(payload)
    if n < 126:
        hdr = bytes([b0, 0x80 | n])
    elif n < 65536:
        hdr = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return hdr + mask + bytes(p ^ mask[i % 4] for i, p in enumerate(payload))

join = b'{"op":"join","id":1,"room":"lobby","since":{"epoch":"e1","seq":3},"presence":true}'
ws = {  # the first byte picks the chunking; bit 7 turns permessage-deflate on
    "v1_join": b"\x00" + frame(1, join),
    "fragmented": b"\x05" + frame(1, b'{"op":"pub', fin=False) + frame(9, b"ping") + frame(0, b'lish","room":"r","data":1}'),
    "binary_close": b"\x03" + frame(2, bytes(200)) + frame(8, struct.pack(">H", 1000) + b"bye"),
    "big_len": b"\x10" + frame(1, b"x" * 300),
    "bad_utf8": b"\x02" + frame(1, b"\xff\xfe"),
    "unmasked": b"\x01" + bytes([0x81, 0x02]) + b"hi",
    "rsv_set": b"\x01" + frame(1, b"x", rsv=0x40),
    "close_bad_code": b"\x01" + frame(8, struct.pack(">H", 1005)),
    "deflate_text": b"\x80" + frame(1, raw_deflate(join), rsv=0x40),
    "deflate_fragmented": b"\x83" + frame(1, raw_deflate(join)[:5], fin=False, rsv=0x40) + frame(0, raw_deflate(join)[5:]),
    "deflate_bomb": b"\x81" + frame(2, raw_deflate(bytes(100000), 9), rsv=0x40),
}
for k, v in ws.items():
    put("ws_session", k, v)
v1 = {
    "join": join,
    "publish": b'{"op":"publish","room":"r","data":{"a":[1, 2]},"id":"x\\"y"}',
    "history": b'{"op":"history","room":"r","limit":5,"since":{"epoch":"e","seq":0}}',
    "leave": b'{"op":"leave","room":"a\\u00e9"}',
    "presence": b'{"op":"presence","room":"r","extra":1}',
    "bad_op": b'{"op":"dance","id":1,"room":"r"}',
    "deep": b"[" * 200 + b"]" * 200,
}
for k, v in v1.items():
    put("v1_command", k, v)
ids = {"one": "lobby:e1:7", "two": "lobby:e1:7,a%2Cb%3Ac%25d %C3%A9:e2:0", "epoch_colon": "r:e:x:5", "empty": "",
       "junk": "r:e:notanumber", "lines": "a\nb\r\nc\r\rd",
       # Found by fuzzing: `+` decoded as a space, and a client's epoch carrying line breaks.
       "regression-plus-and-newline-epoch": "lobby:\n\n\n\n\ne1:7,a%2Cb%3Ac%2b%3Ac5d %C3%A9:e2:0"}
for k, v in ids.items():
    put("sse_position", k, v)
resp = {
    "101": "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: c100k.v1\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n",
    "sse": "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\nretry: 1000\n\nid: r:e:1\nevent: msg\ndata: {\"a\":\ndata: 1}\n\n: ping\n\n",
    "poll": "{\"messages\":[{\"op\":\"msg\",\"seq\":2}],\"next\":\"ep:x:2\",\"recovered\":false}",
    "404": "HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\nConnection: close\r\n\r\nnot found\n",
}
for k, v in resp.items():
    put("client_response", k, v)
fin = zlib.compressobj(6, zlib.DEFLATED, -15)
deflate = {
    "hello_rfc": bytes([0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00]),
    "json": raw_deflate(b'{"op":"msg","room":"lobby","seq":42,"data":{"text":"hello hello"}}'),
    "zeros_bomb": raw_deflate(bytes(200000), 9),
    "stored": raw_deflate(b"abc", 0),
    "final_block": fin.compress(b"xyz") + fin.flush(),
    "garbage": b"\xff\xff\xff\x00",
    "empty": b"\x00",
}
for k, v in deflate.items():
    put("deflate", k, v)

# tls_server: real ClientHellos (Python's OpenSSL: TLS 1.3 and 1.2 only, with and without ALPN
# and SNI), then the same cut short, followed by junk, or by a plain HTTP request. The first
# byte picks the piece size each input is fed in.
import ssl
def client_hello(tls12_only=False, alpn=None, sni="localhost"):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if tls12_only:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        ctx.set_alpn_protocols(alpn)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()
hellos = {
    "hello13_alpn": client_hello(alpn=["http/1.1"]),
    "hello13_h2_only": client_hello(alpn=["h2"]),
    "hello12": client_hello(tls12_only=True, alpn=["http/1.1"]),
    "hello_no_sni": client_hello(sni=None),
}
for k, v in hellos.items():
    put("tls_server", k, b"\x3f" + v)
    put("tls_server", k + "_bytewise", b"\x00" + v)
put("tls_server", "hello_truncated", b"\x07" + hellos["hello13_alpn"][:100])
put("tls_server", "hello_then_junk", b"\x3f" + hellos["hello13_alpn"] + b"\x17\x03\x03\x00\x10" + bytes(16))
put("tls_server", "plain_http", b"\x3fGET / HTTP/1.1\r\nHost: x\r\n\r\n")
put("tls_server", "records_of_every_type", b"\x3f" + b"".join(bytes([t, 3, 3, 0, 2, 1, 0]) for t in (20, 21, 22, 23, 24)))

# tls_records: scripts for a handshake done with a rustls client, then one action per byte
# (see c100k::fuzzing::tls_records): 0 n the client sends n*67 bytes, 1 the client updates its
# keys (asking the server to), 2 n b... junk bytes on the wire, 3 n reads of n%300+1 bytes,
# 4 n the server sends n*131 bytes, 5 the client's close_notify, 6 the server's, 7 at bit a
# bit flipped in what the client sends.
records = {
    "data_both_ways": [0, 10, 4, 10, 0, 250, 4, 255, 0, 0],
    "key_updates": [1, 0, 5, 4, 5, 1, 1, 0, 9, 4, 3, 1, 4, 1],
    "bytewise": [3, 0, 0, 20, 1, 0, 20, 4, 7, 3, 16, 0, 100],
    "bit_flipped": [0, 10, 7, 30, 3],
    "junk_record": [2, 5, 23, 3, 3, 0, 1, 0, 4],
    "plaintext_handshake": [2, 9, 22, 3, 3, 0, 4, 24, 0, 0, 1],
    "closes": [0, 5, 5, 6, 4, 3],
    "server_closes_first": [6, 4, 10, 0, 3, 5],
    "oversized_header": [2, 5, 23, 3, 3, 0x41, 1],
}
for k, v in records.items():
    put("tls_records", k, bytes(v))
