//! A top-N over an aggregation's groups (Flink's Top-N over a GROUP BY):
//! `SELECT * FROM (SELECT category, item, n, ROW_NUMBER() OVER (PARTITION
//! BY category ORDER BY n DESC) AS rn FROM (SELECT category, item,
//! count(*) AS n … GROUP BY category, item)) WHERE rn <= 3`.
//!
//! The groups' values change from batch to batch, so a group can rise
//! into its partition's top N, fall out of it, or leave the partition:
//! the ranking keeps every group's row in its partition's order (`0x10` +
//! partition + sort key + group → row; `0x11` + group → where its row is;
//! Arrow's row format throughout, so byte order is the ORDER BY's). A
//! batch merges the aggregation as in update mode, moves the changed
//! groups' rows, and compares each touched partition's first N rows before
//! and after: the ranks whose row changed go through the rest of the
//! query, and the rows that left the output are deleted by the sink's key.
//! Ties rank by the group's key.
//!
//! This module owns the ranking's state and the comparison; the
//! aggregation's merge is [`crate::incremental`]'s.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
use datafusion::physical_plan::{ExecutionPlan, WindowExpr, collect};
use datafusion::prelude::SessionContext;
use rocksdb::ColumnFamily;
use sluice_engine::plan::BatchCx;

use crate::aggregation::Aggregation;
use crate::error::SqlError;
use crate::incremental::{self, Policy, replace};
use crate::sinks::Changelog;
use crate::state_keys;
use crate::topn::TopN;

/// The OVER window of a plan: the first from the top.
pub(crate) fn window_of(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    if plan.downcast_ref::<BoundedWindowAggExec>().is_some()
        || plan.downcast_ref::<WindowAggExec>().is_some()
    {
        return Some(plan.clone());
    }
    plan.children().into_iter().find_map(window_of)
}

/// The functions an OVER window node computes (none for another node).
pub(crate) fn window_exprs(window: &Arc<dyn ExecutionPlan>) -> Vec<Arc<dyn WindowExpr>> {
    if let Some(w) = window.downcast_ref::<BoundedWindowAggExec>() {
        w.window_expr().to_vec()
    } else if let Some(w) = window.downcast_ref::<WindowAggExec>() {
        w.window_expr().to_vec()
    } else {
        Vec::new()
    }
}

/// Where column `column` of `root`'s output is, unchanged, in `node`'s
/// output (`root` under `node`, through projections, filters, sorts and
/// repartitions).
fn passed_through(
    node: &Arc<dyn ExecutionPlan>,
    root: &Arc<dyn ExecutionPlan>,
    column: usize,
) -> Option<usize> {
    if Arc::ptr_eq(node, root) {
        return Some(column);
    }
    let [child] = node.children()[..] else {
        return None;
    };
    let below = passed_through(child, root, column)?;
    if let Some(p) = node.downcast_ref::<ProjectionExec>() {
        return p.expr().iter().position(|e| {
            e.expr
                .downcast_ref::<datafusion::physical_plan::expressions::Column>()
                .is_some_and(|c| c.index() == below)
        });
    }
    if let Some(f) = node.downcast_ref::<datafusion::physical_plan::filter::FilterExec>() {
        return match f.projection() {
            Some(kept) => kept.iter().position(|c| *c == below),
            None => Some(below),
        };
    }
    match node.name() {
        "RepartitionExec"
        | "CoalescePartitionsExec"
        | "CoalesceBatchesExec"
        | "SortExec"
        | "SortPreservingMergeExec" => Some(below),
        _ => None,
    }
}

/// Why a top-N cannot rank `agg`'s groups as planned (`plan` the whole
/// query), if it cannot: every group column must reach the ranked rows
/// unchanged (they identify a row across batches).
pub(crate) fn refusal(plan: &Arc<dyn ExecutionPlan>, agg: &Aggregation) -> Option<String> {
    let window = window_of(plan)?;
    let input = window.children()[0].clone();
    let groups = agg.partial().group_expr().expr().len();
    (0..groups)
        .find(|&g| passed_through(&input, agg.top(), g).is_none())
        .map(|g| {
            format!(
                "a top-N over an aggregation identifies each ranked row by its group: select every GROUP BY column unchanged in the subquery ROW_NUMBER() ranks (group column {} is not)",
                agg.top().schema().field(g).name()
            )
        })
}

/// A group's row moving in its partition's order.
struct Move {
    group: Vec<u8>,
    /// Where it was: its partition's prefix and key.
    from: Option<(Vec<u8>, Vec<u8>)>,
    /// Where it goes, and the row; none when the group's new row is
    /// filtered out before the ranking.
    to: Option<(Vec<u8>, Vec<u8>, Vec<u8>)>,
}

