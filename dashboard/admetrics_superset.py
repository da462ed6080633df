"""What dashboard/superset_config.py plugs into Superset that Superset does not do itself
(scripts/dashboard.sh puts this folder on PYTHONPATH). Each piece has a test of its own
(tests/test_admetrics_superset.py, run by tests/dashboard.rs):

- SingleFlightRedisCache: Superset's chart-data cache on Redis (its documented production
  backend, shared by all gunicorn workers) where a missing entry is computed once however many
  viewers miss it together;
- NoActionLog: Superset's action log turned off;
- run_duckdb_init: per-connection DuckDB set-up for tables in a REST catalog on S3.

Everything else is Superset's own: the caches are its Flask-Caching configs on Redis, the
dashboard's auto-refresh reads that cache (DASHBOARD_AUTO_REFRESH_MODE = "fetch"), and every
request goes through Superset's own authorization (no answer is served from a cache of ours).
"""
import os
import threading
import time
import uuid

from flask_caching.backends.rediscache import RedisCache
from superset.utils.log import AbstractEventLogger


class SingleFlightRedisCache(RedisCache):
    """Flask-Caching's RedisCache with one computation per missing key across all workers.

    Why: the dashboard refreshes every 10 s and its chart data is cached for as long. When an
    entry expires, every viewer whose request arrives before the first answer is cached misses
    too, and each would run the same Iceberg scan (ten viewers whose refreshes line up: ten scans
    per chart on 2 cores; measured with scripts/dashboard-bench.sh, see README). Superset has no
    such guard (its GLOBAL_ASYNC_QUERIES dedupe nothing either; they need Celery workers too).

    How: a miss takes a Redis lock (SET NX PX, atomic across processes) named after the key.
    The holder gets None, so Superset runs the query and stores the answer through set(), which
    drops the lock. Others missing the same key meanwhile poll for the answer for up to `wait`
    seconds and then run the query themselves. A holder whose query failed (Superset does not
    cache errors) never calls set(): its lock expires after `lock_ttl` seconds, or is dropped at
    that thread's next get() of the same key. This only decides who runs a query; what a user may
    see is still checked by Superset before the cache is read.
    """

    wait = 20.0
    lock_ttl = 30.0
    poll = 0.05
    _RELEASE = ("if redis.call('get', KEYS[1]) == ARGV[1] then "
                "return redis.call('del', KEYS[1]) else return 0 end")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._held = threading.local()  # key -> lock token, per thread
        self._release_script = self._write_client.register_script(self._RELEASE)

    def _lock_name(self, key: str) -> str:
        return f"{self._get_prefix()}{key}:single-flight"

    def _held_locks(self) -> dict:
        held = getattr(self._held, "locks", None)
        if held is None:
            held = self._held.locks = {}
        return held

    def _acquire(self, key: str) -> bool:
        token = uuid.uuid4().hex
        if self._write_client.set(self._lock_name(key), token, nx=True, px=int(self.lock_ttl * 1000)):
            self._held_locks()[key] = token
            return True
        return False

    def _release(self, key: str) -> None:
        token = self._held_locks().pop(key, None)
        if token is not None:
            self._release_script(keys=[self._lock_name(key)], args=[token])

    def get(self, key):
        self._release(key)  # held since this thread's last miss of it, whose query failed
        value = super().get(key)
        if value is not None or self._acquire(key):
            return value
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            time.sleep(self.poll)
            value = super().get(key)
            if value is not None or self._acquire(key):
                return value
        return None  # the holder is slow: run the query rather than keep the viewer waiting

    def set(self, key, value, timeout=None):
        try:
            return super().set(key, value, timeout=timeout)
        finally:
            self._release(key)


class NoActionLog(AbstractEventLogger):
    """Superset's default action logger (DBEventLogger) writes a metadata-database row per API
    request: a SQLite write per chart-data call, serialised across all workers."""

    def log(self, *args, **kwargs):
        pass


_DUCKDB_INIT_LOCK = threading.Lock()


def run_duckdb_init(dbapi_connection, _record=None):
    """SQLAlchemy "connect" listener: a DuckDB file with a `<file>.init.sql` beside it (written by
    bundle.py for a REST catalog on S3) gets those statements run on every new connection, since
    DuckDB keeps secrets and ATTACHed catalogs per connection, not in the file. Other
    connections (the metadata database, DuckDB files without one) are left alone."""
    if "duckdb" not in type(dbapi_connection).__module__:
        return
    try:
        rows = dbapi_connection.execute(
            "SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchall()
    except Exception:  # noqa: BLE001 - not a DuckDB we know how to ask
        return
    path = rows[0][0] if rows and rows[0][0] else None
    init = f"{path}.init.sql" if path else None
    if init and os.path.exists(init):
        with open(init) as f:
            stmts = [s for s in f.read().split(";\n") if s.strip()]
        # Connections to one DuckDB file share its database instance, so the ATTACH is seen by
        # all of them; `ATTACH IF NOT EXISTS` is check-then-act, and two threads' first chart
        # queries attaching at once fail with 'database with name "ice" already exists' (found
        # by tests/stack.rs). One at a time per process.
        with _DUCKDB_INIT_LOCK:
            for stmt in stmts:
                dbapi_connection.execute(stmt)


def install_duckdb_init():
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    if not event.contains(Engine, "connect", run_duckdb_init):
        event.listen(Engine, "connect", run_duckdb_init)
