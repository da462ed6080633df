#!/usr/bin/env python3
"""Checks admetrics' Iceberg tables against values computed here, independently, from the
messages the end-to-end test produced (tests/e2e_pipeline.rs writes them as JSON lines:
{"partition": p, "phase": 1|2, "payload": "<raw message>"} in produce order).

Reads the tables with PyIceberg (through the same SQLite catalog) and cross-checks with DuckDB's
iceberg extension: neither reader shares code with the Rust writer.

The expectation follows the daemon's per-partition semantics (the Kafka partition is the unit of
state): deduplication by (partition, event_id), lateness by the event's own partition's
watermark, attribution from the clicks of the user on that partition; each metric row is one
partition's share. Metric values are read by sql/current_metrics.sql (tests/current_metrics.py:
latest revision per partition, shares summed), so this test also checks that definition against
values computed from the input, as a whole and partition by partition.
"""
import argparse
import importlib.util
import json
import sys
import time
from collections import defaultdict
from datetime import datetime
from decimal import Decimal, InvalidOperation

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog

from current_metrics import CLASSIC, KEY, current_metrics, define

KINDS = ("impression", "click", "conversion")
REQUIRED = ("event_id", "event_type", "event_time", "campaign_id", "ad_id", "user_id")
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)


def parse_time_ms(v):
    if isinstance(v, int):
        return v
    dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    return int(dt.timestamp() * 1000 + 0.5) if dt.microsecond % 1000 == 0 else int(dt.timestamp() * 1000)


STR_FIELDS = ("event_id", "event_type", "campaign_id", "ad_id", "user_id", "currency", "device", "country", "placement")
MAX_BYTES, MAX_FUTURE_MS, MAX_PAST_MS = 64 * 1024, 3_600_000, 30 * 86_400_000


