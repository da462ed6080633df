#!/usr/bin/env python3
"""Checks sql/current_metrics.sql (through tests/current_metrics.py) on small hand-made
campaign_metrics tables whose current values are written down here, case by case: the key
(plugin, dimensions, window_start AND window_end), the rates (ctr, cvr, frequency) and sums
(revenue, reach), the span and the split of the breakdown cell, restatements per plugin when
several plugins emit one metric name, shadows, a filter in the reader's WHERE (pushed under the
view's aggregates) against the same filter applied afterwards, and a table without the
`dimensions` column. Exits 1 listing every difference.

    verify_current_metrics.py
"""
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent))
from current_metrics import CLASSIC, KEY, current_metrics_rows, key  # noqa: E402

T0 = datetime(2026, 3, 28, 23, 0, tzinfo=timezone.utc)  # 2026-03-29 00:00 in Europe/Berlin (clocks go forward that day)
MIN, HOUR = timedelta(minutes=1), timedelta(hours=1)
SCHEMA = pa.schema([
    ("window_start", pa.timestamp("us", tz="UTC")), ("window_end", pa.timestamp("us", tz="UTC")),
    ("campaign_id", pa.string()), ("ad_id", pa.string()), ("metric", pa.string()),
    ("value", pa.float64()), ("numerator", pa.float64()), ("denominator", pa.float64()),
    ("plugin", pa.string()), ("revision", pa.int64()), ("is_final", pa.bool_()),
    ("kafka_partition", pa.int32()), ("stream", pa.string()), ("restatement", pa.string()),
    ("shadow", pa.bool_()), ("withheld", pa.bool_()), ("dimensions", pa.string()),
])
problems = []


def row(plugin, metric, num, den, part=0, rev=1, start=T0, end=None, campaign="c1", ad=None, dims=None,
        final=True, withheld=False, restatement=None, shadow=False, stream="s"):
    rate = metric in ("ctr", "cvr", "frequency")
    return {"window_start": start, "window_end": end or start + MIN, "campaign_id": campaign, "ad_id": ad,
            "metric": metric, "value": (num / den if den else 0.0) if rate else num, "numerator": num,
            "denominator": den, "plugin": plugin, "revision": rev, "is_final": final, "kafka_partition": part,
            "stream": stream, "restatement": restatement, "shadow": shadow, "withheld": withheld,
            "dimensions": dims}


def table(rows):
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def expect(name, rows, want, where=None):
    """want: {(plugin, dimensions, metric, window_start, window_end, campaign, ad): (value, num, den, partitions)}"""
    got = {}
    for r in current_metrics_rows(table(rows), where):
        k = (r["plugin"], r["dimensions"], r["metric"], r["window_start"], r["window_end"], r["campaign_id"], r["ad_id"])
        if k in got:
            problems.append(f"{name}: key {k} twice")
        got[k] = r
    if set(got) != set(want):
        problems.append(f"{name}: keys {sorted(map(str, set(got) - set(want)))} not expected, "
                        f"{sorted(map(str, set(want) - set(got)))} missing")
    for k, (value, num, den, parts) in want.items():
        r = got.get(k)
        if r and (abs(r["value"] - value) > 1e-12 * max(1, abs(value)) or r["numerator"] != num
                  or r["denominator"] != den or r["partitions"] != parts):
            problems.append(f"{name}: {k}: got {r['value']} = {r['numerator']}/{r['denominator']} over "
                            f"{r['partitions']} shares, want {value} = {num}/{den} over {parts}")
    return got


def k(plugin, metric, dims=None, start=T0, end=None, campaign="c1", ad=None):
    return (plugin, dims, metric, start, end or start + MIN, campaign, ad)


# 1. Four attribution models emit the same names for the same window: four keys, never summed;
#    each model's latest revision per partition is its own (revisions interleave across plugins).
models = ("attribution", "attribution-linear", "attribution-time-decay", "attribution-position")
rows = []
for i, m in enumerate(models):
    for part in (0, 1):
        rows.append(row(m, "revenue", 10.0, 2, part=part, rev=5 + 2 * i))  # superseded
        rows.append(row(m, "revenue", 30.0 + part, 3, part=part, rev=10 + i))
        rows.append(row(m, "attributed_revenue", 5.0 * (i + 1), 1, part=part, rev=10 + i, ad="a1"))
