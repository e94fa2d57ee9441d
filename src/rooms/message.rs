//! A room message as a value: numbered by the broker, shared by every member on every loop
//! (`Arc`), and encoded lazily, once per wire format, on first use. The first loop that needs the
//! raw frame or the v1 frame builds it; everyone else sends the same bytes.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

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

/// The wire forms a message is sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Wire {
    /// Seed mode: the payload itself as a text (JSON) or binary WebSocket frame.
    Raw = 0,
    /// `c100k.v1`: the `msg` envelope as a text frame.
    V1 = 1,
}

const WIRES: usize = 2;

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
    enc: [OnceLock<Bytes>; WIRES],
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
        RoomMessage { room, epoch, seq, from, ts, payload, origin, enc: Default::default() }
    }

    /// The whole frame for `wire`, built on first use and shared afterwards.
    pub fn frame(&self, wire: Wire) -> &Bytes {
        self.enc[wire as usize].get_or_init(|| {
            // Allocated to size: a shared frame keeps its whole allocation alive.
            let (opcode, body): (_, std::borrow::Cow<'_, [u8]>) = match (wire, &self.payload) {
                (Wire::Raw, Payload::Json(s)) => (Data::Text, s.as_bytes().into()),
                (Wire::Raw, Payload::Binary(b)) => (Data::Binary, (&**b).into()),
                (Wire::V1, _) => (Data::Text, self.v1_json_uncached().into()),
            };
            let mut v = Vec::with_capacity(body.len() + frame::MAX_HEADER_LEN);
            frame::write_frame(&mut v, OpCode::Data(opcode), &body);
            Bytes::from(v)
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

    /// Bytes this message holds once its wire forms are built (the payload, the raw frame and
    /// the v1 frame with its envelope), for accounting. A function of the lengths only, so the
    /// same before and after encoding: what is added to a gauge is what is taken off it.
    pub fn size(&self) -> usize {
        const ENVELOPE: usize = 96; // frame headers, field names, seq and ts digits
        std::mem::size_of::<Self>()
            + 3 * self.payload.len()
            + 2 * self.from.len()
            + self.room.len()
            + self.epoch.len()
            + ENVELOPE
    }
}

/// A presence change, shared by every interested member, its v1 frame built once.
#[derive(Debug)]
pub struct PresenceEvent {
    pub room: Arc<str>,
    pub user: Arc<str>,
    pub joined: bool,
    frame: OnceLock<Bytes>,
}

impl PresenceEvent {
    pub fn new(room: Arc<str>, user: Arc<str>, joined: bool) -> PresenceEvent {
        PresenceEvent { room, user, joined, frame: OnceLock::new() }
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
    fn binary_payloads_are_base64_for_v1() {
        let m = msg(Payload::Binary(vec![0, 1, 2, 250].into()));
        assert_eq!(&m.frame(Wire::Raw)[..], b"\x82\x04\x00\x01\x02\xfa");
        let v: serde_json::Value = serde_json::from_slice(m.v1_json()).unwrap();
        assert_eq!(v["data"], "AAEC+g==");
        assert_eq!(v["binary"], true);
    }
}
