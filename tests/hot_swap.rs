//! Hot swap and fault containment in the running daemon, on a real broker.
//!
//! * Faulty plugins (trap, panic, infinite loop, memory bomb, malformed output) loaded beside the
//!   real ones: each is quarantined after repeated failures, ingestion and the other plugins never
//!   stop, and every event is committed exactly once with correct CTR/CVR.
//! * `ctr` swapped between two builds six times (and a broken file dropped in once) while the load
//!   generator runs: every event lands exactly once and every window's rows come from exactly one
//!   build.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use admetrics::config::Config;
use admetrics::loadgen::{LoadgenArgs, LoadgenStats};
use admetrics::status::Status;
use support::*;

const TOPIC: &str = "campaign-events";
const WINDOW_SECS: u64 = 1;

fn config(dir: &Path, bootstrap: &str, plugin_dir: &Path) -> Config {
    let text = format!(
        r#"
[kafka]
brokers = "{bootstrap}"
topic = "{TOPIC}"
group_id = "swap-test"
[window]
size_secs = {WINDOW_SECS}
out_of_orderness_ms = 500
idle_timeout_ms = 1000
[plugins]
dir = "{plugins}"
watch_interval_ms = 100
call_deadline_ms = 200
max_memory_bytes = 33554432
quarantine_after = 3
[iceberg]
catalog_uri = "sqlite:{d}/catalog.db"
warehouse = "{d}/warehouse"
[commit]
interval_ms = 200
"#,
        plugins = plugin_dir.display(),
        d = dir.display()
    );
    let path = dir.join("admetrics.toml");
    std::fs::write(&path, text).unwrap();
    Config::load(&path).unwrap()
}

struct Daemon {
    status: Arc<Status>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<std::thread::JoinHandle<anyhow::Result<admetrics::pipeline::RunSummary>>>,
}

impl Daemon {
    fn start(cfg: Config) -> Daemon {
        init_logs();
        let status = Arc::new(Status::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = {
            let status = status.clone();
            std::thread::spawn(move || {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(admetrics::pipeline::run(cfg, status, async move {
                        let _ = rx.await;
                    }))
            })
        };
        Daemon {
            status,
            stop: Some(tx),
            handle: Some(handle),
        }
    }

    fn committed(&self) -> i64 {
        self.status.committed_offsets.lock().unwrap().values().sum()
    }

    fn alive(&self) -> bool {
        !self.handle.as_ref().unwrap().is_finished()
    }

    fn stop(mut self) -> admetrics::pipeline::RunSummary {
        self.stop.take().unwrap().send(()).unwrap();
        self.handle
            .take()
            .unwrap()
            .join()
            .unwrap()
            .expect("daemon run")
    }
}

/// Produces `total` events at `rate`/s in a background thread; returns (thread, stats).
fn load(
    bootstrap: &str,
    rate: u64,
    total: u64,
) -> (std::thread::JoinHandle<u64>, Arc<LoadgenStats>) {
    let stats = Arc::new(LoadgenStats::default());
    let s = stats.clone();
    let bootstrap = bootstrap.to_string();
    let h = std::thread::spawn(move || {
        let args = LoadgenArgs {
            rate,
            total: Some(total),
            campaigns: 8,
            users: 2_000,
            disorder_ms: 100,
            ctr: 0.2,
            cvr: 0.3,
            ..Default::default()
        };
        admetrics::loadgen::produce(&bootstrap, TOPIC, &args, &AtomicBool::new(false), &s)
            .expect("all events delivered")
    });
    (h, stats)
}

/// A broker with the topic, a temp dir and a plugin directory holding `plugins` (file stems).
fn setup(plugins: &[&str]) -> (Broker, tempfile::TempDir, PathBuf) {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 2);
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir(&plugin_dir).unwrap();
    for p in plugins {
        install_plugin(&wasm(p), &plugin_dir, &format!("{p}.wasm"));
    }
    (broker, dir, plugin_dir)
}

fn verify(dir: &Path, events: i64, min_ctr_builds: u32) {
    let out = run_python(
        "verify_tables.py",
        &[
            format!("--catalog={}", dir.join("catalog.db").display()),
            format!("--warehouse={}", dir.join("warehouse").display()),
            format!("--expect-events={events}"),
            format!("--window-secs={WINDOW_SECS}"),
            format!("--min-ctr-builds={min_ctr_builds}"),
        ],
    );
    println!("{out}");
}

