//! The plugin author's paths: both builds of every plugin (plain `cargo build --target
//! wasm32-wasip2` and `cargo component build`) load in the daemon's runtime and compute the same
//! rows, and `admetrics plugin test` runs a plugin over a sample file.

mod support;

use std::path::PathBuf;
use std::process::Command;

use admetrics::config::PluginsConfig;
use admetrics::plugin::{self, EventBatch, PluginError, PluginRuntime, Touchpoint, kind};
use support::*;

fn sample() -> EventBatch {
    let t = 1_767_607_200_000;
    let tp = |dt: i64, c: u32, a: u32| Touchpoint {
        time_ms: t - dt,
        campaign: c,
        ad: a,
        kind: plugin::TouchKind::Click,
    };
    let mut b = plugin::new_batch();
    plugin::push_event(&mut b, kind::IMPRESSION, t, 0, 0, 0, Some(&[]));
    plugin::push_event(&mut b, kind::IMPRESSION, t, 0, 1, 0, Some(&[]));
    plugin::push_event(&mut b, kind::IMPRESSION, t, 1, 2, 0, Some(&[]));
    plugin::push_event(&mut b, kind::CLICK, t, 0, 0, 0, Some(&[]));
    plugin::push_event(
        &mut b,
        kind::CONVERSION,
        t,
        0,
        0,
        2_500_000,
        Some(&[tp(9_000, 1, 2), tp(5_000, 0, 1)]),
    );
    plugin::push_event(&mut b, kind::CONVERSION, t, 1, 2, 1_000_000, Some(&[]));
    b
}

#[test]
fn plain_cargo_and_cargo_component_builds_agree() {
    let rt = PluginRuntime::new(&PluginsConfig::default()).unwrap();
    let component_dir = repo_root().join("target/wasm32-wasip1/release");
    for plain in plugin_paths() {
        let name = plain.file_name().unwrap().to_owned();
        let adapted: PathBuf = component_dir.join(&name);
        assert!(
            adapted.is_file(),
            "{} missing: run scripts/build-plugins.sh",
            adapted.display()
        );
        let mut a = rt.load(&plain).unwrap();
        let mut b = rt.load(&adapted).unwrap();
        assert_eq!(
            (&a.info.name, &a.info.version, &a.info.metrics),
            (&b.info.name, &b.info.version, &b.info.metrics)
        );
        assert_ne!(a.info.sha256, b.info.sha256, "two different builds");
        let acc_a = a.accumulate(&[], &sample()).unwrap();
        let acc_b = b.accumulate(&[], &sample()).unwrap();
        let rows_a = a.finish(&acc_a).unwrap();
        let rows_b = b.finish(&acc_b).unwrap();
        assert_eq!(rows_a, rows_b, "{name:?}");
        assert!(!rows_a.is_empty());
    }
}

#[test]
fn attribution_credits_the_latest_click_and_sums_exactly() {
    let rt = PluginRuntime::new(&PluginsConfig::default()).unwrap();
    let path = plugin_paths()
        .into_iter()
        .find(|p| p.ends_with("attribution.wasm"))
        .unwrap();
    let mut p = rt.load(&path).unwrap();
    let acc = p.accumulate(&[], &sample()).unwrap();
    let rows = p.finish(&acc).unwrap();
    let get = |c: u32, ad: Option<u32>, m: &str| {
        rows.iter()
            .find(|r| r.campaign == c && r.ad == ad && r.metric == m)
            .map(|r| (r.value, r.denominator))
    };
    // The 2.50 conversion's latest click (5 s before) was campaign 0 / ad 1, not the older one.
    assert_eq!(get(0, Some(1), "attributed_revenue"), Some((2.5, 1.0)));
    assert_eq!(get(1, Some(2), "attributed_revenue"), None);
    assert_eq!(get(1, None, "unattributed_revenue"), Some((1.0, 1.0)));
    assert_eq!(get(0, None, "revenue"), Some((2.5, 1.0)));
}

#[test]
fn garbage_is_rejected_with_a_clear_error() {
    let rt = PluginRuntime::new(&PluginsConfig::default()).unwrap();
    let err = rt
        .load_bytes(std::path::Path::new("junk.wasm"), b"\0asm not really")
        .err()
        .expect("rejected");
    assert!(matches!(err, PluginError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("junk.wasm"), "{err}");
    let err = rt
        .load(std::path::Path::new("/nonexistent/plugin.wasm"))
        .err()
        .expect("rejected");
    assert!(err.to_string().contains("cannot read"), "{err}");
}

#[test]
fn plugin_test_command_prints_rows_for_sample_events() {
    let sample = repo_root().join("plugins/samples/events.jsonl");
    for plugin in plugin_paths() {
        let out = Command::new(env!("CARGO_BIN_EXE_admetrics"))
            .args(["plugin", "test"])
            .arg(&plugin)
            .arg("--events")
            .arg(&sample)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}\n{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("# 10 events"), "{stdout}");
        assert!(
            stdout.contains("rejected unknown_event_type: 1"),
            "{stdout}"
        );
        if plugin.ends_with("ctr.wasm") {
            // 10:00 window: spring-sale 3 impressions + 1 click; 10:01 window: 2 impressions.
            assert!(
                stdout.contains(
                    "2026-01-05T10:00:00+00:00\tspring-sale\t-\tctr\t0.3333333333333333\t1\t3"
                ),
                "{stdout}"
            );
            assert!(
                stdout.contains("2026-01-05T10:01:00+00:00\tspring-sale\t-\tctr\t0\t0\t2"),
                "{stdout}"
            );
        }
        if plugin.ends_with("attribution.wasm") {
            // u1's conversion goes to its latest click (winter-clearance/video-1); u2 never clicked.
            assert!(
                stdout.contains("winter-clearance\tvideo-1\tattributed_revenue\t49.9\t49.9\t1"),
                "{stdout}"
            );
            assert!(
                stdout.contains("spring-sale\t-\tunattributed_revenue\t12.5\t12.5\t1"),
                "{stdout}"
            );
        }
    }
}

