//! Hot reload: a thread that watches the config file and the plugin files, compiles and
//! validates changed plugins **off the event path**, and hands the ingest thread a ready plugin
//! set (or new live settings) through a channel. The ingest thread only swaps pointers
//! (`Processor::install`), between two poll batches.
//!
//! Polling (every `plugins.watch_interval_ms`, default 500 ms) rather than inotify: it sees
//! files replaced by rename, edited in place, on network or container mounts alike, and a plugin
//! file is ~100 KB, so hashing every file each round costs well under a millisecond.
//!
//! A plugin that fails to load (not a component, wrong world, bad self-description, failing
//! smoke test) is rejected with a log line and the version already running for that file keeps
//! serving. Each key of a config change is either applied at once (out-of-orderness, lateness,
//! idle timeout, clock skew bound, attribution, validation time bounds, the plugin list, the
//! watch interval, quarantine thresholds) or refused with its name and "restart to apply"
//! (source, every `kafka.*` key, window size, `validation.max_message_bytes`, sandbox limits,
//! every `iceberg.*`, `commit.*`, `dedup.*` and `http.*` key): see [`classify`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::Sender;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::pipeline::processor::{LiveSettings, PluginSpec};
use crate::plugin::{Plugin, PluginRuntime};
use crate::status::Status;

/// What the watcher tells the ingest thread.
pub enum Control {
    Plugins(Vec<PluginSpec>),
    Settings(LiveSettings),
}

/// The plugin files a configuration names: `plugins.paths`, then `plugins.dir/*.wasm` by name.
pub fn plugin_files(cfg: &Config) -> Vec<PathBuf> {
    files_of(&cfg.plugins.paths, cfg.plugins.dir.as_deref())
}

/// The shadow plugin files: `plugins.shadow_paths`, then `plugins.shadow_dir/*.wasm` by name.
pub fn shadow_files(cfg: &Config) -> Vec<PathBuf> {
    files_of(&cfg.plugins.shadow_paths, cfg.plugins.shadow_dir.as_deref())
}

fn files_of(paths: &[PathBuf], dir: Option<&Path>) -> Vec<PathBuf> {
    let mut files = paths.to_vec();
    if let Some(dir) = dir
        && let Ok(rd) = std::fs::read_dir(dir)
    {
        let mut in_dir: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
            .collect();
        in_dir.sort();
        files.extend(in_dir);
    }
    files
}

type FileStamp = (u64, Option<std::time::SystemTime>, u64);

fn stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok(), m.ino()))
}

