//! Event time: window table functions and watermarks.
//!
//! Windows are table-valued functions in `FROM`, as in Flink SQL and
//! RisingWave: `TUMBLE(stream, ts, size)` and `HOP(stream, ts, slide,
//! size)` add `window_start` and `window_end` columns (a hopping window
//! repeats each row once per window containing it). A `GROUP BY` over
//! `window_start`/`window_end` is a windowed aggregation: its state is
//! keyed by the window's end, so windows the watermark has passed are
//! found by one range scan, emitted (append mode) and evicted.
//!
//! `SESSION(stream, ts, gap)` gives each row the window `[ts, ts + gap)`;
//! an aggregation grouping by it merges, per value of its other group
//! keys, the windows that overlap into one session (Spark's
//! `session_window`, Flink's session windows): a session ends `gap` after
//! its last record (see `super::session`).
//!
//! A stream's watermark (`WATERMARK FOR ts AS ts - INTERVAL '5' SECOND`)
//! is the smallest, over its active partitions, of the largest event time
//! seen, minus the delay; a partition without records for the stream's
//! `idle_timeout` (batch time) stops holding it back. Records behind the
//! watermark are late: stateful queries drop and count them. The
//! watermark is part of the query's state, so a replayed batch sees the
//! same one.
//!
//! This module owns window assignment and watermark arithmetic; it never
//! reads or writes RocksDB itself (the caller stores [`WatermarkState`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;
use serde::{Deserialize, Serialize};

/// Field metadata marking a window column (value: `start` or `end`).
pub(crate) const WINDOW_META: &str = "sluice.window";
/// Field metadata: the window's size in milliseconds (a session's gap).
pub(crate) const WINDOW_SIZE_META: &str = "sluice.window.size_ms";
/// Field metadata on session windows' columns (value: `session`).
pub(crate) const WINDOW_KIND_META: &str = "sluice.window.kind";

/// A stream's declared watermark.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Watermark {
    /// The event-time column (a TIMESTAMP column or `_timestamp`).
    pub column: String,
    /// How far behind the largest event time the watermark trails.
    pub delay_ms: i64,
    /// A partition without records for this long stops holding the
    /// watermark back.
    pub idle_timeout_ms: i64,
}

/// Default `idle_timeout` of a stream with a watermark.
pub(crate) const DEFAULT_IDLE_TIMEOUT_MS: i64 = 30_000;

/// The watermark a stream declares (`WATERMARK FOR …` and its
/// `idle_timeout` option), checked against its columns.
pub(crate) fn declared(
    decl: &super::script::StreamDecl,
    schema: &SchemaRef,
    line: usize,
) -> Result<Option<Watermark>, crate::error::SqlError> {
    let err = |message: String| crate::error::SqlError::Plan { line, message };
    let Some((column, expr)) = &decl.watermark else {
        if decl.options.contains_key("idle_timeout") {
            return Err(err(format!(
                "stream {}: idle_timeout needs a WATERMARK FOR clause",
                decl.name
            )));
        }
        return Ok(None);
    };
    let delay_ms = parse_watermark(column, expr, schema)
        .map_err(|m| err(format!("stream {}: {m}", decl.name)))?;
    let idle_timeout_ms = match decl.options.get("idle_timeout") {
        None => DEFAULT_IDLE_TIMEOUT_MS,
        Some(text) => sluice_log::units::parse_millis(text)
            .map_err(|m| err(format!("stream {}: idle_timeout: {m}", decl.name)))?
            .max(1) as i64,
    };
    Ok(Some(Watermark {
        column: column.clone(),
        delay_ms,
        idle_timeout_ms,
    }))
}

