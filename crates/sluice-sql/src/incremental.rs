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
//! Keys and states are stored with Arrow's row format, which encodes any
//! Arrow type to comparable bytes.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use rocksdb::ColumnFamily;

use crate::error::SqlError;
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

/// The window of a windowed aggregation: which group column holds it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WindowColumn {
    /// Index among the group columns.
    pub column: usize,
    /// Added to the column's value to get the window's end (0 for
    /// `window_end`, the size for `window_start`).
    pub to_end_ms: i64,
    /// Set for session windows, whose bounds are merged per key.
    pub session: Option<SessionColumns>,
}

/// The group columns holding a session window's bounds.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionColumns {
    pub start: usize,
    pub end: usize,
    /// A session ends this long after its last record.
    pub gap_ms: i64,
}

/// The aggregation found in a plan.
pub(crate) struct Aggregation {
    /// The node whose output is replaced by the merged values.
    top: Arc<dyn ExecutionPlan>,
    /// Its partial phase over the batch's rows.
    partial: Arc<AggregateExec>,
    /// Set when it groups by a window.
    pub window: Option<WindowColumn>,
    /// Other aggregations run above it (over its closed windows).
    pub nested: bool,
}

impl Aggregation {
    /// The node whose output the merged state replaces.
    pub(crate) fn top(&self) -> &Arc<dyn ExecutionPlan> {
        &self.top
    }

    /// The partial phase: runs over each slice of the batch.
    pub(crate) fn partial(&self) -> &Arc<AggregateExec> {
        &self.partial
    }
}

/// State keys: a tag byte, then (windowed) the window end, then the
/// group in Arrow's row format. The tag keeps the query's own metadata
/// (the watermark) apart from its groups.
pub(crate) const GROUP_TAG: u8 = 1;
const META_TAG: u8 = 0;
/// With a state TTL: `0x03` + last update's batch time (8 bytes, ordered)
/// + group key → empty, so expired groups are one range scan away.
const TTL_TAG: u8 = 3;

/// The state key of a stream's watermark progress.
pub(crate) fn watermark_key(stream: &str) -> Vec<u8> {
    let mut key = vec![META_TAG];
    key.extend_from_slice(b"watermark/");
    key.extend_from_slice(stream.as_bytes());
    key
}

