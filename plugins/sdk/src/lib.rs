//! Guest SDK for admetrics metric plugins (`admetrics:metrics@0.2.0`, `wit/admetrics.wit`).
//!
//! A plugin is a value of a type implementing [`Plugin`]: [`Plugin::init`] builds it from the
//! configuration's [`Params`] and describes it; the SDK keeps it for the life of the instance and
//! hands it to `accumulate` and `finish`, which work on a [`Counters`] accumulator.
//! [`export_plugin!`] turns it into the component's exports:
//!
//! ```text
//! use admetrics_plugin_sdk::*;
//! struct Impressions { breakdown: Breakdown }
//! impl Plugin for Impressions {
//!     const WIDTH: usize = 1;
//!     const PARAMS: &'static [&'static str] = &["dimensions"];
//!     fn init(params: &Params) -> Result<(Self, PluginInfo), String> {
//!         let breakdown = params.get_breakdown("dimensions")?;
//!         let info = info("impressions", env!("CARGO_PKG_VERSION"), &["impressions"])
//!             .with_breakdown(&breakdown);
//!         Ok((Impressions { breakdown }, info))
//!     }
//!     fn accumulate(&self, acc: &mut Counters, events: &Events) -> Result<(), String> {
//!         // (plugins/ctr branches on the breakdown outside its loop: without one, the loop then
//!         // costs what it did in 0.1.)
//!         for e in events.iter().filter(|e| e.kind == EventKind::Impression) {
//!             acc.add(e.campaign, NO_AD, &[1]);
//!             if !self.breakdown.is_empty() {
//!                 acc.add_dims(e.campaign, NO_AD, &self.breakdown.cell(&e)?, &[1]);
//!             }
//!         }
//!         Ok(())
//!     }
//!     fn finish(&self, acc: &Counters) -> Vec<MetricRow> {
//!         acc.iter()
//!             .map(|(c, _, dims, v)| sum_row_dims(c, None, dims, "impressions", v[0] as f64, 0.0))
//!             .collect()
//!     }
//! }
//! export_plugin!(Impressions);
//! ```
//!
//! The SDK hides the WIT bindings, encodes the accumulator, refuses unknown parameters, checks
//! the event columns, and builds for both `cargo build --target wasm32-wasip2` and
//! `cargo component build`. [`testing::Harness`] runs a plugin natively in unit tests.

#![deny(missing_docs)]

// The generated bindings name this crate by path, from inside it too.
extern crate self as admetrics_plugin_sdk;

use std::fmt;
use std::sync::{Mutex, MutexGuard};

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
        additional_derives: [PartialEq],
    });
}

#[doc(hidden)]
pub use wit_bindgen;

pub use bindings::admetrics::metrics::types::{
    Column, Dimension, DimensionKey, EventBatch, EventKind, MetricRow, PluginInfo, Touchpoint,
    WindowSize,
};

// ---------------------------------------------------------------------------------------------
// Columns and breakdowns

/// The columns a row can be broken down by, in their canonical order (every column but `user`).
pub const BREAKDOWN_COLUMNS: [Column; 4] = [
    Column::Device,
    Column::Country,
    Column::Placement,
    Column::Currency,
];

/// At most this many custom attributes per plugin (`plugin-info.attributes`).
pub const MAX_ATTRIBUTES: usize = 4;

/// At most this many dimensions per key or row: one per breakdown column and per attribute.
pub const MAX_DIMS: usize = BREAKDOWN_COLUMNS.len() + MAX_ATTRIBUTES;

/// The prefix that names a custom attribute in a breakdown list: `attr.creative_size`.
pub const ATTRIBUTE_PREFIX: &str = "attr.";

/// Checks an attribute name: `[a-z0-9_]`, 1 to 64 bytes (the WIT's rule; the host checks it too).
pub fn check_attribute_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(format!(
            "attribute name `{name}` is not 1 to 64 of [a-z0-9_]"
        ));
    }
    Ok(())
}

impl Column {
    /// The WIT name (`user`, `device`, `country`, `placement`, `currency`).
    pub fn as_str(self) -> &'static str {
        match self {
            Column::User => "user",
            Column::Device => "device",
            Column::Country => "country",
            Column::Placement => "placement",
            Column::Currency => "currency",
        }
    }

    /// The column of a WIT name.
    pub fn parse(name: &str) -> Option<Column> {
        [Column::User]
            .into_iter()
            .chain(BREAKDOWN_COLUMNS)
            .find(|c| c.as_str() == name)
    }

    fn code(self) -> u8 {
        self as u8
    }

    fn from_code(code: u8) -> Option<Column> {
        [Column::User]
            .into_iter()
            .chain(BREAKDOWN_COLUMNS)
            .find(|c| c.code() == code)
    }
}

/// A breakdown cell: up to [`MAX_DIMS`] (key, value) pairs, each key (a column other than
/// `user`, or a declared attribute) at most once. Canonical by construction (the order pairs are
/// given in does not matter), so equal cells are equal keys. [`Dims::NONE`] is the total.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dims {
    // Bit `s` set: slot `s` is present (slots 0..4 are `BREAKDOWN_COLUMNS`, 4..8 attributes 0..4),
    // its value in the 32 bits of `vals` (columns) or `attrs` (attributes) at `slot_shift(s)`.
    // Unused slots stay 0. Packed so that comparing keys, the counters' hot path, stays a few
    // integer comparisons.
    mask: u8,
    vals: u128,
    attrs: u128,
}

/// The slot of a breakdown key: a column's index in [`BREAKDOWN_COLUMNS`], attribute `i` at
/// `BREAKDOWN_COLUMNS.len() + i`.
fn slot(key: DimensionKey) -> Option<usize> {
    match key {
        DimensionKey::Column(Column::User) => None,
        DimensionKey::Column(Column::Device) => Some(0),
        DimensionKey::Column(Column::Country) => Some(1),
        DimensionKey::Column(Column::Placement) => Some(2),
        DimensionKey::Column(Column::Currency) => Some(3),
        DimensionKey::Attribute(i) if (i as usize) < MAX_ATTRIBUTES => {
            Some(BREAKDOWN_COLUMNS.len() + i as usize)
        }
        DimensionKey::Attribute(_) => None,
    }
}

fn slot_key(slot: usize) -> DimensionKey {
    match slot {
        0..4 => DimensionKey::Column(BREAKDOWN_COLUMNS[slot]),
        _ => DimensionKey::Attribute((slot - BREAKDOWN_COLUMNS.len()) as u32),
    }
}

fn slot_shift(slot: usize) -> u32 {
    96 - 32 * (slot % 4) as u32
}

/// The name of a breakdown key for messages: the column's, or `attribute #i`.
fn key_name(key: DimensionKey) -> String {
    match key {
        DimensionKey::Column(c) => c.as_str().to_string(),
        DimensionKey::Attribute(i) => format!("attribute #{i}"),
    }
}

impl Dims {
    /// No dimensions: the key or row of a total.
    pub const NONE: Dims = Dims {
        mask: 0,
        vals: 0,
        attrs: 0,
    };

    fn set(&mut self, slot: usize, value: u32) {
        let shift = slot_shift(slot);
        self.mask |= 1 << slot;
        let word = if slot < 4 {
            &mut self.vals
        } else {
            &mut self.attrs
        };
        *word = (*word & !(0xffff_ffff_u128 << shift)) | (value as u128) << shift;
    }

    fn slot_value(&self, slot: usize) -> u32 {
        let word = if slot < 4 { self.vals } else { self.attrs };
        (word >> slot_shift(slot)) as u32
    }

    /// A cell from (column, value) pairs in any order. Errors on `user` or a repeated column.
    pub fn new(pairs: &[(Column, u32)]) -> Result<Dims, String> {
        let keys: Vec<_> = pairs
            .iter()
            .map(|&(c, v)| (DimensionKey::Column(c), v))
            .collect();
        Dims::of_keys(&keys)
    }

    /// A cell from (key, value) pairs in any order. Errors on `user`, an attribute index past
    /// [`MAX_ATTRIBUTES`] or a repeated key.
    pub fn of_keys(pairs: &[(DimensionKey, u32)]) -> Result<Dims, String> {
        let mut d = Dims::NONE;
        for &(k, v) in pairs {
            let s = slot(k).ok_or_else(|| format!("`{}` is not a breakdown key", key_name(k)))?;
            if d.mask & 1 << s != 0 {
                return Err(format!("dimension `{}` given twice", key_name(k)));
            }
            d.set(s, v);
        }
        Ok(d)
    }

    /// Number of dimensions (0 for a total).
    pub fn len(&self) -> usize {
        self.mask.count_ones() as usize
    }

    /// True for a total.
    pub fn is_empty(&self) -> bool {
        self.mask == 0
    }

