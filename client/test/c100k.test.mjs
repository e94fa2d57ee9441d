// Unit tests of the client's pure parts (backoff, fallback order, ordering) and of its transport
// choice against fake WebSocket/fetch implementations: `node --test client/test/`.
import { test } from "node:test";
import assert from "node:assert/strict";

import { Backoff, C100K, RoomOrder, TRANSPORTS, formatPositions, nextTransport } from "../c100k.js";

test("backoff doubles from 1 s to a 60 s cap, with full jitter, and resets", () => {
  const top = new Backoff({ random: () => 0.9999999 });
  const ceilings = Array.from({ length: 9 }, () => top.next() + 1);
  assert.deepEqual(ceilings, [1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000]);
  const none = new Backoff({ random: () => 0 });
  assert.equal(none.next(), 0, "full jitter reaches down to zero");
  const half = new Backoff({ random: () => 0.5 });
  assert.deepEqual([half.next(), half.next(), half.next()], [500, 1000, 2000]);
  half.reset();
  assert.equal(half.next(), 500, "a stable connection starts the schedule over");
  const spread = new Backoff();
  spread.attempt = 3;
  const ds = Array.from({ length: 200 }, () => {
    spread.attempt = 3;
    return spread.next();
  });
  assert.ok(Math.min(...ds) >= 0 && Math.max(...ds) < 8000);
  assert.ok(new Set(ds).size > 100, "jittered, not synchronised");
});

test("transports fall back in order WebSocket, SSE, long polling", () => {
  assert.deepEqual(TRANSPORTS, ["ws", "sse", "poll"]);
  assert.equal(nextTransport(TRANSPORTS, "ws"), "sse");
  assert.equal(nextTransport(TRANSPORTS, "sse"), "poll");
  assert.equal(nextTransport(TRANSPORTS, "poll"), null, "end of the round: back off");
  assert.equal(nextTransport(["ws", "poll"], "ws"), "poll");
});

test("positions are written the way the server writes SSE ids", () => {
  assert.equal(formatPositions([["lobby", "e1", 7], ["a,b:c%d é", "e2", 0]]), "lobby:e1:7,a%2Cb%3Ac%25d %C3%A9:e2:0");
  assert.equal(formatPositions([["c+d", "e", 1]]), "c%2Bd:e:1");
});

test("a room delivers each message once, in order, holding gaps our own publishes fill", () => {
  const o = new RoomOrder();
  assert.equal(o.joined("e", 3, false), false, "a first join is no reset");
  const m = (seq, epoch = "e") => ({ seq, epoch });
  assert.deepEqual(o.accept(m(4)).map((x) => x.seq), [4]);
  assert.deepEqual(o.accept(m(4)), [], "duplicate (a replay after reconnect)");
  assert.deepEqual(o.accept(m(2)), [], "older");
  o.inFlight = 1; // our publish of 5 is not acknowledged yet
  assert.deepEqual(o.accept(m(6)), [], "held: 5 may be ours");
  o.inFlight = 0;
  assert.deepEqual(o.accept(m(5)).map((x) => x.seq), [5, 6]);
  assert.deepEqual(o.accept(m(9)).map((x) => x.seq), [9], "a gap nothing can fill is skipped");
  assert.deepEqual(o.accept(m(10, "other")), [], "another epoch waits for a join answer");
  assert.equal(o.joined("e", 12, true), false, "recovered: keep going");
  assert.equal(o.seq, 9);
  assert.equal(o.joined("f", 2, false), true, "not recovered: reset");
  assert.deepEqual([o.epoch, o.seq], ["f", 2]);
});

