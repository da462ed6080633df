//! The daemon's live figures, shared by the pipeline threads and whoever watches them: the
//! `/metrics` page ([`Status::encode`]), `/health` and `/ready`, the terminal progress view,
//! tests and benchmarks.
//!
//! What `/metrics` exports is held in `prometheus-client` types (counters, gauges and histograms
//! are atomics behind an `Arc`, so the event path pays one relaxed atomic add, as it did with
//! plain atomics) and registered in a [`Registry`] owned by this `Status`: one registry per
//! pipeline, no process-wide recorder, because tests and benchmarks run several pipelines in one
//! process and each must count only its own events. Figures the pipeline publishes as snapshots
//! (per partition, per plugin version) and figures computed at scrape time (consumer lag,
//! watermark delay) are encoded by [`Published`], a collector over the same shared snapshots.
//! The rest (plain atomics) feeds only the live view, the health checks or tests.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::event::Reason;

/// A gauge of a count (the default `Gauge` is `i64`).
pub type CountGauge = Gauge<u64, AtomicU64>;

#[derive(Debug)]
pub struct Status {
    /// Messages read from the source (valid + dead letters).
    pub messages: Counter,
    /// Messages re-read after a restart to rebuild state (already in the tables).
    pub replayed: Counter,
    /// Messages the source delivered again (after a rebalance or seek); skipped.
    pub redelivered: Counter,
    pub valid_events: Counter,
    /// All dead letters (the live view's total; `/metrics` has them per reason).
    pub dead_letters: AtomicU64,
    /// Indexed by `Reason as usize`; the series of `admetrics_dead_letters_total{reason}`.
    pub dead_by_reason: [Counter; Reason::ALL.len()],
    pub late_events: Counter,
    /// Deliveries of an event id already seen within the dedup horizon (not counted in metrics).
    pub duplicates: Counter,
    /// Event values a plugin saw as `other` because its window already had
    /// `max_dimension_values` distinct values in that column (counted once per plugin).
    pub dimension_values_folded: Counter,
    /// Ids remembered for deduplication and the table's heap bytes.
    pub dedup_ids: CountGauge,
    pub dedup_bytes: AtomicU64,
    /// Campaign and ad ids interned now, and freed since the start (their windows closed).
    pub interned_ids: CountGauge,
    pub interned_ids_evicted: Counter,
    /// All plugin failures (the live view's total; `/metrics` has them per plugin version).
    pub plugin_errors: AtomicU64,
    pub plugin_swaps: Counter,
    pub plugin_rejections: AtomicU64,
    pub plugins_quarantined: Counter,
    pub plugin_rollbacks: Counter,
    /// Failures and quarantines of shadow plugins (never in the live counters above; a
    /// quarantined shadow's per-version series goes once no window holds it, these stay).
    pub shadow_errors: Counter,
    pub shadows_quarantined: Counter,
    /// Config file changes that applied at least one key, and refused keys (one per key that
    /// needs a restart; a change whose every key is refused is not counted as a reload).
    pub config_reloads: AtomicU64,
    pub config_refusals: AtomicU64,
    /// The attribution lookback in force, seconds (changes live).
    pub lookback_secs: AtomicU64,
    /// How long the last plugin-set install held the event path, microseconds.
    pub last_swap_us: AtomicU64,
    pub commits: Counter,
    /// Catalog commits that lost the compare-and-swap to another writer (iceberg-rust retried
    /// them on the new table state), and commits the fence refused partitions of.
    pub catalog_conflicts: Counter,
    pub fenced_commits: Counter,
    /// Partitions claimed (assigned by the group) and lost to another member's claim.
    pub partitions_claimed: Counter,
    pub partitions_lost: Counter,
    /// Rows committed, per table (the series of `admetrics_committed_rows_total{table}`).
    pub committed_events: Counter,
    pub committed_dead_letters: Counter,
    pub metric_rows: Counter,
    pub windows_finalized: Counter,
    pub open_windows: CountGauge,
    /// The event-time watermark, ms (`i64::MIN` or 0 before the first event).
    pub watermark_ms: Arc<AtomicI64>,
    pub last_commit_us: AtomicU64,
    pub touchpoint_users: CountGauge,
    /// Partition → next offset committed to Iceberg (and then to Kafka).
    pub committed_offsets: Arc<Mutex<BTreeMap<i32, i64>>>,
    /// Partition → high-water mark at the broker, refreshed about once a second.
    pub end_offsets: Arc<Mutex<BTreeMap<i32, i64>>>,
    /// Produce → visible latency at millisecond resolution, for in-process quantiles (the live
    /// view's p50/p99, the latency benchmark). `/metrics` exports [`Status::visible_latency`].
    pub latency: Mutex<LatencyHistogram>,
    /// Produce (Kafka timestamp) → visible in a commit, seconds: one observation per event.
    pub visible_latency: Histogram,
    /// The newest window with metrics: (window start ms, per-campaign lines).
    pub current: Mutex<(i64, Vec<CampaignLine>)>,
    /// Partition → messages read (replays excluded), published once per commit interval.
    pub partitions: Arc<Mutex<BTreeMap<i32, u64>>>,
    /// Every loaded plugin version's counters, published once per commit interval.
    pub plugins: Arc<Mutex<Vec<PluginStat>>>,
    /// Time inside one plugin call, per plugin name and version (each loaded version holds its
    /// own series: see `registry::Slot`).
    pub plugin_call_seconds: Family<PluginLabels, Histogram>,
    /// Iceberg commit durations.
    pub commit_seconds: Histogram,
    /// `campaign_events` rows per commit.
    pub commit_batch_events: Histogram,
    pub committed_files: Counter,
    /// Estimated heap bytes of window, attribution and dedup state.
    pub state_bytes: CountGauge,
    /// Consuming new input: started, partitions assigned, any replay after a restart done.
    pub ready: Arc<AtomicBool>,
    /// Set when the daemon is going down on an error (the sink gave up, say): `/health` fails.
    pub failure: Mutex<Option<String>>,
    /// The ingest loop's heartbeat: wall-clock ms of its last poll of the source (0 = none
    /// yet). `/health` fails when it is older than `observe::STALL_AFTER`.
    pub last_poll_ms: AtomicI64,
    registry: Registry,
}

