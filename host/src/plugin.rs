//! Plugin runtime stage: loads metric-plugin components and calls them in batches, sandboxed.
//!
//! One [`PluginRuntime`] (one wasmtime `Engine`, one `Linker`, one epoch ticker thread) serves every
//! plugin; each [`Plugin`] owns its own `Store` and instance. Limits are always on: a memory cap
//! (`StoreLimits`), a per-call CPU deadline (epoch interruption, cheaper than fuel), a wasm stack
//! limit, and a WASI context that grants nothing (no files, sockets, env, args; clocks frozen at 0;
//! stdout dropped; stderr captured so a guest panic message can be reported).
//!
//! A call that traps leaves the instance unusable, so the instance is dropped and rebuilt from the
//! pre-instantiated component on the next call (and `init` called again with the same
//! parameters); the failure is returned to the caller, who decides what it means for the window
//! (see `pipeline`).
//!
//! Two contracts load: `admetrics:metrics@0.2.0` (`wit/admetrics.wit`, the one plugins are built
//! against) and its predecessor 0.1.0 (`wit/0.1.0/`), which is adapted here: a 0.1.0 plugin gets
//! the five 0.1.0 columns and clicks as touchpoints, its rows have no dimensions, and it runs on
//! 60 s windows with no parameters. The rest of the host only sees the 0.2.0 types.

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

/// The frozen previous contract, for the adapter (see the module doc).
mod v01 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "metric-plugin",
    });
}

/// The WIT types, as the host sees them.
pub use bindings::admetrics::metrics::types::{
    Column, Dimension, DimensionKey, EventBatch, EventKind as TouchKind, MetricRow, Touchpoint,
    WindowSize,
};

/// The event columns a plugin declared (`plugin-info.columns`), as a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Columns(u8);

impl Columns {
    /// The dimension columns (every declared column but `user` can be a breakdown), in the
    /// order of `DIMENSIONS`' names.
    pub const DIMENSIONS: [Column; 4] = [
        Column::Device,
        Column::Country,
        Column::Placement,
        Column::Currency,
    ];

