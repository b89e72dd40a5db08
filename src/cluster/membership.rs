//! Which other nodes are alive and which users each of them holds (sans-IO).
//!
//! Every node publishes, on the shared channel, its presence deltas numbered by a sequence
//! number, a heartbeat carrying the current number, and a full snapshot when asked. A
//! receiver applies deltas in order; a gap (a lost message, a restart, a node it never heard
//! from) marks the node unsynced and asks it for a snapshot, which replaces everything known
//! about it. A node not heard for [`DEAD_AFTER`] of its own intervals is dead: each of
//! its users is reported offline *by this node to its own clients*, once, so every client in
//! the cluster sees one offline event, whichever node noticed.
//!
//! The bound: a node is dead [`DEAD_AFTER`] heartbeat intervals (2.5) after the last
//! heartbeat heard from it, and the bridge checks four times per interval, so its users go
//! offline at most 2.75 intervals after its last heartbeat: within three heartbeats of a
//! `kill -9`. Waiting 2.5 intervals rather than 1 tolerates one late or lost heartbeat.
//!
//! The output is a list of per-user changes tagged with a small node index, which the bridge
//! routes to each user's home shard; the home shard combines them with its local connections.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::wire::{Change, Record};

/// A node silent for this many of its heartbeat intervals is declared dead.
pub const DEAD_AFTER: f64 = 2.5;

/// How long a node with heartbeat `interval` may stay silent.
pub fn dead_after(interval: Duration) -> Duration {
    interval.mul_f64(DEAD_AFTER)
}

/// What a remote node holds, as far as this node knows.
#[derive(Debug)]
struct Node {
    idx: u32,
    incarnation: u64,
    seq: u64,
    /// Deltas are applied only after a snapshot established the base state.
    synced: bool,
    last_heard: Instant,
    interval: Duration,
    last_sync_request: Option<Instant>,
    users: HashMap<u64, Record>,
}

/// The membership view of one node.
#[derive(Debug)]
pub struct Membership {
    me: Box<str>,
    nodes: HashMap<Box<str>, Node>,
    next_idx: u32,
    default_interval: Duration,
}

/// What the bridge must do after feeding a message in.
#[derive(Debug, Default)]
pub struct Effects {
    /// `(user, node index, change)` for the user's home shard, in order.
    pub presence: Vec<(u64, u32, Change)>,
    /// Nodes to ask for a snapshot.
    pub sync_requests: Vec<Box<str>>,
    /// Nodes declared dead (for logs and metrics).
    pub dead: Vec<Box<str>>,
}

impl Membership {
    pub fn new(me: &str, default_interval: Duration) -> Self {
        Membership {
            me: me.into(),
            nodes: HashMap::new(),
            next_idx: 1,
            default_interval,
        }
    }

    /// Remote nodes currently considered alive.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Remote users known online (counting a user once per node holding it).
    pub fn remote_entries(&self) -> usize {
        self.nodes.values().map(|n| n.users.len()).sum()
    }

    fn node(&mut self, id: &str, incarnation: u64, now: Instant, fx: &mut Effects) -> &mut Node {
        let restarted = self
            .nodes
            .get(id)
            .is_some_and(|n| n.incarnation != incarnation);
        if restarted {
            // Same id, new process: everything the old one held is gone.
            if let Some(old) = self.nodes.remove(id) {
                report_all_offline(old, fx);
            }
        }
        if !self.nodes.contains_key(id) {
            let idx = self.next_idx;
            self.next_idx = self.next_idx.wrapping_add(1).max(1);
            self.nodes.insert(
                id.into(),
                Node {
                    idx,
                    incarnation,
                    seq: 0,
                    synced: false,
                    last_heard: now,
                    interval: self.default_interval,
                    last_sync_request: None,
                    users: HashMap::new(),
                },
            );
        }
        let node = self.nodes.get_mut(id).expect("inserted above");
        node.last_heard = now;
        node
    }

    /// Asks for a snapshot unless one was asked for within the node's interval.
    fn want_sync(node: &mut Node, id: &str, now: Instant, fx: &mut Effects) {
        node.synced = false;
        let recent = node
            .last_sync_request
            .is_some_and(|t| now.duration_since(t) < node.interval);
        if !recent {
            node.last_sync_request = Some(now);
            fx.sync_requests.push(id.into());
        }
    }

