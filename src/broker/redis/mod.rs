//! The Redis broker: rooms that span processes and nodes.
//!
//! Redis holds each room's numbering, history and presence; every step that must be atomic is a
//! Lua script on the room's Redis node (all of a room's keys share a hash tag, so in a Redis
//! Cluster they live on one shard): `publish.lua` numbers the message, appends it to the room's
//! capped stream and publishes it with its seq, so every subscriber sees one gap-free order.
//!
//! This process keeps one subscription per room (not per member) while it has local members,
//! on a thread of its own running a tokio runtime (`redis` with its connection manager, or its
//! cluster connection with sharded pub/sub); the event loops talk to it through a channel and
//! hear back through their mailboxes, exactly as with the in-memory broker, and never wait.
//!
//! Order, resume and gaps: per room the thread remembers the last seq it handed to the loops.
//! A message with a later seq than the next one expected means messages were missed (pub/sub is
//! at most once): it reads them from the stream first ("catch up"), holding live messages back
//! meanwhile, then goes on in order; a lost connection is followed by a catch-up of every room
//! once it is back. A join runs `join.lua`, which returns the room's top and the stream after
//! the earliest position needed; the thread hands the loops any messages they had not seen yet,
//! then the `joined` result with its replay, so the member starts exactly after its position.
//! When what is missing is gone from the stream, or the room's epoch changed (its Redis data was
//! lost), the room's v1 members are told to join again ([`crate::broker::Event::Reset`]): never a
//! silent gap.
//!
//! Modules: [`conn`] (the connection, scripts, keys, pipelines), [`parse`] (answers and channel
//! messages), `task` (the thread's state machine), `lua/` (the scripts).

pub mod conn;
pub mod parse;
mod task;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::mpsc;

pub use self::conn::Target;
use self::conn::{RConn, Scripts};
use self::task::Task;
use super::{Broker, Gauges, Join, LoopId, Publish, Query, Settings, Sink, Tag};
use crate::proto::v1::Position;
use crate::rooms::members::RoomId;
use crate::rooms::message::{ConnRef, Payload};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether Redis is reachable, and why not.
#[derive(Debug, Default)]
pub(super) struct Health {
    pub up: AtomicBool,
    pub why: Mutex<String>,
}

impl Health {
    fn set(&self, up: bool, why: &str) {
        self.up.store(up, Ordering::Relaxed);
        if !up {
            *lock(&self.why) = why.to_string();
        }
    }
}

/// A loop's subscriptions, kept on the loops' side so `subscribe` can answer at once.
#[derive(Debug, Default)]
struct Subs {
    rooms: HashMap<Arc<str>, (RoomId, Vec<u64>)>,
}

/// Requests from the loops to the Redis thread.
#[derive(Debug)]
pub(super) enum Req {
    Subscribe { id: RoomId, name: Arc<str> },
    Loops { id: RoomId, loops: Vec<u64> },
    Unsubscribe { id: RoomId },
    Join { id: RoomId, to: ConnRef, user: Arc<str>, since: Option<Position>, tag: Tag },
    Leave { name: Arc<str>, user: Arc<str>, conn: ConnRef, clean: bool },
    Publish { room: Arc<str>, from: Arc<str>, payload: Payload, origin: Option<ConnRef>, ack: Option<(ConnRef, Tag)> },
    History { to: ConnRef, tag: Tag, room: Arc<str>, since: Option<Position>, limit: usize },
    Presence { to: ConnRef, tag: Tag, room: Arc<str> },
    Stop,
}

/// How much Redis work one process keeps in flight, and how long a join may wait for its
/// turn (`--redis-in-flight`, `--redis-join-wait`). Both off (0) by default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Admission {
    /// Calls in flight, a join counting each of its joiners; 0: no bound.
    pub in_flight: u32,
    /// A join not sent after this long is answered `unavailable` without touching Redis; 0:
    /// joins wait as long as it takes.
    pub join_wait: Duration,
}

impl Admission {
    /// The bound on calls in flight.
    pub fn most(&self) -> u32 {
        if self.in_flight == 0 {
            u32::MAX
        } else {
            self.in_flight
        }
    }
}

/// The Redis broker (see the module docs).
pub struct RedisBroker {
    tx: mpsc::UnboundedSender<Req>,
    subs: Mutex<Subs>,
    next_id: AtomicU64,
    loops: usize,
    health: Arc<Health>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBroker").field("up", &self.health.up.load(Ordering::Relaxed)).finish()
    }
}

