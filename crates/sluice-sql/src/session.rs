//! Session windows: an aggregation grouped by `SESSION(stream, ts, gap)`
//! merges, per value of its other group keys, every window that overlaps
//! into one session; a session ends `gap` after its last record and is
//! final once the watermark passes that end.
//!
//! Each row arrives as the window `[ts, ts + gap)`. A batch's partial
//! aggregates are such windows; for every key they touch, the key's open
//! sessions are read from RocksDB (sessions of one key are adjacent:
//! `0x01 key start`), overlapping windows and sessions are merged (their
//! accumulator states with the accumulators' own `merge_batch`) and the
//! result replaces them in the batch's atomic commit. An index by end
//! (`0x05 end key start`) finds the sessions the watermark closes without
//! reading the others; closed sessions are emitted once and deleted.
//!
//! Sessions run in append mode only: a session's bounds change as it
//! grows and sessions merge, so a row emitted earlier would be left
//! standing under bounds that no longer exist.
//!
//! This module owns the session state layout; it never plans queries
//! (the caller hands it the partial aggregation) and never commits.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, TimestampMillisecondArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use rocksdb::ColumnFamily;

use super::incremental::{
    self, Aggregation, GROUP_TAG, SessionColumns, end_bytes, time_from_bytes,
};
use crate::error::SqlError;
use sluice_engine::plan::BatchCx;

/// Index of open sessions by end: `0x05 end key start` → empty.
const SESSION_END_TAG: u8 = 5;

/// `0x01 key start`: where a session's state lives.
fn session_key(key: &[u8], start: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.push(GROUP_TAG);
    k.extend_from_slice(key);
    k.extend_from_slice(&end_bytes(start));
    k
}

/// `0x05 end key start`: the session in the index by end.
fn end_index_key(end: i64, session_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + session_key.len());
    k.push(SESSION_END_TAG);
    k.extend_from_slice(&end_bytes(end));
    k.extend_from_slice(&session_key[1..]);
    k
}

/// A session stored before this batch.
struct Stored {
    key: Vec<u8>,
    start: i64,
    end: i64,
    state: Vec<u8>,
}

/// A session this batch's rows created or extended.
struct Touched<'a> {
    group: &'a [u8],
    start: i64,
    end: i64,
    /// Stored sessions merged into it (their keys are replaced).
    stored: Vec<usize>,
}

/// A finished session, to emit.
struct Closed {
    group: Vec<u8>,
    start: i64,
    end: i64,
    state: Vec<u8>,
}

fn millis(column: &ArrayRef) -> Result<TimestampMillisecondArray, SqlError> {
    let ms = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    ms.as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .cloned()
        .ok_or_else(|| SqlError::Plan {
            line: 0,
            message: "session bounds are not timestamps".into(),
        })
}

