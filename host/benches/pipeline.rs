//! In-process pipeline benchmark: events already in memory, no Kafka, one thread.
//!
//! Prints a report with the cost of each stage, cumulatively, in wall time and in the process's
//! CPU time (on a shared machine the wall time includes waiting for a core):
//!   decode+validate → + window/intern/touchpoints → + the three plugins (the headline figure)
//!   → + Arrow table buffers; the cost of a shadow (a second attribution build beside the live
//!   one, issue 18); plus each plugin alone on pre-built batches beside a native-Rust
//!   baseline doing the same counting (the price of the WASM boundary), and the Iceberg sink
//!   (Parquet encode + SQLite-catalog commit). Last, the 0.2.0 plugin sets (`plugin_sets`):
//!   the three beside reach, a country × device breakdown and two more attribution models, with
//!   and without view-through, on events keyed by user: events/s, events per CPU-second, each
//!   plugin's call time and the state per distinct user.
//!
//!   cargo bench -p admetrics --bench pipeline            # 1M events, 100K users
//!   ADMETRICS_BENCH_EVENTS=2000000 cargo bench -p admetrics --bench pipeline
//!   ADMETRICS_BENCH_ONLY=sets ADMETRICS_BENCH_ROUNDS=5 ADMETRICS_BENCH_USERS=1000000 \
//!     cargo bench -p admetrics --bench pipeline          # only the plugin sets

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use admetrics::config::Config;
use admetrics::event;
use admetrics::loadgen::{EventGen, LoadgenArgs};
use admetrics::pipeline::{Clock, Processor};
use admetrics::plugin::{self, PluginRuntime, kind};
use admetrics::sink::IcebergSink;
use admetrics::source::RawMessage;
use admetrics::status::Status;

fn plugin_paths() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release");
    ["ctr", "cvr", "attribution"]
        .iter()
        .map(|p| dir.join(format!("{p}.wasm")))
        .collect()
}

fn config(plugins: bool) -> Config {
    let mut cfg = Config::default();
    if plugins {
        cfg.plugins.paths = plugin_paths();
    }
    cfg
}

/// The generated input: `n` events spread over 30 minutes of event time ending now.
struct Input {
    payloads: Vec<Vec<u8>>,
    /// Each event's partition when producers key events by user id (as the daemon expects:
    /// a user's events in one partition), 4 partitions. The stage runs above spread events by
    /// offset instead (`offset % 4`), as they always have.
    keyed: Vec<i32>,
    /// Distinct user ids in the input.
    users: usize,
}

