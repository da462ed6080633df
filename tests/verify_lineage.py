"""Checks scripts/lineage.py (tests/lineage.rs) against what this script finds on its own.

    verify_lineage.py --catalog DB --warehouse DIR events-snapshot
    verify_lineage.py --catalog DB --warehouse DIR check --restatement ID --events-snapshot N \
        --from T1 --to T2 --restated-plugin V2.wasm --plugin ctr.wasm --plugin cvr.wasm ...

`events-snapshot`: prints the current snapshot id of campaign_events.

`check`: picks keys of the current-value view (sql/current_metrics.sql): live keys of ctr, cvr,
revenue and attributed_revenue, and ctr keys inside the restated period, and runs
`scripts/lineage.py --json --events` for each. Its answer must agree with:
- the view (the current value) and this script's own choice of shares: per (stream,
  partition) the latest revision among the live rows, or among the restatement's rows for ctr
  windows of the promoted period;
- the plugin builds: sha256 hashed here from the .wasm files, the version from the plugin's
  Cargo.toml, the WIT package read from the component's bytes (its `admetrics:metrics/types@V`
  import) and equal to wit/admetrics.wit's package, parameters {};
- the run: live, or the restatement given, complete, promoted, with the period given and the
  events snapshot that was current before it started;
- the commit: for a live row, the snapshot this script finds by the row's revision (topic,
  commit sequence, epoch), whose admetrics.offsets give the share's source range; for a restated
  row, the restatement's first commit whose progress reaches the window's end; found by data
  file, or after `--compacted` (scripts/maintain.py rewrote the files) by revision / progress;
- the events: this script's own PyIceberg scan of campaign_events (stream, partition, window,
  campaign, not late, not duplicate, below that offset; at the pinned snapshot for a restated
  row) must be exactly the events listed, and their counts must give the row's numerator and
  denominator (ctr, cvr, revenue). A final live row must be given by every counted event of its
  window, with no offset bound. For attribution's metrics the listed conversions must be this
  script's, and the script's last-click recount (the shipped plugin's model) must give the row.
"""
import argparse
import concurrent.futures
import hashlib
import json
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
from pyiceberg.catalog.sql import SqlCatalog

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
from current_metrics import current_metrics_rows  # noqa: E402

RECORD = "$restatement"

ap = argparse.ArgumentParser()
ap.add_argument("--catalog", required=True)
ap.add_argument("--warehouse", required=True)
sub = ap.add_subparsers(dest="cmd", required=True)
sub.add_parser("events-snapshot")
c = sub.add_parser("check")
c.add_argument("--restatement", required=True)
c.add_argument("--events-snapshot", type=int, required=True)
c.add_argument("--from", dest="from_", required=True)
c.add_argument("--to", required=True)
c.add_argument("--restated-plugin", required=True)
c.add_argument("--plugin", action="append", required=True)
c.add_argument("--compacted", action="store_true",
               help="scripts/maintain.py rewrote data files: commits are found by revision / progress")
a = ap.parse_args()

cat = SqlCatalog("admetrics", uri=f"sqlite:///{a.catalog}", warehouse=f"file://{a.warehouse}")
metrics_t = cat.load_table("ads.campaign_metrics")
events_t = cat.load_table("ads.campaign_events")

if a.cmd == "events-snapshot":
    print(events_t.current_snapshot().snapshot_id)
    sys.exit(0)


def utc(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)


def iso(t):
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def props(snap):
    s = snap.summary
    extra = getattr(s, "additional_properties", None)
    return dict(extra) if extra is not None else {k: s[k] for k in s}


HOST_WIT = re.search(r"^package\s+([^;]+);", (REPO / "wit/admetrics.wit").read_text(), re.M).group(1).strip()
WORKSPACE_VERSION = re.search(r'\[workspace\.package\][^\[]*?version\s*=\s*"([^"]+)"',
                              (REPO / "Cargo.toml").read_text(), re.S).group(1)


