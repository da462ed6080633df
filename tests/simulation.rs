//! Deterministic simulation of the processor against an in-memory stand-in for the tables:
//! seeded event streams over several partitions (disorder within the watermark bound, copies,
//! hostile messages, valid messages damaged byte by byte, ids of every length), crashes at random points of the commit sequence
//! (nothing, the dead letters, or dead letters + metrics landed), random rebalances between two
//! members (revoke → handoff → claim by the other, with stale commits fenced), compared with a
//! reference model of the metrics written here, independently of the host: every message once in
//! `campaign_events` or `dead_letters`, copies flagged, and every window's final counts, revenue
//! and last-click attribution equal to the model's.
//!
//! The stand-in keeps the sink's rules, not its code: commits land table by table in the order
//! dead letters → metrics → events; a claim raises a partition's epoch above every epoch in the
//! three histories; a commit's rows of a partition whose history holds a higher epoch are left
//! out (the fence); a claim reads the position with the highest epoch (newest among equals).
//!
//! `ADMETRICS_SIM_SEEDS` (default 3 000) seeds run in CI; a failing seed is printed, and
//! `ADMETRICS_SIM_SEED=N` replays exactly that one.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use admetrics::config::Config;
use admetrics::dedup::hash_id;
use admetrics::pipeline::{Clock, Processor};
use admetrics::plugin::{Plugin, PluginRuntime};
use admetrics::sink::{Claimed, CommitBatch, CommittedId, Position};
use admetrics::source::RawMessage;
use admetrics::status::Status;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int32Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};

const WINDOW_MS: i64 = 60_000;
const OOO_MS: i64 = 5_000;
const LOOKBACK_MS: i64 = 600_000;

/// One generated message and what the model knows of it.
#[derive(Clone, Debug)]
struct Msg {
    payload: Vec<u8>,
    event: Option<Ev>,
}

#[derive(Clone, Debug)]
struct Ev {
    id: String,
    kind: u8, // 0 impression, 1 click, 2 conversion
    time_ms: i64,
    campaign: String,
    ad: String,
    user: String,
    micros: i64,
}

fn gen_partition(rng: &mut fastrand::Rng, p: i32, n: usize, base: i64) -> Vec<Msg> {
    let mut out: Vec<Msg> = Vec::new();
    let mut t = base;
    // Distinct event times within a partition keep "the latest click" unambiguous.
    let mut used = std::collections::HashSet::new();
    let users: Vec<String> = (0..8)
        .map(|u| {
            // Ids of every accepted length (the limit is 256 bytes).
            let len = [1usize, 5, 40, 240][rng.usize(0..4)];
            format!("u{p}-{u}-{}", "x".repeat(len))
        })
        .collect();
    for i in 0..n {
        t += rng.i64(0..1_500);
        if rng.f64() < 0.04 {
            // Hostile input: never an event, always a dead letter.
            let bad = match rng.u32(0..6) {
                5 => format!(
                    r#"{{"event_id":"long-{p}-{i}","event_type":"click","event_time":{t},"campaign_id":"c","ad_id":"a","user_id":"{}"}}"#,
                    "u".repeat(257)
                ),
                0 => "not json".to_string(),
                1 => r#"{"event_id":"x","event_type":"click"}"#.to_string(),
                2 => format!(
                    r#"{{"event_id":"neg-{p}-{i}","event_type":"conversion","event_time":{t},"campaign_id":"c","ad_id":"a","user_id":"u","revenue":"-1.00","currency":"USD"}}"#
                ),
                3 => "[1,2,3]".to_string(),
                _ => String::new(),
            };
            out.push(Msg {
                payload: bad.into_bytes(),
                event: None,
            });
            continue;
        }
        if rng.f64() < 0.04 {
            // Byte-level damage to a valid message (the processor fuzzed in place): a dead
            // letter if the decoder refuses it, else the event it still is.
            let ev = random_event(rng, p, i, t, &users, &mut used);
            out.push(mutated(rng, ev));
            continue;
        }
        if rng.f64() < 0.05 && !out.is_empty() {
            // A copy of an earlier valid message of this partition (a producer retry).
            let earlier: Vec<&Msg> = out.iter().filter(|m| m.event.is_some()).collect();
            if let Some(m) = earlier.get(rng.usize(0..earlier.len().max(1))) {
                let m = (*m).clone();
                out.push(m);
                continue;
            }
        }
        let ev = random_event(rng, p, i, t, &users, &mut used);
        out.push(Msg {
            payload: json(&ev).into_bytes(),
            event: Some(ev),
        });
    }
    // A far-ahead event that closes every window of the partition.
    let flush = Ev {
        id: format!("flush-{p}"),
        kind: 0,
        time_ms: t + 3_600_000,
        campaign: "flush".into(),
        ad: "flush".into(),
        user: "flush".into(),
        micros: 0,
    };
    out.push(Msg {
        payload: json(&flush).into_bytes(),
        event: Some(flush),
    });
    out
}

