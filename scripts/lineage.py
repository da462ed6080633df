#!/usr/bin/env python3
"""Lineage: why is this number what it is. Explains one metric value of ads.campaign_metrics.

    scripts/query.sh --why --window 2026-01-01T00:05:00Z --campaign c-3 --metric ctr [--ad AD]
    .venv/bin/python scripts/lineage.py [--catalog .state/catalog.db] [--warehouse .state/warehouse]
        --window START --campaign C --metric M [--ad AD] [--plugin P] [--dimensions CELL]
        [--window-end END] [--events] [--json]

START is the window's start (ISO 8601, or epoch milliseconds). The key is that of
sql/current_metrics.sql: --plugin says which plugin's value when several emit the metric (the
attribution models all emit revenue, attributed_revenue and unattributed_revenue; asked without
it, the answer lists them and exits 2), --dimensions a breakdown cell as stored
(`country=DE;device=mobile`; default the total), --window-end the window's end when windows of
two sizes start at START (a plugin whose window changed). --events lists every contributing
event; --json prints the whole answer as one JSON document (what tests/verify_lineage.py reads).

The steps, each a plain query anyone can run by hand (PyIceberg here; DuckDB works as well):

1. The rows of the key and the restatement records. Scan campaign_metrics for the key
   (window_start, campaign_id, metric, ad_id: NULL unless the metric is per ad, dimensions: NULL
   for a total, plugin and window_end when given) and for
   `metric = '$restatement'` (promote / rollback / completion records), planned file by file
   (`scan.plan_files()`), so each row keeps the data file it was read from.
2. The shares the current value is made of: the rule of sql/current_metrics.sql, stopped
   before it sums. Shadow builds' rows (`shadow = true`) are never values; a promoted restatement of the row's plugin whose period holds the window
   replaces the live rows; then per (stream, kafka_partition) the row with the highest revision.
   The value shown is Σnumerator / Σdenominator of these rows (rates) or Σnumerator (sums); it is
   checked here against the view itself (tests/current_metrics.py over the same rows).
3. Per share, the commit that wrote its row: the snapshot whose manifest entry added the row's
   data file (`table.inspect.entries()`: data_file.file_path -> snapshot_id). If that file was
   rewritten by compaction (the adding snapshot is not an admetrics commit), a live row's commit
   is found by its revision instead: revision = epoch << 32 | commit sequence, so the snapshot
   whose summary has admetrics.topic = the row's stream, admetrics.commit-seq = the low 32 bits
   and admetrics.epochs[partition] = the high 32 bits; a restated row's commit is the first of
   its restatement whose admetrics.restate.done reaches the window's end for its (stream,
   partition) (each window is written once).
4. That snapshot's summary: `admetrics.plugins` (JSON list of {name, version, sha256, wit,
   params}; the entry with the row's sha256 gives the WIT package the build was loaded with and
   its parameters); for a live row `admetrics.offsets` (partition -> next offset: the commit
   covered the offsets below it, per partition of the member); for a restatement's row
   `admetrics.restatement` and `admetrics.restate.events-snapshot` (the campaign_events snapshot
   it read, pinned at its start). A restatement's period, completion and promotion come from its
   record rows (step 1): they survive snapshot expiry, summaries do not.
5. The contributing events: campaign_events of the share's stream and partition, event_time in
   the window, not is_late, not is_duplicate; for a live row with kafka_offset below the
   commit's offset, at the current snapshot; for a restated row at the pinned events snapshot.
   Counted by event type, they give the numerator and denominator again: ctr = clicks /
   impressions, cvr = conversions / clicks, revenue = Σrevenue / conversions (of the campaign);
   for a breakdown cell, of the events with the cell's values (`device`, `country`, `placement`,
   `currency`; no recount of a cell folded into `other` or of `unknown`).
   Attribution's metrics (attributed_revenue per credited campaign and ad, unattributed_revenue)
   also depend on clicks before the window: the window's conversions (of every campaign, for
   attributed_revenue) are listed with their touchpoints (the user's clicks the host held when
   the conversion arrived: lower offset, same stream and partition, within the lookback,
   `--lookback-secs`/`--max-touchpoints` as configured, a restatement's own lookback from its
   summary) and recounted by LAST click, the shipped plugin's model (a build with another model,
   e.g. a first-click restatement, legitimately differs: the answer says which model it used);
   the other models' rows (`attribution-linear`, ...) are listed but not recounted.

Only the SQL catalog (SQLite) is read. A snapshot expired by table maintenance
(scripts/maintain.py) takes its summary with it: the share then says so, and its plugin's WIT,
params and source range are unknown (the row's plugin name, version and sha256 are in the row).
"""
import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, In, IsNull, LessThan, Or
from pyiceberg.io.pyarrow import ArrowScan

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from current_metrics import current_metrics_rows  # noqa: E402  (sql/current_metrics.sql)

