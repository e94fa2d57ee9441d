//! A byte stream inside another connection (a WebSocket on one HTTP/2 stream): it looks like a
//! socket to the connection that owns it — it reads, writes what fits, says `WouldBlock`, sees an
//! EOF or a reset — while the multiplexing connection moves bytes in and out of it.
//!
//! Both ends live on one event loop thread (the lock is never contended; it makes the loop's state
//! `Send`, so a loop can be built on one thread and run on another). The inner end (the stream's connection, with its
//! session, rooms and queue) only ever touches the pipe; the outer end (the HTTP/2 connection)
//! fills it with the stream's DATA, drains what was written into DATA frames as flow control
//! allows, and releases the receive window for what was read. A write or read that gives the outer
//! end work lists its connection in a per-thread list ([`take_dirty`]), so the loop drives only
//! the multiplexers that have something to do.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};

/// Bytes a stream's connection may have written and the multiplexer not yet sent: past it writes
/// say `WouldBlock`, so the rest waits in the connection's own queue, where `--max-backlog`
/// judges it like a socket's.
pub const PIPE_ROOM: usize = 64 * 1024;

thread_local! {
    static DIRTY: RefCell<Vec<(u32, u32)>> = const { RefCell::new(Vec::new()) };
}

/// The multiplexing connections (slab key, generation) whose pipes changed since the last call.
pub fn take_dirty(into: &mut Vec<(u32, u32)>) {
    DIRTY.with(|d| into.append(&mut d.borrow_mut()));
}

/// How the inner end finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// Everything written goes out, then the stream ends (END_STREAM).
    Done,
    /// Dropped with bytes unsent: the stream is reset.
    Abort,
}

#[derive(Debug)]
struct State {
    /// The multiplexer (slab key, generation), told of changes.
    outer: (u32, u32),
    listed: bool,
    /// Received, not yet read by the inner end.
    input: BytesMut,
    /// The peer ended its side (END_STREAM): reads return 0 once `input` is empty.
    eof: bool,
    /// The peer reset the stream: reads and writes fail.
    reset: bool,
    /// Bytes read by the inner end since the outer end last asked (window to release).
    consumed: usize,
    /// Written by the inner end, not yet taken by the outer end.
    output: BytesMut,
    /// The inner end shut its writing side.
    shut: bool,
    closed: Option<Closed>,
    /// A write was refused for want of room: the inner end waits to be told it may write.
    refused: bool,
}

/// One end of a stream's pipe (both ends are the same handle; each uses its own methods).
#[derive(Debug, Clone)]
pub struct Pipe(Arc<Mutex<State>>);

impl Pipe {
    /// A pipe whose changes list `outer` (slab key, generation) for driving.
    pub fn new(outer: (u32, u32)) -> Pipe {
        Pipe(Arc::new(Mutex::new(State {
            outer,
            listed: false,
            input: BytesMut::new(),
            eof: false,
            reset: false,
            consumed: 0,
            output: BytesMut::new(),
            shut: false,
            closed: None,
            refused: false,
        })))
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn touch(s: &mut State) {
        if !s.listed {
            s.listed = true;
            let outer = s.outer;
            DIRTY.with(|d| d.borrow_mut().push(outer));
        }
    }

    // ---- the inner end: a socket ----

    /// Read what was received; `WouldBlock` when nothing is, 0 at the peer's end of stream.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut s = self.st();
        if s.reset {
            return Err(io::ErrorKind::ConnectionReset.into());
        }
        if s.input.is_empty() {
            return if s.eof { Ok(0) } else { Err(io::ErrorKind::WouldBlock.into()) };
        }
        let n = buf.len().min(s.input.len());
        buf[..n].copy_from_slice(&s.input[..n]);
        let _ = s.input.split_to(n);
        if s.input.is_empty() {
            s.input = BytesMut::new(); // an idle stream holds no buffer
        }
        s.consumed += n;
        Self::touch(&mut s);
        Ok(n)
    }

