#!/usr/bin/env python3
"""Checks tests/verify_reach.py without the host: writes a small SQLite-catalog warehouse with
PyIceberg (campaign_events and the plugin's rows as the host would write them), runs the
verifier on it, then on copies each broken in one way, and expects it to pass on the first and to
name the defect on each of the others.

    .venv/bin/python tests/verify_reach_selftest.py [--keep DIR]

The warehouse: two partitions of one stream, three campaigns, day windows in
America/New_York for one campaign (2025-11-02, the 25-hour day, is among them) and UTC for the
others, a campaign with ~4 300 users per share on its first day (sketched: its rows are set 1 % off the exact
count, inside the 2.44 % bound) and small ones (exact); late and duplicate impressions, clicks,
older non-final revisions, a shadow row, a restatement row and a row with dimensions that must
all be ignored.
"""
import argparse
import shutil
import subprocess
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog

HERE = Path(__file__).resolve().parent
UTC = timezone.utc
NY = ZoneInfo("America/New_York")
TS = pa.timestamp("us", tz="UTC")

EVENTS = pa.schema([
    ("event_type", pa.string()), ("event_time", TS), ("campaign_id", pa.string()),
    ("user_id", pa.string()), ("kafka_partition", pa.int32()), ("is_late", pa.bool_()),
    ("is_duplicate", pa.bool_()), ("stream", pa.string())])
METRICS = pa.schema([
    ("window_start", TS), ("window_end", TS), ("campaign_id", pa.string()), ("ad_id", pa.string()),
    ("metric", pa.string()), ("value", pa.float64()), ("numerator", pa.float64()),
    ("denominator", pa.float64()), ("plugin", pa.string()), ("plugin_version", pa.string()),
    ("plugin_sha256", pa.string()), ("revision", pa.int64()), ("is_final", pa.bool_()),
    ("computed_at", TS), ("withheld", pa.bool_()), ("kafka_partition", pa.int32()),
    ("stream", pa.string()), ("restatement", pa.string()), ("shadow", pa.bool_()),
    ("dimensions", pa.string())])


def day(t, zone):
    local = t.astimezone(zone)
    start = datetime(local.year, local.month, local.day, tzinfo=zone)
    n = start.date() + timedelta(days=1)
    return start.astimezone(UTC), datetime(n.year, n.month, n.day, tzinfo=zone).astimezone(UTC)


def build():
    """(events, {share: (impressions, users)}, zones) of the synthetic input."""
    events = []
    zones = {"camp-ny": NY}
    base = datetime(2025, 11, 1, 12, tzinfo=UTC)

    def ev(kind, t, c, u, late=False, dup=False):
        p = hash_partition(u)
        events.append(dict(event_type=kind, event_time=t, campaign_id=c, user_id=u, kafka_partition=p,
                           is_late=late, is_duplicate=dup, stream="campaign-events"))

    for d in range(3):  # 2025-11-01 .. 11-03 (NY: 11-02 has 25 hours)
        for i in range(300):  # small, exact, each user twice
            u = f"u{d}-{i % 120}"
            t = base + timedelta(days=d, minutes=7 * i)
            ev("impression", t, "camp-ny", u)
            ev("impression", t + timedelta(minutes=1), "camp-ny", u)
            ev("click", t, "camp-ny", u)
        ev("impression", base + timedelta(days=d, hours=3), "camp-ny", "late-user", late=True)
        ev("impression", base + timedelta(days=d, hours=4), "camp-ny", f"u{d}-1", dup=True)
    for i in range(10_000):  # big: ~4 300 users per partition on the first day, each seen twice
        ev("impression", base + timedelta(seconds=5 * i), "camp-big", f"b{i}")
        ev("impression", base + timedelta(seconds=5 * i + 1), "camp-big", f"b{i}")
    for i in range(40):
        ev("impression", base + timedelta(hours=1, seconds=i), "camp-small", f"s{i % 25}")
    ev("impression", base, "flush", "f")
    return events, zones


def hash_partition(user):
    return sum(user.encode()) % 2


def expected_shares(events, zones):
    shares = {}
    for e in events:
        if e["event_type"] != "impression" or e["is_late"] or e["is_duplicate"] or e["campaign_id"] == "flush":
            continue
        ws, we = day(e["event_time"], zones.get(e["campaign_id"], UTC))
        k = (ws, we, e["campaign_id"], e["stream"], e["kafka_partition"])
        imp, users = shares.get(k, (0, set()))
        users.add(e["user_id"])
        shares[k] = (imp + 1, users)
    return {k: (imp, len(users)) for k, (imp, users) in shares.items()}


