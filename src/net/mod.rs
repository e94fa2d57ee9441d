//! What the server and bench-client both need around mio, below any protocol: the outbound
//! queue that exists only while a socket is full, the cross-loop mailbox, single-writer
//! counters, the open-file limit, and TLS on a connection.

pub mod cell;
pub mod limits;
pub mod mailbox;
pub mod outq;
pub mod tls;
