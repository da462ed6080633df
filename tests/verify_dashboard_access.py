#!/usr/bin/env python3
"""No answer reaches a user who could not have fetched it, with the caches warm. Run by
tests/dashboard.rs against the running Superset (scripts/dashboard.sh), with Superset's venv and
its environment (SUPERSET_CONFIG_PATH, ADMETRICS_SUPERSET_HOME, PYTHONPATH=dashboard).

    verify_dashboard_access.py --url http://127.0.0.1:PORT --calls browser.json

Two users are added to Superset's metadata database (Superset's own security manager):
- `viewer`: Superset's Gamma role plus a role granting access to the dashboard's two datasets
  (the documented way to share a dashboard);
- `outsider`: Gamma alone, no access to the datasets.
For every API call the real page made (browser_check.py's recording), the viewer asks first, so
the answer is in the caches, then the outsider asks the very same thing. The viewer must get the
data; the outsider must get 403/404 and no data, for chart data (while its entry is provably in
Superset's Redis data cache: present there before and after the outsider's request) and for the
dashboard's own endpoints. The outsider's dashboard page must not open either.

Also checked here, on the same server: the page carries DASHBOARD_AUTO_REFRESH_MODE = "fetch"
(the auto-refresh reads the cache), and Superset's action log wrote no row
(admetrics_superset.NoActionLog). Exit 1 listing every failure.
"""
import argparse
import html
import json
import os
import re
import sqlite3
import sys
import time

import redis
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dashboard"))
from load_bench import login  # noqa: E402  (the login form, as a browser does it)

VIEWER, OUTSIDER, PASSWORD = "viewer", "outsider", "admetrics-access-test"
READER_ROLE = "admetrics_reader"


def add_users():
    """The two users and the reader role, through Superset's security manager (idempotent)."""
    from superset.app import create_app

    app = create_app()
    with app.app_context():
        from superset import db, security_manager as sm
        from superset.connectors.sqla.models import SqlaTable

        datasets = db.session.query(SqlaTable).all()
        bundled = {p.stem for p in (Path(__file__).resolve().parent.parent / "dashboard/bundle/datasets/admetrics").glob("*.yaml")}
        if {d.table_name for d in datasets} != bundled:
            sys.exit(f"verify_dashboard_access: unexpected datasets {[d.table_name for d in datasets]}")
        reader = sm.find_role(READER_ROLE) or sm.add_role(READER_ROLE)
        for d in datasets:
            pvm = sm.find_permission_view_menu("datasource_access", d.perm)
            if pvm is None:
                sys.exit(f"verify_dashboard_access: no datasource_access permission for {d.perm}")
            sm.add_permission_role(reader, pvm)
        gamma = sm.find_role("Gamma")
        for name, roles in ((VIEWER, [gamma, reader]), (OUTSIDER, [gamma])):
            if sm.find_user(username=name) is None:
                if not sm.add_user(name, name, "test", f"{name}@localhost", roles, PASSWORD):
                    sys.exit(f"verify_dashboard_access: could not add user {name}")
        db.session.commit()
        return [d.table_name for d in datasets]


def send(s, base, call):
    if call["method"] == "POST":
        return s.post(f"{base}{call['path']}", data=call["body"], timeout=120,
                      headers={"Content-Type": "application/json"})
    return s.get(f"{base}{call['path']}", timeout=120)


