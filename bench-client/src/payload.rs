//! Message payloads and what receivers learn from them.
//!
//! Echo: 16 hex digits of the send timestamp (CLOCK_MONOTONIC ns), padded with `x` to the
//! requested size — valid text and valid JSON-free filler, so any echo server returns it as is.
//! Broadcast: compact JSON `{"s":SENDER,"q":SEQ,"t":NS,"p":"xx…"}` — the sender's global index,
//! its sequence number, the intended send time, and padding. Compact JSON survives servers that
//! re-serialize (Node's JSON.stringify(JSON.parse(x)) gives the same bytes).

use std::collections::BTreeSet;

/// Smallest echo payload (the timestamp).
pub const ECHO_MIN: usize = 16;

/// Append an echo payload of `size` bytes (at least [`ECHO_MIN`]) stamped `t_ns`.
pub fn echo(out: &mut Vec<u8>, t_ns: u64, size: usize, words: bool) {
    use std::io::Write;
    let _ = write!(out, "{t_ns:016x}");
    pad(out, size.saturating_sub(ECHO_MIN), words, t_ns);
}

/// Append `n` bytes of padding: one repeated byte, or words picked pseudo-randomly from a small
/// vocabulary (compresses roughly like chat text or JSON, 2–4×, where `x`s compress ~100×).
pub fn pad(out: &mut Vec<u8>, n: usize, words: bool, seed: u64) {
    if !words {
        out.resize(out.len() + n, b'x');
        return;
    }
    const WORDS: [&str; 32] = [
        "the", "room", "message", "server", "client", "latency", "again", "quick", "brown", "fox", "jumps", "over",
        "lazy", "dog", "seq", "epoch", "presence", "joined", "history", "deliver", "socket", "kernel", "memory",
        "frame", "json", "value", "user", "token", "publish", "stream", "order", "resume",
    ];
    let end = out.len() + n;
    let mut x = seed | 1;
    while out.len() < end {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let w = WORDS[(x % 32) as usize];
        let room = end - out.len();
        out.extend_from_slice(&w.as_bytes()[..w.len().min(room)]);
        if out.len() < end {
            out.push(if x % 7 == 0 { b'.' } else { b' ' });
        }
    }
}

/// The timestamp of an echoed payload, if it is one of ours.
pub fn echo_stamp(p: &[u8]) -> Option<u64> {
    let hex = std::str::from_utf8(p.get(..ECHO_MIN)?).ok()?;
    u64::from_str_radix(hex, 16).ok()
}

/// The fields of a broadcast payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub struct Stamp {
    /// Sender's global connection index.
    pub s: u32,
    /// Sender's sequence number (from 0).
    pub q: u64,
    /// Intended send time, ns on CLOCK_MONOTONIC.
    pub t: u64,
}

/// Append a broadcast payload of about `size` bytes (never less than needed).
pub fn broadcast(out: &mut Vec<u8>, st: Stamp, size: usize, words: bool) {
    use std::io::Write;
    let start = out.len();
    let _ = write!(out, "{{\"s\":{},\"q\":{},\"t\":{},\"p\":\"", st.s, st.q, st.t);
    let used = out.len() - start + 2;
    pad(out, size.saturating_sub(used), words, st.t ^ u64::from(st.s) << 40 ^ st.q);
    out.extend_from_slice(b"\"}");
}

pub fn parse_broadcast(p: &[u8]) -> Option<Stamp> {
    serde_json::from_slice(p).ok()
}

/// Per (receiver, sender) sequence bookkeeping: which numbers arrived, to tell late (out of
/// order) arrivals from duplicates exactly. Memory is proportional to the gaps outstanding, not
/// to the messages seen.
#[derive(Debug, Default, Clone)]
pub struct SeqTrack {
    /// One past the highest sequence number seen.
    next: u64,
    /// Numbers below `next` not seen yet.
    holes: BTreeSet<u64>,
}

/// What one arrival was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    InOrder,
    /// Arrived after a higher number did.
    Late,
    Duplicate,
}

/// Gaps wider than this are not itemised (a runaway sequence number would cost memory).
const MAX_HOLES: u64 = 1 << 20;

impl SeqTrack {
    /// A tracker whose first expected number is `next`.
    pub fn starting_at(next: u64) -> SeqTrack {
        SeqTrack { next, holes: BTreeSet::new() }
    }

    /// One past the highest number seen.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Move on to `next` without expecting the numbers in between (they are not holes).
    pub fn skip_to(&mut self, next: u64) {
        if next > self.next {
            self.next = next;
        }
    }

    pub fn see(&mut self, q: u64) -> Arrival {
        if q >= self.next {
            if q - self.next <= MAX_HOLES {
                self.holes.extend(self.next..q);
            }
            // A peer-sent u64::MAX must not overflow.
            self.next = q.saturating_add(1);
            Arrival::InOrder
        } else if self.holes.remove(&q) {
            Arrival::Late
        } else {
            Arrival::Duplicate
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_payloads_roundtrip_at_the_requested_size() {
        let mut v = Vec::new();
        echo(&mut v, 0x1234_5678_9abc, 32, false);
        assert_eq!(v.len(), 32);
        assert!(std::str::from_utf8(&v).is_ok());
        assert_eq!(echo_stamp(&v), Some(0x1234_5678_9abc));
        assert_eq!(echo_stamp(b"short"), None);
    }

    #[test]
    fn broadcast_payloads_are_compact_json_of_the_requested_size() {
        let st = Stamp { s: 12, q: 345, t: 6_789_000_000 };
        let mut v = Vec::new();
        broadcast(&mut v, st, 128, false);
        assert_eq!(v.len(), 128);
        assert_eq!(parse_broadcast(&v), Some(st));
        // Compact (no whitespace), so an order-preserving re-serializer such as Node's
        // JSON.stringify(JSON.parse(x)) gives back the same bytes.
        assert!(!v.contains(&b' '));
        assert!(serde_json::from_slice::<serde_json::Value>(&v).is_ok());
        let mut small = Vec::new();
        broadcast(&mut small, st, 10, false);
        assert_eq!(parse_broadcast(&small), Some(st), "never truncated below what it needs");
        // Word padding: the same size, valid JSON, and text that compresses like text.
        let mut w = Vec::new();
        broadcast(&mut w, st, 600, true);
        assert_eq!(w.len(), 600);
        assert_eq!(parse_broadcast(&w), Some(st));
        let z = c100k::proto::ws::deflate::compress(&w);
        assert!(z.len() > 600 / 6 && z.len() < 600 * 3 / 4, "{}", z.len());
    }

    #[test]
    fn sequence_tracking_tells_late_from_duplicate() {
        let mut t = SeqTrack::default();
        assert_eq!(t.see(0), Arrival::InOrder);
        assert_eq!(t.see(2), Arrival::InOrder); // 1 missing for now
        assert_eq!(t.see(2), Arrival::Duplicate);
        assert_eq!(t.see(1), Arrival::Late);
        assert_eq!(t.see(1), Arrival::Duplicate);
        assert_eq!(t.see(3), Arrival::InOrder);
        assert!(t.holes.is_empty());
        // Whatever a peer sends, nothing overflows.
        let mut t = SeqTrack::default();
        assert_eq!(t.see(u64::MAX), Arrival::InOrder);
        assert_eq!(t.see(5), Arrival::Duplicate, "far below what came before, not itemised");
    }
}
