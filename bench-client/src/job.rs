//! What a worker process is asked to do, and the line protocol between the coordinator and its
//! workers (JSON lines: the job and commands on the worker's stdin, reports on its stdout).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::net::Target;
use crate::stats::Outcome;

/// The scenario and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Scenario {
    /// Open connections and hold them.
    Idle,
    /// Each message comes back on the same connection.
    Echo { size: usize, load: Load, binary: bool },
    /// Members in rooms; senders publish, every other member should receive.
    Broadcast {
        rooms: u32,
        senders: u32,
        /// Total messages per second over all senders.
        rate: f64,
        size: usize,
        /// The server also delivers a message to its sender.
        includes_sender: bool,
        /// Members speak `c100k.v1` (join, publish, numbered messages) instead of the seed mode.
        v1: bool,
        /// v1 resume: every member that does not send drops its connection this often (ms,
        /// staggered) and comes back with `since`. 0: never.
        resume_every_ms: u64,
        /// v1 failover: a member whose connection the server side ends (its node died) comes
        /// back on the next URL after a backoff with jitter, and resumes with `since`.
        reconnect: bool,
        /// With `reconnect`: the client library's backoff (1 s doubling to 60 s, full jitter)
        /// instead of failover's quick one (a reconnect storm after a restart).
        storm: bool,
    },
}

/// Echo load model.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum Load {
    /// Open loop: this many messages per second in total, each timed from its intended send time.
    Rate(f64),
    /// Closed loop: this many messages in flight per connection.
    Window(u32),
}

/// One worker's share of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub scenario: Scenario,
    /// How members (not senders) receive: WebSocket, SSE or long polling.
    #[serde(default)]
    pub transport: crate::http_member::Transport,
    /// WebSocket connections offer permessage-deflate (and inflate what comes compressed).
    #[serde(default)]
    pub deflate: bool,
    /// Pad payloads with text (words) instead of one repeated byte: compresses like real text.
    #[serde(default)]
    pub words: bool,
    /// WebSockets over HTTP/2, this many per TCP connection (`--h2 --streams-per-conn`).
    #[serde(default)]
    pub h2: Option<u32>,
    /// Connection i opens `targets[i % n]`; a failover reconnect moves to the next one.
    pub targets: Vec<Target>,
    /// This worker opens connections with global indices `first..first + count`.
    pub first: u32,
    pub count: u32,
    /// Connections in the whole run (all workers).
    pub total: u32,
    pub sources: Vec<IpAddr>,
    pub threads: usize,
    /// New connections per second for this worker (0 = as fast as possible).
    pub connect_rate: f64,
    /// Handshakes in flight at once for this worker.
    pub concurrency: usize,
    /// The same while members reconnect.
    pub reconnect_concurrency: usize,
    pub connect_timeout_ms: u64,
    /// After stop, how long to wait for messages still in flight.
    pub drain_ms: u64,
    /// Makes handshake keys differ between runs.
    pub salt: u64,
    /// Certificate checks for wss:// and https:// targets.
    #[serde(default)]
    pub tls: crate::tls::TlsOptions,
}

impl Job {
    /// The room of connection `idx` (broadcast only).
    pub fn room_of(&self, idx: u32) -> Option<u32> {
        match self.scenario {
            Scenario::Broadcast { rooms, .. } => Some(idx % rooms.max(1)),
            _ => None,
        }
    }

    /// Whether connection `idx` is a sender (broadcast only).
    pub fn is_sender(&self, idx: u32) -> bool {
        matches!(self.scenario, Scenario::Broadcast { senders, .. } if idx < senders)
    }
}

/// Coordinator → worker.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// Begin the measured phase at `t0` (CLOCK_MONOTONIC ns, the same for every worker).
    Start { t0: u64 },
    /// Stop sending, let messages in flight arrive, close, and report.
    Stop,
}

/// Running totals for the progress line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub established: u64,
    pub failed: u64,
    pub dropped: u64,
    pub sent: u64,
    pub received: u64,
    pub inflight: u64,
}

impl Progress {
    pub fn add(&mut self, o: &Progress) {
        self.established += o.established;
        self.failed += o.failed;
        self.dropped += o.dropped;
        self.sent += o.sent;
        self.received += o.received;
        self.inflight += o.inflight;
    }
}

/// Worker → coordinator. Externally tagged: an internally tagged enum would buffer its content
/// and lose the integer map keys of an [`Outcome`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    Progress(Progress),
    /// Every connection of this worker has been attempted and settled.
    Ready,
    Result(Box<Outcome>),
    Fatal {
        error: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_roundtrip_through_json_lines() {
        let mut o = Outcome::default();
        o.sent_by_room.insert(3, 7);
        o.members_by_room.insert(3, 2);
        let line = serde_json::to_string(&Report::Result(Box::new(o))).unwrap();
        assert!(!line.contains('\n'));
        match serde_json::from_str::<Report>(&line).unwrap() {
            Report::Result(back) => assert_eq!(back.sent_by_room[&3], 7),
            other => panic!("{other:?}"),
        }
        let c: Command = serde_json::from_str(&serde_json::to_string(&Command::Start { t0: 5 }).unwrap()).unwrap();
        assert_eq!(c, Command::Start { t0: 5 });
    }
}