RECORD = "$restatement"
RATES = {"ctr": ("click", "impression"), "cvr": ("conversion", "click")}


def parse_time(s: str) -> datetime:
    if s.lstrip("-").isdigit():
        return datetime.fromtimestamp(int(s) / 1000, tz=timezone.utc)
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)


def lit(t):
    """A timestamp as PyIceberg's filter literals want it (ISO 8601 with +00:00)."""
    return t.astimezone(timezone.utc).isoformat()


def iso(t) -> str:
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z") if t is not None else None


def props(snap) -> dict:
    s = snap.summary
    extra = getattr(s, "additional_properties", None)
    return dict(extra) if extra is not None else {k: s[k] for k in s}


def jmap(p: dict, key: str) -> dict:
    try:
        return {int(k): v for k, v in json.loads(p.get(key, "{}")).items()}
    except ValueError:
        return {}


def rows_with_files(table, row_filter) -> pa.Table:
    """The rows matching `row_filter`, each with the data file it was read from (`_file`)."""
    scan = table.scan(row_filter=row_filter)
    parts = []
    for task in scan.plan_files():
        t = ArrowScan(table.metadata, table.io, scan.projection(), row_filter).to_table([task])
        if t.num_rows:
            parts.append(t.append_column("_file", pa.array([task.file.file_path] * t.num_rows)))
    if not parts:
        return scan.to_arrow().append_column("_file", pa.array([], pa.string()))
    return pa.concat_tables(parts, promote_options="default")


