//! Watermarks: how far a stream's event time has certainly come.
//!
//! A stream's watermark (`WATERMARK FOR ts AS ts - INTERVAL '5' SECOND`)
//! is the smallest, over its active partitions, of the largest event time
//! seen, minus the delay; a partition without records for the stream's
//! `idle_timeout` (batch time) stops holding it back. Records behind the
//! watermark are late: stateful queries drop and count them. The
//! watermark is part of the query's state, so a replayed batch sees the
//! same one.
//!
//! This module owns the watermark's declaration, its arithmetic and its
//! stored progress (under `state_keys::watermark_key`); the batch's
//! commit carries that progress, it never commits by itself.

use std::collections::BTreeMap;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, Int32Type, SchemaRef, TimeUnit, TimestampMillisecondType,
};
use datafusion::logical_expr::Expr;
use rocksdb::ColumnFamily;
use serde::{Deserialize, Serialize};

use crate::error::SqlError;
use crate::state_keys::watermark_key;
use crate::window::interval_ms;
use sluice_engine::plan::BatchCx;

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
    /// Processing time (`AS PROCTIME()`): the watermark is the batch's
    /// time, records or not, so windows close as the clock passes them.
    pub processing_time: bool,
}

/// Default `idle_timeout` of a stream with a watermark.
pub(crate) const DEFAULT_IDLE_TIMEOUT_MS: i64 = 30_000;

