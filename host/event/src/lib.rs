//! Decode and validate stage: raw Kafka payload bytes → a borrowed, validated [`Event`], or a
//! [`Rejection`] that says why (the message then goes to the dead-letter table, never nowhere).
//!
//! Decoding borrows from the payload (serde `Cow`s only allocate for escaped strings) because this
//! is the hottest code in the daemon: at 1M+ events/s per core there is no budget for a `String`
//! per field.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

mod fast;

/// The three event types of the ad funnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Impression,
    Click,
    Conversion,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Impression => "impression",
            EventKind::Click => "click",
            EventKind::Conversion => "conversion",
        }
    }
}

/// A validated event borrowing from the message payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub kind: EventKind,
    /// Milliseconds since the Unix epoch, UTC.
    pub time_ms: i64,
    pub campaign_id: Cow<'a, str>,
    pub ad_id: Cow<'a, str>,
    pub user_id: Cow<'a, str>,
    /// Conversion revenue in millionths of a currency unit; 0 for other kinds. As decoded it is
    /// the amount sent, in `currency`; the host converts it to its reporting currency before
    /// the event goes any further (`admetrics::currency::Rates::apply`), so from then on it is
    /// the reporting-currency amount that plugins sum and `campaign_events.revenue` stores.
    pub revenue_micros: i64,
    /// The revenue as sent, in millionths of `currency`: equal to `revenue_micros` as decoded,
    /// kept when `revenue_micros` is converted (`campaign_events.original_revenue`).
    pub original_revenue_micros: i64,
    /// The currency of the original revenue (ISO 4217 code; required on conversions).
    pub currency: Option<Cow<'a, str>>,
    pub device: Option<Cow<'a, str>>,
    pub country: Option<Cow<'a, str>>,
    pub placement: Option<Cow<'a, str>>,
    /// The optional `attributes` object: custom string attributes (`creative_size` → `300x250`),
    /// sorted by key, keys unique. Plugins declare the keys they read (`plugin-info.attributes`);
    /// `campaign_events.attributes` keeps them all. Empty without the object.
    pub attributes: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// At most this many keys in an event's `attributes` object.
pub const MAX_ATTRIBUTES: usize = 32;
/// An attribute key is 1 to this many bytes.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 64;
/// An attribute value is at most this many bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 256;

/// Why a message was not accepted. The `code` is what dead-letter counts are grouped by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Reason,
    pub detail: String,
}

/// Dead-letter reason codes (stable strings: dashboards and alerts group by them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    Oversized,
    MalformedJson,
    MissingField,
    InvalidField,
    UnknownEventType,
    NegativeRevenue,
    TimeOutOfRange,
    /// A conversion in a currency with no rate to the reporting currency for its date (set by
    /// the host's conversion, `admetrics::currency`, not by [`decode`]).
    UnknownCurrency,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::Oversized,
        Reason::MalformedJson,
        Reason::MissingField,
        Reason::InvalidField,
        Reason::UnknownEventType,
        Reason::NegativeRevenue,
        Reason::TimeOutOfRange,
        Reason::UnknownCurrency,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Reason::Oversized => "oversized",
            Reason::MalformedJson => "malformed_json",
            Reason::MissingField => "missing_field",
            Reason::InvalidField => "invalid_field",
            Reason::UnknownEventType => "unknown_event_type",
            Reason::NegativeRevenue => "negative_revenue",
            Reason::TimeOutOfRange => "time_out_of_range",
            Reason::UnknownCurrency => "unknown_currency",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason.code(), self.detail)
    }
}

fn reject(reason: Reason, detail: impl Into<String>) -> Rejection {
    Rejection {
        reason,
        detail: detail.into(),
    }
}

/// The wire shape. Unknown fields are ignored so producers can add fields without breaking us.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
    event_time: WireTime<'a>,
    #[serde(borrow)]
    campaign_id: Cow<'a, str>,
    #[serde(borrow)]
    ad_id: Cow<'a, str>,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(default)]
    revenue: Option<WireDecimal<'a>>,
    #[serde(borrow, default)]
    currency: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    device: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    country: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    placement: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    attributes: Option<WireAttributes<'a>>,
}

/// `attributes`: a JSON object. Values of any type are taken here and refused after parsing
/// unless they are strings, so that the rejection names the key (a serde error could not).
pub(crate) struct WireAttributes<'a>(Vec<(Cow<'a, str>, WireAttr<'a>)>);

