//! A map from user id to a value, laid out for memory per online user.
//!
//! The values sit in a slab (its pages are touched only as it fills) and the index is a hash
//! table of 4-byte slab indices whose keys are read back from the slab. A
//! `HashMap<u64, V>` spends a whole `(u64, V)` entry on every bucket, and hashbrown keeps up
//! to half of its buckets empty after a resize: at 19,000 users an 80-byte value cost
//! 153 B per user that way, this costs the entry (id + value) plus ≈ 5–10 B of index. A
//! lookup costs one more dependent load (the key comparison reads the entry, which the
//! caller reads next anyway).

use std::hash::{BuildHasher, BuildHasherDefault};

use hashbrown::HashTable;
use slab::Slab;

use super::registry::UserIdHasher;

/// Values keyed by user id (see the module documentation).
pub struct DenseMap<V> {
    entries: Slab<Entry<V>>,
    index: HashTable<u32>,
}

/// A slot: the value and its id (the index stores only the slot number).
struct Entry<V> {
    id: u64,
    value: V,
}

impl<V> Default for DenseMap<V> {
    fn default() -> Self {
        DenseMap {
            entries: Slab::new(),
            index: HashTable::new(),
        }
    }
}

fn hash_id(id: u64) -> u64 {
    BuildHasherDefault::<UserIdHasher>::default().hash_one(id)
}

impl<V> DenseMap<V> {
    fn slot(&self, id: u64) -> Option<usize> {
        let entries = &self.entries;
        self.index
            .find(hash_id(id), |&i| entries[i as usize].id == id)
            .map(|&i| i as usize)
    }

    pub fn get(&self, id: u64) -> Option<&V> {
        let i = self.slot(id)?;
        Some(&self.entries[i].value)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut V> {
        let i = self.slot(id)?;
        Some(&mut self.entries[i].value)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.slot(id).is_some()
    }

    /// Inserts or replaces `id`'s value; returns the value replaced.
    pub fn insert(&mut self, id: u64, value: V) -> Option<V> {
        if let Some(i) = self.slot(id) {
            return Some(std::mem::replace(&mut self.entries[i].value, value));
        }
        let slot = self.entries.insert(Entry { id, value });
        let slot = u32::try_from(slot).expect("more than 4 billion users on one shard");
        let entries = &self.entries;
        self.index
            .insert_unique(hash_id(id), slot, |&i| hash_id(entries[i as usize].id));
        None
    }

    pub fn remove(&mut self, id: u64) -> Option<V> {
        let entries = &self.entries;
        let found = self
            .index
            .find_entry(hash_id(id), |&i| entries[i as usize].id == id)
            .ok()?;
        let (slot, _) = found.remove();
        Some(self.entries.remove(slot as usize).value)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &V)> {
        self.entries.iter().map(|(_, e)| (e.id, &e.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_values_through_removals_and_slot_reuse() {
        let mut map = DenseMap::default();
        // Ids sharing their low bits, as every id homed on one shard of eight does.
        let ids: Vec<u64> = (1..=3000u64).map(|i| i * 8).collect();
        for (n, &id) in ids.iter().enumerate() {
            assert_eq!(map.insert(id, format!("u{n}")), None);
        }
        // Remove every other id; their slots are reused by new ids below.
        for &id in ids.iter().step_by(2) {
            assert!(map.remove(id).is_some());
            assert!(map.remove(id).is_none(), "removed twice");
        }
        for i in 0..1500u64 {
            map.insert(1_000_000 + i, format!("n{i}"));
        }
        assert_eq!(map.len(), 3000);
        for (n, &id) in ids.iter().enumerate() {
            let got = map.get(id).cloned();
            if n % 2 == 0 {
                assert_eq!(got, None, "id {id}");
                assert!(!map.contains(id));
            } else {
                assert_eq!(got, Some(format!("u{n}")), "id {id}");
            }
        }
        for i in 0..1500u64 {
            assert_eq!(map.get(1_000_000 + i).unwrap(), &format!("n{i}"));
        }
        // Inserting an id already present replaces its value in place.
        assert_eq!(map.insert(16, "again".into()), Some("u1".into()));
        map.get_mut(16).unwrap().push('!');
        assert_eq!(map.len(), 3000);
        assert_eq!(map.get(16).unwrap(), "again!");
        let mut seen: Vec<u64> = map.iter().map(|(id, _)| id).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 3000);
        for id in seen {
            assert!(map.remove(id).is_some());
        }
        assert!(map.is_empty());
    }
}
