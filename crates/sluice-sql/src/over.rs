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
//! Over a stream's own rows (Flink's OVER aggregation), the window is
//! ordered by the stream's event time and each row is final once the
//! watermark passes it: a batch stores its rows (those the watermark has
//! not passed also in an index by time), and emits, exactly once, every
//! row the watermark now passes, computed over the rows stored before it
//! (`n` rows for `ROWS BETWEEN n PRECEDING`, those within the interval for
//! `RANGE BETWEEN INTERVAL … PRECEDING`). The output is append-only. What
//! no later row's frame can reach is deleted as the watermark moves: all
//! but a partition's last `n` rows, or the rows older than the interval.
//!
//! This module owns the windows' recognition, their rows' state and the
//! recomputation; the top-N hands it the slots it changed, the runner a
//! stream's batch and its watermark.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use datafusion::arrow::compute::{SortOptions, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::row::{RowConverter, Rows, SortField};
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
    let signature = signature("over", window, partition, order);
    Ok(Over {
        preceding: preceding as usize,
        signature,
    })
}

/// A window's input columns, partition, order and functions, for the
/// checkpoint's registry.
fn signature(
    kind: &str,
    window: &Window,
    partition: &[Expr],
    order: &[datafusion::logical_expr::SortExpr],
) -> String {
    let list = |items: Vec<String>| items.join(", ");
    let fields = window.input.schema();
    format!(
        "{kind} ({}) by ({}) of ({}): {}",
        list(
            fields
                .fields()
                .iter()
                .map(|f| format!("{} {}", f.name(), f.data_type()))
                .collect()
        ),
        list(partition.iter().map(|e| e.to_string()).collect()),
        list(order.iter().map(|s| s.to_string()).collect()),
        list(window.window_expr.iter().map(|e| e.to_string()).collect()),
    )
}

/// PARTITION BY columns in Arrow's row format; none without PARTITION BY
/// (every row in one partition).
pub(crate) fn partition_rows(columns: &[ArrayRef]) -> Result<Option<Rows>, SqlError> {
    if columns.is_empty() {
        return Ok(None);
    }
    let converter = RowConverter::new(
        columns
            .iter()
            .map(|a| SortField::new(a.data_type().clone()))
            .collect(),
    )?;
    Ok(Some(converter.convert_columns(columns)?))
}

/// Row `i`'s partition in [`partition_rows`]' bytes (empty: the one
/// partition).
pub(crate) fn partition_of(rows: &Option<Rows>, i: usize) -> &[u8] {
    rows.as_ref().map_or(&[][..], |rows| rows.row(i).data())
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
    let partition_rows = partition_rows(&partition)?;
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
        let prefix = state_keys::over_prefix(partition_of(&partition_rows, i));
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
    let mut sequences: Vec<Vec<(&[u8], bool)>> = Vec::with_capacity(partitions.len());
    for a in partitions.values() {
        let mut changed: BTreeSet<&[u8]> = BTreeSet::new();
        for at in &a.changed_at {
            let from = (
                std::ops::Bound::Included(at.as_slice()),
                std::ops::Bound::Unbounded,
            );
            for (k, _) in a.rows.range::<[u8], _>(from).take(over.preceding + 1) {
                changed.insert(k);
            }
        }
        sequences.push(
            a.rows
                .iter()
                .map(|(k, row)| (row.as_slice(), changed.contains(k.as_slice())))
                .collect(),
        );
    }
    let recomputed = sequences.iter().flatten().filter(|(_, f)| *f).count();
    cx.count("window rows recomputed", recomputed as u64);
    emit(session, plan, window, &row_codec, &sequences).await
}

