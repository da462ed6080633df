//! admetrics:metrics@0.2.0 end to end: the built `admetrics` binary runs generated traffic
//! (`admetrics loadgen --out`, few users so a conversion's touchpoints are several clicks and
//! views; every event has a device and a country) through `run --file` into a local SQL-catalog
//! warehouse, and independent readers check what it wrote: `tests/verify_wit02.py` (breakdowns,
//! parameters in the lineage, 0.1.0 rows, the table upgrade), `tests/verify_reach.py`,
//! `tests/verify_attribution_models.py` and `scripts/lineage.py` (PyIceberg + DuckDB, from
//! `campaign_events`; none shares code with the host or the plugins).
//!
//! - `every_0_2_plugin_with_parameters_on_one_run`: ctr broken down by country and device (cells
//!   = counts of campaign_events, cells sum to the total, nothing folded under the default limit),
//!   reach on minute windows (exact distinct users), attribution-linear with a 2 s lookback (some
//!   conversions unattributed), attribution-time-decay with a 20 s half-life (split over several
//!   ads), attribution-position with a 1 s click lookback and 600 s of view-through (conversions
//!   credited to views) — each recounted by the verifier from the parameters it finds in the
//!   lineage (no `--param`), attributed + unattributed = revenue exactly; every row carries its
//!   plugin's parameters as JSON, every commit summary lists them, and `scripts/lineage.py`
//!   answers them for a ctr value.
//! - `a_small_max_dimension_values_folds_the_surplus_into_other`: ctr limited to 2 values per
//!   column (6 countries, 3 devices in the input) and cvr by country under the default limit, in
//!   the same windows: ctr's surplus values read `other` by the documented rule (first N distinct
//!   by offset per window), its totals are unchanged, cvr folds nothing (the limit is per
//!   plugin), and the count of folded values the run reports equals the verifier's own count.
//! - `a_0_1_plugin_runs_adapted_and_writes_what_the_0_2_ctr_writes`: the fixture built against
//!   0.1.0 (`ctr` 0.1.0-v01) and the shipped 0.2 ctr on the same file: identical ctr rows; the
//!   lineage names the 0.1.0 package and no parameters.
//! - `plugins_the_host_cannot_configure_or_run_are_refused_at_load`: the 0.1.0 fixture given
//!   `[plugins.config.ctr] dimensions` (the message names 0.2.0), a component of another world
//!   (`fixture_wrongworld`), and a 0.2 plugin given a parameter it does not know: the run fails
//!   with the reason and writes no row.
//! - `a_campaign_metrics_table_of_the_previous_release_is_upgraded_in_place`: a table with the
//!   schema of the release before 0.2.0 (fields 1-19, created and filled by PyIceberg) gains
//!   `dimensions` and `plugin_params` in place: same table, old rows kept and reading NULL, new
//!   rows beside them.
//! - `plugin_diff_compares_each_breakdown_cell`: live ctr and a shadow build (fixture
//!   `ctr-shadow-diff`: a click at millisecond 777 counts twice), both by country, over a
//!   hand-written file: `admetrics plugin diff --json` compares the total and every cell as keys
//!   of their own and names exactly the total and the cell of the doubled click.
//! - `reach_on_campaign_days_across_midnight_and_a_daylight_saving_change`: reach on its default
//!   day windows, campaigns in New York (a midnight and the 23-hour day of 2026-03-08 inside the
//!   traffic), Kolkata (UTC+5:30) and UTC: the windows are the hand-derived calendar days; exact
//!   distinct users per campaign day including impressions late for the host's minute windows
//!   (which the minute ctr in the same run does not count).
//!
//! No assertion depends on timing: each step waits for the process before it.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use support::*;

/// `loadgen --out` options: 6 000 events over 300 s of event time (5 one-minute windows and the
/// edge of a sixth), 3 campaigns of 5 ads, 40 users (device and country are functions of the
/// user: 3 devices, 6 countries), high click and conversion rates.
fn traffic(seed: &str) -> Vec<&str> {
    vec![
        "--total",
        "6000",
        "--rate",
        "20",
        "--campaigns",
        "3",
        "--users",
        "40",
        "--ctr",
        "0.3",
        "--cvr",
        "0.5",
        "--seed",
        seed,
    ]
}

