#!/usr/bin/env python3
"""N concurrent users loading the admetrics dashboard, driven at the HTTP level.

    python dashboard/load_bench.py --url http://127.0.0.1:8088 --calls browser.json [--users 10 --rounds 10]

A "load" is what the real page does (recorded by dashboard/browser_check.py as "api_calls"):
GET the dashboard page, then every API call the page made (dashboard, charts, datasets, …) and
every chart's data request, at most 6 at a time per user like a browser's connection limit.
Static assets are not fetched (a returning browser has them cached). Each user logs in once
through the login form (a session cookie, as in the browser). All users start every round
together; the figure is the time from a user's first request to the last answer of its load.

Why not ten browsers: ten headless Chromiums on 2 cores measure Chromium's rendering, not the
server. One real-browser load is timed by browser_check.py.

Prints p50 / p95 / max over users × rounds and the number of failed requests (any non-2xx), and
the CPU one load cost each program on this machine over the rounds (from /proc: Superset's workers,
and what else had the cores). With every user starting together, no round can end before
users × Superset's CPU per load ÷ cores: the bound is printed beside the figures.

With --watch SECONDS it then measures the other way ten people use a dashboard: they keep it
open. Each user's page refreshes itself every --refresh seconds (the dashboard's 10 s, in fetch
mode: the chart-data requests again, without force=true), each user at its own phase, as open
browsers would be; the figure is the time from a refresh's first request to its last answer.
"""
import argparse
import json
import os
import re
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from proc_cpu import cpu_by_program, cpu_delta


def login(base, user, password):
    s = requests.Session()
    page = s.get(f"{base}/login/", timeout=30)
    m = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text) or re.search(
        r'"csrf_token"\s*:\s*"([^"]+)"', page.text)
    data = {"username": user, "password": password}
    if m:
        data["csrf_token"] = m.group(1)
    r = s.post(f"{base}/login/", data=data, timeout=30, allow_redirects=True)
    check = s.get(f"{base}/api/v1/me/", timeout=30)
    if check.status_code != 200:
        sys.exit(f"load_bench: login failed (HTTP {r.status_code}, /api/v1/me/ {check.status_code})")
    csrf = s.get(f"{base}/api/v1/security/csrf_token/", timeout=30)
    if csrf.status_code == 200:
        s.headers["X-CSRFToken"] = csrf.json()["result"]
    s.headers["Referer"] = f"{base}/"
    return s


def one_load(base, s, calls, dashboard, pool):
    t0 = time.monotonic()
    failures = []
    r = s.get(f"{base}/superset/dashboard/{dashboard}/", timeout=60)
    if r.status_code != 200:
        failures.append(f"page {r.status_code}")
    failures += [f for f in pool.map(lambda c: request(base, s, c), calls) if f]
    return time.monotonic() - t0, failures


def request(base, s, c):
    """One recorded API call; None, or what failed."""
    if c["method"] == "POST":
        resp = s.post(f"{base}{c['path']}", data=c["body"], timeout=60,
                      headers={"Content-Type": "application/json"})
    else:
        resp = s.get(f"{base}{c['path']}", timeout=60)
    if not 200 <= resp.status_code < 300:  # filter_state answers 201 Created
        return f"{c['method']} {c['path'][:60]}: {resp.status_code} {resp.text[:200]}"
    if "/chart/data" in c["path"] and any(q.get("error") for q in resp.json().get("result", [])):
        return f"{c['path']}: query error"
    return None


