#!/usr/bin/env python3
"""After a restart, copies of events committed before it must still be recognised: every row of
campaign_events at or past --after (partition -> offset) that is not a flush event must have
is_duplicate = true, and there must be --expect of them.
"""
import argparse
import json
import sys

from pyiceberg.catalog.sql import SqlCatalog

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--after", required=True)
ap.add_argument("--expect", type=int, required=True)
a = ap.parse_args()
after = {int(k): v for k, v in json.loads(a.after).items()}
cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.dir}/catalog.db", warehouse=f"file://{a.dir}/warehouse")
ev = cat.load_table(("ads", "campaign_events")).scan().to_arrow().to_pylist()
new = [r for r in ev if r["kafka_offset"] >= after.get(r["kafka_partition"], 0) and r["campaign_id"] != "flush"]
flagged = sum(1 for r in new if r["is_duplicate"])
late_only = sum(1 for r in new if not r["is_duplicate"] and r["is_late"])
print(f"copies after the restart: {len(new)}, flagged duplicate {flagged}, merely late {late_only}")
by_p = {}
for r in new:
    by_p.setdefault(r["kafka_partition"], []).append(r["kafka_offset"])
print("after:", after, {p: (min(o), max(o), len(o)) for p, o in sorted(by_p.items())})
if len(new) != a.expect or flagged != a.expect:
    print("FAIL: every copy of an event committed before the restart must be flagged is_duplicate")
    sys.exit(1)
print("OK")
