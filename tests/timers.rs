//! Timer-driven behaviour with short timers: heartbeats drop silent peers and keep responsive
//! ones; the opening handshake and the closing handshake time out.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use c100k::proto::ws::frame::{Control, Data, OpCode};
use common::*;
use tungstenite::Message;

#[test]
fn silent_peer_is_pinged_then_dropped() {
    let srv = server(|c| {
        c.ping_interval = Duration::from_millis(200);
        c.pong_timeout = Duration::from_millis(300);
    });
    let mut raw = RawWs::connect(srv.local_addr(), "/echo");
    let start = Instant::now();
    // Read (so we see the ping) but never answer.
    assert_eq!(raw.recv(), Some(Msg::Ping(vec![])));
    assert_eq!(raw.recv(), None, "dropped after the pong timeout");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(450), "not before interval + timeout: {took:?}");
    wait_for("counted", Duration::from_secs(5), || srv.metrics().heartbeat_timeouts_total == 1);
    assert_eq!(srv.metrics().connections_open, 0);
}

#[test]
fn responsive_peer_survives_many_pings() {
    let srv = server(|c| {
        c.ping_interval = Duration::from_millis(100);
        c.pong_timeout = Duration::from_millis(200);
    });
    let stream = tcp(srv.local_addr());
    stream.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{}/echo", srv.local_addr()), stream).unwrap();
    // tungstenite answers pings while reading; keep reading until the server pinged 5 times.
    wait_for("five pings answered", Duration::from_secs(10), || {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("connection lost: {e}"),
        }
        srv.metrics().pings_sent_total >= 5
    });
    assert_eq!(srv.metrics().heartbeat_timeouts_total, 0);
    ws.get_mut().set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    ws.send(Message::text("alive")).unwrap();
    loop {
        match ws.read().unwrap() {
            Message::Text(t) => break assert_eq!(t.as_str(), "alive"),
            _ => continue,
        }
    }
}

#[test]
fn traffic_alone_keeps_a_connection_from_being_pinged() {
    let srv = server(|c| {
        c.ping_interval = Duration::from_millis(1000);
        c.pong_timeout = Duration::from_millis(1000);
    });
    let mut raw = RawWs::connect(srv.local_addr(), "/echo");
    // Twice the ping interval of steady traffic, one message every ~20 ms.
    let until = Instant::now() + Duration::from_millis(2000);
    while Instant::now() < until {
        raw.text("x");
        assert_eq!(raw.recv(), Some(Msg::Text("x".into())), "no ping while traffic flows");
        std::thread::sleep(Duration::from_millis(20)); // pacing the traffic, not synchronisation
    }
    assert_eq!(srv.metrics().pings_sent_total, 0);
}

#[test]
fn handshake_timeout_drops_a_silent_or_slow_client() {
    let srv = server(|c| c.handshake_timeout = Duration::from_millis(200));
    let mut silent = tcp(srv.local_addr());
    let mut slow = tcp(srv.local_addr());
    slow.write_all(b"GET /echo HTTP/1.1\r\nHost: t\r\n").unwrap(); // never finished
    let start = Instant::now();
    for (what, s) in [("silent", &mut silent), ("slow", &mut slow)] {
        let mut buf = [0u8; 64];
        // EOF or a reset: the server dropped it. A read timeout (IO_TIMEOUT) is a failure.
        match s.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("{what}: expected the server to drop the connection, got {other:?}"),
        }
    }
    assert!(start.elapsed() >= Duration::from_millis(150));
    wait_for("counted", Duration::from_secs(5), || srv.metrics().handshake_failures_total == 2);
}

#[test]
fn closing_handshake_times_out_when_the_peer_never_answers() {
    let srv = server(|c| {
        c.close_timeout = Duration::from_millis(200);
        c.drain_timeout = Duration::from_secs(5);
    });
    let mut raw = RawWs::connect(srv.local_addr(), "/echo");
    srv.shutdown(); // the server sends 1001 and waits for our close
    assert_eq!(raw.expect_close(), Some(1001));
    let start = Instant::now();
    // We never answer; the server gives up after the close timeout and closes TCP.
    assert_eq!(raw.recv(), None);
    assert!(start.elapsed() < Duration::from_secs(3));
    srv.wait();
}

#[test]
fn a_pong_that_arrived_while_the_server_stalled_keeps_the_peer() {
    // The server is stopped with a ping outstanding; the pong arrives meanwhile, and by the time
    // the server runs again its deadline is long past. Its timers run before its reads: it must
    // look at the socket before giving the peer up (a loaded host otherwise drops live peers).
    let bin = Binary::start(&["--ping-interval", "0.3", "--pong-timeout", "0.3"]);
    let mut raw = RawWs::connect(bin.addr, "/echo");
    assert!(matches!(raw.recv(), Some(Msg::Ping(_))), "a ping after 0.3 s of silence");
    bin.signal(nix::sys::signal::Signal::SIGSTOP);
    raw.send_frame(OpCode::Control(Control::Pong), b"");
    // The stall itself (three pong timeouts), not a wait for something to happen.
    std::thread::sleep(Duration::from_secs(1));
    bin.signal(nix::sys::signal::Signal::SIGCONT);
    raw.send_frame(OpCode::Data(Data::Text), b"still here?");
    loop {
        match raw.recv() {
            Some(Msg::Text(t)) => break assert_eq!(t, "still here?"),
            Some(Msg::Ping(_)) => raw.send_frame(OpCode::Control(Control::Pong), b""),
            other => panic!("dropped after its pong had arrived: {other:?}"),
        }
    }
    assert_eq!(metric(bin.addr, "c100k_heartbeat_timeouts_total"), 0);
}
