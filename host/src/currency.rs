//! Currency conversion: every conversion's revenue is turned into the reporting currency before
//! it reaches a window, so plugins never add micros of two currencies.
//!
//! ```toml
//! [currency]
//! reporting = "USD"            # what campaign_events.revenue and the metrics are in
//! [[currency.rates]]           # rate = units of reporting currency per 1 unit of the currency
//! date = "2026-01-01"          # in force from this UTC day (of the event time) until the next entry
//! EUR = 1.08
//! GBP = "1.27"                 # a number or a decimal string; at most 6 fractional digits
//! ```
//!
//! Rules:
//! * The reporting currency converts at 1, on every date, without being listed.
//! * The rates in force on a day are **exactly** those of the entry with the latest `date` at or
//!   before that day (UTC day of the event time). A currency the entry does not list has no rate
//!   that day, even if an earlier entry listed it: a stale rate is never carried forward.
//!   Before the first entry only the reporting currency has a rate.
//! * A conversion whose currency has no rate on its day is dead-lettered with reason
//!   `unknown_currency`, the detail naming the currency and the day; it is counted nowhere (its
//!   raw bytes stay in `dead_letters`, to be replayed once a rate is configured).
//! * Conversion is exact: rates are kept as integers of millionths (`rate_micros`), and
//!   `converted = round_half_even(amount_micros × rate_micros / 10^6)`, computed in i128.
//!   A converted amount above [`MAX_REVENUE_MICROS`] (the `revenue` column's maximum) is an
//!   `invalid_field` dead letter, like an original one above it.
//! * A conversion without a `currency` field would be in the reporting currency, but the decoder
//!   dead-letters such a conversion first (`missing_field`): no event reaches [`Rates::apply`]
//!   without one. Non-conversion events are untouched, whatever their `currency` field says.
//!
//! The rates are read at start-up (a change of `[currency]` is refused by the config watcher
//! until a restart). A rate changed for days already processed applies to events processed
//! after the change only: `campaign_events` keeps each event's original amount and currency
//! (`original_revenue`, `currency`) beside the converted one (`revenue`, `revenue_currency`).

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use serde::Deserialize;

use crate::event::{Event, EventKind, MAX_REVENUE_MICROS, Reason, Rejection};

const DAY_MS: i64 = 86_400_000;

/// The `[currency]` section, validated as it is read (every error names its key).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawCurrencyConfig")]
pub struct CurrencyConfig {
    /// ISO 4217 code of the currency revenue is reported in (default `USD`).
    pub reporting: String,
    /// Rate tables, sorted by date, dates distinct.
    pub rates: Vec<RateTable>,
}

impl Default for CurrencyConfig {
    fn default() -> Self {
        CurrencyConfig {
            reporting: "USD".into(),
            rates: Vec::new(),
        }
    }
}

/// One `[[currency.rates]]` entry: the complete set of rates in force from `day` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateTable {
    /// Days since 1970-01-01 (UTC).
    pub day: i64,
    /// Currency code → millionths of the reporting currency per unit.
    pub rate_micros: BTreeMap<String, i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawCurrencyConfig {
    reporting: String,
    rates: Vec<toml::Table>,
}

impl Default for RawCurrencyConfig {
    fn default() -> Self {
        RawCurrencyConfig {
            reporting: CurrencyConfig::default().reporting,
            rates: Vec::new(),
        }
    }
}

fn is_code(c: &str) -> bool {
    c.len() == 3 && c.bytes().all(|b| b.is_ascii_uppercase())
}

fn epoch() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).expect("valid date")
}

/// `day` (days since 1970-01-01) as `YYYY-MM-DD`.
pub fn day_text(day: i64) -> String {
    epoch()
        .checked_add_signed(chrono::Duration::days(day))
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("day {day}"))
}

/// A rate as written: a TOML number or a decimal string, exactly, in millionths.
fn rate_micros(key: &str, v: &toml::Value) -> Result<i64, String> {
    let text = match v {
        toml::Value::Integer(i) => i.to_string(),
        // Rust prints an f64 as the shortest decimal that reads back as it, never with an
        // exponent: 1.08 → "1.08", 1.0812345 → "1.0812345" (refused below: 7 digits).
        toml::Value::Float(f) if f.is_finite() => f.to_string(),
        toml::Value::String(s) => s.clone(),
        other => return Err(format!("{key} = {other}: expected a decimal number")),
    };
    match crate::event::parse_decimal_micros(&text) {
        Some(m) if m > 0 => Ok(m),
        Some(_) => Err(format!("{key} = {text}: a rate must be above 0")),
        None => Err(format!(
            "{key} = {text}: expected a decimal with at most 6 fractional digits"
        )),
    }
}

