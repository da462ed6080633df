"""What dashboard/superset_config.py plugs into Superset (scripts/dashboard.sh puts this folder
on PYTHONPATH): a chart-data cache that runs each query once when many viewers miss together,
a WSGI filter that lets the auto-refresh use that cache, and an action log that writes nothing.

Why the cache: the dashboard refreshes every 10 s and its chart data is cached for as long. When an entry
expires, every viewer whose request arrives before the first answer is cached misses too, and
each would run the same Iceberg scan (ten viewers: ten scans per chart on 2 cores, measured as
the dominant cost of scripts/dashboard-bench.sh). Here the first to miss runs the query; the
others wait for its answer in the shared cache.
"""
import io
import json
import os
import threading
import time

from flask_caching.backends.filesystemcache import FileSystemCache
from superset.utils.log import AbstractEventLogger


class SingleFlightFileSystemCache(FileSystemCache):
    """A FileSystemCache (shared by all gunicorn workers) with one query per missing key.

    A miss takes a lock file next to the entry (O_EXCL: atomic across processes). The holder
    returns None, so Superset runs the query and stores the answer through set(), which drops
    the lock. Others missing the same key meanwhile poll for the answer for up to `wait` seconds
    and then run the query themselves; a lock older than `stale` seconds (its holder failed: an
    error result is not cached) is taken over.
    """

    wait = 20.0
    stale = 30.0
    poll = 0.05

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._held = threading.local()

    def _lock_path(self, key: str) -> str:
        return self._get_filename(key) + ".lock"

    def _try_lock(self, key: str) -> bool:
        path = self._lock_path(key)
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            try:
                if time.time() - os.path.getmtime(path) < self.stale:
                    return False
                os.unlink(path)  # its holder is gone; the next miss takes it
            except FileNotFoundError:
                pass
            return False
        held = getattr(self._held, "keys", None)
        if held is None:
            held = self._held.keys = set()
        held.add(key)
        return True

    def _unlock(self, key: str) -> None:
        held = getattr(self._held, "keys", set())
        if key in held:
            held.discard(key)
            try:
                os.unlink(self._lock_path(key))
            except FileNotFoundError:
                pass

    def get(self, key):
        self._unlock(key)  # held since this thread's last miss, whose query failed
        value = super().get(key)
        if value is not None or self._try_lock(key):
            return value
        deadline = time.monotonic() + self.wait
        while time.monotonic() < deadline:
            time.sleep(self.poll)
            value = super().get(key)
            if value is not None or self._try_lock(key):
                return value
        return None  # the holder is slow: run the query rather than keep the viewer waiting

    def set(self, key, value, timeout=None, mgmt_element=False):
        try:
            return super().set(key, value, timeout=timeout, mgmt_element=mgmt_element)
        finally:
            if not mgmt_element:
                self._unlock(key)


class RefreshFromCache:
    """WSGI middleware: chart-data requests never force a query past the shared cache.

    Superset's dashboard auto-refresh sends force=true (in the URL and the JSON body) for every
    chart of every open dashboard; with ten viewers that is ten uncached queries per chart per
    refresh. Dropping it serves them from the 10 s cache instead.
    """

    def __init__(self, app):
        self.app = app

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "POST" and environ.get("PATH_INFO") == "/api/v1/chart/data":
            environ["QUERY_STRING"] = environ.get("QUERY_STRING", "").replace("force=true", "force=false")
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            try:
                ctx = json.loads(body)
            except ValueError:
                ctx = None  # not ours to judge: Superset answers it with its own error
            if isinstance(ctx, dict) and ctx.get("force"):
                ctx["force"] = False
                body = json.dumps(ctx).encode()
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return self.app(environ, start_response)


def refresh_from_cache(app):
    """FLASK_APP_MUTATOR: wraps the app in RefreshFromCache."""
    app.wsgi_app = RefreshFromCache(app.wsgi_app)


class NoActionLog(AbstractEventLogger):
    """Superset's default action logger writes a metadata-database row per API request."""

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


