//! What the server and bench-client both need around mio, below any protocol: the outbound
//! queue that exists only while a socket is full, the cross-loop mailbox, single-writer
//! counters, the open-file limit, TLS on a connection, and HTTP/2 driven from a loop (a stream's
//! pipe, h2's in-memory I/O).

pub mod cell;
pub mod h2io;
pub mod limits;
pub mod mailbox;
pub mod outq;
pub mod pipe;
pub mod tls;
