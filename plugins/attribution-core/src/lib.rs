//! Attribution models: how one conversion's revenue is split over the user's touchpoints.
//!
//! Plain Rust with no dependencies (no SDK, no WIT), shared by the `attribution-*` plugins and
//! tested natively (`cargo test -p attribution-core`). `tests/verify_attribution_models.py` is an
//! independent Python implementation of the same definitions, checked against the plugins' rows.
//!
//! # Definitions
//!
//! A conversion at time `t` with revenue `R` (integer micro-units) arrives with the user's
//! touchpoints from the host (clicks, and views if the plugin asked for them), oldest first.
//!
//! **Which touchpoints** ([`select`]): "a click beats a view".
//! 1. The clicks with `t - lookback <= click time <= t`, where `lookback` is the plugin's own
//!    (`lookback_secs`, which can only shorten the host's, since the host sends no older click)
//!    or none (the host's alone).
//! 2. If there is no such click and the plugin does view-through (`view_lookback_secs > 0`):
//!    the views with `t - view lookback <= view time <= t`.
//! 3. Otherwise none: the revenue is unattributed.
//!
//! The chosen touchpoints are ordered by time, oldest first; touchpoints with equal times keep
//! the host's order (a stable sort), so "later" below means later in that order.
//!
//! **Weights** ([`Model::weights`]), for `n` chosen touchpoints, index 0 the oldest:
//! * `last_click`: 1 for the latest touchpoint, 0 for the others; among touchpoints with the
//!   latest time, the first in the host's order (as the shipped `attribution` plugin does, whose
//!   `rev().max_by_key` keeps the first of equal maxima).
//! * `linear`: 1 each.
//! * `position_based` (40/20/40): `n = 1`: 1; `n = 2`: 1, 1; `n >= 3`: `2(n-2)` for the first and
//!   the last, 1 for each of the `n - 2` middle ones (total `5(n-2)`: 40 % + 20 % + 40 %).
//! * `time_decay { half_life }`: `2^(-(t_last - t_i) / half_life)` in fixed point, where
//!   `t_last` is the latest chosen touchpoint's time: the same ratios as
//!   `2^(-(t - t_i) / half_life)`, and the latest touchpoint always weighs `2^62`, so the total
//!   is never 0. Exactly ([`decay_weight`]): with age `a = t_last - t_i` (ms), `k = a / h` and
//!   `f = a % h` (integer division, `h` the half-life in ms), `x = floor(f * 2^32 / h)`; start
//!   from `w = 2^62`; for `j = 1..=32`, if bit `32 - j` of `x` is set,
//!   `w = floor(w * HALF_ROOTS[j] / 2^62)` with `HALF_ROOTS[j] = round(2^62 * 2^(-2^-j))`;
//!   finally `w = floor(w / 2^k)` (0 when `k >= 63`). Integers only, so any implementation
//!   (the Python reference) gets the same weights bit for bit, which floats (`exp2` of two
//!   libms) would not promise. A half-life of 0 gives the latest touchpoint(s) everything.
//!
//! **Rounding** ([`largest_remainder`]): with `W = Σ w_i`, touchpoint `i` gets
//! `floor(|R| * w_i / W)`; the `|R| - Σ floor` micros left over (fewer than `n`) go one each to
//! the touchpoints with the largest remainders `|R| * w_i mod W`, equal remainders to the later
//! touchpoint first. Shares take the sign of `R` (revenue is never negative in practice). So
//! the shares sum to `R` exactly, each is `floor` or `ceil` of its exact quota, and none is
//! negative for `R >= 0`.
//!
//! **Credit** ([`attribute`]): the shares merged per (campaign, ad) over the touchpoints the
//! model credits (all of them, except `last_click`: only the one of weight 1). A conversion counts once in
//! the `attributed_revenue` denominator of every (campaign, ad) it credits.

/// The metrics every attribution plugin emits (the same names as the last-click plugin, so
/// dashboards compare the models by the `plugin` column).
pub const METRICS: [&str; 3] = ["revenue", "attributed_revenue", "unattributed_revenue"];

/// Default half-life of the time-decay model: 7 days (Google Ads' time-decay half-life, and the
/// host's default attribution lookback: a click at the edge of the lookback weighs half a fresh one).
pub const DEFAULT_HALF_LIFE_SECS: u64 = 7 * 24 * 3600;

/// What the touchpoint was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A click.
    Click,
    /// A view (an impression), sent only to plugins that want views.
    View,
}

