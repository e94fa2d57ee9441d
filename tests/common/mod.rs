//! Helpers for the integration tests: a server on a free loopback port with short timers, a raw
//! WebSocket client that can send anything (built on the crate's own codec in client role), an
//! HTTP exchange, and waiting on a condition with a deadline (never a bare sleep).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use c100k::proto::ws::decoder::{DecodeConfig, Decoder, Frame};
use c100k::proto::ws::frame::{self, Control, Data, OpCode, Role};
use c100k::proto::ws::handshake::{self, ParsedResponse};
use c100k::server::{Config, Server};

pub mod redis;
pub mod tls;

/// With `C100K_TEST_BROKER=redis`, [`server`] keeps rooms in a Redis this test process starts
/// (one for the whole process, each server under its own key prefix): the same tests then check
/// that the Redis broker keeps the in-memory broker's semantics.
pub fn redis_broker() -> bool {
    std::env::var("C100K_TEST_BROKER").is_ok_and(|v| v == "redis")
}

/// The shared Redis of [`redis_broker`] mode, started on first use by a thread that lives as
/// long as the process (the server dies with it: it has PDEATHSIG set to that thread).
fn shared_redis_url() -> String {
    static URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    URL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let r = redis::RedisServer::start(false);
            tx.send(r.url()).unwrap();
            loop {
                std::thread::park();
            }
        });
        rx.recv().expect("the Redis for the tests started")
    })
    .clone()
}

/// Whether a Redis-backed server's key `room`'s `suffix` (meta, s, …) exists.
fn redis_key_exists(srv: &Server, room: &str, suffix: &str) -> bool {
    let Some(c100k::server::RedisTarget::Single(url)) = &srv.config().redis else { panic!("not on Redis") };
    let addr: SocketAddr = url.trim_start_matches("redis://").parse().unwrap();
    let key = format!("{}:{{{room}}}:{suffix}", srv.config().redis_prefix);
    redis::command(addr, &["EXISTS", &key]).as_deref() != Some(":0")
}

/// The broker holds no history for `room` any more (in memory: none for any room).
pub fn history_gone(srv: &Server, room: &str) -> bool {
    if srv.config().redis.is_some() {
        !redis_key_exists(srv, room, "s")
    } else {
        srv.metrics().history_messages == 0 && srv.metrics().history_bytes == 0
    }
}

/// The broker forgot `room` (in memory: every room): its next join starts a new epoch.
pub fn room_forgotten(srv: &Server, room: &str) -> bool {
    if srv.config().redis.is_some() {
        !redis_key_exists(srv, room, "meta")
    } else {
        srv.metrics().broker_rooms == 0
    }
}

/// A key prefix no other server of this run uses.
pub fn unique_prefix() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!("t{}-{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

/// Every blocking read in the tests gives up after this long, so a bug fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A server on 127.0.0.1:0 with two loops and test-friendly settings, adjusted by `tweak`.
pub fn server(tweak: impl FnOnce(&mut Config)) -> Server {
    let _ = env_logger::builder().is_test(true).try_init();
    let mut cfg = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        ping_interval: Duration::from_secs(30),
        pong_timeout: Duration::from_secs(10),
        handshake_timeout: Duration::from_secs(10),
        close_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(5),
        max_message_size: 1 << 20,
        max_backlog: 1 << 20,
        max_connections: 100_000,
        backlog: 4096,
        tick: Duration::from_millis(10),
        ..Config::default()
    };
    if redis_broker() {
        cfg.redis = Some(c100k::server::RedisTarget::Single(shared_redis_url()));
        cfg.redis_prefix = unique_prefix();
    }
    tweak(&mut cfg);
    Server::start(cfg).expect("server starts")
}

/// Poll `cond` until it holds or `limit` passes; panics with `what` on timeout.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A received frame, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// A WebSocket client speaking raw frames.
pub struct RawWs {
    pub stream: TcpStream,
    dec: Decoder,
    buf: Vec<u8>,
    queue: std::collections::VecDeque<Msg>,
    /// permessage-deflate was negotiated: compressed messages are inflated on receipt.
    pub deflate: bool,
    /// Messages that arrived compressed (RSV1).
    pub compressed: u64,
}

pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

pub fn upgrade_request(addr: SocketAddr, target: &str) -> (Vec<u8>, String) {
    upgrade_request_with(addr, target, None)
}

pub fn upgrade_request_with(addr: SocketAddr, target: &str, protocol: Option<&str>) -> (Vec<u8>, String) {
    let key = handshake::encode_key(rand_bytes());
    let mut req = Vec::new();
    handshake::write_client_request(&mut req, &addr.to_string(), target, &key, protocol);
    (req, key)
}

fn rand_bytes() -> [u8; 16] {
    let mut k = [0u8; 16];
    for c in k.chunks_mut(4) {
        c.copy_from_slice(&c100k::proto::ws::mask::random_key());
    }
    k
}

impl RawWs {
    /// Connect and complete the handshake on `target` (e.g. "/echo", "/ws?room=a").
    pub fn connect(addr: SocketAddr, target: &str) -> RawWs {
        Self::over(tcp(addr), addr, target)
    }

    /// Connect to `/ws` + `query` speaking `c100k.v1`; checks the server chose it.
    pub fn v1(addr: SocketAddr, query: &str) -> RawWs {
        Self::handshake(tcp(addr), addr, &format!("/ws{query}"), Some("c100k.v1"))
    }

    /// Complete the handshake over an already connected stream.
    pub fn over(stream: TcpStream, addr: SocketAddr, target: &str) -> RawWs {
        Self::handshake(stream, addr, target, None)
    }

    fn handshake(stream: TcpStream, addr: SocketAddr, target: &str, protocol: Option<&str>) -> RawWs {
        Self::handshake_offering(stream, addr, target, protocol, None)
    }

    /// Connect to `target` offering `Sec-WebSocket-Extensions: offer`; `deflate` on the result
    /// says whether the server took permessage-deflate (answered in its 101).
    pub fn offering(addr: SocketAddr, target: &str, protocol: Option<&str>, offer: &str) -> RawWs {
        Self::handshake_offering(tcp(addr), addr, target, protocol, Some(offer))
    }

