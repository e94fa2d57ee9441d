//! `--h2`: the engine's HTTP/2 connections (*hubs*), each carrying up to `--streams-per-conn`
//! of its WebSocket connections (see `crate::h2`). A hub's token has [`HUB`] set in its key
//! half; its members are ordinary engine connections whose stream is a pipe.

use std::io::{self, Read};

use mio::{Interest, Token};

use c100k::net::outq::{send_or_queue, OutQueue};
use c100k::net::pipe::{self, Pipe};

use super::{Engine, State};
use crate::h2::{Action, Carrier};
use crate::net::{self, Failure};
use crate::tls::Stream;

/// Marks a hub's token (in the slab-key half).
pub(super) const HUB: usize = 1 << 31;
/// Frames a hub's socket queue may hold before the carrier waits for it.
const HUB_QUEUE: usize = 256 * 1024;

/// One TCP connection speaking HTTP/2.
pub(super) struct Hub {
    stream: Stream,
    gen: u32,
    carrier: Carrier,
    out: Option<Box<OutQueue>>,
    connected: bool,
    /// Members whose CONNECT waits for the carrier's SETTINGS.
    waiting: Vec<(u32, u32)>,
    /// Members given to it so far.
    members: u32,
}

impl Engine {
    /// Open connection `idx` as a stream of the hub being filled (a new hub when it is full).
    pub(super) fn open_over_h2(&mut self, idx: u32, per_hub: u32, now: u64) {
        let hub = match self.hub_filling.filter(|&(k, g)| self.hub_live(k, g) && self.hubs[k].members < per_hub) {
            Some(h) => h,
            None => match self.new_hub(idx) {
                Ok(h) => h,
                Err(f) => return self.count_failure(f),
            },
        };
        self.hub_filling = Some(hub);
        self.next_gen = self.next_gen.wrapping_add(1) % u32::MAX;
        let gen = self.next_gen;
        let pipe = Pipe::new((hub.0 as u32, hub.1));
        let key = self.start_member(Stream::Inner(pipe.clone()), idx, gen, now);
        let ws_key = self.key_for(idx);
        let h = &mut self.hubs[hub.0];
        h.members += 1;
        h.carrier.add((key as u32, gen), pipe, ws_key);
        if h.carrier.ready() {
            self.finish_connect(key);
        } else {
            h.waiting.push((key as u32, gen));
        }
    }

    fn hub_live(&self, key: usize, gen: u32) -> bool {
        self.hubs.get(key).is_some_and(|h| h.gen == gen)
    }

    fn new_hub(&mut self, idx: u32) -> Result<(usize, u32), Failure> {
        let src = (!self.job.sources.is_empty()).then(|| self.job.sources[idx as usize % self.job.sources.len()]);
        let target = self.target_for(idx).clone();
        let mut sock = net::start_connect(src, target.addr).map_err(|e| Failure::from_io(&e))?;
        let key = self.hubs.vacant_key();
        if key >= HUB {
            return Err(Failure::Emfile);
        }
        self.next_gen = self.next_gen.wrapping_add(1) % u32::MAX;
        let gen = self.next_gen;
        self.poll
            .registry()
            .register(&mut sock, Token(((gen as usize) << 32) | HUB | key), Interest::READABLE | Interest::WRITABLE)
            .map_err(|e| Failure::from_io(&e))?;
        let stream = match (&self.tls, target.tls) {
            (Some(cfg), true) => Stream::tls(sock, cfg.clone(), &target.host).map_err(|e| {
                log::error!("{e}");
                Failure::Tls
            })?,
            (None, true) => return Err(Failure::Tls),
            (_, false) => Stream::Plain(sock),
        };
        let hub =
            Hub { stream, gen, carrier: Carrier::new(), out: None, connected: false, waiting: Vec::new(), members: 0 };
        self.hubs.insert(hub);
        Ok((key, gen))
    }

