//! Server-Sent Events, long polling and POST publishing, on the same rooms as v1 WebSockets:
//! real sockets on loopback, streams parsed the way `EventSource` parses them.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn post(addr: std::net::SocketAddr, room: &str, user: &str, data: serde_json::Value) -> HttpResponse {
    let body = json!({ "data": data }).to_string();
    HttpConn::new(addr).request("POST", &format!("/rooms/{room}/messages?user={user}"), "", body.as_bytes())
}

fn seq_of(ev: &SseEvent) -> u64 {
    ev.json()["seq"].as_u64().unwrap()
}

#[test]
fn an_event_stream_carries_room_messages_in_order_with_resumable_ids() {
    let srv = server(|_| {});
    let a = srv.local_addr();
    let mut s = SseClient::open(a, "/sse?room=lobby&user=ann", "");
    assert_eq!(s.status, 200, "{}", s.head);
    for h in ["Content-Type: text/event-stream", "Cache-Control: no-cache", "X-Accel-Buffering: no"] {
        assert!(s.head.contains(h), "{h} in {}", s.head);
    }
    let first = s.next_any().unwrap();
    assert_eq!((first.event.as_str(), first.data.as_str()), ("message", ""), "retry: first: {first:?}");
    let joined = s.expect("joined");
    let epoch = joined.json()["epoch"].as_str().unwrap().to_string();
    assert_eq!(joined.id.as_deref(), Some(format!("lobby:{epoch}:0").as_str()));

    let mut poster = HttpConn::new(a);
    for i in 1..=5u64 {
        let r = poster.request(
            "POST",
            "/rooms/lobby/messages?user=bob",
            "",
            format!("{{\"data\":{{\"n\":{i}}}}}").as_bytes(),
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["seq"], i, "POST answers the message's seq");
        assert!(r.head.contains("Access-Control-Allow-Origin: *"));
    }
    for i in 1..=5u64 {
        let ev = s.expect("msg");
        let m = ev.json();
        assert_eq!((m["op"].as_str(), m["seq"].as_u64(), m["from"].as_str()), (Some("msg"), Some(i), Some("bob")));
        assert_eq!(m["data"], json!({ "n": i }));
        assert_eq!(ev.id, Some(format!("lobby:{epoch}:{i}")));
    }
    // Line breaks inside the JSON come back as one data field.
    let r = poster.request("POST", "/rooms/lobby/messages?user=bob", "", b"{\"data\":{\"t\":\n\"two\\nlines\"}}");
    assert_eq!(r.status, 200);
    assert_eq!(s.expect("msg").json()["data"], json!({"t": "two\nlines"}));
}

#[test]
fn last_event_id_resumes_like_join_with_since_and_says_when_it_cannot() {
    let srv = server(|c| c.history_size = 10);
    let a = srv.local_addr();
    let mut s = SseClient::open(a, "/sse?room=r", "");
    let epoch = s.expect("joined").json()["epoch"].as_str().unwrap().to_string();
    for i in 0..3 {
        post(a, "r", "bob", json!(i));
    }
    let last = (0..3).map(|_| s.expect("msg")).last().unwrap();
    drop(s);
    for i in 3..5 {
        post(a, "r", "bob", json!(i));
    }
    // What EventSource sends by itself when it reconnects.
    let mut s = SseClient::open(a, "/sse?room=r", &format!("Last-Event-ID: {}\r\n", last.id.unwrap()));
    let j = s.expect("joined").json();
    assert_eq!((j["recovered"].as_bool(), j["seq"].as_u64()), (Some(true), Some(5)));
    assert_eq!((seq_of(&s.expect("msg")), seq_of(&s.expect("msg"))), (4, 5), "exactly the missed ones");
    // A position from another epoch (or one older than the history) cannot be resumed.
    let mut gone = SseClient::open(a, "/sse?room=r", "Last-Event-ID: r:otherepoch:2\r\n");
    let j = gone.expect("joined");
    assert_eq!(j.json()["recovered"], false);
    assert_eq!(j.id, Some(format!("r:{epoch}:5")), "the stream goes on from where the room is");
    for i in 5..20 {
        post(a, "r", "bob", json!(i));
    }
    let mut old = SseClient::open(a, "/sse?room=r", &format!("Last-Event-ID: r:{epoch}:1\r\n"));
    assert_eq!(old.expect("joined").json()["recovered"], false, "seq 2.. fell out of the 10-message history");
    // The lastEventId parameter works where headers cannot be set.
    let mut q = SseClient::open(a, &format!("/sse?room=r&lastEventId=r:{epoch}:18"), "");
    assert_eq!(q.expect("joined").json()["recovered"], true);
    assert_eq!(seq_of(&q.expect("msg")), 19);
    assert_eq!(seq_of(&q.expect("msg")), 20);
}

