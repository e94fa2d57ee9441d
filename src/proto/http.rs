//! HTTP/1.1 requests without IO (RFC 7230): parse a request head with `httparse`, frame its body
//! (Content-Length or chunked), decide keep-alive, and write responses into a caller's buffer.
//!
//! Parsing is a pure function of the bytes received so far: it either needs more (with a lower
//! bound on how many, so a trickled body is not re-parsed byte by byte), or returns one complete
//! request and how many bytes it took (pipelined requests follow), or an error that ends the
//! connection. Rules that close request-smuggling and cache-poisoning holes are strict here:
//! repeated `Host`, `Content-Length` with different values, or both `Content-Length` and
//! `Transfer-Encoding` are 400.

/// Most headers read in one request; more is answered with 431.
pub const MAX_HEADERS: usize = 64;

/// A request head, borrowed from the input buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'b> {
    pub method: &'b str,
    /// The path of the target (origin form; absolute form `http://host/path` is reduced to it).
    pub path: &'b str,
    pub query: Option<&'b str>,
    /// HTTP/1.x minor version.
    pub minor_version: u8,
    pub host: Option<&'b [u8]>,
    /// `Upgrade` lists the `websocket` token.
    pub upgrade_websocket: bool,
    /// `Connection` lists `upgrade`.
    pub connection_upgrade: bool,
    /// `Connection` lists `close` / `keep-alive`.
    pub connection_close: bool,
    pub connection_keep_alive: bool,
    pub ws_version: Option<&'b [u8]>,
    pub ws_key: Option<&'b [u8]>,
    /// Every `Sec-WebSocket-Protocol` value (comma lists, possibly over several headers).
    pub ws_protocols: [Option<&'b [u8]>; 4],
    /// `Sec-WebSocket-Extensions` values (up to four headers), each a comma-separated list.
    pub ws_extensions: [Option<&'b [u8]>; 4],
    pub origin: Option<&'b [u8]>,
    pub authorization: Option<&'b [u8]>,
    pub last_event_id: Option<&'b [u8]>,
    /// The request declared a body (Content-Length or Transfer-Encoding), even an empty one.
    pub has_body_headers: bool,
}

impl Request<'_> {
    /// Whether the connection stays open after the response (RFC 7230 §6.3).
    pub fn keep_alive(&self) -> bool {
        if self.minor_version >= 1 {
            !self.connection_close
        } else {
            self.connection_keep_alive && !self.connection_close
        }
    }

    /// Whether `Sec-WebSocket-Protocol` offers `proto` (case-sensitive, RFC 6455 §4.1).
    pub fn offers_protocol(&self, proto: &str) -> bool {
        self.ws_protocols.iter().flatten().any(|v| v.split(|&b| b == b',').any(|t| trim(t) == proto.as_bytes()))
    }

    /// The bearer token of `Authorization: Bearer …`, if any.
    pub fn bearer(&self) -> Option<&str> {
        let v = std::str::from_utf8(self.authorization?).ok()?;
        let (scheme, token) = v.trim().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }

    /// The first value of query parameter `name`, percent-decoded; `Err` when undecodable.
    pub fn query_param(&self, name: &str) -> Option<Result<String, &'static str>> {
        query_param(self.query, name)
    }
}

/// A request's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body<'b> {
    Empty,
    /// A Content-Length body, borrowed.
    Slice(&'b [u8]),
    /// A chunked body, decoded.
    Chunked(Vec<u8>),
}

impl std::ops::Deref for Body<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Body::Empty => &[],
            Body::Slice(s) => s,
            Body::Chunked(v) => v,
        }
    }
}

/// Why a request cannot be served; the connection ends after the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub reason: &'static str,
}

const fn err(status: u16, reason: &'static str) -> HttpError {
    HttpError { status, reason }
}