/// Milliseconds of a literal interval (`INTERVAL '5' SECOND`).
pub(crate) fn interval_ms(expr: &Expr) -> Option<i64> {
    let Expr::Literal(value, _) = expr else {
        return None;
    };
    match value {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            Some(v.days as i64 * 86_400_000 + v.nanoseconds / 1_000_000)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            Some(v.days as i64 * 86_400_000 + v.milliseconds as i64)
        }
        ScalarValue::IntervalYearMonth(Some(0)) => Some(0),
        ScalarValue::DurationMillisecond(Some(ms)) => Some(*ms),
        ScalarValue::DurationSecond(Some(s)) => Some(s * 1000),
        _ => None,
    }
}

/// Parses `ts` or `ts - INTERVAL '…'` (the part after `AS`) against the
/// stream's columns.
pub(crate) fn parse_watermark(
    column: &str,
    expr_text: &str,
    schema: &SchemaRef,
) -> Result<i64, String> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let field = schema
        .field_with_name(column)
        .map_err(|_| format!("WATERMARK FOR {column}: the stream has no column {column}"))?;
    if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
        return Err(format!(
            "WATERMARK FOR {column}: {column} is {}, the event-time column must be a TIMESTAMP",
            field.data_type()
        ));
    }
    let df_schema = datafusion::common::DFSchema::try_from(schema.as_ref().clone())
        .map_err(|e| e.to_string())?;
    let ctx = datafusion::prelude::SessionContext::new();
    let expr = ctx
        .parse_sql_expr(expr_text, &df_schema)
        .map_err(|e| format!("WATERMARK FOR {column} AS {expr_text}: {e}"))?;
    let expected = || {
        format!(
            "WATERMARK FOR {column} AS {expr_text}: expected {column} or {column} - INTERVAL '5' SECOND"
        )
    };
    match &expr {
        Expr::Column(c) if c.name == column => Ok(0),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if *op == Operator::Minus => {
            match (left.as_ref(), interval_ms(right)) {
                (Expr::Column(c), Some(ms)) if c.name == column && ms >= 0 => Ok(ms),
                _ => Err(expected()),
            }
        }
        _ => Err(expected()),
    }
}

/// Which window function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tumble,
    Hop,
    Session,
}

/// A use of a window function seen while planning: which stream and
/// time column it windows (checked against the stream's watermark).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WindowUse {
    pub stream: String,
    pub column: String,
    pub size_ms: i64,
}

/// `TUMBLE(stream, ts, size)` / `HOP(stream, ts, slide, size)` over the
/// batch's rows of `stream` (one batch per partition of the scan).
#[derive(Debug)]
pub(crate) struct WindowFunction {
    kind: Kind,
    streams: Arc<HashMap<String, Vec<RecordBatch>>>,
    uses: Arc<Mutex<Vec<WindowUse>>>,
}

/// Registers the window functions on `session` over `streams`; returns
/// where their uses are recorded.
pub(crate) fn register(
    session: &datafusion::prelude::SessionContext,
    streams: Arc<HashMap<String, Vec<RecordBatch>>>,
) -> Arc<Mutex<Vec<WindowUse>>> {
    let uses = Arc::new(Mutex::new(Vec::new()));
    for (kind, names) in [
        (Kind::Tumble, ["tumble", "TUMBLE", "Tumble"]),
        (Kind::Hop, ["hop", "HOP", "Hop"]),
        (Kind::Session, ["session", "SESSION", "Session"]),
    ] {
        let f = Arc::new(WindowFunction {
            kind,
            streams: streams.clone(),
            uses: uses.clone(),
        });
        for name in names {
            session.register_udtf(name, f.clone());
        }
    }
    uses
}

fn plan_err(message: String) -> DataFusionError {
    DataFusionError::Plan(message)
}

impl WindowFunction {
    fn usage(&self) -> &'static str {
        match self.kind {
            Kind::Tumble => "TUMBLE(stream, time_column, INTERVAL '1' MINUTE)",
            Kind::Hop => {
                "HOP(stream, time_column, INTERVAL '10' SECOND (slide), INTERVAL '1' MINUTE (size))"
            }
            Kind::Session => "SESSION(stream, time_column, INTERVAL '30' MINUTE (gap))",
        }
    }
}

