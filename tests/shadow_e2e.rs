//! Shadow plugins end to end (issue 18): a real Apache Kafka broker, the daemon binary with the
//! shipped plugins live and a shadow directory, and `admetrics plugin diff` run as the built
//! binary. The traffic is explicit (event times, partitions, campaigns), so every window's
//! content, and which windows a click at millisecond 777 falls in, is known here.
//!
//! - `a_hot_loaded_shadow_is_diffed_shown_nowhere_and_promoted_without_a_gap`: the candidate
//!   `fixture_ctr_shadow_diff` ("ctr" 0.3.0: a click at ms 777 counts twice) dropped into the
//!   shadow directory of the running daemon, between two phases of traffic (the windows of the
//!   first phase were opened before it loaded, those of the second after). `plugin diff` finds
//!   exactly the windows with a 777 click (exit 1; 0 with thresholds allowing them; 2 on
//!   errors); the shadow rows are in the table with shadow = true, and the current view shows the
//!   live values only (checked against counts of the produced events). Then the candidate is
//!   promoted on the running daemon (its build installed as the live ctr, the shadow file
//!   removed): the window it had open finishes on it as live rows, with every event, and every
//!   window has live final ctr rows.
//! - `a_trapping_shadow_is_quarantined_and_the_live_plugin_stays_exact`: `fixture_ctr_bad` as
//!   the shadow of ctr: quarantined; live ctr rows complete, exact and not withheld; the live
//!   version's error counters on `/metrics` stay 0.
//!
//! No assertion depends on timing: every wait is for a condition, with a generous deadline.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::daemon::{Daemon, Probe, TOPIC, sigterm, wait_running};
use support::*;

const WINDOW_MS: i64 = 10_000;
const PARTITIONS: i32 = 2;
const CAMPAIGNS: [&str; 3] = ["c0", "c1", "c2"];
const IMPRESSIONS: u64 = 6;
const CLICKS: u64 = 2;
const LONG: Duration = Duration::from_secs(180);

/// Per (window, partition, campaign): impressions, clicks, clicks at ms 777 (among the clicks).
type Counts = BTreeMap<(i64, i32, String), (u64, u64, u64)>;

/// The produced traffic and what it holds.
struct Traffic {
    producer: TestProducer,
    /// Start of window 0 (a window boundary, 30 minutes ago: within the validation bounds).
    base: i64,
    next_id: u64,
    sent: i64,
    counts: Counts,
}

impl Traffic {
    fn new(bootstrap: &str) -> Traffic {
        let now = chrono::Utc::now().timestamp_millis();
        Traffic {
            producer: TestProducer::new(bootstrap, TOPIC),
            base: (now - 30 * 60_000).div_euclid(WINDOW_MS) * WINDOW_MS,
            next_id: 0,
            sent: 0,
            counts: Counts::new(),
        }
    }

    fn start(&self, w: i64) -> i64 {
        self.base + w * WINDOW_MS
    }

    fn send(&mut self, partition: i32, kind: &str, t: i64, campaign: &str) {
        let id = self.next_id;
        self.next_id += 1;
        let user = format!("u{partition}-{}", id % 13);
        let payload = format!(
            r#"{{"event_id":"e{id}","event_type":"{kind}","event_time":{t},"campaign_id":"{campaign}","ad_id":"{campaign}-ad","user_id":"{user}"}}"#
        );
        self.producer.send(partition, &user, payload.as_bytes());
        self.sent += 1;
        let w = (t - self.base).div_euclid(WINDOW_MS);
        let c = self
            .counts
            .entry((w, partition, campaign.to_string()))
            .or_default();
        match kind {
            "impression" => c.0 += 1,
            "click" => {
                c.1 += 1;
                if t.rem_euclid(1000) == 777 {
                    c.2 += 1;
                }
            }
            _ => unreachable!(),
        }
    }

