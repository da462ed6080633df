//! Fault injection for the crash tests. `ADMETRICS_FAULT=<point>[@final]:<n>` aborts the process
//! (SIGABRT: no unwinding, no flushing, as good as `kill -9`) the n-th time execution reaches
//! `<point>`; with `@final`, only passes whose commit carries final metric rows count. Points:
//! `before-commit:<table>` (its data files are written, the catalog commit not yet made),
//! `after-commit:<table>`, and `before-offset-store` (Iceberg committed, Kafka not yet told).
//!
//! `ADMETRICS_FAULT=ambiguous-commit:<n>` does not abort: every n-th catalog commit is applied
//! and then answered with an error, as a catalog whose response is lost would (see
//! [`ambiguous_commit`]).
//!
//! `ADMETRICS_FAULT=lose-race:<n>` does not abort: each of the first n catalog commits waits,
//! after its base table was loaded and before the catalog's compare-and-swap, until another
//! writer (a running daemon) has committed the same table, so it loses the race for real (see
//! [`lose_race`]).
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

/// How an ambiguous commit (applied by the catalog, then failed) is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ambiguous {
    /// As a compare-and-swap conflict: retryable, so iceberg-rust retries it inside
    /// `Transaction::commit` on the reloaded table (which already holds the commit).
    Conflict,
    /// As "the commit state is unknown" (a REST 5xx, a lost response): not retryable for
    /// iceberg-rust; the sink retries the whole batch.
    Unknown,
}

/// Whether the catalog commit just applied is to be reported as failed, and how
/// (`ambiguous-commit:<n>`: every n-th commit, alternately as each kind).
pub fn ambiguous_commit() -> Option<Ambiguous> {
    static HITS: AtomicU64 = AtomicU64::new(0);
    let s = spec().filter(|s| s.point == "ambiguous-commit" && s.n > 0)?;
    let hit = HITS.fetch_add(1, Ordering::Relaxed) + 1;
    if !hit.is_multiple_of(s.n) {
        return None;
    }
    let kind = if (hit / s.n) % 2 == 1 {
        Ambiguous::Conflict
    } else {
        Ambiguous::Unknown
    };
    eprintln!("admetrics: fault injection: commit {hit} applied, reported as {kind:?}");
    Some(kind)
}

/// Whether the catalog commit about to be made is to wait for another writer's commit first
/// (`lose-race:<n>`: the first n commits of the process), so that it loses the race.
pub fn lose_race() -> bool {
    static HITS: AtomicU64 = AtomicU64::new(0);
    spec().is_some_and(|s| s.point == "lose-race" && HITS.fetch_add(1, Ordering::Relaxed) < s.n)
}
