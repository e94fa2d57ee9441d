//! `--h2`: WebSockets over HTTP/2 (RFC 8441), `--streams-per-conn` of them on each TCP
//! connection (a *carrier*). Like the server, the `h2` crate runs without a runtime, over
//! in-memory buffers polled with a no-op waker by the engine's loop.
//!
//! Each WebSocket is an engine connection like any other, whose socket is a [`Pipe`]: it writes
//! its HTTP/1.1 upgrade request into it, and the carrier sends that as an extended CONNECT;
//! the `:status 200` comes back as the `101` the engine expects (with the accept key for the
//! engine's own key, the subprotocol and the extension), and then frames go both ways in DATA
//! frames. So every scenario, check and figure of the engine is the same over HTTP/2.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bytes::Bytes;
use h2::client::{Connection, ResponseFuture, SendRequest};
use h2::{RecvStream, SendStream};

use c100k::net::h2io::{cx, send_from_pipe, Sending, Wire};
use c100k::net::pipe::Pipe;
use c100k::proto::ws::handshake;

/// Frames `h2` may have waiting for the socket before it stops writing.
const WIRE_ROOM: usize = 256 * 1024;

type Shake = Pin<Box<dyn Future<Output = Result<(SendRequest<Bytes>, Connection<Wire, Bytes>), h2::Error>> + Send>>;

enum State {
    Shaking(Shake),
    Open { req: SendRequest<Bytes>, conn: Pin<Box<Connection<Wire, Bytes>>> },
    Done,
}

/// One WebSocket's stream.
struct Slot {
    member: (u32, u32),
    pipe: Pipe,
    /// The engine's Sec-WebSocket-Key (the 101 we hand it carries its accept).
    key: String,
    resp: Option<ResponseFuture>,
    send: Option<SendStream<Bytes>>,
    recv: Option<RecvStream>,
}

/// What the engine must do for a member after a drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Bytes (or the end) arrived: read them.
    Input((u32, u32)),
    /// Room to write again: flush its queue.
    Writable((u32, u32)),
    /// Its stream is gone (reset, or the carrier is).
    Reset((u32, u32)),
}

/// A TCP connection carrying WebSockets in HTTP/2 streams.
pub struct Carrier {
    wire: Wire,
    state: State,
    slots: Vec<Slot>,
    /// Why it ended.
    pub error: Option<String>,
}

impl Carrier {
    pub fn new() -> Carrier {
        let wire = Wire::default();
        let io = wire.clone();
        let shake: Shake = Box::pin(async move { h2::client::Builder::new().handshake(io).await });
        Carrier { wire, state: State::Shaking(shake), slots: Vec::new(), error: None }
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.wire.feed(data);
    }

    pub fn take_output(&mut self, into: &mut Vec<u8>) {
        self.wire.take_output(into);
    }

    /// The server's SETTINGS allow extended CONNECT: members may open.
    pub fn ready(&self) -> bool {
        matches!(&self.state, State::Open { req, .. } if req.is_extended_connect_protocol_enabled())
    }

    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Carry member `member` (its upgrade request comes through `pipe`).
    pub fn add(&mut self, member: (u32, u32), pipe: Pipe, key: String) {
        self.slots.push(Slot { member, pipe, key, resp: None, send: None, recv: None });
    }

    pub fn members(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.slots.iter().map(|s| s.member)
    }

    /// Do what can be done now; `room`: bytes the socket's queue may take.
    pub fn drive(&mut self, room: usize, actions: &mut Vec<Action>) {
        self.wire.set_room(room.min(WIRE_ROOM));
        self.poll_conn();
        let mut i = 0;
        while i < self.slots.len() {
            if self.poll_slot(i, actions) {
                i += 1;
            } else {
                self.slots.swap_remove(i);
            }
        }
        self.poll_conn();
        if self.is_done() {
            for s in self.slots.drain(..) {
                s.pipe.set_reset();
                actions.push(Action::Reset(s.member));
            }
        }
    }

    fn poll_conn(&mut self) {
        if let State::Shaking(f) = &mut self.state {
            match f.as_mut().poll(&mut cx()) {
                Poll::Ready(Ok((req, conn))) => self.state = State::Open { req, conn: Box::pin(conn) },
                Poll::Ready(Err(e)) => {
                    self.error = Some(e.to_string());
                    self.state = State::Done;
                }
                Poll::Pending => return,
            }
        }
        if let State::Open { conn, .. } = &mut self.state {
            match conn.as_mut().poll(&mut cx()) {
                Poll::Ready(Ok(())) => self.state = State::Done,
                Poll::Ready(Err(e)) => {
                    self.error = Some(e.to_string());
                    self.state = State::Done;
                }
                Poll::Pending => {}
            }
        }
    }

