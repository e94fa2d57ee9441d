//! Room members over plain HTTP (`--transport sse|poll`), sans-IO: the requests they send, and
//! the event-stream blocks and long-poll answers they read. The engine feeds the bytes; what the
//! server says inside is the v1 JSON (`joined`, `msg`), checked by the same accounting as v1.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// How a member receives a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// A WebSocket (the scenario's protocol).
    #[default]
    Ws,
    /// A Server-Sent Events stream (`/sse`), resumed with `Last-Event-ID`.
    Sse,
    /// Long polling (`/poll`), one request after another on a keep-alive connection.
    Poll,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }
}

/// The request target of a member of `room` on `route` (`/sse` or `/poll`): the room, the query
/// of the scenario's URL (tokens, users) without its own `room`, and `since` for a poll.
pub fn member_target(url_path: &str, route: &str, room: &str, since: Option<&str>) -> String {
    let query = url_path.split_once('?').map_or("", |(_, q)| q);
    let mut t = format!("{route}?room={}", encode(room));
    for pair in query.split('&').filter(|p| !p.is_empty() && !p.starts_with("room=")) {
        t.push('&');
        t.push_str(pair);
    }
    if let Some(s) = since {
        t.push_str("&since=");
        t.push_str(&encode(s));
    }
    t
}

/// Percent-encode what a query value may not hold as is.
fn encode(s: &str) -> Cow<'_, str> {
    if s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) {
        return Cow::Borrowed(s);
    }
    let mut o = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    Cow::Owned(o)
}

/// `GET target`, asking for an event stream (`sse`, with `Last-Event-ID` when resuming) or a
/// JSON answer.
pub fn request(out: &mut Vec<u8>, host: &str, target: &str, sse: bool, last_event_id: Option<&str>) {
    use std::io::Write;
    let _ = write!(out, "GET {target} HTTP/1.1\r\nHost: {host}\r\n");
    if sse {
        out.extend_from_slice(b"Accept: text/event-stream\r\n");
    }
    if let Some(id) = last_event_id {
        let _ = write!(out, "Last-Event-ID: {id}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The SSE id naming position `seq` of `epoch` in `room` (rooms here are plain names).
pub fn sse_id(room: &str, epoch: &str, seq: u64) -> String {
    format!("{room}:{epoch}:{seq}")
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A response head's status and `Content-Length`.
pub fn head_of(head: &[u8]) -> Option<(u16, Option<usize>)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let len = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length").then(|| v.trim().parse().ok()).flatten()
    });
    Some((status, len))
}

/// One event-stream block: its event name and its data (lines joined with `\n`). `None` for
/// comments and blocks without data (`retry:`).
pub fn sse_block(block: &[u8]) -> Option<(&str, Cow<'_, [u8]>)> {
    let text = std::str::from_utf8(block).ok()?;
    let mut event = "message";
    let mut data: Option<Cow<'_, [u8]>> = None;
    for line in text.split('\n') {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => event = value,
            "data" => {
                data = Some(match data {
                    None => Cow::Borrowed(value.as_bytes()),
                    Some(d) => {
                        let mut v = d.into_owned();
                        v.push(b'\n');
                        v.extend_from_slice(value.as_bytes());
                        Cow::Owned(v)
                    }
                })
            }
            _ => {}
        }
    }
    Some((event, data?))
}

/// A long poll's answer.
#[derive(Debug, Deserialize)]
pub struct PollAnswer<'a> {
    #[serde(borrow)]
    pub messages: Vec<&'a RawValue>,
    pub next: String,
    pub recovered: Option<bool>,
}

impl PollAnswer<'_> {
    /// `next` split into epoch and seq.
    pub fn position(&self) -> Option<(&str, u64)> {
        let (e, s) = self.next.rsplit_once(':')?;
        Some((e, s.parse().ok()?))
    }
}

pub fn poll_answer(body: &[u8]) -> Option<PollAnswer<'_>> {
    serde_json::from_slice(body).ok()
}

/// The v1 `joined` a poll answer stands for (the first answer, or one saying `recovered:false`).
pub fn joined_json(epoch: &str, seq: u64, recovered: bool) -> Vec<u8> {
    format!(
        "{{\"op\":\"joined\",\"epoch\":{},\"seq\":{seq},\"recovered\":{recovered}}}",
        serde_json::Value::from(epoch)
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_the_url_query_and_add_since() {
        assert_eq!(member_target("/ws?room={room}&user=u1", "/sse", "7", None), "/sse?room=7&user=u1");
        assert_eq!(member_target("/ws", "/poll", "a b", Some("e1:5")), "/poll?room=a%20b&since=e1%3A5");
        let mut o = Vec::new();
        request(&mut o, "h:1", "/sse?room=7", true, Some("7:e:3"));
        assert_eq!(
            String::from_utf8(o).unwrap(),
            "GET /sse?room=7 HTTP/1.1\r\nHost: h:1\r\nAccept: text/event-stream\r\nLast-Event-ID: 7:e:3\r\n\r\n"
        );
    }

    #[test]
    fn event_blocks_and_poll_answers_parse() {
        assert_eq!(
            sse_block(b"id: r:e:1\nevent: msg\ndata: {\"a\":\ndata: 1}").unwrap(),
            ("msg", Cow::Owned(b"{\"a\":\n1}".to_vec()))
        );
        assert!(sse_block(b": ping").is_none());
        assert!(sse_block(b"retry: 1000").is_none());
        assert_eq!(head_of(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\nX: y"), Some((200, Some(12))));
        let a = poll_answer(br#"{"messages":[{"op":"msg","seq":2}],"next":"ep:x:2","recovered":false}"#).unwrap();
        assert_eq!((a.messages.len(), a.position(), a.recovered), (1, Some(("ep:x", 2)), Some(false)));
        assert!(poll_answer(b"{").is_none());
    }
}
