//! Iceberg sink stage: creates the tables, writes Parquet files and commits them as fast appends,
//! with the Kafka offsets of each commit in its snapshot summary.
//!
//! File count is bounded by construction: one commit interval yields at most one file per table
//! (per day partition for `campaign_events`, rolling at `commit.target_file_bytes`), so at the
//! default 1 s interval a table grows by ≤ 1 file/s under load and by none when idle. iceberg-rust
//! 0.10 has no rewrite/overwrite commit, so compaction is left to an external maintenance job.
//!
//! Every writer uses a file-name prefix unique to this process and commit (writer id + commit
//! sequence + UUID): iceberg-rust's `DefaultFileNameGenerator` numbers files from zero per
//! instance, and reusing a prefix silently overwrites files of committed snapshots.

pub mod schema;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use iceberg::io::StorageFactory;
use iceberg::spec::{DataFile, DataFileFormat, Literal, Struct};
use iceberg::table::Table;
use iceberg::transaction::{ApplyTransactionAction, Transaction};
use iceberg::writer::base_writer::data_file_writer::DataFileWriterBuilder;
use iceberg::writer::file_writer::ParquetWriterBuilder;
use iceberg::writer::file_writer::location_generator::{
    DefaultFileNameGenerator, DefaultLocationGenerator,
};
use iceberg::writer::file_writer::rolling_writer::RollingFileWriterBuilder;
use iceberg::writer::{IcebergWriter, IcebergWriterBuilder};
use iceberg::{Catalog, CatalogBuilder, NamespaceIdent, TableCreation, TableIdent};
use iceberg_catalog_rest::RestCatalogBuilder;
use iceberg_catalog_sql::{SqlBindStyle, SqlCatalogBuilder};
use iceberg_storage_opendal::OpenDalResolvingStorageFactory;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::config::IcebergConfig;

pub const EVENTS_TABLE: &str = "campaign_events";
pub const METRICS_TABLE: &str = "campaign_metrics";
pub const DEAD_LETTERS_TABLE: &str = "dead_letters";

/// Snapshot-summary keys written with every commit.
pub mod summary {
    pub const WRITER_ID: &str = "admetrics.writer-id";
    pub const COMMIT_SEQ: &str = "admetrics.commit-seq";
    pub const TOPIC: &str = "admetrics.topic";
    /// JSON object partition → next offset to read, for the partitions this writer owns.
    pub const OFFSETS: &str = "admetrics.offsets";
    /// JSON object partition → first offset a restart must replay to rebuild open windows and
    /// attribution state (≤ the offset above).
    pub const REPLAY_FROM: &str = "admetrics.replay-from";
    /// The watermark (ms) when the commit was made: windows it had closed stay closed.
    pub const WATERMARK: &str = "admetrics.watermark";
    /// How far back (ms of event time) the replay-from above keeps clicks for attribution.
    pub const CLICK_HORIZON: &str = "admetrics.click-horizon-ms";
}

/// Where a restarted daemon resumes, read from snapshot summaries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resume {
    /// Partition → next offset not yet in `campaign_events`.
    pub offsets: BTreeMap<i32, i64>,
    /// Partition → first offset to replay from.
    pub replay_from: BTreeMap<i32, i64>,
    pub watermark_ms: Option<i64>,
    /// Highest commit sequence seen: revisions continue above it.
    pub seq: u64,
    /// Partition → next offset not yet in `dead_letters`.
    pub dead_letter_offsets: BTreeMap<i32, i64>,
    /// The click horizon (lookback + window + lateness, ms) the recorded replay-from covers.
    pub click_horizon_ms: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    #[error("cannot prepare warehouse {path}: {source}")]
    Warehouse {
        path: String,
        source: std::io::Error,
    },
}

impl SinkError {
    /// Whether trying the same commit again may succeed (catalog conflicts, I/O hiccups).
    pub fn retryable(&self) -> bool {
        match self {
            SinkError::Iceberg(e) => e.retryable(),
            SinkError::Warehouse { .. } => false,
        }
    }
}

