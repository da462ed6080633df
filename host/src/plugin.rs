//! Plugin runtime stage: loads metric-plugin components and calls them in batches, sandboxed.
//!
//! One [`PluginRuntime`] (one wasmtime `Engine`, one `Linker`, one epoch ticker thread) serves every
//! plugin; each [`Plugin`] owns its own `Store` and instance. Limits are always on: a memory cap
//! (`StoreLimits`), a per-call CPU deadline (epoch interruption, cheaper than fuel), a wasm stack
//! limit, and a WASI context that grants nothing (no files, sockets, env, args; clocks frozen at 0;
//! stdout dropped; stderr captured so a guest panic message can be reported).
//!
//! A call that traps leaves the instance unusable, so the instance is dropped and rebuilt from the
//! pre-instantiated component on the next call; the failure is returned to the caller, who decides
//! what it means for the window (see `pipeline`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config as EngineConfig, Engine, Store, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use crate::config::PluginsConfig;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "metric-plugin",
        additional_derives: [PartialEq],
    });
}

/// The WIT types, as the host sees them.
pub use bindings::admetrics::metrics::types::{EventBatch, MetricRow, Touchpoint};

/// `event-batch.kinds` codes.
pub mod kind {
    pub const IMPRESSION: u8 = 0;
    pub const CLICK: u8 = 1;
    pub const CONVERSION: u8 = 2;
}

/// An empty batch.
pub fn new_batch() -> EventBatch {
    EventBatch {
        kinds: vec![],
        times_ms: vec![],
        campaigns: vec![],
        ads: vec![],
        revenue_micros: vec![],
        touchpoint_ends: vec![],
        touchpoints: vec![],
    }
}

/// Appends one event. `touchpoints` is `Some` (possibly empty) when the batch carries
/// touchpoints: then every event of the batch must be pushed with `Some`.
pub fn push_event(
    b: &mut EventBatch,
    kind: u8,
    time_ms: i64,
    campaign: u32,
    ad: u32,
    revenue_micros: i64,
    touchpoints: Option<&[Touchpoint]>,
) {
    b.kinds.push(kind);
    b.times_ms.push(time_ms);
    b.campaigns.push(campaign);
    b.ads.push(ad);
    b.revenue_micros.push(revenue_micros);
    if let Some(tps) = touchpoints {
        b.touchpoints.extend(tps.iter().map(|t| Touchpoint {
            time_ms: t.time_ms,
            campaign: t.campaign,
            ad: t.ad,
        }));
        b.touchpoint_ends.push(b.touchpoints.len() as u32);
    }
}

/// Empties a batch, keeping its capacity.
pub fn clear_batch(b: &mut EventBatch) {
    b.kinds.clear();
    b.times_ms.clear();
    b.campaigns.clear();
    b.ads.clear();
    b.revenue_micros.clear();
    b.touchpoint_ends.clear();
    b.touchpoints.clear();
}

use bindings::{MetricPlugin, MetricPluginPre};

/// How often the epoch advances; call deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Why a plugin could not be loaded or a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path} is not a valid metric-plugin component: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("plugin trapped: {0}")]
    Trap(String),
    #[error("plugin returned an error: {0}")]
    Guest(String),
    #[error("plugin returned malformed output: {0}")]
    Malformed(String),
}

/// A plugin's validated self-description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub metrics: Vec<String>,
    pub wants_touchpoints: bool,
    /// sha256 of the component bytes, hex: which exact build produced a row.
    pub sha256: String,
    /// The WIT package the component was built against, e.g. `admetrics:metrics@0.1.0` (see
    /// [`wit_of_component`]).
    pub wit: String,
}

/// The WIT package (name@version) of `wit/admetrics.wit`, the world the host's bindings are
/// generated from: `MetricPluginPre::new` refuses a component that does not type-check against
/// it, so every loaded plugin implements this world (or a semver-compatible one).
pub const WIT_PACKAGE: &str = "admetrics:metrics@0.1.0";

