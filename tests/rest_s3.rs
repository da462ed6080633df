//! The docker-compose storage path on loopback: an Iceberg REST catalog with its warehouse on an
//! S3-protocol server, instead of the embedded SQLite catalog + local files.
//!
//! Real parts: moto's S3 server (PyPI, `moto[server]`) and Apache Iceberg's own REST catalog
//! server (`RESTCatalogServer` from Maven Central, the server of the `apache/iceberg-rest-fixture`
//! image docker-compose.yml runs; `scripts/iceberg-rest.sh`: a JdbcCatalog on SQLite, S3FileIO
//! on moto). The daemon runs
//! a generated file with bad lines through its binary (`run --file`), configured only by TOML;
//! then three readers nobody here wrote the storage side of check it: PyIceberg's RestCatalog
//! (every valid line once, every bad line a dead letter, all metrics equal to the file; tables on
//! s3://), again after a round of `scripts/maintain.py` (compaction, manifest merge, snapshot
//! expiry and deletion of unreferenced objects over REST and S3), a second run (resumes from the snapshot summaries read over REST:
//! adds nothing), and
//! DuckDB attached to the REST catalog through the dashboard's own views and Superset connection
//! settings (the compose stack's query engine).

mod support;

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

/// A helper server process, killed when the test ends (pass or fail).
struct Server(Child, &'static str);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(name: &'static str, cmd: &mut Command, port: u16, log: &Path) -> Server {
    let log = std::fs::File::create(log).unwrap();
    let child = cmd
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let mut s = Server(child, name);
    wait_for(name, Duration::from_secs(60), || {
        if let Ok(Some(status)) = s.0.try_wait() {
            panic!("{} exited early: {status}", s.1);
        }
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    s
}

#[test]
fn rest_catalog_on_s3_holds_every_event_once_and_the_dashboard_views_read_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (s3_port, rest_port) = (free_port(), free_port());
    let s3 = format!("http://127.0.0.1:{s3_port}");
    let rest = format!("http://127.0.0.1:{rest_port}");

    let _moto = start(
        "moto S3 server",
        Command::new(python())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(s3_port.to_string()),
        s3_port,
        &d.join("moto.log"),
    );
    // The bucket first: the catalog server writes into it, it does not create it.
    let o = Command::new(python())
        .args(["-c", "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id='test', aws_secret_access_key='test', region_name='us-east-1').create_bucket(Bucket='lake')"])
        .arg(&s3)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "creating the bucket: {}",
        output_text(&o)
    );
    let _catalog = start(
        "Apache Iceberg REST catalog",
        Command::new(repo_root().join("scripts/iceberg-rest.sh"))
            .arg("run")
            .arg(rest_port.to_string())
            .arg(d.join("rest-catalog.db"))
            .args(["s3://lake/warehouse", &s3])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test"),
        rest_port,
        &d.join("rest.log"),
    );

    // 20 000 events and three bad lines.
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
            "--ctr",
            "0.2",
            "--cvr",
            "0.3",
            "--seed",
            "9",
        ],
    );
    let mut lines: Vec<String> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    for (i, bad) in ["{\"event_type\":", "[]", "{\"event_type\":\"view\"}"]
        .iter()
        .enumerate()
    {
        lines.insert(500 + i * 5000, bad.to_string());
    }
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();

    let cfg = d.join("rest.toml");
    std::fs::write(
        &cfg,
        format!(
            "[validation]\nmax_past_ms = 315360000000\n\
             [kafka]\nmax_events_per_sec = 20000\n[commit]\ninterval_ms = 100\n\
             [plugins]\npaths = {}\n\
             [iceberg]\ncatalog_uri = \"{rest}\"\nwarehouse = \"s3://lake/warehouse\"\n\
             [iceberg.properties]\n\"s3.endpoint\" = \"{s3}\"\n\"s3.region\" = \"us-east-1\"\n\
             \"s3.path-style-access\" = \"true\"\n",
            plugins_toml()
        ),
    )
    .unwrap();
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_admetrics"))
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .arg("--file")
            .arg(&events)
            // Credentials the standard way (not in the config file).
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("ADMETRICS_LOG", "info")
            // Issue 14, defect 11, over REST: every third catalog commit is applied and then
            // reported as failed (see `tests/service.rs`); the verifier checks that every row
            // and data file is in the tables once.
            .env("ADMETRICS_FAULT", "ambiguous-commit:3")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let verify = || {
        let args: Vec<String> = ["--events", &events.display().to_string()]
            .iter()
            .map(|s| s.to_string())
            .chain([
                "--catalog".into(),
                rest.clone(),
                "--s3-endpoint".into(),
                s3.clone(),
            ])
            .collect();
        println!("{}", run_python("verify_file_run.py", &args));
    };
    let o = run();
    assert!(
        o.status.success(),
        "run --file over REST + S3 failed:\n{}",
        output_text(&o)
    );
    let faults = String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter(|l| l.contains("fault injection: commit"))
        .count();
    println!("{faults} catalog commits applied and reported as failed");
    assert!(faults >= 2, "{}", output_text(&o));
    verify();

    // Table maintenance as the compose stack runs it, over REST and S3: the ~10 commits' small
    // files compacted, manifests merged, old snapshots expired, unreferenced objects deleted;
    // the same rows afterwards.
    let o = Command::new(python())
        .arg(repo_root().join("scripts/maintain.py"))
        .arg("--config")
        .arg(&cfg)
        .args([
            "--once",
            "--report",
            "--min-files",
            "2",
            "--min-manifests",
            "2",
        ])
        .args(["--keep-snapshots-minutes", "0", "--min-expired", "1"])
        .args(["--delete-after-minutes", "0"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    let report = output_text(&o);
    println!("{report}");
    assert!(
        o.status.success() && !report.contains("\"error\""),
        "maintenance failed:\n{report}"
    );
    for what in [
        "compacted_files",
        "manifests_after",
        "expired_snapshots",
        "deleted_files",
    ] {
        assert!(
            report.contains(what),
            "no {what} in the maintenance round:\n{report}"
        );
    }
    verify();
    // Resume state comes back over REST (through the maintenance snapshots and the expiry): a
    // second run over the same file adds nothing.
    let o = run();
    assert!(
        o.status.success(),
        "second run failed:\n{}",
        output_text(&o)
    );
    verify();

    // The compose stack's query engine: DuckDB attached to the REST catalog, through the
    // dashboard's views and Superset's connection settings.
    let superset_python = repo_root().join(".venv-superset/bin/python");
    assert!(superset_python.is_file(), "run scripts/setup.sh --superset");
    let views = d.join("views.duckdb");
    let o = Command::new(&superset_python)
        .arg(repo_root().join("dashboard/bundle.py"))
        .args(["--rest-uri", &rest, "--warehouse", "s3://lake/warehouse"])
        .args(["--s3-endpoint", &s3, "--duckdb"])
        .arg(&views)
        .arg("--out")
        .arg(d.join("bundle.zip"))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bundle.py --rest-uri failed:\n{}",
        output_text(&o)
    );
    let o = Command::new(&superset_python)
        .arg(repo_root().join("tests/verify_rest_views.py"))
        .arg("--duckdb")
        .arg(&views)
        .arg("--events")
        .arg(&events)
        .output()
        .unwrap();
    println!("{}", output_text(&o));
    assert!(
        o.status.success(),
        "verify_rest_views failed:\n{}",
        output_text(&o)
    );
}
