//! What the server and bench-client both need around mio, below any protocol: the outbound
//! queue that exists only while a socket is full, the cross-loop mailbox, single-writer
//! counters, and the open-file limit.

pub mod cell;
pub mod limits;
pub mod mailbox;
pub mod outq;
