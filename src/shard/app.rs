//! The seam between the runtime and what runs on it (echo, the built-in gateway, or a
//! library user's handler). One `App` value lives on each shard and is only ever touched by
//! that shard's thread, so it needs no locks; it reaches other shards through `Core::send_to_shard`.

use crate::proto::handshake::UpgradeRequest;
use crate::shard::{ConnKey, Core};

/// What `on_upgrade` decides for a `GET /ws` request.
pub struct Accept<S, O = ()> {
    /// The connection's per-connection state.
    pub session: S,
    /// What `on_open` needs once and the session need not keep (the gateway's token name
    /// and roles): it travels with the connection to its home shard and is handed over by
    /// value, so the slot every connection keeps for its whole life stays small.
    pub opening: O,
    /// Subprotocol to select in the 101 response (never the token entry).
    pub subprotocol: Option<&'static str>,
    /// Shard that should own the connection (its user's home shard); `None` keeps it here.
    pub home_shard: Option<usize>,
}

/// A refusal before the upgrade: HTTP status + message for the JSON error body.
#[derive(Debug, Clone)]
pub struct Reject {
    pub status: u16,
    pub message: String,
}

/// Callbacks from a shard. All of them run on the shard's thread and must not block.
pub trait App: Sized + 'static {
    /// Per-connection state; `Default` is the state of a connection still in its handshake.
    type Session: Default + Send + 'static;
    /// Data from the upgrade consumed by `on_open` (see [`Accept::opening`]); `()` if none.
    type Opening: Send + 'static;
    /// Messages this app sends between shards.
    type Msg: Send + 'static;

    /// A complete, valid upgrade request arrived; accept (101) or refuse (HTTP error).
    fn on_upgrade(
        &mut self,
        core: &mut Core<Self>,
        req: &UpgradeRequest<'_>,
    ) -> Result<Accept<Self::Session, Self::Opening>, Reject>;

    /// The connection is open on its home shard (after a hand-off, on the new shard), with
    /// the `opening` its `Accept` carried.
    fn on_open(&mut self, _core: &mut Core<Self>, _key: ConnKey, _opening: Self::Opening) {}

    /// A complete text message (valid UTF-8), unmasked in place in the shard's read buffer;
    /// the app may parse it in place (simd-json) and must not keep the slice.
    fn on_text(&mut self, core: &mut Core<Self>, key: ConnKey, payload: &mut [u8]);

    /// A complete binary message. The gateway refuses these (close 1003).
    fn on_binary(&mut self, core: &mut Core<Self>, key: ConnKey, _payload: &mut [u8]) {
        core.metrics().inc(crate::metrics::Metric::CloseUnsupported);
        core.close(
            key,
            crate::proto::close::CloseCode::UNSUPPORTED_DATA,
            "binary messages are not supported",
        );
    }

    /// The connection is gone (closed, dropped or failed); its session is handed back.
    fn on_closed(&mut self, _core: &mut Core<Self>, _key: ConnKey, _session: Self::Session) {}

    /// A message from another shard.
    fn on_shard_msg(&mut self, _core: &mut Core<Self>, _from: usize, _msg: Self::Msg) {}

    /// Whether an open connection's session has lapsed (the gateway: its token expired at
    /// `unix_s`, wall-clock seconds). The keepalive sweep, which visits every open
    /// connection once per keepalive period (≤ 1 s) anyway, asks; a deadline then costs no
    /// timer and no list entry per connection. Lapsed connections go to `on_lapsed`.
    fn is_lapsed(&self, _session: &Self::Session, _unix_s: u64) -> bool {
        false
    }

    /// A connection whose session lapsed (see `is_lapsed`); the app closes it.
    fn on_lapsed(&mut self, _core: &mut Core<Self>, _key: ConnKey) {}

    /// A timer set with `Core::schedule` fired.
    fn on_timer(&mut self, _core: &mut Core<Self>, _key: ConnKey, _data: u32) {}

    /// Called once per loop turn after input and timers were handled, before the flush
    /// (batch work here: presence coalescing, cross-shard batches).
    fn on_turn_end(&mut self, _core: &mut Core<Self>) {}

    /// Whether the app has batched work that must run soon (the loop then polls with a
    /// zero timeout instead of sleeping until the next timer).
    fn wants_turn(&self) -> bool {
        false
    }

    /// Whether an upgrade is accepted on any path (echo mode) rather than only `/ws`.
    fn upgrade_on_any_path(&self) -> bool {
        false
    }

    /// `GET /`: an optional page (the demo). `None` answers 404.
    fn index_page(&self) -> Option<(&'static str, &'static [u8])> {
        None
    }

    /// The shard is draining: the runtime closes every connection with 1001 next.
    fn on_drain(&mut self, _core: &mut Core<Self>) {}
}
