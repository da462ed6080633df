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

mod fence;
pub mod schema;
pub mod summary;

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

pub use summary::{Claimed, CommittedId, Position};

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    #[error("cannot prepare warehouse {path}: {source}")]
    Warehouse {
        path: String,
        source: std::io::Error,
    },
    /// Another member claimed these partitions with a higher epoch (see `fence`).
    #[error("partitions {0:?} were claimed by another member of the group")]
    Fenced(Vec<i32>),
    /// A table whose columns this release cannot write (and cannot evolve into its own).
    #[error(
        "table {table} has a schema this admetrics cannot write: {detail}. Use a namespace of its \
         own ([iceberg] namespace) or migrate the table"
    )]
    Schema { table: String, detail: String },
}

impl SinkError {
    /// Whether trying the same commit again may succeed: catalog conflicts, and errors that
    /// leave the commit's outcome unknown (a REST 5xx, a lost response, an I/O hiccup: kind
    /// `Unexpected`). A retry first checks whether the table already holds the commit, so an
    /// ambiguous commit that in fact landed is not appended twice.
    pub fn retryable(&self) -> bool {
        match self {
            SinkError::Iceberg(e) => e.retryable() || e.kind() == iceberg::ErrorKind::Unexpected,
            SinkError::Warehouse { .. } | SinkError::Fenced(_) | SinkError::Schema { .. } => false,
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
    /// Per partition this member owns (or gave up since the last batch): where it stands once
    /// this batch is committed, with this member's epoch for it.
    pub positions: BTreeMap<i32, Position>,
    /// Per partition, the first offset not yet in `dead_letters` as recorded when it was
    /// claimed: the dead-letter table's position never goes below it (a restart may resume
    /// the events table below a dead letter already committed).
    pub dead_letter_floors: BTreeMap<i32, i64>,
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
    /// Partitions (with the epoch this commit held them at) another member claimed meanwhile:
    /// their rows were left out of this commit.
    pub fenced: Vec<(i32, u64)>,
    /// Catalog commits lost to other writers so far (this process).
    pub conflicts: u64,
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

/// Settings every table shares: zstd at its fastest level, row groups of at most 256K rows.
fn base_props() -> parquet::file::properties::WriterPropertiesBuilder {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_max_row_group_row_count(Some(256 * 1024))
}

/// `campaign_events` holds every valid event, so its encoding is the sink's per-event cost
/// (the largest single share of the daemon's CPU in `scripts/profile.sh`). Parquet's default
/// dictionary-encodes every column: each value is hashed and compared against the page's
/// dictionary, and for unique values (event ids, offsets, timestamps) that work is thrown away
/// when the dictionary outgrows its page and the writer falls back to plain. Here only the
/// columns with few distinct values get a dictionary; zstd still compresses the rest (the files
/// came out smaller: 27 → 22 MB for 2M events). Statistics are kept per column chunk (what
/// Iceberg's bounds and DuckDB's pruning read), not per page. Measured with callgrind on 200K
/// events: Parquet encoding 3 566 → 2 776 instructions per event.
fn events_props() -> WriterProperties {
    use parquet::file::properties::EnabledStatistics;
    use parquet::schema::types::ColumnPath;
    let mut b = base_props()
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::Chunk);
    for column in [
        "event_type",
        "campaign_id",
        "ad_id",
        "currency",
        "device",
        "country",
        "placement",
        schema::STREAM_COLUMN,
        schema::REVENUE_CURRENCY_COLUMN,
    ] {
        b = b.set_column_dictionary_enabled(ColumnPath::from(column), true);
    }
    // Ids are random strings: a min/max over them prunes nothing, and keeping it compares every
    // value (2.3 % of the daemon's CPU in `perf` on 2M events).
    for column in ["event_id", "user_id"] {
        b = b.set_column_statistics_enabled(ColumnPath::from(column), EnabledStatistics::None);
    }
    b.build()
}

pub struct IcebergSink {
    catalog: Arc<fence::FencingCatalog>,
    events: Table,
    metrics: Table,
    dead_letters: Table,
    writer_id: String,
    topic: String,
    target_file_bytes: usize,
    /// Parquet settings for `campaign_metrics` and `dead_letters` (small tables).
    props: WriterProperties,
    /// Parquet settings for `campaign_events`, the table written in full (see `events_props`).
    events_props: WriterProperties,
    /// Positions of the last `campaign_events` commit: an interval that changed nothing makes
    /// no snapshot.
    last_position: Option<BTreeMap<i32, Position>>,
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
        let catalog = Arc::new(fence::FencingCatalog::new(open_catalog(cfg).await?));
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
        let props = base_props().build();
        let events_props = events_props();
        Ok(IcebergSink {
            catalog,
            events,
            metrics,
            dead_letters,
            writer_id: writer_id.into(),
            topic: topic.into(),
            target_file_bytes,
            props,
            events_props,
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
        summary::ancestry(table).any(|(_, p)| {
            p.get(summary::WRITER_ID) == Some(&self.writer_id)
                && p.get(summary::COMMIT_SEQ) == Some(&seq)
        })
    }

    pub fn catalog(&self) -> Arc<dyn Catalog> {
        self.catalog.clone()
    }

    /// `campaign_events` as last loaded (a restatement scans it at a snapshot it pins).
    pub fn events_table(&self) -> &Table {
        &self.events
    }

    /// `campaign_metrics` as last loaded (a restatement reads its own progress from the
    /// summaries in its history).
    pub fn metrics_table(&self) -> &Table {
        &self.metrics
    }

    /// Appends `batches` to `campaign_metrics` as one snapshot whose summary holds `props`, this
    /// writer's id and commit `seq`: a restatement's commit (its rows and its position land
    /// together or not at all) or a promote/rollback record. No fence epochs: a restatement owns
    /// no Kafka partition. Safe to call again after an error: if the table already holds commit
    /// `seq` of this writer (an ambiguous failure that landed), nothing is appended and `false`
    /// is returned.
    pub async fn append_metrics(
        &mut self,
        batches: &[RecordBatch],
        mut props: HashMap<String, String>,
        seq: u64,
    ) -> Result<bool, SinkError> {
        if self.retrying {
            self.metrics = self.catalog.load_table(self.metrics.identifier()).await?;
        }
        let table = self.metrics.clone();
        if self.holds(&table, seq) {
            self.retrying = false;
            return Ok(false);
        }
        self.retrying = true;
        let mut data = Vec::new();
        for rb in batches.iter().filter(|b| b.num_rows() > 0) {
            data.extend(self.write(&table, None, rb, seq).await?);
        }
        props.insert(summary::WRITER_ID.to_string(), self.writer_id.clone());
        props.insert(summary::COMMIT_SEQ.to_string(), seq.to_string());
        props.insert(summary::TOPIC.to_string(), self.topic.clone());
        summary::encode_plugins(&mut props, &batches.iter().collect::<Vec<_>>());
        crate::fault::point("before-commit:campaign_metrics", false);
        self.metrics = self
            .append(&table, data, props, &BTreeMap::new(), false)
            .await?;
        crate::fault::point("after-commit:campaign_metrics", false);
        self.retrying = false;
        Ok(true)
    }

    /// Per partition, where `campaign_events` stands (the entry with the highest epoch).
    pub fn positions(&self) -> BTreeMap<i32, Position> {
        self.positions_of(&self.topic)
    }

    /// [`positions`](Self::positions) of another stream sharing the tables.
    pub fn positions_of(&self, stream: &str) -> BTreeMap<i32, Position> {
        summary::positions(&self.events, stream).0
    }

    /// Per partition, the next offset not yet in `campaign_events`.
    pub fn offsets(&self) -> BTreeMap<i32, i64> {
        self.positions()
            .into_iter()
            .map(|(p, pos)| (p, pos.offset))
            .collect()
    }

    /// The click horizon the newest commit's replay points cover (a restart with a longer
    /// lookback is refused against it).
    pub fn click_horizon_ms(&self) -> Option<i64> {
        summary::horizon_and_seq(&self.events, &self.topic).0
    }

    /// Takes ownership of `partitions` for this member and returns where each stands.
    ///
    /// The partition's epoch becomes one more than any epoch recorded for it in the three
    /// tables, and a claim (an empty commit carrying only the new epochs) is committed to
    /// `dead_letters`, `campaign_metrics` and `campaign_events`, in the order batches commit. From
    /// then on no commit of an earlier owner covering the partition can land in a table (see
    /// `fence`), so the position read after the claims is final: everything the earlier owner
    /// committed is in it, and nothing it still holds can be added behind it. A claim that
    /// loses a race with another claim of the same partition is made again with a higher epoch
    /// (the group gave the partition to us).
    ///
    /// `ids_since`: per partition, the event time from which the committed event ids are read
    /// back for deduplication (`None`: dedup is off).
    pub async fn claim(
        &mut self,
        partitions: &[i32],
        ids_since: impl Fn(Option<i64>) -> Option<i64>,
    ) -> Result<Vec<Claimed>, SinkError> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt = 0;
        let epochs = loop {
            attempt += 1;
            self.refresh().await?;
            let mut epochs: BTreeMap<i32, u64> = partitions.iter().map(|p| (*p, 1)).collect();
            for t in [&self.dead_letters, &self.metrics, &self.events] {
                let (_, max) = summary::positions(t, &self.topic);
                for (p, e) in epochs.iter_mut() {
                    if let Some(m) = max.get(p) {
                        *e = (*e).max(m + 1);
                    }
                }
            }
            let mut props = HashMap::new();
            props.insert(summary::WRITER_ID.to_string(), self.writer_id.clone());
            props.insert(summary::TOPIC.to_string(), self.topic.clone());
            props.insert(
                summary::CLAIM_ID.to_string(),
                uuid::Uuid::new_v4().simple().to_string(),
            );
            summary::encode_claim(&mut props, &epochs);
            let mut lost = None;
            for which in [Which::DeadLetters, Which::Metrics, Which::Events] {
                let table = self.table(which).clone();
                match self
                    .append(&table, Vec::new(), props.clone(), &epochs, true)
                    .await
                {
                    Ok(t) => *self.table_mut(which) = t,
                    Err(SinkError::Fenced(ps)) => {
                        lost = Some(ps);
                        break;
                    }
                    // The claim's outcome is unknown: claim again from the tables as they are
                    // (a claim that landed only makes the next epoch one higher).
                    Err(e) if e.retryable() && attempt < 10 => {
                        tracing::warn!(error = %e, attempt, "claim failed; claiming again");
                        lost = Some(Vec::new());
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            match lost {
                None => break epochs,
                Some(ps) if attempt < 10 => {
                    if ps.is_empty() {
                        tokio::time::sleep(Duration::from_millis(50 << attempt.min(6))).await;
                    } else {
                        tracing::warn!(partitions = ?ps, attempt, "claim raced with another member's claim; claiming again");
                    }
                }
                Some(ps) => return Err(SinkError::Fenced(ps)),
            }
        };
        let (positions, _) = summary::positions(&self.events, &self.topic);
        let (dl, _) = summary::positions(&self.dead_letters, &self.topic);
        // The dedup ids of every claimed partition's horizon, in one scan of the events table.
        let since: BTreeMap<i32, i64> = epochs
            .keys()
            .filter_map(|p| {
                ids_since(positions.get(p).and_then(|pos| pos.watermark_ms)).map(|s| (*p, s))
            })
            .collect();
        let mut ids: BTreeMap<i32, Vec<CommittedId>> = BTreeMap::new();
        if let Some(&from) = since.values().min() {
            self.committed_ids(&since, from, |p, hash, offset, time_ms, was_copy| {
                ids.entry(p).or_default().push(CommittedId {
                    hash,
                    offset,
                    time_ms,
                    was_copy,
                })
            })
            .await?;
        }
        let out = epochs
            .iter()
            .map(|(&p, &epoch)| Claimed {
                partition: p,
                epoch,
                position: positions.get(&p).copied(),
                dead_letter_floor: dl.get(&p).map(|pos| pos.offset),
                ids: ids.remove(&p).unwrap_or_default(),
            })
            .collect();
        tracing::info!(partitions = ?epochs, "claimed (partition → epoch)");
        Ok(out)
    }

    fn table(&self, which: Which) -> &Table {
        match which {
            Which::DeadLetters => &self.dead_letters,
            Which::Metrics => &self.metrics,
            Which::Events => &self.events,
        }
    }

    fn table_mut(&mut self, which: Which) -> &mut Table {
        match which {
            Which::DeadLetters => &mut self.dead_letters,
            Which::Metrics => &mut self.metrics,
            Which::Events => &mut self.events,
        }
    }

    /// Calls `f(partition, id hash, offset, event time ms, is_duplicate)` for every event of a
    /// partition in `since` committed to `campaign_events` with event time ≥ its `since` value:
    /// the ids a partition's new owner must remember to keep counting copies once, and the
    /// verdicts its replay must repeat. One scan from `from_ms` (the smallest `since`), of only
    /// those columns and the day partitions that can match. Returns how many rows were handed
    /// over.
    pub async fn committed_ids(
        &self,
        since: &BTreeMap<i32, i64>,
        from_ms: i64,
        mut f: impl FnMut(i32, u64, i64, i64, bool),
    ) -> Result<u64, SinkError> {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        use arrow_array::types::{Int32Type, Int64Type, TimestampMicrosecondType};
        use futures::TryStreamExt;
        use iceberg::expr::Reference;
        use iceberg::spec::Datum;

        if self.events.metadata().current_snapshot().is_none() {
            return Ok(0);
        }
        let since_us = from_ms.saturating_mul(1000);
        let scan = self
            .events
            .scan()
            .select([
                "event_id",
                "event_time",
                "kafka_partition",
                "kafka_offset",
                "is_duplicate",
                schema::STREAM_COLUMN,
            ])
            .with_filter(
                Reference::new("event_time")
                    .greater_than_or_equal_to(Datum::timestamptz_micros(since_us))
                    .and(
                        Reference::new(schema::STREAM_COLUMN)
                            .equal_to(Datum::string(&self.topic))
                            .or(Reference::new(schema::STREAM_COLUMN).is_null()),
                    ),
            )
            .build()?;
        let mut stream = scan.to_arrow().await?;
        let mut n = 0;
        while let Some(b) = stream.try_next().await? {
            let col = |name: &str| b.column_by_name(name).expect("selected column").clone();
            let (ids, times, parts, offs, dups, streams) = (
                col("event_id"),
                col("event_time"),
                col("kafka_partition"),
                col("kafka_offset"),
                col("is_duplicate"),
                col(schema::STREAM_COLUMN),
            );
            let streams = streams.as_string::<i32>();
            let ids = ids.as_string::<i32>();
            let times = times.as_primitive::<TimestampMicrosecondType>();
            let parts = parts.as_primitive::<Int32Type>();
            let offs = offs.as_primitive::<Int64Type>();
            let dups = dups.as_boolean();
            for i in 0..b.num_rows() {
                // Another stream's ids and offsets say nothing about this one's (the filter
                // above should have dropped them; this does not rely on row filtering).
                // Rows written before the column existed (NULL) were this table's only stream.
                if streams.is_valid(i) && streams.value(i) != self.topic {
                    continue;
                }
                let p = parts.value(i);
                match since.get(&p) {
                    Some(&s) if times.value(i) >= s.saturating_mul(1000) => {}
                    _ => continue,
                }
                f(
                    p,
                    crate::dedup::hash_id(ids.value(i)),
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

    async fn commit_once(&mut self, mut batch: CommitBatch) -> Result<CommitReport, SinkError> {
        let started = Instant::now();
        if self.retrying {
            self.refresh().await?;
        }
        let retrying = self.retrying;
        let mut files = 0;
        let mut fenced = Vec::new();
        // Dead letters first: their summary offsets are their own floor, so a crash between this
        // commit and the events commit neither loses nor repeats a dead letter on replay. Then
        // metrics, then events (the commit point). A table whose fence refuses some partitions
        // (another member claimed them) is written again without their rows, and the tables
        // after it leave them out too.
        for which in [Which::DeadLetters, Which::Metrics, Which::Events] {
            loop {
                let rows = batch.rows(which);
                if which == Which::Events {
                    // The events commit also happens with no rows when the position moved (a
                    // batch of only dead letters or metrics), so the newest summary always holds
                    // it; an interval that changed nothing makes no snapshot.
                    let moved = self.last_position.as_ref() != Some(&batch.positions);
                    let any = rows > 0 || batch.dead_letter_rows() > 0 || batch.metric_rows() > 0;
                    if !(any || moved) {
                        break;
                    }
                } else if rows == 0 {
                    break;
                }
                let table = self.table(which).clone();
                if retrying && self.holds(&table, batch.seq) {
                    tracing::warn!(
                        table = which.name(),
                        seq = batch.seq,
                        "a commit reported as failed had landed (found on the sink's retry); not appended again"
                    );
                    break;
                }
                let mut data = Vec::new();
                match which {
                    Which::Events => {
                        for (day, rb) in &batch.events {
                            data.extend(self.write(&table, Some(*day), rb, batch.seq).await?);
                        }
                    }
                    Which::Metrics => {
                        if let Some(rb) = &batch.metrics {
                            data = self.write(&table, None, rb, batch.seq).await?;
                        }
                    }
                    Which::DeadLetters => {
                        if let Some(rb) = &batch.dead_letters {
                            data = self.write(&table, None, rb, batch.seq).await?;
                        }
                    }
                }
                let n = data.len();
                let mut props = HashMap::new();
                props.insert(summary::WRITER_ID.to_string(), self.writer_id.clone());
                props.insert(summary::COMMIT_SEQ.to_string(), batch.seq.to_string());
                props.insert(summary::TOPIC.to_string(), self.topic.clone());
                if which == Which::DeadLetters {
                    let mut positions = batch.positions.clone();
                    for (p, pos) in positions.iter_mut() {
                        if let Some(&f) = batch.dead_letter_floors.get(p) {
                            pos.offset = pos.offset.max(f);
                        }
                    }
                    summary::encode(&mut props, &positions, batch.click_horizon_ms);
                } else {
                    summary::encode(&mut props, &batch.positions, batch.click_horizon_ms);
                }
                if which == Which::Metrics
                    && let Some(rb) = &batch.metrics
                {
                    summary::encode_plugins(&mut props, &[rb]);
                }
                let epochs = batch
                    .positions
                    .iter()
                    .map(|(p, pos)| (*p, pos.epoch))
                    .collect();
                crate::fault::point(which.before(), batch.has_final);
                match self.append(&table, data, props, &epochs, false).await {
                    Ok(t) => {
                        *self.table_mut(which) = t;
                        files += n;
                        crate::fault::point(which.after(), batch.has_final);
                        break;
                    }
                    Err(SinkError::Fenced(lost)) => {
                        // The files just written stay unreferenced (table maintenance deletes
                        // them); the batch is written again without the lost partitions.
                        tracing::warn!(partitions = ?lost, table = which.name(),
                            "another member owns these partitions now: their rows are left to it");
                        fenced.extend(
                            lost.iter()
                                .filter_map(|p| batch.positions.get(p).map(|pos| (*p, pos.epoch))),
                        );
                        batch.drop_partitions(&lost);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.last_position = Some(batch.positions.clone());
        Ok(CommitReport {
            seq: batch.seq,
            offsets: batch
                .positions
                .iter()
                .map(|(p, pos)| (*p, pos.offset))
                .collect(),
            fenced,
            conflicts: self.catalog.conflicts(),
            events: batch.events.iter().map(|(_, b)| b.num_rows()).sum(),
            metric_rows: batch.metric_rows(),
            dead_letters: batch.dead_letter_rows(),
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
        let props = if table.identifier().name() == EVENTS_TABLE {
            &self.events_props
        } else {
            &self.props
        };
        let parquet = ParquetWriterBuilder::new(props.clone(), schema.clone());
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

    /// Fast-appends `files` with the summary `props`, fenced for `epochs` (see `fence`).
    async fn append(
        &self,
        table: &Table,
        files: Vec<DataFile>,
        props: HashMap<String, String>,
        epochs: &BTreeMap<i32, u64>,
        claim: bool,
    ) -> Result<Table, SinkError> {
        let mark = [summary::WRITER_ID, summary::COMMIT_SEQ, summary::CLAIM_ID]
            .into_iter()
            .filter_map(|k| props.get(k).map(|v| (k.to_string(), v.clone())))
            .collect();
        let tx = Transaction::new(table);
        // Our file names are unique by construction; the duplicate check would re-read every
        // manifest on every commit, which grows without bound.
        let action = tx
            .fast_append()
            .with_check_duplicate(false)
            .add_data_files(files)
            .set_snapshot_properties(props);
        let tx = action.apply(tx)?;
        self.catalog.arm(fence::Fence {
            table: table.identifier().clone(),
            topic: self.topic.clone(),
            epochs: epochs.clone(),
            claim,
            mark,
        });
        let r = tx.commit(self.catalog.as_ref()).await;
        self.catalog.disarm();
        match r {
            Ok(t) => Ok(t),
            Err(e) if e.message().starts_with(fence::ALREADY_COMMITTED) => {
                tracing::warn!(table = %table.identifier(),
                    "a commit reported as failed had landed (found inside the catalog retry); not appended again");
                Ok(self.catalog.load_table(table.identifier()).await?)
            }
            Err(e) if e.message().starts_with(fence::FENCED) => {
                Err(SinkError::Fenced(self.catalog.fenced()))
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// The three tables, in the order a batch commits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    DeadLetters,
    Metrics,
    Events,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::DeadLetters => DEAD_LETTERS_TABLE,
            Which::Metrics => METRICS_TABLE,
            Which::Events => EVENTS_TABLE,
        }
    }

    /// Crash points around this table's commit (`fault`).
    fn before(self) -> &'static str {
        match self {
            Which::DeadLetters => "before-commit:dead_letters",
            Which::Metrics => "before-commit:campaign_metrics",
            Which::Events => "before-commit:campaign_events",
        }
    }

    fn after(self) -> &'static str {
        match self {
            Which::DeadLetters => "after-commit:dead_letters",
            Which::Metrics => "after-commit:campaign_metrics",
            Which::Events => "after-commit:campaign_events",
        }
    }
}

impl CommitBatch {
    fn rows(&self, which: Which) -> usize {
        match which {
            Which::DeadLetters => self.dead_letter_rows(),
            Which::Metrics => self.metric_rows(),
            Which::Events => self.events.iter().map(|(_, b)| b.num_rows()).sum(),
        }
    }

    pub fn metric_rows(&self) -> usize {
        self.metrics.as_ref().map_or(0, |b| b.num_rows())
    }

    pub fn dead_letter_rows(&self) -> usize {
        self.dead_letters.as_ref().map_or(0, |b| b.num_rows())
    }

    /// Leaves the rows and positions of `partitions` out of this batch (another member owns
    /// them now). Every table's rows carry their partition in `kafka_partition`.
    pub fn drop_partitions(&mut self, partitions: &[i32]) {
        fn keep(rb: &RecordBatch, partitions: &[i32]) -> RecordBatch {
            use arrow_array::cast::AsArray;
            use arrow_array::types::Int32Type;
            let col = rb
                .column_by_name("kafka_partition")
                .expect("every table has kafka_partition")
                .as_primitive::<Int32Type>();
            let mask: arrow_array::BooleanArray = col
                .iter()
                .map(|p| Some(!p.is_some_and(|p| partitions.contains(&p))))
                .collect();
            arrow_select::filter::filter_record_batch(rb, &mask).expect("same length mask")
        }
        for (_, rb) in self.events.iter_mut() {
            *rb = keep(rb, partitions);
        }
        self.events.retain(|(_, rb)| rb.num_rows() > 0);
        for rb in [&mut self.metrics, &mut self.dead_letters]
            .into_iter()
            .flatten()
        {
            *rb = keep(rb, partitions);
        }
        self.positions.retain(|p, _| !partitions.contains(p));
        self.dead_letter_floors
            .retain(|p, _| !partitions.contains(p));
    }
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
        let table = catalog.load_table(&ident).await?;
        return evolve(catalog, table, &schema).await;
    }
    let creation = TableCreation::builder()
        .name(name.to_string())
        .schema(schema.clone())
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
        Err(_) if catalog.table_exists(&ident).await? => {
            let table = catalog.load_table(&ident).await?;
            evolve(catalog, table, &schema).await
        }
        Err(e) => Err(e.into()),
    }
}

/// Brings an existing table to `want`: optional columns a table written by an earlier release
/// lacks are appended (Iceberg add-column: old data files are not rewritten, their rows read
/// NULL). Then every column of `want` must be in the table with its field id, type and
/// nullability, since the writers build rows by `want`; anything else is refused by name.
async fn evolve(
    catalog: &dyn Catalog,
    table: Table,
    want: &iceberg::spec::Schema,
) -> Result<Table, SinkError> {
    use iceberg::transaction::AddColumn;

    let have = table.metadata().current_schema().clone();
    let missing: Vec<_> = want
        .as_struct()
        .fields()
        .iter()
        .filter(|f| have.field_by_name(&f.name).is_none())
        .collect();
    let table = if missing.is_empty() {
        table
    } else if let Some(f) = missing.iter().find(|f| f.required) {
        return Err(SinkError::Schema {
            table: table.identifier().to_string(),
            detail: format!("it lacks the required column {:?}", f.name),
        });
    } else {
        let tx = Transaction::new(&table);
        let mut action = tx.update_schema();
        for f in &missing {
            action = action.add_column(AddColumn::optional(&f.name, (*f.field_type).clone()));
        }
        let tx = action.apply(tx)?;
        let table = tx.commit(catalog).await?;
        tracing::info!(
            table = %table.identifier(),
            added = ?missing.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            "table schema evolved"
        );
        table
    };
    let have = table.metadata().current_schema();
    for f in want.as_struct().fields() {
        let detail = match have.field_by_name(&f.name) {
            None => format!("it lacks the column {:?}", f.name),
            Some(h) if h.id != f.id || h.field_type != f.field_type || h.required != f.required => {
                format!(
                    "column {:?} is {} {} with field id {}, this release writes {} {} with id {}",
                    f.name,
                    if h.required { "required" } else { "optional" },
                    h.field_type,
                    h.id,
                    if f.required { "required" } else { "optional" },
                    f.field_type,
                    f.id
                )
            }
            Some(_) => continue,
        };
        return Err(SinkError::Schema {
            table: table.identifier().to_string(),
            detail,
        });
    }
    if let Some(h) = have
        .as_struct()
        .fields()
        .iter()
        .find(|h| want.field_by_name(&h.name).is_none())
    {
        return Err(SinkError::Schema {
            table: table.identifier().to_string(),
            detail: format!(
                "column {:?} is not one this release writes (a table of a newer release?)",
                h.name
            ),
        });
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, EventKind};

    fn without_stream(s: iceberg::spec::Schema) -> iceberg::spec::Schema {
        let fields: Vec<_> = s
            .as_struct()
            .fields()
            .iter()
            // The release before `stream` had none of the columns appended after it
            // (`restatement`, `shadow`, the currency columns) either.
            .filter(|f| f.id < schema::STREAM_FIELD_ID)
            .cloned()
            .collect();
        iceberg::spec::Schema::builder()
            .with_schema_id(0)
            .with_fields(fields)
            .build()
            .unwrap()
    }

    /// A table written by the release before restatements (every column but `restatement` and
    /// `shadow`) gains both in place, with the field ids the writers use; its rows stay and read
    /// NULL (live, not shadow).
    #[tokio::test]
    async fn a_metrics_table_of_the_previous_release_gains_the_restatement_column_in_place() {
        use futures::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_config(dir.path());
        let catalog = open_catalog(&cfg).await.unwrap();
        let ns = NamespaceIdent::new(cfg.namespace.clone());
        catalog.create_namespace(&ns, HashMap::new()).await.unwrap();
        let fields: Vec<_> = schema::metrics_schema()
            .as_struct()
            .fields()
            .iter()
            .filter(|f| f.id < schema::RESTATEMENT_FIELD_ID)
            .cloned()
            .collect();
        let old_schema = iceberg::spec::Schema::builder()
            .with_schema_id(0)
            .with_fields(fields)
            .build()
            .unwrap();
        let old = ensure_table(catalog.as_ref(), &ns, METRICS_TABLE, old_schema, None)
            .await
            .unwrap();
        // One row as the previous release wrote it.
        let row = schema::MetricRecord {
            window_start_ms: 0,
            window_end_ms: 60_000,
            campaign_id: "c".into(),
            ad_id: None,
            dimensions: None,
            plugin_params: None,
            metric: "ctr".into(),
            value: 0.5,
            numerator: 1.0,
            denominator: 2.0,
            plugin: "ctr".into(),
            plugin_version: "0.1.0".into(),
            plugin_sha256: "x".into(),
            revision: 1,
            partition: 0,
            is_final: true,
            computed_at_ms: 0,
            withheld: false,
            shadow: false,
            currency: None,
        };
        let rb = project_to(schema::metrics_batch(&[row], "s"), &old);
        let catalog = Arc::new(fence::FencingCatalog::new(catalog));
        let old_sink = IcebergSink {
            events: old.clone(),
            metrics: old.clone(),
            dead_letters: old.clone(),
            catalog: catalog.clone(),
            writer_id: "old".into(),
            topic: "s".into(),
            target_file_bytes: 1 << 20,
            props: WriterProperties::default(),
            events_props: WriterProperties::default(),
            last_position: None,
            retrying: false,
        };
        let files = old_sink.write(&old, None, &rb, 1).await.unwrap();
        old_sink
            .append(&old, files, HashMap::new(), &BTreeMap::new(), false)
            .await
            .unwrap();

        let mut sink = IcebergSink::open(&cfg, "s", "w", 1 << 20).await.unwrap();
        // iceberg-rust scans a snapshot with the schema it was written with: the next commit
        // (here an empty one) is the first under the evolved schema.
        sink.append_metrics(&[], HashMap::new(), 1).await.unwrap();
        let f = sink
            .metrics
            .metadata()
            .current_schema()
            .field_by_name(schema::RESTATEMENT_COLUMN)
            .unwrap()
            .clone();
        assert_eq!((f.id, f.required), (schema::RESTATEMENT_FIELD_ID, false));
        let f = sink
            .metrics
            .metadata()
            .current_schema()
            .field_by_name(schema::SHADOW_COLUMN)
            .unwrap()
            .clone();
        assert_eq!((f.id, f.required), (schema::SHADOW_FIELD_ID, false));
        for (name, id) in [
            (schema::DIMENSIONS_COLUMN, schema::DIMENSIONS_FIELD_ID),
            (schema::PLUGIN_PARAMS_COLUMN, schema::PLUGIN_PARAMS_FIELD_ID),
            (
                schema::METRICS_CURRENCY_COLUMN,
                schema::METRICS_CURRENCY_FIELD_ID,
            ),
        ] {
            let f = sink
                .metrics
                .metadata()
                .current_schema()
                .field_by_name(name)
                .unwrap()
                .clone();
            assert_eq!((f.id, f.required), (id, false), "{name}");
        }
        let batches: Vec<RecordBatch> = sink
            .metrics
            .scan()
            .select([
                schema::RESTATEMENT_COLUMN,
                "campaign_id",
                schema::SHADOW_COLUMN,
                schema::DIMENSIONS_COLUMN,
                schema::PLUGIN_PARAMS_COLUMN,
                schema::METRICS_CURRENCY_COLUMN,
            ])
            .build()
            .unwrap()
            .to_arrow()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert_eq!(rows, 1, "the previous release's row is kept");
        use arrow_array::Array;
        assert_eq!(batches[0].column(0).null_count(), 1, "and reads as live");
        assert_eq!(batches[0].column(2).null_count(), 1, "and not shadow");
        assert_eq!(batches[0].column(3).null_count(), 1, "and a total");
        assert_eq!(
            batches[0].column(4).null_count(),
            1,
            "of a plugin without params"
        );
        assert_eq!(
            batches[0].column(5).null_count(),
            1,
            "in no stated currency"
        );
    }

    /// A SQLite catalog and warehouse in `dir` (a test's temporary directory).
    fn local_config(dir: &std::path::Path) -> IcebergConfig {
        IcebergConfig {
            catalog_uri: format!("sqlite:{}/catalog.db", dir.display()),
            warehouse: dir.join("warehouse"),
            ..Default::default()
        }
    }

    /// `rb` with only the columns `table` has: a batch as the release that wrote the table did.
    fn project_to(rb: RecordBatch, table: &Table) -> RecordBatch {
        let have = table.metadata().current_schema();
        let keep: Vec<usize> = (0..rb.num_columns())
            .filter(|&i| have.field_by_name(rb.schema().field(i).name()).is_some())
            .collect();
        rb.project(&keep).unwrap()
    }

    fn event(id: &str, time_ms: i64) -> Event<'_> {
        Event {
            event_id: id.into(),
            kind: EventKind::Impression,
            time_ms,
            campaign_id: "c".into(),
            ad_id: "a".into(),
            user_id: "u".into(),
            revenue_micros: 0,
            original_revenue_micros: 0,
            currency: None,
            device: None,
            country: None,
            placement: None,
            attributes: Vec::new(),
        }
    }

    /// One `campaign_events` row of `stream` at `offset`, committed straight to the table.
    async fn append_event(
        sink: &mut IcebergSink,
        stream: &str,
        id: &str,
        offset: i64,
        legacy: bool,
    ) {
        let t = 1_767_225_600_000;
        let mut buf = schema::EventsBuffer::new(stream);
        buf.push(&event(id, t), 0, offset, t * 1000, false, false);
        let (day, mut rb) = buf.take().pop().unwrap();
        if legacy {
            rb = project_to(rb, &sink.events);
        }
        let files = sink
            .write(&sink.events, Some(day), &rb, offset as u64)
            .await
            .unwrap();
        let events = sink.events.clone();
        sink.events = sink
            .append(&events, files, HashMap::new(), &BTreeMap::new(), false)
            .await
            .unwrap();
    }

    /// Tables written by the release before currency conversion (`campaign_events` without
    /// `original_revenue` and `revenue_currency`, `campaign_metrics` without `currency`) gain
    /// the columns in place with the field ids the writers use. Their rows stay and read NULL
    /// there (an old conversion's `revenue` is as sent, in `currency`); rows written after carry
    /// the converted amount, the original and both currencies.
    #[tokio::test]
    async fn tables_of_the_release_before_currencies_gain_the_currency_columns_in_place() {
        use arrow_array::Array;
        use arrow_array::cast::AsArray;
        use arrow_array::types::Decimal128Type;
        use futures::TryStreamExt;
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_config(dir.path());
        let catalog = Arc::new(fence::FencingCatalog::new(
            open_catalog(&cfg).await.unwrap(),
        ));
        let ns = NamespaceIdent::new(cfg.namespace.clone());
        catalog.create_namespace(&ns, HashMap::new()).await.unwrap();
        let up_to = |s: iceberg::spec::Schema, last: i32| {
            iceberg::spec::Schema::builder()
                .with_schema_id(0)
                .with_fields(
                    s.as_struct()
                        .fields()
                        .iter()
                        .filter(|f| f.id <= last)
                        .cloned()
                        .collect::<Vec<_>>(),
                )
                .build()
                .unwrap()
        };
        let mut old = IcebergSink {
            events: ensure_table(
                catalog.as_ref(),
                &ns,
                EVENTS_TABLE,
                up_to(schema::events_schema(), schema::STREAM_FIELD_ID),
                Some(schema::events_partition_spec()),
            )
            .await
            .unwrap(),
            metrics: ensure_table(
                catalog.as_ref(),
                &ns,
                METRICS_TABLE,
                up_to(schema::metrics_schema(), schema::SHADOW_FIELD_ID),
                None,
            )
            .await
            .unwrap(),
            dead_letters: ensure_table(
                catalog.as_ref(),
                &ns,
                DEAD_LETTERS_TABLE,
                schema::dead_letters_schema(),
                None,
            )
            .await
            .unwrap(),
            catalog: catalog.clone(),
            writer_id: "old".into(),
            topic: "s".into(),
            target_file_bytes: 1 << 20,
            props: WriterProperties::default(),
            events_props: WriterProperties::default(),
            last_position: None,
            retrying: false,
        };
        for (t, name) in [
            (&old.events, "original_revenue"),
            (&old.events, "attributes"),
            (&old.metrics, "currency"),
        ] {
            assert!(t.metadata().current_schema().field_by_name(name).is_none());
        }
        let t = 1_767_225_600_000;
        let conversion = |id: &'static str, revenue_micros, original_revenue_micros| Event {
            kind: EventKind::Conversion,
            revenue_micros,
            original_revenue_micros,
            currency: Some("EUR".into()),
            ..event(id, t)
        };
        let metric = |currency: Option<&str>| schema::MetricRecord {
            window_start_ms: t,
            window_end_ms: t + 60_000,
            campaign_id: "c".into(),
            ad_id: None,
            dimensions: None,
            plugin_params: None,
            metric: "revenue".into(),
            value: 10.0,
            numerator: 10.0,
            denominator: 1.0,
            plugin: "cvr".into(),
            plugin_version: "0.1.0".into(),
            plugin_sha256: "x".into(),
            revision: 1,
            partition: 0,
            is_final: true,
            computed_at_ms: t,
            withheld: false,
            shadow: false,
            currency: currency.map(Into::into),
        };
        // What the previous release wrote: EUR 10.00 summed as it came.
        async fn commit_rows(
            sink: &mut IcebergSink,
            buf: &mut schema::EventsBuffer,
            metrics: RecordBatch,
            seq: u64,
        ) {
            let (day, rb) = buf.take().pop().unwrap();
            let rb = project_to(rb, &sink.events);
            let files = sink.write(&sink.events, Some(day), &rb, seq).await.unwrap();
            let events = sink.events.clone();
            sink.events = sink
                .append(&events, files, HashMap::new(), &BTreeMap::new(), false)
                .await
                .unwrap();
            let rb = project_to(metrics, &sink.metrics);
            let files = sink.write(&sink.metrics, None, &rb, seq).await.unwrap();
            let metrics = sink.metrics.clone();
            sink.metrics = sink
                .append(&metrics, files, HashMap::new(), &BTreeMap::new(), false)
                .await
                .unwrap();
        }
        let mut buf = schema::EventsBuffer::new("s");
        buf.push(
            &conversion("old", 10_000_000, 10_000_000),
            0,
            0,
            0,
            false,
            false,
        );
        commit_rows(
            &mut old,
            &mut buf,
            schema::metrics_batch(&[metric(None)], "s"),
            1,
        )
        .await;

        let mut sink = IcebergSink::open(&cfg, "s", "w", 1 << 20).await.unwrap();
        for (t, name, id) in [
            (
                &sink.events,
                schema::ORIGINAL_REVENUE_COLUMN,
                schema::ORIGINAL_REVENUE_FIELD_ID,
            ),
            (
                &sink.events,
                schema::REVENUE_CURRENCY_COLUMN,
                schema::REVENUE_CURRENCY_FIELD_ID,
            ),
            (
                &sink.events,
                schema::EVENT_ATTRIBUTES_COLUMN,
                schema::EVENT_ATTRIBUTES_FIELD_ID,
            ),
            (
                &sink.metrics,
                schema::METRICS_CURRENCY_COLUMN,
                schema::METRICS_CURRENCY_FIELD_ID,
            ),
        ] {
            let f = t.metadata().current_schema().field_by_name(name).unwrap();
            assert_eq!((f.id, f.required), (id, false), "{name}");
        }
        // This release: EUR 10.00 converted at 1.08.
        let mut buf = schema::EventsBuffer::new("s").with_revenue_currency("USD");
        buf.push(
            &conversion("new", 10_800_000, 10_000_000),
            0,
            1,
            0,
            false,
            false,
        );
        commit_rows(
            &mut sink,
            &mut buf,
            schema::metrics_batch(&[metric(Some("USD"))], "s"),
            2,
        )
        .await;

        let read = |t: &Table, cols: &'static [&'static str]| {
            let t = t.clone();
            async move {
                let b: Vec<RecordBatch> = t
                    .scan()
                    .select(cols.iter().copied())
                    .build()
                    .unwrap()
                    .to_arrow()
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
                arrow_select::concat::concat_batches(&b[0].schema(), &b).unwrap()
            }
        };
        let ev = read(
            &sink.events,
            &[
                "event_id",
                "revenue",
                "original_revenue",
                "currency",
                "revenue_currency",
            ],
        )
        .await;
        let mut rows: Vec<[Option<String>; 5]> = (0..ev.num_rows())
            .map(|i| {
                std::array::from_fn(|c| {
                    let col = ev.column(c);
                    col.is_valid(i).then(|| match c {
                        1 | 2 => col.as_primitive::<Decimal128Type>().value_as_string(i),
                        _ => col.as_string::<i32>().value(i).to_string(),
                    })
                })
            })
            .collect();
        rows.sort();
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            rows,
            [
                [s("new"), s("10.800000"), s("10.000000"), s("EUR"), s("USD")],
                [s("old"), s("10.000000"), None, s("EUR"), None],
            ]
        );
        let m = read(&sink.metrics, &["revision", "currency"]).await;
        let mut currencies: Vec<Option<&str>> = {
            let c = m.column(1).as_string::<i32>();
            (0..m.num_rows())
                .map(|i| c.is_valid(i).then(|| c.value(i)))
                .collect()
        };
        currencies.sort();
        assert_eq!(currencies, [None, Some("USD")]);
    }

    /// Issue 14, defect 6: tables written before the `stream` column existed are evolved in
    /// place (their rows kept, reading NULL), and a stream's dedup hand-over reads its own ids
    /// (and the legacy rows, the old tables' only stream), never another stream's.
    #[tokio::test]
    async fn tables_of_the_previous_release_gain_the_stream_column_and_streams_keep_their_ids_apart()
     {
        let dir = tempfile::tempdir().unwrap();
        let cfg = local_config(dir.path());
        let catalog = Arc::new(fence::FencingCatalog::new(
            open_catalog(&cfg).await.unwrap(),
        ));
        let ns = NamespaceIdent::new(cfg.namespace.clone());
        catalog.create_namespace(&ns, HashMap::new()).await.unwrap();
        let create = |name, s, spec| {
            let catalog = catalog.clone();
            let ns = ns.clone();
            async move {
                ensure_table(catalog.as_ref(), &ns, name, s, spec)
                    .await
                    .unwrap()
            }
        };
        // The previous release's tables, with one row written by it.
        let mut old = IcebergSink {
            events: create(
                EVENTS_TABLE,
                without_stream(schema::events_schema()),
                Some(schema::events_partition_spec()),
            )
            .await,
            metrics: create(
                METRICS_TABLE,
                without_stream(schema::metrics_schema()),
                None,
            )
            .await,
            dead_letters: create(DEAD_LETTERS_TABLE, schema::dead_letters_schema(), None).await,
            catalog: catalog.clone(),
            writer_id: "old".into(),
            topic: "s".into(),
            target_file_bytes: 1 << 20,
            props: WriterProperties::default(),
            events_props: WriterProperties::default(),
            last_position: None,
            retrying: false,
        };
        assert!(
            old.events
                .metadata()
                .current_schema()
                .field_by_name("stream")
                .is_none()
        );
        append_event(&mut old, "s", "legacy", 0, true).await;

        let mut s = IcebergSink::open(&cfg, "s", "w-s", 1 << 20).await.unwrap();
        for t in [&s.events, &s.metrics] {
            let f = t
                .metadata()
                .current_schema()
                .field_by_name("stream")
                .unwrap()
                .clone();
            assert_eq!(
                (f.id, f.required),
                (schema::STREAM_FIELD_ID, false),
                "{}",
                t.identifier()
            );
        }
        append_event(&mut s, "s", "ours", 1, false).await;
        let mut t = IcebergSink::open(&cfg, "t", "w-t", 1 << 20).await.unwrap();
        // Stream t's partition 0 at offset 1 holds the same id as stream s's: not a copy of it.
        append_event(&mut t, "t", "ours", 1, false).await;
        append_event(&mut t, "t", "theirs", 2, false).await;
        s.refresh().await.unwrap();
        t.refresh().await.unwrap();

        let h = crate::dedup::hash_id;
        for (sink, mut want) in [
            (&s, vec![(0, h("legacy"), 0), (0, h("ours"), 1)]),
            (
                &t,
                vec![(0, h("legacy"), 0), (0, h("ours"), 1), (0, h("theirs"), 2)],
            ),
        ] {
            let mut got = Vec::new();
            sink.committed_ids(&BTreeMap::from([(0, 0)]), 0, |p, h, o, _, _| {
                got.push((p, h, o))
            })
            .await
            .unwrap();
            got.sort();
            want.sort();
            assert_eq!(got, want, "stream {}", sink.topic);
        }
    }
}
