//! The per-connection slab entry. It is the whole per-connection cost while idle, so it is kept
//! small (see `SIZE_BUDGET`): the socket, a generation, the timer arm id, the transport and its
//! flags, the protocol session, a pointer to an outbound queue that exists only while writes
//! block, and a pointer to room state ([`Peer`]) that exists only for room members.

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;

use bytes::Bytes;
use mio::net::TcpStream;

use crate::auth::Identity;
use crate::net::outq::OutQueue;
use crate::net::pipe::{Closed, Pipe};
use crate::net::tls::ServerTls;
use crate::proto::v1::Position;
use crate::proto::ws::session::Session;
use crate::server::h2::H2Conn;

/// Bytes of the slab entry we allow (`tests/` measures it): 4 (socket) + 4 (generation) +
/// 4 (timer id) + 4 (route, flags) + 24 (session) + 8 (queue and TLS pointer) + 8 (peer
/// pointer) = 56, within 64 so the slab entry fits one cache line.
pub const SIZE_BUDGET: usize = 64;

/// What the connection is, once its request is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Route {
    /// Reading the first HTTP request (or a WebSocket that has ended).
    Http,
    /// Reading the next request of a keep-alive connection: idling here is no failure.
    KeepAlive,
    /// WebSocket echo.
    Echo,
    /// A seed-mode room member (`/ws?room=NAME` without a subprotocol).
    Raw,
    /// A `c100k.v1` client.
    V1,
    /// A Server-Sent Events stream (`/sse`): written to, never read from.
    Sse,
    /// A long poll (`/poll`) waiting for its room: an HTTP request not yet answered.
    Poll,
    /// An HTTP/2 connection: its streams are connections of their own (see `server::h2`).
    H2,
}

impl Route {
    /// A WebSocket route (the open-WebSocket gauge counts these).
    pub fn is_ws(self) -> bool {
        matches!(self, Route::Echo | Route::Raw | Route::V1)
    }
}

/// Flag bits in [`Conn::flags`].
pub mod flags {
    /// Reading is paused because too much output is queued (resumes when it drains).
    pub const READ_PAUSED: u16 = 1;
    /// We shut down our writing side (after the last byte of a finished session).
    pub const WR_SHUT: u16 = 2;
    /// The peer closed its writing side.
    pub const PEER_EOF: u16 = 4;
    /// Close the socket as soon as our last bytes are out (RFC 6455 §7.1.1: the server closes
    /// TCP first after a closing handshake). Without it, a finished connection is half-closed
    /// and kept until the peer's EOF, so a peer still sending cannot RST away our last bytes.
    pub const CLOSE_WHEN_FLUSHED: u16 = 8;
    /// Frames were corked for this connection in this loop iteration; it is on the flush list.
    pub const DIRTY: u16 = 16;
    /// The socket refused bytes: the queue is flushed on the next writable edge.
    pub const BLOCKED: u16 = 32;
    /// An HTTP request waits for the broker's answer; later requests wait behind it.
    pub const AWAITING: u16 = 64;
    /// The awaited HTTP answer keeps the connection open.
    pub const KEEP_ALIVE: u16 = 128;
    /// Not read while the process's buffered input is over --max-buffered-input.
    pub const INPUT_PAUSED: u16 = 256;
    /// Accepted over --max-connections: may only ask for /healthz or /metrics (else 503).
    pub const OVERFLOW: u16 = 512;
    /// The awaited HTTP answer is readable from other origins (CORS: SSE, poll and POST).
    pub const CORS: u16 = 8192;
    /// Its client address holds --max-connections-per-ip already (429).
    pub const PER_IP: u16 = 1024;
    /// From --metrics-listen: only /metrics and /healthz (else 404).
    pub const ADMIN: u16 = 2048;
    /// Input already read is kept in the stash, to be processed before the next read.
    pub const HELD: u16 = 4096;
    /// TLS could not encrypt for it (its keys are exhausted): drop it at the next chance.
    pub const TLS_BROKEN: u16 = 16384;
    /// Failed (TLS): our last bytes (an alert, a 400) are out and our side is shut; what the
    /// peer still sends is read and dropped until its EOF or the close timeout, so closing does
    /// not reset those last bytes away.
    pub const DISCARD: u16 = 32768;
}

/// Marks a seat whose join the broker has not answered yet.
pub const PENDING: u32 = u32::MAX;

/// A room a connection is in (or joining): the room's local index and the member's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    pub room: u32,
    pub pos: u32,
    pub presence: bool,
}

