#!/usr/bin/env python3
"""Superset's cache warm-up fills exactly the entries the dashboard reads. Run by
tests/dashboard.rs against the running Superset (scripts/dashboard.sh, which also runs the warmer
every 10 s), with Superset's venv.

    verify_warm_cache.py --url http://127.0.0.1:PORT --calls browser.json

1. One pass of dashboard/warm_cache.py --once, the program scripts/dashboard.sh runs: every
   chart's warm-up must succeed, so every chart carries a stored query context (imported from
   dashboard/bundle/charts/*.yaml).
2. Then every chart-data request the real page made (browser_check.py's recording, sent as the
   page sends it, without force) must be answered from Superset's cache with data computed by a
   warm-up that started no earlier than that pass (`cached_dttm`). An entry the page itself filled
   during its load is older, and a chart whose stored query differs from what the page asks for
   reads a different cache key, so either way it fails here: that is the sign to re-record the
   query contexts (dashboard/query_context.py).
Exit 1 listing every failure.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

HERE = os.path.dirname(os.path.abspath(__file__))
DASHBOARD = os.path.join(HERE, "..", "dashboard")
sys.path.insert(0, DASHBOARD)
from load_bench import login  # noqa: E402  (the login form, as a browser does it)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--calls", required=True, help="browser_check.py --out of a real load")
    ap.add_argument("--user", default="admin")
    ap.add_argument("--password", default=os.environ.get("ADMETRICS_SUPERSET_PASSWORD", "admin"))
    a = ap.parse_args()
    calls = [c for c in json.load(open(a.calls))["api_calls"] if "/api/v1/chart/data" in c["path"]]
    if not calls:
        sys.exit("verify_warm_cache: the recording has no chart-data request")
    failures = []

    # Whatever the page's own load cached was computed before this second.
    time.sleep(1.0 - time.time() % 1.0 + 0.05)
    pass_start = datetime.now(timezone.utc).replace(microsecond=0)
    warm = subprocess.run([sys.executable, os.path.join(DASHBOARD, "warm_cache.py"), "--url", a.url, "--once"],
                          capture_output=True, text=True, timeout=600)
    print(warm.stderr.strip())
    if warm.returncode != 0:
        failures.append(f"warm_cache.py --once exited {warm.returncode}: {warm.stderr.strip()[-1000:]}")

    s = login(a.url, a.user, a.password)
    for c in calls:
        body = json.loads(c["body"])
        name = body.get("form_data", {}).get("slice_id")
        if body.get("force"):
            failures.append(f"chart {name}: the recorded request forces a query; the page should read the cache")
            continue
        r = s.post(f"{a.url}{c['path']}", data=c["body"], timeout=120, headers={"Content-Type": "application/json"})
        if r.status_code != 200:
            failures.append(f"chart {name}: HTTP {r.status_code} {r.text[:200]}")
            continue
        for q in r.json()["result"]:
            dttm = q.get("cached_dttm")
            if not q.get("is_cached") or dttm is None:
                failures.append(f"chart {name}: answered by a query, not from the warm cache "
                                f"(its stored query context is not what the page sends?)")
            elif datetime.fromisoformat(dttm).replace(tzinfo=timezone.utc) < pass_start:
                failures.append(f"chart {name}: cached at {dttm}, before the warm-up pass ({pass_start.isoformat()}): "
                                "the warm-up filled another cache key than the page reads")
    if failures:
        print("verify_warm_cache: FAILED\n  " + "\n  ".join(failures))
        sys.exit(1)
    print(f"verify_warm_cache: {len(calls)} chart-data requests of the page answered from entries the "
          f"warm-up computed (since {pass_start.isoformat()})")


if __name__ == "__main__":
    main()
