//! Template metric plugin: impressions per campaign and ad per window, with the share of the
//! campaign's impressions each ad got. Replace the logic; keep the shape.
//!
//! Rules of the road (see plugins/README.md):
//! - Pure and deterministic: no I/O, no clock, no randomness (the host replays events after a
//!   crash and expects the same answer).
//! - Every row names only campaign/ad ids that came in the events.
//! - Rates carry numerator and denominator; sums carry the count that contributed.
use admetrics_plugin_sdk::*;

struct Template;

impl Plugin for Template {
    // Counters kept per (campaign, ad) key; (campaign, NO_AD) holds campaign totals.
    const WIDTH: usize = 1;

    fn info() -> PluginInfo {
        // name: [a-z0-9_-]+, unique among loaded plugins; version: your plugin's semver;
        // metrics: every metric name you may emit; last: whether you need touchpoints.
        info(
            "impression-share",
            env!("CARGO_PKG_VERSION"),
            &["impression_share"],
            false,
        )
    }

    fn accumulate(acc: &mut Counters, events: &Events) -> Result<(), String> {
        for e in events.iter().filter(|e| e.kind == EventKind::Impression) {
            acc.add(e.campaign, e.ad, &[1]);
            acc.add(e.campaign, NO_AD, &[1]);
        }
        Ok(())
    }

    fn finish(acc: &Counters) -> Vec<MetricRow> {
        let totals: Vec<(u32, i64)> = acc
            .iter()
            .filter(|(_, ad, _)| ad.is_none())
            .map(|(c, _, v)| (c, v[0]))
            .collect();
        acc.iter()
            .filter_map(|(c, ad, v)| {
                let total = totals.iter().find(|(tc, _)| *tc == c)?.1;
                let mut row = rate_row(c, "impression_share", v[0] as f64, total as f64);
                row.ad = Some(ad?);
                Some(row)
            })
            .collect()
    }
}

export_plugin!(Template);
