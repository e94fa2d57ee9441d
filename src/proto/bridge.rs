//! HTTP/2 requests as HTTP/1.1, and HTTP/1.1 answers as HTTP/2 responses: a stream inside an
//! HTTP/2 connection is served by the same request reader, routes and WebSocket session as a
//! TCP connection, so every route, limit and close code is the same on both.
//!
//! An extended CONNECT (RFC 8441 §4: `:method CONNECT`, `:protocol websocket`) becomes the
//! RFC 6455 upgrade GET it stands for, with a key of our own; its `101` becomes `:status 200`
//! without the headers HTTP/2 forbids or RFC 8441 drops (`Sec-WebSocket-Accept`, `Connection`,
//! `Upgrade`). Any other request gets `Connection: close`: a stream carries one exchange.

/// The key of every translated upgrade: the answer's `Sec-WebSocket-Accept` is dropped, so it
/// proves nothing here (RFC 8441 §5: the stream itself is the proof).
pub const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// Headers that mean nothing (or something wrong) in the other version.
const HOP_BY_HOP: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "sec-websocket-key", "te"];

/// Why a request cannot be translated (answered with its status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: &'static str,
}

/// The parts of an HTTP/2 request that matter here.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    pub method: &'a str,
    /// `:path` (with its query).
    pub path: &'a str,
    pub authority: &'a str,
    /// `:protocol` of an extended CONNECT.
    pub protocol: Option<&'a str>,
}

