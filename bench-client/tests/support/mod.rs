//! Test support: run the real bench-client binary and read its summary.json, and a small
//! thread-per-connection WebSocket server with injected faults (it counts exactly what it
//! dropped, duplicated or reordered, so the report can be checked against the truth).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use c100k::proto::http::{self, Limits, Parsed};
use c100k::proto::ws::decoder::{DecodeConfig, Decoder, Frame};
use c100k::proto::ws::frame::{self, Control, Data, OpCode, Role};
use c100k::proto::ws::handshake;
use serde_json::Value;

/// Run bench-client with `args` (plus --out and --quiet); return summary.json and the directory.
/// Run bench-client; it must exit 0 (a clean run).
pub fn bench(args: &[&str]) -> (Value, tempfile::TempDir) {
    bench_exit(args, 0)
}

/// Run bench-client expecting exit status `code` (1: a run whose checks failed); the summary's
/// verdict must agree.
pub fn bench_exit(args: &[&str], code: i32) -> (Value, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args(args)
        .arg("--out")
        .arg(dir.path())
        .arg("--quiet")
        .output()
        .expect("run bench-client");
    assert_eq!(
        out.status.code(),
        Some(code),
        "bench-client {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let text = std::fs::read_to_string(dir.path().join("summary.json")).expect("summary.json written");
    let s: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(s["verdict"]["ok"], code == 0, "{}", s["verdict"]);
    (s, dir)
}

/// Start bench-client with `args` (plus --out and --quiet) in the background.
pub fn bench_spawn(args: &[&str]) -> (std::process::Child, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args(args)
        .arg("--out")
        .arg(dir.path())
        .arg("--quiet")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run bench-client");
    (child, dir)
}

/// Wait for a [`bench_spawn`]ed run; it must exit 0. Its summary.json.
pub fn bench_wait(child: std::process::Child, dir: &tempfile::TempDir) -> Value {
    let out = child.wait_with_output().unwrap();
    let text = std::fs::read_to_string(dir.path().join("summary.json")).expect("summary.json written");
    let s: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(out.status.code(), Some(0), "bench-client: {}\n{s:#}", String::from_utf8_lossy(&out.stderr));
    s
}

pub fn files(dir: &tempfile::TempDir) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

pub fn c100k(tweak: impl FnOnce(&mut c100k::server::Config)) -> c100k::server::Server {
    let mut cfg = c100k::server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        threads: 2,
        max_connections: 50_000,
        ..Default::default()
    };
    tweak(&mut cfg);
    c100k::server::Server::start(cfg).unwrap()
}

/// What the fault server does wrong, on purpose.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Room relay that skips every `every`-th delivery.
    Drop { every: u64 },
    /// Room relay that sends every `dup`-th delivery twice and holds every `swap`-th delivery
    /// back until after the next one to the same member.
    DupSwap { dup: u64, swap: u64 },
    /// Echo that stops for `stall` once every `period`.
    Stall { period: Duration, stall: Duration },
}

#[derive(Debug, Default)]
pub struct Counts {
    pub delivered: AtomicU64,
    pub dropped: AtomicU64,
    pub duplicated: AtomicU64,
    pub swapped: AtomicU64,
}

struct Member {
    id: u64,
    out: Mutex<TcpStream>,
    held: Mutex<Option<Vec<u8>>>,
}

pub struct FaultServer {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
}

impl FaultServer {
    pub fn start(fault: Fault) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let members: Arc<Mutex<Vec<Arc<Member>>>> = Arc::default();
        let c = counts.clone();
        std::thread::spawn(move || {
            for (id, s) in listener.incoming().enumerate() {
                let Ok(s) = s else { continue };
                let (c, members) = (c.clone(), members.clone());
                std::thread::spawn(move || serve(s, id as u64, fault, c, members));
            }
        });
        FaultServer { addr, counts }
    }

    pub fn get(&self, f: impl Fn(&Counts) -> &AtomicU64) -> u64 {
        f(&self.counts).load(Ordering::SeqCst)
    }
}