class RoleResponseCache:
    """A short-lived cache of whole API responses, shared by users with the same roles and by all
    gunicorn workers, refreshed in the background (stale-while-revalidate).

    Why: a dashboard load is ~20 API calls, and even when every chart's data is cached Superset
    spends ~0.9 s of Python on them (permission checks against the metadata database, marshmallow
    schemas, query-object building), so ten viewers at once queue for ~9 s of CPU on 2 cores; and
    when the 10 s chart-data cache expires, the viewers who ask first wait for the Iceberg scans.
    What those calls return depends only on the viewer's roles (permissions, the dashboard's
    definition, chart data under role-based row-level security), so viewers with the same roles
    can share one answer, like a reverse proxy's micro-cache.

    How: only the allow-listed GETs below and chart-data POSTs, only 200 answers, keyed by (role
    ids, method, path + query, body). An answer is fresh for `ttl` seconds (chart data: until the
    chart-data cache entry it came from expires, from its `cached_dttm` + `cache_timeout`, so
    at most the dashboard's 10 s refresh period).
    After that it is still served, and the first request to see it stale replays itself in a
    background thread (same path, body and session cookie, marked to pass this cache) whose
    answer replaces it. So a viewer never waits for a query that another viewer's refresh is
    already running, and data is at most one refresh period plus one query old (and never more
    than `max_stale` past fresh). An answer nobody asked for in `keep` seconds is dropped (the
    next viewer computes it while waiting).

    User-specific calls (favourites, /me, filter state, the page itself) and anything else pass
    through. A hit trusts the session's user id and that user's role ids for `ttl` seconds without
    asking the metadata database, so a deactivated user or a role change is noticed within that. Dataset SQL that templates on the user (Jinja `current_username`) would need the
    user in the key; admetrics' views do not. ADMETRICS_SUPERSET_RESPONSE_CACHE=0 turns it off.
    """

    GET_PREFIXES = (
        "/api/v1/dashboard/_info", "/api/v1/chart/_info", "/api/v1/database/",
    )
    BYPASS = "HTTP_X_ADMETRICS_REFRESH"
    # Metadata answers (permissions, the dashboard's definition, dataset lists) change only when
    # someone edits roles or re-imports the bundle: fresh for a minute.
    ttl = 60.0
    keep = 300.0
    # A stale answer is served while its refresh runs, but never longer than this past its
    # freshness (a refresh that keeps failing must not freeze the dashboard).
    max_stale = 10.0
    refresh_nice = 10

    def __init__(self, app, directory):
        from cachelib import FileSystemCache

        self.app = app
        self.store = FileSystemCache(directory, threshold=5000, default_timeout=int(self.keep))
        self._roles = {}  # user id -> (expires_at, role ids)
        self._refreshing = set()
        self._lock = threading.Lock()

    def cacheable(self, request) -> bool:
        path = request.path
        if request.method == "POST":
            return path == "/api/v1/chart/data"
        if request.method != "GET":
            return False
        if path.startswith(self.GET_PREFIXES):
            return True
        parts = path.strip("/").split("/")  # api v1 dashboard <id> [charts|datasets] | dataset <id> drill_info
        if parts[:3] == ["api", "v1", "dashboard"] and len(parts) in (4, 5):
            return parts[3] != "favorite_status" and (len(parts) == 4 or parts[4] in ("charts", "datasets"))
        return parts[:3] == ["api", "v1", "dataset"] and len(parts) == 5 and parts[4] == "drill_info"

    def role_key(self, session):
        """The viewer's role ids, from the session's user id (no metadata query while cached)."""
        from flask_login import current_user

        uid = session.get("_user_id")
        if not uid:
            return None
        now = time.monotonic()
        hit = self._roles.get(uid)
        if hit and hit[0] > now:
            return hit[1]
        if not current_user.is_authenticated:
            return None
        roles = tuple(sorted(r.id for r in current_user.roles))
        self._roles[uid] = (now + self.ttl, roles)
        return roles

    def key(self, request, roles):
        import hashlib

        h = hashlib.sha256(repr((roles, request.method, request.full_path)).encode())
        if request.method == "POST":
            h.update(request.get_data(cache=True))
        return h.hexdigest()

    def before(self):
        from flask import Response, g, request, session

        if not self.cacheable(request):
            return None
        roles = self.role_key(session)
        if roles is None:
            return None
        key = self.key(request, roles)
        hit = None if request.environ.get(self.BYPASS) else self.store.get(key)
        now = time.time()
        # A miss, our own background refresh, or an answer whose refreshes keep failing: the view
        # answers (this viewer waits) and after() keeps the answer.
        if hit is None or hit[0] + self.max_stale < now:
            g.admetrics_cache_key = key
            return None
        fresh_until, status, headers, body = hit
        if fresh_until <= now:
            self.refresh(key, request)
        return Response(body, status=status, headers=headers)

    def refresh(self, key, request):
        """Replays `request` in a background thread (at most one per key per worker)."""
        with self._lock:
            if key in self._refreshing:
                return
            self._refreshing.add(key)
        environ = {
            "method": request.method,
            "path": request.path,
            "query_string": request.query_string.decode("latin-1"),
            "data": request.get_data(cache=True),
            "headers": {k: v for k, v in request.headers.items()
                        if k.lower() in ("cookie", "content-type", "authorization", "referer")},
        }

        threading.Thread(target=self._replay, args=(key, environ), name="admetrics-refresh",
                         daemon=True).start()

    def _replay(self, key, environ):
        """Runs the request again through the app (this cache passed), so after() stores it."""
        try:
            # Below viewers' requests (Linux: per thread; DuckDB's worker threads, created by
            # this thread's new connection, inherit it).
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.refresh_nice)
        except (AttributeError, OSError):
            pass
        try:
            # use_cookies=False: else the client replaces our Cookie header with its (empty) jar.
            with self.app.test_client(use_cookies=False) as c:
                r = c.open(environ["path"], method=environ["method"], query_string=environ["query_string"],
                           data=environ["data"], headers=environ["headers"],
                           environ_overrides={self.BYPASS: "1"})
            if r.status_code != 200:
                self.app.logger.warning("admetrics response cache: refresh of %s answered %s",
                                        environ["path"], r.status_code)
        except Exception:  # noqa: BLE001 - the stale answer stays; the next viewer retries
            self.app.logger.exception("admetrics response cache: refresh of %s failed", environ["path"])
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def after(self, response):
        from flask import g, request

        key = g.pop("admetrics_cache_key", None)
        if key is None or response.status_code != 200 or response.direct_passthrough:
            return response
        ttl = self.ttl
        if request.path == "/api/v1/chart/data":
            ttl = self.chart_data_ttl(response)
            if ttl is None:
                return response
        headers = [(k, v) for k, v in response.headers.items() if k.lower() != "set-cookie"]
        self.store.set(key, (time.time() + ttl, response.status_code, headers, response.get_data()))
        return response

    @staticmethod
    def chart_data_ttl(response):
        """Seconds until the chart-data cache entry behind this answer expires (None: an error
        answer, not to be cached)."""
        from datetime import datetime, timezone

        try:
            results = json.loads(response.get_data()).get("result") or []
        except ValueError:
            return None
        left = []
        for r in results:
            timeout = r.get("cache_timeout")
            if not timeout or r.get("status") not in ("success", None) or r.get("error"):
                return None
            cached = r.get("cached_dttm")
            if cached:
                made = datetime.fromisoformat(cached).replace(tzinfo=timezone.utc).timestamp()
                left.append(made + timeout - time.time())
            else:
                left.append(float(timeout))
        return max(0.0, min(left)) if left else None


