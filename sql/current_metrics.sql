-- current_metrics: the current value of every metric of ads.campaign_metrics, one row per key
-- (window_start, window_end, campaign_id, ad_id, plugin, dimensions, metric). This file is the
-- one definition of that rule: the dashboard (dashboard/views.sql through dashboard/bundle.py),
-- scripts/query.py, scripts/lineage.py, scripts/flink/compare.py and the verifiers in tests/
-- (through tests/current_metrics.py) all run it. It reads a relation named `campaign_metrics`:
-- register a PyIceberg Arrow table under that name, or create a view of that name over
-- iceberg_scan(...) first.
--
-- Output columns: window_start, window_end, campaign_id, ad_id, metric, value, numerator,
-- denominator, is_final, withheld, partitions (as before dimensions existed), then plugin,
-- dimensions, span, device, country, placement, currency.
--
-- The key, and what a reader must pick from it:
--
-- * `plugin`: several plugins may emit the same metric name. The attribution models
--   (`attribution` = last click, `attribution-linear`, `attribution-time-decay`,
--   `attribution-position`) all emit revenue, attributed_revenue and unattributed_revenue: they
--   are told apart by `plugin` only, and adding them up would count a conversion once per model.
--   A reader that wants "the" revenue picks a model (`plugin = 'attribution'`: last click).
-- * `dimensions`: NULL on a total; on a breakdown row its cell, canonical `column=value` pairs
--   sorted by column joined by `;` (`country=DE;device=mobile`). A plugin with a breakdown
--   (`[plugins.config.ctr] dimensions = [...]`) writes its totals (dimensions NULL) AND one row
--   per cell beside them: a reader of totals filters `dimensions IS NULL`, else it counts every
--   event twice. The cells of one breakdown partition the total (a value past the host's
--   cardinality limit is folded into `other`, a missing one is `unknown`). For convenience the
--   cell is split into `device`, `country`, `placement`, `currency` (NULL: not a column of the
--   breakdown, i.e. all values); the split is exact unless a value itself contains `;`. A cell
--   of a custom attribute (`dimensions = ["attr.creative_size"]`: a key of the event's
--   `attributes` object) reads `attr.creative_size=300x250` in `dimensions` and has no typed
--   column: `regexp_extract(dimensions, '(^|;)attr\.creative_size=([^;]*)', 2)` reads it.
-- * window_start AND window_end: a plugin declares its window (`minute`: the host's
--   [window] size_secs, 60 s by default; `hour`; `day`: a calendar day in the campaign's IANA
--   time zone, 23-25 h). Rows of different window sizes may start at the same instant: never
--   key by window_start alone, never add windows of different sizes. `span` names the size:
--   'day' (23 h or longer), 'hour' (exactly 1 h), else 'minute' (the host's base window);
--   readers pick one (`WHERE span = 'day'`).
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
--   Hence: per (key, stream, partition) the row with the highest revision, then the sum over
--   streams and partitions. (The latest revision over all partitions would pick one
--   partition's share and drop the others.)
-- * Numerators and denominators are summed, never values: for the rates (`ctr`, `cvr`,
--   `frequency`) the value is re-derived as Σnumerator / Σdenominator (0 when Σdenominator is 0),
--   never an average of the partitions' ratios; for every other metric (sums: revenue,
--   attributed_revenue, unattributed_revenue, reach, ...) value = Σnumerator.
-- * `reach` (plugins/reach: distinct users with an impression per campaign per window) is a
--   sum-style row per share: value = numerator = the distinct users of that partition's share,
--   denominator = its impressions. Summing the shares is valid only because producers key
--   events by user id, so one user's events all sit in one partition of a stream and the
--   partitions' user sets are disjoint (across two streams that share the tables a user may be
--   in both and is then counted twice). Reach is NOT additive over anything else: never sum it
--   across windows (a day's reach is not the sum of its hours'), campaigns or breakdown cells;
--   read it per key. `frequency` = impressions / reach is a rate (numerator impressions,
--   denominator reach), so it is right exactly when the summed reach is; over several campaigns
--   Σimpressions / Σreach is impressions per (campaign, user) pair, not per user.
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
--   Promotion is per plugin, so restating one attribution model leaves the other models' rows
--   (same metric names) as they are. A restatement covers the windows wholly inside its period:
--   a day window that only overlaps the period keeps its live rows.
--   The records themselves are never values (and are `withheld`, so a reader unaware of them
--   that skips withheld keys skips them too).
-- * SHADOWS (`plugins.shadow_paths` / `plugins.shadow_dir`): a candidate plugin loaded beside
--   the live one of its name writes its rows with `shadow = true`, for `admetrics plugin diff`.
--   They are never current values: dropped in `base`. Rows written before the column existed
--   read NULL (not shadow). Once a shadow is promoted its new revisions are live rows.
--
-- ad_id is NULL for every metric but the attribution plugins' attributed_revenue, dimensions NULL
-- on totals: GROUP BY puts NULLs in one group, which is what we want (IS NOT DISTINCT FROM
-- semantics).
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
-- Cost: the daemon writes a new revision of every open window each commit (~100 rows per daemon
-- commit), so the first step runs over every revision not yet compacted away: scripts/maintain.py's
-- compaction keeps only the latest revision of each share (drop_superseded), the rows this view
-- picks, so with maintenance running the table grows with its keys, not with uptime. arg_max per key is a hash aggregate, 4-5x cheaper than a
-- row_number() window over the same rows; the second step only sees one row per partition and
-- key. plugin and dimensions in the key: over the Iceberg table as the daemon writes it (592
-- small files, 54K rows of ctr, cvr and attribution; DuckDB iceberg_scan, one thread) a read of
-- the totals per window and campaign took 3.42 s CPU against 3.38 s with the key before them:
-- the per-file work dominates. Where rows dominate (one 420K-row Parquet file) the view alone
-- costs ~15 % more (two more string columns hashed twice). A reader's filter on key columns
-- (`WHERE plugin = 'reach'`, `dimensions IS NULL`, `metric IN (...)`) is pushed by DuckDB into
-- `base` (OR'ed with the records' `metric = '$restatement'`), so the aggregates only see the rows
-- it keeps (a filter on a computed column such as `span` or `country` is applied after them):
-- put such filters in the WHERE of the query over this view. Over 592 such files holding
-- 280K rows of seven plugins (breakdown cells, four attribution models, reach) that read took
-- 3.52 s; over a single file where breakdowns and three more models hold 3/4 of 1.7M rows,
-- 0.49 s with the filter in WHERE against 1.43 s with it in the aggregates' FILTER clauses.
-- (Two scans instead of `base` MATERIALIZED, which lets DuckDB push such a filter into the
-- Parquet reader, were faster on one file but twice the per-file work: 6.2 s on the 592 files.)
CREATE OR REPLACE VIEW current_metrics AS
WITH base AS MATERIALIZED (
  SELECT window_start, window_end, campaign_id, ad_id, plugin, dimensions, metric, stream,
         kafka_partition, revision, numerator, denominator, is_final, withheld, restatement
  FROM campaign_metrics
  WHERE shadow IS NOT TRUE),
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
  SELECT window_start, window_end, campaign_id, ad_id, plugin, dimensions, metric, stream,
         kafka_partition,
         arg_max(struct_pack(numerator, denominator, is_final, withheld), revision) AS r
  FROM shown
  GROUP BY window_start, window_end, campaign_id, ad_id, plugin, dimensions, metric, stream,
           kafka_partition),
