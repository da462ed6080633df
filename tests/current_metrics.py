"""The current value of every metric of ads.campaign_metrics, by the one definition of the rule:
sql/current_metrics.sql (read it for why: each row is one Kafka partition's share, the latest
revision per (stream, partition) counts, shares are summed, rates re-derived from the sums, withheld and
final are decided over the partitions; per plugin and window a promoted restatement's rows replace the
live ones).

    from current_metrics import current_metrics            # tests/*.py (this directory is on sys.path)
    rows = current_metrics(table.scan().to_arrow())        # pyarrow.Table, one row per key

Other scripts load it by path (scripts/query.py, scripts/flink/compare.py):

    sys.path.insert(0, str(REPO / "tests")); from current_metrics import define

Output columns: window_start, window_end, campaign_id, ad_id, metric, value, numerator,
denominator, is_final, withheld, partitions. A withheld key has no valid value: skip it.
"""
from pathlib import Path

SQL_FILE = Path(__file__).resolve().parent.parent / "sql" / "current_metrics.sql"

KEY = ("window_start", "window_end", "campaign_id", "ad_id", "metric")
# The columns of campaign_metrics the definition reads (enough for a PyIceberg selected_fields scan).
COLUMNS = KEY + ("stream", "kafka_partition", "revision", "numerator", "denominator", "is_final", "withheld",
                 "plugin", "restatement", "shadow", "dimensions")


def sql() -> str:
    """The text of sql/current_metrics.sql (CREATE OR REPLACE VIEW current_metrics ...)."""
    return SQL_FILE.read_text()


def define(con, source: str = None) -> None:
    """Creates the view current_metrics in the DuckDB connection `con`. `source`: SQL of the
    relation to read as campaign_metrics (e.g. "iceberg_scan('...')"), made a view of that name
    first; None when `con` already has a relation called campaign_metrics."""
    if source is not None:
        con.execute(f"CREATE OR REPLACE VIEW campaign_metrics AS SELECT * FROM {source}")
    con.execute(sql())


def current_metrics(table, where: str = None):
    """Runs sql/current_metrics.sql in an in-memory DuckDB over `table` (a pyarrow.Table with
    the campaign_metrics columns, e.g. PyIceberg's scan().to_arrow()). Returns a pyarrow.Table,
    one row per (window_start, window_end, campaign_id, ad_id, metric), in key order; `where`
    (SQL over the output columns) filters it."""
    import duckdb

    con = duckdb.connect()
    try:
        # Timestamps come back in the session's time zone (the machine's by default): UTC, like the table.
        con.execute("SET TimeZone = 'UTC'")
        con.register("campaign_metrics", table)
        define(con)
        q = "SELECT * FROM current_metrics"
        if where:
            q += f" WHERE {where}"
        return con.execute(q + " ORDER BY ALL").fetch_arrow_table()
    finally:
        con.close()


def current_metrics_rows(table, where: str = None) -> list:
    """current_metrics() as a list of dicts (timestamps as timezone-aware datetimes)."""
    return current_metrics(table, where).to_pylist()