impl TryFrom<RawCurrencyConfig> for CurrencyConfig {
    type Error = String;

    fn try_from(raw: RawCurrencyConfig) -> Result<Self, String> {
        if !is_code(&raw.reporting) {
            return Err(format!(
                "currency.reporting = {:?}: expected an ISO 4217 code (three capital letters)",
                raw.reporting
            ));
        }
        let mut rates: Vec<RateTable> = Vec::with_capacity(raw.rates.len());
        for (i, entry) in raw.rates.into_iter().enumerate() {
            let at = |k: &str| format!("currency.rates[{i}].{k}");
            let day = match entry.get("date") {
                Some(toml::Value::String(s)) => NaiveDate::parse_from_str(s, "%Y-%m-%d").ok(),
                Some(toml::Value::Datetime(d)) if d.time.is_none() && d.offset.is_none() => {
                    NaiveDate::parse_from_str(&d.to_string(), "%Y-%m-%d").ok()
                }
                None => return Err(format!("{} is missing", at("date"))),
                _ => None,
            }
            .ok_or_else(|| format!("{}: expected a date \"YYYY-MM-DD\"", at("date")))?
            .signed_duration_since(epoch())
            .num_days();
            let mut rate_micros_of = BTreeMap::new();
            for (code, v) in &entry {
                if code == "date" {
                    continue;
                }
                if !is_code(code) {
                    return Err(format!(
                        "{}: not a key of a rates entry (date, or an ISO 4217 code of three \
                         capital letters)",
                        at(code)
                    ));
                }
                let m = rate_micros(&at(code), v)?;
                if *code == raw.reporting && m != 1_000_000 {
                    return Err(format!(
                        "{} = {v}: the reporting currency converts at 1",
                        at(code)
                    ));
                }
                rate_micros_of.insert(code.clone(), m);
            }
            if let Some(j) = rates.iter().position(|t| t.day == day) {
                return Err(format!(
                    "{}: {} is also the date of currency.rates[{j}]",
                    at("date"),
                    day_text(day)
                ));
            }
            rates.push(RateTable {
                day,
                rate_micros: rate_micros_of,
            });
        }
        rates.sort_by_key(|t| t.day);
        Ok(CurrencyConfig {
            reporting: raw.reporting,
            rates,
        })
    }
}

/// The conversion the pipeline applies (see the module doc for the rules).
#[derive(Debug, Clone)]
pub struct Rates {
    reporting: Arc<str>,
    tables: Vec<RateTable>,
}

impl Rates {
    pub fn new(cfg: &CurrencyConfig) -> Self {
        Rates {
            reporting: cfg.reporting.as_str().into(),
            tables: cfg.rates.clone(),
        }
    }

    /// The reporting currency's code.
    pub fn reporting(&self) -> &str {
        &self.reporting
    }

    /// The reporting currency's code, shared (what metric rows carry in `currency`).
    pub fn reporting_shared(&self) -> Arc<str> {
        self.reporting.clone()
    }

