//! The built-in gateway (spec sections 3–5) as an [`App`] on the shard runtime.
//!
//! Flow of one client message:
//!
//! ```text
//! text frame (in place) → EnvelopeParser (simd-json tape) → rate limit → Handler::on_message
//!   → data_request      → P2P: local delivery, or one hop to the target's home shard
//!                          broadcast / notification multicast: frame encoded once, shared
//!   → presence_update   → record, coalesce, announce (other shards keep a replica)
//!   → generic_request   → whoami / ping / get_presence / refresh_token, else Handler::on_request (501)
//!   → client_ack / generic_response → complete a pending server request
//! ```

mod dense_map;
pub mod handler;
pub mod inline_str;
pub mod presence;
pub mod registry;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use slab::Slab;
use smallvec::SmallVec;

use crate::auth::{self, OriginPolicy, UserId, Verifier};
use crate::cluster::wire::Change;
use crate::cluster::ClusterLink;
use crate::config::Config;
use crate::metrics::Metric;
use crate::proto::close::CloseCode;
use crate::proto::envelope::{
    self, ClientEnvelope, EnvelopeLimits, EnvelopeParser, IdGenerator, MessageType, PresenceEntry,
    PresenceEvent,
};
use crate::proto::handshake::UpgradeRequest;
use crate::ratelimit::{Epoch, RateLimit};
use crate::shard::{encode_shared_text, Accept, App, ConnKey, Core, Reject};

pub use handler::{AckOutcome, BuiltIn, ConnRef, Ctx, Flow, Handler, ResponseOutcome};
use inline_str::InlineStr;
use presence::{PresenceBook, PresenceRecord, ReplicaRecord};
use registry::{home_shard, LocalUser, Registry};

/// App timer kinds (`Core::schedule` data).
const TIMER_PRESENCE: u32 = 2;
const TIMER_PENDING: u32 = 3;

/// The token's `name` and `roles` claims, from the upgrade to `on_open` (which moves them
/// into the registry): the gateway's `App::Opening`.
pub struct NameAndRoles {
    name: Box<str>,
    roles: Vec<Box<str>>,
}

/// Per-connection state. Small: it lives in every connection slot.
#[derive(Default)]
pub struct Session {
    /// 0 while the handshake is running.
    user: u64,
    /// Token `exp`, Unix seconds, saturated at `u32::MAX` (year 2106).
    exp: u32,
    /// Malformed messages, decayed by valid ones (close 1008 past the threshold).
    garbage: u16,
    /// Rate-limited messages in a row (close 1008 past the threshold).
    rate_strikes: u16,
}

/// Token `exp` as the session keeps it (see [`Session::exp`]).
fn session_exp(exp: u64) -> u32 {
    u32::try_from(exp).unwrap_or(u32::MAX)
}

/// Messages between the gateway's shards.
pub enum ShardMsg {
    /// Deliver a frame to every connection of `to`; answer the sender's shard when
    /// `reply` is set (ack) or when nobody received it (404).
    Deliver {
        to: u64,
        frame: Bytes,
        reply: Option<Reply>,
    },
    /// How a P2P request of a connection on the receiving shard ended (ack, 404 or 503).
    Answer {
        conn: ConnKey,
        pid: Option<Box<str>>,
        outcome: Outcome,
    },
    /// Deliver to every open connection on the shard.
    Broadcast { frame: Bytes },
    /// Deliver to the connections of each listed user homed on the shard.
    Multicast { users: Vec<u64>, frame: Bytes },
    /// Presence changes of one loop turn, in order (replica updates; `None` = offline),
    /// and the concatenated `presence_event` frames for every open connection.
    Presence {
        updates: Vec<(u64, Option<Box<PresenceRecord>>)>,
        frames: Option<Bytes>,
    },
    /// To the cluster bridge: publish `frame` on `to`'s channel, then answer `reply`.
    ClusterPublish {
        to: u64,
        frame: Bytes,
        reply: Option<Reply>,
    },
    /// To the cluster bridge: a broadcast that started on this node.
    ClusterBroadcast { frame: Bytes },
    /// To the cluster bridge: presence changes of users homed on the sending shard.
    ClusterPresence { changes: Vec<(u64, Change)> },
    /// From the bridge: a frame from another node for `to`'s connections here.
    FromCluster { to: u64, frame: Bytes },
    /// From the bridge: presence changes of users on other nodes `(user, node, change)`.
    RemotePresence { changes: Vec<(u64, u32, Change)> },
}

/// Where a P2P answer goes: the sender's connection on its shard.
pub struct Reply {
    pub shard: usize,
    pub conn: ConnKey,
    pub pid: Option<Box<str>>,
}

impl Reply {
    /// The message that tells the sender's shard how its request ended.
    pub fn answer(self, outcome: Outcome) -> ShardMsg {
        ShardMsg::Answer {
            conn: self.conn,
            pid: self.pid,
            outcome,
        }
    }
}

/// How a delivery with a [`Reply`] ended.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The target's connections have it: `server_ack` if the request had a pid.
    Delivered,
    /// The target is connected nowhere: `error_notification` 404.
    Offline,
    /// The target may be on another node and the cluster link is down: 503.
    Unavailable,
}

impl Outcome {
    /// The outcome on the target's home shard, from how many of its connections took the
    /// event there.
    fn of_local(queued: usize) -> Self {
        if queued == 0 {
            Outcome::Offline
        } else {
            Outcome::Delivered
        }
    }
}

/// Other nodes holding a user (cluster mode), with the user's latest record from them.
struct RemoteUser {
    nodes: SmallVec<[u32; 2]>,
    record: PresenceRecord,
}

/// A server message waiting for the client's `client_ack` / `generic_response`.
pub(crate) enum Pending<H: Handler> {
    Ack(handler::AckCallback<H>),
    Response(handler::ResponseCallback<H>),
}

struct PendingEntry<H: Handler> {
    conn: ConnKey,
    pid: Box<str>,
    what: Pending<H>,
}

