//! A room message as a value: numbered by the broker, shared by every member on every loop
//! (`Arc`), and encoded lazily, once per wire format, on first use. The first loop that needs the
//! raw frame or the v1 frame builds it; everyone else sends the same bytes.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::proto::sse;
use crate::proto::v1::{self, MsgFields};
use crate::proto::ws::frame::{self, Data, OpCode};

/// What was published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// JSON text, exactly as the publisher wrote it.
    Json(Box<str>),
    /// A binary message from a raw (seed-mode) member. v1 members see it base64-encoded.
    Binary(Box<[u8]>),
}

impl Payload {
    pub fn len(&self) -> usize {
        match self {
            Payload::Json(s) => s.len(),
            Payload::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The wire forms a message is sent in (and so the kinds of member).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Wire {
    /// Seed mode: the payload itself as a text (JSON) or binary WebSocket frame.
    Raw = 0,
    /// `c100k.v1`: the `msg` envelope as a text frame.
    V1 = 1,
    /// An SSE `msg` event without an id (a stream of several rooms writes its own id first).
    Sse = 2,
    /// An SSE `msg` event with the id of a one-room stream, `ROOM:EPOCH:SEQ`.
    SseOne = 3,
    /// A parked long poll: answered with the v1 JSON in an HTTP response (no encoding of its own).
    Poll = 4,
    /// Seed mode on a permessage-deflate connection: the raw frame compressed (RSV1), or plain
    /// when the message is under `--deflate-min-size`.
    RawDeflate = 5,
    /// `c100k.v1` on a permessage-deflate connection, likewise.
    V1Deflate = 6,
}

impl Wire {
    /// The same wire with permessage-deflate (raw and v1 WebSocket members only).
    pub fn deflated(self) -> Wire {
        match self {
            Wire::Raw => Wire::RawDeflate,
            Wire::V1 => Wire::V1Deflate,
            w => w,
        }
    }
}

/// The WebSocket encodings kept inline (raw and v1); the SSE and deflate forms live behind one
/// pointer, allocated only for rooms with such members (a message stays in its allocator size class).
const ENCODINGS: usize = 2;

/// The encodings few rooms need.
#[derive(Debug, Default)]
struct More {
    /// The SSE event with its one-room id, and the same bytes without the id line (a slice).
    sse: OnceLock<[Bytes; 2]>,
    /// The raw and v1 frames compressed once for every deflate member (RSV1 set).
    deflate: [OnceLock<Bytes>; ENCODINGS],
}

/// A connection on some loop of this process: who published (left out of the fan-out), or
/// where an answer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    pub lp: u16,
    pub key: u32,
    pub gen: u32,
}

/// One numbered message of a room.
#[derive(Debug)]
pub struct RoomMessage {
    pub room: Arc<str>,
    pub epoch: Arc<str>,
    pub seq: u64,
    pub from: Arc<str>,
    /// Unix time in milliseconds, when the broker numbered it.
    pub ts: u64,
    pub payload: Payload,
    /// The publishing connection (none for the server API).
    pub origin: Option<ConnRef>,
    enc: [OnceLock<Bytes>; ENCODINGS],
    more: OnceLock<Box<More>>,
}

impl RoomMessage {
    pub fn new(
        room: Arc<str>,
        epoch: Arc<str>,
        seq: u64,
        from: Arc<str>,
        ts: u64,
        payload: Payload,
        origin: Option<ConnRef>,
    ) -> RoomMessage {
        RoomMessage { room, epoch, seq, from, ts, payload, origin, enc: Default::default(), more: OnceLock::new() }
    }

    /// The whole frame for `wire`, built on first use and shared afterwards.
    /// (Deflate wires get their plain frame here; see [`RoomMessage::frame_for`].)
    pub fn frame(&self, wire: Wire) -> &Bytes {
        let wire = match wire {
            Wire::Poll | Wire::V1Deflate => Wire::V1,
            Wire::RawDeflate => Wire::Raw,
            Wire::SseOne => return &self.sse_forms()[0],
            Wire::Sse => return &self.sse_forms()[1],
            w => w,
        };
        self.enc[wire as usize].get_or_init(|| {
            // Allocated to size: a shared frame keeps its whole allocation alive.
            let (opcode, body): (_, std::borrow::Cow<'_, [u8]>) = match (wire, &self.payload) {
                (Wire::Raw, Payload::Json(s)) => (Data::Text, s.as_bytes().into()),
                (Wire::Raw, Payload::Binary(b)) => (Data::Binary, (&**b).into()),
                _ => (Data::Text, self.v1_json_uncached().into()),
            };
            let mut v = Vec::with_capacity(body.len() + frame::MAX_HEADER_LEN);
            frame::write_frame(&mut v, OpCode::Data(opcode), &body);
            Bytes::from(v)
        })
    }

    /// The bytes for a member on `wire`: [`RoomMessage::frame`], or for a deflate member the
    /// frame compressed once (plain when its payload is under `deflate_min` bytes).
    pub fn frame_for(&self, wire: Wire, deflate_min: usize) -> &Bytes {
        let plain = match wire {
            Wire::RawDeflate => Wire::Raw,
            Wire::V1Deflate => Wire::V1,
            w => return self.frame(w),
        };
        let frame = self.frame(plain);
        let body = frame::payload_of(frame);
        if body.len() < deflate_min {
            return frame;
        }
        self.more().deflate[plain as usize].get_or_init(|| {
            let z = crate::proto::ws::deflate::compress(body);
            let opcode = if frame[0] & 0x0f == 0x2 { Data::Binary } else { Data::Text };
            let mut v = Vec::with_capacity(z.len() + frame::MAX_HEADER_LEN);
            frame::write_compressed_frame(&mut v, OpCode::Data(opcode), &z);
            Bytes::from(v)
        })
    }

    fn more(&self) -> &More {
        self.more.get_or_init(Box::default)
    }

    fn sse_forms(&self) -> &[Bytes; 2] {
        self.more().sse.get_or_init(|| {
            let json = self.v1_json();
            let id = sse::format_id([(&*self.room, &*self.epoch, self.seq)]);
            let mut v = Vec::with_capacity(json.len() + 32 + id.len() + 5);
            sse::write_event(&mut v, Some(&id), "msg", json);
            let with_id = Bytes::from(v);
            let bare = with_id.slice(id.len() + 5..); // after "id: {id}\n"
            [with_id, bare]
        })
    }

    /// The v1 `msg` JSON (the payload of the v1 frame), for history replies.
    pub fn v1_json(&self) -> &[u8] {
        frame::payload_of(self.frame(Wire::V1))
    }

    fn v1_json_uncached(&self) -> Vec<u8> {
        let b64;
        let (data, binary) = match &self.payload {
            Payload::Json(s) => (&**s, false),
            Payload::Binary(b) => {
                b64 = format!("\"{}\"", crate::proto::base64::encode(b));
                (b64.as_str(), true)
            }
        };
        let mut out = Vec::with_capacity(self.payload.len() + 128);
        v1::write_msg(
            &mut out,
            &MsgFields {
                room: &self.room,
                seq: self.seq,
                epoch: &self.epoch,
                from: &self.from,
                ts: self.ts,
                data,
                binary,
            },
        );
        out
    }

    /// Bytes this message holds once its wire forms are built (the payload, the raw frame, the
    /// v1 frame and an SSE event, with their envelopes), for accounting: an upper bound when not
    /// every form is used. A function of the lengths only, so the same before and after
    /// encoding: what is added to a gauge is what is taken off it.
    pub fn size(&self) -> usize {
        const ENVELOPE: usize = 96; // frame headers, field names, seq and ts digits
        std::mem::size_of::<Self>()
            + 4 * self.payload.len()
            + 3 * self.from.len()
            + 2 * self.room.len()
            + 2 * self.epoch.len()
            + 2 * ENVELOPE
    }
}

/// A presence change, shared by every interested member, its v1 frame built once.
#[derive(Debug)]
pub struct PresenceEvent {
    pub room: Arc<str>,
    pub user: Arc<str>,
    pub joined: bool,
    frame: OnceLock<Bytes>,
    sse: OnceLock<Bytes>,
}

impl PresenceEvent {
    pub fn new(room: Arc<str>, user: Arc<str>, joined: bool) -> PresenceEvent {
        PresenceEvent { room, user, joined, frame: OnceLock::new(), sse: OnceLock::new() }
    }

    /// The same as an SSE event (`event: presence_join` / `presence_leave`).
    pub fn sse(&self) -> &Bytes {
        self.sse.get_or_init(|| {
            let json = frame::payload_of(self.frame());
            let mut v = Vec::with_capacity(json.len() + 40);
            let event = if self.joined { "presence_join" } else { "presence_leave" };
            sse::write_event(&mut v, None, event, json);
            Bytes::from(v)
        })
    }

    /// `{"op":"presence_join"|"presence_leave",…}` as a text frame.
    pub fn frame(&self) -> &Bytes {
        self.frame.get_or_init(|| {
            let mut json = Vec::with_capacity(64 + self.room.len() + self.user.len());
            v1::write_presence_event(&mut json, self.joined, &self.room, &self.user);
            let mut v = Vec::with_capacity(json.len() + 4);
            frame::write_frame(&mut v, OpCode::Data(Data::Text), &json);
            Bytes::from(v)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: Payload) -> RoomMessage {
        RoomMessage::new("room".into(), "ep".into(), 7, "ann".into(), 1234, payload, None)
    }

    #[test]
    fn each_wire_form_is_built_once_and_shared() {
        let m = msg(Payload::Json(r#"{"a":1}"#.into()));
        let raw = m.frame(Wire::Raw).clone();
        assert_eq!(&raw[..], b"\x81\x07{\"a\":1}");
        let v1a = m.frame(Wire::V1).as_ptr();
        let v1b = m.frame(Wire::V1).as_ptr();
        assert_eq!(v1a, v1b, "the same bytes, not a second encoding");
        let v: serde_json::Value = serde_json::from_slice(m.v1_json()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op":"msg","room":"room","seq":7,"epoch":"ep","from":"ann","ts":1234,"data":{"a":1}})
        );
        assert!(m.size() > raw.len() + m.frame(Wire::V1).len(), "counts both encodings");
        let fresh = msg(Payload::Json(r#"{"a":1}"#.into()));
        assert_eq!(fresh.size(), m.size(), "the same before encoding");
    }

    #[test]
    fn a_deflate_frame_is_compressed_once_and_small_messages_stay_plain() {
        let m = msg(Payload::Json(format!("{{\"t\":\"{}\"}}", "abc".repeat(200)).into()));
        let z = m.frame_for(Wire::V1Deflate, 256);
        assert_eq!(z[0], 0xc1, "FIN, RSV1, text");
        assert_eq!(z.as_ptr(), m.frame_for(Wire::V1Deflate, 256).as_ptr(), "one compression for every member");
        assert!(z.len() < m.frame(Wire::V1).len() / 4);
        let body = frame::payload_of(z);
        assert_eq!(crate::proto::ws::deflate::inflate(body, 1 << 20).unwrap(), m.v1_json());
        let small = msg(Payload::Json("1".into()));
        assert_eq!(small.frame_for(Wire::RawDeflate, 256).as_ptr(), small.frame(Wire::Raw).as_ptr(), "plain");
        assert_eq!(m.frame_for(Wire::V1, 256).as_ptr(), m.frame(Wire::V1).as_ptr());
    }

    #[test]
    fn binary_payloads_are_base64_for_v1() {
        let m = msg(Payload::Binary(vec![0, 1, 2, 250].into()));
        assert_eq!(&m.frame(Wire::Raw)[..], b"\x82\x04\x00\x01\x02\xfa");
        let v: serde_json::Value = serde_json::from_slice(m.v1_json()).unwrap();
        assert_eq!(v["data"], "AAEC+g==");
        assert_eq!(v["binary"], true);
    }

    #[test]
    fn sse_events_carry_the_v1_json_and_a_one_room_id() {
        let m = msg(Payload::Json("{\"a\":\n1}".into()));
        let one = std::str::from_utf8(m.frame(Wire::SseOne)).unwrap().to_string();
        assert!(one.starts_with("id: room:ep:7\nevent: msg\ndata: {\"op\":\"msg\""), "{one}");
        assert!(one.ends_with("\"data\":{\"a\":\ndata: 1}}\n\n"), "newlines in data split into lines: {one}");
        let bare = std::str::from_utf8(m.frame(Wire::Sse)).unwrap();
        assert!(bare.starts_with("event: msg\n") && !bare.contains("id:"));
        assert_eq!(m.frame(Wire::Poll), m.frame(Wire::V1), "a poll answer uses the v1 JSON");
        let p = PresenceEvent::new("r".into(), "ann".into(), true);
        assert_eq!(
            &p.sse()[..],
            b"event: presence_join\ndata: {\"op\":\"presence_join\",\"room\":\"r\",\"user\":\"ann\"}\n\n"
        );
    }
}
