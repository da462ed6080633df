//! The daemon's face for operators: `GET /metrics` (Prometheus text format 0.0.4), `/health`
//! (the sink has not failed and the ingest loop is making progress: it polled its source within
//! [`STALL_AFTER`]) and `/ready` (consuming new input: healthy, partitions assigned, replay after
//! a restart done).
//!
//! Served by hyper's HTTP/1.1 server (hyper is already in the build for the catalog and object
//! store clients): three read-only routes need no router. The page is encoded by
//! `prometheus-client` from the registry of [`Status`] (see `status.rs` for why that library and
//! the buckets), which the pipeline updates anyway, so a scrape never touches the event path.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Response, header};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

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

/// Binds `addr` and serves until the returned future is dropped (the daemon spawns it on its
/// runtime, which ends it at shutdown). Returns the bound address (port 0 picks a free one) and
/// the serving future.
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
            let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let (code, content_type, body) =
                    route(req.method().as_str(), req.uri().path(), &status);
                let response = Response::builder()
                    .status(code)
                    .header(header::CONTENT_TYPE, content_type)
                    .body(Full::new(Bytes::from(body)))
                    .expect("a status code and a static header are a valid response");
                async move { Ok::<_, Infallible>(response) }
            });
            // A client that never sends its request headers must not hold a task forever.
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "/metrics connection ended with an error");
            }
        });
    }
}

/// (status code, content type, body) of a request; HEAD gets GET's headers (hyper drops the
/// body).
fn route(method: &str, path: &str, status: &Status) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET\n".into());
    }
    match path {
        "/metrics" => (
            200,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            status.encode(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering::Relaxed;

    /// The page carries the figures of `Status` under their names, counters with `_total`,
    /// labelled series escaped, and real histograms (cumulative buckets ending in `+Inf` equal to
    /// `_count`). `tests/verify_metrics.py` parses a live daemon's page with Prometheus's own
    /// parser; this checks the encoding of figures a short run may not produce.
    #[test]
    fn the_page_has_the_status_figures() {
        let s = Status::default();
        s.messages.inc_by(1234);
        s.late_events.inc_by(7);
        s.dead_by_reason[crate::event::Reason::MalformedJson as usize].inc_by(3);
        s.end_offsets.lock().unwrap().insert(0, 100);
        s.committed_offsets.lock().unwrap().insert(0, 60);
        s.partitions.lock().unwrap().insert(0, 60);
        s.plugins.lock().unwrap().push(crate::status::PluginStat {
            name: "c\"tr".into(),
            version: "1.0.0".into(),
            state: "active",
            calls: 10,
            errors: 1,
        });
        s.commit_seconds.observe(0.012);
        s.commit_seconds.observe(3.0);
        s.ready.store(true, Relaxed);
        let page = s.encode();
        for line in [
            "# TYPE admetrics_messages_total counter",
            "admetrics_messages_total 1234",
            "admetrics_late_events_total 7",
            "admetrics_dead_letters_total{reason=\"malformed_json\"} 3",
            "admetrics_dead_letters_total{reason=\"missing_field\"} 0",
            "admetrics_consumer_lag_messages{partition=\"0\"} 40",
            "admetrics_committed_offset{partition=\"0\"} 60",
            "admetrics_partition_messages_total{partition=\"0\"} 60",
            "admetrics_plugin_errors_total{plugin=\"c\\\"tr\",version=\"1.0.0\",state=\"active\"} 1",
            "# TYPE admetrics_commit_seconds histogram",
            "admetrics_commit_seconds_bucket{le=\"0.01\"} 0",
            "admetrics_commit_seconds_bucket{le=\"0.025\"} 1",
            "admetrics_commit_seconds_bucket{le=\"2.5\"} 1",
            "admetrics_commit_seconds_bucket{le=\"5\"} 2",
            "admetrics_commit_seconds_bucket{le=\"+Inf\"} 2",
            "admetrics_commit_seconds_count 2",
            "admetrics_commit_seconds_sum 3.012",
            "admetrics_committed_rows_total{table=\"campaign_events\"} 0",
            "admetrics_ready 1",
        ] {
            assert!(
                page.lines().any(|l| l == line),
                "no line {line:?} in\n{page}"
            );
        }
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
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio::net::TcpStream;
        let status = Arc::new(Status::default());
        let (addr, server) = bind("127.0.0.1:0", status.clone()).await.unwrap();
        tokio::spawn(server);
        let request = |method: &'static str, path: &'static str| async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let req = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let get = |path| request("GET", path);
        assert!(get("/ready").await.starts_with("HTTP/1.1 503"));
        status.ready.store(true, Relaxed);
        assert!(get("/ready").await.starts_with("HTTP/1.1 200"));
        assert!(get("/health").await.starts_with("HTTP/1.1 200"));
        let m = get("/metrics").await;
        assert!(m.starts_with("HTTP/1.1 200"), "{m}");
        assert!(m.contains("admetrics_ready 1"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        // HEAD: GET's headers (the page's length), no body.
        let head = request("HEAD", "/metrics").await;
        let (headers, body) = head.split_once("\r\n\r\n").unwrap();
        assert!(headers.starts_with("HTTP/1.1 200"), "{head}");
        assert!(headers.contains("content-length: "), "{head}");
        assert_eq!(body, "");
        assert!(
            request("POST", "/metrics")
                .await
                .starts_with("HTTP/1.1 405")
        );
        // An HTTP/1.0 client without keep-alive (what `tests/hostile.rs` sends) reads to EOF.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.0\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(
            out.starts_with("HTTP/1.0 200") && out.ends_with("ok\n"),
            "{out}"
        );
        *status.failure.lock().unwrap() = Some("sink: commit failed".into());
        let h = get("/health").await;
        assert!(
            h.starts_with("HTTP/1.1 503") && h.contains("commit failed"),
            "{h}"
        );
    }
}
