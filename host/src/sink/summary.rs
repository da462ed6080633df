//! The snapshot summary: what every commit records about the partitions it covers, and the one
//! place that reads it back (a restart, a claim, the fence, the tests' probe).
//!
//! The Kafka partition is the unit of state and of ownership. Every commit of a member of the
//! consumer group records, for each partition it owns (or just gave up), the position a new owner
//! resumes from and the partition's **epoch**: a fencing token that grows by one each time a
//! member claims the partition (see [`super::IcebergSink::claim`]). Readers of the history take,
//! per partition, the entry with the highest epoch (the newest among equals), never simply the
//! newest snapshot: a paused member that wakes up after its partitions moved cannot rewind them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use arrow_array::RecordBatch;
use iceberg::table::Table;

pub const WRITER_ID: &str = "admetrics.writer-id";
pub const COMMIT_SEQ: &str = "admetrics.commit-seq";
pub const TOPIC: &str = "admetrics.topic";
/// JSON object partition → next offset to read.
pub const OFFSETS: &str = "admetrics.offsets";
/// JSON object partition → first offset a restart must replay to rebuild open windows and
/// attribution state (≤ the offset above).
pub const REPLAY_FROM: &str = "admetrics.replay-from";
/// JSON object partition → that partition's watermark (ms): windows it had closed stay closed.
pub const WATERMARKS: &str = "admetrics.watermarks";
/// JSON object partition → end (ms) of the newest window that partition has finalized: a window
/// ending at or before it is closed for good, whatever `allowed_lateness_ms` says later.
pub const CLOSED_THROUGH: &str = "admetrics.closed-through";
/// JSON object partition → epoch of the member that wrote this entry (or claims the partition).
pub const EPOCHS: &str = "admetrics.epochs";
/// A claim's unique id (a retried claim recognises its own earlier attempt by it).
pub const CLAIM_ID: &str = "admetrics.claim-id";
/// Present (value "true") on a claim: an empty commit that only raises epochs.
pub const CLAIM: &str = "admetrics.claim";
/// The smallest watermark of the partitions in this commit (for people reading summaries).
pub const WATERMARK: &str = "admetrics.watermark";
/// How far back (ms of event time) the replay-from above keeps clicks for attribution.
pub const CLICK_HORIZON: &str = "admetrics.click-horizon-ms";
/// On every `campaign_metrics` commit that adds rows (the daemon's and a restatement's): JSON
/// list, sorted, of the plugin builds whose rows the commit holds, each
/// `{"name", "version", "sha256", "wit", "params"}` (see [`encode_plugins`]).
pub const PLUGINS: &str = "admetrics.plugins";

/// Where one partition stands in the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Next offset not yet in the table.
    pub offset: i64,
    /// First offset a new owner replays to rebuild state (≤ `offset`).
    pub replay_from: i64,
    pub watermark_ms: Option<i64>,
    /// Windows ending at or before this are final (`None`: nothing closed yet, or a summary
    /// written before this key existed).
    pub closed_through_ms: Option<i64>,
    /// Epoch of the member that recorded it.
    pub epoch: u64,
}

/// The committed ids of a partition's dedup horizon, handed to its new owner.
#[derive(Debug, Clone, Copy)]
pub struct CommittedId {
    pub hash: u64,
    pub offset: i64,
    pub time_ms: i64,
    pub was_copy: bool,
}

/// What a claim hands the new owner of a partition.
#[derive(Debug, Clone, Default)]
pub struct Claimed {
    pub partition: i32,
    /// The epoch this member now owns the partition with.
    pub epoch: u64,
    /// Where `campaign_events` stands (`None`: never committed).
    pub position: Option<Position>,
    /// Next offset not yet in `dead_letters` (committed before the events table).
    pub dead_letter_floor: Option<i64>,
    /// Ids committed within the dedup horizon before the position, with their verdicts.
    pub ids: Vec<CommittedId>,
}

