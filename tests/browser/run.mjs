// The demo page in a real browser: Debian's Chromium, headless, driven by puppeteer-core.
// Starts its own c100k servers (and a Redis) on free loopback ports, stops them at the end.
//
//   node tests/browser/run.mjs            (C100K_BIN: the server binary; SHOTS: screenshot dir)
//
// 1. Two pages chat through the demo page over WebSockets, and see each other present.
// 2. The server is killed and started again (rooms in Redis): both pages reconnect with backoff
//    and show every message once, in order, including those sent while they were away.
// 3. With WebSockets turned off (--transports sse,poll) the pages fall back to SSE and chat;
//    with SSE off too (--transports poll), to long polling, and chat.
// 4. The browser's own EventSource reads a stream and resumes it from an id.
// 5. The client library in Node (run with --experimental-websocket on Node 20): a WebSocket, an
//    SSE and a long-poll client in one room each see every message once, in order.
// 6. Over https:// (a throwaway CA's certificate; the browser is told to ignore that it does not
//    know the CA) the page loads over HTTP/2 and its WebSocket rides the same connection
//    (RFC 8441): two tabs chat over one TCP connection.
import { execFileSync, spawn } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import net from "node:net";
import path from "node:path";
import puppeteer from "puppeteer-core";

import { C100K } from "../../client/c100k.js";

const BIN = process.env.C100K_BIN ?? "target/debug/c100k";
const SHOTS = process.env.SHOTS ?? "target/browser";
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const children = new Set();

function stopAll() {
  for (const c of children) c.kill("SIGKILL");
  children.clear();
}
process.on("exit", stopAll);
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => process.exit(1));

async function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

/** Resolves once `cond()` is true; rejects after `ms` with `what`. */
async function until(what, cond, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    if (await cond()) return;
    if (Date.now() > end) throw new Error(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

function start(cmd, args, ready) {
  const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
  children.add(child);
  child.on("exit", () => children.delete(child));
  let log = "";
  const seen = new Promise((resolve, reject) => {
    const onData = (d) => {
      log += d;
      if (ready.test(log)) resolve();
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => reject(new Error(`${cmd} exited (${code}) before it was ready:\n${log}`)));
  });
  return { child, seen, log: () => log };
}

async function redis() {
  const port = await freePort();
  const r = start("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], /Ready to accept/);
  await r.seen;
  return { ...r, url: `redis://127.0.0.1:${port}` };
}

async function c100k(port, args = []) {
  const s = start(BIN, ["--listen", `127.0.0.1:${port}`, "--threads", "2", ...args], /listening on/);
  await s.seen;
  return { ...s, url: `http://127.0.0.1:${port}` };
}

async function kill(proc) {
  if (proc.child.exitCode !== null) return;
  const gone = new Promise((r) => proc.child.once("exit", r));
  proc.child.kill("SIGKILL");
  await gone;
}

/** A demo page joined as `name` to `room`. */
async function page(browser, base, name, room, transports) {
  const p = await browser.newPage();
  p.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
  const q = new URLSearchParams({ name, room });
  if (transports) q.set("transports", transports);
  await p.goto(`${base}/?${q}`);
  await until(`${name} open`, () => p.evaluate(() => document.body.dataset.state === "open"));
  return p;
}

const transportOf = (p) => p.evaluate(() => document.body.dataset.transport);
const seqs = (p) => p.$$eval("#messages li[data-seq]", (els) => els.map((e) => Number(e.dataset.seq)));
const texts = (p) => p.$$eval("#messages li[data-seq] .text", (els) => els.map((e) => e.textContent));
const people = (p) => p.$$eval("#people li", (els) => els.map((e) => e.textContent));

async function say(p, text) {
  await p.type("#send input[name=text]", text);
  await p.keyboard.press("Enter");
}

async function sees(p, text, who) {
  await until(`${who} sees ${JSON.stringify(text)}`, async () => (await texts(p)).includes(text));
}

/** Each page shows 1..n exactly once, in order. */
async function inOrder(p, n, who) {
  await until(`${who} shows ${n} messages`, async () => (await seqs(p)).length >= n);
  const got = await seqs(p);
  const want = Array.from({ length: n }, (_, i) => i + 1);
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Error(`${who}: messages ${JSON.stringify(got)}, want each of ${JSON.stringify(want)} once, in order`);
  }
}

async function post(base, room, user, text) {
  const res = await fetch(`${base}/rooms/${room}/messages?user=${user}`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ data: { text } }),
  });
  if (!res.ok) throw new Error(`POST: ${res.status} ${await res.text()}`);
  return (await res.json()).seq;
}

async function metric(base, name) {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`c100k_${name} `));
  return Number(line?.split(" ")[1] ?? NaN);
}