def rows_for(shares, threshold=1536, error=0.01):
    """The plugin's rows: reach sketched 1 % high above the threshold; an older wrong revision
    under each, and rows the verifier must ignore."""
    rows = []
    now = datetime.now(UTC)

    def row(k, metric, value, num, den, rev, final=True, **kw):
        ws, we, c, s, p = k
        r = dict(window_start=ws, window_end=we, campaign_id=c, ad_id=None, metric=metric, value=value,
                 numerator=num, denominator=den, plugin="reach", plugin_version="0.1.0",
                 plugin_sha256="0" * 64, revision=(1 << 32) | rev, is_final=final, computed_at=now,
                 withheld=False, kafka_partition=p, stream=s, restatement=None, shadow=False, dimensions=None)
        r.update(kw)
        rows.append(r)

    for k, (imp, users) in shares.items():
        reach = users if users <= threshold else round(users * (1 + error))
        row(k, "reach", reach - 1, reach - 1, imp - 1, 1, final=False)  # an older revision
        row(k, "frequency", 9.0, imp - 1, reach - 1, 1, final=False)
        row(k, "reach", reach, reach, imp, 2)
        row(k, "frequency", imp / reach, imp, reach, 2)
        row(k, "reach", 1.0, 1.0, 1.0, 3, shadow=True)
        row(k, "reach", 2.0, 2.0, 2.0, 4, restatement="r-1")
        row(k, "reach", 3.0, 3.0, 3.0, 5, dimensions="device=ios")
    return rows


def write(dirpath, events, rows):
    dirpath.mkdir(parents=True, exist_ok=True)
    (dirpath / "warehouse").mkdir(exist_ok=True)
    cat = SqlCatalog("admetrics", uri=f"sqlite:///{dirpath / 'catalog.db'}", warehouse=f"file://{dirpath / 'warehouse'}")
    cat.create_namespace("ads")
    cat.create_table("ads.campaign_events", schema=EVENTS).append(pa.Table.from_pylist(events, EVENTS))
    cat.create_table("ads.campaign_metrics", schema=METRICS).append(pa.Table.from_pylist(rows, METRICS))
    return ["--catalog", str(dirpath / "catalog.db"), "--warehouse", str(dirpath / "warehouse")]


def run(args):
    p = subprocess.run([sys.executable, str(HERE / "verify_reach.py"), *args,
                        "--tz", "camp-ny=America/New_York", "--exclude-campaign", "flush",
                        "--expect-sketched", "--expect-exact", "--require-final"],
                       capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep")
    a = ap.parse_args()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="verify_reach_"))
    events, zones = build()
    shares = expected_shares(events, zones)
    assert any(u > 1536 for _, u in shares.values()) and any(u <= 1536 for _, u in shares.values())
    assert any(k[1] - k[0] == timedelta(hours=25) for k in shares), "the 25-hour day is in the input"
    failures = []

    code, out = run(write(root / "good", events, rows_for(shares)))
    print(out)
    if code != 0:
        failures.append("the good warehouse failed")

    def broken(name, expect, mutate):
        rows = rows_for(shares)
        mutate(rows)
        code, out = run(write(root / name, events, rows))
        if code != 1 or expect not in out:
            failures.append(f"{name}: exit {code}, expected 1 naming {expect!r}:\n{out}")
        else:
            print(f"{name}: refused as expected ({expect!r})")

    def latest(rows, metric, pred):
        return next(r for r in rows if r["metric"] == metric and r["revision"] & 0xFFFF == 2 and pred(r))

    def off_by_one(rows):
        r = latest(rows, "reach", lambda r: r["campaign_id"] == "camp-small")
        r["value"] += 1
        r["numerator"] += 1
    broken("exact_off_by_one", "exactly", off_by_one)

    def too_far(rows):
        r = latest(rows, "reach", lambda r: r["campaign_id"] == "camp-big")
        r["value"] = r["numerator"] = round(r["value"] * 1.03)
    broken("sketch_past_bound", "past 2.4375%", too_far)

    def missing(rows):
        k = next(k for k in shares if k[2] == "camp-small")
        rows[:] = [r for r in rows if (r["campaign_id"], r["kafka_partition"]) != (k[2], k[4])]
    broken("missing_share", "rows for []", missing)

    def freq(rows):
        latest(rows, "frequency", lambda r: r["campaign_id"] == "camp-ny")["value"] *= 1.5
    broken("frequency_value", "frequency", freq)

    def utc_days(rows):  # the NY campaign's rows on UTC days
        for r in rows:
            if r["campaign_id"] == "camp-ny":
                r["window_start"], r["window_end"] = day(r["window_start"] + timedelta(hours=12), UTC)
    broken("wrong_day_windows", "windows the events do not give", utc_days)

    def not_final(rows):
        latest(rows, "reach", lambda r: r["campaign_id"] == "camp-big")["is_final"] = False
    broken("not_final", "not final", not_final)

    if not a.keep:
        shutil.rmtree(root)
    if failures:
        print("SELF-TEST FAILED:")
        for f in failures:
            print(" -", f)
        sys.exit(1)
    print("OK: verify_reach.py passes the good warehouse and refuses each broken one")


if __name__ == "__main__":
    main()
