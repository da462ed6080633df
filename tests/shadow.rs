//! Shadow plugins (issue 18), in process: the processor is driven directly, so each test knows
//! exactly which events every window holds and when a swap lands between two batches.
//!
//! - a shadow computes the same windows as the live version, its rows marked `shadow`;
//! - promoting a shadow (installing its build as the live plugin) carries the windows it has
//!   open over: they finish on it, with every event of the window, and the replaced version
//!   publishes nothing more for them;
//! - a shadow that traps is quarantined alone: the live version's rows, error counters and
//!   state are untouched.
//!
//! The daemon end to end (Kafka, Iceberg, `admetrics plugin diff`) is in `tests/shadow_e2e.rs`.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use admetrics::config::Config;
use admetrics::pipeline::processor::PluginSpec;
use admetrics::pipeline::{Clock, Processor};
use admetrics::plugin::{Plugin, PluginRuntime};
use admetrics::sink::schema::MetricRecord;
use admetrics::source::RawMessage;
use admetrics::status::Status;

/// A minute boundary: window `w` is `[BASE + w·60 s, BASE + (w+1)·60 s)`.
const BASE: i64 = 1_700_000_040_000;

fn load(name: &str) -> Plugin {
    PluginRuntime::new(&Config::default().plugins)
        .unwrap()
        .load(&support::wasm(name))
        .unwrap_or_else(|e| panic!("{name}: {e} (run scripts/build-plugins.sh)"))
}

/// Feeds events of partition 0 with consecutive offsets.
struct Feed {
    offset: i64,
    clock: Clock,
}

impl Feed {
    fn new() -> Self {
        Feed {
            offset: 0,
            clock: Clock {
                now_ms: BASE + 3_600_000,
                instant: Instant::now(),
            },
        }
    }

    fn send(&mut self, p: &mut Processor, kind: &str, time_ms: i64) {
        let payload = format!(
            r#"{{"event_id":"e{}","event_type":"{kind}","event_time":{time_ms},"campaign_id":"camp","ad_id":"ad","user_id":"u{}"}}"#,
            self.offset,
            self.offset % 7
        );
        p.process(
            RawMessage {
                partition: 0,
                offset: self.offset,
                payload: Some(payload.as_bytes()),
                timestamp_ms: None,
            },
            &self.clock,
        );
        self.offset += 1;
    }

    /// `impressions` impressions and `clicks` clicks in window `w`, the first `doubled` clicks
    /// at millisecond 777 of their second (the candidate counts those twice).
    fn window(&mut self, p: &mut Processor, w: i64, impressions: i64, clicks: i64, doubled: i64) {
        let start = BASE + w * 60_000;
        for i in 0..impressions {
            self.send(p, "impression", start + 1_000 + i * 10);
        }
        for i in 0..clicks {
            let ms = if i < doubled { 777 } else { 100 };
            self.send(p, "click", start + 30_000 + i * 1_000 + ms);
        }
    }
}

fn ctr_rows(rows: &[MetricRecord], w: i64) -> Vec<&MetricRecord> {
    rows.iter()
        .filter(|r| r.metric == "ctr" && r.window_start_ms == BASE + w * 60_000)
        .collect()
}

fn config() -> Config {
    let mut cfg = Config::default();
    cfg.window.size_secs = 60;
    cfg.window.out_of_orderness_ms = 5_000;
    cfg
}

#[test]
fn a_shadow_computes_the_same_windows_and_its_rows_are_marked() {
    let status = Arc::new(Status::default());
    let mut p = Processor::new(&config(), vec![load("ctr")], status.clone());
    p.add_shadows(vec![load("fixture_ctr_shadow_diff")]);
    let mut f = Feed::new();
    f.window(&mut p, 0, 10, 3, 0);
    f.window(&mut p, 1, 10, 3, 1);
    // Closes windows 0 and 1 (watermark = event time − 5 s); window 2 gets a doubled click.
    f.send(&mut p, "impression", BASE + 130_000);
    f.send(&mut p, "click", BASE + 131_777);
    let rows = p.publish(&f.clock);
    for (w, shadow_clicks) in [(0, 3.0), (1, 4.0)] {
        let rows = ctr_rows(&rows, w);
        let live: Vec<_> = rows.iter().filter(|r| !r.shadow).collect();
        let shadow: Vec<_> = rows.iter().filter(|r| r.shadow).collect();
        assert_eq!(live.len(), 1, "window {w}: {rows:?}");
        assert_eq!(shadow.len(), 1, "window {w}: {rows:?}");
        let (l, s) = (live[0], shadow[0]);
        assert_eq!(
            (&*l.plugin_version, l.numerator, l.denominator, l.is_final),
            ("0.1.0", 3.0, 10.0, true)
        );
        assert_eq!(
            (
                &*s.plugin_version,
                s.numerator,
                s.denominator,
                s.is_final,
                s.withheld
            ),
            ("0.3.0", shadow_clicks, 10.0, true, false)
        );
        assert_eq!(
            s.plugin, l.plugin,
            "the shadow shadows the plugin of its name"
        );
    }
    // The live view and the active set name the live version only.
    assert_eq!(p.active_set().len(), 1);
    assert_eq!(p.active_set()[0].1, "0.1.0");
    let current = status.current.lock().unwrap().1.clone();
    assert_eq!(
        (current[0].clicks, current[0].impressions),
        (1.0, 1.0),
        "{current:?}"
    );
}

