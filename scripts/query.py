#!/usr/bin/env python3
"""Current metrics from the admetrics Iceberg tables, read with DuckDB's iceberg extension.

    scripts/query.sh [--catalog .state/catalog.db] [--minutes 15] [--limit 10]
        top campaigns: impressions, clicks, conversions, CTR, CVR, revenue, attributed revenue
        [--attribution PLUGIN]   revenue and attributed revenue of that attribution model
                                 (default `attribution`, last click; or attribution-linear,
                                 attribution-time-decay, attribution-position)
    scripts/query.sh --by country,device [--campaign C]
        CTR and CVR per breakdown cell (the ctr/cvr plugins' `dimensions` rows), summed over
        campaigns (or one) and windows
    scripts/query.sh --models
        attributed revenue per campaign, one column per attribution model (plugin)
    scripts/query.sh --plugin reach [--span day]
        every current value of one plugin per window and campaign (and ad, cell), not summed
        over anything: the way to read reach and frequency

Reads the current value of every key by sql/current_metrics.sql (per Kafka partition the latest
revision, the partitions' shares summed; withheld keys skipped; the key is window_start,
window_end, campaign, ad, plugin, dimensions and metric), over the last N minutes of event time
(windows starting N minutes before the newest window start or later; hour and day windows: those
that end after that instant). Counts are summed as numerators and denominators, rates re-derived
from the sums (never averaged). Windows of different sizes are never mixed: `--span minute|hour|day`
picks one (the top campaigns, --by and --models read minute windows by default, --plugin the
one size its rows have). Reach is not additive over windows, campaigns or cells: --plugin lists
it per key and nothing here sums it.
"""
import argparse
import importlib.util
import sqlite3
import sys
from collections import defaultdict
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from current_metrics import define  # noqa: E402  (sql/current_metrics.sql, the one definition)

DIMENSIONS = ("country", "currency", "device", "placement")  # sorted: the order of `dimensions`
SPANS = ("minute", "hour", "day")


