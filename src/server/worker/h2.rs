//! The loop's side of HTTP/2 (see `server::h2`): starting a connection's multiplexer, giving it
//! the socket's bytes and the socket its frames, and making, feeding and dropping the
//! connections of its streams as it says.

use std::sync::atomic::Ordering;

use super::{Worker, PAUSE_READ_AT};
use crate::net::pipe;
use crate::proto::ws::session::Session;
use crate::server::conn::{flags, Conn, Route};
use crate::server::h2::{Action, Counts, H2Conn, H2Limits, WIRE_INPUT_MAX};

/// Drive rounds (streams answer, their answers become frames) before other work gets a turn.
const ROUNDS: usize = 8;
/// Frames `h2` may hand the socket's queue before it waits for a writable edge.
const QUEUE_MAX: usize = 256 * 1024;

impl Worker {
    /// Whether HTTP/2 is served (`--h2-max-streams` above 0).
    pub(super) fn h2_enabled(&self) -> bool {
        self.shared.cfg.h2_max_streams > 0
    }

    /// Connection `key` speaks HTTP/2 from now on; `data`: what it sent so far (the preface on).
    pub(super) fn start_h2(&mut self, key: usize, data: &[u8]) {
        let gen = self.conns[key].gen;
        let limits =
            H2Limits { max_streams: self.shared.cfg.h2_max_streams, max_body: self.shared.cfg.max_message_size };
        let mut h = Box::new(H2Conn::new((key as u32, gen), limits));
        h.feed(data);
        let c = &mut self.conns[key];
        c.route = Route::H2;
        c.put_h2(h);
        let m = self.m();
        m.h2_connections_total.inc();
        m.h2_connections_open.inc();
        // Until its SETTINGS are exchanged, the handshake timeout; then the idle check.
        self.arm(key, self.scfg.handshake_timeout);
        self.drive_h2(key);
    }

    /// Bytes for the HTTP/2 connection `key`.
    pub(super) fn h2_input(&mut self, key: usize, data: &[u8]) {
        let Some(io) = self.conns[key].io.as_deref_mut() else { return };
        if let crate::server::conn::Link::H2(h) = &mut io.link {
            if !h.is_done() {
                h.feed(data);
            }
        }
        self.drive_h2(key);
    }

    /// Drive every HTTP/2 connection whose streams changed; returns how many there were.
    pub(super) fn drive_dirty_h2(&mut self) -> usize {
        let mut dirty = std::mem::take(&mut self.h2_dirty);
        pipe::take_dirty(&mut dirty);
        dirty.sort_unstable();
        dirty.dedup();
        let n = dirty.len();
        for &(key, gen) in &dirty {
            if self.live(key as usize, gen) && self.conns[key as usize].route == Route::H2 {
                self.drive_h2(key as usize);
            }
        }
        dirty.clear();
        self.h2_dirty = dirty;
        n
    }

    /// Run connection `key`'s multiplexer until its streams have nothing more to say (or the
    /// round limit), sending the frames it makes.
    pub(super) fn drive_h2(&mut self, key: usize) {
        let gen = self.conns[key].gen;
        let Some(mut h) = self.conns[key].take_h2() else { return };
        let mut actions = std::mem::take(&mut self.h2_actions);
        let mut out = std::mem::take(&mut self.h2_out);
        for _ in 0..ROUNDS {
            let room = QUEUE_MAX.saturating_sub(self.conns[key].queued());
            h.drive(room, &mut actions);
            out.clear();
            h.take_output(&mut out);
            self.count_h2(&mut h.counts);
            if !out.is_empty() {
                let sent = self.conns[key].send_slice(&out);
                self.account(key, sent);
            }
            if actions.is_empty() || !self.live(key, gen) {
                break;
            }
            for a in actions.drain(..) {
                match a {
                    Action::Open { slot } => match self.add_stream(key, &mut h, slot) {
                        Some(inner) => self.on_readable(inner, false),
                        None => h.refuse_slot(slot),
                    },
                    Action::Input((k, g)) if self.live(k as usize, g) => self.on_readable(k as usize, false),
                    Action::Writable((k, g)) if self.live(k as usize, g) => self.on_writable(k as usize),
                    Action::Reset((k, g)) if self.live(k as usize, g) => self.drop_conn(k as usize),
                    _ => {}
                }
            }
            if !self.live(key, gen) {
                break;
            }
        }
        actions.clear();
        self.h2_actions = actions;
        if out.capacity() <= 1 << 20 {
            self.h2_out = out;
        }
        if !self.live(key, gen) {
            // Dropped meanwhile (its multiplexer was out being driven): so are its streams.
            return self.drop_streams(&h);
        }
        let (done, input) = (h.is_done(), h.input_len());
        if let Some(e) = h.error.take() {
            log::debug!("loop {}: HTTP/2 connection ended: {e}", self.id);
            self.m().h2_errors_total.inc();
        }
        let now = self.now32();
        let c = &mut self.conns[key];
        c.put_h2(h);
        if input >= WIRE_INPUT_MAX {
            // `h2` is not reading (it waits to write): neither do we.
            c.flags |= flags::READ_PAUSED;
        } else if c.has(flags::READ_PAUSED) && c.queued() < PAUSE_READ_AT / 2 && !done {
            c.flags &= !flags::READ_PAUSED;
            self.ready.push((key, gen));
        }
        if done && c.sess.phase() == crate::proto::ws::session::Phase::Handshake {
            // GOAWAY sent or received, streams over: close once the last frames are out.
            c.sess.linger(now);
            self.arm(key, self.scfg.close_timeout);
            self.settle(key);
        }
    }

