//! bench-client end to end: each scenario against a real server on loopback produces a complete
//! report with correct counts; loss, duplication, reordering and stalls injected by a faulty
//! server are reported exactly; results merged over worker processes add up.

#[path = "../../tests/common/redis.rs"]
#[allow(dead_code)]
mod redis;
mod support;

use std::time::Duration;

use support::*;

#[test]
fn connect_scenario_reports_every_connection() {
    let srv = c100k(|_| {});
    let url = format!("ws://{}/echo", srv.local_addr());
    let (s, dir) = bench(&["connect", "--url", &url, "--conns", "300", "--hold", "0.3", "--rate", "3000"]);
    assert_eq!(s["scenario"], "connect");
    let c = &s["connections"];
    assert_eq!((u(&c["target"]), u(&c["established"]), u(&c["failed"]), u(&c["dropped"])), (300, 300, 0, 0));
    assert_eq!(u(&s["histograms"]["connect"]["count"]), 300);
    assert_eq!(u(&s["histograms"]["handshake"]["count"]), 300);
    // 300 connections at 3000/s take at least ~0.1 s: the pacing was applied.
    assert!(c["ramp_seconds"].as_f64().unwrap() >= 0.09, "{c}");
    for key in ["cpu_model", "cores", "kernel", "sysctl", "fd_limit"] {
        assert!(!s["machine"][key].is_null(), "machine.{key}");
    }
    assert!(s["command"].as_str().unwrap().starts_with("bench-client connect"));
    assert_eq!(files(&dir), ["connect.hgrm", "handshake.hgrm", "latency.svg", "summary.json"]);
    let svg = std::fs::read_to_string(dir.path().join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("percentile"));
}

#[test]
fn failures_are_classified() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (s, _d) = bench_exit(&["connect", "--url", &format!("ws://{port}/echo"), "--conns", "20", "--hold", "0"], 1);
    assert_eq!(u(&s["connections"]["failures"]["refused"]), 20);
    assert!(s["verdict"]["problems"][0].as_str().unwrap().contains("0 of the 20"), "{}", s["verdict"]);
    assert_eq!(u(&s["connections"]["established"]), 0);
    // The server answers with an HTTP status instead of 101.
    let srv = c100k(|_| {});
    let (s, _d) = bench_exit(
        &["connect", "--url", &format!("ws://{}/nope", srv.local_addr()), "--conns", "20", "--hold", "0"],
        1,
    );
    assert_eq!(u(&s["connections"]["failures"]["http_404"]), 20);
    // --min-established lowers the bar: 0 of 20 is then acceptable.
    let url = format!("ws://{}/nope", srv.local_addr());
    bench(&["connect", "--url", &url, "--conns", "20", "--hold", "0", "--min-established", "0"]);
}

#[test]
fn drops_during_the_hold_are_counted() {
    let srv = c100k(|_| {});
    let url = format!("ws://{}/echo", srv.local_addr());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args(["connect", "--url", &url, "--conns", "50", "--hold", "30", "--quiet", "--out"])
        .arg(std::env::temp_dir().join(format!("bench-drop-{}", std::process::id())))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while srv.metrics().websockets_open < 50 {
        assert!(std::time::Instant::now() < deadline, "connections did not open");
        std::thread::sleep(Duration::from_millis(10));
    }
    srv.shutdown(); // every connection is closed with 1001 during the hold
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let dir = std::env::temp_dir().join(format!("bench-drop-{}", std::process::id()));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(u(&s["connections"]["dropped"]), 50, "{}", s["connections"]);
    assert_eq!(u(&s["connections"]["drops"]["server_close_1001"]), 50);
}

#[test]
fn echo_closed_loop_counts_every_message() {
    let srv = c100k(|_| {});
    let url = format!("ws://{}/echo", srv.local_addr());
    let (s, dir) =
        bench(&["echo", "--url", &url, "--conns", "20", "--window", "2", "--duration", "0.5", "--size", "64"]);
    let m = &s["messages"];
    assert!(u(&m["sent"]) > 100, "{m}");
    assert_eq!(u(&m["received"]), u(&m["sent"]));
    assert_eq!(m["lost"], 0);
    assert_eq!(u(&s["histograms"]["rtt"]["count"]), u(&m["received"]));
    assert_eq!(u(&m["corrupt"]), 0);
    assert!(files(&dir).contains(&"rtt.hgrm".to_string()));
    assert_eq!(srv.metrics().messages_received_total, u(&m["sent"]), "the server saw exactly what was sent");
}

