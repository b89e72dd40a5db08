//! Routing and presence operation sequences checked against a reference model: what the
//! `routing` fuzz target and `tests/simulation.rs` run.
//!
//! Clients act between settle points ([`Op::Settle`]); the server is free to process what
//! they did in any order the runtime allows (shards, hand-offs, rings), so the oracle only
//! demands what holds in every such order:
//!
//! * **P2P**: each connection of the target that was open (settled) when the message was
//!   sent and is still open receives it exactly once; a connection that opened or closed
//!   meanwhile at most once; every other connection never. The sender gets exactly one
//!   reply: `server_ack` when some connection was certainly open, `error_notification` 404
//!   when the target had no connection at all, one of the two otherwise. An ack implies a
//!   delivery, a 404 implies none.
//! * **Broadcast**: the same, over every connection except the sender's, which never gets
//!   its own message; always acked.
//! * **Presence**: a connection that saw any presence event of a user sees an `offline` last
//!   iff that user has no open connection; `online` and `offline` alternate (never two
//!   `offline`, never an `online` while already online); an observer open across a change
//!   of the user's online state sees it; each status update is seen at most once, targeted
//!   ones only by their target. `get_presence` lists every user certainly online and no
//!   user certainly offline (exactly the online users when nothing changed meanwhile), and
//!   once coalescing has settled, the latest public status of each user.
//! * **Connections**: every connection opens (101), stays open until its client closes it,
//!   and is closed by the server after the client's FIN; server output is well formed.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::Value;

use super::{ClientId, Sim};
use crate::config::Config;
use crate::gateway::{BuiltIn, Gateway};

/// User ids 1..=USERS connect; user USERS + 1 never does (P2P to it is always a 404).
pub const USERS: u8 = 6;
/// Connections per run (bounds the work per fuzz input).
const MAX_CONNS: usize = 48;
/// Operations per run.
const MAX_OPS: usize = 512;

/// The server shape a run uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setup {
    pub shards: usize,
    /// Slots per cross-shard ring; small values exercise the back-pressure backlog. (At most
    /// 1024: a server's 8,192-slot rings would cost megabytes of allocation per fuzz input.)
    pub queue_capacity: usize,
    pub presence_interval: Duration,
}

/// One client action, or a settle point.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// A new connection for `user`, accepted by `shard` (modulo the shard count).
    Connect { user: u8, shard: u8 },
    /// The client of a live connection (index modulo the live ones) closes TCP.
    Disconnect { conn: u8 },
    /// `data_request` with `targetUserId`.
    P2p { from: u8, to: u8, pid: bool },
    /// `data_request` without a target.
    Broadcast { from: u8, pid: bool },
    /// `presence_update`, to everyone or to one user.
    Presence { from: u8, to: Option<u8> },
    /// `generic_request` `get_presence`.
    GetPresence { from: u8 },
    /// The virtual clock moves (timers fire on the way).
    Tick { ms: u32 },
    /// Run the server until idle and check everything sent since the last settle point.
    Settle,
}

/// A broken invariant, with what the oracle saw.
#[derive(Debug, thiserror::Error)]
pub enum Violation {
    #[error("lost or duplicated delivery: {0}")]
    Delivery(String),
    #[error("delivered where it must not go: {0}")]
    Misrouted(String),
    #[error("wrong reply to the sender: {0}")]
    Reply(String),
    #[error("presence: {0}")]
    Presence(String),
    #[error("connection: {0}")]
    Connection(String),
    #[error("malformed server message: {0}")]
    Malformed(String),
    #[error("simulation setup: {0}")]
    Setup(String),
}

impl Setup {
    /// Decodes the first byte of an input.
    pub fn from_byte(b: u8) -> Setup {
        Setup {
            shards: 2 + usize::from(b % 3),
            queue_capacity: [1, 2, 16, 1024][usize::from((b >> 2) & 3)],
            presence_interval: Duration::from_millis([0, 100, 1000][usize::from((b >> 4) % 3)]),
        }
    }

