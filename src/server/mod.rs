//! The server: one mio event loop per thread, each with its own SO_REUSEPORT listener, connection
//! slab and timer wheel; loops talk only through their [`Mailbox`]es, and reach rooms through
//! the [`Broker`].

pub mod certs;
pub mod conn;
pub mod h2;
pub mod listener;
mod messages;
pub mod metrics;
pub mod metrics_store;
pub mod relay;
pub mod rooms;
pub mod routes;
mod worker;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use mio::{Interest, Poll, Token, Waker};

use self::metrics::Snapshot;
use self::metrics_store::MetricsStore;
use crate::auth::Auth;
use crate::broker::memory::MemoryBroker;
use crate::broker::redis::RedisBroker;
pub use crate::broker::redis::Target as RedisTarget;
use crate::broker::{Broker, Event, Gauges, LoopId, RoomRate, Settings, Sink};
use crate::rooms::history::Delta;

#[cfg(not(target_pointer_width = "64"))]
compile_error!("c100k packs a slab key and a generation into a 64-bit mio token");

/// Server settings (the CLI maps onto these one to one).
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Event loops (threads).
    pub threads: usize,
    /// Ping a connection after this long without input; zero disables heartbeats.
    pub ping_interval: Duration,
    /// Drop a connection when nothing arrives this long after a ping.
    pub pong_timeout: Duration,
    /// Drop a connection that has not completed its opening handshake after this long.
    pub handshake_timeout: Duration,
    /// Wait this long for the peer's close frame, and for its EOF after the WebSocket ends.
    pub close_timeout: Duration,
    /// On SIGINT/SIGTERM, wait this long for connections to close before exiting.
    pub drain_timeout: Duration,
    /// Largest message accepted (sum of fragments); larger ones are refused with 1009.
    pub max_message_size: usize,
    /// Per-connection outbound queue cap for relayed messages; past it the peer is closed with 1008.
    pub max_backlog: usize,
    /// Connections this process holds at most; accepting pauses at the limit.
    pub max_connections: usize,
    /// listen(2) backlog (capped by net.core.somaxconn).
    pub backlog: i32,
    /// Timer resolution (see [`Config::auto_tick`]).
    pub tick: Duration,
    /// Steer each client address to one socket of the SO_REUSEPORT group of this many sockets
    /// (all processes × loops) instead of the kernel's 4-tuple hash. `None`: the kernel's hash.
    pub steer_by_source_ip: Option<usize>,
    /// HS256 secret: tokens are required on WebSocket routes. `None`: an open server.
    pub jwt_secret: Option<Vec<u8>>,
    /// Browser origins allowed to open WebSockets; `None`: any.
    pub allowed_origins: Option<Vec<String>>,
    /// Enables the server API (`/api/...`) for `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Rooms one connection may be in.
    pub max_rooms_per_conn: usize,
    /// Concurrent streams per HTTP/2 connection; 0 serves no HTTP/2.
    pub h2_max_streams: u32,
    /// Messages a second one connection may publish (burst: the same number); 0 = no limit.
    pub max_publish_rate: u32,
    /// Messages of history kept per room.
    pub history_size: usize,
    /// History of a room is dropped this long after its last publish.
    pub history_ttl: Duration,
    /// A user whose last connection in a room ended uncleanly stays present this long.
    pub presence_grace: Duration,
    /// A message begun but not completed within this long closes the connection with 1008.
    pub message_timeout: Duration,
    /// Incomplete input this process may hold in all; past it, connections holding some are
    /// not read until it frees.
    pub max_buffered_input: usize,
    /// Outbound queues this process may hold in all; past it, the slowest consumers are closed.
    pub max_outbound_memory: usize,
    /// Messages a second one room accepts.
    pub max_room_rate: RoomRate,
    /// Connections one client address may hold (0: no limit).
    pub max_connections_per_ip: usize,
    /// Serve `/metrics` and `/healthz` on this address too (loop 0), e.g. a private one.
    pub metrics_listen: Option<SocketAddr>,
    /// Keep rooms in Redis (shared by every process and node using it); `None`: in memory.
    pub redis: Option<RedisTarget>,
    /// Every Redis key and channel starts with this (apps or tenants sharing one Redis).
    pub redis_prefix: String,
    /// Redis work in flight per process, and how long a join may wait for its turn.
    pub redis_admission: crate::broker::redis::Admission,
    /// A long poll with nothing to answer is answered empty after this long.
    pub poll_timeout: Duration,
    /// An event stream gets a `: ping` comment this often (proxies close quiet streams).
    pub sse_ping_interval: Duration,
    /// The client transports offered (`--transports`).
    pub transports: routes::Transports,
    /// Serve the demo chat page at `/` (`--no-demo` turns it off).
    pub demo: bool,
    /// Negotiate permessage-deflate when a client offers it (`--deflate on|off`).
    pub deflate: bool,
    /// Messages smaller than this go uncompressed even to deflate connections.
    pub deflate_min_size: usize,
    /// Speak TLS on --listen with this certificate and key (`--tls-cert`, `--tls-key`).
    pub tls: Option<certs::TlsFiles>,
}