#[test]
fn echo_open_loop_keeps_its_rate() {
    let srv = c100k(|_| {});
    let url = format!("ws://{}/echo", srv.local_addr());
    let (s, _d) = bench(&["echo", "--url", &url, "--conns", "10", "--rate", "2000", "--duration", "1"]);
    let sent = u(&s["messages"]["sent"]);
    assert!((1900..=2100).contains(&sent), "sent {sent} at 2000/s for 1 s");
    assert_eq!(u(&s["messages"]["received"]), sent);
}

#[test]
fn broadcast_expects_every_other_member_to_receive() {
    let srv = c100k(|_| {});
    let url = format!("ws://{}/ws?room={{room}}", srv.local_addr());
    let (s, _d) = bench(&[
        "broadcast",
        "--url",
        &url,
        "--members",
        "30",
        "--rooms",
        "3",
        "--senders",
        "3",
        "--rate",
        "300",
        "--duration",
        "0.5",
    ]);
    let m = &s["messages"];
    let sent = u(&m["sent"]);
    assert!(sent > 100);
    assert_eq!(u(&m["expected"]), sent * 9, "10 members per room: 9 recipients per message");
    assert_eq!(u(&m["received"]), sent * 9);
    assert_eq!((m["lost"].as_i64(), u(&m["duplicated"]), u(&m["out_of_order"])), (Some(0), 0, 0));
    assert_eq!(u(&m["self_deliveries"]), 0, "c100k never relays to the sender");
    assert_eq!(u(&s["histograms"]["delivery"]["count"]), sent * 9);
}

#[test]
fn lost_deliveries_are_reported_exactly() {
    let srv = FaultServer::start(Fault::Drop { every: 7 });
    let url = format!("ws://{}/ws?room={{room}}", srv.addr);
    let (s, _d) = bench_exit(
        &["broadcast", "--url", &url, "--members", "8", "--senders", "1", "--rate", "500", "--duration", "0.5"],
        1,
    );
    let dropped = srv.get(|c| &c.dropped);
    assert!(s["verdict"]["problems"].to_string().contains("messages lost"), "{}", s["verdict"]);
    assert!(dropped > 50, "the server dropped {dropped}");
    assert_eq!(s["messages"]["lost"].as_i64(), Some(dropped as i64), "{}", s["messages"]);
    assert_eq!(u(&s["messages"]["expected"]), u(&s["messages"]["sent"]) * 7);
}

#[test]
fn duplicates_and_reordering_are_reported_exactly() {
    let srv = FaultServer::start(Fault::DupSwap { dup: 11, swap: 13 });
    let url = format!("ws://{}/ws?room={{room}}", srv.addr);
    let (s, _d) = bench_exit(
        &["broadcast", "--url", &url, "--members", "6", "--senders", "1", "--rate", "500", "--duration", "0.5"],
        1,
    );
    let problems = s["verdict"]["problems"].to_string();
    assert!(problems.contains("duplicated") && problems.contains("out of order"), "{problems}");
    let m = &s["messages"];
    let (dups, swaps) = (srv.get(|c| &c.duplicated), srv.get(|c| &c.swapped));
    assert!(dups > 10 && swaps > 10, "server made {dups} duplicates, {swaps} swaps");
    assert_eq!(u(&m["duplicated"]), dups, "{m}");
    assert_eq!(u(&m["out_of_order"]), swaps, "{m}");
    assert_eq!(m["lost"].as_i64(), Some(0), "duplicates do not hide losses: {m}");
}

#[test]
fn stalls_show_in_fixed_rate_latency() {
    // The server stops for 200 ms every second. Measured from each message's intended send
    // time, a fifth of the messages wait up to 200 ms, so p99 is of the stall's order.
    let srv = FaultServer::start(Fault::Stall { period: Duration::from_secs(1), stall: Duration::from_millis(200) });
    let url = format!("ws://{}/echo", srv.addr);
    let (s, _d) = bench(&["echo", "--url", &url, "--conns", "1", "--rate", "500", "--duration", "2.5"]);
    let h = &s["histograms"]["rtt"];
    let (p50, p99) = (u(&h["p50"]), u(&h["p99"]));
    assert!(p99 >= 100_000, "p99 {p99} µs does not show the 200 ms stalls");
    assert!(p50 < 50_000, "p50 {p50} µs: most messages are not stalled");
    assert_eq!(u(&s["messages"]["received"]), u(&s["messages"]["sent"]));
}

