//! Graceful shutdown: stop accepting, close every connection with 1001, exit once drained; both
//! in-process and through SIGTERM on the real binary (which must then exit 0).

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn shutdown_sends_1001_and_stops_accepting() {
    let srv = server(|_| {});
    let addr = srv.local_addr();
    let mut echo = RawWs::connect(addr, "/echo");
    let mut chat = RawWs::connect(addr, "/ws?room=x");
    srv.shutdown();
    for c in [&mut echo, &mut chat] {
        assert_eq!(c.expect_close(), Some(1001));
        c.close(1001);
        c.expect_eof();
    }
    srv.wait(); // returns because every connection finished its closing handshake
    assert!(TcpStream::connect(addr).is_err(), "no longer accepting");
}

#[test]
fn sigterm_on_the_binary_drains_and_exits_zero() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_c100k"))
        .args(["--listen", "127.0.0.1:0", "--threads", "2", "--drain-timeout", "5"])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn c100k");
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let addr: SocketAddr = loop {
        let line = lines.next().expect("server log line").unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let mut a = RawWs::connect(addr, "/echo");
    let mut b = RawWs::connect(addr, "/ws?room=r");
    a.text("before");
    assert_eq!(a.recv(), Some(Msg::Text("before".into())));

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    for c in [&mut a, &mut b] {
        assert_eq!(c.expect_close(), Some(1001));
        c.close(1001);
        c.expect_eof();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "c100k did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status {status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("closing connections with 1001")), "{rest:?}");
}
