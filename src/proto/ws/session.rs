//! One WebSocket connection's lifecycle as a sans-IO state machine: fed received bytes and the
//! current tick, it writes the bytes to send into a caller's buffer and returns events. It answers
//! pings, runs the closing handshake (RFC 6455 §5.5.1, §7), fails the connection with the right
//! code on violations, and decides heartbeat and timeout actions when its timer fires.
//!
//! Time is a `u32` tick count supplied by the caller (the event loop's clock), so tests drive it
//! without sleeping. The struct is 24 bytes and owns heap memory only while input is incomplete.

use super::decoder::{DecodeConfig, Decoder, Frame, Payload, ProtoError};
use super::frame::{self, codes, CloseInfo, Control, OpCode, Role};
use super::{deflate, mask};

/// Where the connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Opening handshake not complete (server: request head not yet answered).
    Handshake,
    /// Messages flow.
    Open,
    /// We sent a close frame and wait for the peer's.
    Closing,
    /// WebSocket is over: the driver flushes, shuts down writing, and waits for EOF.
    Linger,
}

/// Timeouts (in ticks) and limits for sessions.
#[derive(Debug, Clone, Copy)]
pub struct SessionConfig {
    pub role: Role,
    pub max_message: usize,
    /// Ping after this long without input; 0 disables heartbeats.
    pub ping_interval: u32,
    /// After a ping, give up when nothing at all arrives for this long.
    pub pong_timeout: u32,
    pub handshake_timeout: u32,
    /// How long to wait for the peer's close frame, and for its EOF once we are done.
    pub close_timeout: u32,
    /// A message (or frame) not completed within this long fails with 1008; 0: no limit.
    pub message_timeout: u32,
}

impl SessionConfig {
    fn decode(&self, deflate: bool) -> DecodeConfig {
        DecodeConfig { role: self.role, max_message: self.max_message, deflate }
    }
}

/// What the driver must act on.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete data message.
    Message { text: bool, data: Payload<'a> },
    /// The WebSocket is over (phase is now `Linger`): flush `out`, shut down writing, close on EOF.
    Finish(Ending),
}

/// Why a session finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The peer started the closing handshake (with this code, if any); our reply is written.
    PeerClosed(Option<u16>),
    /// The closing handshake we started is complete.
    Acknowledged,
    /// A protocol violation; a close frame with its code is written.
    Failed(ProtoError),
}

/// What the driver does with the connection's timer after a phase change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// The entry already queued fires in time.
    Keep,
    /// Arm a new entry this many ticks ahead (older entries become stale).
    After(u32),
    /// No timer is needed: make queued entries stale.
    Cancel,
}

/// What to do after a timer fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    /// Check again after this many ticks (a ping may have been written to `out`).
    Rearm(u32),
    /// Nothing to watch (heartbeats off): no timer needed until the phase changes.
    Idle,
    /// Time is up: drop the connection.
    Expired(Expiry),
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    Handshake,
    /// No answer to a ping within the pong timeout.
    Heartbeat,
    /// A message begun more than the message timeout ago is still incomplete.
    Message,
    /// The peer did not answer our close frame.
    Closing,
    /// The peer did not close TCP after the WebSocket ended.
    Linger,
}

/// Per-connection protocol state.
#[derive(Debug)]
pub struct Session {
    dec: Decoder,
    /// Tick of the last received bytes.
    last_rx: u32,
    /// Tick the current phase (or the outstanding ping) started.
    mark: u32,
    phase: Phase,
    ping_out: bool,
    /// permessage-deflate was negotiated (fits the padding: the session stays 24 bytes).
    deflate: bool,
}

impl Session {
    /// A server session waiting for the request head.
    pub fn new_handshake(now: u32) -> Self {
        Session {
            dec: Decoder::default(),
            last_rx: now,
            mark: now,
            phase: Phase::Handshake,
            ping_out: false,
            deflate: false,
        }
    }