    pub(super) fn on_hub_event(&mut self, key: usize, gen: u32, ev: &mio::event::Event) {
        if !self.hub_live(key, gen) {
            return;
        }
        if !self.hubs[key].connected {
            if !(ev.is_writable() || ev.is_error() || ev.is_read_closed()) {
                return;
            }
            let tcp = self.hubs[key].stream.tcp();
            match tcp.map(|t| (t.take_error(), t.peer_addr())) {
                Some((Ok(None), Ok(_))) => self.hubs[key].connected = true,
                Some((_, Err(e))) if e.kind() == io::ErrorKind::NotConnected => return,
                Some((Ok(Some(e)) | Err(e), _)) | Some((_, Err(e))) => {
                    return self.hub_failed(key, Failure::from_io(&e))
                }
                None => return,
            }
        }
        if ev.is_writable() {
            let h = &mut self.hubs[key];
            let flushed = h.stream.flush_tls().and_then(|()| match h.out.as_mut() {
                Some(q) => q.flush(&mut h.stream).map(|_| ()),
                None => Ok(()),
            });
            if flushed.is_err() {
                return self.hub_failed(key, Failure::Reset);
            }
            if h.out.as_ref().is_some_and(|q| q.is_empty()) {
                h.out = None;
            }
        }
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            for _ in 0..16 {
                match self.hubs[key].stream.read(&mut self.rbuf) {
                    Ok(0) => return self.hub_failed(key, Failure::Reset),
                    Ok(n) => {
                        let data = &self.rbuf[..n];
                        self.hubs[key].carrier.feed(data);
                        if n < self.rbuf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return self.hub_failed(key, Failure::from_io(&e)),
                }
            }
        }
        self.drive_hub(key);
    }

    /// Drive every hub whose streams wrote or read since the last call.
    pub(super) fn drive_dirty_hubs(&mut self) {
        let mut dirty = std::mem::take(&mut self.hub_dirty);
        pipe::take_dirty(&mut dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &(k, g) in &dirty {
            if self.hub_live(k as usize, g) && self.hubs[k as usize].connected {
                self.drive_hub(k as usize);
            }
        }
        dirty.clear();
        self.hub_dirty = dirty;
    }

    fn drive_hub(&mut self, key: usize) {
        let gen = self.hubs[key].gen;
        let mut actions = Vec::new();
        let mut out = Vec::new();
        for _ in 0..8 {
            let h = &mut self.hubs[key];
            let room = HUB_QUEUE.saturating_sub(h.out.as_ref().map_or(0, |q| q.len()));
            h.carrier.drive(room, &mut actions);
            out.clear();
            h.carrier.take_output(&mut out);
            if !out.is_empty() && send_or_queue(&mut h.stream, &mut h.out, &out).is_err() {
                return self.hub_failed(key, Failure::Reset);
            }
            let waiting = if h.carrier.ready() { std::mem::take(&mut h.waiting) } else { Vec::new() };
            if actions.is_empty() && waiting.is_empty() {
                break;
            }
            for (k, g) in waiting {
                if self.live(k as usize, g) && self.conns[k as usize].state == State::Connecting {
                    self.finish_connect(k as usize);
                }
            }
            for a in actions.drain(..) {
                match a {
                    Action::Input((k, g)) if self.live(k as usize, g) => self.read(k as usize, false),
                    Action::Writable((k, g)) if self.live(k as usize, g) => self.flush(k as usize),
                    Action::Reset((k, g)) if self.live(k as usize, g) => self.ended(k as usize, "reset"),
                    _ => {}
                }
            }
            if !self.hub_live(key, gen) {
                return;
            }
        }
        if self.hubs[key].carrier.is_done() {
            if let Some(e) = self.hubs[key].carrier.error.take() {
                log::debug!("HTTP/2 connection ended: {e}");
            }
            self.hubs.remove(key);
        }
    }

    /// A hub's connection failed: so do the members it carries.
    fn hub_failed(&mut self, key: usize, f: Failure) {
        let h = self.hubs.remove(key);
        for (k, g) in h.carrier.members() {
            if self.live(k as usize, g) {
                match self.conns[k as usize].state {
                    State::Connecting | State::Upgrading | State::Joining => self.fail(k as usize, f),
                    _ => self.ended(k as usize, "reset"),
                }
            }
        }
    }
}