/// Runs one batch of a session-windowed aggregation: merges the batch's
/// windows into the stored sessions, closes those `watermark` has passed
/// (evicting their state) and returns their rows after the rest of the
/// plan.
pub(crate) async fn run_batch(
    ctx: &SessionContext,
    plan: &Arc<dyn ExecutionPlan>,
    agg: &Aggregation,
    bounds: SessionColumns,
    watermark: Option<i64>,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
) -> Result<Vec<RecordBatch>, SqlError> {
    let columns = incremental::partial_columns(ctx, agg).await?;
    let schema = agg.partial().schema();
    let groups = agg.partial().group_expr().expr().len();
    let n = columns.first().map_or(0, |c| c.len());
    let key_columns: Vec<usize> = (0..groups)
        .filter(|&i| i != bounds.start && i != bounds.end)
        .collect();
    let sort_fields = |range: &mut dyn Iterator<Item = usize>| {
        range
            .map(|i| SortField::new(schema.field(i).data_type().clone()))
            .collect::<Vec<_>>()
    };
    let keys = RowConverter::new(sort_fields(&mut key_columns.iter().copied()))?;
    let states = RowConverter::new(sort_fields(&mut (groups..schema.fields().len())))?;
    let key_rows = if key_columns.is_empty() || n == 0 {
        None
    } else {
        Some(
            keys.convert_columns(
                &key_columns
                    .iter()
                    .map(|&i| columns[i].clone())
                    .collect::<Vec<_>>(),
            )?,
        )
    };
    let group_of = |row: usize| -> &[u8] { key_rows.as_ref().map_or(&[], |r| r.row(row).data()) };
    let starts = millis(&columns[bounds.start])?;
    let ends = millis(&columns[bounds.end])?;

    // This batch's windows per key, in key order so the reads of stored
    // sessions walk RocksDB forward.
    let mut by_group: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for row in 0..n {
        by_group.entry(group_of(row)).or_default().push(row);
    }
    let db = cx.checkpoint.db();
    let mut stored: Vec<Stored> = Vec::new();
    let mut touched: Vec<Touched> = Vec::new();
    // Per new row, the touched session it joins.
    let mut session_of_row = vec![0usize; n];
    let mut iter = db.raw_iterator_cf(cf);
    for (group, rows) in &by_group {
        let prefix = session_key(group, 0);
        let prefix = &prefix[..prefix.len() - 8];
        let first_stored = stored.len();
        iter.seek(prefix);
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            if !k.starts_with(prefix) || k.len() != prefix.len() + 8 || v.len() < 8 {
                break;
            }
            stored.push(Stored {
                key: k.to_vec(),
                start: time_from_bytes(&k[prefix.len()..]),
                end: time_from_bytes(v),
                state: v[8..].to_vec(),
            });
            iter.next();
        }
        iter.status()?;
        // Windows and stored sessions by start; one sweep merges every
        // run that overlaps. A record at a session's end starts a new
        // one: the session closed at that instant.
        enum Part {
            Row(usize),
            Stored(usize),
        }
        let mut parts: Vec<(i64, i64, Part)> = rows
            .iter()
            .map(|&r| (starts.value(r), ends.value(r), Part::Row(r)))
            .chain(
                (first_stored..stored.len())
                    .map(|s| (stored[s].start, stored[s].end, Part::Stored(s))),
            )
            .collect();
        parts.sort_by_key(|p| p.0);
        let mut current: Option<(Touched, bool)> = None;
        for (start, end, part) in parts {
            let extends = current.as_ref().is_some_and(|(c, _)| start < c.end);
            if !extends
                && let Some((done, has_rows)) = current.take()
                && has_rows
            {
                touched.push(done);
            }
            let (session, has_rows) = current.get_or_insert_with(|| {
                (
                    Touched {
                        group,
                        start,
                        end,
                        stored: Vec::new(),
                    },
                    false,
                )
            });
            session.end = session.end.max(end);
            match part {
                Part::Row(r) => {
                    *has_rows = true;
                    session_of_row[r] = touched.len();
                }
                Part::Stored(s) => session.stored.push(s),
            }
        }
        if let Some((done, true)) = current {
            touched.push(done);
        }
    }
    drop(iter);

    // Merged state of every touched session: this batch's partial states
    // and those of the stored sessions it absorbed.
    let absorbed: Vec<(usize, usize)> = touched
        .iter()
        .enumerate()
        .flat_map(|(t, s)| s.stored.iter().map(move |&i| (i, t)))
        .collect();
    let old_states = if absorbed.is_empty() {
        Vec::new()
    } else {
        let parser = states.parser();
        states.convert_rows(
            absorbed
                .iter()
                .map(|(i, _)| parser.parse(&stored[*i].state)),
        )?
    };
    let mut group_indices = session_of_row;
    group_indices.extend(absorbed.iter().map(|(_, t)| *t));
    let merged =
        incremental::merge_states(agg, &columns, &old_states, &group_indices, touched.len())?;
    let merged_rows = if touched.is_empty() || merged.is_empty() {
        None
    } else {
        Some(states.convert_columns(&merged)?)
    };
    let state_of = |t: usize| -> &[u8] { merged_rows.as_ref().map_or(&[], |r| r.row(t).data()) };

    let closed_now = |end: i64| watermark.is_some_and(|w| end <= w);
    let mut closed: Vec<Closed> = Vec::new();
    cx.write(|w| {
        // Absorbed sessions go first: a merged session may reuse one's key.
        for &(i, _) in &absorbed {
            w.delete_cf(cf, &stored[i].key);
            w.delete_cf(cf, end_index_key(stored[i].end, &stored[i].key));
        }
        for (t, session) in touched.iter().enumerate() {
            if closed_now(session.end) {
                continue;
            }
            let key = session_key(session.group, session.start);
            let mut value = end_bytes(session.end).to_vec();
            value.extend_from_slice(state_of(t));
            w.put_cf(cf, end_index_key(session.end, &key), []);
            w.put_cf(cf, key, value);
        }
    });
    for (t, session) in touched.iter().enumerate() {
        if closed_now(session.end) {
            closed.push(Closed {
                group: session.group.to_vec(),
                start: session.start,
                end: session.end,
                state: state_of(t).to_vec(),
            });
        }
    }

    // Stored sessions this batch did not extend that the watermark closes.
    if let Some(w) = watermark {
        let absorbed_keys: hashbrown::HashSet<&[u8]> = absorbed
            .iter()
            .map(|(i, _)| stored[*i].key.as_slice())
            .collect();
        let mut until = vec![SESSION_END_TAG];
        until.extend_from_slice(&end_bytes(w.saturating_add(1)));
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_iterate_upper_bound(until);
        let mut finished: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        for item in db.iterator_cf_opt(
            cf,
            opts,
            rocksdb::IteratorMode::From(&[SESSION_END_TAG], rocksdb::Direction::Forward),
        ) {
            let (index, _) = item?;
            let mut key = vec![GROUP_TAG];
            key.extend_from_slice(&index[9..]);
            if !absorbed_keys.contains(key.as_slice()) {
                finished.push((index.to_vec(), key));
            }
        }
        let values = db.batched_multi_get_cf(cf, finished.iter().map(|(_, k)| k), false);
        cx.write(|b| {
            for (index, key) in &finished {
                b.delete_cf(cf, index);
                b.delete_cf(cf, key);
            }
        });
        for ((_, key), value) in finished.iter().zip(values) {
            let Some(value) = value? else { continue };
            if value.len() < 8 || key.len() < 9 {
                continue;
            }
            closed.push(Closed {
                group: key[1..key.len() - 8].to_vec(),
                start: time_from_bytes(&key[key.len() - 8..]),
                end: time_from_bytes(&value),
                state: value[8..].to_vec(),
            });
        }
    }
    if closed.is_empty() {
        return Ok(Vec::new());
    }

    // The closed sessions' rows: group columns in the plan's order, then
    // the aggregates' final values.
    let m = closed.len();
    let mut key_values = if key_columns.is_empty() {
        Vec::new()
    } else {
        let parser = keys.parser();
        keys.convert_rows(closed.iter().map(|c| parser.parse(&c.group)))?
    }
    .into_iter();
    let state_columns = if agg.partial().aggr_expr().is_empty() {
        Vec::new()
    } else {
        let parser = states.parser();
        states.convert_rows(closed.iter().map(|c| parser.parse(&c.state)))?
    };
    let bound = |values: Vec<i64>, field: usize| -> Result<ArrayRef, SqlError> {
        let ms: ArrayRef = Arc::new(TimestampMillisecondArray::from(values));
        Ok(cast(&ms, schema.field(field).data_type())?)
    };
    let mut out: Vec<ArrayRef> = Vec::with_capacity(groups + agg.partial().aggr_expr().len());
    for i in 0..groups {
        if i == bounds.start {
            out.push(bound(closed.iter().map(|c| c.start).collect(), i)?);
        } else if i == bounds.end {
            out.push(bound(closed.iter().map(|c| c.end).collect(), i)?);
        } else {
            out.push(key_values.next().ok_or_else(|| SqlError::Plan {
                line: 0,
                message: "session key columns went missing".into(),
            })?);
        }
    }
    out.extend(incremental::evaluate(agg, &state_columns, m)?);
    incremental::run_rest(ctx, plan, agg, vec![out]).await
}
