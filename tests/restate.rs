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

fn admetrics() -> Command {
    Command::new(env!("CARGO_BIN_EXE_admetrics"))
}

fn first_click() -> PathBuf {
    let p = repo_root().join("target/wasm32-wasip2/release/fixture_attribution_first_click.wasm");
    assert!(
        p.is_file(),
        "{} missing: run scripts/build-plugins.sh",
        p.display()
    );
    p
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
    let f = d.join(name);
    loadgen_file(
        &f,
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
    let o = admetrics()
        .args(["run", "--config"])
        .arg(cfg)
        .arg("--file")
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "run --file {name}:\n{}",
        output_text(&o)
    );
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

    let plugin_line = String::from_utf8_lossy(&o.stdout).to_string();
    let (version, sha256) = {
        // `restatement ID of NAME VERSION (sha256 SHA), ...`
        let w: Vec<&str> = plugin_line.split_whitespace().collect();
        (w[4].to_string(), w[6].trim_end_matches("),").to_string())
    };
    let verify = |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "--catalog".into(),
            d.join("catalog.db").display().to_string(),
            "--warehouse".into(),
            d.join("warehouse").display().to_string(),
            "--id".into(),
            id.clone(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        println!("{}", run_python("verify_restate.py", &args));
    };
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