# Step 2: the shares shown, i.e. sql/current_metrics.sql's `base` (shadow rows dropped),
# `promoted`, `shown` and `latest` steps over the key's rows, keeping each row whole instead of
# summing.
SHARES_SQL = """
WITH base AS (SELECT * FROM m WHERE shadow IS NOT TRUE),
promoted AS (
  SELECT restatement, plugin, window_start AS period_start, window_end AS period_end
  FROM base WHERE metric = '$restatement'
  GROUP BY restatement, plugin, window_start, window_end
  HAVING arg_max(numerator, revision) = 1),
shown AS (
  SELECT m.* FROM base m LEFT JOIN promoted p
    ON p.plugin = m.plugin AND m.window_start >= p.period_start AND m.window_end <= p.period_end
  WHERE m.metric <> '$restatement' AND m.restatement IS NOT DISTINCT FROM p.restatement)
SELECT stream, kafka_partition,
       arg_max({'revision': revision, 'value': value, 'numerator': numerator,
                'denominator': denominator, 'is_final': is_final, 'withheld': withheld,
                'plugin': plugin, 'plugin_version': plugin_version, 'plugin_sha256': plugin_sha256,
                'restatement': restatement, 'computed_at': computed_at, 'file': _file,
                'plugin_params': plugin_params,
                'window_end': window_end},
               revision) AS r
FROM shown GROUP BY stream, kafka_partition ORDER BY stream NULLS FIRST, kafka_partition
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--catalog", default=".state/catalog.db")
    ap.add_argument("--warehouse", default=None, help="default: warehouse next to the catalog")
    ap.add_argument("--namespace", default="ads")
    ap.add_argument("--window", required=True, help="window start: ISO 8601 or epoch ms")
    ap.add_argument("--campaign", required=True)
    ap.add_argument("--metric", required=True)
    ap.add_argument("--ad", default=None, help="the ad, for per-ad metrics (attributed_revenue)")
    ap.add_argument("--plugin", default=None, help="the plugin, when several emit the metric (attribution models)")
    ap.add_argument("--dimensions", default=None, help="a breakdown cell, e.g. 'country=DE;device=mobile' (default: the total)")
    ap.add_argument("--window-end", default=None, help="the window's end, when windows of two sizes start at --window")
    ap.add_argument("--events", action="store_true", help="list every contributing event")
    ap.add_argument("--json", action="store_true", help="print the answer as JSON")
    ap.add_argument("--lookback-secs", type=int, default=604800,
                    help="attribution lookback of the live daemon ([attribution] lookback_secs)")
    ap.add_argument("--max-touchpoints", type=int, default=8, help="[attribution] max_touchpoints")
    a = ap.parse_args()
    warehouse = a.warehouse or str(Path(a.catalog).resolve().parent / "warehouse")
    cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.catalog}", warehouse=f"file://{warehouse}")
    metrics = cat.load_table(f"{a.namespace}.campaign_metrics")
    events = cat.load_table(f"{a.namespace}.campaign_events")
    ws = parse_time(a.window)
    try:
        answer = explain(metrics, events, ws, a.campaign, a.metric, a.ad, a.events,
                         (a.lookback_secs, a.max_touchpoints), plugin=a.plugin, dimensions=a.dimensions,
                         window_end=parse_time(a.window_end) if a.window_end else None)
    except Ambiguous as e:
        print(f"lineage: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(answer, indent=1, default=str))
    else:
        print_text(answer)
    return 0 if answer["shares"] else 1


class Ambiguous(Exception):
    """The key matches rows of several plugins or window sizes: the question needs --plugin / --window-end."""


def explain(metrics, events, ws, campaign, metric, ad, list_events, attribution=(604800, 8), plugin=None,
            dimensions=None, window_end=None):
    # Step 1: the key's rows and the record rows, with their data files.
    key = And(EqualTo("window_start", lit(ws)), EqualTo("campaign_id", campaign), EqualTo("metric", metric))
    key = And(key, IsNull("ad_id") if ad is None else EqualTo("ad_id", ad))
    has_dims = "dimensions" in metrics.schema().column_names
    if has_dims:
        key = And(key, IsNull("dimensions") if dimensions is None else EqualTo("dimensions", dimensions))
    elif dimensions is not None:
        raise Ambiguous("the table has no dimensions column (written before breakdowns): no cell to explain")
    if plugin is not None:
        key = And(key, EqualTo("plugin", plugin))
    if window_end is not None:
        key = And(key, EqualTo("window_end", lit(window_end)))
    rows = rows_with_files(metrics, Or(key, EqualTo("metric", RECORD)))
    if "shadow" not in rows.column_names:  # a table written before shadow plugins existed
        rows = rows.append_column("shadow", pa.nulls(rows.num_rows, pa.bool_()))
    for col in ("dimensions", "plugin_params"):  # ... or before admetrics:metrics@0.2.0
        if col not in rows.column_names:
            rows = rows.append_column(col, pa.nulls(rows.num_rows, pa.string()))
    own = [r for r in rows.select(["metric", "plugin", "window_end"]).to_pylist() if r["metric"] != RECORD]
    plugins = sorted({r["plugin"] for r in own})
    if len(plugins) > 1:
        raise Ambiguous(f"{metric} of campaign {campaign} at {iso(ws)} is written by several plugins "
                        f"{plugins}: say which with --plugin")
    ends = sorted({r["window_end"] for r in own})
    if len(ends) > 1:
        raise Ambiguous(f"windows of several sizes start at {iso(ws)} (ends {[iso(e) for e in ends]}): "
                        f"say which with --window-end")
    plugin = plugin or (plugins[0] if plugins else None)
    # Records of other plugins never apply to this key's rows: keep this plugin's.
    rows = rows.filter(pc.or_(pc.not_equal(rows.column("metric"), RECORD),
                              pc.equal(rows.column("plugin"), plugin or "")))
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("m", rows)
    # Arrow, not fetchall(): DuckDB's Python conversion of timestamptz needs pytz.
    shares = [dict(stream=x["stream"], kafka_partition=x["kafka_partition"], **x["r"])
              for x in con.execute(SHARES_SQL).fetch_arrow_table().to_pylist()]
    # The value the view shows, by the view itself.
    current = current_metrics_rows(rows.drop_columns(["_file"]), where=f"metric = '{metric}'")
    current = [c for c in current if c["campaign_id"] == campaign and c["ad_id"] == ad
               and c["dimensions"] == dimensions]
    records = [r for r in rows.to_pylist() if r["metric"] == RECORD]

    # Step 3: data file -> the snapshot that added it; and every summary, by snapshot id.
    entries = metrics.inspect.entries()
    paths = pc.struct_field(entries.column("data_file"), "file_path")
    hit = pc.is_in(paths, value_set=pa.array(sorted({s["file"] for s in shares}), pa.string()))
    added = dict(zip(pc.filter(paths, hit).to_pylist(),
                     pc.filter(entries.column("snapshot_id"), hit).to_pylist()))
    snaps = {s.snapshot_id: s for s in metrics.snapshots()}

    out_shares = []
    for s in shares:
        rev = s["revision"]
        epoch, seq = rev >> 32, rev & 0xFFFFFFFF
        share = {
            "stream": s["stream"], "kafka_partition": s["kafka_partition"],
            "revision": rev, "epoch": epoch, "commit_seq": seq,
            "value": s["value"], "numerator": s["numerator"], "denominator": s["denominator"],
            "is_final": s["is_final"], "withheld": s["withheld"],
            "computed_at": iso(s["computed_at"]), "data_file": s["file"],
            "window_end": s["window_end"],
        }
        # The snapshot: by data file, else (the file was rewritten by compaction) by revision.
        snap_id, found_by = added.get(s["file"]), "data file"
        p = props(snaps[snap_id]) if snap_id in snaps else {}
        compacted = snap_id in snaps and "admetrics.writer-id" not in p
        if compacted:
            snap_id, found_by, p = None, None, {}
        if compacted and s["restatement"] is None:
            for sid, snap in snaps.items():
                q = props(snap)
                if (q.get("admetrics.topic") == s["stream"] and q.get("admetrics.commit-seq") == str(seq)
                        and jmap(q, "admetrics.epochs").get(s["kafka_partition"]) == epoch
                        and "admetrics.restatement" not in q):
                    snap_id, found_by, p = sid, "revision", q
                    break
        if compacted and s["restatement"] is not None:
            # A restatement writes each window of a (stream, partition) once, in the commit whose
            # admetrics.restate.done first reaches the window's end.
            end_ms = int(s["window_end"].timestamp() * 1000)
            theirs = sorted((x for x in snaps.values() if props(x).get("admetrics.restatement") == s["restatement"]),
                            key=lambda x: int(props(x).get("admetrics.commit-seq", 0)))
            for x in theirs:
                q = props(x)
                done = json.loads(q.get("admetrics.restate.done", "{}")).get(s["stream"] or "", {})
                if done.get(str(s["kafka_partition"]), -2**63) >= end_ms:
                    snap_id, found_by, p = x.snapshot_id, "restatement progress", q
                    break
        snapshot = {"id": snap_id, "found_by": found_by, "compacted": compacted,
                    "expired": snap_id is None or snap_id not in snaps}
        if snap_id in snaps:
            snap = snaps[snap_id]
            snapshot.update(
                timestamp=iso(datetime.fromtimestamp(snap.timestamp_ms / 1000, tz=timezone.utc)),
                writer_id=p.get("admetrics.writer-id"), commit_seq=p.get("admetrics.commit-seq"))
        # Step 4: plugin lineage from the summary.
        builds = json.loads(p.get("admetrics.plugins", "[]"))
        # The build with the row's sha256 and parameters (a commit may hold one build under two
        # parameter sets, after a configuration change); the sha256 alone for a summary written
        # before parameters were recorded.
        row_params = json.loads(s["plugin_params"]) if s["plugin_params"] else {}
        same_build = [b for b in builds if b.get("sha256") == s["plugin_sha256"]]
        build = next((b for b in same_build if b.get("params") == row_params),
                     same_build[0] if same_build else None)
        share["plugin"] = {
            "name": s["plugin"], "version": s["plugin_version"], "sha256": s["plugin_sha256"],
            "wit": build.get("wit") if build else None,
            "params": build.get("params") if build else None,
            "recorded": build is not None,
        }
        if s["restatement"] is None:
            offsets = jmap(p, "admetrics.offsets")
            share["run"] = {"kind": "live"}
            snapshot["offsets"] = offsets
            end = offsets.get(s["kafka_partition"])
            snapshot["source_range"] = None if end is None else {
                "stream": s["stream"], "kafka_partition": s["kafka_partition"], "offset_below": end}
        else:
            rid = s["restatement"]
            theirs = p if "admetrics.restatement" in p else next(
                (props(x) for x in snaps.values() if props(x).get("admetrics.restatement") == rid), {})
            pinned = theirs.get("admetrics.restate.events-snapshot")
            lookback = theirs.get("admetrics.restate.lookback-secs")
            mine = [r for r in records if r["restatement"] == rid]
            done = next((r for r in mine if r["numerator"] == -1), None)
            latest = max(mine, key=lambda r: r["revision"], default=None)
            share["run"] = {
                "kind": "restatement", "id": rid,
                "period": [iso(done["window_start"]), iso(done["window_end"])] if done else None,
                "complete": done is not None,
                "promoted": latest is not None and latest["numerator"] == 1,
                "events_snapshot": int(pinned) if pinned is not None else None,
                "lookback_secs": int(lookback) if lookback is not None else None,
            }
            snapshot["source_range"] = None if pinned is None else {"events_snapshot": int(pinned)}
        share["snapshot"] = snapshot
        # Step 5: the contributing events.
        share["events"] = contributing(events, share, ws, campaign, metric, ad, list_events, attribution,
                                       plugin, dimensions)
        share["window_end"] = iso(share["window_end"])
        out_shares.append(share)

    num = sum(s["numerator"] for s in out_shares)
    den = sum(s["denominator"] for s in out_shares)
    value = (num / den if den else 0.0) if metric in RATES or metric == "frequency" else num
    return {
        "key": {"window_start": iso(ws), "campaign_id": campaign, "metric": metric, "ad_id": ad,
                "plugin": plugin, "dimensions": dimensions,
                "window_end": iso(current[0]["window_end"]) if current else None},
        "current": ({k: (iso(v) if isinstance(v, datetime) else v) for k, v in current[0].items()}
                    if current else None),
        "sum_of_shares": {"numerator": num, "denominator": den, "value": value,
                          "withheld": any(s["withheld"] for s in out_shares),
                          "is_final": all(s["is_final"] for s in out_shares)},
        "shares": out_shares,
        # Rows of shadow builds (`plugins.shadow_paths`) for this key: never current values.
        "shadow_rows": sum(1 for x in rows.column("shadow").to_pylist() if x),
    }


def cell_of(dimensions):
    """A breakdown cell's text (`country=DE;device=mobile`) as {column: value}."""
    return dict(p.split("=", 1) for p in dimensions.split(";")) if dimensions else {}