    pub fn on_presence(
        &mut self,
        id: &str,
        incarnation: u64,
        seq: u64,
        changes: Vec<(u64, Change)>,
        now: Instant,
        fx: &mut Effects,
    ) {
        if *id == *self.me {
            return;
        }
        let node = self.node(id, incarnation, now, fx);
        if !node.synced || seq > node.seq + 1 {
            Self::want_sync(node, id, now, fx);
            return;
        }
        if seq <= node.seq {
            return; // already covered by a snapshot
        }
        node.seq = seq;
        let idx = node.idx;
        for (user, change) in changes {
            match &change {
                Change::Online(r) | Change::Update(r) => {
                    node.users.insert(user, r.clone());
                }
                Change::Offline => {
                    if node.users.remove(&user).is_none() {
                        continue;
                    }
                }
            }
            fx.presence.push((user, idx, change));
        }
    }

    pub fn on_snapshot(
        &mut self,
        id: &str,
        incarnation: u64,
        seq: u64,
        users: Vec<(u64, Record)>,
        now: Instant,
        fx: &mut Effects,
    ) {
        if *id == *self.me {
            return;
        }
        let node = self.node(id, incarnation, now, fx);
        if node.synced && seq <= node.seq {
            return;
        }
        node.synced = true;
        node.seq = seq;
        node.last_sync_request = None;
        let idx = node.idx;
        let mut old = std::mem::take(&mut node.users);
        for (user, record) in users {
            match old.remove(&user) {
                Some(prev) if prev == record => {}
                Some(_) => fx
                    .presence
                    .push((user, idx, Change::Update(record.clone()))),
                None => fx
                    .presence
                    .push((user, idx, Change::Online(record.clone()))),
            }
            node.users.insert(user, record);
        }
        for (user, _) in old {
            fx.presence.push((user, idx, Change::Offline));
        }
    }

    pub fn on_heartbeat(
        &mut self,
        id: &str,
        incarnation: u64,
        seq: u64,
        interval_ms: u32,
        now: Instant,
        fx: &mut Effects,
    ) {
        if *id == *self.me {
            return;
        }
        let node = self.node(id, incarnation, now, fx);
        node.interval = Duration::from_millis(u64::from(interval_ms.clamp(10, 3_600_000)));
        if !node.synced || seq > node.seq {
            Self::want_sync(node, id, now, fx);
        }
    }

    /// A clean shutdown: the node's users go offline now rather than after the timeout.
    pub fn on_bye(&mut self, id: &str, incarnation: u64, fx: &mut Effects) {
        if self
            .nodes
            .get(id)
            .is_some_and(|n| n.incarnation == incarnation)
        {
            if let Some(node) = self.nodes.remove(id) {
                report_all_offline(node, fx);
            }
        }
    }

    /// Declares dead every node silent for [`DEAD_AFTER`] intervals.
    pub fn expire(&mut self, now: Instant, fx: &mut Effects) {
        let dead: Vec<Box<str>> = self
            .nodes
            .iter()
            .filter(|(_, n)| now.duration_since(n.last_heard) >= dead_after(n.interval))
            .map(|(id, _)| id.clone())
            .collect();
        for id in dead {
            if let Some(node) = self.nodes.remove(&id) {
                report_all_offline(node, fx);
            }
            fx.dead.push(id);
        }
    }
}

