// c100k client: rooms over WebSocket (the c100k.v1 protocol), Server-Sent Events (+ POST to
// send) or long polling, whichever the network allows, with reconnects that resume every room
// from the last message seen. One ES module, no dependencies, no build step; works in browsers
// and in Node 20 (pass `WebSocket` there, or run with --experimental-websocket).
//
//   import { C100K } from "/client/c100k.js";
//   const c = new C100K("https://chat.example", { token });
//   c.on("state", ({ state, transport }) => console.log(state, transport));
//   const lobby = c.join("lobby", { presence: true });
//   lobby.on("message", (m) => console.log(m.seq, m.from, m.data));
//   lobby.on("presence", (users) => console.log([...users.keys()]));
//   lobby.on("reset", (info) => console.log("could not recover", info));
//   await lobby.publish({ text: "hello" });   // → { seq }
//
// Each room's messages reach the application exactly once and in seq order, across reconnects
// and transport changes (your own messages included, when their publish is acknowledged). When a
// room cannot be resumed (its history no longer reaches back, or its server lost it), the room
// emits "reset" and goes on from where the room is now.

/** Over long polling, how often a room's presence list is read again (there are no events). */
const PRESENCE_REFRESH_MS = 5000;

/** Transports, best first. */
export const TRANSPORTS = ["ws", "sse", "poll"];

/**
 * Exponential backoff with full jitter: attempt n (from 0) waits a uniformly random time in
 * [0, min(cap, base * 2^n)). Reset after a connection stayed up for `stableMs`.
 */
export class Backoff {
  constructor({ base = 1000, cap = 60000, random = Math.random } = {}) {
    this.base = base;
    this.cap = cap;
    this.random = random;
    this.attempt = 0;
  }

  /** The ceiling of attempt `n` (before jitter). */
  ceiling(n) {
    return Math.min(this.cap, this.base * 2 ** Math.min(n, 30));
  }

  /** The next delay in milliseconds. */
  next() {
    const d = Math.floor(this.random() * this.ceiling(this.attempt));
    this.attempt += 1;
    return d;
  }

  reset() {
    this.attempt = 0;
  }
}

/**
 * Which transport to try after `failed` failed to connect, given the allowed list (best first):
 * the next one, or null when the round is over (then: back off, and start again from the best).
 */
export function nextTransport(allowed, failed) {
  const i = allowed.indexOf(failed);
  return i >= 0 && i + 1 < allowed.length ? allowed[i + 1] : null;
}

/** `ROOM:EPOCH:SEQ,…` — an SSE id naming positions in rooms (room names percent-encoded). */
export function formatPositions(positions) {
  return positions
    .map(([room, epoch, seq]) => `${encodeRoom(room)}:${epoch}:${seq}`)
    .join(",");
}

function encodeRoom(room) {
  let out = "";
  for (const ch of room) {
    if (ch === "%" || ch === "," || ch === ":" || ch === "+" || !(ch >= " " && ch <= "~")) {
      for (const b of new TextEncoder().encode(ch)) out += "%" + b.toString(16).toUpperCase().padStart(2, "0");
    } else out += ch;
  }
  return out;
}

/** A minimal event emitter (browsers and Node alike). */
class Emitter {
  constructor() {
    this._handlers = new Map();
  }
  on(event, fn) {
    if (!this._handlers.has(event)) this._handlers.set(event, new Set());
    this._handlers.get(event).add(fn);
    return this;
  }
  off(event, fn) {
    this._handlers.get(event)?.delete(fn);
    return this;
  }
  emit(event, value) {
    for (const fn of this._handlers.get(event) ?? []) {
      try {
        fn(value);
      } catch (e) {
        setTimeout(() => {
          throw e;
        });
      }
    }
  }
}

/**
 * One room's ordering: the position (epoch, seq) delivered so far, messages held back while a
 * gap may still be filled by our own publishes' acknowledgements, and duplicate suppression.
 * Pure (no IO): `accept` returns the messages to hand to the application, in order.
 */
export class RoomOrder {
  constructor() {
    this.epoch = null;
    this.seq = 0;
    this.held = new Map(); // seq → message, after a gap
    this.inFlight = 0; // publishes not yet acknowledged
  }

  /** The room was (re)joined at `epoch`/`top`; `recovered` false: the old position is gone. */
  joined(epoch, top, recovered) {
    const reset = this.epoch !== null && !recovered;
    if (reset || this.epoch === null) {
      this.epoch = epoch;
      this.seq = top;
      this.held.clear();
    }
    return reset;
  }

