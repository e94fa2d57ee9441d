//! Accepting at the descriptor limit (EMFILE) and at --max-connections: the loop pauses and
//! retries on a timer instead of spinning, counts it, and serves the waiting connections once
//! there is room again. Its own test binary: it lowers this process's open-file limit.

mod common;

use std::time::Duration;

use common::*;

/// Both cases in one test, in order: the descriptor limit is per process, so the EMFILE case
/// must not run beside anything else.
#[test]
fn accepting_pauses_at_limits_and_resumes() {
    max_connections_holds_the_rest_in_the_backlog();
    emfile_pauses_accepting_without_spinning_and_recovers();
}

fn emfile_pauses_accepting_without_spinning_and_recovers() {
    let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    let srv = server(|c| c.threads = 1);
    // Descriptors in use now, plus room for a handful of connections (client + server side each).
    let used = std::fs::read_dir("/proc/self/fd").unwrap().count() as u64;
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, used + 20, hard).unwrap();
    // Client sockets take descriptors first; the server's accept runs out.
    let mut clients = Vec::new();
    while clients.len() < 15 {
        match std::net::TcpStream::connect(srv.local_addr()) {
            Ok(s) => clients.push(s),
            Err(_) => break,
        }
    }
    wait_for("accept failure counted", Duration::from_secs(5), || srv.metrics().accept_errors_total > 0);
    let pauses = srv.metrics().accept_pauses_total;
    std::thread::sleep(Duration::from_millis(500)); // observe the paused loop, not synchronisation
    let later = srv.metrics().accept_pauses_total;
    assert!(later - pauses <= 8, "accept retried {} times in 0.5 s: spinning", later - pauses);
    // Free descriptors: the connections still waiting in the backlog get served.
    nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    let waiting = clients.len() as u64;
    wait_for("every waiting connection accepted", Duration::from_secs(5), || {
        srv.metrics().connections_accepted_total >= waiting
    });
    let mut ws = RawWs::connect(srv.local_addr(), "/echo");
    ws.text("after EMFILE");
    assert_eq!(ws.recv(), Some(Msg::Text("after EMFILE".into())));
    drop(clients);
}

fn max_connections_holds_the_rest_in_the_backlog() {
    let srv = server(|c| {
        c.threads = 1;
        c.max_connections = 3;
    });
    let mut held: Vec<RawWs> = (0..3).map(|_| RawWs::connect(srv.local_addr(), "/echo")).collect();
    // A fourth connects at TCP level (kernel backlog) but is not accepted while three are open.
    let (req, _) = upgrade_request(srv.local_addr(), "/echo");
    let mut waiting = tcp(srv.local_addr());
    std::io::Write::write_all(&mut waiting, &req).unwrap();
    wait_for("accept paused", Duration::from_secs(5), || srv.metrics().accept_pauses_total > 0);
    assert_eq!(srv.metrics().connections_open, 3);
    // One leaves; the waiting one is accepted and answered.
    let mut gone = held.pop().unwrap();
    gone.close(1000);
    gone.expect_close();
    let mut buf = [0u8; 12];
    std::io::Read::read_exact(&mut waiting, &mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");
}
