//! The broker: the one place that numbers a room's messages, keeps its history and presence, and
//! tells every subscribed event loop what happened, in one order.
//!
//! Event loops send requests (subscribe, join, leave, publish, history, presence) and never wait:
//! every outcome comes back as an [`Event`] posted to the loop's mailbox through a [`Sink`]. For a
//! given room, a broker posts events to each loop in the room's order — messages in seq order, a
//! join's result after every message up to the joiner's starting point and before every later one
//! — which is what lets a loop add the member, replay history and go live with no gap and no
//! duplicate. The in-memory broker ([`memory`]) is the embedded default; a Redis broker plugs in
//! behind the same trait.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use crate::proto::v1::{ErrorCode, Position};
use crate::rooms::history::Delta;
use crate::rooms::members::RoomId;
use crate::rooms::message::{ConnRef, Payload, PresenceEvent, RoomMessage};

/// An event loop's index in this process.
pub type LoopId = usize;

/// A command's `id` (raw JSON text) to copy into its answer.
pub type Tag = Option<Box<str>>;

/// What a broker tells a loop.
#[derive(Debug)]
pub enum Event {
    /// A room message for this loop's members (except its origin).
    Deliver { room: RoomId, msg: Arc<RoomMessage> },
    /// A presence change for members that asked for presence events.
    Presence { room: RoomId, ev: Arc<PresenceEvent> },
    /// The result of a join, in order with the room's messages.
    Joined { to: ConnRef, room: RoomId, result: Joined },
    /// The answer to a publish, history or presence request (or its failure).
    Reply { to: ConnRef, id: Tag, reply: Reply },
    /// A join could not be carried out (the broker is unreachable): the member is not in the room.
    JoinFailed { to: ConnRef, room: RoomId, id: Tag, message: String },
    /// The room's numbering restarted, or messages this node missed are gone from history: its
    /// v1 members cannot continue from where they are and must join again.
    Reset { room: RoomId, message: String },
}

/// Where a joining member starts.
#[derive(Debug)]
pub struct Joined {
    /// The join command's id.
    pub id: Tag,
    pub epoch: Arc<str>,
    /// The room's latest seq when the member joined: live messages after it follow.
    pub top: u64,
    /// `since` was honoured: `replay` holds exactly the messages after it, up to `top`.
    pub recovered: bool,
    pub replay: Vec<Arc<RoomMessage>>,
}

/// Answers to requests.
#[derive(Debug)]
pub enum Reply {
    Published { room: Arc<str>, seq: u64, epoch: Arc<str> },
    History { room: Arc<str>, epoch: Arc<str>, messages: Vec<Arc<RoomMessage>> },
    Presence { room: Arc<str>, users: Vec<(Arc<str>, u32)> },
    Error { code: ErrorCode, message: String },
}

/// How a broker reaches the event loops of this process.
pub trait Sink: Send + Sync {
    /// Post `ev` to loop `lp`. `wake`: the loop may be asleep (false when the caller is that
    /// loop itself, which looks at its mailbox before it sleeps).
    fn post(&self, lp: LoopId, ev: Event, wake: bool);
}

/// Process-wide gauges a broker keeps up to date (history held in memory).
pub trait Gauges: Send + Sync {
    fn history(&self, d: Delta);
    /// Rooms the broker holds state for (`+1` created, `-1` forgotten).
    fn rooms(&self, d: i64);
    /// A request to an external broker (Redis) failed.
    fn broker_error(&self) {}
    /// The external broker became reachable again (true) or unreachable (false); called on
    /// changes only, starting from reachable.
    fn broker_up(&self, _up: bool) {}
    /// Redis work in flight from this process changed by `d` (calls, a join counting each
    /// joiner).
    fn redis_in_flight(&self, _d: i64) {}
    /// Redis work waiting in this process for its turn changed by `d`.
    fn redis_waiting(&self, _d: i64) {}
    /// A join waited too long for its turn and was answered `unavailable`.
    fn redis_shed(&self) {}
    /// A publish refused by the room's rate limit.
    fn room_refused(&self);
}

/// How many messages a second a room accepts (`--max-room-rate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RoomRate {
    Off,
    /// This many messages a second, with a burst of as many.
    Fixed(u32),
    /// A delivery budget: this many deliveries a second, divided by the room's members (at
    /// least [`MIN_AUTO_ROOM_RATE`] messages a second).
    Auto(u32),
}

/// The least an automatic room rate allows, however large the room.
pub const MIN_AUTO_ROOM_RATE: u32 = 10;