/// Result of parsing the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // returned by value once per request, never stored
pub enum Parsed<'b> {
    /// More bytes are needed: at least `need` in all before a new attempt can succeed.
    Partial {
        need: usize,
    },
    /// One request of `len` bytes (head and body); bytes after it belong to what follows.
    Complete {
        req: Request<'b>,
        body: Body<'b>,
        len: usize,
    },
    Error(HttpError),
}

/// Size limits for [`parse`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_head: usize,
    pub max_body: usize,
}

/// Parse one request from the front of `buf`.
pub fn parse(buf: &[u8], limits: Limits) -> Parsed<'_> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let window = &buf[..buf.len().min(limits.max_head)];
    let head_len = match r.parse(window) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= limits.max_head => {
            return Parsed::Error(err(431, "request head too large"))
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial { need: buf.len() + 1 },
        Err(httparse::Error::TooManyHeaders) => return Parsed::Error(err(431, "too many headers")),
        Err(_) => return Parsed::Error(err(400, "malformed HTTP request")),
    };
    let (path, query) = match split_target(r.path.unwrap_or("")) {
        Some(t) => t,
        None => return Parsed::Error(err(400, "bad request target")),
    };
    let mut req = Request {
        method: r.method.unwrap_or(""),
        path,
        query,
        minor_version: r.version.unwrap_or(0),
        host: None,
        upgrade_websocket: false,
        connection_upgrade: false,
        connection_close: false,
        connection_keep_alive: false,
        ws_version: None,
        ws_key: None,
        ws_protocols: [None; 4],
        ws_extensions: [None; 4],
        origin: None,
        authorization: None,
        last_event_id: None,
        has_body_headers: false,
    };
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut transfer_encoding = false;
    for h in r.headers.iter() {
        let (name, value) = (h.name, trim(h.value));
        let res = if name.eq_ignore_ascii_case("host") {
            set_once(&mut req.host, value, "repeated Host header")
        } else if name.eq_ignore_ascii_case("upgrade") {
            req.upgrade_websocket |= has_token(value, b"websocket");
            Ok(())
        } else if name.eq_ignore_ascii_case("connection") {
            req.connection_upgrade |= has_token(value, b"upgrade");
            req.connection_close |= has_token(value, b"close");
            req.connection_keep_alive |= has_token(value, b"keep-alive");
            Ok(())
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            set_once(&mut req.ws_version, value, "repeated Sec-WebSocket-Version header")
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            set_once(&mut req.ws_key, value, "repeated Sec-WebSocket-Key header")
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            push_value(&mut req.ws_protocols, value, "too many Sec-WebSocket-Protocol headers")
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            push_value(&mut req.ws_extensions, value, "too many Sec-WebSocket-Extensions headers")
        } else if name.eq_ignore_ascii_case("origin") {
            set_once(&mut req.origin, value, "repeated Origin header")
        } else if name.eq_ignore_ascii_case("authorization") {
            set_once(&mut req.authorization, value, "repeated Authorization header")
        } else if name.eq_ignore_ascii_case("last-event-id") {
            set_once(&mut req.last_event_id, value, "repeated Last-Event-ID header")
        } else if name.eq_ignore_ascii_case("content-length") {
            match parse_length(value) {
                Some(n) if content_length.is_none_or(|c| c == n) => {
                    content_length = Some(n);
                    Ok(())
                }
                Some(_) => Err(err(400, "conflicting Content-Length headers")),
                None => Err(err(400, "invalid Content-Length")),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding = true;
            // The last coding applied must be chunked (RFC 7230 §3.3.3); we decode no others.
            let last = value.rsplit(|&b| b == b',').next().map(trim).unwrap_or(b"");
            chunked = last.eq_ignore_ascii_case(b"chunked") && value.split(|&b| b == b',').count() == 1;
            if chunked {
                Ok(())
            } else {
                Err(err(501, "unsupported Transfer-Encoding (only chunked)"))
            }
        } else {
            Ok(())
        };
        if let Err(e) = res {
            return Parsed::Error(e);
        }
    }
    if transfer_encoding && content_length.is_some() {
        return Parsed::Error(err(400, "both Content-Length and Transfer-Encoding"));
    }
    req.has_body_headers = transfer_encoding || content_length.is_some();
    if req.upgrade_websocket && req.has_body_headers {
        // Refused by the upgrade rules without waiting for a body that may never come.
        return Parsed::Complete { req, body: Body::Empty, len: head_len };
    }
    let rest = &buf[head_len..];
    if chunked {
        return match decode_chunked(rest, limits.max_body) {
            Chunks::Partial { need } => Parsed::Partial { need: head_len + need },
            Chunks::Done { body, len } => Parsed::Complete { req, body: Body::Chunked(body), len: head_len + len },
            Chunks::Error(e) => Parsed::Error(e),
        };
    }
    match content_length {
        None | Some(0) => Parsed::Complete { req, body: Body::Empty, len: head_len },
        Some(n) if n > limits.max_body as u64 => Parsed::Error(err(413, "request body too large")),
        Some(n) => {
            let n = n as usize;
            if rest.len() < n {
                Parsed::Partial { need: head_len + n }
            } else {
                Parsed::Complete { req, body: Body::Slice(&rest[..n]), len: head_len + n }
            }
        }
    }
}