#[test]
fn a_stream_of_several_rooms_resumes_every_room_from_one_id() {
    let srv = server(|_| {});
    let a = srv.local_addr();
    let mut s = SseClient::open(a, "/sse?room=a&room=b%2Cc", "");
    s.expect("joined");
    s.expect("joined");
    post(a, "a", "u", json!("a1"));
    post(a, "b%2Cc", "u", json!("b1"));
    post(a, "a", "u", json!("a2"));
    let evs: Vec<SseEvent> = (0..3).map(|_| s.expect("msg")).collect();
    let rooms: Vec<_> = evs.iter().map(|e| e.json()["room"].as_str().unwrap().to_string()).collect();
    assert_eq!(rooms, ["a", "b,c", "a"]);
    let id = evs[2].id.clone().unwrap();
    assert!(id.contains("a:") && id.contains("b%2Cc:"), "both rooms in {id}");
    drop(s);
    post(a, "b%2Cc", "u", json!("b2"));
    post(a, "a", "u", json!("a3"));
    let mut s = SseClient::open(a, "/sse?room=a&room=b%2Cc", &format!("Last-Event-ID: {id}\r\n"));
    let mut got = Vec::new();
    let mut joined = 0;
    while got.len() < 2 {
        let ev = s.next().unwrap();
        match ev.event.as_str() {
            "joined" => {
                joined += 1;
                assert_eq!(ev.json()["recovered"], true, "{ev:?}");
            }
            "msg" => got.push(ev.json()["data"].as_str().unwrap().to_string()),
            other => panic!("{other}"),
        }
    }
    got.sort();
    assert_eq!((joined, got), (2, vec!["a3".to_string(), "b2".to_string()]));
}

#[test]
fn presence_events_and_ping_comments() {
    let srv = server(|c| c.sse_ping_interval = Duration::from_millis(200));
    let a = srv.local_addr();
    let mut s = SseClient::open(a, "/sse?room=p&presence=1&user=watcher", "");
    s.expect("joined");
    let mut ws = RawWs::v1(a, "?user=carol");
    ws.call(json!({"op":"join","room":"p","id":"j"}));
    let ev = s.expect("presence_join");
    assert_eq!((ev.json()["user"].as_str(), ev.json()["room"].as_str()), (Some("carol"), Some("p")));
    // A quiet stream gets comments.
    let mut pings = 0;
    while pings < 2 {
        let ev = s.next_any().expect("stream open");
        if ev.event == "comment" {
            assert_eq!(ev.data, "ping");
            pings += 1;
        }
    }
    // v1 members see what SSE readers post, and the other way round.
    ws.call(json!({"op":"publish","room":"p","data":{"from":"ws"},"id":"p1"}));
    assert_eq!(s.expect("msg").json()["data"], json!({"from":"ws"}));
    post(a, "p", "watcher", json!({"from":"sse"}));
    assert_eq!(ws.recv_op("msg")["data"], json!({"from":"sse"}));
    assert!(srv.metrics().sse_streams_open >= 1 && srv.metrics().pings_sent_total >= 2);
}

#[test]
fn ping_comments_keep_their_interval_when_it_is_longer_than_the_handshake_timeout() {
    // The stream keeps the handshake's timer entry (due first) rather than queueing another:
    // it must not ping when that entry fires, only at the interval.
    let srv = server(|c| {
        c.handshake_timeout = Duration::from_millis(150);
        c.sse_ping_interval = Duration::from_millis(600);
    });
    let mut s = SseClient::open(srv.local_addr(), "/sse?room=q", "");
    s.expect("joined");
    let opened = Instant::now();
    let mut at = Vec::new();
    while at.len() < 2 {
        let ev = s.next_any().expect("stream open past the handshake timeout");
        if ev.event == "comment" {
            at.push(opened.elapsed());
        }
    }
    assert!(at[0] >= Duration::from_millis(550), "first ping after {:?}, not at the handshake deadline", at[0]);
    assert!(at[1] - at[0] >= Duration::from_millis(550), "pings {at:?}");
}

