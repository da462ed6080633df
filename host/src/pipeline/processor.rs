//! The in-process part of the pipeline: decode → validate → window → plugins → table buffers.
//!
//! It knows nothing of Kafka or Iceberg I/O: the ingest loop feeds it raw messages and takes a
//! [`CommitBatch`] from it once per commit interval; the benchmarks drive it directly.
//!
//! Plugin calls are batched: events are appended to their window's pending list and each plugin
//! is called once per window per poll batch (`flush_plugins`), never per event.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::event::{self, EventKind, Reason};
use crate::plugin::{self, EventBatch, Plugin, PluginError, Touchpoint};
use crate::sink::CommitBatch;
use crate::sink::schema::{DeadLetterBuffer, EventsBuffer, MetricRecord, metrics_batch};
use crate::source::RawMessage;
use crate::status::{CampaignLine, Status};
use crate::window::{Interner, Touchpoints, Watermarks, window_start};

/// Wall-clock readings taken once per poll batch, not per event.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub now_ms: i64,
    pub instant: Instant,
}

impl Clock {
    pub fn now() -> Self {
        Clock {
            now_ms: chrono::Utc::now().timestamp_millis(),
            instant: Instant::now(),
        }
    }
}

/// One event-time window: pending events not yet given to the plugins, and each plugin's
/// accumulator (`None` once that plugin failed on this window: its rows would be wrong, so
/// none are published for the window).
struct Window {
    pending: EventBatch,
    accs: Vec<Option<Vec<u8>>>,
    dirty: bool,
    revision: i32,
}

/// A plugin with the strings its rows are stamped with.
pub struct Slot {
    pub plugin: Plugin,
    name: Arc<str>,
    version: Arc<str>,
    sha256: Arc<str>,
    pub calls: u64,
    pub errors: u64,
    pub busy: Duration,
}

impl Slot {
    pub fn new(plugin: Plugin) -> Self {
        Slot {
            name: plugin.info.name.as_str().into(),
            version: plugin.info.version.as_str().into(),
            sha256: plugin.info.sha256.as_str().into(),
            plugin,
            calls: 0,
            errors: 0,
            busy: Duration::ZERO,
        }
    }
}

pub struct Processor {
    topic: String,
    size_ms: i64,
    lateness_ms: i64,
    validation: crate::config::ValidationConfig,
    slots: Vec<Slot>,
    wants_touchpoints: bool,
    campaigns: Interner,
    ads: Interner,
    touchpoints: Touchpoints,
    watermarks: Watermarks,
    windows: BTreeMap<i64, Window>,
    events: EventsBuffer,
    dead: DeadLetterBuffer,
    /// Partition → next offset, over everything processed (committed or not).
    offsets: BTreeMap<i32, i64>,
    /// Partition → first offset not yet in Iceberg when we started: anything below is skipped.
    floors: BTreeMap<i32, i64>,
    produced_at: Vec<i64>,
    seq: u64,
    last_prune: Instant,
    status: Arc<Status>,
    /// Latest figures of the newest window, for the live view.
    current: (i64, BTreeMap<Arc<str>, CampaignLine>),
    /// Whether rows are built into Arrow (false in the in-process benchmark's "no sink" mode).
    pub build_tables: bool,
}

impl Processor {
    pub fn new(cfg: &Config, plugins: Vec<Plugin>, status: Arc<Status>) -> Self {
        let wants_touchpoints = plugins.iter().any(|p| p.info.wants_touchpoints);
        Processor {
            topic: cfg.kafka.topic.clone(),
            size_ms: cfg.window_size_ms(),
            lateness_ms: cfg.window.allowed_lateness_ms as i64,
            validation: cfg.validation.clone(),
            slots: plugins.into_iter().map(Slot::new).collect(),
            wants_touchpoints,
            campaigns: Interner::default(),
            ads: Interner::default(),
            touchpoints: Touchpoints::new(
                cfg.attribution.max_touchpoints,
                cfg.attribution.lookback_secs as i64 * 1000,
            ),
            watermarks: Watermarks::new(cfg.window.out_of_orderness_ms, cfg.window.idle_timeout_ms),
            windows: BTreeMap::new(),
            events: EventsBuffer::new(),
            dead: DeadLetterBuffer::new(),
            offsets: BTreeMap::new(),
            floors: BTreeMap::new(),
            produced_at: Vec::new(),
            seq: 0,
            last_prune: Instant::now(),
            status,
            current: (i64::MIN, BTreeMap::new()),
            build_tables: true,
        }
    }

    /// Positions already committed to Iceberg (from snapshot summaries): messages below them
    /// are skipped, so a redelivery after a crash cannot duplicate rows.
    pub fn set_committed_offsets(&mut self, offsets: BTreeMap<i32, i64>) {
        for (p, o) in &offsets {
            self.offsets.insert(*p, *o);
        }
        self.floors = offsets;
    }

