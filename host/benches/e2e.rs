//! End-to-end benchmark on a real Apache Kafka broker (started here on loopback).
//!
//! 1. Produces N events (default 1M) to a 4-partition topic.
//! 2. Bare rdkafka `BaseConsumer` reads them all: the broker's ceiling in this run.
//! 3. The `admetrics run` daemon (a child process, so its CPU and peak RSS are its own) consumes
//!    the same events into committed Iceberg snapshots; done when the group's committed offsets
//!    (stored only after the Iceberg commit) reach the end. Ratio to (2) must be ≥ 90%.
//! 4. Latency: the load generator produces at 20K events/s for 30 s into the daemon running
//!    in-process; p50/p99 of produce → visible in a committed `campaign_metrics` revision.
//!
//!   cargo bench -p admetrics --bench e2e
//!   ADMETRICS_BENCH_EVENTS=500000 ADMETRICS_BENCH_LATENCY_SECS=20 cargo bench -p admetrics --bench e2e

#[path = "../../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use admetrics::config::Config;
use admetrics::loadgen::{EventGen, LoadgenArgs, LoadgenStats};
use admetrics::status::Status;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use support::*;

const TOPIC: &str = "campaign-events";
const PARTITIONS: i32 = 4;

fn config_text(bootstrap: &str, topic: &str, group: &str, dir: &std::path::Path) -> String {
    let plugins = plugin_paths();
    format!(
        "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{topic}\"\ngroup_id = \"{group}\"\n\
         [plugins]\npaths = {:?}\n[iceberg]\ncatalog_uri = \"sqlite:{d}/catalog.db\"\nwarehouse = \"{d}/warehouse\"\n",
        plugins
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
        d = dir.display()
    )
}

fn end_offsets(bootstrap: &str) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "bench-probe")
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            (
                p,
                c.fetch_watermarks(TOPIC, p, Duration::from_secs(5))
                    .unwrap()
                    .1,
            )
        })
        .collect()
}

fn group_committed(c: &BaseConsumer) -> i64 {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(TOPIC, p);
    }
    match c.committed_offsets(tpl, Duration::from_secs(5)) {
        Ok(t) => t
            .elements()
            .iter()
            .map(|e| {
                if let Offset::Offset(o) = e.offset() {
                    o
                } else {
                    0
                }
            })
            .sum(),
        Err(_) => 0,
    }
}

/// (utime + stime) seconds and peak RSS (kB) of a process, from /proc.
fn proc_usage(pid: u32) -> (f64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = 100.0; // USER_HZ on Linux
    let cpu = f.get(11).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / tick
        + f.get(12).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / tick;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0);
    (cpu, hwm)
}