    fn count_h2(&self, counts: &mut Counts) {
        let c = std::mem::take(counts);
        let m = self.m();
        m.h2_streams_total.add(c.streams);
        m.h2_websockets_total.add(c.websockets);
        m.h2_stream_resets_total.add(c.resets);
        m.h2_refused_streams_total.add(c.refused);
        match c.ws_conns {
            d if d > 0 => m.h2_connections_with_websockets.add(d as u64),
            d if d < 0 => m.h2_connections_with_websockets.sub(d.unsigned_abs()),
            _ => {}
        }
    }

    /// Make the connection of the stream in `slot` of HTTP/2 connection `outer`.
    fn add_stream(&mut self, outer: usize, h: &mut H2Conn, slot: usize) -> Option<usize> {
        let restrict = self.conns[outer].flags & (flags::OVERFLOW | flags::PER_IP);
        let (gen, now) = (self.next_gen(), self.now32());
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key >= u32::MAX as usize {
            return None;
        }
        let pipe = h.attach(slot, (key as u32, gen))?;
        let mut conn = Conn::inner(pipe, gen, Session::new_handshake(now));
        conn.flags |= restrict;
        entry.insert(conn);
        self.m().h2_streams_open.inc();
        self.arm(key, self.scfg.handshake_timeout);
        Some(key)
    }

    /// The timer of HTTP/2 connection `key`: before its handshake completes, the handshake
    /// timeout; after, an idle check (a connection without streams for two timer periods is
    /// sent GOAWAY).
    pub(super) fn h2_timer(&mut self, key: usize) {
        let Some(mut h) = self.conns[key].take_h2().filter(|h| !h.is_done()) else {
            // Ended and lingering: the close timeout.
            return self.drop_conn(key);
        };
        let idle = h.streams() == 0 && std::mem::replace(&mut h.quiet, true);
        let shaking = !h.is_open() && !h.is_done();
        if idle {
            h.go_away();
        }
        self.conns[key].put_h2(h);
        if shaking {
            self.m().handshake_failures_total.inc();
            return self.drop_conn(key);
        }
        self.arm(key, self.scfg.handshake_timeout);
        self.drive_h2(key);
    }

    /// Shutting down: no new streams (GOAWAY); the open ones are closed with 1001 like any.
    pub(super) fn h2_go_away(&mut self, key: usize) {
        if let Some(mut h) = self.conns[key].take_h2() {
            h.go_away();
            self.conns[key].put_h2(h);
            self.drive_h2(key);
        }
    }

    /// A connection is being dropped: its streams too (an HTTP/2 connection), or its pipe is
    /// told (a stream). Returns whether it was a TCP connection.
    pub(super) fn unlink(&mut self, key: usize) -> bool {
        let m = self.shared.metrics.mine(self.id);
        let c = &mut self.conns[key];
        if c.tcp().is_none() {
            c.close_inner();
            m.h2_streams_open.sub(1);
            return false;
        }
        if c.route == Route::H2 {
            m.h2_connections_open.sub(1);
        }
        if let Some(h) = c.take_h2() {
            self.drop_streams(&h);
        }
        self.shared.open.fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// An HTTP/2 connection is gone: its streams' connections go too, and it no longer counts
    /// as carrying WebSockets.
    fn drop_streams(&mut self, h: &H2Conn) {
        if h.has_websockets() {
            self.m().h2_connections_with_websockets.sub(1);
        }
        let inners: Vec<(u32, u32)> = h.inners().collect();
        for (k, g) in inners {
            if self.live(k as usize, g) {
                self.drop_conn(k as usize);
            }
        }
    }
}
