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
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::{EmitTo, GroupsAccumulator};
use datafusion::physical_expr::GroupsAccumulatorAdapter;
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use rocksdb::ColumnFamily;

use super::SqlError;
use crate::plan::BatchCx;

/// The aggregation found in a plan.
pub(crate) struct Aggregation {
    /// The node whose output is replaced by the merged values.
    top: Arc<dyn ExecutionPlan>,
    /// Its partial phase over the batch's rows.
    partial: Arc<AggregateExec>,
}

fn is_passthrough(plan: &dyn ExecutionPlan) -> bool {
    matches!(
        plan.name(),
        "RepartitionExec" | "CoalescePartitionsExec" | "CoalesceBatchesExec"
    )
}

/// Finds the single aggregation of `plan` and refuses what cannot run
/// incrementally. `None`: a stateless query.
pub(crate) fn analyze(plan: &Arc<dyn ExecutionPlan>) -> Result<Option<Aggregation>, String> {
    let mut found: Option<Aggregation> = None;
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
                    return Err("OVER (…) window functions are not incremental yet".into());
                }
                _ => {}
            }
        }
        if let Some(agg) = node.downcast_ref::<AggregateExec>() {
            if below_aggregate {
                return Err("nested aggregations (e.g. COUNT(DISTINCT …)) are not incremental yet: use approx_distinct(…)".into());
            }
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
            found = Some(Aggregation {
                top: node.clone(),
                partial: Arc::new(partial),
            });
            for child in node.children() {
                stack.push((child.clone(), true));
            }
            continue;
        }
        for child in node.children() {
            stack.push((child.clone(), below_aggregate));
        }
    }
    Ok(found)
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

fn accumulator(expr: &Arc<AggregateFunctionExpr>) -> Result<Box<dyn GroupsAccumulator>, SqlError> {
    if expr.groups_accumulator_supported() {
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

/// Runs one batch of an aggregating query; returns the rows of the groups
/// that changed, after the rest of the plan.
pub(crate) async fn run_batch(
    ctx: &SessionContext,
    plan: &Arc<dyn ExecutionPlan>,
    agg: &Aggregation,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
) -> Result<Vec<RecordBatch>, SqlError> {
    let partial: Arc<dyn ExecutionPlan> = agg.partial.clone();
    let batches = collect(partial.clone(), ctx.task_ctx()).await?;
    let schema = partial.schema();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    if rows == 0 {
        return Ok(Vec::new());
    }
    let columns: Vec<ArrayRef> = (0..schema.fields().len())
        .map(|i| {
            let parts: Vec<&dyn datafusion::arrow::array::Array> =
                batches.iter().map(|b| b.column(i).as_ref()).collect();
            concat(&parts)
        })
        .collect::<Result<_, _>>()?;
    let groups = agg.partial.group_expr().expr().len();
    let key_fields: Vec<SortField> = (0..groups)
        .map(|i| SortField::new(schema.field(i).data_type().clone()))
        .collect();
    let state_fields: Vec<SortField> = (groups..schema.fields().len())
        .map(|i| SortField::new(schema.field(i).data_type().clone()))
        .collect();
    let key_converter = RowConverter::new(key_fields)?;
    let state_converter = RowConverter::new(state_fields)?;
    let keys = key_converter.convert_columns(&columns[..groups])?;

    // The partial phase ran over one partition: one row per group.
    let n = rows;
    let db = cx.checkpoint.db();
    let mut old_indices: Vec<usize> = Vec::new();
    let mut old_bytes: Vec<Vec<u8>> = Vec::new();
    let key_list: Vec<Vec<u8>> = (0..n).map(|i| keys.row(i).as_ref().to_vec()).collect();
    for (i, found) in db
        .batched_multi_get_cf(cf, &key_list, false)
        .into_iter()
        .enumerate()
    {
        if let Some(bytes) = found? {
            old_indices.push(i);
            old_bytes.push(bytes.to_vec());
        }
    }
    let parser = state_converter.parser();
    let old_states = if old_bytes.is_empty() {
        Vec::new()
    } else {
        state_converter.convert_rows(old_bytes.iter().map(|b| parser.parse(b)))?
    };
    let mut group_indices: Vec<usize> = (0..n).collect();
    group_indices.extend(&old_indices);

    let mut merged_states: Vec<ArrayRef> = Vec::new();
    let mut values: Vec<ArrayRef> = Vec::new();
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
        let mut acc = accumulator(expr)?;
        acc.merge_batch(&inputs, &group_indices, n)?;
        let state = acc.state(EmitTo::All)?;
        let mut final_acc = accumulator(expr)?;
        let identity: Vec<usize> = (0..n).collect();
        final_acc.merge_batch(&state, &identity, n)?;
        values.push(final_acc.evaluate(EmitTo::All)?);
        merged_states.extend(state);
        col += width;
    }
    let state_rows = state_converter.convert_columns(&merged_states)?;
    cx.write(|w| {
        for (i, key) in key_list.iter().enumerate() {
            w.put_cf(cf, key, state_rows.row(i).as_ref());
        }
    });

    // The aggregate's output for the changed groups, then the rest of the plan.
    let top_schema: SchemaRef = agg.top.schema();
    let mut out_columns: Vec<ArrayRef> = columns[..groups].to_vec();
    out_columns.extend(values);
    let merged = RecordBatch::try_new(top_schema.clone(), out_columns)?;
    let source: Arc<dyn ExecutionPlan> =
        MemorySourceConfig::try_new_exec(&[vec![merged]], top_schema, None)?;
    let rest = replace(plan.clone(), &agg.top, &source)?;
    let out = collect(rest, ctx.task_ctx()).await?;
    Ok(out)
}