/// The rooms a connection is in: one inline (most members are in one room), more on the heap.
/// 16 bytes, so that a [`Peer`] fits 64.
#[derive(Debug, Default)]
pub enum Seats {
    #[default]
    Empty,
    One(Seat),
    Many(Box<Vec<Seat>>),
}

impl Seats {
    pub fn push(&mut self, s: Seat) {
        *self = match std::mem::take(self) {
            Seats::Empty => Seats::One(s),
            Seats::One(a) => Seats::Many(Box::new(vec![a, s])),
            Seats::Many(mut v) => {
                v.push(s);
                Seats::Many(v)
            }
        };
    }

    /// Remove seat `i`, the last one taking its place (like `Vec::swap_remove`).
    pub fn swap_remove(&mut self, i: usize) -> Seat {
        match std::mem::take(self) {
            Seats::Empty => panic!("swap_remove on no seats"),
            Seats::One(a) => {
                assert_eq!(i, 0, "one seat");
                a
            }
            Seats::Many(mut v) => {
                let s = v.swap_remove(i);
                *self = if v.len() == 1 { Seats::One(v[0]) } else { Seats::Many(v) };
                s
            }
        }
    }
}

impl std::ops::Deref for Seats {
    type Target = [Seat];
    fn deref(&self) -> &[Seat] {
        match self {
            Seats::Empty => &[],
            Seats::One(s) => std::slice::from_ref(s),
            Seats::Many(v) => v,
        }
    }
}

impl std::ops::DerefMut for Seats {
    fn deref_mut(&mut self) -> &mut [Seat] {
        match self {
            Seats::Empty => &mut [],
            Seats::One(s) => std::slice::from_mut(s),
            Seats::Many(v) => v,
        }
    }
}

/// A token bucket for `--max-publish-rate`: `rate` messages a second with a burst of `rate`,
/// and a count of refusals that drains at the same pace (too many: the client is flooding).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bucket {
    tokens: f32,
    strikes: f32,
    /// Milliseconds on the loop's clock at the last refill.
    at_ms: u32,
}

/// Outcome of [`Bucket::take`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    Ok,
    /// Over the rate: refuse this message.
    Refused,
    /// Refused again and again (a second burst's worth): close the connection.
    Flooding,
}

impl Bucket {
    pub fn full(rate: u32, now_ms: u32) -> Bucket {
        Bucket { tokens: rate as f32, strikes: 0.0, at_ms: now_ms }
    }

    pub fn take(&mut self, rate: u32, now_ms: u32) -> Take {
        if rate == 0 {
            return Take::Ok;
        }
        let cap = rate as f32;
        let refill = now_ms.wrapping_sub(self.at_ms) as f32 * cap / 1000.0;
        self.at_ms = now_ms;
        self.tokens = (self.tokens + refill).min(cap);
        self.strikes = (self.strikes - refill).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Take::Ok;
        }
        self.strikes += 1.0;
        if self.strikes >= cap {
            Take::Flooding
        } else {
            Take::Refused
        }
    }
}

/// A room member's state, boxed so that connections outside rooms (echo) pay one pointer.
#[derive(Debug)]
pub struct Peer {
    pub identity: Identity,
    pub seats: Seats,
    pub bucket: Bucket,
}

/// State kept only until the broker answers a join.
#[derive(Debug)]
pub enum Pending {
    /// A seed-mode member's `Sec-WebSocket-Accept`, kept until the broker has it in its room:
    /// its 101 goes out then, so every message published after it reaches the member.
    Upgrade([u8; 28]),
    /// Positions asked for in rooms whose join is not answered yet (local room index, position):
    /// a long poll answers its timeout with it, and an event stream of several rooms writes it
    /// into its ids, so a reconnect in the meantime resumes from it.
    Since(Vec<(u32, Position)>),
}

impl Peer {
    pub fn new(identity: Identity, bucket: Bucket) -> Peer {
        Peer { identity, seats: Seats::Empty, bucket }
    }

    pub fn seat(&self, room: u32) -> Option<usize> {
        self.seats.iter().position(|s| s.room == room)
    }
}

/// Where a connection's bytes go: its own socket, or a stream inside an HTTP/2 connection (whose
/// pipe is in its [`Io`]). 4 bytes: the stream variant takes the descriptor's niche.
#[derive(Debug)]
pub enum Sock {
    Tcp(TcpStream),
    Inner,
}

