//! A connection's outbound queue, which exists only while its socket buffer is full.
//!
//! Bytes go straight to the socket whenever the queue is empty; what the kernel does not take is
//! queued here and written with `writev` on the next writable edge. The queue is freed once
//! drained.
//!
//! What it holds is counted as memory, not as payload: a large frame shared between recipients
//! is queued as a handle (`Bytes`, no copy) and costs its length plus the handle; small frames
//! are copied into blocks, because a handle per 10-byte frame would cost four times the frame.
//! [`OutQueue::cost`] is what the connection really holds, so limits on it (per connection,
//! process-wide) bound memory and not a figure that hides the overhead.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

use bytes::{Buf, Bytes, BytesMut};

/// Segments handed to one `writev`.
const MAX_IOV: usize = 64;
/// Frames up to this size are copied into blocks instead of queued as handles.
pub const COALESCE_MAX: usize = 256;
/// Size of a coalescing block.
const BLOCK: usize = 4096;
/// Memory one queue entry costs beyond its bytes (the ring slot and the handle).
pub const ENTRY_COST: usize = std::mem::size_of::<Seg>() + 16;

#[derive(Debug)]
enum Seg {
    /// A shared buffer (a relayed frame, the same for every recipient).
    Shared(Bytes),
    /// Small frames copied together; its capacity is what it costs.
    Block(BytesMut),
}

impl Seg {
    fn bytes(&self) -> &[u8] {
        match self {
            Seg::Shared(b) => b,
            Seg::Block(b) => b,
        }
    }

    fn cost(&self) -> usize {
        ENTRY_COST
            + match self {
                Seg::Shared(b) => b.len(),
                Seg::Block(b) => b.capacity(),
            }
    }

    fn advance(&mut self, n: usize) {
        match self {
            Seg::Shared(b) => b.advance(n),
            Seg::Block(b) => b.advance(n),
        }
    }
}

#[derive(Debug, Default)]
pub struct OutQueue {
    segs: VecDeque<Seg>,
    /// Bytes waiting to be written.
    len: usize,
    /// Memory held (see the module docs).
    cost: usize,
    /// The front segment was partly written (it must be finished before anything else is sent).
    front_started: bool,
}

impl OutQueue {
    /// Memory the queue holds, in bytes.
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// Bytes waiting to be written.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queue `b` behind what is queued. Returns the memory it added.
    pub fn push(&mut self, b: Bytes) -> usize {
        self.push_as(b, true)
    }

    /// Queue `b`; `coalesce`: a small frame is copied into a block (for a queue the socket is
    /// refusing, where it may stay a while) rather than held as a handle (cheaper to queue when
    /// it goes out within the loop iteration, as frames corked for a fast reader do).
    pub fn push_as(&mut self, b: Bytes, coalesce: bool) -> usize {
        if b.is_empty() {
            return 0;
        }
        let before = self.cost;
        self.len += b.len();
        if coalesce && b.len() <= COALESCE_MAX {
            let started_alone = self.front_started && self.segs.len() == 1;
            match self.segs.back_mut() {
                // Append to the last block (not one already being written out: its start moves).
                Some(Seg::Block(blk)) if blk.capacity() - blk.len() >= b.len() && !started_alone => {
                    blk.extend_from_slice(&b);
                }
                _ => {
                    let mut blk = BytesMut::with_capacity(BLOCK);
                    blk.extend_from_slice(&b);
                    self.cost += ENTRY_COST + blk.capacity();
                    self.segs.push_back(Seg::Block(blk));
                }
            }
        } else {
            let seg = Seg::Shared(b);
            self.cost += seg.cost();
            self.segs.push_back(seg);
        }
        self.cost - before
    }

    /// Queue a copy of `b` (small ones go into the last block).
    pub fn push_slice(&mut self, b: &[u8]) -> usize {
        self.push_as(Bytes::copy_from_slice(b), true)
    }

