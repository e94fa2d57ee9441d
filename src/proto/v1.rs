//! The `c100k.v1` room protocol without IO: JSON text frames, client commands in, replies and
//! room messages out.
//!
//! Commands are parsed with serde into borrowed values: `data` and `id` stay raw JSON text
//! (`RawValue`), so a published payload is stored and relayed exactly as the client wrote it and
//! never re-serialized. Replies are written straight into a caller's buffer; strings go through
//! serde_json's escaper, nothing else allocates.

use std::borrow::Cow;
use std::io::Write;

use serde::Deserialize;
use serde_json::value::RawValue;

/// The WebSocket subprotocol name clients offer to speak this protocol.
pub const SUBPROTOCOL: &str = "c100k.v1";

/// Longest room name, in bytes.
pub const MAX_ROOM_NAME: usize = 256;

/// A position in a room's numbering: the epoch and the last sequence number seen.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Position {
    pub epoch: String,
    pub seq: u64,
}

impl Position {
    /// Parse the `EPOCH:SEQ` form (URL parameters, SSE ids). An epoch is 1 to 64 printable
    /// ASCII characters without `,` (this server writes hex): a client's epoch is written back
    /// into SSE ids while its join is pending, so it must not carry line breaks.
    pub fn parse(s: &str) -> Option<Position> {
        let (epoch, seq) = s.rsplit_once(':')?;
        let printable = epoch.bytes().all(|b| b.is_ascii_graphic() && b != b',');
        if epoch.is_empty() || epoch.len() > 64 || !printable || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Position { epoch: epoch.to_string(), seq: seq.parse().ok()? })
    }
}

/// A client command.
#[derive(Debug)]
pub enum Command<'a> {
    Join { room: Cow<'a, str>, since: Option<Position>, presence: bool },
    Leave { room: Cow<'a, str> },
    Publish { room: Cow<'a, str>, data: &'a RawValue },
    History { room: Cow<'a, str>, since: Option<Position>, limit: Option<u64> },
    Presence { room: Cow<'a, str> },
}

impl Command<'_> {
    pub fn room(&self) -> &str {
        match self {
            Command::Join { room, .. }
            | Command::Leave { room }
            | Command::Publish { room, .. }
            | Command::History { room, .. }
            | Command::Presence { room } => room,
        }
    }
}

/// Error codes of `{"op":"error"}` replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotJoined,
    TooManyRooms,
    RateLimited,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// A command that could not be parsed: its `id` if one was readable, and why.
#[derive(Debug)]
pub struct BadCommand<'a> {
    pub id: Option<&'a RawValue>,
    pub message: String,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    since: Option<Position>,
    presence: Option<bool>,
    limit: Option<u64>,
}

/// A field that is present is `Some`, even when it is `null` (serde would make that `None`).
pub fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// Parse one command (a text message). Returns the command and its `id` (raw JSON, a number or
/// a string), or why it is a `bad_request`.
#[allow(clippy::result_large_err)]
pub fn parse(text: &str) -> Result<(Option<&RawValue>, Command<'_>), BadCommand<'_>> {
    let bad = |id, message: String| BadCommand { id, message };
    let w: Wire<'_> = serde_json::from_str(text).map_err(|e| bad(None, format!("invalid command JSON: {e}")))?;
    let id = match w.id {
        Some(id) if !is_number_or_string(id) => return Err(bad(None, "\"id\" must be a number or a string".into())),
        id => id,
    };
    let op = w.op.ok_or_else(|| bad(id, "missing \"op\"".into()))?;
    let room = match w.room {
        Some(r) => {
            check_room_name(&r).map_err(|m| bad(id, m.to_string()))?;
            r
        }
        None => return Err(bad(id, format!("\"{op}\" needs \"room\""))),
    };
    let cmd = match &*op {
        "join" => Command::Join { room, since: w.since, presence: w.presence.unwrap_or(false) },
        "leave" => Command::Leave { room },
        "publish" => match w.data {
            Some(data) => Command::Publish { room, data },
            None => return Err(bad(id, "\"publish\" needs \"data\"".into())),
        },
        "history" => Command::History { room, since: w.since, limit: w.limit },
        "presence" => Command::Presence { room },
        other => return Err(bad(id, format!("unknown op \"{}\"", other.escape_debug()))),
    };
    Ok((id, cmd))
}

fn is_number_or_string(v: &RawValue) -> bool {
    matches!(v.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9'))
}

/// Room names: 1–256 bytes of UTF-8 without control characters (a NUL or a newline in a name
/// breaks logs, Redis keys and SSE ids).
pub fn check_room_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty room name");
    }
    if name.len() > MAX_ROOM_NAME {
        return Err("room name longer than 256 bytes");
    }
    if name.chars().any(char::is_control) {
        return Err("room name contains a control character");
    }
    Ok(())
}

// ---- encoding (server → client) ----

/// Write a JSON string literal (quoted, escaped).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn open(out: &mut Vec<u8>, op: &str, id: Option<&str>) {
    out.extend_from_slice(b"{\"op\":\"");
    out.extend_from_slice(op.as_bytes());
    out.push(b'"');
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.as_bytes());
    }
}

