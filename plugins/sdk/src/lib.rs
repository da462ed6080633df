//! Guest SDK for admetrics metric plugins.
//!
//! A plugin implements [`Plugin`] over a [`Counters`] accumulator and calls [`export_plugin!`]:
//!
//! ```text
//! use admetrics_plugin_sdk::*;
//! struct Impressions;
//! impl Plugin for Impressions {
//!     const WIDTH: usize = 1;
//!     fn info() -> PluginInfo { info("impressions", env!("CARGO_PKG_VERSION"), &["impressions"], false) }
//!     fn accumulate(acc: &mut Counters, events: &Events) -> Result<(), String> {
//!         for e in events.iter().filter(|e| e.kind == EventKind::Impression) {
//!             acc.add(e.campaign, NO_AD, &[1]);
//!         }
//!         Ok(())
//!     }
//!     fn finish(acc: &Counters) -> Vec<MetricRow> {
//!         acc.iter().map(|(c, _, v)| sum_row(c, None, "impressions", v[0] as f64, 0.0)).collect()
//!     }
//! }
//! export_plugin!(Impressions);
//! ```
//!
//! The SDK hides the WIT bindings (`wit/admetrics.wit`), encodes the accumulator, and builds for both
//! `cargo build --target wasm32-wasip2` and `cargo component build`.

#![deny(missing_docs)]

// The generated bindings name this crate by path, from inside it too.
extern crate self as admetrics_plugin_sdk;

/// The generated bindings of the `metric-plugin` world. Plugins rarely need them directly.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "metric-plugin",
        pub_export_macro: true,
        export_macro_name: "__export_metric_plugin",
        default_bindings_module: "admetrics_plugin_sdk::bindings",
        runtime_path: "admetrics_plugin_sdk::wit_bindgen::rt",
    });
}

#[doc(hidden)]
pub use wit_bindgen;

pub use bindings::admetrics::metrics::types::{
    EventBatch, EventKind, MetricRow, PluginInfo, Touchpoint,
};

/// One event of a batch, as a plugin sees it.
#[derive(Debug, Clone, Copy)]
pub struct Event<'a> {
    /// What happened.
    pub kind: EventKind,
    /// Event time, ms since the Unix epoch (UTC).
    pub time_ms: i64,
    /// Interned campaign id.
    pub campaign: u32,
    /// Interned ad id.
    pub ad: u32,
    /// Conversion revenue in micro-units; 0 for other kinds.
    pub revenue_micros: i64,
    /// For conversions, when the plugin wants touchpoints: the user's clicks inside the
    /// lookback at or before the conversion, oldest first.
    pub touchpoints: &'a [Touchpoint],
}

/// A validated batch of one window's events (the WIT `event-batch`, columns checked).
pub struct Events {
    batch: EventBatch,
}

impl Events {
    /// Checks that the columns agree; the host guarantees it, a fuzzing host may not.
    pub fn new(batch: EventBatch) -> Result<Self, String> {
        let n = batch.kinds.len();
        let cols = [
            batch.times_ms.len(),
            batch.campaigns.len(),
            batch.ads.len(),
            batch.revenue_micros.len(),
        ];
        if cols.iter().any(|&l| l != n) {
            return Err(format!(
                "event-batch columns differ in length: kinds {n}, others {cols:?}"
            ));
        }
        if let Some(k) = batch.kinds.iter().find(|&&k| k > 2) {
            return Err(format!("event-batch has unknown kind {k}"));
        }
        let ends = &batch.touchpoint_ends;
        if !ends.is_empty()
            && (ends.len() != n
                || ends.windows(2).any(|w| w[0] > w[1])
                || ends
                    .last()
                    .is_some_and(|&e| e as usize > batch.touchpoints.len()))
        {
            return Err("event-batch touchpoint-ends are inconsistent".into());
        }
        Ok(Events { batch })
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.batch.kinds.len()
    }

    /// True for an empty batch.
    pub fn is_empty(&self) -> bool {
        self.batch.kinds.is_empty()
    }

    /// The events in order.
    pub fn iter(&self) -> impl Iterator<Item = Event<'_>> + '_ {
        let b = &self.batch;
        (0..b.kinds.len()).map(move |i| {
            let touchpoints = if b.touchpoint_ends.is_empty() {
                &[][..]
            } else {
                let start = if i == 0 {
                    0
                } else {
                    b.touchpoint_ends[i - 1] as usize
                };
                &b.touchpoints[start..b.touchpoint_ends[i] as usize]
            };
            Event {
                kind: match b.kinds[i] {
                    0 => EventKind::Impression,
                    1 => EventKind::Click,
                    _ => EventKind::Conversion,
                },
                time_ms: b.times_ms[i],
                campaign: b.campaigns[i],
                ad: b.ads[i],
                revenue_micros: b.revenue_micros[i],
                touchpoints,
            }
        })
    }
}

