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
