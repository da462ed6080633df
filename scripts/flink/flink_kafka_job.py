"""The seed's pipeline on Flink, for real: Kafka → Flink SQL → Iceberg (both tables), the peer of
`admetrics run` on the same topic (scripts/flink/compare_kafka.py measures the two side by side).

    python flink_kafka_job.py --brokers 127.0.0.1:9092 --topic T --group G \\
        --catalog-db /path/catalog.db --warehouse /path/wh [--parallelism 1] [--checkpoint-ms 10000]
        [--jvm-opts=-Xmx1g]

Reads the topic from the earliest offset to the end offsets it finds at start-up (the Kafka SQL
connector's `scan.bounded.mode = latest-offset`: a bounded streaming job, so it ends by itself
when it has consumed everything and, at the end of input, closes every window and makes the
Iceberg committers commit what is left), and writes, in one job (one source, a statement set):
  - `ads.campaign_events`: every raw event, with its Kafka partition, offset and record timestamp
    (like admetrics' campaign_events; unpartitioned, as Flink SQL DDL cannot declare Iceberg's
    hidden `day()` partitioning, and the inputs here span one day);
  - `ads.campaign_metrics`: per campaign and 60 s tumbling event-time window, impressions,
    clicks, conversions, revenue, CTR and CVR (the query of flink_job.py), one final row per
    window (Flink emits a window once, when the watermark passes its end).
The catalog is Iceberg Java's JdbcCatalog on a SQLite file with a local warehouse directory:
the same kind as admetrics' (iceberg-rust's SQL catalog on SQLite, the same `iceberg_tables`
schema), so PyIceberg's SqlCatalog reads both. (Apache's REST catalog server would put a third
JVM and HTTP round trips between Flink and the same JdbcCatalog; admetrics talks to SQLite
directly, so Flink does too.)

Versions: PyFlink 2.0.2 (scripts/flink/requirements-kafka.txt) with flink-sql-connector-kafka
4.0.1-2.0 and iceberg-flink-runtime-2.0 1.11.0, Hadoop's shaded client 3.4.1 and sqlite-jdbc
3.50.3.0 (scripts/flink/pom.xml, fetched by scripts/setup.sh --flink into .tools/). Flink 2.0 is
the newest minor for which both connectors are on Maven Central (Kafka: 2.0 and 2.2; Iceberg:
2.0 and 2.1 in 1.11.0; neither for 2.3, so the file comparison's PyFlink 2.3.0 cannot read Kafka).

Flink configured at its best for this job (each a choice, and why; reviewed this session, see
README "On Apache Kafka"):
  - parallelism 1 (`--parallelism`): on 2 cores shared with the broker and the measurement,
    more parallel instances only add copies of every operator's overhead. The window aggregate
    is keyed, so even at p=1 Flink puts a hash exchange (a second task thread, records
    serialised across it) before it: that is Flink's plan, not a setting;
  - two-phase aggregation (`table.optimizer.agg-phase-strategy = TWO_PHASE`): a local window
    pre-aggregate chained to the source folds the events into per-campaign partial rows before
    that exchange, so only a few thousand rows cross it instead of every event (an earlier
    version forced ONE_PHASE; the review measured against it);
  - `pipeline.object-reuse = true`: no defensive copy of each record between chained operators;
  - event time as epoch-millis BIGINT in the JSON (`event_time`), the rowtime a computed
    `TO_TIMESTAMP_LTZ(event_time, 3)` with `WATERMARK ... - INTERVAL '5' SECOND` (the same 5 s
    bounded out-of-orderness as admetrics): no ISO-8601 string parsing, Flink's slow path;
  - revenue as DOUBLE (a JSON number), summed as DOUBLE: no DECIMAL arithmetic, Flink's slow
    path (admetrics keeps it as DECIMAL(18,6); results compared to 1e-6);
  - mini-batch: window TVF aggregations are always mini-batched by Flink whatever
    `table.exec.mini-batch.*` says (Flink's tuning guide), so those settings are left alone;
  - checkpoints every 10 s (`--checkpoint-ms`): the Iceberg committer commits once per
    checkpoint (and once at end of input), so the interval is the commit interval. admetrics
    commits every 1 s; 10 s is kinder to Flink (fewer, bigger files and commits; at the end of a
    bounded run the job waits up to one interval for its final checkpoint, idle wall time);
    exactly-once checkpointing (the sink's guarantee), state in memory (HashMap state backend,
    the default), as the state is ~100 campaigns × the open windows;
  - JSON format with `json.fail-on-missing-field = false`, `json.ignore-parse-errors = false`
    (a bad message fails the job: the input is clean; admetrics would dead-letter it); Flink's
    Jackson streaming parser for JSON (`json.decode.json-parser.enabled`, on by default);
  - Kafka client without CRC checks (`properties.check.crcs = false`), as librdkafka (admetrics'
    client) runs by default: the same work on both sides;
  - Parquet + zstd at level 1 (`write.parquet.compression-level`), the level admetrics writes;
    Iceberg's default would be level 3, more work for Flink than for admetrics;
  - the local mini-cluster inside the PyFlink driver's JVM; `--jvm-opts` adds JVM options
    (compare_kafka.py passes `-XX:+UseParallelGC -Xms1g -Xmx1g` by default: without a cap the
    JVM sizes its heap from the machine's 24 GB and the process grew to 2-5 GB); UTC session
    time zone.
`--explain PATH` writes Flink's plan for the statement set (one Kafka scan feeds both tables).
Not done by Flink that admetrics does: dedup by event_id, attribution (the third plugin),
dead letters, per-partition metric shares with revisions.
"""
import argparse
import glob
import os
import time

