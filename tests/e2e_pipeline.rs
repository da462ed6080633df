//! End to end on real parts: an Apache Kafka broker process, the daemon with the three built plugin
//! components, the SQLite catalog + local warehouse, and PyIceberg/DuckDB (tests/verify_e2e.py)
//! reading the tables back and checking them against values it computes itself from the
//! produced messages.
//!
//! The input covers: four partitions, out-of-order events (within the out-of-orderness bound),
//! late events (far behind the watermark), conversions without any click, conversions whose only
//! clicks are outside the lookback, cross-campaign attribution, and malformed messages.
//!
//! Production happens in two phases so that "late" does not depend on how the consumer
//! interleaves partitions: phase 1 is the main traffic; once it is committed, phase 2 sends
//! stragglers for long-closed windows plus one far-future event per partition that closes
//! every data window.

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use admetrics::config::Config;
use admetrics::status::Status;
use support::*;

const TOPIC: &str = "campaign-events";
const PARTITIONS: i32 = 4;
const LOOKBACK_SECS: u64 = 120;
const OOO_MS: u64 = 5_000;

struct Msg {
    partition: i32,
    key: String,
    payload: String,
    phase: u8,
}

fn ev(
    id: &str,
    kind: &str,
    t: i64,
    campaign: &str,
    ad: &str,
    user: &str,
    revenue: Option<&str>,
) -> String {
    let mut v = serde_json::json!({
        "event_id": id, "event_type": kind,
        "event_time": chrono::DateTime::from_timestamp_millis(t).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        "campaign_id": campaign, "ad_id": ad, "user_id": user, "country": "DE",
    });
    if let Some(r) = revenue {
        v["revenue"] = r.into();
        v["currency"] = "USD".into();
    }
    v.to_string()
}