/// One of the user's touchpoints, as the host sends it with a conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Touch {
    /// Event time, ms since the Unix epoch.
    pub time_ms: i64,
    /// Interned campaign id.
    pub campaign: u32,
    /// Interned ad id.
    pub ad: u32,
    /// Click or view.
    pub kind: Kind,
}

/// An attribution model (see the crate docs for the exact definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Everything to the latest touchpoint.
    LastClick,
    /// Equal shares.
    Linear,
    /// Weight `2^(-age / half_life)`.
    TimeDecay {
        /// Half-life in milliseconds.
        half_life_ms: u64,
    },
    /// 40 % first, 40 % last, 20 % shared by the middle ones.
    PositionBased,
}

/// `HALF_ROOTS[j - 1] = round(2^62 * 2^(-2^-j))` for `j = 1..=32` (computed with 80-digit
/// decimals; no value is within 0.03 of a rounding tie). Checked against `f64::exp2` in the tests.
pub const HALF_ROOTS: [u64; 32] = [
    3260954456333195553,
    3877950241171266237,
    4228934724888366668,
    4416165660797809419,
    4512867096753504463,
    4562008997483360349,
    4586780255215411731,
    4599216278082138665,
    4605446927862164404,
    4608565417332308035,
    4610125453837388245,
    4610905670110601999,
    4611295827762151833,
    4611490918967884501,
    4611588467665893036,
    4611637242788701951,
    4611661630543559956,
    4611673824469352645,
    4611679921444339948,
    4611682969934856344,
    4611684494180870228,
    4611685256304066092,
    4611685637365711255,
    4611685827896545643,
    4611685923161965790,
    4611685970794676601,
    4611685994611032191,
    4611686006519210032,
    4611686012473298964,
    4611686015450343433,
    4611686016938865668,
    4611686017683126786,
];

/// The time-decay weight of a touchpoint `age_ms` older than the latest one: `2^62 · 2^(-age/h)`
/// in the fixed point defined in the crate docs.
pub fn decay_weight(age_ms: u64, half_life_ms: u64) -> u64 {
    const ONE: u64 = 1 << 62;
    if half_life_ms == 0 {
        return if age_ms == 0 { ONE } else { 0 };
    }
    let halvings = age_ms / half_life_ms;
    if halvings >= 63 {
        return 0;
    }
    let rest = age_ms % half_life_ms;
    // rest < half_life, so x < 2^32.
    let x = ((u128::from(rest) << 32) / u128::from(half_life_ms)) as u64;
    let mut w = ONE;
    for (j, root) in HALF_ROOTS.iter().enumerate() {
        if (x >> (31 - j)) & 1 == 1 {
            // w <= 2^62 and root < 2^62: the product fits, the quotient is < 2^62.
            w = ((u128::from(w) * u128::from(*root)) >> 62) as u64;
        }
    }
    w >> halvings
}

impl Model {
    /// The weights of `touches` (ordered oldest first, as [`select`] returns them).
    pub fn weights(self, touches: &[Touch]) -> Vec<u64> {
        let n = touches.len();
        match self {
            Model::LastClick => {
                // The first of the latest: the list is sorted by time, so the run of equal
                // latest times is at its end.
                let last = touches.last().map(|t| t.time_ms);
                let first = touches.iter().position(|t| Some(t.time_ms) == last);
                (0..n).map(|i| u64::from(Some(i) == first)).collect()
            }
            Model::Linear => vec![1; n],
            Model::PositionBased if n <= 2 => vec![1; n],
            Model::PositionBased => {
                let end = 2 * (n as u64 - 2);
                (0..n)
                    .map(|i| if i == 0 || i + 1 == n { end } else { 1 })
                    .collect()
            }
            Model::TimeDecay { half_life_ms } => {
                let latest = touches.iter().map(|t| t.time_ms).max().unwrap_or(0);
                touches
                    .iter()
                    .map(|t| decay_weight(latest.abs_diff(t.time_ms), half_life_ms))
                    .collect()
            }
        }
    }

    /// The parameter names a plugin of this model accepts (see [`Settings::from_params`]).
    pub const fn params(self) -> &'static [&'static str] {
        match self {
            Model::TimeDecay { .. } => &["half_life_secs", "lookback_secs", "view_lookback_secs"],
            _ => &["lookback_secs", "view_lookback_secs"],
        }
    }

    /// Whether the model credits a touchpoint of this weight: always, except last click's
    /// touchpoints of weight 0 (a time-decay weight rounded to 0 still credits).
    pub fn credits(self, weight: u64) -> bool {
        self != Model::LastClick || weight > 0
    }
}

