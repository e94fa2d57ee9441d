//! The `c100k` command line. Every flag can also be set from an environment variable
//! `C100K_<FLAG>` (e.g. `C100K_PING_INTERVAL=5`); durations are seconds, fractions allowed.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::server::Config;

/// c100k: a WebSocket server for 100K-1M concurrent connections on one host.
///
/// Routes: /echo (echo), /ws?room=NAME and /?room=NAME (chat rooms: JSON text relayed to the
/// other members), /healthz, /metrics (Prometheus).
#[derive(Debug, Clone, Parser)]
#[command(name = "c100k", version, about, long_about = None)]
pub struct Args {
    /// Address and port to listen on.
    #[arg(long, env = "C100K_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Event loops (threads), each with its own SO_REUSEPORT listener. Default: number of cores.
    #[arg(long, env = "C100K_THREADS")]
    pub threads: Option<usize>,

    /// Seconds without input before the server pings a connection (0 disables heartbeats).
    #[arg(long, env = "C100K_PING_INTERVAL", default_value = "30", value_parser = parse_secs)]
    pub ping_interval: Duration,

    /// Seconds to wait, after a ping, for any frame before dropping the connection.
    #[arg(long, env = "C100K_PONG_TIMEOUT", default_value = "10", value_parser = parse_secs)]
    pub pong_timeout: Duration,

    /// Seconds a new connection has to complete its opening handshake.
    #[arg(long, env = "C100K_HANDSHAKE_TIMEOUT", default_value = "10", value_parser = parse_secs)]
    pub handshake_timeout: Duration,

    /// Seconds to wait for the peer's close frame (and for its EOF after the close).
    #[arg(long, env = "C100K_CLOSE_TIMEOUT", default_value = "5", value_parser = parse_secs)]
    pub close_timeout: Duration,

    /// On SIGINT/SIGTERM, seconds to wait for connections to finish closing before exiting.
    #[arg(long, env = "C100K_DRAIN_TIMEOUT", default_value = "10", value_parser = parse_secs)]
    pub drain_timeout: Duration,

    /// Largest message in bytes (fragments summed); larger ones are refused with close 1009.
    #[arg(long, env = "C100K_MAX_MESSAGE_SIZE", default_value_t = 1 << 20)]
    pub max_message_size: usize,

    /// Per-connection outbound queue cap in bytes; a peer whose queue passes it is closed with 1008.
    #[arg(long, env = "C100K_MAX_BACKLOG", default_value_t = 1 << 20)]
    pub max_backlog: usize,

    /// Most connections this process holds (accepting pauses at the limit). Default: what the
    /// open-file limit allows.
    #[arg(long, env = "C100K_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// listen(2) backlog. Default: net.core.somaxconn, at least 4096.
    #[arg(long, env = "C100K_BACKLOG")]
    pub backlog: Option<i32>,

    /// Worker processes on the same port (SO_REUSEPORT), each with --threads loops, under a
    /// supervisor that restarts them and drains them on SIGINT/SIGTERM. For hosts (or
    /// containers) whose per-process open-file limit is below the connections wanted. Rooms
    /// span one process, or all of them with --redis.
    #[arg(long, env = "C100K_PROCESSES", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub processes: u16,

    /// How the kernel spreads new connections over the listeners: `hash` (its 4-tuple hash) or
    /// `source-ip` (every connection from one client address to the same listener, so room
    /// members sharing an address share a process).
    #[arg(long, env = "C100K_REUSEPORT_STEER", value_enum, default_value_t = Steer::Hash)]
    pub reuseport_steer: Steer,

    /// HS256 secret for JWTs: every WebSocket route then needs a valid token (?token= or
    /// Authorization: Bearer). Without it (or --jwt-secret-file) the server is open.
    #[arg(long, env = "C100K_JWT_SECRET", conflicts_with = "jwt_secret_file", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Read the HS256 secret from this file (trailing newline removed).
    #[arg(long, env = "C100K_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<std::path::PathBuf>,

    /// Browser origins allowed to open WebSockets, comma-separated (e.g.
    /// https://app.example.com); others get 403. Clients that send no Origin are allowed.
    #[arg(long, env = "C100K_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Option<Vec<String>>,

    /// Enables the server API (/api/publish, /api/rooms/R/presence, /api/rooms/R/history) for
    /// requests with Authorization: Bearer KEY.
    #[arg(long, env = "C100K_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Rooms one connection may be in at once.
    #[arg(long, env = "C100K_MAX_ROOMS_PER_CONN", default_value_t = 64)]
    pub max_rooms_per_conn: usize,

