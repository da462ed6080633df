//! Many daemons, one consumer group, on a real Apache Kafka broker: partitions move between members
//! (kills, joins, graceful stops, rolling restarts, a broker restart, a paused member that wakes
//! up after its partitions moved) and every message still lands in `campaign_events` exactly once,
//! every bad one in `dead_letters` once, and the current value of every window
//! (`sql/current_metrics.sql`) equals a single daemon's over the same input (`verify_same.py`).
//! A producer thread keeps the topic fed while the members are moved around, so every step
//! waits for its partitions to move on however fast the machine is (no step depends on timing);
//! the reference daemon reads the whole topic afterwards.
//!
//! Also: a partition the tables cannot resume is refused loudly, never skipped: its replay point
//! fell below the log start (retention), or the topic was recreated and ends below the recorded
//! position.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};
use support::daemon::*;
use support::*;

const PARTITIONS: i32 = 12;
const GROUP: &str = "scale";

/// One test at a time: each runs a broker and up to four daemons on the machine's two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Member `name` of the group (static membership: `name` is its `group.instance.id`), its
/// stderr kept in `dir/name.log`.
fn member(cfg: &Path, dir: &Path, name: &str) -> Daemon {
    member_with(cfg, dir, name, &[])
}

/// [`member`] with extra environment (config overrides).
fn member_with(cfg: &Path, dir: &Path, name: &str, env: &[(&str, &str)]) -> Daemon {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))
        .unwrap();
    Daemon(
        daemon_command(cfg, GROUP)
            .env("ADMETRICS__KAFKA__GROUP_INSTANCE_ID", name)
            .envs(env.iter().copied())
            .stderr(log)
            .spawn()
            .expect("spawn admetrics"),
    )
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Waits until the recorded position moved `by` messages past where it was AND every partition
/// moved (so a killed member's partitions were taken over), with every member in `alive` still
/// running. The topic is fed all along (`Feeder`), so every partition keeps receiving input.
fn progress(probe: &Probe, alive: &mut BTreeMap<String, Daemon>, by: i64, what: &str) {
    let before = probe.offsets();
    let before_sum: i64 = before.values().sum();
    wait_for(what, Duration::from_secs(180), || {
        for (name, d) in alive.iter_mut() {
            if let Some(status) = d.try_wait().unwrap() {
                panic!("member {name} exited with {status} during {what}");
            }
        }
        let now = probe.offsets();
        now.values().sum::<i64>() >= before_sum + by
            && (0..PARTITIONS)
                .all(|p| now.get(&p).copied().unwrap_or(0) > before.get(&p).copied().unwrap_or(0))
    });
    support::progress(format_args!("{what}: position {}", probe.committed()));
}

/// Waits until every message is committed AND every partition's owner has published the
/// windows the last events close as final (its recorded `closed_through`). Positions alone are
/// not enough: a partition handed over after its last message keeps the position past it, while
/// its new owner is still replaying and has not closed those windows yet.
fn consumed_and_closed(probe: &Probe, alive: &mut BTreeMap<String, Daemon>, fed: Fed) {
    wait_for(
        "the input to be consumed and its windows closed",
        Duration::from_secs(300),
        || {
            for (name, d) in alive.iter_mut() {
                if let Some(status) = d.try_wait().unwrap() {
                    panic!("member {name} exited with {status}");
                }
            }
            let closed = probe.closed_through();
            probe.committed() >= fed.total
                && (0..PARTITIONS).all(|p| {
                    closed
                        .get(&p)
                        .copied()
                        .flatten()
                        .is_some_and(|c| c >= fed.closes_through_ms)
                })
        },
    );
}

fn stop(alive: &mut BTreeMap<String, Daemon>, name: &str) -> Duration {
    let mut d = alive.remove(name).expect("member running");
    sigterm(&mut d)
}

fn kill(alive: &mut BTreeMap<String, Daemon>, name: &str) {
    let mut d = alive.remove(name).expect("member running");
    d.kill().unwrap();
    d.wait().unwrap();
}

