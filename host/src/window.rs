//! Window stage: event-time bookkeeping with no I/O and no plugin calls, so it can be tested alone.
//!
//! * [`Watermarks`]: per-partition `max event time − out-of-orderness`; the global watermark is the
//!   minimum over partitions that are not idle. A partition that has been quiet for `idle_timeout`
//!   (wall clock) stops holding the watermark back; if every partition is idle the watermark is the
//!   maximum, so windows still close when traffic stops.
//! * [`Touchpoints`]: each user's recent clicks (the host-owned cross-window state that attribution
//!   plugins receive), bounded per user and pruned by lookback.
//! * [`Interner`]: campaign and ad ids ↔ the `u32`s plugins see.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::time::Instant;

use smallvec::SmallVec;

use rustc_hash::FxHashMap;

use crate::plugin::Span;

/// A remembered click or view (16 bytes; the plugins' `touchpoint` adds its kind when sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touchpoint {
    pub time_ms: i64,
    pub campaign: u32,
    pub ad: u32,
}

/// Start of the tumbling window containing `t`.
pub fn window_start(t_ms: i64, size_ms: i64) -> i64 {
    t_ms.div_euclid(size_ms) * size_ms
}

const HOUR_MS: i64 = 3_600_000;
/// The longest calendar day (a day that ends daylight saving time has 25 hours).
pub const MAX_DAY_MS: i64 = 25 * HOUR_MS;

/// Where the windows of each span start and end: `minute` is the host's window
/// (`window.size_secs`, UTC-aligned), `hour` is UTC-aligned, `day` is the calendar day of the
/// campaign's time zone (`[campaigns]`), 23 to 25 hours long across daylight-saving changes.
pub struct Calendar {
    size_ms: i64,
    default: usize,
    /// Campaign id → index into `zones`.
    by_campaign: rustc_hash::FxHashMap<String, usize>,
    /// Each zone with the last day looked up in it (events mostly fall in the same day).
    zones: Vec<(jiff::tz::TimeZone, std::cell::Cell<(i64, i64)>)>,
}

impl Calendar {
    /// Zones must be valid (`Config::validate` checked them); an invalid one reads as UTC.
    pub fn new(size_ms: i64, cfg: &crate::config::CampaignsConfig) -> Self {
        let mut names: Vec<&str> = vec![&cfg.default_time_zone];
        let mut by_campaign = rustc_hash::FxHashMap::default();
        for (campaign, tz) in &cfg.time_zones {
            let i = names.iter().position(|n| *n == tz).unwrap_or_else(|| {
                names.push(tz);
                names.len() - 1
            });
            by_campaign.insert(campaign.clone(), i);
        }
        let zones = names
            .iter()
            .map(|n| {
                let tz = jiff::tz::TimeZone::get(n).unwrap_or(jiff::tz::TimeZone::UTC);
                (tz, std::cell::Cell::new((0, 0)))
            })
            .collect();
        Calendar {
            size_ms,
            default: 0,
            by_campaign,
            zones,
        }
    }

    /// `[start, end)` of the window of `span` holding an event of `campaign` at `t_ms`.
    #[inline]
    pub fn bounds(&self, span: Span, campaign: &str, t_ms: i64) -> (i64, i64) {
        match span {
            Span::Minute => {
                let s = window_start(t_ms, self.size_ms);
                (s, s + self.size_ms)
            }
            Span::Hour => {
                let s = window_start(t_ms, HOUR_MS);
                (s, s + HOUR_MS)
            }
            Span::Day => {
                let zone = if self.by_campaign.is_empty() {
                    self.default
                } else {
                    *self.by_campaign.get(campaign).unwrap_or(&self.default)
                };
                let (tz, last) = &self.zones[zone];
                let (s, e) = last.get();
                if s <= t_ms && t_ms < e {
                    return (s, e);
                }
                let day = day_of(tz, t_ms);
                last.set(day);
                day
            }
        }
    }

    /// The longest window of `span`.
    pub fn max_len_ms(&self, span: Span) -> i64 {
        match span {
            Span::Minute => self.size_ms,
            Span::Hour => HOUR_MS,
            Span::Day => MAX_DAY_MS,
        }
    }
}