/// Default `--max-publish-rate`: messages a second per connection (chat, collaboration and game
/// clients send a few to a few dozen; bursts up to this pass).
pub const DEFAULT_PUBLISH_RATE: u32 = 200;

/// Default `--max-outbound-memory`: 1 GiB, or a quarter of the machine's memory if that is less.
pub fn default_outbound_memory() -> usize {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<usize>().ok())
    });
    total.map_or(1 << 30, |kb| (kb * 1024 / 4).min(1 << 30))
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            drain_timeout: Duration::from_secs(10),
            max_message_size: 1 << 20,
            max_backlog: 1 << 20,
            max_connections: 1_000_000,
            backlog: listener::somaxconn().unwrap_or(4096).max(4096),
            tick: Duration::from_millis(100),
            steer_by_source_ip: None,
            jwt_secret: None,
            allowed_origins: None,
            api_key: None,
            max_rooms_per_conn: 64,
            h2_max_streams: 100,
            max_publish_rate: DEFAULT_PUBLISH_RATE,
            history_size: 100,
            history_ttl: Duration::from_secs(300),
            presence_grace: Duration::from_secs(10),
            message_timeout: Duration::from_secs(30),
            max_buffered_input: 64 << 20,
            max_outbound_memory: default_outbound_memory(),
            max_room_rate: RoomRate::Auto(crate::broker::ROOM_DELIVERIES_PER_SEC),
            max_connections_per_ip: 0,
            metrics_listen: None,
            redis: None,
            redis_prefix: "c100k".into(),
            redis_admission: Default::default(),
            poll_timeout: Duration::from_secs(25),
            sse_ping_interval: Duration::from_secs(15),
            transports: routes::Transports::ALL,
            demo: true,
            deflate: true,
            deflate_min_size: 256,
            tls: None,
        }
    }
}

impl Config {
    /// Timer resolution for these timeouts: 1/20 of the shortest (5% precision), between 1 ms
    /// and 100 ms. Coarse ticks matter at scale: heartbeats due in the same tick go out together,
    /// so the pongs come back in bursts and are read in batches instead of one wake-up each.
    pub fn auto_tick(&self) -> Duration {
        [self.ping_interval, self.pong_timeout, self.handshake_timeout, self.close_timeout]
            .into_iter()
            .filter(|d| !d.is_zero())
            .min()
            .map_or(Duration::from_millis(100), |d| d / 20)
            .clamp(Duration::from_millis(1), Duration::from_millis(100))
    }
}

/// State every loop can see.
#[derive(Debug)]
pub(crate) struct Shared {
    pub cfg: Config,
    /// One block per loop (each written only by its loop), possibly shared with sibling processes.
    pub metrics: Arc<MetricsStore>,
    /// Connections open in this process (for --max-connections).
    pub open: AtomicUsize,
    /// Incomplete input held by this process's connections (for --max-buffered-input).
    pub inbound: AtomicUsize,
    /// Connections per client address (only with --max-connections-per-ip).
    pub per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, u32>>,
    pub auth: Auth,
    pub broker: Arc<dyn Broker>,
    /// With --tls-cert: every accepted connection starts a TLS handshake.
    pub tls: Option<certs::Tls>,
}

impl Shared {
    pub fn snapshot(&self) -> Snapshot {
        self.metrics.total()
    }
}

/// What one loop can be asked to do by others.
#[derive(Debug)]
pub enum Command {
    /// Something the broker has to say.
    Broker(Event),
    /// Stop accepting, close every connection with 1001, exit once drained or at the deadline.
    Shutdown { drain: Duration },
}

/// A loop's inbox.
pub type Mailbox = crate::net::mailbox::Mailbox<Command>;