/// Key value meaning "no ad": counters kept per campaign only.
pub const NO_AD: u32 = u32::MAX;

/// A metric plugin. The SDK turns it into the WIT exports.
pub trait Plugin {
    /// Number of `i64` counters kept per (campaign, ad) key.
    const WIDTH: usize;
    /// The plugin's self-description.
    fn info() -> PluginInfo;
    /// Folds a batch of events (all of one window) into the accumulator.
    fn accumulate(acc: &mut Counters, events: &Events) -> Result<(), String>;
    /// The window's metric rows from the accumulator.
    fn finish(acc: &Counters) -> Vec<MetricRow>;
}

/// Builds a [`PluginInfo`].
pub fn info(name: &str, version: &str, metrics: &[&str], wants_touchpoints: bool) -> PluginInfo {
    PluginInfo {
        name: name.into(),
        version: version.into(),
        metrics: metrics.iter().map(|m| (*m).into()).collect(),
        wants_touchpoints,
    }
}

/// A rate row: `value = numerator / denominator`, 0 when the denominator is 0.
pub fn rate_row(campaign: u32, metric: &str, numerator: f64, denominator: f64) -> MetricRow {
    let value = if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    };
    MetricRow {
        campaign,
        ad: None,
        metric: metric.into(),
        value,
        numerator,
        denominator,
    }
}

/// A sum row: `value = numerator`, `denominator` counts the contributing events.
pub fn sum_row(campaign: u32, ad: Option<u32>, metric: &str, sum: f64, count: f64) -> MetricRow {
    MetricRow {
        campaign,
        ad,
        metric: metric.into(),
        value: sum,
        numerator: sum,
        denominator: count,
    }
}

/// The largest magnitude a counter may hold: 999 999 999 999.999999 in micro-units, the largest
/// DECIMAL(18,6), which is also the largest revenue the host's decoder accepts
/// (`admetrics_event::MAX_REVENUE_MICROS`; the SDK cannot depend on the host, so the value is
/// repeated here and a test checks that the two are equal). A window sum past it could not be
/// stored exactly, so it is the plugin's error, never a wrapped or rounded number.
pub const MAX_COUNTER: i64 = 999_999_999_999_999_999;

/// Sparse `i64` counters keyed by (campaign, ad), `width` counters per key.
///
/// Arithmetic is checked: a sum whose magnitude would pass [`MAX_COUNTER`] is not applied;
/// [`Counters::try_add`] returns the error, and [`Counters::add`] records it so that the SDK fails
/// the whole `accumulate` call with it (the host then counts a plugin failure and withholds the
/// window, as for any plugin error).
///
/// Encoded as little-endian `[u32 width][(u32 campaign, u32 ad, i64 × width)…]` sorted by key, so
/// the host can store it as opaque bytes and equal states encode to equal bytes.
#[derive(Debug, Clone)]
pub struct Counters {
    width: usize,
    // A sorted Vec beats a map here: windows hold ~100 keys and batches hit them in runs.
    keys: Vec<(u32, u32)>,
    values: Vec<i64>,
    // The first failed `add`: the SDK turns it into the call's error.
    overflow: Option<String>,
}

impl Counters {
    /// Empty counters with `width` slots per key.
    pub fn new(width: usize) -> Self {
        Counters {
            width,
            keys: Vec::new(),
            values: Vec::new(),
            overflow: None,
        }
    }

