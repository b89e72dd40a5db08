//! The shard: one thread, one `mio::Poll`, one `SO_REUSEPORT` listener, one slab of
//! connections. A thin driver around the sans-IO codec and handshake parser.
//!
//! # Loop phases, in order (one pass = one "turn")
//!
//! 1. **poll**: block in `Poll::poll` until readiness, a cross-shard wake-up or the next timer
//!    (zero timeout when work is left over from the previous turn). The clock is read once
//!    after the poll and passed down as `now`.
//! 2. **accept**: accept until `WouldBlock` (bounded per turn; the rest is picked up next turn).
//! 3. **read/decode**: for each readable connection, read until `WouldBlock` into the shard's
//!    read buffer, decode frames in place and hand messages to the app (route). A connection
//!    that exceeds its per-turn read budget is revisited next turn (fairness).
//! 4. **drain queues**: pop batches from the cross-shard SPSC queues (hand-offs and app
//!    messages); retry pushes that found a queue full last turn.
//! 5. **timers**: advance the timer wheel (handshake timeouts, keepalive, close linger, app
//!    timers): O(expired), never a scan.
//! 6. **turn end**: the app's batch hook (presence coalescing, etc.).
//! 7. **flush**: every connection with queued output gets one vectored write; connections
//!    marked for dropping are reaped; cross-shard wake-ups are sent, once per destination.
//!
//! # Readiness rules (mio)
//!
//! Sockets are registered once, edge-triggered, for READABLE | WRITABLE. Events are hints:
//! "a readable event means read until `WouldBlock`" — a read or write that stops early must be
//! resumed by the shard itself (`read_pending`, `accept_pending`), because no new event will
//! come for data that is already waiting. A shard never blocks anywhere but in `poll`.

mod app;
mod conn;
mod key;
pub(crate) mod listener;
pub mod outbound;
mod transport;

pub use app::{Accept, App, Reject};
pub use key::ConnKey;
pub use transport::MemPipe;

use std::cell::Cell;
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Registry, Waker};
use slab::Slab;

use crate::config::Config;
use crate::metrics::{Metric, ShardMetrics};
use crate::proto::close::CloseCode;
use crate::proto::codec::{Decoder, DecoderLimits, Message};
use crate::proto::frame::{encode_close, encode_header, OpCode};
use crate::proto::handshake::{self, HandshakeLimits, Route};
use crate::queue::{Backlog, ShardLinks};
use crate::timer::TimerWheel;
use conn::{flag, Conn, Phase};
use key::{Generations, LISTENER_TOKEN, WAKER_TOKEN};
use transport::Transport;

/// Read buffer shared by all connections of a shard. Frames are decoded and unmasked in
/// place here; a connection keeps only a partial header between reads.
const READ_BUF_SIZE: usize = 64 * 1024;
/// Bytes read from one connection per turn before others get their turn.
const READ_BUDGET_PER_TURN: usize = 256 * 1024;
/// Connections accepted per turn before the rest of the loop runs.
const ACCEPT_BUDGET_PER_TURN: usize = 256;
/// Timer wheel resolution.
const TIMER_TICK: Duration = Duration::from_millis(10);
/// The keepalive sweep visits the slab in this many slices per period.
const SWEEP_SLICES: usize = 16;

/// How often the keepalive sweep visits every connection: a quarter of the slack it must
/// respect (the ping interval, and the time between a ping and the pong deadline), at most
/// a second. Slices shorter than the wheel's tick are rounded up to it.
fn keepalive_period(config: &Config) -> Duration {
    let slack = config
        .ping_interval
        .min(config.pong_wait.saturating_sub(config.ping_interval));
    (slack / 4).clamp(TIMER_TICK, Duration::from_secs(1))
}
/// After our Close frame, how long we wait for the peer's Close before dropping.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Cross-shard messages handled per source queue per turn.
const CROSS_SHARD_BATCH: usize = 4096;

/// State shared by all shards of one server (read often, written rarely).
#[derive(Debug, Default)]
pub struct Shared {
    /// Open (upgraded) connections over all shards, for `--max-connections`.
    pub open_connections: AtomicUsize,
    /// SIGTERM/SIGINT: refuse upgrades (503), `/healthz` 503, close clients with 1001.
    pub draining: AtomicBool,
    /// A dependency the server needs is down (the cluster link): `/healthz` answers 503.
    pub degraded: AtomicBool,
    /// Leave the loop now.
    pub stop: AtomicBool,
}

/// Timer entry: which connection, and why.
#[derive(Copy, Clone, Debug)]
pub(crate) struct TimerEntry {
    key: ConnKey,
    kind: TimerKind,
}

#[derive(Copy, Clone, Debug)]
enum TimerKind {
    Handshake,
    /// The next slice of the keepalive sweep (the entry's key is unused).
    KeepaliveSweep,
    Linger,
    App(u32),
}

/// How far `handle_readable` reads.
///
/// A read that returns less than it asked for has emptied the socket's receive queue, and
/// with edge-triggered epoll every later arrival (data, FIN, RST) queues a new event, so
/// the usual "read until `EAGAIN`" only adds a syscall that fails: one of three syscalls
/// per connection per turn under load (strace: 95k `recvfrom`, half `EAGAIN`, for 48k
/// `writev`). Tokio makes the same choice. The exception is an event that already reports
/// the peer's FIN or an error: that edge is spent, so the read goes on to the EOF.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum ReadUntil {
    /// Stop after a short read.
    ShortRead,
    /// Read until `WouldBlock`, EOF or an error.
    WouldBlock,
}

/// What a complete (or incomplete) HTTP request turned into.
enum Handshake<S, O> {
    Incomplete,
    Error(Metric, u16, String),
    Page(u16, &'static str, &'static [u8]),
    Upgraded {
        accept: Accept<S, O>,
        client_key: smallvec::SmallVec<[u8; 32]>,
        consumed: usize,
    },
}

/// A connection travelling to its home shard.
pub struct Adoption<S, O> {
    stream: Transport,
    session: S,
    opening: O,
    inbuf: Vec<u8>,
    out: outbound::OutQueue,
}

/// What travels through the cross-shard queues.
pub enum Cross<A: App> {
    /// Take over a freshly upgraded connection.
    Adopt(Box<Adoption<A::Session, A::Opening>>),
    /// An app message.
    App(A::Msg),
}