#[test]
fn worker_processes_merge_to_the_same_counts() {
    let srv = c100k(|_| {});
    let url = format!("ws://{}/echo", srv.local_addr());
    let (one, _a) = bench(&["connect", "--url", &url, "--conns", "90", "--hold", "0", "--procs", "1"]);
    let (three, _b) = bench(&["connect", "--url", &url, "--conns", "90", "--hold", "0", "--procs", "3"]);
    assert_eq!(three["parameters"]["procs"], 3);
    for s in [&one, &three] {
        assert_eq!(u(&s["connections"]["established"]), 90);
        assert_eq!(u(&s["histograms"]["connect"]["count"]), 90);
        assert_eq!(u(&s["histograms"]["handshake"]["count"]), 90);
    }
    let (echo, _c) =
        bench(&["echo", "--url", &url, "--conns", "40", "--window", "1", "--duration", "0.5", "--procs", "2"]);
    let m = &echo["messages"];
    assert_eq!(u(&echo["histograms"]["rtt"]["count"]), u(&m["received"]), "merged histogram holds every sample");
    assert_eq!(u(&m["received"]), u(&m["sent"]));
}

#[test]
fn works_across_source_addresses() {
    let srv = c100k(|c| c.listen = "127.0.0.1:0".parse().unwrap());
    let url = format!("ws://{}/echo", srv.local_addr());
    let (s, _d) = bench(&["connect", "--url", &url, "--conns", "40", "--hold", "0", "--src", "127.0.0.2-127.0.0.5"]);
    assert_eq!(u(&s["connections"]["established"]), 40);
    assert_eq!(s["parameters"]["src"], "127.0.0.2-127.0.0.5");
}