/// Writes `d/admetrics.toml`: 60 s windows, these plugins, `extra` TOML (plugin parameters), the
/// warehouse in `d`.
fn config(d: &Path, plugins: &[PathBuf], extra: &str) -> PathBuf {
    let cfg = d.join("admetrics.toml");
    let paths: Vec<String> = plugins
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    std::fs::write(
        &cfg,
        format!(
            "[window]\nsize_secs = 60\nout_of_orderness_ms = 5000\n\
             [validation]\nmax_past_ms = 315360000000\n\
             [plugins]\npaths = [{}]\n{extra}\n\
             [iceberg]\ncatalog_uri = \"sqlite:{d}/catalog.db\"\nwarehouse = \"{d}/warehouse\"\n",
            paths.join(", "),
            d = d.display()
        ),
    )
    .unwrap();
    cfg
}

/// `admetrics run --config cfg --file events`, logging JSON lines.
fn run(cfg: &Path, events: &Path) -> Output {
    admetrics()
        .args(["run", "--config"])
        .arg(cfg)
        .arg("--file")
        .arg(events)
        .env("ADMETRICS_LOG_FORMAT", "json")
        .env("ADMETRICS_LOG", "info")
        .output()
        .unwrap()
}

/// Runs the file and returns the run's closing log record (`stopped`).
fn run_ok(cfg: &Path, events: &Path) -> serde_json::Value {
    let o = run(cfg, events);
    assert!(o.status.success(), "run --file:\n{}", output_text(&o));
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|r| r["message"] == "stopped")
        .unwrap_or_else(|| panic!("no `stopped` record:\n{}", output_text(&o)))
}

fn events_file(d: &Path, seed: &str) -> PathBuf {
    events_file_with(d, seed, &[])
}

/// [`events_file`] with more `loadgen --out` options.
fn events_file_with(d: &Path, seed: &str, more: &[&str]) -> PathBuf {
    let f = d.join("events.jsonl");
    let mut args = traffic(seed);
    args.extend(more);
    loadgen_file(&f, &args);
    f
}

