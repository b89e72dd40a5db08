//! The sans-IO protocol core: bytes in, events out. Nothing here knows about sockets,
//! threads or clocks (the caller passes `now`).
#![forbid(unsafe_code)]

pub mod close;
pub mod codec;
pub mod envelope;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod utf8;