#[test]
fn ctrl_c_still_writes_the_report() {
    let srv = c100k(|_| {});
    let dir = tempfile::tempdir().unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_bench-client"))
        .args(["echo", "--url", &format!("ws://{}/echo", srv.local_addr()), "--conns", "10", "--duration", "60"])
        .arg("--out")
        .arg(dir.path())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while srv.metrics().messages_received_total < 1000 {
        assert!(std::time::Instant::now() < deadline, "the run did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "interrupted: {}", String::from_utf8_lossy(&out.stderr));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("summary.json")).unwrap()).unwrap();
    assert_eq!(s["interrupted"], true);
    assert_eq!(s["verdict"]["ok"], false);
    assert!(s["duration_seconds"].as_f64().unwrap() < 30.0, "stopped early");
    assert!(u(&s["messages"]["received"]) >= 1000);
    assert_eq!(u(&s["messages"]["received"]), u(&s["messages"]["sent"]), "drained before reporting");
}

#[test]
fn v1_broadcast_is_checked_gap_free_from_the_server_seq() {
    let srv = c100k(|c| c.max_publish_rate = 0);
    let url = format!("ws://{}/ws?room={{room}}", srv.local_addr());
    let (s, _d) = bench(&[
        "broadcast",
        "--url",
        &url,
        "--protocol",
        "v1",
        "--members",
        "60",
        "--rooms",
        "3",
        "--senders",
        "6",
        "--rate",
        "600",
        "--duration",
        "0.5",
    ]);
    assert_eq!(s["parameters"]["protocol"], "v1");
    let m = &s["messages"];
    let sent = u(&m["sent"]);
    assert!(sent > 100, "{m}");
    // Each message reaches the 19 other members of its room of 20.
    assert_eq!(u(&m["expected"]), sent * 19, "{m}");
    assert_eq!(u(&m["received"]), u(&m["expected"]), "{m}");
    assert_eq!((m["lost"].as_i64(), u(&m["duplicated"]), u(&m["out_of_order"])), (Some(0), 0, 0));
    assert_eq!(srv.metrics().publishes_total, sent);
}

#[test]
fn resume_reconnects_with_since_and_loses_nothing() {
    let srv = c100k(|c| {
        c.max_publish_rate = 0;
        c.presence_grace = Duration::from_millis(100);
    });
    let url = format!("ws://{}/ws?room={{room}}", srv.local_addr());
    let (s, dir) = bench(&[
        "resume",
        "--url",
        &url,
        "--members",
        "40",
        "--rooms",
        "2",
        "--senders",
        "4",
        "--rate",
        "400",
        "--duration",
        "1.5",
        "--every",
        "0.3",
    ]);
    let r = &s["resume"];
    assert!(u(&r["reconnects"]) >= 40, "every non-sender reconnected at least once: {r}");
    assert_eq!(u(&r["recovered"]), u(&r["reconnects"]), "{r}");
    assert_eq!(u(&r["unrecovered"]), 0);
    assert!(u(&r["messages_recovered"]) > 0, "some messages came back from history: {r}");
    let m = &s["messages"];
    assert_eq!(m["lost"].as_i64(), Some(0), "{m}");
    assert_eq!((u(&m["duplicated"]), u(&m["out_of_order"])), (0, 0), "{m}");
    assert_eq!(u(&m["received"]), u(&m["expected"]));
    assert!(u(&s["histograms"]["resume"]["count"]) > 0);
    assert_eq!(u(&s["connections"]["dropped"]), 0, "reconnects on purpose are not drops");
    assert!(files(&dir).contains(&"resume.hgrm".to_string()));
}

#[test]
fn failover_moves_a_dead_nodes_members_to_the_others_and_loses_nothing() {
    // Three nodes on one real Redis; the second goes away (closing its connections) mid-run.
    let redis = redis::RedisServer::start(false);
    let nodes: Vec<c100k::server::Server> = (0..3)
        .map(|_| {
            c100k(|c| {
                c.max_publish_rate = 0;
                c.history_size = 10_000;
                c.redis = Some(c100k::server::RedisTarget::Single(redis.url()));
                c.redis_prefix = format!("failover-{}", std::process::id());
            })
        })
        .collect();
    let urls: Vec<String> = nodes.iter().map(|n| format!("ws://{}/ws", n.local_addr())).collect();
    let urls = urls.join(",");
    let (child, dir) = bench_spawn(&[
        "failover",
        "--url",
        &urls,
        "--members",
        "60",
        "--senders",
        "6",
        "--rate",
        "200",
        "--duration",
        "2",
    ]);
    // Once publishing has gone on a while, node 2 stops.
    let published = || nodes.iter().map(|n| n.metrics().publishes_total).sum::<u64>();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while published() < 100 {
        assert!(std::time::Instant::now() < deadline, "publishing never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    let on_node2 = nodes[1].metrics().websockets_open;
    assert_eq!(on_node2, 20, "members spread over the nodes: member i on node i mod 3");
    nodes[1].shutdown();
    let s = bench_wait(child, &dir);
    assert_eq!(s["scenario"], "failover");
    let r = &s["resume"];
    assert_eq!(u(&r["reconnects"]), on_node2, "every member of the stopped node came back: {r}");
    assert_eq!(u(&r["recovered"]), on_node2, "{r}");
    assert!(u(&r["messages_recovered"]) > 0, "what they missed while away was replayed: {r}");
    let m = &s["messages"];
    assert_eq!(m["lost"].as_i64(), Some(0), "{m}");
    assert_eq!((u(&m["duplicated"]), u(&m["out_of_order"])), (0, 0), "{m}");
    assert_eq!(u(&s["histograms"]["resume"]["count"]), on_node2);
    assert_eq!(u(&s["connections"]["dropped"]), 0, "nobody was lost for good");
    assert!(s["histograms"]["resume"]["p50"].as_u64().unwrap() >= 50_000, "a backoff was waited");
}

#[test]
fn sse_and_long_poll_members_are_checked_like_v1() {
    for transport in ["sse", "poll"] {
        let srv = c100k(|c| c.max_publish_rate = 0);
        let url = format!("ws://{}/ws", srv.local_addr());
        let (s, _d) = bench(&[
            "broadcast",
            "--transport",
            transport,
            "--url",
            &url,
            "--members",
            "60",
            "--rooms",
            "3",
            "--senders",
            "6",
            "--rate",
            "300",
            "--duration",
            "0.5",
        ]);
        assert_eq!(
            (s["parameters"]["transport"].as_str(), s["parameters"]["protocol"].as_str()),
            (Some(transport), Some("v1"))
        );
        let m = &s["messages"];
        let sent = u(&m["sent"]);
        assert!(sent > 50, "{m}");
        // Each message reaches the 19 other members of its room of 20 (54 of them over HTTP).
        assert_eq!(u(&m["expected"]), sent * 19, "{transport}: {m}");
        assert_eq!(u(&m["received"]), u(&m["expected"]), "{transport}: {m}");
        assert_eq!((m["lost"].as_i64(), u(&m["duplicated"]), u(&m["out_of_order"])), (Some(0), 0, 0), "{transport}");
        let metrics = srv.metrics();
        match transport {
            "sse" => assert_eq!(metrics.sse_streams_total, 54, "the 54 members that do not send"),
            _ => assert!(metrics.polls_total >= 54, "{}", metrics.polls_total),
        }
        assert_eq!(metrics.handshakes_total, 6, "only the senders use WebSockets");
    }
}

#[test]
fn connect_holds_event_streams_and_long_polls() {
    let srv = c100k(|c| c.poll_timeout = Duration::from_millis(100));
    for (transport, path) in [("sse", "/sse?room=idle"), ("poll", "/poll?room=idle")] {
        let url = format!("http://{}{path}", srv.local_addr());
        let (s, _d) = bench(&["connect", "--transport", transport, "--url", &url, "--conns", "100", "--hold", "0.5"]);
        let c = &s["connections"];
        assert_eq!((u(&c["established"]), u(&c["failed"]), u(&c["dropped"])), (100, 0, 0), "{transport}: {c}");
    }
    // Idle polls were answered empty at the timeout and asked again on their connections.
    assert!(srv.metrics().polls_total >= 300, "{}", srv.metrics().polls_total);
    assert_eq!(srv.metrics().connections_accepted_total, 200);
}

#[test]
fn a_reconnect_storm_after_a_restart_resumes_everyone_and_loses_nothing() {
    let redis = redis::RedisServer::start(false);
    let prefix = format!("storm-{}", std::process::id());
    let on_redis = |c: &mut c100k::server::Config| {
        c.max_publish_rate = 0;
        c.history_size = 10_000;
        c.drain_timeout = Duration::from_millis(200);
        c.redis = Some(c100k::server::RedisTarget::Single(redis.url()));
        c.redis_prefix = prefix.clone();
    };
    let first = c100k(on_redis);
    let addr = first.local_addr();
    let (child, dir) = bench_spawn(&[
        "reconnect",
        "--url",
        &format!("ws://{addr}/ws"),
        "--members",
        "40",
        "--rooms",
        "2",
        "--senders",
        "4",
        "--rate",
        "200",
        "--duration",
        "3",
    ]);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while first.metrics().publishes_total < 100 {
        assert!(std::time::Instant::now() < deadline, "publishing never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The server restarts: the old one closes everything, a new one comes up on the same port.
    first.shutdown();
    first.wait();
    let second = c100k(|c| {
        on_redis(c);
        c.listen = addr;
    });
    let s = bench_wait(child, &dir);
    assert_eq!((s["scenario"].as_str(), s["parameters"]["transport"].as_str()), (Some("reconnect"), Some("ws")));
    let r = &s["resume"];
    assert_eq!((u(&r["reconnects"]), u(&r["recovered"]), u(&r["unrecovered"])), (40, 40, 0), "{r}");
    let m = &s["messages"];
    assert_eq!(m["lost"].as_i64(), Some(0), "{m}");
    assert_eq!((u(&m["duplicated"]), u(&m["out_of_order"])), (0, 0), "{m}");
    assert_eq!(u(&s["connections"]["dropped"]), 0);
    assert!(second.metrics().handshakes_total >= 40, "everyone came back to the new server");
}

#[test]
fn deflate_members_are_checked_like_any_and_receive_compressed_frames() {
    let srv = c100k(|c| {
        c.max_publish_rate = 0;
        c.deflate_min_size = 128;
    });
    let url = format!("ws://{}/ws", srv.local_addr());
    let before = srv.metrics().bytes_sent_total;
    let (s, _d) = bench(&[
        "broadcast",
        "--protocol",
        "v1",
        "--deflate",
        "--payload",
        "words",
        "--size",
        "600",
        "--url",
        &url,
        "--members",
        "40",
        "--senders",
        "4",
        "--rate",
        "200",
        "--duration",
        "0.5",
    ]);
    assert_eq!(
        (s["parameters"]["deflate"].as_bool(), s["parameters"]["payload"].as_str()),
        (Some(true), Some("words"))
    );
    let m = &s["messages"];
    assert_eq!((m["lost"].as_i64(), u(&m["duplicated"]), u(&m["corrupt"])), (Some(0), 0, 0), "{m}");
    assert_eq!(u(&m["received"]), u(&m["expected"]));
    assert_eq!(srv.metrics().deflate_handshakes_total, 40, "every member negotiated it");
    // 600-byte text payloads compress: the server sent less per delivery than the payload alone
    // (a plain frame is the payload plus the v1 envelope and a header).
    let sent = srv.metrics().bytes_sent_total - before;
    assert!(sent < u(&m["received"]) * 600, "{sent} bytes for {} deliveries", u(&m["received"]));
}

#[test]
fn wss_connections_are_verified_with_ca_or_taken_with_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = c100k::fuzzing::TEST_CERT;
    let (cert_file, key_file) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_file, cert).unwrap();
    std::fs::write(&key_file, key).unwrap();
    let srv = c100k(|c| c.tls = Some(c100k::server::certs::TlsFiles { cert: cert_file.clone(), key: key_file }));
    let url = format!("wss://localhost:{}/echo", srv.local_addr().port());
    let ca = cert_file.to_str().unwrap();
    let (s, _d) = bench(&["echo", "--url", &url, "--conns", "20", "--duration", "1", "--ca", ca]);
    assert_eq!(u(&s["connections"]["established"]), 20);
    let m = &s["messages"];
    assert!(u(&m["received"]) > 100 && u(&m["received"]) == u(&m["sent"]), "{m}");
    let (s, _d) = bench(&["connect", "--url", &url, "--conns", "50", "--hold", "0.2", "--insecure"]);
    assert_eq!(u(&s["connections"]["established"]), 50);
    // Not trusted: every connection fails as `tls`, and the server counts the refusals.
    let other = dir.path().join("other.pem");
    std::fs::write(&other, include_str!("../../tests/clients/other_ca.pem")).unwrap();
    let (s, _d) =
        bench_exit(&["connect", "--url", &url, "--conns", "5", "--hold", "0", "--ca", other.to_str().unwrap()], 1);
    assert_eq!(u(&s["connections"]["failures"]["tls"]), 5, "{}", s["connections"]);
    // The server learns of each refusal from the client's alert, after bench-client is done.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while srv.metrics().tls_handshake_failures_total < 5 {
        assert!(std::time::Instant::now() < deadline, "{:?}", srv.metrics().tls_handshake_failures_total);
        std::thread::yield_now();
    }
    assert_eq!(srv.metrics().tls_handshakes_total, 70);
}

#[test]
fn h2_carries_many_websockets_per_connection_for_every_scenario() {
    let srv = c100k(|_| {});
    let base = format!("ws://{}", srv.local_addr());
    // 300 idle WebSockets, 50 to an HTTP/2 connection (one client thread, so 6 connections).
    let (s, _d) = bench(&[
        "connect",
        "--url",
        &format!("{base}/echo"),
        "--conns",
        "300",
        "--hold",
        "0.2",
        "--h2",
        "--streams-per-conn",
        "50",
        "--threads",
        "1",
    ]);
    assert_eq!(u(&s["connections"]["established"]), 300);
    assert_eq!(s["parameters"]["h2_streams_per_conn"], 50);
    let m = srv.metrics();
    assert_eq!((m.h2_connections_total, m.h2_websockets_total), (6, 300));
    // Echo: every message back, none lost.
    let (s, _d) = bench(&[
        "echo",
        "--url",
        &format!("{base}/echo"),
        "--conns",
        "40",
        "--duration",
        "1",
        "--h2",
        "--threads",
        "1",
    ]);
    let msgs = &s["messages"];
    assert!(u(&msgs["received"]) > 100 && u(&msgs["received"]) == u(&msgs["sent"]), "{msgs}");
    // A room: every delivery, in order, over streams.
    let (s, _d) = bench(&[
        "broadcast",
        "--url",
        &format!("{base}/ws?room={{room}}"),
        "--members",
        "60",
        "--rooms",
        "2",
        "--senders",
        "2",
        "--rate",
        "50",
        "--duration",
        "1",
        "--h2",
        "--streams-per-conn",
        "20",
        "--threads",
        "1",
    ]);
    let m = &s["messages"];
    let sent = u(&m["sent"]);
    assert!(sent > 10, "{m}");
    assert_eq!(u(&m["received"]), sent * 29, "30 members a room: 29 recipients per message");
    assert_eq!((m["lost"].as_i64(), u(&m["duplicated"]), u(&m["out_of_order"])), (Some(0), 0, 0));
    // Refused upgrades are told by their status, as over HTTP/1.1.
    let (s, _d) = bench_exit(&["connect", "--url", &format!("{base}/nope"), "--conns", "10", "--hold", "0", "--h2"], 1);
    assert_eq!(u(&s["connections"]["failures"]["http_404"]), 10, "{}", s["connections"]);
    let m = srv.metrics();
    assert_eq!(m.h2_websockets_total, 300 + 40 + 60);
}
