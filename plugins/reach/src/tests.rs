//! Accumulator-level tests: the path the wasm exports take, minus the WIT types.

use std::sync::Mutex;

use admetrics_plugin_sdk::bindings::Guest;
use admetrics_plugin_sdk::testing::{TestEvent, batch};
use admetrics_plugin_sdk::{Column, EventBatch, WindowSize};

use crate::acc::{self, Accumulator, Campaign, entry_bytes};
use crate::plugin::Reach;
use crate::sketch::{DEFAULT_EXACT_THRESHOLD, STANDARD_ERROR, Sketch, mix};

/// Tests that call the exports hold this: the instance's configuration is process-wide.
static EXPORTS: Mutex<()> = Mutex::new(());

const IMP: u8 = 0;
const CLICK: u8 = 1;
const CONV: u8 = 2;
const T: u32 = DEFAULT_EXACT_THRESHOLD;

/// The impressions of (kind, campaign, user hash) events, as the plugin passes them on.
fn impressions(events: &[(u8, u32, u64)]) -> impl Iterator<Item = (u32, u64)> + '_ {
    events
        .iter()
        .filter(|e| e.0 == IMP)
        .map(|&(_, c, u)| (c, u))
}

fn add(acc: &[u8], events: &[(u8, u32, u64)], threshold: u32) -> Vec<u8> {
    acc::accumulate(acc, impressions(events), threshold).unwrap()
}

/// Feeds events in batches of `size`.
fn fold(events: &[(u8, u32, u64)], size: usize, threshold: u32) -> Vec<u8> {
    events
        .chunks(size)
        .fold(Vec::new(), |a, b| add(&a, b, threshold))
}

/// (campaign, metric) -> (value, numerator, denominator).
fn rows(acc: &[u8]) -> Vec<(u32, &'static str, f64, f64, f64)> {
    acc::finish(acc)
        .unwrap()
        .into_iter()
        .map(|r| (r.campaign, r.metric, r.value, r.numerator, r.denominator))
        .collect()
}

fn reach_of(acc: &[u8], campaign: u32) -> f64 {
    rows(acc)
        .into_iter()
        .find(|r| r.0 == campaign && r.1 == "reach")
        .unwrap()
        .2
}

