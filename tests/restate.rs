//! Restatement (`admetrics restate`, issue 18): a period of metrics recomputed from
//! `campaign_events` with a changed plugin, exactly once through crashes, and promote/rollback
//! switching the current-value view.
//!
//! Two files go through the normal pipeline (`run --file`: decode, validate, windows, the three
//! shipped plugins, Iceberg) as two streams. Then the attribution plugin is restated over ten
//! minutes of them with a changed model (`plugins/fixtures/attribution-first-click`: first click
//! instead of last click) and a changed lookback (120 s instead of 7 days), one commit per closed
//! window. The restatement is crashed again and again: aborted at the crash points around its
//! catalog commit (files written, not committed; committed, not yet told), SIGKILLed after a few
//! of its commits, and finished with every second catalog commit applied and then reported as
//! failed. Between the first crashes a third file is run into the tables with events inside the
//! restated period: the restatement must not see them (it reads the events snapshot it pinned at
//! its start). Then `tests/verify_restate.py` (PyIceberg) computes the restated rows again on its
//! own from `campaign_events` at that snapshot and requires every window written once and equal;
//! the current-value view must equal the live rows' until `--promote`, the restated rows' for
//! the plugin and period after it, and the live rows' again after `--rollback`. A restatement that
//! is not complete cannot be promoted. Finally every snapshot of `campaign_metrics` but the
//! current one is expired (as table maintenance does): rollback and promote still work and the
//! view still follows, since what they need is in the record rows, not in the summaries.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use support::*;

const FROM: &str = "2026-01-01T00:03:00Z";
const TO: &str = "2026-01-01T00:13:00Z";
const LOOKBACK_SECS: &str = "120";

fn first_click() -> PathBuf {
    wasm("fixture_attribution_first_click")
}

fn write_config(d: &Path) -> PathBuf {
    let path = d.join("restate.toml");
    std::fs::write(
        &path,
        format!(
            "[window]\nsize_secs = 60\nout_of_orderness_ms = 5000\n\
             [validation]\nmax_past_ms = 315360000000\n\
             [plugins]\npaths = {}\n\
             [iceberg]\ncatalog_uri = \"sqlite:{d}/catalog.db\"\nwarehouse = \"{d}/warehouse\"\n",
            plugins_toml(),
            d = d.display()
        ),
    )
    .unwrap();
    path
}

/// `run --file` of a generated file (its own stream: the file's default name).
fn run_file(cfg: &Path, d: &Path, name: &str, seed: &str) {
    run_generated_file(
        cfg,
        d,
        name,
        &[
            "--total",
            "30000",
            "--rate",
            "30",
            "--campaigns",
            "6",
            "--users",
            "400",
            "--ctr",
            "0.2",
            "--cvr",
            "0.3",
            "--seed",
            seed,
        ],
    );
}

/// The restated build's (version, sha256) from the restatement's first output line
/// (`restatement ID of NAME VERSION (sha256 SHA), ...`).
fn build_of(line: &str) -> (String, String) {
    let w: Vec<&str> = line.split_whitespace().collect();
    (w[4].to_string(), w[6].trim_end_matches("),").to_string())
}