/// Per-shard gateway state (everything but the handler, so a `Ctx` can borrow it while the
/// handler is borrowed separately).
pub struct GatewayState<H: Handler> {
    verifier: Arc<Verifier>,
    origins: Arc<OriginPolicy>,
    allow_query_token: bool,
    leeway_s: u64,
    parser: EnvelopeParser,
    ids: IdGenerator,
    users: Registry,
    book: PresenceBook,
    epoch: Epoch,
    /// Serialization buffer reused for every outgoing envelope.
    scratch: Vec<u8>,
    targets: Vec<u64>,
    /// Coalesced presence updates, due in insertion order (the interval is constant).
    presence_due: VecDeque<(Instant, u64)>,
    /// This turn's announcements to everyone (concatenated frames) and replica updates.
    presence_frames: Vec<u8>,
    presence_updates: Vec<(u64, Option<Box<PresenceRecord>>)>,
    pending: Slab<PendingEntry<H>>,
    pending_by_pid: HashMap<Box<str>, usize>,
    pending_gens: Vec<u32>,
    pending_generation: u32,
    serve_demo: bool,
    /// Cluster mode: the bridge, users homed here that other nodes hold, and this turn's
    /// presence changes for the bridge.
    cluster: Option<ClusterLink>,
    remote: HashMap<u64, RemoteUser>,
    cluster_changes: Vec<(u64, Change)>,
}

/// The gateway app on one shard: the state plus the application's handler.
pub struct Gateway<H: Handler = BuiltIn> {
    state: GatewayState<H>,
    handler: H,
}

/// Builds one [`Gateway`] per shard from a validated config (shared key material).
pub struct GatewayFactory<F = fn(usize) -> BuiltIn> {
    verifier: Arc<Verifier>,
    origins: Arc<OriginPolicy>,
    allow_query_token: bool,
    leeway_s: u64,
    limits: EnvelopeLimits,
    nonce: u64,
    serve_demo: bool,
    cluster: Option<ClusterLink>,
    make_handler: F,
}

impl GatewayFactory {
    /// The built-in gateway.
    pub fn new(config: &Config) -> Result<Self, String> {
        Self::with_handler(config, |_| BuiltIn)
    }
}

impl<F> GatewayFactory<F> {
    /// A gateway running `make_handler(shard)` as its application handler.
    pub fn with_handler<H: Handler>(config: &Config, make_handler: F) -> Result<Self, String>
    where
        F: Fn(usize) -> H,
    {
        let auth = config.auth.as_ref().ok_or("the gateway needs a JWT key")?;
        let verifier = Verifier::new(auth).map_err(|e| e.to_string())?;
        let nonce = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ ((std::process::id() as u64) << 32);
        Ok(GatewayFactory {
            verifier: Arc::new(verifier),
            origins: Arc::new(OriginPolicy::new(&auth.allowed_origins)),
            allow_query_token: auth.allow_query_token,
            leeway_s: auth.leeway.as_secs(),
            limits: EnvelopeLimits {
                max_depth: config.max_json_depth,
                ..EnvelopeLimits::default()
            },
            nonce,
            serve_demo: config.dev,
            cluster: None,
            make_handler,
        })
    }

    /// Cluster mode: shards forward to (and hear from) the bridge behind `link`.
    pub fn with_cluster(mut self, link: ClusterLink) -> Self {
        self.cluster = Some(link);
        self
    }

