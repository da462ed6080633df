//! The three tables' schemas and the Arrow builders the pipeline appends rows to.
//!
//! Builders are created once and reused commit after commit (`finish()` resets them), so the hot
//! path never re-allocates column buffers.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Decimal128Builder, Float64Builder, Int32Builder, Int64Builder,
    LargeBinaryBuilder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::SchemaRef as ArrowSchemaRef;
use iceberg::spec::{
    NestedField, PartitionSpec, PrimitiveType, Schema, Transform, Type, UnboundPartitionSpec,
};

use crate::event::Event;

const UTC: &str = "+00:00";

/// `stream` in `campaign_events` and `campaign_metrics`: the last column of both, so a table
/// created before it existed gets the same field id when evolution appends it.
pub const STREAM_COLUMN: &str = "stream";
pub const STREAM_FIELD_ID: i32 = 17;

/// `restatement` in `campaign_metrics`: NULL on the daemon's live rows; on the rows of a
/// restatement (`crate::restate`) its id, and on its promote/rollback records too. Appended
/// after `stream` so a table written before it existed gains it in place, with this field id,
/// by schema evolution (old rows read NULL: live).
pub const RESTATEMENT_COLUMN: &str = "restatement";
pub const RESTATEMENT_FIELD_ID: i32 = 18;

/// `shadow` in `campaign_metrics`: true on the rows of a plugin loaded as the shadow of a live
/// one (`plugins.shadow_paths` / `plugins.shadow_dir`): computed on the same batches, written
/// for `admetrics plugin diff`, never shown as current. Appended after `restatement` (a table
/// written before it gains it in place; old rows read NULL: not shadow).
pub const SHADOW_COLUMN: &str = "shadow";
pub const SHADOW_FIELD_ID: i32 = 19;

/// `dimensions` in `campaign_metrics`: NULL on a total; on a breakdown row its cell, canonical
/// text `column=value` pairs sorted by column and joined by `;` (`country=DE;device=mobile`).
/// One string rather than a map or a column per dimension: it is part of the row's key, so it
/// must compare, group and join as one value in every reader (DuckDB, PyIceberg, Superset's SQL),
/// which Iceberg maps do not in all of them; and a new dimension needs no schema change. The
/// documented view splits it into typed columns. Appended after `shadow`, gained in place.
pub const DIMENSIONS_COLUMN: &str = "dimensions";
pub const DIMENSIONS_FIELD_ID: i32 = 20;

/// `plugin_params` in `campaign_metrics`: the parameters the plugin was initialised with, as a
/// JSON object of strings (`[plugins.config.NAME]`), NULL without any. With `plugin_sha256` it
/// says exactly which computation produced the row. Appended after `dimensions`.
pub const PLUGIN_PARAMS_COLUMN: &str = "plugin_params";
pub const PLUGIN_PARAMS_FIELD_ID: i32 = 21;

/// Currency columns (see `crate::currency`). Field ids are not ours to pick: a table created
/// fresh gets ids 1, 2, … in schema order, and a column appended to an existing table gets the
/// table's last column id + 1 (iceberg-rust, like Java). So these are the next ids after the
/// columns before them, and `field_ids_are_those_a_fresh_table_assigns` pins that.
///
/// `original_revenue` in `campaign_events`: a conversion's revenue as sent, in `currency` (the
/// original currency). `revenue` holds the amount converted to the reporting currency, what the
/// plugins summed; `revenue_currency` says which currency that is. Appended after `stream`: a
/// table written before them gains both in place, its old rows reading NULL (their `revenue` was
/// never converted: it is in `currency`).
pub const ORIGINAL_REVENUE_COLUMN: &str = "original_revenue";
pub const ORIGINAL_REVENUE_FIELD_ID: i32 = 18;
pub const REVENUE_CURRENCY_COLUMN: &str = "revenue_currency";
pub const REVENUE_CURRENCY_FIELD_ID: i32 = 19;

