//! Presence as every shard sees it.
//!
//! A user's presence is decided on its home shard (the only shard holding its connections)
//! and announced to every other shard through the ordered SPSC queues; each shard keeps this
//! replica of the online users homed on the *other* shards, so `get_presence` is answered
//! locally without a scatter-gather. Users homed on this shard are answered from its
//! registry, which holds their last announced status: a record for them here would duplicate
//! it (at one shard, the replica was 40 % of the memory of an idle authenticated connection).
//! The exception is a user homed here whose last announced record came from another cluster
//! node: that record is kept here until a local announcement or the offline replaces it.
//! Because every update for one user comes from one shard through FIFO queues, replicas apply
//! a user's updates in the same order everywhere; a user is removed from every replica by the
//! offline update its home shard sends when its last connection closes.

use super::registry::UserMap;

/// One online user in the replica (and, in cluster mode, on the wire between nodes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceRecord {
    pub username: Box<str>,
    pub status: Box<str>,
    /// Raw JSON of the last reported context.
    pub context: Option<Box<[u8]>>,
    /// Unix ms when the user came online.
    pub since_ms: u64,
}

/// All online users, as announced by their home shards.
#[derive(Default)]
pub struct PresenceBook {
    users: UserMap<PresenceRecord>,
}

impl PresenceBook {
    pub fn upsert(&mut self, user: u64, record: PresenceRecord) {
        self.users.insert(user, record);
    }

    pub fn remove(&mut self, user: u64) {
        self.users.remove(&user);
    }

    pub fn get(&self, user: u64) -> Option<&PresenceRecord> {
        self.users.get(&user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, user: u64) -> bool {
        self.users.contains_key(&user)
    }

    /// Every record, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &PresenceRecord)> {
        self.users.iter().map(|(k, r)| (*k, r))
    }
}