/// A valid event of partition `p` near time `t`: disorder within the out-of-orderness bound
/// (never late), distinct times within the partition (keeps "the latest click" unambiguous).
fn random_event(
    rng: &mut fastrand::Rng,
    p: i32,
    i: usize,
    t: i64,
    users: &[String],
    used: &mut std::collections::HashSet<i64>,
) -> Ev {
    let mut time_ms = t - rng.i64(0..OOO_MS - 1_000);
    while !used.insert(time_ms) {
        time_ms += 1;
    }
    let kind = match rng.f64() {
        x if x < 0.6 => 0,
        x if x < 0.85 => 1,
        _ => 2,
    };
    let c = rng.u32(0..3);
    Ev {
        id: format!("e{p}-{i}-{}", "i".repeat(rng.usize(0..60))),
        kind,
        time_ms,
        campaign: format!("camp-{c}"),
        // Some ad ids are seen once (a buggy SDK's garbage): the interners free and reuse
        // them as their windows close (issue 14, defect 4), which must never rename a row.
        ad: if rng.f64() < 0.15 {
            format!("ad-{c}-once-{p}-{i}")
        } else {
            format!("ad-{c}-{}", rng.u32(0..2))
        },
        user: users[rng.usize(0..users.len())].clone(),
        micros: if kind == 2 {
            rng.i64(1..5_000_000_000)
        } else {
            0
        },
    }
}

/// `ev`'s JSON with one to four random edits (byte flips, deletions, insertions of JSON-ish or
/// arbitrary bytes, truncation, repeats). What the model expects of it is the verdict of the
/// decoder and the currency conversion with the time bounds off (the bounds only refuse more,
/// and an event whose time an edit changed is not used): refused → a dead letter; accepted as exactly `ev` (whitespace, an
/// unknown key) → `ev`; accepted as another event → `ev` undamaged
/// instead, since such an event may be late or out of bounds, which the model does not follow.
fn mutated(rng: &mut fastrand::Rng, ev: Ev) -> Msg {
    use admetrics::event::{EventKind, TimeBounds, ValidationConfig, decode};
    const JSONISH: &[u8] = b"{}[]\",:\\0123456789eE.-+ \t\nnulltrue\xff\x00";
    let mut b = json(&ev).into_bytes();
    for _ in 0..rng.usize(1..=4) {
        let i = rng.usize(0..=b.len());
        match rng.u32(0..6) {
            0 if i < b.len() => b[i] = rng.u8(..),
            1 => {
                let j = rng.usize(i..=b.len().min(i + 12));
                b.drain(i..j);
            }
            2 => {
                let ins: Vec<u8> = (0..rng.usize(1..6))
                    .map(|_| JSONISH[rng.usize(0..JSONISH.len())])
                    .collect();
                b.splice(i..i, ins);
            }
            3 => b.truncate(i),
            4 => {
                let j = rng.usize(i..=b.len().min(i + 40));
                let rep = b[i..j].to_vec();
                b.splice(i..i, rep);
            }
            _ => b.insert(i, rng.u8(..)),
        }
    }
    let limits = ValidationConfig {
        time_bounds: TimeBounds::Off,
        ..Default::default()
    };
    // The processor converts a conversion's revenue right after decoding: an edit that changed
    // its currency (to a code with no rate: the default config has USD only) makes it a dead
    // letter (`unknown_currency`) too.
    let rates = admetrics::currency::Rates::new(&Default::default());
    let same = match decode(&b, 0, &limits).and_then(|d| rates.apply(d)) {
        Err(_) => {
            return Msg {
                payload: b,
                event: None,
            };
        }
        Ok(d) => {
            let kind = match d.kind {
                EventKind::Impression => 0,
                EventKind::Click => 1,
                EventKind::Conversion => 2,
            };
            d.event_id == ev.id.as_str()
                && kind == ev.kind
                && d.time_ms == ev.time_ms
                && d.campaign_id == ev.campaign.as_str()
                && d.ad_id == ev.ad.as_str()
                && d.user_id == ev.user.as_str()
                && d.revenue_micros == ev.micros
        }
    };
    Msg {
        payload: if same { b } else { json(&ev).into_bytes() },
        event: Some(ev),
    }
}

fn json(e: &Ev) -> String {
    let kind = ["impression", "click", "conversion"][e.kind as usize];
    let rev = if e.kind == 2 {
        format!(
            r#","revenue":"{}.{:06}","currency":"USD""#,
            e.micros / 1_000_000,
            e.micros % 1_000_000
        )
    } else {
        String::new()
    };
    format!(
        r#"{{"event_id":"{}","event_type":"{kind}","event_time":{},"campaign_id":"{}","ad_id":"{}","user_id":"{}"{rev}}}"#,
        e.id, e.time_ms, e.campaign, e.ad, e.user
    )
}

/// Window key of the model and of the tables: (window start ms, campaign, ad, metric).
type Key = (i64, String, Option<String>, String);