  /** A message (received, or our own acknowledged): what to deliver now. */
  accept(msg) {
    if (msg.epoch !== this.epoch) return []; // from an epoch we are not in (a join answer decides)
    if (msg.seq <= this.seq || this.held.has(msg.seq)) return [];
    this.held.set(msg.seq, msg);
    return this.drain();
  }

  drain() {
    const out = [];
    for (;;) {
      const m = this.held.get(this.seq + 1);
      if (m) {
        this.held.delete(m.seq);
        this.seq = m.seq;
        out.push(m);
        continue;
      }
      // A gap nothing in flight can fill (e.g. a message the server will not repeat): skip it.
      if (this.held.size > 0 && this.inFlight === 0) {
        this.seq = Math.min(...this.held.keys()) - 1;
        continue;
      }
      return out;
    }
  }
}

/** A room the client is in. Events: "message", "presence" (Map user → connections), "reset". */
export class Room extends Emitter {
  constructor(client, name, opts) {
    super();
    this.client = client;
    this.name = name;
    this.presence = !!opts.presence;
    this.order = new RoomOrder();
    this.users = new Map();
  }

  /** Where the room is for us: `{epoch, seq}` (null before the first join answer). */
  get position() {
    return this.order.epoch === null ? null : { epoch: this.order.epoch, seq: this.order.seq };
  }

  /** Publish JSON `data`; resolves with `{seq}` once the server numbered it. */
  async publish(data) {
    this.order.inFlight += 1;
    let seq;
    try {
      seq = await this.client._publish(this.name, data);
    } finally {
      this.order.inFlight -= 1;
    }
    const own = {
      op: "msg",
      room: this.name,
      seq,
      epoch: this.order.epoch,
      from: this.client.self,
      ts: Date.now(),
      data,
      own: true,
    };
    this._deliver(this.order.accept(own));
    this._deliver(this.order.drain());
    return { seq };
  }

  /** Leave the room. */
  leave() {
    this.client._leave(this);
  }

  _joined(j) {
    if (this.order.joined(j.epoch, j.seq, j.recovered)) {
      this.emit("reset", { room: this.name, epoch: j.epoch, seq: j.seq });
    }
  }

  _message(m) {
    this._deliver(this.order.accept(m));
  }

  _deliver(list) {
    for (const m of list) {
      this.emit("message", m);
      this.client.emit("message", m);
    }
  }

  _presenceEvent(ev) {
    const n = this.users.get(ev.user) ?? 0;
    if (ev.op === "presence_join") this.users.set(ev.user, Math.max(n, 1));
    else this.users.delete(ev.user);
    this.emit("presence", this.users);
  }

  _presenceList(users) {
    this.users = new Map(users.map((u) => [u.user, u.conns]));
    this.emit("presence", this.users);
  }
}

/**
 * A connection to a c100k server. Events: "state" ({state, transport, delay?}): connecting,
 * open, reconnecting, closed; "message" (every room's); "error".
 */
export class C100K extends Emitter {
  /**
   * @param {string} url  the server, e.g. "https://chat.example" (a page's own origin by default)
   * @param {object} opts token, user (open servers), transports (best first), WebSocket, fetch,
   *   backoff {base, cap}, stableMs (a connection this old resets the backoff), connectTimeoutMs,
   *   upgradeAfterMs (on a fallback, try the better transports again after this long)
   */
  constructor(url, opts = {}) {
    super();
    const origin = globalThis.location?.origin;
    this.base = new URL(url ?? origin, origin);
    this.token = opts.token ?? null;
    this.user = opts.user ?? null;
    /** Who we are (the token's subject, or `user`), for our own messages' `from`. */
    this.self = opts.user ?? subjectOf(this.token);
    this.transports = (opts.transports ?? TRANSPORTS).filter((t) => TRANSPORTS.includes(t));
    this.WebSocket = opts.WebSocket ?? globalThis.WebSocket;
    this.fetch = opts.fetch ?? globalThis.fetch?.bind(globalThis);
    if (!this.WebSocket) this.transports = this.transports.filter((t) => t !== "ws");
    this.backoff = new Backoff(opts.backoff);
    this.stableMs = opts.stableMs ?? 10000;
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 10000;
    this.upgradeAfterMs = opts.upgradeAfterMs ?? 60000;
    this.rooms = new Map();
    this.state = "idle";
    this.transport = null; // the name of the one in use
    this._conn = null;
    this._timers = new Set();
    this._closed = false;
    if (opts.connect !== false) queueMicrotask(() => this.connect());
  }