pub(crate) enum WireAttr<'a> {
    Str(Cow<'a, str>),
    /// Not a string: what it is, for the rejection.
    Other(&'static str),
}

impl<'de: 'a, 'a> Deserialize<'de> for WireAttributes<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireAttributes<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string attributes")
            }
            fn visit_map<M: de::MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                let mut out = Vec::new();
                while let Some(k) = m.next_key::<CowStr<'de>>()? {
                    // Bounded while parsing: a hostile object cannot grow this without limit.
                    if out.len() > MAX_ATTRIBUTES {
                        let _: de::IgnoredAny = m.next_value()?;
                        continue;
                    }
                    out.push((k.0, m.next_value::<WireAttr<'de>>()?));
                }
                Ok(WireAttributes(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A string that borrows from the payload when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for WireAttr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireAttr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an attribute value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(WireAttr::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireAttr::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(WireAttr::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(WireAttr::Other("a number"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(WireAttr::Other("a number"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(WireAttr::Other("a number"))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(WireAttr::Other("null"))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(WireAttr::Other("null"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(WireAttr::Other("an array"))
            }
            fn visit_map<M: de::MapAccess<'de>>(self, mut m: M) -> Result<Self::Value, M::Error> {
                while m.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(WireAttr::Other("an object"))
            }
        }
        d.deserialize_any(V)
    }
}

/// The `attributes` object checked: string values, bounded counts and lengths, unique keys;
/// sorted by key.
/// Attribute (key, value) pairs, borrowed from the message where they need no unescaping.
type Attributes<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

fn check_attributes(w: Option<WireAttributes<'_>>) -> Result<Attributes<'_>, Rejection> {
    let Some(WireAttributes(pairs)) = w else {
        return Ok(Vec::new());
    };
    if pairs.len() > MAX_ATTRIBUTES {
        return Err(reject(
            Reason::InvalidField,
            format!("attributes has more than {MAX_ATTRIBUTES} keys"),
        ));
    }
    let mut out = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        if k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY_BYTES {
            return Err(reject(
                Reason::InvalidField,
                format!("attributes key {k:?} is not 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes"),
            ));
        }
        let v = match v {
            WireAttr::Str(v) => v,
            WireAttr::Other(what) => {
                return Err(reject(
                    Reason::InvalidField,
                    format!("attributes.{k} is {what}, not a string"),
                ));
            }
        };
        if v.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(reject(
                Reason::InvalidField,
                format!("attributes.{k} longer than {MAX_ATTRIBUTE_VALUE_BYTES} bytes"),
            ));
        }
        out.push((k, v));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(w) = out.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(reject(
            Reason::InvalidField,
            format!("attributes key {:?} given twice", w[0].0),
        ));
    }
    Ok(out)
}

/// `event_time`: RFC 3339 string or epoch milliseconds.
enum WireTime<'a> {
    Millis(i64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for WireTime<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireTime<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp string or epoch milliseconds")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(WireTime::Millis(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(WireTime::Millis)
                    .map_err(|_| E::custom("event_time out of range"))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(WireTime::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireTime::Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(V)
    }
}

/// `revenue`: a JSON number or a decimal string, converted exactly to micro-units.
enum WireDecimal<'a> {
    Float(f64),
    Int(i64),
    Text(Cow<'a, str>),
}

impl<'de: 'a, 'a> Deserialize<'de> for WireDecimal<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = WireDecimal<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a decimal number or decimal string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(WireDecimal::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                i64::try_from(v)
                    .map(WireDecimal::Int)
                    .map_err(|_| E::custom("revenue out of range"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                Ok(WireDecimal::Float(v))
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(WireDecimal::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireDecimal::Text(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_any(V)
    }
}

/// The largest revenue accepted, in micro-units: 999 999 999 999.999999, the largest value of the
/// `campaign_events.revenue` column, DECIMAL(18,6) (`host/src/sink/schema.rs`). It is also the
/// bound on a window's revenue sum: the plugin SDK's counters (`admetrics-plugin-sdk`,
/// `MAX_COUNTER`, checked equal to this by its tests) fail the plugin's call past it. One bound
/// everywhere: a revenue the decoder accepts always fits the table, and a window sum that would
/// not is the plugin's error, never a wrapped number. 10^18 − 1 < i64::MAX / 9, so the sum of
/// two values within the bound never overflows i64 before the bound check.
pub const MAX_REVENUE_MICROS: i64 = 999_999_999_999_999_999;

/// `MAX_REVENUE_MICROS` as written in a detail: the decimal the table can store.
const MAX_REVENUE_TEXT: &str = "999999999999.999999";

/// Decodes and validates one message. `now_ms` is the host clock, for the time bounds.
#[inline]
pub fn decode<'a>(
    payload: &'a [u8],
    now_ms: i64,
    limits: &ValidationConfig,
) -> Result<Event<'a>, Rejection> {
    decode_with(payload, now_ms, limits, true)
}

/// [`decode`] without the fast path: the general sonic-rs + serde decoder alone. What the fast
/// path is tested against (unit tests, fuzz target); not for production use.
#[doc(hidden)]
pub fn decode_reference<'a>(
    payload: &'a [u8],
    now_ms: i64,
    limits: &ValidationConfig,
) -> Result<Event<'a>, Rejection> {
    decode_with(payload, now_ms, limits, false)
}

#[inline]
fn decode_with<'a>(
    payload: &'a [u8],
    now_ms: i64,
    limits: &ValidationConfig,
    fast_path: bool,
) -> Result<Event<'a>, Rejection> {
    if payload.len() > limits.max_message_bytes {
        return Err(reject(
            Reason::Oversized,
            format!(
                "{} bytes > max_message_bytes {}",
                payload.len(),
                limits.max_message_bytes
            ),
        ));
    }
    // The common shape is scanned directly (see `fast`); anything else, and every error, goes
    // through sonic-rs (SIMD JSON with serde support, ~2x serde_json on these messages).
    let w: Wire<'a> = match fast_path.then(|| fast::scan(payload)).flatten() {
        Some(w) => w,
        None => sonic_rs::from_slice(payload).map_err(classify_json_error)?,
    };
    let kind = match &*w.event_type {
        "impression" => EventKind::Impression,
        "click" => EventKind::Click,
        "conversion" => EventKind::Conversion,
        other => {
            return Err(reject(
                Reason::UnknownEventType,
                format!("event_type {other:?}"),
            ));
        }
    };
    for (name, v) in [
        ("event_id", &w.event_id),
        ("campaign_id", &w.campaign_id),
        ("ad_id", &w.ad_id),
        ("user_id", &w.user_id),
    ] {
        if v.is_empty() {
            return Err(reject(Reason::InvalidField, format!("{name} is empty")));
        }
        if v.len() > 256 {
            return Err(reject(
                Reason::InvalidField,
                format!("{name} longer than 256 bytes"),
            ));
        }
    }
    let time_ms = match &w.event_time {
        WireTime::Millis(ms) => *ms,
        WireTime::Text(s) => parse_rfc3339_ms(s).ok_or_else(|| {
            reject(
                Reason::InvalidField,
                format!("event_time {s:?} is not RFC 3339"),
            )
        })?,
    };
    if let Some(now_ms) = limits.time_bounds.reference_ms(now_ms)
        && (time_ms > now_ms.saturating_add(limits.max_future_ms)
            || time_ms < now_ms.saturating_sub(limits.max_past_ms))
    {
        return Err(reject(
            Reason::TimeOutOfRange,
            format!(
                "event_time {time_ms} ms is outside [now - {} ms, now + {} ms] ({}; a backfill of \
                 older data: run --event-time-bounds)",
                limits.max_past_ms, limits.max_future_ms, limits.time_bounds
            ),
        ));
    }
    let revenue_micros = match (kind, &w.revenue) {
        (EventKind::Conversion, None) => {
            return Err(reject(
                Reason::MissingField,
                "missing field `revenue` on a conversion",
            ));
        }
        (EventKind::Conversion, Some(r)) => decimal_to_micros(r)?,
        (_, _) => 0,
    };
    if kind == EventKind::Conversion {
        match &w.currency {
            None => {
                return Err(reject(
                    Reason::MissingField,
                    "missing field `currency` on a conversion",
                ));
            }
            Some(c) if c.len() != 3 || !c.bytes().all(|b| b.is_ascii_uppercase()) => {
                return Err(reject(
                    Reason::InvalidField,
                    format!("currency {c:?} is not an ISO 4217 code"),
                ));
            }
            _ => {}
        }
    }
    let attributes = check_attributes(w.attributes)?;
    Ok(Event {
        event_id: w.event_id,
        kind,
        time_ms,
        campaign_id: w.campaign_id,
        ad_id: w.ad_id,
        user_id: w.user_id,
        revenue_micros,
        original_revenue_micros: revenue_micros,
        currency: w.currency,
        device: w.device,
        country: w.country,
        placement: w.placement,
        attributes,
    })
}

fn classify_json_error(e: sonic_rs::Error) -> Rejection {
    let msg = e.to_string();
    let reason = if msg.contains("missing field") {
        Reason::MissingField
    } else if e.is_unmatched_type() {
        Reason::InvalidField
    } else {
        Reason::MalformedJson
    };
    reject(reason, msg)
}

/// Revenue → micro-units, within `0..=MAX_REVENUE_MICROS`: a negative value (any magnitude,
/// `i64::MIN` included) is `negative_revenue`, one past the bound `invalid_field` naming it. No
/// arithmetic here can wrap: integers are widened to i128, floats are range-checked before the
/// cast.
fn decimal_to_micros(d: &WireDecimal) -> Result<i64, Rejection> {
    let micros: i128 = match d {
        WireDecimal::Int(i) => *i as i128 * 1_000_000,
        WireDecimal::Float(f) => {
            if !f.is_finite() {
                return Err(reject(
                    Reason::InvalidField,
                    format!("revenue {f} is not a finite number"),
                ));
            }
            // JSON numbers arrive as the nearest f64; rounding to micros recovers the written
            // decimal for up to 6 fractional digits. Clamp before the cast (a saturating cast
            // would turn 1e300 into i64::MAX silently; ±1e19 is outside the bound anyway).
            ((f * 1e6).round().clamp(-1e19, 1e19)) as i128
        }
        WireDecimal::Text(s) => parse_decimal_micros_wide(s).ok_or_else(|| {
            reject(
                Reason::InvalidField,
                format!("revenue {s:?} is not a decimal"),
            )
        })?,
    };
    let written = || match d {
        WireDecimal::Int(i) => i.to_string(),
        WireDecimal::Float(f) => f.to_string(),
        WireDecimal::Text(s) => s.to_string(),
    };
    if micros < 0 {
        return Err(reject(
            Reason::NegativeRevenue,
            format!("revenue {} < 0", written()),
        ));
    }
    if micros > MAX_REVENUE_MICROS as i128 {
        let written = written();
        return Err(reject(
            Reason::InvalidField,
            format!(
                "revenue {written} exceeds the maximum {MAX_REVENUE_TEXT} (DECIMAL(18,6), MAX_REVENUE_MICROS)"
            ),
        ));
    }
    Ok(micros as i64)
}

/// Parses `[-]digits[.digits]` exactly into micro-units (at most 6 fractional digits); `None` for
/// anything else or a magnitude above [`MAX_REVENUE_MICROS`].
pub fn parse_decimal_micros(s: &str) -> Option<i64> {
    parse_decimal_micros_wide(s)
        .filter(|m| m.unsigned_abs() <= MAX_REVENUE_MICROS as u128)
        .map(|m| m as i64)
}

/// [`parse_decimal_micros`] without the bound, in i128 so that no digit string the syntax allows
/// can overflow: up to 24 integer digits (10^30 micros < i128::MAX); longer is refused as syntax.
fn parse_decimal_micros_wide(s: &str) -> Option<i128> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if int.is_empty()
        || int.len() > 24
        || frac.len() > 6
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut v: i128 = 0;
    for b in int.bytes() {
        v = v * 10 + (b - b'0') as i128;
    }
    v *= 1_000_000;
    let mut scale = 100_000;
    for b in frac.bytes() {
        v += (b - b'0') as i128 * scale;
        scale /= 10;
    }
    Some(if neg { -v } else { v })
}

