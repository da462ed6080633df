#!/usr/bin/env python3
"""A second, independent writer (PyIceberg) committing to admetrics' tables while the daemon runs:
one-row appends to campaign_events (kafka_partition = -1, so they are told apart) and
campaign_metrics (campaign_id = 'second-writer', kafka_partition = -1, revisions laid out as the
daemon's: epoch << 32 | sequence, so above 2^31), alternating, for --seconds. A commit that loses
the compare-and-swap race (CommitFailedException) is retried on a reloaded table. Prints JSON:
commits per table and conflicts met.
"""
import argparse
import json
import time
from datetime import datetime, timezone

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import CommitFailedException

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--seconds", type=float, required=True)
a = ap.parse_args()

cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.dir}/catalog.db", warehouse=f"file://{a.dir}/warehouse")
now = datetime.now(timezone.utc)


def row(name, i):
    if name == "campaign_events":
        return {"event_id": f"second-{i}", "event_type": "impression", "event_time": now, "campaign_id": "second-writer",
                "ad_id": "second-writer", "user_id": "second-writer", "revenue": None, "currency": None, "device": None,
                "country": None, "placement": None, "kafka_partition": -1, "kafka_offset": i, "ingest_time": now,
                "is_late": False, "is_duplicate": False, "stream": "second-writer"}
    return {"window_start": now, "window_end": now, "campaign_id": "second-writer", "ad_id": None, "metric": "ctr",
            "value": 0.0, "numerator": 0.0, "denominator": 0.0, "plugin": "second-writer", "plugin_version": "0",
            "plugin_sha256": "0" * 64, "revision": (1 << 32) | i, "is_final": True, "computed_at": now, "withheld": False,
            "kafka_partition": -1, "stream": "second-writer"}


commits = {"campaign_events": 0, "campaign_metrics": 0}
conflicts = 0
deadline = time.time() + a.seconds
i = 0
while time.time() < deadline:
    for name in commits:
        for attempt in range(100):
            t = cat.load_table(("ads", name))
            try:
                t.append(pa.Table.from_pylist([row(name, i)], schema=t.schema().as_arrow()))
                commits[name] += 1
                break
            except CommitFailedException:
                conflicts += 1
        else:
            raise SystemExit(f"{name}: 100 conflicts in a row")
    i += 1
print(json.dumps({"commits": commits, "conflicts": conflicts}))
