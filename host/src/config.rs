//! Daemon configuration: one TOML file, every key optional with a documented default, unknown keys
//! refused (a typo must not silently fall back to a default), plus `ADMETRICS__SECTION__KEY`
//! environment overrides applied on top of the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use admetrics_event::ValidationConfig;

/// Errors loading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid environment override {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid config value {key}: {reason}")]
    Invalid { key: &'static str, reason: String },
    /// Like `Invalid`, for keys named by the user (`plugins.config.NAME.KEY`).
    #[error("invalid config value {key}: {reason}")]
    InvalidAt { key: String, reason: String },
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub source: SourceConfig,
    pub kafka: KafkaConfig,
    pub window: WindowConfig,
    pub attribution: AttributionConfig,
    pub validation: ValidationConfig,
    pub plugins: PluginsConfig,
    pub iceberg: IcebergConfig,
    pub commit: CommitConfig,
    pub dedup: DedupConfig,
    pub http: HttpConfig,
    pub campaigns: CampaignsConfig,
    /// `[currency]`: the reporting currency and the rates conversions are converted at (see
    /// `crate::currency`; validated as it is read).
    pub currency: crate::currency::CurrencyConfig,
    /// The file this configuration was loaded from (watched for live changes).
    #[serde(skip)]
    pub source_path: Option<PathBuf>,
}

/// Where events come from.
#[derive(Debug, Clone, Copy, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// The `[kafka]` topic (a long-running daemon).
    #[default]
    Kafka,
    /// JSON lines from `[source] path` (`-` = stdin): reads to the end, closes every window,
    /// commits and exits. For backfills, offline demos and the benchmark against Flink.
    File,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// For `kind = "file"`: the JSON-lines file (relative to this config file) or `-`.
    pub path: Option<PathBuf>,
    /// The name the tables record this input under: the `topic` of snapshot summaries, the
    /// `stream` column of `campaign_events` and `campaign_metrics`, `kafka_topic` of dead
    /// letters. Positions, duplicates and metric shares are kept per stream, so several streams
    /// can share the tables (their metrics add up). Default: the Kafka topic, or
    /// `file:<file name>@<digest of its first line>` for a file (see
    /// [`FileSource::default_stream`](crate::source::FileSource::default_stream)), `stdin` for
    /// standard input. Two inputs must not share a name: a position means nothing in another.
    pub stream: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    /// Static membership (`group.instance.id`): a member restarted with the same id gets its
    /// partitions back at once instead of the group waiting out its old session. Unique per
    /// daemon of the group (e.g. the host name).
    pub group_instance_id: Option<String>,
    /// `partition.assignment.strategy`: `cooperative-sticky` (default: a rebalance stops only the
    /// partitions that move), or `range` / `roundrobin` (every rebalance revokes everything).
    pub assignment_strategy: String,
    /// Extra librdkafka consumer properties, passed through verbatim.
    pub consumer: std::collections::BTreeMap<String, String>,
    /// Maximum messages handed to the pipeline per poll batch.
    pub batch_size: usize,
    /// Consume at most this many messages per second (0 = unlimited), e.g. to keep a backfill
    /// from starving live traffic.
    pub max_events_per_sec: u64,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "campaign-events".into(),
            group_id: "admetrics".into(),
            group_instance_id: None,
            assignment_strategy: "cooperative-sticky".into(),
            consumer: Default::default(),
            batch_size: 4096,
            max_events_per_sec: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Tumbling window size in seconds.
    pub size_secs: u64,
    /// Watermark = max event time seen (per partition) minus this.
    pub out_of_orderness_ms: u64,
    /// A window stays open for updates this long after the watermark passes its end.
    pub allowed_lateness_ms: u64,
    /// A partition with no events for this long (wall clock) follows the other partitions'
    /// watermark, so its windows still close when its traffic stops.
    pub idle_timeout_ms: u64,
    /// How far past the host clock an event may move its partition's watermark: one event
    /// stamped in the future (validation accepts up to `validation.max_future_ms`) must not
    /// close windows early and make on-time events late. 0: no bound.
    pub max_clock_skew_ms: u64,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            size_secs: 60,
            out_of_orderness_ms: 5_000,
            allowed_lateness_ms: 0,
            idle_timeout_ms: 10_000,
            max_clock_skew_ms: 1_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttributionConfig {
    /// Clicks older than this (event time, relative to the conversion) are not credited.
    pub lookback_secs: u64,
    /// At most this many recent clicks are remembered per user (and as many views, when a
    /// view-through plugin is loaded).
    pub max_touchpoints: usize,
    /// Views (impressions) older than this, relative to the conversion, are not credited by
    /// view-through plugins (those that set `wants-views`). Views are remembered only while
    /// such a plugin is loaded.
    pub view_lookback_secs: u64,
    /// A restart with a longer lookback than the tables' replay point covers is refused unless
    /// this is set (then conversions just after the restart may miss older clicks).
    pub accept_partial_lookback: bool,
}