/// Writes the summary keys of a commit covering `positions`.
pub fn encode(
    props: &mut HashMap<String, String>,
    positions: &BTreeMap<i32, Position>,
    click_horizon_ms: i64,
) {
    let map = |f: &dyn Fn(&Position) -> Option<i64>| {
        let m: BTreeMap<i32, i64> = positions
            .iter()
            .filter_map(|(p, pos)| f(pos).map(|v| (*p, v)))
            .collect();
        serde_json::to_string(&m).expect("map serialises")
    };
    props.insert(OFFSETS.into(), map(&|p| Some(p.offset)));
    props.insert(REPLAY_FROM.into(), map(&|p| Some(p.replay_from)));
    props.insert(WATERMARKS.into(), map(&|p| p.watermark_ms));
    props.insert(CLOSED_THROUGH.into(), map(&|p| p.closed_through_ms));
    props.insert(EPOCHS.into(), map(&|p| Some(p.epoch as i64)));
    if let Some(min) = positions.values().filter_map(|p| p.watermark_ms).min() {
        props.insert(WATERMARK.into(), min.to_string());
    }
    props.insert(CLICK_HORIZON.into(), click_horizon_ms.to_string());
}

/// Writes [`PLUGINS`]: the plugin builds whose rows `batches` (of `campaign_metrics`) hold.
///
/// Lineage (issue 18): every metric row names its plugin, version and sha256 in its own columns;
/// what it does not name (the WIT package the build was loaded with, the parameters it ran with)
/// is recorded here, once per commit, so the per-row cost stays zero: a reader finds the
/// snapshot that added a row (the data file's manifest entry, or the commit sequence its
/// revision carries) and looks its sha256 up in this list (`scripts/lineage.py`).
///
/// Why the builds of the rows and not "the versions in force": the set is read off the very rows
/// committed, so it is exact by construction, including a retired version still finishing the
/// windows it opened, or a restatement's build (none of which the registry's active set names),
/// and the sink needs no handle on the plugin registry to write it. A commit with no metric
/// rows adds no row to explain and gets no key. `$restatement` record rows (promote, rollback,
/// completion) are computed by no plugin and are left out.
///
/// `wit` is what [`crate::plugin::wit_of`] says for the sha256 (`null` for a build this process
/// never loaded, which cannot produce rows). `params` is the object the rows' `plugin_params`
/// column holds (the build's `[plugins.config.NAME]` as passed to `init`), `{}` where it is NULL
/// (no parameters). Parameters are not a function of the sha256 (a configuration change reloads
/// the same bytes with others), so they are read off the rows like the build itself: a commit
/// holding rows of one build under two parameter sets lists it twice.
pub fn encode_plugins(props: &mut HashMap<String, String>, batches: &[&RecordBatch]) {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    // (name, version, sha256, params JSON or None)
    let mut builds: BTreeSet<(String, String, String, Option<String>)> = BTreeSet::new();
    for b in batches {
        let col = |name: &str| b.column_by_name(name).map(|c| c.as_string::<i32>().clone());
        let (Some(metric), Some(name), Some(version), Some(sha)) = (
            col("metric"),
            col("plugin"),
            col("plugin_version"),
            col("plugin_sha256"),
        ) else {
            continue;
        };
        let params = col(crate::sink::schema::PLUGIN_PARAMS_COLUMN);
        let params_of = |i: usize| {
            params
                .as_ref()
                .filter(|p| !p.is_null(i))
                .map(|p| p.value(i))
        };
        // Rows come in runs of one build: compare with the previous row before allocating.
        let mut last: Option<(&str, Option<&str>)> = None;
        for i in 0..b.num_rows() {
            if metric.value(i) == crate::restate::RECORD_METRIC || sha.is_null(i) {
                continue;
            }
            let this = (sha.value(i), params_of(i));
            if last == Some(this) {
                continue;
            }
            last = Some(this);
            builds.insert((
                name.value(i).to_string(),
                version.value(i).to_string(),
                sha.value(i).to_string(),
                this.1.map(str::to_string),
            ));
        }
    }
    if builds.is_empty() {
        return;
    }
    let list: Vec<serde_json::Value> = builds
        .into_iter()
        .map(|(name, version, sha256, params)| {
            let wit = crate::plugin::wit_of(&sha256);
            // The column holds `plugin::params_json`'s object; anything else (a row written by
            // something else) is recorded as the text it is rather than dropped.
            let params = match params {
                None => serde_json::json!({}),
                Some(text) => serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .filter(serde_json::Value::is_object)
                    .unwrap_or(serde_json::Value::String(text)),
            };
            serde_json::json!({
                "name": name,
                "version": version,
                "sha256": sha256,
                "wit": wit,
                "params": params,
            })
        })
        .collect();
    props.insert(
        PLUGINS.into(),
        serde_json::to_string(&list).expect("list serialises"),
    );
}