    /// Queue what a partial write left over. If the queue was empty and some bytes of the buffer
    /// were already written, its front is now the tail of a started frame and must not be dropped.
    pub fn push_rest(&mut self, rest: Bytes, some_written: bool) -> usize {
        if self.segs.is_empty() && some_written && !rest.is_empty() {
            self.front_started = true;
            let seg = Seg::Shared(rest);
            self.len += seg.bytes().len();
            self.cost += seg.cost();
            let c = seg.cost();
            self.segs.push_back(seg);
            return c;
        }
        self.push(rest)
    }

    /// Write as much as the socket takes. Returns (bytes written, memory freed); the queue is
    /// empty when `is_empty()` afterwards. WouldBlock is not an error (it just stops).
    pub fn flush(&mut self, w: &mut impl Write) -> io::Result<(usize, usize)> {
        let before = self.cost;
        let mut written = 0;
        while !self.segs.is_empty() {
            let res = if self.segs.len() == 1 {
                w.write(self.segs[0].bytes())
            } else {
                let mut iov = [IoSlice::new(&[]); MAX_IOV];
                let n = self.segs.len().min(MAX_IOV);
                for (slot, s) in iov.iter_mut().zip(self.segs.iter()) {
                    *slot = IoSlice::new(s.bytes());
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
        Ok((written, before - self.cost))
    }

    fn consume(&mut self, mut n: usize) {
        self.len -= n;
        while n > 0 {
            let front = &mut self.segs[0];
            let flen = front.bytes().len();
            if n >= flen {
                n -= flen;
                if let Some(s) = self.segs.pop_front() {
                    self.cost -= s.cost();
                }
                self.front_started = false;
            } else {
                // A shared segment's cost shrinks with it; a block's is its capacity until freed.
                let c0 = front.cost();
                front.advance(n);
                self.cost -= c0 - front.cost();
                self.front_started = true;
                n = 0;
            }
        }
    }

    /// Drop every segment not yet started (to close a slow consumer quickly). A partly written
    /// front segment is kept so the stream stays well-formed. Returns the memory freed.
    pub fn drop_unstarted(&mut self) -> usize {
        let keep = usize::from(self.front_started);
        let before = self.cost;
        while self.segs.len() > keep {
            if let Some(s) = self.segs.pop_back() {
                self.len -= s.bytes().len();
                self.cost -= s.cost();
            }
        }
        before - self.cost
    }
}

/// What [`send_or_queue`] did with the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handed {
    /// Written to the socket now.
    pub written: usize,
    /// Memory the queue gained.
    pub queued: usize,
    /// The socket refused bytes: the queue now waits for a writable edge.
    pub blocked: bool,
}

/// Write `data` to `w` until it is all written or `w` would block; how much was written.
pub fn write_some(w: &mut impl Write, data: &[u8]) -> io::Result<usize> {
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
    Ok(n)
}

/// Send `data` on `w`: straight to the socket when nothing is queued, else behind what is (order
/// is kept). What the socket does not take is copied once into the queue, created on demand;
/// the tail of a partly written buffer is marked started so it is never dropped.
pub fn send_or_queue(w: &mut impl Write, out: &mut Option<Box<OutQueue>>, data: &[u8]) -> io::Result<Handed> {
    if data.is_empty() {
        return Ok(Handed { written: 0, queued: 0, blocked: false });
    }
    if let Some(q) = out.as_mut() {
        let queued = q.push(Bytes::copy_from_slice(data));
        return Ok(Handed { written: 0, queued, blocked: false });
    }
    let n = write_some(w, data)?;
    let mut queued = 0;
    if n < data.len() {
        queued = out.get_or_insert_with(Box::default).push_rest(Bytes::copy_from_slice(&data[n..]), n > 0);
    }
    Ok(Handed { written: n, queued, blocked: n < data.len() })
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

    fn big(n: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; n])
    }