    pub fn set_assignment(&mut self, partitions: &[i32], now: Instant) {
        self.watermarks.set_assignment(partitions, now);
    }

    pub fn slots(&self) -> &[Slot] {
        &self.slots
    }

    pub fn watermark(&self) -> i64 {
        self.watermarks.current()
    }

    pub fn touchpoints(&self) -> &Touchpoints {
        &self.touchpoints
    }

    /// Processes one message. Never fails: a bad message becomes a dead letter.
    #[inline]
    pub fn process(&mut self, m: RawMessage<'_>, clock: &Clock) {
        if let Some(&floor) = self.floors.get(&m.partition)
            && m.offset < floor
        {
            return;
        }
        self.offsets.insert(m.partition, m.offset + 1);
        self.status.messages.fetch_add(1, Relaxed);
        let ingest_us = clock.now_ms * 1000;
        let payload = m.payload.unwrap_or_default();
        let ev = match event::decode(payload, clock.now_ms, &self.validation) {
            Ok(ev) => ev,
            Err(rej) => {
                self.status.dead_letters.fetch_add(1, Relaxed);
                self.status.dead_by_reason[rej.reason as usize].fetch_add(1, Relaxed);
                if self.status.dead_letters.load(Relaxed).is_power_of_two() {
                    tracing::warn!(partition = m.partition, offset = m.offset, reason = %rej, "dead letter (logged at powers of two)");
                }
                self.dead.push(
                    &self.topic,
                    m.partition,
                    m.offset,
                    rej.reason.code(),
                    &rej.detail,
                    payload,
                    ingest_us,
                );
                return;
            }
        };
        self.status.valid_events.fetch_add(1, Relaxed);
        if let Some(ts) = m.timestamp_ms {
            self.produced_at.push(ts);
        }
        self.watermarks
            .observe(m.partition, ev.time_ms, clock.instant);

        let start = window_start(ev.time_ms, self.size_ms);
        let late = start + self.size_ms + self.lateness_ms <= self.watermarks.current();
        let campaign = self.campaigns.intern(&ev.campaign_id);
        let ad = self.ads.intern(&ev.ad_id);
        if ev.kind == EventKind::Click {
            self.touchpoints.record_click(
                &ev.user_id,
                Touchpoint {
                    time_ms: ev.time_ms,
                    campaign,
                    ad,
                },
            );
        }
        if late {
            self.status.late_events.fetch_add(1, Relaxed);
        } else {
            let n = self.slots.len();
            let w = self.windows.entry(start).or_insert_with(|| Window {
                pending: plugin::new_batch(),
                accs: vec![Some(Vec::new()); n],
                dirty: false,
                revision: 0,
            });
            let kind = match ev.kind {
                EventKind::Impression => plugin::kind::IMPRESSION,
                EventKind::Click => plugin::kind::CLICK,
                EventKind::Conversion => plugin::kind::CONVERSION,
            };
            let tps = match (self.wants_touchpoints, ev.kind) {
                (false, _) => None,
                (true, EventKind::Conversion) => {
                    Some(self.touchpoints.for_conversion(&ev.user_id, ev.time_ms))
                }
                (true, _) => Some(&[][..]),
            };
            plugin::push_event(
                &mut w.pending,
                kind,
                ev.time_ms,
                campaign,
                ad,
                ev.revenue_micros,
                tps,
            );
        }
        if self.build_tables {
            self.events
                .push(&ev, m.partition, m.offset, ingest_us, late);
        }
    }

    /// Hands each window's pending events to every plugin, one call per plugin per window.
    pub fn flush_plugins(&mut self) {
        for (start, w) in self.windows.iter_mut() {
            if w.pending.kinds.is_empty() {
                continue;
            }
            for (slot, acc) in self.slots.iter_mut().zip(w.accs.iter_mut()) {
                let Some(a) = acc else { continue };
                let t = Instant::now();
                let r = slot.plugin.accumulate(a, &w.pending);
                slot.busy += t.elapsed();
                slot.calls += 1;
                match r {
                    Ok(next) => *a = next,
                    Err(e) => {
                        fail(slot, &self.status, *start, &e);
                        *acc = None;
                    }
                }
            }
            plugin::clear_batch(&mut w.pending);
            w.dirty = true;
        }
    }

    /// Once per commit interval: advances the watermark, publishes changed windows as a new
    /// revision (final for windows the watermark closed), and takes everything to commit.
    pub fn tick(&mut self, clock: &Clock) -> CommitBatch {
        let rows = self.publish(clock);
        self.seq += 1;
        CommitBatch {
            seq: self.seq,
            events: self.events.take(),
            metrics: (!rows.is_empty()).then(|| metrics_batch(&rows)),
            dead_letters: self.dead.take(),
            offsets: self.offsets.clone(),
            produced_at_ms: std::mem::take(&mut self.produced_at),
        }
    }

