//! One connection's state as the shard keeps it.

use crate::proto::codec::Decoder;
use crate::shard::key::ConnKey;
use crate::shard::outbound::OutQueue;
use crate::shard::transport::Transport;

/// Where a connection is in its life.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Reading the HTTP request; `Conn::inbuf` holds what arrived so far.
    Handshake,
    /// WebSocket open.
    Open,
    /// Our Close frame is queued or sent; waiting for the peer's Close or EOF (bounded by
    /// the linger timer), discarding data frames.
    Closing,
    /// A plain HTTP response is queued; the socket closes once it is flushed.
    HttpResponse,
}

/// Connection flags (a bit set keeps `Conn` small).
pub(crate) mod flag {
    /// Queued in the shard's dirty list for the flush phase.
    pub const DIRTY: u8 = 1;
    /// The last write hit `WouldBlock`; wait for a writable event.
    pub const WRITE_BLOCKED: u8 = 1 << 1;
    /// Drop the socket as soon as the outbound queue is flushed.
    pub const DROP_AFTER_FLUSH: u8 = 1 << 2;
    /// Queued in the shard's list of connections with unread input (fairness budget hit).
    pub const READ_PENDING: u8 = 1 << 3;
    /// A Close frame from the peer was received.
    pub const CLOSE_RECEIVED: u8 = 1 << 4;
    /// Scheduled for removal this turn.
    pub const DOOMED: u8 = 1 << 5;
    /// Counted in the shard's open-connection gauge.
    pub const COUNTED: u8 = 1 << 6;
}

/// One connection. Kept small: an idle connection is this struct, its slab slot and the
/// kernel's socket, nothing else (no read buffer, no write buffer).
pub(crate) struct Conn<S> {
    pub stream: Transport,
    pub generation: u32,
    pub phase: Phase,
    pub flags: u8,
    /// Milliseconds since the shard epoch when bytes last arrived (wrapping).
    pub last_seen_ms: u32,
    /// Milliseconds since the shard epoch of the last ping sent (wrapping).
    pub last_ping_ms: u32,
    /// Unconsumed input: the partial HTTP request, or a partial frame header / control frame
    /// (< 140 bytes) between reads. Empty (no allocation) almost always; a boxed slice
    /// rather than a `Vec` because it is written whole and never grown (8 bytes less).
    pub inbuf: Box<[u8]>,
    pub decoder: Decoder,
    pub out: OutQueue,
    pub session: S,
}

impl<S> Conn<S> {
    pub fn has(&self, f: u8) -> bool {
        self.flags & f != 0
    }
    pub fn set(&mut self, f: u8) {
        self.flags |= f;
    }
    pub fn clear(&mut self, f: u8) {
        self.flags &= !f;
    }
    /// Sets flag `f` and records `key` in `list` unless `f` was already set, so the shard's
    /// dirty and doomed lists name each connection once.
    pub fn enlist(&mut self, f: u8, key: ConnKey, list: &mut Vec<ConnKey>) {
        if !self.has(f) {
            self.set(f);
            list.push(key);
        }
    }
}