/// The WIT package a component names in its own imports or exports (`admetrics:metrics/types@V`,
/// the interface of the world's types, which every plugin imports): the version it was built
/// against, which may be a semver-compatible neighbour of [`WIT_PACKAGE`]. A component that
/// names no interface of the package (it uses none of its types) is known only to implement the
/// host's world: [`WIT_PACKAGE`].
fn wit_of_component(engine: &Engine, component: &Component) -> String {
    let ty = component.component_type();
    let prefix = WIT_PACKAGE.split('@').next().unwrap_or(WIT_PACKAGE);
    let named = ty
        .imports(engine)
        .map(|(n, _)| n)
        .chain(ty.exports(engine).map(|(n, _)| n))
        .find_map(|n| {
            let rest = n.strip_prefix(prefix)?.strip_prefix('/')?;
            let (_, version) = rest.split_once('@')?;
            Some(format!("{prefix}@{version}"))
        });
    named.unwrap_or_else(|| WIT_PACKAGE.to_string())
}

/// sha256 → WIT package of every component this process loaded (see [`wit_of`]).
static LOADED_WIT: std::sync::OnceLock<
    std::sync::Mutex<std::collections::HashMap<String, String>>,
> = std::sync::OnceLock::new();

/// The WIT package of the component with this sha256, if this process loaded it. A memo keyed
/// by content: the same bytes always name the same package, so one map for the whole process
/// is right however many pipelines, registries or restatements share it. The sink reads it to
/// record, per commit, the WIT version of the builds whose rows the commit holds
/// (`sink::summary::PLUGINS`) without a handle on the plugin registry.
pub fn wit_of(sha256: &str) -> Option<String> {
    LOADED_WIT
        .get()?
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(sha256)
        .cloned()
}

struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: StoreLimits,
    stderr: MemoryOutputPipe,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A clock stuck at zero: plugins must not depend on time other than event time.
struct FrozenClock;
impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}
impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Shared engine, linker and limits. Cheap to clone.
#[derive(Clone)]
pub struct PluginRuntime {
    inner: Arc<RuntimeInner>,
}

struct RuntimeInner {
    engine: Engine,
    linker: Linker<State>,
    limits: PluginsConfig,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for RuntimeInner {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl PluginRuntime {
    pub fn new(limits: &PluginsConfig) -> anyhow::Result<Self> {
        let mut cfg = EngineConfig::new();
        cfg.wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(limits.max_wasm_stack_bytes);
        let engine =
            Engine::new(&cfg).map_err(|e| anyhow::anyhow!("creating the wasm engine: {e:#}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking WASI: {e:#}"))?;
        let stop_ticker = Arc::new(AtomicBool::new(false));
        {
            let engine = engine.weak();
            let stop = stop_ticker.clone();
            std::thread::Builder::new()
                .name("wasm-epoch".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        match engine.upgrade() {
                            Some(e) => e.increment_epoch(),
                            None => break,
                        }
                    }
                })?;
        }
        Ok(PluginRuntime {
            inner: Arc::new(RuntimeInner {
                engine,
                linker,
                limits: limits.clone(),
                stop_ticker,
            }),
        })
    }

