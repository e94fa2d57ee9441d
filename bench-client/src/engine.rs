//! One load-generating event loop (one per thread of a worker process). It opens its share of
//! the connections at the configured pace, runs the WebSocket client side with c100k's sans-IO
//! session (which answers the server's pings), sends on schedule, and records what comes back.
//!
//! Open-loop sending (echo `--rate`, broadcast) follows a fixed schedule: message k is due at
//! `t0 + k / rate` and carries that intended time, so a stalled server or a stalled client shows
//! up in the latency instead of silently lowering the send rate (coordinated omission, as wrk2
//! corrects it). When the next send is less than a millisecond away the loop polls without
//! sleeping, since epoll's timeout has millisecond granularity.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Duration;

use mio::{Events, Interest, Poll, Token};
use slab::Slab;

use c100k::net::cell::Cell;
use c100k::net::mailbox::Mailbox;
use c100k::net::outq::{send_or_queue, OutQueue};
use c100k::proto::ws::frame::{self, codes, Data, OpCode, Role};
use c100k::proto::ws::handshake::{self, ParsedResponse};
use c100k::proto::ws::session::{Ending, Event, Session, SessionConfig};
use c100k::timer::{Entry, Wheel};

use crate::clock::now_ns;
use crate::http_member::{self as hm, Transport};
use crate::job::{Job, Load, Scenario};
use crate::net::{self, Failure};
use crate::payload::{self, Arrival, SeqTrack, Stamp};
use crate::stats::{record_ns, Outcome, H_CONNECT, H_DELIVERY, H_HANDSHAKE, H_RESUME, H_RTT, H_SEND_LAG};
use crate::tls::Stream;
use crate::v1;

mod hubs;

pub const WAKER: Token = Token(usize::MAX);
const READ_BUF: usize = 64 * 1024;
const TICK_NS: u64 = 10_000_000;
/// How long closing connections at the end may take.
const CLOSE_GRACE_NS: u64 = 2_000_000_000;
/// Broadcast drain ends once nothing arrived for this long.
const QUIET_NS: u64 = 500_000_000;
/// Sends per loop iteration at most, so a catch-up burst does not starve reads.
const SEND_BURST: u64 = 4096;
/// Failover: the longest wait between reconnect attempts, and when to give a member up.
const RECONNECT_MAX_BACKOFF_MS: u64 = 5_000;
const RECONNECT_GIVE_UP_NS: u64 = 30_000_000_000;
/// Reconnect storm: the client library's backoff (base, cap), and a member given up after this.
const STORM_BASE_MS: u64 = 1_000;
const STORM_CAP_MS: u64 = 60_000;
const STORM_GIVE_UP_NS: u64 = 600_000_000_000;
/// A response head larger than this is not a WebSocket server's answer.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Coordinator commands, relayed by the worker's main thread.
#[derive(Debug, Clone, Copy)]
pub enum Cmd {
    Start { t0: u64 },
    Stop,
}

/// Live counters for the progress line (written by this thread only).
#[derive(Debug, Default)]
pub struct Live {
    pub established: Cell,
    pub failed: Cell,
    pub dropped: Cell,
    pub sent: Cell,
    pub received: Cell,
    pub inflight: Cell,
    /// 1 once every connection of this thread has been attempted and settled.
    pub settled: Cell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Upgrading,
    /// v1: the 101 is in, the join is sent, `joined` not yet.
    Joining,
    Open,
    Closing,
}

#[derive(Debug)]
struct Conn {
    stream: Stream,
    idx: u32,
    gen: u32,
    timer: u32,
    /// Position in `Engine::open` while open.
    open_pos: u32,
    /// Position in `Engine::senders`, for a sender.
    sender_pos: u32,
    state: State,
    /// When the current step (connect, upgrade) began, ns.
    t_mark: u64,
    sess: Session,
    out: Option<Box<OutQueue>>,
    /// How this member receives (senders are always WebSocket members).
    transport: Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Opening connections; waiting for the start signal.
    Ramp,
    Run,
    /// Stopped sending; waiting for what is in flight (until the deadline, or quiet).
    Drain {
        until: u64,
    },
    /// Closing every connection.
    Closing {
        until: u64,
    },
}

pub struct Engine {
    tid: usize,
    /// For wss:// and https:// targets.
    tls: Option<Arc<rustls::ClientConfig>>,
    job: Arc<Job>,
    live: Arc<Live>,
    poll: Poll,
    mailbox: Arc<Mailbox<Cmd>>,
    conns: Slab<Conn>,
    wheel: Wheel,
    clock0: u64,
    rbuf: Box<[u8]>,
    wbuf: Vec<u8>,
    /// Scratch for building payloads.
    pbuf: Vec<u8>,
    scfg: SessionConfig,
    /// This thread's fraction of the worker's connections (and of its echo rate).
    share: f64,
    /// Connection indices still to open (popped from the end).
    todo: Vec<u32>,
    inflight: usize,
    max_inflight: usize,
    /// The same while members are reconnecting (--reconnect-concurrency).
    max_reconnect_inflight: usize,
    connect_per_sec: f64,
    connects_started: u64,
    /// Open connections (slab keys), for round-robin sending.
    open: Vec<usize>,
    /// Broadcast senders of this thread: (slab key or usize::MAX once gone, global index, next seq).
    senders: Vec<(usize, u32, u64)>,
    phase: Phase,
    t0: u64,
    /// Open-loop schedule: next message number and the spacing in ns.
    next_k: u64,
    interval_ns: f64,
    window_started: bool,
    trackers: HashMap<(u32, u32), SeqTrack>,
    /// v1: each member's view of its room, by connection index (kept across reconnects).
    members: HashMap<u32, v1::Member>,
    /// v1 resume: connection indices dropped on purpose, with when (ns), to reconnect.
    resuming: HashMap<u32, u64>,
    /// Failover: reconnect attempts so far per connection index (also which URL it is on).
    attempts: HashMap<u32, u32>,
    /// Failover: reconnects waiting for their backoff, (due ns, index), soonest first (a storm
    /// puts every member of a process here at once: no scan per loop iteration).
    delayed: BinaryHeap<Reverse<(u64, u32)>>,
    /// Idle long polls: where each connection's next poll starts.
    poll_next: HashMap<u32, String>,
    /// Jitter's random state.
    rng: u64,
    last_rx: u64,
    next_gen: u32,
    next_timer: u32,
    out: Outcome,
    /// `--h2`: the HTTP/2 connections, the one being filled with streams, and those to drive.
    hubs: Slab<hubs::Hub>,
    hub_filling: Option<(usize, u32)>,
    hub_dirty: Vec<(u32, u32)>,
}