expect("attribution models", rows, {
    **{k(m, "revenue"): (61.0, 61.0, 6, 2) for m in models},
    **{k(m, "attributed_revenue", ad="a1"): (10.0 * (i + 1), 10.0 * (i + 1), 2, 2) for i, m in enumerate(models)},
})
expect("attribution models, CLASSIC", rows, {k("attribution", "revenue"): (61.0, 61.0, 6, 2),
                                             k("attribution", "attributed_revenue", ad="a1"): (10.0, 10.0, 2, 2)},
       where=CLASSIC)

# 2. A breakdown beside its totals: separate keys, rates per cell from summed shares, the cell split.
rows = [row("ctr", "ctr", 3, 10, part=0), row("ctr", "ctr", 1, 30, part=1),
        row("ctr", "ctr", 2, 4, part=0, dims="country=DE;device=mobile"),
        row("ctr", "ctr", 1, 6, part=1, dims="country=DE;device=mobile"),
        row("ctr", "ctr", 1, 30, part=0, dims="country=FR;device=desktop", rev=1),
        row("ctr", "ctr", 0, 20, part=0, dims="country=FR;device=desktop", rev=2, final=False),
        row("cvr", "cvr", 1, 4, dims="currency=EUR;placement=feed"),
        row("cvr", "cvr", 0, 0, dims="device=tablet")]
got = expect("breakdown", rows, {
    k("ctr", "ctr"): (4 / 40, 4, 40, 2),
    k("ctr", "ctr", "country=DE;device=mobile"): (3 / 10, 3, 10, 2),
    k("ctr", "ctr", "country=FR;device=desktop"): (0.0, 0, 20, 1),
    k("cvr", "cvr", "currency=EUR;placement=feed"): (0.25, 1, 4, 1),
    k("cvr", "cvr", "device=tablet"): (0.0, 0, 0, 1),
})
split = {r_k[1]: tuple(r[c] for c in ("device", "country", "placement", "currency")) for r_k, r in got.items()}
for dims, want in ((None, (None, None, None, None)), ("country=DE;device=mobile", ("mobile", "DE", None, None)),
                   ("currency=EUR;placement=feed", (None, None, "feed", "EUR")), ("device=tablet", ("tablet", None, None, None))):
    if split.get(dims) != want:
        problems.append(f"split of {dims!r}: {split.get(dims)}, want {want}")
if got.get(k("ctr", "ctr", "country=FR;device=desktop"), {}).get("is_final") is not False:
    problems.append("a cell's latest revision (not final) decides is_final")
expect("breakdown, totals only", rows, {k("ctr", "ctr"): (4 / 40, 4, 40, 2)}, where="dimensions IS NULL")
expect("breakdown, one country", rows, {k("ctr", "ctr", "country=DE;device=mobile"): (3 / 10, 3, 10, 2)},
       where="country = 'DE'")

# 3. reach is a sum of the partitions' distinct users, frequency a rate over the summed reach;
#    day windows of 23 h and 25 h (Europe/Berlin around the DST changes), hour and minute windows
#    starting at the same instant are distinct keys, named by span.
D23 = (T0, T0 + 23 * HOUR)  # 2026-03-29 in Berlin: 23 h
D25 = (datetime(2026, 10, 24, 22, 0, tzinfo=timezone.utc), datetime(2026, 10, 25, 23, 0, tzinfo=timezone.utc))
D24 = (T0 - 24 * HOUR, T0)  # 2026-03-28 in Berlin
rows = []
for (s, e) in (D23, D25, D24):
    rows += [row("reach", "reach", 100, 300, part=0, start=s, end=e), row("reach", "reach", 50, 60, part=1, start=s, end=e),
             row("reach", "frequency", 300, 100, part=0, start=s, end=e), row("reach", "frequency", 60, 50, part=1, start=s, end=e)]
rows += [row("reach", "reach", 7, 9, start=T0, end=T0 + HOUR), row("reach", "reach", 2, 2, start=T0, end=T0 + MIN),
         row("ctr", "ctr", 1, 10, start=T0, end=T0 + MIN)]
got = expect("reach and spans", rows, {
    **{k("reach", "reach", start=s, end=e): (150, 150, 360, 2) for s, e in (D23, D25, D24)},
    **{k("reach", "frequency", start=s, end=e): (360 / 150, 360, 150, 2) for s, e in (D23, D25, D24)},
    k("reach", "reach", end=T0 + HOUR): (7, 7, 9, 1), k("reach", "reach"): (2, 2, 2, 1), k("ctr", "ctr"): (0.1, 1, 10, 1),
})
for r_k, r in got.items():
    length = r_k[4] - r_k[3]
    want = "day" if length >= 23 * HOUR else "hour" if length == HOUR else "minute"
    if r["span"] != want:
        problems.append(f"span of a {length} window: {r['span']}, want {want}")
