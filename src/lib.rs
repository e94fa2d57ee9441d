//! c100k: a WebSocket server for 100K–1M concurrent connections on one host.
//!
//! Layers, bottom up: [`proto`] (sans-IO RFC 6455: handshake, frames, sessions), [`timer`] (the
//! hashed timer wheel), [`limits`] (file-descriptor limits), and [`server`] (per-core mio loops,
//! rooms, metrics). bench-client reuses the first three.

pub mod auth;
pub mod broker;
pub mod cli;
pub mod net;
pub mod proto;
pub mod rooms;
pub mod server;
pub mod supervisor;
pub mod timer;
