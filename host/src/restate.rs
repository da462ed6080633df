//! Restatement: recompute a period of metrics with another build of a plugin, from the events
//! already in `campaign_events` (not from Kafka, which may have expired them), and let readers
//! switch to it and back.
//!
//! # What it does
//! `admetrics restate --plugin P.wasm --from T1 --to T2` pins the events table's current snapshot,
//! reads the events of `[T1 − lookback, T2)` at that snapshot (new events cannot leak into the
//! period while it runs), and runs them through the daemon's own [`Processor`]: the same windows,
//! interning, touchpoints and plugin runtime, per (stream, Kafka partition) in offset order as the
//! daemon saw them. What the daemon decided is taken from the table, not decided again: copies
//! (`is_duplicate`) count nowhere, late events (`is_late`) only feed the touchpoints, and clicks
//! before `T1` only feed the touchpoints too (conversions in the period look back at them). So a
//! restatement with the live build reproduces the live values, and a changed build differs only
//! where its logic does.
//!
//! # Where the rows go, and why not a second table
//! Into `campaign_metrics`, with the plugin's name, version and sha256 as every row has, and the
//! nullable `restatement` column set to the restatement's id (NULL on live rows; a warehouse of an
//! earlier release gains the column in place by Iceberg add-column). Promote and rollback are
//! records in the same table (`metric = '$restatement'`, numerator 1 or 0, the period in
//! `window_start`/`window_end`), each one fast append; the restatement's last commit adds its
//! completion record (numerator −1, revision 0). Promote and rollback read the records from the
//! rows, not the summaries, so snapshot expiry by table maintenance loses nothing they need
//! (only resuming an unfinished restatement reads its summaries). One table keeps the one definition of the
//! current value, `sql/current_metrics.sql`, a view over the one relation every reader already
//! registers (`scripts/query.py`, the dashboard's views, the Python verifiers): a separate
//! restated table plus a versions table would make every reader supply two more relations, and a
//! reader that forgot one would silently show live values. Records are `withheld` rows of a metric
//! no plugin declares, so even a reader unaware of them (`WHERE NOT withheld`) skips them.
//!
//! Readers show, per plugin and window, the rows of the restatement promoted for that plugin over
//! a period holding the window, else the live rows. Promoting a restatement withdraws any other
//! promoted restatement of the same plugin whose period overlaps it (in the same commit), so at
//! most one applies to a window; rolling it back shows the live rows again.
//!
//! # Exactly once
//! Each window of each (stream, partition) is written once, final. Progress is the daemon's
//! discipline: the position lives in the snapshot summary of the commit that carries the rows
//! (`admetrics.restate.done`: per stream and partition, the end of the windows written), so rows
//! and position land together. A restatement killed anywhere is resumed by the same command (or
//! `--resume ID`): it reads its newest summary, reads the events again at the pinned snapshot,
//! rebuilds the state (touchpoints) from the start, and writes only windows past the recorded
//! position. A commit reported as failed that in fact landed is recognised by writer id and commit
//! sequence (`IcebergSink::append_metrics`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Decimal128Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use iceberg::table::Table;

use crate::config::Config;
use crate::event::{Event, EventKind};
use crate::pipeline::{Clock, Processor};
use crate::plugin::PluginRuntime;
use crate::sink::schema::{MetricRecord, metrics_batch_of};
use crate::sink::{IcebergSink, SinkError, summary};
use crate::status::Status;

/// Summary key: the restatement a commit belongs to (its rows and its progress).
pub const ID: &str = "admetrics.restatement";
const PLUGIN: &str = "admetrics.restate.plugin";
const VERSION: &str = "admetrics.restate.plugin-version";
const SHA256: &str = "admetrics.restate.plugin-sha256";
const FROM: &str = "admetrics.restate.from-ms";
const TO: &str = "admetrics.restate.to-ms";
const LOOKBACK: &str = "admetrics.restate.lookback-secs";
/// The `campaign_events` snapshot the restatement reads, pinned at its start.
const EVENTS_SNAPSHOT: &str = "admetrics.restate.events-snapshot";
/// JSON object stream → partition → end (ms) of the windows written (all of them once a
/// partition is done: the period's end).
const DONE: &str = "admetrics.restate.done";
/// "true" on the commit after which every window of the period is written.
const COMPLETE: &str = "admetrics.restate.complete";
/// Summary key of a promote/rollback commit: JSON list of {id, promoted} it records.
const ACTIONS: &str = "admetrics.restate.actions";
/// `metric` of the promote/rollback records in `campaign_metrics`.
pub const RECORD_METRIC: &str = "$restatement";
/// The key `done` uses for rows whose stream is NULL (written before the column existed).
const NULL_STREAM: &str = "";