/// One loaded plugin version's counters (see `/metrics`).
#[derive(Debug, Clone, PartialEq)]
pub struct PluginStat {
    pub name: String,
    pub version: String,
    /// `active`, `retired` (replaced, finishing its windows) or `quarantined`; for a shadow
    /// (see `pipeline::registry`) `shadow`, `shadow_retired` or `shadow_quarantined`.
    pub state: &'static str,
    pub calls: u64,
    pub errors: u64,
}

/// The labels of a plugin version's call-duration series. No `state` label (unlike the call
/// and error counters): a histogram's series must not restart when a version is retired.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
    pub version: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: &'static str,
}

/// Upper bounds (seconds) of the commit-duration buckets: a healthy commit of files plus three
/// catalog commits takes 5–100 ms locally and up to about a second against a remote catalog and
/// object store; the top buckets catch the retries of a failing catalog (they give up after 60 s).
pub const COMMIT_BUCKETS: [f64; 13] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Upper bounds (seconds) of the plugin-call buckets: one call handles one window's pending
/// events (tens of microseconds for a few events, milliseconds for thousands); the deadline
/// (`plugins.call_timeout_ms`, 1 s by default) bounds the top.
pub const PLUGIN_CALL_BUCKETS: [f64; 14] = [
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.25, 1.0,
];

/// Upper bounds (seconds) of the produce → visible buckets: an event becomes visible within one
/// commit interval (1 s by default) plus the commit; the target is p99 ≤ 2 s. Past that, the
/// buckets tell a backlog (tens of seconds) from an outage (minutes).
pub const VISIBLE_LATENCY_BUCKETS: [f64; 14] = [
    0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Upper bounds of the rows-per-commit buckets: powers of 4 from 1 to 262 144 (`commit.max_rows`
/// is 250 000 by default; a steady stream commits its rate × the interval).
pub fn batch_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1.0, 4.0, 10)
}

impl Default for Status {
    fn default() -> Self {
        Self::new()
    }
}

