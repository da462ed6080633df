"""Checks a restatement (tests/restate.rs) against the tables, read with PyIceberg.

    verify_restate.py --catalog DB --warehouse DIR --id ID restated --version V --sha256 S \
        --lookback-secs N [--window-secs 60] [--max-touchpoints 8] [--newer-events] \
        [--expect-partitions N]
    verify_restate.py --catalog DB --warehouse DIR --id ID view --state live|promoted

`restated`: the restatement's rows are computed again here, independently of the host: the events
of campaign_events at the snapshot the restatement pinned (read from its snapshot summary), per
(stream, partition) in offset order, copies left out, late events and clicks before the period
feeding only the touchpoints (the rule of host/src/restate.rs), attributed by FIRST click within
the lookback (the fixture plugins/fixtures/attribution-first-click) among the user's latest
`max_touchpoints` clicks. Every (window, campaign, ad, metric, stream, partition) must be written
exactly once, final, not withheld, tagged with the plugin's name, version and sha256, and equal
to the computation. `--newer-events`: the events table must hold more events of the period now
than at the pinned snapshot (so the pinning was put to the test). `--expect-partitions N`: the
restated rows of some stream come from N distinct Kafka partitions, and so do the events of the
period (a multi-partition stream was restated, not one partition of it).

`view`: sql/current_metrics.sql (through tests/current_metrics.py) over the whole table must give
exactly the current value of the live rows alone (`live`), or the live rows with the attribution
plugin's windows of the restated period replaced by the restatement's rows (`promoted`).
"""
import argparse
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from current_metrics import current_metrics_rows, key  # noqa: E402

RECORD = "$restatement"

ap = argparse.ArgumentParser()
ap.add_argument("--catalog", required=True)
ap.add_argument("--warehouse", required=True)
ap.add_argument("--id", required=True)
sub = ap.add_subparsers(dest="cmd", required=True)
r = sub.add_parser("restated")
r.add_argument("--version", required=True)
r.add_argument("--sha256", required=True)
r.add_argument("--lookback-secs", type=int, required=True)
r.add_argument("--window-secs", type=int, default=60)
r.add_argument("--max-touchpoints", type=int, default=8)
r.add_argument("--newer-events", action="store_true")
r.add_argument("--expect-partitions", type=int, default=None)
v = sub.add_parser("view")
v.add_argument("--state", choices=["live", "promoted"], required=True)
sub.add_parser("expire")
a = ap.parse_args()

cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.catalog}", warehouse=f"file://{a.warehouse}")
metrics_t = cat.load_table("ads.campaign_metrics")
events_t = cat.load_table("ads.campaign_events")


def props(snap):
    s = snap.summary
    extra = getattr(s, "additional_properties", None)
    return dict(extra) if extra is not None else {k: s[k] for k in s}


if a.cmd == "expire":
    # What table maintenance does to old snapshots (scripts/maintain.py): every snapshot but the
    # current one leaves the metadata, with the summaries restatements record their progress in.
    cur = metrics_t.current_snapshot().snapshot_id
    old = [s.snapshot_id for s in metrics_t.snapshots() if s.snapshot_id != cur]
    metrics_t.maintenance.expire_snapshots().by_ids(old).commit()
    left = cat.load_table("ads.campaign_metrics").snapshots()
    assert len(left) == 1, left
    print(f"expired {len(old)} snapshots of campaign_metrics")
    sys.exit(0)

if a.cmd == "restated":
    # The restatement's newest record in the metrics table's snapshot summaries.
    record = None
    for snap in sorted(metrics_t.snapshots(), key=lambda s: s.sequence_number, reverse=True):
        p = props(snap)
        if p.get("admetrics.restatement") == a.id:
            record = p
            break
    assert record is not None, f"no snapshot of restatement {a.id}"
    assert record.get("admetrics.restate.complete") == "true", f"restatement {a.id} not complete: {record}"
    FROM = int(record["admetrics.restate.from-ms"]) * 1000
    TO = int(record["admetrics.restate.to-ms"]) * 1000
    SNAP = int(record["admetrics.restate.events-snapshot"])
    PLUGIN = record["admetrics.restate.plugin"]
else:
    # Its completion record row (what readers have, whatever table maintenance expired).
    t = metrics_t.scan(selected_fields=("metric", "restatement", "plugin", "window_start", "window_end",
                                        "numerator")).to_arrow().to_pylist()
    done = [x for x in t if x["metric"] == RECORD and x["restatement"] == a.id and x["numerator"] == -1]
    assert len(done) == 1, f"restatement {a.id}: {len(done)} completion records"
    FROM = int(done[0]["window_start"].timestamp() * 1_000_000)
    TO = int(done[0]["window_end"].timestamp() * 1_000_000)
    PLUGIN = done[0]["plugin"]

