//! Position-based (40/20/40) attribution: the first and the last of the user's touchpoints get
//! 40 % of each conversion's revenue each, the ones between share 20 % equally (one touchpoint:
//! 100 %; two: 50/50). Touchpoints: clicks inside the lookback; views when view-through is on and
//! there is no click. Integer micro-units by largest remainder, so Σ attributed + Σ unattributed
//! = Σ revenue exactly. Metrics as the last-click plugin: `revenue`, `attributed_revenue` per
//! (campaign, ad), `unattributed_revenue`. Parameters (all optional): `lookback_secs`,
//! `view_lookback_secs`. Definitions: plugins/attribution-core/src/lib.rs.
use attribution_core::Model;
use attribution_core::plugin::{Attribution, Variant};

/// The plugin's name and model.
pub struct Position;

impl Variant for Position {
    const NAME: &'static str = "attribution-position";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const MODEL: Model = Model::PositionBased;
}

admetrics_plugin_sdk::export_plugin!(Attribution<Position>);