    /// Concurrent streams (WebSockets, requests) per HTTP/2 connection. HTTP/2 is served on the
    /// TLS port to clients offering ALPN h2, and with prior knowledge (h2c) on a plain port.
    /// 0 serves HTTP/1.1 only.
    #[arg(long, env = "C100K_H2_MAX_STREAMS", default_value_t = 100)]
    pub h2_max_streams: u32,

    /// Messages a second one connection may publish (with a burst of as many); past it the
    /// message is refused (rate_limited), and a client that keeps going is closed with 1008.
    /// 0 disables the limit.
    #[arg(long, env = "C100K_MAX_PUBLISH_RATE", default_value_t = crate::server::DEFAULT_PUBLISH_RATE)]
    pub max_publish_rate: u32,

    /// Messages of history kept per room (for resume and the history op); 0 keeps none.
    #[arg(long, env = "C100K_HISTORY_SIZE", default_value_t = 100)]
    pub history_size: usize,

    /// Seconds a room's history is kept after its last publish.
    #[arg(long, env = "C100K_HISTORY_TTL", default_value = "300", value_parser = parse_secs)]
    pub history_ttl: Duration,

    /// Seconds a user whose last connection in a room dropped (not a clean leave) stays present.
    #[arg(long, env = "C100K_PRESENCE_GRACE", default_value = "10", value_parser = parse_secs)]
    pub presence_grace: Duration,

    /// Seconds a message (or HTTP-free frame) may take from its first byte to its last; past
    /// it the connection is closed with 1008. 0 disables the limit.
    #[arg(long, env = "C100K_MESSAGE_TIMEOUT", default_value = "30", value_parser = parse_secs)]
    pub message_timeout: Duration,

    /// Bytes of incomplete input (unfinished messages and requests) this process holds in all;
    /// past it, connections holding some are not read until it frees (TCP pushes back).
    #[arg(long, env = "C100K_MAX_BUFFERED_INPUT", default_value_t = 64 << 20)]
    pub max_buffered_input: usize,

    /// Messages a second one room accepts, whoever publishes (burst: as many): a number, 0
    /// (no limit), or `auto` (default: 100,000 deliveries a second divided by the room's
    /// members, at least 10 messages a second; `auto:N` for another budget). Publishes past it
    /// are refused with rate_limited.
    #[arg(long, env = "C100K_MAX_ROOM_RATE", default_value = "auto", value_parser = crate::broker::RoomRate::parse)]
    pub max_room_rate: crate::broker::RoomRate,

    /// Connections one client address may hold at once; past it new ones get 429 with
    /// Retry-After. 0 (the default) disables it: behind a proxy every client shares its address.
    #[arg(long, env = "C100K_MAX_CONNECTIONS_PER_IP", default_value_t = 0)]
    pub max_connections_per_ip: usize,

    /// Also serve /metrics and /healthz on this address (e.g. a private one), and nothing else
    /// there.
    #[arg(long, env = "C100K_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Keep rooms (numbering, history, presence) in this Redis, e.g. redis://127.0.0.1:6379/0:
    /// rooms then span every process and node using it. Without it rooms live in memory.
    #[arg(long, env = "C100K_REDIS", conflicts_with = "redis_cluster", value_parser = parse_redis_url)]
    pub redis: Option<String>,

    /// Keep rooms in a Redis Cluster (Redis >= 7, sharded pub/sub), given by some of its nodes:
    /// redis://HOST:PORT,redis://HOST:PORT,...
    #[arg(long, env = "C100K_REDIS_CLUSTER", value_delimiter = ',', value_parser = parse_redis_url)]
    pub redis_cluster: Option<Vec<String>>,

    /// Every Redis key and channel of this server starts with this, so several apps (or
    /// environments) can share one Redis.
    #[arg(long, env = "C100K_REDIS_PREFIX", default_value = "c100k", value_parser = parse_prefix)]
    pub redis_prefix: String,

    /// Redis calls one worker process keeps in flight (a join counting each joiner); the rest
    /// wait their turn in the process. Redis runs calls one at a time: processes × this is
    /// how much work a reconnect storm can queue in front of a call. 0 (the default): no bound.
    #[arg(long, env = "C100K_REDIS_IN_FLIGHT", default_value_t = 0)]
    pub redis_in_flight: u32,

