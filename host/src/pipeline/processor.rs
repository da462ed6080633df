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

use super::task::{Task, Window};
use crate::config::Config;
use crate::dedup::{Delivery, SeenIds};
use crate::event::{self, EventKind};
use crate::plugin::{self, Plugin, PluginError, Touchpoint};
use crate::sink::schema::{DeadLetterBuffer, EventsBuffer, MetricRecord, metrics_batch};
use crate::sink::{Claimed, CommitBatch, Position};
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

/// Where a loaded plugin version stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotState {
    /// In the active set: new windows use it.
    Active,
    /// Replaced by a swap; still finishing the windows it opened with.
    Retired,
    /// Failed `quarantine_after` times within `quarantine_window_secs`: no longer called.
    Quarantined,
}

/// A loaded plugin version with the strings its rows are stamped with and its health.
pub struct Slot {
    pub plugin: Plugin,
    name: Arc<str>,
    version: Arc<str>,
    sha256: Arc<str>,
    pub calls: u64,
    pub errors: u64,
    pub busy: Duration,
    pub state: SlotState,
    /// Times of recent failures (within the quarantine window).
    recent_failures: std::collections::VecDeque<Instant>,
    /// The version of the same plugin this one replaced, for automatic rollback.
    previous: Option<usize>,
}

