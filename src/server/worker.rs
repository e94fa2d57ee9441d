//! One event loop: accepts on its own listener, reads into one per-thread buffer, feeds each
//! connection's sans-IO state (HTTP request reader, WebSocket session), writes straight to
//! sockets, fires timers, and serves its mailbox (broker events, shutdown).
//!
//! The loop routes; the work lives in types that own their state: [`Rooms`] (membership and
//! fan-out through the broker), [`Relay`] (corking and slow consumers), `messages` (what a
//! WebSocket message means on each route), `routes` (what a request gets).
//!
//! Syscall economy, since the kernel is most of each message's cost: a connection's replies to
//! one read are collected in a per-thread buffer and written with one `write`; a read that does
//! not fill the buffer is taken as draining the socket (epoll in edge mode reports any later
//! arrival as a new edge), saving the `EAGAIN` read; sockets are registered once for read and
//! write and never re-registered; closing a socket removes it from epoll, so there is no
//! deregister call; broker events this loop posts to itself cost no eventfd write.

use std::io::{self, Read};
use std::net::Shutdown;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use super::conn::{flags, Bucket, Conn, Peer, Route, Sent, Take};
use super::messages::{self, After};
use super::metrics::LoopMetrics;
use super::relay::Relay;
use super::rooms::{v1_frame, Rooms};
use super::routes::{self, ApiCall, Decision, Refused, Reply as Answer, Response, Restrict, WsKind};
use super::{Command, Mailbox, Shared, ADMIN_LISTENER, LISTENER, WAKER};
use crate::auth::Identity;
use crate::broker::{Event, Publish, Query, Reply};
use crate::proto::http::{self, Limits, Parsed};
use crate::proto::v1;
use crate::proto::ws::frame::{codes, Role};
use crate::proto::ws::handshake;
use crate::proto::ws::session::{Arm, Ending, Event as WsEvent, Expiry, Phase, Session, SessionConfig, TimerAction};
use crate::rooms::message::{ConnRef, Payload, RoomMessage};
use crate::timer::{Entry, Wheel};

mod h2;
mod streams;

/// Per-thread read buffer.
const READ_BUF: usize = 64 * 1024;
/// Reads per readiness event before other connections get a turn.
const READS_PER_EVENT: usize = 16;
/// Stop reading a connection while this much of its output is queued: TCP pushes back on a peer
/// that sends without reading what we answer.
const PAUSE_READ_AT: usize = 64 * 1024;
/// Largest request head (request line and headers); larger gets 431.
const MAX_HEAD: usize = 16 * 1024;
/// Timer wheel slots (at 100 ms ticks: a 410 s horizon).
const WHEEL_SLOTS: usize = 4096;
/// How long accepting pauses after EMFILE/ENFILE or at --max-connections.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// The write scratch buffer is shrunk back after a large burst.
const WBUF_KEEP: usize = 1 << 20;
/// Mailbox rounds per loop iteration before the loop lets sockets have a turn.
const MAILBOX_ROUNDS: usize = 8;
/// Over the input budget, this many of the waiting connections (the oldest) still read, so
/// their messages complete and free memory: without it, everyone waits for everyone.
const INPUT_ADMITTED: usize = 4;

pub(crate) struct Worker {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Conn>,
    wheel: Wheel,
    rbuf: Box<[u8]>,
    /// Replies to the connection being served, written with one syscall.
    wbuf: Vec<u8>,
    /// Scratch for frames sent to other connections while `wbuf` is in use.
    cbuf: Vec<u8>,
    /// Decrypted input of a TLS connection (one read's worth).
    pbuf: Vec<u8>,
    /// TLS records a read made us send (handshake flights, alerts).
    tbuf: Vec<u8>,
    /// HTTP/2 connections to drive, frames to send, what their streams need.
    h2_dirty: Vec<(u32, u32)>,
    h2_out: Vec<u8>,
    h2_actions: Vec<super::h2::Action>,
    rooms: Rooms,
    relay: Relay,
    mailbox: Arc<Mailbox>,
    inbox: Vec<Command>,
    shared: Arc<Shared>,
    scfg: SessionConfig,
    limits: Limits,
    start: Instant,
    tick_ns: u128,
    now: u64,
    next_gen: u32,
    next_timer: u32,
    /// The --metrics-listen listener (loop 0 only).
    admin: Option<TcpListener>,
    /// Client address of each connection counted for --max-connections-per-ip.
    ip_of: std::collections::HashMap<usize, std::net::IpAddr>,
    /// Accepting is paused until this tick.
    accept_retry_at: Option<u64>,
    last_accept_warning: Option<u64>,
    /// Set once shutdown began: exit when empty or at this tick.
    drain_deadline: Option<u64>,
    /// Connections whose read budget ran out with input possibly left.
    ready: Vec<(usize, u32)>,
    /// Connections holding incomplete input that wait while buffered input is over its budget,
    /// oldest first; the first [`INPUT_ADMITTED`] may go on reading, so messages complete and
    /// memory frees.
    input_waiting: std::collections::VecDeque<(usize, u32)>,
}

