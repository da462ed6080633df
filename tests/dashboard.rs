//! The Superset dashboard, in a real browser, over the tables of a running daemon.
//!
//! An Apache Kafka broker, the daemon binary (with its `/metrics` endpoint) and Superset served by
//! `scripts/dashboard.sh` (its own venv, DuckDB reading the Iceberg tables) all run as real
//! processes on loopback. Debian's Chromium, driven by Playwright (`dashboard/browser_check.py`),
//! logs in and opens the dashboard; every chart's data request must succeed, and
//! `tests/verify_dashboard.py` checks each chart's rows against the tables read with PyIceberg,
//! and `/metrics` against the same tables. Then more events are produced while the page stays
//! open: its own 10 s auto-refresh must show them (reading Superset's cache: no forced
//! queries), and the refreshed charts are checked again. `tests/verify_warm_cache.py` then checks
//! that Superset's cache warm-up (`dashboard/warm_cache.py`, which `scripts/dashboard.sh` runs)
//! fills exactly the entries the page's chart-data requests read. Then `tests/verify_dashboard_access.py`
//! checks, with the caches warm, that a user without access to the datasets gets none of what a
//! user with access was just served. Screenshots are kept in `tests/artifacts/`.
//!
//! The daemon loads every shipped plugin the dashboard shows: ctr with its country x device
//! breakdown (`[plugins.config.ctr] dimensions`), cvr, the four attribution models and reach.
//!
//! A second test checks the chart-data cache's single-flight (`tests/verify_single_flight.py`,
//! several processes against a real redis-server); a third the current-value view itself on
//! hand-written tables (`tests/verify_current_metrics.py`).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use admetrics::loadgen::{EventGen, LoadgenArgs};
use support::*;

const TOPIC: &str = "campaign-events";
const PARTITIONS: i32 = 4;

/// Kills the child (and, for the dashboard script, gunicorn's workers) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        // The dashboard script execs gunicorn, whose workers are its children: kill the group.
        // `--` matters: procps' `kill -TERM -1234` reads "-1234" as options and signals pid -1,
        // that is every process on the machine (it took down CI's runner once).
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &format!("-{}", self.0.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A sample of the daemon's `/metrics` page.
fn metric(addr: &str, name: &str) -> f64 {
    let (_, page) = http_get(addr, "/metrics").expect("/metrics answers");
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} not on /metrics"))
}

fn partition_of(key: &str) -> i32 {
    (admetrics::dedup::hash_id(key) % PARTITIONS as u64) as i32
}

/// `n` events of the load generator spread over `span_ms` of event time ending at `end_ms`,
/// keyed by user; returns how many were sent (all acknowledged).
fn produce(p: &mut TestProducer, events: &mut EventGen, n: u64, end_ms: i64, span_ms: i64) -> u64 {
    let start = end_ms - span_ms;
    for i in 0..n {
        let t = start + (i as i64 * span_ms) / n as i64;
        let (key, payload) = events.next(t);
        p.send(partition_of(&key), &key, payload.as_bytes());
    }
    p.flush();
    n
}

