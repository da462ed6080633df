#!/usr/bin/env python3
"""Independent checks of what the host of admetrics:metrics@0.2.0 writes (tests/wit02.rs runs
them): breakdown rows, parameters in the lineage, 0.1.0 plugins' rows, and a campaign_metrics
table of the previous release upgraded in place. PyIceberg reads the tables through the SQLite
catalog, DuckDB counts; nothing here shares code with the host or the plugins.

    verify_wit02.py breakdown --dir D --plugin ctr --dimensions country,device[,attr.NAME]
                              [--max-values N]
                              [--window-secs 60] [--expect-folded | --expect-unfolded]
                              [--folded-values N] [--exclude-stream S ...]
    verify_wit02.py params --dir D --expect NAME=JSON ... [--wit NAME=PACKAGE ...]
    verify_wit02.py same --a D1 --b D2 --metric ctr [--version-a V] [--version-b V]
    verify_wit02.py create-old --dir D
    verify_wit02.py upgraded --dir D
    verify_wit02.py query --dir D SQL

`D` holds catalog.db and warehouse/. Every subcommand prints one line per problem and exits 1 if
there is any, 0 with a summary line otherwise.

breakdown: the plugin's live rows of its metric (ctr: clicks / impressions; cvr: conversions /
clicks), latest revision per (stream, partition) share and key, where a key is (window, campaign,
dimensions). Expected, from campaign_events alone (not late, not duplicates): per share and
window (`--window-secs`, UTC-aligned), each dimension column's values ranked by the offset of
their first event in that share's window (events of every kind and campaign: the host's rule),
values of rank >= `--max-values` read `other`, a missing or empty value `unknown`; one row per
campaign (dimensions NULL) and one per campaign and cell (canonical `col=value;...`, columns
sorted by name, exactly the listed ones) with any event of the metric's two kinds, numerator and
denominator the counts of those kinds. Every row final, not withheld, no ad_id. From the rows
alone: per window, campaign and share the cells sum to the total. The current-value view
(sql/current_metrics.sql) over the plugin's rows, in table order and reversed, filtered to
`dimensions IS NULL`, gives the totals (its key has the dimensions: a cell is a key of its own). --expect-folded: some cell reads `other` (the input
must exceed the limit); --expect-unfolded: none does. --folded-values N: the event values this
plugin saw folded (per event, per listed column; events of every kind, as the host hands them
all to the plugin) are N, e.g. the host's `dimension_values_folded` of a run where only this
plugin folds. Rows and events of an --exclude-stream are left out (another writer's).

params: every live row of plugin NAME carries `plugin_params` equal to the JSON object given
(`null`: the column is NULL, the plugin got no parameters), and every campaign_metrics commit
that adds rows of NAME lists its build in `admetrics.plugins` with those `params` (`{}` for
none), the rows' sha256, and the WIT package (`--wit NAME=PACKAGE`, default
admetrics:metrics@0.2.0). At least one such commit must exist per NAME.

same: the total rows of metric M (latest revision per share, dimensions NULL) of two table sets
are the same keys with the same numerator, denominator, value and finality; --version-a/-b check
the plugin_version the rows name.

create-old: creates ads.campaign_metrics with the schema of the release before WIT 0.2.0 (fields
1-19: no `dimensions`, no `plugin_params`) and appends three rows as that release wrote them;
records the table's uuid, its snapshot and the rows in D/old.json. upgraded: the table is the same
table (uuid, the old snapshot an ancestor of the current one), fields 1-19 kept with their ids,
`dimensions` (20) and `plugin_params` (21) added as optional strings, the old rows unchanged with
both new columns NULL, new rows written beside them, and the view reads the old rows' keys.

query: runs SQL (DuckDB, session time zone UTC) over the tables of D as `events`, `metrics` and
`dead_letters` (empty relations when D has no tables yet) and prints the rows as one JSON list
of lists (timestamps as ISO 8601 text), for a test's own small assertions.
"""
import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import duckdb
import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog

sys.path.insert(0, str(Path(__file__).resolve().parent))
from current_metrics import current_metrics  # noqa: E402

problems = []
KINDS = {"ctr": ("click", "impression"), "cvr": ("conversion", "click")}
DIMENSION_COLUMNS = ("country", "currency", "device", "placement")
WIT = "admetrics:metrics@0.2.0"


def check(cond, msg):
    if not cond:
        problems.append(msg)
    return cond