    /// Compiles `bytes`, or loads the result of an earlier compilation of the same bytes by the
    /// same engine from `plugins.compile_cache_dir`. The cache key is the component's sha256 and
    /// wasmtime's compatibility hash of the engine (version, compiler settings, target), so a
    /// changed build or a wasmtime upgrade never loads a stale artifact; a file that does not
    /// load is compiled again and replaced. Writes go to a temporary file renamed into place, so
    /// a reader never sees half a file. Cache failures only cost the compilation.
    fn compile(&self, sha256: &str, bytes: &[u8]) -> wasmtime::Result<Component> {
        let engine = &self.inner.engine;
        let Some(dir) = &self.inner.limits.compile_cache_dir else {
            return Component::new(engine, bytes);
        };
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&engine.precompile_compatibility_hash(), &mut h);
        let path = dir.join(format!(
            "{sha256}-{:016x}.cwasm",
            std::hash::Hasher::finish(&h)
        ));
        if path.exists() {
            // SAFETY: the file was written by `Component::serialize` of this engine build (the
            // name carries its compatibility hash, and wasmtime checks it again) into a directory
            // the operator reserves for this daemon (see `PluginsConfig::compile_cache_dir`).
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::warn!(path = %path.display(), "compiled plugin not loadable, compiling again: {e:#}")
                }
            }
        }
        let component = Component::new(engine, bytes)?;
        let stored = component.serialize().and_then(|image| {
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join(format!(".{sha256}.{}.tmp", uuid::Uuid::new_v4().simple()));
            std::fs::write(&tmp, image)?;
            std::fs::rename(&tmp, &path)?;
            Ok(())
        });
        if let Err(e) = stored {
            tracing::warn!(dir = %dir.display(), "compiled plugin not cached: {e:#}");
        }
        Ok(component)
    }

    /// Reads, compiles, instantiates and validates a plugin. Compilation takes tens of
    /// milliseconds: call this off the event path.
    pub fn load(&self, path: &Path) -> Result<Plugin, PluginError> {
        let bytes = std::fs::read(path).map_err(|e| PluginError::Read {
            path: path.into(),
            message: e.to_string(),
        })?;
        self.load_bytes(path, &bytes)
    }

    pub fn load_bytes(&self, path: &Path, bytes: &[u8]) -> Result<Plugin, PluginError> {
        let invalid = |message: String| PluginError::Invalid {
            path: path.into(),
            message,
        };
        let sha256 = hex(&Sha256::digest(bytes));
        let component = self
            .compile(&sha256, bytes)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let wit = wit_of_component(&self.inner.engine, &component);
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| invalid(format!("{e:#}")))?;
        let pre = MetricPluginPre::new(pre).map_err(|e| {
            invalid(format!(
                "does not implement admetrics:metrics/metric-plugin: {e:#}"
            ))
        })?;
        let mut plugin = Plugin {
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                metrics: vec![],
                wants_touchpoints: false,
                sha256,
                wit,
            },
            path: path.into(),
            runtime: self.clone(),
            pre,
            live: None,
            restarts: 0,
        };
        let info = plugin
            .call(|p, s| p.call_info(s))
            .map_err(|e| invalid(e.to_string()))?;
        if info.name.is_empty()
            || !info
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(invalid(format!(
                "plugin name {:?} must match [a-z0-9_-]+",
                info.name
            )));
        }
        if info.version.is_empty() || info.metrics.is_empty() {
            return Err(invalid(
                "plugin-info needs a version and at least one metric".into(),
            ));
        }
        plugin.info.name = info.name;
        plugin.info.version = info.version;
        plugin.info.metrics = info.metrics;
        plugin.info.wants_touchpoints = info.wants_touchpoints;
        plugin
            .smoke_test()
            .map_err(|e| invalid(format!("smoke test failed: {e}")))?;
        LOADED_WIT
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(plugin.info.sha256.clone(), plugin.info.wit.clone());
        Ok(plugin)
    }
}

struct Live {
    store: Store<State>,
    bindings: MetricPlugin,
}

/// One loaded plugin with its own store and instance.
pub struct Plugin {
    pub info: PluginInfo,
    pub path: PathBuf,
    runtime: PluginRuntime,
    pre: MetricPluginPre<State>,
    live: Option<Live>,
    /// How many times the instance was rebuilt after a trap.
    pub restarts: u64,
}

impl Plugin {
    /// Another instance of the same compiled, validated component (no compilation): what a
    /// second processor in the same process (the simulation test's restarts) runs.
    pub fn another(&self) -> Plugin {
        Plugin {
            info: self.info.clone(),
            path: self.path.clone(),
            runtime: self.runtime.clone(),
            pre: self.pre.clone(),
            live: None,
            restarts: 0,
        }
    }

