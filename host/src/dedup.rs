//! Duplicate deliveries: the same `event_id` arriving again (a producer retry, a re-sent batch)
//! counts once in the metrics. The copy is still written to `campaign_events` (every message is
//! accounted for) with `is_duplicate = true`.
//!
//! Each remembered id is a 64-bit xxh3 hash of the id mapped to where it was first seen
//! (partition, offset) and the minute of its event time. "Seen first at the same coordinates"
//! is how a replay after a restart tells the original (replayed) from a copy. Ids are forgotten
//! once their event time is older than `watermark − horizon`.
//!
//! Memory: one table slot is 24 B (8 B key + 16 B value) plus 1 control byte; the table is
//! between 44 % and 88 % full, so an id costs 28–57 B, ~40 B on average (`bytes_estimate`).
//! A 24 h horizon at 1 000 events/s is 86.4M ids ≈ 3.5 GB: `max_ids` caps the table, and when
//! it is full the oldest minutes are forgotten first (the effective horizon shrinks; counted in
//! `evicted` and logged).
//!
//! Hash collisions: two different ids with the same 64-bit hash would drop a real event as a
//! copy; with n ids remembered the chance of any collision is about n² / 2⁶⁵ (3·10⁻⁶ at 10M).

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Keys are already xxh3 hashes: the table uses them as they are.
#[derive(Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, _: &[u8]) {
        unreachable!("only u64 keys")
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    partition: i32,
    minute: i32,
    offset: i64,
}

/// What [`SeenIds::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Not seen within the horizon (or seen at exactly these coordinates: a replay).
    First,
    /// Seen before at other coordinates.
    Duplicate,
}

pub struct SeenIds {
    ids: HashMap<u64, Seen, BuildHasherDefault<IdentityHasher>>,
    /// Ids per event-time minute: what to forget first.
    per_minute: BTreeMap<i32, u64>,
    horizon_min: i32,
    max_ids: usize,
    /// Ids forgotten before their horizon because the table was full.
    pub evicted: u64,
    enabled: bool,
}

pub fn hash_id(id: &str) -> u64 {
    twox_hash::XxHash3_64::oneshot(id.as_bytes())
}

impl SeenIds {
    /// `horizon_secs == 0` disables deduplication.
    pub fn new(horizon_secs: u64, max_ids: usize) -> Self {
        SeenIds {
            ids: HashMap::default(),
            per_minute: BTreeMap::new(),
            horizon_min: (horizon_secs / 60).max(1).min(i32::MAX as u64) as i32,
            max_ids: max_ids.max(1),
            evicted: 0,
            enabled: horizon_secs > 0,
        }
    }

    /// How far back in event time (ms before the watermark) ids are remembered; `None` when off.
    pub fn horizon_ms(&self) -> Option<i64> {
        self.enabled.then_some(self.horizon_min as i64 * 60_000)
    }

