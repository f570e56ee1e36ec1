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
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use rocksdb::{ColumnFamily, DB};

use crate::aggregation::{Aggregation, SessionColumns};
use crate::error::SqlError;
use crate::incremental;
use crate::state_keys::{
    SESSION_END_TAG, session_end_key, session_key, session_of_end_key, session_prefix,
    tag_and_time, time_bytes, time_from_bytes,
};
use sluice_engine::plan::BatchCx;

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

/// Where a session aggregation's columns are and how its keys and states
/// encode.
struct Layout {
    schema: SchemaRef,
    /// Group columns (the session's bounds among them).
    groups: usize,
    bounds: SessionColumns,
    /// Group columns other than the bounds: the session's key.
    key_columns: Vec<usize>,
    keys: RowConverter,
    states: RowConverter,
}

impl Layout {
    fn new(agg: &Aggregation, bounds: SessionColumns) -> Result<Layout, SqlError> {
        let schema = agg.partial().schema();
        let groups = agg.partial().group_expr().expr().len();
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
        Ok(Layout {
            schema,
            groups,
            bounds,
            key_columns,
            keys,
            states,
        })
    }
}

/// This batch's windows: one per partial-aggregate row.
struct Windows {
    rows: usize,
    key_rows: Option<Rows>,
    starts: TimestampMillisecondArray,
    ends: TimestampMillisecondArray,
}

impl Windows {
    fn of(layout: &Layout, columns: &[ArrayRef]) -> Result<Windows, SqlError> {
        let rows = columns.first().map_or(0, |c| c.len());
        let key_rows = if layout.key_columns.is_empty() || rows == 0 {
            None
        } else {
            let keys: Vec<ArrayRef> = layout
                .key_columns
                .iter()
                .map(|&i| columns[i].clone())
                .collect();
            Some(layout.keys.convert_columns(&keys)?)
        };
        Ok(Windows {
            rows,
            key_rows,
            starts: millis(&columns[layout.bounds.start])?,
            ends: millis(&columns[layout.bounds.end])?,
        })
    }

    fn group(&self, row: usize) -> &[u8] {
        self.key_rows.as_ref().map_or(&[], |r| r.row(row).data())
    }
}

/// The sessions this batch touches: the stored sessions of its keys, and
/// how its windows and those merge.
struct Sweep<'a> {
    stored: Vec<Stored>,
    touched: Vec<Touched<'a>>,
    /// Per window, the touched session it joins.
    session_of_row: Vec<usize>,
}

/// Reads the stored sessions of every key the batch's windows have, and
/// merges each run of overlapping windows and sessions into one.
fn sweep<'a>(windows: &'a Windows, db: &DB, cf: &ColumnFamily) -> Result<Sweep<'a>, SqlError> {
    // In key order, so the reads of stored sessions walk RocksDB forward.
    let mut by_group: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for row in 0..windows.rows {
        by_group.entry(windows.group(row)).or_default().push(row);
    }
    let mut sweep = Sweep {
        stored: Vec::new(),
        touched: Vec::new(),
        session_of_row: vec![0usize; windows.rows],
    };
    let mut iter = db.raw_iterator_cf(cf);
    for (group, rows) in by_group {
        let prefix = session_prefix(group);
        let first_stored = sweep.stored.len();
        iter.seek(&prefix);
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 8 || v.len() < 8 {
                break;
            }
            sweep.stored.push(Stored {
                key: k.to_vec(),
                start: time_from_bytes(&k[prefix.len()..]),
                end: time_from_bytes(v),
                state: v[8..].to_vec(),
            });
            iter.next();
        }
        iter.status()?;
        sweep.merge_overlaps(windows, group, &rows, first_stored);
    }
    Ok(sweep)
}

