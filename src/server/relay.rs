//! Fan-out to sockets: frames shared between recipients are corked per connection during a loop
//! iteration and written once at its end (one `writev` per recipient, however many frames), and
//! slow consumers are found.
//!
//! A member is slow only when bytes its socket refused pile up past `--max-backlog`. Bytes corked
//! in this iteration were never offered to the socket, so they are not judged on their own: when
//! a member's queue passes the cap, it is flushed first and judged on what remains.

use bytes::Bytes;
use slab::Slab;

use super::conn::{flags, Conn};
use super::metrics::LoopMetrics;

#[derive(Debug)]
pub struct Relay {
    max_backlog: usize,
    /// Connections with corked frames.
    dirty: Vec<(usize, u32)>,
    /// Connections over the cap after a flush: close them with 1008.
    slow: Vec<(usize, u32)>,
    /// Connections whose socket failed while flushing: drop them.
    broken: Vec<(usize, u32)>,
}

impl Relay {
    pub fn new(max_backlog: usize) -> Relay {
        Relay { max_backlog, dirty: Vec::new(), slow: Vec::new(), broken: Vec::new() }
    }

    /// Queue `frame` for connection `key` (no copy); it goes out in [`Relay::flush_dirty`].
    pub fn send(&mut self, key: usize, c: &mut Conn, frame: &Bytes, m: &LoopMetrics) {
        let (first, added) = c.cork(frame);
        if first {
            self.dirty.push((key, c.gen));
        }
        m.outbound_queued_bytes.add(added as u64);
        if c.queued() > self.max_backlog {
            // Flush before judging: only what the socket refuses counts.
            self.flush_one(key, c, m);
            if c.queued() > self.max_backlog {
                self.slow.push((key, c.gen));
            }
        }
    }

    fn flush_one(&mut self, key: usize, c: &mut Conn, m: &LoopMetrics) {
        match c.flush() {
            Ok((n, freed)) => {
                m.bytes_sent_total.add(n as u64);
                m.outbound_queued_bytes.sub(freed as u64);
            }
            Err(_) => self.broken.push((key, c.gen)),
        }
    }

    /// Write out what was corked this iteration. Sockets already waiting for a writable edge are
    /// left to it. Connections still over the cap afterwards are listed as slow.
    pub fn flush_dirty(&mut self, conns: &mut Slab<Conn>, m: &LoopMetrics) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &(key, gen) in &dirty {
            let Some(c) = conns.get_mut(key).filter(|c| c.gen == gen) else { continue };
            c.flags &= !flags::DIRTY;
            if !c.has(flags::BLOCKED) {
                self.flush_one(key, c, m);
            }
            if c.queued() > self.max_backlog {
                self.slow.push((key, gen));
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Whether anything is corked.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Slow consumers found since the last call (each once; stale entries are the caller's to skip).
    pub fn take_slow(&mut self) -> Vec<(usize, u32)> {
        let mut v = std::mem::take(&mut self.slow);
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Connections whose socket broke while flushing.
    pub fn take_broken(&mut self) -> Vec<(usize, u32)> {
        std::mem::take(&mut self.broken)
    }
}
