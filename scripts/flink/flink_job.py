"""The reference design's job on Flink (PyFlink 2.3.0, local mini-cluster): per campaign and
60 s tumbling event-time window, impressions, clicks, conversions, revenue, CTR and CVR, with a
5 s bounded-out-of-orderness watermark, over a JSON-lines file of events.

    python flink_job.py EVENTS.jsonl OUT.jsonl [--parallelism N] [--epoch]

Two input forms (compare.py --formats): the events as admetrics' load generator writes them
(`event_time` an ISO-8601 string, `revenue` a decimal string: Flink parses timestamps with its
JSON format's ISO-8601 path and sums DECIMAL(18,6), its slowest path), or with --epoch the same
events with `event_time` as epoch milliseconds and `revenue` a JSON number: a BIGINT column, the
rowtime a computed `TO_TIMESTAMP_LTZ(event_time, 3)`, revenue DOUBLE, and object reuse on (the
configuration of the Kafka job, flink_kafka_job.py, Flink's fastest path).

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
    ap.add_argument("--epoch", action="store_true",
                    help="event_time is epoch milliseconds and revenue a JSON number (Flink's fastest path)")
    a = ap.parse_args()

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("table.local-time-zone", "UTC")
    if a.parallelism:
        conf.set("parallelism.default", str(a.parallelism))
    path = a.events.replace("'", "''")
    if a.epoch:
        conf.set("pipeline.object-reuse", "true")
        columns = """event_time BIGINT,
          revenue DOUBLE,
          ts AS TO_TIMESTAMP_LTZ(event_time, 3),
          WATERMARK FOR ts AS ts - INTERVAL '5' SECOND"""
        fmt, rowtime, revenue = "", "ts", "revenue"
    else:
        columns = """event_time TIMESTAMP_LTZ(3),
          revenue STRING,
          WATERMARK FOR event_time AS event_time - INTERVAL '5' SECOND"""
        fmt = ",\n          'json.timestamp-format.standard' = 'ISO-8601'"
        rowtime, revenue = "event_time", "CAST(revenue AS DECIMAL(18, 6))"
    env.execute_sql(f"""
        CREATE TABLE events (
          event_id STRING,
          event_type STRING,
          campaign_id STRING,
          ad_id STRING,
          user_id STRING,
          device STRING,
          country STRING,
          placement STRING,
          currency STRING,
          {columns}
        ) WITH (
          'connector' = 'filesystem',
          'path' = 'file://{path}',
          'format' = 'json'{fmt}
        )""")
    result = env.execute_sql(f"""
        SELECT
          campaign_id,
          window_start,
          COUNT(*) FILTER (WHERE event_type = 'impression') AS impressions,
          COUNT(*) FILTER (WHERE event_type = 'click') AS clicks,
          COUNT(*) FILTER (WHERE event_type = 'conversion') AS conversions,
          COALESCE(SUM(CASE WHEN event_type = 'conversion' THEN {revenue} END), 0) AS revenue,
          CASE WHEN COUNT(*) FILTER (WHERE event_type = 'impression') > 0
               THEN CAST(COUNT(*) FILTER (WHERE event_type = 'click') AS DOUBLE)
                    / COUNT(*) FILTER (WHERE event_type = 'impression') ELSE 0 END AS ctr,
          CASE WHEN COUNT(*) FILTER (WHERE event_type = 'click') > 0
               THEN CAST(COUNT(*) FILTER (WHERE event_type = 'conversion') AS DOUBLE)
                    / COUNT(*) FILTER (WHERE event_type = 'click') ELSE 0 END AS cvr
        FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR({rowtime}), INTERVAL '60' SECOND))
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