/// What the pipeline hands the sink once per commit interval.
#[derive(Debug, Default)]
pub struct CommitBatch {
    pub seq: u64,
    /// `campaign_events` rows, one batch per day partition (days since epoch).
    pub events: Vec<(i32, RecordBatch)>,
    pub metrics: Option<RecordBatch>,
    pub dead_letters: Option<RecordBatch>,
    /// Partition → next offset to read once this batch is committed.
    pub offsets: BTreeMap<i32, i64>,
    /// Partition → first offset a restart must replay (see `summary::REPLAY_FROM`).
    pub replay_from: BTreeMap<i32, i64>,
    pub watermark_ms: i64,
    /// Producer timestamps (ms) of the events in this batch, for produce→visible latency.
    pub produced_at_ms: Vec<i64>,
    /// Whether `metrics` holds final rows of a closing window (fault-injection tests aim there).
    pub has_final: bool,
    /// See `summary::CLICK_HORIZON`.
    pub click_horizon_ms: i64,
}

/// What a commit did.
#[derive(Debug, Clone)]
pub struct CommitReport {
    pub seq: u64,
    pub offsets: BTreeMap<i32, i64>,
    pub events: usize,
    pub metric_rows: usize,
    pub dead_letters: usize,
    pub files: usize,
    pub duration: Duration,
    /// Wall clock (ms) when the metrics snapshot became visible.
    pub visible_at_ms: i64,
    pub produced_at_ms: Vec<i64>,
    pub has_final: bool,
}

pub struct IcebergSink {
    catalog: Arc<dyn Catalog>,
    events: Table,
    metrics: Table,
    dead_letters: Table,
    writer_id: String,
    topic: String,
    target_file_bytes: usize,
    props: WriterProperties,
    /// (offsets, replay-from, watermark) of the last `campaign_events` commit: an interval that
    /// changed nothing makes no snapshot.
    last_position: Option<(BTreeMap<i32, i64>, BTreeMap<i32, i64>, i64)>,
    /// Set after a failed attempt: the next one first reloads the tables and skips every table
    /// that already holds this commit (a commit whose outcome was unknown may have landed).
    retrying: bool,
}