    /// The metric half of [`tick`](Self::tick): advances the watermark and returns the rows of
    /// every changed or closing window (closing ones marked final and dropped).
    pub fn publish(&mut self, clock: &Clock) -> Vec<MetricRecord> {
        self.flush_plugins();
        let wm = self.watermarks.advance(clock.instant);
        self.status.watermark_ms.store(wm, Relaxed);
        let mut rows = Vec::new();
        let mut closed = Vec::new();
        for (&start, w) in self.windows.iter_mut() {
            let is_final = start + self.size_ms + self.lateness_ms <= wm;
            if !w.dirty && !is_final {
                continue;
            }
            w.revision += 1;
            w.dirty = false;
            for (slot, acc) in self.slots.iter_mut().zip(w.accs.iter_mut()) {
                let Some(a) = acc else { continue };
                let t = Instant::now();
                let r = slot.plugin.finish(a);
                slot.busy += t.elapsed();
                slot.calls += 1;
                match r {
                    Ok(out) => {
                        for r in out {
                            let (Some(campaign), ad) = (
                                self.campaigns.name(r.campaign),
                                r.ad.map(|a| self.ads.name(a)),
                            ) else {
                                fail(
                                    slot,
                                    &self.status,
                                    start,
                                    &PluginError::Malformed(format!(
                                        "unknown campaign id {}",
                                        r.campaign
                                    )),
                                );
                                continue;
                            };
                            if ad == Some(None) {
                                fail(
                                    slot,
                                    &self.status,
                                    start,
                                    &PluginError::Malformed(format!("unknown ad id {:?}", r.ad)),
                                );
                                continue;
                            }
                            rows.push(MetricRecord {
                                window_start_ms: start,
                                window_end_ms: start + self.size_ms,
                                campaign_id: campaign.clone(),
                                ad_id: ad.flatten().cloned(),
                                metric: r.metric,
                                value: r.value,
                                numerator: r.numerator,
                                denominator: r.denominator,
                                plugin: slot.name.clone(),
                                plugin_version: slot.version.clone(),
                                plugin_sha256: slot.sha256.clone(),
                                revision: w.revision,
                                is_final,
                                computed_at_ms: clock.now_ms,
                            });
                        }
                    }
                    Err(e) => {
                        fail(slot, &self.status, start, &e);
                        *acc = None;
                    }
                }
            }
            if is_final {
                closed.push(start);
            }
        }
        for start in &closed {
            self.windows.remove(start);
        }
        self.status
            .windows_finalized
            .fetch_add(closed.len() as u64, Relaxed);
        self.status
            .open_windows
            .store(self.windows.len() as u64, Relaxed);
        if clock.instant.duration_since(self.last_prune) > Duration::from_secs(30) {
            self.touchpoints.prune(wm);
            self.last_prune = clock.instant;
        }
        self.status
            .touchpoint_users
            .store(self.touchpoints.users() as u64, Relaxed);
        self.update_current(&rows);
        rows
    }

    /// Events and dead letters buffered since the last tick.
    pub fn buffered(&self) -> usize {
        self.events.rows() + self.dead.rows()
    }

    fn update_current(&mut self, rows: &[MetricRecord]) {
        let Some(newest) = rows.iter().map(|r| r.window_start_ms).max() else {
            return;
        };
        if newest > self.current.0 {
            self.current = (newest, BTreeMap::new());
        }
        if newest < self.current.0 {
            return;
        }
        for r in rows.iter().filter(|r| r.window_start_ms == newest) {
            let line = self
                .current
                .1
                .entry(r.campaign_id.clone())
                .or_insert_with(|| CampaignLine {
                    campaign: r.campaign_id.to_string(),
                    ..Default::default()
                });
            match r.metric.as_str() {
                "ctr" => (line.clicks, line.impressions) = (r.numerator, r.denominator),
                "cvr" => line.conversions = r.numerator,
                "revenue" => line.revenue = r.value,
                "attributed_revenue" => {} // per ad; summed below
                _ => {}
            }
        }
        for line in self.current.1.values_mut() {
            line.attributed_revenue = rows
                .iter()
                .filter(|r| {
                    r.window_start_ms == newest
                        && r.metric == "attributed_revenue"
                        && *r.campaign_id == *line.campaign
                })
                .map(|r| r.value)
                .sum::<f64>()
                .max(line.attributed_revenue);
        }
        *self.status.current.lock().unwrap() = (newest, self.current.1.values().cloned().collect());
    }
}

fn fail(slot: &mut Slot, status: &Status, window: i64, e: &PluginError) {
    slot.errors += 1;
    status.plugin_errors.fetch_add(1, Relaxed);
    tracing::error!(plugin = %slot.name, version = %slot.version, window_start_ms = window, error = %e,
        "plugin failed; its rows for this window are withheld");
}

/// Dead-letter reasons in a stable order, for reports.
pub fn reasons() -> impl Iterator<Item = Reason> {
    Reason::ALL.into_iter()
}