    /// The gateway config of a run: defaults, with rate limits out of the way.
    pub fn config(&self) -> Config {
        let mut c = Config::gateway(crate::config::AuthConfig {
            key: crate::config::JwtKey::Hmac(super::SIM_SECRET.to_vec()),
            leeway: Duration::from_secs(30),
            issuer: None,
            audience: None,
            allow_query_token: true,
            allowed_origins: vec!["*".into()],
        });
        c.cross_shard_queue_capacity = self.queue_capacity;
        c.presence_min_interval = self.presence_interval;
        c.rate_limit = 1_000_000;
        c.rate_burst = crate::ratelimit::MAX_BURST;
        c
    }
}

/// Decodes a fuzzer input: one setup byte, then operations of 1–3 bytes each.
pub fn decode(data: &[u8]) -> (Setup, Vec<Op>) {
    let (&first, mut rest) = data.split_first().unwrap_or((&0, &[]));
    let setup = Setup::from_byte(first);
    let mut ops = Vec::new();
    let mut next = || -> Option<u8> {
        let (&b, r) = rest.split_first()?;
        rest = r;
        Some(b)
    };
    while ops.len() < MAX_OPS {
        let Some(tag) = next() else { break };
        let a = next().unwrap_or(0);
        let op = match tag % 8 {
            0 => Op::Connect {
                user: a % USERS + 1,
                shard: next().unwrap_or(0),
            },
            1 => Op::Disconnect { conn: a },
            2 => Op::P2p {
                from: a,
                to: next().unwrap_or(0) % (USERS + 1) + 1,
                pid: tag & 0x80 == 0,
            },
            3 => Op::Broadcast {
                from: a,
                pid: tag & 0x80 == 0,
            },
            4 => {
                let to = next().unwrap_or(0);
                Op::Presence {
                    from: a,
                    to: (tag & 0x80 != 0).then_some(to % (USERS + 1) + 1),
                }
            }
            5 => Op::GetPresence { from: a },
            6 => Op::Tick {
                ms: u32::from(a) * if tag & 0x80 != 0 { 200 } else { 10 },
            },
            _ => Op::Settle,
        };
        ops.push(op);
    }
    (setup, ops)
}

/// Encodes operations back into an input (seeds, and tests that build sequences).
pub fn encode(setup_byte: u8, ops: &[Op]) -> Vec<u8> {
    let mut out = vec![setup_byte];
    for op in ops {
        match *op {
            Op::Connect { user, shard } => out.extend([0, user.wrapping_sub(1), shard]),
            Op::Disconnect { conn } => out.extend([1, conn]),
            Op::P2p { from, to, pid } => {
                out.extend([if pid { 2 } else { 0x82 }, from, to.wrapping_sub(1)])
            }
            Op::Broadcast { from, pid } => out.extend([if pid { 3 } else { 0x83 }, from]),
            Op::Presence { from, to } => match to {
                Some(t) => out.extend([0x84, from, t.wrapping_sub(1)]),
                None => out.extend([4, from, 0]),
            },
            Op::GetPresence { from } => out.extend([5, from]),
            Op::Tick { ms } => out.extend([6, (ms / 10).min(255) as u8]),
            Op::Settle => out.extend([7, 0]),
        }
    }
    out
}

/// Runs an input end to end: decode, apply every operation, settle, quiesce, final check.
pub fn run(data: &[u8]) -> Result<Stats, Violation> {
    let (setup, ops) = decode(data);
    let mut checker = Checker::new(&setup)?;
    for op in &ops {
        checker.apply(op)?;
    }
    checker.finish()?;
    Ok(checker.stats)
}

/// What a run exercised (for tests that want to know they covered something).
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub connects: usize,
    pub p2p_delivered: usize,
    pub p2p_offline: usize,
    pub broadcast_delivered: usize,
    pub presence_events: usize,
    pub offline_events: usize,
    pub settles: usize,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum St {
    /// Upgrade sent, not yet settled.
    Pending,
    /// Open at the last settle point.
    Open,
    /// The client closed it since the last settle point.
    Closing,
    Closed,
}

struct Conn {
    client: ClientId,
    user: u64,
    st: St,
}

