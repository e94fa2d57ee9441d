//! The protocols without IO: bytes in, bytes and events out.
//!
//! Nothing here touches a socket or a clock; the event loops (server and bench-client) feed
//! bytes and ticks in and write what comes out. Everything is unit-tested on buffers.

pub mod base64;
pub mod bridge;
pub mod http;
pub mod sse;
pub mod v1;
pub mod ws;
