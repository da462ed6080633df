//! The live view: the newest window's figures per campaign, for the terminal output
//! (`progress`) and `/status`. Built from the metric rows each tick publishes; it never feeds
//! back into the pipeline.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::sink::schema::MetricRecord;
use crate::status::{CampaignLine, Status};

/// The newest window with metrics and its per-campaign lines.
#[derive(Debug)]
pub(super) struct LiveView {
    newest: i64,
    lines: BTreeMap<Arc<str>, CampaignLine>,
}

impl Default for LiveView {
    fn default() -> Self {
        LiveView {
            newest: i64::MIN,
            lines: BTreeMap::new(),
        }
    }
}

impl LiveView {
    /// Folds one tick's rows in and publishes the newest window's lines to `status`.
    pub fn update(&mut self, rows: &[MetricRecord], status: &Status) {
        let Some(newest) = rows.iter().map(|r| r.window_start_ms).max() else {
            return;
        };
        if newest > self.newest {
            (self.newest, self.lines) = (newest, BTreeMap::new());
        }
        if newest < self.newest {
            return;
        }
        for r in rows.iter().filter(|r| {
            r.window_start_ms == newest && !r.shadow && r.dimensions.is_none() && shown(&r.plugin)
        }) {
            let line = self
                .lines
                .entry(r.campaign_id.clone())
                .or_insert_with(|| CampaignLine {
                    campaign: r.campaign_id.to_string(),
                    ..Default::default()
                });
            match r.metric.as_str() {
                "ctr" => (line.clicks, line.impressions) = (r.numerator, r.denominator),
                "cvr" => line.conversions = r.numerator,
                "revenue" => line.revenue = r.value,
                "attributed_revenue" => {} // per ad; summed below
                _ => {}
            }
        }
        for line in self.lines.values_mut() {
            line.attributed_revenue = rows
                .iter()
                .filter(|r| {
                    r.window_start_ms == newest
                        && !r.shadow
                        && r.dimensions.is_none()
                        && shown(&r.plugin)
                        && r.metric == "attributed_revenue"
                        && *r.campaign_id == *line.campaign
                })
                .map(|r| r.value)
                // fold from +0.0: f64's `sum` of nothing is -0.0, shown as "-0.00".
                .fold(0.0, |a, v| a + v)
                .max(line.attributed_revenue);
        }
        *status.current.lock().unwrap() = (newest, self.lines.values().cloned().collect());
    }
}

/// The plugins whose totals the live view shows: the seed's three numbers (CTR, CVR, last-click
/// revenue). Other attribution models emit the same metric names and would overwrite them.
fn shown(plugin: &str) -> bool {
    matches!(plugin, "ctr" | "cvr" | "attribution")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(plugin: &str, metric: &str, dims: Option<&str>, num: f64, den: f64) -> MetricRecord {
        MetricRecord {
            window_start_ms: 60_000,
            window_end_ms: 120_000,
            campaign_id: "c".into(),
            ad_id: metric.eq("attributed_revenue").then(|| "a".into()),
            dimensions: dims.map(Into::into),
            plugin_params: None,
            currency: None,
            metric: metric.into(),
            value: if metric == "ctr" { num / den } else { num },
            numerator: num,
            denominator: den,
            plugin: plugin.into(),
            plugin_version: "1".into(),
            plugin_sha256: "s".into(),
            revision: 1,
            partition: 0,
            is_final: false,
            computed_at_ms: 0,
            withheld: false,
            shadow: false,
        }
    }

    /// Breakdown cells and the other attribution models' rows (same metric names) are not the
    /// line's figures: totals of ctr, cvr and last click are.
    #[test]
    fn lines_show_totals_and_last_click() {
        let rows = [
            row("ctr", "ctr", None, 3.0, 30.0),
            row("ctr", "ctr", Some("country=DE;device=ios"), 1.0, 7.0),
            row("cvr", "cvr", Some("country=DE;device=ios"), 1.0, 1.0),
            row("cvr", "cvr", None, 2.0, 3.0),
            row("attribution-linear", "revenue", None, 50.0, 2.0),
            row("attribution", "revenue", None, 50.0, 2.0),
            row("attribution-position", "revenue", None, 50.0, 2.0),
            row("attribution", "attributed_revenue", None, 40.0, 1.0),
            row("attribution-linear", "attributed_revenue", None, 45.0, 2.0),
        ];
        let status = Status::default();
        LiveView::default().update(&rows, &status);
        let (newest, lines) = status.current.lock().unwrap().clone();
        assert_eq!(newest, 60_000);
        assert_eq!(
            lines,
            vec![CampaignLine {
                campaign: "c".into(),
                impressions: 30.0,
                clicks: 3.0,
                conversions: 2.0,
                revenue: 50.0,
                attributed_revenue: 40.0,
            }]
        );
    }
}
