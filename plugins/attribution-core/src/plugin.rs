//! The attribution plugin, generic over its model (feature `sdk`). A plugin crate names itself
//! and its model with a [`Variant`] and exports `Attribution<ItsVariant>`:
//!
//! ```text
//! use attribution_core::{Model, plugin::{Attribution, Variant}};
//! pub struct Linear;
//! impl Variant for Linear {
//!     const NAME: &'static str = "attribution-linear";
//!     const VERSION: &'static str = env!("CARGO_PKG_VERSION");
//!     const MODEL: Model = Model::Linear;
//! }
//! admetrics_plugin_sdk::export_plugin!(Attribution<Linear>);
//! ```
//!
//! Rows, per window (the conversion's; one-minute windows like the last-click plugin): `revenue`
//! and `unattributed_revenue` per campaign of the conversions, `attributed_revenue` per credited
//! (campaign, ad), all in micro-units summed exactly; the denominators count conversions (for
//! `attributed_revenue`: the conversions crediting that ad). Parameters: see
//! [`Settings::from_params`]; with `view_lookback_secs > 0` the plugin asks for views.
use std::marker::PhantomData;

use admetrics_plugin_sdk::{
    Counters, EventKind, Events, MetricRow, NO_AD, Params, Plugin, PluginInfo, info, sum_row,
};

use crate::{Kind, METRICS, Model, Settings, Touch, WIDTH, count_conversion, rows};

/// Names a plugin and its model.
pub trait Variant: 'static {
    /// The plugin's name (`[a-z0-9_-]+`).
    const NAME: &'static str;
    /// The plugin's own version (its crate's `CARGO_PKG_VERSION`).
    const VERSION: &'static str;
    /// Its model (for time decay: with the default half-life, which `half_life_secs` replaces).
    const MODEL: Model;
}

/// An attribution plugin of model `V::MODEL`.
pub struct Attribution<V> {
    settings: Settings,
    _variant: PhantomData<fn() -> V>,
}

impl<V> Attribution<V> {
    /// The settings `init` read.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

fn touch(t: &admetrics_plugin_sdk::Touchpoint) -> Option<Touch> {
    let kind = match t.kind {
        EventKind::Click => Kind::Click,
        EventKind::Impression => Kind::View,
        EventKind::Conversion => return None, // refused by the SDK's batch check
    };
    Some(Touch {
        time_ms: t.time_ms,
        campaign: t.campaign,
        ad: t.ad,
        kind,
    })
}

impl<V: Variant> Plugin for Attribution<V> {
    const WIDTH: usize = WIDTH;
    const PARAMS: &'static [&'static str] = V::MODEL.params();

    fn init(params: &Params) -> Result<(Self, PluginInfo), String> {
        let pairs: Vec<(&str, &str)> = params.iter().collect();
        let settings = Settings::from_params(V::MODEL, &pairs)?;
        let mut info = info(V::NAME, V::VERSION, &METRICS).with_touchpoints();
        if settings.wants_views() {
            info = info.with_views();
        }
        let plugin = Attribution {
            settings,
            _variant: PhantomData,
        };
        Ok((plugin, info))
    }

    fn accumulate(&self, acc: &mut Counters, events: &Events) -> Result<(), String> {
        let mut touches = Vec::new();
        for e in events.iter().filter(|e| e.kind == EventKind::Conversion) {
            touches.clear();
            touches.extend(e.touchpoints.iter().filter_map(touch));
            count_conversion(
                &self.settings,
                e.campaign,
                e.time_ms,
                e.revenue_micros,
                &touches,
                |campaign, ad, delta| acc.add(campaign, ad.unwrap_or(NO_AD), &delta),
            );
        }
        Ok(())
    }

