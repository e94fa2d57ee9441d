//! Where the event loops' metric blocks live. One process: on the heap. Several worker processes
//! under a supervisor: in one `memfd` mapping that every worker maps, each writing only its own
//! slots, so whichever worker the kernel hands a `/metrics` request to can answer for the whole
//! server, and the supervisor can zero a dead worker's gauges and count restarts.
#![allow(unsafe_code)] // the metric blocks live in a shared memory mapping (mmap)

use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

use super::metrics::{LoopMetrics, Snapshot};

const MAGIC: u64 = u64::from_le_bytes(*b"c100kmet");

/// The first 128 bytes of the shared region.
#[repr(C, align(128))]
struct Header {
    magic: AtomicU64,
    /// size_of::<LoopMetrics>(): guards against a worker built differently from the supervisor.
    slot_size: AtomicU64,
    processes: AtomicU64,
    threads: AtomicU64,
    restarts: AtomicU64,
}

enum Backing {
    Heap(Box<[LoopMetrics]>),
    Shared { base: NonNull<u8>, len: usize },
}

/// The metric blocks of every loop of every process, and which of them are ours.
pub struct MetricsStore {
    backing: Backing,
    processes: usize,
    threads: usize,
    /// Index of our first slot (process index × threads).
    first: usize,
}

// SAFETY: the shared region holds only atomics (and a header of atomics); it is mapped for the
// store's whole life and every access goes through atomic operations.
unsafe impl Send for MetricsStore {}
unsafe impl Sync for MetricsStore {}

impl std::fmt::Debug for MetricsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsStore").field("processes", &self.processes).field("threads", &self.threads).finish()
    }
}

fn region_len(processes: usize, threads: usize) -> usize {
    std::mem::size_of::<Header>() + processes * threads * std::mem::size_of::<LoopMetrics>()
}

impl MetricsStore {
    /// Blocks for one process's `threads` loops, on the heap.
    pub fn private(threads: usize) -> Self {
        MetricsStore {
            backing: Backing::Heap((0..threads).map(|_| LoopMetrics::default()).collect()),
            processes: 1,
            threads,
            first: 0,
        }
    }

