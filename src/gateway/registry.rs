//! Users whose home is this shard, and their connections.
//!
//! Routing design: a user's home shard is `user_id % shards`. After authentication every
//! connection is handed to its user's home shard, so all of a user's connections, its rate
//! limiter and its presence state live on one shard: finding a user is one hash lookup on a
//! known shard, and a P2P delivery is at most one cross-shard hop.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use super::dense_map::DenseMap;
use super::inline_str::InlineStr;
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

/// The status of a user who never set one.
pub const DEFAULT_STATUS: &str = "online";

/// A user with at least one open connection on this (its home) shard.
///
/// There is one per online user, and an idle one is most of the memory of an idle
/// authenticated connection beyond the runtime's slot (target: 256 B per connection all
/// included), so it is laid out for that case: the name inline, one connection inline, role
/// lists shared, and everything a user who never set a status does not need (status, context,
/// coalescing state, targeted presence) behind one optional box. `size_of` is pinned by a
/// test; the map's entry is this plus the 8-byte key.
pub struct LocalUser {
    conns: ConnList,
    /// The latest token's `name` claim (`whoami`, `data_event`).
    name: InlineStr,
    roles: Option<Arc<RoleList>>,
    pub bucket: TokenBucket,
    /// Unix ms when the user came online.
    pub since_ms: u64,
    /// When the last presence event was emitted (coalescing), ms since the shard epoch;
    /// valid when `flags` has [`user_flag::LAST_PRESENCE`].
    last_presence_ms: u32,
    flags: u8,
    extras: Option<Box<Extras>>,
}

mod user_flag {
    /// `last_presence_ms` is set.
    pub const LAST_PRESENCE: u8 = 1;
    /// A coalesced emission is queued.
    pub const PENDING: u8 = 1 << 1;
    /// ... and the public status changed: announce it to everyone.
    pub const PENDING_PUBLIC: u8 = 1 << 2;
}

/// The usually empty parts of a [`LocalUser`]; the box is freed when they all are.
#[derive(Default)]
struct Extras {
    /// The public status and context last announced (what `get_presence` shows); `None` is
    /// [`DEFAULT_STATUS`] without context.
    status: Option<TargetedPresence>,
    /// A public status and context reported but not announced yet (coalescing): they become
    /// `status` when the pending emission goes out.
    unannounced: Option<TargetedPresence>,
    /// Latest status and context sent to one user only (`targetUserId`): delivered to that
    /// user, never recorded as the public presence (get_presence must not leak it).
    targeted: Option<TargetedPresence>,
    /// The latest coalesced targeted update's target.
    pending_target: Option<u64>,
    /// The name in the last public announcement, when a later connection's token carried
    /// another name.
    announced_name: Option<Box<str>>,
}

impl Extras {
    fn is_empty(&self) -> bool {
        self.status.is_none()
            && self.unannounced.is_none()
            && self.targeted.is_none()
            && self.pending_target.is_none()
            && self.announced_name.is_none()
    }
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
    /// A user that just came online with its first connection, status [`DEFAULT_STATUS`].
    pub fn new(conn: ConnKey, name: Box<str>, bucket: TokenBucket, since_ms: u64) -> Self {
        LocalUser {
            conns: ConnList::One(conn),
            name: name.into(),
            roles: None,
            bucket,
            since_ms,
            last_presence_ms: 0,
            flags: 0,
            extras: None,
        }
    }

    /// Oldest first.
    pub fn conns(&self) -> &[ConnKey] {
        self.conns.as_slice()
    }

