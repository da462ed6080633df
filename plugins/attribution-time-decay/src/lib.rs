//! Time-decay attribution: each conversion's revenue is split over the user's touchpoints
//! (clicks inside the lookback; views when view-through is on and there is no click) in
//! proportion to `2^(-age / half_life)`, in integer micro-units by largest remainder, so
//! Σ attributed + Σ unattributed = Σ revenue exactly. Metrics as the last-click plugin:
//! `revenue`, `attributed_revenue` per (campaign, ad), `unattributed_revenue`. Parameters (all
//! optional): `half_life_secs` (default 604800, 7 days), `lookback_secs`, `view_lookback_secs`.
//! Definitions (the fixed-point weights): plugins/attribution-core/src/lib.rs.
use attribution_core::plugin::{Attribution, Variant};
use attribution_core::{DEFAULT_HALF_LIFE_SECS, Model};

/// The plugin's name and model.
pub struct TimeDecay;

impl Variant for TimeDecay {
    const NAME: &'static str = "attribution-time-decay";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const MODEL: Model = Model::TimeDecay {
        half_life_ms: DEFAULT_HALF_LIFE_SECS * 1000,
    };
}

admetrics_plugin_sdk::export_plugin!(Attribution<TimeDecay>);