    /// Create the shared region for `processes` × `threads` loops (the supervisor's view, owning
    /// no slots). The returned descriptor is inherited by the workers, which `attach` to it.
    pub fn create_shared(processes: usize, threads: usize) -> io::Result<(OwnedFd, MetricsStore)> {
        let fd = nix::sys::memfd::memfd_create(c"c100k-metrics", nix::sys::memfd::MFdFlags::empty())?;
        let len = region_len(processes, threads);
        nix::unistd::ftruncate(&fd, len as i64)?; // a fresh memfd reads as zeros
        let store = Self::map(&fd, len, processes, threads, 0)?;
        let h = store.header().expect("shared");
        h.slot_size.store(std::mem::size_of::<LoopMetrics>() as u64, Ordering::Relaxed);
        h.processes.store(processes as u64, Ordering::Relaxed);
        h.threads.store(threads as u64, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok((fd, store))
    }

    /// Map a region created by the supervisor, as worker process `index`.
    pub fn attach(fd: impl AsFd, index: usize) -> io::Result<MetricsStore> {
        let len = nix::sys::stat::fstat(fd.as_fd())?.st_size as usize;
        if len < std::mem::size_of::<Header>() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "metrics region too small"));
        }
        // Map the header alone first to learn the geometry.
        let probe = Self::map(&fd, std::mem::size_of::<Header>(), 0, 0, 0)?;
        let h = probe.header().expect("shared");
        let (magic, slot, processes, threads) = (
            h.magic.load(Ordering::Acquire),
            h.slot_size.load(Ordering::Relaxed) as usize,
            h.processes.load(Ordering::Relaxed) as usize,
            h.threads.load(Ordering::Relaxed) as usize,
        );
        drop(probe);
        if magic != MAGIC || slot != std::mem::size_of::<LoopMetrics>() || region_len(processes, threads) != len {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "metrics region from a different c100k build"));
        }
        if index >= processes {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "worker index out of range"));
        }
        Self::map(&fd, len, processes, threads, index * threads)
    }

    fn map(fd: impl AsFd, len: usize, processes: usize, threads: usize, first: usize) -> io::Result<MetricsStore> {
        let size = NonZeroUsize::new(len).ok_or(io::ErrorKind::InvalidInput)?;
        // SAFETY: a fresh shared mapping of a memfd we hold; it is unmapped only in Drop.
        let base =
            unsafe { mmap(None, size, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_SHARED, fd, 0)? };
        Ok(MetricsStore { backing: Backing::Shared { base: base.cast(), len }, processes, threads, first })
    }

    fn header(&self) -> Option<&Header> {
        match &self.backing {
            Backing::Heap(_) => None,
            // SAFETY: the region starts with a Header (zeroed atomics are valid), page-aligned.
            Backing::Shared { base, .. } => Some(unsafe { &*(base.as_ptr() as *const Header) }),
        }
    }

    /// Every loop's block, ours and other processes'.
    fn slots(&self) -> &[LoopMetrics] {
        match &self.backing {
            Backing::Heap(b) => b,
            // SAFETY: after the header come processes × threads LoopMetrics (atomics only; zero is
            // a valid value), inside the mapping, aligned to 128 like LoopMetrics.
            Backing::Shared { base, .. } => unsafe {
                let p = base.as_ptr().add(std::mem::size_of::<Header>()) as *const LoopMetrics;
                std::slice::from_raw_parts(p, self.processes * self.threads)
            },
        }
    }

    /// Our loop `l`'s block.
    pub fn mine(&self, l: usize) -> &LoopMetrics {
        &self.slots()[self.first + l]
    }

    /// Sum over every loop of every process.
    pub fn total(&self) -> Snapshot {
        let mut t = Snapshot::default();
        for m in self.slots() {
            t.add(&m.snapshot());
        }
        t
    }

    /// Sum per process.
    pub fn per_process(&self) -> Vec<Snapshot> {
        self.slots()
            .chunks(self.threads.max(1))
            .map(|c| {
                let mut t = Snapshot::default();
                c.iter().for_each(|m| t.add(&m.snapshot()));
                t
            })
            .collect()
    }

    /// Loops currently accepting, over every process.
    pub fn loops_listening(&self) -> u64 {
        self.total().loops_listening
    }

    pub fn processes(&self) -> usize {
        self.processes
    }

    /// Our loops' blocks separately.
    pub fn own(&self) -> &[LoopMetrics] {
        &self.slots()[self.first..self.first + self.threads]
    }

    /// Worker restarts recorded by the supervisor.
    pub fn restarts(&self) -> u64 {
        self.header().map_or(0, |h| h.restarts.load(Ordering::Relaxed))
    }

    /// Supervisor: a worker process died; its connections are gone, so are its gauges. Counters
    /// stay (the server's totals keep counting across restarts).
    pub fn process_died(&self, index: usize) {
        for m in &self.slots()[index * self.threads..(index + 1) * self.threads] {
            m.reset_gauges();
        }
    }

    pub fn count_restart(&self) {
        if let Some(h) = self.header() {
            h.restarts.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A (re)started worker starts its gauges from zero.
    pub fn reset_own_gauges(&self) {
        self.own().iter().for_each(LoopMetrics::reset_gauges);
    }
}

impl Drop for MetricsStore {
    fn drop(&mut self) {
        if let Backing::Shared { base, len } = self.backing {
            // SAFETY: mapped in `map` with this base and length; no reference outlives self.
            let _ = unsafe { munmap(base.cast(), len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_see_each_others_blocks_through_the_shared_region() {
        let (fd, sup) = MetricsStore::create_shared(3, 2).unwrap();
        let w0 = MetricsStore::attach(&fd, 0).unwrap();
        let w2 = MetricsStore::attach(&fd, 2).unwrap();
        w0.mine(1).connections_open.add(5);
        w0.mine(0).messages_sent_total.add(7);
        w2.mine(0).connections_open.add(4);
        for view in [&sup, &w0, &w2] {
            assert_eq!(view.total().connections_open, 9);
            assert_eq!(view.total().messages_sent_total, 7);
        }
        assert_eq!(sup.per_process().iter().map(|s| s.connections_open).collect::<Vec<_>>(), vec![5, 0, 4]);
        // The supervisor zeroes a dead worker's gauges, not its counters.
        sup.process_died(0);
        assert_eq!(w2.total().connections_open, 4);
        assert_eq!(w2.total().messages_sent_total, 7);
        sup.count_restart();
        assert_eq!(w0.restarts(), 1);
        assert!(MetricsStore::attach(&fd, 3).is_err());
    }

    #[test]
    fn private_store_is_one_process() {
        let s = MetricsStore::private(2);
        s.mine(1).connections_open.add(2);
        assert_eq!(s.total().connections_open, 2);
        assert_eq!(s.per_process().len(), 1);
        assert_eq!(s.restarts(), 0);
    }
}