fn verify(args: &[&str]) -> String {
    let out = run_python(
        "verify_wit02.py",
        &args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    progress(out.trim());
    out
}

/// `verify_wit02.py breakdown` of one plugin's cells over D's tables (`--dimensions` as the
/// plugin was given them), with the folding and stream options in `more`.
fn verify_breakdown(d: &Path, plugin: &str, dimensions: &str, more: &[&str]) -> String {
    let dir = dir(d);
    let mut args = vec![
        "breakdown",
        "--dir",
        &dir,
        "--plugin",
        plugin,
        "--dimensions",
        dimensions,
    ];
    args.extend_from_slice(more);
    verify(&args)
}

/// The folding check both `max_dimension_values = 2` tests make: ctr over `ctr_dims` keeps 2
/// values per column and window, and the host folded exactly the `folded` values the verifier
/// folds (totals unchanged); cvr over `cvr_dims`, in the same windows under the default limit,
/// folded nothing.
fn verify_ctr_folded_cvr_whole(d: &Path, ctr_dims: &str, folded: u64, cvr_dims: &str) {
    let folded = folded.to_string();
    verify_breakdown(
        d,
        "ctr",
        ctr_dims,
        &[
            "--max-values",
            "2",
            "--expect-folded",
            "--folded-values",
            &folded,
        ],
    );
    verify_breakdown(
        d,
        "cvr",
        cvr_dims,
        &["--expect-unfolded", "--folded-values", "0"],
    );
}

/// `verify_wit02.py query`: the rows of `sql` over D's tables (`events`, `metrics`) as JSON.
fn query(d: &Path, sql: &str) -> serde_json::Value {
    let out = run_python(
        "verify_wit02.py",
        &["query".into(), "--dir".into(), dir(d), sql.into()],
    );
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn dir(d: &Path) -> String {
    d.display().to_string()
}

fn warehouse_args(d: &Path) -> Vec<String> {
    vec![
        "--catalog".into(),
        d.join("catalog.db").display().to_string(),
        "--warehouse".into(),
        d.join("warehouse").display().to_string(),
    ]
}

const CTR_PARAMS: &str = "[plugins.config.ctr]\ndimensions = [\"country\", \"device\"]\n";

#[test]
fn every_0_2_plugin_with_parameters_on_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let events = events_file(d, "21");
    let plugins = [
        "ctr",
        "cvr",
        "reach",
        "attribution_linear",
        "attribution_time_decay",
        "attribution_position",
    ]
    .map(wasm);
    let cfg = config(
        d,
        &plugins,
        &format!(
            "{CTR_PARAMS}\
             [plugins.config.reach]\nwindow = \"minute\"\n\
             [plugins.config.attribution-linear]\nlookback_secs = 2\n\
             [plugins.config.attribution-time-decay]\nhalf_life_secs = 20\n\
             [plugins.config.attribution-position]\nlookback_secs = 1\nview_lookback_secs = 600\n"
        ),
    );
    let stopped = run_ok(&cfg, &events);
    assert_eq!(stopped["messages"], 6000, "{stopped}");
    assert_eq!(stopped["dimension_values_folded"], 0, "{stopped}");
    progress("file run with six 0.2 plugins committed");

    // Breakdown: cells from campaign_events, nothing folded under the default limit (100).
    verify_breakdown(d, "ctr", "country,device", &["--expect-unfolded"]);

    // Parameters: in every row and every commit summary; none for cvr.
    verify(&[
        "params",
        "--dir",
        &dir(d),
        "--expect",
        r#"ctr={"dimensions":"country,device"}"#,
        "--expect",
        "cvr=null",
        "--expect",
        r#"reach={"window":"minute"}"#,
        "--expect",
        r#"attribution-linear={"lookback_secs":"2"}"#,
        "--expect",
        r#"attribution-time-decay={"half_life_secs":"20"}"#,
        "--expect",
        r#"attribution-position={"lookback_secs":"1","view_lookback_secs":"600"}"#,
    ]);

    // Reach: exact distinct users per minute window.
    let mut args = warehouse_args(d);
    args.extend(["--window", "minute", "--require-final", "--expect-exact"].map(String::from));
    progress(run_python("verify_reach.py", &args).trim());

    // Attribution: each model recounted with the parameters the verifier reads from the lineage.
    for (plugin, design) in [
        (
            "attribution-linear",
            &["--min-unattributed", "20", "--min-attributed", "20"][..],
        ),
        ("attribution-time-decay", &["--min-split", "20"][..]),
        (
            "attribution-position",
            &["--min-view-credited", "20", "--min-split", "20"][..],
        ),
    ] {
        let mut args = warehouse_args(d);
        args.extend(["--plugin".to_string(), plugin.to_string()]);
        args.extend(design.iter().map(|s| s.to_string()));
        let out = run_python("verify_attribution_models.py", &args);
        progress(out.trim());
        assert!(out.contains(" 0 mismatches"), "{out}");
    }

    // lineage.py: a ctr value's build and its parameters; the value is the total, not a cell.
    let o = std::process::Command::new(python())
        .arg(repo_root().join("scripts/lineage.py"))
        .arg("--catalog")
        .arg(d.join("catalog.db"))
        .args([
            "--window",
            "2026-01-01T00:02:00Z",
            "--campaign",
            "campaign-001",
            "--metric",
            "ctr",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "lineage.py: {}", output_text(&o));
    let answer: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let shares = answer["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 1, "{answer}");
    let plugin = &shares[0]["plugin"];
    assert_eq!(
        plugin["params"],
        serde_json::json!({"dimensions": "country,device"}),
        "{answer}"
    );
    assert_eq!(plugin["wit"], "admetrics:metrics@0.2.0", "{answer}");
    assert_eq!(
        answer["current"]["numerator"], shares[0]["numerator"],
        "{answer}"
    );

    // scripts/query.sh's readings of breakdowns, models and a plugin's own windows, against
    // campaign_events (counted here in SQL, not through the view).
    query_sh_reads_cells_models_and_reach(d);
}

/// `scripts/query.sh` (its Python, the warehouse's SQLite catalog, DuckDB's iceberg_scan) over
/// the run of `every_0_2_plugin_with_parameters_on_one_run`, every line checked against counts
/// from `campaign_events`:
/// - `--by country,device`: impressions and clicks per cell (the ctr plugin's cells);
/// - `--models`: per model, the campaigns' attributed revenue plus the unattributed revenue is
///   the revenue, and the revenue is that of the conversions in the table;
/// - `--plugin reach --span minute`: each key's reach is its distinct users with an impression,
///   its frequency impressions / reach.
fn query_sh_reads_cells_models_and_reach(d: &Path) {
    // Runs query.py; returns its column header and the table's rows (the lines after the
    // header, without the closing campaign_events line), split on whitespace.
    let q = |args: &[&str]| -> (Vec<String>, Vec<Vec<String>>) {
        let o = std::process::Command::new(python())
            .arg(repo_root().join("scripts/query.py"))
            .arg("--catalog")
            .arg(d.join("catalog.db"))
            .args(["--minutes", "100000", "--limit", "100000"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "query.py {args:?}: {}", output_text(&o));
        let text = String::from_utf8_lossy(&o.stdout).to_string();
        progress(format!("query.sh {}:\n{text}", args.join(" ")));
        let split = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        let header = text.lines().nth(1).map(split).unwrap_or_default();
        let rows = text
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with("campaign_events:"))
            .map(split)
            .collect();
        (header, rows)
    };
    let num = |s: &str| -> f64 { s.trim_end_matches('%').parse().unwrap() };
    let counted = "NOT is_late AND NOT is_duplicate";

    // --by country,device
    let want = query(
        d,
        &format!(
            "SELECT country, device, count(*) FILTER (WHERE event_type = 'impression'), \
             count(*) FILTER (WHERE event_type = 'click') FROM events WHERE {counted} \
             GROUP BY ALL ORDER BY ALL"
        ),
    );
    let mut got: Vec<serde_json::Value> = q(&["--by", "country,device"])
        .1
        .iter()
        .map(|r| serde_json::json!([r[0], r[1], num(&r[2]) as i64, num(&r[3]) as i64]))
        .collect();
    got.sort_by_key(|v| v.to_string());
    let mut want = want.as_array().unwrap().clone();
    want.sort_by_key(|v| v.to_string());
    assert_eq!(want.len(), 18, "every country x device cell has traffic");
    assert_eq!(
        serde_json::Value::Array(got),
        serde_json::Value::Array(want)
    );

    // --models
    let (_, rows) = q(&["--models"]);
    let revenue: f64 = query(
        d,
        &format!(
            "SELECT coalesce(sum(revenue), 0)::DOUBLE FROM events \
             WHERE event_type = 'conversion' AND {counted}"
        ),
    )[0][0]
        .as_f64()
        .unwrap();
    assert!(revenue > 0.0);
    let line = |name: &str| -> &Vec<String> {
        rows.iter()
            .find(|r| r[0] == name)
            .unwrap_or_else(|| panic!("no {name} line in {rows:?}"))
    };
    let (rev, unattributed) = (line("(revenue)"), line("(unattributed_revenue)"));
    let campaigns: Vec<&Vec<String>> = rows.iter().filter(|r| !r[0].starts_with('(')).collect();
    assert_eq!(campaigns.len(), 3, "{rows:?}");
    assert_eq!(rev.len(), 4, "three models: {rows:?}");
    for m in 1..4 {
        let attributed: f64 = campaigns.iter().map(|r| num(&r[m])).sum();
        assert!(
            (num(&rev[m]) - revenue).abs() < 0.011,
            "model column {m}: revenue {} vs campaign_events {revenue}",
            rev[m]
        );
        assert!(
            (attributed + num(&unattributed[m]) - revenue).abs() < 0.011 * 4.0,
            "model column {m}: attributed {attributed} + unattributed {} != {revenue}",
            unattributed[m]
        );
    }

    // --plugin reach --span minute: window (start .. end), campaign, then the metrics in order
    // of first appearance (reach's rows: frequency, reach).
    let want = query(
        d,
        &format!(
            "SELECT strftime(time_bucket(INTERVAL 1 minute, event_time), '%Y-%m-%dT%H:%M:%SZ'), \
             campaign_id, count(DISTINCT user_id), count(*) FROM events \
             WHERE event_type = 'impression' AND {counted} GROUP BY ALL"
        ),
    );
    let want: std::collections::BTreeMap<(String, String), (i64, i64)> = want
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                (r[0].as_str().unwrap().into(), r[1].as_str().unwrap().into()),
                (r[2].as_i64().unwrap(), r[3].as_i64().unwrap()),
            )
        })
        .collect();
    let (header, rows) = q(&["--plugin", "reach", "--span", "minute"]);
    let (fi, ri) = (
        header.iter().position(|h| h == "frequency").unwrap() + 2,
        header.iter().position(|h| h == "reach").unwrap() + 2,
    );
    let mut seen = 0;
    for r in rows {
        // window start, "..", window end, campaign, values (the header's "window campaign" are
        // two columns; the window's text is three words)
        let key = (r[0].clone(), r[3].clone());
        let (users, impressions) = want
            .get(&key)
            .unwrap_or_else(|| panic!("reach for {key:?} without impressions"));
        assert_eq!(num(&r[ri]) as i64, *users, "reach of {key:?}");
        let f = num(&r[fi]);
        assert!(
            (f - *impressions as f64 / *users as f64).abs() < 1e-4 * f.max(1.0),
            "frequency of {key:?}: {f} vs {impressions}/{users}"
        );
        seen += 1;
    }
    assert_eq!(
        seen,
        want.len(),
        "a reach line per window and campaign with impressions"
    );
}

