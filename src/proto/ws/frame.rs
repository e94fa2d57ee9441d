//! Frame headers and frame encoding (RFC 6455 §5.2), on top of tungstenite's `FrameHeader`.
//!
//! tungstenite parses and formats headers well; what it lacks for a buffer-free data path is an
//! encoder that writes straight into a caller's buffer and the close-payload rules, which live
//! here. Server frames are unmasked, so one encoded frame can be sent to any number of peers.

use std::io::Cursor;

pub use tungstenite::protocol::frame::coding::{CloseCode, Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Which side of the connection we are: decides who must mask (RFC 6455 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts masked frames, sends unmasked ones.
    Server,
    /// Accepts unmasked frames, sends masked ones.
    Client,
}

/// Largest frame header: 2 + 8 (64-bit length) + 4 (mask key).
pub const MAX_HEADER_LEN: usize = 14;

/// Largest control-frame payload (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    /// RSV1..3 as the low three bits (RSV1 = 4).
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes the header occupied in the input.
    pub header_len: usize,
}

/// Why a header is unacceptable; every variant maps to close code 1002 (protocol error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    ReservedOpcode(u8),
    /// The most significant bit of a 64-bit length must be 0 (§5.2).
    LengthOverflow,
    /// A length in a longer encoding than it needs (126 carrying 5): §5.2 says "the minimal
    /// number of bytes MUST be used to encode the length".
    NonMinimalLength,
}

/// Parse a header from the start of `buf`; `Ok(None)` when more bytes are needed.
pub fn parse_header(buf: &[u8]) -> Result<Option<Header>, HeaderError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut cursor = Cursor::new(buf);
    match FrameHeader::parse(&mut cursor) {
        Ok(None) => Ok(None),
        Ok(Some((h, len))) => {
            if len > i64::MAX as u64 {
                return Err(HeaderError::LengthOverflow);
            }
            let minimal = match buf[1] & 0x7f {
                126 => len >= 126,
                127 => len > 0xffff,
                _ => true,
            };
            if !minimal {
                return Err(HeaderError::NonMinimalLength);
            }
            Ok(Some(Header {
                fin: h.is_final,
                rsv: (u8::from(h.rsv1) << 2) | (u8::from(h.rsv2) << 1) | u8::from(h.rsv3),
                opcode: h.opcode,
                mask: h.mask,
                payload_len: len,
                header_len: cursor.position() as usize,
            }))
        }
        // The only error FrameHeader::parse produces on an in-memory cursor is a reserved opcode.
        Err(_) => Err(HeaderError::ReservedOpcode(buf[0] & 0x0f)),
    }
}

/// Append a frame header to `out`. `mask` is Some only for client frames.
#[inline]
pub fn write_header(out: &mut Vec<u8>, fin: bool, opcode: OpCode, len: u64, mask: Option<[u8; 4]>) {
    let header = FrameHeader { is_final: fin, rsv1: false, rsv2: false, rsv3: false, opcode, mask };
    // Writing into a Vec cannot fail.
    let _ = header.format(len, out);
}

/// Append a whole unmasked (server) frame to `out`.
#[inline]
pub fn write_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    write_header(out, true, opcode, payload.len() as u64, None);
    out.extend_from_slice(payload);
}

/// Append a whole unmasked (server) frame carrying a permessage-deflate payload (RSV1 set).
pub fn write_compressed_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    out.reserve(payload.len() + 10);
    let header = FrameHeader { is_final: true, rsv1: true, rsv2: false, rsv3: false, opcode, mask: None };
    let _ = header.format(payload.len() as u64, out);
    out.extend_from_slice(payload);
}

/// The payload of an unmasked frame built by [`write_frame`] (skips its header).
pub fn payload_of(frame: &[u8]) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(header..).unwrap_or(&[])
}

/// Append a whole masked (client) frame to `out`, masking the payload with `key`.
pub fn write_masked_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    out.reserve(payload.len() + MAX_HEADER_LEN);
    write_header(out, true, opcode, payload.len() as u64, Some(key));
    let start = out.len();
    out.extend_from_slice(payload);
    super::mask::apply_mask(&mut out[start..], key, 0);
}

/// Append a frame for `role`: masked with `key` for a client, plain for a server.
pub fn write_frame_as(out: &mut Vec<u8>, role: Role, opcode: OpCode, payload: &[u8], key: [u8; 4]) {
    match role {
        Role::Server => write_frame(out, opcode, payload),
        Role::Client => write_masked_frame(out, opcode, payload, key),
    }
}

/// Build a close payload: 2-byte code then a UTF-8 reason, trimmed to fit a control frame.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + reason.len().min(MAX_CONTROL_PAYLOAD - 2));
    p.extend_from_slice(&code.to_be_bytes());
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    p.extend_from_slice(&reason.as_bytes()[..end]);
    p
}

/// What a received close frame says, after validation (RFC 6455 §5.5.1, §7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseInfo {
    /// Empty payload: no status code.
    NoCode,
    /// A valid code (the reason, if any, was valid UTF-8).
    Code(u16),
}

/// Why a close payload is invalid, with the code to fail the connection with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadClose {
    /// One-byte payload or a code that may not appear on the wire: 1002.
    Protocol,
    /// Reason is not UTF-8: 1007.
    Utf8,
}