/// The reference: per window, campaign (and ad) the sums the shipped plugins must publish, from
/// the messages alone. Dedup per partition by event id; last click within the lookback of the
/// same partition's clicks received before the conversion.
fn model(log: &[Vec<Msg>]) -> BTreeMap<Key, (i64, i64)> {
    let mut out: BTreeMap<Key, (i64, i64)> = BTreeMap::new();
    let mut add = |k: Key, n: i64, d: i64| {
        let e = out.entry(k).or_default();
        e.0 += n;
        e.1 += d;
    };
    for msgs in log {
        let mut seen = std::collections::HashSet::new();
        let mut clicks: HashMap<&str, Vec<(i64, &str, &str)>> = HashMap::new();
        for e in msgs.iter().filter_map(|m| m.event.as_ref()) {
            if !seen.insert(e.id.as_str()) || e.campaign == "flush" {
                continue;
            }
            let t = e.time_ms;
            let w = t.div_euclid(WINDOW_MS) * WINDOW_MS;
            let c = || e.campaign.clone();
            match e.kind {
                0 => add((w, c(), None, "ctr".into()), 0, 1),
                1 => {
                    add((w, c(), None, "ctr".into()), 1, 0);
                    add((w, c(), None, "cvr".into()), 0, 1);
                    clicks
                        .entry(&e.user)
                        .or_default()
                        .push((t, &e.campaign, &e.ad));
                }
                _ => {
                    add((w, c(), None, "cvr".into()), 1, 0);
                    add((w, c(), None, "revenue".into()), e.micros, 1);
                    let best = clicks
                        .get(e.user.as_str())
                        .into_iter()
                        .flatten()
                        .filter(|(ct, _, _)| t - LOOKBACK_MS <= *ct && *ct <= t)
                        .max_by_key(|(ct, _, _)| *ct);
                    match best {
                        Some((_, bc, ba)) => {
                            add(
                                (
                                    w,
                                    bc.to_string(),
                                    Some(ba.to_string()),
                                    "attributed_revenue".into(),
                                ),
                                e.micros,
                                1,
                            );
                            add((w, c(), None, "unattributed_revenue".into()), 0, 0);
                        }
                        None => add((w, c(), None, "unattributed_revenue".into()), e.micros, 1),
                    }
                }
            }
        }
    }
    out
}

/// A metric row as the tables hold it.
#[derive(Clone, Debug)]
struct MetricRow {
    key: Key,
    partition: i32,
    revision: i64,
    numerator: f64,
    denominator: f64,
    is_final: bool,
    withheld: bool,
}

/// One snapshot summary: partition → (position if recorded, epoch).
type Summary = BTreeMap<i32, (Option<Position>, u64)>;

/// The in-memory stand-in for the three tables (see the module doc).
#[derive(Default)]
struct Tables {
    /// (partition, offset, event id, is_duplicate, event time ms)
    events: Vec<(i32, i64, String, bool, i64)>,
    dead: Vec<(i32, i64)>,
    metrics: Vec<MetricRow>,
    /// Summary histories, oldest first: dead letters, metrics, events.
    hist: [Vec<Summary>; 3],
}

fn column<'a>(b: &'a RecordBatch, name: &str) -> &'a dyn Array {
    b.column_by_name(name).expect("column").as_ref()
}

impl Tables {
    fn max_epochs(&self, table: usize) -> BTreeMap<i32, u64> {
        let mut m = BTreeMap::new();
        for s in &self.hist[table] {
            for (p, (_, e)) in s {
                let x = m.entry(*p).or_insert(*e);
                *x = (*x).max(*e);
            }
        }
        m
    }

    /// The position with the highest epoch, newest among equals.
    fn position(&self, table: usize, p: i32) -> Option<Position> {
        let mut best: Option<Position> = None;
        for s in &self.hist[table] {
            if let Some((Some(pos), _)) = s.get(&p)
                && best.is_none_or(|b| pos.epoch >= b.epoch)
            {
                best = Some(*pos);
            }
        }
        best
    }

    fn claim(&mut self, parts: &[i32], horizon_ms: i64) -> Vec<Claimed> {
        let mut out = Vec::new();
        for &p in parts {
            let epoch = (0..3)
                .filter_map(|t| self.max_epochs(t).get(&p).copied())
                .max()
                .unwrap_or(0)
                + 1;
            for t in 0..3 {
                self.hist[t].push(BTreeMap::from([(p, (None, epoch))]));
            }
            let position = self.position(2, p);
            let since = position
                .and_then(|pos| pos.watermark_ms)
                .map(|wm| wm - horizon_ms);
            let ids = match since {
                Some(since) => self
                    .events
                    .iter()
                    .filter(|e| e.0 == p && e.4 >= since)
                    .map(|e| CommittedId {
                        hash: hash_id(&e.2),
                        offset: e.1,
                        time_ms: e.4,
                        was_copy: e.3,
                    })
                    .collect(),
                None => Vec::new(),
            };
            out.push(Claimed {
                partition: p,
                epoch,
                position,
                dead_letter_floor: self.position(0, p).map(|pos| pos.offset),
                ids,
            });
        }
        out
    }

