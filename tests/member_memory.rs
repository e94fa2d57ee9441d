//! What an idle connection leaves allocated on the server's heap, counted by a global allocator
//! that wraps mimalloc (the product's allocator) and adds up the bytes asked for. The server
//! runs in this process; its clients are plain sockets whose requests and reads use stack
//! buffers, so what the count grows by while they connect is the server's. Requested bytes are
//! exact and repeatable (unlike RSS, which `scripts/measure-idle-memory.sh` reports with the
//! allocator's rounding and the kernel's share): this guards the per-member layout.

mod common;

use std::alloc::{GlobalAlloc, Layout};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_add(1, Ordering::Relaxed);
        mimalloc::MiMalloc.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        BLOCKS.fetch_sub(1, Ordering::Relaxed);
        mimalloc::MiMalloc.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - l.size() as isize, Ordering::Relaxed);
        mimalloc::MiMalloc.realloc(p, l, new)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: usize = 1000;

/// The counts are process-wide: the tests take turns.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// What a client sends, then what it reads before its next step.
type Steps<'a> = Vec<(Vec<u8>, &'a [u8])>;

/// A masked client text frame (mask 0: the payload goes as it is).
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
    f.extend_from_slice(payload);
    f
}

/// Read from `s` until `needle` has been seen (stack buffers only).
fn read_until(s: &mut TcpStream, needle: &[u8]) {
    let mut window = [0u8; 4096];
    let mut have = 0;
    loop {
        let n = s.read(&mut window[have..]).expect("read");
        assert!(n > 0, "EOF before {:?}", String::from_utf8_lossy(needle));
        have += n;
        if window[..have].windows(needle.len()).any(|w| w == needle) {
            return;
        }
        if have > window.len() - 512 {
            let keep = needle.len();
            window.copy_within(have - keep..have, 0);
            have = keep;
        }
    }
}

/// The live counts once they stop changing (the loops finish what they were doing): sampled
/// until five readings in a row agree, within a deadline.
fn settled() -> (isize, isize) {
    let mut last = (LIVE.load(Ordering::Relaxed), BLOCKS.load(Ordering::Relaxed));
    let mut same = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while same < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = (LIVE.load(Ordering::Relaxed), BLOCKS.load(Ordering::Relaxed));
        same = if now == last { same + 1 } else { 0 };
        last = now;
    }
    last
}

/// Per connection: heap bytes and blocks held while open, and left behind after close.
#[derive(Debug)]
struct Cost {
    bytes: f64,
    blocks: f64,
    left_bytes: f64,
    left_blocks: f64,
}

/// Open `N` connections that each go through `steps`, count what the server holds for them,
/// then close them and count what stays.
fn per_connection(addr: SocketAddr, steps: &Steps<'_>) -> Cost {
    let mut socks: Vec<TcpStream> = Vec::with_capacity(N);
    let base = settled();
    for _ in 0..N {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        for (send, until) in steps {
            s.write_all(send).expect("write");
            read_until(&mut s, until);
        }
        socks.push(s);
    }
    let held = settled();
    drop(socks);
    let back = settled();
    let per = |d: isize| d as f64 / N as f64;
    Cost {
        bytes: per(held.0 - base.0),
        blocks: per(held.1 - base.1),
        left_bytes: per(back.0 - base.0),
        left_blocks: per(back.1 - base.1),
    }
}