    /// Decodes an accumulator; empty bytes give empty counters.
    pub fn decode(bytes: &[u8], width: usize) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Self::new(width));
        }
        let stored = u32::from_le_bytes(bytes[..4].try_into().map_err(|_| "short accumulator")?);
        if stored as usize != width {
            return Err(format!(
                "accumulator width {stored}, plugin expects {width}"
            ));
        }
        let entry = 8 + 8 * width;
        let body = &bytes[4..];
        if body.len() % entry != 0 {
            return Err("accumulator length is not a whole number of entries".into());
        }
        let n = body.len() / entry;
        let mut c = Counters {
            width,
            keys: Vec::with_capacity(n),
            values: Vec::with_capacity(n * width),
            overflow: None,
        };
        for chunk in body.chunks_exact(entry) {
            let campaign = u32::from_le_bytes(chunk[0..4].try_into().unwrap());
            let ad = u32::from_le_bytes(chunk[4..8].try_into().unwrap());
            c.keys.push((campaign, ad));
            for i in 0..width {
                let o = 8 + 8 * i;
                let v = i64::from_le_bytes(chunk[o..o + 8].try_into().unwrap());
                if v.unsigned_abs() > MAX_COUNTER as u64 {
                    return Err(format!(
                        "accumulator counter {v} is outside ±{MAX_COUNTER} (MAX_COUNTER)"
                    ));
                }
                c.values.push(v);
            }
        }
        Ok(c)
    }

    /// Encodes the counters (see the type docs for the layout).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + self.keys.len() * (8 + 8 * self.width));
        out.extend_from_slice(&(self.width as u32).to_le_bytes());
        for (i, (campaign, ad)) in self.keys.iter().enumerate() {
            out.extend_from_slice(&campaign.to_le_bytes());
            out.extend_from_slice(&ad.to_le_bytes());
            for v in &self.values[i * self.width..(i + 1) * self.width] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out
    }

    /// Adds `delta` (of length `width`) to the counters of (campaign, ad). If a sum would pass
    /// [`MAX_COUNTER`], nothing is added and the error is recorded: the SDK then fails the
    /// `accumulate` call with it, whatever the plugin returns. Use [`Counters::try_add`] to
    /// handle the error yourself.
    pub fn add(&mut self, campaign: u32, ad: u32, delta: &[i64]) {
        if let Err(e) = self.try_add(campaign, ad, delta)
            && self.overflow.is_none()
        {
            self.overflow = Some(e);
        }
    }

    /// Adds `delta` (of length `width`) to the counters of (campaign, ad), or, if any sum's
    /// magnitude would pass [`MAX_COUNTER`], changes nothing and says which.
    pub fn try_add(&mut self, campaign: u32, ad: u32, delta: &[i64]) -> Result<(), String> {
        let w = self.width;
        let found = self.keys.binary_search(&(campaign, ad));
        for (j, &d) in delta.iter().take(w).enumerate() {
            let current = match found {
                Ok(i) => self.values[i * w + j],
                Err(_) => 0,
            };
            if current
                .checked_add(d)
                .is_none_or(|v| v.unsigned_abs() > MAX_COUNTER as u64)
            {
                let ad = if ad == NO_AD {
                    "-".to_string()
                } else {
                    ad.to_string()
                };
                return Err(format!(
                    "counter overflow: campaign {campaign} ad {ad} slot {j}: {current} + {d} \
                     passes ±{MAX_COUNTER} (MAX_COUNTER, the largest DECIMAL(18,6) in micro-units)"
                ));
            }
        }
        let i = match found {
            Ok(i) => i,
            Err(i) => {
                self.keys.insert(i, (campaign, ad));
                self.values.splice(i * w..i * w, std::iter::repeat_n(0, w));
                i
            }
        };
        for (slot, d) in self.values[i * w..(i + 1) * w].iter_mut().zip(delta) {
            *slot += d; // checked above
        }
        Ok(())
    }

    /// Iterates `(campaign, ad, counters)` in key order; `ad` is `None` for [`NO_AD`].
    pub fn iter(&self) -> impl Iterator<Item = (u32, Option<u32>, &[i64])> {
        self.keys.iter().enumerate().map(move |(i, &(c, a))| {
            (
                c,
                (a != NO_AD).then_some(a),
                &self.values[i * self.width..(i + 1) * self.width],
            )
        })
    }
}

#[doc(hidden)]
pub fn __accumulate<P: Plugin>(acc: Vec<u8>, events: EventBatch) -> Result<Vec<u8>, String> {
    let events = Events::new(events)?;
    let mut c = Counters::decode(&acc, P::WIDTH)?;
    P::accumulate(&mut c, &events)?;
    if let Some(overflow) = c.overflow.take() {
        return Err(overflow);
    }
    Ok(c.encode())
}

#[doc(hidden)]
pub fn __finish<P: Plugin>(acc: Vec<u8>) -> Result<Vec<MetricRow>, String> {
    Ok(P::finish(&Counters::decode(&acc, P::WIDTH)?))
}

