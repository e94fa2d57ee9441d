//! permessage-deflate (RFC 7692), the c100k way: always without context takeover in both
//! directions, so no zlib state lives in a connection. Each event loop thread has one
//! compressor and one decompressor (thread-locals; flate2 on zlib-rs), reset for every message; an idle deflate
//! connection costs what any connection costs, and a room message is compressed once for all of
//! its deflate members.
//!
//! Negotiation accepts the first `permessage-deflate` offer whose parameters it can honour:
//! `server_no_context_takeover` and `client_no_context_takeover` (answered in any case),
//! `client_max_window_bits` (any value: our inflater takes every window size), and
//! `server_max_window_bits` only at 15 (the one window our compressor uses; an offer asking for
//! a smaller one is declined, and the next offer, or none, is taken).

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension as this server answers it.
pub const RESPONSE: &str = "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The tail every message's deflate stream ends with (a sync flush), removed on the wire.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether some offer in these `Sec-WebSocket-Extensions` values can be accepted.
pub fn accepts<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> bool {
    values.into_iter().any(|v| {
        let Ok(text) = std::str::from_utf8(v) else { return false };
        text.split(',').any(|offer| acceptable(offer.trim()))
    })
}

fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if parts.next() != Some("permessage-deflate") {
        return false;
    }
    let mut seen: Vec<&str> = Vec::new();
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        if seen.contains(&name) {
            return false; // a parameter given twice: the offer is invalid (§7.1)
        }
        seen.push(name);
        let bits_ok = |v: &str| v.len() <= 2 && v.parse::<u8>().is_ok_and(|b| (8..=15).contains(&b));
        match (name, value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => {}
            ("client_max_window_bits", None) => {}
            ("client_max_window_bits", Some(v)) if bits_ok(v) => {}
            ("server_max_window_bits", Some(v)) if bits_ok(v) => {
                if v != "15" {
                    return false; // we would have to compress with a smaller window
                }
            }
            _ => return false,
        }
    }
    true
}

/// Why a compressed message could not be inflated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InflateError {
    /// Larger than the limit once inflated (close 1009).
    TooBig,
    /// Not a valid deflate stream (close 1007).
    Invalid,
}

thread_local! {
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::fast(), false));
    static DECOMPRESSOR: RefCell<Decompress> = RefCell::new(Decompress::new(false));
}

/// Compress one message's payload (this thread's compressor, reset first); the result has the
/// sync-flush tail removed, ready to be a frame's payload with RSV1 set.
pub fn compress(data: &[u8]) -> Vec<u8> {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        c.reset();
        let mut out = Vec::with_capacity(data.len() / 2 + 64);
        let mut input = data;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before_in = c.total_in();
            // Sync flush: the stream ends on a byte boundary with an empty stored block (the tail).
            let _ = c.compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(c.total_in() - before_in) as usize..];
            if input.is_empty() && out.ends_with(&TAIL) && out.len() < out.capacity() {
                break;
            }
        }
        out.truncate(out.len() - TAIL.len());
        if out.is_empty() {
            out.push(0x00); // an empty message compresses to one empty stored-block start (RFC 7692 §7.2.3.6)
        }
        out
    })
}

/// Inflate one message (this thread's decompressor, reset first) to at most `max` bytes. Output
/// grows as it is produced, so a small bomb never gets a large allocation before the limit.
pub fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, InflateError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut out = Vec::with_capacity((data.len() * 2 + 64).min(max + 1));
        for chunk in [data, &TAIL[..]] {
            let mut input = chunk;
            loop {
                if out.len() == out.capacity() {
                    if out.len() > max {
                        return Err(InflateError::TooBig);
                    }
                    let more = out.capacity().max(1024).min(max + 1 - out.len());
                    out.reserve_exact(more.max(1));
                }
                let before_in = d.total_in();
                let before_out = out.len();
                let st = d.decompress_vec(input, &mut out, FlushDecompress::Sync).map_err(|_| InflateError::Invalid)?;
                input = &input[(d.total_in() - before_in) as usize..];
                if out.len() > max {
                    return Err(InflateError::TooBig);
                }
                let progress = out.len() > before_out || d.total_in() > before_in;
                match st {
                    // A final block: the message is complete (the tail is not needed).
                    Status::StreamEnd => return Ok(out),
                    _ if input.is_empty() && out.len() < out.capacity() => break,
                    _ if !progress && out.len() < out.capacity() => return Err(InflateError::Invalid),
                    _ => {}
                }
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_are_accepted_when_we_can_honour_them() {
        let ok = |s: &str| accepts([s.as_bytes()]);
        assert!(ok("permessage-deflate"));
        assert!(ok("permessage-deflate; client_max_window_bits"), "what browsers offer");
        assert!(ok("permessage-deflate; server_no_context_takeover; client_no_context_takeover"));
        assert!(ok("permessage-deflate; server_max_window_bits=15; client_max_window_bits=9"));
        assert!(ok("permessage-deflate; server_max_window_bits=10, permessage-deflate"), "the second offer");
        assert!(!ok("permessage-deflate; server_max_window_bits=10"), "a smaller window than ours");
        assert!(!ok("permessage-deflate; server_max_window_bits"), "needs a value");
        assert!(!ok("permessage-deflate; server_max_window_bits=16"));
        assert!(!ok("permessage-deflate; client_no_context_takeover; client_no_context_takeover"));
        assert!(!ok("permessage-deflate; frobnicate"));
        assert!(!ok("x-webkit-deflate-frame"));
        assert!(!accepts(std::iter::empty()));
    }

    #[test]
    fn messages_round_trip_and_bombs_stop_at_the_limit() {
        for msg in [&b""[..], b"a", b"{\"op\":\"msg\",\"data\":\"hello hello hello hello\"}", &[7u8; 100_000][..]] {
            let z = compress(msg);
            assert!(!z.ends_with(&TAIL));
            assert_eq!(inflate(&z, 1 << 20).unwrap(), msg);
        }
        // The RFC's own example: "Hello" compressed without context takeover.
        assert_eq!(inflate(&[0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00], 100).unwrap(), b"Hello");
        let bomb = compress(&vec![0u8; 10 << 20]);
        assert!(bomb.len() < (10 << 20) / 100, "{}", bomb.len());
        assert_eq!(inflate(&bomb, 1 << 20), Err(InflateError::TooBig));
        assert_eq!(inflate(&[0xff, 0xff, 0xff], 1 << 20), Err(InflateError::Invalid));
        // Each message starts from a fresh state (no context takeover).
        let a = compress(b"repeat repeat repeat");
        assert_eq!(compress(b"repeat repeat repeat"), a);
    }
}
