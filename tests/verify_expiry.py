#!/usr/bin/env python3
"""Snapshot expiry (scripts/maintain.py) keeps what a restarted daemon reads, with two partitions
whose owners commit at different times: the case tests/maintenance.rs (one file, one partition)
cannot reach.

    verify_expiry.py --dir TMPDIR

A PyIceberg table gets the snapshot summaries the daemon writes (host/src/sink/mod.rs, `summary`):
  s0: topic t, offsets {0: 5, 1: 5}     superseded for both partitions: must go
  s1: topic t, offsets {0: 10, 1: 20}   the newest position of partition 1 (its owner then stopped)
  s2..s6: topic t, offsets {0: 11..15}  partition 0 only
  s7: a maintenance snapshot (no topic), the current one
then `expire_snapshots(keep 0 s)`. Afterwards s0 is gone, s1..s7 are all there (s2..s7 are the
links from the current snapshot back to s1), and the daemon's resume walk (newest entry per
partition along the parent links) still finds {0: 15, 1: 20}, the watermark of s6 and the
highest commit sequence. Then a second writer's snapshot for another topic is checked the same
way. Prints what it checked; exits 1 with the problems otherwise.
"""
import argparse
import json
import sys
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import maintain  # noqa: E402


def resume(table, topic: str) -> dict:
    """The daemon's resume walk (SinkState::resume): newest entry per partition along parents."""
    meta = table.metadata
    offsets, watermark, seq = {}, None, 0
    snap = meta.current_snapshot()
    while snap is not None:
        props = snap.summary.additional_properties
        if props.get("admetrics.topic") == topic:
            for p, o in json.loads(props.get("admetrics.offsets", "{}")).items():
                offsets.setdefault(int(p), o)
            if watermark is None and "admetrics.watermark" in props:
                watermark = int(props["admetrics.watermark"])
            seq = max(seq, int(props.get("admetrics.commit-seq", 0)))
        snap = meta.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return {"offsets": offsets, "watermark": watermark, "seq": seq}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    d = Path(a.dir)
    from pyiceberg.catalog.sql import SqlCatalog

    cat = SqlCatalog("t", uri=f"sqlite:///{d}/catalog.db", warehouse=f"file://{d}/warehouse")
    cat.create_namespace("ads")
    table = cat.create_table("ads.events", schema=pa.schema([("id", pa.int64())]))
    rows = pa.table({"id": pa.array([1], pa.int64())})

    def commit(props: dict) -> int:
        table.append(rows, snapshot_properties=props)
        return table.current_snapshot().snapshot_id

    def daemon(offsets: dict, seq: int, topic: str = "t") -> dict:
        return {"admetrics.topic": topic, "admetrics.offsets": json.dumps(offsets),
                "admetrics.watermark": str(1000 * seq), "admetrics.commit-seq": str(seq)}

    ids = [commit(daemon({"0": 5, "1": 5}, 1)), commit(daemon({"0": 10, "1": 20}, 2))]
    ids += [commit(daemon({"0": 10 + i}, 2 + i)) for i in range(1, 6)]
    ids.append(commit({"admetrics.maintenance": "merge-manifests"}))
    before = resume(table, "t")

    problems = []
    r = maintain.expire_snapshots(cat, "ads.events", keep_seconds=0, min_expired=1)
    table = cat.load_table("ads.events")
    left = {s.snapshot_id for s in table.metadata.snapshots}
    if r.get("expired_snapshots") != 1 or ids[0] in left:
        problems.append(f"s0 should be the one snapshot expired: {r}, left {len(left)} of {len(ids)}")
    if not set(ids[1:]) <= left:
        problems.append(f"expired a snapshot the resume walk needs: {sorted(set(ids[1:]) - left)}")
    after = resume(table, "t")
    want = {"offsets": {0: 15, 1: 20}, "watermark": 7000, "seq": 7}
    if before != want or after != want:
        problems.append(f"resume position before {before}, after {after}, want {want}")

    # Another writer (another topic) committed long ago; ours kept committing since.
    commit(daemon({"0": 99}, 1, topic="other"))
    more = [commit(daemon({"0": 16 + i, "1": 20}, 8 + i)) for i in range(3)]
    r2 = maintain.expire_snapshots(cat, "ads.events", keep_seconds=0, min_expired=1)
    table = cat.load_table("ads.events")
    if resume(table, "other")["offsets"] != {0: 99}:
        problems.append(f"the other topic's position was expired: {r2}")
    if resume(table, "t")["offsets"] != {0: 18, 1: 20} or more[-1] != table.current_snapshot().snapshot_id:
        problems.append(f"our position after the second expiry: {resume(table, 't')}")

    if problems:
        print(f"{len(problems)} problems:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print(f"verify_expiry: {r['expired_snapshots']} + {r2.get('expired_snapshots', 0)} snapshots expired; "
          f"resume positions {after['offsets']} and the other topic's kept")


if __name__ == "__main__":
    main()
