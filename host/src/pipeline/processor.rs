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

use super::live::LiveView;
pub use super::registry::PluginSpec;
use super::registry::{Promotion, Registry, Slot};
use super::task::{Needs, Task, Window};
use crate::config::Config;
use crate::currency::Rates;
use crate::dedup::{Delivery, SeenIds};
use crate::event::{self, EventKind};
use crate::plugin::Span;
use crate::plugin::{self, Column, Columns, Plugin, PluginError, TouchKind};
use crate::sink::schema::{DeadLetterBuffer, EventsBuffer, MetricRecord, metrics_batch};
use crate::sink::{Claimed, CommitBatch, Position};
use crate::source::RawMessage;
use crate::status::Status;
use crate::window::{Calendar, Interner, Touchpoint, Touchpoints, Watermarks, window_start};

/// A window: `[start, end)` in ms. Windows of different spans differ in their end.
pub(super) type WindowKey = (i64, i64);

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

/// Settings that can change while running (see `watch`).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    pub out_of_orderness_ms: u64,
    pub allowed_lateness_ms: u64,
    pub idle_timeout_ms: u64,
    pub max_clock_skew_ms: u64,
    pub lookback_secs: u64,
    pub view_lookback_secs: u64,
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
            view_lookback_secs: cfg.attribution.view_lookback_secs,
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
    /// Conversions' revenue → the reporting currency (applied right after decoding).
    rates: Rates,
    /// The loaded plugin versions and the active set (see `registry`).
    registry: Registry,
    /// Per window start: the versions the first of this member's partitions to open it opened
    /// it with. The others open it with the same ones, so a hot swap never makes a window's
    /// partition shares come from different builds (on this member). Dropped once no partition
    /// can open the window any more.
    window_sets: BTreeMap<WindowKey, Vec<usize>>,
    /// Where each span's windows start and end (`hour`, `day` in campaigns' time zones).
    calendar: Calendar,
    /// The live-changeable settings in force.
    settings: LiveSettings,
    campaigns: Interner,
    ads: Interner,
    /// Dimension values (device, country, placement, currency strings, `unknown`, `other`),
    /// interned for the plugins that declare those columns.
    dims: Interner,
    /// Scratch list for one conversion's touchpoints (clicks and views merged).
    tp_scratch: Vec<plugin::Touchpoint>,
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
    live: LiveView,
    /// Whether rows are built into Arrow (false in the in-process benchmark's "no sink" mode).
    pub build_tables: bool,
    /// Whether a message of a partition nobody assigned starts it fresh (the benches and
    /// `plugin test`, which have no group); the daemon only processes partitions it claimed.
    pub assign_on_first_message: bool,
    /// Publish only windows that close (a restatement writes each window once, final).
    pub final_only: bool,
}

impl Processor {
    pub fn new(cfg: &Config, plugins: Vec<Plugin>, status: Arc<Status>) -> Self {
        status
            .lookback_secs
            .store(cfg.attribution.lookback_secs, Relaxed);
        let mut watermarks =
            Watermarks::new(cfg.window.out_of_orderness_ms, cfg.window.idle_timeout_ms);
        watermarks.set_max_clock_skew(Some(cfg.window.max_clock_skew_ms).filter(|&s| s > 0));
        Processor {
            topic: cfg.stream(),
            size_ms: cfg.window_size_ms(),
            lateness_ms: cfg.window.allowed_lateness_ms as i64,
            validation: cfg.validation.clone(),
            rates: Rates::new(&cfg.currency),
            registry: Registry::new(
                plugins,
                cfg.plugins.quarantine_after,
                Duration::from_secs(cfg.plugins.quarantine_window_secs),
                status.clone(),
            ),
            window_sets: BTreeMap::new(),
            calendar: Calendar::new(cfg.window_size_ms(), &cfg.campaigns),
            settings: LiveSettings::from_config(cfg),
            campaigns: Interner::default(),
            ads: Interner::default(),
            dims: Interner::default(),
            tp_scratch: Vec::new(),
            watermarks,
            tasks: BTreeMap::new(),
            handoff: BTreeMap::new(),
            handoff_dead_letter_floors: BTreeMap::new(),
            dedup_horizon_secs: cfg.dedup.horizon_secs,
            dedup_max_ids: cfg.dedup.max_ids,
            events: EventsBuffer::new(&cfg.stream()).with_revenue_currency(&cfg.currency.reporting),
            dead: DeadLetterBuffer::new(),
            lookback_ms: cfg.attribution.lookback_secs as i64 * 1000,
            produced_at: Vec::new(),
            partition_messages: BTreeMap::new(),
            long_state_bytes: 0,
            seq: 0,
            last_prune: Instant::now(),
            status,
            live: LiveView::default(),
            build_tables: true,
            assign_on_first_message: true,
            final_only: false,
        }
    }

