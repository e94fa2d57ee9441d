//! A hashed timer wheel (Varghese & Lauck, scheme 6) with lazy cancellation.
//!
//! Each event loop owns one. An entry names a connection (slab key) and an arm id; cancelling
//! is free: a connection re-armed with a new id makes its old entries stale, and the owner skips
//! stale entries when they fire. Work per tick is proportional to the entries in the expiring
//! slot, never to the number of connections, and traffic never touches the wheel: a connection
//! stores its last-activity tick and recomputes its deadline when its slot fires.
//!
//! Delays longer than the wheel's horizon are clamped to it; the owner re-checks and re-arms,
//! so an early firing costs one extra check and never an early action.

/// One scheduled check: which connection, and which arming of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: u32,
    pub id: u32,
}

/// The wheel. Ticks are whatever unit the owner chooses (the server: 1/20 of its shortest
/// timeout, 1–100 ms; bench-client: 10 ms).
#[derive(Debug)]
pub struct Wheel {
    slots: Vec<Vec<Entry>>,
    /// One bit per slot: non-empty. Lets the owner sleep until the next occupied slot.
    occupied: Vec<u64>,
    mask: u64,
    /// Last tick whose slot was processed.
    now: u64,
    len: usize,
}

impl Wheel {
    /// A wheel with `slots` slots (rounded up to a power of two, at least 64), starting at `now`.
    pub fn new(slots: usize, now: u64) -> Self {
        let n = slots.max(64).next_power_of_two();
        Wheel {
            slots: (0..n).map(|_| Vec::new()).collect(),
            occupied: vec![0; n / 64],
            mask: (n - 1) as u64,
            now,
            len: 0,
        }
    }

    /// Entries scheduled and not yet expired (stale ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Longest delay that is not clamped.
    pub fn horizon(&self) -> u32 {
        self.mask as u32
    }