/// The watermark a stream declares (`WATERMARK FOR …` and its
/// `idle_timeout` option), checked against its columns.
pub(crate) fn declared(
    decl: &crate::decl::StreamDecl,
    schema: &SchemaRef,
    line: usize,
) -> Result<Option<Watermark>, SqlError> {
    let err = |message: String| crate::error::SqlError::Plan { line, message };
    if let Some(column) = &decl.proctime {
        return Ok(Some(Watermark {
            column: column.clone(),
            delay_ms: 0,
            idle_timeout_ms: DEFAULT_IDLE_TIMEOUT_MS,
            processing_time: true,
        }));
    }
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
        processing_time: false,
    }))
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
        self.expect(planned, batch_time_ms);
        self.saw(seen, batch_time_ms);
        self.recompute(spec, batch_time_ms)
    }

    /// Partitions that hold the watermark back until they show an event
    /// time or go idle.
    fn expect(&mut self, partitions: &[i32], batch_time_ms: i64) {
        for p in partitions {
            self.partitions.entry(*p).or_insert(PartitionTime {
                max_event_ms: None,
                last_active_ms: batch_time_ms,
            });
        }
    }

    /// The largest event times partitions showed in the batch of
    /// `batch_time_ms`.
    fn saw(&mut self, seen: &BTreeMap<i32, i64>, batch_time_ms: i64) {
        for (p, t) in seen {
            let entry = self.partitions.entry(*p).or_insert(PartitionTime {
                max_event_ms: None,
                last_active_ms: batch_time_ms,
            });
            entry.max_event_ms = Some(entry.max_event_ms.map_or(*t, |m| m.max(*t)));
            entry.last_active_ms = entry.last_active_ms.max(batch_time_ms);
        }
    }

    /// The watermark at `batch_time_ms` from what the partitions showed.
    fn recompute(&mut self, spec: &Watermark, batch_time_ms: i64) -> Option<i64> {
        if spec.processing_time {
            // Every row of this batch carries its time; none can come
            // before it from now on.
            self.watermark = Some(
                self.watermark
                    .map_or(batch_time_ms, |w| w.max(batch_time_ms)),
            );
            return self.watermark;
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

/// Each row's event time (ms) and source partition.
fn event_times(
    batch: &RecordBatch,
    spec: &Watermark,
) -> Result<
    (
        datafusion::arrow::array::ArrayRef,
        datafusion::arrow::array::ArrayRef,
    ),
    SqlError,
> {
    let times = datafusion::arrow::compute::cast(
        batch.column(batch.schema().index_of(&spec.column)?),
        &DataType::Timestamp(TimeUnit::Millisecond, None),
    )?;
    let partitions = batch.column(batch.schema().index_of("_partition")?).clone();
    Ok((times, partitions))
}

/// What a stage-0 task of a job on many workers tells every stage-1 task
/// about its partition's event time (see [`received`]).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Progress {
    pub stream: String,
    /// The batch's largest event time per source partition.
    pub max_event_ms: BTreeMap<i32, i64>,
    pub batch_time_ms: i64,
}

/// A batch's rows of one stream sifted against a watermark, in one pass.
pub(crate) struct Sifted {
    /// The rows at or after the watermark (all of them without one).
    pub rows: Vec<RecordBatch>,
    /// How many rows were behind it.
    pub late: u64,
    /// The largest event time per source partition among all the rows.
    pub seen: BTreeMap<i32, i64>,
}

/// Drops `parts`' rows whose event time is behind `watermark` (late) and
/// notes the largest event time per source partition.
pub(crate) fn sift(
    spec: &Watermark,
    parts: Vec<RecordBatch>,
    watermark: Option<i64>,
) -> Result<Sifted, SqlError> {
    let mut seen: BTreeMap<i32, i64> = BTreeMap::new();
    let mut late = 0u64;
    let mut rows = Vec::with_capacity(parts.len());
    for batch in parts {
        let (times, partitions) = event_times(&batch, spec)?;
        let times = times.as_primitive::<TimestampMillisecondType>();
        let partitions = partitions.as_primitive::<Int32Type>();
        let mut late_here = 0u64;
        let keep: BooleanArray = (0..batch.num_rows())
            .map(|i| {
                if times.is_null(i) {
                    return Some(true);
                }
                let t = times.value(i);
                let max = seen.entry(partitions.value(i)).or_insert(t);
                *max = (*max).max(t);
                let on_time = watermark.is_none_or(|w| t >= w);
                late_here += u64::from(!on_time);
                Some(on_time)
            })
            .collect();
        late += late_here;
        rows.push(if late_here == 0 {
            batch
        } else {
            datafusion::arrow::compute::filter_record_batch(&batch, &keep)?
        });
    }
    Ok(Sifted { rows, late, seen })
}

/// On a stage-0 task: the batch's largest event time per partition, sent
/// to every bucket after its rows. Nothing is judged late here: only the
/// stage-1 task knows the watermark, from every partition's progress.
pub(crate) fn report(
    line: usize,
    stream: &str,
    spec: &Watermark,
    cx: &BatchCx,
    op: &str,
    parts: &[RecordBatch],
) -> Result<(), SqlError> {
    let seen = sift(spec, parts.to_vec(), None)?.seen;
    if seen.is_empty() {
        // No event time shown: the partition may be going idle.
        return Ok(());
    }
    let progress = Progress {
        stream: stream.to_owned(),
        max_event_ms: seen,
        batch_time_ms: cx.batch_time_ms,
    };
    let bytes = serde_json::to_vec(&progress).map_err(|e| SqlError::Plan {
        line,
        message: format!("cannot encode the progress of {stream}: {e}"),
    })?;
    cx.send_progress(op, bytes);
    Ok(())
}

/// The stream's watermark before and after a stage-1 task's batch.
pub(crate) struct Moved {
    /// Windows ending at or before it closed in earlier batches: rows for
    /// them are late.
    pub before: Option<i64>,
    pub after: Option<i64>,
}

/// On a stage-1 task: advances the stream's watermark, kept in the task's
/// state, with the progress the source partitions' tasks sent (`received`)
/// and with time (a partition silent for the idle timeout stops holding
/// it back). Every one of the `source_partitions` holds it back until it
/// shows an event time, as in one process.
#[allow(clippy::too_many_arguments)]
pub(crate) fn received(
    line: usize,
    stream: &str,
    spec: &Watermark,
    cx: &BatchCx,
    cf: &ColumnFamily,
    progress: &[Vec<u8>],
    source_partitions: u32,
) -> Result<Moved, SqlError> {
    let key = watermark_key(stream);
    let mut state = stored(line, stream, cx, cf, &key)?;
    let before = state.watermark;
    let all: Vec<i32> = (0..source_partitions as i32).collect();
    state.expect(&all, cx.batch_time_ms);
    for bytes in progress {
        let p: Progress = serde_json::from_slice(bytes).map_err(|e| SqlError::Plan {
            line,
            message: format!("a progress record of {stream} is unreadable: {e}"),
        })?;
        if p.stream == stream {
            state.saw(&p.max_event_ms, p.batch_time_ms);
        }
    }
    let after = state.recompute(spec, cx.batch_time_ms);
    store(line, &state, cx, cf, &key)?;
    Ok(Moved { before, after })
}

fn stored(
    line: usize,
    stream: &str,
    cx: &BatchCx,
    cf: &ColumnFamily,
    key: &[u8],
) -> Result<WatermarkState, SqlError> {
    match cx.checkpoint.db().get_cf(cf, key)? {
        Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| SqlError::Plan {
            line,
            message: format!("stored watermark of {stream} is unreadable: {e}"),
        }),
        None => Ok(WatermarkState::default()),
    }
}