def classify(payload, now_ms):
    """(event, None) for a valid event, (None, reason) otherwise: the validation rules of the
    README, re-implemented here (checked in the order a streaming decoder meets them)."""
    if len(payload.encode()) > MAX_BYTES:
        return None, "oversized"
    try:
        d = json.loads(payload)
    except ValueError:
        return None, "malformed_json"
    if not isinstance(d, dict):
        return None, "invalid_field"
    for k, v in d.items():  # a field of the wrong JSON type fails where it is met
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        if (k in STR_FIELDS and not isinstance(v, str)) or (k == "event_time" and not (isinstance(v, str) or (number and isinstance(v, int)))) \
                or (k == "revenue" and not (isinstance(v, str) or number)):
            return None, "invalid_field"
    for f in REQUIRED:
        if f not in d:
            return None, "missing_field"
    if d["event_type"] not in KINDS:
        return None, "unknown_event_type"
    for f in ("event_id", "campaign_id", "ad_id", "user_id"):
        if not d[f] or len(d[f].encode()) > 256:
            return None, "invalid_field"
    try:
        d["time_ms"] = parse_time_ms(d["event_time"])
    except ValueError:
        return None, "invalid_field"
    if d["time_ms"] > now_ms + MAX_FUTURE_MS or d["time_ms"] < now_ms - MAX_PAST_MS:
        return None, "time_out_of_range"
    d["micros"] = 0
    if d["event_type"] == "conversion":
        if "revenue" not in d:
            return None, "missing_field"
        try:
            rev = Decimal(str(d["revenue"]))
        except InvalidOperation:
            return None, "invalid_field"
        if rev < 0:
            return None, "negative_revenue"
        d["micros"] = int(rev * 1_000_000)
        if "currency" not in d:
            return None, "missing_field"
        if len(d["currency"]) != 3 or not all("A" <= c <= "Z" for c in d["currency"]):
            return None, "invalid_field"
    return d, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--window-secs", type=int, default=60)
    ap.add_argument("--lookback-secs", type=int, required=True)
    ap.add_argument("--ooo-ms", type=int, required=True)
    ap.add_argument("--allowed-lateness-ms", type=int, default=0)
    ap.add_argument("--namespace", default="ads")
    a = ap.parse_args()
    size = a.window_secs * 1000
    lookback = a.lookback_secs * 1000

    # ---- the input, in produce order, with Kafka coordinates (offsets count up per partition)
    msgs = []
    now_ms = int(time.time() * 1000)
    next_offset = defaultdict(int)
    for line in open(a.input):
        m = json.loads(line)
        m["offset"] = next_offset[m["partition"]]
        next_offset[m["partition"]] += 1
        m["event"], m["reason"] = classify(m["payload"], now_ms)
        msgs.append(m)
    valid = [m for m in msgs if m["event"]]
    invalid = [m for m in msgs if not m["event"]]
    # Deduplication is per partition (producers key events by user id, so a retried delivery
    # lands on the same partition): a delivery of an event_id already seen ON ITS PARTITION is a
    # copy, counted nowhere (the first in offset order counts; the input only repeats identical
    # payloads). The same event_id on two partitions counts on both.
    deliveries = defaultdict(list)  # (partition, event_id) -> deliveries in offset order
    for m in valid:
        k = (m["partition"], m["event"]["event_id"])
        m["dup"] = bool(deliveries[k])
        deliveries[k].append(m)
    n_dup = sum(1 for m in valid if m["dup"])
    check(n_dup > 0, "input design: no duplicate deliveries")
    partitions_of = defaultdict(set)
    for p, eid in deliveries:
        partitions_of[eid].add(p)
    n_cross = sum(1 for ps in partitions_of.values() if len(ps) > 1)
    check(n_cross > 0, "input design: no event_id delivered on two partitions")

    # ---- lateness, per partition: an event is late when its window's end + allowed lateness is
    # at or below its own partition's watermark (max event time seen there - ooo). Phase 1 stays
    # within the out-of-orderness bound of its own partition (so it is never late); phase 2
    # arrives after phase 1 was committed, when each partition's watermark was at least its own
    # max phase-1 time - ooo. (A partition idle for idle_timeout may follow the others' watermark
    # higher; the input's stragglers are far behind every partition, so the verdict is the same.)
    running_max = {}
    for m in valid:
        if m["phase"] != 1 or m["dup"]:
            continue
        p, t = m["partition"], m["event"]["time_ms"]
        check(t >= running_max.get(p, t) - a.ooo_ms, f"input design: phase-1 event {m['event']['event_id']} is behind its partition by more than ooo")
        running_max[p] = max(running_max.get(p, t), t)
    wm1 = {p: t - a.ooo_ms for p, t in running_max.items()}  # partition -> watermark after phase 1
    for m in valid:
        t = m["event"]["time_ms"]
        window_end = (t // size) * size + size
        wm = wm1.get(m["partition"])
        m["late"] = m["phase"] == 2 and not m["dup"] and wm is not None and window_end + a.allowed_lateness_ms <= wm

    # ---- expected metrics, computed from scratch, per partition (each partition's windows are
    # computed from its own events) and summed over partitions
    exp = {}  # (window_start, campaign, ad, metric) -> [num, den]  (revenue in micros)
    exp_p = defaultdict(dict)  # partition -> the same, that partition's share

    def add(key, num, den):  # counts for the message being looked at, of partition p
        for d in (exp, exp_p[p]):
            cur = d.setdefault(key, [0, 0])
            cur[0] += num
            cur[1] += den

    clicks_by_user = defaultdict(list)  # (partition, user) -> [(time, campaign, ad)] in arrival order
    for m in valid:  # produce order; a user's messages all sit in one partition, in order
        if m["dup"]:
            continue
        e, p = m["event"], m["partition"]
        t, c, ad, kind = e["time_ms"], e["campaign_id"], e["ad_id"], e["event_type"]
        w = (t // size) * size
        user = (p, e["user_id"])  # attribution state is per partition too
        if kind == "click":
            clicks_by_user[user].append((t, c, ad))
        if m["late"]:
            continue
        if kind == "impression":
            add((w, c, None, "ctr"), 0, 1)
        elif kind == "click":
            add((w, c, None, "ctr"), 1, 0)
            add((w, c, None, "cvr"), 0, 1)
        else:
            add((w, c, None, "cvr"), 1, 0)
            add((w, c, None, "revenue"), e["micros"], 1)
            cands = [x for x in clicks_by_user[user] if t - lookback <= x[0] <= t]
            if cands:
                best = max(range(len(cands)), key=lambda i: (cands[i][0], i))
                _, bc, bad = cands[best]
                add((w, bc, bad, "attributed_revenue"), e["micros"], 1)
                add((w, c, None, "unattributed_revenue"), 0, 0)
            else:
                add((w, c, None, "unattributed_revenue"), e["micros"], 1)

    # The far-future "flush" events only move the watermark; their window stays open.
    exp = {k: v for k, v in exp.items() if k[1] != "flush"}
    exp_p = {p: {k: v for k, v in d.items() if k[1] != "flush"} for p, d in exp_p.items()}

    # ---- read the tables with PyIceberg
    cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.catalog}", warehouse=f"file://{a.warehouse}")
    events_t = cat.load_table((a.namespace, "campaign_events"))
    metrics_t = cat.load_table((a.namespace, "campaign_metrics"))
    dead_t = cat.load_table((a.namespace, "dead_letters"))
    events = events_t.scan().to_arrow()
    metrics = metrics_t.scan().to_arrow()
    dead = dead_t.scan().to_arrow()

    # campaign_events: every valid message exactly once, with the right late flag
    coords = list(zip(events.column("kafka_partition").to_pylist(), events.column("kafka_offset").to_pylist()))
    check(len(coords) == len(set(coords)), f"campaign_events has {len(coords) - len(set(coords))} duplicate (partition, offset)")
    want = {(m["partition"], m["offset"]): m for m in valid}
    check(set(coords) == set(want), f"campaign_events coordinates differ: missing {len(set(want) - set(coords))}, extra {len(set(coords) - set(want))}")
    ids = dict(zip(coords, events.column("event_id").to_pylist()))
    lates = dict(zip(coords, events.column("is_late").to_pylist()))
    for k, m in want.items():
        if k in ids:
            check(ids[k] == m["event"]["event_id"], f"event at {k}: id {ids[k]} != {m['event']['event_id']}")
            check(lates[k] == m["late"], f"event {m['event']['event_id']}: is_late {lates[k]} != expected {m['late']}")
    n_late = sum(1 for m in valid if m["late"])
    # duplicates: every delivery is in the table; per (partition, event_id) the first delivery is
    # not flagged and every later one is (deliveries on other partitions are not copies)
    dups = dict(zip(coords, events.column("is_duplicate").to_pylist()))
    for (p, eid), ms in deliveries.items():
        flags = [dups.get((m["partition"], m["offset"])) for m in ms]
        check(flags == [False] + [True] * (len(ms) - 1),
              f"{eid} on partition {p}: deliveries at offsets {[m['offset'] for m in ms]} flagged {flags}, want only the first unflagged")
    check(n_late > 0, "input design: no late events")

    # dead_letters: every invalid message, with the reason we expect
    got_dead = {(p, o): r for p, o, r in zip(dead.column("kafka_partition").to_pylist(), dead.column("kafka_offset").to_pylist(), dead.column("reason").to_pylist())}
    want_dead = {(m["partition"], m["offset"]): m["reason"] for m in invalid}
    check(got_dead == want_dead, f"dead_letters differ: got {sorted(got_dead.items())[:8]}, want {sorted(want_dead.items())[:8]}")
    if got_dead != want_dead:
        for k in sorted(set(got_dead) | set(want_dead)):
            if got_dead.get(k) != want_dead.get(k):
                m = next(m for m in invalid if (m["partition"], m["offset"]) == k) if k in want_dead else None
                failures.append(f"  {k}: got {got_dead.get(k)}, want {want_dead.get(k)}: {m['payload'][:120] if m else ''}")
    got_payload = dict(zip(zip(dead.column("kafka_partition").to_pylist(), dead.column("kafka_offset").to_pylist()), dead.column("payload").to_pylist()))
    check(all(got_payload.get((m["partition"], m["offset"])) == m["payload"].encode() for m in invalid), "dead_letters: a raw payload differs from the message")
    per_reason = defaultdict(int)
    for r in got_dead.values():
        per_reason[r] += 1
    check(len(events) + len(dead) == len(msgs), f"messages {len(msgs)} != events {len(events)} + dead letters {len(dead)}")

    # Kafka offsets, watermarks and epochs of the last commit are in the snapshot summary
    summ = events_t.current_snapshot().summary.additional_properties
    offsets = json.loads(summ["admetrics.offsets"])
    check({int(k): v for k, v in offsets.items()} == dict(next_offset), f"summary offsets {offsets} != end offsets {dict(next_offset)}")
    wms = {int(k): v for k, v in json.loads(summ.get("admetrics.watermarks", "{}")).items()}
    epochs = {int(k): v for k, v in json.loads(summ.get("admetrics.epochs", "{}")).items()}
    max_t = defaultdict(int)  # partition -> max event time it counted (phase 2's flush event)
    for m in valid:
        if not m["dup"]:
            max_t[m["partition"]] = max(max_t[m["partition"]], m["event"]["time_ms"])
    check(set(wms) == set(next_offset) and all(wm1.get(p, wms[p]) <= wms[p] <= max_t[p] - a.ooo_ms for p in wms),
          f"summary watermarks {wms}: want per partition between its phase-1 watermark {wm1} and its max event time - ooo")
    check(set(epochs) == set(next_offset) and all(e >= 1 for e in epochs.values()), f"summary epochs {epochs}")
    check(summ.get("admetrics.watermark") == str(min(wms.values(), default=None)),
          f"summary watermark {summ.get('admetrics.watermark')} is not the minimum of {wms}")

    # campaign_metrics: every row one partition's share, its revision carrying the epoch its
    # partition was claimed with (the summaries' admetrics.epochs) in the high half
    data_windows = {k[0] for k in exp}
    row_parts = metrics.column("kafka_partition").to_pylist()
    check(set(row_parts) <= set(next_offset), f"metric rows of partitions {sorted(set(row_parts) - set(next_offset))} that had no input")
    claimed = defaultdict(int)  # partition -> highest epoch in campaign_metrics' history
    for snap in metrics_t.snapshots():
        for k, e in json.loads(snap.summary.additional_properties.get("admetrics.epochs", "{}") if snap.summary else "{}").items():
            claimed[int(k)] = max(claimed[int(k)], e)
    bad_rev = sorted({(p, r >> 32) for p, r in zip(row_parts, metrics.column("revision").to_pylist())
                      if not 1 <= r >> 32 <= claimed[p]})
    check(not bad_rev, f"revisions whose epoch (high 32 bits) is not one claimed for their partition: {bad_rev[:5]}, claimed {dict(claimed)}")
    bad_prov = sum(1 for sha, v in zip(metrics.column("plugin_sha256").to_pylist(), metrics.column("plugin_version").to_pylist())
                   if len(sha) != 64 or not v)
    check(bad_prov == 0, f"{bad_prov} metric rows without plugin provenance")

    def current(table):
        """(window_start ms, campaign, ad, metric) -> current row (sql/current_metrics.sql): the
        totals of ctr, cvr and last-click attribution (CLASSIC), the metrics computed here."""
        cur = current_metrics(table, CLASSIC)
        ws = cur.column("window_start").cast(pa.int64()).to_pylist()
        return {(w // 1000, r["campaign_id"], r["ad_id"], r["metric"]): r for w, r in zip(ws, cur.to_pylist())}

    def compare(rows, want, what):
        """Checks the current rows of the data windows against an expectation; returns them."""
        got = {k: v for k, v in rows.items() if k[0] in data_windows}
        check(set(got) == set(want), f"{what}: metric keys differ: missing {sorted(set(want) - set(got))[:5]}, extra {sorted(set(got) - set(want))[:5]}")
        for key, (num, den) in want.items():
            r = got.get(key)
            if r is None:
                continue
            check(r["is_final"], f"{what} {key}: not final ({r['partitions']} partitions)")
            if key[3] in ("ctr", "cvr"):
                value = num / den if den else 0.0
                check(r["numerator"] == num and r["denominator"] == den and abs(r["value"] - value) < 1e-12,
                      f"{what} {key}: got {r['numerator']}/{r['denominator']}={r['value']}, want {num}/{den}={value}")
            else:
                check(round(r["value"] * 1_000_000) == num and r["denominator"] == den,
                      f"{what} {key}: got {r['value']} over {r['denominator']}, want {num / 1e6} over {den}")
        return got

    # Each partition's share: its rows alone, by the same rule, against its own events.
    for p in sorted(next_offset):
        compare(current(metrics.filter(pc.equal(metrics.column("kafka_partition"), p))), exp_p.get(p, {}), f"partition {p}")
    # The whole: shares summed over partitions.
    rows = current(metrics)
    check(not any(r["withheld"] for r in rows.values()), "no plugin failed, so nothing may be withheld")
    got_data = compare(rows, exp, "all partitions")
    check(any(r["partitions"] > 1 for r in got_data.values()), "input design: no metric key with shares from several partitions")
    # attributed + unattributed == revenue, per window, exactly
    for w in data_windows:
        def total(metric):
            return sum(round(v["value"] * 1_000_000) for k, v in got_data.items() if k[0] == w and k[3] == metric)
        check(total("attributed_revenue") + total("unattributed_revenue") == total("revenue"), f"window {w}: attribution does not add up")
    for needle in ("lonely-", "slow-"):
        user_convs = [m for m in valid if m["event"]["user_id"].startswith(needle) and m["event"]["event_type"] == "conversion"]
        check(user_convs and all(not [x for x in clicks_by_user[(m["partition"], m["event"]["user_id"])] if m["event"]["time_ms"] - lookback <= x[0] <= m["event"]["time_ms"]] for m in user_convs),
              f"input design: {needle} conversions should have no click in the lookback")
    attributed_cross = sum(v[0] for k, v in exp.items() if k[3] == "attributed_revenue" and k[1] == "camp-4" and k[2] == "ad-4-2")
    check(attributed_cross >= 4 * 7_250_000, "input design: cross-campaign conversions not credited to camp-4/ad-4-2")

    # ---- DuckDB, an independent reader of the same tables
    spec = importlib.util.find_spec("duckdb_ext")
    ext_dir = f"{spec.submodule_search_locations[0]}/extensions"
    con = duckdb.connect()
    con.execute(f"SET extension_directory='{ext_dir}'")
    con.execute("SET autoinstall_known_extensions=false")
    con.execute("LOAD iceberg")
    n_events = con.execute(f"SELECT count(*) FROM iceberg_scan('{events_t.metadata_location}')").fetchone()[0]
    check(n_events == len(valid), f"DuckDB reads {n_events} events, want {len(valid)}")
    impressions = con.execute(
        f"SELECT count(*) FROM iceberg_scan('{events_t.metadata_location}') WHERE event_type = 'impression' AND NOT is_late AND NOT is_duplicate AND campaign_id <> 'flush'"
    ).fetchone()[0]
    # The dashboard's query shape: sql/current_metrics.sql over DuckDB's own scan of the table,
    # denominators summed; and every current value equal to the one read through PyIceberg.
    define(con, f"iceberg_scan('{metrics_t.metadata_location}')")
    latest_ctr_den = con.execute(
        f"SELECT sum(denominator) FROM current_metrics WHERE metric = 'ctr' AND campaign_id <> 'flush' AND NOT withheld "
        f"AND {CLASSIC}").fetchone()[0]
    check(impressions == latest_ctr_den, f"DuckDB: on-time impressions {impressions} != summed CTR denominators {latest_ctr_den}")
    # Every key of the view (its whole key: plugin, dimensions, window_end too), both readers.
    cols = ", ".join(f"epoch_us({c})" if c.startswith("window_") else c for c in KEY)
    duck = {tuple(r[:len(KEY)]): r[len(KEY):] for r in con.execute(
        f"SELECT {cols}, numerator, denominator, partitions FROM current_metrics").fetchall()}
    whole = current_metrics(metrics)
    us = {c: whole.column(c).cast(pa.int64()).to_pylist() for c in ("window_start", "window_end")}
    py = {tuple(us[c][i] if c in us else r[c] for c in KEY): (r["numerator"], r["denominator"], r["partitions"])
          for i, r in enumerate(whole.to_pylist())}
    differ = [k for k in set(duck) | set(py) if k not in duck or k not in py
              or not all(abs(x - y) <= 1e-9 * max(1.0, abs(y)) for x, y in zip(duck[k], py[k]))]
    check(not differ, f"DuckDB and PyIceberg read different current metrics: {len(duck)} vs {len(py)} keys, e.g. {sorted(differ, key=str)[:3]}")

    print(f"messages {len(msgs)}: valid {len(valid)} (late {n_late}, duplicate deliveries {n_dup}, event ids on two partitions {n_cross}), dead letters {len(invalid)}")
    print(f"dead letters per reason: {dict(sorted(per_reason.items()))}")
    print(f"metric keys checked {len(exp)} over {len(data_windows)} windows; metric rows in table {len(metrics)}")
    print(f"snapshots: events {len(events_t.snapshots())}, metrics {len(metrics_t.snapshots())}, dead letters {len(dead_t.snapshots())}")
    if failures:
        print(f"{len(failures)} FAILURES:")
        for f in failures[:40]:
            print("  -", f)
        sys.exit(1)
    print("OK: tables match the independent computation")


if __name__ == "__main__":
    main()