fn field_str(out: &mut Vec<u8>, name: &str, v: &str) {
    let _ = write!(out, ",\"{name}\":");
    write_str(out, v);
}

/// `{"op":"joined","id":…,"room":R,"epoch":E,"seq":TOP,"recovered":BOOL}`
pub fn write_joined(out: &mut Vec<u8>, id: Option<&str>, room: &str, epoch: &str, seq: u64, recovered: bool) {
    open(out, "joined", id);
    field_str(out, "room", room);
    field_str(out, "epoch", epoch);
    let _ = write!(out, ",\"seq\":{seq},\"recovered\":{recovered}}}");
}

/// `{"op":"left","id":…,"room":R}`
pub fn write_left(out: &mut Vec<u8>, id: Option<&str>, room: &str) {
    open(out, "left", id);
    field_str(out, "room", room);
    out.push(b'}');
}

/// `{"op":"published","id":…,"room":R,"seq":S}`
pub fn write_published(out: &mut Vec<u8>, id: Option<&str>, room: &str, seq: u64) {
    open(out, "published", id);
    field_str(out, "room", room);
    let _ = write!(out, ",\"seq\":{seq}}}");
}

/// `{"op":"history","id":…,"room":R,"epoch":E,"messages":[…]}` with each message's `msg` JSON.
pub fn write_history<'m>(
    out: &mut Vec<u8>,
    id: Option<&str>,
    room: &str,
    epoch: &str,
    messages: impl IntoIterator<Item = &'m [u8]>,
) {
    open(out, "history", id);
    field_str(out, "room", room);
    field_str(out, "epoch", epoch);
    out.extend_from_slice(b",\"messages\":");
    write_json_list(out, messages);
    out.push(b'}');
}

/// A long poll's answer: `{"messages":[…],"next":"EPOCH:SEQ"}`, with `"recovered":false` when
/// the position asked for is gone.
pub fn write_poll<'m>(
    out: &mut Vec<u8>,
    messages: impl IntoIterator<Item = &'m [u8]>,
    epoch: &str,
    seq: u64,
    recovered: bool,
) {
    out.extend_from_slice(b"{\"messages\":");
    write_json_list(out, messages);
    out.extend_from_slice(b",\"next\":");
    write_str(out, &format!("{epoch}:{seq}"));
    if !recovered {
        out.extend_from_slice(b",\"recovered\":false");
    }
    out.push(b'}');
}

/// `[a,b,…]` from JSON texts.
pub fn write_json_list<'m>(out: &mut Vec<u8>, items: impl IntoIterator<Item = &'m [u8]>) {
    out.push(b'[');
    for (i, m) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(m);
    }
    out.push(b']');
}

/// `[{"user":U,"conns":N},…]`
pub fn write_users<'u>(out: &mut Vec<u8>, users: impl IntoIterator<Item = (&'u str, u32)>) {
    out.push(b'[');
    for (i, (user, conns)) in users.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"user\":");
        write_str(out, user);
        let _ = write!(out, ",\"conns\":{conns}}}");
    }
    out.push(b']');
}

/// `{"op":"presence","id":…,"room":R,"users":[…]}`
pub fn write_presence<'u>(
    out: &mut Vec<u8>,
    id: Option<&str>,
    room: &str,
    users: impl IntoIterator<Item = (&'u str, u32)>,
) {
    open(out, "presence", id);
    field_str(out, "room", room);
    out.extend_from_slice(b",\"users\":");
    write_users(out, users);
    out.push(b'}');
}

