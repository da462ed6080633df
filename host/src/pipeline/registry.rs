//! The plugin registry: every loaded plugin version, the active set new windows open with, and
//! each version's health (failures, quarantine, automatic rollback to the version it replaced).
//!
//! Windows name versions by their index here (`Window::accs`), so a swap never mixes versions
//! inside a window: open windows finish on the versions they opened with, and a version is
//! dropped only when neither the active set, a rollback, nor an open window can use it.
//!
//! A **shadow** is a candidate version loaded beside the live one of its name: it is in the
//! active set, so it sees the same batches of the windows it opened with, and its rows are
//! written with `shadow = true` (never current; `admetrics plugin diff` compares them). Its
//! failures quarantine the shadow alone and never roll back or remove anything live. Installing
//! the shadow's build as the live version *promotes* it: the same loaded version, accumulators
//! and all, becomes live, so the windows it has open finish on it (no restart, no gap), and the
//! version it replaced leaves those windows (see [`Promotion`]).

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
    /// Its parameters as JSON (`None` without any): stamped on its rows, part of its identity.
    pub(super) params: Option<Arc<str>>,
    pub calls: u64,
    pub errors: u64,
    pub busy: Duration,
    /// This version's series of `admetrics_plugin_call_seconds` (shared with the registry of
    /// `Status`; a version loaded again after being dropped continues the same series).
    call_seconds: prometheus_client::metrics::histogram::Histogram,
    pub state: SlotState,
    /// Loaded as the shadow of the live version of its name (see the module doc).
    pub shadow: bool,
    /// Times of recent failures (within the quarantine window).
    recent_failures: std::collections::VecDeque<Instant>,
    /// The version of the same plugin this one replaced, for automatic rollback.
    previous: Option<usize>,
}