/// What else a connection's bytes pass through, beside the queue.
#[derive(Debug, Default)]
pub enum Link {
    #[default]
    None,
    /// This connection speaks HTTP/2: the multiplexer of its streams.
    H2(Box<H2Conn>),
    /// This connection is a stream inside an HTTP/2 connection: its end of the pipe.
    Stream(Pipe),
}

/// The writer a queue flushes into: the socket, or the stream's pipe.
enum Target<'a> {
    Tcp(&'a mut TcpStream),
    Pipe(&'a Pipe),
    None,
}

impl Write for Target<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Target::Tcp(s) => s.write(b),
            Target::Pipe(p) => p.write(b),
            Target::None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Target::Tcp(s) => s.write_vectored(bufs),
            Target::Pipe(p) => p.write_vectored(bufs),
            Target::None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn target<'a>(stream: &'a mut Sock, link: Option<&'a Link>) -> Target<'a> {
    match (stream, link) {
        (Sock::Tcp(s), _) => Target::Tcp(s),
        (Sock::Inner, Some(Link::Stream(p))) => Target::Pipe(p),
        (Sock::Inner, _) => Target::None,
    }
}

#[derive(Debug)]
pub struct Conn {
    pub stream: Sock,
    /// Upper half of the mio token: events for a recycled slab key are recognised as stale.
    pub gen: u32,
    /// Id of the connection's live timer entry; older entries are stale.
    pub timer: u32,
    pub route: Route,
    pub flags: u16,
    pub sess: Session,
    /// The outbound queue and TLS, behind one pointer (see [`Io`]).
    pub io: Option<Box<Io>>,
    pub peer: Option<Box<Peer>>,
}

/// What a connection holds beyond its slab entry only while it needs it: the outbound queue
/// while its socket refuses bytes, and TLS for the connection's life. One pointer for both keeps
/// a plain connection's entry at 56 bytes; a plain connection has no `Io` while its writes go
/// through, a TLS connection always has one (its queue empty, allocating nothing, most of the
/// time).
#[derive(Debug, Default)]
pub struct Io {
    /// For a TLS connection it only ever holds records (its own, under its keys), so plaintext
    /// and ciphertext never mix.
    pub q: OutQueue,
    /// With --tls-cert: what is written is encrypted here, what is read decrypted. Boxed: a
    /// plain connection's `Io` is made and freed on every blocked write and fan-out, so it
    /// stays small (rustls' state is over 1 KB).
    pub tls: Option<Box<ServerTls>>,
    /// HTTP/2: the multiplexer (on the TCP connection) or the pipe (on a stream).
    pub link: Link,
}

/// Result of handing bytes to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written to the socket or queued; carries (bytes written now, memory newly queued).
    Ok { written: usize, queued: usize },
    /// The socket failed; drop the connection.
    Broken,
}

impl Conn {
    pub fn new(stream: TcpStream, gen: u32, sess: Session) -> Self {
        Conn { stream: Sock::Tcp(stream), gen, timer: 0, route: Route::Http, flags: 0, sess, io: None, peer: None }
    }

    /// A stream inside an HTTP/2 connection, reading and writing through `pipe`.
    pub fn inner(pipe: Pipe, gen: u32, sess: Session) -> Self {
        let io = Box::new(Io { link: Link::Stream(pipe), ..Io::default() });
        Conn { stream: Sock::Inner, gen, timer: 0, route: Route::Http, flags: 0, sess, io: Some(io), peer: None }
    }

    /// A connection that speaks TLS from its first byte.
    pub fn with_tls(mut self, tls: ServerTls) -> Self {
        self.io = Some(Box::new(Io { tls: Some(Box::new(tls)), ..Io::default() }));
        self
    }

