//! c100k: a WebSocket server for 100K–1M concurrent connections on one host.
//!
//! Floors, bottom up (each imports only from the floors below it):
//! - [`proto`] (sans-IO: HTTP/1.1 requests, RFC 6455, the `c100k.v1` JSON protocol), [`net`]
//!   (outbound queue, mailbox, counters, descriptor limits), [`timer`] (the hashed wheel) and
//!   [`auth`] (JWTs, permissions, origins);
//! - [`rooms`]: the numbered message and its cached encodings, history, presence, one loop's
//!   member lists;
//! - [`broker`]: the trait the loops talk to, and the in-memory broker;
//! - [`server`]: the event loops and what they serve;
//! - [`cli`], [`supervisor`] and the binary.
//!
//! bench-client uses `proto`, `net` and `timer` only.
//!
//! No `unsafe` outside the two modules that need the OS directly ([`supervisor`]: inherited
//! descriptors and signals; `server::metrics_store`: a shared memory mapping).
#![deny(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod cli;
#[doc(hidden)]
pub mod fuzzing;
pub mod net;
pub mod proto;
pub mod rooms;
pub mod server;
pub mod supervisor;
pub mod timer;
