//! The daemon: wires source → processor → sink and owns the threads.
//!
//! ```text
//!  ingest thread (blocking)                         sink task (tokio)
//!  ┌──────────────────────────────────────┐  batch  ┌───────────────────────────┐
//!  │ Source::poll_batch (Kafka or file)   │ ──────▶ │ IcebergSink::commit        │
//!  │ Processor::process / flush_plugins   │ (≤ 1    │ events → dead letters →    │
//!  │ every commit interval: tick()        │ queued) │ metrics, offsets in summary│
//!  │ on ack: commit offsets to Kafka      │ ◀────── │ ack (CommitReport)         │
//!  └──────────────────────────────────────┘   ack   └───────────────────────────┘
//! ```
//!
//! Offsets reach Kafka only after the Iceberg commit that contains their messages. The bounded
//! batch queue is the backpressure: a slow catalog slows consumption, it never drops data.
//!
//! A bounded source (a file) ends the run by itself: at its end every window is closed (like
//! Flink's final watermark), the last batch is committed and `run` returns.

pub mod processor;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::mpsc;

use crate::config::{Config, SourceKind};
use crate::plugin::PluginRuntime;
use crate::sink::{CommitReport, IcebergSink};
use crate::source::{FileSource, KafkaSource, Source};
use crate::status::Status;
pub use processor::{Clock, Processor};

/// Summary of a finished run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub messages: u64,
    pub commits: u64,
    pub committed_offsets: BTreeMap<i32, i64>,
}

