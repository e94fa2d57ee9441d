//! The c100k.v1 room protocol over real sockets: replies, one gap-free order for every member on
//! every loop with concurrent senders, exact resume while publishing goes on, recovered:false
//! when the position is gone, bad commands, history, and raw/v1 interop.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// Connect v1 members until both loops hold at least one (the kernel's hash decides the loop).
fn v1_on_both_loops(srv: &c100k::server::Server, min: usize) -> Vec<RawWs> {
    let mut v = Vec::new();
    loop {
        v.push(RawWs::v1(srv.local_addr(), &format!("?user=u{}", v.len())));
        let per_loop: Vec<u64> = srv.loop_metrics().iter().map(|m| m.websockets_open).collect();
        if v.len() >= min && per_loop.iter().all(|&n| n > 0) {
            return v;
        }
        assert!(v.len() < 200, "connections never spread over both loops: {per_loop:?}");
    }
}

fn join(ws: &mut RawWs, room: &str) -> Value {
    let r = ws.call(json!({"op":"join","id":"j","room":room}));
    assert_eq!(r["op"], "joined", "{r}");
    r
}

#[test]
fn join_publish_and_the_documented_replies() {
    let srv = server(|_| {});
    let mut a = RawWs::v1(srv.local_addr(), "?user=ann");
    let mut b = RawWs::v1(srv.local_addr(), "?user=bob");
    let ja = a.call(json!({"op":"join","id":1,"room":"lobby"}));
    assert_eq!(ja["op"], "joined");
    assert_eq!(ja["id"], 1);
    assert_eq!(ja["room"], "lobby");
    assert_eq!(ja["seq"], 0, "an empty room's top is 0");
    assert_eq!(ja["recovered"], false);
    let epoch = ja["epoch"].as_str().expect("an epoch string").to_string();
    assert!(!epoch.is_empty());
    let jb = b.call(json!({"op":"join","id":"x","room":"lobby"}));
    assert_eq!((jb["id"].clone(), jb["epoch"].clone()), (json!("x"), json!(epoch)));

    let p = a.call(json!({"op":"publish","id":2,"room":"lobby","data":{"text":"héllo","n":[1,2]}}));
    assert_eq!(p, json!({"op":"published","id":2,"room":"lobby","seq":1}));
    let m = b.recv_op("msg");
    assert_eq!((m["room"].clone(), m["seq"].clone(), m["epoch"].clone()), (json!("lobby"), json!(1), json!(epoch)));
    assert_eq!(m["from"], "ann");
    assert_eq!(m["data"], json!({"text":"héllo","n":[1,2]}));
    let ts = m["ts"].as_u64().unwrap();
    assert!(ts.abs_diff(unix_now() * 1000) < 60_000, "ts is unix milliseconds");
    assert_eq!(a.sync(), vec![], "the publisher does not get its own message");

    // A second connection of the same user is another member: it gets the message.
    let mut a2 = RawWs::v1(srv.local_addr(), "?user=ann");
    join(&mut a2, "lobby");
    b.call(json!({"op":"publish","id":3,"room":"lobby","data":null}));
    assert_eq!(a.recv_op("msg")["data"], Value::Null);
    assert_eq!(a2.recv_op("msg")["seq"], 2);

    let h = b.call(json!({"op":"history","id":4,"room":"lobby"}));
    assert_eq!(h["op"], "history");
    assert_eq!(h["epoch"], epoch);
    let seqs: Vec<u64> = h["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![1, 2]);
    assert_eq!(h["messages"][0]["op"], "msg");
    let h = b.call(json!({"op":"history","id":5,"room":"lobby","since":{"epoch":epoch,"seq":1},"limit":10}));
    assert_eq!(h["messages"].as_array().unwrap().len(), 1);

    let pr = b.call(json!({"op":"presence","id":6,"room":"lobby"}));
    assert_eq!(pr["users"], json!([{"user":"ann","conns":2},{"user":"bob","conns":1}]));

    let l = a2.call(json!({"op":"leave","id":7,"room":"lobby"}));
    assert_eq!(l, json!({"op":"left","id":7,"room":"lobby"}));
    let e = a2.call(json!({"op":"publish","id":8,"room":"lobby","data":1}));
    assert_eq!((e["op"].clone(), e["code"].clone()), (json!("error"), json!("not_joined")));
    assert_eq!(srv.metrics().publishes_total, 2);
}

#[test]
fn bad_commands_get_bad_request_and_the_connection_stays() {
    let srv = server(|c| c.max_rooms_per_conn = 2);
    let mut a = RawWs::v1(srv.local_addr(), "");
    for (text, id) in [
        ("{not json".to_string(), Value::Null),
        (r#"{"op":"fly","id":9,"room":"r"}"#.to_string(), json!(9)),
        (r#"{"op":"join","id":"m"}"#.to_string(), json!("m")),
        (r#"{"op":"publish","id":1,"room":"r"}"#.to_string(), json!(1)),
        (r#"[1,2,3]"#.to_string(), Value::Null),
        (format!(r#"{{"op":"join","id":2,"room":"{}"}}"#, "x".repeat(300)), json!(2)),
    ] {
        a.text(&text);
        let e = a.recv_json();
        assert_eq!(e["op"], "error", "{text}");
        assert_eq!(e["code"], "bad_request", "{text}");
        assert_eq!(e["id"], id, "{text}");
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    a.binary(b"{}");
    assert_eq!(a.recv_json()["code"], "bad_request");
    let e = a.call(json!({"op":"publish","id":3,"room":"nope","data":1}));
    assert_eq!(e["code"], "not_joined");
    join(&mut a, "r1");
    assert_eq!(a.call(json!({"op":"join","id":4,"room":"r1"}))["code"], "bad_request", "already joined");
    join(&mut a, "r2");
    assert_eq!(a.call(json!({"op":"join","id":5,"room":"r3"}))["code"], "too_many_rooms");
    assert_eq!(a.call(json!({"op":"leave","id":6,"room":"r3"}))["code"], "not_joined");
    // Still fully working.
    assert_eq!(a.call(json!({"op":"publish","id":7,"room":"r2","data":[]}))["seq"], 1);
}

#[test]
fn one_gap_free_order_for_every_member_with_concurrent_senders_on_both_loops() {
    const SENDERS: usize = 4;
    const EACH: usize = 250;
    let srv = server(|c| {
        c.threads = 2;
        c.max_publish_rate = 0;
    });
    let mut all = v1_on_both_loops(&srv, SENDERS + 4);
    for ws in all.iter_mut() {
        join(ws, "race");
    }
    let receivers: Vec<RawWs> = all.split_off(SENDERS);
    // Senders: one thread each, all at once.
    let go = Arc::new(std::sync::Barrier::new(SENDERS));
    let threads: Vec<_> = all
        .into_iter()
        .enumerate()
        .map(|(s, mut ws)| {
            let go = go.clone();
            std::thread::spawn(move || {
                go.wait();
                for i in 0..EACH {
                    ws.send_json(&json!({"op":"publish","room":"race","data":{"s":s,"i":i}}));
                }
                // Every publish answered: the server numbered all of them.
                let mut acked = 0;
                while acked < EACH {
                    if ws.recv_json()["op"] == "published" {
                        acked += 1;
                    }
                }
                ws
            })
        })
        .collect();
    let senders: Vec<RawWs> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let total = SENDERS * EACH;
    let mut orders = Vec::new();
    for mut r in receivers {
        let mut seen = Vec::with_capacity(total);
        while seen.len() < total {
            let m = r.recv_op("msg");
            seen.push((m["seq"].as_u64().unwrap(), m["data"].clone(), m["from"].clone()));
        }
        let seqs: Vec<u64> = seen.iter().map(|x| x.0).collect();
        assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "gap-free, in seq order");
        // Per sender, its own order is kept.
        for s in 0..SENDERS {
            let mine: Vec<u64> = seen.iter().filter(|x| x.1["s"] == s).map(|x| x.1["i"].as_u64().unwrap()).collect();
            assert_eq!(mine, (0..EACH as u64).collect::<Vec<_>>());
        }
        orders.push(seen);
    }
    for o in &orders[1..] {
        assert_eq!(o, &orders[0], "the same order, seqs, data and senders for every member");
    }
    assert!(srv.metrics().cross_loop_deliveries_total > 0);
    drop(senders);
}

#[test]
fn resume_is_exact_while_publishing_goes_on() {
    let srv = Arc::new(server(|c| {
        c.threads = 2;
        c.max_publish_rate = 0;
        c.history_size = 10_000;
    }));
    let addr = srv.local_addr();
    let mut reader = RawWs::v1(addr, "?user=reader");
    let epoch = join(&mut reader, "live")["epoch"].as_str().unwrap().to_string();
    // A publisher that never stops until told to.
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let publisher = std::thread::spawn(move || {
        let mut p = RawWs::v1(addr, "?user=pub");
        join(&mut p, "live");
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            n += 1;
            p.send_json(&json!({"op":"publish","room":"live","data":n}));
            if n % 50 == 0 {
                // Keep its own queue of acks drained.
                while p.recv_json()["seq"].as_u64().unwrap_or(0) < n {}
            }
        }
        n
    });
    let mut last = 0;
    let mut got = BTreeSet::new();
    for round in 0..5 {
        // Read a while, then vanish abruptly (no close frame) and come back with since.
        let until = last + 200;
        while last < until {
            let m = reader.recv_op("msg");
            let seq = m["seq"].as_u64().unwrap();
            assert_eq!(seq, last + 1, "round {round}: gap-free");
            assert_eq!(m["data"], seq, "the publisher numbered its data like the server");
            assert!(got.insert(seq));
            last = seq;
        }
        kill(reader);
        reader = RawWs::v1(addr, "?user=reader");
        let j = reader.call(json!({"op":"join","id":"r","room":"live","since":{"epoch":epoch,"seq":last}}));
        assert_eq!(j["recovered"], true, "{j}");
        assert_eq!(j["epoch"], epoch);
        let top = j["seq"].as_u64().unwrap();
        assert!(top >= last);
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.join().unwrap();
    while last < published {
        let m = reader.recv_op("msg");
        let seq = m["seq"].as_u64().unwrap();
        assert_eq!(seq, last + 1, "after the last resume: gap-free to the end");
        last = seq;
    }
    assert_eq!(reader.sync().iter().filter(|m| matches!(m, Msg::Text(_))).count(), 0, "no duplicates after the end");
    assert!(srv.metrics().messages_recovered_total > 0);
}

#[test]
fn recovered_false_when_the_position_is_gone() {
    let srv = server(|c| {
        c.history_size = 5;
        c.history_ttl = Duration::from_millis(400);
        c.presence_grace = Duration::from_millis(100);
    });
    let mut a = RawWs::v1(srv.local_addr(), "");
    let epoch = join(&mut a, "r")["epoch"].as_str().unwrap().to_string();
    for i in 0..8 {
        a.call(json!({"op":"publish","id":i,"room":"r","data":i}));
    }
    let mut b = RawWs::v1(srv.local_addr(), "");
    // A wrong epoch.
    let j = b.call(json!({"op":"join","id":1,"room":"r","since":{"epoch":"nope","seq":3}}));
    assert_eq!((j["recovered"].clone(), j["seq"].clone(), j["epoch"].clone()), (json!(false), json!(8), json!(epoch)));
    assert_eq!(b.call(json!({"op":"leave","id":2,"room":"r"}))["op"], "left");
    // Evicted by the history size: 3 is gone (5 kept: 4..8).
    let j = b.call(json!({"op":"join","id":3,"room":"r","since":{"epoch":epoch,"seq":2}}));
    assert_eq!(j["recovered"], false);
    assert_eq!(b.sync().len(), 0, "nothing is replayed when not recovered");
    b.call(json!({"op":"leave","id":4,"room":"r"}));
    let j = b.call(json!({"op":"join","id":5,"room":"r","since":{"epoch":epoch,"seq":3}}));
    assert_eq!(j["recovered"], true);
    let replay: Vec<u64> = (0..5).map(|_| b.recv_op("msg")["seq"].as_u64().unwrap()).collect();
    assert_eq!(replay, vec![4, 5, 6, 7, 8]);
    // A position beyond the top is not a position of this epoch.
    b.call(json!({"op":"leave","id":6,"room":"r"}));
    assert_eq!(b.call(json!({"op":"join","id":7,"room":"r","since":{"epoch":epoch,"seq":99}}))["recovered"], false);
    // Expired history: its messages are dropped; members stay, so the numbering does too.
    wait_for("history expired", Duration::from_secs(10), || history_gone(&srv, "r"));
    b.call(json!({"op":"leave","id":8,"room":"r"}));
    let j = b.call(json!({"op":"join","id":9,"room":"r","since":{"epoch":epoch,"seq":7}}));
    assert_eq!((j["recovered"].clone(), j["epoch"].clone()), (json!(false), json!(epoch)), "message 8 expired");
    let j2 =
        RawWs::v1(srv.local_addr(), "").call(json!({"op":"join","id":1,"room":"r","since":{"epoch":epoch,"seq":8}}));
    assert_eq!(j2["recovered"], true, "at the top nothing was missed");
    // Once nobody is in the room and its history is gone, the numbering restarts: a new epoch.
    drop((a, b));
    wait_for("room forgotten", Duration::from_secs(10), || room_forgotten(&srv, "r"));
    let j = RawWs::v1(srv.local_addr(), "").call(json!({"op":"join","id":1,"room":"r"}));
    assert_ne!(j["epoch"], epoch);
    assert_eq!(j["seq"], 0);
}

#[test]
fn raw_and_v1_members_share_a_room() {
    let srv = server(|_| {});
    let mut raw = RawWs::connect(srv.local_addr(), "/ws?room=mix&user=seed");
    let mut v1 = RawWs::v1(srv.local_addr(), "?user=modern");
    join(&mut v1, "mix");
    raw.text(r#"{"hello": "from seed"}"#);
    let m = v1.recv_op("msg");
    assert_eq!((m["seq"].clone(), m["from"].clone()), (json!(1), json!("seed")));
    assert_eq!(m["data"], json!({"hello":"from seed"}));
    v1.text(r#"{"op":"publish","id":1,"room":"mix","data":{"x":[1, 2]}}"#);
    assert_eq!(v1.recv_op("published")["seq"], 2);
    assert_eq!(raw.recv(), Some(Msg::Text(r#"{"x":[1, 2]}"#.into())), "raw members get the bare data, as written");
    raw.binary(&[0, 1, 2, 255]);
    let m = v1.recv_op("msg");
    assert_eq!((m["seq"].clone(), m["binary"].clone(), m["data"].clone()), (json!(3), json!(true), json!("AAEC/w==")));
    // Raw publishes are numbered and stored too.
    let h = v1.call(json!({"op":"history","id":2,"room":"mix"}));
    assert_eq!(h["messages"].as_array().unwrap().len(), 3);
    // Raw members keep the seed's error reply for invalid JSON.
    raw.text("{oops");
    match raw.recv() {
        Some(Msg::Text(t)) => assert!(t.contains("invalid JSON"), "{t}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(v1.sync().len(), 0, "invalid JSON is neither numbered nor relayed");
}
