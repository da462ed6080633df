//! Restatement throughput: events read back from `campaign_events` (Parquet through iceberg-rust,
//! at a pinned snapshot) and recomputed by one plugin, per shipped plugin, with a printed report.
//!
//! The tables are filled first by the normal pipeline (`run --file` in process: decode,
//! validate, windows, the three plugins, Iceberg), then each plugin restates the whole span. The
//! events/s figure is events read ÷ the whole restatement (plugin compilation, the start commit,
//! the scan, the sort into the daemon's order, windows + touchpoints + plugin calls, the commits
//! of the restated rows); the split shows where the time goes.
//!
//!   cargo bench -p admetrics --bench restate                 # 1M events
//!   ADMETRICS_BENCH_EVENTS=2000000 cargo bench -p admetrics --bench restate

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use admetrics::config::{Config, SourceKind};
use admetrics::loadgen::LoadgenArgs;
use admetrics::restate::{self, Request};
use admetrics::status::Status;

fn plugin(name: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.is_file(),
        "{} missing: run scripts/build-plugins.sh",
        p.display()
    );
    p
}

fn main() -> anyhow::Result<()> {
    let n: u64 = std::env::var("ADMETRICS_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    let names = ["ctr", "cvr", "attribution"];
    let start_ms = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    let rate = 2_000; // events per second of event time: 1M events = 500 s, ~9 windows
    let load = LoadgenArgs {
        total: Some(n),
        rate,
        campaigns: 100,
        users: 100_000,
        ..Default::default()
    };
    let file = d.join("events.jsonl");
    let t = Instant::now();
    admetrics::loadgen::write_events(
        &mut std::io::BufWriter::new(std::fs::File::create(&file)?),
        &load,
        start_ms,
    )?;
    let generated = t.elapsed();

    let mut cfg = Config::default();
    cfg.plugins.paths = names.iter().map(|p| plugin(p)).collect();
    cfg.iceberg.catalog_uri = format!("sqlite:{}/catalog.db", d.display());
    cfg.iceberg.warehouse = d.join("warehouse");
    cfg.source.kind = SourceKind::File;
    cfg.source.path = Some(file.clone());
    cfg.validation.time_bounds = admetrics::event::TimeBounds::Off;
    cfg.http.listen = None;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let t = Instant::now();
    rt.block_on(admetrics::pipeline::run(
        cfg.clone(),
        Arc::new(Status::default()),
        futures::future::pending(),
    ))?;
    let filled = t.elapsed();

    let size_ms = cfg.window_size_ms();
    let end_ms = start_ms + (n as i64 * 1000 / rate as i64);
    let from_ms = start_ms.div_euclid(size_ms) * size_ms;
    let to_ms = (end_ms + 10_000).div_euclid(size_ms) * size_ms + size_ms;
    println!(
        "admetrics restate benchmark: {n} events ({:.1} min of event time, {} campaigns, {} users), 2 cores",
        (end_ms - start_ms) as f64 / 60_000.0,
        load.campaigns,
        load.users
    );
    println!(
        "  generated in {:.2?}; tables filled by the pipeline (run --file) in {:.2?} ({:.0} events/s)",
        generated,
        filled,
        n as f64 / filled.as_secs_f64()
    );
    println!(
        "  {:<12} {:>10} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8} {:>12}",
        "plugin", "events", "rows", "commits", "total s", "read s", "compute", "commit", "events/s"
    );
    let mut all = (0u64, 0f64);
    for name in names {
        let req = Request {
            plugin: plugin(name),
            from_ms: Some(from_ms),
            to_ms: Some(to_ms),
            resume: None,
            commit_windows: 1000,
        };
        let rep = rt.block_on(restate::restate(&cfg, &req, &mut |_| {}))?;
        let secs = rep.total.as_secs_f64();
        all.0 += rep.events_read;
        all.1 += secs;
        println!(
            "  {:<12} {:>10} {:>9} {:>8} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>12.0}",
            name,
            rep.events_read,
            rep.rows_written,
            rep.commits,
            secs,
            rep.read.as_secs_f64(),
            rep.compute.as_secs_f64(),
            rep.commit.as_secs_f64(),
            rep.events_read as f64 / secs
        );
    }
    println!(
        "  three plugins, one restatement each: {:.0} events/s on average (issue 18 target: >= 1M)",
        all.0 as f64 / all.1
    );
    Ok(())
}