impl<'a> Sweep<'a> {
    /// Windows and stored sessions of one key by start; one pass merges
    /// every run that overlaps. A record at a session's end starts a new
    /// one: the session closed at that instant.
    fn merge_overlaps(
        &mut self,
        windows: &Windows,
        group: &'a [u8],
        rows: &[usize],
        first_stored: usize,
    ) {
        enum Part {
            Row(usize),
            Stored(usize),
        }
        let mut parts: Vec<(i64, i64, Part)> = rows
            .iter()
            .map(|&r| (windows.starts.value(r), windows.ends.value(r), Part::Row(r)))
            .chain(
                (first_stored..self.stored.len())
                    .map(|s| (self.stored[s].start, self.stored[s].end, Part::Stored(s))),
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
                self.touched.push(done);
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
                    self.session_of_row[r] = self.touched.len();
                }
                Part::Stored(s) => session.stored.push(s),
            }
        }
        if let Some((done, true)) = current {
            self.touched.push(done);
        }
    }

    /// (stored session, touched session it merged into) pairs.
    fn absorbed(&self) -> Vec<(usize, usize)> {
        self.touched
            .iter()
            .enumerate()
            .flat_map(|(t, s)| s.stored.iter().map(move |&i| (i, t)))
            .collect()
    }
}

/// Runs one batch of a session-windowed aggregation from its partial
/// aggregates (`columns`: group columns with the sessions' bounds, then
/// states; on many workers they come from the tasks that read the
/// records): merges the batch's windows into the stored sessions, closes
/// those `watermark` has passed (evicting their state) and returns their
/// rows after the rest of the plan.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn merge_partials(
    ctx: &SessionContext,
    plan: &Arc<dyn ExecutionPlan>,
    agg: &Aggregation,
    bounds: SessionColumns,
    watermark: Option<i64>,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    columns: Vec<ArrayRef>,
) -> Result<Vec<RecordBatch>, SqlError> {
    let layout = Layout::new(agg, bounds)?;
    let windows = Windows::of(&layout, &columns)?;
    let db = cx.checkpoint.db();
    let sweep = sweep(&windows, db, cf)?;
    let absorbed = sweep.absorbed();
    let merged = merged_states(agg, &layout, &columns, &sweep, &absorbed)?;
    let mut closed = stage_writes(cx, cf, &sweep, &absorbed, watermark, merged.as_ref());
    if let Some(w) = watermark {
        let absorbed_keys: hashbrown::HashSet<&[u8]> = absorbed
            .iter()
            .map(|(i, _)| sweep.stored[*i].key.as_slice())
            .collect();
        closed.extend(close_stored(cx, db, cf, w, &absorbed_keys)?);
    }
    if closed.is_empty() {
        return Ok(Vec::new());
    }
    let out = closed_rows(agg, &layout, &closed)?;
    incremental::run_rest(ctx, plan, agg, vec![out]).await
}

/// Merged state of every touched session: this batch's partial states
/// and those of the stored sessions it absorbed.
fn merged_states(
    agg: &Aggregation,
    layout: &Layout,
    columns: &[ArrayRef],
    sweep: &Sweep,
    absorbed: &[(usize, usize)],
) -> Result<Option<Rows>, SqlError> {
    let old_states = if absorbed.is_empty() {
        Vec::new()
    } else {
        let parser = layout.states.parser();
        layout.states.convert_rows(
            absorbed
                .iter()
                .map(|(i, _)| parser.parse(&sweep.stored[*i].state)),
        )?
    };
    let mut group_indices = sweep.session_of_row.clone();
    group_indices.extend(absorbed.iter().map(|(_, t)| *t));
    let sessions = sweep.touched.len();
    let merged = incremental::merge_states(agg, columns, &old_states, &group_indices, sessions)?;
    Ok(if sessions == 0 || merged.is_empty() {
        None
    } else {
        Some(layout.states.convert_columns(&merged)?)
    })
}

