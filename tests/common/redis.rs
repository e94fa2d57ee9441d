//! Real Redis servers for the tests: `redis-server` from the system (Debian's package, which
//! `.ci/run` installs), started on free loopback ports in a temporary directory and killed when
//! dropped. A 3-master Redis Cluster is made with `redis-cli --cluster create`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A free port whose cluster bus port (port + 10000) is free too, at most 55535.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() * 97 % 30_000);
    loop {
        let p = (base + NEXT.fetch_add(1, Ordering::Relaxed) * 7) % 35_535 + 20_000;
        let p = p as u16;
        if TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

fn binary(name: &str) -> String {
    let ok = Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        ok.is_ok_and(|s| s.success()),
        "{name} is not installed: these tests need a real Redis (apt-get install redis-server, as .ci/run does)"
    );
    name.to_string()
}

/// One `redis-server` process.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl RedisServer {
    /// A standalone server; `durable`: every write is fsynced to an append-only file, so a
    /// restart (even after SIGKILL) keeps all data.
    pub fn start(durable: bool) -> RedisServer {
        let extra: Vec<String> = if durable {
            ["--appendonly", "yes", "--appendfsync", "always"].map(String::from).to_vec()
        } else {
            ["--appendonly", "no"].map(String::from).to_vec()
        };
        Self::start_with(extra)
    }

    fn start_with(extra: Vec<String>) -> RedisServer {
        // A free port can be taken by someone else before redis-server binds it: then another.
        for _ in 0..5 {
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("c100k-redis-{}-{port}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut r = RedisServer { port, dir, child: None, extra: extra.clone() };
            if r.try_spawn() {
                return r;
            }
        }
        panic!("redis-server would not start on a free port (5 tries)");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn spawn(&mut self) {
        assert!(self.try_spawn(), "redis-server on port {} did not start", self.port);
    }

    /// Start redis-server on our port and wait for its PING; false if it exited first (the
    /// port was taken).
    fn try_spawn(&mut self) -> bool {
        let mut cmd = Command::new(binary("redis-server"));
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--daemonize", "no"])
            .args(["--dir", self.dir.to_str().unwrap(), "--protected-mode", "no", "--loglevel", "warning"])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Dies with the test process, whatever happens to it.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        self.child = Some(cmd.spawn().expect("start redis-server"));
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.command(&["PING"]).as_deref() != Some("+PONG") {
            if self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(Some(_)))) {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "redis-server on port {} did not answer PING", self.port);
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// SIGKILL the server (clients see their connections reset).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same port and directory (a durable server keeps its data).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Send one command (inline form); the first line of the answer, or `None` if unreachable.
    pub fn command(&self, args: &[&str]) -> Option<String> {
        command(self.addr(), args)
    }
}

/// Send one command to the Redis at `addr` (RESP); the connection to read the answer from.
fn send(addr: SocketAddr, args: &[&str]) -> Option<BufReader<TcpStream>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).ok()?;
    Some(BufReader::new(s))
}

/// One line of an answer, or a bulk string's contents.
fn read_one(r: &mut BufReader<TcpStream>) -> Option<String> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let line = line.trim_end().to_string();
    if let Some(n) = line.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
        let mut body = vec![0; n + 2];
        r.read_exact(&mut body).ok()?;
        body.truncate(n);
        return Some(String::from_utf8_lossy(&body).into_owned());
    }
    (!line.is_empty()).then_some(line)
}

/// One command to the Redis at `addr`; the answer's first line (or a bulk string's contents),
/// or `None` if unreachable.
pub fn command(addr: SocketAddr, args: &[&str]) -> Option<String> {
    read_one(&mut send(addr, args)?)
}

/// One command whose answer is an array of strings.
pub fn command_list(addr: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut r = send(addr, args).expect("Redis reachable");
    let head = read_one(&mut r).expect("an answer");
    let n: usize = head.strip_prefix('*').unwrap_or_else(|| panic!("not an array: {head}")).parse().unwrap();
    (0..n).map(|_| read_one(&mut r).expect("an element")).collect()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A Redis Cluster of 3 masters (no replicas) on loopback.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(
                    [
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ]
                    .map(String::from)
                    .to_vec(),
                )
            })
            .collect();
        let hosts: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)).collect();
        let out = Command::new(binary("redis-cli"))
            .args(["--cluster", "create"])
            .args(&hosts)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let c = RedisCluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.nodes.iter().all(|n| n.command(&["CLUSTER", "INFO"]).is_some_and(|i| i.contains("cluster_state:ok"))) {
            assert!(Instant::now() < deadline, "the cluster never became ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    /// The nodes' URLs, comma-separated (for --redis-cluster).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    /// The node that holds `key`'s slot (the one that does not redirect a read of it).
    pub fn node_of(&self, key: &str) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| command(n.addr(), &["EXISTS", key]).is_some_and(|a| !a.starts_with("-MOVED")))
            .expect("some node serves every slot")
    }
}