/// Runs the daemon until `shutdown` completes, then commits what it holds, stores the offsets
/// and returns. `status` is updated live for observers.
pub async fn run(
    cfg: Config,
    status: Arc<Status>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<RunSummary> {
    let writer_id = format!("admetrics-{}", uuid::Uuid::new_v4().simple());
    let stream = cfg.stream();
    let mut sink = IcebergSink::open(
        &cfg.iceberg,
        &stream,
        &writer_id,
        cfg.commit.target_file_bytes,
    )
    .await
    .context("opening the Iceberg catalog and tables")?;
    let resume = sink.resume();
    *status.committed_offsets.lock().unwrap() = resume.offsets.clone();
    tracing::info!(stream, offsets = ?resume.offsets, replay_from = ?resume.replay_from, watermark = ?resume.watermark_ms,
        seq = resume.seq, writer_id, "resuming from campaign_events snapshot summaries");

    // The recorded replay point keeps clicks for the lookback in force when it was written; a
    // longer one now would silently under-attribute conversions right after the restart.
    let horizon = cfg.window_size_ms()
        + cfg.window.allowed_lateness_ms as i64
        + cfg.attribution.lookback_secs as i64 * 1000;
    if let Some(recorded) = resume.click_horizon_ms
        && horizon > recorded
        && !cfg.attribution.accept_partial_lookback
    {
        anyhow::bail!(
            "attribution.lookback_secs (with window size and lateness: {horizon} ms of event time) is longer than \
             the click history the tables' replay point covers ({recorded} ms): conversions in the next \
             {} s of event time could miss clicks the longer lookback should credit. Restart with the \
             previous lookback, or set attribution.accept_partial_lookback = true to accept that",
            (horizon - recorded) / 1000
        );
    }
    if let Some(addr) = cfg.http.listen.as_deref().filter(|a| !a.is_empty()) {
        let (bound, server) = crate::observe::bind(addr, status.clone())
            .await
            .with_context(|| format!("http.listen = {addr:?}: cannot serve /metrics there"))?;
        tracing::info!(%bound, "serving /metrics, /health and /ready");
        tokio::spawn(server);
    }
    let runtime = PluginRuntime::new(&cfg.plugins)?;
    let (plugins, installed) = crate::watch::load_initial(&runtime, &cfg)?;
    let mut processor = Processor::new(&cfg, plugins, status.clone());
    processor.resume(&resume);
    if let (Some(horizon), Some(wm)) = (processor.dedup_horizon_ms(), resume.watermark_ms)
        && wm > i64::MIN
    {
        // Copies of events committed before the restart must still count once.
        let t = Instant::now();
        let since = wm.saturating_sub(horizon);
        processor.loading_ids_since(since);
        let n = sink
            .committed_ids(since, |id, p, o, time, was_copy| {
                processor.remember_id(id, p, o, time, was_copy)
            })
            .await
            .context("loading the event ids of the dedup horizon from campaign_events")?;
        tracing::info!(
            ids = n,
            took_ms = t.elapsed().as_millis() as u64,
            "dedup: ids within the horizon loaded"
        );
    }
    let (control_tx, control_rx) = std::sync::mpsc::channel();
    let _watcher = crate::watch::spawn(
        cfg.clone(),
        runtime.clone(),
        installed,
        control_tx,
        status.clone(),
    )?;

    // One batch queued while the sink commits the previous one: enough to keep both threads
    // busy, and every queued batch is held in memory (up to commit.max_rows rows each).
    let (batch_tx, mut batch_rx) = mpsc::channel(1);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel::<CommitReport>();
    let stop = Arc::new(AtomicBool::new(false));

    let ingest = {
        let cfg = cfg.clone();
        let stop = stop.clone();
        let status = status.clone();
        std::thread::Builder::new().name("ingest".into()).spawn(
            move || -> anyhow::Result<RunSummary> {
                let (batch_tx, ack_rx, control_rx) = (&batch_tx, &ack_rx, &control_rx);
                match (cfg.source.kind, &cfg.source.path) {
                    (SourceKind::File, Some(path)) => {
                        let start = resume.replay_from.get(&0).copied().unwrap_or(0);
                        let mut source = FileSource::open(path, start)?;
                        tracing::info!(path = %path.display(), start_line = start, "reading events from a file");
                        ingest_loop(
                            &cfg, &mut source, &mut processor, &status, &stop, batch_tx,
                            ack_rx, control_rx,
                        )
                    }
                    _ => {
                        let mut source =
                            KafkaSource::connect(&cfg.kafka, resume.replay_from.clone())
                                .context("connecting to Kafka")?;
                        ingest_loop(
                            &cfg, &mut source, &mut processor, &status, &stop, batch_tx,
                            ack_rx, control_rx,
                        )
                    }
                }
            },
        )?
    };

    let sink_status = status.clone();
    let sink_task = tokio::spawn(async move {
        while let Some(batch) = batch_rx.recv().await {
            let report = match commit_with_retry(&mut sink, batch).await {
                Ok(r) => r,
                Err(e) => {
                    *sink_status.failure.lock().unwrap() = Some(format!("{e:#}"));
                    return Err(e);
                }
            };
            record_commit(&sink_status, &report);
            if ack_tx.send(report).is_err() {
                break;
            }
        }
        anyhow::Ok(())
    });

    tokio::pin!(shutdown);
    let mut sink_task = sink_task;
    let sink_result = tokio::select! {
        _ = &mut shutdown => { stop.store(true, Relaxed); None }
        r = &mut sink_task => { stop.store(true, Relaxed); Some(r) }
    };
    // Let the ingest thread finish its last commit (it waits for the sink's acks), within a
    // bound: past it we exit with an error and without storing offsets in Kafka. Nothing is
    // lost that way either: the Iceberg summaries hold the position a restart resumes from.
    let limit = Duration::from_millis(cfg.commit.shutdown_timeout_ms);
    let finish = async move {
        let ingest_result = tokio::task::spawn_blocking(move || ingest.join()).await?;
        let sink_result = match sink_result {
            Some(r) => r,
            None => sink_task.await,
        };
        anyhow::Ok((ingest_result, sink_result))
    };
    let (ingest_result, sink_result) = tokio::time::timeout(limit, finish)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "shutdown: the final commit did not finish within commit.shutdown_timeout_ms = {} ms; \
                 exiting without it (a restart resumes from the last Iceberg commit)",
                limit.as_millis()
            )
        })??;
    sink_result
        .context("sink task panicked")?
        .context("committing to Iceberg")?;
    match ingest_result {
        Ok(r) => r,
        Err(_) => anyhow::bail!("ingest thread panicked"),
    }
}

