//! Bounded OVER aggregates over a top-N's ranked rows: `AVG(price) OVER
//! (PARTITION BY seller ORDER BY date_time ROWS BETWEEN 10 PRECEDING AND
//! CURRENT ROW)` over each auction's highest bid (Nexmark q6).
//!
//! A top-N's ranks change as better rows arrive, so what the window sees
//! is an update stream: each slot of the top-N (a group and a rank) is
//! one row of the window, and it moves when the slot's row changes. The
//! window keeps every slot's current row in the query's state, ordered by
//! the window's PARTITION BY and ORDER BY (Arrow's row format: byte order
//! is the SQL order; the slot breaks ties), and an index from each slot to
//! where its row is. A batch moves the changed slots (a delete where the
//! row was, an insert where it goes), reads around every position that
//! changed — the `preceding` rows before it and `preceding + 1` from it on
//! — and recomputes with DataFusion's own window function the rows whose
//! frame changed: the `preceding + 1` rows from each changed position.
//! Those rows go through the rest of the query: an update stream keyed by
//! the slot (the top-N's group, and its rank where N > 1).
//!
//! Only aggregate functions over `ROWS BETWEEN n PRECEDING AND CURRENT
//! ROW`: a frame that ends at the current row and starts a bounded number
//! of rows before it is what makes a change reach only the next n rows.
//! The state is not expired (a later change may need any row as a
//! predecessor): one row per slot the top-N ever filled.
//!
//! This module owns the window's recognition, its rows' state and the
//! recomputation; the top-N hands it the slots it changed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use datafusion::arrow::compute::{SortOptions, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{Column, ScalarValue};
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::{
    Expr, LogicalPlan, LogicalPlanBuilder, Window, WindowFrameBound, WindowFrameUnits,
    expr::WindowFunction, expr::WindowFunctionDefinition,
};
use datafusion::prelude::SessionContext;
use rocksdb::ColumnFamily;
use sluice_engine::plan::BatchCx;

use crate::error::SqlError;
use crate::state_keys;

/// The widest frame accepted: every changed row recomputes this many rows
/// after it, each over this many before it.
const MAX_PRECEDING: u64 = 10_000;

/// A bounded OVER aggregate over a top-N, as recognized when planned.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Over {
    /// Rows before the current one the widest frame reaches.
    pub preceding: usize,
    /// The window's partition, order and functions, for the checkpoint's
    /// registry: a job whose window changes cannot reuse its rows.
    pub signature: String,
}

fn unalias(expr: &Expr) -> &Expr {
    match expr {
        Expr::Alias(a) => unalias(&a.expr),
        other => other,
    }
}

const ONLY_BOUNDED: &str = "an OVER window over a top-N's rows is incremental as aggregate functions over ROWS BETWEEN n PRECEDING AND CURRENT ROW";

/// Recognizes the OVER window above a top-N's ROW_NUMBER(): `above` are
/// the nodes from the query's root down to `window`.
pub(crate) fn recognize(above: &[&LogicalPlan], window: &Window) -> Result<Over, String> {
    for node in above {
        match node {
            LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) => {}
            LogicalPlan::Window(_) => {
                return Err(format!(
                    "{ONLY_BOUNDED}, all with one PARTITION BY and ORDER BY; this query has several OVER windows above its top-N"
                ));
            }
            other => {
                return Err(format!(
                    "an OVER window's rows change with the top-N under it, and {} over them would need retractions, which are not supported yet: keep only projections above the OVER window",
                    other.display()
                ));
            }
        }
    }
    let mut preceding = 0u64;
    let mut spec: Option<(&[Expr], &[datafusion::logical_expr::SortExpr])> = None;
    for expr in &window.window_expr {
        let Expr::WindowFunction(function) = unalias(expr) else {
            return Err(format!("{ONLY_BOUNDED}; {expr} is not one"));
        };
        if !matches!(function.fun, WindowFunctionDefinition::AggregateUDF(_)) {
            return Err(format!(
                "{ONLY_BOUNDED}; {}() is not an aggregate function",
                function.fun.name()
            ));
        }
        let params = &function.params;
        if params.distinct {
            return Err(format!(
                "{ONLY_BOUNDED}; DISTINCT inside the window ({expr}) is not supported"
            ));
        }
        if params.order_by.is_empty() {
            return Err(format!(
                "{ONLY_BOUNDED}: {expr} has no ORDER BY, so its frame is its whole partition"
            ));
        }
        match spec {
            None => spec = Some((&params.partition_by, &params.order_by)),
            Some((p, o))
                if p == params.partition_by.as_slice() && o == params.order_by.as_slice() => {}
            Some(_) => {
                return Err(format!(
                    "{ONLY_BOUNDED}, all with one PARTITION BY and ORDER BY; {expr} differs from the others"
                ));
            }
        }
        let frame = &params.window_frame;
        let rows_before = match (&frame.units, &frame.start_bound, &frame.end_bound) {
            (
                WindowFrameUnits::Rows,
                WindowFrameBound::Preceding(n),
                WindowFrameBound::CurrentRow,
            ) => bounded(n),
            (
                WindowFrameUnits::Rows,
                WindowFrameBound::CurrentRow,
                WindowFrameBound::CurrentRow,
            ) => Some(0),
            _ => None,
        };
        let Some(rows_before) = rows_before.filter(|n| *n <= MAX_PRECEDING) else {
            return Err(format!(
                "{ONLY_BOUNDED} (n at most {MAX_PRECEDING}); {expr} has {frame}: a frame reaching further back, or reaching following rows, would make one change recompute the rest of its partition"
            ));
        };
        preceding = preceding.max(rows_before);
    }
    let Some((partition, order)) = spec else {
        return Err(ONLY_BOUNDED.into());
    };
    let list = |items: Vec<String>| items.join(", ");
    let signature = format!(
        "over ({}) by ({}) of ({}): {}",
        list(
            window
                .input
                .schema()
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect()
        ),
        list(partition.iter().map(|e| e.to_string()).collect()),
        list(order.iter().map(|s| s.to_string()).collect()),
        list(window.window_expr.iter().map(|e| e.to_string()).collect()),
    );
    Ok(Over {
        preceding: preceding as usize,
        signature,
    })
}