/// The calendar day of `tz` holding `t_ms`, as UTC milliseconds `[start, end)`. A day whose
/// midnight falls in a daylight-saving gap starts at the first instant that exists.
fn day_of(tz: &jiff::tz::TimeZone, t_ms: i64) -> (i64, i64) {
    let day = || -> Result<(i64, i64), jiff::Error> {
        let zdt = jiff::Timestamp::from_millisecond(t_ms)?.to_zoned(tz.clone());
        let start = zdt.start_of_day()?;
        let end = zdt.date().tomorrow()?.to_zoned(tz.clone())?;
        Ok((
            start.timestamp().as_millisecond(),
            end.timestamp().as_millisecond(),
        ))
    };
    // Out of jiff's range (years beyond ±9999; validation rejects such times): UTC days.
    day().unwrap_or_else(|_| {
        let s = window_start(t_ms, 24 * HOUR_MS);
        (s, s + 24 * HOUR_MS)
    })
}

#[derive(Debug, Clone)]
struct PartitionClock {
    max_event_ms: Option<i64>,
    last_active: Instant,
    /// This partition's watermark: it closes this partition's windows. Never moves backwards.
    current: i64,
}

/// Per-partition watermarks. The Kafka partition is the unit of state (see `pipeline::task`):
/// each partition closes its own windows by its own watermark, so no member of a consumer group
/// decides for partitions it does not own, and lateness is a function of the partition's own
/// input (replays and restarts reach the same verdicts).
///
/// A partition's watermark is `min(max event time, host clock + max_clock_skew) −
/// out-of-orderness`: one event stamped in the future cannot close windows early (it is kept, but
/// it moves the watermark no further than the host clock allows). A partition quiet for
/// `idle_timeout` (wall clock) follows the other partitions this member owns (the minimum over
/// the active ones, or the maximum when all are idle), so its windows still close when its
/// traffic stops.
#[derive(Debug)]
pub struct Watermarks {
    out_of_orderness_ms: i64,
    idle_timeout: std::time::Duration,
    max_clock_skew_ms: i64,
    partitions: BTreeMap<i32, PartitionClock>,
}

impl Watermarks {
    pub fn new(out_of_orderness_ms: u64, idle_timeout_ms: u64) -> Self {
        Watermarks {
            out_of_orderness_ms: out_of_orderness_ms as i64,
            idle_timeout: std::time::Duration::from_millis(idle_timeout_ms),
            max_clock_skew_ms: i64::MAX / 4,
            partitions: BTreeMap::new(),
        }
    }

    /// Bounds how far ahead of the host clock an event may move a watermark (`None`: no bound,
    /// for replays of historical files whose host clock says nothing about event time).
    pub fn set_max_clock_skew(&mut self, skew_ms: Option<u64>) {
        self.max_clock_skew_ms = skew_ms.map_or(i64::MAX / 4, |s| s as i64);
    }

    /// Starts tracking a newly owned partition at the watermark its last owner recorded.
    pub fn assign(&mut self, partition: i32, restored: Option<i64>, now: Instant) {
        self.partitions.insert(
            partition,
            PartitionClock {
                max_event_ms: None,
                last_active: now,
                current: restored.unwrap_or(i64::MIN),
            },
        );
    }

    /// Forgets a partition this member no longer owns.
    pub fn revoke(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }

    /// Records an event. Cheap: called for every event.
    #[inline]
    pub fn observe(&mut self, partition: i32, event_ms: i64, now: Instant) {
        let c = self.partitions.entry(partition).or_insert(PartitionClock {
            max_event_ms: None,
            last_active: now,
            current: i64::MIN,
        });
        c.max_event_ms = Some(c.max_event_ms.map_or(event_ms, |m| m.max(event_ms)));
        c.last_active = now;
    }

