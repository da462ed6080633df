//! CTR plugin: impressions, clicks and click-through rate per campaign per window.
use admetrics_plugin_sdk::*;

struct Ctr;

impl Plugin for Ctr {
    const WIDTH: usize = 2; // [impressions, clicks]

    fn info() -> PluginInfo {
        info("ctr", env!("CARGO_PKG_VERSION"), &["ctr"], false)
    }

    fn accumulate(acc: &mut Counters, events: &Events) -> Result<(), String> {
        for e in events.iter() {
            match e.kind {
                EventKind::Impression => acc.add(e.campaign, NO_AD, &[1, 0]),
                EventKind::Click => acc.add(e.campaign, NO_AD, &[0, 1]),
                EventKind::Conversion => {}
            }
        }
        Ok(())
    }

    fn finish(acc: &Counters) -> Vec<MetricRow> {
        acc.iter()
            .map(|(c, _, v)| rate_row(c, "ctr", v[1] as f64, v[0] as f64))
            .collect()
    }
}

export_plugin!(Ctr);
