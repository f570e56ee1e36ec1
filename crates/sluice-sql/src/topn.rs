//! Top-N per group over a stream: `ROW_NUMBER() OVER (PARTITION BY p
//! ORDER BY o) AS rn … WHERE rn <= N` (Flink's Top-N, and with N = 1 its
//! deduplication keeping the first or the last row: Nexmark q18, q19).
//!
//! Each group keeps its N best rows in the query's state, in rank order,
//! each with its sort key (Arrow's row format, so byte order is the ORDER
//! BY's order). A batch runs the query's input (everything under the
//! window) over its new rows with DataFusion, merges each touched group's
//! new rows into its stored ones — a stored row ranks before a new row
//! with the same sort key, and new rows keep their arrival order, so ties
//! rank by arrival as in Flink — and emits only the ranks whose row
//! changed, each with its rank, through the rest of the query (what stands
//! above the window). The result is an update stream keyed by the group
//! and the rank: a sink that keeps the last row per key holds the top N.
//! With the rank left out of the output and N > 1, or a filter over the
//! ranked rows, a row can leave the output: the rows the changed ranks
//! held go through the rest of the query too, and those whose sink key
//! no new row has are deleted (a table's key, a keyed topic's tombstone;
//! a sink that only appends is refused).
//!
//! With a bounded OVER aggregate above the top-N (Nexmark q6), the
//! changed ranks go to [`crate::over`] instead, each identified by its
//! slot (group and rank), and the rest of the query runs above that
//! window.
//!
//! This module owns the pattern's recognition, the state's layout and the
//! merge; the runner hands it the batch's session and commits.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, UInt64Array};
use datafusion::arrow::compute::SortOptions;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::{
    BinaryExpr, Expr, LogicalPlan, LogicalPlanBuilder, Operator, Window, expr::WindowFunction,
    utils::split_conjunction,
};
use datafusion::physical_plan::PhysicalExpr;
use datafusion::prelude::SessionContext;
use rocksdb::ColumnFamily;
use sluice_engine::plan::BatchCx;

use crate::error::SqlError;
use crate::over::{self, Over};
use crate::sinks::Changelog;
use crate::state_keys;

/// A query's top-N, as recognized when it is planned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TopN {
    /// Rows kept per group.
    pub n: u64,
    /// The rank is one of the query's output columns (then the group and
    /// the rank key each output row).
    pub rank_in_output: bool,
    /// The groups' key and the kept rows (ORDER BY and columns), for the
    /// checkpoint's registry.
    pub signature: (String, String),
    /// The sink's `state_ttl`: a group not changed for this long (batch
    /// time) is forgotten.
    pub ttl_ms: Option<i64>,
    /// A bounded OVER aggregate over the ranked rows (each group's rank
    /// one of its rows), recomputed where they change.
    pub over: Option<Over>,
    /// Why the query deletes rows from its sink (a top-N > 1 without its
    /// rank, a filter over the ranked rows), if it does: a ranked row that
    /// leaves the output is deleted by the sink's key.
    pub deletes: Option<String>,
    /// The output columns that key the sink's rows (empty: the whole
    /// row), set when the query is attached to its sink.
    pub delete_key: Vec<usize>,
    /// `RANK()`: rows tied with the N-th by the ORDER BY are kept too
    /// and share its rank (only over a window's rows, emitted when it
    /// closes).
    pub ties: bool,
    /// Partitioned by a window of a window table function (`PARTITION BY
    /// window_start, window_end`): where its end is.
    pub window: Option<RankedWindow>,
    /// Set in append mode (Flink's window Top-N): each window's top rows
    /// are emitted once, when the watermark passes the window's end, and
    /// its groups deleted; nothing is emitted before.
    pub closing: bool,
}

/// The window a window top-N's groups belong to: a column of the
/// window's input (`window_end`, or `window_start` plus the size).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct RankedWindow {
    pub column: usize,
    pub to_end_ms: i64,
}

/// The window column among a top-N's PARTITION BY expressions, by the
/// marks the window table functions put on their columns.
fn ranked_window(window: &Window, function: &WindowFunction) -> Option<RankedWindow> {
    use crate::window::WINDOW_SIZE_META;
    let schema = window.input.schema();
    let mut start = None;
    for e in &function.params.partition_by {
        let Expr::Column(c) = unalias(e) else {
            continue;
        };
        let Ok(column) = schema.index_of_column(c) else {
            continue;
        };
        let field = schema.field(column);
        let meta = field.metadata();
        let role = crate::window::window_role(field);
        match role {
            Some("end") => {
                return Some(RankedWindow {
                    column,
                    to_end_ms: 0,
                });
            }
            Some("start") => {
                start = meta
                    .get(WINDOW_SIZE_META)
                    .and_then(|size| size.parse().ok())
                    .map(|to_end_ms| RankedWindow { column, to_end_ms })
            }
            _ => {}
        }
    }
    start
}