/// Origin form `/p?q`, or absolute form `http://authority/p?q` (RFC 7230 §5.3.2), into (path,
/// query). `*` (asterisk form) and anything else is refused.
fn split_target(target: &str) -> Option<(&str, Option<&str>)> {
    let origin_form = if target.starts_with('/') {
        target
    } else {
        let lower = target.get(..8).map(|s| s.to_ascii_lowercase());
        let after = match lower.as_deref() {
            Some(s) if s.starts_with("http://") => &target[7..],
            Some("https://") => &target[8..],
            _ => return None,
        };
        match after.find(['/', '?']) {
            Some(i) if after.as_bytes()[i] == b'/' => &after[i..],
            Some(i) => return Some(("/", Some(&after[i + 1..]))),
            None => "/",
        }
    };
    Some(match origin_form.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (origin_form, None),
    })
}

/// Headers that may appear only once: a second one is a 400.
/// Keep one more value of a header that may repeat (up to the slots there are).
fn push_value<'b>(slots: &mut [Option<&'b [u8]>], value: &'b [u8], what: &'static str) -> Result<(), HttpError> {
    match slots.iter_mut().find(|s| s.is_none()) {
        Some(slot) => {
            *slot = Some(value);
            Ok(())
        }
        None => Err(err(400, what)),
    }
}

fn set_once<'b>(slot: &mut Option<&'b [u8]>, value: &'b [u8], what: &'static str) -> Result<(), HttpError> {
    if slot.replace(value).is_some() {
        return Err(err(400, what));
    }
    Ok(())
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

enum Chunks {
    Partial { need: usize },
    Done { body: Vec<u8>, len: usize },
    Error(HttpError),
}

/// Decode a chunked body from the front of `buf` (chunk extensions and trailers are skipped).
fn decode_chunked(buf: &[u8], max_body: usize) -> Chunks {
    let mut body = Vec::new();
    let mut pos = 0;
    loop {
        let (size, n) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete((n, size))) => (size, n),
            Ok(httparse::Status::Partial) if buf.len() - pos > 1024 => {
                return Chunks::Error(err(400, "chunk size line too long"))
            }
            Ok(httparse::Status::Partial) => return Chunks::Partial { need: buf.len() + 1 },
            Err(_) => return Chunks::Error(err(400, "malformed chunk size")),
        };
        pos += n;
        if size == 0 {
            // Trailers (ignored), then the empty line.
            loop {
                let line_end = match buf[pos..].windows(2).position(|w| w == b"\r\n") {
                    Some(i) => i,
                    None if buf.len() - pos > 8192 => return Chunks::Error(err(400, "trailers too long")),
                    None => return Chunks::Partial { need: buf.len() + 1 },
                };
                pos += line_end + 2;
                if line_end == 0 {
                    return Chunks::Done { body, len: pos };
                }
            }
        }
        if body.len() as u64 + size > max_body as u64 {
            return Chunks::Error(err(413, "request body too large"));
        }
        let size = size as usize;
        if buf.len() < pos + size + 2 {
            return Chunks::Partial { need: pos + size + 2 };
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Chunks::Error(err(400, "chunk not followed by CRLF"));
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size + 2;
    }
}