    pub fn conns_mut(&mut self) -> &mut ConnList {
        &mut self.conns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as stored (for writers that take its bytes without re-checking them).
    pub fn name_text(&self) -> &InlineStr {
        &self.name
    }

    /// A new connection's `name` claim; the public record keeps the announced name until
    /// the next public announcement.
    pub fn set_name(&mut self, name: Box<str>) {
        if *self.name == *name {
            return;
        }
        let previous = std::mem::replace(&mut self.name, name.into());
        let extras = self.extras.get_or_insert_with(Default::default);
        if extras.announced_name.is_none() {
            extras.announced_name = Some(previous.as_str().into());
        }
        self.tidy();
    }

    /// The name the user's public presence record shows.
    pub fn public_name(&self) -> &str {
        self.extras
            .as_ref()
            .and_then(|e| e.announced_name.as_deref())
            .unwrap_or(&self.name)
    }

    pub fn roles(&self) -> &[Box<str>] {
        self.roles.as_deref().map_or(&[], |r| &r[..])
    }

    /// The public status last announced.
    pub fn status(&self) -> &str {
        self.public().map_or(DEFAULT_STATUS, |p| &p.0)
    }

    /// The context (raw JSON) last announced.
    pub fn context(&self) -> Option<&[u8]> {
        self.public().and_then(|p| p.1.as_deref())
    }

    fn public(&self) -> Option<&TargetedPresence> {
        self.extras.as_ref().and_then(|e| e.status.as_ref())
    }

    /// The latest targeted status and context, if any.
    pub fn targeted(&self) -> Option<&TargetedPresence> {
        self.extras.as_ref().and_then(|e| e.targeted.as_ref())
    }

    pub fn set_targeted(&mut self, status: Box<str>, context: Option<Box<[u8]>>) {
        self.extras.get_or_insert_with(Default::default).targeted = Some((status, context));
    }

    /// A public status to announce later (coalescing); `status()` keeps the announced one.
    pub fn set_unannounced(&mut self, status: Box<str>, context: Option<Box<[u8]>>) {
        self.extras.get_or_insert_with(Default::default).unannounced = Some((status, context));
    }

    /// A public status about to be announced now: it replaces the announced one (and any
    /// older unannounced one).
    pub fn set_status(&mut self, status: Box<str>, context: Option<Box<[u8]>>) {
        let extras = self.extras.get_or_insert_with(Default::default);
        extras.unannounced = None;
        extras.status =
            (&*status != DEFAULT_STATUS || context.is_some()).then_some((status, context));
        self.tidy();
    }

    /// A public announcement goes out now: the unannounced status (if any) and the latest
    /// name become the public record.
    pub fn publish(&mut self) {
        if let Some(extras) = &mut self.extras {
            if let Some((status, context)) = extras.unannounced.take() {
                extras.status =
                    (&*status != DEFAULT_STATUS || context.is_some()).then_some((status, context));
            }
            extras.announced_name = None;
        }
        self.tidy();
    }

    pub fn last_presence_ms(&self) -> Option<u32> {
        (self.flags & user_flag::LAST_PRESENCE != 0).then_some(self.last_presence_ms)
    }

    pub fn set_last_presence_ms(&mut self, ms: u32) {
        self.last_presence_ms = ms;
        self.flags |= user_flag::LAST_PRESENCE;
    }

    /// Whether a coalesced emission is queued.
    pub fn has_pending(&self) -> bool {
        self.flags & user_flag::PENDING != 0
    }

    /// The user a queued targeted update is for, if one is queued.
    pub fn pending_target(&self) -> Option<u64> {
        self.extras.as_ref().and_then(|e| e.pending_target)
    }

    /// Drops the queued targeted update (it is being emitted now instead).
    pub fn clear_pending_target(&mut self) {
        if let Some(e) = self.extras.as_mut() {
            e.pending_target = None;
        }
    }

    /// Adds an update to the queued emission: public (`None`) or for `target`.
    pub fn add_pending(&mut self, target: Option<u64>) {
        self.flags |= user_flag::PENDING;
        match target {
            None => self.flags |= user_flag::PENDING_PUBLIC,
            Some(t) => {
                self.extras
                    .get_or_insert_with(Default::default)
                    .pending_target = Some(t)
            }
        }
    }

    /// What the queued emission must announce (and nothing is queued any more).
    pub fn take_pending(&mut self) -> Option<PendingPresence> {
        if !self.has_pending() {
            return None;
        }
        let public = self.flags & user_flag::PENDING_PUBLIC != 0;
        self.flags &= !(user_flag::PENDING | user_flag::PENDING_PUBLIC);
        let target = self.extras.as_mut().and_then(|e| e.pending_target.take());
        self.tidy();
        Some(PendingPresence { public, target })
    }

    /// Frees the extras once they are all empty again.
    fn tidy(&mut self) {
        if self.extras.as_ref().is_some_and(|e| e.is_empty()) {
            self.extras = None;
        }
    }
}

/// A user's connections on its home shard, oldest first: one inline (the common case),
/// more in a boxed `Vec` (8 bytes smaller than a two-slot `SmallVec` in every user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnList {
    Empty,
    One(ConnKey),
    #[allow(clippy::box_collection)] // a thin pointer: the variant stays 8 bytes
    Many(Box<Vec<ConnKey>>),
}

