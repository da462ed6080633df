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
//! serving. A config change that is unsafe live (window size, Kafka, Iceberg, commit settings)
//! is refused with the key and the reason; safe ones (lateness, out-of-orderness, idle timeout,
//! attribution lookback and touchpoint bound, the plugin list) apply at once.

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
    let mut files = cfg.plugins.paths.clone();
    if let Some(dir) = &cfg.plugins.dir
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
pub fn load_initial(
    runtime: &PluginRuntime,
    cfg: &Config,
) -> anyhow::Result<(Vec<Plugin>, BTreeMap<PathBuf, String>)> {
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
    Ok((plugins, shas))
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
    runtime: PluginRuntime,
    /// Path → sha256 of the version currently installed for it.
    installed: BTreeMap<PathBuf, String>,
    /// Path → sha256 of a version that was rejected (so it is not recompiled every round).
    rejected: BTreeMap<PathBuf, String>,
    /// Path → (size, mtime, inode) and the sha256 read at that stamp: an unchanged file is not
    /// read and hashed again every round (a deploy replaces a file by rename, a new inode).
    stamps: BTreeMap<PathBuf, (FileStamp, String)>,
    tx: Sender<Control>,
    status: Arc<Status>,
}

/// Starts watching. `installed` is what `load_initial` loaded.
pub fn spawn(
    cfg: Config,
    runtime: PluginRuntime,
    installed: BTreeMap<PathBuf, String>,
    tx: Sender<Control>,
    status: Arc<Status>,
) -> std::io::Result<Watcher> {
    let stop = Arc::new(AtomicBool::new(false));
    let config_path = cfg.source_path.clone();
    let config_text = config_path
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let interval = Duration::from_millis(cfg.plugins.watch_interval_ms.max(10));
    let mut st = State {
        cfg,
        config_path,
        config_text,
        runtime,
        installed,
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
                    std::thread::sleep(interval);
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
        let new = match Config::load(path) {
            Ok(c) => c,
            Err(e) => {
                self.status.config_refusals.fetch_add(1, Relaxed);
                tracing::error!(error = %e, "config change refused; the running configuration stays");
                return;
            }
        };
        for (key, reason) in unsafe_changes(&self.cfg, &new) {
            self.status.config_refusals.fetch_add(1, Relaxed);
            tracing::warn!(key, reason, "config change needs a restart; not applied");
        }
        self.status.config_reloads.fetch_add(1, Relaxed);
        let (old_live, new_live) = (
            LiveSettings::from_config(&self.cfg),
            LiveSettings::from_config(&new),
        );
        if old_live != new_live {
            let _ = self.tx.send(Control::Settings(new_live));
        }
        // Keep the running values for everything that cannot change live.
        let mut merged = self.cfg.clone();
        merged.window.out_of_orderness_ms = new.window.out_of_orderness_ms;
        merged.window.allowed_lateness_ms = new.window.allowed_lateness_ms;
        merged.window.idle_timeout_ms = new.window.idle_timeout_ms;
        merged.attribution = new.attribution.clone();
        merged.plugins.paths = new.plugins.paths.clone();
        merged.plugins.dir = new.plugins.dir.clone();
        self.cfg = merged;
    }

    fn check_plugins(&mut self) {
        let files = plugin_files(&self.cfg);
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
        let mut names: Vec<String> = Vec::new();
        let mut next = BTreeMap::new();
        for path in &files {
            let Some((sha, bytes)) = current.remove(path) else {
                continue;
            };
            let old = self.installed.get(path).cloned();
            if old.as_deref() == Some(sha.as_str()) || self.rejected.get(path) == Some(&sha) {
                if let Some(old) = old {
                    specs.push(PluginSpec::Keep(old.clone()));
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
                Ok(p) if names.contains(&p.info.name) => {
                    self.reject(
                        path,
                        &sha,
                        &format!("another file already defines plugin {:?}", p.info.name),
                        old,
                        &mut specs,
                        &mut next,
                    );
                }
                Ok(p) => {
                    tracing::info!(plugin = %p.info.name, version = %p.info.version, sha256 = %&sha[..12], path = %path.display(),
                        "new plugin version compiled and validated off the event path");
                    names.push(p.info.name.clone());
                    self.rejected.remove(path);
                    next.insert(path.clone(), sha);
                    specs.push(PluginSpec::New(p));
                }
                Err(e) => self.reject(path, &sha, &e.to_string(), old, &mut specs, &mut next),
            }
        }
        let changed = next != self.installed;
        self.installed = next;
        if changed {
            let _ = self.tx.send(Control::Plugins(specs));
        }
    }

    fn reject(
        &mut self,
        path: &Path,
        sha: &str,
        why: &str,
        old: Option<String>,
        specs: &mut Vec<PluginSpec>,
        next: &mut BTreeMap<PathBuf, String>,
    ) {
        self.status.plugin_rejections.fetch_add(1, Relaxed);
        self.rejected.insert(path.to_path_buf(), sha.to_string());
        match old {
            Some(old) => {
                tracing::error!(path = %path.display(), reason = why, "plugin rejected; the running version keeps serving");
                specs.push(PluginSpec::Keep(old.clone()));
                next.insert(path.to_path_buf(), old);
            }
            None => {
                tracing::error!(path = %path.display(), reason = why, "plugin rejected; not loaded")
            }
        }
    }
}

/// Keys whose live change is refused, with the reason.
fn unsafe_changes(old: &Config, new: &Config) -> Vec<(&'static str, &'static str)> {
    let mut out = Vec::new();
    if old.window.size_secs != new.window.size_secs {
        out.push((
            "window.size_secs",
            "open windows would no longer align with the new size",
        ));
    }
    if old.source.kind != new.source.kind
        || old.source.path != new.source.path
        || old.source.stream != new.source.stream
    {
        out.push((
            "source",
            "the position in the tables belongs to the old input",
        ));
    }
    if old.kafka.brokers != new.kafka.brokers
        || old.kafka.topic != new.kafka.topic
        || old.kafka.group_id != new.kafka.group_id
    {
        out.push((
            "kafka",
            "the consumer's group and position belong to the old topic/brokers",
        ));
    }
    if old.iceberg.catalog_uri != new.iceberg.catalog_uri
        || old.iceberg.warehouse != new.iceberg.warehouse
        || old.iceberg.namespace != new.iceberg.namespace
    {
        out.push((
            "iceberg",
            "offsets and open windows are tied to the tables being written",
        ));
    }
    if old.commit.interval_ms != new.commit.interval_ms
        || old.commit.max_rows != new.commit.max_rows
    {
        out.push(("commit", "read at start-up"));
    }
    if old.plugins.max_memory_bytes != new.plugins.max_memory_bytes
        || old.plugins.call_deadline_ms != new.plugins.call_deadline_ms
        || old.plugins.max_wasm_stack_bytes != new.plugins.max_wasm_stack_bytes
    {
        out.push(("plugins limits", "the engine's limits are set at start-up"));
    }
    if old.dedup.horizon_secs != new.dedup.horizon_secs || old.dedup.max_ids != new.dedup.max_ids {
        out.push((
            "dedup",
            "the remembered ids are loaded for the horizon at start-up",
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_live_changes_are_named() {
        let old = Config::default();
        let mut new = old.clone();
        new.window.allowed_lateness_ms = 5_000;
        new.attribution.lookback_secs = 60;
        assert!(
            unsafe_changes(&old, &new).is_empty(),
            "lateness and lookback are safe live"
        );
        new.window.size_secs = 30;
        new.kafka.topic = "other".into();
        let keys: Vec<_> = unsafe_changes(&old, &new)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, vec!["window.size_secs", "kafka"]);
    }
}