    fn instantiate(&self) -> Result<Live, PluginError> {
        let rt = &self.runtime.inner;
        let stderr = MemoryOutputPipe::new(4096);
        let wasi = wasmtime_wasi::WasiCtxBuilder::new()
            .stderr(stderr.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(rt.limits.max_memory_bytes)
            .instances(4)
            .tables(16)
            .memories(2)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            &rt.engine,
            State {
                wasi,
                table: ResourceTable::new(),
                limits,
                stderr,
            },
        );
        store.limiter(|s| &mut s.limits);
        store.set_epoch_deadline(self.deadline_ticks());
        let bindings = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| PluginError::Trap(format!("instantiate: {e:#}")))?;
        Ok(Live { store, bindings })
    }

    fn deadline_ticks(&self) -> u64 {
        (self.runtime.inner.limits.call_deadline_ms / EPOCH_TICK.as_millis() as u64).max(1)
    }

    /// Runs one export call with a fresh deadline; a trap drops the instance.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&MetricPlugin, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if self.live.is_none() {
            self.live = Some(self.instantiate()?);
        }
        let ticks = self.deadline_ticks();
        let live = self.live.as_mut().expect("instantiated above");
        live.store.set_epoch_deadline(ticks);
        match f(&live.bindings, &mut live.store) {
            Ok(r) => Ok(r),
            Err(e) => {
                let stderr = String::from_utf8_lossy(&live.store.data().stderr.contents())
                    .trim()
                    .to_string();
                self.live = None;
                self.restarts += 1;
                let mut msg = match e.downcast_ref::<wasmtime::Trap>() {
                    Some(wasmtime::Trap::Interrupt) => format!(
                        "exceeded the {} ms call deadline",
                        self.runtime.inner.limits.call_deadline_ms
                    ),
                    _ => format!("{e:#}"),
                };
                if !stderr.is_empty() {
                    msg = format!("{msg} (guest stderr: {stderr})");
                }
                Err(PluginError::Trap(msg))
            }
        }
    }

    /// Folds `events` into `acc` (empty for a new window).
    pub fn accumulate(&mut self, acc: &[u8], events: &EventBatch) -> Result<Vec<u8>, PluginError> {
        self.call(|p, s| p.call_accumulate(s, acc, events))?
            .map_err(PluginError::Guest)
    }

    /// The window's metric rows, validated against the plugin's declaration.
    pub fn finish(&mut self, acc: &[u8]) -> Result<Vec<MetricRow>, PluginError> {
        let rows = self
            .call(|p, s| p.call_finish(s, acc))?
            .map_err(PluginError::Guest)?;
        for r in &rows {
            if !self.info.metrics.iter().any(|m| *m == r.metric) {
                return Err(PluginError::Malformed(format!(
                    "undeclared metric {:?}",
                    r.metric
                )));
            }
            for (what, v) in [
                ("value", r.value),
                ("numerator", r.numerator),
                ("denominator", r.denominator),
            ] {
                if !v.is_finite() {
                    return Err(PluginError::Malformed(format!(
                        "{} {what} is {v}",
                        r.metric
                    )));
                }
            }
            if r.numerator < 0.0 || r.denominator < 0.0 {
                return Err(PluginError::Malformed(format!(
                    "{} has a negative count",
                    r.metric
                )));
            }
        }
        Ok(rows)
    }

    /// One call over sample events of every kind must succeed before a plugin is used.
    fn smoke_test(&mut self) -> Result<(), PluginError> {
        let t = 1_700_000_000_000;
        let tp = [Touchpoint {
            time_ms: t - 1000,
            campaign: 0,
            ad: 0,
        }];
        let mut sample = new_batch();
        push_event(&mut sample, kind::IMPRESSION, t, 0, 0, 0, Some(&[]));
        push_event(&mut sample, kind::CLICK, t, 0, 0, 0, Some(&[]));
        push_event(&mut sample, kind::CONVERSION, t, 1, 1, 1_500_000, Some(&tp));
        push_event(&mut sample, kind::CONVERSION, t, 1, 1, 1, Some(&[]));
        let acc = self.accumulate(&[], &sample)?;
        let rows = self.finish(&acc)?;
        if rows.is_empty() {
            return Err(PluginError::Malformed(
                "no rows for the sample events".into(),
            ));
        }
        if rows.iter().any(|r| r.campaign > 1) {
            return Err(PluginError::Malformed(
                "a row names a campaign that was not in the input".into(),
            ));
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Times a closure; used by the pipeline to account plugin time per plugin.
pub fn timed<R>(f: impl FnOnce() -> R) -> (R, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

#[cfg(test)]
mod tests {
    /// The constant names the package `wit/admetrics.wit` declares (the bindings' source).
    #[test]
    fn wit_package_is_the_one_of_the_wit_file() {
        let wit = include_str!("../../wit/admetrics.wit");
        let declared = wit
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(|l| l.trim_end_matches(';').trim());
        assert_eq!(declared, Some(super::WIT_PACKAGE));
    }
}
