//! An aggregation over an updating aggregation (Nexmark q4: the average
//! per category of each auction's highest bid). The inner aggregation's
//! groups change from batch to batch; each changed group's previous row is
//! taken back from its outer group and its new row added, as Flink's
//! retractions (-U/+U) do.
//!
//! Aggregates whose state is a sum of its rows' contributions (`count`,
//! `sum`, `avg`) take a row back by arithmetic: the outer state of a group
//! is stored + added − retracted, column by column. Each outer group also
//! counts its rows, and every `sum` the values it took, so a sum that has
//! lost all its values is NULL again, not 0. A `min` or `max` cannot: it
//! keeps every value its group holds, with how many rows have it, and
//! reads the smallest or largest left.
//!
//! When the plan between the two aggregations only projects and the
//! outer one groups only by what the inner one groups by, an inner group's
//! row stays in one outer group for its whole life and no outer group
//! empties. Otherwise (a filter between them, an outer group taken from
//! the inner aggregates) a group can lose its last row: it is then
//! deleted, and the query needs a sink that takes deletes by a key the
//! outer group decides (checked at submission, see [`deletes_refusal`]).
//!
//! This module plans nothing and chooses no output mode; it runs the
//! outer aggregation of a batch and stages its state in the batch's
//! commit.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, PrimitiveArray, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat, take};
use datafusion::arrow::datatypes::{
    ArrowNativeTypeOp, DataType, Decimal128Type, Float64Type, Int64Type, UInt64Type,
};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::ScalarValue;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::functions_aggregate::count::count_udaf;
use datafusion::physical_expr::aggregate::{AggregateExprBuilder, AggregateFunctionExpr};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr, collect};
use datafusion::prelude::SessionContext;
use rocksdb::ColumnFamily;
use sluice_engine::plan::BatchCx;

use crate::aggregation::Aggregation;
use crate::error::SqlError;
use crate::incremental::{self, evaluate};
use crate::sinks::Changelog;
use crate::state_keys::{extreme_prefix, le_u64, outer_group_key};

/// An aggregate's `FILTER (WHERE …)`.
type Filter = Option<Arc<dyn PhysicalExpr>>;

/// How an outer aggregate takes a row back.
#[derive(Debug, Clone, Copy)]
enum Linear {
    /// Its state is the count.
    Count,
    /// A sum: the column (among the counting phase's states) that counts
    /// the values it took.
    Sum { values: usize },
    /// Its first state column is the count of values.
    Avg,
    /// `min` or `max`: every value the group holds is kept with how many
    /// of its rows have it (see [`extremes`]); the state is recomputed.
    Extreme { max: bool },
}

/// The outer aggregation of an aggregation over an updating one.
pub(crate) struct Outer {
    /// The outer aggregation as found in the plan.
    pub agg: Aggregation,
    /// Its partial phase with, appended, a count of values per `sum` and
    /// a count of rows: what each outer group stores.
    counting: Arc<AggregateExec>,
    linear: Vec<Linear>,
    /// Why an outer group can lose all its rows (a filter between the two
    /// aggregations, or an outer group taken from the inner aggregates):
    /// then the query deletes rows, which its sink must take.
    pub may_empty: Option<String>,
}

