//! Presence over real sockets: join and leave events, connection counts per user, the grace
//! period after a killed TCP connection (no flapping when the user returns in time), and clean
//! leaves reported at once.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const GRACE: Duration = Duration::from_millis(600);

fn watcher(addr: std::net::SocketAddr) -> RawWs {
    let mut w = RawWs::v1(addr, "?user=watcher");
    let j = w.call(json!({"op":"join","id":"w","room":"p","presence":true}));
    assert_eq!(j["op"], "joined");
    w
}

fn member(addr: std::net::SocketAddr, user: &str) -> RawWs {
    let mut m = RawWs::v1(addr, &format!("?user={user}"));
    assert_eq!(m.call(json!({"op":"join","id":"m","room":"p"}))["op"], "joined");
    m
}

fn users(w: &mut RawWs) -> Value {
    w.call(json!({"op":"presence","id":"q","room":"p"}))["users"].clone()
}

/// Nothing but what `sync` returns arrived: no presence event.
fn no_events(w: &mut RawWs) {
    let got = w.sync();
    assert!(got.is_empty(), "unexpected: {got:?}");
}

#[test]
fn a_killed_connection_keeps_the_user_present_for_the_grace_period() {
    let srv = server(|c| c.presence_grace = GRACE);
    let a = srv.local_addr();
    let mut w = watcher(a);
    let bob = member(a, "bob");
    assert_eq!(w.recv_op("presence_join"), json!({"op":"presence_join","room":"p","user":"bob"}));
    assert_eq!(users(&mut w), json!([{"user":"bob","conns":1},{"user":"watcher","conns":1}]));

    // A blip: bob's TCP connection dies; he is back well within the grace period.
    kill(bob);
    wait_for("server saw the drop", Duration::from_secs(5), || srv.metrics().websockets_open == 1);
    assert_eq!(users(&mut w)[0], json!({"user":"bob","conns":0}), "still present during the grace period");
    let bob = member(a, "bob");
    no_events(&mut w);
    assert_eq!(users(&mut w)[0], json!({"user":"bob","conns":1}));

    // Gone for good: reported once the grace period is over, not before.
    kill(bob);
    let dropped = Instant::now();
    wait_for("server saw the drop", Duration::from_secs(5), || srv.metrics().websockets_open == 1);
    let leave = w.recv_op("presence_leave");
    assert_eq!(leave, json!({"op":"presence_leave","room":"p","user":"bob"}));
    assert!(dropped.elapsed() >= GRACE - Duration::from_millis(50), "left after {:?}", dropped.elapsed());
    assert_eq!(users(&mut w), json!([{"user":"watcher","conns":1}]));
}

#[test]
fn clean_leaves_are_immediate_and_counts_follow_connections() {
    let srv = server(|c| c.presence_grace = Duration::from_secs(30));
    let a = srv.local_addr();
    let mut w = watcher(a);
    let mut ann1 = member(a, "ann");
    assert_eq!(w.recv_op("presence_join")["user"], "ann");
    let mut ann2 = member(a, "ann");
    no_events(&mut w); // a second connection of a present user is not news
    assert_eq!(users(&mut w)[0], json!({"user":"ann","conns":2}));
    // A leave op of one connection: ann is still there through the other.
    assert_eq!(ann1.call(json!({"op":"leave","id":1,"room":"p"}))["op"], "left");
    no_events(&mut w);
    // Close 1000 from the client: immediate, no grace.
    let started = Instant::now();
    ann2.close(1000);
    ann2.expect_close();
    assert_eq!(w.recv_op("presence_leave")["user"], "ann");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A browser's close() without a code is a goodbye too.
    let mut cid = member(a, "cid");
    assert_eq!(w.recv_op("presence_join")["user"], "cid");
    cid.send_frame(c100k::proto::ws::frame::OpCode::Control(c100k::proto::ws::frame::Control::Close), &[]);
    assert_eq!(w.recv_op("presence_leave")["user"], "cid");
    // Members that did not ask for presence events get none.
    let mut quiet = member(a, "quiet");
    assert_eq!(w.recv_op("presence_join")["user"], "quiet");
    let _dan = member(a, "dan");
    assert_eq!(w.recv_op("presence_join")["user"], "dan");
    no_events(&mut quiet);
    assert!(srv.metrics().presence_events_sent_total >= 5);
}

/// A connection that names no user (an open server, no `?user=`) holds no name while idle:
/// it is counted in the room, never listed or announced, and its messages' `from` names its
/// connection, a different name for each.
#[test]
fn anonymous_members_are_not_listed_or_announced_and_send_under_their_connection() {
    let srv = server(|c| c.presence_grace = GRACE);
    let a = srv.local_addr();
    let mut w = watcher(a);
    let mut anons: Vec<RawWs> = (0..2).map(|_| RawWs::v1(a, "")).collect();
    for m in anons.iter_mut() {
        assert_eq!(m.call(json!({"op":"join","id":"m","room":"p"}))["op"], "joined");
    }
    let _seed = RawWs::connect(a, "/ws?room=p");
    no_events(&mut w);
    assert_eq!(users(&mut w), json!([{"user":"watcher","conns":1}]));
    let mut from = Vec::new();
    for m in anons.iter_mut() {
        m.call(json!({"op":"publish","id":"p","room":"p","data":1}));
        from.push(w.recv_op("msg")["from"].as_str().unwrap().to_string());
    }
    assert!(from.iter().all(|f| f.starts_with("anon-")), "{from:?}");
    assert_ne!(from[0], from[1]);
    // Leaving, cleanly or not, announces nothing either.
    anons.pop().unwrap().close(1000);
    kill(anons.pop().unwrap());
    wait_for("both gone", Duration::from_secs(5), || srv.metrics().websockets_open == 2);
    no_events(&mut w);
}