from pyflink.table import EnvironmentSettings, TableEnvironment

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLINK_JARS = os.path.join(REPO, ".tools", "flink-jars-2.0")


def q(s):
    return s.replace("'", "''")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--brokers", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", default="flink-bench")
    ap.add_argument("--catalog-db", required=True)
    ap.add_argument("--warehouse", required=True)
    ap.add_argument("--catalog-name", default="flink")
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--checkpoint-ms", type=int, default=10_000)
    ap.add_argument("--jars", default=FLINK_JARS)
    ap.add_argument("--jvm-opts", default="", help="extra JVM options for the driver + mini-cluster, e.g. -Xmx1g")
    ap.add_argument("--explain", default=None, help="write the statement set's plan to this file")
    a = ap.parse_args()
    if a.jvm_opts:
        # FLINK_ENV_JAVA_OPTS replaces PyFlink's default JVM options (its --add-opens flags,
        # without which pipeline.jars cannot be loaded): keep those and add ours.
        from pyflink.pyflink_gateway_server import get_jvm_opts, prepare_environment_variables
        genv = dict(os.environ)
        genv.pop("FLINK_ENV_JAVA_OPTS", None)
        prepare_environment_variables(genv)
        os.environ["FLINK_ENV_JAVA_OPTS"] = " ".join(get_jvm_opts(genv) + a.jvm_opts.split())

    jars = sorted(glob.glob(os.path.join(a.jars, "*.jar")))
    if len(jars) < 6:
        raise SystemExit(f"flink_kafka_job: the connector jars are missing in {a.jars}: run scripts/setup.sh --flink")
    os.makedirs(a.warehouse, exist_ok=True)
    # Hadoop's classes go on the JVM's classpath, as Flink's docs say (HADOOP_CLASSPATH, read
    # when PyFlink launches its JVM): the Iceberg catalog factory runs in the client and needs
    # them there; the connectors go to the job through pipeline.jars.
    hadoop = [j for j in jars if "/hadoop-" in j or "/commons-logging" in j]
    jars = [j for j in jars if j not in hadoop]
    os.environ["HADOOP_CLASSPATH"] = os.pathsep.join(hadoop)

    env = TableEnvironment.create(EnvironmentSettings.in_streaming_mode())
    conf = env.get_config()
    conf.set("pipeline.jars", ";".join("file://" + j for j in jars))
    conf.set("pipeline.name", "admetrics-peer: kafka -> iceberg")
    conf.set("parallelism.default", str(a.parallelism))
    conf.set("pipeline.object-reuse", "true")
    conf.set("table.local-time-zone", "UTC")
    conf.set("execution.checkpointing.interval", f"{a.checkpoint_ms} ms")
    conf.set("execution.checkpointing.mode", "EXACTLY_ONCE")
    conf.set("table.optimizer.agg-phase-strategy", "TWO_PHASE")

    env.execute_sql(f"""
        CREATE TABLE events (
          event_id STRING,
          event_type STRING,
          event_time BIGINT,
          campaign_id STRING,
          ad_id STRING,
          user_id STRING,
          device STRING,
          country STRING,
          placement STRING,
          revenue DOUBLE,
          currency STRING,
          kafka_partition INT METADATA FROM 'partition' VIRTUAL,
          kafka_offset BIGINT METADATA FROM 'offset' VIRTUAL,
          kafka_timestamp TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
          ts AS TO_TIMESTAMP_LTZ(event_time, 3),
          WATERMARK FOR ts AS ts - INTERVAL '5' SECOND
        ) WITH (
          'connector' = 'kafka',
          'topic' = '{q(a.topic)}',
          'properties.bootstrap.servers' = '{q(a.brokers)}',
          'properties.group.id' = '{q(a.group)}',
          'properties.check.crcs' = 'false',
          'scan.startup.mode' = 'earliest-offset',
          'scan.bounded.mode' = 'latest-offset',
          'format' = 'json',
          'json.fail-on-missing-field' = 'false',
          'json.ignore-parse-errors' = 'false'
        )""")
    cat = a.catalog_name
    env.execute_sql(f"""
        CREATE CATALOG {cat} WITH (
          'type' = 'iceberg',
          'catalog-impl' = 'org.apache.iceberg.jdbc.JdbcCatalog',
          'uri' = 'jdbc:sqlite:{q(os.path.abspath(a.catalog_db))}',
          'jdbc.schema-version' = 'V1',
          'warehouse' = 'file://{q(os.path.abspath(a.warehouse))}'
        )""")
    env.execute_sql(f"CREATE DATABASE IF NOT EXISTS {cat}.ads")
    env.execute_sql(f"""
        CREATE TABLE IF NOT EXISTS {cat}.ads.campaign_events (
          event_id STRING NOT NULL,
          event_type STRING NOT NULL,
          event_time TIMESTAMP_LTZ(6) NOT NULL,
          campaign_id STRING NOT NULL,
          ad_id STRING NOT NULL,
          user_id STRING NOT NULL,
          revenue DOUBLE,
          currency STRING,
          device STRING,
          country STRING,
          placement STRING,
          kafka_partition INT NOT NULL,
          kafka_offset BIGINT NOT NULL,
          kafka_timestamp TIMESTAMP_LTZ(6) NOT NULL
        ) WITH ('format-version' = '2', 'write.parquet.compression-codec' = 'zstd',
                'write.parquet.compression-level' = '1')""")
    env.execute_sql(f"""
        CREATE TABLE IF NOT EXISTS {cat}.ads.campaign_metrics (
          window_start TIMESTAMP(6) NOT NULL,
          window_end TIMESTAMP(6) NOT NULL,
          campaign_id STRING NOT NULL,
          impressions BIGINT NOT NULL,
          clicks BIGINT NOT NULL,
          conversions BIGINT NOT NULL,
          revenue DOUBLE NOT NULL,
          ctr DOUBLE NOT NULL,
          cvr DOUBLE NOT NULL
        ) WITH ('format-version' = '2', 'write.parquet.compression-codec' = 'zstd',
                'write.parquet.compression-level' = '1')""")

    stmts = env.create_statement_set()
    stmts.add_insert_sql(f"""
        INSERT INTO {cat}.ads.campaign_events
        SELECT event_id, event_type, CAST(ts AS TIMESTAMP_LTZ(6)), campaign_id, ad_id, user_id,
               revenue, currency, device, country, placement, kafka_partition, kafka_offset,
               CAST(kafka_timestamp AS TIMESTAMP_LTZ(6))
        FROM events""")
    stmts.add_insert_sql(f"""
        INSERT INTO {cat}.ads.campaign_metrics
        SELECT
          CAST(window_start AS TIMESTAMP(6)), CAST(window_end AS TIMESTAMP(6)), campaign_id,
          impressions, clicks, conversions, revenue,
          CASE WHEN impressions > 0 THEN CAST(clicks AS DOUBLE) / impressions ELSE 0 END,
          CASE WHEN clicks > 0 THEN CAST(conversions AS DOUBLE) / clicks ELSE 0 END
        FROM (
          SELECT
            window_start, window_end, campaign_id,
            COUNT(*) FILTER (WHERE event_type = 'impression') AS impressions,
            COUNT(*) FILTER (WHERE event_type = 'click') AS clicks,
            COUNT(*) FILTER (WHERE event_type = 'conversion') AS conversions,
            COALESCE(SUM(CASE WHEN event_type = 'conversion' THEN revenue END), 0.0) AS revenue
          FROM TABLE(TUMBLE(TABLE events, DESCRIPTOR(ts), INTERVAL '60' SECOND))
          GROUP BY window_start, window_end, campaign_id)""")
    if a.explain:
        with open(a.explain, "w") as f:
            f.write(stmts.explain())
    t0 = time.monotonic()
    stmts.execute().wait()
    print(f"flink: job finished in {time.monotonic() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
