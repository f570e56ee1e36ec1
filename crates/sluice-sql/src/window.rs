//! Event time: window table functions.
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
//! its last record (see `crate::session_window`).
//!
//! Watermarks, which close windows, live in `crate::watermark`.
//!
//! This module owns window assignment; it never reads or writes state.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    Array, ArrayRef, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::catalog::{TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::Expr;

/// Field metadata marking a window column (value: `start` or `end`).
pub(crate) const WINDOW_META: &str = "sluice.window";
/// Field metadata: the window's size in milliseconds (a session's gap).
pub(crate) const WINDOW_SIZE_META: &str = "sluice.window.size_ms";
/// Field metadata on session windows' columns (value: `session`).
pub(crate) const WINDOW_KIND_META: &str = "sluice.window.kind";

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
        Ok(Arc::new(WindowedStream {
            stream,
            rows: MemTable::try_new(windowed[0][0].schema(), windowed)?,
        }))
    }
}

/// A window function's rows of one stream. The scan keeps the stream's
/// name (DataFusion names it after the function), so the join of two
/// streams finds which stream each of its sides reads.
#[derive(Debug)]
pub(crate) struct WindowedStream {
    pub stream: String,
    rows: MemTable,
}

impl TableProvider for WindowedStream {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.rows.schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        self.rows.table_type()
    }

    // `async fn scan` as `#[async_trait]` expands it (the crate is not a
    // dependency of ours): the rows' own scan.
    fn scan<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        state: &'life1 dyn datafusion::catalog::Session,
        projection: Option<&'life2 Vec<usize>>,
        filters: &'life3 [Expr],
        limit: Option<usize>,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<
                    Output = DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>>,
                > + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        self.rows.scan(state, projection, filters, limit)
    }
}

/// The part of a window a column is (`start` or `end`), by the mark the
/// window functions put on their columns, or by its name.
pub(crate) fn window_role(field: &Field) -> Option<&str> {
    field
        .metadata()
        .get(WINDOW_META)
        .map(String::as_str)
        .or(match field.name().as_str() {
            "window_end" => Some("end"),
            "window_start" => Some("start"),
            _ => None,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

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