/// `attributes` in `campaign_events`: the event's custom string attributes (its `attributes`
/// object), as a JSON object of strings with sorted keys; NULL without any. A JSON text rather
/// than an Iceberg map for the reason `dimensions` is one string: every reader (DuckDB's
/// `json_extract_string`, PyIceberg, Superset's SQL) can read it, and new keys need no schema
/// change. It is what a breakdown by `attr.NAME` is recounted from. Appended after
/// `revenue_currency`.
pub const EVENT_ATTRIBUTES_COLUMN: &str = "attributes";
pub const EVENT_ATTRIBUTES_FIELD_ID: i32 = 20;

/// `currency` in `campaign_metrics`: the currency of the money the row's plugin was given (every
/// conversion's revenue converted to the run's reporting currency), on every metric row of a
/// run, money metric or not (the host cannot tell which metrics are money); NULL on
/// restatement records and on rows written before the column existed. Appended after
/// `plugin_params`.
pub const METRICS_CURRENCY_COLUMN: &str = "currency";
pub const METRICS_CURRENCY_FIELD_ID: i32 = 22;

/// An event's attributes as `campaign_events.attributes` holds them: a JSON object of strings,
/// keys in the (sorted) order given.
pub fn attributes_json(
    attributes: &[(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)],
) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in attributes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::from(&**k).to_string());
        out.push(':');
        out.push_str(&serde_json::Value::from(&**v).to_string());
    }
    out.push('}');
    out
}

/// A column holding `stream` in each of `rows` rows (dictionary-encoded by Parquet: a few bytes
/// per file).
fn stream_column(stream: &str, rows: usize) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
        stream, rows,
    )))
}

fn req(id: i32, name: &str, t: PrimitiveType) -> Arc<NestedField> {
    NestedField::required(id, name, Type::Primitive(t)).into()
}
fn opt(id: i32, name: &str, t: PrimitiveType) -> Arc<NestedField> {
    NestedField::optional(id, name, Type::Primitive(t)).into()
}

/// `campaign_events`: every valid event with its Kafka coordinates, partitioned by day(event_time).
pub fn events_schema() -> Schema {
    use PrimitiveType::*;
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            req(1, "event_id", String),
            req(2, "event_type", String),
            req(3, "event_time", Timestamptz),
            req(4, "campaign_id", String),
            req(5, "ad_id", String),
            req(6, "user_id", String),
            // DECIMAL(18,6): up to 999999999999.999999, which is `MAX_REVENUE_MICROS`, the
            // decoder's bound (and the plugin SDK's bound on a window's sums).
            opt(
                7,
                "revenue",
                Decimal {
                    precision: 18,
                    scale: 6,
                },
            ),
            opt(8, "currency", String),
            opt(9, "device", String),
            opt(10, "country", String),
            opt(11, "placement", String),
            req(12, "kafka_partition", Int),
            req(13, "kafka_offset", Long),
            req(14, "ingest_time", Timestamptz),
            req(15, "is_late", Boolean),
            // Another delivery of an event_id already seen within the dedup horizon: kept here
            // (every message is accounted for) but not counted in the metrics.
            req(16, "is_duplicate", Boolean),
            // The stream (Kafka topic or named file input) the row came from: several streams
            // may share the tables, and duplicates are decided within a stream only. Optional
            // because a table written before this column existed gains it by schema evolution
            // (its old rows read NULL); every row written now carries it.
            opt(STREAM_FIELD_ID, STREAM_COLUMN, String),
            // A conversion's revenue as sent, in `currency`; `revenue` is it converted to
            // `revenue_currency`, the reporting currency (NULL on other kinds, and on rows
            // written before conversion existed, whose `revenue` is in `currency`).
            opt(
                ORIGINAL_REVENUE_FIELD_ID,
                ORIGINAL_REVENUE_COLUMN,
                Decimal {
                    precision: 18,
                    scale: 6,
                },
            ),
            opt(REVENUE_CURRENCY_FIELD_ID, REVENUE_CURRENCY_COLUMN, String),
            opt(EVENT_ATTRIBUTES_FIELD_ID, EVENT_ATTRIBUTES_COLUMN, String),
        ])
        .build()
        .expect("static schema")
}

