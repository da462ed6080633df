//! Hostile input and clocks against the daemon on a real Apache Kafka broker (issue 14).

mod support;

use std::time::Duration;

use support::daemon::*;
use support::*;

/// A value of the daemon's `/metrics` page (the sample line starting with `name `).
fn metric(port: u16, name: &str) -> Option<f64> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .ok()?;
    let mut page = String::new();
    s.read_to_string(&mut page).ok()?;
    page.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn event(id: &str, kind: &str, t_ms: i64) -> String {
    format!(
        r#"{{"event_id":"{id}","event_type":"{kind}","event_time":{t_ms},"campaign_id":"c1","ad_id":"a1","user_id":"u1"}}"#
    )
}

/// Issue 14, defect 1: one event stamped 50 minutes ahead of the host clock (validation accepts
/// up to an hour) used to move its partition's watermark 50 minutes ahead, and every on-time
/// event after it was late. Its partition is the only one, so nothing else holds the watermark
/// back. Now the watermark moves no further than the host clock + `window.max_clock_skew_ms`.
#[test]
fn one_event_from_the_future_does_not_make_later_on_time_events_late() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, 1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &broker.bootstrap, 0);
    let port = free_port();
    let probe = Probe::new(&cfg);
    let mut d = Daemon(
        daemon_command(&cfg, "future")
            .env("ADMETRICS__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .spawn()
            .unwrap(),
    );
    let mut producer = TestProducer::new(&broker.bootstrap, TOPIC);
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..100 {
        producer.send(
            0,
            "u1",
            event(&format!("before-{i}"), "impression", now - 60_000 + i * 500).as_bytes(),
        );
    }
    producer.send(
        0,
        "u1",
        event("future", "impression", now + 50 * 60_000).as_bytes(),
    );
    producer.flush();
    wait_running(
        &mut d,
        "the future event committed",
        Duration::from_secs(120),
        || probe.committed() >= 101,
    );
    // Let a few commit intervals pass (each advances the watermark) before the on-time events.
    std::thread::sleep(Duration::from_secs(2));
    // On time by any measure: up to 30 s ahead of the clock when produced, so whatever the
    // delay before they are read, their windows end after the host clock then.
    let now = chrono::Utc::now().timestamp_millis();
    for i in 0..100 {
        producer.send(
            0,
            "u1",
            event(&format!("after-{i}"), "click", now + 30_000 + i * 10).as_bytes(),
        );
    }
    producer.flush();
    wait_running(
        &mut d,
        "the on-time events committed",
        Duration::from_secs(120),
        || probe.committed() >= 201,
    );
    let late = metric(port, "admetrics_late_events_total").expect("/metrics answers");
    let valid = metric(port, "admetrics_valid_events_total").unwrap();
    sigterm(&mut d);
    assert_eq!(valid, 201.0);
    assert_eq!(
        late, 0.0,
        "on-time events after one future-stamped event were flagged late"
    );
}