    /// One stream's work; false once it is over.
    fn poll_slot(&mut self, i: usize, actions: &mut Vec<Action>) -> bool {
        let State::Open { req, .. } = &mut self.state else { return true };
        let s = &mut self.slots[i];
        s.pipe.unlist();
        if s.pipe.is_closed() && s.send.is_none() && s.resp.is_none() {
            return false; // gone before its request was sent
        }
        if s.send.is_none() && s.resp.is_none() {
            // Its upgrade request, as an extended CONNECT.
            let Some((request, len)) = s.pipe.with_output(connect_request) else { return true };
            if !req.is_extended_connect_protocol_enabled() {
                return true;
            }
            let _ = s.pipe.take_output(len);
            match req.send_request(request, false) {
                Ok((resp, send)) => {
                    s.resp = Some(resp);
                    s.send = Some(send);
                }
                Err(e) => {
                    log::debug!("HTTP/2 request refused: {e}");
                    s.pipe.set_reset();
                    actions.push(Action::Reset(s.member));
                    return false;
                }
            }
        }
        if let Some(resp) = s.resp.as_mut() {
            match Pin::new(resp).poll(&mut cx()) {
                Poll::Pending => {}
                Poll::Ready(Ok(r)) => {
                    s.resp = None;
                    let (parts, body) = r.into_parts();
                    s.pipe.push_input(&upgrade_answer(&parts, &s.key));
                    s.recv = Some(body);
                    actions.push(Action::Input(s.member));
                }
                Poll::Ready(Err(e)) => {
                    log::debug!("HTTP/2 stream failed: {e}");
                    s.pipe.set_reset();
                    actions.push(Action::Reset(s.member));
                    return false;
                }
            }
        }
        if let Some(recv) = s.recv.as_mut() {
            let mut got = false;
            loop {
                match recv.poll_data(&mut cx()) {
                    Poll::Ready(Some(Ok(b))) => {
                        s.pipe.push_input(&b);
                        got = true;
                    }
                    Poll::Ready(Some(Err(_))) => {
                        s.pipe.set_reset();
                        actions.push(Action::Reset(s.member));
                        return false;
                    }
                    Poll::Ready(None) => {
                        s.pipe.set_eof();
                        s.recv = None;
                        got = true;
                        break;
                    }
                    Poll::Pending => break,
                }
            }
            if let Some(recv) = s.recv.as_mut() {
                let n = s.pipe.take_consumed();
                if n > 0 {
                    let _ = recv.flow_control().release_capacity(n);
                }
            }
            if got {
                actions.push(Action::Input(s.member));
            }
        }
        if let (Some(send), None) = (s.send.as_mut(), s.resp.as_ref()) {
            if send_from_pipe(&s.pipe, send, &mut None) == Sending::Ended {
                s.send = None;
            }
        }
        if s.pipe.take_writable() {
            actions.push(Action::Writable(s.member));
        }
        !(s.pipe.is_closed() && s.send.is_none())
    }
}

impl Default for Carrier {
    fn default() -> Self {
        Carrier::new()
    }
}

/// The extended CONNECT for the HTTP/1.1 upgrade request at the start of `buf`, and the
/// request's length; `None` until it is complete.
fn connect_request(buf: &[u8]) -> Option<(http::Request<()>, usize)> {
    let mut hs = [httparse::EMPTY_HEADER; 16];
    let mut r = httparse::Request::new(&mut hs);
    let len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => return None,
    };
    let header = |name: &str| r.headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value);
    let host = header("host").and_then(|h| std::str::from_utf8(h).ok()).unwrap_or("localhost");
    let uri = format!("http://{host}{}", r.path.unwrap_or("/"));
    let mut b = http::Request::builder().method("CONNECT").uri(uri);
    for name in ["sec-websocket-version", "sec-websocket-protocol", "sec-websocket-extensions", "authorization"] {
        if let Some(v) = header(name) {
            b = b.header(name, v);
        }
    }
    let mut req = b.body(()).ok()?;
    req.extensions_mut().insert(h2::ext::Protocol::from_static("websocket"));
    Some((req, len))
}

/// The HTTP/1.1 answer the engine reads for an HTTP/2 response: a `101` (with the accept for its
/// own key) for `:status 200`, else the status itself.
fn upgrade_answer(parts: &http::response::Parts, key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(192);
    if parts.status != http::StatusCode::OK {
        out.extend_from_slice(format!("HTTP/1.1 {} h2\r\nContent-Length: 0\r\n\r\n", parts.status.as_u16()).as_bytes());
        return out;
    }
    let text = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    handshake::write_switching_protocols_with(
        &mut out,
        &handshake::derive_accept_key(key.as_bytes()),
        text("sec-websocket-protocol"),
        text("sec-websocket-extensions"),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_request_becomes_an_extended_connect_and_200_a_101() {
        let mut raw = Vec::new();
        handshake::write_client_request(&mut raw, "h:1", "/ws?room=1", "dGhlIHNhbXBsZSBub25jZQ==", Some("c100k.v1"));
        assert!(connect_request(&raw[..raw.len() - 1]).is_none(), "partial");
        let (req, len) = connect_request(&raw).unwrap();
        assert_eq!(len, raw.len());
        assert_eq!(req.method(), "CONNECT");
        assert_eq!(req.uri().path_and_query().unwrap().as_str(), "/ws?room=1");
        assert_eq!(req.extensions().get::<h2::ext::Protocol>().unwrap().as_str(), "websocket");
        assert_eq!(req.headers()["sec-websocket-protocol"], "c100k.v1");
        let (ok, _) = http::Response::builder()
            .status(200)
            .header("sec-websocket-protocol", "c100k.v1")
            .body(())
            .unwrap()
            .into_parts();
        let a = upgrade_answer(&ok, "dGhlIHNhbXBsZSBub25jZQ==");
        match handshake::parse_response(&a, "dGhlIHNhbXBsZSBub25jZQ==") {
            handshake::ParsedResponse::Complete { status, accept_ok, protocol, .. } => {
                assert_eq!((status, accept_ok, protocol.as_deref()), (101, true, Some("c100k.v1")));
            }
            other => panic!("{other:?}"),
        }
        let (no, _) = http::Response::builder().status(403).body(()).unwrap().into_parts();
        assert!(String::from_utf8(upgrade_answer(&no, "k")).unwrap().starts_with("HTTP/1.1 403 "));
    }
}