    fn handshake_offering(
        mut stream: TcpStream,
        addr: SocketAddr,
        target: &str,
        protocol: Option<&str>,
        offer: Option<&str>,
    ) -> RawWs {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let (mut req, key) = upgrade_request_with(addr, target, protocol);
        if let Some(o) = offer {
            req.truncate(req.len() - 2); // before the blank line
            req.extend_from_slice(format!("Sec-WebSocket-Extensions: {o}\r\n\r\n").as_bytes());
        }
        stream.write_all(&req).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match handshake::parse_response(&buf, &key) {
                ParsedResponse::Complete { status: 101, accept_ok: true, len, protocol: chosen, deflate } => {
                    assert_eq!(chosen.as_deref(), protocol, "the server's Sec-WebSocket-Protocol");
                    buf.drain(..len);
                    return RawWs {
                        stream,
                        dec: Decoder::default(),
                        buf,
                        queue: Default::default(),
                        deflate,
                        compressed: 0,
                    };
                }
                ParsedResponse::Partial => {}
                other => panic!("handshake to {target} failed: {other:?}: {}", String::from_utf8_lossy(&buf)),
            }
            let n = stream.read(&mut chunk).expect("reading the 101");
            assert!(n > 0, "EOF during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Take over a stream whose upgrade request was just sent: read the 101, then frames.
    pub fn from_upgraded(mut stream: TcpStream) -> RawWs {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                assert!(buf.starts_with(b"HTTP/1.1 101 "), "{}", String::from_utf8_lossy(&buf));
                buf.drain(..end + 4);
                return RawWs {
                    stream,
                    dec: Decoder::default(),
                    buf,
                    queue: Default::default(),
                    deflate: false,
                    compressed: 0,
                };
            }
            let n = stream.read(&mut chunk).expect("reading the 101");
            assert!(n > 0, "EOF during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    pub fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut out = Vec::new();
        frame::write_masked_frame(&mut out, opcode, payload, c100k::proto::ws::mask::random_key());
        self.stream.write_all(&out).unwrap();
    }

    /// Send a message compressed with permessage-deflate (RSV1 set on its one frame).
    pub fn send_compressed(&mut self, opcode: OpCode, payload: &[u8]) {
        let z = c100k::proto::ws::deflate::compress(payload);
        let mut out = Vec::new();
        frame::write_masked_frame(&mut out, opcode, &z, c100k::proto::ws::mask::random_key());
        out[0] |= 0x40; // RSV1
        self.stream.write_all(&out).unwrap();
    }

    pub fn text(&mut self, s: &str) {
        self.send_frame(OpCode::Data(Data::Text), s.as_bytes());
    }

    pub fn binary(&mut self, b: &[u8]) {
        self.send_frame(OpCode::Data(Data::Binary), b);
    }

    pub fn ping(&mut self, b: &[u8]) {
        self.send_frame(OpCode::Control(Control::Ping), b);
    }

    pub fn close(&mut self, code: u16) {
        self.send_frame(OpCode::Control(Control::Close), &code.to_be_bytes());
    }

    pub fn raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    /// Next frame, or None at EOF/reset. Panics after IO_TIMEOUT without one.
    pub fn recv(&mut self) -> Option<Msg> {
        loop {
            if let Some(m) = self.queue.pop_front() {
                return Some(m);
            }
            if !self.buf.is_empty() {
                let mut data = std::mem::take(&mut self.buf);
                let mut rest: &mut [u8] = &mut data;
                let cfg = DecodeConfig { role: Role::Client, max_message: 64 << 20, deflate: self.deflate };
                while let Some(f) = self.dec.decode(&mut rest, &cfg).expect("server sent a valid frame") {
                    self.queue.push_back(match f {
                        Frame::Compressed { text, payload } => {
                            self.compressed += 1;
                            let data = c100k::proto::ws::deflate::inflate(&payload, 64 << 20).expect("valid deflate");
                            if text {
                                Msg::Text(String::from_utf8(data).expect("UTF-8"))
                            } else {
                                Msg::Binary(data)
                            }
                        }
                        Frame::Text(p) => Msg::Text(String::from_utf8(p.to_vec()).unwrap()),
                        Frame::Binary(p) => Msg::Binary(p.to_vec()),
                        Frame::Ping(p) => Msg::Ping(p.to_vec()),
                        Frame::Pong(p) => Msg::Pong(p.to_vec()),
                        Frame::Close(p) if p.len() >= 2 => Msg::Close(
                            Some(u16::from_be_bytes([p[0], p[1]])),
                            String::from_utf8_lossy(&p[2..]).into_owned(),
                        ),
                        Frame::Close(_) => Msg::Close(None, String::new()),
                    });
                }
                continue;
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Read until a close frame; return its code. Panics on EOF first.
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            match self.recv() {
                Some(Msg::Close(code, _)) => return code,
                Some(_) => continue,
                None => panic!("connection ended without a close frame"),
            }
        }
    }

    /// After the close handshake the server must close TCP: read to EOF.
    pub fn expect_eof(&mut self) {
        loop {
            match self.recv() {
                None => return,
                Some(Msg::Close(..)) | Some(Msg::Ping(_)) => continue,
                Some(m) => panic!("expected EOF, got {m:?}"),
            }
        }
    }

    /// Send a JSON value as a text message.
    pub fn send_json(&mut self, v: &serde_json::Value) {
        self.text(&v.to_string());
    }

    /// The next text message as JSON (pings and pongs skipped). Panics on anything else.
    pub fn recv_json(&mut self) -> serde_json::Value {
        loop {
            match self.recv() {
                Some(Msg::Text(t)) => return serde_json::from_str(&t).unwrap_or_else(|e| panic!("{e}: {t}")),
                Some(Msg::Ping(_) | Msg::Pong(_)) => continue,
                other => panic!("expected a JSON text message, got {other:?}"),
            }
        }
    }

    /// The next message whose `op` is `op`; others are returned too, in `skipped`.
    pub fn recv_op(&mut self, op: &str) -> serde_json::Value {
        loop {
            let v = self.recv_json();
            if v["op"] == op {
                return v;
            }
            assert!(v["op"] != "error", "unexpected error while waiting for {op}: {v}");
        }
    }

    /// Send a command and return its reply (`joined`, `published`, … or `error`).
    pub fn call(&mut self, cmd: serde_json::Value) -> serde_json::Value {
        let id = cmd["id"].clone();
        assert!(!id.is_null(), "give the command an id");
        self.send_json(&cmd);
        loop {
            let v = self.recv_json();
            if v["id"] == id {
                return v;
            }
        }
    }

    /// Round-trip a ping: proves everything the server wrote before it has been read, and
    /// returns those messages.
    pub fn sync(&mut self) -> Vec<Msg> {
        let token = c100k::proto::ws::mask::random_key();
        self.ping(&token);
        let mut before = Vec::new();
        loop {
            match self.recv() {
                Some(Msg::Pong(p)) if p == token => return before,
                Some(m) => before.push(m),
                None => panic!("EOF while waiting for pong"),
            }
        }
    }
}

/// Send a raw request and read the whole response until the server closes the connection.
/// Returns (status, head, body).
pub fn http(addr: SocketAddr, request: &[u8]) -> (u16, String, Vec<u8>) {
    let mut s = tcp(addr);
    s.write_all(request).unwrap();
    let mut all = Vec::new();
    loop {
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("reading the response: {e} (got {:?})", String::from_utf8_lossy(&all)),
        }
    }
    let text = String::from_utf8_lossy(&all).into_owned();
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("incomplete response: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
    let body = all[head.len() + 4..].to_vec();
    (status, head.to_string(), body)
}

/// A keep-alive HTTP/1.1 client: one TCP connection, many requests.
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// A response read by [`HttpConn`].
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn closes(&self) -> bool {
        self.head.to_ascii_lowercase().contains("connection: close")
    }
}

impl HttpConn {
    pub fn new(addr: SocketAddr) -> HttpConn {
        HttpConn { stream: tcp(addr), buf: Vec::new() }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.stream.write_all(raw).unwrap();
    }

    /// `METHOD path` with optional headers (each ending in CRLF) and body.
    pub fn request(&mut self, method: &str, path: &str, headers: &str, body: &[u8]) -> HttpResponse {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\n{headers}").into_bytes();
        if !body.is_empty() || method == "POST" {
            req.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        req.extend_from_slice(body);
        self.send(&req);
        self.response()
    }

    /// Read one response (its body by Content-Length).
    pub fn response(&mut self) -> HttpResponse {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())
                    })
                    .expect("Content-Length");
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
                    return HttpResponse { status, head, body };
                }
            }
            let n = self.stream.read(&mut chunk).expect("reading a response");
            assert!(n > 0, "EOF before a complete response: {:?}", String::from_utf8_lossy(&self.buf));
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// True when the server closes the connection (EOF) with nothing more to read.
    pub fn closed(&mut self) -> bool {
        let mut b = [0u8; 64];
        self.buf.is_empty() && matches!(self.stream.read(&mut b), Ok(0) | Err(_))
    }
}