impl Status {
    /// A fresh status with every exported figure registered in its own registry.
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("admetrics");
        let counter = |r: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            r.register(name, help, c.clone());
            c
        };
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = CountGauge::default();
            r.register(name, help, g.clone());
            g
        };
        let messages = counter(
            &mut r,
            "messages",
            "Messages read from the source (valid events + dead letters), replays excluded",
        );
        let replayed = counter(
            &mut r,
            "replayed_messages",
            "Messages re-read after a restart to rebuild state (already in the tables)",
        );
        let partitions_claimed = counter(
            &mut r,
            "partitions_claimed",
            "Partitions this member claimed in the tables when the group assigned them",
        );
        let partitions_lost = counter(
            &mut r,
            "partitions_lost",
            "Partitions another member claimed while this one still held rows of them (fenced)",
        );
        let catalog_conflicts = counter(
            &mut r,
            "catalog_conflicts",
            "Catalog commits that lost the compare-and-swap to another writer and were retried",
        );
        let fenced_commits = counter(
            &mut r,
            "fenced_commits",
            "Commits the fence refused partitions of (another member claimed them)",
        );
        let redelivered = counter(
            &mut r,
            "redelivered_messages",
            "Messages the source delivered again (rebalance or seek), skipped",
        );
        let valid_events = counter(&mut r, "valid_events", "Events that passed validation");
        let late_events = counter(
            &mut r,
            "late_events",
            "Events whose window had already closed (kept in campaign_events with is_late)",
        );
        let duplicates = counter(
            &mut r,
            "duplicate_events",
            "Deliveries of an event id already seen within the dedup horizon (not counted)",
        );
        let dimension_values_folded = counter(
            &mut r,
            "dimension_values_folded",
            "Event values a plugin saw as `other`: past its max_dimension_values distinct values in \
             the window (per plugin)",
        );
        let dead = Family::<ReasonLabel, Counter>::default();
        r.register(
            "dead_letters",
            "Messages that failed validation, by reason (kept in dead_letters)",
            dead.clone(),
        );
        let dead_by_reason = std::array::from_fn(|i| {
            dead.get_or_create_owned(&ReasonLabel {
                reason: Reason::ALL[i].code(),
            })
        });
        let open_windows = gauge(&mut r, "open_windows", "Event-time windows holding state");
        let windows_finalized = counter(
            &mut r,
            "windows_finalized",
            "Windows closed by the watermark (final revision published)",
        );
        let touchpoint_users = gauge(
            &mut r,
            "touchpoint_users",
            "Users with remembered clicks (attribution state)",
        );
        let state_bytes = gauge(
            &mut r,
            "state_bytes",
            "Estimated heap bytes of window, attribution and dedup state",
        );
        let dedup_ids = gauge(
            &mut r,
            "dedup_ids",
            "Event ids remembered for deduplication",
        );
        let interned_ids = gauge(
            &mut r,
            "interned_ids",
            "Campaign and ad ids held for open windows and remembered clicks",
        );
        let interned_ids_evicted = counter(
            &mut r,
            "interned_ids_evicted",
            "Campaign and ad ids freed once no open window or click held them",
        );
        let plugin_call_seconds = Family::<PluginLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(PLUGIN_CALL_BUCKETS)
        });
        r.register(
            "plugin_call_seconds",
            "Duration of one plugin call (accumulate or finish, lifting and lowering included), per plugin version",
            plugin_call_seconds.clone(),
        );
        let plugin_swaps = counter(&mut r, "plugin_swaps", "Plugin sets installed live");
        let plugins_quarantined = counter(
            &mut r,
            "plugins_quarantined",
            "Plugin versions quarantined after repeated failures",
        );
        let plugin_rollbacks = counter(
            &mut r,
            "plugin_rollbacks",
            "Automatic rollbacks to the version a failing one replaced",
        );
        let shadow_errors = counter(
            &mut r,
            "shadow_errors",
            "Failed calls of shadow plugins (never counted against the live versions)",
        );
        let shadows_quarantined = counter(
            &mut r,
            "shadows_quarantined",
            "Shadow plugin versions quarantined after repeated failures",
        );
        let commit_seconds = Histogram::new(COMMIT_BUCKETS);
        r.register(
            "commit_seconds",
            "Duration of one Iceberg commit (files written + the three catalog commits)",
            commit_seconds.clone(),
        );
        let commit_batch_events = Histogram::new(batch_buckets());
        r.register(
            "commit_batch_events",
            "campaign_events rows per commit",
            commit_batch_events.clone(),
        );
        let rows = Family::<TableLabel, Counter>::default();
        r.register(
            "committed_rows",
            "Rows committed to Iceberg, by table",
            rows.clone(),
        );
        let table = |table| rows.get_or_create_owned(&TableLabel { table });
        let (committed_events, metric_rows, committed_dead_letters) = (
            table("campaign_events"),
            table("campaign_metrics"),
            table("dead_letters"),
        );
        let committed_files = counter(&mut r, "committed_files", "Data files committed to Iceberg");
        let commits = counter(
            &mut r,
            "commits",
            "Commit intervals acknowledged by the sink",
        );
        let visible_latency = Histogram::new(VISIBLE_LATENCY_BUCKETS);
        r.register(
            "visible_latency_seconds",
            "Produce (Kafka timestamp) to visible in a committed metrics revision, one observation per event",
            visible_latency.clone(),
        );
        let published = Published::default();
        Status {
            messages,
            replayed,
            redelivered,
            valid_events,
            dead_letters: Default::default(),
            dead_by_reason,
            late_events,
            duplicates,
            dimension_values_folded,
            dedup_ids,
            dedup_bytes: Default::default(),
            interned_ids,
            interned_ids_evicted,
            plugin_errors: Default::default(),
            plugin_swaps,
            plugin_rejections: Default::default(),
            plugins_quarantined,
            plugin_rollbacks,
            shadow_errors,
            shadows_quarantined,
            config_reloads: Default::default(),
            config_refusals: Default::default(),
            lookback_secs: Default::default(),
            last_swap_us: Default::default(),
            commits,
            catalog_conflicts,
            fenced_commits,
            partitions_claimed,
            partitions_lost,
            committed_events,
            committed_dead_letters,
            metric_rows,
            windows_finalized,
            open_windows,
            watermark_ms: published.watermark_ms.clone(),
            last_commit_us: Default::default(),
            touchpoint_users,
            committed_offsets: published.committed_offsets.clone(),
            end_offsets: published.end_offsets.clone(),
            latency: Default::default(),
            visible_latency,
            current: Default::default(),
            partitions: published.partitions.clone(),
            plugins: published.plugins.clone(),
            plugin_call_seconds,
            commit_seconds,
            commit_batch_events,
            committed_files,
            state_bytes,
            ready: published.ready.clone(),
            failure: Default::default(),
            last_poll_ms: Default::default(),
            registry: {
                r.register_collector(Box::new(published));
                r
            },
        }
    }

    /// The `/metrics` page: Prometheus text format 0.0.4, encoded by `prometheus-client`.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Total consumer lag: the sum over partitions of [`lag_per_partition`].
    pub fn lag(&self) -> i64 {
        lag_per_partition(
            &self.end_offsets.lock().unwrap(),
            &self.committed_offsets.lock().unwrap(),
        )
        .map(|(_, lag)| lag)
        .sum()
    }

    /// Dead letters per reason, every reason (the `plugin test` summary).
    pub fn dead_letter_counts(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL
            .iter()
            .map(|r| (r.code(), self.dead_by_reason[*r as usize].get()))
            .collect()
    }
}

