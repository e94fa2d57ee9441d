//! Frame-to-message decoder (RFC 6455 §5), sans-IO and buffer-free while idle.
//!
//! Input is the caller's read buffer, unmasked in place. A message that arrives whole in one frame
//! is handed out as a slice of that buffer (no copy, no allocation). Only what cannot be finished
//! in the current buffer is kept: an incomplete header (≤ 14 bytes), the rest of a frame's length
//! and mask phase, a control payload in progress (≤ 125 bytes), and a fragmented or partially
//! received data message. All of it lives in one `Box` that is freed when the message completes.

use super::frame::{self, Control, Data, Header, HeaderError, OpCode, Role, MAX_HEADER_LEN};
use super::mask::apply_mask;
use super::utf8::Utf8Stream;

/// A protocol violation: the close code to fail the connection with (§7.4.1) and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtoError {
    pub code: u16,
    pub reason: &'static str,
}

impl ProtoError {
    const fn protocol(reason: &'static str) -> Self {
        ProtoError { code: frame::codes::PROTOCOL, reason }
    }
}

/// A payload: borrowed from the read buffer when the frame was whole, owned when assembled.
#[derive(Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Payload<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Payload::Borrowed(b) => b,
            Payload::Owned(v) => v,
        }
    }
}

/// One decoded unit: a whole data message or a control frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete text message, already checked to be UTF-8.
    Text(Payload<'a>),
    Binary(Payload<'a>),
    Ping(Payload<'a>),
    Pong(Payload<'a>),
    /// The raw close payload (validated by the caller, which decides the reply).
    Close(Payload<'a>),
    /// A whole permessage-deflate message (RSV1 on its first frame), still compressed: the caller
    /// inflates it with its limit, then checks a text message's UTF-8.
    Compressed {
        text: bool,
        payload: Payload<'a>,
    },
}

/// Decoder limits and role.
#[derive(Debug, Clone, Copy)]
pub struct DecodeConfig {
    pub role: Role,
    /// Largest message (sum of its fragments) accepted; larger ones fail with 1009.
    pub max_message: usize,
    /// permessage-deflate was negotiated: RSV1 on a message's first frame marks it compressed.
    pub deflate: bool,
}

/// Decoder state. `None` between messages: an idle connection costs one pointer here.
#[derive(Debug, Default)]
pub struct Decoder {
    st: Option<Box<Partial>>,
}

#[derive(Debug, Default)]
struct Partial {
    hdr: [u8; MAX_HEADER_LEN],
    hdr_len: u8,
    /// The frame whose payload is still arriving.
    run: Option<Run>,
    /// A data message being assembled (fragmented, or one frame split over reads).
    msg: Option<Message>,
    /// A control frame's payload split over reads.
    ctrl: Vec<u8>,
    /// See [`Decoder::stash`].
    stash: Vec<u8>,
    /// When the incomplete input began (the caller's clock; see [`Decoder::mark_started`]).
    since: u32,
}

#[derive(Debug, Clone, Copy)]
struct Run {
    opcode: OpCode,
    fin: bool,
    mask: Option<[u8; 4]>,
    phase: u8,
    remaining: u64,
}

#[derive(Debug)]
struct Message {
    text: bool,
    /// Compressed (permessage-deflate): UTF-8 is checked once inflated, not here.
    compressed: bool,
    data: Vec<u8>,
    utf8: Utf8Stream,
}

/// RSV1 in [`Header::rsv`] (RSV1..3 as the low three bits).
const RSV1: u8 = 4;

/// Initial capacity for a message assembled over reads; a peer announcing a huge frame must send
/// the bytes before we spend the memory.
const INITIAL_ASSEMBLY: usize = 16 * 1024;

impl Partial {
    fn is_empty(&self) -> bool {
        self.hdr_len == 0 && self.run.is_none() && self.msg.is_none() && self.ctrl.is_empty() && self.stash.is_empty()
    }
}

impl Decoder {
    /// True when no partial frame or message is held (no heap memory in use).
    pub fn is_idle(&self) -> bool {
        self.st.is_none()
    }

    /// Heap memory held for incomplete input (what a process-wide input budget counts).
    pub fn buffered(&self) -> usize {
        self.st.as_ref().map_or(0, |p| {
            std::mem::size_of::<Partial>()
                + p.ctrl.capacity()
                + p.stash.capacity()
                + p.msg.as_ref().map_or(0, |m| m.data.capacity())
        })
    }

    /// Record `now` as the start of the incomplete input just begun.
    pub fn mark_started(&mut self, now: u32) {
        if let Some(p) = self.st.as_mut() {
            p.since = now;
        }
    }

    /// When the incomplete frame or message began, if one is held (bytes merely stashed for
    /// later do not count: they are complete as far as the peer is concerned).
    pub fn started(&self) -> Option<u32> {
        self.st
            .as_ref()
            .filter(|p| p.hdr_len > 0 || p.run.is_some() || p.msg.is_some() || !p.ctrl.is_empty())
            .map(|p| p.since)
    }

    /// Decode the next frame or message from the front of `rest`, splitting the consumed bytes
    /// off it. Returns `Ok(None)` once `rest` is used up (an incomplete tail is kept internally).
    /// Masked payloads are unmasked in place. Returned payloads borrow the consumed part, so the
    /// caller can keep decoding from `rest` while it holds them.
    pub fn decode<'a>(&mut self, rest: &mut &'a mut [u8], cfg: &DecodeConfig) -> Result<Option<Frame<'a>>, ProtoError> {
        let result = self.decode_inner(rest, cfg);
        if result.is_err() {
            // After a violation the stream cannot be trusted: drop what is left and held.
            *rest = &mut [];
            self.st = None;
        }
        result
    }

    fn decode_inner<'a>(
        &mut self,
        rest: &mut &'a mut [u8],
        cfg: &DecodeConfig,
    ) -> Result<Option<Frame<'a>>, ProtoError> {
        loop {
            if rest.is_empty() {
                self.settle();
                return Ok(None);
            }
            // 1. The payload of a frame already under way.
            if let Some(out) = self.continue_run(rest)? {
                self.settle();
                return Ok(Some(out));
            }
            if rest.is_empty() {
                continue;
            }
            // 2. A new header.
            let Some(h) = self.next_header(rest)? else {
                continue; // header incomplete: everything consumed
            };
            self.check_header(&h, cfg)?;
            // 3. Its payload.
            let len = h.payload_len as usize; // bounded by max_message or 125 after the checks
            if rest.len() >= len {
                let payload = take(rest, len);
                if let Some(key) = h.mask {
                    apply_mask(payload, key, 0);
                }
                if let Some(out) = self.complete_frame(&h, payload)? {
                    self.settle();
                    return Ok(Some(out));
                }
            } else {
                let avail = rest.len();
                let chunk = take(rest, avail);
                let phase = match h.mask {
                    Some(key) => apply_mask(chunk, key, 0) as u8,
                    None => 0,
                };
                let p = self.st.get_or_insert_with(Box::default);
                p.run =
                    Some(Run { opcode: h.opcode, fin: h.fin, mask: h.mask, phase, remaining: (len - avail) as u64 });
                match h.opcode {
                    OpCode::Control(_) => p.ctrl.extend_from_slice(chunk),
                    _ => {
                        let m = p.msg.get_or_insert_with(|| Message {
                            text: h.opcode == OpCode::Data(Data::Text),
                            compressed: h.rsv & RSV1 != 0,
                            data: Vec::with_capacity(len.min(INITIAL_ASSEMBLY)),
                            utf8: Utf8Stream::default(),
                        });
                        append(m, chunk, len - avail)?;
                    }
                }
            }
        }
    }

    /// Feed bytes to a frame whose payload is incomplete. Returns an event when that frame (and,
    /// for data, the message) completes.
    fn continue_run<'a>(&mut self, rest: &mut &'a mut [u8]) -> Result<Option<Frame<'a>>, ProtoError> {
        let Some(p) = self.st.as_deref_mut() else {
            return Ok(None);
        };
        let Some(run) = p.run.as_mut() else {
            return Ok(None);
        };
        let n = (run.remaining.min(rest.len() as u64)) as usize;
        let chunk = take(rest, n);
        if let Some(key) = run.mask {
            run.phase = apply_mask(chunk, key, run.phase as usize) as u8;
        }
        run.remaining -= n as u64;
        let run = *run;
        match run.opcode {
            OpCode::Control(_) => p.ctrl.extend_from_slice(chunk),
            _ => {
                if let Some(m) = p.msg.as_mut() {
                    append(m, chunk, run.remaining as usize)?;
                }
            }
        }
        if run.remaining > 0 {
            return Ok(None);
        }
        p.run = None;
        match run.opcode {
            OpCode::Control(c) => Ok(control_frame(c, Payload::Owned(std::mem::take(&mut p.ctrl)))),
            _ if run.fin => finish_message(p.msg.take()).map(Some),
            _ => Ok(None),
        }
    }

    /// Parse the next header, combining bytes held from the previous read when needed.
    fn next_header(&mut self, rest: &mut &mut [u8]) -> Result<Option<Header>, ProtoError> {
        let held = self.st.as_ref().map_or(0, |p| p.hdr_len as usize);
        if held == 0 {
            return match frame::parse_header(rest).map_err(header_error)? {
                Some(h) => {
                    take(rest, h.header_len);
                    Ok(Some(h))
                }
                None => {
                    let n = rest.len(); // < MAX_HEADER_LEN, or parse would have finished
                    let p = self.st.get_or_insert_with(Box::default);
                    p.hdr[..n].copy_from_slice(take(rest, n));
                    p.hdr_len = n as u8;
                    Ok(None)
                }
            };
        }
        let p = self.st.as_deref_mut().expect("held > 0 implies state");
        let add = (MAX_HEADER_LEN - held).min(rest.len());
        p.hdr[held..held + add].copy_from_slice(&rest[..add]);
        match frame::parse_header(&p.hdr[..held + add]).map_err(header_error)? {
            Some(h) => {
                take(rest, h.header_len - held);
                p.hdr_len = 0;
                Ok(Some(h))
            }
            None => {
                take(rest, add);
                p.hdr_len = (held + add) as u8;
                Ok(None)
            }
        }
    }

    /// RFC 6455 §5.2–§5.5 header rules, plus the message size limit (checked before any payload
    /// is buffered).
    fn check_header(&self, h: &Header, cfg: &DecodeConfig) -> Result<(), ProtoError> {
        let rsv1 = h.rsv & RSV1 != 0;
        if h.rsv & !RSV1 != 0 || (rsv1 && !cfg.deflate) {
            return Err(ProtoError::protocol("reserved bits set without a negotiated extension"));
        }
        if rsv1 && matches!(h.opcode, OpCode::Control(_) | OpCode::Data(Data::Continue)) {
            // RFC 7692 §6.1: only a message's first frame says it is compressed.
            return Err(ProtoError::protocol("RSV1 on a control or continuation frame"));
        }
        match (cfg.role, h.mask.is_some()) {
            (Role::Server, false) => return Err(ProtoError::protocol("client frame is not masked")),
            (Role::Client, true) => return Err(ProtoError::protocol("server frame is masked")),
            _ => {}
        }
        let in_progress = self.st.as_ref().and_then(|p| p.msg.as_ref());
        match h.opcode {
            OpCode::Control(_) => {
                if h.payload_len > frame::MAX_CONTROL_PAYLOAD as u64 {
                    return Err(ProtoError::protocol("control frame payload over 125 bytes"));
                }
                if !h.fin {
                    return Err(ProtoError::protocol("fragmented control frame"));
                }
            }
            OpCode::Data(Data::Continue) => {
                let Some(m) = in_progress else {
                    return Err(ProtoError::protocol("continuation frame without a message"));
                };
                if m.data.len() as u64 + h.payload_len > cfg.max_message as u64 {
                    return Err(too_big());
                }
            }
            OpCode::Data(_) => {
                if in_progress.is_some() {
                    return Err(ProtoError::protocol("new message before the previous one ended"));
                }
                if h.payload_len > cfg.max_message as u64 {
                    return Err(too_big());
                }
            }
        }
        Ok(())
    }

    /// A frame whose whole payload is in the buffer.
    fn complete_frame<'a>(&mut self, h: &Header, payload: &'a [u8]) -> Result<Option<Frame<'a>>, ProtoError> {
        match h.opcode {
            OpCode::Control(c) => Ok(control_frame(c, Payload::Borrowed(payload))),
            OpCode::Data(Data::Continue) => {
                let p = self.st.as_deref_mut().expect("checked: a message is in progress");
                let m = p.msg.as_mut().expect("checked: a message is in progress");
                append(m, payload, 0)?;
                if h.fin {
                    finish_message(p.msg.take()).map(Some)
                } else {
                    Ok(None)
                }
            }
            OpCode::Data(d) => {
                let text = d == Data::Text;
                let compressed = h.rsv & RSV1 != 0;
                if h.fin {
                    let p = Payload::Borrowed(payload);
                    if compressed {
                        return Ok(Some(Frame::Compressed { text, payload: p }));
                    }
                    if text && std::str::from_utf8(payload).is_err() {
                        return Err(invalid_utf8());
                    }
                    return Ok(Some(if text { Frame::Text(p) } else { Frame::Binary(p) }));
                }
                let mut m = Message { text, compressed, data: payload.to_vec(), utf8: Utf8Stream::default() };
                if text && !compressed {
                    m.utf8.feed(payload).map_err(|_| invalid_utf8())?;
                }
                self.st.get_or_insert_with(Box::default).msg = Some(m);
                Ok(None)
            }
        }
    }

    /// Bytes held before framing starts: the HTTP head of an opening handshake that arrived in
    /// pieces. Shares the state box so a connection holds one pointer for all incomplete input.
    pub fn stash(&mut self) -> &mut Vec<u8> {
        &mut self.st.get_or_insert_with(Box::default).stash
    }

    /// Take the stash (see [`Decoder::stash`]), freeing the state box if nothing else is held.
    pub fn take_stash(&mut self) -> Vec<u8> {
        let v = self.st.as_mut().map(|p| std::mem::take(&mut p.stash)).unwrap_or_default();
        self.settle();
        v
    }

    /// Free the state box once nothing is pending, so idle connections hold no heap memory.
    fn settle(&mut self) {
        if self.st.as_ref().is_some_and(|p| p.is_empty()) {
            self.st = None;
        }
    }
}