    /// The gateway for one shard (called on that shard's thread).
    pub fn build<H: Handler>(&self, shard: usize) -> Gateway<H>
    where
        F: Fn(usize) -> H,
    {
        Gateway {
            state: GatewayState {
                verifier: self.verifier.clone(),
                origins: self.origins.clone(),
                allow_query_token: self.allow_query_token,
                leeway_s: self.leeway_s,
                parser: EnvelopeParser::new(self.limits),
                ids: IdGenerator::new(shard as u16, self.nonce),
                users: Registry::default(),
                book: PresenceBook::default(),
                epoch: Epoch::new(Instant::now()),
                scratch: Vec::with_capacity(4096),
                targets: Vec::new(),
                presence_due: VecDeque::new(),
                presence_frames: Vec::new(),
                presence_updates: Vec::new(),
                pending: Slab::new(),
                pending_by_pid: HashMap::new(),
                pending_gens: Vec::new(),
                pending_generation: 0,
                serve_demo: self.serve_demo,
                cluster: self.cluster.clone(),
                remote: HashMap::new(),
                cluster_changes: Vec::new(),
            },
            handler: (self.make_handler)(shard),
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn roles_allow(required: &[String], roles: &[Box<str>]) -> bool {
    required.is_empty()
        || required
            .iter()
            .any(|r| roles.iter().any(|have| **have == **r))
}

impl<H: Handler> App for Gateway<H> {
    type Session = Session;
    type Msg = ShardMsg;
    type Opening = NameAndRoles;

    fn on_upgrade(
        &mut self,
        core: &mut Core<Self>,
        req: &UpgradeRequest<'_>,
    ) -> Result<Accept<Session, NameAndRoles>, Reject> {
        let st = &mut self.state;
        if !st.origins.allows(req.origin) {
            return Err(Reject {
                status: 403,
                message: "origin not allowed".into(),
            });
        }
        let Some((_carrier, token)) = auth::extract_token(
            req.authorization,
            req.protocols(),
            req.cookie,
            req.query,
            st.allow_query_token,
        ) else {
            return Err(Reject {
                status: 401,
                message: "missing token".into(),
            });
        };
        let identity = st.verifier.verify(&token).map_err(|e| Reject {
            status: 401,
            message: format!("invalid token: {}", e.label()),
        })?;
        self.handler.authenticate(&identity)?;
        let subprotocol = auth::offered_customws_v1(req.protocols()).then_some(auth::SUBPROTOCOL);
        let home = home_shard(identity.user_id.0, core.shards());
        Ok(Accept {
            session: Session {
                user: identity.user_id.0,
                exp: session_exp(identity.exp),
                garbage: 0,
                rate_strikes: 0,
            },
            opening: NameAndRoles {
                name: identity.name,
                roles: identity.roles,
            },
            subprotocol,
            home_shard: Some(home),
        })
    }

    fn on_open(&mut self, core: &mut Core<Self>, key: ConnKey, opening: NameAndRoles) {
        let now = core.now();
        let Some(session) = core.session(key) else {
            return;
        };
        let user = session.user;
        let NameAndRoles { name, roles } = opening;
        let st = &mut self.state;
        let now_ms = st.epoch.millis(now);
        let max = core.config().max_connections_per_user.get();
        let first = match st.users.get_mut(UserId(user)) {
            Some(u) => {
                u.set_name(name);
                // Over the per-user limit: the oldest connection is replaced (4000).
                while u.conns().len() >= max {
                    let Some(oldest) = u.conns_mut().remove_oldest() else {
                        break;
                    };
                    core.metrics().inc(Metric::CloseReplaced);
                    core.close(oldest, CloseCode::REPLACED, "replaced");
                }
                u.conns_mut().push(key);
                false
            }
            None => {
                let cfg = core.config();
                let bucket = RateLimit::new(cfg.rate_limit, cfg.rate_burst).full(now_ms);
                st.users.insert(
                    UserId(user),
                    LocalUser::new(key, name, bucket, core.unix_ms()),
                );
                core.metrics().set(Metric::Users, st.users.len() as u64);
                true
            }
        };
        st.users.set_roles(UserId(user), roles);
        if first {
            if st.remote.contains_key(&user) {
                // Already online on another node: no second online event, but the other
                // nodes learn that this one holds the user too.
                if let Some(record) = st.users.get(UserId(user)).map(local_record) {
                    st.cluster_changes.push((user, Change::Online(record)));
                }
            } else {
                announce_presence(core, st, user, None, now, true);
            }
        }
        let mut ctx = Ctx {
            core,
            state: &mut self.state,
        };
        self.handler.on_connect(
            &mut ctx,
            ConnRef {
                key,
                user: UserId(user),
            },
        );
    }

    fn on_text(&mut self, core: &mut Core<Self>, key: ConnKey, payload: &mut [u8]) {
        let Some(session) = core.session(key) else {
            return;
        };
        let user = session.user;
        let st = &mut self.state;
        let parsed = st.parser.parse(payload);
        let msg = match parsed {
            Ok(m) => m,
            Err(e) => {
                core.metrics().inc(Metric::MsgInOther);
                send_error(core, st, key, e.original_pid.as_deref(), e.code, e.message);
                count_garbage(core, key);
                return;
            }
        };
        core.metrics().inc(match msg.kind {
            MessageType::DataRequest => Metric::MsgInData,
            MessageType::PresenceUpdate => Metric::MsgInPresence,
            MessageType::ClientAck => Metric::MsgInClientAck,
            MessageType::GenericRequest => Metric::MsgInGenericRequest,
            MessageType::GenericResponse => Metric::MsgInGenericResponse,
            MessageType::Unknown(_) => Metric::MsgInOther,
        });
        // Per-user rate limit (all of the user's connections share the bucket: they all
        // live on this shard).
        let now_ms = st.epoch.millis(core.now());
        let limit = RateLimit::new(core.config().rate_limit, core.config().rate_burst);
        let allowed = st
            .users
            .get_mut(UserId(user))
            .is_none_or(|u| u.bucket.try_take(&limit, now_ms));
        if !allowed {
            send_error(core, st, key, msg.pid, 429, "rate limit exceeded");
            let threshold = core.config().rate_abuse_threshold;
            if let Some(s) = core.session_mut(key) {
                s.rate_strikes = s.rate_strikes.saturating_add(1);
                if s.rate_strikes > threshold {
                    core.metrics().inc(Metric::CloseRateLimit);
                    core.close(key, CloseCode::POLICY_VIOLATION, "rate limit abuse");
                }
            }
            return;
        }
        if let Some(s) = core.session_mut(key) {
            s.rate_strikes = 0;
            s.garbage = s.garbage.saturating_sub(1);
        }
        let conn = ConnRef {
            key,
            user: UserId(user),
        };
        {
            let mut ctx = Ctx {
                core: &mut *core,
                state: &mut *st,
            };
            if self.handler.on_message(&mut ctx, conn, &msg) == Flow::Handled {
                return;
            }
        }
        match msg.kind {
            MessageType::DataRequest => handle_data_request(core, st, key, user, &msg),
            MessageType::PresenceUpdate => handle_presence_update(core, st, key, user, &msg),
            MessageType::GenericRequest => {
                let Some(pid) = msg.pid else {
                    send_error(core, st, key, None, 400, "generic_request requires a pid");
                    count_garbage(core, key);
                    return;
                };
                let action = msg.action();
                let action = action.as_deref().unwrap_or("");
                let done = handle_builtin_request(core, st, key, user, pid, action, &msg);
                if !done {
                    let mut ctx = Ctx {
                        core: &mut *core,
                        state: &mut *st,
                    };
                    if self.handler.on_request(&mut ctx, conn, pid, action, &msg) == Flow::Continue
                    {
                        send_error(core, st, key, Some(pid), 501, "unsupported action");
                    }
                }
            }
            MessageType::ClientAck => {
                if let Some(acked) = msg.acknowledged_pid() {
                    let acked = &*acked;
                    let status = msg.status().map(String::from);
                    let error = msg.payload_str("error").map(String::from);
                    complete_pending(core, st, &mut self.handler, key, acked, |what| match what {
                        Pending::Ack(cb) => {
                            Completion::Ack(cb, AckOutcome::Acked { status, error })
                        }
                        Pending::Response(cb) => {
                            Completion::Response(cb, ResponseOutcome::TimedOut)
                        }
                    });
                } else {
                    send_error(
                        core,
                        st,
                        key,
                        msg.pid,
                        422,
                        "client_ack requires payload.acknowledgedPid",
                    );
                }
            }
            MessageType::GenericResponse => {
                if let Some(pid) = msg.pid {
                    let value = payload_to_serde(&msg);
                    complete_pending(core, st, &mut self.handler, key, pid, |what| match what {
                        Pending::Response(cb) => {
                            Completion::Response(cb, ResponseOutcome::Response(value))
                        }
                        Pending::Ack(cb) => Completion::Ack(cb, AckOutcome::TimedOut),
                    });
                } else {
                    send_error(core, st, key, None, 400, "generic_response requires a pid");
                }
            }
            MessageType::Unknown(_) => {
                send_error(core, st, key, msg.pid, 400, "unknown message type");
                count_garbage(core, key);
            }
        }
    }

    fn on_closed(&mut self, core: &mut Core<Self>, key: ConnKey, session: Session) {
        if session.user == 0 {
            return;
        }
        let user = UserId(session.user);
        let st = &mut self.state;
        let mut last = false;
        if let Some(u) = st.users.get_mut(user) {
            u.conns_mut().remove(key);
            last = u.conns().is_empty();
        }
        if last {
            // The last connection closed: the user goes offline everywhere, at once (an
            // offline event is never coalesced away), unless another node still holds it.
            let gone = st.users.remove(user);
            core.metrics().set(Metric::Users, st.users.len() as u64);
            if st.cluster.is_some() {
                st.cluster_changes.push((user.0, Change::Offline));
            }
            match st.remote.get(&user.0).map(|r| r.record.clone()) {
                Some(record) => announce_record(core, st, user.0, record, false),
                None => announce_offline(core, st, user.0, gone.as_ref()),
            }
        }
        let mut ctx = Ctx {
            core,
            state: &mut self.state,
        };
        self.handler.on_disconnect(&mut ctx, ConnRef { key, user });
    }

    fn on_shard_msg(&mut self, core: &mut Core<Self>, from: usize, msg: ShardMsg) {
        let st = &mut self.state;
        match msg {
            ShardMsg::Deliver { to, frame, reply } => {
                debug_assert!(reply.as_ref().is_none_or(|r| r.shard == from));
                deliver_to_user(core, st, to, &frame, None, reply);
            }
            ShardMsg::FromCluster { to, frame } => {
                deliver_local(core, st, to, Event::Frame(&frame), None);
            }
            ShardMsg::RemotePresence { changes } => {
                for (user, node, change) in changes {
                    apply_remote_presence(core, st, user, node, change);
                }
            }
            ShardMsg::ClusterPublish { .. }
            | ShardMsg::ClusterBroadcast { .. }
            | ShardMsg::ClusterPresence { .. } => {}
            ShardMsg::Answer { conn, pid, outcome } => {
                answer_here(core, st, conn, pid.as_deref(), outcome)
            }
            ShardMsg::Broadcast { frame } => {
                let n = deliver_all(core, &frame, None);
                core.metrics().add(Metric::MsgOutDataEvent, n);
            }
            ShardMsg::Multicast { users, frame } => {
                for u in users {
                    deliver_to_user(core, st, u, &frame, None, None);
                }
            }
            ShardMsg::Presence { updates, frames } => {
                for (user, record) in updates {
                    match record {
                        Some(r) => st.book.upsert(user, *r),
                        None => st.book.remove(user),
                    }
                }
                if let Some(frames) = frames {
                    let n = deliver_all(core, &frames, None);
                    core.metrics().add(Metric::MsgOutPresence, n);
                }
            }
        }
    }

    /// Token expiry on an open connection, at exp + leeway (the same tolerance as at the
    /// upgrade); the keepalive sweep asks once per period (≤ 1 s), so an expiry costs no
    /// timer and no list entry per connection.
    fn is_lapsed(&self, session: &Session, unix_s: u64) -> bool {
        unix_s >= u64::from(session.exp).saturating_add(self.state.leeway_s)
    }

    fn on_lapsed(&mut self, core: &mut Core<Self>, key: ConnKey) {
        send_error(core, &mut self.state, key, None, 401, "token expired");
        core.metrics().inc(Metric::CloseExpired);
        core.close(key, CloseCode::TOKEN_EXPIRED, "token expired");
    }

    fn on_timer(&mut self, core: &mut Core<Self>, key: ConnKey, data: u32) {
        match data {
            TIMER_PRESENCE => flush_presence(core, &mut self.state),
            TIMER_PENDING => {
                let slot = key.index();
                let st = &mut self.state;
                let live = st
                    .pending
                    .get(slot)
                    .is_some_and(|_| key.generation() == pending_gen(st, slot));
                if live {
                    let entry = st.pending.remove(slot);
                    st.pending_gens[slot] = 0;
                    st.pending_by_pid.remove(&entry.pid);
                    let mut ctx = Ctx {
                        core,
                        state: &mut self.state,
                    };
                    match entry.what {
                        Pending::Ack(cb) => cb(&mut self.handler, &mut ctx, AckOutcome::TimedOut),
                        Pending::Response(cb) => {
                            cb(&mut self.handler, &mut ctx, ResponseOutcome::TimedOut)
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn on_turn_end(&mut self, core: &mut Core<Self>) {
        if !self.state.presence_due.is_empty() {
            flush_presence(core, &mut self.state);
        }
        flush_presence_batch(core, &mut self.state);
        let st = &mut self.state;
        if let Some(link) = &st.cluster {
            if !st.cluster_changes.is_empty() {
                let changes = std::mem::take(&mut st.cluster_changes);
                core.send_to_shard(link.endpoint, ShardMsg::ClusterPresence { changes });
            }
        }
    }

    fn wants_turn(&self) -> bool {
        !self.state.presence_updates.is_empty()
            || !self.state.presence_frames.is_empty()
            || !self.state.cluster_changes.is_empty()
    }

    /// The demo page, in `--dev` mode only (it is a developer tool, not a product page).
    fn index_page(&self) -> Option<(&'static str, &'static [u8])> {
        self.state
            .serve_demo
            .then_some((crate::demo::INDEX_CONTENT_TYPE, crate::demo::INDEX_HTML))
    }
}

fn count_garbage<H: Handler>(core: &mut Core<Gateway<H>>, key: ConnKey) {
    let threshold = core.config().garbage_threshold;
    if let Some(s) = core.session_mut(key) {
        s.garbage = s.garbage.saturating_add(1);
        if s.garbage > threshold {
            core.metrics().inc(Metric::CloseGarbage);
            core.close(
                key,
                CloseCode::POLICY_VIOLATION,
                "too many malformed messages",
            );
        }
    }
}

pub(crate) fn send_error<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    key: ConnKey,
    original_pid: Option<&str>,
    code: u16,
    message: &str,
) {
    st.scratch.clear();
    envelope::write_error_notification(&mut st.scratch, original_pid, code, message);
    if core.send_text(key, &st.scratch) {
        core.metrics().inc(Metric::MsgOutError);
        core.metrics().inc(Metric::for_error_code(code));
    }
}

pub(crate) fn send_ack<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    key: ConnKey,
    pid: &str,
) {
    st.scratch.clear();
    envelope::write_server_ack(&mut st.scratch, pid);
    if core.send_text(key, &st.scratch) {
        core.metrics().inc(Metric::MsgOutServerAck);
    }
}

/// A server event on its way to the connections of one user.
#[derive(Clone, Copy)]
enum Event<'a> {
    /// Serialized JSON, framed straight into each connection's output buffer: no frame is
    /// allocated for a delivery that never leaves the shard.
    Json(&'a [u8]),
    /// A frame encoded once for many recipients or for another shard.
    Frame(&'a Bytes),
}

/// Queues `event` on every connection of `user` on this shard (except `exclude`).
fn deliver_local<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &GatewayState<H>,
    user: u64,
    event: Event<'_>,
    exclude: Option<ConnKey>,
) -> usize {
    let mut n = 0;
    for &k in st.users.conns(user) {
        if Some(k) == exclude {
            continue;
        }
        let queued = match event {
            Event::Json(json) => core.send_text(k, json),
            Event::Frame(frame) => core.send_shared(k, frame),
        };
        if queued {
            n += 1;
        }
    }
    core.metrics().add(Metric::Deliveries, n as u64);
    core.metrics().add(Metric::MsgOutDataEvent, n as u64);
    n
}

/// Delivers `frame` to `user`, on the user's home shard: to its connections here and, in
/// cluster mode, through the bridge to other nodes when the user is not only local (the
/// bridge then answers `reply` from the receiver count Redis reports).
fn deliver_to_user<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    user: u64,
    frame: &Bytes,
    exclude: Option<ConnKey>,
    mut reply: Option<Reply>,
) {
    let n = deliver_local(core, st, user, Event::Frame(frame), exclude);
    if let Some(link) = &st.cluster {
        if n == 0 || st.remote.contains_key(&user) {
            if link.is_up() {
                let endpoint = link.endpoint;
                let reply = if n == 0 { reply.take() } else { None };
                core.send_to_shard(
                    endpoint,
                    ShardMsg::ClusterPublish {
                        to: user,
                        frame: frame.clone(),
                        reply,
                    },
                );
            } else if n == 0 {
                // The user may be on another node and that cannot be checked: say so.
                if let Some(reply) = reply.take() {
                    answer(core, st, reply, Outcome::Unavailable);
                }
            }
        }
    }
    if let Some(reply) = reply {
        answer(core, st, reply, Outcome::of_local(n));
    }
}

/// Answers a P2P sender: directly when it is on this shard, else through its shard.
fn answer<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    reply: Reply,
    outcome: Outcome,
) {
    if reply.shard == core.shard_id() {
        answer_here(core, st, reply.conn, reply.pid.as_deref(), outcome);
    } else if outcome != Outcome::Delivered || reply.pid.is_some() {
        core.send_to_shard(reply.shard, reply.answer(outcome));
    }
}

/// Tells a sender on this shard how its P2P request ended.
fn answer_here<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    conn: ConnKey,
    pid: Option<&str>,
    outcome: Outcome,
) {
    match outcome {
        Outcome::Delivered => {
            if let Some(pid) = pid {
                send_ack(core, st, conn, pid);
            }
        }
        Outcome::Offline => {
            core.metrics().inc(Metric::OfflineTargets);
            send_error(core, st, conn, pid, 404, "target user is not connected");
        }
        Outcome::Unavailable => send_error(
            core,
            st,
            conn,
            pid,
            503,
            "cluster link down: the target may be on another node",
        ),
    }
}

/// Queues `frame` on every open connection of this shard except `exclude`.
fn deliver_all<H: Handler>(
    core: &mut Core<Gateway<H>>,
    frame: &Bytes,
    exclude: Option<ConnKey>,
) -> u64 {
    let n = core.send_shared_to_all(frame, exclude);
    core.metrics().add(Metric::Deliveries, n);
    n
}

/// Sends `frame` to every connection of the gateway (every node in cluster mode). Returns
/// false when the cluster link is down: then only this node's connections got it.
pub(crate) fn broadcast_frame<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    frame: Bytes,
    exclude: Option<ConnKey>,
) -> bool {
    core.metrics().inc(Metric::Broadcasts);
    let mut everywhere = true;
    if let Some(link) = &st.cluster {
        if link.is_up() {
            let endpoint = link.endpoint;
            core.send_to_shard(
                endpoint,
                ShardMsg::ClusterBroadcast {
                    frame: frame.clone(),
                },
            );
        } else {
            everywhere = false;
        }
    }
    for shard in 0..core.shards() {
        if shard != core.shard_id() {
            core.send_to_shard(
                shard,
                ShardMsg::Broadcast {
                    frame: frame.clone(),
                },
            );
        }
    }
    let n = deliver_all(core, &frame, exclude);
    core.metrics().add(Metric::MsgOutDataEvent, n);
    everywhere
}

/// Delivers `frame` to each listed user on its home shard: one message per remote shard.
pub(crate) fn route_to_users<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    users: &[u64],
    frame: Bytes,
    exclude: Option<ConnKey>,
) {
    let shards = core.shards();
    let me = core.shard_id();
    let mut remote: SmallVec<[Vec<u64>; 4]> = (0..shards).map(|_| Vec::new()).collect();
    for &u in users {
        let home = home_shard(u, shards);
        if home == me {
            deliver_to_user(core, st, u, &frame, exclude, None);
        } else {
            remote[home].push(u);
        }
    }
    for (shard, list) in remote.into_iter().enumerate() {
        if !list.is_empty() {
            core.send_to_shard(
                shard,
                ShardMsg::Multicast {
                    users: list,
                    frame: frame.clone(),
                },
            );
        }
    }
}

fn handle_data_request<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    key: ConnKey,
    user: u64,
    msg: &ClientEnvelope<'_>,
) {
    let cfg = core.config();
    let is_notification = msg.resource().as_deref() == Some("notification");
    let mut targets = std::mem::take(&mut st.targets);
    let multicast = if is_notification {
        match msg.target_users(cfg.max_notification_targets, &mut targets) {
            Ok(present) => present,
            Err(e) => {
                st.targets = targets;
                send_error(core, st, key, e.original_pid.as_deref(), e.code, e.message);
                return;
            }
        }
    } else {
        false
    };
    let required = if msg.target_user_id.is_some() || multicast {
        &cfg.p2p_roles
    } else {
        &cfg.broadcast_roles
    };
    let sender = st.users.get(UserId(user));
    let roles = sender.map_or(&[][..], |u| u.roles());
    if !roles_allow(required, roles) {
        st.targets = targets;
        send_error(
            core,
            st,
            key,
            msg.pid,
            403,
            "not allowed to send this message",
        );
        return;
    }
    // Serialize the event once: {"type":"data_event","fromUserId":..,"payload":{..server fields}}
    let message_id = st.ids.next_id();
    st.scratch.clear();
    let no_name = InlineStr::default();
    let sender_name = sender.map_or(&no_name, |u| u.name_text());
    if envelope::write_data_event(
        &mut st.scratch,
        user,
        &msg.payload(),
        sender_name,
        core.unix_ms(),
        &message_id,
    )
    .is_err()
    {
        st.targets = targets;
        send_error(core, st, key, msg.pid, 422, "payload must be a JSON object");
        return;
    }
    let shards = core.shards();
    if let Some(target) = msg.target_user_id {
        // P2P: every connection of the target, on its home shard.
        let home = home_shard(target, shards);
        if home == core.shard_id() && st.cluster.is_none() {
            // Target homed here (always, with one shard) and no other node can hold it:
            // the event goes from the serialization buffer straight into the target's
            // output buffers and the answer borrows the pid (no frame, no boxed pid).
            let json = std::mem::take(&mut st.scratch);
            let n = deliver_local(core, st, target, Event::Json(&json), None);
            st.scratch = json;
            st.targets = targets;
            answer_here(core, st, key, msg.pid, Outcome::of_local(n));
            return;
        }
        let reply = Some(Reply {
            shard: core.shard_id(),
            conn: key,
            pid: msg.pid.map(Box::from),
        });
        if home == core.shard_id() {
            let frame = encode_shared_text(&st.scratch);
            deliver_to_user(core, st, target, &frame, None, reply);
        } else {
            let frame = encode_shared_text(&st.scratch);
            core.send_to_shard(
                home,
                ShardMsg::Deliver {
                    to: target,
                    frame,
                    reply,
                },
            );
        }
    } else if multicast {
        let frame = encode_shared_text(&st.scratch);
        targets.sort_unstable();
        targets.dedup();
        route_to_users(core, st, &targets, frame, None);
        if let Some(pid) = msg.pid {
            send_ack(core, st, key, pid);
        }
    } else {
        let frame = encode_shared_text(&st.scratch);
        if !broadcast_frame(core, st, frame, Some(key)) {
            send_error(
                core,
                st,
                key,
                msg.pid,
                503,
                "cluster link down: delivered on this node only",
            );
        } else if let Some(pid) = msg.pid {
            send_ack(core, st, key, pid);
        }
    }
    st.targets = targets;
}

fn handle_presence_update<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    key: ConnKey,
    user: u64,
    msg: &ClientEnvelope<'_>,
) {
    let Some(status) = msg.status() else {
        send_error(
            core,
            st,
            key,
            msg.pid,
            422,
            "presence_update requires payload.status",
        );
        count_garbage(core, key);
        return;
    };
    let target = match msg.presence_target_user_id() {
        Ok(t) => t,
        Err(e) => {
            send_error(core, st, key, e.original_pid.as_deref(), e.code, e.message);
            return;
        }
    };
    if status.len() > 64 {
        send_error(core, st, key, msg.pid, 422, "status too long");
        return;
    }
    let context = msg.context().map(envelope::to_json_bytes);
    let now = core.now();
    let now_ms = st.epoch.millis(now).0;
    let min = core.config().presence_min_interval;
    let Some(u) = st.users.get_mut(UserId(user)) else {
        return;
    };
    let due = u
        .last_presence_ms()
        .map(|last| last.wrapping_add(min.as_millis() as u32));
    let coalesce = due.is_some_and(|d| (d.wrapping_sub(now_ms) as i32) > 0);
    if let (true, Some(new), Some(queued)) = (coalesce, target, u.pending_target()) {
        if new != queued {
            // A user has one targeted slot, and coalescing means "latest wins" for one
            // recipient, not across recipients: the update still queued for another user
            // goes out now instead of being overwritten (typing to Bob, then to Carol
            // within the interval, must reach both).
            u.clear_pending_target();
            announce_presence(core, st, user, Some(queued), now, false);
        }
    }
    let Some(u) = st.users.get_mut(UserId(user)) else {
        return;
    };
    match target {
        Some(_) => u.set_targeted(status.into(), context),
        // get_presence shows the announced status until the coalesced emission.
        None if coalesce => u.set_unannounced(status.into(), context),
        None => u.set_status(status.into(), context),
    }
    if coalesce {
        // Latest wins: the queued emission will carry whatever is current then.
        let already = u.has_pending();
        u.add_pending(target);
        if !already {
            let wait = Duration::from_millis(due.unwrap_or(now_ms).wrapping_sub(now_ms) as u64);
            st.presence_due.push_back((now + wait, user));
            core.schedule(now + wait, key, TIMER_PRESENCE);
        }
    } else {
        announce_presence(core, st, user, target, now, false);
    }
    if let Some(pid) = msg.pid {
        send_ack(core, st, key, pid);
    }
}

