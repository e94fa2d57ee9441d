//! A room's recent messages: a ring of the last `cap` messages, in seq order, with the byte count
//! the memory gauges report. Answers the two questions resume needs: is everything after seq S
//! still here, and which messages are those.

use std::collections::VecDeque;
use std::sync::Arc;

use super::message::RoomMessage;

#[derive(Debug, Default)]
pub struct History {
    ring: VecDeque<Arc<RoomMessage>>,
    cap: usize,
    bytes: usize,
}

/// What changed in a history's size (for the process-wide gauges).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delta {
    pub messages: i64,
    pub bytes: i64,
}

impl History {
    pub fn new(cap: usize) -> History {
        History { ring: VecDeque::new(), cap, bytes: 0 }
    }

    pub fn len(&self) -> usize {
        self.ring.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ring.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Append the next message (seqs must increase by one), evicting the oldest past `cap`.
    pub fn push(&mut self, m: Arc<RoomMessage>) -> Delta {
        if self.cap == 0 {
            return Delta::default();
        }
        debug_assert!(self.ring.back().is_none_or(|b| b.seq + 1 == m.seq));
        let mut d = Delta { messages: 1, bytes: m.size() as i64 };
        self.bytes += m.size();
        self.ring.push_back(m);
        while self.ring.len() > self.cap {
            if let Some(old) = self.ring.pop_front() {
                self.bytes -= old.size();
                d.messages -= 1;
                d.bytes -= old.size() as i64;
            }
        }
        d
    }

    /// Drop everything (the history expired).
    pub fn clear(&mut self) -> Delta {
        let d = Delta { messages: -(self.ring.len() as i64), bytes: -(self.bytes as i64) };
        self.ring = VecDeque::new();
        self.bytes = 0;
        d
    }

    /// The messages after `seq` when every one of them up to `top` is still here; `None` when
    /// some are gone (or `seq` is beyond `top`).
    pub fn after(&self, seq: u64, top: u64) -> Option<impl Iterator<Item = &Arc<RoomMessage>>> {
        if seq > top {
            return None;
        }
        if seq < top {
            let oldest = self.ring.front()?.seq;
            if oldest > seq + 1 {
                return None;
            }
        }
        let skip = self.ring.front().map_or(0, |f| (seq + 1).saturating_sub(f.seq) as usize);
        Some(self.ring.iter().skip(skip))
    }

    /// Up to `limit` messages: the oldest ones after `seq`, or the newest ones when `seq` is
    /// `None` (both oldest first).
    pub fn page(&self, seq: Option<u64>, limit: usize) -> Vec<Arc<RoomMessage>> {
        match seq {
            Some(s) => {
                let skip = self.ring.front().map_or(0, |f| (s + 1).saturating_sub(f.seq) as usize);
                self.ring.iter().skip(skip).take(limit).cloned().collect()
            }
            None => self.ring.iter().skip(self.ring.len().saturating_sub(limit)).cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::message::Payload;

    fn m(seq: u64) -> Arc<RoomMessage> {
        Arc::new(RoomMessage::new("r".into(), "e".into(), seq, "u".into(), 0, Payload::Json("1".into()), None))
    }

    fn seqs<'a>(it: impl Iterator<Item = &'a Arc<RoomMessage>>) -> Vec<u64> {
        it.map(|m| m.seq).collect()
    }

    #[test]
    fn keeps_the_last_cap_messages_and_counts_bytes() {
        let mut h = History::new(3);
        let mut total = Delta::default();
        for s in 1..=5 {
            let d = h.push(m(s));
            total.messages += d.messages;
            total.bytes += d.bytes;
        }
        assert_eq!(h.len(), 3);
        assert_eq!(total.messages, 3);
        assert_eq!(total.bytes as usize, h.bytes());
        assert_eq!(h.clear(), Delta { messages: -3, bytes: -(total.bytes) });
        assert!(h.is_empty());
        assert_eq!(History::new(0).push(m(1)), Delta::default(), "history off");
    }

    #[test]
    fn recovery_needs_every_message_after_the_position() {
        let mut h = History::new(3);
        for s in 1..=5 {
            h.push(m(s)); // keeps 3, 4, 5
        }
        assert_eq!(seqs(h.after(2, 5).unwrap()), vec![3, 4, 5]);
        assert_eq!(seqs(h.after(4, 5).unwrap()), vec![5]);
        assert_eq!(seqs(h.after(5, 5).unwrap()), Vec::<u64>::new());
        assert!(h.after(1, 5).is_none(), "2 is gone");
        assert!(h.after(6, 5).is_none(), "beyond the top");
        let empty = History::new(3);
        assert_eq!(seqs(empty.after(9, 9).unwrap()), Vec::<u64>::new(), "nothing missed");
        assert!(empty.after(8, 9).is_none(), "9 expired");
    }

    #[test]
    fn pages() {
        let mut h = History::new(10);
        for s in 1..=6 {
            h.push(m(s));
        }
        let ids = |v: Vec<Arc<RoomMessage>>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(ids(h.page(None, 2)), vec![5, 6]);
        assert_eq!(ids(h.page(Some(2), 2)), vec![3, 4]);
        assert_eq!(ids(h.page(Some(0), 100)), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(ids(h.page(Some(6), 5)), Vec::<u64>::new());
    }
}
