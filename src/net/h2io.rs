//! What both ends of an HTTP/2 connection need to drive the `h2` crate from an event loop, with
//! no async runtime (the server's `server::h2`, bench-client's `--h2`): its I/O as two in-memory
//! buffers, a no-op waker (the loop polls again whenever something may have changed), and the
//! move of a stream's outgoing bytes from its [`Pipe`] into DATA frames as flow control allows.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use h2::{Reason, SendStream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::net::pipe::{Closed, Pipe};

/// A context whose waker does nothing: `h2` is polled again by the loop, not woken.
pub fn cx() -> Context<'static> {
    Context::from_waker(Waker::noop())
}

#[derive(Debug, Default)]
struct Bufs {
    input: BytesMut,
    output: Vec<u8>,
    /// Bytes `h2` may still write now (what the socket's queue can take).
    room: usize,
}

/// The connection's bytes as `h2` sees them: reads come from what the socket gave, writes go
/// into a buffer the loop sends. One thread uses it; the lock only makes the connection `Send`
/// (a loop is built on one thread and run on another).
#[derive(Debug, Clone, Default)]
pub struct Wire(Arc<Mutex<Bufs>>);

impl Wire {
    fn bufs(&self) -> MutexGuard<'_, Bufs> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes from the socket (decrypted).
    pub fn feed(&self, data: &[u8]) {
        self.bufs().input.extend_from_slice(data);
    }

    /// Received bytes `h2` has not read yet.
    pub fn input_len(&self) -> usize {
        self.bufs().input.len()
    }

    /// Swap out what `h2` wrote (for the socket).
    pub fn take_output(&self, into: &mut Vec<u8>) {
        std::mem::swap(into, &mut self.bufs().output);
    }

    /// How much `h2` may write before it is told to wait (`Pending`).
    pub fn set_room(&self, room: usize) {
        self.bufs().room = room;
    }
}

impl AsyncRead for Wire {
    fn poll_read(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let mut w = self.bufs();
        if w.input.is_empty() {
            return Poll::Pending; // polled again when the socket gives more
        }
        let n = w.input.len().min(buf.remaining());
        buf.put_slice(&w.input.split_to(n));
        if w.input.is_empty() {
            w.input = BytesMut::new(); // an idle connection holds no input buffer
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        let mut w = self.bufs();
        if w.room == 0 {
            return Poll::Pending; // polled again when the socket drains
        }
        let n = b.len().min(w.room);
        w.output.extend_from_slice(&b[..n]);
        w.room -= n;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Where a stream's sending stands after [`send_from_pipe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sending {
    /// More may come.
    Open,
    /// Our side ended (END_STREAM sent, or reset): drop the `SendStream`.
    Ended,
}

/// Move what the stream's connection wrote into DATA frames: as far as the send window allows
/// (capacity is asked for what waits; `h2` assigns it now or when a WINDOW_UPDATE comes), all
/// of it once the connection is gone with its last bytes written (`h2` holds them, and the
/// stream counts against the peer's concurrent streams until they are out). `left`: bytes the
/// answer still owes when its length is known (END_STREAM goes with the last of them). The
/// stream ends with END_STREAM when its connection finished, with RST_STREAM(CANCEL) when it
/// was dropped with bytes unsent.
pub fn send_from_pipe(pipe: &Pipe, send: &mut SendStream<Bytes>, left: &mut Option<usize>) -> Sending {
    let finished = pipe.finished();
    let mut pending = pipe.output_len();
    if let Some(l) = *left {
        pending = pending.min(l);
    }
    if pending > 0 {
        send.reserve_capacity(pending);
        let n = if finished == Some(Closed::Done) { pending } else { pending.min(send.capacity()) };
        if n > 0 {
            let b = pipe.take_output(n);
            let end = left.as_mut().is_some_and(|l| {
                *l -= b.len();
                *l == 0
            });
            let _ = send.send_data(b, end);
            if end {
                return Sending::Ended;
            }
        }
    }
    match finished {
        Some(Closed::Abort) => {
            send.send_reset(Reason::CANCEL);
            Sending::Ended
        }
        Some(Closed::Done) if pipe.output_len() == 0 => {
            let _ = send.send_data(Bytes::new(), true);
            Sending::Ended
        }
        _ => Sending::Open,
    }
}