/// Emits the coalesced presence updates that are due.
fn flush_presence<H: Handler>(core: &mut Core<Gateway<H>>, st: &mut GatewayState<H>) {
    let now = core.now();
    while let Some(&(due, user)) = st.presence_due.front() {
        if due > now {
            break;
        }
        st.presence_due.pop_front();
        let pending = st
            .users
            .get_mut(UserId(user))
            .and_then(|u| u.take_pending());
        if let Some(pending) = pending {
            if pending.public {
                announce_presence(core, st, user, None, now, false);
            }
            if let Some(target) = pending.target {
                announce_presence(core, st, user, Some(target), now, false);
            }
        }
    }
}

/// Emits the user's current presence: to `target` only, or to everyone; every shard's
/// replica is updated either way. Announcements to everyone are batched per loop turn (see
/// [`flush_presence_batch`]), so a connection storm costs one shared write per connection
/// per turn, not one per event: without the batch, N users coming online cost N² pushes.
fn announce_presence<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    user: u64,
    target: Option<u64>,
    now: Instant,
    automatic: bool,
) {
    let now_ms = st.epoch.millis(now).0;
    let Some(u) = st.users.get_mut(UserId(user)) else {
        return;
    };
    // The automatic "online" does not count against the user's own update rate.
    if !automatic {
        u.set_last_presence_ms(now_ms);
    }
    if target.is_none() {
        u.publish();
    }
    let mut record = local_record(u);
    if let (Some(_), Some(t)) = (target, u.targeted()) {
        (record.status, record.context) = (t.0.clone(), t.1.clone());
    }
    write_record_event(&mut st.scratch, user, &record);
    core.metrics().inc(Metric::PresenceEvents);
    match target {
        None => {
            if st.cluster.is_some() {
                let change = record.clone();
                st.cluster_changes.push((
                    user,
                    if automatic {
                        Change::Online(change)
                    } else {
                        Change::Update(change)
                    },
                ));
            }
            append_frame(&mut st.presence_frames, &st.scratch);
            st.presence_updates.push((user, Some(Box::new(record))));
            // The registry is the record of its own users; a record another node announced
            // for this user is superseded.
            st.book.remove(user);
        }
        Some(t) => {
            // Only the target hears it; the public (replicated) presence is unchanged.
            let frame = encode_shared_text(&st.scratch);
            route_to_users(core, st, &[t], frame, None);
        }
    }
}

