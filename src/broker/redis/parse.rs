//! Reading the scripts' answers and the messages published on a room's channel.

use std::sync::Arc;

use redis::Value;

use crate::rooms::message::{ConnRef, Payload, RoomMessage};

/// A message read from the channel or the stream.
pub type Msg = Arc<RoomMessage>;

/// A catch-up's answer: the room's epoch (none: its data is gone), its top, the entries after
/// the position asked for.
pub type CatchUp = (Option<String>, u64, Vec<Msg>);

fn bulk(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(n) => Some(*n),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        _ => None,
    }
}

fn text(v: &Value) -> Option<String> {
    bulk(v).map(|b| String::from_utf8_lossy(b).into_owned())
}

fn array(v: Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) => Some(a),
        Value::Nil => Some(Vec::new()),
        _ => None,
    }
}

fn bad(what: &str) -> String {
    format!("unexpected answer from Redis ({what})")
}

/// Stream entries `[[id, [field, value, …]], …]` as room messages (of a not yet known epoch).
fn entries(v: Value, room: &Arc<str>, epoch: &Arc<str>) -> Result<Vec<Msg>, String> {
    let mut out = Vec::new();
    for e in array(v).ok_or_else(|| bad("entries"))? {
        let mut e = array(e).ok_or_else(|| bad("entry"))?.into_iter();
        let id = e.next().as_ref().and_then(text).ok_or_else(|| bad("entry id"))?;
        let seq: u64 = id.split('-').next().and_then(|s| s.parse().ok()).ok_or_else(|| bad("entry id"))?;
        let fields = e.next().and_then(array).ok_or_else(|| bad("entry fields"))?;
        let (mut from, mut ts, mut bin, mut data) = (String::new(), 0u64, false, Vec::new());
        for kv in fields.chunks(2) {
            let (Some(k), Some(v)) = (kv.first().and_then(bulk), kv.get(1)) else { continue };
            match k {
                b"f" => from = text(v).unwrap_or_default(),
                b"t" => ts = int(v).unwrap_or(0) as u64,
                b"b" => bin = bulk(v) == Some(b"1"),
                b"d" => data = bulk(v).unwrap_or_default().to_vec(),
                _ => {}
            }
        }
        let payload =
            if bin { Payload::Binary(data.into()) } else { Payload::Json(String::from_utf8_lossy(&data).into()) };
        out.push(Arc::new(RoomMessage::new(room.clone(), epoch.clone(), seq, from.into(), ts, payload, None)));
    }
    Ok(out)
}

/// `join.lua`: the room's epoch and top, the history asked for, and how many nodes have members
/// in the room.
pub fn parse_join(v: Value, room: &Arc<str>) -> Result<Joined, String> {
    let mut a = array(v).ok_or_else(|| bad("join"))?.into_iter();
    let epoch = a.next().as_ref().and_then(text).ok_or_else(|| bad("join epoch"))?;
    let top = a.next().as_ref().and_then(int).ok_or_else(|| bad("join seq"))? as u64;
    let e: Arc<str> = epoch.as_str().into();
    let msgs = entries(a.next().unwrap_or(Value::Nil), room, &e)?;
    let nodes = a.next().as_ref().and_then(int).unwrap_or(1).clamp(1, i64::from(u32::MAX)) as u32;
    Ok(Joined { epoch, top, msgs, nodes })
}

/// [`parse_join`]'s answer.
#[derive(Debug)]
pub struct Joined {
    pub epoch: String,
    pub top: u64,
    pub msgs: Vec<Msg>,
    pub nodes: u32,
}

pub fn parse_catchup(v: Value, room: &Arc<str>) -> Result<CatchUp, String> {
    let mut a = array(v).ok_or_else(|| bad("catch-up"))?.into_iter();
    let epoch = a.next().as_ref().and_then(text);
    let top = a.next().as_ref().and_then(int).unwrap_or(0).max(0) as u64;
    let Some(e) = &epoch else { return Ok((None, 0, Vec::new())) };
    let e: Arc<str> = e.as_str().into();
    let msgs = entries(a.next().unwrap_or(Value::Nil), room, &e)?;
    Ok((epoch, top, msgs))
}

pub fn parse_published(v: Value) -> Result<(String, i64, i64), String> {
    let a = array(v).ok_or_else(|| bad("publish"))?;
    let epoch = a.first().and_then(text).ok_or_else(|| bad("publish epoch"))?;
    let seq = a.get(1).and_then(int).ok_or_else(|| bad("publish seq"))?;
    Ok((epoch, seq, a.get(2).and_then(int).unwrap_or(0)))
}

pub fn parse_history(v: Value, room: &Arc<str>) -> Result<(String, Vec<Msg>), String> {
    let mut a = array(v).ok_or_else(|| bad("history"))?.into_iter();
    let epoch = a.next().as_ref().and_then(text).ok_or_else(|| bad("history epoch"))?;
    let e: Arc<str> = epoch.as_str().into();
    let msgs = entries(a.next().unwrap_or(Value::Nil), room, &e)?;
    Ok((epoch, msgs))
}

pub fn parse_presence(v: Value) -> Result<Vec<(Arc<str>, u32)>, String> {
    let a = array(v).ok_or_else(|| bad("presence"))?;
    Ok(a.chunks(2).filter_map(|kv| Some((text(kv.first()?)?.into(), int(kv.get(1)?)? as u32))).collect())
}

