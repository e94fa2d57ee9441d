//! The Redis thread: per room, the subscription, the position handed to the loops, joins in
//! batches, catch-ups, and the calls to Redis in the order they were made.
//!
//! Everything here runs on one tokio task (current-thread runtime); Redis calls run in the
//! background and their outcomes come back as [`Done`]s, handled in order with requests and
//! pushes. Calls about one room go out in the order they were made, one pipeline at a time per
//! room (so one connection's publishes keep their order, and a leave never overtakes its join);
//! different rooms proceed side by side.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::{Cmd, PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use super::conn::{evalsha, nodes_key, Keys, RConn, Scripts};
use super::parse::{self, CatchUp, Msg};
use super::{lock, Admission, Health, Req};
use crate::broker::{Event, Gauges, Joined, Reply, RoomRate, Settings, Sink, Tag};
use crate::proto::v1::{ErrorCode, Position};
use crate::rooms::members::RoomId;
use crate::rooms::message::{ConnRef, Payload, PresenceEvent};

/// Why members are told to join again.
const LOST: &str = "messages of this room were lost (its Redis data was reset or trimmed): join again";
const RESTARTED: &str = "this room's numbering restarted (its Redis data was lost): join again";

/// A room whose last local member left stays subscribed this long: a member coming back (a
/// reload, a reconnect) finds it ready, and a flapping room does not churn subscriptions.
const LINGER: Duration = Duration::from_secs(5);

/// Calls per pipeline.
const BATCH: usize = 512;

// Admission ([`Admission`], off by default): Redis runs calls one at a time, so the work in
// flight is how long the last call waits. With every room's pipeline sent at once, a reconnect
// storm of 53 processes × 1,000 rooms queued calls past the response timeout and failed them.
// Bounded per process, the rest waits in the process, in order, and a join still waiting after
// `join_wait` is shed before any Redis work. Measured on the 2-core host (Redis sharing a core
// with the workers) this trades Redis errors for a slower storm, so it is opt-in: see README,
// "Admission toward Redis".

/// What a shed join is answered.
const SHED: &str = "Redis busy: the join waited too long for its turn, try again later";

/// How long a gap may wait for the subscription's messages to fill it before the stream is read
/// again (they normally arrive within milliseconds: see [`Room::continuous`]).
const GAP_WAIT: Duration = Duration::from_secs(5);

/// A join waiting for its batch.
#[derive(Debug)]
pub(super) struct PendingJoin {
    to: ConnRef,
    user: Arc<str>,
    since: Option<Position>,
    tag: Tag,
    /// When it was asked for (it is shed `Admission::join_wait` later if still not sent).
    at: Instant,
}

/// A room's subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sub {
    /// SUBSCRIBE in flight.
    Subscribing,
    /// It failed: tried again by the retry tick.
    Retry,
    Live,
    /// UNSUBSCRIBE in flight; `again`: a member came back meanwhile.
    Leaving {
        again: bool,
    },
}

struct Room {
    /// The loops' name for it (changes when a lingering room is subscribed again).
    id: RoomId,
    loops: Vec<u64>,
    sub: Sub,
    /// The epoch and the last seq handed to the loops (known after the first join).
    epoch: Option<Arc<str>>,
    forwarded: Option<u64>,
    /// A join batch or a catch-up is in flight: live messages wait in `held`.
    busy: bool,
    held: BTreeMap<u64, Msg>,
    /// Every message after `forwarded` is on its way by pub/sub. The client delivers pushes on
    /// one path and call answers on another, so an answer can overtake messages published
    /// before it: a read whose history does not reach back to `forwarded` then proves nothing
    /// is lost. Cleared when the connection drops; set by a read made while subscribed.
    continuous: bool,
    /// The connection generation (`Task::disconnects`) in which the subscription was last
    /// confirmed, and its value when the read in flight was made.
    live: Option<u64>,
    read_live: Option<u64>,
    /// `held` has had a gap since then, waiting for pub/sub to fill it.
    gap_since: Option<Instant>,
    /// Join answers waiting until `forwarded` reaches their `top`, as (top, loop, event): a
    /// member must start exactly where the loops' deliveries are.
    parked: VecDeque<(u64, usize, Event)>,
    joins: VecDeque<PendingJoin>,
    /// A catch-up is wanted once nothing is in flight.
    catch_up: bool,
    /// This node's connections per user in the room (for announcing them again).
    users: HashMap<Arc<str>, u32>,
    /// No local members since then.
    idle_since: Option<Instant>,
    /// Live nodes with members in the room (the last sweep's count), and when this node
    /// sweeps it next: each of N nodes sweeps every N sweep periods (jittered), so the room is
    /// swept about once a period whatever the number of nodes. (Every node sweeping every room
    /// every period was 53,000 scripts/s for 53 processes and 1,000 rooms, more than Redis ran.)
    nodes: u32,
    next_sweep: Option<Instant>,
    /// When this node next runs `touch.lua` for the room (while it has members there).
    next_touch: Option<Instant>,
}

impl Room {
    /// What the periodic retry must do for the room, if anything.
    fn due(&self, now: Instant) -> Option<Due> {
        match self.sub {
            Sub::Retry => Some(Due::Subscribe),
            Sub::Live if self.idle_since.is_some_and(|t| now - t >= LINGER) && !self.busy && self.users.is_empty() => {
                Some(Due::Unsubscribe)
            }
            Sub::Live if self.gap_since.is_some_and(|t| now - t >= GAP_WAIT) && !self.busy => Some(Due::GapRead),
            Sub::Live if self.catch_up && !self.busy => Some(Due::CatchUp),
            _ => None,
        }
    }

    /// Hand the loops `m`, the next message in order, then the joins answered up to it.
    fn forward(&mut self, sink: &dyn Sink, m: &Msg) {
        post_loops(sink, &self.loops, || Event::Deliver { room: self.id, msg: m.clone() });
        self.forwarded = Some(m.seq);
        self.unpark(sink);
    }

    fn unpark(&mut self, sink: &dyn Sink) {
        let f = self.forwarded.unwrap_or(0);
        while self.parked.front().is_some_and(|p| p.0 <= f) {
            if let Some((_, lp, ev)) = self.parked.pop_front() {
                sink.post(lp, ev, true);
            }
        }
        if self.parked.is_empty() {
            self.parked = VecDeque::new();
        }
    }

    fn unpark_all(&mut self, sink: &dyn Sink) {
        for (_, lp, ev) in std::mem::take(&mut self.parked) {
            sink.post(lp, ev, true);
        }
    }

