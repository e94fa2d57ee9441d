//! The shipped HAProxy configuration (deploy/haproxy/haproxy.cfg), run as is by Debian's
//! haproxy in front of three c100k nodes on one Redis: a user lands on the same node every
//! time (by `?user=` or by the `c100k_session` cookie), rooms work through it, and stopping a
//! node moves only that node's users.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::redis::{free_port, RedisServer};
use common::*;
use nix::sys::signal::Signal;
use serde_json::json;

struct Haproxy {
    child: Child,
    addr: SocketAddr,
}

impl Haproxy {
    fn start(nodes: &[SocketAddr]) -> Haproxy {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/haproxy/haproxy.cfg");
        let mut cmd = Command::new("haproxy");
        cmd.args(["-db", "-f", cfg])
            .env("C100K_LB_BIND", addr.to_string())
            .env("C100K_CHECK_INTER", "200ms")
            // This host's open-file limit is 20,000.
            .env("C100K_LB_MAXCONN", "4000")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for (i, n) in nodes.iter().enumerate() {
            cmd.env(format!("C100K_NODE{}", i + 1), n.to_string());
        }
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("haproxy is installed (apt-get install haproxy, as .ci/run does)");
        let h = Haproxy { child, addr };
        wait_for("haproxy listening with every node up", Duration::from_secs(15), || {
            (0..12).all(|i| landed_on(h.addr, &format!("?user=probe{i}"), None).is_some())
        });
        h
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Open a WebSocket through HAProxy; the node that answered the 101 (HAProxy's header), or
/// `None` when it did not upgrade.
fn landed_on(lb: SocketAddr, query: &str, cookie: Option<&str>) -> Option<String> {
    let (ws, node) = open(lb, query, cookie)?;
    drop(ws);
    Some(node)
}

fn open(lb: SocketAddr, query: &str, cookie: Option<&str>) -> Option<(TcpStream, String)> {
    let mut s = TcpStream::connect(lb).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // A seed-mode member of room "stick" (the 101 comes once it is in the room).
    let sep = if query.is_empty() { "?" } else { "&" };
    let (req, _) = upgrade_request(lb, &format!("/ws{query}{sep}room=stick"));
    let mut req = String::from_utf8(req).unwrap();
    if let Some(c) = cookie {
        req = req.replacen("\r\n", &format!("\r\nCookie: c100k_session={c}\r\n"), 1);
    }
    s.write_all(req.as_bytes()).ok()?;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    if !head.starts_with("HTTP/1.1 101") {
        return None;
    }
    let node =
        head.lines().find_map(|l| l.strip_prefix("x-c100k-node: ").or_else(|| l.strip_prefix("X-C100K-Node: ")))?;
    Some((s, node.trim().to_string()))
}

#[test]
fn users_stick_to_their_node_and_a_stopped_node_moves_only_its_own() {
    let redis = RedisServer::start(false);
    let prefix = unique_prefix();
    let mut nodes: Vec<Binary> = (0..3)
        .map(|_| Binary::start(&["--threads", "1", "--redis", &redis.url(), "--redis-prefix", &prefix]))
        .collect();
    let lb = Haproxy::start(&nodes.iter().map(|n| n.addr).collect::<Vec<_>>());

    // The same user lands on the same node, again and again.
    let users: Vec<String> = (0..30).map(|i| format!("user{i}")).collect();
    let mut home = HashMap::new();
    for u in &users {
        let first = landed_on(lb.addr, &format!("?user={u}"), None).unwrap();
        for _ in 0..3 {
            assert_eq!(landed_on(lb.addr, &format!("?user={u}"), None).unwrap(), first, "{u} moved");
        }
        home.insert(u.clone(), first);
    }
    let used: std::collections::BTreeSet<&String> = home.values().collect();
    assert_eq!(used.len(), 3, "30 users spread over all 3 nodes: {home:?}");
    // The cookie works the same way.
    let by_cookie = landed_on(lb.addr, "", Some("sess-42")).unwrap();
    for _ in 0..3 {
        assert_eq!(landed_on(lb.addr, "", Some("sess-42")).unwrap(), by_cookie);
    }

    // Rooms work through the proxy, across the nodes users landed on.
    let mut a = RawWs::over(TcpStream::connect(lb.addr).unwrap(), lb.addr, "/ws?room=lobby&user=user0");
    let mut b = RawWs::over(TcpStream::connect(lb.addr).unwrap(), lb.addr, "/ws?room=lobby&user=user1");
    assert_eq!(a.sync(), vec![]);
    b.text("{\"via\":\"haproxy\"}");
    assert_eq!(a.recv(), Some(Msg::Text("{\"via\":\"haproxy\"}".into())));

    // Stop the node of user0: only its users move; everyone else keeps their node.
    let victim = home["user0"].clone();
    let idx: usize = victim.trim_start_matches("node").parse::<usize>().unwrap() - 1;
    nodes[idx].signal(Signal::SIGTERM);
    nodes[idx].wait_exit(Duration::from_secs(15));
    wait_for("haproxy saw the node go", Duration::from_secs(10), || {
        landed_on(lb.addr, "?user=user0", None).is_some_and(|n| n != victim)
    });
    for u in &users {
        let now = landed_on(lb.addr, &format!("?user={u}"), None).unwrap();
        if home[u] == victim {
            assert_ne!(now, victim, "{u} moved off the stopped node");
        } else {
            assert_eq!(now, home[u], "{u} was not on the stopped node and kept its node");
        }
    }
    let mut v = RawWs::v1(lb.addr, "?user=user0");
    let j = v.call(json!({"op":"join","id":1,"room":"lobby"}));
    assert_eq!(j["op"], "joined", "the moved user is served by another node: {j}");
}