/// RFC 3339 → epoch milliseconds. A hand-written fast path covers the common
/// `YYYY-MM-DDTHH:MM:SS[.fff…]Z`; anything else (offsets, lower-case) goes through chrono.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && *b.last()? == b'Z'
    {
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let mut v = 0i64;
            for &c in &b[r] {
                if !c.is_ascii_digit() {
                    return None;
                }
                v = v * 10 + (c - b'0') as i64;
            }
            Some(v)
        };
        let (y, mo, d, h, mi, sec) = (
            num(0..4)?,
            num(5..7)?,
            num(8..10)?,
            num(11..13)?,
            num(14..16)?,
            num(17..19)?,
        );
        let mut ms = 0;
        let rest = &b[19..b.len() - 1];
        if !rest.is_empty() {
            if rest[0] != b'.' || rest.len() < 2 || !rest[1..].iter().all(u8::is_ascii_digit) {
                return None;
            }
            for (i, &c) in rest[1..].iter().take(3).enumerate() {
                ms += (c - b'0') as i64 * [100, 10, 1][i];
            }
        }
        if !(1..=12).contains(&mo)
            || d < 1
            || d > days_in_month(y, mo)
            || h > 23
            || mi > 59
            || sec > 60
        {
            return None;
        }
        return Some(((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// What the event-time bounds (`max_future_ms`, `max_past_ms`) are measured from.
///
/// A live daemon measures them from the host clock; a backfill of last month's file would then
/// dead-letter every event as `time_out_of_range`, so `admetrics run --event-time-bounds` picks
/// another reference: a fixed instant (the data validated as if read then) or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeBounds {
    /// The host clock when the message is read (the default: a live daemon).
    #[default]
    WallClock,
    /// A fixed instant, epoch milliseconds (`--event-time-bounds 2026-11-01T00:00:00Z`).
    At(i64),
    /// No event-time bound (`--event-time-bounds off`): any time is accepted.
    Off,
}

impl TimeBounds {
    /// The instant the bounds are measured from, given the host clock; `None`: no bound.
    #[inline]
    pub fn reference_ms(self, wall_clock_ms: i64) -> Option<i64> {
        match self {
            TimeBounds::WallClock => Some(wall_clock_ms),
            TimeBounds::At(ms) => Some(ms),
            TimeBounds::Off => None,
        }
    }
}

impl std::str::FromStr for TimeBounds {
    type Err = String;
    /// `wall-clock`, `off`, or an RFC 3339 instant.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "wall-clock" => Ok(TimeBounds::WallClock),
            "off" => Ok(TimeBounds::Off),
            _ => parse_rfc3339_ms(s)
                .map(TimeBounds::At)
                .ok_or_else(|| format!("{s:?}: expected wall-clock, off or an RFC 3339 instant")),
        }
    }
}

