//! The `c100k.v1` side of a broadcast: the commands members send, the server messages they read,
//! and exact accounting from the server's sequence numbers.
//!
//! Each member remembers where it joined (the room's top then), every seq it received, the
//! messages it published itself (which the server does not send back), and any stretch it could
//! not recover after a reconnect. At the end, for each room, what every member should have
//! received is known exactly from the room's final top:
//! `expected = members × top − Σ (start + own publishes + skipped)`, so loss is
//! `expected − unique receipts`, with no assumption about who sent what when.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

use crate::payload::{Arrival, SeqTrack, Stamp};

/// The room name members of room number `r` join (the same as the seed mode's `?room={room}`).
pub fn room_name(r: u32) -> String {
    r.to_string()
}

/// `{"op":"join","id":"j","room":R}`, with `since` when resuming.
pub fn join(out: &mut Vec<u8>, room: &str, since: Option<(&str, u64)>) {
    use std::io::Write;
    let _ = write!(out, "{{\"op\":\"join\",\"id\":\"j\",\"room\":{}", serde_json::Value::from(room));
    if let Some((epoch, seq)) = since {
        let _ = write!(out, ",\"since\":{{\"epoch\":{},\"seq\":{seq}}}", serde_json::Value::from(epoch));
    }
    out.push(b'}');
}

/// `{"op":"publish","room":R,"data":` … `}` around a payload written by `data`.
pub fn publish(out: &mut Vec<u8>, room: &str, data: impl FnOnce(&mut Vec<u8>)) {
    use std::io::Write;
    let _ = write!(out, "{{\"op\":\"publish\",\"room\":{},\"data\":", serde_json::Value::from(room));
    data(out);
    out.push(b'}');
}

/// What the server said, as far as a bench member cares.
#[derive(Debug, Deserialize)]
pub struct Incoming<'a> {
    #[serde(borrow)]
    pub op: Cow<'a, str>,
    pub seq: Option<u64>,
    #[serde(borrow)]
    pub epoch: Option<Cow<'a, str>>,
    pub recovered: Option<bool>,
    pub data: Option<Stamp>,
}

pub fn parse(text: &[u8]) -> Option<Incoming<'_>> {
    serde_json::from_slice(text).ok()
}

/// One member's view of its room, kept across reconnects.
#[derive(Debug, Clone, Default)]
pub struct Member {
    pub room: u32,
    pub epoch: String,
    /// The room's top when this member first joined.
    pub start: u64,
    pub track: SeqTrack,
    /// Its own publishes the server acknowledged (it does not receive those).
    pub own: u64,
    /// Their seqs: a replay after a reconnect does bring them (to the new connection), and
    /// then they are ordinary deliveries.
    pub own_seqs: std::collections::BTreeSet<u64>,
    /// Messages it could not get back after a reconnect (`recovered: false`).
    pub skipped: u64,
    pub joined: bool,
    /// While resuming: the top the rejoin reported (replayed messages are those up to it).
    pub replay_to: u64,
}

/// What a `joined` meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Joined {
    First,
    Recovered,
    /// The position was gone: the messages in between are skipped, not lost.
    Unrecovered,
}

impl Member {
    pub fn new(room: u32) -> Member {
        Member { room, ..Member::default() }
    }

    /// The highest seq seen (where a resume starts).
    pub fn last(&self) -> u64 {
        self.track.next().saturating_sub(1).max(self.start)
    }

    pub fn on_joined(&mut self, epoch: &str, top: u64, recovered: bool) -> Joined {
        if !self.joined {
            self.joined = true;
            self.epoch = epoch.to_string();
            self.start = top;
            self.track = SeqTrack::starting_at(top + 1);
            return Joined::First;
        }
        self.replay_to = top;
        if recovered && epoch == self.epoch {
            return Joined::Recovered;
        }
        let last = self.last();
        self.skipped += top.saturating_sub(last);
        if epoch != self.epoch {
            // A new numbering: nothing of the old one can be expected any more.
            self.epoch = epoch.to_string();
        }
        self.track.skip_to(top + 1);
        Joined::Unrecovered
    }

    pub fn on_msg(&mut self, seq: u64) -> Arrival {
        if self.own_seqs.remove(&seq) {
            self.own -= 1;
        }
        self.track.see(seq)
    }

    /// The server acknowledged one of its publishes.
    pub fn on_published(&mut self, seq: Option<u64>) {
        self.own += 1;
        if let Some(s) = seq {
            self.own_seqs.insert(s);
        }
    }
}

