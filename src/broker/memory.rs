//! The in-memory broker: rooms of one process, the embedded default (no dependencies).
//!
//! Each room's state sits behind its own lock. Numbering a message, appending it to history and
//! posting it to every subscribed loop's mailbox happen under that lock, so every loop's mailbox
//! receives the room's messages in seq order, and a join's result lands between the messages
//! before and after its starting point. A housekeeping thread ends presence grace periods and
//! expires idle history on deadlines kept in a heap (one entry per room at a time), so its work
//! follows the deadlines, not the number of rooms.
//!
//! History expiry: `history_ttl` after a room's last publish its messages are dropped. The
//! numbering (epoch and seq) is kept while the room has members, so members that were merely
//! quiet resume with `recovered: true`; a room with no members, no presence and no history for
//! `history_ttl` is forgotten, and its next use starts a new epoch.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{Broker, Event, Gauges, Join, Joined, LoopId, Publish, Query, Reply, Settings, Sink};
use crate::proto::v1::{ErrorCode, Position};
use crate::rooms::history::History;
use crate::rooms::members::RoomId;
use crate::rooms::message::{ConnRef, PresenceEvent, RoomMessage};
use crate::rooms::presence::{Leave, Presence};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Room {
    id: RoomId,
    name: Arc<str>,
    st: Mutex<State>,
}

struct State {
    epoch: Arc<str>,
    seq: u64,
    history: History,
    last_publish: Instant,
    /// Last publish, join or departure of a loop: an unused room is forgotten `ttl` after it.
    last_active: Instant,
    /// Bit per loop: subscribed.
    loops: Vec<u64>,
    presence: Presence,
    /// The deadline of this room's entry in the housekeeping heap.
    check_at: Option<Instant>,
    /// Removed from the map: requests that got here late look the room up again.
    dead: bool,
    /// The room's rate limit: tokens left and when they were counted.
    tokens: f64,
    tokens_at: Instant,
}

impl State {
    /// Take one publish from the room's rate limit (`--max-room-rate`). False: refused.
    fn admit(&mut self, rate: Option<u32>, now: Instant) -> bool {
        let Some(rate) = rate else { return true };
        let cap = f64::from(rate.max(1));
        let refill = now.duration_since(self.tokens_at).as_secs_f64() * cap;
        self.tokens = (self.tokens + refill).min(cap);
        self.tokens_at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl State {
    fn subscribed(&self) -> impl Iterator<Item = LoopId> + '_ {
        self.loops.iter().enumerate().flat_map(|(w, &word)| {
            let mut bits = word;
            std::iter::from_fn(move || {
                (bits != 0).then(|| {
                    let b = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    w * 64 + b
                })
            })
        })
    }

    fn unused(&self) -> bool {
        self.loops.iter().all(|w| *w == 0) && self.presence.is_empty()
    }
}

/// A room to look at, and when: (deadline, room id, room name).
type Due = Reverse<(Instant, u64, Arc<str>)>;

/// Deadlines for the housekeeping thread.
struct Timers {
    heap: Mutex<BinaryHeap<Due>>,
    wake: Condvar,
    stop: AtomicBool,
}

struct Inner {
    cfg: Settings,
    sink: Arc<dyn Sink>,
    gauges: Arc<dyn Gauges>,
    rooms: Mutex<HashMap<Arc<str>, Arc<Room>>>,
    next_id: AtomicU64,
    timers: Timers,
    rng: Mutex<u64>,
}

/// The in-memory broker (see the module docs).
pub struct MemoryBroker {
    inner: Arc<Inner>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker").field("rooms", &lock(&self.inner.rooms).len()).finish()
    }
}

impl MemoryBroker {
    pub fn new(cfg: Settings, sink: Arc<dyn Sink>, gauges: Arc<dyn Gauges>) -> MemoryBroker {
        let seed = super::seed();
        let inner = Arc::new(Inner {
            cfg,
            sink,
            gauges,
            rooms: Mutex::default(),
            next_id: AtomicU64::new(1),
            timers: Timers { heap: Mutex::default(), wake: Condvar::new(), stop: AtomicBool::new(false) },
            rng: Mutex::new(seed),
        });
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("c100k-rooms".into())
            .spawn(move || worker.housekeep())
            .map_err(|e| log::error!("cannot start the room housekeeping thread: {e}"))
            .ok();
        MemoryBroker { inner, thread: Mutex::new(thread) }
    }

    /// Rooms held (for tests).
    pub fn rooms(&self) -> usize {
        lock(&self.inner.rooms).len()
    }
}

impl Drop for MemoryBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Inner {
    fn new_epoch(&self) -> Arc<str> {
        super::new_epoch(&mut lock(&self.rng)).into()
    }