impl ConnList {
    pub fn as_slice(&self) -> &[ConnKey] {
        match self {
            ConnList::Empty => &[],
            ConnList::One(k) => std::slice::from_ref(k),
            ConnList::Many(v) => v,
        }
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_slice().is_empty()
    }

    /// Appends `key` (the newest).
    pub fn push(&mut self, key: ConnKey) {
        match self {
            ConnList::Empty => *self = ConnList::One(key),
            ConnList::One(k) => *self = ConnList::Many(Box::new(vec![*k, key])),
            ConnList::Many(v) => v.push(key),
        }
    }

    /// Removes and returns the oldest connection.
    pub fn remove_oldest(&mut self) -> Option<ConnKey> {
        let oldest = *self.as_slice().first()?;
        self.remove(oldest);
        Some(oldest)
    }

    /// Removes `key` if present, keeping the others' order.
    pub fn remove(&mut self, key: ConnKey) {
        match self {
            ConnList::Empty => {}
            ConnList::One(k) => {
                if *k == key {
                    *self = ConnList::Empty;
                }
            }
            ConnList::Many(v) => {
                v.retain(|k| *k != key);
                match v.len() {
                    0 => *self = ConnList::Empty,
                    1 => *self = ConnList::One(v[0]),
                    _ => {}
                }
            }
        }
    }
}

/// A token's `roles` claim, shared by every user with the same list.
pub type RoleList = Vec<Box<str>>;

/// Role lists in use on the shard: users with equal lists share one allocation (most
/// deployments have a handful of distinct lists, and a per-user copy costs a heap chunk per
/// role plus one for the list). A list is dropped with its last user.
#[derive(Default)]
struct RoleSets {
    lists: HashSet<Arc<RoleList>>,
}

impl RoleSets {
    fn intern(&mut self, roles: RoleList) -> Option<Arc<RoleList>> {
        if roles.is_empty() {
            return None;
        }
        if let Some(shared) = self.lists.get(&roles) {
            return Some(shared.clone());
        }
        let shared = Arc::new(roles);
        self.lists.insert(shared.clone());
        Some(shared)
    }

    fn release(&mut self, roles: Option<Arc<RoleList>>) {
        // Two references: the set's and the one released here.
        if let Some(r) = roles.filter(|r| Arc::strong_count(r) == 2) {
            self.lists.remove(&*r);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lists.len()
    }
}

/// Users homed on this shard, in a [`DenseMap`] (one 88-byte entry per user plus a few
/// bytes of index).
#[derive(Default)]
pub struct Registry {
    users: DenseMap<LocalUser>,
    roles: RoleSets,
}

impl Registry {
    pub fn get(&self, user: UserId) -> Option<&LocalUser> {
        self.users.get(user.0)
    }

    pub fn get_mut(&mut self, user: UserId) -> Option<&mut LocalUser> {
        self.users.get_mut(user.0)
    }

    pub fn insert(&mut self, user: UserId, entry: LocalUser) {
        if let Some(old) = self.users.insert(user.0, entry) {
            self.roles.release(old.roles);
        }
    }

    pub fn remove(&mut self, user: UserId) -> Option<LocalUser> {
        let mut gone = self.users.remove(user.0)?;
        self.roles.release(gone.roles.take());
        Some(gone)
    }

    /// Sets `user`'s roles (the latest connection's token claim).
    pub fn set_roles(&mut self, user: UserId, roles: RoleList) {
        let Some(u) = self.users.get_mut(user.0) else {
            return;
        };
        if u.roles() == &roles[..] {
            return;
        }
        let shared = self.roles.intern(roles);
        let old = std::mem::replace(&mut u.roles, shared);
        self.roles.release(old);
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Every user homed here, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &LocalUser)> {
        self.users.iter()
    }