    /// Fire `entry` `delay` ticks (at least 1) after tick `now`, the owner's clock. The owner may
    /// be ahead of the last tick expired (it slept, then armed before expiring): counting from
    /// the wheel's own tick would put the entry in a slot already due. At most a horizon ahead of
    /// the wheel's tick.
    pub fn schedule(&mut self, now: u64, delay: u32, entry: Entry) {
        let at = (now.max(self.now) + u64::from(delay.max(1))).min(self.now + self.mask);
        let slot = (at & self.mask) as usize;
        self.slots[slot].push(entry);
        self.occupied[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
    }

    /// Advance to tick `now`, moving every entry of every slot passed into `out`. If more than a
    /// whole turn elapsed (a stalled loop), every slot is drained once: all of them are due.
    pub fn expire(&mut self, now: u64, out: &mut Vec<Entry>) {
        if now <= self.now {
            return;
        }
        let steps = (now - self.now).min(self.mask + 1);
        for t in (now - steps + 1)..=now {
            let slot = (t & self.mask) as usize;
            let v = &mut self.slots[slot];
            if !v.is_empty() {
                self.len -= v.len();
                out.append(v);
                self.occupied[slot / 64] &= !(1 << (slot % 64));
                // A burst (a connection storm's handshake deadlines) would otherwise keep its
                // slot's capacity for good, in every slot a burst ever landed in: the wheel
                // keeps what its live entries need, not its history's peaks.
                if v.capacity() > SLOT_KEEP {
                    *v = Vec::new();
                }
            }
        }
        self.now = now;
    }

    /// Ticks from now to the next occupied slot, if any (for the poll timeout).
    pub fn next_expiry(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let n = self.mask + 1;
        let start = (self.now + 1) & self.mask;
        // Scan words of the bitmap starting at `start`, wrapping once.
        let words = self.occupied.len();
        let first_word = (start / 64) as usize;
        for i in 0..=words {
            let w = (first_word + i) % words;
            let mut bits = self.occupied[w];
            if i == 0 {
                bits &= !0u64 << (start % 64);
            } else if i == words {
                bits &= !(!0u64 << (start % 64));
            }
            if bits != 0 {
                let slot = (w * 64) as u64 + u64::from(bits.trailing_zeros());
                let ahead = (slot + n - start) % n;
                return Some(ahead + 1);
            }
        }
        None
    }
}

/// Entries a slot keeps room for once it has expired.
const SLOT_KEEP: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: u32) -> Entry {
        Entry { key, id: 0 }
    }

    #[test]
    fn an_expired_burst_leaves_no_capacity_behind() {
        let mut w = Wheel::new(64, 0);
        for k in 0..10_000 {
            w.schedule(w.now, 3, e(k));
        }
        let mut out = Vec::new();
        w.expire(3, &mut out);
        assert_eq!(out.len(), 10_000);
        assert!(w.slots.iter().all(|v| v.capacity() <= SLOT_KEEP));
    }

    #[test]
    fn fires_at_the_right_tick_only() {
        let mut w = Wheel::new(64, 0);
        w.schedule(w.now, 5, e(1));
        w.schedule(w.now, 1, e(2));
        let mut out = Vec::new();
        w.expire(1, &mut out);
        assert_eq!(out, vec![e(2)]);
        out.clear();
        w.expire(4, &mut out);
        assert!(out.is_empty());
        w.expire(5, &mut out);
        assert_eq!(out, vec![e(1)]);
        assert!(w.is_empty());
    }

    #[test]
    fn clamps_long_delays_to_the_horizon() {
        let mut w = Wheel::new(64, 10);
        w.schedule(w.now, 1_000, e(7));
        let mut out = Vec::new();
        w.expire(10 + 62, &mut out);
        assert!(out.is_empty());
        w.expire(10 + 63, &mut out);
        assert_eq!(out, vec![e(7)]);
    }

    #[test]
    fn an_owner_ahead_of_the_wheel_is_counted_from_its_own_tick() {
        // The owner slept to tick 50 and arms before expiring: 3 ticks is tick 53, not 3.
        let mut w = Wheel::new(64, 0);
        w.schedule(50, 3, e(1));
        let mut out = Vec::new();
        w.expire(52, &mut out);
        assert!(out.is_empty());
        w.expire(53, &mut out);
        assert_eq!(out, vec![e(1)]);
        // Never more than a horizon past the wheel's tick (the owner re-checks).
        let mut w = Wheel::new(64, 0);
        w.schedule(50, 60, e(2));
        w.expire(62, &mut out);
        assert_eq!(out, vec![e(1)]);
        w.expire(63, &mut out);
        assert_eq!(out, vec![e(1), e(2)]);
    }

    #[test]
    fn a_stalled_loop_drains_everything_once() {
        let mut w = Wheel::new(64, 0);
        for k in 0..200 {
            w.schedule(w.now, k % 70 + 1, e(k));
        }
        let mut out = Vec::new();
        w.expire(10_000, &mut out);
        assert_eq!(out.len(), 200);
        assert!(w.is_empty());
        assert_eq!(w.next_expiry(), None);
    }

    #[test]
    fn next_expiry_finds_the_nearest_slot_across_the_wrap() {
        let mut w = Wheel::new(128, 0);
        assert_eq!(w.next_expiry(), None);
        w.schedule(w.now, 100, e(1));
        assert_eq!(w.next_expiry(), Some(100));
        w.schedule(w.now, 3, e(2));
        assert_eq!(w.next_expiry(), Some(3));
        let mut out = Vec::new();
        w.expire(90, &mut out);
        assert_eq!(w.next_expiry(), Some(10));
        w.schedule(90, 120, e(3)); // wraps: slot (90+120) % 128 = 82
        assert_eq!(w.next_expiry(), Some(10));
        w.expire(100, &mut out);
        assert_eq!(w.next_expiry(), Some(110));
    }

    #[test]
    fn work_per_tick_is_the_expiring_slot_only() {
        // 100k entries spread over the wheel: one tick hands out only its slot's share.
        let mut w = Wheel::new(4096, 0);
        for k in 0..100_000u32 {
            w.schedule(w.now, 1 + (k % 4000), e(k));
        }
        let mut out = Vec::new();
        w.expire(1, &mut out);
        assert_eq!(out.len(), 25);
    }
}