    /// Recomputes every partition's watermark (none moves backwards); returns the minimum over
    /// owned partitions, for status output. Partitions for which `hold` is true keep theirs (a
    /// partition still replaying: its windows are half rebuilt, and a watermark advanced now
    /// would close them before they are published, or be recorded and close them for good).
    pub fn advance_holding(
        &mut self,
        now: Instant,
        now_ms: i64,
        hold: impl Fn(i32) -> bool,
    ) -> i64 {
        let cap = now_ms.saturating_add(self.max_clock_skew_ms);
        let ooo = self.out_of_orderness_ms;
        let own = |c: &PartitionClock| {
            c.max_event_ms
                .map_or(i64::MIN, |m| m.min(cap).saturating_sub(ooo))
                .max(c.current)
        };
        let mut min_active: Option<i64> = None;
        let mut max_any: Option<i64> = None;
        for c in self.partitions.values() {
            let wm = own(c);
            max_any = Some(max_any.map_or(wm, |m: i64| m.max(wm)));
            if now.duration_since(c.last_active) < self.idle_timeout {
                min_active = Some(min_active.map_or(wm, |m: i64| m.min(wm)));
            }
        }
        let idle_follow = min_active.or(max_any).unwrap_or(i64::MIN);
        for (p, c) in self.partitions.iter_mut() {
            if hold(*p) {
                continue;
            }
            let mut wm = own(c);
            if now.duration_since(c.last_active) >= self.idle_timeout {
                wm = wm.max(idle_follow);
            }
            c.current = c.current.max(wm);
        }
        self.current()
    }

    /// [`advance_holding`](Self::advance_holding) with no partition held.
    pub fn advance(&mut self, now: Instant, now_ms: i64) -> i64 {
        self.advance_holding(now, now_ms, |_| false)
    }

    /// Watermark of one partition (`i64::MIN` if unknown).
    #[inline]
    pub fn of(&self, partition: i32) -> i64 {
        self.partitions
            .get(&partition)
            .map_or(i64::MIN, |c| c.current)
    }

    /// The minimum over owned partitions (`i64::MIN` when none), for status output.
    pub fn current(&self) -> i64 {
        self.partitions
            .values()
            .map(|c| c.current)
            .min()
            .unwrap_or(i64::MIN)
    }

    /// End of a bounded input: each partition's watermark moves `past_ms` beyond the latest
    /// event it saw, which closes every window holding an event (given `past_ms` ≥ window size +
    /// lateness).
    pub fn end_of_input(&mut self, past_ms: i64) {
        for c in self.partitions.values_mut() {
            if let Some(t) = c.max_event_ms {
                c.current = c.current.max(t.saturating_add(past_ms));
            }
        }
    }

    /// Changes the bounds while running (the watermarks still never move backwards).
    pub fn set_params(&mut self, out_of_orderness_ms: u64, idle_timeout_ms: u64) {
        self.out_of_orderness_ms = out_of_orderness_ms as i64;
        self.idle_timeout = std::time::Duration::from_millis(idle_timeout_ms);
    }

    /// Partition → max event time seen, for status output.
    pub fn partitions(&self) -> impl Iterator<Item = (i32, Option<i64>)> + '_ {
        self.partitions.iter().map(|(p, c)| (*p, c.max_event_ms))
    }
}

/// Each user's recent clicks, for attribution.
///
/// Users are keyed by the 64-bit xxh3 hash of their id (not the id: at a million users the
/// strings and their allocations cost more than everything else together). Two users whose ids
/// share a hash would see each other's clicks; with n users the chance of any such pair is about
/// n² / 2⁶⁵ (3·10⁻⁸ at 1M).
///
/// Memory: a table slot is 32 B (8 B key + a 24 B small-vector holding one click inline) plus a
/// control byte, at 44–88 % load: ~50 B for a user with one click; each user with more clicks adds
/// a heap list of 16 B per click. See `bytes_estimate` and the bench's figure per user.
#[derive(Debug, Default)]
pub struct Touchpoints {
    users:
        HashMap<u64, SmallVec<[Touchpoint; 1]>, BuildHasherDefault<crate::dedup::IdentityHasher>>,
    /// Each user's recent views (impressions), kept only while a view-through plugin is loaded
    /// (`record_view` is not called otherwise), bounded and pruned like the clicks with their
    /// own, shorter lookback.
    views:
        HashMap<u64, SmallVec<[Touchpoint; 1]>, BuildHasherDefault<crate::dedup::IdentityHasher>>,
    max_per_user: usize,
    lookback_ms: i64,
    view_lookback_ms: i64,
}