/// Runs the window over `sequences` (each partition's rows in order, in
/// Arrow's row format, each flagged when it comes out) and the rest of
/// the query above the window over the flagged rows.
async fn emit(
    session: &SessionContext,
    plan: &LogicalPlan,
    window: &Window,
    row_codec: &RowConverter,
    sequences: &[Vec<(&[u8], bool)>],
) -> Result<Vec<RecordBatch>, SqlError> {
    if !sequences.iter().flatten().any(|(_, f)| *f) {
        return Ok(Vec::new());
    }
    let parser = row_codec.parser();
    let (mut parsed, mut part, mut pos, mut flag) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (p, sequence) in sequences.iter().enumerate() {
        for (i, (row, out)) in sequence.iter().enumerate() {
            parsed.push(parser.parse(row));
            part.push(p as u64);
            pos.push(i as u64);
            flag.push(*out);
        }
    }
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
/// ordered by the position (a RANGE frame by the window's own ORDER BY);
/// only the flagged rows come out.
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
                // The position is the sequence's order; a RANGE frame
                // measures the window's own ORDER BY (peers are equal).
                if f.params.window_frame.units != WindowFrameUnits::Range {
                    f.params.order_by = vec![helper(1).sort(true, false)];
                }
                Ok(Expr::WindowFunction(Box::new(f)))
            }
            other => Err(SqlError::State {
                message: format!("the OVER window computes {other}, not a window function"),
            }),
        })
        .collect::<Result<_, _>>()?;
    let table = MemTable::try_new(sequence.schema(), vec![vec![sequence]])?;
    let scan = LogicalPlanBuilder::scan(SEQUENCE, provider_as_source(Arc::new(table)), None)?
        .project(projection)?
        .build()?;
    // One window node per ORDER BY (DataFusion's own grouping), then the
    // functions' columns back in the window's order.
    let mut columns: Vec<Expr> = scan
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    columns.extend(
        functions
            .iter()
            .map(|f| Expr::Column(Column::from_name(f.schema_name().to_string()))),
    );
    let plan = LogicalPlanBuilder::from(LogicalPlanBuilder::window_plan(scan, functions)?)
        .filter(helper(2))?
        .project(columns)?
        .build()?;
    Ok(session.execute_logical_plan(plan).await?.collect().await?)
}

/// How far back a stream's OVER frames reach from the current row (the
/// widest of each kind).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(crate) struct Frame {
    /// `ROWS BETWEEN n PRECEDING AND CURRENT ROW`: the largest n.
    pub rows: Option<usize>,
    /// `RANGE BETWEEN INTERVAL … PRECEDING AND CURRENT ROW`: the longest
    /// interval, in ms.
    pub range_ms: Option<i64>,
}

impl Frame {
    /// What the frames reach, for `sluice explain`.
    pub(crate) fn describe(&self) -> String {
        let rows = self.rows.map(|n| format!("the {n} rows before it"));
        let range = self
            .range_ms
            .map(|ms| format!("the rows up to {ms} ms before it"));
        [rows, range]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" and ")
    }

    /// Whether a stored row at `time`, `before` rows before a row at
    /// `from`, is in some frame of it.
    fn reaches(&self, before: usize, time: i64, from: i64) -> bool {
        self.rows.is_some_and(|n| before < n)
            || self
                .range_ms
                .is_some_and(|ms| time >= from.saturating_sub(ms))
    }
}

/// A bounded OVER aggregate over a stream's rows, as recognized when
/// planned: ordered by the event time, each row emitted once when the
/// watermark passes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamOver {
    pub frame: Frame,
    /// The window's partition, order and functions, for the checkpoint's
    /// registry.
    pub signature: String,
}

const STREAM_OVER: &str = "an OVER window over a stream is incremental as aggregate functions ordered by the stream's event time, over ROWS BETWEEN n PRECEDING AND CURRENT ROW or RANGE BETWEEN INTERVAL '…' PRECEDING AND CURRENT ROW";

/// Whether the plan's deepest window computes aggregate functions (not
/// ranks): an OVER window over a stream's own rows.
pub(crate) fn aggregates_rows(plan: &LogicalPlan) -> bool {
    crate::topn::deepest_window(plan).is_some_and(|w| {
        w.window_expr.iter().all(|e| {
            matches!(unalias(e), Expr::WindowFunction(f)
                if matches!(f.fun, WindowFunctionDefinition::AggregateUDF(_)))
        })
    })
}

