//! In-process pipeline benchmark: events already in memory, no Kafka, one thread.
//!
//! Prints a report with the cost of each stage, cumulatively:
//!   decode+validate → + window/intern/touchpoints → + the three plugins (the headline figure)
//!   → + Arrow table buffers; the cost of a shadow (a second attribution build beside the live
//!   one, issue 18); plus each plugin alone on pre-built batches beside a native-Rust
//!   baseline doing the same counting (the price of the WASM boundary), and the Iceberg sink
//!   (Parquet encode + SQLite-catalog commit).
//!
//!   cargo bench -p admetrics --bench pipeline            # 1M events
//!   ADMETRICS_BENCH_EVENTS=2000000 cargo bench -p admetrics --bench pipeline

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

/// `n` generated events spread over `span_ms` of event time ending now.
fn generate(n: usize) -> Vec<Vec<u8>> {
    let mut g = EventGen::new(LoadgenArgs {
        campaigns: 100,
        users: 100_000,
        ..Default::default()
    });
    let now = chrono::Utc::now().timestamp_millis();
    let span_ms = 30 * 60_000;
    let start = now - span_ms;
    (0..n)
        .map(|i| {
            g.next(start + (i as i64 * span_ms / n as i64))
                .1
                .into_bytes()
        })
        .collect()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
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
) -> (Duration, Processor) {
    run_processor_with(payloads, cfg, plugins, tables, &[])
}

fn run_processor_with(
    payloads: &[Vec<u8>],
    cfg: &Config,
    plugins: bool,
    tables: bool,
    shadows: &[PathBuf],
) -> (Duration, Processor) {
    let rt = PluginRuntime::new(&cfg.plugins).unwrap();
    let loaded = if plugins {
        plugin_paths().iter().map(|p| rt.load(p).unwrap()).collect()
    } else {
        vec![]
    };
    let mut p = Processor::new(cfg, loaded, Arc::new(Status::default()));
    p.add_shadows(shadows.iter().map(|s| rt.load(s).unwrap()).collect());
    p.build_tables = tables;
    let batch = cfg.kafka.batch_size;
    let t = Instant::now();
    let mut last_tick = Instant::now();
    for (i, chunk) in payloads.chunks(batch).enumerate() {
        let clock = Clock::now();
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
        // The daemon ticks once per commit interval; do the same in (benchmark) wall time.
        if last_tick.elapsed() >= cfg.commit_interval() || p.buffered() >= cfg.commit.max_rows {
            let _ = p.tick(&Clock::now());
            last_tick = Instant::now();
        }
    }
    let _ = p.tick(&Clock::now());
    (t.elapsed(), p)
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
                plugin::Touchpoint {
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
    println!("admetrics in-process benchmark: {n} events, one thread");
    attribution_state_at_a_million_users();
    let t = Instant::now();
    let payloads = generate(n);
    let bytes: usize = payloads.iter().map(Vec::len).sum();
    println!(
        "  generated in {:.2?}, mean message {} B",
        t.elapsed(),
        bytes / n
    );

    // 1. decode + validate only
    let limits = config(false).validation;
    let now = chrono::Utc::now().timestamp_millis();
    let t = Instant::now();
    let mut ok = 0usize;
    for p in &payloads {
        ok += event::decode(p, now, &limits).is_ok() as usize;
    }
    let d_decode = t.elapsed();
    assert_eq!(ok, n, "every generated event is valid");

    // 2..4: the processor, stage by stage
    let (d_window, _) = run_processor(&payloads, &config(false), false, false);
    let (d_plugins, proc_plugins) = run_processor(&payloads, &config(true), true, false);
    let (d_tables, _) = run_processor(&payloads, &config(true), true, true);
    // The shadow's cost is a difference of two runs: each side is the best of 3, interleaved,
    // so a busy moment of the machine does not land on one side only.
    let (mut d_live, mut d_shadow, mut proc_shadow) = (d_plugins, Duration::MAX, None);
    for _ in 0..3 {
        d_live = d_live.min(run_processor(&payloads, &config(true), true, false).0);
        let (d, p) = run_processor_with(&payloads, &config(true), true, false, &[shadow_path()]);
        if d < d_shadow {
            (d_shadow, proc_shadow) = (d, Some(p));
        }
    }
    let proc_shadow = proc_shadow.expect("ran 3 times");
    let (tp_users, tp_bytes) = (
        proc_plugins.touchpoint_users(),
        proc_plugins.touchpoint_bytes(),
    );

    println!();
    println!("  stage (cumulative)                          events/s      ns/event");
    let line = |name: &str, d: Duration| {
        println!(
            "  {name:<42} {:>10.0} {:>12.0}",
            rate(n, d),
            d.as_nanos() as f64 / n as f64
        )
    };
    line("decode + validate", d_decode);
    line("+ window, intern, touchpoints", d_window);
    line("+ ctr, cvr, attribution plugins  [target]", d_plugins);
    line("+ Arrow table buffers", d_tables);
    println!();
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
    swap_stall(&payloads);

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
