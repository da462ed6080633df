#!/usr/bin/env python3
"""Checks dashboard/admetrics_superset.SingleFlightRedisCache against a real redis-server (started
here on a unix socket in a temporary folder, stopped at the end), with several processes that
each hold their own cache instance, as gunicorn's workers do. Run by tests/dashboard.rs with
Superset's venv (.venv-superset/bin/python).

- many workers missing the same key together: exactly one computes it, every one gets its value;
- the lock is dropped when the value is stored, and a key that is present takes no lock;
- a holder whose computation failed (it never stores) does not block the others for good: its
  lock expires and the next one computes; and the same thread asking again is not blocked by
  its own stale lock;
- different keys do not wait for each other.

Exit 1 with the reason on any failure.
"""
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "dashboard"))

import redis  # noqa: E402

from admetrics_superset import SingleFlightRedisCache  # noqa: E402

WORKERS, THREADS = 6, 4
QUERY_SECONDS = 0.5


def cache(url, **attrs):
    c = SingleFlightRedisCache(host=redis.from_url(url), key_prefix="test_", default_timeout=60)
    for k, v in attrs.items():
        setattr(c, k, v)
    return c


def worker(url, key, barrier, out):
    """One gunicorn worker: THREADS threads ask for `key` at once, computing it on a miss."""
    import threading

    c = cache(url, wait=120.0)  # far beyond QUERY_SECONDS: the count below must not depend on timing
    r = redis.from_url(url)
    got = []

    def ask():
        barrier.wait()
        v = c.get(key)
        if v is None:
            r.incr(f"computed:{key}")
            time.sleep(QUERY_SECONDS)  # the query
            v = {"rows": [1, 2, 3], "by": os.getpid()}
            c.set(key, v, timeout=60)
        got.append(v)

    ts = [threading.Thread(target=ask) for _ in range(THREADS)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(got)


def main():
    tmp = tempfile.mkdtemp(prefix="admetrics-sf-")
    sock = os.path.join(tmp, "redis.sock")
    server = subprocess.Popen(["redis-server", "--port", "0", "--unixsocket", sock, "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    problems = []
    try:
        url = f"unix://{sock}"
        r = redis.from_url(url)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.1)
        else:
            sys.exit("verify_single_flight: redis-server did not start")

        # 1. Many workers × threads miss one key together.
        ctx = mp.get_context("fork")
        barrier, out = ctx.Barrier(WORKERS * THREADS), ctx.Queue()
        procs = [ctx.Process(target=worker, args=(url, "chart-a", barrier, out)) for _ in range(WORKERS)]
        for p in procs:
            p.start()
        answers = [v for _ in procs for v in out.get(timeout=300)]
        for p in procs:
            p.join()
        computed = int(r.get("computed:chart-a") or 0)
        if computed != 1:
            problems.append(f"{WORKERS}×{THREADS} concurrent misses computed the value {computed} times, not once")
        if len(answers) != WORKERS * THREADS or len({a["by"] for a in answers}) != 1:
            problems.append(f"not every asker got the one computed value: {answers}")
        if r.exists("test_chart-a:single-flight"):
            problems.append("the lock outlived the stored value")

        # 2. A present key takes no lock.
        c = cache(url)
        if c.get("chart-a") is None or r.exists("test_chart-a:single-flight"):
            problems.append("a hit took the lock")

        # 3. A failed holder: its lock expires, then the next asker computes.
        holder, other = cache(url, lock_ttl=2.0), cache(url, wait=60.0)
        if holder.get("chart-b") is not None:
            problems.append("chart-b: a value out of nowhere")
        t0 = time.monotonic()
        got = other.get("chart-b")  # waits: the holder never stores
        waited = time.monotonic() - t0
        if got is not None:
            problems.append("chart-b: the waiter got a value nobody stored")
        if waited < 1.5:
            problems.append(f"chart-b: the waiter took over after {waited:.2f} s, before the holder's lock expired (2 s)")
        if not r.exists("test_chart-b:single-flight"):
            problems.append("chart-b: the waiter that took over holds no lock")
        other.set("chart-b", "b")
        if r.exists("test_chart-b:single-flight") or holder.get("chart-b") != "b":
            problems.append("chart-b: the value stored by the one that took over is not served")

        # 4. The same thread asking again after its own failure is not blocked by its stale lock
        # (which would hold it up for lock_ttl = 30 s).
        c = cache(url)
        if c.get("chart-c") is not None:
            problems.append("chart-c: a value out of nowhere")
        t0 = time.monotonic()
        if c.get("chart-c") is not None:
            problems.append("chart-c: a value out of nowhere")
        if time.monotonic() - t0 > 10:
            problems.append("chart-c: a thread waited for its own stale lock")

        # 5. Another key is not held up by a held lock.
        a, b = cache(url), cache(url, wait=60.0)
        a.get("chart-d")  # held, never stored
        t0 = time.monotonic()
        if b.get("chart-e") is not None or time.monotonic() - t0 > 10:
            problems.append("chart-e waited for chart-d's lock")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if problems:
        print("verify_single_flight: " + "; ".join(problems), file=sys.stderr)
        sys.exit(1)
    print(f"verify_single_flight: {WORKERS} processes × {THREADS} threads missing one key computed it once; "
          "a failed holder's lock expired and was taken over; other keys were not held up")


if __name__ == "__main__":
    main()