def build_of(wasm: str, cargo_dir: Path):
    """(version, sha256, wit) of a plugin build, found without the host."""
    data = Path(wasm).read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    m = re.search(rb"admetrics:metrics/[a-z-]+@([0-9][0-9A-Za-z.+-]*)", data)
    assert m, f"{wasm}: no admetrics:metrics interface named in the component"
    wit = "admetrics:metrics@" + m.group(1).decode()
    toml = (cargo_dir / "Cargo.toml").read_text()
    own = re.search(r'^version\s*=\s*"([^"]+)"', toml, re.M)
    version = own.group(1) if own else WORKSPACE_VERSION
    return {"version": version, "sha256": sha, "wit": wit}


builds = {Path(p).stem: build_of(p, REPO / "plugins" / Path(p).stem) for p in a.plugin}
v2 = build_of(a.restated_plugin, REPO / "plugins/fixtures/ctr-v2")
for name, b in list(builds.items()) + [("ctr v2", v2)]:
    assert b["wit"] == HOST_WIT, f"{name}: built against {b['wit']}, the host's WIT is {HOST_WIT}"
assert v2["version"] == "0.2.0" and v2["sha256"] != builds["ctr"]["sha256"], v2

period = (utc(a.from_), utc(a.to))
rows = metrics_t.scan().to_arrow()
if "shadow" not in rows.column_names:  # tables written before shadow plugins
    rows = rows.append_column("shadow", pa.nulls(rows.num_rows, pa.bool_()))
all_rows = rows.to_pylist()
view = [r for r in current_metrics_rows(rows, "dimensions IS NULL") if r["metric"] != RECORD and not r["withheld"]]
snaps = {s.snapshot_id: props(s) for s in metrics_t.snapshots()}
with_plugins = [p for p in snaps.values() if "admetrics.plugins" in p]
live_commits = {p["admetrics.commit-seq"] for p in with_plugins if "admetrics.restatement" not in p}
assert len(live_commits) >= 3, f"the daemon made {len(live_commits)} metrics commits with rows: want several"


def in_period(ws):
    return period[0] <= ws < period[1]


def restated(key):
    return key["metric"] == "ctr" and in_period(key["window_start"])


