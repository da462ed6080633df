//! Duplicate deliveries: the same `event_id` arriving again (a producer retry, a re-sent batch)
//! counts once in the metrics. The copy is still written to `campaign_events` (every message is
//! accounted for) with `is_duplicate = true`.
//!
//! A remembered id is the 64-bit xxh3 hash of the id, in a hash set, and once more in the list of
//! its event-time minute (what expiry and eviction walk). Ids are forgotten once their event time
//! is older than `watermark − horizon`.
//!
//! After a restart the verdicts of replayed messages (already committed) must repeat what the
//! table says, not be recomputed: the ids and copies of the dedup horizon are loaded from
//! `campaign_events` ([`SeenIds::remember`]), and a replayed message inside that horizon is a
//! duplicate exactly when it was committed as one; older replayed messages (replayed only to
//! rebuild click history) follow the first-seen rule.
//!
//! Memory: 8 B per set slot at 35–70 % load (11–23 B), and 8 B in the minute list (plus `Vec`
//! growth slack): ~20–35 B per id (`bytes_estimate`). A 24 h horizon at
//! 1 000 events/s is 86.4M ids ≈ 2 GB: `max_ids` caps the table, and when it is full the oldest
//! minutes are forgotten first (the effective horizon shrinks; counted in `evicted` and logged).
//!
//! Hash collisions: two different ids with the same 64-bit hash would drop a real event as a
//! copy; with n ids remembered the chance of any collision is about n² / 2⁶⁵ (3·10⁻⁶ at 10M).

use std::collections::BTreeMap;
use std::collections::HashSet;

use std::hash::Hasher;

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

/// A set of 64-bit hashes: open addressing with linear probing over a plain `Vec<u64>` (0 marks
/// an empty slot; the hash 0 is kept in a flag). Why not `HashSet`: at millions of ids every
/// lookup is a cache miss, and hashbrown touches two lines (control bytes, then the slot) where
/// a probe here mostly stays inside one. Load is kept between 35 % and 70 %; deletion shifts the
/// following run back (no tombstones).
#[derive(Default)]
struct HashSet64 {
    slots: Vec<u64>,
    len: usize,
    has_zero: bool,
}

impl HashSet64 {
    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// Inserts `h`; false if it was already there.
    #[inline]
    fn insert(&mut self, h: u64) -> bool {
        if h == 0 {
            return !std::mem::replace(&mut self.has_zero, true);
        }
        if (self.len + 1) * 10 > self.slots.len() * 7 {
            self.grow();
        }
        let mask = self.mask();
        let mut i = (h as usize) & mask;
        loop {
            match self.slots[i] {
                0 => {
                    self.slots[i] = h;
                    self.len += 1;
                    return true;
                }
                x if x == h => return false,
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn remove(&mut self, h: u64) {
        if h == 0 {
            self.has_zero = false;
            return;
        }
        if self.slots.is_empty() {
            return;
        }
        let mask = self.mask();
        let mut i = (h as usize) & mask;
        loop {
            match self.slots[i] {
                0 => return,
                x if x == h => break,
                _ => i = (i + 1) & mask,
            }
        }
        self.len -= 1;
        // Backward-shift deletion: move later members of the run into the hole when their home
        // slot is not cyclically inside (hole, their position].
        let mut hole = i;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let x = self.slots[j];
            if x == 0 {
                break;
            }
            let home = (x as usize) & mask;
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots[hole] = x;
                hole = j;
            }
        }
        self.slots[hole] = 0;
    }

    fn grow(&mut self) {
        let cap = (self.slots.len() * 2).max(1024);
        let old = std::mem::replace(&mut self.slots, vec![0; cap]);
        self.len = 0;
        for h in old.into_iter().filter(|&h| h != 0) {
            let mask = self.mask();
            let mut i = (h as usize) & mask;
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = h;
            self.len += 1;
        }
    }

    fn len(&self) -> usize {
        self.len + self.has_zero as usize
    }

    fn capacity_bytes(&self) -> usize {
        self.slots.len() * 8
    }
}

/// What [`SeenIds::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Not seen within the horizon (or, replayed, committed as the original).
    First,
    /// Seen before (or, replayed, committed as a copy).
    Duplicate,
}