    /// Event-time horizon (ms before the watermark) of remembered ids; `None` when dedup is off.
    pub fn dedup_horizon_ms(&self) -> Option<i64> {
        (self.dedup_horizon_secs > 0).then(|| (self.dedup_horizon_secs / 60).max(1) as i64 * 60_000)
    }

    /// How far back (ms of event time before a partition's watermark) its replay point keeps
    /// clicks: the oldest open window's conversions look back from its start.
    pub fn click_horizon_ms(&self) -> i64 {
        self.longest_ms() + self.lateness_ms + self.lookback_ms
    }

    /// The longest window a loaded plugin uses (the host's window when only it is used).
    fn longest_ms(&self) -> i64 {
        let spans = self.registry.spans();
        Span::ALL
            .into_iter()
            .zip(spans)
            .filter(|(_, on)| *on)
            .map(|(s, _)| self.calendar.max_len_ms(s))
            .max()
            .unwrap_or(self.size_ms)
            .max(self.size_ms)
    }

    /// The same for views: their lookback.
    fn view_horizon_ms(&self) -> i64 {
        self.settings.view_lookback_secs as i64 * 1000
    }

    fn new_task(&self, claim: &Claimed) -> Task {
        let mut seen = SeenIds::new(self.dedup_horizon_secs, self.dedup_max_ids);
        if let Some(since) = claim.ids.iter().map(|i| i.time_ms).min() {
            seen.loading_since(since);
        }
        for id in &claim.ids {
            seen.remember(id.hash, claim.partition, id.offset, id.time_ms, id.was_copy);
        }
        // Summaries written before `closed-through` existed: the watermark closed what the
        // lateness in force now says it closed.
        let closed_through = claim
            .position
            .and_then(|p| {
                p.closed_through_ms
                    .or(p.watermark_ms.map(|w| w.saturating_sub(self.lateness_ms)))
            })
            .unwrap_or(i64::MIN);
        let mut touchpoints = Touchpoints::new(self.settings.max_touchpoints, self.lookback_ms);
        touchpoints.set_view_lookback(self.view_horizon_ms());
        Task::new(claim, closed_through, touchpoints, seen)
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
        self.status.partitions_claimed.inc();
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
            let pos = t.position(
                wm,
                self.click_horizon_ms(),
                self.longest_ms() + self.lateness_ms + self.view_horizon_ms(),
            );
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
            self.status.partitions_lost.inc();
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
        self.registry.slots()
    }

    /// (name, version, sha256) of the active set, in order.
    pub fn active_set(&self) -> Vec<(String, String, String)> {
        self.registry.active_set()
    }

    /// Installs a new active set (see [`Registry::install`]). Cheap (no compilation happens
    /// here), so it runs on the event path between two poll batches.
    ///
    /// A promoted shadow carries its open windows over: in every window it computes, the live
    /// version it replaces is dropped, so the window finishes on the promoted version alone and
    /// its next revision is live (its shadow rows so far become the rows it retracts from if
    /// it fails later). Keys only the replaced version published are withheld at that revision
    /// (the promoted version no longer vouches for them).
    pub fn install(&mut self, specs: Vec<PluginSpec>) {
        for Promotion { from, to } in self.registry.install(specs) {
            let mut windows = 0;
            for task in self.tasks.values_mut() {
                for w in task.windows.values_mut() {
                    let (Some(i_from), Some(i_to)) = (
                        w.accs.iter().position(|(v, _)| *v == from),
                        w.accs.iter().position(|(v, _)| *v == to),
                    ) else {
                        continue;
                    };
                    for r in &mut w.published[i_to] {
                        r.shadow = false;
                    }
                    let replaced = std::mem::take(&mut w.published[i_from]);
                    w.retract.extend(replaced);
                    w.accs.remove(i_from);
                    w.published.remove(i_from);
                    w.dirty = true;
                    windows += 1;
                }
            }
            for set in self.window_sets.values_mut() {
                if set.contains(&to) {
                    set.retain(|&v| v != from);
                }
            }
            tracing::info!(
                windows,
                "promoted shadow carried its open windows over from the version it replaced"
            );
        }
    }