/// Whether a plan uses a window function (`… OVER (…)`).
pub(crate) fn has_window(plan: &LogicalPlan) -> bool {
    matches!(plan, LogicalPlan::Window(_)) || plan.inputs().into_iter().any(has_window)
}

/// The plan's deepest window (one with no window under it).
pub(crate) fn deepest_window(plan: &LogicalPlan) -> Option<&Window> {
    let mut path = Vec::new();
    match (path_to_window(plan, &mut path), path.last()) {
        (true, Some(LogicalPlan::Window(w))) => Some(w),
        _ => None,
    }
}

/// Whether the plan's deepest window ranks an aggregation's rows (not a
/// top-N of a stream's: see [`crate::aggregation`], which runs such
/// windows over each closed window of a windowed aggregation).
pub(crate) fn over_aggregation(plan: &LogicalPlan) -> bool {
    fn aggregates(plan: &LogicalPlan) -> bool {
        matches!(plan, LogicalPlan::Aggregate(_) | LogicalPlan::Distinct(_))
            || plan.inputs().into_iter().any(aggregates)
    }
    let mut path = Vec::new();
    match (path_to_window(plan, &mut path), path.last()) {
        (true, Some(LogicalPlan::Window(w))) => aggregates(&w.input),
        _ => false,
    }
}

/// The nodes from `plan` down to its deepest window (one with no window
/// under it), that window last.
fn path_to_window<'p>(plan: &'p LogicalPlan, path: &mut Vec<&'p LogicalPlan>) -> bool {
    path.push(plan);
    if let LogicalPlan::Window(w) = plan
        && !has_window(&w.input)
    {
        return true;
    }
    for input in plan.inputs() {
        if path_to_window(input, path) {
            return true;
        }
    }
    path.pop();
    false
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

/// Why an OVER window is not incremental, for any shape but top-N.
const ONLY_TOP_N: &str = "OVER windows over an unbounded stream are incremental only as a top-N per group: ROW_NUMBER() OVER (PARTITION BY … ORDER BY …) AS rn in a subquery, filtered by WHERE rn <= N outside it (and, over its rows, aggregates OVER (… ROWS BETWEEN n PRECEDING AND CURRENT ROW))";

/// Recognizes a top-N in an optimized plan: one `ROW_NUMBER()` with an
/// ORDER BY, above it only projections and filters, one of which keeps
/// `rn <= N` (or `rn < N`, `rn = 1`).
pub(crate) fn recognize(plan: &LogicalPlan) -> Result<TopN, String> {
    let mut path = Vec::new();
    if !path_to_window(plan, &mut path) {
        return Err(ONLY_TOP_N.into());
    }
    let Some(LogicalPlan::Window(window)) = path.last() else {
        return Err(ONLY_TOP_N.into());
    };
    let [expr] = window.window_expr.as_slice() else {
        return Err(format!(
            "{ONLY_TOP_N}; this query computes {} window functions in one OVER",
            window.window_expr.len()
        ));
    };
    let Expr::WindowFunction(function) = unalias(expr) else {
        return Err(ONLY_TOP_N.into());
    };
    let ties = match function.fun.name() {
        "row_number" => false,
        "rank" => true,
        other => return Err(format!("{ONLY_TOP_N}; {other}() is not")),
    };
    let ranked_window = ranked_window(window, function);
    if ties && ranked_window.is_none() {
        return Err("RANK() keeps every row tied with the N-th, which only a window's rows can have once and for all: partition by window_start, window_end of a window table function (TUMBLE(…), HOP(…)) and set mode = 'append', or use ROW_NUMBER()".into());
    }
    if function.params.order_by.is_empty() {
        return Err(
            "ROW_NUMBER() without ORDER BY ranks rows in no defined order: add ORDER BY (the column that decides which rows are the top ones)".into(),
        );
    }
    // Names the rank goes by on the way up (aliases).
    let rank_field = window.schema.field(window.schema.fields().len() - 1);
    let mut names = vec![rank_field.name().clone()];
    let mut n = None;
    let mut over = None;
    let mut filters = Vec::new();
    for (at, node) in path.iter().enumerate().rev().skip(1) {
        match node {
            LogicalPlan::Window(above) => {
                over = Some(over::recognize(&path[..at], above)?);
                break;
            }
            LogicalPlan::Projection(p) => {
                let mut next = Vec::new();
                for (e, (_, field)) in p.expr.iter().zip(p.schema.iter()) {
                    if e.column_refs().iter().any(|c| names.contains(&c.name)) {
                        if !matches!(unalias(e), Expr::Column(_)) {
                            return Err(format!(
                                "the rank of a top-N can be selected or filtered, not computed with: {e}"
                            ));
                        }
                        next.push(field.name().clone());
                    }
                }
                names = next;
            }
            LogicalPlan::Filter(f) => {
                for part in split_conjunction(&f.predicate) {
                    match rank_limit(part, &names)? {
                        Some(limit) => n = Some(n.map_or(limit, |m: u64| m.min(limit))),
                        // A ranked row that stops passing is deleted
                        // where its rank was.
                        None => filters.push(part.to_string()),
                    }
                }
            }
            LogicalPlan::SubqueryAlias(_) => {}
            other => {
                return Err(format!(
                    "a top-N's rows change as better ones arrive, and {} over them would need retractions, which are not supported yet: keep only projections and filters above ROW_NUMBER()",
                    other.display()
                ));
            }
        }
    }
    let n = n.ok_or_else(|| {
        "ROW_NUMBER() over an unbounded stream ranks rows forever: keep the top ones with WHERE rn <= N outside the subquery that computes it".to_string()
    })?;
    let rank_in_output = !names.is_empty();
    let deletes = if let Some(part) = filters.first() {
        if over.is_some() {
            return Err(format!(
                "a filter over a top-N's ranked rows ({part}) under an OVER window would leave the rows it stops passing in the window: filter inside the subquery, before ROW_NUMBER()"
            ));
        }
        Some(format!(
            "a filter over a top-N's ranked rows ({part}) drops a ranked row that stops passing"
        ))
    } else if !rank_in_output && n > 1 && over.is_none() {
        Some(format!(
            "a top-{n} without its rank in the output drops the row pushed out of the top {n}"
        ))
    } else {
        None
    };
    let list = |exprs: Vec<String>| format!("({})", exprs.join(","));
    let signature = (
        list(
            function
                .params
                .partition_by
                .iter()
                .map(|e| e.to_string())
                .collect(),
        ),
        format!(
            "{} by {}{}",
            list(
                window
                    .input
                    .schema()
                    .fields()
                    .iter()
                    .map(|f| format!("{} {}", f.name(), f.data_type()))
                    .collect()
            ),
            list(
                function
                    .params
                    .order_by
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            ),
            over.as_ref()
                .map_or_else(String::new, |o| format!(", then {}", o.signature))
        ),
    );
    Ok(TopN {
        n,
        rank_in_output,
        signature,
        ttl_ms: None,
        over,
        deletes,
        delete_key: Vec::new(),
        ties,
        window: ranked_window,
        closing: false,
    })
}

