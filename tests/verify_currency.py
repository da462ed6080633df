#!/usr/bin/env python3
"""Checks currency conversion in the tables written by `admetrics run --file EVENTS.jsonl`
against the file and the `[currency]` section of the config it ran with, independently of the
daemon (its own reading of the TOML with tomllib, its own rate lookup and rounding with Python's
Decimal, PyIceberg and DuckDB to read the tables):

    verify_currency.py --events FILE --config CONFIG.toml --catalog DB --warehouse DIR

The rule re-implemented here (README, "Currencies"): the reporting currency converts at 1; any
other currency converts at the rate of the `[[currency.rates]]` entry with the latest date at or
before the event's UTC day, if that entry lists it; converted micros = round half to even of
micros x rate. A conversion without a rate is a dead letter `unknown_currency` whose detail names
the currency and the day, and counts nowhere. Checked:

* every metric row (all revisions, restated rows too) carries the reporting currency in
  `currency`, restatement records ('$restatement') NULL;
* the current `revenue` of every (window, campaign) is the sum of its converted conversions, to
  the micro, and the current `cvr` counts exactly the converted conversions;
* campaign_events holds every accepted line once: conversions with `revenue` converted,
  `original_revenue` and `currency` as sent, `revenue_currency` = the reporting currency; other
  kinds with no revenue and their `currency` as sent;
* the metrics can be recomputed from campaign_events alone (sum of `revenue` over conversions
  that are not copies, in DuckDB);
* dead_letters holds exactly the lines expected there, with their reason, the raw bytes and, for
  unknown_currency, a detail naming the currency and the day.
"""
import argparse
import json
import sys
import tomllib
from collections import defaultdict
from datetime import date, datetime, timezone
from decimal import ROUND_HALF_EVEN, Decimal

import duckdb
from pyiceberg.catalog.sql import SqlCatalog

from current_metrics import current_metrics_rows

problems = []


def check(cond, msg):
    if not cond:
        problems.append(msg)


