//! What the server answers to each request head: the routes and their rejections, as a pure
//! function of the parsed request (no IO, unit-tested here).
//!
//! - `/echo`: WebSocket echo.
//! - `/` and `/ws` with `?room=NAME`: WebSocket chat room.
//! - `/healthz`, `/metrics`: plain HTTP.

use crate::proto::ws::handshake::{check_upgrade, Request, UpgradeError};

/// Longest room name accepted (after percent-decoding), in bytes.
pub const MAX_ROOM_NAME: usize = 256;

/// The answer to a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Complete the handshake with this `Sec-WebSocket-Accept`; join `room` if any, else echo.
    Upgrade { accept: String, room: Option<String> },
    /// Answer with plain HTTP and end the connection.
    Respond { status: u16, headers: &'static [(&'static str, &'static str)], body: Body },
}

/// Body of a plain HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Text(&'static str),
    Owned(String),
    /// The Prometheus text of the server's metrics (rendered by the caller).
    Metrics,
}

impl Decision {
    /// Whether this ends a connection that wanted a WebSocket and did not get one.
    pub fn is_handshake_failure(&self) -> bool {
        matches!(self, Decision::Respond { status, .. } if *status >= 400)
    }
}

const ALLOW_GET: &[(&str, &str)] = &[("Allow", "GET")];
const UPGRADE_WS: &[(&str, &str)] = &[("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13")];

fn respond(status: u16, body: &'static str) -> Decision {
    Decision::Respond { status, headers: &[], body: Body::Text(body) }
}

/// Decide the answer to `req`.
pub fn route(req: &Request<'_>) -> Decision {
    let get = req.method == "GET";
    let wants_room = match req.path {
        "/healthz" | "/metrics" if !get => {
            return Decision::Respond { status: 405, headers: ALLOW_GET, body: Body::Text("method not allowed\n") }
        }
        "/healthz" => return respond(200, "ok\n"),
        "/metrics" => return Decision::Respond { status: 200, headers: &[], body: Body::Metrics },
        "/echo" => false,
        "/" | "/ws" => true,
        _ => return respond(404, "not found\n"),
    };
    if !get {
        return Decision::Respond { status: 405, headers: ALLOW_GET, body: Body::Text("WebSocket needs GET\n") };
    }
    let accept = match check_upgrade(req) {
        Ok(a) => a,
        Err(UpgradeError::NotUpgrade) => {
            return Decision::Respond {
                status: 426,
                headers: UPGRADE_WS,
                body: Body::Text("this is a WebSocket endpoint: send an Upgrade: websocket request\n"),
            }
        }
        Err(UpgradeError::BadVersion) => {
            return Decision::Respond {
                status: 426,
                headers: &[("Sec-WebSocket-Version", "13")],
                body: Body::Text("unsupported Sec-WebSocket-Version: only 13 is supported\n"),
            }
        }
        Err(UpgradeError::BadRequest(why)) => {
            return Decision::Respond { status: 400, headers: &[], body: Body::Owned(format!("{why}\n")) }
        }
    };
    if !wants_room {
        return Decision::Upgrade { accept, room: None };
    }
    match room_param(req.query) {
        Ok(room) => Decision::Upgrade { accept, room: Some(room) },
        Err(why) => Decision::Respond { status: 400, headers: &[], body: Body::Text(why) },
    }
}

/// The `room` query parameter, percent-decoded (`+` is a space), non-empty, UTF-8, bounded.
pub fn room_param(query: Option<&str>) -> Result<String, &'static str> {
    let raw = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("room="))
        .ok_or("missing room: connect to /ws?room=NAME\n")?;
    let bytes = percent_decode(raw.as_bytes()).ok_or("room: invalid percent-encoding\n")?;
    if bytes.is_empty() {
        return Err("empty room name: connect to /ws?room=NAME\n");
    }
    if bytes.len() > MAX_ROOM_NAME {
        return Err("room name longer than 256 bytes\n");
    }
    String::from_utf8(bytes).map_err(|_| "room name is not UTF-8\n")
}

fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
                out.push(v);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ws::handshake::{parse_request, ParsedRequest};

    fn decide(head: &str) -> Decision {
        match parse_request(head.as_bytes(), 16 * 1024) {
            ParsedRequest::Complete { req, .. } => route(&req),
            other => panic!("{other:?}"),
        }
    }

    fn ws(target: &str) -> String {
        format!(
            "GET {target} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
    }

    fn status(d: &Decision) -> u16 {
        match d {
            Decision::Respond { status, .. } => *status,
            Decision::Upgrade { .. } => 101,
        }
    }

    #[test]
    fn routes() {
        assert_eq!(status(&decide("GET /healthz HTTP/1.1\r\n\r\n")), 200);
        assert_eq!(status(&decide("GET /metrics HTTP/1.1\r\n\r\n")), 200);
        assert_eq!(status(&decide("POST /healthz HTTP/1.1\r\n\r\n")), 405);
        assert_eq!(status(&decide("GET /nope HTTP/1.1\r\n\r\n")), 404);
        assert_eq!(
            decide(&ws("/echo")),
            Decision::Upgrade { accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(), room: None }
        );
        assert!(matches!(decide(&ws("/ws?room=lobby")), Decision::Upgrade { room: Some(r), .. } if r == "lobby"));
        assert!(matches!(decide(&ws("/?x=1&room=a%20b+c")), Decision::Upgrade { room: Some(r), .. } if r == "a b c"));
    }

    #[test]
    fn rejections() {
        assert_eq!(status(&decide("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")), 426);
        assert_eq!(status(&decide("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")), 426);
        assert_eq!(status(&decide(&ws("/ws"))), 400);
        assert_eq!(status(&decide(&ws("/ws?room="))), 400);
        assert_eq!(status(&decide(&ws("/ws?room=%zz"))), 400);
        assert_eq!(status(&decide(&ws(&format!("/ws?room={}", "a".repeat(300))))), 400);
        assert_eq!(status(&decide(&ws("/echo").replacen("GET", "POST", 1))), 405);
        let v = decide(&ws("/echo").replace("Version: 13", "Version: 7"));
        assert_eq!(status(&v), 426);
        assert!(matches!(v, Decision::Respond { headers, .. } if headers.contains(&("Sec-WebSocket-Version", "13"))));
        assert_eq!(status(&decide(&ws("/echo").replace("dGhlIHNhbXBsZSBub25jZQ==", "AAAA"))), 400);
        assert!(decide(&ws("/ws")).is_handshake_failure());
        assert!(!decide("GET /healthz HTTP/1.1\r\n\r\n").is_handshake_failure());
    }
}