/// The state a top-N keeps, as the checkpoint's registry records it: a
/// job whose groups, order or ranked rows change cannot reuse it.
pub(crate) fn state_meta(operator: &str, top: &TopN) -> sluice_engine::checkpoint::OperatorMeta {
    sluice_engine::checkpoint::OperatorMeta {
        name: operator.to_owned(),
        kind: format!(
            "sql {}top-{}{}",
            if top.closing { "window " } else { "" },
            top.n,
            if top.ties { " with ties" } else { "" }
        ),
        key_type: top.signature.0.clone(),
        state_type: top.signature.1.clone(),
    }
}

/// `rn <= N`, `rn < N`, `rn = 1` (either way round) → N; another
/// condition on the rank is refused.
fn rank_limit(expr: &Expr, names: &[String]) -> Result<Option<u64>, String> {
    let refers = |e: &Expr| e.column_refs().iter().any(|c| names.contains(&c.name));
    if !refers(expr) {
        return Ok(None);
    }
    let bad = || {
        format!(
            "a top-N keeps its rows with rn <= N (or rn < N, rn = 1) on the rank; {expr} is not that"
        )
    };
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = expr else {
        return Err(bad());
    };
    let literal = |e: &Expr| -> Option<i128> {
        match unalias(e) {
            Expr::Literal(v, _) => scalar_int(v),
            Expr::Cast(c) => match unalias(&c.expr) {
                Expr::Literal(v, _) => scalar_int(v),
                _ => None,
            },
            _ => None,
        }
    };
    let is_rank = |e: &Expr| match unalias(e) {
        Expr::Column(c) => names.contains(&c.name),
        Expr::Cast(c) => matches!(unalias(&c.expr), Expr::Column(c) if names.contains(&c.name)),
        _ => false,
    };
    let (op, k) = match (is_rank(left), is_rank(right), literal(left), literal(right)) {
        (true, _, _, Some(k)) => (*op, k),
        (_, true, Some(k), _) => (
            match op {
                Operator::Lt => Operator::Gt,
                Operator::LtEq => Operator::GtEq,
                Operator::Gt => Operator::Lt,
                Operator::GtEq => Operator::LtEq,
                other => *other,
            },
            k,
        ),
        _ => return Err(bad()),
    };
    let n = match op {
        Operator::LtEq => k,
        Operator::Lt => k - 1,
        Operator::Eq if k == 1 => 1,
        _ => return Err(bad()),
    };
    if n < 1 {
        return Err(format!("{expr} keeps no row"));
    }
    Ok(Some(n as u64))
}