#[test]
fn daemons_in_one_group_survive_kills_joins_stops_rolling_restarts_and_a_broker_restart() {
    let _serial = serial();
    let rate = env_or("ADMETRICS_SCALE_RATE", 2_000);
    let mut broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS as u32);
    // Fed all along: every step below finds input to move every partition on.
    let feeder = Feeder::start(&broker.bootstrap, PARTITIONS, rate, 61);

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &broker.bootstrap, 0);
    let probe = Probe::new(&cfg);
    let mut alive: BTreeMap<String, Daemon> = BTreeMap::new();
    for name in ["a", "b", "c"] {
        alive.insert(name.into(), member(&cfg, dir.path(), name));
    }
    let step = rate as i64 * 3;
    progress(&probe, &mut alive, step, "three members consuming");
    kill(&mut alive, "b");
    progress(&probe, &mut alive, step, "after kill -9 of b");
    alive.insert("d".into(), member(&cfg, dir.path(), "d"));
    progress(&probe, &mut alive, step, "after d joined");
    let exit = stop(&mut alive, "c");
    progress(&probe, &mut alive, step, "after SIGTERM of c");
    support::progress(format_args!("c stopped in {} ms", exit.as_millis()));
    // Rolling restart: every member in turn (b comes back too, under its old instance id).
    alive.insert("b".into(), member(&cfg, dir.path(), "b"));
    for name in ["a", "b", "d"] {
        stop(&mut alive, name);
        alive.insert(name.into(), member(&cfg, dir.path(), name));
        progress(
            &probe,
            &mut alive,
            step,
            &format!("after restarting {name}"),
        );
    }
    broker.kill();
    std::thread::sleep(Duration::from_secs(2));
    broker.restart();
    progress(&probe, &mut alive, step, "after the broker restart");
    let fed = feeder.finish();
    let total = fed.total;
    consumed_and_closed(&probe, &mut alive, fed);
    for name in ["a", "b", "d"] {
        stop(&mut alive, name);
    }
    let logs: String = ["a", "b", "c", "d"]
        .iter()
        .map(|m| std::fs::read_to_string(dir.path().join(format!("{m}.log"))).unwrap_or_default())
        .collect();
    println!(
        "claims raced: {}, fenced commits: {}",
        logs.matches("claim raced").count(),
        logs.matches("their rows are left to it").count()
    );
    let ref_dir = tempfile::tempdir().unwrap();
    let t = Instant::now();
    reference_run(ref_dir.path(), &broker.bootstrap, total);
    support::progress(format_args!(
        "reference: one daemon, {total} messages in {:.1} s",
        t.elapsed().as_secs_f64()
    ));
    verify(ref_dir.path(), dir.path(), total);
}

