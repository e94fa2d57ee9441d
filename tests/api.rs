//! The server API for application backends, over real sockets: publish, presence and history
//! with the API key, HTTP/1.1 keep-alive (many requests on one connection, pipelined too), and
//! the JSON errors (401, 404 without --api-key, 400, 405, 413).

mod common;

use common::*;
use serde_json::json;

const KEY: &str = "Authorization: Bearer backend-key\r\n";

#[test]
fn a_backend_publishes_and_reads_over_one_keep_alive_connection() {
    let srv = server(|c| c.api_key = Some("backend-key".into()));
    let mut member = RawWs::v1(srv.local_addr(), "?user=ann");
    assert_eq!(member.call(json!({"op":"join","id":1,"room":"news"}))["op"], "joined");
    let mut raw = RawWs::connect(srv.local_addr(), "/ws?room=news");

    let mut api = HttpConn::new(srv.local_addr());
    let mut epoch = String::new();
    for i in 1..=50u64 {
        let body = json!({"room":"news","data":{"n":i}}).to_string();
        let r = api.request("POST", "/api/publish", KEY, body.as_bytes());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert!(!r.closes(), "keep-alive");
        assert!(r.head.contains("Content-Type: application/json"));
        let v = r.json();
        assert_eq!((v["room"].clone(), v["seq"].clone()), (json!("news"), json!(i)));
        epoch = v["epoch"].as_str().unwrap().to_string();
    }
    for i in 1..=50u64 {
        let m = member.recv_op("msg");
        assert_eq!((m["seq"].clone(), m["data"].clone(), m["from"].clone()), (json!(i), json!({"n":i}), json!("api")));
        assert_eq!(raw.recv(), Some(Msg::Text(format!("{{\"n\":{i}}}"))));
    }
    let r = api.request("POST", "/api/publish", KEY, br#"{"room":"news","data":"x","from":"cms"}"#);
    assert_eq!(r.json()["seq"], 51);
    assert_eq!(member.recv_op("msg")["from"], "cms");

    let p = api.request("GET", "/api/rooms/news/presence", KEY, b"").json();
    assert_eq!(p["room"], "news");
    let users = p["users"].as_array().unwrap();
    assert_eq!(users, &vec![json!({"user":"ann","conns":1})], "the anonymous raw member is not listed");

    let h = api.request("GET", &format!("/api/rooms/news/history?since={epoch}:48&limit=2"), KEY, b"").json();
    assert_eq!(h["epoch"], epoch);
    let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![49, 50]);
    assert_eq!(h["messages"][0]["op"], "msg");
    let all = api.request("GET", "/api/rooms/news/history", KEY, b"").json();
    assert_eq!(all["messages"].as_array().unwrap().len(), 51);

    // Pipelined: three requests in one write, three answers in order.
    let one = |n: u64| {
        let body = json!({"room":"news","data":n}).to_string();
        format!("POST /api/publish HTTP/1.1\r\nHost: t\r\n{KEY}Content-Length: {}\r\n\r\n{body}", body.len())
    };
    api.send(format!("{}{}{}", one(100), one(101), one(102)).as_bytes());
    for seq in 52..=54 {
        assert_eq!(api.response().json()["seq"], seq);
    }
    // Health and metrics on the same connection too; Connection: close ends it.
    assert_eq!(api.request("GET", "/healthz", "", b"").status, 200);
    let last = api.request("GET", "/metrics", "Connection: close\r\n", b"");
    assert!(last.closes());
    assert!(api.closed());
    assert_eq!(srv.metrics().api_requests_total, 57);
}

#[test]
fn api_errors_are_json_with_the_right_status() {
    let srv = server(|c| {
        c.api_key = Some("backend-key".into());
        c.max_message_size = 1024;
    });
    let mut api = HttpConn::new(srv.local_addr());
    let cases: Vec<(&str, &str, &str, Vec<u8>, u16)> = vec![
        ("no key", "POST", "", br#"{"room":"r","data":1}"#.to_vec(), 401),
        ("wrong key", "POST", "Authorization: Bearer nope\r\n", br#"{"room":"r","data":1}"#.to_vec(), 401),
        ("bad JSON", "POST", KEY, b"{oops".to_vec(), 400),
        ("missing room", "POST", KEY, br#"{"data":1}"#.to_vec(), 400),
        ("missing data", "POST", KEY, br#"{"room":"r"}"#.to_vec(), 400),
        ("bad room", "POST", KEY, br#"{"room":"","data":1}"#.to_vec(), 400),
    ];
    for (what, method, headers, body, want) in cases {
        let r = api.request(method, "/api/publish", headers, &body);
        assert_eq!(r.status, want, "{what}");
        assert!(r.json()["error"].as_str().is_some(), "{what}: a JSON error");
        assert!(!r.closes(), "{what}: the connection survives");
    }
    assert_eq!(api.request("GET", "/api/publish", KEY, b"").status, 405);
    assert_eq!(api.request("GET", "/api/rooms/r/nothing", KEY, b"").status, 404);
    assert_eq!(api.request("GET", "/api/rooms/r/history?limit=x", KEY, b"").status, 400);
    // Oversize: 413, and the connection ends (its body was not read).
    let big = vec![b'x'; 2000];
    let r = api.request("POST", "/api/publish", KEY, &big);
    assert_eq!(r.status, 413);
    assert!(r.closes());
    assert!(srv.metrics().auth_failures_total >= 2);

    // Without --api-key the routes do not exist.
    let plain = server(|_| {});
    let r = HttpConn::new(plain.local_addr()).request("POST", "/api/publish", KEY, br#"{"room":"r","data":1}"#);
    assert_eq!(r.status, 404);
}

#[test]
fn a_chunked_body_is_read() {
    let srv = server(|c| c.api_key = Some("backend-key".into()));
    let mut member = RawWs::v1(srv.local_addr(), "");
    member.call(json!({"op":"join","id":1,"room":"c"}));
    let mut api = HttpConn::new(srv.local_addr());
    api.send(
        format!(
            "POST /api/publish HTTP/1.1\r\nHost: t\r\n{KEY}Transfer-Encoding: chunked\r\n\r\n\
             5\r\n{{\"roo\r\n10\r\nm\":\"c\",\"data\":7}}\r\n0\r\n\r\n"
        )
        .as_bytes(),
    );
    assert_eq!(api.response().json()["seq"], 1);
    assert_eq!(member.recv_op("msg")["data"], 7);
}
