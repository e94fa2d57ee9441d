//! One clock for every process on the host: CLOCK_MONOTONIC in nanoseconds. Send timestamps
//! travel inside payloads, so a message sent by one worker process and delivered to another is
//! timed on the same clock (a single-host tool; across hosts clocks would need syncing).

use nix::time::{clock_gettime, ClockId};

/// Nanoseconds on CLOCK_MONOTONIC.
pub fn now_ns() -> u64 {
    match clock_gettime(ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64,
        Err(_) => 0,
    }
}