async function chatAndRestart(browser) {
  const r = await redis();
  const port = await freePort();
  let srv = await c100k(port, ["--redis", r.url]);
  const ann = await page(browser, srv.url, "ann", "lobby");
  const bob = await page(browser, srv.url, "bob", "lobby");
  for (const p of [ann, bob]) {
    if ((await transportOf(p)) !== "ws") throw new Error(`WebSocket expected, got ${await transportOf(p)}`);
  }
  await until("both present", async () => {
    const here = await people(ann);
    return ["ann", "bob"].every((u) => here.includes(u));
  });
  await say(ann, "hello from ann");
  await sees(bob, "hello from ann", "bob");
  await say(bob, "hi ann");
  await sees(ann, "hi ann", "ann");
  await say(ann, "third");
  await inOrder(ann, 3, "ann");
  await inOrder(bob, 3, "bob");
  await ann.screenshot({ path: path.join(SHOTS, "chat-websocket.png") });
  console.log("ok - two pages chat over WebSockets and see each other present");

  // The server dies; a new one comes up on the same port, on the same Redis.
  await kill(srv);
  await until("both pages notice", async () => {
    const st = await Promise.all([ann, bob].map((p) => p.evaluate(() => document.body.dataset.state)));
    return st.every((s) => s !== "open");
  });
  srv = await c100k(port, ["--redis", r.url]);
  // Messages sent while the pages are away (their backoff has not brought them back yet, or has).
  await post(srv.url, "lobby", "carol", "sent while you were away 1");
  await post(srv.url, "lobby", "carol", "sent while you were away 2");
  await until("both reconnected", async () => {
    const st = await Promise.all([ann, bob].map((p) => p.evaluate(() => document.body.dataset.state)));
    return st.every((s) => s === "open");
  });
  await say(bob, "back again");
  await inOrder(ann, 6, "ann");
  await inOrder(bob, 6, "bob");
  await ann.screenshot({ path: path.join(SHOTS, "chat-after-restart.png") });
  console.log("ok - after a server restart both pages reconnect and show every message once, in order");
  await ann.close();
  await bob.close();
  await kill(srv);
  await kill(r);
}

async function fallback(browser, transports, want) {
  const port = await freePort();
  const srv = await c100k(port, ["--transports", transports]);
  const ann = await page(browser, srv.url, "ann", "fb");
  const bob = await page(browser, srv.url, "bob", "fb");
  for (const p of [ann, bob]) {
    const t = await transportOf(p);
    if (t !== want) throw new Error(`with --transports ${transports}: transport ${t}, want ${want}`);
  }
  await say(ann, `over ${want} from ann`);
  await sees(bob, `over ${want} from ann`, "bob");
  await say(bob, `over ${want} from bob`);
  await sees(ann, `over ${want} from bob`, "ann");
  await inOrder(ann, 2, "ann");
  await inOrder(bob, 2, "bob");
  const open = want === "sse" ? await metric(srv.url, "sse_streams_open") : await metric(srv.url, "polls_total");
  if (!(open >= 1)) throw new Error(`the server saw no ${want} traffic`);
  await ann.screenshot({ path: path.join(SHOTS, `chat-${want}.png`) });
  console.log(`ok - with --transports ${transports} the page falls back to ${want} and chats`);
  await ann.close();
  await bob.close();
  return srv;
}

async function nativeEventSource(browser, base) {
  const p = await browser.newPage();
  await p.goto(`${base}/client/c100k.js`);
  await p.evaluate(() => {
    window.got = [];
    window.es = new EventSource("/sse?room=es");
    for (const ev of ["joined", "msg"]) window.es.addEventListener(ev, (e) => window.got.push([ev, e.lastEventId, JSON.parse(e.data)]));
  });
  await until("joined", () => p.evaluate(() => window.got.length >= 1));
  await post(base, "es", "zed", "one");
  await post(base, "es", "zed", "two");
  await until("two messages", () => p.evaluate(() => window.got.length >= 3));
  const last = await p.evaluate(() => {
    window.es.close();
    return window.got[2][1];
  });
  await post(base, "es", "zed", "three");
  await p.evaluate((id) => {
    window.got = [];
    window.es = new EventSource(`/sse?room=es&lastEventId=${encodeURIComponent(id)}`);
    for (const ev of ["joined", "msg"]) window.es.addEventListener(ev, (e) => window.got.push([ev, e.lastEventId, JSON.parse(e.data)]));
  }, last);
  await until("the missed message", () => p.evaluate(() => window.got.length >= 2));
  const got = await p.evaluate(() => {
    window.es.close();
    return window.got;
  });
  if (got[0][0] !== "joined" || got[0][2].recovered !== true || got[1][2].data.text !== "three" || got.length !== 2) {
    throw new Error(`EventSource resume: ${JSON.stringify(got)}`);
  }
  console.log("ok - the browser's EventSource reads a stream and resumes from its last id");
  await p.close();
}

