#!/usr/bin/env python3
"""Checks the tables written by `admetrics run --file EVENTS.jsonl` against the file itself.

    verify_file_run.py --events FILE [--events FILE2 ...] --catalog DB --warehouse DIR [--same-as DB2 DIR2]
    verify_file_run.py --events FILE --catalog http://REST --s3-endpoint URL   (REST catalog on S3)

Independently of the daemon: every line is classified valid or bad by a few rules of our own
(JSON object, known event type, required string fields, revenue only for conversions); valid
events are counted per (campaign, 60 s window) — impressions, clicks, conversions, revenue — and
compared with the current value in campaign_metrics (sql/current_metrics.sql: per Kafka partition
the latest revision, shares summed), which must be final and not withheld. campaign_events must
hold each valid line once (by line number = kafka_offset), dead_letters each bad line once with
its raw bytes. With --same-as, a second warehouse must hold the same final metrics (the stdin run).

Several --events: each file was run as a stream of its own into the same tables (the same file
twice: two streams). Each file's lines must be one stream's rows (matched by content, whatever the
streams are called), and the metrics the sum of the files' counts: a stream's events are never
duplicates of another stream's, and no stream's metric rows replace another's.
"""
import argparse
import json
import math
import sys
from collections import defaultdict
from datetime import datetime, timezone
from decimal import Decimal

from current_metrics import CLASSIC, current_metrics_rows

REQUIRED = ("event_id", "event_type", "event_time", "campaign_id", "ad_id", "user_id")


def classify(line):
    try:
        e = json.loads(line)
    except ValueError:
        return None
    if not isinstance(e, dict) or e.get("event_type") not in ("impression", "click", "conversion"):
        return None
    if any(not isinstance(e.get(k), str) or not e.get(k) for k in REQUIRED if k != "event_time"):
        return None
    return e


def to_ms(t):
    if isinstance(t, int):
        return t
    return int(datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp() * 1000)


def open_catalog(catalog, warehouse, s3_endpoint=None):
    if catalog.startswith(("http://", "https://")):
        from pyiceberg.catalog.rest import RestCatalog

        return RestCatalog("admetrics", uri=catalog, **{
            "s3.endpoint": s3_endpoint, "s3.access-key-id": "test", "s3.secret-access-key": "test",
            "s3.region": "us-east-1"})
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog("admetrics", uri=f"sqlite:///{catalog}", warehouse=f"file://{warehouse}")