def contributing(events, share, ws, campaign, metric, ad, list_events, attribution, plugin=None, dimensions=None):
    end = share["snapshot"].get("source_range")
    run = share["run"]
    cell = cell_of(dimensions)
    if any(v in ("other", "unknown") for v in cell.values()):
        return {"unknown": f"cell {dimensions}: values folded into 'other' (past the host's cardinality limit) "
                           "or 'unknown' (missing) are not recounted here"}
    f = And(GreaterThanOrEqual("event_time", lit(ws)), LessThan("event_time", lit(share["window_end"])))
    f = And(f, EqualTo("kafka_partition", share["kafka_partition"]))
    f = And(f, IsNull("stream") if share["stream"] is None else EqualTo("stream", share["stream"]))
    snapshot_id = None
    if run["kind"] == "live":
        if end is None:
            return {"unknown": "the commit's snapshot (and its offsets) was expired"}
        f = And(f, LessThan("kafka_offset", end["offset_below"]))
    else:
        snapshot_id = run["events_snapshot"]
        if snapshot_id is None:
            return {"unknown": "the restatement's summaries (its pinned events snapshot) were expired"}
    for column, value in sorted(cell.items()):
        f = And(f, EqualTo(column, value))
    cols = ("event_id", "event_type", "event_time", "campaign_id", "ad_id", "user_id", "revenue",
            "kafka_partition", "kafka_offset", "is_late", "is_duplicate") + tuple(sorted(cell))
    t = events.scan(row_filter=f, selected_fields=cols, snapshot_id=snapshot_id).to_arrow()
    ev = [e for e in t.to_pylist() if not e["is_late"] and not e["is_duplicate"]]
    if metric in ("ctr", "cvr", "revenue", "unattributed_revenue"):
        ev = [e for e in ev if e["campaign_id"] == campaign]
    elif metric == "attributed_revenue":
        ev = [e for e in ev if e["event_type"] == "conversion"]
    ev.sort(key=lambda e: e["kafka_offset"])
    by_type = {k: sum(1 for e in ev if e["event_type"] == k) for k in ("impression", "click", "conversion")}
    revenue = sum(float(e["revenue"] or 0) for e in ev if e["event_type"] == "conversion")
    out = {
        "read_at_events_snapshot": snapshot_id if snapshot_id is not None else events.current_snapshot().snapshot_id,
        "filter": " AND ".join(
            [("stream IS NULL" if share["stream"] is None else f"stream = '{share['stream']}'"),
             f"kafka_partition = {share['kafka_partition']}",
             f"event_time >= '{iso(ws)}'", f"event_time < '{iso(share['window_end'])}'"]
            + ([f"kafka_offset < {end['offset_below']}"] if run["kind"] == "live" else [])
            + ([] if metric == "attributed_revenue" else [f"campaign_id = '{campaign}'"])
            + [f"{c} = '{v}'" for c, v in sorted(cell.items())]
            + ["NOT is_late", "NOT is_duplicate"]),
        "count": len(ev), "by_type": by_type, "revenue": revenue,
        "offsets": [ev[0]["kafka_offset"], ev[-1]["kafka_offset"]] if ev else None,
    }
    if metric in RATES:
        n, d = RATES[metric]
        out["recomputed"] = {"numerator": by_type[n], "denominator": by_type[d]}
    elif metric == "revenue":
        out["recomputed"] = {"numerator": revenue, "denominator": by_type["conversion"]}
    elif metric in ("attributed_revenue", "unattributed_revenue") and plugin not in (None, "attribution"):
        out["recomputed"] = None
        out["note"] = (f"no recount for {plugin}: only the last-click model (plugin attribution) is "
                       "recounted here (tests/verify_attribution_models.py checks the others)")
    elif metric in ("attributed_revenue", "unattributed_revenue"):
        out.update(last_click(events, share, ws, campaign, metric, ad, ev, f_base(share), snapshot_id,
                              end, attribution))
    else:
        out["recomputed"] = None
        out["note"] = f"no recount for metric {metric!r}: its plugin's logic is not known here"
    if out["recomputed"] is not None:
        r = out["recomputed"]
        out["matches"] = (abs(r["numerator"] - share["numerator"]) <= 1e-9 * max(1.0, abs(share["numerator"]))
                          and r["denominator"] == share["denominator"])
    if list_events:
        out["rows"] = [{k: (iso(v) if isinstance(v, datetime) else v) for k, v in e.items()} for e in ev]
    return out