pub struct SeenIds {
    ids: HashSet64,
    /// Ids per event-time minute: what to forget first.
    per_minute: BTreeMap<i32, Vec<u64>>,
    /// (partition, offset) of the copies loaded from `campaign_events` at start-up.
    copies: HashSet<(i32, i64)>,
    /// Event time from which `campaign_events` was loaded (`i64::MAX`: nothing was).
    loaded_since_ms: i64,
    horizon_min: i32,
    max_ids: usize,
    /// Ids forgotten before their horizon because the table was full.
    pub evicted: u64,
    enabled: bool,
}

pub fn hash_id(id: &str) -> u64 {
    twox_hash::XxHash3_64::oneshot(id.as_bytes())
}

fn minute_of(time_ms: i64) -> i32 {
    time_ms
        .div_euclid(60_000)
        .clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

impl SeenIds {
    /// `horizon_secs == 0` disables deduplication.
    pub fn new(horizon_secs: u64, max_ids: usize) -> Self {
        SeenIds {
            ids: HashSet64::default(),
            per_minute: BTreeMap::new(),
            copies: HashSet::new(),
            loaded_since_ms: i64::MAX,
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

    /// A new delivery of `id_hash` with event time `time_ms`: first, or a copy of one seen.
    #[inline]
    pub fn check(&mut self, id_hash: u64, time_ms: i64) -> Delivery {
        if !self.enabled {
            return Delivery::First;
        }
        if !self.ids.insert(id_hash) {
            return Delivery::Duplicate;
        }
        self.per_minute
            .entry(minute_of(time_ms))
            .or_default()
            .push(id_hash);
        if self.ids.len() > self.max_ids {
            self.evict_to(self.max_ids - self.max_ids / 10);
        }
        Delivery::First
    }

    /// A replayed (already committed) message: the verdict `campaign_events` holds for it when
    /// it lies inside the loaded horizon, the first-seen rule otherwise.
    #[inline]
    pub fn replayed(
        &mut self,
        id_hash: u64,
        partition: i32,
        offset: i64,
        time_ms: i64,
    ) -> Delivery {
        if !self.enabled {
            return Delivery::First;
        }
        if time_ms >= self.loaded_since_ms {
            return if self.copies.contains(&(partition, offset)) {
                Delivery::Duplicate
            } else {
                Delivery::First
            };
        }
        self.check(id_hash, time_ms)
    }

    /// Marks the start of the start-up load: rows of `campaign_events` from `since_ms` on are
    /// about to be [`remember`](Self::remember)ed.
    pub fn loading_since(&mut self, since_ms: i64) {
        self.loaded_since_ms = since_ms;
    }

    /// Remembers a message committed to `campaign_events` (start-up), with its verdict.
    pub fn remember(
        &mut self,
        id_hash: u64,
        partition: i32,
        offset: i64,
        time_ms: i64,
        was_copy: bool,
    ) {
        if was_copy {
            self.copies.insert((partition, offset));
        } else {
            let _ = self.check(id_hash, time_ms);
        }
    }

    /// Forgets ids whose event time is older than `watermark − horizon`. Cheap when there is
    /// nothing to forget; otherwise proportional to what is forgotten.
    pub fn expire(&mut self, watermark_ms: i64) {
        if !self.enabled || watermark_ms == i64::MIN {
            return;
        }
        let cutoff = (watermark_ms.div_euclid(60_000) - self.horizon_min as i64)
            .clamp(i32::MIN as i64, i32::MAX as i64) as i32;
        self.forget_before(cutoff);
    }

    fn evict_to(&mut self, target: usize) {
        let before = self.ids.len();
        while self.ids.len() > target {
            let Some((_, list)) = self.per_minute.pop_first() else {
                break;
            };
            for h in list {
                self.ids.remove(h);
            }
        }
        self.evicted += (before - self.ids.len()) as u64;
        tracing::warn!(
            remembered = self.ids.len(),
            max_ids = self.max_ids,
            forgot_before_minute = self.per_minute.first_key_value().map(|(m, _)| *m),
            "dedup table full: forgot the oldest ids early (raise dedup.max_ids or shorten dedup.horizon_secs)"
        );
    }

    fn forget_before(&mut self, cutoff: i32) {
        while let Some(entry) = self.per_minute.first_entry() {
            if *entry.key() >= cutoff {
                break;
            }
            for h in entry.remove() {
                self.ids.remove(h);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.len() == 0
    }

    /// Heap bytes held: set slots and the minute lists.
    pub fn bytes_estimate(&self) -> usize {
        self.ids.capacity_bytes()
            + self
                .per_minute
                .values()
                .map(|l| l.capacity() * 8)
                .sum::<usize>()
            + self.copies.capacity() * (std::mem::size_of::<(i32, i64)>() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_a_duplicate() {
        let mut s = SeenIds::new(3600, 1000);
        let id = hash_id("e-1");
        assert_eq!(s.check(id, 60_000), Delivery::First);
        assert_eq!(s.check(id, 60_000), Delivery::Duplicate);
        assert_eq!(s.check(hash_id("e-2"), 60_000), Delivery::First);
    }

    #[test]
    fn replayed_messages_repeat_the_committed_verdicts() {
        let mut s = SeenIds::new(3600, 1000);
        // Loaded at start-up: e-1 committed at (0, 10), its copy at (2, 5).
        s.loading_since(60_000);
        s.remember(hash_id("e-1"), 0, 10, 60_000, false);
        s.remember(hash_id("e-1"), 2, 5, 60_000, true);
        // The replay delivers the copy first this time: still the copy that is a duplicate.
        assert_eq!(
            s.replayed(hash_id("e-1"), 2, 5, 60_000),
            Delivery::Duplicate
        );
        assert_eq!(s.replayed(hash_id("e-1"), 0, 10, 60_000), Delivery::First);
        // A new delivery of it is a copy.
        assert_eq!(s.check(hash_id("e-1"), 60_000), Delivery::Duplicate);
        // Replayed below the loaded horizon (click history only): the first-seen rule.
        assert_eq!(s.replayed(hash_id("old"), 0, 1, 0), Delivery::First);
        assert_eq!(s.replayed(hash_id("old"), 1, 1, 0), Delivery::Duplicate);
    }

    #[test]
    fn ids_older_than_the_horizon_are_forgotten() {
        let mut s = SeenIds::new(600, 1000); // 10 minutes
        s.check(hash_id("old"), 0);
        s.check(hash_id("new"), 9 * 60_000);
        s.expire(10 * 60_000);
        assert_eq!(s.len(), 2);
        s.expire(11 * 60_000);
        assert_eq!(s.len(), 1);
        assert_eq!(s.check(hash_id("old"), 0), Delivery::First);
        assert_eq!(s.check(hash_id("new"), 0), Delivery::Duplicate);
    }

    #[test]
    fn a_full_table_forgets_the_oldest_minutes_first() {
        let mut s = SeenIds::new(86_400, 100);
        for i in 0..101 {
            s.check(hash_id(&format!("e{i}")), i * 60_000);
        }
        assert!(s.len() <= 100 && s.len() >= 80, "{}", s.len());
        assert!(s.evicted > 0);
        assert_eq!(s.check(hash_id("e100"), 0), Delivery::Duplicate);
        assert_eq!(s.check(hash_id("e0"), 0), Delivery::First);
    }

    #[test]
    fn disabled_remembers_nothing() {
        let mut s = SeenIds::new(0, 10);
        assert_eq!(s.check(1, 0), Delivery::First);
        assert_eq!(s.check(1, 0), Delivery::First);
        assert!(s.is_empty());
    }

    #[test]
    fn memory_per_id_is_as_documented() {
        let mut s = SeenIds::new(86_400, usize::MAX);
        for i in 0..1_000_000i64 {
            // ~1 100 ids per event-time minute, as at 18 events/s… no: 1 000 events/s → 60 000.
            s.check(hash_id(&format!("s1-{i:012}")), i * 60);
        }
        let per_id = s.bytes_estimate() as f64 / s.len() as f64;
        assert!((18.0..=35.0).contains(&per_id), "{per_id} B per id");
    }

    /// The open-addressing set against std's on a random mix of inserts and removals (removal
    /// shifts runs back: the part that is easy to get wrong).
    #[test]
    fn hash_set_matches_std() {
        let mut ours = HashSet64::default();
        let mut std_set = std::collections::HashSet::new();
        let mut rng = fastrand::Rng::with_seed(9);
        for round in 0..200_000 {
            // Small key space with clustered low bits: long runs, wrap-around, the hash 0.
            let h = rng.u64(0..5_000) << (rng.u32(0..3) * 20);
            if rng.u8(0..3) == 0 {
                ours.remove(h);
                std_set.remove(&h);
            } else {
                assert_eq!(
                    ours.insert(h),
                    std_set.insert(h),
                    "insert {h} at round {round}"
                );
            }
            assert_eq!(ours.len(), std_set.len());
        }
        for h in &std_set {
            assert!(!ours.insert(*h), "{h} lost");
        }
    }
}
