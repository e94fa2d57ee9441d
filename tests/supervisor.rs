//! Multi-process mode (--processes N) on the real binary: whole-server metrics from any worker,
//! restart of a worker that dies, graceful shutdown across workers, source-address steering.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

/// Open echo connections until every worker holds at least one.
fn spread(bin: &Binary, workers: usize) -> Vec<RawWs> {
    let mut conns = Vec::new();
    loop {
        conns.push(RawWs::connect(bin.addr, "/echo"));
        let counts: Vec<u64> = (0..workers)
            .map(|i| metric(bin.addr, &format!("c100k_worker_websockets_open{{worker=\"{i}\"}}")))
            .collect();
        if counts.iter().all(|&c| c > 0) {
            return conns;
        }
        assert!(conns.len() < 200, "connections never reached every worker: {counts:?}");
    }
}

#[test]
fn any_worker_reports_the_whole_server() {
    let bin = Binary::start(&["--processes", "2", "--threads", "1"]);
    assert!(bin.logged("rooms span one process"));
    let conns = spread(&bin, 2);
    // Each scrape may land on either worker; every one must report all connections.
    for _ in 0..10 {
        assert_eq!(metric(bin.addr, "c100k_websockets_open"), conns.len() as u64);
        assert_eq!(metric(bin.addr, "c100k_processes"), 2);
        let (status, _, _) = get(bin.addr, "/healthz");
        assert_eq!(status, 200);
    }
    assert_eq!(children(bin.pid()).len(), 2);
}

#[test]
fn a_dead_worker_is_restarted_and_the_rest_keep_serving() {
    let bin = Binary::start(&["--processes", "2", "--threads", "1"]);
    let mut conns = spread(&bin, 2);
    let before = children(bin.pid());
    assert_eq!(before.len(), 2);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(before[0]), Signal::SIGKILL).unwrap();
    wait_for("restart", Duration::from_secs(10), || {
        let now = children(bin.pid());
        now.len() == 2 && !now.contains(&before[0])
    });
    wait_for("restart counted", Duration::from_secs(5), || metric(bin.addr, "c100k_worker_restarts_total") == 1);
    assert!(bin.logged("died after"), "the death is logged");
    // Connections of the dead worker are gone, the others still echo; gauges agree.
    let mut alive = 0;
    for c in conns.iter_mut() {
        c.ping(b"x");
        match c.recv() {
            Some(Msg::Pong(_)) => alive += 1,
            None => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(alive > 0 && alive < conns.len(), "{alive} of {} survived", conns.len());
    assert_eq!(metric(bin.addr, "c100k_websockets_open"), alive as u64);
    let mut fresh = RawWs::connect(bin.addr, "/echo");
    fresh.text("after restart");
    assert_eq!(fresh.recv(), Some(Msg::Text("after restart".into())));
}

#[test]
fn sigterm_drains_every_worker_then_exits_zero() {
    let mut bin = Binary::start(&["--processes", "3", "--threads", "1", "--drain-timeout", "5"]);
    let mut conns = spread(&bin, 3);
    let workers = children(bin.pid());
    bin.signal(Signal::SIGTERM);
    for c in conns.iter_mut() {
        assert_eq!(c.expect_close(), Some(1001));
        c.close(1001);
        c.expect_eof();
    }
    let status = bin.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    for w in workers {
        assert!(!is_worker_of(w, bin.pid()), "worker {w} left behind");
    }
}

/// Whether process `pid` is (still) a worker of supervisor `parent`: its environment names the
/// supervisor. A pid reused by any other process is not; a vanished one is not.
fn is_worker_of(pid: i32, parent: i32) -> bool {
    match std::fs::read(format!("/proc/{pid}/environ")) {
        Ok(env) => {
            let needle = format!("C100K_WORKER_PARENT={parent}");
            env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes())
        }
        // A zombie has an empty environ; a gone process has no /proc entry.
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ESRCH)) => false,
        Err(e) => panic!("cannot tell whether {pid} is gone: {e}"),
    }
}

