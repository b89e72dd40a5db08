//! Deterministic simulation of a whole server in one thread: N real shards (the runtime in
//! [`crate::shard`], the real app, the real cross-shard rings) over in-memory pipes instead
//! of sockets, with a virtual clock. Used by `tests/simulation.rs` and the `routing` fuzz
//! target; not a product API.
//!
//! The driver replaces what the kernel and the threads do in a server:
//!
//! * **accept**: [`Sim::connect_on`] hands a new pipe to a shard as if its listener had
//!   accepted it; the shard reads the upgrade request in its next turn, and hands the
//!   connection to its home shard through the ring exactly as with TCP.
//! * **readiness**: a pipe that received client bytes (or a FIN) carries a readable edge the
//!   shard consumes in its next turn (`Shard::sim_turn`).
//! * **wake-ups and scheduling**: [`Sim::run_until_idle`] runs one turn of every shard,
//!   round robin, until none has anything left to do (no input, empty rings, no backlog,
//!   no batch, no timer due), delivering server output to the simulated clients in between.
//! * **time**: [`Sim::advance`] moves the virtual clock from timer deadline to timer
//!   deadline, running the shards until idle at each.
//!
//! Simulated clients answer pings (like browsers do) and echo a server Close, so keepalive
//! and closing handshakes behave as with real peers.

pub mod model;

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::mint_hs256;
use crate::config::{AuthConfig, Config, JwtKey};
use crate::gateway::{BuiltIn, Gateway, GatewayFactory};
use crate::metrics::{self, ShardMetrics};
use crate::queue;
use crate::shard::{App, Cross, MemPipe, Shard, ShardParts, Shared};

/// The HMAC secret of simulated gateways (tokens are minted with it).
pub const SIM_SECRET: &[u8] = b"customws-simulation-secret-0123456789";

/// Turns of every shard after which [`Sim::run_until_idle`] gives up: a server that never
/// settles with no new input is a livelock (a bug the simulation exists to find).
const MAX_ROUNDS: usize = 100_000;

/// Index of a simulated client (in creation order).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId(pub usize);

/// Errors building a simulation.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("gateway config: {0}")]
    Config(String),
    #[error("creating a poll instance: {0}")]
    Io(#[from] std::io::Error),
}

/// One simulated client: its pipe and what it has read so far.
struct Client {
    pipe: MemPipe,
    /// Server bytes not yet parsed (a partial response head or frame).
    inbuf: Vec<u8>,
    /// The status of the HTTP response, once its head is complete.
    status: Option<u16>,
    /// Text messages received and not yet taken.
    received: Vec<String>,
    /// The code of the server's Close frame (1005 when it carried none).
    close_code: Option<u16>,
    /// The client sent a Close frame or a FIN.
    closed: bool,
    /// Bytes that are not a valid server frame stream (a finding in itself).
    garbage: bool,
}

/// N shards of one app, run deterministically in this thread.
pub struct Sim<A: App> {
    shards: Vec<Shard<A>>,
    /// Connections handed to each shard's "listener", taken in its next turn.
    accepted: Vec<Vec<MemPipe>>,
    next_accept: usize,
    clients: Vec<Client>,
    tokens: HashMap<u64, String>,
    metrics: Vec<Arc<ShardMetrics>>,
    now: Instant,
    mask_seed: u32,
}

impl Sim<Gateway<BuiltIn>> {
    /// The built-in gateway on `shards` shards. `config.auth` is replaced by an HS256 key
    /// ([`SIM_SECRET`]) that allows every origin; everything else is taken as given.
    pub fn gateway(mut config: Config, shards: usize) -> Result<Self, SimError> {
        config.auth = Some(AuthConfig {
            key: JwtKey::Hmac(SIM_SECRET.to_vec()),
            leeway: Duration::from_secs(30),
            issuer: None,
            audience: None,
            allow_query_token: true,
            allowed_origins: vec!["*".into()],
        });
        let factory = GatewayFactory::new(&config).map_err(SimError::Config)?;
        Sim::new(config, shards, |shard| factory.build(shard))
    }
}

