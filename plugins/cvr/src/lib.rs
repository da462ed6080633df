//! CVR plugin: clicks, conversions and conversion rate (conversions / clicks) per campaign per window.
use admetrics_plugin_sdk::*;

struct Cvr;

impl Plugin for Cvr {
    const WIDTH: usize = 2; // [clicks, conversions]

    fn info() -> PluginInfo {
        info("cvr", env!("CARGO_PKG_VERSION"), &["cvr"], false)
    }

    fn accumulate(acc: &mut Counters, events: &Events) -> Result<(), String> {
        for e in events.iter() {
            match e.kind {
                EventKind::Click => acc.add(e.campaign, NO_AD, &[1, 0]),
                EventKind::Conversion => acc.add(e.campaign, NO_AD, &[0, 1]),
                EventKind::Impression => {}
            }
        }
        Ok(())
    }

    fn finish(acc: &Counters) -> Vec<MetricRow> {
        acc.iter()
            .map(|(c, _, v)| rate_row(c, "cvr", v[1] as f64, v[0] as f64))
            .collect()
    }
}

export_plugin!(Cvr);