    /// The loops' members must join again; joins still waiting are answered first (they join,
    /// then hear it like everyone).
    fn reset(&mut self, sink: &dyn Sink, message: &str) {
        self.unpark_all(sink);
        post_loops(sink, &self.loops, || Event::Reset { room: self.id, message: message.into() });
    }

    fn forget_user(&mut self, user: &Arc<str>) {
        if let Some(n) = self.users.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.users.remove(user);
            }
        }
    }
}

/// A room's calls waiting to go out.
#[derive(Default)]
struct Queue {
    waiting: VecDeque<Call>,
    /// A pipeline is in flight, and its weight (0 when none is, or when it is upkeep).
    in_flight: bool,
    weight: u32,
    /// In `Task::turns`, waiting for its pipeline to be admitted.
    queued: bool,
    /// No waiting call expires before this (it may be earlier than the first that does: it
    /// only saves looking).
    expires: Option<Instant>,
}

/// A call waiting to go out.
struct Call {
    cmd: Cmd,
    then: Then,
    /// Its share of `Admission::in_flight`: 0 for upkeep that keeps rooms and presence alive (it must
    /// not wait behind a storm of joins, and is a few calls a second).
    weight: u32,
    /// Past this, it is answered [`SHED`] instead of sent (joins only).
    expires: Option<Instant>,
}

/// What a call's answer becomes.
type Then = Box<dyn FnOnce(Result<Value, String>) -> Done + Send>;

/// What finished in the background.
pub(super) enum Done {
    Subscribed {
        room: Arc<str>,
        ok: Result<(), String>,
    },
    Unsubscribed {
        room: Arc<str>,
    },
    Joined {
        room: Arc<str>,
        batch: Vec<PendingJoin>,
        result: Result<parse::Joined, String>,
    },
    CaughtUp {
        room: Arc<str>,
        result: Result<CatchUp, String>,
    },
    /// A room's pipeline is answered: the next may go.
    Sent {
        room: Arc<str>,
    },
    /// This node's presence in the room was lost: announce its members again.
    Reannounce {
        room: Arc<str>,
    },
    /// A sweep went through: `nodes` nodes have members in the room.
    Swept {
        room: Arc<str>,
        nodes: u32,
    },
    /// `alive.lua` answered for `name`: still alive (or `candidate` replaces it), and the
    /// nodes given up for dead.
    Alive {
        name: Arc<str>,
        candidate: Arc<str>,
        result: Result<parse::Alive, String>,
    },
    Ok,
    Err(String),
}

pub(super) struct Task {
    cfg: Settings,
    admission: Admission,
    sink: Arc<dyn Sink>,
    gauges: Arc<dyn Gauges>,
    conn: RConn,
    health: Arc<Health>,
    scripts: Arc<Scripts>,
    /// Every key and channel starts with this.
    prefix: Arc<str>,
    /// This process's name in message origins.
    node: Arc<str>,
    /// Its name in presence and liveness: `node` at first, a new one each time it finds it was
    /// given up for dead (a stall), so sweeps made from an older list of the dead cannot
    /// remove the members it announces again.
    pnode: Arc<str>,
    /// `pnode` has not yet been registered as alive.
    fresh: bool,
    /// The nodes given up for dead (the last `alive.lua` answer), named to every sweep.
    dead: Vec<Arc<str>>,
    /// The nodes alive in the deployment (the last `alive.lua` answer; 1 before it): how many
    /// a new room is expected to be shared by, until its first sweep tells (see `Task::sweep`).
    live: u32,
    rng: u64,
    /// Boxed: a `Room` is a few hundred bytes, and a table of them inline is up to twice its
    /// rooms in size (power-of-two buckets at most 7/8 full: 2,048 for 1,000 rooms) in each of
    /// the deployment's processes.
    rooms: HashMap<Arc<str>, Box<Room>>,
    /// Connections lost so far (pub/sub missed what was published meanwhile).
    disconnects: u64,
    by_id: HashMap<RoomId, Arc<str>>,
    queues: HashMap<Arc<str>, Queue>,
    /// Rooms whose next pipeline waits for room under `Admission::in_flight`, in the order
    /// they asked.
    turns: VecDeque<Arc<str>>,
    /// The weight of the pipelines in flight.
    in_flight: u32,
    done_tx: mpsc::UnboundedSender<Done>,
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Uniform in [0, 1): jitter for timers.
fn unit(rng: &mut u64) -> f64 {
    (crate::broker::next_random(rng) >> 11) as f64 / (1u64 << 53) as f64
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// Post an event to every loop in the bit set `loops`.
fn post_loops(sink: &dyn Sink, loops: &[u64], ev: impl Fn() -> Event) {
    for (w, &word) in loops.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let b = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            sink.post(w * 64 + b, ev(), true);
        }
    }
}

