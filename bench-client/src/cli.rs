//! The `bench-client` command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::json;

use crate::coordinator::Run;
use crate::http_member::Transport;
use crate::job::{Load, Scenario};
use crate::net::{parse_sources, Target};
use crate::payload;

/// bench-client: open many WebSocket connections against any RFC 6455 server, drive idle, echo
/// or room-broadcast load, and write an honest HDR latency report (summary.json, .hgrm, SVG).
#[derive(Debug, Parser)]
#[command(name = "bench-client", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Open --conns connections, hold them --hold seconds, report connection rate, connect and
    /// handshake latency, and how many dropped during the hold.
    #[command(visible_alias = "idle")]
    Connect {
        /// The WebSocket URL every connection opens (ws://HOST:PORT/PATH).
        #[arg(long, default_value = "ws://127.0.0.1:8080/echo")]
        url: String,
        /// Connections to open.
        #[arg(long, default_value_t = 1000)]
        conns: u32,
        /// Seconds to hold the connections open once all are attempted.
        #[arg(long, default_value = "10", value_parser = secs)]
        hold: Duration,
        /// New connections per second (same as --connect-rate).
        #[arg(long)]
        rate: Option<f64>,
        /// `ws` (the --url is a WebSocket), `sse` (--url is an event stream such as
        /// http://HOST:PORT/sse?room=idle) or `poll` (--url is a long poll such as /poll?room=idle,
        /// polled again and again).
        #[arg(long, value_enum, default_value_t = Transport::Ws)]
        transport: Transport,
        #[command(flatten)]
        common: Common,
    },
    /// Echo load: each message comes back on its connection; reports msgs/s and round-trip time.
    Echo {
        /// The echo server's WebSocket URL.
        #[arg(long, default_value = "ws://127.0.0.1:8080/echo")]
        url: String,
        /// Connections that send and receive.
        #[arg(long, default_value_t = 100)]
        conns: u32,
        /// Message size in bytes (at least 16: the send timestamp).
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Open loop: total messages per second, latency measured from each message's intended
        /// send time (coordinated omission corrected).
        #[arg(long, conflicts_with = "window")]
        rate: Option<f64>,
        /// Closed loop: messages in flight per connection (default 1 when --rate is not given).
        #[arg(long)]
        window: Option<u32>,
        /// Seconds of sending (measured), after every connection is open.
        #[arg(long, default_value = "10", value_parser = secs)]
        duration: Duration,
        /// Send binary frames instead of text.
        #[arg(long)]
        binary: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Room broadcast: --members spread over --rooms, --senders publish at --rate in total;
    /// every member records delivery latency; loss, duplicates and order are checked from
    /// per-sender sequence numbers (seed mode) or from the server's seq (--protocol v1).
    Broadcast {
        #[command(flatten)]
        room: RoomArgs,
        /// The room protocol: `raw` (seed mode: JSON text relayed as is) or `v1` (c100k.v1:
        /// join, publish, numbered messages; checked gap-free from the server's seq).
        #[arg(long, value_enum, default_value_t = Protocol::Raw)]
        protocol: Protocol,
        /// How members receive: `ws`, or `sse` / `poll` (v1 rooms over /sse or /poll on the
        /// --url's host; the senders publish over v1 WebSockets). sse and poll imply --protocol v1.
        #[arg(long, value_enum, default_value_t = Transport::Ws)]
        transport: Transport,
        #[command(flatten)]
        common: Common,
    },
    /// v1 failover: like `broadcast --protocol v1` over several --url (members spread over
    /// the nodes); a member whose connection ends (a node was killed) reconnects to the next URL
    /// with exponential backoff and jitter and resumes with `since`. Reports reconnect time
    /// (the `resume` histogram: connection lost → rejoined), recovered members and messages,
    /// and loss (which must be 0). Kill a node during the run yourself (scripts/bench-cluster.sh
    /// does).
    Failover {
        #[command(flatten)]
        room: RoomArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Reconnect storm: like `broadcast --protocol v1`, and when the server goes away (restart
    /// it during the run: scripts/bench-reconnect.sh does) every member reconnects with the
    /// client library's backoff (1 s doubling to 60 s, full jitter) and resumes with `since`.
    /// Reports reconnect time (the `resume` histogram: connection lost → rejoined; p50/p99/max),
    /// recovered members and messages, and loss (which must be 0 where `recovered` is true).
    Reconnect {
        #[command(flatten)]
        room: RoomArgs,
        /// How members receive: ws, sse or poll.
        #[arg(long, value_enum, default_value_t = Transport::Ws)]
        transport: Transport,
        #[command(flatten)]
        common: Common,
    },
    /// v1 resume under load: like `broadcast --protocol v1`, and every member that does not
    /// send drops its TCP connection every --every seconds (staggered) and comes back with
    /// `since`; reports reconnects, recovered ones, messages replayed, loss and resume time.
    Resume {
        #[command(flatten)]
        room: RoomArgs,
        /// Seconds between a member's drops.
        #[arg(long, default_value = "2", value_parser = secs)]
        every: Duration,
        #[command(flatten)]
        common: Common,
    },
}

/// What payloads are padded with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Padding {
    X,
    Words,
}

/// The room protocol of a broadcast.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    Raw,
    V1,
}