impl Outer {
    /// The outer aggregation `outer` over `inner`, or why it cannot take
    /// back the inner groups' previous rows.
    pub(crate) fn of(outer: Aggregation, inner: &Aggregation) -> Result<Outer, String> {
        let partial = outer.partial().clone();
        let mut linear = Vec::new();
        // Counts appended to the outer partial phase, with their filters.
        let mut extra: Vec<(Arc<AggregateFunctionExpr>, Filter)> = Vec::new();
        let input_schema = partial.input().schema();
        let states = partial.aggr_expr().iter().try_fold(0, |n, e| {
            e.state_fields()
                .map(|f| n + f.len())
                .map_err(|e| e.to_string())
        })?;
        for (i, expr) in partial.aggr_expr().iter().enumerate() {
            let name = expr.fun().name().to_ascii_lowercase();
            if expr.is_distinct() {
                return Err(format!(
                    "{}: a DISTINCT aggregate over an updating aggregation cannot take a changed row back (not yet): aggregate the distinct values first",
                    expr.name()
                ));
            }
            linear.push(match name.as_str() {
                "count" => Linear::Count,
                "avg" | "mean" => Linear::Avg,
                "min" | "max" if expr.expressions().len() == 1 => {
                    linear.push(Linear::Extreme { max: name == "max" });
                    continue;
                }
                "sum" => {
                    let counted = AggregateExprBuilder::new(count_udaf(), expr.expressions())
                        .schema(input_schema.clone())
                        .alias(format!("__values_{i}"))
                        .build()
                        .map_err(|e| e.to_string())?;
                    extra.push((Arc::new(counted), partial.filter_expr()[i].clone()));
                    Linear::Sum {
                        values: states + extra.len() - 1,
                    }
                }
                _ => {
                    return Err(format!(
                        "{}: over an updating aggregation only count, sum, avg, min and max can take a changed row back; {name} cannot (not yet)",
                        expr.name()
                    ));
                }
            });
            for field in expr.state_fields().map_err(|e| e.to_string())? {
                if !matches!(
                    field.data_type(),
                    DataType::Int64
                        | DataType::UInt64
                        | DataType::Float64
                        | DataType::Decimal128(..)
                ) {
                    return Err(format!(
                        "{}: its state of type {} cannot take a row back",
                        expr.name(),
                        field.data_type()
                    ));
                }
            }
        }
        let one: Arc<dyn PhysicalExpr> = Arc::new(Literal::new(ScalarValue::Int64(Some(1))));
        let rows = AggregateExprBuilder::new(count_udaf(), vec![one])
            .schema(input_schema.clone())
            .alias("__rows")
            .build()
            .map_err(|e| e.to_string())?;
        extra.push((Arc::new(rows), None));
        let inner_groups: HashSet<usize> = (0..inner.partial().group_expr().expr().len()).collect();
        let (from_inner_groups, filtered) =
            derived_columns(partial.input(), inner.top(), &inner_groups)?;
        let mut may_empty = filtered.then(|| {
            "a filter between the two aggregations (HAVING, or WHERE over the inner one's rows) can drop a changed row and leave its outer group empty".to_string()
        });
        for (expr, name) in partial.group_expr().expr() {
            if may_empty.is_none() && !references_only(expr, &from_inner_groups) {
                may_empty = Some(format!(
                    "the outer GROUP BY's {name} depends on what the inner aggregation computes: a changed row moves to another outer group and can leave one empty"
                ));
            }
        }
        let mut aggregates = partial.aggr_expr().to_vec();
        let mut filters = partial.filter_expr().to_vec();
        for (e, f) in extra {
            aggregates.push(e);
            filters.push(f);
        }
        let counting = AggregateExec::try_new(
            AggregateMode::Partial,
            partial.group_expr().clone(),
            aggregates,
            filters,
            partial.input().clone(),
            input_schema,
        )
        .map_err(|e| e.to_string())?;
        Ok(Outer {
            agg: outer,
            counting: Arc::new(counting),
            linear,
            may_empty,
        })
    }

    /// The types of an outer group's stored state: the outer aggregates'
    /// states, the sums' value counts, the row count.
    pub(crate) fn stored_types(&self) -> Vec<DataType> {
        let schema = self.counting.schema();
        let groups = self.groups();
        schema.fields()[groups..]
            .iter()
            .map(|f| f.data_type().clone())
            .collect()
    }

    fn groups(&self) -> usize {
        self.counting.group_expr().expr().len()
    }
}