/// `script` (in tests/) run by Superset's venv with Superset's environment as
/// `scripts/dashboard.sh` sets it for `home`; returns its output, fails the test on exit != 0.
fn run_superset_python(script: &str, home: Option<&Path>, args: &[String]) -> String {
    let mut cmd = Command::new(superset_python());
    cmd.arg(repo_root().join("tests").join(script)).args(args);
    if let Some(home) = home {
        cmd.env("ADMETRICS_SUPERSET_HOME", home)
            .env(
                "SUPERSET_CONFIG_PATH",
                repo_root().join("dashboard/superset_config.py"),
            )
            .env("PYTHONPATH", repo_root().join("dashboard"))
            .env_remove("ADMETRICS_REDIS_URL");
    }
    let out = cmd.output().expect("run Superset's python");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The plugins the dashboard shows: the three shipped ones (ctr with its country x device
/// breakdown, set in the config), the other attribution models and reach.
fn dashboard_plugins_toml() -> String {
    let mut paths = plugin_paths();
    for name in [
        "attribution_linear",
        "attribution_time_decay",
        "attribution_position",
        "reach",
    ] {
        paths.push(wasm(name));
    }
    let quoted: Vec<String> = paths
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// The one definition of a current value, `sql/current_metrics.sql`, on hand-written tables:
/// keys by plugin, breakdown cell and window size, rates and sums, restatements per plugin.
#[test]
fn the_current_value_view_keys_by_plugin_cell_and_window() {
    println!("{}", run_python("verify_current_metrics.py", &[]));
}

#[test]
fn the_chart_data_cache_computes_a_missing_entry_once() {
    println!(
        "{}",
        run_superset_python("verify_single_flight.py", None, &[])
    );
}

fn superset_python() -> PathBuf {
    let p = repo_root().join(".venv-superset/bin/python");
    assert!(p.is_file(), "{} missing: run scripts/setup.sh", p.display());
    p
}

#[test]
fn the_dashboard_shows_what_the_tables_hold_and_refreshes_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS as u32);
    let metrics_addr = format!("127.0.0.1:{}", free_port());
    let cfg = d.join("admetrics.toml");
    std::fs::write(
        &cfg,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopic = \"{TOPIC}\"\ngroup_id = \"dashboard-test\"\n\
             [window]\nsize_secs = 60\nout_of_orderness_ms = 2000\nidle_timeout_ms = 2000\n\
             [plugins]\npaths = {}\n\
             [plugins.config.ctr]\ndimensions = [\"country\", \"device\"]\n\
             [iceberg]\ncatalog_uri = \"sqlite:{d}/catalog.db\"\nwarehouse = \"{d}/warehouse\"\n\
             [commit]\ninterval_ms = 500\n[http]\nlisten = \"{metrics_addr}\"\n",
            broker.bootstrap,
            dashboard_plugins_toml(),
            d = d.display()
        ),
    )
    .unwrap();
    progress(format_args!(
        "work dir {}; starting the daemon",
        d.display()
    ));
    let log = std::fs::File::create(d.join("daemon.log")).unwrap();
    let _daemon = Proc(
        Command::new(env!("CARGO_BIN_EXE_admetrics"))
            .args(["run", "--config"])
            .arg(&cfg)
            .env("ADMETRICS_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    wait_for("the daemon's /ready", Duration::from_secs(60), || {
        http_get(&metrics_addr, "/ready").is_some_and(|(c, _)| c == 200)
    });
    assert_eq!(http_get(&metrics_addr, "/health").unwrap().0, 200);

    // First burst: 6 minutes of traffic ending a minute ago, a few bad messages, late events.
    let now = chrono::Utc::now().timestamp_millis();
    let mut events = EventGen::new(LoadgenArgs {
        rate: 1000,
        campaigns: 12,
        ads_per_campaign: 3,
        users: 2_000,
        ctr: 0.1,
        cvr: 0.2,
        seed: 11,
        disorder_ms: 1_000,
        total: None,
        ..Default::default()
    });
    let mut producer = TestProducer::new(&broker.bootstrap, TOPIC);
    let mut sent = produce(&mut producer, &mut events, 12_000, now - 60_000, 360_000);
    let bad: [&[u8]; 3] = [b"{not json", br#"{"event_type":"view"}"#, b""];
    for (i, b) in bad.iter().enumerate() {
        producer.send(i as i32 % PARTITIONS, "bad", b);
    }
    producer.flush();
    sent += bad.len() as u64;
    let committed = |addr: &str| {
        metric(
            addr,
            "admetrics_committed_rows_total{table=\"campaign_events\"}",
        ) + metric(
            addr,
            "admetrics_committed_rows_total{table=\"dead_letters\"}",
        )
    };
    wait_for(
        "the first burst committed (/metrics)",
        Duration::from_secs(120),
        || committed(&metrics_addr) as u64 == sent,
    );
    // Late: behind the watermark the first burst moved (their windows closed long ago).
    for i in 0..5 {
        let (key, payload) = events.next(now - 60_000 - 600_000 - i * 1000);
        producer.send(partition_of(&key), &key, payload.as_bytes());
    }
    producer.flush();
    sent += 5;
    wait_for(
        "the late events committed (/metrics)",
        Duration::from_secs(120),
        || committed(&metrics_addr) as u64 == sent,
    );
    assert_eq!(metric(&metrics_addr, "admetrics_late_events_total"), 5.0);
    assert_eq!(
        metric(
            &metrics_addr,
            "admetrics_dead_letters_total{reason=\"malformed_json\"}"
        ),
        2.0
    );

    // Superset, as a user would start it.
    progress("tables written; starting Superset (scripts/dashboard.sh)");
    let port = free_port();
    let home = d.join("superset");
    let dash_log = std::fs::File::create(d.join("dashboard.log")).unwrap();
    let _superset = Proc({
        use std::os::unix::process::CommandExt;
        Command::new(repo_root().join("scripts/dashboard.sh"))
            .args(["--warehouse", &format!("{}/warehouse", d.display())])
            .args(["--port", &port.to_string()])
            .arg("--home")
            .arg(&home)
            // Its own redis-server (on a socket in `home`), whatever this shell points at.
            .env_remove("ADMETRICS_REDIS_URL")
            .stdout(dash_log.try_clone().unwrap())
            .stderr(dash_log)
            .process_group(0)
            .spawn()
            .unwrap()
    });
    let superset = format!("127.0.0.1:{port}");
    wait_for("Superset's /health", Duration::from_secs(600), || {
        http_get(&superset, "/health").is_some_and(|(c, _)| c == 200)
    });

    progress("Superset answers; opening the dashboard in Chromium");
    // The browser: first load now, then it waits (page open) for the auto-refresh.
    let artifacts = repo_root().join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let first = d.join("first.json");
    let refreshed = d.join("refreshed.json");
    let second_burst = 3_000u64;
    let events_after = metric(
        &metrics_addr,
        "admetrics_committed_rows_total{table=\"campaign_events\"}",
    ) as u64
        + second_burst;
    let mut browser = Command::new(superset_python())
        .arg(repo_root().join("dashboard/browser_check.py"))
        .args(["--url", &format!("http://{superset}")])
        .arg("--out")
        .arg(&first)
        .arg("--screenshot")
        .arg(artifacts.join("dashboard.png"))
        .args(["--expect-refresh-events", &events_after.to_string()])
        .arg("--out-refreshed")
        .arg(&refreshed)
        .args(["--timeout", "120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ended = |b: &mut Child| b.try_wait().unwrap().is_some();
    wait_for("the browser's first load", Duration::from_secs(180), || {
        first.is_file() || ended(&mut browser)
    });
    if !first.is_file() {
        let out = browser.wait_with_output().unwrap();
        panic!(
            "browser_check failed:\n{}\n{}\nsuperset log: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            tail(&d.join("dashboard.log"))
        );
    }
    let verify = |charts: &Path| {
        run_python(
            "verify_dashboard.py",
            &[
                "--catalog".into(),
                format!("{}/catalog.db", d.display()),
                "--warehouse".into(),
                format!("{}/warehouse", d.display()),
                "--charts".into(),
                charts.display().to_string(),
                "--metrics-url".into(),
                format!("http://{metrics_addr}/metrics"),
            ],
        )
    };
    println!("{}", verify(&first));
    progress("first load verified; producing the second burst");

    // More traffic while the page is open: the latest minute, into a window still open.
    let now = chrono::Utc::now().timestamp_millis();
    sent += produce(&mut producer, &mut events, second_burst, now, 50_000);
    wait_for(
        "the second burst committed (/metrics)",
        Duration::from_secs(120),
        || committed(&metrics_addr) as u64 == sent,
    );
    let out = browser.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "browser_check failed after the first load:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    println!("{}", verify(&refreshed));
    progress("refresh verified; the cache warm-up against what the page reads");
    println!(
        "{}",
        run_superset_python(
            "verify_warm_cache.py",
            Some(&home),
            &[
                "--url".into(),
                format!("http://{superset}"),
                "--calls".into(),
                first.display().to_string(),
            ],
        )
    );
    progress("two more users against the warm cache");
    println!(
        "{}",
        run_superset_python(
            "verify_dashboard_access.py",
            Some(&home),
            &[
                "--url".into(),
                format!("http://{superset}"),
                "--calls".into(),
                first.display().to_string(),
            ],
        )
    );
    assert!(artifacts.join("dashboard.png").is_file());
    assert!(artifacts.join("dashboard-refreshed.png").is_file());
}

fn tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    s.lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}