/// Deterministic pseudo-random numbers (splitmix64 of a counter).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 += 1;
        mix(self.0 ^ 0x5eed)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn shuffle<X>(&mut self, v: &mut [X]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// Mixed traffic: `users` distinct users over 3 campaigns, each seen `repeat` times, with clicks
/// and conversions in between (which must not count).
fn traffic(users: u64, repeat: u64) -> Vec<(u8, u32, u64)> {
    let mut v = Vec::new();
    for r in 0..repeat {
        for u in 0..users {
            let c = (u % 3) as u32 + 10;
            v.push((IMP, c, u));
            if (u + r) % 5 == 0 {
                v.push((CLICK, c, u + 1_000_000_000)); // a user who never had an impression
            }
            if (u + r) % 7 == 0 {
                v.push((CONV, c + 100, u)); // a campaign with no impression at all
            }
        }
    }
    v
}

#[test]
fn exact_below_the_threshold() {
    let events = traffic(3_000, 3); // 1000 users per campaign, each 3 impressions
    let acc = fold(&events, 700, T);
    let got = rows(&acc);
    assert_eq!(
        got.len(),
        6,
        "two rows per campaign with impressions: {got:?}"
    );
    for c in [10, 11, 12] {
        assert!(
            got.contains(&(c, "reach", 1000.0, 1000.0, 3000.0)),
            "{got:?}"
        );
        assert!(
            got.contains(&(c, "frequency", 3.0, 3000.0, 1000.0)),
            "{got:?}"
        );
    }
    // Exactly at the threshold still exact; one more user switches to the sketch, whose
    // estimate is then within a user or two (the small range is nearly exact too).
    let at: Vec<_> = (0..T as u64).map(|u| (IMP, 1, u)).collect();
    let acc = fold(&at, 100, T);
    assert_eq!(reach_of(&acc, 1), T as f64);
    assert!(
        Accumulator::decode(&acc).unwrap().campaigns[0]
            .1
            .sketch
            .is_exact()
    );
    let acc = add(&acc, &[(IMP, 1, 1 << 50)], T);
    assert!(
        !Accumulator::decode(&acc).unwrap().campaigns[0]
            .1
            .sketch
            .is_exact()
    );
    assert!((reach_of(&acc, 1) - (T + 1) as f64).abs() <= 3.0);
}

#[test]
fn no_impressions_no_rows_and_empty_state() {
    let acc = add(&[], &[(CLICK, 1, 5), (CONV, 1, 5)], T);
    assert!(acc.is_empty());
    assert!(rows(&acc).is_empty());
    let acc = add(&[], &[(IMP, 1, 5)], T);
    assert_eq!(add(&acc, &[(CLICK, 1, 6)], T), acc);
}

#[test]
fn readding_users_changes_no_estimate() {
    for (users, threshold) in [(500u64, T), (50_000, T), (50_000, 0)] {
        let events: Vec<_> = (0..users).map(|u| (IMP, 7, u * 31)).collect();
        let once = fold(&events, 4096, threshold);
        let twice = fold(&events, 4096, threshold);
        let again = events
            .chunks(999)
            .fold(once.clone(), |a, b| add(&a, b, threshold));
        let (a, b) = (
            Accumulator::decode(&once).unwrap(),
            Accumulator::decode(&again).unwrap(),
        );
        assert_eq!(a.campaigns[0].1.sketch, b.campaigns[0].1.sketch, "{users}");
        assert_eq!(b.campaigns[0].1.impressions, 2 * users);
        assert_eq!(reach_of(&once, 7), reach_of(&again, 7));
        assert_eq!(once, twice);
        // Re-adding a single user of the set.
        assert_eq!(
            reach_of(&add(&once, &[(IMP, 7, 31)], threshold), 7),
            reach_of(&once, 7)
        );
    }
}

/// The same events in any order and any batching give the same bytes, below the threshold,
/// across it and far above it.
#[test]
fn bytes_depend_on_the_events_only() {
    let mut rng = Rng(1);
    for (users, threshold) in [(900u64, T), (6_000, T), (6_000, 500), (60_000, 2)] {
        let mut events = traffic(users, 2);
        let reference = fold(&events, events.len(), threshold);
        for _ in 0..3 {
            rng.shuffle(&mut events);
            let size = 1 + rng.below(5_000);
            assert_eq!(
                fold(&events, size, threshold),
                reference,
                "{users} users, threshold {threshold}, batches of {size}"
            );
        }
    }
}

/// merge(a, b) == merge(b, a); merge(merge(a, b), c) == merge(a, merge(b, c)); and merging the
/// accumulators of parts equals accumulating the whole, with parts in every regime (exact, an
/// exact union past the threshold, sparse and dense sketches).
#[test]
fn merge_is_commutative_associative_and_equals_one_pass() {
    let threshold = 800;
    let mut rng = Rng(2);
    let mut events = traffic(9_000, 1);
    events.extend((0..700).map(|u| (IMP, 10, u + 5_000_000))); // campaign 10 only in part a
    events.extend((0..200_000).map(|u| (IMP, 11, u + 9_000_000))); // dense in part c
    rng.shuffle(&mut events);
    let whole = fold(&events, 10_000, threshold);
    let (a, rest) = events.split_at(700);
    let (b, c) = rest.split_at(1_000);
    let (a, b, c) = (
        fold(a, 333, threshold),
        fold(b, 333, threshold),
        fold(c, 5_000, threshold),
    );
    let m = |x: &[u8], y: &[u8]| acc::merge(x, y, threshold).unwrap();
    assert_eq!(m(&a, &b), m(&b, &a));
    assert_eq!(m(&m(&a, &b), &c), m(&a, &m(&b, &c)));
    assert_eq!(m(&m(&a, &b), &c), whole);
    assert_eq!(m(&c, &m(&b, &a)), whole);
    assert_eq!(m(&whole, &[]), whole);
    assert_eq!(m(&[], &whole), whole);
    // Idempotent on the users: merging a state with itself doubles impressions only.
    let self_merged = Accumulator::decode(&m(&whole, &whole)).unwrap();
    for ((_, x), (_, y)) in Accumulator::decode(&whole)
        .unwrap()
        .campaigns
        .iter()
        .zip(&self_merged.campaigns)
    {
        assert_eq!(x.sketch, y.sketch);
        assert_eq!(2 * x.impressions, y.impressions);
    }
}

#[test]
fn encoding_round_trips_and_is_checked() {
    let mut events = traffic(3_000, 1);
    events.extend((0..3_000).map(|u| (IMP, 20, u + 7_000_000))); // sparse sketch
    events.extend((0..50_000).map(|u| (IMP, 21, u + 8_000_000))); // dense sketch
    let bytes = fold(&events, 4096, T);
    let acc = Accumulator::decode(&bytes).unwrap();
    let forms: Vec<u8> = acc
        .campaigns
        .iter()
        .map(|(c, _)| {
            let at = find_entry(&bytes, *c);
            bytes[at + 12]
        })
        .collect();
    assert_eq!(forms, vec![0, 0, 0, 1, 2], "exact x3, sparse, dense");
    assert_eq!(acc.encode(), bytes);
    assert_eq!(acc::finish(&bytes).unwrap(), acc.rows());
    assert_eq!(Accumulator::decode(&acc.encode()).unwrap(), acc);
    assert_eq!(Accumulator::default().encode(), Vec::<u8>::new());

    // Every truncation is refused, as are corrupted headers, tags, orders and registers.
    for len in 1..bytes.len() {
        if Accumulator::decode(&bytes[..len]).is_ok() {
            // Only whole-entry prefixes decode: they end exactly where an entry ends.
            let ends = entry_ends(&bytes);
            assert!(ends.contains(&len), "prefix of {len} bytes decoded");
        }
    }
    let mut bad = bytes.clone();
    bad[2] = 12;
    assert!(Accumulator::decode(&bad).unwrap_err().contains("precision"));
    let mut bad = bytes.clone();
    bad[0] = b'X';
    assert!(Accumulator::decode(&bad).is_err());
    let mut bad = bytes.clone();
    bad[3 + 12] = 9;
    assert!(Accumulator::decode(&bad).unwrap_err().contains("tag"));
    // Exact set out of order: swap two hashes of the first entry.
    let mut bad = bytes.clone();
    let h = 3 + 13 + 4;
    let (x, y) = (bad[h..h + 8].to_vec(), bad[h + 8..h + 16].to_vec());
    bad[h..h + 8].copy_from_slice(&y);
    bad[h + 8..h + 16].copy_from_slice(&x);
    assert!(Accumulator::decode(&bad).is_err());
    // Dense register above 51.
    let mut bad = bytes.clone();
    let d = find_entry(&bytes, 21) + 13;
    bad[d] |= 63;
    assert!(Accumulator::decode(&bad).unwrap_err().contains("register"));
    // Campaigns out of order: the two last entries swapped.
    let s = find_entry(&bytes, 20);
    let e = find_entry(&bytes, 21);
    let mut bad = bytes[..s].to_vec();
    bad.extend_from_slice(&bytes[e..]);
    bad.extend_from_slice(&bytes[s..e]);
    assert!(Accumulator::decode(&bad).unwrap_err().contains("ascending"));
    // accumulate refuses a corrupt state.
    assert!(acc::accumulate(&bytes[..bytes.len() - 1], [(1, 1)], T).is_err());
}

fn entry_ends(bytes: &[u8]) -> Vec<usize> {
    let acc = Accumulator::decode(bytes).unwrap();
    let mut ends = vec![];
    let mut o = 3;
    for (_, s) in &acc.campaigns {
        o += entry_bytes(s);
        ends.push(o);
    }
    ends
}

fn find_entry(bytes: &[u8], campaign: u32) -> usize {
    let acc = Accumulator::decode(bytes).unwrap();
    let mut o = 3;
    for (c, s) in &acc.campaigns {
        if *c == campaign {
            return o;
        }
        o += entry_bytes(s);
    }
    panic!("no campaign {campaign}")
}

/// One million distinct users (the host hash taken as 0..10^6: as non-uniform as a hash can be,
/// which the mixing must absorb), each seen twice, in batches of 10 000: the estimate within
/// 3 standard errors (2.44 %). The input is fixed, so the result is too.
#[test]
fn one_million_users_within_three_sigma() {
    let n = 1_000_000u64;
    let mut acc = Vec::new();
    for round in 0..2 {
        for start in (0..n).step_by(10_000) {
            let ev: Vec<_> = (start..start + 10_000)
                .map(|u| (IMP, 1, if round == 0 { u } else { n - 1 - u }))
                .collect();
            acc = add(&acc, &ev, T);
        }
    }
    let got = rows(&acc);
    let reach = got[0].2;
    let rel = (reach - n as f64) / n as f64;
    println!(
        "1M users: reach {reach}, relative error {:+.4} %, bound {:.4} %, state {} bytes",
        100.0 * rel,
        300.0 * STANDARD_ERROR,
        acc.len()
    );
    assert!(rel.abs() <= 3.0 * STANDARD_ERROR);
    assert_eq!(reach, 994_498.0, "the documented figure");
    assert_eq!(got[0].4, 2.0 * n as f64, "reach denominator = impressions");
    assert_eq!(got[1].1, "frequency");
    assert_eq!((got[1].3, got[1].4), (2.0 * n as f64, reach));
    // The same users as arbitrary 64-bit hashes (another host hash function).
    // (Uncapped: each user is seen once here, and the reported reach is capped at impressions.)
    let ev: Vec<_> = (0..n)
        .map(|u| (IMP, 1, mix(u ^ 0xabcdef) ^ (u << 7)))
        .collect();
    let other = Accumulator::decode(&fold(&ev, 50_000, T)).unwrap();
    let rel = (other.campaigns[0].1.sketch.estimate() as f64 - n as f64) / n as f64;
    println!("1M users, other hash: relative error {:+.4} %", 100.0 * rel);
    assert!(rel.abs() <= 3.0 * STANDARD_ERROR, "{rel}");
}

/// State bytes per campaign, as the crate documentation states them.
#[test]
fn state_sizes() {
    let size = |users: u64| {
        let ev: Vec<_> = (0..users).map(|u| (IMP, 1, u)).collect();
        let acc = fold(&ev, 10_000, T);
        acc.len() - 3
    };
    let sizes: Vec<usize> = [10, 1_000, 2_000, 100_000].map(size).to_vec();
    println!("state bytes per campaign at 10 / 1 000 / 2 000 / 100 000 users: {sizes:?}");
    assert_eq!(sizes[0], 97);
    assert_eq!(sizes[1], 8_017);
    assert!(
        sizes[2] < 6_000,
        "sparse just past the threshold: {}",
        sizes[2]
    );
    assert_eq!(sizes[3], 12_301);
    // Never more than the dense size.
    let max = entry_bytes(&Campaign {
        impressions: 1,
        sketch: Sketch::Exact(vec![0; T as usize]),
    });
    assert_eq!(max, 13 + 4 + 12_288);
}

fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The batch the host sends a plugin declaring `user`, for (kind, campaign, user) events.
fn host_batch(events: &[(u8, u32, u64)]) -> EventBatch {
    let events: Vec<TestEvent> = events
        .iter()
        .map(|&(k, c, u)| {
            match k {
                IMP => TestEvent::impression(c, 1),
                CLICK => TestEvent::click(c, 1),
                _ => TestEvent::conversion(c, 1, 5),
            }
            .with_user(u)
        })
        .collect();
    batch(&events, &[Column::User], false, false)
}

/// The WIT exports as the host calls them: init (defaults, parameters, refusals), accumulate
/// (the user column checked), finish (row shapes).
#[test]
fn exports() {
    let _one = EXPORTS.lock().unwrap_or_else(|e| e.into_inner());
    let info = Reach::init(vec![]).unwrap();
    assert_eq!(info.name, "reach");
    assert_eq!(info.metrics, ["reach", "frequency"]);
    assert_eq!(info.columns, [Column::User]);
    assert_eq!(info.window, WindowSize::Day);
    assert!(!info.wants_touchpoints && !info.wants_views);

    let events = [
        (IMP, 4, 1),
        (IMP, 4, 1),
        (IMP, 4, 2),
        (CLICK, 4, 3),
        (CONV, 5, 1),
    ];
    let acc = Reach::accumulate(vec![], host_batch(&events)).unwrap();
    let rows = Reach::finish(acc.clone()).unwrap();
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!((r.campaign, r.ad, r.dimensions.len()), (4, None, 0));
    }
    let (reach, freq) = (&rows[0], &rows[1]);
    assert_eq!(
        (
            reach.metric.as_str(),
            reach.value,
            reach.numerator,
            reach.denominator
        ),
        ("reach", 2.0, 2.0, 3.0)
    );
    assert_eq!(
        (
            freq.metric.as_str(),
            freq.value,
            freq.numerator,
            freq.denominator
        ),
        ("frequency", 1.5, 3.0, 2.0)
    );
    // finish does not change the accumulator; an empty window has no rows.
    assert_eq!(Reach::finish(acc).unwrap(), rows);
    assert!(Reach::finish(vec![]).unwrap().is_empty());

    // A batch without the declared user column is refused.
    let mut no_users = host_batch(&events);
    no_users.users.clear();
    let e = Reach::accumulate(vec![], no_users).unwrap_err();
    assert!(e.contains("users"), "{e}");

    // Parameters: window and threshold; past the threshold the count is a sketch's estimate.
    let info = Reach::init(params(&[("exact_threshold", "10"), ("window", "hour")])).unwrap();
    assert_eq!(info.window, WindowSize::Hour);
    let many: Vec<_> = (0..11).map(|u| (IMP, 1, u)).collect();
    let acc = Reach::accumulate(vec![], host_batch(&many[..10])).unwrap();
    assert_eq!(acc[3 + 12], 0, "exact at the threshold");
    let acc = Reach::accumulate(acc, host_batch(&many[10..])).unwrap();
    assert_eq!(acc[3 + 12], 1, "a sparse sketch past it");
    assert_eq!(Reach::finish(acc).unwrap()[0].value, 11.0);
    let info = Reach::init(params(&[("window", "minute")])).unwrap();
    assert_eq!(info.window, WindowSize::Minute);

    // A refused init leaves the instance unconfigured.
    let e = Reach::init(params(&[("window", "week")])).unwrap_err();
    assert!(e.contains("`window`"), "{e}");
    let e = Reach::accumulate(vec![], host_batch(&events)).unwrap_err();
    assert!(e.contains("before a successful init"), "{e}");
    let e = Reach::init(params(&[("windw", "day"), ("threshold", "1")])).unwrap_err();
    assert!(e.contains("`windw`, `threshold`"), "{e}");
    Reach::init(vec![]).unwrap();
}