impl Touchpoints {
    pub fn new(max_per_user: usize, lookback_ms: i64) -> Self {
        Touchpoints {
            users: HashMap::default(),
            views: HashMap::default(),
            max_per_user,
            lookback_ms,
            view_lookback_ms: 0,
        }
    }

    /// Remembers a click, keeping the user's list sorted by time and bounded (oldest dropped).
    pub fn record_click(&mut self, user: &str, tp: Touchpoint) {
        let list = self.users.entry(user_key(user)).or_default();
        insert_bounded(list, tp, self.max_per_user);
    }

    /// Remembers a view (for view-through attribution), like a click.
    pub fn record_view(&mut self, user: &str, tp: Touchpoint) {
        let list = self.views.entry(user_key(user)).or_default();
        insert_bounded(list, tp, self.max_per_user);
    }

    /// The user's views with `t − view lookback ≤ view time ≤ t`, oldest first.
    pub fn views_for(&self, user: &str, t_ms: i64) -> &[Touchpoint] {
        let Some(list) = self.views.get(&user_key(user)) else {
            return &[];
        };
        let lo = list.partition_point(|tp| tp.time_ms < t_ms - self.view_lookback_ms);
        let hi = list.partition_point(|tp| tp.time_ms <= t_ms);
        &list[lo..hi.max(lo)]
    }

    /// Sets how far back views count (0 while no view-through plugin is loaded).
    pub fn set_view_lookback(&mut self, ms: i64) {
        self.view_lookback_ms = ms;
    }

    pub fn view_users(&self) -> usize {
        self.views.len()
    }

    /// The user's clicks with `t − lookback ≤ click time ≤ t`, oldest first.
    pub fn for_conversion(&self, user: &str, t_ms: i64) -> &[Touchpoint] {
        let Some(list) = self.users.get(&user_key(user)) else {
            return &[];
        };
        // The list is sorted by time: the window is one contiguous run.
        let lo = list.partition_point(|tp| tp.time_ms < t_ms - self.lookback_ms);
        let hi = list.partition_point(|tp| tp.time_ms <= t_ms);
        &list[lo..hi.max(lo)]
    }

    /// Forgets clicks that no future on-time conversion can use: older than `watermark − lookback`.
    pub fn prune(&mut self, watermark_ms: i64) {
        let horizon = watermark_ms.saturating_sub(self.lookback_ms);
        self.users.retain(|_, list| {
            list.retain(|t| t.time_ms >= horizon);
            !list.is_empty()
        });
        let horizon = watermark_ms.saturating_sub(self.view_lookback_ms);
        self.views.retain(|_, list| {
            list.retain(|t| t.time_ms >= horizon);
            !list.is_empty()
        });
    }

    /// Changes the bounds while running; they apply to conversions from now on.
    pub fn set_params(&mut self, max_per_user: usize, lookback_ms: i64) {
        self.max_per_user = max_per_user;
        self.lookback_ms = lookback_ms;
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }

    /// Marks in `campaigns` and `ads` (indexed by id) every id a remembered click holds.
    pub fn mark_ids(&self, campaigns: &mut [bool], ads: &mut [bool]) {
        for tp in self.users.values().chain(self.views.values()).flatten() {
            if let Some(c) = campaigns.get_mut(tp.campaign as usize) {
                *c = true;
            }
            if let Some(a) = ads.get_mut(tp.ad as usize) {
                *a = true;
            }
        }
    }

    /// Approximate heap bytes held (table slots, spilled click lists).
    pub fn bytes_estimate(&self) -> usize {
        let slot = std::mem::size_of::<(u64, SmallVec<[Touchpoint; 1]>)>() + 1;
        (self.users.capacity() + self.views.capacity()) * slot
            + self
                .users
                .values()
                .chain(self.views.values())
                .filter(|v| v.spilled())
                .map(|v| v.capacity() * std::mem::size_of::<Touchpoint>())
                .sum::<usize>()
    }
}