/// Everything an app callback may touch: the connections, timers, the cross-shard links
/// and the metrics. (The read buffer and the poll live outside, in `Shard`.)
pub struct Core<A: App> {
    shard_id: usize,
    shards: usize,
    conns: Slab<Conn<A::Session>>,
    generations: Generations,
    registry: Registry,
    timers: TimerWheel<TimerEntry>,
    /// Connections with queued output, flushed at the end of the turn.
    dirty: Vec<ConnKey>,
    /// Spare output buffers: a queue hands its buffer back when it empties.
    pool: outbound::BufPool,
    /// Connections to remove at the end of the current phase.
    doomed: Vec<ConnKey>,
    /// Connections with unread input left by the read budget.
    read_pending: Vec<ConnKey>,
    links: ShardLinks<Cross<A>>,
    /// Pushes that found their queue full; retried every turn, in order per destination.
    backlog: Backlog<Cross<A>>,
    config: Arc<Config>,
    shared: Arc<Shared>,
    metrics: Arc<ShardMetrics>,
    epoch: Instant,
    now: Instant,
    /// Wall-clock Unix milliseconds of this turn, read at first use (0: not yet): echo never
    /// pays for the clock, the gateway once per turn instead of once per message.
    unix_ms: Cell<u64>,
    limits: DecoderLimits,
    open: usize,
}

impl<A: App> Core<A> {
    /// This shard's index.
    pub fn shard_id(&self) -> usize {
        self.shard_id
    }