/// The columns of `node`'s output computed from the columns `base` of
/// `root`'s output alone (`root` lies under `node`), and whether a filter
/// lies between them. Only projections, filters and repartitions may: any
/// other operator between two aggregations (or above the outer one, for
/// a query that deletes rows) is refused.
pub(crate) fn derived_columns(
    node: &Arc<dyn ExecutionPlan>,
    root: &Arc<dyn ExecutionPlan>,
    base: &HashSet<usize>,
) -> Result<(HashSet<usize>, bool), String> {
    if Arc::ptr_eq(node, root) {
        return Ok((base.clone(), false));
    }
    let [child] = node.children()[..] else {
        return Err(format!(
            "{} over the aggregation: only projections and filters can lie between an aggregation and the updating one it aggregates",
            node.name()
        ));
    };
    let (below, filtered) = derived_columns(child, root, base)?;
    if let Some(projection) = node.downcast_ref::<ProjectionExec>() {
        let columns = projection
            .expr()
            .iter()
            .enumerate()
            .filter(|(_, p)| references_only(&p.expr, &below))
            .map(|(i, _)| i)
            .collect();
        return Ok((columns, filtered));
    }
    if let Some(filter) = node.downcast_ref::<FilterExec>() {
        let columns = match filter.projection() {
            Some(kept) => kept
                .iter()
                .enumerate()
                .filter(|(_, c)| below.contains(c))
                .map(|(i, _)| i)
                .collect(),
            None => below,
        };
        return Ok((columns, true));
    }
    match node.name() {
        // Sorts keep every row and column (an OVER window's, above a
        // windowed aggregation).
        "RepartitionExec"
        | "CoalescePartitionsExec"
        | "CoalesceBatchesExec"
        | "SortExec"
        | "SortPreservingMergeExec" => Ok((below, filtered)),
        other => Err(format!(
            "{other} over the aggregation: only projections and filters can lie between an aggregation and the updating one it aggregates"
        )),
    }
}

/// Why a query whose outer groups can empty cannot delete their rows
/// through `plan` (the whole query) into a sink keyed by columns `key`:
/// a filter over the outer aggregation would drop the delete, and a key
/// that is not an outer group column would not name the group.
pub(crate) fn deletes_refusal(
    plan: &Arc<dyn ExecutionPlan>,
    outer: &Outer,
    key: &[usize],
) -> Option<String> {
    let groups: HashSet<usize> = (0..outer.groups()).collect();
    let (columns, filtered) = match derived_columns(plan, outer.agg.top(), &groups) {
        Ok(found) => found,
        Err(why) => return Some(why),
    };
    if filtered {
        return Some("a filter over the outer aggregation (HAVING) would also drop the delete of a group left empty: filter where the sink is read".into());
    }
    key.iter().find(|k| !columns.contains(k)).map(|k| format!(
        "the sink's key (output column {}) is not an outer GROUP BY column, so a delete could not name its group: put a GROUP BY column first (a table) or name GROUP BY columns in key = '…' (a topic)",
        k + 1
    ))
}

/// Whether every column `expr` reads is among `allowed`.
fn references_only(expr: &Arc<dyn PhysicalExpr>, allowed: &HashSet<usize>) -> bool {
    if let Some(column) = expr.downcast_ref::<Column>() {
        return allowed.contains(&column.index());
    }
    expr.children()
        .into_iter()
        .all(|child| references_only(child, allowed))
}

/// The inner aggregation's rows of a batch: the changed groups' new rows
/// and, for those that existed, their previous rows (each as the inner
/// aggregation's output columns: groups, then values).
pub(crate) struct Changes {
    pub added: Vec<ArrayRef>,
    pub retracted: Vec<ArrayRef>,
}

