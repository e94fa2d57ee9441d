//! The opening handshake (RFC 6455 §4), sans-IO: validate an upgrade request parsed by
//! [`crate::proto::http`], write the 101, and the client side (request, response check) for
//! bench-client and the tests.
//!
//! The accept key comes from tungstenite's `derive_accept_key`.

use crate::proto::http::{trim, Request, MAX_HEADERS};
pub use tungstenite::handshake::derive_accept_key;

/// Why an upgrade request is refused, mapped to its HTTP answer (RFC 6455 §4.2.1, §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeError {
    /// Not a WebSocket upgrade at all (a plain GET): 426 Upgrade Required.
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13: 426 with `Sec-WebSocket-Version: 13`.
    BadVersion,
    /// Missing or malformed `Sec-WebSocket-Key`, missing Host, a body, or HTTP/1.0: 400.
    BadRequest(&'static str),
    /// Not GET: 405 with `Allow: GET`.
    BadMethod,
}

/// Check a request as a WebSocket upgrade; on success return the `Sec-WebSocket-Accept` value.
pub fn check_upgrade(req: &Request<'_>) -> Result<String, UpgradeError> {
    if req.method != "GET" {
        return Err(UpgradeError::BadMethod);
    }
    if !req.upgrade_websocket {
        return Err(UpgradeError::NotUpgrade);
    }
    if !req.connection_upgrade {
        return Err(UpgradeError::BadRequest("Connection header must include 'Upgrade'"));
    }
    if req.minor_version < 1 {
        return Err(UpgradeError::BadRequest("WebSocket needs HTTP/1.1"));
    }
    if req.host.is_none() {
        return Err(UpgradeError::BadRequest("missing Host header"));
    }
    if req.has_body_headers {
        // A body would be read as WebSocket frames (RFC 6455 §4.1: the handshake is a GET).
        return Err(UpgradeError::BadRequest("an upgrade request has no body (Content-Length/Transfer-Encoding)"));
    }
    if req.ws_version != Some(b"13") {
        return Err(UpgradeError::BadVersion);
    }
    match req.ws_key {
        Some(key) if is_valid_key(key) => Ok(derive_accept_key(key)),
        Some(_) => Err(UpgradeError::BadRequest("Sec-WebSocket-Key must be 16 bytes in base64")),
        None => Err(UpgradeError::BadRequest("missing Sec-WebSocket-Key")),
    }
}

/// A `Sec-WebSocket-Key` is 16 random bytes in base64: 22 base64 characters and `==`, the last
/// character canonical (its 4 padding bits zero, RFC 4648 §3.5).
pub fn is_valid_key(key: &[u8]) -> bool {
    let index = |c: u8| crate::proto::base64::ALPHABET.iter().position(|&b| b == c);
    key.len() == 24
        && key[22..] == *b"=="
        && key[..22].iter().all(|&c| index(c).is_some())
        && index(key[21]).is_some_and(|i| i & 0x0f == 0)
}

/// Append the 101 response that completes the handshake, naming the chosen subprotocol if any.
pub fn write_switching_protocols(out: &mut Vec<u8>, accept: &str, protocol: Option<&str>) {
    write_switching_protocols_with(out, accept, protocol, None);
}

