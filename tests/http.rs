//! Routes and opening-handshake rejections over real sockets: every rejection is a complete HTTP
//! response followed by the server closing the connection.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade(target: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

#[test]
fn healthz_and_metrics() {
    let srv = server(|_| {});
    let (status, _, body) = get(srv.local_addr(), "/healthz");
    assert_eq!((status, body.as_slice()), (200, b"ok\n".as_slice()));
    let (status, head, body) = get(srv.local_addr(), "/metrics");
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    for name in [
        "c100k_connections_open",
        "c100k_connections_accepted_total",
        "c100k_handshake_failures_total",
        "c100k_messages_received_total",
        "c100k_messages_sent_total",
        "c100k_bytes_received_total",
        "c100k_bytes_sent_total",
        "c100k_heartbeat_timeouts_total",
        "c100k_slow_consumer_closes_total",
        "c100k_accept_errors_total",
    ] {
        assert!(text.contains(&format!("\n{name} ")) || text.starts_with(&format!("{name} ")), "{name} missing");
    }
    assert!(text.contains("# TYPE c100k_connections_open gauge"));
    assert!(text.contains("# TYPE c100k_bytes_sent_total counter"));
    // The scrape itself is one of the accepted connections, summed over both loops.
    let accepted: u64 =
        text.lines().find_map(|l| l.strip_prefix("c100k_connections_accepted_total ")).unwrap().parse().unwrap();
    assert!(accepted >= 2);
}

#[test]
fn rejections_are_complete_responses() {
    let srv = server(|_| {});
    let a = srv.local_addr();
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unknown path", upgrade("/nope", ""), 404),
        ("plain GET on /echo", b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 426),
        ("plain GET on /ws", b"GET /ws?room=a HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), 426),
        // (A plain GET on / is the demo page; with --no-demo, 426: tests/sse_poll.rs.)
        ("missing room", upgrade("/ws", ""), 400),
        ("empty room", upgrade("/?room=", ""), 400),
        ("POST", String::from_utf8(upgrade("/echo", "")).unwrap().replacen("GET", "POST", 1).into_bytes(), 405),
        (
            "missing key",
            String::from_utf8(upgrade("/echo", ""))
                .unwrap()
                .replace(&format!("Sec-WebSocket-Key: {KEY}\r\n"), "")
                .into_bytes(),
            400,
        ),
        ("malformed key", String::from_utf8(upgrade("/echo", "")).unwrap().replace(KEY, "not-a-key").into_bytes(), 400),
        ("malformed HTTP", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n".to_vec(), 400),
    ];
    let n = cases.len() as u64;
    for (what, req, want) in cases {
        let (status, head, _) = http(a, &req);
        assert_eq!(status, want, "{what}: {head}");
        assert!(head.contains("Content-Length: "), "{what}: complete response");
        assert!(head.contains("Connection: close"), "{what}");
    }
    let before = srv.metrics().handshake_failures_total;
    assert!(before >= n, "each rejection is counted as a handshake failure ({before} of {n})");
}

#[test]
fn wrong_version_gets_426_naming_13() {
    let srv = server(|_| {});
    let req = String::from_utf8(upgrade("/echo", "")).unwrap().replace("Version: 13", "Version: 8");
    let (status, head, _) = http(srv.local_addr(), req.as_bytes());
    assert_eq!(status, 426);
    assert!(head.contains("Sec-WebSocket-Version: 13"), "{head}");
}

#[test]
fn oversized_head_gets_431_even_while_the_client_keeps_sending() {
    let srv = server(|_| {});
    let mut req = b"GET /echo HTTP/1.1\r\nHost: t\r\nX-Pad: ".to_vec();
    req.extend(std::iter::repeat_n(b'a', 40_000));
    req.extend_from_slice(b"\r\n\r\n");
    let (status, _, _) = http(srv.local_addr(), &req);
    assert_eq!(status, 431);
}

#[test]
fn head_split_over_many_packets_and_frames_right_behind_it() {
    let srv = server(|_| {});
    let mut s = tcp(srv.local_addr()); // TCP_NODELAY: each piece is its own segment
    let (req, key) = upgrade_request(srv.local_addr(), "/echo");
    let mut sent = 0;
    for chunk in req.chunks(7) {
        s.write_all(chunk).unwrap();
        sent += chunk.len() as u64;
        // The server has read this piece before the next is sent: a real split every time.
        wait_for("the server read the piece", Duration::from_secs(5), || srv.metrics().bytes_received_total == sent);
    }
    // Read the 101, then check that the connection works.
    let mut ws = {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            use std::io::Read;
            let n = s.read(&mut chunk).unwrap();
            assert!(n > 0);
            buf.extend_from_slice(&chunk[..n]);
            if let c100k::proto::ws::handshake::ParsedResponse::Complete { status, accept_ok, .. } =
                c100k::proto::ws::handshake::parse_response(&buf, &key)
            {
                assert_eq!((status, accept_ok), (101, true));
                break;
            }
        }
        s
    };
    let mut out = Vec::new();
    c100k::proto::ws::frame::write_masked_frame(
        &mut out,
        c100k::proto::ws::frame::OpCode::Data(c100k::proto::ws::frame::Data::Text),
        b"split",
        [1, 2, 3, 4],
    );
    ws.write_all(&out).unwrap();
    let mut echo = [0u8; 7];
    use std::io::Read;
    ws.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"\x81\x05split");

    // Request and first frame in one write: the frame must not be lost.
    let (mut req, key) = upgrade_request(srv.local_addr(), "/echo");
    c100k::proto::ws::frame::write_masked_frame(
        &mut req,
        c100k::proto::ws::frame::OpCode::Data(c100k::proto::ws::frame::Data::Binary),
        b"eager",
        [5, 6, 7, 8],
    );
    let mut s = tcp(srv.local_addr());
    s.write_all(&req).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let expected_tail = b"\x82\x05eager";
    wait_for("101 and echo", Duration::from_secs(10), || {
        let n = s.read(&mut chunk).unwrap();
        buf.extend_from_slice(&chunk[..n]);
        buf.ends_with(expected_tail)
    });
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    assert!(text.contains(&c100k::proto::ws::handshake::derive_accept_key(key.as_bytes())));
}

