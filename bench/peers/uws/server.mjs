// A uWebSockets server (uWebSockets.js v20 through the `uws-pack` npm repack: the project's own
// binaries, the only way to install it from a package registry) with c100k's seed-mode routes:
//   /echo            every message comes back (text as text, binary as binary)
//   /chat?room=X     valid JSON text is published to the room's other members (uWS pub/sub)
// Idle timeout 40 s with automatic pings (uWS pings idle connections), 1 MiB messages.
// Run: PORT=9002 node server.mjs   (scripts/setup-peers.sh installs it into target/peers/uws)
import { App } from 'uws-pack';

const port = Number(process.env.PORT || 9002);
const common = { idleTimeout: 40, maxPayloadLength: 1 << 20, maxBackpressure: 1 << 20 };

App()
  .ws('/echo', { ...common, message: (ws, msg, binary) => ws.send(msg, binary) })
  .ws('/chat', {
    ...common,
    upgrade: (res, req, ctx) => {
      const room = new URLSearchParams(req.getQuery() || '').get('room') || 'lobby';
      res.upgrade(
        { room },
        req.getHeader('sec-websocket-key'),
        req.getHeader('sec-websocket-protocol'),
        req.getHeader('sec-websocket-extensions'),
        ctx,
      );
    },
    open: (ws) => ws.subscribe(ws.getUserData().room),
    message: (ws, msg, binary) => {
      if (!binary) {
        try {
          JSON.parse(Buffer.from(msg).toString());
        } catch {
          return; // not JSON: not relayed
        }
      }
      ws.publish(ws.getUserData().room, msg, binary); // every subscriber but the sender
    },
  })
  .listen('127.0.0.1', port, (token) => {
    if (!token) {
      console.error(`uws: cannot listen on 127.0.0.1:${port}`);
      process.exit(1);
    }
    console.log(`uws listening on 127.0.0.1:${port}`);
  });