/// `tests/verify_restate.py` on the tables in `d` for restatement `id`; `extra`: its mode and
/// options. Prints its report (it fails the test by exiting non-zero).
fn verify_restate(d: &Path, id: &str, extra: &[&str]) {
    let mut args: Vec<String> = vec![
        "--catalog".into(),
        d.join("catalog.db").display().to_string(),
        "--warehouse".into(),
        d.join("warehouse").display().to_string(),
        "--id".into(),
        id.to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    println!("{}", run_python("verify_restate.py", &args));
}

fn restate_cmd(cfg: &Path) -> Command {
    let mut c = admetrics();
    c.args(["restate", "--config"])
        .arg(cfg)
        .arg("--plugin")
        .arg(first_click())
        .args([
            "--from",
            FROM,
            "--to",
            TO,
            "--lookback-secs",
            LOOKBACK_SECS,
            "--commit-windows",
            "1",
        ])
        .env("ADMETRICS_LOG", "warn");
    c
}

/// The restatement id from a run's first stdout line (`restatement ID of ...`).
fn id_of(stdout: &str) -> Option<String> {
    let line = stdout.lines().find(|l| l.starts_with("restatement "))?;
    Some(line.split_whitespace().nth(1)?.to_string())
}

/// Runs the restate command aborting at the `n`-th pass of crash point `point`: it must die
/// there (not finish), and say which restatement it was.
fn crash_at(cfg: &Path, point: &str, n: u32) -> String {
    let o = restate_cmd(cfg)
        .env("ADMETRICS_FAULT", format!("{point}:{n}"))
        .output()
        .unwrap();
    let out = output_text(&o);
    assert!(
        !o.status.success() && out.contains("fault injection: aborting"),
        "expected an abort at {point} pass {n}:\n{out}"
    );
    progress(format!("aborted at {point} (pass {n})"));
    id_of(&String::from_utf8_lossy(&o.stdout)).expect("the id is printed before any row")
}

/// Runs the restate command and SIGKILLs it right after it reported `commits` more commits
/// (wherever it is then: computing, writing files, committing). Returns the commit lines seen.
fn kill_after(cfg: &Path, commits: usize) -> usize {
    let mut child = restate_cmd(cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = 0;
    let mut finished = false;
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if line.contains(" complete") {
            finished = true;
        }
        if line.contains(" commit ") {
            seen += 1;
            if seen == commits {
                child.kill().unwrap(); // SIGKILL
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(
        !finished && !status.success(),
        "the restatement finished before its {commits}-th commit: the kill proves nothing"
    );
    progress(format!("SIGKILLed after {seen} commits"));
    seen
}

#[test]
fn a_restatement_with_a_changed_plugin_is_exact_written_once_and_switched_by_promote_and_rollback()
{
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = write_config(d);
    run_file(&cfg, d, "a.jsonl", "5");
    run_file(&cfg, d, "b.jsonl", "6");

    // Crashed around its commits: before the first rows are committed, then once they landed.
    let id = crash_at(&cfg, "before-commit:campaign_metrics", 3);
    // Events of the period arrive after the restatement pinned its snapshot: not to be seen.
    run_file(&cfg, d, "c.jsonl", "7");
    assert_eq!(crash_at(&cfg, "after-commit:campaign_metrics", 2), id);
    // SIGKILLed at whatever it is doing a few commits into each run.
    let mut kills = 0;
    for commits in [2, 3, 4] {
        kill_after(&cfg, commits);
        kills += 1;
    }
    // Finished with every second catalog commit applied and reported as failed.
    let o = restate_cmd(&cfg)
        .env("ADMETRICS_FAULT", "ambiguous-commit:2")
        .output()
        .unwrap();
    let out = output_text(&o);
    assert!(o.status.success(), "the last resume failed:\n{out}");
    assert!(out.contains("complete (resumed)"), "{out}");
    assert_eq!(
        id_of(&String::from_utf8_lossy(&o.stdout)).as_deref(),
        Some(id.as_str())
    );
    progress(format!("finished after 2 aborts and {kills} SIGKILLs"));
    // Once more: nothing to do.
    let o = restate_cmd(&cfg).output().unwrap();
    assert!(
        o.status.success() && output_text(&o).contains("already complete"),
        "{}",
        output_text(&o)
    );

    let (version, sha256) = build_of(&String::from_utf8_lossy(&o.stdout));
    let verify = |extra: &[&str]| verify_restate(d, &id, extra);
    verify(&[
        "restated",
        "--version",
        &version,
        "--sha256",
        &sha256,
        "--lookback-secs",
        LOOKBACK_SECS,
        "--newer-events",
    ]);
    verify(&["view", "--state", "live"]);

    // An incomplete restatement (another period, crashed after its start) cannot be promoted.
    let o = admetrics()
        .args(["restate", "--config"])
        .arg(&cfg)
        .arg("--plugin")
        .arg(first_click())
        .args([
            "--from",
            "2026-01-01T00:01:00Z",
            "--to",
            "2026-01-01T00:02:00Z",
        ])
        .env("ADMETRICS_FAULT", "before-commit:campaign_metrics:2")
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", output_text(&o));
    let other = id_of(&String::from_utf8_lossy(&o.stdout)).unwrap();
    let o = admetrics()
        .args(["restate", "--config"])
        .arg(&cfg)
        .args(["--promote", &other])
        .output()
        .unwrap();
    assert!(
        !o.status.success() && output_text(&o).contains("not complete"),
        "{}",
        output_text(&o)
    );

    let switch = |flag: &str| {
        let o = admetrics()
            .args(["restate", "--config"])
            .arg(&cfg)
            .args([flag, &id])
            .output()
            .unwrap();
        assert!(o.status.success(), "{flag}: {}", output_text(&o));
    };
    switch("--promote");
    verify(&["view", "--state", "promoted"]);
    switch("--rollback");
    verify(&["view", "--state", "live"]);
    // Rolled back twice is refused; promoted again shows it again.
    let o = admetrics()
        .args(["restate", "--config"])
        .arg(&cfg)
        .args(["--rollback", &id])
        .output()
        .unwrap();
    assert!(!o.status.success(), "{}", output_text(&o));
    switch("--promote");
    verify(&["view", "--state", "promoted"]);
    // Table maintenance expires the snapshots and their summaries: what readers and promote /
    // rollback need is in the rows.
    verify(&["expire"]);
    switch("--rollback");
    verify(&["view", "--state", "live"]);
    switch("--promote");
    verify(&["view", "--state", "promoted"]);
}

// ---------------------------------------------------------------------------------------------
// A Kafka stream of three partitions, restated, promoted and rolled back while the daemon runs.
// ---------------------------------------------------------------------------------------------

const PARTITIONS: i32 = 3;
/// Catalog commits of each promote/rollback made to lose against a daemon commit
/// (`ADMETRICS_FAULT=lose-race`); iceberg-rust retries them on a reloaded table inside one commit
/// call (up to the tables' `commit.retry.num-retries`, 10, with a backoff that reaches minutes:
/// losing all 11 took 108 s here, hence a small number).
const LOST_RACES: usize = 3;

/// Live traffic on the daemon's topic: every wall-clock second a chunk of `per_sec` events
/// covering the next 10 s of event time (from `t0_ms`), keyed and partitioned by user, from one
/// generator (300 users clicking often, so first and last click differ). On finish, one event
/// per partition far ahead closes every window; returns the number of messages sent.
struct Traffic {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sent: std::sync::Arc<std::sync::atomic::AtomicI64>,
    handle: std::thread::JoinHandle<i64>,
}

impl Traffic {
    fn start(bootstrap: &str, t0_ms: i64, per_sec: u64) -> Traffic {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicI64::new(0));
        let (flag, count, bootstrap) = (stop.clone(), sent.clone(), bootstrap.to_string());
        let handle = std::thread::spawn(move || {
            let mut producer = TestProducer::new(&bootstrap, daemon::TOPIC);
            let mut g = admetrics::loadgen::EventGen::new(admetrics::loadgen::LoadgenArgs {
                campaigns: 6,
                users: 300,
                ctr: 0.2,
                cvr: 0.3,
                seed: 18,
                ..Default::default()
            });
            let part = |key: &str| {
                (key.bytes()
                    .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
                    % PARTITIONS as u32) as i32
            };
            let (mut total, mut k) = (0i64, 0i64);
            while !flag.load(Ordering::Relaxed) {
                let started = std::time::Instant::now();
                for j in 0..per_sec as i64 {
                    let (key, payload) = g.next(t0_ms + k * 10_000 + j * 10_000 / per_sec as i64);
                    producer.send(part(&key), &key, payload.as_bytes());
                    total += 1;
                }
                producer.flush();
                count.store(total, Ordering::Relaxed);
                k += 1;
                std::thread::sleep(
                    std::time::Duration::from_secs(1).saturating_sub(started.elapsed()),
                );
            }
            let at = chrono::DateTime::from_timestamp_millis(t0_ms + k * 10_000 + 10 * 60_000)
                .unwrap()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ");
            for p in 0..PARTITIONS {
                let flush = format!(
                    r#"{{"event_id":"flush-{p}","event_type":"impression","event_time":"{at}","campaign_id":"flush","ad_id":"flush","user_id":"flush-{p}"}}"#
                );
                producer.send(p, "flush", flush.as_bytes());
                total += 1;
            }
            producer.flush();
            total
        });
        Traffic { stop, sent, handle }
    }

    fn sent(&self) -> i64 {
        self.sent.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn finish(self) -> i64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().expect("traffic thread")
    }
}

/// The daemon's config: `support::daemon::write_config`'s (3 partitions, commits every 300 ms)
/// with old event times accepted.
fn live_config(d: &Path, bootstrap: &str) -> PathBuf {
    let path = daemon::write_config(d, bootstrap, 0);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("[validation]\nmax_past_ms = 315360000000\n");
    std::fs::write(&path, text).unwrap();
    path
}

/// Version numbers of campaign_metrics' metadata files (iceberg-rust: `NNNNN-uuid.metadata.json`).
fn metadata_file_versions(d: &Path) -> Vec<u64> {
    let dir = d.join("warehouse/ads/campaign_metrics/metadata");
    let mut v: Vec<u64> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".metadata.json")?
                .split('-')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// campaign_metrics as the catalog has it now.
fn metrics_table(probe: &daemon::Probe) -> iceberg::table::Table {
    probe.rt.block_on(async {
        let catalog = admetrics::sink::open_catalog(&probe.cfg.iceberg)
            .await
            .unwrap();
        iceberg::Catalog::load_table(
            catalog.as_ref(),
            &iceberg::TableIdent::from_strs(["ads", "campaign_metrics"]).unwrap(),
        )
        .await
        .unwrap()
    })
}

/// The version number of the catalog's current campaign_metrics metadata file.
fn current_metadata_version(probe: &daemon::Probe) -> u64 {
    let t = metrics_table(probe);
    let loc = t.metadata_location().expect("a metadata location");
    let name = loc.rsplit('/').next().unwrap();
    name.split('-').next().unwrap().parse().unwrap()
}

/// Lines of the reader's log that are readings of `query` begun and ended in `phase`.
fn readings_in(log: &Path, phase: &str, query: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["before"] == phase && v["after"] == phase && v["query"] == query)
        .count()
}

/// Issue 18's two remaining points on a real Kafka topic of three partitions, with the daemon
/// running on live traffic (committing every 300 ms to the same tables) throughout:
///
/// 1. A period of that multi-partition stream is restated with the first-click build (while the
///    daemon commits), and `tests/verify_restate.py` recomputes it on its own from
///    `campaign_events` at the pinned snapshot: every (window, stream, partition) share written
///    once, exactly equal, rows from all three partitions.
/// 2. `--promote` and `--rollback`, twice each, run against the daemon's concurrent commits, each
///    made to lose its first 3 catalog commits to the daemon's (`ADMETRICS_FAULT=lose-race`:
///    each waits for a daemon commit between loading the table and the compare-and-swap): each
///    succeeds and appends exactly one record row (none lost, none doubled). Meanwhile
///    `tests/watch_restate_dashboard.py` polls the dashboard's own SQL (dashboard/views.sql +
///    sql/current_metrics.sql over iceberg_scan, read-only DuckDB, as Superset runs it): every
///    reading of the period is exactly the live values or exactly the promoted restatement's;
///    once a switch settled, only the new one. The daemon keeps committing, logs no error,
///    stops cleanly, and its live rows are untouched (the current-value view equals the live
///    rows' after the last rollback).
#[test]
fn a_three_partition_kafka_stream_is_restated_exactly_and_switched_under_a_live_daemon() {
    init_logs();
    let started = std::time::Instant::now();
    let broker = Broker::start();
    broker.create_topic(daemon::TOPIC, PARTITIONS as u32);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = live_config(d, &broker.bootstrap);
    let probe = daemon::Probe::new(&cfg);

    // Event time from two hours ago (aligned to the minute), 10 s of it per second.
    let t0 = (chrono::Utc::now().timestamp_millis() - 2 * 3_600_000).div_euclid(60_000) * 60_000;
    let (from_ms, to_ms) = (t0 + 3 * 60_000, t0 + 7 * 60_000);
    let iso = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    };
    let (from, to) = (iso(from_ms), iso(to_ms));
    let traffic = Traffic::start(&broker.bootstrap, t0, 300);
    let daemon_log = d.join("daemon.log");
    let mut daemon = daemon::Daemon(
        daemon::daemon_command(&cfg, "live")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&daemon_log).unwrap())
            .spawn()
            .expect("spawn admetrics"),
    );
    daemon::wait_running(
        &mut daemon,
        "every partition closing the period's windows",
        std::time::Duration::from_secs(300),
        || {
            let c = probe.closed_through();
            c.len() == PARTITIONS as usize && c.values().all(|v| v.is_some_and(|t| t >= to_ms))
        },
    );
    progress(format!(
        "period {from} .. {to} closed on {PARTITIONS} partitions ({} events sent)",
        traffic.sent()
    ));

    // 1. The restatement, while the daemon commits.
    let t = std::time::Instant::now();
    let o = admetrics()
        .args(["restate", "--config"])
        .arg(&cfg)
        .arg("--plugin")
        .arg(first_click())
        .args([
            "--from",
            &from,
            "--to",
            &to,
            "--lookback-secs",
            LOOKBACK_SECS,
            "--commit-windows",
            "1",
        ])
        .env("ADMETRICS_LOG", "warn")
        .output()
        .unwrap();
    let restate_secs = t.elapsed().as_secs_f64();
    let out = output_text(&o);
    assert!(o.status.success(), "restate under the live daemon:\n{out}");
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let id = id_of(&stdout).expect("the restatement's id");
    let (version, sha256) = build_of(stdout.lines().next().unwrap());
    let commits = stdout.lines().filter(|l| l.contains(" commit ")).count();
    progress(format!(
        "restated {id} in {restate_secs:.2} s ({commits} commits beside the daemon's)"
    ));
    let verify = |extra: &[&str]| verify_restate(d, &id, extra);
    verify(&[
        "restated",
        "--version",
        &version,
        "--sha256",
        &sha256,
        "--lookback-secs",
        LOOKBACK_SECS,
        "--expect-partitions",
        &PARTITIONS.to_string(),
    ]);

    // 2. Promote and roll back while the daemon commits and a dashboard reader polls.
    let (phase_file, stop_file, log) = (d.join("phase"), d.join("stop"), d.join("reader.jsonl"));
    let set_phase = |p: &str| {
        // Replaced whole (a reader never sees it half written).
        let tmp = d.join("phase.tmp");
        std::fs::write(&tmp, p).unwrap();
        std::fs::rename(&tmp, &phase_file).unwrap();
        progress(format!("phase {p}"));
    };
    set_phase("live:0");
    let mut reader = Command::new(python())
        .arg(repo_root().join("tests/watch_restate_dashboard.py"))
        .arg("--catalog")
        .arg(d.join("catalog.db"))
        .arg("--warehouse")
        .arg(d.join("warehouse"))
        .args(["--id", &id])
        .arg("--duckdb")
        .arg(d.join("views.duckdb"))
        .arg("--phase-file")
        .arg(&phase_file)
        .arg("--stop-file")
        .arg(&stop_file)
        .arg("--out")
        .arg(&log)
        .stdout(std::fs::File::create(d.join("reader.out")).unwrap())
        .stderr(std::fs::File::create(d.join("reader.err")).unwrap())
        .spawn()
        .expect("spawn the reader");
    let reader_text = || {
        format!(
            "{}{}",
            std::fs::read_to_string(d.join("reader.out")).unwrap_or_default(),
            std::fs::read_to_string(d.join("reader.err")).unwrap_or_default()
        )
    };
    let wait_readings = |phase: &str, reader: &mut std::process::Child| {
        wait_for(
            &format!("3 readings of each query in phase {phase}"),
            std::time::Duration::from_secs(300),
            || {
                if let Some(s) = reader.try_wait().unwrap() {
                    panic!("the reader exited with {s}:\n{}", reader_text());
                }
                ["current_metrics", "campaign_windows"]
                    .iter()
                    .all(|q| readings_in(&log, phase, q) >= 3)
            },
        );
    };
    wait_readings("live:0", &mut reader);
    let committed_before = probe.committed();
    let switch = |flag: &str| {
        let t = std::time::Instant::now();
        let o = admetrics()
            .args(["restate", "--config"])
            .arg(&cfg)
            .args([flag, &id])
            .env("ADMETRICS_LOG", "warn")
            .env("ADMETRICS_FAULT", format!("lose-race:{LOST_RACES}"))
            .output()
            .unwrap();
        let out = output_text(&o);
        assert!(o.status.success(), "{flag} under the live daemon: {out}");
        // Each of its first attempts lost to a daemon commit, and it went on on a fresh load.
        assert_eq!(
            out.matches("this commit loses the race").count(),
            LOST_RACES,
            "{out}"
        );
        progress(format!(
            "{flag} took {:.2} s, losing {LOST_RACES} races to the daemon",
            t.elapsed().as_secs_f64()
        ));
    };
    // Settled: the catalog's current metadata is above every file present when the command
    // returned (see watch_restate_dashboard.py for why a reading may lag until then).
    let settle = |daemon: &mut daemon::Daemon, what: &str| {
        let top = *metadata_file_versions(d).last().unwrap();
        daemon::wait_running(daemon, what, std::time::Duration::from_secs(120), || {
            current_metadata_version(&probe) > top
        });
    };
    for cycle in 1..=2 {
        set_phase(&format!("promoting:{cycle}"));
        switch("--promote");
        set_phase(&format!("promoted:{cycle}"));
        settle(&mut daemon, "a daemon commit after the promote");
        set_phase(&format!("promoted-settled:{cycle}"));
        wait_readings(&format!("promoted-settled:{cycle}"), &mut reader);
        set_phase(&format!("rolling-back:{cycle}"));
        switch("--rollback");
        set_phase(&format!("rolled-back:{cycle}"));
        settle(&mut daemon, "a daemon commit after the rollback");
        set_phase(&format!("live-settled:{cycle}"));
        wait_readings(&format!("live-settled:{cycle}"), &mut reader);
    }
    std::fs::write(&stop_file, "").unwrap();
    let status = reader.wait().unwrap();
    println!("{}", reader_text());
    assert!(
        status.success(),
        "the dashboard reader saw a mix or an error"
    );

    // The switches: exactly one record row each, in order (none lost, none doubled).
    let recs: Vec<(i64, i64)> = {
        let t = metrics_table(&probe);
        let mut r: Vec<(i64, i64)> = probe
            .rt
            .block_on(admetrics::restate::records(&t))
            .unwrap()
            .into_iter()
            .filter(|r| r.id == id)
            .map(|r| (r.revision, r.flag))
            .collect();
        r.sort_unstable();
        r
    };
    let flags: Vec<i64> = recs.iter().map(|r| r.1).collect();
    assert_eq!(flags, [-1, 1, 0, 1, 0], "record rows of {id}: {recs:?}");
    // The daemon was not disturbed: it kept committing, is still running, and stops cleanly
    // with everything sent committed and no error logged.
    let committed_after = probe.committed();
    assert!(
        committed_after > committed_before,
        "the daemon committed nothing during the switches ({committed_before} → {committed_after})"
    );
    let sent = traffic.finish();
    daemon::wait_running(
        &mut daemon,
        "the daemon committing every message sent",
        std::time::Duration::from_secs(300),
        || probe.committed() >= sent,
    );
    daemon::sigterm(&mut daemon);
    let dlog = std::fs::read_to_string(&daemon_log).unwrap();
    assert!(!dlog.contains("ERROR"), "the daemon logged errors:\n{dlog}");
    // Its live rows: the current-value view is exactly theirs (nothing promoted now).
    verify(&["view", "--state", "live"]);
    progress(format!(
        "done in {:.0} s: {sent} messages, {committed_before} → {committed_after} committed during \
         the switches, daemon warnings: {}",
        started.elapsed().as_secs_f64(),
        dlog.lines().filter(|l| l.contains("WARN")).count()
    ));
}
