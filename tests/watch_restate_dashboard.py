"""A dashboard reader polling through a restatement's promote and rollback (tests/restate.rs,
the live-daemon test): every reading must show, for the restated plugin and period, exactly the
promoted restatement's values or exactly the live values, never a mix.

    watch_restate_dashboard.py --catalog DB --warehouse DIR --id ID --duckdb FILE \
        --phase-file F --stop-file S --out LOG.jsonl

What it reads is what Superset reads: the DuckDB file of dashboard/views.sql made by
dashboard/bundle.py (campaign_metrics over iceberg_scan of the table directory with version
guessing, sql/current_metrics.sql, campaign_windows), opened read-only with the connection
settings of dashboard/bundle/databases/admetrics.yaml, a new connection per query. Two queries per
round: the period's rows of the restated plugin in `current_metrics` (every key of it: breakdown
cells too), and the period's `revenue` / `attributed_revenue` per window and campaign in
`campaign_windows` (the dataset of the dashboard's charts, which shows last click: the restated
plugin must be `attribution`). Each is one scan of the table, so each reading is one snapshot.

The two expectations are computed once at the start, independently of DuckDB's iceberg
extension: PyIceberg's scan of campaign_metrics, live rows alone (`live`) or with the plugin's
rows of the period replaced by the restatement's (`promoted`), each through the current-value
rule (tests/current_metrics.py), the way tests/verify_restate.py does. The period's windows must
be final then (the daemon does not write them again), and the two must differ.

Phases: the test writes the phase it is in to --phase-file (`live`, `promoting`, `promoted`,
`promoted-settled`, `rolling-back`, `rolled-back`, `live-settled`, ...; a cycle number may
follow after a colon). A reading is logged with the phase read before and after it. Rules: every
reading is `live` or `promoted`; a reading begun and ended within `live*` / `live-settled*` is
`live`; within `promoted-settled*` it is `promoted`. (Between a promote's return and "settled" a
reading may still be `live`: DuckDB's version guessing takes the highest-named metadata file, and
a daemon commit attempt that lost the catalog race to the promote leaves a file of the same
version number that may sort after the promote's; the test calls the switch settled once the
catalog's current metadata version is above every file present when the command returned.)

Runs until --stop-file exists, then prints a summary and exits 1 if a rule was broken.
"""
import argparse
import json
import math
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog.sql import SqlCatalog

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "dashboard"))
from current_metrics import current_metrics_rows  # noqa: E402
import bundle  # noqa: E402

RECORD = "$restatement"

ap = argparse.ArgumentParser()
ap.add_argument("--catalog", required=True)
ap.add_argument("--warehouse", required=True)
ap.add_argument("--id", required=True)
ap.add_argument("--duckdb", required=True)
ap.add_argument("--phase-file", required=True)
ap.add_argument("--stop-file", required=True)
ap.add_argument("--out", required=True)
a = ap.parse_args()

# ---- expectations (PyIceberg) ----
cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.catalog}", warehouse=f"file://{a.warehouse}")
table = cat.load_table("ads.campaign_metrics").scan().to_arrow()
done = [x for x in table.filter(pc.equal(table.column("metric"), RECORD)).to_pylist()
        if x["restatement"] == a.id and x["numerator"] == -1]
assert len(done) == 1, f"restatement {a.id}: {len(done)} completion records"
us = lambda ts: int(ts.timestamp() * 1_000_000)  # noqa: E731
FROM, TO, PLUGIN = us(done[0]["window_start"]), us(done[0]["window_end"]), done[0]["plugin"]

live_only = table.filter(pc.and_(pc.is_null(table.column("restatement")),
                                 pc.not_equal(table.column("metric"), RECORD)))
plugin_rows = live_only.filter(pc.equal(live_only.column("plugin"), PLUGIN))
METRICS = sorted(set(plugin_rows.column("metric").to_pylist()))
assert METRICS, f"no live rows of {PLUGIN}"
assert PLUGIN == "attribution", f"campaign_windows shows last click (plugin attribution), not {PLUGIN}"

ws = pc.cast(live_only.column("window_start"), pa.int64())
we = pc.cast(live_only.column("window_end"), pa.int64())
in_period = pc.and_(pc.and_(pc.greater_equal(ws, FROM), pc.less_equal(we, TO)),
                    pc.equal(live_only.column("plugin"), PLUGIN))
restated = table.filter(pc.and_(pc.equal(pc.fill_null(table.column("restatement"), ""), a.id),
                                pc.not_equal(table.column("metric"), RECORD)))
assert len(restated) > 0, "no restated rows"
i = restated.schema.get_field_index("restatement")
restated = restated.set_column(i, restated.schema.field(i), pa.nulls(len(restated), pa.string()))
metric_list = ", ".join(f"'{m}'" for m in METRICS)
where = (f"epoch_us(window_start) >= {FROM} AND epoch_us(window_end) <= {TO} AND metric IN ({metric_list}) "
         f"AND plugin = '{PLUGIN}'")


def keyed(rows):
    out = {}
    for x in rows:
        k = (us(x["window_start"]), us(x["window_end"]), x["campaign_id"], x["ad_id"], x["metric"], x["dimensions"])
        out[k] = (x["numerator"], x["denominator"], x["withheld"], x["partitions"])
    return out


