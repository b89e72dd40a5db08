//! Generation-tagged connection keys (h2's ABA guard).
//!
//! A `ConnKey` packs the slab index and a per-shard generation into one `u64`, which is also
//! the `mio::Token`. Every readiness event, timer entry and cross-shard delivery carries a key;
//! the shard checks the generation against the slot's before touching it, so a message meant
//! for a closed connection can never reach a newer connection that reused the slot.

/// Identifies one connection on one shard for its whole life.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnKey(u64);

/// Tokens at the top of the range are reserved for the shard's own sources; generation
/// `u32::MAX` is never handed out, so no connection key can collide with them.
pub(crate) const LISTENER_TOKEN: mio::Token = mio::Token(usize::MAX - 1);
pub(crate) const WAKER_TOKEN: mio::Token = mio::Token(usize::MAX - 2);

impl ConnKey {
    pub(crate) fn new(index: usize, generation: u32) -> Self {
        debug_assert!(index <= u32::MAX as usize);
        ConnKey(((generation as u64) << 32) | index as u64)
    }

    /// Slot index in the shard's slab.
    pub fn index(self) -> usize {
        (self.0 & 0xFFFF_FFFF) as usize
    }

    /// Generation of the slot when the connection was created.
    pub fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub(crate) fn token(self) -> mio::Token {
        mio::Token(self.0 as usize)
    }

    pub(crate) fn from_token(token: mio::Token) -> Self {
        ConnKey(token.0 as u64)
    }

    /// Raw packed value (for logs and metrics).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

/// Hands out generations; skips the values that would alias the reserved tokens.
#[derive(Debug, Default)]
pub(crate) struct Generations(u32);

impl Generations {
    pub(crate) fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_add(1);
        if self.0 == u32::MAX || self.0 == 0 {
            self.0 = 1;
        }
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_unpacks() {
        let k = ConnKey::new(123_456, 0xDEAD_BEEF);
        assert_eq!(k.index(), 123_456);
        assert_eq!(k.generation(), 0xDEAD_BEEF);
        assert_eq!(ConnKey::from_token(k.token()), k);
    }

    #[test]
    fn reused_slot_gets_a_different_key() {
        let mut g = Generations::default();
        let a = ConnKey::new(7, g.next());
        let b = ConnKey::new(7, g.next());
        assert_ne!(a, b);
    }

    #[test]
    fn generations_never_alias_reserved_tokens() {
        let mut g = Generations(u32::MAX - 2);
        for _ in 0..4 {
            let k = ConnKey::new(u32::MAX as usize, g.next());
            assert_ne!(k.token(), LISTENER_TOKEN);
            assert_ne!(k.token(), WAKER_TOKEN);
            assert_ne!(k.generation(), u32::MAX);
        }
    }
}
