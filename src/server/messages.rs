//! What a WebSocket message means on each route: echoed (`/echo`), relayed as a room message
//! (seed mode), or a `c100k.v1` command. Immediate answers (echoes, errors, `left`) go into the
//! caller's reply buffer; answers that need the broker arrive later as broker events.

use slab::Slab;

use super::conn::{Conn, Route};
use super::metrics::LoopMetrics;
use super::rooms::{Published, Rooms};
use crate::broker::Query;
use crate::proto::v1::{self, Command, ErrorCode};
use crate::proto::ws::frame::{self, codes, Data, OpCode};
use crate::rooms::message::{ConnRef, Payload};

/// What the connection should do after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    Continue,
    /// Start the closing handshake with this code.
    Close(u16, &'static str),
}

/// Everything a message handler touches.
pub struct Ctx<'a> {
    pub lp: usize,
    pub conns: &'a mut Slab<Conn>,
    pub rooms: &'a mut Rooms,
    /// Replies to the connection being served (written after its input is processed).
    pub wbuf: &'a mut Vec<u8>,
    pub m: &'a LoopMetrics,
    pub now_ms: u32,
    pub history_size: usize,
    /// Echoes under this size go uncompressed on deflate connections.
    pub deflate_min: usize,
}

/// Append a text frame holding what `write` produces.
fn text_frame(wbuf: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let mut json = Vec::with_capacity(128);
    write(&mut json);
    frame::write_frame(wbuf, OpCode::Data(Data::Text), &json);
}

/// The seed mode's error message: `{"error": "..."}`.
fn raw_error(wbuf: &mut Vec<u8>, message: &str) {
    text_frame(wbuf, |o| {
        o.extend_from_slice(b"{\"error\":");
        v1::write_str(o, message);
        o.push(b'}');
    });
}

pub fn on_message(cx: &mut Ctx<'_>, key: usize, text: bool, data: &[u8]) -> After {
    match cx.conns[key].route {
        Route::Echo => {
            let opcode = OpCode::Data(if text { Data::Text } else { Data::Binary });
            if cx.conns[key].sess.deflate() && data.len() >= cx.deflate_min {
                frame::write_compressed_frame(cx.wbuf, opcode, &crate::proto::ws::deflate::compress(data));
            } else {
                frame::write_frame(cx.wbuf, opcode, data);
            }
            cx.m.messages_sent_total.inc();
            After::Continue
        }
        Route::Raw => raw(cx, key, text, data),
        Route::V1 => v1_command(cx, key, text, data),
        Route::Http | Route::KeepAlive | Route::Sse | Route::Poll | Route::H2 => After::Continue,
    }
}

fn raw(cx: &mut Ctx<'_>, key: usize, text: bool, data: &[u8]) -> After {
    let payload = if text {
        if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(data) {
            cx.m.invalid_json_total.inc();
            raw_error(cx.wbuf, &format!("invalid JSON, not relayed: {e}"));
            return After::Continue;
        }
        // The decoder has checked the UTF-8.
        Payload::Json(String::from_utf8_lossy(data).into())
    } else {
        Payload::Binary(data.into())
    };
    let Some(room) = cx.conns[key].peer.as_ref().and_then(|p| p.seats.first()).and_then(|s| cx.rooms.name(s.room))
    else {
        return After::Continue;
    };
    match cx.rooms.publish(cx.conns, key, &room, payload, None, cx.now_ms) {
        Published::Sent => {
            cx.m.publishes_total.inc();
            After::Continue
        }
        Published::Refused((code, message)) => {
            if code == ErrorCode::RateLimited {
                cx.m.rate_limited_total.inc();
            }
            raw_error(cx.wbuf, &message);
            After::Continue
        }
        Published::Flooding => flooding(cx.m),
    }
}

fn flooding(m: &LoopMetrics) -> After {
    m.rate_limited_total.inc();
    m.flood_closes_total.inc();
    After::Close(codes::POLICY, "publishing over --max-publish-rate")
}

fn v1_error(cx: &mut Ctx<'_>, id: Option<&str>, code: ErrorCode, message: &str) {
    cx.m.v1_errors_total.inc();
    if code == ErrorCode::RateLimited {
        cx.m.rate_limited_total.inc();
    }
    text_frame(cx.wbuf, |o| v1::write_error(o, id, code, message));
}

fn v1_command(cx: &mut Ctx<'_>, key: usize, text: bool, data: &[u8]) -> After {
    let Ok(text_data) = std::str::from_utf8(data).map_err(|_| ()).and_then(|t| if text { Ok(t) } else { Err(()) })
    else {
        v1_error(cx, None, ErrorCode::BadRequest, "c100k.v1 commands are JSON text messages");
        return After::Continue;
    };
    let (id, cmd) = match v1::parse(text_data) {
        Ok(x) => x,
        Err(bad) => {
            let id = bad.id.map(|i| i.get());
            v1_error(cx, id, ErrorCode::BadRequest, &bad.message);
            return After::Continue;
        }
    };
    let id_text = id.map(|i| i.get());
    let tag = || id_text.map(Box::<str>::from);
    match cmd {
        Command::Join { room, since, presence } => {
            if let Err((code, msg)) = cx.rooms.join(cx.conns, key, &room, since, presence, tag()) {
                v1_error(cx, id_text, code, &msg);
            }
        }
        Command::Leave { room } => {
            if cx.rooms.leave(cx.conns, key, &room, true) {
                cx.m.rooms.set(cx.rooms.len() as u64);
                text_frame(cx.wbuf, |o| v1::write_left(o, id_text, &room));
            } else {
                v1_error(cx, id_text, ErrorCode::NotJoined, &format!("not in room {room:?}"));
            }
        }
        Command::Publish { room, data } => {
            let payload = Payload::Json(data.get().into());
            match cx.rooms.publish(cx.conns, key, &room, payload, Some(tag()), cx.now_ms) {
                Published::Sent => cx.m.publishes_total.inc(),
                Published::Refused((code, msg)) => v1_error(cx, id_text, code, &msg),
                Published::Flooding => return flooding(cx.m),
            }
        }
        Command::History { room, since, limit } => {
            if let Some(q) = query(cx, key, &room, id_text) {
                let limit = limit.map_or(cx.history_size, |l| (l as usize).min(cx.history_size));
                cx.rooms.broker().clone().history(q, since, limit);
            }
        }
        Command::Presence { room } => {
            if let Some(q) = query(cx, key, &room, id_text) {
                cx.rooms.broker().clone().presence(q);
            }
        }
    }
    After::Continue
}

/// A history or presence query for `room`, if the token allows the room.
fn query<'r>(cx: &mut Ctx<'_>, key: usize, room: &'r str, id: Option<&str>) -> Option<Query<'r>> {
    let c = &cx.conns[key];
    let allowed = c.peer.as_ref().is_some_and(|p| p.identity.may_join(room));
    if !allowed {
        v1_error(cx, id, ErrorCode::Forbidden, &format!("this token may not read room {room:?}"));
        return None;
    }
    let to = ConnRef { lp: cx.lp as u16, key: key as u32, gen: c.gen };
    Some(Query { lp: cx.lp, to, id: id.map(Box::from), room })
}
