//! Presence as every shard sees it.
//!
//! A user's presence is decided on its home shard (the only shard holding its connections)
//! and announced to every other shard through the ordered SPSC queues; each shard keeps this
//! replica of all online users, so `get_presence` is answered locally without a scatter-gather.
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

    /// Every online user, sorted by id (stable answers for clients and tests).
    pub fn sorted(&self) -> Vec<(u64, &PresenceRecord)> {
        let mut v: Vec<_> = self.users.iter().map(|(k, r)| (*k, r)).collect();
        v.sort_unstable_by_key(|(k, _)| *k);
        v
    }
}