def watch(base, sessions, pools, charts, seconds, period):
    """Every user refreshes its open dashboard every `period` s for `seconds` s; returns the
    refresh times and failures."""
    times, failures, lock = [], [], threading.Lock()
    end = time.monotonic() + seconds

    def user(i):
        # Spread over one period: browsers opened at different moments refresh at different ones.
        next_at = time.monotonic() + period * i / len(sessions)
        while next_at < end:
            time.sleep(max(0.0, next_at - time.monotonic()))
            t0 = time.monotonic()
            try:
                f = [x for x in pools[i].map(lambda c: request(base, sessions[i], c), charts) if x]
            except requests.RequestException as e:
                f = [f"user {i}: {type(e).__name__}: {e}"[:300]]
            with lock:
                times.append(time.monotonic() - t0)
                failures.extend(f)
            next_at += period

    threads = [threading.Thread(target=user, args=(i,)) for i in range(len(sessions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--calls", required=True, help="browser_check.py output (its api_calls)")
    ap.add_argument("--user", default="admin")
    ap.add_argument("--password", default="admin")
    ap.add_argument("--dashboard", default="admetrics")
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--watch", type=float, default=0,
                    help="then keep the dashboards open this many seconds, refreshing (see above)")
    ap.add_argument("--refresh", type=float, default=10, help="the dashboard's refresh period, s")
    a = ap.parse_args()
    # force=true chart requests are the dashboard's auto-refresh (recordings of a load slower
    # than the 10 s refresh period contain some), not part of loading it.
    calls = [c for c in json.load(open(a.calls))["api_calls"] if "force=true" not in c["path"]]
    ncharts = sum("/chart/data" in c["path"] for c in calls)
    print(f"load_bench: {a.users} users × {a.rounds} rounds; a load = the page + {len(calls)} API calls "
          f"({ncharts} chart-data requests)")
    sessions = [login(a.url, a.user, a.password) for _ in range(a.users)]
    pools = [ThreadPoolExecutor(6) for _ in range(a.users)]
    times, failures = [], []
    lock = threading.Lock()
    cpu0 = cpu_by_program()
    for rnd in range(a.rounds):
        barrier = threading.Barrier(a.users)

        def user(i):
            barrier.wait()
            t0 = time.monotonic()
            try:
                t, f = one_load(a.url, sessions[i], calls, a.dashboard, pools[i])
            except requests.RequestException as e:  # a timeout counts as a failed load, timed
                t, f = time.monotonic() - t0, [f"user {i}: {type(e).__name__}: {e}"[:300]]
            with lock:
                times.append(t)
                failures.extend(f)

        threads = [threading.Thread(target=user, args=(i,)) for i in range(a.users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        print(f"  round {rnd + 1}: slowest user {max(times[-a.users:]):.2f} s", flush=True)
    per_load = {k: round(v / len(times), 3)
                 for k, v in cpu_delta(cpu0, cpu_by_program(), top=6).items()}
    times.sort()
    p95 = times[max(0, int(round(0.95 * len(times))) - 1)]
    print(f"dashboard load, {a.users} concurrent users, {len(times)} loads: p50 {statistics.median(times):.2f} s, "
          f"p95 {p95:.2f} s, max {times[-1]:.2f} s; failed requests: {len(failures)} [issue 16 target: p95 < 1.5 s at 5 000 events/s]")
    for f in failures[:10]:
        print("   ", f)
    server = per_load.get("gunicorn (superset)", 0.0)
    cores = os.cpu_count() or 1
    print("CPU-s per load (from /proc, over the rounds): "
          + ", ".join(f"{k} {v:.3f}" for k, v in per_load.items()))
    print(f"  so {a.users} users starting together need >= {a.users} × {server:.3f} CPU-s of Superset: "
          f"no round can end in under {a.users * server / cores:.2f} s on {cores} cores")
    report = {"users": a.users, "loads": len(times), "p50_s": statistics.median(times), "p95_s": p95,
              "max_s": times[-1], "failed": len(failures), "cpu_s_per_load": per_load}
    if a.watch > 0:
        charts = [c for c in calls if "/chart/data" in c["path"]]
        w_times, w_failures = watch(a.url, sessions, pools, charts, a.watch, a.refresh)
        w_times.sort()
        w_p95 = w_times[max(0, int(round(0.95 * len(w_times))) - 1)]
        print(f"open dashboards, {a.users} users refreshing every {a.refresh:g} s for {a.watch:g} s, "
              f"{len(w_times)} refreshes of {len(charts)} chart-data requests: p50 "
              f"{statistics.median(w_times):.2f} s, p95 {w_p95:.2f} s, max {w_times[-1]:.2f} s; "
              f"failed requests: {len(w_failures)}")
        for f in w_failures[:10]:
            print("   ", f)
        failures += w_failures
        report.update({"refreshes": len(w_times), "refresh_p50_s": statistics.median(w_times),
                       "refresh_p95_s": w_p95, "refresh_max_s": w_times[-1], "refresh_failed": len(w_failures)})
    print(json.dumps(report))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
