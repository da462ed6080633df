//! The event decoder on arbitrary bytes: it must never panic, whatever it accepts must satisfy
//! every rule the dead-letter reasons promise to enforce, and its fast path must give exactly
//! what the general (sonic-rs + serde) decoder gives.
#![no_main]

use admetrics_event::{EventKind, ValidationConfig, decode, decode_reference};
use libfuzzer_sys::fuzz_target;

const NOW_MS: i64 = 1_764_000_000_000; // 2025-11-24

fuzz_target!(|data: &[u8]| {
    let limits = ValidationConfig::default();
    let decoded = decode(data, NOW_MS, &limits);
    assert_eq!(
        decoded,
        decode_reference(data, NOW_MS, &limits),
        "fast path differs from the general decoder"
    );
    match decoded {
        Ok(ev) => {
            assert!(
                data.len() <= limits.max_message_bytes,
                "oversized message accepted"
            );
            for id in [&ev.event_id, &ev.campaign_id, &ev.ad_id, &ev.user_id] {
                assert!(!id.is_empty() && id.len() <= 256, "id {id:?} accepted");
            }
            assert!(
                ev.time_ms <= NOW_MS + limits.max_future_ms,
                "future time accepted"
            );
            assert!(
                ev.time_ms >= NOW_MS - limits.max_past_ms,
                "past time accepted"
            );
            assert!(ev.revenue_micros >= 0, "negative revenue accepted");
            assert!(
                ev.revenue_micros <= admetrics_event::MAX_REVENUE_MICROS,
                "revenue past DECIMAL(18,6) accepted"
            );
            if ev.kind == EventKind::Conversion {
                let c = ev
                    .currency
                    .as_deref()
                    .expect("conversion without currency accepted");
                assert!(
                    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase()),
                    "currency {c:?} accepted"
                );
            } else {
                assert_eq!(ev.revenue_micros, 0, "revenue on a non-conversion");
            }
            // Whatever was accepted is valid JSON to an independent parser too.
            assert!(
                std::str::from_utf8(data).is_ok(),
                "non-UTF-8 payload accepted"
            );
        }
        Err(r) => assert!(
            !r.detail.is_empty(),
            "rejection {:?} without detail",
            r.reason
        ),
    }
});