#[test]
fn a_paused_member_that_wakes_after_its_partitions_moved_rewinds_and_doubles_nothing() {
    let _serial = serial();
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS as u32);
    // Fed all along, so every step finds input to move every partition on.
    let feeder = Feeder::start(&broker.bootstrap, PARTITIONS, 2_000, 67);

    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &broker.bootstrap, 0);
    let probe = Probe::new(&cfg);
    let mut alive: BTreeMap<String, Daemon> = BTreeMap::new();
    alive.insert(
        "zombie".into(),
        member_with(
            &cfg,
            dir.path(),
            "zombie",
            &[("ADMETRICS__KAFKA__MAX_EVENTS_PER_SEC", "500")],
        ),
    );
    alive.insert("other".into(), member(&cfg, dir.path(), "other"));
    progress(&probe, &mut alive, 6_000, "two members consuming");
    // The zombie reads 500 events/s of the ~1 000/s its partitions get: it always has input
    // waiting and rows it has not committed yet when it is paused. A round in which it still
    // committed nothing the fence could refuse is repeated.
    let zombie_log = dir.path().join("zombie.log");
    let fenced = || {
        std::fs::read_to_string(&zombie_log)
            .unwrap_or_default()
            .matches("their rows are left to it")
            .count()
    };
    let mut round = 0;
    loop {
        round += 1;
        assert!(
            round <= 6,
            "the zombie never tried to commit a partition it had lost:\n{}",
            std::fs::read_to_string(&zombie_log).unwrap_or_default()
        );
        let zombie = alive.remove("zombie").unwrap();
        let pid = zombie.id().to_string();
        let signal = |sig: &str| {
            assert!(
                Command::new("kill")
                    .args(["-s", sig, &pid])
                    .status()
                    .unwrap()
                    .success()
            )
        };
        signal("STOP");
        // Past the session timeout (6 s) the group gives its partitions to the other member,
        // which claims them and commits past the zombie's positions.
        std::thread::sleep(Duration::from_secs(8));
        progress(&probe, &mut alive, 4_000, "the other member took over");
        let positions_before = probe.offsets();
        signal("CONT");
        alive.insert("zombie".into(), zombie);
        // Awake again: whatever it held is refused by the fence, its partitions are not rewound.
        std::thread::sleep(Duration::from_secs(3));
        let positions_after = probe.offsets();
        for (p, o) in &positions_before {
            assert!(
                positions_after.get(p).is_some_and(|a| a >= o),
                "partition {p} moved back from {o} to {:?} after the zombie woke up",
                positions_after.get(p)
            );
        }
        if fenced() > 0 {
            break;
        }
        // It rejoins and gets partitions back: both members consuming again.
        progress(&probe, &mut alive, 4_000, "the zombie rejoined");
    }
    println!(
        "the zombie's commits refused by the fence: {} (round {round})",
        fenced()
    );
    // The other member reads the rest (a throttled member's replay would take its time).
    stop(&mut alive, "zombie");
    let fed = feeder.finish();
    let total = fed.total;
    consumed_and_closed(&probe, &mut alive, fed);
    stop(&mut alive, "other");
    let ref_dir = tempfile::tempdir().unwrap();
    reference_run(ref_dir.path(), &broker.bootstrap, total);
    verify(ref_dir.path(), dir.path(), total);
}

/// Runs one member until it exits by itself (it must), returning its stderr.
fn run_until_refused(cfg: &Path) -> (std::process::ExitStatus, String) {
    let mut c = daemon_command(cfg, GROUP)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if c.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("the daemon kept running on a partition it cannot resume");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = c.wait_with_output().unwrap();
    (out.status, String::from_utf8_lossy(&out.stderr).to_string())
}

/// Runs one member, which must stop by itself with an error saying all of `says`.
fn assert_refused(cfg: &Path, says: &[&str]) {
    let (status, err) = run_until_refused(cfg);
    assert!(!status.success(), "{err}");
    assert!(says.iter().all(|s| err.contains(s)), "{err}");
    println!(
        "refused: {}",
        err.lines()
            .rfind(|l| l.contains(says[says.len() - 1]))
            .unwrap_or_default()
    );
}

#[test]
fn a_partition_below_its_log_start_or_past_its_end_is_refused_loudly() {
    let _serial = serial();
    const P: i32 = 2;
    let broker = Broker::start();
    broker.create_topic(TOPIC, P as u32);
    let total = produce(&broker.bootstrap, P, 4_000, 71);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &broker.bootstrap, 0);
    let probe = Probe::new(&cfg);
    let mut d = spawn(&cfg, GROUP);
    wait_running(&mut d, "first run", Duration::from_secs(120), || {
        probe.committed() >= total
    });
    sigterm(&mut d);
    let recorded = probe.offsets();

    // Retention: everything but the last message of partition 1 deleted (the replay point, with
    // a 7-day lookback, is the partition's start).
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 1, Offset::Offset(recorded[&1] - 1))
        .unwrap();
    block_on(admin(&broker.bootstrap).delete_records(&tpl, &AdminOptions::new()))
        .expect("delete records");
    assert_refused(&cfg, &["partition 1", "retention removed offsets"]);

    // Recreated topic: offsets restart at 0, far below the recorded position.
    let results = block_on(admin(&broker.bootstrap).delete_topics(&[TOPIC], &AdminOptions::new()))
        .expect("delete topic");
    assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
    wait_for("the topic to be gone", Duration::from_secs(60), || {
        let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &broker.bootstrap)
            .create()
            .unwrap();
        use rdkafka::consumer::Consumer;
        c.fetch_metadata(Some(TOPIC), Duration::from_secs(5))
            .map(|m| m.topics().first().is_none_or(|t| t.partitions().is_empty()))
            .unwrap_or(false)
    });
    broker.create_topic(TOPIC, P as u32);
    produce(&broker.bootstrap, P, 100, 72);
    assert_refused(&cfg, &["partition", "recreated or restored"]);
}