impl Engine {
    pub fn new(tid: usize, job: Arc<Job>, live: Arc<Live>, poll: Poll, mailbox: Arc<Mailbox<Cmd>>) -> Engine {
        let threads = job.threads.max(1);
        let mut todo: Vec<u32> =
            (job.first..job.first + job.count).filter(|i| (i - job.first) as usize % threads == tid).collect();
        todo.reverse();
        let share = todo.len() as f64 / job.count.max(1) as f64;
        let max_message = match job.scenario {
            Scenario::Echo { size, .. } => size * 2 + 1024,
            Scenario::Broadcast { size, .. } => size * 2 + 1024,
            Scenario::Idle => 1 << 20,
        }
        .max(1 << 16);
        let ticks = |ns: u64| (ns / TICK_NS).max(1) as u32;
        let tls = match job.targets.iter().any(|t| t.tls) {
            true => job.tls.config(job.h2.is_some()).map_err(|e| log::error!("{e}")).ok(),
            false => None,
        };
        Engine {
            tid,
            tls,
            live,
            poll,
            mailbox,
            conns: Slab::with_capacity(todo.len()),
            wheel: Wheel::new(4096, 0),
            clock0: now_ns(),
            rbuf: vec![0; READ_BUF].into_boxed_slice(),
            wbuf: Vec::with_capacity(READ_BUF),
            pbuf: Vec::new(),
            share,
            scfg: SessionConfig {
                role: Role::Client,
                max_message,
                ping_interval: 0,
                pong_timeout: 1,
                handshake_timeout: ticks(job.connect_timeout_ms * 1_000_000),
                close_timeout: ticks(CLOSE_GRACE_NS),
                message_timeout: 0,
            },
            max_inflight: ((job.concurrency as f64 * share).ceil() as usize).max(1),
            max_reconnect_inflight: ((job.reconnect_concurrency as f64 * share).ceil() as usize).max(1),
            connect_per_sec: job.connect_rate * share,
            connects_started: 0,
            open: Vec::with_capacity(todo.len()),
            senders: Vec::new(),
            todo,
            inflight: 0,
            phase: Phase::Ramp,
            t0: 0,
            next_k: 0,
            interval_ns: 0.0,
            window_started: false,
            trackers: HashMap::new(),
            members: HashMap::new(),
            resuming: HashMap::new(),
            attempts: HashMap::new(),
            delayed: BinaryHeap::new(),
            poll_next: HashMap::new(),
            rng: job.salt ^ (tid as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1,
            last_rx: 0,
            next_gen: 0,
            next_timer: 0,
            out: Outcome::default(),
            hubs: Slab::new(),
            hub_filling: None,
            hub_dirty: Vec::new(),
            job,
        }
    }

    fn tick(&self, now: u64) -> u64 {
        (now - self.clock0) / TICK_NS
    }

    /// Run until the coordinator's stop has been carried out; returns what was measured.
    pub fn run(mut self) -> Outcome {
        let mut events = Events::with_capacity(1024);
        let mut cmds = Vec::new();
        let mut expired = Vec::new();
        self.out.ramp_start = now_ns();
        loop {
            // Due work first, then sleep until the next thing is due (or an event arrives).
            let now = now_ns();
            self.open_more(now);
            self.send_due(now);
            self.drive_dirty_hubs();
            let tick = self.tick(now);
            self.wheel.expire(tick, &mut expired);
            for e in expired.drain(..) {
                self.on_timer(e);
            }
            if self.advance_phase(now) {
                break;
            }
            let timeout = self.poll_timeout(now_ns());
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("thread {}: poll failed: {e}", self.tid);
                break;
            }
            for (i, ev) in events.iter().enumerate() {
                if ev.token() == WAKER {
                    self.mailbox.drain(&mut cmds);
                    for c in cmds.drain(..) {
                        self.command(c);
                    }
                } else {
                    self.on_event(ev);
                }
                // Keep the send schedule while working through a large batch of events.
                if i % 32 == 31 {
                    self.send_due(now_ns());
                }
            }
            // What members wrote into their HTTP/2 streams goes out.
            self.drive_dirty_hubs();
        }
        let stragglers: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for k in stragglers {
            self.remove(k);
        }
        for m in self.members.values() {
            self.out.v1_rooms.add_member(m);
        }
        self.out.run_end = self.out.run_end.max(self.t0);
        self.out
    }