#[test]
fn a_slow_event_stream_reader_is_cut_at_max_backlog() {
    let srv = server(|c| {
        c.max_backlog = 64 * 1024;
        c.max_publish_rate = 0;
        c.max_room_rate = c100k::broker::RoomRate::Off;
        c.close_timeout = Duration::from_millis(300);
    });
    let a = srv.local_addr();
    let s = SseClient::open(a, "/sse?room=slow", "");
    socket2::SockRef::from(&s.stream).set_recv_buffer_size(4096).unwrap();
    wait_for("the stream joined", Duration::from_secs(5), || srv.metrics().joins_total == 1);
    let big = "x".repeat(16 * 1024);
    let mut poster = HttpConn::new(a);
    let mut n = 0;
    while srv.metrics().slow_consumer_closes_total == 0 {
        let r = poster.request("POST", "/rooms/slow/messages", "", json!({ "data": big }).to_string().as_bytes());
        assert_eq!(r.status, 200);
        n += 1;
        assert!(n < 2000, "never judged slow");
    }
    wait_for("the stream is over", Duration::from_secs(5), || srv.metrics().sse_streams_open == 0);
    // Its connection goes at the close timeout (it never reads), and its queue with it.
    wait_for("the connection is gone", Duration::from_secs(5), || {
        let m = srv.metrics();
        m.outbound_queued_bytes == 0 && m.connections_open == 1
    });
    drop(s);
}