    /// Window `w` on every partition: per campaign `IMPRESSIONS` impressions and `CLICKS`
    /// clicks (at ms 100 and 200), plus one click at ms 777 for each (partition, campaign) in
    /// `doubled`; each partition's events in event-time order.
    fn window(&mut self, w: i64, doubled: &[(i32, &str)]) {
        let start = self.start(w);
        for p in 0..PARTITIONS {
            let mut evs: Vec<(i64, &str, &str)> = Vec::new();
            for (ci, c) in CAMPAIGNS.iter().enumerate() {
                let at = start + 1_000 + ci as i64 * 1_000;
                for i in 0..IMPRESSIONS as i64 {
                    evs.push((at + 50 + i * 50, "impression", c));
                }
                for j in 0..CLICKS as i64 {
                    evs.push((at + 4_000 + (j + 1) * 100, "click", c));
                }
                if doubled.contains(&(p, c)) {
                    evs.push((at + 4_777, "click", c));
                }
            }
            evs.sort();
            for (t, kind, c) in evs {
                self.send(p, kind, t, c);
            }
        }
    }

    /// One impression of campaign "flush" per partition at window `w` (+1 s): closes every
    /// window ending before it minus the out-of-orderness.
    fn flush(&mut self, w: i64) {
        for p in 0..PARTITIONS {
            self.send(p, "impression", self.start(w) + 1_000, "flush");
        }
    }

    fn delivered(&self) {
        self.producer.flush();
    }
}