impl fmt::Display for TimeBounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimeBounds::WallClock => f.write_str("now = the host clock"),
            TimeBounds::At(ms) => write!(f, "now = {ms} ms, --event-time-bounds"),
            TimeBounds::Off => f.write_str("no bound"),
        }
    }
}

/// Bounds applied while validating (the `[validation]` config section).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValidationConfig {
    /// Events whose time is further in the future than this (vs. `time_bounds`, by default the
    /// host clock) are rejected.
    pub max_future_ms: i64,
    /// Events older than this (vs. `time_bounds`, by default the host clock) are rejected.
    pub max_past_ms: i64,
    /// Messages larger than this many bytes are rejected unparsed.
    pub max_message_bytes: usize,
    /// What the two time bounds are measured from. Not a config key: set by `run
    /// --event-time-bounds` for backfills.
    #[serde(skip)]
    pub time_bounds: TimeBounds,
}

impl Default for ValidationConfig {
    fn default() -> Self {
        ValidationConfig {
            max_future_ms: 3_600_000,
            max_past_ms: 30 * 24 * 3_600_000,
            max_message_bytes: 64 * 1024,
            time_bounds: TimeBounds::WallClock,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ValidationConfig {
        ValidationConfig::default()
    }
    const NOW: i64 = 1_764_000_000_000;

    fn ok(json: &str) -> Event<'_> {
        decode(json.as_bytes(), NOW, &limits()).unwrap()
    }
    fn err(json: &str) -> Reason {
        decode(json.as_bytes(), NOW, &limits()).unwrap_err().reason
    }

    #[test]
    fn decodes_a_conversion_with_string_time_and_revenue() {
        let e = ok(
            r#"{"event_id":"e1","event_type":"conversion","event_time":"2025-11-24T16:00:00.250Z","campaign_id":"c1","ad_id":"a1","user_id":"u\"1","revenue":"19.99","currency":"USD","country":"DE"}"#,
        );
        assert_eq!(e.kind, EventKind::Conversion);
        assert_eq!(
            e.time_ms,
            chrono::DateTime::parse_from_rfc3339("2025-11-24T16:00:00.250Z")
                .unwrap()
                .timestamp_millis()
        );
        assert_eq!(e.revenue_micros, 19_990_000);
        assert_eq!(e.user_id, "u\"1");
        assert_eq!(e.country.as_deref(), Some("DE"));
    }

    #[test]
    fn attributes_are_string_pairs_sorted_by_key_and_bounded() {
        let base = r#"{"event_id":"e","event_type":"click","event_time":1764000000000,"campaign_id":"c","ad_id":"a","user_id":"u""#;
        let with = |attrs: &str| format!("{base},\"attributes\":{attrs}}}");
        let json = with(r#"{"size":"300x250","b\u0065t":"x"}"#);
        let e = ok(&json).attributes;
        let pairs: Vec<(&str, &str)> = e.iter().map(|(k, v)| (&**k, &**v)).collect();
        assert_eq!(pairs, [("bet", "x"), ("size", "300x250")]);
        // Absent, null or empty: no attributes.
        assert!(ok(&format!("{base}}}")).attributes.is_empty());
        assert!(ok(&with("null")).attributes.is_empty());
        assert!(ok(&with("{}")).attributes.is_empty());
        let rejected = |attrs: &str| {
            let json = with(attrs);
            let e = decode(json.as_bytes(), NOW, &limits()).unwrap_err();
            // The fast path never takes an object, so both paths word it the same.
            assert_eq!(
                decode_reference(json.as_bytes(), NOW, &limits()).unwrap_err(),
                e
            );
            (e.reason, e.detail)
        };
        for (attrs, detail) in [
            (r#"{"n":3}"#, "attributes.n is a number, not a string"),
            (r#"{"n":null}"#, "attributes.n is null, not a string"),
            (
                r#"{"n":{"x":"y"}}"#,
                "attributes.n is an object, not a string",
            ),
            (r#"{"n":"a","n":"b"}"#, "attributes key \"n\" given twice"),
            (r#"{"":"a"}"#, "attributes key \"\" is not 1 to 64 bytes"),
        ] {
            assert_eq!(
                rejected(attrs),
                (Reason::InvalidField, detail.into()),
                "{attrs}"
            );
        }
        let long = format!(r#"{{"k":"{}"}}"#, "v".repeat(MAX_ATTRIBUTE_VALUE_BYTES + 1));
        assert_eq!(rejected(&long).0, Reason::InvalidField);
        let many = (0..=MAX_ATTRIBUTES)
            .map(|i| format!(r#""k{i}":"v""#))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            rejected(&format!("{{{many}}}")),
            (
                Reason::InvalidField,
                format!("attributes has more than {MAX_ATTRIBUTES} keys")
            )
        );
        // Not an object at all: the type error of the general path.
        assert_eq!(rejected(r#""size""#).0, Reason::InvalidField);
    }

    #[test]
    fn numeric_time_and_float_revenue_are_exact() {
        let json = format!(
            r#"{{"event_id":"e","event_type":"conversion","event_time":{NOW},"campaign_id":"c","ad_id":"a","user_id":"u","revenue":0.1,"currency":"EUR"}}"#
        );
        let e = ok(&json);
        assert_eq!(e.time_ms, NOW);
        assert_eq!(e.revenue_micros, 100_000);
    }

    #[test]
    fn fast_rfc3339_path_agrees_with_chrono() {
        for s in [
            "2024-02-29T23:59:59Z",
            "1999-12-31T00:00:00.1Z",
            "2030-06-15T12:34:56.789123Z",
            "1970-01-01T00:00:00Z",
        ] {
            assert_eq!(
                parse_rfc3339_ms(s),
                chrono::DateTime::parse_from_rfc3339(s)
                    .ok()
                    .map(|t| t.timestamp_millis()),
                "{s}"
            );
        }
        assert_eq!(
            parse_rfc3339_ms("2025-11-24T17:00:00+01:00"),
            parse_rfc3339_ms("2025-11-24T16:00:00Z")
        );
        assert_eq!(parse_rfc3339_ms("2023-02-29T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn every_kind_of_bad_input_has_its_reason() {
        let base = |f: &str| {
            format!(
                r#"{{"event_id":"e","event_type":"click","event_time":{NOW},"campaign_id":"c","ad_id":"a","user_id":"u"{f}}}"#
            )
        };
        assert_eq!(err("{not json"), Reason::MalformedJson);
        assert_eq!(err(r#"{"event_id":"e"}"#), Reason::MissingField);
        assert_eq!(
            err(
                r#"{"event_id":1,"event_type":"click","event_time":1,"campaign_id":"c","ad_id":"a","user_id":"u"}"#
            ),
            Reason::InvalidField
        );
        assert_eq!(
            err(&base("").replace("click", "view")),
            Reason::UnknownEventType
        );
        assert_eq!(
            err(&base(r#","revenue":"-1","currency":"USD""#).replace("click", "conversion")),
            Reason::NegativeRevenue
        );
        assert_eq!(
            err(&base(r#","currency":"USD""#).replace("click", "conversion")),
            Reason::MissingField
        );
        assert_eq!(
            err(&base("").replace(&NOW.to_string(), &(NOW + 86_400_000).to_string())),
            Reason::TimeOutOfRange
        );
        assert_eq!(
            err(&base("").replace(&NOW.to_string(), "0")),
            Reason::TimeOutOfRange
        );
        assert_eq!(
            err(&base("").replace(&NOW.to_string(), "\"noon\"")),
            Reason::InvalidField
        );
        let big = base(&format!(r#","pad":"{}""#, "x".repeat(70_000)));
        assert_eq!(err(&big), Reason::Oversized);
        assert_eq!(
            err(&base("").replace("\"c\"", "\"\"")),
            Reason::InvalidField
        );
    }

    #[test]
    fn invalid_utf8_and_trailing_garbage_are_malformed() {
        let mut bytes = format!(r#"{{"event_id":"e","event_type":"click","event_time":{NOW},"campaign_id":"c","ad_id":"a","user_id":"u"}}"#).into_bytes();
        let ok_len = bytes.len();
        bytes.extend_from_slice(b" trailing");
        assert_eq!(
            decode(&bytes, NOW, &limits()).unwrap_err().reason,
            Reason::MalformedJson
        );
        bytes.truncate(ok_len);
        let pos = bytes.iter().position(|&b| b == b'u').unwrap();
        bytes[pos] = 0xff;
        assert_eq!(
            decode(&bytes, NOW, &limits()).unwrap_err().reason,
            Reason::MalformedJson
        );
        assert_eq!(
            decode(b"[1,2]", NOW, &limits()).unwrap_err().reason,
            Reason::InvalidField
        );
        assert_eq!(
            decode(b"", NOW, &limits()).unwrap_err().reason,
            Reason::MalformedJson
        );
    }

    /// The fast path must agree with the general decoder on every message: valid ones, each kind
    /// of bad one, and shapes only one of them handles (escapes, nesting, null, floats, dups …).
    #[test]
    fn fast_path_agrees_with_the_general_decoder() {
        let good = r#"{"event_id":"e1","event_type":"conversion","event_time":"2025-11-24T16:00:00.250Z","campaign_id":"c1","ad_id":"a1","user_id":"u1","revenue":"19.99","currency":"USD","device":"ios","country":"DE","placement":"feed"}"#.to_string();
        let mut cases: Vec<String> = vec![
            good.clone(),
            format!(" \n\t{good}\r\n "),
            good.replace(r#""revenue":"19.99""#, r#""revenue":19"#),
            good.replace(r#""revenue":"19.99""#, r#""revenue":19.5"#),
            good.replace(r#""revenue":"19.99""#, r#""revenue":-19"#),
            good.replace(r#""revenue":"19.99""#, r#""revenue":019"#),
            good.replace(r#""revenue":"19.99""#, r#""revenue":1e2"#),
            good.replace(r#""revenue":"19.99""#, r#""revenue":null"#),
            good.replace(r#""revenue":"19.99""#, r#""revenue":99999999999999999999"#),
            good.replace(r#""2025-11-24T16:00:00.250Z""#, &NOW.to_string()),
            good.replace(r#""2025-11-24T16:00:00.250Z""#, &format!("{NOW}.0")),
            good.replace(r#""2025-11-24T16:00:00.250Z""#, &format!("-{NOW}")),
            good.replace(r#""2025-11-24T16:00:00.250Z""#, "1234567890123456789"),
            good.replace(r#""2025-11-24T16:00:00.250Z""#, &"7".repeat(40)), // found by the fuzzer
            good.replace("\"u1\"", "\"u\\\"1\""),
            good.replace("\"u1\"", "\"u\\u00e91\""),
            good.replace("\"u1\"", "\"u\t1\""),
            good.replace("\"u1\"", "\"user-0000ü-longer-than-8\u{1}x\""),
            good.replace("\"u1\"", "\"üser-ümlaut-😀-longer-than-eight\""),
            good.replace("\"u1\"", "\"user-0000-1234567\\\"x\""),
            good.replace("\"u1\"", "\"\""),
            good.replace("\"u1\"", "1"),
            good.replace("\"u1\"", "true"),
            good.replace("\"u1\"", "[\"u1\"]"),
            good.replace("\"ios\"", "null"),
            good.replace("\"ios\"", "7"),
            good.replace("\"ios\"", "{\"a\":1}"),
            good.replace(r#","currency":"USD""#, ""),
            good.replace(r#","currency":"USD""#, r#","currency":"usd""#),
            good.replace(r#""event_id":"e1","#, ""),
            good.replace(r#""event_id":"e1","#, r#""event_id":"e1","event_id":"e2","#),
            good.replace(r#""event_id":"e1","#, r#""extra":"x","extra":"y","#),
            good.replace(
                r#""event_id":"e1","#,
                r#""extra":{"deep":[1,2,{"x":null}]},"#,
            ),
            good.replace(r#""event_id":"e1","#, r#""extra":1,"#),
            good.replace(r#""event_id":"e1","#, r#""ev\u0065nt_id":"e1","#),
            good.replace("conversion", "click"),
            good.replace("conversion", "view"),
            good.replace(":", " : "),
            good.replace(",", " , "),
            good.replace("}", ",}"),
            good.replace("{", "{,"),
            format!("{good}x"),
            format!("{good}{{}}"),
            good[..good.len() - 1].to_string(),
            good.replace("\"", "'"),
            "{}".into(),
            "[]".into(),
            "".into(),
            "null".into(),
            "\"x\"".into(),
        ];
        for i in 1..good.len() {
            cases.push(good[..i].to_string()); // every truncation
        }
        let mut bytes: Vec<Vec<u8>> = cases.into_iter().map(String::into_bytes).collect();
        let mut bad_utf8 = good.clone().into_bytes();
        bad_utf8[20] = 0xc3;
        bytes.push(bad_utf8);
        for b in &bytes {
            let fast = decode(b, NOW, &limits());
            let general = decode_reference(b, NOW, &limits());
            assert_eq!(
                fast,
                general,
                "fast path and general decoder differ on {:?}",
                String::from_utf8_lossy(b)
            );
        }
        assert!(
            fast::scan(good.as_bytes()).is_some(),
            "the common shape takes the fast path"
        );
    }

    #[test]
    fn decimal_parser_is_exact_and_strict() {
        assert_eq!(parse_decimal_micros("12.345678"), Some(12_345_678));
        assert_eq!(parse_decimal_micros("0.5"), Some(500_000));
        assert_eq!(parse_decimal_micros("-3"), Some(-3_000_000));
        assert_eq!(parse_decimal_micros("1.2345678"), None);
        assert_eq!(parse_decimal_micros("1e3"), None);
        assert_eq!(parse_decimal_micros(".5"), None);
    }
}

#[cfg(test)]
mod time_bounds_tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;
    const DAY: i64 = 86_400_000;

    fn click_at(ms: i64) -> String {
        format!(
            r#"{{"event_id":"e","event_type":"click","event_time":{ms},"campaign_id":"c","ad_id":"a","user_id":"u"}}"#
        )
    }

    /// Issue 14, defect 7: a backfill of 40-day-old events is `time_out_of_range` against the
    /// wall clock (the default, and what dead-lettered every event of `run --file` before), and
    /// accepted with `--event-time-bounds off` or an instant near the data.
    #[test]
    fn backfill_bounds_are_relative_to_the_chosen_reference() {
        let old = click_at(NOW - 40 * DAY);
        let mut limits = ValidationConfig::default();
        let r = decode(old.as_bytes(), NOW, &limits).unwrap_err();
        assert_eq!(r.reason, Reason::TimeOutOfRange);
        assert!(r.detail.contains("--event-time-bounds"), "{r}");

        limits.time_bounds = "off".parse().unwrap();
        assert_eq!(limits.time_bounds, TimeBounds::Off);
        assert_eq!(limits.time_bounds.reference_ms(NOW), None);
        assert!(decode(old.as_bytes(), NOW, &limits).is_ok());
        assert!(decode(click_at(0).as_bytes(), NOW, &limits).is_ok());

        // Relative to an instant: the bounds still hold around it.
        let at = NOW - 39 * DAY;
        limits.time_bounds = TimeBounds::At(at);
        assert_eq!(limits.time_bounds.reference_ms(NOW), Some(at));
        assert!(decode(old.as_bytes(), NOW, &limits).is_ok());
        assert_eq!(
            decode(click_at(NOW).as_bytes(), NOW, &limits)
                .unwrap_err()
                .reason,
            Reason::TimeOutOfRange,
            "an event 39 days after the instant is in its future"
        );
        assert_eq!(
            "2025-10-15T00:00:00Z".parse::<TimeBounds>(),
            Ok(TimeBounds::At(
                parse_rfc3339_ms("2025-10-15T00:00:00Z").unwrap()
            ))
        );
        assert_eq!(
            "wall-clock".parse::<TimeBounds>(),
            Ok(TimeBounds::WallClock)
        );
        assert!("yesterday".parse::<TimeBounds>().is_err());
    }
}

#[cfg(test)]
mod revenue_bound_tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;

    fn conversion(revenue: &str) -> Result<i64, Rejection> {
        let json = format!(
            r#"{{"event_id":"e","event_type":"conversion","event_time":{NOW},"campaign_id":"c","ad_id":"a","user_id":"u","revenue":{revenue},"currency":"USD"}}"#
        );
        let fast = decode(json.as_bytes(), NOW, &ValidationConfig::default());
        let general = decode_reference(json.as_bytes(), NOW, &ValidationConfig::default());
        assert_eq!(
            fast, general,
            "fast path and general decoder differ on {json}"
        );
        fast.map(|e| e.revenue_micros)
    }

    /// Issue 14, defect 2: `i64::MIN` passed `i.abs()` (a wrap in release, a panic in debug)
    /// and became revenue 0.
    #[test]
    fn i64_min_revenue_is_negative_not_zero() {
        let r = conversion("-9223372036854775808").unwrap_err();
        assert_eq!(r.reason, Reason::NegativeRevenue, "{r}");
        assert_eq!(r.detail, "revenue -9223372036854775808 < 0");
        let r = conversion("\"-9223372036854775808\"").unwrap_err();
        assert_eq!(r.reason, Reason::NegativeRevenue, "{r}");
        let r = conversion("-9223372036854775808.0").unwrap_err();
        assert_eq!(r.reason, Reason::NegativeRevenue, "{r}");
    }

    /// The largest accepted revenue is the largest DECIMAL(18,6); one micro more is refused with
    /// a detail naming the bound, in every spelling.
    #[test]
    fn revenue_bound_is_the_decimal_18_6_maximum() {
        assert_eq!(MAX_REVENUE_MICROS, 10i64.pow(18) - 1);
        assert_eq!(
            conversion("\"999999999999.999999\""),
            Ok(MAX_REVENUE_MICROS)
        );
        assert_eq!(
            conversion("\"999999999999.999998\""),
            Ok(MAX_REVENUE_MICROS - 1)
        );
        assert_eq!(conversion("999999999999"), Ok(999_999_999_999_000_000));
        for over in [
            "\"1000000000000\"",
            "\"1000000000000.000000\"",
            "1000000000000",
            "1000000000000.0",
            "1e12",
            "9223372036854775807",
            "\"9223372036854.775807\"",
        ] {
            let r = conversion(over).unwrap_err();
            assert_eq!(r.reason, Reason::InvalidField, "{over}: {r}");
            assert!(
                r.detail.contains("999999999999.999999"),
                "{over}: the detail names the bound: {r}"
            );
        }
        // One micro below zero is negative, not out of range.
        assert_eq!(
            conversion("\"-0.000001\"").unwrap_err().reason,
            Reason::NegativeRevenue
        );
        assert_eq!(
            conversion("\"-999999999999.999999\"").unwrap_err().reason,
            Reason::NegativeRevenue
        );
    }
}
