//! Running a query once per batch, keeping `GROUP BY` aggregates across
//! batches.
//!
//! DataFusion plans the query over the batch's rows. If the plan has an
//! aggregation, it runs only up to the aggregate's *partial* phase
//! (accumulator state per group), merges that with the state stored for
//! the same groups in RocksDB (the accumulators' own `merge_batch`), stores
//! the merged state in the batch's atomic commit, and runs the rest of the
//! plan (projection, HAVING, …) over the merged values of the groups that
//! changed: Spark's *update* output mode. Any aggregate whose accumulator
//! can export and merge state works (count, sum, min, max, avg,
//! approx_distinct, …).
//!
//! `count(DISTINCT x)` (with or without `FILTER (WHERE …)`) is exact: its
//! partial state, the batch's distinct values per group, is checked
//! against one key per group and value seen before (one multi-get, only
//! for groups that existed); the keys that changed join the commit and the
//! group's stored state is the count. Distinct aggregates of the same
//! argument under different filters share the key, whose value holds a
//! bit per aggregate that counted the value (Flink's filter bitmap). A
//! group's values go with it: a closed window's in one range delete, an
//! expired group's too.
//!
//! In update mode under a HAVING, the changed groups' previous rows go
//! through the rest of the plan as well, and a group that passed and no
//! longer does is a delete for the sink (when the runner says the sink can
//! take it). An aggregation with another one over it hands its changed
//! groups' previous and new rows to [`crate::retraction`].
//!
//! Keys and states are stored with Arrow's row format, which encodes any
//! Arrow type to comparable bytes.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat, take};
use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use rocksdb::ColumnFamily;

use crate::aggregation::Aggregation;
use crate::error::SqlError;
use crate::retraction::{self, Changes};
use crate::sinks::Changelog;
use crate::state_keys::{
    DISTINCT_TAG, GROUP_TAG, TTL_PREFIX_LEN, TTL_TAG, distinct_prefix, distinct_prefix_end,
    group_key, le_u64, push_distinct_key, tag_and_time, time_bytes, time_from_bytes, ttl_key,
};
use sluice_engine::plan::BatchCx;

/// Which rows of an aggregation each batch emits (Spark's output modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutputMode {
    /// The groups that changed in the batch.
    Update,
    /// Only finalized rows: windows the watermark has closed, once each.
    Append,
    /// Every group, every batch.
    Complete,
}

impl OutputMode {
    pub(crate) fn parse(text: &str) -> Result<OutputMode, String> {
        match text.to_ascii_lowercase().as_str() {
            "update" => Ok(OutputMode::Update),
            "append" => Ok(OutputMode::Append),
            "complete" => Ok(OutputMode::Complete),
            other => Err(format!(
                "output mode {other:?} is not one of 'update', 'append', 'complete'"
            )),
        }
    }
}

/// `expr`'s accumulator over many groups; for a global aggregate (no
/// GROUP BY) the plain one, as DataFusion uses there: its answers over
/// no rows differ (`avg` of nothing is NULL, not 0 / 0).
pub(crate) fn accumulator(
    expr: &Arc<AggregateFunctionExpr>,
    global: bool,
) -> Result<Box<dyn GroupsAccumulator>, SqlError> {
    if expr.groups_accumulator_supported() && !global {
        return Ok(expr.create_groups_accumulator()?);
    }
    let expr = expr.clone();
    Ok(Box::new(GroupsAccumulatorAdapter::new(move || {
        expr.create_accumulator()
    })))
}

/// `plan` with the node `target` (by identity) replaced by `with`.
pub(crate) fn replace(
    plan: Arc<dyn ExecutionPlan>,
    target: &Arc<dyn ExecutionPlan>,
    with: &Arc<dyn ExecutionPlan>,
) -> Result<Arc<dyn ExecutionPlan>, SqlError> {
    if Arc::ptr_eq(&plan, target) {
        return Ok(with.clone());
    }
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    if children.is_empty() {
        return Ok(plan);
    }
    let children = children
        .into_iter()
        .map(|c| replace(c, target, with))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(datafusion::physical_plan::execution_plan::replace_children_if_necessary(plan, children)?)
}

