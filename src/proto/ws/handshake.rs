//! The opening handshake (RFC 6455 §4), sans-IO: parse an HTTP/1.1 request or response from a
//! byte buffer with `httparse`, validate the upgrade, and write responses into a caller's buffer.
//!
//! Parsing borrows from the caller's buffer and allocates nothing; the accept key comes from
//! tungstenite's `derive_accept_key`.

pub use tungstenite::handshake::derive_accept_key;

/// Most headers we look at in one request or response; more is answered with 431.
const MAX_HEADERS: usize = 64;

/// A request head, borrowed from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'b> {
    pub method: &'b str,
    pub path: &'b str,
    pub query: Option<&'b str>,
    /// HTTP/1.x minor version.
    pub minor_version: u8,
    pub has_host: bool,
    /// `Upgrade` lists the `websocket` token.
    pub upgrade_websocket: bool,
    /// `Connection` lists the `upgrade` token.
    pub connection_upgrade: bool,
    pub ws_version: Option<&'b [u8]>,
    pub ws_key: Option<&'b [u8]>,
}

/// Result of feeding a request buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum ParsedRequest<'b> {
    /// Need more bytes (the buffer is still below the size limit).
    Partial,
    /// A complete head of `len` bytes; anything after it belongs to the next protocol.
    Complete { req: Request<'b>, len: usize },
    /// Not HTTP we can serve: answer 400.
    Malformed,
    /// Head (or header count) over the limit: answer 431.
    TooLarge,
}

/// Parse a request head from `buf`, which must not exceed `max_head` bytes before completion.
pub fn parse_request(buf: &[u8], max_head: usize) -> ParsedRequest<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let window = &buf[..buf.len().min(max_head)];
    match r.parse(window) {
        Ok(httparse::Status::Partial) => {
            if buf.len() >= max_head {
                ParsedRequest::TooLarge
            } else {
                ParsedRequest::Partial
            }
        }
        Ok(httparse::Status::Complete(len)) => {
            let target = r.path.unwrap_or("/");
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target, None),
            };
            let mut req = Request {
                method: r.method.unwrap_or(""),
                path,
                query,
                minor_version: r.version.unwrap_or(0),
                has_host: false,
                upgrade_websocket: false,
                connection_upgrade: false,
                ws_version: None,
                ws_key: None,
            };
            for h in r.headers.iter() {
                let name = h.name;
                if name.eq_ignore_ascii_case("host") {
                    req.has_host = true;
                } else if name.eq_ignore_ascii_case("upgrade") {
                    req.upgrade_websocket |= has_token(h.value, b"websocket");
                } else if name.eq_ignore_ascii_case("connection") {
                    req.connection_upgrade |= has_token(h.value, b"upgrade");
                } else if name.eq_ignore_ascii_case("sec-websocket-version") {
                    req.ws_version = Some(trim(h.value));
                } else if name.eq_ignore_ascii_case("sec-websocket-key") {
                    req.ws_key = Some(trim(h.value));
                }
            }
            ParsedRequest::Complete { req, len }
        }
        Err(httparse::Error::TooManyHeaders) => ParsedRequest::TooLarge,
        Err(_) => ParsedRequest::Malformed,
    }
}

/// Why an upgrade request is refused, mapped to its HTTP answer (RFC 6455 §4.2.1, §4.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeError {
    /// Not a WebSocket upgrade at all (a plain GET): 426 Upgrade Required.
    NotUpgrade,
    /// `Sec-WebSocket-Version` is not 13: 426 with `Sec-WebSocket-Version: 13`.
    BadVersion,
    /// Missing or malformed `Sec-WebSocket-Key`, missing Host, or HTTP/1.0: 400.
    BadRequest(&'static str),
}

/// Check a request as a WebSocket upgrade; on success return the `Sec-WebSocket-Accept` value.
pub fn check_upgrade(req: &Request<'_>) -> Result<String, UpgradeError> {
    if !req.upgrade_websocket {
        return Err(UpgradeError::NotUpgrade);
    }
    if !req.connection_upgrade {
        return Err(UpgradeError::BadRequest("Connection header must include 'Upgrade'"));
    }
    if req.minor_version < 1 {
        return Err(UpgradeError::BadRequest("WebSocket needs HTTP/1.1"));
    }
    if !req.has_host {
        return Err(UpgradeError::BadRequest("missing Host header"));
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

/// A `Sec-WebSocket-Key` is 16 random bytes in base64: 22 base64 characters and `==`.
pub fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24 && key[22..] == *b"==" && key[..22].iter().all(|&c| BASE64.contains(&c))
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Append the 101 response that completes the handshake.
pub fn write_switching_protocols(out: &mut Vec<u8>, accept: &str) {
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Append a complete HTTP/1.1 response that ends the connection (`Connection: close`).
pub fn write_response(out: &mut Vec<u8>, status: u16, extra_headers: &[(&str, &str)], content_type: &str, body: &[u8]) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        reason_phrase(status),
        body.len()
    );
    for (k, v) in extra_headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Reason phrases for the statuses this crate sends.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Does a comma-separated header value contain `token` (case-insensitive)?
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(token))
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}

