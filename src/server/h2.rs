//! HTTP/2 on a connection (ALPN `h2`, or the prior-knowledge preface on the plain port), driven
//! by its event loop: the `h2` crate's server over in-memory buffers, polled with a no-op waker
//! whenever bytes arrive, bytes can leave, or one of its streams has something to say. No
//! runtime, no thread hop: the loop that reads the socket runs the streams' sessions.
//!
//! Each stream is a connection of its own in the loop's slab (its session, rooms, timers, queue
//! and metrics are those of any connection), reading and writing through a [`Pipe`]. Its request
//! is handed to it as the HTTP/1.1 request it stands for (`proto::bridge`), and its HTTP/1.1
//! answer becomes the stream's response; after a `101`, its bytes are RFC 6455 frames carried
//! in DATA frames both ways (RFC 8441).
//!
//! Flow control is backpressure: a stream's output moves into DATA frames only as its send
//! window allows; the rest waits in its pipe (bounded), then in its own queue, where
//! `--max-backlog` judges it a slow consumer like any socket. The receive window is given back
//! only for bytes its connection has read.

use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use h2::server::{Connection, Handshake, SendResponse};
use h2::{Reason, RecvStream, SendStream};
use slab::Slab;

use crate::net::h2io::{cx, send_from_pipe, Sending, Wire};
use crate::net::pipe::Pipe;
use crate::proto::bridge;

/// The client's connection preface (RFC 9113 §3.4): how prior knowledge is told from HTTP/1.1.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Received and not yet parsed by `h2` past this: stop reading the socket until it is.
pub const WIRE_INPUT_MAX: usize = 64 * 1024;

/// Per-stream receive window: what a client may send ahead of its stream's reader.
const STREAM_WINDOW: u32 = 64 * 1024;
/// Connection receive window (all streams together).
const CONN_WINDOW: u32 = 1 << 20;
/// What `h2` itself may buffer for one stream's sends (our pipe holds the rest).
const SEND_BUFFER: usize = 64 * 1024;
/// Largest header block accepted (the CONTINUATION flood bound).
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams the client may reset before we accept them, before that is called an attack
/// (CVE-2023-44487, rapid reset): the connection is then ended with ENHANCE_YOUR_CALM.
const MAX_PENDING_RESETS: usize = 20;

/// Limits of an HTTP/2 connection.
#[derive(Debug, Clone, Copy)]
pub struct H2Limits {
    /// `--h2-max-streams`: concurrent streams per connection.
    pub max_streams: u32,
    /// Largest request body collected (`--max-message-size`).
    pub max_body: usize,
}

/// Whether `buf` could be the start of an HTTP/2 connection: `Some(true)` when it holds the whole
/// preface, `Some(false)` while it is a shorter prefix of it, `None` when it is not.
pub fn preface(buf: &[u8]) -> Option<bool> {
    let n = buf.len().min(PREFACE.len());
    (buf[..n] == PREFACE[..n]).then_some(n == PREFACE.len())
}

enum State {
    Shaking(Pin<Box<Handshake<Wire, Bytes>>>),
    Open(Box<Connection<Wire, Bytes>>),
    Done,
}

/// Where a stream's answer stands.
enum Answer {
    /// Waiting for the head of its connection's answer.
    Head(SendResponse<Bytes>),
    /// Sending its body; `left`: bytes still due when the answer gave its length.
    Body { send: SendStream<Bytes>, left: Option<usize> },
    /// Our side of the stream ended.
    Ended,
}

/// A request whose body is collected before its stream's connection sees it.
struct Collect {
    head: Vec<u8>,
    body: Vec<u8>,
}

struct Slot {
    /// The stream's own connection (slab key, generation), once made.
    inner: Option<(u32, u32)>,
    pipe: Pipe,
    recv: RecvStream,
    recv_done: bool,
    answer: Answer,
    connect: bool,
    collect: Option<Collect>,
    /// Its WebSocket is open (counted in [`H2Conn::websockets`]).
    ws: bool,
}

/// What the loop must do for a stream's connection after a drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// A new stream: make its connection (slot, then [`H2Conn::attach`]); its request waits in
    /// the pipe.
    Open { slot: usize },
    /// Input arrived (or its end): read it.
    Input((u32, u32)),
    /// Its send window opened: flush its queue.
    Writable((u32, u32)),
    /// The client reset the stream (or the connection is gone): drop it.
    Reset((u32, u32)),
}