enum Kind {
    P2p { to: u64 },
    Broadcast,
    GetPresence,
    Presence,
}

/// A message sent since the last settle point.
struct Sent {
    id: u64,
    from: usize,
    pid: Option<String>,
    kind: Kind,
    /// Every connection's state when it was sent.
    snapshot: Vec<St>,
}

/// A status update, by id.
struct Update {
    user: u64,
    from: usize,
    target: Option<u64>,
    status: String,
}

/// A presence event as one connection saw it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Seen {
    Online,
    Offline,
    Status,
}

/// The simulation plus the reference model and the oracle.
pub struct Checker {
    sim: Sim<Gateway<BuiltIn>>,
    setup: Setup,
    conns: Vec<Conn>,
    /// States at the last settle point (shorter than `conns` when some are new).
    prev: Vec<St>,
    sent: Vec<Sent>,
    updates: HashMap<u64, Update>,
    /// Public updates since the last settle point, in order: (user, update id).
    window_updates: Vec<(u64, u64)>,
    next_id: u64,
    /// `last[(conn, user)]`: the last public presence event the connection saw of the user.
    last_seen: HashMap<(usize, u64), Seen>,
    /// Status updates each connection saw (at most once each).
    seen_updates: BTreeSet<(usize, u64)>,
    /// The public status each user's replica entry must show once coalescing settled
    /// (`None` when concurrent actions leave it open).
    status: HashMap<u64, Option<String>>,
    /// messageId → the message it was first seen on (unique per message).
    message_ids: HashMap<String, u64>,
    /// The final check: coalescing settled and nothing else happens in this window.
    quiet: bool,
    /// 404s without a pid each sender must have: (at least, at most).
    bare_404: HashMap<usize, (usize, usize)>,
    pub stats: Stats,
}

fn get<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

impl Checker {
    pub fn new(setup: &Setup) -> Result<Self, Violation> {
        let sim = Sim::gateway(setup.config(), setup.shards)
            .map_err(|e| Violation::Setup(e.to_string()))?;
        Ok(Checker {
            sim,
            setup: setup.clone(),
            conns: Vec::new(),
            prev: Vec::new(),
            sent: Vec::new(),
            updates: HashMap::new(),
            window_updates: Vec::new(),
            next_id: 1,
            last_seen: HashMap::new(),
            seen_updates: BTreeSet::new(),
            status: HashMap::new(),
            message_ids: HashMap::new(),
            quiet: false,
            bare_404: HashMap::new(),
            stats: Stats::default(),
        })
    }

    /// The simulation (for hand-written scenarios that look further).
    pub fn sim(&mut self) -> &mut Sim<Gateway<BuiltIn>> {
        &mut self.sim
    }

    /// Client index of the model's `conn`-th connection.
    pub fn client(&self, conn: usize) -> Option<ClientId> {
        self.conns.get(conn).map(|c| c.client)
    }

    fn live(&self, pick: u8) -> Option<usize> {
        let live: Vec<usize> = (0..self.conns.len())
            .filter(|&i| matches!(self.conns[i].st, St::Pending | St::Open))
            .collect();
        (!live.is_empty()).then(|| live[usize::from(pick) % live.len()])
    }

    fn snapshot(&self) -> Vec<St> {
        self.conns.iter().map(|c| c.st).collect()
    }