// ---- client side (bench-client and tests) ----

/// Encode 16 key bytes as a `Sec-WebSocket-Key` (standard base64, padded).
pub fn encode_key(raw: [u8; 16]) -> String {
    let mut s = String::with_capacity(24);
    for chunk in raw.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(BASE64[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Append a client upgrade request for `path_and_query` on `host`.
pub fn write_client_request(out: &mut Vec<u8>, host: &str, path_and_query: &str, key: &str) {
    use std::io::Write;
    let _ = write!(
        out,
        "GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
}

/// A parsed response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedResponse {
    Partial,
    /// `len` bytes of head; `accept_ok` says whether `Sec-WebSocket-Accept` matched the key.
    Complete {
        status: u16,
        accept_ok: bool,
        len: usize,
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
            let accept_ok = r
                .headers
                .iter()
                .any(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept") && trim(h.value) == expected.as_bytes());
            ParsedResponse::Complete { status: r.code.unwrap_or(0), accept_ok, len }
        }
        Err(_) => ParsedResponse::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &[u8] = b"GET /echo?x=1 HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse_request(buf, 16 * 1024) {
            ParsedRequest::Complete { req, len } => (req, len),
            other => panic!("{other:?}"),
        }
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
    fn every_prefix_is_partial() {
        for cut in 0..GOOD.len() {
            assert_eq!(parse_request(&GOOD[..cut], 16 * 1024), ParsedRequest::Partial, "cut {cut}");
        }
    }

    #[test]
    fn rejections() {
        let plain = b"GET /echo HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(check_upgrade(&complete(plain).0), Err(UpgradeError::NotUpgrade));
        let v8 = String::from_utf8_lossy(GOOD).replace("Version: 13", "Version: 8");
        assert_eq!(check_upgrade(&complete(v8.as_bytes()).0), Err(UpgradeError::BadVersion));
        let badkey = String::from_utf8_lossy(GOOD).replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        assert!(matches!(check_upgrade(&complete(badkey.as_bytes()).0), Err(UpgradeError::BadRequest(_))));
        let nokey = String::from_utf8_lossy(GOOD).replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", "");
        assert!(matches!(check_upgrade(&complete(nokey.as_bytes()).0), Err(UpgradeError::BadRequest(_))));
        let http10 = String::from_utf8_lossy(GOOD).replace("HTTP/1.1", "HTTP/1.0");
        assert!(matches!(check_upgrade(&complete(http10.as_bytes()).0), Err(UpgradeError::BadRequest(_))));
    }

    #[test]
    fn malformed_and_oversized() {
        assert_eq!(parse_request(b"\x16\x03\x01garbage\r\n\r\n", 1024), ParsedRequest::Malformed);
        let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20_000));
        assert_eq!(parse_request(&big, 16 * 1024), ParsedRequest::TooLarge);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&many, 16 * 1024), ParsedRequest::TooLarge);
    }

    #[test]
    fn key_encoding_and_client_roundtrip() {
        assert_eq!(encode_key(*b"the sample nonce"), "dGhlIHNhbXBsZSBub25jZQ==");
        let key = encode_key([7; 16]);
        assert!(is_valid_key(key.as_bytes()));
        let mut req = Vec::new();
        write_client_request(&mut req, "127.0.0.1:1", "/ws?room=a", &key);
        let (parsed, _) = complete(&req);
        let accept = check_upgrade(&parsed).unwrap();
        let mut resp = Vec::new();
        write_switching_protocols(&mut resp, &accept);
        assert_eq!(
            parse_response(&resp, &key),
            ParsedResponse::Complete { status: 101, accept_ok: true, len: resp.len() }
        );
        assert!(matches!(
            parse_response(&resp, &encode_key([8; 16])),
            ParsedResponse::Complete { accept_ok: false, .. }
        ));
    }

    #[test]
    fn error_response_is_complete_http() {
        let mut out = Vec::new();
        write_response(&mut out, 426, &[("Sec-WebSocket-Version", "13")], "text/plain", b"upgrade");
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
        assert!(text.contains("Content-Length: 7\r\n"));
        assert!(text.ends_with("\r\n\r\nupgrade"));
    }
}