def f_base(share):
    f = EqualTo("kafka_partition", share["kafka_partition"])
    return And(f, IsNull("stream") if share["stream"] is None else EqualTo("stream", share["stream"]))


def last_click(events, share, ws, campaign, metric, ad, conversions, base, snapshot_id, end, attribution):
    """Attribution's metrics, recounted by LAST click (the shipped `attribution` plugin; another
    build, e.g. a first-click restatement, legitimately differs). As the host does: per user,
    the clicks received before the conversion (lower offset, same stream and partition; late
    clicks too, copies not), the latest `max_touchpoints` by event time, those within the
    lookback at or before the conversion are its touchpoints; the last one is credited."""
    lookback_secs, max_tp = attribution
    if share["run"]["kind"] == "restatement" and share["run"].get("lookback_secs") is not None:
        lookback_secs = share["run"]["lookback_secs"]
    conv = [e for e in conversions if e["event_type"] == "conversion"]
    users = sorted({e["user_id"] for e in conv})
    lo = ws.timestamp() - lookback_secs
    f = And(base, EqualTo("event_type", "click"))
    f = And(f, GreaterThanOrEqual("event_time", lit(datetime.fromtimestamp(lo, tz=timezone.utc))))
    f = And(f, LessThan("event_time", lit(share["window_end"])))
    if end is not None and "offset_below" in end:
        f = And(f, LessThan("kafka_offset", end["offset_below"]))
    clicks = {}
    if users:
        f = And(f, In("user_id", users))
        cols = ("event_time", "campaign_id", "ad_id", "user_id", "kafka_offset", "is_duplicate")
        for c in events.scan(row_filter=f, selected_fields=cols, snapshot_id=snapshot_id).to_arrow().to_pylist():
            if not c["is_duplicate"]:
                clicks.setdefault(c["user_id"], []).append(c)
    for lst in clicks.values():
        lst.sort(key=lambda c: c["kafka_offset"])
    num, den = 0, 0
    for e in conv:
        held = []  # the user's clicks as the host holds them when the conversion arrives
        for c in clicks.get(e["user_id"], []):
            if c["kafka_offset"] >= e["kafka_offset"]:
                break
            i = len(held)
            while i > 0 and held[i - 1]["event_time"] > c["event_time"]:
                i -= 1
            held.insert(i, c)
            if len(held) > max_tp:
                held.pop(0)
        t = e["event_time"]
        tps = [c for c in held if t.timestamp() - lookback_secs <= c["event_time"].timestamp() and c["event_time"] <= t]
        e["touchpoints"] = [{"event_time": iso(c["event_time"]), "campaign_id": c["campaign_id"], "ad_id": c["ad_id"],
                             "kafka_offset": c["kafka_offset"]} for c in tps]
        credited = (tps[-1]["campaign_id"], tps[-1]["ad_id"]) if tps else None
        e["credited"] = list(credited) if credited else None
        counts = (credited == (campaign, ad)) if metric == "attributed_revenue" else (credited is None)
        if counts:
            num += int(round(float(e["revenue"] or 0) * 1_000_000))
            den += 1
    return {"recomputed": {"numerator": num / 1_000_000, "denominator": den},
            "model": f"last click within {lookback_secs} s, {max_tp} touchpoints per user",
            "note": "recounted by last click (the shipped attribution plugin): another build may differ"}


