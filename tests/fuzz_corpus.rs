//! Every committed fuzz corpus (fuzz/corpus/<target>/, seeds, inputs the fuzzer kept, and the
//! crashes it found, as `regression-*`) replayed through the targets' bodies in
//! `c100k::fuzzing`: the normal code paths, under `cargo test`, without cargo-fuzz.

use std::path::Path;

fn replay(target: &str, body: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| body(&data));
        assert!(r.is_ok(), "{target}: {} panics", path.display());
        n += 1;
    }
    assert!(n >= 5, "{target}: a corpus of {n} inputs is too small to mean anything");
}

#[test]
fn http_request_corpus() {
    replay("http_request", c100k::fuzzing::http_request);
}

#[test]
fn ws_session_corpus() {
    replay("ws_session", c100k::fuzzing::ws_session);
}

#[test]
fn v1_command_corpus() {
    replay("v1_command", c100k::fuzzing::v1_command);
}

#[test]
fn deflate_corpus() {
    replay("deflate", c100k::fuzzing::deflate);
}

#[test]
fn sse_position_corpus() {
    replay("sse_position", c100k::fuzzing::sse_position);
}

#[test]
fn tls_server_corpus() {
    replay("tls_server", c100k::fuzzing::tls_server);
}

#[test]
fn tls_records_corpus() {
    replay("tls_records", c100k::fuzzing::tls_records);
}