impl RedisBroker {
    /// Connect (waiting up to `connect_timeout` for Redis to answer) and start the thread.
    pub fn start(
        target: Target,
        prefix: &str,
        cfg: Settings,
        admission: Admission,
        sink: Arc<dyn Sink>,
        gauges: Arc<dyn Gauges>,
        connect_timeout: Duration,
    ) -> Result<RedisBroker, String> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let health = Arc::new(Health::default());
        let h = health.clone();
        let prefix: Arc<str> = prefix.into();
        let thread = std::thread::Builder::new()
            .name("c100k-redis".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("tokio runtime: {e}")));
                        return;
                    }
                };
                rt.block_on(async move {
                    let (push_tx, push_rx) = mpsc::unbounded_channel();
                    let scripts = Scripts::new();
                    let connected = async {
                        let mut c = RConn::connect(&target, push_tx).await?;
                        // Loaded now: the first calls find them.
                        scripts.load(&mut c).await?;
                        Ok::<_, redis::RedisError>(c)
                    };
                    let conn = match tokio::time::timeout(connect_timeout, connected).await {
                        Ok(Ok(c)) => c,
                        Ok(Err(e)) => {
                            let _ = ready_tx.send(Err(format!("cannot connect to Redis: {e}")));
                            return;
                        }
                        Err(_) => {
                            let _ = ready_tx.send(Err(format!("Redis did not answer within {connect_timeout:?}")));
                            return;
                        }
                    };
                    h.set(true, "");
                    let _ = ready_tx.send(Ok(()));
                    let (task, done) = Task::new(cfg, admission, sink, gauges, conn, h, scripts, prefix);
                    task.run(done, rx, push_rx).await;
                });
            })
            .map_err(|e| format!("cannot start the Redis thread: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(e);
            }
            Err(_) => return Err("the Redis thread ended during start-up".into()),
        }
        Ok(RedisBroker {
            tx,
            subs: Mutex::default(),
            next_id: AtomicU64::new(1),
            loops: cfg.loops,
            health,
            thread: Mutex::new(Some(thread)),
        })
    }

    fn send(&self, r: Req) {
        // The thread outlives every loop (it is stopped after them): a send cannot fail early.
        let _ = self.tx.send(r);
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Broker for RedisBroker {
    fn subscribe(&self, lp: LoopId, room: &str) -> RoomId {
        let mut subs = lock(&self.subs);
        if let Some((id, loops)) = subs.rooms.get_mut(room) {
            loops[lp / 64] |= 1 << (lp % 64);
            let (id, loops) = (*id, loops.clone());
            self.send(Req::Loops { id, loops });
            return id;
        }
        let id = RoomId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let mut loops = vec![0u64; self.loops.div_ceil(64).max(1)];
        loops[lp / 64] |= 1 << (lp % 64);
        let name: Arc<str> = room.into();
        subs.rooms.insert(name.clone(), (id, loops.clone()));
        self.send(Req::Subscribe { id, name });
        self.send(Req::Loops { id, loops });
        id
    }

    fn unsubscribe(&self, lp: LoopId, room: &str, id: RoomId) {
        let mut subs = lock(&self.subs);
        let Some((rid, loops)) = subs.rooms.get_mut(room).filter(|(rid, _)| *rid == id) else { return };
        loops[lp / 64] &= !(1 << (lp % 64));
        if loops.iter().all(|w| *w == 0) {
            let rid = *rid;
            subs.rooms.remove(room);
            self.send(Req::Unsubscribe { id: rid });
        } else {
            let (rid, loops) = (*rid, loops.clone());
            self.send(Req::Loops { id: rid, loops });
        }
    }

    fn join(&self, j: Join<'_>) {
        let id = lock(&self.subs).rooms.get(j.room).map(|(id, _)| *id);
        match id {
            Some(id) => self.send(Req::Join { id, to: j.to, user: j.user.clone(), since: j.since, tag: j.id }),
            None => log::error!("join of {:?} without a subscription", j.room),
        }
    }

    fn leave(&self, _lp: LoopId, room: &str, user: &Arc<str>, conn: ConnRef, clean: bool) {
        self.send(Req::Leave { name: room.into(), user: user.clone(), conn, clean });
    }

    fn publish(&self, p: Publish<'_>) {
        self.send(Req::Publish { room: p.room.into(), from: p.from, payload: p.payload, origin: p.origin, ack: p.ack });
    }

    fn history(&self, q: Query<'_>, since: Option<Position>, limit: usize) {
        self.send(Req::History { to: q.to, tag: q.id, room: q.room.into(), since, limit });
    }

    fn presence(&self, q: Query<'_>) {
        self.send(Req::Presence { to: q.to, tag: q.id, room: q.room.into() });
    }

    fn status(&self) -> Result<(), String> {
        if self.health.up.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(format!("Redis unreachable: {}", lock(&self.health.why)))
        }
    }

    fn stop(&self) {
        let _ = self.tx.send(Req::Stop);
        if let Some(t) = lock(&self.thread).take() {
            let _ = t.join();
        }
    }
}