/// Writes the summary keys of a claim of `epochs`.
pub fn encode_claim(props: &mut HashMap<String, String>, epochs: &BTreeMap<i32, u64>) {
    props.insert(
        EPOCHS.into(),
        serde_json::to_string(epochs).expect("map serialises"),
    );
    props.insert(CLAIM.into(), "true".into());
}

fn json_map(props: &HashMap<String, String>, key: &str) -> BTreeMap<i32, i64> {
    props
        .get(key)
        .and_then(|j| serde_json::from_str::<BTreeMap<i32, i64>>(j).ok())
        .unwrap_or_default()
}

/// The entries one snapshot's summary records for `topic`: partition → (position if it
/// records one, epoch). Summaries written before epochs existed read as epoch 0.
pub fn entries(
    props: &HashMap<String, String>,
    topic: &str,
) -> BTreeMap<i32, (Option<Position>, u64)> {
    let mut out = BTreeMap::new();
    if props.get(TOPIC).map(String::as_str) != Some(topic) {
        return out;
    }
    let offsets = json_map(props, OFFSETS);
    let replay = json_map(props, REPLAY_FROM);
    let watermarks = json_map(props, WATERMARKS);
    let closed = json_map(props, CLOSED_THROUGH);
    let epochs = json_map(props, EPOCHS);
    let legacy_watermark: Option<i64> = props.get(WATERMARK).and_then(|w| w.parse().ok());
    for (&p, &e) in &epochs {
        out.insert(p, (None, e.max(0) as u64));
    }
    for (&p, &offset) in &offsets {
        let epoch = epochs.get(&p).map_or(0, |e| (*e).max(0) as u64);
        let pos = Position {
            offset,
            replay_from: replay.get(&p).copied().unwrap_or(offset).min(offset),
            watermark_ms: watermarks
                .get(&p)
                .copied()
                .or(legacy_watermark.filter(|_| !props.contains_key(WATERMARKS))),
            closed_through_ms: closed.get(&p).copied(),
            epoch,
        };
        out.insert(p, (Some(pos), epoch));
    }
    out
}

/// Summary properties of `table`'s current snapshot and its ancestors, newest first (the
/// history a commit builds on, not snapshots of abandoned branches).
pub fn ancestry(table: &Table) -> impl Iterator<Item = (i64, &HashMap<String, String>)> + '_ {
    let meta = table.metadata();
    std::iter::successors(meta.current_snapshot(), move |s| {
        s.parent_snapshot_id()
            .and_then(|id| meta.snapshot_by_id(id))
    })
    .map(|s| (s.snapshot_id(), &s.summary().additional_properties))
}

/// Per partition of `topic` in `table`'s history: the recorded position with the highest epoch
/// (the newest among equal epochs), and the highest epoch any entry (claims included) carries.
pub fn positions(table: &Table, topic: &str) -> (BTreeMap<i32, Position>, BTreeMap<i32, u64>) {
    let mut pos: BTreeMap<i32, Position> = BTreeMap::new();
    let mut max_epoch: BTreeMap<i32, u64> = BTreeMap::new();
    for (_, props) in ancestry(table) {
        for (p, (position, epoch)) in entries(props, topic) {
            let m = max_epoch.entry(p).or_insert(epoch);
            *m = (*m).max(epoch);
            if let Some(position) = position {
                match pos.get(&p) {
                    Some(have) if have.epoch >= position.epoch => {}
                    _ => {
                        pos.insert(p, position);
                    }
                }
            }
        }
    }
    (pos, max_epoch)
}

