//! TLS (--tls-cert, --tls-key): every route over TLS on --listen, ALPN, hostile bytes on the TLS
//! port, and certificate reloads (in process and by SIGHUP on the real binary) that keep
//! established connections. Real sockets on loopback; clients are rustls (blocking) with
//! tungstenite on top, and Python's `ssl` + `websockets`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::tls::{connect, https, TestCerts};
use common::*;
use serde_json::json;
use tungstenite::Message;

fn tls_server(certs: &TestCerts, tweak: impl FnOnce(&mut c100k::server::Config)) -> c100k::server::Server {
    server(|c| {
        c.tls = Some(certs.files());
        tweak(c)
    })
}

type Wss = tungstenite::WebSocket<common::tls::TlsStream>;

fn wss(addr: std::net::SocketAddr, cfg: std::sync::Arc<rustls::ClientConfig>, path: &str) -> Wss {
    let s = connect(addr, cfg).expect("TLS handshake");
    tungstenite::client(format!("wss://localhost{path}"), s).expect("WebSocket handshake over TLS").0
}

fn echo_once(ws: &mut Wss, text: &str) {
    ws.send(Message::text(text)).unwrap();
    match ws.read().unwrap() {
        Message::Text(t) => assert_eq!(t.as_str(), text),
        m => panic!("expected the echo, got {m:?}"),
    }
}

#[test]
fn every_route_speaks_tls() {
    let certs = TestCerts::fresh("routes");
    let srv = tls_server(&certs, |c| c.poll_timeout = Duration::from_millis(300));
    let (a, cfg) = (srv.local_addr(), certs.client());

    let health = https(a, cfg.clone(), "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let metrics = https(a, cfg.clone(), "/metrics");
    assert!(metrics.contains("c100k_tls_handshakes_total"), "{metrics}");

    // Echo, small and large (a message over many records, both ways).
    let mut ws = wss(a, cfg.clone(), "/echo");
    echo_once(&mut ws, "hello over TLS");
    let big = vec![7u8; 300_000];
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(big));

    // A v1 room member, an event stream and a long poll of the same room, all over TLS.
    let sse = connect(a, cfg.clone()).unwrap();
    let mut sse = std::io::BufReader::new(sse);
    write!(sse.get_mut(), "GET /sse?room=r HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut head = String::new();
    while !head.ends_with("\r\n\r\n") {
        let mut b = [0u8; 1];
        sse.read_exact(&mut b).unwrap();
        head.push(b[0] as char);
    }
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("text/event-stream"), "{head}");
    let poll = https(a, cfg.clone(), "/poll?room=r");
    assert!(poll.starts_with("HTTP/1.1 200") && poll.contains("\"next\""), "{poll}");

    let mut member = tungstenite::client(
        tungstenite::http::Request::builder()
            .uri("wss://localhost/ws?user=ann")
            .header("Host", "localhost")
            .header("Connection", "Upgrade")
            .header("Upgrade", "websocket")
            .header("Sec-WebSocket-Version", "13")
            .header("Sec-WebSocket-Key", tungstenite::handshake::client::generate_key())
            .header("Sec-WebSocket-Protocol", "c100k.v1")
            .body(())
            .unwrap(),
        connect(a, cfg.clone()).unwrap(),
    )
    .expect("v1 over TLS")
    .0;
    let call = |m: &mut Wss, v: serde_json::Value| {
        m.send(Message::text(v.to_string())).unwrap();
        loop {
            let reply: serde_json::Value = serde_json::from_str(m.read().unwrap().to_text().unwrap()).unwrap();
            if reply["id"] == v["id"] {
                return reply;
            }
        }
    };
    assert_eq!(call(&mut member, json!({"op":"join","id":1,"room":"r"}))["op"], "joined");
    assert_eq!(call(&mut member, json!({"op":"publish","id":2,"room":"r","data":"hi"}))["seq"], 1);
    // The event stream got it as an event.
    let mut text = String::new();
    while !text.contains("\"data\":\"hi\"") {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut sse, &mut line).unwrap();
        assert!(!line.is_empty(), "the stream ended: {text}");
        text.push_str(&line);
    }
    assert!(text.contains("event: msg"), "{text}");
    assert!(srv.metrics().tls_handshakes_total >= 6, "{}", srv.metrics().tls_handshakes_total);
    assert_eq!(srv.metrics().tls_handshake_failures_total, 0);

    // Closing: the closing handshake, then close_notify, then TCP FIN.
    ws.close(None).unwrap();
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("a clean end expected, got {e}"),
        }
    }
}