/// Native throughput (`cargo test --release -p reach -- --ignored --nocapture bench`): batches
/// of 4096 events, 80 % impressions, over 100 campaigns, through the `accumulate` export (the
/// SDK's batch checks, this crate's decode and encode; not the host's copies into and out of
/// wasm); exact (few users) and sketched (many users) regimes.
#[test]
#[ignore]
fn bench_accumulate() {
    let _one = EXPORTS.lock().unwrap_or_else(|e| e.into_inner());
    Reach::init(vec![]).unwrap();
    // CPU time of this thread (Linux), so that a shared, loaded machine inflates the figures less.
    let cpu = || -> u64 {
        std::fs::read_to_string("/proc/thread-self/schedstat")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    for (label, users) in [("exact", 1_000u64), ("sketch", 10_000_000)] {
        let mut rng = Rng(9);
        let batches: Vec<_> = (0..500)
            .map(|_| {
                let ev: Vec<_> = (0..4096)
                    .map(|_| {
                        let kind = if rng.below(5) == 0 { CLICK } else { IMP };
                        (kind, rng.below(100) as u32, rng.next() % users)
                    })
                    .collect();
                host_batch(&ev)
            })
            .collect();
        let t = cpu();
        let mut acc = Vec::new();
        let mut lap = t;
        let mut laps = Vec::new();
        for (i, b) in batches.into_iter().enumerate() {
            acc = Reach::accumulate(acc, b).unwrap();
            if i % 100 == 99 {
                laps.push(format!("{:.0}", (cpu() - lap) as f64 / (100.0 * 4096.0)));
                lap = cpu();
            }
        }
        let el = cpu() - t;
        println!("{label}: CPU ns/event per 100 batches: {}", laps.join(" "));
        let t2 = std::time::Instant::now();
        let r = Reach::finish(acc.clone()).unwrap();
        println!(
            "{label}: {:.1} CPU ns/event over {} events, state {} bytes, finish {:?} wall ({} rows)",
            el as f64 / (500.0 * 4096.0),
            500 * 4096,
            acc.len(),
            t2.elapsed(),
            r.len()
        );
    }
}