summed AS (
  SELECT window_start, window_end, campaign_id, ad_id, plugin, dimensions, metric,
         sum(r.numerator) AS numerator,
         sum(r.denominator) AS denominator,
         bool_and(r.is_final) AS is_final,
         bool_or(r.withheld) AS withheld,
         count(*) AS partitions
  FROM latest
  GROUP BY window_start, window_end, campaign_id, ad_id, plugin, dimensions, metric)
SELECT window_start, window_end, campaign_id, ad_id, metric,
       CASE WHEN metric NOT IN ('ctr', 'cvr', 'frequency') THEN numerator
            WHEN denominator = 0 THEN 0.0
            ELSE numerator / denominator END AS value,
       numerator, denominator, is_final, withheld, partitions,
       plugin, dimensions,
       CASE WHEN epoch_us(window_end) - epoch_us(window_start) >= 82800000000 THEN 'day'
            WHEN epoch_us(window_end) - epoch_us(window_start) = 3600000000 THEN 'hour'
            ELSE 'minute' END AS span,
       CASE WHEN dimensions IS NOT NULL AND contains(';' || dimensions, ';device=')
            THEN split_part(split_part(';' || dimensions, ';device=', 2), ';', 1) END AS device,
       CASE WHEN dimensions IS NOT NULL AND contains(';' || dimensions, ';country=')
            THEN split_part(split_part(';' || dimensions, ';country=', 2), ';', 1) END AS country,
       CASE WHEN dimensions IS NOT NULL AND contains(';' || dimensions, ';placement=')
            THEN split_part(split_part(';' || dimensions, ';placement=', 2), ';', 1) END AS placement,
       CASE WHEN dimensions IS NOT NULL AND contains(';' || dimensions, ';currency=')
            THEN split_part(split_part(';' || dimensions, ';currency=', 2), ';', 1) END AS currency
FROM summed
;
