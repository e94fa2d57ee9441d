//! Rooms as values and bookkeeping, below any broker or loop: the numbered message with its
//! cached encodings, the history ring, presence with its grace period, and one loop's member
//! lists.

pub mod history;
pub mod members;
pub mod message;
pub mod presence;