    /// Seconds a join may wait for its turn toward Redis; after that it is answered
    /// `unavailable` (its client tries again after its backoff) without touching Redis.
    /// 0 (the default): joins wait as long as it takes.
    #[arg(long, env = "C100K_REDIS_JOIN_WAIT", default_value = "0", value_parser = parse_secs)]
    pub redis_join_wait: Duration,

    /// Bytes of outbound queues this process holds in all; past it, the slowest consumers (the
    /// largest queues) are closed with 1008. Default: 1 GiB, or a quarter of RAM if less.
    #[arg(long, env = "C100K_MAX_OUTBOUND_MEMORY")]
    pub max_outbound_memory: Option<usize>,

    /// A long poll (`/poll`) with nothing new is answered with an empty list after this long.
    #[arg(long, env = "C100K_POLL_TIMEOUT", default_value = "25", value_parser = parse_secs)]
    pub poll_timeout: Duration,

    /// Seconds between the `: ping` comments of an SSE stream (proxies close quiet streams).
    #[arg(long, env = "C100K_SSE_PING_INTERVAL", default_value = "15", value_parser = parse_secs)]
    pub sse_ping_interval: Duration,

    /// Client transports to offer: any of ws, sse, poll (e.g. `sse,poll` to test fallbacks).
    #[arg(long, env = "C100K_TRANSPORTS", default_value = "ws,sse,poll", value_parser = crate::server::routes::Transports::parse)]
    pub transports: crate::server::routes::Transports,

    /// Do not serve the demo chat page at `/`.
    #[arg(long, env = "C100K_NO_DEMO")]
    pub no_demo: bool,

    /// permessage-deflate (RFC 7692, always without context takeover): `on` answers clients that
    /// offer it, `off` never does.
    #[arg(long, env = "C100K_DEFLATE", value_enum, default_value_t = OnOff::On)]
    pub deflate: OnOff,

    /// Messages smaller than this many bytes are sent uncompressed even on deflate connections.
    #[arg(long, env = "C100K_DEFLATE_MIN_SIZE", default_value_t = 256)]
    pub deflate_min_size: usize,

    /// PEM certificate chain (leaf first): with --tls-key, --listen speaks TLS (wss://, https://)
    /// for every route. Both files are read again on SIGHUP.
    #[arg(long, env = "C100K_TLS_CERT", value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of --tls-cert.
    #[arg(long, env = "C100K_TLS_KEY", value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
}

/// A switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

/// See [`Args::reuseport_steer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Steer {
    Hash,
    SourceIp,
}

/// A Redis URL, checked up front so a typo is a usage error and not a start-up failure.
fn parse_redis_url(s: &str) -> Result<String, String> {
    let s = s.trim();
    redis::parse_redis_url(s).ok_or_else(|| format!("'{s}' is not a Redis URL (redis://HOST:PORT[/DB])"))?;
    Ok(s.to_string())
}

/// A key prefix: non-empty, without the braces of hash tags.
fn parse_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains(['{', '}']) || s.len() > 64 {
        return Err(format!("'{s}': 1 to 64 characters, no braces"));
    }
    Ok(s.to_string())
}

