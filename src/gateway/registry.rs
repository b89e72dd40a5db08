//! Users whose home is this shard, and their connections.
//!
//! Routing design: a user's home shard is `user_id % shards`. After authentication every
//! connection is handed to its user's home shard, so all of a user's connections, its rate
//! limiter and its presence state live on one shard: finding a user is one hash lookup on a
//! known shard, and a P2P delivery is at most one cross-shard hop.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use smallvec::SmallVec;

use crate::auth::UserId;
use crate::ratelimit::TokenBucket;
use crate::shard::ConnKey;

/// A map keyed by user id with [`UserIdHasher`].
pub type UserMap<V> = HashMap<u64, V, BuildHasherDefault<UserIdHasher>>;

/// The hasher of the user-id maps: one multiply (FxHash's constant) and a rotation, instead
/// of SipHash-1-3 (about 6 % of a P2P delivery's instructions went to SipHash). SipHash's
/// flood resistance is not needed here: user ids are the `sub` of tokens this gateway
/// verified, so only the token issuer chooses them. The rotation moves the well-mixed high
/// bits of the product down to where hashbrown picks the bucket, so ids that share low
/// bits (every id homed on one shard of several does) still spread over all buckets.
#[derive(Default, Clone, Copy)]
pub struct UserIdHasher(u64);

impl Hasher for UserIdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(K);
    }

    fn finish(&self) -> u64 {
        self.0.rotate_left(26)
    }
}

/// The shard that owns every connection of `user`.
pub fn home_shard(user: u64, shards: usize) -> usize {
    (user % shards as u64) as usize
}

/// A status and its raw JSON context.
pub type TargetedPresence = (Box<str>, Option<Box<[u8]>>);

/// A user with at least one open connection on this (its home) shard.
pub struct LocalUser {
    /// Oldest first; the oldest is replaced when the per-user limit is reached.
    pub conns: SmallVec<[ConnKey; 2]>,
    pub name: Box<str>,
    pub roles: Vec<Box<str>>,
    pub bucket: TokenBucket,
    /// The public status and context (raw JSON) last announced: what `get_presence` shows.
    /// This shard's presence replica holds no record for its own users; the registry is it.
    pub status: Box<str>,
    pub context: Option<Box<[u8]>>,
    /// A public status and context reported but not announced yet (coalescing): they become
    /// `status` and `context` when the pending emission goes out.
    pub unannounced: Option<Box<TargetedPresence>>,
    /// The name in the last public announcement, when a later connection's token carried
    /// another name (`name` is the latest, for `whoami` and `data_event`).
    pub announced_name: Option<Box<str>>,
    /// Latest status and context sent to one user only (`targetUserId`): delivered to that
    /// user, never recorded as the public presence (get_presence must not leak it).
    pub targeted: Option<Box<TargetedPresence>>,
    /// Unix ms when the user came online.
    pub since_ms: u64,
    /// When the last presence event was emitted (coalescing), ms since the shard epoch.
    pub last_presence_ms: Option<u32>,
    /// Coalesced updates waiting to be emitted.
    pub presence_pending: Option<PendingPresence>,
}

/// What a coalesced emission must announce. The public status and a targeted one are
/// tracked apart: a targeted update must not cancel a public one still waiting (the
/// replicas would keep the older status for good).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingPresence {
    /// The public status changed: announce it to everyone.
    pub public: bool,
    /// The latest targeted update's target.
    pub target: Option<u64>,
}

impl LocalUser {
    /// The name the user's public presence record shows.
    pub fn public_name(&self) -> &str {
        self.announced_name.as_deref().unwrap_or(&self.name)
    }
}

/// Users homed on this shard.
#[derive(Default)]
pub struct Registry {
    users: UserMap<LocalUser>,
}

impl Registry {
    pub fn get(&self, user: UserId) -> Option<&LocalUser> {
        self.users.get(&user.0)
    }

    pub fn get_mut(&mut self, user: UserId) -> Option<&mut LocalUser> {
        self.users.get_mut(&user.0)
    }

    pub fn insert(&mut self, user: UserId, entry: LocalUser) {
        self.users.insert(user.0, entry);
    }

    pub fn remove(&mut self, user: UserId) -> Option<LocalUser> {
        self.users.remove(&user.0)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Every user homed here, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &LocalUser)> {
        self.users.iter().map(|(id, u)| (*id, u))
    }

    /// Connections of `user` on this shard (empty if none).
    pub fn conns(&self, user: u64) -> &[ConnKey] {
        self.users.get(&user).map_or(&[], |u| &u.conns[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_id_hash_spreads_ids_with_equal_low_bits() {
        use std::hash::BuildHasher;
        let build = BuildHasherDefault::<UserIdHasher>::default();
        // Ids homed on shard 0 of 8: all multiples of 8. The low 10 bits of their hashes
        // (a 1024-bucket table) must still take many values.
        let mut buckets = std::collections::HashSet::new();
        for id in (8..8 * 1024).step_by(8) {
            buckets.insert(build.hash_one(id as u64) & 1023);
        }
        assert!(buckets.len() > 600, "{} buckets used", buckets.len());
        let mut map = UserMap::default();
        for id in 1..=1000u64 {
            map.insert(id * 8, id);
        }
        assert!((1..=1000u64).all(|id| map.get(&(id * 8)) == Some(&id)));
    }

    #[test]
    fn home_shard_spreads_users() {
        assert_eq!(home_shard(1, 2), 1);
        assert_eq!(home_shard(2, 2), 0);
        assert_eq!(home_shard(7, 1), 0);
    }
}
