//! `admetrics plugin diff LIVE SHADOW`: what a shadow plugin (`plugins.shadow_dir`) computed
//! against what the live version of the same plugin computed, on the same windows, read back from
//! `campaign_metrics`. It gates a deploy: the exit status says whether the differences are within
//! the thresholds.
//!
//! # What is compared
//! A row of `campaign_metrics` is one (stream, Kafka partition)'s share of a window, and its
//! revisions order only the rows of that (stream, partition). So the unit compared is a
//! **window share**: (stream, partition, window_start). Per side (live rows: the live build's,
//! `shadow IS NOT TRUE AND restatement IS NULL`; shadow rows: the shadow build's, `shadow = true`)
//! each key (window_start, campaign_id, ad_id, metric, stream, partition) is taken at its latest
//! revision, and a share is *final* on a side when every one of its keys is final there.
//!
//! A share is compared only when both sides have it and both hold it final. A shadow joins only
//! the windows opened after it loaded (and leaves when quarantined or promoted), so shares only
//! one side has, or that are still open on a side, are counted as *not compared*, never as
//! differences. Within a compared share every key of either side is compared: numerator and
//! denominator equal within the relative tolerance, and both withheld or neither; a key only one
//! side has is a difference. A share differs in a metric when any of its keys of that metric
//! differ; it differs when it differs in any metric.
//!
//! # Verdict
//! The thresholds count differing shares over all metrics: `max_differing_windows` (default 0
//! when no threshold is given) and `max_differing_fraction` (of the compared shares); each one
//! given must hold. Nothing compared at all is an error ([`DiffError::NothingCompared`]), not a
//! pass: a gate that compared nothing has shown nothing (the shadow may not have been loaded yet,
//! or `--since` excludes every window it computed).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use iceberg::table::Table;
use serde::Serialize;
use sha2::Digest;

use crate::config::Config;
use crate::sink::SinkError;
use crate::sink::schema::{RESTATEMENT_COLUMN, SHADOW_COLUMN, STREAM_COLUMN};

#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    #[error(
        "{0:?} names no plugin version: give a .wasm file, a sha256 prefix (at least 4 hex digits) or NAME@VERSION"
    )]
    BadVersion(String),
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    #[error("--since {0:?}: neither an RFC 3339 time nor epoch milliseconds")]
    BadTime(String),
    #[error("no campaign_metrics table at {0} (check --config)")]
    NoTable(String),
    #[error(
        "no {side} rows of {spec} in campaign_metrics{since}; {side} versions there: {available}"
    )]
    Unknown {
        side: Side,
        spec: String,
        since: String,
        available: String,
    },
    #[error("{spec} is ambiguous among the {side} versions in campaign_metrics: {candidates}")]
    Ambiguous {
        side: Side,
        spec: String,
        candidates: String,
    },
    #[error("live {live} and shadow {shadow} are builds of different plugins")]
    DifferentPlugins { live: String, shadow: String },
    #[error(
        "nothing compared: no window (of one stream partition) is final on both sides{since}. \
         Not compared: {} live only, {} shadow only, {} still open on a side. A shadow \
         computes only the windows opened after it loaded: wait until some have closed",
        .not_compared.live_only, .not_compared.shadow_only, .not_compared.not_final
    )]
    NothingCompared {
        since: String,
        not_compared: NotCompared,
    },
}

/// Which rows: the live version's or the shadow's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    Live,
    Shadow,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Live => "live",
            Side::Shadow => "shadow",
        })
    }
}

/// How the command line names a plugin version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionSpec {
    /// The sha256 of a build (computed from a `.wasm` file), or a prefix of it (lowercase hex).
    Sha256(String),
    NameVersion {
        name: String,
        version: String,
    },
}

impl VersionSpec {
    /// `arg` as a version: an existing file or a `*.wasm` path (its sha256 is computed),
    /// `NAME@VERSION`, or a sha256 prefix of at least 4 hex digits.
    pub fn parse(arg: &str) -> Result<VersionSpec, DiffError> {
        let path = Path::new(arg);
        if arg.ends_with(".wasm") || path.is_file() {
            let bytes = std::fs::read(path).map_err(|error| DiffError::Read {
                path: arg.to_string(),
                error,
            })?;
            return Ok(VersionSpec::Sha256(hex(&sha2::Sha256::digest(&bytes))));
        }
        if let Some((name, version)) = arg.split_once('@') {
            if name.is_empty() || version.is_empty() {
                return Err(DiffError::BadVersion(arg.into()));
            }
            return Ok(VersionSpec::NameVersion {
                name: name.into(),
                version: version.into(),
            });
        }
        if arg.len() >= 4 && arg.len() <= 64 && arg.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(VersionSpec::Sha256(arg.to_ascii_lowercase()));
        }
        Err(DiffError::BadVersion(arg.into()))
    }

    fn matches(&self, v: &Version) -> bool {
        match self {
            VersionSpec::Sha256(p) => v.sha256.starts_with(p.as_str()),
            VersionSpec::NameVersion { name, version } => {
                v.plugin == *name && v.version == *version
            }
        }
    }
}

impl std::fmt::Display for VersionSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionSpec::Sha256(s) if s.len() == 64 => write!(f, "sha256 {s}"),
            VersionSpec::Sha256(s) => write!(f, "sha256 {s}…"),
            VersionSpec::NameVersion { name, version } => write!(f, "{name}@{version}"),
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A plugin build that wrote rows, on one side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Version {
    pub plugin: String,
    pub version: String,
    pub sha256: String,
    /// Its rows on this side (every revision).
    pub rows: u64,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{} (sha256 {})",
            self.plugin,
            self.version,
            &self.sha256[..self.sha256.len().min(12)]
        )
    }
}

