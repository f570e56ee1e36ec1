//! An aggregation over a windowed aggregation on many workers: the third
//! stage.
//!
//! Stage 1 merges the inner (windowed) aggregation's partials into its
//! groups and closes windows as the watermark passes them, as one process
//! does. The outer aggregation groups by a window bound, so a window's
//! closed rows from every stage-1 task must meet: each stage-1 task sends
//! them, by a hash of the window bound, to stage 2, and after them its
//! watermark (every window ending at or before it is closed there). A
//! stage-2 task keeps the rows of windows some stage-1 task may still
//! close in a column family of its own, and hands on the windows every
//! stage-1 task has closed, for the outer aggregation to run over. This
//! module never runs a query.

use std::collections::BTreeMap;
use std::io::Cursor;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use rocksdb::{ColumnFamily, Direction, IteratorMode};
use sluice_engine::plan::{BatchCx, PlanError};

use crate::aggregation::Aggregation;
use crate::error::SqlError;
use crate::incremental::window_ends;

/// Buffer keys: a stage-1 task's watermark `p` + its bucket; a window's
/// rows `r` + window end (order-preserving) + batch id + piece.
const MARK: u8 = b'p';
const ROWS: u8 = b'r';

/// The operator whose cut carries closed windows to stage 2.
pub(super) fn outer_op(operator: &str) -> String {
    format!("{operator}-closed")
}

fn window_of(agg: &Aggregation) -> Result<(usize, i64), SqlError> {
    agg.window
        .map(|w| (w.column, w.to_end_ms))
        .ok_or_else(|| SqlError::Plan {
            line: 0,
            message: "an aggregation over an aggregation needs a windowed inner one".into(),
        })
}

/// Stage 1: sends the closed windows' rows (`parts`: the inner
/// aggregation's output columns) to stage 2 by window bound, and after
/// them this task's `watermark` if it moved past `before` (a task that
/// sent the same one every batch would keep its stage-2 input growing).
pub(super) fn send_closed(
    cx: &BatchCx,
    op: &str,
    agg: &Aggregation,
    parts: Vec<Vec<ArrayRef>>,
    (before, watermark): (Option<i64>, Option<i64>),
) -> Result<(), SqlError> {
    let (column, _) = window_of(agg)?;
    let schema: SchemaRef = agg.top.schema();
    for columns in parts {
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        if batch.num_rows() == 0 {
            continue;
        }
        let hashes = super::group_hashes(&[batch.column(column).clone()], batch.num_rows())?;
        sluice_engine::plan::exchange_at(cx, op, 2, batch, &hashes)?;
    }
    if let (Some(w), Some(bucket)) = (watermark, cx.reduce_bucket())
        && before.is_none_or(|b| w > b)
    {
        let mut payload = (bucket as u32).to_be_bytes().to_vec();
        payload.extend_from_slice(&w.to_be_bytes());
        cx.send_progress(op, payload);
    }
    Ok(())
}

