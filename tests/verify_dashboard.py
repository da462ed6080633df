#!/usr/bin/env python3
"""Checks what the dashboard showed against the Iceberg tables, read independently with PyIceberg
(not DuckDB's iceberg extension, which Superset itself uses), and the daemon's /metrics against
the same tables.

    verify_dashboard.py --catalog DB --warehouse DIR --charts browser.json [--metrics-url URL]
    verify_dashboard.py --rest-uri URL --s3-endpoint URL --charts browser.json [...]   (AWS_* set)

`browser.json` is dashboard/browser_check.py's output: every chart's data as the page got it.
Expected values are computed here from campaign_metrics (the current value of every key by
sql/current_metrics.sql, the rule the dashboard's views are built on too: latest revision per
Kafka partition, shares summed; withheld keys skipped; counts summed before dividing; the rows
picked here in Python: totals of ctr, cvr and last-click `attribution` for the campaign charts,
the ctr plugin's country x device cells, the reach plugin's day windows, every attribution
model), campaign_events and dead_letters. The rule itself is checked against values computed
from the input by tests/verify_e2e.py (tests/verify_current_metrics.py for plugins, cells and
window sizes). Besides the charts: the breakdown's cells of each (window, campaign) add up to
its total, the cells' counts equal campaign_events' on-time impressions and clicks per country
and device, and every attribution model credits the same revenue (attributed + unattributed =
revenue, per window). Prints a summary; exits 1 listing every difference.
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


def cell(dimensions):
    """A breakdown cell's text (`country=DE;device=ios`) as {column: value}, parsed here."""
    return dict(p.split("=", 1) for p in dimensions.split(";"))


def check_breakdown(chart, current, events, problems):
    """CTR by country and device: per (country, device), Σclicks / Σimpressions of the ctr
    plugin's cells of the country x device breakdown over every window and campaign."""
    name = "CTR by country and device"
    cells = defaultdict(lambda: [0.0, 0.0])  # (country, device) -> [clicks, impressions]
    by_key = defaultdict(lambda: [0.0, 0.0])  # (window, campaign) -> Σ over its cells
    totals = {}
    for r in current:
        if r["plugin"] != "ctr" or r["metric"] != "ctr":
            continue
        k = (ms(r["window_start"]), ms(r["window_end"]), r["campaign_id"])
        if r["dimensions"] is None:
            totals[k] = (r["numerator"], r["denominator"])
            continue
        c = cell(r["dimensions"])
        if set(c) != {"country", "device"}:
            continue
        for acc in (cells[(c["country"], c["device"])], by_key[k]):
            acc[0] += r["numerator"]
            acc[1] += r["denominator"]
    if not cells:
        problems.append(f"{name}: the tables hold no ctr rows broken down by country and device "
                        "([plugins.config.ctr] dimensions = [\"country\", \"device\"])")
    # The tables themselves: one breakdown's cells partition the campaign's total.
    for k, (clk, imp) in by_key.items():
        if totals.get(k) != (clk, imp):
            problems.append(f"{name}: window {k[0]} campaign {k[2]}: cells sum to {clk}/{imp}, total {totals.get(k)}")
    # ... and their counts are campaign_events' (on time, not a copy), when no value was folded.
    if not any(v in ("other", "unknown") for key in cells for v in key):
        ev = defaultdict(lambda: [0, 0])
        for e in events:
            if e["is_late"] or e["is_duplicate"] or e["event_type"] == "conversion":
                continue
            ev[(e["country"], e["device"])][e["event_type"] == "impression"] += 1
        want = {k: [float(v[0]), float(v[1])] for k, v in ev.items()}
        if want != {k: v for k, v in cells.items()}:
            diff = sorted(k for k in set(want) | set(cells) if want.get(k) != cells.get(k))
            problems.append(f"{name}: cells' [clicks, impressions] differ from campaign_events in {len(diff)} cells, "
                            f"e.g. {[(k, cells.get(k), want.get(k)) for k in diff[:3]]}")
    rows = chart(name)
    got = {(r["country"], r["device"]): r.get("ctr") for r in rows}
    want = {k: (clk / imp if imp else None) for k, (clk, imp) in cells.items()}
    if set(got) != set(want):
        problems.append(f"{name}: cells {sorted(got)} shown, tables {sorted(want)}")
    for k, v in want.items():
        if k in got and not close(got[k], v):
            problems.append(f"{name}: {k}: dashboard {got[k]}, tables {v}")