    /// Loads shadows at start-up (see [`Registry::add_shadow`]).
    pub fn add_shadows(&mut self, shadows: Vec<Plugin>) {
        for p in shadows {
            self.registry.add_shadow(p);
        }
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
        self.registry.set_quarantine(
            s.quarantine_after,
            Duration::from_secs(s.quarantine_window_secs),
        );
        for t in self.tasks.values_mut() {
            t.touchpoints
                .set_params(s.max_touchpoints, s.lookback_secs as i64 * 1000);
            t.touchpoints
                .set_view_lookback(s.view_lookback_secs as i64 * 1000);
        }
        self.lookback_ms = s.lookback_secs as i64 * 1000;
        tracing::info!(?s, "live settings applied");
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

    /// Bytes of the plugins' accumulators in open windows, per plugin name, over owned
    /// partitions (the window part of `state_bytes`; for the benchmark's state report).
    pub fn accumulator_bytes(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for w in self.tasks.values().flat_map(|t| t.windows.values()) {
            for (v, acc) in &w.accs {
                if let (Some(acc), Some(slot)) = (acc, self.registry.slot(*v)) {
                    *out.entry(slot.plugin.info.name.clone()).or_default() += acc.len();
                }
            }
        }
        out
    }

    /// Processes one message. Never fails: a bad message becomes a dead letter.
    #[inline]
    pub fn process(&mut self, m: RawMessage<'_>, clock: &Clock) {
        if !self.tasks.contains_key(&m.partition) {
            if !self.assign_on_first_message {
                // A partition lost to another member's claim that the group has not revoked
                // yet: its new owner reads it.
                self.status.redelivered.inc();
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
                if self.status.redelivered.inc().is_power_of_two() {
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
            self.status.replayed.inc();
        } else {
            *self.partition_messages.entry(m.partition).or_default() += 1;
            self.status.messages.inc();
        }
        let ingest_us = clock.now_ms * 1000;
        let payload = m.payload.unwrap_or_default();
        let ev = match event::decode(payload, clock.now_ms, &self.validation)
            .and_then(|ev| self.rates.apply(ev))
        {
            Ok(ev) => ev,
            // Already in dead_letters: committed before the events table, so this holds for
            // replayed messages and for the first ones above the events floor alike.
            Err(_) if m.offset < task.dead_letter_floor => return,
            Err(rej) => {
                self.status.dead_letters.fetch_add(1, Relaxed);
                self.status.dead_by_reason[rej.reason as usize].inc();
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
            self.status.valid_events.inc();
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
                self.status.duplicates.inc();
                if self.build_tables {
                    self.events
                        .push(&ev, m.partition, m.offset, ingest_us, false, true);
                }
            }
            return;
        }
        self.place(m.partition, m.offset, &ev, replay, ingest_us, clock, None);
    }

    /// Places a valid event that is not a copy: the partition's watermark, its window (unless
    /// late), the user's touchpoints, the plugins' pending batch and the events table's row.
    /// `given_late`: a restatement (`crate::restate`) passes the verdict the daemon recorded in
    /// `campaign_events` (or `true` for the clicks before the restated period, which only feed
    /// the touchpoints) instead of deciding it from a watermark; its windows are closed by
    /// [`close_through`](Self::close_through), so the watermark is not moved either.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn place(
        &mut self,
        partition: i32,
        offset: i64,
        ev: &event::Event<'_>,
        replay: bool,
        ingest_us: i64,
        clock: &Clock,
        given_late: Option<bool>,
    ) {
        let task = self.tasks.get_mut(&partition).expect("assigned");
        let m = (partition, offset);
        if given_late.is_none() {
            self.watermarks.observe(m.0, ev.time_ms, clock.instant);
        }

        // The host's window (`window.size_secs`): its lateness is the event's verdict in
        // `campaign_events`. Hour and day windows of the same event may still be open.
        let start = window_start(ev.time_ms, self.size_ms);
        // While replaying, closed is only what the tables record as closed. The previous owner
        // may have run with a larger `allowed_lateness_ms` and left windows open (published,
        // not final) that this owner's lateness calls closed at once: they are rebuilt here
        // and published final after the replay, instead of staying "not final" for good.
        let closed = match given_late {
            Some(_) => i64::MIN,
            None if replay => task.closed_through,
            None => closed_through(task, &self.watermarks, m.0, self.lateness_ms),
        };
        let late_for = |end: i64| given_late.unwrap_or(end <= closed);
        let late = late_for(start + self.size_ms);
        let campaign = self.campaigns.intern(&ev.campaign_id, start);
        let ad = self.ads.intern(&ev.ad_id, start);
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
                .or_insert(m.1);
            *first = (*first).min(m.1);
        } else if ev.kind == EventKind::Impression && self.registry.wants_views() {
            task.touchpoints.record_view(
                &ev.user_id,
                Touchpoint {
                    time_ms: ev.time_ms,
                    campaign,
                    ad,
                },
            );
            let first = task
                .view_offsets
                .entry(ev.time_ms.div_euclid(60_000))
                .or_insert(m.1);
            *first = (*first).min(m.1);
        }
        if late && !replay {
            self.status.late_events.inc();
        }
        let kind = match ev.kind {
            EventKind::Impression => plugin::kind::IMPRESSION,
            EventKind::Click => plugin::kind::CLICK,
            EventKind::Conversion => plugin::kind::CONVERSION,
        };
        let spans = self.registry.spans();
        let mut done: [(i64, i64); 3] = [(0, 0); 3];
        for (n, span) in Span::ALL.into_iter().enumerate() {
            if !spans[n] {
                continue;
            }
            let key = if span == Span::Minute {
                (start, start + self.size_ms)
            } else {
                self.calendar.bounds(span, &ev.campaign_id, ev.time_ms)
            };
            // Two spans with the same bounds (`window.size_secs = 3600`) share one window.
            if done[..n].contains(&key) || late_for(key.1) {
                continue;
            }
            done[n] = key;
            let (registry, window_sets, calendar) =
                (&self.registry, &mut self.window_sets, &self.calendar);
            let w = task.windows.entry(key).or_insert_with(|| {
                // The versions this member first opened the window with, in any partition:
                // the active ones whose span has these bounds for this event.
                let set = window_sets.entry(key).or_insert_with(|| {
                    registry
                        .active()
                        .iter()
                        .copied()
                        .filter(|&v| {
                            registry.slot(v).is_some_and(|s| {
                                let sp = s.plugin.info.window;
                                sp == span
                                    || calendar.bounds(sp, &ev.campaign_id, ev.time_ms) == key
                            })
                        })
                        .collect()
                });
                let needs = needs_of(registry, set);
                let mut pending = plugin::new_batch();
                pending.attributes = vec![Vec::new(); needs.attributes.width()];
                Window {
                    pending,
                    needs,
                    attribute_names: attribute_names_of(registry, set),
                    ranks: vec![
                        Default::default();
                        plugin::ATTRIBUTE_DIMENSIONS + needs.attributes.width()
                    ],
                    accs: set.iter().map(|&v| (v, Some(Vec::new()))).collect(),
                    published: vec![Vec::new(); set.len()],
                    retract: Vec::new(),
                    campaigns: Default::default(),
                    min_offset: m.1,
                    dirty: false,
                }
            });
            w.campaigns.insert(campaign);
            let needs = w.needs;
            let tps = match (needs.touchpoints, ev.kind) {
                (false, _) => None,
                (true, EventKind::Conversion) => {
                    let clicks = task.touchpoints.for_conversion(&ev.user_id, ev.time_ms);
                    let views = if needs.views {
                        task.touchpoints.views_for(&ev.user_id, ev.time_ms)
                    } else {
                        &[]
                    };
                    merge_touchpoints(clicks, views, &mut self.tp_scratch);
                    // The touchpoints' ids now live in this window's accumulators too.
                    for tp in &self.tp_scratch {
                        self.campaigns.touch(tp.campaign, key.0);
                        self.ads.touch(tp.ad, key.0);
                    }
                    Some(&self.tp_scratch[..])
                }
                (true, _) => Some(&[][..]),
            };
            let mut extra = plugin::Extra::default();
            if !needs.columns.is_empty() {
                if needs.columns.has(Column::User) {
                    extra.user = crate::dedup::hash_id(&ev.user_id);
                }
                for (i, &c) in Columns::DIMENSIONS.iter().enumerate() {
                    if !needs.columns.has(c) {
                        continue;
                    }
                    let v = match c {
                        Column::Device => ev.device.as_deref(),
                        Column::Country => ev.country.as_deref(),
                        Column::Placement => ev.placement.as_deref(),
                        Column::Currency | Column::User => ev.currency.as_deref(),
                    };
                    let id = self
                        .dims
                        .intern(v.filter(|v| !v.is_empty()).unwrap_or(UNKNOWN), key.0);
                    let n = w.ranks[i].len() as u32;
                    w.ranks[i].entry(id).or_insert(n);
                    extra.dims[i] = id;
                }
            }
            plugin::push_event_with(
                &mut w.pending,
                kind,
                ev.time_ms,
                campaign,
                ad,
                ev.revenue_micros,
                tps,
                needs.columns,
                &extra,
            );
            for (g, name) in &w.attribute_names {
                let v = ev
                    .attributes
                    .binary_search_by(|(k, _)| (**k).cmp(&**name))
                    .ok()
                    .map(|i| &*ev.attributes[i].1)
                    .filter(|v| !v.is_empty());
                let id = self.dims.intern(v.unwrap_or(UNKNOWN), key.0);
                let ranks = &mut w.ranks[plugin::ATTRIBUTE_DIMENSIONS + g];
                let n = ranks.len() as u32;
                ranks.entry(id).or_insert(n);
                w.pending.attributes[*g].push(id);
            }
            w.min_offset = w.min_offset.min(m.1);
        }
        if self.build_tables && !replay {
            self.events.push(ev, m.0, m.1, ingest_us, late, false);
        }
    }

    /// A restatement (`crate::restate`) places an event read back from `campaign_events` of
    /// `partition`, with the lateness verdict the daemon recorded for it (see `place`). The
    /// partition starts fresh at its first event, as in empty tables.
    pub fn restate_event(
        &mut self,
        partition: i32,
        offset: i64,
        ev: &event::Event<'_>,
        late: bool,
        clock: &Clock,
    ) {
        if !self.tasks.contains_key(&partition) {
            let claim = Claimed {
                partition,
                ..Default::default()
            };
            self.assign(claim, clock.instant);
        }
        self.place(partition, offset, ev, false, 0, clock, Some(late));
    }

    /// A restatement: the windows of `partition` ending at or before `end_ms` hold every event
    /// they will get, so the next [`publish`](Self::publish) gives them as final and drops them.
    /// (The daemon's windows close by the watermark instead; a restatement knows its input.)
    pub fn close_through(&mut self, partition: i32, end_ms: i64) {
        if let Some(t) = self.tasks.get_mut(&partition) {
            t.closed_through = t.closed_through.max(end_ms);
        }
    }

    /// A restatement is done with `partition`: its state is dropped.
    pub fn forget(&mut self, partition: i32) {
        self.tasks.remove(&partition);
        self.watermarks.revoke(partition);
    }

    /// Hands each window's pending events to every plugin, one call per plugin per window (of
    /// each partition).
    pub fn flush_plugins(&mut self) {
        let mut failures = Vec::new();
        for (p, task) in self.tasks.iter_mut() {
            for (&(start, _), w) in task.windows.iter_mut() {
                if w.pending.kinds.is_empty() {
                    continue;
                }
                for i in 0..w.accs.len() {
                    let id = w.accs[i].0;
                    let Some(a) = &w.accs[i].1 else { continue };
                    let Some(slot) = self.registry.live_slot(id) else {
                        w.poison(i);
                        continue;
                    };
                    let info = &slot.plugin.info;
                    let limit = info.max_dimension_values;
                    let folds = Columns::DIMENSIONS
                        .iter()
                        .enumerate()
                        .any(|(d, &c)| info.columns.has(c) && w.ranks[d].len() > limit)
                        || info
                            .attributes
                            .slots
                            .iter()
                            .any(|&g| w.ranks[plugin::ATTRIBUTE_DIMENSIONS + g].len() > limit);
                    let batch = if folds {
                        let other = self.dims.intern(OTHER, start);
                        let ranks = &w.ranks;
                        let fold = |d: usize, v: u32| {
                            if ranks[d].get(&v).is_some_and(|&r| (r as usize) >= limit) {
                                other
                            } else {
                                v
                            }
                        };
                        let batch = plugin::batch_for(&w.pending, info, Some(&fold));
                        let before = plugin::batch_for(&w.pending, info, None);
                        let changed = |a: &[u32], b: &[u32]| {
                            a.iter().zip(b).filter(|(x, y)| x != y).count() as u64
                        };
                        let folded = Columns::DIMENSIONS
                            .iter()
                            .filter(|&&c| info.columns.has(c))
                            .map(|&c| changed(dim_of(&before, c), dim_of(&batch, c)))
                            .chain(
                                before
                                    .attributes
                                    .iter()
                                    .zip(&batch.attributes)
                                    .map(|(a, b)| changed(a, b)),
                            )
                            .sum::<u64>();
                        self.status.dimension_values_folded.inc_by(folded);
                        batch
                    } else {
                        plugin::batch_for(&w.pending, info, None)
                    };
                    let t = Instant::now();
                    let r = slot.plugin.accumulate(a, &batch);
                    slot.record_call(t.elapsed());
                    match r {
                        Ok(next) => w.accs[i].1 = Some(next),
                        Err(e) => {
                            failures.push((id, *p, start, e));
                            w.poison(i);
                        }
                    }
                }
                plugin::clear_batch(&mut w.pending);
                w.dirty = true;
            }
        }
        for (id, _, start, e) in failures {
            self.registry.on_failure(id, start, &e);
        }
    }

    /// Once per commit interval: advances the watermarks, publishes changed windows as a new
    /// revision (final for windows their partition's watermark closed), and takes everything to
    /// commit, with the position of every owned partition and of those given up since.
    pub fn tick(&mut self, clock: &Clock) -> CommitBatch {
        let rows = self.publish(clock);
        self.seq += 1;
        let horizon = self.click_horizon_ms();
        let view_horizon = self.longest_ms() + self.lateness_ms + self.view_horizon_ms();
        let mut positions = std::mem::take(&mut self.handoff);
        let mut dead_letter_floors = std::mem::take(&mut self.handoff_dead_letter_floors);
        for (p, t) in self.tasks.iter_mut() {
            positions.insert(
                *p,
                t.position(self.watermarks.of(*p), horizon, view_horizon),
            );
            dead_letter_floors.insert(*p, t.dead_letter_floor);
        }
        CommitBatch {
            positions,
            dead_letter_floors,
            seq: self.seq,
            events: self.events.take(),
            has_final: rows.iter().any(|r| r.is_final),
            click_horizon_ms: horizon,
            metrics: (!rows.is_empty()).then(|| metrics_batch(&rows, &self.topic)),
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
        let final_only = self.final_only;
        let mut rows = Vec::new();
        let mut failures = Vec::new();
        let mut closed_windows = 0u64;
        let mut open_windows = 0u64;
        for (&p, task) in self.tasks.iter_mut() {
            if task.replaying() {
                open_windows += task.windows.len() as u64;
                continue;
            }
            // Revisions rise with the epoch (a new owner, a restart) and the commit sequence.
            let revision = ((task.epoch as i64) << 32) | ((self.seq + 1) & 0xffff_ffff) as i64;
            let mut closed = Vec::new();
            task.closed_through = closed_through(task, &self.watermarks, p, self.lateness_ms);
            for (&(start, end), w) in task.windows.iter_mut() {
                let is_final = end <= task.closed_through;
                if !is_final && (!w.dirty || final_only) {
                    continue;
                }
                w.dirty = false;
                let fresh_from = rows.len();
                for i in 0..w.accs.len() {
                    let id = w.accs[i].0;
                    let Some(a) = &w.accs[i].1 else { continue };
                    let Some(slot) = self.registry.live_slot(id) else {
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
                                let dimensions = if r.dimensions.is_empty() {
                                    None
                                } else {
                                    let mut cells = r
                                        .dimensions
                                        .iter()
                                        .map(|d| {
                                            let name = slot.plugin.dimension_name(d.key);
                                            let v = self.dims.name(d.value).ok_or_else(|| {
                                                PluginError::Malformed(format!(
                                                    "unknown {name} value id {}",
                                                    d.value
                                                ))
                                            })?;
                                            Ok((name, v))
                                        })
                                        .collect::<Result<Vec<_>, PluginError>>()?;
                                    cells.sort();
                                    let text = cells
                                        .iter()
                                        .map(|(c, v)| format!("{c}={v}"))
                                        .collect::<Vec<_>>()
                                        .join(";");
                                    Some(Arc::<str>::from(text))
                                };
                                Ok(MetricRecord {
                                    window_start_ms: start,
                                    window_end_ms: end,
                                    campaign_id: campaign.clone(),
                                    ad_id: ad,
                                    dimensions,
                                    plugin_params: slot.params.clone(),
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
                                    shadow: slot.shadow,
                                    currency: Some(self.rates.reporting_shared()),
                                })
                            })
                            .collect::<Result<Vec<_>, PluginError>>()
                    });
                    slot.record_call(t.elapsed());
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
                // A failed plugin's share of this partition's window is unknown: every metric it
                // declares is withheld for every campaign of the window (beside the rows it had
                // published, retracted below), at every revision of the window, so campaigns
                // whose first event came after the failure are covered too.
                let dead: Vec<usize> = w
                    .accs
                    .iter()
                    .filter(|(_, a)| a.is_none())
                    .map(|(v, _)| *v)
                    .collect();
                for v in dead {
                    let Some(slot) = self.registry.slot(v) else {
                        continue;
                    };
                    for &c in &w.campaigns {
                        let Some(campaign) = self.campaigns.name(c) else {
                            continue;
                        };
                        for metric in &slot.plugin.info.metrics {
                            if w.retract.iter().any(|r| {
                                r.ad_id.is_none()
                                    && r.dimensions.is_none()
                                    && r.shadow == slot.shadow
                                    && r.metric == *metric
                                    && r.campaign_id == *campaign
                            }) {
                                continue;
                            }
                            w.retract.push(MetricRecord {
                                window_start_ms: start,
                                window_end_ms: end,
                                campaign_id: campaign.clone(),
                                ad_id: None,
                                dimensions: None,
                                plugin_params: slot.params.clone(),
                                metric: metric.clone(),
                                value: 0.0,
                                numerator: 0.0,
                                denominator: 0.0,
                                plugin: slot.name.clone(),
                                plugin_version: slot.version.clone(),
                                plugin_sha256: slot.sha256.clone(),
                                revision,
                                partition: p,
                                is_final,
                                computed_at_ms: clock.now_ms,
                                withheld: true,
                                shadow: slot.shadow,
                                currency: Some(self.rates.reporting_shared()),
                            });
                        }
                    }
                }
                // A key published afresh at this revision by the same plugin (live or shadow)
                // is not retracted: a promoted shadow took over the keys of the version it
                // replaced. (A shadow shares the live version's keys but not its rows.)
                for mut r in std::mem::take(&mut w.retract) {
                    if rows[fresh_from..].iter().any(|f| {
                        f.shadow == r.shadow
                            && f.plugin == r.plugin
                            && f.campaign_id == r.campaign_id
                            && f.ad_id == r.ad_id
                            && f.dimensions == r.dimensions
                            && f.metric == r.metric
                    }) {
                        continue;
                    }
                    (r.value, r.numerator, r.denominator) = (0.0, 0.0, 0.0);
                    (r.revision, r.is_final, r.withheld, r.computed_at_ms) =
                        (revision, is_final, true, clock.now_ms);
                    rows.push(r);
                }
                if is_final {
                    closed.push((start, end));
                }
            }
            for start in &closed {
                task.windows.remove(start);
            }
            closed_windows += closed.len() as u64;
            open_windows += task.windows.len() as u64;
        }
        for (id, start, e) in failures {
            self.registry.on_failure(id, start, &e);
        }
        let open_from = self.open_from();
        self.window_sets = self.window_sets.split_off(&(open_from, i64::MIN));
        let in_windows = self
            .tasks
            .values()
            .flat_map(|t| t.windows.values())
            .flat_map(|w| w.accs.iter().map(|(v, _)| *v))
            .chain(self.window_sets.values().flatten().copied());
        self.registry.collect(in_windows);
        self.status.windows_finalized.inc_by(closed_windows);
        self.status.open_windows.set(open_windows);
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
            self.evict_ids(open_from);
            self.status.dedup_ids.set(ids as u64);
            self.status.dedup_bytes.store(id_bytes as u64, Relaxed);
            self.long_state_bytes = (id_bytes + self.touchpoint_bytes()) as u64;
            self.last_prune = clock.instant;
        }
        self.publish_stats();
        self.status
            .touchpoint_users
            .set(self.touchpoint_users() as u64);
        self.live.update(&rows, &self.status);
        rows
    }

    /// Frees interned ids no open (or future) window and no remembered click can hold: the
    /// interners live as long as the state that uses them, not as long as the process.
    /// `open_from`: see [`open_from`](Self::open_from), computed once per publish.
    fn evict_ids(&mut self, open_from: i64) {
        let mut held_campaigns = vec![false; self.campaigns.capacity()];
        let mut held_ads = vec![false; self.ads.capacity()];
        for t in self.tasks.values() {
            t.touchpoints.mark_ids(&mut held_campaigns, &mut held_ads);
        }
        self.campaigns.evict(open_from, &held_campaigns);
        self.ads.evict(open_from, &held_ads);
        self.dims.evict(open_from, &[]);
        self.status
            .interned_ids
            .set((self.campaigns.len() + self.ads.len()) as u64);
        crate::status::advance(
            &self.status.interned_ids_evicted,
            self.campaigns.evicted() + self.ads.evicted(),
        );
    }

    /// The start of the oldest window any owned partition has open or can still open (windows
    /// that can still open start after their partition's closed windows end).
    fn open_from(&self) -> i64 {
        let longest = self.longest_ms();
        self.tasks
            .values()
            .map(|t| {
                let next = t.closed_through.saturating_sub(longest - 1);
                t.windows.keys().next().map_or(next, |&(w, _)| w.min(next))
            })
            .min()
            .unwrap_or(i64::MAX)
    }

    /// Interned (campaign, ad) ids in use.
    pub fn interned_ids(&self) -> (usize, usize) {
        (self.campaigns.len(), self.ads.len())
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
            .set(self.long_state_bytes + windows as u64);
        self.status
            .partitions
            .lock()
            .unwrap()
            .clone_from(&self.partition_messages);
        *self.status.plugins.lock().unwrap() = self.registry.stats();
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
            .end_of_input(self.longest_ms() + self.lateness_ms);
        Ok(())
    }

    /// Events and dead letters buffered since the last tick.
    pub fn buffered(&self) -> usize {
        self.events.rows() + self.dead.rows()
    }
}