/// The outer aggregation's batch: the changed inner rows taken back from
/// and added to their outer groups, the groups' states staged in the
/// batch's commit, and the rest of the plan run over the outer groups
/// that changed.
pub(crate) async fn run(
    ctx: &SessionContext,
    plan: &Arc<dyn ExecutionPlan>,
    inner: &Aggregation,
    outer: &Outer,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    changes: Changes,
) -> Result<Changelog, SqlError> {
    if changes.added.first().is_none_or(|c| c.is_empty())
        && changes.retracted.first().is_none_or(|c| c.is_empty())
    {
        return Ok(Changelog::default());
    }
    let inner_rows = [changes.added.clone(), changes.retracted.clone()];
    let added = counted(ctx, inner, outer, changes.added).await?;
    let retracted = counted(ctx, inner, outer, changes.retracted).await?;
    let groups = outer.groups();
    let schema = outer.counting.schema();
    let keys = RowConverter::new(
        (0..groups)
            .map(|i| SortField::new(schema.field(i).data_type().clone()))
            .collect(),
    )?;
    // The outer groups the batch touches, in first-seen order, and each
    // partial row's group.
    let added_rows = added.first().map_or(0, |c| c.len());
    let mut all_groups: Vec<ArrayRef> = Vec::with_capacity(groups);
    for i in 0..groups {
        all_groups.push(concat(&[added[i].as_ref(), retracted[i].as_ref()])?);
    }
    let encoded = keys.convert_columns(&all_groups)?;
    let total = added_rows + retracted.first().map_or(0, |c| c.len());
    let mut group_of = Vec::with_capacity(total);
    let mut first_row: Vec<u32> = Vec::new();
    let mut state_keys: Vec<Vec<u8>> = Vec::new();
    {
        let mut seen: hashbrown::HashMap<&[u8], usize> = hashbrown::HashMap::new();
        for row in 0..total {
            let key: &[u8] = if groups == 0 {
                &[]
            } else {
                encoded.row(row).data()
            };
            let next = first_row.len();
            let g = *seen.entry(key).or_insert_with(|| {
                first_row.push(row as u32);
                state_keys.push(outer_group_key(key));
                next
            });
            group_of.push(g);
        }
    }
    let n = first_row.len();
    let stored_types = outer.stored_types();
    let states = RowConverter::new(
        stored_types
            .iter()
            .map(|t| SortField::new(t.clone()))
            .collect(),
    )?;
    // The stored states of the groups that have one.
    let mut stored_of = Vec::new();
    let mut stored_bytes = Vec::new();
    let db = cx.checkpoint.db();
    for (g, found) in db
        .batched_multi_get_cf(cf, &state_keys, false)
        .into_iter()
        .enumerate()
    {
        if let Some(bytes) = found? {
            stored_of.push(g);
            stored_bytes.push(bytes.to_vec());
        }
    }
    let parser = states.parser();
    let stored = if stored_bytes.is_empty() {
        Vec::new()
    } else {
        states.convert_rows(stored_bytes.iter().map(|b| parser.parse(b)))?
    };
    let (added_of, retracted_of) = group_of.split_at(added_rows);
    let mut extreme = extremes(ctx, inner, outer, cx, cf, inner_rows, &keys, &state_keys).await?;
    let mut combined = Vec::with_capacity(stored_types.len());
    for (j, data_type) in stored_types.iter().enumerate() {
        if let Some(values) = extreme.remove(&j) {
            combined.push(cast(&values, data_type)?);
            continue;
        }
        let parts = [
            Part::add(stored.get(j), &stored_of),
            Part::add(Some(&added[groups + j]), added_of),
            Part::retract(&retracted[groups + j], retracted_of),
        ];
        combined.push(linear_sum(data_type, &parts, n)?);
    }
    let rows = combined
        .last()
        .ok_or_else(|| SqlError::State {
            message: "an outer group's state has no row count".into(),
        })?
        .as_primitive::<Int64Type>()
        .clone();
    // Stage the states; a group whose rows were all taken back is
    // forgotten.
    let stored_rows = states.convert_columns(&combined)?;
    cx.write(|w| {
        for (g, key) in state_keys.iter().enumerate() {
            if rows.value(g) > 0 {
                w.put_cf(cf, key, stored_rows.row(g).data());
            } else {
                w.delete_cf(cf, key);
            }
        }
    });
    let finals = final_states(outer, &combined, n)?;
    let values = evaluate(&outer.agg, &finals, n)?;
    let first_row = UInt32Array::from(first_row);
    let group_columns = all_groups
        .iter()
        .map(|c| take(c.as_ref(), &first_row, None))
        .collect::<Result<Vec<_>, _>>()?;
    // Groups that kept rows are upserted; those left empty are deleted,
    // with the values of no rows.
    let rows_of = |keep: bool| {
        let picked: UInt32Array = (0..n as u32)
            .filter(|&g| (rows.value(g as usize) > 0) == keep)
            .map(Some)
            .collect();
        group_columns
            .iter()
            .chain(&values)
            .map(|c| take(c.as_ref(), &picked, None))
            .collect::<Result<Vec<_>, _>>()
    };
    let upserts = incremental::run_rest(ctx, plan, &outer.agg, vec![rows_of(true)?]).await?;
    let deletes = incremental::run_rest(ctx, plan, &outer.agg, vec![rows_of(false)?]).await?;
    Ok(Changelog { upserts, deletes })
}