fn bounded(n: &ScalarValue) -> Option<u64> {
    if n.is_null() {
        return None;
    }
    match n.cast_to(&DataType::UInt64).ok()? {
        ScalarValue::UInt64(Some(n)) => Some(n),
        _ => None,
    }
}

/// The OVER window of a plan whose top-N it stands above: the first
/// window from the root.
fn over_window(plan: &LogicalPlan) -> Option<&Window> {
    match plan {
        LogicalPlan::Window(w) => Some(w),
        other => other.inputs().into_iter().find_map(over_window),
    }
}

/// Runs the nodes between the top-N's window and the OVER window
/// (projections, the rank's filter) over the changed ranks, keeping
/// `slots` beside the rows that pass.
fn between(
    session: &SessionContext,
    over: &Window,
    ranked: RecordBatch,
    slots: Vec<Vec<u8>>,
) -> Result<(RecordBatch, Vec<Vec<u8>>), SqlError> {
    let lost = |what: String| SqlError::State {
        message: format!("the OVER window's query changed shape between batches: {what}"),
    };
    let mut nodes = Vec::new();
    let mut node = over.input.as_ref();
    while !matches!(node, LogicalPlan::Window(_)) {
        nodes.push(node);
        node = node
            .inputs()
            .first()
            .copied()
            .ok_or_else(|| lost("no ROW_NUMBER() under it".into()))?;
    }
    let (mut batch, mut slots) = (ranked, slots);
    for node in nodes.into_iter().rev() {
        match node {
            LogicalPlan::Projection(p) => {
                let columns = p
                    .expr
                    .iter()
                    .map(|e| {
                        let e = session.create_physical_expr(e.clone(), p.input.schema())?;
                        Ok(e.evaluate(&batch)?.into_array(batch.num_rows())?)
                    })
                    .collect::<Result<Vec<ArrayRef>, SqlError>>()?;
                batch = anonymous(columns)?;
            }
            LogicalPlan::Filter(f) => {
                let predicate =
                    session.create_physical_expr(f.predicate.clone(), f.input.schema())?;
                let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                let mask = mask
                    .as_any()
                    .downcast_ref::<BooleanArray>()
                    .ok_or_else(|| lost(format!("{} is not a condition", f.predicate)))?;
                batch = filter_record_batch(&batch, mask)?;
                slots = slots
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| mask.is_valid(*i) && mask.value(*i))
                    .map(|(_, s)| s)
                    .collect();
            }
            LogicalPlan::SubqueryAlias(_) => {}
            other => return Err(lost(format!("{} between the windows", other.display()))),
        }
    }
    Ok((batch, slots))
}

