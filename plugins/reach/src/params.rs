//! The plugin's parameters (`[plugins.config.reach]`), as `init` receives them: name/value
//! pairs, values in their TOML text form (strings unquoted).

use crate::sketch::DEFAULT_EXACT_THRESHOLD;

/// The window the accumulators cover (the WIT `window-size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// 60 s.
    Minute,
    /// One hour.
    Hour,
    /// One calendar day in the campaign's time zone.
    Day,
}

/// The largest `exact_threshold`: 65 536 hashes are 512 KiB per campaign, copied into and out of
/// the plugin on every batch; past that the 12 KiB sketch's 0.8 % is the better deal.
pub const MAX_EXACT_THRESHOLD: u32 = 1 << 16;

/// The parsed parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// `window` = `minute` | `hour` | `day` (default `day`).
    pub window: Window,
    /// `exact_threshold` = distinct users per campaign counted exactly, 0 ..= 65536 (default
    /// 1536); past it the campaign's count is a HyperLogLog estimate.
    pub exact_threshold: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: Window::Day,
            exact_threshold: DEFAULT_EXACT_THRESHOLD,
        }
    }
}

const KNOWN: [&str; 2] = ["exact_threshold", "window"];

impl Config {
    /// Parses `init`'s parameters. Unknown names are refused, all of them named in one error;
    /// so are repeated names and invalid values.
    pub fn parse(params: &[(String, String)]) -> Result<Config, String> {
        let unknown: Vec<&str> = params
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !KNOWN.contains(k))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "unknown parameter{} `{}` (accepted: {})",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join("`, `"),
                KNOWN.join(", ")
            ));
        }
        let mut cfg = Config::default();
        let mut seen: Vec<&str> = Vec::new();
        for (k, v) in params {
            if seen.contains(&k.as_str()) {
                return Err(format!("parameter `{k}` given twice"));
            }
            seen.push(k);
            match k.as_str() {
                "window" => {
                    cfg.window = match v.as_str() {
                        "minute" => Window::Minute,
                        "hour" => Window::Hour,
                        "day" => Window::Day,
                        _ => {
                            return Err(format!(
                                "parameter `window`: `{v}` is not minute, hour or day"
                            ));
                        }
                    }
                }
                _ => {
                    cfg.exact_threshold = v
                        .parse::<u32>()
                        .ok()
                        .filter(|t| *t <= MAX_EXACT_THRESHOLD && !v.starts_with('+'))
                        .ok_or_else(|| {
                            format!(
                                "parameter `exact_threshold`: `{v}` is not an integer from 0 to \
                                 {MAX_EXACT_THRESHOLD}"
                            )
                        })?
                }
            }
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_and_values() {
        assert_eq!(
            Config::parse(&[]).unwrap(),
            Config {
                window: Window::Day,
                exact_threshold: 1536
            }
        );
        let c = Config::parse(&p(&[("exact_threshold", "0"), ("window", "minute")])).unwrap();
        assert_eq!((c.window, c.exact_threshold), (Window::Minute, 0));
        let c = Config::parse(&p(&[("window", "hour")])).unwrap();
        assert_eq!(c.window, Window::Hour);
        assert_eq!(
            Config::parse(&p(&[("exact_threshold", "65536")]))
                .unwrap()
                .exact_threshold,
            65536
        );
    }

    #[test]
    fn unknown_parameters_are_named() {
        let e = Config::parse(&p(&[
            ("precison", "12"),
            ("window", "day"),
            ("lookback", "1"),
        ]))
        .unwrap_err();
        assert_eq!(
            e,
            "unknown parameters `precison`, `lookback` (accepted: exact_threshold, window)"
        );
        let e = Config::parse(&p(&[("windows", "day")])).unwrap_err();
        assert_eq!(
            e,
            "unknown parameter `windows` (accepted: exact_threshold, window)"
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for (k, v) in [
            ("window", "week"),
            ("window", "\"day\""),
            ("exact_threshold", "-1"),
            ("exact_threshold", "+5"),
            ("exact_threshold", "65537"),
            ("exact_threshold", "1e3"),
        ] {
            let e = Config::parse(&p(&[(k, v)])).unwrap_err();
            assert!(e.contains(k), "{k} = {v}: {e}");
        }
        assert!(
            Config::parse(&p(&[("window", "day"), ("window", "hour")]))
                .unwrap_err()
                .contains("twice")
        );
    }
}