def lit(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", default=".state/catalog.db")
    ap.add_argument("--namespace", default="ads")
    ap.add_argument("--minutes", type=int, default=15)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--span", choices=SPANS, default=None, help="window size to read (default: minute; --plugin: its own)")
    ap.add_argument("--attribution", default="attribution", metavar="PLUGIN",
                    help="attribution model of the top campaigns' revenue columns (default: attribution, last click)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--by", default=None, metavar="COLS",
                      help=f"CTR and CVR per breakdown cell of these columns ({', '.join(DIMENSIONS)})")
    mode.add_argument("--models", action="store_true", help="attributed revenue per campaign and attribution model")
    mode.add_argument("--plugin", default=None, help="every current value of this plugin, per window and key")
    ap.add_argument("--campaign", default=None, help="only this campaign")
    a = ap.parse_args()

    with sqlite3.connect(a.catalog) as db:
        loc = dict(db.execute("SELECT table_name, metadata_location FROM iceberg_tables WHERE table_namespace = ?",
                              (a.namespace,)))
    ext = importlib.util.find_spec("duckdb_ext").submodule_search_locations[0] + "/extensions"
    con = duckdb.connect()
    con.execute(f"SET extension_directory='{ext}'")
    con.execute("SET autoinstall_known_extensions=false")
    con.execute("LOAD iceberg")
    con.execute("SET TimeZone = 'UTC'")
    define(con, f"iceberg_scan('{loc['campaign_metrics']}')")  # views campaign_metrics, current_metrics
    since = f"(SELECT max(window_start) FROM campaign_metrics) - INTERVAL '{a.minutes} minutes'"

    def period(span):
        """The windows of `span` in the last --minutes of event time (a filter over current_metrics)."""
        when = f"window_start >= {since}" if span == "minute" else f"window_end > {since}"
        return f"NOT withheld AND span = {lit(span)} AND {when}" + (
            f" AND campaign_id = {lit(a.campaign)}" if a.campaign else "")

    if a.by is not None:
        by_cells(con, a, period(a.span or "minute"))
    elif a.models:
        models(con, a, period(a.span or "minute"))
    elif a.plugin is not None:
        plugin_values(con, a, period)
    else:
        top_campaigns(con, a, period(a.span or "minute"))
    events = f"iceberg_scan('{loc['campaign_events']}')"
    n, late = con.execute(f"SELECT count(*), count(*) FILTER (is_late) FROM {events}").fetchone()
    dead = con.execute(f"SELECT count(*) FROM iceberg_scan('{loc['dead_letters']}')").fetchone()[0] \
        if "dead_letters" in loc else 0
    print(f"campaign_events: {n} rows ({late} late); dead_letters: {dead}")


def span_note(a):
    return "" if (a.span or "minute") == "minute" else f", {a.span} windows"


def top_campaigns(con, a, where):
    # Totals (dimensions NULL) of the ctr and cvr plugins and of one attribution model: a
    # breakdown's cells and the other models' rows of the same metric names are keys of their own.
    rows = con.execute(f"""
    SELECT campaign_id,
           sum(denominator) FILTER (metric = 'ctr') AS impressions,
           sum(numerator)   FILTER (metric = 'ctr') AS clicks,
           sum(numerator)   FILTER (metric = 'cvr') AS conversions,
           sum(numerator)   FILTER (metric = 'ctr') / nullif(sum(denominator) FILTER (metric = 'ctr'), 0) AS ctr,
           sum(numerator)   FILTER (metric = 'cvr') / nullif(sum(denominator) FILTER (metric = 'cvr'), 0) AS cvr,
           coalesce(sum(numerator) FILTER (metric = 'revenue'), 0) AS revenue,
           coalesce(sum(numerator) FILTER (metric = 'attributed_revenue'), 0) AS attributed
    FROM current_metrics
    WHERE dimensions IS NULL AND plugin IN ('ctr', 'cvr', {lit(a.attribution)}) AND {where}
    GROUP BY campaign_id ORDER BY revenue DESC, impressions DESC LIMIT {a.limit}
    """).fetchall()
    model = "" if a.attribution == "attribution" else f", revenue by {a.attribution}"
    print(f"top campaigns, last {a.minutes} minutes of event time (current value per window, all partitions"
          f"{span_note(a)}{model}):")
    print(f"{'campaign':<16}{'impr':>10}{'clicks':>9}{'conv':>7}{'CTR':>9}{'CVR':>9}{'revenue':>12}{'attributed':>12}")
    for c, imp, clk, conv, ctr, cvr, rev, att in rows:
        print(f"{c:<16}{imp or 0:>10.0f}{clk or 0:>9.0f}{conv or 0:>7.0f}{(ctr or 0) * 100:>8.2f}%"
              f"{(cvr or 0) * 100:>8.2f}%{rev:>12.2f}{att:>12.2f}")


def by_cells(con, a, where):
    """CTR and CVR per cell of a breakdown. Cells of exactly the asked columns; if a plugin only
    has a finer breakdown (country,device when asked for country), its cells are summed over the
    other columns (the cells of one breakdown partition the total, so counts add up)."""
    want = sorted({c.strip() for c in a.by.split(",") if c.strip()})
    bad = [c for c in want if c not in DIMENSIONS]
    if not want or bad:
        sys.exit(f"query: --by takes columns of {', '.join(DIMENSIONS)} (got {a.by!r})")
    colset = "concat_ws(',', " + ", ".join(f"CASE WHEN {c} IS NOT NULL THEN '{c}' END" for c in DIMENSIONS) + ")"
    present = con.execute(f"""
        SELECT metric, {colset} AS cols, count(*) FROM current_metrics
        WHERE plugin IN ('ctr', 'cvr') AND metric IN ('ctr', 'cvr') AND dimensions IS NOT NULL AND {where}
        GROUP BY ALL ORDER BY ALL""").fetchall()
    chosen = {}
    for metric in ("ctr", "cvr"):
        sets = [cols for m, cols, _ in present if m == metric]
        if ",".join(want) in sets:
            chosen[metric] = ",".join(want)
            continue
        finer = [s for s in sets if set(want) <= set(s.split(","))]
        if len(finer) == 1:
            chosen[metric] = finer[0]
        elif len(finer) > 1:
            sys.exit(f"query: {metric} has several breakdowns holding {','.join(want)} ({'; '.join(finer)}) "
                     f"in the period: ask for one of them exactly")
    if not chosen:
        have = sorted({cols for _, cols, _ in present})
        sys.exit(f"query: no ctr/cvr rows broken down by {','.join(want)} in the last {a.minutes} minutes"
                 f"{span_note(a)}"
                 + (f" (breakdowns present: {'; '.join(have)})" if have else
                    " (no breakdown rows: set [plugins.config.ctr] dimensions = [...])"))
    pick = " OR ".join(f"(metric = '{m}' AND {colset} = {lit(s)})" for m, s in chosen.items())
    cols = ", ".join(want)
    rows = con.execute(f"""
    SELECT {cols},
           sum(denominator) FILTER (metric = 'ctr') AS impressions,
           sum(numerator)   FILTER (metric = 'ctr') AS clicks,
           sum(numerator)   FILTER (metric = 'cvr') AS conversions,
           sum(numerator)   FILTER (metric = 'ctr') / nullif(sum(denominator) FILTER (metric = 'ctr'), 0) AS ctr,
           sum(numerator)   FILTER (metric = 'cvr') / nullif(sum(denominator) FILTER (metric = 'cvr'), 0) AS cvr
    FROM current_metrics
    WHERE plugin IN ('ctr', 'cvr') AND dimensions IS NOT NULL AND ({pick}) AND {where}
    GROUP BY ALL ORDER BY impressions DESC NULLS LAST, {cols} LIMIT {a.limit}
    """).fetchall()
    summed = [f"{m} over {s}" for m, s in chosen.items() if s != ",".join(want)]
    print(f"CTR and CVR by {cols}, last {a.minutes} minutes of event time"
          + (f", campaign {a.campaign}" if a.campaign else ", all campaigns") + span_note(a)
          + (f" (summed from the cells of {'; '.join(summed)})" if summed else "") + ":")
    print("".join(f"{c:<14}" for c in want) + f"{'impr':>10}{'clicks':>9}{'conv':>7}{'CTR':>9}{'CVR':>9}")
    for r in rows:
        vals, (imp, clk, conv, ctr, cvr) = r[:len(want)], r[len(want):]
        print("".join(f"{v:<14}" for v in vals) + f"{imp or 0:>10.0f}{clk or 0:>9.0f}{conv or 0:>7.0f}"
              + (f"{ctr * 100:>8.2f}%" if ctr is not None else f"{'-':>9}")
              + (f"{cvr * 100:>8.2f}%" if cvr is not None else f"{'-':>9}"))


def models(con, a, where):
    """Attributed revenue per campaign, one column per plugin that emits attributed_revenue."""
    rows = con.execute(f"""
    SELECT campaign_id, plugin, sum(numerator) FROM current_metrics
    WHERE metric = 'attributed_revenue' AND dimensions IS NULL AND {where}
    GROUP BY ALL""").fetchall()
    totals = con.execute(f"""
    SELECT plugin, metric, sum(numerator) FROM current_metrics
    WHERE metric IN ('revenue', 'unattributed_revenue') AND dimensions IS NULL AND {where}
          AND plugin IN (SELECT DISTINCT plugin FROM current_metrics WHERE metric = 'attributed_revenue')
    GROUP BY ALL""").fetchall()
    plugins = sorted({p for _, p, _ in rows} | {p for p, _, _ in totals},
                     key=lambda p: (p != "attribution", p))
    if not plugins:
        sys.exit(f"query: no attribution rows in the last {a.minutes} minutes")
    by = defaultdict(dict)
    for c, p, v in rows:
        by[c][p] = v
    first = plugins[0]
    order = sorted(by, key=lambda c: (-(by[c].get(first) or 0), c))[:a.limit]
    w = max(14, *(len(p) + 2 for p in plugins))
    print(f"attributed revenue per campaign by attribution model, last {a.minutes} minutes of event time"
          f"{span_note(a)} (one column per plugin; `attribution` is last click):")
    print(f"{'campaign':<24}" + "".join(f"{p:>{w}}" for p in plugins))
    for c in order:
        print(f"{c:<24}" + "".join(f"{by[c].get(p, 0.0):>{w}.2f}" for p in plugins))
    tot = {(p, m): v for p, m, v in totals}
    for m in ("revenue", "unattributed_revenue"):  # per model: the same revenue, credited differently
        print(f"{'(' + m + ')':<24}" + "".join(f"{tot.get((p, m), 0.0):>{w}.2f}" for p in plugins))


def plugin_values(con, a, period):
    """Every current value of one plugin, per key, pivoted by metric; nothing summed."""
    spans = [s for s, in con.execute(
        f"SELECT DISTINCT span FROM current_metrics WHERE plugin = {lit(a.plugin)} ORDER BY 1").fetchall()]
    if not spans:
        sys.exit(f"query: no rows of plugin {a.plugin!r}")
    span = a.span or (spans[0] if len(spans) == 1 else None)
    if span is None:
        sys.exit(f"query: plugin {a.plugin} has windows of several sizes ({', '.join(spans)}): pick one with --span")
    rows = con.execute(f"""
    SELECT strftime(window_start, '%Y-%m-%dT%H:%M:%SZ'), strftime(window_end, '%Y-%m-%dT%H:%M:%SZ'),
           campaign_id, ad_id, dimensions, metric, value
    FROM current_metrics WHERE plugin = {lit(a.plugin)} AND {period(span)}
    ORDER BY window_start DESC, window_end, campaign_id, ad_id NULLS FIRST, dimensions NULLS FIRST, metric
    """).fetchall()
    keys, metrics = {}, []
    for ws, we, c, ad, dims, m, v in rows:
        keys.setdefault((ws, we, c, ad, dims), {})[m] = v
        if m not in metrics:
            metrics.append(m)
    if not keys:
        sys.exit(f"query: no {span} windows of plugin {a.plugin} in the last {a.minutes} minutes "
                 f"(its window sizes: {', '.join(spans)})")
    shown = list(keys.items())[:a.limit]
    ads = any(k[3] for k, _ in shown)
    cells = any(k[4] for k, _ in shown)
    print(f"plugin {a.plugin}, {span} windows of the last {a.minutes} minutes of event time"
          f" (current values, all partitions; {len(keys)} keys, newest first, {len(shown)} shown):")
    print(f"{'window':<46}{'campaign':<16}" + (f"{'ad':<14}" if ads else "") + (f"{'cell':<28}" if cells else "")
          + "".join(f"{m:>16}" for m in metrics))
    for (ws, we, c, ad, dims), vals in shown:
        print(f"{ws + ' .. ' + we:<46}{c:<16}" + (f"{ad or '':<14}" if ads else "") + (f"{dims or '(total)':<28}" if cells else "")
              + "".join(f"{vals[m]:>16.6g}" if m in vals else f"{'':>16}" for m in metrics))


if __name__ == "__main__":
    main()