/** A throwaway CA and a certificate for localhost it signed, in a fresh directory. */
function testCert() {
  const dir = mkdtempSync(path.join(os.tmpdir(), "c100k-browser-tls-"));
  const ossl = (...a) => execFileSync("openssl", a, { stdio: ["ignore", "ignore", "pipe"] });
  const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  ossl("req", "-x509", ...ec, "-keyout", `${dir}/ca.key`, "-out", `${dir}/ca.pem`, "-days", "2", "-subj", "/CN=c100k-browser-ca");
  ossl("req", ...ec, "-keyout", `${dir}/key.pem`, "-out", `${dir}/cert.csr`, "-subj", "/CN=localhost");
  writeFileSync(`${dir}/ext.cnf`, "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n");
  ossl("x509", "-req", "-in", `${dir}/cert.csr`, "-CA", `${dir}/ca.pem`, "-CAkey", `${dir}/ca.key`, "-CAcreateserial",
    "-out", `${dir}/cert.pem`, "-days", "2", "-extfile", `${dir}/ext.cnf`);
  return dir;
}

async function overHttp2(browser) {
  const dir = testCert();
  const [port, admin] = [await freePort(), await freePort()];
  const srv = await c100k(port, ["--tls-cert", `${dir}/cert.pem`, "--tls-key", `${dir}/key.pem`, "--metrics-listen", `127.0.0.1:${admin}`]);
  const plain = `http://127.0.0.1:${admin}`;
  try {
    const base = `https://localhost:${port}`;
    const ann = await page(browser, base, "ann", "h2");
    // Chromium may open extra, speculative connections (seen: one for the first page, and once
    // one more while the second loaded); every one is HTTP/2, and the WebSockets share one.
    const bob = await page(browser, base, "bob", "h2");
    for (const p of [ann, bob]) {
      const t = await transportOf(p);
      if (t !== "ws") throw new Error(`over https: transport ${t}, want ws`);
    }
    await say(ann, "over h2 from ann");
    await sees(bob, "over h2 from ann", "bob");
    await say(bob, "over h2 from bob");
    await sees(ann, "over h2 from bob", "ann");
    const [h2ws, h2conns, tls, carrying] = [
      await metric(plain, "h2_websockets_total"),
      await metric(plain, "h2_connections_total"),
      await metric(plain, "tls_handshakes_total"),
      await metric(plain, "h2_connections_with_websockets"),
    ];
    if (h2ws !== 2) throw new Error(`the WebSockets did not go over HTTP/2: c100k_h2_websockets_total ${h2ws}`);
    if (carrying !== 1) throw new Error(`the two tabs' WebSockets are on ${carrying} TCP connections, want one`);
    if (h2conns !== tls) throw new Error(`${tls} TLS connections but ${h2conns} HTTP/2 ones`);
    await ann.screenshot({ path: path.join(SHOTS, "chat-h2.png") });
    console.log(`ok - over https both tabs' WebSockets share one HTTP/2 connection (the browser opened ${tls}, all HTTP/2), and chat`);
    await ann.close();
    await bob.close();
  } finally {
    await kill(srv);
    rmSync(dir, { recursive: true, force: true });
  }
}

async function nodeClients() {
  const port = await freePort();
  const srv = await c100k(port);
  const clients = ["ws", "sse", "poll"].map((t) => {
    const c = new C100K(srv.url, { user: `node-${t}`, transports: [t], WebSocket: globalThis.WebSocket });
    const got = [];
    c.join("mixed").on("message", (m) => got.push(m.seq));
    return { t, c, got, room: c.rooms.get("mixed") };
  });
  await until("all three open", () => clients.every((x) => x.c.state === "open" && x.room.position));
  const seqs = [];
  for (let i = 0; i < 6; i++) seqs.push((await clients[i % 3].room.publish({ text: `m${i}` })).seq);
  await until("every client has all six", () => clients.every((x) => x.got.length >= 6));
  for (const x of clients) {
    if (JSON.stringify(x.got) !== JSON.stringify([1, 2, 3, 4, 5, 6])) throw new Error(`${x.t}: ${JSON.stringify(x.got)}`);
    if (x.c.transport !== x.t) throw new Error(`${x.t}: on ${x.c.transport}`);
    x.c.close();
  }
  console.log("ok - Node clients on WebSocket, SSE and long polling each see every message once, in order");
  await kill(srv);
}

async function main() {
  mkdirSync(SHOTS, { recursive: true });
  if (!globalThis.WebSocket) throw new Error("run with node --experimental-websocket (Node 20)");
  await nodeClients();
  const browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    // (The https:// case uses a throwaway CA the browser does not know.)
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--ignore-certificate-errors"],
  });
  try {
    await overHttp2(browser);
    await chatAndRestart(browser);
    const sse = await fallback(browser, "sse,poll", "sse");
    await nativeEventSource(browser, sse.url);
    await kill(sse);
    await kill(await fallback(browser, "poll", "poll"));
  } finally {
    await browser.close();
    stopAll();
  }
}

main().then(
  () => process.exit(0),
  (e) => {
    console.error(`not ok - ${e.stack ?? e}`);
    process.exit(1);
  },
);