    /// `amount_micros` of `currency` (None: the reporting currency) at `time_ms`, in millionths
    /// of the reporting currency.
    pub fn convert(
        &self,
        amount_micros: i64,
        currency: Option<&str>,
        time_ms: i64,
    ) -> Result<i64, Rejection> {
        let currency = match currency {
            None => return Ok(amount_micros),
            Some(c) if c == &*self.reporting => return Ok(amount_micros),
            Some(c) => c,
        };
        let day = time_ms.div_euclid(DAY_MS);
        let in_force = self.tables.partition_point(|t| t.day <= day);
        let Some(table) = in_force.checked_sub(1).map(|i| &self.tables[i]) else {
            return Err(Rejection {
                reason: Reason::UnknownCurrency,
                detail: match self.tables.first() {
                    Some(first) => format!(
                        "no {currency} rate on {}: the first currency.rates entry is dated {} \
                         (reporting currency {})",
                        day_text(day),
                        day_text(first.day),
                        self.reporting
                    ),
                    None => format!(
                        "no {currency} rate on {}: no currency.rates are configured (reporting \
                         currency {})",
                        day_text(day),
                        self.reporting
                    ),
                },
            });
        };
        let Some(&rate) = table.rate_micros.get(currency) else {
            return Err(Rejection {
                reason: Reason::UnknownCurrency,
                detail: format!(
                    "no {currency} rate on {}: the currency.rates entry in force (dated {}) \
                     lists {} (reporting currency {})",
                    day_text(day),
                    day_text(table.day),
                    if table.rate_micros.is_empty() {
                        "no currency".to_string()
                    } else {
                        table
                            .rate_micros
                            .keys()
                            .map(String::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    self.reporting
                ),
            });
        };
        let converted = mul_rate(amount_micros, rate);
        if converted.unsigned_abs() > MAX_REVENUE_MICROS as u128 {
            return Err(Rejection {
                reason: Reason::InvalidField,
                detail: format!(
                    "revenue {} {currency} at {} converts to {} {}, above the maximum \
                     999999999999.999999",
                    micros_text(amount_micros as i128),
                    micros_text(rate as i128),
                    micros_text(converted),
                    self.reporting
                ),
            });
        }
        Ok(converted as i64)
    }

    /// Converts a conversion's revenue in place (`revenue_micros` becomes the reporting-currency
    /// amount; `original_revenue_micros` and `currency` keep what was sent). Other kinds pass
    /// through untouched.
    #[inline]
    pub fn apply<'a>(&self, mut ev: Event<'a>) -> Result<Event<'a>, Rejection> {
        if ev.kind == EventKind::Conversion {
            ev.revenue_micros = self.convert(
                ev.original_revenue_micros,
                ev.currency.as_deref(),
                ev.time_ms,
            )?;
        }
        Ok(ev)
    }
}

/// `amount × rate / 10^6`, rounded half to even, in i128 (no i64 operands can overflow it).
fn mul_rate(amount_micros: i64, rate_micros: i64) -> i128 {
    const SCALE: i128 = 1_000_000;
    let p = amount_micros as i128 * rate_micros as i128;
    let (q, r) = (p.div_euclid(SCALE), p.rem_euclid(SCALE));
    // q = floor(p / SCALE), 0 <= r < SCALE.
    match (2 * r).cmp(&SCALE) {
        std::cmp::Ordering::Less => q,
        std::cmp::Ordering::Greater => q + 1,
        std::cmp::Ordering::Equal => q + (q & 1),
    }
}

