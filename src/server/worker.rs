//! One event loop: accepts on its own listener, reads into one per-thread buffer, feeds each
//! connection's sans-IO session, writes straight to sockets, fires timers, and serves its mailbox.
//!
//! Syscall economy, since the kernel is most of each message's cost: a connection's replies to
//! one read are collected in a per-thread buffer and written with one `write`; a read that does
//! not fill the buffer is taken as draining the socket (epoll in edge mode reports any later
//! arrival as a new edge), saving the `EAGAIN` read; sockets are registered once for read and
//! write and never re-registered; closing a socket removes it from epoll, so there is no
//! deregister call.

use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::conn::{flags, Conn, Route, Sent, NO_ROOM};
use super::metrics::LoopMetrics;
use super::rooms::{Command, Fanout, LocalRooms, Mailbox};
use super::routes::{self, Body, Decision};
use super::{Shared, LISTENER, WAKER};
use crate::proto::ws::frame::{self, codes, Data, OpCode, Role};
use crate::proto::ws::handshake::{self, ParsedRequest};
use crate::proto::ws::session::{Ending, Event, Expiry, Phase, Session, SessionConfig, TimerAction};
use crate::timer::{Entry, Wheel};

/// Per-thread read buffer.
const READ_BUF: usize = 64 * 1024;
/// Reads per readiness event before other connections get a turn.
const READS_PER_EVENT: usize = 16;
/// Stop reading a connection while this much of its output is queued (echo backpressure).
const PAUSE_READ_AT: usize = 64 * 1024;
/// Largest request head (request line and headers); larger gets 431.
const MAX_HEAD: usize = 16 * 1024;
/// Timer wheel slots (at 10 ms ticks: a 41 s horizon).
const WHEEL_SLOTS: usize = 4096;
/// How long accepting pauses after EMFILE/ENFILE or at --max-connections.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// The write scratch buffer is shrunk back after a large burst.
const WBUF_KEEP: usize = 1 << 20;

pub(crate) struct Worker {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    wheel: Wheel,
    rbuf: Box<[u8]>,
    /// Replies to the connection being served, written with one syscall.
    wbuf: Vec<u8>,
    /// Scratch for close frames sent to other connections while `wbuf` is in use.
    cbuf: Vec<u8>,
    rooms: LocalRooms,
    fanout: Arc<dyn Fanout>,
    mailbox: Arc<Mailbox>,
    shared: Arc<Shared>,
    scfg: SessionConfig,
    start: Instant,
    tick_ns: u128,
    now: u64,
    next_gen: u32,
    next_timer: u32,
    /// Accepting is paused until this tick.
    accept_retry_at: Option<u64>,
    last_accept_warning: Option<u64>,
    /// Set once shutdown began: exit when empty or at this tick.
    drain_deadline: Option<u64>,
    /// Slow consumers found while relaying, closed once the relay loop is done.
    slow: Vec<(u32, u32)>,
    /// Connections with corked frames, flushed once at the end of the loop iteration.
    dirty: Vec<(usize, u32)>,
    /// Connections whose read budget ran out with input possibly left.
    ready: Vec<(usize, u32)>,
}

impl Worker {
    pub fn new(
        id: usize,
        poll: Poll,
        listener: TcpListener,
        shared: Arc<Shared>,
        fanout: Arc<dyn Fanout>,
        mailbox: Arc<Mailbox>,
    ) -> Self {
        let cfg = &shared.cfg;
        let tick = cfg.tick.max(Duration::from_millis(1));
        let ticks = |d: Duration| -> u32 {
            let t = d.as_nanos().div_ceil(tick.as_nanos());
            t.min(u128::from(u32::MAX / 2)) as u32
        };
        let scfg = SessionConfig {
            role: Role::Server,
            max_message: cfg.max_message_size,
            ping_interval: ticks(cfg.ping_interval),
            pong_timeout: ticks(cfg.pong_timeout).max(1),
            handshake_timeout: ticks(cfg.handshake_timeout).max(1),
            close_timeout: ticks(cfg.close_timeout).max(1),
        };
        let per_loop = (cfg.max_connections / cfg.threads.max(1) + 1).min(1 << 20);
        Worker {
            id,
            poll,
            listener: Some(listener),
            // Reserved up front (virtual memory; pages become resident only when used) so the
            // slab never reallocates and copies itself while connections ramp up.
            conns: Slab::with_capacity(per_loop),
            wheel: Wheel::new(WHEEL_SLOTS, 0),
            rbuf: vec![0; READ_BUF].into_boxed_slice(),
            wbuf: Vec::with_capacity(READ_BUF),
            cbuf: Vec::with_capacity(256),
            rooms: LocalRooms::default(),
            fanout,
            mailbox,
            shared,
            scfg,
            start: Instant::now(),
            tick_ns: tick.as_nanos(),
            now: 0,
            next_gen: 0,
            next_timer: 0,
            accept_retry_at: None,
            last_accept_warning: None,
            drain_deadline: None,
            slow: Vec::new(),
            dirty: Vec::new(),
            ready: Vec::new(),
        }
    }

