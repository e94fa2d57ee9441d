//! A cross-thread inbox for an event loop: a locked queue plus the loop's `mio::Waker`. Senders
//! coalesce wake-ups: only the first message after the loop last looked costs a `write(2)` to
//! the eventfd.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

#[derive(Debug)]
pub struct Mailbox<T> {
    queue: Mutex<Vec<T>>,
    pending: AtomicBool,
    waker: mio::Waker,
}

impl<T> Mailbox<T> {
    pub fn new(waker: mio::Waker) -> Self {
        Mailbox { queue: Mutex::new(Vec::new()), pending: AtomicBool::new(false), waker }
    }

    pub fn send(&self, msg: T) {
        self.push(msg, true);
    }

    /// Queue `msg`; `wake: false` when the caller is the loop itself (it drains its mailbox
    /// before it sleeps), which saves the eventfd write.
    pub fn push(&self, msg: T, wake: bool) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push(msg);
        if wake && !self.pending.swap(true, Ordering::AcqRel) {
            if let Err(e) = self.waker.wake() {
                log::error!("waking an event loop failed: {e}");
            }
        }
    }

    /// Whether anything is queued.
    pub fn is_empty(&self) -> bool {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }

    /// Move every queued message into `into`. Clears the pending flag first, so a message sent
    /// during the drain either is taken now or wakes the loop again.
    pub fn drain(&self, into: &mut Vec<T>) {
        self.pending.store(false, Ordering::SeqCst);
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if into.is_empty() {
            std::mem::swap(&mut *q, into);
        } else {
            into.append(&mut q);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn wakes_once_per_batch_and_loses_nothing() {
        let mut poll = mio::Poll::new().unwrap();
        let waker = mio::Waker::new(poll.registry(), mio::Token(7)).unwrap();
        let mb = Arc::new(Mailbox::new(waker));
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let mb = mb.clone();
                std::thread::spawn(move || (0..1000).for_each(|i| mb.send(p * 1000 + i)))
            })
            .collect();
        let mut got = Vec::new();
        let mut events = mio::Events::with_capacity(8);
        while got.len() < 4000 {
            poll.poll(&mut events, Some(std::time::Duration::from_secs(5))).unwrap();
            assert!(!events.is_empty() || got.len() == 4000, "a message arrived without a wake-up");
            mb.drain(&mut got);
        }
        producers.into_iter().for_each(|p| p.join().unwrap());
        got.sort();
        assert_eq!(got, (0..4000).collect::<Vec<_>>());
    }
}
