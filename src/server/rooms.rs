//! One loop's side of the room service: joining and leaving through the broker, adding members
//! when the broker's answer arrives (in order with the room's messages), replaying history,
//! fanning messages and presence events out to local members, and publishing.
//!
//! Owns the loop's member lists; connections are passed in, so nothing here calls back into the
//! event loop.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use slab::Slab;

use super::conn::{Conn, Peer, Pending, Route, Seat, Take, PENDING};
use super::metrics::LoopMetrics;
use super::relay::Relay;
use crate::auth::Identity;
use crate::broker::{Broker, Join, Joined, LoopId, Publish, Tag};
use crate::proto::sse;
use crate::proto::v1::{self, ErrorCode, Position};
use crate::proto::ws::frame::{self, Data, OpCode};
use crate::proto::ws::session::Phase;
use crate::rooms::members::{LocalRooms, Member, RoomId};
use crate::rooms::message::{ConnRef, Payload, PresenceEvent, RoomMessage, Wire};

/// A refused request: the v1 error to answer with.
pub type Refusal = (ErrorCode, String);

#[derive(Debug)]
pub struct Rooms {
    lp: LoopId,
    broker: Arc<dyn Broker>,
    local: LocalRooms,
    max_rooms: usize,
    publish_rate: u32,
    /// Messages under this size go uncompressed to deflate members (`--deflate-min-size`).
    deflate_min: usize,
    /// Long polls with an answer: the worker answers and ends them.
    woken: Vec<PollReady>,
    /// Tells this process's anonymous senders from another's (see [`Rooms::sender`]).
    anon_nonce: u32,
    /// What waits for the broker's answer to a join, by connection: kept here rather than in
    /// the `Peer` every member carries (few members have any, and only for a moment).
    pending: HashMap<u32, Pending>,
}

/// A long poll's answer is ready: messages after its position (or none: where the room is now).
#[derive(Debug)]
pub struct PollReady {
    pub to: ConnRef,
    pub messages: Vec<Arc<RoomMessage>>,
    /// The room's position after `messages` (the next poll's `since`).
    pub epoch: Arc<str>,
    pub seq: u64,
    /// False: the position asked for is gone (another epoch, or older than the history).
    pub recovered: bool,
}

/// What a publish attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    Sent,
    Refused(Refusal),
    /// Over the rate limit again and again: close the connection with 1008.
    Flooding,
}

fn peer_of(c: &Conn) -> &Peer {
    c.peer.as_deref().expect("room members have a peer")
}

/// Encode a v1 reply as a text frame.
pub fn v1_frame(write: impl FnOnce(&mut Vec<u8>)) -> Bytes {
    let mut json = Vec::with_capacity(128);
    write(&mut json);
    let mut f = Vec::with_capacity(json.len() + 10);
    frame::write_frame(&mut f, OpCode::Data(Data::Text), &json);
    Bytes::from(f)
}

impl Rooms {
    /// `anon_nonce`: random per loop and start.
    pub fn new(
        lp: LoopId,
        broker: Arc<dyn Broker>,
        max_rooms: usize,
        publish_rate: u32,
        deflate_min: usize,
        anon_nonce: u32,
    ) -> Rooms {
        Rooms {
            lp,
            broker,
            local: LocalRooms::default(),
            max_rooms,
            publish_rate,
            deflate_min,
            woken: Vec::new(),
            anon_nonce,
            pending: HashMap::new(),
        }
    }

    /// A seed-mode member's `Sec-WebSocket-Accept`, kept until the broker has it in its room.
    pub fn await_upgrade(&mut self, key: usize, accept: [u8; 28]) {
        self.pending.insert(key as u32, Pending::Upgrade(accept));
    }

    pub fn take_upgrade(&mut self, key: usize) -> Option<[u8; 28]> {
        match self.pending.remove(&(key as u32)) {
            Some(Pending::Upgrade(a)) => Some(a),
            Some(other) => {
                self.pending.insert(key as u32, other);
                None
            }
            None => None,
        }
    }

    /// The position connection `key` asked for in local room `room`, while its join is
    /// unanswered.
    pub fn since(&self, key: usize, room: u32) -> Option<&Position> {
        match self.pending.get(&(key as u32)) {
            Some(Pending::Since(v)) => v.iter().find(|(r, _)| *r == room).map(|(_, p)| p),
            _ => None,
        }
    }

    /// Forget the position asked for in `room` (its join was answered).
    fn answered(&mut self, key: usize, room: u32) {
        if let Some(Pending::Since(v)) = self.pending.get_mut(&(key as u32)) {
            v.retain(|(r, _)| *r != room);
            if v.is_empty() {
                self.pending.remove(&(key as u32));
            }
        }
    }