    fn finish(&self, acc: &Counters) -> Vec<MetricRow> {
        acc.iter()
            .filter(|(_, _, dims, _)| dims.is_empty())
            .flat_map(|(campaign, ad, _, v)| rows(campaign, ad, v))
            .map(|r| sum_row(r.campaign, r.ad, r.metric, r.units(), r.count as f64))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use admetrics_plugin_sdk::testing::{Harness, TestEvent};

    struct Linear;
    impl Variant for Linear {
        const NAME: &'static str = "attribution-linear";
        const VERSION: &'static str = "0.1.0";
        const MODEL: Model = Model::Linear;
    }
    struct Decay;
    impl Variant for Decay {
        const NAME: &'static str = "attribution-time-decay";
        const VERSION: &'static str = "0.1.0";
        const MODEL: Model = Model::TimeDecay {
            half_life_ms: crate::DEFAULT_HALF_LIFE_SECS * 1000,
        };
    }
    struct Position;
    impl Variant for Position {
        const NAME: &'static str = "attribution-position";
        const VERSION: &'static str = "0.1.0";
        const MODEL: Model = Model::PositionBased;
    }

    const T: i64 = 1_800_000_000_000;
    const H: i64 = 3_600_000;

    fn sorted(mut rows: Vec<MetricRow>) -> Vec<(u32, Option<u32>, String, f64, f64)> {
        let mut out: Vec<_> = rows
            .drain(..)
            .map(|r| {
                assert!(r.dimensions.is_empty());
                assert_eq!(r.value, r.numerator);
                (r.campaign, r.ad, r.metric, r.numerator, r.denominator)
            })
            .collect();
        out.sort_by(|a, b| a.partial_cmp(b).unwrap());
        out
    }

    fn row(
        c: u32,
        ad: Option<u32>,
        m: &str,
        units: f64,
        n: f64,
    ) -> (u32, Option<u32>, String, f64, f64) {
        (c, ad, m.to_string(), units, n)
    }

    #[test]
    fn info_and_params() {
        let h = Harness::<Attribution<Linear>>::new(&[]).unwrap();
        let i = h.info();
        assert_eq!(i.name, "attribution-linear");
        assert_eq!(i.metrics, METRICS);
        assert!(i.wants_touchpoints && !i.wants_views);
        let h = Harness::<Attribution<Position>>::new(&[("view_lookback_secs", "3600")]).unwrap();
        assert!(h.info().wants_views);
        assert_eq!(h.info().name, "attribution-position");
        // Unknown names are refused (by the SDK, with the accepted ones), half_life_secs only by
        // the time-decay plugin, bad values by the core.
        let e = Harness::<Attribution<Linear>>::new(&[("half_life_secs", "60")])
            .err()
            .unwrap();
        assert!(
            e.contains("half_life_secs") && e.contains("lookback_secs"),
            "{e}"
        );
        let e = Harness::<Attribution<Linear>>::new(&[("lookback_secs", "x")])
            .err()
            .unwrap();
        assert!(e.contains("lookback_secs"), "{e}");
        let h = Harness::<Attribution<Decay>>::new(&[("half_life_secs", "60")]).unwrap();
        assert_eq!(h.info().name, "attribution-time-decay");
        assert!(Harness::<Attribution<Decay>>::new(&[("half_life_secs", "0")]).is_err());
    }

    /// Two clicks on different campaigns, one conversion of campaign 1 worth 1.000001, and one
    /// unattributed conversion: each model's rows, by hand.
    #[test]
    fn rows_per_model() {
        let events = [
            TestEvent::conversion(1, 0, 1_000_001)
                .at(T)
                .touchpoint(EventKind::Click, T - 2 * H, 1, 10)
                .touchpoint(EventKind::Click, T - H, 2, 20),
            TestEvent::conversion(1, 0, 500_000).at(T),
        ];
        let common = [
            row(1, None, "revenue", 1.500001, 2.0),
            row(1, None, "unattributed_revenue", 0.5, 1.0),
        ];
        let want = |a: f64, b: f64| {
            let mut w = common.to_vec();
            w.push(row(1, Some(10), "attributed_revenue", a, 1.0));
            w.push(row(2, Some(20), "attributed_revenue", b, 1.0));
            w.sort_by(|a, b| a.partial_cmp(b).unwrap());
            w
        };
        let lin = Harness::<Attribution<Linear>>::new(&[]).unwrap();
        // 1000001 / 2: 500000 each, the micro left to the later click.
        assert_eq!(sorted(lin.run(&events).unwrap()), want(0.5, 0.500001));
        let pos = Harness::<Attribution<Position>>::new(&[]).unwrap();
        assert_eq!(sorted(pos.run(&events).unwrap()), want(0.5, 0.500001));
        // Half-life 1 h: weights 1 : 2 → 333333.67, 666667.33 → 333334, 666667.
        let dec = Harness::<Attribution<Decay>>::new(&[("half_life_secs", "3600")]).unwrap();
        assert_eq!(sorted(dec.run(&events).unwrap()), want(0.333334, 0.666667));
        // The plugin's own lookback (90 min) drops the older click.
        let short = Harness::<Attribution<Linear>>::new(&[("lookback_secs", "5400")]).unwrap();
        let mut w = common.to_vec();
        w.push(row(2, Some(20), "attributed_revenue", 1.000001, 1.0));
        w.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(sorted(short.run(&events).unwrap()), w);
    }

    #[test]
    fn view_through() {
        let conv = TestEvent::conversion(1, 0, 3_000_000)
            .at(T)
            .touchpoint(EventKind::Impression, T - 3 * H, 1, 11)
            .touchpoint(EventKind::Impression, T - 2 * H, 1, 12)
            .touchpoint(EventKind::Impression, T - H, 1, 13);
        // Views off: the views are not even sent; unattributed.
        let off = Harness::<Attribution<Position>>::new(&[]).unwrap();
        let r = sorted(off.run(std::slice::from_ref(&conv)).unwrap());
        assert_eq!(r[1], row(1, None, "unattributed_revenue", 3.0, 1.0));
        // View-through 150 min: the two recent views, 50/50.
        let on = Harness::<Attribution<Position>>::new(&[("view_lookback_secs", "9000")]).unwrap();
        let r = sorted(on.run(std::slice::from_ref(&conv)).unwrap());
        assert_eq!(
            r,
            [
                row(1, None, "revenue", 3.0, 1.0),
                row(1, None, "unattributed_revenue", 0.0, 0.0),
                row(1, Some(12), "attributed_revenue", 1.5, 1.0),
                row(1, Some(13), "attributed_revenue", 1.5, 1.0),
            ]
        );
        // A click beats the views.
        let clicked = conv.clone().touchpoint(EventKind::Click, T - 10 * H, 5, 50);
        let r = sorted(on.run(&[clicked]).unwrap());
        assert_eq!(r[2], row(5, Some(50), "attributed_revenue", 3.0, 1.0));
        assert_eq!(r.len(), 3);
    }

    /// Accumulating in several batches gives the rows of one batch (the host calls accumulate
    /// many times per window).
    #[test]
    fn batches_add_up() {
        let h = Harness::<Attribution<Decay>>::new(&[]).unwrap();
        let evs: Vec<TestEvent> = (0..30)
            .map(|i| {
                TestEvent::conversion(i % 3, 0, 1_000_003 * i as i64)
                    .at(T)
                    .touchpoint(EventKind::Click, T - (i as i64) * H, i % 2, i % 4)
                    .touchpoint(EventKind::Click, T - H / 2, 1, 7)
            })
            .collect();
        let whole = h.run(&evs).unwrap();
        let mut acc = Vec::new();
        for chunk in evs.chunks(7) {
            acc = h.accumulate(&acc, chunk).unwrap();
        }
        assert_eq!(sorted(h.finish(&acc).unwrap()), sorted(whole));
    }
}
