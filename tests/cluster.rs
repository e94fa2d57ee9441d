//! Rooms on Redis across nodes: real `redis-server` processes (a 3-master Redis Cluster too)
//! and c100k binaries, all on loopback, started and stopped by the tests. One order for every
//! member on every node; the processes of `--processes 3` share rooms; a member whose node is
//! SIGKILLed resumes on another with nothing lost; a Redis restart mid-stream loses nothing
//! accepted; a dead node's users leave presence after the grace period; sharded pub/sub.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis::{command_list, RedisCluster, RedisServer};
use common::*;
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// A c100k node on `redis` (a URL, or `--redis-cluster` URLs when `cluster`).
fn node(redis: &str, prefix: &str, extra: &[&str]) -> Binary {
    let flag = if redis.contains(',') { "--redis-cluster" } else { "--redis" };
    let mut args = vec!["--threads", "2", flag, redis, "--redis-prefix", prefix, "--max-publish-rate", "0"];
    args.extend_from_slice(extra);
    Binary::start(&args)
}

fn join(ws: &mut RawWs, room: &str) -> Value {
    let r = ws.call(json!({"op":"join","id":"j","room":room}));
    assert_eq!(r["op"], "joined", "{r}");
    r
}

#[test]
fn a_room_spans_three_nodes_in_one_order() {
    const EACH: u64 = 150;
    let redis = RedisServer::start(false);
    let prefix = unique_prefix();
    let nodes: Vec<Binary> = (0..3).map(|_| node(&redis.url(), &prefix, &[])).collect();
    assert!(nodes[0].logged("rooms in Redis"), "the start-up line says where rooms live");
    let mut members: Vec<RawWs> = nodes.iter().map(|n| RawWs::v1(n.addr, "?user=member")).collect();
    let epochs: BTreeSet<String> =
        members.iter_mut().map(|m| join(m, "hall")["epoch"].as_str().unwrap().to_string()).collect();
    assert_eq!(epochs.len(), 1, "one room, one epoch, whichever node");
    // One publisher per node, all at once.
    let senders: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let addr = n.addr;
            std::thread::spawn(move || {
                let mut p = RawWs::v1(addr, &format!("?user=p{i}"));
                join(&mut p, "hall");
                for k in 0..EACH {
                    p.send_json(&json!({"op":"publish","id":k,"room":"hall","data":{"s":i,"k":k}}));
                }
                let mut acked = 0;
                while acked < EACH {
                    let v = p.recv_json();
                    if v["op"] == "published" {
                        acked += 1;
                    }
                }
                p
            })
        })
        .collect();
    let mut orders = Vec::new();
    for m in members.iter_mut() {
        let mut seen = Vec::new();
        while seen.len() < 3 * EACH as usize {
            let v = m.recv_op("msg");
            seen.push((v["seq"].as_u64().unwrap(), v["data"].clone()));
        }
        let seqs: Vec<u64> = seen.iter().map(|x| x.0).collect();
        assert_eq!(seqs, (1..=3 * EACH).collect::<Vec<_>>(), "gap-free, in seq order");
        for s in 0..3 {
            let mine: Vec<u64> = seen.iter().filter(|x| x.1["s"] == s).map(|x| x.1["k"].as_u64().unwrap()).collect();
            assert_eq!(mine, (0..EACH).collect::<Vec<_>>(), "each sender's order kept");
        }
        orders.push(seen);
    }
    for o in &orders[1..] {
        assert_eq!(o, &orders[0], "the same order for members on every node");
    }
    for s in senders {
        s.join().unwrap();
    }
}