fn sha_of(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Loads the configured plugins at start-up. Any failure is fatal here (a daemon that starts
/// without a metric it was told to compute is worse than one that refuses to start); later
/// changes are validated by the watcher and rejected without stopping anything.
pub fn load_initial(runtime: &PluginRuntime, cfg: &Config) -> anyhow::Result<Loaded> {
    let mut plugins: Vec<Plugin> = Vec::new();
    let mut shas = BTreeMap::new();
    for path in plugin_files(cfg) {
        let p = runtime.load(&path)?;
        if let Some(other) = plugins.iter().find(|o| o.info.name == p.info.name) {
            anyhow::bail!(
                "{} and {} both define plugin {:?}",
                other.path.display(),
                path.display(),
                p.info.name
            );
        }
        tracing::info!(plugin = %p.info.name, version = %p.info.version, sha256 = %&p.info.sha256[..12],
            path = %path.display(), "plugin loaded");
        shas.insert(path, p.info.sha256.clone());
        plugins.push(p);
    }
    anyhow::ensure!(
        !plugins.is_empty(),
        "no plugins configured (plugins.paths / plugins.dir)"
    );
    let mut shadows: Vec<Plugin> = Vec::new();
    for path in shadow_files(cfg) {
        let p = runtime.load(&path)?;
        if !plugins.iter().any(|l| l.info.name == p.info.name) {
            anyhow::bail!(
                "{} is a shadow of plugin {:?}, but no live plugin of that name is configured \
                 (a shadow runs beside the live version it may replace)",
                path.display(),
                p.info.name
            );
        }
        if let Some(other) = shadows.iter().find(|o| o.info.name == p.info.name) {
            anyhow::bail!(
                "{} and {} are both shadows of plugin {:?}",
                other.path.display(),
                path.display(),
                p.info.name
            );
        }
        tracing::info!(plugin = %p.info.name, version = %p.info.version, sha256 = %&p.info.sha256[..12],
            path = %path.display(), "shadow plugin loaded");
        shas.insert(path, p.info.sha256.clone());
        shadows.push(p);
    }
    let names = plugins
        .iter()
        .chain(&shadows)
        .map(|p| (p.info.sha256.clone(), p.info.name.clone()))
        .collect();
    Ok(Loaded {
        plugins,
        shadows,
        installed: shas,
        names,
    })
}

/// What [`load_initial`] loaded.
pub struct Loaded {
    pub plugins: Vec<Plugin>,
    pub shadows: Vec<Plugin>,
    /// Path → sha256 of every file loaded (live and shadow), for the watcher.
    pub installed: BTreeMap<PathBuf, String>,
    /// sha256 → plugin name of every file loaded, for the watcher.
    pub names: BTreeMap<String, String>,
}

pub struct Watcher {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct State {
    cfg: Config,
    config_path: Option<PathBuf>,
    config_text: Option<String>,
    /// The file's `[source]` at start-up, before `run --file` / `--stream` overrode it.
    file_source: Option<crate::config::SourceConfig>,
    runtime: PluginRuntime,
    /// Path → sha256 of the version currently installed for it.
    installed: BTreeMap<PathBuf, String>,
    /// sha256 → plugin name of every version installed so far.
    names: BTreeMap<String, String>,
    /// Path → sha256 of a version that was rejected (so it is not recompiled every round).
    rejected: BTreeMap<PathBuf, String>,
    /// Path → (size, mtime, inode) and the sha256 read at that stamp: an unchanged file is not
    /// read and hashed again every round (a deploy replaces a file by rename, a new inode).
    stamps: BTreeMap<PathBuf, (FileStamp, String)>,
    tx: Sender<Control>,
    status: Arc<Status>,
}

/// Starts watching. `installed` and `names` are what `load_initial` loaded.
pub fn spawn(
    cfg: Config,
    runtime: PluginRuntime,
    (installed, names): (BTreeMap<PathBuf, String>, BTreeMap<String, String>),
    tx: Sender<Control>,
    status: Arc<Status>,
) -> std::io::Result<Watcher> {
    let stop = Arc::new(AtomicBool::new(false));
    let config_path = cfg.source_path.clone();
    let config_text = config_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let file_source = config_path
        .as_deref()
        .and_then(|p| Config::load(p).ok())
        .map(|c| c.source);
    let mut st = State {
        cfg,
        config_path,
        config_text,
        file_source,
        runtime,
        installed,
        names,
        rejected: BTreeMap::new(),
        stamps: BTreeMap::new(),
        tx,
        status,
    };
    let handle = {
        let stop = stop.clone();
        std::thread::Builder::new()
            .name("plugin-watch".into())
            .spawn(move || {
                while !stop.load(Relaxed) {
                    // Read each round: `plugins.watch_interval_ms` applies live.
                    std::thread::sleep(Duration::from_millis(
                        st.cfg.plugins.watch_interval_ms.max(10),
                    ));
                    st.check_config();
                    st.check_plugins();
                }
            })?
    };
    Ok(Watcher {
        stop,
        handle: Some(handle),
    })
}

impl State {
    fn check_config(&mut self) {
        let Some(path) = &self.config_path else {
            return;
        };
        let Ok(text) = std::fs::read_to_string(path) else {
            return;
        };
        if self.config_text.as_deref() == Some(text.as_str()) {
            return;
        }
        self.config_text = Some(text);
        let mut new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                self.status.config_refusals.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "config change refused; the running configuration stays");
                return;
            }
        };
        keep_cli_source(self.file_source.as_ref(), &self.cfg.source, &mut new.source);
        let changes = classify(&self.cfg, &new);
        for (key, reason) in &changes.refused {
            self.status.config_refusals.fetch_add(1, Relaxed);
            tracing::warn!(
                key,
                reason,
                "config change refused (restart to apply); the running value stays"
            );
        }
        // A reload counts only if it changed something in force (a file whose every change
        // was refused is not a successful reload).
        if !changes.applied.is_empty() {
            self.status.config_reloads.fetch_add(1, Relaxed);
            tracing::info!(keys = ?changes.applied, "config change applied");
        }
        let (old_live, new_live) = (
            LiveSettings::from_config(&self.cfg),
            LiveSettings::from_config(&changes.merged),
        );
        if old_live != new_live {
            let _ = self.tx.send(Control::Settings(new_live));
        }
        let plugin_settings = self.cfg.plugins.config != changes.merged.plugins.config
            || self.cfg.plugins.max_dimension_values != changes.merged.plugins.max_dimension_values;
        // The running values stay for everything refused.
        self.cfg = changes.merged;
        if plugin_settings {
            // Every plugin file is loaded again with its new settings at the next round.
            self.runtime = self.runtime.with_config(&self.cfg.plugins);
            self.installed.clear();
            self.rejected.clear();
        }
    }

    fn check_plugins(&mut self) {
        let live = plugin_files(&self.cfg);
        let shadow_from = live.len();
        let files: Vec<PathBuf> = live.into_iter().chain(shadow_files(&self.cfg)).collect();
        let mut current = BTreeMap::new();
        self.stamps.retain(|p, _| files.contains(p));
        for path in &files {
            let st = stamp(path);
            if let (Some(st), Some((seen, sha))) = (st, self.stamps.get(path))
                && st == *seen
            {
                current.insert(path.clone(), (sha.clone(), None));
                continue;
            }
            // A file being written may be short or unreadable for a moment; the next round sees it.
            if let Ok(bytes) = std::fs::read(path) {
                let sha = sha_of(&bytes);
                if let Some(st) = st {
                    self.stamps.insert(path.clone(), (st, sha.clone()));
                }
                current.insert(path.clone(), (sha, Some(bytes)));
            }
        }
        let unchanged = current.len() == self.installed.len()
            && current
                .iter()
                .all(|(p, (sha, _))| self.installed.get(p) == Some(sha));
        if unchanged {
            return;
        }
        let mut specs = Vec::new();
        // Plugin names defined so far: by live files, and by shadow files.
        let (mut names, mut shadow_names): (Vec<String>, Vec<String>) = Default::default();
        let mut next = BTreeMap::new();
        for (i, path) in files.iter().enumerate() {
            let shadow = i >= shadow_from;
            let Some((sha, bytes)) = current.remove(path) else {
                continue;
            };
            let old = self.installed.get(path).cloned();
            if old.as_deref() == Some(sha.as_str()) || self.rejected.get(path) == Some(&sha) {
                if let Some(old) = old {
                    if let Some(name) = self.name_of(&old) {
                        if shadow {
                            &mut shadow_names
                        } else {
                            &mut names
                        }
                        .push(name);
                    }
                    specs.push(PluginSpec::Keep {
                        sha256: old.clone(),
                        shadow,
                    });
                    next.insert(path.clone(), old);
                }
                continue;
            }
            // Unchanged since it was last hashed, but not installed: read it now.
            let bytes = match bytes {
                Some(b) => b,
                None => match std::fs::read(path) {
                    Ok(b) if sha_of(&b) == sha => b,
                    _ => continue,
                },
            };
            match self.runtime.load_bytes(path, &bytes) {
                Ok(p) if !shadow && names.contains(&p.info.name) => {
                    self.reject(
                        path,
                        &sha,
                        &format!("another file already defines plugin {:?}", p.info.name),
                        (old, shadow),
                        &mut specs,
                        &mut next,
                    );
                }
                Ok(p) if shadow && shadow_names.contains(&p.info.name) => {
                    self.reject(
                        path,
                        &sha,
                        &format!(
                            "another file is already the shadow of plugin {:?}",
                            p.info.name
                        ),
                        (old, shadow),
                        &mut specs,
                        &mut next,
                    );
                }
                Ok(p) if shadow && !names.contains(&p.info.name) => {
                    self.reject(
                        path,
                        &sha,
                        &format!(
                            "a shadow of plugin {:?}, but no live plugin of that name is loaded",
                            p.info.name
                        ),
                        (old, shadow),
                        &mut specs,
                        &mut next,
                    );
                }
                Ok(p) => {
                    tracing::info!(plugin = %p.info.name, version = %p.info.version, sha256 = %&sha[..12], path = %path.display(),
                        shadow, "new plugin version compiled and validated off the event path");
                    if shadow {
                        &mut shadow_names
                    } else {
                        &mut names
                    }
                    .push(p.info.name.clone());
                    self.names.insert(sha.clone(), p.info.name.clone());
                    self.rejected.remove(path);
                    next.insert(path.clone(), sha);
                    specs.push(PluginSpec::New { plugin: p, shadow });
                }
                Err(e) => self.reject(
                    path,
                    &sha,
                    &e.to_string(),
                    (old, shadow),
                    &mut specs,
                    &mut next,
                ),
            }
        }
        let changed = next != self.installed;
        self.installed = next;
        if changed {
            let _ = self.tx.send(Control::Plugins(specs));
        }
    }

    fn name_of(&self, sha256: &str) -> Option<String> {
        self.names.get(sha256).cloned()
    }

    fn reject(
        &mut self,
        path: &Path,
        sha: &str,
        why: &str,
        (old, shadow): (Option<String>, bool),
        specs: &mut Vec<PluginSpec>,
        next: &mut BTreeMap<PathBuf, String>,
    ) {
        self.status.plugin_rejections.fetch_add(1, Relaxed);
        self.rejected.insert(path.to_path_buf(), sha.to_string());
        match old {
            Some(old) => {
                tracing::error!(path = %path.display(), reason = why, "plugin rejected; the running version keeps serving");
                specs.push(PluginSpec::Keep {
                    sha256: old.clone(),
                    shadow,
                });
                next.insert(path.to_path_buf(), old);
            }
            None => {
                tracing::error!(path = %path.display(), reason = why, "plugin rejected; not loaded")
            }
        }
    }
}