#[test]
fn promoting_a_shadow_carries_its_open_windows_over_without_a_gap() {
    let status = Arc::new(Status::default());
    let mut p = Processor::new(&config(), vec![load("ctr")], status.clone());
    p.add_shadows(vec![load("fixture_ctr_shadow_diff")]);
    let mut f = Feed::new();
    // Window 0, first half: 10 impressions, 3 clicks (one doubled by the candidate).
    f.window(&mut p, 0, 10, 3, 1);
    let before = p.publish(&f.clock);
    let shadow_before: Vec<_> = ctr_rows(&before, 0)
        .into_iter()
        .filter(|r| r.shadow)
        .collect();
    assert_eq!(shadow_before.len(), 1, "{before:?}");
    assert_eq!(shadow_before[0].numerator, 4.0);

    // The operator installs the candidate's build as the live ctr: a promotion.
    let candidate = load("fixture_ctr_shadow_diff");
    p.install(vec![PluginSpec::New {
        plugin: candidate,
        shadow: false,
    }]);
    assert_eq!(p.active_set()[0].1, "0.3.0");

    // Window 0, second half: 2 more clicks (one doubled), then close it.
    for (i, ms) in [(0, 777), (1, 100)] {
        f.send(&mut p, "click", BASE + 50_000 + i * 1_000 + ms);
    }
    f.window(&mut p, 2, 5, 0, 0);
    f.send(&mut p, "impression", BASE + 190_000);
    let after = p.publish(&f.clock);
    let w0 = ctr_rows(&after, 0);
    // One live, final row: the promoted version, over the whole window (both halves).
    assert_eq!(w0.len(), 1, "{w0:?}");
    let r = w0[0];
    assert_eq!(
        (
            &*r.plugin_version,
            r.shadow,
            r.is_final,
            r.withheld,
            r.numerator,
            r.denominator
        ),
        ("0.3.0", false, true, false, 7.0, 10.0),
        "{r:?}"
    );
    // A window opened after the promotion: the promoted version, live, and no shadow any more.
    let w2 = ctr_rows(&after, 2);
    assert_eq!(w2.len(), 1, "{w2:?}");
    assert_eq!(
        (&*w2[0].plugin_version, w2[0].shadow, w2[0].denominator),
        ("0.3.0", false, 5.0)
    );
    assert!(after.iter().all(|r| !r.shadow), "{after:?}");
}

#[test]
fn a_shadow_that_traps_is_quarantined_alone_and_the_live_version_is_untouched() {
    let status = Arc::new(Status::default());
    let mut p = Processor::new(&config(), vec![load("ctr")], status.clone());
    // "ctr" 9.9.9-bad traps on any batch of more than 8 events.
    p.add_shadows(vec![load("fixture_ctr_bad")]);
    let mut f = Feed::new();
    let mut rows = Vec::new();
    for w in 0..5 {
        f.window(&mut p, w, 20, 4, 0);
        p.flush_plugins();
        rows.extend(p.publish(&f.clock));
    }
    f.send(&mut p, "impression", BASE + 400_000);
    rows.extend(p.publish(&f.clock));
    for w in 0..5 {
        let live: Vec<_> = ctr_rows(&rows, w)
            .into_iter()
            .filter(|r| !r.shadow && r.is_final)
            .collect();
        assert_eq!(live.len(), 1, "window {w}: {rows:?}");
        assert_eq!(
            (
                &*live[0].plugin_version,
                live[0].withheld,
                live[0].numerator,
                live[0].denominator
            ),
            ("0.1.0", false, 4.0, 20.0)
        );
    }
    // The shadow's failures are its own: withheld shadow rows (where it had published), never a
    // live row withheld, no live error or quarantine counted.
    assert!(
        rows.iter().filter(|r| r.withheld).all(|r| r.shadow),
        "{rows:?}"
    );
    assert_eq!(status.plugin_errors.load(Relaxed), 0);
    assert_eq!(status.plugins_quarantined.get(), 0);
    assert_eq!(status.shadows_quarantined.get(), 1);
    assert!(
        status.shadow_errors.get() >= 3,
        "{:?}",
        status.shadow_errors
    );
    let states: Vec<_> = p
        .slots()
        .map(|s| (s.plugin.info.version.clone(), s.shadow, s.state))
        .collect();
    use admetrics::pipeline::registry::SlotState;
    assert!(
        states.contains(&("0.1.0".into(), false, SlotState::Active)),
        "{states:?}"
    );
    // Quarantined after 3 failures (quarantine_after), then dropped once no window held it:
    // windows opened later have no shadow.
    assert_eq!(states.len(), 1, "{states:?}");
    for w in 0..3 {
        assert!(ctr_rows(&rows, w).iter().any(|r| r.shadow), "window {w}");
    }
    for w in 3..5 {
        assert!(ctr_rows(&rows, w).iter().all(|r| !r.shadow), "window {w}");
    }
}