/// Custom string attributes end to end: `loadgen --attributes` gives three of four events an
/// `attributes` object (`creative_size`, sometimes `experiment`), the fourth none. ctr broken
/// down by country and `attr.creative_size` with a limit of 2 values (the surplus of both folds
/// into `other`), cvr by `attr.experiment` (mostly missing: `unknown`), both recounted by the
/// verifier from `campaign_events.attributes` (JSON text, read with Python's json module), and
/// the column itself checked against the generator's shapes.
#[test]
fn a_breakdown_by_custom_attributes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let events = events_file_with(d, "23", &["--attributes"]);
    let cfg = config(
        d,
        &["ctr", "cvr"].map(wasm),
        "[plugins.config.ctr]\ndimensions = [\"country\", \"attr.creative_size\"]\n\
         max_dimension_values = 2\n\
         [plugins.config.cvr]\ndimensions = [\"attr.experiment\"]\n",
    );
    let stopped = run_ok(&cfg, &events);
    assert_eq!(stopped["messages"], 6000, "{stopped}");
    let folded = stopped["dimension_values_folded"]
        .as_u64()
        .unwrap_or_else(|| panic!("{stopped}"));
    progress(format!(
        "file run with attribute breakdowns committed; {folded} values folded"
    ));
    // ctr keeps 2 values per column and window, attributes included (4 sizes with `unknown`):
    // the host folded exactly what the verifier folds. cvr, under the default limit, nothing.
    verify_ctr_folded_cvr_whole(d, "country,attr.creative_size", folded, "attr.experiment");
    // The column keeps every attribute of the event, keys sorted, and nothing for an event
    // without the object: the generator's four shapes. All 6 000 events are there: none was
    // dead-lettered.
    let shapes = query(
        d,
        "SELECT DISTINCT attributes FROM events ORDER BY attributes NULLS FIRST",
    );
    assert_eq!(
        shapes,
        serde_json::json!([
            [null],
            [r#"{"creative_size":"300x250"}"#],
            [r#"{"creative_size":"320x50"}"#],
            [r#"{"creative_size":"728x90","experiment":"b"}"#],
        ]),
    );
    assert_eq!(
        query(d, "SELECT count(*) FROM events"),
        serde_json::json!([[6000]])
    );
    // The lineage says which attributes the cells are of.
    let cells = query(
        d,
        "SELECT DISTINCT dimensions FROM metrics WHERE plugin = 'cvr' AND dimensions IS NOT NULL \
         ORDER BY 1",
    );
    assert_eq!(
        cells,
        serde_json::json!([["attr.experiment=b"], ["attr.experiment=unknown"]]),
    );
}

#[test]
fn a_small_max_dimension_values_folds_the_surplus_into_other() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let events = events_file(d, "22");
    let cfg = config(
        d,
        &[wasm("ctr"), wasm("cvr")],
        &format!(
            "{CTR_PARAMS}max_dimension_values = 2\n\
             [plugins.config.cvr]\ndimensions = [\"country\"]\n"
        ),
    );
    let stopped = run_ok(&cfg, &events);
    let folded = stopped["dimension_values_folded"]
        .as_u64()
        .unwrap_or_else(|| panic!("{stopped}"));
    progress(format!(
        "file run committed; {folded} dimension values folded"
    ));
    assert!(folded > 0, "{stopped}");

    // ctr: the surplus in `other`, totals unchanged (the verifier counts them from the events),
    // and the host folded exactly the values the verifier folds; cvr, in the same windows under
    // the default limit: every country as itself.
    verify_ctr_folded_cvr_whole(d, "country,device", folded, "country");
    // The host's limit is not a plugin parameter: it is not in the plugin's params.
    verify(&[
        "params",
        "--dir",
        &dir(d),
        "--expect",
        r#"ctr={"dimensions":"country,device"}"#,
        "--expect",
        r#"cvr={"dimensions":"country"}"#,
    ]);
}

#[test]
fn a_0_1_plugin_runs_adapted_and_writes_what_the_0_2_ctr_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (tmp.path().join("v01"), tmp.path().join("v02"));
    std::fs::create_dir_all(&old).unwrap();
    std::fs::create_dir_all(&new).unwrap();
    let events = events_file(tmp.path(), "23");
    run_ok(&config(&old, &[wasm("fixture_ctr_v01")], ""), &events);
    run_ok(&config(&new, &[wasm("ctr")], ""), &events);
    progress("the same file run by the 0.1.0 fixture and by the 0.2 ctr");
    verify(&[
        "same",
        "--a",
        &dir(&old),
        "--b",
        &dir(&new),
        "--metric",
        "ctr",
        "--version-a",
        "0.1.0-v01",
    ]);
    verify(&[
        "params",
        "--dir",
        &dir(&old),
        "--expect",
        "ctr=null",
        "--wit",
        "ctr=admetrics:metrics@0.1.0",
    ]);
}

