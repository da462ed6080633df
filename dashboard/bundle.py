#!/usr/bin/env python3
"""Packs dashboard/bundle/ into a ZIP that `superset import-dashboards` takes, and writes the
DuckDB file of views (dashboard/views.sql) that its database opens, filling in what depends on
the machine: where the Iceberg tables are, where the DuckDB file goes, where DuckDB's
extensions live.

    python dashboard/bundle.py --warehouse .state/warehouse --duckdb views.duckdb --out bundle.zip

The YAML in dashboard/bundle/ and views.sql are the source of truth. The views name tables by
placeholder (__METRICS_TABLE__, __EVENTS_TABLE__, __DEAD_LETTERS_TABLE__), the database YAML
names __DUCKDB_FILE__ and __EXTENSIONS__. views.sql builds its datasets' views (campaign_windows,
campaign_cells, campaign_reach, attribution_models) on the view current_metrics of
sql/current_metrics.sql (the one definition of a metric's current value, shared with the tests
and scripts/query.py), whose text goes in place of __CURRENT_METRICS_VIEW__. Tables are read with iceberg_scan over the table
directory with DuckDB's version guessing (iceberg-rust's metadata file names sort by version),
so every query sees the newest snapshot without asking the catalog. Creating a view binds it,
so the tables must exist (the daemon creates them when it starts).

With an Iceberg REST catalog (the docker-compose stack: REST catalog + S3), the views read the
tables through DuckDB's `ATTACH ... (TYPE iceberg)` instead, and the statements that every new
DuckDB connection must run first (load httpfs/iceberg, an S3 secret, the ATTACH) are written
next to the DuckDB file as `<file>.init.sql`, which admetrics_superset.py runs on connect:

    python dashboard/bundle.py --rest-uri http://rest:8181 --warehouse s3://warehouse/ \
        --s3-endpoint http://minio:9000 --duckdb views.duckdb --out bundle.zip

S3 credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_REGION).
"""
import argparse
import importlib.util
import io
import os
import zipfile
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
CURRENT_METRICS_SQL = HERE.parent / "sql" / "current_metrics.sql"


def extensions_dir() -> str:
    spec = importlib.util.find_spec("duckdb_ext")
    if spec is None:
        raise SystemExit("duckdb-ext-iceberg is not installed in this Python (see dashboard/requirements.txt)")
    return str(Path(list(spec.submodule_search_locations)[0]) / "extensions")


def table_sql(warehouse: Path, namespace: str, table: str, rest: bool = False) -> str:
    if rest:
        return f'ice."{namespace}"."{table}"'
    path = str(warehouse / namespace / table).replace("'", "''")
    return f"iceberg_scan('{path}', version => '?', allow_moved_paths => true)"