/// Splits `total` in proportion to `weights` by largest remainder: `floor` shares, then the
/// micros left over one each to the largest remainders, equal remainders to the later index
/// first. The shares sum to `total` exactly and take its sign. `None` when the weights sum to 0
/// (no weights).
pub fn largest_remainder(total: i64, weights: &[u64]) -> Option<Vec<i64>> {
    let sum: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if sum == 0 {
        return None;
    }
    // |total| <= 2^63 and w < 2^64: every product fits in a u128.
    let m = u128::from(total.unsigned_abs());
    let mut shares = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    let mut given = 0u128;
    for &w in weights {
        let p = m * u128::from(w);
        shares.push(p / sum);
        remainders.push(p % sum);
        given += p / sum;
    }
    // Each floor loses less than 1, so fewer than n micros are left.
    let left = (m - given) as usize;
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_unstable_by(|&a, &b| remainders[b].cmp(&remainders[a]).then(b.cmp(&a)));
    for &i in &order[..left] {
        shares[i] += 1;
    }
    Some(
        shares
            .into_iter()
            .map(|s| {
                // s <= |total| <= 2^63: -s fits an i64 even for i64::MIN.
                let s = s as i128;
                (if total < 0 { -s } else { s }) as i64
            })
            .collect(),
    )
}

/// The plugin's own lookbacks (the host applies its own first).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lookbacks {
    /// Clicks older than this before the conversion are ignored; `None`: only the host's lookback.
    pub clicks_ms: Option<u64>,
    /// View-through: views this recent are the touchpoints of a conversion without a click;
    /// `None`: views are ignored.
    pub views_ms: Option<u64>,
}

fn inside(time_ms: i64, conversion_ms: i64, lookback_ms: Option<u64>) -> bool {
    time_ms <= conversion_ms
        && lookback_ms
            .is_none_or(|l| i128::from(conversion_ms) - i128::from(l) <= i128::from(time_ms))
}

/// The touchpoints a conversion at `conversion_ms` is attributed to, oldest first: the clicks
/// inside the click lookback, or if there is none the views inside the view lookback (when views
/// are on), or none.
pub fn select(conversion_ms: i64, touches: &[Touch], lookbacks: &Lookbacks) -> Vec<Touch> {
    let of = |kind: Kind, lookback: Option<u64>| -> Vec<Touch> {
        touches
            .iter()
            .filter(|t| t.kind == kind && inside(t.time_ms, conversion_ms, lookback))
            .copied()
            .collect()
    };
    let mut chosen = of(Kind::Click, lookbacks.clicks_ms);
    if chosen.is_empty()
        && let Some(views) = lookbacks.views_ms
    {
        chosen = of(Kind::View, Some(views));
    }
    // Stable: equal times keep the host's order.
    chosen.sort_by_key(|t| t.time_ms);
    chosen
}

/// The revenue one (campaign, ad) gets from one conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    /// Interned campaign id of the touchpoint(s).
    pub campaign: u32,
    /// Interned ad id of the touchpoint(s).
    pub ad: u32,
    /// Micro-units.
    pub micros: i64,
}

/// Splits `revenue` by `model` over the touchpoints [`select`] chooses. Returns the credits per
/// (campaign, ad) in key order, summing to `revenue` exactly; empty when the conversion is
/// unattributed (no touchpoint chosen).
pub fn attribute(
    model: Model,
    lookbacks: &Lookbacks,
    conversion_ms: i64,
    revenue: i64,
    touches: &[Touch],
) -> Vec<Credit> {
    let chosen = select(conversion_ms, touches, lookbacks);
    let weights = model.weights(&chosen);
    let Some(shares) = largest_remainder(revenue, &weights) else {
        return Vec::new();
    };
    let mut out: Vec<Credit> = Vec::new();
    for ((t, share), w) in chosen.iter().zip(shares).zip(weights) {
        if !model.credits(w) {
            continue; // last click: the others' shares are 0
        }
        match out.binary_search_by_key(&(t.campaign, t.ad), |c| (c.campaign, c.ad)) {
            // The shares of one conversion sum to its revenue: no overflow.
            Ok(j) => out[j].micros += share,
            Err(j) => out.insert(
                j,
                Credit {
                    campaign: t.campaign,
                    ad: t.ad,
                    micros: share,
                },
            ),
        }
    }
    out
}

/// A plugin's configuration: its model and lookbacks, from its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The model.
    pub model: Model,
    /// The plugin's own lookbacks.
    pub lookbacks: Lookbacks,
}

