// A Node `ws` server to measure c100k against: the same routes and rules as c100k's seed mode.
//   /echo            every message comes back (text as text, binary as binary)
//   /chat?room=X     valid JSON text is relayed to every other open member of room X
// Heartbeat: a ping every 30 s; a client that did not answer the previous one is dropped.
// Run: PORT=9001 node server.js   (scripts/setup-peers.sh installs it into target/peers/node-ws)
'use strict';
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.env.PORT || 9001);
const server = new WebSocketServer({ host: '127.0.0.1', port, maxPayload: 1 << 20 });
const rooms = new Map();

function join(name, ws) {
  let set = rooms.get(name);
  if (!set) rooms.set(name, (set = new Set()));
  set.add(ws);
  ws.on('close', () => {
    set.delete(ws);
    if (set.size === 0) rooms.delete(name);
  });
  return set;
}

server.on('connection', (ws, req) => {
  const url = new URL(req.url, 'http://peer');
  ws.alive = true;
  ws.on('pong', () => (ws.alive = true));
  if (url.pathname === '/echo') {
    ws.on('message', (data, binary) => ws.send(data, { binary }));
    return;
  }
  const members = join(url.searchParams.get('room') || 'lobby', ws);
  ws.on('message', (data, binary) => {
    if (!binary) {
      try {
        JSON.parse(data);
      } catch {
        return; // not JSON: not relayed
      }
    }
    for (const other of members) {
      if (other !== ws && other.readyState === WebSocket.OPEN) other.send(data, { binary });
    }
  });
});

const pings = setInterval(() => {
  for (const ws of server.clients) {
    if (!ws.alive) {
      ws.terminate();
      continue;
    }
    ws.alive = false;
    ws.ping();
  }
}, 30_000);
server.on('close', () => clearInterval(pings));
server.on('listening', () => console.log(`node ws ${require('ws/package.json').version} listening on 127.0.0.1:${port}`));