/// The same, answering an extension too (`Sec-WebSocket-Extensions`, e.g. permessage-deflate).
pub fn write_switching_protocols_with(
    out: &mut Vec<u8>,
    accept: &str,
    protocol: Option<&str>,
    extension: Option<&str>,
) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    if let Some(p) = protocol {
        out.extend_from_slice(b"\r\nSec-WebSocket-Protocol: ");
        out.extend_from_slice(p.as_bytes());
    }
    if let Some(e) = extension {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(e.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
}

// ---- client side (bench-client and tests) ----

/// Encode 16 key bytes as a `Sec-WebSocket-Key` (standard base64, padded).
pub fn encode_key(raw: [u8; 16]) -> String {
    crate::proto::base64::encode(&raw)
}

/// Append a client upgrade request for `path_and_query` on `host`, offering `protocol` if given.
pub fn write_client_request(out: &mut Vec<u8>, host: &str, path_and_query: &str, key: &str, protocol: Option<&str>) {
    use std::io::Write;
    let _ = write!(
        out,
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        let _ = write!(out, "Sec-WebSocket-Protocol: {p}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedResponse {
    Partial,
    /// `len` bytes of head; `accept_ok` says whether `Sec-WebSocket-Accept` matched the key;
    /// `protocol` is the `Sec-WebSocket-Protocol` the server chose, if any; `deflate`: it
    /// answered permessage-deflate.
    Complete {
        status: u16,
        accept_ok: bool,
        protocol: Option<String>,
        len: usize,
        deflate: bool,
    },
    Malformed,
}

/// Parse a server's response to an upgrade request sent with `key`.
pub fn parse_response(buf: &[u8], key: &str) -> ParsedResponse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(buf) {
        Ok(httparse::Status::Partial) => ParsedResponse::Partial,
        Ok(httparse::Status::Complete(len)) => {
            let expected = derive_accept_key(key.as_bytes());
            let header =
                |name: &str| r.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| trim(h.value));
            let accept_ok = header("sec-websocket-accept") == Some(expected.as_bytes());
            let protocol = header("sec-websocket-protocol").map(|v| String::from_utf8_lossy(v).into_owned());
            let deflate = header("sec-websocket-extensions").is_some_and(|v| v.starts_with(b"permessage-deflate"));
            ParsedResponse::Complete { status: r.code.unwrap_or(0), accept_ok, protocol, len, deflate }
        }
        Err(_) => ParsedResponse::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::http::{parse, Limits, Parsed};

    const GOOD: &[u8] = b"GET /echo?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse(buf, Limits { max_head: 16 * 1024, max_body: 0 }) {
            Parsed::Complete { req, len, .. } => (req, len),
            other => panic!("{other:?}"),
        }
    }

    fn with(replace: &str, by: &str) -> String {
        String::from_utf8_lossy(GOOD).replace(replace, by)
    }

    #[test]
    fn parses_and_accepts_the_rfc_example() {
        let (req, len) = complete(GOOD);
        assert_eq!(len, GOOD.len());
        assert_eq!((req.method, req.path, req.query), ("GET", "/echo", Some("x=1")));
        // RFC 6455 §1.3's worked example.
        assert_eq!(check_upgrade(&req).unwrap(), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn rejections() {
        let plain = b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(check_upgrade(&complete(plain).0), Err(UpgradeError::NotUpgrade));
        let check = |s: String| check_upgrade(&complete(s.as_bytes()).0);
        assert_eq!(check(with("Version: 13", "Version: 8")), Err(UpgradeError::BadVersion));
        assert_eq!(check(with("GET", "PUT")), Err(UpgradeError::BadMethod));
        assert!(matches!(check(with("dGhlIHNhbXBsZSBub25jZQ==", "short")), Err(UpgradeError::BadRequest(_))));
        let nokey = with("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        assert!(matches!(check(nokey), Err(UpgradeError::BadRequest(_))));
        assert!(matches!(check(with("HTTP/1.1", "HTTP/1.0")), Err(UpgradeError::BadRequest(_))));
        assert!(matches!(check(with("Host: a\r\n", "")), Err(UpgradeError::BadRequest(_))));
        let body = with("Version: 13\r\n", "Version: 13\r\nContent-Length: 0\r\n");
        assert!(matches!(check(body), Err(UpgradeError::BadRequest(_))));
    }

    #[test]
    fn keys_must_be_canonical_base64_of_16_bytes() {
        assert!(is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        // 'R' carries non-zero padding bits: decodes to the same bytes but is not canonical.
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25jZQ="));
        assert!(!is_valid_key(b"dGhlIHNhbXBsZSBub25j*Q=="));
        for raw in [[0u8; 16], [255; 16], *b"0123456789abcdef"] {
            assert!(is_valid_key(encode_key(raw).as_bytes()));
        }
    }

    #[test]
    fn key_encoding_and_client_roundtrip() {
        assert_eq!(encode_key(*b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
        let key = encode_key([7; 16]);
        assert!(is_valid_key(key.as_bytes()));
        let mut req = Vec::new();
        write_client_request(&mut req, "127.0.0.1:1", "/ws?room=a", &key, Some("c100k.v1"));
        let (parsed, _) = complete(&req);
        assert!(parsed.offers_protocol("c100k.v1"));
        let accept = check_upgrade(&parsed).unwrap();
        let mut resp = Vec::new();
        write_switching_protocols(&mut resp, &accept, Some("c100k.v1"));
        assert_eq!(
            parse_response(&resp, &key),
            ParsedResponse::Complete {
                status: 101,
                accept_ok: true,
                protocol: Some("c100k.v1".into()),
                len: resp.len(),
                deflate: false
            }
        );
        assert!(matches!(
            parse_response(&resp, &encode_key([8; 16])),
            ParsedResponse::Complete { accept_ok: false, .. }
        ));
    }
}