    /// Commits `batch` table by table; stops after `tables` tables (a crash), or all three.
    fn commit(&mut self, mut batch: CommitBatch, tables: usize) {
        for t in 0..tables.min(3) {
            let max = self.max_epochs(t);
            let lost: Vec<i32> = batch
                .positions
                .iter()
                .filter(|(p, pos)| max.get(p).is_some_and(|&e| e > pos.epoch))
                .map(|(p, _)| *p)
                .collect();
            if !lost.is_empty() {
                batch.drop_partitions(&lost);
            }
            let mut summary: Summary = batch
                .positions
                .iter()
                .map(|(p, pos)| (*p, (Some(*pos), pos.epoch)))
                .collect();
            match t {
                0 => {
                    for (p, (pos, _)) in summary.iter_mut() {
                        let pos = pos.as_mut().unwrap();
                        if let Some(&f) = batch.dead_letter_floors.get(p) {
                            pos.offset = pos.offset.max(f);
                        }
                    }
                    if let Some(b) = &batch.dead_letters {
                        let (ps, os) = (
                            column(b, "kafka_partition").as_primitive::<Int32Type>(),
                            column(b, "kafka_offset").as_primitive::<Int64Type>(),
                        );
                        for i in 0..b.num_rows() {
                            self.dead.push((ps.value(i), os.value(i)));
                        }
                    } else {
                        continue; // the sink makes no dead-letter commit without rows
                    }
                }
                1 => {
                    let Some(b) = &batch.metrics else { continue };
                    let ws = column(b, "window_start").as_primitive::<TimestampMicrosecondType>();
                    let cs = column(b, "campaign_id").as_string::<i32>();
                    let ads = column(b, "ad_id").as_string::<i32>();
                    let ms = column(b, "metric").as_string::<i32>();
                    let nums = column(b, "numerator").as_primitive::<Float64Type>();
                    let dens = column(b, "denominator").as_primitive::<Float64Type>();
                    let revs = column(b, "revision").as_primitive::<Int64Type>();
                    let parts = column(b, "kafka_partition").as_primitive::<Int32Type>();
                    let fin = column(b, "is_final").as_boolean();
                    let wh = column(b, "withheld").as_boolean();
                    for i in 0..b.num_rows() {
                        self.metrics.push(MetricRow {
                            key: (
                                ws.value(i) / 1000,
                                cs.value(i).to_string(),
                                (!ads.is_null(i)).then(|| ads.value(i).to_string()),
                                ms.value(i).to_string(),
                            ),
                            partition: parts.value(i),
                            revision: revs.value(i),
                            numerator: nums.value(i),
                            denominator: dens.value(i),
                            is_final: fin.value(i),
                            withheld: wh.value(i),
                        });
                    }
                }
                _ => {
                    for (_, b) in &batch.events {
                        let ids = column(b, "event_id").as_string::<i32>();
                        let ps = column(b, "kafka_partition").as_primitive::<Int32Type>();
                        let os = column(b, "kafka_offset").as_primitive::<Int64Type>();
                        let dups = column(b, "is_duplicate").as_boolean();
                        let ts = column(b, "event_time").as_primitive::<TimestampMicrosecondType>();
                        for i in 0..b.num_rows() {
                            self.events.push((
                                ps.value(i),
                                os.value(i),
                                ids.value(i).to_string(),
                                dups.value(i),
                                ts.value(i) / 1000,
                            ));
                        }
                    }
                }
            }
            self.hist[t].push(summary);
        }
    }

    /// The current value of every key: per partition the latest revision, shares summed; only
    /// keys whose every share is final and none withheld.
    fn current(&self) -> BTreeMap<Key, (f64, f64)> {
        let mut latest: HashMap<(Key, i32), &MetricRow> = HashMap::new();
        for r in &self.metrics {
            let e = latest.entry((r.key.clone(), r.partition)).or_insert(r);
            if r.revision > e.revision {
                *e = r;
            }
        }
        let mut out: BTreeMap<Key, (f64, f64, bool)> = BTreeMap::new();
        for ((k, _), r) in latest {
            let e = out.entry(k).or_insert((0.0, 0.0, true));
            e.0 += r.numerator;
            e.1 += r.denominator;
            e.2 &= r.is_final && !r.withheld;
        }
        out.into_iter()
            .filter(|(_, v)| v.2)
            .map(|(k, v)| (k, (v.0, v.1)))
            .collect()
    }
}

struct Member {
    processor: Processor,
    /// Partition → next offset to feed (the source's position).
    read: BTreeMap<i32, i64>,
}

struct Sim {
    cfg: Config,
    plugins: Vec<Plugin>,
    log: Vec<Vec<Msg>>,
    tables: Tables,
    rng: fastrand::Rng,
    now_ms: i64,
    t0: Instant,
    step: u64,
}