/// Exports a [`Plugin`] implementation as the component's `metric-plugin` world.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __AdmetricsExport;
        impl $crate::bindings::Guest for __AdmetricsExport {
            fn info() -> $crate::PluginInfo {
                <$plugin as $crate::Plugin>::info()
            }
            fn accumulate(
                acc: ::std::vec::Vec<u8>,
                events: $crate::EventBatch,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                $crate::__accumulate::<$plugin>(acc, events)
            }
            fn finish(
                acc: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::MetricRow>, ::std::string::String> {
                $crate::__finish::<$plugin>(acc)
            }
        }
        $crate::bindings::__export_metric_plugin!(__AdmetricsExport with_types_in $crate::bindings);
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_and_stay_sorted() {
        let mut c = Counters::new(2);
        c.add(7, NO_AD, &[1, 0]);
        c.add(3, 1, &[0, 5]);
        c.add(7, NO_AD, &[2, 1]);
        let d = Counters::decode(&c.encode(), 2).unwrap();
        let rows: Vec<_> = d.iter().map(|(c, a, v)| (c, a, v.to_vec())).collect();
        assert_eq!(rows, vec![(3, Some(1), vec![0, 5]), (7, None, vec![3, 1])]);
        assert!(Counters::decode(&c.encode(), 3).is_err());
        assert!(Counters::decode(&[1, 0, 0, 0, 9], 1).is_err());
    }

    /// Sums each conversion's revenue per campaign, as the attribution plugin does.
    struct Revenue;
    impl Plugin for Revenue {
        const WIDTH: usize = 2;
        fn info() -> PluginInfo {
            info("revenue", "0", &["revenue"], false)
        }
        fn accumulate(acc: &mut Counters, events: &Events) -> Result<(), String> {
            for e in events.iter() {
                acc.add(e.campaign, NO_AD, &[e.revenue_micros, 1]);
            }
            Ok(())
        }
        fn finish(acc: &Counters) -> Vec<MetricRow> {
            acc.iter()
                .map(|(c, _, v)| sum_row(c, None, "revenue", v[0] as f64, v[1] as f64))
                .collect()
        }
    }

    fn conversions(revenues: &[i64]) -> EventBatch {
        let n = revenues.len();
        EventBatch {
            kinds: vec![2; n],
            times_ms: vec![0; n],
            campaigns: vec![1; n],
            ads: vec![1; n],
            revenue_micros: revenues.to_vec(),
            touchpoint_ends: vec![],
            touchpoints: vec![],
        }
    }

    /// The largest revenue the decoder accepts: 999 999 999 999.999999 (DECIMAL(18,6)).
    const NEAR_MAX: i64 = 999_999_999_999_999_999;

    /// Issue 14, defect 2: ten conversions near the accepted maximum wrapped the window's revenue
    /// negative in a release build. Now the call fails (the host counts a plugin failure and
    /// withholds the window) instead of returning a wrapped sum.
    #[test]
    fn summing_near_max_revenue_errors_instead_of_wrapping() {
        let r = __accumulate::<Revenue>(vec![], conversions(&[NEAR_MAX; 10]));
        match &r {
            Ok(acc) => {
                let c = Counters::decode(acc, 2).unwrap();
                let sums: Vec<i64> = c.iter().map(|(_, _, v)| v[0]).collect();
                panic!("accumulate returned Ok with sums {sums:?}");
            }
            Err(e) => assert!(e.contains("overflow"), "{e}"),
        }
        // Across calls too: the stored accumulator at the bound plus one more micro fails.
        let acc = __accumulate::<Revenue>(vec![], conversions(&[NEAR_MAX])).unwrap();
        assert!(__accumulate::<Revenue>(acc.clone(), conversions(&[1])).is_err());
        assert!(__accumulate::<Revenue>(acc, conversions(&[0])).is_ok());
    }

    #[test]
    fn counter_bound_is_the_decoder_revenue_bound() {
        assert_eq!(MAX_COUNTER, admetrics_event::MAX_REVENUE_MICROS);
    }

    #[test]
    fn try_add_changes_nothing_on_overflow() {
        let mut c = Counters::new(2);
        c.try_add(1, NO_AD, &[MAX_COUNTER, 1]).unwrap();
        assert!(c.try_add(1, NO_AD, &[1, 1]).is_err());
        assert!(c.try_add(2, NO_AD, &[i64::MIN, 0]).is_err());
        assert!(c.try_add(2, NO_AD, &[-MAX_COUNTER, 0]).is_ok());
        let rows: Vec<_> = c.iter().map(|(c, _, v)| (c, v.to_vec())).collect();
        assert_eq!(
            rows,
            vec![(1, vec![MAX_COUNTER, 1]), (2, vec![-MAX_COUNTER, 0])]
        );
        // A stored accumulator past the bound (not written by this SDK) is refused.
        let mut bad = Counters::new(1);
        bad.values.push(MAX_COUNTER + 1);
        bad.keys.push((1, NO_AD));
        assert!(Counters::decode(&bad.encode(), 1).is_err());
    }
}