days = current_metrics_rows(table(rows), "plugin = 'reach' AND span = 'day' AND metric = 'reach'")
if len(days) != 3:
    problems.append(f"span = 'day' picks {len(days)} reach rows, want 3")

# 4. Restatements are per plugin: promoting one of attribution-linear leaves last click's rows of
#    the same names alone; a rollback shows the live rows again; shadows are never current.
live = [row(m, "revenue", 10.0, 1, rev=3) for m in ("attribution", "attribution-linear")]
live += [row("attribution-linear", "attributed_revenue", 4.0, 1, ad="a1", rev=3),
         row("attribution", "attributed_revenue", 6.0, 1, ad="a1", rev=3),
         row("attribution", "attributed_revenue", 99.0, 1, ad="a1", rev=9, shadow=True)]
restated = [row("attribution-linear", "revenue", 10.0, 1, rev=1, restatement="r1"),
            row("attribution-linear", "attributed_revenue", 7.0, 1, ad="a1", rev=1, restatement="r1")]
record = lambda num, rev: row("attribution-linear", "$restatement", num, 0, rev=rev, start=T0 - HOUR,  # noqa: E731
                              end=T0 + HOUR, campaign="", restatement="r1", withheld=True)
want_live = {k("attribution", "revenue"): (10.0, 10.0, 1, 1), k("attribution-linear", "revenue"): (10.0, 10.0, 1, 1),
             k("attribution", "attributed_revenue", ad="a1"): (6.0, 6.0, 1, 1),
             k("attribution-linear", "attributed_revenue", ad="a1"): (4.0, 4.0, 1, 1)}
expect("restatement not promoted", live + restated + [record(-1, 0)], want_live)
expect("restatement promoted", live + restated + [record(-1, 0), record(1, 1)],
       {**want_live, k("attribution-linear", "attributed_revenue", ad="a1"): (7.0, 7.0, 1, 1)})
expect("restatement rolled back", live + restated + [record(-1, 0), record(1, 1), record(0, 2)], want_live)
expect("restatement promoted, CLASSIC", live + restated + [record(-1, 0), record(1, 1)],
       {k("attribution", "revenue"): (10.0, 10.0, 1, 1), k("attribution", "attributed_revenue", ad="a1"): (6.0, 6.0, 1, 1)},
       where=CLASSIC)

# 5. A filter in the WHERE (pushed into the view's first step, beside the restatement records)
#    gives exactly the rows of the unfiltered view that pass it.
rows = (live + restated + [record(-1, 0), record(1, 1)]
        + [row("ctr", "ctr", 2, 4, dims="country=DE;device=mobile"), row("ctr", "ctr", 2, 4),
           row("reach", "reach", 5, 6, start=D24[0], end=D24[1]), row("cvr", "cvr", 1, 2, withheld=True)])
everything = current_metrics_rows(table(rows))
for where, keep in ((CLASSIC, lambda r: r["dimensions"] is None and r["plugin"] in ("ctr", "cvr", "attribution")),
                    ("plugin = 'attribution-linear'", lambda r: r["plugin"] == "attribution-linear"),
                    ("plugin = 'reach' AND span = 'day'", lambda r: r["plugin"] == "reach" and r["span"] == "day"),
                    ("NOT withheld AND dimensions IS NOT NULL", lambda r: not r["withheld"] and r["dimensions"] is not None)):
    a = sorted(map(key, current_metrics_rows(table(rows), where)), key=str)
    b = sorted(map(key, filter(keep, everything)), key=str)
    if a != b or not a:
        problems.append(f"WHERE {where}: {len(a)} keys, the unfiltered view filtered after gives {len(b)}")

# 6. A table written before the dimensions column: every row a total.
old = table([row("ctr", "ctr", 1, 2, part=0), row("ctr", "ctr", 1, 2, part=1)]).drop_columns(["dimensions"])
got = current_metrics_rows(old)
if len(got) != 1 or got[0]["dimensions"] is not None or got[0]["numerator"] != 2:
    problems.append(f"a table without dimensions: {got}")
if tuple(KEY) != ("window_start", "window_end", "campaign_id", "ad_id", "plugin", "dimensions", "metric"):
    problems.append(f"KEY {KEY}")

if problems:
    print(f"verify_current_metrics: {len(problems)} problems:")
    for p in problems:
        print("  ", p)
    sys.exit(1)
print("verify_current_metrics: every case as written down (attribution models, breakdowns, reach/frequency, "
      "spans, restatements per plugin, shadows, pushed filters, tables without dimensions)")