def rows_in(resp):
    """The data rows an answer carries (0 when it is not a data answer)."""
    try:
        body = resp.json()
    except ValueError:
        return 0
    result = body.get("result") if isinstance(body, dict) else None
    if isinstance(result, list) and any(isinstance(r, dict) and "data" in r for r in result):
        return sum(len(r.get("data") or []) for r in result if isinstance(r, dict))  # chart data
    if isinstance(result, list):
        return len(result)  # e.g. the dashboard's charts or datasets
    return 1 if result else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--calls", required=True, help="browser_check.py output (its api_calls)")
    ap.add_argument("--dashboard", default="admetrics")
    a = ap.parse_args()
    home = os.environ["ADMETRICS_SUPERSET_HOME"]
    r = redis.from_url(os.environ.get("ADMETRICS_REDIS_URL") or f"unix://{home}/redis.sock")
    datasets = add_users()
    calls = [c for c in json.load(open(a.calls))["api_calls"] if "force=true" not in c["path"]]
    viewer, outsider = login(a.url, VIEWER, PASSWORD), login(a.url, OUTSIDER, PASSWORD)
    problems = []

    # The page: the viewer's opens, with the auto-refresh in fetch mode; the outsider's does not.
    page = viewer.get(f"{a.url}/superset/dashboard/{a.dashboard}/", timeout=60)
    if page.status_code != 200:
        problems.append(f"viewer: dashboard page HTTP {page.status_code}")
    elif not re.search(r'"DASHBOARD_AUTO_REFRESH_MODE":\s*"fetch"', html.unescape(page.text)):
        problems.append("the dashboard page does not set DASHBOARD_AUTO_REFRESH_MODE to fetch")
    page = outsider.get(f"{a.url}/superset/dashboard/{a.dashboard}/", timeout=60, allow_redirects=False)
    if page.status_code == 200:
        problems.append("outsider: the dashboard page opened (HTTP 200)")

    chart_calls = [c for c in calls if c["path"].startswith("/api/v1/chart/data")]
    # The dashboard's definition, its charts and datasets, the datasets' drill info (not the
    # viewer's own favourites or filter state).
    dash_calls = [c for c in calls if c["method"] == "GET" and re.match(
        r"/api/v1/(dashboard/(?!_info|favorite_status)[^/?]+(/charts|/datasets)?|dataset/\d+/drill_info/?)(\?|$)",
        c["path"])]
    if not chart_calls or not dash_calls:
        sys.exit(f"verify_dashboard_access: the recording has {len(chart_calls)} chart-data and "
                 f"{len(dash_calls)} dashboard calls")
    denied_warm = 0
    for c in chart_calls:
        for attempt in range(3):
            v = send(viewer, a.url, c)
            if v.status_code != 200 or rows_in(v) == 0:
                problems.append(f"viewer: {c['path'][:50]} HTTP {v.status_code}, {rows_in(v)} rows")
                break
            keys = [f"admetrics_data_{q['cache_key']}" for q in v.json()["result"]]
            before = all(r.exists(k) for k in keys)
            o = send(outsider, a.url, c)
            after = all(r.exists(k) for k in keys)
            if o.status_code not in (401, 403, 404) or rows_in(o):
                problems.append(f"outsider: {c['path'][:50]} HTTP {o.status_code}, {rows_in(o)} rows: "
                                f"{o.text[:200]}")
                break
            # Entries are only ever added or expire: in Redis before and after means there throughout.
            if before and after:
                denied_warm += 1
                break
            time.sleep(1)  # an entry expired just then (10 s lifetime): warm it again
        else:
            problems.append(f"{c['path'][:50]}: could not hold the cache warm around the outsider's request")
    for c in dash_calls:
        v, o = send(viewer, a.url, c), send(outsider, a.url, c)
        if v.status_code != 200 or rows_in(v) == 0:
            problems.append(f"viewer: {c['method']} {c['path'][:60]} HTTP {v.status_code}")
        if o.status_code not in (401, 403, 404) or rows_in(o):
            problems.append(f"outsider: {c['method']} {c['path'][:60]} HTTP {o.status_code}: {o.text[:200]}")

    with sqlite3.connect(f"file:{home}/superset.db?mode=ro", uri=True) as meta:
        logged = meta.execute("SELECT count(*) FROM logs").fetchone()[0]
    if logged:
        problems.append(f"Superset's action log wrote {logged} rows (NoActionLog is off?)")

    if problems:
        print(f"verify_dashboard_access: {len(problems)} failures:", file=sys.stderr)
        for p in problems:
            print("  ", p, file=sys.stderr)
        sys.exit(1)
    print(f"verify_dashboard_access: datasets {datasets}; the viewer got every chart's data; the outsider (Gamma, "
          f"no dataset access) was refused all {len(chart_calls)} chart-data requests ({denied_warm} with the "
          f"entry in the Redis cache throughout) and {len(dash_calls)} dashboard requests, and not shown the page; "
          "auto-refresh mode fetch; no action-log rows")


if __name__ == "__main__":
    main()