impl Task {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        cfg: Settings,
        admission: Admission,
        sink: Arc<dyn Sink>,
        gauges: Arc<dyn Gauges>,
        conn: RConn,
        health: Arc<Health>,
        scripts: Scripts,
        prefix: Arc<str>,
    ) -> (Task, mpsc::UnboundedReceiver<Done>) {
        let mut rng = crate::broker::seed();
        let node: Arc<str> = crate::broker::new_epoch(&mut rng).into();
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let t = Task {
            cfg,
            admission,
            sink,
            gauges,
            conn,
            health,
            scripts: Arc::new(scripts),
            prefix,
            pnode: node.clone(),
            node,
            fresh: true,
            dead: Vec::new(),
            live: 1,
            rng,
            rooms: HashMap::new(),
            disconnects: 0,
            by_id: HashMap::new(),
            queues: HashMap::new(),
            turns: VecDeque::new(),
            in_flight: 0,
            done_tx,
        };
        (t, done_rx)
    }

    pub(super) async fn run(
        mut self,
        mut done: mpsc::UnboundedReceiver<Done>,
        mut rx: mpsc::UnboundedReceiver<Req>,
        mut push: mpsc::UnboundedReceiver<PushInfo>,
    ) {
        let mut alive = tokio::time::interval(self.refresh_every());
        let mut touch =
            tokio::time::interval((self.touch_every() / 4).clamp(Duration::from_millis(25), Duration::from_secs(1)));
        let sweep_every = self.sweep_every();
        let mut sweep = tokio::time::interval(sweep_every);
        let mut retry = tokio::time::interval(Duration::from_millis(250));
        loop {
            // Biased, pushes first: Redis sends what a script publishes before its answer, so
            // pushes already here go first (a join's own presence_join before its result, as in
            // memory). Not a guarantee: the connection manager forwards pushes through a task of
            // its own, so an answer can still overtake them (see `Room::continuous`).
            tokio::select! {
                biased;
                Some(p) = push.recv() => self.on_push(p),
                Some(d) = done.recv() => self.on_done(d),
                r = rx.recv() => match r {
                    Some(Req::Stop) | None => return,
                    Some(r) => self.on_req(r),
                },
                _ = alive.tick() => self.alive(),
                _ = touch.tick() => self.touch(),
                _ = sweep.tick() => self.sweep(sweep_every),
                _ = retry.tick() => self.retry(),
            }
        }
    }

    // ---- calls ----

    /// Queue a call about `room` (weight 1); its answer comes back through `then` as a [`Done`].
    fn call(&mut self, room: &Arc<str>, cmd: Cmd, then: impl FnOnce(Result<Value, String>) -> Done + Send + 'static) {
        self.queue(room, Call { cmd, then: Box::new(then), weight: 1, expires: None });
    }

    /// Queue upkeep (weight 0: never waits for other rooms' work).
    fn upkeep(&mut self, room: &Arc<str>, cmd: Cmd, then: impl FnOnce(Result<Value, String>) -> Done + Send + 'static) {
        self.queue(room, Call { cmd, then: Box::new(then), weight: 0, expires: None });
    }

    fn queue(&mut self, room: &Arc<str>, call: Call) {
        self.gauges.redis_waiting(i64::from(call.weight));
        let q = self.queues.entry(room.clone()).or_default();
        q.expires = earliest(q.expires, call.expires);
        q.waiting.push_back(call);
        if !q.in_flight && !q.queued {
            self.send_batch(room, false);
        }
    }

    /// Send `room`'s next pipeline: up to [`BATCH`] calls and `in_flight` weight, if the
    /// process has room for it and no room asked before it (`turn`: it is its turn now).
    /// False when it must wait (it is then in `turns`).
    fn send_batch(&mut self, room: &Arc<str>, turn: bool) -> bool {
        self.shed_expired(room);
        let Some(q) = self.queues.get_mut(room) else { return true };
        if q.in_flight {
            return true;
        }
        if q.waiting.is_empty() {
            self.queues.remove(room);
            return true;
        }
        let (mut take, mut weight, most) = (0, 0u32, self.admission.most());
        for c in &q.waiting {
            if take == BATCH || (take > 0 && weight + c.weight > most) {
                break;
            }
            take += 1;
            weight += c.weight;
        }
        let full = self.in_flight > 0 && self.in_flight + weight > most;
        if weight > 0 && (full || !turn && !self.turns.is_empty()) {
            if !q.queued {
                q.queued = true;
                self.turns.push_back(room.clone());
            }
            return false;
        }
        let batch: Vec<Call> = q.waiting.drain(..take).collect();
        if q.waiting.is_empty() {
            q.waiting = VecDeque::new();
        }
        q.in_flight = true;
        q.weight = weight;
        self.in_flight += weight;
        self.gauges.redis_in_flight(i64::from(weight));
        self.gauges.redis_waiting(-i64::from(weight));
        let (mut c, s, tx, room) = (self.conn.clone(), self.scripts.clone(), self.done_tx.clone(), room.clone());
        tokio::spawn(async move {
            let (cmds, thens): (Vec<Cmd>, Vec<Then>) = batch.into_iter().map(|c| (c.cmd, c.then)).unzip();
            let answers = c.run_batch(cmds, &s).await;
            for (then, a) in thens.into_iter().zip(answers) {
                let _ = tx.send(then(a));
            }
            let _ = tx.send(Done::Sent { room });
        });
        true
    }

    /// A pipeline came back: the rooms waiting for their turn go, in order, while they fit.
    fn sent(&mut self, room: &Arc<str>) {
        if let Some(q) = self.queues.get_mut(room) {
            q.in_flight = false;
            self.in_flight -= q.weight;
            self.gauges.redis_in_flight(-i64::from(q.weight));
            q.weight = 0;
            if !q.queued {
                self.send_batch(room, false);
            }
        }
        while let Some(next) = self.turns.front().cloned() {
            if !self.send_batch(&next, true) {
                break;
            }
            self.turns.pop_front();
            if let Some(q) = self.queues.get_mut(&next) {
                q.queued = false;
            }
        }
    }

    /// Answer [`SHED`] to `room`'s calls that waited past their deadline (before any Redis
    /// work: nothing of them ran).
    fn shed_expired(&mut self, room: &Arc<str>) {
        let Some(q) = self.queues.get_mut(room) else { return };
        let now = Instant::now();
        if q.expires.is_none_or(|t| t > now) {
            return;
        }
        let (gone, kept): (VecDeque<Call>, VecDeque<Call>) =
            std::mem::take(&mut q.waiting).into_iter().partition(|c| c.expires.is_some_and(|t| t <= now));
        q.expires = kept.iter().fold(None, |e, c| earliest(e, c.expires));
        q.waiting = kept;
        for c in gone {
            self.gauges.redis_waiting(-i64::from(c.weight));
            let _ = self.done_tx.send((c.then)(Err(SHED.into())));
        }
    }

    /// Run `f` on a clone of the connection in the background (subscriptions).
    fn spawn<F, Fut>(&self, f: F)
    where
        F: FnOnce(RConn) -> Fut,
        Fut: std::future::Future<Output = Done> + Send + 'static,
    {
        let fut = f(self.conn.clone());
        let tx = self.done_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(fut.await);
        });
    }

    fn failed(&self, why: &str) {
        self.gauges.broker_error();
        if self.health.up.swap(false, Ordering::Relaxed) {
            log::warn!("Redis: {why}");
            self.gauges.broker_up(false);
        }
        *lock(&self.health.why) = why.to_string();
    }

    /// A call went through. Nothing to catch up here: pub/sub misses messages only when the
    /// connection drops, and that is followed by a catch-up of every room (`on_push`). A timed
    /// out call is not one; catching every room up after each (as this did) put 1,000 more
    /// calls per process on a Redis already too busy to answer in time.
    fn succeeded(&mut self) {
        if !self.health.up.swap(true, Ordering::Relaxed) {
            log::info!("Redis: reachable again");
            self.gauges.broker_up(true);
        }
    }

    /// The name of the room served here whose channel `ch` is.
    fn room_of(&self, ch: &[u8]) -> Option<Arc<str>> {
        let room = Keys::room_of_channel(&self.prefix, std::str::from_utf8(ch).ok()?)?;
        self.rooms.get_key_value(&*room).map(|(name, _)| name.clone())
    }

    fn keys(&self, room: &str) -> Keys {
        Keys::of(&self.prefix, room)
    }

    // ---- requests from the loops ----

    fn on_req(&mut self, r: Req) {
        match r {
            Req::Subscribe { id, name } => self.subscribe(id, name),
            Req::Loops { id, loops } => {
                if let Some(r) = self.by_id.get(&id).and_then(|n| self.rooms.get_mut(n)) {
                    r.idle_since = loops.iter().all(|w| *w == 0).then(Instant::now);
                    r.loops = loops;
                }
            }
            Req::Unsubscribe { id } => {
                let Some(name) = self.by_id.get(&id).cloned() else { return };
                let Some(r) = self.rooms.get_mut(&name) else { return };
                r.loops.iter_mut().for_each(|w| *w = 0);
                r.idle_since = Some(Instant::now());
                let failed: Vec<PendingJoin> = std::mem::take(&mut r.joins).into();
                for j in failed {
                    let ev = Event::JoinFailed { to: j.to, room: id, id: j.tag, message: "left before joining".into() };
                    self.sink.post(j.to.lp as usize, ev, true);
                }
            }
            Req::Join { id, to, user, since, tag } => {
                let Some(r) = self.by_id.get(&id).and_then(|n| self.rooms.get_mut(n)) else {
                    let ev = Event::JoinFailed { to, room: id, id: tag, message: "no subscription".into() };
                    self.sink.post(to.lp as usize, ev, true);
                    return;
                };
                r.joins.push_back(PendingJoin { to, user, since, tag, at: Instant::now() });
                let name = self.by_id[&id].clone();
                self.next_batch(&name);
            }
            Req::Leave { name, user, conn, clean } => self.leave(name, user, conn, clean),
            Req::Publish { room, from, payload, origin, ack } => self.publish(room, from, payload, origin, ack),
            Req::History { to, tag, room, since, limit } => self.history(to, tag, room, since, limit),
            Req::Presence { to, tag, room } => self.presence(to, tag, room),
            Req::Stop => {}
        }
    }

    fn subscribe(&mut self, id: RoomId, name: Arc<str>) {
        if let Some(r) = self.rooms.get_mut(&name) {
            // Still subscribed (lingering) or on its way out: take it up again under its new id.
            self.by_id.remove(&r.id);
            r.id = id;
            r.idle_since = None;
            if let Sub::Leaving { again } = &mut r.sub {
                *again = true;
            }
            self.by_id.insert(id, name);
            return;
        }
        self.by_id.insert(id, name.clone());
        self.rooms.insert(
            name.clone(),
            Box::new(Room {
                id,
                loops: Vec::new(),
                sub: Sub::Subscribing,
                epoch: None,
                forwarded: None,
                busy: false,
                held: BTreeMap::new(),
                continuous: false,
                live: None,
                read_live: None,
                gap_since: None,
                parked: VecDeque::new(),
                joins: VecDeque::new(),
                catch_up: false,
                users: HashMap::new(),
                idle_since: None,
                // Until its join answer says, a new room is expected to be shared by every live
                // node (each sweeping it every `nodes` periods). Assumed alone, every room of a
                // process restarted in a storm was swept by every process every period: 53,000
                // sweeps a second for 53 processes and 1,000 rooms, half of Redis' storm.
                nodes: self.live,
                next_sweep: Some(
                    Instant::now() + self.sweep_every().mul_f64(f64::from(self.live) * (0.5 + unit(&mut self.rng))),
                ),
                next_touch: None,
            }),
        );
        self.start_subscribe(&name);
    }

    fn start_subscribe(&mut self, name: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(name) else { return };
        r.sub = Sub::Subscribing;
        let (ch, room) = (Keys::channel_of(&self.prefix, name), name.clone());
        self.spawn(move |mut c| async move {
            Done::Subscribed { room, ok: c.subscribe(&ch).await.map_err(|e| e.to_string()) }
        });
    }

    fn leave(&mut self, name: Arc<str>, user: Arc<str>, conn: ConnRef, clean: bool) {
        if let Some(r) = self.rooms.get_mut(&name) {
            if let Some(i) = r.joins.iter().position(|j| j.to == conn) {
                // Its join never reached Redis: it is simply not carried out (the loop hears
                // back, to release its room).
                let j = r.joins.remove(i).expect("position found");
                let ev = Event::JoinFailed { to: conn, room: r.id, id: j.tag, message: "left before joining".into() };
                self.sink.post(conn.lp as usize, ev, true);
                return;
            }
        }
        self.queue_leave(&name, &user, clean);
    }

    /// Queue `leave.lua` for `user` (uncounted from `users` now).
    fn queue_leave(&mut self, name: &Arc<str>, user: &Arc<str>, clean: bool) {
        if let Some(r) = self.rooms.get_mut(name) {
            r.forget_user(user);
        }
        let k = self.keys(name);
        let last = self.rooms.get(name).is_none_or(|r| r.users.is_empty());
        let mut cmd = evalsha(&self.scripts.leave, &[&k.meta, &k.pres, &k.pconns, &k.pusers, &k.pnodes]);
        cmd.arg(&k.channel).arg(&*self.pnode).arg(&**user).arg(u8::from(clean)).arg(ms(self.cfg.presence_grace));
        cmd.arg(u8::from(self.conn.sharded())).arg(u8::from(last));
        self.call(name, cmd, |a| match a {
            Ok(_) => Done::Ok,
            Err(e) => Done::Err(format!("leave: {e}")),
        });
    }

    /// Start the next join batch of `room` if nothing is in flight for it.
    fn next_batch(&mut self, name: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(name) else { return };
        if r.busy || r.sub != Sub::Live {
            return;
        }
        if r.joins.is_empty() {
            if r.catch_up {
                self.start_catch_up(name);
            }
            return;
        }
        // Taken, not drained, when it is all of them: an idle room keeps no queue capacity
        // (×rooms×processes at 1M). At most `in_flight` joiners go in one call; the rest wait
        // for the next.
        let most = self.admission.most() as usize;
        let batch: Vec<PendingJoin> =
            if r.joins.len() <= most { std::mem::take(&mut r.joins).into() } else { r.joins.drain(..most).collect() };
        // `users` mirrors what Redis holds once the queued calls have run (calls about a room
        // run in order): counted when the join is queued, uncounted when the leave is.
        for j in &batch {
            *r.users.entry(j.user.clone()).or_default() += 1;
        }
        // The history needed: after the earliest position any joiner resumes from, and after
        // what this node has handed its members (to give them what they have not seen yet).
        let mut after: Option<u64> = r.forwarded;
        for j in &batch {
            if let Some(p) = &j.since {
                if r.epoch.as_deref().is_none_or(|e| *e == *p.epoch) {
                    after = Some(after.map_or(p.seq, |a| a.min(p.seq)));
                }
            }
        }
        r.busy = true;
        r.read_live = r.live;
        let k = self.keys(name);
        let mut cmd = self.join_cmd(&k, after);
        for j in &batch {
            cmd.arg(&*j.user);
        }
        let (room, weight) = (name.clone(), batch.len() as u32);
        let wait = self.admission.join_wait;
        let expires = batch.iter().map(|j| j.at).min().filter(|_| !wait.is_zero()).map(|t| t + wait);
        let then = Box::new(move |a: Result<Value, String>| {
            let result = a.and_then(|v| parse::parse_join(v, &room));
            Done::Joined { room, batch, result }
        });
        self.queue(name, Call { cmd, then, weight, expires });
    }

    /// `join.lua` for this node (add the users with `.arg`).
    fn join_cmd(&mut self, k: &Keys, after: Option<u64>) -> Cmd {
        let epoch = crate::broker::new_epoch(&mut self.rng);
        let mut cmd = evalsha(&self.scripts.join, &[&k.meta, &k.stream, &k.pres, &k.pconns, &k.pusers, &k.pnodes]);
        cmd.arg(&k.channel).arg(&epoch).arg(ms(self.cfg.history_ttl)).arg(after.map_or(-1, |a| a as i64));
        cmd.arg(&*self.pnode).arg(u8::from(self.conn.sharded())).arg(ms(self.stale_after()));
        cmd
    }

    /// The sweep tick: each room is swept about this often in all (see [`Task::sweep`]).
    fn sweep_every(&self) -> Duration {
        (self.cfg.presence_grace / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// How often this node says it is alive (`alive.lua`, once for all its rooms).
    fn refresh_every(&self) -> Duration {
        (self.cfg.presence_grace / 3).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// A node that has not said it is alive for this long is dead: its users leave presence (a
    /// node that dies right after refreshing leaves ghosts for this long, plus a refresh and a
    /// sweep: the grace period, or three refreshes when the grace is shorter).
    fn node_ttl(&self) -> Duration {
        self.cfg.presence_grace.max(self.refresh_every() * 3)
    }

    /// How often this node keeps each room it has members in alive (`touch.lua`): a third of
    /// the history TTL (jittered, see [`Task::touch`]), so the room's data never expires.
    fn touch_every(&self) -> Duration {
        (self.cfg.history_ttl / 3).max(Duration::from_millis(100))
    }

    /// A node that has not touched a room for this long cannot be alive: rooms drop it even
    /// once `alive.lua` has forgotten it (three touches missed, and then its node TTL).
    fn stale_after(&self) -> Duration {
        self.touch_every() * 3 + self.node_ttl()
    }

    fn start_catch_up(&mut self, name: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(name) else { return };
        let Some(after) = r.forwarded else {
            r.catch_up = false;
            return;
        };
        if r.busy || r.sub != Sub::Live {
            r.catch_up = true;
            return;
        }
        r.busy = true;
        r.catch_up = false;
        r.read_live = r.live;
        let k = self.keys(name);
        let mut cmd = evalsha(&self.scripts.catchup, &[&k.meta, &k.stream]);
        cmd.arg(after);
        let room = name.clone();
        self.call(name, cmd, move |a| {
            let result = a.and_then(|v| parse::parse_catchup(v, &room));
            Done::CaughtUp { room, result }
        });
    }

    // ---- outcomes ----

    fn on_done(&mut self, d: Done) {
        match d {
            Done::Ok => self.succeeded(),
            Done::Err(e) => self.failed(&e),
            Done::Sent { room } => self.sent(&room),
            Done::Subscribed { room, ok } => self.subscribed(room, ok),
            Done::Swept { room, nodes } => {
                self.succeeded();
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.nodes = nodes.max(1);
                }
            }
            Done::Alive { name, candidate, result } => match result {
                Ok(parse::Alive { ok, live, dead }) => {
                    self.succeeded();
                    self.dead = dead;
                    self.live = live.max(1);
                    if name == self.pnode {
                        self.fresh = false;
                        if !ok {
                            // Given up for dead while it stalled: its members are announced
                            // again under a new name (the old one stays dead).
                            log::warn!("Redis: this node was given up for dead; announcing its members again");
                            self.pnode = candidate;
                            let rooms: Vec<Arc<str>> = self.rooms.keys().cloned().collect();
                            for room in rooms {
                                self.reannounce(room);
                            }
                        }
                    }
                }
                Err(e) => self.failed(&format!("alive: {e}")),
            },
            Done::Reannounce { room } => {
                self.succeeded();
                self.reannounce(room);
            }
            Done::Unsubscribed { room } => {
                let Some(r) = self.rooms.get_mut(&room) else { return };
                if r.sub == (Sub::Leaving { again: true }) {
                    // Messages published meanwhile were missed: the confirmation's catch-up
                    // reads them.
                    self.start_subscribe(&room);
                } else if let Some(mut r) = self.rooms.remove(&room) {
                    r.unpark_all(&*self.sink);
                    self.by_id.remove(&r.id);
                }
            }
            Done::Joined { room, batch, result } => self.joined(room, batch, result),
            Done::CaughtUp { room, result } => self.caught_up(room, result),
        }
    }

    fn subscribed(&mut self, room: Arc<str>, ok: Result<(), String>) {
        match ok {
            Ok(()) => {
                self.succeeded();
                if let Some(r) = self.rooms.get_mut(&room) {
                    r.sub = Sub::Live;
                    r.live = Some(self.disconnects);
                }
                self.next_batch(&room);
            }
            Err(e) => {
                self.failed(&format!("subscribe: {e}"));
                // Joins cannot wait for Redis to come back: they fail now (and the client may
                // join again); the subscription is retried.
                let Some(r) = self.rooms.get_mut(&room) else { return };
                r.sub = Sub::Retry;
                let id = r.id;
                let failed: Vec<PendingJoin> = std::mem::take(&mut r.joins).into();
                for j in failed {
                    let ev = Event::JoinFailed { to: j.to, room: id, id: j.tag, message: format!("Redis: {e}") };
                    self.sink.post(j.to.lp as usize, ev, true);
                }
            }
        }
    }

    fn joined(&mut self, room: Arc<str>, batch: Vec<PendingJoin>, result: Result<parse::Joined, String>) {
        let every = self.sweep_every();
        let jitter = 0.5 + unit(&mut self.rng);
        let disconnects = self.disconnects;
        let Some(r) = self.rooms.get_mut(&room) else { return };
        r.busy = false;
        let id = r.id;
        let (epoch, top, entries) = match result {
            Ok(parse::Joined { epoch, top, msgs, nodes }) => {
                // Now the room's node count is known: sweep it on that footing, sooner than
                // the estimate if it is shared by fewer.
                r.nodes = nodes;
                let at = Instant::now() + every.mul_f64(f64::from(nodes) * jitter);
                if r.next_sweep.is_none_or(|t| t > at) {
                    r.next_sweep = Some(at);
                }
                (epoch, top, msgs)
            }
            Err(e) if e == SHED => {
                // Never sent: nothing to undo in Redis.
                for j in batch {
                    r.forget_user(&j.user);
                    self.gauges.redis_shed();
                    let ev = Event::JoinFailed { to: j.to, room: id, id: j.tag, message: SHED.into() };
                    self.sink.post(j.to.lp as usize, ev, true);
                }
                self.next_batch(&room);
                return;
            }
            Err(e) => {
                // Perhaps it ran and only its answer was lost: a clean leave per joiner undoes
                // it either way (a leave of an entry that is not there changes nothing).
                let users: Vec<Arc<str>> = batch.iter().map(|j| j.user.clone()).collect();
                for j in batch {
                    let ev = Event::JoinFailed { to: j.to, room: id, id: j.tag, message: format!("Redis: {e}") };
                    self.sink.post(j.to.lp as usize, ev, true);
                }
                self.failed(&e);
                for u in users {
                    self.queue_leave(&room, &u, true);
                }
                self.next_batch(&room);
                return;
            }
        };
        let epoch: Arc<str> = epoch.into();
        let on_their_way = r.continuous;
        r.continuous = r.read_live == Some(disconnects);
        let mut reset = false;
        if r.epoch.as_ref().is_some_and(|e| *e != epoch) {
            reset = true;
            r.forwarded = None;
            r.held.clear();
        }
        r.epoch = Some(epoch.clone());
        // Hand the loops what they have not seen yet, in order.
        let mut gap = false;
        if let Some(f) = r.forwarded {
            let missing: Vec<&Msg> = entries.iter().filter(|m| m.seq > f && m.seq <= top).collect();
            let complete =
                top <= f || missing.first().is_some_and(|m| m.seq == f + 1) && missing.len() as u64 == top - f;
            if complete {
                for m in missing {
                    r.forward(&*self.sink, m);
                }
            } else if on_their_way {
                // Trimmed from the history but not lost: pub/sub brings them, in order.
                for m in missing {
                    r.held.insert(m.seq, m.clone());
                }
                gap = true;
            } else {
                reset = true;
            }
        }
        if !gap {
            r.forwarded = Some(top.max(r.forwarded.unwrap_or(0)));
        }
        if reset {
            r.reset(&*self.sink, LOST);
        }
        for j in batch {
            let (recovered, replay) = match &j.since {
                Some(p) if *p.epoch == *epoch && p.seq <= top => {
                    let replay: Vec<Msg> = entries.iter().filter(|m| m.seq > p.seq && m.seq <= top).cloned().collect();
                    let whole = replay.len() as u64 == top - p.seq && replay.first().is_none_or(|m| m.seq == p.seq + 1);
                    if whole {
                        (true, replay)
                    } else {
                        (false, Vec::new())
                    }
                }
                _ => (false, Vec::new()),
            };
            let result = Joined { id: j.tag, epoch: epoch.clone(), top, recovered, replay };
            r.parked.push_back((top, j.to.lp as usize, Event::Joined { to: j.to, room: id, result }));
        }
        r.unpark(&*self.sink);
        self.succeeded();
        self.drain_held(&room);
        self.next_batch(&room);
    }

    fn caught_up(&mut self, room: Arc<str>, result: Result<CatchUp, String>) {
        let disconnects = self.disconnects;
        let Some(r) = self.rooms.get_mut(&room) else { return };
        r.busy = false;
        let (epoch, top, entries) = match result {
            Ok(x) => x,
            Err(e) => {
                r.catch_up = true; // retried
                self.failed(&e);
                return;
            }
        };
        let f = r.forwarded.unwrap_or(0);
        let on_their_way = r.continuous;
        r.continuous = r.read_live == Some(disconnects);
        let same_epoch = match (&epoch, &r.epoch) {
            (Some(e), Some(known)) => **known == **e,
            (None, _) => false, // the room's data is gone
            (Some(_), None) => true,
        };
        let complete = top <= f || entries.first().is_some_and(|m| m.seq == f + 1) && entries.len() as u64 >= top - f;
        // Incomplete but `on_their_way`: trimmed from the history, and pub/sub brings them.
        if same_epoch && (complete || on_their_way) {
            for m in entries {
                if m.seq > f {
                    r.held.insert(m.seq, m);
                }
            }
        } else {
            // What this node's members missed is gone: v1 members join again (and learn
            // `recovered:false`); seed-mode members go on from the room's top.
            if !same_epoch {
                r.held.clear();
            }
            r.epoch = epoch.map(Into::into);
            r.forwarded = r.epoch.as_ref().map(|_| top);
            r.reset(&*self.sink, LOST);
        }
        self.succeeded();
        self.drain_held(&room);
        self.next_batch(&room);
    }

    /// Hand the loops the held messages that come next in order. A gap waits for pub/sub when
    /// the messages are on their way, and starts a catch-up otherwise.
    fn drain_held(&mut self, name: &Arc<str>) {
        let Some(r) = self.rooms.get_mut(name) else { return };
        while let (Some(f), Some(entry)) = (r.forwarded, r.held.first_entry()) {
            let seq = *entry.key();
            if seq > f + 1 {
                break;
            }
            let m = entry.remove();
            if seq == f + 1 {
                r.forward(&*self.sink, &m);
            }
        }
        if r.forwarded.is_none() {
            return;
        }
        if r.held.is_empty() {
            r.gap_since = None;
        } else if r.continuous {
            r.gap_since.get_or_insert_with(Instant::now);
        } else {
            self.start_catch_up(name);
        }
    }

    // ---- pushes ----

    fn on_push(&mut self, p: PushInfo) {
        match p.kind {
            PushKind::Message | PushKind::SMessage => {
                let (Some(Value::BulkString(ch)), Some(Value::BulkString(payload))) = (p.data.first(), p.data.get(1))
                else {
                    return;
                };
                let Some(name) = self.room_of(ch) else {
                    return;
                };
                self.on_channel(&name, payload);
            }
            PushKind::Disconnection => {
                self.failed("connection lost");
                // Pub/sub missed whatever was published meanwhile: every room catches up once
                // the connection (and its subscriptions) are back.
                self.disconnects += 1;
                for r in self.rooms.values_mut() {
                    r.catch_up = true;
                    r.continuous = false;
                }
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                // A (re)subscription took effect: what was published before it is read from
                // the stream (nothing, unless a reconnect lost some).
                let Some(Value::BulkString(ch)) = p.data.first() else { return };
                if let Some(name) = self.room_of(ch) {
                    if let Some(r) = self.rooms.get_mut(&name) {
                        r.live = Some(self.disconnects);
                    }
                    self.start_catch_up(&name);
                }
            }
            _ => {}
        }
    }

    fn on_channel(&mut self, name: &Arc<str>, payload: &[u8]) {
        let Some(r) = self.rooms.get_mut(name) else { return };
        if let Some((joined, user)) = parse::parse_presence_event(payload) {
            let ev = Arc::new(PresenceEvent::new(name.clone(), user, joined));
            post_loops(&*self.sink, &r.loops, || Event::Presence { room: r.id, ev: ev.clone() });
            return;
        }
        let Some(m) = parse::parse_message(payload, name, &self.node) else {
            log::warn!("Redis: unreadable message in room {name:?}");
            return;
        };
        let settled = !r.busy && r.joins.is_empty();
        if r.epoch.as_ref().is_some_and(|e| *e != m.epoch) {
            // The room's numbering restarted (its Redis data was lost): v1 members join again;
            // seed-mode members go on with the new numbering.
            r.held.clear();
            r.epoch = Some(m.epoch.clone());
            r.forwarded = Some(m.seq - 1);
            r.reset(&*self.sink, RESTARTED);
        } else if r.forwarded.is_none() && settled {
            // After a reset that found the room gone: the first new message sets the position.
            r.epoch = Some(m.epoch.clone());
            r.forwarded = Some(m.seq - 1);
        }
        r.held.insert(m.seq, Arc::new(m));
        if !r.busy {
            self.drain_held(name);
        }
    }

    // ---- publish and queries ----

    fn publish(
        &mut self,
        room: Arc<str>,
        from: Arc<str>,
        payload: Payload,
        origin: Option<ConnRef>,
        ack: Option<(ConnRef, Tag)>,
    ) {
        let k = self.keys(&room);
        let epoch = crate::broker::new_epoch(&mut self.rng);
        let (binary, data): (u8, Vec<u8>) = match payload {
            Payload::Json(s) => (0, s.into_boxed_bytes().into_vec()),
            Payload::Binary(b) => (1, b.into_vec()),
        };
        let origin_s = origin.map_or(String::new(), |o| format!("{}:{}:{}:{}", self.node, o.lp, o.key, o.gen));
        let (mode, val) = match self.cfg.room_rate {
            RoomRate::Off => (0, 0),
            RoomRate::Fixed(n) => (1, n),
            RoomRate::Auto(b) => (2, b),
        };
        let ttl = ms(self.cfg.history_ttl);
        let mut cmd = evalsha(&self.scripts.publish, &[&k.meta, &k.stream]);
        cmd.arg(&k.channel).arg(&epoch).arg(&*from).arg(unix_ms()).arg(binary).arg(data);
        cmd.arg(self.cfg.history_size).arg(ttl).arg(ttl).arg(mode).arg(val).arg(origin_s);
        cmd.arg(u8::from(self.conn.sharded()));
        let (sink, gauges) = (self.sink.clone(), self.gauges.clone());
        let wants_ack = ack.is_some();
        let r = room.clone();
        self.call(&room, cmd, move |a| {
            // Whoever published hears back: its v1 answer, or a seed-mode member's error.
            let tell = |reply: Reply| {
                let (to, id) = match (ack, origin) {
                    (Some((to, id)), _) => (to, id),
                    (None, Some(o)) => (o, None),
                    (None, None) => return,
                };
                sink.post(to.lp as usize, Event::Reply { to, id, reply }, true);
            };
            match a.and_then(parse::parse_published) {
                Ok((_, seq, rate)) if seq < 0 => {
                    gauges.room_refused();
                    tell(Reply::Error {
                        code: ErrorCode::RateLimited,
                        message: format!("room over --max-room-rate ({rate} messages/s)"),
                    });
                    Done::Ok
                }
                Ok((epoch, seq, _)) => {
                    if wants_ack {
                        tell(Reply::Published { room: r, seq: seq as u64, epoch: epoch.into() });
                    }
                    Done::Ok
                }
                Err(e) => {
                    // Never accepted and lost: the publisher is told it did not happen.
                    tell(Reply::Error {
                        code: ErrorCode::Unavailable,
                        message: format!("not published: Redis unavailable ({e})"),
                    });
                    Done::Err(format!("publish: {e}"))
                }
            }
        });
    }

    fn history(&mut self, to: ConnRef, tag: Tag, room: Arc<str>, since: Option<Position>, limit: usize) {
        let k = self.keys(&room);
        let mut cmd = evalsha(&self.scripts.history, &[&k.meta, &k.stream]);
        cmd.arg(crate::broker::new_epoch(&mut self.rng)).arg(ms(self.cfg.history_ttl));
        match &since {
            Some(p) => cmd.arg(&*p.epoch).arg(p.seq as i64),
            None => cmd.arg("").arg(-1),
        };
        cmd.arg(limit);
        let sink = self.sink.clone();
        let r = room.clone();
        self.call(&room, cmd, move |a| {
            let (reply, done) = match a.and_then(|v| parse::parse_history(v, &r)) {
                Ok((epoch, messages)) => (Reply::History { room: r, epoch: epoch.into(), messages }, Done::Ok),
                Err(e) => (unavailable(&e), Done::Err(format!("history: {e}"))),
            };
            sink.post(to.lp as usize, Event::Reply { to, id: tag, reply }, true);
            done
        });
    }

    fn presence(&mut self, to: ConnRef, tag: Tag, room: Arc<str>) {
        let k = self.keys(&room);
        let cmd = evalsha(&self.scripts.presence, &[&k.pres, &k.pconns]);
        let sink = self.sink.clone();
        let r = room.clone();
        self.call(&room, cmd, move |a| {
            let (reply, done) = match a.and_then(parse::parse_presence) {
                Ok(mut users) => {
                    users.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                    (Reply::Presence { room: r, users }, Done::Ok)
                }
                Err(e) => (unavailable(&e), Done::Err(format!("presence: {e}"))),
            };
            sink.post(to.lp as usize, Event::Reply { to, id: tag, reply }, true);
            done
        });
    }

    // ---- timers ----

    /// Tell Redis this node is alive (one call for all its rooms), and learn the dead.
    fn alive(&mut self) {
        let candidate: Arc<str> = crate::broker::new_epoch(&mut self.rng).into();
        let mut cmd = evalsha(&self.scripts.alive, &[&nodes_key(&self.prefix)]);
        cmd.arg(&*self.pnode).arg(&*candidate).arg(ms(self.node_ttl())).arg(ms(self.stale_after()));
        cmd.arg(u8::from(self.fresh));
        let (scripts, name) = (self.scripts.clone(), self.pnode.clone());
        self.spawn(move |mut c| async move {
            let result = c.run_batch(vec![cmd], &scripts).await.pop().unwrap_or_else(|| Err("no answer".into()));
            Done::Alive { name, candidate, result: result.and_then(parse::parse_alive) }
        });
    }

    /// Keep alive the rooms with members here whose touch is due (each every
    /// [`Task::touch_every`] × [0.5, 1): spread out, and always well inside the TTL).
    fn touch(&mut self) {
        let (ttl, stale) = (ms(self.cfg.history_ttl), ms(self.stale_after()));
        let (now, every) = (Instant::now(), self.touch_every());
        let (rng, prefix) = (&mut self.rng, &self.prefix);
        let calls: Vec<(Arc<str>, Cmd)> = self
            .rooms
            .iter_mut()
            .filter(|(_, r)| !r.users.is_empty())
            .filter_map(|(name, r)| {
                let due = r.next_touch.is_some_and(|t| t <= now);
                if r.next_touch.is_none() || due {
                    r.next_touch = Some(now + every.mul_f64(0.5 + unit(rng) / 2.0));
                }
                due.then(|| {
                    let k = Keys::of(prefix, name);
                    let mut cmd = evalsha(&self.scripts.touch, &[&k.meta, &k.pres, &k.pconns, &k.pusers, &k.pnodes]);
                    cmd.arg(ttl).arg(&*self.pnode).arg(stale);
                    (name.clone(), cmd)
                })
            })
            .collect();
        for (name, cmd) in calls {
            let room = name.clone();
            self.upkeep(&name, cmd, move |a| match a {
                Ok(Value::Int(1)) => Done::Ok,
                // Given up for dead here, or the room's data lost: announce again.
                Ok(_) => Done::Reannounce { room },
                Err(e) => Done::Err(format!("touch: {e}")),
            });
        }
    }

    /// Add this node's members of `room` to its presence again.
    fn reannounce(&mut self, room: Arc<str>) {
        let Some(r) = self.rooms.get(&room) else { return };
        if r.users.is_empty() {
            return;
        }
        log::info!("Redis: announcing this node's members of {room:?} again");
        let users: Vec<(Arc<str>, u32)> = r.users.iter().map(|(u, n)| (u.clone(), *n)).collect();
        let k = self.keys(&room);
        let mut cmd = self.join_cmd(&k, None);
        for (u, n) in &users {
            for _ in 0..*n {
                cmd.arg(&**u);
            }
        }
        let weight = users.iter().map(|(_, n)| n).sum();
        let then = Box::new(|a: Result<Value, String>| match a {
            Ok(_) => Done::Ok,
            Err(e) => Done::Err(format!("announce: {e}")),
        });
        self.queue(&room, Call { cmd, then, weight, expires: None });
    }

    /// Report the users whose grace period ended (or whose node died) in the rooms served here.
    fn sweep(&mut self, period: Duration) {
        let sharded = u8::from(self.conn.sharded());
        let now = Instant::now();
        let (rng, dead, prefix) = (&mut self.rng, &self.dead, &self.prefix);
        let calls: Vec<(Arc<str>, Cmd)> = self
            .rooms
            .iter_mut()
            .filter(|(_, r)| r.sub == Sub::Live && r.next_sweep.is_none_or(|t| t <= now))
            .map(|(name, r)| {
                // Uniform in [0.5, 1.5) × nodes periods: the nodes' sweeps spread out.
                let jitter = 0.5 + unit(rng);
                r.next_sweep = Some(now + period.mul_f64(f64::from(r.nodes) * jitter));
                let k = Keys::of(prefix, name);
                let mut cmd = evalsha(&self.scripts.sweep, &[&k.meta, &k.pres, &k.pconns, &k.pusers, &k.pnodes]);
                cmd.arg(&k.channel).arg(sharded);
                for d in dead {
                    cmd.arg(&**d);
                }
                (name.clone(), cmd)
            })
            .collect();
        for (name, cmd) in calls {
            let room = name.clone();
            self.upkeep(&name, cmd, move |a| match a.and_then(parse::parse_swept) {
                Ok(nodes) => Done::Swept { room, nodes },
                Err(e) => Done::Err(format!("sweep: {e}")),
            });
        }
    }

    /// Failed subscriptions and waiting catch-ups are tried again; rooms idle past the linger
    /// are unsubscribed. Four times a second over every room of the process: only the rooms
    /// with something to do are copied out (cloning every name was 1-2% of a 1M run's CPU).
    fn retry(&mut self) {
        // Joins waiting their turn are answered once too late, not only when it comes.
        for i in 0..self.turns.len() {
            let name = self.turns[i].clone();
            self.shed_expired(&name);
        }
        let now = Instant::now();
        let due: Vec<(Arc<str>, Due)> =
            self.rooms.iter().filter_map(|(name, r)| Some((name.clone(), r.due(now)?))).collect();
        for (name, due) in due {
            match due {
                Due::Subscribe => self.start_subscribe(&name),
                Due::Unsubscribe => {
                    let Some(r) = self.rooms.get_mut(&name) else { continue };
                    r.sub = Sub::Leaving { again: false };
                    let (ch, room) = (Keys::channel_of(&self.prefix, &name), name.clone());
                    self.spawn(move |mut c| async move {
                        // A failed UNSUBSCRIBE leaves a subscription nobody reads: harmless
                        // (its messages are dropped here), and gone with the connection.
                        let _ = c.unsubscribe(&ch).await;
                        Done::Unsubscribed { room }
                    });
                }
                Due::GapRead => {
                    let Some(r) = self.rooms.get_mut(&name) else { continue };
                    log::warn!("Redis: {name:?} had a gap for {GAP_WAIT:?}: reading its history again");
                    r.continuous = false;
                    r.gap_since = None;
                    self.start_catch_up(&name);
                }
                Due::CatchUp => self.start_catch_up(&name),
            }
        }
    }
}

/// What [`Task::retry`] does for a room.
enum Due {
    Subscribe,
    Unsubscribe,
    /// A gap in the live messages outlasted GAP_WAIT: read the history.
    GapRead,
    CatchUp,
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn unavailable(e: &str) -> Reply {
    Reply::Error { code: ErrorCode::Unavailable, message: format!("Redis unavailable ({e})") }
}
