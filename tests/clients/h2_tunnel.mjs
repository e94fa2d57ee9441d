// A test adapter: plain WebSocket clients in, RFC 8441 streams out. Each TCP connection it
// accepts must open with an HTTP/1.1 WebSocket upgrade; the adapter answers it itself and carries
// the connection's bytes (RFC 6455 frames, masked as the client sent them) both ways in one
// extended-CONNECT stream of a single shared HTTP/2 connection to the server. So a WebSocket test
// suite (Autobahn's fuzzingclient) exercises the server's WebSockets over HTTP/2.
//
// usage: node h2_tunnel.mjs http://SERVER:PORT   — prints "tunnel listening on 127.0.0.1:PORT"
import crypto from 'node:crypto';
import http2 from 'node:http2';
import net from 'node:net';

const target = process.argv[2];
const session = http2.connect(target);
session.on('error', (e) => { console.error(`tunnel: HTTP/2 session: ${e.message}`); process.exit(1); });
const ready = new Promise((res) => session.once('remoteSettings', res));

function accept(key) {
  return crypto.createHash('sha1').update(key + '258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest('base64');
}

const server = net.createServer((sock) => {
  let head = Buffer.alloc(0);
  const onHead = async (chunk) => {
    head = Buffer.concat([head, chunk]);
    const end = head.indexOf('\r\n\r\n');
    if (end < 0) return;
    sock.off('data', onHead);
    sock.pause();
    const lines = head.subarray(0, end).toString('latin1').split('\r\n');
    const rest = head.subarray(end + 4);
    const path = lines[0].split(' ')[1];
    const h = {};
    for (const l of lines.slice(1)) {
      const i = l.indexOf(':');
      if (i > 0) h[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
    }
    await ready;
    const req = { ':method': 'CONNECT', ':protocol': 'websocket', ':scheme': 'http', ':path': path, 'sec-websocket-version': '13' };
    for (const k of ['sec-websocket-extensions', 'sec-websocket-protocol', 'origin']) if (h[k]) req[k] = h[k];
    const stream = session.request(req);
    stream.on('error', () => sock.destroy());
    stream.once('response', (rh) => {
      if (rh[':status'] !== 200) {
        sock.end(`HTTP/1.1 ${rh[':status']} Refused\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`);
        stream.close();
        return;
      }
      let resp = `HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ${accept(h['sec-websocket-key'] ?? '')}\r\n`;
      for (const k of ['sec-websocket-extensions', 'sec-websocket-protocol']) if (rh[k]) resp += `${k}: ${rh[k]}\r\n`;
      sock.write(resp + '\r\n');
      if (rest.length) stream.write(rest);
      sock.pipe(stream);
      stream.pipe(sock);
      sock.resume();
    });
    // A WebSocket that ends on one side ends on the other; a reset is a dropped connection.
    stream.on('close', () => { if (stream.rstCode) sock.destroy(); else sock.end(); });
    sock.on('error', () => stream.close(http2.constants.NGHTTP2_CANCEL));
    sock.on('close', () => { if (!stream.closed) stream.close(http2.constants.NGHTTP2_CANCEL); });
  };
  sock.on('data', onHead);
  sock.on('error', () => {});
});
server.listen(0, '127.0.0.1', () => console.log(`tunnel listening on 127.0.0.1:${server.address().port}`));
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { session.close(); process.exit(0); });