    /// The (key, value) pairs in canonical order: columns in [`BREAKDOWN_COLUMNS`] order, then
    /// attributes by index.
    pub fn iter(&self) -> impl Iterator<Item = (DimensionKey, u32)> + '_ {
        (0..MAX_DIMS)
            .filter(|&s| self.mask & 1 << s != 0)
            .map(|s| (slot_key(s), self.slot_value(s)))
    }

    /// The value of `column` in this cell.
    pub fn get(&self, column: Column) -> Option<u32> {
        self.get_key(DimensionKey::Column(column))
    }

    /// The value of `key` in this cell.
    pub fn get_key(&self, key: DimensionKey) -> Option<u32> {
        let s = slot(key)?;
        (self.mask & 1 << s != 0).then(|| self.slot_value(s))
    }

    /// The WIT form, for [`MetricRow::dimensions`].
    pub fn to_dimensions(&self) -> Vec<Dimension> {
        self.iter()
            .map(|(key, value)| Dimension { key, value })
            .collect()
    }
}

impl Default for Dims {
    fn default() -> Self {
        Dims::NONE
    }
}

impl fmt::Debug for Dims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, (c, v)) in self.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}={v}", key_name(c))?;
        }
        f.write_str("]")
    }
}

/// The breakdown a plugin was configured with: a set of breakdown columns (no `user`), kept in
/// canonical order, and custom attributes (`attr.NAME` in a list), in the order given. Declare
/// [`Breakdown::columns`] and [`Breakdown::attributes`] in the plugin info (the attributes
/// first among the plugin's, so that attribute `i` of the breakdown is attribute `i` of the
/// batch) and key each event's counters by [`Breakdown::cell`] as well as by its total.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Breakdown {
    columns: Vec<Column>,
    attributes: Vec<String>,
}

impl Breakdown {
    /// A breakdown by `columns` (any order). Errors on `user` or a repeated column.
    pub fn new(columns: &[Column]) -> Result<Breakdown, String> {
        Breakdown::with_attributes(columns, &[])
    }

    /// A breakdown by `columns` (any order) and the custom attributes `attributes` (at most
    /// [`MAX_ATTRIBUTES`], each a valid name, no repeats).
    pub fn with_attributes(columns: &[Column], attributes: &[&str]) -> Result<Breakdown, String> {
        let pairs: Vec<(Column, u32)> = columns.iter().map(|&c| (c, 0)).collect();
        let dims = Dims::new(&pairs)?;
        if attributes.len() > MAX_ATTRIBUTES {
            return Err(format!(
                "{} attributes, at most {MAX_ATTRIBUTES}",
                attributes.len()
            ));
        }
        for (i, a) in attributes.iter().enumerate() {
            check_attribute_name(a)?;
            if attributes[..i].contains(a) {
                return Err(format!("dimension `{ATTRIBUTE_PREFIX}{a}` given twice"));
            }
        }
        Ok(Breakdown {
            columns: dims
                .iter()
                .filter_map(|(k, _)| match k {
                    DimensionKey::Column(c) => Some(c),
                    DimensionKey::Attribute(_) => None,
                })
                .collect(),
            attributes: attributes.iter().map(|a| a.to_string()).collect(),
        })
    }

    /// Parses a comma list of column names and `attr.NAME` attributes
    /// (`device,country,attr.creative_size`); empty gives no breakdown.
    pub fn parse(list: &str) -> Result<Breakdown, String> {
        let mut columns = Vec::new();
        let mut attributes = Vec::new();
        for name in split_list(list) {
            if let Some(a) = name.strip_prefix(ATTRIBUTE_PREFIX) {
                attributes.push(a);
                continue;
            }
            match Column::parse(name) {
                Some(c) if c != Column::User => columns.push(c),
                _ => {
                    let accepted: Vec<_> = BREAKDOWN_COLUMNS.iter().map(|c| c.as_str()).collect();
                    return Err(format!(
                        "unknown dimension `{name}` (accepted: {}, {ATTRIBUTE_PREFIX}NAME)",
                        accepted.join(", ")
                    ));
                }
            }
        }
        Breakdown::with_attributes(&columns, &attributes)
    }

    /// The columns, in canonical order: what the plugin must declare.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The custom attributes, in the order given: what the plugin must declare, first.
    pub fn attributes(&self) -> &[String] {
        &self.attributes
    }

    /// True when there is no breakdown (totals only).
    pub fn is_empty(&self) -> bool {
        self.columns.is_empty() && self.attributes.is_empty()
    }

    /// The event's cell. Errors if the event lacks one of the columns or attributes (not
    /// declared).
    pub fn cell(&self, e: &Event) -> Result<Dims, String> {
        let mut d = Dims::NONE;
        for &c in &self.columns {
            let v = e.dim(c).ok_or_else(|| {
                format!(
                    "event has no `{}` column: declare the breakdown's columns",
                    c.as_str()
                )
            })?;
            d.set(
                slot(DimensionKey::Column(c)).expect("no user in a breakdown"),
                v,
            );
        }
        for (i, a) in self.attributes.iter().enumerate() {
            let v = e.attribute(i).ok_or_else(|| {
                format!("event has no attribute `{a}`: declare the breakdown's attributes first")
            })?;
            d.set(BREAKDOWN_COLUMNS.len() + i, v);
        }
        Ok(d)
    }
}

fn split_list(list: &str) -> impl Iterator<Item = &str> {
    list.split(',').map(str::trim).filter(|s| !s.is_empty())
}

// ---------------------------------------------------------------------------------------------
// Parameters

/// The plugin's parameters (`[plugins.config.NAME]` in the host's configuration): name/value
/// pairs, values in their TOML text form (strings unquoted, arrays comma-joined).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params {
    pairs: Vec<(String, String)>,
}

impl Params {
    /// Parameters from name/value pairs (as the host sends them).
    pub fn new(mut pairs: Vec<(String, String)>) -> Self {
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        Params { pairs }
    }