/// The newest click horizon and the highest commit sequence recorded for `topic`.
pub fn horizon_and_seq(table: &Table, topic: &str) -> (Option<i64>, u64) {
    let mut horizon = None;
    let mut seq = 0;
    for (_, props) in ancestry(table) {
        if props.get(TOPIC).map(String::as_str) != Some(topic) {
            continue;
        }
        if horizon.is_none() {
            horizon = props.get(CLICK_HORIZON).and_then(|w| w.parse().ok());
        }
        if let Some(s) = props.get(COMMIT_SEQ).and_then(|s| s.parse::<u64>().ok()) {
            seq = seq.max(s);
        }
    }
    (horizon, seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The builds of a commit's rows with their parameters, once each, sorted; record rows and empty
    /// commits name none.
    #[test]
    fn plugins_lists_the_builds_of_the_committed_rows() {
        use crate::sink::schema::{MetricRecord, metrics_batch};
        let row = |plugin: &str, version: &str, sha: &str, metric: &str| MetricRecord {
            window_start_ms: 0,
            window_end_ms: 60_000,
            campaign_id: "c".into(),
            ad_id: None,
            dimensions: None,
            plugin_params: (plugin == "reach").then(|| r#"{"window":"minute"}"#.into()),
            metric: metric.into(),
            value: 0.0,
            numerator: 0.0,
            denominator: 0.0,
            plugin: plugin.into(),
            plugin_version: version.into(),
            plugin_sha256: sha.into(),
            revision: 1,
            partition: 0,
            is_final: false,
            computed_at_ms: 0,
            withheld: false,
            shadow: false,
            currency: None,
        };
        let rows = [
            row("ctr", "0.2.0", "bb", "ctr"),
            row("ctr", "0.1.0", "aa", "ctr"),
            row("ctr", "0.2.0", "bb", "ctr"),
            row("cvr", "0.1.0", "cc", "cvr"),
            row("ctr", "0.1.0", "aa", "ctr"),
            row("ctr", "9", "rr", crate::restate::RECORD_METRIC),
            row("reach", "0.1.0", "dd", "reach"),
            row("reach", "0.1.0", "dd", "frequency"),
        ];
        // The same build under another parameter set (a configuration change) in the same commit.
        let mut day = row("reach", "0.1.0", "dd", "reach");
        day.plugin_params = Some(r#"{"exact_threshold":"10","window":"day"}"#.into());
        let mut props = HashMap::new();
        encode_plugins(
            &mut props,
            &[&metrics_batch(&rows, "s"), &metrics_batch(&[day], "s")],
        );
        let got: serde_json::Value = serde_json::from_str(&props[PLUGINS]).unwrap();
        let want = serde_json::json!([
            {"name": "ctr", "version": "0.1.0", "sha256": "aa", "wit": null, "params": {}},
            {"name": "ctr", "version": "0.2.0", "sha256": "bb", "wit": null, "params": {}},
            {"name": "cvr", "version": "0.1.0", "sha256": "cc", "wit": null, "params": {}},
            {"name": "reach", "version": "0.1.0", "sha256": "dd", "wit": null,
             "params": {"exact_threshold": "10", "window": "day"}},
            {"name": "reach", "version": "0.1.0", "sha256": "dd", "wit": null,
             "params": {"window": "minute"}},
        ]);
        assert_eq!(got, want);

        let mut props = HashMap::new();
        encode_plugins(&mut props, &[&metrics_batch(&rows[5..6], "s")]);
        encode_plugins(&mut props, &[]);
        assert!(!props.contains_key(PLUGINS));
    }

    #[test]
    fn entries_round_trip_and_legacy_summaries_read_as_epoch_zero() {
        let mut props = HashMap::new();
        props.insert(TOPIC.to_string(), "t".to_string());
        let positions = BTreeMap::from([
            (
                0,
                Position {
                    offset: 10,
                    replay_from: 4,
                    watermark_ms: Some(99),
                    closed_through_ms: Some(60),
                    epoch: 3,
                },
            ),
            (
                5,
                Position {
                    offset: 7,
                    replay_from: 7,
                    watermark_ms: None,
                    closed_through_ms: None,
                    epoch: 1,
                },
            ),
        ]);
        encode(&mut props, &positions, 1234);
        let got = entries(&props, "t");
        assert_eq!(got[&0], (Some(positions[&0]), 3));
        assert_eq!(got[&5], (Some(positions[&5]), 1));
        assert!(entries(&props, "other").is_empty());

        let mut legacy = HashMap::new();
        legacy.insert(TOPIC.to_string(), "t".to_string());
        legacy.insert(OFFSETS.to_string(), r#"{"2":50}"#.to_string());
        legacy.insert(REPLAY_FROM.to_string(), r#"{"2":40}"#.to_string());
        legacy.insert(WATERMARK.to_string(), "777".to_string());
        let got = entries(&legacy, "t");
        assert_eq!(
            got[&2],
            (
                Some(Position {
                    offset: 50,
                    replay_from: 40,
                    watermark_ms: Some(777),
                    closed_through_ms: None,
                    epoch: 0
                }),
                0
            )
        );

        let mut claim = HashMap::new();
        claim.insert(TOPIC.to_string(), "t".to_string());
        encode_claim(&mut claim, &BTreeMap::from([(2, 9)]));
        assert_eq!(entries(&claim, "t")[&2], (None, 9));
    }
}
