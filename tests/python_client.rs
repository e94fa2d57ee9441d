//! Interop with an independent client stack: a room member written with Python's `websockets`
//! (scripts/setup-python.sh installs it) joins, receives, publishes and resumes with `since`
//! alongside our own client.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

/// The interpreter with `websockets` installed (scripts/test.sh sets C100K_PYTHON).
fn python() -> String {
    let py = std::env::var("C100K_PYTHON")
        .unwrap_or_else(|_| format!("{}/target/py-venv/bin/python", env!("CARGO_MANIFEST_DIR")));
    let ok = Command::new(&py).args(["-c", "import websockets"]).status().is_ok_and(|s| s.success());
    assert!(ok, "{py} cannot import websockets: run scripts/setup-python.sh (scripts/test.sh does)");
    py
}

#[test]
fn a_python_websockets_member_chats_and_resumes() {
    let srv = server(|_| {});
    let script = format!("{}/tests/clients/v1_member.py", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(python())
        .args([&script, &format!("ws://{}", srv.local_addr()), "interop"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = || -> Value { serde_json::from_str(&lines.next().expect("a line from python").unwrap()).unwrap() };

    let ready = next();
    assert_eq!(ready["ready"]["op"], "joined");
    let mut rust = RawWs::v1(srv.local_addr(), "?user=rust");
    rust.call(json!({"op":"join","id":1,"room":"interop"}));
    rust.call(json!({"op":"publish","id":2,"room":"interop","data":{"hello":"from rust"}}));
    let echoed = rust.recv_op("msg");
    assert_eq!(echoed["from"], "py");
    assert_eq!(echoed["data"], json!({"echo":{"hello":"from rust"},"seq":1}));
    let out = next();
    assert_eq!(out["got"]["from"], "rust");
    assert_eq!(out["published"]["seq"], 2);

    // Python is away (it closed with 1000); three messages go by; it comes back with since.
    for i in 0..3 {
        rust.call(json!({"op":"publish","id":10 + i,"room":"interop","data":i}));
    }
    child.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    let back = next();
    assert_eq!(back["resumed"]["recovered"], true);
    let replay: Vec<Value> = back["replay"].as_array().unwrap().iter().map(|m| m["data"].clone()).collect();
    assert_eq!(replay, vec![json!(0), json!(1), json!(2)]);
    assert!(child.wait().unwrap().success());
}

#[test]
fn python_websockets_speaks_permessage_deflate_with_us() {
    let srv = server(|c| c.deflate_min_size = 256);
    let script = format!("{}/tests/clients/deflate_echo.py", env!("CARGO_MANIFEST_DIR"));
    let out =
        Command::new(python()).args([&script, &format!("ws://{}", srv.local_addr())]).output().expect("python runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true, "every echo matched: {v}");
    let ext = v["extensions"].as_str().unwrap_or_default();
    assert!(ext.starts_with("permessage-deflate") && ext.contains("client_no_context_takeover"), "{v}");
}
