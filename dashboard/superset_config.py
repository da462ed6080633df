"""Superset configuration for the admetrics dashboard (scripts/dashboard.sh sets
SUPERSET_CONFIG_PATH to this file). State lives in $ADMETRICS_SUPERSET_HOME (default
.state/superset): the metadata database; caches live in Redis ($ADMETRICS_REDIS_URL, default
the unix socket of the redis-server scripts/dashboard.sh starts in that folder; docker-compose
points it at its `redis` service).

Local-demo defaults: a fixed secret key unless SUPERSET_SECRET_KEY is set, no HTTPS headers
(served on loopback). What makes ten concurrent viewers cheap (measured with
scripts/dashboard-bench.sh, see README), all of it Superset's own settings but one:
- chart data is cached in Redis, shared by every gunicorn worker, and kept warm: Superset's own
  warm-up endpoint re-runs the dashboard's charts every 10 s (dashboard/warm_cache.py, started by
  scripts/dashboard.sh), so viewers share one query per chart and period and none waits for one;
- the dashboard's auto-refresh reads that cache (DASHBOARD_AUTO_REFRESH_MODE = "fetch"; the
  default "force" would run every chart's query for every viewer every 10 s), so a refresh shows
  data at most one cache period old; the "force refresh" menu item still forces;
- a missing chart-data entry is computed once however many viewers miss it together
  (admetrics_superset.SingleFlightRedisCache: a Redis lock per key);
- Superset's own object cache (CACHE_CONFIG: e.g. its 60 s memo of the page's bootstrap data),
  the dashboards' filter state and explore state are in Redis too, so they are shared by all
  workers (per-process caches would lose a filter state saved by another worker);
- Superset's action log (a metadata-database row per API request) is off
  (ADMETRICS_SUPERSET_ACTION_LOG=1 keeps it).
"""
import os

from cache_timeouts import data_cache_timeout

_home = os.environ.get("ADMETRICS_SUPERSET_HOME", os.path.abspath(".state/superset"))
os.makedirs(_home, exist_ok=True)

SECRET_KEY = os.environ.get("SUPERSET_SECRET_KEY", "admetrics-local-demo-not-a-secret")
SQLALCHEMY_DATABASE_URI = f"sqlite:///{_home}/superset.db?check_same_thread=false"
DATA_DIR = _home

# Loopback demo: no Talisman (CSP/HTTPS), no outbound calls.
TALISMAN_ENABLED = False
CONTENT_SECURITY_POLICY_WARNING = False
# The HTTP-level load test logs in through /api/v1/security/login and posts chart-data requests
# with a bearer token; CSRF protects cookie sessions only.
WTF_CSRF_EXEMPT_LIST = ["superset.views.core.log", "superset.charts.data.api.data"]

# Redis: scripts/dashboard.sh starts one on a unix socket in $ADMETRICS_SUPERSET_HOME unless
# ADMETRICS_REDIS_URL names another (docker-compose: redis://redis:6379/0). One database, a key
# prefix per cache.
REDIS_URL = os.environ.get("ADMETRICS_REDIS_URL") or f"unix://{_home}/redis.sock"


def _redis_cache(prefix, timeout, cache_type="RedisCache", **extra):
    return {"CACHE_TYPE": cache_type, "CACHE_REDIS_URL": REDIS_URL,
            "CACHE_KEY_PREFIX": f"admetrics_{prefix}_", "CACHE_DEFAULT_TIMEOUT": timeout, **extra}


# Chart data: kept warm by dashboard/warm_cache.py, entries live for cache_timeouts.data_cache_timeout()
# (3 warm periods, at least 30 s; 10 s without the warmer; why: dashboard/cache_timeouts.py).
# ADMETRICS_SUPERSET_SINGLE_FLIGHT=0: plain RedisCache (to measure what the single-flight saves).
DATA_CACHE_CONFIG = _redis_cache(
    "data", data_cache_timeout(),
    "admetrics_superset.SingleFlightRedisCache"
    if os.environ.get("ADMETRICS_SUPERSET_SINGLE_FLIGHT", "1") != "0" else "RedisCache")
CACHE_CONFIG = _redis_cache("meta", 300)
FILTER_STATE_CACHE_CONFIG = _redis_cache("filter_state", 86400, REFRESH_TIMEOUT_ON_RETRIEVAL=True)
EXPLORE_FORM_DATA_CACHE_CONFIG = _redis_cache("explore_form_data", 86400, REFRESH_TIMEOUT_ON_RETRIEVAL=True)
# No RESULTS_BACKEND: it holds SQL Lab's asynchronous results, which need Celery workers
# (not run here: on 2 cores they would compete with the web workers for the same CPU).

# The auto-refresh (every 10 s) reads the chart-data cache instead of forcing new queries.
DASHBOARD_AUTO_REFRESH_MODE = "fetch"

# Permissions are written by `superset init` (scripts/dashboard.sh, whenever the config or the
# bundle changes), not re-synced by every process that builds the app (gunicorn's master, each
# CLI call): that sync is metadata-database work on every start.
FAB_UPDATE_PERMS = False

SUPERSET_WEBSERVER_TIMEOUT = 60
ROW_LIMIT = 50000
# No example data, no telemetry.
SUPERSET_LOAD_EXAMPLES = False

# scripts/dashboard.sh puts dashboard/ on PYTHONPATH.
from admetrics_superset import NoActionLog, install_duckdb_init  # noqa: E402

install_duckdb_init()  # REST-catalog views (docker-compose): see bundle.py

if os.environ.get("ADMETRICS_SUPERSET_ACTION_LOG") != "1":
    EVENT_LOGGER = NoActionLog()