    fn bit(c: Column) -> u8 {
        match c {
            Column::User => 1,
            Column::Device => 2,
            Column::Country => 4,
            Column::Placement => 8,
            Column::Currency => 16,
        }
    }
    pub fn of(cols: &[Column]) -> Self {
        Columns(cols.iter().fold(0, |a, &c| a | Self::bit(c)))
    }
    pub fn has(self, c: Column) -> bool {
        self.0 & Self::bit(c) != 0
    }
    pub fn union(self, o: Columns) -> Columns {
        Columns(self.0 | o.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// A dimension column's name in tables, views and configuration.
pub fn column_name(c: Column) -> &'static str {
    match c {
        Column::User => "user",
        Column::Device => "device",
        Column::Country => "country",
        Column::Placement => "placement",
        Column::Currency => "currency",
    }
}

/// Index of a dimension column in `Columns::DIMENSIONS` (`None` for `user`).
pub fn dimension_index(c: Column) -> Option<usize> {
    Columns::DIMENSIONS.iter().position(|&d| d == c)
}

/// The host's index of a dimension: 0..4 the `Columns::DIMENSIONS`, then one per attribute slot
/// (`ATTRIBUTE_DIMENSIONS + slot`). Per-window rankings and folds are kept by it.
pub const ATTRIBUTE_DIMENSIONS: usize = Columns::DIMENSIONS.len();

/// At most this many custom attributes per plugin (`plugin-info.attributes`).
pub const MAX_PLUGIN_ATTRIBUTES: usize = 4;

/// At most this many distinct attribute names over the life of the process (every plugin
/// loaded, swaps included): the size of [`AttributeSet`].
pub const MAX_ATTRIBUTE_SLOTS: usize = 32;

/// The prefix of an attribute's name in a row's `dimensions` text (`attr.creative_size=300x250`),
/// keeping attribute names apart from the columns'.
pub const ATTRIBUTE_PREFIX: &str = "attr.";

/// Attribute names the plugins of this process declared, by slot. A slot is never reused, so a
/// window's pending batch can carry each name it needs in a fixed place (`event-batch.attributes`
/// of the shared batch is indexed by slot; each plugin gets its own names in its own order).
static ATTRIBUTE_SLOTS: std::sync::Mutex<Vec<Arc<str>>> = std::sync::Mutex::new(Vec::new());

/// The slot of attribute `name`, given one if new; `None` once [`MAX_ATTRIBUTE_SLOTS`] names
/// are taken.
fn attribute_slot(name: &str) -> Option<usize> {
    let mut slots = ATTRIBUTE_SLOTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(i) = slots.iter().position(|n| &**n == name) {
        return Some(i);
    }
    (slots.len() < MAX_ATTRIBUTE_SLOTS).then(|| {
        slots.push(name.into());
        slots.len() - 1
    })
}

/// A set of attribute slots, as a bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct AttributeSet(u32);

impl AttributeSet {
    pub fn union(self, o: AttributeSet) -> AttributeSet {
        AttributeSet(self.0 | o.0)
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    /// The slots, ascending.
    pub fn slots(self) -> impl Iterator<Item = usize> {
        (0..MAX_ATTRIBUTE_SLOTS).filter(move |&i| self.0 & 1 << i != 0)
    }
    /// One past the highest slot (0 for none): the length of a batch's `attributes` by slot.
    pub fn width(self) -> usize {
        (u32::BITS - self.0.leading_zeros()) as usize
    }
}

/// The custom attributes a plugin declared (`plugin-info.attributes`): names in its order, and
/// their slots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    pub names: Vec<Arc<str>>,
    pub slots: Vec<usize>,
}

impl Attributes {
    /// Checks the declared names (count, form, repeats) and gives them slots.
    fn declare(names: &[String]) -> Result<Attributes, String> {
        if names.len() > MAX_PLUGIN_ATTRIBUTES {
            return Err(format!(
                "plugin-info declares {} attributes, at most {MAX_PLUGIN_ATTRIBUTES}",
                names.len()
            ));
        }
        let mut out = Attributes::default();
        for (i, n) in names.iter().enumerate() {
            if n.is_empty()
                || n.len() > 64
                || !n
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(format!("attribute name {n:?} must be 1 to 64 of [a-z0-9_]"));
            }
            if names[..i].contains(n) {
                return Err(format!("attribute {n:?} declared twice"));
            }
            let slot = attribute_slot(n).ok_or_else(|| {
                format!(
                    "attribute {n:?}: this process already serves {MAX_ATTRIBUTE_SLOTS} distinct \
                     attribute names (restart the daemon to drop unused ones)"
                )
            })?;
            out.names.push(n.as_str().into());
            out.slots.push(slot);
        }
        Ok(out)
    }

    pub fn set(&self) -> AttributeSet {
        AttributeSet(self.slots.iter().fold(0, |a, &s| a | 1 << s))
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The window a plugin's accumulators cover (`plugin-info.window`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Span {
    #[default]
    Minute,
    Hour,
    /// A calendar day in the campaign's time zone.
    Day,
}

impl Span {
    pub const ALL: [Span; 3] = [Span::Minute, Span::Hour, Span::Day];

    pub fn name(self) -> &'static str {
        match self {
            Span::Minute => "minute",
            Span::Hour => "hour",
            Span::Day => "day",
        }
    }
}

/// Configuration of one plugin by name (`[plugins.config.NAME]`): the parameters handed to
/// `init`, and the host's own per-plugin settings taken out of the same table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PluginSettings {
    /// Sorted by name; values in TOML text form (strings unquoted, arrays comma-joined).
    pub params: Vec<(String, String)>,
    /// Distinct values per dimension column per window kept before the rest fold into `other`.
    pub max_dimension_values: usize,
}

/// The parameters as one JSON object (`{}` for none): what lineage and rows record.
pub fn params_json(params: &[(String, String)]) -> String {
    let map: serde_json::Map<String, serde_json::Value> = params
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::Value::Object(map).to_string()
}

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
        users: vec![],
        devices: vec![],
        countries: vec![],
        placements: vec![],
        currencies: vec![],
        attributes: vec![],
        touchpoint_ends: vec![],
        touchpoints: vec![],
    }
}