/// Write the HTTP/1.1 request an HTTP/2 request stands for (its body, if any, follows as is:
/// with its `content-length`, or collected whole and given one with [`with_length`]).
pub fn request<'h>(
    head: Head<'_>,
    headers: impl Iterator<Item = (&'h str, &'h [u8])>,
    out: &mut Vec<u8>,
) -> Result<(), Refusal> {
    let connect = head.method.eq_ignore_ascii_case("CONNECT");
    let ws = match (connect, head.protocol) {
        (true, Some(p)) if p.eq_ignore_ascii_case("websocket") => true,
        (true, Some(_)) => return Err(Refusal { status: 501, reason: "only :protocol websocket is served" }),
        (true, None) => return Err(Refusal { status: 405, reason: "CONNECT needs :protocol websocket" }),
        (false, Some(_)) => return Err(Refusal { status: 400, reason: ":protocol without CONNECT" }),
        (false, None) => false,
    };
    if !head.path.starts_with('/') || head.path.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(Refusal { status: 400, reason: "bad :path" });
    }
    let method = if ws { "GET" } else { head.method };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(Refusal { status: 400, reason: "bad :method" });
    }
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(head.authority.as_bytes());
    out.extend_from_slice(b"\r\n");
    if ws {
        out.extend_from_slice(b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: ");
        out.extend_from_slice(KEY.as_bytes());
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    for (name, value) in headers {
        if HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        if value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(Refusal { status: 400, reason: "bad header value" });
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// A request head written by [`request`] (for a request without `content-length`), given the
/// length of the body collected for it.
pub fn with_length(head: &[u8], n: usize) -> Vec<u8> {
    let end = head.len().saturating_sub(2); // before the blank line
    let mut out = Vec::with_capacity(head.len() + 24);
    out.extend_from_slice(&head[..end]);
    out.extend_from_slice(format!("Content-Length: {n}\r\n\r\n").as_bytes());
    out
}

/// An HTTP/1.1 answer's head, as an HTTP/2 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Lower-case names, as HTTP/2 wants them.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Bytes of the head (the body starts there).
    pub head_len: usize,
    /// The body's length, if the answer says (else it runs to the end of the stream).
    pub body_len: Option<usize>,
    /// A `101`: the WebSocket is open (`:status 200` on an extended CONNECT).
    pub upgraded: bool,
}

/// Parse the answer head at the start of `buf`: `Ok(None)` until it is complete.
pub fn answer(buf: &[u8]) -> Result<Option<Answer>, &'static str> {
    let mut hs = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut hs);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err("unparsable answer"),
    };
    let code = r.code.unwrap_or(500);
    let upgraded = code == 101;
    let mut body_len = None;
    let mut headers = Vec::with_capacity(r.headers.len());
    for h in r.headers.iter() {
        let name = h.name.to_ascii_lowercase();
        if HOP_BY_HOP.contains(&name.as_str()) || name == "sec-websocket-accept" {
            continue;
        }
        if name == "content-length" {
            body_len = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse().ok());
        }
        headers.push((name, h.value.to_vec()));
    }
    Ok(Some(Answer { status: if upgraded { 200 } else { code }, headers, head_len, body_len, upgraded }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(method: &'a str, path: &'a str, protocol: Option<&'a str>) -> Head<'a> {
        Head { method, path, authority: "example.com", protocol }
    }

    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn an_extended_connect_is_the_upgrade_it_stands_for() {
        let mut out = Vec::new();
        let hs: [(&str, &[u8]); 4] = [
            ("sec-websocket-version", b"13"),
            ("sec-websocket-protocol", b"c100k.v1"),
            ("origin", b"https://a.example"),
            ("connection", b"evil"),
        ];
        request(head("CONNECT", "/ws?room=a", Some("websocket")), hs.into_iter(), &mut out).unwrap();
        let t = text(&out);
        assert!(t.starts_with("GET /ws?room=a HTTP/1.1\r\nHost: example.com\r\n"), "{t}");
        for want in ["Upgrade: websocket\r\n", "Sec-WebSocket-Key: ", "sec-websocket-protocol: c100k.v1\r\n"] {
            assert!(t.contains(want), "{t}");
        }
        assert!(!t.contains("evil"), "{t}");
        assert!(t.ends_with("\r\n\r\n"));
        let mut req = [httparse::EMPTY_HEADER; 16];
        assert!(httparse::Request::new(&mut req).parse(&out).unwrap().is_complete());
    }

    #[test]
    fn other_requests_close_after_their_answer_and_carry_their_body_length() {
        let mut out = Vec::new();
        let hs: [(&str, &[u8]); 1] = [("authorization", b"Bearer x")];
        request(head("POST", "/rooms/a/messages", None), hs.into_iter(), &mut out).unwrap();
        let t = text(&with_length(&out, 5)).to_string();
        assert!(t.contains("Connection: close\r\n") && t.contains("authorization: Bearer x\r\n"), "{t}");
        assert!(t.ends_with("\r\nContent-Length: 5\r\n\r\n"), "{t}");
        let mut hs = [httparse::EMPTY_HEADER; 8];
        assert!(httparse::Request::new(&mut hs).parse(t.as_bytes()).unwrap().is_complete());
    }

    #[test]
    fn requests_that_cannot_be_translated_are_refused() {
        let none = std::iter::empty();
        let mut out = Vec::new();
        assert_eq!(request(head("CONNECT", "/ws", None), none, &mut out).unwrap_err().status, 405);
        let none = std::iter::empty();
        assert_eq!(request(head("CONNECT", "/ws", Some("h3")), none, &mut out).unwrap_err().status, 501);
        let none = std::iter::empty();
        assert_eq!(request(head("GET", "/x", Some("websocket")), none, &mut out).unwrap_err().status, 400);
        let none = std::iter::empty();
        assert_eq!(request(head("GET", "x y", None), none, &mut out).unwrap_err().status, 400);
        let bad: [(&str, &[u8]); 1] = [("x", b"a\r\nInjected: 1")];
        assert_eq!(request(head("GET", "/", None), bad.into_iter(), &mut out).unwrap_err().status, 400);
    }

    #[test]
    fn answers_become_responses() {
        assert_eq!(answer(b"HTTP/1.1 101 Switching").unwrap(), None, "partial");
        let a = answer(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: c100k.v1\r\n\r\n\x81\x00",
        )
        .unwrap()
        .unwrap();
        assert!(a.upgraded);
        assert_eq!(a.status, 200);
        assert_eq!(a.headers, [("sec-websocket-protocol".to_string(), b"c100k.v1".to_vec())]);
        assert_eq!(a.body_len, None);
        let raw = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\nno\r\n";
        let a = answer(raw).unwrap().unwrap();
        assert_eq!((a.status, a.body_len, a.upgraded), (403, Some(4), false));
        assert_eq!(&raw[a.head_len..], b"no\r\n");
        assert!(answer(b"garbage\r\n\r\n").is_err());
    }
}