impl Sim {
    fn clock(&mut self) -> Clock {
        self.step += 1;
        Clock {
            // Half a second a step: the processor's 30 s housekeeping (pruning clicks and
            // dedup ids, freeing interned ids) runs every 60 steps.
            now_ms: self.now_ms + self.step as i64 * 500,
            instant: self.t0 + Duration::from_millis(self.step * 500),
        }
    }

    fn member(&mut self, parts: &[i32]) -> Member {
        let plugins = self.plugins.iter().map(Plugin::another).collect();
        let mut processor = Processor::new(&self.cfg, plugins, Arc::new(Status::default()));
        processor.assign_on_first_message = false;
        let mut m = Member {
            processor,
            read: BTreeMap::new(),
        };
        self.give(&mut m, parts);
        m
    }

    fn give(&mut self, m: &mut Member, parts: &[i32]) {
        let horizon = m.processor.dedup_horizon_ms().unwrap_or(0);
        let clock = self.clock();
        for c in self.tables.claim(parts, horizon) {
            m.read
                .insert(c.partition, c.position.map_or(0, |p| p.replay_from));
            m.processor.assign(c, clock.instant);
        }
    }

    /// Feeds up to `n` messages of `m`'s partitions, round robin in random chunks.
    fn feed(&mut self, m: &mut Member, n: usize) -> usize {
        let clock = self.clock();
        let mut fed = 0;
        let parts: Vec<i32> = m.read.keys().copied().collect();
        for p in parts {
            let take = self.rng.usize(0..=n);
            let from = m.read[&p];
            let msgs = &self.log[p as usize];
            let to = (from as usize + take).min(msgs.len());
            for (o, msg) in msgs.iter().enumerate().take(to).skip(from as usize) {
                m.processor.process(
                    RawMessage {
                        partition: p,
                        offset: o as i64,
                        payload: Some(&msg.payload),
                        timestamp_ms: None,
                    },
                    &clock,
                );
            }
            fed += to - from as usize;
            m.read.insert(p, to as i64);
        }
        m.processor.flush_plugins();
        fed
    }

    fn tick(&mut self, m: &mut Member, tables: usize) {
        let clock = self.clock();
        let batch = m.processor.tick(&clock);
        self.tables.commit(batch, tables);
    }

    fn done(&self, members: &[&Member]) -> bool {
        (0..self.log.len()).all(|p| {
            let committed = self.tables.position(2, p as i32).map_or(0, |x| x.offset);
            committed >= self.log[p].len() as i64
                && members.iter().all(|m| {
                    m.read
                        .get(&(p as i32))
                        .is_none_or(|&r| r >= self.log[p].len() as i64)
                })
        })
    }
}