    fn poll_timeout(&self, now: u64) -> Option<Duration> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n: u64| n.min(t)));
        if let Some(t) = self.next_send_at() {
            consider(t);
        }
        if let Some(&Reverse((due, _))) = self.delayed.peek() {
            consider(due);
        }
        if !self.todo.is_empty() && self.inflight < self.inflight_cap() {
            consider(if self.connect_per_sec > 0.0 { self.connect_allowed_at() } else { now });
        }
        if let Some(ahead) = self.wheel.next_expiry() {
            consider(self.clock0 + (self.tick(now) + ahead) * TICK_NS);
        }
        match self.phase {
            Phase::Drain { until } | Phase::Closing { until } => consider(until.min(now + 50_000_000)),
            _ => {}
        }
        next.map(|t| {
            let gap = t.saturating_sub(now);
            // epoll sleeps in whole milliseconds: sleep to within 1 ms of the deadline, then spin.
            if gap < 1_000_000 {
                Duration::ZERO
            } else {
                Duration::from_nanos(gap - 1_000_000)
            }
        })
    }

    // ---- connecting ----

    /// Handshakes allowed in flight: the ramp's cap, or the reconnects' while members are back
    /// off or on their way back.
    fn inflight_cap(&self) -> usize {
        if self.resuming.is_empty() {
            self.max_inflight
        } else {
            self.max_reconnect_inflight
        }
    }

    fn connect_allowed_at(&self) -> u64 {
        self.out.ramp_start + (self.connects_started as f64 * 1e9 / self.connect_per_sec) as u64
    }

    fn open_more(&mut self, now: u64) {
        while let Some(&Reverse((due, idx))) = self.delayed.peek() {
            if due > now {
                break;
            }
            self.delayed.pop();
            self.todo.push(idx);
        }
        while self.inflight < self.inflight_cap() {
            if self.connect_per_sec > 0.0 && self.connect_allowed_at() > now {
                break;
            }
            let Some(idx) = self.todo.pop() else { break };
            self.connects_started += 1;
            if !self.resuming.contains_key(&idx) {
                self.out.attempted += 1;
            }
            if let Some(per_hub) = self.job.h2 {
                self.open_over_h2(idx, per_hub, now);
                continue;
            }
            let src = (!self.job.sources.is_empty()).then(|| self.job.sources[idx as usize % self.job.sources.len()]);
            let stream = match net::start_connect(src, self.target_for(idx).addr) {
                Ok(s) => s,
                Err(e) => {
                    self.count_failure(Failure::from_io(&e));
                    continue;
                }
            };
            let key = self.conns.vacant_key();
            self.next_gen = self.next_gen.wrapping_add(1) % u32::MAX;
            let gen = self.next_gen;
            let mut stream = stream;
            if let Err(e) = self.poll.registry().register(
                &mut stream,
                Token(((gen as usize) << 32) | key),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                self.count_failure(Failure::from_io(&e));
                continue;
            }
            let target = self.target_for(idx);
            let stream = match (&self.tls, target.tls) {
                (Some(cfg), true) => match Stream::tls(stream, cfg.clone(), &target.host) {
                    Ok(s) => s,
                    Err(e) => {
                        log::error!("{e}");
                        self.count_failure(Failure::Tls);
                        continue;
                    }
                },
                (None, true) => {
                    self.count_failure(Failure::Tls);
                    continue;
                }
                (_, false) => Stream::Plain(stream),
            };
            self.start_member(stream, idx, gen, now);
        }
        if self.todo.is_empty() && self.inflight == 0 && self.live.settled.get() == 0 {
            self.live.settled.set(1);
        }
    }

    /// A connection attempt for member `idx` begins (counted in flight, under the handshake
    /// timeout); returns its slab key.
    fn start_member(&mut self, stream: Stream, idx: u32, gen: u32, now: u64) -> usize {
        let transport = self.transport_of(idx);
        let key = self.conns.insert(Conn {
            stream,
            idx,
            gen,
            timer: 0,
            open_pos: u32::MAX,
            sender_pos: u32::MAX,
            state: State::Connecting,
            t_mark: now,
            sess: Session::new_open(0),
            out: None,
            transport,
        });
        self.inflight += 1;
        self.live.inflight.set(self.inflight as u64);
        self.arm(key, self.scfg.handshake_timeout);
        key
    }

    fn count_failure(&mut self, f: Failure) {
        *self.out.failures.entry(f.name()).or_default() += 1;
        self.live.failed.inc();
    }

    /// The Sec-WebSocket-Key for connection `idx` (derived, so nothing is stored per connection).
    fn key_for(&self, idx: u32) -> String {
        let mut raw = [0u8; 16];
        raw[..8].copy_from_slice(&self.job.salt.to_le_bytes());
        raw[8..12].copy_from_slice(&idx.to_le_bytes());
        raw[12..].copy_from_slice(&(idx ^ 0x5bd1_e995).to_le_bytes());
        handshake::encode_key(raw)
    }

    fn live(&self, key: usize, gen: u32) -> bool {
        self.conns.get(key).is_some_and(|c| c.gen == gen)
    }

    fn on_event(&mut self, ev: &mio::event::Event) {
        let key = ev.token().0 & 0xffff_ffff;
        let gen = (ev.token().0 >> 32) as u32;
        if key & hubs::HUB != 0 {
            return self.on_hub_event(key & !hubs::HUB, gen, ev);
        }
        if !self.live(key, gen) {
            return;
        }
        if self.conns[key].state == State::Connecting {
            if ev.is_writable() || ev.is_error() || ev.is_read_closed() {
                self.finish_connect(key);
            }
            return;
        }
        if ev.is_writable() {
            self.flush(key);
        }
        if (ev.is_readable() || ev.is_read_closed() || ev.is_error()) && self.conns.contains(key) {
            self.read(key, ev.is_read_closed() || ev.is_error());
        }
    }

    fn finish_connect(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if let Some(tcp) = c.stream.tcp() {
            match tcp.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => return self.fail(key, Failure::from_io(&e)),
            }
            match tcp.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
                Err(e) => return self.fail(key, Failure::from_io(&e)),
            }
        }
        let now = now_ns();
        record_ns(&mut self.out.hist[H_CONNECT], now - c.t_mark);
        c.t_mark = now;
        c.state = State::Upgrading;
        let idx = c.idx;
        if c.transport != Transport::Ws {
            return self.http_request(key);
        }
        let target = self.target_for(idx).clone();
        let path = target.path_for(self.job.room_of(idx));
        let key_str = self.key_for(idx);
        self.wbuf.clear();
        let protocol = self.v1().then_some(c100k::proto::v1::SUBPROTOCOL);
        handshake::write_client_request(&mut self.wbuf, &target.host, &path, &key_str, protocol);
        if self.job.deflate {
            // Before the blank line that ends the request.
            self.wbuf.truncate(self.wbuf.len() - 2);
            self.wbuf.extend_from_slice(b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
        }
        self.send_wbuf(key);
    }

    /// How connection `idx` receives: the run's --transport, except that senders publish over
    /// a v1 WebSocket.
    fn transport_of(&self, idx: u32) -> Transport {
        if self.job.is_sender(idx) {
            Transport::Ws
        } else {
            self.job.transport
        }
    }

    /// An SSE or long-poll member's request: the stream (resuming from its position), or the
    /// next poll (from its position).
    fn http_request(&mut self, key: usize) {
        let c = &self.conns[key];
        let (idx, transport) = (c.idx, c.transport);
        let target = self.target_for(idx).clone();
        let route = if transport == Transport::Sse { "/sse" } else { "/poll" };
        let (path, last_id) = match self.job.room_of(idx) {
            None => {
                let base = target.path_for(None);
                let since = self.poll_next.get(&idx).filter(|_| transport == Transport::Poll);
                let path = match since {
                    Some(s) => format!("{base}{}since={s}", if base.contains('?') { '&' } else { '?' }),
                    None => base,
                };
                (path, None)
            }
            Some(room) => {
                let name = v1::room_name(room);
                let pos = self.members.get(&idx).filter(|m| m.joined).map(|m| (m.epoch.clone(), m.last()));
                match transport {
                    Transport::Sse => {
                        let id = pos.map(|(e, s)| hm::sse_id(&name, &e, s));
                        (hm::member_target(&target.path, route, &name, None), id)
                    }
                    _ => {
                        let since = pos.map(|(e, s)| format!("{e}:{s}"));
                        (hm::member_target(&target.path, route, &name, since.as_deref()), None)
                    }
                }
            }
        };
        self.wbuf.clear();
        hm::request(&mut self.wbuf, &target.host, &path, transport == Transport::Sse, last_id.as_deref());
        self.send_wbuf(key);
    }

    /// The URL connection `idx` uses now: its own, moved on by one per failover attempt.
    fn target_for(&self, idx: u32) -> &net::Target {
        let n = self.job.targets.len();
        let shift = self.attempts.get(&idx).copied().unwrap_or(0) as usize;
        &self.job.targets[(idx as usize + shift) % n]
    }

    fn reconnects(&self) -> bool {
        matches!(self.job.scenario, Scenario::Broadcast { reconnect: true, .. })
    }

    /// Failover: try `idx` again on the next URL after an exponential backoff (100 ms doubling
    /// to 5 s) with ±50% jitter, so the members of a dead node do not all arrive at once.
    fn schedule_reconnect(&mut self, idx: u32, now: u64) {
        self.resuming.entry(idx).or_insert(now);
        let n = self.attempts.entry(idx).or_insert(0);
        *n += 1;
        let attempt = *n;
        let r = self.random();
        let delay_ms = if self.storm() {
            // The client library's: uniform in [0, min(60 s, 1 s × 2^(n-1))).
            (STORM_BASE_MS << (attempt - 1).min(6)).min(STORM_CAP_MS) as f64 * r
        } else {
            (100u64 << (attempt - 1).min(6)).min(RECONNECT_MAX_BACKOFF_MS) as f64 * (0.5 + r)
        };
        self.delayed.push(Reverse((now + (delay_ms * 1e6) as u64, idx)));
    }

    /// Uniform in [0, 1) (xorshift; jitter only).
    fn random(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    fn storm(&self) -> bool {
        matches!(self.job.scenario, Scenario::Broadcast { storm: true, .. })
    }

    fn fail(&mut self, key: usize, f: Failure) {
        let idx = self.conns[key].idx;
        let now = now_ns();
        let give_up = if self.storm() { STORM_GIVE_UP_NS } else { RECONNECT_GIVE_UP_NS };
        if self.reconnects() && self.resuming.get(&idx).is_some_and(|&t| now - t < give_up) {
            // A reconnect attempt failed (that node may be dead too): the next one, later.
            self.remove(key);
            return self.schedule_reconnect(idx, now);
        }
        if self.resuming.remove(&idx).is_some() {
            // A reconnect that failed: the member is gone for the rest of the run.
            *self.out.drops.entry(format!("resume_{}", f.name())).or_default() += 1;
            self.live.dropped.inc();
        } else {
            self.count_failure(f);
        }
        self.remove(key);
    }

    fn v1(&self) -> bool {
        matches!(self.job.scenario, Scenario::Broadcast { v1: true, .. })
    }

    // ---- reading ----

    fn read(&mut self, key: usize, to_the_end: bool) {
        let gen = self.conns[key].gen;
        for _ in 0..16 {
            let c = &mut self.conns[key];
            match c.stream.read(&mut self.rbuf) {
                Ok(0) => return self.ended(key, "eof"),
                Ok(n) => {
                    let mut buf = std::mem::take(&mut self.rbuf);
                    self.on_bytes(key, &mut buf[..n]);
                    self.rbuf = buf;
                    if !self.live(key, gen) {
                        return;
                    }
                    self.send_wbuf(key);
                    if n < READ_BUF && !to_the_end {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return match self.conns[key].state {
                        State::Connecting | State::Upgrading => self.fail(key, Failure::from_io(&e)),
                        _ => self.ended(key, "reset"),
                    }
                }
            }
        }
    }

    fn on_bytes(&mut self, key: usize, data: &mut [u8]) {
        if self.conns[key].transport != Transport::Ws {
            return self.on_http(key, data);
        }
        if self.conns[key].state == State::Upgrading {
            let idx = self.conns[key].idx;
            let expected_key = self.key_for(idx);
            let mut head = self.conns[key].sess.take_stash();
            head.extend_from_slice(data);
            match handshake::parse_response(&head, &expected_key) {
                ParsedResponse::Partial if head.len() > MAX_RESPONSE_HEAD => self.fail(key, Failure::BadResponse),
                ParsedResponse::Partial => *self.conns[key].sess.stash() = head,
                ParsedResponse::Malformed => self.fail(key, Failure::BadResponse),
                ParsedResponse::Complete { status: 101, accept_ok: true, protocol, .. }
                    if self.v1() && protocol.as_deref() != Some(c100k::proto::v1::SUBPROTOCOL) =>
                {
                    self.fail(key, Failure::BadProtocol)
                }
                ParsedResponse::Complete { status: 101, accept_ok: true, len, deflate, .. } => {
                    self.upgraded(key);
                    if let Some(c) = self.conns.get_mut(key) {
                        c.sess.set_deflate(deflate && self.job.deflate);
                    }
                    let mut rest = head.split_off(len);
                    if !rest.is_empty() {
                        self.feed(key, &mut rest);
                    }
                }
                ParsedResponse::Complete { status: 101, .. } => self.fail(key, Failure::BadAccept),
                ParsedResponse::Complete { status, .. } => self.fail(key, Failure::Http(status)),
            }
            return;
        }
        self.feed(key, data);
    }

    /// Bytes of an SSE or long-poll member: response heads, then events (SSE) or whole answers
    /// (poll); what they carry is v1 JSON for [`Engine::on_v1`].
    fn on_http(&mut self, key: usize, data: &[u8]) {
        let gen = self.conns[key].gen;
        let mut buf = self.conns[key].sess.take_stash();
        buf.extend_from_slice(data);
        let mut off = 0;
        let now = now_ns();
        loop {
            let transport = self.conns[key].transport;
            let rest = &buf[off..];
            if transport == Transport::Sse && self.conns[key].state != State::Upgrading {
                let Some(end) = hm::find(rest, b"\n\n") else { break };
                if let Some((event, json)) = hm::sse_block(&rest[..end]) {
                    match event {
                        "joined" | "msg" => {
                            let json = json.into_owned();
                            self.last_rx = now;
                            self.on_v1(key, &json, now);
                        }
                        "error" => self.out.v1_errors += 1,
                        _ => {}
                    }
                }
                off += end + 2;
            } else {
                let Some(end) = hm::find(rest, b"\r\n\r\n") else {
                    if rest.len() > MAX_RESPONSE_HEAD {
                        return self.fail(key, Failure::BadResponse);
                    }
                    break;
                };
                let Some((status, len)) = hm::head_of(&rest[..end]) else {
                    return self.fail(key, Failure::BadResponse);
                };
                if transport == Transport::Sse {
                    off += end + 4;
                    if status != 200 {
                        return self.fail(key, Failure::Http(status));
                    }
                    self.http_opened(key);
                } else {
                    let len = len.unwrap_or(0);
                    if rest.len() < end + 4 + len {
                        break;
                    }
                    let body = rest[end + 4..end + 4 + len].to_vec();
                    off += end + 4 + len;
                    self.poll_answered(key, status, &body, now);
                }
            }
            if !self.live(key, gen) {
                return;
            }
        }
        buf.drain(..off);
        *self.conns[key].sess.stash() = buf;
    }

    /// An event stream's head (or a first poll answer) arrived: the "handshake" is done.
    fn http_opened(&mut self, key: usize) {
        let now = now_ns();
        let c = &mut self.conns[key];
        record_ns(&mut self.out.hist[H_HANDSHAKE], now - c.t_mark);
        let idx = c.idx;
        match self.job.room_of(idx) {
            Some(room) => {
                c.state = State::Joining;
                self.members.entry(idx).or_insert_with(|| v1::Member::new(room));
            }
            None => self.established(key),
        }
    }

    /// A long poll's answer: its messages as v1 `msg`s (a `joined` first when this is the
    /// connection's first answer or the position was gone), then the next poll.
    fn poll_answered(&mut self, key: usize, status: u16, body: &[u8], now: u64) {
        if status != 200 {
            return match self.conns[key].state {
                State::Upgrading => self.fail(key, Failure::Http(status)),
                _ => self.ended(key, &format!("poll_status_{status}")),
            };
        }
        let Some(answer) = hm::poll_answer(body) else {
            return self.fail(key, Failure::BadResponse);
        };
        let Some((epoch, seq)) = answer.position() else {
            return self.fail(key, Failure::BadResponse);
        };
        let first = self.conns[key].state == State::Upgrading;
        if first {
            self.http_opened(key);
        }
        let idx = self.conns[key].idx;
        if self.job.room_of(idx).is_some() {
            if first || answer.recovered == Some(false) {
                let had_position = self.members.get(&idx).is_some_and(|m| m.joined);
                let recovered = had_position && answer.recovered != Some(false);
                // The answer's messages (a resume's replay) end at `next`.
                self.on_v1(key, &hm::joined_json(epoch, seq, recovered), now);
            }
            for m in &answer.messages {
                self.last_rx = now;
                self.on_v1(key, m.get().as_bytes(), now);
            }
        } else {
            self.poll_next.insert(idx, answer.next.clone());
        }
        if self.conns.contains(key) && self.conns[key].state != State::Closing {
            self.http_request(key);
        }
    }

    /// The 101 arrived: open now (seed mode), or join first (v1).
    fn upgraded(&mut self, key: usize) {
        let now = now_ns();
        let tick = self.tick(now) as u32;
        let v1 = self.v1();
        let c = &mut self.conns[key];
        record_ns(&mut self.out.hist[H_HANDSHAKE], now - c.t_mark);
        c.sess = Session::new_open(tick);
        if !v1 {
            return self.established(key);
        }
        c.state = State::Joining;
        let idx = c.idx;
        let room = self.job.room_of(idx).unwrap_or(0);
        let member = self.members.entry(idx).or_insert_with(|| v1::Member::new(room));
        let since = member.joined.then(|| (member.epoch.clone(), member.last()));
        self.pbuf.clear();
        v1::join(&mut self.pbuf, &v1::room_name(room), since.as_ref().map(|(e, s)| (e.as_str(), *s)));
        frame::write_masked_frame(
            &mut self.wbuf,
            OpCode::Data(Data::Text),
            &self.pbuf,
            c100k::proto::ws::mask::random_key(),
        );
        self.send_wbuf(key);
    }

    /// Ready for the run: counted, listed for sending.
    fn established(&mut self, key: usize) {
        let now = now_ns();
        let c = &mut self.conns[key];
        c.state = State::Open;
        c.open_pos = self.open.len() as u32;
        self.open.push(key);
        let idx = c.idx;
        if self.job.is_sender(idx) {
            match self.senders.iter().position(|s| s.1 == idx) {
                // A sender that reconnected keeps its place and sequence numbers.
                Some(i) => {
                    self.senders[i].0 = key;
                    self.conns[key].sender_pos = i as u32;
                }
                None => {
                    self.conns[key].sender_pos = self.senders.len() as u32;
                    self.senders.push((key, idx, 0));
                }
            }
        }
        self.inflight -= 1;
        self.live.inflight.set(self.inflight as u64);
        self.disarm(key);
        if let Some(dropped_at) = self.resuming.remove(&idx) {
            record_ns(&mut self.out.hist[H_RESUME], now - dropped_at);
            self.out.resumes += 1;
            self.arm_resume(key, false);
            return;
        }
        self.out.established += 1;
        self.out.ramp_end = now;
        self.live.established.inc();
        if self.phase == Phase::Run {
            self.arm_resume(key, true);
        }
    }

    fn feed(&mut self, key: usize, data: &mut [u8]) {
        let mut rest = data;
        let tick = self.tick(now_ns()) as u32;
        let Some(gen) = self.conns.get(key).map(|c| c.gen) else { return };
        loop {
            // A message may have ended this connection (a refused join).
            let Some(c) = self.conns.get_mut(key).filter(|c| c.gen == gen) else { return };
            match c.sess.feed(&mut rest, tick, &mut self.wbuf, &self.scfg) {
                None => return,
                Some(Event::Message { text, data }) => self.on_message(key, text, &data),
                Some(Event::Finish(ending)) => {
                    let why = match ending {
                        Ending::PeerClosed(Some(code)) => format!("server_close_{code}"),
                        Ending::PeerClosed(None) => "server_close".to_string(),
                        Ending::Acknowledged => "closed".to_string(),
                        Ending::Failed(e) => format!("protocol_error_{}", e.code),
                    };
                    self.send_wbuf(key);
                    return self.ended(key, &why);
                }
            }
        }
    }

    fn on_message(&mut self, key: usize, _text: bool, data: &[u8]) {
        let now = now_ns();
        self.last_rx = now;
        if self.v1() {
            return self.on_v1(key, data, now);
        }
        match self.job.scenario {
            Scenario::Echo { load, size, binary } => {
                let Some(stamp) = payload::echo_stamp(data) else {
                    self.out.corrupt += 1;
                    return;
                };
                record_ns(&mut self.out.hist[H_RTT], now.saturating_sub(stamp));
                self.out.received += 1;
                self.live.received.inc();
                if let (Load::Window(_), Phase::Run) = (load, self.phase) {
                    self.send_echo(key, now, size, binary);
                }
            }
            Scenario::Broadcast { includes_sender, .. } => {
                let Some(Stamp { s, q, t }) = payload::parse_broadcast(data) else {
                    self.out.corrupt += 1;
                    return;
                };
                let me = self.conns[key].idx;
                if s == me {
                    self.out.self_deliveries += 1;
                    if !includes_sender {
                        return;
                    }
                }
                record_ns(&mut self.out.hist[H_DELIVERY], now.saturating_sub(t));
                match self.trackers.entry((me, s)).or_default().see(q) {
                    Arrival::InOrder => {}
                    Arrival::Late => self.out.out_of_order += 1,
                    Arrival::Duplicate => self.out.duplicated += 1,
                }
                self.out.received += 1;
                self.live.received.inc();
            }
            Scenario::Idle => {}
        }
    }

    /// A v1 server message: `joined`, `msg`, `published` or `error`.
    fn on_v1(&mut self, key: usize, data: &[u8], now: u64) {
        let Some(m) = v1::parse(data) else {
            self.out.corrupt += 1;
            return;
        };
        let idx = self.conns[key].idx;
        let Some(member) = self.members.get_mut(&idx) else { return };
        match m.op.as_ref() {
            "msg" => {
                let (Some(seq), Some(stamp)) = (m.seq, m.data) else {
                    self.out.corrupt += 1;
                    return;
                };
                if seq <= member.replay_to {
                    self.out.recovered_messages += 1;
                } else {
                    record_ns(&mut self.out.hist[H_DELIVERY], now.saturating_sub(stamp.t));
                }
                match member.on_msg(seq) {
                    Arrival::InOrder => {}
                    Arrival::Late => self.out.out_of_order += 1,
                    Arrival::Duplicate => self.out.duplicated += 1,
                }
                self.out.v1_rooms.saw(member.room, seq);
                self.out.received += 1;
                self.live.received.inc();
            }
            "published" => {
                member.on_published(m.seq);
                if let Some(seq) = m.seq {
                    self.out.v1_rooms.saw(member.room, seq);
                }
            }
            "joined" => {
                let (Some(epoch), Some(top)) = (m.epoch.as_deref(), m.seq) else {
                    self.out.corrupt += 1;
                    return;
                };
                match member.on_joined(epoch, top, m.recovered.unwrap_or(false)) {
                    v1::Joined::First => {}
                    v1::Joined::Recovered => self.out.resumes_recovered += 1,
                    v1::Joined::Unrecovered => self.out.resumes_unrecovered += 1,
                }
                self.out.v1_rooms.saw(member.room, top);
                if self.conns[key].state == State::Joining {
                    self.established(key);
                }
            }
            "error" => {
                self.out.v1_errors += 1;
                // An open sender only publishes: the error answers one of its publishes.
                if self.conns[key].state == State::Open && self.job.is_sender(self.conns[key].idx) {
                    self.out.publish_errors += 1;
                }
                // A refused join (a busy broker sheds joins): this attempt failed, and a
                // reconnecting member tries again after its backoff instead of waiting out
                // its connect timeout.
                if self.conns[key].state == State::Joining {
                    self.fail(key, Failure::JoinRefused);
                }
            }
            _ => {}
        }
    }

    /// v1 resume: schedule this member's next drop (`first`: staggered over one period).
    fn arm_resume(&mut self, key: usize, first: bool) {
        let every = match self.job.scenario {
            Scenario::Broadcast { resume_every_ms, .. } if resume_every_ms > 0 => resume_every_ms,
            _ => return,
        };
        let idx = self.conns[key].idx;
        if self.job.is_sender(idx) {
            return;
        }
        let delay_ms = if first { u64::from(idx) * 7919 % every + 1 } else { every };
        self.arm(key, (delay_ms * 1_000_000 / TICK_NS).max(1) as u32);
    }

    /// Drop the connection like a network failure would (RST, no close frame) and reconnect.
    fn resume(&mut self, key: usize) {
        let c = &self.conns[key];
        let idx = c.idx;
        if let Some(s) = c.stream.tcp() {
            let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
        }
        self.resuming.insert(idx, now_ns());
        self.remove(key);
        self.todo.push(idx);
    }

    /// An established connection ended (server close, reset, EOF, protocol error).
    fn ended(&mut self, key: usize, why: &str) {
        let state = self.conns[key].state;
        match state {
            State::Connecting | State::Upgrading | State::Joining => {
                let f = if why == "eof" { Failure::Reset } else { Failure::Protocol };
                return self.fail(key, f);
            }
            State::Open if self.reconnects() && matches!(self.phase, Phase::Run | Phase::Drain { .. }) => {
                let idx = self.conns[key].idx;
                self.remove(key);
                return self.schedule_reconnect(idx, now_ns());
            }
            State::Open if !matches!(self.phase, Phase::Closing { .. }) => {
                *self.out.drops.entry(why.to_string()).or_default() += 1;
                self.live.dropped.inc();
            }
            _ => {}
        }
        self.remove(key);
    }

    fn remove(&mut self, key: usize) {
        let Some(c) = self.conns.try_remove(key) else { return };
        if let Stream::Inner(p) = &c.stream {
            // Its stream ends (or is reset, with bytes unsent).
            let unsent = c.out.as_ref().is_some_and(|q| !q.is_empty());
            p.close(if unsent { c100k::net::pipe::Closed::Abort } else { c100k::net::pipe::Closed::Done });
        }
        if matches!(c.state, State::Connecting | State::Upgrading | State::Joining) {
            self.inflight -= 1;
            self.live.inflight.set(self.inflight as u64);
        }
        if c.open_pos != u32::MAX {
            let pos = c.open_pos as usize;
            self.open.swap_remove(pos);
            if let Some(&moved) = self.open.get(pos) {
                self.conns[moved].open_pos = pos as u32;
            }
        }
        if let Some(s) = self.senders.get_mut(c.sender_pos as usize) {
            s.0 = usize::MAX; // this sender's connection is gone (O(1): it knows its slot)
        }
    }

    // ---- writing ----

    /// Write `wbuf` to `key` (or queue what the socket does not take).
    fn send_wbuf(&mut self, key: usize) {
        if self.wbuf.is_empty() {
            return;
        }
        let Some(c) = self.conns.get_mut(key) else {
            self.wbuf.clear();
            return;
        };
        let res = send_or_queue(&mut c.stream, &mut c.out, &self.wbuf);
        self.wbuf.clear();
        if res.is_err() {
            self.ended(key, "reset");
        }
    }

    fn flush(&mut self, key: usize) {
        let c = &mut self.conns[key];
        if c.stream.flush_tls().is_err() {
            return self.ended(key, "reset");
        }
        if let Some(q) = c.out.as_mut() {
            match q.flush(&mut c.stream) {
                Ok(_) if q.is_empty() => c.out = None,
                Ok(_) => {}
                Err(_) => self.ended(key, "reset"),
            }
        }
    }

    fn send_echo(&mut self, key: usize, stamp: u64, size: usize, binary: bool) {
        self.pbuf.clear();
        payload::echo(&mut self.pbuf, stamp, size, self.job.words);
        let opcode = OpCode::Data(if binary { Data::Binary } else { Data::Text });
        frame::write_masked_frame(&mut self.wbuf, opcode, &self.pbuf, c100k::proto::ws::mask::random_key());
        self.out.sent += 1;
        self.live.sent.inc();
        self.send_wbuf(key);
    }

    // ---- the schedule ----

    fn command(&mut self, c: Cmd) {
        let now = now_ns();
        match c {
            Cmd::Start { t0 } => {
                if self.phase != Phase::Ramp {
                    return;
                }
                self.phase = Phase::Run;
                self.t0 = t0;
                self.out.run_start = t0;
                for key in self.open.clone() {
                    self.arm_resume(key, true);
                }
                for (_, c) in self.conns.iter() {
                    if c.state == State::Open {
                        if let Some(r) = self.job.room_of(c.idx) {
                            *self.out.members_by_room.entry(r).or_default() += 1;
                        }
                    }
                }
                // Echo: this worker's rate, split by planned connections; broadcast: the global
                // rate, split by senders (each sender sends rate / senders).
                let rate = match self.job.scenario {
                    Scenario::Echo { load: Load::Rate(r), .. } => r * self.share,
                    Scenario::Broadcast { rate, senders, .. } => {
                        rate * self.senders.len() as f64 / senders.max(1) as f64
                    }
                    _ => 0.0,
                };
                self.interval_ns = if rate > 0.0 { 1e9 / rate } else { 0.0 };
            }
            Cmd::Stop => match self.phase {
                Phase::Ramp | Phase::Run => {
                    self.out.run_end = now;
                    if self.phase == Phase::Ramp {
                        self.todo.clear();
                    }
                    self.phase = match self.job.scenario {
                        Scenario::Idle => self.begin_closing(now),
                        _ => Phase::Drain { until: now + self.job.drain_ms * 1_000_000 },
                    };
                }
                _ => {}
            },
        }
    }

    fn next_send_at(&self) -> Option<u64> {
        if self.phase != Phase::Run {
            return None;
        }
        if !self.window_started && matches!(self.job.scenario, Scenario::Echo { load: Load::Window(_), .. }) {
            return Some(self.t0);
        }
        (self.interval_ns > 0.0).then(|| self.t0 + (self.next_k as f64 * self.interval_ns) as u64)
    }

    fn send_due(&mut self, now: u64) {
        if self.phase != Phase::Run || now < self.t0 {
            return;
        }
        match self.job.scenario {
            Scenario::Echo { load: Load::Window(w), size, binary } => {
                if !self.window_started {
                    self.window_started = true;
                    for key in self.open.clone() {
                        for _ in 0..w {
                            if self.conns.contains(key) {
                                self.send_echo(key, now, size, binary);
                            }
                        }
                    }
                }
            }
            Scenario::Echo { load: Load::Rate(_), size, binary } => {
                let mut burst = 0;
                while let Some(due) = self.next_send_at().filter(|&d| d <= now && burst < SEND_BURST) {
                    self.next_k += 1;
                    burst += 1;
                    if self.open.is_empty() {
                        continue;
                    }
                    let key = self.open[(self.next_k as usize - 1) % self.open.len()];
                    record_ns(&mut self.out.hist[H_SEND_LAG], now.saturating_sub(due));
                    self.send_echo(key, due, size, binary);
                }
            }
            Scenario::Broadcast { size, .. } => {
                let mut burst = 0;
                while let Some(due) = self.next_send_at().filter(|&d| d <= now && burst < SEND_BURST) {
                    let i = self.next_k as usize % self.senders.len().max(1);
                    self.next_k += 1;
                    burst += 1;
                    let Some(&(key, idx, seq)) = self.senders.get(i) else { continue };
                    if key == usize::MAX {
                        continue; // this sender's connection is gone
                    }
                    self.senders[i].2 += 1;
                    record_ns(&mut self.out.hist[H_SEND_LAG], now.saturating_sub(due));
                    self.pbuf.clear();
                    let stamp = Stamp { s: idx, q: seq, t: due };
                    match (self.v1(), self.job.room_of(idx)) {
                        (true, Some(room)) => {
                            let words = self.job.words;
                            v1::publish(&mut self.pbuf, &v1::room_name(room), |o| {
                                payload::broadcast(o, stamp, size, words)
                            })
                        }
                        _ => payload::broadcast(&mut self.pbuf, stamp, size, self.job.words),
                    }
                    frame::write_masked_frame(
                        &mut self.wbuf,
                        OpCode::Data(Data::Text),
                        &self.pbuf,
                        c100k::proto::ws::mask::random_key(),
                    );
                    if let Some(r) = self.job.room_of(idx) {
                        *self.out.sent_by_room.entry(r).or_default() += 1;
                    }
                    self.out.sent += 1;
                    self.live.sent.inc();
                    self.send_wbuf(key);
                }
            }
            Scenario::Idle => {}
        }
    }

    /// Move between phases on time; returns true when the loop is done.
    fn advance_phase(&mut self, now: u64) -> bool {
        match self.phase {
            Phase::Drain { until } => {
                let done = match self.job.scenario {
                    // Echo replies come back to this thread: done when all are in.
                    Scenario::Echo { .. } => self.out.received + self.out.corrupt >= self.out.sent,
                    // Deliveries may come from any process: done once quiet.
                    _ => now.saturating_sub(self.last_rx.max(self.out.run_end)) >= QUIET_NS,
                };
                if done || now >= until {
                    self.phase = self.begin_closing(now);
                }
                false
            }
            Phase::Closing { until } => self.conns.is_empty() || now >= until,
            _ => false,
        }
    }

    fn begin_closing(&mut self, now: u64) -> Phase {
        self.todo.clear();
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        let tick = self.tick(now) as u32;
        for key in keys {
            let c = &mut self.conns[key];
            if c.transport != Transport::Ws {
                self.remove(key); // an HTTP member just goes
                continue;
            }
            if c.state == State::Open && c.sess.close(codes::NORMAL, "bench done", tick, &mut self.wbuf, Role::Client) {
                c.state = State::Closing;
                self.send_wbuf(key);
            } else if c.state != State::Open {
                self.remove(key);
            }
        }
        Phase::Closing { until: now + CLOSE_GRACE_NS }
    }

    // ---- timers (connect and handshake timeouts) ----

    fn arm(&mut self, key: usize, ticks: u32) {
        self.next_timer = self.next_timer.wrapping_add(1);
        self.conns[key].timer = self.next_timer;
        self.wheel.schedule(self.tick(now_ns()), ticks, Entry { key: key as u32, id: self.next_timer });
    }

    fn disarm(&mut self, key: usize) {
        self.next_timer = self.next_timer.wrapping_add(1);
        self.conns[key].timer = self.next_timer;
    }

    fn on_timer(&mut self, e: Entry) {
        let key = e.key as usize;
        let Some(c) = self.conns.get(key) else { return };
        if c.timer != e.id {
            return;
        }
        match c.state {
            State::Connecting | State::Upgrading | State::Joining => self.fail(key, Failure::Timeout),
            State::Open if self.phase == Phase::Run => self.resume(key),
            _ => {}
        }
    }
}
