#!/usr/bin/env python3
"""Table maintenance beside the daemon: merges the manifests of the admetrics tables.

    .venv/bin/python scripts/maintain.py --config config/default.toml [--interval 30] [--min-manifests 20] [--once]

Why: the daemon commits every second, and each commit (iceberg-rust's fast append) adds one
manifest to its table. A reader plans every scan by opening every manifest of the current
snapshot, so the dashboard's queries grow with the daemon's uptime (measured here: ~1.3 ms per
commit per scan; 150 commits made planning 0.19 s of a 0.26 s count). iceberg-rust 0.10 has no
public manifest rewrite, so this job commits, through PyIceberg, an append of no files whose
manifests are merged (Iceberg's merge-append): same data files, one manifest per partition spec
(up to `commit.manifest.target-size-bytes`, 8 MB).

Safe beside a running daemon: the commit is an ordinary compare-and-swap on the table's
metadata. If the daemon commits first, this round is skipped and retried at the next interval;
if this commits first, the daemon's commit reloads the table and re-applies its append
(iceberg-rust retries catalog conflicts). The merge snapshot carries no admetrics positions,
and the daemon's resume walks the snapshot ancestry past it (tests/maintenance.rs).

Catalog and tables come from the daemon's config file (with the same ADMETRICS__ICEBERG__*
environment overrides); SQL (sqlite:) and REST (http://) catalogs both work.
Not done here: compaction of small data files and snapshot expiry (see README, Status).
"""
import argparse
import json
import os
import sys
import time
import tomllib
from pathlib import Path

TABLES = ("campaign_events", "campaign_metrics", "dead_letters")


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
    from pyiceberg.exceptions import CommitFailedException, NoSuchTableError

    try:
        table = catalog.load_table(ident)
    except NoSuchTableError:
        return {"table": ident, "skipped": "no such table yet"}
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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/default.toml", help="the daemon's config file")
    ap.add_argument("--interval", type=float, default=30.0, help="seconds between rounds")
    ap.add_argument("--min-manifests", type=int, default=20, help="merge a table only past this many manifests")
    ap.add_argument("--once", action="store_true", help="one round, then exit (reports every table)")
    a = ap.parse_args()
    cfg = iceberg_config(Path(a.config))
    catalog = open_catalog(cfg)
    while True:
        for t in TABLES:
            try:
                r = merge_manifests(catalog, f"{cfg['namespace']}.{t}", a.min_manifests)
            except Exception as e:  # noqa: BLE001 - a maintenance job must outlive a bad round
                r = {"table": t, "error": repr(e)[:300]}
            if "skipped" not in r or a.once:
                print("maintain: " + json.dumps(r), flush=True)
        if a.once:
            return
        time.sleep(a.interval)


if __name__ == "__main__":
    sys.exit(main())
