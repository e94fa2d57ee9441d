"""An independent wss:// client (Python's ssl + websockets): echo a short and a long message
over TLS with certificate verification against the test CA, then close cleanly.
usage: wss_echo.py wss://localhost:PORT/echo CA_FILE — prints one JSON line."""
import asyncio
import json
import ssl
import sys

import websockets


async def main(url, ca):
    ctx = ssl.create_default_context(cafile=ca)
    ctx.set_alpn_protocols(["http/1.1"])
    async with websockets.connect(url, ssl=ctx, max_size=None) as ws:
        await ws.send("hello from python")
        echo = await ws.recv()
        await ws.send("x" * 100000)
        big = len(await ws.recv())
        alpn = ws.transport.get_extra_info("ssl_object").selected_alpn_protocol()
    print(json.dumps({"echo": echo, "big": big, "alpn": alpn, "close": ws.close_code}))


asyncio.run(main(sys.argv[1], sys.argv[2]))