def install_response_cache(app):
    if os.environ.get("ADMETRICS_SUPERSET_RESPONSE_CACHE", "1") == "0":
        return
    home = os.environ.get("ADMETRICS_SUPERSET_HOME", os.path.abspath(".state/superset"))
    cache = RoleResponseCache(app, os.path.join(home, "response-cache"))
    app.before_request(cache.before)
    app.after_request(cache.after)


def mutate_app(app):
    """FLASK_APP_MUTATOR: the WSGI filter and the response cache."""
    refresh_from_cache(app)
    install_response_cache(app)


class _TtlMemo:
    """A per-process map whose entries live `ttl` seconds (for values derived from roles)."""

    def __init__(self, ttl: float):
        self.ttl = ttl
        self._d = {}

    def get(self, key, compute):
        now = time.monotonic()
        hit = self._d.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        value = compute()
        if len(self._d) > 10000:
            self._d.clear()
        self._d[key] = (now + self.ttl, value)
        return value


def security_manager_class(base):
    """CUSTOM_SECURITY_MANAGER: `base` (Superset's security manager) with its permission lookups
    remembered for PERMISSION_TTL seconds per process.

    Why: Flask-AppBuilder answers every "may this role do X" with metadata-database queries, and
    every page load builds the viewer's whole permission list (hundreds of ORM rows for Admin):
    ~60 % of the dashboard page's server time here, and a check or two on every API call. The
    answers depend only on role ids and change only when someone edits roles; a change shows
    within PERMISSION_TTL (60 s)."""

    ttl = float(os.environ.get("ADMETRICS_SUPERSET_PERMISSION_TTL", "60"))

    class AdmetricsSecurityManager(base):
        _public = _TtlMemo(ttl)
        _on_roles = _TtlMemo(ttl)
        _roles_permissions = _TtlMemo(ttl)

        def is_item_public(self, permission_name, view_name):
            return self._public.get((permission_name, view_name),
                                    lambda: super(AdmetricsSecurityManager, self).is_item_public(
                                        permission_name, view_name))

        def exist_permission_on_roles(self, view_name, permission_name, role_ids):
            return self._on_roles.get((view_name, permission_name, tuple(sorted(role_ids))),
                                      lambda: super(AdmetricsSecurityManager, self).exist_permission_on_roles(
                                          view_name, permission_name, role_ids))

        def get_user_roles_permissions(self, user):
            # The answer is a plain dict of role name -> [(permission, view)], read-only to callers.
            key = tuple(sorted(r.id for r in self.get_user_roles(user)))
            if not key:
                return super().get_user_roles_permissions(user)
            return self._roles_permissions.get(
                key, lambda: super(AdmetricsSecurityManager, self).get_user_roles_permissions(user))

    return AdmetricsSecurityManager
