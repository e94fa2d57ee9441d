//! A connection's outbound queue, which exists only while its socket buffer is full.
//!
//! Bytes go straight to the socket whenever the queue is empty; what the kernel does not take is
//! queued here as `Bytes` segments (a relayed frame is shared, not copied, between recipients)
//! and written with `writev` on the next writable edge. The queue is freed once drained.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes};

/// Segments handed to one `writev`.
const MAX_IOV: usize = 64;

#[derive(Debug, Default)]
pub struct OutQueue {
    segs: VecDeque<Bytes>,
    queued: usize,
    /// The front segment was partly written (it must be finished before anything else is sent).
    front_started: bool,
}

impl OutQueue {
    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.queued += b.len();
            self.segs.push_back(b);
        }
    }

    /// Queue what a partial write left over. If the queue was empty and some bytes of the buffer
    /// were already written, its front is now the tail of a started frame and must not be dropped.
    pub fn push_rest(&mut self, rest: Bytes, some_written: bool) {
        if self.segs.is_empty() && some_written && !rest.is_empty() {
            self.front_started = true;
        }
        self.push(rest);
    }

    /// Write as much as the socket takes. Returns the bytes written; the queue is empty when
    /// `is_empty()` afterwards. WouldBlock is not an error (it just stops).
    pub fn flush(&mut self, w: &mut impl Write) -> io::Result<usize> {
        let mut written = 0;
        while !self.segs.is_empty() {
            let res = if self.segs.len() == 1 {
                w.write(&self.segs[0])
            } else {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = self.segs.len().min(MAX_IOV);
                for (slot, b) in iov.iter_mut().zip(self.segs.iter()) {
                    *slot = IoSlice::new(b);
                }
                w.write_vectored(&iov[..n])
            };
            match res {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    written += n;
                    self.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }

    fn consume(&mut self, mut n: usize) {
        self.queued -= n;
        while n > 0 {
            let front = &mut self.segs[0];
            if n >= front.len() {
                n -= front.len();
                self.segs.pop_front();
                self.front_started = false;
            } else {
                front.advance(n);
                self.front_started = true;
                n = 0;
            }
        }
    }

    /// Drop every segment not yet started (to close a slow consumer quickly). A partly written
    /// front segment is kept so the stream stays well-formed. Returns the bytes dropped.
    pub fn drop_unstarted(&mut self) -> usize {
        let keep = usize::from(self.front_started);
        let dropped: usize = self.segs.iter().skip(keep).map(Bytes::len).sum();
        self.segs.truncate(keep);
        self.queued -= dropped;
        dropped
    }
}

/// What [`send_or_queue`] did with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handed {
    /// Written to the socket now.
    pub written: usize,
    /// Put in the queue.
    pub queued: usize,
    /// The socket refused bytes: the queue now waits for a writable edge.
    pub blocked: bool,
}

/// Send `data` on `w`: straight to the socket when nothing is queued, else behind what is (order
/// is kept). What the socket does not take is copied once into the queue, created on demand;
/// the tail of a partly written buffer is marked started so it is never dropped.
pub fn send_or_queue(w: &mut impl Write, out: &mut Option<Box<OutQueue>>, data: &[u8]) -> io::Result<Handed> {
    if data.is_empty() {
        return Ok(Handed { written: 0, queued: 0, blocked: false });
    }
    if let Some(q) = out.as_mut() {
        q.push(Bytes::copy_from_slice(data));
        return Ok(Handed { written: 0, queued: data.len(), blocked: false });
    }
    let mut n = 0;
    while n < data.len() {
        match w.write(&data[n..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if n < data.len() {
        out.get_or_insert_with(Box::default).push_rest(Bytes::copy_from_slice(&data[n..]), n > 0);
    }
    Ok(Handed { written: n, queued: data.len() - n, blocked: n < data.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that accepts at most `cap` bytes per call, then WouldBlock after `budget` total.
    struct Trickle {
        cap: usize,
        budget: usize,
        got: Vec<u8>,
    }

    impl Write for Trickle {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.cap).min(self.budget);
            self.budget -= n;
            self.got.extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn send_or_queue_writes_then_queues_and_keeps_order() {
        let mut out = None;
        let mut w = Trickle { cap: 4, budget: 6, got: vec![] };
        let h = send_or_queue(&mut w, &mut out, b"abcdefgh").unwrap();
        assert_eq!(h, Handed { written: 6, queued: 2, blocked: true });
        // Behind a queue nothing is written directly, so order is kept.
        w.budget = 100;
        let h = send_or_queue(&mut w, &mut out, b"ij").unwrap();
        assert_eq!(h, Handed { written: 0, queued: 2, blocked: false });
        let q = out.as_mut().unwrap();
        assert_eq!(q.drop_unstarted(), 2, "the tail of a started buffer stays");
        q.flush(&mut w).unwrap();
        assert_eq!(w.got, b"abcdefgh");
    }

    #[test]
    fn the_rest_of_a_partial_write_is_never_dropped() {
        let mut q = OutQueue::default();
        q.push_rest(Bytes::from_static(b"tail of a frame"), true);
        q.push(Bytes::from_static(b"next frame"));
        assert_eq!(q.drop_unstarted(), 10);
        assert_eq!(q.queued(), 15);
        let mut q = OutQueue::default();
        q.push_rest(Bytes::from_static(b"nothing written yet"), false);
        assert_eq!(q.drop_unstarted(), 19);
    }

    #[test]
    fn flushes_in_order_across_partial_writes() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"hello "));
        q.push(Bytes::from_static(b"big "));
        q.push(Bytes::from_static(b"world"));
        let mut w = Trickle { cap: 4, budget: 7, got: vec![] };
        assert_eq!(q.flush(&mut w).unwrap(), 7);
        assert_eq!(q.queued(), 8);
        assert_eq!(q.drop_unstarted(), 5, "the started 'big ' stays, 'world' goes");
        w.budget = 100;
        q.flush(&mut w).unwrap();
        assert!(q.is_empty());
        assert_eq!(w.got, b"hello big ");
    }
}