fn scalar_int(v: &ScalarValue) -> Option<i128> {
    match v {
        ScalarValue::Int8(Some(x)) => Some(*x as i128),
        ScalarValue::Int16(Some(x)) => Some(*x as i128),
        ScalarValue::Int32(Some(x)) => Some(*x as i128),
        ScalarValue::Int64(Some(x)) => Some(*x as i128),
        ScalarValue::UInt8(Some(x)) => Some(*x as i128),
        ScalarValue::UInt16(Some(x)) => Some(*x as i128),
        ScalarValue::UInt32(Some(x)) => Some(*x as i128),
        ScalarValue::UInt64(Some(x)) => Some(*x as i128),
        _ => None,
    }
}

/// One group's kept rows, best first: (sort key, row), both in Arrow's
/// row format.
type Ranked = Vec<(Vec<u8>, Vec<u8>)>;

/// A row being ranked, borrowed: (sort key, row, where it came from).
type RankedRow<'a> = (&'a [u8], &'a [u8], Origin);

/// A row's place among the batch's input (batch, row), so that it is
/// output by taking it from the batch's columns; `None` for a row stored
/// by an earlier batch, which is decoded from its row format.
type Origin = Option<(u32, u32)>;

/// A ranked row to output: (group, row, rank, origin).
type Emitted<'a> = (&'a [u8], &'a [u8], u64, Origin);

/// A new row that may make its group's top: its sort key, its batch and
/// its place in the batch.
type Candidate<'a> = (&'a [u8], u32, u32);

