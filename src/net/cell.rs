//! A counter written by one thread and read by any: the building block of per-loop metrics
//! (server) and live progress counters (bench-client).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A value written by one thread (its loop) and read by any.
#[derive(Debug, Default)]
pub struct Cell(AtomicU64);

impl Cell {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: no read-modify-write instruction needed.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(self.0.load(Relaxed).wrapping_sub(n), Relaxed);
    }
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed);
    }
    /// Add from any thread (an atomic read-modify-write): for the few values several threads
    /// update. Never mix with [`Cell::add`] on the same cell.
    #[inline]
    pub fn add_shared(&self, n: i64) {
        self.0.fetch_add(n as u64, Relaxed);
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}