/// Per `min`/`max` aggregate of the outer aggregation (by its state
/// column), the value of each touched outer group (`state_keys`' order;
/// NULL when it holds none). Each keeps, per outer group and value, how
/// many of the group's rows have it (`0x0c` entries); a batch adds and
/// takes back its changed rows' values, stages the new counts and reads
/// each touched group's smallest or largest value left.
#[allow(clippy::too_many_arguments)]
async fn extremes(
    ctx: &SessionContext,
    inner: &Aggregation,
    outer: &Outer,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    inner_rows: [Vec<ArrayRef>; 2],
    keys: &RowConverter,
    state_keys: &[Vec<u8>],
) -> Result<hashbrown::HashMap<usize, ArrayRef>, SqlError> {
    let mut out = hashbrown::HashMap::new();
    if !outer
        .linear
        .iter()
        .any(|l| matches!(l, Linear::Extreme { .. }))
    {
        return Ok(out);
    }
    let partial = outer.agg.partial();
    let input_schema = partial.input().schema();
    // The rows between the two aggregations: added (+1), taken back (−1).
    let mut middle = Vec::with_capacity(2);
    for (rows, sign) in inner_rows.into_iter().zip([1i64, -1]) {
        let plan = over_inner_rows(inner, partial.input(), rows)?;
        middle.push((collect(plan, ctx.task_ctx()).await?, sign));
    }
    let groups = partial.group_expr().expr().len();
    let group_of: hashbrown::HashMap<&[u8], usize> = state_keys
        .iter()
        .enumerate()
        .map(|(g, k)| (&k[1..], g))
        .collect();
    let db = cx.checkpoint.db();
    let mut col = 0;
    for (i, (expr, linear)) in partial.aggr_expr().iter().zip(&outer.linear).enumerate() {
        let width = expr.state_fields()?.len();
        let Linear::Extreme { max } = *linear else {
            col += width;
            continue;
        };
        let id = u16::try_from(i)
            .ok()
            .filter(|i| *i < u16::MAX)
            .ok_or_else(|| SqlError::State {
                message: "more than 65,534 aggregates in one query".into(),
            })?;
        let argument = &expr.expressions()[0];
        let values_type = argument.data_type(&input_schema)?;
        let values = RowConverter::new(vec![SortField::new(values_type.clone())])?;
        // Per value key: its outer group and the change in its count.
        let mut delta: hashbrown::HashMap<Vec<u8>, (usize, i64)> = hashbrown::HashMap::new();
        for (batches, sign) in &middle {
            for batch in batches {
                let n = batch.num_rows();
                let group_columns = partial
                    .group_expr()
                    .expr()
                    .iter()
                    .map(|(e, _)| e.evaluate(batch)?.into_array(n))
                    .collect::<Result<Vec<_>, _>>()?;
                let group_rows = match groups {
                    0 => None,
                    _ => Some(keys.convert_columns(&group_columns)?),
                };
                let column = argument.evaluate(batch)?.into_array(n)?;
                let counted = match &partial.filter_expr()[i] {
                    Some(f) => Some(f.evaluate(batch)?.into_array(n)?),
                    None => None,
                };
                let value_rows = values.convert_columns(std::slice::from_ref(&column))?;
                for row in 0..n {
                    let filtered_out = counted.as_ref().is_some_and(|c| {
                        let c = c.as_boolean();
                        c.is_null(row) || !c.value(row)
                    });
                    if column.is_null(row) || filtered_out {
                        continue;
                    }
                    let group: &[u8] = group_rows.as_ref().map_or(&[], |r| r.row(row).data());
                    let g = *group_of.get(group).ok_or_else(|| SqlError::State {
                        message: "a changed row's outer group was not counted".into(),
                    })?;
                    let mut key = extreme_prefix(group, id);
                    key.extend_from_slice(value_rows.row(row).data());
                    delta.entry(key).or_insert((g, 0)).1 += sign;
                }
            }
        }
        let mut changed: Vec<(Vec<u8>, usize, i64)> = delta
            .into_iter()
            .filter(|(_, (_, d))| *d != 0)
            .map(|(k, (g, d))| (k, g, d))
            .collect();
        changed.sort_unstable();
        let found = db.batched_multi_get_cf(cf, changed.iter().map(|(k, _, _)| k.as_slice()), true);
        // Values gone in this batch, and per group the best value it gained.
        let mut gone: hashbrown::HashSet<&[u8]> = hashbrown::HashSet::new();
        let mut gained: Vec<Option<&[u8]>> = vec![None; state_keys.len()];
        let mut writes = Vec::with_capacity(changed.len());
        for ((key, g, d), found) in changed.iter().zip(found) {
            let before = found?.map_or(0, |v| le_u64(&v) as i64);
            let now = before + d;
            writes.push((key.as_slice(), now));
            if now > 0 {
                let better = gained[*g].is_none_or(|best| (key.as_slice() > best) == max);
                if better {
                    gained[*g] = Some(key.as_slice());
                }
            } else {
                gone.insert(key.as_slice());
            }
        }
        cx.write(|w| {
            for (key, now) in &writes {
                if *now > 0 {
                    w.put_cf(cf, key, now.to_le_bytes());
                } else {
                    w.delete_cf(cf, key);
                }
            }
        });
        // Each group's best stored value still held, against its gains.
        let null_row =
            values.convert_columns(&[datafusion::arrow::array::new_null_array(&values_type, 1)])?;
        let mut best: Vec<Vec<u8>> = Vec::with_capacity(state_keys.len());
        for (g, state_key) in state_keys.iter().enumerate() {
            let prefix = extreme_prefix(&state_key[1..], id);
            let end = extreme_prefix(&state_key[1..], id + 1);
            let stored = best_stored(db, cf, &prefix, &end, max, &gone)?;
            let pick = match (stored, gained[g]) {
                (Some(s), Some(n)) if (n > s.as_slice()) == max => n.to_vec(),
                (Some(s), _) => s,
                (None, Some(n)) => n.to_vec(),
                (None, None) => {
                    best.push(null_row.row(0).data().to_vec());
                    continue;
                }
            };
            best.push(pick[prefix.len()..].to_vec());
        }
        let parser = values.parser();
        let mut column = values.convert_rows(best.iter().map(|b| parser.parse(b)))?;
        out.insert(col, column.remove(0));
        col += width;
    }
    Ok(out)
}