    fn m(&self) -> &LoopMetrics {
        self.shared.metrics.mine(self.id)
    }

    fn now32(&self) -> u32 {
        self.now as u32
    }

    fn ticks(&self, d: Duration) -> u64 {
        (d.as_nanos().div_ceil(self.tick_ns)) as u64
    }

    pub fn run(mut self) {
        self.m().loops_listening.set(1);
        let mut events = Events::with_capacity(1024);
        let mut expired = Vec::new();
        let mut inbox = Vec::new();
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("loop {}: poll failed: {e}; stopping this loop", self.id);
                break;
            }
            self.now = (self.start.elapsed().as_nanos() / self.tick_ns) as u64;
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => self.serve_mailbox(&mut inbox),
                    t => self.on_event(t, ev),
                }
            }
            self.run_ready();
            self.expire_timers(&mut expired);
            self.flush_dirty();
            if self.accept_retry_at.is_some_and(|t| self.now >= t) {
                self.accept_retry_at = None;
                self.accept();
            }
            if let Some(deadline) = self.drain_deadline {
                if self.conns.is_empty() {
                    break;
                }
                if self.now >= deadline {
                    log::info!("loop {}: drain timeout, dropping {} connections", self.id, self.conns.len());
                    let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
                    for k in keys {
                        self.drop_conn(k);
                    }
                    break;
                }
            }
        }
    }

    /// Sleep until the next timer slot, accept retry or drain deadline; not at all while some
    /// connection still has unread input.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut next = self.wheel.next_expiry().map(|ahead| self.now + ahead);
        for t in [self.accept_retry_at, self.drain_deadline].into_iter().flatten() {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
        next.map(|t| {
            let at = self.start + Duration::from_nanos((u128::from(t) * self.tick_ns) as u64);
            at.saturating_duration_since(Instant::now())
        })
    }

    // ---- accepting ----

    fn accept(&mut self) {
        loop {
            if self.shared.open.load(Ordering::Relaxed) >= self.shared.cfg.max_connections {
                self.pause_accepting("--max-connections reached");
                return;
            }
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                Ok((stream, _)) => self.add_conn(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.m().accept_errors_total.inc();
                    match e.raw_os_error() {
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                            self.pause_accepting(&format!("accept failed: {e}"));
                            return;
                        }
                        // ECONNABORTED and the like concern one connection only.
                        _ => log::debug!("loop {}: accept: {e}", self.id),
                    }
                }
            }
        }
    }

    /// Stop accepting for a while; connections wait in the kernel's accept queue. With edge
    /// triggering no new event would come for connections already queued, hence the timer.
    fn pause_accepting(&mut self, why: &str) {
        self.m().accept_pauses_total.inc();
        self.accept_retry_at = Some(self.now + self.ticks(ACCEPT_RETRY).max(1));
        let warn_every = self.ticks(Duration::from_secs(10));
        if self.last_accept_warning.is_none_or(|t| self.now >= t + warn_every) {
            self.last_accept_warning = Some(self.now);
            log::warn!(
                "loop {}: {why}; pausing accepts ({} connections open in this process)",
                self.id,
                self.shared.open.load(Ordering::Relaxed)
            );
        }
    }

    fn add_conn(&mut self, mut stream: mio::net::TcpStream) {
        let _ = stream.set_nodelay(true);
        let now = self.now32();
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= u32::MAX as usize {
            return; // cannot be encoded in a token; the stream is closed on drop
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        if self.next_gen == u32::MAX {
            self.next_gen = 0; // u32::MAX would collide with the listener and waker tokens
        }
        let gen = self.next_gen;
        let token = Token(((gen as usize) << 32) | key);
        if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
            log::warn!("loop {}: registering a connection failed: {e}", self.id);
            self.m().accept_errors_total.inc();
            return;
        }
        entry.insert(Conn::new(stream, gen, Session::new_handshake(now)));
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        let m = self.m();
        m.connections_accepted_total.inc();
        m.connections_open.inc();
        self.arm(key, self.scfg.handshake_timeout);
    }

    // ---- readiness ----

    fn live(&self, key: usize, gen: u32) -> bool {
        self.conns.get(key).is_some_and(|c| c.gen == gen)
    }

    fn on_event(&mut self, t: Token, ev: &mio::event::Event) {
        let key = t.0 & 0xffff_ffff;
        let gen = (t.0 >> 32) as u32;
        if !self.live(key, gen) {
            return; // stale: the key was recycled
        }
        if ev.is_writable() {
            self.on_writable(key);
        }
        if (ev.is_readable() || ev.is_read_closed() || ev.is_error()) && self.live(key, gen) {
            // With RDHUP or an error the final bytes may have come with the event: read to the end.
            self.on_readable(key, ev.is_read_closed() || ev.is_error());
        }
    }

    fn run_ready(&mut self) {
        let ready = std::mem::take(&mut self.ready);
        for &(key, gen) in &ready {
            if self.live(key, gen) {
                self.on_readable(key, false);
            }
        }
    }

    fn on_readable(&mut self, key: usize, to_the_end: bool) {
        let gen = self.conns[key].gen;
        for _ in 0..READS_PER_EVENT {
            let c = &mut self.conns[key];
            if c.has(flags::PEER_EOF) {
                return;
            }
            if c.queued() >= PAUSE_READ_AT {
                c.flags |= flags::READ_PAUSED;
                return;
            }
            match c.stream.read(&mut self.rbuf) {
                Ok(0) => return self.on_eof(key),
                Ok(n) => {
                    self.m().bytes_received_total.add(n as u64);
                    let mut buf = std::mem::take(&mut self.rbuf);
                    self.on_input(key, &mut buf[..n]);
                    self.rbuf = buf;
                    if !self.live(key, gen) || (n < READ_BUF && !to_the_end) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.drop_conn(key),
            }
        }
        self.ready.push((key, gen));
    }

    fn on_writable(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if c.out.is_none() {
            return;
        }
        match c.flush() {
            Ok((n, _)) => {
                let paused = c.has(flags::READ_PAUSED) && c.queued() < PAUSE_READ_AT / 2;
                if paused {
                    c.flags &= !flags::READ_PAUSED;
                }
                let m = self.m();
                m.bytes_sent_total.add(n as u64);
                m.outbound_queued_bytes.sub(n as u64);
                self.settle(key);
                if paused && self.conns.contains(key) {
                    // The edge that made it readable was consumed while paused: read now.
                    self.on_readable(key, false);
                }
            }
            Err(_) => self.drop_conn(key),
        }
    }

    fn on_eof(&mut self, key: usize) {
        let c = &mut self.conns[key];
        c.flags |= flags::PEER_EOF;
        match c.sess.phase() {
            Phase::Handshake => {
                self.m().handshake_failures_total.inc();
                self.drop_conn(key);
            }
            // Gone without a closing handshake (1006 abnormal closure).
            Phase::Open | Phase::Closing => self.drop_conn(key),
            // Finished: close once our last bytes are out.
            Phase::Linger => self.settle(key),
        }
    }

    fn on_input(&mut self, key: usize, data: &mut [u8]) {
        if self.conns[key].sess.phase() == Phase::Handshake {
            self.on_request_bytes(key, data);
        } else {
            self.feed_frames(key, data);
        }
        self.flush_wbuf(key);
    }

    // ---- opening handshake ----

    fn on_request_bytes(&mut self, key: usize, data: &mut [u8]) {
        let mut head = self.conns[key].sess.take_stash();
        let stashed = !head.is_empty();
        if stashed {
            head.extend_from_slice(data);
        }
        let outcome = {
            let buf: &[u8] = if stashed { &head } else { data };
            match handshake::parse_request(buf, MAX_HEAD) {
                ParsedRequest::Partial => None,
                ParsedRequest::Complete { req, len } => Some((routes::route(&req), len)),
                ParsedRequest::TooLarge => Some((plain(431, "request head too large\n"), buf.len())),
                ParsedRequest::Malformed => Some((plain(400, "malformed HTTP request\n"), buf.len())),
            }
        };
        let Some((decision, len)) = outcome else {
            if !stashed {
                head.extend_from_slice(data);
            }
            *self.conns[key].sess.stash() = head;
            return;
        };
        let failed = decision.is_handshake_failure();
        match decision {
            Decision::Upgrade { accept, room } => {
                self.upgrade(key, &accept, room);
                // Frames the client sent right behind its request.
                let rest: &mut [u8] = if stashed { &mut head[len..] } else { &mut data[len..] };
                if !rest.is_empty() {
                    self.feed_frames(key, rest);
                }
            }
            Decision::Respond { status, headers, body } => {
                self.respond(key, status, headers, body, failed);
            }
        }
    }

    fn upgrade(&mut self, key: usize, accept: &str, room: Option<String>) {
        handshake::write_switching_protocols(&mut self.wbuf, accept);
        let now = self.now32();
        let c = &mut self.conns[key];
        // The handshake timer is still queued; when it fires the session re-arms for the ping.
        let handshake_timer_due = c.sess.since().wrapping_add(self.scfg.handshake_timeout);
        c.sess.open(now);
        c.route = if room.is_some() { Route::Room } else { Route::Echo };
        if let Some(name) = room {
            let seat = self.rooms.join(&*self.fanout, self.id, &name, key as u32);
            self.conns[key].seat = seat;
            self.m().rooms.set(self.rooms.len() as u64);
        }
        let m = self.m();
        m.handshakes_total.inc();
        m.websockets_open.inc();
        if self.scfg.ping_interval == 0 {
            self.disarm(key);
        } else if handshake_timer_due.wrapping_sub(now) > self.scfg.ping_interval {
            // Only a ping due before the queued entry fires needs a new entry (one per
            // connection keeps the wheel small).
            self.arm(key, self.scfg.ping_interval);
        }
    }

    /// Answer with plain HTTP and end the connection; `failed`: a WebSocket handshake refused.
    fn respond(&mut self, key: usize, status: u16, headers: &[(&str, &str)], body: Body, failed: bool) {
        let (ctype, text) = match body {
            Body::Text(t) => ("text/plain; charset=utf-8", std::borrow::Cow::Borrowed(t)),
            Body::Owned(s) => ("text/plain; charset=utf-8", std::borrow::Cow::Owned(s)),
            Body::Metrics => ("text/plain; version=0.0.4; charset=utf-8", super::metrics_text(&self.shared).into()),
        };
        handshake::write_response(&mut self.wbuf, status, headers, ctype, text.as_bytes());
        if failed {
            self.m().handshake_failures_total.inc();
        } else {
            self.m().http_requests_total.inc();
        }
        let now = self.now32();
        self.conns[key].sess.linger(now);
        self.arm(key, self.scfg.close_timeout);
    }

    // ---- WebSocket traffic ----

    fn feed_frames(&mut self, key: usize, data: &mut [u8]) {
        let mut rest = data;
        let now = self.now32();
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            match c.sess.feed(&mut rest, now, &mut self.wbuf, &self.scfg) {
                None => return,
                Some(Event::Message { text, data }) => {
                    self.m().messages_received_total.inc();
                    self.on_message(key, text, &data);
                }
                Some(Event::Finish(ending)) => {
                    match ending {
                        Ending::Failed(e) => {
                            self.m().protocol_errors_total.inc();
                            log::debug!("loop {}: connection failed: {} ({})", self.id, e.reason, e.code);
                        }
                        Ending::PeerClosed(_) | Ending::Acknowledged => {
                            self.conns[key].flags |= flags::CLOSE_WHEN_FLUSHED;
                        }
                    }
                    self.leave_ws(key);
                    self.arm(key, self.scfg.close_timeout);
                }
            }
        }
    }

    fn on_message(&mut self, key: usize, text: bool, data: &[u8]) {
        let opcode = OpCode::Data(if text { Data::Text } else { Data::Binary });
        match self.conns[key].route {
            Route::Echo => {
                frame::write_frame(&mut self.wbuf, opcode, data);
                self.m().messages_sent_total.inc();
            }
            Route::Room => {
                if text {
                    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(data) {
                        self.m().invalid_json_total.inc();
                        let reply = serde_json::json!({ "error": format!("invalid JSON, not relayed: {e}") });
                        frame::write_frame(&mut self.wbuf, OpCode::Data(Data::Text), reply.to_string().as_bytes());
                        return;
                    }
                }
                let mut v = Vec::with_capacity(data.len() + 10);
                frame::write_frame(&mut v, opcode, data);
                let framed = Bytes::from(v);
                let room = self.conns[key].seat.room;
                self.relay_local(room, Some(key as u32), &framed);
                if let Some(r) = self.rooms.get(room) {
                    let n = self.fanout.publish(self.id, &r.shared, &framed);
                    self.m().cross_loop_deliveries_total.add(n as u64);
                }
            }
            Route::None => {}
        }
    }

    /// Cork a framed message for this loop's members of `room` (except the sender); it goes out
    /// in the end-of-iteration flush. Members whose queue would pass --max-backlog are closed
    /// with 1008 afterwards.
    fn relay_local(&mut self, room: u32, except: Option<u32>, framed: &Bytes) {
        let Worker { rooms, conns, slow, dirty, shared, id, .. } = self;
        let Some(r) = rooms.get(room) else { return };
        let m = shared.metrics.mine(*id);
        let max_backlog = shared.cfg.max_backlog;
        let mut sent = 0u64;
        for &k in &r.members {
            if Some(k) == except {
                continue;
            }
            let Some(c) = conns.get_mut(k as usize) else {
                continue;
            };
            if c.sess.phase() != Phase::Open {
                continue;
            }
            if c.out.is_some() && c.queued() + framed.len() > max_backlog {
                slow.push((k, c.gen));
                continue;
            }
            if c.cork(framed) {
                dirty.push((k as usize, c.gen));
            }
            sent += 1;
        }
        m.messages_sent_total.add(sent);
        m.outbound_queued_bytes.add(sent * framed.len() as u64);
        while let Some((k, gen)) = self.slow.pop() {
            if !self.live(k as usize, gen) {
                continue;
            }
            self.m().slow_consumer_closes_total.inc();
            log::debug!("loop {}: slow consumer {k}: {} bytes queued", self.id, self.conns[k as usize].queued());
            if let Some(q) = self.conns[k as usize].out.as_mut() {
                let dropped = q.drop_unstarted();
                self.m().outbound_queued_bytes.sub(dropped as u64);
            }
            self.close_with(k as usize, codes::POLICY, "slow consumer: outbound queue over --max-backlog");
        }
    }

    /// Write out what was corked this iteration: one flush (`writev`) per connection, however
    /// many frames it collected. Sockets already waiting for a writable edge are left to it.
    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &(key, gen) in &dirty {
            if !self.live(key, gen) {
                continue;
            }
            let c = &mut self.conns[key];
            c.flags &= !flags::DIRTY;
            if !c.has(flags::BLOCKED) {
                self.on_writable(key);
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Start the closing handshake on an open connection (shutdown 1001, slow consumer 1008).
    fn close_with(&mut self, key: usize, code: u16, reason: &str) {
        let now = self.now32();
        self.cbuf.clear();
        if !self.conns[key].sess.close(code, reason, now, &mut self.cbuf, Role::Server) {
            return;
        }
        let sent = self.conns[key].send_slice(&self.cbuf);
        self.account(key, sent);
        if self.conns.contains(key) {
            self.leave_ws(key);
            self.arm(key, self.scfg.close_timeout);
        }
    }

    /// The WebSocket is no longer open: leave the room and the open gauge (once).
    fn leave_ws(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if c.route == Route::None {
            return;
        }
        c.route = Route::None;
        let seat = c.seat;
        c.seat.room = NO_ROOM;
        self.m().websockets_open.sub(1);
        if seat.room == NO_ROOM {
            return;
        }
        if let Some(moved) = self.rooms.leave(&*self.fanout, self.id, seat) {
            if let Some(mc) = self.conns.get_mut(moved as usize) {
                mc.seat.pos = seat.pos;
            }
        }
        self.m().rooms.set(self.rooms.len() as u64);
    }

    // ---- writing ----

    /// Send the replies collected for `key` with one write.
    fn flush_wbuf(&mut self, key: usize) {
        if !self.wbuf.is_empty() {
            if let Some(c) = self.conns.get_mut(key) {
                let sent = c.send_slice(&self.wbuf);
                self.account(key, sent);
            }
            self.wbuf.clear();
            if self.wbuf.capacity() > WBUF_KEEP {
                self.wbuf = Vec::with_capacity(READ_BUF);
            }
        }
        if self.conns.contains(key) {
            self.settle(key);
        }
    }

    /// Count a send; drop the connection if its socket broke.
    fn account(&mut self, key: usize, sent: Sent) {
        match sent {
            Sent::Ok { written, queued } => {
                let m = self.m();
                m.bytes_sent_total.add(written as u64);
                m.outbound_queued_bytes.add(queued as u64);
            }
            Sent::Broken => self.drop_conn(key),
        }
    }

    /// After the WebSocket ended and everything is written: close now if the closing handshake
    /// completed; otherwise shut down our side and close once the peer has closed too (lingering
    /// close, so a peer that is still sending reads our last bytes before any RST).
    fn settle(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if c.sess.phase() != Phase::Linger || c.out.is_some() {
            return;
        }
        if c.has(flags::CLOSE_WHEN_FLUSHED) {
            return self.drop_conn(key);
        }
        if !c.has(flags::WR_SHUT) {
            c.flags |= flags::WR_SHUT;
            let _ = c.stream.shutdown(Shutdown::Write);
        }
        if c.has(flags::PEER_EOF) {
            self.drop_conn(key);
        }
    }

    fn drop_conn(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        self.leave_ws(key);
        let c = self.conns.remove(key);
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        let m = self.m();
        m.connections_open.sub(1);
        m.outbound_queued_bytes.sub(c.queued() as u64);
        // Dropping the stream closes the socket, which also removes it from epoll.
    }

    // ---- timers ----

    fn arm(&mut self, key: usize, delay: u32) {
        self.next_timer = self.next_timer.wrapping_add(1);
        let id = self.next_timer;
        self.conns[key].timer = id;
        self.wheel.schedule(delay, Entry { key: key as u32, id });
    }

    /// Make any scheduled entry of `key` stale.
    fn disarm(&mut self, key: usize) {
        self.next_timer = self.next_timer.wrapping_add(1);
        self.conns[key].timer = self.next_timer;
    }

    fn expire_timers(&mut self, expired: &mut Vec<Entry>) {
        self.wheel.expire(self.now, expired);
        let now = self.now32();
        for e in expired.drain(..) {
            let key = e.key as usize;
            let Some(c) = self.conns.get_mut(key) else {
                continue;
            };
            if c.timer != e.id {
                continue;
            }
            match c.sess.on_timer(now, &mut self.wbuf, &self.scfg) {
                TimerAction::Rearm(d) => {
                    if !self.wbuf.is_empty() {
                        self.m().pings_sent_total.inc();
                        self.flush_wbuf(key);
                    }
                    if self.conns.contains(key) {
                        self.arm(key, d);
                    }
                }
                TimerAction::Idle => {}
                TimerAction::Expired(why) => {
                    match why {
                        Expiry::Heartbeat => self.m().heartbeat_timeouts_total.inc(),
                        Expiry::Handshake => self.m().handshake_failures_total.inc(),
                        Expiry::Closing | Expiry::Linger => {}
                    }
                    log::debug!("loop {}: dropping connection: {why:?} timeout", self.id);
                    self.drop_conn(key);
                }
            }
        }
    }

    // ---- mailbox ----

    fn serve_mailbox(&mut self, inbox: &mut Vec<Command>) {
        self.mailbox.drain(inbox);
        for cmd in inbox.drain(..) {
            match cmd {
                Command::Deliver { room, frame } => {
                    if let Some(idx) = self.rooms.by_id(room) {
                        self.relay_local(idx, None, &frame);
                    }
                }
                Command::Shutdown { drain } => self.begin_drain(drain),
            }
        }
    }

    fn begin_drain(&mut self, drain: Duration) {
        if self.drain_deadline.is_some() {
            return;
        }
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.m().loops_listening.set(0);
        self.accept_retry_at = None;
        self.drain_deadline = Some(self.now + self.ticks(drain));
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        log::info!("loop {}: shutting down, closing {} connections with 1001", self.id, keys.len());
        for key in keys {
            match self.conns[key].sess.phase() {
                Phase::Handshake => self.drop_conn(key),
                Phase::Open => self.close_with(key, codes::GOING_AWAY, "server shutting down"),
                Phase::Closing | Phase::Linger => {}
            }
        }
    }
}

fn plain(status: u16, body: &'static str) -> Decision {
    Decision::Respond { status, headers: &[], body: Body::Text(body) }
}