/// Per-room sums for the exact expected count (mergeable across threads and processes).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RoomSums {
    /// Σ over members of start + own + skipped.
    pub base: BTreeMap<u32, u64>,
    /// The highest seq anyone saw or was acknowledged.
    pub top: BTreeMap<u32, u64>,
    pub members: BTreeMap<u32, u64>,
}

impl RoomSums {
    pub fn add_member(&mut self, m: &Member) {
        if !m.joined {
            return;
        }
        *self.base.entry(m.room).or_default() += m.start + m.own + m.skipped;
        *self.members.entry(m.room).or_default() += 1;
        let top = self.top.entry(m.room).or_default();
        *top = (*top).max(m.last());
    }

    pub fn saw(&mut self, room: u32, seq: u64) {
        let top = self.top.entry(room).or_default();
        *top = (*top).max(seq);
    }

    pub fn merge(&mut self, o: &RoomSums) {
        for (r, v) in &o.base {
            *self.base.entry(*r).or_default() += v;
        }
        for (r, v) in &o.members {
            *self.members.entry(*r).or_default() += v;
        }
        for (r, v) in &o.top {
            let t = self.top.entry(*r).or_default();
            *t = (*t).max(*v);
        }
    }

    /// Deliveries every member should have had.
    pub fn expected(&self) -> u64 {
        self.members
            .iter()
            .map(|(r, n)| {
                (n * self.top.get(r).copied().unwrap_or(0)).saturating_sub(self.base.get(r).copied().unwrap_or(0))
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_the_v1_json() {
        let mut o = Vec::new();
        join(&mut o, "3", Some(("e\"1", 9)));
        let v: serde_json::Value = serde_json::from_slice(&o).unwrap();
        assert_eq!(v, serde_json::json!({"op":"join","id":"j","room":"3","since":{"epoch":"e\"1","seq":9}}));
        o.clear();
        publish(&mut o, "3", |d| d.extend_from_slice(br#"{"s":1}"#));
        assert_eq!(std::str::from_utf8(&o).unwrap(), r#"{"op":"publish","room":"3","data":{"s":1}}"#);
        let m = parse(
            br#"{"op":"msg","room":"3","seq":7,"epoch":"e","from":"u","ts":1,"data":{"s":1,"q":2,"t":3,"p":"x"}}"#,
        )
        .unwrap();
        assert_eq!((m.op.as_ref(), m.seq, m.data.map(|d| d.q)), ("msg", Some(7), Some(2)));
    }

    #[test]
    fn expected_counts_come_from_the_server_numbering() {
        // Room 0: a joins at top 0 and publishes 2 of the 5 messages; b joins at top 1.
        let mut a = Member::new(0);
        a.on_joined("e", 0, false);
        a.own = 2;
        for s in [2, 4, 5] {
            a.on_msg(s);
        }
        let mut b = Member::new(0);
        b.on_joined("e", 1, false);
        for s in [2, 3, 5] {
            b.on_msg(s); // 4 lost
        }
        let mut sums = RoomSums::default();
        sums.add_member(&a);
        sums.add_member(&b);
        sums.saw(0, 5);
        // a should get 5 - 0 - 2 = 3, b 5 - 1 = 4.
        assert_eq!(sums.expected(), 7);
    }

    #[test]
    fn resumes_recovered_or_skipped() {
        let mut m = Member::new(0);
        m.on_joined("e", 10, false);
        m.on_msg(11);
        m.on_msg(12);
        assert_eq!(m.last(), 12);
        assert_eq!(m.on_joined("e", 20, true), Joined::Recovered);
        assert_eq!((m.replay_to, m.skipped), (20, 0));
        for s in 13..=20 {
            assert_eq!(m.on_msg(s), Arrival::InOrder);
        }
        assert_eq!(m.on_joined("e", 30, false), Joined::Unrecovered);
        assert_eq!(m.skipped, 10, "21..=30 skipped, not lost");
        assert_eq!(m.on_msg(31), Arrival::InOrder);
        let mut sums = RoomSums::default();
        sums.add_member(&m);
        assert_eq!(sums.expected(), 31 - 10 - 10, "received 11..=20 and 31");
    }

    #[test]
    fn own_messages_replayed_to_a_new_connection_count_as_deliveries() {
        let mut m = Member::new(0);
        m.on_joined("e", 0, false);
        m.on_msg(1);
        m.on_published(Some(2));
        // Reconnected with since 1: the replay brings 2 (its own) and 3.
        assert_eq!(m.on_joined("e", 3, true), Joined::Recovered);
        m.on_msg(2);
        m.on_msg(3);
        let mut sums = RoomSums::default();
        sums.add_member(&m);
        assert_eq!(sums.expected(), 3, "1, 2 and 3 were all received");
    }
}