/// The first (`max`: last) key in `[prefix, end)` not among `gone`.
fn best_stored(
    db: &rocksdb::DB,
    cf: &ColumnFamily,
    prefix: &[u8],
    end: &[u8],
    max: bool,
    gone: &hashbrown::HashSet<&[u8]>,
) -> Result<Option<Vec<u8>>, SqlError> {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_lower_bound(prefix.to_vec());
    opts.set_iterate_upper_bound(end.to_vec());
    let mode = if max {
        rocksdb::IteratorMode::End
    } else {
        rocksdb::IteratorMode::Start
    };
    for item in db.iterator_cf_opt(cf, opts, mode) {
        let (key, _) = item?;
        if !gone.contains(key.as_ref()) {
            return Ok(Some(key.to_vec()));
        }
    }
    Ok(None)
}

/// `below` (the plan under the outer aggregation) with the inner
/// aggregation's output replaced by `rows`.
fn over_inner_rows(
    inner: &Aggregation,
    below: &Arc<dyn ExecutionPlan>,
    rows: Vec<ArrayRef>,
) -> Result<Arc<dyn ExecutionPlan>, SqlError> {
    let top_schema = inner.top().schema();
    let batch = if rows.is_empty() {
        RecordBatch::new_empty(top_schema.clone())
    } else {
        RecordBatch::try_new(top_schema.clone(), rows)?
    };
    let source: Arc<dyn ExecutionPlan> =
        MemorySourceConfig::try_new_exec(&[vec![batch]], top_schema, None)?;
    incremental::replace(below.clone(), inner.top(), &source)
}