pub fn events_partition_spec() -> UnboundPartitionSpec {
    UnboundPartitionSpec::builder()
        // Spelled out: iceberg-rust leaves an unset spec id out of a REST create-table request,
        // and Apache's REST catalog server refuses a partition spec without one (400).
        .with_spec_id(0)
        .add_partition_field(3, "event_day", Transform::Day)
        .expect("static spec")
        .build()
}

/// `campaign_metrics`: one row per (window, campaign[, ad], metric, Kafka partition, revision).
/// Each partition's windows are computed by the member of the group that owns it, so a row holds
/// one partition's share; readers take the latest revision per partition and sum the shares
/// (`sql/current_metrics.sql`). `is_final` marks a row written after that partition's watermark
/// closed the window. Revisions are `epoch << 32 | commit sequence`: a new owner's (or a
/// restarted member's) revisions are above everything an earlier owner published.
pub fn metrics_schema() -> Schema {
    use PrimitiveType::*;
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            req(1, "window_start", Timestamptz),
            req(2, "window_end", Timestamptz),
            req(3, "campaign_id", String),
            opt(4, "ad_id", String),
            req(5, "metric", String),
            req(6, "value", Double),
            req(7, "numerator", Double),
            req(8, "denominator", Double),
            req(9, "plugin", String),
            req(10, "plugin_version", String),
            req(11, "plugin_sha256", String),
            req(12, "revision", Long),
            req(13, "is_final", Boolean),
            req(14, "computed_at", Timestamptz),
            req(15, "withheld", Boolean),
            req(16, "kafka_partition", Int),
            // Whose share: a (stream, partition) pair. Revisions of different streams do not
            // compare; readers sum the latest revision of each stream's partitions.
            opt(STREAM_FIELD_ID, STREAM_COLUMN, String),
            // Which computation the row belongs to: NULL for live rows, a restatement's id for
            // its rows (readers show them only once promoted, see sql/current_metrics.sql).
            opt(RESTATEMENT_FIELD_ID, RESTATEMENT_COLUMN, String),
            // A shadow plugin's row (see `SHADOW_COLUMN`): readers of current values skip it.
            opt(SHADOW_FIELD_ID, SHADOW_COLUMN, Boolean),
            // A breakdown cell (see `DIMENSIONS_COLUMN`); NULL on totals.
            opt(DIMENSIONS_FIELD_ID, DIMENSIONS_COLUMN, String),
            opt(PLUGIN_PARAMS_FIELD_ID, PLUGIN_PARAMS_COLUMN, String),
            // The currency of the money the row's plugin summed (see `METRICS_CURRENCY_COLUMN`).
            opt(METRICS_CURRENCY_FIELD_ID, METRICS_CURRENCY_COLUMN, String),
        ])
        .build()
        .expect("static schema")
}

/// `dead_letters`: every message that failed validation, with the reason and the raw bytes.
pub fn dead_letters_schema() -> Schema {
    use PrimitiveType::*;
    Schema::builder()
        .with_schema_id(0)
        .with_fields(vec![
            req(1, "kafka_topic", String),
            req(2, "kafka_partition", Int),
            req(3, "kafka_offset", Long),
            req(4, "reason", String),
            req(5, "detail", String),
            req(6, "payload", Binary),
            req(7, "ingest_time", Timestamptz),
        ])
        .build()
        .expect("static schema")
}

pub fn arrow_schema(schema: &Schema) -> ArrowSchemaRef {
    Arc::new(iceberg::arrow::schema_to_arrow_schema(schema).expect("schema converts"))
}