#[test]
fn plugins_the_host_cannot_configure_or_run_are_refused_at_load() {
    let tmp = tempfile::tempdir().unwrap();
    let events = events_file(tmp.path(), "24");
    let v01 = wasm("fixture_ctr_v01");
    let wrong = wasm("fixture_wrongworld");
    for (name, plugin, extra, message) in [
        (
            "v01-with-params",
            &v01,
            CTR_PARAMS.to_string(),
            // host/src/plugin.rs, PluginRuntime::load_bytes
            format!(
                "{} is not a valid metric-plugin component: plugin \"ctr\" is built against \
                 admetrics:metrics@0.1.0, which takes no parameters, but [plugins.config.ctr] sets \
                 dimensions: rebuild it against admetrics:metrics@0.2.0 (wit/admetrics.wit; see \
                 plugins/README.md) to configure it",
                v01.display()
            ),
        ),
        (
            "wrong-world",
            &wrong,
            String::new(),
            format!(
                "{} is not a valid metric-plugin component: does not implement \
                 admetrics:metrics@0.2.0 world metric-plugin (nor admetrics:metrics@0.1.0)",
                wrong.display()
            ),
        ),
        (
            "unknown-param",
            &wasm("ctr"),
            "[plugins.config.ctr]\ndimension = [\"country\"]\n".to_string(),
            "init refused its parameters: unknown parameter `dimension` (accepted: dimensions)"
                .to_string(),
        ),
    ] {
        let d = tmp.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let o = run(&config(&d, std::slice::from_ref(plugin), &extra), &events);
        let text = output_text(&o);
        assert!(!o.status.success(), "{name}: the run succeeded:\n{text}");
        assert!(
            text.contains(&message),
            "{name}: want {message:?} in:\n{text}"
        );
        progress(format!("{name}: refused"));
        // Nothing computed: no metric row (the tables may have been opened before the plugins).
        let rows = query(
            &d,
            "SELECT (SELECT count(*) FROM metrics) + (SELECT count(*) FROM events)",
        );
        assert_eq!(rows, serde_json::json!([[0]]), "{name}");
    }
}