/// Validate a (unmasked) close payload.
pub fn parse_close(payload: &[u8]) -> Result<CloseInfo, BadClose> {
    match payload.len() {
        0 => Ok(CloseInfo::NoCode),
        1 => Err(BadClose::Protocol),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !close_code_allowed(code) {
                return Err(BadClose::Protocol);
            }
            std::str::from_utf8(&payload[2..]).map_err(|_| BadClose::Utf8)?;
            Ok(CloseInfo::Code(code))
        }
    }
}

/// Codes a peer may send (§7.4.1, §7.4.2 and the IANA registry): 1000–1003, 1007–1014,
/// 3000–4999. 1004–1006 and 1015 are reserved for local use and never sent.
pub fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Standard close codes used by this crate, by name.
pub mod codes {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL: u16 = 1002;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    /// A service the connection needs is unavailable for now (the rooms broker).
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::protocol::frame::Frame;

    #[test]
    fn server_frame_matches_tungstenite() {
        for len in [0usize, 5, 125, 126, 200, 65535, 65536, 70000] {
            let payload = vec![b'x'; len];
            let mut ours = Vec::new();
            write_frame(&mut ours, OpCode::Data(Data::Text), &payload);
            let mut theirs = Vec::new();
            Frame::message(payload.clone(), OpCode::Data(Data::Text), true).format(&mut theirs).unwrap();
            assert_eq!(ours, theirs, "len {len}");
        }
    }

    #[test]
    fn payload_of_skips_every_header_size() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![b'y'; len];
            let mut f = Vec::new();
            write_frame(&mut f, OpCode::Data(Data::Text), &payload);
            assert_eq!(payload_of(&f), &payload[..], "len {len}");
        }
    }

    #[test]
    fn parse_roundtrip_masked_and_partial() {
        let mut buf = Vec::new();
        write_masked_frame(&mut buf, OpCode::Data(Data::Binary), &[9; 300], [1, 2, 3, 4]);
        // Every strict prefix of the header is "need more".
        for cut in 0..8 {
            assert_eq!(parse_header(&buf[..cut]), Ok(None), "cut {cut}");
        }
        let h = parse_header(&buf).unwrap().unwrap();
        assert_eq!(h.header_len, 8);
        assert_eq!(h.payload_len, 300);
        assert_eq!(h.mask, Some([1, 2, 3, 4]));
        assert!(h.fin);
        assert_eq!(h.rsv, 0);
        let mut body = buf[8..].to_vec();
        crate::proto::ws::mask::apply_mask(&mut body, [1, 2, 3, 4], 0);
        assert_eq!(body, vec![9; 300]);
    }

    #[test]
    fn rejects_reserved_opcodes_and_huge_lengths() {
        assert_eq!(parse_header(&[0x83, 0x80, 0, 0, 0, 0]), Err(HeaderError::ReservedOpcode(3)));
        assert_eq!(parse_header(&[0x8b, 0x80, 0, 0, 0, 0]), Err(HeaderError::ReservedOpcode(0xb)));
        let mut big = vec![0x82, 0xff];
        big.extend_from_slice(&u64::MAX.to_be_bytes());
        big.extend_from_slice(&[0; 4]);
        assert_eq!(parse_header(&big), Err(HeaderError::LengthOverflow));
    }

    #[test]
    fn lengths_must_use_their_minimal_encoding() {
        // 126 carrying 5, 127 carrying 200 and 65535: refused; the boundaries are fine.
        assert_eq!(parse_header(&[0x82, 0xfe, 0, 5, 0, 0, 0, 0]), Err(HeaderError::NonMinimalLength));
        let mut long = vec![0x82, 0xff];
        long.extend_from_slice(&200u64.to_be_bytes());
        long.extend_from_slice(&[0; 4]);
        assert_eq!(parse_header(&long), Err(HeaderError::NonMinimalLength));
        long[2..10].copy_from_slice(&65535u64.to_be_bytes());
        assert_eq!(parse_header(&long), Err(HeaderError::NonMinimalLength));
        long[2..10].copy_from_slice(&65536u64.to_be_bytes());
        assert_eq!(parse_header(&long).unwrap().unwrap().payload_len, 65536);
        assert_eq!(parse_header(&[0x82, 0xfe, 0, 126, 0, 0, 0, 0]).unwrap().unwrap().payload_len, 126);
    }

    #[test]
    fn rsv_bits_are_reported() {
        let h = parse_header(&[0xc1, 0x80, 0, 0, 0, 0]).unwrap().unwrap();
        assert_eq!(h.rsv, 4);
        let h = parse_header(&[0x91, 0x80, 0, 0, 0, 0]).unwrap().unwrap();
        assert_eq!(h.rsv, 1);
    }

    #[test]
    fn close_payload_rules() {
        assert_eq!(parse_close(&[]), Ok(CloseInfo::NoCode));
        assert_eq!(parse_close(&[3]), Err(BadClose::Protocol));
        assert_eq!(parse_close(&close_payload(1000, "bye")), Ok(CloseInfo::Code(1000)));
        assert_eq!(parse_close(&close_payload(4999, "")), Ok(CloseInfo::Code(4999)));
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
            assert_eq!(parse_close(&bad.to_be_bytes()), Err(BadClose::Protocol), "{bad}");
        }
        assert_eq!(parse_close(&[0x03, 0xe8, 0xff]), Err(BadClose::Utf8));
    }

    #[test]
    fn close_reason_is_trimmed_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let p = close_payload(1000, &reason);
        assert!(p.len() <= MAX_CONTROL_PAYLOAD);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