#[derive(Debug, thiserror::Error)]
pub enum RestateError {
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("iceberg: {0}")]
    Iceberg(#[from] iceberg::Error),
    #[error("plugin {path}: {detail}")]
    Plugin { path: String, detail: String },
    #[error("no restatement {0:?} in campaign_metrics")]
    Unknown(String),
    #[error(
        "restatement {0} is not complete: resume it first (admetrics restate --resume {0}) and promote it once it finished"
    )]
    Incomplete(String),
    #[error(
        "{action} of restatement {id} not recorded: the commit to campaign_metrics failed {attempts} time(s) over {secs} s (each retried on a fresh load of the table): {source}"
    )]
    Record {
        action: &'static str,
        id: String,
        attempts: u32,
        secs: u64,
        source: SinkError,
    },
    #[error("restatement {0} is not promoted")]
    NotPromoted(String),
    #[error("{0}")]
    Invalid(String),
}

/// What one restatement records about itself (read back from its newest summary).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub plugin: String,
    pub version: String,
    pub sha256: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub lookback_secs: u64,
    pub events_snapshot: i64,
    /// Commit sequence of its newest commit.
    pub seq: u64,
    /// Stream → partition → end of the windows written.
    pub done: BTreeMap<String, BTreeMap<i32, i64>>,
    pub complete: bool,
}

impl Record {
    fn from_props(p: &HashMap<String, String>) -> Option<Record> {
        let id = p.get(ID)?.clone();
        let num = |k: &str| p.get(k).and_then(|v| v.parse::<i64>().ok());
        Some(Record {
            id,
            plugin: p.get(PLUGIN)?.clone(),
            version: p.get(VERSION)?.clone(),
            sha256: p.get(SHA256)?.clone(),
            from_ms: num(FROM)?,
            to_ms: num(TO)?,
            lookback_secs: num(LOOKBACK)? as u64,
            events_snapshot: num(EVENTS_SNAPSHOT)?,
            seq: num(summary::COMMIT_SEQ)? as u64,
            done: p
                .get(DONE)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default(),
            complete: p.get(COMPLETE).is_some_and(|v| v == "true"),
        })
    }

    fn props(&self) -> HashMap<String, String> {
        let mut p = HashMap::new();
        p.insert(ID.into(), self.id.clone());
        p.insert(PLUGIN.into(), self.plugin.clone());
        p.insert(VERSION.into(), self.version.clone());
        p.insert(SHA256.into(), self.sha256.clone());
        p.insert(FROM.into(), self.from_ms.to_string());
        p.insert(TO.into(), self.to_ms.to_string());
        p.insert(LOOKBACK.into(), self.lookback_secs.to_string());
        p.insert(EVENTS_SNAPSHOT.into(), self.events_snapshot.to_string());
        p.insert(
            DONE.into(),
            serde_json::to_string(&self.done).expect("plain map"),
        );
        if self.complete {
            p.insert(COMPLETE.into(), "true".into());
        }
        p
    }
}

/// Every restatement in the table's history, newest record of each, newest first.
pub fn restatements(metrics: &Table) -> Vec<Record> {
    let mut seen = std::collections::HashSet::new();
    summary::ancestry(metrics)
        .filter_map(|(_, p)| Record::from_props(p))
        .filter(|r| seen.insert(r.id.clone()))
        .collect()
}

/// One record row (`metric = '$restatement'`) of `campaign_metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordRow {
    pub id: String,
    pub plugin: String,
    pub version: String,
    pub sha256: String,
    pub from_ms: i64,
    pub to_ms: i64,
    /// 1 promoted, 0 rolled back, −1 complete (the restatement's last commit; never promoted).
    pub flag: i64,
    /// Orders a restatement's records: the completion record has 0, promote/rollback records
    /// the sequence of their commit (one more than the highest revision of any record).
    pub revision: i64,
}