    /// A session whose handshake is already done (the client side after a 101).
    pub fn new_open(now: u32) -> Self {
        Session { phase: Phase::Open, ..Self::new_handshake(now) }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Speak permessage-deflate (negotiated in the handshake): compressed messages are inflated
    /// by this thread's decompressor, within the message size limit.
    pub fn set_deflate(&mut self, on: bool) {
        self.deflate = on;
    }

    pub fn deflate(&self) -> bool {
        self.deflate
    }

    /// True when no heap memory is held for incomplete input.
    pub fn is_idle(&self) -> bool {
        self.dec.is_idle()
    }

    /// Heap memory held for incomplete input.
    pub fn buffered(&self) -> usize {
        self.dec.buffered()
    }

    /// Ticks from `now` until [`Session::on_timer`] has something to decide (the earliest of
    /// the phase's deadline, the next ping or pong deadline, and the message deadline); `None`
    /// when nothing is due.
    pub fn next_timer(&self, now: u32, cfg: &SessionConfig) -> Option<u32> {
        let left = |since: u32, limit: u32| limit.saturating_sub(now.wrapping_sub(since)).max(1);
        let mut next = match self.phase {
            Phase::Handshake => Some(left(self.mark, cfg.handshake_timeout)),
            Phase::Closing | Phase::Linger => Some(left(self.mark, cfg.close_timeout)),
            Phase::Open if cfg.ping_interval == 0 => None,
            Phase::Open if self.ping_out => Some(left(self.mark, cfg.pong_timeout)),
            Phase::Open => Some(left(self.last_rx, cfg.ping_interval)),
        };
        if let (Phase::Open, Some(m)) = (self.phase, self.message_left(now, cfg)) {
            next = Some(next.map_or(m, |n| n.min(m)));
        }
        next
    }

    /// Buffer for a request head that arrived in pieces (see `Decoder::stash`); while open,
    /// input the driver has read but not yet fed (see [`Session::hold`]).
    pub fn stash(&mut self) -> &mut Vec<u8> {
        self.dec.stash()
    }

    /// Keep bytes read from the peer to be fed later (the driver stopped feeding because its
    /// answers pile up; the peer gets no further reads until they are fed).
    pub fn hold(&mut self, input: &[u8]) {
        let was_idle = self.dec.is_idle();
        let since = self.dec.started();
        self.dec.stash().extend_from_slice(input);
        if was_idle || since.is_none() {
            // Nothing incomplete from the peer: no message clock runs for held bytes.
            self.dec.mark_started(self.last_rx);
        }
    }

    pub fn take_stash(&mut self) -> Vec<u8> {
        self.dec.take_stash()
    }

    /// The opening handshake succeeded: messages may flow. The handshake's timer is still
    /// queued (due at the handshake deadline); this says whether the driver must arm another
    /// one for an earlier heartbeat, or none at all.
    pub fn open(&mut self, now: u32, cfg: &SessionConfig) -> Arm {
        self.open_every(now, cfg, cfg.ping_interval)
    }

    /// [`Session::open`] for a session whose timer is due every `every` ticks (0: never)
    /// rather than every ping interval: an event stream's keep-alive comments.
    pub fn open_every(&mut self, now: u32, cfg: &SessionConfig, every: u32) -> Arm {
        debug_assert_eq!(self.phase, Phase::Handshake);
        let queued_due = self.mark.wrapping_add(cfg.handshake_timeout);
        self.phase = Phase::Open;
        self.last_rx = now;
        self.mark = now;
        if every == 0 {
            Arm::Cancel
        } else if queued_due.wrapping_sub(now) > every {
            // Only a timer due before the queued entry fires needs a new entry (one per
            // connection keeps the wheel small).
            Arm::After(every)
        } else {
            Arm::Keep
        }
    }

    /// An open session whose only timer is a write every `every` ticks: 0 when one is due now
    /// (the next period starts), else the ticks left. The timer may fire early (the handshake's
    /// entry is kept rather than another queued), so it asks.
    pub fn keepalive(&mut self, now: u32, every: u32) -> u32 {
        debug_assert_eq!(self.phase, Phase::Open);
        let since = now.wrapping_sub(self.mark);
        if since >= every {
            self.mark = now;
            0
        } else {
            every - since
        }
    }

    /// An HTTP request was answered and the connection stays open for the next one: the
    /// handshake timeout now limits how long it may stay idle.
    pub fn restart_http(&mut self, now: u32) {
        debug_assert_eq!(self.phase, Phase::Handshake);
        self.mark = now;
        self.last_rx = now;
    }

    /// End without a closing handshake (a rejected HTTP request, or a close we already sent):
    /// the driver flushes, shuts down writing and waits for EOF up to the close timeout.
    pub fn linger(&mut self, now: u32) {
        self.phase = Phase::Linger;
        self.mark = now;
        let _ = self.dec.take_stash();
    }

    /// Start the closing handshake with `code` (e.g. 1001 on shutdown, 1008 for a slow consumer).
    /// Returns false when the session is not open (nothing written).
    pub fn close(&mut self, code: u16, reason: &str, now: u32, out: &mut Vec<u8>, role: Role) -> bool {
        if self.phase != Phase::Open {
            return false;
        }
        write_control(out, role, Control::Close, &frame::close_payload(code, reason));
        self.phase = Phase::Closing;
        self.mark = now;
        true
    }

    /// Feed received bytes from the front of `rest` (consumed as they are used). Control frames
    /// are answered into `out`. Returns the next event, or `None` once `rest` is used up.
    pub fn feed<'a>(
        &mut self,
        rest: &mut &'a mut [u8],
        now: u32,
        out: &mut Vec<u8>,
        cfg: &SessionConfig,
    ) -> Option<Event<'a>> {
        if rest.is_empty() {
            return None;
        }
        self.last_rx = now;
        if matches!(self.phase, Phase::Handshake | Phase::Linger) {
            // Nothing to decode: a handshake is parsed by the caller; after the end, input is
            // read only to see EOF.
            *rest = &mut [];
            return None;
        }
        let dcfg = cfg.decode(self.deflate);
        loop {
            let was_complete = self.dec.started().is_none();
            let decoded = self.dec.decode(rest, &dcfg);
            if was_complete && self.dec.started().is_some() {
                // Incomplete input began in this call, whether or not a frame (a ping between
                // fragments) was also returned: its clock starts now.
                self.dec.mark_started(now);
            }
            let frame = match decoded {
                Ok(Some(f)) => f,
                Ok(None) => {
                    if let Some(e) = self.overdue(now, cfg).filter(|_| !was_complete) {
                        // A trickle that keeps the heartbeat happy does not keep a message open.
                        *rest = &mut [];
                        return Some(self.fail(e, now, out, cfg.role));
                    }
                    return None;
                }
                Err(e) => return Some(self.fail(e, now, out, cfg.role)),
            };
            let open = self.phase == Phase::Open;
            match frame {
                Frame::Text(data) if open => return Some(Event::Message { text: true, data }),
                Frame::Binary(data) if open => return Some(Event::Message { text: false, data }),
                Frame::Compressed { text, payload } if open => match inflate_message(text, &payload, cfg.max_message) {
                    Ok(data) => return Some(Event::Message { text, data: Payload::Owned(data) }),
                    Err(e) => {
                        *rest = &mut [];
                        return Some(self.fail(e, now, out, cfg.role));
                    }
                },
                Frame::Ping(p) if open => write_control(out, cfg.role, Control::Pong, &p),
                Frame::Close(p) => return Some(self.on_close(&p, now, out, cfg.role)),
                // Pongs only prove liveness (last_rx); data after our close frame is dropped.
                _ => {}
            }
        }
    }

    /// The incomplete message's deadline has passed.
    fn overdue(&self, now: u32, cfg: &SessionConfig) -> Option<ProtoError> {
        let since = self.dec.started()?;
        (self.phase == Phase::Open && cfg.message_timeout > 0 && now.wrapping_sub(since) >= cfg.message_timeout)
            .then_some(ProtoError { code: codes::POLICY, reason: "message not completed within --message-timeout" })
    }

    /// Fail the connection with `e`'s code: close frame (if still open), then linger.
    fn fail(&mut self, e: ProtoError, now: u32, out: &mut Vec<u8>, role: Role) -> Event<'static> {
        if self.phase == Phase::Open {
            write_control(out, role, Control::Close, &frame::close_payload(e.code, e.reason));
        }
        self.linger(now);
        Event::Finish(Ending::Failed(e))
    }

    fn on_close(&mut self, payload: &[u8], now: u32, out: &mut Vec<u8>, role: Role) -> Event<'static> {
        let was_open = self.phase == Phase::Open;
        self.linger(now);
        if !was_open {
            return Event::Finish(Ending::Acknowledged);
        }
        match frame::parse_close(payload) {
            Ok(CloseInfo::NoCode) => {
                write_control(out, role, Control::Close, &[]);
                Event::Finish(Ending::PeerClosed(None))
            }
            Ok(CloseInfo::Code(code)) => {
                write_control(out, role, Control::Close, &code.to_be_bytes());
                Event::Finish(Ending::PeerClosed(Some(code)))
            }
            Err(bad) => {
                let e = match bad {
                    frame::BadClose::Protocol => ProtoError { code: codes::PROTOCOL, reason: "invalid close frame" },
                    frame::BadClose::Utf8 => {
                        ProtoError { code: codes::INVALID_PAYLOAD, reason: "close reason is not UTF-8" }
                    }
                };
                write_control(out, role, Control::Close, &frame::close_payload(e.code, e.reason));
                Event::Finish(Ending::Failed(e))
            }
        }
    }

    /// The connection's timer fired at `now`: decide what happens next. May write a ping.
    pub fn on_timer(&mut self, now: u32, out: &mut Vec<u8>, cfg: &SessionConfig) -> TimerAction {
        let since_mark = now.wrapping_sub(self.mark);
        match self.phase {
            Phase::Handshake => remaining(since_mark, cfg.handshake_timeout, Expiry::Handshake),
            Phase::Closing => remaining(since_mark, cfg.close_timeout, Expiry::Closing),
            Phase::Linger => remaining(since_mark, cfg.close_timeout, Expiry::Linger),
            Phase::Open => {
                if self.overdue(now, cfg).is_some() {
                    return TimerAction::Expired(Expiry::Message);
                }
                // An incomplete message's deadline may come before the heartbeat's.
                match (self.heartbeat(now, out, cfg), self.message_left(now, cfg)) {
                    (TimerAction::Rearm(d), Some(m)) => TimerAction::Rearm(d.min(m)),
                    (TimerAction::Idle, Some(m)) => TimerAction::Rearm(m),
                    (a, _) => a,
                }
            }
        }
    }

    /// Ticks until an incomplete message's deadline, if one is held and the limit is on.
    fn message_left(&self, now: u32, cfg: &SessionConfig) -> Option<u32> {
        let since = self.dec.started()?;
        (cfg.message_timeout > 0).then(|| cfg.message_timeout.saturating_sub(now.wrapping_sub(since)).max(1))
    }

    /// The heartbeat's part of an open connection's timer: ping after silence, give up when a
    /// ping goes unanswered.
    fn heartbeat(&mut self, now: u32, out: &mut Vec<u8>, cfg: &SessionConfig) -> TimerAction {
        if cfg.ping_interval == 0 {
            return TimerAction::Idle;
        }
        let since_mark = now.wrapping_sub(self.mark);
        if self.ping_out {
            // Anything received since the ping counts as an answer. A ping goes out only
            // after at least one tick of silence, so before any answer last_rx < mark.
            if after_or_at(self.last_rx, self.mark) {
                self.ping_out = false;
            } else if since_mark >= cfg.pong_timeout {
                return TimerAction::Expired(Expiry::Heartbeat);
            } else {
                return TimerAction::Rearm(cfg.pong_timeout - since_mark);
            }
        }
        let idle = now.wrapping_sub(self.last_rx);
        if idle >= cfg.ping_interval {
            write_control(out, cfg.role, Control::Ping, &[]);
            self.ping_out = true;
            self.mark = now;
            TimerAction::Rearm(cfg.pong_timeout.max(1))
        } else {
            TimerAction::Rearm(cfg.ping_interval - idle)
        }
    }
}