/// Send an upgrade request and read the answer's head: for a 101 only the head (the WebSocket
/// stays open until dropped), for a refusal the whole response up to the server's close.
/// Returns (status, head and body as text).
pub fn upgrade_answer(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = tcp(addr);
    s.write_all(request).unwrap();
    let mut all = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("reading the answer: {e} (got {:?})", String::from_utf8_lossy(&all)),
        };
        all.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&all).into_owned();
        if let Some((head, _)) = text.split_once("\r\n\r\n") {
            let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status code");
            if status == 101 || n == 0 {
                return (status, text);
            }
        }
        assert!(n > 0, "EOF before a response: {text:?}");
    }
}

pub fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    http(addr, format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
}

/// The c100k binary, started with `args` (plus --listen 127.0.0.1:0), and the address it
/// reports; its stderr keeps being drained into `log` on a thread.
pub struct Binary {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    pub fn start(args: &[&str]) -> Binary {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_c100k"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn c100k");
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let addr: SocketAddr = loop {
            let line = lines.next().expect("c100k exited before listening").unwrap();
            log.lock().unwrap().push(line.clone());
            if let Some(rest) = line.split("listening on ").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        let sink = log.clone();
        std::thread::spawn(move || lines.map_while(Result::ok).for_each(|l| sink.lock().unwrap().push(l)));
        Binary { child, addr, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Wait for the process to exit; panics after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "c100k did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn logged(&self, needle: &str) -> bool {
        self.log_count(needle) > 0
    }

    /// Log lines containing `needle` so far.
    pub fn log_count(&self, needle: &str) -> usize {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).count()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A JWT signed with `secret` (HS256) carrying `claims`.
pub fn jwt(secret: &[u8], claims: serde_json::Value) -> String {
    use jsonwebtoken::{encode, EncodingKey, Header};
    encode(&Header::default(), &claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// Drop a connection the way a crashed client or a dead network does: no close frame, an RST.
pub fn kill(ws: RawWs) {
    socket2::SockRef::from(&ws.stream).set_linger(Some(Duration::ZERO)).unwrap();
    drop(ws);
}

/// One metric from /metrics (exact name, labels included).
pub fn metric(addr: SocketAddr, name: &str) -> u64 {
    let (_, _, body) = get(addr, "/metrics");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')).map(|v| v.parse().unwrap()))
        .unwrap_or_else(|| panic!("no metric {name}"))
}

/// Child processes of `pid`.
pub fn children(pid: i32) -> Vec<i32> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            v.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    v
}

/// One Server-Sent Event (or a comment, with `event` "comment").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {:?}", self.data))
    }
}

/// An event-stream reader over a raw socket, parsing the WHATWG format (fields, multi-line
/// data, comments) the way `EventSource` does.
pub struct SseClient {
    pub stream: TcpStream,
    pub status: u16,
    pub head: String,
    buf: Vec<u8>,
}

impl SseClient {
    /// `GET target` with extra header lines (each ending in CRLF).
    pub fn open(addr: SocketAddr, target: &str, headers: &str) -> SseClient {
        let mut stream = tcp(addr);
        write!(stream, "GET {target} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n{headers}\r\n").unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let n = stream.read(&mut chunk).expect("reading the stream's head");
            assert!(n > 0, "EOF before the head: {:?}", String::from_utf8_lossy(&buf));
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("status");
        buf.drain(..end + 4);
        SseClient { stream, status, head, buf }
    }