#[test]
fn source_ip_steering_keeps_a_room_in_one_process() {
    let bin = Binary::start(&["--processes", "2", "--threads", "1", "--reuseport-steer", "source-ip"]);
    // Members from one address share a worker, so the room works across "processes".
    let connect_from = |src: &str| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&format!("{src}:0").parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        s.connect(&bin.addr.into()).unwrap();
        RawWs::over(s.into(), bin.addr, "/ws?room=steered")
    };
    let mut members: Vec<RawWs> = (0..6).map(|_| connect_from("127.0.0.20")).collect();
    let per_worker: Vec<u64> =
        (0..2).map(|i| metric(bin.addr, &format!("c100k_worker_websockets_open{{worker=\"{i}\"}}"))).collect();
    assert!(per_worker.contains(&6) && per_worker.contains(&0), "all on one worker: {per_worker:?}");
    members[0].text("{\"hi\":1}");
    for m in members.iter_mut().skip(1) {
        assert_eq!(m.recv(), Some(Msg::Text("{\"hi\":1}".into())));
    }
}

/// The pid of worker `index` of supervisor `sup`, if it is running.
fn worker_pid(sup: i32, index: usize) -> Option<i32> {
    let needle = format!("C100K_WORKER_INDEX={index}");
    children(sup).into_iter().find(|&p| {
        std::fs::read(format!("/proc/{p}/environ"))
            .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == needle.as_bytes()))
    })
}

#[test]
fn source_ip_steering_holds_across_a_worker_restart() {
    // The kernel reorders a SO_REUSEPORT group when a socket leaves it; the supervisor holds the
    // group's sockets, so a restarted worker gets its own back and every address keeps its
    // worker: a room of members sharing an address stays together.
    let bin = Binary::start(&["--processes", "3", "--threads", "1", "--reuseport-steer", "source-ip"]);
    let connect_from = |src: &str| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.bind(&format!("{src}:0").parse::<std::net::SocketAddr>().unwrap().into()).unwrap();
        s.connect(&bin.addr.into()).unwrap();
        RawWs::over(s.into(), bin.addr, "/ws?room=sticky")
    };
    let per_worker = || -> Vec<u64> {
        (0..3).map(|i| metric(bin.addr, &format!("c100k_worker_websockets_open{{worker=\"{i}\"}}"))).collect()
    };
    let mut first = connect_from("127.0.0.21");
    let home = per_worker().iter().position(|&n| n == 1).expect("one worker holds it");
    // Kill each of the other workers in turn; after each restart a new member from the same
    // address lands on the same worker and hears the first member.
    for victim in (0..3).filter(|&w| w != home) {
        let pid = worker_pid(bin.pid(), victim).expect("the victim runs");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
        wait_for("restarted", Duration::from_secs(10), || {
            worker_pid(bin.pid(), victim).is_some_and(|p| p != pid) && metric(bin.addr, "c100k_loops_listening") == 3
        });
        let mut next = connect_from("127.0.0.21");
        assert_eq!(next.sync(), vec![]);
        let counts = per_worker();
        assert_eq!(counts.iter().sum::<u64>(), counts[home], "all on worker {home}: {counts:?}");
        first.text(&format!("{{\"after\":{victim}}}"));
        assert_eq!(next.recv(), Some(Msg::Text(format!("{{\"after\":{victim}}}"))), "the room held together");
        next.close(1000);
        next.expect_close();
    }
    // The home worker itself restarts: its member is gone, and the address comes back to it.
    let pid = worker_pid(bin.pid(), home).expect("home runs");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
    wait_for("restarted", Duration::from_secs(10), || {
        worker_pid(bin.pid(), home).is_some_and(|p| p != pid) && metric(bin.addr, "c100k_loops_listening") == 3
    });
    let mut again = connect_from("127.0.0.21");
    assert_eq!(again.sync(), vec![]);
    let counts = per_worker();
    assert_eq!(counts[home], 1, "back on worker {home}: {counts:?}");
    drop(first);
}