/// `{"op":"error","id":…,"code":C,"message":"…"}`
pub fn write_error(out: &mut Vec<u8>, id: Option<&str>, code: ErrorCode, message: &str) {
    open(out, "error", id);
    field_str(out, "code", code.as_str());
    field_str(out, "message", message);
    out.push(b'}');
}

/// `{"op":"error","id":…,"room":R,"code":C,"message":"…"}`: the connection is not (or no
/// longer) in room `R` and may join it again.
pub fn write_room_error(out: &mut Vec<u8>, id: Option<&str>, room: &str, code: ErrorCode, message: &str) {
    open(out, "error", id);
    field_str(out, "room", room);
    field_str(out, "code", code.as_str());
    field_str(out, "message", message);
    out.push(b'}');
}

/// The fields of a room message, for encoding.
#[derive(Debug, Clone, Copy)]
pub struct MsgFields<'a> {
    pub room: &'a str,
    pub seq: u64,
    pub epoch: &'a str,
    pub from: &'a str,
    pub ts: u64,
    /// The payload as JSON text.
    pub data: &'a str,
    /// The payload came as a binary WebSocket message; `data` is then its base64 string.
    pub binary: bool,
}

/// `{"op":"msg","room":R,"seq":S,"epoch":E,"from":U,"ts":UNIX_MS,"data":ANY_JSON}`, plus
/// `"binary":true` for a raw member's binary message (whose `data` is base64).
pub fn write_msg(out: &mut Vec<u8>, m: &MsgFields<'_>) {
    open(out, "msg", None);
    field_str(out, "room", m.room);
    let _ = write!(out, ",\"seq\":{}", m.seq);
    field_str(out, "epoch", m.epoch);
    field_str(out, "from", m.from);
    let _ = write!(out, ",\"ts\":{},\"data\":", m.ts);
    out.extend_from_slice(m.data.as_bytes());
    if m.binary {
        out.extend_from_slice(b",\"binary\":true");
    }
    out.push(b'}');
}

