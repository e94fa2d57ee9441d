// An independent HTTP/2 WebSocket client (Node's built-in http2: RFC 8441 extended CONNECT).
// usage: node h2_ws.mjs URL SCENARIO [ARGS...] — prints one JSON line with what it saw.
//   URL: http://127.0.0.1:PORT (h2c, prior knowledge) or https://localhost:PORT (with CA=FILE in env)
//   echo                 one WebSocket on /echo: text, a fragmented message, ping, close 1000
//   rooms N ROOMS        N WebSockets on one connection in ROOMS seed-mode rooms; each sends once
//                        and hears every other member of its room
//   reset                a stream reset in the middle of a message; its sibling keeps echoing
//   goaway               two open WebSockets, then the client sends GOAWAY and goes
//   get PATH             an ordinary GET
//   post PATH KEY BODY   a POST with Authorization: Bearer KEY
//   sse PATH ID WANT     an event stream (Last-Event-ID: ID unless empty), read until WANT shows
//   close CODE           the client closes with CODE; prints what the server answered
//   shutdown             two WebSockets; prints "ready"; then what the server's shutdown sends
//   bad PAYLOAD_HEX      sends raw bytes as a frame stream; prints the server's close code
import http2 from 'node:http2';
import fs from 'node:fs';
import crypto from 'node:crypto';

const [url, scenario, ...args] = process.argv.slice(2);
let result = {};
const deadline = setTimeout(() => { out({ error: 'timeout', ...result }); process.exit(2); }, Number(process.env.TIMEOUT_MS || 20000));

function out(o) { process.stdout.write(JSON.stringify(o) + '\n'); }

// ---- RFC 6455 frames (client side: masked) ----
function frame(opcode, payload, fin = true) {
  const data = Buffer.from(payload);
  const mask = crypto.randomBytes(4);
  let head;
  if (data.length < 126) head = Buffer.from([(fin ? 0x80 : 0) | opcode, 0x80 | data.length]);
  else if (data.length < 65536) { head = Buffer.alloc(4); head[0] = (fin ? 0x80 : 0) | opcode; head[1] = 0x80 | 126; head.writeUInt16BE(data.length, 2); }
  else { head = Buffer.alloc(10); head[0] = (fin ? 0x80 : 0) | opcode; head[1] = 0x80 | 127; head.writeBigUInt64BE(BigInt(data.length), 2); }
  const masked = Buffer.alloc(data.length);
  for (let i = 0; i < data.length; i++) masked[i] = data[i] ^ mask[i & 3];
  return Buffer.concat([head, mask, masked]);
}
function closeFrame(code, reason = '') {
  const b = Buffer.alloc(2 + Buffer.byteLength(reason)); b.writeUInt16BE(code, 0); b.write(reason, 2); return frame(8, b);
}

// A parser of server frames (unmasked) on one stream.
class Frames {
  constructor() { this.buf = Buffer.alloc(0); this.waiters = []; this.queue = []; this.ended = false; }
  push(chunk) { this.buf = Buffer.concat([this.buf, chunk]); this.parse(); }
  end() { this.ended = true; this.flush(); }
  parse() {
    for (;;) {
      if (this.buf.length < 2) break;
      let len = this.buf[1] & 0x7f, off = 2;
      if (len === 126) { if (this.buf.length < 4) break; len = this.buf.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (this.buf.length < 10) break; len = Number(this.buf.readBigUInt64BE(2)); off = 10; }
      if (this.buf.length < off + len) break;
      const f = { fin: !!(this.buf[0] & 0x80), opcode: this.buf[0] & 0x0f, payload: this.buf.subarray(off, off + len) };
      this.buf = this.buf.subarray(off + len);
      this.queue.push(f);
    }
    this.flush();
  }
  flush() {
    while (this.waiters.length && (this.queue.length || this.ended)) {
      const w = this.waiters.shift();
      w(this.queue.length ? this.queue.shift() : null);
    }
  }
  next() { return new Promise((res) => { this.waiters.push(res); this.flush(); }); }
}