/// The first value of `name` in a query string, percent-decoded (`+` is a space).
pub fn query_param(query: Option<&str>, name: &str) -> Option<Result<String, &'static str>> {
    query_values(query, name).next()
}

/// Every value of `name` in a query string, percent-decoded.
pub fn query_values<'q>(
    query: Option<&'q str>,
    name: &'q str,
) -> impl Iterator<Item = Result<String, &'static str>> + 'q {
    query.into_iter().flat_map(|q| q.split('&')).filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| {
            let bytes = percent_decode(v.as_bytes()).ok_or("invalid percent-encoding")?;
            String::from_utf8(bytes).map_err(|_| "not UTF-8")
        })
    })
}

/// Percent-decode a path segment or an SSE id: like [`percent_decode`], but `+` stays `+`.
pub fn percent_decode_path(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut parts = s.split(|&b| b == b'+');
    if let Some(first) = parts.next() {
        out.extend(percent_decode(first)?);
    }
    for part in parts {
        out.push(b'+');
        out.extend(percent_decode(part)?);
    }
    Some(out)
}

/// Percent-decode (RFC 3986 §2.1: `%` and exactly two hex digits), `+` as a space.
pub fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                let digit = |c: u8| (c as char).to_digit(16);
                out.push((digit(hex[0])? * 16 + digit(hex[1])?) as u8);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Append a complete HTTP/1.1 response. `keep_alive` false adds `Connection: close`.
pub fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    extra_headers: &[(&str, &str)],
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) {
    use std::io::Write;
    let _ = write!(
        out,
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
        reason_phrase(status),
        body.len()
    );
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
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
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Does a comma-separated header value contain `token` (case-insensitive)?
pub fn has_token(value: &[u8], token: &[u8]) -> bool {
    value.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(token))
}

