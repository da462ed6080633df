#!/usr/bin/env python3
"""Checks what the dashboard showed against the Iceberg tables, read independently with PyIceberg
(not DuckDB's iceberg extension, which Superset itself uses), and the daemon's /metrics against
the same tables.

    verify_dashboard.py --catalog DB --warehouse DIR --charts browser.json [--metrics-url URL]
    verify_dashboard.py --rest-uri URL --s3-endpoint URL --charts browser.json [...]   (AWS_* set)

`browser.json` is dashboard/browser_check.py's output: every chart's data as the page got it.
Expected values are computed here from campaign_metrics (the current value of every window key
by sql/current_metrics.sql, the rule the dashboard's view is built on too: latest revision per
Kafka partition, shares summed; withheld keys skipped; counts summed before dividing),
campaign_events and dead_letters. The rule itself is checked against values computed from the
input by tests/verify_e2e.py. Prints a summary; exits 1 listing every difference.
"""
import argparse
import json
import math
import os
import sys
import urllib.request
from collections import defaultdict

from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.catalog.sql import SqlCatalog

from current_metrics import current_metrics_rows


def ms(ts):
    return int(ts.timestamp() * 1000)


def close(a, b, rel=1e-9):
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-9)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog", help="the SQLite catalog file (embedded setup)")
    ap.add_argument("--warehouse", help="its warehouse directory, or with --rest-uri s3://BUCKET/")
    ap.add_argument("--rest-uri", help="an Iceberg REST catalog instead (the docker-compose stack)")
    ap.add_argument("--s3-endpoint", help="with --rest-uri: the S3-protocol server (AWS_* credentials)")
    ap.add_argument("--namespace", default="ads")
    ap.add_argument("--charts", required=True)
    ap.add_argument("--metrics-url", default=None)
    a = ap.parse_args()
    if a.rest_uri:
        props = {"uri": a.rest_uri, "s3.endpoint": a.s3_endpoint, "s3.path-style-access": "true",
                 "s3.region": os.environ.get("AWS_REGION", "us-east-1"),
                 "s3.access-key-id": os.environ["AWS_ACCESS_KEY_ID"],
                 "s3.secret-access-key": os.environ["AWS_SECRET_ACCESS_KEY"]}
        cat = RestCatalog("admetrics", **props)
    elif a.catalog and a.warehouse:
        cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.catalog}", warehouse=f"file://{a.warehouse}")
    else:
        ap.error("either --catalog and --warehouse, or --rest-uri and --s3-endpoint")
    load = lambda t: cat.load_table(f"{a.namespace}.{t}").scan().to_arrow()  # noqa: E731
    events, dead = load("campaign_events").to_pylist(), load("dead_letters").to_pylist()
    current = current_metrics_rows(load("campaign_metrics"), where="NOT withheld")

    win = defaultdict(lambda: defaultdict(float))  # (window ms, campaign) -> counts
    for r in current:
        m = r["metric"]
        w = win[(ms(r["window_start"]), r["campaign_id"])]
        if m == "ctr":
            w["impressions"] += r["denominator"]
            w["clicks"] += r["numerator"]
        elif m == "cvr":
            w["conversions"] += r["numerator"]
            w["clicks_cvr"] += r["denominator"]
        elif m == "revenue":
            w["revenue"] += r["numerator"]
        elif m == "attributed_revenue":
            w["attributed_revenue"] += r["numerator"]
    per_campaign = defaultdict(lambda: defaultdict(float))
    for (_w, c), v in win.items():
        for f, x in v.items():
            per_campaign[c][f] += x
    per_window = defaultdict(lambda: defaultdict(float))
    for (w, _c), v in win.items():
        for f, x in v.items():
            per_window[w][f] += x

    shown = json.load(open(a.charts))["charts"]
    problems = []

    def chart(name):
        if name not in shown:
            problems.append(f"chart {name!r} missing from the page")
            return []
        return shown[name]["data"][0] or []

    # Big numbers.
    totals = {"Events committed": len(events),
              "Late events": sum(e["is_late"] for e in events),
              "Dead letters": len(dead)}
    for name, want in totals.items():
        data = chart(name)
        got = next(iter(data[0].values())) if data else None
        if got != want:
            problems.append(f"{name}: dashboard {got}, tables {want}")

    # Events / late / dead letters per second of ingest time.
    per_sec = defaultdict(lambda: [0, 0, 0])
    for e in events:
        s = ms(e["ingest_time"]) // 1000 * 1000
        per_sec[s][0] += 1
        per_sec[s][1] += e["is_late"]
    for d in dead:
        per_sec[ms(d["ingest_time"]) // 1000 * 1000][2] += 1
    got_sec = {row["second"]: [row.get("events") or 0, row.get("late_events") or 0, row.get("dead_letters") or 0]
               for row in chart("Pipeline: events, late events and dead letters per second")}
    if got_sec != dict(per_sec):
        diff = [s for s in set(got_sec) | set(per_sec) if got_sec.get(s) != per_sec.get(s)]
        problems.append(f"events per second differ in {len(diff)} seconds, e.g. {sorted(diff)[:3]}: "
                        f"dashboard {[got_sec.get(s) for s in sorted(diff)[:3]]} tables {[per_sec.get(s) for s in sorted(diff)[:3]]}")

    # Rates per campaign over time: every shown point equals Σnumerator/Σdenominator of its window.
    for name, num, den, rank in (("CTR per campaign (top 10 by impressions)", "clicks", "impressions", "impressions"),
                                 ("CVR per campaign (top 10 by clicks)", "conversions", "clicks_cvr", "clicks")):
        rows = chart(name)
        series = {k for r in rows for k in r if k != "window_start"}
        ranked = sorted(per_campaign, key=lambda c: -per_campaign[c][rank])
        if len(series) != min(10, len(ranked)):
            problems.append(f"{name}: {len(series)} series, expected {min(10, len(ranked))}")
        floor = per_campaign[ranked[min(10, len(ranked)) - 1]][rank] if ranked else 0
        for c in series:
            if per_campaign[c][rank] < floor:
                problems.append(f"{name}: {c} shown but is not in the top 10 by {rank}")
        points = 0
        for r in rows:
            for c in series:
                v = win.get((r["window_start"], c))
                want = v[num] / v[den] if v and v[den] else None
                if not close(r.get(c), want):
                    problems.append(f"{name}: window {r['window_start']} {c}: dashboard {r.get(c)}, tables {want}")
                points += r.get(c) is not None
        if points == 0:
            problems.append(f"{name}: no points")

    # Revenue and attributed revenue per window.
    rows = chart("Revenue and attributed revenue")
    if {r["window_start"] for r in rows} != set(per_window):
        problems.append(f"revenue chart: {len(rows)} windows, tables {len(per_window)}")
    for r in rows:
        w = per_window.get(r["window_start"], {})
        for f in ("revenue", "attributed_revenue"):
            if not close(r.get(f), w.get(f, 0.0), 1e-6):
                problems.append(f"revenue chart: window {r['window_start']} {f}: dashboard {r.get(f)}, tables {w.get(f)}")

    # Top campaigns: the 20 campaigns with the most revenue, every figure from summed counts.
    rows = chart("Top campaigns")
    want_rev = sorted((v["revenue"] for v in per_campaign.values()), reverse=True)[:20]
    got_rev = [r["revenue"] for r in rows]
    if len(got_rev) != len(want_rev) or not all(close(x, y, 1e-6) for x, y in zip(got_rev, want_rev)):
        problems.append(f"top campaigns: revenues {got_rev[:5]}..., tables {want_rev[:5]}...")
    for r in rows:
        v = per_campaign[r["campaign_id"]]
        want = {"impressions": v["impressions"], "clicks": v["clicks"], "conversions": v["conversions"],
                "revenue": v["revenue"], "attributed_revenue": v["attributed_revenue"],
                "ctr": v["clicks"] / v["impressions"] if v["impressions"] else None,
                "cvr": v["conversions"] / v["clicks_cvr"] if v["clicks_cvr"] else None}
        for f, x in want.items():
            if not close(r.get(f), x, 1e-6):
                problems.append(f"top campaigns: {r['campaign_id']} {f}: dashboard {r.get(f)}, tables {x}")

    # The daemon's own counters against the same tables.
    if a.metrics_url:
        page = urllib.request.urlopen(a.metrics_url, timeout=10).read().decode()
        samples = {}
        for line in page.splitlines():
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                samples[k] = float(v)
        for table, want in (("campaign_events", len(events)), ("dead_letters", len(dead))):
            got = samples.get(f'admetrics_committed_rows_total{{table="{table}"}}')
            if got != want:
                problems.append(f"/metrics committed rows of {table}: {got}, table holds {want}")
        by_reason = defaultdict(int)
        for d in dead:
            by_reason[d["reason"]] += 1
        for reason, n in by_reason.items():
            got = samples.get(f'admetrics_dead_letters_total{{reason="{reason}"}}')
            if got != n:
                problems.append(f"/metrics dead letters {reason}: {got}, table holds {n}")
        got = samples.get("admetrics_late_events_total")
        if got != totals["Late events"]:
            problems.append(f"/metrics late events {got}, table holds {totals['Late events']}")

    print(f"verify_dashboard: {len(events)} events, {len(dead)} dead letters, {len(win)} (window, campaign) keys, "
          f"{len(per_campaign)} campaigns checked against {len(shown)} charts")
    if problems:
        print(f"{len(problems)} differences:")
        for p in problems[:40]:
            print("  ", p)
        sys.exit(1)
    print("verify_dashboard: every chart matches the tables")


if __name__ == "__main__":
    main()
