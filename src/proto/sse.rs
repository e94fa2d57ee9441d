//! Server-Sent Events (the WHATWG `text/event-stream` format), sans-IO: the response head, events
//! and comments, and the stream position carried in event ids.
//!
//! An event id names where the stream is in every room it carries, so that the `Last-Event-ID`
//! a reconnecting `EventSource` sends resumes all of them: `ROOM:EPOCH:SEQ`, comma-separated
//! for several rooms, each room name percent-encoded (`%`, `,`, `:`, `+`, and anything outside
//! printable ASCII; `+` is never a space here). A one-room stream's ids are the same for every reader of the room, so they
//! are part of the event encoded once per message.

use std::fmt::Write as _;

use super::v1::{check_room_name, Position};

/// `200` with the headers an event stream needs: no caching, no proxy buffering (nginx's
/// `X-Accel-Buffering`), and the body delimited by the end of the connection. `extra` lines
/// (`Name: value`) go in too (CORS).
pub fn write_head(out: &mut Vec<u8>, extra: &[(&str, &str)]) {
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n\
          X-Accel-Buffering: no\r\nConnection: close\r\n",
    );
    for (k, v) in extra {
        let _ = write!(Bytes(out), "{k}: {v}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// `retry:` — how long a client waits before reconnecting, in milliseconds.
pub fn write_retry(out: &mut Vec<u8>, ms: u64) {
    let _ = write!(Bytes(out), "retry: {ms}\n\n");
}

/// A comment line: keeps proxies from closing a quiet stream; clients ignore it.
pub const PING: &[u8] = b": ping\n\n";

/// One event. `data` may hold line breaks (a JSON value's whitespace): each line becomes its
/// own `data:` line, which the client joins back with `\n`.
pub fn write_event(out: &mut Vec<u8>, id: Option<&str>, event: &str, data: &[u8]) {
    if let Some(id) = id {
        let _ = writeln!(Bytes(out), "id: {id}");
    }
    let _ = write!(Bytes(out), "event: {event}\ndata: ");
    let mut rest = data;
    while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(b"\ndata: ");
        let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(b"\n\n");
}

/// The id of a stream at these positions (room, epoch, seq).
pub fn format_id<'a>(positions: impl IntoIterator<Item = (&'a str, &'a str, u64)>) -> String {
    let mut id = String::new();
    for (room, epoch, seq) in positions {
        if !id.is_empty() {
            id.push(',');
        }
        for ch in room.chars() {
            if matches!(ch, '%' | ',' | ':' | '+') || !(' '..='~').contains(&ch) {
                let mut b = [0u8; 4];
                for byte in ch.encode_utf8(&mut b).bytes() {
                    let _ = write!(id, "%{byte:02X}");
                }
            } else {
                id.push(ch);
            }
        }
        let _ = write!(id, ":{epoch}:{seq}");
    }
    id
}

/// Positions from a `Last-Event-ID`; `None` when it is not one of ours.
pub fn parse_id(id: &str) -> Option<Vec<(String, Position)>> {
    let mut out = Vec::new();
    for part in id.split(',').filter(|p| !p.is_empty()) {
        let (room, pos) = part.split_once(':')?;
        let room = String::from_utf8(crate::proto::http::percent_decode_path(room.as_bytes())?).ok()?;
        check_room_name(&room).ok()?;
        out.push((room, Position::parse(pos)?));
    }
    Some(out)
}

/// `fmt::Write` into a byte buffer.
struct Bytes<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Bytes<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(b: &[u8]) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn events_split_their_data_into_lines() {
        let mut o = Vec::new();
        write_event(&mut o, Some("r:e:1"), "msg", b"{\"a\":\r\n 1,\n\"b\":\r2}");
        assert_eq!(text(&o), "id: r:e:1\nevent: msg\ndata: {\"a\":\ndata:  1,\ndata: \"b\":\ndata: 2}\n\n");
        o.clear();
        write_event(&mut o, None, "presence_join", b"{}");
        assert_eq!(text(&o), "event: presence_join\ndata: {}\n\n");
    }

    #[test]
    fn the_head_says_event_stream_and_no_buffering() {
        let mut o = Vec::new();
        write_head(&mut o, &[("Access-Control-Allow-Origin", "https://a.example")]);
        let h = text(&o);
        assert!(h.starts_with("HTTP/1.1 200 OK\r\n"));
        for want in ["Content-Type: text/event-stream", "Cache-Control: no-cache", "X-Accel-Buffering: no"] {
            assert!(h.contains(want), "{h}");
        }
        assert!(h.ends_with("Access-Control-Allow-Origin: https://a.example\r\n\r\n"));
        o.clear();
        write_retry(&mut o, 2000);
        assert_eq!(text(&o), "retry: 2000\n\n");
    }

    #[test]
    fn ids_carry_every_room_and_survive_odd_room_names() {
        let id = format_id([("lobby", "e1", 7), ("a,b:c%d é", "e2", 0)]);
        assert_eq!(id, "lobby:e1:7,a%2Cb%3Ac%25d %C3%A9:e2:0");
        // `+` is a plus (found by fuzzing: a form-style decode made it a space).
        assert_eq!(format_id([("c+d", "e", 1)]), "c%2Bd:e:1");
        assert_eq!(parse_id("c+d:e:1").unwrap()[0].0, "c+d");
        // An epoch is printable and comma-free: one from a client never breaks the id line.
        assert!(parse_id("lobby:\n\ne1:7").is_none());
        let back = parse_id(&id).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!((back[0].0.as_str(), &*back[0].1.epoch, back[0].1.seq), ("lobby", "e1", 7));
        assert_eq!((back[1].0.as_str(), &*back[1].1.epoch, back[1].1.seq), ("a,b:c%d é", "e2", 0));
        assert!(parse_id("garbage").is_none());
        assert!(parse_id("r:e:notanumber").is_none());
        assert_eq!(parse_id("").unwrap().len(), 0);
    }
}