/// A permessage-deflate message inflated within the size limit (1009 past it, 1007 for a bad
/// stream or a text message that is not UTF-8 once inflated).
fn inflate_message(text: bool, payload: &[u8], max: usize) -> Result<Vec<u8>, ProtoError> {
    let data = deflate::inflate(payload, max).map_err(|e| match e {
        deflate::InflateError::TooBig => ProtoError { code: codes::TOO_BIG, reason: "message too big once inflated" },
        deflate::InflateError::Invalid => ProtoError { code: codes::INVALID_PAYLOAD, reason: "invalid deflate data" },
    })?;
    if text && std::str::from_utf8(&data).is_err() {
        return Err(ProtoError { code: codes::INVALID_PAYLOAD, reason: "text message is not UTF-8" });
    }
    Ok(data)
}

/// `a` is at or after `b` on the wrapping tick clock.
fn after_or_at(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

fn remaining(elapsed: u32, limit: u32, expiry: Expiry) -> TimerAction {
    if elapsed >= limit {
        TimerAction::Expired(expiry)
    } else {
        TimerAction::Rearm(limit - elapsed)
    }
}

/// Write a control frame as `role` (clients mask with a fresh key).
fn write_control(out: &mut Vec<u8>, role: Role, c: Control, payload: &[u8]) {
    frame::write_frame_as(out, role, OpCode::Control(c), payload, mask::random_key());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ws::decoder::{DecodeConfig, Decoder, Frame};
    use crate::proto::ws::frame::{write_masked_frame, Data};

    const CFG: SessionConfig = SessionConfig {
        role: Role::Server,
        max_message: 1024,
        ping_interval: 100,
        pong_timeout: 20,
        handshake_timeout: 50,
        close_timeout: 30,
        message_timeout: 200,
    };

    fn client(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_masked_frame(&mut v, opcode, payload, [9, 8, 7, 6]);
        v
    }

    /// Decode what the server wrote, as a client would.
    fn frames(out: &[u8]) -> Vec<(OpCode, Vec<u8>)> {
        let mut d = Decoder::default();
        let mut data = out.to_vec();
        let mut rest: &mut [u8] = &mut data;
        let cfg = DecodeConfig { role: Role::Client, max_message: 1 << 20, deflate: false };
        let mut v = Vec::new();
        while let Some(f) = d.decode(&mut rest, &cfg).unwrap() {
            v.push(match f {
                Frame::Text(p) => (OpCode::Data(Data::Text), p.to_vec()),
                Frame::Binary(p) => (OpCode::Data(Data::Binary), p.to_vec()),
                Frame::Ping(p) => (OpCode::Control(Control::Ping), p.to_vec()),
                Frame::Pong(p) => (OpCode::Control(Control::Pong), p.to_vec()),
                Frame::Close(p) => (OpCode::Control(Control::Close), p.to_vec()),
                Frame::Compressed { .. } => panic!("no deflate here"),
            });
        }
        v
    }

    fn open(now: u32) -> Session {
        let mut s = Session::new_handshake(now);
        s.open(now, &CFG);
        s
    }

    #[test]
    fn a_keepalive_fired_early_says_what_is_left_and_a_due_one_restarts_the_period() {
        let mut s = Session::new_handshake(0);
        s.open_every(10, &CFG, 60);
        assert_eq!(s.keepalive(50, 60), 20, "the handshake's entry, 40 ticks in");
        assert_eq!(s.keepalive(70, 60), 0, "due");
        assert_eq!(s.keepalive(71, 60), 59, "the next period counts from 70");
        assert_eq!(s.keepalive(130, 60), 0);
    }

    #[test]
    fn opening_says_which_timer_the_driver_needs() {
        // Handshake entry due at 0 + 50; pings every 100: the queued entry comes first.
        assert_eq!(Session::new_handshake(0).open(10, &CFG), Arm::Keep);
        let short = SessionConfig { ping_interval: 20, ..CFG };
        assert_eq!(Session::new_handshake(0).open(10, &short), Arm::After(20));
        let off = SessionConfig { ping_interval: 0, ..CFG };
        assert_eq!(Session::new_handshake(0).open(10, &off), Arm::Cancel);
        // An event stream's keep-alive every 60: the handshake entry (due at 50) fires first.
        assert_eq!(Session::new_handshake(0).open_every(10, &CFG, 60), Arm::Keep);
        assert_eq!(Session::new_handshake(0).open_every(10, &CFG, 30), Arm::After(30));
        // Keep-alive: the idle deadline restarts with each request.
        let mut h = Session::new_handshake(0);
        h.restart_http(40);
        assert_eq!(h.on_timer(50, &mut Vec::new(), &CFG), TimerAction::Rearm(40));
    }

    fn close_code(payload: &[u8]) -> u16 {
        u16::from_be_bytes([payload[0], payload[1]])
    }

    #[test]
    fn answers_ping_and_delivers_messages() {
        let mut s = open(0);
        let mut input = client(OpCode::Control(Control::Ping), b"abc");
        input.extend(client(OpCode::Data(Data::Text), b"{}"));
        let mut out = Vec::new();
        let mut rest: &mut [u8] = &mut input;
        let ev = s.feed(&mut rest, 5, &mut out, &CFG);
        assert!(matches!(ev, Some(Event::Message { text: true, ref data }) if &data[..] == b"{}"));
        assert_eq!(frames(&out), vec![(OpCode::Control(Control::Pong), b"abc".to_vec())]);
        assert_eq!(s.last_rx, 5);
    }

    #[test]
    fn peer_close_is_echoed_and_finishes() {
        for (payload, want_reply, ending) in [
            (vec![0x03, 0xe8], Some(1000), Ending::PeerClosed(Some(1000))),
            (vec![0x0f, 0xa0, b'b', b'y', b'e'], Some(4000), Ending::PeerClosed(Some(4000))),
            (vec![], None, Ending::PeerClosed(None)),
        ] {
            let mut s = open(0);
            let mut input = client(OpCode::Control(Control::Close), &payload);
            let mut out = Vec::new();
            let mut rest: &mut [u8] = &mut input;
            assert_eq!(s.feed(&mut rest, 1, &mut out, &CFG), Some(Event::Finish(ending)));
            assert_eq!(s.phase(), Phase::Linger);
            let f = frames(&out);
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].0, OpCode::Control(Control::Close));
            assert_eq!(want_reply, (!f[0].1.is_empty()).then(|| close_code(&f[0].1)));
        }
    }

    #[test]
    fn invalid_close_payloads_fail_with_the_right_code() {
        for (payload, code) in [(vec![0x03], 1002), (vec![0x03, 0xed], 1002), (vec![0x03, 0xe8, 0xff], 1007)] {
            let mut s = open(0);
            let mut input = client(OpCode::Control(Control::Close), &payload);
            let mut out = Vec::new();
            let mut rest: &mut [u8] = &mut input;
            assert!(
                matches!(s.feed(&mut rest, 1, &mut out, &CFG), Some(Event::Finish(Ending::Failed(e))) if e.code == code)
            );
            assert_eq!(close_code(&frames(&out)[0].1), code);
        }
    }

    #[test]
    fn a_violation_sends_its_close_code_and_ignores_the_rest() {
        let mut s = open(0);
        let mut input = vec![0x81, 0x01, b'x']; // unmasked
        input.extend(client(OpCode::Data(Data::Text), b"later"));
        let mut out = Vec::new();
        let mut rest: &mut [u8] = &mut input;
        assert!(
            matches!(s.feed(&mut rest, 1, &mut out, &CFG), Some(Event::Finish(Ending::Failed(e))) if e.code == 1002)
        );
        assert_eq!(s.feed(&mut rest, 1, &mut out, &CFG), None);
        let f = frames(&out);
        assert_eq!(f.len(), 1);
        assert_eq!(close_code(&f[0].1), 1002);
        assert!(s.is_idle());
    }

    #[test]
    fn heartbeat_pings_when_idle_and_times_out_without_answer() {
        let mut s = open(0);
        let mut out = Vec::new();
        assert_eq!(s.on_timer(40, &mut out, &CFG), TimerAction::Rearm(60));
        assert_eq!(s.on_timer(100, &mut out, &CFG), TimerAction::Rearm(20));
        assert_eq!(frames(&out), vec![(OpCode::Control(Control::Ping), vec![])]);
        out.clear();
        assert_eq!(s.on_timer(110, &mut out, &CFG), TimerAction::Rearm(10));
        assert_eq!(s.on_timer(120, &mut out, &CFG), TimerAction::Expired(Expiry::Heartbeat));
        assert!(out.is_empty());
    }

    #[test]
    fn any_input_after_a_ping_keeps_the_connection() {
        let mut s = open(0);
        let mut out = Vec::new();
        s.on_timer(100, &mut out, &CFG); // ping at 100
        let mut pong = client(OpCode::Control(Control::Pong), b"");
        let mut rest: &mut [u8] = &mut pong;
        assert_eq!(s.feed(&mut rest, 105, &mut out, &CFG), None);
        assert_eq!(s.on_timer(120, &mut out, &CFG), TimerAction::Rearm(85), "next ping 100 ticks after the pong");
        // Traffic alone (no timer work) pushes the next ping back.
        let mut msg = client(OpCode::Data(Data::Binary), b"x");
        let mut rest: &mut [u8] = &mut msg;
        assert!(s.feed(&mut rest, 190, &mut out, &CFG).is_some());
        assert_eq!(s.on_timer(205, &mut out, &CFG), TimerAction::Rearm(85));
    }

    #[test]
    fn an_incomplete_message_times_out_even_while_bytes_trickle_in() {
        let mut s = open(0);
        let mut out = Vec::new();
        let frame = client(OpCode::Data(Data::Binary), &[5u8; 50]);
        // Ten bytes at tick 10: a message has begun; the timer must come by its deadline.
        let mut head = frame[..10].to_vec();
        let mut rest: &mut [u8] = &mut head;
        assert_eq!(s.feed(&mut rest, 10, &mut out, &CFG), None);
        assert_eq!(s.next_timer(10, &CFG), Some(100), "the ping (100) comes before the message deadline (210)");
        let off = SessionConfig { ping_interval: 0, ..CFG };
        assert_eq!(s.next_timer(10, &off), Some(200), "without heartbeats the message deadline remains");
        assert_eq!(s.on_timer(100, &mut out, &off), TimerAction::Rearm(110));
        // One byte every so often keeps the heartbeat happy, but not past the deadline.
        for (i, t) in [(10, 80), (11, 150)] {
            let mut b = frame[i..i + 1].to_vec();
            let mut rest: &mut [u8] = &mut b;
            assert_eq!(s.feed(&mut rest, t, &mut out, &CFG), None);
        }
        let mut b = frame[12..13].to_vec();
        let mut rest: &mut [u8] = &mut b;
        match s.feed(&mut rest, 210, &mut out, &CFG) {
            Some(Event::Finish(Ending::Failed(e))) => assert_eq!(e.code, 1008),
            other => panic!("{other:?}"),
        }
        assert_eq!(close_code(&frames(&out).last().unwrap().1), 1008);
        // A silent holder is caught by the timer.
        let mut s = open(0);
        let mut head = frame[..10].to_vec();
        let mut rest: &mut [u8] = &mut head;
        s.feed(&mut rest, 0, &mut out, &off);
        assert_eq!(s.on_timer(200, &mut out, &off), TimerAction::Expired(Expiry::Message));
        // Whole messages never start the clock.
        let mut s = open(0);
        let mut whole = frame.clone();
        let mut rest: &mut [u8] = &mut whole;
        assert!(matches!(s.feed(&mut rest, 0, &mut out, &off), Some(Event::Message { .. })));
        assert_eq!(s.next_timer(0, &off), None);
    }

    #[test]
    fn a_message_begun_in_the_same_read_as_a_ping_starts_its_clock_then() {
        // Autobahn 5.19: two fragments and a ping in one read, long after the server started.
        // The clock must start at that read, not at tick 0 (which failed it at once with 1008).
        let mut s = open(0);
        let mut out = Vec::new();
        let mut first = client(OpCode::Data(Data::Text), b"frag1");
        first[0] &= 0x7f; // FIN clear
        let mut buf = first;
        buf.extend(client(OpCode::Control(Control::Ping), b"p"));
        let mut rest: &mut [u8] = &mut buf;
        assert_eq!(s.feed(&mut rest, 5_000, &mut out, &CFG), None);
        assert_eq!(frames(&out), vec![(OpCode::Control(Control::Pong), b"p".to_vec())]);
        assert_eq!(s.next_timer(5_000, &SessionConfig { ping_interval: 0, ..CFG }), Some(200));
        let mut last = client(OpCode::Data(Data::Continue), b"end");
        let mut rest: &mut [u8] = &mut last;
        match s.feed(&mut rest, 5_100, &mut out, &CFG) {
            Some(Event::Message { text: true, data }) => assert_eq!(&*data, b"frag1end"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn heartbeats_can_be_disabled() {
        let mut s = open(0);
        let cfg = SessionConfig { ping_interval: 0, ..CFG };
        assert_eq!(s.on_timer(1_000_000, &mut Vec::new(), &cfg), TimerAction::Idle);
    }

    #[test]
    fn closing_handshake_we_start() {
        let mut s = open(0);
        let mut out = Vec::new();
        assert!(s.close(1001, "going away", 10, &mut out, Role::Server));
        assert_eq!(close_code(&frames(&out)[0].1), 1001);
        assert!(!s.close(1001, "again", 11, &mut out, Role::Server), "only once");
        // Data after our close is dropped; the peer's close completes the handshake.
        let mut input = client(OpCode::Data(Data::Text), b"late");
        input.extend(client(OpCode::Control(Control::Close), &[0x03, 0xe9]));
        let mut rest: &mut [u8] = &mut input;
        out.clear();
        assert_eq!(s.feed(&mut rest, 12, &mut out, &CFG), Some(Event::Finish(Ending::Acknowledged)));
        assert!(out.is_empty(), "no second close frame");
        assert_eq!(s.phase(), Phase::Linger);
    }

    #[test]
    fn closing_and_handshake_timeouts() {
        let mut s = open(0);
        let mut out = Vec::new();
        s.close(1000, "", 10, &mut out, Role::Server);
        assert_eq!(s.on_timer(30, &mut out, &CFG), TimerAction::Rearm(10));
        assert_eq!(s.on_timer(40, &mut out, &CFG), TimerAction::Expired(Expiry::Closing));
        let mut h = Session::new_handshake(0);
        assert_eq!(h.on_timer(49, &mut out, &CFG), TimerAction::Rearm(1));
        assert_eq!(h.on_timer(50, &mut out, &CFG), TimerAction::Expired(Expiry::Handshake));
        h.linger(60);
        assert_eq!(h.on_timer(90, &mut out, &CFG), TimerAction::Expired(Expiry::Linger));
    }

    /// Peer bytes can be anything: valid frames with random mutations, cut at random points,
    /// must never panic, and every session must end in a close code or keep going.
    #[test]
    fn random_and_mutated_input_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n.max(1) as u64) as usize
        };
        let cfg = SessionConfig { max_message: 4096, ..CFG };
        for _ in 0..3000 {
            let mut stream = Vec::new();
            for _ in 0..rnd(6) + 1 {
                let opcode = OpCode::from([0u8, 1, 2, 8, 9, 10, 3, 11][rnd(8)]);
                let payload: Vec<u8> = (0..rnd(300)).map(|_| rnd(256) as u8).collect();
                let start = stream.len();
                write_masked_frame(&mut stream, opcode, &payload, [1, 2, 3, 4]);
                if rnd(4) == 0 {
                    stream[start] ^= 1 << rnd(8); // flip FIN/RSV/opcode bits
                }
                if rnd(6) == 0 {
                    stream[start + 1] ^= 1 << rnd(8); // mask bit, length
                }
            }
            let mut s = open(0);
            let mut out = Vec::new();
            let mut off = 0;
            while off < stream.len() {
                let n = (rnd(64) + 1).min(stream.len() - off);
                let mut chunk = stream[off..off + n].to_vec();
                off += n;
                let mut rest: &mut [u8] = &mut chunk;
                while let Some(ev) = s.feed(&mut rest, 1, &mut out, &cfg) {
                    if let Event::Finish(Ending::Failed(e)) = ev {
                        assert!([1002, 1007, 1009].contains(&e.code));
                    }
                }
            }
        }
    }

    #[test]
    fn session_is_small() {
        assert!(std::mem::size_of::<Session>() <= 24, "{}", std::mem::size_of::<Session>());
    }
}
