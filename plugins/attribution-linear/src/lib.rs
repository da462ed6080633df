//! Linear attribution: each conversion's revenue is split equally over the user's touchpoints
//! (clicks inside the lookback; views when view-through is on and there is no click), in integer
//! micro-units by largest remainder, so Σ attributed + Σ unattributed = Σ revenue exactly.
//! Metrics as the last-click plugin: `revenue`, `attributed_revenue` per (campaign, ad),
//! `unattributed_revenue`. Parameters (all optional): `lookback_secs`, `view_lookback_secs`.
//! Definitions: plugins/attribution-core/src/lib.rs.
use attribution_core::Model;
use attribution_core::plugin::{Attribution, Variant};

/// The plugin's name and model.
pub struct Linear;

impl Variant for Linear {
    const NAME: &'static str = "attribution-linear";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const MODEL: Model = Model::Linear;
}

admetrics_plugin_sdk::export_plugin!(Attribution<Linear>);