/// The merged states of `n` groups: the partial states in `columns`
/// (after the group columns) and then `old_states` (stored, state columns
/// only), each row going to its group in `group_indices`.
pub(crate) fn merge_states(
    agg: &Aggregation,
    columns: &[ArrayRef],
    old_states: &[ArrayRef],
    group_indices: &[usize],
    n: usize,
) -> Result<Vec<ArrayRef>, SqlError> {
    let groups = agg.partial.group_expr().expr().len();
    let mut merged = Vec::new();
    let mut col = groups;
    for (expr, &distinct) in agg.partial.aggr_expr().iter().zip(&agg.distinct) {
        let width = expr.state_fields()?.len();
        if distinct {
            // New values per partial row (see `count_new_values`), then
            // the stored counts.
            let mut counts = vec![0i64; n];
            let new = columns[col].as_primitive::<datafusion::arrow::datatypes::Int64Type>();
            let old = old_states
                .get(col - groups)
                .map(|a| a.as_primitive::<datafusion::arrow::datatypes::Int64Type>());
            for (row, &group) in group_indices.iter().enumerate() {
                counts[group] += if row < new.len() {
                    new.value(row)
                } else {
                    old.map_or(0, |o| o.value(row - new.len()))
                };
            }
            merged.push(Arc::new(Int64Array::from(counts)) as ArrayRef);
            col += width;
            continue;
        }
        let inputs: Vec<ArrayRef> = (0..width)
            .map(|k| {
                let new = &columns[col + k];
                if old_states.is_empty() {
                    Ok(new.clone())
                } else {
                    concat(&[new.as_ref(), old_states[col - groups + k].as_ref()])
                }
            })
            .collect::<Result<_, _>>()?;
        let mut acc = accumulator(expr, groups == 0)?;
        acc.merge_batch(&inputs, group_indices, n)?;
        merged.extend(acc.state(EmitTo::All)?);
        col += width;
    }
    Ok(merged)
}

/// Merges stored states with accumulators and evaluates them: the final
/// values of `n` groups whose states are `states` (columns in the
/// partial schema's order).
pub(crate) fn evaluate(
    agg: &Aggregation,
    states: &[ArrayRef],
    n: usize,
) -> Result<Vec<ArrayRef>, SqlError> {
    let identity: Vec<usize> = (0..n).collect();
    let mut values = Vec::new();
    let mut col = 0;
    for (expr, &distinct) in agg.partial.aggr_expr().iter().zip(&agg.distinct) {
        let width = expr.state_fields()?.len();
        if distinct {
            // The stored state is the count itself.
            values.push(states[col].clone());
            col += width;
            continue;
        }
        let mut acc = accumulator(expr, agg.partial.group_expr().expr().is_empty())?;
        acc.merge_batch(&states[col..col + width], &identity, n)?;
        values.push(acc.evaluate(EmitTo::All)?);
        col += width;
    }
    Ok(values)
}

/// Everything a batch needs to read and write the state of one
/// aggregation.
struct Codec {
    keys: RowConverter,
    states: RowConverter,
    groups: usize,
    /// Bytes before the state in a value (the last update's batch time,
    /// with a state TTL).
    value_skip: usize,
}

impl Codec {
    fn new(agg: &Aggregation, ttl: Option<i64>) -> Result<Codec, SqlError> {
        let schema = agg.partial.schema();
        let groups = agg.partial.group_expr().expr().len();
        let keys = (0..groups)
            .map(|i| SortField::new(schema.field(i).data_type().clone()))
            .collect();
        let states = agg
            .stored_types
            .iter()
            .map(|t| SortField::new(t.clone()))
            .collect();
        Ok(Codec {
            keys: RowConverter::new(keys)?,
            states: RowConverter::new(states)?,
            groups,
            value_skip: if ttl.is_some() { 8 } else { 0 },
        })
    }

    fn prefix_len(agg: &Aggregation) -> usize {
        1 + if agg.window.is_some() { 8 } else { 0 }
    }

    /// Group columns and final values of stored `(key, state)` pairs.
    fn decode(&self, agg: &Aggregation, pairs: &[StoredGroup]) -> Result<Vec<ArrayRef>, SqlError> {
        let skip = Codec::prefix_len(agg);
        let key_parser = self.keys.parser();
        let mut columns = self
            .keys
            .convert_rows(pairs.iter().map(|(k, _)| key_parser.parse(&k[skip..])))?;
        let state_parser = self.states.parser();
        let states = self.states.convert_rows(
            pairs
                .iter()
                .map(|(_, v)| state_parser.parse(&v[self.value_skip..])),
        )?;
        columns.extend(evaluate(agg, &states, pairs.len())?);
        Ok(columns)
    }
}

/// The entries of `cf` in `[from, until)`, in key order.
pub(crate) fn key_range<'a>(
    db: &'a rocksdb::DB,
    cf: &'a ColumnFamily,
    from: &[u8],
    until: &[u8],
) -> rocksdb::DBIteratorWithThreadMode<'a, rocksdb::DB> {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(until.to_vec());
    db.iterator_cf_opt(
        cf,
        opts,
        rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward),
    )
}

/// A stored group: its key and its state.
type StoredGroup = (Box<[u8]>, Box<[u8]>);

