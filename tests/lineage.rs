//! Lineage (issue 18): every metric row traced to its plugin build (name, version, sha256, WIT
//! package, parameters), its run (live, or a restatement with its period and the events
//! snapshot it read), the commit that wrote it with that commit's source range, and the events
//! that make it up; `scripts/lineage.py` answers "why is this number what it is".
//!
//! Two generated files go through the normal pipeline (`run --file`) as two streams, committing
//! every 2 000 buffered rows so each table has several commits and windows have revisions from
//! several of them. Then `ctr` is restated over three minutes with a second build of it
//! (`plugins/fixtures/ctr-v2`, version 0.2.0) and promoted. `tests/verify_lineage.py` runs
//! `scripts/lineage.py --json` for live keys of each shipped plugin and for restated keys, and
//! checks its answer against what it computes on its own: the current value (the view), the
//! shares' latest rows, the events (its own PyIceberg scan of `campaign_events`, bounded by the
//! offsets of the commit it finds by the row's revision) reproducing numerator and denominator,
//! the plugin's sha256 (hashed here from the `.wasm` file), version (the plugin's Cargo.toml) and
//! WIT package (read from the component's bytes), empty parameters, and for restated keys the
//! restatement id, its period, promotion and the events snapshot that was current when it
//! started (read before it ran). Then `scripts/maintain.py` compacts the tables' small files
//! and the same checks run again: the commits are now found by the rows' revisions (live) and
//! the restatement's recorded progress (restated), as the first run checked them against.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const FROM: &str = "2026-01-01T00:03:00Z";
const TO: &str = "2026-01-01T00:06:00Z";

fn ctr_v2() -> PathBuf {
    wasm("fixture_ctr_v2")
}

fn run_file(cfg: &Path, d: &Path, name: &str, seed: &str) {
    run_generated_file(
        cfg,
        d,
        name,
        &[
            "--total",
            "24000",
            "--rate",
            "24",
            "--campaigns",
            "4",
            "--users",
            "300",
            "--ctr",
            "0.2",
            "--cvr",
            "0.3",
            "--seed",
            seed,
        ],
    );
}

#[test]
fn lineage_names_plugin_build_run_commit_and_events_of_every_share() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = d.join("lineage.toml");
    std::fs::write(
        &cfg,
        format!(
            "[window]\nsize_secs = 60\nout_of_orderness_ms = 5000\n\
             [validation]\nmax_past_ms = 315360000000\n\
             [commit]\nmax_rows = 2000\n\
             [plugins]\npaths = {}\n\
             [iceberg]\ncatalog_uri = \"sqlite:{d}/catalog.db\"\nwarehouse = \"{d}/warehouse\"\n",
            plugins_toml(),
            d = d.display()
        ),
    )
    .unwrap();
    run_file(&cfg, d, "a.jsonl", "11");
    run_file(&cfg, d, "b.jsonl", "12");
    progress("two files committed");

    let base = vec![
        "--catalog".to_string(),
        d.join("catalog.db").display().to_string(),
        "--warehouse".into(),
        d.join("warehouse").display().to_string(),
    ];
    let with = |extra: &[String]| {
        let mut a = base.clone();
        a.extend(extra.iter().cloned());
        a
    };
    // The events snapshot the restatement will find current (nothing commits in between).
    let pinned = run_python("verify_lineage.py", &with(&["events-snapshot".to_string()]))
        .trim()
        .to_string();

    let o = admetrics()
        .args(["restate", "--config"])
        .arg(&cfg)
        .arg("--plugin")
        .arg(ctr_v2())
        .args(["--from", FROM, "--to", TO, "--commit-windows", "1"])
        .env("ADMETRICS_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "restate: {}", output_text(&o));
    // `restatement ID of NAME VERSION (sha256 SHA), events snapshot N`
    let stdout = String::from_utf8_lossy(&o.stdout).to_string();
    let first = stdout
        .lines()
        .find(|l| l.starts_with("restatement "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let id = first.split_whitespace().nth(1).unwrap().to_string();
    assert!(
        first.ends_with(&format!("events snapshot {pinned}")),
        "{first} (events snapshot before it ran: {pinned})"
    );
    let o = admetrics()
        .args(["restate", "--config"])
        .arg(&cfg)
        .args(["--promote", &id])
        .output()
        .unwrap();
    assert!(o.status.success(), "promote: {}", output_text(&o));
    progress(format!("restatement {id} complete and promoted"));

    let mut args = with(&[
        "check".to_string(),
        "--restatement".into(),
        id,
        "--events-snapshot".into(),
        pinned,
        "--from".into(),
        FROM.into(),
        "--to".into(),
        TO.into(),
        "--restated-plugin".into(),
        ctr_v2().display().to_string(),
    ]);
    for p in plugin_paths() {
        args.push("--plugin".into());
        args.push(p.display().to_string());
    }
    println!("{}", run_python("verify_lineage.py", &args));

    // Table maintenance rewrites the small files into a few (snapshots kept): a row's data file
    // no longer names its commit, its revision (live) or its restatement's progress does.
    let o = Command::new(python())
        .arg(repo_root().join("scripts/maintain.py"))
        .arg("--config")
        .arg(&cfg)
        .args([
            "--once",
            "--min-files",
            "2",
            "--keep-snapshots-minutes",
            "600",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "maintain.py: {}", output_text(&o));
    progress("data files compacted");
    args.push("--compacted".into());
    println!("{}", run_python("verify_lineage.py", &args));
}