    /// Run `f` on the room named `name` (created, with a new epoch, if unknown) with its state
    /// locked. A room removed while we waited for its lock is looked up again.
    fn with_room<R>(&self, name: &str, f: impl FnOnce(&Room, &mut State) -> R) -> R {
        loop {
            let room = {
                let mut map = lock(&self.rooms);
                match map.get(name) {
                    Some(r) => r.clone(),
                    None => {
                        let now = Instant::now();
                        let name: Arc<str> = name.into();
                        let room = Arc::new(Room {
                            id: RoomId(self.next_id.fetch_add(1, Ordering::Relaxed)),
                            name: name.clone(),
                            st: Mutex::new(State {
                                epoch: self.new_epoch(),
                                seq: 0,
                                history: History::new(self.cfg.history_size),
                                last_publish: now,
                                last_active: now,
                                loops: vec![0; self.cfg.loops.div_ceil(64).max(1)],
                                presence: Presence::default(),
                                check_at: None,
                                dead: false,
                                tokens: f64::from(self.cfg.room_rate.for_members(1).unwrap_or(0)),
                                tokens_at: now,
                            }),
                        });
                        map.insert(name, room.clone());
                        self.gauges.rooms(1);
                        room
                    }
                }
            };
            let mut st = lock(&room.st);
            if st.dead {
                continue;
            }
            if st.check_at.is_none() {
                // Every room has a pending check, so an unused one is always forgotten.
                let at = Instant::now() + self.cfg.history_ttl;
                self.schedule(&room, &mut st, at);
            }
            return f(&room, &mut st);
        }
    }

    /// Ask the housekeeper to look at `room` at `at` (keeps the earliest deadline).
    fn schedule(&self, room: &Room, st: &mut State, at: Instant) {
        if st.check_at.is_some_and(|t| t <= at) {
            return;
        }
        st.check_at = Some(at);
        lock(&self.timers.heap).push(Reverse((at, room.id.0, room.name.clone())));
        self.timers.wake.notify_one();
    }

    fn post_all(&self, st: &State, caller: Option<LoopId>, ev: impl Fn() -> Event) {
        for l in st.subscribed() {
            self.sink.post(l, ev(), caller != Some(l));
        }
    }

    /// Presence leaves whose grace is over; drop expired history; forget an unused room.
    fn check(&self, name: &str, id: u64, now: Instant) {
        let mut map = lock(&self.rooms);
        let Some(room) = map.get(name).filter(|r| r.id.0 == id).cloned() else {
            return;
        };
        let mut st = lock(&room.st);
        st.check_at = None;
        let mut gone = Vec::new();
        st.presence.expire(now, &mut gone);
        for user in gone {
            let ev = Arc::new(PresenceEvent::new(room.name.clone(), user, false));
            self.post_all(&st, None, || Event::Presence { room: room.id, ev: ev.clone() });
        }
        let ttl = self.cfg.history_ttl;
        if !st.history.is_empty() && now >= st.last_publish + ttl {
            let d = st.history.clear();
            self.gauges.history(d);
        }
        if st.unused() && st.history.is_empty() && now >= st.last_active + ttl {
            st.dead = true;
            map.remove(name);
            self.gauges.rooms(-1);
            return;
        }
        drop(map);
        let mut next = st.presence.next_deadline();
        let mut consider = |t: Instant| next = Some(next.map_or(t, |n: Instant| n.min(t)));
        if !st.history.is_empty() {
            consider(st.last_publish + ttl);
        }
        if st.unused() {
            consider(st.last_active + ttl);
        }
        if let Some(at) = next {
            self.schedule(&room, &mut st, at.max(now + Duration::from_millis(1)));
        }
    }

    fn housekeep(&self) {
        loop {
            let mut heap = lock(&self.timers.heap);
            loop {
                if self.timers.stop.load(Ordering::Acquire) {
                    return;
                }
                let now = Instant::now();
                match heap.peek() {
                    Some(Reverse((at, ..))) if *at <= now => break,
                    Some(Reverse((at, ..))) => {
                        let wait = *at - now;
                        heap = self.timers.wake.wait_timeout(heap, wait).unwrap_or_else(|p| p.into_inner()).0;
                    }
                    None => heap = self.timers.wake.wait(heap).unwrap_or_else(|p| p.into_inner()),
                }
            }
            let now = Instant::now();
            let mut due = Vec::new();
            while let Some(Reverse((at, ..))) = heap.peek() {
                if *at > now {
                    break;
                }
                if let Some(Reverse((_, id, name))) = heap.pop() {
                    due.push((id, name));
                }
            }
            drop(heap);
            for (id, name) in due {
                self.check(&name, id, now);
            }
        }
    }
}

impl Broker for MemoryBroker {
    fn subscribe(&self, lp: LoopId, room: &str) -> RoomId {
        self.inner.with_room(room, |r, st| {
            st.loops[lp / 64] |= 1 << (lp % 64);
            st.last_active = Instant::now();
            r.id
        })
    }

    fn unsubscribe(&self, lp: LoopId, room: &str, id: RoomId) {
        let inner = &self.inner;
        let Some(r) = lock(&inner.rooms).get(room).filter(|r| r.id == id).cloned() else {
            return;
        };
        let mut st = lock(&r.st);
        st.loops[lp / 64] &= !(1 << (lp % 64));
        let now = Instant::now();
        st.last_active = now;
        if st.unused() {
            inner.schedule(&r, &mut st, now + inner.cfg.history_ttl);
        }
    }