fn seconds(name: &str, value: &str) -> Result<u64, String> {
    let secs: u64 = value.trim().parse().map_err(|_| {
        format!("parameter {name} = {value:?}: expected a whole number of seconds (>= 0)")
    })?;
    secs.checked_mul(1000)
        .filter(|ms| *ms <= i64::MAX as u64)
        .ok_or_else(|| format!("parameter {name} = {value}: too large"))?;
    Ok(secs)
}

impl Settings {
    /// Reads the parameters of a plugin whose model is `model` (its half-life, for time decay, is
    /// the default unless `half_life_secs` is given). Parameters, all optional, values in TOML's
    /// text form:
    /// * `lookback_secs`: ignore clicks older than this before the conversion (0, the default:
    ///   the host's lookback only);
    /// * `view_lookback_secs`: when > 0, view-through: a conversion with no click in the lookback
    ///   is attributed to the views this recent (0, the default: views ignored);
    /// * `half_life_secs` (time decay only, > 0, default [`DEFAULT_HALF_LIFE_SECS`]).
    ///
    /// Any other name, or a value that is not a whole number, is an error.
    pub fn from_params<S: AsRef<str>>(model: Model, params: &[(S, S)]) -> Result<Self, String> {
        let mut s = Settings {
            model,
            lookbacks: Lookbacks::default(),
        };
        for (name, value) in params {
            let (name, value) = (name.as_ref(), value.as_ref());
            if !model.params().contains(&name) {
                let known = model.params().join(", ");
                return Err(format!("unknown parameter {name:?} (accepted: {known})"));
            }
            let secs = seconds(name, value)?;
            let ms = (secs > 0).then_some(secs * 1000);
            match name {
                "lookback_secs" => s.lookbacks.clicks_ms = ms,
                "view_lookback_secs" => s.lookbacks.views_ms = ms,
                _ => {
                    let half_life_ms = ms.ok_or("parameter half_life_secs must be > 0")?;
                    s.model = Model::TimeDecay { half_life_ms };
                }
            }
        }
        Ok(s)
    }

    /// Whether the plugin must ask the host for views (`wants-views`).
    pub fn wants_views(&self) -> bool {
        self.lookbacks.views_ms.is_some()
    }
}

/// Counters per accumulator key.
/// * (campaign, no ad): `[revenue, conversions, unattributed revenue, unattributed conversions]`
///   of the conversions of the campaign;
/// * (campaign, ad): `[attributed revenue, conversions crediting the ad, 0, 0]`.
pub const WIDTH: usize = 4;

/// Counts one conversion: `add(campaign, ad, deltas)` for each accumulator key it changes (see
/// [`WIDTH`]; `ad` is `None` for the campaign's own key).
pub fn count_conversion(
    settings: &Settings,
    campaign: u32,
    time_ms: i64,
    revenue: i64,
    touches: &[Touch],
    mut add: impl FnMut(u32, Option<u32>, [i64; WIDTH]),
) {
    let credits = attribute(
        settings.model,
        &settings.lookbacks,
        time_ms,
        revenue,
        touches,
    );
    if credits.is_empty() {
        add(campaign, None, [revenue, 1, revenue, 1]);
        return;
    }
    add(campaign, None, [revenue, 1, 0, 0]);
    for c in credits {
        add(c.campaign, Some(c.ad), [c.micros, 1, 0, 0]);
    }
}

/// One metric row of a window: `value = numerator = micros / 10^6`, `denominator = count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    /// Interned campaign id.
    pub campaign: u32,
    /// `Some` for `attributed_revenue`.
    pub ad: Option<u32>,
    /// One of [`METRICS`].
    pub metric: &'static str,
    /// The sum in micro-units.
    pub micros: i64,
    /// The conversions it counts.
    pub count: i64,
}

impl Row {
    /// The sum in currency units, as rows carry it.
    pub fn units(&self) -> f64 {
        self.micros as f64 / 1_000_000.0
    }
}

/// The rows of one accumulator key (see [`WIDTH`]).
pub fn rows(campaign: u32, ad: Option<u32>, v: &[i64]) -> Vec<Row> {
    let row = |ad, metric, micros, count| Row {
        campaign,
        ad,
        metric,
        micros,
        count,
    };
    match ad {
        None => vec![
            row(None, METRICS[0], v[0], v[1]),
            row(None, METRICS[2], v[2], v[3]),
        ],
        Some(ad) => vec![row(Some(ad), METRICS[1], v[0], v[1])],
    }
}

#[cfg(feature = "sdk")]
pub mod plugin;

#[cfg(test)]
mod tests;
