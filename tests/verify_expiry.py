#!/usr/bin/env python3
"""Snapshot expiry (scripts/maintain.py) keeps what a restarted daemon or a new owner of a
partition reads, with partitions whose owners commit at different times and a partition that was
only claimed: cases tests/maintenance.rs (one file, one partition) cannot reach.

    verify_expiry.py --dir TMPDIR

A PyIceberg table gets the snapshot summaries the daemon writes (host/src/sink/summary.rs):
  s0: topic t, offsets {0: 5, 1: 5}, epochs 1, watermarks   superseded for both partitions: must go
  c1: topic t, a claim: epochs {2: 1} only                    partition 2's epoch (its owner then
                                                              stopped before committing anything)
  s1: topic t, offsets {0: 10, 1: 20}                         the newest position of partition 1
  s2..s6: topic t, offsets {0: 11..15}                        partition 0 only
  s7: a maintenance snapshot (no topic), the current one
(every commit with per-partition epochs and watermarks) then `expire_snapshots(keep 0 s)`.
Afterwards s0 is gone, c1..s7 are all there (s1..s7 are the links from the current snapshot back
to c1), and the daemon's walk (per partition the entry with the highest epoch, the newest among
equals, along the parent links; the highest epoch of any entry, claims included) still finds
positions {0: 15, 1: 20} with the watermarks of s6 and s1, epochs {0: 1, 1: 1, 2: 1}, and the
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
    """The daemon's walk (summary::positions, horizon_and_seq): along the parent links, per
    partition the position with the highest epoch (the newest among equals) and the highest
    epoch of any entry (claims included); the highest commit sequence."""
    meta = table.metadata
    pos, epochs, seq = {}, {}, 0
    snap = meta.current_snapshot()
    while snap is not None:
        props = snap.summary.additional_properties
        if props.get("admetrics.topic") == topic:
            e_of = {int(p): e for p, e in json.loads(props.get("admetrics.epochs", "{}")).items()}
            wms = {int(p): w for p, w in json.loads(props.get("admetrics.watermarks", "{}")).items()}
            for p, e in e_of.items():
                epochs[p] = max(epochs.get(p, e), e)
            for p, o in json.loads(props.get("admetrics.offsets", "{}")).items():
                p, e = int(p), e_of.get(int(p), 0)
                if p not in pos or e > pos[p][2]:
                    pos[p] = (o, wms.get(p), e)
            seq = max(seq, int(props.get("admetrics.commit-seq", 0)))
        snap = meta.snapshot_by_id(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    return {"offsets": {p: v[0] for p, v in pos.items()}, "watermarks": {p: v[1] for p, v in pos.items()},
            "epochs": epochs, "seq": seq}


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
        """A commit's summary: per partition its offset, epoch 1 and watermark 1000 * seq."""
        return {"admetrics.topic": topic, "admetrics.offsets": json.dumps(offsets),
                "admetrics.epochs": json.dumps({p: 1 for p in offsets}),
                "admetrics.watermarks": json.dumps({p: 1000 * seq for p in offsets}),
                "admetrics.watermark": str(1000 * seq), "admetrics.commit-seq": str(seq)}

    def claim(epochs: dict, topic: str = "t") -> dict:
        return {"admetrics.topic": topic, "admetrics.epochs": json.dumps(epochs), "admetrics.claim": "true"}

    ids = [commit(daemon({"0": 5, "1": 5}, 1)), commit(claim({"2": 1})), commit(daemon({"0": 10, "1": 20}, 2))]
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
    want = {"offsets": {0: 15, 1: 20}, "watermarks": {0: 7000, 1: 2000}, "epochs": {0: 1, 1: 1, 2: 1}, "seq": 7}
    if before != want or after != want:
        problems.append(f"resume position before {before}, after {after}, want {want}")

    # Another writer (another topic) committed long ago; ours kept committing since.
    commit(daemon({"0": 99}, 1, topic="other"))
    # Partition 2's owner commits a position now: the claim c1 is superseded like s1..s7.
    more = [commit(daemon({"0": 16 + i, "1": 20, "2": 3}, 8 + i)) for i in range(3)]
    r2 = maintain.expire_snapshots(cat, "ads.events", keep_seconds=0, min_expired=1)
    table = cat.load_table("ads.events")
    if resume(table, "other")["offsets"] != {0: 99}:
        problems.append(f"the other topic's position was expired: {r2}")
    if resume(table, "t")["offsets"] != {0: 18, 1: 20, 2: 3} or resume(table, "t")["epochs"] != {0: 1, 1: 1, 2: 1} \
            or more[-1] != table.current_snapshot().snapshot_id or not r2.get("expired_snapshots"):
        problems.append(f"our position after the second expiry: {resume(table, 't')}")

    if problems:
        print(f"{len(problems)} problems:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print(f"verify_expiry: {r['expired_snapshots']} + {r2.get('expired_snapshots', 0)} snapshots expired; "
          f"resume positions {after['offsets']}, epochs {after['epochs']} (a claim-only partition's too) and the other "
          f"topic's kept")


if __name__ == "__main__":
    main()
