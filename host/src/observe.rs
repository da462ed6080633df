//! The daemon's face for operators: `GET /metrics` (Prometheus text format 0.0.4), `/health`
//! (the sink has not failed and the ingest loop is making progress: it polled its source within
//! [`STALL_AFTER`]) and `/ready` (consuming new input: healthy, partitions assigned, replay after
//! a restart done).
//!
//! Why a hand-written HTTP/1.1 responder instead of hyper/axum: three read-only GET routes,
//! `Connection: close`, no bodies to parse. It keeps the daemon's build small and the scrape
//! path obvious. Everything it renders comes from [`Status`], which the pipeline updates anyway
//! (atomics, and per-partition / per-plugin snapshots published once per commit interval), so a
//! scrape never touches the event path.

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::status::Status;

/// `/health` fails when the ingest loop's last poll (`Status::last_poll_ms`) is older than this.
/// The loop polls every few tens of milliseconds while it runs (a 20 ms poll timeout, then at
/// most one commit interval's work); it stops polling only when wedged: stuck in a plugin call
/// past its deadline, in a rebalance, or blocked behind a sink commit that keeps failing (whose
/// retries give up after a minute). Before the first poll (start-up) `/health` answers 200.
pub const STALL_AFTER: Duration = Duration::from_secs(30);

/// `None` when healthy, else why not: the sink's failure, or a stalled ingest loop.
fn unhealthy(status: &Status, now_ms: i64) -> Option<String> {
    if let Some(e) = status.failure.lock().unwrap().clone() {
        return Some(format!("failing: {e}"));
    }
    let last = status.last_poll_ms.load(Relaxed);
    let age_ms = now_ms.saturating_sub(last);
    if last > 0 && age_ms > STALL_AFTER.as_millis() as i64 {
        return Some(format!(
            "stalled: no poll of the source for {} s (bound {} s): the ingest loop is wedged or blocked",
            age_ms / 1000,
            STALL_AFTER.as_secs()
        ));
    }
    None
}

/// Binds `addr` and serves until `shutdown` completes. Returns the bound address (port 0 picks
/// a free one) and the serving future.
pub async fn bind(
    addr: &str,
    status: Arc<Status>,
) -> std::io::Result<(SocketAddr, impl Future<Output = ()> + Send + 'static)> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    Ok((local, serve(listener, status)))
}

async fn serve(listener: TcpListener, status: Arc<Status>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning on the error.
                tracing::warn!(error = %e, "/metrics listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = status.clone();
        tokio::spawn(async move {
            // A client that never sends its request must not hold a task forever.
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(stream, &status)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, status: &Status) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Headers only (GET has no body); 8 KiB is plenty for a scrape request.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let line = buf.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (code, content_type, body) = route(method, path, status);
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let head = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes()).await?;
    }
    stream.shutdown().await
}

fn route(method: &str, path: &str, status: &Status) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET\n".into());
    }
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            render(status),
        ),
        "/health" => match unhealthy(status, chrono::Utc::now().timestamp_millis()) {
            None => (200, TEXT, "ok\n".into()),
            Some(why) => (503, TEXT, format!("{why}\n")),
        },
        "/ready" => {
            if let Some(why) = unhealthy(status, chrono::Utc::now().timestamp_millis()) {
                (503, TEXT, format!("not ready: {why}\n"))
            } else if status.ready.load(Relaxed) {
                (200, TEXT, "ready\n".into())
            } else {
                (
                    503,
                    TEXT,
                    "not ready: starting, waiting for partitions, or replaying after a restart\n"
                        .into(),
                )
            }
        }
        _ => (404, TEXT, "routes: /metrics /health /ready\n".into()),
    }
}

/// Label values: `\`, `"` and newlines escaped as the text format requires.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn one(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, kind, help);
        let _ = writeln!(self.0, "{name} {v}");
    }
    fn sample(&mut self, name: &str, labels: &str, v: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{name}{{{labels}}} {v}");
    }
}

