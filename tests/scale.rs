//! 5,000 concurrent idle WebSocket connections in one test process (client and server share the
//! process's 20,000 descriptors here), all alive, then all gone without leaks.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn five_thousand_idle_connections() {
    const N: usize = 5_000;
    let limit = c100k::net::limits::raise_nofile(2 * N as u64 + 200).unwrap();
    assert!(limit.soft >= 2 * N as u64 + 100, "needs {} descriptors, have {}", 2 * N + 100, limit.soft);
    let srv = server(|c| c.ping_interval = Duration::from_secs(60));
    let mut conns: Vec<RawWs> =
        (0..N).map(|i| RawWs::connect(srv.local_addr(), if i % 2 == 0 { "/echo" } else { "/ws?room=idle" })).collect();
    wait_for("all open", Duration::from_secs(10), || srv.metrics().websockets_open == N as u64);
    // Every one of them is alive and answering.
    for c in conns.iter_mut() {
        assert_eq!(c.sync(), vec![]);
    }
    let m = srv.metrics();
    assert_eq!(m.connections_open, N as u64);
    assert_eq!(m.outbound_queued_bytes, 0);
    drop(conns);
    wait_for("all closed", Duration::from_secs(20), || srv.metrics().connections_open == 0);
    assert_eq!(srv.metrics().websockets_open, 0);
    assert_eq!(srv.metrics().rooms, 0);
}