impl TableFunctionImpl for WindowFunction {
    fn call(&self, args: &[Expr]) -> DfResult<Arc<dyn TableProvider>> {
        let usage = self.usage();
        let want = if self.kind == Kind::Hop { 4 } else { 3 };
        if args.len() != want {
            return Err(plan_err(format!(
                "{usage}: expected {want} arguments, got {}",
                args.len()
            )));
        }
        let name_of = |e: &Expr| match e {
            Expr::Column(c) => Some(c.name.clone()),
            Expr::Literal(ScalarValue::Utf8(Some(s)), _) => Some(s.clone()),
            _ => None,
        };
        let stream = name_of(&args[0])
            .ok_or_else(|| plan_err(format!("{usage}: the first argument names a stream")))?;
        let parts = self
            .streams
            .get(&stream)
            .ok_or_else(|| plan_err(format!("{usage}: no stream {stream}")))?;
        let batch = parts
            .first()
            .ok_or_else(|| plan_err(format!("{usage}: stream {stream} has no partitions")))?;
        let column = name_of(&args[1])
            .ok_or_else(|| plan_err(format!("{usage}: the second argument names a column")))?;
        let intervals = args[2..]
            .iter()
            .map(|e| {
                interval_ms(e)
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| plan_err(format!("{usage}: {e} is not a positive interval")))
            })
            .collect::<DfResult<Vec<i64>>>()?;
        let (slide, size) = match self.kind {
            Kind::Tumble | Kind::Session => (intervals[0], intervals[0]),
            Kind::Hop => (intervals[0], intervals[1]),
        };
        if slide > size {
            return Err(plan_err(format!(
                "{usage}: the slide ({slide} ms) is longer than the size ({size} ms), so some rows would fall in no window"
            )));
        }
        let index = batch
            .schema()
            .index_of(&column)
            .map_err(|_| plan_err(format!("{usage}: stream {stream} has no column {column}")))?;
        if !matches!(
            batch.schema().field(index).data_type(),
            DataType::Timestamp(_, _)
        ) {
            return Err(plan_err(format!(
                "{usage}: {column} is {}, windows need a TIMESTAMP column",
                batch.schema().field(index).data_type()
            )));
        }
        sluice_log::common::mutex(&self.uses).push(WindowUse {
            stream: stream.clone(),
            column: column.clone(),
            size_ms: size,
        });
        let windowed = parts
            .iter()
            .map(|b| {
                if self.kind == Kind::Session {
                    assign_session(b, index, size)
                } else {
                    assign(b, index, slide, size)
                }
                .map(|w| vec![w])
            })
            .collect::<DfResult<Vec<_>>>()?;
        Ok(Arc::new(MemTable::try_new(
            windowed[0][0].schema(),
            windowed,
        )?))
    }
}

fn window_field(name: &str, role: &str, size_ms: i64, session: bool) -> Field {
    let mut metadata: std::collections::HashMap<String, String> = [
        (WINDOW_META.to_string(), role.to_string()),
        (WINDOW_SIZE_META.to_string(), size_ms.to_string()),
    ]
    .into_iter()
    .collect();
    if session {
        metadata.insert(WINDOW_KIND_META.to_string(), "session".to_string());
    }
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, None),
        false,
    )
    .with_metadata(metadata)
}

