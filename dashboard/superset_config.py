"""Superset configuration for the admetrics dashboard (scripts/dashboard.sh sets
SUPERSET_CONFIG_PATH to this file). State lives in $ADMETRICS_SUPERSET_HOME (default
.state/superset): the metadata database and nothing else.

Local-demo defaults: a fixed secret key unless SUPERSET_SECRET_KEY is set, no HTTPS headers
(served on loopback). What makes ten concurrent viewers cheap (measured with
scripts/dashboard-bench.sh, see README):
- chart data is cached for 10 s (the dashboard's refresh period) in a cache all gunicorn
  workers share, so viewers share one query per chart and period;
- the dashboard's auto-refresh asks for force=true, which would bypass that cache and run every
  chart's query for every viewer every 10 s; force is dropped, so a refresh (and the "force
  refresh" menu item) gets data at most one cache period old;
- Superset's action log (a metadata-database row per API request) is off
  (ADMETRICS_SUPERSET_ACTION_LOG=1 keeps it);
- permission lookups are remembered for 60 s (admetrics_superset.security_manager_class): a
  page load no longer rebuilds the viewer's whole permission list from the metadata database;
- whole API answers are shared by viewers with the same roles and refreshed in the background
  (admetrics_superset.RoleResponseCache; ADMETRICS_SUPERSET_RESPONSE_CACHE=0 turns it off): a
  dashboard load costs a few milliseconds instead of ~0.9 s of Superset's Python, and nobody
  waits for a query another viewer's refresh is running.
"""
import os

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

# Chart data is cached for 10 s, the dashboard's refresh period, in files all gunicorn workers
# share: users who open it within the same 10 s share one query per chart, and nobody sees data
# older than one refresh.
DATA_CACHE_CONFIG = {
    "CACHE_TYPE": "admetrics_superset.SingleFlightFileSystemCache",
    "CACHE_DIR": os.path.join(_home, "chart-data-cache"),
    "CACHE_DEFAULT_TIMEOUT": 10,
    "CACHE_THRESHOLD": 2000,
}
CACHE_CONFIG = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 300}
FILTER_STATE_CACHE_CONFIG = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 3600}
EXPLORE_FORM_DATA_CACHE_CONFIG = {"CACHE_TYPE": "SimpleCache", "CACHE_DEFAULT_TIMEOUT": 3600}

SUPERSET_WEBSERVER_TIMEOUT = 60
ROW_LIMIT = 50000
# No example data, no telemetry.
SUPERSET_LOAD_EXAMPLES = False



# scripts/dashboard.sh puts dashboard/ on PYTHONPATH.
from admetrics_superset import NoActionLog, install_duckdb_init, mutate_app, security_manager_class  # noqa: E402
from superset.security import SupersetSecurityManager  # noqa: E402

# Permission lookups remembered for 60 s per worker (ADMETRICS_SUPERSET_PERMISSION_TTL).
CUSTOM_SECURITY_MANAGER = security_manager_class(SupersetSecurityManager)

install_duckdb_init()  # REST-catalog views (docker-compose): see bundle.py

FLASK_APP_MUTATOR = mutate_app
if os.environ.get("ADMETRICS_SUPERSET_ACTION_LOG") != "1":
    EVENT_LOGGER = NoActionLog()