impl Default for AttributionConfig {
    fn default() -> Self {
        AttributionConfig {
            lookback_secs: 7 * 24 * 3600,
            max_touchpoints: 8,
            view_lookback_secs: 24 * 3600,
            accept_partial_lookback: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Plugin components to load, in order. Relative paths are resolved against the config file.
    pub paths: Vec<PathBuf>,
    /// Memory cap per plugin instance, bytes.
    pub max_memory_bytes: usize,
    /// CPU deadline per call, milliseconds (epoch interruption: the engine's epoch advances every
    /// 5 ms, a fixed tick in `plugin.rs`, so a call is stopped within ~5 ms past its deadline).
    pub call_deadline_ms: u64,
    /// WebAssembly stack limit, bytes.
    pub max_wasm_stack_bytes: usize,
    /// A directory whose `*.wasm` files are loaded too (sorted by file name) and watched: drop a
    /// plugin in, replace or remove it, and the running daemon follows.
    pub dir: Option<PathBuf>,
    /// How often the config file and plugin files are checked for changes.
    pub watch_interval_ms: u64,
    /// A plugin version that fails this many calls within `quarantine_window_secs` is
    /// quarantined (and rolled back to the version it replaced, if that one is healthy).
    pub quarantine_after: u32,
    pub quarantine_window_secs: u64,
    /// Where compiled plugins are kept between starts (`<sha256>-<engine>.cwasm`), so a restart
    /// loads them instead of compiling them again (cranelift: ~0.3 CPU-s for the three shipped
    /// plugins, a quarter of a 200K-event file run). Unset: compile at every start. The files are
    /// native code run as trusted: the directory must be writable by the daemon's user only.
    pub compile_cache_dir: Option<PathBuf>,
    /// Candidate builds to run as **shadows**: each beside the live plugin of its name, on the
    /// same batches, its rows written with `shadow = true` (never shown as current; compare
    /// with `admetrics plugin diff`). Its failures never count against the live version.
    /// Promote one by installing its build as the live plugin (its open windows carry over).
    pub shadow_paths: Vec<PathBuf>,
    /// A directory whose `*.wasm` files are loaded as shadows too, and watched like `dir`.
    pub shadow_dir: Option<PathBuf>,
    /// Per dimension column, distinct values a plugin sees per window of a partition; later
    /// values fold into `other` (counted in `admetrics_dimension_values_folded_total`), so a
    /// buggy or hostile field cannot explode plugin state or `campaign_metrics`. Per plugin:
    /// `max_dimension_values` in its `[plugins.config.NAME]` table.
    pub max_dimension_values: usize,
    /// `[plugins.config.NAME]`: parameters handed to the plugin named NAME at load (its `init`),
    /// recorded in the lineage of its rows. `max_dimension_values` there is the host's and is not
    /// passed on.
    pub config: std::collections::BTreeMap<String, toml::Table>,
}

impl PluginsConfig {
    /// What the plugin named `name` is configured with.
    pub fn settings(&self, name: &str) -> crate::plugin::PluginSettings {
        let mut out = crate::plugin::PluginSettings {
            params: Vec::new(),
            max_dimension_values: self.max_dimension_values,
        };
        let Some(table) = self.config.get(name) else {
            return out;
        };
        for (k, v) in table {
            if k == "max_dimension_values" {
                if let Some(n) = v.as_integer() {
                    out.max_dimension_values = n.max(1) as usize;
                }
                continue;
            }
            out.params.push((k.clone(), param_text(v)));
        }
        out.params.sort();
        out
    }

    fn validate_params(&self) -> Result<(), ConfigError> {
        for (name, table) in &self.config {
            for (k, v) in table {
                let key = format!("plugins.config.{name}.{k}");
                let bad = |reason: &str| {
                    Err(ConfigError::InvalidAt {
                        key: key.clone(),
                        reason: reason.into(),
                    })
                };
                if k == "max_dimension_values" {
                    if v.as_integer().is_none_or(|n| n < 1) {
                        return bad("must be an integer, at least 1");
                    }
                    continue;
                }
                let scalar = |v: &toml::Value| {
                    matches!(
                        v,
                        toml::Value::String(_)
                            | toml::Value::Integer(_)
                            | toml::Value::Float(_)
                            | toml::Value::Boolean(_)
                    )
                };
                let ok = match v {
                    toml::Value::Array(a) => a
                        .iter()
                        .all(|x| scalar(x) && param_text(x).find(',').is_none()),
                    v => scalar(v),
                };
                if !ok {
                    return bad(
                        "a plugin parameter is a string, number, boolean or array of them (array \
                         items without commas)",
                    );
                }
            }
        }
        Ok(())
    }
}

/// A parameter's text form: strings unquoted, arrays comma-joined.
fn param_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(a) => a.iter().map(param_text).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            paths: vec![],
            max_memory_bytes: 64 << 20,
            call_deadline_ms: 1_000,
            max_wasm_stack_bytes: 512 << 10,
            dir: None,
            watch_interval_ms: 500,
            quarantine_after: 3,
            quarantine_window_secs: 60,
            compile_cache_dir: None,
            shadow_paths: vec![],
            shadow_dir: None,
            max_dimension_values: 100,
            config: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IcebergConfig {
    /// Which catalog, by scheme: `sqlite:PATH` is the embedded SQL catalog (relative paths resolve
    /// against the config file); `http://…` or `https://…` is an Iceberg REST catalog.
    pub catalog_uri: String,
    pub catalog_name: String,
    /// Where table files go: a local directory, or an object-store URL such as
    /// `s3://bucket/prefix` (any S3-protocol server: set `s3.endpoint` in `properties`). For a
    /// REST catalog this is the catalog's `warehouse` property, which some servers (Lakekeeper,
    /// Polaris) take as a warehouse *name* rather than a location.
    pub warehouse: PathBuf,
    pub namespace: String,
    /// Passed verbatim to the catalog and to its file IO: `s3.endpoint`, `s3.region`,
    /// `s3.path-style-access`, `s3.access-key-id`, `token`, `header.X`, … Credentials may
    /// instead come from the standard `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` variables, or
    /// as a whole from `ADMETRICS__ICEBERG__PROPERTIES='{ "s3.endpoint" = "…" }'`.
    pub properties: std::collections::BTreeMap<String, String>,
}

impl IcebergConfig {
    /// Whether `catalog_uri` names an Iceberg REST catalog (else the embedded SQL catalog).
    pub fn is_rest(&self) -> bool {
        self.catalog_uri.starts_with("http://") || self.catalog_uri.starts_with("https://")
    }

    /// Whether `warehouse` is an object-store (or other) URL rather than a local directory.
    pub fn warehouse_is_url(&self) -> bool {
        self.warehouse.to_str().is_some_and(|w| w.contains("://"))
    }
}

impl Default for IcebergConfig {
    fn default() -> Self {
        IcebergConfig {
            catalog_uri: "sqlite:.state/catalog.db".into(),
            catalog_name: "admetrics".into(),
            warehouse: ".state/warehouse".into(),
            namespace: "ads".into(),
            properties: Default::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommitConfig {
    /// How often open windows are published and events committed, milliseconds.
    pub interval_ms: u64,
    /// Parquet target file size; a commit's events roll over to a new file past it.
    pub target_file_bytes: usize,
    /// Commit early once this many events and dead letters are buffered (bounds memory and
    /// commit size while catching up on a backlog).
    pub max_rows: usize,
    /// On SIGTERM/SIGINT the daemon stops consuming, commits what it holds and stores the
    /// offsets; if that takes longer than this it exits with an error instead (nothing is lost:
    /// a restart resumes from the last Iceberg commit).
    pub shutdown_timeout_ms: u64,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            interval_ms: 1_000,
            target_file_bytes: 128 << 20,
            max_rows: 250_000,
            shutdown_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupConfig {
    /// Deliveries of an `event_id` already seen within this much event time count once in the
    /// metrics (0 = off). About 40 B per remembered id (see `dedup`).
    pub horizon_secs: u64,
    /// Cap on remembered ids; when full, the oldest are forgotten first (logged).
    pub max_ids: usize,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            horizon_secs: 24 * 3600,
            max_ids: 20_000_000,
        }
    }
}

/// Campaign facts the host needs: the time zone whose calendar days a `day` plugin's windows
/// follow (an advertiser reads "yesterday" in its own zone).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CampaignsConfig {
    /// IANA time zone of campaigns not listed in `time_zones`.
    pub default_time_zone: String,
    /// Campaign id → IANA time zone, e.g. `"spring-sale" = "Europe/Berlin"`.
    pub time_zones: std::collections::BTreeMap<String, String>,
}

impl Default for CampaignsConfig {
    fn default() -> Self {
        CampaignsConfig {
            default_time_zone: "UTC".into(),
            time_zones: Default::default(),
        }
    }
}

/// The operator endpoints (`observe`): `/metrics`, `/health`, `/ready`.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to serve them on, e.g. `"127.0.0.1:9464"` (port 0 = any free port; the bound
    /// address is logged). Unset: no HTTP server.
    pub listen: Option<String>,
}

impl Config {
    /// Loads `path`, applies environment overrides, resolves relative paths against the file's
    /// directory and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let mut cfg = Self::from_toml(&text, &path.display().to_string(), &base, std::env::vars())?;
        cfg.source_path = Some(path.to_path_buf());
        Ok(cfg)
    }

    /// Parses TOML text; `env` supplies `ADMETRICS__SECTION__KEY=value` overrides.
    pub fn from_toml(
        text: &str,
        origin: &str,
        base: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.into(),
            message: e.to_string(),
        })?;
        for (var, value) in env {
            let Some(rest) = var.strip_prefix("ADMETRICS__") else {
                continue;
            };
            let parts: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            if parts.len() != 2 {
                return Err(ConfigError::Env {
                    var,
                    message: "expected ADMETRICS__SECTION__KEY".into(),
                });
            }
            // Parse the value as a TOML value so numbers and lists work; fall back to a string.
            let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or(toml::Value::String(value));
            let section = doc
                .entry(parts[0].clone())
                .or_insert_with(|| toml::Value::Table(Default::default()));
            match section {
                toml::Value::Table(t) => {
                    t.insert(parts[1].clone(), parsed);
                }
                _ => {
                    return Err(ConfigError::Env {
                        var,
                        message: format!("{} is not a section", parts[0]),
                    });
                }
            }
        }
        let mut cfg: Config =
            toml::Value::Table(doc)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: origin.into(),
                    message: e.to_string(),
                })?;
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        for p in self
            .plugins
            .paths
            .iter_mut()
            .chain(self.plugins.shadow_paths.iter_mut())
        {
            *p = abs(p);
        }
        if let Some(p) = &self.source.path {
            self.source.path = Some(crate::source::file::resolve(base, p));
        }
        // Empty (e.g. `ADMETRICS__PLUGINS__COMPILE_CACHE_DIR=`) turns the cache off rather
        // than naming the config file's directory.
        self.plugins.compile_cache_dir = self
            .plugins
            .compile_cache_dir
            .take()
            .filter(|d| !d.as_os_str().is_empty())
            .map(|d| abs(&d));
        if let Some(d) = &self.plugins.dir {
            self.plugins.dir = Some(abs(d));
        }
        if let Some(d) = &self.plugins.shadow_dir {
            self.plugins.shadow_dir = Some(abs(d));
        }
        if !self.iceberg.warehouse_is_url() {
            self.iceberg.warehouse = abs(&self.iceberg.warehouse);
        }
        if let Some(file) = self.iceberg.catalog_uri.strip_prefix("sqlite:") {
            let file = file.trim_start_matches("//");
            if !file.starts_with(':') && !Path::new(file).is_absolute() {
                self.iceberg.catalog_uri = format!("sqlite:{}", base.join(file).display());
            }
        }
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.into(),
            })
        };
        if self.source.kind == SourceKind::File && self.source.path.is_none() {
            return bad(
                "source.path",
                "kind = \"file\" needs a path (a JSON-lines file, or - for stdin)",
            );
        }
        if self.window.size_secs == 0 {
            return bad("window.size_secs", "must be at least 1");
        }
        if self.commit.interval_ms < 10 {
            return bad("commit.interval_ms", "must be at least 10");
        }
        if self.commit.max_rows == 0 {
            return bad("commit.max_rows", "must be at least 1");
        }
        if self.kafka.batch_size == 0 {
            return bad("kafka.batch_size", "must be at least 1");
        }
        if self.plugins.paths.is_empty() && self.plugins.dir.is_none() {
            return bad(
                "plugins.paths",
                "at least one plugin (or plugins.dir) is needed",
            );
        }
        if self.plugins.quarantine_after == 0 {
            return bad("plugins.quarantine_after", "must be at least 1");
        }
        if self.plugins.max_dimension_values == 0 {
            return bad("plugins.max_dimension_values", "must be at least 1");
        }
        self.plugins.validate_params()?;
        if jiff::tz::TimeZone::get(&self.campaigns.default_time_zone).is_err() {
            return bad(
                "campaigns.default_time_zone",
                &format!(
                    "{:?} is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")",
                    self.campaigns.default_time_zone
                ),
            );
        }
        for (c, tz) in &self.campaigns.time_zones {
            if jiff::tz::TimeZone::get(tz).is_err() {
                return Err(ConfigError::InvalidAt {
                    key: format!("campaigns.time_zones.{c}"),
                    reason: format!("{tz:?} is not an IANA time zone (e.g. \"Europe/Berlin\")"),
                });
            }
        }
        if self.attribution.max_touchpoints == 0 {
            return bad("attribution.max_touchpoints", "must be at least 1");
        }
        if !self.iceberg.catalog_uri.starts_with("sqlite:") && !self.iceberg.is_rest() {
            return bad(
                "iceberg.catalog_uri",
                "expected sqlite:PATH (embedded SQL catalog) or http(s)://HOST/ (REST catalog)",
            );
        }
        if self.iceberg.warehouse_is_url() && !self.iceberg.is_rest() {
            let w = self.iceberg.warehouse.to_string_lossy();
            if !(w.starts_with("s3://") || w.starts_with("s3a://") || w.starts_with("file://")) {
                return bad(
                    "iceberg.warehouse",
                    "expected a local directory, file://PATH or s3://BUCKET/PREFIX",
                );
            }
        }
        Ok(())
    }

    /// The name positions and dead letters are recorded under (see [`SourceConfig::stream`]).
    pub fn stream(&self) -> String {
        if let Some(s) = &self.source.stream {
            return s.clone();
        }
        match (self.source.kind, &self.source.path) {
            (SourceKind::File, Some(p)) => crate::source::FileSource::default_stream(p),
            _ => self.kafka.topic.clone(),
        }
    }

    pub fn window_size_ms(&self) -> i64 {
        self.window.size_secs as i64 * 1000
    }

    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit.interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[plugins]\npaths = [\"p/ctr.wasm\"]\n";

    #[test]
    fn plugin_parameters_are_text_sorted_and_the_host_keeps_its_own_key() {
        let text = format!(
            "{MIN}max_dimension_values = 7\n[plugins.config.ctr]\ndimensions = [\"device\", \"country\"]\n\
             max_dimension_values = 3\nz = 1.5\nflag = true\n[plugins.config.reach]\nwindow = \"day\"\n"
        );
        let c = Config::from_toml(&text, "t", Path::new("/etc/adm"), []).unwrap();
        let ctr = c.plugins.settings("ctr");
        assert_eq!(
            ctr.params,
            vec![
                ("dimensions".to_string(), "device,country".to_string()),
                ("flag".to_string(), "true".to_string()),
                ("z".to_string(), "1.5".to_string()),
            ]
        );
        assert_eq!(ctr.max_dimension_values, 3);
        let reach = c.plugins.settings("reach");
        assert_eq!(reach.params, vec![("window".into(), "day".into())]);
        assert_eq!(reach.max_dimension_values, 7);
        assert!(c.plugins.settings("cvr").params.is_empty());
        // Tables in parameters and a zero limit are refused by key.
        for bad in [
            "[plugins.config.ctr]\nx = { a = 1 }\n",
            "[plugins.config.ctr]\nmax_dimension_values = 0\n",
        ] {
            let err = Config::from_toml(&format!("{MIN}{bad}"), "t", Path::new("/"), [])
                .unwrap_err()
                .to_string();
            assert!(err.contains("plugins.config.ctr."), "{err}");
        }
    }

    #[test]
    fn campaign_time_zones_must_be_iana_zones() {
        let ok = format!("{MIN}[campaigns.time_zones]\n\"a\" = \"Europe/Berlin\"\n");
        assert!(Config::from_toml(&ok, "t", Path::new("/"), []).is_ok());
        let bad = format!("{MIN}[campaigns.time_zones]\n\"a\" = \"Mars/Olympus\"\n");
        let err = Config::from_toml(&bad, "t", Path::new("/"), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("campaigns.time_zones.a"), "{err}");
        let bad = format!("{MIN}[campaigns]\ndefault_time_zone = \"CEST\"\n");
        let err = Config::from_toml(&bad, "t", Path::new("/"), [])
            .unwrap_err()
            .to_string();
        assert!(err.contains("campaigns.default_time_zone"), "{err}");
    }

    #[test]
    fn defaults_and_relative_paths() {
        let c = Config::from_toml(MIN, "t", Path::new("/etc/adm"), []).unwrap();
        assert_eq!(c.window.size_secs, 60);
        assert_eq!(c.plugins.paths[0], Path::new("/etc/adm/p/ctr.wasm"));
        assert_eq!(c.iceberg.catalog_uri, "sqlite:/etc/adm/.state/catalog.db");
    }

    #[test]
    fn compile_cache_dir_is_relative_to_the_file_and_empty_turns_it_off() {
        let text = MIN.replace("[plugins]\n", "[plugins]\ncompile_cache_dir = \"cache\"\n");
        assert_ne!(text, MIN, "MIN has a [plugins] table");
        let c = Config::from_toml(&text, "t", Path::new("/etc/adm"), []).unwrap();
        assert_eq!(
            c.plugins.compile_cache_dir.as_deref(),
            Some(Path::new("/etc/adm/cache"))
        );
        let env = [(
            "ADMETRICS__PLUGINS__COMPILE_CACHE_DIR".to_string(),
            String::new(),
        )];
        let c = Config::from_toml(&text, "t", Path::new("/etc/adm"), env).unwrap();
        assert_eq!(c.plugins.compile_cache_dir, None);
        let c = Config::from_toml(MIN, "t", Path::new("/etc/adm"), []).unwrap();
        assert_eq!(c.plugins.compile_cache_dir, None);
    }

    #[test]
    fn unknown_key_is_refused_with_its_name() {
        let err = Config::from_toml(
            &format!("{MIN}[window]\nsize_sec = 5\n"),
            "t",
            Path::new("/"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("size_sec"), "{err}");
    }

    #[test]
    fn env_overrides_file() {
        let env = [("ADMETRICS__WINDOW__SIZE_SECS".to_string(), "10".to_string())];
        let c = Config::from_toml(MIN, "t", Path::new("/"), env).unwrap();
        assert_eq!(c.window.size_secs, 10);
        let env = [(
            "ADMETRICS__KAFKA__TOPIC".to_string(),
            "other-topic".to_string(),
        )];
        assert_eq!(
            Config::from_toml(MIN, "t", Path::new("/"), env)
                .unwrap()
                .kafka
                .topic,
            "other-topic"
        );
    }

    #[test]
    fn a_file_source_needs_a_path_and_names_its_stream() {
        let err = Config::from_toml(
            &format!("{MIN}[source]\nkind = \"file\"\n"),
            "t",
            Path::new("/"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("source.path"), "{err}");
        let c = Config::from_toml(
            &format!("{MIN}[source]\nkind = \"file\"\npath = \"in/events.jsonl\"\n"),
            "t",
            Path::new("/data"),
            [],
        )
        .unwrap();
        assert_eq!(
            c.source.path.as_deref(),
            Some(Path::new("/data/in/events.jsonl"))
        );
        assert_eq!(c.stream(), "file:events.jsonl");
        let c = Config::from_toml(MIN, "t", Path::new("/"), []).unwrap();
        assert_eq!(c.stream(), "campaign-events");
    }

    #[test]
    fn invalid_value_names_the_key() {
        let err = Config::from_toml(
            &format!("{MIN}[window]\nsize_secs = 0\n"),
            "t",
            Path::new("/"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("window.size_secs"), "{err}");
    }

    /// `[currency]`: strict, errors name the key; the environment overrides the reporting
    /// currency; the shipped default config loads (USD, no rates).
    #[test]
    fn currency_section_is_strict_and_names_the_key() {
        let text = format!(
            "{MIN}[currency]\nreporting = \"USD\"\n[[currency.rates]]\ndate = \"2026-01-01\"\nEUR = 1.08\n"
        );
        let c = Config::from_toml(&text, "t", Path::new("/"), []).unwrap();
        assert_eq!(c.currency.reporting, "USD");
        assert_eq!(c.currency.rates[0].rate_micros["EUR"], 1_080_000);
        let env = [(
            "ADMETRICS__CURRENCY__REPORTING".to_string(),
            "\"EUR\"".to_string(),
        )];
        let err = Config::from_toml(&text, "t", Path::new("/"), env)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("currency.rates[0].EUR") && err.contains("converts at 1"),
            "{err}"
        );
        for (bad, key) in [
            ("EUR = 1.08", "EUR = 1.0800001"),
            ("date = \"2026-01-01\"", "date = \"01/01/2026\""),
        ] {
            let err = Config::from_toml(&text.replace(bad, key), "t", Path::new("/"), [])
                .unwrap_err()
                .to_string();
            let name = key.split(' ').next().unwrap();
            assert!(err.contains(&format!("currency.rates[0].{name}")), "{err}");
        }
        let err = Config::from_toml(
            &format!("{MIN}[currency]\nreportin = \"USD\"\n"),
            "t",
            Path::new("/"),
            [],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("reportin"), "{err}");
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/default.toml");
        let c = Config::load(&shipped).unwrap();
        assert_eq!(c.currency, crate::currency::CurrencyConfig::default());
    }

    #[test]
    fn rest_catalog_and_object_store_warehouse() {
        let text = format!(
            "{MIN}[iceberg]\ncatalog_uri = \"http://rest:8181\"\nwarehouse = \"s3://lake/wh\"\n\
             [iceberg.properties]\n\"s3.endpoint\" = \"http://minio:9000\"\n"
        );
        let c = Config::from_toml(&text, "t", Path::new("/etc/adm"), []).unwrap();
        assert!(c.iceberg.is_rest());
        // A URL is not a path: it must not be joined to the config directory.
        assert_eq!(c.iceberg.warehouse, Path::new("s3://lake/wh"));
        assert_eq!(c.iceberg.properties["s3.endpoint"], "http://minio:9000");
        // The whole map from the environment (TOML inline table), e.g. for containers.
        let env = [(
            "ADMETRICS__ICEBERG__PROPERTIES".to_string(),
            r#"{ "s3.endpoint" = "http://other:9000", "s3.region" = "eu-west-1" }"#.to_string(),
        )];
        let c = Config::from_toml(&text, "t", Path::new("/"), env).unwrap();
        assert_eq!(c.iceberg.properties["s3.endpoint"], "http://other:9000");
        assert_eq!(c.iceberg.properties["s3.region"], "eu-west-1");

        for (key, value, reason) in [
            ("catalog_uri", "thrift://hive:9083", "REST catalog"),
            ("warehouse", "gs://bucket/wh", "s3://BUCKET"),
        ] {
            let err = Config::from_toml(
                &format!("{MIN}[iceberg]\n{key} = \"{value}\"\n"),
                "t",
                Path::new("/"),
                [],
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(&format!("iceberg.{key}")) && err.contains(reason),
                "{err}"
            );
        }
    }
}