/// Parse seconds (fractions allowed) into a Duration.
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("'{s}' must be a non-negative number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

impl Args {
    /// The JWT secret from --jwt-secret or --jwt-secret-file.
    pub fn jwt_secret(&self) -> Result<Option<Vec<u8>>, String> {
        if let Some(s) = &self.jwt_secret {
            return Ok(Some(s.clone().into_bytes()));
        }
        match &self.jwt_secret_file {
            Some(p) => {
                let text = std::fs::read(p).map_err(|e| format!("--jwt-secret-file {}: {e}", p.display()))?;
                let trimmed = text.strip_suffix(b"\n").unwrap_or(&text);
                let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
                Ok(Some(trimmed.to_vec()))
            }
            None => Ok(None),
        }
    }

    /// Where rooms live: `--redis` or `--redis-cluster`, if given.
    pub fn redis_target(&self) -> Option<crate::server::RedisTarget> {
        use crate::server::RedisTarget;
        match (&self.redis, &self.redis_cluster) {
            (Some(u), _) => Some(RedisTarget::Single(u.clone())),
            (None, Some(nodes)) if !nodes.is_empty() => Some(RedisTarget::Cluster(nodes.clone())),
            _ => None,
        }
    }

    /// The server configuration these flags describe; `fd_capacity` is how many connections the
    /// open-file limit allows (used when --max-connections is not given).
    pub fn to_config(&self, fd_capacity: usize) -> Config {
        let d = Config::default();
        let threads = self.threads.unwrap_or(d.threads).max(1);
        let mut cfg = Config {
            listen: self.listen,
            threads,
            ping_interval: self.ping_interval,
            pong_timeout: self.pong_timeout,
            handshake_timeout: self.handshake_timeout,
            close_timeout: self.close_timeout,
            drain_timeout: self.drain_timeout,
            max_message_size: self.max_message_size,
            max_backlog: self.max_backlog,
            max_connections: self.max_connections.unwrap_or(fd_capacity),
            backlog: self.backlog.unwrap_or(d.backlog),
            tick: d.tick,
            steer_by_source_ip: (self.reuseport_steer == Steer::SourceIp)
                .then_some(usize::from(self.processes) * threads),
            jwt_secret: None,
            allowed_origins: self.allowed_origins.clone(),
            api_key: self.api_key.clone(),
            max_rooms_per_conn: self.max_rooms_per_conn.max(1),
            h2_max_streams: self.h2_max_streams,
            max_publish_rate: self.max_publish_rate,
            history_size: self.history_size,
            history_ttl: self.history_ttl,
            presence_grace: self.presence_grace,
            message_timeout: self.message_timeout,
            max_buffered_input: self.max_buffered_input,
            max_outbound_memory: self.max_outbound_memory.unwrap_or(d.max_outbound_memory),
            max_room_rate: self.max_room_rate,
            max_connections_per_ip: self.max_connections_per_ip,
            metrics_listen: self.metrics_listen,
            redis: self.redis_target(),
            redis_prefix: self.redis_prefix.clone(),
            redis_admission: crate::broker::redis::Admission {
                in_flight: self.redis_in_flight,
                join_wait: self.redis_join_wait,
            },
            poll_timeout: self.poll_timeout,
            sse_ping_interval: self.sse_ping_interval,
            transports: self.transports,
            demo: !self.no_demo,
            deflate: self.deflate == OnOff::On,
            deflate_min_size: self.deflate_min_size,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => {
                    Some(crate::server::certs::TlsFiles { cert: cert.clone(), key: key.clone() })
                }
                _ => None,
            },
        };
        cfg.tick = cfg.auto_tick();
        cfg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_parse_with_fractions() {
        assert_eq!(parse_secs("0.25"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_secs("30"), Ok(Duration::from_secs(30)));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("soon").is_err());
    }

    #[test]
    fn defaults_match_the_documented_contract() {
        let a = Args::try_parse_from(["c100k"]).unwrap();
        let c = a.to_config(19_000);
        assert_eq!(c.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert_eq!(c.pong_timeout, Duration::from_secs(10));
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.max_message_size, 1 << 20);
        assert_eq!(c.max_backlog, 1 << 20);
        assert_eq!(c.max_connections, 19_000);
        assert!(c.backlog >= 4096);
        assert_eq!(c.tick, Duration::from_millis(100), "defaults: the 5 s close timeout / 20, capped");
    }

    #[test]
    fn redis_urls_are_checked_and_choose_the_broker() {
        use crate::server::RedisTarget;
        assert_eq!(Args::try_parse_from(["c100k"]).unwrap().redis_target(), None);
        let a = Args::try_parse_from(["c100k", "--redis", "redis://127.0.0.1:6379/2"]).unwrap();
        assert_eq!(a.redis_target(), Some(RedisTarget::Single("redis://127.0.0.1:6379/2".into())));
        let c = Args::try_parse_from(["c100k", "--redis-cluster", "redis://a:1,redis://b:2"]).unwrap();
        assert_eq!(c.redis_target(), Some(RedisTarget::Cluster(vec!["redis://a:1".into(), "redis://b:2".into()])));
        assert!(Args::try_parse_from(["c100k", "--redis", "localhost:6379"]).is_err());
        assert!(Args::try_parse_from(["c100k", "--redis", "redis://a:1", "--redis-cluster", "redis://b:2"]).is_err());
    }

    #[test]
    fn short_timeouts_get_a_finer_tick() {
        let a = Args::try_parse_from(["c100k", "--ping-interval", "0.2", "--pong-timeout", "0.3"]).unwrap();
        assert_eq!(a.to_config(100).tick, Duration::from_millis(10));
        let b = Args::try_parse_from(["c100k", "--ping-interval", "0", "--close-timeout", "0.001"]).unwrap();
        assert_eq!(b.to_config(100).tick, Duration::from_millis(1));
    }
}
