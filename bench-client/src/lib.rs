//! What bench-client exposes beyond its binary: the sans-IO parsers of server answers, for the
//! fuzz targets (`fuzz/`) and their corpus replay tests.
#![forbid(unsafe_code)]

pub mod http_member;

/// The fuzz target's body: everything bench-client parses from a server that is not a
/// WebSocket frame (upgrade answers, event-stream blocks, long-poll answers).
#[doc(hidden)]
pub fn fuzz_response(data: &[u8]) {
    c100k::fuzzing::client_response(data);
    if let Some(end) = http_member::find(data, b"\r\n\r\n") {
        let _ = http_member::head_of(&data[..end]);
    }
    for block in data.split(|&b| b == 0xff) {
        let _ = http_member::sse_block(block);
    }
    if let Some(a) = http_member::poll_answer(data) {
        let _ = (a.position(), a.messages.len());
    }
}