    /// Connection `key` is gone.
    pub fn forget(&mut self, key: usize) {
        self.pending.remove(&(key as u32));
    }

    /// The `from` of a message sent by `identity` on connection `conn`: its user, or for an
    /// anonymous connection a name made from the connection (`anon-NONCE-LOOP-KEY-GEN`), so
    /// anonymous members carry no name of their own while idle.
    pub fn sender(&self, identity: &Identity, conn: ConnRef) -> Arc<str> {
        if identity.is_anonymous() {
            format!("anon-{:08x}-{}-{}-{}", self.anon_nonce, conn.lp, conn.key, conn.gen).into()
        } else {
            identity.user().clone()
        }
    }

    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    pub fn publish_rate(&self) -> u32 {
        self.publish_rate
    }

    /// Rooms with members (or joins in flight) on this loop.
    pub fn len(&self) -> usize {
        self.local.len()
    }

    pub fn is_empty(&self) -> bool {
        self.local.is_empty()
    }

    /// Where local room `idx` is: the epoch and seq of its last message here.
    pub fn position(&self, idx: u32) -> Option<(Arc<str>, u64)> {
        self.local.get(idx).and_then(|r| r.last.clone())
    }

    /// The name of the room the broker calls `id` (empty when this loop does not have it).
    pub fn name_of(&self, id: RoomId) -> Arc<str> {
        self.local.by_id(id).and_then(|idx| self.name(idx)).unwrap_or_default()
    }

    /// The name of local room `idx`.
    pub fn name(&self, idx: u32) -> Option<std::sync::Arc<str>> {
        self.local.get(idx).map(|r| r.name.clone())
    }

    fn conn_ref(&self, key: usize, c: &Conn) -> ConnRef {
        ConnRef { lp: self.lp as u16, key: key as u32, gen: c.gen }
    }

    /// Ask the broker to let connection `key` join `room`; the member is added when
    /// [`Rooms::on_joined`] receives the answer.
    pub fn join(
        &mut self,
        conns: &mut Slab<Conn>,
        key: usize,
        room: &str,
        since: Option<Position>,
        presence: bool,
        id: Tag,
    ) -> Result<(), Refusal> {
        let to = self.conn_ref(key, &conns[key]);
        let Some(peer) = conns[key].peer.as_mut() else {
            return Err((ErrorCode::BadRequest, "this connection cannot join rooms".into()));
        };
        if !peer.identity.may_join(room) {
            return Err((ErrorCode::Forbidden, format!("this token may not join room {room:?}")));
        }
        let existing = self.local.find(room);
        if existing.and_then(|idx| peer.seat(idx)).is_some() {
            return Err((ErrorCode::BadRequest, format!("already in room {room:?}")));
        }
        if peer.seats.len() >= self.max_rooms {
            return Err((ErrorCode::TooManyRooms, format!("at most {} rooms per connection", self.max_rooms)));
        }
        let idx = existing.unwrap_or_else(|| {
            let id = self.broker.subscribe(self.lp, room);
            self.local.insert(id, room.into())
        });
        if let Some(r) = self.local.get_mut(idx) {
            r.pending += 1;
        }
        peer.seats.push(Seat { room: idx, pos: PENDING, presence });
        if let (Some(p), Route::Sse | Route::Poll) = (&since, conns[key].route) {
            // Kept until the join is answered: a poll's timeout answers with it, a stream's ids carry it.
            match self.pending.entry(key as u32).or_insert_with(|| Pending::Since(Vec::new())) {
                Pending::Since(v) => v.push((idx, p.clone())),
                Pending::Upgrade(_) => {}
            }
        }
        let peer = conns[key].peer.as_mut().expect("checked above");
        let user = peer.identity.user().clone();
        self.broker.join(Join { lp: self.lp, to, room, user: &user, since, id });
        Ok(())
    }