/// A local user's presence as announced now.
fn local_record(u: &LocalUser) -> PresenceRecord {
    PresenceRecord {
        username: u.name().into(),
        status: u.status().into(),
        context: u.context().map(Box::from),
        since_ms: u.since_ms,
    }
}

/// Replaces `out` with the `presence_event` announcing `record`.
fn write_record_event(out: &mut Vec<u8>, user: u64, record: &PresenceRecord) {
    out.clear();
    envelope::write_presence_event(
        out,
        &PresenceEvent {
            from_user: user,
            user_id: user,
            username: (!record.username.is_empty()).then_some(&*record.username),
            status: &record.status,
            context: record.context.as_deref(),
            timestamp_ms: unix_ms(),
        },
    );
}

/// Puts `record` in every shard's replica and, with `event`, announces it to everyone.
fn announce_record<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    user: u64,
    record: PresenceRecord,
    event: bool,
) {
    if event {
        write_record_event(&mut st.scratch, user, &record);
        core.metrics().inc(Metric::PresenceEvents);
        append_frame(&mut st.presence_frames, &st.scratch);
    }
    st.presence_updates
        .push((user, Some(Box::new(record.clone()))));
    st.book.upsert(user, record);
}

/// A change of `user`'s presence on another node, on the user's home shard here: the user
/// is online while any node (this one included) holds it; one event per transition.
fn apply_remote_presence<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    user: u64,
    node: u32,
    change: Change,
) {
    let local = st.users.get(UserId(user)).is_some();
    let was_online = local || st.remote.contains_key(&user);
    match change {
        Change::Online(record) => {
            remember_remote(st, user, node, record.clone());
            if !was_online {
                announce_record(core, st, user, record, true);
            }
        }
        Change::Update(record) => {
            remember_remote(st, user, node, record.clone());
            announce_record(core, st, user, record, true);
        }
        Change::Offline => {
            let Some(entry) = st.remote.get_mut(&user) else {
                return;
            };
            entry.nodes.retain(|n| *n != node);
            if entry.nodes.is_empty() {
                st.remote.remove(&user);
                if !local {
                    announce_offline(core, st, user, None);
                }
            }
        }
    }
}