/** A WebSocket that fails, or talks c100k.v1 through `server(cmd, ws)`. */
function fakeWebSocket(log, server) {
  return class {
    constructor(url, proto) {
      this.url = url;
      this.protocol = proto;
      log.push(["ws", url]);
      queueMicrotask(() => (server ? this.onopen() : this.onclose({ code: 1006 })));
      this.sent = [];
    }
    send(text) {
      const cmd = JSON.parse(text);
      this.sent.push(cmd);
      server(cmd, this);
    }
    reply(obj) {
      queueMicrotask(() => this.onmessage({ data: JSON.stringify(obj) }));
    }
    close() {
      queueMicrotask(() => this.onclose?.({ code: 1000 }));
    }
  };
}

const json = (status, body) => ({ ok: status < 300, status, json: async () => body, body: null });

function waitFor(cond, what) {
  return new Promise((resolve, reject) => {
    const t0 = Date.now();
    const tick = () => {
      if (cond()) return resolve();
      if (Date.now() - t0 > 3000) return reject(new Error(`timed out: ${what}`));
      setTimeout(tick, 2);
    };
    tick();
  });
}

test("with WebSockets and SSE refused, the client falls back to long polling, and retries the best first", async () => {
  const log = [];
  let pollAnswers = 0;
  const fetch = async (url) => {
    const u = new URL(url);
    log.push([u.pathname.slice(1), u.search]);
    if (u.pathname === "/sse") return json(404, { error: "off" });
    if (u.pathname === "/poll") {
      pollAnswers += 1;
      if (pollAnswers > 1) return json(503, { error: "gone" }); // the server goes away
      return json(200, { messages: [], next: "ep:0" });
    }
    return json(404, {});
  };
  const states = [];
  const c = new C100K("http://h.test", {
    WebSocket: fakeWebSocket(log, null),
    fetch,
    backoff: { random: () => 0 },
    stableMs: 60000,
  });
  c.on("state", (s) => states.push(`${s.state}:${s.transport}`));
  c.join("lobby");
  await waitFor(() => states.includes("reconnecting:null"), "the poll failed and a retry was scheduled");
  await waitFor(() => states.filter((s) => s === "connecting:ws").length >= 2, "the next round");
  c.close();
  assert.deepEqual(states.slice(0, 5), ["connecting:ws", "connecting:sse", "connecting:poll", "open:poll", "reconnecting:null"]);
  assert.equal(states[5], "connecting:ws", "each round starts with the best transport");
  assert.deepEqual(log.slice(0, 3).map((x) => x[0]), ["ws", "sse", "poll"]);
});

test("on reconnect every room is joined again with since, and nothing is delivered twice", async () => {
  let conns = [];
  const server = (cmd, ws) => {
    if (cmd.op === "join") {
      ws.reply({ op: "joined", id: cmd.id, room: cmd.room, epoch: "E", seq: cmd.since ? 5 : 2, recovered: true });
      if (!cmd.since) {
        ws.reply({ op: "msg", room: cmd.room, seq: 3, epoch: "E", from: "x", data: 3 });
        ws.reply({ op: "msg", room: cmd.room, seq: 4, epoch: "E", from: "x", data: 4 });
      } else {
        // the replay overlaps what was seen
        for (const s of [4, 5]) ws.reply({ op: "msg", room: cmd.room, seq: s, epoch: "E", from: "x", data: s });
      }
    }
  };
  const Base = fakeWebSocket([], server);
  const WS = class extends Base {
    constructor(...a) {
      super(...a);
      conns.push(this);
    }
  };
  const c = new C100K("http://h.test", { WebSocket: WS, fetch: async () => json(404, {}), backoff: { random: () => 0 } });
  const got = [];
  c.join("r").on("message", (m) => got.push(m.seq));
  await waitFor(() => got.length === 2, "first messages");
  conns[0].onclose({ code: 1006 }); // the connection drops
  await waitFor(() => got.length === 3, "the replay");
  c.close();
  assert.deepEqual(got, [3, 4, 5]);
  const rejoin = conns[1].sent.find((x) => x.op === "join");
  assert.deepEqual(rejoin.since, { epoch: "E", seq: 4 });
});