fn store(
    line: usize,
    state: &WatermarkState,
    cx: &BatchCx,
    cf: &ColumnFamily,
    key: &[u8],
) -> Result<(), SqlError> {
    let bytes = serde_json::to_vec(state).map_err(|e| SqlError::Plan {
        line,
        message: format!("cannot store the watermark: {e}"),
    })?;
    cx.write(|w| w.put_cf(cf, key, bytes));
    Ok(())
}

/// The batch's rows of one stream, with its late records dropped.
pub(crate) struct OnTime {
    pub rows: Vec<RecordBatch>,
    /// How many records were behind the stored watermark.
    pub late: u64,
    /// The stream's watermark after this batch.
    pub watermark: Option<i64>,
}

/// Drops the batch's records behind the stored watermark of `stream`
/// (read from `topic`), then advances it with the rest; stores the
/// progress in the batch's commit. `line` is the query's, for errors.
pub(crate) fn drop_late_and_advance(
    line: usize,
    stream: &str,
    topic: &str,
    spec: &Watermark,
    cx: &BatchCx,
    cf: &ColumnFamily,
    parts: Vec<RecordBatch>,
) -> Result<OnTime, SqlError> {
    let key = watermark_key(stream);
    let mut state = stored(line, stream, cx, cf, &key)?;
    let Sifted { rows, late, seen } = sift(spec, parts, state.watermark)?;
    let planned: Vec<i32> = cx
        .planned
        .ranges
        .get(topic)
        .map(|r| r.iter().map(|r| r.partition).collect())
        .unwrap_or_default();
    let watermark = state.advance(spec, cx.batch_time_ms, &planned, &seen);
    store(line, &state, cx, cf, &key)?;
    Ok(OnTime {
        rows,
        late,
        watermark,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Watermark {
        Watermark {
            column: "ts".into(),
            delay_ms: 5,
            idle_timeout_ms: 1000,
            processing_time: false,
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
    fn on_a_stage_one_task_every_source_partition_holds_the_watermark_until_it_reports() {
        // Partitions 0..3 of the source; reports arrive with their own
        // batch times, possibly older than the stage-1 task's clock.
        let mut w = WatermarkState::default();
        w.expect(&[0, 1, 2], 1000);
        w.saw(&[(0, 100)].into_iter().collect(), 990);
        w.saw(&[(1, 300)].into_iter().collect(), 995);
        assert_eq!(
            w.recompute(&spec(), 1000),
            None,
            "partition 2 has not reported"
        );
        w.saw(&[(2, 200)].into_iter().collect(), 1000);
        assert_eq!(w.recompute(&spec(), 1000), Some(95));
        // An older report never moves a partition's last activity back
        // (seeded at the task's first batch time).
        w.saw(&[(0, 150)].into_iter().collect(), 900);
        assert_eq!(w.partitions[&0].last_active_ms, 1000);
        assert_eq!(w.recompute(&spec(), 1000), Some(145));
        // Partitions 0 and 2 go quiet past the idle timeout: 1 alone counts.
        w.saw(&[(1, 900)].into_iter().collect(), 2100);
        assert_eq!(w.recompute(&spec(), 2100), Some(895));
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
}
