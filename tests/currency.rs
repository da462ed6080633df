//! Currency conversion end to end: `admetrics run --file` over conversions in the reporting
//! currency (USD), in EUR and GBP with dated rates (one day each side of a rate change, amounts
//! that round half to even), in a currency with no rate (XXX), in GBP after the entry that stops
//! listing it, in EUR before the first rates date, and a conversion without a currency. An
//! independent reader (`tests/verify_currency.py`: tomllib, Decimal, PyIceberg, DuckDB) checks
//! that revenue metrics equal the reference converted sums, that every rate-less conversion is a
//! dead letter `unknown_currency` naming currency and day and counts nowhere, that
//! campaign_events keeps the original amount and currency beside the converted one (and the
//! metrics can be recomputed from it), and that every metric row carries the reporting currency.

mod support;

use support::*;

#[test]
fn conversions_are_summed_in_the_reporting_currency_and_rate_less_ones_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ev = |id: &str, kind: &str, time: &str, campaign: &str, user: &str, extra: &str| {
        format!(
            r#"{{"event_id":"{id}","event_type":"{kind}","event_time":"{time}","campaign_id":"{campaign}","ad_id":"{campaign}-ad","user_id":"{user}"{extra}}}"#
        )
    };
    let conv = |id: &str, time: &str, campaign: &str, revenue: &str, currency: &str| {
        ev(
            id,
            "conversion",
            time,
            campaign,
            &format!("u-{id}"),
            &format!(r#","revenue":"{revenue}","currency":"{currency}""#),
        )
    };
    let lines = [
        // 2026-01-01: EUR 1.08, GBP 1.27.
        ev(
            "i1",
            "impression",
            "2026-01-01T23:59:00Z",
            "camp-a",
            "u1",
            "",
        ),
        ev("c1", "click", "2026-01-01T23:59:01Z", "camp-a", "u1", ""),
        // A click saying XXX: not a conversion, untouched.
        ev(
            "c2",
            "click",
            "2026-01-01T23:59:02Z",
            "camp-a",
            "u2",
            r#","currency":"XXX""#,
        ),
        conv("usd", "2026-01-01T23:59:03Z", "camp-a", "12.34", "USD"),
        conv("eur1", "2026-01-01T23:59:04Z", "camp-a", "10.00", "EUR"), // 10.80
        conv("gbp1", "2026-01-01T23:59:05Z", "camp-a", "0.01", "GBP"),  // 0.0127
        conv(
            "eur-tiny",
            "2026-01-01T23:59:06Z",
            "camp-a",
            "0.000005",
            "EUR",
        ), // 5.4 → 5 micros
        // A copy of eur1: in campaign_events flagged, counted nowhere.
        conv("eur1", "2026-01-01T23:59:07Z", "camp-a", "10.00", "EUR"),
        // No rate: dead letters, counted nowhere.
        ev(
            "i2",
            "impression",
            "2026-01-01T23:59:10Z",
            "camp-x",
            "u3",
            "",
        ),
        conv("xxx", "2026-01-01T23:59:11Z", "camp-x", "5.00", "XXX"),
        conv("eur-early", "2025-12-31T23:59:59Z", "camp-a", "3.00", "EUR"),
        // Without a currency: refused by the decoder already (missing_field).
        ev(
            "nocur",
            "conversion",
            "2026-01-01T23:59:12Z",
            "camp-a",
            "u4",
            r#","revenue":"1.00""#,
        ),
        // 2026-01-02: EUR 1.10 only.
        conv("eur2", "2026-01-02T00:00:00Z", "camp-a", "100", "EUR"), // 110
        conv(
            "eur-half1",
            "2026-01-02T00:00:01Z",
            "camp-a",
            "0.000005",
            "EUR",
        ), // 5.5 → 6
        conv(
            "eur-half2",
            "2026-01-02T00:00:02Z",
            "camp-b",
            "0.000015",
            "EUR",
        ), // 16.5 → 16
        conv("usd2", "2026-01-02T00:00:03Z", "camp-b", "1.5", "USD"),
        conv("gbp2", "2026-01-02T00:00:04Z", "camp-b", "1.00", "GBP"), // GBP not listed: dead
        ev(
            "i3",
            "impression",
            "2026-01-02T00:01:30Z",
            "camp-b",
            "u5",
            "",
        ),
    ];
    let events = d.join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let cfg = d.join("currency.toml");
    std::fs::write(
        &cfg,
        format!(
            "[plugins]\npaths = {}\n\
             [iceberg]\ncatalog_uri = \"sqlite:{d}/catalog.db\"\nwarehouse = \"{d}/warehouse\"\n\
             [currency]\nreporting = \"USD\"\n\
             [[currency.rates]]\ndate = \"2026-01-01\"\nEUR = 1.08\nGBP = \"1.27\"\n\
             [[currency.rates]]\ndate = 2026-01-02\nEUR = 1.1\n",
            plugins_toml(),
            d = d.display()
        ),
    )
    .unwrap();
    let o = admetrics()
        .args(["run", "--config"])
        .arg(&cfg)
        .arg("--file")
        .arg(&events)
        .args(["--event-time-bounds", "off"])
        .output()
        .unwrap();
    assert!(o.status.success(), "run --file:\n{}", output_text(&o));
    let verify = || {
        run_python(
            "verify_currency.py",
            &[
                "--events".into(),
                events.display().to_string(),
                "--config".into(),
                cfg.display().to_string(),
                "--catalog".into(),
                format!("{}/catalog.db", d.display()),
                "--warehouse".into(),
                format!("{}/warehouse", d.display()),
            ],
        )
    };
    let out = verify();
    println!("{out}");
    // The figures the reader found, against the ones worked out by hand above.
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        v["dead_letters"],
        serde_json::json!({"unknown_currency": 3, "missing_field": 1})
    );
    let rev = &v["revenue_micros"];
    let minute = |t: &str| {
        chrono::DateTime::parse_from_rfc3339(t)
            .unwrap()
            .timestamp_millis()
    };
    // 12.34 + 10.80 + 0.0127 + 0.000005 (→ 5 micros) in camp-a's 23:59 window; 110 + 6 micros
    // in its 00:00 window; 16 micros + 1.5 in camp-b's.
    assert_eq!(
        rev[format!("camp-a@{}", minute("2026-01-01T23:59:00Z"))],
        12_340_000 + 10_800_000 + 12_700 + 5
    );
    assert_eq!(
        rev[format!("camp-a@{}", minute("2026-01-02T00:00:00Z"))],
        110_000_006
    );
    assert_eq!(
        rev[format!("camp-b@{}", minute("2026-01-02T00:00:00Z"))],
        1_500_016
    );
    assert!(
        rev.as_object()
            .unwrap()
            .keys()
            .all(|k| !k.contains("camp-x")),
        "{rev}"
    );

    // A restatement sums `revenue` as the daemon converted it: with another reporting currency
    // it refuses, naming the currency; with the same one it runs, and its rows carry it (the
    // reader checks every row again).
    let restate = |cfg: &std::path::Path| {
        admetrics()
            .args(["restate", "--config"])
            .arg(cfg)
            .arg("--plugin")
            .arg(wasm("attribution"))
            .args([
                "--from",
                "2026-01-01T23:59:00Z",
                "--to",
                "2026-01-02T00:02:00Z",
            ])
            .output()
            .unwrap()
    };
    let eur_cfg = d.join("eur.toml");
    std::fs::write(
        &eur_cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("reporting = \"USD\"", "reporting = \"EUR\"")
            .replace("EUR = 1.08", "USD = 0.93")
            .replace("EUR = 1.1", "USD = 0.91"),
    )
    .unwrap();
    let o = restate(&eur_cfg);
    let text = output_text(&o);
    assert!(
        !o.status.success() && text.contains("not in the reporting currency EUR"),
        "{text}"
    );
    let o = restate(&cfg);
    assert!(o.status.success(), "{}", output_text(&o));
    println!("{}", verify());
}
