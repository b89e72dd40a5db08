//! The bridge thread: one `mio::Poll`, two Redis connections, the queue-mesh endpoint.
//!
//! * `cmd`: pipelined commands (`SPUBLISH`, the heartbeat key `SET … PX`); replies come back
//!   in order and are matched with a FIFO of what each command was for (an ack, a 404 or
//!   nothing).
//! * `sub`: `SSUBSCRIBE cws:all` plus one channel per local user; delivers `smessage` pushes.
//!
//! One loop turn: take everything the shards queued, read both sockets, run the timers,
//! then write one batch per connection and wake the shards that got messages. The thread
//! never blocks on Redis except for connecting, which happens only while the link is down
//! (and is bounded by a short timeout).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::membership::{Effects, Membership};
use super::resp::{self, Value};
use super::wire::{self, Change, Message, Record};
use super::{user_channel, ClusterLink, ClusterMetrics, ALL_CHANNEL};
use crate::config::{ClusterConfig, RedisEndpoint};
use crate::gateway::registry::home_shard;
use crate::gateway::{Outcome, Reply, ShardMsg};
use crate::queue::ShardLinks;
use crate::shard::{encode_shared_text, App, Cross, Shared};

pub const WAKE_TOKEN: Token = Token(0);
const CMD_TOKEN: Token = Token(1);
const SUB_TOKEN: Token = Token(2);

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Unsent bytes towards Redis beyond which the link counts as broken (Redis stopped
/// reading; holding more would only grow memory).
const MAX_UNSENT: usize = 256 << 20;
/// The link is broken when this node's own heartbeat has not come back for this many
/// intervals (Redis stalled, or the subscription silently died).
const LINK_SILENT_HEARTBEATS: u32 = 3;
/// Liveness checks (other nodes, own link) per heartbeat interval.
const CHECKS_PER_HEARTBEAT: u32 = 4;
/// Values taken from each shard's ring per turn.
const BATCH: usize = 4096;

/// Everything the bridge thread needs.
pub struct BridgeParts<A: App> {
    pub poll: Poll,
    pub links: ShardLinks<Cross<A>>,
    pub shards: usize,
    pub config: ClusterConfig,
    pub link: ClusterLink,
    pub shared: Arc<Shared>,
    pub metrics: Arc<ClusterMetrics>,
    pub stop: Arc<AtomicBool>,
}

/// One Redis connection: non-blocking socket, unsent output, unparsed input.
struct RedisConn {
    stream: TcpStream,
    out: Vec<u8>,
    sent: usize,
    input: BytesMut,
}

impl RedisConn {
    fn connect(addr: SocketAddr, poll: &Poll, token: Token) -> io::Result<Self> {
        let std = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        std.set_nodelay(true)?;
        std.set_nonblocking(true)?;
        let mut stream = TcpStream::from_std(std);
        poll.registry()
            .register(&mut stream, token, Interest::READABLE | Interest::WRITABLE)?;
        Ok(RedisConn {
            stream,
            out: Vec::with_capacity(64 * 1024),
            sent: 0,
            input: BytesMut::with_capacity(64 * 1024),
        })
    }

    fn unsent(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Writes what it can; the rest waits for the next writable edge.
    fn flush(&mut self) -> io::Result<()> {
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
        } else if self.unsent() > MAX_UNSENT {
            return Err(io::Error::other("Redis is not reading"));
        }
        Ok(())
    }

    /// Reads everything available. EOF is an error (Redis closed the link).
    fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// What a reply on the command connection answers.
enum Expect {
    /// `AUTH`, `SELECT`, `SET`: an error breaks the link (misconfiguration).
    Ok,
    /// `SPUBLISH` of a P2P delivery: the receiver count decides ack or 404.
    Publish(Option<Reply>),
}

/// The link to Redis and its protocol state.
struct Link {
    cmd: RedisConn,
    sub: RedisConn,
    expect: VecDeque<Expect>,
    /// Replies to skip on the sub connection (`AUTH`).
    sub_skip: usize,
    /// `cws:all` subscription confirmed.
    subscribed_all: bool,
    /// User channels subscribed (or requested) on this link.
    subscribed: HashSet<u64>,
    /// When this node last heard its own heartbeat back.
    last_self_heard: Instant,
    established: Instant,
}

struct Bridge<A: App<Msg = ShardMsg>> {
    poll: Poll,
    links: ShardLinks<Cross<A>>,
    shards: usize,
    config: ClusterConfig,
    node: Box<str>,
    incarnation: u64,
    cluster: ClusterLink,
    shared: Arc<Shared>,
    metrics: Arc<ClusterMetrics>,
    stop: Arc<AtomicBool>,
    addr: Option<SocketAddr>,
    link: Option<Link>,
    reconnect_at: Instant,
    backoff: Duration,
    /// This node's users and their public presence (snapshots are built from it).
    local: HashMap<u64, Record>,
    /// Users whose subscription may need to change this turn.
    touched: Vec<u64>,
    /// This turn's presence changes of local users, published as one delta.
    deltas: Vec<(u64, Change)>,
    seq: u64,
    snapshot_due: bool,
    members: Membership,
    effects: Effects,
    /// Remote presence changes per destination shard, sent at the end of the turn.
    to_shards: Vec<Vec<(u64, u32, Change)>>,
    /// Messages a full ring handed back, retried every turn in order.
    backlog: VecDeque<(usize, ShardMsg)>,
    next_heartbeat: Instant,
    next_check: Instant,
    last_heartbeat_sent: Instant,
    scratch: Vec<u8>,
    msg: Vec<u8>,
}

/// Runs the bridge until `stop` is set. Never returns an error: a broken link is retried.
pub fn run<A: App<Msg = ShardMsg>>(parts: BridgeParts<A>) {
    let now = Instant::now();
    let heartbeat = parts.config.heartbeat;
    let mut bridge = Bridge {
        node: parts.config.node_id.clone().into_boxed_str(),
        incarnation: incarnation(),
        members: Membership::new(&parts.config.node_id, heartbeat),
        to_shards: (0..parts.shards).map(|_| Vec::new()).collect(),
        poll: parts.poll,
        links: parts.links,
        shards: parts.shards,
        config: parts.config,
        cluster: parts.link,
        shared: parts.shared,
        metrics: parts.metrics,
        stop: parts.stop,
        addr: None,
        link: None,
        reconnect_at: now,
        backoff: BACKOFF_MIN,
        local: HashMap::new(),
        touched: Vec::new(),
        deltas: Vec::new(),
        seq: 0,
        snapshot_due: false,
        effects: Effects::default(),
        backlog: VecDeque::new(),
        next_heartbeat: now,
        next_check: now,
        last_heartbeat_sent: now,
        scratch: Vec::with_capacity(256),
        msg: Vec::with_capacity(4096),
    };
    bridge.set_health(false);
    bridge.run();
}

/// A random 64-bit incarnation number: a restarted node under the same id is a new node.
fn incarnation() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut x = t ^ (u64::from(std::process::id()) << 40) ^ 0x9E37_79B9_7F4A_7C15;
    // splitmix64 finaliser
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)).max(1)
}