impl<A: App> Sim<A> {
    /// `shards` shards (at least 1) running `make_app(shard)`.
    pub fn new(
        mut config: Config,
        shards: usize,
        make_app: impl Fn(usize) -> A,
    ) -> Result<Self, SimError> {
        let shards = shards.max(1);
        config.shards = NonZeroUsize::new(shards).unwrap_or(NonZeroUsize::MIN);
        config.admin_listen = None;
        let config = Arc::new(config);
        // Real polls, for the registries and the wakers the mesh wants; nothing is ever
        // registered on them and the simulation never waits on them.
        let mut polls = Vec::with_capacity(shards);
        let mut wakers = Vec::with_capacity(shards);
        for _ in 0..shards {
            let poll = mio::Poll::new()?;
            wakers.push(crate::shard::new_waker(&poll)?);
            polls.push(poll);
        }
        let links = queue::mesh::<Cross<A>>(shards, config.cross_shard_queue_capacity, wakers);
        let shared = Arc::new(Shared::default());
        let metrics: Vec<Arc<ShardMetrics>> = (0..shards)
            .map(|_| Arc::new(ShardMetrics::new(shards)))
            .collect();
        let apps: Vec<A> = (0..shards).map(&make_app).collect();
        let now = Instant::now();
        let mut built = Vec::with_capacity(shards);
        for (shard_id, ((poll, links), app)) in polls.into_iter().zip(links).zip(apps).enumerate() {
            let parts = ShardParts {
                shard_id,
                shards,
                poll,
                listener: None,
                links,
                config: config.clone(),
                shared: shared.clone(),
                metrics: metrics[shard_id].clone(),
            };
            built.push(Shard::new_at(parts, app, now)?);
        }
        Ok(Sim {
            shards: built,
            accepted: (0..shards).map(|_| Vec::new()).collect(),
            next_accept: 0,
            clients: Vec::new(),
            tokens: HashMap::new(),
            metrics,
            now,
            mask_seed: 0x9e37_79b9,
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// The virtual clock.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Opens a connection for `user` (a token with `sub = user`, `name = "u<user>"`) on the
    /// next shard in round-robin order.
    pub fn connect(&mut self, user: u64) -> ClientId {
        let shard = self.next_accept % self.shards.len();
        self.next_accept = self.next_accept.wrapping_add(1);
        self.connect_on(shard, user)
    }

    /// Opens a connection for `user`, accepted by `shard` (wrapped into range).
    pub fn connect_on(&mut self, shard: usize, user: u64) -> ClientId {
        let token = self
            .tokens
            .entry(user)
            .or_insert_with(|| {
                let name = format!("u{user}");
                mint_hs256(
                    SIM_SECRET,
                    user,
                    Some(&name),
                    &[],
                    Duration::from_secs(24 * 3600),
                )
            })
            .clone();
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: sim\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {token}\r\n\r\n"
        );
        self.connect_raw(shard, request.as_bytes())
    }

    /// Opens a connection on `shard` (wrapped into range) whose client sends `bytes` first
    /// (an HTTP request, possibly followed by frames).
    pub fn connect_raw(&mut self, shard: usize, bytes: &[u8]) -> ClientId {
        let pipe = MemPipe::new();
        pipe.client_write(bytes);
        let shard = shard % self.shards.len();
        self.accepted[shard].push(pipe.clone());
        self.clients.push(Client {
            pipe,
            inbuf: Vec::new(),
            status: None,
            received: Vec::new(),
            close_code: None,
            closed: false,
            garbage: false,
        });
        ClientId(self.clients.len() - 1)
    }

    /// Sends a text message (a masked frame) from the client. Ignored after the client
    /// closed.
    pub fn send_text(&mut self, client: ClientId, text: &str) {
        self.send_frame(client, 0x1, text.as_bytes());
    }

    /// Sends raw bytes from the client (frames the test built itself).
    pub fn send_raw(&mut self, client: ClientId, bytes: &[u8]) {
        if let Some(c) = self.clients.get(client.0) {
            c.pipe.client_write(bytes);
        }
    }

    fn send_frame(&mut self, client: ClientId, opcode: u8, payload: &[u8]) {
        self.mask_seed = self
            .mask_seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let frame = client_frame(opcode, payload, self.mask_seed.to_be_bytes());
        if let Some(c) = self.clients.get(client.0) {
            if !c.closed {
                c.pipe.client_write(&frame);
            }
        }
    }

    /// Closes the client's TCP connection (a FIN, no closing handshake).
    pub fn disconnect(&mut self, client: ClientId) {
        if let Some(c) = self.clients.get_mut(client.0) {
            c.closed = true;
            c.pipe.client_close();
        }
    }

    /// Starts a closing handshake from the client with `code`.
    pub fn close(&mut self, client: ClientId, code: u16) {
        self.send_frame(client, 0x8, &code.to_be_bytes());
        if let Some(c) = self.clients.get_mut(client.0) {
            c.closed = true;
        }
    }

    /// Runs every shard, one turn each in shard order, until all are idle. Panics if the
    /// server never settles (a livelock).
    pub fn run_until_idle(&mut self) {
        for _ in 0..MAX_ROUNDS {
            for shard in 0..self.shards.len() {
                let accepted = std::mem::take(&mut self.accepted[shard]);
                // A shard only stops on `Shared::stop`, which nothing here sets.
                let _ = self.shards[shard].sim_turn(self.now, accepted);
            }
            self.pump_clients();
            if self.is_idle() {
                return;
            }
        }
        panic!("the simulated server did not settle after {MAX_ROUNDS} rounds");
    }

    fn is_idle(&self) -> bool {
        self.accepted.iter().all(Vec::is_empty) && self.shards.iter().all(Shard::sim_idle)
    }

    /// Moves the virtual clock forward by `by`, stopping at every timer deadline on the
    /// way to run the shards until idle.
    pub fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        self.run_until_idle();
        while let Some(t) = self.next_deadline().filter(|t| *t <= target) {
            // After a turn at `now` the wheel's next deadline is later than `now`; the
            // bump only guards the loop's progress.
            self.now = t.max(self.now + Duration::from_micros(1));
            self.run_until_idle();
        }
        self.now = self.now.max(target);
        self.run_until_idle();
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.shards.iter().filter_map(Shard::next_timer).min()
    }

    /// Parses what the server wrote to each client: the response head, then frames.
    /// Pings are answered with pongs and a server Close with a Close, as real clients do.
    fn pump_clients(&mut self) {
        for c in &mut self.clients {
            let fresh = c.pipe.client_take();
            if fresh.is_empty() {
                continue;
            }
            c.inbuf.extend_from_slice(&fresh);
            if c.status.is_none() {
                let Some(end) = c.inbuf.windows(4).position(|w| w == b"\r\n\r\n") else {
                    continue;
                };
                let head = String::from_utf8_lossy(&c.inbuf[..end]).into_owned();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                c.status = Some(status);
                if status != 101 {
                    c.inbuf.clear();
                    continue;
                }
                c.inbuf.drain(..end + 4);
            }
            let mut pos = 0;
            while let Some((opcode, payload, used)) = parse_server_frame(&c.inbuf[pos..]) {
                pos += used;
                match opcode {
                    Ok(0x1) => match std::str::from_utf8(payload) {
                        Ok(s) => c.received.push(s.to_owned()),
                        Err(_) => c.garbage = true,
                    },
                    Ok(0x8) => {
                        let code = match payload {
                            [a, b, ..] => u16::from_be_bytes([*a, *b]),
                            _ => 1005,
                        };
                        c.close_code.get_or_insert(code);
                        if !c.closed {
                            c.closed = true;
                            let reply = if payload.len() >= 2 {
                                &payload[..2]
                            } else {
                                &[][..]
                            };
                            c.pipe.client_write(&client_frame(0x8, reply, [1, 2, 3, 4]));
                        }
                    }
                    Ok(0x9) => {
                        if !c.closed {
                            c.pipe
                                .client_write(&client_frame(0xA, payload, [5, 6, 7, 8]));
                        }
                    }
                    Ok(0xA) => {}
                    _ => c.garbage = true,
                }
            }
            c.inbuf.drain(..pos);
        }
    }

    /// Text messages the client received since the last call.
    pub fn take_received(&mut self, client: ClientId) -> Vec<String> {
        self.clients
            .get_mut(client.0)
            .map(|c| std::mem::take(&mut c.received))
            .unwrap_or_default()
    }

    /// Whether the server closed (or dropped) the connection.
    pub fn is_closed(&self, client: ClientId) -> bool {
        self.clients
            .get(client.0)
            .is_none_or(|c| c.pipe.server_closed())
    }

    /// Whether the upgrade succeeded and the server has not closed the connection.
    pub fn is_open(&self, client: ClientId) -> bool {
        self.clients
            .get(client.0)
            .is_some_and(|c| c.status == Some(101) && c.close_code.is_none())
            && !self.is_closed(client)
    }

    /// The HTTP status the server answered the request with (101 for an upgrade).
    pub fn http_status(&self, client: ClientId) -> Option<u16> {
        self.clients.get(client.0).and_then(|c| c.status)
    }

    /// The code of the server's Close frame, if one arrived (1005 when it had none).
    pub fn close_code(&self, client: ClientId) -> Option<u16> {
        self.clients.get(client.0).and_then(|c| c.close_code)
    }

    /// Whether the server sent bytes that are not a well-formed server frame stream.
    pub fn saw_garbage(&self, client: ClientId) -> bool {
        self.clients.get(client.0).is_some_and(|c| c.garbage)
    }

    /// Prometheus text of every shard's metrics.
    pub fn metrics_text(&self) -> String {
        metrics::render(&self.metrics)
    }
}

/// A masked client frame (FIN set).
fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// One complete server frame at the start of `buf`: `(Ok(opcode) or Err(first byte) when
/// the frame is not one a server may send, payload, bytes used)`, or `None` if incomplete.
#[allow(clippy::type_complexity)]
fn parse_server_frame(buf: &[u8]) -> Option<(Result<u8, u8>, &[u8], usize)> {
    let [b0, b1, rest @ ..] = buf else {
        return None;
    };
    let (len, header): (u64, usize) = match b1 & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?])),
            4,
        ),
        127 => {
            let bytes: [u8; 8] = rest.get(..8)?.try_into().ok()?;
            (u64::from_be_bytes(bytes), 10)
        }
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len).ok()?;
    let end = header.checked_add(len)?;
    let payload = buf.get(header..end)?;
    // Servers send unmasked, unfragmented frames with no RSV bits.
    let opcode = if b0 & 0xf0 == 0x80 && b1 & 0x80 == 0 {
        Ok(b0 & 0x0f)
    } else {
        Err(*b0)
    };
    Some((opcode, payload, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_frames_parse_at_every_length_form() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let mut header = [0u8; 10];
            let payload = vec![b'x'; len];
            let n = crate::proto::frame::encode_header(
                true,
                crate::proto::frame::OpCode::Text,
                len,
                &mut header,
            );
            let mut frame = header[..n].to_vec();
            frame.extend_from_slice(&payload);
            let (op, got, used) = parse_server_frame(&frame).expect("complete");
            assert_eq!((op, got.len(), used), (Ok(1), len, frame.len()));
            assert!(parse_server_frame(&frame[..frame.len() - 1]).is_none() || len == 0);
        }
    }
}
