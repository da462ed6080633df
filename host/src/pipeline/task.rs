//! Per-partition state: what one Kafka partition owns, as a Kafka Streams task does.
//!
//! A partition's windows, its users' touchpoints, its dedup ids, its position and replay point
//! live here, and nowhere else. A member of the consumer group that is assigned a partition
//! claims it (raising its epoch, see `sink::summary`), builds a [`Task`] from the claimed
//! position and replays from the recorded replay point; on revocation the task's position goes
//! into the next commit (which the fence drops if the new owner claimed first) and the task is
//! dropped. Nothing is shared between partitions but the interned ids and the plugin versions,
//! so no member ever computes or closes a window from partitions it does not own.

use std::collections::BTreeMap;

use crate::dedup::SeenIds;
use crate::plugin::{AttributeSet, Columns, EventBatch};
use crate::sink::schema::MetricRecord;
use crate::sink::{Claimed, Position};
use crate::window::Touchpoints;

/// One event-time window of one partition: pending events not yet given to the plugins, and for
/// each plugin version that was active when the window opened, its accumulator. A window is
/// computed entirely by the versions it opened with, so a swap never mixes versions inside a
/// window. An accumulator becomes `None` once its plugin failed on this window: its rows would be
/// wrong, so none are published for the window.
pub(super) struct Window {
    pub pending: EventBatch,
    /// What `pending` carries: the union of what the window's versions ask for, fixed when
    /// the window opens (as the versions are).
    pub needs: Needs,
    /// The custom attributes `pending` carries, (slot, name) by slot: its `attributes[slot]`
    /// holds each event's interned value of `name`.
    pub attribute_names: Vec<(usize, std::sync::Arc<str>)>,
    /// Per host dimension index (`Columns::DIMENSIONS` order, then attribute slots: see
    /// `plugin::ATTRIBUTE_DIMENSIONS`): interned value → the order of its first appearance in
    /// this window of this partition. A plugin sees values ranked past its
    /// `max_dimension_values` as `other`; ranking by offset order makes the fold the same in a
    /// replay or a restatement.
    pub ranks: Vec<rustc_hash::FxHashMap<u32, u32>>,
    pub accs: Vec<(usize, Option<Vec<u8>>)>,
    /// Per entry of `accs`: the rows last published from it (to retract if it fails later).
    pub published: Vec<Vec<MetricRecord>>,
    /// Rows to publish as withheld at the next revision.
    pub retract: Vec<MetricRecord>,
    /// Campaign ids (interned) with events in this window of this partition. A plugin that
    /// failed on the window has every metric it declares published as withheld for each of
    /// them, so a reader summing partitions' shares sees the key as unknown even when the
    /// plugin never published a row for this partition (a missing share would otherwise read
    /// as a smaller total that looks complete).
    pub campaigns: rustc_hash::FxHashSet<u32>,
    /// The smallest offset of an event in this window: a restart replays from there to rebuild
    /// the window.
    pub min_offset: i64,
    pub dirty: bool,
}

/// What a window's pending batch must carry for its plugin versions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Needs {
    pub columns: Columns,
    pub attributes: AttributeSet,
    pub touchpoints: bool,
    pub views: bool,
}

impl Window {
    /// A plugin failed on this window: whatever it published before is incomplete now.
    pub fn poison(&mut self, i: usize) {
        self.accs[i].1 = None;
        let rows = std::mem::take(&mut self.published[i]);
        self.retract.extend(rows);
        self.dirty = true;
    }
}