/// Stage 2: keeps the batch's `rows` and the stage-1 watermarks in
/// `progress`, and returns the rows of every window all stage-1 tasks have
/// closed (staging their removal from the buffer).
pub(super) fn closed_everywhere(
    cx: &BatchCx,
    cf: &ColumnFamily,
    agg: &Aggregation,
    rows: Vec<RecordBatch>,
    progress: &[Vec<u8>],
) -> Result<Vec<RecordBatch>, SqlError> {
    let (column, to_end_ms) = window_of(agg)?;
    let db = cx.checkpoint.db();
    let mut marks: BTreeMap<u32, i64> = BTreeMap::new();
    for item in db.prefix_iterator_cf(cf, [MARK]) {
        let (key, value) = item.map_err(PlanError::from)?;
        if key.first() != Some(&MARK) {
            break;
        }
        marks.insert(be_u32(&key[1..])?, be_i64(&value)?);
    }
    let mut moved = BTreeMap::new();
    for p in progress {
        let (bucket, w) = (
            be_u32(p.get(..4).unwrap_or_default())?,
            be_i64(p.get(4..).unwrap_or_default())?,
        );
        let mark = marks.entry(bucket).or_insert(i64::MIN);
        if w > *mark {
            *mark = w;
            moved.insert(bucket, w);
        }
    }
    // Every stage-1 task reports once its watermark exists.
    let closed = (marks.len() >= cx.parallelism)
        .then(|| marks.values().copied().min())
        .flatten();
    let mut ready = Vec::new();
    let mut puts: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut deletes: Vec<Box<[u8]>> = Vec::new();
    if let Some(closed) = closed {
        let until = rows_key(closed.saturating_add(1), 0, 0);
        for item in db.iterator_cf(cf, IteratorMode::From(&[ROWS], Direction::Forward)) {
            let (key, value) = item.map_err(PlanError::from)?;
            if key.first() != Some(&ROWS) || key.as_ref() >= until.as_slice() {
                break;
            }
            ready.extend(decode(&value)?);
            deletes.push(key);
        }
    }
    for (piece, batch) in rows.into_iter().enumerate() {
        let ends = window_ends(batch.column(column), to_end_ms, batch.num_rows())?;
        let done: BooleanArray = ends
            .iter()
            .map(|e| Some(closed.is_some_and(|c| *e <= c)))
            .collect();
        ready.push(filter_record_batch(&batch, &done)?);
        // Rows of one window together, under its end.
        let mut by_end: BTreeMap<i64, Vec<u32>> = BTreeMap::new();
        for (i, e) in ends.iter().enumerate() {
            if closed.is_none_or(|c| *e > c) {
                by_end.entry(*e).or_default().push(i as u32);
            }
        }
        for (end, indices) in by_end {
            let indices = datafusion::arrow::array::UInt32Array::from(indices);
            let columns = batch
                .columns()
                .iter()
                .map(|c| datafusion::arrow::compute::take(c, &indices, None))
                .collect::<Result<Vec<_>, _>>()?;
            let part = RecordBatch::try_new(batch.schema(), columns)?;
            puts.push((rows_key(end, cx.batch_id, piece as u32), encode(&part)?));
        }
    }
    cx.write(|w| {
        for (bucket, mark) in &moved {
            let mut key = vec![MARK];
            key.extend_from_slice(&bucket.to_be_bytes());
            w.put_cf(cf, key, mark.to_be_bytes());
        }
        for (k, v) in &puts {
            w.put_cf(cf, k, v);
        }
        for k in &deletes {
            w.delete_cf(cf, k);
        }
    });
    Ok(ready.into_iter().filter(|b| b.num_rows() > 0).collect())
}

fn rows_key(end: i64, batch_id: u64, piece: u32) -> Vec<u8> {
    let mut key = vec![ROWS];
    key.extend_from_slice(&((end as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(&batch_id.to_be_bytes());
    key.extend_from_slice(&piece.to_be_bytes());
    key
}

fn be_u32(bytes: &[u8]) -> Result<u32, SqlError> {
    Ok(u32::from_be_bytes(
        bytes.try_into().map_err(|_| malformed())?,
    ))
}

fn be_i64(bytes: &[u8]) -> Result<i64, SqlError> {
    Ok(i64::from_be_bytes(
        bytes.try_into().map_err(|_| malformed())?,
    ))
}

fn malformed() -> SqlError {
    SqlError::from(PlanError::Invalid(
        "a malformed watermark record between the stages of an aggregation over an aggregation"
            .into(),
    ))
}

fn encode(batch: &RecordBatch) -> Result<Vec<u8>, SqlError> {
    let mut bytes = Vec::new();
    let mut w = StreamWriter::try_new(&mut bytes, &batch.schema())?;
    w.write(batch)?;
    w.finish()?;
    drop(w);
    Ok(bytes)
}

fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>, SqlError> {
    Ok(StreamReader::try_new(Cursor::new(bytes), None)?.collect::<Result<Vec<_>, _>>()?)
}
