"""The reference design's job on Flink (PyFlink 2.3.0, local mini-cluster): per campaign and
60 s tumbling event-time window, impressions, clicks, conversions, revenue, CTR and CVR, with a
5 s bounded-out-of-orderness watermark, over a JSON-lines file of events.

    python flink_job.py EVENTS.jsonl OUT.jsonl [--parallelism N]

Writes one JSON object per window row to OUT (collected through the client, ~3K rows). Run by
compare.py, which measures it; nothing here is timed.
"""
import argparse
import json

from pyflink.table import EnvironmentSettings, TableEnvironment


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("events")
    ap.add_argument("out")
    ap.add_argument("--parallelism", type=int, default=0, help="0 = Flink's default (the cores)")
    a = ap.parse_args()

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("table.local-time-zone", "UTC")
    if a.parallelism:
        conf.set("parallelism.default", str(a.parallelism))
    path = a.events.replace("'", "''")
    env.execute_sql(f"""
        CREATE TABLE events (
          event_id STRING,
          event_type STRING,
          event_time TIMESTAMP_LTZ(3),
          campaign_id STRING,
          ad_id STRING,
          user_id STRING,
          device STRING,
          country STRING,
          placement STRING,
          revenue STRING,
          currency STRING,
          WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND
        ) WITH (
          'connector' = 'filesystem',
          'path' = 'file://{path}',
          'format' = 'json',
          'json.timestamp-format.standard' = 'ISO-8601'
        )""")
    result = env.execute_sql("""
        SELECT
          campaign_id,
          window_start,
          COUNT(*) FILTER (WHERE event_type = 'impression') AS impressions,
          COUNT(*) FILTER (WHERE event_type = 'click') AS clicks,
          COUNT(*) FILTER (WHERE event_type = 'conversion') AS conversions,
          COALESCE(SUM(CASE WHEN event_type = 'conversion' THEN CAST(revenue AS DECIMAL(18, 6)) END), 0) AS revenue,
          CASE WHEN COUNT(*) FILTER (WHERE event_type = 'impression') > 0
               THEN CAST(COUNT(*) FILTER (WHERE event_type = 'click') AS DOUBLE)
                    / COUNT(*) FILTER (WHERE event_type = 'impression') ELSE 0 END AS ctr,
          CASE WHEN COUNT(*) FILTER (WHERE event_type = 'click') > 0
               THEN CAST(COUNT(*) FILTER (WHERE event_type = 'conversion') AS DOUBLE)
                    / COUNT(*) FILTER (WHERE event_type = 'click') ELSE 0 END AS cvr
        FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(event_time), INTERVAL '60' SECOND))
        GROUP BY campaign_id, window_start, window_end""")
    n = 0
    with result.collect() as rows, open(a.out, "w") as out:
        for r in rows:
            # window_start is a TIMESTAMP in the session zone (UTC): naive datetime.
            ws = r[1]
            out.write(json.dumps({
                "campaign_id": r[0],
                "window_start": ws.strftime("%Y-%m-%dT%H:%M:%S"),
                "impressions": r[2], "clicks": r[3], "conversions": r[4],
                "revenue": str(r[5]), "ctr": r[6], "cvr": r[7],
            }) + "\n")
            n += 1
    print(f"flink: {n} window rows")


if __name__ == "__main__":
    main()