    /// Write what fits in the room left; `WouldBlock` when none is.
    pub fn write(&self, b: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(b)])
    }

    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut s = self.st();
        if s.reset || s.shut || s.closed.is_some() {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let mut room = PIPE_ROOM.saturating_sub(s.output.len());
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if want == 0 {
            return Ok(0);
        }
        if room == 0 {
            s.refused = true;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for b in bufs {
            let k = b.len().min(room);
            s.output.extend_from_slice(&b[..k]);
            n += k;
            room -= k;
            if room == 0 {
                break;
            }
        }
        if n < want {
            s.refused = true;
        }
        Self::touch(&mut s);
        Ok(n)
    }

    /// The inner end will write no more (its output still goes out).
    pub fn shutdown_write(&self) {
        let mut s = self.st();
        s.shut = true;
        Self::touch(&mut s);
    }

    /// The inner end is gone.
    pub fn close(&self, how: Closed) {
        let mut s = self.st();
        s.closed = Some(how);
        s.input = BytesMut::new();
        Self::touch(&mut s);
    }

    // ---- the outer end: the multiplexer ----

    /// Bytes received for the inner end.
    pub fn push_input(&self, b: &[u8]) {
        let mut s = self.st();
        if s.closed.is_none() {
            s.input.extend_from_slice(b);
        }
    }

    /// The peer ended its side.
    pub fn set_eof(&self) {
        self.st().eof = true;
    }

    /// The peer reset the stream.
    pub fn set_reset(&self) {
        self.st().reset = true;
    }

    /// Input waiting to be read.
    pub fn input_len(&self) -> usize {
        self.st().input.len()
    }

    /// Bytes read since the last call (the receive window to give back).
    pub fn take_consumed(&self) -> usize {
        std::mem::take(&mut self.st().consumed)
    }

    /// Bytes written and not yet taken.
    pub fn output_len(&self) -> usize {
        self.st().output.len()
    }

    /// Look at what was written (to find the end of a response head).
    pub fn with_output<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(&self.st().output)
    }

    /// Take up to `n` written bytes.
    pub fn take_output(&self, n: usize) -> Bytes {
        let mut s = self.st();
        let n = n.min(s.output.len());
        let b = s.output.split_to(n).freeze();
        if s.output.is_empty() {
            s.output = BytesMut::new();
        }
        b
    }

    /// The inner end was refused room it now has (it should flush its queue).
    pub fn take_writable(&self) -> bool {
        let mut s = self.st();
        let ready = s.refused && s.output.len() < PIPE_ROOM / 2;
        if ready {
            s.refused = false;
        }
        ready
    }

    /// The inner end will write no more: shut, or gone (and how).
    pub fn finished(&self) -> Option<Closed> {
        let s = self.st();
        s.closed.or(s.shut.then_some(Closed::Done))
    }

    /// The inner end is gone (not merely shut).
    pub fn is_closed(&self) -> bool {
        self.st().closed.is_some()
    }

    /// The outer end has looked at this pipe: list it again at its next change.
    pub fn unlist(&self) {
        self.st().listed = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drained() -> Vec<(u32, u32)> {
        let mut v = Vec::new();
        take_dirty(&mut v);
        v
    }

    #[test]
    fn reads_what_arrives_then_would_block_then_the_end() {
        let p = Pipe::new((7, 1));
        let mut buf = [0u8; 4];
        assert_eq!(p.read(&mut buf).unwrap_err().kind(), io::ErrorKind::WouldBlock);
        p.push_input(b"hello");
        assert_eq!(p.read(&mut buf).unwrap(), 4);
        assert_eq!(&buf, b"hell");
        assert_eq!(p.read(&mut buf).unwrap(), 1);
        assert_eq!(p.take_consumed(), 5);
        assert_eq!(p.take_consumed(), 0);
        p.set_eof();
        assert_eq!(p.read(&mut buf).unwrap(), 0);
        assert_eq!(drained(), [(7, 1)], "listed once until unlisted");
        p.unlist();
        p.set_reset();
        assert_eq!(p.read(&mut buf).unwrap_err().kind(), io::ErrorKind::ConnectionReset);
    }

    #[test]
    fn writes_take_what_fits_and_the_writer_is_told_when_room_returns() {
        let p = Pipe::new((1, 2));
        let big = vec![1u8; PIPE_ROOM + 10];
        assert_eq!(p.write(&big).unwrap(), PIPE_ROOM);
        assert_eq!(p.write(b"x").unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert!(!p.take_writable(), "still full");
        assert_eq!(p.take_output(PIPE_ROOM - 10).len(), PIPE_ROOM - 10);
        assert!(p.take_writable());
        assert!(!p.take_writable(), "told once");
        let parts = [IoSlice::new(b"ab"), IoSlice::new(b"cd")];
        assert_eq!(p.write_vectored(&parts).unwrap(), 4);
        assert_eq!(p.output_len(), 14);
        assert_eq!(&p.take_output(100)[10..], b"abcd");
        assert_eq!(p.finished(), None);
        p.shutdown_write();
        assert_eq!(p.finished(), Some(Closed::Done));
        assert_eq!(p.write(b"x").unwrap_err().kind(), io::ErrorKind::BrokenPipe);
        p.close(Closed::Abort);
        assert_eq!(p.finished(), Some(Closed::Abort));
        assert!(p.is_closed());
        let _ = drained();
    }
}