impl Slot {
    pub fn new(plugin: Plugin, previous: Option<usize>) -> Self {
        Slot {
            name: plugin.info.name.as_str().into(),
            version: plugin.info.version.as_str().into(),
            sha256: plugin.info.sha256.as_str().into(),
            plugin,
            calls: 0,
            errors: 0,
            busy: Duration::ZERO,
            state: SlotState::Active,
            recent_failures: Default::default(),
            previous,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One entry of a new plugin set sent by the watcher: a version already loaded (by sha256), or
/// a freshly compiled and validated one.
pub enum PluginSpec {
    Keep(String),
    New(Plugin),
}

/// Settings that can change while running (see `watch`).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    pub out_of_orderness_ms: u64,
    pub allowed_lateness_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_clock_skew_ms: u64,
    pub lookback_secs: u64,
    pub max_touchpoints: usize,
    pub max_future_ms: i64,
    pub max_past_ms: i64,
    pub quarantine_after: u32,
    pub quarantine_window_secs: u64,
}

impl LiveSettings {
    pub fn from_config(cfg: &Config) -> Self {
        LiveSettings {
            out_of_orderness_ms: cfg.window.out_of_orderness_ms,
            allowed_lateness_ms: cfg.window.allowed_lateness_ms,
            idle_timeout_ms: cfg.window.idle_timeout_ms,
            max_clock_skew_ms: cfg.window.max_clock_skew_ms,
            lookback_secs: cfg.attribution.lookback_secs,
            max_touchpoints: cfg.attribution.max_touchpoints,
            max_future_ms: cfg.validation.max_future_ms,
            max_past_ms: cfg.validation.max_past_ms,
            quarantine_after: cfg.plugins.quarantine_after,
            quarantine_window_secs: cfg.plugins.quarantine_window_secs,
        }
    }
}

pub struct Processor {
    topic: String,
    size_ms: i64,
    lateness_ms: i64,
    validation: crate::config::ValidationConfig,
    /// Every loaded plugin version, by id; `None` once no window or set needs it any more.
    versions: Vec<Option<Slot>>,
    /// The active set: version ids new windows open with, in configuration order.
    active: Vec<usize>,
    quarantine_after: u32,
    quarantine_window: Duration,
    /// The live-changeable settings in force.
    settings: LiveSettings,
    wants_touchpoints: bool,
    campaigns: Interner,
    ads: Interner,
    /// Per owned partition: its watermark (each partition closes its own windows).
    watermarks: Watermarks,
    /// Per owned partition: its state (see `task`).
    tasks: BTreeMap<i32, Task>,
    /// Positions of partitions given up since the last tick: the next summary records them (the
    /// fence drops them if the new owner claimed first).
    handoff: BTreeMap<i32, Position>,
    handoff_dead_letter_floors: BTreeMap<i32, i64>,
    dedup_horizon_secs: u64,
    dedup_max_ids: usize,
    events: EventsBuffer,
    dead: DeadLetterBuffer,
    lookback_ms: i64,
    produced_at: Vec<i64>,
    /// Partition → messages read (replays excluded), for `/metrics`.
    partition_messages: BTreeMap<i32, u64>,
    /// Attribution + dedup state bytes, as of the last prune (walking them costs O(users)).
    long_state_bytes: u64,
    seq: u64,
    last_prune: Instant,
    status: Arc<Status>,
    /// Latest figures of the newest window, for the live view.
    current: (i64, BTreeMap<Arc<str>, CampaignLine>),
    /// Whether rows are built into Arrow (false in the in-process benchmark's "no sink" mode).
    pub build_tables: bool,
    /// Whether a message of a partition nobody assigned starts it fresh (the benches and
    /// `plugin test`, which have no group); the daemon only processes partitions it claimed.
    pub assign_on_first_message: bool,
}

impl Processor {
    pub fn new(cfg: &Config, plugins: Vec<Plugin>, status: Arc<Status>) -> Self {
        status
            .lookback_secs
            .store(cfg.attribution.lookback_secs, Relaxed);
        let wants_touchpoints = plugins.iter().any(|p| p.info.wants_touchpoints);
        let mut watermarks =
            Watermarks::new(cfg.window.out_of_orderness_ms, cfg.window.idle_timeout_ms);
        watermarks.set_max_clock_skew(Some(cfg.window.max_clock_skew_ms).filter(|&s| s > 0));
        Processor {
            topic: cfg.stream(),
            size_ms: cfg.window_size_ms(),
            lateness_ms: cfg.window.allowed_lateness_ms as i64,
            validation: cfg.validation.clone(),
            active: (0..plugins.len()).collect(),
            versions: plugins
                .into_iter()
                .map(|p| Some(Slot::new(p, None)))
                .collect(),
            quarantine_after: cfg.plugins.quarantine_after,
            quarantine_window: Duration::from_secs(cfg.plugins.quarantine_window_secs),
            settings: LiveSettings::from_config(cfg),
            wants_touchpoints,
            campaigns: Interner::default(),
            ads: Interner::default(),
            watermarks,
            tasks: BTreeMap::new(),
            handoff: BTreeMap::new(),
            handoff_dead_letter_floors: BTreeMap::new(),
            dedup_horizon_secs: cfg.dedup.horizon_secs,
            dedup_max_ids: cfg.dedup.max_ids,
            events: EventsBuffer::new(),
            dead: DeadLetterBuffer::new(),
            lookback_ms: cfg.attribution.lookback_secs as i64 * 1000,
            produced_at: Vec::new(),
            partition_messages: BTreeMap::new(),
            long_state_bytes: 0,
            seq: 0,
            last_prune: Instant::now(),
            status,
            current: (i64::MIN, BTreeMap::new()),
            build_tables: true,
            assign_on_first_message: true,
        }
    }

    /// Event-time horizon (ms before the watermark) of remembered ids; `None` when dedup is off.
    pub fn dedup_horizon_ms(&self) -> Option<i64> {
        (self.dedup_horizon_secs > 0).then(|| (self.dedup_horizon_secs / 60).max(1) as i64 * 60_000)
    }

    /// How far back (ms of event time before a partition's watermark) its replay point keeps
    /// clicks: the oldest open window's conversions look back from its start.
    pub fn click_horizon_ms(&self) -> i64 {
        self.size_ms + self.lateness_ms + self.lookback_ms
    }

    fn new_task(&self, claim: &Claimed) -> Task {
        let mut seen = SeenIds::new(self.dedup_horizon_secs, self.dedup_max_ids);
        if let Some(since) = claim.ids.iter().map(|i| i.time_ms).min() {
            seen.loading_since(since);
        }
        for id in &claim.ids {
            seen.remember(id.hash, claim.partition, id.offset, id.time_ms, id.was_copy);
        }
        Task::new(
            claim,
            Touchpoints::new(self.settings.max_touchpoints, self.lookback_ms),
            seen,
        )
    }

    /// Takes over a partition claimed in the tables: messages below its recorded position are
    /// replayed (state only), its watermark continues from the recorded one (windows closed
    /// before stay closed), and its revisions rise above its previous owner's.
    pub fn assign(&mut self, claim: Claimed, now: Instant) {
        let p = claim.partition;
        // The pipeline commits a revoked partition's handoff before a claim of it is applied.
        debug_assert!(
            !self.handoff.contains_key(&p),
            "partition {p} claimed with its handoff pending"
        );
        self.watermarks
            .assign(p, claim.position.and_then(|pos| pos.watermark_ms), now);
        let task = self.new_task(&claim);
        self.status.partitions_claimed.fetch_add(1, Relaxed);
        tracing::info!(partition = p, epoch = claim.epoch, position = ?claim.position,
            dedup_ids = claim.ids.len(), "partition assigned; replaying from the recorded replay point");
        self.tasks.insert(p, task);
    }

    /// Gives a partition up (the group moved it): its position goes into the next commit and its
    /// state is dropped; the new owner rebuilds it by replay. Rows of its events already
    /// buffered are committed with that position, unless the new owner claimed first (then the
    /// fence leaves them out, and the new owner reads them again).
    pub fn revoke(&mut self, partition: i32) {
        if let Some(mut t) = self.tasks.remove(&partition) {
            let wm = self.watermarks.of(partition);
            let pos = t.position(wm, self.click_horizon_ms());
            tracing::info!(partition, epoch = t.epoch, position = ?pos, "partition revoked; handing off its position");
            self.handoff.insert(partition, pos);
            self.handoff_dead_letter_floors
                .insert(partition, t.dead_letter_floor);
        }
        self.watermarks.revoke(partition);
    }

    /// Forgets a partition another member claimed: the fence refused our commit of it at
    /// `epoch`. A task of a later claim (this member got the partition back) is kept.
    pub fn lost(&mut self, partition: i32, epoch: u64) {
        if self.tasks.get(&partition).is_some_and(|t| t.epoch <= epoch) {
            self.tasks.remove(&partition);
            self.status.partitions_lost.fetch_add(1, Relaxed);
            self.watermarks.revoke(partition);
            tracing::warn!(partition, "partition lost to another member; state dropped");
        }
    }

    /// Partitions this processor owns.
    pub fn owned(&self) -> Vec<i32> {
        self.tasks.keys().copied().collect()
    }

    /// Whether an owned partition is still replaying below its floor.
    pub fn replaying(&self) -> bool {
        self.tasks.values().any(Task::replaying)
    }

    /// Every loaded plugin version.
    pub fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.versions.iter().flatten()
    }

    /// (name, version, sha256) of the active set, in order.
    pub fn active_set(&self) -> Vec<(String, String, String)> {
        self.active
            .iter()
            .filter_map(|&v| self.versions[v].as_ref())
            .map(|s| {
                (
                    s.name.to_string(),
                    s.version.to_string(),
                    s.sha256.to_string(),
                )
            })
            .collect()
    }

    /// Installs a new active set. Windows already open finish on the versions they opened
    /// with; windows opened from now on use the new set. Cheap (no compilation happens here),
    /// so it can run on the event path between two poll batches.
    pub fn install(&mut self, specs: Vec<PluginSpec>) {
        let mut next = Vec::new();
        for spec in specs {
            let id = match spec {
                PluginSpec::Keep(sha) => {
                    match self.versions.iter().position(|v| {
                        v.as_ref()
                            .is_some_and(|s| *s.sha256 == *sha && s.state != SlotState::Quarantined)
                    }) {
                        Some(id) => id,
                        None => {
                            tracing::warn!(sha256 = %sha, "plugin version to keep is no longer loaded; skipped");
                            continue;
                        }
                    }
                }
                PluginSpec::New(p) => {
                    if let Some(id) = self.versions.iter().position(|v| {
                        v.as_ref()
                            .is_some_and(|s| s.sha256.as_ref() == p.info.sha256)
                    }) {
                        id
                    } else {
                        let previous = self.active.iter().copied().find(|&a| {
                            self.versions[a]
                                .as_ref()
                                .is_some_and(|s| s.plugin.info.name == p.info.name)
                        });
                        self.versions.push(Some(Slot::new(p, previous)));
                        self.versions.len() - 1
                    }
                }
            };
            if !next.contains(&id) {
                next.push(id);
            }
        }
        for &old in &self.active {
            if !next.contains(&old)
                && let Some(s) = self.versions[old].as_mut()
                && s.state == SlotState::Active
            {
                s.state = SlotState::Retired;
            }
        }
        for &id in &next {
            if let Some(s) = self.versions[id].as_mut() {
                s.state = SlotState::Active;
                s.recent_failures.clear();
            }
        }
        self.active = next;
        self.refresh_wants_touchpoints();
        self.status.plugin_swaps.fetch_add(1, Relaxed);
        tracing::info!(active = ?self.active_set().iter().map(|(n, v, s)| format!("{n} {v} {}", &s[..12])).collect::<Vec<_>>(),
            "plugin set installed; open windows finish on their versions");
    }

    pub fn settings(&self) -> &LiveSettings {
        &self.settings
    }

    /// Applies settings that are safe to change while running.
    pub fn apply_settings(&mut self, s: &LiveSettings) {
        self.settings = s.clone();
        self.status.lookback_secs.store(s.lookback_secs, Relaxed);
        self.lateness_ms = s.allowed_lateness_ms as i64;
        self.watermarks
            .set_params(s.out_of_orderness_ms, s.idle_timeout_ms);
        self.watermarks
            .set_max_clock_skew(Some(s.max_clock_skew_ms).filter(|&k| k > 0));
        // The time bounds only: `max_message_bytes` needs a restart, and `time_bounds` comes
        // from the command line, not the file.
        self.validation.max_future_ms = s.max_future_ms;
        self.validation.max_past_ms = s.max_past_ms;
        self.quarantine_after = s.quarantine_after;
        self.quarantine_window = Duration::from_secs(s.quarantine_window_secs);
        for t in self.tasks.values_mut() {
            t.touchpoints
                .set_params(s.max_touchpoints, s.lookback_secs as i64 * 1000);
        }
        self.lookback_ms = s.lookback_secs as i64 * 1000;
        tracing::info!(?s, "live settings applied");
    }

    fn refresh_wants_touchpoints(&mut self) {
        self.wants_touchpoints = self
            .versions
            .iter()
            .flatten()
            .any(|s| s.plugin.info.wants_touchpoints);
    }

    /// Records a failure of version `id`; after `quarantine_after` failures within the
    /// quarantine window (successes in between do not excuse a plugin that keeps failing) it is
    /// quarantined, and if it replaced an earlier version that is still healthy, that one is
    /// restored in the active set (a swap that went bad rolls itself back).
    fn on_failure(&mut self, id: usize, window: i64, e: &PluginError) {
        let Some(slot) = self.versions[id].as_mut() else {
            return;
        };
        slot.errors += 1;
        let now = Instant::now();
        slot.recent_failures.push_back(now);
        while slot
            .recent_failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.quarantine_window)
        {
            slot.recent_failures.pop_front();
        }
        self.status.plugin_errors.fetch_add(1, Relaxed);
        tracing::error!(plugin = %slot.name, version = %slot.version, window_start_ms = window, error = %e,
            "plugin failed; its rows for this window are withheld");
        if (slot.recent_failures.len() as u32) < self.quarantine_after
            || slot.state == SlotState::Quarantined
        {
            return;
        }
        slot.state = SlotState::Quarantined;
        let (name, version, previous) = (slot.name.clone(), slot.version.clone(), slot.previous);
        self.status.plugins_quarantined.fetch_add(1, Relaxed);
        let Some(pos) = self.active.iter().position(|&a| a == id) else {
            return;
        };
        let healthy_previous = previous.filter(|&p| {
            self.versions[p]
                .as_ref()
                .is_some_and(|s| s.state != SlotState::Quarantined)
        });
        match healthy_previous {
            Some(p) => {
                self.active[pos] = p;
                let prev = self.versions[p].as_mut().expect("checked above");
                prev.state = SlotState::Active;
                self.status.plugin_rollbacks.fetch_add(1, Relaxed);
                tracing::error!(plugin = %name, version = %version, restored = %prev.version,
                    "plugin quarantined after repeated failures; previous version restored for new windows");
            }
            None => {
                self.active.remove(pos);
                tracing::error!(plugin = %name, version = %version,
                    "plugin quarantined after repeated failures; it computes nothing until a new version is installed");
            }
        }
    }