/// The broker reaches the loops through their mailboxes.
struct Mailboxes(Vec<Arc<Mailbox>>);

impl Sink for Mailboxes {
    fn post(&self, lp: LoopId, ev: Event, wake: bool) {
        if let Some(mb) = self.0.get(lp) {
            mb.push(Command::Broker(ev), wake);
        }
    }
}

/// The broker's gauges live in the first loop's metric block of this process (written with
/// atomic adds: several loops call the broker).
struct BrokerGauges(Arc<MetricsStore>);

impl Gauges for BrokerGauges {
    fn history(&self, d: Delta) {
        let m = self.0.mine(0);
        m.history_messages.add_shared(d.messages);
        m.history_bytes.add_shared(d.bytes);
    }

    fn rooms(&self, d: i64) {
        self.0.mine(0).broker_rooms.add_shared(d);
    }

    fn room_refused(&self) {
        self.0.mine(0).room_rate_limited_total.add_shared(1);
    }

    fn broker_error(&self) {
        self.0.mine(0).redis_errors_total.add_shared(1);
    }

    fn broker_up(&self, up: bool) {
        self.0.mine(0).redis_down.add_shared(if up { -1 } else { 1 });
    }

    fn redis_in_flight(&self, d: i64) {
        self.0.mine(0).redis_in_flight.add_shared(d);
    }

    fn redis_waiting(&self, d: i64) {
        self.0.mine(0).redis_waiting.add_shared(d);
    }

    fn redis_shed(&self) {
        self.0.mine(0).redis_shed_total.add_shared(1);
    }
}

/// How long a start waits for Redis to answer before giving up.
const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

const LISTENER: Token = Token(usize::MAX);
const ADMIN_LISTENER: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 1);