/// Raises `counter` to `total`: for figures whose source keeps a cumulative count (the fence's
/// conflicts, the interners' evictions), published into a counter that only goes up. One writer
/// per counter, so reading then adding the difference does not race.
pub fn advance(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// Per partition: the broker's high watermark minus the offset committed to Iceberg.
fn lag_per_partition<'a>(
    ends: &'a BTreeMap<i32, i64>,
    done: &'a BTreeMap<i32, i64>,
) -> impl Iterator<Item = (i32, i64)> + 'a {
    ends.iter()
        .map(|(p, end)| (*p, (end - done.get(p).copied().unwrap_or(0)).max(0)))
}

/// The figures the pipeline publishes as snapshots, or that depend on the time of the scrape,
/// encoded on each scrape. Shares its fields with [`Status`] (the same `Arc`s).
#[derive(Debug, Default)]
struct Published {
    watermark_ms: Arc<AtomicI64>,
    ready: Arc<AtomicBool>,
    partitions: Arc<Mutex<BTreeMap<i32, u64>>>,
    end_offsets: Arc<Mutex<BTreeMap<i32, i64>>>,
    committed_offsets: Arc<Mutex<BTreeMap<i32, i64>>>,
    plugins: Arc<Mutex<Vec<PluginStat>>>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    partition: i32,
}