/// The optional columns of one event; pushed only for the columns the batch carries.
#[derive(Debug, Clone, Copy, Default)]
pub struct Extra {
    pub user: u64,
    /// Interned values, in `Columns::DIMENSIONS` order (device, country, placement, currency).
    pub dims: [u32; 4],
}

/// Appends one event with none of the optional columns. `touchpoints` is `Some` (possibly
/// empty) when the batch carries touchpoints: then every event of the batch must be pushed
/// with `Some`.
pub fn push_event(
    b: &mut EventBatch,
    kind: u8,
    time_ms: i64,
    campaign: u32,
    ad: u32,
    revenue_micros: i64,
    touchpoints: Option<&[Touchpoint]>,
) {
    push_event_with(
        b,
        kind,
        time_ms,
        campaign,
        ad,
        revenue_micros,
        touchpoints,
        Columns::default(),
        &Extra::default(),
    );
}

/// [`push_event`] for a batch that carries optional `columns` too.
#[allow(clippy::too_many_arguments)]
#[inline]
pub fn push_event_with(
    b: &mut EventBatch,
    kind: u8,
    time_ms: i64,
    campaign: u32,
    ad: u32,
    revenue_micros: i64,
    touchpoints: Option<&[Touchpoint]>,
    columns: Columns,
    extra: &Extra,
) {
    b.kinds.push(kind);
    b.times_ms.push(time_ms);
    b.campaigns.push(campaign);
    b.ads.push(ad);
    b.revenue_micros.push(revenue_micros);
    if !columns.is_empty() {
        if columns.has(Column::User) {
            b.users.push(extra.user);
        }
        for (i, &c) in Columns::DIMENSIONS.iter().enumerate() {
            if columns.has(c) {
                dim_column_mut(b, c).push(extra.dims[i]);
            }
        }
    }
    if let Some(tps) = touchpoints {
        b.touchpoints.extend_from_slice(tps);
        b.touchpoint_ends.push(b.touchpoints.len() as u32);
    }
}

/// The batch's column of a dimension (`user` has no such column: it is `users`).
pub fn dim_column_mut(b: &mut EventBatch, c: Column) -> &mut Vec<u32> {
    match c {
        Column::Device => &mut b.devices,
        Column::Country => &mut b.countries,
        Column::Placement => &mut b.placements,
        Column::Currency | Column::User => &mut b.currencies,
    }
}

/// Empties a batch, keeping its capacity.
pub fn clear_batch(b: &mut EventBatch) {
    b.kinds.clear();
    b.times_ms.clear();
    b.campaigns.clear();
    b.ads.clear();
    b.revenue_micros.clear();
    b.users.clear();
    b.devices.clear();
    b.countries.clear();
    b.placements.clear();
    b.currencies.clear();
    // Cleared, not dropped: the window's pending batch keeps one column per attribute slot.
    for a in &mut b.attributes {
        a.clear();
    }
    b.touchpoint_ends.clear();
    b.touchpoints.clear();
}

