//! Shared harness for the end-to-end tests: a real Apache Kafka broker process (KRaft, one node,
//! `scripts/kafka.sh`) on free loopback ports, the built plugin components, the Python readers,
//! and a producer with explicit partitions.
//!
//! Nothing here skips: a missing broker binary, plugin build or Python venv is a test failure
//! that says which setup step to run.

#![allow(dead_code)]

pub mod daemon;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use admetrics::loadgen::{DeliveryCounter, LoadgenStats};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Daemon logs go to the test's captured output (shown when a test fails).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ADMETRICS_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ has a parent")
        .to_path_buf()
}

/// An Apache Kafka broker on 127.0.0.1:<free port>, killed on drop. Its data lives in a temp
/// dir, so [`Broker::kill`] + [`Broker::restart`] is a broker crash and recovery.
pub struct Broker {
    child: Child,
    pub port: u16,
    controller_port: u16,
    pub bootstrap: String,
    dir: tempfile::TempDir,
}

impl Broker {
    pub fn start() -> Broker {
        let dir = tempfile::tempdir().expect("temp dir");
        let (port, controller_port) = (free_port(), free_port());
        let child = Self::spawn(dir.path(), port, controller_port);
        let broker = Broker {
            child,
            port,
            controller_port,
            bootstrap: format!("127.0.0.1:{port}"),
            dir,
        };
        broker.wait_listening();
        broker
    }