fn report_all_offline(node: Node, fx: &mut Effects) {
    let mut users: Vec<u64> = node.users.into_keys().collect();
    users.sort_unstable();
    for user in users {
        fx.presence.push((user, node.idx, Change::Offline));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(status: &str) -> Record {
        Record {
            since_ms: 1,
            username: "n".into(),
            status: status.into(),
            context: None,
        }
    }

    const HB: Duration = Duration::from_millis(100);

    fn changes(fx: &Effects) -> Vec<(u64, &'static str)> {
        fx.presence
            .iter()
            .map(|(u, _, c)| {
                (
                    *u,
                    match c {
                        Change::Online(_) => "online",
                        Change::Update(_) => "update",
                        Change::Offline => "offline",
                    },
                )
            })
            .collect()
    }

    #[test]
    fn deltas_wait_for_a_snapshot_then_apply_in_order() {
        let t = Instant::now();
        let mut m = Membership::new("me", HB);
        let mut fx = Effects::default();
        m.on_presence(
            "b",
            1,
            5,
            vec![(7, Change::Online(rec("online")))],
            t,
            &mut fx,
        );
        assert!(fx.presence.is_empty(), "no base state yet");
        assert_eq!(fx.sync_requests, vec![Box::from("b")]);
        let mut fx = Effects::default();
        m.on_snapshot(
            "b",
            1,
            5,
            vec![(7, rec("online")), (8, rec("online"))],
            t,
            &mut fx,
        );
        assert_eq!(changes(&fx), vec![(7, "online"), (8, "online")]);
        let mut fx = Effects::default();
        m.on_presence("b", 1, 5, vec![(9, Change::Online(rec("x")))], t, &mut fx);
        assert!(fx.presence.is_empty(), "seq 5 is in the snapshot");
        m.on_presence("b", 1, 6, vec![(8, Change::Offline)], t, &mut fx);
        m.on_presence(
            "b",
            1,
            7,
            vec![(7, Change::Update(rec("away")))],
            t,
            &mut fx,
        );
        assert_eq!(changes(&fx), vec![(8, "offline"), (7, "update")]);
        assert_eq!(m.remote_entries(), 1);
    }

    #[test]
    fn a_gap_asks_for_a_snapshot_which_replaces_the_node_state() {
        let t = Instant::now();
        let mut m = Membership::new("me", HB);
        let mut fx = Effects::default();
        m.on_snapshot(
            "b",
            1,
            1,
            vec![(1, rec("online")), (2, rec("online"))],
            t,
            &mut fx,
        );
        let mut fx = Effects::default();
        m.on_presence(
            "b",
            1,
            3,
            vec![(3, Change::Online(rec("online")))],
            t,
            &mut fx,
        );
        assert_eq!(fx.sync_requests.len(), 1);
        assert!(fx.presence.is_empty());
        // Heartbeats while unsynced do not repeat the request within one interval.
        m.on_heartbeat("b", 1, 3, 100, t + HB / 2, &mut fx);
        assert_eq!(fx.sync_requests.len(), 1);
        m.on_heartbeat("b", 1, 3, 100, t + HB * 2, &mut fx);
        assert_eq!(fx.sync_requests.len(), 2);
        let mut fx = Effects::default();
        m.on_snapshot(
            "b",
            1,
            3,
            vec![(2, rec("away")), (3, rec("online"))],
            t,
            &mut fx,
        );
        assert_eq!(
            changes(&fx),
            vec![(2, "update"), (3, "online"), (1, "offline")]
        );
    }

    #[test]
    fn a_silent_node_dies_once_after_two_and_a_half_intervals() {
        let t = Instant::now();
        let mut m = Membership::new("me", HB);
        let mut fx = Effects::default();
        m.on_snapshot(
            "b",
            1,
            1,
            vec![(1, rec("online")), (2, rec("online"))],
            t,
            &mut fx,
        );
        m.on_heartbeat("b", 1, 1, 100, t, &mut fx);
        let mut fx = Effects::default();
        m.expire(t + HB * 2, &mut fx);
        assert!(fx.presence.is_empty());
        m.expire(t + HB * 5 / 2, &mut fx);
        assert_eq!(changes(&fx), vec![(1, "offline"), (2, "offline")]);
        assert_eq!(fx.dead, vec![Box::from("b")]);
        let mut fx = Effects::default();
        m.expire(t + HB * 10, &mut fx);
        assert!(fx.presence.is_empty() && fx.dead.is_empty());
        assert!(m.is_empty());
    }

    #[test]
    fn a_restart_under_the_same_id_drops_the_old_users() {
        let t = Instant::now();
        let mut m = Membership::new("me", HB);
        let mut fx = Effects::default();
        m.on_snapshot("b", 1, 4, vec![(1, rec("online"))], t, &mut fx);
        let mut fx = Effects::default();
        m.on_heartbeat("b", 2, 0, 100, t, &mut fx);
        assert_eq!(changes(&fx), vec![(1, "offline")]);
        assert_eq!(fx.sync_requests.len(), 1);
    }

    #[test]
    fn bye_and_own_messages() {
        let t = Instant::now();
        let mut m = Membership::new("me", HB);
        let mut fx = Effects::default();
        m.on_snapshot("me", 1, 1, vec![(1, rec("online"))], t, &mut fx);
        m.on_heartbeat("me", 1, 1, 100, t, &mut fx);
        assert!(m.is_empty() && fx.presence.is_empty());
        m.on_snapshot("b", 1, 1, vec![(1, rec("online"))], t, &mut fx);
        let mut fx = Effects::default();
        m.on_bye("b", 2, &mut fx);
        assert!(
            fx.presence.is_empty(),
            "a bye from another incarnation is ignored"
        );
        m.on_bye("b", 1, &mut fx);
        assert_eq!(changes(&fx), vec![(1, "offline")]);
    }
}