/// Stages the batch's session changes in its commit: absorbed sessions
/// go, touched ones are stored under their new bounds unless the
/// watermark already closes them; those are returned to emit.
fn stage_writes(
    cx: &BatchCx,
    cf: &ColumnFamily,
    sweep: &Sweep,
    absorbed: &[(usize, usize)],
    watermark: Option<i64>,
    merged: Option<&Rows>,
) -> Vec<Closed> {
    // No aggregate functions: a session's bounds are all its state.
    let state_of = |t: usize| -> &[u8] { merged.map_or(&[], |r| r.row(t).data()) };
    let closed_now = |end: i64| watermark.is_some_and(|w| end <= w);
    cx.write(|w| {
        // Absorbed sessions go first: a merged session may reuse one's key.
        for &(i, _) in absorbed {
            let stored = &sweep.stored[i];
            w.delete_cf(cf, &stored.key);
            w.delete_cf(cf, session_end_key(stored.end, &stored.key));
        }
        for (t, session) in sweep.touched.iter().enumerate() {
            if closed_now(session.end) {
                continue;
            }
            let key = session_key(session.group, session.start);
            let mut value = time_bytes(session.end).to_vec();
            value.extend_from_slice(state_of(t));
            w.put_cf(cf, session_end_key(session.end, &key), []);
            w.put_cf(cf, key, value);
        }
    });
    sweep
        .touched
        .iter()
        .enumerate()
        .filter(|(_, session)| closed_now(session.end))
        .map(|(t, session)| Closed {
            group: session.group.to_vec(),
            start: session.start,
            end: session.end,
            state: state_of(t).to_vec(),
        })
        .collect()
}

/// Stored sessions this batch did not extend that the watermark `w`
/// closes: deleted in the batch's commit, returned to emit.
fn close_stored(
    cx: &BatchCx,
    db: &DB,
    cf: &ColumnFamily,
    w: i64,
    absorbed_keys: &hashbrown::HashSet<&[u8]>,
) -> Result<Vec<Closed>, SqlError> {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(tag_and_time(SESSION_END_TAG, w.saturating_add(1)));
    let mut finished: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for item in db.iterator_cf_opt(
        cf,
        opts,
        rocksdb::IteratorMode::From(&[SESSION_END_TAG], rocksdb::Direction::Forward),
    ) {
        let (index, _) = item?;
        let key = session_of_end_key(&index);
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
    let mut closed = Vec::new();
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
    Ok(closed)
}

/// The closed sessions' rows: group columns in the plan's order, then
/// the aggregates' final values.
fn closed_rows(
    agg: &Aggregation,
    layout: &Layout,
    closed: &[Closed],
) -> Result<Vec<ArrayRef>, SqlError> {
    let mut key_values = if layout.key_columns.is_empty() {
        Vec::new()
    } else {
        let parser = layout.keys.parser();
        layout
            .keys
            .convert_rows(closed.iter().map(|c| parser.parse(&c.group)))?
    }
    .into_iter();
    let state_columns = if agg.partial().aggr_expr().is_empty() {
        Vec::new()
    } else {
        let parser = layout.states.parser();
        layout
            .states
            .convert_rows(closed.iter().map(|c| parser.parse(&c.state)))?
    };
    let bound = |values: Vec<i64>, field: usize| -> Result<ArrayRef, SqlError> {
        let ms: ArrayRef = Arc::new(TimestampMillisecondArray::from(values));
        Ok(cast(&ms, layout.schema.field(field).data_type())?)
    };
    let mut out: Vec<ArrayRef> =
        Vec::with_capacity(layout.groups + agg.partial().aggr_expr().len());
    for i in 0..layout.groups {
        if i == layout.bounds.start {
            out.push(bound(closed.iter().map(|c| c.start).collect(), i)?);
        } else if i == layout.bounds.end {
            out.push(bound(closed.iter().map(|c| c.end).collect(), i)?);
        } else {
            out.push(key_values.next().ok_or_else(|| SqlError::Plan {
                line: 0,
                message: "session key columns went missing".into(),
            })?);
        }
    }
    out.extend(incremental::evaluate(agg, &state_columns, closed.len())?);
    Ok(out)
}