/// What every room scenario takes.
#[derive(Debug, Args)]
pub struct RoomArgs {
    /// URL template; {room} becomes the room number (v1 members join the room of that name).
    /// Several, comma-separated (or --url repeated): member i connects to URL i mod n.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws?room={room}", value_delimiter = ',')]
    url: Vec<String>,
    /// Members in all.
    #[arg(long, default_value_t = 100)]
    members: u32,
    /// Rooms the members are spread over (member i is in room i mod --rooms).
    #[arg(long, default_value_t = 1)]
    rooms: u32,
    /// The first --senders members publish.
    #[arg(long, default_value_t = 1)]
    senders: u32,
    /// Messages per second over all senders.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of publishing.
    #[arg(long, default_value = "10", value_parser = secs)]
    duration: Duration,
    /// Payload size in bytes (JSON; at least what the stamp needs).
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// The server also delivers each message back to its sender (seed mode only).
    #[arg(long)]
    includes_sender: bool,
}

/// Options every scenario takes.
#[derive(Debug, Args)]
pub struct Common {
    /// Source addresses: a range (127.0.0.2-127.0.0.60), a list, or one address. Each source
    /// IP has its own ~64K ephemeral ports per destination.
    #[arg(long)]
    pub src: Option<String>,
    /// Worker processes: a number, or auto (enough for the open-file limit).
    #[arg(long, default_value = "auto")]
    pub procs: String,
    /// Event-loop threads per worker process. Default: cores / processes, at least 1.
    #[arg(long)]
    pub threads: Option<usize>,
    /// New connections per second in total (0: as fast as --concurrency allows).
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Handshakes in flight at once, in total.
    #[arg(long, default_value_t = 512)]
    pub concurrency: usize,
    /// Reconnects (a storm, a failover) in flight at once, in total. Default: --concurrency.
    /// Real clients all come back at once, spread only by their backoff's jitter; a cap meant
    /// for a polite ramp would set the storm's pace instead of the server.
    #[arg(long)]
    pub reconnect_concurrency: Option<usize>,
    /// Seconds a connection may take to connect and complete its handshake.
    #[arg(long, default_value = "10", value_parser = secs)]
    pub connect_timeout: Duration,
    /// After the run, seconds to wait for messages still in flight.
    #[arg(long, default_value = "5", value_parser = secs)]
    pub drain: Duration,
    /// Report directory (default bench-results/<UTC timestamp>-<scenario>/).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No per-second progress lines.
    #[arg(long)]
    pub quiet: bool,
    /// Offer permessage-deflate on WebSocket connections (RFC 7692); compressed messages from the
    /// server are inflated. What we send stays uncompressed.
    #[arg(long)]
    pub deflate: bool,
    /// Payload padding: `x` (one repeated byte, the default) or `words` (text that compresses
    /// about like real messages; use it with --deflate).
    #[arg(long, value_enum, default_value_t = Padding::X)]
    pub payload: Padding,
    /// WebSockets over HTTP/2 (RFC 8441 extended CONNECT): --streams-per-conn of them share each
    /// TCP connection. ws:// speaks h2c with prior knowledge, wss:// offers ALPN h2.
    #[arg(long)]
    pub h2: bool,
    /// With --h2: WebSockets per HTTP/2 connection.
    #[arg(long, default_value_t = 100, value_name = "K")]
    pub streams_per_conn: u32,
    /// wss:// and https://: accept any server certificate (signatures are still checked).
    #[arg(long)]
    pub insecure: bool,
    /// wss:// and https://: trust the certificates in this PEM file (a self-signed server
    /// certificate or its CA).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The run fails (exit status 1) when fewer connections than this were established.
    /// Default: every connection asked for.
    #[arg(long)]
    pub min_established: Option<u32>,
}