/// Columns as a batch named `c0`, `c1`, … (every field nullable).
fn anonymous(columns: Vec<ArrayRef>) -> Result<RecordBatch, SqlError> {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
        .collect();
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// A slot's row moving in the window's order: where it was (its
/// partition's prefix and its key; none for a new slot), where it goes,
/// and the row.
struct Move {
    slot: Vec<u8>,
    from: Option<(Vec<u8>, Vec<u8>)>,
    to: (Vec<u8>, Vec<u8>),
    row: Vec<u8>,
}

/// One partition's rows around this batch's changes, in the window's
/// order after them, and the positions that changed.
#[derive(Default)]
struct Around {
    rows: BTreeMap<Vec<u8>, Vec<u8>>,
    changed_at: BTreeSet<Vec<u8>>,
    removed: BTreeSet<Vec<u8>>,
}

/// Reads partition `prefix`'s stored rows around each changed position
/// (skipping rows this batch removes): `preceding` before it and
/// `preceding + 1` from it on, enough for every row whose frame changed
/// to find its whole frame.
fn read_around(
    it: &mut rocksdb::DBRawIteratorWithThreadMode<'_, rocksdb::DB>,
    prefix: &[u8],
    around: &mut Around,
    preceding: usize,
) -> Result<(), SqlError> {
    let Around {
        rows,
        changed_at,
        removed,
    } = around;
    for at in changed_at.iter() {
        it.seek_for_prev(at);
        let mut before = 0;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if before >= preceding || !k.starts_with(prefix) {
                break;
            }
            if k < at.as_slice() && !removed.contains(k) {
                rows.insert(k.to_vec(), v.to_vec());
                before += 1;
            }
            it.prev();
        }
        it.status()?;
        it.seek(at);
        let mut after = 0;
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if after > preceding || !k.starts_with(prefix) {
                break;
            }
            if !removed.contains(k) {
                rows.insert(k.to_vec(), v.to_vec());
                after += 1;
            }
            it.next();
        }
        it.status()?;
    }
    Ok(())
}