/// A running server.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
    mailboxes: Vec<Arc<Mailbox>>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Bind every loop's listener and start the loops.
    pub fn start(cfg: Config) -> io::Result<Server> {
        let store = MetricsStore::private(cfg.threads.max(1));
        Self::start_with(cfg, store)
    }

    /// Start with the given metric blocks (a worker process passes its slots of the region it
    /// shares with its siblings).
    pub fn start_with(cfg: Config, metrics: MetricsStore) -> io::Result<Server> {
        let n = cfg.threads.max(1);
        let first = listener::bind_reuseport(cfg.listen, cfg.backlog)?;
        // With port 0 the first bind picks the port; the others join it.
        let local_addr = first.local_addr()?;
        let mut listeners = vec![first];
        for _ in 1..n {
            listeners.push(listener::bind_reuseport(local_addr, cfg.backlog)?);
        }
        if let Some(group) = cfg.steer_by_source_ip {
            listener::steer_by_source_ip(&listeners[0], group)?;
        }
        Self::run_loops(cfg, metrics, listeners, local_addr)
    }

    /// Start on listening sockets made by a supervisor (one per loop; their group and its
    /// steering are the supervisor's).
    pub fn start_inherited(
        cfg: Config,
        metrics: MetricsStore,
        inherited: Vec<std::net::TcpListener>,
    ) -> io::Result<Server> {
        let mut listeners = Vec::with_capacity(inherited.len());
        for l in inherited {
            l.set_nonblocking(true)?;
            listeners.push(mio::net::TcpListener::from_std(l));
        }
        let local_addr = listeners.first().ok_or(io::ErrorKind::InvalidInput)?.local_addr()?;
        Self::run_loops(cfg, metrics, listeners, local_addr)
    }

    fn run_loops(
        cfg: Config,
        metrics: MetricsStore,
        mut listeners: Vec<mio::net::TcpListener>,
        local_addr: SocketAddr,
    ) -> io::Result<Server> {
        let n = listeners.len();
        let auth = Auth::new(cfg.jwt_secret.as_deref(), cfg.allowed_origins.as_deref())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = match &cfg.tls {
            Some(files) => Some(
                certs::Tls::load(files, cfg.h2_max_streams > 0)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
            ),
            None => None,
        };
        let mut polls = Vec::with_capacity(n);
        let mut mailboxes = Vec::with_capacity(n);
        let cfg = Config { threads: n, ..cfg };
        for l in listeners.iter_mut() {
            let poll = Poll::new()?;
            poll.registry().register(l, LISTENER, Interest::READABLE)?;
            mailboxes.push(Arc::new(Mailbox::new(Waker::new(poll.registry(), WAKER)?)));
            polls.push(poll);
        }
        metrics.reset_own_gauges();
        let metrics = Arc::new(metrics);
        let settings = Settings {
            loops: n,
            history_size: cfg.history_size,
            history_ttl: cfg.history_ttl,
            presence_grace: cfg.presence_grace,
            room_rate: cfg.max_room_rate,
        };
        let sink = Arc::new(Mailboxes(mailboxes.clone()));
        let gauges = Arc::new(BrokerGauges(metrics.clone()));
        let broker: Arc<dyn Broker> = match &cfg.redis {
            None => Arc::new(MemoryBroker::new(settings, sink, gauges)),
            Some(target) => Arc::new(
                RedisBroker::start(
                    target.clone(),
                    &cfg.redis_prefix,
                    settings,
                    cfg.redis_admission,
                    sink,
                    gauges,
                    REDIS_CONNECT_TIMEOUT,
                )
                .map_err(|e| io::Error::new(io::ErrorKind::ConnectionRefused, e))?,
            ),
        };
        let admin = match cfg.metrics_listen {
            Some(a) => Some(listener::bind_reuseport(a, 128)?),
            None => None,
        };
        let metrics_addr = match &admin {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };
        let shared = Arc::new(Shared {
            metrics,
            open: AtomicUsize::new(0),
            inbound: AtomicUsize::new(0),
            per_ip: Default::default(),
            cfg,
            auth,
            broker,
            tls,
        });
        let mut threads = Vec::with_capacity(n);
        let mut admin = admin;
        for (id, (poll, listener)) in polls.into_iter().zip(listeners).enumerate() {
            // Made here, then moved to its thread: its up-front reservations (the slab, buffers)
            // come from this thread's heap. (Made on the loop thread, the same test flood showed
            // a heap ~14 MB larger one run in four: tests/attacks.rs, outbound queues.)
            let mut w = worker::Worker::new(id, poll, listener, shared.clone(), mailboxes[id].clone());
            if let Some(a) = admin.take() {
                w.serve_admin(a)?;
            }
            threads.push(std::thread::Builder::new().name(format!("c100k-loop-{id}")).spawn(move || w.run())?);
        }
        Ok(Server { local_addr, metrics_addr, shared, mailboxes, threads })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.shared.cfg
    }

    /// Where --metrics-listen serves, if it does.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Metrics summed over all loops.
    pub fn metrics(&self) -> Snapshot {
        self.shared.snapshot()
    }

    /// Metrics of each loop separately (index = loop id).
    pub fn loop_metrics(&self) -> Vec<Snapshot> {
        self.shared.metrics.own().iter().map(|m| m.snapshot()).collect()
    }

    /// Read the TLS certificate and key files again (SIGHUP): new handshakes use them,
    /// established connections are untouched. On error the old pair stays in use.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.shared.tls {
            Some(t) => t.reload(),
            None => Ok(()),
        }
    }

    /// Whether connections speak TLS.
    pub fn is_tls(&self) -> bool {
        self.shared.tls.is_some()
    }

    /// Begin a graceful shutdown: stop accepting, send close 1001 to every connection, and let
    /// the loops exit once drained or after the configured drain timeout.
    pub fn shutdown(&self) {
        for mb in &self.mailboxes {
            mb.send(Command::Shutdown { drain: self.shared.cfg.drain_timeout });
        }
    }

    /// Wait for every loop to exit.
    pub fn wait(self) {
        for t in self.threads {
            let _ = t.join();
        }
        self.shared.broker.stop();
    }
}

/// Render the `/metrics` body: the whole server (every loop of every worker process).
pub(crate) fn metrics_text(shared: &Shared) -> String {
    use std::fmt::Write as _;
    let store = &shared.metrics;
    let mut text = metrics::render(
        &store.total(),
        &[
            (
                "processes",
                "gauge",
                "Worker processes serving this port (1 without --processes).",
                store.processes() as u64,
            ),
            ("worker_restarts_total", "counter", "Worker processes restarted by the supervisor.", store.restarts()),
        ],
    );
    if store.processes() > 1 {
        let _ = writeln!(
            text,
            "# HELP c100k_worker_websockets_open Open WebSocket connections per worker process.\n# TYPE c100k_worker_websockets_open gauge"
        );
        for (i, s) in store.per_process().iter().enumerate() {
            let _ = writeln!(text, "c100k_worker_websockets_open{{worker=\"{i}\"}} {}", s.websockets_open);
        }
    }
    text
}