/// Deterministic input. Users are pinned to partitions (user i → partition i % 4), as keying by
/// user id would do, so a user's click and conversion are ordered within one partition.
fn build_input(base: i64) -> Vec<Msg> {
    let mut rng = fastrand::Rng::with_seed(7);
    let mut msgs = Vec::new();
    let mut id = 0u64;
    let mut next_id = || {
        id += 1;
        format!("e{id:06}")
    };
    let mut phase1_of: Vec<Vec<(i64, String, String)>> = Vec::new();
    for p in 0..PARTITIONS {
        // Phase 1, as (nominal time, key, payload), sent in nominal-time order. Event times carry
        // up to 3 s of jitter: inside the 5 s out-of-orderness, so none of them is late.
        let mut phase1: Vec<(i64, String, String)> = Vec::new();
        let mut t = base;
        while t < base + 600_000 {
            t += rng.i64(100..700);
            let user_n = rng.u32(0..50) as i32 * PARTITIONS + p;
            let user = format!("user-{user_n}");
            let c = rng.u32(0..5);
            let campaign = format!("camp-{c}");
            let ad = format!("ad-{c}-{}", rng.u32(0..3));
            let jittered = t - rng.i64(0..3_000);
            let roll = rng.f64();
            let payload = if roll < 0.80 {
                ev(
                    &next_id(),
                    "impression",
                    jittered,
                    &campaign,
                    &ad,
                    &user,
                    None,
                )
            } else if roll < 0.93 {
                ev(&next_id(), "click", jittered, &campaign, &ad, &user, None)
            } else {
                let cents = rng.u32(100..20_000);
                ev(
                    &next_id(),
                    "conversion",
                    jittered,
                    &campaign,
                    &ad,
                    &user,
                    Some(&format!("{}.{:02}", cents / 100, cents % 100)),
                )
            };
            phase1.push((t, user, payload));
        }
        // A conversion from a user who never clicked.
        let user = format!("lonely-{p}");
        phase1.push((
            base + 300_000,
            user.clone(),
            ev(
                &next_id(),
                "conversion",
                base + 300_000,
                "camp-1",
                "ad-1-0",
                &user,
                Some("42.50"),
            ),
        ));
        // A click, then a conversion 5 minutes later: outside the 120 s lookback.
        let user = format!("slow-{p}");
        phase1.push((
            base + 200_000,
            user.clone(),
            ev(
                &next_id(),
                "click",
                base + 200_000,
                "camp-2",
                "ad-2-1",
                &user,
                None,
            ),
        ));
        phase1.push((
            base + 500_000,
            user.clone(),
            ev(
                &next_id(),
                "conversion",
                base + 500_000,
                "camp-3",
                "ad-3-0",
                &user,
                Some("10"),
            ),
        ));
        // Cross-campaign: clicked camp-4, converted on camp-0 within the lookback.
        let user = format!("cross-{p}");
        phase1.push((
            base + 450_000,
            user.clone(),
            ev(
                &next_id(),
                "click",
                base + 450_000,
                "camp-4",
                "ad-4-2",
                &user,
                None,
            ),
        ));
        phase1.push((
            base + 458_000,
            user.clone(),
            ev(
                &next_id(),
                "conversion",
                base + 458_000,
                "camp-0",
                "ad-0-0",
                &user,
                Some("7.25"),
            ),
        ));
        // Malformed input: every one must end up in dead_letters.
        for bad in [
            "this is not json".to_string(),
            r#"{"event_id":"x","event_type":"click"}"#.to_string(),
            ev(
                "bad-type",
                "view",
                base + 1_000,
                "camp-0",
                "ad-0-0",
                "u",
                None,
            ),
            ev(
                "bad-rev",
                "conversion",
                base + 1_000,
                "camp-0",
                "ad-0-0",
                "u",
                Some("-5.00"),
            ),
            // One problem each: oversized, times out of bounds, mistyped and empty fields, bad
            // revenue and currency, not an object, empty and truncated input.
            ev("big", "impression", base + 1_000, &"c".repeat(70_000), "a", "u", None),
            ev("future", "impression", base + 3 * 86_400_000, "camp-0", "ad-0-0", "u", None),
            ev("past", "impression", base - 40 * 86_400_000, "camp-0", "ad-0-0", "u", None),
            ev("empty-user", "click", base + 1_000, "camp-0", "ad-0-0", "", None),
            ev("bad-rev-text", "conversion", base + 1_000, "camp-0", "ad-0-0", "u", Some("abc")),
            ev("bad-currency", "conversion", base + 1_000, "camp-0", "ad-0-0", "u", Some("5.00"))
                .replace(r#""USD""#, r#""usd""#),
            r#"{"event_id":"typed","event_type":"click","event_time":"2025-01-01T00:00:00Z","campaign_id":5,"ad_id":"a","user_id":"u"}"#.to_string(),
            r#"{"event_id":"bool-time","event_type":"click","event_time":true,"campaign_id":"c","ad_id":"a","user_id":"u"}"#.to_string(),
            r#"{"event_id":"word-time","event_type":"click","event_time":"yesterday","campaign_id":"c","ad_id":"a","user_id":"u"}"#.to_string(),
            "[1,2]".to_string(),
            String::new(),
            r#"{"event_id":"e"#.to_string(),
        ] {
            phase1.push((base + 100_000, "bad".into(), bad));
        }
        // Duplicate deliveries (a producer retry): ~3% of the generated events sent again 1–20 s
        // later on the same partition. They must count once.
        let copies: Vec<_> = phase1
            .iter()
            .filter_map(|(t, key, payload)| {
                if key.starts_with("user-") && rng.f64() < 0.03 {
                    Some((t + rng.i64(1_000..20_000), key.clone(), payload.clone()))
                } else {
                    None
                }
            })
            .collect();
        phase1.extend(copies);
        phase1_of.push(phase1);
    }
    // One impression per partition delivered again on the next partition at the same moment:
    // deduplication is per partition (a producer's retry lands on the partition of its key), so
    // both copies count.
    for p in 0..PARTITIONS as usize {
        let (t, key, payload) = phase1_of[p]
            .iter()
            .find(|(_, k, pl)| k.starts_with("user-") && pl.contains(r#""impression""#))
            .cloned()
            .expect("an impression");
        phase1_of[(p + 1) % PARTITIONS as usize].push((t, key, payload));
    }
    for (p, mut phase1) in phase1_of.into_iter().enumerate() {
        let p = p as i32;
        phase1.sort_by_key(|(t, _, _)| *t);
        for (_, key, payload) in phase1 {
            msgs.push(Msg {
                partition: p,
                key,
                payload,
                phase: 1,
            });
        }
        // Phase 2: stragglers for the minute [base+60 s, base+120 s), long closed by then...
        let user = format!("user-{p}");
        for (i, kind) in ["impression", "impression", "click", "conversion"]
            .iter()
            .enumerate()
        {
            let rev = (*kind == "conversion").then_some("99.99");
            msgs.push(Msg {
                partition: p,
                key: user.clone(),
                payload: ev(
                    &next_id(),
                    kind,
                    base + 61_000 + i as i64,
                    "camp-0",
                    "ad-0-0",
                    &user,
                    rev,
                ),
                phase: 2,
            });
        }
        // ...and one event far ahead that moves this partition's watermark past every data window.
        msgs.push(Msg {
            partition: p,
            key: "flush".into(),
            payload: ev(
                &next_id(),
                "impression",
                base + 1_800_000,
                "flush",
                "flush-ad",
                "flush-user",
                None,
            ),
            phase: 2,
        });
    }
    msgs
}

#[test]
fn pipeline_end_to_end_against_pyiceberg_and_duckdb() {
    let broker = Broker::start();
    broker.create_topic(TOPIC, PARTITIONS as u32);
    let dir = tempfile::tempdir().unwrap();
    let plugins = plugin_paths();
    let cfg_text = format!(
        r#"
[kafka]
brokers = "{}"
topic = "{TOPIC}"
group_id = "e2e"
[window]
size_secs = 60
out_of_orderness_ms = {OOO_MS}
idle_timeout_ms = 10000
[attribution]
lookback_secs = {LOOKBACK_SECS}
max_touchpoints = 64
[plugins]
paths = {:?}
[iceberg]
catalog_uri = "sqlite:{}/catalog.db"
warehouse = "{}/warehouse"
[commit]
interval_ms = 200
"#,
        broker.bootstrap,
        plugins
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>(),
        dir.path().display(),
        dir.path().display()
    );
    let cfg_path = dir.path().join("admetrics.toml");
    std::fs::write(&cfg_path, cfg_text).unwrap();
    let cfg = Config::load(&cfg_path).unwrap();

    let now = chrono::Utc::now().timestamp_millis();
    let base = (now - 2 * 3_600_000).div_euclid(60_000) * 60_000;
    let msgs = build_input(base);
    let input_path = dir.path().join("input.jsonl");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input_path).unwrap());
        for m in &msgs {
            writeln!(f, "{}", serde_json::json!({"partition": m.partition, "phase": m.phase, "payload": m.payload})).unwrap();
        }
    }

    let status = Arc::new(Status::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let daemon = {
        let (cfg, status) = (cfg.clone(), status.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Runtime::new().unwrap();
            rt.block_on(admetrics::pipeline::run(cfg, status, async move {
                let _ = stop_rx.await;
            }))
        })
    };

    let mut producer = TestProducer::new(&broker.bootstrap, TOPIC);
    let mut expected_end: BTreeMap<i32, i64> = BTreeMap::new();
    let committed = |want: &BTreeMap<i32, i64>| {
        let got = status.committed_offsets.lock().unwrap();
        want.iter()
            .all(|(p, o)| got.get(p).copied().unwrap_or(0) >= *o)
    };
    for phase in [1u8, 2] {
        for m in msgs.iter().filter(|m| m.phase == phase) {
            producer.send(m.partition, &m.key, m.payload.as_bytes());
            *expected_end.entry(m.partition).or_default() += 1;
        }
        producer.flush();
        wait_for(
            &format!("phase {phase} committed"),
            Duration::from_secs(120),
            || {
                assert!(
                    !daemon.is_finished(),
                    "the daemon stopped early: {:?}",
                    status.commits
                );
                committed(&expected_end)
            },
        );
    }
    // Every data window (10 minutes → 10 windows, plus the stragglers' window, already closed)
    // must have been finalised by the far-future events.
    wait_for("data windows finalised", Duration::from_secs(30), || {
        status.windows_finalized.get() >= 10
    });
    stop_tx.send(()).unwrap();
    let summary = daemon.join().unwrap().expect("daemon run");
    assert_eq!(
        summary.committed_offsets, expected_end,
        "final committed offsets"
    );
    assert_eq!(status.messages.get(), msgs.len() as u64);
    assert_eq!(
        status.valid_events.get() + status.dead_letters.load(Relaxed),
        msgs.len() as u64
    );

    let out = run_python(
        "verify_e2e.py",
        &[
            format!("--catalog={}", dir.path().join("catalog.db").display()),
            format!("--warehouse={}", dir.path().join("warehouse").display()),
            format!("--input={}", input_path.display()),
            "--window-secs=60".into(),
            format!("--lookback-secs={LOOKBACK_SECS}"),
            format!("--ooo-ms={OOO_MS}"),
        ],
    );
    println!("{out}");
}
