//! Differential: the hand-written RFC 3339 fast path must agree with chrono on every string
//! chrono accepts, and accept nothing chrono rejects.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let ours = admetrics_event::parse_rfc3339_ms(s);
    let chrono = chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis());
    assert_eq!(ours, chrono, "{s:?}");
});