    /// Connections of `user` on this shard (empty if none).
    pub fn conns(&self, user: u64) -> &[ConnKey] {
        self.get(UserId(user)).map_or(&[], |u| u.conns())
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
    fn local_user_stays_small() {
        // 16 (connections) + 24 (name) + 8 (roles) + 8 (bucket) + 8 (since) + 4 + 1 + 8.
        let size = std::mem::size_of::<LocalUser>();
        assert!(size <= 80, "size_of::<LocalUser>() = {size}");
        assert_eq!(std::mem::size_of::<ConnList>(), 16);
    }

    fn key(i: usize) -> ConnKey {
        ConnKey::new(i, 1)
    }

    #[test]
    fn conn_list_keeps_order_and_shrinks_back_inline() {
        let mut l = ConnList::Empty;
        assert!(l.is_empty());
        assert_eq!(l.remove_oldest(), None);
        l.push(key(1));
        assert_eq!(l, ConnList::One(key(1)));
        l.push(key(2));
        l.push(key(3));
        assert_eq!(l.as_slice(), &[key(1), key(2), key(3)]);
        assert_eq!(l.len(), 3);
        l.remove(key(9));
        assert_eq!(l.len(), 3);
        assert_eq!(l.remove_oldest(), Some(key(1)));
        assert_eq!(l.as_slice(), &[key(2), key(3)]);
        l.remove(key(3));
        assert_eq!(l, ConnList::One(key(2)), "one connection goes back inline");
        l.remove(key(7));
        assert_eq!(l, ConnList::One(key(2)));
        l.remove(key(2));
        assert_eq!(l, ConnList::Empty);
    }

    fn user(name: &str) -> LocalUser {
        LocalUser::new(
            key(0),
            name.into(),
            crate::ratelimit::RateLimit::new(1, 1).full(crate::ratelimit::Millis(0)),
            7,
        )
    }

    #[test]
    fn presence_state_lives_in_extras_only_while_needed() {
        let mut u = user("bob");
        assert_eq!(
            (u.name(), u.public_name(), u.status()),
            ("bob", "bob", "online")
        );
        assert!(u.extras.is_none());
        // A coalesced update: announced status unchanged until published.
        u.set_unannounced("away".into(), Some(b"{}".to_vec().into()));
        u.add_pending(None);
        assert_eq!((u.status(), u.context()), ("online", None));
        u.publish();
        assert_eq!((u.status(), u.context()), ("away", Some(&b"{}"[..])));
        assert_eq!(
            u.take_pending(),
            Some(PendingPresence {
                public: true,
                target: None
            })
        );
        assert_eq!(u.take_pending(), None);
        // Back to the default: the box goes away.
        u.set_status("online".into(), None);
        assert!(u.extras.is_none());
        // A new name waits for the next announcement to become public.
        u.set_name("robert".into());
        assert_eq!((u.name(), u.public_name()), ("robert", "bob"));
        u.set_name("bobby".into());
        assert_eq!((u.name(), u.public_name()), ("bobby", "bob"));
        u.publish();
        assert_eq!(u.public_name(), "bobby");
        assert!(u.extras.is_none());
        // Targeted updates and their pending target.
        u.set_targeted("typing".into(), None);
        u.add_pending(Some(5));
        assert_eq!(
            u.take_pending(),
            Some(PendingPresence {
                public: false,
                target: Some(5)
            })
        );
        assert_eq!(u.targeted().map(|t| &*t.0), Some("typing"));
        assert_eq!(u.status(), "online");
        assert_eq!(u.last_presence_ms(), None);
        u.set_last_presence_ms(0);
        assert_eq!(u.last_presence_ms(), Some(0));
    }

    #[test]
    fn equal_role_lists_are_shared_and_dropped_with_their_last_user() {
        let mut reg = Registry::default();
        let roles = |r: &[&str]| r.iter().map(|s| Box::<str>::from(*s)).collect::<RoleList>();
        for id in 1..=3 {
            reg.insert(UserId(id), user("u"));
            reg.set_roles(UserId(id), roles(&["admin", "ops"]));
        }
        reg.insert(UserId(4), user("u"));
        reg.set_roles(UserId(4), roles(&[]));
        assert_eq!(reg.roles.len(), 1);
        let a = reg.get(UserId(1)).unwrap().roles.clone().unwrap();
        let b = reg.get(UserId(3)).unwrap().roles.clone().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        assert_eq!(
            reg.get(UserId(2)).unwrap().roles(),
            &roles(&["admin", "ops"])[..]
        );
        assert!(reg.get(UserId(4)).unwrap().roles().is_empty());
        reg.set_roles(UserId(1), roles(&["ops"]));
        assert_eq!(reg.roles.len(), 2);
        reg.remove(UserId(2));
        reg.remove(UserId(3));
        assert_eq!(
            reg.roles.len(),
            1,
            "the admin+ops list went with its last user"
        );
        reg.set_roles(UserId(1), roles(&[]));
        assert_eq!(reg.roles.len(), 0);
        assert!(reg.get(UserId(1)).unwrap().roles().is_empty());
    }

    #[test]
    fn home_shard_spreads_users() {
        assert_eq!(home_shard(1, 2), 1);
        assert_eq!(home_shard(2, 2), 0);
        assert_eq!(home_shard(7, 1), 0);
    }
}