fn ts() -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::new().with_timezone(UTC)
}

/// Column builders for one day-partition of `campaign_events`.
struct EventColumns {
    event_id: StringBuilder,
    event_type: StringBuilder,
    event_time: TimestampMicrosecondBuilder,
    campaign_id: StringBuilder,
    ad_id: StringBuilder,
    user_id: StringBuilder,
    revenue: Decimal128Builder,
    currency: StringBuilder,
    device: StringBuilder,
    country: StringBuilder,
    placement: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    ingest_time: TimestampMicrosecondBuilder,
    is_late: BooleanBuilder,
    is_duplicate: BooleanBuilder,
    original_revenue: Decimal128Builder,
    revenue_currency: StringBuilder,
    attributes: StringBuilder,
    rows: usize,
}

impl EventColumns {
    /// Builders pre-sized for `rows` rows, so a commit's worth of appends does not regrow
    /// (and re-fault) every buffer from empty.
    fn with_capacity(rows: usize) -> Self {
        let s = |bytes_per_row: usize| StringBuilder::with_capacity(rows, rows * bytes_per_row);
        EventColumns {
            event_id: s(20),
            event_type: s(10),
            event_time: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(UTC),
            campaign_id: s(12),
            ad_id: s(12),
            user_id: s(12),
            revenue: Decimal128Builder::with_capacity(rows)
                .with_precision_and_scale(18, 6)
                .expect("valid decimal"),
            currency: s(1),
            device: s(8),
            country: s(2),
            placement: s(8),
            partition: Int32Builder::with_capacity(rows),
            offset: Int64Builder::with_capacity(rows),
            ingest_time: TimestampMicrosecondBuilder::with_capacity(rows).with_timezone(UTC),
            is_late: BooleanBuilder::with_capacity(rows),
            is_duplicate: BooleanBuilder::with_capacity(rows),
            original_revenue: Decimal128Builder::with_capacity(rows)
                .with_precision_and_scale(18, 6)
                .expect("valid decimal"),
            revenue_currency: s(1),
            attributes: s(0),
            rows: 0,
        }
    }

    fn finish(&mut self, schema: &ArrowSchemaRef, stream: &str) -> RecordBatch {
        let rows = self.rows;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.event_type.finish()),
            Arc::new(self.event_time.finish()),
            Arc::new(self.campaign_id.finish()),
            Arc::new(self.ad_id.finish()),
            Arc::new(self.user_id.finish()),
            Arc::new(self.revenue.finish()),
            Arc::new(self.currency.finish()),
            Arc::new(self.device.finish()),
            Arc::new(self.country.finish()),
            Arc::new(self.placement.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.ingest_time.finish()),
            Arc::new(self.is_late.finish()),
            Arc::new(self.is_duplicate.finish()),
            stream_column(stream, rows),
            Arc::new(self.original_revenue.finish()),
            Arc::new(self.revenue_currency.finish()),
            Arc::new(self.attributes.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(schema.clone(), cols).expect("columns match the events schema")
    }
}

/// Buffers `campaign_events` rows per day of event time (the table's partitioning).
pub struct EventsBuffer {
    schema: ArrowSchemaRef,
    stream: Arc<str>,
    /// What conversions' `revenue` is in (`revenue_currency`); see [`Self::with_revenue_currency`].
    revenue_currency: Option<Arc<str>>,
    days: BTreeMap<i32, EventColumns>,
    /// Rows of the last batch taken: the size new builders are given.
    last_rows: usize,
}

impl EventsBuffer {
    /// Rows of `stream`.
    pub fn new(stream: &str) -> Self {
        EventsBuffer {
            schema: arrow_schema(&events_schema()),
            stream: stream.into(),
            revenue_currency: None,
            days: BTreeMap::new(),
            last_rows: 1024,
        }
    }