/// The dimension value of an event without that field.
const UNKNOWN: &str = "unknown";
/// The dimension value a plugin sees past its `max_dimension_values` (see `Window::ranks`).
const OTHER: &str = "other";

/// What a window opened with versions `set` must carry.
fn needs_of(registry: &super::registry::Registry, set: &[usize]) -> Needs {
    set.iter()
        .filter_map(|&v| registry.slot(v))
        .fold(Needs::default(), |n, s| {
            let i = &s.plugin.info;
            Needs {
                columns: n.columns.union(i.columns),
                attributes: n.attributes.union(i.attributes.set()),
                touchpoints: n.touchpoints || i.wants_touchpoints,
                views: n.views || i.wants_views,
            }
        })
}

/// The attribute (slot, name) pairs a window opened with versions `set` must carry, by slot.
fn attribute_names_of(
    registry: &super::registry::Registry,
    set: &[usize],
) -> Vec<(usize, std::sync::Arc<str>)> {
    let mut out: Vec<(usize, std::sync::Arc<str>)> = set
        .iter()
        .filter_map(|&v| registry.slot(v))
        .flat_map(|s| {
            let a = &s.plugin.info.attributes;
            a.slots.iter().copied().zip(a.names.iter().cloned())
        })
        .collect();
    out.sort_by_key(|(g, _)| *g);
    out.dedup_by_key(|(g, _)| *g);
    out
}

