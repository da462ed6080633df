//! CTR plugin: impressions, clicks and click-through rate per campaign per window.
//!
//! Parameter `dimensions` (optional, a list of `device`, `country`, `placement`, `currency` and
//! custom attributes of the event's `attributes` object as `attr.NAME`):
//! besides each campaign's total row, one `ctr` row per campaign per breakdown cell (each
//! combination of the listed dimensions' values). Without it the plugin declares no columns and
//! emits the totals only.
use admetrics_plugin_sdk::*;

struct Ctr {
    breakdown: Breakdown,
}

impl Plugin for Ctr {
    const WIDTH: usize = 2; // [impressions, clicks]
    const PARAMS: &'static [&'static str] = &["dimensions"];

    fn init(params: &Params) -> Result<(Self, PluginInfo), String> {
        let breakdown = params.get_breakdown("dimensions")?;
        let info = info("ctr", env!("CARGO_PKG_VERSION"), &["ctr"]).with_breakdown(&breakdown);
        Ok((Ctr { breakdown }, info))
    }

    fn accumulate(&self, acc: &mut Counters, events: &Events) -> Result<(), String> {
        let delta = |e: &Event| match e.kind {
            EventKind::Impression => Some([1, 0]),
            EventKind::Click => Some([0, 1]),
            EventKind::Conversion => None,
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
            .map(|(c, _, dims, v)| rate_row_dims(c, None, dims, "ctr", v[1] as f64, v[0] as f64))
            .collect()
    }
}

export_plugin!(Ctr);

#[cfg(test)]
mod tests {
    use super::*;
    use admetrics_plugin_sdk::testing::*;

    fn events() -> Vec<TestEvent> {
        let on = |e: TestEvent, device, country| {
            e.with(Column::Device, device)
                .with(Column::Country, country)
        };
        vec![
            on(TestEvent::impression(1, 10), 1, 7),
            on(TestEvent::impression(1, 11), 1, 7),
            on(TestEvent::impression(1, 10), 2, 7),
            on(TestEvent::click(1, 10), 1, 7),
            on(TestEvent::conversion(1, 10, 5), 3, 8),
            on(TestEvent::impression(2, 20), 1, 8),
            on(TestEvent::click(2, 20), 1, 8),
            on(TestEvent::click(2, 20), 2, 8),
        ]
    }

    /// (campaign, dimensions, value, numerator, denominator)
    type Row = (u32, Vec<(DimensionKey, u32)>, f64, f64, f64);

    fn table(rows: &[MetricRow]) -> Vec<Row> {
        rows.iter()
            .map(|r| {
                assert_eq!((r.ad, r.metric.as_str()), (None, "ctr"));
                let dims = r.dimensions.iter().map(|d| (d.key, d.value)).collect();
                (r.campaign, dims, r.value, r.numerator, r.denominator)
            })
            .collect()
    }

    #[test]
    fn totals_without_parameters() {
        let p = Harness::<Ctr>::new(&[]).unwrap();
        let i = p.info();
        assert_eq!(
            (i.name.as_str(), &i.metrics[..]),
            ("ctr", &["ctr".to_string()][..])
        );
        assert!(i.columns.is_empty() && !i.wants_touchpoints && !i.wants_views);
        assert_eq!(i.window, WindowSize::Minute);
        let rows = p.run(&events()).unwrap();
        assert_eq!(
            table(&rows),
            vec![(1, vec![], 1.0 / 3.0, 1.0, 3.0), (2, vec![], 2.0, 2.0, 1.0)]
        );
        // Same rows as the SDK's rate_row, the 0.1 semantics.
        assert_eq!(rows[0], rate_row(1, "ctr", 1.0, 3.0));
        // A campaign with clicks only has a 0 rate, not a division by zero.
        let rows = p.run(&[TestEvent::click(3, 1)]).unwrap();
        assert_eq!(rows, vec![rate_row(3, "ctr", 1.0, 0.0)]);
        assert_eq!(rows[0].value, 0.0);
    }