fn secs(s: &str) -> Result<Duration, String> {
    c100k::cli::parse_secs(s)
}

impl Cli {
    /// Turn the command line into a run plan.
    pub fn plan(self) -> Result<Run, String> {
        let mut transport = Transport::Ws;
        let (name, url, conns, duration, scenario, common, params, connect_rate) = match self.cmd {
            Cmd::Connect { url, conns, hold, rate, transport: t, common } => {
                transport = t;
                let p = json!({ "url": url, "conns": conns, "hold_seconds": hold.as_secs_f64(),
                                "transport": t.name() });
                ("connect", url, conns, hold, Scenario::Idle, common, p, rate)
            }
            Cmd::Echo { url, conns, size, rate, window, duration, binary, common } => {
                if size < payload::ECHO_MIN {
                    return Err(format!("--size must be at least {} (the timestamp)", payload::ECHO_MIN));
                }
                let load = match (rate, window) {
                    (Some(r), _) if r > 0.0 => Load::Rate(r),
                    (Some(_), _) => return Err("--rate must be positive".into()),
                    (None, w) => Load::Window(w.unwrap_or(1).max(1)),
                };
                // The load that ran (the default closed loop included), not only the flags given.
                let (mode, window) = match load {
                    Load::Rate(_) => ("open_loop_rate", None),
                    Load::Window(w) => ("closed_loop_window", Some(w)),
                };
                let p = json!({ "url": url, "conns": conns, "size": size, "load": mode, "rate": rate, "window": window,
                                "duration_seconds": duration.as_secs_f64(), "binary": binary });
                ("echo", url, conns, duration, Scenario::Echo { size, load, binary }, common, p, None)
            }
            Cmd::Broadcast { room, protocol, transport: t, common } => {
                transport = t;
                let v1 = protocol == Protocol::V1 || t != Transport::Ws;
                let (mut p, s, url, members, duration) = room.plan(v1, 0, false, false)?;
                p["transport"] = t.name().into();
                ("broadcast", url, members, duration, s, common, p, None)
            }
            Cmd::Failover { room, common } => {
                let (p, s, url, members, duration) = room.plan(true, 0, true, false)?;
                ("failover", url, members, duration, s, common, p, None)
            }
            Cmd::Reconnect { room, transport: t, common } => {
                transport = t;
                let (mut p, s, url, members, duration) = room.plan(true, 0, true, true)?;
                p["transport"] = t.name().into();
                p["backoff"] = "1 s doubling to 60 s, full jitter".into();
                ("reconnect", url, members, duration, s, common, p, None)
            }
            Cmd::Resume { room, every, common } => {
                let every_ms = (every.as_millis() as u64).max(1);
                let (mut p, s, url, members, duration) = room.plan(true, every_ms, false, false)?;
                p["every_seconds"] = every.as_secs_f64().into();
                ("resume", url, members, duration, s, common, p, None)
            }
        };
        let targets = url.split(',').map(|u| Target::parse(u.trim())).collect::<Result<Vec<_>, _>>()?;
        let tls = crate::tls::TlsOptions { insecure: common.insecure, ca: common.ca.clone() };
        if targets.iter().any(|t| t.tls) {
            tls.config(false)?; // a missing or bad --ca is said now, not by every worker
        }
        let h2 = common.h2.then_some(common.streams_per_conn.max(1));
        if h2.is_some() && transport != Transport::Ws {
            return Err("--h2 carries WebSockets: not with --transport sse or poll".into());
        }
        let sources = match &common.src {
            Some(s) => parse_sources(s)?,
            None => Vec::new(),
        };
        let procs = match common.procs.as_str() {
            "auto" => auto_procs(conns),
            n => n.parse::<usize>().map_err(|_| format!("--procs: '{n}' is not a number or auto"))?.max(1),
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = common.threads.unwrap_or((cores / procs).max(1)).max(1);
        let mut parameters = params;
        parameters["src"] = common.src.clone().into();
        parameters["connect_rate"] = connect_rate.unwrap_or(common.connect_rate).into();
        parameters["concurrency"] = common.concurrency.into();
        let reconnect_concurrency = common.reconnect_concurrency.unwrap_or(common.concurrency).max(1);
        parameters["reconnect_concurrency"] = reconnect_concurrency.into();
        parameters["deflate"] = common.deflate.into();
        parameters["h2_streams_per_conn"] = h2.into();
        parameters["payload"] = if common.payload == Padding::Words { "words" } else { "x" }.into();
        Ok(Run {
            name,
            scenario,
            transport,
            deflate: common.deflate,
            words: common.payload == Padding::Words,
            h2,
            tls,
            targets,
            conns,
            procs,
            threads,
            sources,
            connect_rate: connect_rate.unwrap_or(common.connect_rate),
            concurrency: common.concurrency.max(1),
            reconnect_concurrency,
            connect_timeout: common.connect_timeout,
            drain: common.drain,
            duration,
            out: common.out,
            quiet: common.quiet,
            min_established: common.min_established,
            parameters,
        })
    }
}

impl RoomArgs {
    /// The scenario, its parameters for the report, and the URL, connections and duration.
    fn plan(
        self,
        v1: bool,
        resume_every_ms: u64,
        reconnect: bool,
        storm: bool,
    ) -> Result<(serde_json::Value, Scenario, String, u32, Duration), String> {
        let RoomArgs { url, members, rooms, senders, rate, duration, size, includes_sender } = self;
        let url = url.join(",");
        if rooms == 0 || senders == 0 || senders > members || members < 2 {
            return Err("need --members >= 2, --rooms >= 1 and 1 <= --senders <= --members".into());
        }
        if !url.contains("{room}") && rooms > 1 && !v1 {
            return Err("--url needs a {room} placeholder when --rooms > 1".into());
        }
        if v1 && includes_sender {
            return Err("--includes-sender is for the seed mode (v1 never sends a member its own messages)".into());
        }
        let p = json!({ "url": url, "members": members, "rooms": rooms, "senders": senders, "rate": rate,
                        "duration_seconds": duration.as_secs_f64(), "size": size,
                        "includes_sender": includes_sender, "protocol": if v1 { "v1" } else { "raw" } });
        let s =
            Scenario::Broadcast { rooms, senders, rate, size, includes_sender, v1, resume_every_ms, reconnect, storm };
        Ok((p, s, url, members, duration))
    }
}

/// Enough worker processes that each stays within this machine's open-file limit.
fn auto_procs(conns: u32) -> usize {
    let limit = c100k::net::limits::raise_nofile(0).map_or(1024, |l| l.soft);
    let per_proc = limit.saturating_sub(256).max(64);
    (u64::from(conns).div_ceil(per_proc) as usize).max(1)
}