fn micros_text(m: i128) -> String {
    let sign = if m < 0 { "-" } else { "" };
    let a = m.unsigned_abs();
    format!("{sign}{}.{:06}", a / 1_000_000, a % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<CurrencyConfig, String> {
        #[derive(Deserialize)]
        struct Doc {
            currency: CurrencyConfig,
        }
        toml::from_str::<Doc>(text)
            .map(|d| d.currency)
            .map_err(|e| e.to_string())
    }

    const RATES: &str = r#"
[currency]
reporting = "USD"
[[currency.rates]]
date = "2026-01-01"
EUR = 1.08
GBP = "1.27"
[[currency.rates]]
date = 2026-02-01
EUR = 1.1
"#;

    /// Epoch ms of `date`'s midnight UTC plus `ms`.
    fn at(date: &str, ms: i64) -> i64 {
        NaiveDate::parse_from_str(date, "%Y-%m-%d")
            .unwrap()
            .signed_duration_since(epoch())
            .num_days()
            * DAY_MS
            + ms
    }

    #[test]
    fn rounding_is_half_to_even_and_exact() {
        // 0.5 micro rounds to the even neighbour, either way; anything past it rounds up.
        assert_eq!(mul_rate(1, 500_000), 0); // 0.5 → 0
        assert_eq!(mul_rate(3, 500_000), 2); // 1.5 → 2
        assert_eq!(mul_rate(5, 500_000), 2); // 2.5 → 2
        assert_eq!(mul_rate(1, 500_001), 1); // 0.500001 → 1
        assert_eq!(mul_rate(1, 499_999), 0);
        assert_eq!(mul_rate(-3, 500_000), -2);
        assert_eq!(mul_rate(-1, 500_001), -1);
        // 19.99 EUR at 1.08 = 21.5892 USD exactly; 0.333333 at 1.5 = 0.4999995 → 0.500000 (odd
        // 499999 → even 500000).
        assert_eq!(mul_rate(19_990_000, 1_080_000), 21_589_200);
        assert_eq!(mul_rate(333_333, 1_500_000), 500_000);
        // The extremes: no i64 operands overflow i128.
        assert_eq!(
            mul_rate(i64::MAX, i64::MAX),
            (i64::MAX as i128 * i64::MAX as i128 + 500_000) / 1_000_000
        );
    }

    #[test]
    fn rates_apply_from_their_date_until_the_next_and_never_carry_forward() {
        let r = Rates::new(&cfg(RATES).unwrap());
        assert_eq!(r.reporting(), "USD");
        let eur = |t| r.convert(10_000_000, Some("EUR"), t);
        // The first UTC millisecond of an entry's date uses it; the last of the day before not.
        assert_eq!(eur(at("2026-01-01", 0)), Ok(10_800_000));
        assert_eq!(eur(at("2026-01-31", DAY_MS - 1)), Ok(10_800_000));
        assert_eq!(eur(at("2026-02-01", 0)), Ok(11_000_000));
        assert_eq!(
            eur(at("2030-06-01", 0)),
            Ok(11_000_000),
            "the last entry stays"
        );
        // GBP is listed on 2026-01-01 only: from 2026-02-01 it has no rate.
        assert_eq!(
            r.convert(1_000_000, Some("GBP"), at("2026-01-15", 0)),
            Ok(1_270_000)
        );
        let e = r
            .convert(1_000_000, Some("GBP"), at("2026-02-01", 5))
            .unwrap_err();
        assert_eq!(e.reason, Reason::UnknownCurrency);
        assert!(
            e.detail.contains("GBP") && e.detail.contains("2026-02-01"),
            "{e}"
        );
        // Before the first entry: no rate.
        let e = eur(at("2025-12-31", DAY_MS - 1)).unwrap_err();
        assert_eq!(e.reason, Reason::UnknownCurrency);
        assert!(
            e.detail.contains("EUR") && e.detail.contains("2025-12-31"),
            "{e}"
        );
        // Before 1970 too (negative days round down).
        let e = eur(-1).unwrap_err();
        assert!(e.detail.contains("1969-12-31"), "{e}");
    }

    #[test]
    fn missing_rate_is_unknown_currency_naming_currency_and_date() {
        let r = Rates::new(&cfg(RATES).unwrap());
        let e = r
            .convert(5_000_000, Some("XXX"), at("2026-01-20", 3_600_000))
            .unwrap_err();
        assert_eq!(e.reason, Reason::UnknownCurrency);
        assert_eq!(e.reason.code(), "unknown_currency");
        assert_eq!(
            e.detail,
            "no XXX rate on 2026-01-20: the currency.rates entry in force (dated 2026-01-01) \
             lists EUR, GBP (reporting currency USD)"
        );
        let none = Rates::new(&CurrencyConfig::default());
        let e = none.convert(1, Some("EUR"), 0).unwrap_err();
        assert_eq!(e.reason, Reason::UnknownCurrency);
        assert!(e.detail.contains("no currency.rates"), "{e}");
    }

    #[test]
    fn the_reporting_currency_and_no_currency_convert_at_one_on_any_date() {
        let r = Rates::new(&cfg(RATES).unwrap());
        for t in [i64::MIN / 2, 0, at("2026-01-01", 0), at("2099-01-01", 0)] {
            assert_eq!(r.convert(123_456_789, Some("USD"), t), Ok(123_456_789));
            assert_eq!(r.convert(123_456_789, None, t), Ok(123_456_789));
        }
        // Also the default (no [currency] section): USD, nothing else.
        let d = Rates::new(&CurrencyConfig::default());
        assert_eq!(d.convert(7, Some("USD"), 0), Ok(7));
    }

    #[test]
    fn apply_converts_conversions_only_and_keeps_the_original() {
        let r = Rates::new(&cfg(RATES).unwrap());
        let t = at("2026-02-10", 0);
        let limits = crate::event::ValidationConfig {
            time_bounds: crate::event::TimeBounds::Off,
            ..Default::default()
        };
        let conv = format!(
            r#"{{"event_id":"e","event_type":"conversion","event_time":{t},"campaign_id":"c","ad_id":"a","user_id":"u","revenue":"19.99","currency":"EUR"}}"#
        );
        let ev = r
            .apply(crate::event::decode(conv.as_bytes(), t, &limits).unwrap())
            .unwrap();
        assert_eq!(ev.revenue_micros, 21_989_000);
        assert_eq!(ev.original_revenue_micros, 19_990_000);
        assert_eq!(ev.currency.as_deref(), Some("EUR"));
        // A click with a currency field: untouched, however unknown the currency.
        let click = format!(
            r#"{{"event_id":"e","event_type":"click","event_time":{t},"campaign_id":"c","ad_id":"a","user_id":"u","currency":"XXX"}}"#
        );
        let ev = crate::event::decode(click.as_bytes(), t, &limits).unwrap();
        assert_eq!(r.apply(ev.clone()), Ok(ev));
        // An unknown currency on a conversion: the rejection.
        let bad = conv.replace("EUR", "XXX");
        let e = r
            .apply(crate::event::decode(bad.as_bytes(), t, &limits).unwrap())
            .unwrap_err();
        assert_eq!(e.reason, Reason::UnknownCurrency);
        // A conversion without a currency never gets here: the decoder refuses it.
        let no_currency = conv.replace(r#","currency":"EUR""#, "");
        assert_eq!(
            crate::event::decode(no_currency.as_bytes(), t, &limits)
                .unwrap_err()
                .reason,
            Reason::MissingField
        );
    }

    #[test]
    fn a_converted_amount_past_the_column_maximum_is_refused() {
        let r = Rates::new(
            &cfg("[currency]\nreporting = \"JPY\"\n[[currency.rates]]\ndate = \"2026-01-01\"\nUSD = 150\n")
                .unwrap(),
        );
        let t = at("2026-01-02", 0);
        assert_eq!(
            r.convert(1_000_000, Some("USD"), t),
            Ok(150_000_000),
            "1 USD = 150 JPY"
        );
        let e = r.convert(MAX_REVENUE_MICROS, Some("USD"), t).unwrap_err();
        assert_eq!(e.reason, Reason::InvalidField);
        assert!(e.detail.contains("999999999999.999999"), "{e}");
    }

    #[test]
    fn bad_config_is_refused_naming_the_key() {
        for (text, key) in [
            ("[currency]\nreporting = \"usd\"\n", "currency.reporting"),
            (
                "[currency]\n[[currency.rates]]\nEUR = 1.1\n",
                "currency.rates[0].date",
            ),
            (
                "[currency]\n[[currency.rates]]\ndate = \"2026-13-01\"\n",
                "currency.rates[0].date",
            ),
            (
                "[currency]\n[[currency.rates]]\ndate = \"2026-01-01\"\nEUR = 1.0812345\n",
                "currency.rates[0].EUR",
            ),
            (
                "[currency]\n[[currency.rates]]\ndate = \"2026-01-01\"\nEUR = \"1.0812345\"\n",
                "currency.rates[0].EUR",
            ),
            (
                "[currency]\n[[currency.rates]]\ndate = \"2026-01-01\"\nEUR = 0\n",
                "currency.rates[0].EUR",
            ),
            (
                "[currency]\n[[currency.rates]]\ndate = \"2026-01-01\"\nEUR = -1.2\n",
                "currency.rates[0].EUR",
            ),
            (
                "[currency]\n[[currency.rates]]\ndate = \"2026-01-01\"\nEUR = true\n",
                "currency.rates[0].EUR",
            ),
            (
                "[currency]\n[[currency.rates]]\ndate = \"2026-01-01\"\neur = 1.1\n",
                "currency.rates[0].eur",
            ),
            (
                "[currency]\n[[currency.rates]]\ndate = \"2026-01-01\"\nUSD = 1.1\n",
                "currency.rates[0].USD",
            ),
            (
                "[currency]\n[[currency.rates]]\ndate = \"2026-01-01\"\n[[currency.rates]]\ndate = 2026-01-01\n",
                "currency.rates[1].date",
            ),
            (
                "[currency]\nreporting_currency = \"USD\"\n",
                "reporting_currency",
            ),
        ] {
            let err = cfg(text).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
        // Listing the reporting currency at 1 is allowed; entries out of order are sorted; a
        // rate with 6 fractional digits is exact.
        let c = cfg(
            "[currency]\n[[currency.rates]]\ndate = \"2026-02-01\"\nUSD = 1\nEUR = \
             \"1.123456\"\n[[currency.rates]]\ndate = \"2026-01-01\"\n",
        )
        .unwrap();
        assert_eq!(
            c.rates.iter().map(|t| day_text(t.day)).collect::<Vec<_>>(),
            ["2026-01-01", "2026-02-01"]
        );
        assert_eq!(c.rates[1].rate_micros["EUR"], 1_123_456);
    }
}
