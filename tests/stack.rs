//! The docker-compose stack, run natively: every service of `docker-compose.yml` started as a
//! process on loopback from the compose file's own definitions, and the dashboard's data checked
//! end to end in a real browser.
//!
//! One source: the compose file as a compose implementation resolves it (`docker-compose config`
//! through `tests/compose_plan.py`) gives each service's environment, command, volumes and health
//! check URL; the images' Dockerfiles give their entrypoints and the files they bake in. The test
//! only maps container addresses (`kafka:9092`, `minio:9000`, ...) to free loopback ports and
//! container paths (volumes, baked-in plugins, `/etc/admetrics/admetrics.toml`) to a temp dir and
//! the repo, with one substitution list ([`Mapping`]) applied to all of them. What runs for each
//! image (a service added to the compose file without a counterpart here fails the test):
//! - `kafka`: Apache Kafka from Maven Central (`scripts/kafka.sh`), the version the image tag
//!   names; `kafka-init`: the topic its command creates (name and partitions from the command);
//! - `minio` + `minio-init`: moto's S3 server (PyPI) and the bucket `minio-init` makes, with the
//!   service's root credentials;
//! - `iceberg-rest`: Apache's `RESTCatalogServer` (`scripts/iceberg-rest.sh serve`, the image's
//!   server from Maven Central) with the service's `CATALOG_*` environment;
//! - `admetrics` and `loadgen`: this build's binary with the Dockerfile's `CMD` / the service's
//!   command, reading `config/compose.toml` as the image does;
//! - `maintenance`: `scripts/maintain.py` with its Dockerfile's arguments;
//! - `redis`: Debian's `redis-server` with the service's command;
//! - `superset`: `scripts/dashboard.sh` with `dashboard/Dockerfile`'s entrypoint arguments and the
//!   service's command.
//!
//! Checks: the daemon's compose health check URL answers, traffic from the load generator is
//! committed; once the load generator stops the daemon catches up with the topic's end (its
//! Kafka group offsets equal the end offsets); Superset is healthy; Chromium loads the dashboard
//! (`dashboard/browser_check.py`) and `tests/verify_dashboard.py` checks every chart against the
//! tables read with PyIceberg over the REST catalog and S3, and `/metrics` against the same
//! tables; the maintenance job is still running and logged no error.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;
use support::*;

/// The services this test knows how to run natively.
const SERVICES: [&str; 10] = [
    "admetrics",
    "iceberg-rest",
    "kafka",
    "kafka-init",
    "loadgen",
    "maintenance",
    "minio",
    "minio-init",
    "redis",
    "superset",
];

/// Events the load generator must have had committed before it is stopped.
const MIN_EVENTS: i64 = 20_000;

/// `docker-compose.yml`, resolved.
struct Plan(serde_json::Map<String, Value>);

impl Plan {
    fn load() -> Plan {
        let out = run_python("compose_plan.py", &[repo_root().display().to_string()]);
        let v: Value = serde_json::from_str(&out).expect("compose_plan.py prints JSON");
        Plan(v["services"].as_object().expect("services").clone())
    }

    fn service(&self, name: &str) -> &Value {
        self.0
            .get(name)
            .unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
    }