/// A time as 8 bytes whose byte order is time order (sign bit flipped,
/// big-endian): state keys sorted by window end, event or update time.
pub(crate) fn end_bytes(end_ms: i64) -> [u8; 8] {
    ((end_ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// The time [`end_bytes`] encoded (the first 8 bytes of `bytes`).
pub(crate) fn time_from_bytes(bytes: &[u8]) -> i64 {
    let mut t = [0u8; 8];
    t.copy_from_slice(&bytes[..8]);
    (u64::from_be_bytes(t) ^ (1 << 63)) as i64
}

fn ttl_key(time: i64, group: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + group.len());
    key.push(TTL_TAG);
    key.extend_from_slice(&end_bytes(time));
    key.extend_from_slice(group);
    key
}

/// Finds the window among the group columns of a partial aggregate: a
/// column marked by a window function, or named `window_end` /
/// `window_start`; failing those, the stream's event-time column itself
/// (`event_time`): a group keyed by an event time gets no row once the
/// watermark has passed it (`SELECT DISTINCT id, ts`: deduplication
/// bounded by the watermark).
fn window_column(
    partial: &AggregateExec,
    event_time: Option<&str>,
) -> Result<Option<WindowColumn>, String> {
    use super::window::{WINDOW_KIND_META, WINDOW_META, WINDOW_SIZE_META};
    let schema = partial.schema();
    let groups = partial.group_expr().expr().len();
    let mut start = None;
    let mut end = None;
    let mut session_gap = None;
    for i in 0..groups {
        let field = schema.field(i);
        if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
            continue;
        }
        let meta = field.metadata();
        let role = meta
            .get(WINDOW_META)
            .map(String::as_str)
            .or(match field.name().as_str() {
                "window_end" => Some("end"),
                "window_start" => Some("start"),
                _ => None,
            });
        if role.is_some() && meta.get(WINDOW_KIND_META).is_some_and(|k| k == "session") {
            session_gap = meta.get(WINDOW_SIZE_META).cloned();
        }
        match role {
            Some("end") if end.is_none() => end = Some(i),
            Some("start") if start.is_none() => {
                start = Some((i, meta.get(WINDOW_SIZE_META).cloned()))
            }
            _ => {}
        }
    }
    if let Some(gap) = session_gap {
        let (Some((start, _)), Some(end)) = (start, end) else {
            return Err("a session window's bounds move as records arrive: GROUP BY both window_start and window_end of SESSION(…)".into());
        };
        return Ok(Some(WindowColumn {
            column: end,
            to_end_ms: 0,
            session: Some(SessionColumns {
                start,
                end,
                gap_ms: gap.parse().map_err(|_| format!("bad session gap {gap}"))?,
            }),
        }));
    }
    match (end, start) {
        (Some(column), _) => Ok(Some(WindowColumn {
            column,
            to_end_ms: 0,
            session: None,
        })),
        (None, None) => Ok(event_time.and_then(|name| {
            (0..groups)
                .find(|&i| {
                    let f = schema.field(i);
                    f.name() == name && matches!(f.data_type(), DataType::Timestamp(_, _))
                })
                // Closed once the watermark is past it: records at the
                // watermark itself are still on time.
                .map(|column| WindowColumn {
                    column,
                    to_end_ms: 1,
                    session: None,
                })
        })),
        (None, Some((i, Some(size)))) => Ok(Some(WindowColumn {
            column: i,
            to_end_ms: size.parse().map_err(|_| format!("bad window size {size}"))?,
            session: None,
        })),
        (None, Some((_, None))) => Err(
            "GROUP BY window_start without window_end: add window_end to the GROUP BY so windows can be closed".into(),
        ),
    }
}

fn is_passthrough(plan: &dyn ExecutionPlan) -> bool {
    matches!(
        plan.name(),
        "RepartitionExec" | "CoalescePartitionsExec" | "CoalesceBatchesExec"
    )
}

/// Finds the single aggregation of `plan` and refuses what cannot run
/// incrementally. `None`: a stateless query.
pub(crate) fn analyze(
    plan: &Arc<dyn ExecutionPlan>,
    event_time: Option<&str>,
) -> Result<Option<Aggregation>, String> {
    // Aggregations from the top down.
    let mut found: Vec<Aggregation> = Vec::new();
    let mut stack: Vec<(Arc<dyn ExecutionPlan>, bool)> = vec![(plan.clone(), false)];
    while let Some((node, below_aggregate)) = stack.pop() {
        let name = node.name().to_owned();
        if !below_aggregate {
            match name.as_str() {
                "SortExec" | "SortPreservingMergeExec" => {
                    return Err("ORDER BY over an unbounded stream never finishes: sort each batch's output in the sink, or aggregate first".into());
                }
                "GlobalLimitExec" | "LocalLimitExec" => {
                    return Err("LIMIT over an unbounded stream is not incremental: remove it (the console shows the first rows of every batch)".into());
                }
                "BoundedWindowAggExec" | "WindowAggExec" => {
                    return Err("OVER (…) window functions are not incremental yet: for the first row per key (ROW_NUMBER() … = 1), GROUP BY the key with first_value(col ORDER BY ts)".into());
                }
                _ => {}
            }
        }
        if let Some(agg) = node.downcast_ref::<AggregateExec>() {
            if !agg.group_expr().is_single() {
                return Err("GROUPING SETS, CUBE and ROLLUP are not incremental yet".into());
            }
            // Final ← (repartition/coalesce)* ← Partial is one aggregation.
            let partial = match agg.mode() {
                AggregateMode::Final | AggregateMode::FinalPartitioned => {
                    let mut child = agg.input().clone();
                    while is_passthrough(child.as_ref()) {
                        child = child.children()[0].clone();
                    }
                    let Some(p) = child.downcast_ref::<AggregateExec>() else {
                        return Err(
                            "unexpected plan: a final aggregate without a partial one".into()
                        );
                    };
                    p.clone()
                }
                _ => agg.clone(),
            };
            // ROLLUP's final phase groups by plain columns; its partial
            // phase holds the grouping sets.
            if !partial.group_expr().is_single() {
                return Err("GROUPING SETS, CUBE and ROLLUP are not incremental yet".into());
            }
            let partial = AggregateExec::try_new(
                AggregateMode::Partial,
                partial.group_expr().clone(),
                partial.aggr_expr().to_vec(),
                partial.filter_expr().to_vec(),
                partial.input().clone(),
                partial.input_schema(),
            )
            .map_err(|e| e.to_string())?;
            // Check the states can be stored.
            let fields = partial.schema();
            for f in fields.fields() {
                if RowConverter::new(vec![SortField::new(f.data_type().clone())]).is_err() {
                    return Err(format!(
                        "aggregate state {} of type {} cannot be stored",
                        f.name(),
                        f.data_type()
                    ));
                }
            }
            for expr in partial.aggr_expr() {
                if expr.is_distinct() {
                    return Err(
                        "DISTINCT aggregates are not incremental yet: use approx_distinct(…)"
                            .into(),
                    );
                }
            }
            let window = window_column(&partial, event_time)?;
            // Below the aggregation: what its partial phase reads.
            for child in partial.children() {
                stack.push((child.clone(), true));
            }
            found.push(Aggregation {
                top: node.clone(),
                partial: Arc::new(partial),
                window,
                nested: false,
            });
            continue;
        }
        for child in node.children() {
            stack.push((child.clone(), below_aggregate));
        }
    }
    let Some(mut inner) = found.pop() else {
        return Ok(None);
    };
    if !found.is_empty() {
        // An aggregation over a windowed one in append mode sees each
        // window whole, in the batch that closes it: the outer ones run
        // per batch over the closed windows' rows.
        if inner.window.is_none() {
            return Err("nested aggregations (e.g. COUNT(DISTINCT …)) are not incremental yet: use approx_distinct(…), or aggregate a windowed aggregation in append mode".into());
        }
        for outer in &found {
            if outer.window.is_none() {
                return Err("an aggregation over a windowed aggregation must group by its window_start or window_end, so each group is complete when the window closes".into());
            }
        }
        inner.nested = true;
    }
    Ok(Some(inner))
}

/// Refuses, from the logical plan, what the physical plan may hide (a
/// LIMIT pushed into the scan, a sort removed as redundant).
pub(crate) fn check_logical(plan: &datafusion::logical_expr::LogicalPlan) -> Result<(), String> {
    use datafusion::logical_expr::LogicalPlan;
    match plan {
        LogicalPlan::Limit(_) => {
            return Err("LIMIT over an unbounded stream is not incremental: remove it (the console shows the first rows of every batch)".into());
        }
        LogicalPlan::Sort(_) => {
            return Err("ORDER BY over an unbounded stream never finishes: sort each batch's output in the sink, or aggregate first".into());
        }
        _ => {}
    }
    plan.inputs().into_iter().try_for_each(check_logical)
}

/// Type signature of the stored state, for the checkpoint's registry.
pub(crate) fn state_signature(agg: &Aggregation) -> (String, String) {
    let schema = agg.partial.schema();
    let groups = agg.partial.group_expr().expr().len();
    let names = |range: std::ops::Range<usize>| {
        range
            .map(|i| schema.field(i).data_type().to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    (
        format!("({})", names(0..groups)),
        format!("({})", names(groups..schema.fields().len())),
    )
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

fn replace(
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
    for expr in agg.partial.aggr_expr() {
        let width = expr.state_fields()?.len();
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
    for expr in agg.partial.aggr_expr() {
        let width = expr.state_fields()?.len();
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
        let fields = |range: std::ops::Range<usize>| {
            range
                .map(|i| SortField::new(schema.field(i).data_type().clone()))
                .collect::<Vec<_>>()
        };
        Ok(Codec {
            keys: RowConverter::new(fields(0..groups))?,
            states: RowConverter::new(fields(groups..schema.fields().len()))?,
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
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(until.to_vec());
    let iter = db.iterator_cf_opt(
        cf,
        opts,
        rocksdb::IteratorMode::From(from, rocksdb::Direction::Forward),
    );
    for item in iter {
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
}

/// Runs one batch of an aggregating query: merges the batch's partial
/// aggregates into the stored state, closes the windows `watermark` has
/// passed (evicting their state) and returns the rows `mode` emits, after
/// the rest of the plan.
pub(crate) async fn run_batch(
    ctx: &SessionContext,
    plan: &Arc<dyn ExecutionPlan>,
    agg: &Aggregation,
    policy: Policy,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
) -> Result<Vec<RecordBatch>, SqlError> {
    if let Some(bounds) = agg.window.and_then(|w| w.session) {
        return super::session::run_batch(ctx, plan, agg, bounds, policy.watermark, cx, cf).await;
    }
    let columns = partial_columns(ctx, agg).await?;
    merge_batch(ctx, plan, agg, policy, cx, cf, columns).await
}

/// [`run_batch`] from partial aggregates already computed (`columns`:
/// group columns, then states; a group may have several rows).
pub(crate) async fn merge_batch(
    ctx: &SessionContext,
    plan: &Arc<dyn ExecutionPlan>,
    agg: &Aggregation,
    policy: Policy,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    columns: Vec<ArrayRef>,
) -> Result<Vec<RecordBatch>, SqlError> {
    let Policy {
        mode,
        watermark,
        ttl,
    } = policy;
    let codec = Codec::new(agg, ttl)?;
    let now = cx.batch_time_ms;
    let groups = codec.groups;
    let db = cx.checkpoint.db();
    let n = columns.first().map_or(0, |c| c.len());
    let rows = codec.keys.convert_columns(&columns[..groups])?;
    // Partitions of the partial phase may each have a row for a group:
    // number the distinct groups, keeping each one's first row.
    let partial_rows = n;
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
    let first_row = datafusion::arrow::array::UInt32Array::from(first_row);
    let group_columns: Vec<ArrayRef> = columns[..groups]
        .iter()
        .map(|c| datafusion::arrow::compute::take(c.as_ref(), &first_row, None))
        .collect::<Result<_, _>>()?;
    let rows = codec.keys.convert_columns(&group_columns)?;
    // Window end per group (windowed aggregations).
    let ends: Option<Vec<i64>> = match agg.window {
        None => None,
        Some(w) => {
            let as_ms = datafusion::arrow::compute::cast(
                &group_columns[w.column],
                &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
            )?;
            let as_ms = as_ms
                .as_any()
                .downcast_ref::<datafusion::arrow::array::TimestampMillisecondArray>()
                .ok_or_else(|| SqlError::Plan {
                    line: 0,
                    message: "window column is not a timestamp".into(),
                })?;
            Some(
                (0..n)
                    .map(|i| as_ms.value(i).saturating_add(w.to_end_ms))
                    .collect(),
            )
        }
    };
    let key_list: Vec<Vec<u8>> = (0..n)
        .map(|i| {
            let group: &[u8] = if groups == 0 { &[] } else { rows.row(i).data() };
            let mut key = Vec::with_capacity(9 + group.len());
            key.push(GROUP_TAG);
            if let Some(ends) = &ends {
                key.extend_from_slice(&end_bytes(ends[i]));
            }
            key.extend_from_slice(group);
            key
        })
        .collect();

    let mut old_indices: Vec<usize> = Vec::new();
    let mut old_bytes: Vec<Vec<u8>> = Vec::new();
    let mut existed = vec![false; n];
    // With a TTL: each existing group's last update (its index entry).
    let mut last_update: Vec<Option<i64>> = vec![None; n];
    for (i, found) in db
        .batched_multi_get_cf(cf, &key_list, false)
        .into_iter()
        .enumerate()
    {
        if let Some(bytes) = found? {
            if codec.value_skip == 8 && bytes.len() >= 8 {
                let updated = time_from_bytes(&bytes);
                last_update[i] = Some(updated);
                if ttl.is_some_and(|ttl| updated <= now - ttl) {
                    // Expired but not yet swept: the group starts afresh.
                    continue;
                }
            }
            old_indices.push(i);
            old_bytes.push(bytes[codec.value_skip.min(bytes.len())..].to_vec());
            existed[i] = true;
        }
    }
    let parser = codec.states.parser();
    let old_states = if old_bytes.is_empty() {
        Vec::new()
    } else {
        codec
            .states
            .convert_rows(old_bytes.iter().map(|b| parser.parse(b)))?
    };
    let mut group_indices: Vec<usize> = group_of;
    group_indices.extend(&old_indices);

    let merged_states = merge_states(agg, &columns, &old_states, &group_indices, n)?;
    let values = evaluate(agg, &merged_states, n)?;
    let closed = |i: usize| match (&ends, watermark) {
        (Some(ends), Some(w)) => ends[i] <= w,
        _ => false,
    };
    let state_rows = codec.states.convert_columns(&merged_states)?;
    cx.write(|w| {
        for (i, key) in key_list.iter().enumerate() {
            if closed(i) {
                // Finalized in this batch: nothing more can arrive.
                if existed[i] {
                    w.delete_cf(cf, key);
                }
            } else {
                // No aggregate functions (DISTINCT): the key is the state.
                let state: &[u8] = if merged_states.is_empty() {
                    &[]
                } else {
                    state_rows.row(i).data()
                };
                if ttl.is_some() {
                    let mut value = end_bytes(now).to_vec();
                    value.extend_from_slice(state);
                    w.put_cf(cf, key, value);
                    if let Some(old) = last_update[i] {
                        w.delete_cf(cf, ttl_key(old, key));
                    }
                    w.put_cf(cf, ttl_key(now, key), []);
                } else {
                    w.put_cf(cf, key, state);
                }
            }
        }
    });

    // Rows of this batch's groups that the mode emits.
    // Without aggregate functions (`SELECT DISTINCT`, a bare GROUP BY) a
    // group never changes once seen: update mode emits it only the first
    // time, which deduplicates.
    let distinct = agg.partial.aggr_expr().is_empty();
    let emit_now: Vec<u32> = (0..n)
        .filter(|&i| match mode {
            OutputMode::Update if distinct => !existed[i],
            OutputMode::Update | OutputMode::Complete => true,
            OutputMode::Append => closed(i),
        })
        .map(|i| i as u32)
        .collect();
    let mut out_columns: Vec<ArrayRef> = group_columns;
    out_columns.extend(values);
    let indices = datafusion::arrow::array::UInt32Array::from(emit_now);
    let mut parts: Vec<Vec<ArrayRef>> = vec![
        out_columns
            .iter()
            .map(|c| datafusion::arrow::compute::take(c.as_ref(), &indices, None))
            .collect::<Result<_, _>>()?,
    ];

    // Stored groups this batch did not touch: closed windows (evicted;
    // emitted in append mode) and, in complete mode, everything.
    let touched: hashbrown::HashSet<Vec<u8>> = key_list.into_iter().collect();
    let group_start = [GROUP_TAG];
    let group_end = [GROUP_TAG + 1];
    if let (Some(_), Some(w)) = (&agg.window, watermark)
        && mode != OutputMode::Complete
    {
        let mut until = vec![GROUP_TAG];
        until.extend_from_slice(&end_bytes(w.saturating_add(1)));
        let finished = scan(db, cf, &group_start, &until, &touched)?;
        cx.write(|b| finished.iter().for_each(|(k, _)| b.delete_cf(cf, k)));
        if mode == OutputMode::Append && !finished.is_empty() {
            parts.push(codec.decode(agg, &finished)?);
        }
    }
    if let Some(ttl) = ttl {
        // Groups not updated for the TTL (batch time) are forgotten, as
        // Flink's state TTL: a later row starts them afresh.
        let mut until = vec![TTL_TAG];
        until.extend_from_slice(&end_bytes(now.saturating_sub(ttl).saturating_add(1)));
        let expired = scan(db, cf, &[TTL_TAG], &until, &hashbrown::HashSet::new())?;
        cx.write(|b| {
            for (index, _) in &expired {
                let key = &index[9..];
                if !touched.contains(key) {
                    b.delete_cf(cf, index);
                    b.delete_cf(cf, key);
                }
            }
        });
        cx.count(
            "expired groups",
            expired
                .iter()
                .filter(|(index, _)| !touched.contains(&index[9..]))
                .count() as u64,
        );
    }
    if mode == OutputMode::Complete {
        let all = scan(db, cf, &group_start, &group_end, &touched)?;
        if !all.is_empty() {
            parts.push(codec.decode(agg, &all)?);
        }
    }
    run_rest(ctx, plan, agg, parts).await
}

/// The partial phase over the batch's rows, as one set of columns
/// (group columns, then the accumulators' states).
pub(crate) async fn partial_columns(
    ctx: &SessionContext,
    agg: &Aggregation,
) -> Result<Vec<ArrayRef>, SqlError> {
    let partial: Arc<dyn ExecutionPlan> = agg.partial.clone();
    let batches = collect(partial.clone(), ctx.task_ctx()).await?;
    let schema = partial.schema();
    Ok((0..schema.fields().len())
        .map(|i| {
            let parts: Vec<&dyn datafusion::arrow::array::Array> =
                batches.iter().map(|b| b.column(i).as_ref()).collect();
            if parts.is_empty() {
                Ok(datafusion::arrow::array::new_empty_array(
                    schema.field(i).data_type(),
                ))
            } else {
                concat(&parts)
            }
        })
        .collect::<Result<_, _>>()?)
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
