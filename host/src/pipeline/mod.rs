//! The daemon: wires source → processor → sink and owns the threads.
//!
//! ```text
//!  ingest thread (blocking)                         sink task (tokio)
//!  ┌──────────────────────────────────────┐  batch  ┌───────────────────────────┐
//!  │ Source::poll_batch (Kafka or file)   │ ──────▶ │ IcebergSink::commit        │
//!  │ Processor::process / flush_plugins   │ (≤ 1    │ dead letters →             │
//!  │ every commit interval: tick()        │ queued) │ metrics → events (position)│
//!  │ on ack: commit offsets to Kafka      │ ◀────── │ ack (CommitReport)         │
//!  └──────────────────────────────────────┘   ack   └───────────────────────────┘
//! ```
//!
//! Offsets reach Kafka only after the Iceberg commit that contains their messages. The bounded
//! batch queue is the backpressure: a slow catalog slows consumption, it never drops data.
//!
//! A bounded source (a file) ends the run by itself: at its end every window is closed (like
//! Flink's final watermark), the last batch is committed and `run` returns.

mod live;
pub mod processor;
pub mod registry;
mod task;

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
use crate::source::{Change, FileSource, KafkaSource, Source};

/// Partitions to claim, and where to send the claims.
type ClaimRequest = (
    Vec<i32>,
    tokio::sync::oneshot::Sender<Result<Vec<crate::sink::Claimed>, String>>,
);
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
    *status.committed_offsets.lock().unwrap() = sink.offsets();
    tracing::info!(stream, positions = ?sink.positions(), writer_id, "tables opened");

    // The recorded replay points keep clicks for the lookback in force when they were written;
    // a longer one now would silently under-attribute conversions right after the restart.
    let horizon = cfg.window_size_ms()
        + cfg.window.allowed_lateness_ms as i64
        + cfg.attribution.lookback_secs as i64 * 1000;
    if let Some(recorded) = sink.click_horizon_ms()
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
    let crate::watch::Loaded {
        plugins,
        shadows,
        installed,
        names,
    } = crate::watch::load_initial(&runtime, &cfg)?;
    let mut processor = Processor::new(&cfg, plugins, status.clone());
    processor.add_shadows(shadows);
    processor.assign_on_first_message = false;
    // Per partition: from which event time the committed ids are read back for dedup.
    let dedup_horizon = processor.dedup_horizon_ms();
    let ids_since = move |wm: Option<i64>| match (dedup_horizon, wm) {
        (Some(h), Some(wm)) => Some(wm.saturating_sub(h)),
        _ => None,
    };
    let file_input = match (cfg.source.kind, &cfg.source.path) {
        (SourceKind::File, Some(path)) => {
            // Standard input has no name or content to tell two inputs apart by: resuming an
            // unnamed one would skip the lines the tables already hold for another.
            if path.as_os_str() == "-"
                && cfg.source.stream.is_none()
                && let Some((p, pos)) = sink.positions().into_iter().next()
            {
                anyhow::bail!(
                    "the tables already hold stream {stream:?} (partition {p} up to line {}): \
                     an unnamed standard input would resume there and skip that many of its \
                     lines. Name this input with --stream (a new name counts it apart, the \
                     name of the earlier input resumes it) or use fresh tables",
                    pos.offset
                );
            }
            // A file an earlier release ran into these tables is recorded under the name it gave
            // every file of that name: resuming it under the new default would count it again.
            let old = crate::source::FileSource::unversioned_stream(path);
            if path.as_os_str() != "-"
                && cfg.source.stream.is_none()
                && sink.positions().is_empty()
                && let Some((p, pos)) = sink.positions_of(&old).into_iter().next()
            {
                anyhow::bail!(
                    "the tables hold stream {old:?} (partition {p} up to line {}), the name \
                     earlier releases gave every file called like this one; this release names \
                     it {stream:?}. If it is the same input, resume it with --stream {old:?}; \
                     if not, run it under --stream {stream:?} to count it apart",
                    pos.offset
                );
            }
            // A file is one partition, claimed here like a Kafka partition would be.
            let claim = sink
                .claim(&[0], ids_since)
                .await
                .context("claiming the file's stream in the tables")?
                .pop()
                .expect("one claim per partition");
            let start = claim.position.map_or(0, |p| p.replay_from);
            processor.assign(claim, Instant::now());
            Some((path.clone(), start))
        }
        _ => None,
    };
    let (control_tx, control_rx) = std::sync::mpsc::channel();
    let _watcher = crate::watch::spawn(
        cfg.clone(),
        runtime.clone(),
        (installed, names),
        control_tx,
        status.clone(),
    )?;

    // One batch queued while the sink commits the previous one: enough to keep both threads
    // busy, and every queued batch is held in memory (up to commit.max_rows rows each).
    let (batch_tx, mut batch_rx) = mpsc::channel(1);
    let (ack_tx, ack_rx) = std::sync::mpsc::channel::<CommitReport>();
    let stop = Arc::new(AtomicBool::new(false));

    // Claims of partitions the group assigns: made by the sink task (it owns the tables), asked
    // for from the consumer's rebalance callback on the ingest thread, which waits for them.
    let (claim_tx, mut claim_rx) = mpsc::channel::<ClaimRequest>(1);
    let ingest = {
        let cfg = cfg.clone();
        let stop = stop.clone();
        let status = status.clone();
        std::thread::Builder::new().name("ingest".into()).spawn(
            move || -> anyhow::Result<RunSummary> {
                let (batch_tx, ack_rx, control_rx) = (&batch_tx, &ack_rx, &control_rx);
                match file_input {
                    Some((path, start)) => {
                        let mut source = FileSource::open(&path, start, cfg.validation.max_message_bytes)?;
                        tracing::info!(path = %path.display(), start_line = start, "reading events from a file");
                        ingest_loop(
                            &cfg, &mut source, &mut processor, &status, &stop, batch_tx,
                            ack_rx, control_rx,
                        )
                    }
                    None => {
                        let claimer: crate::source::kafka::Claimer = Box::new(move |parts| {
                            let (tx, rx) = tokio::sync::oneshot::channel();
                            claim_tx
                                .blocking_send((parts.to_vec(), tx))
                                .map_err(|_| "the sink stopped".to_string())?;
                            rx.blocking_recv()
                                .map_err(|_| "the sink stopped".to_string())?
                        });
                        let mut source = KafkaSource::connect(&cfg.kafka, claimer)
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
        loop {
            let batch = tokio::select! {
                Some((parts, reply)) = claim_rx.recv() => {
                    let r = sink.claim(&parts, ids_since).await.map_err(|e| format!("{e:#}"));
                    let _ = reply.send(r);
                    continue;
                }
                b = batch_rx.recv() => match b {
                    Some(b) => b,
                    None => break,
                },
            };
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
        positions: b.positions.clone(),
        dead_letter_floors: b.dead_letter_floors.clone(),
        produced_at_ms: Vec::new(),
        has_final: b.has_final,
        click_horizon_ms: b.click_horizon_ms,
    }
}

fn record_commit(status: &Status, r: &CommitReport) {
    status.commits.inc();
    crate::status::advance(&status.catalog_conflicts, r.conflicts);
    if !r.fenced.is_empty() {
        status.fenced_commits.inc();
    }
    status.committed_events.inc_by(r.events as u64);
    status.committed_dead_letters.inc_by(r.dead_letters as u64);
    status.metric_rows.inc_by(r.metric_rows as u64);
    status
        .last_commit_us
        .store(r.duration.as_micros() as u64, Relaxed);
    status.committed_files.inc_by(r.files as u64);
    status.commit_seconds.observe(r.duration.as_secs_f64());
    status.commit_batch_events.observe(r.events as f64);
    if r.metric_rows > 0 || r.events > 0 {
        let mut h = status.latency.lock().unwrap();
        for ts in &r.produced_at_ms {
            let ms = r.visible_at_ms - ts;
            h.record(ms);
            status.visible_latency.observe(ms.max(0) as f64 / 1000.0);
        }
    }
}

/// Stores the offsets of a committed batch in the source (Kafka's group) and in the summary.
fn on_ack(
    source: &impl Source,
    processor: &mut Processor,
    status: &Status,
    r: CommitReport,
    summary: &mut RunSummary,
) {
    for &(p, epoch) in &r.fenced {
        processor.lost(p, epoch);
    }
    crate::fault::point("before-offset-store", r.has_final);
    if let Err(e) = source.commit(&r.offsets) {
        tracing::warn!(error = %e, "storing offsets in Kafka failed; Iceberg holds them too");
    }
    *status.committed_offsets.lock().unwrap() = r.offsets.clone();
    summary.commits += 1;
    summary.committed_offsets = r.offsets;
}

/// Takes a commit batch from the processor and queues it for the sink; waits while a batch is
/// already queued (backpressure).
fn send_batch(
    processor: &mut Processor,
    batch_tx: &mpsc::Sender<crate::sink::CommitBatch>,
    in_flight: &mut usize,
) -> anyhow::Result<()> {
    let batch = processor.tick(&Clock::now());
    if batch_tx.blocking_send(batch).is_err() {
        anyhow::bail!("the sink stopped; see its error");
    }
    *in_flight += 1;
    Ok(())
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
    let mut last_lag = Instant::now();
    let mut summary = RunSummary::default();
    let (mut tokens, mut refilled) = (0.0f64, Instant::now());
    loop {
        let mut stopping = stop.load(Relaxed);
        if !stopping {
            let clock = Clock::now();
            let new_before = status.messages.get();
            let n = source.poll_batch(cfg.kafka.batch_size, Duration::from_millis(20), |m| {
                processor.process(m, &clock)
            });
            summary.messages += n as u64;
            // Heartbeat for /health (observe::STALL_AFTER): the loop is making progress.
            status.last_poll_ms.store(clock.now_ms, Relaxed);
            if n > 0 {
                processor.flush_plugins();
            }
            // Assignment changes come after the messages polled before them. A revoked
            // partition's buffered rows are committed at once with its position and its old
            // epoch (Kafka Streams' commit on revoke), before any claim that follows: if the
            // partition was claimed again meanwhile (by another member, or by this one after a
            // rebalance), the fence refuses them and the claimant replays them; they must never
            // be committed under a newer epoch than the position they belong to.
            let mut revoked = false;
            for c in source.take_changes() {
                match c {
                    Change::Revoked(p) => {
                        processor.revoke(p);
                        revoked = true;
                    }
                    Change::Assigned(claim) => {
                        if std::mem::take(&mut revoked) {
                            send_batch(processor, batch_tx, &mut in_flight)?;
                        }
                        processor.assign(claim, Instant::now());
                    }
                }
            }
            if revoked {
                send_batch(processor, batch_tx, &mut in_flight)?;
            }
            if cfg.kafka.max_events_per_sec > 0 {
                // Token bucket, at most one second of burst: waiting for an assignment does not
                // bank budget for a flood afterwards.
                let rate = cfg.kafka.max_events_per_sec as f64;
                let now = Instant::now();
                // Only new messages spend budget: a replay after a restart rebuilds state at full
                // speed (it is what recovery time is made of).
                let new = status.messages.get() - new_before;
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
            on_ack(source, processor, status, r, &mut summary);
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
            let owned = processor.owned();
            status.ready.store(
                !stopping && !owned.is_empty() && !processor.replaying(),
                Relaxed,
            );
            send_batch(processor, batch_tx, &mut in_flight)?;
            next_tick = now + interval;
            if now.duration_since(last_lag) >= Duration::from_secs(1) && !owned.is_empty() {
                *status.end_offsets.lock().unwrap() = source.end_offsets(&owned);
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
                        on_ack(source, processor, status, r, &mut summary);
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