#[test]
fn idle_connections_and_members_hold_what_their_layout_says() {
    let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
    let srv = server(|c| {
        c.threads = 1;
        c.presence_grace = Duration::ZERO;
    });
    let addr = srv.local_addr();
    let mut keep = Vec::new();
    for name in ["seed", "v1", "sse", "named"] {
        // The room exists before (one member stays in it), so only members are counted.
        let mut k = RawWs::v1(addr, "");
        k.call(serde_json::json!({"op":"join","id":"k","room":name}));
        keep.push(k);
    }
    let upgrade = |target: &str, protocol| upgrade_request_with(addr, target, protocol).0;
    let end: &[u8] = b"\r\n\r\n";
    let joined: &[u8] = b"event: joined";
    let join = text_frame(br#"{"op":"join","id":1,"room":"v1"}"#);
    // (case, steps, most blocks per connection: the member's Peer, and a named user's name)
    let cases: [(&str, Steps<'_>, f64); 5] = [
        ("echo", vec![(upgrade("/echo", None), end)], 0.0),
        ("seed-mode member", vec![(upgrade("/ws?room=seed", None), end)], 1.0),
        ("v1 member", vec![(upgrade("/ws", Some("c100k.v1")), end), (join, b"joined")], 1.0),
        ("sse stream", vec![(b"GET /sse?room=sse HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), joined)], 1.0),
        ("named sse stream", vec![(b"GET /sse?room=named&user=u HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), joined)], 2.0),
    ];
    for (name, steps, blocks) in cases {
        let _ = per_connection(addr, &steps); // the loop's and the room's containers grow
        let c = per_connection(addr, &steps);
        println!("{name}: {c:?}");
        assert!(c.blocks <= blocks + 0.25, "{name}: {c:?}");
        // The Peer (48 bytes) and a share of the room's member list and timers (the margins: what
        // the process allocates meanwhile, a few hundred blocks at most).
        assert!(c.bytes <= 48.0 * blocks + 64.0, "{name}: {c:?}");
        assert!(c.left_blocks < 0.25 && c.left_bytes < 48.0, "{name} leaves memory behind: {c:?}");
    }
}

/// Opens `n` wss:// WebSockets on /echo (Python's ssl, OpenSSL: another process, so nothing it
/// allocates is counted here), says `ready` with the protocol and suite, holds them until its
/// stdin closes.
const WSS_CLIENTS: &str = r#"
import socket, ssl, sys
addr, n, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
host, port = addr.rsplit(':', 1)
ctx = ssl.create_default_context(cafile=ca)
ctx.set_alpn_protocols(['http/1.1'])
req = (f'GET /echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
       'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n').encode()
socks = []
for _ in range(n):
    s = ctx.wrap_socket(socket.create_connection((host, int(port))), server_hostname='localhost')
    s.sendall(req)
    got = b''
    while b'\r\n\r\n' not in got:
        d = s.recv(4096)
        if not d:
            sys.exit('closed during the upgrade')
        got += d
    assert b' 101 ' in got, got
    socks.append(s)
print('ready', s.version(), s.cipher()[0], flush=True)
sys.stdin.read()
"#;

#[test]
fn an_idle_wss_connection_holds_its_keys_and_rustls_kernel_state_only() {
    let _alone = ALONE.lock().unwrap_or_else(|p| p.into_inner());
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let certs = common::tls::TestCerts::fresh("member-memory");
    let srv = server(|c| {
        c.threads = 1;
        c.tls = Some(certs.files());
    });
    let n = 400;
    let run = || {
        let base = settled();
        let mut child = Command::new("python3")
            .args(["-c", WSS_CLIENTS, &srv.local_addr().to_string(), &n.to_string()])
            .arg(certs.dir.join("ca.pem"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("ready TLSv1.3 TLS_AES_256_GCM_SHA384"), "{line:?}");
        let held = settled();
        drop(child.stdin.take());
        assert!(child.wait().unwrap().success());
        let back = settled();
        let per = |d: isize| d as f64 / n as f64;
        Cost {
            bytes: per(held.0 - base.0),
            blocks: per(held.1 - base.1),
            left_bytes: per(back.0 - base.0),
            left_blocks: per(back.1 - base.1),
        }
    };
    let _ = run(); // the loop's containers grow
    let c = run();
    println!("wss echo: {c:?}");
    // Handed off rustls (net::tls): the connection's TLS state with the keys (~740 B), rustls'
    // kernel-connection state (224 B), the outbound-queue box (80 B): 3 blocks. Before the
    // hand-off rustls' whole connection made it 3,400 B in 10 blocks. On top, in both counts,
    // and what stays after the close: the timer wheel's slot buffers (a few entries each, kept
    // for reuse, bounded by the wheel's size), about one per connection here, whose slower
    // handshakes put each in a 10 ms slot of its own.
    assert!(c.blocks <= 3.5, "{c:?}");
    assert!(c.bytes <= 1100.0, "{c:?}");
    assert!(c.left_blocks < 0.5 && c.left_bytes < 48.0, "wss leaves memory behind: {c:?}");
}