/// The rows of `batch` with the window `[time, time + gap)` each: the
/// aggregation merges overlapping ones into sessions. Rows without a
/// time fall in no window.
fn assign_session(batch: &RecordBatch, time: usize, gap: i64) -> DfResult<RecordBatch> {
    let times = millis(batch.column(time))?;
    let keep: Vec<u32> = (0..batch.num_rows() as u32)
        .filter(|&i| !times.is_null(i as usize))
        .collect();
    let all = keep.len() == batch.num_rows();
    let indices = UInt32Array::from(keep);
    let pick = |c: &ArrayRef| -> DfResult<ArrayRef> {
        if all {
            Ok(c.clone())
        } else {
            Ok(take(c.as_ref(), &indices, None)?)
        }
    };
    let mut columns: Vec<ArrayRef> = batch.columns().iter().map(pick).collect::<DfResult<_>>()?;
    let starts = pick(&(Arc::new(times) as ArrayRef))?;
    let starts = starts
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or_else(|| plan_err("session start is not a timestamp".into()))?;
    let ends: TimestampMillisecondArray = starts.unary(|t| t.saturating_add(gap));
    columns.push(Arc::new(starts.clone()));
    columns.push(Arc::new(ends));
    with_window_columns(batch, columns, gap, true)
}

fn with_window_columns(
    batch: &RecordBatch,
    columns: Vec<ArrayRef>,
    size: i64,
    session: bool,
) -> DfResult<RecordBatch> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(window_field("window_start", "start", size, session));
    fields.push(window_field("window_end", "end", size, session));
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// A time column as milliseconds.
fn millis(column: &ArrayRef) -> DfResult<TimestampMillisecondArray> {
    let times = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    times
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .cloned()
        .ok_or_else(|| plan_err("window time column did not cast to milliseconds".into()))
}

/// The rows of `batch` once per window of `size` every `slide` containing
/// their time, with `window_start` and `window_end`. Rows without a time
/// fall in no window.
fn assign(batch: &RecordBatch, time: usize, slide: i64, size: i64) -> DfResult<RecordBatch> {
    let times = millis(batch.column(time))?;
    let per_row = ((size + slide - 1) / slide) as usize;
    let mut indices = Vec::with_capacity(batch.num_rows() * per_row);
    let mut starts = Vec::with_capacity(batch.num_rows() * per_row);
    for row in 0..batch.num_rows() {
        if times.is_null(row) {
            continue;
        }
        let t = times.value(row);
        // The last window containing t starts at the slide boundary ≤ t.
        let last = t - t.rem_euclid(slide);
        let mut start = last;
        while start > t - size {
            indices.push(row as u32);
            starts.push(start);
            start -= slide;
        }
    }
    let indices = UInt32Array::from(indices);
    let mut columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| take(c.as_ref(), &indices, None))
        .collect::<Result<_, _>>()?;
    let ends: Vec<i64> = starts.iter().map(|s| s + size).collect();
    columns.push(Arc::new(TimestampMillisecondArray::from(starts)));
    columns.push(Arc::new(TimestampMillisecondArray::from(ends)));
    with_window_columns(batch, columns, size, false)
}

/// A stream's watermark progress, stored with the query's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct WatermarkState {
    /// Records with an event time before this are late (ms; `None`: no
    /// watermark yet).
    pub watermark: Option<i64>,
    /// Per partition: the largest event time seen and the batch time it
    /// last had records.
    pub partitions: BTreeMap<i32, PartitionTime>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct PartitionTime {
    pub max_event_ms: Option<i64>,
    pub last_active_ms: i64,
}