fn run_seed(seed: u64, plugins: &[Plugin]) -> Result<String, String> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let partitions = rng.usize(1..=3);
    let base = 1_700_000_000_000;
    let log: Vec<Vec<Msg>> = (0..partitions)
        .map(|p| {
            let n = rng.usize(50..400);
            gen_partition(&mut rng, p as i32, n, base)
        })
        .collect();
    let last = log
        .iter()
        .flatten()
        .filter_map(|m| m.event.as_ref())
        .map(|e| e.time_ms)
        .max()
        .unwrap();
    let mut cfg = Config::default();
    cfg.window.size_secs = (WINDOW_MS / 1000) as u64;
    cfg.window.out_of_orderness_ms = OOO_MS as u64;
    cfg.window.idle_timeout_ms = 3_600_000;
    cfg.attribution.lookback_secs = (LOOKBACK_MS / 1000) as u64;
    cfg.attribution.max_touchpoints = 64;
    cfg.dedup.horizon_secs = 86_400;
    let mut sim = Sim {
        cfg,
        plugins: plugins.iter().map(Plugin::another).collect(),
        log,
        tables: Tables::default(),
        rng: fastrand::Rng::with_seed(seed ^ 0x5eed),
        now_ms: last + 60_000,
        t0: Instant::now(),
        step: 0,
    };
    let all: Vec<i32> = (0..partitions as i32).collect();
    let mut members = vec![sim.member(&all)];
    let mut events = Vec::new();
    for round in 0..100_000 {
        let refs: Vec<&Member> = members.iter().collect();
        if sim.done(&refs) {
            break;
        }
        if round > 50_000 {
            return Err("no progress".into());
        }
        let i = sim.rng.usize(0..members.len());
        let n = sim.rng.usize(1..60);
        let mut m = members.swap_remove(i);
        sim.feed(&mut m, n);
        match sim.rng.u32(0..100) {
            // A crash: the batch of this interval lands partly (0, 1 or 2 tables) or not at all,
            // and a new process claims the partitions again.
            0..4 => {
                let landed = sim.rng.usize(0..3);
                if sim.rng.bool() {
                    sim.tick(&mut m, landed);
                }
                let parts: Vec<i32> = m.read.keys().copied().collect();
                events.push(format!("crash({landed}) {parts:?}"));
                drop(m);
                m = sim.member(&parts);
            }
            // A rebalance: one partition moves to another member (a new one if alone).
            4..7 if m.read.len() > 1 || members.is_empty() => {
                let parts: Vec<i32> = m.read.keys().copied().collect();
                let p = parts[sim.rng.usize(0..parts.len())];
                m.processor.revoke(p);
                m.read.remove(&p);
                // Commit on revoke; sometimes the new owner claims first (then it is fenced).
                let claim_first = sim.rng.bool();
                if !claim_first {
                    sim.tick(&mut m, 3);
                }
                if members.is_empty() {
                    let other = sim.member(&[p]);
                    members.push(other);
                } else {
                    let j = sim.rng.usize(0..members.len());
                    let mut other = members.swap_remove(j);
                    sim.give(&mut other, &[p]);
                    members.push(other);
                }
                if claim_first {
                    sim.tick(&mut m, 3);
                }
                events.push(format!("move {p} (claim first: {claim_first})"));
            }
            // A live config reload of what the model does not depend on (events are never
            // late under any out-of-orderness ≥ the generator's, and no plugin fails): the
            // allowed lateness up or down, the out-of-orderness up or back, the clock skew
            // bound, the quarantine settings. Later restarts start with it (it is the config
            // file now), so owners of one partition run with different lateness. This found
            // that a new owner with a smaller lateness took windows its predecessor had left
            // open (published, not final) as closed at once, and never published them final.
            7..10 => {
                let mut s = m.processor.settings().clone();
                s.allowed_lateness_ms = [0, 10_000, 60_000, 120_000][sim.rng.usize(0..4)];
                sim.cfg.window.allowed_lateness_ms = s.allowed_lateness_ms;
                events.push(format!("lateness {}", s.allowed_lateness_ms));
                s.out_of_orderness_ms = [OOO_MS as u64, 8_000, 15_000][sim.rng.usize(0..3)];
                s.max_clock_skew_ms = [0, 1_000, 60_000][sim.rng.usize(0..3)];
                s.quarantine_after = sim.rng.u32(1..5);
                s.quarantine_window_secs = sim.rng.u64(1..600);
                m.processor.apply_settings(&s);
                sim.cfg.window.out_of_orderness_ms = s.out_of_orderness_ms;
                sim.cfg.window.max_clock_skew_ms = s.max_clock_skew_ms;
                sim.cfg.plugins.quarantine_after = s.quarantine_after;
                sim.cfg.plugins.quarantine_window_secs = s.quarantine_window_secs;
                events.push(format!(
                    "reload ooo {} skew {}",
                    s.out_of_orderness_ms, s.max_clock_skew_ms
                ));
            }
            _ => {
                if sim.rng.u32(0..4) == 0 {
                    sim.tick(&mut m, 3);
                }
            }
        }
        if m.read.is_empty() {
            sim.tick(&mut m, 3);
        } else {
            members.push(m);
        }
    }
    for m in members.iter_mut() {
        sim.tick(m, 3);
        sim.tick(m, 3);
    }

    // Every message once: an event or a dead letter.
    let mut coords: HashMap<(i32, i64), usize> = HashMap::new();
    for e in &sim.tables.events {
        *coords.entry((e.0, e.1)).or_default() += 1;
    }
    for d in &sim.tables.dead {
        *coords.entry(*d).or_default() += 1;
    }
    for (p, msgs) in sim.log.iter().enumerate() {
        let mut seen = std::collections::HashSet::new();
        for (o, m) in msgs.iter().enumerate() {
            let n = coords.get(&(p as i32, o as i64)).copied().unwrap_or(0);
            if n != 1 {
                return Err(format!(
                    "partition {p} offset {o} is in the tables {n} times ({}); events: {events:?}",
                    if m.event.is_some() {
                        "event"
                    } else {
                        "dead letter"
                    }
                ));
            }
            if let Some(e) = &m.event {
                let copy = !seen.insert(e.id.clone());
                let flagged = sim
                    .tables
                    .events
                    .iter()
                    .find(|r| r.0 == p as i32 && r.1 == o as i64)
                    .map(|r| r.3);
                if flagged != Some(copy) {
                    return Err(format!(
                        "partition {p} offset {o}: is_duplicate {flagged:?}, expected {copy}; events: {events:?}"
                    ));
                }
            }
        }
    }
    // Every window's final value equals the model's.
    let want = model(&sim.log);
    let got = sim.tables.current();
    for (k, (n, d)) in &want {
        let scale = if k.3.contains("revenue") { 1e6 } else { 1.0 };
        match got.get(k) {
            Some((gn, gd)) if (gn * scale).round() as i64 == *n && gd.round() as i64 == *d => {}
            other => {
                let rows: Vec<String> = sim
                    .tables
                    .metrics
                    .iter()
                    .filter(|r| &r.key == k)
                    .map(|r| {
                        format!(
                            "p{} rev {}:{} {}/{} final {} withheld {}",
                            r.partition,
                            r.revision >> 32,
                            r.revision & 0xffff_ffff,
                            r.numerator,
                            r.denominator,
                            r.is_final,
                            r.withheld
                        )
                    })
                    .collect();
                return Err(format!(
                    "{k:?}: tables {other:?}, model {n}/{d} (revenue in micros); rows {rows:?}; events: {events:?}"
                ));
            }
        }
    }
    let extra: Vec<&Key> = got
        .keys()
        .filter(|k| k.1 != "flush" && !want.contains_key(*k))
        .collect();
    if !extra.is_empty() {
        return Err(format!(
            "keys the model does not have: {extra:?}; events: {events:?}"
        ));
    }
    Ok(format!(
        "{} partitions, {} messages, {} keys, {} crashes/moves",
        partitions,
        sim.log.iter().map(Vec::len).sum::<usize>(),
        want.len(),
        events.len()
    ))
}

