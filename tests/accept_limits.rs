//! Accepting at the descriptor limit (EMFILE): the loop pauses and retries on a timer instead
//! of spinning, counts it, and serves the waiting connections once there is room again; and at
//! --max-connections: new connections are answered 503 at once while /healthz and /metrics keep
//! answering. Its own test binary: it lowers this process's open-file limit.

mod common;

use std::time::Duration;

use common::*;

/// Both cases in one test, in order: the descriptor limit is per process, so the EMFILE case
/// must not run beside anything else.
#[test]
fn accepting_pauses_at_limits_and_resumes() {
    a_full_server_answers_503_and_still_serves_health();
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

fn a_full_server_answers_503_and_still_serves_health() {
    let srv = server(|c| {
        c.threads = 1;
        c.max_connections = 3;
    });
    let a = srv.local_addr();
    let mut held: Vec<RawWs> = (0..3).map(|_| RawWs::connect(a, "/echo")).collect();
    // A fourth is answered at once: 503 with Retry-After, then closed.
    let (req, _) = upgrade_request(a, "/echo");
    let started = std::time::Instant::now();
    let (status, text) = upgrade_answer(a, &req);
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("Retry-After: 1"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Health and metrics still answer.
    assert_eq!(get(a, "/healthz").0, 200);
    let (status, _, body) = get(a, "/metrics");
    assert_eq!(status, 200);
    assert!(String::from_utf8(body).unwrap().contains("c100k_overflow_refusals_total 1"));
    // With the overflow reserve full of idle connections too, new ones are refused on the spot.
    // (The connections just answered from the reserve must be gone first, or some idle ones
    // find it still taken.)
    wait_for("answered connections gone", Duration::from_secs(5), || srv.metrics().connections_open == 3);
    let idle: Vec<_> = (0..c100k::net::limits::OVERFLOW_CONNS).map(|_| tcp(a)).collect();
    wait_for("reserve full", Duration::from_secs(5), || {
        srv.metrics().connections_open >= 3 + c100k::net::limits::OVERFLOW_CONNS
    });
    let (status, _) = upgrade_answer(a, &req);
    assert_eq!(status, 503);
    drop(idle);
    // One leaves; a new connection is served again.
    let mut gone = held.pop().unwrap();
    gone.close(1000);
    gone.expect_close();
    wait_for("room again", Duration::from_secs(5), || srv.metrics().connections_open < 3);
    let mut ws = RawWs::connect(a, "/echo");
    ws.text("back");
    assert_eq!(ws.recv(), Some(Msg::Text("back".into())));
}
