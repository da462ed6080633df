//! STATUS: work in progress for issue 4, not registered in host/Cargo.toml, so not in the
//! suite. As of this commit it FAILS: after two or three SIGKILLs a restarted daemon sometimes
//! makes no progress within 120 s, and earlier runs (before the replay-from summary key was
//! written) showed duplicated and lost `campaign_events` rows. See the issue 4 note.
//!
//! Exactly-once after crashes: the daemon (the real binary, as a child process) is killed with
//! SIGKILL at seeded random moments and restarted each time; afterwards both tables must equal
//! those of an uninterrupted run over the same input: every message once, final metrics equal.
//!
//! CI runs a short version (100K events, 5 kills). The full version the issue asks for:
//!   ADMETRICS_CRASH_EVENTS=500000 ADMETRICS_CRASH_KILLS=20 cargo test --release --test exactly_once -- --nocapture

mod support;

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use admetrics::loadgen::{EventGen, LoadgenArgs};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use support::*;

const TOPIC: &str = "campaign-events";
const PARTITIONS: i32 = 4;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn write_config(dir: &Path, bootstrap: &str, group: &str) -> std::path::PathBuf {
    let plugins = plugin_paths();
    let text = format!(
        "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{TOPIC}\"\ngroup_id = \"{group}\"\nmax_events_per_sec = 10000\nbatch_size = 1000\n\
         [kafka.consumer]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\
         [window]\nsize_secs = 60\nout_of_orderness_ms = 5000\nidle_timeout_ms = 2000\n\
         [attribution]\nlookback_secs = 300\n\
         [plugins]\npaths = {:?}\n\
         [iceberg]\ncatalog_uri = \"sqlite:{d}/catalog.db\"\nwarehouse = \"{d}/warehouse\"\n\
         [commit]\ninterval_ms = 300\nmax_rows = 20000\n",
        plugins.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        d = dir.display()
    );
    let path = dir.join("admetrics.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(config: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_admetrics"))
        .args(["run", "--config"])
        .arg(config)
        .env("ADMETRICS_LOG", std::env::var("ADMETRICS_CHILD_LOG").unwrap_or_else(|_| "warn".into()))
        .spawn()
        .expect("spawn admetrics")
}

fn committed(probe: &BaseConsumer) -> i64 {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    probe
        .committed_offsets(tpl, Duration::from_secs(5))
        .map(|t| t.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum())
        .unwrap_or(0)
}

fn probe(bootstrap: &str, group: &str) -> BaseConsumer {
    ClientConfig::new().set("bootstrap.servers", bootstrap).set("group.id", group).create().unwrap()
}

fn sigterm(child: &mut Child) -> Duration {
    let t = Instant::now();
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let status = child.wait().unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    t.elapsed()
}

#[test]
fn killed_and_restarted_runs_equal_an_uninterrupted_one() {
    let n = env_or("ADMETRICS_CRASH_EVENTS", 100_000);
    let kills = env_or("ADMETRICS_CRASH_KILLS", 5);
    let seed = env_or("ADMETRICS_CRASH_SEED", 11);
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS as u32);

    // Deterministic input: 20 minutes of event time ending 30 minutes ago, then one far-ahead
    // event per partition that closes every data window.
    let mut producer = TestProducer::new(&broker.bootstrap, TOPIC);
    let mut g = EventGen::new(LoadgenArgs { campaigns: 20, users: 20_000, seed, ..Default::default() });
    let now = chrono::Utc::now().timestamp_millis();
    let start = now - 50 * 60_000;
    for i in 0..n {
        let (key, payload) = g.next(start + (i as i64 * 20 * 60_000 / n as i64));
        let p = (key.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)) % PARTITIONS as u32) as i32;
        producer.send(p, &key, payload.as_bytes());
    }
    let flush_t = chrono::DateTime::from_timestamp_millis(now - 5 * 60_000).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ");
    for p in 0..PARTITIONS {
        let flush = format!(r#"{{"event_id":"flush-{p}","event_type":"impression","event_time":"{flush_t}","campaign_id":"flush","ad_id":"flush","user_id":"flush-{p}"}}"#);
        producer.send(p, "flush", flush.as_bytes());
    }
    producer.flush();
    let total = n as i64 + PARTITIONS as i64;

    // Reference: one uninterrupted run.
    let ref_dir = tempfile::tempdir().unwrap();
    let cfg = write_config(ref_dir.path(), &broker.bootstrap, "reference");
    let ref_probe = probe(&broker.bootstrap, "reference");
    let mut child = spawn(&cfg);
    wait_for("reference run", Duration::from_secs(300), || committed(&ref_probe) >= total);
    std::thread::sleep(Duration::from_millis(3_000)); // idle partitions release the watermark
    let stop_time = sigterm(&mut child);

    // Interrupted: SIGKILL at seeded random moments, restart each time.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &broker.bootstrap, "interrupted");
    let probe_b = probe(&broker.bootstrap, "interrupted");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut recoveries = Vec::new();
    for k in 0..kills {
        let before = committed(&probe_b);
        let started = Instant::now();
        let mut child = spawn(&cfg);
        // Recovery time: restart until the first new commit; then let it run a random while
        // (seeded) and kill it mid-stream, wherever it is (writing files, committing, storing
        // offsets, replaying).
        wait_for("progress after restart", Duration::from_secs(120), || committed(&probe_b) > before);
        recoveries.push(started.elapsed());
        let life = Duration::from_millis(rng.u64(0..1_500));
        std::thread::sleep(life);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let at = committed(&probe_b);
        println!("kill {}: {:?} after first commit, committed {at} of {total}", k + 1, life);
        assert!(at < total, "the input ran out before kill {}: raise ADMETRICS_CRASH_EVENTS", k + 1);
    }
    let mut child = spawn(&cfg);
    wait_for("interrupted run to finish", Duration::from_secs(90), || committed(&probe_b) >= total);
    std::thread::sleep(Duration::from_millis(3_000)); // idle partitions release the watermark
    sigterm(&mut child);

    recoveries.sort();
    let ms = |d: Duration| d.as_millis();
    println!(
        "recovery after kill -9 (restart → first new commit), {} samples: p50 {} ms, p99 {} ms; SIGTERM exit took {} ms",
        recoveries.len(),
        ms(recoveries[recoveries.len() / 2]),
        ms(recoveries[((recoveries.len() as f64 * 0.99).ceil() as usize).clamp(1, recoveries.len()) - 1]),
        ms(stop_time)
    );
    if std::env::var("ADMETRICS_KEEP_DIRS").is_ok() {
        println!("kept: reference {} interrupted {}", ref_dir.path().display(), dir.path().display());
        std::mem::forget(ref_dir);
        std::mem::forget(dir);
        return;
    }
    let out = run_python(
        "verify_same.py",
        &[format!("--a={}", ref_dir.path().display()), format!("--b={}", dir.path().display()), format!("--expect-events={total}")],
    );
    println!("{out}");
}
