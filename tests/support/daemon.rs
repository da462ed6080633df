//! Driving the daemon binary as a child process: configs, starts and stops, the position it
//! recorded (read the way it reads it), generated input, and comparing two table sets.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use admetrics::config::Config;
use admetrics::loadgen::{EventGen, LoadgenArgs};
use admetrics::sink::IcebergSink;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::*;

pub const TOPIC: &str = "campaign-events";

pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `window.out_of_orderness_ms` of [`write_config`].
pub const OUT_OF_ORDERNESS_MS: i64 = 5_000;

/// Daemon config for one table set. The idle timeout is long so that lateness depends only on
/// the input (a partition that has not been read yet holds the watermark, whatever the timing),
/// which makes two runs comparable window by window. A small prefetch queue makes the
/// partitions interleave, so windows close during the run, not only at its end. The lookback is
/// the default's (7 days: every restart replays the whole input's clicks).
pub fn write_config(dir: &Path, bootstrap: &str, rate: u64) -> std::path::PathBuf {
    let ooo = OUT_OF_ORDERNESS_MS;
    let plugins = plugin_paths();
    let text = format!(
        "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{TOPIC}\"\ngroup_id = \"unused\"\nmax_events_per_sec = {rate}\nbatch_size = 1000\n\
         [kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\"queued.min.messages\" = \"2000\"\n\"max.partition.fetch.bytes\" = \"65536\"\n\
         [window]\nsize_secs = 60\nout_of_orderness_ms = {ooo}\nidle_timeout_ms = 600000\n\
         [attribution]\nlookback_secs = 604800\n\
         [plugins]\npaths = {:?}\n\
         [iceberg]\ncatalog_uri = \"sqlite:{d}/catalog.db\"\nwarehouse = \"{d}/warehouse\"\n\
         [commit]\ninterval_ms = 300\nmax_rows = 20000\n",
        plugins
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
        d = dir.display()
    );
    let path = dir.join("admetrics.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A daemon child process, killed if the test fails before stopping it (its tables live in
/// a temp dir the failing test removes).
pub struct Daemon(pub Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// One daemon start, as static member `group`-1 of consumer group `group`.
pub fn spawn(config: &Path, group: &str) -> Daemon {
    Daemon(
        daemon_command(config, group)
            .spawn()
            .expect("spawn admetrics"),
    )
}

/// The `admetrics run` command line of `spawn`, for starts that need more environment.
pub fn daemon_command(config: &Path, group: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_admetrics"));
    c.args(["run", "--config"])
        .arg(config)
        .env("ADMETRICS__KAFKA__GROUP_ID", group)
        .env("ADMETRICS__KAFKA__GROUP_INSTANCE_ID", format!("{group}-1"))
        .env(
            "ADMETRICS_LOG",
            std::env::var("ADMETRICS_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
        );
    c
}

/// The position recorded in the tables (what a restart resumes from), read the way the
/// daemon reads it.
pub struct Probe {
    pub rt: tokio::runtime::Runtime,
    pub cfg: Config,
}

impl Probe {
    pub fn new(config: &Path) -> Probe {
        Probe {
            rt: tokio::runtime::Runtime::new().unwrap(),
            cfg: Config::load(config).unwrap(),
        }
    }

    pub fn offsets(&self) -> BTreeMap<i32, i64> {
        self.rt.block_on(async {
            match IcebergSink::open(&self.cfg.iceberg, TOPIC, "probe", 1 << 20).await {
                Ok(sink) => sink.offsets(),
                Err(_) => BTreeMap::new(), // catalog being created by the daemon
            }
        })
    }

    pub fn committed(&self) -> i64 {
        self.offsets().values().sum()
    }

    /// Per partition, the end of the windows the recorded state holds closed (published final).
    pub fn closed_through(&self) -> BTreeMap<i32, Option<i64>> {
        self.rt.block_on(async {
            match IcebergSink::open(&self.cfg.iceberg, TOPIC, "probe", 1 << 20).await {
                Ok(sink) => sink
                    .positions()
                    .into_iter()
                    .map(|(p, pos)| (p, pos.closed_through_ms))
                    .collect(),
                Err(_) => BTreeMap::new(),
            }
        })
    }

    /// Writer ids of the `campaign_metrics` snapshots.
    pub fn metric_writers(&self) -> std::collections::BTreeSet<String> {
        self.rt.block_on(async {
            let Ok(sink) = IcebergSink::open(&self.cfg.iceberg, TOPIC, "probe", 1 << 20).await
            else {
                return Default::default();
            };
            let t = iceberg::Catalog::load_table(
                sink.catalog().as_ref(),
                &iceberg::TableIdent::from_strs(["ads", "campaign_metrics"]).unwrap(),
            )
            .await
            .unwrap();
            t.metadata()
                .snapshots()
                .filter_map(|s| {
                    s.summary()
                        .additional_properties
                        .get("admetrics.writer-id")
                        .cloned()
                })
                .collect()
        })
    }
}

/// Offsets the group `group` committed to Kafka.
pub fn kafka_committed(bootstrap: &str, group: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(TOPIC, p);
    }
    let t = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    t.elements()
        .iter()
        .filter_map(|e| {
            if let Offset::Offset(o) = e.offset() {
                Some((e.partition(), o))
            } else {
                None
            }
        })
        .collect()
}

/// `wait_for`, failing at once if the daemon exits meanwhile (a config or start-up error).
pub fn wait_running(
    child: &mut Daemon,
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
) {
    wait_for(what, timeout, || {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the daemon exited with {status} while waiting for {what}");
        }
        cond()
    })
}

pub fn sigterm(child: &mut Daemon) -> Duration {
    let t = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    t.elapsed()
}

/// Produces `n` generated events keyed (and partitioned) by user, 20 minutes of event time
/// ending 30 minutes ago, some delivered twice, then one far-ahead event per partition that
/// closes every data window. Returns the number of messages.
pub fn produce(bootstrap: &str, partitions: i32, n: u64, seed: u64) -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    produce_span(
        bootstrap,
        partitions,
        n,
        seed,
        (now - 50 * 60_000, 20 * 60_000),
        Some(now - 5 * 60_000),
    )
}

/// [`produce`] with event times spread over `(start, span)` (ms), and a final event per
/// partition at `flush_at` (closing every window before it) if given.
pub fn produce_span(
    bootstrap: &str,
    partitions: i32,
    n: u64,
    seed: u64,
    (start, span): (i64, i64),
    flush_at: Option<i64>,
) -> i64 {
    let mut producer = TestProducer::new(bootstrap, TOPIC);
    let mut g = EventGen::new(LoadgenArgs {
        campaigns: 20,
        users: 20_000,
        seed,
        ..Default::default()
    });
    // ~2% of the events are delivered a second time up to 20 000 messages later (a producer
    // retry): often after a restart, so the remembered ids must survive it.
    let mut rng = fastrand::Rng::with_seed(seed ^ 0xd0b1e);
    let mut copies: std::collections::BTreeMap<u64, Vec<(i32, String, String)>> =
        Default::default();
    let mut sent = 0i64;
    for i in 0..n {
        let (key, payload) = g.next(start + (i as i64 * span / n as i64));
        let p = (key
            .bytes()
            .fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
            % partitions as u32) as i32;
        producer.send(p, &key, payload.as_bytes());
        sent += 1;
        if rng.f64() < 0.02 {
            copies
                .entry(i + rng.u64(1..20_000))
                .or_default()
                .push((p, key, payload));
        }
        for (p, key, payload) in copies.remove(&i).unwrap_or_default() {
            producer.send(p, &key, payload.as_bytes());
            sent += 1;
        }
        if i % 2_000 == 999 {
            // Bad input too: dead letters have their own floor across restarts.
            producer.send(p, "bad", format!("not json {i}").as_bytes());
            sent += 1;
        }
    }
    if let Some(at) = flush_at {
        let flush_t = chrono::DateTime::from_timestamp_millis(at)
            .unwrap()
            .format("%Y-%m-%dT%H:%M:%S%.3fZ");
        for p in 0..partitions {
            let flush = format!(
                r#"{{"event_id":"flush-{p}","event_type":"impression","event_time":"{flush_t}","campaign_id":"flush","ad_id":"flush","user_id":"flush-{p}"}}"#
            );
            producer.send(p, "flush", flush.as_bytes());
            sent += 1;
        }
    }
    producer.flush();
    sent
}

/// A producer thread that keeps the topic fed (a chunk of `per_sec` messages a second, event
/// time moving 10 s a chunk from 50 minutes ago) until [`Feeder::finish`]: a scenario that
/// waits for partitions to move never runs out of input, however fast the machine.
pub struct Feeder {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Fed>,
}

/// What a [`Feeder`] produced.
#[derive(Debug, Clone, Copy)]
pub struct Fed {
    /// Messages in all.
    pub total: i64,
    /// Every window ending at or before this is closed by the last events (their time minus
    /// `write_config`'s out-of-orderness): a member's recorded `closed_through` reaches it once
    /// it has published those windows as final.
    pub closes_through_ms: i64,
}

impl Feeder {
    pub fn start(bootstrap: &str, partitions: i32, per_sec: u64, seed: u64) -> Feeder {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let (flag, bootstrap) = (stop.clone(), bootstrap.to_string());
        let handle = std::thread::spawn(move || {
            let t0 = chrono::Utc::now().timestamp_millis() - 50 * 60_000;
            let (mut total, mut k) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                let started = std::time::Instant::now();
                total += produce_span(
                    &bootstrap,
                    partitions,
                    per_sec,
                    seed + k,
                    (t0 + k as i64 * 10_000, 10_000),
                    None,
                );
                k += 1;
                std::thread::sleep(
                    std::time::Duration::from_secs(1).saturating_sub(started.elapsed()),
                );
            }
            // The last events close every window the chunks filled.
            let flush_at = t0 + k as i64 * 10_000 + 10 * 60_000;
            total += produce_span(&bootstrap, partitions, 0, seed, (t0, 1), Some(flush_at));
            Fed {
                total,
                closes_through_ms: flush_at - OUT_OF_ORDERNESS_MS,
            }
        });
        Feeder { stop, handle }
    }

    /// Stops producing; returns what was produced in all.
    pub fn finish(self) -> Fed {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().expect("feeder thread")
    }
}

/// An uninterrupted run over the whole topic into `dir`, stopped with SIGTERM at the end.
pub fn reference_run(dir: &Path, bootstrap: &str, total: i64) -> Duration {
    let cfg = write_config(dir, bootstrap, 0);
    let probe = Probe::new(&cfg);
    let mut child = spawn(&cfg, "reference");
    wait_running(
        &mut child,
        "reference run",
        Duration::from_secs(300),
        || probe.committed() >= total,
    );
    sigterm(&mut child)
}

pub fn verify(reference: &Path, other: &Path, total: i64) -> String {
    let out = run_python(
        "verify_same.py",
        &[
            format!("--a={}", reference.display()),
            format!("--b={}", other.display()),
            format!("--expect-events={total}"),
        ],
    );
    println!("{out}");
    out
}

pub fn percentile(sorted: &[Duration], q: f64) -> u128 {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1].as_millis()
}