/// The Redis client hands a node its subscription's messages on one path and the answers to
/// its calls on another, so a join's answer can overtake messages published before it. With a
/// history shorter than that lag, the join's read cannot fill the gap; the messages are still
/// on their way, not lost, and nobody may be told to join again.
#[test]
fn joins_on_a_lagging_node_never_reset_its_members() {
    const N: u64 = 3000;
    let redis = RedisServer::start(false);
    let prefix = unique_prefix();
    let history = ["--history-size", "2"];
    let a = node(&redis.url(), &prefix, &history);
    let b = node(&redis.url(), &prefix, &history);
    let mut watcher = RawWs::v1(a.addr, "?user=watcher");
    join(&mut watcher, "flood");
    let baddr = b.addr;
    let publisher = std::thread::spawn(move || {
        let mut p = RawWs::v1(baddr, "?user=pub");
        join(&mut p, "flood");
        for k in 1..=N {
            p.send_json(&json!({"op":"publish","id":k,"room":"flood","data":k}));
        }
        let mut acked = 0;
        while acked < N {
            let v = p.recv_json();
            assert_eq!(v["op"], "published", "{v}");
            acked += 1;
        }
    });
    let reader = std::thread::spawn(move || {
        let seqs: Vec<u64> = (0..N).map(|_| watcher.recv_op("msg")["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=N).collect::<Vec<_>>(), "gap-free, in order, never reset");
    });
    // Members join node a one after another while the flood goes through it.
    let mut joiners = Vec::new();
    for i in 0..40 {
        let mut j = RawWs::v1(a.addr, &format!("?user=j{i}"));
        let top = join(&mut j, "flood")["seq"].as_u64().unwrap();
        joiners.push((j, top));
    }
    publisher.join().unwrap();
    reader.join().unwrap();
    for (mut j, top) in joiners {
        let seqs: Vec<u64> = (top..N).map(|_| j.recv_op("msg")["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (top + 1..=N).collect::<Vec<_>>(), "a joiner gets everything after its top, once");
    }
}

#[test]
fn the_processes_of_processes_3_share_rooms() {
    let redis = RedisServer::start(false);
    let prefix = unique_prefix();
    let bin =
        Binary::start(&["--processes", "3", "--threads", "1", "--redis", &redis.url(), "--redis-prefix", &prefix]);
    assert!(bin.logged("rooms span all worker processes"), "the start-up line says rooms span processes");
    // Members until every worker holds one.
    let mut members = Vec::new();
    loop {
        let mut m = RawWs::v1(bin.addr, &format!("?user=u{}", members.len()));
        join(&mut m, "shared");
        members.push(m);
        let per: Vec<u64> =
            (0..3).map(|i| metric(bin.addr, &format!("c100k_worker_websockets_open{{worker=\"{i}\"}}"))).collect();
        if per.iter().all(|&n| n > 0) {
            break;
        }
        assert!(members.len() < 200, "connections never reached every worker: {per:?}");
    }
    let p = members[0].call(json!({"op":"publish","id":1,"room":"shared","data":"to all"}));
    assert_eq!(p["seq"], 1);
    for m in members.iter_mut().skip(1) {
        let v = m.recv_op("msg");
        assert_eq!((v["seq"].clone(), v["data"].clone()), (json!(1), json!("to all")));
    }
}

#[test]
fn a_member_resumes_on_another_node_after_sigkill_with_nothing_lost() {
    let redis = RedisServer::start(false);
    let prefix = unique_prefix();
    // History settings are the publishing node's: every node of a cluster runs the same ones.
    let history = ["--history-size", "100000"];
    let a = node(&redis.url(), &prefix, &history);
    let b = node(&redis.url(), &prefix, &history);
    let c = node(&redis.url(), &prefix, &history);
    let mut reader = RawWs::v1(a.addr, "?user=reader");
    let epoch = join(&mut reader, "live")["epoch"].as_str().unwrap().to_string();
    // A publisher on node b that keeps going, recording every acknowledged seq.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let (stop2, acked2, baddr) = (stop.clone(), acked.clone(), b.addr);
    let publisher = std::thread::spawn(move || {
        let mut p = RawWs::v1(baddr, "?user=pub");
        join(&mut p, "live");
        let mut n = 0u64;
        while !stop2.load(Ordering::Relaxed) {
            for _ in 0..20 {
                n += 1;
                p.send_json(&json!({"op":"publish","id":n,"room":"live","data":n}));
            }
            while (acked2.lock().unwrap().len() as u64) < n {
                let v = p.recv_json();
                assert_eq!(v["op"], "published", "{v}");
                acked2.lock().unwrap().insert(v["seq"].as_u64().unwrap());
            }
        }
        n
    });
    let mut last = 0;
    while last < 300 {
        let v = reader.recv_op("msg");
        assert_eq!(v["seq"].as_u64().unwrap(), last + 1);
        last += 1;
    }
    let mut a = a;
    a.signal(Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(5));
    // Messages keep coming in while the reader has no node.
    let target = last + 200;
    wait_for("publishing goes on", Duration::from_secs(10), || acked.lock().unwrap().len() as u64 > target);
    let mut reader = RawWs::v1(c.addr, "?user=reader");
    let j = reader.call(json!({"op":"join","id":"r","room":"live","since":{"epoch":epoch,"seq":last}}));
    assert_eq!((j["recovered"].clone(), j["epoch"].clone()), (json!(true), json!(epoch)), "{j}");
    assert!(j["seq"].as_u64().unwrap() > target, "the room went on without the reader");
    let mut got = Vec::new();
    let until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < until {
        let v = reader.recv_op("msg");
        got.push(v["seq"].as_u64().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let published = publisher.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len() as u64, published, "every publish was acknowledged");
    while got.last().copied().unwrap_or(last) < published {
        got.push(reader.recv_op("msg")["seq"].as_u64().unwrap());
    }
    assert_eq!(got, (last + 1..=published).collect::<Vec<_>>(), "replay then live: no gap, no duplicate");
    assert_eq!(reader.sync().iter().filter(|m| matches!(m, Msg::Text(_))).count(), 0);
    drop((b, c));
}

#[test]
fn a_redis_restart_mid_stream_loses_nothing_accepted() {
    let mut redis = RedisServer::start(true);
    let prefix = unique_prefix();
    let a = node(&redis.url(), &prefix, &[]);
    let b = node(&redis.url(), &prefix, &[]);
    let mut member = RawWs::v1(b.addr, "?user=member");
    let epoch = join(&mut member, "steady")["epoch"].as_str().unwrap().to_string();
    let mut publisher = RawWs::v1(a.addr, "?user=pub");
    join(&mut publisher, "steady");
    let mut accepted = Vec::new();
    let mut refused = 0;
    for n in 0..50 {
        accepted.extend(publish(&mut publisher, n));
    }
    redis.kill();
    // While Redis is down: publishes are refused (never accepted and lost), /healthz says why,
    // connections stay open.
    let mut n = 50;
    wait_for("an unavailable answer", Duration::from_secs(10), || {
        n += 1;
        match publish(&mut publisher, n) {
            Some(seq) => accepted.push(seq),
            None => refused += 1,
        }
        refused > 0
    });
    wait_for("healthz 503", Duration::from_secs(10), || get(a.addr, "/healthz").0 == 503);
    // Joins cannot happen either: a v1 join is refused, a seed-mode handshake answered 503.
    let mut late = RawWs::v1(a.addr, "?user=late");
    let j = late.call(json!({"op":"join","id":"late","room":"elsewhere"}));
    assert_eq!(
        (j["op"].clone(), j["code"].clone(), j["room"].clone()),
        (json!("error"), json!("unavailable"), json!("elsewhere")),
        "{j}"
    );
    let (status, head) = upgrade_answer(a.addr, &upgrade_request(a.addr, "/ws?room=elsewhere").0);
    assert_eq!(status, 503, "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after"), "{head}");
    let (_, _, body) = get(a.addr, "/healthz");
    assert!(String::from_utf8_lossy(&body).contains("Redis"), "the reason is given");
    assert!(metric(a.addr, "c100k_redis_errors_total") > 0);
    assert_eq!(metric(a.addr, "c100k_redis_down"), 1);
    redis.restart();
    wait_for("publishing works again", Duration::from_secs(20), || {
        n += 1;
        match publish(&mut publisher, n) {
            Some(seq) => {
                accepted.push(seq);
                true
            }
            None => false,
        }
    });
    for _ in 0..50 {
        n += 1;
        accepted.extend(publish(&mut publisher, n));
    }
    wait_for("healthz 200", Duration::from_secs(10), || get(a.addr, "/healthz").0 == 200);
    assert_eq!(metric(a.addr, "c100k_redis_down"), 0);
    // The member got every accepted message, in order, once.
    let mut got = Vec::new();
    while got.len() < accepted.len() {
        let v = member.recv_op("msg");
        assert_eq!(v["epoch"], epoch, "the data survived the restart: same epoch");
        got.push(v["seq"].as_u64().unwrap());
    }
    assert_eq!(got, accepted, "every accepted message, in order, nothing else");
    assert_eq!(accepted, (1..=accepted.len() as u64).collect::<Vec<_>>(), "gap-free numbering");
    assert_eq!(member.sync().iter().filter(|m| matches!(m, Msg::Text(_))).count(), 0);
}

#[test]
fn lost_redis_data_makes_v1_members_join_again() {
    let redis = RedisServer::start(false);
    let prefix = unique_prefix();
    let a = node(&redis.url(), &prefix, &[]);
    let b = node(&redis.url(), &prefix, &[]);
    let mut member = RawWs::v1(a.addr, "?user=member");
    let old = join(&mut member, "fragile")["epoch"].as_str().unwrap().to_string();
    let mut seed = RawWs::connect(a.addr, "/ws?room=fragile&user=seed");
    let mut p = RawWs::v1(b.addr, "?user=pub");
    join(&mut p, "fragile");
    for k in 1..=5 {
        assert_eq!(p.call(json!({"op":"publish","id":k,"room":"fragile","data":k}))["seq"], k);
    }
    for k in 1..=5 {
        assert_eq!(member.recv_op("msg")["seq"], k);
        assert_eq!(seed.recv(), Some(Msg::Text(k.to_string())));
    }
    // The data is gone (a flush, or a failover to a replica that had not caught up).
    assert_eq!(redis.command(&["FLUSHALL"]).as_deref(), Some("+OK"));
    let v = p.call(json!({"op":"publish","id":6,"room":"fragile","data":6}));
    assert_eq!(v["seq"], 1, "a new numbering: {v}");
    // The v1 member is told, in the room's name, and is out of the room...
    let e = member.recv_json();
    assert_eq!(
        (e["op"].clone(), e["room"].clone(), e["code"].clone()),
        (json!("error"), json!("fragile"), json!("unavailable")),
        "{e}"
    );
    assert_eq!(member.call(json!({"op":"leave","id":"l","room":"fragile"}))["code"], "not_joined");
    // ...joins again from where it was, and learns that this cannot be recovered.
    let j = member.call(json!({"op":"join","id":"again","room":"fragile","since":{"epoch":old,"seq":5}}));
    assert_eq!(j["recovered"], false, "{j}");
    assert_ne!(j["epoch"], json!(old));
    assert_eq!(j["seq"], 1);
    // The seed-mode member goes on with the new numbering.
    assert_eq!(seed.recv(), Some(Msg::Text("6".into())));
    let mut p = RawWs::v1(b.addr, "?user=pub2");
    join(&mut p, "fragile");
    assert_eq!(p.call(json!({"op":"publish","id":7,"room":"fragile","data":7}))["seq"], 2);
    let m = member.recv_op("msg");
    assert_eq!((m["seq"].clone(), m["epoch"].clone()), (json!(2), j["epoch"].clone()));
    assert_eq!(seed.recv(), Some(Msg::Text("7".into())));
}

/// Publish `n`; the seq if accepted, `None` if refused as unavailable (anything else fails).
fn publish(p: &mut RawWs, n: u64) -> Option<u64> {
    let v = p.call(json!({"op":"publish","id":n,"room":"steady","data":n}));
    match v["op"].as_str() {
        Some("published") => Some(v["seq"].as_u64().unwrap()),
        Some("error") => {
            assert_eq!(v["code"], "unavailable", "{v}");
            None
        }
        _ => panic!("{v}"),
    }
}

#[test]
fn a_dead_nodes_users_leave_presence_after_the_grace_period() {
    let grace = Duration::from_millis(1500);
    let redis = RedisServer::start(false);
    let prefix = unique_prefix();
    let mut doomed = node(&redis.url(), &prefix, &["--presence-grace", "1.5"]);
    let survivor = node(&redis.url(), &prefix, &["--presence-grace", "1.5"]);
    let mut watcher = RawWs::v1(survivor.addr, "?user=watcher");
    assert_eq!(watcher.call(json!({"op":"join","id":1,"room":"p","presence":true}))["op"], "joined");
    let mut ghost = RawWs::v1(doomed.addr, "?user=ghost");
    join(&mut ghost, "p");
    assert_eq!(watcher.recv_op("presence_join")["user"], "ghost", "presence crosses nodes");
    let users = |w: &mut RawWs| w.call(json!({"op":"presence","id":"q","room":"p"}))["users"].clone();
    assert_eq!(users(&mut watcher), json!([{"user":"ghost","conns":1},{"user":"watcher","conns":1}]));
    doomed.signal(Signal::SIGKILL);
    doomed.wait_exit(Duration::from_secs(5));
    let killed = Instant::now();
    let leave = watcher.recv_op("presence_leave");
    assert_eq!(leave, json!({"op":"presence_leave","room":"p","user":"ghost"}));
    let after = killed.elapsed();
    assert!(after >= grace / 2, "not before the grace period: {after:?}");
    assert!(after < grace + Duration::from_secs(5), "no ghost beyond the grace period: {after:?}");
    assert_eq!(users(&mut watcher), json!([{"user":"watcher","conns":1}]));
}

#[test]
fn a_stalled_node_is_given_up_then_announces_its_members_again() {
    let redis = RedisServer::start(false);
    let prefix = unique_prefix();
    let stalled = node(&redis.url(), &prefix, &["--presence-grace", "0.6"]);
    let other = node(&redis.url(), &prefix, &["--presence-grace", "0.6"]);
    let mut watcher = RawWs::v1(other.addr, "?user=watcher");
    assert_eq!(watcher.call(json!({"op":"join","id":1,"room":"p","presence":true}))["op"], "joined");
    let mut sleeper = RawWs::v1(stalled.addr, "?user=sleeper");
    join(&mut sleeper, "p");
    assert_eq!(watcher.recv_op("presence_join")["user"], "sleeper");
    // Stopped past the grace period: to the others it is dead, and its users leave.
    stalled.signal(Signal::SIGSTOP);
    assert_eq!(watcher.recv_op("presence_leave")["user"], "sleeper");
    stalled.signal(Signal::SIGCONT);
    // Back: its next refresh finds it was given up, and it announces its members again.
    assert_eq!(watcher.recv_op("presence_join")["user"], "sleeper");
    let users = watcher.call(json!({"op":"presence","id":"q","room":"p"}))["users"].clone();
    assert_eq!(users, json!([{"user":"sleeper","conns":1},{"user":"watcher","conns":1}]));
    // And its member never noticed: still in the room.
    let mut p = RawWs::v1(other.addr, "?user=pub");
    join(&mut p, "p");
    p.call(json!({"op":"publish","id":1,"room":"p","data":"still here?"}));
    assert_eq!(sleeper.recv_op("msg")["data"], "still here?");
}

#[test]
fn a_redis_cluster_carries_rooms_on_sharded_pubsub() {
    let cluster = RedisCluster::start();
    let prefix = unique_prefix();
    let urls = cluster.urls();
    let n1 = node(&urls, &prefix, &[]);
    let n2 = node(&urls, &prefix, &[]);
    // Rooms whose slots are on different masters.
    let mut rooms: Vec<(String, u16)> = Vec::new();
    for i in 0.. {
        let room = format!("r{i}");
        let port = cluster.node_of(&format!("{prefix}:{{{room}}}:meta")).port;
        if !rooms.iter().any(|(_, p)| *p == port) {
            rooms.push((room, port));
        }
        if rooms.len() == 3 {
            break;
        }
    }
    for (room, port) in &rooms {
        let mut a = RawWs::v1(n1.addr, "?user=a");
        let mut b = RawWs::v1(n2.addr, "?user=b");
        join(&mut a, room);
        join(&mut b, room);
        for k in 1..=20 {
            assert_eq!(a.call(json!({"op":"publish","id":k,"room":room,"data":k}))["seq"], k);
        }
        for k in 1..=20 {
            let v = b.recv_op("msg");
            assert_eq!((v["seq"].clone(), v["data"].clone()), (json!(k), json!(k)), "room {room}");
        }
        // Its channel is a shard channel on the master that owns its slot, not a global one.
        let owner = cluster.nodes.iter().find(|n| n.port == *port).unwrap();
        let channel = format!("{prefix}:{{{room}}}");
        let shard = command_list(owner.addr(), &["PUBSUB", "SHARDCHANNELS", &channel]);
        assert_eq!(shard, vec![channel.clone()], "sharded pub/sub on the slot's master");
        assert!(command_list(owner.addr(), &["PUBSUB", "CHANNELS", &channel]).is_empty(), "not classic pub/sub");
        let h = b.call(json!({"op":"history","id":"h","room":room,"limit":5}));
        assert_eq!(h["messages"].as_array().unwrap().len(), 5);
    }
}

#[test]
fn sse_and_long_polls_move_between_nodes_without_sticky_sessions() {
    let redis = RedisServer::start(false);
    let prefix = unique_prefix();
    let (a, b) = (node(&redis.url(), &prefix, &[]), node(&redis.url(), &prefix, &[]));
    let post = |addr, n: u64| {
        let body = json!({ "data": { "n": n } }).to_string();
        let r = HttpConn::new(addr).request("POST", "/rooms/wire/messages?user=poster", "", body.as_bytes());
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        r.json()["seq"].as_u64().unwrap()
    };
    // A stream on node A sees what is posted to node B.
    let mut s = SseClient::open(a.addr, "/sse?room=wire", "");
    let epoch = s.expect("joined").json()["epoch"].as_str().unwrap().to_string();
    assert_eq!(post(b.addr, 1), 1);
    let ev = s.expect("msg");
    assert_eq!(ev.id.as_deref(), Some(format!("wire:{epoch}:1").as_str()));
    drop(s);
    post(a.addr, 2);
    post(b.addr, 3);
    // It reconnects to node B with its last id and gets exactly what it missed.
    let mut s = SseClient::open(b.addr, "/sse?room=wire", &format!("Last-Event-ID: {}\r\n", ev.id.unwrap()));
    assert_eq!(s.expect("joined").json()["recovered"], true);
    let seqs: Vec<u64> = (0..2).map(|_| s.expect("msg").json()["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [2, 3]);
    // Long polls alternate between the nodes, each from the last one's `next`.
    let mut next = format!("{epoch}:3");
    for (i, n) in [&a, &b, &a].into_iter().enumerate() {
        let seq = post(if i % 2 == 0 { b.addr } else { a.addr }, 4 + i as u64);
        let v = HttpConn::new(n.addr).request("GET", &format!("/poll?room=wire&since={next}"), "", b"").json();
        let got: Vec<u64> = v["messages"].as_array().unwrap().iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(got, [seq], "poll {i} on node {}", if i % 2 == 0 { "A" } else { "B" });
        next = v["next"].as_str().unwrap().to_string();
    }
    assert_eq!(next, format!("{epoch}:6"));
}

/// Calls of `cmd` Redis has served so far (its commandstats; scripts' inner calls included).
fn calls(redis: &RedisServer, cmd: &str) -> u64 {
    let stats = redis.command(&["INFO", "commandstats"]).expect("Redis reachable");
    let key = format!("cmdstat_{cmd}:calls=");
    stats.lines().find_map(|l| l.strip_prefix(&key)?.split(',').next()?.parse().ok()).unwrap_or(0)
}

#[test]
fn redis_upkeep_grows_with_rooms_and_nodes_not_their_product() {
    // 3 nodes with members in each of 40 rooms, grace 0.3 s: liveness every 100 ms, sweeps
    // every 75 ms. Each script has a command only it runs in the window: ZREMRANGEBYSCORE
    // (alive.lua, once per node), ZCARD (sweep.lua; join.lua too, but the joins are done
    // before), EXISTS (touch.lua, every third of the history TTL). Per-room liveness would be
    // 3 × 40 × 10 = 1,200 scripts/s; every node sweeping every room, 1,600.
    const ROOMS: usize = 40;
    let redis = RedisServer::start(false);
    let prefix = unique_prefix();
    let nodes: Vec<Binary> = (0..3).map(|_| node(&redis.url(), &prefix, &["--presence-grace", "0.3"])).collect();
    let mut members: Vec<RawWs> = nodes.iter().map(|n| RawWs::v1(n.addr, "")).collect();
    for m in &mut members {
        for r in 0..ROOMS {
            join(m, &format!("r{r}"));
        }
    }
    let count = || (calls(&redis, "zremrangebyscore"), calls(&redis, "zcard"), calls(&redis, "exists"));
    let (a0, s0, t0) = count();
    let start = Instant::now();
    // A measurement window (rates over 3 s), not a wait for something to happen.
    std::thread::sleep(Duration::from_secs(3));
    let (a1, s1, t1) = count();
    let secs = start.elapsed().as_secs_f64();
    let per_s = |a: u64, b: u64| (b - a) as f64 / secs;
    let (alive, sweeps, touches) = (per_s(a0, a1), per_s(s0, s1), per_s(t0, t1));
    assert!(alive > 0.0 && alive <= 3.0 * 10.0 * 1.5, "liveness once per node a period: {alive:.0}/s");
    let sweep_rate = ROOMS as f64 / 0.075;
    assert!(sweeps > 0.0 && sweeps <= sweep_rate * 1.5, "each room swept about once a period in all: {sweeps:.0}/s");
    assert!(touches <= ROOMS as f64 * 3.0 / secs, "rooms touched every third of the history TTL: {touches:.0}/s");
}

/// A process that comes up in a busy deployment (restarted in a reconnect storm) sweeps its new
/// rooms as one of the deployment's live nodes, not as their only node, while the answers that
/// would tell it are slow: with 20 other nodes alive and Redis paused 1.5 s, 40 new rooms get a
/// few sweeps each, not one every 75 ms (20 each: 53 processes × 1,000 rooms swept every
/// second was most of a storm's Redis work).
#[test]
fn a_new_nodes_rooms_are_swept_as_shared_while_redis_is_slow() {
    const ROOMS: u64 = 40;
    let redis = RedisServer::start(false);
    let prefix = unique_prefix();
    let far = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 3_600_000)
        .to_string();
    for i in 0..20 {
        redis.command(&["ZADD", &format!("{prefix}:nodes"), &far, &format!("other{i}")]);
    }
    let a = node(&redis.url(), &prefix, &["--presence-grace", "0.3"]);
    // Two liveness calls have run: the first one's answer (21 alive) is in.
    let alive0 = calls(&redis, "zremrangebyscore");
    wait_for("the node's liveness answered", Duration::from_secs(5), || {
        calls(&redis, "zremrangebyscore") >= alive0 + 2
    });
    let mut m = RawWs::v1(a.addr, "");
    let z0 = calls(&redis, "zcard");
    assert_eq!(redis.command(&["CLIENT", "PAUSE", "1500", "WRITE"]).as_deref(), Some("+OK"));
    for r in 0..ROOMS {
        m.send_json(&json!({"op":"join","id":"j","room":format!("r{r}")}));
    }
    for _ in 0..ROOMS {
        m.recv_op("joined");
    }
    let sweeps = calls(&redis, "zcard") - z0 - ROOMS; // each join.lua has one ZCARD too
    assert!(sweeps <= ROOMS * 4, "{sweeps} sweeps of {ROOMS} new rooms during a 1.5 s pause");
}

/// `rooms` members joined one to a room (`r0`, `r1`, …), and as many connections not joined
/// yet, on `addr`.
fn members_and_joiners(addr: std::net::SocketAddr, rooms: usize) -> (Vec<RawWs>, Vec<RawWs>) {
    let members = (0..rooms)
        .map(|i| {
            let mut w = RawWs::v1(addr, &format!("?user=a{i}"));
            join(&mut w, &format!("r{i}"));
            w
        })
        .collect();
    let joiners = (0..rooms).map(|i| RawWs::v1(addr, &format!("?user=b{i}"))).collect();
    (members, joiners)
}

/// Redis runs calls one at a time, so work a process sends at once is how long its last call
/// waits. Past `--redis-in-flight` the rest waits its turn in the server: under a write pause
/// (scripts wait, subscriptions do not), 200 joins in 200 rooms put 50 calls on Redis and keep
/// 150 in the server, and all join once Redis answers, with no error.
#[test]
fn redis_work_in_flight_is_bounded_and_the_rest_waits_its_turn() {
    const ROOMS: usize = 200;
    const MOST: u64 = 50;
    let redis = RedisServer::start(false);
    let a = node(&redis.url(), &unique_prefix(), &["--redis-in-flight", "50"]);
    let (_members, mut joiners) = members_and_joiners(a.addr, ROOMS);
    assert_eq!(redis.command(&["CLIENT", "PAUSE", "1500", "WRITE"]).as_deref(), Some("+OK"));
    for (i, w) in joiners.iter_mut().enumerate() {
        w.send_json(&json!({"op":"join","id":"j","room":format!("r{i}")}));
    }
    let mut most = 0;
    // Sweeps in flight weigh nothing and may hold a room's join behind them: every join is
    // either in flight or waiting, and at least ROOMS - MOST wait.
    wait_for("joins past --redis-in-flight waiting in the server", Duration::from_millis(1200), || {
        let (f, w) = (metric(a.addr, "c100k_redis_in_flight"), metric(a.addr, "c100k_redis_waiting"));
        most = most.max(f);
        f + w == ROOMS as u64 && w >= ROOMS as u64 - MOST
    });
    redis.command(&["CLIENT", "UNPAUSE"]);
    for w in &mut joiners {
        w.recv_op("joined");
    }
    assert!(most <= MOST, "{most} calls in flight, past --redis-in-flight {MOST}");
    wait_for("nothing in flight or waiting", Duration::from_secs(5), || {
        metric(a.addr, "c100k_redis_in_flight") == 0 && metric(a.addr, "c100k_redis_waiting") == 0
    });
    assert_eq!(metric(a.addr, "c100k_redis_errors_total"), 0);
    assert_eq!(metric(a.addr, "c100k_redis_shed_total"), 0);
}

/// A join that waited `--redis-join-wait` for its turn is answered `unavailable` and never
/// reaches Redis (no presence entry is left behind); joining again later works.
#[test]
fn a_join_that_waits_past_redis_join_wait_is_shed_before_touching_redis() {
    const ROOMS: usize = 20;
    let redis = RedisServer::start(false);
    let a = node(&redis.url(), &unique_prefix(), &["--redis-in-flight", "4", "--redis-join-wait", "0.3"]);
    let (mut members, mut joiners) = members_and_joiners(a.addr, ROOMS);
    // Shorter than the 2 s response timeout: the 4 calls in flight wait, they do not fail.
    assert_eq!(redis.command(&["CLIENT", "PAUSE", "1200", "WRITE"]).as_deref(), Some("+OK"));
    for (i, w) in joiners.iter_mut().enumerate() {
        w.send_json(&json!({"op":"join","id":"j","room":format!("r{i}")}));
    }
    let mut shed = Vec::new();
    for (i, w) in joiners.iter_mut().enumerate() {
        let r = loop {
            let v = w.recv_json();
            if v["id"] == "j" {
                break v;
            }
        };
        match r["op"].as_str() {
            Some("joined") => {}
            Some("error") => {
                assert_eq!(r["code"], "unavailable", "{r}");
                assert!(r["message"].as_str().unwrap().contains("Redis busy"), "{r}");
                shed.push(i);
            }
            _ => panic!("{r}"),
        }
    }
    assert!(shed.len() >= ROOMS - 4, "only {} of {ROOMS} joins shed with 4 in flight", shed.len());
    assert_eq!(metric(a.addr, "c100k_redis_shed_total"), shed.len() as u64);
    assert_eq!(metric(a.addr, "c100k_redis_errors_total"), 0, "shedding is not a Redis failure");
    for &i in &shed {
        let room = format!("r{i}");
        let users = members[i].call(json!({"op":"presence","id":"q","room":room}))["users"].clone();
        assert_eq!(users, json!([{"user":format!("a{i}"),"conns":1}]), "a shed join left nothing in Redis");
        assert_eq!(joiners[i].call(json!({"op":"join","id":"again","room":room}))["op"], "joined");
    }
}