    /// The broker's answer to a join: add the member, then (v1) the `joined` reply and the
    /// replayed messages, all before any later message of the room.
    pub fn on_joined(
        &mut self,
        conns: &mut Slab<Conn>,
        relay: &mut Relay,
        m: &LoopMetrics,
        to: ConnRef,
        room: RoomId,
        j: Joined,
    ) {
        let Some(idx) = self.local.by_id(room) else { return };
        if let Some(r) = self.local.get_mut(idx) {
            r.pending = r.pending.saturating_sub(1);
        }
        let key = to.key as usize;
        let live = conns.get(key).is_some_and(|c| c.gen == to.gen);
        let seat = live.then(|| conns[key].peer.as_ref().and_then(|p| p.seat(idx))).flatten();
        let Some(si) = seat.filter(|&si| conns[key].peer.as_ref().is_some_and(|p| p.seats[si].pos == PENDING)) else {
            // Gone (or left) before the answer came: the departure already told the broker.
            self.release(idx);
            return;
        };
        if let Some(r) = self.local.get_mut(idx) {
            r.last = Some((j.epoch.clone(), j.top));
        }
        let c = &mut conns[key];
        let wire = match c.route {
            Route::V1 => Wire::V1,
            Route::Sse if c.peer.as_ref().is_some_and(|p| p.seats.len() == 1) => Wire::SseOne,
            Route::Sse => Wire::Sse,
            Route::Poll => Wire::Poll,
            _ => Wire::Raw,
        };
        let wire = if c.sess.deflate() { wire.deflated() } else { wire };
        let since = self.since(key, idx).cloned();
        self.answered(key, idx);
        let Some(peer) = c.peer.as_mut() else { return };
        let presence = peer.seats[si].presence;
        peer.seats[si].pos = self.local.add(idx, Member { key: to.key, wire, presence });
        m.joins_total.inc();
        m.rooms.set(self.local.len() as u64);
        let name = self.local.get(idx).map(|r| r.name.clone()).unwrap_or_default();
        match wire {
            Wire::V1 | Wire::V1Deflate => {
                let reply = v1_frame(|o| v1::write_joined(o, j.id.as_deref(), &name, &j.epoch, j.top, j.recovered));
                relay.send(key, c, &reply, m);
                for msg in &j.replay {
                    relay.send(key, c, msg.frame_for(wire, self.deflate_min), m);
                }
            }
            Wire::Sse | Wire::SseOne => {
                // `joined` carries the position before the replay: a stream cut during the
                // replay resumes from there.
                let before = j.replay.first().map_or(j.top, |msg| msg.seq.saturating_sub(1));
                let mut json = Vec::with_capacity(96 + name.len());
                v1::write_joined(&mut json, None, &name, &j.epoch, j.top, j.recovered);
                let id = self.sse_id(key, peer_of(c), idx, Some((&j.epoch, before)));
                let mut ev = Vec::with_capacity(json.len() + id.len() + 32);
                sse::write_event(&mut ev, Some(&id), "joined", &json);
                relay.send(key, c, &Bytes::from(ev), m);
                for msg in &j.replay {
                    self.send_sse(key, c, idx, wire, msg, relay, m);
                }
            }
            Wire::Poll => {
                if !j.replay.is_empty() || !j.recovered || since.is_none() {
                    let seq = j.replay.last().map_or(j.top, |msg| msg.seq);
                    let recovered = j.recovered || since.is_none();
                    self.woken.push(PollReady { to, messages: j.replay, epoch: j.epoch, seq, recovered });
                    return;
                }
                return; // parked until a message comes, or --poll-timeout
            }
            Wire::Raw | Wire::RawDeflate => return,
        }
        m.messages_sent_total.add(j.replay.len() as u64);
        m.messages_recovered_total.add(j.replay.len() as u64);
    }

    /// The id of an event stream after an event of room `idx` at `at` (none: where the room is):
    /// `ROOM:EPOCH:SEQ` for every room of the stream.
    fn sse_id(&self, key: usize, peer: &Peer, idx: u32, at: Option<(&str, u64)>) -> String {
        let mut positions: Vec<(&str, &str, u64)> = Vec::with_capacity(peer.seats.len());
        for seat in peer.seats.iter() {
            let Some(r) = self.local.get(seat.room) else { continue };
            let pos = match (seat.room == idx, at) {
                (true, Some((epoch, seq))) => Some((epoch, seq)),
                _ if seat.pos == PENDING => self.since(key, seat.room).map(|p| (p.epoch.as_str(), p.seq)),
                _ => r.last.as_ref().map(|(e, s)| (&**e, *s)),
            };
            if let Some((epoch, seq)) = pos {
                positions.push((&r.name, epoch, seq));
            }
        }
        sse::format_id(positions)
    }

    /// A room message to an event stream: one-room streams share the encoded event (its id
    /// included); a stream of several rooms writes its own id line first.
    #[allow(clippy::too_many_arguments)]
    fn send_sse(
        &self,
        key: usize,
        c: &mut Conn,
        idx: u32,
        wire: Wire,
        msg: &RoomMessage,
        relay: &mut Relay,
        m: &LoopMetrics,
    ) {
        if wire == Wire::Sse {
            let id = self.sse_id(key, peer_of(c), idx, Some((&msg.epoch, msg.seq)));
            relay.send(key, c, &Bytes::from(format!("id: {id}\n")), m);
        }
        relay.send(key, c, msg.frame(wire), m);
    }