us = lambda col: pc.cast(col, pa.int64()).to_pylist()  # noqa: E731  timestamptz → µs


def metric_rows():
    t = metrics_t.scan().to_arrow()
    cols = {n: t.column(n).to_pylist() for n in t.column_names if n not in ("window_start", "window_end", "computed_at")}
    cols["window_start"] = us(t.column("window_start"))
    cols["window_end"] = us(t.column("window_end"))
    return t, [dict(zip(cols, vals)) for vals in zip(*cols.values())]


if a.cmd == "restated":
    lookback_us = a.lookback_secs * 1_000_000
    size_us = a.window_secs * 1_000_000
    flt = And(GreaterThanOrEqual("event_time", FROM - lookback_us), LessThan("event_time", TO))
    ev = events_t.scan(snapshot_id=SNAP, row_filter=flt).to_arrow()
    n_pinned_period = 0
    rows = list(zip(ev.column("stream").to_pylist(), ev.column("kafka_partition").to_pylist(),
                    ev.column("kafka_offset").to_pylist(), ev.column("event_type").to_pylist(),
                    us(ev.column("event_time")), ev.column("campaign_id").to_pylist(),
                    ev.column("ad_id").to_pylist(), ev.column("user_id").to_pylist(),
                    ev.column("revenue").to_pylist(), ev.column("is_late").to_pylist(),
                    ev.column("is_duplicate").to_pylist()))
    rows.sort(key=lambda x: (x[0] or "", x[1], x[2]))
    # (stream, partition, window_start µs, campaign, ad, metric) → [numerator µ-units or count, denominator]
    want = defaultdict(lambda: [0, 0])
    users = {}  # (stream, partition, user) → clicks [(time, campaign, ad)] sorted by time, latest N
    used = 0
    for stream, part, off, kind, t, camp, ad, user, rev, late, dup in rows:
        if dup:
            continue
        if FROM <= t < TO:
            n_pinned_period += 1
        key = (stream, part, user)
        if kind == "click":
            lst = users.setdefault(key, [])
            # After the clicks at or before its time (an equal time goes after: received later).
            i = len(lst)
            while i > 0 and lst[i - 1][0] > t:
                i -= 1
            lst.insert(i, (t, camp, ad))
            if len(lst) > a.max_touchpoints:
                lst.pop(0)
            continue
        if kind != "conversion" or late or not (FROM <= t < TO):
            continue
        used += 1
        w = t // size_us * size_us
        micros = int(rev * 1_000_000)
        tps = [c for c in users.get(key, []) if t - lookback_us <= c[0] <= t]
        base = (stream, part, w, camp, None)
        want[base + ("revenue",)][0] += micros
        want[base + ("revenue",)][1] += 1
        want[base + ("unattributed_revenue",)]  # present even when all revenue was attributed
        if tps:
            first = min(tps, key=lambda c: c[0])  # earliest; on ties the first received
            k = (stream, part, w, first[1], first[2], "attributed_revenue")
            want[k][0] += micros
            want[k][1] += 1
        else:
            want[base + ("unattributed_revenue",)][0] += micros
            want[base + ("unattributed_revenue",)][1] += 1
    assert used > 0, "no conversion in the restated period: the test proves nothing"

    _, mrows = metric_rows()
    mine = [m for m in mrows if m["restatement"] == a.id and m["metric"] != RECORD]
    got = {}
    for m in mine:
        k = (m["stream"], m["kafka_partition"], m["window_start"], m["campaign_id"], m["ad_id"], m["metric"])
        assert k not in got, f"window written twice: {k}"
        got[k] = m
        assert m["is_final"] and not m["withheld"], m
        assert (m["plugin"], m["plugin_version"], m["plugin_sha256"]) == (PLUGIN, a.version, a.sha256), m
        assert FROM <= m["window_start"] and m["window_end"] <= TO, m
    missing = set(want) - set(got)
    extra = set(got) - set(want)
    assert not missing and not extra, f"keys differ: missing {sorted(missing)[:5]} extra {sorted(extra)[:5]}"
    bad = []
    for k, (num, den) in want.items():
        m = got[k]
        if abs(m["numerator"] - num / 1_000_000) > 1e-6 or m["denominator"] != den:
            bad.append((k, (num / 1_000_000, den), (m["numerator"], m["denominator"])))
    assert not bad, f"{len(bad)} values differ, e.g. {bad[:5]}"
    parts = defaultdict(set)  # stream → partitions with restated rows
    for k in got:
        parts[k[0]].add(k[1])
    if a.expect_partitions is not None:
        ev_parts = defaultdict(set)
        for stream, part, *_ in rows:
            ev_parts[stream].add(part)
        assert any(len(p) == a.expect_partitions for p in parts.values()), \
            f"restated partitions per stream {dict(parts)}, expected {a.expect_partitions} in one stream"
        assert any(len(p) == a.expect_partitions for p in ev_parts.values()), dict(ev_parts)
        # Every (window, stream, partition) of the period with a conversion was restated.
        wins = {(k[0], k[1], k[2]) for k in want}
        print(f"restated (stream, partition, window) shares: {len(wins)}; partitions per stream "
              f"{ {s: sorted(p) for s, p in parts.items()} }")
    # The live attribution rows of the period must differ somewhere (a changed model).
    live = {(m["stream"], m["kafka_partition"], m["window_start"], m["campaign_id"], m["ad_id"], m["metric"]):
            m["numerator"] for m in mrows if m["restatement"] is None and m["plugin"] == PLUGIN
            and FROM <= m["window_start"] and m["window_end"] <= TO and m["is_final"]}
    differ = sum(1 for k, m in got.items() if abs(live.get(k, -1) - m["numerator"]) > 1e-6)
    assert differ > 0, "the restated rows equal the live ones: the changed plugin changed nothing"
    if a.newer_events:
        now = events_t.scan(row_filter=And(GreaterThanOrEqual("event_time", FROM), LessThan("event_time", TO)),
                            selected_fields=("is_duplicate",)).to_arrow()
        n_now = len(now) - sum(now.column("is_duplicate").to_pylist())
        assert n_now > n_pinned_period, f"no events were added to the period after the pin ({n_now} vs {n_pinned_period})"
        print(f"events of the period now {n_now}, at the pinned snapshot {n_pinned_period}")
    print(f"restatement {a.id}: {len(got)} rows, each written once, equal to the independent first-click "
          f"computation over {used} conversions ({differ} differ from the live rows)")