#[test]
fn a_campaign_metrics_table_of_the_previous_release_is_upgraded_in_place() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    verify(&["create-old", "--dir", &dir(d)]);
    let events = events_file(d, "25");
    let cfg = config(d, &[wasm("ctr"), wasm("cvr")], CTR_PARAMS);
    run_ok(&cfg, &events);
    progress("file run over the previous release's table committed");
    verify(&["upgraded", "--dir", &dir(d)]);
    // And the new rows are right on the upgraded table.
    verify_breakdown(
        d,
        "ctr",
        "country,device",
        &["--expect-unfolded", "--exclude-stream", "old-stream"],
    );
}

#[test]
fn plugin_diff_compares_each_breakdown_cell() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // Two windows of campaign c0 (2026-01-01T00:00 and 00:01): impressions from DE and US, one
    // click each in the first (DE's at millisecond 777 of its second, which the shadow counts
    // twice), one DE click in the second.
    let t0: i64 = 1_767_225_600_000;
    let events = d.join("events.jsonl");
    let lines: Vec<String> = [
        (t0 + 1_000, "impression", "u1", "DE"),
        (t0 + 2_000, "impression", "u1", "DE"),
        (t0 + 3_000, "impression", "u2", "US"),
        (t0 + 4_000, "impression", "u2", "US"),
        (t0 + 5_777, "click", "u1", "DE"),
        (t0 + 6_100, "click", "u2", "US"),
        (t0 + 61_000, "impression", "u1", "DE"),
        (t0 + 61_100, "click", "u1", "DE"),
    ]
    .iter()
    .enumerate()
    .map(|(i, (t, kind, user, country))| {
        format!(
            r#"{{"event_id":"e{i}","event_type":"{kind}","event_time":{t},"campaign_id":"c0","ad_id":"c0-ad","user_id":"{user}","country":"{country}"}}"#
        )
    })
    .collect();
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let shadow = wasm("fixture_ctr_shadow_diff");
    let cfg = config(
        d,
        &[wasm("ctr")],
        &format!(
            "shadow_paths = [{:?}]\n[plugins.config.ctr]\ndimensions = [\"country\"]\n",
            shadow.display().to_string()
        ),
    );
    run_ok(&cfg, &events);
    let o = admetrics()
        .args(["plugin", "diff"])
        .arg(wasm("ctr"))
        .arg(&shadow)
        .arg("--config")
        .arg(&cfg)
        .args(["--json", "--examples", "10"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", output_text(&o));
    let report: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let m = &report["metrics"]["ctr"];
    // Window 0: the total, DE and US; window 1: the total and DE. Two differ: window 0's total
    // (2 clicks against 3) and its DE cell (1 against 2).
    assert_eq!(report["windows_compared"], 2, "{report}");
    assert_eq!(
        (&m["keys_compared"], &m["keys_differing"]),
        (&serde_json::json!(5), &serde_json::json!(2)),
        "{report}"
    );
    let differing: Vec<(&serde_json::Value, &serde_json::Value, &serde_json::Value)> =
        m["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| {
                (
                    &k["dimensions"],
                    &k["live"]["numerator"],
                    &k["shadow"]["numerator"],
                )
            })
            .collect();
    assert_eq!(
        differing,
        [
            (
                &serde_json::json!(null),
                &serde_json::json!(2.0),
                &serde_json::json!(3.0)
            ),
            (
                &serde_json::json!("country=DE"),
                &serde_json::json!(1.0),
                &serde_json::json!(2.0)
            ),
        ],
        "{report}"
    );
}

