//! Who is in a room, with a connection count per user, and the grace period that keeps a network
//! blip from flapping presence: when a user's last connection ends uncleanly (TCP dropped,
//! heartbeat timeout), the user stays present for the grace period and is reported gone only if
//! no connection of theirs comes back by then. A clean leave is reported at once.
//!
//! Pure bookkeeping: the caller supplies the time and turns the results into events.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// 8 bytes, so a user costs a 24-byte map slot (a room of a million users is one of these each).
#[derive(Debug, Clone, Copy)]
struct Entry {
    conns: u32,
    /// Set while the user has no connection: reported gone this many milliseconds after `base`.
    gone_at: Option<NonZeroU32>,
}

#[derive(Debug, Default)]
pub struct Presence {
    users: HashMap<Arc<str>, Entry>,
    /// Connections of all users (the room's members).
    conns: u64,
    /// Anonymous connections (the empty user): counted, never listed or announced, no grace.
    anon: u64,
    /// What grace deadlines count from (the first one's start).
    base: Option<Instant>,
}

/// What a leave means for the room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leave {
    /// The user has other connections here.
    Stays,
    /// The user is gone now: report `presence_leave`.
    Gone,
    /// The user's last connection ended uncleanly: gone at this instant unless they return.
    Grace(Instant),
    /// The user was not present (a leave without a join).
    Unknown,
}

impl Presence {
    /// A connection of `user` joined. True when the user is newly present (report
    /// `presence_join`); a return within the grace period is not news.
    pub fn join(&mut self, user: &Arc<str>) -> bool {
        self.conns += 1;
        if user.is_empty() {
            self.anon += 1;
            return false;
        }
        match self.users.get_mut(user) {
            Some(e) => {
                e.conns += 1;
                e.gone_at = None;
                false
            }
            None => {
                self.users.insert(user.clone(), Entry { conns: 1, gone_at: None });
                true
            }
        }
    }

    /// A connection of `user` left, cleanly (`leave`, close 1000/1001) or not.
    pub fn leave(&mut self, user: &str, clean: bool, now: Instant, grace: Duration) -> Leave {
        if user.is_empty() {
            if self.anon == 0 {
                return Leave::Unknown;
            }
            self.anon -= 1;
            self.conns -= 1;
            return if self.anon > 0 { Leave::Stays } else { Leave::Gone };
        }
        let Some(e) = self.users.get_mut(user) else {
            return Leave::Unknown;
        };
        if e.conns == 0 {
            return Leave::Unknown;
        }
        e.conns -= 1;
        self.conns -= 1;
        if e.conns > 0 {
            return Leave::Stays;
        }
        if clean || grace.is_zero() {
            self.users.remove(user);
            return Leave::Gone;
        }
        let base = *self.base.get_or_insert(now);
        let ms = (now + grace).saturating_duration_since(base).as_nanos().div_ceil(1_000_000);
        let ms = NonZeroU32::new(ms.clamp(1, u128::from(u32::MAX)) as u32).unwrap_or(NonZeroU32::MIN);
        e.gone_at = Some(ms);
        Leave::Grace(base + Duration::from_millis(u64::from(ms.get())))
    }

    fn instant(&self, ms: NonZeroU32) -> Instant {
        // gone_at is only ever set after base.
        self.base.map_or_else(Instant::now, |b| b + Duration::from_millis(u64::from(ms.get())))
    }

    /// Remove the users whose grace period is over by `now`, into `gone`.
    pub fn expire(&mut self, now: Instant, gone: &mut Vec<Arc<str>>) {
        let Some(base) = self.base else { return };
        let now_ms = now.saturating_duration_since(base).as_millis().min(u128::from(u32::MAX)) as u32;
        self.users.retain(|u, e| {
            let over = e.gone_at.is_some_and(|t| t.get() <= now_ms);
            if over {
                gone.push(u.clone());
            }
            !over
        });
    }

    /// The earliest end of a grace period.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.users.values().filter_map(|e| e.gone_at).min().map(|ms| self.instant(ms))
    }

    /// Present users (those in their grace period included, with 0 connections), by name.
    pub fn users(&self) -> Vec<(Arc<str>, u32)> {
        let mut v: Vec<_> = self.users.iter().map(|(u, e)| (u.clone(), e.conns)).collect();
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        v
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty() && self.anon == 0
    }

    /// Connections in the room (all users).
    pub fn conns(&self) -> u64 {
        self.conns
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(10);

    #[test]
    fn anonymous_connections_are_counted_but_never_listed_or_announced() {
        let mut p = Presence::default();
        let anon: Arc<str> = "".into();
        let t = Instant::now();
        assert!(!p.join(&anon));
        assert!(!p.join(&anon));
        assert_eq!((p.conns(), p.users(), p.is_empty()), (2, vec![], false));
        assert_eq!(p.leave("", false, t, GRACE), Leave::Stays);
        assert_eq!(p.leave("", false, t, GRACE), Leave::Gone, "no grace: nobody to keep present");
        assert_eq!(p.leave("", true, t, GRACE), Leave::Unknown);
        assert!(p.is_empty());
        assert_eq!(p.next_deadline(), None);
    }

    #[test]
    fn counts_connections_per_user() {
        let mut p = Presence::default();
        let ann: Arc<str> = "ann".into();
        let t = Instant::now();
        assert!(p.join(&ann));
        assert!(!p.join(&ann), "a second connection is not news");
        assert_eq!(p.users(), vec![(ann.clone(), 2)]);
        assert_eq!(p.conns(), 2);
        assert_eq!(p.leave("ann", false, t, GRACE), Leave::Stays);
        assert_eq!(p.leave("ann", true, t, GRACE), Leave::Gone);
        assert!(p.is_empty());
        assert_eq!(p.leave("ann", true, t, GRACE), Leave::Unknown);
    }

    #[test]
    fn an_unclean_leave_waits_out_the_grace_period() {
        let mut p = Presence::default();
        let bob: Arc<str> = "bob".into();
        let t = Instant::now();
        p.join(&bob);
        assert_eq!(p.leave("bob", false, t, GRACE), Leave::Grace(t + GRACE));
        assert_eq!(p.users(), vec![(bob.clone(), 0)], "still listed during grace");
        assert_eq!(p.next_deadline(), Some(t + GRACE));
        let mut gone = Vec::new();
        p.expire(t + GRACE / 2, &mut gone);
        assert!(gone.is_empty());
        // Back within the grace period: no event at all, and the deadline is cancelled.
        assert!(!p.join(&bob));
        assert_eq!(p.next_deadline(), None);
        p.expire(t + GRACE * 2, &mut gone);
        assert!(gone.is_empty());
        // Gone for good this time.
        p.leave("bob", false, t, GRACE);
        p.expire(t + GRACE, &mut gone);
        assert_eq!(gone, vec![bob]);
        assert!(p.is_empty());
        assert_eq!(p.leave("x", false, t, Duration::ZERO), Leave::Unknown);
    }
}