impl IcebergSink {
    /// Opens the catalog and creates the namespace and tables where missing.
    pub async fn open(
        cfg: &IcebergConfig,
        topic: &str,
        writer_id: &str,
        target_file_bytes: usize,
    ) -> Result<Self, SinkError> {
        let catalog = open_catalog(cfg).await?;
        let ns = NamespaceIdent::new(cfg.namespace.clone());
        if !catalog.namespace_exists(&ns).await?
            && let Err(e) = catalog.create_namespace(&ns, HashMap::new()).await
            // Another writer (or a reader's probe) created it between our check and our create.
            && !catalog.namespace_exists(&ns).await?
        {
            return Err(e.into());
        }
        let events = ensure_table(
            catalog.as_ref(),
            &ns,
            EVENTS_TABLE,
            schema::events_schema(),
            Some(schema::events_partition_spec()),
        )
        .await?;
        let metrics = ensure_table(
            catalog.as_ref(),
            &ns,
            METRICS_TABLE,
            schema::metrics_schema(),
            None,
        )
        .await?;
        let dead_letters = ensure_table(
            catalog.as_ref(),
            &ns,
            DEAD_LETTERS_TABLE,
            schema::dead_letters_schema(),
            None,
        )
        .await?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(1).expect("valid level"),
            ))
            .set_max_row_group_row_count(Some(256 * 1024))
            .build();
        Ok(IcebergSink {
            catalog,
            events,
            metrics,
            dead_letters,
            writer_id: writer_id.into(),
            topic: topic.into(),
            target_file_bytes,
            props,
            last_position: None,
            retrying: false,
        })
    }

    /// Reloads the three tables from the catalog (after a failed or ambiguous commit).
    async fn refresh(&mut self) -> Result<(), SinkError> {
        for t in [&mut self.events, &mut self.metrics, &mut self.dead_letters] {
            *t = self.catalog.load_table(t.identifier()).await?;
        }
        Ok(())
    }

    /// Whether `table` already holds commit `seq` of this writer (found in its snapshot
    /// ancestry).
    fn holds(&self, table: &Table, seq: u64) -> bool {
        let seq = seq.to_string();
        ancestry(table).any(|p| {
            p.get(summary::WRITER_ID) == Some(&self.writer_id)
                && p.get(summary::COMMIT_SEQ) == Some(&seq)
        })
    }

    pub fn catalog(&self) -> Arc<dyn Catalog> {
        self.catalog.clone()
    }

    /// The resume position from `campaign_events` snapshot summaries for our topic, walking the
    /// snapshot ancestry newest first: each partition's newest entry wins, so a commit by another
    /// writer (owning other partitions) at the head hides nothing, and an ambiguous last commit
    /// (did it land before the crash?) is settled by what the table actually holds.
    pub fn resume(&self) -> Resume {
        let mut out = Resume::default();
        for props in ancestry(&self.events) {
            if props.get(summary::TOPIC).map(String::as_str) == Some(self.topic.as_str()) {
                let map = |k: &str| {
                    props
                        .get(k)
                        .and_then(|j| serde_json::from_str::<BTreeMap<i32, i64>>(j).ok())
                        .unwrap_or_default()
                };
                for (p, o) in map(summary::OFFSETS) {
                    out.offsets.entry(p).or_insert(o);
                }
                for (p, o) in map(summary::REPLAY_FROM) {
                    out.replay_from.entry(p).or_insert(o);
                }
                if out.watermark_ms.is_none() {
                    out.watermark_ms = props.get(summary::WATERMARK).and_then(|w| w.parse().ok());
                }
                if out.click_horizon_ms.is_none() {
                    out.click_horizon_ms = props
                        .get(summary::CLICK_HORIZON)
                        .and_then(|w| w.parse().ok());
                }
                if let Some(seq) = props
                    .get(summary::COMMIT_SEQ)
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    out.seq = out.seq.max(seq);
                }
            }
        }
        for props in ancestry(&self.dead_letters) {
            if props.get(summary::TOPIC).map(String::as_str) == Some(self.topic.as_str())
                && let Some(map) = props
                    .get(summary::OFFSETS)
                    .and_then(|j| serde_json::from_str::<BTreeMap<i32, i64>>(j).ok())
            {
                for (p, o) in map {
                    out.dead_letter_offsets.entry(p).or_insert(o);
                }
            }
        }
        // The metrics table's sequence too: revisions must stay above everything published.
        let m = self.metrics.metadata();
        for snap in m.snapshots() {
            if let Some(seq) = snap
                .summary()
                .additional_properties
                .get(summary::COMMIT_SEQ)
                .and_then(|s| s.parse::<u64>().ok())
            {
                out.seq = out.seq.max(seq);
            }
        }
        out
    }

    /// Calls `f(id hash, partition, offset, event time ms, is_duplicate)` for every event
    /// committed to `campaign_events` with event time ≥ `since_ms`: the ids a restarted daemon
    /// must remember to keep counting copies once, and the verdicts its replay must repeat.
    /// Reads only those columns, and only the day partitions that can match. Returns how many
    /// rows were handed over.
    pub async fn committed_ids(
        &self,
        since_ms: i64,
        mut f: impl FnMut(u64, i32, i64, i64, bool),
    ) -> Result<u64, SinkError> {
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
        use futures::TryStreamExt;
        use iceberg::expr::Reference;
        use iceberg::spec::Datum;

        if self.events.metadata().current_snapshot().is_none() {
            return Ok(0);
        }
        let since_us = since_ms.saturating_mul(1000);
        let scan = self
            .events
            .scan()
            .select([
                "event_id",
                "event_time",
                "kafka_partition",
                "kafka_offset",
                "is_duplicate",
            ])
            .with_filter(
                Reference::new("event_time")
                    .greater_than_or_equal_to(Datum::timestamptz_micros(since_us)),
            )
            .build()?;
        let mut stream = scan.to_arrow().await?;
        let mut n = 0;
        while let Some(b) = stream.try_next().await? {
            let col = |name: &str| b.column_by_name(name).expect("selected column").clone();
            let (ids, times, parts, offs, dups) = (
                col("event_id"),
                col("event_time"),
                col("kafka_partition"),
                col("kafka_offset"),
                col("is_duplicate"),
            );
            let ids = ids.as_string::<i32>();
            let times = times.as_primitive::<TimestampMicrosecondType>();
            let parts = parts.as_primitive::<Int32Type>();
            let offs = offs.as_primitive::<Int64Type>();
            let dups = dups.as_boolean();
            for i in 0..b.num_rows() {
                if times.value(i) < since_us {
                    continue;
                }
                f(
                    crate::dedup::hash_id(ids.value(i)),
                    parts.value(i),
                    offs.value(i),
                    times.value(i) / 1000,
                    dups.value(i),
                );
                n += 1;
            }
        }
        Ok(n)
    }

    /// Writes and commits one batch: `dead_letters`, then `campaign_metrics`, then
    /// `campaign_events`, whose summary is the commit point: a crash before it makes a restart
    /// replay the whole batch (dead letters below their own floor are not written again; metric
    /// windows are rebuilt and republished under a higher revision with the same values).
    /// Committing metrics last instead would lose the final revision of windows the crash
    /// closed, since the restored watermark keeps them closed.
    ///
    /// Safe to call again with the same batch after an error: a table that already holds the
    /// commit (an ambiguous failure that in fact landed) is skipped.
    pub async fn commit(&mut self, batch: CommitBatch) -> Result<CommitReport, SinkError> {
        let r = self.commit_once(batch).await;
        self.retrying = r.is_err();
        r
    }

    async fn commit_once(&mut self, batch: CommitBatch) -> Result<CommitReport, SinkError> {
        let started = Instant::now();
        if self.retrying {
            self.refresh().await?;
        }
        let retrying = self.retrying;
        let mut props = HashMap::new();
        props.insert(summary::WRITER_ID.to_string(), self.writer_id.clone());
        props.insert(summary::COMMIT_SEQ.to_string(), batch.seq.to_string());
        props.insert(summary::TOPIC.to_string(), self.topic.clone());
        props.insert(
            summary::OFFSETS.to_string(),
            serde_json::to_string(&batch.offsets).expect("map serialises"),
        );
        props.insert(
            summary::REPLAY_FROM.to_string(),
            serde_json::to_string(&batch.replay_from).expect("map serialises"),
        );
        props.insert(
            summary::WATERMARK.to_string(),
            batch.watermark_ms.to_string(),
        );
        props.insert(
            summary::CLICK_HORIZON.to_string(),
            batch.click_horizon_ms.to_string(),
        );

        let mut files = 0;
        let events: usize = batch.events.iter().map(|(_, b)| b.num_rows()).sum();
        let dead_letters = batch.dead_letters.as_ref().map_or(0, |b| b.num_rows());
        let metric_rows = batch.metrics.as_ref().map_or(0, |b| b.num_rows());

        // Dead letters first: their summary offsets are their own floor, so a crash between this
        // commit and the events commit neither loses nor repeats a dead letter on replay.
        if let Some(rb) = &batch.dead_letters
            && !(retrying && self.holds(&self.dead_letters, batch.seq))
        {
            let data = self.write(&self.dead_letters, None, rb, batch.seq).await?;
            files += data.len();
            crate::fault::point("before-commit:dead_letters", batch.has_final);
            self.dead_letters = self.append(&self.dead_letters, data, props.clone()).await?;
            crate::fault::point("after-commit:dead_letters", batch.has_final);
        }
        if let Some(rb) = &batch.metrics
            && !(retrying && self.holds(&self.metrics, batch.seq))
        {
            let data = self.write(&self.metrics, None, rb, batch.seq).await?;
            files += data.len();
            crate::fault::point("before-commit:campaign_metrics", batch.has_final);
            self.metrics = self.append(&self.metrics, data, props.clone()).await?;
            crate::fault::point("after-commit:campaign_metrics", batch.has_final);
        }
        // The events commit also happens with no rows when the position moved (a batch of only
        // dead letters or metrics), so the newest summary always holds it; an interval that
        // changed nothing makes no snapshot.
        let position = (
            batch.offsets.clone(),
            batch.replay_from.clone(),
            batch.watermark_ms,
        );
        let moved = self.last_position.as_ref() != Some(&position);
        if (events > 0 || dead_letters > 0 || metric_rows > 0 || moved)
            && !(retrying && self.holds(&self.events, batch.seq))
        {
            let mut data = Vec::new();
            for (day, rb) in &batch.events {
                data.extend(self.write(&self.events, Some(*day), rb, batch.seq).await?);
            }
            files += data.len();
            crate::fault::point("before-commit:campaign_events", batch.has_final);
            self.events = self.append(&self.events, data, props).await?;
            crate::fault::point("after-commit:campaign_events", batch.has_final);
        }
        self.last_position = Some(position);
        Ok(CommitReport {
            seq: batch.seq,
            offsets: batch.offsets,
            events,
            metric_rows,
            dead_letters,
            files,
            duration: started.elapsed(),
            visible_at_ms: chrono::Utc::now().timestamp_millis(),
            produced_at_ms: batch.produced_at_ms,
            has_final: batch.has_final,
        })
    }

    async fn write(
        &self,
        table: &Table,
        day: Option<i32>,
        rb: &RecordBatch,
        seq: u64,
    ) -> Result<Vec<DataFile>, SinkError> {
        let meta = table.metadata();
        let schema = meta.current_schema().clone();
        let parquet = ParquetWriterBuilder::new(self.props.clone(), schema.clone());
        let names = DefaultFileNameGenerator::new(
            format!(
                "{}-{seq:010}-{}",
                self.writer_id,
                uuid::Uuid::new_v4().simple()
            ),
            None,
            DataFileFormat::Parquet,
        );
        let rolling = RollingFileWriterBuilder::new(
            parquet,
            self.target_file_bytes,
            table.file_io().clone(),
            DefaultLocationGenerator::new(meta)?,
            names,
        );
        let key = day.map(|d| {
            iceberg::spec::PartitionKey::new(
                meta.default_partition_spec().as_ref().clone(),
                schema.clone(),
                Struct::from_iter([Some(Literal::date(d))]),
            )
        });
        let mut writer = DataFileWriterBuilder::new(rolling).build(key).await?;
        writer.write(rb.clone()).await?;
        Ok(writer.close().await?)
    }

    async fn append(
        &self,
        table: &Table,
        files: Vec<DataFile>,
        props: HashMap<String, String>,
    ) -> Result<Table, SinkError> {
        let tx = Transaction::new(table);
        // Our file names are unique by construction; the duplicate check would re-read every
        // manifest on every commit, which grows without bound.
        let action = tx
            .fast_append()
            .with_check_duplicate(false)
            .add_data_files(files)
            .set_snapshot_properties(props);
        let tx = action.apply(tx)?;
        Ok(tx.commit(self.catalog.as_ref()).await?)
    }
}