def pick(pred, n, why):
    got = [k for k in view if pred(k)]
    assert len(got) >= n, f"want {n} keys {why}, found {len(got)}"
    # Spread over the table: first, middle, last.
    return [got[i * (len(got) - 1) // max(1, n - 1)] for i in range(n)] if n > 1 else got[:1]


keys = []
keys += pick(lambda k: k["metric"] == "ctr" and not restated(k) and k["partitions"] == 2 and k["is_final"], 2,
             "live final ctr with two shares")
open_ctr = [k for k in view if k["metric"] == "ctr" and not restated(k) and not k["is_final"]]
keys += open_ctr[:1]
keys += pick(lambda k: k["metric"] == "cvr" and k["denominator"] > 0, 2, "cvr")
keys += pick(lambda k: k["metric"] == "revenue" and k["numerator"] > 0, 2, "revenue")
keys += pick(lambda k: k["metric"] == "attributed_revenue", 2, "attributed_revenue")
# (The generated users click before they convert: unattributed revenue is mostly 0.)
keys += sorted((k for k in view if k["metric"] == "unattributed_revenue"), key=lambda k: -k["numerator"])[:1]
keys += pick(lambda k: restated(k) and k["partitions"] == 2, 2, "restated ctr with two shares")


def lineage(k, text=False):
    cmd = [sys.executable, str(REPO / "scripts/lineage.py"), "--catalog", a.catalog, "--warehouse", a.warehouse,
           "--window", iso(k["window_start"]), "--campaign", k["campaign_id"], "--metric", k["metric"],
           "--plugin", k["plugin"]]
    if k["ad_id"] is not None:
        cmd += ["--ad", k["ad_id"]]
    cmd += [] if text else ["--json", "--events"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, f"{cmd}\n{out.stdout}\n{out.stderr}"
    return out.stdout if text else json.loads(out.stdout)


def close(x, y):
    return abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y))


_events_at = {}


def own_events(stream, partition, k, below=None, snapshot_id=None, any_campaign=False):
    """The counted events of a share, from one plain scan of the whole events table (at
    `snapshot_id`, else the current snapshot), filtered here."""
    if snapshot_id not in _events_at:
        _events_at[snapshot_id] = events_t.scan(snapshot_id=snapshot_id).to_arrow().to_pylist()
    return [e for e in _events_at[snapshot_id]
            if e["stream"] == stream and e["kafka_partition"] == partition
            and k["window_start"] <= e["event_time"] < k["window_end"]
            and (below is None or e["kafka_offset"] < below)
            and not e["is_late"] and not e["is_duplicate"]
            and (any_campaign or e["campaign_id"] == k["campaign_id"])]


def counts(evs, metric):
    n = {t: sum(1 for e in evs if e["event_type"] == t) for t in ("impression", "click", "conversion")}
    rev = sum(float(e["revenue"] or 0) for e in evs if e["event_type"] == "conversion")
    return {"ctr": (n["click"], n["impression"]), "cvr": (n["conversion"], n["click"]),
            "revenue": (rev, n["conversion"])}[metric]


checked_events = older_revisions = 0
found_by = {}
# Each run is a fresh interpreter (mostly imports): two at a time, on this 2-core machine.
with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
    answers = list(pool.map(lineage, keys))
for k, ans in zip(keys, answers):
    name = f"{k['metric']} {k['campaign_id']} {k['ad_id']} {iso(k['window_start'])}"
    # The value shown, and the shares it is the sum of.
    cur, tot = ans["current"], ans["sum_of_shares"]
    assert close(cur["numerator"], k["numerator"]) and close(cur["denominator"], k["denominator"]), (name, cur, k)
    assert close(tot["numerator"], k["numerator"]) and close(tot["denominator"], k["denominator"]), (name, tot, k)
    assert close(tot["value"], k["value"]) and cur["partitions"] == len(ans["shares"]) == k["partitions"], (name, ans)
    is_restated = restated(k)
    mine = [r for r in all_rows
            if (r["window_start"], r["campaign_id"], r["ad_id"], r["metric"])
            == (k["window_start"], k["campaign_id"], k["ad_id"], k["metric"])]
    older_revisions += len(mine) > len(ans["shares"])
    mine = [r for r in mine if r["restatement"] == (a.restatement if is_restated else None) and not r.get("shadow")]
    latest = {}
    for r in mine:
        s = (r["stream"], r["kafka_partition"])
        if s not in latest or r["revision"] > latest[s]["revision"]:
            latest[s] = r
    assert {(s["stream"], s["kafka_partition"]) for s in ans["shares"]} == set(latest), (name, ans["shares"], latest)
    for s in ans["shares"]:
        row = latest[(s["stream"], s["kafka_partition"])]
        where = f"{name} share {s['stream']}/{s['kafka_partition']}"
        assert s["revision"] == row["revision"] and close(s["numerator"], row["numerator"]) \
            and s["denominator"] == row["denominator"] and s["is_final"] == row["is_final"], (where, s, row)
        # The plugin build.
        plugin = k["metric"] if k["metric"] in ("ctr", "cvr") else "attribution"
        b = v2 if is_restated else builds[plugin]
        want = {"name": plugin, "version": b["version"], "sha256": b["sha256"], "wit": b["wit"], "params": {},
                "recorded": True}
        assert s["plugin"] == want, (where, s["plugin"], want)
        # The run and the commit.
        snap = s["snapshot"]
        assert not snap["expired"], (where, snap)
        if a.compacted:
            assert snap["found_by"] in ("data file", "revision", "restatement progress"), (where, snap)
            found_by[snap["found_by"]] = found_by.get(snap["found_by"], 0) + 1
        else:
            assert snap["found_by"] == "data file" and not snap["compacted"], (where, snap)
        if is_restated:
            want = {"kind": "restatement", "id": a.restatement, "period": [a.from_, a.to], "complete": True,
                    "promoted": True, "events_snapshot": a.events_snapshot, "lookback_secs": 604800}
            assert s["run"] == want, (where, s["run"], want)
            assert snaps[snap["id"]].get("admetrics.restatement") == a.restatement, (where, snap)
            # The commit that wrote the window: the first whose progress reaches its end.
            end_ms = int(k["window_end"].timestamp() * 1000)
            reach = sorted((int(p["admetrics.commit-seq"]), sid) for sid, p in snaps.items()
                           if p.get("admetrics.restatement") == a.restatement
                           and json.loads(p.get("admetrics.restate.done", "{}")).get(s["stream"], {})
                           .get(str(s["kafka_partition"]), -1) >= end_ms)
            assert reach and reach[0][1] == snap["id"], (where, reach[:2], snap)
            assert snap["source_range"] == {"events_snapshot": a.events_snapshot}, (where, snap)
            below, at = None, a.events_snapshot
        else:
            assert s["run"] == {"kind": "live"}, (where, s["run"])
            rev = row["revision"]
            found = [sid for sid, p in snaps.items()
                     if p.get("admetrics.topic") == s["stream"] and "admetrics.restatement" not in p
                     and p.get("admetrics.commit-seq") == str(rev & 0xFFFFFFFF)
                     and json.loads(p.get("admetrics.epochs", "{}")).get(str(s["kafka_partition"])) == rev >> 32]
            assert found == [snap["id"]], (where, found, snap)
            below = json.loads(snaps[found[0]]["admetrics.offsets"])[str(s["kafka_partition"])]
            assert snap["source_range"]["offset_below"] == below, (where, snap, below)
            at = None
        # The events.
        ev = s["events"]
        evs = own_events(s["stream"], s["kafka_partition"], k, below, at,
                         any_campaign=k["metric"] == "attributed_revenue")
        if k["metric"] in ("attributed_revenue", "unattributed_revenue"):
            # The window's conversions (every campaign's, for the per-ad metric) are the
            # candidates; the shipped plugin's last-click recount must give the row.
            conv = sorted(e["event_id"] for e in evs if e["event_type"] == "conversion")
            assert conv == sorted(e["event_id"] for e in ev["rows"] if e["event_type"] == "conversion"), where
            assert ev["matches"] and ev["model"].startswith("last click within 604800 s"), (where, ev["recomputed"])
            checked_events += 1
            continue
        assert sorted(e["event_id"] for e in evs) == sorted(e["event_id"] for e in ev["rows"]), (where, len(evs), ev["count"])
        num, den = counts(evs, k["metric"])
        assert close(num, row["numerator"]) and den == row["denominator"], (where, (num, den), row)
        assert ev["matches"] and close(ev["recomputed"]["numerator"], num), (where, ev["recomputed"])
        if row["is_final"] and not is_restated:
            assert counts(own_events(s["stream"], s["kafka_partition"], k), k["metric"]) == (num, den), where
        checked_events += 1
    print(f"ok {name}: {len(ans['shares'])} shares, value {k['value']:.6g}")

if a.compacted:
    assert found_by.get("revision") and found_by.get("restatement progress"), \
        f"compaction rewrote no checked row's file: {found_by}"
assert older_revisions > 0, "no checked key had superseded revisions: the latest-revision rule was not exercised"
text = lineage(keys[-1], text=True)
assert "current value" in text and a.restatement in text and str(a.events_snapshot) in text, text
print(f"lineage checked for {len(keys)} keys ({checked_events} shares recomputed from events)")