/// `alive.lua`: whether the node was still alive, and the nodes given up for dead.
pub fn parse_alive(v: Value) -> Result<Alive, String> {
    let mut a = array(v).ok_or_else(|| bad("alive"))?.into_iter();
    let ok = a.next().as_ref().and_then(int).ok_or_else(|| bad("alive"))? == 1;
    let live = a.next().as_ref().and_then(int).ok_or_else(|| bad("alive"))?;
    Ok(Alive {
        ok,
        live: live.clamp(0, i64::from(u32::MAX)) as u32,
        dead: a.filter_map(|n| text(&n)).map(Arc::from).collect(),
    })
}

/// `alive.lua`'s answer.
#[derive(Debug, PartialEq, Eq)]
pub struct Alive {
    /// The node was alive (else it was given up for dead and takes the candidate name).
    pub ok: bool,
    /// Nodes alive in the deployment.
    pub live: u32,
    /// Nodes given up for dead, for the sweeps.
    pub dead: Vec<Arc<str>>,
}

/// `sweep.lua`: the number of nodes with members in the room.
pub fn parse_swept(v: Value) -> Result<u32, String> {
    let a = array(v).ok_or_else(|| bad("sweep"))?;
    let n = a.get(1).and_then(int).ok_or_else(|| bad("sweep"))?;
    Ok(n.clamp(0, i64::from(u32::MAX)) as u32)
}

/// A presence change published on a room's channel: `P\n+\nuser` (joined) or `P\n-\nuser`.
pub fn parse_presence_event(p: &[u8]) -> Option<(bool, Arc<str>)> {
    let rest = p.strip_prefix(b"P\n")?;
    let joined = match rest.first()? {
        b'+' => true,
        b'-' => false,
        _ => return None,
    };
    let user = rest.get(2..)?;
    Some((joined, String::from_utf8_lossy(user).into()))
}

/// A published message: `M\nepoch\nseq\nfrom\nts\nbinary\norigin\ndata`.
pub fn parse_message(p: &[u8], room: &Arc<str>, node: &str) -> Option<RoomMessage> {
    let mut parts = p.splitn(8, |&b| b == b'\n');
    if parts.next()? != b"M" {
        return None;
    }
    let epoch: Arc<str> = std::str::from_utf8(parts.next()?).ok()?.into();
    let seq: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let from: Arc<str> = String::from_utf8_lossy(parts.next()?).into();
    let ts: u64 = std::str::from_utf8(parts.next()?).ok()?.parse().ok()?;
    let bin = parts.next()? == b"1";
    let origin = std::str::from_utf8(parts.next()?).ok()?;
    let data = parts.next().unwrap_or_default();
    // The publisher is left out only on its own node (it is identified there).
    let origin = {
        let mut o = origin.split(':');
        match (o.next(), o.next(), o.next(), o.next()) {
            (Some(n), Some(lp), Some(key), Some(gen)) if n == node => {
                Some(ConnRef { lp: lp.parse().ok()?, key: key.parse().ok()?, gen: gen.parse().ok()? })
            }
            _ => None,
        }
    };
    let payload = if bin { Payload::Binary(data.into()) } else { Payload::Json(String::from_utf8_lossy(data).into()) };
    Some(RoomMessage::new(room.clone(), epoch, seq, from, ts, payload, origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alive_and_sweep_answers_parse() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![Value::Int(0), Value::Int(3), b("n1"), b("n2")]);
        assert_eq!(parse_alive(v), Ok(Alive { ok: false, live: 3, dead: vec![Arc::from("n1"), Arc::from("n2")] }));
        assert_eq!(
            parse_alive(Value::Array(vec![Value::Int(1), Value::Int(1)])),
            Ok(Alive { ok: true, live: 1, dead: vec![] })
        );
        assert!(parse_alive(Value::Array(vec![Value::Int(1)])).is_err());
        assert!(parse_alive(Value::Int(1)).is_err());
        assert_eq!(parse_swept(Value::Array(vec![Value::Int(3), Value::Int(2)])), Ok(2));
        assert!(parse_swept(Value::Array(vec![Value::Int(3)])).is_err());
    }

    #[test]
    fn presence_events_parse() {
        assert_eq!(parse_presence_event(b"P\n+\nann"), Some((true, "ann".into())));
        assert_eq!(parse_presence_event(b"P\n-\na\nb"), Some((false, "a\nb".into())));
        assert_eq!(parse_presence_event(b"P\n?\nx"), None);
        assert_eq!(parse_presence_event(b"M\n"), None);
    }

    #[test]
    fn published_messages_parse_and_know_their_origin_only_at_home() {
        let room: Arc<str> = "r".into();
        let p = b"M\nep\n7\nann\n1700\n0\nnode1:1:42:9\n{\"a\":\n1}";
        let m = parse_message(p, &room, "node1").unwrap();
        assert_eq!((m.seq, &*m.epoch, &*m.from, m.ts), (7, "ep", "ann", 1700));
        assert_eq!(m.payload, Payload::Json("{\"a\":\n1}".into()), "data may hold newlines");
        assert_eq!(m.origin, Some(ConnRef { lp: 1, key: 42, gen: 9 }));
        assert_eq!(parse_message(p, &room, "node2").unwrap().origin, None);
        assert!(parse_message(b"M\nep\nx\n", &room, "n").is_none());
        let b = parse_message(b"M\nep\n1\nu\n1\n1\n\n\x00\x01", &room, "n").unwrap();
        assert_eq!(b.payload, Payload::Binary(vec![0, 1].into()));
    }
}
