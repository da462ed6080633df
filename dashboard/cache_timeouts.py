"""How long Superset keeps a chart-data answer, in one place: superset_config.py sets it,
browser_check.py waits it out before it expects every answer to carry the final tables.

scripts/dashboard.sh runs dashboard/warm_cache.py beside Superset, which re-runs the dashboard's
charts every ADMETRICS_SUPERSET_WARM_EVERY seconds (default 10, the refresh period; 0 = not
started), so viewers read answers at most one period old and never wait for a query. The entries
then only need to outlive the gap between two warm-ups of a chart, which load can stretch: 3
periods, at least 30 s. Without the warmer, 10 s: users who open or refresh the dashboard within
the same 10 s share one query per chart, and nobody sees data older than one refresh.
ADMETRICS_SUPERSET_DATA_CACHE_TIMEOUT overrides either. An empty variable means its default.
"""
import os


def warm_every() -> float:
    """Seconds between two warm-ups of the charts; 0 = no warmer."""
    return float(os.environ.get("ADMETRICS_SUPERSET_WARM_EVERY") or "10")


def data_cache_timeout() -> int:
    """Seconds a chart-data entry lives in Superset's cache."""
    override = os.environ.get("ADMETRICS_SUPERSET_DATA_CACHE_TIMEOUT")
    if override:
        return int(override)
    every = warm_every()
    return max(30, int(3 * every)) if every > 0 else 10
