//! RFC 6455 without IO: the opening handshake, frames, the decoder and the per-connection session,
//! and permessage-deflate (RFC 7692).

pub mod decoder;
pub mod deflate;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod session;
pub mod utf8;