    #[test]
    fn breakdown_adds_one_row_per_cell() {
        let p = Harness::<Ctr>::new(&[("dimensions", "country,device")]).unwrap();
        assert_eq!(p.info().columns, vec![Column::Device, Column::Country]);
        let (d, c) = (
            DimensionKey::Column(Column::Device),
            DimensionKey::Column(Column::Country),
        );
        assert_eq!(
            table(&p.run(&events()).unwrap()),
            vec![
                (1, vec![], 1.0 / 3.0, 1.0, 3.0),
                (1, vec![(d, 1), (c, 7)], 0.5, 1.0, 2.0),
                (1, vec![(d, 2), (c, 7)], 0.0, 0.0, 1.0),
                (2, vec![], 2.0, 2.0, 1.0),
                (2, vec![(d, 1), (c, 8)], 1.0, 1.0, 1.0),
                (2, vec![(d, 2), (c, 8)], 0.0, 1.0, 0.0),
            ]
        );
        // The totals are those of the plugin without a breakdown.
        let plain = Harness::<Ctr>::new(&[]).unwrap().run(&events()).unwrap();
        let rows = p.run(&events()).unwrap();
        let totals: Vec<_> = rows
            .into_iter()
            .filter(|r| r.dimensions.is_empty())
            .collect();
        assert_eq!(totals, plain);
        // An empty list is no breakdown.
        let p = Harness::<Ctr>::new(&[("dimensions", "")]).unwrap();
        assert!(p.info().columns.is_empty());
    }

    #[test]
    fn attributes_are_dimensions_too() {
        let p = Harness::<Ctr>::new(&[("dimensions", "attr.creative_size,country")]).unwrap();
        assert_eq!(p.info().columns, vec![Column::Country]);
        assert_eq!(p.info().attributes, vec!["creative_size".to_string()]);
        let size = DimensionKey::Attribute(0);
        let c = DimensionKey::Column(Column::Country);
        let events: Vec<_> = events()
            .into_iter()
            .enumerate()
            .map(|(i, e)| e.with_attribute(0, 30 + (i as u32 % 2)))
            .collect();
        assert_eq!(
            table(&p.run(&events).unwrap()),
            vec![
                (1, vec![], 1.0 / 3.0, 1.0, 3.0),
                (1, vec![(c, 7), (size, 30)], 0.0, 0.0, 2.0),
                (1, vec![(c, 7), (size, 31)], 1.0, 1.0, 1.0),
                (2, vec![], 2.0, 2.0, 1.0),
                (2, vec![(c, 8), (size, 30)], 0.0, 1.0, 0.0),
                (2, vec![(c, 8), (size, 31)], 1.0, 1.0, 1.0),
            ]
        );
    }

    #[test]
    fn bad_parameters_refuse_the_plugin() {
        for (params, needle) in [
            (
                &[("dimension", "device")][..],
                "unknown parameter `dimension` (accepted: dimensions)",
            ),
            (&[("dimensions", "user")][..], "unknown dimension `user`"),
            (
                &[("dimensions", "browser")][..],
                "unknown dimension `browser`",
            ),
            (&[("dimensions", "device,device")][..], "twice"),
            (&[("dimensions", "attr.")][..], "attribute name `` is not"),
            (
                &[("dimensions", "attr.Size")][..],
                "attribute name `Size` is not",
            ),
            (
                &[("dimensions", "attr.a,attr.a")][..],
                "`attr.a` given twice",
            ),
            (
                &[("dimensions", "attr.a,attr.b,attr.c,attr.d,attr.e")][..],
                "5 attributes, at most 4",
            ),
        ] {
            let err = Harness::<Ctr>::new(params).err().unwrap();
            assert!(err.contains(needle), "{params:?}: {err}");
        }
    }
}