/// Moves the changed slots' rows (`ranked`, in the top-N window's
/// layout, `slots` beside them) in the window's state, staged in the
/// batch's commit, and returns the rest of the query over the rows whose
/// frame changed.
pub(crate) async fn apply(
    session: &SessionContext,
    plan: &LogicalPlan,
    over: &Over,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    ranked: RecordBatch,
    slots: Vec<Vec<u8>>,
) -> Result<Vec<RecordBatch>, SqlError> {
    let window = over_window(plan).ok_or_else(|| SqlError::State {
        message: "the query lost its OVER window between batches".into(),
    })?;
    let (rows, slots) = between(session, window, ranked, slots)?;
    if rows.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let Some(Expr::WindowFunction(function)) = window.window_expr.first().map(unalias) else {
        return Err(SqlError::State {
            message: "the OVER window has no function".into(),
        });
    };
    let input_schema = window.input.schema();
    let evaluate = |e: &Expr| -> Result<ArrayRef, SqlError> {
        let e = session.create_physical_expr(e.clone(), input_schema)?;
        Ok(e.evaluate(&rows)?.into_array(rows.num_rows())?)
    };
    let partition: Vec<ArrayRef> = function
        .params
        .partition_by
        .iter()
        .map(evaluate)
        .collect::<Result<_, _>>()?;
    let order: Vec<ArrayRef> = function
        .params
        .order_by
        .iter()
        .map(|s| evaluate(&s.expr))
        .collect::<Result<_, _>>()?;
    // Without PARTITION BY every row is in one partition (empty prefix).
    let partition_rows = (!partition.is_empty())
        .then(|| {
            RowConverter::new(
                partition
                    .iter()
                    .map(|a| SortField::new(a.data_type().clone()))
                    .collect(),
            )?
            .convert_columns(&partition)
        })
        .transpose()?;
    let order_rows = RowConverter::new(
        order
            .iter()
            .zip(&function.params.order_by)
            .map(|(a, s)| {
                SortField::new_with_options(
                    a.data_type().clone(),
                    SortOptions {
                        descending: !s.asc,
                        nulls_first: s.nulls_first,
                    },
                )
            })
            .collect(),
    )?
    .convert_columns(&order)?;
    let row_codec = RowConverter::new(
        input_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?;
    let full = row_codec.convert_columns(rows.columns())?;
    let db = cx.checkpoint.db();
    let slot_keys: Vec<Vec<u8>> = slots.iter().map(|s| state_keys::over_slot_key(s)).collect();
    let mut moves = Vec::with_capacity(slots.len());
    for (i, (slot, stored)) in slots
        .into_iter()
        .zip(db.batched_multi_get_cf(cf, &slot_keys, false))
        .enumerate()
    {
        let from = match stored? {
            Some(value) => {
                Some(
                    state_keys::over_slot_target(&value).ok_or_else(|| SqlError::State {
                        message: "an OVER window's slot index entry is cut short".into(),
                    })?,
                )
            }
            None => None,
        };
        let prefix = state_keys::over_prefix(
            partition_rows
                .as_ref()
                .map_or(&[][..], |rows| rows.row(i).data()),
        );
        let to = state_keys::over_row_key(&prefix, order_rows.row(i).as_ref(), &slot);
        moves.push(Move {
            from,
            to: (prefix, to),
            slot,
            row: full.row(i).as_ref().to_vec(),
        });
    }
    // Each touched partition: the positions that changed, the rows
    // leaving it, and its stored rows around them.
    let mut partitions: BTreeMap<Vec<u8>, Around> = BTreeMap::new();
    for m in &moves {
        if let Some((prefix, from)) = &m.from {
            let a = partitions.entry(prefix.clone()).or_default();
            a.changed_at.insert(from.clone());
            a.removed.insert(from.clone());
        }
        let (prefix, to) = &m.to;
        partitions
            .entry(prefix.clone())
            .or_default()
            .changed_at
            .insert(to.clone());
    }
    {
        let mut it = db.raw_iterator_cf(cf);
        for (prefix, a) in partitions.iter_mut() {
            read_around(&mut it, prefix, a, over.preceding)?;
        }
    }
    for m in &moves {
        if let Some(a) = partitions.get_mut(&m.to.0) {
            a.rows.insert(m.to.1.clone(), m.row.clone());
        }
    }
    cx.write(|w| {
        for m in &moves {
            if let Some((_, from)) = &m.from {
                w.delete_cf(cf, from);
            }
        }
        for m in &moves {
            let (prefix, to) = &m.to;
            w.put_cf(cf, to, &m.row);
            w.put_cf(
                cf,
                state_keys::over_slot_key(&m.slot),
                state_keys::over_slot_value(prefix.len(), to),
            );
        }
    });
    // Every partition's rows in order, as one sequence per partition,
    // flagged where the frame changed.
    let parser = row_codec.parser();
    let (mut parsed, mut part, mut pos, mut flag) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut recomputed = 0u64;
    for (p, a) in partitions.values().enumerate() {
        let mut changed: BTreeSet<&[u8]> = BTreeSet::new();
        for at in &a.changed_at {
            for (k, _) in a
                .rows
                .range::<[u8], _>((
                    std::ops::Bound::Included(at.as_slice()),
                    std::ops::Bound::Unbounded,
                ))
                .take(over.preceding + 1)
            {
                changed.insert(k);
            }
        }
        for (i, (k, row)) in a.rows.iter().enumerate() {
            parsed.push(parser.parse(row));
            part.push(p as u64);
            pos.push(i as u64);
            let c = changed.contains(k.as_slice());
            recomputed += u64::from(c);
            flag.push(c);
        }
    }
    cx.count("window rows recomputed", recomputed);
    let mut columns = row_codec.convert_rows(parsed)?;
    let inputs = columns.len();
    columns.push(Arc::new(UInt64Array::from(part)));
    columns.push(Arc::new(UInt64Array::from(pos)));
    columns.push(Arc::new(BooleanArray::from(flag)));
    let framed = recompute(session, window, anonymous(columns)?).await?;
    let mut out = Vec::new();
    for batch in framed.iter().filter(|b| b.num_rows() > 0) {
        let mut columns: Vec<ArrayRef> = batch.columns()[..inputs].to_vec();
        columns.extend(batch.columns()[inputs + 3..].iter().cloned());
        out.extend(crate::topn::rest_of(session, plan, window, columns).await?);
    }
    Ok(out)
}

/// The window's functions over `sequence` (the window's input columns,
/// then each row's partition number, its position in it and whether to
/// keep it): the same functions and frames, partitioned by the number and
/// ordered by the position; only the flagged rows come out.
async fn recompute(
    session: &SessionContext,
    window: &Window,
    sequence: RecordBatch,
) -> Result<Vec<RecordBatch>, SqlError> {
    const SEQUENCE: &str = "__sluice_over";
    let inputs = window.input.schema().fields().len();
    let helper = |i: usize| Expr::Column(Column::new(Some(SEQUENCE), format!("c{}", inputs + i)));
    let mut projection: Vec<Expr> = window
        .input
        .schema()
        .iter()
        .enumerate()
        .map(|(i, (qualifier, field))| {
            Expr::Column(Column::new(Some(SEQUENCE), format!("c{i}")))
                .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    projection.extend((0..3).map(helper));
    let functions: Vec<Expr> = window
        .window_expr
        .iter()
        .map(|e| match unalias(e) {
            Expr::WindowFunction(f) => {
                let mut f: WindowFunction = f.as_ref().clone();
                f.params.partition_by = vec![helper(0)];
                f.params.order_by = vec![helper(1).sort(true, false)];
                Ok(Expr::WindowFunction(Box::new(f)))
            }
            other => Err(SqlError::State {
                message: format!("the OVER window computes {other}, not a window function"),
            }),
        })
        .collect::<Result<_, _>>()?;
    let table = MemTable::try_new(sequence.schema(), vec![vec![sequence]])?;
    let plan = LogicalPlanBuilder::scan(SEQUENCE, provider_as_source(Arc::new(table)), None)?
        .project(projection)?
        .window(functions)?
        .filter(helper(2))?
        .build()?;
    Ok(session.execute_logical_plan(plan).await?.collect().await?)
}