impl Collector for Published {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // One family per call: `name`, `help`, type, and its (labels, value) series.
        fn family<L: EncodeLabelSet, M: EncodeMetric>(
            enc: &mut DescriptorEncoder,
            name: &str,
            help: &str,
            kind: MetricType,
            series: impl IntoIterator<Item = (L, M)>,
        ) -> Result<(), std::fmt::Error> {
            let mut m = enc.encode_descriptor(name, help, None, kind)?;
            for (labels, v) in series {
                v.encode(m.encode_family(&labels)?)?;
            }
            Ok(())
        }
        let partitions = self.partitions.lock().unwrap().clone();
        family(
            &mut enc,
            "partition_messages",
            "Messages read per source partition, replays excluded (published every commit interval).",
            MetricType::Counter,
            partitions
                .iter()
                .map(|(&partition, &n)| (PartitionLabel { partition }, ConstCounter::new(n))),
        )?;
        let ends = self.end_offsets.lock().unwrap().clone();
        let done = self.committed_offsets.lock().unwrap().clone();
        family(
            &mut enc,
            "consumer_lag_messages",
            "Per partition: the broker's high watermark minus the offset committed to Iceberg.",
            MetricType::Gauge,
            lag_per_partition(&ends, &done)
                .map(|(partition, lag)| (PartitionLabel { partition }, ConstGauge::new(lag))),
        )?;
        family(
            &mut enc,
            "committed_offset",
            "Per partition: the next offset, as committed to Iceberg (the resume position).",
            MetricType::Gauge,
            done.iter()
                .map(|(&partition, &off)| (PartitionLabel { partition }, ConstGauge::new(off))),
        )?;
        // The delay is computed at the scrape, so it keeps growing while the ingest loop is
        // wedged (a gauge set by the loop would freeze at its last value).
        let wm = self.watermark_ms.load(Relaxed);
        let (wm_secs, delay_secs) = if wm == i64::MIN || wm == 0 {
            (0.0, 0.0)
        } else {
            let now = chrono::Utc::now().timestamp_millis();
            (wm as f64 / 1000.0, (now - wm) as f64 / 1000.0)
        };
        ConstGauge::new(wm_secs).encode(enc.encode_descriptor(
            "watermark_seconds",
            "The event-time watermark (Unix seconds; 0 before the first event).",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(delay_secs).encode(enc.encode_descriptor(
            "watermark_delay_seconds",
            "Wall clock minus the watermark (0 before the first event).",
            None,
            MetricType::Gauge,
        )?)?;
        let plugins = self.plugins.lock().unwrap().clone();
        let labels = |p: &PluginStat| {
            [
                ("plugin", p.name.clone()),
                ("version", p.version.clone()),
                ("state", p.state.to_string()),
            ]
        };
        family(
            &mut enc,
            "plugin_calls",
            "Plugin calls (accumulate and finish) per loaded plugin version.",
            MetricType::Counter,
            plugins
                .iter()
                .map(|p| (labels(p), ConstCounter::new(p.calls))),
        )?;
        family(
            &mut enc,
            "plugin_errors",
            "Plugin calls that failed (trap, deadline, memory cap, malformed rows).",
            MetricType::Counter,
            plugins
                .iter()
                .map(|p| (labels(p), ConstCounter::new(p.errors))),
        )?;
        ConstGauge::new(self.ready.load(Relaxed) as i64).encode(enc.encode_descriptor(
            "ready",
            "1 when consuming new input (what /ready answers).",
            None,
            MetricType::Gauge,
        )?)?;
        Ok(())
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
