#!/usr/bin/env python3
"""scripts/maintain.py's drop_superseded (compaction drops the revisions of campaign_metrics a
higher revision of the same share replaced) against a brute-force reference and against the
view readers use, over generated rows with the cases a running table holds:

- shares of several partitions and two streams (one NULL, as rows older than the column), ads
  NULL and not, breakdown cells NULL and not, revisions of two owners' epochs, ties;
- rows of a restatement and its promote/rollback records, shadow rows, a second plugin build
  (another sha256) writing the same keys, rows without a revision, final and withheld rows.

Checks: (1) the rows kept are exactly those no row equal in every identity column (all but the
values, is_final, withheld, computed_at) beats with a strictly higher revision, and every
restatement record (brute force, NULLs equal); (2) sql/current_metrics.sql gives the same answer over the kept rows as over all of
them, every column; (3) some rows were dropped and the schema is unchanged; (4) a second pass drops
nothing. Several seeds. Run by tests/maintenance.rs; prints what it checked, exits 1 otherwise.
"""
import random
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "scripts"), str(HERE)]
from current_metrics import current_metrics  # noqa: E402
from maintain import drop_superseded  # noqa: E402

# What may differ between revisions of one share, stated here rather than imported, so that the
# reference below is independent of the code it checks.
PER_REVISION = {"revision", "value", "numerator", "denominator", "is_final", "withheld", "computed_at"}

UTC = timezone.utc
T0 = datetime(2026, 3, 1, tzinfo=UTC)
SCHEMA = pa.schema([
    ("window_start", pa.timestamp("us", tz="UTC")), ("window_end", pa.timestamp("us", tz="UTC")),
    ("campaign_id", pa.string()), ("ad_id", pa.string()), ("metric", pa.string()),
    ("value", pa.float64()), ("numerator", pa.float64()), ("denominator", pa.float64()),
    ("plugin", pa.string()), ("plugin_version", pa.string()), ("plugin_sha256", pa.string()),
    ("revision", pa.int64()), ("is_final", pa.bool_()), ("computed_at", pa.timestamp("us", tz="UTC")),
    ("withheld", pa.bool_()), ("kafka_partition", pa.int32()), ("stream", pa.string()),
    ("restatement", pa.string()), ("shadow", pa.bool_()), ("dimensions", pa.string()),
    ("plugin_params", pa.string()), ("currency", pa.string()),
])


def generate(seed: int) -> pa.Table:
    rnd = random.Random(seed)
    rows = []

    def row(**kw):
        r = {f.name: None for f in SCHEMA}
        r.update(plugin_version="1.0.0", plugin_sha256="aa", is_final=False, withheld=False,
                 computed_at=T0, kafka_partition=0)
        r.update(kw)
        num, den = r.get("numerator") or 0.0, r.get("denominator") or 0.0
        r.update(numerator=float(num), denominator=float(den), value=num / den if den else float(num))
        rows.append(r)

    for w in range(3):
        ws, we = T0 + timedelta(minutes=w), T0 + timedelta(minutes=w + 1)
        for campaign in ("c1", "c2"):
            for plugin, metric, ads, dims in (("ctr", "ctr", [None], [None, "country=DE", "country=FR"]),
                                              ("cvr", "cvr", [None], [None]),
                                              ("attribution", "attributed_revenue", ["a1", "a2"], [None])):
                for ad in ads:
                    for dim in dims:
                        for stream in (None, "backfill"):
                            for part in range(3):
                                if rnd.random() < 0.25:
                                    continue  # no event of this share in the window
                                epoch = rnd.choice([1, 2])
                                for seq in sorted(rnd.sample(range(1, 40), rnd.randint(1, 6))):
                                    # Every commit has its own revision: live rows at 4k, a
                                    # rebuild's at 4k + 1, a shadow's at 4k + 2 (the view picks
                                    # among builds by revision, so none may tie across builds).
                                    rev = epoch << 32 | seq * 4
                                    n = rnd.randint(0, 50)
                                    common = dict(window_start=ws, window_end=we, campaign_id=campaign, ad_id=ad,
                                                  metric=metric, plugin=plugin, dimensions=dim, stream=stream,
                                                  kafka_partition=part, numerator=n, denominator=n + rnd.randint(0, 50),
                                                  revision=rev, is_final=rnd.random() < 0.3,
                                                  withheld=rnd.random() < 0.05,
                                                  computed_at=T0 + timedelta(seconds=seq))
                                    row(**common)
                                    if rnd.random() < 0.1:  # a tie: the same revision written twice
                                        row(**common)
                                    if rnd.random() < 0.2:  # the same build loaded as a shadow
                                        row(**{**common, "shadow": True, "numerator": n + 1,
                                               "revision": rev + 2})
                                    if plugin == "ctr" and rnd.random() < 0.3:  # a rebuild, same version
                                        row(**{**common, "plugin_sha256": "cc", "revision": rev + 1})
                                    if plugin == "ctr" and w == 1 and rnd.random() < 0.4:  # restated rows
                                        row(**{**common, "restatement": "r1", "numerator": n + 2})
        # Rows older than the revision column: never dropped.
        row(window_start=ws, window_end=we, campaign_id="c1", metric="ctr", plugin="ctr", numerator=1,
            denominator=2, revision=None)
    # r1 done (numerator -1), promoted, rolled back, promoted again (the latest promote/rollback
    # decides, the done record must stay beside them), over window 1.
    for seq, promoted in ((1, -1), (2, 1), (3, 0), (4, 1)):
        row(window_start=T0 + timedelta(minutes=1), window_end=T0 + timedelta(minutes=2), campaign_id="",
            metric="$restatement", plugin="ctr", restatement="r1", numerator=promoted, denominator=0,
            revision=seq, withheld=True)
    rnd.shuffle(rows)
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def reference(table: pa.Table) -> list:
    """The rows no identical share beats with a strictly higher revision (quadratic, obviously right)."""
    rows = table.to_pylist()
    ident = [n for n in table.column_names if n not in PER_REVISION]
    best = {}
    for r in rows:
        if r["revision"] is not None:
            k = tuple(r[n] for n in ident)
            best[k] = max(best.get(k, r["revision"]), r["revision"])
    return [r for r in rows if r["revision"] is None or r["metric"].startswith("$")
            or r["revision"] == best[tuple(r[n] for n in ident)]]


def canon(rows: list) -> list:
    return sorted(repr(sorted(r.items())) for r in rows)


def main() -> int:
    problems = []
    for seed in range(5):
        table = generate(seed)
        kept, dropped = drop_superseded(table)
        want = reference(table)
        if canon(kept.to_pylist()) != canon(want):
            problems.append(f"seed {seed}: kept {kept.num_rows} rows, the reference keeps {len(want)}")
        if dropped != table.num_rows - kept.num_rows or dropped == 0:
            problems.append(f"seed {seed}: dropped {dropped} of {table.num_rows}, kept {kept.num_rows}")
        if not kept.schema.equals(table.schema):
            problems.append(f"seed {seed}: schema changed: {kept.schema}")
        before, after = current_metrics(table), current_metrics(kept)
        if before.to_pylist() != after.to_pylist():
            problems.append(f"seed {seed}: current_metrics differs ({before.num_rows} keys before, "
                            f"{after.num_rows} after)")
        again, twice = drop_superseded(kept)
        if twice:
            problems.append(f"seed {seed}: a second pass dropped {twice} more rows")
        print(f"seed {seed}: {table.num_rows} rows, {dropped} superseded dropped, {kept.num_rows} kept "
              f"(= reference); current_metrics equal over {before.num_rows} keys")
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