function connect() {
  const opts = {};
  if (url.startsWith('https:')) {
    opts.ca = process.env.CA ? fs.readFileSync(process.env.CA) : undefined;
    opts.servername = 'localhost';
  }
  const session = http2.connect(url, opts);
  session.on('error', (e) => { out({ error: 'session: ' + e.message }); process.exit(1); });
  return new Promise((res) => session.once('remoteSettings', (s) => res({ session, settings: s })));
}

function openWs(session, path, extra = {}) {
  const stream = session.request({ ':method': 'CONNECT', ':protocol': 'websocket', ':path': path, 'sec-websocket-version': '13', ...extra });
  const frames = new Frames();
  stream.on('data', (d) => frames.push(d));
  stream.on('end', () => frames.end());
  stream.on('close', () => frames.end());
  stream.on('error', () => frames.end());
  const response = new Promise((res) => stream.once('response', (h) => res(h)));
  return { stream, frames, response };
}

async function message(frames) {
  // The next data message (pongs and pings skipped but recorded), joined from its fragments.
  const parts = [];
  for (;;) {
    const f = await frames.next();
    if (!f) return null;
    if (f.opcode === 9 || f.opcode === 10) continue;
    if (f.opcode === 8) return { close: f.payload.length >= 2 ? f.payload.readUInt16BE(0) : 1005 };
    parts.push(f.payload);
    if (f.fin) return { text: Buffer.concat(parts).toString() };
  }
}

/** A request's response headers and whole body (as text). */
async function answer(s) {
  const h = await new Promise((res) => s.once('response', res));
  let body = '';
  s.setEncoding('utf8');
  s.on('data', (d) => { body += d; });
  await new Promise((res) => s.once('end', res));
  return { h, body };
}

async function until(cond) {
  while (!cond()) await new Promise((res) => setTimeout(res, 10));
}