def windows_of(cur):
    """campaign_windows' revenue and attributed_revenue per (window, campaign), nonzero only
    (totals of last click)."""
    out = defaultdict(lambda: [0.0, 0.0])
    for (w, _, c, _, m, dims), (num, _, withheld, _) in cur.items():
        if withheld or m not in ("revenue", "attributed_revenue") or dims is not None:
            continue
        out[(w, c)][0 if m == "revenue" else 1] += num
    return {k: tuple(v) for k, v in out.items() if v != [0.0, 0.0]}


live_rows = current_metrics_rows(live_only, where)
EXPECT = {"live": keyed(live_rows),
          "promoted": keyed(current_metrics_rows(pa.concat_tables([live_only.filter(pc.invert(in_period)),
                                                                   restated]), where))}
assert all(x["is_final"] for x in live_rows), "the period's live windows are not all final yet"
assert EXPECT["live"] and EXPECT["promoted"], "nothing to compare"
assert EXPECT["live"] != EXPECT["promoted"], "the restatement equals the live values: nothing to tell apart"
EXPECT_W = {s: windows_of(e) for s, e in EXPECT.items()}
assert EXPECT_W["live"] != EXPECT_W["promoted"], "campaign_windows would not tell the two apart"
n_windows = len({k[0] for k in EXPECT["live"]})

# ---- the dashboard's DuckDB file and connections ----
ext = bundle.extensions_dir()
db = Path(a.duckdb)
bundle.write_views(db, Path(a.warehouse), "ads", ext)
config = bundle.duckdb_config(ext)


def query(sql):
    # Superset's connection: preload iceberg, then the settings (version guessing needs the
    # extension loaded first).
    con = duckdb.connect(str(db), read_only=True, config=config)
    try:
        con.execute("LOAD iceberg")
        con.execute("SET unsafe_enable_version_guessing = true")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def same(x, y):
    return all(math.isclose(float(p), float(q), rel_tol=1e-9, abs_tol=1e-9) if isinstance(p, float) else p == q
               for p, q in zip(x, y))


def classify(got, expect):
    """`live`, `promoted`, or `mixed` with how many keys match each."""
    for s, e in expect.items():
        if got.keys() == e.keys() and all(same(got[k], e[k]) for k in e):
            return s, None
    match = {s: sum(1 for k in e if k in got and same(got[k], e[k])) for s, e in expect.items()}
    return "mixed", {"keys": len(got), "matching": match,
                     "only_here": [str(k) for k in list(got.keys() - set().union(*expect.values()))[:3]]}


def read_current():
    rows = query(f"SELECT epoch_us(window_start), epoch_us(window_end), campaign_id, ad_id, metric, dimensions, "
                 f"numerator, denominator, withheld, partitions FROM current_metrics WHERE {where}")
    return classify({tuple(r[:6]): tuple(r[6:]) for r in rows}, EXPECT)


def read_windows():
    rows = query(f"SELECT epoch_us(window_start), campaign_id, revenue, attributed_revenue FROM campaign_windows "
                 f"WHERE epoch_us(window_start) >= {FROM} AND epoch_us(window_start) < {TO}")
    got = {(r[0], r[1]): (float(r[2]), float(r[3])) for r in rows if (float(r[2]), float(r[3])) != (0.0, 0.0)}
    return classify(got, EXPECT_W)


def phase():
    try:
        return Path(a.phase_file).read_text().strip() or "start"
    except FileNotFoundError:
        return "start"


def base(p):
    return p.split(":")[0]


out = open(a.out, "a")
print(json.dumps({"ready": True, "keys": len(EXPECT["live"]), "windows": n_windows, "metrics": METRICS,
                  "from_us": FROM, "to_us": TO}), file=out, flush=True)
counts = Counter()
violations = []
errors = []
n = 0
while not Path(a.stop_file).exists():
    for name, read in (("current_metrics", read_current), ("campaign_windows", read_windows)):
        before = phase()
        t = time.monotonic()
        try:
            state, detail = read()
        except Exception as e:  # noqa: BLE001  a reader error is logged and counted, then judged
            state, detail = "error", f"{type(e).__name__}: {e}"[:500]
        after = phase()
        n += 1
        rec = {"n": n, "query": name, "before": before, "after": after, "state": state,
               "seconds": round(time.monotonic() - t, 3)}
        if detail:
            rec["detail"] = detail
        print(json.dumps(rec), file=out, flush=True)
        counts[(base(before) if before == after else f"{base(before)}->{base(after)}", name, state)] += 1
        if state == "error":
            errors.append(rec)
        elif state == "mixed":
            violations.append(rec)
        elif before == after and base(before) in ("live", "live-settled") and state != "live":
            violations.append(rec)
        elif before == after and base(before) == "promoted-settled" and state != "promoted":
            violations.append(rec)

print(f"{n} readings of the restated period ({len(EXPECT['live'])} keys of {METRICS} over {n_windows} windows):")
for (ph, name, state), c in sorted(counts.items()):
    print(f"  {ph:32} {name:17} {state:9} {c}")
print(f"reader errors: {len(errors)}" + (f", e.g. {errors[0]}" if errors else ""))
if violations:
    print(f"{len(violations)} readings broke the rules, e.g.:")
    for v in violations[:5]:
        print(f"  {v}")
    sys.exit(1)
if errors:
    sys.exit(1)
print("every reading showed exactly the live values or exactly the promoted restatement's")
