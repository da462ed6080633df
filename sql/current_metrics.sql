-- current_metrics: the current value of every metric of ads.campaign_metrics, one row per
-- (window_start, window_end, campaign_id, ad_id, metric). This file is the one definition of that
-- rule: the dashboard (dashboard/views.sql through dashboard/bundle.py), scripts/query.py,
-- scripts/flink/compare.py and the verifiers in tests/ (through tests/current_metrics.py) all
-- run it. It reads a relation named `campaign_metrics`: register a PyIceberg Arrow table under
-- that name, or create a view of that name over iceberg_scan(...) first.
--
-- Why it is not simply "the latest revision of each key":
--
-- * A row is ONE KAFKA PARTITION's share. The partition is the unit of state: each member of
--   the consumer group computes the windows of the partitions it owns from their events only
--   and publishes them with `kafka_partition` set. A window's metric is the sum of the shares.
-- * Several STREAMS may share the tables (a topic and a backfill file, two topics): each row
--   carries its `stream`, each stream has its own partitions, epochs and revisions, and counts
--   its own events (duplicates are decided within a stream). A share is a (stream, partition)
--   pair; the streams' shares are summed like partitions'. Rows written before the column
--   existed have stream NULL: one stream of their own (GROUP BY groups NULLs together).
-- * Revisions are per partition. `revision` = epoch << 32 | commit sequence of the member that
--   owned the partition (a new owner's revisions are above all of an earlier owner's), so it
--   orders the rows of one partition only; revisions of different partitions do not compare.
--   Hence: per (window, campaign, ad, metric, stream, partition) the row with the highest
--   revision, then the sum over streams and partitions. (The latest revision over all partitions would pick one
--   partition's share and drop the others.)
-- * Numerators and denominators are summed, never values: for the rates (`ctr`, `cvr`) the
--   value is re-derived as Σnumerator / Σdenominator (0 when Σdenominator is 0), never an
--   average of the partitions' ratios; for every other metric (sums: revenue,
--   attributed_revenue, unattributed_revenue, ...) value = Σnumerator.
-- * is_final: every contributing partition's latest row is final (bool_and). A partition's
--   watermark closes only its own windows, so a window is final once the last of its
--   partitions closed it. A partition with no event in a window has no row and no say.
-- * withheld: ANY partition's latest row is withheld (bool_or). A plugin failed on that
--   partition's window after publishing earlier revisions, so its share is unknown and so is
--   the total: the key has no valid value (numerator, denominator and value are then
--   meaningless) and readers skip it (`WHERE NOT withheld`).
-- * partitions: how many shares ((stream, partition) pairs) contributed.
-- * RESTATEMENTS (`admetrics restate`, see host/src/restate.rs): a restatement's rows carry its
--   id in `restatement` (NULL on live rows) and are shown only while it is promoted. Promote and
--   rollback are records in this same table: metric '$restatement', the restatement's id, its
--   plugin and period (window_start .. window_end), numerator 1 (promoted) or 0 (rolled back),
--   revision = the record's sequence; a restatement's latest record decides. Per plugin and
--   window, the rows shown are those of the promoted restatement whose period holds the window
--   (promotion withdraws any other of the same plugin that overlaps, so there is at most one),
--   else the live rows. With nothing promoted this is exactly the live rows: the rule above.
--   The records themselves are never values (and are `withheld`, so a reader unaware of them
--   that skips withheld keys skips them too).
-- * SHADOWS (`plugins.shadow_paths` / `plugins.shadow_dir`): a candidate plugin loaded beside
--   the live one of its name writes its rows with `shadow = true`, for `admetrics plugin diff`.
--   They are never current values: dropped in `base`. Rows written before the column existed
--   read NULL (not shadow). Once a shadow is promoted its new revisions are live rows.
-- * BREAKDOWNS: a plugin configured with dimensions (`[plugins.config.NAME] dimensions`) writes,
--   beside each total row (`dimensions` NULL), one row per breakdown cell with the same window,
--   campaign, metric, share and revision and `dimensions` = the cell (`country=DE;device=ios`).
--   This view is the totals': breakdown rows are dropped in `base`. (They are not part of the
--   key: keyed with them, the latest row of a key would be any one of the total and its cells,
--   which tie on revision, and sums over campaigns would count every event twice.)
--
-- ad_id is NULL for every metric but attribution's: GROUP BY puts NULLs in one group, which is
-- what we want (IS NOT DISTINCT FROM semantics).
--
-- The shares are added in whatever order the hash aggregate meets them. Counts are exact, but
-- for fractional numerators (revenue) two readings, or two runs that wrote their rows in a
-- different order, may differ in the last bit: compare such values with a relative tolerance
-- (1e-12 is plenty). Summing in partition order (`sum(x ORDER BY kafka_partition)`) would be
-- exact but cost ~1.5x the whole view (an ordered aggregate sorts every group).
--
-- Cost of the restatement step: `base` is materialized because the records and the rows are two
-- reads of the table; without it DuckDB scans the Iceberg table twice (+47 % on a 293K-row,
-- many-file table here, against +15 % materialized, with no restatement in it).
--
-- Cost: the table keeps every revision (~100 rows per daemon commit), so the first step runs
-- over a table that grows with uptime. arg_max per key is a hash aggregate, 4-5x cheaper than a
-- row_number() window over the same rows; the second step only sees one row per partition and
-- key.
CREATE OR REPLACE VIEW current_metrics AS
WITH base AS MATERIALIZED (
  SELECT window_start, window_end, campaign_id, ad_id, metric, stream, kafka_partition, revision,
         numerator, denominator, is_final, withheld, plugin, restatement
  FROM campaign_metrics
  WHERE shadow IS NOT TRUE AND dimensions IS NULL),
promoted AS (
  SELECT restatement, plugin, window_start AS period_start, window_end AS period_end
  FROM base
  WHERE metric = '$restatement'
  GROUP BY restatement, plugin, window_start, window_end
  HAVING arg_max(numerator, revision) = 1),
shown AS (
  SELECT m.*
  FROM base m
  LEFT JOIN promoted p
    ON p.plugin = m.plugin AND m.window_start >= p.period_start AND m.window_end <= p.period_end
  WHERE m.metric <> '$restatement' AND m.restatement IS NOT DISTINCT FROM p.restatement),
latest AS (
  SELECT window_start, window_end, campaign_id, ad_id, metric, stream, kafka_partition,
         arg_max(struct_pack(numerator, denominator, is_final, withheld), revision) AS r
  FROM shown
  GROUP BY window_start, window_end, campaign_id, ad_id, metric, stream, kafka_partition),
summed AS (
  SELECT window_start, window_end, campaign_id, ad_id, metric,
         sum(r.numerator) AS numerator,
         sum(r.denominator) AS denominator,
         bool_and(r.is_final) AS is_final,
         bool_or(r.withheld) AS withheld,
         count(*) AS partitions
  FROM latest
  GROUP BY window_start, window_end, campaign_id, ad_id, metric)
SELECT window_start, window_end, campaign_id, ad_id, metric,
       CASE WHEN metric NOT IN ('ctr', 'cvr') THEN numerator
            WHEN denominator = 0 THEN 0.0
            ELSE numerator / denominator END AS value,
       numerator, denominator, is_final, withheld, partitions
FROM summed
;
