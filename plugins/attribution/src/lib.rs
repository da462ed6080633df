//! Last-click attribution: each conversion's revenue is credited to the campaign and ad of the
//! user's latest click inside the lookback (the host sends exactly those clicks as touchpoints),
//! or reported as unattributed. Revenue lands in the window of the conversion.
//!
//! Rows: `revenue` and `unattributed_revenue` per campaign of the conversion, `attributed_revenue`
//! per credited (campaign, ad). Per window, Σ attributed + Σ unattributed = Σ revenue exactly, because
//! all sums are integer micro-units.
use admetrics_plugin_sdk::*;

struct LastClick;

const MICROS: f64 = 1_000_000.0;

impl Plugin for LastClick {
    // (campaign, NO_AD): [revenue, conversions, unattributed revenue, unattributed conversions]
    // (campaign, ad):    [attributed revenue, attributed conversions, 0, 0]
    const WIDTH: usize = 4;

    fn info() -> PluginInfo {
        info(
            "attribution",
            env!("CARGO_PKG_VERSION"),
            &["revenue", "attributed_revenue", "unattributed_revenue"],
            true,
        )
    }

    fn accumulate(acc: &mut Counters, events: &Events) -> Result<(), String> {
        for e in events.iter().filter(|e| e.kind == EventKind::Conversion) {
            let r = e.revenue_micros;
            // Latest click wins; on equal times the one received later (later in the list).
            match e.touchpoints.iter().rev().max_by_key(|t| t.time_ms) {
                Some(t) => {
                    acc.add(e.campaign, NO_AD, &[r, 1, 0, 0]);
                    acc.add(t.campaign, t.ad, &[r, 1, 0, 0]);
                }
                None => acc.add(e.campaign, NO_AD, &[r, 1, r, 1]),
            }
        }
        Ok(())
    }

    fn finish(acc: &Counters) -> Vec<MetricRow> {
        let mut rows = Vec::new();
        for (c, ad, v) in acc.iter() {
            match ad {
                None => {
                    rows.push(sum_row(
                        c,
                        None,
                        "revenue",
                        v[0] as f64 / MICROS,
                        v[1] as f64,
                    ));
                    rows.push(sum_row(
                        c,
                        None,
                        "unattributed_revenue",
                        v[2] as f64 / MICROS,
                        v[3] as f64,
                    ));
                }
                Some(ad) => rows.push(sum_row(
                    c,
                    Some(ad),
                    "attributed_revenue",
                    v[0] as f64 / MICROS,
                    v[1] as f64,
                )),
            }
        }
        rows
    }
}

export_plugin!(LastClick);