    /// Parameters from borrowed pairs (tests).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Self {
        Self::new(
            pairs
                .iter()
                .map(|&(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// True when no parameter is set.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The (name, value) pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Errors on the first parameter whose name is not in `known`, naming it and the accepted
    /// ones (the SDK runs this with [`Plugin::PARAMS`] before [`Plugin::init`]).
    pub fn check_known(&self, known: &[&str]) -> Result<(), String> {
        match self
            .pairs
            .iter()
            .find(|(n, _)| !known.contains(&n.as_str()))
        {
            None => Ok(()),
            Some((n, _)) if known.is_empty() => Err(format!(
                "unknown parameter `{n}`: this plugin takes no parameters"
            )),
            Some((n, _)) => Err(format!(
                "unknown parameter `{n}` (accepted: {})",
                known.join(", ")
            )),
        }
    }

    /// The raw value of `name`.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn get_parsed<T: std::str::FromStr>(
        &self,
        name: &str,
        what: &str,
    ) -> Result<Option<T>, String> {
        self.get_str(name)
            .map(|v| {
                v.trim()
                    .parse()
                    .map_err(|_| format!("parameter `{name}`: `{v}` is not {what}"))
            })
            .transpose()
    }

    /// `name` as an unsigned integer.
    pub fn get_u64(&self, name: &str) -> Result<Option<u64>, String> {
        self.get_parsed(name, "an unsigned integer")
    }

    /// `name` as a finite number.
    pub fn get_f64(&self, name: &str) -> Result<Option<f64>, String> {
        match self.get_parsed::<f64>(name, "a number")? {
            Some(x) if !x.is_finite() => Err(format!("parameter `{name}`: {x} is not finite")),
            x => Ok(x),
        }
    }

    /// `name` as `true` or `false`.
    pub fn get_bool(&self, name: &str) -> Result<Option<bool>, String> {
        self.get_parsed(name, "true or false")
    }

    /// `name` as a list: the comma-separated items, trimmed, empty items dropped.
    pub fn get_list(&self, name: &str) -> Option<Vec<&str>> {
        self.get_str(name).map(|v| split_list(v).collect())
    }

    /// `name` as a [`Breakdown`] (a list of breakdown column names); none if absent.
    pub fn get_breakdown(&self, name: &str) -> Result<Breakdown, String> {
        match self.get_str(name) {
            None => Ok(Breakdown::default()),
            Some(v) => Breakdown::parse(v).map_err(|e| format!("parameter `{name}`: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Events

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
    /// Conversion revenue in micro-units of the reporting currency; 0 for other kinds.
    pub revenue_micros: i64,
    /// Stable 64-bit hash of the user id, if the plugin declared [`Column::User`].
    pub user: Option<u64>,
    /// Interned device, if the plugin declared [`Column::Device`].
    pub device: Option<u32>,
    /// Interned country, if the plugin declared [`Column::Country`].
    pub country: Option<u32>,
    /// Interned placement, if the plugin declared [`Column::Placement`].
    pub placement: Option<u32>,
    /// Interned currency the event was sent in, if the plugin declared [`Column::Currency`].
    pub currency: Option<u32>,
    /// The batch's attribute columns (`plugin-info.attributes` order): see [`Event::attribute`].
    attributes: &'a [Vec<u32>],
    index: usize,
    /// For conversions, when the plugin wants touchpoints: the user's clicks inside the lookback
    /// at or before the conversion and, if it wants views, impressions inside the view lookback;
    /// oldest first. Check [`Touchpoint::kind`] (or use [`Event::clicks`]).
    pub touchpoints: &'a [Touchpoint],
}

impl<'a> Event<'a> {
    /// The value of a breakdown column (`None` for `user`, which is [`Event::user`], and for a
    /// column the batch does not carry).
    pub fn dim(&self, column: Column) -> Option<u32> {
        match column {
            Column::User => None,
            Column::Device => self.device,
            Column::Country => self.country,
            Column::Placement => self.placement,
            Column::Currency => self.currency,
        }
    }

    /// The interned value of the plugin's declared attribute `i` (its index in
    /// `plugin-info.attributes`), the "unknown" value when the event has no such key; `None` if
    /// the plugin declared fewer attributes.
    #[inline]
    pub fn attribute(&self, i: usize) -> Option<u32> {
        self.attributes.get(i).map(|col| col[self.index])
    }

    /// The touchpoints that are clicks, oldest first.
    pub fn clicks(&self) -> impl DoubleEndedIterator<Item = &'a Touchpoint> + 'a {
        self.touchpoints
            .iter()
            .filter(|t| t.kind == EventKind::Click)
    }
}

/// A validated batch of one window's events (the WIT `event-batch`, columns checked).
pub struct Events {
    batch: EventBatch,
}

impl Events {
    /// Checks that the columns agree: the five base columns and every `declared` column hold one
    /// entry per event, undeclared columns are empty or full, there is one attribute column of
    /// one entry per event for each of the `attributes` declared, touchpoints are consistent.
    /// The host guarantees it; a fuzzing host may not.
    pub fn new(batch: EventBatch, declared: &[Column], attributes: usize) -> Result<Self, String> {
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
        let extra = [
            (Column::User, "users", batch.users.len()),
            (Column::Device, "devices", batch.devices.len()),
            (Column::Country, "countries", batch.countries.len()),
            (Column::Placement, "placements", batch.placements.len()),
            (Column::Currency, "currencies", batch.currencies.len()),
        ];
        for (column, field, len) in extra {
            let ok = if declared.contains(&column) {
                len == n
            } else {
                len == 0 || len == n
            };
            if !ok {
                let need = if declared.contains(&column) {
                    "declared: one per event"
                } else {
                    "undeclared: empty or one per event"
                };
                return Err(format!(
                    "event-batch column {field} has {len} entries for {n} events ({need})"
                ));
            }
        }
        if batch.attributes.len() != attributes || batch.attributes.iter().any(|a| a.len() != n) {
            return Err(format!(
                "event-batch has {} attribute columns of lengths {:?} for {n} events ({attributes} \
                 declared: one per event each)",
                batch.attributes.len(),
                batch.attributes.iter().map(Vec::len).collect::<Vec<_>>()
            ));
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
        if batch
            .touchpoints
            .iter()
            .any(|t| t.kind == EventKind::Conversion)
        {
            return Err("event-batch has a conversion as a touchpoint".into());
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
        (0..self.len()).map(move |i| self.event(i))
    }

    // Inlined into the plugin's loop so that the columns it does not read cost nothing.
    #[inline(always)]
    fn event(&self, i: usize) -> Event<'_> {
        let b = &self.batch;
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
            user: b.users.get(i).copied(),
            device: b.devices.get(i).copied(),
            country: b.countries.get(i).copied(),
            placement: b.placements.get(i).copied(),
            currency: b.currencies.get(i).copied(),
            attributes: &b.attributes,
            index: i,
            touchpoints,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The plugin trait and plugin info

/// Key value meaning "no ad": counters kept per campaign only.
pub const NO_AD: u32 = u32::MAX;

/// A metric plugin. The SDK turns it into the WIT exports ([`export_plugin!`]).
///
/// The value `init` returns is the plugin's configuration: the SDK keeps it for the instance
/// (the host calls `init` on every fresh instance, with the same parameters, before any other
/// call) and passes it to `accumulate` and `finish`. A later `init` on the same instance replaces
/// it. Every parameter needs a default: the host learns a plugin's name from `init([])`, which
/// must succeed.
pub trait Plugin: Sized + Send + 'static {
    /// Number of `i64` counters kept per key.
    const WIDTH: usize;
    /// The parameter names the plugin accepts. The SDK refuses any other name before calling
    /// `init`, so a typo in the configuration refuses the plugin at load time.
    const PARAMS: &'static [&'static str] = &[];
    /// Configures the plugin from its parameters and describes it ([`info`] builds the
    /// description). An error refuses the plugin at load time with its message.
    fn init(params: &Params) -> Result<(Self, PluginInfo), String>;
    /// Folds a batch of events (all of one window) into the accumulator.
    fn accumulate(&self, acc: &mut Counters, events: &Events) -> Result<(), String>;
    /// The window's metric rows from the accumulator.
    fn finish(&self, acc: &Counters) -> Vec<MetricRow>;
}

/// Builds a [`PluginInfo`] with the defaults: no touchpoints, no views, no columns beyond the
/// five every plugin gets, one-minute windows. Adjust with the `with_*` methods.
pub fn info(name: &str, version: &str, metrics: &[&str]) -> PluginInfo {
    PluginInfo {
        name: name.into(),
        version: version.into(),
        metrics: metrics.iter().map(|m| (*m).into()).collect(),
        wants_touchpoints: false,
        wants_views: false,
        columns: Vec::new(),
        attributes: Vec::new(),
        window: WindowSize::Minute,
    }
}

impl PluginInfo {
    /// Conversions carry the user's clicks inside the lookback (attribution).
    pub fn with_touchpoints(mut self) -> Self {
        self.wants_touchpoints = true;
        self
    }

    /// Conversions carry the user's views (impressions) as well as clicks; implies touchpoints.
    pub fn with_views(mut self) -> Self {
        self.wants_touchpoints = true;
        self.wants_views = true;
        self
    }

    /// Also reads these event columns (repeats are ignored).
    pub fn with_columns(mut self, columns: &[Column]) -> Self {
        for &c in columns {
            if !self.columns.contains(&c) {
                self.columns.push(c);
            }
        }
        self
    }

    /// Also reads these custom attributes of the event's `attributes` object (repeats are
    /// ignored; new names are appended, so a [`Breakdown`]'s attributes declared first keep
    /// their indices).
    pub fn with_attributes<S: AsRef<str>>(mut self, attributes: &[S]) -> Self {
        for a in attributes {
            let a = a.as_ref();
            if !self.attributes.iter().any(|x| x == a) {
                self.attributes.push(a.to_string());
            }
        }
        self
    }

    /// Also reads what `breakdown` needs: its columns and attributes.
    pub fn with_breakdown(self, breakdown: &Breakdown) -> Self {
        self.with_columns(breakdown.columns())
            .with_attributes(breakdown.attributes())
    }

    /// Accumulators cover this window instead of a minute.
    pub fn with_window(mut self, window: WindowSize) -> Self {
        self.window = window;
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Rows

/// A rate row for a campaign total: `value = numerator / denominator`, 0 when the denominator
/// is 0.
pub fn rate_row(campaign: u32, metric: &str, numerator: f64, denominator: f64) -> MetricRow {
    rate_row_dims(campaign, None, &Dims::NONE, metric, numerator, denominator)
}

/// A rate row for a campaign, optionally an ad, and a breakdown cell ([`Dims::NONE`] for a
/// total).
pub fn rate_row_dims(
    campaign: u32,
    ad: Option<u32>,
    dims: &Dims,
    metric: &str,
    numerator: f64,
    denominator: f64,
) -> MetricRow {
    let value = if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    };
    MetricRow {
        campaign,
        ad,
        dimensions: dims.to_dimensions(),
        metric: metric.into(),
        value,
        numerator,
        denominator,
    }
}

/// A sum row: `value = numerator`, `denominator` counts the contributing events.
pub fn sum_row(campaign: u32, ad: Option<u32>, metric: &str, sum: f64, count: f64) -> MetricRow {
    sum_row_dims(campaign, ad, &Dims::NONE, metric, sum, count)
}

/// A sum row for a breakdown cell ([`Dims::NONE`] for a total).
pub fn sum_row_dims(
    campaign: u32,
    ad: Option<u32>,
    dims: &Dims,
    metric: &str,
    sum: f64,
    count: f64,
) -> MetricRow {
    MetricRow {
        campaign,
        ad,
        dimensions: dims.to_dimensions(),
        metric: metric.into(),
        value: sum,
        numerator: sum,
        denominator: count,
    }
}

// ---------------------------------------------------------------------------------------------
// Counters

/// The largest magnitude a counter may hold: 999 999 999 999.999999 in micro-units, the largest
/// DECIMAL(18,6), which is also the largest revenue the host's decoder accepts
/// (`admetrics_event::MAX_REVENUE_MICROS`; the SDK cannot depend on the host, so the value is
/// repeated here and a test checks that the two are equal). A window sum past it could not be
/// stored exactly, so it is the plugin's error, never a wrapped or rounded number.
pub const MAX_COUNTER: i64 = 999_999_999_999_999_999;

/// Set in the encoded width when entries carry dimensions.
const DIMS_FLAG: u32 = 1 << 31;

/// Set in an encoded dimension's key byte for attribute `byte & 0x7f` (else it is a column).
const ATTRIBUTE_CODE: u8 = 0x80;

/// A counter key: campaign, ad (or [`NO_AD`]), breakdown cell (or [`Dims::NONE`]). Ordered by
/// campaign, ad, then the cell (the total first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    // campaign << 32 | ad: one comparison for both.
    campaign_ad: u64,
    dims: Dims,
}

impl Key {
    fn new(campaign: u32, ad: u32, dims: Dims) -> Key {
        Key {
            campaign_ad: (campaign as u64) << 32 | ad as u64,
            dims,
        }
    }

    fn campaign(&self) -> u32 {
        (self.campaign_ad >> 32) as u32
    }

    fn ad(&self) -> u32 {
        self.campaign_ad as u32
    }
}

/// Sparse `i64` counters keyed by (campaign, ad, dims), `width` counters per key.
///
/// Arithmetic is checked: a sum whose magnitude would pass [`MAX_COUNTER`] is not applied;
/// the `try_` methods return the error, and the others record it so that the SDK fails the
/// whole `accumulate` call with it (the host then counts a plugin failure and withholds the
/// window, as for any plugin error).
///
/// Encoded little-endian and sorted by key, so the host can store it as opaque bytes and equal
/// states encode to equal bytes. Without dimensions (no key has any) the layout is the 0.1 one,
/// `[u32 width][(u32 campaign, u32 ad, i64 × width)…]`; with them the width has bit 31 set and
/// each entry is `(u32 campaign, u32 ad, u8 n, (u8 column, u32 value) × n, i64 × width)`, the
/// column being the WIT `column` case index, or `0x80 | i` for attribute `i`.
#[derive(Debug, Clone)]
pub struct Counters {
    width: usize,
    // A sorted Vec beats a map here: windows hold ~100 keys and batches hit them in runs.
    keys: Vec<Key>,
    // Some key has dims. Until one does, a search compares (campaign, ad) only: the 0.1 cost.
    has_dims: bool,
    values: Vec<i64>,
    // The first failed `add`: the SDK turns it into the call's error.
    overflow: Option<String>,
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
    if bytes.len() < n {
        return Err("accumulator ends inside an entry".into());
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Ok(head)
}

fn take_u32(bytes: &mut &[u8]) -> Result<u32, String> {
    Ok(u32::from_le_bytes(take(bytes, 4)?.try_into().unwrap()))
}

impl Counters {
    /// Empty counters with `width` slots per key.
    pub fn new(width: usize) -> Self {
        Counters {
            width,
            keys: Vec::new(),
            has_dims: false,
            values: Vec::new(),
            overflow: None,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key has been added.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Decodes an accumulator; empty bytes give empty counters.
    pub fn decode(bytes: &[u8], width: usize) -> Result<Self, String> {
        if bytes.is_empty() {
            return Ok(Self::new(width));
        }
        let mut rest = bytes;
        let header = take_u32(&mut rest).map_err(|_| "short accumulator")?;
        let with_dims = header & DIMS_FLAG != 0;
        let stored = header & !DIMS_FLAG;
        if stored as usize != width {
            return Err(format!(
                "accumulator width {stored}, plugin expects {width}"
            ));
        }
        if !with_dims && !rest.len().is_multiple_of(8 + 8 * width) {
            return Err("accumulator length is not a whole number of entries".into());
        }
        let mut c = Counters::new(width);
        while !rest.is_empty() {
            let campaign = take_u32(&mut rest)?;
            let ad = take_u32(&mut rest)?;
            let mut dims = Dims::NONE;
            if with_dims {
                let n = take(&mut rest, 1)?[0] as usize;
                if n > MAX_DIMS {
                    return Err(format!("accumulator key has {n} dimensions"));
                }
                let mut last = None;
                for _ in 0..n {
                    let code = take(&mut rest, 1)?[0];
                    let value = take_u32(&mut rest)?;
                    let key = if code & ATTRIBUTE_CODE != 0 {
                        Some(DimensionKey::Attribute((code & !ATTRIBUTE_CODE) as u32))
                    } else {
                        Column::from_code(code).map(DimensionKey::Column)
                    };
                    match key.and_then(slot) {
                        Some(s) if last.is_none_or(|l| l < s) => {
                            dims.set(s, value);
                            last = Some(s);
                        }
                        _ => {
                            return Err(format!(
                                "accumulator key has a bad dimension column {code}"
                            ));
                        }
                    }
                }
            }
            let key = Key::new(campaign, ad, dims);
            if c.keys.last().is_some_and(|last| *last >= key) {
                return Err("accumulator keys are not sorted".into());
            }
            c.has_dims |= !key.dims.is_empty();
            c.keys.push(key);
            for _ in 0..width {
                let v = i64::from_le_bytes(take(&mut rest, 8)?.try_into().unwrap());
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
        let with_dims = self.has_dims;
        let mut out = Vec::with_capacity(4 + self.keys.len() * (8 + 8 * self.width));
        let header = self.width as u32 | if with_dims { DIMS_FLAG } else { 0 };
        out.extend_from_slice(&header.to_le_bytes());
        for (i, key) in self.keys.iter().enumerate() {
            out.extend_from_slice(&key.campaign().to_le_bytes());
            out.extend_from_slice(&key.ad().to_le_bytes());
            if with_dims {
                out.push(key.dims.len() as u8);
                for (k, value) in key.dims.iter() {
                    out.push(match k {
                        DimensionKey::Column(c) => c.code(),
                        DimensionKey::Attribute(i) => ATTRIBUTE_CODE | i as u8,
                    });
                    out.extend_from_slice(&value.to_le_bytes());
                }
            }
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
        self.add_dims(campaign, ad, &Dims::NONE, delta)
    }

    /// [`Counters::add`] for the breakdown cell `dims` of (campaign, ad).
    pub fn add_dims(&mut self, campaign: u32, ad: u32, dims: &Dims, delta: &[i64]) {
        if let Err(e) = self.try_add_dims(campaign, ad, dims, delta)
            && self.overflow.is_none()
        {
            self.overflow = Some(e);
        }
    }

    /// Adds `delta` (of length `width`) to the counters of (campaign, ad), or, if any sum's
    /// magnitude would pass [`MAX_COUNTER`], changes nothing and says which.
    pub fn try_add(&mut self, campaign: u32, ad: u32, delta: &[i64]) -> Result<(), String> {
        self.try_add_dims(campaign, ad, &Dims::NONE, delta)
    }

    /// [`Counters::try_add`] for the breakdown cell `dims` of (campaign, ad).
    pub fn try_add_dims(
        &mut self,
        campaign: u32,
        ad: u32,
        dims: &Dims,
        delta: &[i64],
    ) -> Result<(), String> {
        let w = self.width;
        let key = Key::new(campaign, ad, *dims);
        let found = self.find(&key);
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
                let dims = if dims.is_empty() {
                    String::new()
                } else {
                    format!(" {dims:?}")
                };
                return Err(format!(
                    "counter overflow: campaign {campaign} ad {ad}{dims} slot {j}: {current} + {d} \
                     passes ±{MAX_COUNTER} (MAX_COUNTER, the largest DECIMAL(18,6) in micro-units)"
                ));
            }
        }
        let i = match found {
            Ok(i) => i,
            Err(i) => {
                self.has_dims |= !key.dims.is_empty();
                self.keys.insert(i, key);
                self.values.splice(i * w..i * w, std::iter::repeat_n(0, w));
                i
            }
        };
        for (slot, d) in self.values[i * w..(i + 1) * w].iter_mut().zip(delta) {
            *slot += d; // checked above
        }
        Ok(())
    }

    #[inline(always)]
    fn find(&self, key: &Key) -> Result<usize, usize> {
        if self.has_dims || !key.dims.is_empty() {
            self.keys.binary_search(key)
        } else {
            self.keys
                .binary_search_by(|k| k.campaign_ad.cmp(&key.campaign_ad))
        }
    }

    /// The counters of (campaign, ad, dims), if that key was added.
    pub fn get(&self, campaign: u32, ad: u32, dims: &Dims) -> Option<&[i64]> {
        let i = self.find(&Key::new(campaign, ad, *dims)).ok()?;
        Some(&self.values[i * self.width..(i + 1) * self.width])
    }

    /// Iterates `(campaign, ad, dims, counters)` in key order: by campaign, then ad (`None` for
    /// [`NO_AD`], after every ad), then the total ([`Dims::NONE`]) before its cells.
    pub fn iter(&self) -> impl Iterator<Item = (u32, Option<u32>, &Dims, &[i64])> {
        self.keys.iter().enumerate().map(move |(i, k)| {
            (
                k.campaign(),
                (k.ad() != NO_AD).then_some(k.ad()),
                &k.dims,
                &self.values[i * self.width..(i + 1) * self.width],
            )
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Exports

/// The configured plugin of one instance, set by `init`.
struct Configured<P> {
    plugin: P,
    columns: Vec<Column>,
    attributes: usize,
}

/// Where [`export_plugin!`] keeps the instance's configured plugin (one per instance: the host
/// calls `init` on every fresh instance before any other call).
#[doc(hidden)]
pub struct Instance<P>(Mutex<Option<Configured<P>>>);

impl<P: Plugin> Instance<P> {
    #[doc(hidden)]
    pub const fn new() -> Self {
        Instance(Mutex::new(None))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Configured<P>>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<P: Plugin> Default for Instance<P> {
    fn default() -> Self {
        Self::new()
    }
}

const NOT_INITIALISED: &str = "plugin called before a successful init";

#[doc(hidden)]
pub fn __init<P: Plugin>(
    cell: &Instance<P>,
    params: Vec<(String, String)>,
) -> Result<PluginInfo, String> {
    let params = Params::new(params);
    let mut slot = cell.lock();
    *slot = None;
    params.check_known(P::PARAMS)?;
    let (plugin, info) = P::init(&params)?;
    if info.attributes.len() > MAX_ATTRIBUTES {
        return Err(format!(
            "{} attributes declared, at most {MAX_ATTRIBUTES}",
            info.attributes.len()
        ));
    }
    for a in &info.attributes {
        check_attribute_name(a)?;
    }
    *slot = Some(Configured {
        plugin,
        columns: info.columns.clone(),
        attributes: info.attributes.len(),
    });
    Ok(info)
}

#[doc(hidden)]
pub fn __accumulate<P: Plugin>(
    cell: &Instance<P>,
    acc: Vec<u8>,
    events: EventBatch,
) -> Result<Vec<u8>, String> {
    let slot = cell.lock();
    let configured = slot.as_ref().ok_or(NOT_INITIALISED)?;
    let events = Events::new(events, &configured.columns, configured.attributes)?;
    let mut c = Counters::decode(&acc, P::WIDTH)?;
    configured.plugin.accumulate(&mut c, &events)?;
    if let Some(overflow) = c.overflow.take() {
        return Err(overflow);
    }
    Ok(c.encode())
}

#[doc(hidden)]
pub fn __finish<P: Plugin>(cell: &Instance<P>, acc: Vec<u8>) -> Result<Vec<MetricRow>, String> {
    let slot = cell.lock();
    let configured = slot.as_ref().ok_or(NOT_INITIALISED)?;
    Ok(configured.plugin.finish(&Counters::decode(&acc, P::WIDTH)?))
}

/// Exports a [`Plugin`] implementation as the component's `metric-plugin` world.
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        static __ADMETRICS_INSTANCE: $crate::Instance<$plugin> = $crate::Instance::new();
        #[doc(hidden)]
        pub struct __AdmetricsExport;
        impl $crate::bindings::Guest for __AdmetricsExport {
            fn init(
                params: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::result::Result<$crate::PluginInfo, ::std::string::String> {
                $crate::__init::<$plugin>(&__ADMETRICS_INSTANCE, params)
            }
            fn accumulate(
                acc: ::std::vec::Vec<u8>,
                events: $crate::EventBatch,
            ) -> ::std::result::Result<::std::vec::Vec<u8>, ::std::string::String> {
                $crate::__accumulate::<$plugin>(&__ADMETRICS_INSTANCE, acc, events)
            }
            fn finish(
                acc: ::std::vec::Vec<u8>,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::MetricRow>, ::std::string::String> {
                $crate::__finish::<$plugin>(&__ADMETRICS_INSTANCE, acc)
            }
        }
        $crate::bindings::__export_metric_plugin!(__AdmetricsExport with_types_in $crate::bindings);
    };
}

// ---------------------------------------------------------------------------------------------
// Native testing

/// Running a plugin natively in unit tests (`cargo test -p my-plugin`), the way the host calls
/// it: `init` with parameters, then `accumulate` and `finish` on one window's accumulator.
pub mod testing {
    use super::*;

    /// An event to feed a plugin in a test. Every column is set (0 by default); the harness
    /// sends only the ones the plugin declared, as the host does.
    #[derive(Debug, Clone)]
    pub struct TestEvent {
        /// What happened.
        pub kind: EventKind,
        /// Event time, ms since the Unix epoch.
        pub time_ms: i64,
        /// Interned campaign id.
        pub campaign: u32,
        /// Interned ad id.
        pub ad: u32,
        /// Revenue in micro-units (conversions).
        pub revenue_micros: i64,
        /// User hash.
        pub user: u64,
        /// Interned device.
        pub device: u32,
        /// Interned country.
        pub country: u32,
        /// Interned placement.
        pub placement: u32,
        /// Interned currency.
        pub currency: u32,
        /// Interned values of the declared attributes, by index (missing ones are 0).
        pub attributes: Vec<u32>,
        /// Touchpoints (conversions of plugins that want them).
        pub touchpoints: Vec<Touchpoint>,
    }

    impl TestEvent {
        fn new(kind: EventKind, campaign: u32, ad: u32, revenue_micros: i64) -> Self {
            TestEvent {
                kind,
                time_ms: 0,
                campaign,
                ad,
                revenue_micros,
                user: 0,
                device: 0,
                country: 0,
                placement: 0,
                currency: 0,
                attributes: Vec::new(),
                touchpoints: Vec::new(),
            }
        }

        /// An impression.
        pub fn impression(campaign: u32, ad: u32) -> Self {
            Self::new(EventKind::Impression, campaign, ad, 0)
        }

        /// A click.
        pub fn click(campaign: u32, ad: u32) -> Self {
            Self::new(EventKind::Click, campaign, ad, 0)
        }

        /// A conversion with revenue.
        pub fn conversion(campaign: u32, ad: u32, revenue_micros: i64) -> Self {
            Self::new(EventKind::Conversion, campaign, ad, revenue_micros)
        }

        /// At `time_ms`.
        pub fn at(mut self, time_ms: i64) -> Self {
            self.time_ms = time_ms;
            self
        }

        /// For user `user`.
        pub fn with_user(mut self, user: u64) -> Self {
            self.user = user;
            self
        }

        /// With a breakdown column's value.
        pub fn with(mut self, column: Column, value: u32) -> Self {
            match column {
                Column::User => self.user = value.into(),
                Column::Device => self.device = value,
                Column::Country => self.country = value,
                Column::Placement => self.placement = value,
                Column::Currency => self.currency = value,
            }
            self
        }

        /// With declared attribute `i`'s value.
        pub fn with_attribute(mut self, i: usize, value: u32) -> Self {
            if self.attributes.len() <= i {
                self.attributes.resize(i + 1, 0);
            }
            self.attributes[i] = value;
            self
        }

        /// With a touchpoint of `kind` (click or impression).
        pub fn touchpoint(mut self, kind: EventKind, time_ms: i64, campaign: u32, ad: u32) -> Self {
            self.touchpoints.push(Touchpoint {
                time_ms,
                campaign,
                ad,
                kind,
            });
            self
        }
    }

    /// The batch the host would send for `events` to a plugin declaring `columns`, with
    /// touchpoints if `touchpoints` (and views among them if `views`).
    pub fn batch(
        events: &[TestEvent],
        columns: &[Column],
        touchpoints: bool,
        views: bool,
    ) -> EventBatch {
        batch_with_attributes(events, columns, 0, touchpoints, views)
    }

    /// [`batch`] for a plugin that also declares `attributes` attributes.
    pub fn batch_with_attributes(
        events: &[TestEvent],
        columns: &[Column],
        attributes: usize,
        touchpoints: bool,
        views: bool,
    ) -> EventBatch {
        let has = |c| columns.contains(&c);
        let col = |c, f: fn(&TestEvent) -> u32| {
            if has(c) {
                events.iter().map(f).collect()
            } else {
                Vec::new()
            }
        };
        let mut b = EventBatch {
            kinds: events.iter().map(|e| e.kind as u8).collect(),
            times_ms: events.iter().map(|e| e.time_ms).collect(),
            campaigns: events.iter().map(|e| e.campaign).collect(),
            ads: events.iter().map(|e| e.ad).collect(),
            revenue_micros: events.iter().map(|e| e.revenue_micros).collect(),
            users: if has(Column::User) {
                events.iter().map(|e| e.user).collect()
            } else {
                Vec::new()
            },
            devices: col(Column::Device, |e| e.device),
            countries: col(Column::Country, |e| e.country),
            placements: col(Column::Placement, |e| e.placement),
            currencies: col(Column::Currency, |e| e.currency),
            attributes: (0..attributes)
                .map(|i| {
                    events
                        .iter()
                        .map(|e| e.attributes.get(i).copied().unwrap_or(0))
                        .collect()
                })
                .collect(),
            touchpoint_ends: Vec::new(),
            touchpoints: Vec::new(),
        };
        if touchpoints {
            for e in events {
                if e.kind == EventKind::Conversion {
                    b.touchpoints.extend(
                        e.touchpoints
                            .iter()
                            .filter(|t| views || t.kind == EventKind::Click),
                    );
                }
                b.touchpoint_ends.push(b.touchpoints.len() as u32);
            }
        }
        b
    }

    /// One initialised plugin instance.
    pub struct Harness<P: Plugin> {
        instance: Instance<P>,
        info: PluginInfo,
    }

    impl<P: Plugin> Harness<P> {
        /// Calls `init` as the host does: with no parameters (which must succeed, and must name
        /// the same plugin), then with `params` (name, value) on the same instance.
        pub fn new(params: &[(&str, &str)]) -> Result<Self, String> {
            let instance = Instance::new();
            let bare = __init(&instance, Vec::new())
                .map_err(|e| format!("init([]) must succeed, but: {e}"))?;
            let pairs = params
                .iter()
                .map(|&(n, v)| (n.to_string(), v.to_string()))
                .collect();
            let info = __init(&instance, pairs)?;
            if info.name != bare.name {
                return Err(format!(
                    "init([]) names plugin `{}`, init(params) `{}`",
                    bare.name, info.name
                ));
            }
            Ok(Harness { instance, info })
        }

        /// What `init` returned.
        pub fn info(&self) -> &PluginInfo {
            &self.info
        }

        /// `accumulate` with the batch the host would send for `events` (see [`batch`]).
        pub fn accumulate(&self, acc: &[u8], events: &[TestEvent]) -> Result<Vec<u8>, String> {
            let i = &self.info;
            let b = batch_with_attributes(
                events,
                &i.columns,
                i.attributes.len(),
                i.wants_touchpoints,
                i.wants_views,
            );
            self.accumulate_batch(acc, b)
        }

        /// `accumulate` with a batch as given.
        pub fn accumulate_batch(&self, acc: &[u8], batch: EventBatch) -> Result<Vec<u8>, String> {
            __accumulate(&self.instance, acc.to_vec(), batch)
        }

        /// `finish`.
        pub fn finish(&self, acc: &[u8]) -> Result<Vec<MetricRow>, String> {
            __finish(&self.instance, acc.to_vec())
        }

        /// A whole window: `accumulate` of `events` from an empty accumulator, then `finish`.
        pub fn run(&self, events: &[TestEvent]) -> Result<Vec<MetricRow>, String> {
            let acc = self.accumulate(&[], events)?;
            self.finish(&acc)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    fn rows(c: &Counters) -> Vec<(u32, Option<u32>, Dims, Vec<i64>)> {
        c.iter()
            .map(|(c, a, d, v)| (c, a, *d, v.to_vec()))
            .collect()
    }

    fn dims(pairs: &[(Column, u32)]) -> Dims {
        Dims::new(pairs).unwrap()
    }

    #[test]
    fn counters_round_trip_and_stay_sorted() {
        let mut c = Counters::new(2);
        c.add(7, NO_AD, &[1, 0]);
        c.add(3, 1, &[0, 5]);
        c.add(7, NO_AD, &[2, 1]);
        let d = Counters::decode(&c.encode(), 2).unwrap();
        assert_eq!(
            rows(&d),
            vec![
                (3, Some(1), Dims::NONE, vec![0, 5]),
                (7, None, Dims::NONE, vec![3, 1])
            ]
        );
        assert!(Counters::decode(&c.encode(), 3).is_err());
        assert!(Counters::decode(&[1, 0, 0, 0, 9], 1).is_err());
        // A header cut short is an error, not a panic.
        assert!(Counters::decode(&[1, 0], 1).is_err());
    }

    /// Without dimensions the bytes are the 0.1 layout: `[u32 width][(u32 campaign, u32 ad,
    /// i64 × width)…]`.
    #[test]
    fn encoding_without_dims_is_the_0_1_layout() {
        let mut c = Counters::new(1);
        c.add(2, NO_AD, &[5]);
        c.add(1, 9, &[-1]);
        let mut want = Vec::new();
        want.extend_from_slice(&1u32.to_le_bytes());
        for (campaign, ad, v) in [(1u32, 9u32, -1i64), (2, NO_AD, 5)] {
            want.extend_from_slice(&campaign.to_le_bytes());
            want.extend_from_slice(&ad.to_le_bytes());
            want.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(c.encode(), want);
    }

    #[test]
    fn keys_with_dims_encode_canonically_and_round_trip() {
        let cell = dims(&[(Column::Country, 4), (Column::Device, 2)]);
        let mut c = Counters::new(1);
        c.add_dims(1, NO_AD, &cell, &[3]);
        c.add(1, NO_AD, &[10]);
        c.add_dims(1, NO_AD, &dims(&[(Column::Device, 1)]), &[7]);
        // The same cell given in another order is the same key.
        c.add_dims(
            1,
            NO_AD,
            &dims(&[(Column::Device, 2), (Column::Country, 4)]),
            &[1],
        );
        let mut want = Vec::new();
        want.extend_from_slice(&(1u32 | 1 << 31).to_le_bytes());
        let entry = |out: &mut Vec<u8>, dims: &[(u8, u32)], v: i64| {
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&NO_AD.to_le_bytes());
            out.push(dims.len() as u8);
            for &(col, val) in dims {
                out.push(col);
                out.extend_from_slice(&val.to_le_bytes());
            }
            out.extend_from_slice(&v.to_le_bytes());
        };
        // Total first, then cells in (column, value) order; device = 1, country = 2.
        entry(&mut want, &[], 10);
        entry(&mut want, &[(1, 1)], 7);
        entry(&mut want, &[(1, 2), (2, 4)], 4);
        let bytes = c.encode();
        assert_eq!(bytes, want);
        let d = Counters::decode(&bytes, 1).unwrap();
        assert_eq!(d.encode(), bytes);
        assert_eq!(
            rows(&d),
            vec![
                (1, None, Dims::NONE, vec![10]),
                (1, None, dims(&[(Column::Device, 1)]), vec![7]),
                (1, None, cell, vec![4]),
            ]
        );
        assert_eq!(d.get(1, NO_AD, &cell), Some(&[4][..]));
        assert_eq!(d.get(1, 5, &cell), None);
        assert_eq!(
            cell.to_dimensions(),
            vec![
                Dimension {
                    key: DimensionKey::Column(Column::Device),
                    value: 2
                },
                Dimension {
                    key: DimensionKey::Column(Column::Country),
                    value: 4
                }
            ]
        );
    }

    /// Until a key has dims, searches compare (campaign, ad) only; the first cell switches to
    /// full keys, in memory and after a round trip.
    #[test]
    fn totals_stay_right_once_cells_arrive() {
        let cell = dims(&[(Column::Placement, 1)]);
        let mut c = Counters::new(1);
        for campaign in [5, 1, 3] {
            c.add(campaign, NO_AD, &[1]);
        }
        assert!(!c.has_dims);
        c.add_dims(3, NO_AD, &cell, &[10]);
        c.add_dims(1, 4, &cell, &[20]);
        let mut d = Counters::decode(&c.encode(), 1).unwrap();
        assert!(c.has_dims && d.has_dims);
        for c in [&mut c, &mut d] {
            for campaign in [1, 3, 5] {
                c.add(campaign, NO_AD, &[1]);
            }
            c.add_dims(3, NO_AD, &cell, &[1]);
            assert_eq!(
                rows(c),
                vec![
                    (1, Some(4), cell, vec![20]),
                    (1, None, Dims::NONE, vec![2]),
                    (3, None, Dims::NONE, vec![2]),
                    (3, None, cell, vec![11]),
                    (5, None, Dims::NONE, vec![2]),
                ]
            );
            assert_eq!(c.get(3, NO_AD, &Dims::NONE), Some(&[2][..]));
        }
    }

    #[test]
    fn decode_refuses_malformed_dims() {
        let header = (1u32 | 1 << 31).to_le_bytes();
        let entry = |dims: &[(u8, u32)]| {
            let mut out = Vec::new();
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&2u32.to_le_bytes());
            out.push(dims.len() as u8);
            for &(col, val) in dims {
                out.push(col);
                out.extend_from_slice(&val.to_le_bytes());
            }
            out.extend_from_slice(&1i64.to_le_bytes());
            out
        };
        let acc = |entries: &[Vec<u8>]| {
            let mut out = header.to_vec();
            for e in entries {
                out.extend_from_slice(e);
            }
            out
        };
        assert!(Counters::decode(&acc(&[entry(&[(1, 1)])]), 1).is_ok());
        for (bad, why) in [
            (acc(&[entry(&[(0, 1)])]), "user column"),
            (acc(&[entry(&[(5, 1)])]), "unknown column"),
            (acc(&[entry(&[(2, 1), (1, 1)])]), "columns out of order"),
            (acc(&[entry(&[(1, 1), (1, 2)])]), "column twice"),
            (
                acc(&[entry(&[(1, 1), (2, 1), (3, 1), (4, 1), (4, 2)])]),
                "five dims",
            ),
            (acc(&[entry(&[(1, 2)]), entry(&[(1, 1)])]), "unsorted keys"),
            (acc(&[entry(&[(1, 1)]), entry(&[(1, 1)])]), "repeated key"),
        ] {
            assert!(Counters::decode(&bad, 1).is_err(), "{why}");
        }
        let mut cut = acc(&[entry(&[(1, 1)])]);
        cut.pop();
        assert!(Counters::decode(&cut, 1).is_err(), "truncated");
    }

    #[test]
    fn dims_are_canonical_and_checked() {
        let a = dims(&[(Column::Currency, 1), (Column::Device, 2)]);
        let b = dims(&[(Column::Device, 2), (Column::Currency, 1)]);
        assert_eq!(a, b);
        assert_eq!(format!("{a:?}"), "[device=2,currency=1]");
        assert_eq!(a.get(Column::Currency), Some(1));
        assert_eq!(a.get(Column::Country), None);
        assert!(Dims::new(&[(Column::User, 1)]).is_err());
        assert!(Dims::new(&[(Column::Device, 1), (Column::Device, 2)]).is_err());
        assert!(Dims::NONE < a);
    }

    /// Sums each conversion's revenue per campaign, as the attribution plugin does.
    struct Revenue;
    impl Plugin for Revenue {
        const WIDTH: usize = 2;
        fn init(_: &Params) -> Result<(Self, PluginInfo), String> {
            Ok((Revenue, info("revenue", "0", &["revenue"])))
        }
        fn accumulate(&self, acc: &mut Counters, events: &Events) -> Result<(), String> {
            for e in events.iter() {
                acc.add(e.campaign, NO_AD, &[e.revenue_micros, 1]);
            }
            Ok(())
        }
        fn finish(&self, acc: &Counters) -> Vec<MetricRow> {
            acc.iter()
                .map(|(c, _, _, v)| sum_row(c, None, "revenue", v[0] as f64, v[1] as f64))
                .collect()
        }
    }

    fn conversions(revenues: &[i64]) -> Vec<TestEvent> {
        revenues
            .iter()
            .map(|&r| TestEvent::conversion(1, 1, r))
            .collect()
    }

    /// The largest revenue the decoder accepts: 999 999 999 999.999999 (DECIMAL(18,6)).
    const NEAR_MAX: i64 = 999_999_999_999_999_999;

    /// Issue 14, defect 2: ten conversions near the accepted maximum wrapped the window's revenue
    /// negative in a release build. Now the call fails (the host counts a plugin failure and
    /// withholds the window) instead of returning a wrapped sum.
    #[test]
    fn summing_near_max_revenue_errors_instead_of_wrapping() {
        let p = Harness::<Revenue>::new(&[]).unwrap();
        let r = p.accumulate(&[], &conversions(&[NEAR_MAX; 10]));
        match &r {
            Ok(acc) => {
                let c = Counters::decode(acc, 2).unwrap();
                let sums: Vec<i64> = c.iter().map(|(_, _, _, v)| v[0]).collect();
                panic!("accumulate returned Ok with sums {sums:?}");
            }
            Err(e) => assert!(e.contains("overflow"), "{e}"),
        }
        // Across calls too: the stored accumulator at the bound plus one more micro fails.
        let acc = p.accumulate(&[], &conversions(&[NEAR_MAX])).unwrap();
        assert!(p.accumulate(&acc, &conversions(&[1])).is_err());
        assert!(p.accumulate(&acc, &conversions(&[0])).is_ok());
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
        let cell = dims(&[(Column::Device, 3)]);
        c.try_add_dims(2, NO_AD, &cell, &[MAX_COUNTER, 0]).unwrap();
        let e = c.try_add_dims(2, NO_AD, &cell, &[1, 0]).unwrap_err();
        assert!(e.contains("[device=3]"), "{e}");
        let rows: Vec<_> = c.iter().map(|(c, _, d, v)| (c, *d, v.to_vec())).collect();
        assert_eq!(
            rows,
            vec![
                (1, Dims::NONE, vec![MAX_COUNTER, 1]),
                (2, Dims::NONE, vec![-MAX_COUNTER, 0]),
                (2, cell, vec![MAX_COUNTER, 0])
            ]
        );
        // A stored accumulator past the bound (not written by this SDK) is refused.
        let mut bad = Counters::new(1);
        bad.values.push(MAX_COUNTER + 1);
        bad.keys.push(Key::new(1, NO_AD, Dims::NONE));
        assert!(Counters::decode(&bad.encode(), 1).is_err());
    }

    fn raw(n: usize) -> EventBatch {
        batch(&vec![TestEvent::impression(1, 1); n], &[], false, false)
    }

    #[test]
    fn declared_columns_must_be_full_and_undeclared_empty_or_full() {
        // Declared and full.
        let mut b = raw(3);
        b.devices = vec![1, 2, 3];
        let e = Events::new(b.clone(), &[Column::Device], 0).unwrap();
        let got: Vec<_> = e.iter().map(|e| (e.device, e.country)).collect();
        assert_eq!(got, vec![(Some(1), None), (Some(2), None), (Some(3), None)]);
        // Undeclared and full: accepted.
        assert!(Events::new(b.clone(), &[], 0).is_ok());
        // Declared and missing.
        let err = Events::new(raw(3), &[Column::Device], 0).err().unwrap();
        assert!(err.contains("devices has 0 entries for 3 events"), "{err}");
        let mut u = raw(3);
        u.users = vec![9, 9, 9];
        assert!(Events::new(u.clone(), &[Column::User], 0).is_ok());
        assert!(Events::new(raw(3), &[Column::User], 0).is_err());
        // Undeclared and partial.
        let mut p = raw(3);
        p.currencies = vec![1];
        let err = Events::new(p, &[], 0).err().unwrap();
        assert!(err.contains("currencies has 1 entries"), "{err}");
        // An empty batch with a declared column is fine.
        assert!(Events::new(raw(0), &[Column::Country], 0).is_ok());
        // A conversion as a touchpoint is refused.
        let mut t = raw(1);
        t.touchpoint_ends = vec![1];
        t.touchpoints = vec![Touchpoint {
            time_ms: 0,
            campaign: 1,
            ad: 1,
            kind: EventKind::Conversion,
        }];
        assert!(Events::new(t, &[], 0).is_err());
    }

    #[test]
    fn events_expose_columns_and_touchpoint_kinds() {
        let events = [
            TestEvent::click(1, 2)
                .with(Column::Country, 7)
                .with(Column::Placement, 8)
                .with_user(42),
            TestEvent::conversion(1, 2, 5)
                .touchpoint(EventKind::Impression, 1, 3, 4)
                .touchpoint(EventKind::Click, 2, 5, 6),
        ];
        let b = batch(&events, &[Column::User, Column::Country], true, true);
        assert!(b.placements.is_empty());
        let e = Events::new(b, &[Column::User, Column::Country], 0).unwrap();
        let v: Vec<_> = e.iter().collect();
        assert_eq!(v[0].user, Some(42));
        assert_eq!(v[0].dim(Column::Country), Some(7));
        assert_eq!(v[0].placement, None);
        assert!(v[0].touchpoints.is_empty());
        assert_eq!(v[1].touchpoints.len(), 2);
        let clicks: Vec<_> = v[1].clicks().map(|t| t.campaign).collect();
        assert_eq!(clicks, vec![5]);
        // Without views the host (and the test batch) sends the clicks only.
        let b = batch(&events, &[], true, false);
        assert_eq!(b.touchpoints.len(), 1);
        assert_eq!(b.touchpoint_ends, vec![0, 1]);
    }

    #[test]
    fn params_typed_getters() {
        let p = Params::new(vec![
            ("n".into(), "12".into()),
            ("x".into(), "0.5".into()),
            ("b".into(), "true".into()),
            ("l".into(), "country, device,".into()),
            ("e".into(), "".into()),
            ("s".into(), "hello".into()),
        ]);
        assert_eq!(
            p.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            ["b", "e", "l", "n", "s", "x"]
        );
        assert_eq!(p.get_str("s"), Some("hello"));
        assert_eq!(p.get_str("missing"), None);
        assert_eq!(p.get_u64("n"), Ok(Some(12)));
        assert_eq!(p.get_u64("missing"), Ok(None));
        assert!(p.get_u64("x").unwrap_err().contains("parameter `x`"));
        assert!(p.get_u64("s").is_err());
        assert_eq!(p.get_f64("x"), Ok(Some(0.5)));
        assert_eq!(p.get_f64("n"), Ok(Some(12.0)));
        assert!(Params::from_pairs(&[("x", "inf")]).get_f64("x").is_err());
        assert_eq!(p.get_bool("b"), Ok(Some(true)));
        assert!(p.get_bool("n").is_err());
        assert_eq!(p.get_list("l"), Some(vec!["country", "device"]));
        assert_eq!(p.get_list("e"), Some(vec![]));
        assert_eq!(p.get_list("missing"), None);
        assert_eq!(
            p.get_breakdown("l").unwrap().columns(),
            &[Column::Device, Column::Country]
        );
        assert!(p.get_breakdown("e").unwrap().is_empty());
        assert!(p.get_breakdown("missing").unwrap().is_empty());
        let err = p.get_breakdown("s").unwrap_err();
        assert!(
            err.contains("parameter `s`") && err.contains("`hello`"),
            "{err}"
        );
        assert!(
            err.contains("device, country, placement, currency"),
            "{err}"
        );
        for bad in ["user", "device,device", "Device"] {
            assert!(Breakdown::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn check_known_names_the_parameter_and_the_accepted_ones() {
        let p = Params::from_pairs(&[("dimension", "device"), ("a", "1")]);
        let err = p.check_known(&["a", "dimensions"]).unwrap_err();
        assert_eq!(
            err,
            "unknown parameter `dimension` (accepted: a, dimensions)"
        );
        let err = p.check_known(&[]).unwrap_err();
        assert!(
            err.contains("`a`") && err.contains("takes no parameters"),
            "{err}"
        );
        assert!(p.check_known(&["a", "dimension"]).is_ok());
        assert!(Params::default().check_known(&[]).is_ok());
    }

    /// Counts events per campaign and per configured breakdown cell, with a parameter.
    struct Count {
        breakdown: Breakdown,
        step: i64,
    }
    impl Plugin for Count {
        const WIDTH: usize = 1;
        const PARAMS: &'static [&'static str] = &["dimensions", "step"];
        fn init(params: &Params) -> Result<(Self, PluginInfo), String> {
            let breakdown = params.get_breakdown("dimensions")?;
            let step = params.get_u64("step")?.unwrap_or(1) as i64;
            let info = info("count", "0", &["count"])
                .with_breakdown(&breakdown)
                .with_window(WindowSize::Hour);
            Ok((Count { breakdown, step }, info))
        }
        fn accumulate(&self, acc: &mut Counters, events: &Events) -> Result<(), String> {
            for e in events.iter() {
                acc.add(e.campaign, NO_AD, &[self.step]);
                if !self.breakdown.is_empty() {
                    acc.add_dims(e.campaign, NO_AD, &self.breakdown.cell(&e)?, &[self.step]);
                }
            }
            Ok(())
        }
        fn finish(&self, acc: &Counters) -> Vec<MetricRow> {
            acc.iter()
                .map(|(c, a, d, v)| sum_row_dims(c, a, d, "count", v[0] as f64, v[0] as f64))
                .collect()
        }
    }

    #[test]
    fn info_builder_defaults() {
        let i = info("x", "1", &["m"]);
        assert!(!i.wants_touchpoints && !i.wants_views && i.columns.is_empty());
        assert_eq!(i.window, WindowSize::Minute);
        let i = i
            .with_views()
            .with_columns(&[Column::User, Column::Device, Column::User])
            .with_window(WindowSize::Day);
        assert!(i.wants_touchpoints && i.wants_views);
        assert_eq!(i.columns, vec![Column::User, Column::Device]);
        assert_eq!(i.window, WindowSize::Day);
    }

    #[test]
    fn init_configures_the_instance() {
        // Unknown parameters are refused before the plugin's init runs.
        let err = Harness::<Count>::new(&[("dimensons", "device")])
            .err()
            .unwrap();
        assert!(
            err.contains("`dimensons`") && err.contains("dimensions, step"),
            "{err}"
        );
        assert!(Harness::<Revenue>::new(&[("x", "1")]).is_err());
        assert!(Harness::<Count>::new(&[("step", "-1")]).is_err());
        // Calls before a successful init fail instead of running unconfigured.
        let cell = Instance::<Count>::new();
        assert!(__accumulate(&cell, vec![], raw(1)).is_err());
        assert!(__init(&cell, vec![("step".into(), "x".into())]).is_err());
        assert!(__finish(&cell, vec![]).is_err());

        let events = [
            TestEvent::impression(1, 1).with(Column::Device, 2),
            TestEvent::impression(1, 1)
                .with(Column::Device, 3)
                .with(Column::Country, 9),
            TestEvent::impression(1, 1).with(Column::Device, 2),
        ];
        let plain = Harness::<Count>::new(&[]).unwrap();
        assert!(plain.info().columns.is_empty());
        assert_eq!(plain.info().window, WindowSize::Hour);
        let acc = plain.accumulate(&[], &events).unwrap();
        assert_eq!(acc.len(), 4 + 16, "one key, 0.1 layout");
        let r = plain.finish(&acc).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].value, r[0].dimensions.len()), (3.0, 0));

        let p = Harness::<Count>::new(&[("dimensions", "device"), ("step", "2")]).unwrap();
        // The harness, like the host, ran init([]) first on the same instance: the second init
        // replaced the configuration.
        assert_eq!(p.info().columns, vec![Column::Device]);
        let r = p.run(&events).unwrap();
        let got: Vec<_> = r.iter().map(|r| (r.dimensions.clone(), r.value)).collect();
        let dev = |v| {
            vec![Dimension {
                key: DimensionKey::Column(Column::Device),
                value: v,
            }]
        };
        assert_eq!(got, vec![(vec![], 6.0), (dev(2), 4.0), (dev(3), 2.0)]);
        // A batch that lacks the declared column is refused.
        assert!(p.accumulate_batch(&[], raw(2)).is_err());

        // init again on the same instance replaces the configuration (columns included).
        let cell = Instance::<Count>::new();
        __init(&cell, vec![("dimensions".into(), "device".into())]).unwrap();
        assert!(__accumulate(&cell, vec![], raw(2)).is_err());
        __init(&cell, vec![]).unwrap();
        assert!(__accumulate(&cell, vec![], raw(2)).is_ok());
        // A failed init leaves the instance unconfigured, not with the previous configuration.
        assert!(__init(&cell, vec![("step".into(), "x".into())]).is_err());
        assert!(__accumulate(&cell, vec![], raw(2)).is_err());
    }

    /// A plugin with a parameter that has no default breaks the contract (`init([])` fails).
    struct NoDefault;
    impl Plugin for NoDefault {
        const WIDTH: usize = 1;
        const PARAMS: &'static [&'static str] = &["n"];
        fn init(params: &Params) -> Result<(Self, PluginInfo), String> {
            params.get_u64("n")?.ok_or("parameter `n` is required")?;
            Ok((NoDefault, info("no-default", "0", &["m"])))
        }
        fn accumulate(&self, _: &mut Counters, _: &Events) -> Result<(), String> {
            Ok(())
        }
        fn finish(&self, _: &Counters) -> Vec<MetricRow> {
            Vec::new()
        }
    }

    #[test]
    fn harness_requires_init_without_parameters_to_succeed() {
        let err = Harness::<NoDefault>::new(&[("n", "1")]).err().unwrap();
        assert!(err.contains("init([]) must succeed"), "{err}");
    }
}
