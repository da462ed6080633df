#!/usr/bin/env python3
"""Packs dashboard/bundle/ into a ZIP that `superset import-dashboards` takes, filling in what
depends on the machine: where the Iceberg tables are and where DuckDB's extensions live.

    python dashboard/bundle.py --warehouse .state/warehouse --out bundle.zip

The YAML in dashboard/bundle/ is the source of truth; it names tables by placeholder
(__METRICS_TABLE__, __EVENTS_TABLE__, __DEAD_LETTERS_TABLE__) and the extension folder by
__EXTENSIONS__. Tables are read with iceberg_scan over the table directory with DuckDB's
version guessing (iceberg-rust's metadata file names sort by version), so every query sees the
newest snapshot without asking the catalog.
"""
import argparse
import importlib.util
import io
import os
import zipfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def extensions_dir() -> str:
    spec = importlib.util.find_spec("duckdb_ext")
    if spec is None:
        raise SystemExit("duckdb-ext-iceberg is not installed in this Python (see dashboard/requirements.txt)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "extensions")


def table_sql(warehouse: Path, namespace: str, table: str) -> str:
    path = str(warehouse / namespace / table).replace("'", "''")
    return f"iceberg_scan('{path}', version => '?', allow_moved_paths => true)"


def render(text: str, values: dict) -> str:
    for k, v in values.items():
        text = text.replace(k, v)
    return text


def build(warehouse: Path, namespace: str, extensions: str) -> bytes:
    values = {
        "__EXTENSIONS__": extensions,
        "__METRICS_TABLE__": table_sql(warehouse, namespace, "campaign_metrics"),
        "__EVENTS_TABLE__": table_sql(warehouse, namespace, "campaign_events"),
        "__DEAD_LETTERS_TABLE__": table_sql(warehouse, namespace, "dead_letters"),
    }
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted((HERE / "bundle").rglob("*.yaml")):
            rel = f.relative_to(HERE / "bundle")
            text = render(f.read_text(), values)
            left = [k for k in values if k in text]
            assert not left, f"{rel}: placeholders left {left}"
            try:  # a syntax error here names the file, not a Superset traceback
                yaml.safe_load(text)
            except yaml.YAMLError as e:
                raise SystemExit(f"dashboard/bundle/{rel}: {e}")
            # A fixed timestamp: the same inputs give the same bytes (dashboard.sh compares hashes).
            info = zipfile.ZipInfo(f"admetrics_dashboard/{rel}", date_time=(2026, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, text)
    return buf.getvalue()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--warehouse", required=True, help="the admetrics warehouse directory (iceberg.warehouse)")
    ap.add_argument("--namespace", default="ads")
    ap.add_argument("--extensions", default=None, help="DuckDB extension folder (default: duckdb-ext-* of this Python)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    data = build(Path(os.path.abspath(a.warehouse)), a.namespace, a.extensions or extensions_dir())
    Path(a.out).write_bytes(data)
    print(f"bundle: {a.out} ({len(data)} bytes)")


if __name__ == "__main__":
    main()