/// The record rows of `campaign_metrics`, as readers see them. Read from the rows, not from
/// snapshot summaries, so snapshot expiry (`scripts/maintain.py`) loses nothing a promote,
/// rollback or reader needs.
pub async fn records(metrics: &Table) -> Result<Vec<RecordRow>, RestateError> {
    use futures::TryStreamExt;
    use iceberg::expr::Reference;
    use iceberg::spec::Datum;

    let Some(snap) = metrics.metadata().current_snapshot() else {
        return Ok(Vec::new());
    };
    // iceberg-rust scans a snapshot with the schema it was written with: a table not written
    // since it gained the column holds no restatement.
    let has_column = snap.schema(metrics.metadata()).ok().is_some_and(|s| {
        s.field_by_name(crate::sink::schema::RESTATEMENT_COLUMN)
            .is_some()
    });
    if !has_column {
        return Ok(Vec::new());
    }
    let scan = metrics
        .scan()
        .select([
            "metric",
            crate::sink::schema::RESTATEMENT_COLUMN,
            "plugin",
            "plugin_version",
            "plugin_sha256",
            "window_start",
            "window_end",
            "numerator",
            "revision",
        ])
        .with_filter(Reference::new("metric").equal_to(Datum::string(RECORD_METRIC)))
        .build()?;
    let mut stream = scan.to_arrow().await?;
    let mut out = Vec::new();
    while let Some(b) = stream.try_next().await? {
        let col = |name: &str| b.column_by_name(name).expect("selected column").clone();
        let (metric, id, plugin, version, sha, ws, we, num, rev) = (
            col("metric"),
            col(crate::sink::schema::RESTATEMENT_COLUMN),
            col("plugin"),
            col("plugin_version"),
            col("plugin_sha256"),
            col("window_start"),
            col("window_end"),
            col("numerator"),
            col("revision"),
        );
        let (metric, id, plugin, version, sha) = (
            metric.as_string::<i32>(),
            id.as_string::<i32>(),
            plugin.as_string::<i32>(),
            version.as_string::<i32>(),
            sha.as_string::<i32>(),
        );
        let ws = ws.as_primitive::<TimestampMicrosecondType>();
        let we = we.as_primitive::<TimestampMicrosecondType>();
        let num = num.as_primitive::<arrow_array::types::Float64Type>();
        let rev = rev.as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            // Not relying on row filtering.
            if metric.value(i) != RECORD_METRIC || !id.is_valid(i) {
                continue;
            }
            out.push(RecordRow {
                id: id.value(i).to_string(),
                plugin: plugin.value(i).to_string(),
                version: version.value(i).to_string(),
                sha256: sha.value(i).to_string(),
                from_ms: ws.value(i).div_euclid(1000),
                to_ms: we.value(i).div_euclid(1000),
                flag: num.value(i) as i64,
                revision: rev.value(i),
            });
        }
    }
    Ok(out)
}

/// What readers see now, from the record rows: per restatement id its completion record and
/// whether its latest record promotes it; and the highest record revision.
pub async fn promotions(
    metrics: &Table,
) -> Result<(BTreeMap<String, (RecordRow, bool)>, i64), RestateError> {
    let mut complete: BTreeMap<String, RecordRow> = BTreeMap::new();
    let mut latest: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    let mut max_rev = 0;
    for r in records(metrics).await? {
        max_rev = max_rev.max(r.revision);
        let l = latest.entry(r.id.clone()).or_insert((r.revision, r.flag));
        if r.revision > l.0 {
            *l = (r.revision, r.flag);
        }
        if r.flag == -1 {
            complete.insert(r.id.clone(), r);
        }
    }
    Ok((
        complete
            .into_iter()
            .map(|(id, r)| {
                let promoted = latest.get(&id).is_some_and(|l| l.1 == 1);
                (id, (r, promoted))
            })
            .collect(),
        max_rev,
    ))
}

/// What to restate.
#[derive(Debug, Clone)]
pub struct Request {
    pub plugin: std::path::PathBuf,
    /// The period (window boundaries); taken from the record when resuming by id.
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Resume this restatement (its recorded plugin sha256 must match `plugin`'s).
    pub resume: Option<String>,
    /// Commit after this many closed windows of a partition (and at the end of each partition).
    pub commit_windows: usize,
}

/// What a restatement did.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub id: String,
    /// The restatement was already complete: nothing was done.
    pub already_complete: bool,
    pub resumed: bool,
    pub events_snapshot: i64,
    /// Rows read from `campaign_events` (the period and the lookback before it).
    pub events_read: u64,
    /// Events placed in windows or touchpoints.
    pub events_used: u64,
    pub rows_written: u64,
    pub commits: u64,
    pub read: Duration,
    pub compute: Duration,
    pub commit: Duration,
    pub total: Duration,
}

/// Opens the tables for a restatement (creating or upgrading them like the daemon).
async fn open(cfg: &Config, writer: &str) -> Result<IcebergSink, SinkError> {
    IcebergSink::open(
        &cfg.iceberg,
        &format!("restate:{writer}"),
        writer,
        cfg.commit.target_file_bytes,
    )
    .await
}