/// Everything one owned partition holds.
pub(super) struct Task {
    /// The epoch this member claimed the partition with: the fencing token of its commits and
    /// the high half of its revisions.
    pub epoch: u64,
    pub windows: BTreeMap<super::processor::WindowKey, Window>,
    pub touchpoints: Touchpoints,
    /// Event ids seen within the dedup horizon. Deduplication is per partition: producers key
    /// events by user id, so a retried delivery lands on the same partition.
    pub seen: SeenIds,
    /// Next offset not yet processed (replayed or new).
    pub offset: i64,
    /// First offset not yet in `campaign_events` when claimed: anything below is replayed into
    /// state but not written again.
    pub floor: i64,
    /// First offset not yet in `dead_letters` (committed before the events table).
    pub dead_letter_floor: i64,
    /// The replay point the claim recorded: kept in summaries until the replay has passed the
    /// floor, so a crash during the replay does not lose the state still to be rebuilt.
    pub claimed_replay_from: i64,
    /// Next offset handed to this task: a message below it is a re-delivery (a seek in the
    /// source) and must not count twice. `None` until the first message.
    pub seen_to: Option<i64>,
    /// Windows ending at or before this (ms) are final: published as such, or closed before any
    /// event reached them. Recorded in every summary, so raising `allowed_lateness_ms` (live or
    /// across a restart) cannot reopen a window readers already hold as final.
    pub closed_through: i64,
    /// Per minute of event time, the smallest offset of a click: how far back a restart must
    /// replay to rebuild the touchpoints still inside the lookback.
    pub click_offsets: BTreeMap<i64, i64>,
    /// The same for remembered views (only while a view-through plugin is loaded), within the
    /// view lookback.
    pub view_offsets: BTreeMap<i64, i64>,
}

impl Task {
    pub fn new(
        claim: &Claimed,
        closed_through: i64,
        touchpoints: Touchpoints,
        seen: SeenIds,
    ) -> Self {
        let pos = claim.position.unwrap_or_default();
        Task {
            epoch: claim.epoch,
            windows: BTreeMap::new(),
            touchpoints,
            seen,
            offset: pos.replay_from,
            floor: pos.offset,
            dead_letter_floor: claim.dead_letter_floor.unwrap_or(0),
            claimed_replay_from: pos.replay_from,
            seen_to: None,
            closed_through,
            click_offsets: BTreeMap::new(),
            view_offsets: BTreeMap::new(),
        }
    }

    /// Still rebuilding state below the floor: no revision is published (a rebuilt window
    /// never shows a reader a smaller number than the revision it replaces).
    pub fn replaying(&self) -> bool {
        self.offset < self.floor
    }

    /// Where this partition stands for the next summary: the next offset, the first offset a
    /// restart must replay (the smallest of the next offset, the first offset of every open
    /// window and the first click still inside the attribution horizon), the watermark, the end
    /// of the windows closed for good.
    pub fn position(
        &mut self,
        watermark_ms: i64,
        click_horizon_ms: i64,
        view_horizon_ms: i64,
    ) -> Position {
        let offset = self.offset.max(self.floor);
        let mut replay_from = offset;
        for w in self.windows.values() {
            replay_from = replay_from.min(w.min_offset);
        }
        let horizon_min = watermark_ms
            .saturating_sub(click_horizon_ms)
            .div_euclid(60_000);
        // Buckets wholly before the horizon can no longer be needed.
        while let Some((&b, _)) = self.click_offsets.first_key_value() {
            if b >= horizon_min {
                break;
            }
            self.click_offsets.pop_first();
        }
        if let Some(&o) = self.click_offsets.values().min() {
            replay_from = replay_from.min(o);
        }
        let horizon_min = watermark_ms
            .saturating_sub(view_horizon_ms)
            .div_euclid(60_000);
        while let Some((&b, _)) = self.view_offsets.first_key_value() {
            if b >= horizon_min {
                break;
            }
            self.view_offsets.pop_first();
        }
        if let Some(&o) = self.view_offsets.values().min() {
            replay_from = replay_from.min(o);
        }
        if self.replaying() {
            replay_from = replay_from.min(self.claimed_replay_from);
        }
        Position {
            offset,
            replay_from,
            watermark_ms: (watermark_ms > i64::MIN).then_some(watermark_ms),
            closed_through_ms: (self.closed_through > i64::MIN).then_some(self.closed_through),
            epoch: self.epoch,
        }
    }
}