fn remember_remote<H: Handler>(
    st: &mut GatewayState<H>,
    user: u64,
    node: u32,
    record: PresenceRecord,
) {
    match st.remote.get_mut(&user) {
        Some(entry) => {
            if !entry.nodes.contains(&node) {
                entry.nodes.push(node);
            }
            entry.record = record;
        }
        None => {
            st.remote.insert(
                user,
                RemoteUser {
                    nodes: SmallVec::from_slice(&[node]),
                    record,
                },
            );
        }
    }
}

/// The public presence of `user` (`get_presence`): the replica's record for users homed on
/// other shards (and for users homed here whose last record came from another node), else
/// the registry's last announcement.
fn public_presence<'a, H: Handler>(
    st: &'a GatewayState<H>,
    user: u64,
) -> Option<PresenceEntry<'a>> {
    match st.book.get(user) {
        Some(r) => Some(replica_entry(user, r)),
        None => st.users.get(UserId(user)).map(|u| local_entry(user, u)),
    }
}

fn replica_entry(user: u64, r: &ReplicaRecord) -> PresenceEntry<'_> {
    let name = r.username();
    PresenceEntry {
        user_id: user,
        username: (!name.is_empty()).then_some(name),
        status: r.status(),
        context: r.context(),
        since_ms: r.since_ms(),
    }
}