/// Picks the one version of `side` that `spec` names.
pub fn resolve(spec: &VersionSpec, side: Side, versions: &[Version]) -> Result<Version, DiffError> {
    let found: Vec<&Version> = versions.iter().filter(|v| spec.matches(v)).collect();
    let list = |vs: &mut dyn Iterator<Item = &Version>| {
        let s: Vec<String> = vs.map(|v| v.to_string()).collect();
        if s.is_empty() {
            "none".to_string()
        } else {
            s.join(", ")
        }
    };
    match found.as_slice() {
        [v] => Ok((*v).clone()),
        [] => Err(DiffError::Unknown {
            side,
            spec: spec.to_string(),
            since: String::new(),
            available: list(&mut versions.iter()),
        }),
        many => Err(DiffError::Ambiguous {
            side,
            spec: spec.to_string(),
            candidates: list(&mut many.iter().copied()),
        }),
    }
}

/// One row of `campaign_metrics`, as the comparison needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub window_start_ms: i64,
    pub campaign_id: String,
    pub ad_id: Option<String>,
    /// The breakdown cell (`campaign_metrics.dimensions`); `None` for a total.
    pub dimensions: Option<String>,
    pub metric: String,
    pub stream: Option<String>,
    pub partition: i32,
    pub revision: i64,
    pub value: f64,
    pub numerator: f64,
    pub denominator: f64,
    pub is_final: bool,
    pub withheld: bool,
}

/// A window of one (stream, partition): the unit compared.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Share {
    pub window_start_ms: i64,
    pub stream: Option<String>,
    pub partition: i32,
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}/{}",
            time(self.window_start_ms),
            self.stream.as_deref().unwrap_or("(no stream)"),
            self.partition
        )
    }
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

type Key = (String, Option<String>, Option<String>, String); // campaign, ad, dimensions, metric

/// The latest revision of each key, per share, of one side.
type Latest = BTreeMap<Share, BTreeMap<Key, Row>>;

fn latest(rows: impl IntoIterator<Item = Row>) -> Latest {
    let mut out: Latest = BTreeMap::new();
    for r in rows {
        let share = Share {
            window_start_ms: r.window_start_ms,
            stream: r.stream.clone(),
            partition: r.partition,
        };
        let key = (
            r.campaign_id.clone(),
            r.ad_id.clone(),
            r.dimensions.clone(),
            r.metric.clone(),
        );
        let keys = out.entry(share).or_default();
        match keys.get(&key) {
            Some(have) if have.revision >= r.revision => {}
            _ => {
                keys.insert(key, r);
            }
        }
    }
    out
}

/// A key's figures on one side.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Figures {
    pub value: f64,
    pub numerator: f64,
    pub denominator: f64,
    pub withheld: bool,
}

impl From<&Row> for Figures {
    fn from(r: &Row) -> Self {
        Figures {
            value: r.value,
            numerator: r.numerator,
            denominator: r.denominator,
            withheld: r.withheld,
        }
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.withheld {
            return f.write_str("withheld");
        }
        write!(
            f,
            "{} ({}/{})",
            self.value, self.numerator, self.denominator
        )
    }
}

/// One differing key, as an example.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyDiff {
    pub window_start: String,
    pub window_start_ms: i64,
    pub stream: Option<String>,
    pub partition: i32,
    pub campaign_id: String,
    pub ad_id: Option<String>,
    pub dimensions: Option<String>,
    pub live: Option<Figures>,
    pub shadow: Option<Figures>,
}

impl std::fmt::Display for KeyDiff {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let side = |x: &Option<Figures>| x.map_or("absent".to_string(), |x| x.to_string());
        write!(
            f,
            "window {} {}/{} campaign {} ad {}{}: live {}, shadow {}",
            self.window_start,
            self.stream.as_deref().unwrap_or("(no stream)"),
            self.partition,
            self.campaign_id,
            self.ad_id.as_deref().unwrap_or("-"),
            self.dimensions
                .as_deref()
                .map_or(String::new(), |d| format!(" [{d}]")),
            side(&self.live),
            side(&self.shadow)
        )
    }
}

/// The largest difference of one figure: absolute and relative (|a − b| / max(|a|, |b|)), each
/// with the key it was found at. A key one side lacks counts as 0 there.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Largest {
    pub abs: Option<(f64, KeyDiff)>,
    pub rel: Option<(f64, KeyDiff)>,
}

impl Largest {
    fn offer(&mut self, a: f64, b: f64, at: &KeyDiff) {
        let abs = (a - b).abs();
        let rel = if abs == 0.0 {
            0.0
        } else {
            abs / a.abs().max(b.abs())
        };
        if abs > 0.0 && self.abs.as_ref().is_none_or(|(m, _)| abs > *m) {
            self.abs = Some((abs, at.clone()));
        }
        if rel > 0.0 && self.rel.as_ref().is_none_or(|(m, _)| rel > *m) {
            self.rel = Some((rel, at.clone()));
        }
    }
}

/// What one metric's comparison found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MetricReport {
    /// Compared shares holding this metric on either side.
    pub windows_compared: usize,
    pub windows_differing: usize,
    pub keys_compared: usize,
    /// Keys on both sides whose figures differ (or one side withheld).
    pub keys_differing: usize,
    pub keys_live_only: usize,
    pub keys_shadow_only: usize,
    pub largest_value: Largest,
    pub largest_numerator: Largest,
    pub largest_denominator: Largest,
    /// The first differing keys (window order).
    pub examples: Vec<KeyDiff>,
}