impl Slot {
    pub fn new(plugin: Plugin, previous: Option<usize>, shadow: bool, status: &Status) -> Self {
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
            params: (!plugin.info.params.is_empty())
                .then(|| crate::plugin::params_json(&plugin.info.params).into()),
            plugin,
            calls: 0,
            errors: 0,
            busy: Duration::ZERO,
            state: SlotState::Active,
            shadow,
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
/// a freshly compiled and validated one; live, or the shadow of the live plugin of its name.
// A handful per hot swap, each moved once into the registry: boxing `Plugin` would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum PluginSpec {
    Keep { sha256: String, shadow: bool },
    New { plugin: Plugin, shadow: bool },
}

/// A shadow version became live (`install`): `from`, the live version of its name it replaces,
/// leaves the open windows that `to` computes too (the processor drops its accumulators there,
/// so each such window finishes on the promoted version alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promotion {
    pub from: usize,
    pub to: usize,
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
    /// Whether any loaded version asks for views (the host then remembers impressions).
    wants_views: bool,
    /// Per `Span::ALL`: whether a version of the active set uses windows of that span.
    spans: [bool; 3],
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
                .map(|p| Some(Slot::new(p, None, false, &status)))
                .collect(),
            quarantine_after,
            quarantine_window,
            wants_touchpoints: false,
            wants_views: false,
            spans: [false; 3],
            status,
        };
        r.refresh_wants_touchpoints();
        r
    }

    /// Loads `p` as the shadow of the live version of its name (at start-up; the watcher's
    /// changes come through [`install`](Self::install)). A build identical to a live one is
    /// skipped: it would compare a version with itself.
    pub fn add_shadow(&mut self, p: Plugin) {
        if self.slots().any(|s| *s.sha256 == *p.info.sha256) {
            tracing::warn!(plugin = %p.info.name, version = %p.info.version,
                "shadow is the live build itself; nothing to compare, not loaded as a shadow");
            return;
        }
        self.versions
            .push(Some(Slot::new(p, None, true, &self.status)));
        self.active.push(self.versions.len() - 1);
        self.refresh_wants_touchpoints();
    }

    /// The active set's version ids, in order: what a new window opens with.
    pub fn active(&self) -> &[usize] {
        &self.active
    }

    pub fn wants_touchpoints(&self) -> bool {
        self.wants_touchpoints
    }

    pub fn wants_views(&self) -> bool {
        self.wants_views
    }

    /// Per `Span::ALL`: whether new windows of that span open (a version of the active set
    /// uses it).
    pub fn spans(&self) -> [bool; 3] {
        self.spans
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
                state: match (s.shadow, s.state) {
                    (false, SlotState::Active) => "active",
                    (false, SlotState::Retired) => "retired",
                    (false, SlotState::Quarantined) => "quarantined",
                    (true, SlotState::Active) => "shadow",
                    (true, SlotState::Retired) => "shadow_retired",
                    (true, SlotState::Quarantined) => "shadow_quarantined",
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

    /// (name, version, sha256) of the live versions of the active set (shadows left out), in
    /// order.
    pub fn active_set(&self) -> Vec<(String, String, String)> {
        self.active
            .iter()
            .filter_map(|&v| self.versions[v].as_ref())
            .filter(|s| !s.shadow)
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
    ///
    /// A live entry whose build is a loaded shadow promotes that shadow (returned, for the
    /// processor to move the open windows over); a shadow entry whose build is already live is
    /// skipped (it would compare a version with itself).
    pub fn install(&mut self, specs: Vec<PluginSpec>) -> Vec<Promotion> {
        let mut next: Vec<usize> = Vec::new();
        let mut promoted = Vec::new();
        for spec in specs {
            let (id, shadow) = match spec {
                PluginSpec::Keep { sha256, shadow } => {
                    // The version in force first: after a parameter change, a retired slot of
                    // the same build with the old parameters may still finish its windows.
                    let find = |active: bool| {
                        self.versions.iter().enumerate().position(|(id, v)| {
                            v.as_ref().is_some_and(|s| {
                                *s.sha256 == *sha256
                                    && s.state != SlotState::Quarantined
                                    && (!active || self.active.contains(&id))
                            })
                        })
                    };
                    match find(true).or_else(|| find(false)) {
                        Some(id) => (id, shadow),
                        None => {
                            tracing::warn!(sha256 = %sha256, "plugin version to keep is no longer loaded; skipped");
                            continue;
                        }
                    }
                }
                PluginSpec::New { plugin: p, shadow } => {
                    if let Some(id) = self.versions.iter().position(|v| {
                        v.as_ref().is_some_and(|s| {
                            s.sha256.as_ref() == p.info.sha256
                                && s.plugin.info.params == p.info.params
                        })
                    }) {
                        (id, shadow)
                    } else {
                        let previous = (!shadow).then(|| self.live_of(&p.info.name)).flatten();
                        self.versions
                            .push(Some(Slot::new(p, previous, shadow, &self.status)));
                        (self.versions.len() - 1, shadow)
                    }
                }
            };
            let slot = self.versions[id].as_mut().expect("found or pushed above");
            match (slot.shadow, shadow) {
                (false, true) => {
                    tracing::warn!(plugin = %slot.name, version = %slot.version,
                        "shadow is the live build itself; nothing to compare, not loaded as a shadow");
                    continue;
                }
                (true, false) => {
                    // The shadow's build is now the live one: promote the loaded version.
                    let name = slot.name.clone();
                    let from = self.live_of(&name);
                    let slot = self.versions[id].as_mut().expect("found above");
                    slot.shadow = false;
                    slot.previous = from;
                    if let Some(from) = from {
                        promoted.push(Promotion { from, to: id });
                    }
                    tracing::info!(plugin = %name, version = %slot.version,
                        "shadow promoted to live; its open windows carry over");
                }
                _ => {}
            }
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
            shadows = ?self.shadows(),
            "plugin set installed; open windows finish on their versions");
        promoted
    }

    /// The live (not shadow) version of plugin `name` in the active set.
    fn live_of(&self, name: &str) -> Option<usize> {
        self.active.iter().copied().find(|&a| {
            self.versions[a]
                .as_ref()
                .is_some_and(|s| !s.shadow && s.plugin.info.name == name)
        })
    }

    /// "name version" of the shadows in the active set.
    pub fn shadows(&self) -> Vec<String> {
        self.active
            .iter()
            .filter_map(|&v| self.versions[v].as_ref())
            .filter(|s| s.shadow)
            .map(|s| format!("{} {}", s.name, s.version))
            .collect()
    }

    fn refresh_wants_touchpoints(&mut self) {
        self.wants_touchpoints = self
            .versions
            .iter()
            .flatten()
            .any(|s| s.plugin.info.wants_touchpoints);
        self.wants_views = self
            .versions
            .iter()
            .flatten()
            .any(|s| s.plugin.info.wants_views);
        self.spans = [false; 3];
        for &v in &self.active {
            if let Some(s) = &self.versions[v] {
                let i = crate::plugin::Span::ALL
                    .iter()
                    .position(|&x| x == s.plugin.info.window)
                    .expect("every span is in ALL");
                self.spans[i] = true;
            }
        }
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
        let shadow = slot.shadow;
        let now = Instant::now();
        slot.recent_failures.push_back(now);
        while slot
            .recent_failures
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.quarantine_window)
        {
            slot.recent_failures.pop_front();
        }
        if shadow {
            // Never against the live version: the shadow's own counters and log line only.
            self.status.shadow_errors.inc();
            tracing::warn!(plugin = %slot.name, version = %slot.version, window_start_ms = window, error = %e,
                "shadow plugin failed; its shadow rows for this window are withheld, the live version is not affected");
        } else {
            self.status.plugin_errors.fetch_add(1, Relaxed);
            tracing::error!(plugin = %slot.name, version = %slot.version, window_start_ms = window, error = %e,
                "plugin failed; its rows for this window are withheld");
        }
        if (slot.recent_failures.len() as u32) < self.quarantine_after
            || slot.state == SlotState::Quarantined
        {
            return;
        }
        slot.state = SlotState::Quarantined;
        let (name, version, previous) = (slot.name.clone(), slot.version.clone(), slot.previous);
        if shadow {
            self.status.shadows_quarantined.inc();
        } else {
            self.status.plugins_quarantined.inc();
        }
        let Some(pos) = self.active.iter().position(|&a| a == id) else {
            return;
        };
        if shadow {
            self.active.remove(pos);
            tracing::warn!(plugin = %name, version = %version,
                "shadow plugin quarantined after repeated failures; the live version is not affected");
            return;
        }
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