/// Default delivery budget per room for [`RoomRate::Auto`].
pub const ROOM_DELIVERIES_PER_SEC: u32 = 100_000;

impl RoomRate {
    /// Messages a second for a room of `members` connections (`None`: no limit).
    pub fn for_members(self, members: u64) -> Option<u32> {
        match self {
            RoomRate::Off => None,
            RoomRate::Fixed(n) => Some(n),
            RoomRate::Auto(budget) => {
                Some((u64::from(budget) / members.max(1)).clamp(u64::from(MIN_AUTO_ROOM_RATE), u64::from(budget)) as u32)
            }
        }
    }

    /// `auto`, `auto:DELIVERIES` (deliveries/s per room), `0` (off) or messages/s.
    pub fn parse(s: &str) -> Result<RoomRate, String> {
        let s = s.trim();
        if s == "auto" {
            return Ok(RoomRate::Auto(ROOM_DELIVERIES_PER_SEC));
        }
        if let Some(b) = s.strip_prefix("auto:") {
            let b: u32 = b.parse().map_err(|_| format!("'{s}': auto:DELIVERIES_PER_SECOND"))?;
            return Ok(RoomRate::Auto(b.max(1)));
        }
        match s.parse::<u32>() {
            Ok(0) => Ok(RoomRate::Off),
            Ok(n) => Ok(RoomRate::Fixed(n)),
            Err(_) => Err(format!("'{s}' is not a number of messages per second, 0 or auto")),
        }
    }
}

/// Room settings shared by every broker.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Event loops in this process.
    pub loops: usize,
    /// Messages kept per room.
    pub history_size: usize,
    /// History is dropped this long after a room's last publish.
    pub history_ttl: Duration,
    /// A user whose last connection ended uncleanly stays present this long.
    pub presence_grace: Duration,
    /// How many messages a second one room accepts.
    pub room_rate: RoomRate,
}

/// A join request.
#[derive(Debug)]
pub struct Join<'a> {
    pub lp: LoopId,
    pub to: ConnRef,
    pub room: &'a str,
    pub user: &'a Arc<str>,
    pub since: Option<Position>,
    pub id: Tag,
}

/// A publish request.
#[derive(Debug)]
pub struct Publish<'a> {
    /// The calling loop (or `None` off-loop).
    pub lp: LoopId,
    pub room: &'a str,
    pub from: Arc<str>,
    pub payload: Payload,
    /// The publishing connection, left out of the fan-out.
    pub origin: Option<ConnRef>,
    /// Where the `published` answer goes, if anyone wants it.
    pub ack: Option<(ConnRef, Tag)>,
}

/// A history or presence query.
#[derive(Debug)]
pub struct Query<'a> {
    pub lp: LoopId,
    pub to: ConnRef,
    pub id: Tag,
    pub room: &'a str,
}

/// The seam between the event loops and whatever keeps rooms (memory, Redis).
pub trait Broker: Send + Sync + std::fmt::Debug {
    /// Loop `lp` has its first member (or join in flight) in `room`: deliver the room's events
    /// to it from now on. Returns the room's id for this subscription.
    fn subscribe(&self, lp: LoopId, room: &str) -> RoomId;
    /// Loop `lp` has no members left in `room`.
    fn unsubscribe(&self, lp: LoopId, room: &str, id: RoomId);
    /// A member joins (its loop is subscribed): answers with [`Event::Joined`].
    fn join(&self, j: Join<'_>);
    /// Connection `conn` of `user` left `room` (perhaps before its join was answered); `clean`
    /// (a `leave`, or close 1000/1001) skips the presence grace.
    fn leave(&self, lp: LoopId, room: &str, user: &Arc<str>, conn: ConnRef, clean: bool);
    fn publish(&self, p: Publish<'_>);
    /// Up to `limit` messages, after `since` (oldest first) or the newest.
    fn history(&self, q: Query<'_>, since: Option<Position>, limit: usize);
    fn presence(&self, q: Query<'_>);
    /// Whether the broker can serve requests (for `/healthz`).
    fn status(&self) -> Result<(), String>;
    /// Stop background work (timers); called once at shutdown.
    fn stop(&self) {}
}

/// A seed for [`new_epoch`]: different in every process and at every start.
pub fn seed() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    (t ^ (u64::from(std::process::id()) << 32)) | 1
}

/// The next 64 random bits of `state` (splitmix64): epochs, node names, timer jitter.
pub fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fresh epoch: 12 hex digits (48 random bits of `state`).
pub fn new_epoch(state: &mut u64) -> String {
    format!("{:012x}", next_random(state) & 0xffff_ffff_ffff)
}
