//! The WebSocket protocol without IO: bytes in, bytes and events out.
//!
//! Nothing here touches a socket or a clock; the event loops (server and bench-client) feed
//! bytes and ticks in and write what comes out. Everything is unit-tested on buffers.

pub mod decoder;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod session;
pub mod utf8;