/// What `plugin` gets of a window's shared batch: the batch itself when it carries exactly
/// what the plugin asked for, else a copy without the columns and views it did not ask for
/// and with dimension values folded by `fold` (host dimension index, see
/// [`ATTRIBUTE_DIMENSIONS`], and value → the value the plugin sees). The copy is the price of
/// sharing one pending batch per window among plugins with different needs; a window whose
/// plugins ask for nothing extra never pays it.
///
/// The shared batch's `attributes` are indexed by attribute slot; the plugin's copy has its
/// declared attributes in its declared order.
pub fn batch_for<'a>(
    shared: &'a EventBatch,
    info: &PluginInfo,
    fold: Option<&dyn Fn(usize, u32) -> u32>,
) -> std::borrow::Cow<'a, EventBatch> {
    use std::borrow::Cow;
    let n = shared.kinds.len();
    let extra_cols = (!shared.users.is_empty() && !info.columns.has(Column::User))
        || Columns::DIMENSIONS
            .iter()
            .any(|&c| !info.columns.has(c) && !dim_column(shared, c).is_empty())
        || !shared.attributes.is_empty()
        || !info.attributes.is_empty();
    let extra_views = !info.wants_views
        && shared
            .touchpoints
            .iter()
            .any(|t| t.kind == TouchKind::Impression);
    let extra_tps = !info.wants_touchpoints && !shared.touchpoint_ends.is_empty();
    if !extra_cols && !extra_views && !extra_tps && fold.is_none() {
        return Cow::Borrowed(shared);
    }
    let keep = |c: Column, v: &Vec<u32>| {
        if !info.columns.has(c) {
            return Vec::new();
        }
        match fold {
            Some(f) => {
                let d = dimension_index(c).expect("a dimension column");
                v.iter().map(|&x| f(d, x)).collect()
            }
            None => v.clone(),
        }
    };
    let attributes = info
        .attributes
        .slots
        .iter()
        .map(|&g| {
            let v = shared.attributes.get(g).map_or(&[][..], |v| &v[..]);
            match fold {
                Some(f) => v.iter().map(|&x| f(ATTRIBUTE_DIMENSIONS + g, x)).collect(),
                None => v.to_vec(),
            }
        })
        .collect();
    let (touchpoint_ends, touchpoints) = if !info.wants_touchpoints {
        (Vec::new(), Vec::new())
    } else if extra_views {
        let mut ends = Vec::with_capacity(n);
        let mut tps = Vec::new();
        let mut from = 0usize;
        for &end in &shared.touchpoint_ends {
            tps.extend(
                shared.touchpoints[from..end as usize]
                    .iter()
                    .filter(|t| t.kind == TouchKind::Click)
                    .copied(),
            );
            ends.push(tps.len() as u32);
            from = end as usize;
        }
        (ends, tps)
    } else {
        (shared.touchpoint_ends.clone(), shared.touchpoints.clone())
    };
    Cow::Owned(EventBatch {
        kinds: shared.kinds.clone(),
        times_ms: shared.times_ms.clone(),
        campaigns: shared.campaigns.clone(),
        ads: shared.ads.clone(),
        revenue_micros: shared.revenue_micros.clone(),
        users: if info.columns.has(Column::User) {
            shared.users.clone()
        } else {
            Vec::new()
        },
        devices: keep(Column::Device, &shared.devices),
        countries: keep(Column::Country, &shared.countries),
        placements: keep(Column::Placement, &shared.placements),
        currencies: keep(Column::Currency, &shared.currencies),
        attributes,
        touchpoint_ends,
        touchpoints,
    })
}

fn dim_column(b: &EventBatch, c: Column) -> &Vec<u32> {
    match c {
        Column::Device => &b.devices,
        Column::Country => &b.countries,
        Column::Placement => &b.placements,
        Column::Currency | Column::User => &b.currencies,
    }
}

use bindings::{MetricPlugin, MetricPluginPre};

/// A component of either contract, ready to instantiate.
#[derive(Clone)]
enum Pre {
    V2(MetricPluginPre<State>),
    V1(v01::MetricPluginPre<State>),
}

/// An instance's exports, of either contract.
enum Exports {
    V2(MetricPlugin),
    V1(v01::MetricPlugin),
}

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
    pub wants_views: bool,
    pub columns: Columns,
    /// The custom attributes it reads (`plugin-info.attributes`).
    pub attributes: Attributes,
    pub window: Span,
    /// The parameters it was initialised with (part of its identity: see `params_json`).
    pub params: Vec<(String, String)>,
    /// Host setting from its configuration: see [`PluginSettings`].
    pub max_dimension_values: usize,
    /// sha256 of the component bytes, hex: which exact build produced a row.
    pub sha256: String,
    /// The WIT package the component was built against, e.g. `admetrics:metrics@0.1.0` (see
    /// [`wit_of_component`]).
    pub wit: String,
}

/// The WIT package (name@version) of `wit/admetrics.wit`, the world the host's bindings are
/// generated from: `MetricPluginPre::new` refuses a component that does not type-check against
/// it, so every loaded plugin implements this world (or a semver-compatible one).
pub const WIT_PACKAGE: &str = "admetrics:metrics@0.2.0";

