#!/usr/bin/env python3
"""Checks the `reach` plugin's rows in ads.campaign_metrics against distinct users counted here,
exactly, from ads.campaign_events (PyIceberg reads the tables through the SQLite catalog, DuckDB
counts; neither shares code with the plugin or the Rust writer).

    verify_reach.py --catalog DB --warehouse DIR [--window day|hour|minute]
        [--exact-threshold 1536] [--sigmas 3] [--tz CAMPAIGN=ZONE ...] [--default-tz UTC]
        [--exclude-campaign ID ...] [--late exclude|include] [--open check|skip]
        [--require-final] [--expect-sketched] [--expect-exact] [--plugin reach] [--namespace ads]

What is expected (plugins/reach/src/lib.rs is the definition):
- The events counted: `event_type = 'impression'`, not `is_duplicate`, not `is_late` (as in
  verify_e2e.py; `--late include` counts late events too, for a host whose `is_late` refers to
  a shorter window than the plugin's), campaigns not excluded (`--exclude-campaign flush` for the
  far-future watermark events of the e2e inputs).
- Windows: UTC-aligned minutes or hours, or calendar days in the campaign's time zone
  (`--tz CAMPAIGN=ZONE` as in the host's `[campaigns]`, else `--default-tz`, UTC): 23 or 25 hours
  on a daylight-saving change. Computed here with zoneinfo; the rows' window_start and window_end
  must be these.
- A row is one (stream, Kafka partition) share; per share the latest revision counts (live rows:
  no restatement, no shadow; totals only: `dimensions` NULL or empty if the table has the
  column). For every share with impressions: `reach` has denominator = the share's impressions
  exactly and value = numerator = its distinct user_ids, exactly when there are at most
  `--exact-threshold` of them, else within `--sigmas` x 1.04/sqrt(2^14) (0.8125 %) relative (3
  sigma: 2.44 %), and never above the impressions; `frequency` has numerator = impressions,
  denominator = that share's reach value, value = their ratio (0 if the denominator is 0). No
  other metric, no ad_id, no share without impressions, no withheld row.
- Per (window, campaign) the shares summed (as sql/current_metrics.sql sums them) against the sum
  of the shares' exact counts (tolerance: the sketched shares' bounds added). The true reach, the
  distinct users over all shares, equals that sum only if no user has impressions in two shares
  (producers key by user id, so within a stream they do not): users seen in several shares are
  counted and reported as a NOTE, since summed shares count them once per share by design.
- The view sql/current_metrics.sql (tests/current_metrics.py) over the plugin's rows gives the
  same numerators and denominators; its `frequency` value is checked only once the view
  re-derives frequency as a rate (its text names 'frequency'), else a NOTE says it reads
  Σnumerator.
- Keys (window, campaign) whose shares are not all final are checked too with `--open check`
  (the default: after the daemon drained its input and stopped, its latest revisions hold every
  committed event), skipped and counted with `--open skip` (while it runs); `--require-final`
  fails on any such key.

Run end to end by tests/wit02.rs (minute windows; day windows in campaign time zones across
midnight and a daylight-saving change, with events late for the host's minute windows that the
day windows still count: `--late include`). Prints one line per problem and exits 1 if any.
"""
import argparse
import math
import sys
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import duckdb
import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from current_metrics import current_metrics, sql as view_sql  # noqa: E402

PRECISION = 14
STANDARD_ERROR = 1.04 / math.sqrt(2 ** PRECISION)
WINDOW_US = {"minute": 60_000_000, "hour": 3_600_000_000}
BUCKET_US = 15 * 60 * 1_000_000  # every current UTC offset is a multiple of 15 minutes
METRICS = ("reach", "frequency")

problems = []
notes = []


def check(cond, msg):
    if not cond:
        problems.append(msg)
    return cond


def us_iso(us):
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat().replace("+00:00", "Z")


def day_window(bucket_us, zone):
    """[start, end) in µs of the calendar day in `zone` holding the instant `bucket_us`."""
    local = datetime.fromtimestamp(bucket_us / 1e6, zone)
    start = datetime(local.year, local.month, local.day, tzinfo=zone)
    nxt = start.date() + timedelta(days=1)
    end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=zone)
    return round(start.timestamp() * 1e6), round(end.timestamp() * 1e6)


def with_columns(table, wanted):
    """`table` with every column of `wanted` (name -> arrow type), missing ones as nulls (tables
    written before the column existed)."""
    for name, typ in wanted.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, typ))
    return table


