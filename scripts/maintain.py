#!/usr/bin/env python3
"""Table maintenance beside the daemon: compacts small data files, merges manifests, expires old
snapshots and deletes unreferenced files of the admetrics tables, every --interval seconds.

    .venv/bin/python scripts/maintain.py --config config/default.toml [--interval 30] [--once] [--report]

Why: the daemon commits every second, and each commit (iceberg-rust's fast append) adds a small
data file, a manifest and a snapshot to each table. Readers pay for all three: a scan opens
every manifest (~1.3 ms per commit per scan here) and every data file, and the metadata file
that lists the snapshots (~1.1 KB each) is parsed at each query and rewritten at each commit.
Left alone, the dashboard's queries grow with the daemon's uptime. iceberg-rust 0.10 has none of
these operations, so this job does them through PyIceberg, per table, in this order:

1. `compact_small_files`: size-tiered rewrite of a partition's small files into one file
   (an overwrite snapshot: the same rows, fewer files; of `campaign_metrics` only the rows no
   higher revision of the same share replaced: `drop_superseded`);
2. `merge_manifests`: an append of no files whose manifests are merged (Iceberg's merge-append):
   one manifest per partition spec (up to `commit.manifest.target-size-bytes`, 8 MB);
3. `expire_snapshots`: drops snapshots superseded more than --keep-snapshots-minutes ago from
   the metadata, keeping every snapshot whose summary the daemon's restart still reads;
4. `delete_unreferenced_files`: deletes the table's files no kept snapshot references (what
   compaction replaced, what expiry dropped) once --delete-after-minutes old.

Safe beside a running daemon: every step is an ordinary compare-and-swap commit on the table's
metadata. If the daemon commits first, the step retries against the fresh table (or waits for the
next round); if this commits first, the daemon's commit reloads the table and re-applies its
append (iceberg-rust retries catalog conflicts). These snapshots carry no admetrics positions,
and the daemon's resume walks the snapshot ancestry past them (tests/maintenance.rs).

Catalog and tables come from the daemon's config file (with the same ADMETRICS__ICEBERG__*
environment overrides); SQL (sqlite:) and REST (http://) catalogs both work.
"""
import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path

TABLES = ("campaign_events", "campaign_metrics", "dead_letters")
ROW_GROUP_ROWS = 131072
ISOLATION_KEY = "write.update.isolation-level"


def iceberg_config(path: Path) -> dict:
    cfg = tomllib.loads(path.read_text()).get("iceberg", {})
    for key in ("catalog_uri", "warehouse", "namespace", "catalog_name"):
        env = os.environ.get(f"ADMETRICS__ICEBERG__{key.upper()}")
        if env is not None:
            cfg[key] = env
    if "ADMETRICS__ICEBERG__PROPERTIES" in os.environ:
        cfg["properties"] = tomllib.loads("v = " + os.environ["ADMETRICS__ICEBERG__PROPERTIES"])["v"]
    base = path.parent
    uri = cfg.get("catalog_uri", "sqlite:.state/catalog.db")
    warehouse = str(cfg.get("warehouse", ".state/warehouse"))
    if uri.startswith("sqlite:"):  # relative paths resolve against the config file, as in the daemon
        db = uri[len("sqlite:"):].removeprefix("//")
        uri = "sqlite:" + str(db if os.path.isabs(db) else (base / db).resolve())
    if "://" not in warehouse and not os.path.isabs(warehouse):
        warehouse = str((base / warehouse).resolve())
    cfg.update(catalog_uri=uri, warehouse=warehouse)
    cfg.setdefault("namespace", "ads")
    cfg.setdefault("catalog_name", "admetrics")
    return cfg


def open_catalog(cfg: dict):
    props = dict(cfg.get("properties", {}))
    uri = cfg["catalog_uri"]
    if uri.startswith(("http://", "https://")):
        from pyiceberg.catalog.rest import RestCatalog

        return RestCatalog(cfg["catalog_name"], uri=uri, warehouse=cfg["warehouse"], **props)
    from pyiceberg.catalog.sql import SqlCatalog

    warehouse = cfg["warehouse"] if "://" in cfg["warehouse"] else "file://" + cfg["warehouse"]
    return SqlCatalog(cfg["catalog_name"], uri="sqlite:///" + uri[len("sqlite:"):], warehouse=warehouse, **props)