#[test]
fn alpn_chooses_http11_and_refuses_what_it_cannot_serve() {
    let certs = TestCerts::fresh("alpn");
    let srv = tls_server(&certs, |_| {});
    let s = connect(srv.local_addr(), certs.client()).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut both = (*certs.client()).clone();
    both.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    let s = connect(srv.local_addr(), std::sync::Arc::new(both)).unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"h2"[..]), "HTTP/2 preferred (tests/h2.rs speaks it)");
    let mut only_h3 = (*certs.client()).clone();
    only_h3.alpn_protocols = vec![b"h3".to_vec()];
    let err = connect(srv.local_addr(), std::sync::Arc::new(only_h3)).expect_err("refused");
    assert!(err.to_string().contains("received fatal alert: NoApplicationProtocol"), "told why: {err}");
    wait_for("the refusal is counted", Duration::from_secs(5), || srv.metrics().tls_handshake_failures_total == 1);
}

/// Read until the server closes; what it sent.
fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!("the server did not close the connection: {e}"),
        }
    }
}

#[test]
fn hostile_bytes_on_the_tls_port_are_dropped_counted_and_harm_nobody() {
    let certs = TestCerts::fresh("hostile");
    let srv = tls_server(&certs, |c| c.handshake_timeout = Duration::from_millis(400));
    let (a, cfg) = (srv.local_addr(), certs.client());
    let mut good = wss(a, cfg.clone(), "/echo");
    echo_once(&mut good, "before");

    // Plain HTTP: told so in plain text, then closed.
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let answer = String::from_utf8(read_to_close(&mut s)).unwrap();
    drop(s); // our EOF ends the server's lingering close
    assert!(answer.starts_with("HTTP/1.1 400") && answer.contains("use https:// or wss://"), "{answer}");

    // A handshake record holding garbage.
    let mut s = TcpStream::connect(a).unwrap();
    let mut junk = vec![0x16, 0x03, 0x01, 0x00, 0x40];
    junk.extend((0..64u8).map(|i| i.wrapping_mul(37)));
    s.write_all(&junk).unwrap();
    read_to_close(&mut s);
    drop(s);

    // The start of a real ClientHello, then nothing: the handshake timeout ends it.
    let mut hello = Vec::new();
    let mut client = rustls::ClientConnection::new(cfg.clone(), "localhost".try_into().unwrap()).unwrap();
    client.write_tls(&mut hello).unwrap();
    let mut s = TcpStream::connect(a).unwrap();
    s.write_all(&hello[..hello.len() / 2]).unwrap();
    read_to_close(&mut s);
    drop(s);

    // After a good handshake, a record that does not decrypt.
    let mut t = connect(a, cfg.clone()).unwrap();
    let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x30];
    forged.extend([0x5a; 0x30]);
    t.sock.write_all(&forged).unwrap();
    read_to_close(&mut t.sock);
    drop(t);

    wait_for("each counted", Duration::from_secs(5), || {
        let m = srv.metrics();
        m.tls_handshake_failures_total == 3 && m.tls_errors_total == 1 && m.connections_open == 1
    });
    echo_once(&mut good, "after");
}