/// One batch of a top-N over `agg`'s groups: merges the partial
/// aggregates `columns` into the groups, moves the changed groups' rows in
/// the ranking, and returns the changed ranks through the rest of `plan`
/// (and, as deletes, the rows that left the output).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    ctx: &SessionContext,
    plan: &Arc<dyn ExecutionPlan>,
    agg: &Aggregation,
    policy: Policy,
    top: &TopN,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    columns: Vec<ArrayRef>,
) -> Result<Changelog, SqlError> {
    let lost = |what: &str| SqlError::State {
        message: format!("the top-N over an aggregation lost {what} between batches"),
    };
    let changes = incremental::merge_changes(agg, policy, cx, cf, columns)?;
    let window = window_of(plan).ok_or_else(|| lost("its ROW_NUMBER()"))?;
    let input = window.children()[0].clone();
    let top_schema = agg.top().schema();
    // The changed groups' rows as the window ranks them, new and previous.
    let ranked_input = |columns: Vec<ArrayRef>| {
        let input = input.clone();
        let top_schema = top_schema.clone();
        async move {
            let batch = RecordBatch::try_new(top_schema.clone(), columns)?;
            if batch.num_rows() == 0 {
                return Ok::<_, SqlError>(RecordBatch::new_empty(input.schema()));
            }
            let source: Arc<dyn ExecutionPlan> =
                MemorySourceConfig::try_new_exec(&[vec![batch]], top_schema, None)?;
            let run = replace(input.clone(), agg.top(), &source)?;
            let out = collect(run, ctx.task_ctx()).await?;
            Ok(concat_batches(&input.schema(), &out)?)
        }
    };
    let added = ranked_input(changes.added).await?;
    let retracted = ranked_input(changes.retracted).await?;
    let groups = agg.partial().group_expr().expr().len();
    let group_columns: Vec<usize> = (0..groups)
        .map(|g| passed_through(&input, agg.top(), g).ok_or_else(|| lost("a group column")))
        .collect::<Result<_, _>>()?;
    let exprs = window_exprs(&window);
    let function = exprs.first().ok_or_else(|| lost("its ROW_NUMBER()"))?;
    let schema = input.schema();
    let row_codec = RowConverter::new(
        schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?;
    let group_codec = RowConverter::new(
        group_columns
            .iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect(),
    )?;
    // Each row's group, partition prefix and place in it.
    struct Keyed {
        group: Vec<u8>,
        prefix: Vec<u8>,
        key: Vec<u8>,
        row: Vec<u8>,
    }
    let keyed = |batch: &RecordBatch| -> Result<Vec<Keyed>, SqlError> {
        if batch.num_rows() == 0 {
            return Ok(Vec::new());
        }
        let n = batch.num_rows();
        let partition: Vec<ArrayRef> = function
            .partition_by()
            .iter()
            .map(|e| Ok(e.evaluate(batch)?.into_array(n)?))
            .collect::<Result<_, SqlError>>()?;
        let order: Vec<ArrayRef> = function
            .order_by()
            .iter()
            .map(|s| Ok(s.expr.evaluate(batch)?.into_array(n)?))
            .collect::<Result<_, SqlError>>()?;
        let partition_rows = crate::over::partition_rows(&partition)?;
        let order_rows = RowConverter::new(
            order
                .iter()
                .zip(function.order_by().iter())
                .map(|(a, s)| SortField::new_with_options(a.data_type().clone(), s.options))
                .collect(),
        )?
        .convert_columns(&order)?;
        let group: Vec<ArrayRef> = group_columns
            .iter()
            .map(|&i| batch.column(i).clone())
            .collect();
        let group_rows = group_codec.convert_columns(&group)?;
        let full = row_codec.convert_columns(batch.columns())?;
        Ok((0..n)
            .map(|i| {
                let prefix =
                    state_keys::ranked_prefix(crate::over::partition_of(&partition_rows, i));
                let group = group_rows.row(i).data().to_vec();
                let key = state_keys::over_row_key(&prefix, order_rows.row(i).data(), &group);
                Keyed {
                    group,
                    prefix,
                    key,
                    row: full.row(i).data().to_vec(),
                }
            })
            .collect())
    };
    let added = keyed(&added)?;
    let retracted = keyed(&retracted)?;
    // Every changed group (its new row, if it passes) and where it was.
    let mut moves: BTreeMap<Vec<u8>, Move> = BTreeMap::new();
    for r in retracted {
        moves.entry(r.group.clone()).or_insert(Move {
            group: r.group,
            from: None,
            to: None,
        });
    }
    for r in added {
        moves.insert(
            r.group.clone(),
            Move {
                group: r.group,
                from: None,
                to: Some((r.prefix, r.key, r.row)),
            },
        );
    }
    if moves.is_empty() {
        return Ok(Changelog::default());
    }
    let db = cx.checkpoint.db();
    let index_keys: Vec<Vec<u8>> = moves
        .keys()
        .map(|g| state_keys::ranked_group_key(g))
        .collect();
    for (m, stored) in moves
        .values_mut()
        .zip(db.batched_multi_get_cf(cf, &index_keys, true))
    {
        if let Some(value) = stored? {
            m.from =
                Some(state_keys::over_slot_target(&value).ok_or_else(|| lost("a group's place"))?);
        }
    }
    // Per touched partition: the rows leaving it and those entering.
    #[derive(Default)]
    struct Touched {
        removed: BTreeSet<Vec<u8>>,
        inserted: BTreeMap<Vec<u8>, Vec<u8>>,
    }
    let mut touched: BTreeMap<Vec<u8>, Touched> = BTreeMap::new();
    for m in moves.values() {
        if let Some((prefix, key)) = &m.from {
            touched
                .entry(prefix.clone())
                .or_default()
                .removed
                .insert(key.clone());
        }
        if let Some((prefix, key, row)) = &m.to {
            touched
                .entry(prefix.clone())
                .or_default()
                .inserted
                .insert(key.clone(), row.clone());
        }
    }
    let n = top.n as usize;
    // (row, rank) of the ranks whose row changed, after and before.
    let mut after: Vec<(Vec<u8>, u64)> = Vec::new();
    let mut before: Vec<(Vec<u8>, u64)> = Vec::new();
    {
        let mut it = db.raw_iterator_cf(cf);
        for (prefix, t) in &touched {
            // The partition's first rows as stored: enough for its old
            // top N and for N of them that stay.
            let mut stored: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut staying = 0;
            it.seek(prefix);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if !k.starts_with(prefix) || (stored.len() >= n && staying >= n) {
                    break;
                }
                if !t.removed.contains(k) {
                    staying += 1;
                }
                stored.push((k.to_vec(), v.to_vec()));
                it.next();
            }
            it.status()?;
            let old: Vec<&(Vec<u8>, Vec<u8>)> = stored.iter().take(n).collect();
            let mut new: BTreeMap<&[u8], &[u8]> = stored
                .iter()
                .filter(|(k, _)| !t.removed.contains(k))
                .map(|(k, v)| (k.as_slice(), v.as_slice()))
                .collect();
            new.extend(t.inserted.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            let new: Vec<(&[u8], &[u8])> = new.into_iter().take(n).collect();
            for rank in 0..n {
                let was = old.get(rank).map(|(k, v)| (k.as_slice(), v.as_slice()));
                let is = new.get(rank).copied();
                if was == is {
                    continue;
                }
                if let Some((_, row)) = is {
                    after.push((row.to_vec(), rank as u64 + 1));
                }
                if let Some((_, row)) = was {
                    before.push((row.to_vec(), rank as u64 + 1));
                }
            }
        }
    }
    cx.write(|w| {
        for m in moves.values() {
            if let Some((_, key)) = &m.from {
                w.delete_cf(cf, key);
            }
        }
        for m in moves.values() {
            let index = state_keys::ranked_group_key(&m.group);
            match &m.to {
                Some((prefix, key, row)) => {
                    w.put_cf(cf, key, row);
                    w.put_cf(cf, index, state_keys::over_slot_value(prefix.len(), key));
                }
                None => w.delete_cf(cf, index),
            }
        }
    });
    // The ranks through the rest of the query, in place of the window.
    let rest = |ranked: Vec<(Vec<u8>, u64)>| {
        let window = window.clone();
        let row_codec = &row_codec;
        async move {
            if ranked.is_empty() {
                return Ok::<_, SqlError>(Vec::new());
            }
            let parser = row_codec.parser();
            let mut columns =
                row_codec.convert_rows(ranked.iter().map(|(r, _)| parser.parse(r)))?;
            columns.push(Arc::new(UInt64Array::from_iter_values(
                ranked.iter().map(|(_, rank)| *rank),
            )));
            let batch = RecordBatch::try_new(window.schema(), columns)?;
            let source: Arc<dyn ExecutionPlan> =
                MemorySourceConfig::try_new_exec(&[vec![batch]], window.schema(), None)?;
            Ok(collect(replace(plan.clone(), &window, &source)?, ctx.task_ctx()).await?)
        }
    };
    let upserts = rest(after).await?;
    let previous = rest(before).await?;
    let deletes = crate::sinks::gone(&previous, &upserts, &top.delete_key)?;
    Ok(Changelog { upserts, deletes })
}