    fn env(&self, name: &str) -> BTreeMap<String, String> {
        self.service(name)["environment"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A list-valued key (`command`, `entrypoint`): compose gives a list or a shell string.
    fn list(&self, name: &str, key: &str) -> Vec<String> {
        match &self.service(name)[key] {
            Value::Array(a) => a
                .iter()
                .map(|s| s.as_str().expect("string").to_string())
                .collect(),
            Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
            Value::Null => Vec::new(),
            other => panic!("{name}.{key}: unexpected {other}"),
        }
    }

    fn image(&self, name: &str) -> String {
        self.service(name)["image"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// The port a service's container listens on (its first published port's target).
    fn target_port(&self, name: &str) -> u16 {
        self.service(name)["ports"][0]["target"]
            .as_u64()
            .unwrap_or_else(|| panic!("{name} publishes no port")) as u16
    }

    /// `(host side, container path)` of each volume; a named volume's host side is its name.
    fn volumes(&self, name: &str) -> Vec<(String, String)> {
        self.service(name)["volumes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| {
                        let s = v.as_str().expect("short volume syntax");
                        let mut parts = s.split(':');
                        (
                            parts.next().unwrap().to_string(),
                            parts.next().expect("volume target").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The value after `flag` in an argument list.
fn arg_after<'a>(args: &'a [String], flag: &str) -> &'a str {
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} not in {args:?}"));
    &args[i + 1]
}

/// A JSON-form instruction (`CMD [...]`, `ENTRYPOINT [...]`) of a Dockerfile in the repo.
fn dockerfile(path: &str, instruction: &str) -> Vec<String> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{instruction} [")))
        .unwrap_or_else(|| panic!("{path} has no {instruction} [...]"));
    serde_json::from_str(&line[instruction.len()..]).expect("JSON form")
}

/// A `NAME=VALUE` line of one of the project's scripts (pinned versions).
fn script_var(path: &str, name: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{path} does not set {name}"))
        .to_string()
}

/// Container addresses and paths → loopback ports and local paths, applied to every string the
/// test takes from the compose file, the Dockerfiles and `config/compose.toml`.
#[derive(Default)]
struct Mapping(Vec<(String, String)>);

impl Mapping {
    fn add(&mut self, from: impl Into<String>, to: impl Into<String>) {
        self.0.push((from.into(), to.into()));
    }

    fn apply(&self, s: &str) -> String {
        self.0
            .iter()
            .fold(s.to_string(), |s, (from, to)| s.replace(from, to))
    }

    fn all(&self, v: &[String]) -> Vec<String> {
        v.iter().map(|s| self.apply(s)).collect()
    }

    fn env(&self, env: &BTreeMap<String, String>) -> Vec<(String, String)> {
        env.iter()
            .map(|(k, v)| (k.clone(), self.apply(v)))
            .collect()
    }
}

/// A service's process (group), stopped when the test ends, with its log.
struct Proc {
    child: Child,
    name: &'static str,
    log: PathBuf,
}

impl Proc {
    fn start(name: &'static str, cmd: &mut Command, dir: &Path) -> Proc {
        use std::os::unix::process::CommandExt;
        let log = dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        progress(format_args!("started {name} (pid {})", child.id()));
        Proc { child, name, log }
    }

    /// Panics with the log's tail if the process has exited.
    fn alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited: {status}; its log:\n{}",
                self.name,
                tail(&self.log, 40)
            );
        }
    }

    fn wait_port(&mut self, port: u16) {
        let what = format!("{} on port {port}", self.name);
        wait_for(&what, Duration::from_secs(120), || {
            self.alive();
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }

    fn stop(&mut self) {
        // The group: scripts that exec (dashboard.sh → gunicorn) leave workers as children.
        // `--`: procps reads "-1234" as options otherwise, and signals every process.
        // stderr: a group already gone (stop() then drop) is fine, not worth a line in the log.
        let _ = Command::new("kill")
            .args(["-s", "TERM", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(p: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `http://host:port/path` → (`host:port`, `/path`).
fn split_url(url: &str) -> (String, String) {
    let rest = url.split_once("://").expect("a URL").1;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    (host.to_string(), format!("/{path}"))
}

/// Per partition: the group's committed offset and the topic's end offset.
fn group_and_end(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> (i64, i64) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut end = 0;
    for p in 0..partitions {
        tpl.add_partition(topic, p);
        end += c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks")
            .1;
    }
    let committed = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets")
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum();
    (committed, end)
}

#[test]
fn the_compose_stack_runs_natively_and_the_dashboard_shows_its_tables() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plan = Plan::load();

    let names: BTreeSet<&str> = plan.0.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        SERVICES.into_iter().collect(),
        "docker-compose.yml's services and the ones this test runs natively differ: \
         give a new service its native counterpart here"
    );
    // The same upstream versions natively as in the images.
    assert_eq!(
        plan.image("kafka"),
        format!(
            "apache/kafka:{}",
            script_var("scripts/kafka.sh", "KAFKA_VERSION")
        )
    );
    assert_eq!(
        plan.image("iceberg-rest"),
        format!(
            "apache/iceberg-rest-fixture:{}",
            script_var("scripts/iceberg-rest.sh", "ICEBERG_VERSION")
        )
    );

    let mut map = Mapping::default();
    // Volumes: named ones become directories of the temp dir; bind mounts are the host path.
    for svc in &SERVICES {
        for (host, target) in plan.volumes(svc) {
            let local = if host.starts_with('/') {
                PathBuf::from(host)
            } else {
                d.join(&host)
            };
            std::fs::create_dir_all(&local).unwrap();
            map.add(target, local.display().to_string());
        }
    }
    // What the images bake in (Dockerfile, scripts/maintain.Dockerfile).
    let config = d.join("admetrics.toml");
    map.add(
        "/etc/admetrics/admetrics.toml",
        config.display().to_string(),
    );
    map.add(
        "/opt/admetrics/plugins/",
        format!("{}/", plugin_paths()[0].parent().unwrap().display()),
    );
    map.add(
        "/app/maintain.py",
        repo_root()
            .join("scripts/maintain.py")
            .display()
            .to_string(),
    );

    // kafka, kafka-init
    progress("kafka: Apache Kafka from Maven Central (scripts/kafka.sh)");
    let broker = Broker::start();
    map.add(
        format!("kafka:{}", kafka_port(&plan)),
        broker.bootstrap.clone(),
    );
    let init = plan.list("kafka-init", "command");
    let topic = arg_after(&init, "--topic").to_string();
    let partitions: i32 = arg_after(&init, "--partitions").parse().unwrap();
    broker.create_topic(&topic, partitions as u32);

    // minio, minio-init
    let s3_port = free_port();
    map.add("minio:9000", format!("127.0.0.1:{s3_port}"));
    let mut minio = Proc::start(
        "minio",
        Command::new(python())
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p"])
            .arg(s3_port.to_string()),
        d,
    );
    minio.wait_port(s3_port);
    let minio_env = plan.env("minio");
    let mc = plan.list("minio-init", "command").join(" ");
    let bucket = mc
        .split_whitespace()
        .skip_while(|w| *w != "mb")
        .find_map(|w| w.strip_prefix("local/"))
        .unwrap_or_else(|| panic!("minio-init makes no bucket: {mc}"))
        .to_string();
    let o = Command::new(python())
        .args(["-c", "import sys, boto3; boto3.client('s3', endpoint_url=sys.argv[1], aws_access_key_id=sys.argv[2], aws_secret_access_key=sys.argv[3], region_name='us-east-1').create_bucket(Bucket=sys.argv[4])"])
        .arg(format!("http://127.0.0.1:{s3_port}"))
        .arg(&minio_env["MINIO_ROOT_USER"])
        .arg(&minio_env["MINIO_ROOT_PASSWORD"])
        .arg(&bucket)
        .output()
        .unwrap();
    assert!(o.status.success(), "minio-init: {}", output_text(&o));

    // redis
    let redis_port = free_port();
    map.add(
        format!("redis:{}", plan.target_port_or("redis", 6379)),
        format!("127.0.0.1:{redis_port}"),
    );
    let redis_cmd = map.all(&plan.list("redis", "command"));
    let mut redis = Proc::start(
        "redis",
        Command::new("redis-server")
            .args(
                redis_cmd
                    .iter()
                    .skip_while(|a| a.as_str() == "redis-server"),
            )
            .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
            .args(["--dir", &d.display().to_string()]),
        d,
    );
    redis.wait_port(redis_port);

    // iceberg-rest
    let rest_port = free_port();
    map.add(
        format!("iceberg-rest:{}", plan.target_port("iceberg-rest")),
        format!("127.0.0.1:{rest_port}"),
    );
    let mut rest = Proc::start(
        "iceberg-rest",
        Command::new(repo_root().join("scripts/iceberg-rest.sh"))
            .args(["serve", &rest_port.to_string()])
            .envs(map.env(&plan.env("iceberg-rest"))),
        d,
    );
    rest.wait_port(rest_port);

    // admetrics: the image's command, reading config/compose.toml as /etc/admetrics/admetrics.toml
    let metrics_port = free_port();
    let container_metrics = plan.target_port("admetrics");
    map.add(
        format!("0.0.0.0:{container_metrics}"),
        format!("127.0.0.1:{metrics_port}"),
    );
    map.add(
        format!("127.0.0.1:{container_metrics}"),
        format!("127.0.0.1:{metrics_port}"),
    );
    let compose_toml = std::fs::read_to_string(repo_root().join("config/compose.toml")).unwrap();
    std::fs::write(&config, map.apply(&compose_toml)).unwrap();
    let group = toml::from_str::<toml::Table>(&compose_toml).unwrap()["kafka"]["group_id"]
        .as_str()
        .expect("[kafka] group_id")
        .to_string();
    let cmd = map.all(&dockerfile("Dockerfile", "CMD"));
    assert_eq!(dockerfile("Dockerfile", "ENTRYPOINT"), ["admetrics"]);
    let mut daemon = Proc::start(
        "admetrics",
        Command::new(env!("CARGO_BIN_EXE_admetrics"))
            .args(&cmd)
            .envs(map.env(&plan.env("admetrics"))),
        d,
    );
    let check = map.apply(
        plan.service("admetrics")["healthcheck"]["test"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_str()
            .unwrap(),
    );
    let (metrics_addr, ready_path) = split_url(&check);
    wait_for(
        "the daemon's compose health check",
        Duration::from_secs(120),
        || {
            daemon.alive();
            http_get(&metrics_addr, &ready_path).is_some_and(|(c, _)| c == 200)
        },
    );

    // loadgen: the same binary with the service's entrypoint and command
    assert_eq!(plan.list("loadgen", "entrypoint"), ["admetrics"]);
    let mut loadgen = Proc::start(
        "loadgen",
        Command::new(env!("CARGO_BIN_EXE_admetrics"))
            .args(map.all(&plan.list("loadgen", "command")))
            .envs(map.env(&plan.env("loadgen"))),
        d,
    );

    // maintenance
    let entry = map.all(&dockerfile("scripts/maintain.Dockerfile", "ENTRYPOINT"));
    assert_eq!(entry[0], "python");
    let mut maintenance = Proc::start(
        "maintenance",
        Command::new(python())
            .args(&entry[1..])
            .envs(map.env(&plan.env("maintenance"))),
        d,
    );

    // superset: the image's entrypoint script with the service's command, on a free port
    let superset_port = free_port();
    let entry = dockerfile("dashboard/Dockerfile", "ENTRYPOINT");
    assert_eq!(entry[0], "scripts/dashboard.sh");
    let mut superset = Proc::start(
        "superset",
        Command::new(repo_root().join(&entry[0]))
            .args(map.all(&entry[1..]))
            .args(map.all(&plan.list("superset", "command")))
            .args(["--port", &superset_port.to_string()])
            .envs(map.env(&plan.env("superset"))),
        d,
    );

    progress("stack started; waiting for the load generator's traffic to be committed");
    wait_for(
        &format!("{MIN_EVENTS} events committed"),
        Duration::from_secs(300),
        || {
            daemon.alive();
            loadgen.alive();
            group_and_end(&broker.bootstrap, &group, &topic, partitions).0 >= MIN_EVENTS
        },
    );
    loadgen.stop();
    let (_, end) = group_and_end(&broker.bootstrap, &group, &topic, partitions);
    progress(format_args!(
        "load generator stopped at {end} messages; waiting for the daemon to commit them all"
    ));
    wait_for(
        "the daemon to commit the topic's end",
        Duration::from_secs(120),
        || {
            daemon.alive();
            group_and_end(&broker.bootstrap, &group, &topic, partitions).0 == end
        },
    );

    let superset_health = plan.service("superset")["healthcheck"]["test"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .replace(
            &format!(":{}", plan.target_port("superset")),
            &format!(":{superset_port}"),
        );
    let (superset_addr, health_path) = split_url(&superset_health);
    wait_for("Superset's health check", Duration::from_secs(600), || {
        superset.alive();
        http_get(&superset_addr, &health_path).is_some_and(|(c, _)| c == 200)
    });

    // A program of dashboard/ in Superset's venv against this Superset; its output, or the test
    // fails with it and the tail of Superset's log.
    let superset_env = plan.env("superset");
    let superset_url = format!("http://127.0.0.1:{superset_port}");
    let dashboard_program = |script: &str, args: &[&str]| {
        let o = Command::new(repo_root().join(".venv-superset/bin/python"))
            .arg(repo_root().join("dashboard").join(script))
            .args(["--url", &superset_url])
            .args(args)
            .env(
                "ADMETRICS_SUPERSET_PASSWORD",
                &superset_env["ADMETRICS_SUPERSET_PASSWORD"],
            )
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{script} failed:\n{}\nsuperset log:\n{}",
            output_text(&o),
            tail(&superset.log, 40)
        );
        output_text(&o)
    };
    // Superset's warm-up (dashboard/warm_cache.py, run by the service every 10 s) may have cached
    // answers computed before the daemon committed the topic's end; one pass now, after it, so
    // every chart the page reads was computed from the final tables (the page reads the cache).
    dashboard_program("warm_cache.py", &["--once"]);

    progress("Superset answers; opening the dashboard in Chromium");
    let charts = d.join("charts.json");
    let artifacts = repo_root().join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("stack-dashboard.png");
    println!(
        "{}",
        dashboard_program(
            "browser_check.py",
            &[
                "--password",
                &superset_env["ADMETRICS_SUPERSET_PASSWORD"],
                "--out",
                charts.to_str().unwrap(),
                "--screenshot",
                shot.to_str().unwrap(),
                "--timeout",
                "120",
            ],
        )
    );

    let superset_cmd = map.all(&plan.list("superset", "command"));
    let o = Command::new(python())
        .arg(repo_root().join("tests/verify_dashboard.py"))
        .args(["--rest-uri", arg_after(&superset_cmd, "--rest-uri")])
        .args(["--s3-endpoint", arg_after(&superset_cmd, "--s3-endpoint")])
        .arg("--charts")
        .arg(&charts)
        .args(["--metrics-url", &format!("http://{metrics_addr}/metrics")])
        .envs(map.env(&superset_env))
        .output()
        .unwrap();
    println!("{}", output_text(&o));
    assert!(
        o.status.success(),
        "verify_dashboard failed:\n{}",
        output_text(&o)
    );

    daemon.alive();
    maintenance.alive();
    let log = std::fs::read_to_string(&maintenance.log).unwrap();
    assert!(
        !log.contains("Traceback") && !log.contains("\"error\""),
        "the maintenance job logged an error:\n{}",
        tail(&maintenance.log, 40)
    );
    drop((superset, maintenance, daemon, rest, redis, minio));
}

/// The broker's port inside the compose network: `kafka:PORT` in the topic job's command.
fn kafka_port(plan: &Plan) -> u16 {
    let init = plan.list("kafka-init", "command");
    arg_after(&init, "--bootstrap-server")
        .strip_prefix("kafka:")
        .expect("kafka-init talks to kafka:PORT")
        .parse()
        .unwrap()
}

impl Plan {
    /// `target_port`, or `default` for a service that publishes none (reached only inside the
    /// compose network).
    fn target_port_or(&self, name: &str, default: u16) -> u16 {
        self.service(name)["ports"][0]["target"]
            .as_u64()
            .map(|p| p as u16)
            .unwrap_or(default)
    }
}
