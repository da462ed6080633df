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
    // Counters kept per (campaign, ad) key; (campaign, NO_AD) holds campaign totals. Keys can
    // also carry a breakdown cell (`add_dims`), as plugins/ctr does.
    const WIDTH: usize = 1;

    // Parameter names accepted from `[plugins.config.impression-share]`; any other is refused.
    const PARAMS: &'static [&'static str] = &[];

    fn init(_params: &Params) -> Result<(Self, PluginInfo), String> {
        // name: [a-z0-9_-]+, unique among loaded plugins; version: your plugin's semver;
        // metrics: every metric name you may emit. Then, as needed: .with_touchpoints(),
        // .with_views(), .with_columns(&[Column::Device]), .with_window(WindowSize::Hour).
        // Read parameters with params.get_str / get_u64 / get_f64 / get_list / get_breakdown
        // and keep them in `Self`, which accumulate and finish receive.
        let info = info(
            "impression-share",
            env!("CARGO_PKG_VERSION"),
            &["impression_share"],
        );
        Ok((Template, info))
    }

    fn accumulate(&self, acc: &mut Counters, events: &Events) -> Result<(), String> {
        for e in events.iter().filter(|e| e.kind == EventKind::Impression) {
            acc.add(e.campaign, e.ad, &[1]);
            acc.add(e.campaign, NO_AD, &[1]);
        }
        Ok(())
    }

    fn finish(&self, acc: &Counters) -> Vec<MetricRow> {
        let totals: Vec<(u32, i64)> = acc
            .iter()
            .filter(|(_, ad, _, _)| ad.is_none())
            .map(|(c, _, _, v)| (c, v[0]))
            .collect();
        acc.iter()
            .filter_map(|(c, ad, dims, v)| {
                let total = totals.iter().find(|(tc, _)| *tc == c)?.1;
                Some(rate_row_dims(
                    c,
                    Some(ad?),
                    dims,
                    "impression_share",
                    v[0] as f64,
                    total as f64,
                ))
            })
            .collect()
    }
}

export_plugin!(Template);

// Native tests: `cargo test --release -p metric-template`.
#[cfg(test)]
mod tests {
    use super::*;
    use admetrics_plugin_sdk::testing::*;

    #[test]
    fn share_of_impressions_per_ad() {
        let p = Harness::<Template>::new(&[]).unwrap();
        let rows = p
            .run(&[
                TestEvent::impression(1, 10),
                TestEvent::impression(1, 10),
                TestEvent::impression(1, 11),
                TestEvent::click(1, 11),
            ])
            .unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.ad, r.numerator, r.denominator))
            .collect();
        assert_eq!(got, vec![(Some(10), 2.0, 3.0), (Some(11), 1.0, 3.0)]);
        assert!(Harness::<Template>::new(&[("typo", "1")]).is_err());
    }
}
