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
}

pub fn tcp(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

pub fn upgrade_request(addr: SocketAddr, target: &str) -> (Vec<u8>, String) {
    let key = handshake::encode_key(rand_bytes());
    let mut req = Vec::new();
    handshake::write_client_request(&mut req, &addr.to_string(), target, &key, None);
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

    /// Complete the handshake over an already connected stream.
    pub fn over(mut stream: TcpStream, addr: SocketAddr, target: &str) -> RawWs {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let (req, key) = upgrade_request(addr, target);
        stream.write_all(&req).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            match handshake::parse_response(&buf, &key) {
                ParsedResponse::Complete { status: 101, accept_ok: true, len, .. } => {
                    buf.drain(..len);
                    break;
                }
                ParsedResponse::Partial => {}
                other => panic!("handshake to {target} failed: {other:?}: {}", String::from_utf8_lossy(&buf)),
            }
            let n = stream.read(&mut chunk).expect("reading the 101");
            assert!(n > 0, "EOF during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        }
        RawWs { stream, dec: Decoder::default(), buf, queue: Default::default() }
    }

    pub fn send_frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let mut out = Vec::new();
        frame::write_masked_frame(&mut out, opcode, payload, c100k::proto::ws::mask::random_key());
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
                let cfg = DecodeConfig { role: Role::Client, max_message: 64 << 20 };
                while let Some(f) = self.dec.decode(&mut rest, &cfg).expect("server sent a valid frame") {
                    self.queue.push_back(match f {
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
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
