//! The snapshot summary: what every commit records about the partitions it covers, and the one
//! place that reads it back (a restart, a claim, the fence, the tests' probe).
//!
//! The Kafka partition is the unit of state and of ownership. Every commit of a member of the
//! consumer group records, for each partition it owns (or just gave up), the position a new owner
//! resumes from and the partition's **epoch**: a fencing token that grows by one each time a
//! member claims the partition (see [`super::IcebergSink::claim`]). Readers of the history take,
//! per partition, the entry with the highest epoch (the newest among equals), never simply the
//! newest snapshot: a paused member that wakes up after its partitions moved cannot rewind them.

use std::collections::{BTreeMap, HashMap};

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