/// Distinct users the generator draws from: `ADMETRICS_BENCH_USERS`, default 100 000.
fn bench_users() -> u64 {
    std::env::var("ADMETRICS_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000)
}

fn generate(n: usize) -> Input {
    let mut g = EventGen::new(LoadgenArgs {
        campaigns: 100,
        users: bench_users(),
        ..Default::default()
    });
    let now = chrono::Utc::now().timestamp_millis();
    let span_ms = 30 * 60_000;
    let start = now - span_ms;
    let mut users = std::collections::HashSet::new();
    let (mut payloads, mut keyed) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n {
        let (key, payload) = g.next(start + (i as i64 * span_ms / n as i64));
        let h = admetrics::dedup::hash_id(&key);
        keyed.push((h % 4) as i32);
        users.insert(h);
        payloads.push(payload.into_bytes());
    }
    Input {
        payloads,
        keyed,
        users: users.len(),
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// CPU time this process's live threads have run so far (the scheduler's nanosecond count in
/// `/proc/self/task/*/schedstat`: the bench thread, and the plugin runtimes' `wasm-epoch`
/// tickers during a run). On a shared machine wall time includes waiting for a core; CPU time
/// does not.
fn cpu_time() -> Duration {
    let ns: u64 = std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .flatten()
                .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
                .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

/// Wall and CPU time of one timed run.
#[derive(Clone, Copy)]
struct Took {
    wall: Duration,
    cpu: Duration,
}

impl Took {
    fn since(wall: Instant, cpu: Duration) -> Self {
        Took {
            wall: wall.elapsed(),
            cpu: cpu_time().saturating_sub(cpu),
        }
    }
}

/// The shadow the bench loads: the first-click attribution build (plugin "attribution"), as
/// heavy per event as the live one.
fn shadow_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release/fixture_attribution_first_click.wasm")
}

fn run_processor(
    payloads: &[Vec<u8>],
    cfg: &Config,
    plugins: bool,
    tables: bool,
) -> (Took, Processor) {
    run_processor_with(payloads, cfg, plugins, tables, &[])
}

fn run_processor_with(
    payloads: &[Vec<u8>],
    cfg: &Config,
    plugins: bool,
    tables: bool,
    shadows: &[PathBuf],
) -> (Took, Processor) {
    let paths = if plugins { plugin_paths() } else { vec![] };
    let status = Arc::new(Status::default());
    run(
        payloads,
        |offset| (offset % 4) as i32,
        cfg,
        &paths,
        tables,
        shadows,
        status,
    )
}

/// Runs `payloads` through a processor with the plugins at `paths` (configured by `cfg`), event
/// `i` at offset `i` in partition `partition(i)`, in poll-sized batches, ticking once per commit
/// interval of wall time as the daemon does. `status` is the processor's.
#[allow(clippy::too_many_arguments)]
fn run(
    payloads: &[Vec<u8>],
    partition: impl Fn(usize) -> i32,
    cfg: &Config,
    paths: &[PathBuf],
    tables: bool,
    shadows: &[PathBuf],
    status: Arc<Status>,
) -> (Took, Processor) {
    let rt = PluginRuntime::new(&cfg.plugins).unwrap();
    let loaded = paths.iter().map(|p| rt.load(p).unwrap()).collect();
    let mut p = Processor::new(cfg, loaded, status);
    p.add_shadows(shadows.iter().map(|s| rt.load(s).unwrap()).collect());
    p.build_tables = tables;
    let batch = cfg.kafka.batch_size;
    let (t, cpu) = (Instant::now(), cpu_time());
    let mut last_tick = Instant::now();
    for (i, chunk) in payloads.chunks(batch).enumerate() {
        let clock = Clock::now();
        for (j, payload) in chunk.iter().enumerate() {
            let offset = i * batch + j;
            p.process(
                RawMessage {
                    partition: partition(offset),
                    offset: offset as i64,
                    payload: Some(payload),
                    timestamp_ms: None,
                },
                &clock,
            );
        }
        p.flush_plugins();
        // The daemon ticks once per commit interval; do the same in (benchmark) wall time.
        if last_tick.elapsed() >= cfg.commit_interval() || p.buffered() >= cfg.commit.max_rows {
            let _ = p.tick(&Clock::now());
            last_tick = Instant::now();
        }
    }
    let _ = p.tick(&Clock::now());
    (Took::since(t, cpu), p)
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0)
        * 4096
}

/// Attribution state for 1M users with recent clicks (1.3 clicks per user), measured as the
/// process's RSS growth (run first, before anything else has been allocated and freed).
fn attribution_state_at_a_million_users() {
    let before = rss_bytes();
    let mut tp = admetrics::window::Touchpoints::new(8, 7 * 86_400_000);
    let mut rng = fastrand::Rng::with_seed(3);
    let mut id = String::new();
    for u in 0..1_000_000u32 {
        let clicks = if u % 10 < 8 { 1 } else { 1 + rng.usize(1..4) };
        for c in 0..clicks {
            use std::fmt::Write;
            id.clear();
            let _ = write!(id, "user-{u:09}");
            tp.record_click(
                &id,
                admetrics::window::Touchpoint {
                    time_ms: c as i64 * 1000,
                    campaign: rng.u32(0..100),
                    ad: rng.u32(0..500),
                },
            );
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    println!(
        "  attribution state, 1M users with recent clicks: {:.0} MB RSS growth ({} B/user; estimate {} B/user) [target ≤ 128 MB]",
        grown as f64 / (1 << 20) as f64,
        grown / tp.users(),
        tp.bytes_estimate() / tp.users()
    );
}

fn main() {
    let n: usize = std::env::var("ADMETRICS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    for p in plugin_paths().into_iter().chain([shadow_path()]) {
        assert!(
            p.is_file(),
            "{} missing: run scripts/build-plugins.sh",
            p.display()
        );
    }
    let sets_only = std::env::var("ADMETRICS_BENCH_ONLY").is_ok_and(|v| v == "sets");
    println!("admetrics in-process benchmark: {n} events, one thread");
    if !sets_only {
        attribution_state_at_a_million_users();
    }
    let t = Instant::now();
    let input = generate(n);
    let payloads = &input.payloads;
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    println!(
        "  generated in {:.2?}, mean message {} B",
        t.elapsed(),
        bytes / n
    );
    if sets_only {
        plugin_sets(&input);
        return;
    }

    // 1. decode + validate only
    let limits = config(false).validation;
    let now = chrono::Utc::now().timestamp_millis();
    let (t, cpu) = (Instant::now(), cpu_time());
    let mut ok = 0usize;
    for p in payloads {
        ok += event::decode(p, now, &limits).is_ok() as usize;
    }
    let d_decode = Took::since(t, cpu);
    assert_eq!(ok, n, "every generated event is valid");

    // 2..4: the processor, stage by stage
    let (d_window, _) = run_processor(payloads, &config(false), false, false);
    let (d_plugins, proc_plugins) = run_processor(payloads, &config(true), true, false);
    let (d_tables, _) = run_processor(payloads, &config(true), true, true);
    // The shadow's cost is a difference of two runs: each side is the best of 3, interleaved,
    // so a busy moment of the machine does not land on one side only.
    let (mut d_live, mut d_shadow, mut proc_shadow) = (d_plugins.wall, Duration::MAX, None);
    for _ in 0..3 {
        d_live = d_live.min(run_processor(payloads, &config(true), true, false).0.wall);
        let (d, p) = run_processor_with(payloads, &config(true), true, false, &[shadow_path()]);
        if d.wall < d_shadow {
            (d_shadow, proc_shadow) = (d.wall, Some(p));
        }
    }
    let proc_shadow = proc_shadow.expect("ran 3 times");
    let (tp_users, tp_bytes) = (
        proc_plugins.touchpoint_users(),
        proc_plugins.touchpoint_bytes(),
    );

    println!();
    println!(
        "  stage (cumulative)                          events/s      ns/event   events/CPU-s  CPU ns/event"
    );
    let took = |name: &str, d: Took| {
        println!(
            "  {name:<42} {:>10.0} {:>12.0} {:>14.0} {:>13.0}",
            rate(n, d.wall),
            d.wall.as_nanos() as f64 / n as f64,
            rate(n, d.cpu),
            d.cpu.as_nanos() as f64 / n as f64
        )
    };
    took("decode + validate", d_decode);
    took("+ window, intern, touchpoints", d_window);
    took("+ ctr, cvr, attribution plugins  [target]", d_plugins);
    took("+ Arrow table buffers", d_tables);
    println!();
    let line = |name: &str, d: Duration| {
        println!(
            "  {name:<42} {:>10.0} {:>12.0}",
            rate(n, d),
            d.as_nanos() as f64 / n as f64
        )
    };
    line("ctr, cvr, attribution (best of 4)", d_live);
    line("... + a shadow of attribution (best of 3)", d_shadow);
    let busy = |p: &Processor, shadow: bool| {
        p.slots()
            .filter(|s| s.plugin.info.name == "attribution" && s.shadow == shadow)
            .map(|s| s.busy.as_nanos() as f64 / n as f64)
            .sum::<f64>()
    };
    println!(
        "  shadow cost: the shadow's own calls {:.0} ns/event beside the live attribution's {:.0} \
         ns/event; whole runs with and without it differ by {:+.0} ns/event",
        busy(&proc_shadow, true),
        busy(&proc_shadow, false),
        (d_shadow.as_nanos() as f64 - d_live.as_nanos() as f64) / n as f64,
    );
    println!();
    println!("  plugin time inside the full run:");
    for s in proc_plugins.slots() {
        println!(
            "    {:<12} {:>8} calls  {:>8.1} ms  ({:.0} ns/event)",
            s.plugin.info.name,
            s.calls,
            s.busy.as_secs_f64() * 1e3,
            s.busy.as_nanos() as f64 / n as f64
        );
    }
    println!(
        "  attribution state: {} users with clicks, ~{} bytes/user",
        tp_users,
        tp_bytes / tp_users.max(1)
    );

    // 5. each plugin alone on pre-built batches, vs native Rust doing the same counting
    let mut rng = fastrand::Rng::with_seed(1);
    let mut batch = plugin::new_batch();
    for i in 0..4096 {
        let k = match i % 100 {
            0 => kind::CONVERSION,
            1..=9 => kind::CLICK,
            _ => kind::IMPRESSION,
        };
        let revenue = if k == kind::CONVERSION { 12_340_000 } else { 0 };
        plugin::push_event(
            &mut batch,
            k,
            now,
            rng.u32(0..100),
            rng.u32(0..500),
            revenue,
            Some(&[]),
        );
    }
    let rt = PluginRuntime::new(&config(true).plugins).unwrap();
    let calls = 500;
    println!();
    println!(
        "  batched plugin calls (4096 events/call, {calls} calls, accumulator round trip included):"
    );
    for path in plugin_paths() {
        let mut p = rt.load(&path).unwrap();
        let mut acc = Vec::new();
        let t = Instant::now();
        for _ in 0..calls {
            acc = p.accumulate(&acc, &batch).unwrap();
        }
        let d = t.elapsed();
        println!(
            "    {:<12} {:>12.0} events/s",
            p.info.name,
            rate(calls * batch.kinds.len(), d)
        );
    }
    let t = Instant::now();
    let mut counts = vec![[0i64; 2]; 100];
    for _ in 0..calls {
        for (k, c) in batch.kinds.iter().zip(&batch.campaigns) {
            match *k {
                kind::IMPRESSION => counts[*c as usize][0] += 1,
                kind::CLICK => counts[*c as usize][1] += 1,
                _ => {}
            }
        }
        std::hint::black_box(&mut counts);
    }
    println!(
        "    {:<12} {:>12.0} events/s  (native Rust, same counting as ctr)",
        "baseline",
        rate(calls * batch.kinds.len(), t.elapsed())
    );

    // 6. hot swap: the event path's stall while a new ctr build is installed
    swap_stall(payloads);

    // 7. Iceberg sink: Parquet encode + commit of the full run's tables
    let dir = tempfile_dir();
    let mut cfg = config(true);
    cfg.iceberg.catalog_uri = format!("sqlite:{}/catalog.db", dir.display());
    cfg.iceberg.warehouse = dir.join("warehouse");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let loaded: Vec<_> = plugin_paths()
        .iter()
        .map(|p| PluginRuntime::new(&cfg.plugins).unwrap().load(p).unwrap())
        .collect();
    let mut p = Processor::new(&cfg, loaded, Arc::new(Status::default()));
    let clock = Clock::now();
    for (i, payload) in payloads.iter().enumerate() {
        p.process(
            RawMessage {
                partition: 0,
                offset: i as i64,
                payload: Some(payload),
                timestamp_ms: None,
            },
            &clock,
        );
    }
    let t = Instant::now();
    let batch = p.tick(&Clock::now());
    let d_tick = t.elapsed();
    let report = rt.block_on(async {
        let mut sink = IcebergSink::open(
            &cfg.iceberg,
            "bench",
            "bench-writer",
            cfg.commit.target_file_bytes,
        )
        .await
        .unwrap();
        sink.commit(batch).await.unwrap()
    });
    println!();
    println!(
        "  Iceberg sink: {} events + {} metric rows → {} files, Parquet write + commit {:.1} ms ({:.0} events/s); building the batch {:.1} ms",
        report.events,
        report.metric_rows,
        report.files,
        report.duration.as_secs_f64() * 1e3,
        rate(report.events, report.duration),
        d_tick.as_secs_f64() * 1e3
    );
    let _ = std::fs::remove_dir_all(&dir);

    // 8. the 0.2.0 contract's plugins: reach, a breakdown, more attribution models, views
    plugin_sets(&input);
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("admetrics-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Processes the events in poll-sized batches and installs a new ctr build (compiled beforehand,
/// off the timed path, as the watcher does) every 20th batch; reports the install time and the
/// batch times with and without a swap.
fn swap_stall(payloads: &[Vec<u8>]) {
    use admetrics::pipeline::processor::PluginSpec;
    let cfg = config(true);
    let rt = PluginRuntime::new(&cfg.plugins).unwrap();
    let loaded = plugin_paths().iter().map(|p| rt.load(p).unwrap()).collect();
    let mut p = Processor::new(&cfg, loaded, Arc::new(Status::default()));
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release");
    let builds = [dir.join("fixture_ctr_v2.wasm"), dir.join("ctr.wasm")];
    let batch = 4096;
    let swaps = payloads.len() / batch / 20;
    let mut ready: Vec<_> = (0..swaps)
        .map(|i| rt.load(&builds[i % 2]).unwrap())
        .collect();
    ready.reverse();
    let (cvr, attribution) = {
        let set = p.active_set();
        (set[1].2.clone(), set[2].2.clone())
    };
    let (mut installs, mut with_swap, mut without) = (Vec::new(), Vec::new(), Vec::new());
    for (i, chunk) in payloads.chunks(batch).enumerate() {
        let clock = Clock::now();
        let t = Instant::now();
        let swapping = i % 20 == 19 && !ready.is_empty();
        if swapping {
            let t = Instant::now();
            p.install(vec![
                PluginSpec::New {
                    plugin: ready.pop().unwrap(),
                    shadow: false,
                },
                PluginSpec::Keep {
                    sha256: cvr.clone(),
                    shadow: false,
                },
                PluginSpec::Keep {
                    sha256: attribution.clone(),
                    shadow: false,
                },
            ]);
            installs.push(t.elapsed());
        }
        for (j, payload) in chunk.iter().enumerate() {
            let offset = (i * batch + j) as i64;
            p.process(
                RawMessage {
                    partition: (offset % 4) as i32,
                    offset,
                    payload: Some(payload),
                    timestamp_ms: None,
                },
                &clock,
            );
        }
        p.flush_plugins();
        if i % 50 == 49 {
            let _ = p.tick(&Clock::now());
        }
        if swapping {
            with_swap.push(t.elapsed())
        } else {
            without.push(t.elapsed())
        }
    }
    let q = |v: &mut Vec<Duration>, f: f64| {
        v.sort();
        v[((v.len() as f64 * f).ceil() as usize).clamp(1, v.len()) - 1].as_secs_f64() * 1e3
    };
    println!();
    println!(
        "  hot swap of ctr, {} installs during {} batches of {batch} events:",
        installs.len(),
        with_swap.len() + without.len()
    );
    println!(
        "    install on the event path: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms (target p99 ≤ 1 ms; compilation happens before, off the path)",
        q(&mut installs, 0.5),
        q(&mut installs, 0.99),
        q(&mut installs, 1.0)
    );
    println!(
        "    batch time: without a swap p50 {:.2} ms p99 {:.2} ms; with a swap p50 {:.2} ms p99 {:.2} ms",
        q(&mut without, 0.5),
        q(&mut without, 0.99),
        q(&mut with_swap, 0.5),
        q(&mut with_swap, 0.99)
    );
}

/// A plugin set for the 0.2.0 report: the builds to load (file stems in
/// `target/wasm32-wasip2/release`) and their `[plugins.config.NAME]` tables.
struct PluginSet {
    name: &'static str,
    files: &'static [&'static str],
    params: &'static [(&'static str, &'static str)],
}

/// The three shipped plugins, then the 0.2.0 additions beside them: ctr broken down by
/// country × device, reach (distinct users, HLL; its default day window), linear and time-decay
/// attribution; then the same with time decay crediting views too (the host remembers every
/// user's recent impressions while a plugin wants views).
/// The 0.2.0 sets' plugins: the three, reach and two more attribution models.
const SETS_0_2: &[&str] = &[
    "ctr",
    "cvr",
    "attribution",
    "reach",
    "attribution_linear",
    "attribution_time_decay",
];
const PLUGIN_SETS: [PluginSet; 3] = [
    PluginSet {
        name: "ctr, cvr, attribution",
        files: &["ctr", "cvr", "attribution"],
        params: &[],
    },
    PluginSet {
        name: "+ breakdown, reach, linear, time decay",
        files: SETS_0_2,
        params: &[("ctr", "dimensions = [\"country\", \"device\"]")],
    },
    PluginSet {
        name: "... time decay with views (24 h)",
        files: SETS_0_2,
        params: &[
            ("ctr", "dimensions = [\"country\", \"device\"]"),
            ("attribution-time-decay", "view_lookback_secs = 86400"),
        ],
    },
];

impl PluginSet {
    fn config(&self) -> (Config, Vec<PathBuf>) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip2/release");
        let mut cfg = Config::default();
        cfg.plugins.paths = self
            .files
            .iter()
            .map(|f| dir.join(format!("{f}.wasm")))
            .collect();
        for (name, table) in self.params {
            cfg.plugins
                .config
                .insert(name.to_string(), table.parse().expect("a TOML table"));
        }
        let paths = cfg.plugins.paths.clone();
        (cfg, paths)
    }
}

/// One run of a plugin set: times, each plugin's call time, and the state left at its end.
struct SetRun {
    took: Took,
    /// (plugin, ns/event inside its calls)
    calls: Vec<(String, f64)>,
    /// The accumulators of the windows still open at the end, per plugin.
    accs: std::collections::BTreeMap<String, usize>,
    touchpoint_bytes: usize,
    touchpoint_users: usize,
    state_bytes: u64,
    open_windows: u64,
}

/// The 0.2.0 report: each plugin set of [`PLUGIN_SETS`] on the same events, keyed by user to 4
/// partitions as producers key them (so a user's clicks, views and conversions meet, and a
/// user is in one partition's reach sketches), `ADMETRICS_BENCH_ROUNDS` rounds (default 3)
/// with the sets interleaved; medians with the spread (min–max).
fn plugin_sets(input: &Input) {
    let rounds: usize = std::env::var("ADMETRICS_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
        .max(1);
    for set in &PLUGIN_SETS {
        for p in set.config().1 {
            assert!(
                p.is_file(),
                "{} missing: run scripts/build-plugins.sh",
                p.display()
            );
        }
    }
    let n = input.payloads.len();
    let mut runs: Vec<Vec<SetRun>> = PLUGIN_SETS.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (set, out) in PLUGIN_SETS.iter().zip(&mut runs) {
            let (cfg, paths) = set.config();
            let status = Arc::new(Status::default());
            {
                let (took, p) = run(
                    &input.payloads,
                    |i| input.keyed[i],
                    &cfg,
                    &paths,
                    false,
                    &[],
                    status.clone(),
                );
                out.push(SetRun {
                    took,
                    calls: p
                        .slots()
                        .map(|s| {
                            (
                                s.plugin.info.name.clone(),
                                s.busy.as_nanos() as f64 / n as f64,
                            )
                        })
                        .collect(),
                    accs: p.accumulator_bytes(),
                    touchpoint_bytes: p.touchpoint_bytes(),
                    touchpoint_users: p.touchpoint_users(),
                    state_bytes: status.state_bytes.get(),
                    open_windows: status.open_windows.get(),
                });
            }
        }
    }
    // median and (min, max) of a figure over the rounds
    let stats = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        (v[v.len() / 2], v[0], v[v.len() - 1])
    };
    let users = input.users;
    println!();
    println!(
        "  0.2.0 plugin sets: the same {n} events keyed by user to 4 partitions, {users} distinct \
         users; {rounds} rounds, sets interleaved; median [min–max]:"
    );
    println!(
        "    {:<40} {:>22} {:>22} {:>14}",
        "set", "events/s", "events per CPU-s", "CPU ns/event"
    );
    for (set, rs) in PLUGIN_SETS.iter().zip(&runs) {
        let (w, w0, w1) = stats(&mut rs.iter().map(|r| rate(n, r.took.wall)).collect());
        let (c, c0, c1) = stats(&mut rs.iter().map(|r| rate(n, r.took.cpu)).collect());
        let (ns, _, _) = stats(
            &mut rs
                .iter()
                .map(|r| r.took.cpu.as_nanos() as f64 / n as f64)
                .collect(),
        );
        println!(
            "    {:<40} {:>7.0}K [{:>4.0}–{:>4.0}K] {:>7.0}K [{:>4.0}–{:>4.0}K] {:>14.0}",
            set.name,
            w / 1e3,
            w0 / 1e3,
            w1 / 1e3,
            c / 1e3,
            c0 / 1e3,
            c1 / 1e3,
            ns
        );
    }
    println!("    plugin call time, ns/event (median; host = CPU ns/event − all calls):");
    for (set, rs) in PLUGIN_SETS.iter().zip(&runs) {
        let names: Vec<String> = rs[0].calls.iter().map(|(name, _)| name.clone()).collect();
        let mut parts = Vec::new();
        let mut total = 0.0;
        for (k, name) in names.iter().enumerate() {
            let (m, _, _) = stats(&mut rs.iter().map(|r| r.calls[k].1).collect());
            total += m;
            parts.push(format!("{name} {m:.0}"));
        }
        let (host, _, _) = stats(
            &mut rs
                .iter()
                .map(|r| {
                    r.took.cpu.as_nanos() as f64 / n as f64
                        - r.calls.iter().map(|(_, ns)| ns).sum::<f64>()
                })
                .collect(),
        );
        println!(
            "      {}: {} (calls {total:.0}, host {host:.0})",
            set.name,
            parts.join(", ")
        );
    }
    println!(
        "    state at the end of a run (the windows still open: the last minutes', reach's day; \
         plus the touchpoints), per distinct user:"
    );
    for (set, rs) in PLUGIN_SETS.iter().zip(&runs) {
        let r = rs.last().expect("at least one round");
        let accs: usize = r.accs.values().sum();
        let per = |b: usize| b as f64 / users.max(1) as f64;
        println!(
            "      {}: {:.1} B/user = accumulators {:.1} ({} B in {} open windows: {}) + touchpoints {:.1} \
             ({} B, {} users); status.state_bytes {} B",
            set.name,
            per(accs + r.touchpoint_bytes),
            per(accs),
            accs,
            r.open_windows,
            r.accs
                .iter()
                .map(|(name, b)| format!("{name} {b}"))
                .collect::<Vec<_>>()
                .join(", "),
            per(r.touchpoint_bytes),
            r.touchpoint_bytes,
            r.touchpoint_users,
            r.state_bytes,
        );
    }
}