def catalog(d):
    return SqlCatalog("admetrics", uri=f"sqlite:///{d}/catalog.db", warehouse=f"file://{d}/warehouse")


def finish(summary):
    if problems:
        print(f"{len(problems)} PROBLEMS:")
        for p in problems[:60]:
            print("  -", p)
        sys.exit(1)
    print("OK:", summary)


def latest_rows(con, where, params, key):
    """Latest revision per `key` + share among the live rows matching `where`."""
    return con.execute(f"""
        SELECT {key}, stream, kafka_partition AS part,
               arg_max(struct_pack(value, numerator, denominator, is_final, withheld, ad_id,
                                   plugin_version, plugin_sha256, we := epoch_ms(window_end)),
                       revision) AS r
        FROM m
        WHERE {where} AND restatement IS NULL AND shadow IS NOT TRUE AND metric <> '$restatement'
        GROUP BY ALL""", params).fetchall()


# ------------------------------------------------------------------------------------------------
def breakdown(a):
    dims = sorted(a.dimensions.split(","))
    for c in dims:
        if c not in DIMENSION_COLUMNS and not (c.startswith("attr.") and len(c) > 5):
            sys.exit(f"--dimensions: unknown column {c!r}")
    # A custom attribute `attr.NAME` is the string NAME of the event's `attributes` JSON object.
    cols = [c for c in dims if not c.startswith("attr.")]
    metric = a.metric or a.plugin
    num_kind, den_kind = KINDS[metric]
    w = a.window_secs * 1000
    cat = catalog(a.dir)
    events = cat.load_table("ads.campaign_events").scan().to_arrow()
    metrics = cat.load_table("ads.campaign_metrics").scan().to_arrow()
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("e", events)
    con.register("m", metrics)

    # ---- expected, from the events
    con.execute("CREATE TEMP TABLE excluded (stream VARCHAR)")
    for s in a.exclude_stream:
        con.execute("INSERT INTO excluded VALUES (?)", [s])
    not_excluded = "coalesce(stream, '') NOT IN (SELECT stream FROM excluded)"
    evs = con.execute(f"""
        SELECT stream, kafka_partition, kafka_offset, event_type, campaign_id,
               (epoch_ms(event_time) // {w}) * {w} AS ws, attributes {"".join(", " + c for c in cols)}
        FROM e WHERE NOT is_late AND NOT is_duplicate AND {not_excluded}
        ORDER BY stream, kafka_partition, kafka_offset""").fetchall()
    check(evs, "no counted events")
    attributes_seen = 0

    def values(attrs, col_vals):
        nonlocal attributes_seen
        attrs = json.loads(attrs) if attrs is not None else {}
        attributes_seen += bool(attrs)
        by_col = dict(zip(cols, col_vals))
        return [attrs.get(c[5:]) if c.startswith("attr.") else by_col[c] for c in dims]
    ranks = defaultdict(dict)  # (stream, part, ws, column) -> value -> rank
    values_seen = defaultdict(set)  # (stream, part, ws, column) -> raw values
    want = defaultdict(lambda: [0, 0])  # (ws, campaign, dims text or None, stream, part) -> [num, den]
    folded_events = 0
    for s, p, _off, kind, campaign, ws, attrs, *col_vals in evs:
        vals = values(attrs, col_vals)
        cell = []
        for c, v in zip(dims, vals):
            v = v if v else "unknown"
            r = ranks[(s, p, ws, c)]
            if v not in r:
                r[v] = len(r)
            values_seen[(s, p, ws, c)].add(v)
            shown = v if r[v] < a.max_values else "other"
            folded_events += shown != v
            cell.append(f"{c}={shown}")
        if kind not in (num_kind, den_kind):
            continue
        for key in ((ws, campaign, None, s, p), (ws, campaign, ";".join(cell), s, p)):
            want[key][0 if kind == num_kind else 1] += 1

    # ---- the plugin's rows
    rows = latest_rows(con, f"plugin = ? AND metric = ? AND {not_excluded}", [a.plugin, metric],
                       "epoch_ms(window_start) AS ws, campaign_id, dimensions")
    check(rows, f"no live rows of {a.plugin}/{metric}")
    got = {}
    for ws, campaign, d, s, p, r in rows:
        k = (ws, campaign, d, s, p)
        got[k] = r
        where = f"window {ws} campaign {campaign} dims {d} share {s}/{p}"
        check(r["is_final"] and not r["withheld"], f"{where}: final {r['is_final']}, withheld {r['withheld']}")
        check(r["ad_id"] is None, f"{where}: ad_id {r['ad_id']}")
        check(r["we"] == ws + w, f"{where}: window_end {r['we']}, want {ws + w}")
        if d is not None:
            pairs = [x.split("=", 1) for x in d.split(";")]
            check(all(len(x) == 2 and x[1] for x in pairs) and [x[0] for x in pairs] == dims,
                  f"{where}: dimensions not `col=value` over exactly {dims} in name order")
        v = r["numerator"] / r["denominator"] if r["denominator"] else 0.0
        check(abs(r["value"] - v) <= 1e-12 * max(1.0, v), f"{where}: value {r['value']}, want {v}")
    missing = sorted(set(want) - set(got), key=str)
    extra = sorted(set(got) - set(want), key=str)
    check(not missing, f"{len(missing)} expected rows missing, e.g. {missing[:3]}")
    check(not extra, f"{len(extra)} rows the events do not give, e.g. {extra[:3]}")
    wrong = [(k, (got[k]["numerator"], got[k]["denominator"]), tuple(want[k]))
             for k in sorted(set(want) & set(got), key=str)
             if (got[k]["numerator"], got[k]["denominator"]) != tuple(want[k])]
    check(not wrong, f"{len(wrong)} rows differ from the counts (key, got, want), e.g. {wrong[:3]}")

    # ---- from the rows alone: the cells add up to the total
    sums = defaultdict(lambda: [0.0, 0.0, 0])
    for (ws, campaign, d, s, p), r in got.items():
        if d is not None:
            x = sums[(ws, campaign, s, p)]
            x[0] += r["numerator"]
            x[1] += r["denominator"]
            x[2] += 1
    totals = {(ws, c, s, p): r for (ws, c, d, s, p), r in got.items() if d is None}
    for k, t in totals.items():
        x = sums.get(k)
        if check(x is not None, f"total {k} has no breakdown rows"):
            check((x[0], x[1]) == (t["numerator"], t["denominator"]),
                  f"{k}: cells sum to {x[0]}/{x[1]}, the total row is {t['numerator']}/{t['denominator']}")
    check(set(sums) <= set(totals), f"breakdown rows without a total: {sorted(set(sums) - set(totals), key=str)[:3]}")

    # ---- folding
    other_cells = sum(1 for k in got if k[2] is not None and "=other" in k[2])
    over = sum(1 for vs in values_seen.values() if len(vs) > a.max_values)
    if a.expect_folded:
        check(over > 0, f"input design: no window has more than {a.max_values} values of a column")
        check(other_cells > 0, "no cell reads `other`")
    if a.expect_unfolded:
        check(other_cells == 0, f"{other_cells} cells read `other` with limit {a.max_values}")
    if a.folded_values is not None:
        check(folded_events == a.folded_values,
              f"{folded_events} event values folded by the rule, the host reports {a.folded_values}")
    per_window = defaultdict(set)
    for ws, _c, d, s, p in got:
        for x in (d or "").split(";") if d else []:
            c, v = x.split("=", 1)
            per_window[(s, p, ws, c)].add(v)
    for k, vs in per_window.items():
        check(len(vs - {"other"}) <= a.max_values, f"{k}: {len(vs - {'other'})} kept values, limit {a.max_values}")

    # ---- the view reads the totals, whatever the row order
    mine = con.execute(f"SELECT * FROM m WHERE plugin = ? AND metric = ? AND {not_excluded}",
                       [a.plugin, metric]).fetch_arrow_table()
    want_view = defaultdict(lambda: [0, 0])
    for (ws, c, d, _s, _p), (n, dd) in want.items():
        if d is None:
            want_view[(ws, c)][0] += n
            want_view[(ws, c)][1] += dd
    for label, table in (("table order", mine), ("reversed", mine.take(pa.array(range(mine.num_rows - 1, -1, -1))))):
        view = {}
        cur = current_metrics(table, where="dimensions IS NULL")
        for ws, r in zip(cur.column("window_start").cast(pa.int64()).to_pylist(), cur.to_pylist()):
            view[(ws // 1000, r["campaign_id"])] = (r["numerator"], r["denominator"])
        bad = [(k, view.get(k), tuple(v)) for k, v in want_view.items() if view.get(k) != tuple(v)]
        check(not bad and len(view) == len(want_view),
              f"view ({label}): {len(bad)} keys differ from the totals (key, view, want), e.g. {bad[:3]}; "
              f"{len(view)} keys, want {len(want_view)}")

    if len(cols) < len(dims):
        check(attributes_seen > 0, "input design: no event has attributes")
        unknown = sum(1 for k in got if k[2] is not None and "=unknown" in k[2])
        check(unknown > 0, "input design: no cell reads `unknown` for a missing attribute")
    finish(f"{a.plugin}/{metric} by {','.join(dims)} (limit {a.max_values}): {len(totals)} totals, "
           f"{len(got) - len(totals)} cells ({other_cells} with `other`, {folded_events} event values "
           f"folded) match campaign_events")


# ------------------------------------------------------------------------------------------------
def params(a):
    expect = {}
    for spec in a.expect:
        name, _, js = spec.partition("=")
        expect[name] = json.loads(js)
    wits = {n: WIT for n in expect}
    for spec in a.wit:
        name, _, pkg = spec.partition("=")
        wits[name] = pkg
    t = catalog(a.dir).load_table("ads.campaign_metrics")
    con = duckdb.connect()
    con.register("m", t.scan().to_arrow())
    shas = {}
    for name, want in expect.items():
        got = con.execute("""
            SELECT plugin_params, list(DISTINCT plugin_sha256), count(*) FROM m
            WHERE plugin = ? AND restatement IS NULL AND metric <> '$restatement'
            GROUP BY ALL""", [name]).fetchall()
        if not check(got, f"{name}: no rows"):
            continue
        for text, sha, n in got:
            check((None if text is None else json.loads(text)) == want,
                  f"{name}: {n} rows with plugin_params {text!r}, want {json.dumps(want)}")
        shas[name] = {s for _, ss, _ in got for s in ss}
    seen = defaultdict(int)
    for snap in t.snapshots():
        props = snap.summary.additional_properties if hasattr(snap.summary, "additional_properties") else dict(snap.summary)
        raw = props.get("admetrics.plugins")
        if raw is None:
            continue
        for b in json.loads(raw):
            if b["name"] not in expect:
                continue
            seen[b["name"]] += 1
            want = expect[b["name"]] or {}
            check(b["params"] == want, f"snapshot {snap.snapshot_id}: {b['name']} params {b['params']}, want {want}")
            check(b["sha256"] in shas.get(b["name"], ()), f"snapshot {snap.snapshot_id}: {b['name']} sha256 {b['sha256']} not its rows'")
            check(b["wit"] == wits[b["name"]], f"snapshot {snap.snapshot_id}: {b['name']} wit {b['wit']}, want {wits[b['name']]}")
    for name in expect:
        check(seen[name] > 0, f"{name}: no commit lists its build in admetrics.plugins")
    finish("; ".join(f"{n} {json.dumps(expect[n])} in its rows and {seen[n]} commit summaries" for n in expect))


# ------------------------------------------------------------------------------------------------
def same(a):
    def totals(d):
        con = duckdb.connect()
        con.register("m", catalog(d).load_table("ads.campaign_metrics").scan().to_arrow())
        return {(ws, c, s, p): r for ws, c, s, p, r in latest_rows(
            con, "metric = ? AND dimensions IS NULL", [a.metric], "epoch_ms(window_start) AS ws, campaign_id")}
    ra, rb = totals(a.a), totals(a.b)
    check(ra, f"{a.a}: no {a.metric} rows")
    check(set(ra) == set(rb), f"keys differ: only in a {sorted(set(ra) - set(rb))[:3]}, only in b {sorted(set(rb) - set(ra))[:3]}")
    fields = ("value", "numerator", "denominator", "is_final", "withheld")
    diff = [k for k in set(ra) & set(rb) if any(ra[k][f] != rb[k][f] for f in fields)]
    check(not diff, f"{len(diff)} keys differ, e.g. {[(k, ra[k], rb[k]) for k in sorted(diff)[:2]]}")
    for side, rows, v in (("a", ra, a.version_a), ("b", rb, a.version_b)):
        if v is not None:
            vs = {r["plugin_version"] for r in rows.values()}
            check(vs == {v}, f"{side}: plugin_version {vs}, want {v}")
    check(all(r["is_final"] for r in ra.values()), "a: rows not final")
    finish(f"{len(ra)} {a.metric} totals identical")


# ------------------------------------------------------------------------------------------------
def old_schema():
    """campaign_metrics as the release before WIT 0.2.0 created it (host/src/sink/schema.rs at
    2405e3a), field ids 1-19."""
    from pyiceberg.schema import Schema
    from pyiceberg.types import (BooleanType, DoubleType, IntegerType, LongType, NestedField,
                                 StringType, TimestamptzType)
    f = [("window_start", TimestamptzType(), True), ("window_end", TimestamptzType(), True),
         ("campaign_id", StringType(), True), ("ad_id", StringType(), False),
         ("metric", StringType(), True), ("value", DoubleType(), True),
         ("numerator", DoubleType(), True), ("denominator", DoubleType(), True),
         ("plugin", StringType(), True), ("plugin_version", StringType(), True),
         ("plugin_sha256", StringType(), True), ("revision", LongType(), True),
         ("is_final", BooleanType(), True), ("computed_at", TimestamptzType(), True),
         ("withheld", BooleanType(), True), ("kafka_partition", IntegerType(), True),
         ("stream", StringType(), False), ("restatement", StringType(), False),
         ("shadow", BooleanType(), False)]
    return Schema(*[NestedField(i + 1, n, t, required=r) for i, (n, t, r) in enumerate(f)])


OLD_ROWS = [  # (campaign, metric, value, numerator, denominator)
    ("old-campaign-a", "ctr", 0.25, 1.0, 4.0),
    ("old-campaign-b", "ctr", 0.5, 2.0, 4.0),
    ("old-campaign-a", "cvr", 1.0, 1.0, 1.0),
]
OLD_WINDOW_MS = 1_764_547_200_000  # 2025-12-01T00:00:00Z


def create_old(a):
    cat = catalog(a.dir)
    cat.create_namespace("ads")
    t = cat.create_table("ads.campaign_metrics", schema=old_schema(), properties={
        "write.parquet.compression-codec": "zstd", "commit.retry.num-retries": "10"})
    ids = [(f.field_id, f.name) for f in t.schema().fields]
    check(ids == [(i + 1, f.name) for i, f in enumerate(old_schema().fields)], f"created with ids {ids}")
    schema = t.schema().as_arrow()
    ts = lambda ms: pa.scalar(ms * 1000, pa.timestamp("us", tz="UTC"))  # noqa: E731
    cols = defaultdict(list)
    for c, metric, v, n, d in OLD_ROWS:
        for k, x in (("window_start", ts(OLD_WINDOW_MS)), ("window_end", ts(OLD_WINDOW_MS + 60_000)),
                     ("campaign_id", c), ("ad_id", None), ("metric", metric), ("value", v),
                     ("numerator", n), ("denominator", d), ("plugin", metric),
                     ("plugin_version", "0.1.0"), ("plugin_sha256", "0" * 64),
                     ("revision", (1 << 32) | 7), ("is_final", True), ("computed_at", ts(OLD_WINDOW_MS + 61_000)),
                     ("withheld", False), ("kafka_partition", 0), ("stream", "old-stream"),
                     ("restatement", None), ("shadow", False)):
            cols[k].append(x.as_py() if isinstance(x, pa.Scalar) else x)
    t.append(pa.Table.from_pydict(dict(cols), schema=schema))
    t = cat.load_table("ads.campaign_metrics")
    Path(a.dir, "old.json").write_text(json.dumps({
        "uuid": str(t.metadata.table_uuid), "snapshot": t.current_snapshot().snapshot_id,
        "location": t.location()}))
    finish(f"previous release's campaign_metrics (19 fields) with {len(OLD_ROWS)} rows")


def upgraded(a):
    old = json.loads(Path(a.dir, "old.json").read_text())
    t = catalog(a.dir).load_table("ads.campaign_metrics")
    check(str(t.metadata.table_uuid) == old["uuid"], f"table uuid {t.metadata.table_uuid}, was {old['uuid']}: recreated")
    check(t.location() == old["location"], f"location {t.location()}, was {old['location']}")
    ancestors, s = [], t.current_snapshot()
    while s is not None:
        ancestors.append(s.snapshot_id)
        s = t.snapshot_by_id(s.parent_snapshot_id) if s.parent_snapshot_id is not None else None
    check(old["snapshot"] in ancestors, f"the old snapshot {old['snapshot']} is not an ancestor of the current one")
    fields = {f.name: f for f in t.schema().fields}
    for f in old_schema().fields:
        h = fields.get(f.name)
        check(h is not None and (h.field_id, h.field_type, h.required) == (f.field_id, f.field_type, f.required),
              f"column {f.name}: {h}, was {f}")
    for name, fid in (("dimensions", 20), ("plugin_params", 21)):
        h = fields.get(name)
        check(h is not None and (h.field_id, str(h.field_type), h.required) == (fid, "string", False),
              f"column {name}: {h}, want optional string with id {fid}")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    m = t.scan().to_arrow()
    con.register("m", m)
    got = con.execute("""
        SELECT campaign_id, metric, value, numerator, denominator, dimensions, plugin_params, stream
        FROM m WHERE stream = 'old-stream' ORDER BY ALL""").fetchall()
    want = sorted((c, metric, v, n, d, None, None, "old-stream") for c, metric, v, n, d in OLD_ROWS)
    check(got == want, f"old rows now read {got}, want {want}")
    new = con.execute("""
        SELECT count(*), count(DISTINCT plugin), count(dimensions), count(plugin_params)
        FROM m WHERE stream IS DISTINCT FROM 'old-stream'""").fetchone()
    check(new[0] > 0, "no rows written after the upgrade")
    check(new[2] > 0 and new[3] > 0, f"new rows: {new[2]} with dimensions, {new[3]} with plugin_params (want some)")
    cur = {(r["campaign_id"], r["metric"]): r for r in current_metrics(m).to_pylist()
           if r["window_start"].timestamp() * 1000 == OLD_WINDOW_MS}
    for c, metric, v, n, d in OLD_ROWS:
        r = cur.get((c, metric))
        check(r is not None and (r["numerator"], r["denominator"], r["is_final"]) == (n, d, True),
              f"view: {c} {metric} reads {r}, want {n}/{d} final")
    finish(f"upgraded in place (uuid {old['uuid']}): {len(OLD_ROWS)} old rows kept with NULL dimensions "
           f"and plugin_params, {new[0]} new rows of {new[1]} plugins beside them")


def query(a):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    have = set()
    if Path(a.dir, "catalog.db").exists():
        cat = catalog(a.dir)
        if ("ads",) in cat.list_namespaces():
            have = {t[-1] for t in cat.list_tables("ads")}
    for name, table in (("events", "campaign_events"), ("metrics", "campaign_metrics"),
                        ("dead_letters", "dead_letters")):
        if table in have:
            con.register(name, cat.load_table(f"ads.{table}").scan().to_arrow())
        else:
            con.execute(f"CREATE TABLE {name} (nothing INTEGER)")
    rows = con.execute(a.sql).fetch_arrow_table().to_pylist()
    print(json.dumps([list(r.values()) for r in rows], default=str))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("breakdown")
    b.add_argument("--dir", required=True)
    b.add_argument("--plugin", required=True)
    b.add_argument("--metric", help="default: the plugin's name (ctr, cvr)")
    b.add_argument("--dimensions", required=True)
    b.add_argument("--max-values", type=int, default=100)
    b.add_argument("--window-secs", type=int, default=60)
    g = b.add_mutually_exclusive_group()
    g.add_argument("--expect-folded", action="store_true")
    g.add_argument("--expect-unfolded", action="store_true")
    b.add_argument("--folded-values", type=int)
    b.add_argument("--exclude-stream", action="append", default=[])
    p = sub.add_parser("params")
    p.add_argument("--dir", required=True)
    p.add_argument("--expect", action="append", required=True, metavar="NAME=JSON")
    p.add_argument("--wit", action="append", default=[], metavar="NAME=PACKAGE")
    s = sub.add_parser("same")
    s.add_argument("--a", required=True)
    s.add_argument("--b", required=True)
    s.add_argument("--metric", required=True)
    s.add_argument("--version-a")
    s.add_argument("--version-b")
    for name in ("create-old", "upgraded"):
        x = sub.add_parser(name)
        x.add_argument("--dir", required=True)
    q = sub.add_parser("query")
    q.add_argument("--dir", required=True)
    q.add_argument("sql")
    a = ap.parse_args()
    {"breakdown": breakdown, "params": params, "same": same, "create-old": create_old,
     "upgraded": upgraded, "query": query}[a.cmd](a)


if __name__ == "__main__":
    main()