    /// Long polls answered since the last call.
    pub fn take_woken(&mut self) -> Vec<PollReady> {
        std::mem::take(&mut self.woken)
    }

    /// A join the broker could not carry out: the connection's seat in the room goes. Returns
    /// the room's name when the connection was waiting for it (the caller tells it).
    pub fn on_join_failed(&mut self, conns: &mut Slab<Conn>, to: ConnRef, room: RoomId) -> Option<Arc<str>> {
        let idx = self.local.by_id(room)?;
        if let Some(r) = self.local.get_mut(idx) {
            r.pending = r.pending.saturating_sub(1);
        }
        let key = to.key as usize;
        let name = self.local.get(idx).map(|r| r.name.clone());
        let peer = conns.get_mut(key).filter(|c| c.gen == to.gen).and_then(|c| c.peer.as_mut());
        let si = peer
            .as_ref()
            .and_then(|p| p.seat(idx))
            .filter(|&si| peer.as_ref().is_some_and(|p| p.seats[si].pos == PENDING));
        let waiting = match (peer, si) {
            (Some(p), Some(si)) => {
                p.seats.swap_remove(si);
                true
            }
            _ => false,
        };
        self.release(idx);
        waiting.then_some(name).flatten()
    }

    /// The broker cannot continue room `room` from where its members are (its data was lost):
    /// v1 members are removed from it and told so (`error` `unavailable` with the room), to
    /// join again with `since` and learn what was recovered. Seed-mode members stay. Returns
    /// the event streams and long polls of the room, which the caller ends (their clients come
    /// back with their position and learn the same).
    pub fn on_reset(
        &mut self,
        conns: &mut Slab<Conn>,
        relay: &mut Relay,
        m: &LoopMetrics,
        room: RoomId,
        message: &str,
    ) -> Vec<usize> {
        let Some(idx) = self.local.by_id(room) else { return Vec::new() };
        let Some(r) = self.local.get(idx) else { return Vec::new() };
        let frame = v1_frame(|o| v1::write_room_error(o, None, &r.name, ErrorCode::Unavailable, message));
        let others: Vec<usize> = r
            .members
            .iter()
            .filter(|mb| matches!(mb.wire, Wire::Sse | Wire::SseOne | Wire::Poll))
            .map(|mb| mb.key as usize)
            .collect();
        let keys: Vec<usize> = r
            .members
            .iter()
            .filter(|mb| matches!(mb.wire, Wire::V1 | Wire::V1Deflate))
            .map(|mb| mb.key as usize)
            .collect();
        for key in keys {
            let Some(si) = conns.get(key).and_then(|c| c.peer.as_ref()).and_then(|p| p.seat(idx)) else { continue };
            self.remove_seat(conns, key, si, false);
            relay.send(key, &mut conns[key], &frame, m);
            m.v1_errors_total.inc();
        }
        m.rooms.set(self.local.len() as u64);
        others
    }

    /// Leave `room` (a v1 `leave`). False when the connection was not in it.
    pub fn leave(&mut self, conns: &mut Slab<Conn>, key: usize, room: &str, clean: bool) -> bool {
        let Some(idx) = self.local.find(room) else { return false };
        let Some(si) = conns[key].peer.as_ref().and_then(|p| p.seat(idx)) else { return false };
        self.remove_seat(conns, key, si, clean);
        true
    }

    /// The connection is going away: leave every room.
    pub fn leave_all(&mut self, conns: &mut Slab<Conn>, key: usize, clean: bool) {
        while conns[key].peer.as_ref().is_some_and(|p| !p.seats.is_empty()) {
            let last = conns[key].peer.as_ref().map_or(0, |p| p.seats.len() - 1);
            self.remove_seat(conns, key, last, clean);
        }
    }

    fn remove_seat(&mut self, conns: &mut Slab<Conn>, key: usize, si: usize, clean: bool) {
        let conn = self.conn_ref(key, &conns[key]);
        let Some(peer) = conns[key].peer.as_mut() else { return };
        let seat = peer.seats.swap_remove(si);
        let user = peer.identity.user().clone();
        if seat.pos != PENDING {
            if let Some(moved) = self.local.remove(seat.room, seat.pos) {
                if let Some(p) = conns.get_mut(moved as usize).and_then(|c| c.peer.as_mut()) {
                    if let Some(ms) = p.seat(seat.room) {
                        p.seats[ms].pos = seat.pos;
                    }
                }
            }
        }
        if let Some(r) = self.local.get(seat.room) {
            let name = r.name.clone();
            self.broker.leave(self.lp, &name, &user, conn, clean);
        }
        self.release(seat.room);
    }

