//! CVR plugin: clicks, conversions and conversion rate (conversions / clicks) per campaign per window.
//!
//! Parameter `dimensions` (optional, a list of `device`, `country`, `placement`, `currency` and
//! custom attributes of the event's `attributes` object as `attr.NAME`):
//! besides each campaign's total row, one `cvr` row per campaign per breakdown cell (each
//! combination of the listed dimensions' values). Without it the plugin declares no columns and
//! emits the totals only.
use admetrics_plugin_sdk::*;

struct Cvr {
    breakdown: Breakdown,
}

impl Plugin for Cvr {
    const WIDTH: usize = 2; // [clicks, conversions]
    const PARAMS: &'static [&'static str] = &["dimensions"];

    fn init(params: &Params) -> Result<(Self, PluginInfo), String> {
        let breakdown = params.get_breakdown("dimensions")?;
        let info = info("cvr", env!("CARGO_PKG_VERSION"), &["cvr"]).with_breakdown(&breakdown);
        Ok((Cvr { breakdown }, info))
    }

    fn accumulate(&self, acc: &mut Counters, events: &Events) -> Result<(), String> {
        let delta = |e: &Event| match e.kind {
            EventKind::Click => Some([1, 0]),
            EventKind::Conversion => Some([0, 1]),
            EventKind::Impression => None,
        };
        // Two loops, so that without a breakdown the loop is the 0.1 one: the compiler drops
        // the columns it does not read.
        if self.breakdown.is_empty() {
            for e in events.iter() {
                if let Some(d) = delta(&e) {
                    acc.add(e.campaign, NO_AD, &d);
                }
            }
        } else {
            for e in events.iter() {
                if let Some(d) = delta(&e) {
                    acc.add(e.campaign, NO_AD, &d);
                    acc.add_dims(e.campaign, NO_AD, &self.breakdown.cell(&e)?, &d);
                }
            }
        }
        Ok(())
    }

    fn finish(&self, acc: &Counters) -> Vec<MetricRow> {
        acc.iter()
            .map(|(c, _, dims, v)| rate_row_dims(c, None, dims, "cvr", v[1] as f64, v[0] as f64))
            .collect()
    }
}

export_plugin!(Cvr);

#[cfg(test)]
mod tests {
    use super::*;
    use admetrics_plugin_sdk::testing::*;

    fn events() -> Vec<TestEvent> {
        let on = |e: TestEvent, placement| e.with(Column::Placement, placement);
        vec![
            on(TestEvent::impression(1, 10), 1),
            on(TestEvent::click(1, 10), 1),
            on(TestEvent::click(1, 10), 1),
            on(TestEvent::click(1, 11), 2),
            on(TestEvent::conversion(1, 10, 5), 1),
            on(TestEvent::conversion(2, 20, 0), 3),
        ]
    }

    /// (campaign, dimensions, value, numerator, denominator)
    type Row = (u32, Vec<(DimensionKey, u32)>, f64, f64, f64);

    fn table(rows: &[MetricRow]) -> Vec<Row> {
        rows.iter()
            .map(|r| {
                assert_eq!((r.ad, r.metric.as_str()), (None, "cvr"));
                let dims = r.dimensions.iter().map(|d| (d.key, d.value)).collect();
                (r.campaign, dims, r.value, r.numerator, r.denominator)
            })
            .collect()
    }

    #[test]
    fn totals_without_parameters() {
        let p = Harness::<Cvr>::new(&[]).unwrap();
        assert_eq!(p.info().name, "cvr");
        assert!(p.info().columns.is_empty());
        let rows = p.run(&events()).unwrap();
        assert_eq!(
            table(&rows),
            vec![(1, vec![], 1.0 / 3.0, 1.0, 3.0), (2, vec![], 0.0, 1.0, 0.0)]
        );
        assert_eq!(rows[0], rate_row(1, "cvr", 1.0, 3.0));
    }

    #[test]
    fn breakdown_adds_one_row_per_cell() {
        let p = Harness::<Cvr>::new(&[("dimensions", "placement")]).unwrap();
        assert_eq!(p.info().columns, vec![Column::Placement]);
        let pl = DimensionKey::Column(Column::Placement);
        assert_eq!(
            table(&p.run(&events()).unwrap()),
            vec![
                (1, vec![], 1.0 / 3.0, 1.0, 3.0),
                (1, vec![(pl, 1)], 0.5, 1.0, 2.0),
                (1, vec![(pl, 2)], 0.0, 0.0, 1.0),
                (2, vec![], 0.0, 1.0, 0.0),
                (2, vec![(pl, 3)], 0.0, 1.0, 0.0),
            ]
        );
        let err = Harness::<Cvr>::new(&[("window", "hour")]).err().unwrap();
        assert!(err.contains("unknown parameter `window`"), "{err}");
    }
}