/// Stored groups in `[from, until)` (key order) not among `skip`.
fn scan(
    db: &rocksdb::DB,
    cf: &ColumnFamily,
    from: &[u8],
    until: &[u8],
    skip: &hashbrown::HashSet<Vec<u8>>,
) -> Result<Vec<StoredGroup>, SqlError> {
    let mut out = Vec::new();
    for item in key_range(db, cf, from, until) {
        let (k, v) = item?;
        if !skip.contains(k.as_ref()) {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// What a batch of an aggregation emits and evicts.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub mode: OutputMode,
    /// The stream's watermark after this batch: windows it passed close.
    pub watermark: Option<i64>,
    /// Groups not updated for this long (batch time) are forgotten.
    pub ttl: Option<i64>,
    /// A filter over the aggregation (HAVING) can drop a group whose row
    /// the sink holds, and the sink takes deletes by a key the group
    /// decides: a group that stops passing is deleted (update mode).
    pub deletes: bool,
}

/// [`crate::runner`]'s batch of an aggregation from partial aggregates
/// already computed (`columns`: group columns, then states; a group may
/// have several rows): merges them into the stored state, closes the
/// windows the watermark has passed (evicting their state) and returns
/// the rows the output mode emits, after the rest of the plan.
pub(crate) async fn merge_batch(
    ctx: &SessionContext,
    plan: &Arc<dyn ExecutionPlan>,
    agg: &Aggregation,
    policy: Policy,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    columns: Vec<ArrayRef>,
) -> Result<Changelog, SqlError> {
    let Some(outer) = &agg.outer else {
        if policy.deletes && policy.mode == OutputMode::Update && agg.window.is_none() {
            return filtered_groups(ctx, plan, agg, policy, cx, cf, columns).await;
        }
        let parts = merge_into_state(agg, policy, cx, cf, columns)?;
        return Ok(run_rest(ctx, plan, agg, parts).await?.into());
    };
    let changes = merge_changes(agg, policy, cx, cf, columns)?;
    retraction::run(ctx, plan, agg, outer, cx, cf, changes).await
}

/// An update-mode batch of an aggregation under a filter (HAVING): the
/// changed groups' new rows through the rest of the plan are the upserts;
/// their previous rows that passed and whose group no longer passes
/// (compared by the output columns the group decides) are the deletes.
async fn filtered_groups(
    ctx: &SessionContext,
    plan: &Arc<dyn ExecutionPlan>,
    agg: &Aggregation,
    policy: Policy,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    columns: Vec<ArrayRef>,
) -> Result<Changelog, SqlError> {
    let changes = merge_changes(agg, policy, cx, cf, columns)?;
    let upserts = run_rest(ctx, plan, agg, vec![changes.added]).await?;
    let before = run_rest(ctx, plan, agg, vec![changes.retracted]).await?;
    if before.iter().all(|b| b.num_rows() == 0) {
        return Ok(upserts.into());
    }
    let groups: std::collections::HashSet<usize> =
        (0..agg.partial.group_expr().expr().len()).collect();
    let (identity, _) = retraction::derived_columns(plan, &agg.top, &groups)
        .map_err(|message| SqlError::State { message })?;
    let mut identity: Vec<usize> = identity.into_iter().collect();
    identity.sort_unstable();
    let deletes = crate::sinks::gone(&before, &upserts, &identity)?;
    Ok(Changelog { upserts, deletes })
}

/// An aggregation's batch when its changed groups' previous rows matter
/// (an aggregation over it, see [`crate::retraction`]; a HAVING that
/// deletes): merges the partial aggregates into the stored state and
/// returns the groups whose values changed, with their previous rows
/// where they had one.
pub(crate) fn merge_changes(
    agg: &Aggregation,
    policy: Policy,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    columns: Vec<ArrayRef>,
) -> Result<Changes, SqlError> {
    let Merged {
        codec: _,
        batch,
        stored,
        values,
    } = merge_groups(agg, policy, cx, cf, columns)?;
    let touched: hashbrown::HashSet<Vec<u8>> = batch.keys.iter().cloned().collect();
    if let Some(ttl) = policy.ttl {
        expire_groups(ttl, &touched, agg.distinct.contains(&true), cx, cf)?;
    }
    // A group whose values did not change moves no outer group.
    let previous = if stored.indices.is_empty() {
        values
            .iter()
            .map(|v| datafusion::arrow::array::new_empty_array(v.data_type()))
            .collect()
    } else {
        evaluate(agg, &stored.states, stored.indices.len())?
    };
    let converter = RowConverter::new(
        values
            .iter()
            .map(|v| SortField::new(v.data_type().clone()))
            .collect(),
    )?;
    let existed = UInt32Array::from_iter_values(stored.indices.iter().map(|&i| i as u32));
    let now: Vec<ArrayRef> = values
        .iter()
        .map(|v| take(v.as_ref(), &existed, None))
        .collect::<Result<_, _>>()?;
    let (now_rows, before_rows) = (
        converter.convert_columns(&now)?,
        converter.convert_columns(&previous)?,
    );
    let mut unchanged = vec![false; batch.len()];
    let mut retracted = Vec::new();
    for (k, &g) in stored.indices.iter().enumerate() {
        if values.is_empty() || now_rows.row(k) == before_rows.row(k) {
            unchanged[g] = true;
        } else {
            retracted.push(k as u32);
        }
    }
    let added =
        UInt32Array::from_iter_values((0..batch.len() as u32).filter(|&g| !unchanged[g as usize]));
    let retracted = UInt32Array::from(retracted);
    let group_columns_of = |indices: &UInt32Array, rows: &UInt32Array| {
        batch
            .group_columns
            .iter()
            .map(|c| take(c.as_ref(), indices, None))
            .chain(previous.iter().map(|v| take(v.as_ref(), rows, None)))
            .collect::<Result<Vec<_>, _>>()
    };
    let retracted_groups = take(&existed, &retracted, None)?;
    let retracted_groups =
        retracted_groups.as_primitive::<datafusion::arrow::datatypes::UInt32Type>();
    Ok(Changes {
        added: batch
            .group_columns
            .iter()
            .chain(&values)
            .map(|c| take(c.as_ref(), &added, None))
            .collect::<Result<_, _>>()?,
        retracted: group_columns_of(retracted_groups, &retracted)?,
    })
}

/// A batch's groups merged with their stored states (the merged states
/// staged in the batch's commit).
struct Merged {
    codec: Codec,
    batch: BatchGroups,
    stored: StoredStates,
    /// Each group's final values after the merge.
    values: Vec<ArrayRef>,
}

/// Reads the stored state of the batch's groups, counts new distinct
/// values, merges and evaluates, and stages the merged states.
fn merge_groups(
    agg: &Aggregation,
    policy: Policy,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    columns: Vec<ArrayRef>,
) -> Result<Merged, SqlError> {
    let codec = Codec::new(agg, policy.ttl)?;
    let batch = BatchGroups::of(&codec, agg, &columns)?;
    let stored = read_stored(&codec, &batch, policy, cx, cf)?;
    let columns = count_new_values(&codec, agg, &batch, &stored, policy, cx, cf, columns)?;
    let mut group_indices = batch.group_of.clone();
    group_indices.extend(&stored.indices);
    let merged = merge_states(agg, &columns, &stored.states, &group_indices, batch.len())?;
    let values = evaluate(agg, &merged, batch.len())?;
    stage_writes(&codec, &batch, &stored, &merged, policy, cx, cf)?;
    Ok(Merged {
        codec,
        batch,
        stored,
        values,
    })
}

/// [`merge_batch`] up to the aggregation's own output: the rows it emits
/// (groups, then final values), in parts, before the rest of the plan.
pub(crate) fn merge_into_state(
    agg: &Aggregation,
    policy: Policy,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    columns: Vec<ArrayRef>,
) -> Result<Vec<Vec<ArrayRef>>, SqlError> {
    let Merged {
        codec,
        batch,
        stored,
        values,
    } = merge_groups(agg, policy, cx, cf, columns)?;
    let mut parts = vec![emitted(agg, &batch, &stored.existed, values, policy)?];
    let stored_closed =
        (0..batch.len()).any(|i| stored.existed[i] && batch.closed(i, policy.watermark));
    let touched: hashbrown::HashSet<Vec<u8>> = batch.keys.into_iter().collect();
    let (closed_rows, evicted) = evict_closed_windows(&codec, agg, &touched, policy, cx, cf)?;
    parts.extend(closed_rows);
    let counts_distinct = agg.distinct.contains(&true);
    if let (true, Some(w), true) = (
        counts_distinct,
        policy.watermark,
        stored_closed || evicted > 0,
    ) {
        // Closed windows' groups are gone (above, and in `stage_writes`),
        // and so are the values they saw: one range tombstone, only in a
        // batch that closed a stored window.
        let until = tag_and_time(DISTINCT_TAG, w.saturating_add(1));
        delete_range(cx, cf, &[DISTINCT_TAG], &until)?;
    }
    if let Some(ttl) = policy.ttl {
        expire_groups(ttl, &touched, counts_distinct, cx, cf)?;
    }
    if policy.mode == OutputMode::Complete {
        let all = scan(
            cx.checkpoint.db(),
            cf,
            &[GROUP_TAG],
            &[GROUP_TAG + 1],
            &touched,
        )?;
        if !all.is_empty() {
            parts.push(codec.decode(agg, &all)?);
        }
    }
    Ok(parts)
}

/// The distinct groups of a batch's partial aggregates.
struct BatchGroups {
    /// Per partial row, its group: partitions of the partial phase may
    /// each have a row for the same group.
    group_of: Vec<usize>,
    /// Group columns, one row per group.
    group_columns: Vec<ArrayRef>,
    /// Each group's state key.
    keys: Vec<Vec<u8>>,
    /// Each group's window end (windowed aggregations).
    ends: Option<Vec<i64>>,
}

impl BatchGroups {
    fn of(codec: &Codec, agg: &Aggregation, columns: &[ArrayRef]) -> Result<Self, SqlError> {
        let groups = codec.groups;
        let partial_rows = columns.first().map_or(0, |c| c.len());
        let rows = codec.keys.convert_columns(&columns[..groups])?;
        let mut group_of: Vec<usize> = Vec::with_capacity(partial_rows);
        let mut first_row: Vec<u32> = Vec::new();
        {
            let mut seen: hashbrown::HashMap<&[u8], usize> =
                hashbrown::HashMap::with_capacity(partial_rows);
            for i in 0..partial_rows {
                let next = first_row.len();
                // A global aggregate (no GROUP BY) has one group, the empty key.
                let key: &[u8] = if groups == 0 { &[] } else { rows.row(i).data() };
                let g = *seen.entry(key).or_insert_with(|| {
                    first_row.push(i as u32);
                    next
                });
                group_of.push(g);
            }
        }
        let n = first_row.len();
        let first_row = UInt32Array::from(first_row);
        let group_columns: Vec<ArrayRef> = columns[..groups]
            .iter()
            .map(|c| take(c.as_ref(), &first_row, None))
            .collect::<Result<_, _>>()?;
        let rows = codec.keys.convert_columns(&group_columns)?;
        let ends = match agg.window {
            None => None,
            Some(w) => Some(window_ends(&group_columns[w.column], w.to_end_ms, n)?),
        };
        let keys = (0..n)
            .map(|i| {
                let group: &[u8] = if groups == 0 { &[] } else { rows.row(i).data() };
                group_key(ends.as_ref().map(|e| e[i]), group)
            })
            .collect();
        Ok(BatchGroups {
            group_of,
            group_columns,
            keys,
            ends,
        })
    }

    fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether group `i`'s window is closed by `watermark`.
    fn closed(&self, i: usize, watermark: Option<i64>) -> bool {
        match (&self.ends, watermark) {
            (Some(ends), Some(w)) => ends[i] <= w,
            _ => false,
        }
    }
}

/// Partial rows (group columns first) whose window ended at or before
/// `closed` dropped: their windows were closed and emitted in an earlier
/// batch. On many workers this is where lateness is judged, per window as
/// in Flink: the partial rows come from tasks that do not know the
/// watermark. Returns the rows kept and how many were dropped.
pub(crate) fn drop_closed_windows(
    agg: &Aggregation,
    columns: Vec<ArrayRef>,
    closed: Option<i64>,
) -> Result<(Vec<ArrayRef>, usize), SqlError> {
    let (Some(window), Some(closed)) = (agg.window, closed) else {
        return Ok((columns, 0));
    };
    let rows = columns.first().map_or(0, |c| c.len());
    let ends = window_ends(&columns[window.column], window.to_end_ms, rows)?;
    let keep: datafusion::arrow::array::BooleanArray =
        ends.iter().map(|end| Some(*end > closed)).collect();
    let dropped = keep.false_count();
    if dropped == 0 {
        return Ok((columns, 0));
    }
    let kept = columns
        .iter()
        .map(|c| datafusion::arrow::compute::filter(c.as_ref(), &keep))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((kept, dropped))
}

/// The window end of each of `n` groups from their window column.
pub(crate) fn window_ends(
    column: &ArrayRef,
    to_end_ms: i64,
    n: usize,
) -> Result<Vec<i64>, SqlError> {
    let as_ms = cast(column, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
    let as_ms = as_ms
        .as_any()
        .downcast_ref::<TimestampMillisecondArray>()
        .ok_or_else(|| SqlError::Plan {
            line: 0,
            message: "window column is not a timestamp".into(),
        })?;
    Ok((0..n)
        .map(|i| as_ms.value(i).saturating_add(to_end_ms))
        .collect())
}

/// Replaces each `count(DISTINCT …)`'s partial state (per partial row,
/// the list of its group's distinct values in the batch) with how many of
/// those values the group never saw before, and stages their keys. Values
/// of groups without a stored state are all new (no read); a group whose
/// state expired starts afresh, its old values deleted first.
#[allow(clippy::too_many_arguments)]
fn count_new_values(
    codec: &Codec,
    agg: &Aggregation,
    batch: &BatchGroups,
    stored: &StoredStates,
    policy: Policy,
    cx: &BatchCx,
    cf: &ColumnFamily,
    mut columns: Vec<ArrayRef>,
) -> Result<Vec<ArrayRef>, SqlError> {
    if !agg.distinct.contains(&true) {
        return Ok(columns);
    }
    let prefixes: Vec<Vec<u8>> = batch.keys.iter().map(|k| distinct_prefix(k)).collect();
    for (g, prefix) in prefixes.iter().enumerate() {
        if !stored.existed[g] && stored.last_update[g].is_some() {
            delete_range(cx, cf, prefix, &distinct_prefix_end(prefix))?;
        }
    }
    // Where each aggregate's state starts among the columns.
    let mut first_column = Vec::with_capacity(agg.partial.aggr_expr().len());
    let mut col = codec.groups;
    for expr in agg.partial.aggr_expr() {
        first_column.push(col);
        col += expr.state_fields()?.len();
    }
    for set in &agg.distinct_sets {
        let counts = count_new_in_set(
            agg,
            set,
            &first_column,
            &columns,
            &prefixes,
            batch,
            stored,
            policy,
            cx,
            cf,
        )?;
        for (&e, counts) in set.iter().zip(counts) {
            columns[first_column[e]] = Arc::new(Int64Array::from(counts));
        }
    }
    Ok(columns)
}

/// [`count_new_values`] for one set of aggregates counting the same
/// argument: per aggregate of the set, the new values per partial row.
/// A key per group and value holds the bits of the set's aggregates that
/// have counted it; a batch reads the keys of groups that existed, and
/// writes the keys that gained a bit.
#[allow(clippy::too_many_arguments)]
fn count_new_in_set(
    agg: &Aggregation,
    set: &[usize],
    first_column: &[usize],
    columns: &[ArrayRef],
    prefixes: &[Vec<u8>],
    batch: &BatchGroups,
    stored: &StoredStates,
    policy: Policy,
    cx: &BatchCx,
    cf: &ColumnFamily,
) -> Result<Vec<Vec<i64>>, SqlError> {
    let rows = columns.first().map_or(0, |c| c.len());
    let id = u16::try_from(set[0]).map_err(|_| SqlError::Plan {
        line: 0,
        message: "more than 65,535 aggregates in one query".into(),
    })?;
    // Each aggregate's values in Arrow's row format, kept whole while the
    // map below borrows them.
    let mut converter: Option<RowConverter> = None;
    let mut lists_of = Vec::with_capacity(set.len());
    let mut encoded_of = Vec::with_capacity(set.len());
    for &e in set {
        let expr = &agg.partial.aggr_expr()[e];
        let lists = columns[first_column[e]]
            .as_list_opt::<i32>()
            .ok_or_else(|| SqlError::Plan {
                line: 0,
                message: format!(
                    "{}: the partial state of count(DISTINCT …) is not a list",
                    expr.name()
                ),
            })?;
        let values = lists.values();
        let converter = match &mut converter {
            Some(c) => c,
            None => converter.insert(RowConverter::new(vec![SortField::new(
                values.data_type().clone(),
            )])?),
        };
        encoded_of.push(converter.convert_columns(std::slice::from_ref(values))?);
        lists_of.push(lists);
    }
    // Each value once per group (group, value): the partial row it is
    // counted on (any of its group's) and the bits of the aggregates that
    // saw it. Borrowed: no key is built for a value seen again.
    let mut seen: hashbrown::HashMap<(usize, &[u8]), (usize, u64)> = hashbrown::HashMap::new();
    for (bit, (lists, encoded)) in lists_of.iter().zip(&encoded_of).enumerate() {
        let values = lists.values();
        let offsets = lists.value_offsets();
        for row in 0..rows {
            if lists.is_null(row) {
                continue;
            }
            let group = batch.group_of[row];
            for v in offsets[row] as usize..offsets[row + 1] as usize {
                if values.is_null(v) {
                    continue;
                }
                seen.entry((group, encoded.row(v).data()))
                    .or_insert((row, 0))
                    .1 |= 1 << bit;
            }
        }
    }
    let mut counts = vec![vec![0i64; rows]; set.len()];
    let mut count = |row: usize, bits: u64| {
        for (bit, counts) in counts.iter_mut().enumerate() {
            if bits & (1 << bit) != 0 {
                counts[row] += 1;
            }
        }
    };
    // Every value's state key, one after another in `keys`; (where, row,
    // bits) for the values to write and for those to look up first.
    let mut keys: Vec<u8> = Vec::new();
    let mut writes: Vec<(std::ops::Range<usize>, usize, u64)> = Vec::new();
    let mut lookups: Vec<(std::ops::Range<usize>, usize, u64)> = Vec::new();
    for ((group, value), (row, bits)) in seen {
        let at = keys.len();
        push_distinct_key(&mut keys, &prefixes[group], id, value);
        let key = at..keys.len();
        if stored.existed[group] {
            lookups.push((key, row, bits));
        } else {
            count(row, bits);
            writes.push((key, row, bits));
        }
    }
    lookups.sort_unstable_by(|a, b| keys[a.0.clone()].cmp(&keys[b.0.clone()]));
    let found = cx.checkpoint.db().batched_multi_get_cf(
        cf,
        lookups.iter().map(|(k, _, _)| &keys[k.clone()]),
        true,
    );
    for ((key, row, bits), found) in lookups.into_iter().zip(found) {
        let before = found?.map_or(0, |v| le_u64(&v));
        let new = bits & !before;
        if new != 0 {
            count(row, new);
            writes.push((key, row, before | bits));
        }
    }
    cx.write(|w| {
        for (key, row, bits) in &writes {
            // A window closed in this batch keeps nothing.
            if !batch.closed(batch.group_of[*row], policy.watermark) {
                w.put_cf(cf, &keys[key.clone()], bits.to_le_bytes());
            }
        }
    });
    Ok(counts)
}

/// What is stored for a batch's groups.
struct StoredStates {
    /// Which of the batch's groups had a (live) stored state.
    existed: Vec<bool>,
    /// With a TTL: each existing group's last update (its index entry).
    last_update: Vec<Option<i64>>,
    /// The group of each stored state below.
    indices: Vec<usize>,
    /// Stored states, state columns only.
    states: Vec<ArrayRef>,
}

/// Reads the stored state of every group of the batch (one multi-get).
fn read_stored(
    codec: &Codec,
    batch: &BatchGroups,
    policy: Policy,
    cx: &BatchCx,
    cf: &ColumnFamily,
) -> Result<StoredStates, SqlError> {
    let n = batch.len();
    let mut stored = StoredStates {
        existed: vec![false; n],
        last_update: vec![None; n],
        indices: Vec::new(),
        states: Vec::new(),
    };
    let mut bytes_of: Vec<Vec<u8>> = Vec::new();
    let found = cx
        .checkpoint
        .db()
        .batched_multi_get_cf(cf, &batch.keys, false);
    for (i, found) in found.into_iter().enumerate() {
        let Some(bytes) = found? else { continue };
        if codec.value_skip == 8 && bytes.len() >= 8 {
            let updated = time_from_bytes(&bytes);
            stored.last_update[i] = Some(updated);
            if policy
                .ttl
                .is_some_and(|ttl| updated <= cx.batch_time_ms - ttl)
            {
                // Expired but not yet swept: the group starts afresh.
                continue;
            }
        }
        stored.indices.push(i);
        bytes_of.push(bytes[codec.value_skip.min(bytes.len())..].to_vec());
        stored.existed[i] = true;
    }
    if !bytes_of.is_empty() {
        let parser = codec.states.parser();
        stored.states = codec
            .states
            .convert_rows(bytes_of.iter().map(|b| parser.parse(b)))?;
    }
    Ok(stored)
}

/// Stages the merged states in the batch's commit; windows the watermark
/// closes are deleted instead (nothing more can arrive for them).
fn stage_writes(
    codec: &Codec,
    batch: &BatchGroups,
    stored: &StoredStates,
    merged: &[ArrayRef],
    policy: Policy,
    cx: &BatchCx,
    cf: &ColumnFamily,
) -> Result<(), SqlError> {
    let state_rows = codec.states.convert_columns(merged)?;
    let now = cx.batch_time_ms;
    cx.write(|w| {
        for (i, key) in batch.keys.iter().enumerate() {
            if batch.closed(i, policy.watermark) {
                if stored.existed[i] {
                    w.delete_cf(cf, key);
                }
                continue;
            }
            // No aggregate functions (DISTINCT): the key is the state.
            let state: &[u8] = if merged.is_empty() {
                &[]
            } else {
                state_rows.row(i).data()
            };
            if policy.ttl.is_some() {
                let mut value = time_bytes(now).to_vec();
                value.extend_from_slice(state);
                w.put_cf(cf, key, value);
                if let Some(old) = stored.last_update[i] {
                    w.delete_cf(cf, ttl_key(old, key));
                }
                w.put_cf(cf, ttl_key(now, key), []);
            } else {
                w.put_cf(cf, key, state);
            }
        }
    });
    Ok(())
}

/// Rows of this batch's groups that the mode emits: group columns, then
/// the aggregates' values.
fn emitted(
    agg: &Aggregation,
    batch: &BatchGroups,
    existed: &[bool],
    values: Vec<ArrayRef>,
    policy: Policy,
) -> Result<Vec<ArrayRef>, SqlError> {
    // Without aggregate functions (`SELECT DISTINCT`, a bare GROUP BY) a
    // group never changes once seen: update mode emits it only the first
    // time, which deduplicates.
    let distinct = agg.partial.aggr_expr().is_empty();
    let emit_now: Vec<u32> = (0..batch.len())
        .filter(|&i| match policy.mode {
            OutputMode::Update if distinct => !existed[i],
            OutputMode::Update | OutputMode::Complete => true,
            OutputMode::Append => batch.closed(i, policy.watermark),
        })
        .map(|i| i as u32)
        .collect();
    let indices = UInt32Array::from(emit_now);
    Ok(batch
        .group_columns
        .iter()
        .chain(&values)
        .map(|c| take(c.as_ref(), &indices, None))
        .collect::<Result<_, _>>()?)
}

/// Stored windows this batch did not touch that the watermark closes:
/// evicted, and in append mode emitted (their rows are returned, with
/// how many were evicted).
fn evict_closed_windows(
    codec: &Codec,
    agg: &Aggregation,
    touched: &hashbrown::HashSet<Vec<u8>>,
    policy: Policy,
    cx: &BatchCx,
    cf: &ColumnFamily,
) -> Result<(Option<Vec<ArrayRef>>, usize), SqlError> {
    let (Some(_), Some(w)) = (&agg.window, policy.watermark) else {
        return Ok((None, 0));
    };
    if policy.mode == OutputMode::Complete {
        return Ok((None, 0));
    }
    let until = tag_and_time(GROUP_TAG, w.saturating_add(1));
    let finished = scan(cx.checkpoint.db(), cf, &[GROUP_TAG], &until, touched)?;
    cx.write(|b| finished.iter().for_each(|(k, _)| b.delete_cf(cf, k)));
    if policy.mode == OutputMode::Append && !finished.is_empty() {
        return Ok((Some(codec.decode(agg, &finished)?), finished.len()));
    }
    Ok((None, finished.len()))
}

/// Forgets groups not updated for `ttl` (batch time), as Flink's state
/// TTL: a later row starts them afresh.
fn expire_groups(
    ttl: i64,
    touched: &hashbrown::HashSet<Vec<u8>>,
    counts_distinct: bool,
    cx: &BatchCx,
    cf: &ColumnFamily,
) -> Result<(), SqlError> {
    let until = tag_and_time(
        TTL_TAG,
        cx.batch_time_ms.saturating_sub(ttl).saturating_add(1),
    );
    let expired = scan(
        cx.checkpoint.db(),
        cf,
        &[TTL_TAG],
        &until,
        &hashbrown::HashSet::new(),
    )?;
    let mut forgotten: Vec<&[u8]> = Vec::new();
    cx.write(|b| {
        for (index, _) in &expired {
            let key = &index[TTL_PREFIX_LEN..];
            if !touched.contains(key) {
                b.delete_cf(cf, index);
                b.delete_cf(cf, key);
                forgotten.push(key);
            }
        }
    });
    if counts_distinct {
        for key in &forgotten {
            let prefix = distinct_prefix(key);
            delete_range(cx, cf, &prefix, &distinct_prefix_end(&prefix))?;
        }
    }
    cx.count("expired groups", forgotten.len() as u64);
    Ok(())
}

/// Deletes the keys in `[from, until)` in the batch's commit: one range
/// tombstone in one process; on many workers each key, since a task's
/// state writes become changelog records, one per key.
fn delete_range(
    cx: &BatchCx,
    cf: &ColumnFamily,
    from: &[u8],
    until: &[u8],
) -> Result<(), SqlError> {
    if !cx.on_workers() {
        cx.write(|b| b.delete_range_cf(cf, from, until));
        return Ok(());
    }
    let keys = scan(
        cx.checkpoint.db(),
        cf,
        from,
        until,
        &hashbrown::HashSet::new(),
    )?;
    cx.write(|b| keys.iter().for_each(|(k, _)| b.delete_cf(cf, k)));
    Ok(())
}

/// The partial phase over the batch's rows, as one set of columns
/// (group columns, then the accumulators' states).
pub(crate) async fn partial_columns(
    ctx: &SessionContext,
    agg: &Aggregation,
) -> Result<Vec<ArrayRef>, SqlError> {
    let partial: Arc<dyn ExecutionPlan> = agg.partial.clone();
    let batches = collect(partial.clone(), ctx.task_ctx()).await?;
    concat_columns(&partial.schema(), &batches)
}

/// The columns of `batches` (of `schema`), each concatenated.
pub(crate) fn concat_columns(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<ArrayRef>, SqlError> {
    (0..schema.fields().len())
        .map(|i| {
            if batches.is_empty() {
                return Ok(datafusion::arrow::array::new_empty_array(
                    schema.field(i).data_type(),
                ));
            }
            let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(i).as_ref()).collect();
            Ok(concat(&parts)?)
        })
        .collect()
}

/// Runs the plan above the aggregation over `parts` (each the
/// aggregation's output columns: groups, then final values).
pub(crate) async fn run_rest(
    ctx: &SessionContext,
    plan: &Arc<dyn ExecutionPlan>,
    agg: &Aggregation,
    parts: Vec<Vec<ArrayRef>>,
) -> Result<Vec<RecordBatch>, SqlError> {
    let top_schema: SchemaRef = agg.top.schema();
    let merged: Vec<RecordBatch> = parts
        .into_iter()
        .map(|columns| RecordBatch::try_new(top_schema.clone(), columns))
        .collect::<Result<_, _>>()?;
    if merged.iter().all(|b| b.num_rows() == 0) {
        return Ok(Vec::new());
    }
    let source: Arc<dyn ExecutionPlan> =
        MemorySourceConfig::try_new_exec(&[merged], top_schema, None)?;
    let rest = replace(plan.clone(), &agg.top, &source)?;
    let out = collect(rest, ctx.task_ctx()).await?;
    Ok(out)
}
