//! The Redis side of the broker: one connection (a server or a cluster), the Lua scripts, a
//! room's keys, and running a batch of calls as one pipeline.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, PushInfo, Script, Value};
use tokio::sync::mpsc;

/// Where Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `redis://HOST:PORT[/DB]`
    Single(String),
    /// A Redis Cluster, by some of its nodes.
    Cluster(Vec<String>),
}

/// One Redis server (through the connection manager, which reconnects and resubscribes) or a
/// cluster (sharded pub/sub); cheap to clone, every clone multiplexed on the same sockets.
#[derive(Clone)]
pub enum RConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// Per-request timeouts: a Redis that stops answering fails requests instead of holding them.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

impl RConn {
    /// Connect; subscriptions' messages arrive as RESP3 pushes on `push`.
    pub async fn connect(target: &Target, push: mpsc::UnboundedSender<PushInfo>) -> redis::RedisResult<RConn> {
        match target {
            Target::Single(url) => {
                let client = redis::Client::open(with_resp3(url).as_str())?;
                let cfg = redis::aio::ConnectionManagerConfig::new()
                    .set_push_sender(push)
                    .set_automatic_resubscription()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(2));
                Ok(RConn::Single(ConnectionManager::new_with_config(client, cfg).await?))
            }
            Target::Cluster(nodes) => {
                let nodes: Vec<String> = nodes.iter().map(|u| with_resp3(u)).collect();
                let client = redis::cluster::ClusterClientBuilder::new(nodes)
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(push)
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(RESPONSE_TIMEOUT)
                    .build()?;
                Ok(RConn::Cluster(client.get_async_connection().await?))
            }
        }
    }

    /// A cluster: pub/sub is sharded (SSUBSCRIBE, SPUBLISH).
    pub fn sharded(&self) -> bool {
        matches!(self, RConn::Cluster(_))
    }

    pub async fn subscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            RConn::Single(c) => c.subscribe(channel).await,
            RConn::Cluster(c) => c.ssubscribe(channel).await,
        }
    }

    pub async fn unsubscribe(&mut self, channel: &str) -> redis::RedisResult<()> {
        match self {
            RConn::Single(c) => c.unsubscribe(channel).await,
            RConn::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }

    /// Load `script` (on every primary of a cluster).
    pub async fn load(&mut self, script: &Script) -> redis::RedisResult<()> {
        match self {
            RConn::Single(c) => script.load_async(c).await.map(drop),
            RConn::Cluster(c) => script.load_async(c).await.map(drop),
        }
    }

    async fn pipeline(&mut self, p: &redis::Pipeline) -> redis::RedisResult<Vec<redis::RedisResult<Value>>> {
        match self {
            RConn::Single(c) => p.query_async(c).await,
            RConn::Cluster(c) => p.query_async(c).await,
        }
    }

    /// Run `cmds` (all about one room, so on one slot) as one pipeline, in order; one answer
    /// per command. Scripts are only ever run by hash (EVALSHA): a script Redis lost (it
    /// restarted) fails its calls, which are answered as failures, and the scripts are loaded
    /// again before the next batch. Never the load-and-retry of `Script::invoke_async`: the
    /// retry would run after calls sent behind it.
    pub async fn run_batch(&mut self, cmds: Vec<Cmd>, scripts: &Scripts) -> Vec<Result<Value, String>> {
        let n = cmds.len();
        if scripts.reload.load(Ordering::Relaxed) {
            for s in scripts.all() {
                if let Err(e) = self.load(s).await {
                    return vec![Err(e.to_string()); n];
                }
            }
            scripts.reload.store(false, Ordering::Relaxed);
        }
        let mut p = redis::pipe();
        p.ignore_errors();
        for c in cmds {
            p.add_command(c);
        }
        match self.pipeline(&p).await {
            Ok(answers) if answers.len() == n => answers
                .into_iter()
                .map(|a| {
                    a.map_err(|e| {
                        if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                            scripts.reload.store(true, Ordering::Relaxed);
                            "Redis lost its scripts (it restarted)".to_string()
                        } else {
                            e.to_string()
                        }
                    })
                })
                .collect(),
            Ok(answers) => vec![Err(format!("{} answers to {n} commands", answers.len())); n],
            Err(e) => {
                // A lost connection may mean a restart, and its scripts gone too. A timeout does
                // not: Redis is busy. Reloading then (nine more calls before this process's
                // next batch, and so again after every timeout) was a third of a reconnect
                // storm's calls: 862,103 SCRIPT LOADs for 300,000 joins.
                if e.is_connection_dropped() || e.is_connection_refusal() || (e.is_io_error() && !e.is_timeout()) {
                    scripts.reload.store(true, Ordering::Relaxed);
                }
                vec![Err(e.to_string()); n]
            }
        }
    }
}

