//! customws: a sharded thread-per-core WebSocket gateway.
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod config;
pub mod proto;