    /// Number of shards in the server.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The clock reading of this turn.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Wall-clock Unix milliseconds of this loop turn (read at the first call in the turn):
    /// one clock read per turn instead of one per message (every `data_event` carries a
    /// timestamp).
    pub fn unix_ms(&self) -> u64 {
        match self.unix_ms.get() {
            0 => {
                let ms = wall_clock_ms().max(1);
                self.unix_ms.set(ms);
                ms
            }
            ms => ms,
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn metrics(&self) -> &ShardMetrics {
        &self.metrics
    }

    /// Whether the server is draining.
    pub fn draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    fn conn(&self, key: ConnKey) -> Option<&Conn<A::Session>> {
        self.conns
            .get(key.index())
            .filter(|c| c.generation == key.generation())
    }

    fn conn_mut(&mut self, key: ConnKey) -> Option<&mut Conn<A::Session>> {
        slot(&mut self.conns, key)
    }

    /// The session of a live connection (`None` if the key is stale).
    pub fn session(&self, key: ConnKey) -> Option<&A::Session> {
        self.conn(key).map(|c| &c.session)
    }

    pub fn session_mut(&mut self, key: ConnKey) -> Option<&mut A::Session> {
        self.conn_mut(key).map(|c| &mut c.session)
    }

    /// Whether the key names an open connection that can still receive messages.
    pub fn is_open(&self, key: ConnKey) -> bool {
        self.conn(key)
            .is_some_and(|c| c.phase == Phase::Open && !c.has(flag::DOOMED))
    }

    /// Keys of every open connection on this shard.
    pub fn for_each_open(&self, mut f: impl FnMut(ConnKey)) {
        for (idx, c) in self.conns.iter() {
            if c.phase == Phase::Open && !c.has(flag::DOOMED) {
                f(ConnKey::new(idx, c.generation));
            }
        }
    }

    /// Queues a text frame for one connection (copied into its tail buffer). Returns false
    /// when the connection is gone or was closed for exceeding its outbound limit.
    pub fn send_text(&mut self, key: ConnKey, payload: &[u8]) -> bool {
        self.send_frame(key, OpCode::Text, payload)
    }

    /// Queues a binary frame (echo mode).
    pub fn send_binary(&mut self, key: ConnKey, payload: &[u8]) -> bool {
        self.send_frame(key, OpCode::Binary, payload)
    }

    fn send_frame(&mut self, key: ConnKey, opcode: OpCode, payload: &[u8]) -> bool {
        let mut header = [0u8; 10];
        let n = encode_header(true, opcode, payload.len(), &mut header);
        let Some(c) = slot(&mut self.conns, key) else {
            return false;
        };
        if c.phase != Phase::Open || c.has(flag::DOOMED) {
            return false;
        }
        c.out.push_frame(&mut self.pool, &header[..n], payload);
        self.after_push(key)
    }

    /// Queues a frame encoded once for many recipients (see [`encode_shared_text`]).
    pub fn send_shared(&mut self, key: ConnKey, frame: &Bytes) -> bool {
        let Some(c) = slot(&mut self.conns, key) else {
            return false;
        };
        if c.phase != Phase::Open || c.has(flag::DOOMED) {
            return false;
        }
        c.out.push_shared(&mut self.pool, frame);
        self.after_push(key)
    }

    /// Marks the connection dirty and enforces the outbound limit: a slow consumer is closed
    /// with 1013 if the socket still takes a frame, else dropped, and its memory released.
    fn after_push(&mut self, key: ConnKey) -> bool {
        let limit = self.config.outbound_queue_limit;
        let Some(c) = slot(&mut self.conns, key) else {
            return false;
        };
        let kept = settle_push(c, &mut self.pool, limit, &self.metrics);
        if kept {
            c.enlist(flag::DIRTY, key, &mut self.dirty);
        } else {
            self.doom(key);
        }
        kept
    }

    /// Queues a shared frame on every open connection of this shard except `exclude`;
    /// returns how many took it. One pass over the slab: no list of keys is collected
    /// (a broadcast to 1,000 connections used to build and free a 1,000-key `Vec`).
    pub fn send_shared_to_all(&mut self, frame: &Bytes, exclude: Option<ConnKey>) -> u64 {
        let limit = self.config.outbound_queue_limit;
        let mut n = 0;
        for (idx, c) in self.conns.iter_mut() {
            if c.phase != Phase::Open || c.has(flag::DOOMED) {
                continue;
            }
            let key = ConnKey::new(idx, c.generation);
            if Some(key) == exclude {
                continue;
            }
            c.out.push_shared(&mut self.pool, frame);
            if settle_push(c, &mut self.pool, limit, &self.metrics) {
                n += 1;
                c.enlist(flag::DIRTY, key, &mut self.dirty);
            } else {
                // What `doom` does; the slab is borrowed by the loop.
                c.enlist(flag::DOOMED, key, &mut self.doomed);
            }
        }
        n
    }

    /// Starts the closing handshake: queues a Close frame after whatever is queued, stops
    /// delivering to the connection, and drops it when the peer answers (or after a linger).
    pub fn close(&mut self, key: ConnKey, code: CloseCode, reason: &str) {
        let now = self.now;
        let Some(c) = slot(&mut self.conns, key) else {
            return;
        };
        if c.phase != Phase::Open {
            return;
        }
        let mut frame = Vec::with_capacity(2 + 2 + reason.len());
        encode_close(&mut frame, code, reason);
        c.out.push_bytes(&mut self.pool, &frame);
        c.phase = Phase::Closing;
        if c.has(flag::CLOSE_RECEIVED) {
            c.set(flag::DROP_AFTER_FLUSH);
        }
        c.enlist(flag::DIRTY, key, &mut self.dirty);
        self.timers.insert(
            now + CLOSE_LINGER,
            TimerEntry {
                key,
                kind: TimerKind::Linger,
            },
        );
    }

    /// Drops the TCP connection without a closing handshake (the peer is gone or hostile).
    pub fn drop_connection(&mut self, key: ConnKey) {
        self.doom(key);
    }

    fn doom(&mut self, key: ConnKey) {
        if let Some(c) = slot(&mut self.conns, key) {
            c.enlist(flag::DOOMED, key, &mut self.doomed);
        }
    }

    /// Schedules `App::on_timer(key, data)` at `deadline` (lazily cancelled: the app ignores
    /// entries it no longer wants).
    pub fn schedule(&mut self, deadline: Instant, key: ConnKey, data: u32) {
        self.timers.insert(
            deadline,
            TimerEntry {
                key,
                kind: TimerKind::App(data),
            },
        );
    }

    /// Sends a message to another shard's app. Never blocks: when the queue is full the
    /// message waits in this shard's backlog and is retried every turn, in order.
    pub fn send_to_shard(&mut self, to: usize, msg: A::Msg) {
        self.push_cross(to, Cross::App(msg));
    }

    fn push_cross(&mut self, to: usize, msg: Cross<A>) {
        // Order per destination: nothing may overtake what is already waiting.
        if self.backlog.holds(to) {
            self.backlog.push(to, msg);
        } else {
            match self.links.push(to, msg) {
                Ok(()) => {
                    self.metrics.inc(Metric::CrossShardSent);
                    return;
                }
                Err(msg) => {
                    self.metrics.inc(Metric::CrossShardFull);
                    self.backlog.push(to, msg);
                }
            }
        }
        self.metrics
            .set(Metric::CrossShardBacklog, self.backlog.len() as u64);
    }

    fn retry_backlog(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        let before = self.backlog.len();
        let links = &mut self.links;
        let refused = self.backlog.retry(|to, msg| links.push(to, msg));
        self.metrics
            .add(Metric::CrossShardSent, (before - self.backlog.len()) as u64);
        self.metrics.add(Metric::CrossShardFull, refused as u64);
        self.metrics
            .set(Metric::CrossShardBacklog, self.backlog.len() as u64);
    }

    /// Queues the connection for the flush phase if it has output.
    fn mark_dirty(&mut self, key: ConnKey) {
        if let Some(c) = slot(&mut self.conns, key) {
            if !c.out.is_empty() {
                c.enlist(flag::DIRTY, key, &mut self.dirty);
            }
        }
    }

    fn now_ms(&self) -> u32 {
        // Wrapping milliseconds since the epoch; differences stay correct for 49 days.
        self.now.duration_since(self.epoch).as_millis() as u32
    }
}

/// Encodes a server text frame once, for many recipients (broadcast, multicast).
pub fn encode_shared_text(payload: &[u8]) -> Bytes {
    let mut header = [0u8; 10];
    let n = encode_header(true, OpCode::Text, payload.len(), &mut header);
    let mut v = Vec::with_capacity(n + payload.len());
    v.extend_from_slice(&header[..n]);
    v.extend_from_slice(payload);
    Bytes::from(v)
}

/// One shard: the poll, the listener, the read buffer, the app and the core.
pub struct Shard<A: App> {
    poll: Poll,
    /// `None` in the simulation: connections are injected instead of accepted.
    listener: Option<TcpListener>,
    read_buf: Box<[u8]>,
    accept_pending: bool,
    /// Keepalive sweep: whether its timer is armed, and the next slab index to visit.
    sweep_armed: bool,
    sweep_cursor: usize,
    /// Connections the sweep found lapsed (kept for its capacity).
    lapsed: Vec<ConnKey>,
    /// Timer entries expired this turn (kept to reuse the allocation).
    expired: Vec<TimerEntry>,
    drain_started: Option<Instant>,
    app: A,
    core: Core<A>,
}

/// Everything needed to build one shard on its own thread.
pub(crate) struct ShardParts<A: App> {
    pub shard_id: usize,
    pub shards: usize,
    pub poll: Poll,
    pub listener: Option<TcpListener>,
    pub links: ShardLinks<Cross<A>>,
    pub config: Arc<Config>,
    pub shared: Arc<Shared>,
    pub metrics: Arc<ShardMetrics>,
}

impl<A: App> Shard<A> {
    pub(crate) fn new(parts: ShardParts<A>, app: A) -> io::Result<Self> {
        Self::new_at(parts, app, Instant::now())
    }

    /// A shard whose clock starts at `now` (the simulation passes its virtual clock).
    pub(crate) fn new_at(parts: ShardParts<A>, app: A, now: Instant) -> io::Result<Self> {
        let ShardParts {
            shard_id,
            shards,
            poll,
            mut listener,
            links,
            config,
            shared,
            metrics,
        } = parts;
        if let Some(listener) = listener.as_mut() {
            poll.registry()
                .register(listener, LISTENER_TOKEN, Interest::READABLE)?;
        }
        let registry = poll.registry().try_clone()?;
        let limits = DecoderLimits {
            max_message_size: config.max_message_size,
            max_fragments: config.max_fragments,
        };
        Ok(Shard {
            poll,
            listener,
            read_buf: vec![0u8; READ_BUF_SIZE].into_boxed_slice(),
            accept_pending: false,
            sweep_armed: false,
            sweep_cursor: 0,
            lapsed: Vec::new(),
            expired: Vec::new(),
            drain_started: None,
            app,
            core: Core {
                shard_id,
                shards,
                conns: Slab::new(),
                generations: Generations::default(),
                registry,
                timers: TimerWheel::new(TIMER_TICK, now),
                dirty: Vec::new(),
                pool: outbound::BufPool::default(),
                doomed: Vec::new(),
                read_pending: Vec::new(),
                // The mesh may have endpoints beyond the shards (the cluster bridge).
                backlog: Backlog::new(links.shards()),
                links,
                config,
                shared,
                metrics,
                epoch: now,
                now,
                unix_ms: Cell::new(0),
                limits,
                open: 0,
            },
        })
    }

    /// Runs the loop until the server stops (or, when draining, until every connection is
    /// closed or the drain timeout passes).
    pub(crate) fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            // 1. poll
            let busy = self.busy();
            let timeout = if busy {
                Some(Duration::ZERO)
            } else {
                let next = self
                    .core
                    .timers
                    .next_expiration()
                    .map(|t| t.saturating_duration_since(self.core.now));
                // Wake at least every second to notice drain/stop flags set without a wake-up.
                Some(next.map_or(Duration::from_secs(1), |d| d.min(Duration::from_secs(1))))
            };
            let parked = timeout != Some(Duration::ZERO) && self.core.links.prepare_park();
            let timeout = if parked {
                timeout
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if parked {
                self.core.links.unpark();
            }
            if events.is_empty() && !busy {
                // Idle (the poll timed out): give the spare output buffers back.
                self.core.pool.trim();
            }
            if !self.begin_turn(Instant::now()) {
                break;
            }

            // 2-3. accept, read/decode
            for event in events.iter() {
                match event.token() {
                    LISTENER_TOKEN => self.accept_pending = true,
                    WAKER_TOKEN => {}
                    token => self.handle_event(
                        ConnKey::from_token(token),
                        event.is_writable(),
                        event.is_readable(),
                        event.is_read_closed() || event.is_error(),
                    ),
                }
            }
            if !self.finish_turn() {
                break;
            }
        }
        self.close_all();
        Ok(())
    }

    /// Whether work is left over from the last turn (the next poll must not block).
    fn busy(&self) -> bool {
        self.accept_pending
            || !self.core.read_pending.is_empty()
            || !self.core.backlog.is_empty()
            || self.app.wants_turn()
    }

    /// Starts a turn at `now` (read once, after the poll). Returns false when the shard must
    /// stop.
    fn begin_turn(&mut self, now: Instant) -> bool {
        self.core.now = now;
        self.core.unix_ms.set(0);
        self.core.metrics.inc(Metric::LoopTurns);
        if self.core.shared.stop.load(Ordering::Acquire) {
            return false;
        }
        if self.core.shared.draining.load(Ordering::Acquire) && self.drain_started.is_none() {
            self.start_drain();
        }
        true
    }

    /// One readiness event for a connection (phase 3).
    fn handle_event(&mut self, key: ConnKey, writable: bool, readable: bool, closed: bool) {
        if writable {
            if let Some(c) = slot(&mut self.core.conns, key) {
                c.clear(flag::WRITE_BLOCKED);
                if !c.out.is_empty() {
                    c.enlist(flag::DIRTY, key, &mut self.core.dirty);
                }
            }
        }
        if closed {
            // Read on to the EOF or the error: no later edge announces it.
            self.handle_readable(key, ReadUntil::WouldBlock);
        } else if readable {
            self.handle_readable(key, ReadUntil::ShortRead);
        }
    }

    /// The rest of a turn after the readiness events: phases 2–7. Returns false when a
    /// drain is complete and the shard must stop.
    fn finish_turn(&mut self) -> bool {
        if self.accept_pending {
            self.accept();
        }
        let pending = std::mem::take(&mut self.core.read_pending);
        for key in pending {
            if let Some(c) = self.core.conn_mut(key) {
                c.clear(flag::READ_PENDING);
                self.handle_readable(key, ReadUntil::ShortRead);
            }
        }
        self.reap();

        // 4. cross-shard queues
        self.core.retry_backlog();
        self.drain_cross_shard();
        self.reap();

        // 5. timers
        let mut expired = std::mem::take(&mut self.expired);
        self.core.timers.advance(self.core.now, &mut expired);
        for entry in expired.drain(..) {
            self.handle_timer(entry);
        }
        self.expired = expired;
        self.reap();

        // 6. turn end
        self.app.on_turn_end(&mut self.core);

        // 7. flush
        self.flush_dirty();
        self.reap();
        self.core.links.flush_wakeups();
        for to in 0..self.core.shards {
            if to != self.core.shard_id {
                self.core
                    .metrics
                    .set_queue_depth(to, self.core.links.depth(to));
            }
        }
        self.core
            .metrics
            .set(Metric::Connections, self.core.open as u64);

        if let Some(started) = self.drain_started {
            let open = self
                .core
                .conns
                .iter()
                .any(|(_, c)| matches!(c.phase, Phase::Open | Phase::Closing));
            if !open || self.core.now.duration_since(started) >= self.core.config.drain_timeout {
                return false;
            }
        }
        true
    }

    /// Leaving: every remaining connection is dropped (the process is exiting or the drain
    /// timeout passed).
    fn close_all(&mut self) {
        let keys: Vec<ConnKey> = self
            .core
            .conns
            .iter()
            .map(|(i, c)| ConnKey::new(i, c.generation))
            .collect();
        for key in keys {
            self.core.doom(key);
        }
        self.reap();
    }

    /// One simulated turn at virtual time `now`: `accepted` are new in-memory connections
    /// (as if accepted on this shard's listener), and every in-memory connection with an
    /// unseen readable edge is read. Returns false when the shard would stop.
    pub(crate) fn sim_turn(&mut self, now: Instant, accepted: Vec<MemPipe>) -> bool {
        if !self.begin_turn(now) {
            return false;
        }
        let mut readable = Vec::new();
        for (idx, c) in self.core.conns.iter() {
            if let Some(pipe) = c.stream.mem() {
                if pipe.take_readable() {
                    readable.push((ConnKey::new(idx, c.generation), pipe.client_closed()));
                }
            }
        }
        for (key, closed) in readable {
            self.handle_event(key, false, true, closed);
        }
        for pipe in accepted {
            // In-memory registration cannot fail.
            let _ = self.register_new(Transport::Mem(pipe.server_end()));
        }
        self.finish_turn()
    }

    /// Whether a simulated turn now would do nothing: no input waiting, empty inbound
    /// queues, no backlog, no batch, no timer due.
    pub(crate) fn sim_idle(&self) -> bool {
        !self.busy()
            && self.core.links.inbound_is_empty()
            && self.core.dirty.is_empty()
            && self
                .core
                .timers
                .next_expiration()
                .is_none_or(|t| t > self.core.now)
            && !self
                .core
                .conns
                .iter()
                .any(|(_, c)| c.stream.mem().is_some_and(MemPipe::readable_pending))
    }

    /// The earliest timer deadline (the simulator jumps its clock there).
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.core.timers.next_expiration()
    }

