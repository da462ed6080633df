#!/usr/bin/env python3
"""Opens the admetrics dashboard in a real browser (Debian's Chromium, headless, driven by
Playwright) the way a person would: the login page, then the dashboard. Records every
chart-data request the page makes and its answer, checks each succeeded, keeps a screenshot,
and optionally waits for the 10 s auto-refresh to bring a newer figure.

    python dashboard/browser_check.py --url http://127.0.0.1:8088 --out result.json --screenshot shot.png
        [--expect-refresh-events N --out-refreshed refreshed.json]

--out gets the first load as JSON: {"load_seconds", "timeline", "cpu_seconds", "charts": {slice name:
{"status", "request", "data", "cached"}}}, written as soon as the page has loaded. "timeline" says where the
load's time went (seconds from the navigation: the page's HTML, its last script or style, the first
API request, the first and last chart-data request and answer, each chart's request and answer);
"cpu_seconds" is the CPU every program on the machine used meanwhile (from /proc), so a slow load
shows whether the browser, Superset or something else had the cores. With --expect-refresh-events the page then stays
open, untouched, until its own auto-refresh shows "Events committed" >= N; the next complete round
of chart requests sent after that is written to --out-refreshed in the same form (with a second
screenshot, NAME-refreshed.png). Non-loopback requests are blocked (the prebuilt front end asks for a
telemetry pixel; this machine has no network anyway). Exit 1 with the reason on any failure.
"""
import argparse
import json
import sys
import time
from urllib.parse import urlparse

from playwright.sync_api import sync_playwright