/// Shares not compared, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NotCompared {
    /// Final on the live side, absent from the shadow (opened before it loaded, or after it was
    /// quarantined or promoted).
    pub live_only: usize,
    pub shadow_only: usize,
    /// On both sides, but still open on at least one.
    pub not_final: usize,
}

/// The comparison of two sets of rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Comparison {
    pub windows_compared: usize,
    /// Shares that differ in any metric.
    pub differing: Vec<Share>,
    pub not_compared: NotCompared,
    pub metrics: BTreeMap<String, MetricReport>,
}

/// How to compare.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Numerators and denominators are equal when |a − b| ≤ tolerance · max(|a|, |b|).
    pub tolerance: f64,
    /// Example keys kept per metric.
    pub examples: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tolerance: 1e-9,
            examples: 5,
        }
    }
}

fn close(a: f64, b: f64, tolerance: f64) -> bool {
    a == b || (a - b).abs() <= tolerance * a.abs().max(b.abs())
}

/// Compares the live version's rows with the shadow's (each: that build's rows of one side,
/// every revision). Pure: the unit tests drive it directly.
pub fn compare(live: Vec<Row>, shadow: Vec<Row>, opts: &Options) -> Comparison {
    let (live, shadow) = (latest(live), latest(shadow));
    let final_ = |keys: &BTreeMap<Key, Row>| keys.values().all(|r| r.is_final);
    let mut c = Comparison::default();
    let shares: BTreeSet<&Share> = live.keys().chain(shadow.keys()).collect();
    for share in shares {
        let (l, s) = match (live.get(share), shadow.get(share)) {
            (Some(l), Some(s)) if final_(l) && final_(s) => (l, s),
            (Some(_), Some(_)) => {
                c.not_compared.not_final += 1;
                continue;
            }
            (Some(l), None) => {
                if final_(l) {
                    c.not_compared.live_only += 1;
                } else {
                    c.not_compared.not_final += 1;
                }
                continue;
            }
            (None, Some(s)) => {
                if final_(s) {
                    c.not_compared.shadow_only += 1;
                } else {
                    c.not_compared.not_final += 1;
                }
                continue;
            }
            (None, None) => unreachable!("a share of either side"),
        };
        c.windows_compared += 1;
        let keys: BTreeSet<&Key> = l.keys().chain(s.keys()).collect();
        let mut differs_in: BTreeSet<&str> = BTreeSet::new();
        let mut seen_metrics: BTreeSet<&str> = BTreeSet::new();
        for key in keys {
            let metric = key.3.as_str();
            let m = c.metrics.entry(metric.to_string()).or_default();
            if seen_metrics.insert(metric) {
                m.windows_compared += 1;
            }
            let (lr, sr) = (l.get(key), s.get(key));
            let at = KeyDiff {
                window_start: time(share.window_start_ms),
                window_start_ms: share.window_start_ms,
                stream: share.stream.clone(),
                partition: share.partition,
                campaign_id: key.0.clone(),
                ad_id: key.1.clone(),
                dimensions: key.2.clone(),
                live: lr.map(Figures::from),
                shadow: sr.map(Figures::from),
            };
            let differs = match (lr, sr) {
                (Some(a), Some(b)) => {
                    m.keys_compared += 1;
                    let differs = if a.withheld || b.withheld {
                        a.withheld != b.withheld
                    } else {
                        !close(a.numerator, b.numerator, opts.tolerance)
                            || !close(a.denominator, b.denominator, opts.tolerance)
                    };
                    if differs {
                        m.keys_differing += 1;
                    }
                    differs
                }
                (Some(_), None) => {
                    m.keys_live_only += 1;
                    true
                }
                (None, Some(_)) => {
                    m.keys_shadow_only += 1;
                    true
                }
                (None, None) => unreachable!("a key of either side"),
            };
            if !differs {
                continue;
            }
            differs_in.insert(metric);
            // Withheld figures are no values: left out of the largest differences.
            let fig = |r: Option<&Row>| r.filter(|r| !r.withheld).map(Figures::from);
            if let (Some(a), Some(b)) = (
                fig(lr).or(lr.is_none().then_some(Figures {
                    value: 0.0,
                    numerator: 0.0,
                    denominator: 0.0,
                    withheld: false,
                })),
                fig(sr).or(sr.is_none().then_some(Figures {
                    value: 0.0,
                    numerator: 0.0,
                    denominator: 0.0,
                    withheld: false,
                })),
            ) {
                m.largest_value.offer(a.value, b.value, &at);
                m.largest_numerator.offer(a.numerator, b.numerator, &at);
                m.largest_denominator
                    .offer(a.denominator, b.denominator, &at);
            }
            if m.examples.len() < opts.examples {
                m.examples.push(at);
            }
        }
        for metric in &differs_in {
            c.metrics.get_mut(*metric).expect("seen").windows_differing += 1;
        }
        if !differs_in.is_empty() {
            c.differing.push(share.clone());
        }
    }
    c
}

/// The deploy gate. Each limit given must hold; with neither given, no window may differ.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Thresholds {
    pub max_differing_windows: Option<usize>,
    pub max_differing_fraction: Option<f64>,
}