/// The previous contract, still loaded through the adapter.
pub const WIT_PACKAGE_V01: &str = "admetrics:metrics@0.1.0";

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
    /// `[plugins]` as loaded: per-plugin parameters come from here. Replaced (engine kept) by
    /// [`with_config`](Self::with_config) when the configuration changes.
    config: Arc<PluginsConfig>,
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
            config: Arc::new(limits.clone()),
        })
    }

    /// The same engine (and limits) with another `[plugins]` section's per-plugin settings:
    /// what plugins loaded from now on are configured with.
    pub fn with_config(&self, cfg: &PluginsConfig) -> PluginRuntime {
        PluginRuntime {
            inner: self.inner.clone(),
            config: Arc::new(cfg.clone()),
        }
    }

    /// The settings a plugin of this name gets.
    pub fn settings_of(&self, name: &str) -> PluginSettings {
        self.config.settings(name)
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
        let pre = match MetricPluginPre::new(pre.clone()) {
            Ok(p) => Pre::V2(p),
            Err(e2) => match v01::MetricPluginPre::new(pre) {
                Ok(p) => Pre::V1(p),
                Err(_) => {
                    return Err(invalid(format!(
                        "does not implement {WIT_PACKAGE} world metric-plugin (nor \
                         {WIT_PACKAGE_V01}): {e2:#}"
                    )));
                }
            },
        };
        let mut plugin = Plugin {
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                metrics: vec![],
                wants_touchpoints: false,
                wants_views: false,
                columns: Columns::default(),
                attributes: Attributes::default(),
                window: Span::Minute,
                params: vec![],
                max_dimension_values: usize::MAX,
                sha256,
                wit,
            },
            path: path.into(),
            runtime: self.clone(),
            pre,
            live: None,
            restarts: 0,
        };
        // The name first (every parameter has a default), then the configured parameters.
        let described = plugin.describe().map_err(|e| invalid(e.to_string()))?;
        let settings = self.settings_of(&described.name);
        let described = if settings.params.is_empty() {
            described
        } else if matches!(plugin.pre, Pre::V1(_)) {
            let names: Vec<&str> = settings.params.iter().map(|(k, _)| k.as_str()).collect();
            return Err(invalid(format!(
                "plugin {:?} is built against {WIT_PACKAGE_V01}, which takes no parameters, but \
                 [plugins.config.{}] sets {}: rebuild it against {WIT_PACKAGE} (wit/admetrics.wit; \
                 see plugins/README.md) to configure it",
                described.name,
                described.name,
                names.join(", ")
            )));
        } else {
            plugin.info.params = settings.params.clone();
            plugin.live = None;
            let again = plugin.describe().map_err(|e| invalid(e.to_string()))?;
            if again.name != described.name {
                return Err(invalid(format!(
                    "plugin {:?} names itself {:?} when given its parameters",
                    described.name, again.name
                )));
            }
            again
        };
        let info = described;
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
        if info.wants_views && !info.wants_touchpoints {
            return Err(invalid(
                "plugin-info sets wants-views without wants-touchpoints".into(),
            ));
        }
        plugin.info.name = info.name;
        plugin.info.version = info.version;
        plugin.info.metrics = info.metrics;
        plugin.info.wants_touchpoints = info.wants_touchpoints;
        plugin.info.wants_views = info.wants_views;
        plugin.info.columns = info.columns;
        plugin.info.attributes = Attributes::declare(&info.attributes).map_err(invalid)?;
        plugin.info.window = info.window;
        plugin.info.max_dimension_values = settings.max_dimension_values;
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

/// What `init` (or 0.1.0's `info`) says, before validation.
struct Described {
    name: String,
    version: String,
    metrics: Vec<String>,
    wants_touchpoints: bool,
    wants_views: bool,
    columns: Columns,
    attributes: Vec<String>,
    window: Span,
}

struct Live {
    store: Store<State>,
    exports: Exports,
    /// What this instance's `init` returned (0.2.0 only).
    init: Option<bindings::admetrics::metrics::types::PluginInfo>,
}

