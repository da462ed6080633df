//! The daemon's operator endpoints on a real Apache Kafka broker: `/metrics` scraped while the
//! daemon consumes, every page parsed by Prometheus's own text-format parser
//! (`tests/verify_metrics.py`, the `prometheus_client` Python package), counters and histograms
//! checked never to go down between scrapes, and the last page's figures checked against what
//! the test produced (messages, valid events, duplicates, dead letters per reason, per-partition
//! messages and committed offsets, rows committed, one latency observation per event, one
//! call-duration series per plugin version). `/health` and `/ready` answer over the same server.

mod support;

use std::time::Duration;

use support::daemon::*;
use support::*;

/// The value of the sample line `sample value` on a page (0 when absent).
fn sample(page: &str, sample: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

fn event(id: &str, kind: &str, t_ms: i64) -> String {
    let revenue = if kind == "conversion" {
        r#","revenue":"12.50","currency":"USD""#
    } else {
        ""
    };
    format!(
        r#"{{"event_id":"{id}","event_type":"{kind}","event_time":{t_ms},"campaign_id":"c{}","ad_id":"a1","user_id":"u{id}"{revenue}}}"#,
        id.len() % 3
    )
}

#[test]
fn metrics_scraped_while_running_parse_as_prometheus_text_and_agree_with_the_input() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 2);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &broker.bootstrap, 0);
    let port = free_port();
    let mut d = Daemon(
        daemon_command(&cfg, "observe")
            .env("ADMETRICS__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .spawn()
            .unwrap(),
    );
    wait_running(&mut d, "/ready", Duration::from_secs(120), || {
        http_get(&format!("127.0.0.1:{port}"), "/ready").is_some_and(|(c, _)| c == 200)
    });
    assert_eq!(
        http_get(&format!("127.0.0.1:{port}"), "/health").unwrap(),
        (200, "ok\n".into())
    );
    assert_eq!(
        http_get(&format!("127.0.0.1:{port}"), "/nope").unwrap().0,
        404
    );

    let mut producer = TestProducer::new(&broker.bootstrap, TOPIC);
    let now = chrono::Utc::now().timestamp_millis();
    let kinds = ["impression", "impression", "click", "conversion"];
    let send_valid = |producer: &mut TestProducer, range: std::ops::Range<i64>| {
        for i in range {
            for p in 0..2 {
                let kind = kinds[i as usize % kinds.len()];
                let ev = event(&format!("p{p}-{i}"), kind, now - 20_000 + i * 50);
                producer.send(p, &format!("u{i}"), ev.as_bytes());
            }
        }
        producer.flush();
    };
    let committed = |page: &str| {
        sample(
            page,
            "admetrics_committed_rows_total{table=\"campaign_events\"}",
        )
    };
    let mut pages = Vec::new();
    let scrape = |pages: &mut Vec<String>| {
        let (code, page) =
            http_get(&format!("127.0.0.1:{port}"), "/metrics").expect("/metrics answers");
        assert_eq!(code, 200, "{page}");
        pages.push(page.clone());
        page
    };

    // First burst: 75 valid events per partition; pages are kept while it is being committed.
    send_valid(&mut producer, 0..75);
    wait_running(
        &mut d,
        "the first burst committed (/metrics)",
        Duration::from_secs(120),
        || committed(&scrape(&mut pages)) == 150.0,
    );
    // Second burst: 75 more per partition, 10 redeliveries of partition 0's first ids (the same
    // event ids: duplicates), 5 messages that are not JSON on partition 1.
    // Sent in chunks with a scrape after each, so pages are taken while events are in flight.
    for chunk in (75..150).step_by(15) {
        send_valid(&mut producer, chunk..chunk + 15);
        scrape(&mut pages);
    }
    for i in 0..10 {
        let ev = event(
            &format!("p0-{i}"),
            kinds[i as usize % 4],
            now - 20_000 + i * 50,
        );
        producer.send(0, &format!("u{i}"), ev.as_bytes());
    }
    for i in 0..5 {
        producer.send(1, "x", format!("{{not json {i}").as_bytes());
    }
    producer.flush();
    let (valid, dead) = (2 * 150 + 10, 5);
    wait_running(
        &mut d,
        "everything committed and the lag read back as 0 (/metrics)",
        Duration::from_secs(120),
        || {
            let page = scrape(&mut pages);
            committed(&page) == valid as f64
                && sample(
                    &page,
                    "admetrics_committed_rows_total{table=\"dead_letters\"}",
                ) == dead as f64
                && page.contains("admetrics_consumer_lag_messages{partition=\"1\"} 0\n")
                && page.contains("admetrics_consumer_lag_messages{partition=\"0\"} 0\n")
                // The offsets are published when the commit's result comes back, after the rows
                // counters (CI15 took its last page in between).
                && page.contains("admetrics_committed_offset{partition=\"0\"} 160\n")
                && page.contains("admetrics_committed_offset{partition=\"1\"} 155\n")
        },
    );
    assert_eq!(
        http_get(&format!("127.0.0.1:{port}"), "/health").unwrap().0,
        200
    );
    assert_eq!(
        http_get(&format!("127.0.0.1:{port}"), "/ready").unwrap().0,
        200
    );
    sigterm(&mut d);

    // Up to 40 pages, evenly spaced over the run and the last one included, go to the parser
    // in scrape order (the loops above scrape every 50 ms).
    let step = pages.len().div_ceil(40);
    let last = pages.len() - 1;
    let kept = (0..pages.len()).filter(|i| (last - i) % step == 0);
    let mut args = vec![dir.path().join("expect.json").display().to_string()];
    for (i, page) in kept.map(|i| &pages[i]).enumerate() {
        let path = dir.path().join(format!("page-{i:03}.txt"));
        std::fs::write(&path, page).unwrap();
        args.push(path.display().to_string());
    }
    let expect = serde_json::json!({
        "messages": valid + dead,
        "valid": valid,
        "duplicates": 10,
        "dead_letters": {"malformed_json": dead, "missing_field": 0},
        "partition_messages": {"0": 160, "1": 155},
        "plugins": plugin_paths().len(),
        "histograms": {
            "admetrics_commit_seconds": admetrics::status::COMMIT_BUCKETS,
            "admetrics_plugin_call_seconds": admetrics::status::PLUGIN_CALL_BUCKETS,
            "admetrics_visible_latency_seconds": admetrics::status::VISIBLE_LATENCY_BUCKETS,
            "admetrics_commit_batch_events": admetrics::status::batch_buckets().collect::<Vec<_>>(),
        },
    });
    std::fs::write(&args[0], expect.to_string()).unwrap();
    let out = run_python("verify_metrics.py", &args);
    println!("{out}");
}