/// Whether `c` passes `t`, and why not.
pub fn verdict(c: &Comparison, t: &Thresholds) -> Result<(), String> {
    let n = c.differing.len();
    let windows = t
        .max_differing_windows
        .or(t.max_differing_fraction.is_none().then_some(0));
    let mut why = Vec::new();
    if let Some(max) = windows
        && n > max
    {
        why.push(format!(
            "{n} differing windows > --max-differing-windows {max}"
        ));
    }
    if let Some(max) = t.max_differing_fraction {
        let f = n as f64 / c.windows_compared.max(1) as f64;
        if f > max {
            why.push(format!(
                "{n} of {} windows differ ({f:.4}) > --max-differing-fraction {max}",
                c.windows_compared
            ));
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why.join("; "))
    }
}

/// What `admetrics plugin diff` asks.
#[derive(Debug, Clone)]
pub struct Request {
    pub live: VersionSpec,
    pub shadow: VersionSpec,
    /// Only windows starting at or after this (ms).
    pub since_ms: Option<i64>,
    pub options: Options,
    pub thresholds: Thresholds,
}

/// What it found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub live: Version,
    pub shadow: Version,
    pub since_ms: Option<i64>,
    pub tolerance: f64,
    pub thresholds: Thresholds,
    #[serde(flatten)]
    pub comparison: Comparison,
    /// Distinct window starts among the differing shares.
    pub differing_window_starts: Vec<String>,
    pub pass: bool,
    /// Why it did not pass (empty when it did).
    pub reason: String,
}