/// The whole `/metrics` page.
pub fn render(s: &Status) -> String {
    let mut o = Out(String::with_capacity(8192));
    let now_ms = chrono::Utc::now().timestamp_millis();
    let c = |a: &std::sync::atomic::AtomicU64| a.load(Relaxed);

    o.one(
        "admetrics_messages_total",
        "counter",
        "Messages read from the source (valid events + dead letters), replays excluded.",
        c(&s.messages),
    );
    let partitions = s.partitions.lock().unwrap().clone();
    o.family(
        "admetrics_partition_messages_total",
        "counter",
        "Messages read per source partition, replays excluded (published every commit interval).",
    );
    for (p, n) in &partitions {
        o.sample(
            "admetrics_partition_messages_total",
            &format!("partition=\"{p}\""),
            n,
        );
    }
    let ends = s.end_offsets.lock().unwrap().clone();
    let done = s.committed_offsets.lock().unwrap().clone();
    o.family(
        "admetrics_consumer_lag_messages",
        "gauge",
        "Per partition: the broker's high watermark minus the offset committed to Iceberg.",
    );
    for (p, end) in &ends {
        let lag = (end - done.get(p).copied().unwrap_or(0)).max(0);
        o.sample(
            "admetrics_consumer_lag_messages",
            &format!("partition=\"{p}\""),
            lag,
        );
    }
    o.family(
        "admetrics_committed_offset",
        "gauge",
        "Per partition: the next offset, as committed to Iceberg (the resume position).",
    );
    for (p, off) in &done {
        o.sample(
            "admetrics_committed_offset",
            &format!("partition=\"{p}\""),
            off,
        );
    }
    o.one(
        "admetrics_replayed_messages_total",
        "counter",
        "Messages re-read after a restart to rebuild state (already in the tables).",
        c(&s.replayed),
    );
    o.one(
        "admetrics_partitions_claimed_total",
        "counter",
        "Partitions this member claimed in the tables when the group assigned them.",
        c(&s.partitions_claimed),
    );
    o.one(
        "admetrics_partitions_lost_total",
        "counter",
        "Partitions another member claimed while this one still held rows of them (fenced).",
        c(&s.partitions_lost),
    );
    o.one(
        "admetrics_catalog_conflicts_total",
        "counter",
        "Catalog commits that lost the compare-and-swap to another writer and were retried.",
        c(&s.catalog_conflicts),
    );
    o.one(
        "admetrics_fenced_commits_total",
        "counter",
        "Commits the fence refused partitions of (another member claimed them).",
        c(&s.fenced_commits),
    );
    o.one(
        "admetrics_redelivered_messages_total",
        "counter",
        "Messages the source delivered again (rebalance or seek), skipped.",
        c(&s.redelivered),
    );
    o.one(
        "admetrics_valid_events_total",
        "counter",
        "Events that passed validation.",
        c(&s.valid_events),
    );
    o.one(
        "admetrics_late_events_total",
        "counter",
        "Events whose window had already closed (kept in campaign_events with is_late).",
        c(&s.late_events),
    );
    o.one(
        "admetrics_duplicate_events_total",
        "counter",
        "Deliveries of an event id already seen within the dedup horizon (not counted).",
        c(&s.duplicates),
    );
    o.family(
        "admetrics_dead_letters_total",
        "counter",
        "Messages that failed validation, by reason (kept in dead_letters).",
    );
    for (reason, n) in s.dead_letter_counts() {
        o.sample(
            "admetrics_dead_letters_total",
            &format!("reason=\"{reason}\""),
            n,
        );
    }
    let wm = s.watermark_ms.load(Relaxed);
    o.one(
        "admetrics_watermark_seconds",
        "gauge",
        "The event-time watermark (Unix seconds; 0 before the first event).",
        if wm == i64::MIN || wm == 0 {
            0.0
        } else {
            wm as f64 / 1000.0
        },
    );
    o.one(
        "admetrics_watermark_delay_seconds",
        "gauge",
        "Wall clock minus the watermark (0 before the first event).",
        if wm == i64::MIN || wm == 0 {
            0.0
        } else {
            (now_ms - wm) as f64 / 1000.0
        },
    );
    o.one(
        "admetrics_open_windows",
        "gauge",
        "Event-time windows holding state.",
        c(&s.open_windows),
    );
    o.one(
        "admetrics_windows_finalized_total",
        "counter",
        "Windows closed by the watermark (final revision published).",
        c(&s.windows_finalized),
    );
    o.one(
        "admetrics_touchpoint_users",
        "gauge",
        "Users with remembered clicks (attribution state).",
        c(&s.touchpoint_users),
    );
    o.one(
        "admetrics_state_bytes",
        "gauge",
        "Estimated heap bytes of window, attribution and dedup state.",
        c(&s.state_bytes),
    );
    o.one(
        "admetrics_dedup_ids",
        "gauge",
        "Event ids remembered for deduplication.",
        c(&s.dedup_ids),
    );
    o.one(
        "admetrics_interned_ids",
        "gauge",
        "Campaign and ad ids held for open windows and remembered clicks.",
        c(&s.interned_ids),
    );
    o.one(
        "admetrics_interned_ids_evicted_total",
        "counter",
        "Campaign and ad ids freed once no open window or click held them.",
        c(&s.interned_ids_evicted),
    );

    let plugins = s.plugins.lock().unwrap().clone();
    let label = |p: &crate::status::PluginStat| {
        format!(
            "plugin=\"{}\",version=\"{}\",state=\"{}\"",
            esc(&p.name),
            esc(&p.version),
            p.state
        )
    };
    o.family(
        "admetrics_plugin_calls_total",
        "counter",
        "Plugin calls (accumulate and finish) per loaded plugin version.",
    );
    for p in &plugins {
        o.sample("admetrics_plugin_calls_total", &label(p), p.calls);
    }
    o.family(
        "admetrics_plugin_errors_total",
        "counter",
        "Plugin calls that failed (trap, deadline, memory cap, malformed rows).",
    );
    for p in &plugins {
        o.sample("admetrics_plugin_errors_total", &label(p), p.errors);
    }
    o.family(
        "admetrics_plugin_call_seconds",
        "summary",
        "Time inside plugin calls (lifting and lowering included).",
    );
    for p in &plugins {
        o.sample("admetrics_plugin_call_seconds_sum", &label(p), p.busy_secs);
        o.sample("admetrics_plugin_call_seconds_count", &label(p), p.calls);
    }
    o.one(
        "admetrics_plugin_swaps_total",
        "counter",
        "Plugin sets installed live.",
        c(&s.plugin_swaps),
    );
    o.one(
        "admetrics_plugins_quarantined_total",
        "counter",
        "Plugin versions quarantined after repeated failures.",
        c(&s.plugins_quarantined),
    );
    o.one(
        "admetrics_plugin_rollbacks_total",
        "counter",
        "Automatic rollbacks to the version a failing one replaced.",
        c(&s.plugin_rollbacks),
    );

    let commits = s.commit_seconds.lock().unwrap().clone();
    o.family(
        "admetrics_commit_seconds",
        "histogram",
        "Duration of one Iceberg commit (files written + the three catalog commits).",
    );
    let mut cumulative = 0;
    for (bound, n) in crate::status::COMMIT_BUCKETS.iter().zip(&commits.buckets) {
        cumulative += n;
        o.sample(
            "admetrics_commit_seconds_bucket",
            &format!("le=\"{bound}\""),
            cumulative,
        );
    }
    o.sample(
        "admetrics_commit_seconds_bucket",
        "le=\"+Inf\"",
        commits.count,
    );
    let _ = writeln!(o.0, "admetrics_commit_seconds_sum {}", commits.sum);
    let _ = writeln!(o.0, "admetrics_commit_seconds_count {}", commits.count);
    o.family(
        "admetrics_committed_rows_total",
        "counter",
        "Rows committed to Iceberg, by table.",
    );
    o.sample(
        "admetrics_committed_rows_total",
        "table=\"campaign_events\"",
        c(&s.committed_events),
    );
    o.sample(
        "admetrics_committed_rows_total",
        "table=\"campaign_metrics\"",
        c(&s.metric_rows),
    );
    o.sample(
        "admetrics_committed_rows_total",
        "table=\"dead_letters\"",
        c(&s.committed_dead_letters),
    );
    o.one(
        "admetrics_committed_files_total",
        "counter",
        "Data files committed to Iceberg.",
        c(&s.committed_files),
    );
    o.one(
        "admetrics_commits_total",
        "counter",
        "Commit intervals acknowledged by the sink.",
        c(&s.commits),
    );
    let lat = s.latency.lock().unwrap();
    o.family(
        "admetrics_visible_latency_seconds",
        "gauge",
        "Produce (Kafka timestamp) to visible in a committed metrics revision, quantiles since start.",
    );
    for q in [0.5, 0.99] {
        if let Some(ms) = lat.quantile(q) {
            o.sample(
                "admetrics_visible_latency_seconds",
                &format!("quantile=\"{q}\""),
                ms as f64 / 1000.0,
            );
        }
    }
    drop(lat);
    o.one(
        "admetrics_ready",
        "gauge",
        "1 when consuming new input (what /ready answers).",
        s.ready.load(Relaxed) as u8,
    );
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    /// Every sample line parses as `name{labels} value` with a finite number, every family has
    /// HELP and TYPE, and the figures are the ones in `Status`.
    #[test]
    fn the_page_is_valid_text_format_with_the_status_figures() {
        let s = Status::default();
        s.messages.store(1234, Relaxed);
        s.late_events.store(7, Relaxed);
        s.dead_by_reason[crate::event::Reason::MalformedJson as usize].store(3, Relaxed);
        s.end_offsets.lock().unwrap().insert(0, 100);
        s.committed_offsets.lock().unwrap().insert(0, 60);
        s.partitions.lock().unwrap().insert(0, 60);
        s.plugins.lock().unwrap().push(crate::status::PluginStat {
            name: "c\"tr".into(),
            version: "1.0.0".into(),
            state: "active",
            calls: 10,
            errors: 1,
            busy_secs: 0.5,
        });
        s.commit_seconds.lock().unwrap().record(0.012);
        s.commit_seconds.lock().unwrap().record(3.0);
        let page = render(&s);
        let mut typed = std::collections::HashSet::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name_labels, value) = line.rsplit_once(' ').expect("name value");
            assert!(value.parse::<f64>().is_ok_and(f64::is_finite), "{line}");
            let name = name_labels.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| name.strip_suffix(suf).filter(|f| typed.contains(*f)))
                .unwrap_or(name);
            assert!(typed.contains(family), "no TYPE for {name}");
        }
        assert!(page.contains("\nadmetrics_messages_total 1234\n"));
        assert!(page.contains("admetrics_late_events_total 7\n"));
        assert!(page.contains("admetrics_dead_letters_total{reason=\"malformed_json\"} 3\n"));
        assert!(page.contains("admetrics_consumer_lag_messages{partition=\"0\"} 40\n"));
        assert!(page.contains("admetrics_partition_messages_total{partition=\"0\"} 60\n"));
        assert!(page.contains(
            "admetrics_plugin_errors_total{plugin=\"c\\\"tr\",version=\"1.0.0\",state=\"active\"} 1\n"
        ));
        assert!(page.contains("admetrics_commit_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(page.contains("admetrics_commit_seconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(page.contains("admetrics_commit_seconds_count 2\n"));
    }

    fn now_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    /// Issue 14, defect 10: `/health` answered 200 while the ingest thread was wedged.
    #[test]
    fn health_follows_the_ingest_heartbeat() {
        let s = Status::default();
        // Starting: no poll yet.
        assert_eq!(route("GET", "/health", &s).0, 200);
        s.last_poll_ms.store(now_ms() - 1_000, Relaxed);
        let (code, _, body) = route("GET", "/health", &s);
        assert_eq!(code, 200, "{body}");
        s.ready.store(true, Relaxed);
        assert_eq!(route("GET", "/ready", &s).0, 200);
        // Wedged: the last poll is older than the bound.
        s.last_poll_ms.store(now_ms() - 60_000, Relaxed);
        let (code, _, body) = route("GET", "/health", &s);
        assert_eq!(code, 503, "a stale heartbeat fails /health: {body}");
        assert!(body.contains("no poll") && body.contains("30 s"), "{body}");
        let (code, _, body) = route("GET", "/ready", &s);
        assert_eq!(code, 503, "not consuming new input: {body}");
        // Fresh again, but the sink failed.
        s.last_poll_ms.store(now_ms(), Relaxed);
        assert_eq!(route("GET", "/health", &s).0, 200);
        *s.failure.lock().unwrap() = Some("sink: commit failed".into());
        let (code, _, body) = route("GET", "/health", &s);
        assert_eq!(code, 503);
        assert!(body.contains("commit failed"), "{body}");
        assert_eq!(route("GET", "/ready", &s).0, 503);
    }

    #[tokio::test]
    async fn routes_answer_over_http() {
        let status = Arc::new(Status::default());
        let (addr, server) = bind("127.0.0.1:0", status.clone()).await.unwrap();
        tokio::spawn(server);
        let get = |path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(get("/ready").await.starts_with("HTTP/1.1 503"));
        status.ready.store(true, Relaxed);
        assert!(get("/ready").await.starts_with("HTTP/1.1 200"));
        assert!(get("/health").await.starts_with("HTTP/1.1 200"));
        let m = get("/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("admetrics_ready 1"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        *status.failure.lock().unwrap() = Some("sink: commit failed".into());
        let h = get("/health").await;
        assert!(
            h.starts_with("HTTP/1.1 503") && h.contains("commit failed"),
            "{h}"
        );
    }
}