/// A batch's column of dimension `c`.
fn dim_of(b: &plugin::EventBatch, c: Column) -> &[u32] {
    match c {
        Column::Device => &b.devices,
        Column::Country => &b.countries,
        Column::Placement => &b.placements,
        Column::Currency | Column::User => &b.currencies,
    }
}

/// Clicks and views (each sorted by time) as one list of the plugins' touchpoints, oldest
/// first; on equal times the view comes first (a click is the later, stronger signal).
fn merge_touchpoints(
    clicks: &[Touchpoint],
    views: &[Touchpoint],
    out: &mut Vec<plugin::Touchpoint>,
) {
    out.clear();
    let tp = |t: &Touchpoint, kind| plugin::Touchpoint {
        time_ms: t.time_ms,
        campaign: t.campaign,
        ad: t.ad,
        kind,
    };
    let (mut c, mut v) = (clicks.iter().peekable(), views.iter().peekable());
    loop {
        match (c.peek(), v.peek()) {
            (Some(a), Some(b)) if b.time_ms <= a.time_ms => {
                out.push(tp(v.next().unwrap(), TouchKind::Impression))
            }
            (Some(_), _) => out.push(tp(c.next().unwrap(), TouchKind::Click)),
            (None, Some(_)) => out.push(tp(v.next().unwrap(), TouchKind::Impression)),
            (None, None) => break,
        }
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

/// End of the windows of partition `p` that are closed: those its watermark closed under the
/// lateness in force, and those closed earlier (under a smaller lateness, or by a previous owner).
#[inline]
fn closed_through(task: &Task, watermarks: &Watermarks, p: i32, lateness_ms: i64) -> i64 {
    task.closed_through
        .max(watermarks.of(p).saturating_sub(lateness_ms))
}