/// Summary properties of `table`'s current snapshot and its ancestors, newest first (the
/// history a commit builds on, not snapshots of abandoned branches).
fn ancestry(table: &Table) -> impl Iterator<Item = HashMap<String, String>> + '_ {
    let meta = table.metadata();
    std::iter::successors(meta.current_snapshot().cloned(), move |s| {
        s.parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id).cloned())
    })
    .map(|s| s.summary().additional_properties.clone())
}

/// Opens the configured catalog: the embedded SQLite-backed SQL catalog (`sqlite:PATH`, creating
/// the database file and a local warehouse if missing) or an Iceberg REST catalog (`http(s)://`).
///
/// Storage: a local warehouse keeps iceberg's own `LocalFsStorageFactory` (what every figure in the
/// README was measured with); an object-store warehouse, and every REST catalog (whose server picks
/// table locations, and may hand out its own `s3.*` settings with a table), use OpenDAL's resolving
/// factory, which serves `file://` and `s3://` alike. `[iceberg] properties` reach both the
/// catalog and its file IO.
pub async fn open_catalog(cfg: &IcebergConfig) -> Result<Arc<dyn Catalog>, SinkError> {
    let mut props: HashMap<String, String> = cfg
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let object_store: Arc<dyn StorageFactory> = Arc::new(OpenDalResolvingStorageFactory::new());
    if cfg.is_rest() {
        props.insert("uri".into(), cfg.catalog_uri.clone());
        props.insert(
            "warehouse".into(),
            cfg.warehouse.to_string_lossy().into_owned(),
        );
        let catalog = RestCatalogBuilder::default()
            .with_storage_factory(object_store)
            .load(&cfg.catalog_name, props)
            .await?;
        return Ok(Arc::new(catalog));
    }

    let (warehouse, storage): (String, Arc<dyn StorageFactory>) = if cfg.warehouse_is_url() {
        (cfg.warehouse.to_string_lossy().into_owned(), object_store)
    } else {
        std::fs::create_dir_all(&cfg.warehouse).map_err(|source| SinkError::Warehouse {
            path: cfg.warehouse.display().to_string(),
            source,
        })?;
        let dir = std::fs::canonicalize(&cfg.warehouse).map_err(|source| SinkError::Warehouse {
            path: cfg.warehouse.display().to_string(),
            source,
        })?;
        (
            format!("file://{}", dir.display()),
            Arc::new(iceberg::io::LocalFsStorageFactory),
        )
    };
    let db = cfg
        .catalog_uri
        .trim_start_matches("sqlite:")
        .trim_start_matches("//");
    if let Some(dir) = std::path::Path::new(db).parent() {
        std::fs::create_dir_all(dir).map_err(|source| SinkError::Warehouse {
            path: dir.display().to_string(),
            source,
        })?;
    }
    sqlx::any::install_default_drivers();
    let catalog = SqlCatalogBuilder::default()
        .uri(format!("sqlite:{db}?mode=rwc"))
        .warehouse_location(warehouse)
        .sql_bind_style(SqlBindStyle::QMark)
        .with_storage_factory(storage)
        .load(&cfg.catalog_name, props)
        .await?;
    Ok(Arc::new(catalog))
}

async fn ensure_table(
    catalog: &dyn Catalog,
    ns: &NamespaceIdent,
    name: &str,
    schema: iceberg::spec::Schema,
    spec: Option<iceberg::spec::UnboundPartitionSpec>,
) -> Result<Table, SinkError> {
    let ident = TableIdent::new(ns.clone(), name.to_string());
    if catalog.table_exists(&ident).await? {
        return Ok(catalog.load_table(&ident).await?);
    }
    let creation = TableCreation::builder()
        .name(name.to_string())
        .schema(schema)
        .partition_spec_opt(spec)
        .properties([
            (
                "write.parquet.compression-codec".to_string(),
                "zstd".to_string(),
            ),
            ("commit.retry.num-retries".to_string(), "10".to_string()),
        ])
        .build();
    match catalog.create_table(ns, creation).await {
        Ok(t) => Ok(t),
        // Another writer created it between our check and our create.
        Err(_) if catalog.table_exists(&ident).await? => Ok(catalog.load_table(&ident).await?),
        Err(e) => Err(e.into()),
    }
}