/// A group's stored value: its last update's batch time, then its rows.
fn encode(updated: i64, ranked: &[RankedRow]) -> Vec<u8> {
    let size: usize = ranked.iter().map(|(k, r, _)| 8 + k.len() + r.len()).sum();
    let mut out = Vec::with_capacity(8 + size);
    out.extend_from_slice(&updated.to_le_bytes());
    for (key, row, _) in ranked {
        for part in [key, row] {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
    }
    out
}

fn decode(bytes: &[u8]) -> Result<(i64, Ranked), SqlError> {
    let mut out = Vec::new();
    let updated = bytes
        .get(..8)
        .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
        .ok_or_else(|| SqlError::State {
            message: "a top-N group's stored value has no update time".into(),
        })?;
    let mut at = 8;
    let take = |at: &mut usize| -> Result<Vec<u8>, SqlError> {
        let len = bytes
            .get(*at..*at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        let part = len.and_then(|len| bytes.get(*at + 4..*at + 4 + len));
        let part = part.ok_or_else(|| SqlError::State {
            message: "a top-N group's stored rows are cut short".into(),
        })?;
        *at += 4 + part.len();
        Ok(part.to_vec())
    };
    while at < bytes.len() {
        let key = take(&mut at)?;
        let row = take(&mut at)?;
        out.push((key, row));
    }
    Ok((updated, out))
}

/// Runs one batch of a top-N query over `session` (the batch's rows):
/// the window's input, the merge into the stored groups (staged in the
/// batch's commit), and the rest of the query over the changed ranks.
pub(crate) async fn run(
    session: &SessionContext,
    sql: &str,
    top: &TopN,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    watermark: Option<i64>,
) -> Result<Changelog, SqlError> {
    let plan = planned(session, sql).await?;
    let rows = input_rows(session, &plan).await?;
    rank(session, &plan, top, cx, cf, rows, watermark).await
}

/// The query's optimized plan over `session`'s tables.
pub(crate) async fn planned(session: &SessionContext, sql: &str) -> Result<LogicalPlan, SqlError> {
    let planned = session.sql(sql).await?;
    Ok(session.state().optimize(planned.logical_plan())?)
}

/// The plan's window, and its ROW_NUMBER().
fn window_of(plan: &LogicalPlan) -> Result<(&Window, &WindowFunction), SqlError> {
    let lost = || SqlError::State {
        message: "the top-N query lost its ROW_NUMBER() between batches".into(),
    };
    let mut path = Vec::new();
    if !path_to_window(plan, &mut path) {
        return Err(lost());
    }
    let Some(LogicalPlan::Window(window)) = path.last() else {
        return Err(lost());
    };
    let Expr::WindowFunction(function) = unalias(&window.window_expr[0]) else {
        return Err(lost());
    };
    Ok((window, function))
}

/// What the window ranks in this batch: the plan under it, run (a join's
/// new matches, a stream's filtered rows).
pub(crate) async fn input_rows(
    session: &SessionContext,
    plan: &LogicalPlan,
) -> Result<Vec<RecordBatch>, SqlError> {
    let (window, _) = window_of(plan)?;
    Ok(session
        .execute_logical_plan(window.input.as_ref().clone())
        .await?
        .collect()
        .await?)
}

/// Keeps a group's best rows, sorted best first: the first `n`, and
/// with `ties` every row tied with the n-th too.
fn keep_top<T>(rows: &mut Vec<T>, n: usize, ties: bool, sort_key: impl Fn(&T) -> &[u8]) {
    let mut cut = n.min(rows.len());
    if ties && cut > 0 {
        while cut < rows.len() && sort_key(&rows[cut]) == sort_key(&rows[cut - 1]) {
            cut += 1;
        }
    }
    rows.truncate(cut);
}

/// The rank of each of a group's kept rows (best first): its position,
/// or with `ties` the position of the first row tied with it.
fn ranks_of(rows: &[RankedRow], ties: bool) -> Vec<u64> {
    let mut out = Vec::with_capacity(rows.len());
    for (i, (key, _, _)) in rows.iter().enumerate() {
        let rank = match out.last() {
            Some(&prev) if ties && rows[i - 1].0 == *key => prev,
            _ => i as u64 + 1,
        };
        out.push(rank);
    }
    out
}

/// Merges `new_rows` (the window's input) into the stored groups, stages
/// the changed groups in the batch's commit and runs the rest of `plan`
/// over the ranks whose row changed. A window top-N in append mode
/// (`top.closing`) emits nothing until `watermark` passes a group's
/// window: then the group's kept rows, ranked, once.
pub(crate) async fn rank(
    session: &SessionContext,
    plan: &LogicalPlan,
    top: &TopN,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    new_rows: Vec<RecordBatch>,
    watermark: Option<i64>,
) -> Result<Changelog, SqlError> {
    let (window, function) = window_of(plan)?;
    let input_schema = window.input.schema().clone();
    let physical = |e: &Expr| session.create_physical_expr(e.clone(), &input_schema);
    let partition: Vec<Arc<dyn PhysicalExpr>> = function
        .params
        .partition_by
        .iter()
        .map(physical)
        .collect::<Result<_, _>>()?;
    let order: Vec<(Arc<dyn PhysicalExpr>, SortOptions)> = function
        .params
        .order_by
        .iter()
        .map(|s| {
            Ok::<_, datafusion::error::DataFusionError>((
                physical(&s.expr)?,
                SortOptions {
                    descending: !s.asc,
                    nulls_first: s.nulls_first,
                },
            ))
        })
        .collect::<Result<_, _>>()?;
    let arrow_schema = Arc::new(input_schema.as_arrow().clone());
    let rows_codec = RowConverter::new(
        arrow_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?;
    // The batch's rows in Arrow's row format: group and sort key; and
    // under a window, each row's window end.
    let batches: Vec<&RecordBatch> = new_rows.iter().filter(|b| b.num_rows() > 0).collect();
    let mut encoded: Vec<(Option<Rows>, Rows)> = Vec::with_capacity(batches.len());
    let mut ends: Vec<Vec<i64>> = Vec::new();
    let mut codecs: Option<(RowConverter, RowConverter)> = None;
    for batch in &batches {
        let evaluate = |e: &Arc<dyn PhysicalExpr>| -> Result<ArrayRef, SqlError> {
            Ok(e.evaluate(batch)?.into_array(batch.num_rows())?)
        };
        let keys: Vec<ArrayRef> = partition.iter().map(evaluate).collect::<Result<_, _>>()?;
        let sorts: Vec<ArrayRef> = order
            .iter()
            .map(|(e, _)| evaluate(e))
            .collect::<Result<_, _>>()?;
        let (key_codec, sort_codec) = match &codecs {
            Some(c) => c,
            None => codecs.insert((
                RowConverter::new(
                    keys.iter()
                        .map(|k| SortField::new(k.data_type().clone()))
                        .collect(),
                )?,
                RowConverter::new(
                    sorts
                        .iter()
                        .zip(&order)
                        .map(|(s, (_, o))| SortField::new_with_options(s.data_type().clone(), *o))
                        .collect(),
                )?,
            )),
        };
        let key_rows = (!keys.is_empty())
            .then(|| key_codec.convert_columns(&keys))
            .transpose()?;
        encoded.push((key_rows, sort_codec.convert_columns(&sorts)?));
        if let Some(w) = top.window.filter(|_| top.closing) {
            ends.push(crate::incremental::window_ends(
                batch.column(w.column),
                w.to_end_ms,
                batch.num_rows(),
            )?);
        }
    }
    // Each group's best new rows (sort key, batch, row), in rank order
    // (stable: equal sort keys keep arrival order): only these rows are
    // encoded whole, not every row of the batch.
    let mut candidates: hashbrown::HashMap<&[u8], Vec<Candidate>> = hashbrown::HashMap::new();
    // A window top-N's groups: the end of their window (a PARTITION BY
    // column, so one per group).
    let mut group_ends: hashbrown::HashMap<&[u8], i64> = hashbrown::HashMap::new();
    for (at, (keys, sorts)) in encoded.iter().enumerate() {
        for i in 0..sorts.num_rows() {
            let key = keys.as_ref().map_or(&[][..], |k| k.row(i).data());
            candidates
                .entry(key)
                .or_default()
                .push((sorts.row(i).data(), at as u32, i as u32));
            if let Some(ends) = ends.get(at) {
                group_ends.insert(key, ends[i]);
            }
        }
    }
    let n = top.n as usize;
    // Where each kept row is among its batch's encoded rows.
    let mut place: Vec<Vec<u32>> = batches
        .iter()
        .map(|b| vec![u32::MAX; b.num_rows()])
        .collect();
    let mut kept: Vec<Vec<u32>> = vec![Vec::new(); batches.len()];
    for rows in candidates.values_mut() {
        rows.sort_by(|a, b| a.0.cmp(b.0));
        keep_top(rows, n, top.ties, |r| r.0);
        for &(_, at, i) in rows.iter() {
            kept[at as usize].push(i);
        }
    }
    // In the batch's order: a batch whose rows are all kept is encoded
    // as it is.
    for (kept, place) in kept.iter_mut().zip(&mut place) {
        kept.sort_unstable();
        for (p, &i) in kept.iter().enumerate() {
            place[i as usize] = p as u32;
        }
    }
    let mut full: Vec<Rows> = Vec::with_capacity(batches.len());
    for (batch, kept) in batches.iter().zip(&kept) {
        full.push(if kept.len() == batch.num_rows() {
            rows_codec.convert_columns(batch.columns())?
        } else {
            let indices = datafusion::arrow::array::UInt32Array::from(kept.clone());
            let columns = batch
                .columns()
                .iter()
                .map(|c| datafusion::arrow::compute::take(c.as_ref(), &indices, None))
                .collect::<Result<Vec<_>, _>>()?;
            rows_codec.convert_columns(&columns)?
        });
    }
    // Each group's best new rows, borrowed from `encoded` and `full`.
    let mut touched: Vec<(&[u8], Vec<RankedRow>)> = candidates
        .into_iter()
        .map(|(key, rows)| {
            let rows = rows
                .into_iter()
                .map(|(sort, at, i)| {
                    let at = at as usize;
                    let row = full[at].row(place[at][i as usize] as usize).data();
                    (sort, row, Some((at as u32, i)))
                })
                .collect();
            (key, rows)
        })
        .collect();
    if touched.is_empty() && !top.closing {
        return Ok(Changelog::default());
    }
    let db = cx.checkpoint.db();
    // With a TTL, groups not changed since `from` are forgotten: deleted
    // first in the commit (a group this batch changes is put after), and
    // read as empty below.
    let from = top.ttl_ms.map_or(i64::MIN, |ttl| {
        cx.batch_time_ms.saturating_sub(ttl).saturating_add(1)
    });
    let mut deletes = Vec::new();
    if top.ttl_ms.is_some() {
        let (start, end) = (
            [state_keys::TOP_N_TTL_TAG],
            state_keys::tag_and_time(state_keys::TOP_N_TTL_TAG, from),
        );
        for item in crate::incremental::key_range(db, cf, &start, &end) {
            let (index, _) = item?;
            deletes.push(state_keys::top_n_of_ttl_key(&index));
            deletes.push(index.to_vec());
        }
        cx.count("expired groups", (deletes.len() / 2) as u64);
    }
    touched.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let state_keys: Vec<Vec<u8>> = touched
        .iter()
        .map(|(k, _)| state_keys::top_n_key(k))
        .collect();
    // The touched groups' stored rows (empty where a group is new or
    // expired, and deleted above), kept for the merge to borrow.
    let mut stored = Vec::with_capacity(touched.len());
    for value in db.batched_multi_get_cf(cf, &state_keys, true) {
        stored.push(match value? {
            Some(bytes) => decode(&bytes)?,
            None => (i64::MIN, Vec::new()),
        });
    }
    // (group, row, rank) of every rank whose row changed, and of the rows
    // they replace.
    let mut changed: Vec<Emitted> = Vec::new();
    let mut replaced: Vec<Emitted> = Vec::new();
    let mut writes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    // A window top-N's groups whose window this batch closes, with their
    // kept rows.
    let closes = |end: i64| watermark.is_some_and(|w| end <= w);
    let mut closed: Vec<(&[u8], Vec<RankedRow>)> = Vec::new();
    for (((group, mut new), state_key), (updated, old)) in
        touched.into_iter().zip(state_keys).zip(&stored)
    {
        let old: &[(Vec<u8>, Vec<u8>)] = if *updated < from { &[] } else { old };
        // Stable: equal sort keys keep arrival order, and stored rows
        // come before new ones.
        new.sort_by(|a, b| a.0.cmp(b.0));
        keep_top(&mut new, n, top.ties, |r| r.0);
        let mut merged: Vec<RankedRow> = Vec::with_capacity(n);
        let mut o = old
            .iter()
            .map(|(k, r)| (k.as_slice(), r.as_slice(), None))
            .peekable();
        let mut w = new.into_iter().peekable();
        while merged.len() < n || top.ties {
            let take_old = match (o.peek(), w.peek()) {
                (Some(a), Some(b)) => a.0 <= b.0,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let next = if take_old { o.next() } else { w.next() };
            merged.extend(next);
        }
        keep_top(&mut merged, n, top.ties, |r| r.0);
        if top.closing {
            let end = group_ends.get(group).copied().unwrap_or(i64::MIN);
            if closes(end) {
                // Emitted now; what an earlier batch stored goes.
                if !old.is_empty() {
                    deletes.push(state_key);
                    deletes.push(state_keys::top_n_window_key(end, group));
                }
                closed.push((group, merged));
            } else if merged
                .iter()
                .map(|(_, r, _)| *r)
                .ne(old.iter().map(|(_, r)| r.as_slice()))
            {
                writes.push((state_keys::top_n_window_key(end, group), Vec::new()));
                writes.push((state_key, encode(cx.batch_time_ms, &merged)));
            }
            continue;
        }
        let mut any = false;
        for (rank, (_, row, origin)) in merged.iter().enumerate() {
            let before = old.get(rank).map(|(_, r)| r.as_slice());
            if before != Some(*row) {
                changed.push((group, row, rank as u64 + 1, *origin));
                replaced.extend(before.map(|r| (group, r, rank as u64 + 1, None)));
                any = true;
            }
        }
        if any {
            if top.ttl_ms.is_some() {
                if *updated >= from {
                    deletes.push(state_keys::top_n_ttl_key(*updated, group));
                }
                writes.push((
                    state_keys::top_n_ttl_key(cx.batch_time_ms, group),
                    Vec::new(),
                ));
            }
            writes.push((state_key, encode(cx.batch_time_ms, &merged)));
        }
    }
    // Groups stored by earlier batches whose window the watermark passed,
    // untouched by this one.
    let mut closed_stored: Vec<(Vec<u8>, Ranked)> = Vec::new();
    if let (true, Some(w)) = (top.closing, watermark) {
        let (start, end) = (
            [state_keys::TOP_N_WINDOW_TAG],
            state_keys::tag_and_time(state_keys::TOP_N_WINDOW_TAG, w.saturating_add(1)),
        );
        let mut keys = Vec::new();
        for item in crate::incremental::key_range(db, cf, &start, &end) {
            let (index, _) = item?;
            if group_ends.contains_key(&index[9..]) {
                continue;
            }
            keys.push(state_keys::top_n_of_window_key(&index));
            deletes.push(index.to_vec());
        }
        for (key, value) in keys.iter().zip(db.batched_multi_get_cf(cf, &keys, true)) {
            if let Some(bytes) = value? {
                closed_stored.push((key[1..].to_vec(), decode(&bytes)?.1));
            }
        }
        deletes.extend(keys);
    }
    cx.write(|w| {
        for key in deletes {
            w.delete_cf(cf, key);
        }
        for (key, value) in writes {
            w.put_cf(cf, key, value);
        }
    });
    if top.closing {
        // Each closed group's kept rows, ranked.
        let mut emitted: Vec<Emitted> = Vec::new();
        let stored_rows = closed_stored.iter().map(|(group, rows)| {
            let rows: Vec<RankedRow> = rows
                .iter()
                .map(|(k, r)| (k.as_slice(), r.as_slice(), None))
                .collect();
            (group.as_slice(), rows)
        });
        for (group, rows) in closed.into_iter().chain(stored_rows) {
            for ((_, row, origin), rank) in rows.iter().zip(ranks_of(&rows, top.ties)) {
                emitted.push((group, row, rank, *origin));
            }
        }
        if emitted.is_empty() {
            return Ok(Changelog::default());
        }
        let columns = ranked_columns(&rows_codec, &batches, &emitted)?;
        return Ok(rest_of(session, plan, window, columns).await?.into());
    }
    if changed.is_empty() {
        return Ok(Changelog::default());
    }
    let columns = ranked_columns(&rows_codec, &batches, &changed)?;
    if let Some(over) = &top.over {
        // Each changed rank is a slot of the window: the group and the
        // rank identify it.
        let slots = changed
            .iter()
            .map(|(group, _, rank, _)| {
                let mut slot = Vec::with_capacity(group.len() + 8);
                slot.extend_from_slice(group);
                slot.extend_from_slice(&rank.to_be_bytes());
                slot
            })
            .collect();
        let ranked = RecordBatch::try_new(renamed(&window.schema), columns)?;
        return Ok(over::apply(session, plan, over, cx, cf, ranked, slots)
            .await?
            .into());
    }
    let upserts = rest_of(session, plan, window, columns).await?;
    if top.deletes.is_none() || replaced.is_empty() {
        return Ok(upserts.into());
    }
    // The replaced rows through the rest of the query: those whose key no
    // new row has left the output.
    let before = rest_of(
        session,
        plan,
        window,
        ranked_columns(&rows_codec, &batches, &replaced)?,
    )
    .await?;
    let deletes = crate::sinks::gone(&before, &upserts, &top.delete_key)?;
    Ok(Changelog { upserts, deletes })
}

/// Ranked rows in the window's output layout: the row's columns, then its
/// rank. Rows of this batch are taken from its columns as they are; only
/// stored rows are decoded from their row format.
fn ranked_columns(
    codec: &RowConverter,
    batches: &[&RecordBatch],
    ranked: &[Emitted],
) -> Result<Vec<ArrayRef>, SqlError> {
    let parser = codec.parser();
    let stored = ranked.iter().filter(|(_, _, _, origin)| origin.is_none());
    let decoded = codec.convert_rows(stored.map(|(_, row, _, _)| parser.parse(row)))?;
    let mut next_stored = 0;
    let indices: Vec<(usize, usize)> = ranked
        .iter()
        .map(|(_, _, _, origin)| match origin {
            Some((at, i)) => (*at as usize, *i as usize),
            None => {
                next_stored += 1;
                (batches.len(), next_stored - 1)
            }
        })
        .collect();
    let mut columns = if next_stored == ranked.len() {
        // Only stored rows (a window closing after its last batch): decoded
        // in order already.
        decoded
    } else {
        decoded
            .iter()
            .enumerate()
            .map(|(c, stored)| {
                let mut sources: Vec<&dyn Array> =
                    batches.iter().map(|b| b.column(c).as_ref()).collect();
                sources.push(stored.as_ref());
                datafusion::arrow::compute::interleave(&sources, &indices)
            })
            .collect::<Result<Vec<_>, _>>()?
    };
    columns.push(Arc::new(UInt64Array::from_iter_values(
        ranked.iter().map(|(_, _, rank, _)| *rank),
    )));
    Ok(columns)
}

/// A window's output schema with its columns named `c0`, `c1`, ….
fn renamed(schema: &datafusion::common::DFSchema) -> Arc<datafusion::arrow::datatypes::Schema> {
    Arc::new(datafusion::arrow::datatypes::Schema::new(
        schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| f.as_ref().clone().with_name(format!("c{i}")))
            .collect::<Vec<_>>(),
    ))
}

/// Runs the rest of `plan` (what stands above `window`) over `columns`,
/// the window's output computed elsewhere, in place of the window.
pub(crate) async fn rest_of(
    session: &SessionContext,
    plan: &LogicalPlan,
    window: &Window,
    columns: Vec<ArrayRef>,
) -> Result<Vec<RecordBatch>, SqlError> {
    let ranked_schema = renamed(&window.schema);
    let ranked = RecordBatch::try_new(ranked_schema.clone(), columns)?;
    // The rest of the query, over the changed ranks in place of the window.
    const RANKED: &str = "__sluice_top_n";
    let table = MemTable::try_new(ranked_schema, vec![vec![ranked]])?;
    let projection: Vec<Expr> = window
        .schema
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            Expr::Column(Column::new(Some(RANKED), format!("c{i}")))
                .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    let replacement = LogicalPlanBuilder::scan(RANKED, provider_as_source(Arc::new(table)), None)?
        .project(projection)?
        .build()?;
    let target = LogicalPlan::Window(window.clone());
    let rest = plan
        .clone()
        .transform_up(|node| {
            Ok(if node == target {
                Transformed::yes(replacement.clone())
            } else {
                Transformed::no(node)
            })
        })?
        .data;
    Ok(session.execute_logical_plan(rest).await?.collect().await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_groups_rows_round_trip_through_their_bytes() {
        let ranked: Ranked = vec![
            (b"k1".to_vec(), b"row one".to_vec()),
            (vec![], b"r".to_vec()),
        ];
        let borrowed: Vec<RankedRow> = ranked
            .iter()
            .map(|(k, r)| (k.as_slice(), r.as_slice(), None))
            .collect();
        assert_eq!(
            decode(&encode(-7, &borrowed)).unwrap(),
            (-7, ranked.clone())
        );
        assert!(decode(&encode(-7, &borrowed)[..13]).is_err());
        assert!(decode(&[1, 2]).is_err());
    }

    #[test]
    fn ties_keep_every_row_equal_to_the_nth_and_share_its_rank() {
        let rows = |keys: &[&'static [u8]]| -> Vec<RankedRow<'static>> {
            keys.iter().map(|k| (*k, &b"row"[..], None)).collect()
        };
        let mut kept = rows(&[b"a", b"b", b"b", b"b", b"c"]);
        keep_top(&mut kept, 2, true, |r| r.0);
        assert_eq!(kept.len(), 4);
        assert_eq!(ranks_of(&kept, true), [1, 2, 2, 2]);
        assert_eq!(ranks_of(&kept, false), [1, 2, 3, 4]);
        let mut kept = rows(&[b"a", b"b", b"b", b"b", b"c"]);
        keep_top(&mut kept, 2, false, |r| r.0);
        assert_eq!(kept.len(), 2);
        let mut kept = rows(&[b"a", b"a"]);
        keep_top(&mut kept, 1, true, |r| r.0);
        assert_eq!(ranks_of(&kept, true), [1, 1]);
        let mut none = rows(&[]);
        keep_top(&mut none, 3, true, |r| r.0);
        assert!(none.is_empty());
    }
}