pub fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !b.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: Limits = Limits { max_head: 16 * 1024, max_body: 1024 };

    fn ok(buf: &[u8]) -> (Request<'_>, Body<'_>, usize) {
        match parse(buf, L) {
            Parsed::Complete { req, body, len } => (req, body, len),
            other => panic!("{other:?}"),
        }
    }

    fn status(buf: &[u8]) -> u16 {
        match parse(buf, L) {
            Parsed::Error(e) => e.status,
            Parsed::Complete { .. } => 200,
            Parsed::Partial { .. } => 0,
        }
    }

    #[test]
    fn every_prefix_is_partial_and_pipelined_requests_split() {
        let two =
            b"GET /a?x=1 HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabcGET";
        let first_len = 32;
        for cut in 0..first_len {
            assert!(matches!(parse(&two[..cut], L), Parsed::Partial { .. }), "cut {cut}");
        }
        let (req, body, len) = ok(two);
        assert_eq!((req.method, req.path, req.query, len), ("GET", "/a", Some("x=1"), first_len));
        assert_eq!(body, Body::Empty);
        let (req, body, len) = ok(&two[first_len..]);
        assert_eq!((req.method, &*body, len), ("POST", b"abc".as_slice(), 51));
        assert!(matches!(parse(&two[first_len + len..], L), Parsed::Partial { .. }));
    }

    #[test]
    fn a_partial_body_names_the_bytes_it_needs() {
        let req = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc";
        assert_eq!(parse(req, L), Parsed::Partial { need: req.len() - 3 + 100 });
        assert_eq!(status(b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\n\r\n"), 413);
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_and_trailers() {
        let req = b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (_, body, len) = ok(req);
        assert_eq!(&*body, b"abcde");
        assert_eq!(len, req.len() - 4);
        for cut in 60..req.len() - 4 {
            assert!(matches!(parse(&req[..cut], L), Parsed::Partial { .. }), "cut {cut}");
        }
        let big = b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n801\r\n";
        assert_eq!(status(big), 413);
        assert_eq!(status(b"POST /p HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n"), 501);
        assert_eq!(status(b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), 400);
    }

    #[test]
    fn smuggling_and_duplicate_rules() {
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab"), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab"), 200);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
        assert_eq!(status(b"POST / HTTP/1.1\r\nContent-Length: +2\r\n\r\nab"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nSec-WebSocket-Key: a\r\nSec-WebSocket-Key: b\r\n\r\n"), 400);
        assert_eq!(status(b"GET / HTTP/1.1\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Version: 13\r\n\r\n"), 400);
        let (req, ..) = ok(b"GET / HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(req.has_body_headers);
    }

    #[test]
    fn absolute_form_targets_reduce_to_the_path() {
        let (req, ..) = ok(b"GET http://example.com:8080/echo?a=b HTTP/1.1\r\nHost: example.com\r\n\r\n");
        assert_eq!((req.path, req.query), ("/echo", Some("a=b")));
        let (req, ..) = ok(b"GET HTTP://h HTTP/1.1\r\n\r\n");
        assert_eq!((req.path, req.query), ("/", None));
        assert_eq!(status(b"OPTIONS * HTTP/1.1\r\n\r\n"), 400);
    }

    #[test]
    fn limits_give_431() {
        let mut big = b"GET / HTTP/1.1\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 20_000));
        assert_eq!(status(&big), 431);
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..100 {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 431);
        assert_eq!(status(b"\x16\x03\x01garbage\r\n\r\n"), 400);
    }

    #[test]
    fn keep_alive_rules() {
        assert!(ok(b"GET / HTTP/1.1\r\n\r\n").0.keep_alive());
        assert!(!ok(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").0.keep_alive());
        assert!(!ok(b"GET / HTTP/1.0\r\n\r\n").0.keep_alive());
        assert!(ok(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").0.keep_alive());
    }

    #[test]
    fn protocols_bearer_and_query() {
        let (req, ..) = ok(b"GET /ws?room=a%20b+c&token=t&room=second HTTP/1.1\r\nSec-WebSocket-Protocol: x, c100k.v1\r\nAuthorization: Bearer abc.def\r\n\r\n");
        assert!(req.offers_protocol("c100k.v1"));
        assert!(!req.offers_protocol("C100K.V1"));
        assert_eq!(req.bearer(), Some("abc.def"));
        assert_eq!(req.query_param("room"), Some(Ok("a b c".to_string())));
        assert_eq!(query_values(req.query, "room").count(), 2);
        assert_eq!(req.query_param("nope"), None);
        assert_eq!(query_param(Some("r=%zz"), "r"), Some(Err("invalid percent-encoding")));
        assert_eq!(query_param(Some("r=%+1"), "r"), Some(Err("invalid percent-encoding")), "both digits hex");
        assert_eq!(query_param(Some("r=%ff"), "r"), Some(Err("not UTF-8")));
    }

    #[test]
    fn responses_are_complete() {
        let mut out = Vec::new();
        write_response(&mut out, 426, &[("Sec-WebSocket-Version", "13")], "text/plain", b"upgrade", false);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.contains("Content-Length: 7\r\n"));
        assert!(text.ends_with("\r\n\r\nupgrade"));
        let mut out = Vec::new();
        write_response(&mut out, 200, &[], "application/json", b"{}", true);
        assert!(!String::from_utf8(out).unwrap().contains("Connection"));
    }
}
