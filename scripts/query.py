#!/usr/bin/env python3
"""Top campaigns from the admetrics Iceberg tables, read with DuckDB's iceberg extension.

    scripts/query.sh [--catalog .state/catalog.db] [--minutes 15]

Reads the current value of every (window, campaign, ad, metric) by sql/current_metrics.sql (per
Kafka partition the latest revision, the partitions' shares summed; withheld keys skipped) and
sums numerators and denominators per campaign (rates are never averaged), over the last N
minutes of event time.
"""
import argparse
import importlib.util
import sqlite3
import sys
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from current_metrics import define  # noqa: E402  (sql/current_metrics.sql, the one definition)

ap = argparse.ArgumentParser()
ap.add_argument("--catalog", default=".state/catalog.db")
ap.add_argument("--namespace", default="ads")
ap.add_argument("--minutes", type=int, default=15)
ap.add_argument("--limit", type=int, default=10)
a = ap.parse_args()

with sqlite3.connect(a.catalog) as db:
    loc = dict(db.execute("SELECT table_name, metadata_location FROM iceberg_tables WHERE table_namespace = ?", (a.namespace,)))
ext = importlib.util.find_spec("duckdb_ext").submodule_search_locations[0] + "/extensions"
con = duckdb.connect()
con.execute(f"SET extension_directory='{ext}'")
con.execute("SET autoinstall_known_extensions=false")
con.execute("LOAD iceberg")
define(con, f"iceberg_scan('{loc['campaign_metrics']}')")  # views campaign_metrics, current_metrics
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
WHERE NOT withheld
  AND window_start >= (SELECT max(window_start) FROM campaign_metrics) - INTERVAL '{a.minutes} minutes'
GROUP BY campaign_id ORDER BY revenue DESC, impressions DESC LIMIT {a.limit}
""").fetchall()
print(f"top campaigns, last {a.minutes} minutes of event time (current value per window, all partitions):")
print(f"{'campaign':<16}{'impr':>10}{'clicks':>9}{'conv':>7}{'CTR':>9}{'CVR':>9}{'revenue':>12}{'attributed':>12}")
for c, imp, clk, conv, ctr, cvr, rev, att in rows:
    print(f"{c:<16}{imp or 0:>10.0f}{clk or 0:>9.0f}{conv or 0:>7.0f}{(ctr or 0) * 100:>8.2f}%{(cvr or 0) * 100:>8.2f}%{rev:>12.2f}{att:>12.2f}")
events = f"iceberg_scan('{loc['campaign_events']}')"
n, late = con.execute(f"SELECT count(*), count(*) FILTER (is_late) FROM {events}").fetchone()
dead = con.execute(f"SELECT count(*) FROM iceberg_scan('{loc['dead_letters']}')").fetchone()[0] if "dead_letters" in loc else 0
print(f"campaign_events: {n} rows ({late} late); dead_letters: {dead}")