def print_text(a):
    k, cur = a["key"], a["current"]
    print(f"{k['metric']} of campaign {k['campaign_id']}" + (f" ad {k['ad_id']}" if k["ad_id"] else "")
          + (f" cell {k['dimensions']}" if k.get("dimensions") else "")
          + (f" by plugin {k['plugin']}" if k.get("plugin") else "")
          + f", window {k['window_start']}" + (f" .. {k['window_end']}" if k.get("window_end") else ""))
    if cur:
        print(f"  current value {cur['value']:.6g} = {cur['numerator']:.6g} / {cur['denominator']:.6g}"
              f"  (final {cur['is_final']}, withheld {cur['withheld']}, {cur['partitions']} shares)")
    else:
        print("  no current value (no row of this key)")
    for s in a["shares"]:
        pl, run, snap, ev = s["plugin"], s["run"], s["snapshot"], s["events"]
        print(f"\n  share stream={s['stream']} partition={s['kafka_partition']}: revision {s['revision']}"
              f" (epoch {s['epoch']}, commit {s['commit_seq']}), value {s['value']:.6g}"
              f" = {s['numerator']:.6g} / {s['denominator']:.6g}, final {s['is_final']}, withheld {s['withheld']}")
        print(f"    plugin {pl['name']} {pl['version']} sha256 {pl['sha256']}")
        print(f"      wit {pl['wit']}, params {json.dumps(pl['params'])}"
              + ("" if pl["recorded"] else "  (not in the commit's admetrics.plugins)"))
        if run["kind"] == "live":
            print("    run: live")
        else:
            print(f"    run: restatement {run['id']}, period {run['period']}, complete {run['complete']},"
                  f" promoted {run['promoted']}, read campaign_events snapshot {run['events_snapshot']}")
        if snap["expired"]:
            print(f"    committed by snapshot {snap['id']} (" + (
                "its data file was rewritten by compaction and no summary names the row's commit"
                if snap["compacted"] else "expired: its summary is gone") + ")")
        else:
            print(f"    committed by snapshot {snap['id']} at {snap['timestamp']} (found by {snap['found_by']};"
                  f" writer {snap['writer_id']}, commit {snap['commit_seq']})")
            if "offsets" in snap:
                print(f"      source: offsets below {json.dumps(snap['offsets'])} (per partition of stream"
                      f" {s['stream']}); this share: partition {s['kafka_partition']}"
                      f" offsets < {snap['source_range']['offset_below'] if snap['source_range'] else '?'}")
        print(f"    data file {s['data_file']}")
        if "unknown" in ev:
            print(f"    events: unknown ({ev['unknown']})")
            continue
        print(f"    events ({ev['filter']}, at campaign_events snapshot {ev['read_at_events_snapshot']}):")
        print(f"      {ev['count']} events, offsets {ev['offsets']}: {ev['by_type']}, revenue {ev['revenue']:.6f}")
        if ev.get("recomputed"):
            r = ev["recomputed"]
            print(f"      recomputed {r['numerator']:.6g} / {r['denominator']:.6g}: "
                  + ("matches the row" if ev["matches"] else "DOES NOT MATCH the row"))
        if ev.get("note"):
            print(f"      {ev['note']}" + (f" ({ev['model']})" if ev.get("model") else ""))
        for e in ev.get("rows", []):
            print(f"      {e['kafka_offset']:>10} {e['event_type']:<10} {e['event_time']} {e['campaign_id']}"
                  f" {e['ad_id']} {e['user_id']} {e['revenue'] if e['revenue'] is not None else ''}"
                  + (f" credited {e['credited']}" if "credited" in e else ""))
    t = a["sum_of_shares"]
    print(f"\n  Σ shares: {t['numerator']:.6g} / {t['denominator']:.6g} -> value {t['value']:.6g}")


if __name__ == "__main__":
    sys.exit(main())