def quote(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def rest_init_sql(rest_uri: str, warehouse: str, s3_endpoint: str) -> list:
    """What a DuckDB connection runs before it can read the views over a REST catalog on S3."""
    from urllib.parse import urlsplit

    ep = urlsplit(s3_endpoint)
    secret = (
        "CREATE OR REPLACE TEMPORARY SECRET admetrics_s3 (TYPE s3, "
        f"KEY_ID {quote(os.environ.get('AWS_ACCESS_KEY_ID', ''))}, "
        f"SECRET {quote(os.environ.get('AWS_SECRET_ACCESS_KEY', ''))}, "
        f"REGION {quote(os.environ.get('AWS_REGION', 'us-east-1'))}, "
        f"ENDPOINT {quote(ep.netloc)}, URL_STYLE 'path', USE_SSL {str(ep.scheme == 'https').lower()})"
    )
    attach = (f"ATTACH IF NOT EXISTS {quote(warehouse)} AS ice "
              f"(TYPE iceberg, ENDPOINT {quote(rest_uri)}, AUTHORIZATION_TYPE 'none')")
    return ["LOAD httpfs", "LOAD avro", "LOAD iceberg", secret, attach]


def render(text: str, values: dict) -> str:
    for k, v in values.items():
        text = text.replace(k, v)
    return text


def views_sql(warehouse, namespace: str, rest: bool = False) -> str:
    """views.sql with its placeholders filled in: the tables' scans and sql/current_metrics.sql."""
    values = {
        "__CURRENT_METRICS_VIEW__": CURRENT_METRICS_SQL.read_text(),
        "__METRICS_TABLE__": table_sql(warehouse, namespace, "campaign_metrics", rest),
        "__EVENTS_TABLE__": table_sql(warehouse, namespace, "campaign_events", rest),
        "__DEAD_LETTERS_TABLE__": table_sql(warehouse, namespace, "dead_letters", rest),
    }
    sql = render((HERE / "views.sql").read_text(), values)
    left = [k for k in values if k in sql]
    assert not left, f"views.sql: placeholders left {left}"
    return sql


def duckdb_config(extensions: str) -> dict:
    """The same settings as the database's connect_args in bundle/databases/admetrics.yaml."""
    return {"extension_directory": extensions, "autoinstall_known_extensions": False,
            "autoload_known_extensions": True, "allow_unsigned_extensions": True}


def write_views(db: Path, warehouse, namespace: str, extensions: str, init: list = None) -> None:
    """Creates db holding the views of views.sql; replaces an older file atomically. With `init`
    (REST mode), the views read the attached catalog and `init` goes to `<db>.init.sql`."""
    import duckdb

    rest = init is not None
    sql = views_sql(warehouse, namespace, rest)
    tmp = db.with_name(db.name + ".tmp")
    tmp.unlink(missing_ok=True)
    con = duckdb.connect(str(tmp), config=duckdb_config(extensions))
    try:
        for stmt in init or ["LOAD iceberg", "SET unsafe_enable_version_guessing = true"]:
            con.execute(stmt)
        con.execute(sql)
    finally:
        con.close()
    init_file = db.with_name(db.name + ".init.sql")
    if rest:
        init_file.write_text(";\n".join(init) + ";\n")
    else:
        init_file.unlink(missing_ok=True)
    os.replace(tmp, db)


def build(duckdb_file: Path, extensions: str) -> bytes:
    values = {"__EXTENSIONS__": extensions, "__DUCKDB_FILE__": str(duckdb_file)}
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
    ap.add_argument("--warehouse", required=True,
                    help="the admetrics warehouse directory (iceberg.warehouse); with --rest-uri the catalog's warehouse")
    ap.add_argument("--rest-uri", default=None, help="read the tables through this Iceberg REST catalog")
    ap.add_argument("--s3-endpoint", default=None, help="with --rest-uri: the S3 server, e.g. http://minio:9000")
    ap.add_argument("--namespace", default="ads")
    ap.add_argument("--extensions", default=None, help="DuckDB extension folder (default: duckdb-ext-* of this Python)")
    ap.add_argument("--duckdb", required=True, help="the DuckDB file of views to write (Superset opens it)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    extensions = a.extensions or extensions_dir()
    db = Path(os.path.abspath(a.duckdb))
    try:
        if a.rest_uri:
            if not a.s3_endpoint:
                raise SystemExit("bundle: --rest-uri needs --s3-endpoint")
            init = rest_init_sql(a.rest_uri, a.warehouse, a.s3_endpoint)
            write_views(db, a.warehouse, a.namespace, extensions, init)
        else:
            write_views(db, Path(os.path.abspath(a.warehouse)), a.namespace, extensions)
    except Exception as e:  # noqa: BLE001 - a DuckDB error names the table it could not read
        raise SystemExit(f"bundle: cannot create the views in {db}: {e}")
    data = build(db, extensions)
    Path(a.out).write_bytes(data)
    print(f"bundle: {a.out} ({len(data)} bytes), views in {db}")


if __name__ == "__main__":
    main()
