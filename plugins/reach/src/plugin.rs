//! The WIT exports (`admetrics:metrics@0.2.0`, world `metric-plugin`) through the SDK. The
//! SDK's `Plugin` trait keeps `i64` counters; this plugin's accumulator is its own (`acc`), so it
//! implements the generated `Guest` trait and uses the SDK's bindings, batch checks
//! (`Events::new` with the declared `user` column), plugin-info builder and row builders.

use std::sync::{Mutex, MutexGuard};

use admetrics_plugin_sdk::bindings::Guest;
use admetrics_plugin_sdk::{
    Column, EventBatch, EventKind, Events, MetricRow, PluginInfo, WindowSize, info, rate_row,
    sum_row,
};

use crate::acc;
use crate::params::{Config, Window};

/// The columns the plugin declares.
const COLUMNS: [Column; 1] = [Column::User];

/// The parameters the last successful `init` accepted (the host calls `init` first on every
/// fresh instance; a failed `init` leaves the instance unconfigured).
static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

fn config() -> MutexGuard<'static, Option<Config>> {
    CONFIG.lock().unwrap_or_else(|e| e.into_inner())
}

/// The plugin's exports.
pub struct Reach;

impl Guest for Reach {
    fn init(params: Vec<(String, String)>) -> Result<PluginInfo, String> {
        let mut slot = config();
        *slot = None;
        let cfg = Config::parse(&params)?;
        *slot = Some(cfg);
        let window = match cfg.window {
            Window::Minute => WindowSize::Minute,
            Window::Hour => WindowSize::Hour,
            Window::Day => WindowSize::Day,
        };
        Ok(
            info("reach", env!("CARGO_PKG_VERSION"), &["reach", "frequency"])
                .with_columns(&COLUMNS)
                .with_window(window),
        )
    }

    fn accumulate(acc: Vec<u8>, events: EventBatch) -> Result<Vec<u8>, String> {
        let cfg = (*config()).ok_or("reach: called before a successful init")?;
        let events = Events::new(events, &COLUMNS, 0)?;
        let impressions = events
            .iter()
            .filter(|e| e.kind == EventKind::Impression)
            // Events::new checked that the declared user column has one entry per event.
            .map(|e| (e.campaign, e.user.unwrap_or_default()));
        acc::accumulate(&acc, impressions, cfg.exact_threshold)
    }

    fn finish(acc: Vec<u8>) -> Result<Vec<MetricRow>, String> {
        Ok(acc::finish(&acc)?
            .into_iter()
            .map(|r| match r.metric {
                "frequency" => rate_row(r.campaign, r.metric, r.numerator, r.denominator),
                _ => sum_row(r.campaign, None, r.metric, r.numerator, r.denominator),
            })
            .collect())
    }
}

admetrics_plugin_sdk::bindings::__export_metric_plugin!(Reach with_types_in admetrics_plugin_sdk::bindings);