    /// Drops versions that neither the active set, nor any open window, nor a rollback (the
    /// version an active one replaced) can use.
    fn collect_versions(&mut self) {
        let mut used = vec![false; self.versions.len()];
        for &a in &self.active {
            used[a] = true;
            if let Some(p) = self.versions[a].as_ref().and_then(|s| s.previous) {
                used[p] = true;
            }
        }
        for w in self.tasks.values().flat_map(|t| t.windows.values()) {
            for (v, _) in &w.accs {
                used[*v] = true;
            }
        }
        for (id, v) in self.versions.iter_mut().enumerate() {
            if !used[id] && v.as_ref().is_some_and(|s| s.state != SlotState::Active) {
                *v = None;
            }
        }
        self.refresh_wants_touchpoints();
    }

    /// The smallest watermark over owned partitions.
    pub fn watermark(&self) -> i64 {
        self.watermarks.current()
    }

    /// Users with remembered clicks, over owned partitions.
    pub fn touchpoint_users(&self) -> usize {
        self.tasks.values().map(|t| t.touchpoints.users()).sum()
    }

    /// Approximate heap bytes of the touchpoints, over owned partitions.
    pub fn touchpoint_bytes(&self) -> usize {
        self.tasks
            .values()
            .map(|t| t.touchpoints.bytes_estimate())
            .sum()
    }