#[test]
fn reach_on_campaign_days_across_midnight_and_a_daylight_saving_change() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // 04:58-05:03 UTC on 2026-03-08: midnight in New York (EST, UTC-5) falls inside it, and the
    // New York day that starts then is 23 hours long (clocks go forward at 02:00 local). Then 15
    // impressions of new users at 05:01:00.5, after the watermark closed that host minute (late
    // for the minute windows) but inside every campaign's open day window. `run --file` reads
    // faster than its commit interval: reads of 100 events and `max_rows` make it tick (and
    // advance the watermark) every 200 rows, as a daemon does every interval.
    let events = events_file_with(d, "26", &["--start-time", "2026-03-08T04:58:00Z"]);
    let mut late = String::new();
    for c in 0..3 {
        for k in 0..5 {
            late.push_str(&format!(
                r#"{{"event_id":"late-{c}-{k}","event_type":"impression","event_time":"2026-03-08T05:01:00.500Z","campaign_id":"campaign-00{c}","ad_id":"ad-00{c}-00","user_id":"late-user-{k}","device":"web","country":"DE"}}"#
            ));
            late.push('\n');
        }
    }
    let mut all = std::fs::read_to_string(&events).unwrap();
    all.push_str(&late);
    std::fs::write(&events, all).unwrap();
    let cfg = config(
        d,
        &[wasm("reach"), wasm("ctr")],
        "[plugins.config.ctr]\ndimensions = [\"country\"]\n\
         [campaigns]\ntime_zones = { \"campaign-000\" = \"America/New_York\", \"campaign-001\" = \"Asia/Kolkata\" }\n\
         [kafka]\nbatch_size = 100\n[commit]\nmax_rows = 200\n",
    );
    run_ok(&cfg, &events);
    progress("file run with reach on day windows committed");

    assert_eq!(
        query(
            d,
            "SELECT count(*) FILTER (WHERE is_late), count(*) FROM events WHERE event_id LIKE 'late-%'"
        ),
        serde_json::json!([[15, 15]]),
        "the appended impressions are late for the host's minute windows"
    );
    // The windows, derived by hand: New York's 24-hour March 7 and 23-hour March 8; Kolkata's
    // March 8 (UTC+5:30); UTC's March 8 for the campaign with no zone.
    assert_eq!(
        query(
            d,
            "SELECT DISTINCT campaign_id, strftime(window_start, '%Y-%m-%dT%H:%M'), \
             strftime(window_end, '%Y-%m-%dT%H:%M') FROM metrics WHERE plugin = 'reach' ORDER BY ALL"
        ),
        serde_json::json!([
            ["campaign-000", "2026-03-07T05:00", "2026-03-08T05:00"],
            ["campaign-000", "2026-03-08T05:00", "2026-03-09T04:00"],
            ["campaign-001", "2026-03-07T18:30", "2026-03-08T18:30"],
            ["campaign-002", "2026-03-08T00:00", "2026-03-09T00:00"],
        ])
    );
    // Exact distinct users per campaign day, the late impressions included.
    let mut args = warehouse_args(d);
    args.extend(
        [
            "--window",
            "day",
            "--tz",
            "campaign-000=America/New_York",
            "--tz",
            "campaign-001=Asia/Kolkata",
            "--late",
            "include",
            "--require-final",
            "--expect-exact",
        ]
        .map(String::from),
    );
    progress(run_python("verify_reach.py", &args).trim());
    // ctr on the host's minute windows did not count them.
    verify_breakdown(d, "ctr", "country", &["--expect-unfolded"]);
}