/// Runs (or resumes, or finds complete) the restatement `req` asks for. `on_commit` is told its
/// record once it is committed (or found), before any row is computed (the id to resume by),
/// and again after each commit (its progress).
pub async fn restate(
    cfg: &Config,
    req: &Request,
    on_commit: &mut dyn FnMut(&Record),
) -> Result<Report, RestateError> {
    let started = Instant::now();
    let size_ms = cfg.window_size_ms();
    let runtime = PluginRuntime::new(&cfg.plugins).map_err(|e| RestateError::Plugin {
        path: req.plugin.display().to_string(),
        detail: format!("{e:#}"),
    })?;
    let plugin = runtime
        .load(&req.plugin)
        .map_err(|e| RestateError::Plugin {
            path: req.plugin.display().to_string(),
            detail: e.to_string(),
        })?;
    if plugin.info.window != crate::plugin::Span::Minute || plugin.info.wants_views {
        // Its windows would need the period aligned to hours or campaign days, and views
        // replayed from campaign_events; neither is done yet.
        return Err(RestateError::Plugin {
            path: req.plugin.display().to_string(),
            detail: format!(
                "restating a plugin with {} windows{} is not supported yet (minute windows, \
                 clicks only)",
                plugin.info.window.name(),
                if plugin.info.wants_views {
                    " or view-through"
                } else {
                    ""
                }
            ),
        });
    }

    let reads_dimensions = crate::plugin::Columns::DIMENSIONS
        .iter()
        .any(|&c| plugin.info.columns.has(c))
        || !plugin.info.attributes.is_empty();
    if reads_dimensions {
        // The events are read back without device, country, placement, currency and attributes
        // (see `Input::event`): every cell would read `unknown`. Refused rather than wrong.
        return Err(RestateError::Plugin {
            path: req.plugin.display().to_string(),
            detail: format!(
                "restating a plugin with a breakdown is not supported yet ({} reads dimension \
                 columns or attributes: restate it without its `dimensions` parameter)",
                plugin.info.name
            ),
        });
    }

    // Which restatement: the one named, or an unfinished (or finished) one of the same plugin
    // build, period and lookback (the same command run again after a crash), or a new one.
    let probe = open(cfg, "restate-probe").await?;
    let existing = restatements(probe.metrics_table());
    let found = match &req.resume {
        Some(id) => Some(
            existing
                .iter()
                .find(|r| &r.id == id)
                .cloned()
                .ok_or_else(|| RestateError::Unknown(id.clone()))?,
        ),
        None => existing
            .iter()
            .find(|r| {
                r.sha256 == plugin.info.sha256
                    && Some(r.from_ms) == req.from_ms
                    && Some(r.to_ms) == req.to_ms
                    && r.lookback_secs == cfg.attribution.lookback_secs
            })
            .cloned(),
    };
    let (from_ms, to_ms, lookback_secs) = match &found {
        Some(r) => (r.from_ms, r.to_ms, r.lookback_secs),
        None => match (req.from_ms, req.to_ms) {
            (Some(f), Some(t)) => (f, t, cfg.attribution.lookback_secs),
            _ => {
                return Err(RestateError::Invalid(
                    "a new restatement needs --from and --to".into(),
                ));
            }
        },
    };
    if from_ms >= to_ms || from_ms.rem_euclid(size_ms) != 0 || to_ms.rem_euclid(size_ms) != 0 {
        return Err(RestateError::Invalid(format!(
            "--from and --to must be window boundaries ({} s windows) with --from before --to",
            cfg.window.size_secs
        )));
    }
    // The lookback the restatement started with, whatever the config says now.
    let mut cfg = cfg.clone();
    cfg.attribution.lookback_secs = lookback_secs;
    let cfg = &cfg;
    if let Some(r) = &found {
        if r.sha256 != plugin.info.sha256 {
            return Err(RestateError::Invalid(format!(
                "restatement {} was started with plugin sha256 {}, not {} ({})",
                r.id,
                r.sha256,
                plugin.info.sha256,
                req.plugin.display()
            )));
        }
        if r.complete {
            on_commit(r);
            return Ok(Report {
                id: r.id.clone(),
                already_complete: true,
                events_snapshot: r.events_snapshot,
                total: started.elapsed(),
                ..Default::default()
            });
        }
    }
    let resumed = found.is_some();
    let mut record = match found {
        Some(r) => r,
        None => {
            let Some(snap) = probe.events_table().metadata().current_snapshot() else {
                return Err(RestateError::Invalid(
                    "campaign_events has no snapshot: nothing to restate".into(),
                ));
            };
            Record {
                id: format!(
                    "r{}-{}",
                    chrono::Utc::now().format("%Y%m%dT%H%M%S"),
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                ),
                plugin: plugin.info.name.clone(),
                version: plugin.info.version.clone(),
                sha256: plugin.info.sha256.clone(),
                from_ms,
                to_ms,
                lookback_secs,
                events_snapshot: snap.snapshot_id(),
                seq: 0,
                done: BTreeMap::new(),
                complete: false,
            }
        }
    };
    drop(probe);
    let mut sink = open(cfg, &format!("restate-{}", record.id)).await?;
    let mut report = Report {
        id: record.id.clone(),
        resumed,
        events_snapshot: record.events_snapshot,
        ..Default::default()
    };
    if !resumed {
        // The start: pins the events snapshot, so the same command finds and resumes it.
        record.seq = 1;
        commit(&mut sink, &[], &record, &mut report).await?;
    }
    on_commit(&record);
    let setup = started.elapsed();
    tracing::info!(id = %record.id, plugin = %record.plugin, version = %record.version,
        from_ms = record.from_ms, to_ms = record.to_ms, events_snapshot = record.events_snapshot,
        resumed, "restatement started");

    let t = Instant::now();
    let input = read_events(sink.events_table(), &record, &cfg.currency.reporting).await?;
    report.read = t.elapsed();
    report.events_read = input.rows;

    let clock = Clock::now();
    for (stream_i, stream) in input.streams.iter().enumerate() {
        let mut scfg = cfg.clone();
        scfg.source.stream = Some(stream.clone().unwrap_or_default());
        let mut proc = Processor::new(&scfg, vec![plugin.another()], Arc::new(Status::default()));
        proc.build_tables = false;
        proc.final_only = true;
        let key = stream.clone().unwrap_or_else(|| NULL_STREAM.to_string());
        let groups = input.groups(stream_i as u32);
        for (partition, rows) in groups {
            let done_through = record
                .done
                .get(&key)
                .and_then(|d| d.get(&partition))
                .copied()
                .unwrap_or(i64::MIN);
            if done_through >= record.to_ms {
                continue;
            }
            // Per window of this partition (start → position of its last event in `rows`), to
            // close each window as soon as its last event was placed.
            let mut last: BTreeMap<i64, usize> = BTreeMap::new();
            for (i, r) in rows.iter().enumerate() {
                let ev = input.event(r);
                let start = crate::window::window_start(ev.time_ms, size_ms);
                if windowed(&input, r, &record, start + size_ms, done_through) {
                    last.insert(start, i);
                }
            }
            // Frontier: (window end, the last position any window up to it needs).
            let mut frontier = Vec::with_capacity(last.len());
            let mut need = 0;
            for (&start, &i) in &last {
                need = need.max(i);
                frontier.push((start + size_ms, need));
            }
            let mut next_close = 0; // index into `frontier`
            let mut closed_since_commit = 0;
            let mut closed_end = done_through;
            for (i, r) in rows.iter().enumerate() {
                let ev = input.event(r);
                let start = crate::window::window_start(ev.time_ms, size_ms);
                let late = !windowed(&input, r, &record, start + size_ms, done_through);
                proc.restate_event(partition, r.offset, &ev, late, &clock);
                report.events_used += 1;
                if i % 1024 == 1023 || i + 1 == rows.len() {
                    proc.flush_plugins();
                    while next_close < frontier.len() && frontier[next_close].1 <= i {
                        closed_end = frontier[next_close].0;
                        next_close += 1;
                        closed_since_commit += 1;
                    }
                    if closed_since_commit >= req.commit_windows && i + 1 < rows.len() {
                        proc.close_through(partition, closed_end);
                        let out = proc.publish(&clock);
                        record
                            .done
                            .entry(key.clone())
                            .or_default()
                            .insert(partition, closed_end);
                        write(&mut sink, &out, stream.as_deref(), &mut record, &mut report).await?;
                        on_commit(&record);
                        closed_since_commit = 0;
                    }
                }
            }
            // End of the partition's input: every window of the period is closed.
            proc.close_through(partition, record.to_ms);
            let out = proc.publish(&clock);
            proc.forget(partition);
            record
                .done
                .entry(key.clone())
                .or_default()
                .insert(partition, record.to_ms);
            write(&mut sink, &out, stream.as_deref(), &mut record, &mut report).await?;
            on_commit(&record);
        }
    }
    // The last commit: complete, with the completion record readers and `--promote` find in
    // the rows (summaries may be expired by table maintenance).
    record.complete = true;
    record.seq += 1;
    let done = RecordRow {
        id: record.id.clone(),
        plugin: record.plugin.clone(),
        version: record.version.clone(),
        sha256: record.sha256.clone(),
        from_ms: record.from_ms,
        to_ms: record.to_ms,
        flag: -1,
        revision: 0,
    };
    commit(
        &mut sink,
        &[record_batch(&[(done, -1)], 0)],
        &record,
        &mut report,
    )
    .await?;
    on_commit(&record);
    report.total = started.elapsed();
    report.compute = report
        .total
        .saturating_sub(report.read + report.commit + setup);
    tracing::info!(id = %record.id, rows = report.rows_written, commits = report.commits,
        events = report.events_read, seconds = report.total.as_secs_f64(), "restatement complete");
    Ok(report)
}