/// Counts for the loop's metrics, drained after each drive.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counts {
    pub streams: u64,
    pub websockets: u64,
    pub resets: u64,
    pub refused: u64,
    /// Change in connections carrying at least one WebSocket (+1, -1 or 0).
    pub ws_conns: i64,
}

/// One HTTP/2 connection's state: `h2`'s server, its buffers, and its streams.
pub struct H2Conn {
    wire: Wire,
    state: State,
    slots: Slab<Slot>,
    outer: (u32, u32),
    limits: H2Limits,
    /// Why it ended, once it has.
    pub error: Option<String>,
    pub counts: Counts,
    /// No stream was accepted since the loop's idle check last looked.
    pub quiet: bool,
    /// Its open WebSockets.
    websockets: u32,
}

impl std::fmt::Debug for H2Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H2Conn").field("streams", &self.slots.len()).field("outer", &self.outer).finish()
    }
}

impl H2Conn {
    /// Start serving HTTP/2 on connection `outer` (slab key, generation).
    pub fn new(outer: (u32, u32), limits: H2Limits) -> H2Conn {
        let wire = Wire::default();
        let mut b = h2::server::Builder::new();
        b.enable_connect_protocol()
            .max_concurrent_streams(limits.max_streams)
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONN_WINDOW)
            .max_send_buffer_size(SEND_BUFFER)
            .max_header_list_size(MAX_HEADER_LIST)
            .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
            .max_concurrent_reset_streams(limits.max_streams as usize);
        let hs = Box::pin(b.handshake(wire.clone()));
        H2Conn {
            wire,
            state: State::Shaking(hs),
            slots: Slab::new(),
            outer,
            limits,
            error: None,
            counts: Counts::default(),
            quiet: false,
            websockets: 0,
        }
    }

    /// Bytes from the socket (decrypted).
    pub fn feed(&mut self, data: &[u8]) {
        self.wire.feed(data);
    }

    /// Received bytes `h2` has not parsed yet.
    pub fn input_len(&self) -> usize {
        self.wire.input_len()
    }

    /// What is to be written to the socket.
    pub fn take_output(&mut self, into: &mut Vec<u8>) {
        self.wire.take_output(into);
    }

    pub fn streams(&self) -> usize {
        self.slots.len()
    }

    /// The connections of its streams.
    pub fn inners(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.slots.iter().filter_map(|(_, s)| s.inner)
    }

    /// Its connection is over: no streams, nothing more to read.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open(_))
    }

    /// Stop taking streams (GOAWAY); the connection ends when its streams have.
    pub fn go_away(&mut self) {
        match &mut self.state {
            State::Open(c) => c.graceful_shutdown(),
            State::Shaking(_) => self.state = State::Done,
            State::Done => {}
        }
    }

    /// Give the stream in `slot` its connection.
    pub fn attach(&mut self, slot: usize, inner: (u32, u32)) -> Option<Pipe> {
        let s = self.slots.get_mut(slot)?;
        s.inner = Some(inner);
        Some(s.pipe.clone())
    }

    /// Do everything that can be done now: read frames, accept streams, move each stream's input
    /// to its pipe and its output into DATA frames, write frames. `room`: bytes the socket's
    /// queue may take. What the loop must do for streams' connections goes into `actions`.
    pub fn drive(&mut self, room: usize, actions: &mut Vec<Action>) {
        self.wire.set_room(room);
        self.poll_conn(actions);
        let keys: Vec<usize> = self.slots.iter().map(|(k, _)| k).collect();
        for k in keys {
            self.poll_stream(k, actions);
        }
        // Frames the streams queued go out now.
        self.poll_conn(actions);
        if self.is_done() {
            let ended = self.slots.drain().collect::<Vec<_>>();
            for s in ended {
                self.forget(&s);
                s.pipe.set_reset();
                if let Some(i) = s.inner {
                    actions.push(Action::Reset(i));
                }
            }
        }
    }

    fn poll_conn(&mut self, actions: &mut Vec<Action>) {
        if let State::Shaking(hs) = &mut self.state {
            match std::future::Future::poll(hs.as_mut(), &mut cx()) {
                Poll::Ready(Ok(c)) => self.state = State::Open(Box::new(c)),
                Poll::Ready(Err(e)) => {
                    self.error = Some(e.to_string());
                    self.state = State::Done;
                }
                Poll::Pending => return,
            }
        }
        loop {
            let State::Open(c) = &mut self.state else { return };
            match c.poll_accept(&mut cx()) {
                Poll::Ready(Some(Ok((req, respond)))) => self.accept(req, respond, actions),
                Poll::Ready(Some(Err(e))) => {
                    if !e.is_go_away() || e.reason() != Some(Reason::NO_ERROR) {
                        self.error = Some(e.to_string());
                    }
                    self.state = State::Done;
                }
                Poll::Ready(None) => self.state = State::Done,
                Poll::Pending => return,
            }
        }
    }

    fn accept(&mut self, req: http::Request<RecvStream>, mut respond: SendResponse<Bytes>, actions: &mut Vec<Action>) {
        self.counts.streams += 1;
        self.quiet = false;
        let (parts, recv) = req.into_parts();
        let protocol = parts.extensions.get::<h2::ext::Protocol>().map(|p| p.as_str().to_owned());
        let head = bridge::Head {
            method: parts.method.as_str(),
            path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
            authority: parts.uri.authority().map_or("", |a| a.as_str()),
            protocol: protocol.as_deref(),
        };
        let connect = protocol.is_some();
        let whole = connect || recv.is_end_stream() || parts.headers.contains_key(http::header::CONTENT_LENGTH);
        let headers = parts.headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes()));
        let mut out = Vec::with_capacity(256);
        if let Err(r) = bridge::request(head, headers, &mut out) {
            self.counts.refused += 1;
            return refuse(&mut respond, r.status, r.reason);
        }
        let pipe = Pipe::new(self.outer);
        let collect = if whole {
            pipe.push_input(&out);
            None
        } else {
            // Its length is known once it is all here (the head is written again then).
            Some(Collect { head: Vec::new(), body: Vec::new() })
        };
        let recv_done = recv.is_end_stream();
        if recv_done && collect.is_none() {
            pipe.set_eof();
        }
        let slot =
            Slot { inner: None, pipe, recv, recv_done, answer: Answer::Head(respond), connect, collect, ws: false };
        let k = self.slots.insert(slot);
        if let Some(c) = self.slots[k].collect.as_mut() {
            // Kept for the rewrite: the translated head without its length.
            c.head = out;
            return;
        }
        actions.push(Action::Open { slot: k });
    }

    fn poll_stream(&mut self, k: usize, actions: &mut Vec<Action>) {
        let max_body = self.limits.max_body;
        let s = &mut self.slots[k];
        s.pipe.unlist();
        // Input.
        let mut got = false;
        while !s.recv_done {
            match s.recv.poll_data(&mut cx()) {
                Poll::Ready(Some(Ok(b))) => {
                    if let Some(c) = s.collect.as_mut() {
                        let _ = s.recv.flow_control().release_capacity(b.len());
                        if c.body.len() + b.len() > max_body {
                            self.counts.refused += 1;
                            if let Answer::Head(r) = &mut s.answer {
                                refuse(r, 413, "request body over --max-message-size");
                            }
                            self.slots.remove(k);
                            return;
                        }
                        c.body.extend_from_slice(&b);
                    } else {
                        s.pipe.push_input(&b);
                        got = true;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    log::debug!("HTTP/2: stream input failed: {e}");
                    self.counts.resets += 1;
                    return self.reset(k, actions);
                }
                Poll::Ready(None) => {
                    s.recv_done = true;
                    if let Some(c) = s.collect.take() {
                        s.pipe.push_input(&bridge::with_length(&c.head, c.body.len()));
                        s.pipe.push_input(&c.body);
                        s.pipe.set_eof();
                        actions.push(Action::Open { slot: k });
                        return;
                    }
                    s.pipe.set_eof();
                    got = true;
                }
                Poll::Pending => break,
            }
        }
        let Some(inner) = s.inner else { return };
        if got {
            actions.push(Action::Input(inner));
        }
        let consumed = s.pipe.take_consumed();
        if consumed > 0 && !s.recv_done {
            let _ = s.recv.flow_control().release_capacity(consumed);
        }
        // A reset while only we were sending.
        let reset = match &mut s.answer {
            Answer::Head(r) => r.poll_reset(&mut cx()).is_ready(),
            Answer::Body { send, .. } => send.poll_reset(&mut cx()).is_ready(),
            Answer::Ended => false,
        };
        if reset {
            self.counts.resets += 1;
            return self.reset(k, actions);
        }
        // Output.
        if let Answer::Head(_) = s.answer {
            match s.pipe.with_output(bridge::answer) {
                Ok(None) => {}
                Ok(Some(a)) => {
                    let _ = s.pipe.take_output(a.head_len);
                    let mut resp = http::Response::builder().status(a.status);
                    for (name, value) in &a.headers {
                        resp = resp.header(name.as_str(), value.as_slice());
                    }
                    let empty = a.body_len == Some(0) && !a.upgraded;
                    let Answer::Head(mut r) = std::mem::replace(&mut s.answer, Answer::Ended) else { return };
                    match resp
                        .body(())
                        .map_err(|e| e.to_string())
                        .and_then(|resp| r.send_response(resp, empty).map_err(|e| e.to_string()))
                    {
                        Ok(send) if !empty => s.answer = Answer::Body { send, left: a.body_len },
                        Ok(_) => {}
                        Err(e) => {
                            log::debug!("HTTP/2: answer not sent: {e}");
                            r.send_reset(Reason::INTERNAL_ERROR);
                        }
                    }
                    if a.upgraded && s.connect {
                        self.counts.websockets += 1;
                        s.ws = true;
                        self.websockets += 1;
                        if self.websockets == 1 {
                            self.counts.ws_conns += 1;
                        }
                    }
                }
                Err(e) => {
                    log::debug!("HTTP/2: {e} from a stream's connection");
                    if let Answer::Head(r) = &mut s.answer {
                        r.send_reset(Reason::INTERNAL_ERROR);
                    }
                    s.answer = Answer::Ended;
                }
            }
        }
        let finished = s.pipe.finished();
        if let Answer::Body { send, left } = &mut s.answer {
            if send_from_pipe(&s.pipe, send, left) == Sending::Ended {
                s.answer = Answer::Ended;
            }
        } else if let (Answer::Head(r), Some(_)) = (&mut s.answer, finished) {
            // Ended without answering.
            log::debug!("HTTP/2: a stream's connection ended without answering ({} bytes)", s.pipe.output_len());
            r.send_reset(Reason::INTERNAL_ERROR);
            s.answer = Answer::Ended;
        }
        if matches!(s.answer, Answer::Ended) && s.pipe.output_len() > 0 {
            let _ = s.pipe.take_output(usize::MAX); // past the answer's length: nobody reads it
        }
        if s.pipe.take_writable() {
            actions.push(Action::Writable(inner));
        }
        if s.pipe.is_closed() && matches!(s.answer, Answer::Ended) {
            let s = self.slots.remove(k);
            self.forget(&s);
        }
    }

    /// A stream is gone: its WebSocket no longer counts.
    fn forget(&mut self, s: &Slot) {
        if s.ws {
            self.websockets -= 1;
            if self.websockets == 0 {
                self.counts.ws_conns -= 1;
            }
        }
    }

    /// It carries at least one open WebSocket.
    pub fn has_websockets(&self) -> bool {
        self.websockets > 0
    }

    fn reset(&mut self, k: usize, actions: &mut Vec<Action>) {
        let s = self.slots.remove(k);
        self.forget(&s);
        s.pipe.set_reset();
        if let Some(i) = s.inner {
            actions.push(Action::Reset(i));
        }
    }

    /// The stream's connection in `slot` could not be made.
    pub fn refuse_slot(&mut self, slot: usize) {
        if let Some(mut s) = self.slots.try_remove(slot) {
            if let Answer::Head(r) = &mut s.answer {
                refuse(r, 503, "server at its connection limit");
            }
        }
    }
}

/// Answer a stream ourselves (it never gets a connection).
fn refuse(respond: &mut SendResponse<Bytes>, status: u16, reason: &str) {
    let resp = http::Response::builder().status(status).header("content-type", "text/plain; charset=utf-8").body(());
    match resp.map(|r| respond.send_response(r, false)) {
        Ok(Ok(mut send)) => {
            let _ = send.send_data(Bytes::from(format!("{reason}\n")), true);
        }
        _ => respond.send_reset(Reason::INTERNAL_ERROR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preface_is_told_from_http1_on_its_first_bytes() {
        assert_eq!(preface(b"PRI * HT"), Some(false));
        assert_eq!(preface(PREFACE), Some(true));
        assert_eq!(preface(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"), Some(true));
        assert_eq!(preface(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(preface(b"PRIX"), None);
    }
}