else:
    table, mrows = metric_rows()
    current = current_metrics_rows(table)
    live_only = table.filter(pc.and_(pc.is_null(table.column("restatement")),
                                     pc.not_equal(table.column("metric"), RECORD)))
    if a.state == "live":
        expected = current_metrics_rows(live_only)
    else:
        ws = pc.cast(live_only.column("window_start"), pa.int64())
        we = pc.cast(live_only.column("window_end"), pa.int64())
        in_period = pc.and_(pc.and_(pc.greater_equal(ws, FROM), pc.less_equal(we, TO)),
                            pc.equal(live_only.column("plugin"), PLUGIN))
        others = live_only.filter(pc.invert(in_period))
        restated = table.filter(pc.and_(pc.equal(pc.fill_null(table.column("restatement"), ""), a.id),
                                        pc.not_equal(table.column("metric"), RECORD)))
        assert len(restated) > 0
        # As if they were live rows: the plain rule (no records, no restatement ids) over them.
        i = restated.schema.get_field_index("restatement")
        restated = restated.set_column(i, restated.schema.field(i), pa.nulls(len(restated), pa.string()))
        expected = current_metrics_rows(pa.concat_tables([others, restated]))
    assert len(expected) > 0

    def keyed(rows):
        return {key(x): x for x in rows}  # the view's whole key: plugin and dimensions included

    cur, exp = keyed(current), keyed(expected)
    assert cur.keys() == exp.keys(), (
        f"current_metrics keys differ from the {a.state} expectation: {len(cur)} vs {len(exp)}; "
        f"e.g. {sorted(cur.keys() - exp.keys(), key=str)[:3]} / {sorted(exp.keys() - cur.keys(), key=str)[:3]}")
    for k, x in cur.items():
        y = exp[k]
        # Sums of fractional revenue may differ in the last bit with the order of summation.
        for c in ("value", "numerator", "denominator"):
            assert abs(x[c] - y[c]) <= 1e-9 * max(1.0, abs(y[c])), (k, c, x, y)
        for c in ("is_final", "withheld", "partitions"):
            assert x[c] == y[c], (k, c, x, y)
    print(f"current view = {a.state}: {len(current)} keys")