/// Recognizes an OVER window over a stream ordered by its event-time
/// column `event_time`.
pub(crate) fn recognize_stream(plan: &LogicalPlan, event_time: &str) -> Result<StreamOver, String> {
    let mut above = Vec::new();
    let mut node = plan;
    let window = loop {
        match node {
            LogicalPlan::Window(w) => break w,
            LogicalPlan::Projection(_) | LogicalPlan::SubqueryAlias(_) | LogicalPlan::Filter(_) => {
                above.push(node);
                node = node
                    .inputs()
                    .first()
                    .copied()
                    .ok_or_else(|| STREAM_OVER.to_string())?;
            }
            other => {
                return Err(format!(
                    "{STREAM_OVER}; {} above the OVER window is not supported: keep projections and filters above it",
                    other.display()
                ));
            }
        }
    };
    if crate::topn::has_window(&window.input) {
        return Err(format!(
            "{STREAM_OVER}; this query has several OVER windows"
        ));
    }
    let mut frame = Frame::default();
    let mut spec: Option<(&[Expr], &[datafusion::logical_expr::SortExpr])> = None;
    for expr in &window.window_expr {
        let Expr::WindowFunction(function) = unalias(expr) else {
            return Err(format!("{STREAM_OVER}; {expr} is not one"));
        };
        let params = &function.params;
        if params.distinct {
            return Err(format!(
                "{STREAM_OVER}; DISTINCT inside the window ({expr}) is not supported"
            ));
        }
        let by_time = matches!(params.order_by.as_slice(),
            [s] if s.asc && matches!(unalias(&s.expr), Expr::Column(c) if c.name == event_time));
        if !by_time {
            return Err(format!(
                "{STREAM_OVER}: {expr} must be ORDER BY {event_time} (ascending, alone), the column its watermark follows, so each row is final once the watermark passes it"
            ));
        }
        match spec {
            None => spec = Some((&params.partition_by, &params.order_by)),
            Some((p, _)) if p == params.partition_by.as_slice() => {}
            Some(_) => {
                return Err(format!(
                    "{STREAM_OVER}, all with one PARTITION BY; {expr} differs from the others"
                ));
            }
        }
        let f = &params.window_frame;
        let known = match (&f.units, &f.start_bound, &f.end_bound) {
            (
                WindowFrameUnits::Rows,
                WindowFrameBound::Preceding(n),
                WindowFrameBound::CurrentRow,
            ) => bounded(n).filter(|n| *n <= MAX_PRECEDING).map(|n| {
                frame.rows = Some(frame.rows.unwrap_or(0).max(n as usize));
            }),
            (
                WindowFrameUnits::Range,
                WindowFrameBound::Preceding(v),
                WindowFrameBound::CurrentRow,
            ) => crate::window::interval_ms(&Expr::Literal(v.clone(), None))
                .filter(|ms| *ms >= 0)
                .map(|ms| frame.range_ms = Some(frame.range_ms.unwrap_or(0).max(ms))),
            _ => None,
        };
        if known.is_none() {
            return Err(format!(
                "{STREAM_OVER} (n at most {MAX_PRECEDING}); {expr} has {f}: a frame without a bound before the current row would keep every row forever, one reaching following rows could not emit a row when the watermark passes it"
            ));
        }
    }
    let Some((partition, _)) = spec else {
        return Err(STREAM_OVER.into());
    };
    let signature = signature("stream over", window, partition, &[]);
    Ok(StreamOver { frame, signature })
}

/// A stream row of an OVER window: its key, its partition's prefix (when
/// needed), its event time and the row (Arrow row format).
struct StreamRow {
    key: Vec<u8>,
    prefix: Vec<u8>,
    time: i64,
    row: Vec<u8>,
}

/// A stream's stored OVER row: its event time, then the row.
fn stream_value(time: i64, row: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + row.len());
    value.extend_from_slice(&time.to_le_bytes());
    value.extend_from_slice(row);
    value
}

fn stream_value_parts(value: &[u8]) -> Result<(i64, &[u8]), SqlError> {
    let time = value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_le_bytes)
        .ok_or_else(|| SqlError::State {
            message: "an OVER window's stored row has no event time".into(),
        })?;
    Ok((time, &value[8..]))
}

