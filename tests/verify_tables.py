#!/usr/bin/env python3
"""Generic checks of admetrics' tables, read with PyIceberg (used by the hot-swap and fault tests).

- campaign_events holds exactly --expect-events rows, each (partition, offset) once;
- for every window, the current ctr and cvr (sql/current_metrics.sql: per Kafka partition the
  latest revision, shares summed) equal the counts computed here from campaign_events (on-time,
  not duplicate events only): ctr = clicks / impressions, cvr = conversions / clicks;
- every window's rows of each plugin come from exactly one plugin build (sha256);
- at least --min-ctr-builds distinct ctr builds appear overall (the swaps really happened).
"""
import argparse
import sys
from collections import Counter, defaultdict

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog

from current_metrics import CLASSIC, current_metrics

ap = argparse.ArgumentParser()
ap.add_argument("--catalog", required=True)
ap.add_argument("--warehouse", required=True)
ap.add_argument("--expect-events", type=int, required=True)
ap.add_argument("--window-secs", type=int, required=True)
ap.add_argument("--min-ctr-builds", type=int, default=1)
ap.add_argument("--allow-missing-cvr-windows", type=int, default=0,
                help="windows that may have no cvr rows (cvr installed later)")
ap.add_argument("--require-plugin", action="append", default=[], help="a plugin whose rows must appear")
ap.add_argument("--allow-missing-ctr-windows", type=int, default=0,
                help="windows whose ctr rows may be withheld (a plugin failed on them)")
a = ap.parse_args()
failures = []

cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.catalog}", warehouse=f"file://{a.warehouse}")
ev = cat.load_table(("ads", "campaign_events")).scan().to_arrow()
mt = cat.load_table(("ads", "campaign_metrics")).scan().to_arrow()

coords = list(zip(ev.column("kafka_partition").to_pylist(), ev.column("kafka_offset").to_pylist()))
if len(coords) != a.expect_events:
    failures.append(f"campaign_events has {len(coords)} rows, expected {a.expect_events}")
dups = [k for k, n in Counter(coords).items() if n > 1]
if dups:
    failures.append(f"{len(dups)} (partition, offset) pairs appear more than once, e.g. {dups[:3]}")

size_us = a.window_secs * 1_000_000
counts = defaultdict(lambda: [0, 0, 0])  # (window_start_us, campaign) -> [impressions, clicks, conversions]
times = ev.column("event_time").cast(pa.int64()).to_pylist()
for t, kind, camp, late, dup in zip(times, ev.column("event_type").to_pylist(), ev.column("campaign_id").to_pylist(),
                                   ev.column("is_late").to_pylist(), ev.column("is_duplicate").to_pylist()):
    if late or dup:  # a copy of an event_id already seen on its partition counts nowhere
        continue
    c = counts[(t // size_us * size_us, camp)]
    c[("impression", "click", "conversion").index(kind)] += 1

ws = mt.column("window_start").cast(pa.int64()).to_pylist()
builds_per_window = defaultdict(set)
for w, plugin, sha in zip(ws, mt.column("plugin").to_pylist(), mt.column("plugin_sha256").to_pylist()):
    builds_per_window[(w, plugin)].add(sha)
# The current ctr and cvr of every (window, campaign). A withheld key means "no value": the plugin
# failed on that window (of at least one partition), so it is left out.
# Totals of the ctr and cvr plugins (CLASSIC: a breakdown's cells are rows of their own).
cur = current_metrics(mt, where=f"metric IN ('ctr', 'cvr') AND NOT withheld AND {CLASSIC}")
latest = {(w, camp, metric): (num, den) for w, camp, metric, num, den in zip(
    cur.column("window_start").cast(pa.int64()).to_pylist(), cur.column("campaign_id").to_pylist(),
    cur.column("metric").to_pylist(), cur.column("numerator").to_pylist(), cur.column("denominator").to_pylist())}

mixed = {k: v for k, v in builds_per_window.items() if len(v) > 1}
if mixed:
    failures.append(f"{len(mixed)} windows mix plugin builds, e.g. {list(mixed.items())[:2]}")
ctr_builds = set().union(*[v for (w, p), v in builds_per_window.items() if p == "ctr"]) if builds_per_window else set()
if len(ctr_builds) < a.min_ctr_builds:
    failures.append(f"only {len(ctr_builds)} distinct ctr builds, expected at least {a.min_ctr_builds}")

checked = 0
ctr_windows = {w for (w, _, m) in latest if m == "ctr"}
missing_ctr = {w for (w, _) in counts} - ctr_windows
if len(missing_ctr) > a.allow_missing_ctr_windows:
    failures.append(f"{len(missing_ctr)} windows have no ctr rows (allowed {a.allow_missing_ctr_windows})")
cvr_windows = {w for (w, _, m) in latest if m == "cvr"}
missing_cvr = {w for (w, _), (_, clk, conv) in counts.items() if clk + conv > 0} - cvr_windows
if len(missing_cvr) > a.allow_missing_cvr_windows:
    failures.append(f"{len(missing_cvr)} windows have no cvr rows (allowed {a.allow_missing_cvr_windows})")
plugins_seen = {p for (_, p) in builds_per_window}
for req in a.require_plugin:
    if req not in plugins_seen:
        failures.append(f"no rows from plugin {req}")
window_size_seen = {(e - s) for s, e in zip(mt.column("window_start").cast(pa.int64()).to_pylist(), mt.column("window_end").cast(pa.int64()).to_pylist())}
if window_size_seen - {size_us}:
    failures.append(f"windows of other sizes appeared: {window_size_seen}")
for (w, camp), (imp, clk, conv) in counts.items():
    for metric, num, den in (("ctr", clk, imp), ("cvr", conv, clk)):
        if metric == "cvr" and w in missing_cvr:
            continue
        if metric == "cvr" and clk == 0 and conv == 0:
            continue
        got = latest.get((w, camp, metric))
        if got is None and metric == "ctr" and w in missing_ctr:
            continue
        if got is None:
            failures.append(f"no {metric} row for window {w} campaign {camp}")
        elif got != (num, den):
            failures.append(f"{metric} window {w} {camp}: got {got[0]}/{got[1]}, want {num}/{den}")
        else:
            checked += 1

print(f"windows without ctr rows (withheld): {len(missing_ctr)}")
print(f"events {len(coords)}; windows {len({w for w, _ in counts})}; rate rows checked {checked}; ctr builds {len(ctr_builds)}; "
      f"metric rows {len(mt)}")
if failures:
    print(f"{len(failures)} FAILURES")
    for f in failures[:30]:
        print("  -", f)
    sys.exit(1)
print("OK")