from cache_timeouts import data_cache_timeout
from proc_cpu import cpu_by_program, cpu_delta

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def fail(msg):
    print(f"browser_check: {msg}", file=sys.stderr)
    sys.exit(1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--user", default="admin")
    ap.add_argument("--password", default="admin")
    ap.add_argument("--dashboard", default="admetrics")
    ap.add_argument("--out", required=True)
    ap.add_argument("--screenshot", required=True)
    ap.add_argument("--expect-refresh-events", type=int, default=None)
    ap.add_argument("--out-refreshed", default=None)
    ap.add_argument("--cache-ttl", type=float, default=data_cache_timeout() + 2,
                    help="the oldest data an answer may carry, seconds: Superset's chart-data cache timeout "
                         "(dashboard/cache_timeouts.py, from the same environment Superset reads) + 2 s for "
                         "the query that filled it")
    ap.add_argument("--timeout", type=float, default=90)
    a = ap.parse_args()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1500})
        blocked = []

        def only_loopback(route):
            host = urlparse(route.request.url).hostname or ""
            if host in ("127.0.0.1", "localhost", "::1") or route.request.url.startswith(("data:", "blob:")):
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        page.route("**/*", only_loopback)
        console_errors = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)

        # Log in through the login form. Superset keeps its session in a cookie, and a request the
        # login page sent before the login (its event log POST) can answer after it with the
        # anonymous session's cookie, logging the browser out again (seen once here: every call
        # of the welcome page then got 401). So: wait for the page to settle, check the session,
        # and log in again if it was lost; a person would do the same.
        for attempt in range(3):
            page.goto(f"{a.url}/login/", timeout=a.timeout * 1000)
            page.locator("input[id='username'], input[name='username']").first.fill(a.user)
            page.locator("input[id='password'], input[name='password']").first.fill(a.password)
            page.locator("button[type='submit'], input[type='submit']").first.click()
            page.wait_for_url(lambda u: "/login" not in u, timeout=a.timeout * 1000)
            try:
                page.wait_for_load_state("networkidle", timeout=a.timeout * 1000)
            except Exception:  # noqa: BLE001 - a page that never goes quiet is checked below anyway
                pass
            if page.request.get(f"{a.url}/api/v1/me/").ok:
                break
            print(f"browser_check: the session was lost right after logging in (attempt {attempt + 1}); "
                  "logging in again", flush=True)
        else:
            fail("could not stay logged in")

        meta = page.request.get(f"{a.url}/api/v1/dashboard/{a.dashboard}/charts")
        if not meta.ok:
            fail(f"GET /api/v1/dashboard/{a.dashboard}/charts: HTTP {meta.status}")
        charts = {c["id"]: c["slice_name"] for c in meta.json()["result"]}
        # Every chart asks /api/v1/chart/data once per load; collect them with their answers.
        responses = []
        sent_at = {}
        loading = False
        api_calls = []  # every API request of the first load, for the HTTP-level load benchmark
        recorded_charts = set()

        marks = {}  # the timeline: first/last moments of each kind of request and answer

        def mark(name, last=False):
            if loading and (last or name not in marks):
                marks[name] = time.monotonic()

        def on_request(q):
            if "/api/v1/chart/data" in q.url:
                sent_at[id(q)] = time.monotonic()
                mark("first_chart_request")
                mark("last_chart_request", last=True)
            elif "/api/v1/" in q.url:
                mark("first_api_request")
            # A chart's second data request is the 10 s auto-refresh firing during a slow load: the
            # dashboard's steady state, not its load.
            if (loading and "/api/v1/" in q.url and "log/" not in q.url and "force=true" not in q.url
                    and len(responses) < len(charts)):
                if "/api/v1/chart/data" in q.url:
                    sid = json.loads(q.post_data or "{}").get("form_data", {}).get("slice_id")
                    if sid in recorded_charts:
                        return
                    recorded_charts.add(sid)
                api_calls.append({"method": q.method, "path": q.url[len(a.url):], "body": q.post_data})

        page.on("request", on_request)

        def on_response(r):
            if r.url.rstrip("/").endswith(f"/superset/dashboard/{a.dashboard}"):
                mark("page_html")
            elif "/static/" in r.url and "first_chart_request" not in marks:
                mark("last_static_before_charts", last=True)
            if "/api/v1/chart/data" in r.url and r.request.method == "POST":
                mark("first_chart_answer")
                try:
                    body = r.json()
                except Exception as e:  # noqa: BLE001 - recorded as a failure below
                    body = {"error": f"not JSON: {e}"}
                request = json.loads(r.request.post_data or "{}")
                responses.append({"status": r.status, "url": r.url, "request": request,
                                  "forced": "force=true" in r.url or bool(request.get("force")), "body": body,
                                  "sent": sent_at.get(id(r.request), 0.0), "at": time.monotonic()})

        page.on("response", on_response)

        cpu0 = cpu_by_program()
        loading = True
        t0 = time.monotonic()
        page.goto(f"{a.url}/superset/dashboard/{a.dashboard}/", timeout=a.timeout * 1000)
        deadline = t0 + a.timeout
        while time.monotonic() < deadline:
            seen = {r["request"].get("form_data", {}).get("slice_id") for r in responses}
            if set(charts) <= seen:
                break
            page.wait_for_timeout(100)
        else:
            seen = {r["request"].get("form_data", {}).get("slice_id") for r in responses}
            fail(f"charts without a data request after {a.timeout} s: "
                 f"{[charts[c] for c in set(charts) - seen]}")
        load_seconds = max(r["at"] for r in responses) - t0
        cpu = cpu_delta(cpu0, cpu_by_program())
        loading = False
        timeline = {k: round(v - t0, 3) for k, v in sorted(marks.items(), key=lambda kv: kv[1])}
        timeline["last_chart_answer"] = round(load_seconds, 3)
        timeline["charts"] = {charts.get(r["request"].get("form_data", {}).get("slice_id"), "?"):
                              [round(r["sent"] - t0, 3), round(r["at"] - t0, 3)] for r in responses}
        # ECharts animates for about a second: let it settle before the picture.
        page.wait_for_timeout(2500)
        page.screenshot(path=a.screenshot, full_page=True)

        def collect(rs):
            got = {}
            for r in rs:
                sid = r["request"].get("form_data", {}).get("slice_id")
                name = charts.get(sid, f"slice {sid}")
                if r["status"] != 200:
                    fail(f"chart {name!r}: HTTP {r['status']}: {json.dumps(r['body'])[:500]}")
                results = r["body"].get("result", [])
                errors = [q.get("error") for q in results if q.get("error")]
                if errors:
                    fail(f"chart {name!r}: query error {errors}")
                got[name] = {"status": r["status"], "request": r["request"],
                             "data": [q.get("data") for q in results],
                             "cached": [bool(q.get("is_cached")) for q in results]}
            return got

        out = {"load_seconds": load_seconds, "timeline": timeline, "cpu_seconds": cpu, "charts": collect(responses), "blocked_requests": blocked,
               "console_errors": console_errors, "api_calls": api_calls}
        with open(a.out, "w") as f:
            json.dump(out, f, default=str)
        from_cache = sum(all(c["cached"]) for c in out["charts"].values())
        print(f"browser_check: {len(out['charts'])} charts loaded in {load_seconds:.2f} s "
              f"({from_cache} answered from Superset's cache), "
              f"{len(blocked)} outside requests blocked", flush=True)
        waits = [at - sent for sent, at in timeline["charts"].values()]
        print("browser_check: timeline (s from navigation): "
              + ", ".join(f"{k} {v:.2f}" for k, v in timeline.items() if k != "charts")
              + f"; each chart's answer took {min(waits):.2f}-{max(waits):.2f} s", flush=True)
        print("browser_check: CPU-s used meanwhile: "
              + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()), flush=True)

        if a.expect_refresh_events is not None:
            # Nothing is clicked or reloaded: the dashboard's own refresh timer must bring it.
            def events_shown(r):
                if charts.get(r["request"].get("form_data", {}).get("slice_id")) != "Events committed":
                    return None
                data = r["body"].get("result", [{}])[0].get("data") or []
                return next(iter(data[0].values())) if data else None

            deadline = time.monotonic() + a.timeout + 10
            seen_at, last = None, None
            while seen_at is None and time.monotonic() < deadline:
                for r in list(responses):
                    v = events_shown(r)
                    if v is not None:
                        last = v
                        if v >= a.expect_refresh_events:
                            seen_at = r["at"]
                            break
                else:
                    page.wait_for_timeout(250)
            if seen_at is None:
                fail(f"no auto-refresh brought 'Events committed' to {a.expect_refresh_events} (last seen {last})")
            # A full round sent one --cache-ttl after that moment sees the final tables for every
            # chart: no answer served then can carry data computed before it.
            fresh_after = seen_at + a.cache_ttl + 0.5
            deadline = max(deadline, fresh_after + 10 + a.timeout)
            while time.monotonic() < deadline:
                later = [r for r in responses if r["sent"] > fresh_after]
                if {r["request"].get("form_data", {}).get("slice_id") for r in later} >= set(charts):
                    break
                page.wait_for_timeout(250)
            else:
                fail("no complete refresh round after the new events were shown")
            page.wait_for_timeout(2500)
            page.screenshot(path=a.screenshot.replace(".png", "-refreshed.png"), full_page=True)
            # DASHBOARD_AUTO_REFRESH_MODE = "fetch": the refreshes read Superset's chart-data cache
            # (force=true would run every chart's query for every open page every 10 s).
            forced = [r for r in responses if r["forced"]]
            if forced:
                fail(f"{len(forced)} of {len(responses)} chart-data requests forced a query past the cache, "
                     f"e.g. {forced[0]['url']}")
            refreshed = {"charts": collect(later)}
            with open(a.out_refreshed, "w") as f:
                json.dump(refreshed, f, default=str)
            print(f"browser_check: auto-refresh showed {a.expect_refresh_events}+ events; "
                  f"{len(refreshed['charts'])} charts recorded again", flush=True)
        browser.close()



if __name__ == "__main__":
    main()