    #[test]
    fn send_or_queue_writes_then_queues_and_keeps_order() {
        let mut out = None;
        let mut w = Trickle { cap: 4, budget: 6, got: vec![] };
        let h = send_or_queue(&mut w, &mut out, b"abcdefgh").unwrap();
        assert_eq!((h.written, h.blocked), (6, true));
        assert_eq!(h.queued, out.as_ref().unwrap().cost());
        // Behind a queue nothing is written directly, so order is kept.
        w.budget = 100;
        let h = send_or_queue(&mut w, &mut out, b"ij").unwrap();
        assert_eq!((h.written, h.blocked), (0, false));
        let q = out.as_mut().unwrap();
        assert!(q.drop_unstarted() > 0);
        assert_eq!(q.len(), 2, "the tail of a started buffer stays");
        q.flush(&mut w).unwrap();
        assert_eq!(w.got, b"abcdefgh");
    }

    #[test]
    fn the_rest_of_a_partial_write_is_never_dropped() {
        let mut q = OutQueue::default();
        q.push_rest(Bytes::from_static(b"tail of a frame"), true);
        q.push(Bytes::from_static(b"next frame"));
        q.drop_unstarted();
        assert_eq!(q.len(), 15);
        let mut q = OutQueue::default();
        q.push_rest(Bytes::from_static(b"nothing written yet"), false);
        q.drop_unstarted();
        assert!(q.is_empty() && q.cost() == 0);
    }

    #[test]
    fn flushes_in_order_across_partial_writes_and_frees_what_it_wrote() {
        let mut q = OutQueue::default();
        q.push(big(300, b'a'));
        q.push(Bytes::from_static(b"small "));
        q.push(big(400, b'b'));
        q.push(Bytes::from_static(b"world"));
        let total = q.cost();
        let mut w = Trickle { cap: 100, budget: 350, got: vec![] };
        let (n, freed) = q.flush(&mut w).unwrap();
        assert_eq!(n, 350);
        assert_eq!(q.cost(), total - freed);
        w.budget = 10_000;
        let (_, freed2) = q.flush(&mut w).unwrap();
        assert!(q.is_empty());
        assert_eq!(q.cost(), 0);
        assert_eq!(freed + freed2, total, "everything added is taken off again");
        let mut want = vec![b'a'; 300];
        want.extend_from_slice(b"small ");
        want.extend(vec![b'b'; 400]);
        want.extend_from_slice(b"world");
        assert_eq!(w.got, want);
    }

    #[test]
    fn small_frames_cost_their_bytes_not_a_handle_each() {
        let mut q = OutQueue::default();
        let frame = Bytes::from_static(b"\x81\x011");
        let mut added = 0;
        for _ in 0..100_000 {
            added += q.push(frame.clone());
        }
        assert_eq!(added, q.cost());
        assert_eq!(q.len(), 300_000);
        // Blocks of 4 KiB hold ~1,365 frames each: the cost is within a few percent of the bytes.
        assert!(q.cost() < 300_000 * 105 / 100, "cost {} for 300,000 bytes", q.cost());
        // A large frame is shared (no copy) and costs its length plus one entry.
        let mut q = OutQueue::default();
        let b = big(10_000, 7);
        assert_eq!(q.push(b.clone()), 10_000 + ENTRY_COST);
        // Interleaved small and large frames keep their order.
        q.push(Bytes::from_static(b"xy"));
        q.push(b.clone());
        q.push(Bytes::from_static(b"z"));
        let mut w = Trickle { cap: usize::MAX, budget: usize::MAX, got: vec![] };
        q.flush(&mut w).unwrap();
        let mut want = vec![7u8; 10_000];
        want.extend_from_slice(b"xy");
        want.extend(vec![7u8; 10_000]);
        want.extend_from_slice(b"z");
        assert_eq!(w.got, want);
    }

    #[test]
    fn a_block_being_written_is_not_appended_to() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abcdef"));
        let mut w = Trickle { cap: 3, budget: 3, got: vec![] };
        q.flush(&mut w).unwrap(); // "abc" out, "def" started
        q.push(Bytes::from_static(b"gh"));
        assert!(q.drop_unstarted() > 0, "gh went to a new block, droppable");
        w.budget = 100;
        q.flush(&mut w).unwrap();
        assert_eq!(w.got, b"abcdef");
    }
}