/// `run --file` / `--stream` override the file's `[source]`: while the file's `[source]` is what
/// it was at start-up, a reload keeps the running one (else every reload of a file run would
/// refuse `source.kind` though nobody changed it); a real edit of `[source]` is still refused.
fn keep_cli_source(
    file_at_start: Option<&crate::config::SourceConfig>,
    running: &crate::config::SourceConfig,
    new: &mut crate::config::SourceConfig,
) {
    let same = |a: &crate::config::SourceConfig, b: &crate::config::SourceConfig| {
        a.kind == b.kind && a.path == b.path && a.stream == b.stream
    };
    if file_at_start.is_some_and(|f| same(f, new)) {
        *new = running.clone();
    }
}

/// A live config change, key by key: applied, or refused with the reason; `merged` is the
/// configuration in force afterwards (the new values of the applied keys, the running values of
/// the refused ones).
struct Changes {
    applied: Vec<&'static str>,
    refused: Vec<(&'static str, &'static str)>,
    merged: Config,
}

const RESTART_SOURCE: &str =
    "the position in the tables belongs to the old input; restart to apply";
const RESTART_KAFKA: &str = "the consumer is configured once, at start-up (group, position, fetch and assignment); restart to apply";
const RESTART_KAFKA_LOOP: &str = "read by the ingest loop at start-up; restart to apply";
const RESTART_WINDOW: &str =
    "open windows would no longer align with the new size; restart to apply";
