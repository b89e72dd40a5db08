//! Routing and presence across shards: connect, disconnect, P2P, broadcast, presence
//! updates (public and targeted), `get_presence`, clock ticks and settle points, run through
//! the deterministic simulation (`customws::sim`: the real shards, gateway and cross-shard
//! rings over in-memory pipes, one thread, virtual clock).
//!
//! Input layout (`customws::sim::model::decode`): byte 0 picks the shard count (2–4), the
//! ring capacity (1, 2, 16 or 1024 slots: small rings force the back-pressure backlog) and
//! the presence coalescing interval (0, 100 ms, 1 s); then operations of 2–3 bytes, the
//! first byte's low 3 bits selecting connect / disconnect / P2P / broadcast / presence /
//! get_presence / tick / settle.
//!
//! Invariants (the oracle in `customws::sim::model`, checked at every settle point and at
//! the end): no delivery lost or duplicated (each open connection of a P2P target, each
//! open connection but the sender's for a broadcast, exactly once); exactly one ack or 404
//! per P2P with a pid, matching whether anything was delivered; `get_presence` lists every
//! online user and no user whose last connection closed; `offline` only after the last
//! connection closed and seen by every observer; the latest public status wins once
//! coalescing settled; no panic, no livelock.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = customws::sim::model::run(data) {
        panic!("{violation}");
    }
});
