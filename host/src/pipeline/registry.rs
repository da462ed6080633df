//! The plugin registry: every loaded plugin version, the active set new windows open with, and
//! each version's health (failures, quarantine, automatic rollback to the version it replaced).
//!
//! Windows name versions by their index here (`Window::accs`), so a swap never mixes versions
//! inside a window: open windows finish on the versions they opened with, and a version is
//! dropped only when neither the active set, a rollback, nor an open window can use it.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use crate::plugin::{Plugin, PluginError};
use crate::status::{PluginLabels, PluginStat, Status};

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
    pub(super) name: Arc<str>,
    pub(super) version: Arc<str>,
    pub(super) sha256: Arc<str>,
    pub calls: u64,
    pub errors: u64,
    pub busy: Duration,
    /// This version's series of `admetrics_plugin_call_seconds` (shared with the registry of
    /// `Status`; a version loaded again after being dropped continues the same series).
    call_seconds: prometheus_client::metrics::histogram::Histogram,
    pub state: SlotState,
    /// Times of recent failures (within the quarantine window).
    recent_failures: std::collections::VecDeque<Instant>,
    /// The version of the same plugin this one replaced, for automatic rollback.
    previous: Option<usize>,
}

impl Slot {
    pub fn new(plugin: Plugin, previous: Option<usize>, status: &Status) -> Self {
        let call_seconds = status
            .plugin_call_seconds
            .get_or_create_owned(&PluginLabels {
                plugin: plugin.info.name.clone(),
                version: plugin.info.version.clone(),
            });
        Slot {
            call_seconds,
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

    /// Counts one call (accumulate or finish) that took `took`, failed or not.
    pub fn record_call(&mut self, took: Duration) {
        self.busy += took;
        self.calls += 1;
        self.call_seconds.observe(took.as_secs_f64());
    }
}

/// One entry of a new plugin set sent by the watcher: a version already loaded (by sha256), or
/// a freshly compiled and validated one.
pub enum PluginSpec {
    Keep(String),
    New(Plugin),
}

pub struct Registry {
    /// Every loaded plugin version, by id; `None` once no window or set needs it any more.
    versions: Vec<Option<Slot>>,
    /// The active set: version ids new windows open with, in configuration order.
    active: Vec<usize>,
    quarantine_after: u32,
    quarantine_window: Duration,
    /// Whether any loaded version asks for touchpoints (the host then collects them).
    wants_touchpoints: bool,
    status: Arc<Status>,
}

impl Registry {
    pub fn new(
        plugins: Vec<Plugin>,
        quarantine_after: u32,
        quarantine_window: Duration,
        status: Arc<Status>,
    ) -> Self {
        let mut r = Registry {
            active: (0..plugins.len()).collect(),
            versions: plugins
                .into_iter()
                .map(|p| Some(Slot::new(p, None, &status)))
                .collect(),
            quarantine_after,
            quarantine_window,
            wants_touchpoints: false,
            status,
        };
        r.refresh_wants_touchpoints();
        r
    }

    /// The active set's version ids, in order: what a new window opens with.
    pub fn active(&self) -> &[usize] {
        &self.active
    }

    pub fn wants_touchpoints(&self) -> bool {
        self.wants_touchpoints
    }

    pub fn set_quarantine(&mut self, after: u32, window: Duration) {
        self.quarantine_after = after;
        self.quarantine_window = window;
    }

    /// The loaded, not quarantined version `id`, if any: what a window may still call.
    pub fn live_slot(&mut self, id: usize) -> Option<&mut Slot> {
        self.versions[id]
            .as_mut()
            .filter(|s| s.state != SlotState::Quarantined)
    }

    /// Version `id`, quarantined or not (`None` once dropped).
    pub fn slot(&self, id: usize) -> Option<&Slot> {
        self.versions.get(id).and_then(Option::as_ref)
    }

    /// Every loaded version's counters, for `/metrics`.
    pub fn stats(&self) -> Vec<PluginStat> {
        self.slots()
            .map(|s| PluginStat {
                name: s.name.to_string(),
                version: s.version.to_string(),
                state: match s.state {
                    SlotState::Active => "active",
                    SlotState::Retired => "retired",
                    SlotState::Quarantined => "quarantined",
                },
                calls: s.calls,
                errors: s.errors,
            })
            .collect()
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
    /// with (in every partition of this member: see `Processor::window_sets`); windows opened
    /// from now on use the new set. Cheap (no compilation happens here), so it can run on the
    /// event path between two poll batches.
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
                        self.versions
                            .push(Some(Slot::new(p, previous, &self.status)));
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
        self.status.plugin_swaps.inc();
        tracing::info!(active = ?self.active_set().iter().map(|(n, v, s)| format!("{n} {v} {}", &s[..12])).collect::<Vec<_>>(),
            "plugin set installed; open windows finish on their versions");
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
    pub fn on_failure(&mut self, id: usize, window: i64, e: &PluginError) {
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
        self.status.plugins_quarantined.inc();
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
                self.status.plugin_rollbacks.inc();
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
    pub fn collect(&mut self, in_windows: impl Iterator<Item = usize>) {
        let mut used = vec![false; self.versions.len()];
        for &a in &self.active {
            used[a] = true;
            if let Some(p) = self.versions[a].as_ref().and_then(|s| s.previous) {
                used[p] = true;
            }
        }
        for v in in_windows {
            used[v] = true;
        }
        for (id, v) in self.versions.iter_mut().enumerate() {
            if !used[id] && v.as_ref().is_some_and(|s| s.state != SlotState::Active) {
                *v = None;
            }
        }
        self.refresh_wants_touchpoints();
    }
}