    fn send(&mut self, from: usize, kind: Kind, pid: bool, json: impl FnOnce(&str, u64) -> String) {
        let id = self.next_id;
        self.next_id += 1;
        let pid = pid.then(|| format!("m{id}"));
        let pid_field = pid
            .as_ref()
            .map_or(String::new(), |p| format!(r#""pid":"{p}","#));
        let text = json(&pid_field, id);
        self.sim.send_text(self.conns[from].client, &text);
        self.sent.push(Sent {
            id,
            from,
            pid,
            kind,
            snapshot: self.snapshot(),
        });
    }

    /// Applies one operation (a settle point checks everything since the previous one).
    pub fn apply(&mut self, op: &Op) -> Result<(), Violation> {
        match *op {
            Op::Connect { user, shard } => {
                let user = u64::from(user);
                let per_user = self
                    .conns
                    .iter()
                    .filter(|c| c.user == user && c.st != St::Closed)
                    .count();
                // Stay under the per-user limit (8): replacement is not modelled here.
                if self.conns.len() < MAX_CONNS
                    && per_user < 8
                    && (1..=u64::from(USERS)).contains(&user)
                {
                    let client = self.sim.connect_on(usize::from(shard), user);
                    self.conns.push(Conn {
                        client,
                        user,
                        st: St::Pending,
                    });
                    self.stats.connects += 1;
                }
            }
            Op::Disconnect { conn } => {
                if let Some(i) = self.live(conn) {
                    self.sim.disconnect(self.conns[i].client);
                    self.conns[i].st = St::Closing;
                }
            }
            Op::P2p { from, to, pid } => {
                if let Some(f) = self.live(from) {
                    let to = u64::from(to);
                    self.send(f, Kind::P2p { to }, pid, |p, id| {
                        format!(
                            r#"{{{p}"type":"data_request","targetUserId":{to},"payload":{{"id":{id},"senderName":"forged"}}}}"#
                        )
                    });
                }
            }
            Op::Broadcast { from, pid } => {
                if let Some(f) = self.live(from) {
                    self.send(f, Kind::Broadcast, pid, |p, id| {
                        format!(r#"{{{p}"type":"data_request","payload":{{"id":{id}}}}}"#)
                    });
                }
            }
            Op::Presence { from, to } => {
                if let Some(f) = self.live(from) {
                    let user = self.conns[f].user;
                    let id = self.next_id;
                    let status = match to {
                        Some(_) => format!("dm#{id}"),
                        None => format!("away#{id}"),
                    };
                    let target = to.map(u64::from);
                    self.updates.insert(
                        id,
                        Update {
                            user,
                            from: f,
                            target,
                            status: status.clone(),
                        },
                    );
                    if target.is_none() {
                        self.window_updates.push((user, id));
                    }
                    let target_field =
                        target.map_or(String::new(), |t| format!(r#""targetUserId":{t},"#));
                    self.send(f, Kind::Presence, true, |p, _| {
                        format!(
                            r#"{{{p}"type":"presence_update",{target_field}"payload":{{"status":"{status}"}}}}"#
                        )
                    });
                }
            }
            Op::GetPresence { from } => {
                if let Some(f) = self.live(from) {
                    self.send(f, Kind::GetPresence, true, |p, _| {
                        format!(r#"{{{p}"type":"generic_request","payload":{{"action":"get_presence"}}}}"#)
                    });
                }
            }
            Op::Tick { ms } => self.sim.advance(Duration::from_millis(u64::from(ms))),
            Op::Settle => self.settle()?,
        }
        Ok(())
    }

    /// Settles, lets coalesced presence go out, and checks the replicas' final answer.
    pub fn finish(&mut self) -> Result<(), Violation> {
        self.settle()?;
        self.sim
            .advance(self.setup.presence_interval + Duration::from_millis(50));
        self.settle()?;
        self.quiet = true;
        self.apply(&Op::GetPresence { from: 0 })?;
        self.settle()
    }

    fn on_now(&self, user: u64) -> bool {
        self.conns
            .iter()
            .any(|c| c.user == user && c.st == St::Open)
    }

    fn on_prev(&self, user: u64) -> bool {
        self.conns
            .iter()
            .zip(&self.prev)
            .any(|(c, st)| c.user == user && *st == St::Open)
    }

    /// Whether connection `i` existed and was open at the last settle point.
    fn was_open(&self, i: usize) -> bool {
        self.prev.get(i) == Some(&St::Open)
    }

    /// Whether connection `i` could have received anything since the last settle point.
    fn reachable(&self, i: usize) -> bool {
        i >= self.prev.len() || self.prev[i] == St::Open
    }

    fn settle(&mut self) -> Result<(), Violation> {
        self.sim.run_until_idle();
        self.stats.settles += 1;

        // Connection states.
        for (i, c) in self.conns.iter_mut().enumerate() {
            let open = self.sim.is_open(c.client);
            if self.sim.saw_garbage(c.client) {
                return Err(Violation::Malformed(format!("conn {i}: bad frame stream")));
            }
            c.st = match c.st {
                St::Pending | St::Open if !open => {
                    return Err(Violation::Connection(format!(
                        "conn {i} (user {}) is not open: status {:?}, close {:?}",
                        c.user,
                        self.sim.http_status(c.client),
                        self.sim.close_code(c.client)
                    )))
                }
                St::Pending | St::Open => St::Open,
                St::Closing | St::Closed => {
                    if !self.sim.is_closed(c.client) {
                        return Err(Violation::Connection(format!(
                            "conn {i}: the server kept it after the client's FIN"
                        )));
                    }
                    St::Closed
                }
            };
        }

        // What everyone received.
        let mut deliveries: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut replies: HashMap<String, Vec<(usize, Value)>> = HashMap::new();
        let mut public_seen: HashMap<(usize, u64), usize> = HashMap::new();
        for i in 0..self.conns.len() {
            let client = self.conns[i].client;
            for text in self.sim.take_received(client) {
                let v: Value = serde_json::from_str(&text)
                    .map_err(|e| Violation::Malformed(format!("{e}: {text}")))?;
                self.observe(
                    i,
                    &v,
                    &text,
                    &mut deliveries,
                    &mut replies,
                    &mut public_seen,
                )?;
            }
        }

        let sent = std::mem::take(&mut self.sent);
        for s in &sent {
            self.check_sent(s, &deliveries, &mut replies)?;
        }
        for (conn, (lo, hi)) in std::mem::take(&mut self.bare_404) {
            let have = replies
                .remove(&format!("404@{conn}"))
                .map_or(0, |v| v.len());
            let lo = if self.conns[conn].st == St::Open {
                lo
            } else {
                0
            };
            if have < lo || have > hi {
                return Err(Violation::Reply(format!(
                    "conn {conn} got {have} 404s for P2Ps without pid, want {lo}..={hi}"
                )));
            }
        }
        if let Some((pid, got)) = replies.iter().find(|(_, v)| !v.is_empty()) {
            return Err(Violation::Misrouted(format!(
                "unexpected reply for {pid}: {got:?}"
            )));
        }

        self.check_presence(&public_seen)?;
        self.update_status_model();
        self.window_updates.clear();
        self.prev = self.snapshot();
        Ok(())
    }

    /// Classifies one server message received by connection `i`.
    fn observe(
        &mut self,
        i: usize,
        v: &Value,
        text: &str,
        deliveries: &mut HashMap<u64, Vec<usize>>,
        replies: &mut HashMap<String, Vec<(usize, Value)>>,
        public_seen: &mut HashMap<(usize, u64), usize>,
    ) -> Result<(), Violation> {
        let bad = || Violation::Malformed(text.to_owned());
        match v["type"].as_str().ok_or_else(bad)? {
            "data_event" => {
                let id = get(v, &["payload", "id"]).as_u64().ok_or_else(bad)?;
                let from = v["fromUserId"].as_u64().ok_or_else(bad)?;
                let name = get(v, &["payload", "senderName"]).as_str();
                if name != Some(&format!("u{from}")) {
                    return Err(Violation::Malformed(format!(
                        "senderName not set by the server: {text}"
                    )));
                }
                let mid = get(v, &["payload", "messageId"]).as_str().ok_or_else(bad)?;
                // Each delivery carries its message's id; a copy per recipient is expected.
                if let Some(other) = self.message_ids.insert(mid.to_owned(), id) {
                    if other != id {
                        return Err(Violation::Malformed(format!(
                            "messageId {mid} of message {other} reused for {id}"
                        )));
                    }
                }
                get(v, &["payload", "timestamp"]).as_str().ok_or_else(bad)?;
                deliveries.entry(id).or_default().push(i);
                if let Some(sent) = self.sent.iter().find(|s| s.id == id) {
                    let sender = self.conns[sent.from].user;
                    if from != sender {
                        return Err(Violation::Misrouted(format!(
                            "message {id} of user {sender} arrived as from user {from}"
                        )));
                    }
                }
            }
            "server_ack" => {
                let pid = get(v, &["payload", "acknowledgedPid"])
                    .as_str()
                    .ok_or_else(bad)?;
                replies
                    .entry(pid.to_owned())
                    .or_default()
                    .push((i, v.clone()));
            }
            "error_notification" => {
                let code = get(v, &["error", "code"]).as_u64().ok_or_else(bad)?;
                match get(v, &["error", "originalPid"]).as_str() {
                    Some(pid) => replies
                        .entry(pid.to_owned())
                        .or_default()
                        .push((i, v.clone())),
                    None if code == 404 => replies
                        .entry(format!("404@{i}"))
                        .or_default()
                        .push((i, v.clone())),
                    None => return Err(Violation::Reply(format!("conn {i}: {text}"))),
                }
            }
            "generic_response" => {
                let pid = v["pid"].as_str().ok_or_else(bad)?;
                replies
                    .entry(pid.to_owned())
                    .or_default()
                    .push((i, v.clone()));
            }
            "presence_event" => {
                self.stats.presence_events += 1;
                let user = get(v, &["payload", "userId"]).as_u64().ok_or_else(bad)?;
                if v["fromUserId"].as_u64() != Some(user)
                    || get(v, &["payload", "username"]).as_str() != Some(&format!("u{user}"))
                {
                    return Err(Violation::Malformed(text.to_owned()));
                }
                let status = get(v, &["payload", "status"]).as_str().ok_or_else(bad)?;
                let me = self.conns[i].user;
                let seen = match status {
                    "online" => Seen::Online,
                    "offline" => {
                        self.stats.offline_events += 1;
                        Seen::Offline
                    }
                    s => {
                        let id: u64 = s
                            .split_once('#')
                            .and_then(|(_, n)| n.parse().ok())
                            .ok_or_else(bad)?;
                        let Some(u) = self.updates.get(&id) else {
                            return Err(Violation::Presence(format!("unknown status: {text}")));
                        };
                        if u.user != user || u.status != s {
                            return Err(Violation::Presence(format!(
                                "status of another user: {text}"
                            )));
                        }
                        if let Some(t) = u.target {
                            if t != me {
                                return Err(Violation::Misrouted(format!(
                                    "conn {i} of user {me} got an update targeted at {t}: {text}"
                                )));
                            }
                        }
                        if !self.seen_updates.insert((i, id)) {
                            return Err(Violation::Presence(format!(
                                "conn {i} saw update {id} twice"
                            )));
                        }
                        if u.target.is_some() {
                            // Targeted: not part of the public online/offline sequence.
                            return Ok(());
                        }
                        Seen::Status
                    }
                };
                let prev = self.last_seen.insert((i, user), seen);
                match (prev, seen) {
                    (Some(Seen::Offline), Seen::Offline) => {
                        return Err(Violation::Presence(format!(
                            "conn {i} saw user {user} go offline twice in a row"
                        )))
                    }
                    (Some(Seen::Online | Seen::Status), Seen::Online) => {
                        return Err(Violation::Presence(format!(
                            "conn {i} saw user {user} come online while online"
                        )))
                    }
                    (Some(Seen::Offline), Seen::Status) => {
                        return Err(Violation::Presence(format!(
                            "conn {i} saw a status of user {user} after its offline"
                        )))
                    }
                    _ => {}
                }
                *public_seen.entry((i, user)).or_default() += 1;
            }
            _ => return Err(Violation::Malformed(format!("unexpected type: {text}"))),
        }
        Ok(())
    }

    fn check_sent(
        &mut self,
        s: &Sent,
        deliveries: &HashMap<u64, Vec<usize>>,
        replies: &mut HashMap<String, Vec<(usize, Value)>>,
    ) -> Result<(), Violation> {
        let stays = self.conns[s.from].st == St::Open;
        let at = |i: usize| s.snapshot.get(i).copied();
        let got = deliveries.get(&s.id).map_or(&[][..], Vec::as_slice);
        let count = |i: usize| got.iter().filter(|&&j| j == i).count();
        let (definite, reachable): (Vec<usize>, Vec<usize>) = match s.kind {
            Kind::P2p { to } => (
                (0..self.conns.len())
                    .filter(|&i| {
                        self.conns[i].user == to
                            && at(i) == Some(St::Open)
                            && self.conns[i].st == St::Open
                    })
                    .collect(),
                (0..self.conns.len())
                    .filter(|&i| self.conns[i].user == to && self.reachable(i))
                    .collect(),
            ),
            Kind::Broadcast => (
                (0..self.conns.len())
                    .filter(|&i| {
                        i != s.from && at(i) == Some(St::Open) && self.conns[i].st == St::Open
                    })
                    .collect(),
                (0..self.conns.len())
                    .filter(|&i| i != s.from && self.reachable(i))
                    .collect(),
            ),
            Kind::GetPresence | Kind::Presence => (Vec::new(), Vec::new()),
        };
        for &i in &definite {
            if count(i) != 1 {
                return Err(Violation::Delivery(format!(
                    "message {} reached conn {i} (user {}) {} times, want exactly 1",
                    s.id,
                    self.conns[i].user,
                    count(i)
                )));
            }
        }
        for &i in got {
            if !reachable.contains(&i) {
                return Err(Violation::Misrouted(format!(
                    "message {} from conn {} reached conn {i} (user {})",
                    s.id, s.from, self.conns[i].user
                )));
            }
            if count(i) > 1 {
                return Err(Violation::Delivery(format!(
                    "message {} reached conn {i} {} times",
                    s.id,
                    count(i)
                )));
            }
        }
        if let Kind::P2p { .. } = s.kind {
            if got.is_empty() {
                self.stats.p2p_offline += 1;
            }
            self.stats.p2p_delivered += got.len();
        } else if let Kind::Broadcast = s.kind {
            self.stats.broadcast_delivered += got.len();
        }

        let mine: Vec<(usize, Value)> = match &s.pid {
            Some(pid) => replies.remove(pid).unwrap_or_default(),
            None => {
                // A P2P without pid is answered only when the target is offline: a 404
                // without originalPid.
                if let Kind::P2p { .. } = s.kind {
                    let must = usize::from(stays && reachable.is_empty());
                    let may = usize::from(definite.is_empty());
                    let e = self.bare_404.entry(s.from).or_default();
                    e.0 += must;
                    e.1 += may;
                }
                return Ok(());
            }
        };
        if mine.iter().any(|(i, _)| *i != s.from) {
            return Err(Violation::Misrouted(format!(
                "reply to {:?} went elsewhere: {mine:?}",
                s.pid
            )));
        }
        if mine.len() > 1 || (stays && mine.is_empty()) {
            return Err(Violation::Reply(format!(
                "message {} ({:?}) got {} replies: {mine:?}",
                s.id,
                s.pid,
                mine.len()
            )));
        }
        let Some((_, reply)) = mine.first() else {
            return Ok(());
        };
        let ty = reply["type"].as_str().unwrap_or("");
        let code = get(reply, &["error", "code"]).as_u64();
        match s.kind {
            Kind::P2p { .. } => {
                let acked = ty == "server_ack";
                let offline = ty == "error_notification" && code == Some(404);
                if !(acked || offline) {
                    return Err(Violation::Reply(format!("P2P {}: {reply}", s.id)));
                }
                if acked && got.is_empty() {
                    return Err(Violation::Delivery(format!(
                        "P2P {} acked but delivered nowhere",
                        s.id
                    )));
                }
                if offline && !got.is_empty() {
                    return Err(Violation::Reply(format!(
                        "P2P {} got 404 but was delivered",
                        s.id
                    )));
                }
                if offline && !definite.is_empty() {
                    return Err(Violation::Reply(format!(
                        "P2P {} got 404 while conns {definite:?} were open",
                        s.id
                    )));
                }
                if acked && reachable.is_empty() {
                    return Err(Violation::Reply(format!(
                        "P2P {} acked to an offline user",
                        s.id
                    )));
                }
            }
            Kind::Broadcast | Kind::Presence => {
                if ty != "server_ack" {
                    return Err(Violation::Reply(format!("message {}: {reply}", s.id)));
                }
            }
            Kind::GetPresence => self.check_presence_answer(s, reply)?,
        }
        Ok(())
    }

    fn check_presence_answer(&self, s: &Sent, reply: &Value) -> Result<(), Violation> {
        let users = get(reply, &["payload", "users"])
            .as_array()
            .ok_or_else(|| Violation::Malformed(reply.to_string()))?;
        let mut listed = BTreeSet::new();
        for u in users {
            let id = u["userId"].as_u64().unwrap_or(0);
            if !listed.insert(id) || u["username"].as_str() != Some(&format!("u{id}")) {
                return Err(Violation::Presence(format!(
                    "bad get_presence entry: {reply}"
                )));
            }
            let quiet = self.quiet;
            if let (true, Some(Some(want))) = (quiet, self.status.get(&id)) {
                if u["status"].as_str() != Some(want) {
                    return Err(Violation::Presence(format!(
                        "user {id}: status {}, want {want:?} (latest public update)",
                        u["status"]
                    )));
                }
            }
        }
        for user in 1..=u64::from(USERS) + 1 {
            let certainly_on = (0..self.conns.len()).any(|i| {
                self.conns[i].user == user
                    && s.snapshot.get(i) == Some(&St::Open)
                    && self.conns[i].st == St::Open
            });
            let maybe_on =
                (0..self.conns.len()).any(|i| self.conns[i].user == user && self.reachable(i));
            let has = listed.contains(&user);
            if certainly_on && !has {
                return Err(Violation::Presence(format!(
                    "get_presence misses online user {user}: {reply}"
                )));
            }
            if !maybe_on && has {
                return Err(Violation::Presence(format!(
                    "get_presence lists user {user}, whose last connection closed: {reply}"
                )));
            }
        }
        Ok(())
    }

    fn check_presence(&self, public_seen: &HashMap<(usize, u64), usize>) -> Result<(), Violation> {
        for (i, c) in self.conns.iter().enumerate() {
            if c.st != St::Open {
                continue;
            }
            for user in 1..=u64::from(USERS) {
                let on = self.on_now(user);
                let last = self.last_seen.get(&(i, user)).copied();
                if last == Some(Seen::Offline) && on {
                    return Err(Violation::Presence(format!(
                        "conn {i} last saw user {user} go offline, but it is online"
                    )));
                }
                if matches!(last, Some(Seen::Online | Seen::Status)) && !on {
                    return Err(Violation::Presence(format!(
                        "conn {i} never saw user {user} go offline (last connection closed)"
                    )));
                }
                let changed = self.on_prev(user) != on;
                if changed && self.was_open(i) && !public_seen.contains_key(&(i, user)) {
                    return Err(Violation::Presence(format!(
                        "conn {i}, open throughout, missed user {user} going {}",
                        if on { "online" } else { "offline" }
                    )));
                }
            }
        }
        Ok(())
    }

    /// What each user's public status must be once coalescing settled.
    fn update_status_model(&mut self) {
        for user in 1..=u64::from(USERS) {
            let on = self.on_now(user);
            let continuous = (0..self.conns.len()).any(|i| {
                self.conns[i].user == user && self.was_open(i) && self.conns[i].st == St::Open
            });
            let mine: Vec<u64> = self
                .window_updates
                .iter()
                .filter(|(u, _)| *u == user)
                .map(|(_, id)| *id)
                .collect();
            let old = self
                .status
                .get(&user)
                .cloned()
                .unwrap_or(Some("online".into()));
            let new = if !on {
                Some("online".into())
            } else if let Some(last) = mine.last() {
                let from = self.updates[last].from;
                let one_conn = mine.iter().all(|id| self.updates[id].from == from);
                (one_conn && self.conns[from].st == St::Open)
                    .then(|| self.updates[last].status.clone())
            } else if continuous {
                old
            } else if !self.on_prev(user) || old.as_deref() == Some("online") {
                Some("online".into())
            } else {
                None
            };
            self.status.insert(user, new);
        }
    }
}