    /// Forget a local room nobody uses any more, and unsubscribe from it.
    fn release(&mut self, idx: u32) {
        if let Some(r) = self.local.release_if_unused(idx) {
            self.broker.unsubscribe(self.lp, &r.name, r.id);
        }
    }

    /// Fan a message out to this loop's members of its room (except its publisher).
    pub fn deliver(
        &mut self,
        conns: &mut Slab<Conn>,
        relay: &mut Relay,
        m: &LoopMetrics,
        room: RoomId,
        msg: &Arc<RoomMessage>,
    ) {
        let Some(idx) = self.local.by_id(room) else { return };
        let Some(r) = self.local.get_mut(idx) else { return };
        r.last = Some((msg.epoch.clone(), msg.seq));
        let r = &self.local.get(idx).expect("just found");
        let mut sent = 0;
        for member in &r.members {
            let key = member.key as usize;
            let Some(c) = conns.get_mut(key) else { continue };
            if msg.origin.is_some_and(|o| o.lp as usize == self.lp && o.key == member.key && o.gen == c.gen) {
                continue;
            }
            match member.wire {
                Wire::Poll => {
                    if !self.woken.iter().any(|w| w.to.key == member.key) {
                        let to = ConnRef { lp: self.lp as u16, key: member.key, gen: c.gen };
                        let (epoch, seq) = (msg.epoch.clone(), msg.seq);
                        self.woken.push(PollReady { to, messages: vec![msg.clone()], epoch, seq, recovered: true });
                    }
                    continue;
                }
                _ if c.sess.phase() != Phase::Open => continue,
                Wire::Sse => self.send_sse(key, c, idx, Wire::Sse, msg, relay, m),
                wire => relay.send(key, c, msg.frame_for(wire, self.deflate_min), m),
            }
            sent += 1;
        }
        m.messages_sent_total.add(sent);
    }

    /// A presence change, to the v1 members that asked for presence events.
    pub fn presence(
        &self,
        conns: &mut Slab<Conn>,
        relay: &mut Relay,
        m: &LoopMetrics,
        room: RoomId,
        ev: &PresenceEvent,
    ) {
        let Some(r) = self.local.by_id(room).and_then(|idx| self.local.get(idx)) else { return };
        for member in r.members.iter().filter(|mb| mb.presence) {
            let frame = match member.wire {
                Wire::V1 | Wire::V1Deflate => ev.frame(),
                Wire::Sse | Wire::SseOne => ev.sse(),
                Wire::Raw | Wire::RawDeflate | Wire::Poll => continue,
            };
            let key = member.key as usize;
            if let Some(c) = conns.get_mut(key).filter(|c| c.sess.phase() == Phase::Open) {
                relay.send(key, c, frame, m);
                m.presence_events_sent_total.inc();
            }
        }
    }

    /// Publish `payload` to `room` from connection `key`, which must be in it and allowed to.
    /// `ack`: v1 wants a `published` answer with this id.
    pub fn publish(
        &self,
        conns: &mut Slab<Conn>,
        key: usize,
        room: &str,
        payload: Payload,
        ack: Option<Tag>,
        now_ms: u32,
    ) -> Published {
        let origin = self.conn_ref(key, &conns[key]);
        let Some(peer) = conns[key].peer.as_mut() else {
            return Published::Refused((ErrorCode::BadRequest, "not a room connection".into()));
        };
        if self.local.find(room).and_then(|idx| peer.seat(idx)).is_none() {
            return Published::Refused((ErrorCode::NotJoined, format!("join room {room:?} before publishing")));
        }
        if !peer.identity.may_publish() {
            return Published::Refused((ErrorCode::Forbidden, "this token is read-only (publish: false)".into()));
        }
        match peer.bucket.take(self.publish_rate, now_ms) {
            Take::Ok => {}
            Take::Refused => {
                return Published::Refused((
                    ErrorCode::RateLimited,
                    format!("over --max-publish-rate ({} messages/s)", self.publish_rate),
                ))
            }
            Take::Flooding => return Published::Flooding,
        }
        self.broker.publish(Publish {
            lp: self.lp,
            room,
            from: self.sender(&peer.identity, origin),
            payload,
            origin: Some(origin),
            ack: ack.map(|id| (origin, id)),
        });
        Published::Sent
    }
}