fn config(dir: &Path, bootstrap: &str, http: &str) -> PathBuf {
    let text = format!(
        r#"
[kafka]
brokers = "{bootstrap}"
topic = "{TOPIC}"
group_id = "unused"
batch_size = 1000
[kafka.consumer]
"session.timeout.ms" = "6000"
"heartbeat.interval.ms" = "1000"
[window]
size_secs = {size}
out_of_orderness_ms = 5000
idle_timeout_ms = 600000
[plugins]
dir = "{d}/plugins"
shadow_dir = "{d}/shadow"
watch_interval_ms = 100
quarantine_after = 3
[iceberg]
catalog_uri = "sqlite:{d}/catalog.db"
warehouse = "{d}/warehouse"
[commit]
interval_ms = 300
[http]
listen = "{http}"
"#,
        size = WINDOW_MS / 1000,
        d = dir.display()
    );
    let path = dir.join("admetrics.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A broker with the topic, a temp dir holding the shipped plugins in `plugins/` and `shadow`
/// (a file stem) in `shadow/` if given, the config, and the daemon started on it (its stderr
/// in `daemon.log`).
struct Setup {
    broker: Broker,
    dir: tempfile::TempDir,
    config: PathBuf,
    http: String,
    daemon: Daemon,
    probe: Probe,
}

impl Setup {
    fn start(shadow: Option<&str>, traffic_first: impl FnOnce(&str)) -> Setup {
        let broker = Broker::start();
        broker.create_topic(TOPIC, PARTITIONS as u32);
        traffic_first(&broker.bootstrap);
        let dir = tempfile::tempdir().unwrap();
        let (plugins, shadows) = (dir.path().join("plugins"), dir.path().join("shadow"));
        std::fs::create_dir(&plugins).unwrap();
        std::fs::create_dir(&shadows).unwrap();
        for p in ["ctr", "cvr", "attribution"] {
            install_plugin(&wasm(p), &plugins, &format!("{p}.wasm"));
        }
        if let Some(s) = shadow {
            install_plugin(&wasm(s), &shadows, &format!("{s}.wasm"));
        }
        let http = format!("127.0.0.1:{}", free_port());
        let config = config(dir.path(), &broker.bootstrap, &http);
        let log = std::fs::File::create(dir.path().join("daemon.log")).unwrap();
        let daemon = Daemon(
            support::daemon::daemon_command(&config, "shadow-e2e")
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn admetrics"),
        );
        let probe = Probe::new(&config);
        Setup {
            broker,
            dir,
            config,
            http,
            daemon,
            probe,
        }
    }

    fn metrics_page(&self) -> String {
        http_get(&self.http, "/metrics")
            .filter(|(code, _)| *code == 200)
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Waits until the daemon committed `total` messages and every partition has closed (and
    /// published final) the windows ending at or before `through_ms`.
    fn wait_closed(&mut self, total: i64, through_ms: i64, what: &str) {
        let probe = &self.probe;
        wait_running(&mut self.daemon, what, LONG, || {
            probe.committed() >= total && {
                let closed = probe.closed_through();
                closed.len() == PARTITIONS as usize
                    && closed.values().all(|c| c.is_some_and(|c| c >= through_ms))
            }
        });
    }

    /// Waits until `/metrics` has a series of `plugin_calls` with these labels (`present`) or
    /// none (`!present`).
    fn wait_plugin_state(&mut self, labels: &str, present: bool, what: &str) {
        let http = self.http.clone();
        wait_running(&mut self.daemon, what, LONG, || {
            let page = http_get(&http, "/metrics")
                .map(|(_, b)| b)
                .unwrap_or_default();
            !page.is_empty()
                && page
                    .lines()
                    .any(|l| l.starts_with("admetrics_plugin_calls_total{") && l.contains(labels))
                    == present
        });
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    fn tables(&self, metric: &str) -> Tables {
        let out = run_python(
            "verify_shadow.py",
            &[
                format!("--catalog={}", self.dir.path().join("catalog.db").display()),
                format!(
                    "--warehouse={}",
                    self.dir.path().join("warehouse").display()
                ),
                format!("--metric={metric}"),
            ],
        );
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }

    /// `admetrics plugin diff ARGS --config <ours>`: (exit code, stdout, stderr).
    fn diff(&self, args: &[&str]) -> (i32, String, String) {
        let o = Command::new(env!("CARGO_BIN_EXE_admetrics"))
            .args(["plugin", "diff"])
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("ADMETRICS_LOG", "warn")
            .output()
            .unwrap();
        let (out, err) = (
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        );
        progress(format_args!(
            "plugin diff {args:?}: exit {:?}\n{out}{err}",
            o.status.code()
        ));
        (o.status.code().expect("exited"), out, err)
    }

    fn diff_json(&self, args: &[&str]) -> (i32, serde_json::Value) {
        let mut a = args.to_vec();
        a.push("--json");
        let (code, out, err) = self.diff(&a);
        assert!(code == 0 || code == 1, "exit {code}: {err}");
        (
            code,
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}")),
        )
    }
}

/// What `tests/verify_shadow.py` read.
#[derive(Debug, serde::Deserialize)]
struct Tables {
    live: Vec<Latest>,
    shadow: Vec<Latest>,
    current: Vec<Current>,
    shadow_values: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct Latest {
    window_start_ms: i64,
    stream: Option<String>,
    partition: i32,
    campaign: String,
    numerator: f64,
    denominator: f64,
    is_final: bool,
    withheld: bool,
    plugin_version: String,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct Current {
    window_start_ms: i64,
    campaign: String,
    numerator: f64,
    denominator: f64,
    is_final: bool,
    withheld: bool,
}

/// Per (window start, campaign): the ctr numerator and denominator the current view must show,
/// summed over the partitions, for windows in `windows`; `doubled_from`: windows from this one
/// on are computed by the candidate (777 clicks twice).
fn expected_current(
    t: &Traffic,
    windows: &BTreeSet<i64>,
    doubled_from: i64,
) -> BTreeMap<(i64, String), (f64, f64)> {
    let mut out: BTreeMap<(i64, String), (f64, f64)> = BTreeMap::new();
    for ((w, _, c), (imp, clicks, d)) in &t.counts {
        if !windows.contains(w) {
            continue;
        }
        let e = out.entry((t.start(*w), c.clone())).or_default();
        e.0 += (*clicks + if *w >= doubled_from { *d } else { 0 }) as f64;
        e.1 += *imp as f64;
    }
    out
}

fn current_of(
    tables: &Tables,
    windows: &BTreeSet<i64>,
    t: &Traffic,
) -> BTreeMap<(i64, String), (f64, f64)> {
    let starts: BTreeSet<i64> = windows.iter().map(|w| t.start(*w)).collect();
    tables
        .current
        .iter()
        .filter(|r| starts.contains(&r.window_start_ms))
        .map(|r| {
            assert!(r.is_final && !r.withheld, "{r:?}");
            (
                (r.window_start_ms, r.campaign.clone()),
                (r.numerator, r.denominator),
            )
        })
        .collect()
}

/// The windows and partitions a 777 click was produced in, among `windows`.
fn shares_with_777(t: &Traffic, windows: &BTreeSet<i64>) -> BTreeSet<(i64, i32)> {
    t.counts
        .iter()
        .filter(|((w, _, _), c)| windows.contains(w) && c.2 > 0)
        .map(|((w, p, _), _)| (t.start(*w), *p))
        .collect()
}

fn json_shares(v: &serde_json::Value) -> BTreeSet<(i64, i32)> {
    v["differing"]
        .as_array()
        .expect("differing")
        .iter()
        .map(|s| {
            assert_eq!(s["stream"], TOPIC, "{s}");
            (
                s["window_start_ms"].as_i64().unwrap(),
                s["partition"].as_i64().unwrap() as i32,
            )
        })
        .collect()
}

#[test]
fn a_hot_loaded_shadow_is_diffed_shown_nowhere_and_promoted_without_a_gap() {
    let mut traffic = None;
    let mut s = Setup::start(None, |bootstrap| traffic = Some(Traffic::new(bootstrap)));
    let mut t = traffic.unwrap();
    let candidate = wasm("fixture_ctr_shadow_diff");

    // Phase 1, before the shadow exists: windows 0-3 (one 777 click: live only, never compared).
    let phase1: BTreeSet<i64> = (0..4).collect();
    for w in phase1.clone() {
        t.window(w, if w == 2 { &[(0, "c1")] } else { &[] });
    }
    t.delivered();
    let sent1 = t.sent;
    let probe = &s.probe;
    wait_running(&mut s.daemon, "phase 1 committed", LONG, || {
        probe.committed() >= sent1
    });

    // The candidate dropped into the shadow directory of the running daemon.
    install_plugin(
        &candidate,
        &s.dir.path().join("shadow"),
        "ctr-candidate.wasm",
    );
    s.wait_plugin_state(
        r#"plugin="ctr",version="0.3.0",state="shadow""#,
        true,
        "the candidate loaded as the shadow of ctr",
    );

    // Phase 2: windows 4-13, opened after the shadow loaded; 777 clicks in chosen shares.
    let phase2: BTreeSet<i64> = (4..14).collect();
    let doubled: BTreeMap<i64, Vec<(i32, &str)>> = BTreeMap::from([
        (5, vec![(0, "c1")]),
        (7, vec![(1, "c0"), (1, "c2")]),
        (10, vec![(0, "c2"), (1, "c1")]),
        (12, vec![(1, "c0")]),
    ]);
    for w in phase2.clone() {
        t.window(w, doubled.get(&w).map_or(&[][..], |d| d.as_slice()));
    }
    t.flush(20);
    t.delivered();
    s.wait_closed(t.sent, t.start(14), "phase 2 closed");

    // (a) plugin diff finds exactly the shares with a 777 click among the compared ones.
    let want = shares_with_777(&t, &phase2);
    assert_eq!(want.len(), 5, "{want:?}");
    assert_eq!(shares_with_777(&t, &phase1).len(), 1);
    let live_path = s.dir.path().join("plugins/ctr.wasm");
    let live_path = live_path.to_str().unwrap();
    let (code, r) = s.diff_json(&[live_path, "ctr@0.3.0"]);
    assert_eq!(code, 1, "{r}");
    assert_eq!(json_shares(&r), want, "{r}");
    assert_eq!(r["windows_compared"], 20, "10 windows x 2 partitions: {r}");
    assert_eq!(
        r["not_compared"],
        serde_json::json!({"live_only": 8, "shadow_only": 0, "not_final": 2}),
        "phase 1 is live only; the flush window is open on both sides: {r}"
    );
    let ctr = &r["metrics"]["ctr"];
    assert_eq!(ctr["windows_compared"], 20, "{r}");
    assert_eq!(ctr["windows_differing"], 5, "{r}");
    assert_eq!(ctr["keys_compared"], 20 * 3, "{r}");
    assert_eq!(ctr["keys_differing"], 6, "one key per 777 click: {r}");
    assert_eq!(
        (
            ctr["keys_live_only"].as_u64(),
            ctr["keys_shadow_only"].as_u64()
        ),
        (Some(0), Some(0))
    );
    assert_eq!(ctr["largest_numerator"]["abs"][0], 1.0, "{r}");
    assert!(ctr["largest_denominator"]["abs"].is_null(), "{r}");
    // Relative: 3 vs 4 clicks.
    assert_eq!(ctr["largest_numerator"]["rel"][0], 0.25, "{r}");
    assert_eq!(
        ctr["examples"].as_array().unwrap().len(),
        5,
        "--examples default: {r}"
    );
    for m in ["cvr", "attribution"] {
        assert!(r["metrics"].get(m).is_none(), "only ctr has a shadow: {r}");
    }
    assert_eq!(r["live"]["version"], "0.1.0");
    assert_eq!(r["shadow"]["version"], "0.3.0");
    assert_eq!(r["pass"], false);

    // The same, named by NAME@VERSION and a sha256 prefix, as text.
    let sha = r["shadow"]["sha256"].as_str().unwrap().to_string();
    let (code, text, _) = s.diff(&["ctr@0.1.0", &sha[..10]]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("20 compared, 5 differ") && text.contains("FAIL"),
        "{text}"
    );
    for (w, p) in &want {
        let at = chrono::DateTime::from_timestamp_millis(*w)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        assert!(
            text.contains(&format!("{at} {TOPIC}/{p}")),
            "{at} {p}: {text}"
        );
    }

    // Thresholds that allow them pass; tighter ones do not.
    for (args, expect) in [
        (vec!["--max-differing-windows", "5"], 0),
        (vec!["--max-differing-windows", "4"], 1),
        (vec!["--max-differing-fraction", "0.25"], 0),
        (vec!["--max-differing-fraction", "0.2"], 1),
        (
            vec![
                "--max-differing-windows",
                "5",
                "--max-differing-fraction",
                "0.2",
            ],
            1,
        ),
    ] {
        let mut a = vec!["ctr@0.1.0", "ctr@0.3.0"];
        a.extend(args.iter().copied());
        let (code, text, err) = s.diff(&a);
        assert_eq!(code, expect, "{args:?}: {text}{err}");
        assert!(
            text.contains(if expect == 0 { "PASS" } else { "FAIL" }),
            "{text}"
        );
    }

    // --since: only windows starting at or after it (epoch ms and RFC 3339 alike).
    let since = t.start(10);
    let since_rfc = chrono::DateTime::from_timestamp_millis(since)
        .unwrap()
        .to_rfc3339();
    let later: BTreeSet<i64> = (10..14).collect();
    for since_arg in [since.to_string(), since_rfc] {
        let (code, r) = s.diff_json(&["ctr@0.1.0", "ctr@0.3.0", "--since", since_arg.as_str()]);
        assert_eq!(code, 1);
        assert_eq!(json_shares(&r), shares_with_777(&t, &later), "{r}");
        assert_eq!(r["windows_compared"], 8, "{r}");
        assert_eq!(r["not_compared"]["live_only"], 0, "{r}");
    }

    // Errors: exit 2, saying what is wrong.
    for (args, says) in [
        (
            vec!["ctr@0.1.0", "ctr@7.7.7"],
            "no shadow rows of ctr@7.7.7",
        ),
        (vec!["ctr@0.3.0", "ctr@0.3.0"], "no live rows of ctr@0.3.0"),
        (vec!["cvr@0.1.0", "ctr@0.3.0"], "different plugins"),
        (vec!["ctr@0.1.0", "zz"], "names no plugin version"),
        (vec!["ctr@0.1.0", "/nowhere/ctr.wasm"], "/nowhere/ctr.wasm"),
    ] {
        let (code, out, err) = s.diff(&args);
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    // Only the open flush window from there on: nothing compared is an error, not a pass.
    let from_flush = t.start(20).to_string();
    let (code, out, err) = s.diff(&["ctr@0.1.0", "ctr@0.3.0", "--since", from_flush.as_str()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("nothing compared") && err.contains("2 still open on a side"),
        "{err}"
    );

    // (b) The shadow rows are in the table, marked; the current view shows the live values.
    let tables = s.tables("ctr");
    let closed: BTreeSet<i64> = phase1.union(&phase2).copied().collect();
    assert_eq!(
        current_of(&tables, &closed, &t),
        expected_current(&t, &closed, i64::MAX),
        "the current view: live ctr, every 777 click once"
    );
    assert!(
        !tables.shadow_values.contains_key("none"),
        "every row written now says whether it is a shadow's: {:?}",
        tables.shadow_values
    );
    let mut shadow_rows: BTreeMap<(i64, i32, String), (f64, f64)> = BTreeMap::new();
    for r in tables
        .shadow
        .iter()
        .filter(|r| r.window_start_ms < t.start(14))
    {
        assert_eq!(r.stream.as_deref(), Some(TOPIC));
        assert_eq!(
            (&*r.plugin_version, r.is_final, r.withheld),
            ("0.3.0", true, false),
            "{r:?}"
        );
        shadow_rows.insert(
            (r.window_start_ms, r.partition, r.campaign.clone()),
            (r.numerator, r.denominator),
        );
    }
    let expected_shadow: BTreeMap<(i64, i32, String), (f64, f64)> = t
        .counts
        .iter()
        .filter(|((w, _, _), _)| phase2.contains(w))
        .map(|((w, p, c), (imp, clicks, d))| {
            (
                (t.start(*w), *p, c.clone()),
                ((clicks + d) as f64, *imp as f64),
            )
        })
        .collect();
    assert_eq!(
        shadow_rows, expected_shadow,
        "shadow rows: every window opened after it loaded (and none before), 777 clicks twice"
    );
    for r in tables
        .live
        .iter()
        .filter(|r| r.window_start_ms < t.start(14))
    {
        assert_eq!(
            (&*r.plugin_version, r.is_final, r.withheld),
            ("0.1.0", true, false),
            "{r:?}"
        );
    }

    // (d) Promotion on the running daemon: the candidate's build installed as the live ctr,
    // then removed from the shadow directory. The flush window (20) is open on both versions.
    install_plugin(&candidate, &s.dir.path().join("plugins"), "ctr.wasm");
    s.wait_plugin_state(
        r#"plugin="ctr",version="0.3.0",state="active""#,
        true,
        "the candidate promoted",
    );
    std::fs::remove_file(s.dir.path().join("shadow/ctr-candidate.wasm")).unwrap();
    s.wait_plugin_state(r#"state="shadow""#, false, "no shadow any more");
    // Phase 3: more of window 20 (after its flush event), windows 21-23, then close them.
    let phase3: BTreeSet<i64> = (20..24).collect();
    for w in phase3.clone() {
        t.window(
            w,
            if w % 2 == 0 {
                &[(0, "c0")]
            } else {
                &[(1, "c2")]
            },
        );
    }
    t.flush(30);
    t.delivered();
    s.wait_closed(t.sent, t.start(24), "phase 3 closed");

    let tables = s.tables("ctr");
    let all: BTreeSet<i64> = closed.union(&phase3).copied().collect();
    let mut want_current = expected_current(&t, &closed, i64::MAX);
    want_current.extend(expected_current(&t, &phase3, 20));
    assert_eq!(
        current_of(&tables, &all, &t),
        want_current,
        "every window has live final ctr values; from the promotion on, the candidate's \
         (window 20, open at the swap, with every one of its events)"
    );
    for r in tables
        .live
        .iter()
        .filter(|r| r.window_start_ms < t.start(24))
    {
        let w = (r.window_start_ms - t.base) / WINDOW_MS;
        let version = if w >= 20 { "0.3.0" } else { "0.1.0" };
        assert_eq!(
            (&*r.plugin_version, r.is_final, r.withheld),
            (version, true, false),
            "window {w}: {r:?}"
        );
    }
    assert!(
        tables
            .shadow
            .iter()
            .all(|r| r.window_start_ms <= t.start(20)),
        "no shadow rows after the promotion"
    );
    // The comparison is unchanged: window 20 is final on neither side as live 0.1.0 / shadow
    // 0.3.0 (it finished as live 0.3.0), so it is still not compared.
    let (code, r) = s.diff_json(&["ctr@0.1.0", "ctr@0.3.0"]);
    assert_eq!(code, 1);
    assert_eq!(json_shares(&r), want, "{r}");
    assert_eq!(r["windows_compared"], 20, "{r}");

    let status = sigterm(&mut s.daemon);
    progress(format_args!("stopped in {status:?}"));
    drop(s.broker);
}

#[test]
fn a_trapping_shadow_is_quarantined_and_the_live_plugin_stays_exact() {
    // The traffic first, then the daemon with fixture_ctr_bad ("ctr" 9.9.9-bad, traps on any
    // batch of more than 8 events) configured as the shadow of ctr at start: every window of a
    // partition holds 25 events, read in large batches.
    let mut traffic = None;
    let windows: BTreeSet<i64> = (0..6).collect();
    let mut s = Setup::start(Some("fixture_ctr_bad"), |bootstrap| {
        let mut t = Traffic::new(bootstrap);
        for w in windows.clone() {
            t.window(w, &[(0, "c0"), (1, "c1")]);
        }
        t.flush(10);
        t.delivered();
        traffic = Some(t);
    });
    let t = traffic.unwrap();
    s.wait_closed(t.sent, t.start(6), "every window closed");

    let log = s.log();
    assert!(
        log.contains("shadow plugin quarantined after repeated failures"),
        "the shadow is quarantined: {log}"
    );
    assert!(
        !log.contains("plugin failed; its rows for this window are withheld"),
        "no live failure: {log}"
    );
    let page = s.metrics_page();
    progress(format_args!(
        "plugin series at the end:\n{}",
        page.lines()
            .filter(|l| l.starts_with("admetrics_plugin_"))
            .collect::<Vec<_>>()
            .join("\n")
    ));
    for line in [
        r#"admetrics_plugin_errors_total{plugin="ctr",version="0.1.0",state="active"} 0"#,
        "admetrics_plugins_quarantined_total 0",
        "admetrics_plugin_rollbacks_total 0",
        "admetrics_shadows_quarantined_total 1",
    ] {
        assert!(page.lines().any(|l| l == line), "no {line:?} in\n{page}");
    }
    // Its own series, while it is still listed (a window holds it), say quarantined.
    assert!(
        !page.contains(r#"version="9.9.9-bad",state="shadow"}"#),
        "the shadow is not active any more:\n{page}"
    );
    assert!(
        page.lines()
            .filter(|l| l.starts_with("admetrics_plugin_errors_total{"))
            .all(|l| l.ends_with(" 0") || l.contains("9.9.9-bad")),
        "only the shadow failed:\n{page}"
    );

    let tables = s.tables("ctr");
    assert_eq!(
        current_of(&tables, &windows, &t),
        expected_current(&t, &windows, i64::MAX),
        "live ctr complete and exact"
    );
    let live: Vec<&Latest> = tables
        .live
        .iter()
        .filter(|r| r.window_start_ms < t.start(6))
        .collect();
    assert_eq!(live.len(), 6 * PARTITIONS as usize * CAMPAIGNS.len());
    for r in live {
        assert_eq!(
            (&*r.plugin_version, r.is_final, r.withheld),
            ("0.1.0", true, false),
            "{r:?}"
        );
    }
    assert!(
        tables
            .shadow
            .iter()
            .all(|r| r.plugin_version == "9.9.9-bad"),
        "{:?}",
        tables.shadow
    );
    // A shadow that failed never passes the gate (its windows differ, or it has no rows).
    let (code, out, err) = s.diff(&["ctr@0.1.0", "ctr@9.9.9-bad"]);
    assert_ne!(code, 0, "{out}{err}");

    sigterm(&mut s.daemon);
}
