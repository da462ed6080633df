//! Live counters shared by the pipeline threads and whoever watches them (the terminal progress
//! view, tests, benchmarks). Plain atomics and short-held mutexes: writers are the ingest thread
//! and the sink task, readers poll about once a second.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

use crate::event::Reason;

#[derive(Debug, Default)]
pub struct Status {
    /// Messages read from the source (valid + dead letters).
    pub messages: AtomicU64,
    /// Messages re-read after a restart to rebuild state (already in the tables).
    pub replayed: AtomicU64,
    /// Messages the source delivered again (after a rebalance or seek); skipped.
    pub redelivered: AtomicU64,
    pub valid_events: AtomicU64,
    pub dead_letters: AtomicU64,
    pub dead_by_reason: [AtomicU64; Reason::ALL.len()],
    pub late_events: AtomicU64,
    /// Deliveries of an event id already seen within the dedup horizon (not counted in metrics).
    pub duplicates: AtomicU64,
    /// Ids remembered for deduplication and the table's heap bytes.
    pub dedup_ids: AtomicU64,
    pub dedup_bytes: AtomicU64,
    /// Campaign and ad ids interned now, and freed since the start (their windows closed).
    pub interned_ids: AtomicU64,
    pub interned_ids_evicted: AtomicU64,
    pub plugin_errors: AtomicU64,
    pub plugin_swaps: AtomicU64,
    pub plugin_rejections: AtomicU64,
    pub plugins_quarantined: AtomicU64,
    pub plugin_rollbacks: AtomicU64,
    /// Config file changes that applied at least one key, and refused keys (one per key that
    /// needs a restart; a change whose every key is refused is not counted as a reload).
    pub config_reloads: AtomicU64,
    pub config_refusals: AtomicU64,
    /// The attribution lookback in force, seconds (changes live).
    pub lookback_secs: AtomicU64,
    /// How long the last plugin-set install held the event path, microseconds.
    pub last_swap_us: AtomicU64,
    pub commits: AtomicU64,
    /// Catalog commits that lost the compare-and-swap to another writer (iceberg-rust retried
    /// them on the new table state), and commits the fence refused partitions of.
    pub catalog_conflicts: AtomicU64,
    pub fenced_commits: AtomicU64,
    /// Partitions claimed (assigned by the group) and lost to another member's claim.
    pub partitions_claimed: AtomicU64,
    pub partitions_lost: AtomicU64,
    pub committed_events: AtomicU64,
    pub committed_dead_letters: AtomicU64,
    pub metric_rows: AtomicU64,
    pub windows_finalized: AtomicU64,
    pub open_windows: AtomicU64,
    pub watermark_ms: AtomicI64,
    pub last_commit_us: AtomicU64,
    pub touchpoint_users: AtomicU64,
    /// Partition → next offset committed to Iceberg (and then to Kafka).
    pub committed_offsets: Mutex<BTreeMap<i32, i64>>,
    /// Partition → high-water mark at the broker, refreshed about once a second.
    pub end_offsets: Mutex<BTreeMap<i32, i64>>,
    pub latency: Mutex<LatencyHistogram>,
    /// The newest window with metrics: (window start ms, per-campaign lines).
    pub current: Mutex<(i64, Vec<CampaignLine>)>,
    /// Partition → messages read (replays excluded), published once per commit interval.
    pub partitions: Mutex<BTreeMap<i32, u64>>,
    /// Every loaded plugin version's counters, published once per commit interval.
    pub plugins: Mutex<Vec<PluginStat>>,
    /// Iceberg commit durations.
    pub commit_seconds: Mutex<CommitHistogram>,
    pub committed_files: AtomicU64,
    /// Estimated heap bytes of window, attribution and dedup state.
    pub state_bytes: AtomicU64,
    /// Consuming new input: started, partitions assigned, any replay after a restart done.
    pub ready: AtomicBool,
    /// Set when the daemon is going down on an error (the sink gave up, say): `/health` fails.
    pub failure: Mutex<Option<String>>,
    /// The ingest loop's heartbeat: wall-clock ms of its last poll of the source (0 = none
    /// yet). `/health` fails when it is older than `observe::STALL_AFTER`.
    pub last_poll_ms: AtomicI64,
}

/// One loaded plugin version's counters (see `/metrics`).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginStat {
    pub name: String,
    pub version: String,
    /// `active`, `retired` (replaced, finishing its windows) or `quarantined`.
    pub state: &'static str,
    pub calls: u64,
    pub errors: u64,
    pub busy_secs: f64,
}

/// Upper bounds (seconds) of the commit-duration histogram's buckets.
pub const COMMIT_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A Prometheus-style histogram of commit durations (per-bucket counts, not cumulative).
#[derive(Debug, Clone, Default)]
pub struct CommitHistogram {
    pub buckets: [u64; COMMIT_BUCKETS.len()],
    pub sum: f64,
    pub count: u64,
}

impl CommitHistogram {
    pub fn record(&mut self, secs: f64) {
        if let Some(i) = COMMIT_BUCKETS.iter().position(|&b| secs <= b) {
            self.buckets[i] += 1;
        }
        self.sum += secs;
        self.count += 1;
    }
}

impl Status {
    pub fn lag(&self) -> i64 {
        let ends = self.end_offsets.lock().unwrap();
        let done = self.committed_offsets.lock().unwrap();
        ends.iter()
            .map(|(p, end)| (end - done.get(p).copied().unwrap_or(0)).max(0))
            .sum()
    }

    pub fn dead_letter_counts(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL
            .iter()
            .map(|r| (r.code(), self.dead_by_reason[*r as usize].load(Relaxed)))
            .collect()
    }
}

/// One campaign's figures in the current window (from the latest metric revision).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CampaignLine {
    pub campaign: String,
    pub impressions: f64,
    pub clicks: f64,
    pub conversions: f64,
    pub revenue: f64,
    pub attributed_revenue: f64,
}

impl CampaignLine {
    pub fn ctr(&self) -> f64 {
        if self.impressions > 0.0 {
            self.clicks / self.impressions
        } else {
            0.0
        }
    }
    pub fn cvr(&self) -> f64 {
        if self.clicks > 0.0 {
            self.conversions / self.clicks
        } else {
            0.0
        }
    }
}

/// Millisecond-bucket latency histogram up to 120 s (longer values land in the last bucket).
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    buckets: Vec<u64>,
    count: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: vec![0; 120_001],
            count: 0,
        }
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, ms: i64) {
        let i = ms.clamp(0, self.buckets.len() as i64 - 1) as usize;
        self.buckets[i] += 1;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0..=1) in milliseconds, `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<i64> {
        if self.count == 0 {
            return None;
        }
        let target = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= target {
                return Some(i as i64);
            }
        }
        Some(self.buckets.len() as i64 - 1)
    }

    pub fn reset(&mut self) {
        self.buckets.iter_mut().for_each(|b| *b = 0);
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.quantile(0.5), None);
        for ms in 1..=100 {
            h.record(ms);
        }
        assert_eq!(h.quantile(0.5), Some(50));
        assert_eq!(h.quantile(0.99), Some(99));
        assert_eq!(h.quantile(1.0), Some(100));
        h.record(1_000_000);
        assert_eq!(h.quantile(1.0), Some(120_000));
    }
}