def merge_manifests(catalog, ident: str, min_manifests: int) -> dict:
    """One merge of `ident` if it has at least `min_manifests` manifests; returns what happened."""
    from pyiceberg.exceptions import CommitFailedException

    table = catalog.load_table(ident)
    snap = table.current_snapshot()
    if snap is None:
        return {"table": ident, "skipped": "no snapshot"}
    before = len(snap.manifests(table.io))
    if before < min_manifests:
        return {"table": ident, "skipped": "few manifests", "manifests": before}
    started = time.monotonic()
    try:
        with table.transaction() as tx:
            append = tx.update_snapshot(snapshot_properties={"admetrics.maintenance": "merge-manifests"}).merge_append()
            # Merge whatever the table properties say: this append exists only to merge.
            append._merge_enabled = True
            append._min_count_to_merge = 2
            append.commit()
    except CommitFailedException as e:
        return {"table": ident, "conflict": str(e)[:200]}
    table = catalog.load_table(ident)
    after = len(table.current_snapshot().manifests(table.io))
    return {"table": ident, "manifests_before": before, "manifests_after": after,
            "seconds": round(time.monotonic() - started, 3)}


def size_tier(size: int, base: int = 2**18, ratio: int = 8) -> int:
    """0 below `base` (256 KB), then one tier per factor `ratio`: 256 KB–2 MB, 2–16 MB, 16–128 MB, …"""
    tier = 0
    while size >= base:
        tier, base = tier + 1, base * ratio
    return tier


# `campaign_metrics` columns that differ between revisions of one share; every other column
# identifies the share's row (see drop_superseded).
REVISION_COLUMN = "revision"
PER_REVISION = frozenset({REVISION_COLUMN, "value", "numerator", "denominator", "is_final", "withheld",
                          "computed_at"})


