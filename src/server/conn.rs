//! The per-connection slab entry. It is the whole per-connection cost while idle, so it is kept
//! small (see `SIZE_BUDGET`): the socket, a generation, the timer arm id, the room seat, the
//! protocol session, and a pointer to an outbound queue that exists only while writes block.

use std::io;

use bytes::Bytes;
use mio::net::TcpStream;

use super::rooms::Seat;
use crate::net::outq::OutQueue;
use crate::proto::ws::session::Session;

/// Bytes of the slab entry we allow (`tests/` measures it): 4 (socket) + 4 (generation) +
/// 4 (timer id) + 8 (room seat) + 2 (route, flags) + 24 (session) + 8 (queue pointer), rounded
/// up to 64 so the slab entry fits one cache line.
pub const SIZE_BUDGET: usize = 64;

/// Marks "no room" in a seat.
pub const NO_ROOM: u32 = u32::MAX;

/// What the connection is for, once upgraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Route {
    /// Not a WebSocket (yet): handshaking, or a plain HTTP request.
    None,
    Echo,
    Room,
}

/// Flag bits in [`Conn::flags`].
pub mod flags {
    /// Reading is paused because too much output is queued (resumes when it drains).
    pub const READ_PAUSED: u8 = 1;
    /// We shut down our writing side (after the last byte of a finished session).
    pub const WR_SHUT: u8 = 2;
    /// The peer closed its writing side.
    pub const PEER_EOF: u8 = 4;
    /// The closing handshake is complete: close the socket as soon as our last bytes are out
    /// (RFC 6455 §7.1.1: the server closes TCP first). Without it, a finished connection is
    /// half-closed and kept until the peer's EOF, so a peer still sending cannot RST away our
    /// last bytes (failures, HTTP rejections).
    pub const CLOSE_WHEN_FLUSHED: u8 = 8;
    /// Frames were corked for this connection in this loop iteration; it is on the flush list.
    pub const DIRTY: u8 = 16;
    /// The socket refused bytes: the queue is flushed on the next writable edge.
    pub const BLOCKED: u8 = 32;
}

#[derive(Debug)]
pub struct Conn {
    pub stream: TcpStream,
    /// Upper half of the mio token: events for a recycled slab key are recognised as stale.
    pub gen: u32,
    /// Id of the connection's live timer entry; older entries are stale.
    pub timer: u32,
    pub seat: Seat,
    pub route: Route,
    pub flags: u8,
    pub sess: Session,
    pub out: Option<Box<OutQueue>>,
}

/// Result of handing bytes to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Written to the socket or queued; carries (bytes written now, bytes newly queued).
    Ok { written: usize, queued: usize },
    /// The socket failed; drop the connection.
    Broken,
}

impl Conn {
    pub fn new(stream: TcpStream, gen: u32, sess: Session) -> Self {
        Conn {
            stream,
            gen,
            timer: 0,
            seat: Seat { room: NO_ROOM, pos: 0 },
            route: Route::None,
            flags: 0,
            sess,
            out: None,
        }
    }

    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }

    /// Bytes waiting in the outbound queue.
    pub fn queued(&self) -> usize {
        self.out.as_ref().map_or(0, |q| q.queued())
    }

    /// Queue a shared buffer (no copy) to go out at the end of the loop iteration, together with
    /// everything else queued for this connection meanwhile: one `writev` for many relayed
    /// frames. Returns true the first time in an iteration (the caller lists the connection for
    /// the end-of-iteration flush).
    pub fn cork(&mut self, b: &Bytes) -> bool {
        self.queue().push(b.clone());
        let first = !self.has(flags::DIRTY);
        self.flags |= flags::DIRTY;
        first
    }

    /// Send bytes from a scratch buffer; the part the socket does not take is copied once into
    /// the queue.
    pub fn send_slice(&mut self, b: &[u8]) -> Sent {
        match crate::net::outq::send_or_queue(&mut self.stream, &mut self.out, b) {
            Ok(h) => {
                if h.blocked {
                    self.flags |= flags::BLOCKED;
                }
                Sent::Ok { written: h.written, queued: h.queued }
            }
            Err(_) => Sent::Broken,
        }
    }

    /// Flush the queue on a writable edge; frees it when drained. Returns (written, drained).
    pub fn flush(&mut self) -> io::Result<(usize, bool)> {
        let Some(q) = self.out.as_mut() else {
            return Ok((0, true));
        };
        let n = q.flush(&mut self.stream)?;
        if q.is_empty() {
            self.out = None;
            self.flags &= !flags::BLOCKED;
            return Ok((n, true));
        }
        self.flags |= flags::BLOCKED;
        Ok((n, false))
    }

    fn queue(&mut self) -> &mut OutQueue {
        self.out.get_or_insert_with(Box::default)
    }
}