    fn join(&self, j: Join<'_>) {
        let inner = &*self.inner;
        inner.with_room(j.room, |r, st| {
            st.last_active = Instant::now();
            let top = st.seq;
            let (recovered, replay) = match &j.since {
                Some(Position { epoch, seq }) if **epoch == *st.epoch => match st.history.after(*seq, top) {
                    Some(it) => (true, it.cloned().collect()),
                    None => (false, Vec::new()),
                },
                _ => (false, Vec::new()),
            };
            if st.presence.join(j.user) {
                let ev = Arc::new(PresenceEvent::new(r.name.clone(), j.user.clone(), true));
                inner.post_all(st, Some(j.lp), || Event::Presence { room: r.id, ev: ev.clone() });
            }
            let result = Joined { id: j.id, epoch: st.epoch.clone(), top, recovered, replay };
            inner.sink.post(j.to.lp as usize, Event::Joined { to: j.to, room: r.id, result }, false);
        })
    }

    fn leave(&self, lp: LoopId, room: &str, user: &Arc<str>, _conn: ConnRef, clean: bool) {
        let inner = &self.inner;
        let Some(r) = lock(&inner.rooms).get(room).cloned() else { return };
        let mut st = lock(&r.st);
        if st.dead {
            return;
        }
        let now = Instant::now();
        match st.presence.leave(user, clean, now, inner.cfg.presence_grace) {
            Leave::Gone => {
                if !user.is_empty() {
                    let ev = Arc::new(PresenceEvent::new(r.name.clone(), user.clone(), false));
                    inner.post_all(&st, Some(lp), || Event::Presence { room: r.id, ev: ev.clone() });
                }
                if st.unused() {
                    inner.schedule(&r, &mut st, now + inner.cfg.history_ttl);
                }
            }
            Leave::Grace(at) => inner.schedule(&r, &mut st, at),
            Leave::Stays | Leave::Unknown => {}
        }
    }

    fn publish(&self, p: Publish<'_>) {
        let inner = &*self.inner;
        inner.with_room(p.room, |r, st| {
            let now = Instant::now();
            let rate = inner.cfg.room_rate.for_members(st.presence.conns());
            if !st.admit(rate, now) {
                inner.gauges.room_refused();
                let reply = Reply::Error {
                    code: ErrorCode::RateLimited,
                    message: format!("room over --max-room-rate ({} messages/s)", rate.unwrap_or(0)),
                };
                // Told to whoever published: its v1 answer, or a seed-mode member's error.
                let (to, id) = match (p.ack, p.origin) {
                    (Some((to, id)), _) => (to, id),
                    (None, Some(o)) => (o, None),
                    (None, None) => return,
                };
                inner.sink.post(to.lp as usize, Event::Reply { to, id, reply }, to.lp as usize != p.lp);
                return;
            }
            st.seq += 1;
            st.last_publish = now;
            st.last_active = now;
            let msg = Arc::new(RoomMessage::new(
                r.name.clone(),
                st.epoch.clone(),
                st.seq,
                p.from,
                unix_ms(),
                p.payload,
                p.origin,
            ));
            if inner.cfg.history_size > 0 {
                let d = st.history.push(msg.clone());
                inner.gauges.history(d);
                let at = now + inner.cfg.history_ttl;
                inner.schedule(r, st, at);
            }
            inner.post_all(st, Some(p.lp), || Event::Deliver { room: r.id, msg: msg.clone() });
            if let Some((to, id)) = p.ack {
                let reply = Reply::Published { room: r.name.clone(), seq: msg.seq, epoch: msg.epoch.clone() };
                inner.sink.post(to.lp as usize, Event::Reply { to, id, reply }, to.lp as usize != p.lp);
            }
        })
    }

    fn history(&self, q: Query<'_>, since: Option<Position>, limit: usize) {
        let inner = &*self.inner;
        let reply = inner.with_room(q.room, |r, st| {
            let after = since.filter(|s| *s.epoch == *st.epoch).map(|s| s.seq);
            let messages = st.history.page(after, limit);
            Reply::History { room: r.name.clone(), epoch: st.epoch.clone(), messages }
        });
        inner.sink.post(q.to.lp as usize, Event::Reply { to: q.to, id: q.id, reply }, q.to.lp as usize != q.lp);
    }

    fn presence(&self, q: Query<'_>) {
        let inner = &self.inner;
        let users = match lock(&inner.rooms).get(q.room).cloned() {
            Some(r) => lock(&r.st).presence.users(),
            None => Vec::new(),
        };
        let reply = Reply::Presence { room: q.room.into(), users };
        inner.sink.post(q.to.lp as usize, Event::Reply { to: q.to, id: q.id, reply }, q.to.lp as usize != q.lp);
    }

    fn status(&self) -> Result<(), String> {
        Ok(())
    }

    fn stop(&self) {
        self.inner.timers.stop.store(true, Ordering::Release);
        self.inner.timers.wake.notify_all();
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}