/// Subscriptions arrive as RESP3 pushes.
fn with_resp3(url: &str) -> String {
    if url.contains("protocol=") {
        url.to_string()
    } else if url.contains('?') {
        format!("{url}&protocol=3")
    } else {
        format!("{url}?protocol=3")
    }
}

/// The scripts (see `lua/`), run by hash.
pub struct Scripts {
    pub publish: Script,
    pub join: Script,
    pub leave: Script,
    pub sweep: Script,
    pub alive: Script,
    pub touch: Script,
    pub history: Script,
    pub presence: Script,
    pub catchup: Script,
    /// Redis may have lost them: load them before the next batch.
    reload: AtomicBool,
}

impl Default for Scripts {
    fn default() -> Scripts {
        Scripts::new()
    }
}

impl Scripts {
    pub fn new() -> Scripts {
        Scripts {
            publish: Script::new(include_str!("lua/publish.lua")),
            join: Script::new(include_str!("lua/join.lua")),
            leave: Script::new(include_str!("lua/leave.lua")),
            sweep: Script::new(include_str!("lua/sweep.lua")),
            alive: Script::new(include_str!("lua/alive.lua")),
            touch: Script::new(include_str!("lua/touch.lua")),
            history: Script::new(include_str!("lua/history.lua")),
            presence: Script::new(include_str!("lua/presence.lua")),
            catchup: Script::new(include_str!("lua/catchup.lua")),
            reload: AtomicBool::new(true),
        }
    }

    fn all(&self) -> [&Script; 9] {
        [
            &self.publish,
            &self.join,
            &self.leave,
            &self.sweep,
            &self.alive,
            &self.touch,
            &self.history,
            &self.presence,
            &self.catchup,
        ]
    }

    /// Load them all now (at start, so the first calls find them).
    pub async fn load(&self, c: &mut RConn) -> redis::RedisResult<()> {
        for s in self.all() {
            c.load(s).await?;
        }
        self.reload.store(false, Ordering::Relaxed);
        Ok(())
    }
}

/// `EVALSHA` of `script` with `keys`; add its arguments with `.arg(…)`.
pub fn evalsha(script: &Script, keys: &[&str]) -> Cmd {
    let mut c = redis::cmd("EVALSHA");
    c.arg(script.get_hash()).arg(keys.len());
    for k in keys {
        c.arg(*k);
    }
    c
}

/// A room's Redis keys and channel, all with one hash tag (one cluster slot).
#[derive(Debug, Clone)]
pub struct Keys {
    /// Hash: epoch, seq, members, rate-limit tokens.
    pub meta: String,
    /// Stream: the history, entry ids `SEQ-0`.
    pub stream: String,
    /// Sorted set: `user\x1fnode` → when its presence ends unless refreshed.
    pub pres: String,
    /// Hash: `user\x1fnode` → connections.
    pub pconns: String,
    /// Hash: user → nodes where present.
    pub pusers: String,
    /// Sorted set: node with members in the room → when it is stale here unless it touches the
    /// room again (the fallback; liveness itself is [`nodes_key`]'s).
    pub pnodes: String,
    pub channel: String,
}

