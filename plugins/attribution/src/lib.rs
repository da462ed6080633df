//! Last-click attribution: each conversion's revenue is credited to the campaign and ad of the
//! user's latest click inside the lookback (the host sends exactly those clicks as touchpoints),
//! or reported as unattributed. Revenue lands in the window of the conversion. Views are not
//! clicks: the plugin does not ask for them (`wants-views` unset) and ignores any touchpoint
//! that is not a click.
//!
//! Rows: `revenue` and `unattributed_revenue` per campaign of the conversion, `attributed_revenue`
//! per credited (campaign, ad). Per window, Σ attributed + Σ unattributed = Σ revenue exactly, because
//! all sums are integer micro-units.
use admetrics_plugin_sdk::*;

struct LastClick;

const MICROS: f64 = 1_000_000.0;

impl Plugin for LastClick {
    // (campaign, NO_AD): [revenue, conversions, unattributed revenue, unattributed conversions]
    // (campaign, ad):    [attributed revenue, attributed conversions, 0, 0]
    const WIDTH: usize = 4;

    fn init(_: &Params) -> Result<(Self, PluginInfo), String> {
        let metrics = ["revenue", "attributed_revenue", "unattributed_revenue"];
        let info = info("attribution", env!("CARGO_PKG_VERSION"), &metrics).with_touchpoints();
        Ok((LastClick, info))
    }

    fn accumulate(&self, acc: &mut Counters, events: &Events) -> Result<(), String> {
        for e in events.iter().filter(|e| e.kind == EventKind::Conversion) {
            let r = e.revenue_micros;
            // Latest click wins; on equal times the one earlier in the list (`rev()` then
            // `max_by_key`, which keeps the last maximum it sees).
            match e.clicks().rev().max_by_key(|t| t.time_ms) {
                Some(t) => {
                    acc.add(e.campaign, NO_AD, &[r, 1, 0, 0]);
                    acc.add(t.campaign, t.ad, &[r, 1, 0, 0]);
                }
                None => acc.add(e.campaign, NO_AD, &[r, 1, r, 1]),
            }
        }
        Ok(())
    }

    fn finish(&self, acc: &Counters) -> Vec<MetricRow> {
        let mut rows = Vec::new();
        for (c, ad, _, v) in acc.iter() {
            match ad {
                None => {
                    rows.push(sum_row(
                        c,
                        None,
                        "revenue",
                        v[0] as f64 / MICROS,
                        v[1] as f64,
                    ));
                    rows.push(sum_row(
                        c,
                        None,
                        "unattributed_revenue",
                        v[2] as f64 / MICROS,
                        v[3] as f64,
                    ));
                }
                Some(ad) => rows.push(sum_row(
                    c,
                    Some(ad),
                    "attributed_revenue",
                    v[0] as f64 / MICROS,
                    v[1] as f64,
                )),
            }
        }
        rows
    }
}

export_plugin!(LastClick);

#[cfg(test)]
mod tests {
    use super::*;
    use admetrics_plugin_sdk::testing::*;

    fn table(rows: &[MetricRow]) -> Vec<(u32, Option<u32>, &str, f64, f64)> {
        rows.iter()
            .map(|r| {
                assert!(r.dimensions.is_empty());
                (r.campaign, r.ad, r.metric.as_str(), r.value, r.denominator)
            })
            .collect()
    }

    #[test]
    fn latest_click_gets_the_revenue() {
        let p = Harness::<LastClick>::new(&[]).unwrap();
        let i = p.info();
        assert!(i.wants_touchpoints && !i.wants_views && i.columns.is_empty());
        let rows = p
            .run(&[
                TestEvent::conversion(1, 10, 2_500_000)
                    .touchpoint(EventKind::Click, 1, 2, 20)
                    .touchpoint(EventKind::Click, 3, 3, 30),
                TestEvent::conversion(1, 10, 1_000_000),
                TestEvent::click(1, 10),
            ])
            .unwrap();
        assert_eq!(
            table(&rows),
            vec![
                (1, None, "revenue", 3.5, 2.0),
                (1, None, "unattributed_revenue", 1.0, 1.0),
                (3, Some(30), "attributed_revenue", 2.5, 1.0),
            ]
        );
    }

    /// A host that sends views anyway (or a view-through configuration) changes nothing: only
    /// clicks are credited.
    #[test]
    fn views_are_ignored() {
        let p = Harness::<LastClick>::new(&[]).unwrap();
        let events = [
            TestEvent::conversion(1, 10, 4_000_000)
                .touchpoint(EventKind::Click, 1, 2, 20)
                .touchpoint(EventKind::Impression, 5, 3, 30),
            TestEvent::conversion(1, 10, 1_000_000).touchpoint(EventKind::Impression, 5, 3, 30),
        ];
        let with_views = p
            .accumulate_batch(&[], batch(&events, &[], true, true))
            .unwrap();
        assert_eq!(
            table(&p.finish(&with_views).unwrap()),
            vec![
                (1, None, "revenue", 5.0, 2.0),
                (1, None, "unattributed_revenue", 1.0, 1.0),
                (2, Some(20), "attributed_revenue", 4.0, 1.0),
            ]
        );
        assert_eq!(p.run(&events).unwrap(), p.finish(&with_views).unwrap());
    }

    #[test]
    fn equal_times_credit_the_earlier_touchpoint_in_the_list() {
        // Pins the 0.1 behaviour (`rev().max_by_key` returns the first of equal maxima).
        let p = Harness::<LastClick>::new(&[]).unwrap();
        let rows = p
            .run(&[TestEvent::conversion(1, 10, 1)
                .touchpoint(EventKind::Click, 7, 2, 20)
                .touchpoint(EventKind::Click, 7, 3, 30)])
            .unwrap();
        assert_eq!(rows[2].ad, Some(20));
    }

    #[test]
    fn takes_no_parameters() {
        let err = Harness::<LastClick>::new(&[("lookback", "1h")])
            .err()
            .unwrap();
        assert!(
            err.contains("`lookback`") && err.contains("no parameters"),
            "{err}"
        );
    }
}