/// Inserts keeping `list` sorted by time and at most `max` long (oldest dropped).
fn insert_bounded(list: &mut SmallVec<[Touchpoint; 1]>, tp: Touchpoint, max: usize) {
    // Touchpoints mostly arrive in time order: insert from the back.
    let pos = list
        .iter()
        .rposition(|t| t.time_ms <= tp.time_ms)
        .map_or(0, |i| i + 1);
    list.insert(pos, tp);
    if list.len() > max {
        list.remove(0);
    }
}

#[inline]
fn user_key(user: &str) -> u64 {
    twox_hash::XxHash3_64::oneshot(user.as_bytes())
}

/// Strings ↔ dense `u32` ids, bounded by the state that uses them.
///
/// Plugins keep ids inside their opaque accumulators, so an id cannot be renumbered while any
/// open window or remembered click might hold it. Each id records the newest window (start, ms)
/// it was used in; [`evict`](Self::evict) frees ids whose every use is in windows already closed
/// and that no remembered click holds, and `intern` hands freed numbers out again. A stream of
/// garbage `ad_id`s thus costs memory only for as long as its windows are open (issue 14,
/// defect 4).
#[derive(Debug, Default)]
pub struct Interner {
    ids: FxHashMap<std::sync::Arc<str>, u32>,
    names: Vec<Option<std::sync::Arc<str>>>,
    /// Per id: start (ms) of the newest window that used it.
    last_used: Vec<i64>,
    free: Vec<u32>,
    evicted: u64,
}

