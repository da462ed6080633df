//! The daemon as an operator runs it, through its binary: `--help`, a config with an unknown key
//! refused by name, JSON logs, and the file source (`run --file`, the replay/backfill path)
//! through the same decode → window → plugins → Iceberg stages as Kafka, checked against the
//! file by an independent reader (`tests/verify_file_run.py`, PyIceberg). A second run over the
//! same file resumes after what is committed (adds nothing); the same file through stdin gives
//! the same metrics; files and streams sharing one set of tables are each counted in full.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use support::*;

fn admetrics(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_admetrics"));
    c.args(args);
    c
}

#[test]
fn help_names_every_subcommand_and_the_log_format() {
    let o = admetrics(&["--help"]).output().unwrap();
    assert!(o.status.success());
    let help = output_text(&o);
    for word in ["run", "demo", "loadgen", "plugin", "--log-format"] {
        assert!(
            help.contains(word),
            "--help does not mention {word}:\n{help}"
        );
    }
    let o = admetrics(&["run", "--help"]).output().unwrap();
    assert!(output_text(&o).contains("--file"), "{}", output_text(&o));
}

#[test]
fn an_unknown_config_key_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[window]\nsize_secs = 60\nsize_sec = 30\n").unwrap();
    let o = admetrics(&["run", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = output_text(&o);
    assert!(err.contains("size_sec"), "the key is not named:\n{err}");
    // An environment override with a bad value names the key too.
    let ok = dir.path().join("ok.toml");
    std::fs::write(&ok, "").unwrap();
    let o = admetrics(&["run", "--config", ok.to_str().unwrap()])
        .env("ADMETRICS__WINDOW__SIZE_SECS", "sixty")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(output_text(&o).contains("size_secs"), "{}", output_text(&o));
}

fn config(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[window]\nsize_secs = 60\nout_of_orderness_ms = 5000\n\
             [validation]\nmax_past_ms = 315360000000\n\
             [plugins]\npaths = {}\n\
             [iceberg]\ncatalog_uri = \"sqlite:{d}/{name}/catalog.db\"\nwarehouse = \"{d}/{name}/warehouse\"\n",
            plugins_toml(),
            d = dir.display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_file_goes_through_the_whole_pipeline_once_with_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = d.join("events.jsonl");
    let o = admetrics(&[
        "loadgen",
        "--out",
        events.to_str().unwrap(),
        "--total",
        "30000",
        "--rate",
        "100",
        "--campaigns",
        "7",
        "--users",
        "500",
        "--ctr",
        "0.2",
        "--cvr",
        "0.3",
        "--seed",
        "5",
    ])
    .output()
    .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    // Bad lines in the middle, each of a kind the verifier recognises on its own.
    let mut lines: Vec<String> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for (i, bad) in [
        "{\"event_type\":\"impression\"",
        "{\"event_id\":\"x\",\"event_type\":\"view\",\"event_time\":\"2026-01-01T00:00:00Z\",\"campaign_id\":\"c\",\"ad_id\":\"a\",\"user_id\":\"u\"}",
        "[1,2,3]",
        "{\"event_id\":\"y\",\"event_type\":\"click\",\"event_time\":\"2026-01-01T00:00:00Z\",\"campaign_id\":\"c\",\"ad_id\":\"a\"}",
    ]
    .iter()
    .enumerate()
    {
        lines.insert(1000 + i * 7000, bad.to_string());
    }
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();

    let cfg = config(d, "file");
    let run = || {
        admetrics(&["--log-format", "json", "run", "--config"])
            .arg(&cfg)
            .arg("--file")
            .arg(&events)
            .env("ADMETRICS_LOG", "info")
            .output()
            .unwrap()
    };
    let o = run();
    assert!(
        o.status.success(),
        "run --file failed:\n{}",
        output_text(&o)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    let mut logged = 0;
    for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
        logged += 1;
    }
    assert!(
        stderr.contains("end of input"),
        "no end-of-input log:\n{stderr}"
    );
    assert!(logged >= 3, "{stderr}");
    let verify = |extra: &[String]| {
        let mut args = vec![
            "--events".to_string(),
            events.display().to_string(),
            "--catalog".into(),
            format!("{}/file/catalog.db", d.display()),
            "--warehouse".into(),
            format!("{}/file/warehouse", d.display()),
        ];
        args.extend_from_slice(extra);
        println!("{}", run_python("verify_file_run.py", &args));
    };
    verify(&[]);

    // Again, same file, same stream name: resumes after the committed end, writes nothing new.
    let o = run();
    assert!(
        o.status.success(),
        "second run failed:\n{}",
        output_text(&o)
    );
    verify(&[]);

    // Through stdin into other tables: the same metrics.
    let cfg2 = config(d, "stdin");
    let mut child = admetrics(&["run", "--config"])
        .arg(&cfg2)
        .args(["--file", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&events).unwrap())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "stdin run failed:\n{}", output_text(&o));
    let args = vec![
        "--events".to_string(),
        events.display().to_string(),
        "--catalog".into(),
        format!("{}/stdin/catalog.db", d.display()),
        "--warehouse".into(),
        format!("{}/stdin/warehouse", d.display()),
        "--same-as".into(),
        format!("{}/file/catalog.db", d.display()),
        format!("{}/file/warehouse", d.display()),
    ];
    println!("{}", run_python("verify_file_run.py", &args));

    // Standard input again, unnamed: it cannot be told from the first one, so resuming it would
    // skip as many of its lines as the tables hold. Refused before anything is read.
    let o = admetrics(&["run", "--config"])
        .arg(&cfg2)
        .args(["--file", "-"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("--stream"),
        "the refusal does not name the way out:\n{}",
        output_text(&o)
    );
    println!("{}", run_python("verify_file_run.py", &args));
}

/// Issue 14, defect 6: streams sharing the tables. `a/events.jsonl` then `b/events.jsonl` had
/// one default stream name (`file:events.jsonl`): the second run resumed at the first one's
/// position and silently skipped its first lines. And rows had no stream: a stream's restart
/// read another stream's ids and offsets as its own (its events became copies of the other's),
/// and two streams' metric rows for the same window replaced each other under
/// latest-revision-wins. Here three inputs share one set of tables over the same windows: two
/// files of one name, and a third stream (named) holding a's events one line further down.
/// Every file must be one stream's rows (none of "again"'s events a copy of a's), and every
/// metric the sum of the three files' counts. (A restart reading another stream's ids back:
/// `sink::tests`.)
#[test]
fn files_and_streams_sharing_tables_are_each_counted_in_full() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (a, b) = (d.join("a/events.jsonl"), d.join("b/events.jsonl"));
    std::fs::create_dir_all(a.parent().unwrap()).unwrap();
    std::fs::create_dir_all(b.parent().unwrap()).unwrap();
    for (file, total, seed) in [(&a, "6000", "5"), (&b, "9000", "6")] {
        loadgen_file(
            file,
            &[
                "--total",
                total,
                "--rate",
                "100",
                "--campaigns",
                "5",
                "--seed",
                seed,
            ],
        );
    }
    let cfg = config(d, "shared");
    let run = |file: &Path, stream: Option<&str>| {
        let mut c = admetrics(&["run", "--config"]);
        c.arg(&cfg).arg("--file").arg(file);
        if let Some(s) = stream {
            c.args(["--stream", s]);
        }
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "run --file {}:\n{}",
            file.display(),
            output_text(&o)
        );
    };
    run(&a, None);
    run(&b, None);
    // a's events, each one line later (a bad first line), as the stream "again".
    let again = d.join("again.jsonl");
    let whole = format!("not json\n{}", std::fs::read_to_string(&a).unwrap());
    std::fs::write(&again, &whole).unwrap();
    run(&again, Some("again"));
    let args: Vec<String> = [
        "--events",
        a.to_str().unwrap(),
        "--events",
        b.to_str().unwrap(),
        "--events",
        again.to_str().unwrap(),
        "--catalog",
        &format!("{}/shared/catalog.db", d.display()),
        "--warehouse",
        &format!("{}/shared/warehouse", d.display()),
    ]
    .map(String::from)
    .to_vec();
    println!("{}", run_python("verify_file_run.py", &args));

    // Tables where an earlier release ran a: its default name then was `file:events.jsonl`.
    // Run again unnamed, a would be a new stream counted a second time: refused, naming both
    // ways out; with the old name it resumes (adds nothing).
    let old = config(d, "old");
    let o = admetrics(&["run", "--config"])
        .arg(&old)
        .arg("--file")
        .arg(&a)
        .args(["--stream", "file:events.jsonl"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", output_text(&o));
    let o = admetrics(&["run", "--config"])
        .arg(&old)
        .arg("--file")
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    assert!(
        output_text(&o).contains("--stream \"file:events.jsonl\""),
        "{}",
        output_text(&o)
    );
}

/// Issue 14, defect 11: the sink turns iceberg-rust's duplicate-file check off, and iceberg-rust
/// retries a retryable catalog error inside `Transaction::commit`, below the sink's own "does
/// the table already hold this commit?" guard. Here every second catalog commit is applied and
/// then reported as failed, alternately as a conflict (iceberg-rust retries it on the reloaded
/// table) and as "the commit state is unknown" (the sink retries the batch). Every row and every
/// data file must be in the tables once, with the metrics of a run without faults. The same
/// fault runs over the REST catalog in `tests/rest_s3.rs`.
#[test]
fn a_commit_reported_as_failed_that_landed_is_never_appended_twice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let events = d.join("events.jsonl");
    loadgen_file(
        &events,
        &[
            "--total",
            "20000",
            "--rate",
            "100",
            "--campaigns",
            "5",
            "--users",
            "300",
            "--seed",
            "11",
        ],
    );
    let run = |name: &str, fault: Option<&str>| {
        let mut c = admetrics(&["run", "--config"]);
        c.arg(config(d, name))
            .arg("--file")
            .arg(&events)
            // Small commits (how many depends on the machine's speed: at least the claim's three
            // and one of metrics + events, so faults 2 and 4 always happen: a conflict on the
            // claim, an unknown state on the first data commit).
            .env("ADMETRICS__COMMIT__MAX_ROWS", "1000")
            .env("ADMETRICS__COMMIT__INTERVAL_MS", "25")
            .env("ADMETRICS_LOG", "warn");
        if let Some(f) = fault {
            c.env("ADMETRICS_FAULT", f);
        }
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{name} run failed:\n{}",
            output_text(&o)
        );
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    run("clean", None);
    let log = run("ambiguous", Some("ambiguous-commit:2"));
    let count = |s: &str| log.lines().filter(|l| l.contains(s)).count();
    let (conflicts, unknown) = (count("reported as Conflict"), count("reported as Unknown"));
    let (inside, on_retry) = (
        count("found inside the catalog retry"),
        count("found on the sink's retry"),
    );
    println!(
        "faults: {conflicts} applied commits reported as conflicts, {unknown} as unknown; \
         landed commits recognised: {inside} inside iceberg-rust's retry, {on_retry} on the sink's retry"
    );
    assert!(conflicts >= 1 && unknown >= 1, "{log}");
    assert!(inside >= 1 && on_retry >= 1, "{log}");
    let args: Vec<String> = [
        "--events".to_string(),
        events.display().to_string(),
        "--catalog".into(),
        format!("{}/ambiguous/catalog.db", d.display()),
        "--warehouse".into(),
        format!("{}/ambiguous/warehouse", d.display()),
        "--same-as".into(),
        format!("{}/clean/catalog.db", d.display()),
        format!("{}/clean/warehouse", d.display()),
    ]
    .to_vec();
    println!("{}", run_python("verify_file_run.py", &args));
}