/// A generated node id: `<hostname>-<random>`.
pub fn generated_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let host = if host.is_empty() { "node".into() } else { host };
    format!("{host}-{:08x}", incarnation() as u32)
}

impl<A: App<Msg = ShardMsg>> Bridge<A> {
    fn run(&mut self) {
        let mut events = Events::with_capacity(64);
        loop {
            let now = Instant::now();
            let mut deadline = self.next_heartbeat.min(self.next_check);
            if self.link.is_none() {
                deadline = deadline.min(self.reconnect_at);
            }
            let mut timeout = deadline.saturating_duration_since(now);
            if !self.backlog.is_empty() {
                timeout = timeout.min(Duration::from_millis(1));
            }
            let parked = !timeout.is_zero() && self.links.prepare_park();
            let polled = self.poll.poll(
                &mut events,
                Some(if parked || timeout.is_zero() {
                    timeout
                } else {
                    Duration::ZERO
                }),
            );
            if parked {
                self.links.unpark();
            }
            if let Err(e) = polled {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "cluster bridge: poll failed");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            if self.stop.load(Ordering::Acquire) {
                self.say_goodbye();
                return;
            }
            self.turn(Instant::now());
        }
    }

    fn turn(&mut self, now: Instant) {
        self.retry_backlog();
        // 1. what the shards queued
        let mut inbound = Vec::new();
        self.links.pop_batch(BATCH, |_, msg| inbound.push(msg));
        for msg in inbound {
            if let Cross::App(msg) = msg {
                self.on_shard_msg(msg);
            }
        }
        // 2. what Redis sent
        if let Err(e) = self.read_link(now) {
            self.link_broken(now, &e.to_string());
        }
        // 3. timers
        if now >= self.next_check {
            self.check_liveness(now);
        }
        if now >= self.next_heartbeat {
            self.heartbeat(now);
        }
        if self.link.is_none() && now >= self.reconnect_at {
            self.connect(now);
        }
        // 4. this turn's batches: membership effects (to the shards, sync requests), the
        // presence delta and subscriptions, then one write per connection
        self.route_effects();
        self.publish_turn();
        if let Err(e) = self.flush_link() {
            self.link_broken(now, &e.to_string());
        }
        self.links.flush_wakeups();
        self.metrics
            .remote_nodes
            .store(self.members.len() as u64, Ordering::Relaxed);
        self.metrics
            .remote_presence_entries
            .store(self.members.remote_entries() as u64, Ordering::Relaxed);
        self.metrics.pending_replies.store(
            self.link.as_ref().map_or(0, |l| l.expect.len() as u64),
            Ordering::Relaxed,
        );
    }