def drop_superseded(rows):
    """`rows` without the rows a higher revision of the same share replaced; (rows, dropped).

    Why: the daemon publishes a new revision of every open window's shares each commit (1 s), and
    readers only ever use the latest one per share (sql/current_metrics.sql). At 5 000 events/s
    that is ~180K rows a minute of which nearly all are superseded within seconds, and every
    dashboard query recomputed the latest revision over all of them: its cost grew with the
    daemon's uptime (README, dashboard section). Dropping them while compaction rewrites the
    files anyway keeps what readers scan proportional to the keys, not to the commits.

    Which rows go: a row is dropped only when another row of the same input has a strictly higher
    revision and is equal to it in EVERY other column except the per-revision ones
    (PER_REVISION: the values, is_final, withheld, computed_at). That is finer than the view's key
    (window, campaign, ad, plugin, dimensions, metric, stream, partition): the restatement a row
    belongs to, shadow, the plugin's version, sha256 and params and the currency all separate
    rows too, so no reader that tells rows apart by any of them (restatements, `admetrics plugin
    diff`, lineage) loses the row it would pick, and the view's latest revision per share is
    always kept, since it is the highest in its own finer group. Ties are kept, and a row without a
    revision is never dropped, nor is a record (metric `$restatement`: a restatement's promote,
    rollback and done entries are a log read in full, not revisions of a value). A table with a
    nested column is left whole (its rows could not be compared column by column). Rows come
    back sorted by that identity (window_start first), which also gives readers tight
    per-row-group min/max statistics on the window."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = rows.schema.names
    if REVISION_COLUMN not in names or rows.num_rows < 2:
        return rows, 0
    keys = [n for n in names if n not in PER_REVISION]
    if any(pa.types.is_nested(rows.schema.field(k).type) for k in keys):
        return rows, 0
    # NULLs sort last (the default), so a share's highest non-NULL revision comes first.
    order = pc.sort_indices(rows, sort_keys=[(k, "ascending") for k in keys]
                            + [(REVISION_COLUMN, "descending")])
    rows = rows.take(order)
    n = rows.num_rows
    # A row starts a new share where any identity column differs from the row before it (two
    # NULLs are the same share, as GROUP BY has it).
    starts = pa.array([True] + [False] * (n - 1))
    for k in keys:
        col = rows.column(k).combine_chunks()
        cur, prev = col.slice(1), col.slice(0, n - 1)
        same = pc.or_kleene(pc.fill_null(pc.equal(cur, prev), False),
                            pc.and_(pc.is_null(cur), pc.is_null(prev)))
        starts = pc.or_(starts, pa.concat_arrays([pa.array([True]), pc.invert(same)]))
    # Sorted by revision descending within a share, so its first row holds its highest revision.
    share = pc.subtract(pc.cumulative_sum(pc.cast(starts, pa.int64())), 1)
    revision = rows.column(REVISION_COLUMN).combine_chunks()
    highest = pc.take(pc.filter(revision, starts), share)
    keep = pc.or_kleene(pc.fill_null(pc.equal(revision, highest), True), pc.is_null(revision))
    if "metric" in names:  # records ('$restatement': promote, rollback, done) are a log: all kept
        record = pc.starts_with(rows.column("metric").combine_chunks(), "$")
        keep = pc.or_kleene(keep, pc.fill_null(record, False))
    kept = rows.filter(keep)
    return kept, n - kept.num_rows


def compact_small_files(catalog, ident: str, min_files: int, max_file_bytes: int, max_bytes: int,
                        attempts: int = 8) -> dict:
    """Rewrites data files of `ident` that are small for their partition into bigger ones.

    Why: the daemon writes one small file per table per commit (~85 KB for 5 000 events at the
    default 1 s interval), and a reader pays per file it opens: after an hour a scan of
    `campaign_events` would open 3 600 files. Size-tiered, so no byte is rewritten over and over:
    files are grouped by partition and size tier (`size_tier`), and a group of at least
    `min_files` is merged into one file, which lands in a higher tier. Files of `max_file_bytes`
    or more are left alone. A round reads at most `max_bytes` per table, lowest tiers first, so
    its work is bounded whatever the backlog; a partition ends up with a few files per tier.

    Safe beside the daemon: the rows are read and the new file written before anything is
    committed; the commit (an overwrite snapshot: those files out, the new one in) is then tried
    against the freshest table and retried on a conflict. The daemon only appends, so any newer
    snapshot still holds the files this round replaces; if one of them is gone (another
    maintenance job got there first) the round is abandoned and its new file deleted. Any other
    error leaves the new file behind unreferenced (a commit whose answer was lost may have landed)."""
    import uuid
    from collections import defaultdict

    from pyiceberg.exceptions import CommitFailedException, ValidationException
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
    from pyiceberg.table import FileScanTask

    table = catalog.load_table(ident)
    if table.current_snapshot() is None:
        return {"table": ident, "skipped": "no snapshot"}
    started = time.monotonic()
    spec_id = table.metadata.default_spec_id
    groups = defaultdict(list)  # (tier, partition) -> data files of the current spec
    for task in table.scan().plan_files():
        f = task.file
        if task.delete_files or f.spec_id != spec_id or f.file_size_in_bytes >= max_file_bytes:
            continue
        groups[(size_tier(f.file_size_in_bytes), tuple(f.partition))].append(f)
    chosen, budget = [], max_bytes
    for key in sorted(groups, key=lambda k: k[0]):
        files = groups[key]
        if len(files) < min_files:
            continue
        take = []
        for f in sorted(files, key=lambda f: f.file_size_in_bytes):
            if f.file_size_in_bytes > budget:
                break
            take.append(f)
            budget -= f.file_size_in_bytes
        if len(take) >= 2:
            chosen.append(take)
    if not chosen:
        return {"table": ident, "skipped": "nothing to compact", "data_files": sum(len(v) for v in groups.values())}
    if table.properties.get(ISOLATION_KEY) != "snapshot":
        # PyIceberg retries a lost commit race itself, then validates the overwrite under the
        # table's isolation level; under the default (serializable) any file the daemon appended
        # meanwhile is a conflict, so a busy table's compaction lost every race. Under snapshot
        # isolation it checks what a rewrite needs: the files it replaces are still there.
        # A commit like any other: it can lose a race to the daemon's append, so retried.
        for attempt in range(1, attempts + 1):
            try:
                with table.transaction() as tx:
                    tx.set_properties({ISOLATION_KEY: "snapshot"})
                break
            except CommitFailedException:
                time.sleep(0.05 * attempt)
                table = catalog.load_table(ident)
                if table.properties.get(ISOLATION_KEY) == "snapshot":
                    break
        else:
            return {"table": ident, "conflict": f"lost {attempts} commit races setting {ISOLATION_KEY}"}
        table = catalog.load_table(ident)
    old = [f for group in chosen for f in group]
    scan = ArrowScan(table.metadata, table.io, table.schema(), AlwaysTrue())
    rows = scan.to_table([FileScanTask(f) for f in old])
    rows_in = rows.num_rows
    rows, superseded = drop_superseded(rows)
    # Row groups of 128K rows, not PyIceberg's 1M: DuckDB scans a file's row groups in parallel,
    # and two 1M-row groups made a count over the compacted file 170 ms instead of ~10.
    meta = table.metadata.model_copy(
        update={"properties": {**table.metadata.properties, "write.parquet.row-group-limit": str(ROW_GROUP_ROWS)}})
    new = list(_dataframe_to_data_files(meta, rows, table.io, write_uuid=uuid.uuid4()))
    old_paths = {f.file_path for f in old}

    def discard(why: dict) -> dict:  # only where the commit is known not to have landed
        for f in new:
            table.io.delete(f.file_path)
        return why

    for attempt in range(1, attempts + 1):
        table = catalog.load_table(ident)
        present = {t.file.file_path: t.file for t in table.scan().plan_files() if t.file.file_path in old_paths}
        if len(present) != len(old_paths):  # someone else replaced some: ours would duplicate rows
            return discard({"table": ident, "abandoned": f"{len(old_paths) - len(present)} of the files are gone"})
        try:
            with table.transaction() as tx:
                props = {"admetrics.maintenance": "compact-small-files"}
                with tx.update_snapshot(snapshot_properties=props).overwrite() as ow:
                    for f in present.values():
                        ow.delete_data_file(f)
                    for f in new:
                        ow.append_data_file(f)
            break
        except (CommitFailedException, ValidationException):
            # PyIceberg's own retries gave up: start again from a fresh load.
            time.sleep(0.05 * attempt)
    else:
        return discard({"table": ident, "conflict": f"lost {attempts} commit races to the daemon"})
    return {"table": ident, "compacted_files": len(old), "into": len(new), "rows_in": rows_in,
            "rows": rows.num_rows, "superseded_rows_dropped": superseded,
            "bytes_in": sum(f.file_size_in_bytes for f in old), "bytes_out": sum(f.file_size_in_bytes for f in new),
            "attempts": attempt, "seconds": round(time.monotonic() - started, 3)}


# Snapshot-summary keys the daemon writes and reads back on restart or when it claims a partition
# (host/src/sink/summary.rs): JSON maps partition -> value. `admetrics.epochs` is also the only
# key of a claim (`admetrics.claim`): the newest epoch of a partition is what the next claim
# raises and what fences an earlier owner, so the claim that recorded it must stay even when no
# position was committed after it. The fence only lets a commit land when no higher epoch sits in
# the history, so the newest entry of a partition carries its highest epoch: keeping the newest
# snapshot carrying each key for each partition keeps everything the daemon reads.
RESUME_KEYS = ("admetrics.offsets", "admetrics.replay-from", "admetrics.watermarks", "admetrics.closed-through",
               "admetrics.epochs")
RESUME_SCALARS = ("admetrics.watermark", "admetrics.click-horizon-ms", "admetrics.commit-seq")


def snapshots_to_keep(table, keep_ms: int, now_ms: int) -> set:
    """The snapshots expiry must leave: every snapshot superseded less than `keep_ms` ago
    (recent history to inspect; no file is deleted, so a reader still scanning an expired
    snapshot is not disturbed); for every value the daemon's restart or claim reads from the
    ancestry (per topic: each partition's offsets, replay point, watermark and epoch, claims
    included; the watermark scalar, the click horizon, the commit sequence), the newest snapshot
    carrying it, however old (a partition whose owner stopped committing keeps its position and
    epoch); and every snapshot between those and the current
    one, because the restart finds them by walking parent links from the current snapshot and an
    expired link ends the walk (tests/rest_s3.rs caught exactly that: the next run started from
    offset 0)."""
    meta = table.metadata
    by_id = {s.snapshot_id: s for s in meta.snapshots}
    chain = []  # the current snapshot's ancestry, newest first
    snap = meta.current_snapshot()
    while snap is not None:
        chain.append(snap)
        snap = by_id.get(snap.parent_snapshot_id)
    seen, deepest = set(), 0
    child_ts = now_ms  # when the snapshot being looked at was superseded by its child
    for i, snap in enumerate(chain):
        needed = now_ms - child_ts < keep_ms
        props = snap.summary.additional_properties if snap.summary else {}
        topic = props.get("admetrics.topic")
        if topic is not None:
            for key in RESUME_KEYS:
                try:
                    parts = json.loads(props.get(key, "{}"))
                except ValueError:
                    parts = {}
                for part in parts:
                    if (topic, key, part) not in seen:
                        seen.add((topic, key, part))
                        needed = True
            for key in RESUME_SCALARS:
                if key in props and (topic, key) not in seen:
                    seen.add((topic, key))
                    needed = True
        if needed:
            deepest = i
        child_ts = snap.timestamp_ms
    return {s.snapshot_id for s in chain[: deepest + 1]}


def expire_snapshots(catalog, ident: str, keep_seconds: float, min_expired: int, attempts: int = 4) -> dict:
    """Removes old snapshots from the table's metadata (`snapshots_to_keep` says which stay).

    Why: every commit adds a snapshot to the metadata file, which the daemon rewrites at each
    commit and every reader parses at each query (~1.1 KB per snapshot: 2 MB after 30 minutes of
    1 s commits), and PyIceberg deep-copies it for each update it builds (2.5 s at 240 snapshots,
    long enough to lose every race to the daemon). Files are left to `delete_unreferenced_files`."""
    from pyiceberg.exceptions import CommitFailedException

    table = catalog.load_table(ident)
    for attempt in range(1, attempts + 1):
        keep = snapshots_to_keep(table, int(keep_seconds * 1000), int(time.time() * 1000))
        expire = [s.snapshot_id for s in table.metadata.snapshots if s.snapshot_id not in keep]
        if len(expire) < min_expired:
            return {"table": ident, "skipped": "few old snapshots", "snapshots": len(table.metadata.snapshots)}
        started = time.monotonic()
        try:
            table.maintenance.expire_snapshots().by_ids(expire).commit()
            return {"table": ident, "expired_snapshots": len(expire), "kept": len(keep),
                    "seconds": round(time.monotonic() - started, 3)}
        except CommitFailedException:
            time.sleep(0.05 * attempt)
            table = catalog.load_table(ident)
    return {"table": ident, "conflict": f"lost {attempts} commit races to the daemon"}


def delete_unreferenced_files(catalog, ident: str, older_than_seconds: float) -> dict:
    """Deletes the files under the table's location that no snapshot left in its metadata
    references, once they are `older_than_seconds` old: the data files a compaction replaced
    (after the snapshots that still listed them expired), expired snapshots' manifests and
    manifest lists, metadata files out of the metadata log, and the output of a maintenance
    round that lost its race.

    Why: compaction rewrites every row once per size tier, so without this the warehouse grows
    a few times faster than the data. The age bar is what makes it safe beside the daemon: its
    files are written before the commit that references them, and a file younger than the bar
    may be one of those (10 minutes against a commit every second)."""
    from pyarrow.fs import FileSelector, FileType

    from pyiceberg.io.pyarrow import PyArrowFileIO

    table = catalog.load_table(ident)
    if not isinstance(table.io, PyArrowFileIO):
        return {"table": ident, "skipped": f"file IO {type(table.io).__name__} cannot list files"}
    started = time.monotonic()
    key = lambda location: PyArrowFileIO.parse_location(location)[2]  # noqa: E731 - as listed below
    meta = table.metadata
    referenced = {key(table.metadata_location)} | {key(e.metadata_file) for e in meta.metadata_log}
    manifests = {}
    for snap in meta.snapshots:
        referenced.add(key(snap.manifest_list))
        for m in snap.manifests(table.io):
            manifests[m.manifest_path] = m
    for path, m in manifests.items():
        referenced.add(key(path))
        for entry in m.fetch_manifest_entry(table.io, discard_deleted=True):
            referenced.add(key(entry.data_file.file_path))
    scheme, netloc, root = PyArrowFileIO.parse_location(meta.location)
    fs = table.io.fs_by_scheme(scheme, netloc)
    bar = time.time() - older_than_seconds
    doomed = [
        info.path for info in fs.get_file_info(FileSelector(root, recursive=True, allow_not_found=True))
        if info.type == FileType.File and info.path not in referenced
        and (info.mtime is None or info.mtime.timestamp() < bar)
    ]
    for path in doomed:
        fs.delete_file(path)
    if not doomed:
        return {"table": ident, "skipped": "nothing unreferenced", "referenced_files": len(referenced)}
    return {"table": ident, "deleted_files": len(doomed), "referenced_files": len(referenced),
            "seconds": round(time.monotonic() - started, 3)}


def table_report(catalog, ident: str) -> dict:
    table = catalog.load_table(ident)
    snap = table.current_snapshot()
    return {"report": ident, "snapshots": len(table.metadata.snapshots),
            "manifests": len(snap.manifests(table.io)) if snap else 0,
            "data_files": sum(1 for _ in table.scan().plan_files()) if snap else 0,
            "rows": int(snap.summary.get("total-records", 0)) if snap and snap.summary else 0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/default.toml", help="the daemon's config file")
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between rounds")
    ap.add_argument("--min-manifests", type=int, default=20, help="merge a table only past this many manifests")
    ap.add_argument("--min-files", type=int, default=8,
                    help="merge a partition's files of one size tier once there are this many")
    ap.add_argument("--max-file-mb", type=float, default=256.0, help="files this big are never rewritten")
    ap.add_argument("--max-compact-mb", type=float, default=128.0, help="input read per table per round, at most")
    ap.add_argument("--no-compact", action="store_true", help="do not rewrite data files")
    ap.add_argument("--keep-snapshots-minutes", type=float, default=1.0,
                    help="expire snapshots superseded longer ago than this (those the daemon's restart reads stay)")
    ap.add_argument("--min-expired", type=int, default=50, help="expire only once this many snapshots can go")
    ap.add_argument("--delete-after-minutes", type=float, default=10.0,
                    help="delete files no snapshot references once they are this old")
    ap.add_argument("--no-delete", action="store_true", help="keep unreferenced files")
    ap.add_argument("--once", action="store_true", help="one round, then exit (reports every step)")
    ap.add_argument("--report", action="store_true", help="after each round, print each table's snapshots, manifests, data files")
    a = ap.parse_args()
    cfg = iceberg_config(Path(a.config))
    while True:
        # A new catalog client each round: a REST server closes idle connections (Jetty, the
        # Apache REST server's, after 30 s: the default interval), and the first request of a
        # round on a pooled connection it closed fails with RemoteDisconnected.
        try:
            catalog = open_catalog(cfg)
        except Exception as e:  # noqa: BLE001 - the catalog down is a bad round, not the end
            print("maintain: " + json.dumps({"error": f"catalog: {e!r}"[:300]}), flush=True)
            if a.once:
                return 1
            time.sleep(a.interval)
            continue
        for t in TABLES:
            ident = f"{cfg['namespace']}.{t}"
            try:
                exists = catalog.table_exists(ident)
            except Exception as e:  # noqa: BLE001 - as below: the job outlives a bad round
                print("maintain: " + json.dumps({"table": t, "error": repr(e)[:300]}), flush=True)
                continue
            if not exists:  # the daemon creates the tables when it starts
                if a.once or a.report:
                    print("maintain: " + json.dumps({"table": ident, "skipped": "no such table yet"}), flush=True)
                continue
            jobs = [] if a.no_compact else [lambda: compact_small_files(
                catalog, ident, a.min_files, int(a.max_file_mb * 2**20), int(a.max_compact_mb * 2**20))]
            # Compaction first: its overwrite adds manifests that the merge then folds in.
            jobs.append(lambda: merge_manifests(catalog, ident, a.min_manifests))
            jobs.append(lambda: expire_snapshots(catalog, ident, a.keep_snapshots_minutes * 60, a.min_expired))
            if not a.no_delete:
                jobs.append(lambda: delete_unreferenced_files(catalog, ident, a.delete_after_minutes * 60))
            for job in jobs:
                try:
                    r = job()
                except Exception as e:  # noqa: BLE001 - a maintenance job must outlive a bad round
                    r = {"table": t, "error": repr(e)[:300]}
                if "skipped" not in r or a.once:
                    print("maintain: " + json.dumps(r), flush=True)
            if a.report:
                print("maintain: " + json.dumps(table_report(catalog, ident)), flush=True)
        if a.once:
            return
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
