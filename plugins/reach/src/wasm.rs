//! The WIT exports (`admetrics:metrics@0.2.0`, world `metric-plugin`). The SDK's `Plugin` trait
//! keeps `i64` counters; this plugin's accumulator is its own (`acc`), so it implements the
//! generated `Guest` trait directly, as the plugin guide allows.

use std::sync::Mutex;

use crate::acc;
use crate::params::{Config, Window};

wit_bindgen::generate!({
    path: "../../wit",
    world: "metric-plugin",
});

use admetrics::metrics::types::{Column, WindowSize};

/// The parameters `init` accepted (the host calls `init` first on every fresh instance).
static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

fn config() -> Result<Config, String> {
    CONFIG
        .lock()
        .map_err(|_| "reach: configuration lock poisoned".to_string())?
        .ok_or_else(|| "reach: called before init".to_string())
}

struct Reach;

impl Guest for Reach {
    fn init(params: Params) -> Result<PluginInfo, String> {
        let cfg = Config::parse(&params)?;
        *CONFIG
            .lock()
            .map_err(|_| "reach: configuration lock poisoned".to_string())? = Some(cfg);
        Ok(PluginInfo {
            name: "reach".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            metrics: vec!["reach".into(), "frequency".into()],
            wants_touchpoints: false,
            wants_views: false,
            columns: vec![Column::User],
            window: match cfg.window {
                Window::Minute => WindowSize::Minute,
                Window::Hour => WindowSize::Hour,
                Window::Day => WindowSize::Day,
            },
        })
    }

    fn accumulate(acc: Vec<u8>, events: EventBatch) -> Result<Vec<u8>, String> {
        let cfg = config()?;
        acc::accumulate(
            &acc,
            &events.kinds,
            &events.campaigns,
            &events.users,
            cfg.exact_threshold,
        )
    }

    fn finish(acc: Vec<u8>) -> Result<Vec<MetricRow>, String> {
        Ok(acc::finish(&acc)?
            .into_iter()
            .map(|r| MetricRow {
                campaign: r.campaign,
                ad: None,
                dimensions: Vec::new(),
                metric: r.metric.into(),
                value: r.value,
                numerator: r.numerator,
                denominator: r.denominator,
            })
            .collect())
    }
}

export!(Reach);