  /** Join `name`; returns the Room (its messages start once the server answers). */
  join(name, opts = {}) {
    let room = this.rooms.get(name);
    if (room) return room;
    room = new Room(this, name, opts);
    this.rooms.set(name, room);
    this._conn?.join(room);
    return room;
  }

  /** Close for good (no reconnects). */
  close() {
    this._closed = true;
    for (const t of this._timers) clearTimeout(t);
    this._timers.clear();
    this._conn?.close();
    this._conn = null;
    this._setState("closed", null);
  }

  /** Connect (called by the constructor unless `connect: false`). */
  connect() {
    if (this._closed || this._connecting) return;
    this._attempt(this.transports[0]);
  }

  _setState(state, transport, extra = {}) {
    this.state = state;
    this.transport = transport;
    this.emit("state", { state, transport, ...extra });
  }

  _later(ms, fn) {
    const t = setTimeout(() => {
      this._timers.delete(t);
      fn();
    }, ms);
    this._timers.add(t);
    return t;
  }

  _attempt(name) {
    if (this._closed) return;
    this._connecting = true;
    this._setState("connecting", name);
    const conn = makeTransport(name, this);
    let settled = false;
    const timeout = this._later(this.connectTimeoutMs, () => conn.fail(new Error("connect timeout")));
    conn.onopen = () => {
      settled = true;
      clearTimeout(timeout);
      this._timers.delete(timeout);
      this._connecting = false;
      this._adopt(conn, name);
    };
    conn.onclose = (err) => {
      clearTimeout(timeout);
      this._timers.delete(timeout);
      if (!settled) {
        settled = true;
        const next = nextTransport(this.transports, name);
        if (next) return this._attempt(next); // fall back at once
        this._connecting = false;
        return this._retry(err);
      }
      if (this._conn === conn) {
        this._conn = null;
        this._retry(err);
      }
    };
    conn.open();
  }

  _adopt(conn, name) {
    const old = this._conn;
    this._conn = conn;
    if (old) {
      old.onclose = () => {};
      old.close();
    }
    this._setState("open", name);
    for (const room of this.rooms.values()) conn.join(room);
    const openedAt = Date.now();
    this._stable = this._later(this.stableMs, () => {
      if (this._conn === conn && Date.now() - openedAt >= this.stableMs) this.backoff.reset();
    });
    const better = this.transports.indexOf(name) > 0;
    if (better) this._later(this.upgradeAfterMs, () => this._probe(conn));
  }

  /** On a fallback transport: try the better ones; switch if one opens. */
  _probe(current) {
    if (this._closed || this._conn !== current) return;
    const best = this.transports[0];
    const probe = makeTransport(best, this);
    const timeout = this._later(this.connectTimeoutMs, () => probe.fail(new Error("connect timeout")));
    probe.onopen = () => {
      clearTimeout(timeout);
      if (this._conn !== current) return probe.close();
      this._attachClose(probe);
      this._adopt(probe, best);
    };
    probe.onclose = () => {
      clearTimeout(timeout);
      if (this._conn === current) this._later(this.upgradeAfterMs, () => this._probe(current));
    };
    probe.open();
  }

  _attachClose(conn) {
    conn.onclose = (err) => {
      if (this._conn === conn) {
        this._conn = null;
        this._retry(err);
      }
    };
  }

  _retry(err) {
    if (this._closed) return;
    const delay = this.backoff.next();
    if (err) this.emit("error", err);
    this._setState("reconnecting", null, { delay, attempt: this.backoff.attempt });
    this._later(delay, () => this.connect());
  }

  _leave(room) {
    this.rooms.delete(room.name);
    this._conn?.leave(room);
  }

  async _publish(room, data) {
    if (!this._conn) throw new Error("not connected");
    return this._conn.publish(room, data);
  }

  /** `{"users":[{user,conns}]}` of a room, over HTTP (any transport). */
  async presence(name) {
    const r = await this._http("GET", `/rooms/${encodeURIComponent(name)}/presence`);
    return r.users;
  }

  _url(path, params = {}) {
    const u = new URL(path, this.base);
    if (this.token) u.searchParams.set("token", this.token);
    if (this.user) u.searchParams.set("user", this.user);
    for (const [k, v] of Object.entries(params)) {
      for (const x of [].concat(v)) u.searchParams.append(k, x);
    }
    return u;
  }