impl Interner {
    /// The id of `s`, used by the window starting at `window_ms`.
    #[inline]
    pub fn intern(&mut self, s: &str, window_ms: i64) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            self.touch(id, window_ms);
            return id;
        }
        let name: std::sync::Arc<str> = s.into();
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = Some(name.clone());
                self.last_used[id as usize] = window_ms;
                id
            }
            None => {
                self.names.push(Some(name.clone()));
                self.last_used.push(window_ms);
                (self.names.len() - 1) as u32
            }
        };
        self.ids.insert(name, id);
        id
    }

    /// Records that the window starting at `window_ms` uses `id` (a click handed to a conversion).
    #[inline]
    pub fn touch(&mut self, id: u32, window_ms: i64) {
        if let Some(t) = self.last_used.get_mut(id as usize) {
            *t = (*t).max(window_ms);
        }
    }

    pub fn name(&self, id: u32) -> Option<&std::sync::Arc<str>> {
        self.names.get(id as usize).and_then(Option::as_ref)
    }

    /// Frees every id last used by a window starting before `open_from_ms` (no open or future
    /// window can hold it) that `held` does not name (a remembered click). Returns how many.
    pub fn evict(&mut self, open_from_ms: i64, held: &[bool]) -> usize {
        let mut n = 0;
        for id in 0..self.names.len() {
            if self.last_used[id] >= open_from_ms || held.get(id).copied().unwrap_or(false) {
                continue;
            }
            if let Some(name) = self.names[id].take() {
                self.ids.remove(&name);
                self.free.push(id as u32);
                n += 1;
            }
        }
        self.evicted += n as u64;
        n
    }

    /// Ids in use.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Numbers handed out so far (the id space: a slot per number, used or free).
    pub fn capacity(&self) -> usize {
        self.names.len()
    }

    /// Ids freed since the start.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn window_start_floors_including_negative_times() {
        assert_eq!(window_start(59_999, 60_000), 0);
        assert_eq!(window_start(60_000, 60_000), 60_000);
        assert_eq!(window_start(-1, 60_000), -60_000);
    }

    #[test]
    fn each_partition_closes_by_its_own_watermark_and_idle_ones_follow() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(5_000, 10_000);
        w.assign(0, None, t0);
        w.assign(1, None, t0);
        w.observe(0, 100_000, t0);
        // Partition 1 has produced nothing and is not idle: it has no watermark yet, and it
        // does not hold partition 0 back.
        w.advance(t0, 0);
        assert_eq!((w.of(0), w.of(1)), (95_000, i64::MIN));
        w.observe(1, 50_000, t0);
        w.advance(t0, 0);
        assert_eq!((w.of(0), w.of(1)), (95_000, 45_000));
        // Partition 1 goes quiet; after the idle timeout it follows the active partition 0.
        w.observe(0, 120_000, t0 + Duration::from_secs(9));
        w.advance(t0 + Duration::from_secs(11), 0);
        assert_eq!((w.of(0), w.of(1)), (115_000, 115_000));
        // Never backwards, even when partition 1 wakes up with old events.
        w.observe(1, 60_000, t0 + Duration::from_secs(12));
        w.advance(t0 + Duration::from_secs(12), 0);
        assert_eq!(w.of(1), 115_000);
    }

    #[test]
    fn a_restored_watermark_is_kept_and_revoked_partitions_are_forgotten() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(1_000, 600_000);
        w.assign(3, Some(50_000), t0);
        w.observe(3, 20_000, t0);
        w.advance(t0, 0);
        assert_eq!(w.of(3), 50_000);
        w.revoke(3);
        assert_eq!(w.of(3), i64::MIN);
        assert_eq!(w.current(), i64::MIN);
    }

    #[test]
    fn all_idle_partitions_release_the_watermark() {
        let t0 = Instant::now();
        let mut w = Watermarks::new(1_000, 100);
        w.observe(0, 10_000, t0);
        w.observe(1, 20_000, t0);
        w.advance(t0, 0);
        assert_eq!((w.of(0), w.of(1)), (9_000, 19_000));
        w.advance(t0 + Duration::from_secs(1), 0);
        assert_eq!((w.of(0), w.of(1)), (19_000, 19_000));
    }

    /// Issue 14, defect 1: one event an hour ahead of the host clock used to move its
    /// partition's watermark an hour ahead, and on-time events after it were late.
    #[test]
    fn an_event_from_the_future_moves_the_watermark_no_further_than_the_host_clock() {
        let t0 = Instant::now();
        let now_ms = 1_000_000_000;
        let mut w = Watermarks::new(5_000, 600_000);
        w.set_max_clock_skew(Some(1_000));
        w.assign(0, None, t0);
        w.observe(0, now_ms - 2_000, t0);
        w.observe(0, now_ms + 3_600_000, t0);
        w.advance(t0, now_ms);
        assert_eq!(w.of(0), now_ms + 1_000 - 5_000);
        // As the host clock moves on, the watermark follows it up to the future event.
        w.advance(t0, now_ms + 60_000);
        assert_eq!(w.of(0), now_ms + 61_000 - 5_000);
    }

    #[test]
    fn a_million_users_with_recent_clicks_fit_in_128_mb() {
        let mut tp = Touchpoints::new(8, 7 * 86_400_000);
        let mut rng = fastrand::Rng::with_seed(3);
        for u in 0..1_000_000u32 {
            // Most users clicked once, some several times (1.3 clicks per user on average).
            let clicks = if u % 10 < 8 { 1 } else { 1 + rng.usize(1..4) };
            for c in 0..clicks {
                tp.record_click(
                    &format!("user-{u:09}"),
                    Touchpoint {
                        time_ms: c as i64 * 1000,
                        campaign: rng.u32(0..100),
                        ad: rng.u32(0..500),
                    },
                );
            }
        }
        assert_eq!(tp.users(), 1_000_000);
        let bytes = tp.bytes_estimate();
        assert!(bytes <= 128 << 20, "{} MB for 1M users", bytes >> 20);
        assert!(tp.for_conversion("user-000000009", 10_000).len() >= 2);
        assert_eq!(tp.for_conversion("user-000000001", 10_000).len(), 1);
    }

    /// Issue 14, defect 4: every distinct id ever seen used to stay in memory.
    #[test]
    fn ids_are_freed_once_no_open_window_or_click_holds_them_and_reused() {
        let mut i = Interner::default();
        for n in 0..1_000 {
            i.intern(&format!("garbage-{n}"), 0);
        }
        let keep = i.intern("kept-by-a-click", 0);
        let live = i.intern("live", 60_000);
        assert_eq!(i.intern("live", 120_000), live);
        let mut held = vec![false; i.capacity()];
        held[keep as usize] = true;
        // Windows from 60 s on are open: everything used only before is freed, but the click's.
        assert_eq!(i.evict(60_000, &held), 1_000);
        assert_eq!(i.len(), 2);
        assert_eq!(i.evicted(), 1_000);
        assert_eq!(i.name(keep).map(|s| &**s), Some("kept-by-a-click"));
        assert!(i.name(0).is_none());
        // Freed numbers are handed out again: the id space does not grow.
        for n in 0..1_000 {
            i.intern(&format!("more-{n}"), 180_000);
        }
        assert_eq!(i.capacity(), 1_002);
        // A use of an id moves its lifetime on.
        i.touch(live, 240_000);
        assert_eq!(i.evict(200_000, &[]), 1_001);
        assert_eq!(i.name(live).map(|s| &**s), Some("live"));
    }

    #[test]
    fn day_windows_follow_the_campaigns_time_zone_across_daylight_saving() {
        let mut cfg = crate::config::CampaignsConfig::default();
        cfg.time_zones
            .insert("berlin".into(), "Europe/Berlin".into());
        cfg.time_zones
            .insert("ny".into(), "America/New_York".into());
        let cal = Calendar::new(60_000, &cfg);
        let ms = |s: &str| s.parse::<jiff::Timestamp>().unwrap().as_millisecond();
        // 2026-03-29: Berlin springs forward (23 h day); 2026-10-25: falls back (25 h).
        let t = ms("2026-03-29T12:00:00Z");
        assert_eq!(
            cal.bounds(Span::Day, "berlin", t),
            (ms("2026-03-28T23:00:00Z"), ms("2026-03-29T22:00:00Z"))
        );
        let t = ms("2026-10-25T12:00:00Z");
        let (s, e) = cal.bounds(Span::Day, "berlin", t);
        assert_eq!(
            (s, e),
            (ms("2026-10-24T22:00:00Z"), ms("2026-10-25T23:00:00Z"))
        );
        assert_eq!(e - s, MAX_DAY_MS);
        // The same instant is another day in New York, and a UTC day for unlisted campaigns.
        let t = ms("2026-06-01T02:00:00Z");
        assert_eq!(
            cal.bounds(Span::Day, "ny", t),
            (ms("2026-05-31T04:00:00Z"), ms("2026-06-01T04:00:00Z"))
        );
        assert_eq!(
            cal.bounds(Span::Day, "other", t),
            (ms("2026-06-01T00:00:00Z"), ms("2026-06-02T00:00:00Z"))
        );
        // The cached day is not reused for an instant outside it.
        assert_eq!(
            cal.bounds(Span::Day, "berlin", ms("2026-06-01T21:59:59.999Z")),
            (ms("2026-05-31T22:00:00Z"), ms("2026-06-01T22:00:00Z"))
        );
        assert_eq!(
            cal.bounds(Span::Day, "berlin", ms("2026-06-01T22:00:00Z")),
            (ms("2026-06-01T22:00:00Z"), ms("2026-06-02T22:00:00Z"))
        );
        assert_eq!(
            cal.bounds(Span::Hour, "berlin", ms("2026-06-01T22:59:00Z")),
            (ms("2026-06-01T22:00:00Z"), ms("2026-06-01T23:00:00Z"))
        );
    }

    #[test]
    fn touchpoints_are_bounded_sorted_and_filtered_by_lookback() {
        let mut tp = Touchpoints::new(3, 1_000);
        for (t, c) in [(500, 1), (100, 2), (900, 3), (700, 4)] {
            tp.record_click(
                "u",
                Touchpoint {
                    time_ms: t,
                    campaign: c,
                    ad: 0,
                },
            );
        }
        // Oldest (t=100) dropped; kept sorted.
        let got: Vec<_> = tp
            .for_conversion("u", 1_000)
            .iter()
            .map(|t| t.time_ms)
            .collect();
        assert_eq!(got, vec![500, 700, 900]);
        // Clicks after the conversion and outside the lookback are excluded.
        let got: Vec<_> = tp
            .for_conversion("u", 1_600)
            .iter()
            .map(|t| t.time_ms)
            .collect();
        assert_eq!(got, vec![700, 900]);
        assert!(tp.for_conversion("nobody", 1_000).is_empty());
        tp.prune(1_800);
        assert_eq!(tp.for_conversion("u", 1_000).len(), 1);
        tp.prune(5_000);
        assert_eq!(tp.users(), 0);
    }
}
