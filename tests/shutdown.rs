//! Graceful shutdown: stop accepting, close every connection with 1001, exit once drained; both
//! in-process and through SIGTERM on the real binary (which must then exit 0).

mod common;

use std::net::TcpStream;
use std::time::Duration;

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
    let mut bin = Binary::start(&["--threads", "2", "--drain-timeout", "5"]);
    let mut a = RawWs::connect(bin.addr, "/echo");
    let mut b = RawWs::connect(bin.addr, "/ws?room=r");
    a.text("before");
    assert_eq!(a.recv(), Some(Msg::Text("before".into())));
    bin.signal(nix::sys::signal::Signal::SIGTERM);
    for c in [&mut a, &mut b] {
        assert_eq!(c.expect_close(), Some(1001));
        c.close(1001);
        c.expect_eof();
    }
    let status = bin.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status:?}");
    wait_for("log flushed", Duration::from_secs(2), || bin.logged("drained; bye"));
    assert!(bin.logged("closing connections with 1001"));
}