fn main() {
    let n: u64 = std::env::var("ADMETRICS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let latency_secs: u64 = std::env::var("ADMETRICS_BENCH_LATENCY_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS as u32);
    println!(
        "admetrics end-to-end benchmark: Apache Kafka on {}, {n} events, {PARTITIONS} partitions",
        broker.bootstrap
    );

    // 1. produce, event times spread over the last 30 minutes
    let t = Instant::now();
    let mut producer = TestProducer::new(&broker.bootstrap, TOPIC);
    let mut g = EventGen::new(LoadgenArgs {
        campaigns: 100,
        ..Default::default()
    });
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..n {
        let (key, payload) = g.next(now - 1_800_000 + (i as i64 * 1_800_000 / n as i64));
        let p = (key
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32))
            % PARTITIONS as u32) as i32;
        producer.send(p, &key, payload.as_bytes());
    }
    producer.flush();
    // Every message was acknowledged (TestProducer::flush checks); completion is judged against
    // `n`, and the broker's high watermarks are only checked against it.
    let ends = end_offsets(&broker.bootstrap);
    if ends.values().sum::<i64>() != n as i64 {
        println!(
            "  note: broker-reported high watermarks sum to {} (stale; all {n} were acknowledged)",
            ends.values().sum::<i64>()
        );
    }
    println!(
        "  produced in {:.1?} ({:.0} events/s)",
        t.elapsed(),
        n as f64 / t.elapsed().as_secs_f64()
    );

    // 2. bare consumer
    let bare: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "bench-bare")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "50")
        .set("queued.min.messages", "200000")
        .create()
        .unwrap();
    bare.subscribe(&[TOPIC]).unwrap();
    let mut read = 0u64;
    let mut bytes = 0usize;
    let mut first: Option<Instant> = None;
    let (lo, hi) = (n / 10, n * 9 / 10);
    let (mut t_lo, mut t_hi) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(600);
    while read < n && Instant::now() < deadline {
        if let Some(Ok(m)) = bare.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(Instant::now);
            read += 1;
            bytes += rdkafka::Message::payload(&m).map_or(0, <[u8]>::len);
            if read == lo {
                t_lo = Some(Instant::now());
            }
            if read == hi {
                t_hi = Some(Instant::now());
            }
        }
    }
    let bare_secs = first.unwrap().elapsed().as_secs_f64();
    drop(bare);
    std::hint::black_box(bytes);
    let bare_rate = (hi - lo) as f64 / t_hi.unwrap().duration_since(t_lo.unwrap()).as_secs_f64();
    println!(
        "  bare rdkafka consumer: {read} messages in {bare_secs:.2} s = {:.0} msg/s; steady state (10% → 90%) {bare_rate:.0} msg/s",
        read as f64 / bare_secs
    );

    // 3. the daemon, as a child process
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("bench.toml");
    std::fs::write(
        &cfg_path,
        config_text(&broker.bootstrap, TOPIC, "bench-daemon", dir.path()),
    )
    .unwrap();
    let probe: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("group.id", "bench-daemon")
        .create()
        .unwrap();
    let started = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_admetrics"))
        .args(["run", "--config"])
        .arg(&cfg_path)
        .env("ADMETRICS_LOG", "warn")
        .spawn()
        .unwrap();
    let pid = child.id();
    // Committed-offset samples: steady-state rate = slope between 10% and 90% of n.
    let mut samples: Vec<(Instant, i64)> = Vec::new();
    let mut usage;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let done = group_committed(&probe);
        if samples.last().is_none_or(|(_, d)| *d != done) {
            samples.push((Instant::now(), done));
        }
        usage = proc_usage(pid);
        if done >= n as i64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "daemon did not finish; committed {done} of {n}"
        );
        assert!(child.try_wait().unwrap().is_none(), "daemon exited early");
    }
    let daemon_secs = started.elapsed().as_secs_f64();
    unsafe_kill_term(pid);
    let _ = child.wait();
    // Steady state: from the first commit past 10% to the last commit before the end. The final
    // commit is excluded: after the last message it waits for the commit interval by design,
    // which says nothing about throughput (the bare consumer likewise stops at its last message).
    let a = samples
        .iter()
        .find(|(_, d)| *d >= lo as i64)
        .copied()
        .unwrap();
    let b = samples
        .iter()
        .rev()
        .find(|(_, d)| *d < n as i64)
        .copied()
        .unwrap();
    assert!(
        b.1 - a.1 >= n as i64 / 2,
        "too few commits between 10% and the end for a steady-state figure"
    );
    let sustained = (b.1 - a.1) as f64 / b.0.duration_since(a.0).as_secs_f64();
    println!(
        "  admetrics daemon: {n} events into committed Iceberg snapshots in {daemon_secs:.2} s from process start = {:.0} events/s; \
         steady state (commits from 10% to the last before the end) {sustained:.0} events/s",
        n as f64 / daemon_secs
    );
    println!(
        "    CPU {:.2} s ({:.0} events per CPU-second), peak RSS {:.1} MB",
        usage.0,
        n as f64 / usage.0.max(1e-9),
        usage.1 as f64 / 1024.0
    );
    println!(
        "    steady-state ratio to the bare consumer: {:.1}% (target ≥ 90%)",
        100.0 * sustained / bare_rate
    );

    // 4. latency at 20K events/s, daemon in-process so its latency histogram is readable. Its
    // own topic: a daemon starting on empty tables reads its partitions from the start (its
    // position is in the tables, not in the group), so on the first topic it would first
    // replay the 2M events above and time those.
    const LATENCY_TOPIC: &str = "campaign-events-latency";
    broker.create_topic(LATENCY_TOPIC, PARTITIONS as u32);
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("latency.toml");
    std::fs::write(
        &cfg_path,
        config_text(
            &broker.bootstrap,
            LATENCY_TOPIC,
            "bench-latency",
            dir.path(),
        ),
    )
    .unwrap();
    let mut cfg = Config::load(&cfg_path).unwrap();
    cfg.kafka
        .consumer
        .insert("auto.offset.reset".into(), "latest".into());
    let status = Arc::new(Status::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = {
        let (cfg, status) = (cfg.clone(), status.clone());
        std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(admetrics::pipeline::run(cfg, status, async move {
                    let _ = stop_rx.await;
                }))
        })
    };
    // Let the group settle (assignment) before measuring.
    wait_for("daemon assignment", Duration::from_secs(30), || {
        status.commits.get() > 3
    });
    status.latency.lock().unwrap().reset();
    let stop = AtomicBool::new(false);
    let stats = Arc::new(LoadgenStats::default());
    let args = LoadgenArgs {
        rate: 20_000,
        total: Some(20_000 * latency_secs),
        campaigns: 100,
        ..Default::default()
    };
    let sent = admetrics::loadgen::produce(&broker.bootstrap, LATENCY_TOPIC, &args, &stop, &stats)
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    stop_tx.send(()).unwrap();
    daemon.join().unwrap().unwrap();
    let h = status.latency.lock().unwrap();
    println!(
        "  latency at 20K events/s for {latency_secs} s ({sent} events, {} measured): produce → visible in campaign_metrics p50 {} ms, p99 {} ms, max {} ms (target p99 ≤ 2000 ms)",
        h.count(),
        h.quantile(0.5).unwrap_or(-1),
        h.quantile(0.99).unwrap_or(-1),
        h.quantile(1.0).unwrap_or(-1)
    );
}

fn unsafe_kill_term(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