#[test]
fn faulty_plugins_are_quarantined_while_events_and_other_plugins_keep_flowing() {
    let (broker, dir, plugin_dir) = setup(&[
        "ctr",
        "cvr",
        "attribution",
        "fixture_trap",
        "fixture_panic",
        "fixture_spin",
        "fixture_membomb",
        "fixture_malformed",
    ]);
    let daemon = Daemon::start(config(dir.path(), &broker.bootstrap, &plugin_dir));
    let (producer, stats) = load(&broker.bootstrap, 5_000, 20_000);
    let delivered = producer.join().unwrap();
    assert_eq!(delivered, 20_000);
    wait_for("all events committed", Duration::from_secs(60), || {
        assert!(daemon.alive(), "the daemon must survive faulty plugins");
        daemon.committed() >= 20_000
    });
    std::thread::sleep(Duration::from_secs(2)); // idle partitions release the watermark: windows close
    let status = daemon.status.clone();
    let summary = daemon.stop();
    assert_eq!(
        summary.committed_offsets.values().sum::<i64>(),
        stats.delivered.load(Relaxed) as i64
    );
    assert_eq!(
        status.plugins_quarantined.get(),
        5,
        "each of the five faulty plugins quarantined"
    );
    assert!(
        status.plugin_errors.load(Relaxed) >= 15,
        "every failure recorded"
    );
    assert_eq!(status.plugin_rollbacks.get(), 0, "nothing to roll back to");
    verify(dir.path(), 20_000, 1);
}

#[test]
fn ctr_swapped_six_times_under_load_loses_nothing_and_never_mixes_builds() {
    let (broker, dir, plugin_dir) = setup(&["ctr", "cvr", "attribution"]);
    let (v1, v2) = (wasm("ctr"), wasm("fixture_ctr_v2"));
    let daemon = Daemon::start(config(dir.path(), &broker.bootstrap, &plugin_dir));
    wait_for("daemon assigned", Duration::from_secs(30), || {
        daemon.status.commits.get() > 2
    });

    let total = 40_000;
    let (producer, stats) = load(&broker.bootstrap, 4_000, total);
    // Each drop is waited for (the watcher installed or rejected it) before the next, so no
    // build is overwritten before the daemon saw it however slow the machine is (CI14 failed
    // when a fixed 400 ms pause was not enough to notice the broken build).
    let swap_to = |build: &Path, running: &mut PathBuf, what: &str| {
        let before = daemon.status.plugin_swaps.get();
        install_plugin(build, &plugin_dir, "ctr.wasm");
        if build != running.as_path() {
            wait_for(what, Duration::from_secs(60), || {
                assert!(daemon.alive());
                daemon.status.plugin_swaps.get() > before
            });
        }
        *running = build.to_path_buf();
    };
    let mut running = v1.clone();
    for i in 0..6 {
        std::thread::sleep(Duration::from_millis(1_200));
        swap_to(
            if i % 2 == 0 { &v2 } else { &v1 },
            &mut running,
            "a swap installed",
        );
        if i == 2 {
            // A broken build dropped over ctr: rejected, the running version keeps serving.
            let rejected = daemon.status.plugin_rejections.load(Relaxed);
            install_plugin(&wasm("fixture_wrongworld"), &plugin_dir, "ctr.wasm");
            wait_for("the broken build rejected", Duration::from_secs(60), || {
                assert!(daemon.alive());
                daemon.status.plugin_rejections.load(Relaxed) > rejected
            });
            swap_to(&v1, &mut running, "v1 installed over the broken build");
        }
        assert!(daemon.alive());
    }
    assert_eq!(producer.join().unwrap(), total);
    // Removing a plugin file is noticed too (a new set without it is installed). How fast is
    // not asserted here: a test must not depend on timing (the README gives the watcher's poll).
    let swaps = daemon.status.plugin_swaps.get();
    std::fs::remove_file(plugin_dir.join("attribution.wasm")).unwrap();
    wait_for("removal noticed", Duration::from_secs(60), || {
        daemon.status.plugin_swaps.get() > swaps
    });
    wait_for("all events committed", Duration::from_secs(60), || {
        daemon.committed() >= total as i64
    });
    std::thread::sleep(Duration::from_secs(2));
    let status = daemon.status.clone();
    let summary = daemon.stop();
    assert_eq!(
        summary.committed_offsets.values().sum::<i64>(),
        stats.delivered.load(Relaxed) as i64
    );
    assert!(
        status.plugin_swaps.get() >= 6,
        "swaps installed: {}",
        status.plugin_swaps.get()
    );
    assert_eq!(
        status.plugin_rejections.load(Relaxed),
        1,
        "the broken build was rejected once"
    );
    assert_eq!(status.plugin_errors.load(Relaxed), 0);
    verify(dir.path(), total as i64, 2);
}