/// `--since`: RFC 3339 or epoch milliseconds.
pub fn parse_since(s: &str) -> Result<i64, DiffError> {
    if let Ok(ms) = s.trim().parse::<i64>() {
        return Ok(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(|d| d.timestamp_millis())
        .map_err(|_| DiffError::BadTime(s.into()))
}

/// Loads `campaign_metrics` read-only (no table or namespace is created: a wrong `--config` is
/// an error, not an empty warehouse).
pub async fn metrics_table(cfg: &Config) -> Result<Table, DiffError> {
    let ic = &cfg.iceberg;
    if !ic.is_rest() {
        let db = ic
            .catalog_uri
            .trim_start_matches("sqlite:")
            .trim_start_matches("//");
        if !Path::new(db).is_file() {
            return Err(DiffError::NoTable(format!("catalog {db} (no such file)")));
        }
    }
    let catalog = crate::sink::open_catalog(ic).await?;
    let ident = iceberg::TableIdent::new(
        iceberg::NamespaceIdent::new(ic.namespace.clone()),
        crate::sink::METRICS_TABLE.to_string(),
    );
    if !catalog.table_exists(&ident).await? {
        return Err(DiffError::NoTable(format!(
            "namespace {} of catalog {}",
            ic.namespace, ic.catalog_uri
        )));
    }
    Ok(catalog.load_table(&ident).await?)
}

/// The columns of the current snapshot's schema (iceberg-rust scans a snapshot with the schema
/// it was written with: a table not written since it gained a column cannot select it).
fn has_column(t: &Table, name: &str) -> bool {
    t.metadata()
        .current_snapshot()
        .and_then(|s| s.schema(t.metadata()).ok())
        .is_some_and(|s| s.field_by_name(name).is_some())
}

/// The plugin builds that wrote rows, per side: live rows (`shadow IS NOT TRUE`, no
/// restatement, not a restatement record) and shadow rows (`shadow = true`).
pub async fn versions(
    t: &Table,
    since_ms: Option<i64>,
) -> Result<(Vec<Version>, Vec<Version>), DiffError> {
    use futures::TryStreamExt;
    if t.metadata().current_snapshot().is_none() {
        return Ok((Vec::new(), Vec::new()));
    }
    let (shadow_col, restatement_col) = (
        has_column(t, SHADOW_COLUMN),
        has_column(t, RESTATEMENT_COLUMN),
    );
    let mut cols = vec!["plugin", "plugin_version", "plugin_sha256", "window_start"];
    if shadow_col {
        cols.push(SHADOW_COLUMN);
    }
    if restatement_col {
        cols.push(RESTATEMENT_COLUMN);
    }
    let mut scan = t.scan().select(cols);
    if let Some(ms) = since_ms {
        scan = scan.with_filter(since_filter(ms));
    }
    let mut stream = scan.build()?.to_arrow().await?;
    let mut sides: [BTreeMap<(String, String, String), u64>; 2] = Default::default();
    while let Some(b) = stream.try_next().await? {
        let col = |name: &str| b.column_by_name(name).cloned();
        let plugin = col("plugin").expect("selected");
        let version = col("plugin_version").expect("selected");
        let sha = col("plugin_sha256").expect("selected");
        let ws = col("window_start").expect("selected");
        let (plugin, version, sha) = (
            plugin.as_string::<i32>(),
            version.as_string::<i32>(),
            sha.as_string::<i32>(),
        );
        let ws = ws.as_primitive::<TimestampMicrosecondType>();
        let shadow = col(SHADOW_COLUMN);
        let shadow = shadow.as_ref().map(|c| c.as_boolean());
        let restatement = col(RESTATEMENT_COLUMN);
        for i in 0..b.num_rows() {
            if since_ms.is_some_and(|s| ws.value(i).div_euclid(1000) < s) {
                continue;
            }
            let is_shadow = shadow.is_some_and(|c| c.is_valid(i) && c.value(i));
            let restated = restatement.as_ref().is_some_and(|c| c.is_valid(i));
            if restated && !is_shadow {
                continue; // a restatement's row or record
            }
            let side = &mut sides[is_shadow as usize];
            *side
                .entry((
                    plugin.value(i).to_string(),
                    version.value(i).to_string(),
                    sha.value(i).to_string(),
                ))
                .or_default() += 1;
        }
    }
    let [live, shadow] = sides.map(|m| {
        m.into_iter()
            .map(|((plugin, version, sha256), rows)| Version {
                plugin,
                version,
                sha256,
                rows,
            })
            .collect::<Vec<Version>>()
    });
    Ok((live, shadow))
}

fn since_filter(ms: i64) -> iceberg::expr::Predicate {
    use iceberg::expr::Reference;
    use iceberg::spec::Datum;
    Reference::new("window_start").greater_than_or_equal_to(Datum::timestamptz_micros(ms * 1000))
}

/// The rows of build `sha256` on `side` (every revision), windows from `since_ms` on.
pub async fn rows(
    t: &Table,
    sha256: &str,
    side: Side,
    since_ms: Option<i64>,
) -> Result<Vec<Row>, DiffError> {
    use futures::TryStreamExt;
    use iceberg::expr::Reference;
    use iceberg::spec::Datum;
    if t.metadata().current_snapshot().is_none() {
        return Ok(Vec::new());
    }
    let (shadow_col, restatement_col, stream_col, dims_col) = (
        has_column(t, SHADOW_COLUMN),
        has_column(t, RESTATEMENT_COLUMN),
        has_column(t, STREAM_COLUMN),
        has_column(t, crate::sink::schema::DIMENSIONS_COLUMN),
    );
    if side == Side::Shadow && !shadow_col {
        return Ok(Vec::new());
    }
    let mut cols = vec![
        "window_start",
        "campaign_id",
        "ad_id",
        "metric",
        "kafka_partition",
        "revision",
        "value",
        "numerator",
        "denominator",
        "is_final",
        "withheld",
        "plugin_sha256",
    ];
    for (present, c) in [
        (shadow_col, SHADOW_COLUMN),
        (restatement_col, RESTATEMENT_COLUMN),
        (stream_col, STREAM_COLUMN),
        (dims_col, crate::sink::schema::DIMENSIONS_COLUMN),
    ] {
        if present {
            cols.push(c);
        }
    }
    let mut filter = Reference::new("plugin_sha256").equal_to(Datum::string(sha256));
    if let Some(ms) = since_ms {
        filter = filter.and(since_filter(ms));
    }
    let mut stream = t
        .scan()
        .select(cols)
        .with_filter(filter)
        .build()?
        .to_arrow()
        .await?;
    let mut out = Vec::new();
    while let Some(b) = stream.try_next().await? {
        push_rows(&b, sha256, side, since_ms, &mut out);
    }
    Ok(out)
}

fn push_rows(b: &RecordBatch, sha256: &str, side: Side, since_ms: Option<i64>, out: &mut Vec<Row>) {
    let col = |name: &str| b.column_by_name(name).cloned();
    let get = |name: &str| col(name).expect("selected column");
    let (ws, campaign, ad, metric, part, rev, value, num, den, fin, withheld, sha) = (
        get("window_start"),
        get("campaign_id"),
        get("ad_id"),
        get("metric"),
        get("kafka_partition"),
        get("revision"),
        get("value"),
        get("numerator"),
        get("denominator"),
        get("is_final"),
        get("withheld"),
        get("plugin_sha256"),
    );
    let ws = ws.as_primitive::<TimestampMicrosecondType>();
    let (campaign, ad, metric, sha) = (
        campaign.as_string::<i32>(),
        ad.as_string::<i32>(),
        metric.as_string::<i32>(),
        sha.as_string::<i32>(),
    );
    let part = part.as_primitive::<Int32Type>();
    let rev = rev.as_primitive::<Int64Type>();
    let (value, num, den) = (
        value.as_primitive::<Float64Type>(),
        num.as_primitive::<Float64Type>(),
        den.as_primitive::<Float64Type>(),
    );
    let (fin, withheld) = (fin.as_boolean(), withheld.as_boolean());
    let shadow = col(SHADOW_COLUMN);
    let shadow = shadow.as_ref().map(|c| c.as_boolean());
    let restatement = col(RESTATEMENT_COLUMN);
    let stream = col(STREAM_COLUMN);
    let stream = stream.as_ref().map(|c| c.as_string::<i32>());
    let dims = col(crate::sink::schema::DIMENSIONS_COLUMN);
    let dims = dims.as_ref().map(|c| c.as_string::<i32>());
    for i in 0..b.num_rows() {
        // Not relying on row filtering.
        let window_start_ms = ws.value(i).div_euclid(1000);
        if sha.value(i) != sha256 || since_ms.is_some_and(|s| window_start_ms < s) {
            continue;
        }
        let is_shadow = shadow.is_some_and(|c| c.is_valid(i) && c.value(i));
        let restated = restatement.as_ref().is_some_and(|c| c.is_valid(i));
        let wanted = match side {
            Side::Shadow => is_shadow,
            Side::Live => !is_shadow && !restated,
        };
        if !wanted || metric.value(i) == crate::restate::RECORD_METRIC {
            continue;
        }
        out.push(Row {
            window_start_ms,
            campaign_id: campaign.value(i).to_string(),
            ad_id: ad.is_valid(i).then(|| ad.value(i).to_string()),
            dimensions: dims
                .filter(|d| d.is_valid(i))
                .map(|d| d.value(i).to_string()),
            metric: metric.value(i).to_string(),
            stream: stream
                .filter(|s| s.is_valid(i))
                .map(|s| s.value(i).to_string()),
            partition: part.value(i),
            revision: rev.value(i),
            value: value.value(i),
            numerator: num.value(i),
            denominator: den.value(i),
            is_final: fin.value(i),
            withheld: withheld.value(i),
        });
    }
}

/// Runs the whole diff: resolves the two versions, reads their rows, compares them and decides.
pub async fn diff(cfg: &Config, req: &Request) -> Result<Report, DiffError> {
    let t = metrics_table(cfg).await?;
    let (live_versions, shadow_versions) = versions(&t, req.since_ms).await?;
    let since = req
        .since_ms
        .map_or(String::new(), |ms| format!(" since {}", time(ms)));
    let with_since = |e: DiffError| match e {
        DiffError::Unknown {
            side,
            spec,
            available,
            ..
        } => DiffError::Unknown {
            side,
            spec,
            since: since.clone(),
            available,
        },
        e => e,
    };
    let live = resolve(&req.live, Side::Live, &live_versions).map_err(with_since)?;
    let shadow = resolve(&req.shadow, Side::Shadow, &shadow_versions).map_err(with_since)?;
    if live.plugin != shadow.plugin {
        return Err(DiffError::DifferentPlugins {
            live: live.to_string(),
            shadow: shadow.to_string(),
        });
    }
    let live_rows = rows(&t, &live.sha256, Side::Live, req.since_ms).await?;
    let shadow_rows = rows(&t, &shadow.sha256, Side::Shadow, req.since_ms).await?;
    let comparison = compare(live_rows, shadow_rows, &req.options);
    if comparison.windows_compared == 0 {
        return Err(DiffError::NothingCompared {
            since,
            not_compared: comparison.not_compared,
        });
    }
    let verdict = verdict(&comparison, &req.thresholds);
    let differing_window_starts = comparison
        .differing
        .iter()
        .map(|s| s.window_start_ms)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(time)
        .collect();
    Ok(Report {
        live,
        shadow,
        since_ms: req.since_ms,
        tolerance: req.options.tolerance,
        thresholds: req.thresholds,
        comparison,
        differing_window_starts,
        pass: verdict.is_ok(),
        reason: verdict.err().unwrap_or_default(),
    })
}

/// The report for people.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let c = &r.comparison;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "plugin {}: live {} ({} rows) vs shadow {} ({} rows){}",
        r.live.plugin,
        r.live,
        r.live.rows,
        r.shadow,
        r.shadow.rows,
        r.since_ms
            .map_or(String::new(), |ms| format!(", windows since {}", time(ms)))
    );
    let _ = writeln!(
        o,
        "windows (a window of one stream partition): {} compared, {} differ; not compared: {} live only, {} shadow only, {} still open on a side",
        c.windows_compared,
        c.differing.len(),
        c.not_compared.live_only,
        c.not_compared.shadow_only,
        c.not_compared.not_final
    );
    for (metric, m) in &c.metrics {
        let _ = writeln!(
            o,
            "metric {metric}: {} windows compared, {} differ; keys: {} on both sides ({} differ), {} live only, {} shadow only",
            m.windows_compared,
            m.windows_differing,
            m.keys_compared,
            m.keys_differing,
            m.keys_live_only,
            m.keys_shadow_only
        );
        for (what, l) in [
            ("value", &m.largest_value),
            ("numerator", &m.largest_numerator),
            ("denominator", &m.largest_denominator),
        ] {
            if let Some((d, at)) = &l.abs {
                let _ = writeln!(o, "  largest {what} difference: {d} at {at}");
            }
            if let Some((d, at)) = &l.rel {
                let _ = writeln!(o, "  largest relative {what} difference: {d:.6} at {at}");
            }
        }
        for e in &m.examples {
            let _ = writeln!(o, "  differs: {e}");
        }
    }
    if !c.differing.is_empty() {
        let _ = writeln!(o, "differing windows:");
        for s in &c.differing {
            let _ = writeln!(o, "  {s}");
        }
    }
    let _ = writeln!(
        o,
        "{}",
        if r.pass {
            "PASS: within the thresholds".to_string()
        } else {
            format!("FAIL: {}", r.reason)
        }
    );
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: i64 = 1_700_000_040_000;

    fn row(w: i64, part: i32, campaign: &str, rev: i64, num: f64, den: f64, fin: bool) -> Row {
        Row {
            window_start_ms: W + w * 60_000,
            campaign_id: campaign.into(),
            ad_id: None,
            dimensions: None,
            metric: "ctr".into(),
            stream: Some("t".into()),
            partition: part,
            revision: rev,
            value: if den == 0.0 { 0.0 } else { num / den },
            numerator: num,
            denominator: den,
            is_final: fin,
            withheld: false,
        }
    }

    fn opts() -> Options {
        Options::default()
    }

    #[test]
    fn equal_rows_compare_equal_at_the_latest_revision() {
        // Earlier revisions differ, the latest ones agree: no difference.
        let live = vec![
            row(0, 0, "c", 1, 1.0, 10.0, false),
            row(0, 0, "c", 2, 3.0, 20.0, true),
        ];
        let shadow = vec![
            row(0, 0, "c", 2, 3.0, 20.0, true),
            row(0, 0, "c", 1, 9.0, 10.0, false),
        ];
        let c = compare(live, shadow, &opts());
        assert_eq!(c.windows_compared, 1);
        assert!(c.differing.is_empty(), "{c:?}");
        let m = &c.metrics["ctr"];
        assert_eq!(
            (m.windows_compared, m.windows_differing, m.keys_compared),
            (1, 0, 1)
        );
        assert_eq!(m.largest_value, Largest::default());
    }

    #[test]
    fn revisions_order_rows_within_one_partition_only() {
        // Partition 1's revisions are far above partition 0's: each partition's own latest
        // row counts, so both shares agree.
        let live = vec![
            row(0, 0, "c", 5, 2.0, 10.0, true),
            row(0, 1, "c", 1 << 33, 1.0, 4.0, true),
        ];
        let shadow = live.clone();
        let c = compare(live, shadow, &opts());
        assert_eq!((c.windows_compared, c.differing.len()), (2, 0));
    }

    #[test]
    fn a_differing_share_is_reported_with_its_largest_differences() {
        let live = vec![
            row(0, 0, "a", 1, 2.0, 10.0, true),
            row(0, 0, "b", 1, 1.0, 10.0, true),
            row(1, 0, "a", 2, 5.0, 50.0, true),
        ];
        let shadow = vec![
            row(0, 0, "a", 1, 2.0, 10.0, true),
            row(0, 0, "b", 1, 3.0, 10.0, true),
            row(1, 0, "a", 2, 6.0, 50.0, true),
        ];
        let c = compare(live, shadow, &opts());
        assert_eq!(c.windows_compared, 2);
        assert_eq!(
            c.differing
                .iter()
                .map(|s| s.window_start_ms)
                .collect::<Vec<_>>(),
            vec![W, W + 60_000]
        );
        let m = &c.metrics["ctr"];
        assert_eq!((m.windows_compared, m.windows_differing), (2, 2));
        assert_eq!((m.keys_compared, m.keys_differing), (3, 2));
        let (abs, at) = m.largest_numerator.abs.clone().unwrap();
        assert_eq!(
            (abs, at.campaign_id.as_str(), at.window_start_ms),
            (2.0, "b", W)
        );
        let (rel, at) = m.largest_value.rel.clone().unwrap();
        assert!((rel - 2.0 / 3.0).abs() < 1e-12, "{rel}");
        assert_eq!(at.campaign_id, "b");
        assert!(m.largest_denominator.abs.is_none(), "denominators agree");
        assert_eq!(m.examples.len(), 2);
        assert_eq!(m.examples[0].live.unwrap().numerator, 1.0);
        assert_eq!(m.examples[0].shadow.unwrap().numerator, 3.0);
    }

    #[test]
    fn shares_only_one_side_has_or_still_open_are_not_compared() {
        let live = vec![
            row(0, 0, "a", 1, 2.0, 10.0, true), // before the shadow loaded
            row(1, 0, "a", 1, 2.0, 10.0, true),
            row(2, 0, "a", 1, 2.0, 10.0, false), // open on the live side
            row(3, 0, "a", 1, 2.0, 10.0, true),
        ];
        let shadow = vec![
            row(1, 0, "a", 1, 2.0, 10.0, true),
            row(2, 0, "a", 1, 2.0, 10.0, true),
            row(3, 0, "a", 1, 7.0, 10.0, false), // open on the shadow side: differs, not counted
            row(4, 0, "a", 1, 2.0, 10.0, true),  // the live version's row not there
        ];
        let c = compare(live, shadow, &opts());
        assert_eq!(c.windows_compared, 1);
        assert!(c.differing.is_empty());
        assert_eq!(
            c.not_compared,
            NotCompared {
                live_only: 1,
                shadow_only: 1,
                not_final: 2
            }
        );
        // A share is final only when every key of it is.
        let live = vec![
            row(0, 0, "a", 2, 1.0, 1.0, true),
            row(0, 0, "b", 1, 1.0, 1.0, false),
        ];
        let c = compare(live.clone(), live, &opts());
        assert_eq!((c.windows_compared, c.not_compared.not_final), (0, 1));
    }

    #[test]
    fn a_key_on_one_side_only_within_a_compared_share_is_a_difference() {
        let live = vec![
            row(0, 0, "a", 1, 2.0, 10.0, true),
            row(0, 0, "b", 1, 1.0, 5.0, true),
        ];
        let shadow = vec![
            row(0, 0, "a", 1, 2.0, 10.0, true),
            row(0, 0, "c", 1, 1.0, 2.0, true),
        ];
        let c = compare(live, shadow, &opts());
        assert_eq!((c.windows_compared, c.differing.len()), (1, 1));
        let m = &c.metrics["ctr"];
        assert_eq!(
            (m.keys_live_only, m.keys_shadow_only, m.keys_differing),
            (1, 1, 0)
        );
        assert_eq!(m.windows_differing, 1);
        // Absent counts as 0 in the largest differences.
        assert_eq!(m.largest_denominator.abs.as_ref().unwrap().0, 5.0);
        assert_eq!(m.largest_value.rel.as_ref().unwrap().0, 1.0);
    }

    #[test]
    fn withheld_on_one_side_is_a_difference_and_not_a_value() {
        let live = vec![row(0, 0, "a", 1, 2.0, 10.0, true)];
        let mut s = row(0, 0, "a", 1, 0.0, 0.0, true);
        s.withheld = true;
        let c = compare(live.clone(), vec![s.clone()], &opts());
        let m = &c.metrics["ctr"];
        assert_eq!((c.differing.len(), m.keys_differing), (1, 1));
        assert_eq!(m.largest_value, Largest::default(), "withheld has no value");
        // Both withheld: nothing to tell apart.
        let mut l = live[0].clone();
        l.withheld = true;
        let c = compare(vec![l], vec![s], &opts());
        assert!(c.differing.is_empty());
    }

    #[test]
    fn numerators_are_compared_with_a_relative_tolerance() {
        let live = vec![row(0, 0, "a", 1, 0.1 + 0.2, 10.0, true)];
        let shadow = vec![row(0, 0, "a", 1, 0.3, 10.0, true)];
        let c = compare(live.clone(), shadow.clone(), &opts());
        assert!(c.differing.is_empty(), "last-bit noise is within 1e-9");
        let strict = Options {
            tolerance: 0.0,
            ..opts()
        };
        assert_eq!(compare(live, shadow, &strict).differing.len(), 1);
        let live = vec![row(0, 0, "a", 1, 100.0, 10.0, true)];
        let shadow = vec![row(0, 0, "a", 1, 101.0, 10.0, true)];
        let loose = Options {
            tolerance: 0.02,
            ..opts()
        };
        assert!(
            compare(live.clone(), shadow.clone(), &loose)
                .differing
                .is_empty()
        );
        assert_eq!(compare(live, shadow, &opts()).differing.len(), 1);
    }

    #[test]
    fn metrics_are_reported_apart_and_a_share_differs_once() {
        let mut l2 = row(0, 0, "a", 1, 5.0, 0.0, true);
        l2.metric = "revenue".into();
        let mut s2 = l2.clone();
        s2.numerator = 6.0;
        let live = vec![row(0, 0, "a", 1, 1.0, 2.0, true), l2];
        let shadow = vec![row(0, 0, "a", 1, 2.0, 2.0, true), s2];
        let c = compare(live, shadow, &opts());
        assert_eq!((c.windows_compared, c.differing.len()), (1, 1));
        assert_eq!(c.metrics["ctr"].windows_differing, 1);
        assert_eq!(c.metrics["revenue"].windows_differing, 1);
    }

    #[test]
    fn streams_are_shares_of_their_own() {
        let a = row(0, 0, "a", 1, 1.0, 2.0, true);
        let mut b = a.clone();
        b.stream = Some("other".into());
        let c = compare(vec![a.clone(), b], vec![a], &opts());
        assert_eq!((c.windows_compared, c.not_compared.live_only), (1, 1));
    }

    fn comparison(compared: usize, differing: usize) -> Comparison {
        Comparison {
            windows_compared: compared,
            differing: (0..differing)
                .map(|i| Share {
                    window_start_ms: i as i64,
                    stream: None,
                    partition: 0,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_verdict_follows_the_thresholds() {
        let none = Thresholds::default();
        assert!(verdict(&comparison(10, 0), &none).is_ok());
        assert!(
            verdict(&comparison(10, 1), &none).is_err(),
            "default: none may differ"
        );
        let two = Thresholds {
            max_differing_windows: Some(2),
            ..none
        };
        assert!(verdict(&comparison(10, 2), &two).is_ok());
        assert!(verdict(&comparison(10, 3), &two).is_err());
        let fifth = Thresholds {
            max_differing_fraction: Some(0.2),
            ..none
        };
        assert!(
            verdict(&comparison(10, 2), &fifth).is_ok(),
            "only the fraction applies"
        );
        assert!(verdict(&comparison(10, 3), &fifth).is_err());
        let both = Thresholds {
            max_differing_windows: Some(1),
            max_differing_fraction: Some(0.5),
        };
        let e = verdict(&comparison(10, 2), &both).unwrap_err();
        assert!(e.contains("--max-differing-windows 1"), "{e}");
    }

    #[test]
    fn versions_are_named_by_file_sha256_prefix_or_name_at_version() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.wasm");
        std::fs::write(&f, b"abc").unwrap();
        assert_eq!(
            VersionSpec::parse(f.to_str().unwrap()).unwrap(),
            VersionSpec::Sha256(
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into()
            )
        );
        assert!(matches!(
            VersionSpec::parse("/nowhere/x.wasm"),
            Err(DiffError::Read { .. })
        ));
        assert_eq!(
            VersionSpec::parse("ctr@0.3.0").unwrap(),
            VersionSpec::NameVersion {
                name: "ctr".into(),
                version: "0.3.0".into()
            }
        );
        assert_eq!(
            VersionSpec::parse("BA78").unwrap(),
            VersionSpec::Sha256("ba78".into())
        );
        for bad in ["ba7", "ctr", "@1", "ctr@", "xyz123"] {
            assert!(
                matches!(VersionSpec::parse(bad), Err(DiffError::BadVersion(_))),
                "{bad}"
            );
        }
        let v = |plugin: &str, version: &str, sha: &str| Version {
            plugin: plugin.into(),
            version: version.into(),
            sha256: sha.into(),
            rows: 1,
        };
        let vs = vec![
            v("ctr", "0.1.0", "aa11"),
            v("ctr", "0.2.0", "aa22"),
            v("cvr", "0.1.0", "bb"),
        ];
        let got = resolve(&VersionSpec::parse("aa22").unwrap(), Side::Live, &vs).unwrap();
        assert_eq!(got.version, "0.2.0");
        let got = resolve(&VersionSpec::parse("cvr@0.1.0").unwrap(), Side::Live, &vs).unwrap();
        assert_eq!(got.sha256, "bb");
        assert!(matches!(
            resolve(&VersionSpec::Sha256("aa".into()), Side::Live, &vs),
            Err(DiffError::Ambiguous { .. })
        ));
        let e = resolve(&VersionSpec::parse("ctr@9.9.9").unwrap(), Side::Shadow, &vs).unwrap_err();
        assert!(matches!(e, DiffError::Unknown { .. }));
        assert!(
            e.to_string().contains("ctr@0.2.0"),
            "lists what there is: {e}"
        );
    }

    #[test]
    fn since_takes_rfc3339_or_epoch_ms() {
        assert_eq!(parse_since("1700000040000").unwrap(), 1_700_000_040_000);
        assert_eq!(
            parse_since("2023-11-14T22:14:00Z").unwrap(),
            1_700_000_040_000
        );
        assert!(parse_since("yesterday").is_err());
    }
}
