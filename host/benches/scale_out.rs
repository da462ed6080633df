//! Scale-out benchmark on a real Apache Kafka broker (started here on loopback): the daemon binary
//! as 1, 2 and 3 members of one consumer group over a 12-partition topic, and the restart of a
//! member with and without static membership. A report, not a test: nothing here is asserted.
//!
//!   cargo bench -p admetrics --bench scale_out
//!   ADMETRICS_BENCH_EVENTS=600000 ADMETRICS_BENCH_RESTARTS=5 cargo bench -p admetrics --bench scale_out
//!
//! Figures:
//! * events/s end to end with k members (start of the members → every message committed to
//!   Iceberg), the catalog conflicts the members met (commits that lost the compare-and-swap to
//!   another member and were retried), per minute, and CPU seconds of the daemons;
//! * the broker's CPU seconds in the same span (the 2 cores are shared by the broker and the
//!   members: where the time goes);
//! * restart → first commit of the restarted member (kill -9, start again, until its /metrics
//!   shows committed campaign_events rows), p50/p99, with static membership (same
//!   `group.instance.id`: the group hands its partitions straight back) and without (a new member:
//!   the group first waits out the killed member's session, 10 s here), and the rebalance pause
//!   the other member sees: its longest gap between two commits from the kill until 2 s after
//!   the restarted member's first commit (commits are 1 s apart when nothing pauses).

#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::daemon::{Daemon, Probe, TOPIC, produce};
use support::*;

const PARTITIONS: i32 = 12;
const SESSION_MS: u64 = 10_000;

fn config(dir: &Path, bootstrap: &str, rate: u64) -> std::path::PathBuf {
    let text = format!(
        "[kafka]\nbrokers = \"{bootstrap}\"\ntopic = \"{TOPIC}\"\ngroup_id = \"bench\"\nmax_events_per_sec = {rate}\n\
         [kafka.consumer]\n\"session.timeout.ms\" = \"{SESSION_MS}\"\n\"heartbeat.interval.ms\" = \"1000\"\n\
         [plugins]\npaths = {}\n\
         [iceberg]\ncatalog_uri = \"sqlite:{d}/catalog.db\"\nwarehouse = \"{d}/warehouse\"\n\
         [http]\nlisten = \"127.0.0.1:0\"\n",
        plugins_toml(),
        d = dir.display()
    );
    let path = dir.join("admetrics.toml");
    std::fs::write(&path, text).unwrap();
    path
}

struct Member {
    daemon: Daemon,
    port: u16,
}