def totals_predicate(table):
    """SQL keeping total rows: `dimensions` NULL or empty, whatever its type."""
    typ = table.schema.field("dimensions").type
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return "coalesce(dimensions, '') = ''"
    if pa.types.is_null(typ):
        return "TRUE"
    if pa.types.is_map(typ):
        return "(dimensions IS NULL OR cardinality(dimensions) = 0)"
    return "(dimensions IS NULL OR len(dimensions) = 0)"  # a list of (column, value)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--catalog", required=True)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--namespace", default="ads")
    ap.add_argument("--plugin", default="reach")
    ap.add_argument("--window", choices=("minute", "hour", "day"), default="day")
    ap.add_argument("--exact-threshold", type=int, default=1536)
    ap.add_argument("--sigmas", type=float, default=3.0)
    ap.add_argument("--tz", action="append", default=[], metavar="CAMPAIGN=ZONE")
    ap.add_argument("--default-tz", default="UTC")
    ap.add_argument("--exclude-campaign", action="append", default=[])
    ap.add_argument("--late", choices=("exclude", "include"), default="exclude")
    ap.add_argument("--open", choices=("check", "skip"), default="check")
    ap.add_argument("--require-final", action="store_true")
    ap.add_argument("--expect-sketched", action="store_true",
                    help="input design: some share has more users than the threshold")
    ap.add_argument("--expect-exact", action="store_true",
                    help="input design: some share has at most the threshold")
    a = ap.parse_args()
    zones = {}
    for spec in a.tz:
        campaign, _, zone = spec.partition("=")
        zones[campaign] = ZoneInfo(zone)
    default_zone = ZoneInfo(a.default_tz)
    rel_bound = a.sigmas * STANDARD_ERROR

    cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.catalog}", warehouse=f"file://{a.warehouse}")
    events_t = cat.load_table((a.namespace, "campaign_events"))
    metrics_t = cat.load_table((a.namespace, "campaign_metrics"))
    ev_cols = [f.name for f in events_t.schema().fields]
    want_ev = [c for c in ("event_type", "event_time", "campaign_id", "user_id", "kafka_partition",
                           "is_late", "is_duplicate", "stream") if c in ev_cols]
    events = with_columns(events_t.scan(selected_fields=tuple(want_ev)).to_arrow(), {"stream": pa.string()})
    metrics = with_columns(metrics_t.scan().to_arrow(), {
        "stream": pa.string(), "restatement": pa.string(), "shadow": pa.bool_(), "dimensions": pa.string()})

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("events_raw", events)
    con.register("metrics_raw", metrics)

    # ---- the impressions counted, with their windows
    late = "" if a.late == "include" else "AND NOT is_late"
    con.execute("CREATE TEMP TABLE excluded (campaign_id VARCHAR)")
    if a.exclude_campaign:  # executemany refuses an empty list
        con.executemany("INSERT INTO excluded VALUES (?)", [[c] for c in a.exclude_campaign])
    con.execute(f"""
        CREATE TEMP TABLE imp AS
        SELECT campaign_id, user_id, stream, kafka_partition AS part, epoch_us(event_time) AS t
        FROM events_raw
        WHERE event_type = 'impression' AND NOT is_duplicate {late}
          AND campaign_id NOT IN (SELECT campaign_id FROM excluded)""")
    if a.window in WINDOW_US:
        size = WINDOW_US[a.window]
        con.execute(f"""
            CREATE TEMP TABLE imp_w AS
            SELECT *, t - ((t % {size}) + {size}) % {size} AS ws,
                      t - ((t % {size}) + {size}) % {size} + {size} AS we
            FROM imp""")
    else:
        buckets = con.execute(
            f"SELECT DISTINCT campaign_id, t // {BUCKET_US} AS b FROM imp").fetchall()
        wins = [(c, b, *day_window(b * BUCKET_US, zones.get(c, default_zone))) for c, b in buckets]
        con.execute("CREATE TEMP TABLE win (campaign_id VARCHAR, b BIGINT, ws BIGINT, we BIGINT)")
        if wins:
            con.executemany("INSERT INTO win VALUES (?, ?, ?, ?)", wins)
        con.execute(f"""
            CREATE TEMP TABLE imp_w AS
            SELECT i.*, w.ws, w.we FROM imp i
            JOIN win w ON w.campaign_id = i.campaign_id AND w.b = i.t // {BUCKET_US}""")

    # share = (stream, partition); key = (window, campaign)
    expected = {}  # (ws, we, campaign, stream, part) -> (impressions, distinct users)
    for ws, we, c, s, p, n_imp, n_users in con.execute("""
            SELECT ws, we, campaign_id, stream, part, count(*), count(DISTINCT user_id)
            FROM imp_w GROUP BY ALL""").fetchall():
        expected[(ws, we, c, s, p)] = (n_imp, n_users)
    true_reach = {(ws, we, c): n for ws, we, c, n in con.execute(
        "SELECT ws, we, campaign_id, count(DISTINCT user_id) FROM imp_w GROUP BY ALL").fetchall()}
    cross = con.execute("""
        SELECT count(*), count(DISTINCT (ws, campaign_id)) FROM (
            SELECT ws, campaign_id, user_id FROM imp_w GROUP BY ALL
            HAVING count(DISTINCT (coalesce(stream, ''), part)) > 1)""").fetchone()
    if cross[0]:
        notes.append(f"{cross[0]} (window, campaign, user) triples have impressions in several "
                     f"shares (in {cross[1]} keys): summed shares count each once per share")

    # ---- the plugin's rows: live, not shadow, totals; latest revision per share
    totals = totals_predicate(metrics)
    con.execute(f"""
        CREATE TEMP TABLE rows AS
        SELECT epoch_us(window_start) AS ws, epoch_us(window_end) AS we, campaign_id, ad_id, metric,
               value, numerator, denominator, revision, is_final, withheld, stream,
               kafka_partition AS part
        FROM metrics_raw
        WHERE plugin = ? AND shadow IS NOT TRUE AND restatement IS NULL AND {totals}
          AND metric <> '$restatement'
          AND campaign_id NOT IN (SELECT campaign_id FROM excluded)""", [a.plugin])
    n_rows = con.execute("SELECT count(*) FROM rows").fetchone()[0]
    check(n_rows > 0, f"no live total rows of plugin {a.plugin!r} in campaign_metrics")
    other = con.execute(f"SELECT DISTINCT metric FROM rows WHERE metric NOT IN {METRICS}").fetchall()
    check(not other, f"plugin {a.plugin} wrote metrics it does not declare: {[m for m, in other]}")
    with_ad = con.execute("SELECT count(*) FROM rows WHERE ad_id IS NOT NULL").fetchone()[0]
    check(with_ad == 0, f"{with_ad} rows of plugin {a.plugin} carry an ad_id")
    latest = {}  # (ws, we, campaign, stream, part) -> {metric: row}
    for ws, we, c, s, p, metric, r in con.execute(f"""
            SELECT ws, we, campaign_id, stream, part, metric,
                   arg_max(struct_pack(value, numerator, denominator, is_final, withheld), revision)
            FROM rows WHERE metric IN {METRICS} GROUP BY ALL""").fetchall():
        latest.setdefault((ws, we, c, s, p), {})[metric] = r

    def where(share):
        ws, we, c, s, p = share
        return f"window {us_iso(ws)}..{us_iso(we)} campaign {c} stream {s} partition {p}"

    extra = sorted(set(latest) - set(expected), key=str)
    check(not extra, f"{len(extra)} shares with rows but no counted impression, e.g. "
                     f"{[where(k) for k in extra[:3]]}")
    bad_windows = sorted({(ws, we, c) for ws, we, c, s, p in latest} - {k[:3] for k in expected}, key=str)
    check(not bad_windows, f"rows on windows the events do not give ({a.window}, zones as given): "
                           f"{[(us_iso(ws), us_iso(we), c) for ws, we, c in bad_windows[:3]]}")

    # ---- per share
    keys = defaultdict(list)  # (ws, we, campaign) -> shares
    for share in expected:
        keys[share[:3]].append(share)
    final_keys = {k for k, shares in keys.items()
                  if all(latest.get(s, {}).get(m) and latest[s][m]["is_final"] for s in shares for m in METRICS)}
    open_keys = set(keys) - final_keys
    if a.require_final:
        check(not open_keys, f"{len(open_keys)} keys not final, e.g. {sorted(open_keys, key=str)[:3]}")
    checked = [k for k in keys if k in final_keys or a.open == "check"]
    n_exact = n_sketched = 0
    worst = (0.0, None)
    for key in checked:
        for share in keys[key]:
            n_imp, n_users = expected[share]
            got = latest.get(share, {})
            if not check(set(got) == set(METRICS), f"{where(share)}: rows for {sorted(got)}, want {list(METRICS)}"):
                continue
            reach, freq = got["reach"], got["frequency"]
            if not check(not reach["withheld"] and not freq["withheld"], f"{where(share)}: withheld"):
                continue
            v = reach["value"]
            check(reach["numerator"] == v, f"{where(share)}: reach numerator {reach['numerator']} != value {v}")
            check(reach["denominator"] == n_imp, f"{where(share)}: reach denominator {reach['denominator']}, want impressions {n_imp}")
            check(v == int(v) and 0 < v <= n_imp, f"{where(share)}: reach {v} not an integer in 1..impressions {n_imp}")
            if n_users <= a.exact_threshold:
                n_exact += 1
                check(v == n_users, f"{where(share)}: reach {v}, exactly {n_users} distinct users (at most the threshold {a.exact_threshold})")
            else:
                n_sketched += 1
                rel = (v - n_users) / n_users
                if abs(rel) >= abs(worst[0]):
                    worst = (rel, share)
                check(abs(rel) <= rel_bound, f"{where(share)}: reach {v} vs {n_users} distinct users: "
                                             f"relative error {rel:+.4%} past {rel_bound:.4%}")
            want_f = n_imp / v if v else 0.0
            check(freq["numerator"] == n_imp and freq["denominator"] == v
                  and abs(freq["value"] - want_f) <= 1e-12 * max(1.0, want_f),
                  f"{where(share)}: frequency {freq['numerator']}/{freq['denominator']}={freq['value']}, "
                  f"want {n_imp}/{v}={want_f}")

    # ---- per key: shares summed, and the view's reading
    summed = {}
    for key in checked:
        shares = keys[key]
        if not all(set(latest.get(s, {})) == set(METRICS) for s in shares):
            continue
        got = sum(latest[s]["reach"]["value"] for s in shares)
        exact_sum = sum(expected[s][1] for s in shares)
        tol = sum(rel_bound * expected[s][1] for s in shares if expected[s][1] > a.exact_threshold)
        check(abs(got - exact_sum) <= tol + 1e-9,
              f"window {us_iso(key[0])} campaign {key[2]}: summed reach {got}, shares' distinct users {exact_sum} (tolerance {tol:.1f})")
        if true_reach[key] != exact_sum:
            notes.append(f"window {us_iso(key[0])} campaign {key[2]}: distinct users over all shares "
                         f"{true_reach[key]}, summed over shares {exact_sum}")
        summed[key] = (got, sum(expected[s][0] for s in shares))

    plugin_rows = con.execute(f"""
        SELECT * FROM metrics_raw
        WHERE plugin = ? AND {totals} AND campaign_id NOT IN (SELECT campaign_id FROM excluded)""",
                              [a.plugin]).fetch_arrow_table()
    view_has_frequency = "'frequency'" in view_sql()
    if not view_has_frequency:
        notes.append("sql/current_metrics.sql re-derives only ctr and cvr as rates: its frequency "
                     "value reads Σnumerator (impressions); checked here from numerator/denominator")
    view = {}
    cur = current_metrics(plugin_rows)
    ws_col = cur.column("window_start").cast(pa.int64()).to_pylist()
    we_col = cur.column("window_end").cast(pa.int64()).to_pylist()
    for ws, we, r in zip(ws_col, we_col, cur.to_pylist()):
        view[(ws, we, r["campaign_id"], r["metric"])] = r
    for key, (reach, imps) in summed.items():
        vr, vf = view.get(key + ("reach",)), view.get(key + ("frequency",))
        if not check(vr is not None and vf is not None, f"view: no reach/frequency for window {us_iso(key[0])} campaign {key[2]}"):
            continue
        if vr["withheld"] or vf["withheld"]:
            problems.append(f"view: window {us_iso(key[0])} campaign {key[2]} withheld")
            continue
        check(vr["value"] == reach and vr["numerator"] == reach and vr["denominator"] == imps,
              f"view: reach {vr['value']} ({vr['numerator']}/{vr['denominator']}), shares give {reach} over {imps}")
        check(vf["numerator"] == imps and vf["denominator"] == reach,
              f"view: frequency {vf['numerator']}/{vf['denominator']}, shares give {imps}/{reach}")
        if view_has_frequency:
            want = imps / reach if reach else 0.0
            check(abs(vf["value"] - want) <= 1e-12 * max(1.0, want), f"view: frequency value {vf['value']}, want {want}")

    if a.expect_sketched:
        check(n_sketched > 0, f"input design: no share with more than {a.exact_threshold} users")
    if a.expect_exact:
        check(n_exact > 0, f"input design: no share with at most {a.exact_threshold} users")
    check(keys, "no impressions counted")

    print(f"impressions counted {sum(n for n, _ in expected.values())} (late {a.late}d), "
          f"{a.window} windows; keys {len(keys)} ({len(final_keys)} final, {len(open_keys)} open: "
          f"{'checked' if a.open == 'check' else 'skipped'}); shares checked: "
          f"{n_exact} exact, {n_sketched} sketched; rows of {a.plugin}: {n_rows}")
    if worst[1] is not None:
        print(f"largest sketched error {worst[0]:+.4%} ({where(worst[1])}, "
              f"{expected[worst[1]][1]} users; bound {rel_bound:.4%})")
    for n in notes[:20]:
        print("NOTE:", n)
    if problems:
        print(f"{len(problems)} PROBLEMS:")
        for p in problems[:60]:
            print("  -", p)
        sys.exit(1)
    print("OK: reach and frequency match the distinct users counted from campaign_events")


if __name__ == "__main__":
    main()