/// One loaded plugin with its own store and instance.
pub struct Plugin {
    pub info: PluginInfo,
    pub path: PathBuf,
    runtime: PluginRuntime,
    pre: Pre,
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
        let (exports, init) = match &self.pre {
            Pre::V2(pre) => {
                let b = pre
                    .instantiate(&mut store)
                    .map_err(|e| PluginError::Trap(format!("instantiate: {e:#}")))?;
                // Every fresh instance is configured before use.
                let info = b
                    .call_init(&mut store, &self.info.params)
                    .map_err(|e| PluginError::Trap(format!("init: {e:#}")))?
                    .map_err(|e| PluginError::Guest(format!("init refused its parameters: {e}")))?;
                (Exports::V2(b), Some(info))
            }
            Pre::V1(pre) => (
                Exports::V1(
                    pre.instantiate(&mut store)
                        .map_err(|e| PluginError::Trap(format!("instantiate: {e:#}")))?,
                ),
                None,
            ),
        };
        Ok(Live {
            store,
            exports,
            init,
        })
    }

    /// Calls `init` with `info.params` (0.1.0: `info`) on a fresh instance.
    fn describe(&mut self) -> Result<Described, PluginError> {
        self.live = None;
        let v1 = self.call(|e, s| match e {
            Exports::V2(_) => Ok(None),
            Exports::V1(p) => p.call_info(s).map(Some),
        })?;
        if let Some(i) = v1 {
            return Ok(Described {
                name: i.name,
                version: i.version,
                metrics: i.metrics,
                wants_touchpoints: i.wants_touchpoints,
                wants_views: false,
                columns: Columns::default(),
                attributes: Vec::new(),
                window: Span::Minute,
            });
        }
        let i = self
            .live
            .as_mut()
            .and_then(|l| l.init.take())
            .expect("a 0.2.0 instance was initialised by `call`");
        Ok(Described {
            name: i.name,
            version: i.version,
            metrics: i.metrics,
            wants_touchpoints: i.wants_touchpoints,
            wants_views: i.wants_views,
            columns: Columns::of(&i.columns),
            attributes: i.attributes,
            window: match i.window {
                WindowSize::Minute => Span::Minute,
                WindowSize::Hour => Span::Hour,
                WindowSize::Day => Span::Day,
            },
        })
    }

    fn deadline_ticks(&self) -> u64 {
        (self.runtime.inner.limits.call_deadline_ms / EPOCH_TICK.as_millis() as u64).max(1)
    }

    /// Runs one export call with a fresh deadline; a trap drops the instance.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&Exports, &mut Store<State>) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        if self.live.is_none() {
            self.live = Some(self.instantiate()?);
        }
        let ticks = self.deadline_ticks();
        let live = self.live.as_mut().expect("instantiated above");
        live.store.set_epoch_deadline(ticks);
        match f(&live.exports, &mut live.store) {
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
        self.call(|p, s| match p {
            Exports::V2(p) => p.call_accumulate(s, acc, events),
            Exports::V1(p) => p.call_accumulate(s, acc, &to_v01(events)),
        })?
        .map_err(PluginError::Guest)
    }

    /// The window's metric rows, validated against the plugin's declaration.
    pub fn finish(&mut self, acc: &[u8]) -> Result<Vec<MetricRow>, PluginError> {
        let rows = self
            .call(|p, s| match p {
                Exports::V2(p) => p.call_finish(s, acc),
                Exports::V1(p) => Ok(p.call_finish(s, acc)?.map(|rows| {
                    rows.into_iter()
                        .map(|r| MetricRow {
                            campaign: r.campaign,
                            ad: r.ad,
                            dimensions: Vec::new(),
                            metric: r.metric,
                            value: r.value,
                            numerator: r.numerator,
                            denominator: r.denominator,
                        })
                        .collect()
                })),
            })?
            .map_err(PluginError::Guest)?;
        for r in &rows {
            for (i, d) in r.dimensions.iter().enumerate() {
                match d.key {
                    DimensionKey::Column(c) if c == Column::User || !self.info.columns.has(c) => {
                        return Err(PluginError::Malformed(format!(
                            "{} has a dimension on column {}, which it did not declare (or \
                             cannot: user)",
                            r.metric,
                            column_name(c)
                        )));
                    }
                    DimensionKey::Attribute(a)
                        if a as usize >= self.info.attributes.names.len() =>
                    {
                        return Err(PluginError::Malformed(format!(
                            "{} has a dimension on attribute #{a}, but the plugin declared {} \
                             attributes",
                            r.metric,
                            self.info.attributes.names.len()
                        )));
                    }
                    _ => {}
                }
                if r.dimensions[..i].iter().any(|o| o.key == d.key) {
                    return Err(PluginError::Malformed(format!(
                        "{} names dimension {} twice",
                        r.metric,
                        self.dimension_name(d.key)
                    )));
                }
            }
            if !self.info.metrics.contains(&r.metric) {
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

    /// A dimension key's name in rows and messages: the column's, or `attr.NAME`.
    pub fn dimension_name(&self, key: DimensionKey) -> String {
        match key {
            DimensionKey::Column(c) => column_name(c).to_string(),
            DimensionKey::Attribute(a) => match self.info.attributes.names.get(a as usize) {
                Some(n) => format!("{ATTRIBUTE_PREFIX}{n}"),
                None => format!("attribute #{a}"),
            },
        }
    }

    /// One call over sample events of every kind must succeed before a plugin is used.
    fn smoke_test(&mut self) -> Result<(), PluginError> {
        let t = 1_700_000_000_000;
        let tp = [
            Touchpoint {
                time_ms: t - 2000,
                campaign: 0,
                ad: 0,
                kind: TouchKind::Impression,
            },
            Touchpoint {
                time_ms: t - 1000,
                campaign: 0,
                ad: 0,
                kind: TouchKind::Click,
            },
        ];
        let all = Columns::of(&[
            Column::User,
            Column::Device,
            Column::Country,
            Column::Placement,
            Column::Currency,
        ]);
        let x = |u: u64, d: u32| Extra {
            user: u,
            dims: [d; 4],
        };
        let mut sample = new_batch();
        let b = &mut sample;
        push_event_with(b, kind::IMPRESSION, t, 0, 0, 0, Some(&[]), all, &x(7, 0));
        push_event_with(b, kind::CLICK, t, 0, 0, 0, Some(&[]), all, &x(7, 0));
        push_event_with(
            b,
            kind::CONVERSION,
            t,
            1,
            1,
            1_500_000,
            Some(&tp),
            all,
            &x(7, 1),
        );
        push_event_with(b, kind::CONVERSION, t, 1, 1, 1, Some(&[]), all, &x(8, 1));
        let mut sample = batch_for(&sample, &self.info.clone(), None).into_owned();
        // Values 0 and 1, as for the columns.
        for a in &mut sample.attributes {
            *a = vec![0, 0, 1, 1];
        }
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

/// The 0.1.0 batch of a 0.2.0 one (a 0.1.0 plugin never asks for columns or views, so its
/// batch has none: see `batch_for`).
fn to_v01(b: &EventBatch) -> v01::admetrics::metrics::types::EventBatch {
    use v01::admetrics::metrics::types as old;
    old::EventBatch {
        kinds: b.kinds.clone(),
        times_ms: b.times_ms.clone(),
        campaigns: b.campaigns.clone(),
        ads: b.ads.clone(),
        revenue_micros: b.revenue_micros.clone(),
        touchpoint_ends: b.touchpoint_ends.clone(),
        touchpoints: b
            .touchpoints
            .iter()
            .map(|t| old::Touchpoint {
                time_ms: t.time_ms,
                campaign: t.campaign,
                ad: t.ad,
            })
            .collect(),
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
    /// Declared attributes: at most 4 per plugin, `[a-z0-9_]{1,64}`, no repeats; a name keeps
    /// its slot across plugins, so windows share one column per name.
    #[test]
    fn attribute_declarations_are_checked_and_share_slots() {
        use super::Attributes;
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let a = Attributes::declare(&names(&["t_size", "t_exp"])).unwrap();
        let b = Attributes::declare(&names(&["t_exp"])).unwrap();
        assert_eq!(a.slots[1], b.slots[0]);
        assert_ne!(a.slots[0], a.slots[1]);
        assert_eq!(a.set().slots().count(), 2);
        assert!(a.set().width() > a.slots[0].max(a.slots[1]));
        for (bad, needle) in [
            (
                &["a", "b", "c", "d", "e"][..],
                "declares 5 attributes, at most 4",
            ),
            (&["Size"][..], "must be 1 to 64 of [a-z0-9_]"),
            (&[""][..], "must be 1 to 64"),
            (&["t_size", "t_size"][..], "declared twice"),
        ] {
            let err = Attributes::declare(&names(bad)).unwrap_err();
            assert!(err.contains(needle), "{bad:?}: {err}");
        }
    }

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