/// The broker goes away, then the operator stops the daemon: it exits 0 promptly with what it
/// read committed to the tables, and says once, not twenty times a second, that the broker is
/// down. Before: its final Kafka offset commit waited for a group coordinator for the session
/// timeout, the consumer's close polled forever with no broker to leave the group on (rdkafka's
/// drop has no bound), and every poll logged `AllBrokersDown` (300 lines in 45 s, then exit 1
/// from `commit.shutdown_timeout_ms`, or still running after a minute).
#[test]
fn a_daemon_whose_broker_is_gone_stops_on_sigterm_without_waiting_for_it() {
    stops_on_sigterm_without_its_broker(Gone::Killed);
}

/// The same with a broker that hangs instead (SIGSTOP: its connections stay open, nothing is
/// answered), which is also what a broker stopping in the middle of the daemon's final commit
/// looks like to it. Before: librdkafka's synchronous commit has no time limit, so the ingest
/// thread waited in it for good and the process never exited (seen in scripts/dashboard-bench.sh,
/// whose cleanup stops the daemon and the broker together: still running minutes later).
#[test]
fn a_daemon_whose_broker_hangs_stops_on_sigterm_without_waiting_for_it() {
    stops_on_sigterm_without_its_broker(Gone::Paused);
}

enum Gone {
    Killed,
    Paused,
}

fn stops_on_sigterm_without_its_broker(gone: Gone) {
    let _serial = serial();
    const P: i32 = 2;
    let mut broker = Broker::start();
    broker.create_topic(TOPIC, P as u32);
    let total = produce(&broker.bootstrap, P, 4_000, 73);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &broker.bootstrap, 0);
    // The group session of the shipped configs (librdkafka's default), not the tests' 6 s: a
    // coordinator that is gone is waited for that long.
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        "\"session.timeout.ms\" = \"6000\"",
        "\"session.timeout.ms\" = \"45000\"",
    );
    std::fs::write(&cfg, text).unwrap();
    let probe = Probe::new(&cfg);
    let mut d = member(&cfg, dir.path(), "alone");
    wait_running(
        &mut d,
        "every message committed",
        Duration::from_secs(120),
        || probe.committed() >= total,
    );
    match gone {
        Gone::Killed => broker.kill(),
        Gone::Paused => broker.pause(),
    }
    let _ = Command::new("kill")
        .args(["-TERM", &d.id().to_string()])
        .status();
    // Not a timing bound: the daemon takes seconds (5 s for the commit's answer, 5 s to close);
    // this only keeps a hang from hanging the suite.
    let hang = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(s) = d.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < hang,
            "the daemon was still running 180 s after SIGTERM with its broker gone"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = std::fs::read_to_string(dir.path().join("alone.log")).unwrap();
    assert!(status.success(), "exit {status}:\n{log}");
    assert_eq!(
        probe.committed(),
        total,
        "the tables hold every message read"
    );
    assert!(
        log.contains("final offset commit to Kafka failed; Iceberg holds the offsets"),
        "{log}"
    );
    if matches!(gone, Gone::Paused) {
        assert!(log.contains("no answer to the offset commit"), "{log}");
    }
    let down = log.matches("AllBrokersDown").count();
    assert!(
        down <= 10,
        "{down} lines say the broker is down (one per kind of error per 10 s expected):\n{log}"
    );
    println!("stopped with the broker gone; {down} lines said so");
}
