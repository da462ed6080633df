"""Reads ads.campaign_metrics with PyIceberg (independently of the host's reader) for
tests/shadow_e2e.rs, and prints one JSON object:

    verify_shadow.py --catalog DB --warehouse DIR [--metric ctr]

- "live" / "shadow": per (window_start ms, stream, partition, campaign) the latest revision of
  the metric's total (dimensions NULL) live rows (shadow IS NOT TRUE, no restatement) / shadow rows (shadow = true):
  numerator, denominator, is_final, withheld, plugin_version;
- "current": sql/current_metrics.sql (through tests/current_metrics.py) for the metric's totals,
  per (window_start ms, campaign): numerator, denominator, value, is_final, withheld;
- "shadow_values": how many rows have shadow true, false and NULL.

The test compares all of it with what it produced.
"""
import argparse
import json
import sys
from pathlib import Path

import duckdb
from pyiceberg.catalog.sql import SqlCatalog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from current_metrics import current_metrics_rows  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--catalog", required=True)
ap.add_argument("--warehouse", required=True)
ap.add_argument("--metric", default="ctr")
a = ap.parse_args()

cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.catalog}", warehouse=f"file://{a.warehouse}")
table = cat.load_table("ads.campaign_metrics").scan().to_arrow()

con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.register("m", table)


def latest(where: str) -> list:
    q = f"""
    SELECT epoch_ms(window_start) AS w, stream, kafka_partition AS p, campaign_id AS c,
           arg_max(struct_pack(numerator, denominator, is_final, withheld, plugin_version), revision) AS r
    FROM m
    WHERE metric = ? AND restatement IS NULL AND dimensions IS NULL AND {where}
    GROUP BY ALL ORDER BY ALL"""
    return [
        {"window_start_ms": w, "stream": s, "partition": p, "campaign": c, **r}
        for (w, s, p, c, r) in con.execute(q, [a.metric]).fetchall()
    ]


out = {
    "live": latest("shadow IS NOT TRUE"),
    "shadow": latest("shadow = true"),
    "current": [
        {
            "window_start_ms": round(r["window_start"].timestamp() * 1000),
            "campaign": r["campaign_id"],
            "numerator": r["numerator"],
            "denominator": r["denominator"],
            "value": r["value"],
            "is_final": r["is_final"],
            "withheld": r["withheld"],
        }
        for r in current_metrics_rows(table, f"metric = '{a.metric}' AND dimensions IS NULL")
    ],
    "shadow_values": {
        str(k).lower(): n
        for k, n in con.execute("SELECT shadow, count(*) FROM m GROUP BY shadow").fetchall()
    },
}
print(json.dumps(out))