def micros(text):
    return int(Decimal(str(text)) * 1_000_000)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--window-secs", type=int, default=60)
    a = ap.parse_args()
    size_ms = a.window_secs * 1000

    cur_cfg = tomllib.load(open(a.config, "rb")).get("currency", {})
    reporting = cur_cfg.get("reporting", "USD")
    entries = sorted(
        (date.fromisoformat(str(e["date"])), {k: Decimal(str(v)) for k, v in e.items() if k != "date"})
        for e in cur_cfg.get("rates", []))

    def convert(amount_micros, currency, day):
        """Converted micros, or None: no rate."""
        if currency == reporting:
            return amount_micros
        in_force = [rates for d, rates in entries if d <= day]
        if not in_force or currency not in in_force[-1]:
            return None
        return int((Decimal(amount_micros) * in_force[-1][currency]).quantize(Decimal(1), rounding=ROUND_HALF_EVEN))

    # ---- the reference, from the file
    lines = open(a.events, "rb").read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    want_dead = {}        # line -> (reason, [words the detail must hold])
    want_events = {}      # line -> expected campaign_events row
    seen_ids = set()
    revenue = defaultdict(int)       # (window_start_ms, campaign) -> micros
    conversions = defaultdict(int)   # (window_start_ms, campaign) -> count
    for i, raw in enumerate(lines):
        e = json.loads(raw)
        t = int(datetime.fromisoformat(e["event_time"].replace("Z", "+00:00")).timestamp() * 1000)
        day = datetime.fromtimestamp(t / 1000, tz=timezone.utc).date()
        row = {"event_id": e["event_id"], "currency": e.get("currency"), "revenue": None,
               "original_revenue": None, "revenue_currency": None}
        if e["event_type"] == "conversion":
            if "currency" not in e:
                want_dead[i] = ("missing_field", ["currency"])
                continue
            m = micros(e["revenue"])
            c = convert(m, e["currency"], day)
            if c is None:
                want_dead[i] = ("unknown_currency", [e["currency"], day.isoformat()])
                continue
            row.update(revenue=c, original_revenue=m, revenue_currency=reporting)
        copy = e["event_id"] in seen_ids
        seen_ids.add(e["event_id"])
        row["is_duplicate"] = copy
        want_events[i] = row
        if e["event_type"] == "conversion" and not copy:
            k = (t // size_ms * size_ms, e["campaign_id"])
            revenue[k] += row["revenue"]
            conversions[k] += 1

    cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.catalog}", warehouse=f"file://{a.warehouse}")

    # ---- campaign_metrics: every row labelled, current values equal to the reference
    metrics = cat.load_table("ads.campaign_metrics").scan().to_arrow()
    labels = defaultdict(int)
    for m, c in zip(metrics.column("metric").to_pylist(), metrics.column("currency").to_pylist()):
        labels[(m == "$restatement", c)] += 1
    values = sum(n for (record, _), n in labels.items() if not record)
    records = sum(n for (record, _), n in labels.items() if record)
    want_labels = {k: v for k, v in {(False, reporting): values, (True, None): records}.items() if v}
    check(dict(labels) == want_labels,
          f"campaign_metrics.currency: want {reporting} on every value row and NULL on restatement records, "
          f"got (is record, currency) -> rows {dict(labels)}")
    got_revenue, got_conversions = {}, {}
    for r in current_metrics_rows(metrics):
        check(r["is_final"] and not r["withheld"], f"{r} not final or withheld")
        k = (int(r["window_start"].timestamp() * 1000), r["campaign_id"])
        if r["metric"] == "revenue":
            got_revenue[k] = round(r["numerator"] * 1_000_000)
        elif r["metric"] == "cvr":
            got_conversions[k] = int(r["numerator"])
    check(got_revenue == dict(revenue), f"revenue (micros) per (window, campaign): tables {got_revenue}, reference {dict(revenue)}")
    for k in set(got_conversions) | set(conversions):
        check(got_conversions.get(k, 0) == conversions.get(k, 0),
              f"{k} conversions: tables {got_conversions.get(k)}, reference {conversions.get(k)}")

    # ---- campaign_events: originals kept, converted amounts, and the metrics recomputable from it
    events = cat.load_table("ads.campaign_events").scan().to_arrow()
    got_events = {}
    for r in events.to_pylist():
        off = r["kafka_offset"]
        check(off not in got_events, f"campaign_events: line {off} more than once")
        as_micros = lambda d: None if d is None else int(d * 1_000_000)
        got_events[off] = {"event_id": r["event_id"], "currency": r["currency"], "revenue": as_micros(r["revenue"]),
                           "original_revenue": as_micros(r["original_revenue"]),
                           "revenue_currency": r["revenue_currency"], "is_duplicate": r["is_duplicate"]}
    check(set(got_events) == set(want_events),
          f"campaign_events lines: extra {sorted(set(got_events) - set(want_events))}, "
          f"missing {sorted(set(want_events) - set(got_events))}")
    for i in sorted(set(got_events) & set(want_events)):
        check(got_events[i] == want_events[i], f"campaign_events line {i}: {got_events[i]}, want {want_events[i]}")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("campaign_events", events)
    recomputed = {
        (ws, c): int(s * 1_000_000)
        for ws, c, s in con.execute(
            f"SELECT epoch_ms(event_time) // {size_ms} * {size_ms} AS ws, campaign_id, sum(revenue) "
            "FROM campaign_events WHERE event_type = 'conversion' AND NOT is_duplicate GROUP BY ALL").fetchall()}
    check(recomputed == got_revenue, f"revenue recomputed from campaign_events {recomputed} != metrics {got_revenue}")

    # ---- dead_letters: exactly the expected lines, reasons, details and raw bytes
    dead = {r["kafka_offset"]: r for r in cat.load_table("ads.dead_letters").scan().to_arrow().to_pylist()}
    check(set(dead) == set(want_dead), f"dead_letters lines {sorted(dead)}, want {sorted(want_dead)}")
    for i, (reason, words) in want_dead.items():
        d = dead.get(i)
        if d is None:
            continue
        check(d["reason"] == reason, f"dead letter line {i}: reason {d['reason']}, want {reason}")
        check(all(w in d["detail"] for w in words), f"dead letter line {i}: detail {d['detail']!r} should name {words}")
        check(d["payload"] == lines[i], f"dead letter line {i}: payload differs from the line")

    print(json.dumps({"reporting": reporting, "lines": len(lines), "events": len(got_events),
                      "dead_letters": {r: sum(1 for x in want_dead.values() if x[0] == r) for r, _ in want_dead.values()},
                      "revenue_micros": {f"{k[1]}@{k[0]}": v for k, v in sorted(got_revenue.items())},
                      "metric_rows": metrics.num_rows}))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        sys.exit(f"verify_currency: {len(problems)} problem(s)")


if __name__ == "__main__":
    main()