/// Split the first `n` bytes off `rest`, keeping the full lifetime of the buffer.
fn take<'a>(rest: &mut &'a mut [u8], n: usize) -> &'a mut [u8] {
    let (head, tail) = std::mem::take(rest).split_at_mut(n);
    *rest = tail;
    head
}

/// Add a chunk of a data frame to its message; `to_come` more bytes of this frame follow.
fn append(m: &mut Message, chunk: &[u8], to_come: usize) -> Result<(), ProtoError> {
    if m.text && !m.compressed {
        m.utf8.feed(chunk).map_err(|_| invalid_utf8())?;
    }
    let (len, cap) = (m.data.len(), m.data.capacity());
    if cap - len < chunk.len() {
        // Doubling, as `Vec` would, but never past the frame's end: left to itself the
        // doubling ladder can give a 1 MiB message 2 MiB of capacity, and the input budget
        // counts capacity.
        let need = len + chunk.len();
        m.data.reserve_exact(cap.saturating_mul(2).clamp(need, need + to_come) - len);
    }
    m.data.extend_from_slice(chunk);
    Ok(())
}

fn finish_message<'a>(m: Option<Message>) -> Result<Frame<'a>, ProtoError> {
    let m = m.expect("a finished frame belongs to a message");
    if m.compressed {
        Ok(Frame::Compressed { text: m.text, payload: Payload::Owned(m.data) })
    } else if m.text {
        m.utf8.finish().map_err(|_| invalid_utf8())?;
        Ok(Frame::Text(Payload::Owned(m.data)))
    } else {
        Ok(Frame::Binary(Payload::Owned(m.data)))
    }
}