fn local_entry(user: u64, u: &LocalUser) -> PresenceEntry<'_> {
    let name = u.public_name();
    PresenceEntry {
        user_id: user,
        username: (!name.is_empty()).then_some(name),
        status: u.status(),
        context: u.context(),
        since_ms: u.since_ms,
    }
}

/// Announces that `user` went offline; `gone` is its registry entry if it was local (already
/// removed from the registry).
fn announce_offline<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    user: u64,
    gone: Option<&LocalUser>,
) {
    let username: Box<str> = match (st.book.get(user), gone) {
        (Some(r), _) => r.username().into(),
        (None, Some(u)) => u.public_name().into(),
        (None, None) => Box::from(""),
    };
    st.scratch.clear();
    envelope::write_presence_event(
        &mut st.scratch,
        &PresenceEvent {
            from_user: user,
            user_id: user,
            username: (!username.is_empty()).then_some(&*username),
            status: "offline",
            context: None,
            timestamp_ms: core.unix_ms(),
        },
    );
    core.metrics().inc(Metric::PresenceEvents);
    append_frame(&mut st.presence_frames, &st.scratch);
    st.presence_updates.push((user, None));
    st.book.remove(user);
    st.presence_due.retain(|(_, u)| *u != user);
}

/// Appends one server text frame (header + payload) to a batch of frames.
fn append_frame(batch: &mut Vec<u8>, payload: &[u8]) {
    let mut header = [0u8; 10];
    let n = crate::proto::frame::encode_header(
        true,
        crate::proto::frame::OpCode::Text,
        payload.len(),
        &mut header,
    );
    batch.extend_from_slice(&header[..n]);
    batch.extend_from_slice(payload);
}