const RESTART_MESSAGE_BYTES: &str =
    "the file source cuts long lines at the value in force at start-up; restart to apply";
const RESTART_ENGINE: &str = "the engine's limits are set at start-up; restart to apply";
const RESTART_ICEBERG: &str = "the catalog and tables are opened once; offsets and open windows are tied to them; restart to apply";
const RESTART_COMMIT: &str = "read by the ingest loop and the sink at start-up; restart to apply";
const RESTART_DEDUP: &str =
    "the remembered ids are loaded for the horizon at start-up; restart to apply";
const RESTART_CURRENCY: &str = "the rates are read at start-up (open windows hold amounts converted at them); restart to apply";
const RESTART_HTTP: &str = "the listener is bound at start-up; restart to apply";

/// Sorts every key of a config change into applied (live) or refused (restart to apply).
///
/// Every key is named here: the destructuring below lists each field without `..`, so a new
/// config key does not compile until it is classified (and then `every_live_change_is_applied_or_refused_by_name`
/// pins its class).
fn classify(old: &Config, new: &Config) -> Changes {
    let mut c = Changes {
        applied: Vec::new(),
        refused: Vec::new(),
        merged: old.clone(),
    };
    // Applied live: the watcher and the ingest thread pick the new value up (`LiveSettings`,
    // the plugin files, the watch interval).
    macro_rules! live {
        ($key:literal, $($f:ident).+) => {
            if old.$($f).+ != new.$($f).+ {
                c.merged.$($f).+ = new.$($f).+.clone();
                c.applied.push($key);
            }
        };
    }
    macro_rules! restart {
        ($key:literal, $why:expr, $($f:ident).+) => {
            if old.$($f).+ != new.$($f).+ {
                c.refused.push(($key, $why));
            }
        };
    }
    let Config {
        source:
            crate::config::SourceConfig {
                kind: _,
                path: _,
                stream: _,
            },
        kafka:
            crate::config::KafkaConfig {
                brokers: _,
                topic: _,
                group_id: _,
                group_instance_id: _,
                assignment_strategy: _,
                consumer: _,
                batch_size: _,
                max_events_per_sec: _,
            },
        window:
            crate::config::WindowConfig {
                size_secs: _,
                out_of_orderness_ms: _,
                allowed_lateness_ms: _,
                idle_timeout_ms: _,
                max_clock_skew_ms: _,
            },
        attribution:
            crate::config::AttributionConfig {
                lookback_secs: _,
                max_touchpoints: _,
                view_lookback_secs: _,
                accept_partial_lookback: _,
            },
        validation:
            crate::config::ValidationConfig {
                max_future_ms: _,
                max_past_ms: _,
                max_message_bytes: _,
                // Set by `run --event-time-bounds`, never by the file: not a live key.
                time_bounds: _,
            },
        plugins:
            crate::config::PluginsConfig {
                paths: _,
                max_memory_bytes: _,
                call_deadline_ms: _,
                max_wasm_stack_bytes: _,
                dir: _,
                watch_interval_ms: _,
                quarantine_after: _,
                quarantine_window_secs: _,
                compile_cache_dir: _,
                shadow_paths: _,
                shadow_dir: _,
                max_dimension_values: _,
                config: _,
            },
        iceberg:
            crate::config::IcebergConfig {
                catalog_uri: _,
                catalog_name: _,
                warehouse: _,
                namespace: _,
                properties: _,
            },
        commit:
            crate::config::CommitConfig {
                interval_ms: _,
                target_file_bytes: _,
                max_rows: _,
                shutdown_timeout_ms: _,
            },
        dedup:
            crate::config::DedupConfig {
                horizon_secs: _,
                max_ids: _,
            },
        http: crate::config::HttpConfig { listen: _ },
        campaigns:
            crate::config::CampaignsConfig {
                default_time_zone: _,
                time_zones: _,
            },
        currency: _,
        source_path: _,
    } = new;

    restart!("source.kind", RESTART_SOURCE, source.kind);
    restart!("source.path", RESTART_SOURCE, source.path);
    restart!("source.stream", RESTART_SOURCE, source.stream);

    restart!("kafka.brokers", RESTART_KAFKA, kafka.brokers);
    restart!("kafka.topic", RESTART_KAFKA, kafka.topic);
    restart!("kafka.group_id", RESTART_KAFKA, kafka.group_id);
    restart!(
        "kafka.group_instance_id",
        RESTART_KAFKA,
        kafka.group_instance_id
    );
    restart!(
        "kafka.assignment_strategy",
        RESTART_KAFKA,
        kafka.assignment_strategy
    );
    restart!("kafka.consumer", RESTART_KAFKA, kafka.consumer);
    restart!("kafka.batch_size", RESTART_KAFKA_LOOP, kafka.batch_size);
    restart!(
        "kafka.max_events_per_sec",
        RESTART_KAFKA_LOOP,
        kafka.max_events_per_sec
    );

    restart!("window.size_secs", RESTART_WINDOW, window.size_secs);
    live!("window.out_of_orderness_ms", window.out_of_orderness_ms);
    live!("window.allowed_lateness_ms", window.allowed_lateness_ms);
    live!("window.idle_timeout_ms", window.idle_timeout_ms);
    live!("window.max_clock_skew_ms", window.max_clock_skew_ms);

    live!("attribution.lookback_secs", attribution.lookback_secs);
    live!("attribution.max_touchpoints", attribution.max_touchpoints);
    live!(
        "attribution.view_lookback_secs",
        attribution.view_lookback_secs
    );
    // Consulted at start-up only (against the tables' replay point); recorded for the next one.
    live!(
        "attribution.accept_partial_lookback",
        attribution.accept_partial_lookback
    );

    live!("validation.max_future_ms", validation.max_future_ms);
    live!("validation.max_past_ms", validation.max_past_ms);
    restart!(
        "validation.max_message_bytes",
        RESTART_MESSAGE_BYTES,
        validation.max_message_bytes
    );

    live!("plugins.paths", plugins.paths);
    live!("plugins.dir", plugins.dir);
    live!("plugins.shadow_paths", plugins.shadow_paths);
    live!("plugins.shadow_dir", plugins.shadow_dir);
    live!("plugins.watch_interval_ms", plugins.watch_interval_ms);
    // Plugins are loaded again with the new settings (`check_plugins`): a changed parameter
    // makes a new version of the plugin, swapped in at window boundaries like a new build.
    live!("plugins.config", plugins.config);
    live!("plugins.max_dimension_values", plugins.max_dimension_values);
    live!("plugins.quarantine_after", plugins.quarantine_after);
    live!(
        "plugins.quarantine_window_secs",
        plugins.quarantine_window_secs
    );
    restart!(
        "plugins.max_memory_bytes",
        RESTART_ENGINE,
        plugins.max_memory_bytes
    );
    restart!(
        "plugins.call_deadline_ms",
        RESTART_ENGINE,
        plugins.call_deadline_ms
    );
    restart!(
        "plugins.max_wasm_stack_bytes",
        RESTART_ENGINE,
        plugins.max_wasm_stack_bytes
    );
    restart!(
        "plugins.compile_cache_dir",
        RESTART_ENGINE,
        plugins.compile_cache_dir
    );

    restart!("iceberg.catalog_uri", RESTART_ICEBERG, iceberg.catalog_uri);
    restart!(
        "iceberg.catalog_name",
        RESTART_ICEBERG,
        iceberg.catalog_name
    );
    restart!("iceberg.warehouse", RESTART_ICEBERG, iceberg.warehouse);
    restart!("iceberg.namespace", RESTART_ICEBERG, iceberg.namespace);
    restart!("iceberg.properties", RESTART_ICEBERG, iceberg.properties);

    restart!("commit.interval_ms", RESTART_COMMIT, commit.interval_ms);
    restart!(
        "commit.target_file_bytes",
        RESTART_COMMIT,
        commit.target_file_bytes
    );
    restart!("commit.max_rows", RESTART_COMMIT, commit.max_rows);
    restart!(
        "commit.shutdown_timeout_ms",
        RESTART_COMMIT,
        commit.shutdown_timeout_ms
    );

    restart!("dedup.horizon_secs", RESTART_DEDUP, dedup.horizon_secs);
    restart!("dedup.max_ids", RESTART_DEDUP, dedup.max_ids);

    restart!("http.listen", RESTART_HTTP, http.listen);
    restart!(
        "campaigns.default_time_zone",
        RESTART_WINDOW,
        campaigns.default_time_zone
    );
    restart!("campaigns.time_zones", RESTART_WINDOW, campaigns.time_zones);

    restart!("currency", RESTART_CURRENCY, currency);
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 14, defect 8: every key, changed alone, is applied or refused by name (with
    /// "restart to apply"); none is silently ignored while the reload counts as a success.
    #[test]
    fn every_live_change_is_applied_or_refused_by_name() {
        type Edit = fn(&mut Config);
        let applied: &[(&str, Edit)] = &[
            ("window.out_of_orderness_ms", |c| {
                c.window.out_of_orderness_ms += 1
            }),
            ("window.allowed_lateness_ms", |c| {
                c.window.allowed_lateness_ms += 1
            }),
            ("window.idle_timeout_ms", |c| c.window.idle_timeout_ms += 1),
            ("window.max_clock_skew_ms", |c| {
                c.window.max_clock_skew_ms += 1
            }),
            ("attribution.lookback_secs", |c| {
                c.attribution.lookback_secs += 1
            }),
            ("attribution.max_touchpoints", |c| {
                c.attribution.max_touchpoints += 1
            }),
            ("attribution.accept_partial_lookback", |c| {
                c.attribution.accept_partial_lookback ^= true
            }),
            ("validation.max_future_ms", |c| {
                c.validation.max_future_ms += 1
            }),
            ("validation.max_past_ms", |c| c.validation.max_past_ms += 1),
            ("plugins.paths", |c| c.plugins.paths.push("x.wasm".into())),
            ("plugins.dir", |c| c.plugins.dir = Some("d".into())),
            ("plugins.shadow_paths", |c| {
                c.plugins.shadow_paths.push("s.wasm".into())
            }),
            ("plugins.shadow_dir", |c| {
                c.plugins.shadow_dir = Some("s".into())
            }),
            ("plugins.watch_interval_ms", |c| {
                c.plugins.watch_interval_ms += 1
            }),
            ("plugins.quarantine_after", |c| {
                c.plugins.quarantine_after += 1
            }),
            ("plugins.quarantine_window_secs", |c| {
                c.plugins.quarantine_window_secs += 1
            }),
        ];
        let refused: &[(&str, Edit)] = &[
            ("source.kind", |c| {
                c.source.kind = crate::config::SourceKind::File
            }),
            ("source.path", |c| c.source.path = Some("f".into())),
            ("source.stream", |c| c.source.stream = Some("s".into())),
            ("kafka.brokers", |c| c.kafka.brokers.push('x')),
            ("kafka.topic", |c| c.kafka.topic.push('x')),
            ("kafka.group_id", |c| c.kafka.group_id.push('x')),
            ("kafka.group_instance_id", |c| {
                c.kafka.group_instance_id = Some("i".into())
            }),
            ("kafka.assignment_strategy", |c| {
                c.kafka.assignment_strategy = "range".into()
            }),
            ("kafka.consumer", |c| {
                c.kafka
                    .consumer
                    .insert("fetch.min.bytes".into(), "1".into());
            }),
            ("kafka.batch_size", |c| c.kafka.batch_size += 1),
            ("kafka.max_events_per_sec", |c| {
                c.kafka.max_events_per_sec += 1
            }),
            ("window.size_secs", |c| c.window.size_secs += 1),
            ("validation.max_message_bytes", |c| {
                c.validation.max_message_bytes += 1
            }),
            ("plugins.max_memory_bytes", |c| {
                c.plugins.max_memory_bytes += 1
            }),
            ("plugins.call_deadline_ms", |c| {
                c.plugins.call_deadline_ms += 1
            }),
            ("plugins.max_wasm_stack_bytes", |c| {
                c.plugins.max_wasm_stack_bytes += 1
            }),
            ("iceberg.catalog_uri", |c| c.iceberg.catalog_uri.push('x')),
            ("iceberg.catalog_name", |c| c.iceberg.catalog_name.push('x')),
            ("iceberg.warehouse", |c| c.iceberg.warehouse.push("x")),
            ("iceberg.namespace", |c| c.iceberg.namespace.push('x')),
            ("iceberg.properties", |c| {
                c.iceberg.properties.insert("s3.region".into(), "x".into());
            }),
            ("commit.interval_ms", |c| c.commit.interval_ms += 1),
            ("commit.target_file_bytes", |c| {
                c.commit.target_file_bytes += 1
            }),
            ("commit.max_rows", |c| c.commit.max_rows += 1),
            ("currency", |c| c.currency.reporting = "EUR".into()),
            ("commit.shutdown_timeout_ms", |c| {
                c.commit.shutdown_timeout_ms += 1
            }),
            ("dedup.horizon_secs", |c| c.dedup.horizon_secs += 1),
            ("dedup.max_ids", |c| c.dedup.max_ids += 1),
            ("http.listen", |c| {
                c.http.listen = Some("127.0.0.1:1".into())
            }),
        ];
        let old = Config::default();
        let mut failures = Vec::new();
        for (key, edit) in applied {
            let mut new = old.clone();
            edit(&mut new);
            let c = classify(&old, &new);
            if c.applied != [*key] || !c.refused.is_empty() {
                failures.push(format!(
                    "{key}: expected applied, got applied {:?} refused {:?}",
                    c.applied, c.refused
                ));
            } else if format!("{:?}", c.merged) != format!("{new:?}") {
                failures.push(format!("{key}: reported applied but not in force"));
            }
        }
        for (key, edit) in refused {
            let mut new = old.clone();
            edit(&mut new);
            let c = classify(&old, &new);
            let named = c.refused.len() == 1
                && c.refused[0].0 == *key
                && c.refused[0].1.contains("restart to apply");
            if !named || !c.applied.is_empty() {
                failures.push(format!(
                    "{key}: expected refused by name with \"restart to apply\", got applied {:?} refused {:?}",
                    c.applied, c.refused
                ));
            } else if format!("{:?}", c.merged) != format!("{old:?}") {
                failures.push(format!("{key}: refused but changed the running config"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn a_file_run_keeps_its_command_line_source_across_reloads() {
        use crate::config::{SourceConfig, SourceKind};
        let file = SourceConfig::default();
        let running = SourceConfig {
            kind: SourceKind::File,
            path: Some("events.jsonl".into()),
            stream: Some("backfill".into()),
        };
        let mut new = file.clone();
        keep_cli_source(Some(&file), &running, &mut new);
        assert_eq!(new.path, running.path, "[source] untouched in the file");
        let mut edited = SourceConfig {
            stream: Some("other".into()),
            ..file.clone()
        };
        keep_cli_source(Some(&file), &running, &mut edited);
        assert_eq!(
            edited.stream.as_deref(),
            Some("other"),
            "a real edit is kept (and refused)"
        );
        let old = Config {
            source: running,
            ..Config::default()
        };
        let mut new = old.clone();
        new.source = edited;
        // The file says kafka, no path, stream "other": all three refused by name.
        assert_eq!(classify(&old, &new).refused.len(), 3);
    }

    #[test]
    fn unsafe_live_changes_are_named() {
        let old = Config::default();
        let mut new = old.clone();
        new.window.allowed_lateness_ms = 5_000;
        new.attribution.lookback_secs = 60;
        assert!(
            classify(&old, &new).refused.is_empty(),
            "lateness and lookback are safe live"
        );
        new.window.size_secs = 30;
        new.kafka.topic = "other".into();
        let c = classify(&old, &new);
        let keys: Vec<_> = c.refused.into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["kafka.topic", "window.size_secs"]);
        assert_eq!(
            c.applied,
            vec!["window.allowed_lateness_ms", "attribution.lookback_secs"]
        );
        assert_eq!(c.merged.window.size_secs, old.window.size_secs);
        assert_eq!(c.merged.window.allowed_lateness_ms, 5_000);
    }
}
