#!/usr/bin/env python3
"""The docker-compose dashboard's query path, without Superset's web server: the DuckDB file of
views that dashboard/bundle.py wrote in REST mode, opened through SQLAlchemy exactly as the
bundle's database YAML opens it (read-only, same connect_args) with admetrics_superset's connect
hook (which runs `<file>.init.sql`: S3 secret + ATTACH of the REST catalog). Per-campaign totals
of the `campaign_windows` view must equal those of the events file.

    verify_rest_views.py --duckdb views.duckdb --events FILE     (run with .venv-superset)
"""
import argparse
import os
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import yaml
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "dashboard"))
sys.path.insert(0, str(ROOT / "tests"))
import admetrics_superset  # noqa: E402
import bundle  # noqa: E402
from verify_file_run import classify  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duckdb", required=True)
    ap.add_argument("--events", required=True)
    a = ap.parse_args()
    want = defaultdict(lambda: [0, 0, 0, Decimal(0)])
    for line in open(a.events, "rb").read().split(b"\n"):
        e = classify(line) if line else None
        if e is None:
            continue
        w = want[e["campaign_id"]]
        w[("impression", "click", "conversion").index(e["event_type"])] += 1
        if e["event_type"] == "conversion":
            w[3] += Decimal(str(e["revenue"]))

    # The engine as Superset builds it from the database YAML.
    values = {"__EXTENSIONS__": bundle.extensions_dir(), "__DUCKDB_FILE__": os.path.abspath(a.duckdb)}
    db = yaml.safe_load(bundle.render((ROOT / "dashboard/bundle/databases/admetrics.yaml").read_text(), values))
    extra = db["extra"] if isinstance(db["extra"], dict) else yaml.safe_load(db["extra"])
    connect_args = extra["engine_params"]["connect_args"]
    admetrics_superset.install_duckdb_init()
    engine = create_engine(db["sqlalchemy_uri"], connect_args=connect_args)
    with engine.connect() as c:
        rows = c.execute(text(
            "SELECT campaign_id, sum(impressions), sum(clicks), sum(conversions), sum(revenue) "
            "FROM campaign_windows GROUP BY 1")).fetchall()
        health = c.execute(text("SELECT sum(events), sum(dead_letters) FROM pipeline_health")).fetchone()
    got = {r[0]: [int(r[1]), int(r[2]), int(r[3]), Decimal(repr(float(r[4])))] for r in rows}
    problems = []
    for k in sorted(set(want) | set(got)):
        w, g = want.get(k, [0, 0, 0, Decimal(0)]), got.get(k, [0, 0, 0, Decimal(0)])
        if w[:3] != g[:3] or abs(w[3] - g[3]) > Decimal("0.01"):
            problems.append(f"{k}: views {g}, file {w}")
    valid = sum(sum(v[:3]) for v in want.values())
    if health[0] != valid:
        problems.append(f"pipeline_health counts {health[0]} events, the file has {valid} valid")
    print(f"verify_rest_views: {len(got)} campaigns, {health[0]} events, {health[1]} dead letters via "
          f"DuckDB ATTACH (REST catalog, S3)")
    if problems:
        print("\n".join(problems[:20]))
        sys.exit(1)
    print("verify_rest_views: the views over the REST catalog match the file")


if __name__ == "__main__":
    main()