    /// Conversions' `revenue_micros` as pushed are in `currency` (the pipeline converts every
    /// conversion to its reporting currency before it gets here): the `revenue_currency` of
    /// their rows. Unset, it is NULL.
    pub fn with_revenue_currency(mut self, currency: &str) -> Self {
        self.revenue_currency = Some(currency.into());
        self
    }

    #[inline]
    pub fn push(
        &mut self,
        e: &Event,
        partition: i32,
        offset: i64,
        ingest_us: i64,
        late: bool,
        duplicate: bool,
    ) {
        let day = e.time_ms.div_euclid(86_400_000) as i32;
        let c = match self.days.get_mut(&day) {
            Some(c) => c,
            None => self
                .days
                .entry(day)
                .or_insert_with(|| EventColumns::with_capacity(self.last_rows)),
        };
        c.event_id.append_value(&e.event_id);
        c.event_type.append_value(e.kind.as_str());
        c.event_time.append_value(e.time_ms * 1000);
        c.campaign_id.append_value(&e.campaign_id);
        c.ad_id.append_value(&e.ad_id);
        c.user_id.append_value(&e.user_id);
        if e.kind == crate::event::EventKind::Conversion {
            c.revenue.append_value(e.revenue_micros as i128);
            c.original_revenue
                .append_value(e.original_revenue_micros as i128);
            c.revenue_currency
                .append_option(self.revenue_currency.as_deref());
        } else {
            c.revenue.append_null();
            c.original_revenue.append_null();
            c.revenue_currency.append_null();
        }
        c.currency.append_option(e.currency.as_deref());
        c.device.append_option(e.device.as_deref());
        c.country.append_option(e.country.as_deref());
        c.placement.append_option(e.placement.as_deref());
        if e.attributes.is_empty() {
            c.attributes.append_null();
        } else {
            c.attributes.append_value(attributes_json(&e.attributes));
        }
        c.partition.append_value(partition);
        c.offset.append_value(offset);
        c.ingest_time.append_value(ingest_us);
        c.is_late.append_value(late);
        c.is_duplicate.append_value(duplicate);
        c.rows += 1;
    }

    pub fn rows(&self) -> usize {
        self.days.values().map(|c| c.rows).sum()
    }

    /// Takes the buffered rows as one batch per day (days since epoch).
    pub fn take(&mut self) -> Vec<(i32, RecordBatch)> {
        let days = std::mem::take(&mut self.days);
        let rows: usize = days.values().map(|c| c.rows).sum();
        if rows > 0 {
            self.last_rows = rows.next_power_of_two();
        }
        days.into_iter()
            .map(|(day, mut c)| (day, c.finish(&self.schema, &self.stream)))
            .collect()
    }
}

/// One metric row as the pipeline produces it.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRecord {
    pub window_start_ms: i64,
    pub window_end_ms: i64,
    pub campaign_id: Arc<str>,
    pub ad_id: Option<Arc<str>>,
    /// The breakdown cell (see [`DIMENSIONS_COLUMN`]); `None` for a total.
    pub dimensions: Option<Arc<str>>,
    /// The plugin's parameters as JSON (see [`PLUGIN_PARAMS_COLUMN`]); `None` without any.
    pub plugin_params: Option<Arc<str>>,
    pub metric: String,
    pub value: f64,
    pub numerator: f64,
    pub denominator: f64,
    pub plugin: Arc<str>,
    pub plugin_version: Arc<str>,
    pub plugin_sha256: Arc<str>,
    pub revision: i64,
    /// The Kafka partition whose events this row counts.
    pub partition: i32,
    pub is_final: bool,
    pub computed_at_ms: i64,
    /// The plugin failed on this window after earlier revisions were published: those values
    /// are incomplete. Readers treat a withheld latest revision as "no value".
    pub withheld: bool,
    /// Computed by a shadow plugin (see [`SHADOW_COLUMN`]): never a current value.
    pub shadow: bool,
    /// The currency of the money the plugin was given (see [`METRICS_CURRENCY_COLUMN`]).
    pub currency: Option<Arc<str>>,
}