    fn is_up(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.subscribed_all)
    }

    fn set_health(&self, up: bool) {
        self.cluster.set_up(up);
        self.shared.degraded.store(!up, Ordering::Relaxed);
        self.metrics.link_up.store(u64::from(up), Ordering::Relaxed);
    }

    // ------------------------------------------------------------------ from the shards

    fn on_shard_msg(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::ClusterPublish { to, frame, reply } => {
                if !self.is_up() {
                    if let Some(reply) = reply {
                        self.answer_unavailable(reply);
                    }
                    return;
                }
                self.msg.clear();
                wire::write_deliver(&mut self.msg, &self.node, to, frame_payload(&frame));
                self.publish_msg(Some(to), Expect::Publish(reply));
            }
            ShardMsg::ClusterBroadcast { frame } => {
                if !self.is_up() {
                    self.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                self.msg.clear();
                wire::write_broadcast(&mut self.msg, &self.node, frame_payload(&frame));
                self.publish_msg(None, Expect::Ok);
            }
            ShardMsg::ClusterPresence { changes } => {
                for (user, change) in changes {
                    match &change {
                        Change::Online(r) | Change::Update(r) => {
                            self.local.insert(user, r.clone());
                        }
                        Change::Offline => {
                            self.local.remove(&user);
                        }
                    }
                    self.touched.push(user);
                    self.deltas.push((user, change));
                }
            }
            _ => {}
        }
    }

    /// Queues one `SPUBLISH` of `self.msg` (written by the caller) on the command
    /// connection: on `user`'s channel, or on the shared one.
    fn publish_msg(&mut self, user: Option<u64>, expect: Expect) {
        let Some(link) = self.link.as_mut() else {
            return;
        };
        let channel = match user {
            Some(u) => {
                self.scratch.clear();
                user_channel(&mut self.scratch, u);
                &self.scratch[..]
            }
            None => ALL_CHANNEL,
        };
        resp::write_command(&mut link.cmd.out, &[b"SPUBLISH", channel, &self.msg]);
        link.expect.push_back(expect);
        self.metrics.publishes.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .publish_bytes
            .fetch_add(self.msg.len() as u64, Ordering::Relaxed);
    }

    /// Publishes the turn's presence delta, subscription changes and a snapshot if asked.
    fn publish_turn(&mut self) {
        if !self.is_up() {
            // The changes are in `local`; the snapshot sent on reconnect carries them.
            self.deltas.clear();
            self.touched.clear();
            return;
        }
        if !self.deltas.is_empty() {
            self.seq += 1;
            self.msg.clear();
            wire::write_presence(
                &mut self.msg,
                &self.node,
                self.incarnation,
                self.seq,
                &self.deltas,
            );
            self.publish_msg(None, Expect::Ok);
            self.deltas.clear();
        }
        if self.snapshot_due {
            self.snapshot_due = false;
            self.publish_snapshot();
        }
        self.update_subscriptions();
    }

    fn publish_snapshot(&mut self) {
        self.msg.clear();
        wire::write_snapshot(
            &mut self.msg,
            &self.node,
            self.incarnation,
            self.seq,
            self.local.iter().map(|(u, r)| (*u, r)),
        );
        self.publish_msg(None, Expect::Ok);
        self.metrics.snapshots_sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Subscribes to the channels of users who became local and unsubscribes from those who
    /// left, one command each per turn.
    fn update_subscriptions(&mut self) {
        let Some(link) = self.link.as_mut() else {
            self.touched.clear();
            return;
        };
        let mut add = Vec::new();
        let mut remove = Vec::new();
        for user in self.touched.drain(..) {
            let want = self.local.contains_key(&user);
            let have = link.subscribed.contains(&user);
            if want && !have {
                link.subscribed.insert(user);
                add.push(user);
            } else if !want && have {
                link.subscribed.remove(&user);
                remove.push(user);
            }
        }
        for (verb, users) in [(&b"SSUBSCRIBE"[..], add), (&b"SUNSUBSCRIBE"[..], remove)] {
            if users.is_empty() {
                continue;
            }
            write_channels_command(&mut link.sub.out, verb, &users);
        }
    }

    // ------------------------------------------------------------------ from Redis

    fn read_link(&mut self, now: Instant) -> io::Result<()> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        link.cmd.fill()?;
        link.sub.fill()?;
        loop {
            let Some(link) = self.link.as_mut() else {
                return Ok(());
            };
            let value = resp::parse(&mut link.cmd.input).map_err(io::Error::other)?;
            let Some(value) = value else { break };
            let expect = link.expect.pop_front();
            self.on_reply(expect, value)?;
        }
        loop {
            let Some(link) = self.link.as_mut() else {
                return Ok(());
            };
            let value = resp::parse(&mut link.sub.input).map_err(io::Error::other)?;
            let Some(value) = value else { break };
            if link.sub_skip > 0 {
                link.sub_skip -= 1;
                if let Value::Error(e) = value {
                    return Err(io::Error::other(String::from_utf8_lossy(&e).into_owned()));
                }
                continue;
            }
            self.on_push(value, now)?;
        }
        Ok(())
    }

    fn on_reply(&mut self, expect: Option<Expect>, value: Value) -> io::Result<()> {
        match (expect, value) {
            (Some(Expect::Publish(reply)), Value::Integer(receivers)) => {
                if let Some(reply) = reply {
                    let shard = reply.shard;
                    if receivers == 0 {
                        self.send(shard, reply.answer(Outcome::Offline));
                    } else if reply.pid.is_some() {
                        self.send(shard, reply.answer(Outcome::Delivered));
                    }
                }
                Ok(())
            }
            (Some(Expect::Publish(reply)), other) => {
                tracing::warn!(reply = ?other, "cluster bridge: SPUBLISH failed");
                if let Some(reply) = reply {
                    self.answer_unavailable(reply);
                }
                Ok(())
            }
            (Some(Expect::Ok), Value::Error(e)) => Err(io::Error::other(format!(
                "Redis refused a command: {}",
                String::from_utf8_lossy(&e)
            ))),
            (Some(Expect::Ok), _) => Ok(()),
            (None, _) => Err(io::Error::other("unexpected reply from Redis")),
        }
    }

    fn on_push(&mut self, value: Value, now: Instant) -> io::Result<()> {
        let Value::Array(items) = value else {
            if let Value::Error(e) = value {
                return Err(io::Error::other(format!(
                    "Redis refused a subscription: {}",
                    String::from_utf8_lossy(&e)
                )));
            }
            return Ok(());
        };
        let mut items = items.into_iter();
        let kind = items.next();
        let channel = items.next();
        let third = items.next();
        match (kind.as_ref().and_then(Value::as_bytes), third) {
            (Some(b"smessage"), Some(Value::Bulk(payload))) => {
                self.metrics.received.fetch_add(1, Ordering::Relaxed);
                self.metrics
                    .received_bytes
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                match wire::decode(&payload) {
                    Ok(env) => self.on_node_message(env, now),
                    Err(e) => {
                        self.metrics.decode_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(error = %e, "cluster bridge: malformed message dropped");
                    }
                }
            }
            (Some(b"ssubscribe"), _) => {
                let confirmed_all = channel.as_ref().and_then(Value::as_bytes) == Some(ALL_CHANNEL);
                let first = match self.link.as_mut() {
                    Some(link) if confirmed_all && !link.subscribed_all => {
                        link.subscribed_all = true;
                        link.last_self_heard = now;
                        Some(now.duration_since(link.established))
                    }
                    _ => None,
                };
                if let Some(took) = first {
                    tracing::info!(node = %self.node, ?took, "cluster link up");
                    self.set_health(true);
                    // Everyone learns this node's state from scratch, and this node asks
                    // everyone for theirs.
                    self.seq += 1;
                    self.snapshot_due = true;
                    self.touched.extend(self.local.keys().copied());
                    self.msg.clear();
                    wire::write_sync_request(&mut self.msg, &self.node, "");
                    self.publish_msg(None, Expect::Ok);
                    self.next_heartbeat = now;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_node_message(&mut self, env: wire::Envelope, now: Instant) {
        let mine = env.node == self.node;
        let fx = &mut self.effects;
        match env.message {
            Message::Deliver { to, payload } => {
                if !mine {
                    let frame = encode_shared_text(&payload);
                    let shard = home_shard(to, self.shards);
                    self.send(shard, ShardMsg::FromCluster { to, frame });
                }
            }
            Message::Broadcast { payload } => {
                if !mine {
                    let frame = encode_shared_text(&payload);
                    for shard in 0..self.shards {
                        self.send(
                            shard,
                            ShardMsg::Broadcast {
                                frame: frame.clone(),
                            },
                        );
                    }
                }
            }
            Message::Presence {
                incarnation,
                seq,
                changes,
            } => self
                .members
                .on_presence(&env.node, incarnation, seq, changes, now, fx),
            Message::Snapshot {
                incarnation,
                seq,
                users,
            } => self
                .members
                .on_snapshot(&env.node, incarnation, seq, users, now, fx),
            Message::Heartbeat {
                incarnation,
                seq,
                interval_ms,
            } => {
                if mine && incarnation == self.incarnation {
                    if let Some(link) = self.link.as_mut() {
                        link.last_self_heard = now;
                    }
                    let rtt = now.duration_since(self.last_heartbeat_sent);
                    self.metrics
                        .heartbeat_rtt_us
                        .store(rtt.as_micros() as u64, Ordering::Relaxed);
                } else {
                    self.members
                        .on_heartbeat(&env.node, incarnation, seq, interval_ms, now, fx);
                }
            }
            Message::SyncRequest { target } => {
                if !mine && (target.is_empty() || *target == *self.node) {
                    self.snapshot_due = true;
                }
            }
            Message::Bye { incarnation } => {
                if !mine {
                    self.members.on_bye(&env.node, incarnation, fx);
                }
            }
        }
    }

    /// Sends the effects of membership changes: presence per home shard, sync requests.
    fn route_effects(&mut self) {
        let fx = std::mem::take(&mut self.effects);
        for id in &fx.dead {
            tracing::warn!(node = %id, "cluster: node declared dead (missed heartbeats)");
            self.metrics
                .nodes_declared_dead
                .fetch_add(1, Ordering::Relaxed);
        }
        if !fx.sync_requests.is_empty() && self.is_up() {
            for id in &fx.sync_requests {
                self.msg.clear();
                wire::write_sync_request(&mut self.msg, &self.node, id);
                self.publish_msg(None, Expect::Ok);
                self.metrics.sync_requests.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (user, node, change) in fx.presence {
            let shard = home_shard(user, self.shards);
            if let Some(list) = self.to_shards.get_mut(shard) {
                list.push((user, node, change));
            }
        }
        for shard in 0..self.shards {
            if self.to_shards[shard].is_empty() {
                continue;
            }
            let changes = std::mem::take(&mut self.to_shards[shard]);
            self.send(shard, ShardMsg::RemotePresence { changes });
        }
    }

    // ------------------------------------------------------------------ timers

    /// Declares silent nodes dead and checks that this node still hears itself.
    fn check_liveness(&mut self, now: Instant) {
        let hb = self.config.heartbeat;
        self.next_check = now + hb / CHECKS_PER_HEARTBEAT;
        self.members.expire(now, &mut self.effects);
        if let Some(link) = &self.link {
            let silent = now.duration_since(link.last_self_heard);
            if link.subscribed_all && silent >= hb * LINK_SILENT_HEARTBEATS {
                self.link_broken(now, "own heartbeat not heard back (link stalled)");
            } else if !link.subscribed_all
                && now.duration_since(link.established) >= hb * LINK_SILENT_HEARTBEATS
            {
                self.link_broken(now, "subscription not confirmed");
            }
        }
    }

    fn heartbeat(&mut self, now: Instant) {
        let hb = self.config.heartbeat;
        self.next_heartbeat = now + hb;
        if !self.is_up() {
            return;
        }
        let interval_ms = hb.as_millis().min(u128::from(u32::MAX)) as u32;
        self.msg.clear();
        wire::write_heartbeat(
            &mut self.msg,
            &self.node,
            self.incarnation,
            self.seq,
            interval_ms,
        );
        self.publish_msg(None, Expect::Ok);
        self.last_heartbeat_sent = now;
        // A key per live node with a TTL of three heartbeats, for operators (`SCAN cws:node:*`).
        if let Some(link) = self.link.as_mut() {
            let key = format!("cws:node:{}", self.node);
            let ttl = (hb * LINK_SILENT_HEARTBEATS).as_millis().max(1).to_string();
            let value = self.incarnation.to_string();
            resp::write_command(
                &mut link.cmd.out,
                &[
                    b"SET",
                    key.as_bytes(),
                    value.as_bytes(),
                    b"PX",
                    ttl.as_bytes(),
                ],
            );
            link.expect.push_back(Expect::Ok);
        }
    }

    fn connect(&mut self, now: Instant) {
        let addr = match self.addr {
            Some(a) => a,
            None => match resolve(&self.config.redis) {
                Ok(a) => {
                    self.addr = Some(a);
                    a
                }
                Err(e) => {
                    self.retry_later(now, &format!("cannot resolve Redis address: {e}"));
                    return;
                }
            },
        };
        let conns = RedisConn::connect(addr, &self.poll, CMD_TOKEN)
            .and_then(|cmd| Ok((cmd, RedisConn::connect(addr, &self.poll, SUB_TOKEN)?)));
        let (mut cmd, mut sub) = match conns {
            Ok(c) => c,
            Err(e) => {
                // A failed connect may have registered the first socket; drop it cleanly.
                self.retry_later(now, &format!("cannot connect to Redis at {addr}: {e}"));
                return;
            }
        };
        self.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
        let mut expect = VecDeque::new();
        let mut sub_skip = 0;
        let ep = &self.config.redis;
        if let Some(password) = &ep.password {
            for (conn, is_sub) in [(&mut cmd, false), (&mut sub, true)] {
                match &ep.username {
                    Some(user) => resp::write_command(
                        &mut conn.out,
                        &[b"AUTH", user.as_bytes(), password.as_bytes()],
                    ),
                    None => resp::write_command(&mut conn.out, &[b"AUTH", password.as_bytes()]),
                }
                if is_sub {
                    sub_skip += 1;
                } else {
                    expect.push_back(Expect::Ok);
                }
            }
        }
        if ep.db != 0 {
            resp::write_command(&mut cmd.out, &[b"SELECT", ep.db.to_string().as_bytes()]);
            expect.push_back(Expect::Ok);
        }
        resp::write_command(&mut sub.out, &[b"SSUBSCRIBE", ALL_CHANNEL]);
        self.link = Some(Link {
            cmd,
            sub,
            expect,
            sub_skip,
            subscribed_all: false,
            subscribed: HashSet::new(),
            last_self_heard: now,
            established: now,
        });
        tracing::info!(%addr, "cluster: connected to Redis, subscribing");
    }

    fn retry_later(&mut self, now: Instant, why: &str) {
        tracing::warn!(retry_in = ?self.backoff, "cluster: {why}");
        self.reconnect_at = now + self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// Tears the link down: pending P2P sends are answered 503 (at-most-once), health goes
    /// 503, and a reconnect is scheduled.
    fn link_broken(&mut self, now: Instant, why: &str) {
        let Some(mut link) = self.link.take() else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut link.cmd.stream);
        let _ = self.poll.registry().deregister(&mut link.sub.stream);
        let was_up = link.subscribed_all;
        for expect in link.expect.drain(..) {
            if let Expect::Publish(Some(reply)) = expect {
                self.answer_unavailable(reply);
            }
        }
        self.set_health(false);
        if was_up {
            self.backoff = BACKOFF_MIN;
        }
        tracing::error!("cluster: Redis link lost: {why}");
        self.retry_later(now, "reconnecting");
    }

    fn flush_link(&mut self) -> io::Result<()> {
        let Some(link) = self.link.as_mut() else {
            return Ok(());
        };
        if link.cmd.unsent() > 0 {
            self.metrics.publish_batches.fetch_add(1, Ordering::Relaxed);
        }
        link.cmd.flush()?;
        link.sub.flush()
    }

    /// On stop: tell the others this node's users are gone (best effort, bounded wait).
    fn say_goodbye(&mut self) {
        if !self.is_up() {
            return;
        }
        self.msg.clear();
        wire::write_bye(&mut self.msg, &self.node, self.incarnation);
        self.publish_msg(None, Expect::Ok);
        let deadline = Instant::now() + Duration::from_millis(500);
        while let Some(link) = self.link.as_mut() {
            if link.cmd.flush().is_err() || link.cmd.unsent() == 0 || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    // ------------------------------------------------------------------ to the shards

    fn answer_unavailable(&mut self, reply: Reply) {
        self.metrics.unavailable.fetch_add(1, Ordering::Relaxed);
        let shard = reply.shard;
        self.send(shard, reply.answer(Outcome::Unavailable));
    }

    /// Pushes to a shard; a full ring keeps the message in order in the backlog.
    fn send(&mut self, shard: usize, msg: ShardMsg) {
        if self.backlog.iter().any(|(d, _)| *d == shard) {
            self.backlog.push_back((shard, msg));
            return;
        }
        if let Err(Cross::App(msg)) = self.links.push(shard, Cross::App(msg)) {
            self.backlog.push_back((shard, msg));
        }
    }

    fn retry_backlog(&mut self) {
        if self.backlog.is_empty() {
            return;
        }
        let mut rest = VecDeque::new();
        let mut blocked = vec![false; self.shards];
        while let Some((shard, msg)) = self.backlog.pop_front() {
            if blocked.get(shard).copied().unwrap_or(true) {
                rest.push_back((shard, msg));
                continue;
            }
            if let Err(Cross::App(msg)) = self.links.push(shard, Cross::App(msg)) {
                blocked[shard] = true;
                rest.push_back((shard, msg));
            }
        }
        self.backlog = rest;
    }
}

/// `SSUBSCRIBE`/`SUNSUBSCRIBE` with one channel per user.
fn write_channels_command(out: &mut Vec<u8>, verb: &[u8], users: &[u64]) {
    resp::write_array_header(out, users.len() + 1);
    resp::write_bulk(out, verb);
    let mut ch = Vec::with_capacity(32);
    for &u in users {
        ch.clear();
        user_channel(&mut ch, u);
        resp::write_bulk(out, &ch);
    }
}

/// The JSON payload of a server text frame built by [`encode_shared_text`].
fn frame_payload(frame: &Bytes) -> &[u8] {
    let header = match frame.get(1).map(|b| b & 0x7f) {
        Some(126) => 4,
        Some(127) => 10,
        Some(_) => 2,
        None => return &[],
    };
    frame.get(header..).unwrap_or(&[])
}

fn resolve(ep: &RedisEndpoint) -> io::Result<SocketAddr> {
    (ep.host.as_str(), ep.port)
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::other("no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_payload_strips_each_header_size() {
        for len in [0usize, 125, 126, 65_535, 65_536] {
            let payload = vec![b'x'; len];
            let frame = encode_shared_text(&payload);
            assert_eq!(frame_payload(&frame), &payload[..], "len {len}");
        }
    }

    #[test]
    fn subscription_commands_name_each_user_channel() {
        let mut out = Vec::new();
        write_channels_command(&mut out, b"SSUBSCRIBE", &[1, 22]);
        assert_eq!(
            out,
            b"*3\r\n$10\r\nSSUBSCRIBE\r\n$7\r\ncws:u:1\r\n$8\r\ncws:u:22\r\n".to_vec()
        );
    }
}