impl Keys {
    /// The keys of `room` under `prefix` (`--redis-prefix`, so apps can share a Redis). Made
    /// when a call needs them, never kept per room: at 53 processes × 1,000 rooms, seven
    /// strings per room and process were ~25 MB.
    pub fn of(prefix: &str, room: &str) -> Keys {
        let tag = tag(room);
        let k = |s: &str| format!("{prefix}:{{{tag}}}:{s}");
        Keys {
            meta: k("meta"),
            stream: k("s"),
            pres: k("p"),
            pconns: k("pc"),
            pusers: k("pu"),
            pnodes: k("pn"),
            channel: format!("{prefix}:{{{tag}}}"),
        }
    }

    /// Just the room's channel.
    pub fn channel_of(prefix: &str, room: &str) -> String {
        format!("{prefix}:{{{}}}", tag(room))
    }

    /// The room whose channel `ch` is (the inverse of [`Keys::channel_of`]), so no table of
    /// channel names is kept per room.
    pub fn room_of_channel<'a>(prefix: &str, ch: &'a str) -> Option<std::borrow::Cow<'a, str>> {
        let tag = ch.strip_prefix(prefix)?.strip_prefix(":{")?.strip_suffix('}')?;
        if !tag.contains('%') {
            return Some(tag.into());
        }
        Some(tag.replace("%7B", "{").replace("%7D", "}").replace("%25", "%").into())
    }
}

/// `{` and `}` would end the hash tag early: escape them (and the escape character).
fn tag(room: &str) -> String {
    room.replace('%', "%25").replace('{', "%7B").replace('}', "%7D")
}

/// The deployment's live nodes (sorted set: node → when it is given up for dead unless it
/// refreshes): one key, outside every room's hash tag, only ever used by `alive.lua` alone.
pub fn nodes_key(prefix: &str) -> String {
    format!("{prefix}:nodes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_names_its_room_back() {
        for room in ["lobby", "a{b}c", "%7B", "%", "}{", "x%25y", "", "é"] {
            let ch = Keys::channel_of("app", room);
            assert_eq!(Keys::room_of_channel("app", &ch).as_deref(), Some(room), "{ch}");
        }
        assert_eq!(Keys::room_of_channel("app", "other:{x}"), None);
    }

    #[test]
    fn keys_share_one_hash_tag_whatever_the_room_name() {
        let k = Keys::of("app", "a{b}%c");
        assert_eq!(k.meta, "app:{a%7Bb%7D%25c}:meta");
        assert_eq!(k.channel, "app:{a%7Bb%7D%25c}");
        assert_eq!(Keys::channel_of("app", "a{b}%c"), k.channel);
        for key in [&k.meta, &k.stream, &k.pres, &k.pconns, &k.pusers, &k.pnodes, &k.channel] {
            let tag = &key[key.find('{').unwrap() + 1..key.find('}').unwrap()];
            assert_eq!(tag, "a%7Bb%7D%25c");
        }
    }

    #[test]
    fn resp3_is_asked_for() {
        assert_eq!(with_resp3("redis://h:1"), "redis://h:1?protocol=3");
        assert_eq!(with_resp3("redis://h:1/2?x=y"), "redis://h:1/2?x=y&protocol=3");
        assert_eq!(with_resp3("redis://h:1?protocol=3"), "redis://h:1?protocol=3");
    }

    #[test]
    fn evalsha_names_the_script_and_counts_its_keys() {
        let s = Script::new("return 1");
        let c = evalsha(&s, &["k1", "k2"]);
        let args: Vec<String> = c
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(args, vec!["EVALSHA".to_string(), s.get_hash().to_string(), "2".into(), "k1".into(), "k2".into()]);
    }
}