    fn spawn(dir: &Path, port: u16, controller_port: u16) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("broker.log"))
            .expect("log file");
        // `run` execs the JVM: the child is the broker itself, so a kill is a broker crash.
        Command::new(repo_root().join("scripts/kafka.sh"))
            .arg("run")
            .arg(dir)
            .arg(port.to_string())
            .arg(controller_port.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn scripts/kafka.sh run (run scripts/setup.sh --kafka first)")
    }

    /// The broker's process id (the JVM: `scripts/kafka.sh run` execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Starts the broker again on the same ports and data (after `kill`).
    pub fn restart(&mut self) {
        self.child = Self::spawn(self.dir.path(), self.port, self.controller_port);
        self.wait_listening();
    }

    /// The broker opens its client port once it is ready to serve.
    fn wait_listening(&self) {
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(90);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log =
                std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default();
            assert!(
                Instant::now() < deadline,
                "Kafka did not listen on {port} within 90 s; its log:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates `topic` with `partitions` partitions (replication factor 1) and waits until every
    /// partition has a leader.
    pub fn create_topic(&self, topic: &str, partitions: u32) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        use rdkafka::client::DefaultClientContext;
        let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("admin client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let results = rt
            .block_on(admin.create_topics(
                &[NewTopic::new(
                    topic,
                    partitions as i32,
                    TopicReplication::Fixed(1),
                )],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
            ))
            .expect("create_topics");
        for r in results {
            if let Err((t, e)) = r {
                assert!(
                    e == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                    "creating topic {t}: {e}"
                );
            }
        }
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .create()
            .expect("metadata client");
        wait_for(
            "the topic's partition leaders",
            Duration::from_secs(60),
            || {
                use rdkafka::consumer::Consumer;
                consumer
                    .fetch_metadata(Some(topic), Duration::from_secs(5))
                    .ok()
                    .and_then(|m| {
                        m.topics().first().map(|t| {
                            t.partitions().len() == partitions as usize
                                && t.partitions().iter().all(|p| p.leader() >= 0)
                        })
                    })
                    .unwrap_or(false)
            },
        );
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: the broker keeps its connections open and answers nothing, as a hung or
    /// partitioned one does (a crash refuses connections instead). Killed as usual on drop.
    pub fn pause(&self) {
        let ok = Command::new("kill")
            .args(["-STOP", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -STOP the broker");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The built plugin component `name` (a plugin or a fixture, e.g. `fixture_ctr_v2`; built by
/// scripts/build-plugins.sh).
pub fn wasm(name: &str) -> PathBuf {
    let p = repo_root().join(format!("target/wasm32-wasip2/release/{name}.wasm"));
    assert!(
        p.is_file(),
        "{} missing: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

/// The three built plugin components (scripts/build-plugins.sh builds them).
pub fn plugin_paths() -> Vec<PathBuf> {
    ["ctr", "cvr", "attribution"].map(wasm).to_vec()
}

/// Copies a plugin build into a watched directory atomically (write + rename), as an operator's
/// deploy tool should.
pub fn install_plugin(src: &Path, dir: &Path, name: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::copy(src, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// The built `admetrics` binary.
pub fn admetrics() -> Command {
    Command::new(env!("CARGO_BIN_EXE_admetrics"))
}

/// Generates `d/name` with the load generator (`loadgen_args`) and runs it through
/// `admetrics run --config cfg --file` (its own stream: the file's default name).
pub fn run_generated_file(cfg: &Path, d: &Path, name: &str, loadgen_args: &[&str]) {
    let f = d.join(name);
    loadgen_file(&f, loadgen_args);
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

/// The plugin paths as a TOML array, for `[plugins] paths = …` in a test's config.
pub fn plugins_toml() -> String {
    let quoted: Vec<String> = plugin_paths()
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    format!("[{}]", quoted.join(", "))
}

/// A finished child's stdout and stderr, for assertion messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Writes generated events to `path` with the binary's own load generator (`loadgen --out`);
/// `args` are its options (`--total`, `--seed`, ...).
pub fn loadgen_file(path: &Path, args: &[&str]) {
    let o = Command::new(env!("CARGO_BIN_EXE_admetrics"))
        .args(["loadgen", "--out"])
        .arg(path)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "loadgen failed: {}", output_text(&o));
}

/// The Python of the project's test venv (scripts/setup.sh creates it).
pub fn python() -> PathBuf {
    let p = std::env::var("ADMETRICS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo_root().join(".venv/bin/python"));
    assert!(p.is_file(), "{} missing: run scripts/setup.sh", p.display());
    p
}

/// Runs a Python verifier from tests/ and fails the test with its output if it fails.
pub fn run_python(script: &str, args: &[String]) -> String {
    let out = Command::new(python())
        .arg(repo_root().join("tests").join(script))
        .args(args)
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    stdout
}

/// A producer that puts each message on the partition we choose (tests need to know), and
/// fails loudly if the broker did not acknowledge every message.
pub struct TestProducer {
    producer: BaseProducer<DeliveryCounter>,
    stats: Arc<LoadgenStats>,
    topic: String,
    sent: u64,
}

impl TestProducer {
    pub fn new(bootstrap: &str, topic: &str) -> Self {
        let stats = Arc::new(LoadgenStats::default());
        let producer = admetrics::loadgen::producer(bootstrap, &stats, 10).expect("producer");
        TestProducer {
            producer,
            stats,
            topic: topic.into(),
            sent: 0,
        }
    }

    pub fn send(&mut self, partition: i32, key: &str, payload: &[u8]) {
        loop {
            match self.producer.send(
                BaseRecord::to(&self.topic)
                    .partition(partition)
                    .key(key)
                    .payload(payload),
            ) {
                Ok(()) => {
                    self.sent += 1;
                    return;
                }
                Err((e, _)) => {
                    assert!(e.to_string().contains("Queue full"), "produce failed: {e}");
                    self.producer.poll(Duration::from_millis(10));
                }
            }
        }
    }

    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(60)).expect("flush");
        let (ok, failed) = (
            self.stats.delivered.load(Relaxed),
            self.stats.failed.load(Relaxed),
        );
        assert_eq!(
            (ok, failed),
            (self.sent, 0),
            "broker acknowledged {ok} of {} messages, {failed} failed",
            self.sent
        );
    }
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes (then panics with `what`).
///
/// Says on stderr what it is waiting for every 30 s: `scripts/test.sh` runs the tests with
/// `--nocapture`, so a slow wait shows in CI's log while it happens, not only after a failure.
pub fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut next_note = Duration::from_secs(30);
    while !cond() {
        let waited = start.elapsed();
        assert!(
            waited < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        if waited >= next_note {
            progress(format_args!(
                "still waiting for {what} ({} s of {} s)",
                waited.as_secs(),
                timeout.as_secs()
            ));
            next_note += Duration::from_secs(30);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The running test's name (libtest names each test's thread after it).
pub fn thread_name() -> String {
    std::thread::current().name().unwrap_or("test").to_string()
}

/// A progress line on stderr, prefixed with the test's name and the wall-clock time.
pub fn progress(msg: impl std::fmt::Display) {
    eprintln!(
        "[{} {}] {msg}",
        chrono::Utc::now().format("%H:%M:%S"),
        thread_name()
    );
}

/// (status code, body) of `GET path` from `addr` (`host:port`), or `None` while nothing listens
/// there or the answer is cut off. HTTP/1.1 with `Connection: close`: the daemon's `/metrics`
/// server and Superset both answer it.
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let code = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n")?.1.to_string();
    Some((code, body))
}