    /// The TCP socket (none for a stream inside an HTTP/2 connection).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match &self.stream {
            Sock::Tcp(s) => Some(s),
            Sock::Inner => None,
        }
    }

    /// The pipe of a stream inside an HTTP/2 connection.
    pub fn pipe(&self) -> Option<&Pipe> {
        match self.io.as_deref().map(|io| &io.link) {
            Some(Link::Stream(p)) => Some(p),
            _ => None,
        }
    }

    /// Read from the socket or the stream.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.stream {
            Sock::Tcp(s) => s.read(buf),
            Sock::Inner => match self.pipe() {
                Some(p) => p.read(buf),
                None => Err(io::ErrorKind::NotConnected.into()),
            },
        }
    }

    /// Shut our writing side (a stream: its END_STREAM once its bytes are out).
    pub fn shutdown_write(&mut self) {
        match &self.stream {
            Sock::Tcp(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
            Sock::Inner => {
                if let Some(p) = self.pipe() {
                    p.shutdown_write();
                }
            }
        }
    }

    /// A stream going away tells its multiplexer whether it finished or its bytes are cut.
    pub fn close_inner(&self) {
        if let Some(p) = self.pipe() {
            p.close(if self.has_queue() { Closed::Abort } else { Closed::Done });
        }
    }

    /// The HTTP/2 multiplexer, taken out to be driven (put back with [`Conn::put_h2`]).
    pub fn take_h2(&mut self) -> Option<Box<H2Conn>> {
        let io = self.io.as_deref_mut()?;
        match std::mem::take(&mut io.link) {
            Link::H2(h) => Some(h),
            other => {
                io.link = other;
                None
            }
        }
    }

    pub fn put_h2(&mut self, h: Box<H2Conn>) {
        self.io.get_or_insert_with(Box::default).link = Link::H2(h);
    }

    /// The `Io` must outlive an empty queue (TLS, HTTP/2, a stream's pipe).
    fn io_stays(io: &Io) -> bool {
        io.tls.is_some() || !matches!(io.link, Link::None)
    }

    pub fn has(&self, f: u16) -> bool {
        self.flags & f != 0
    }

    pub fn tls(&self) -> Option<&ServerTls> {
        self.io.as_ref().and_then(|io| io.tls.as_deref())
    }

    pub fn tls_mut(&mut self) -> Option<&mut ServerTls> {
        self.io.as_mut().and_then(|io| io.tls.as_deref_mut())
    }

    /// Bytes wait in the outbound queue.
    pub fn has_queue(&self) -> bool {
        self.io.as_ref().is_some_and(|io| !io.q.is_empty())
    }

    /// Memory held by the outbound queue (its bytes and their bookkeeping).
    pub fn queued(&self) -> usize {
        self.io.as_ref().map_or(0, |io| io.q.cost())
    }

    /// The outbound queue of a connection that is not TLS (whose queued bytes may be dropped).
    pub fn plain_queue(&mut self) -> Option<&mut OutQueue> {
        self.io.as_mut().filter(|io| io.tls.is_none()).map(|io| &mut io.q)
    }

    /// Queue a shared buffer to go out at the end of the loop iteration, together with
    /// everything else queued for this connection meanwhile: one `writev` for many frames.
    /// Returns whether this is the first time in an iteration (the caller lists the connection
    /// for the end-of-iteration flush) and the memory the queue gained.
    pub fn cork(&mut self, b: &Bytes) -> (bool, usize) {
        // Small frames behind a socket that refuses bytes are copied into blocks (their handles
        // would cost more than they do); frames for a reader that keeps up stay shared handles.
        let coalesce = self.has(flags::BLOCKED);
        let io = self.io.get_or_insert_with(Box::default);
        let added = match io.tls.as_mut() {
            // Encrypted now, under this connection's keys.
            Some(tls) => crate::net::tls::with_scratch(|ct| match tls.encrypt(b, ct) {
                Ok(()) => io.q.push_slice(ct),
                Err(_) => {
                    self.flags |= flags::TLS_BROKEN;
                    0
                }
            }),
            None => io.q.push_as(b.clone(), coalesce),
        };
        let first = !self.has(flags::DIRTY);
        self.flags |= flags::DIRTY;
        (first, added)
    }

    /// Send bytes from a scratch buffer; the part the socket does not take is copied once into
    /// the queue.
    pub fn send_slice(&mut self, b: &[u8]) -> Sent {
        if self.tls().is_none() {
            return self.send_raw(b);
        }
        crate::net::tls::with_scratch(|ct| match self.tls_mut().map(|tls| tls.encrypt(b, ct)) {
            Some(Ok(())) => self.send_raw(ct),
            _ => Sent::Broken,
        })
    }

    /// Send bytes exactly as given (on a TLS connection: records already made): straight to the
    /// socket when nothing is queued, else behind what is; what the socket does not take is
    /// copied once into the queue.
    pub fn send_raw(&mut self, b: &[u8]) -> Sent {
        if b.is_empty() {
            return Sent::Ok { written: 0, queued: 0 };
        }
        if let Some(io) = self.io.as_deref_mut().filter(|io| !io.q.is_empty()) {
            return Sent::Ok { written: 0, queued: io.q.push(Bytes::copy_from_slice(b)) };
        }
        let link = self.io.as_deref().map(|io| &io.link);
        // (A stream's bytes are counted as sent by its connection's socket, not here.)
        let tcp = matches!(self.stream, Sock::Tcp(_));
        let counted = |n: usize| if tcp { n } else { 0 };
        match crate::net::outq::write_some(&mut target(&mut self.stream, link), b) {
            Ok(n) if n == b.len() => Sent::Ok { written: counted(n), queued: 0 },
            Ok(n) => {
                let written = counted(n);
                self.flags |= flags::BLOCKED;
                let q = &mut self.io.get_or_insert_with(Box::default).q;
                Sent::Ok { written, queued: q.push_rest(Bytes::copy_from_slice(&b[n..]), n > 0) }
            }
            Err(_) => Sent::Broken,
        }
    }

    /// On a TLS connection whose handshake is done: send close_notify (once).
    pub fn close_notify(&mut self) -> Sent {
        if self.tls().is_none() {
            return Sent::Ok { written: 0, queued: 0 };
        }
        crate::net::tls::with_scratch(|ct| match self.tls_mut().map(|tls| tls.close_notify(ct)) {
            Some(Ok(())) => self.send_raw(ct),
            _ => Sent::Broken,
        })
    }

    /// Flush the queue; frees it when drained. Returns (bytes written, memory freed).
    pub fn flush(&mut self) -> io::Result<(usize, usize)> {
        if self.has(flags::TLS_BROKEN) {
            return Err(io::ErrorKind::InvalidData.into());
        }
        let Some(io) = self.io.as_deref_mut() else {
            return Ok((0, 0));
        };
        let Io { q, link, .. } = io;
        let (mut n, freed) = q.flush(&mut target(&mut self.stream, Some(link)))?;
        if matches!(self.stream, Sock::Inner) {
            n = 0; // counted by its connection's socket
        }
        if io.q.is_empty() {
            let rest = io.q.cost();
            if Self::io_stays(io) {
                io.q = OutQueue::default();
            } else {
                self.io = None;
            }
            self.flags &= !flags::BLOCKED;
            return Ok((n, freed + rest));
        }
        self.flags |= flags::BLOCKED;
        Ok((n, freed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seats_keep_one_inline_and_a_member_fits_a_cache_line() {
        let seat = |room| Seat { room, pos: room * 10, presence: false };
        let mut s = Seats::default();
        assert!(s.is_empty());
        s.push(seat(1));
        assert!(matches!(s, Seats::One(_)));
        s.push(seat(2));
        s.push(seat(3));
        assert_eq!(s.iter().map(|x| x.room).collect::<Vec<_>>(), [1, 2, 3]);
        s[1].pos = 7;
        assert_eq!(s.swap_remove(0).room, 1);
        assert_eq!(s.iter().map(|x| (x.room, x.pos)).collect::<Vec<_>>(), [(3, 30), (2, 7)]);
        assert_eq!(s.swap_remove(1).room, 2);
        assert!(matches!(s, Seats::One(Seat { room: 3, .. })), "back inline");
        assert_eq!(s.swap_remove(0).room, 3);
        assert!(s.is_empty());
        assert_eq!(std::mem::size_of::<Seats>(), 16);
        assert!(std::mem::size_of::<Peer>() <= 48, "{}", std::mem::size_of::<Peer>());
    }

    #[test]
    fn the_io_box_of_a_plain_connection_stays_small() {
        // Made and freed on every fan-out to a member whose write blocks: no TLS state inline.
        assert!(std::mem::size_of::<Io>() <= 96, "{}", std::mem::size_of::<Io>());
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate_then_calls_a_flood() {
        let mut b = Bucket::full(10, 0);
        for _ in 0..10 {
            assert_eq!(b.take(10, 0), Take::Ok);
        }
        assert_eq!(b.take(10, 0), Take::Refused);
        assert_eq!(b.take(10, 100), Take::Ok, "100 ms refill one token");
        for _ in 0..9 {
            assert_eq!(b.take(10, 100), Take::Refused);
        }
        assert_eq!(b.take(10, 100), Take::Flooding, "a second burst of refusals");
        // Slowing down forgives: strikes drain at the rate.
        let mut b = Bucket::full(10, 0);
        for _ in 0..15 {
            b.take(10, 0);
        }
        assert_eq!(b.take(10, 2000), Take::Ok);
        assert_eq!(Bucket::default().take(0, 0), Take::Ok, "rate 0: no limit");
    }
}
