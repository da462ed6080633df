//! Fault injection for the crash tests. `ADMETRICS_FAULT=<point>[@final]:<n>` aborts the process
//! (SIGABRT: no unwinding, no flushing, as good as `kill -9`) the n-th time execution reaches
//! `<point>`; with `@final`, only passes whose commit carries final metric rows count. Points:
//! `before-commit:<table>` (its data files are written, the catalog commit not yet made),
//! `after-commit:<table>`, and `before-offset-store` (Iceberg committed, Kafka not yet told).
//! Unset (always, outside tests) it costs one initialised `OnceLock` read per commit.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

struct Spec {
    point: String,
    only_final: bool,
    n: u64,
}

fn spec() -> Option<&'static Spec> {
    static SPEC: OnceLock<Option<Spec>> = OnceLock::new();
    SPEC.get_or_init(|| {
        let v = std::env::var("ADMETRICS_FAULT").ok()?;
        let (point, n) = v.rsplit_once(':')?;
        let (point, only_final) = match point.strip_suffix("@final") {
            Some(p) => (p, true),
            None => (point, false),
        };
        Some(Spec {
            point: point.to_string(),
            only_final,
            n: n.parse().ok()?,
        })
    })
    .as_ref()
}

/// Marks a crash point; `final_rows`: whether this commit carries final metric rows.
pub fn point(name: &str, final_rows: bool) {
    static HITS: AtomicU64 = AtomicU64::new(0);
    if let Some(s) = spec()
        && s.point == name
        && (!s.only_final || final_rows)
        && HITS.fetch_add(1, Ordering::Relaxed) + 1 == s.n
    {
        eprintln!(
            "admetrics: fault injection: aborting at {name} (pass {})",
            s.n
        );
        std::process::abort();
    }
}