#[test]
fn strict_upgrade_rules_and_absolute_targets() {
    let srv = server(|_| {});
    let a = srv.local_addr();
    let with = |extra: &str| upgrade("/echo", extra);
    for (what, req, want) in [
        ("repeated key", with("Sec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n"), 400),
        (
            "repeated version, 8 then 13",
            String::from_utf8(upgrade("/echo", ""))
                .unwrap()
                .replace("Sec-WebSocket-Version: 13\r\n", "Sec-WebSocket-Version: 8\r\nSec-WebSocket-Version: 13\r\n")
                .into_bytes(),
            400,
        ),
        ("repeated host", with("Host: other\r\n"), 400),
        ("a body on the upgrade", with("Content-Length: 0\r\n"), 400),
        ("chunked upgrade", with("Transfer-Encoding: chunked\r\n"), 400),
        (
            "non-canonical key",
            String::from_utf8(upgrade("/echo", "")).unwrap().replace(KEY, "dGhlIHNhbXBsZSBub25jZR==").into_bytes(),
            400,
        ),
        ("NUL in a room name", upgrade("/ws?room=a%00b", ""), 400),
    ] {
        let (status, head, _) = http(a, &req);
        assert_eq!(status, want, "{what}: {head}");
    }
    // Absolute-form request targets (RFC 7230 §5.3.2) are served like origin-form ones.
    let abs =
        String::from_utf8(upgrade("/echo", "")).unwrap().replacen("GET /echo", &format!("GET http://{a}/echo"), 1);
    assert_eq!(upgrade_answer(a, abs.as_bytes()).0, 101);
}

#[test]
fn plain_requests_keep_the_connection_alive() {
    let srv = server(|_| {});
    let mut c = HttpConn::new(srv.local_addr());
    for _ in 0..20 {
        let r = c.request("GET", "/healthz", "", b"");
        assert_eq!((r.status, r.body.as_slice()), (200, b"ok\n".as_slice()));
        assert!(!r.closes());
    }
    assert!(c.request("GET", "/metrics", "", b"").body.starts_with(b"# HELP"));
    let r = c.request("GET", "/nope", "", b"");
    assert_eq!(r.status, 404);
    assert!(!r.closes(), "a 404 for plain HTTP keeps the connection");
    // An upgrade on a kept-alive connection works too.
    let (req, _) = upgrade_request(srv.local_addr(), "/echo");
    c.send(&req);
    let mut ws = RawWs::from_upgraded(c.stream);
    ws.text("after keep-alive");
    assert_eq!(ws.recv(), Some(Msg::Text("after keep-alive".into())));
    assert_eq!(srv.metrics().handshake_failures_total, 0);
}