fn control_frame(c: Control, p: Payload<'_>) -> Option<Frame<'_>> {
    match c {
        Control::Ping => Some(Frame::Ping(p)),
        Control::Pong => Some(Frame::Pong(p)),
        Control::Close => Some(Frame::Close(p)),
        // Reserved control opcodes are rejected by parse_header.
        Control::Reserved(_) => None,
    }
}

fn header_error(e: HeaderError) -> ProtoError {
    match e {
        HeaderError::ReservedOpcode(_) => ProtoError::protocol("reserved opcode"),
        HeaderError::LengthOverflow => ProtoError::protocol("payload length has its top bit set"),
        HeaderError::NonMinimalLength => ProtoError::protocol("payload length not in its minimal encoding"),
    }
}

fn too_big() -> ProtoError {
    ProtoError { code: frame::codes::TOO_BIG, reason: "message too big" }
}

fn invalid_utf8() -> ProtoError {
    ProtoError { code: frame::codes::INVALID_PAYLOAD, reason: "invalid UTF-8 in text message" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ws::frame::{write_header, Control, Data};

    const SERVER: DecodeConfig = DecodeConfig { role: Role::Server, max_message: 1 << 16, deflate: false };

    /// A client frame: masked, with explicit FIN/opcode bits.
    fn cf(first: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0xa1, 0xb2, 0xc3, 0xd4];
        let mut out = Vec::new();
        let opcode = OpCode::from(first & 0x0f);
        write_header(&mut out, first & 0x80 != 0, opcode, payload.len() as u64, Some(key));
        out[0] |= first & 0x70; // RSV bits, if a test wants them
        let start = out.len();
        out.extend_from_slice(payload);
        apply_mask(&mut out[start..], key, 0);
        out
    }

    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        Text(Vec<u8>),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Vec<u8>),
        Compressed(bool, Vec<u8>),
        Err(u16),
    }

    fn own(f: Frame<'_>) -> Ev {
        match f {
            Frame::Text(p) => Ev::Text(p.to_vec()),
            Frame::Binary(p) => Ev::Binary(p.to_vec()),
            Frame::Ping(p) => Ev::Ping(p.to_vec()),
            Frame::Pong(p) => Ev::Pong(p.to_vec()),
            Frame::Close(p) => Ev::Close(p.to_vec()),
            Frame::Compressed { text, payload } => Ev::Compressed(text, payload.to_vec()),
        }
    }

    /// Feed `input` in the given chunk sizes; collect events until the first error.
    fn run(input: &[u8], cfg: &DecodeConfig, chunks: &[usize]) -> (Vec<Ev>, Decoder) {
        let mut d = Decoder::default();
        let mut evs = Vec::new();
        let mut data = input.to_vec();
        let mut off = 0;
        let mut ci = 0;
        while off < data.len() {
            let n = chunks[ci % chunks.len()].min(data.len() - off);
            ci += 1;
            let mut rest: &mut [u8] = &mut data[off..off + n];
            off += n;
            loop {
                match d.decode(&mut rest, cfg) {
                    Ok(Some(f)) => evs.push(own(f)),
                    Ok(None) => break,
                    Err(e) => {
                        evs.push(Ev::Err(e.code));
                        return (evs, d);
                    }
                }
            }
        }
        (evs, d)
    }

    fn stream() -> (Vec<u8>, Vec<Ev>) {
        let mut s = Vec::new();
        s.extend(cf(0x81, b"hello"));
        s.extend(cf(0x01, "κόσ".as_bytes())); // fragmented text with a ping in the middle
        s.extend(cf(0x89, b"pi"));
        s.extend(cf(0x00, "με".as_bytes()));
        s.extend(cf(0x80, b"!"));
        s.extend(cf(0x82, &[7u8; 300])); // 16-bit length
        s.extend(cf(0x82, &[9u8; 70_000].as_slice()[..65_000])); // near the limit
        s.extend(cf(0x8a, b""));
        s.extend(cf(0x88, &[0x03, 0xe8]));
        let evs = vec![
            Ev::Text(b"hello".to_vec()),
            Ev::Ping(b"pi".to_vec()),
            Ev::Text("κόσμε!".as_bytes().to_vec()),
            Ev::Binary(vec![7; 300]),
            Ev::Binary(vec![9; 65_000]),
            Ev::Pong(vec![]),
            Ev::Close(vec![0x03, 0xe8]),
        ];
        (s, evs)
    }

    #[test]
    fn whole_buffer_decodes_and_holds_nothing_afterwards() {
        let (s, want) = stream();
        let (got, d) = run(&s, &SERVER, &[usize::MAX]);
        assert_eq!(got, want);
        assert!(d.is_idle(), "no heap state left between messages");
    }

    #[test]
    fn every_chunking_gives_the_same_events() {
        let (s, want) = stream();
        for size in [1, 2, 3, 5, 7, 13, 14, 15, 126, 1000, 4096] {
            let (got, d) = run(&s, &SERVER, &[size]);
            assert_eq!(got, want, "chunk size {size}");
            assert!(d.is_idle());
        }
        // Irregular chunking that splits headers at every offset.
        let (got, _) = run(&s, &SERVER, &[1, 9, 2, 17, 3, 300, 4, 5000]);
        assert_eq!(got, want);
    }

    #[test]
    fn whole_single_frames_are_borrowed_not_copied() {
        let mut buf = cf(0x82, b"abc");
        let mut rest: &mut [u8] = &mut buf;
        let mut d = Decoder::default();
        match d.decode(&mut rest, &SERVER).unwrap() {
            Some(Frame::Binary(Payload::Borrowed(b))) => assert_eq!(b, b"abc"),
            other => panic!("{other:?}"),
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn rsv1_marks_a_compressed_message_only_with_deflate_and_only_on_its_first_frame() {
        let z = DecodeConfig { deflate: true, ..SERVER };
        for chunk in [usize::MAX, 1, 3] {
            let (evs, d) = run(&cf(0xc1, b"\xff\xfe"), &z, &[chunk]);
            assert_eq!(evs, vec![Ev::Compressed(true, b"\xff\xfe".to_vec())], "UTF-8 is checked after inflating");
            assert!(d.is_idle());
            let mut two = cf(0x41, b"ab");
            two.extend(cf(0x80, b"cd"));
            let (evs, _) = run(&two, &z, &[chunk]);
            assert_eq!(evs, vec![Ev::Compressed(true, b"abcd".to_vec())], "fragmented");
        }
        let (evs, _) = run(&cf(0xc2, b"\x00"), &z, &[usize::MAX]);
        assert_eq!(evs, vec![Ev::Compressed(false, b"\x00".to_vec())]);
        let mut cont = cf(0x01, b"a");
        cont.extend(cf(0xc0, b"b"));
        assert_eq!(first_error(&cont, &z), Some(1002), "RSV1 on a continuation");
        assert_eq!(first_error(&cf(0xc9, b""), &z), Some(1002), "RSV1 on a ping");
        assert_eq!(first_error(&cf(0xa1, b"x"), &z), Some(1002), "RSV2 is never ours");
        assert_eq!(first_error(&cf(0xc1, b"x"), &SERVER), Some(1002), "RSV1 without deflate");
    }

    fn first_error(input: &[u8], cfg: &DecodeConfig) -> Option<u16> {
        for chunk in [usize::MAX, 1] {
            let (evs, _) = run(input, cfg, &[chunk]);
            if let Some(Ev::Err(c)) = evs.last() {
                return Some(*c);
            }
        }
        None
    }

    #[test]
    fn violations_map_to_close_codes() {
        let unmasked = [0x81, 0x02, b'h', b'i'];
        assert_eq!(first_error(&unmasked, &SERVER), Some(1002), "unmasked client frame");
        assert_eq!(first_error(&cf(0xc1, b"x"), &SERVER), Some(1002), "RSV1 without extension");
        assert_eq!(first_error(&cf(0x83, b""), &SERVER), Some(1002), "reserved data opcode");
        assert_eq!(first_error(&cf(0x8b, b""), &SERVER), Some(1002), "reserved control opcode");
        assert_eq!(first_error(&cf(0x89, &[0; 126]), &SERVER), Some(1002), "control over 125 bytes");
        assert_eq!(first_error(&cf(0x09, b""), &SERVER), Some(1002), "fragmented ping");
        assert_eq!(first_error(&cf(0x80, b"x"), &SERVER), Some(1002), "continuation without start");
        let mut two = cf(0x01, b"a");
        two.extend(cf(0x81, b"b"));
        assert_eq!(first_error(&two, &SERVER), Some(1002), "new message inside a fragmented one");
        assert_eq!(first_error(&cf(0x81, b"\xff"), &SERVER), Some(1007), "invalid UTF-8");
        let mut frag = cf(0x01, b"ok");
        frag.extend(cf(0x80, b"\xc0\xaf"));
        assert_eq!(first_error(&frag, &SERVER), Some(1007), "invalid UTF-8 across fragments");
    }

    #[test]
    fn too_big_is_refused_from_the_header_alone() {
        let mut d = Decoder::default();
        let mut hdr = Vec::new();
        write_header(&mut hdr, true, OpCode::Data(Data::Binary), 1 << 20, Some([1, 2, 3, 4]));
        let mut rest: &mut [u8] = &mut hdr; // no payload sent at all
        assert_eq!(d.decode(&mut rest, &SERVER).unwrap_err().code, 1009);
        // Fragments that together exceed the limit.
        let mut frag = cf(0x02, &vec![0; 40_000]);
        frag.extend(cf(0x80, &vec![0; 40_000]));
        assert_eq!(first_error(&frag, &SERVER), Some(1009));
    }

    #[test]
    fn utf8_fails_fast_inside_a_partially_received_frame() {
        let big = cf(0x81, &[b"\xff".as_slice(), &[b'a'; 5000]].concat());
        let mut d = Decoder::default();
        let mut data = big.clone();
        let mut rest: &mut [u8] = &mut data[..100]; // most of the payload not yet here
        assert_eq!(d.decode(&mut rest, &SERVER).unwrap_err().code, 1007);
    }

    #[test]
    fn client_role_rejects_masked_frames() {
        let client = DecodeConfig { role: Role::Client, max_message: 1024, deflate: false };
        assert_eq!(first_error(&cf(0x81, b"x"), &client), Some(1002));
        let mut plain = Vec::new();
        crate::proto::ws::frame::write_frame(&mut plain, OpCode::Control(Control::Pong), b"p");
        let (evs, _) = run(&plain, &client, &[1]);
        assert_eq!(evs, vec![Ev::Pong(b"p".to_vec())]);
    }

    #[test]
    fn incomplete_input_is_counted_and_dated() {
        let mut d = Decoder::default();
        let mut frame = cf(0x82, &vec![1u8; 40_000]);
        let mut rest: &mut [u8] = &mut frame[..20_000];
        assert_eq!(d.decode(&mut rest, &SERVER), Ok(None));
        d.mark_started(7);
        assert_eq!(d.started(), Some(7));
        assert!(d.buffered() >= 16 * 1024, "the assembly buffer counts: {}", d.buffered());
        let mut rest: &mut [u8] = &mut frame[20_000..];
        assert!(matches!(d.decode(&mut rest, &SERVER), Ok(Some(Frame::Binary(_)))));
        assert_eq!((d.buffered(), d.started()), (0, None));
    }

    #[test]
    fn a_message_assembled_over_reads_holds_no_more_than_its_frame() {
        // Read-sized chunks whose doubling ladder would overshoot: 1 MiB ends in 2 MiB of
        // capacity with `Vec`'s own growth.
        let cfg = DecodeConfig { role: Role::Server, max_message: 4 << 20, deflate: false };
        let size = 1 << 20;
        let mut frame = cf(0x82, &vec![3u8; size]);
        let mut d = Decoder::default();
        let mut at = 0;
        while at + 65_536 < frame.len() {
            let mut rest: &mut [u8] = &mut frame[at..at + 65_536];
            assert_eq!(d.decode(&mut rest, &cfg), Ok(None));
            at += 65_536;
            assert!(d.buffered() <= size + 256, "{} bytes held for a {size}-byte message", d.buffered());
        }
        let mut rest: &mut [u8] = &mut frame[at..];
        assert!(matches!(d.decode(&mut rest, &cfg), Ok(Some(Frame::Binary(b))) if b.len() == size));
    }

    #[test]
    fn stash_shares_the_state_box_and_is_freed() {
        let mut d = Decoder::default();
        d.stash().extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert!(!d.is_idle());
        assert_eq!(d.take_stash(), b"GET / HTTP/1.1\r\n");
        assert!(d.is_idle());
    }
}