#[test]
fn a_long_poll_waits_for_the_next_message_on_a_keep_alive_connection() {
    let srv = server(|c| {
        c.poll_timeout = Duration::from_millis(400);
        c.history_size = 5;
    });
    let a = srv.local_addr();
    let mut c = HttpConn::new(a);
    // Without since: where the room is, at once.
    let r = c.request("GET", "/poll?room=lp&user=pat", "", b"");
    assert_eq!(r.status, 200);
    assert!(r.head.contains("Access-Control-Allow-Origin: *"));
    let v = r.json();
    assert_eq!(v["messages"], json!([]));
    let next = v["next"].as_str().unwrap().to_string();
    let epoch = next.rsplit_once(':').unwrap().0.to_string();
    assert_eq!(next, format!("{epoch}:0"));

    // Held until a message comes.
    c.send(format!("GET /poll?room=lp&since={next}&user=pat HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    wait_for("the poll waits", Duration::from_secs(5), || srv.metrics().polls_waiting == 1);
    assert_eq!(post(a, "lp", "bob", json!({"hello":1})).json()["seq"], 1);
    let v = c.response().json();
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    assert_eq!((v["messages"][0]["op"].as_str(), v["messages"][0]["data"].clone()), (Some("msg"), json!({"hello":1})));
    assert_eq!(v["next"], format!("{epoch}:1"));
    assert!(v.get("recovered").is_none());

    // Messages that came between polls are answered at once, from history.
    post(a, "lp", "bob", json!(2));
    post(a, "lp", "bob", json!(3));
    let v = c.request("GET", &format!("/poll?room=lp&since={epoch}:1"), "", b"").json();
    let seqs: Vec<u64> = v["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!((seqs, v["next"].as_str()), (vec![2, 3], Some(format!("{epoch}:3").as_str())));

    // Nothing new within --poll-timeout: an empty answer at the same position.
    let t = std::time::Instant::now();
    let v = c.request("GET", &format!("/poll?room=lp&since={epoch}:3"), "", b"").json();
    assert!(t.elapsed() >= Duration::from_millis(350), "held for the timeout");
    assert_eq!((v["messages"].clone(), v["next"].as_str()), (json!([]), Some(format!("{epoch}:3").as_str())));

    // A position that is gone: recovered false, and where to go on from.
    let v = c.request("GET", "/poll?room=lp&since=nope:1", "", b"").json();
    assert_eq!((v["recovered"].as_bool(), v["next"].as_str()), (Some(false), Some(format!("{epoch}:3").as_str())));
    for i in 0..10 {
        post(a, "lp", "bob", json!(i));
    }
    let v = c.request("GET", &format!("/poll?room=lp&since={epoch}:3"), "", b"").json();
    assert_eq!(v["recovered"], false, "older than the 5-message history");
    assert_eq!(v["next"], format!("{epoch}:13"));
    assert_eq!(srv.metrics().polls_waiting, 0);
}

#[test]
fn a_client_that_leaves_a_waiting_poll_is_forgotten() {
    let srv = server(|c| c.poll_timeout = Duration::from_secs(30));
    let a = srv.local_addr();
    let mut c = HttpConn::new(a);
    let next = c.request("GET", "/poll?room=gone", "", b"").json()["next"].as_str().unwrap().to_string();
    c.send(format!("GET /poll?room=gone&since={next} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    wait_for("the poll waits", Duration::from_secs(5), || srv.metrics().polls_waiting == 1);
    drop(c);
    wait_for("the poll is dropped", Duration::from_secs(5), || {
        srv.metrics().polls_waiting == 0 && srv.metrics().connections_open == 0
    });
}

#[test]
fn bad_requests_get_clear_answers() {
    let secret = b"sekrit";
    let srv = server(|c| {
        c.jwt_secret = Some(secret.to_vec());
        c.allowed_origins = Some(vec!["https://good.example".into()]);
    });
    let a = srv.local_addr();
    let ann = jwt(secret, json!({"sub":"ann","rooms":["ok"],"exp": unix_now() + 600}));
    let reader = jwt(secret, json!({"sub":"rita","publish":false,"exp": unix_now() + 600}));
    let mut c = HttpConn::new(a);
    let auth = format!("Authorization: Bearer {ann}\r\n");
    let r = |c: &mut HttpConn, method: &str, path: &str, headers: &str, body: &str| {
        let r = c.request(method, path, headers, body.as_bytes());
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    };
    assert_eq!(r(&mut c, "POST", "/rooms/ok/messages", &auth, r#"{"data":[1,2]}"#).0, 200);
    assert_eq!(r(&mut c, "POST", "/rooms/ok/messages", "", r#"{"data":1}"#).0, 401, "no token");
    assert_eq!(r(&mut c, "POST", "/rooms/ok/messages?token=forged", "", r#"{"data":1}"#).0, 401);
    assert_eq!(r(&mut c, "POST", "/rooms/secret/messages", &auth, r#"{"data":1}"#).0, 403, "not in the token's rooms");
    let ro = format!("Authorization: Bearer {reader}\r\n");
    assert_eq!(r(&mut c, "POST", "/rooms/ok/messages", &ro, r#"{"data":1}"#).0, 403, "read-only token");
    let (st, body) = r(&mut c, "POST", "/rooms/ok/messages", &auth, "{nope");
    assert!(st == 400 && body.contains("invalid JSON"), "{st} {body}");
    assert_eq!(r(&mut c, "POST", "/rooms/ok/messages", &auth, r#"{"other":1}"#).0, 400, "no data");
    assert_eq!(r(&mut c, "GET", "/rooms/ok/messages", &auth, "").0, 405);
    assert_eq!(r(&mut c, "POST", "/rooms/ok/other", &auth, "{}").0, 404);
    assert_eq!(r(&mut c, "GET", "/poll?room=ok", "", "").0, 401);
    assert_eq!(r(&mut c, "GET", "/poll", &auth, "").0, 400, "no room");
    assert_eq!(r(&mut c, "GET", "/poll?room=ok&since=12", &auth, "").0, 400, "since is EPOCH:SEQ");
    assert_eq!(r(&mut c, "GET", "/poll?room=secret", &auth, "").0, 403);
    assert_eq!(r(&mut c, "POST", "/poll?room=ok", &auth, "").0, 405);
    // Preflight for a page on an allowed origin; a foreign origin is refused and counted.
    let pre = c.request("OPTIONS", "/rooms/ok/messages", "Origin: https://good.example\r\n", b"");
    assert_eq!(pre.status, 204);
    assert!(pre.head.contains("Access-Control-Allow-Headers: Authorization, Content-Type"), "{}", pre.head);
    let before = srv.metrics().origin_rejections_total;
    let evil =
        c.request("POST", "/rooms/ok/messages", &format!("{auth}Origin: https://evil.example\r\n"), b"{\"data\":1}");
    assert_eq!(evil.status, 403);
    assert_eq!(srv.metrics().origin_rejections_total, before + 1);
    // Streams: the same rules, answered before any event.
    for (target, status) in [
        ("/sse?room=ok".to_string(), 401),
        (format!("/sse?room=secret&token={ann}"), 403),
        (format!("/sse?token={ann}"), 400),
        (format!("/sse?room=ok&token={ann}&since=x"), 400),
    ] {
        assert_eq!(SseClient::open(a, &target, "").status, status, "{target}");
    }
    assert_eq!(SseClient::open(a, &format!("/sse?room=ok&token={ann}"), "Last-Event-ID: junk\r\n").status, 400);
    let ok = SseClient::open(a, &format!("/sse?room=ok&token={ann}"), "Origin: https://good.example\r\n");
    assert_eq!(ok.status, 200);
    assert_eq!(
        SseClient::open(a, &format!("/sse?room=ok&token={ann}"), "Origin: https://evil.example\r\n").status,
        403
    );
}

#[test]
fn transports_can_be_turned_off_and_the_demo_and_client_are_served() {
    let srv = server(|c| c.transports = c100k::server::routes::Transports::parse("sse,poll").unwrap());
    let a = srv.local_addr();
    let (req, _) = upgrade_request_with(a, "/ws", Some("c100k.v1"));
    assert_eq!(upgrade_answer(a, &req).0, 404, "no WebSockets with --transports sse,poll");
    assert_eq!(SseClient::open(a, "/sse?room=x", "").status, 200);
    let (st, head, body) = get(a, "/");
    assert!(st == 200 && head.contains("text/html"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("/client/c100k.js"));
    let (st, head, body) = get(a, "/client/c100k.js");
    assert!(st == 200 && head.contains("text/javascript"), "{head}");
    assert!(String::from_utf8_lossy(&body).contains("export class"));

    let ws_only = server(|c| {
        c.transports = c100k::server::routes::Transports::parse("ws").unwrap();
        c.demo = false;
    });
    let b = ws_only.local_addr();
    assert_eq!(SseClient::open(b, "/sse?room=x", "").status, 404);
    assert_eq!(get(b, "/poll?room=x").0, 404);
    assert_eq!(get(b, "/").0, 426, "--no-demo: / is only the seed-mode WebSocket route");
    assert!(c100k::server::routes::Transports::parse("carrier-pigeon").is_err());
}

#[test]
fn shutdown_answers_waiting_polls_and_ends_streams() {
    let srv = server(|c| c.poll_timeout = Duration::from_secs(30));
    let a = srv.local_addr();
    let mut s = SseClient::open(a, "/sse?room=bye", "");
    s.expect("joined");
    let mut c = HttpConn::new(a);
    let next = c.request("GET", "/poll?room=bye", "", b"").json()["next"].as_str().unwrap().to_string();
    c.send(format!("GET /poll?room=bye&since={next} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    wait_for("the poll waits", Duration::from_secs(5), || srv.metrics().polls_waiting == 1);
    srv.shutdown();
    let r = c.response();
    assert_eq!((r.status, r.json()["messages"].clone()), (200, json!([])));
    assert!(r.closes(), "the answer says Connection: close");
    assert!(s.next().is_none(), "the stream ends");
}

#[test]
fn pipelined_posts_over_the_rate_are_answered_in_order() {
    let srv = server(|c| c.max_publish_rate = 1);
    let mut c = HttpConn::new(srv.local_addr());
    let post = "POST /rooms/r/messages?user=u HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{\"data\":1}";
    // Three requests in one write: the second is over the rate (answered at once, 429).
    c.send(format!("{post}{post}GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
    let (a, b, h) = (c.response(), c.response(), c.response());
    assert_eq!((a.status, b.status, h.status), (200, 429, 200));
    assert_eq!(a.json()["seq"], 1);
    assert!(b.head.contains("Retry-After: 1") && b.json()["code"] == "rate_limited", "{}", b.head);
}

#[test]
fn a_poll_after_an_idle_spell_is_held_for_the_whole_timeout() {
    // Regression: a loop that slept for a while armed timers against the tick it last processed,
    // so a poll arriving after a quiet spell was answered (empty) at once instead of being held.
    let srv = server(|c| c.poll_timeout = Duration::from_millis(500));
    let mut c = HttpConn::new(srv.local_addr());
    let next = c.request("GET", "/poll?room=quiet", "", b"").json()["next"].as_str().unwrap().to_string();
    // The quiet spell itself is what is tested: nothing happens on the server for a second.
    std::thread::sleep(Duration::from_secs(1));
    let t = std::time::Instant::now();
    let v = c.request("GET", &format!("/poll?room=quiet&since={next}"), "", b"").json();
    assert!(t.elapsed() >= Duration::from_millis(450), "answered after {:?}", t.elapsed());
    assert_eq!((v["messages"].clone(), v["next"].as_str()), (json!([]), Some(next.as_str())));
}