def final_metrics(catalog, warehouse, s3_endpoint=None):
    """The catalog and the current value of every metric key: (window_start, campaign, ad, metric) -> row."""
    cat = open_catalog(catalog, warehouse, s3_endpoint)
    rows = current_metrics_rows(cat.load_table("ads.campaign_metrics").scan().to_arrow(), CLASSIC)
    return cat, {(r["window_start"], r["campaign_id"], r["ad_id"], r["metric"]): r for r in rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", required=True, action="append")
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--warehouse", default=None)
    ap.add_argument("--s3-endpoint", default=None, help="with a REST catalog: where its S3 server is")
    ap.add_argument("--same-as", nargs=2, default=None)
    a = ap.parse_args()
    want = defaultdict(lambda: {"impressions": 0, "clicks": 0, "conversions": 0, "revenue": Decimal(0)})
    files = []  # per file: (name, {line: valid event}, {line: bad raw bytes})
    lines_total = 0
    for path in a.events:
        raw = open(path, "rb").read().split(b"\n")
        if raw and raw[-1] == b"":
            raw.pop()
        lines_total += len(raw)
        valid, bad = {}, {}
        for i, line in enumerate(raw):
            e = classify(line)
            if e is None:
                bad[i] = line
                continue
            valid[i] = e
            w = to_ms(e["event_time"]) // 60000 * 60000
            k = (e["campaign_id"], w)
            want[k][e["event_type"] + "s" if e["event_type"] != "click" else "clicks"] += 1
            if e["event_type"] == "conversion":
                want[k]["revenue"] += Decimal(str(e["revenue"]))
        files.append((path, valid, bad))
    cat, latest = final_metrics(a.catalog, a.warehouse, a.s3_endpoint)
    if a.s3_endpoint:
        for t in ("campaign_events", "campaign_metrics", "dead_letters"):
            loc = cat.load_table(f"ads.{t}").location()
            if not loc.startswith("s3://"):
                sys.exit(f"verify_file_run: ads.{t} is at {loc}, not on S3")
    problems = []
    got = defaultdict(lambda: {"impressions": 0, "clicks": 0, "conversions": 0, "revenue": Decimal(0)})
    for (ws, c, _ad, m), r in latest.items():
        if not r["is_final"] or r["withheld"]:
            problems.append(f"{(ws, c, m)} not final or withheld")
        k = (c, int(ws.timestamp() * 1000))
        if m == "ctr":
            got[k]["clicks"], got[k]["impressions"] = int(r["numerator"]), int(r["denominator"])
        elif m == "cvr":
            got[k]["conversions"] = int(r["numerator"])
        elif m == "revenue":
            got[k]["revenue"] = Decimal(repr(r["numerator"]))
    for k in sorted(set(want) | set(got)):
        for f in ("impressions", "clicks", "conversions"):
            if want[k][f] != got[k][f]:
                problems.append(f"{k} {f}: tables {got[k][f]}, file {want[k][f]}")
        if abs(want[k]["revenue"] - got[k]["revenue"]) > Decimal("0.000001"):
            problems.append(f"{k} revenue: tables {got[k]['revenue']}, file {want[k]['revenue']}")
    # Each file's lines are exactly one stream's rows, a different stream per file.
    events = cat.load_table("ads.campaign_events").scan(
        selected_fields=("kafka_offset", "event_id", "stream")).to_arrow().to_pylist()
    by_stream = defaultdict(dict)
    for r in events:
        if r["kafka_offset"] in by_stream[r["stream"]]:
            problems.append(f"campaign_events: stream {r['stream']!r} line {r['kafka_offset']} more than once")
        by_stream[r["stream"]][r["kafka_offset"]] = r["event_id"]
    dead = cat.load_table("ads.dead_letters").scan().to_arrow().to_pylist()
    dead_by_stream = defaultdict(dict)
    for r in dead:
        if r["kafka_offset"] in dead_by_stream[r["kafka_topic"]]:
            problems.append(f"dead_letters: stream {r['kafka_topic']!r} line {r['kafka_offset']} more than once")
        dead_by_stream[r["kafka_topic"]][r["kafka_offset"]] = r["payload"]
    unused = set(by_stream)
    for path, valid, bad in files:
        ids = {i: e["event_id"] for i, e in valid.items()}
        match = next((s for s in sorted(unused, key=str) if by_stream[s] == ids), None)
        if match is None:
            sizes = {s: len(by_stream[s]) for s in unused}
            problems.append(f"campaign_events: no stream holds exactly the {len(valid)} valid lines of {path} "
                            f"(streams left and their rows: {sizes})")
            continue
        unused.discard(match)
        if dead_by_stream.get(match, {}) != bad:
            got = dead_by_stream.get(match, {})
            problems.append(f"dead_letters of stream {match!r}: {len(got)} rows for lines {sorted(got)[:10]}, "
                            f"{path} has bad lines {sorted(bad)[:10]}")
    if unused:
        problems.append(f"campaign_events: streams {sorted(unused, key=str)} hold rows of no file")
    extra_dead = set(dead_by_stream) - set(by_stream)
    if extra_dead:
        problems.append(f"dead_letters: streams {sorted(extra_dead, key=str)} have no events")
    # Every data file referenced once: an ambiguous commit appended again would reference the
    # same files twice (rows counted twice in a table whose duplicate-file check is off).
    files_total = 0
    for t in ("campaign_events", "campaign_metrics", "dead_letters"):
        tbl = cat.load_table(f"ads.{t}")
        snap = tbl.current_snapshot()
        paths = [e.data_file.file_path
                 for m in (snap.manifests(tbl.io) if snap else [])
                 for e in m.fetch_manifest_entry(tbl.io, discard_deleted=True)]
        files_total += len(paths)
        if len(paths) != len(set(paths)):
            problems.append(f"{t}: {len(paths) - len(set(paths))} data files referenced more than once")
    if a.same_as:
        _, other = final_metrics(*a.same_as)
        # Fractional sums to a relative 1e-12: the partitions' shares may be added in another order.
        differ = [k for k in set(other) | set(latest)
                  if k not in other or k not in latest
                  or not all(math.isclose(other[k][n], latest[k][n], rel_tol=1e-12, abs_tol=1e-12)
                             for n in ("numerator", "denominator", "value"))]
        if differ:
            problems.append(f"the second warehouse differs: {len(other)} vs {len(latest)} metric keys, "
                            f"{len(differ)} differ, e.g. {sorted(differ, key=str)[:3]}")
    n_valid, n_bad = sum(len(f[1]) for f in files), sum(len(f[2]) for f in files)
    print(f"verify_file_run: {len(files)} file(s), {lines_total} lines = {n_valid} valid + {n_bad} bad; "
          f"{len(by_stream)} stream(s); {len(want)} (campaign, window) keys; "
          f"{len(latest)} final metric rows; {files_total} data files, each referenced once")
    if problems:
        print(f"{len(problems)} problems:")
        for p in problems[:30]:
            print("  ", p)
        sys.exit(1)
    print("verify_file_run: tables match the file")


if __name__ == "__main__":
    main()
