//! WebSockets over HTTP/2 (RFC 8441) and HTTP/2 requests: h2c with prior knowledge on the plain
//! port, ALPN h2 on the TLS port. Independent clients: Node's built-in `http2`
//! (tests/clients/h2_ws.mjs) and Python's `h2` (tests/clients/h2_client.py), plus curl where it
//! is installed. The HTTP/2 attacks with CVEs (rapid reset, CONTINUATION flood, SETTINGS and
//! PING floods) are each shown bounded, with other clients served meanwhile.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::tls::TestCerts;
use common::*;
use serde_json::{json, Value};

/// Node with the HTTP/2 client script, ready for its URL and scenario.
fn node_cmd() -> Command {
    let mut c = Command::new("node");
    c.arg(format!("{}/tests/clients/h2_ws.mjs", env!("CARGO_MANIFEST_DIR")));
    c
}

/// Python (the venv's, with `h2`) with the h2 client script, ready for its port and mode.
fn python_cmd() -> Command {
    let py = std::env::var("C100K_PYTHON")
        .unwrap_or_else(|_| format!("{}/target/py-venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    let mut c = Command::new(py);
    c.arg(format!("{}/tests/clients/h2_client.py", env!("CARGO_MANIFEST_DIR")));
    c
}

/// Run a client to its end; the one JSON line it printed.
fn run(mut cmd: Command, what: &str) -> Value {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{what}: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Start a client that prints "ready" once it is set up, and wait for that line.
fn spawn_ready(mut cmd: Command) -> (std::process::Child, std::io::BufReader<std::process::ChildStdout>) {
    use std::io::BufRead;
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().expect("the client runs");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    (child, out)
}

fn node(url: &str, args: &[&str], env: &[(&str, &str)]) -> Value {
    let mut c = node_cmd();
    c.arg(url).args(args).envs(env.iter().copied());
    run(c, &format!("node {args:?}"))
}

fn h2c(addr: SocketAddr, args: &[&str]) -> Value {
    node(&format!("http://127.0.0.1:{}", addr.port()), args, &[])
}

fn python(addr: SocketAddr, args: &[&str]) -> Value {
    let mut c = python_cmd();
    c.arg(addr.port().to_string()).args(args);
    run(c, &format!("python {args:?}"))
}

/// Everything a test opened is gone again on the server.
fn wait_all_closed(addr: SocketAddr) {
    wait_for("streams and HTTP/2 connections to close", Duration::from_secs(10), || {
        metric(addr, "c100k_h2_streams_open") == 0
            && metric(addr, "c100k_h2_connections_open") == 0
            && metric(addr, "c100k_websockets_open") == 0
            && metric(addr, "c100k_h2_connections_with_websockets") == 0
    });
}

#[test]
fn a_websocket_over_h2c_echoes_fragments_pings_and_closes_with_end_stream() {
    let srv = server(|_| {});
    let a = srv.local_addr();
    let v = h2c(a, &["echo"]);
    assert_eq!(
        v,
        json!({
            "enableConnectProtocol": true, "status": 200, "accept": null, "echo": "hello over h2",
            "fragmented": "fragmented", "pong": "are you there", "big": 200000, "close": 1000,
            "endStream": true, "rstCode": 0
        })
    );
    assert_eq!(
        python(a, &["echo"]),
        json!({"status": 200, "echo": "hello from python h2", "close": 1000, "ended": true})
    );
    wait_all_closed(a);
    assert_eq!(metric(a, "c100k_h2_websockets_total"), 2);
    assert_eq!(metric(a, "c100k_h2_connections_total"), 2);
    assert!(metric(a, "c100k_handshakes_total") >= 2, "counted like any WebSocket");
}

#[test]
fn close_codes_and_limits_are_those_of_http1() {
    let srv = server(|c| c.max_message_size = 1000);
    let a = srv.local_addr();
    assert_eq!(h2c(a, &["close", "4000"])["close"], 4000, "the client's code echoed");
    assert_eq!(h2c(a, &["close", "1005"])["close"], 1005, "a close without a code");
    // An unmasked frame: 1002. Invalid UTF-8 in a text frame: 1007. Over --max-message-size: 1009.
    assert_eq!(h2c(a, &["bad", "8100"])["close"], 1002);
    assert_eq!(h2c(a, &["bad", "8182000000008080"])["close"], 1007);
    assert_eq!(h2c(a, &["bad", "81fe07d000000000"])["close"], 1009);
    assert_eq!(metric(a, "c100k_protocol_errors_total"), 3);
    // A refused upgrade is the same answer as over HTTP/1.1.
    assert_eq!(h2c(a, &["bad", "00", "/nope"])["status"], 404);
    wait_all_closed(a);
}

#[test]
fn a_hundred_websockets_on_one_connection_in_ten_rooms() {
    let srv = server(|_| {});
    let a = srv.local_addr();
    let before = metric(a, "c100k_connections_accepted_total");
    let v = h2c(a, &["rooms", "100", "10"]);
    assert_eq!(v, json!({"enableConnectProtocol": true, "ok": 100, "complete": 100, "crossed": 0, "closed": 100}));
    // One TCP connection carried them (the metrics scrapes are the others).
    let scrapes = 1;
    assert_eq!(metric(a, "c100k_connections_accepted_total") - before, 1 + scrapes);
    assert_eq!(metric(a, "c100k_h2_websockets_total"), 100);
    assert_eq!(metric(a, "c100k_joins_total"), 100);
    wait_all_closed(a);
}

#[test]
fn a_reset_ends_its_websocket_only_and_goaway_ends_them_all() {
    let srv = server(|_| {});
    let a = srv.local_addr();
    assert_eq!(h2c(a, &["reset"]), json!({"enableConnectProtocol": true, "sibling": "sibling", "close": 1000}));
    // (Node ends the stream before it resets it: the server sees the end first, a 1006 either way.)
    assert_eq!(metric(a, "c100k_inbound_buffered_bytes"), 0, "the half message is freed");
    let v = h2c(a, &["goaway"]);
    assert_eq!(v, json!({"enableConnectProtocol": true, "statuses": [200, 200], "echo": "one"}));
    wait_all_closed(a);
}

#[test]
fn a_reset_in_the_middle_of_a_message_frees_it_and_the_sibling_goes_on() {
    let srv = server(|_| {});
    let a = srv.local_addr();
    assert_eq!(python(a, &["reset_mid"]), json!({"statuses": [200, 200], "sibling": "sibling"}));
    wait_for("the reset seen", Duration::from_secs(5), || metric(a, "c100k_h2_stream_resets_total") == 1);
    wait_all_closed(a);
    assert_eq!(metric(a, "c100k_inbound_buffered_bytes"), 0, "the half message is freed");
}

#[test]
fn shutdown_closes_each_websocket_with_1001_then_goaway() {
    use std::io::BufRead;
    let srv = server(|_| {});
    let mut cmd = node_cmd();
    cmd.args([&format!("http://127.0.0.1:{}", srv.local_addr().port()), "shutdown"]);
    let (mut child, mut out) = spawn_ready(cmd);
    srv.shutdown();
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(child.wait().unwrap().success());
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    assert_eq!(v, json!({"enableConnectProtocol": true, "closes": [1001, 1001], "ended": 2, "goaway": 0}), "NO_ERROR");
    srv.wait(); // every stream finished its closing handshake, then the connection
}

#[test]
fn a_member_whose_window_stays_closed_is_a_slow_consumer_and_its_sibling_goes_on() {
    use std::io::BufRead;
    const N: usize = 300;
    let srv = server(|c| {
        c.max_backlog = 64 * 1024;
        c.close_timeout = Duration::from_secs(1);
        c.max_publish_rate = 0;
        c.max_room_rate = c100k::broker::RoomRate::Off;
    });
    let mut cmd = python_cmd();
    cmd.args([&srv.local_addr().port().to_string(), "slow_member", &N.to_string()]);
    let (mut child, mut out) = spawn_ready(cmd);
    let mut line = String::new();
    wait_for("both joined", Duration::from_secs(5), || metric(srv.local_addr(), "c100k_joins_total") == 2);
    // 300 messages of 1 KiB from a third member over HTTP/1.1, 20 at a time, each batch once
    // the reading member has the last: 300 KiB, far past what the slow member can hold (its
    // 64 KiB window, 64 KiB pipe and 64 KiB backlog).
    let mut sender = RawWs::connect(srv.local_addr(), "/ws?room=slow");
    let pad = "x".repeat(1000);
    for batch in 0..N / 20 {
        for i in batch * 20..batch * 20 + 20 {
            sender.text(&format!("{{\"n\":{i},\"pad\":\"{pad}\"}}"));
        }
        loop {
            line.clear();
            out.read_line(&mut line).unwrap();
            match line.trim().strip_prefix("b ").map(|k| k.parse::<usize>().unwrap()) {
                Some(k) if k >= batch * 20 + 20 => break,
                Some(_) => {}
                None => panic!("B stalled at batch {batch}: {line}"),
            }
        }
    }
    loop {
        line.clear();
        out.read_line(&mut line).unwrap();
        if !line.starts_with("b ") {
            break;
        }
    }
    assert!(child.wait().unwrap().success());
    let v: Value = serde_json::from_str(line.trim()).unwrap();
    let (_, _, m) = get(srv.local_addr(), "/metrics");
    let m = String::from_utf8_lossy(&m);
    let m: Vec<&str> = m.lines().filter(|l| !l.starts_with('#') && !l.ends_with(" 0")).collect();
    assert_eq!(v, json!({"b_messages": N, "a_reset": true, "a_bytes_at_most_window": true}), "{m:#?}");
    assert_eq!(metric(srv.local_addr(), "c100k_slow_consumer_closes_total"), 1);
}

#[test]
fn http2_requests_reach_every_route() {
    let srv = server(|c| {
        c.api_key = Some("k".into());
        c.poll_timeout = Duration::from_millis(200);
    });
    let a = srv.local_addr();
    let v = h2c(a, &["get", "/healthz"]);
    assert_eq!((v["status"].as_u64(), v["body"].as_str()), (Some(200), Some("ok\n")));
    let v = h2c(a, &["get", "/metrics"]);
    assert!(v["body"].as_str().unwrap().contains("c100k_h2_streams_total"), "{v}");
    let v = h2c(a, &["get", "/poll?room=r"]);
    assert_eq!(v["status"], 200);
    assert!(v["body"].as_str().unwrap().contains("\"next\""), "{v}");
    let v = h2c(a, &["get", "/no-such-route"]);
    assert_eq!(v["status"], 404);
    let v = h2c(a, &["post", "/api/publish", "k", r#"{"room":"r","data":{"n":1}}"#]);
    assert_eq!(v["status"], 200, "{v}");
    let published: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
    assert_eq!(published["seq"], 1);
    // An event stream resuming from before that message gets it (and is then cancelled).
    let from = format!("r:{}:0", published["epoch"].as_str().unwrap());
    let v = h2c(a, &["sse", "/sse?room=r", &from, "\"n\":1"]);
    assert_eq!(v["status"], 200, "{v}");
    assert_eq!(v["contentType"], "text/event-stream");
    assert!(v["body"].as_str().unwrap().contains("\"n\":1"), "the published message replayed: {v}");
    wait_all_closed(a);
}

#[test]
fn alpn_h2_on_the_tls_port_and_http11_beside_it() {
    let certs = TestCerts::fresh("h2");
    let srv = server(|c| c.tls = Some(certs.files()));
    let a = srv.local_addr();
    let url = format!("https://localhost:{}", a.port());
    let ca = certs.dir.join("ca.pem");
    let env = [("CA", ca.to_str().unwrap())];
    let v = node(&url, &["echo"], &env);
    assert_eq!(
        (v["status"].as_u64(), v["echo"].as_str(), v["close"].as_u64()),
        (Some(200), Some("hello over h2"), Some(1000))
    );
    let v = node(&url, &["rooms", "20", "4"], &env);
    assert_eq!(v["complete"], 20, "{v}");
    let v = node(&url, &["get", "/healthz"], &env);
    assert_eq!(v["body"], "ok\n");
    // A client offering only http/1.1 still gets it.
    let health = common::tls::https(a, certs.client(), "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let m = common::tls::https(a, certs.client(), "/metrics");
    let count = |name: &str| -> u64 {
        m.lines().find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok())).unwrap_or(0)
    };
    assert_eq!(count("c100k_h2_websockets_total "), 21);
    assert_eq!(count("c100k_h2_connections_total "), 3);
}

#[test]
fn with_h2_max_streams_0_there_is_no_http2() {
    let srv = server(|c| c.h2_max_streams = 0);
    let a = srv.local_addr();
    // The preface is then just a bad request.
    let (status, _, _) = http(a, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    assert_eq!(status, 400);
    assert_eq!(metric(a, "c100k_h2_connections_total"), 0);
}

#[test]
fn streams_past_h2_max_streams_are_refused_and_the_others_go_on() {
    let srv = server(|c| c.h2_max_streams = 10);
    let a = srv.local_addr();
    let v = python(a, &["over_limit", "30"]);
    assert_eq!(v, json!({"advertised": 10, "ok": 10, "refused": 20}));
    assert_eq!(h2c(a, &["echo"])["echo"], "hello over h2", "a well-behaved client is served meanwhile");
}

#[test]
fn rapid_reset_and_continuation_floods_end_the_connection_and_others_are_served() {
    let srv = server(|_| {});
    let a = srv.local_addr();
    let v = python(a, &["rapid_reset", "2000"]);
    assert_eq!(v["closed"], true, "{v}");
    assert_eq!(v["goaway"], "11", "ENHANCE_YOUR_CALM: {v}");
    let v = python(a, &["continuation", "5000"]);
    assert_eq!(v["closed"], true, "{v}");
    assert!(v["sent"].as_u64().unwrap() < 5000 || v["goaway"].is_string(), "cut before the end: {v}");
    assert_eq!(metric(a, "c100k_h2_errors_total"), 2);
    assert_eq!(h2c(a, &["echo"])["echo"], "hello over h2", "others are served");
    wait_all_closed(a);
}

#[test]
fn settings_and_ping_floods_are_answered_or_pushed_back_never_buffered_without_bound() {
    let srv = server(|_| {});
    let a = srv.local_addr();
    let v = python(a, &["settings", "50000"]);
    assert_eq!(v["goaway"], Value::Null, "{v}");
    assert!(v["answers"].as_u64().unwrap() > 0, "{v}");
    // A client that sends pings and never reads the answers: past our queue bound the server
    // stops reading it (TCP pushes back), so what it holds for it stays bounded.
    let v = python(a, &["ping", "3000000"]);
    assert_eq!(v["pushed_back"], true, "{v}");
    assert!(v["sent"].as_u64().unwrap() < 3_000_000, "{v}");
    assert_eq!(h2c(a, &["echo"])["echo"], "hello over h2", "others are served");
    wait_all_closed(a);
    assert_eq!(metric(a, "c100k_outbound_queued_bytes"), 0);
}