/// Whether an event counts in its window (else it only feeds the touchpoints): not late when
/// the daemon saw it, in the period, and in a window not already written by an earlier run.
#[inline]
fn windowed(input: &Input, r: &Row, record: &Record, end_ms: i64, done_through: i64) -> bool {
    let time_ms = input.time_ms(r);
    !input.is_late(r)
        && time_ms >= record.from_ms
        && time_ms < record.to_ms
        && end_ms > done_through
}

/// Writes the rows of one step with the restatement's new position (one commit).
async fn write(
    sink: &mut IcebergSink,
    rows: &[MetricRecord],
    stream: Option<&str>,
    record: &mut Record,
    report: &mut Report,
) -> Result<(), RestateError> {
    record.seq += 1;
    let batch = metrics_batch_of(rows, stream, Some(&record.id));
    report.rows_written += rows.len() as u64;
    commit(sink, &[batch], record, report).await
}

/// One commit of rows + position, retried while the error is retryable (a retry skips a commit
/// that in fact landed), for up to a minute as the daemon does.
async fn commit(
    sink: &mut IcebergSink,
    batches: &[RecordBatch],
    record: &Record,
    report: &mut Report,
) -> Result<(), RestateError> {
    let t = Instant::now();
    let mut wait = Duration::from_millis(50);
    loop {
        match sink
            .append_metrics(batches, record.props(), record.seq)
            .await
        {
            Ok(_) => break,
            Err(e) if e.retryable() && t.elapsed() < Duration::from_secs(60) => {
                tracing::warn!(error = %e, "restatement commit failed; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => return Err(e.into()),
        }
    }
    report.commits += 1;
    report.commit += t.elapsed();
    Ok(())
}

/// One event row of the input: where it is in the batches, and its order key.
#[derive(Debug, Clone, Copy)]
struct Row {
    stream: u32,
    partition: i32,
    offset: i64,
    batch: u32,
    row: u32,
}

/// The events of a restatement, as read (Arrow batches), with an index in the daemon's order.
struct Input {
    batches: Vec<Cols>,
    /// Distinct streams (None: rows written before the column existed), in first-seen order.
    streams: Vec<Option<String>>,
    /// Sorted by (stream, partition, offset).
    index: Vec<Row>,
    rows: u64,
}

/// The columns of one batch, typed once.
struct Cols {
    kind: arrow_array::StringArray,
    time: arrow_array::PrimitiveArray<TimestampMicrosecondType>,
    campaign: arrow_array::StringArray,
    ad: arrow_array::StringArray,
    user: arrow_array::StringArray,
    revenue: arrow_array::PrimitiveArray<Decimal128Type>,
    late: arrow_array::BooleanArray,
}

impl Input {
    fn groups(&self, stream: u32) -> Vec<(i32, &[Row])> {
        let lo = self.index.partition_point(|r| r.stream < stream);
        let hi = self.index.partition_point(|r| r.stream <= stream);
        let mut out = Vec::new();
        let mut rows = &self.index[lo..hi];
        while let Some(first) = rows.first() {
            let n = rows.partition_point(|r| r.partition == first.partition);
            out.push((first.partition, &rows[..n]));
            rows = &rows[n..];
        }
        out
    }

    #[inline]
    fn time_ms(&self, r: &Row) -> i64 {
        self.batches[r.batch as usize]
            .time
            .value(r.row as usize)
            .div_euclid(1000)
    }

    #[inline]
    fn is_late(&self, r: &Row) -> bool {
        self.batches[r.batch as usize].late.value(r.row as usize)
    }

    #[inline]
    fn event(&self, r: &Row) -> Event<'_> {
        let c = &self.batches[r.batch as usize];
        let i = r.row as usize;
        let kind = match c.kind.value(i) {
            "click" => EventKind::Click,
            "conversion" => EventKind::Conversion,
            _ => EventKind::Impression,
        };
        Event {
            event_id: Cow::Borrowed(""),
            kind,
            time_ms: c.time.value(i).div_euclid(1000),
            campaign_id: Cow::Borrowed(c.campaign.value(i)),
            ad_id: Cow::Borrowed(c.ad.value(i)),
            user_id: Cow::Borrowed(c.user.value(i)),
            revenue_micros: if kind == EventKind::Conversion && c.revenue.is_valid(i) {
                c.revenue.value(i) as i64
            } else {
                0
            },
            // Not read: the plugins get `revenue`, already in the reporting currency (checked
            // in `read_events`).
            original_revenue_micros: 0,
            currency: None,
            device: None,
            country: None,
            placement: None,
            attributes: Vec::new(),
        }
    }
}

/// Reads the events `record` needs at its pinned snapshot: the period, and the clicks of the
/// lookback before it. Copies are left out (they count nowhere); so are events of the lookback
/// other than clicks (only clicks are touchpoints).
///
/// The plugins get each conversion's `revenue` as the daemon converted it (`crate::currency`),
/// and the rows are labelled `reporting`: a conversion whose `revenue` is in another currency
/// (`revenue_currency`, or `currency` on rows written before conversion existed) is refused
/// with its coordinates rather than summed with the others.
async fn read_events(
    events: &Table,
    record: &Record,
    reporting: &str,
) -> Result<Input, RestateError> {
    use futures::TryStreamExt;
    use iceberg::expr::Reference;
    use iceberg::spec::Datum;

    let lo_ms = record
        .from_ms
        .saturating_sub(record.lookback_secs as i64 * 1000);
    // iceberg-rust scans a snapshot with the schema it was written with: `revenue_currency`
    // only where that schema has it.
    let revenue_currency = crate::sink::schema::REVENUE_CURRENCY_COLUMN;
    let has_revenue_currency = events
        .metadata()
        .snapshot_by_id(record.events_snapshot)
        .and_then(|s| s.schema(events.metadata()).ok())
        .is_some_and(|s| s.field_by_name(revenue_currency).is_some());
    let mut columns = vec![
        "event_type",
        "event_time",
        "campaign_id",
        "ad_id",
        "user_id",
        "revenue",
        "kafka_partition",
        "kafka_offset",
        "is_late",
        "is_duplicate",
        crate::sink::schema::STREAM_COLUMN,
        "currency",
    ];
    if has_revenue_currency {
        columns.push(revenue_currency);
    }
    let scan = events
        .scan()
        .snapshot_id(record.events_snapshot)
        .select(columns)
        .with_filter(
            Reference::new("event_time")
                .greater_than_or_equal_to(Datum::timestamptz_micros(lo_ms * 1000))
                .and(
                    Reference::new("event_time")
                        .less_than(Datum::timestamptz_micros(record.to_ms * 1000)),
                ),
        )
        .build()?;
    let mut stream = scan.to_arrow().await?;
    let mut input = Input {
        batches: Vec::new(),
        streams: Vec::new(),
        index: Vec::new(),
        rows: 0,
    };
    let mut stream_ids: HashMap<Option<String>, u32> = HashMap::new();
    while let Some(b) = stream.try_next().await? {
        let col = |name: &str| b.column_by_name(name).expect("selected column").clone();
        let c = Cols {
            kind: col("event_type").as_string::<i32>().clone(),
            time: col("event_time")
                .as_primitive::<TimestampMicrosecondType>()
                .clone(),
            campaign: col("campaign_id").as_string::<i32>().clone(),
            ad: col("ad_id").as_string::<i32>().clone(),
            user: col("user_id").as_string::<i32>().clone(),
            revenue: col("revenue").as_primitive::<Decimal128Type>().clone(),
            late: col("is_late").as_boolean().clone(),
        };
        let parts = col("kafka_partition");
        let parts = parts.as_primitive::<Int32Type>();
        let offs = col("kafka_offset");
        let offs = offs.as_primitive::<Int64Type>();
        let dups = col("is_duplicate");
        let dups = dups.as_boolean();
        let streams = col(crate::sink::schema::STREAM_COLUMN);
        let streams = streams.as_string::<i32>();
        let currencies = col("currency");
        let currencies = currencies.as_string::<i32>();
        let revenue_currencies = has_revenue_currency.then(|| col(revenue_currency));
        let revenue_currencies = revenue_currencies.as_ref().map(|a| a.as_string::<i32>());
        let batch = input.batches.len() as u32;
        input.rows += b.num_rows() as u64;
        // The stream column is one value per file in practice: look it up once per run of rows.
        let mut last: Option<(Option<&str>, u32)> = None;
        for i in 0..b.num_rows() {
            if dups.value(i) {
                continue;
            }
            let t_us = c.time.value(i);
            if t_us < lo_ms * 1000 || t_us >= record.to_ms * 1000 {
                continue;
            }
            if t_us < record.from_ms * 1000 && c.kind.value(i) != "click" {
                continue;
            }
            if c.kind.value(i) == "conversion" {
                let written = revenue_currencies
                    .filter(|a| a.is_valid(i))
                    .map(|a| a.value(i));
                let sent = currencies.is_valid(i).then(|| currencies.value(i));
                if let Some(other) = written.or(sent).filter(|&c| c != reporting) {
                    return Err(RestateError::Invalid(format!(
                        "campaign_events holds a conversion (partition {}, offset {}) whose revenue \
                         is in {other}{}, not in the reporting currency {reporting}: restate with \
                         [currency] reporting = \"{other}\", or over a period without it",
                        parts.value(i),
                        offs.value(i),
                        if written.is_none() {
                            " (written before currency conversion, never converted)"
                        } else {
                            ""
                        }
                    )));
                }
            }
            let s = streams.is_valid(i).then(|| streams.value(i));
            let sid = match last {
                Some((ls, id)) if ls == s => id,
                _ => {
                    let key = s.map(str::to_string);
                    let n = stream_ids.len() as u32;
                    let id = *stream_ids.entry(key.clone()).or_insert_with(|| {
                        input.streams.push(key);
                        n
                    });
                    last = Some((s, id));
                    id
                }
            };
            input.index.push(Row {
                stream: sid,
                partition: parts.value(i),
                offset: offs.value(i),
                batch,
                row: i as u32,
            });
        }
        input.batches.push(c);
    }
    input
        .index
        .sort_unstable_by_key(|r| (r.stream, r.partition, r.offset));
    Ok(input)
}

/// Promotes restatement `id`: readers of the current value see its rows for its plugin and
/// period from this commit on. Any other promoted restatement of the same plugin whose period
/// overlaps is withdrawn in the same commit. Refused unless the restatement is complete.
pub async fn promote(cfg: &Config, id: &str) -> Result<Vec<String>, RestateError> {
    let mut sink = open(
        cfg,
        &format!("restate-ctl-{}", uuid::Uuid::new_v4().simple()),
    )
    .await?;
    let (state, max_rev) = promotions(sink.metrics_table()).await?;
    let Some((r, _)) = state.get(id) else {
        return Err(
            if restatements(sink.metrics_table())
                .iter()
                .any(|r| r.id == id)
            {
                RestateError::Incomplete(id.to_string())
            } else {
                RestateError::Unknown(id.to_string())
            },
        );
    };
    let mut actions = vec![(r.clone(), 1)];
    for (o, promoted) in state.values() {
        if o.id != r.id
            && *promoted
            && o.plugin == r.plugin
            && o.from_ms < r.to_ms
            && r.from_ms < o.to_ms
        {
            actions.push((o.clone(), 0));
        }
    }
    record_actions(&mut sink, "promote", &actions, max_rev + 1).await?;
    Ok(actions[1..].iter().map(|(o, _)| o.id.clone()).collect())
}

/// Rolls restatement `id` back: readers see the live rows of its plugin and period again.
pub async fn rollback(cfg: &Config, id: &str) -> Result<(), RestateError> {
    let mut sink = open(
        cfg,
        &format!("restate-ctl-{}", uuid::Uuid::new_v4().simple()),
    )
    .await?;
    let (state, max_rev) = promotions(sink.metrics_table()).await?;
    match state.get(id) {
        Some((r, true)) => {
            record_actions(&mut sink, "rollback", &[(r.clone(), 0)], max_rev + 1).await
        }
        Some(_) => Err(RestateError::NotPromoted(id.to_string())),
        None => Err(RestateError::Unknown(id.to_string())),
    }
}

/// Record rows: per (record, flag) one `campaign_metrics` row (see [`RecordRow`]).
fn record_batch(actions: &[(RecordRow, i64)], revision: i64) -> RecordBatch {
    let now_ms = chrono::Utc::now().timestamp_millis();
    let batches: Vec<RecordBatch> = actions
        .iter()
        .map(|(r, flag)| {
            let row = MetricRecord {
                window_start_ms: r.from_ms,
                window_end_ms: r.to_ms,
                campaign_id: "".into(),
                ad_id: None,
                dimensions: None,
                plugin_params: None,
                metric: RECORD_METRIC.into(),
                value: *flag as f64,
                numerator: *flag as f64,
                denominator: 0.0,
                plugin: r.plugin.as_str().into(),
                plugin_version: r.version.as_str().into(),
                plugin_sha256: r.sha256.as_str().into(),
                revision,
                partition: -1,
                is_final: true,
                computed_at_ms: now_ms,
                withheld: true,
                shadow: false,
                // A record, not a value: no currency.
                currency: None,
            };
            metrics_batch_of(std::slice::from_ref(&row), None, Some(&r.id))
        })
        .collect();
    arrow_select::concat::concat_batches(&batches[0].schema(), &batches).expect("same schema")
}

/// One commit of promote/rollback records. A commit that loses the catalog's race to another
/// writer (the daemon commits every interval) is retried by iceberg-rust on the reloaded table;
/// once its retries are spent, here, on a fresh load (`append_metrics` reloads after a failed
/// attempt and skips a commit that in fact landed, by writer id and sequence: never two records),
/// at least three times and for up to a minute.
async fn record_actions(
    sink: &mut IcebergSink,
    what: &'static str,
    actions: &[(RecordRow, i64)],
    seq: i64,
) -> Result<(), RestateError> {
    let batch = record_batch(actions, seq);
    let mut props = HashMap::new();
    let list: Vec<(String, i64)> = actions.iter().map(|(r, f)| (r.id.clone(), *f)).collect();
    props.insert(
        ACTIONS.to_string(),
        serde_json::to_string(&list).expect("plain list"),
    );
    let t = Instant::now();
    let mut wait = Duration::from_millis(50);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match sink
            .append_metrics(std::slice::from_ref(&batch), props.clone(), seq as u64)
            .await
        {
            Ok(_) => return Ok(()),
            // At least three attempts: one call can spend more than the minute in iceberg-rust's
            // own retries and their backoff (11 attempts took 108 s against a daemon here).
            Err(e) if e.retryable() && (attempts < 3 || t.elapsed() < Duration::from_secs(60)) => {
                tracing::warn!(error = %e, attempts, "{what} record commit failed; retrying on a fresh load");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                return Err(RestateError::Record {
                    action: what,
                    id: actions[0].0.id.clone(),
                    attempts,
                    secs: t.elapsed().as_secs(),
                    source: e,
                });
            }
        }
    }
}