    fn start_drain(&mut self) {
        self.drain_started = Some(self.core.now);
        self.app.on_drain(&mut self.core);
        let mut keys = Vec::new();
        self.core.for_each_open(|k| keys.push(k));
        for key in keys {
            self.core.metrics.inc(Metric::CloseShutdown);
            self.core
                .close(key, CloseCode::GOING_AWAY, "server shutting down");
        }
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BUDGET_PER_TURN {
            let Some(listener) = self.listener.as_ref() else {
                self.accept_pending = false;
                return;
            };
            match listener.accept() {
                Ok((stream, _addr)) => {
                    if let Err(e) = self.register_new(Transport::Tcp(stream)) {
                        tracing::debug!(error = %e, "registering an accepted socket failed");
                        self.core.metrics.inc(Metric::IoErrors);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE/ENFILE and friends: count it, try again next turn. The queue
                    // stays in the kernel; nothing blocks.
                    self.core.metrics.inc(Metric::IoErrors);
                    tracing::debug!(error = %e, "accept failed");
                    self.accept_pending = false;
                    return;
                }
            }
        }
        // Budget spent: more may be waiting; no new edge will announce them.
        self.accept_pending = true;
    }

    fn register_new(&mut self, mut stream: Transport) -> io::Result<()> {
        if !listener::ACCEPTED_INHERIT_NODELAY {
            stream.set_nodelay()?;
        }
        let core = &mut self.core;
        let generation = core.generations.next();
        let entry = core.conns.vacant_entry();
        let key = ConnKey::new(entry.key(), generation);
        stream.register(&core.registry, key.token())?;
        let now_ms = core.now.duration_since(core.epoch).as_millis() as u32;
        entry.insert(Conn {
            stream,
            generation,
            phase: Phase::Handshake,
            flags: 0,
            last_seen_ms: now_ms,
            last_ping_ms: now_ms,
            inbuf: Box::default(),
            decoder: Decoder::default(),
            out: outbound::OutQueue::default(),
            session: A::Session::default(),
        });
        let deadline = core.now + core.config.handshake_timeout;
        // The socket usually holds the whole request already (the edge fired before
        // registration): read it now. The handshake timer is only needed if the request is
        // still incomplete afterwards (it does nothing in any other phase), which saves a
        // timer insert and a later expiry for nearly every upgrade.
        self.handle_readable(key, ReadUntil::ShortRead);
        if self
            .core
            .conn(key)
            .is_some_and(|c| c.phase == Phase::Handshake && !c.has(flag::DOOMED))
        {
            self.core.timers.insert(
                deadline,
                TimerEntry {
                    key,
                    kind: TimerKind::Handshake,
                },
            );
        }
        Ok(())
    }

    /// Reads until the socket is drained (see [`ReadUntil`]) or the per-turn budget is
    /// spent, and processes what arrived.
    fn handle_readable(&mut self, key: ConnKey, until: ReadUntil) {
        let mut budget = READ_BUDGET_PER_TURN;
        let now_ms = self.core.now_ms();
        loop {
            let Some(c) = self.core.conn_mut(key) else {
                return;
            };
            if c.has(flag::DOOMED) || c.phase == Phase::HttpResponse {
                // Nothing more to read from a connection we are answering or dropping.
                return;
            }
            let buf = &mut self.read_buf[..];
            let mut filled = c.inbuf.len();
            buf[..filled].copy_from_slice(&c.inbuf);
            c.inbuf = Box::default();
            let before = filled;
            let mut eof = false;
            let mut failed = false;
            let mut would_block = false;
            let mut reads = 0u64;
            while filled < buf.len() {
                reads += 1;
                match c.stream.read(&mut buf[filled..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => {
                        let asked = buf.len() - filled;
                        filled += n;
                        if n < asked && until == ReadUntil::ShortRead {
                            // The receive queue is empty now; anything arriving later
                            // raises a new edge. Saves the read that would say EAGAIN.
                            would_block = true;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        would_block = true;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            let fresh = filled - before;
            if fresh > 0 {
                c.last_seen_ms = now_ms;
                self.core.metrics.add(Metric::BytesIn, fresh as u64);
            }
            self.core.metrics.add(Metric::SocketReads, reads);
            budget = budget.saturating_sub(fresh);
            let keep_going = self.process_input(key, filled, before);
            if failed {
                self.core.metrics.inc(Metric::IoErrors);
                self.core.doom(key);
                return;
            }
            if eof {
                // The peer closed its side: nothing more will arrive. Answer what we can
                // and drop once flushed.
                if let Some(c) = self.core.conn_mut(key) {
                    c.set(flag::DROP_AFTER_FLUSH);
                    if c.out.is_empty() {
                        self.core.doom(key);
                    }
                }
                return;
            }
            if !keep_going || would_block {
                return;
            }
            if budget == 0 {
                if let Some(c) = self.core.conn_mut(key) {
                    if !c.has(flag::READ_PENDING) {
                        c.set(flag::READ_PENDING);
                        self.core.read_pending.push(key);
                    }
                }
                return;
            }
        }
    }

    /// Processes `read_buf[..filled]` (of which `[..before]` was already seen) for the
    /// connection's phase; stores any unconsumed tail in `conn.inbuf`. Returns false when
    /// the connection should not be read further this turn.
    fn process_input(&mut self, key: ConnKey, filled: usize, before: usize) -> bool {
        let Some(phase) = self.core.conn(key).map(|c| c.phase) else {
            return false;
        };
        match phase {
            Phase::Handshake => self.process_handshake(key, filled, before),
            Phase::Open | Phase::Closing => self.process_frames(key, 0, filled),
            Phase::HttpResponse => false,
        }
    }

    fn process_handshake(&mut self, key: ConnKey, filled: usize, before: usize) -> bool {
        let outcome = self.decide_handshake(filled, before);
        match outcome {
            Handshake::Incomplete => {
                let saved = Box::from(&self.read_buf[..filled]);
                if let Some(c) = self.core.conn_mut(key) {
                    c.inbuf = saved;
                }
                true
            }
            Handshake::Error(metric, status, message) => {
                self.core.metrics.inc(metric);
                self.respond_error(key, status, &message);
                false
            }
            Handshake::Page(status, ctype, body) => {
                self.core.metrics.inc(Metric::HttpOther);
                self.respond(key, |out| {
                    handshake::write_response(out, status, ctype, body)
                });
                false
            }
            Handshake::Upgraded {
                accept,
                client_key,
                consumed,
            } => {
                self.core.metrics.inc(Metric::HandshakesOk);
                let rest = self.read_buf[consumed..filled].to_vec();
                self.open_connection(key, accept, &client_key, rest)
            }
        }
    }

    /// Parses and routes the request in the read buffer; asks the app about upgrades.
    fn decide_handshake(
        &mut self,
        filled: usize,
        before: usize,
    ) -> Handshake<A::Session, A::Opening> {
        let cfg = &self.core.config;
        let limits = HandshakeLimits {
            max_header_bytes: cfg.max_header_bytes,
            max_headers: cfg.max_headers,
        };
        let buf = &self.read_buf[..filled];
        // Scan only the new bytes for the end of the headers, so a slowloris trickling
        // bytes costs linear, not quadratic, time.
        if !handshake::request_complete_hint(buf, before) && filled < limits.max_header_bytes {
            return Handshake::Incomplete;
        }
        let (req, consumed) = match handshake::parse_request(buf, &limits) {
            Ok(Some(r)) => r,
            Ok(None) => return Handshake::Incomplete,
            Err(e) => {
                let status = e.status();
                let metric = if status == 431 {
                    Metric::HsFailTooLarge
                } else {
                    Metric::HsFailBadRequest
                };
                return Handshake::Error(metric, status, e.to_string());
            }
        };
        let routed = if self.app.upgrade_on_any_path() {
            handshake::route_any_path(&req)
        } else {
            handshake::route(&req)
        };
        let route = match routed {
            Ok(r) => r,
            Err(e) => {
                let status = e.status();
                let metric = if status == 426 {
                    Metric::HsFailBadVersion
                } else {
                    Metric::HsFailBadRequest
                };
                return Handshake::Error(metric, status, e.to_string());
            }
        };
        let draining = self.core.shared.draining.load(Ordering::Relaxed);
        match route {
            Route::Healthz if draining => {
                Handshake::Page(503, "application/json", br#"{"status":"draining"}"#)
            }
            Route::Healthz if self.core.shared.degraded.load(Ordering::Relaxed) => {
                Handshake::Page(503, "application/json", br#"{"status":"degraded"}"#)
            }
            Route::Healthz => Handshake::Page(200, "application/json", br#"{"status":"ok"}"#),
            Route::Index => match self.app.index_page() {
                Some((ctype, body)) => Handshake::Page(200, ctype, body),
                None => Handshake::Error(Metric::HsFailNotFound, 404, "not found".into()),
            },
            Route::NotFound => Handshake::Error(Metric::HsFailNotFound, 404, "not found".into()),
            Route::Upgrade(up) => {
                if draining {
                    return Handshake::Error(
                        Metric::HsFailDraining,
                        503,
                        "server is draining".into(),
                    );
                }
                let shared = &self.core.shared;
                let open = shared.open_connections.fetch_add(1, Ordering::AcqRel);
                if open >= self.core.config.max_connections {
                    shared.open_connections.fetch_sub(1, Ordering::AcqRel);
                    return Handshake::Error(
                        Metric::HsFailOverCapacity,
                        503,
                        "server at connection capacity".into(),
                    );
                }
                let client_key = smallvec::SmallVec::from_slice(up.key);
                match self.app.on_upgrade(&mut self.core, &up) {
                    Ok(accept) => Handshake::Upgraded {
                        accept,
                        client_key,
                        consumed,
                    },
                    Err(reject) => {
                        self.core
                            .shared
                            .open_connections
                            .fetch_sub(1, Ordering::AcqRel);
                        let metric = match reject.status {
                            401 => Metric::HsFailUnauthorized,
                            403 => Metric::HsFailForbidden,
                            503 => Metric::HsFailOverCapacity,
                            _ => Metric::HsFailBadRequest,
                        };
                        Handshake::Error(metric, reject.status, reject.message)
                    }
                }
            }
        }
    }

    /// Writes the 101, then either opens the connection here or hands it to its home shard.
    fn open_connection(
        &mut self,
        key: ConnKey,
        accept: Accept<A::Session, A::Opening>,
        client_key: &[u8],
        rest: Vec<u8>,
    ) -> bool {
        let (shard_id, shards) = (self.core.shard_id, self.core.shards);
        let Some(c) = slot(&mut self.core.conns, key) else {
            return false;
        };
        let mut resp = Vec::with_capacity(160);
        handshake::write_switching_protocols(&mut resp, client_key, accept.subprotocol);
        c.out.push_bytes(&mut self.core.pool, &resp);
        c.session = accept.session;
        c.set(flag::COUNTED);
        match accept.home_shard {
            Some(home) if home != shard_id && home < shards => {
                let idx = key.index();
                let mut conn = self.core.conns.remove(idx);
                if conn.has(flag::DIRTY) {
                    self.core.dirty.retain(|k| *k != key);
                }
                conn.stream.deregister(&self.core.registry);
                let adoption = Adoption {
                    stream: conn.stream,
                    session: conn.session,
                    opening: accept.opening,
                    inbuf: rest,
                    out: conn.out,
                };
                self.core.push_cross(home, Cross::Adopt(Box::new(adoption)));
                false
            }
            _ => {
                c.phase = Phase::Open;
                self.core.open += 1;
                self.arm_keepalive();
                self.app.on_open(&mut self.core, key, accept.opening);
                self.core.mark_dirty(key);
                if rest.is_empty() {
                    return true;
                }
                // Frames the client pipelined right behind the request.
                let n = rest.len();
                self.read_buf[..n].copy_from_slice(&rest);
                self.process_frames(key, 0, n)
            }
        }
    }

    fn adopt(&mut self, adoption: Adoption<A::Session, A::Opening>) {
        let Adoption {
            mut stream,
            session,
            opening,
            inbuf,
            out,
        } = adoption;
        let core = &mut self.core;
        let generation = core.generations.next();
        let entry = core.conns.vacant_entry();
        let key = ConnKey::new(entry.key(), generation);
        if stream.register(&core.registry, key.token()).is_err() {
            core.metrics.inc(Metric::IoErrors);
            core.shared.open_connections.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let now_ms = core.now.duration_since(core.epoch).as_millis() as u32;
        entry.insert(Conn {
            stream,
            generation,
            phase: Phase::Open,
            flags: flag::COUNTED,
            last_seen_ms: now_ms,
            last_ping_ms: now_ms,
            inbuf: inbuf.into_boxed_slice(),
            decoder: Decoder::default(),
            out,
            session,
        });
        core.open += 1;
        self.arm_keepalive();
        self.app.on_open(&mut self.core, key, opening);
        self.core.mark_dirty(key);
        // Data may have arrived between deregistration and registration; read now.
        self.handle_readable(key, ReadUntil::ShortRead);
    }

    /// Keeps the keepalive sweep running while the shard has connections.
    ///
    /// Keepalive is a sweep over the slab, not a timer per connection (uWebSockets does the
    /// same): every connection already carries `last_seen_ms` and `last_ping_ms`, so a
    /// per-connection wheel entry (24 bytes plus slot slack, re-inserted every ping
    /// interval) bought nothing but memory. The sweep visits every slot once per
    /// [`keepalive_period`] in [`SWEEP_SLICES`] slices, so no single turn stalls on a
    /// large shard; a ping or a drop is therefore late by at most one period.
    fn arm_keepalive(&mut self) {
        if self.sweep_armed {
            return;
        }
        self.sweep_armed = true;
        let slice = keepalive_period(&self.core.config) / SWEEP_SLICES as u32;
        self.core.timers.insert(
            self.core.now + slice,
            TimerEntry {
                key: ConnKey::new(0, 0),
                kind: TimerKind::KeepaliveSweep,
            },
        );
    }

    /// One slice of the keepalive sweep: pings connections quiet for `ping_interval`,
    /// drops those silent for `pong_wait`, and hands the app those whose session lapsed
    /// (`App::is_lapsed`: the gateway's token expiry).
    fn sweep_keepalive(&mut self) {
        self.sweep_armed = false;
        let now_ms = self.core.now_ms();
        let ping_ms = self.core.config.ping_interval.as_millis() as u32;
        let wait_ms = self.core.config.pong_wait.as_millis() as u32;
        // Slab indices never reach its capacity; vacant and unused slots are skipped.
        let bound = self.core.conns.capacity();
        let chunk = bound.div_ceil(SWEEP_SLICES).max(1);
        let start = if self.sweep_cursor >= bound {
            0
        } else {
            self.sweep_cursor
        };
        let end = (start + chunk).min(bound);
        self.sweep_cursor = end;
        let unix_s = self.core.unix_ms() / 1000;
        let mut lapsed = std::mem::take(&mut self.lapsed);
        let (core, app) = (&mut self.core, &self.app);
        for idx in start..end {
            let Some(c) = core.conns.get_mut(idx) else {
                continue;
            };
            if c.phase != Phase::Open || c.has(flag::DOOMED) {
                continue;
            }
            let key = ConnKey::new(idx, c.generation);
            if app.is_lapsed(&c.session, unix_s) {
                lapsed.push(key);
            } else if now_ms.wrapping_sub(c.last_seen_ms) >= wait_ms {
                // Nothing arrived for pong_wait: the peer is gone; drop the TCP connection.
                core.metrics.inc(Metric::CloseKeepalive);
                c.enlist(flag::DOOMED, key, &mut core.doomed);
            } else if now_ms.wrapping_sub(c.last_ping_ms) >= ping_ms {
                c.last_ping_ms = now_ms;
                c.out.push_bytes(&mut core.pool, &[0x89, 0x00]);
                c.enlist(flag::DIRTY, key, &mut core.dirty);
            }
        }
        for key in lapsed.drain(..) {
            self.app.on_lapsed(&mut self.core, key);
        }
        self.lapsed = lapsed;
        if self.core.open > 0 {
            self.arm_keepalive();
        }
    }

    /// Decodes frames from `read_buf[start..end]` in place. Returns false when the
    /// connection must not be read further (closed, failed).
    fn process_frames(&mut self, key: ConnKey, start: usize, end: usize) -> bool {
        let Some(c) = self.core.conn_mut(key) else {
            return false;
        };
        // The decoder is moved out while messages borrow the read buffer, so the app can
        // use the whole core (including this connection) meanwhile.
        let mut decoder = std::mem::take(&mut c.decoder);
        let limits = DecoderLimits { ..self.core.limits };
        let mut pos = start;
        let mut alive = true;
        let mut peer_close = None;
        while pos < end {
            let closing = self.core.conn(key).is_none_or(|c| c.phase != Phase::Open);
            let result = decoder.decode(&mut self.read_buf[pos..end], &limits);
            match result {
                Ok(d) => {
                    let consumed = d.consumed;
                    let Some(msg) = d.message else {
                        pos += consumed;
                        if consumed == 0 {
                            break;
                        }
                        continue;
                    };
                    match msg {
                        Message::Text(payload) => {
                            if !closing {
                                self.app.on_text(&mut self.core, key, payload);
                            }
                        }
                        Message::Binary(payload) => {
                            if !closing {
                                self.app.on_binary(&mut self.core, key, payload);
                            }
                        }
                        Message::Ping(payload) => {
                            if !closing {
                                let mut header = [0u8; 10];
                                let n =
                                    encode_header(true, OpCode::Pong, payload.len(), &mut header);
                                if let Some(c) = slot(&mut self.core.conns, key) {
                                    c.out.push_frame(&mut self.core.pool, &header[..n], payload);
                                }
                                self.core.mark_dirty(key);
                            }
                        }
                        Message::Pong(_) => {}
                        Message::Close(frame) => {
                            pos += consumed;
                            peer_close = Some(frame.map(|(code, _)| code));
                            alive = false;
                            break;
                        }
                    }
                    pos += consumed;
                    if self.core.conn(key).is_none_or(|c| c.has(flag::DOOMED)) {
                        alive = false;
                        break;
                    }
                }
                Err(e) => {
                    let code = e.close_code();
                    self.core
                        .metrics
                        .inc(if code == CloseCode::MESSAGE_TOO_BIG {
                            Metric::CloseTooBig
                        } else {
                            Metric::CloseProtocol
                        });
                    let reason = e.to_string();
                    self.core.close(key, code, &reason);
                    alive = false;
                    pos = end;
                    break;
                }
            }
        }
        // The app is done with any message assembled in the decoder.
        decoder.release_returned();
        if let Some(c) = self.core.conn_mut(key) {
            c.decoder = decoder;
            if alive && pos < end {
                c.inbuf = Box::from(&self.read_buf[pos..end]);
            }
        }
        if let Some(code) = peer_close {
            self.handle_peer_close(key, code);
        }
        alive
    }

    fn handle_peer_close(&mut self, key: ConnKey, code: Option<CloseCode>) {
        let Some(c) = slot(&mut self.core.conns, key) else {
            return;
        };
        c.set(flag::CLOSE_RECEIVED);
        match c.phase {
            Phase::Open => {
                // Echo the peer's code (RFC 6455 5.5.1), then close the TCP connection
                // ourselves once the frame is out: the server closes first.
                let mut frame = Vec::with_capacity(4);
                encode_close(&mut frame, code.unwrap_or(CloseCode::NORMAL), "");
                if code.is_none() {
                    frame.clear();
                    frame.extend_from_slice(&[0x88, 0x00]);
                }
                c.out.push_bytes(&mut self.core.pool, &frame);
                c.phase = Phase::Closing;
                c.set(flag::DROP_AFTER_FLUSH);
                self.core.mark_dirty(key);
                if self.core.conn(key).is_some_and(|c| c.out.is_empty()) {
                    self.core.doom(key);
                }
            }
            _ => {
                // We started the close; the peer answered.
                c.set(flag::DROP_AFTER_FLUSH);
                if c.out.is_empty() {
                    self.core.doom(key);
                } else {
                    self.core.mark_dirty(key);
                }
            }
        }
    }

    /// Queues an HTTP error answer (JSON body) and closes once it is written.
    fn respond_error(&mut self, key: ConnKey, status: u16, message: &str) {
        self.respond(key, |out| handshake::write_error(out, status, message));
    }

    fn respond(&mut self, key: ConnKey, write: impl FnOnce(&mut Vec<u8>)) {
        let Some(c) = slot(&mut self.core.conns, key) else {
            return;
        };
        let mut out = Vec::with_capacity(256);
        write(&mut out);
        c.out.push_bytes(&mut self.core.pool, &out);
        c.phase = Phase::HttpResponse;
        c.inbuf = Box::default();
        c.set(flag::DROP_AFTER_FLUSH);
        self.core.mark_dirty(key);
    }

    fn handle_timer(&mut self, entry: TimerEntry) {
        let key = entry.key;
        match entry.kind {
            TimerKind::App(data) => self.app.on_timer(&mut self.core, key, data),
            TimerKind::Handshake => {
                if self
                    .core
                    .conn(key)
                    .is_some_and(|c| c.phase == Phase::Handshake)
                {
                    self.core.metrics.inc(Metric::HsFailTimeout);
                    self.core.doom(key);
                }
            }
            TimerKind::Linger => {
                if self
                    .core
                    .conn(key)
                    .is_some_and(|c| c.phase == Phase::Closing)
                {
                    self.core.doom(key);
                }
            }
            TimerKind::KeepaliveSweep => self.sweep_keepalive(),
        }
    }

    fn drain_cross_shard(&mut self) {
        let mut inbox: Vec<(usize, Cross<A>)> = Vec::new();
        self.core
            .links
            .pop_batch(CROSS_SHARD_BATCH, |from, msg| inbox.push((from, msg)));
        for (from, msg) in inbox {
            match msg {
                Cross::Adopt(adoption) => self.adopt(*adoption),
                Cross::App(m) => self.app.on_shard_msg(&mut self.core, from, m),
            }
        }
    }

    fn flush_dirty(&mut self) {
        let dirty = std::mem::take(&mut self.core.dirty);
        for key in &dirty {
            let key = *key;
            let Some(c) = slot(&mut self.core.conns, key) else {
                continue;
            };
            c.clear(flag::DIRTY);
            if c.has(flag::DOOMED) || c.has(flag::WRITE_BLOCKED) {
                continue;
            }
            let before = c.out.pending();
            let mut counted = CountWrites {
                inner: &mut c.stream,
                calls: 0,
            };
            let flushed = c.out.flush(&mut self.core.pool, &mut counted);
            self.core.metrics.add(Metric::SocketWrites, counted.calls);
            match flushed {
                Ok(outbound::Flush::Done) => {
                    self.core.metrics.add(Metric::BytesOut, before as u64);
                    if c.has(flag::DROP_AFTER_FLUSH) {
                        if c.phase == Phase::HttpResponse {
                            // Half-close so the client reads the response before EOF.
                            c.stream.shutdown_write();
                        }
                        self.core.doom(key);
                    }
                }
                Ok(outbound::Flush::WouldBlock) => {
                    let after = c.out.pending();
                    c.set(flag::WRITE_BLOCKED);
                    self.core
                        .metrics
                        .add(Metric::BytesOut, (before - after) as u64);
                }
                Err(_) => {
                    self.core.metrics.inc(Metric::IoErrors);
                    self.core.doom(key);
                }
            }
        }
        // Reuse the allocation.
        let mut dirty = dirty;
        dirty.clear();
        if self.core.dirty.is_empty() {
            self.core.dirty = dirty;
        }
    }

    /// Removes doomed connections and tells the app.
    fn reap(&mut self) {
        while let Some(key) = self.core.doomed.pop() {
            let Some(c) = self.core.conns.get(key.index()) else {
                continue;
            };
            if c.generation != key.generation() {
                continue;
            }
            let mut conn = self.core.conns.remove(key.index());
            conn.stream.deregister_before_close(&self.core.registry);
            let was_open = matches!(conn.phase, Phase::Open | Phase::Closing);
            if was_open {
                self.core.open -= 1;
            }
            if conn.has(flag::COUNTED) {
                self.core
                    .shared
                    .open_connections
                    .fetch_sub(1, Ordering::AcqRel);
            }
            if was_open {
                self.app.on_closed(&mut self.core, key, conn.session);
            }
            // Dropping the stream closes the socket.
        }
    }
}

/// A writer that counts the write calls reaching the socket (the syscall metric).
struct CountWrites<'a, W> {
    inner: &'a mut W,
    calls: u64,
}

impl<W: io::Write> io::Write for CountWrites<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.calls += 1;
        self.inner.write(buf)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.calls += 1;
        self.inner.write_vectored(bufs)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Enforces the outbound limit after a frame was queued on `c`: a slow consumer's queue is
/// released and it is told 1013 if the socket still takes a frame. Returns false when the
/// connection must be doomed.
fn settle_push<S>(
    c: &mut Conn<S>,
    pool: &mut outbound::BufPool,
    limit: usize,
    metrics: &ShardMetrics,
) -> bool {
    if c.out.pending() <= limit {
        return true;
    }
    let at_frame_boundary = c.out.clear(pool);
    if at_frame_boundary {
        let mut frame = Vec::with_capacity(32);
        encode_close(&mut frame, CloseCode::TRY_AGAIN_LATER, "slow consumer");
        // Best effort, non-blocking: if the socket has room the peer learns why.
        let _ = io::Write::write(&mut c.stream, &frame);
    }
    metrics.inc(Metric::CloseSlowConsumer);
    false
}

/// The connection behind `key`, if the slot still holds that generation (a borrow of the
/// slab alone, so the rest of the core stays usable).
fn slot<S>(conns: &mut Slab<Conn<S>>, key: ConnKey) -> Option<&mut Conn<S>> {
    conns
        .get_mut(key.index())
        .filter(|c| c.generation == key.generation())
}

/// The wall clock in Unix milliseconds (0 before 1970).
fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Shard wake-up handle (for the stop path and the queue mesh).
pub(crate) fn new_waker(poll: &Poll) -> io::Result<Arc<Waker>> {
    Ok(Arc::new(Waker::new(poll.registry(), WAKER_TOKEN)?))
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::num::NonZeroUsize;
    use std::time::{Duration, Instant};

    use crate::config::Config;
    use crate::echo::Echo;
    use crate::Server;

    const UPGRADE: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
        Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn echo_server() -> Server {
        let mut c = Config::echo();
        c.listen = "127.0.0.1:0".parse().expect("address");
        c.admin_listen = None;
        c.shards = NonZeroUsize::MIN;
        Server::start(c, |_| Echo).expect("server")
    }

    /// A masked client text frame (mask 0: the payload stays readable).
    fn text_frame(payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        f.extend_from_slice(payload);
        f
    }

    /// Reads until the server closes the connection; panics if it does not within 2 s.
    fn read_until_eof(s: &mut TcpStream) -> Vec<u8> {
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            assert!(
                Instant::now() < deadline,
                "the server did not notice the FIN: {got:02x?}"
            );
            match s.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    /// An idle connection is mostly this struct (ARCHITECTURE.md, memory per idle
    /// connection); the in-memory transport variant costs it 8 bytes, no more.
    #[test]
    fn conn_stays_small() {
        let size = std::mem::size_of::<super::Conn<crate::gateway::Session>>();
        // 16 transport + 16 stamps and flags + 16 carry + 16 decoder + 8 output queue
        // + 16 session.
        assert!(size <= 88, "size_of::<Conn<Session>>() = {size}");
    }

    /// Data and FIN in one burst, both before the upgrade (the accept path reads after a
    /// short read stops) and on an open connection (the event reports the FIN with the data,
    /// so the read must go on to the EOF: no later edge would announce it).
    #[test]
    fn fin_behind_data_is_seen_after_a_short_read() {
        let server = echo_server();
        let addr = server.local_addr();

        let mut s = TcpStream::connect(addr).expect("connect");
        let mut burst = UPGRADE.to_vec();
        burst.extend_from_slice(&text_frame(b"first"));
        s.write_all(&burst).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let got = read_until_eof(&mut s);
        assert!(got.starts_with(b"HTTP/1.1 101"), "{got:02x?}");
        assert!(got.ends_with(b"\x81\x05first"), "{got:02x?}");

        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(UPGRADE).expect("write");
        s.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut head = [0u8; 12];
        s.read_exact(&mut head).expect("101");
        assert_eq!(&head, b"HTTP/1.1 101");
        // Let the rest of the response arrive and the server go back to its poll.
        std::thread::sleep(Duration::from_millis(50));
        let mut burst = text_frame(b"one");
        burst.extend_from_slice(&text_frame(b"two"));
        s.write_all(&burst).expect("write");
        s.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let got = read_until_eof(&mut s);
        assert!(got.ends_with(b"\x81\x03one\x81\x03two"), "{got:02x?}");
    }
}