/// Runs one batch of an OVER window over a stream (`session` holds the
/// batch's on-time rows, `watermark` the stream's watermark after them):
/// stores the new rows, and emits every row the watermark passes, each
/// over the rows before it, exactly once.
pub(crate) async fn run_stream(
    session: &SessionContext,
    sql: &str,
    over: &StreamOver,
    cx: &BatchCx<'_>,
    cf: &ColumnFamily,
    watermark: Option<i64>,
) -> Result<Vec<RecordBatch>, SqlError> {
    let plan = crate::topn::planned(session, sql).await?;
    let window = crate::topn::deepest_window(&plan).ok_or_else(|| SqlError::State {
        message: "the query lost its OVER window between batches".into(),
    })?;
    let Some(Expr::WindowFunction(function)) = window.window_expr.first().map(unalias) else {
        return Err(SqlError::State {
            message: "the OVER window has no function".into(),
        });
    };
    let input_schema = window.input.schema();
    let row_codec = RowConverter::new(
        input_schema
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect(),
    )?;
    let new_batches = session
        .execute_logical_plan(window.input.as_ref().clone())
        .await?
        .collect()
        .await?;
    // The batch's rows: each keyed by partition, event time and its place
    // in the batch (ties of one time stay in arrival order).
    let mut new_rows: Vec<StreamRow> = Vec::new();
    for batch in new_batches.iter().filter(|b| b.num_rows() > 0) {
        let evaluate = |e: &Expr| -> Result<ArrayRef, SqlError> {
            let e = session.create_physical_expr(e.clone(), input_schema)?;
            Ok(e.evaluate(batch)?.into_array(batch.num_rows())?)
        };
        let partition: Vec<ArrayRef> = function
            .params
            .partition_by
            .iter()
            .map(evaluate)
            .collect::<Result<_, _>>()?;
        let order = evaluate(&function.params.order_by[0].expr)?;
        let times = datafusion::arrow::compute::cast(
            &datafusion::arrow::compute::cast(
                &order,
                &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
            )?,
            &DataType::Int64,
        )?;
        let times = times
            .as_any()
            .downcast_ref::<datafusion::arrow::array::Int64Array>()
            .ok_or_else(|| SqlError::State {
                message: "an OVER window's event time is not a time".into(),
            })?;
        let partition_rows = partition_rows(&partition)?;
        let order_rows = RowConverter::new(vec![SortField::new(order.data_type().clone())])?
            .convert_columns(std::slice::from_ref(&order))?;
        let full = row_codec.convert_columns(batch.columns())?;
        for i in 0..batch.num_rows() {
            if times.is_null(i) {
                // Dropped before as late: a row without an event time is
                // behind every watermark.
                continue;
            }
            let prefix = state_keys::over_prefix(partition_of(&partition_rows, i));
            let mut slot = Vec::with_capacity(12);
            slot.extend_from_slice(&cx.batch_id.to_be_bytes());
            slot.extend_from_slice(&(new_rows.len() as u32).to_be_bytes());
            let key = state_keys::over_row_key(&prefix, order_rows.row(i).data(), &slot);
            new_rows.push(StreamRow {
                key,
                prefix,
                time: times.value(i),
                row: full.row(i).data().to_vec(),
            });
        }
    }
    let db = cx.checkpoint.db();
    let passed = |time: i64| watermark.is_some_and(|w| time <= w);
    // Rows stored earlier that the watermark now passes.
    let mut index_done = Vec::new();
    let mut due: Vec<StreamRow> = Vec::new();
    if let Some(w) = watermark {
        let mut keys = Vec::new();
        let mut meta = Vec::new();
        let start = [state_keys::OVER_PENDING_TAG];
        let end = state_keys::tag_and_time(state_keys::OVER_PENDING_TAG, w.saturating_add(1));
        for item in crate::incremental::key_range(db, cf, &start, &end) {
            let (index, _) = item?;
            let (time, prefix, key) =
                state_keys::over_pending_target(&index).ok_or_else(|| SqlError::State {
                    message: "an OVER window's waiting row index entry is cut short".into(),
                })?;
            index_done.push(index.to_vec());
            keys.push(key.clone());
            meta.push((time, prefix, key));
        }
        for ((time, prefix, key), value) in meta
            .into_iter()
            .zip(db.batched_multi_get_cf(cf, &keys, false))
        {
            let value = value?.ok_or_else(|| SqlError::State {
                message: "an OVER window's waiting row is missing".into(),
            })?;
            let (_, row) = stream_value_parts(&value)?;
            due.push(StreamRow {
                key,
                prefix,
                time,
                row: row.to_vec(),
            });
        }
    }
    let mut puts: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for r in &new_rows {
        puts.push((r.key.clone(), stream_value(r.time, &r.row)));
        if !passed(r.time) {
            puts.push((
                state_keys::over_pending_key(r.time, r.prefix.len(), &r.key),
                Vec::new(),
            ));
        }
    }
    due.extend(new_rows.into_iter().filter(|r| passed(r.time)));
    // Per partition, the rows coming out in order, after the stored rows
    // their frames reach (read backwards from the first); what no later
    // frame can reach is deleted.
    let mut by_partition: BTreeMap<Vec<u8>, Vec<StreamRow>> = BTreeMap::new();
    for r in due {
        by_partition.entry(r.prefix.clone()).or_default().push(r);
    }
    let mut deletes: Vec<Vec<u8>> = Vec::new();
    let mut contexts: Vec<Vec<StreamRow>> = Vec::with_capacity(by_partition.len());
    {
        let mut it = db.raw_iterator_cf(cf);
        for (prefix, rows) in by_partition.iter_mut() {
            rows.sort_unstable_by(|a, b| a.key.cmp(&b.key));
            let first = &rows[0];
            let mut context = Vec::new();
            it.seek_for_prev(&first.key);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if !k.starts_with(prefix) {
                    break;
                }
                if k < first.key.as_slice() {
                    let (time, row) = stream_value_parts(v)?;
                    if over.frame.reaches(context.len(), time, first.time) {
                        context.push(StreamRow {
                            key: k.to_vec(),
                            prefix: Vec::new(),
                            time,
                            row: row.to_vec(),
                        });
                    } else {
                        // Left behind by earlier batches' frames.
                        deletes.push(k.to_vec());
                    }
                }
                it.prev();
            }
            it.status()?;
            context.reverse();
            contexts.push(context);
        }
    }
    // What later rows (all after the watermark) can still reach: a
    // partition's last n rows, or those within the interval of it.
    let w = watermark.unwrap_or(i64::MIN);
    for (context, rows) in contexts.iter().zip(by_partition.values()) {
        let keys: Vec<(&[u8], i64)> = context
            .iter()
            .map(|r| (r.key.as_slice(), r.time))
            .chain(rows.iter().map(|r| (r.key.as_slice(), r.time)))
            .collect();
        // A later row is after every one of these, at a time > w.
        let keep_from = keys
            .iter()
            .enumerate()
            .position(|(i, (_, t))| {
                over.frame
                    .reaches(keys.len() - 1 - i, *t, w.saturating_add(1))
            })
            .unwrap_or(keys.len());
        deletes.extend(keys[..keep_from].iter().map(|(k, _)| k.to_vec()));
    }
    let emitted: usize = by_partition.values().map(Vec::len).sum();
    cx.count("window rows emitted", emitted as u64);
    cx.write(|batch| {
        for (key, value) in &puts {
            batch.put_cf(cf, key, value);
        }
        for key in index_done.iter().chain(&deletes) {
            batch.delete_cf(cf, key);
        }
    });
    let sequences: Vec<Vec<(&[u8], bool)>> = contexts
        .iter()
        .zip(by_partition.values())
        .map(|(context, rows)| {
            context
                .iter()
                .map(|r| (r.row.as_slice(), false))
                .chain(rows.iter().map(|r| (r.row.as_slice(), true)))
                .collect()
        })
        .collect();
    emit(session, &plan, window, &row_codec, &sequences).await
}