async function main() {
  const { session, settings } = await connect();
  result.enableConnectProtocol = !!settings.enableConnectProtocol;
  if (scenario === 'echo') {
    const ws = openWs(session, '/echo');
    const h = await ws.response;
    result.status = h[':status'];
    result.accept = h['sec-websocket-accept'] ?? null;
    ws.stream.write(frame(1, 'hello over h2'));
    result.echo = (await message(ws.frames)).text;
    ws.stream.write(frame(1, 'frag', false));
    ws.stream.write(frame(0, 'mented'));
    result.fragmented = (await message(ws.frames)).text;
    ws.stream.write(frame(9, 'are you there'));
    for (;;) { const f = await ws.frames.next(); if (!f || f.opcode === 10) { result.pong = f ? f.payload.toString() : null; break; } }
    ws.stream.write(frame(1, 'x'.repeat(200000)));
    result.big = (await message(ws.frames)).text.length;
    ws.stream.write(closeFrame(1000, 'bye'));
    result.close = (await message(ws.frames)).close;
    await new Promise((res) => ws.stream.once('close', res));
    result.endStream = ws.stream.readableEnded;
    result.rstCode = ws.stream.rstCode;
  } else if (scenario === 'rooms') {
    const n = Number(args[0] || 100), rooms = Number(args[1] || 10);
    const members = [];
    for (let i = 0; i < n; i++) members.push(openWs(session, `/ws?room=h2room${process.pid}-${i % rooms}`));
    const statuses = await Promise.all(members.map((m) => m.response.then((h) => h[':status'])));
    result.ok = statuses.filter((s) => s === 200).length;
    for (let i = 0; i < n; i++) members[i].stream.write(frame(1, JSON.stringify({ from: i })));
    // Each member gets one message from every other member of its room (not its own).
    const per = n / rooms - 1;
    const got = await Promise.all(members.map(async (m, i) => {
      const seen = new Set();
      while (seen.size < per) {
        const msg = await message(m.frames);
        if (!msg || msg.close) break;
        const from = JSON.parse(msg.text).from;
        if (from % rooms !== i % rooms || from === i) return -1; // crossed rooms, or its own
        seen.add(from);
      }
      return seen.size;
    }));
    result.complete = got.filter((g) => g === per).length;
    result.crossed = got.filter((g) => g === -1).length;
    for (const m of members) m.stream.write(closeFrame(1000));
    result.closed = (await Promise.all(members.map((m) => message(m.frames)))).filter((c) => c && c.close === 1000).length;
  } else if (scenario === 'reset') {
    const a = openWs(session, '/echo'), b = openWs(session, '/echo');
    await a.response; await b.response;
    // Half a frame, then the stream is reset.
    const f = frame(1, 'never finished'.repeat(100));
    a.stream.write(f.subarray(0, 50));
    await new Promise((res) => setTimeout(res, 50)); // (a gap, so the half frame arrives alone)
    a.stream.close(http2.constants.NGHTTP2_CANCEL);
    b.stream.write(frame(1, 'sibling'));
    result.sibling = (await message(b.frames)).text;
    b.stream.write(closeFrame(1000));
    result.close = (await message(b.frames)).close;
  } else if (scenario === 'goaway') {
    const a = openWs(session, '/echo'), b = openWs(session, '/echo');
    result.statuses = [(await a.response)[':status'], (await b.response)[':status']];
    a.stream.write(frame(1, 'one'));
    result.echo = (await message(a.frames)).text;
    session.goaway(http2.constants.NGHTTP2_NO_ERROR);
    session.destroy();
  } else if (scenario === 'shutdown') {
    // Two WebSockets, then "ready" on stdout; then what the server's shutdown sends: a close
    // frame on each (answered), END_STREAM on each, and a GOAWAY.
    let goaway = null;
    session.on('goaway', (code) => { goaway = code; });
    const ws = [openWs(session, '/echo'), openWs(session, '/echo')];
    await Promise.all(ws.map((w) => w.response));
    process.stdout.write('ready\n');
    result.closes = await Promise.all(ws.map(async (w) => {
      const m = await message(w.frames);
      if (m && m.close) w.stream.end(closeFrame(m.close));
      return m ? m.close ?? null : null;
    }));
    result.ended = (await Promise.all(ws.map((w) => new Promise((res) => {
      if (w.stream.readableEnded) return res(true);
      w.stream.once('end', () => res(true));
      w.stream.once('close', () => res(w.stream.readableEnded));
    })))).filter(Boolean).length;
    await until(() => goaway !== null);
    result.goaway = goaway;
  } else if (scenario === 'get') {
    const { h, body } = await answer(session.request({ ':method': 'GET', ':path': args[0] }));
    result.status = h[':status'];
    result.contentType = h['content-type'] ?? null;
    result.body = body;
  } else if (scenario === 'post') {
    const [path, key, body] = args;
    const s = session.request({ ':method': 'POST', ':path': path, authorization: `Bearer ${key}`, 'content-type': 'application/json' });
    s.end(body);
    const a = await answer(s);
    result.status = a.h[':status'];
    result.body = a.body;
  } else if (scenario === 'sse') {
    // An event stream: read until an event carries WANT, then cancel the stream.
    const [path, lastEventId, want] = args;
    const s = session.request({ ':method': 'GET', ':path': path, accept: 'text/event-stream', ...(lastEventId ? { 'last-event-id': lastEventId } : {}) });
    const h = await new Promise((res) => s.once('response', res));
    result.status = h[':status'];
    result.contentType = h['content-type'] ?? null;
    let text = '';
    s.setEncoding('utf8');
    await new Promise((res) => {
      s.on('data', (d) => { text += d; if (text.includes(want)) res(); });
      s.once('end', res);
    });
    result.body = text;
    s.close(http2.constants.NGHTTP2_CANCEL);
  } else if (scenario === 'close') {
    const ws = openWs(session, '/echo');
    await ws.response;
    const code = Number(args[0]);
    ws.stream.write(code === 1005 ? frame(8, '') : closeFrame(code));
    result.close = (await message(ws.frames)).close;
  } else if (scenario === 'bad') {
    const ws = openWs(session, args[1] || '/echo');
    const h = await ws.response;
    result.status = h[':status'];
    if (result.status === 200) {
      ws.stream.write(Buffer.from(args[0], 'hex'));
      const m = await message(ws.frames);
      result.close = m ? m.close ?? null : null;
    }
  } else {
    throw new Error('unknown scenario ' + scenario);
  }
  session.close();
  clearTimeout(deadline);
  out(result);
}

main().catch((e) => { out({ error: String(e && e.stack || e) }); process.exit(1); });