#[test]
fn a_swapped_in_version_that_keeps_failing_is_rolled_back() {
    let (broker, dir, plugin_dir) = setup(&["ctr", "cvr"]);
    let daemon = Daemon::start(config(dir.path(), &broker.bootstrap, &plugin_dir));
    wait_for("daemon assigned", Duration::from_secs(30), || {
        daemon.status.commits.get() > 2
    });
    let (producer, _) = load(&broker.bootstrap, 4_000, 24_000);
    std::thread::sleep(Duration::from_millis(1_500));
    install_plugin(&wasm("fixture_ctr_bad"), &plugin_dir, "ctr.wasm");
    wait_for("rollback", Duration::from_secs(30), || {
        daemon.status.plugin_rollbacks.get() == 1
    });
    assert_eq!(producer.join().unwrap(), 24_000);
    wait_for("all events committed", Duration::from_secs(60), || {
        daemon.committed() >= 24_000
    });
    std::thread::sleep(Duration::from_secs(2));
    let status = daemon.status.clone();
    daemon.stop();
    assert_eq!(status.plugins_quarantined.get(), 1);
    assert!(
        status.plugin_errors.load(Relaxed) >= 3,
        "at least three failures before the rollback"
    );
    assert_eq!(status.plugin_rollbacks.get(), 1);
    // The windows the bad build opened have no ctr rows (withheld, not wrong); every other
    // window's ctr comes from one healthy build and matches the events exactly.
    let out = run_python(
        "verify_tables.py",
        &[
            format!("--catalog={}", dir.path().join("catalog.db").display()),
            format!("--warehouse={}", dir.path().join("warehouse").display()),
            "--expect-events=24000".into(),
            format!("--window-secs={WINDOW_SECS}"),
            "--allow-missing-ctr-windows=6".into(),
        ],
    );
    println!("{out}");
}

#[test]
fn config_reload_applies_safe_changes_and_refuses_unsafe_ones() {
    let (broker, dir, plugin_dir) = setup(&["ctr"]);
    let cfg = config(dir.path(), &broker.bootstrap, &plugin_dir);
    let path = cfg.source_path.clone().unwrap();
    let daemon = Daemon::start(cfg);
    wait_for("daemon assigned", Duration::from_secs(30), || {
        daemon.status.commits.get() > 2
    });
    let (producer, _) = load(&broker.bootstrap, 2_000, 6_000);
    // Add a plugin through plugins.paths, change the lookback (safe) and the window size (unsafe).
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            "[plugins]\n",
            &format!(
                "[plugins]\npaths = [{:?}]\n",
                wasm("cvr").display().to_string()
            ),
        )
        .replace(&format!("size_secs = {WINDOW_SECS}"), "size_secs = 5")
        + "[attribution]\nlookback_secs = 3600\n";
    std::fs::write(&path, text).unwrap();
    wait_for("reload", Duration::from_secs(10), || {
        daemon.status.config_reloads.load(Relaxed) == 1
    });
    wait_for("cvr installed", Duration::from_secs(10), || {
        daemon.status.plugin_swaps.get() >= 1
    });
    assert_eq!(
        daemon.status.config_refusals.load(Relaxed),
        1,
        "window.size_secs refused"
    );
    wait_for("lookback applied", Duration::from_secs(5), || {
        daemon.status.lookback_secs.load(Relaxed) == 3600
    });
    // An invalid file is refused whole; the running configuration stays.
    std::fs::write(&path, "[window]\nsize_sec = 1\n").unwrap();
    wait_for("refusal", Duration::from_secs(10), || {
        daemon.status.config_refusals.load(Relaxed) == 2
    });
    assert_eq!(producer.join().unwrap(), 6_000);
    wait_for("all events committed", Duration::from_secs(60), || {
        daemon.committed() >= 6_000
    });
    std::thread::sleep(Duration::from_secs(2));
    daemon.stop();
    // The window size did not change (1 s windows throughout) and cvr rows appear after the reload.
    let out = run_python(
        "verify_tables.py",
        &[
            format!("--catalog={}", dir.path().join("catalog.db").display()),
            format!("--warehouse={}", dir.path().join("warehouse").display()),
            "--expect-events=6000".into(),
            format!("--window-secs={WINDOW_SECS}"),
            "--allow-missing-cvr-windows=10".into(),
            "--require-plugin=cvr".into(),
        ],
    );
    println!("{out}");
}