impl Worker {
    pub fn new(id: usize, poll: Poll, listener: TcpListener, shared: Arc<Shared>, mailbox: Arc<Mailbox>) -> Self {
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
            message_timeout: if cfg.message_timeout.is_zero() { 0 } else { ticks(cfg.message_timeout).max(1) },
        };
        let per_loop = (cfg.max_connections / cfg.threads.max(1) + 1).min(1 << 20);
        let start = Instant::now();
        let anon_nonce = (std::process::id() << 8) ^ (id as u32) ^ (start.elapsed().subsec_nanos() << 20);
        Worker {
            id,
            poll,
            listener: Some(listener),
            admin: None,
            ip_of: std::collections::HashMap::new(),
            // Reserved up front (virtual memory; pages become resident only when used) so the
            // slab never reallocates and copies itself while connections ramp up.
            conns: Slab::with_capacity(per_loop),
            wheel: Wheel::new(WHEEL_SLOTS, 0),
            rbuf: vec![0; READ_BUF].into_boxed_slice(),
            wbuf: Vec::with_capacity(READ_BUF),
            cbuf: Vec::with_capacity(256),
            pbuf: Vec::new(),
            tbuf: Vec::new(),
            h2_dirty: Vec::new(),
            h2_out: Vec::new(),
            h2_actions: Vec::new(),
            rooms: Rooms::new(
                id,
                shared.broker.clone(),
                cfg.max_rooms_per_conn,
                cfg.max_publish_rate,
                cfg.deflate_min_size,
                anon_nonce,
            ),
            relay: Relay::new(cfg.max_backlog),
            mailbox,
            inbox: Vec::new(),
            limits: Limits { max_head: MAX_HEAD, max_body: cfg.max_message_size },
            shared,
            scfg,
            start,
            tick_ns: tick.as_nanos(),
            now: 0,
            next_gen: 0,
            next_timer: 0,
            accept_retry_at: None,
            last_accept_warning: None,
            drain_deadline: None,
            ready: Vec::new(),
            input_waiting: std::collections::VecDeque::new(),
        }
    }

    fn m(&self) -> &LoopMetrics {
        self.shared.metrics.mine(self.id)
    }

    fn now32(&self) -> u32 {
        self.now as u32
    }

    /// Milliseconds on this loop's clock (for rate limits).
    fn now_ms(&self) -> u32 {
        self.start.elapsed().as_millis() as u32
    }

    fn ticks(&self, d: Duration) -> u64 {
        (d.as_nanos().div_ceil(self.tick_ns)) as u64
    }

    fn conn_ref(&self, key: usize) -> ConnRef {
        ConnRef { lp: self.id as u16, key: key as u32, gen: self.conns[key].gen }
    }

    pub fn run(mut self) {
        self.m().loops_listening.set(1);
        let mut events = Events::with_capacity(1024);
        let mut expired = Vec::new();
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
            // Timers first: the wheel must stand at `now` before anything arms against it (a
            // loop that slept for N ticks would otherwise arm N ticks in the past, firing at once).
            self.expire_timers(&mut expired);
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    ADMIN_LISTENER => self.accept_admin(),
                    WAKER => {} // the mailbox is served below, every iteration
                    t => self.on_event(t, ev),
                }
            }
            self.run_ready();
            self.settle_iteration();
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
        self.m().loops_listening.set(0);
    }

    /// The end of an iteration: serve the mailbox (broker events, including those this loop
    /// posted to itself), write what was corked, close slow consumers — until nothing is left
    /// or the round limit gives sockets a turn.
    fn settle_iteration(&mut self) {
        for _ in 0..MAILBOX_ROUNDS {
            let served = self.serve_mailbox();
            self.relay.flush_dirty(&mut self.conns, self.shared.metrics.mine(self.id));
            // Streams' output (written by the flush) becomes HTTP/2 frames.
            let driven = self.drive_dirty_h2();
            let closed = self.close_slow_and_broken() + self.enforce_outbound_budget();
            if served == 0 && closed == 0 && driven == 0 {
                break;
            }
        }
        self.admit_input();
    }

    /// Let waiting connections read: all of them once buffered input is back under its budget,
    /// else the oldest few. Those whose message completed (or that closed) leave the queue.
    fn admit_input(&mut self) {
        let over = self.shared.inbound.load(Ordering::Relaxed) >= self.shared.cfg.max_buffered_input;
        while let Some(&(key, gen)) = self.input_waiting.front() {
            match self.conns.get_mut(key).filter(|c| c.gen == gen) {
                Some(c) if c.sess.buffered() > 0 && over => break,
                Some(c) => {
                    c.flags &= !flags::INPUT_PAUSED;
                    self.ready.push((key, gen));
                    self.input_waiting.pop_front();
                }
                None => {
                    self.input_waiting.pop_front();
                }
            }
        }
        for &(key, gen) in self.input_waiting.iter().take(INPUT_ADMITTED) {
            if let Some(c) = self.conns.get_mut(key).filter(|c| c.gen == gen && c.has(flags::INPUT_PAUSED)) {
                c.flags &= !flags::INPUT_PAUSED;
                self.ready.push((key, gen));
            }
        }
    }

    /// Past --max-outbound-memory (this process's queues summed over its loops), close this
    /// loop's slowest consumers — the largest queues — until the process is within budget.
    /// Outbound queue memory of this process (all its loops).
    fn outbound_total(&self) -> u64 {
        self.shared.metrics.own().iter().map(|m| m.outbound_queued_bytes.get()).sum()
    }

    fn enforce_outbound_budget(&mut self) -> usize {
        let budget = self.shared.cfg.max_outbound_memory as u64;
        let total = self.outbound_total();
        if total <= budget {
            return 0;
        }
        let mut heavy: Vec<(usize, usize)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.has_queue() && c.sess.phase() == Phase::Open)
            .map(|(k, c)| (c.queued(), k))
            .collect();
        heavy.sort_unstable_by(|a, b| b.cmp(a));
        let mut over = total - budget;
        let mut closed = 0;
        for (cost, key) in heavy {
            if over == 0 {
                break;
            }
            self.m().outbound_budget_closes_total.inc();
            self.close_slow(key);
            over = over.saturating_sub(cost as u64);
            closed += 1;
        }
        closed
    }

    /// Sleep until the next timer slot, accept retry or drain deadline; not at all while some
    /// connection still has unread input or the mailbox holds work.
    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() || !self.mailbox.is_empty() {
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

    /// Serve `/metrics` and `/healthz` on `l` too (--metrics-listen).
    pub fn serve_admin(&mut self, mut l: TcpListener) -> io::Result<()> {
        self.poll.registry().register(&mut l, ADMIN_LISTENER, Interest::READABLE)?;
        self.admin = Some(l);
        Ok(())
    }

    fn accept_admin(&mut self) {
        while let Some(l) = self.admin.as_ref() {
            match l.accept() {
                Ok((stream, _)) => self.add_conn(stream, None, flags::ADMIN),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return,
            }
        }
    }

    fn accept(&mut self) {
        let max = self.shared.cfg.max_connections;
        loop {
            let open = self.shared.open.load(Ordering::Relaxed);
            if open >= max + crate::net::limits::OVERFLOW_CONNS as usize {
                // Even the overflow is taken: answer at once, hold nothing.
                if !self.refuse_at_once() {
                    self.pause_accepting("--max-connections reached");
                    return;
                }
                continue;
            }
            let Some(listener) = self.listener.as_ref() else {
                return;
            };
            match listener.accept() {
                // At the limit the connection is still answered (503, or /healthz and /metrics).
                Ok((stream, peer)) => {
                    self.add_conn(stream, Some(peer.ip()), if open >= max { flags::OVERFLOW } else { 0 })
                }
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

    /// Accept one connection and answer it 503 on the spot (the overflow reserve is full too).
    /// False when there is nothing to accept or no descriptor to accept it with.
    fn refuse_at_once(&mut self) -> bool {
        let Some(listener) = self.listener.as_ref() else { return false };
        match listener.accept() {
            Ok((mut stream, _)) => {
                // Whatever request already arrived is read first, so closing does not reset
                // the answer away.
                let _ = stream.read(&mut self.rbuf);
                let mut resp = Vec::new();
                http::write_response(
                    &mut resp,
                    503,
                    &[("Retry-After", "1")],
                    "text/plain",
                    b"server full: retry later\n",
                    false,
                );
                if self.shared.tls.is_none() {
                    let _ = std::io::Write::write(&mut stream, &resp);
                }
                let _ = stream.shutdown(Shutdown::Write);
                self.m().overflow_refusals_total.inc();
                true
            }
            Err(_) => false,
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

    fn add_conn(&mut self, mut stream: mio::net::TcpStream, ip: Option<std::net::IpAddr>, mut restrict: u16) {
        let _ = stream.set_nodelay(true);
        let now = self.now32();
        let per_ip = self.shared.cfg.max_connections_per_ip;
        let counted_ip = match ip.filter(|_| per_ip > 0 && restrict == 0) {
            Some(ip) => {
                let mut m = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
                let n = m.entry(ip).or_default();
                if *n as usize >= per_ip {
                    restrict = flags::PER_IP;
                    None
                } else {
                    *n += 1;
                    Some(ip)
                }
            }
            None => None,
        };
        let gen = self.next_gen();
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= u32::MAX as usize {
            return; // cannot be encoded in a token; the stream is closed on drop
        }
        let token = Token(((gen as usize) << 32) | key);
        if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
            log::warn!("loop {}: registering a connection failed: {e}", self.id);
            self.m().accept_errors_total.inc();
            return;
        }
        let mut conn = Conn::new(stream, gen, Session::new_handshake(now));
        conn.flags |= restrict;
        if let (Some(tls), false) = (&self.shared.tls, restrict & flags::ADMIN != 0) {
            match crate::net::tls::ServerTls::new(tls.config()) {
                Ok(t) => conn = conn.with_tls(t),
                Err(e) => {
                    log::warn!("loop {}: TLS: {e}", self.id);
                    self.m().tls_handshake_failures_total.inc();
                    return;
                }
            }
        }
        entry.insert(conn);
        if let Some(ip) = counted_ip {
            self.ip_of.insert(key, ip);
        }
        self.shared.open.fetch_add(1, Ordering::Relaxed);
        let m = self.m();
        m.connections_accepted_total.inc();
        m.connections_open.inc();
        // A connection that may only be refused or scraped gets a second, not ten.
        let timeout = if restrict == 0 {
            self.scfg.handshake_timeout
        } else {
            self.scfg.handshake_timeout.min(self.ticks(Duration::from_secs(1)) as u32).max(1)
        };
        self.arm(key, timeout);
    }

    /// A generation for a new slab entry.
    fn next_gen(&mut self) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1);
        if self.next_gen == u32::MAX {
            self.next_gen = 0; // u32::MAX would collide with the listener and waker tokens
        }
        self.next_gen
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
        if self.rbuf.is_empty() {
            // Inside another connection's read (an HTTP/2 stream woken by the bytes its
            // connection just read, which the buffer still holds): later in this iteration.
            return self.ready.push((key, gen));
        }
        for _ in 0..READS_PER_EVENT {
            let c = &mut self.conns[key];
            if c.route == Route::Poll && to_the_end {
                // The client of a waiting long poll went away.
                return self.drop_conn(key);
            }
            if c.has(flags::PEER_EOF) || c.has(flags::AWAITING) || (c.route == Route::H2 && c.has(flags::READ_PAUSED)) {
                return;
            }
            if c.has(flags::DISCARD) {
                return match c.read(&mut self.rbuf) {
                    Ok(0) => self.drop_conn(key),
                    Ok(_) => self.ready.push((key, gen)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => self.drop_conn(key),
                };
            }
            // Only while we may still answer: a closing connection is read for its close frame.
            if c.queued() >= PAUSE_READ_AT && matches!(c.sess.phase(), Phase::Open | Phase::Handshake) {
                c.flags |= flags::READ_PAUSED;
                return;
            }
            if c.has(flags::HELD) {
                // Input kept back while our answers drained: it goes first.
                c.flags &= !flags::HELD;
                let mut acct = c.sess.buffered();
                let mut held = c.sess.take_stash();
                self.sync_input(key, &mut acct);
                self.on_input(key, &mut held);
                if !self.live(key, gen) {
                    return;
                }
                continue;
            }
            let c = &mut self.conns[key];
            // Over the input budget, a connection holding an incomplete message waits: TCP
            // pushes back on it, nothing is lost, and it is read again once memory frees.
            if c.sess.buffered() > 0
                && c.sess.phase() == Phase::Open
                && self.shared.inbound.load(Ordering::Relaxed) > self.shared.cfg.max_buffered_input
                && !self.input_waiting.iter().take(INPUT_ADMITTED).any(|&w| w == (key, gen))
            {
                let c = &mut self.conns[key];
                if !c.has(flags::INPUT_PAUSED) {
                    c.flags |= flags::INPUT_PAUSED;
                    if !self.input_waiting.contains(&(key, gen)) {
                        self.input_waiting.push_back((key, gen));
                    }
                    self.shared.metrics.mine(self.id).input_pauses_total.inc();
                }
                return;
            }
            match c.read(&mut self.rbuf) {
                Ok(0) => return self.on_eof(key),
                Ok(n) => {
                    if self.conns[key].tcp().is_some() {
                        self.m().bytes_received_total.add(n as u64);
                    }
                    let member = self.conns[key].peer.is_some();
                    if self.conns[key].tls().is_some() {
                        match self.on_tls_input(key, n) {
                            TlsRead::Closed => return,
                            TlsRead::PeerClosed => return self.on_eof(key),
                            TlsRead::Ok => {}
                        }
                    } else {
                        let mut buf = std::mem::take(&mut self.rbuf);
                        self.on_input(key, &mut buf[..n]);
                        self.rbuf = buf;
                    }
                    if member {
                        // What this read published is fanned out now, not at the end of the
                        // iteration: one read's worth of messages in flight, not sixteen.
                        self.serve_mailbox();
                        // Slow consumers found by this fan-out go now, before more is corked for them.
                        self.close_slow_and_broken();
                        if self.outbound_total() > self.shared.cfg.max_outbound_memory as u64 {
                            // Over the budget already: write what the sockets take, then close
                            // the slowest, before reading more.
                            self.relay.flush_dirty(&mut self.conns, self.shared.metrics.mine(self.id));
                            self.close_slow_and_broken();
                            self.enforce_outbound_budget();
                        }
                    }
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

    /// Decrypt the `n` bytes just read into `rbuf` and handle what they carried.
    fn on_tls_input(&mut self, key: usize, n: usize) -> TlsRead {
        let c = &mut self.conns[key];
        let gen = c.gen;
        let Some(tls) = c.tls_mut() else { return TlsRead::Ok };
        let (mut plain, mut out) = (std::mem::take(&mut self.pbuf), std::mem::take(&mut self.tbuf));
        plain.clear();
        out.clear();
        let was_open = tls.is_open();
        let got = tls.receive(&mut self.rbuf[..n], &mut plain, &mut out);
        if !out.is_empty() {
            let sent = c.send_raw(&out);
            self.account(key, sent);
        }
        let read = match got {
            Err(e) => {
                log::debug!("loop {}: TLS: {e}; dropping the connection ({} bytes of alert)", self.id, out.len());
                let m = self.m();
                if was_open {
                    m.tls_errors_total.inc();
                } else {
                    m.tls_handshake_failures_total.inc();
                }
                if let (crate::net::tls::TlsError::NotTls { http: true }, true) = (&e, self.live(key, gen)) {
                    // Say so in plain text: someone typed http:// for an https:// address.
                    let mut resp = Vec::new();
                    http::write_response(
                        &mut resp,
                        400,
                        &[],
                        "text/plain",
                        b"this port speaks TLS: use https:// or wss://\n",
                        false,
                    );
                    let _ = self.conns[key].send_raw(&resp);
                }
                if self.live(key, gen) {
                    self.linger_discarding(key);
                }
                TlsRead::Closed
            }
            Ok(got) => {
                if got.opened {
                    self.m().tls_handshakes_total.inc();
                    let h2 = self.conns[key].tls().and_then(|t| t.alpn()) == Some(b"h2");
                    if h2 && self.h2_enabled() {
                        self.start_h2(key, &[]);
                    }
                }
                if !plain.is_empty() && self.live(key, gen) {
                    self.on_input(key, &mut plain);
                }
                if !self.live(key, gen) {
                    TlsRead::Closed
                } else if got.peer_closed {
                    TlsRead::PeerClosed
                } else {
                    TlsRead::Ok
                }
            }
        };
        if plain.capacity() <= READ_BUF * 2 {
            self.pbuf = plain;
        }
        if out.capacity() <= READ_BUF {
            self.tbuf = out;
        }
        read
    }

    /// Shut our side and read (and drop) what the peer still sends, until its EOF or the close
    /// timeout: its last input would otherwise make our close a reset that loses our last bytes.
    fn linger_discarding(&mut self, key: usize) {
        let c = &mut self.conns[key];
        c.flags |= flags::DISCARD;
        if !c.has_queue() {
            c.flags |= flags::WR_SHUT;
            c.shutdown_write();
        }
        self.arm(key, self.scfg.close_timeout);
    }

    fn on_writable(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if !c.has_queue() {
            return;
        }
        match c.flush() {
            Ok((n, freed)) => {
                let resume = c.has(flags::READ_PAUSED) && c.queued() < PAUSE_READ_AT / 2;
                if resume {
                    c.flags &= !flags::READ_PAUSED;
                }
                let m = self.m();
                m.bytes_sent_total.add(n as u64);
                m.outbound_queued_bytes.sub(freed as u64);
                self.settle(key);
                if self.conns.get(key).is_some_and(|c| c.route == Route::H2) {
                    // Room for the frames h2 holds back.
                    self.drive_h2(key);
                }
                if resume && self.conns.contains(key) {
                    // The edge that made it readable was consumed while paused: read now (held
                    // input first).
                    self.on_readable(key, false);
                }
            }
            Err(_) => self.drop_conn(key),
        }
    }

    fn on_eof(&mut self, key: usize) {
        let c = &mut self.conns[key];
        c.flags |= flags::PEER_EOF;
        if c.route == Route::H2 {
            // The TCP connection is gone: so are its streams (presence grace applies).
            return self.drop_conn(key);
        }
        match c.sess.phase() {
            // Answer what is awaited, then close (settle sees PEER_EOF).
            Phase::Handshake if c.has(flags::AWAITING) => {}
            // A keep-alive client that is done.
            Phase::Handshake if c.route == Route::KeepAlive && c.sess.is_idle() => self.drop_conn(key),
            Phase::Handshake => {
                if c.tls().is_some_and(|t| !t.is_open()) {
                    self.m().tls_handshake_failures_total.inc();
                } else {
                    self.m().handshake_failures_total.inc();
                }
                self.drop_conn(key);
            }
            // Gone without a closing handshake (1006 abnormal closure).
            Phase::Open | Phase::Closing => self.drop_conn(key),
            // Finished: close once our last bytes are out.
            Phase::Linger => self.settle(key),
        }
    }

    /// Bring the input gauges up to date with connection `key`'s buffered input; `acct` is what
    /// was counted for it so far. Called after every change, before anything can drop it.
    fn sync_input(&self, key: usize, acct: &mut usize) {
        let now = self.conns.get(key).map_or(0, |c| c.sess.buffered());
        if now != *acct {
            let d = now as i64 - *acct as i64;
            self.m().inbound_buffered_bytes.add(d as u64);
            if d > 0 {
                self.shared.inbound.fetch_add(d as usize, Ordering::Relaxed);
            } else {
                self.shared.inbound.fetch_sub(-d as usize, Ordering::Relaxed);
            }
            *acct = now;
        }
    }

    fn on_input(&mut self, key: usize, data: &mut [u8]) {
        match self.conns[key].route {
            Route::Sse => return, // an event stream's client has nothing to say
            Route::H2 => return self.h2_input(key, data),
            _ => {}
        }
        if self.conns[key].sess.phase() == Phase::Handshake {
            self.on_http_bytes(key, data);
        } else {
            self.feed_frames(key, data);
        }
        self.flush_wbuf(key);
    }

    // ---- HTTP: requests, the upgrade, keep-alive ----

    /// Parse and answer requests from the stash plus `data`, in order (pipelining), until one
    /// is incomplete, upgrades the connection, waits for the broker, or ends the connection.
    fn on_http_bytes(&mut self, key: usize, data: &mut [u8]) {
        let mut acct = self.conns[key].sess.buffered();
        let mut held = self.conns[key].sess.take_stash();
        self.sync_input(key, &mut acct);
        let from_stash = !held.is_empty();
        if from_stash {
            held.extend_from_slice(data);
        }
        let c = &self.conns[key];
        if c.route == Route::Http && c.tcp().is_some() && !c.has(flags::ADMIN) && self.h2_enabled() {
            // HTTP/2 with prior knowledge (h2c) starts with its preface, never a request.
            let buf: &[u8] = if from_stash { &held } else { data };
            match crate::server::h2::preface(buf) {
                Some(true) => return self.start_h2(key, buf),
                Some(false) => {
                    *self.conns[key].sess.stash() = buf.to_vec();
                    return self.sync_input(key, &mut acct);
                }
                None => {}
            }
        }
        let mut off = 0;
        loop {
            let buf: &mut [u8] = if from_stash { &mut held[off..] } else { &mut data[off..] };
            if buf.is_empty() {
                return;
            }
            let (decision, len) = {
                let parsed = http::parse(buf, self.limits);
                match parsed {
                    Parsed::Partial { .. } => {
                        let rest = buf.to_vec();
                        *self.conns[key].sess.stash() = rest;
                        self.sync_input(key, &mut acct);
                        return;
                    }
                    Parsed::Error(e) => {
                        let why = format!("{}\n", e.reason);
                        let resp = Response {
                            status: e.status,
                            headers: Vec::new(),
                            body: Answer::Text(why.into()),
                            close: true,
                            ws: true,
                        };
                        (Decision::Respond(resp), buf.len())
                    }
                    Parsed::Complete { req, body, len } => {
                        let c = &self.conns[key];
                        let restrict = if c.has(flags::OVERFLOW) {
                            Restrict::Full
                        } else if c.has(flags::PER_IP) {
                            Restrict::PerIp
                        } else if c.has(flags::ADMIN) {
                            Restrict::Admin
                        } else {
                            Restrict::None
                        };
                        let mut ctx = routes::Ctx {
                            auth: &self.shared.auth,
                            api_key: self.shared.cfg.api_key.as_deref(),
                            restrict,
                            transports: self.shared.cfg.transports,
                            max_rooms: self.shared.cfg.max_rooms_per_conn,
                            demo: self.shared.cfg.demo,
                            deflate: self.shared.cfg.deflate,
                        };
                        (routes::route(&req, &body, &mut ctx), len)
                    }
                }
            };
            off += len;
            match decision.refused() {
                Some(Refused::Auth) => self.m().auth_failures_total.inc(),
                Some(Refused::Origin) => self.m().origin_rejections_total.inc(),
                Some(Refused::Full) => self.m().overflow_refusals_total.inc(),
                Some(Refused::PerIp) => self.m().per_ip_refusals_total.inc(),
                _ => {}
            }
            let failed = decision.is_handshake_failure();
            if matches!(decision, Decision::Api { .. } | Decision::Poll { .. }) {
                // Answered later (or at once, inside): what came behind it waits in the stash,
                // where the answer picks it up.
                let rest: &[u8] = if from_stash { &held[off..] } else { &data[off..] };
                if !rest.is_empty() {
                    *self.conns[key].sess.stash() = rest.to_vec();
                    self.sync_input(key, &mut acct);
                }
            }
            match decision {
                Decision::Upgrade { accept, kind, identity, protocol, deflate } => {
                    self.conns[key].sess.set_deflate(deflate);
                    self.upgrade(key, &accept, kind, identity, protocol);
                    // Frames the client sent right behind its request.
                    let rest: &mut [u8] = if from_stash { &mut held[off..] } else { &mut data[off..] };
                    if !rest.is_empty() {
                        self.feed_frames(key, rest);
                    }
                    return;
                }
                Decision::Respond(r) => {
                    let close = r.close;
                    self.respond(key, r, failed);
                    if close {
                        return;
                    }
                    let now = self.now32();
                    let c = &mut self.conns[key];
                    c.sess.restart_http(now);
                    c.route = Route::KeepAlive;
                    let rest: &[u8] = if from_stash { &held[off..] } else { &data[off..] };
                    if !rest.is_empty() && self.wbuf.len() + c.queued() >= PAUSE_READ_AT {
                        // Pipelined requests whose answers the client does not read: keep the
                        // rest for when they drain (one read of tiny requests can ask for many
                        // times its size in answers).
                        *c.sess.stash() = rest.to_vec();
                        c.flags |= flags::READ_PAUSED | flags::HELD;
                        self.sync_input(key, &mut acct);
                        return;
                    }
                }
                // (The requests behind it were kept above: its answer goes on with them.)
                Decision::Api { call, close } => return self.api(key, call, close),
                Decision::Poll { room, since, identity, close } => {
                    return self.start_poll(key, room, since, identity, close)
                }
                // Whatever follows an event stream's request is never read.
                Decision::Sse { rooms, presence, identity } => return self.start_sse(key, rooms, presence, identity),
            }
        }
    }

    fn upgrade(&mut self, key: usize, accept: &str, kind: WsKind, identity: Identity, protocol: Option<&str>) {
        let now_ms = self.now_ms();
        let c = &mut self.conns[key];
        c.route = match kind {
            WsKind::Echo => Route::Echo,
            WsKind::V1 => Route::V1,
            WsKind::Raw { .. } => Route::Raw,
        };
        if c.route != Route::Echo {
            let bucket = Bucket::full(self.rooms.publish_rate(), now_ms);
            c.peer = Some(Box::new(Peer::new(identity, bucket)));
        }
        self.m().websockets_open.inc();
        if let WsKind::Raw { room } = kind {
            // A seed-mode member exists to be in its room: the 101 waits for the broker's
            // answer to the join (`open_raw`), like an API request waits for its reply.
            let c = &mut self.conns[key];
            c.flags |= flags::AWAITING;
            if let Ok(a) = <[u8; 28]>::try_from(accept.as_bytes()) {
                self.rooms.await_upgrade(key, a);
            }
            if let Err((_, why)) = self.rooms.join(&mut self.conns, key, &room, None, false, None) {
                log::debug!("loop {}: seed-mode join failed: {why}", self.id);
                self.refuse_raw(key, &why);
            }
            return;
        }
        self.open_ws(key, accept, protocol);
    }

    /// Send the 101 and start the WebSocket session.
    fn open_ws(&mut self, key: usize, accept: &str, protocol: Option<&str>) {
        let ext = self.conns[key].sess.deflate().then_some(crate::proto::ws::deflate::RESPONSE);
        if ext.is_some() {
            self.m().deflate_handshakes_total.inc();
        }
        handshake::write_switching_protocols_with(&mut self.wbuf, accept, protocol, ext);
        let now = self.now32();
        let arm = self.conns[key].sess.open(now, &self.scfg);
        self.m().handshakes_total.inc();
        match arm {
            Arm::Keep => {}
            Arm::After(d) => self.arm(key, d),
            Arm::Cancel => self.disarm(key),
        }
    }

    /// The broker has the seed-mode member `to` in its room: send its 101 now (before anything
    /// of the room), then read what it sent meanwhile.
    fn open_raw(&mut self, to: ConnRef) {
        let key = to.key as usize;
        if !self.live(key, to.gen) || !self.conns[key].has(flags::AWAITING) || self.conns[key].route != Route::Raw {
            return;
        }
        let c = &mut self.conns[key];
        c.flags &= !flags::AWAITING;
        let Some(accept) = self.rooms.take_upgrade(key) else {
            return self.drop_conn(key);
        };
        if c.has(flags::PEER_EOF) {
            return self.drop_conn(key);
        }
        self.open_ws(key, std::str::from_utf8(&accept[..]).unwrap_or_default(), None);
        self.flush_wbuf(key);
        if let Some(c) = self.conns.get(key) {
            self.ready.push((key, c.gen));
        }
    }

    /// A seed-mode member's join failed before its 101: answer 503 instead.
    fn refuse_raw(&mut self, key: usize, why: &str) {
        let c = &mut self.conns[key];
        c.flags &= !flags::AWAITING;
        c.route = Route::Http;
        // Its only seat is gone already (refused, or the failure removed it).
        c.peer = None;
        self.m().websockets_open.sub(1);
        let r = Response {
            status: 503,
            headers: vec![("Retry-After", "1".into())],
            body: Answer::Text(format!("rooms unavailable: {why}\n").into()),
            close: true,
            ws: true,
        };
        self.respond(key, r, true);
        self.flush_wbuf(key);
    }

    /// Write a plain HTTP answer; `failed`: a WebSocket handshake refused.
    fn respond(&mut self, key: usize, r: Response, failed: bool) {
        let mut status = r.status;
        let (ctype, text): (&str, std::borrow::Cow<'_, str>) = match r.body {
            Answer::Text(t) => ("text/plain; charset=utf-8", t),
            Answer::Json(s) => ("application/json", s.into()),
            Answer::Static(ctype, body) => (ctype, body.into()),
            Answer::Metrics => ("text/plain; version=0.0.4; charset=utf-8", super::metrics_text(&self.shared).into()),
            Answer::Health => match self.shared.broker.status() {
                Ok(()) => ("text/plain; charset=utf-8", "ok\n".into()),
                Err(e) => {
                    status = 503;
                    ("text/plain; charset=utf-8", format!("unavailable: {e}\n").into())
                }
            },
        };
        let headers: Vec<(&str, &str)> = r.headers.iter().map(|(k, v)| (*k, &**v)).collect();
        http::write_response(&mut self.wbuf, status, &headers, ctype, text.as_bytes(), !r.close);
        if failed {
            self.m().handshake_failures_total.inc();
        } else {
            self.m().http_requests_total.inc();
        }
        if r.close {
            let now = self.now32();
            self.conns[key].sess.linger(now);
            self.arm(key, self.scfg.close_timeout);
        }
    }

    /// Start a server API call; its answer comes as a broker reply.
    fn api(&mut self, key: usize, call: ApiCall, close: bool) {
        let to = self.conn_ref(key);
        let c = &mut self.conns[key];
        c.flags |= flags::AWAITING;
        if close {
            c.flags &= !flags::KEEP_ALIVE;
        } else {
            c.flags |= flags::KEEP_ALIVE;
        }
        let broker = self.shared.broker.clone();
        let limit = |l: Option<usize>| l.map_or(self.shared.cfg.history_size, |l| l.min(self.shared.cfg.history_size));
        match call {
            ApiCall::Publish { room, data, from } => broker.publish(Publish {
                lp: self.id,
                room: &room,
                from: from.as_deref().unwrap_or("api").into(),
                payload: Payload::Json(data),
                origin: None,
                ack: Some((to, None)),
            }),
            ApiCall::Presence { room } => broker.presence(Query { lp: self.id, to, id: None, room: &room }),
            ApiCall::MemberPresence { room } => {
                c.flags |= flags::CORS;
                broker.presence(Query { lp: self.id, to, id: None, room: &room })
            }
            ApiCall::History { room, since, limit: l } => {
                broker.history(Query { lp: self.id, to, id: None, room: &room }, since, limit(l))
            }
            ApiCall::Send { room, data, identity } => {
                let (rate, now_ms) = (self.rooms.publish_rate(), self.now_ms());
                let c = &mut self.conns[key];
                c.flags |= flags::CORS;
                // A keep-alive connection that posts again and again gets a bucket like a member.
                let peer =
                    c.peer.get_or_insert_with(|| Box::new(Peer::new(identity.clone(), Bucket::full(rate, now_ms))));
                if peer.bucket.take(rate, now_ms) != Take::Ok {
                    self.m().rate_limited_total.inc();
                    let why = format!("over --max-publish-rate ({rate} messages/s)");
                    return self.answer_awaited(key, 429, &streams::error_json(v1::ErrorCode::RateLimited, &why));
                }
                self.m().posts_total.inc();
                broker.publish(Publish {
                    lp: self.id,
                    room: &room,
                    from: self.rooms.sender(&identity, to),
                    payload: Payload::Json(data),
                    origin: None,
                    ack: Some((to, None)),
                })
            }
        }
    }

    /// The broker answered a connection: a v1 reply frame, or an API response.
    fn on_reply(&mut self, to: ConnRef, id: Option<Box<str>>, reply: Reply) {
        let key = to.key as usize;
        if !self.live(key, to.gen) {
            return;
        }
        match self.conns[key].route {
            Route::V1 if self.conns[key].sess.phase() == Phase::Open => {
                let id = id.as_deref();
                let cap = self.shared.cfg.max_message_size;
                let frame = v1_frame(|o| match &reply {
                    Reply::Published { room, seq, .. } => v1::write_published(o, id, room, *seq),
                    Reply::History { room, epoch, messages } => {
                        v1::write_history(o, id, room, epoch, within(messages, cap).map(|m| m.v1_json()))
                    }
                    Reply::Presence { room, users } => {
                        v1::write_presence(o, id, room, users.iter().map(|(u, n)| (&**u, *n)))
                    }
                    Reply::Error { code, message } => v1::write_error(o, id, *code, message),
                });
                let m = self.shared.metrics.mine(self.id);
                if matches!(reply, Reply::Error { .. }) {
                    m.v1_errors_total.inc();
                }
                self.relay.send(key, &mut self.conns[key], &frame, m);
            }
            Route::Raw if self.conns[key].sess.phase() == Phase::Open => {
                if let Reply::Error { code, message } = &reply {
                    if *code == v1::ErrorCode::RateLimited {
                        self.m().rate_limited_total.inc();
                    }
                    let frame = v1_frame(|o| {
                        o.extend_from_slice(b"{\"error\":");
                        v1::write_str(o, message);
                        o.push(b'}');
                    });
                    let m = self.shared.metrics.mine(self.id);
                    self.relay.send(key, &mut self.conns[key], &frame, m);
                }
            }
            Route::Http | Route::KeepAlive if self.conns[key].has(flags::AWAITING) => self.api_answer(key, reply),
            _ => {}
        }
    }

    fn api_answer(&mut self, key: usize, reply: Reply) {
        let mut body = Vec::with_capacity(128);
        let status = match &reply {
            Reply::Published { room, seq, epoch } => {
                body.extend_from_slice(b"{\"room\":");
                v1::write_str(&mut body, room);
                body.extend_from_slice(format!(",\"seq\":{seq},\"epoch\":").as_bytes());
                v1::write_str(&mut body, epoch);
                body.push(b'}');
                200
            }
            Reply::History { room, epoch, messages } => {
                body.extend_from_slice(b"{\"room\":");
                v1::write_str(&mut body, room);
                body.extend_from_slice(b",\"epoch\":");
                v1::write_str(&mut body, epoch);
                body.extend_from_slice(b",\"messages\":");
                let cap = self.shared.cfg.max_message_size;
                v1::write_json_list(&mut body, within(messages, cap).map(|m| m.v1_json()));
                body.push(b'}');
                200
            }
            Reply::Presence { room, users } => {
                body.extend_from_slice(b"{\"room\":");
                v1::write_str(&mut body, room);
                body.extend_from_slice(b",\"users\":");
                v1::write_users(&mut body, users.iter().map(|(u, n)| (&**u, *n)));
                body.push(b'}');
                200
            }
            Reply::Error { code, message } => {
                body = streams::error_json(*code, message);
                streams::error_status(*code)
            }
        };
        if !self.conns[key].has(flags::CORS) {
            self.m().api_requests_total.inc(); // (a POST from a client counts as posts_total)
        }
        self.answer_awaited(key, status, &body);
    }

    /// Write the answer to the request this connection awaited, then go on with the requests
    /// behind it (keep-alive) or close.
    fn answer_awaited(&mut self, key: usize, status: u16, body: &[u8]) {
        let c = &mut self.conns[key];
        let keep_alive = c.has(flags::KEEP_ALIVE) && !c.has(flags::PEER_EOF);
        let cors = c.has(flags::CORS);
        c.flags &= !(flags::AWAITING | flags::KEEP_ALIVE | flags::CORS);
        let mut headers = Vec::with_capacity(2);
        if cors {
            headers.push(routes::CORS);
        }
        if matches!(status, 429 | 503) {
            headers.push(("Retry-After", "1"));
        }
        self.cbuf.clear();
        http::write_response(&mut self.cbuf, status, &headers, "application/json", body, keep_alive);
        let sent = self.conns[key].send_slice(&self.cbuf);
        self.account(key, sent);
        if !self.conns.contains(key) {
            return;
        }
        let now = self.now32();
        if !keep_alive {
            self.conns[key].sess.linger(now);
            self.arm(key, self.scfg.close_timeout);
            self.settle(key);
            return;
        }
        self.conns[key].sess.restart_http(now);
        self.conns[key].route = Route::KeepAlive;
        // A long poll replaced the idle timer: the next request gets the usual time to come.
        self.arm(key, self.scfg.handshake_timeout);
        // Requests that arrived behind this one, then whatever the socket holds.
        self.on_input(key, &mut []);
        if self.conns.contains(key) {
            let gen = self.conns[key].gen;
            self.ready.push((key, gen));
        }
    }

    // ---- WebSocket traffic ----

    fn feed_frames(&mut self, key: usize, data: &mut [u8]) {
        let mut rest = data;
        let now = self.now32();
        let now_ms = self.now_ms();
        let mut acct = self.conns[key].sess.buffered();
        loop {
            let Some(c) = self.conns.get_mut(key) else {
                return;
            };
            let ev = c.sess.feed(&mut rest, now, &mut self.wbuf, &self.scfg);
            let began = acct == 0 && c.sess.buffered() > 0 && c.sess.phase() == Phase::Open;
            self.sync_input(key, &mut acct);
            if began && self.scfg.message_timeout > 0 {
                // A message has begun: the timer must come by its deadline.
                if let Some(d) = self.conns[key].sess.next_timer(now, &self.scfg) {
                    self.arm(key, d);
                }
            }
            match ev {
                None => return,
                Some(WsEvent::Message { text, data }) => {
                    let m = self.shared.metrics.mine(self.id);
                    m.messages_received_total.inc();
                    let mut cx = messages::Ctx {
                        lp: self.id,
                        conns: &mut self.conns,
                        rooms: &mut self.rooms,
                        wbuf: &mut self.wbuf,
                        m,
                        now_ms,
                        history_size: self.shared.cfg.history_size,
                        deflate_min: self.shared.cfg.deflate_min_size,
                    };
                    if let After::Close(code, reason) = messages::on_message(&mut cx, key, text, &data) {
                        self.flush_wbuf(key);
                        if self.conns.contains(key) {
                            self.close_with(key, code, reason);
                        }
                        return;
                    }
                    let c = &mut self.conns[key];
                    if !rest.is_empty() && self.wbuf.len() + c.queued() >= PAUSE_READ_AT {
                        // Our answers pile up faster than the peer reads them (one read of tiny
                        // commands can ask for many times its size): keep the rest of its input
                        // and read no more until the answers drain.
                        c.sess.hold(rest);
                        c.flags |= flags::READ_PAUSED | flags::HELD;
                        self.sync_input(key, &mut acct);
                        return;
                    }
                }
                Some(WsEvent::Finish(ending)) => {
                    let clean = match ending {
                        Ending::Failed(e) if e.code == codes::POLICY => {
                            self.m().message_timeouts_total.inc();
                            false
                        }
                        Ending::Failed(e) => {
                            self.m().protocol_errors_total.inc();
                            log::debug!("loop {}: connection failed: {} ({})", self.id, e.reason, e.code);
                            false
                        }
                        Ending::PeerClosed(code) => {
                            self.conns[key].flags |= flags::CLOSE_WHEN_FLUSHED;
                            // A deliberate goodbye; a browser's close() without a code sends none.
                            matches!(code, None | Some(codes::NORMAL | codes::GOING_AWAY))
                        }
                        Ending::Acknowledged => {
                            self.conns[key].flags |= flags::CLOSE_WHEN_FLUSHED;
                            false
                        }
                    };
                    self.leave_ws(key, clean);
                    self.arm(key, self.scfg.close_timeout);
                }
            }
        }
    }

    /// Start the closing handshake on an open connection (shutdown 1001, slow consumer 1008).
    fn close_with(&mut self, key: usize, code: u16, reason: &str) {
        if self.conns[key].route == Route::Sse {
            return self.end_stream(key, None);
        }
        let now = self.now32();
        self.cbuf.clear();
        if !self.conns[key].sess.close(code, reason, now, &mut self.cbuf, Role::Server) {
            return;
        }
        let sent = self.conns[key].send_slice(&self.cbuf);
        self.account(key, sent);
        if self.conns.contains(key) {
            self.leave_ws(key, false);
            self.arm(key, self.scfg.close_timeout);
        }
    }

    /// The WebSocket (or event stream, or long poll) is over: leave its rooms and its gauge
    /// (once). `clean`: the client said goodbye (presence skips the grace period).
    fn leave_ws(&mut self, key: usize, clean: bool) {
        let c = &mut self.conns[key];
        let m = self.shared.metrics.mine(self.id);
        match c.route {
            Route::Sse => m.sse_streams_open.sub(1),
            Route::Poll => m.polls_waiting.sub(1),
            r if r.is_ws() => m.websockets_open.sub(1),
            _ => return,
        }
        c.route = Route::Http;
        let member = c.peer.is_some();
        if member {
            self.rooms.leave_all(&mut self.conns, key, clean);
            self.conns[key].peer = None;
            self.m().rooms.set(self.rooms.len() as u64);
        }
    }

    /// Close the consumers the relay found slow, and drop connections whose socket broke.
    fn close_slow_and_broken(&mut self) -> usize {
        let mut n = 0;
        for (key, gen) in self.relay.take_broken() {
            if self.live(key, gen) {
                self.drop_conn(key);
                n += 1;
            }
        }
        let slow = self.relay.take_slow();
        let inner = |c: &Conn| c.tcp().is_none();
        if slow.iter().any(|&(k, g)| self.live(k, g) && inner(&self.conns[k])) {
            // An HTTP/2 stream's pipe drains into its connection only when that is driven (a
            // socket drains by itself): drive first, then judge the stream on what remains.
            self.drive_dirty_h2();
        }
        for (key, gen) in slow {
            if !self.live(key, gen) || self.conns[key].sess.phase() != Phase::Open {
                continue;
            }
            if inner(&self.conns[key]) {
                self.on_writable(key);
                if !self.live(key, gen) || self.conns[key].queued() <= self.shared.cfg.max_backlog {
                    continue;
                }
            }
            self.close_slow(key);
            n += 1;
        }
        n
    }

    fn close_slow(&mut self, key: usize) {
        self.m().slow_consumer_closes_total.inc();
        log::debug!("loop {}: slow consumer {key}: {} bytes queued", self.id, self.conns[key].queued());
        let c = &mut self.conns[key];
        // A TLS queue holds records under running sequence numbers: dropping some would make
        // the rest (the close frame included) undecryptable. It stays (bounded by the backlog)
        // until the close timeout.
        if let Some(q) = c.plain_queue() {
            let dropped = q.drop_unstarted();
            self.shared.metrics.mine(self.id).outbound_queued_bytes.sub(dropped as u64);
        }
        self.close_with(key, codes::POLICY, "slow consumer: outbound queue over --max-backlog");
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
        if let Some(c) = self.conns.get_mut(key) {
            if c.has(flags::READ_PAUSED) && c.queued() < PAUSE_READ_AT / 2 {
                // The socket took the answers at once: no writable edge will come to resume
                // it, so the next iteration does.
                c.flags &= !flags::READ_PAUSED;
                self.ready.push((key, c.gen));
            }
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
    /// close, so a peer that is still sending reads our last bytes before any RST). An HTTP
    /// connection whose client has closed its side is closed once its answers are out.
    fn settle(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if c.has_queue() {
            return;
        }
        match c.sess.phase() {
            Phase::Linger => {}
            Phase::Handshake if c.has(flags::PEER_EOF) && !c.has(flags::AWAITING) => return self.drop_conn(key),
            _ => return,
        }
        if c.tls().is_some_and(|t| t.is_open() && !t.sent_close()) {
            // The TLS end of the stream first (a peer may tell a truncation from an end).
            let sent = c.close_notify();
            self.account(key, sent);
            if self.conns.contains(key) {
                self.settle(key);
            }
            return;
        }
        let c = &mut self.conns[key];
        if c.has(flags::CLOSE_WHEN_FLUSHED) {
            return self.drop_conn(key);
        }
        if !c.has(flags::WR_SHUT) {
            c.flags |= flags::WR_SHUT;
            c.shutdown_write();
        }
        if c.has(flags::PEER_EOF) {
            self.drop_conn(key);
        }
    }

    fn drop_conn(&mut self, key: usize) {
        if !self.conns.contains(key) {
            return;
        }
        self.leave_ws(key, false);
        let tcp = self.unlink(key);
        let c = self.conns.remove(key);
        self.rooms.forget(key);
        if let Some(ip) = self.ip_of.remove(&key) {
            let mut m = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = m.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    m.remove(&ip);
                }
            }
        }
        let buffered = c.sess.buffered();
        if buffered > 0 {
            self.shared.inbound.fetch_sub(buffered, Ordering::Relaxed);
        }
        let m = self.m();
        if tcp {
            m.connections_open.sub(1);
        }
        m.outbound_queued_bytes.sub(c.queued() as u64);
        m.inbound_buffered_bytes.sub(buffered as u64);
        // Dropping the stream closes the socket, which also removes it from epoll.
    }

    // ---- timers ----

    fn arm(&mut self, key: usize, delay: u32) {
        self.next_timer = self.next_timer.wrapping_add(1);
        let id = self.next_timer;
        self.conns[key].timer = id;
        self.wheel.schedule(self.now, delay, Entry { key: key as u32, id });
    }

    /// Make any scheduled entry of `key` stale.
    fn disarm(&mut self, key: usize) {
        self.next_timer = self.next_timer.wrapping_add(1);
        self.conns[key].timer = self.next_timer;
    }

    /// A pong deadline passed, but timers run before the iteration's reads, and a loop that
    /// came late (a long iteration, a loaded host) may find the answer waiting in the socket:
    /// read it before giving the peer up. True when the connection lives on (its timer armed
    /// again) or ended while read; false when it is still silent. (A 1M run on a saturated host
    /// lost most of its members so: their pongs had arrived, unread.)
    fn answered_meanwhile(&mut self, key: usize, now: u32) -> bool {
        let gen = self.conns[key].gen;
        self.on_readable(key, false);
        if !self.live(key, gen) {
            return true;
        }
        match self.conns[key].sess.on_timer(now, &mut self.wbuf, &self.scfg) {
            TimerAction::Rearm(d) => {
                self.rearm(key, d);
                true
            }
            TimerAction::Idle => true,
            TimerAction::Expired(_) => false,
        }
    }

    /// After a timer's check: send the ping it wrote, if any, and arm the next check.
    fn rearm(&mut self, key: usize, d: u32) {
        if !self.wbuf.is_empty() {
            self.m().pings_sent_total.inc();
            self.flush_wbuf(key);
        }
        if self.conns.contains(key) {
            self.arm(key, d);
        }
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
            if c.has(flags::DISCARD) {
                self.drop_conn(key);
                continue;
            }
            if c.route == Route::Poll {
                self.poll_timed_out(key);
                continue;
            }
            if c.route == Route::H2 {
                self.h2_timer(key);
                continue;
            }
            if c.route == Route::Sse && c.sess.phase() == Phase::Open {
                self.sse_ping(key);
                continue;
            }
            match c.sess.on_timer(now, &mut self.wbuf, &self.scfg) {
                TimerAction::Rearm(d) => self.rearm(key, d),
                TimerAction::Idle => {}
                TimerAction::Expired(Expiry::Heartbeat) if c.has(flags::READ_PAUSED) || c.queued() >= PAUSE_READ_AT => {
                    // It lags behind what we send (and its pongs may sit unread behind our
                    // read pause): a slow consumer, told so with 1008, not a dead peer.
                    self.close_slow(key);
                }
                TimerAction::Expired(Expiry::Heartbeat) => {
                    if !self.answered_meanwhile(key, now) {
                        self.m().heartbeat_timeouts_total.inc();
                        log::debug!("loop {}: dropping connection: heartbeat timeout", self.id);
                        self.drop_conn(key);
                    }
                }
                TimerAction::Expired(Expiry::Message) => {
                    self.m().message_timeouts_total.inc();
                    self.close_with(key, codes::POLICY, "message not completed within --message-timeout");
                }
                TimerAction::Expired(why) => {
                    match why {
                        Expiry::Heartbeat | Expiry::Message => {}
                        Expiry::Handshake if c.tls().is_some_and(|t| !t.is_open()) => {
                            self.m().tls_handshake_failures_total.inc();
                        }
                        Expiry::Handshake => {
                            // An idle keep-alive connection is not a failed handshake.
                            if c.route != Route::KeepAlive || !c.sess.is_idle() {
                                self.m().handshake_failures_total.inc();
                            }
                        }
                        Expiry::Closing | Expiry::Linger => {}
                    }
                    log::debug!("loop {}: dropping connection: {why:?} timeout", self.id);
                    self.drop_conn(key);
                }
            }
        }
        if expired.capacity() > 4096 {
            *expired = Vec::new(); // after a storm's deadlines: not kept for the next one
        }
    }

    // ---- mailbox ----

    /// Handle everything in the mailbox; returns how many commands there were.
    fn serve_mailbox(&mut self) -> usize {
        let mut inbox = std::mem::take(&mut self.inbox);
        self.mailbox.drain(&mut inbox);
        let n = inbox.len();
        for cmd in inbox.drain(..) {
            match cmd {
                Command::Broker(ev) => self.on_broker(ev),
                Command::Shutdown { drain } => self.begin_drain(drain),
            }
        }
        self.inbox = inbox;
        n
    }

    fn on_broker(&mut self, ev: Event) {
        let m = self.shared.metrics.mine(self.id);
        match ev {
            Event::Deliver { room, msg } => {
                if msg.origin.is_some_and(|o| o.lp as usize != self.id) {
                    m.cross_loop_deliveries_total.inc();
                }
                self.rooms.deliver(&mut self.conns, &mut self.relay, m, room, &msg);
                self.answer_polls();
            }
            Event::Presence { room, ev } => self.rooms.presence(&mut self.conns, &mut self.relay, m, room, &ev),
            Event::Joined { to, room, result } => {
                self.open_raw(to);
                let m = self.shared.metrics.mine(self.id);
                self.rooms.on_joined(&mut self.conns, &mut self.relay, m, to, room, result);
                self.answer_polls();
            }
            Event::Reply { to, id, reply } => self.on_reply(to, id, reply),
            Event::JoinFailed { to, room, id, message } => {
                let Some(name) = self.rooms.on_join_failed(&mut self.conns, to, room) else { return };
                let key = to.key as usize;
                match self.conns[key].route {
                    Route::Raw if self.conns[key].has(flags::AWAITING) => return self.refuse_raw(key, &message),
                    Route::Poll => {
                        let body = streams::error_json(v1::ErrorCode::Unavailable, &message);
                        return self.answer_poll(key, 503, &body);
                    }
                    Route::Sse if self.conns[key].sess.phase() == Phase::Open => {
                        return self.end_stream(key, Some((&name, v1::ErrorCode::Unavailable, &message)));
                    }
                    _ => {}
                }
                if self.conns[key].sess.phase() != Phase::Open {
                    return;
                }
                if self.conns[key].route == Route::V1 {
                    let frame = v1_frame(|o| {
                        v1::write_room_error(o, id.as_deref(), &name, v1::ErrorCode::Unavailable, &message)
                    });
                    let m = self.shared.metrics.mine(self.id);
                    m.v1_errors_total.inc();
                    self.relay.send(key, &mut self.conns[key], &frame, m);
                } else {
                    // A seed-mode member exists to be in its room: it comes back later.
                    self.close_with(key, codes::TRY_AGAIN_LATER, "rooms unavailable, try again later");
                }
            }
            Event::Reset { room, message } => {
                let name = self.rooms.name_of(room);
                for key in self.rooms.on_reset(&mut self.conns, &mut self.relay, m, room, &message) {
                    match self.conns[key].route {
                        // Its clients come back with their position and learn it is gone.
                        Route::Sse => self.end_stream(key, Some((&name, v1::ErrorCode::Unavailable, &message))),
                        Route::Poll => self.poll_timed_out(key),
                        _ => {}
                    }
                }
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
                Phase::Handshake if self.conns[key].route == Route::H2 => self.h2_go_away(key),
                // A waiting poll is answered (empty), and its client polls elsewhere.
                Phase::Handshake if self.conns[key].route == Route::Poll => {
                    self.conns[key].flags &= !flags::KEEP_ALIVE;
                    self.poll_timed_out(key);
                }
                Phase::Handshake => self.drop_conn(key),
                Phase::Open => self.close_with(key, codes::GOING_AWAY, "server shutting down"),
                Phase::Closing | Phase::Linger => {}
            }
        }
    }
}

/// The first messages whose JSON fits in `cap` bytes (at least one): a history answer is never
/// much larger than the largest message, however large the history; clients page with `since`.
fn within(messages: &[Arc<RoomMessage>], cap: usize) -> impl Iterator<Item = &Arc<RoomMessage>> {
    let mut total = 0;
    messages
        .iter()
        .enumerate()
        .take_while(move |(i, m)| {
            total += m.v1_json().len();
            *i == 0 || total <= cap
        })
        .map(|(_, m)| m)
}

/// What a TLS read came to.
enum TlsRead {
    Ok,
    /// The peer sent close_notify (an EOF).
    PeerClosed,
    /// The connection is gone.
    Closed,
}
