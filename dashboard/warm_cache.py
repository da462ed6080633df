#!/usr/bin/env python3
"""Keeps the dashboard's chart data warm in Superset's cache: every --every seconds it asks
Superset to re-run each of the dashboard's charts (Superset's own warm-up endpoint,
`PUT /api/v1/chart/warm_up_cache`, which runs the chart's stored query context with force and
stores the answer in the chart-data cache). scripts/dashboard.sh starts it beside gunicorn.

    python dashboard/warm_cache.py --url http://127.0.0.1:8088 [--dashboard admetrics --every 10 --once]

Credentials: ADMETRICS_SUPERSET_USER (default admin) and ADMETRICS_SUPERSET_PASSWORD (default
admin), a user allowed to warm charts up.

Why: the chart data is cached for a short time because the tables change every second. Without
this, whoever comes after an entry expired waits for the query: every first visit, and one
viewer per chart and period (measured: a first browser load spent most of its time waiting for
the 11 cold queries, README). With it, the queries run here, one chart at a time, and viewers
(first loads and the 10 s auto-refresh in fetch mode alike) read answers at most one period old.
It is what Superset's Celery beat task `cache-warmup` does (the same endpoint, per chart, with a
machine user), without a Celery worker and beat: two more Superset app processes on the same two
cores for one HTTP call per chart. What a viewer may see is still decided by Superset on every
request: this only decides when the queries run.

The warm entries are found only if each chart's stored query context is the query the dashboard
sends (dashboard/query_context.py writes them from a real browser's load; tests/verify_warm_cache.py
checks they still match). A chart whose warm-up fails is reported and retried next period;
nothing here stops the dashboard from working without it.
"""
import argparse
import os
import sys
import time

import requests


def log(msg):
    print(f"warm_cache: {msg}", file=sys.stderr, flush=True)


class Superset:
    def __init__(self, url, user, password, timeout=120):
        self.url, self.user, self.password, self.timeout = url.rstrip("/"), user, password, timeout
        self.s = None

    def _login(self):
        s = requests.Session()
        r = s.post(f"{self.url}/api/v1/security/login", timeout=self.timeout,
                   json={"username": self.user, "password": self.password, "provider": "db"})
        if r.status_code != 200:
            raise RuntimeError(f"login as {self.user!r} failed: HTTP {r.status_code} {r.text[:200]}")
        s.headers["Authorization"] = f"Bearer {r.json()['access_token']}"
        r = s.get(f"{self.url}/api/v1/security/csrf_token/", timeout=self.timeout)
        r.raise_for_status()
        s.headers["X-CSRFToken"] = r.json()["result"]
        s.headers["Referer"] = f"{self.url}/"
        self.s = s

    def call(self, method, path, **kw):
        """JSON answer of one API call; logs in first, and again once if the token expired."""
        for attempt in (0, 1):
            if self.s is None:
                self._login()
            r = self.s.request(method, f"{self.url}{path}", timeout=self.timeout, **kw)
            if r.status_code == 401 and attempt == 0:
                self.s = None
                continue
            if r.status_code != 200:
                raise RuntimeError(f"{method} {path}: HTTP {r.status_code} {r.text[:200]}")
            return r.json()


def warm_once(api, dashboard):
    """Warms every chart of the dashboard once; returns (charts, [error per failed chart])."""
    dash_id = api.call("GET", f"/api/v1/dashboard/{dashboard}")["result"]["id"]
    charts = api.call("GET", f"/api/v1/dashboard/{dashboard}/charts")["result"]
    errors = []
    for c in charts:
        try:
            res = api.call("PUT", "/api/v1/chart/warm_up_cache",
                           json={"chart_id": c["id"], "dashboard_id": dash_id})["result"]
            errors += [f"chart {c['id']} ({c.get('slice_name')}): {r['viz_error']}"
                       for r in res if r.get("viz_error")]
        except (requests.RequestException, RuntimeError) as e:
            errors.append(f"chart {c['id']} ({c.get('slice_name')}): {e}")
    return len(charts), errors


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True, help="Superset's base URL")
    ap.add_argument("--dashboard", default="admetrics", help="the dashboard's slug or id")
    ap.add_argument("--every", type=float, default=10.0, help="seconds from one pass's start to the next")
    ap.add_argument("--once", action="store_true", help="one pass; exit status 1 if a chart failed")
    a = ap.parse_args()
    api = Superset(a.url, os.environ.get("ADMETRICS_SUPERSET_USER", "admin"),
                   os.environ.get("ADMETRICS_SUPERSET_PASSWORD", "admin"))
    healthy = None  # log the first pass and every change between failing and working, not each pass
    while True:
        t0 = time.monotonic()
        try:
            n, errors = warm_once(api, a.dashboard)
        except (requests.RequestException, RuntimeError, KeyError, ValueError) as e:
            n, errors = 0, [f"dashboard {a.dashboard}: {e}"]
        took = time.monotonic() - t0
        if errors:
            log(f"{len(errors)} failed ({took:.2f} s): " + "; ".join(errors))
        elif healthy is not True:
            log(f"{n} charts warm ({took:.2f} s); again every {a.every:g} s, failures only from now on")
        healthy = not errors
        if a.once:
            sys.exit(0 if healthy else 1)
        time.sleep(max(1.0, a.every - took))


if __name__ == "__main__":
    main()
