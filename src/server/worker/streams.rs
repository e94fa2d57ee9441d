//! Room members over plain HTTP: Server-Sent Events streams (`/sse`) and long polls (`/poll`).
//! Both join rooms through the same broker as v1 WebSockets (positions, history, presence), so
//! neither needs a sticky load balancer: a client resumes from its position on any node.
//!
//! An event stream is an open session that is only written to: room messages and presence as
//! events, a `: ping` comment every --sse-ping-interval, and TCP_USER_TIMEOUT as its heartbeat
//! (unacknowledged pings to a dead peer end it). A long poll is an HTTP request answered when its
//! room has a message after its position, or empty at --poll-timeout; the connection then stays
//! for the next poll.

use std::sync::Arc;

use super::{within, Worker};
use crate::auth::Identity;
use crate::proto::sse;
use crate::proto::v1::{self, ErrorCode, Position};
use crate::proto::ws::session::Arm;
use crate::rooms::message::RoomMessage;
use crate::server::conn::{flags, Bucket, Peer, Route, PENDING};
use crate::server::rooms::PollReady;
use crate::server::routes::CORS;

/// `retry:` at the start of a stream: how long an `EventSource` waits before reconnecting (the
/// client library's backoff base).
const SSE_RETRY_MS: u64 = 1000;

impl Worker {
    /// Start an event stream of `rooms` for `identity`.
    pub(super) fn start_sse(
        &mut self,
        key: usize,
        rooms: Vec<(String, Option<Position>)>,
        presence: bool,
        identity: Identity,
    ) {
        let (now, now_ms) = (self.now32(), self.now_ms());
        let peer = Box::new(Peer::new(identity, Bucket::full(self.rooms.publish_rate(), now_ms)));
        let every = self.sse_every();
        let c = &mut self.conns[key];
        c.route = Route::Sse;
        c.peer = Some(peer);
        // Open: room traffic flows to it. Its heartbeat is ours (pings below), not the session's.
        // One timer entry per stream: the handshake's, when it fires before the first ping.
        let arm = c.sess.open_every(now, &self.scfg, every);
        let cfg = &self.shared.cfg;
        if let (false, Some(s)) = (cfg.ping_interval.is_zero(), c.tcp()) {
            // A dead peer does not acknowledge our pings: the kernel ends the connection.
            let _ = socket2::SockRef::from(s).set_tcp_user_timeout(Some(cfg.ping_interval + cfg.pong_timeout));
        }
        sse::write_head(&mut self.wbuf, &[CORS]);
        sse::write_retry(&mut self.wbuf, SSE_RETRY_MS);
        let m = self.m();
        m.sse_streams_open.inc();
        m.sse_streams_total.inc();
        if let Arm::After(d) = arm {
            self.arm(key, d);
        }
        for (room, since) in rooms {
            if let Err((_, why)) = self.rooms.join(&mut self.conns, key, &room, since, presence, None) {
                return self.end_stream(key, Some((&room, ErrorCode::BadRequest, &why)));
            }
        }
    }

    /// --sse-ping-interval in ticks.
    fn sse_every(&self) -> u32 {
        self.ticks(self.shared.cfg.sse_ping_interval).clamp(1, u64::from(u32::MAX / 2)) as u32
    }

    /// The stream's timer: a ping comment when one is due, and the next check armed.
    pub(super) fn sse_ping(&mut self, key: usize) {
        let every = self.sse_every();
        let now = self.now32();
        let left = self.conns[key].sess.keepalive(now, every);
        if left > 0 {
            return self.arm(key, left);
        }
        let sent = self.conns[key].send_slice(sse::PING);
        self.m().pings_sent_total.inc();
        self.account(key, sent);
        if self.conns.contains(key) {
            self.arm(key, every);
        }
    }

    /// End an event stream (optionally with an `error` event naming a room): it leaves its rooms,
    /// and the connection closes once its last bytes are out. `EventSource` reconnects by itself
    /// with `Last-Event-ID`.
    pub(super) fn end_stream(&mut self, key: usize, error: Option<(&str, ErrorCode, &str)>) {
        if let Some((room, code, message)) = error {
            let mut json = Vec::with_capacity(96 + message.len());
            v1::write_room_error(&mut json, None, room, code, message);
            self.cbuf.clear();
            sse::write_event(&mut self.cbuf, None, "error", &json);
            let sent = self.conns[key].send_slice(&self.cbuf);
            self.account(key, sent);
            if !self.conns.contains(key) {
                return;
            }
        }
        self.leave_ws(key, false);
        let now = self.now32();
        let c = &mut self.conns[key];
        c.sess.linger(now);
        // Corked events go now, so the end is not left waiting for a writable edge.
        match c.flush() {
            Ok((n, freed)) => {
                let m = self.m();
                m.bytes_sent_total.add(n as u64);
                m.outbound_queued_bytes.sub(freed as u64);
            }
            Err(_) => return self.drop_conn(key),
        }
        self.arm(key, self.scfg.close_timeout);
        self.settle(key);
    }