fn serve(mut s: TcpStream, id: u64, fault: Fault, counts: Arc<Counts>, members: Arc<Mutex<Vec<Arc<Member>>>>) {
    s.set_nodelay(true).unwrap();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let (len, accept) = loop {
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Parsed::Complete { req, len, .. } = http::parse(&buf, Limits { max_head: 16384, max_body: 0 }) {
            break (len, handshake::check_upgrade(&req).expect("a valid upgrade"));
        }
    };
    let mut resp = Vec::new();
    handshake::write_switching_protocols(&mut resp, &accept, None);
    s.write_all(&resp).unwrap();
    let mut pending = buf.split_off(len);

    let me = Arc::new(Member { id, out: Mutex::new(s.try_clone().unwrap()), held: Mutex::new(None) });
    let relay = !matches!(fault, Fault::Stall { .. });
    if relay {
        members.lock().unwrap().push(me.clone());
    }
    s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut dec = Decoder::default();
    let cfg = DecodeConfig { role: Role::Server, max_message: 1 << 20, deflate: false };
    let start = Instant::now();
    let mut next_stall = Duration::ZERO;
    loop {
        let mut rest: &mut [u8] = &mut pending;
        loop {
            let f = match dec.decode(&mut rest, &cfg) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            match f {
                Frame::Text(p) | Frame::Binary(p) => match fault {
                    Fault::Stall { period, stall } => {
                        if start.elapsed() >= next_stall + period {
                            std::thread::sleep(stall);
                            next_stall += period;
                        }
                        let mut out = Vec::new();
                        frame::write_frame(&mut out, OpCode::Data(Data::Text), &p);
                        let _ = me.out.lock().unwrap().write_all(&out);
                    }
                    _ => relay_to_others(&me, &p, fault, &counts, &members),
                },
                Frame::Compressed { .. } => return, // never negotiated here
                Frame::Ping(p) => {
                    let mut out = Vec::new();
                    frame::write_frame(&mut out, OpCode::Control(Control::Pong), &p);
                    let _ = me.out.lock().unwrap().write_all(&out);
                }
                Frame::Close(_) => {
                    let mut out = Vec::new();
                    frame::write_frame(&mut out, OpCode::Control(Control::Close), &1000u16.to_be_bytes());
                    let _ = me.out.lock().unwrap().write_all(&out);
                    members.lock().unwrap().retain(|m| m.id != id);
                    return;
                }
                Frame::Pong(_) => {}
            }
        }
        pending.clear();
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                // Quiet: release anything held back (late, but not out of order).
                for m in members.lock().unwrap().iter() {
                    if let Some(f) = m.held.lock().unwrap().take() {
                        let _ = m.out.lock().unwrap().write_all(&f);
                    }
                }
            }
            Err(_) => break,
        }
    }
    members.lock().unwrap().retain(|m| m.id != id);
}

fn relay_to_others(me: &Member, payload: &[u8], fault: Fault, counts: &Counts, members: &Mutex<Vec<Arc<Member>>>) {
    let mut f = Vec::new();
    frame::write_frame(&mut f, OpCode::Data(Data::Text), payload);
    let others: Vec<Arc<Member>> = members.lock().unwrap().iter().filter(|m| m.id != me.id).cloned().collect();
    for m in others {
        let n = counts.delivered.fetch_add(1, Ordering::SeqCst) + 1;
        let mut out = m.out.lock().unwrap();
        match fault {
            Fault::Drop { every } if n % every == 0 => {
                counts.dropped.fetch_add(1, Ordering::SeqCst);
            }
            Fault::DupSwap { dup, swap } => {
                let mut held = m.held.lock().unwrap();
                if n % swap == 0 && held.is_none() {
                    *held = Some(f.clone());
                    continue;
                }
                let _ = out.write_all(&f);
                if n % dup == 0 {
                    let _ = out.write_all(&f);
                    counts.duplicated.fetch_add(1, Ordering::SeqCst);
                }
                if let Some(h) = held.take() {
                    let _ = out.write_all(&h);
                    counts.swapped.fetch_add(1, Ordering::SeqCst);
                }
            }
            _ => {
                let _ = out.write_all(&f);
            }
        }
    }
}