    /// The next event or comment; `None` at the end of the stream.
    pub fn next_any(&mut self) -> Option<SseEvent> {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let block = String::from_utf8(self.buf[..end].to_vec()).expect("UTF-8 events");
                self.buf.drain(..end + 2);
                let mut ev = SseEvent { id: None, event: "message".into(), data: String::new() };
                let mut data: Vec<&str> = Vec::new();
                for line in block.split('\n') {
                    if let Some(c) = line.strip_prefix(':') {
                        return Some(SseEvent { id: None, event: "comment".into(), data: c.trim().into() });
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => ev.id = Some(value.into()),
                        "event" => ev.event = value.into(),
                        "data" => data.push(value),
                        _ => {}
                    }
                }
                ev.data = data.join("\n");
                return Some(ev);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading events: {e}"),
            }
        }
    }

    /// The next event, skipping comments (and `retry:` blocks).
    pub fn next(&mut self) -> Option<SseEvent> {
        loop {
            let ev = self.next_any()?;
            if ev.event != "comment" && !(ev.event == "message" && ev.data.is_empty()) {
                return Some(ev);
            }
        }
    }

    /// The next event, which must be `event`.
    pub fn expect(&mut self, event: &str) -> SseEvent {
        let ev = self.next().unwrap_or_else(|| panic!("the stream ended before a {event} event"));
        assert_eq!(ev.event, event, "{ev:?}");
        ev
    }
}