#[test]
fn a_reload_serves_the_new_pair_and_keeps_established_connections() {
    let old = TestCerts::fresh("reload");
    let srv = tls_server(&old, |_| {});
    let a = srv.local_addr();
    let mut before = wss(a, old.client(), "/echo");
    let new = TestCerts::new(old.dir.clone()); // new CA, key and certificate, same files
    srv.reload_tls().expect("reloaded");
    let err = connect(a, old.client()).expect_err("the old CA no longer vouches for the server");
    assert!(err.to_string().contains("invalid peer certificate"), "{err}");
    wss(a, new.client(), "/echo");
    echo_once(&mut before, "still here");

    // A broken file: said, and the pair in use stays.
    std::fs::write(new.dir.join("key.pem"), "not a key").unwrap();
    let e = srv.reload_tls().expect_err("a bad key is refused");
    assert!(e.contains("--tls-key"), "{e}");
    wss(a, new.client(), "/echo");
}

#[test]
fn sighup_reloads_every_worker_process() {
    let old = TestCerts::fresh("sighup");
    let files = old.files();
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());
    let bin = Binary::start(&["--processes", "2", "--threads", "1", "--tls-cert", cert, "--tls-key", key]);
    // Connections on both workers, held across the reload.
    let mut held: Vec<Wss> = (0..8).map(|_| wss(bin.addr, old.client(), "/echo")).collect();
    let new = TestCerts::new(old.dir.clone());
    bin.signal(nix::sys::signal::Signal::SIGHUP);
    wait_for("both workers reloaded", Duration::from_secs(10), || {
        bin.log_count("TLS certificate and key reloaded") == 2
    });
    for _ in 0..8 {
        // Whichever worker accepts, it has the new pair.
        wss(bin.addr, new.client(), "/echo");
    }
    for ws in held.iter_mut() {
        echo_once(ws, "kept");
    }
}

#[test]
fn an_independent_client_python_ssl_and_websockets() {
    let certs = TestCerts::fresh("python");
    let srv = tls_server(&certs, |_| {});
    let script = format!("{}/tests/clients/wss_echo.py", env!("CARGO_MANIFEST_DIR"));
    let py = std::env::var("C100K_PYTHON")
        .unwrap_or_else(|_| format!("{}/target/py-venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    let out = std::process::Command::new(py)
        .args([&script, &format!("wss://localhost:{}/echo", srv.local_addr().port())])
        .arg(certs.dir.join("ca.pem"))
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v, json!({"echo": "hello from python", "big": 100000, "alpn": "http/1.1", "close": 1000}));
}

#[test]
fn a_tls_member_that_stops_reading_is_cut_at_max_backlog_and_others_go_on() {
    let certs = TestCerts::fresh("slow");
    let srv = tls_server(&certs, |c| {
        c.max_backlog = 64 * 1024;
        c.close_timeout = Duration::from_millis(300);
        c.max_publish_rate = 0;
    });
    let (a, cfg) = (srv.local_addr(), certs.client());
    // Seed-mode members (messages go to every other member): one never reads after joining.
    let _slow = wss(a, cfg.clone(), "/ws?room=big");
    let mut reader = wss(a, cfg.clone(), "/ws?room=big");
    let mut sender = wss(a, cfg.clone(), "/ws?room=big");
    let msg = format!("{{\"pad\":\"{}\"}}", "x".repeat(16 * 1024));
    let mut got = 0;
    while srv.metrics().slow_consumer_closes_total == 0 {
        assert!(got < 20_000, "never cut: {:?}", srv.metrics().outbound_queued_bytes);
        sender.send(Message::text(msg.clone())).unwrap();
        assert_eq!(reader.read().unwrap(), Message::text(msg.clone()));
        got += 1;
    }
    wait_for("the slow member is gone", Duration::from_secs(10), || srv.metrics().connections_open == 2);
    sender.send(Message::text("{\"after\":1}")).unwrap();
    assert_eq!(reader.read().unwrap(), Message::text("{\"after\":1}"));
    // The gauge is updated right after the write the reader may already have read from.
    wait_for("nothing queued", Duration::from_secs(5), || srv.metrics().outbound_queued_bytes == 0);
}