/// `{"op":"presence_join","room":R,"user":U}` or `presence_leave`.
pub fn write_presence_event(out: &mut Vec<u8>, joined: bool, room: &str, user: &str) {
    open(out, if joined { "presence_join" } else { "presence_leave" }, None);
    field_str(out, "room", room);
    field_str(out, "user", user);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn v(out: &[u8]) -> Value {
        serde_json::from_slice(out).expect("valid JSON")
    }

    #[test]
    fn commands_parse_with_their_ids() {
        let (id, c) =
            parse(r#"{"op":"join","id":7,"room":"lobby","since":{"epoch":"e1","seq":3},"presence":true}"#).unwrap();
        assert_eq!(id.unwrap().get(), "7");
        assert!(matches!(
            c,
            Command::Join { room, since: Some(Position { epoch, seq: 3 }), presence: true }
                if room == "lobby" && epoch == "e1"
        ));
        let (id, c) = parse(r#"{"op":"publish","room":"r","data":{"a":[1, 2]},"id":"x\"y"}"#).unwrap();
        assert_eq!(id.unwrap().get(), r#""x\"y""#);
        assert!(matches!(c, Command::Publish { data, .. } if data.get() == r#"{"a":[1, 2]}"#), "data kept verbatim");
        assert!(matches!(parse(r#"{"op":"leave","room":"r"}"#).unwrap(), (None, Command::Leave { .. })));
        assert!(matches!(
            parse(r#"{"op":"history","room":"r","limit":5}"#).unwrap().1,
            Command::History { limit: Some(5), since: None, .. }
        ));
        assert!(matches!(parse(r#"{"op":"presence","room":"r","extra":1}"#).unwrap().1, Command::Presence { .. }));
        assert!(matches!(parse(r#"{"op":"publish","room":"r","data":null}"#).unwrap().1, Command::Publish { .. }));
        // Escaped room names decode.
        assert_eq!(parse(r#"{"op":"leave","room":"a\u00e9"}"#).unwrap().1.room(), "aé");
    }

    #[test]
    fn bad_commands_say_why_and_keep_the_id() {
        for (text, has_id, needle) in [
            ("{not json", false, "invalid command JSON"),
            ("[1,2]", false, "invalid command JSON"),
            (r#"{"id":1,"room":"r"}"#, true, "missing \"op\""),
            (r#"{"op":"dance","id":1,"room":"r"}"#, true, "unknown op"),
            (r#"{"op":"join","id":"a"}"#, true, "needs \"room\""),
            (r#"{"op":"publish","id":2,"room":"r"}"#, true, "needs \"data\""),
            (r#"{"op":"join","id":{"x":1},"room":"r"}"#, false, "number or a string"),
            (r#"{"op":"join","room":""}"#, false, "empty room"),
            (r#"{"op":"join","room":"a\u0000b"}"#, false, "control character"),
            (r#"{"op":"join","room":5}"#, false, "invalid command JSON"),
            (r#"{"op":"join","room":"r","since":{"epoch":"e"}}"#, false, "invalid command JSON"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.id.is_some(), has_id, "{text}");
            assert!(e.message.contains(needle), "{text}: {}", e.message);
        }
        let long = format!(r#"{{"op":"join","room":"{}"}}"#, "x".repeat(257));
        assert!(parse(&long).unwrap_err().message.contains("256"));
    }

    #[test]
    fn replies_are_the_documented_json() {
        let mut o = Vec::new();
        write_joined(&mut o, Some("1"), "lo\"bby", "e1", 9, true);
        assert_eq!(v(&o), json!({"op":"joined","id":1,"room":"lo\"bby","epoch":"e1","seq":9,"recovered":true}));
        o.clear();
        write_published(&mut o, None, "r", 4);
        assert_eq!(v(&o), json!({"op":"published","room":"r","seq":4}));
        o.clear();
        write_left(&mut o, Some("\"a\""), "r");
        assert_eq!(v(&o), json!({"op":"left","id":"a","room":"r"}));
        o.clear();
        write_error(&mut o, Some("3"), ErrorCode::NotJoined, "join \"r\" first");
        assert_eq!(v(&o), json!({"op":"error","id":3,"code":"not_joined","message":"join \"r\" first"}));
        o.clear();
        write_room_error(&mut o, None, "r", ErrorCode::Unavailable, "join again");
        assert_eq!(v(&o), json!({"op":"error","room":"r","code":"unavailable","message":"join again"}));
        o.clear();
        write_presence(&mut o, None, "r", [("ann", 2), ("bob", 1)]);
        assert_eq!(
            v(&o),
            json!({"op":"presence","room":"r","users":[{"user":"ann","conns":2},{"user":"bob","conns":1}]})
        );
        o.clear();
        write_presence_event(&mut o, false, "r", "ann");
        assert_eq!(v(&o), json!({"op":"presence_leave","room":"r","user":"ann"}));
    }

    #[test]
    fn messages_and_history() {
        let mut m = Vec::new();
        let f = MsgFields { room: "r", seq: 2, epoch: "e", from: "u", ts: 1700, data: r#"{"t":"hi"}"#, binary: false };
        write_msg(&mut m, &f);
        assert_eq!(v(&m), json!({"op":"msg","room":"r","seq":2,"epoch":"e","from":"u","ts":1700,"data":{"t":"hi"}}));
        let mut b = Vec::new();
        write_msg(&mut b, &MsgFields { data: "\"AAE=\"", binary: true, ..f });
        assert_eq!(v(&b)["binary"], json!(true));
        let mut h = Vec::new();
        write_history(&mut h, Some("5"), "r", "e", [m.as_slice(), b.as_slice()]);
        let hv = v(&h);
        assert_eq!(hv["messages"].as_array().unwrap().len(), 2);
        assert_eq!(hv["messages"][0]["seq"], json!(2));
        h.clear();
        write_history(&mut h, None, "r", "e", std::iter::empty());
        assert_eq!(v(&h), json!({"op":"history","room":"r","epoch":"e","messages":[]}));
    }

    #[test]
    fn positions_parse_from_text() {
        assert_eq!(Position::parse("ab:12"), Some(Position { epoch: "ab".into(), seq: 12 }));
        assert_eq!(Position::parse("a:b:3"), Some(Position { epoch: "a:b".into(), seq: 3 }));
        assert_eq!(Position::parse("nope"), None);
        assert_eq!(Position::parse(":5"), None, "no epoch");
        assert_eq!(Position::parse("e\n:5"), None, "a line break");
        assert_eq!(Position::parse("e:+5"), None, "digits only");
        assert_eq!(Position::parse("e:-1"), None);
    }
}
