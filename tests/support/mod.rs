//! Shared harness for the end-to-end tests: a real tansu broker process on a free loopback port,
//! the built plugin components, the Python readers, and a producer with explicit partitions.
//!
//! Nothing here skips: a missing broker binary, plugin build or Python venv is a test failure
//! that says which setup step to run.

#![allow(dead_code)]

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

fn tool(env: &str, name: &str, hint: &str) -> PathBuf {
    if let Ok(p) = std::env::var(env) {
        return p.into();
    }
    let home_bin = std::env::var("HOME")
        .map(|h| PathBuf::from(h).join(".cargo/bin").join(name))
        .ok();
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(PathBuf::from)
        .chain(home_bin.iter().map(|p| p.parent().unwrap().to_path_buf()))
    {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!("{name} not found (set {env} or run {hint})");
}

/// A tansu broker on 127.0.0.1:<free port>, killed on drop.
pub struct Broker {
    child: Child,
    pub port: u16,
    pub bootstrap: String,
    tansu: PathBuf,
    storage: String,
    _dir: tempfile::TempDir,
}

impl Broker {
    /// Starts an in-memory broker.
    pub fn start() -> Broker {
        Self::start_with(|_dir, port| format!("memory://tansu-{port}/"))
    }

    /// Starts a broker whose storage URL `storage(dir, port)` chooses (e.g. sqlite for durability).
    pub fn start_with(storage: impl Fn(&Path, u16) -> String) -> Broker {
        let tansu = tool("TANSU", "tansu", "scripts/setup.sh");
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let storage = storage(dir.path(), port);
        let child = Self::spawn(&tansu, dir.path(), port, &storage);
        let broker = Broker {
            child,
            port,
            bootstrap: format!("127.0.0.1:{port}"),
            tansu,
            storage,
            _dir: dir,
        };
        broker.wait_listening();
        broker
    }

    fn spawn(tansu: &Path, dir: &Path, port: u16, storage: &str) -> Child {
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("tansu.log"))
            .expect("log file");
        Command::new(tansu)
            // Storage paths (sqlite://FILE) are resolved against the working directory.
            .current_dir(dir)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
                "--storage-engine",
                storage,
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn tansu")
    }

    /// Starts the broker again on the same port and storage (after `kill`).
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.tansu, self._dir.path(), self.port, &self.storage);
        self.wait_listening();
    }

    fn wait_listening(&self) {
        let port = self.port;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn create_topic(&self, topic: &str, partitions: u32) {
        let out = Command::new(&self.tansu)
            .args([
                "topic",
                "create",
                topic,
                "--broker",
                &format!("tcp://127.0.0.1:{}", self.port),
                "--partitions",
            ])
            .arg(partitions.to_string())
            .output()
            .expect("run tansu topic create");
        assert!(
            out.status.success(),
            "topic create failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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

/// The three built plugin components (scripts/build-plugins.sh builds them).
pub fn plugin_paths() -> Vec<PathBuf> {
    let dir = repo_root().join("target/wasm32-wasip2/release");
    let paths: Vec<PathBuf> = ["ctr", "cvr", "attribution"]
        .iter()
        .map(|p| dir.join(format!("{p}.wasm")))
        .collect();
    for p in &paths {
        assert!(
            p.is_file(),
            "{} missing: run scripts/build-plugins.sh",
            p.display()
        );
    }
    paths
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
