//! Chat rooms over real sockets: relay to every other member on every loop, never to the sender,
//! never to another room; JSON validation with an error reply; binary relayed as binary.

mod common;

use std::time::Duration;

use common::*;

/// Connect members to `room` until both loops hold at least one, so relaying across loops is
/// exercised for certain (the kernel's SO_REUSEPORT hash decides the loop).
fn members_on_both_loops(srv: &c100k::server::Server, room: &str, min: usize) -> Vec<RawWs> {
    let mut v = Vec::new();
    loop {
        v.push(RawWs::connect(srv.local_addr(), &format!("/ws?room={room}")));
        let per_loop: Vec<u64> = srv.loop_metrics().iter().map(|m| m.websockets_open).collect();
        if v.len() >= min && per_loop.iter().all(|&n| n > 0) {
            return v;
        }
        assert!(v.len() < 200, "connections never spread over both loops: {per_loop:?}");
    }
}

#[test]
fn messages_reach_every_other_member_across_loops_and_no_one_else() {
    let srv = server(|c| c.threads = 2);
    let mut room_a = members_on_both_loops(&srv, "a", 6);
    let mut room_b = [RawWs::connect(srv.local_addr(), "/ws?room=b"), RawWs::connect(srv.local_addr(), "/?room=b")];

    let payload = r#"{"from":0,"text":"héllo","n":[1,2,3]}"#;
    room_a[0].text(payload);
    for (i, m) in room_a.iter_mut().enumerate().skip(1) {
        assert_eq!(m.recv(), Some(Msg::Text(payload.into())), "member {i}");
    }
    // The sender and the other room got nothing: a ping round trip shows nothing came before it.
    assert_eq!(room_a[0].sync(), vec![], "sender must not receive its own message");
    for m in room_b.iter_mut() {
        assert_eq!(m.sync(), vec![], "room b must not receive room a's message");
    }
    assert!(srv.metrics().cross_loop_deliveries_total >= 1, "a loop handed the frame to the other loop");

    // Binary is relayed as binary, byte for byte.
    let bin: Vec<u8> = (0..=255).collect();
    room_b[1].binary(&bin);
    assert_eq!(room_b[0].recv(), Some(Msg::Binary(bin)));
    assert_eq!(room_b[1].sync(), vec![]);

    let n = room_a.len() as u64;
    let m = srv.metrics();
    assert_eq!(m.messages_sent_total, (n - 1) + 1);
}

#[test]
fn invalid_json_is_not_relayed_and_the_sender_stays() {
    let srv = server(|_| {});
    let mut a = RawWs::connect(srv.local_addr(), "/ws?room=j");
    let mut b = RawWs::connect(srv.local_addr(), "/ws?room=j");
    a.text("{not json");
    match a.recv() {
        Some(Msg::Text(t)) => {
            let v: serde_json::Value = serde_json::from_str(&t).expect("the error reply is JSON");
            assert!(v["error"].as_str().unwrap().contains("invalid JSON"), "{t}");
        }
        other => panic!("expected an error message, got {other:?}"),
    }
    assert_eq!(b.sync(), vec![], "invalid JSON must not be relayed");
    a.text(r#"{"ok":true}"#);
    assert_eq!(b.recv(), Some(Msg::Text(r#"{"ok":true}"#.into())));
    assert_eq!(srv.metrics().invalid_json_total, 1);
}

#[test]
fn order_is_kept_per_sender_and_members_leaving_are_forgotten() {
    let srv = server(|c| c.threads = 2);
    let mut members = members_on_both_loops(&srv, "order", 4);
    for i in 0..200 {
        members[0].text(&format!("{{\"seq\":{i}}}"));
    }
    for m in members.iter_mut().skip(1) {
        for i in 0..200 {
            assert_eq!(m.recv(), Some(Msg::Text(format!("{{\"seq\":{i}}}"))));
        }
    }
    // Everyone but two leaves; the room keeps working for those left.
    while members.len() > 2 {
        let mut m = members.pop().unwrap();
        m.close(1000);
        m.expect_close();
    }
    wait_for("members left", Duration::from_secs(5), || srv.metrics().websockets_open == 2);
    members[1].text("[\"still\"]");
    assert_eq!(members[0].recv(), Some(Msg::Text("[\"still\"]".into())));
    drop(members);
    wait_for("rooms forgotten", Duration::from_secs(5), || srv.metrics().rooms == 0);
}