#[test]
fn the_template_builds_both_ways_and_computes_shares() {
    let rt = PluginRuntime::new(&PluginsConfig::default()).unwrap();
    for dir in [
        "target/wasm32-wasip2/release",
        "target/wasm32-wasip1/release",
    ] {
        let path = repo_root().join(dir).join("metric_template.wasm");
        assert!(
            path.is_file(),
            "{} missing: run scripts/build-plugins.sh",
            path.display()
        );
        let mut p = rt.load(&path).unwrap();
        assert_eq!(p.info.name, "impression-share");
        let acc = p.accumulate(&[], &sample()).unwrap();
        let rows = p.finish(&acc).unwrap();
        // Campaign 0 had impressions on ads 0 and 1: one each, half the share each.
        let share = |ad: u32| {
            rows.iter()
                .find(|r| r.campaign == 0 && r.ad == Some(ad))
                .map(|r| (r.numerator, r.denominator))
        };
        assert_eq!(share(0), Some((1.0, 2.0)));
        assert_eq!(share(1), Some((1.0, 2.0)));
    }
}

/// `plugins.compile_cache_dir`: the first load compiles and stores the compiled component; a
/// second runtime loads that file instead (same rows as a plain compile); a damaged file is
/// compiled again and replaced; a cache directory that cannot be created costs only the cache.
#[test]
fn compiled_plugins_are_cached_and_a_damaged_cache_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("plugin-cache");
    let cfg = PluginsConfig {
        compile_cache_dir: Some(cache.clone()),
        ..PluginsConfig::default()
    };
    let ctr = plugin_paths()
        .into_iter()
        .find(|p| p.file_name().unwrap() == "ctr.wasm")
        .unwrap();
    let rows = |rt: &PluginRuntime| {
        let mut p = rt.load(&ctr).unwrap();
        let acc = p.accumulate(&[], &sample()).unwrap();
        p.finish(&acc).unwrap()
    };
    let expected = rows(&PluginRuntime::new(&PluginsConfig::default()).unwrap());
    assert!(!expected.is_empty());

    assert_eq!(rows(&PluginRuntime::new(&cfg).unwrap()), expected);
    let files = || -> Vec<PathBuf> {
        let mut v: Vec<_> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        v.sort();
        v
    };
    let stored = files();
    assert_eq!(
        stored.len(),
        1,
        "one compiled component, no temporary files: {stored:?}"
    );
    let name = stored[0].file_name().unwrap().to_str().unwrap().to_owned();
    let sha = admetrics::plugin::PluginRuntime::new(&PluginsConfig::default())
        .unwrap()
        .load(&ctr)
        .unwrap()
        .info
        .sha256;
    assert!(name.starts_with(&sha) && name.ends_with(".cwasm"), "{name}");
    let image = std::fs::read(&stored[0]).unwrap();
    assert!(image.len() > 1000);

    // The file is read at load: a damaged one is noticed, compiled again and replaced.
    std::fs::write(&stored[0], b"not a compiled component").unwrap();
    assert_eq!(rows(&PluginRuntime::new(&cfg).unwrap()), expected);
    assert_eq!(files(), stored);
    assert_eq!(
        std::fs::read(&stored[0]).unwrap(),
        image,
        "rebuilt and stored again"
    );
    // A good file is used as it is, not rewritten (with the case above: loaded, not compiled).
    let before = std::fs::metadata(&stored[0]).unwrap().modified().unwrap();
    assert_eq!(rows(&PluginRuntime::new(&cfg).unwrap()), expected);
    assert_eq!(
        std::fs::metadata(&stored[0]).unwrap().modified().unwrap(),
        before
    );

    // A cache path that is a file, not a directory: loading still works, nothing is cached.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"").unwrap();
    let cfg = PluginsConfig {
        compile_cache_dir: Some(blocked.clone()),
        ..PluginsConfig::default()
    };
    assert_eq!(rows(&PluginRuntime::new(&cfg).unwrap()), expected);
    assert!(blocked.is_file());
}
