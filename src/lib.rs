//! customws: a sharded thread-per-core WebSocket gateway.
//!
//! ```text
//!  clients ──TCP──▶ SO_REUSEPORT listener (one per shard)
//!                     │
//!         ┌───────────▼────────────── shard thread (mio::Poll) ───────────────┐
//!         │ accept → handshake (proto::handshake) → auth (auth) → 101          │
//!         │ read into the shard's buffer → proto::codec (in place, zero copy)  │
//!         │   → App::on_text (gateway: proto::envelope, one validating pass)   │
//!         │   → route: local connections, or queue::ShardLinks to the user's   │
//!         │     home shard (lock-free SPSC + mio::Waker, batched)              │
//!         │ timers (timer::TimerWheel) → flush (outbound::OutQueue, writev)    │
//!         └────────────────────────────────────────────────────────────────────┘
//! ```
//!
//! Start with `docs/ARCHITECTURE.md`; the loop's phases are documented on [`shard`].
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod admin;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod echo;
pub mod gateway;
pub mod metrics;
pub mod proto;
pub mod queue;
pub mod ratelimit;
pub mod server;
pub mod shard;
#[doc(hidden)]
pub mod sim;
pub mod timer;

pub use config::Config;
pub use server::Server;
