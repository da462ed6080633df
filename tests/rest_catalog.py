#!/usr/bin/env python3
"""A small Iceberg REST catalog server for the tests: the REST protocol on loopback, backed by
PyIceberg's SqlCatalog (SQLite) with its warehouse on an S3-protocol server.

    rest_catalog.py --port P --db FILE --warehouse s3://BUCKET/PREFIX --s3-endpoint URL [--create-bucket]

Apache's REST fixture (`apache/iceberg-rest-fixture`, a JdbcCatalog behind the REST spec) is a
Maven artifact this machine cannot fetch; this is the same construction in Python. What the
client sees is the REST spec (routes, JSON bodies, 404/409 error objects): commits arrive as
spec `requirements` + `updates`, which PyIceberg's SqlCatalog checks and applies with its own
compare-and-swap on the metadata location. Enough of the spec for iceberg-rust's RestCatalog,
PyIceberg's RestCatalog and DuckDB's `ATTACH ... (TYPE iceberg)`: config, namespaces (list,
create, load, exists), tables (list, create, load, exists, commit).
"""
import argparse
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from pyiceberg.catalog.rest import CreateTableRequest, TableResponse
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.partitioning import UNPARTITIONED_PARTITION_SPEC
from pyiceberg.table import CommitTableRequest
from pyiceberg.table.sorting import UNSORTED_SORT_ORDER

ERRORS = {
    NoSuchTableError: (404, "NoSuchTableException"),
    NoSuchNamespaceError: (404, "NoSuchNamespaceException"),
    TableAlreadyExistsError: (409, "AlreadyExistsException"),
    NamespaceAlreadyExistsError: (409, "AlreadyExistsException"),
    CommitFailedException: (409, "CommitFailedException"),
}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    catalog: SqlCatalog = None
    lock = threading.Lock()  # one catalog operation at a time (SQLite, and simple to reason about)
    quiet = False

    def log_message(self, fmt, *args):
        if not self.quiet:
            sys.stderr.write("rest_catalog: " + fmt % args + "\n")

    def send(self, code, body=None):
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(code)
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def error(self, code, kind, message):
        self.send(code, {"error": {"message": message, "type": kind, "code": code}})

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def route(self):
        url = urllib.parse.urlsplit(self.path)
        parts = [urllib.parse.unquote(p) for p in url.path.strip("/").split("/")]
        if parts[:1] != ["v1"]:
            return None
        parts = parts[1:]
        # Namespaces are multi-level, joined by the unit separator (0x1F) in paths.
        ns = tuple(parts[1].split("\x1f")) if len(parts) > 1 else None
        return parts, ns, urllib.parse.parse_qs(url.query)

    def table_response(self, table):
        r = TableResponse(metadata_location=table.metadata_location, metadata=table.metadata, config={})
        return r.model_dump_json(by_alias=True, exclude_none=True).encode()

    def handle_any(self):
        routed = self.route()
        if routed is None:
            return self.error(404, "NotFoundException", f"no route {self.path}")
        parts, ns, query = routed
        cat, m = self.catalog, self.command
        with self.lock:
            try:
                if parts == ["config"] and m == "GET":
                    return self.send(200, {"defaults": {}, "overrides": {}})
                if parts == ["namespaces"] and m == "GET":
                    parent = tuple(query.get("parent", [""])[0].split("\x1f")) if "parent" in query else ()
                    return self.send(200, {"namespaces": [list(n) for n in cat.list_namespaces(parent)]})
                if parts == ["namespaces"] and m == "POST":
                    b = self.body()
                    cat.create_namespace(tuple(b["namespace"]), b.get("properties") or {})
                    return self.send(200, {"namespace": b["namespace"], "properties": b.get("properties") or {}})
                if len(parts) == 2 and parts[0] == "namespaces":
                    if m == "HEAD":
                        return self.send(204 if cat.namespace_exists(ns) else 404)
                    if m == "GET":
                        props = cat.load_namespace_properties(ns)
                        return self.send(200, {"namespace": list(ns), "properties": props})
                if len(parts) == 3 and parts[2] == "tables":
                    if m == "GET":
                        ids = [{"namespace": list(t[:-1]), "name": t[-1]} for t in cat.list_tables(ns)]
                        return self.send(200, {"identifiers": ids})
                    if m == "POST":
                        return self.create_table(ns, self.body())
                if len(parts) == 4 and parts[2] == "tables":
                    ident = ns + (parts[3],)
                    if m == "HEAD":
                        return self.send(204 if cat.table_exists(ident) else 404)
                    if m == "GET":
                        return self.send(200, self.table_response(cat.load_table(ident)))
                    if m == "POST":
                        b = self.body()
                        b.setdefault("identifier", {"namespace": list(ns), "name": parts[3]})
                        req = CommitTableRequest.model_validate(b)
                        table = cat.load_table(ident)
                        resp = cat.commit_table(table, req.requirements, req.updates)
                        return self.send(200, resp.model_dump_json(by_alias=True, exclude_none=True).encode())
                return self.error(404, "NotFoundException", f"no route {m} {self.path}")
            except tuple(ERRORS) as e:
                code, kind = next(v for k, v in ERRORS.items() if isinstance(e, k))
                return self.error(code, kind, str(e))
            except Exception as e:  # noqa: BLE001 - a test server: report everything to the client
                self.log_message("error: %r", e)
                return self.error(500, type(e).__name__, str(e))

    def create_table(self, ns, b):
        # iceberg-rust sends an unbound partition spec (no field ids); the spec allows that.
        spec = b.get("partition-spec")
        if spec:
            spec.setdefault("spec-id", 0)
            for i, f in enumerate(spec.get("fields", [])):
                f.setdefault("field-id", 1000 + i)
        for k in ("location", "partition-spec", "write-order"):
            b.setdefault(k, None)
        req = CreateTableRequest.model_validate(b)
        table = self.catalog.create_table(
            ns + (req.name,),
            schema=req.table_schema,
            location=req.location,
            partition_spec=req.partition_spec or UNPARTITIONED_PARTITION_SPEC,
            sort_order=req.write_order or UNSORTED_SORT_ORDER,
            properties=req.properties,
        )
        return self.send(200, self.table_response(table))

    do_GET = do_POST = do_HEAD = do_DELETE = handle_any


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--s3-endpoint", required=True)
    ap.add_argument("--create-bucket", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args()
    s3 = {
        "s3.endpoint": a.s3_endpoint,
        "s3.access-key-id": "test",
        "s3.secret-access-key": "test",
        "s3.region": "us-east-1",
    }
    if a.create_bucket:
        import boto3

        bucket = urllib.parse.urlsplit(a.warehouse).netloc
        boto3.client("s3", endpoint_url=a.s3_endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket=bucket)
    Handler.catalog = SqlCatalog("rest", uri=f"sqlite:///{a.db}", warehouse=a.warehouse, **s3)
    Handler.quiet = a.quiet
    server = ThreadingHTTPServer(("127.0.0.1", a.port), Handler)
    print(f"rest_catalog: serving http://127.0.0.1:{a.port}/ (warehouse {a.warehouse})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
