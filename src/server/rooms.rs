//! One loop's side of the room service: joining and leaving through the broker, adding members
//! when the broker's answer arrives (in order with the room's messages), replaying history,
//! fanning messages and presence events out to local members, and publishing.
//!
//! Owns the loop's member lists; connections are passed in, so nothing here calls back into the
//! event loop.

use std::sync::Arc;

use bytes::Bytes;
use slab::Slab;

use super::conn::{Conn, Route, Seat, Take, PENDING};
use super::metrics::LoopMetrics;
use super::relay::Relay;
use crate::broker::{Broker, Join, Joined, LoopId, Publish, Tag};
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
}

/// What a publish attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Published {
    Sent,
    Refused(Refusal),
    /// Over the rate limit again and again: close the connection with 1008.
    Flooding,
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
    pub fn new(lp: LoopId, broker: Arc<dyn Broker>, max_rooms: usize, publish_rate: u32) -> Rooms {
        Rooms { lp, broker, local: LocalRooms::default(), max_rooms, publish_rate }
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
        let user = peer.identity.user.clone();
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
        let c = &mut conns[key];
        let wire = if c.route == Route::V1 { Wire::V1 } else { Wire::Raw };
        let Some(peer) = c.peer.as_mut() else { return };
        let presence = peer.seats[si].presence;
        peer.seats[si].pos = self.local.add(idx, Member { key: to.key, wire, presence });
        m.joins_total.inc();
        m.rooms.set(self.local.len() as u64);
        if wire == Wire::V1 {
            let name = self.local.get(idx).map(|r| r.name.clone()).unwrap_or_default();
            let reply = v1_frame(|o| v1::write_joined(o, j.id.as_deref(), &name, &j.epoch, j.top, j.recovered));
            relay.send(key, c, &reply, m);
            for msg in &j.replay {
                relay.send(key, c, msg.frame(Wire::V1), m);
            }
            m.messages_sent_total.add(j.replay.len() as u64);
            m.messages_recovered_total.add(j.replay.len() as u64);
        }
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
    /// join again with `since` and learn what was recovered. Seed-mode members stay.
    pub fn on_reset(
        &mut self,
        conns: &mut Slab<Conn>,
        relay: &mut Relay,
        m: &LoopMetrics,
        room: RoomId,
        message: &str,
    ) {
        let Some(idx) = self.local.by_id(room) else { return };
        let Some(r) = self.local.get(idx) else { return };
        let frame = v1_frame(|o| v1::write_room_error(o, None, &r.name, ErrorCode::Unavailable, message));
        let keys: Vec<usize> = r.members.iter().filter(|mb| mb.wire == Wire::V1).map(|mb| mb.key as usize).collect();
        for key in keys {
            let Some(si) = conns.get(key).and_then(|c| c.peer.as_ref()).and_then(|p| p.seat(idx)) else { continue };
            self.remove_seat(conns, key, si, false);
            relay.send(key, &mut conns[key], &frame, m);
            m.v1_errors_total.inc();
        }
        m.rooms.set(self.local.len() as u64);
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
        let user = peer.identity.user.clone();
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
    pub fn deliver(&self, conns: &mut Slab<Conn>, relay: &mut Relay, m: &LoopMetrics, room: RoomId, msg: &RoomMessage) {
        let Some(r) = self.local.by_id(room).and_then(|idx| self.local.get(idx)) else { return };
        let mut sent = 0;
        for member in &r.members {
            let key = member.key as usize;
            let Some(c) = conns.get_mut(key) else { continue };
            if msg.origin.is_some_and(|o| o.lp as usize == self.lp && o.key == member.key && o.gen == c.gen) {
                continue;
            }
            if c.sess.phase() != Phase::Open {
                continue;
            }
            relay.send(key, c, msg.frame(member.wire), m);
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
        for member in r.members.iter().filter(|mb| mb.presence && mb.wire == Wire::V1) {
            let key = member.key as usize;
            if let Some(c) = conns.get_mut(key).filter(|c| c.sess.phase() == Phase::Open) {
                relay.send(key, c, ev.frame(), m);
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
        if !peer.identity.may_publish {
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
            from: peer.identity.user.clone(),
            payload,
            origin: Some(origin),
            ack: ack.map(|id| (origin, id)),
        });
        Published::Sent
    }
}