def check_reach(chart, current, problems):
    """Reach and frequency per campaign (day windows): each shown row is one (day, campaign) of
    the reach plugin as it is (nothing summed but the partitions' shares); every such key shown."""
    name = "Reach and frequency per campaign (day windows)"
    want = defaultdict(dict)
    for r in current:
        length = r["window_end"] - r["window_start"]
        if r["plugin"] != "reach" or r["dimensions"] is not None or length.total_seconds() < 23 * 3600:
            continue
        w = want[(ms(r["window_start"]), r["campaign_id"])]
        if r["metric"] == "reach":
            w["reach"] = r["numerator"]
        elif r["metric"] == "frequency":
            w["impressions"] = r["numerator"]
            w["frequency"] = r["numerator"] / r["denominator"] if r["denominator"] else 0.0
    rows = chart(name)
    got = {(r["window_start"], r["campaign_id"]): r for r in rows}
    if len(got) != len(rows):
        problems.append(f"{name}: {len(rows)} rows for {len(got)} (day, campaign) keys")
    if set(got) != set(want):
        problems.append(f"{name}: {len(got)} (day, campaign) rows shown, tables {len(want)}: "
                        f"e.g. shown only {sorted(set(got) - set(want))[:3]}, missing {sorted(set(want) - set(got))[:3]}")
    for k, w in want.items():
        for f, x in w.items():
            if k in got and not close(got[k].get(f), x):
                problems.append(f"{name}: {k} {f}: dashboard {got[k].get(f)}, tables {x}")
    if not want:
        print(f"verify_dashboard: note: no day windows of the reach plugin in the tables, '{name}' is empty "
              "(checked empty)")


def check_models(chart, current, problems):
    """Attributed revenue per campaign by attribution model: per (campaign, plugin) Σ of the
    plugin's attributed_revenue rows over windows and ads; every model credits the same revenue."""
    name = "Attributed revenue per campaign by attribution model"
    att = defaultdict(float)  # (campaign, plugin) -> Σ attributed
    per_window = defaultdict(lambda: defaultdict(float))  # (plugin, window) -> metric -> Σ
    for r in current:
        if r["dimensions"] is not None or r["metric"] not in ("revenue", "attributed_revenue", "unattributed_revenue"):
            continue
        per_window[(r["plugin"], ms(r["window_start"]))][r["metric"]] += r["numerator"]
        # A campaign whose revenue a model left wholly unattributed is a bar of 0 (the view
        # coalesces), not a missing one.
        att[(r["campaign_id"], r["plugin"])] += r["numerator"] if r["metric"] == "attributed_revenue" else 0.0
    models = sorted({p for _, p in att})
    if len(models) < 2:
        problems.append(f"{name}: the tables hold attributed revenue of {models} only: want several models")
    # Every model credits the conversions of the same revenue: per window, attributed +
    # unattributed = revenue, and the revenue is the same for every model.
    windows = defaultdict(dict)
    for (p, w), v in per_window.items():
        if not close(v["attributed_revenue"] + v["unattributed_revenue"], v["revenue"], 1e-9):
            problems.append(f"{name}: {p} window {w}: attributed {v['attributed_revenue']} + unattributed "
                            f"{v['unattributed_revenue']} != revenue {v['revenue']}")
        windows[w][p] = v["revenue"]
    for w, by in windows.items():
        if len(set(round(x, 6) for x in by.values())) > 1:
            problems.append(f"{name}: window {w}: the models' revenue differs: {by}")
    rows = chart(name)
    shown = {(r["campaign_id"], p): r[p] for r in rows for p in r if p != "campaign_id" and r[p] is not None}
    want = {k: v for k, v in att.items()}
    if {p for _, p in shown} != set(models):
        problems.append(f"{name}: series {sorted({p for _, p in shown})}, tables' models {models}")
    if {c for c, _ in shown} != {c for c, _ in want}:
        problems.append(f"{name}: campaigns {sorted({c for c, _ in shown})}, tables {sorted({c for c, _ in want})}")
    for k, v in want.items():
        if not close(shown.get(k), v, 1e-6):
            problems.append(f"{name}: {k}: dashboard {shown.get(k)}, tables {v}")


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

    # The campaign charts: totals (no breakdown cell) of ctr, cvr and last click (`attribution`).
    classic = [r for r in current if r["dimensions"] is None and r["plugin"] in ("ctr", "cvr", "attribution")]
    win = defaultdict(lambda: defaultdict(float))  # (window ms, campaign) -> counts
    for r in classic:
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
        """The rows a chart's (first) query got; a missing chart is a problem."""
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

    check_breakdown(chart, current, events, problems)
    check_reach(chart, current, problems)
    check_models(chart, current, problems)

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