/// The counting phase over the inner aggregation's `rows`: group columns,
/// then the states, value counts and row count.
async fn counted(
    ctx: &SessionContext,
    inner: &Aggregation,
    outer: &Outer,
    rows: Vec<ArrayRef>,
) -> Result<Vec<ArrayRef>, SqlError> {
    let schema = outer.counting.schema();
    let counting: Arc<dyn ExecutionPlan> = outer.counting.clone();
    let plan = over_inner_rows(inner, &counting, rows)?;
    let batches = collect(plan, ctx.task_ctx()).await?;
    incremental::concat_columns(&schema, &batches)
}

/// One source of a state column's contributions: its rows, each row's
/// group, and whether they are taken back.
struct Part<'a> {
    column: Option<&'a ArrayRef>,
    group_of: &'a [usize],
    negate: bool,
}

impl<'a> Part<'a> {
    fn add(column: Option<&'a ArrayRef>, group_of: &'a [usize]) -> Self {
        Part {
            column,
            group_of,
            negate: false,
        }
    }

    fn retract(column: &'a ArrayRef, group_of: &'a [usize]) -> Self {
        Part {
            column: Some(column),
            group_of,
            negate: true,
        }
    }
}

/// Per group, the sum of its parts' values (taken-back parts subtracted);
/// NULL where no part had a value.
fn linear_sum(data_type: &DataType, parts: &[Part], n: usize) -> Result<ArrayRef, SqlError> {
    Ok(match data_type {
        DataType::Int64 => Arc::new(fold::<Int64Type>(parts, n)),
        DataType::UInt64 => Arc::new(fold::<UInt64Type>(parts, n)),
        DataType::Float64 => Arc::new(fold::<Float64Type>(parts, n)),
        DataType::Decimal128(..) => {
            Arc::new(fold::<Decimal128Type>(parts, n).with_data_type(data_type.clone()))
        }
        other => {
            return Err(SqlError::State {
                message: format!(
                    "an outer aggregate's state of type {other} cannot take a row back"
                ),
            });
        }
    })
}

fn fold<T: ArrowPrimitiveType>(parts: &[Part], n: usize) -> PrimitiveArray<T> {
    let mut sums = vec![T::Native::ZERO; n];
    let mut seen = vec![false; n];
    for part in parts {
        let Some(column) = part.column else { continue };
        let values = column.as_primitive::<T>();
        for (row, &g) in part.group_of.iter().enumerate() {
            if values.is_null(row) {
                continue;
            }
            let v = values.value(row);
            sums[g] = if part.negate {
                sums[g].sub_wrapping(v)
            } else {
                sums[g].add_wrapping(v)
            };
            seen[g] = true;
        }
    }
    sums.into_iter()
        .zip(seen)
        .map(|(s, seen)| seen.then_some(s))
        .collect()
}

/// The outer aggregates' states to evaluate: an aggregate left without
/// values (all taken back) gets NULL states, so its value is NULL as over
/// no rows (a count stays 0).
fn final_states(outer: &Outer, combined: &[ArrayRef], n: usize) -> Result<Vec<ArrayRef>, SqlError> {
    let mut out = Vec::new();
    let mut col = 0;
    for (expr, linear) in outer.agg.partial().aggr_expr().iter().zip(&outer.linear) {
        let width = expr.state_fields()?.len();
        let values_column = match linear {
            Linear::Count | Linear::Extreme { .. } => None,
            Linear::Sum { values } => Some(*values),
            Linear::Avg => Some(col),
        };
        for state in &combined[col..col + width] {
            let Some(values) = values_column else {
                out.push(state.clone());
                continue;
            };
            let counts = &combined[values];
            let none = (0..n).map(|g| Some(count_of(counts, g) > 0));
            let keep: datafusion::arrow::array::BooleanArray = none.collect();
            out.push(datafusion::arrow::compute::nullif(
                state,
                &datafusion::arrow::compute::not(&keep)?,
            )?);
        }
        col += width;
    }
    Ok(out)
}

/// A count column's value for group `g` (Int64 or UInt64; NULL is 0).
fn count_of(counts: &ArrayRef, g: usize) -> i128 {
    if counts.is_null(g) {
        return 0;
    }
    match counts.data_type() {
        DataType::UInt64 => i128::from(counts.as_primitive::<UInt64Type>().value(g)),
        _ => i128::from(counts.as_primitive::<Int64Type>().value(g)),
    }
}