/// Retries retryable commit failures with backoff; gives up after ~1 minute (the daemon then
/// stops without storing offsets, so nothing is lost: a restart re-reads the batch).
async fn commit_with_retry(
    sink: &mut IcebergSink,
    batch: crate::sink::CommitBatch,
) -> anyhow::Result<CommitReport> {
    let mut delay = Duration::from_millis(50);
    let deadline = Instant::now() + Duration::from_secs(60);
    // The batch is consumed by a commit attempt; keep what a retry needs.
    let mut batch = Some(batch);
    loop {
        let b = batch.take().expect("batch present");
        let keep = clone_batch(&b);
        match sink.commit(b).await {
            Ok(r) => return Ok(r),
            Err(e) if e.retryable() && Instant::now() < deadline => {
                tracing::warn!(error = %e, ?delay, "Iceberg commit failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                batch = Some(keep);
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn clone_batch(b: &crate::sink::CommitBatch) -> crate::sink::CommitBatch {
    crate::sink::CommitBatch {
        seq: b.seq,
        events: b.events.clone(),
        metrics: b.metrics.clone(),
        dead_letters: b.dead_letters.clone(),
        offsets: b.offsets.clone(),
        replay_from: b.replay_from.clone(),
        watermark_ms: b.watermark_ms,
        produced_at_ms: Vec::new(),
        has_final: b.has_final,
        click_horizon_ms: b.click_horizon_ms,
    }
}

fn record_commit(status: &Status, r: &CommitReport) {
    status.commits.fetch_add(1, Relaxed);
    status.committed_events.fetch_add(r.events as u64, Relaxed);
    status
        .committed_dead_letters
        .fetch_add(r.dead_letters as u64, Relaxed);
    status.metric_rows.fetch_add(r.metric_rows as u64, Relaxed);
    status
        .last_commit_us
        .store(r.duration.as_micros() as u64, Relaxed);
    status.committed_files.fetch_add(r.files as u64, Relaxed);
    status
        .commit_seconds
        .lock()
        .unwrap()
        .record(r.duration.as_secs_f64());
    if r.metric_rows > 0 || r.events > 0 {
        let mut h = status.latency.lock().unwrap();
        for ts in &r.produced_at_ms {
            h.record(r.visible_at_ms - ts);
        }
    }
}

/// Stores the offsets of a committed batch in the source (Kafka's group) and in the summary.
fn on_ack(source: &impl Source, status: &Status, r: CommitReport, summary: &mut RunSummary) {
    crate::fault::point("before-offset-store", r.has_final);
    if let Err(e) = source.commit(&r.offsets) {
        tracing::warn!(error = %e, "storing offsets in Kafka failed; Iceberg holds them too");
    }
    *status.committed_offsets.lock().unwrap() = r.offsets.clone();
    summary.commits += 1;
    summary.committed_offsets = r.offsets;
}

#[allow(clippy::too_many_arguments)]
fn ingest_loop(
    cfg: &Config,
    source: &mut impl Source,
    processor: &mut Processor,
    status: &Status,
    stop: &AtomicBool,
    batch_tx: &mpsc::Sender<crate::sink::CommitBatch>,
    ack_rx: &std::sync::mpsc::Receiver<CommitReport>,
    control_rx: &std::sync::mpsc::Receiver<crate::watch::Control>,
) -> anyhow::Result<RunSummary> {
    let interval = cfg.commit_interval();
    let mut next_tick = Instant::now() + interval;
    let mut in_flight = 0usize;
    let mut assignment: Vec<i32> = Vec::new();
    let mut last_lag = Instant::now();
    let mut summary = RunSummary::default();
    let (mut tokens, mut refilled) = (0.0f64, Instant::now());
    loop {
        let mut stopping = stop.load(Relaxed);
        if !stopping {
            let clock = Clock::now();
            let new_before = status.messages.load(Relaxed);
            let n = source.poll_batch(cfg.kafka.batch_size, Duration::from_millis(20), |m| {
                processor.process(m, &clock)
            });
            summary.messages += n as u64;
            if n > 0 {
                processor.flush_plugins();
            }
            if cfg.kafka.max_events_per_sec > 0 {
                // Token bucket, at most one second of burst: waiting for an assignment does not
                // bank budget for a flood afterwards.
                let rate = cfg.kafka.max_events_per_sec as f64;
                let now = Instant::now();
                // Only new messages spend budget: a replay after a restart rebuilds state at full
                // speed (it is what recovery time is made of).
                let new = status.messages.load(Relaxed) - new_before;
                tokens = (tokens + now.duration_since(refilled).as_secs_f64() * rate).min(rate)
                    - new as f64;
                refilled = now;
                if tokens < 0.0 {
                    std::thread::sleep(Duration::from_secs_f64((-tokens / rate).min(1.0)));
                }
            }
            if source.finished()? {
                // A bounded input is complete: close every window (Flink's final watermark),
                // then commit and stop like a SIGTERM would.
                processor.end_of_input()?;
                tracing::info!(
                    messages = summary.messages,
                    "end of input: every window closed; committing"
                );
                stop.store(true, Relaxed);
                stopping = true;
            }
        }
        while let Ok(r) = ack_rx.try_recv() {
            in_flight -= 1;
            on_ack(source, status, r, &mut summary);
        }
        // Ready-made plugin sets and settings from the watcher: a pointer swap, no compiling.
        while let Ok(c) = control_rx.try_recv() {
            let t = Instant::now();
            match c {
                crate::watch::Control::Plugins(specs) => processor.install(specs),
                crate::watch::Control::Settings(s) => processor.apply_settings(&s),
            }
            status
                .last_swap_us
                .store(t.elapsed().as_micros() as u64, Relaxed);
        }
        let now = Instant::now();
        if now >= next_tick || stopping || processor.buffered() >= cfg.commit.max_rows {
            let a = source.assignment();
            if a != assignment {
                tracing::info!(partitions = ?a, "partition assignment changed");
                assignment = a;
                processor.set_assignment(&assignment, now);
            }
            let batch = processor.tick(&Clock::now());
            status.ready.store(
                !stopping && !assignment.is_empty() && !processor.replaying(),
                Relaxed,
            );
            // blocking_send: waits while a batch is already queued (backpressure).
            if batch_tx.blocking_send(batch).is_err() {
                anyhow::bail!("the sink stopped; see its error");
            }
            in_flight += 1;
            next_tick = now + interval;
            if now.duration_since(last_lag) >= Duration::from_secs(1) && !assignment.is_empty() {
                *status.end_offsets.lock().unwrap() = source.end_offsets(&assignment);
                last_lag = now;
            }
        }
        if stopping {
            status.ready.store(false, Relaxed);
            // Drain: wait for every batch we sent, store the final offsets synchronously.
            while in_flight > 0 {
                match ack_rx.recv() {
                    Ok(r) => {
                        in_flight -= 1;
                        on_ack(source, status, r, &mut summary);
                    }
                    Err(_) => anyhow::bail!("the sink stopped before acknowledging every batch"),
                }
            }
            if let Err(e) = source.commit_sync(&summary.committed_offsets) {
                tracing::warn!(error = %e, "final offset commit to Kafka failed; Iceberg holds the offsets");
            }
            return Ok(summary);
        }
    }
}