    /// Processes one message. Never fails: a bad message becomes a dead letter.
    #[inline]
    pub fn process(&mut self, m: RawMessage<'_>, clock: &Clock) {
        if !self.tasks.contains_key(&m.partition) {
            if !self.assign_on_first_message {
                // A partition lost to another member's claim that the group has not revoked
                // yet: its new owner reads it.
                self.status.redelivered.fetch_add(1, Relaxed);
                return;
            }
            // Only without a source that assigns partitions (the benches, `plugin test`): the
            // partition starts fresh, as if claimed in empty tables.
            let claim = Claimed {
                partition: m.partition,
                ..Default::default()
            };
            self.assign(claim, clock.instant);
        }
        let task = self.tasks.get_mut(&m.partition).expect("assigned above");
        match task.seen_to {
            Some(next) if m.offset < next => {
                if self
                    .status
                    .redelivered
                    .fetch_add(1, Relaxed)
                    .is_power_of_two()
                {
                    tracing::warn!(
                        partition = m.partition,
                        offset = m.offset,
                        next,
                        "message delivered again by the source; skipped (logged at powers of two)"
                    );
                }
                return;
            }
            _ => task.seen_to = Some(m.offset + 1),
        }
        task.offset = m.offset + 1;
        // Below the committed position: already in the tables. Replay it into windows and
        // attribution state (to rebuild what the previous owner or a crash lost), write nothing,
        // count nothing twice.
        let replay = m.offset < task.floor;
        if replay {
            self.status.replayed.fetch_add(1, Relaxed);
        } else {
            *self.partition_messages.entry(m.partition).or_default() += 1;
            self.status.messages.fetch_add(1, Relaxed);
        }
        let ingest_us = clock.now_ms * 1000;
        let payload = m.payload.unwrap_or_default();
        let ev = match event::decode(payload, clock.now_ms, &self.validation) {
            Ok(ev) => ev,
            // Already in dead_letters: committed before the events table, so this holds for
            // replayed messages and for the first ones above the events floor alike.
            Err(_) if m.offset < task.dead_letter_floor => return,
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
        if !replay {
            self.status.valid_events.fetch_add(1, Relaxed);
            if let Some(ts) = m.timestamp_ms {
                self.produced_at.push(ts);
            }
        }
        let id = crate::dedup::hash_id(&ev.event_id);
        let verdict = if replay {
            task.seen.replayed(id, m.partition, m.offset, ev.time_ms)
        } else {
            task.seen.check(id, ev.time_ms)
        };
        if verdict == Delivery::Duplicate {
            // In campaign_events (flagged), nowhere else: no window, no touchpoint, no watermark.
            if !replay {
                self.status.duplicates.fetch_add(1, Relaxed);
                if self.build_tables {
                    self.events
                        .push(&ev, m.partition, m.offset, ingest_us, false, true);
                }
            }
            return;
        }
        self.watermarks
            .observe(m.partition, ev.time_ms, clock.instant);

        let start = window_start(ev.time_ms, self.size_ms);
        let late = start + self.size_ms + self.lateness_ms <= self.watermarks.of(m.partition);
        let campaign = self.campaigns.intern(&ev.campaign_id);
        let ad = self.ads.intern(&ev.ad_id);
        if ev.kind == EventKind::Click {
            task.touchpoints.record_click(
                &ev.user_id,
                Touchpoint {
                    time_ms: ev.time_ms,
                    campaign,
                    ad,
                },
            );
            let first = task
                .click_offsets
                .entry(ev.time_ms.div_euclid(60_000))
                .or_insert(m.offset);
            *first = (*first).min(m.offset);
        }
        if late {
            if !replay {
                self.status.late_events.fetch_add(1, Relaxed);
            }
        } else {
            let active = &self.active;
            let w = task.windows.entry(start).or_insert_with(|| Window {
                pending: plugin::new_batch(),
                accs: active.iter().map(|&v| (v, Some(Vec::new()))).collect(),
                published: vec![Vec::new(); active.len()],
                retract: Vec::new(),
                min_offset: m.offset,
                dirty: false,
            });
            let kind = match ev.kind {
                EventKind::Impression => plugin::kind::IMPRESSION,
                EventKind::Click => plugin::kind::CLICK,
                EventKind::Conversion => plugin::kind::CONVERSION,
            };
            let tps = match (self.wants_touchpoints, ev.kind) {
                (false, _) => None,
                (true, EventKind::Conversion) => {
                    Some(task.touchpoints.for_conversion(&ev.user_id, ev.time_ms))
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
            w.min_offset = w.min_offset.min(m.offset);
        }
        if self.build_tables && !replay {
            self.events
                .push(&ev, m.partition, m.offset, ingest_us, late, false);
        }
    }

    /// Hands each window's pending events to every plugin, one call per plugin per window (of
    /// each partition).
    pub fn flush_plugins(&mut self) {
        let mut failures = Vec::new();
        for (p, task) in self.tasks.iter_mut() {
            for (start, w) in task.windows.iter_mut() {
                if w.pending.kinds.is_empty() {
                    continue;
                }
                for i in 0..w.accs.len() {
                    let id = w.accs[i].0;
                    let Some(a) = &w.accs[i].1 else { continue };
                    let Some(slot) = live_slot(&mut self.versions, id) else {
                        w.poison(i);
                        continue;
                    };
                    let t = Instant::now();
                    let r = slot.plugin.accumulate(a, &w.pending);
                    slot.busy += t.elapsed();
                    slot.calls += 1;
                    match r {
                        Ok(next) => w.accs[i].1 = Some(next),
                        Err(e) => {
                            failures.push((id, *p, *start, e));
                            w.poison(i);
                        }
                    }
                }
                plugin::clear_batch(&mut w.pending);
                w.dirty = true;
            }
        }
        for (id, _, start, e) in failures {
            self.on_failure(id, start, &e);
        }
    }

    /// Once per commit interval: advances the watermarks, publishes changed windows as a new
    /// revision (final for windows their partition's watermark closed), and takes everything to
    /// commit, with the position of every owned partition and of those given up since.
    pub fn tick(&mut self, clock: &Clock) -> CommitBatch {
        let rows = self.publish(clock);
        self.seq += 1;
        let horizon = self.click_horizon_ms();
        let mut positions = std::mem::take(&mut self.handoff);
        let mut dead_letter_floors = std::mem::take(&mut self.handoff_dead_letter_floors);
        for (p, t) in self.tasks.iter_mut() {
            positions.insert(*p, t.position(self.watermarks.of(*p), horizon));
            dead_letter_floors.insert(*p, t.dead_letter_floor);
        }
        CommitBatch {
            positions,
            dead_letter_floors,
            seq: self.seq,
            events: self.events.take(),
            has_final: rows.iter().any(|r| r.is_final),
            click_horizon_ms: horizon,
            metrics: (!rows.is_empty()).then(|| metrics_batch(&rows)),
            dead_letters: self.dead.take(),
            produced_at_ms: std::mem::take(&mut self.produced_at),
        }
    }

    /// The metric half of [`tick`](Self::tick): advances the watermarks and returns the rows of
    /// every changed or closing window (closing ones marked final and dropped). A partition
    /// still replaying publishes nothing: its windows are half rebuilt, and publishing them
    /// would replace complete revisions with partial ones.
    pub fn publish(&mut self, clock: &Clock) -> Vec<MetricRecord> {
        self.flush_plugins();
        let tasks = &self.tasks;
        let wm = self
            .watermarks
            .advance_holding(clock.instant, clock.now_ms, |p| {
                tasks.get(&p).is_some_and(Task::replaying)
            });
        self.status.watermark_ms.store(wm, Relaxed);
        let mut rows = Vec::new();
        let mut failures = Vec::new();
        let mut closed_windows = 0u64;
        let mut open_windows = 0u64;
        for (&p, task) in self.tasks.iter_mut() {
            if task.replaying() {
                open_windows += task.windows.len() as u64;
                continue;
            }
            let wm = self.watermarks.of(p);
            // Revisions rise with the epoch (a new owner, a restart) and the commit sequence.
            let revision = ((task.epoch as i64) << 32) | ((self.seq + 1) & 0xffff_ffff) as i64;
            let mut closed = Vec::new();
            for (&start, w) in task.windows.iter_mut() {
                let is_final = start + self.size_ms + self.lateness_ms <= wm;
                if !w.dirty && !is_final {
                    continue;
                }
                w.dirty = false;
                for i in 0..w.accs.len() {
                    let id = w.accs[i].0;
                    let Some(a) = &w.accs[i].1 else { continue };
                    let Some(slot) = live_slot(&mut self.versions, id) else {
                        w.poison(i);
                        continue;
                    };
                    let t = Instant::now();
                    let r = slot.plugin.finish(a).and_then(|out| {
                        // Every row must name ids the host handed out: a plugin cannot invent campaigns.
                        out.into_iter()
                            .map(|r| {
                                let campaign =
                                    self.campaigns.name(r.campaign).ok_or_else(|| {
                                        PluginError::Malformed(format!(
                                            "unknown campaign id {}",
                                            r.campaign
                                        ))
                                    })?;
                                let ad = match r.ad {
                                    None => None,
                                    Some(a) => Some(
                                        self.ads
                                            .name(a)
                                            .ok_or_else(|| {
                                                PluginError::Malformed(format!("unknown ad id {a}"))
                                            })?
                                            .clone(),
                                    ),
                                };
                                Ok(MetricRecord {
                                    window_start_ms: start,
                                    window_end_ms: start + self.size_ms,
                                    campaign_id: campaign.clone(),
                                    ad_id: ad,
                                    metric: r.metric,
                                    value: r.value,
                                    numerator: r.numerator,
                                    denominator: r.denominator,
                                    plugin: slot.name.clone(),
                                    plugin_version: slot.version.clone(),
                                    plugin_sha256: slot.sha256.clone(),
                                    revision,
                                    partition: p,
                                    is_final,
                                    computed_at_ms: clock.now_ms,
                                    withheld: false,
                                })
                            })
                            .collect::<Result<Vec<_>, PluginError>>()
                    });
                    slot.busy += t.elapsed();
                    slot.calls += 1;
                    match r {
                        Ok(out) => {
                            rows.extend(out.iter().cloned());
                            w.published[i] = out;
                        }
                        Err(e) => {
                            failures.push((id, start, e));
                            w.poison(i);
                        }
                    }
                }
                for mut r in std::mem::take(&mut w.retract) {
                    (r.value, r.numerator, r.denominator) = (0.0, 0.0, 0.0);
                    (r.revision, r.is_final, r.withheld, r.computed_at_ms) =
                        (revision, is_final, true, clock.now_ms);
                    rows.push(r);
                }
                if is_final {
                    closed.push(start);
                }
            }
            for start in &closed {
                task.windows.remove(start);
            }
            closed_windows += closed.len() as u64;
            open_windows += task.windows.len() as u64;
        }
        for (id, start, e) in failures {
            self.on_failure(id, start, &e);
        }
        self.collect_versions();
        self.status
            .windows_finalized
            .fetch_add(closed_windows, Relaxed);
        self.status.open_windows.store(open_windows, Relaxed);
        if clock.instant.duration_since(self.last_prune) > Duration::from_secs(30) {
            // Keep every click an on-time conversion can still use: the oldest open window
            // starts at `wm − size − lateness`, and its conversions look back from there.
            let (mut ids, mut id_bytes) = (0, 0);
            for (&p, task) in self.tasks.iter_mut() {
                let wm = self.watermarks.of(p);
                task.touchpoints
                    .prune(wm.saturating_sub(self.size_ms + self.lateness_ms));
                task.seen.expire(wm);
                ids += task.seen.len();
                id_bytes += task.seen.bytes_estimate();
            }
            self.status.dedup_ids.store(ids as u64, Relaxed);
            self.status.dedup_bytes.store(id_bytes as u64, Relaxed);
            self.long_state_bytes = (id_bytes + self.touchpoint_bytes()) as u64;
            self.last_prune = clock.instant;
        }
        self.publish_stats();
        self.status
            .touchpoint_users
            .store(self.touchpoint_users() as u64, Relaxed);
        self.update_current(&rows);
        rows
    }

    /// Counters for `/metrics` that live here rather than in atomics (once per publish).
    fn publish_stats(&self) {
        let windows: usize = self
            .tasks
            .values()
            .flat_map(|t| t.windows.values())
            .map(|w| {
                w.accs
                    .iter()
                    .filter_map(|(_, a)| a.as_ref().map(Vec::len))
                    .sum::<usize>()
            })
            .sum();
        self.status
            .state_bytes
            .store(self.long_state_bytes + windows as u64, Relaxed);
        self.status
            .partitions
            .lock()
            .unwrap()
            .clone_from(&self.partition_messages);
        *self.status.plugins.lock().unwrap() = self
            .versions
            .iter()
            .flatten()
            .map(|s| crate::status::PluginStat {
                name: s.name.to_string(),
                version: s.version.to_string(),
                state: match s.state {
                    SlotState::Active => "active",
                    SlotState::Retired => "retired",
                    SlotState::Quarantined => "quarantined",
                },
                calls: s.calls,
                errors: s.errors,
                busy_secs: s.busy.as_secs_f64(),
            })
            .collect();
    }

    /// The input ended (a file source): moves the watermark past every window that holds an
    /// event so the next tick publishes them all as final. Not to `i64::MAX`: a later run over
    /// a longer version of the input keeps its new events on time. Fails if the input ended
    /// below the position the tables record: a different or truncated input.
    pub fn end_of_input(&mut self) -> Result<(), EndOfInputError> {
        self.flush_plugins();
        if let Some((&partition, t)) = self.tasks.iter().find(|(_, t)| t.replaying()) {
            return Err(EndOfInputError {
                stream: self.topic.clone(),
                partition,
                read: t.offset,
                recorded: t.floor,
            });
        }
        self.watermarks
            .end_of_input(self.size_ms + self.lateness_ms);
        Ok(())
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

/// A bounded input ended before the position the tables record for it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the input ended at offset {read} of partition {partition}, but the tables record {recorded} \
     for stream {stream:?}: a different or truncated input? Give it its own name ([source] stream) \
     or use fresh tables"
)]
pub struct EndOfInputError {
    pub stream: String,
    pub partition: i32,
    pub read: i64,
    pub recorded: i64,
}

/// The loaded, not quarantined version `id`, if any: what a window may still call.
fn live_slot(versions: &mut [Option<Slot>], id: usize) -> Option<&mut Slot> {
    versions[id]
        .as_mut()
        .filter(|s| s.state != SlotState::Quarantined)
}