    /// Records a delivery of `id_hash` at (partition, offset) with event time `time_ms`.
    #[inline]
    pub fn check(&mut self, id_hash: u64, partition: i32, offset: i64, time_ms: i64) -> Delivery {
        if !self.enabled {
            return Delivery::First;
        }
        let minute = time_ms
            .div_euclid(60_000)
            .clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        match self.ids.entry(id_hash) {
            std::collections::hash_map::Entry::Occupied(e) => {
                let s = e.get();
                if s.partition == partition && s.offset == offset {
                    Delivery::First
                } else {
                    Delivery::Duplicate
                }
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Seen {
                    partition,
                    minute,
                    offset,
                });
                *self.per_minute.entry(minute).or_default() += 1;
                if self.ids.len() > self.max_ids {
                    self.evict_to(self.max_ids - self.max_ids / 10);
                }
                Delivery::First
            }
        }
    }

    /// Remembers an id already committed (loaded from `campaign_events` at start-up).
    pub fn remember(&mut self, id_hash: u64, partition: i32, offset: i64, time_ms: i64) {
        let _ = self.check(id_hash, partition, offset, time_ms);
    }

    /// Forgets ids whose event time is older than `watermark − horizon`. Cheap when there is
    /// nothing to forget; otherwise one pass over the table.
    pub fn expire(&mut self, watermark_ms: i64) {
        if !self.enabled || watermark_ms == i64::MIN {
            return;
        }
        let cutoff = (watermark_ms.div_euclid(60_000) - self.horizon_min as i64)
            .clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        if self
            .per_minute
            .first_key_value()
            .is_some_and(|(&m, _)| m < cutoff)
        {
            self.forget_before(cutoff);
        }
    }

    fn evict_to(&mut self, target: usize) {
        let mut keep = self.ids.len() as u64;
        let mut cutoff = i32::MIN;
        for (&m, &n) in &self.per_minute {
            if keep <= target as u64 {
                break;
            }
            keep -= n;
            cutoff = m + 1;
        }
        let before = self.ids.len();
        self.forget_before(cutoff);
        self.evicted += (before - self.ids.len()) as u64;
        tracing::warn!(
            remembered = self.ids.len(),
            max_ids = self.max_ids,
            forgot_before_minute = cutoff,
            "dedup table full: forgot the oldest ids early (raise dedup.max_ids or shorten dedup.horizon_secs)"
        );
    }

    fn forget_before(&mut self, cutoff: i32) {
        self.ids.retain(|_, s| s.minute >= cutoff);
        self.per_minute = self.per_minute.split_off(&cutoff);
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Heap bytes held by the table (slots + control bytes).
    pub fn bytes_estimate(&self) -> usize {
        self.ids.capacity() * (std::mem::size_of::<(u64, Seen)>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_a_duplicate_and_a_replay_of_the_original_is_not() {
        let mut s = SeenIds::new(3600, 1000);
        let id = hash_id("e-1");
        assert_eq!(s.check(id, 0, 10, 60_000), Delivery::First);
        assert_eq!(s.check(id, 0, 11, 60_000), Delivery::Duplicate);
        assert_eq!(s.check(id, 2, 10, 60_000), Delivery::Duplicate);
        // The original delivered again at its own coordinates: a replay after a restart.
        assert_eq!(s.check(id, 0, 10, 60_000), Delivery::First);
        assert_eq!(s.check(hash_id("e-2"), 0, 12, 60_000), Delivery::First);
    }

    #[test]
    fn ids_older_than_the_horizon_are_forgotten() {
        let mut s = SeenIds::new(600, 1000); // 10 minutes
        s.check(hash_id("old"), 0, 1, 0);
        s.check(hash_id("new"), 0, 2, 9 * 60_000);
        s.expire(10 * 60_000);
        assert_eq!(s.len(), 2);
        s.expire(11 * 60_000);
        assert_eq!(s.len(), 1);
        assert_eq!(s.check(hash_id("old"), 0, 3, 0), Delivery::First);
        assert_eq!(s.check(hash_id("new"), 0, 4, 0), Delivery::Duplicate);
    }

    #[test]
    fn a_full_table_forgets_the_oldest_minutes_first() {
        let mut s = SeenIds::new(86_400, 100);
        for i in 0..101 {
            s.check(hash_id(&format!("e{i}")), 0, i, i * 60_000);
        }
        assert!(s.len() <= 100 && s.len() >= 80, "{}", s.len());
        assert!(s.evicted > 0);
        assert_eq!(s.check(hash_id("e100"), 0, 999, 0), Delivery::Duplicate);
        assert_eq!(s.check(hash_id("e0"), 0, 999, 0), Delivery::First);
    }

    #[test]
    fn disabled_remembers_nothing() {
        let mut s = SeenIds::new(0, 10);
        assert_eq!(s.check(1, 0, 1, 0), Delivery::First);
        assert_eq!(s.check(1, 0, 2, 0), Delivery::First);
        assert!(s.is_empty());
    }

    #[test]
    fn memory_per_id_is_as_documented() {
        let mut s = SeenIds::new(86_400, usize::MAX);
        for i in 0..1_000_000i64 {
            s.check(hash_id(&format!("s1-{i:012}")), (i % 4) as i32, i, i);
        }
        let per_id = s.bytes_estimate() as f64 / s.len() as f64;
        assert!((28.0..=57.0).contains(&per_id), "{per_id} B per id");
    }
}
