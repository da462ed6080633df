#!/usr/bin/env python3
"""Compares two admetrics table sets (an uninterrupted reference run and a run that was killed
and restarted) with PyIceberg: campaign_events must hold every message exactly once in both, and
the final metrics (the current value of every window, campaign, ad and metric by
sql/current_metrics.sql: per Kafka partition the latest revision, shares summed; final and not
withheld; for every window the reference finalised) must be identical (fractional sums to a
relative 1e-12: the shares may be added in another order).
"""
import argparse
import json
import math
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog

from current_metrics import current_metrics

ap = argparse.ArgumentParser()
ap.add_argument("--a", required=True, help="directory of the reference run (catalog.db, warehouse)")
ap.add_argument("--b", required=True, help="directory of the interrupted run")
ap.add_argument("--expect-events", type=int, required=True)
ap.add_argument("--second-writer", help="JSON printed by second_writer.py for the --b tables")
args = ap.parse_args()
failures = []


def load(d):
    cat = SqlCatalog("admetrics", uri=f"sqlite:///{d}/catalog.db", warehouse=f"file://{d}/warehouse")
    ev = cat.load_table(("ads", "campaign_events")).scan().to_arrow()
    mt = cat.load_table(("ads", "campaign_metrics")).scan().to_arrow()
    dl = cat.load_table(("ads", "dead_letters")).scan().to_arrow()
    dead[d] = list(zip(dl.column("kafka_partition").to_pylist(), dl.column("kafka_offset").to_pylist()))
    # Rows of the second writer (tests/second_writer.py) are checked on their own.
    others = (ev.filter(pc.equal(ev.column("kafka_partition"), -1)), mt.filter(pc.equal(mt.column("campaign_id"), "second-writer")))
    ev = ev.filter(pc.not_equal(ev.column("kafka_partition"), -1))
    mt = mt.filter(pc.not_equal(mt.column("campaign_id"), "second-writer"))
    return ev, mt, others


def final_metrics(mt):
    """(final and not withheld, every key): key (window_start µs, window_end µs, campaign, ad,
    plugin, dimensions, metric) -> row."""
    cur = current_metrics(mt)
    ws = cur.column("window_start").cast(pa.int64()).to_pylist()
    we = cur.column("window_end").cast(pa.int64()).to_pylist()
    cols = {n: cur.column(n).to_pylist() for n in ("campaign_id", "ad_id", "plugin", "dimensions", "metric", "value",
                                                    "numerator", "denominator", "is_final", "withheld", "partitions")}
    latest = {}
    for i in range(len(cur)):
        key = (ws[i], we[i], cols["campaign_id"][i], cols["ad_id"][i], cols["plugin"][i], cols["dimensions"][i],
               cols["metric"][i])
        latest[key] = {n: cols[n][i] for n in cols}
    return {k: v for k, v in latest.items() if v["is_final"] and not v["withheld"]}, latest


def same(a, b):
    return all(math.isclose(a[n], b[n], rel_tol=1e-12, abs_tol=1e-12) for n in ("value", "numerator", "denominator"))


results = {}
flagged = {}
dead = {}
for name, d in (("reference", args.a), ("interrupted", args.b)):
    ev, mt, (other_ev, other_mt) = load(d)
    if name == "interrupted" and args.second_writer:
        sw = json.loads(args.second_writer)
        ids = other_ev.column("event_id").to_pylist()
        print(f"second writer: {len(other_ev)} event rows, {len(other_mt)} metric rows; it reported {sw}")
        if len(ids) != len(set(ids)) or len(ids) != sw["commits"]["campaign_events"] or len(other_mt) != sw["commits"]["campaign_metrics"]:
            failures.append(f"second writer's rows: events {len(ids)} ({len(set(ids))} distinct), metrics {len(other_mt)}; it committed {sw['commits']}")
    coords = list(zip(ev.column("kafka_partition").to_pylist(), ev.column("kafka_offset").to_pylist()))
    dup = sum(n - 1 for n in Counter(coords).values() if n > 1)
    lost = args.expect_events - len(set(coords)) - len(set(dead[d]))  # every message: an event or a dead letter
    print(f"{name}: events {len(coords)}, duplicated {dup}, lost {lost}, metric rows {len(mt)}")
    if dup or lost:
        failures.append(f"{name}: duplicated {dup}, lost {lost}")
    flagged[name] = {c for c, d in zip(coords, ev.column("is_duplicate").to_pylist()) if d}
    results[name] = final_metrics(mt)

# Dead letters: each bad message once, the same in both runs.
for name, d in (("reference", args.a), ("interrupted", args.b)):
    c = Counter(dead[d])
    print(f"{name}: dead letters {len(dead[d])}, duplicated {sum(n - 1 for n in c.values())}")
    if len(c) != len(dead[d]):
        failures.append(f"{name}: dead letters duplicated")
if not dead[args.a]:
    failures.append("input design: no dead letters")
if set(dead[args.a]) != set(dead[args.b]):
    failures.append(f"dead letters differ: lost {len(set(dead[args.a]) - set(dead[args.b]))}, extra {len(set(dead[args.b]) - set(dead[args.a]))}")

# Duplicate deliveries of an event_id: the same copies flagged (not counted) in both runs.
print(f"duplicate deliveries flagged: reference {len(flagged['reference'])}, interrupted {len(flagged['interrupted'])}")
if not flagged["reference"]:
    failures.append("input design: no duplicate deliveries")
if flagged["reference"] != flagged["interrupted"]:
    d = flagged["reference"] ^ flagged["interrupted"]
    failures.append(f"{len(d)} deliveries flagged as duplicate in one run only, e.g. {sorted(d)[:5]}")

(ref, _), (got, got_all) = results["reference"], results["interrupted"]
ref_windows = {k[0] for k in ref}
mismatch = []
for k, v in ref.items():
    g = got.get(k)
    if g is None:
        w = got_all.get(k)
        mismatch.append((k, "missing" if w is None else f"not final/withheld: {w}"))
    elif not same(g, v):
        mismatch.append((k, f"{g['numerator']}/{g['denominator']} vs reference {v['numerator']}/{v['denominator']}"))
extra = [k for k in got if k[0] in ref_windows and k not in ref]
print(f"final metric keys: reference {len(ref)} over {len(ref_windows)} windows; interrupted {len(got)}; mismatched {len(mismatch)}; extra {len(extra)}")
if mismatch:
    failures.append(f"{len(mismatch)} final metrics differ, e.g. {mismatch[:3]}")
if extra:
    failures.append(f"{len(extra)} extra final metric keys, e.g. {extra[:3]}")
if failures:
    for f in failures:
        print("FAIL:", f)
    sys.exit(1)
print("OK: lost 0, duplicated 0, final metrics equal")