  async _http(method, path, body, signal) {
    const res = await this.fetch(this._url(path), {
      method,
      signal,
      headers: body === undefined ? {} : { "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const json = await res.json().catch(() => ({}));
    if (!res.ok) throw Object.assign(new Error(json.error ?? `HTTP ${res.status}`), { status: res.status, code: json.code });
    return json;
  }

  _room(name) {
    return this.rooms.get(name);
  }
}

function makeTransport(name, client) {
  switch (name) {
    case "ws":
      return new WsTransport(client);
    case "sse":
      return new SseTransport(client);
    default:
      return new PollTransport(client);
  }
}

/** Common: open/close notifications, exactly once each. */
class Transport {
  constructor(client) {
    this.client = client;
    this.onopen = () => {};
    this.onclose = () => {};
    this._done = false;
  }
  _opened() {
    if (!this._done && !this._open) {
      this._open = true;
      this.onopen();
    }
  }
  _ended(err) {
    if (this._done) return;
    this._done = true;
    this.shutdown();
    this.onclose(err);
  }
  fail(err) {
    this._ended(err);
  }
  close() {
    this._done = true;
    this.shutdown();
  }
  /** Publishing over HTTP (SSE and poll): POST /rooms/R/messages. */
  async publish(room, data) {
    const r = await this.client._http("POST", `/rooms/${encodeURIComponent(room)}/messages`, { data });
    return r.seq;
  }
}

/** c100k.v1 over one WebSocket. */
class WsTransport extends Transport {
  open() {
    const u = this.client._url("/ws");
    u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
    this.ws = new this.client.WebSocket(u.toString(), "c100k.v1");
    this.calls = new Map();
    this.nextId = 1;
    this.ws.onopen = () => this._opened();
    this.ws.onerror = () => {};
    this.ws.onclose = (e) => {
      for (const { reject } of this.calls.values()) reject(new Error("disconnected"));
      this.calls.clear();
      this._ended(new Error(`WebSocket closed (${e?.code ?? "?"})`));
    };
    this.ws.onmessage = (e) => this._frame(e.data);
  }
  shutdown() {
    try {
      this.ws?.close(1000);
    } catch {
      /* already closing */
    }
  }
  _send(cmd) {
    const id = `c${this.nextId++}`;
    return new Promise((resolve, reject) => {
      this.calls.set(id, { resolve, reject });
      this.ws.send(JSON.stringify({ ...cmd, id }));
    });
  }
  join(room) {
    const pos = room.position;
    this._send({ op: "join", room: room.name, presence: room.presence, ...(pos ? { since: pos } : {}) })
      .then(() => room.presence && this._send({ op: "presence", room: room.name }))
      .catch((e) => {
        if (e.code) room.emit("error", e); // refused (forbidden, too many rooms…); not a disconnect
      });
  }
  leave(room) {
    this._send({ op: "leave", room: room.name }).catch(() => {});
  }
  async publish(room, data) {
    const r = await this._send({ op: "publish", room, data });
    return r.seq;
  }
  _frame(text) {
    let m;
    try {
      m = JSON.parse(text);
    } catch {
      return;
    }
    const room = m.room !== undefined ? this.client._room(m.room) : null;
    if (m.op === "joined") room?._joined(m);
    else if (m.op === "msg") room?._message(m);
    else if (m.op === "presence") room?._presenceList(m.users);
    else if (m.op === "presence_join" || m.op === "presence_leave") room?._presenceEvent(m);
    else if (m.op === "error" && m.room !== undefined && m.code === "unavailable" && !m.id) {
      // The server lost the room's state: join again with our position to learn what remains.
      if (room) this.join(room);
    }
    const call = m.id !== undefined ? this.calls.get(m.id) : null;
    if (call) {
      this.calls.delete(m.id);
      if (m.op === "error") call.reject(Object.assign(new Error(m.message), { code: m.code }));
      else call.resolve(m);
    }
  }
}

/** One event stream (fetch-based, so it works in Node and can send Last-Event-ID) + POST. */
class SseTransport extends Transport {
  open() {
    this._start();
  }
  _start() {
    const rooms = [...this.client.rooms.values()];
    const gen = (this.gen = (this.gen ?? 0) + 1);
    const current = () => gen === this.gen && !this._done;
    this.abort = new AbortController();
    if (rooms.length === 0) {
      // Nothing to stream yet: the transport is up; a stream starts with the first join.
      this.idle = true;
      return queueMicrotask(() => this._opened());
    }
    this.idle = false;
    const params = { room: rooms.map((r) => r.name) };
    if (rooms.some((r) => r.presence)) params.presence = "1";
    const known = rooms.filter((r) => r.position).map((r) => [r.name, r.position.epoch, r.position.seq]);
    const headers = { Accept: "text/event-stream" };
    if (known.length) headers["Last-Event-ID"] = formatPositions(known);
    this.client
      .fetch(this.client._url("/sse", params), { headers, signal: this.abort.signal })
      .then(async (res) => {
        if (!res.ok || !res.body) throw new Error(`SSE: HTTP ${res.status}`);
        this._opened();
        if (rooms.some((r) => r.presence)) for (const r of rooms) this._presence(r);
        await this._read(res.body);
        if (current()) this._ended(new Error("SSE stream ended"));
      })
      .catch((e) => {
        if (current()) this._ended(e);
      });
  }
  async _read(body) {
    const reader = body.getReader();
    const dec = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true }).replace(/\r\n?/g, "\n");
      let i;
      while ((i = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        this._event(block);
      }
    }
  }
  _event(block) {
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const k = line.indexOf(":");
      const field = k < 0 ? line : line.slice(0, k);
      let value = k < 0 ? "" : line.slice(k + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
    if (data.length === 0) return;
    let m;
    try {
      m = JSON.parse(data.join("\n"));
    } catch {
      return;
    }
    const room = this.client._room(m.room);
    if (!room) return;
    if (event === "joined") room._joined(m);
    else if (event === "msg") room._message(m);
    else if (event === "presence_join" || event === "presence_leave") room._presenceEvent(m);
  }
  async _presence(room) {
    try {
      room._presenceList(await this.client.presence(room.name));
    } catch {
      /* presence is best effort over HTTP */
    }
  }
  /** The stream's rooms changed: start a new stream from the current positions. */
  _restart() {
    this.abort?.abort();
    this._start();
  }
  join() {
    if (!this._done) this._restart();
  }
  leave() {
    if (!this._done) this._restart();
  }
  shutdown() {
    this.gen = (this.gen ?? 0) + 1;
    this.abort?.abort();
  }
}

/** Long polling: one request per room at a time, each from the room's position. */
class PollTransport extends Transport {
  open() {
    this.loops = new Map();
    this.presenceAt = new Map();
    this.abort = new AbortController();
    // Opened once the server answers a poll (or at once with no rooms yet).
    const rooms = [...this.client.rooms.values()];
    if (rooms.length === 0) return queueMicrotask(() => this._opened());
    for (const r of rooms) this.join(r);
  }
  join(room) {
    if (this.loops.has(room.name)) return;
    this.loops.set(room.name, true);
    this._loop(room);
  }
  leave(room) {
    this.loops.delete(room.name);
  }
  async _presence(room) {
    this.presenceAt.set(room.name, Date.now());
    try {
      room._presenceList(await this.client.presence(room.name));
    } catch {
      /* best effort */
    }
  }
  async _loop(room) {
    while (!this._done && this.loops.has(room.name) && this.client._room(room.name) === room) {
      const pos = room.position;
      const params = { room: room.name };
      if (pos) params.since = `${pos.epoch}:${pos.seq}`;
      let r;
      try {
        const res = await this.client.fetch(this.client._url("/poll", params), { signal: this.abort.signal });
        r = await res.json();
        if (!res.ok) throw new Error(r.error ?? `poll: HTTP ${res.status}`);
      } catch (e) {
        return this._ended(e);
      }
      this._opened();
      // No presence events over polling: the list is read again now and then.
      if (room.presence && Date.now() - (this.presenceAt.get(room.name) ?? 0) > PRESENCE_REFRESH_MS) {
        this._presence(room);
      }
      const [epoch, seq] = splitPosition(r.next);
      if (!pos || r.recovered === false) room._joined({ epoch, seq, recovered: r.recovered !== false && !!pos });
      for (const m of r.messages) room._message(m);
    }
  }
  shutdown() {
    this.abort?.abort();
  }
}

/** The `sub` claim of a JWT (not verified: the server does that). */
function subjectOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="))).sub ?? null;
  } catch {
    return null;
  }
}

function splitPosition(s) {
  const i = s.lastIndexOf(":");
  return [s.slice(0, i), Number(s.slice(i + 1))];
}