fn start(cfg: &Path, instance: Option<&str>) -> Member {
    let port = free_port();
    let mut c = Command::new(env!("CARGO_BIN_EXE_admetrics"));
    c.args(["run", "--config"])
        .arg(cfg)
        .env("ADMETRICS__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("ADMETRICS_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    if let Some(id) = instance {
        c.env("ADMETRICS__KAFKA__GROUP_INSTANCE_ID", id);
    }
    Member {
        daemon: Daemon(c.spawn().unwrap()),
        port,
    }
}

/// A metric of the member's `/metrics` page (first sample whose line starts with `prefix`).
fn metric(port: u16, prefix: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut page = String::new();
    s.read_to_string(&mut page).ok()?;
    page.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let t = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / 100.0
}

/// The longest time a counter went without changing, from its observations.
struct Gap {
    last: Option<f64>,
    since: Instant,
    longest: Duration,
}

impl Gap {
    fn new(v: Option<f64>) -> Self {
        Gap {
            last: v,
            since: Instant::now(),
            longest: Duration::ZERO,
        }
    }

    fn observe(&mut self, v: Option<f64>) {
        let now = Instant::now();
        self.longest = self.longest.max(now - self.since);
        if v.is_some() && v != self.last {
            self.last = v;
            self.since = now;
        }
    }
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let n = env("ADMETRICS_BENCH_EVENTS", 600_000);
    let restarts = env("ADMETRICS_BENCH_RESTARTS", 5) as usize;
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS as u32);
    let t = Instant::now();
    let total = produce(&broker.bootstrap, PARTITIONS, n, 5);
    println!(
        "admetrics scale-out benchmark: Apache Kafka on {}, {total} messages over {PARTITIONS} partitions \
         (produced in {:.1} s), {} cores",
        broker.bootstrap,
        t.elapsed().as_secs_f64(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!(
        "  members   wall s   events/s   daemon CPU s   broker CPU s   catalog conflicts   per minute"
    );
    for k in 1..=3usize {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &broker.bootstrap, 0);
        let probe = Probe::new(&cfg);
        let t = Instant::now();
        let broker_cpu = cpu_secs(broker.pid());
        let mut members: Vec<Member> = (0..k)
            .map(|i| start(&cfg, Some(&format!("m{i}"))))
            .collect();
        wait_for("every message committed", Duration::from_secs(900), || {
            probe.committed() >= total
        });
        let wall = t.elapsed().as_secs_f64();
        let conflicts: f64 = members
            .iter()
            .filter_map(|m| metric(m.port, "admetrics_catalog_conflicts_total"))
            .sum();
        let cpu: f64 = members.iter().map(|m| cpu_secs(m.daemon.id())).sum();
        let broker_cpu = cpu_secs(broker.pid()) - broker_cpu;
        for m in members.iter_mut() {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &m.daemon.id().to_string()])
                .status();
            let _ = m.daemon.wait();
        }
        println!(
            "  {k:>7}   {wall:>6.1}   {:>8.0}   {cpu:>12.1}   {broker_cpu:>12.1}   {conflicts:>17.0}   {:>10.1}",
            total as f64 / wall,
            conflicts / wall * 60.0
        );
    }

    // Restart → first commit, under a steady load (two members throttled, so the input lasts).
    println!();
    for static_membership in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = config(dir.path(), &broker.bootstrap, 3_000);
        let probe = Probe::new(&cfg);
        let mut other = start(&cfg, Some("other"));
        let mut samples = Vec::new();
        let mut pauses = Vec::new();
        let mut restart_no = 0;
        let id = |g: usize| {
            if static_membership {
                "restarted".to_string()
            } else {
                format!("restarted-{g}")
            }
        };
        let mut m = start(
            &cfg,
            Some(&id(restart_no))
                .filter(|_| static_membership)
                .map(|s| s.as_str()),
        );
        wait_for("both members committing", Duration::from_secs(120), || {
            metric(
                m.port,
                "admetrics_committed_rows_total{table=\"campaign_events\"}",
            )
            .is_some_and(|v| v > 0.0)
        });
        for _ in 0..restarts {
            if probe.committed() >= total {
                break;
            }
            // The other member's commits, watched from the kill on.
            let committed = |port: u16| {
                metric(
                    port,
                    "admetrics_committed_rows_total{table=\"campaign_events\"}",
                )
            };
            let mut gap = Gap::new(committed(other.port));
            m.daemon.kill().unwrap();
            m.daemon.wait().unwrap();
            restart_no += 1;
            let t = Instant::now();
            m = start(
                &cfg,
                Some(&id(restart_no))
                    .filter(|_| static_membership)
                    .map(|s| s.as_str()),
            );
            wait_for(
                "the restarted member's first commit",
                Duration::from_secs(120),
                || {
                    gap.observe(committed(other.port));
                    committed(m.port).is_some_and(|v| v > 0.0)
                },
            );
            samples.push(t.elapsed().as_secs_f64());
            let until = Instant::now() + Duration::from_secs(2);
            while Instant::now() < until {
                gap.observe(committed(other.port));
                std::thread::sleep(Duration::from_millis(50));
            }
            pauses.push(gap.longest.as_secs_f64());
        }
        for d in [&mut m.daemon, &mut other.daemon] {
            let _ = Command::new("kill")
                .args(["-s", "TERM", &d.id().to_string()])
                .status();
            let _ = d.wait();
        }
        samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if samples.is_empty() {
            println!(
                "  restart → first commit: no sample (input ran out; raise ADMETRICS_BENCH_EVENTS)"
            );
            continue;
        }
        pauses.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "  restart → first commit, {} membership ({} samples, session.timeout.ms = {SESSION_MS}): \
             p50 {:.2} s, p99 {:.2} s, max {:.2} s; the other member's longest commit gap p50 {:.2} s, max {:.2} s",
            if static_membership {
                "static"
            } else {
                "dynamic"
            },
            samples.len(),
            percentile(&samples, 0.5),
            percentile(&samples, 0.99),
            samples.last().unwrap(),
            percentile(&pauses, 0.5),
            pauses.last().unwrap()
        );
    }
}