impl WatermarkState {
    /// Takes in a batch: `planned` lists the stream's partitions this
    /// batch, `seen` the largest event time per partition among its rows.
    /// Returns the new watermark (never behind the previous one).
    pub(crate) fn advance(
        &mut self,
        spec: &Watermark,
        batch_time_ms: i64,
        planned: &[i32],
        seen: &BTreeMap<i32, i64>,
    ) -> Option<i64> {
        for p in planned {
            self.partitions.entry(*p).or_insert(PartitionTime {
                max_event_ms: None,
                last_active_ms: batch_time_ms,
            });
        }
        for (p, t) in seen {
            let entry = self.partitions.entry(*p).or_insert(PartitionTime {
                max_event_ms: None,
                last_active_ms: batch_time_ms,
            });
            entry.max_event_ms = Some(entry.max_event_ms.map_or(*t, |m| m.max(*t)));
            entry.last_active_ms = batch_time_ms;
        }
        let active: Vec<&PartitionTime> = self
            .partitions
            .values()
            .filter(|p| batch_time_ms - p.last_active_ms < spec.idle_timeout_ms)
            .collect();
        let candidate = if active.is_empty() {
            // Every partition is idle: the stream has caught up, so its
            // largest event time is the best bound.
            self.partitions
                .values()
                .filter_map(|p| p.max_event_ms)
                .max()
        } else if active.iter().all(|p| p.max_event_ms.is_some()) {
            active.iter().filter_map(|p| p.max_event_ms).min()
        } else {
            // An active partition has not shown an event time yet.
            None
        };
        if let Some(c) = candidate {
            let w = c.saturating_sub(spec.delay_ms);
            self.watermark = Some(self.watermark.map_or(w, |old| old.max(w)));
        }
        self.watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Watermark {
        Watermark {
            column: "ts".into(),
            delay_ms: 5,
            idle_timeout_ms: 1000,
        }
    }

    #[test]
    fn watermark_is_the_slowest_active_partition_minus_the_delay() {
        let mut w = WatermarkState::default();
        let seen: BTreeMap<i32, i64> = [(0, 100)].into_iter().collect();
        // Partition 1 has shown nothing yet: no watermark.
        assert_eq!(w.advance(&spec(), 0, &[0, 1], &seen), None);
        let seen: BTreeMap<i32, i64> = [(0, 150), (1, 40)].into_iter().collect();
        assert_eq!(w.advance(&spec(), 10, &[0, 1], &seen), Some(35));
        // Never backwards, even if a partition's events are older.
        let seen: BTreeMap<i32, i64> = [(1, 20)].into_iter().collect();
        assert_eq!(w.advance(&spec(), 20, &[0, 1], &seen), Some(35));
    }

    #[test]
    fn an_idle_partition_stops_holding_the_watermark_back() {
        let mut w = WatermarkState::default();
        let seen: BTreeMap<i32, i64> = [(0, 100), (1, 10)].into_iter().collect();
        assert_eq!(w.advance(&spec(), 0, &[0, 1], &seen), Some(5));
        // Partition 1 goes quiet; after the idle timeout only 0 counts.
        let seen: BTreeMap<i32, i64> = [(0, 500)].into_iter().collect();
        assert_eq!(w.advance(&spec(), 500, &[0, 1], &seen), Some(5));
        assert_eq!(w.advance(&spec(), 1000, &[0, 1], &seen), Some(495));
        // A partition never seen holds it back only until its timeout.
        let seen: BTreeMap<i32, i64> = [(0, 900)].into_iter().collect();
        assert_eq!(w.advance(&spec(), 1100, &[0, 1, 2], &seen), Some(495));
        assert_eq!(w.advance(&spec(), 2100, &[0, 1, 2], &seen), Some(895));
    }

    #[test]
    fn hopping_windows_repeat_each_row() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        )]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(TimestampMillisecondArray::from(vec![
                Some(0),
                Some(12),
                None,
                Some(-3),
            ]))],
        )
        .unwrap();
        let out = assign(&batch, 0, 5, 10).unwrap();
        let starts = out
            .column(1)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        let got: Vec<(i64, i64)> = (0..out.num_rows())
            .map(|i| {
                let t = out
                    .column(0)
                    .as_any()
                    .downcast_ref::<TimestampMillisecondArray>()
                    .unwrap()
                    .value(i);
                (t, starts.value(i))
            })
            .collect();
        assert_eq!(
            got,
            vec![(0, 0), (0, -5), (12, 10), (12, 5), (-3, -5), (-3, -10)]
        );
        // Tumbling: one window each.
        let out = assign(&batch, 0, 10, 10).unwrap();
        assert_eq!(out.num_rows(), 3);
    }
}