    /// Start a long poll of `room` after `since`.
    pub(super) fn start_poll(
        &mut self,
        key: usize,
        room: String,
        since: Option<Position>,
        identity: Identity,
        close: bool,
    ) {
        let now_ms = self.now_ms();
        let c = &mut self.conns[key];
        c.route = Route::Poll;
        c.flags |= flags::AWAITING | flags::CORS;
        if close {
            c.flags &= !flags::KEEP_ALIVE;
        } else {
            c.flags |= flags::KEEP_ALIVE;
        }
        c.peer = Some(Box::new(Peer::new(identity, Bucket::full(self.rooms.publish_rate(), now_ms))));
        self.m().polls_waiting.inc();
        let wait = self.ticks(self.shared.cfg.poll_timeout).clamp(1, u64::from(u32::MAX / 2));
        self.arm(key, wait as u32);
        if let Err((code, why)) = self.rooms.join(&mut self.conns, key, &room, since, false, None) {
            self.answer_poll(key, error_status(code), &error_json(code, &why));
        }
    }

    /// Answer the long polls whose room had something for them.
    pub(super) fn answer_polls(&mut self) {
        for PollReady { to, messages, epoch, seq, recovered } in self.rooms.take_woken() {
            let key = to.key as usize;
            if !self.live(key, to.gen) || self.conns[key].route != Route::Poll {
                continue;
            }
            self.answer_poll_with(key, &messages, &epoch, seq, recovered);
        }
    }

    fn answer_poll_with(&mut self, key: usize, messages: &[Arc<RoomMessage>], epoch: &str, seq: u64, recovered: bool) {
        let cap = self.shared.cfg.max_message_size;
        let sent: Vec<&Arc<RoomMessage>> = within(messages, cap).collect();
        // The next poll starts after the last message answered (the rest are history by then).
        let seq = if sent.len() < messages.len() { sent.last().map_or(seq, |m| m.seq) } else { seq };
        let mut body = Vec::with_capacity(64 + sent.iter().map(|m| m.v1_json().len() + 1).sum::<usize>());
        v1::write_poll(&mut body, sent.iter().map(|m| m.v1_json()), epoch, seq, recovered);
        let m = self.m();
        m.messages_sent_total.add(sent.len() as u64);
        self.answer_poll(key, 200, &body);
    }

    /// Nothing came within --poll-timeout (or the server is draining, or the room was reset):
    /// an empty answer at the position the poll asked for.
    pub(super) fn poll_timed_out(&mut self, key: usize) {
        let c = &self.conns[key];
        let at = c.peer.as_ref().and_then(|p| p.seats.first()).and_then(|s| {
            if s.pos == PENDING {
                self.rooms.since(key, s.room).map(|pos| (pos.epoch.clone().into(), pos.seq))
            } else {
                self.rooms.position(s.room)
            }
        });
        match at {
            Some((epoch, seq)) => self.answer_poll_with(key, &[], &epoch, seq, true),
            None => self.answer_poll(key, 503, &error_json(ErrorCode::Unavailable, "the room did not answer in time")),
        }
    }

    /// Answer a long poll: it leaves its room (with presence grace: the next poll comes soon).
    pub(super) fn answer_poll(&mut self, key: usize, status: u16, body: &[u8]) {
        self.leave_ws(key, false);
        self.m().polls_total.inc();
        self.answer_awaited(key, status, body);
    }
}

/// The HTTP status for a refused or failed room request.
pub(super) fn error_status(code: ErrorCode) -> u16 {
    match code {
        ErrorCode::Unavailable => 503,
        ErrorCode::RateLimited => 429,
        ErrorCode::Forbidden => 403,
        _ => 400,
    }
}

/// `{"error":MESSAGE,"code":CODE}`
pub(super) fn error_json(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(48 + message.len());
    body.extend_from_slice(b"{\"error\":");
    v1::write_str(&mut body, message);
    body.extend_from_slice(b",\"code\":");
    v1::write_str(&mut body, code.as_str());
    body.push(b'}');
    body
}