/// `rows` as a `campaign_metrics` batch, every row a share of `stream` (live rows).
pub fn metrics_batch(rows: &[MetricRecord], stream: &str) -> RecordBatch {
    metrics_batch_of(rows, Some(stream), None)
}

/// `rows` as a `campaign_metrics` batch with `stream` (NULL when `None`) and `restatement` set
/// on every row (`None`: live rows).
pub fn metrics_batch_of(
    rows: &[MetricRecord],
    stream: Option<&str>,
    restatement: Option<&str>,
) -> RecordBatch {
    let schema = arrow_schema(&metrics_schema());
    let mut b = (
        ts(),
        ts(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut f = (
        Float64Builder::new(),
        Float64Builder::new(),
        Float64Builder::new(),
    );
    let mut p = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
    );
    let mut rev = Int64Builder::new();
    let mut part = Int32Builder::new();
    let mut fin = BooleanBuilder::new();
    let mut at = ts();
    let mut withheld = BooleanBuilder::new();
    let mut shadow = BooleanBuilder::new();
    let mut dims = StringBuilder::new();
    let mut params = StringBuilder::new();
    let mut currency = StringBuilder::new();
    for r in rows {
        dims.append_option(r.dimensions.as_deref());
        params.append_option(r.plugin_params.as_deref());
        b.0.append_value(r.window_start_ms * 1000);
        b.1.append_value(r.window_end_ms * 1000);
        b.2.append_value(&r.campaign_id);
        b.3.append_option(r.ad_id.as_deref());
        b.4.append_value(&r.metric);
        f.0.append_value(r.value);
        f.1.append_value(r.numerator);
        f.2.append_value(r.denominator);
        p.0.append_value(&r.plugin);
        p.1.append_value(&r.plugin_version);
        p.2.append_value(&r.plugin_sha256);
        rev.append_value(r.revision);
        fin.append_value(r.is_final);
        at.append_value(r.computed_at_ms * 1000);
        withheld.append_value(r.withheld);
        shadow.append_value(r.shadow);
        currency.append_option(r.currency.as_deref());
        part.append_value(r.partition);
    }
    let cols: Vec<ArrayRef> = vec![
        Arc::new(b.0.finish()),
        Arc::new(b.1.finish()),
        Arc::new(b.2.finish()),
        Arc::new(b.3.finish()),
        Arc::new(b.4.finish()),
        Arc::new(f.0.finish()),
        Arc::new(f.1.finish()),
        Arc::new(f.2.finish()),
        Arc::new(p.0.finish()),
        Arc::new(p.1.finish()),
        Arc::new(p.2.finish()),
        Arc::new(rev.finish()),
        Arc::new(fin.finish()),
        Arc::new(at.finish()),
        Arc::new(withheld.finish()),
        Arc::new(part.finish()),
        Arc::new(StringArray::from(vec![stream; rows.len()])),
        Arc::new(StringArray::from(vec![restatement; rows.len()])),
        Arc::new(shadow.finish()),
        Arc::new(dims.finish()),
        Arc::new(params.finish()),
        Arc::new(currency.finish()),
    ];
    RecordBatch::try_new(schema, cols).expect("columns match the metrics schema")
}

/// Buffers `dead_letters` rows.
pub struct DeadLetterBuffer {
    schema: ArrowSchemaRef,
    topic: StringBuilder,
    partition: Int32Builder,
    offset: Int64Builder,
    reason: StringBuilder,
    detail: StringBuilder,
    payload: LargeBinaryBuilder,
    ingest_time: TimestampMicrosecondBuilder,
    rows: usize,
}

impl DeadLetterBuffer {
    pub fn new() -> Self {
        DeadLetterBuffer {
            schema: arrow_schema(&dead_letters_schema()),
            topic: StringBuilder::new(),
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            reason: StringBuilder::new(),
            detail: StringBuilder::new(),
            payload: LargeBinaryBuilder::new(),
            ingest_time: ts(),
            rows: 0,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        reason: &str,
        detail: &str,
        payload: &[u8],
        ingest_us: i64,
    ) {
        self.topic.append_value(topic);
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        self.reason.append_value(reason);
        self.detail.append_value(detail);
        self.payload.append_value(payload);
        self.ingest_time.append_value(ingest_us);
        self.rows += 1;
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn take(&mut self) -> Option<RecordBatch> {
        if self.rows == 0 {
            return None;
        }
        self.rows = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.detail.finish()),
            Arc::new(self.payload.finish()),
            Arc::new(self.ingest_time.finish()),
        ];
        Some(
            RecordBatch::try_new(self.schema.clone(), cols)
                .expect("columns match the dead-letter schema"),
        )
    }
}

impl Default for DeadLetterBuffer {
    fn default() -> Self {
        Self::new()
    }
}

/// Binds the events partition spec to its schema.
pub fn bound_events_spec(schema: &Schema) -> iceberg::Result<PartitionSpec> {
    events_partition_spec().bind(Arc::new(schema.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array;
    use arrow_array::types::DecimalType as _;

    /// The field ids the writers use are the ones the table gets: iceberg-rust (and a REST
    /// server) renumbers a new table's fields 1, 2, … in schema order, and appends a column to
    /// an existing table with the next id, so a column's id is fixed by its position, not
    /// chosen. Two branches that both append columns must agree on their order: this fails,
    /// naming the column, where a constant does not match its position.
    #[test]
    fn field_ids_are_those_a_fresh_table_assigns() {
        use iceberg::spec::{FormatVersion, SortOrder, TableMetadataBuilder};
        let unpartitioned = || UnboundPartitionSpec::builder().with_spec_id(0).build();
        for (table, schema, spec) in [
            ("campaign_events", events_schema(), events_partition_spec()),
            ("campaign_metrics", metrics_schema(), unpartitioned()),
            ("dead_letters", dead_letters_schema(), unpartitioned()),
        ] {
            let fresh = TableMetadataBuilder::new(
                schema.clone(),
                spec,
                SortOrder::unsorted_order(),
                "file:///t".into(),
                FormatVersion::V2,
                Default::default(),
            )
            .unwrap()
            .build()
            .unwrap()
            .metadata;
            for f in schema.as_struct().fields() {
                let got = fresh.current_schema().field_by_name(&f.name).unwrap();
                assert_eq!(
                    got.id, f.id,
                    "{table}.{}: a fresh table gives it field id {}, the schema says {}",
                    f.name, got.id, f.id
                );
            }
        }
        assert_eq!(
            (ORIGINAL_REVENUE_FIELD_ID, REVENUE_CURRENCY_FIELD_ID),
            (
                events_schema()
                    .field_by_name(ORIGINAL_REVENUE_COLUMN)
                    .unwrap()
                    .id,
                events_schema()
                    .field_by_name(REVENUE_CURRENCY_COLUMN)
                    .unwrap()
                    .id
            )
        );
    }

    /// A conversion's row holds the converted amount in `revenue` with the reporting currency
    /// in `revenue_currency`, and what was sent in `original_revenue` and `currency`; other
    /// kinds hold NULL in all but `currency` (as sent).
    #[test]
    fn conversion_rows_keep_the_original_amount_and_currency() {
        use arrow_array::cast::AsArray;
        use arrow_array::types::Decimal128Type;
        let now = 1_767_225_600_000i64;
        let limits = crate::event::ValidationConfig::default();
        let rates = crate::currency::Rates::new(
            &toml::from_str::<crate::config::Config>(
                "[currency]\nreporting = \"USD\"\n[[currency.rates]]\ndate = \"2026-01-01\"\nEUR = 1.08\n",
            )
            .unwrap()
            .currency,
        );
        let mut buf = EventsBuffer::new("s").with_revenue_currency(rates.reporting());
        for (kind, extra) in [
            ("conversion", r#","revenue":"19.99","currency":"EUR""#),
            ("conversion", r#","revenue":"5","currency":"USD""#),
            ("click", r#","currency":"EUR""#),
        ] {
            let json = format!(
                r#"{{"event_id":"e","event_type":"{kind}","event_time":{now},"campaign_id":"c","ad_id":"a","user_id":"u"{extra}}}"#
            );
            let e = rates
                .apply(crate::event::decode(json.as_bytes(), now, &limits).unwrap())
                .unwrap();
            buf.push(&e, 0, 0, 0, false, false);
        }
        let (_, b) = buf.take().pop().unwrap();
        let dec = |name: &str| -> Vec<Option<String>> {
            let a = b
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Decimal128Type>();
            (0..a.len())
                .map(|i| a.is_valid(i).then(|| a.value_as_string(i)))
                .collect()
        };
        let text = |name: &str| -> Vec<Option<String>> {
            let a = b.column_by_name(name).unwrap().as_string::<i32>();
            (0..a.len())
                .map(|i| a.is_valid(i).then(|| a.value(i).to_string()))
                .collect()
        };
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            dec("revenue"),
            [s("21.589200"), s("5.000000"), None],
            "converted"
        );
        assert_eq!(
            dec(ORIGINAL_REVENUE_COLUMN),
            [s("19.990000"), s("5.000000"), None]
        );
        assert_eq!(text("currency"), [s("EUR"), s("USD"), s("EUR")]);
        assert_eq!(text(REVENUE_CURRENCY_COLUMN), [s("USD"), s("USD"), None]);
    }

    /// Issue 14, defect 2: the decoder's largest accepted revenue must fit `revenue`
    /// DECIMAL(18,6) and read back as written; and whatever the decoder accepts around the bound
    /// fits (the old bound, 10^12 units, accepted 1000000000000 = 10^18 micros: 19 digits).
    #[test]
    fn the_largest_accepted_revenue_round_trips_into_decimal_18_6() {
        let now = 1_764_000_000_000i64;
        let limits = crate::event::ValidationConfig::default();
        let mut buf = EventsBuffer::new("s");
        let mut accepted = Vec::new();
        for revenue in [
            "\"999999999999.999999\"",
            "\"1000000000000\"",
            "\"1000000000000.000001\"",
            "1000000000000",
            "1e12",
        ] {
            let json = format!(
                r#"{{"event_id":"e","event_type":"conversion","event_time":{now},"campaign_id":"c","ad_id":"a","user_id":"u","revenue":{revenue},"currency":"USD"}}"#
            );
            if let Ok(e) = crate::event::decode(json.as_bytes(), now, &limits) {
                buf.push(&e, 0, 0, 0, false, false);
                accepted.push((revenue, e.revenue_micros));
            }
        }
        assert_eq!(
            accepted.first().map(|a| a.1),
            Some(999_999_999_999_999_999),
            "the maximum is accepted: {accepted:?}"
        );
        let batches = buf.take();
        let col = batches[0].1.column(6);
        let dec = col
            .as_any()
            .downcast_ref::<arrow_array::Decimal128Array>()
            .unwrap();
        assert_eq!((dec.precision(), dec.scale()), (18, 6));
        assert_eq!(dec.value_as_string(0), "999999999999.999999");
        for (i, (revenue, micros)) in accepted.iter().enumerate() {
            assert!(
                arrow_array::types::Decimal128Type::is_valid_decimal_precision(dec.value(i), 18),
                "revenue {revenue} was accepted as {micros} micros but does not fit DECIMAL(18,6)"
            );
        }
        dec.validate_decimal_precision(18)
            .expect("every accepted revenue fits the column");
    }
}
