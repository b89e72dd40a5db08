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

use super::dense_map::DenseMap;
use super::inline_str::InlineStr;
use super::registry::{TargetedPresence, DEFAULT_STATUS};

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

/// A [`PresenceRecord`] as the replica stores it: every shard holds one per user homed on
/// the other shards, so at S shards a user costs S - 1 of these. 40 bytes and no heap for a
/// name up to 22 bytes and the default status (a `PresenceRecord` is 56 bytes plus two heap
/// strings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaRecord {
    username: InlineStr,
    /// `None`: [`DEFAULT_STATUS`] without context.
    status: Option<Box<TargetedPresence>>,
    since_ms: u64,
}

impl ReplicaRecord {
    pub fn username(&self) -> &str {
        &self.username
    }

    pub fn status(&self) -> &str {
        self.status.as_ref().map_or(DEFAULT_STATUS, |s| &s.0)
    }

    pub fn context(&self) -> Option<&[u8]> {
        self.status.as_ref().and_then(|s| s.1.as_deref())
    }

    pub fn since_ms(&self) -> u64 {
        self.since_ms
    }
}

impl From<PresenceRecord> for ReplicaRecord {
    fn from(r: PresenceRecord) -> Self {
        let default = &*r.status == DEFAULT_STATUS && r.context.is_none();
        ReplicaRecord {
            username: r.username.into(),
            status: (!default).then(|| Box::new((r.status, r.context))),
            since_ms: r.since_ms,
        }
    }
}

/// The online users homed on other shards, as announced by their home shards (see the
/// module documentation for the one exception). A [`DenseMap`]: at S shards every user has a
/// record on S - 1 of them, so the per-record overhead is multiplied by the shard count.
#[derive(Default)]
pub struct PresenceBook {
    users: DenseMap<ReplicaRecord>,
}

impl PresenceBook {
    pub fn upsert(&mut self, user: u64, record: PresenceRecord) {
        self.users.insert(user, record.into());
    }

    pub fn remove(&mut self, user: u64) {
        self.users.remove(user);
    }

    pub fn get(&self, user: u64) -> Option<&ReplicaRecord> {
        self.users.get(user)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn contains(&self, user: u64) -> bool {
        self.users.contains(user)
    }

    /// Every record, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &ReplicaRecord)> {
        self.users.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, status: &str, context: Option<&[u8]>) -> PresenceRecord {
        PresenceRecord {
            username: name.into(),
            status: status.into(),
            context: context.map(Box::from),
            since_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn replica_record_is_small() {
        assert_eq!(std::mem::size_of::<ReplicaRecord>(), 40);
    }

    #[test]
    fn records_read_back_as_announced() {
        let mut book = PresenceBook::default();
        let long = "n".repeat(40);
        let cases = [
            record("bob", "online", None),
            record("", "online", None),
            record("bob", "online", Some(b"{\"a\":1}")),
            record(&long, "away", None),
            record("eve", "typing", Some(b"[]")),
        ];
        for (i, r) in cases.iter().enumerate() {
            book.upsert(i as u64, r.clone());
            let got = book.get(i as u64).unwrap();
            assert_eq!(got.username(), &*r.username);
            assert_eq!(got.status(), &*r.status);
            assert_eq!(got.context(), r.context.as_deref());
            assert_eq!(got.since_ms(), r.since_ms);
        }
        assert!(
            book.get(0).unwrap().status.is_none(),
            "default status: no heap"
        );
        assert!(book.get(2).unwrap().status.is_some(), "a context is kept");
        assert_eq!(book.len(), cases.len());
        book.upsert(0, record("bob", "away", None));
        assert_eq!(book.get(0).unwrap().status(), "away");
        book.remove(0);
        assert!(!book.contains(0) && book.get(0).is_none());
        let mut ids: Vec<u64> = book.iter().map(|(id, _)| id).collect();
        ids.sort_unstable();
        assert_eq!(ids, [1, 2, 3, 4]);
    }
}