#[test]
fn random_streams_crashes_and_rebalances_match_the_reference_model() {
    let rt = PluginRuntime::new(&Config::default().plugins).unwrap();
    let plugins: Vec<Plugin> = support::plugin_paths()
        .iter()
        .map(|p| rt.load(p).expect("load plugin"))
        .collect();
    let seeds: Vec<u64> = match std::env::var("ADMETRICS_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("ADMETRICS_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("ADMETRICS_SIM_SEEDS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(3_000u64);
            (1..=n).collect()
        }
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    for &seed in &seeds {
        match run_seed(seed, &plugins) {
            Ok(_) => {}
            Err(e) => {
                eprintln!("seed {seed} FAILED (replay: ADMETRICS_SIM_SEED={seed}): {e}");
                failures.push(seed);
            }
        }
    }
    println!(
        "{} seeds in {:.1} s; failed: {failures:?}",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}

fn shipped_plugins() -> Vec<Plugin> {
    let rt = PluginRuntime::new(&Config::default().plugins).unwrap();
    support::plugin_paths()
        .iter()
        .map(|p| rt.load(p).expect("load plugin"))
        .collect()
}

fn impression(id: &str, time_ms: i64, campaign: &str, ad: &str) -> Msg {
    let ev = Ev {
        id: id.into(),
        kind: 0,
        time_ms,
        campaign: campaign.into(),
        ad: ad.into(),
        user: "u".into(),
        micros: 0,
    };
    Msg {
        payload: json(&ev).into_bytes(),
        event: Some(ev),
    }
}

/// Issue 14, defect 3: raising `window.allowed_lateness_ms` (live, or across a restart) re-created
/// windows already published as final, and published a higher revision holding only the late
/// events, which readers took as the window's value.
#[test]
fn raising_the_allowed_lateness_never_reopens_a_final_window() {
    const BASE: i64 = 1_700_000_040_000; // a window start
    for restart in [false, true] {
        let mut cfg = Config::default();
        cfg.window.size_secs = 60;
        cfg.window.out_of_orderness_ms = OOO_MS as u64;
        cfg.window.allowed_lateness_ms = 0;
        cfg.window.idle_timeout_ms = 3_600_000;
        let mut log: Vec<Msg> = (0..10)
            .map(|i| impression(&format!("on-time-{i}"), BASE + i * 1_000, "camp", "a"))
            .collect();
        // Moves the watermark past the first window: it is published as final (10 impressions).
        log.push(impression("ahead", BASE + 200_000, "camp", "a"));
        // Late under a lateness of 0; on time under 10 minutes.
        log.push(impression("late", BASE + 30_000, "camp", "a"));
        let mut sim = Sim {
            cfg,
            plugins: shipped_plugins(),
            log: vec![log],
            tables: Tables::default(),
            rng: fastrand::Rng::with_seed(1),
            now_ms: BASE + 3_600_000,
            t0: Instant::now(),
            step: 0,
        };
        // Feeds partition 0 up to (not including) offset `to`.
        let feed_to = |sim: &mut Sim, m: &mut Member, to: usize| {
            let clock = sim.clock();
            for o in m.read[&0] as usize..to {
                m.processor.process(
                    RawMessage {
                        partition: 0,
                        offset: o as i64,
                        payload: Some(&sim.log[0][o].payload),
                        timestamp_ms: None,
                    },
                    &clock,
                );
            }
            m.read.insert(0, to as i64);
        };
        let mut m = sim.member(&[0]);
        feed_to(&mut sim, &mut m, 11);
        sim.tick(&mut m, 3);
        let key: Key = (BASE, "camp".into(), None, "ctr".into());
        assert_eq!(sim.tables.current().get(&key), Some(&(0.0, 10.0)));

        sim.cfg.window.allowed_lateness_ms = 600_000;
        if restart {
            drop(m);
            m = sim.member(&[0]);
        } else {
            let mut s = m.processor.settings().clone();
            s.allowed_lateness_ms = 600_000;
            m.processor.apply_settings(&s);
        }
        feed_to(&mut sim, &mut m, 12);
        sim.tick(&mut m, 3);
        sim.tick(&mut m, 3);
        let rows: Vec<_> = sim.tables.metrics.iter().filter(|r| r.key == key).collect();
        assert_eq!(
            sim.tables.current().get(&key),
            Some(&(0.0, 10.0)),
            "restart: {restart}; rows of the closed window: {rows:?}"
        );
        assert_eq!(rows.len(), 1, "restart: {restart}: {rows:?}");
    }
}

/// Issue 14, defect 4: the campaign and ad interners kept every distinct id ever seen, so a stream
/// of garbage `ad_id`s grew the daemon without bound.
#[test]
fn garbage_ad_ids_are_freed_as_their_windows_close() {
    const BASE: i64 = 1_700_000_040_000;
    let mut cfg = Config::default();
    cfg.window.size_secs = 60;
    cfg.window.out_of_orderness_ms = OOO_MS as u64;
    let status = Arc::new(Status::default());
    let mut p = Processor::new(&cfg, shipped_plugins(), status.clone());
    let t0 = Instant::now();
    let mut most = 0;
    for minute in 0..200i64 {
        let clock = Clock {
            now_ms: BASE + minute * 60_000 + 60_000,
            instant: t0 + Duration::from_secs(31 * minute as u64),
        };
        for i in 0..100i64 {
            let m = impression(
                &format!("e-{minute}-{i}"),
                BASE + minute * 60_000 + i * 100,
                &format!("camp-{minute}-{}", i % 10),
                &format!("garbage-{minute}-{i}"),
            );
            p.process(
                RawMessage {
                    partition: 0,
                    offset: minute * 100 + i,
                    payload: Some(&m.payload),
                    timestamp_ms: None,
                },
                &clock,
            );
        }
        let batch = p.tick(&clock);
        if minute > 0 {
            // Each window's rows still name its own campaigns (freed numbers are reused).
            let b = batch.metrics.expect("the windows' rows");
            let campaigns = column(&b, "campaign_id").as_string::<i32>();
            let ws = column(&b, "window_start").as_primitive::<TimestampMicrosecondType>();
            for r in 0..b.num_rows() {
                let w = (ws.value(r) / 1000 - BASE) / 60_000;
                assert!(
                    campaigns.value(r).starts_with(&format!("camp-{w}-")),
                    "window {w}: {}",
                    campaigns.value(r)
                );
            }
        }
        most = most.max(p.interned_ids().1);
    }
    // 20 000 distinct ads and 2 000 campaigns seen; at most the open windows' are held.
    assert!(most <= 300, "{most} ad ids held at once");
    assert!(
        status.interned_ids_evicted.get() >= 20_000,
        "{:?}",
        status.interned_ids_evicted
    );
}

/// Found by `tests/hot_swap.rs` in CI: a plugin that failed on one partition's window before
/// publishing anything (here: a build that traps on batches of more than 8 events, which one
/// partition's window gets and the other's does not) left no row for that partition, and readers
/// summing the partitions' shares took the other partition's share for the whole window (a
/// smaller total, final and not withheld). Now a failed plugin's every declared metric is
/// published as withheld for each campaign of that partition's window.
#[test]
fn a_plugin_failing_on_one_partitions_window_withholds_the_key() {
    const BASE: i64 = 1_700_000_040_000;
    let rt = PluginRuntime::new(&Config::default().plugins).unwrap();
    let bad = support::repo_root().join("target/wasm32-wasip2/release/fixture_ctr_bad.wasm");
    let mut cfg = Config::default();
    cfg.window.size_secs = 60;
    cfg.window.out_of_orderness_ms = OOO_MS as u64;
    let status = Arc::new(Status::default());
    let mut p = Processor::new(&cfg, vec![rt.load(&bad).unwrap()], status.clone());
    let clock = Clock {
        now_ms: BASE + 600_000,
        instant: Instant::now(),
    };
    let mut offsets = [0i64; 2];
    let mut send = |p: &mut Processor, part: i32, id: &str, t: i64| {
        let m = impression(id, t, "camp", "a");
        p.process(
            RawMessage {
                partition: part,
                offset: offsets[part as usize],
                payload: Some(&m.payload),
                timestamp_ms: None,
            },
            &clock,
        );
        offsets[part as usize] += 1;
    };
    for i in 0..5 {
        send(&mut p, 0, &format!("p0-{i}"), BASE + i * 1_000);
    }
    p.flush_plugins();
    assert_eq!(
        status
            .plugin_errors
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    for i in 0..10 {
        send(&mut p, 1, &format!("p1-{i}"), BASE + i * 1_000);
    }
    p.flush_plugins();
    assert!(
        status
            .plugin_errors
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    for part in 0..2 {
        send(&mut p, part, &format!("ahead-{part}"), BASE + 300_000);
    }
    let mut tables = Tables::default();
    tables.commit(p.tick(&clock), 3);
    let key: Key = (BASE, "camp".into(), None, "ctr".into());
    let shares: Vec<_> = tables.metrics.iter().filter(|r| r.key == key).collect();
    assert!(
        shares.iter().any(|r| r.partition == 1 && r.withheld),
        "{shares:?}"
    );
    assert_eq!(tables.current().get(&key), None, "{shares:?}");
}