/// Sends this turn's presence announcements: the concatenated frames are encoded once and
/// shared by every connection on every shard; replicas get the ordered list of updates.
fn flush_presence_batch<H: Handler>(core: &mut Core<Gateway<H>>, st: &mut GatewayState<H>) {
    if st.presence_updates.is_empty() && st.presence_frames.is_empty() {
        return;
    }
    // With the fan-out off, replicas (get_presence) are still updated; nobody is told.
    let fan_out = core.config().presence_fanout && !st.presence_frames.is_empty();
    let frames = fan_out.then(|| Bytes::from(std::mem::take(&mut st.presence_frames)));
    st.presence_frames.clear();
    let updates = std::mem::take(&mut st.presence_updates);
    let me = core.shard_id();
    for shard in 0..core.shards() {
        if shard != me {
            core.send_to_shard(
                shard,
                ShardMsg::Presence {
                    updates: updates.clone(),
                    frames: frames.clone(),
                },
            );
        }
    }
    if let Some(frames) = frames {
        let n = deliver_all(core, &frames, None);
        core.metrics().add(Metric::MsgOutPresence, n);
    }
}

/// The built-in `generic_request` actions. Returns false for unknown actions.
fn handle_builtin_request<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    key: ConnKey,
    user: u64,
    pid: &str,
    action: &str,
    msg: &ClientEnvelope<'_>,
) -> bool {
    st.scratch.clear();
    match action {
        "whoami" => {
            let (name, roles) = st
                .users
                .get(UserId(user))
                .map_or(("", &[][..]), |u| (u.name(), u.roles()));
            envelope::write_whoami_response(
                &mut st.scratch,
                pid,
                user,
                (!name.is_empty()).then_some(name),
                roles,
            );
        }
        "ping" => envelope::write_ping_response(&mut st.scratch, pid, core.unix_ms()),
        "get_presence" => {
            let mut ids = std::mem::take(&mut st.targets);
            let filtered = match msg.user_ids(10_000, &mut ids) {
                Ok(f) => f,
                Err(e) => {
                    st.targets = ids;
                    send_error(core, st, key, Some(pid), e.code, e.message);
                    return true;
                }
            };
            let mut out = Vec::with_capacity(256);
            if filtered {
                ids.sort_unstable();
                ids.dedup();
                let list = ids.iter().filter_map(|id| public_presence(st, *id));
                envelope::write_get_presence_response(&mut out, pid, list);
            } else {
                // Every online user, sorted by id (stable answers for clients and tests).
                let book = &st.book;
                let mut all: Vec<PresenceEntry<'_>> = book
                    .iter()
                    .map(|(id, r)| replica_entry(id, r))
                    .chain(
                        st.users
                            .iter()
                            .filter(|(id, _)| !book.contains(*id))
                            .map(|(id, u)| local_entry(id, u)),
                    )
                    .collect();
                all.sort_unstable_by_key(|e| e.user_id);
                envelope::write_get_presence_response(&mut out, pid, all);
            }
            st.targets = ids;
            st.scratch = out;
        }
        "refresh_token" => {
            let Some(token) = msg.data_token() else {
                send_error(
                    core,
                    st,
                    key,
                    Some(pid),
                    422,
                    "refresh_token requires data.token",
                );
                return true;
            };
            match st.verifier.verify(&token) {
                Ok(id) if id.user_id.0 == user => {
                    // The keepalive sweep checks the new expiry (`is_lapsed`).
                    if let Some(s) = core.session_mut(key) {
                        s.exp = session_exp(id.exp);
                    }
                    st.scratch.clear();
                    envelope::write_refresh_response(&mut st.scratch, pid, id.exp);
                }
                Ok(_) => {
                    send_error(core, st, key, Some(pid), 403, "token is for another user");
                    return true;
                }
                Err(e) => {
                    let message = format!("invalid token: {}", e.label());
                    send_error(core, st, key, Some(pid), 401, &message);
                    return true;
                }
            }
        }
        _ => return false,
    }
    if core.send_text(key, &st.scratch) {
        core.metrics().inc(Metric::MsgOutGenericResponse);
    }
    true
}

fn payload_to_serde(msg: &ClientEnvelope<'_>) -> serde_json::Value {
    serde_json::from_str(&msg.payload().to_json()).unwrap_or(serde_json::Value::Null)
}

/// Generation of the pending request in `slot` (0 = none); timer keys carry it so a timer
/// set for an earlier request in a reused slot is ignored.
fn pending_gen<H: Handler>(st: &GatewayState<H>, slot: usize) -> u32 {
    st.pending_gens.get(slot).copied().unwrap_or(0)
}

pub(crate) fn register_pending<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    conn: ConnKey,
    pid: &str,
    timeout: Duration,
    what: Pending<H>,
) {
    st.pending_generation = st.pending_generation.wrapping_add(1).max(1);
    let generation = st.pending_generation;
    let slot = st.pending.insert(PendingEntry {
        conn,
        pid: pid.into(),
        what,
    });
    if st.pending_gens.len() <= slot {
        st.pending_gens.resize(slot + 1, 0);
    }
    st.pending_gens[slot] = generation;
    st.pending_by_pid.insert(pid.into(), slot);
    let timer_key = ConnKey::new(slot, generation);
    core.schedule(core.now() + timeout, timer_key, TIMER_PENDING);
}

enum Completion<H: Handler> {
    Ack(handler::AckCallback<H>, AckOutcome),
    Response(handler::ResponseCallback<H>, ResponseOutcome),
}

fn complete_pending<H: Handler>(
    core: &mut Core<Gateway<H>>,
    st: &mut GatewayState<H>,
    handler: &mut H,
    from: ConnKey,
    pid: &str,
    outcome: impl FnOnce(Pending<H>) -> Completion<H>,
) {
    let Some(&slot) = st.pending_by_pid.get(pid) else {
        return;
    };
    if st.pending.get(slot).is_none_or(|e| e.conn != from) {
        // Only the connection the request went to may answer it.
        return;
    }
    st.pending_by_pid.remove(pid);
    let entry = st.pending.remove(slot);
    st.pending_gens[slot] = 0;
    let mut ctx = Ctx { core, state: st };
    match outcome(entry.what) {
        Completion::Ack(cb, o) => cb(handler, &mut ctx, o),
        Completion::Response(cb, o) => cb(handler, &mut ctx, o),
    }
}
