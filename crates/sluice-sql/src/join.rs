//! Stream–stream interval joins.
//!
//! A query over two streams joins them on a time bound, as Flink's
//! interval joins: `ON a.id = b.id AND a.ts BETWEEN b.ts - INTERVAL '10'
//! SECOND AND b.ts + INTERVAL '5' SECOND`. Each batch emits the new
//! matches only — `Δa ⋈ (b_old ∪ Δb)` and `a_old ⋈ Δb`, both run by
//! DataFusion — and buffers its own rows of each stream in the query's
//! state. The bound and the other stream's watermark say when a buffered
//! row can no longer match anything to come; such rows are evicted, so
//! state stays bounded on endless streams. Both streams need a watermark,
//! and the bound must limit the time difference on both sides; otherwise
//! the join is refused when the job is submitted — unless the sink sets
//! `state_ttl`: then any inner join of the two streams runs (Flink's
//! regular join with state TTL), each buffered row is kept for the TTL
//! (batch time) after the batch that brought it, and rows of the two
//! streams further apart than that in arrival never match.
//!
//! This module owns the bound's derivation and the buffered rows' layout;
//! the caller runs the queries and commits.

use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::Column;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, LogicalPlan, Operator};
use datafusion::physical_plan::PhysicalExpr;
use rocksdb::{ColumnFamily, DB};

/// A state change to apply in the batch's commit: put (`Some`) or delete.
pub(crate) type Change = (Vec<u8>, Option<Vec<u8>>);

use crate::error::SqlError;
use crate::incremental::key_range;
use crate::state_keys;

/// The two joined streams, their event-time columns, and the bound on
/// `t0 − t1` (milliseconds) the join condition sets; or, without a bound,
/// how long rows are kept.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct IntervalJoin {
    pub streams: [String; 2],
    pub columns: [String; 2],
    pub lo_ms: i64,
    pub hi_ms: i64,
    /// Set for a join bounded by the sink's `state_ttl` instead.
    pub ttl_ms: Option<i64>,
    /// Per stream, the columns its equality conditions compare (`a.id =
    /// b.id`), in matching order: rows that can match share these values,
    /// which is how a join is split over many workers. Equalities of
    /// computed values are left out.
    pub keys: [Vec<String>; 2],
    /// Per stream, the filters applied to its rows before the join (each
    /// with the schema it reads): a row that fails one can never match,
    /// so it is not buffered.
    pub filters: [Vec<SideFilter>; 2],
    /// Per stream, whether an aggregation over the matches is windowed by
    /// its event time (`TUMBLE(stream, …)`): the matches' watermark is
    /// then kept for that stream's column (see
    /// [`IntervalJoin::matches_watermark`]).
    pub windowed: [bool; 2],
}

impl IntervalJoin {
    /// The watermark of the matches' event times: no match a later batch
    /// finds has an event time, in the column of a windowed stream, below
    /// it. A new row of stream 0 is on time (`t0 ≥ W0`), and a buffered
    /// one can only meet stream-1 rows to come (`t1 ≥ W1`) within the
    /// bound (`t0 ≥ t1 + lo`): the matches' `t0` is at least `min(W0, W1 +
    /// lo)`, exactly what eviction keeps. Symmetrically `t1 ≥ min(W1, W0 −
    /// hi)`. `None` until both streams have a watermark, or when no stream
    /// is windowed (or the join is kept by TTL, whose rows have no bound).
    pub(crate) fn matches_watermark(&self, watermarks: &[Option<i64>]) -> Option<i64> {
        if self.ttl_ms.is_some() {
            return None;
        }
        let (w0, w1) = (watermarks.first().copied()??, watermarks.get(1).copied()??);
        let bounds = [
            w0.min(w1.saturating_add(self.lo_ms)),
            w1.min(w0.saturating_sub(self.hi_ms)),
        ];
        (0..2)
            .filter(|&side| self.windowed[side])
            .map(|side| bounds[side])
            .min()
    }
}

/// A filter on one stream's rows under the join, and the columns (by
/// name) its input has.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SideFilter {
    pub predicate: Expr,
    pub input: datafusion::common::DFSchemaRef,
}

/// The filters on the path from a join's input down to its stream's scan
/// (through aliases and projections of plain columns): what a row must
/// pass to reach the join.
fn side_filters(input: &LogicalPlan) -> Vec<SideFilter> {
    let mut out = Vec::new();
    let mut node = input;
    loop {
        match node {
            LogicalPlan::Filter(f) => {
                if !f.predicate.is_volatile() {
                    out.push(SideFilter {
                        predicate: f.predicate.clone(),
                        input: f.input.schema().clone(),
                    });
                }
                node = &f.input;
            }
            LogicalPlan::SubqueryAlias(a) => node = &a.input,
            LogicalPlan::Projection(p) if p.expr.iter().all(|e| matches!(e, Expr::Column(_))) => {
                node = &p.input
            }
            _ => return out,
        }
    }
}

/// Each side's filters, for the join found in `plan`.
fn filters_of(join: &datafusion::logical_expr::Join, left_stream: usize) -> [Vec<SideFilter>; 2] {
    let mut filters: [Vec<SideFilter>; 2] = Default::default();
    filters[left_stream] = side_filters(&join.left);
    filters[1 - left_stream] = side_filters(&join.right);
    filters
}

/// The columns `join`'s equalities compare, per stream (`left_stream` is
/// the stream on its left side). Equalities of computed values
/// (`date_bin(…, a.ts) = b.window_start`) are left out: rows that match
/// share the values of every equality, so of the column ones too.
fn equi_keys(join: &datafusion::logical_expr::Join, left_stream: usize) -> [Vec<String>; 2] {
    let column = |e: &Expr| match e {
        Expr::Column(c) => Some(c.name.clone()),
        Expr::Cast(c) => match c.expr.as_ref() {
            Expr::Column(c) => Some(c.name.clone()),
            _ => None,
        },
        _ => None,
    };
    let mut keys: [Vec<String>; 2] = Default::default();
    for (l, r) in &join.on {
        if let (Some(l), Some(r)) = (column(l), column(r)) {
            keys[left_stream].push(l);
            keys[1 - left_stream].push(r);
        }
    }
    keys
}

/// The streams a plan scans (table names of its scans among `streams`,
/// or the stream a window function's scan reads).
fn scanned(plan: &LogicalPlan, streams: &[String; 2], out: &mut Vec<usize>) {
    if let LogicalPlan::TableScan(scan) = plan {
        let windowed = datafusion::datasource::source_as_provider(&scan.source)
            .ok()
            .and_then(|p| {
                p.downcast_ref::<crate::window::WindowedStream>()
                    .map(|w| w.stream.clone())
            });
        let name = windowed.as_deref().unwrap_or(scan.table_name.table());
        if let Some(i) = streams.iter().position(|s| s == name) {
            out.push(i);
        }
    }
    for input in plan.inputs() {
        scanned(input, streams, out);
    }
}

/// `column ± interval` → (column, offset ms).
fn term(expr: &Expr) -> Option<(Column, i64)> {
    match expr {
        Expr::Column(c) => Some((c.clone(), 0)),
        Expr::Cast(c) => term(&c.expr),
        Expr::TryCast(c) => term(&c.expr),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (col, base) = term(left)?;
            let ms = super::window::interval_ms(right)?;
            match op {
                Operator::Plus => Some((col, base + ms)),
                Operator::Minus => Some((col, base - ms)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn conjuncts(expr: &Expr, out: &mut Vec<Expr>) {
    match expr {
        Expr::BinaryExpr(BinaryExpr {
            left,
            op: Operator::And,
            right,
        }) => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => {
            out.push(Expr::BinaryExpr(BinaryExpr::new(
                expr.clone(),
                Operator::GtEq,
                low.clone(),
            )));
            out.push(Expr::BinaryExpr(BinaryExpr::new(
                expr.clone(),
                Operator::LtEq,
                high.clone(),
            )));
        }
        other => out.push(other.clone()),
    }
}

/// A join of `streams` kept for `ttl_ms` of batch time, whatever its
/// condition (it must still be an inner join of the two).
pub(crate) fn with_ttl(
    plan: &LogicalPlan,
    streams: [String; 2],
    ttl_ms: i64,
) -> Result<IntervalJoin, String> {
    let (join, left_stream) = find(plan, &streams)?;
    Ok(IntervalJoin {
        keys: equi_keys(join, left_stream),
        filters: filters_of(join, left_stream),
        streams,
        columns: Default::default(),
        lo_ms: i64::MIN,
        hi_ms: i64::MAX,
        ttl_ms: Some(ttl_ms),
        windowed: [false; 2],
    })
}

/// The inner join of the two streams in `plan`, and which stream is its
/// left side.
fn find<'p>(
    plan: &'p LogicalPlan,
    streams: &[String; 2],
) -> Result<(&'p datafusion::logical_expr::Join, usize), String> {
    let mut found = None;
    let mut stack = vec![plan];
    while let Some(node) = stack.pop() {
        if let LogicalPlan::Join(join) = node {
            let (mut left, mut right) = (Vec::new(), Vec::new());
            scanned(&join.left, streams, &mut left);
            scanned(&join.right, streams, &mut right);
            if left.len() == 1 && right.len() == 1 && left[0] != right[0] {
                use datafusion::logical_expr::JoinType;
                // DataFusion's optimizer turns an inner join whose
                // matches' count nothing above it depends on (a GROUP BY
                // of one side's columns, without aggregates) into a semi
                // join: its new matches, merged as the inner join's,
                // give the same groups. `written_inner` checks the query
                // wrote an inner join.
                if !matches!(
                    join.join_type,
                    JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi
                ) {
                    return Err(format!(
                        "a {} join of two streams is not incremental yet: use an inner JOIN",
                        join.join_type
                    ));
                }
                found = Some((join, left[0]));
                break;
            }
        }
        stack.extend(node.inputs());
    }
    found.ok_or_else(|| {
        format!(
            "the query reads streams {} and {} but does not join them: join them with a time bound (… ON a.ts BETWEEN b.ts - INTERVAL '10' SECOND AND b.ts)",
            streams[0], streams[1]
        )
    })
}

/// Whether the query as written (`unoptimized`) joins `streams` with an
/// inner join: the only join of streams that runs, whatever the
/// optimizer made of it.
pub(crate) fn written_inner(
    unoptimized: &LogicalPlan,
    streams: &[String; 2],
) -> Result<(), String> {
    let (join, _) = find(unoptimized, streams)?;
    match join.join_type {
        datafusion::logical_expr::JoinType::Inner => Ok(()),
        other => Err(format!(
            "a {other} join of two streams is not incremental yet: use an inner JOIN"
        )),
    }
}

/// Finds the join of `streams` in an optimized plan and the bound its
/// condition puts on `t0 − t1`.
pub(crate) fn derive(
    plan: &LogicalPlan,
    streams: [String; 2],
    columns: [String; 2],
) -> Result<IntervalJoin, String> {
    let (join, left_stream) = find(plan, &streams)?;
    let mut parts = Vec::new();
    if let Some(filter) = &join.filter {
        conjuncts(filter, &mut parts);
    }
    // Which side of the join a column is on, as a stream index.
    let stream_of = |c: &Column| -> Option<usize> {
        let on_left = join.left.schema().has_column(c);
        let on_right = join.right.schema().has_column(c);
        let side = match (on_left, on_right) {
            (true, false) => left_stream,
            (false, true) => 1 - left_stream,
            _ => return None,
        };
        (c.name == columns[side]).then_some(side)
    };
    let (mut lo, mut hi) = (i64::MIN, i64::MAX);
    for part in &parts {
        let Expr::BinaryExpr(BinaryExpr { left, op, right }) = part else {
            continue;
        };
        let (Some((a, oa)), Some((b, ob))) = (term(left), term(right)) else {
            continue;
        };
        let (Some(sa), Some(sb)) = (stream_of(&a), stream_of(&b)) else {
            continue;
        };
        if sa == sb {
            continue;
        }
        // ta + oa OP tb + ob  ⇔  ta − tb OP ob − oa.
        let (op, k) = if sa == 0 {
            (*op, ob - oa)
        } else {
            // t1 − t0 OP k  ⇔  t0 − t1 OP' −k.
            let flipped = match op {
                Operator::Lt => Operator::Gt,
                Operator::LtEq => Operator::GtEq,
                Operator::Gt => Operator::Lt,
                Operator::GtEq => Operator::LtEq,
                other => *other,
            };
            (flipped, oa - ob)
        };
        match op {
            Operator::GtEq | Operator::Gt => lo = lo.max(k),
            Operator::LtEq | Operator::Lt => hi = hi.min(k),
            Operator::Eq => {
                lo = lo.max(k);
                hi = hi.min(k);
            }
            _ => {}
        }
    }
    if lo == i64::MIN || hi == i64::MAX {
        return Err(format!(
            "a join of streams {} and {} needs a time bound on both sides so its state can be evicted: add {}.{} BETWEEN {}.{} - INTERVAL '10' SECOND AND {}.{} + INTERVAL '10' SECOND to the ON clause, or set state_ttl = '1h' on the sink to keep rows for a fixed time",
            streams[0],
            streams[1],
            streams[0],
            columns[0],
            streams[1],
            columns[1],
            streams[1],
            columns[1]
        ));
    }
    Ok(IntervalJoin {
        keys: equi_keys(join, left_stream),
        filters: filters_of(join, left_stream),
        streams,
        columns,
        lo_ms: lo,
        hi_ms: hi,
        ttl_ms: None,
        windowed: [false; 2],
    })
}

/// How a join's rows of each stream are buffered and found again: by
/// join key, so a batch reads back only the rows of the keys its new rows
/// carry (Flink's keyed join state), not everything buffered. Each batch
/// writes one entry per stream and key (its rows in Arrow's row format)
/// and one index entry by time, which eviction walks.
pub(crate) struct JoinBuffer {
    /// Per stream, the join key's columns in its schema; empty when the
    /// join has no equality of columns of one type (every row then has
    /// the empty key, and a batch reads every buffered row).
    keys: [Vec<usize>; 2],
    key_codec: Option<RowConverter>,
    rows: [RowConverter; 2],
    schemas: [SchemaRef; 2],
    /// Per stream, its filters under the join (physical, over the columns
    /// of their input, taken from the stream's rows by name).
    filters: [Vec<RowFilter>; 2],
}

/// A filter on a stream's rows: the predicate, which of the stream's
/// columns make its input, and that input's schema.
type RowFilter = (Arc<dyn PhysicalExpr>, Vec<usize>, SchemaRef);

/// When a stream's buffered rows stop being able to match.
pub(crate) enum RowTime<'a> {
    /// Each row's event time in this column (an interval join).
    Column(&'a str),
    /// One time for every row (the batch time, for a join kept by TTL).
    Fixed(i64),
}

impl JoinBuffer {
    pub(crate) fn new(join: &IntervalJoin, schemas: [SchemaRef; 2]) -> Result<Self, SqlError> {
        let codec = |schema: &SchemaRef| {
            RowConverter::new(
                schema
                    .fields()
                    .iter()
                    .map(|f| SortField::new(f.data_type().clone()))
                    .collect(),
            )
        };
        let rows = [codec(&schemas[0])?, codec(&schemas[1])?];
        // Floats are left to DataFusion's comparison (0.0 = -0.0, whose
        // bytes differ), as are keys the two sides hold in other types and
        // columns a side's stream does not have (a window's bounds): rows
        // are keyed by the equalities that remain.
        let key_type_at = |side: usize, i: usize| key_type(schemas[side].field(i).data_type());
        let mut keys: [Vec<usize>; 2] = Default::default();
        for (k0, k1) in join.keys[0].iter().zip(&join.keys[1]) {
            let (Ok(i0), Ok(i1)) = (schemas[0].index_of(k0), schemas[1].index_of(k1)) else {
                continue;
            };
            let t = key_type_at(0, i0);
            if t == key_type_at(1, i1) && !t.is_floating() {
                keys[0].push(i0);
                keys[1].push(i1);
            }
        }
        let key_codec = if keys[0].is_empty() {
            None
        } else {
            Some(RowConverter::new(
                keys[0]
                    .iter()
                    .map(|&i| SortField::new(key_type_at(0, i)))
                    .collect(),
            )?)
        };
        let filters = [
            physical_filters(join, 0, &schemas[0])?,
            physical_filters(join, 1, &schemas[1])?,
        ];
        Ok(Self {
            keys,
            key_codec,
            rows,
            schemas,
            filters,
        })
    }

    /// Which rows of `batch` (stream `side`) pass the filters under the
    /// join; `None`: all of them.
    fn passing(&self, side: usize, batch: &RecordBatch) -> Result<Option<BooleanArray>, SqlError> {
        let mut mask: Option<BooleanArray> = None;
        for (predicate, columns, schema) in &self.filters[side] {
            let input = RecordBatch::try_new(
                schema.clone(),
                columns.iter().map(|&i| batch.column(i).clone()).collect(),
            )?;
            let value = predicate.evaluate(&input)?.into_array(batch.num_rows())?;
            let Some(passes) = value.as_any().downcast_ref::<BooleanArray>() else {
                continue;
            };
            // NULL fails a WHERE.
            let passes = if passes.null_count() > 0 {
                datafusion::arrow::compute::prep_null_mask_filter(passes)
            } else {
                passes.clone()
            };
            mask = Some(match mask {
                Some(m) => datafusion::arrow::compute::and(&m, &passes)?,
                None => passes,
            });
        }
        Ok(mask)
    }

    /// Each row's join key (`None` where a key column is null: such a row
    /// matches nothing).
    fn keys_of(&self, side: usize, batch: &RecordBatch) -> Result<Option<KeyRows>, SqlError> {
        let Some(codec) = &self.key_codec else {
            return Ok(None);
        };
        let columns = self.keys[side]
            .iter()
            .map(|&i| key_column(batch.column(i)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut valid = vec![true; batch.num_rows()];
        for column in &columns {
            if let Some(nulls) = column.logical_nulls() {
                for (v, present) in valid.iter_mut().zip(nulls.iter()) {
                    *v &= present;
                }
            }
        }
        Ok(Some(KeyRows {
            rows: codec.convert_columns(&columns)?,
            valid,
        }))
    }

    /// The rows of stream `side` buffered by earlier batches (kept from
    /// `from` on) whose join key is one of `probe`'s, the other stream's
    /// new rows.
    pub(crate) fn matching(
        &self,
        db: &DB,
        cf: &ColumnFamily,
        side: usize,
        probe: &[RecordBatch],
        from: i64,
    ) -> Result<Vec<RecordBatch>, SqlError> {
        if probe.iter().all(|b| b.num_rows() == 0) {
            // No new row of the other stream: nothing to match this batch.
            return Ok(Vec::new());
        }
        // The probe's distinct keys, borrowed from their row-format buffers.
        let mut probe_keys = Vec::with_capacity(probe.len());
        for batch in probe {
            probe_keys.extend(self.keys_of(1 - side, batch)?);
        }
        let mut wanted: Vec<&[u8]> = Vec::new();
        if self.key_codec.is_none() {
            wanted.push(&[]);
        } else {
            for keys in &probe_keys {
                for (i, row) in keys.rows.iter().enumerate() {
                    if keys.valid[i] {
                        wanted.push(row.data());
                    }
                }
            }
            wanted.sort_unstable();
            wanted.dedup();
        }
        let mut values: Vec<Box<[u8]>> = Vec::new();
        let mut it = db.raw_iterator_cf(cf);
        for key in &wanted {
            let prefix = state_keys::join_rows_prefix(side as u8, key);
            it.seek(&prefix);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                if !k.starts_with(&prefix) {
                    break;
                }
                if state_keys::time_from_bytes(&k[prefix.len()..]) >= from {
                    values.push(v.into());
                }
                it.next();
            }
            it.status()?;
        }
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let parser = self.rows[side].parser();
        let mut rows = Vec::new();
        for value in &values {
            let mut at = 0;
            while at + 4 <= value.len() {
                let len = u32::from_le_bytes(value[at..at + 4].try_into().unwrap_or_default());
                let end = at + 4 + len as usize;
                let bytes = value.get(at + 4..end).ok_or_else(|| SqlError::State {
                    message: "a buffered join row is cut short".into(),
                })?;
                rows.push(parser.parse(bytes));
                at = end;
            }
        }
        let columns = self.rows[side].convert_rows(rows)?;
        Ok(vec![RecordBatch::try_new(
            self.schemas[side].clone(),
            columns,
        )?])
    }

    /// Buffers this batch's rows of stream `side`: one entry per join key
    /// under the newest time of its rows, and its index entry.
    pub(crate) fn store(
        &self,
        writes: &mut Vec<Change>,
        side: usize,
        batch_id: u64,
        batches: &[RecordBatch],
        time: RowTime<'_>,
        line: usize,
    ) -> Result<(), SqlError> {
        // Per key: its rows (length-prefixed) and their newest time.
        let mut groups: hashbrown::HashMap<Vec<u8>, (Vec<u8>, i64)> = hashbrown::HashMap::new();
        let mut kept = Vec::with_capacity(batches.len());
        for batch in batches.iter().filter(|b| b.num_rows() > 0) {
            match self.passing(side, batch)? {
                Some(mask) => kept.push(datafusion::arrow::compute::filter_record_batch(
                    batch, &mask,
                )?),
                None => kept.push(batch.clone()),
            }
        }
        for batch in kept.iter().filter(|b| b.num_rows() > 0) {
            let times = match time {
                RowTime::Column(column) => Some(event_times(batch, column, line)?),
                RowTime::Fixed(_) => None,
            };
            let keys = self.keys_of(side, batch)?;
            let rows = self.rows[side].convert_columns(batch.columns())?;
            for (i, row) in rows.iter().enumerate() {
                let key: &[u8] = match &keys {
                    Some(k) if !k.valid[i] => continue,
                    Some(k) => k.rows.row(i).data(),
                    None => &[],
                };
                let t = match (&times, &time) {
                    (Some(ts), _) => ts.value(i),
                    (None, RowTime::Fixed(t)) => *t,
                    (None, RowTime::Column(_)) => i64::MIN,
                };
                let (bytes, newest) = groups.entry_ref(key).or_insert((Vec::new(), i64::MIN));
                let data = row.data();
                bytes.extend_from_slice(&(data.len() as u32).to_le_bytes());
                bytes.extend_from_slice(data);
                *newest = (*newest).max(t);
            }
        }
        let side = side as u8;
        for (key, (rows, newest)) in groups {
            writes.push((
                state_keys::join_rows_key(side, &key, newest, batch_id),
                Some(rows),
            ));
            writes.push((
                state_keys::join_time_key(side, newest, batch_id, &key),
                Some(Vec::new()),
            ));
        }
        Ok(())
    }
}

/// Stream `side`'s filters as physical expressions over the columns of
/// their input, each taken from the stream's rows by name; a filter
/// reading a column the stream's rows lack is left out (the join applies
/// it anyway).
fn physical_filters(
    join: &IntervalJoin,
    side: usize,
    stream: &SchemaRef,
) -> Result<Vec<RowFilter>, SqlError> {
    let props = datafusion::execution::context::ExecutionProps::new();
    let mut out = Vec::new();
    for filter in &join.filters[side] {
        let columns: Option<Vec<usize>> = filter
            .input
            .fields()
            .iter()
            .map(|f| stream.index_of(f.name()).ok())
            .collect();
        let Some(columns) = columns else {
            continue;
        };
        if columns
            .iter()
            .zip(filter.input.fields())
            .any(|(&i, f)| stream.field(i).data_type() != f.data_type())
        {
            continue;
        }
        let predicate = datafusion::physical_expr::create_physical_expr(
            &filter.predicate,
            &filter.input,
            &props,
            &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext::default(
            ),
        )?;
        out.push((
            predicate,
            columns,
            Arc::new(filter.input.as_arrow().clone()),
        ));
    }
    Ok(out)
}

/// A batch's join keys in Arrow's row format, and which rows have one.
struct KeyRows {
    rows: datafusion::arrow::row::Rows,
    valid: Vec<bool>,
}

/// The type both streams' key columns are compared in, so `INT = BIGINT`
/// keys are the same bytes (and hash alike on many workers).
pub(crate) fn key_type(t: &DataType) -> DataType {
    match t {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => DataType::Int64,
        DataType::Float16 | DataType::Float32 => DataType::Float64,
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        other => other.clone(),
    }
}

/// A key column in its [`key_type`].
pub(crate) fn key_column(column: &ArrayRef) -> Result<ArrayRef, SqlError> {
    let common = key_type(column.data_type());
    if &common == column.data_type() {
        return Ok(column.clone());
    }
    Ok(cast(column, &common)?)
}

/// `column` of `batch` as milliseconds.
fn event_times(batch: &RecordBatch, column: &str, line: usize) -> Result<Int64Array, SqlError> {
    let times = cast(
        batch.column(batch.schema().index_of(column)?),
        &DataType::Int64,
    )?;
    times
        .as_any()
        .downcast_ref::<Int64Array>()
        .cloned()
        .ok_or_else(|| SqlError::Plan {
            line,
            message: format!("{column} is not a time"),
        })
}

/// Deletes the buffered rows of stream `side` whose newest time is before
/// `until`: nothing to come can match them.
pub(crate) fn evict(
    db: &DB,
    writes: &mut Vec<Change>,
    cf: &ColumnFamily,
    side: u8,
    until: i64,
) -> Result<(), SqlError> {
    let (from, until) = (
        state_keys::join_time_from(side, i64::MIN),
        state_keys::join_time_from(side, until),
    );
    for item in key_range(db, cf, &from, &until) {
        let (key, _) = item?;
        writes.push((state_keys::join_rows_of_time_key(&key), None));
        writes.push((key.to_vec(), None));
    }
    Ok(())
}

/// Rows of stream `side` an older Sluice buffered in slices by time (kept
/// from `from` on), each slice with its newest time and batch; every
/// legacy entry is deleted in `writes`, so the caller moves the rows into
/// the keyed layout in the same commit.
pub(crate) fn take_legacy(
    db: &DB,
    cf: &ColumnFamily,
    side: u8,
    from: i64,
    writes: &mut Vec<Change>,
) -> Result<Vec<(RecordBatch, i64, u64)>, SqlError> {
    let mut out = Vec::new();
    let (start, end) = (
        state_keys::join_from(side, i64::MIN),
        state_keys::join_end(side),
    );
    for item in key_range(db, cf, &start, &end) {
        let (key, value) = item?;
        writes.push((key.to_vec(), None));
        let (newest, batch_id) = state_keys::legacy_join_slice(&key);
        if newest < from {
            continue;
        }
        let reader = StreamReader::try_new(Cursor::new(value.as_ref()), None)?;
        for batch in reader {
            out.push((batch?, newest, batch_id));
        }
    }
    Ok(out)
}

/// A schema-preserving empty set of rows, when a stream has none buffered.
pub(crate) fn or_empty(
    rows: Vec<RecordBatch>,
    schema: &Arc<datafusion::arrow::datatypes::Schema>,
) -> Vec<RecordBatch> {
    if rows.is_empty() {
        vec![RecordBatch::new_empty(schema.clone())]
    } else {
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int32Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::arrow::ipc::writer::StreamWriter;

    fn db() -> (DB, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = rocksdb::Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let db = DB::open_cf(&opts, dir.path(), ["q"]).unwrap();
        (db, dir)
    }

    fn apply(db: &DB, writes: Vec<Change>) {
        let cf = db.cf_handle("q").unwrap();
        for (k, v) in writes {
            match v {
                Some(v) => db.put_cf(cf, k, v).unwrap(),
                None => db.delete_cf(cf, k).unwrap(),
            }
        }
    }

    /// Bids keyed by a BIGINT auction, auctions by an INT id.
    fn buffer() -> JoinBuffer {
        buffer_with(Default::default())
    }

    /// [`buffer`] with filters on the streams' rows under the join.
    fn buffer_with(filters: [Vec<SideFilter>; 2]) -> JoinBuffer {
        let bid = Arc::new(Schema::new(vec![
            Field::new("auction", DataType::Int64, true),
            Field::new("url", DataType::Utf8, true),
            Field::new("ts", DataType::Int64, false),
        ]));
        let auction = Arc::new(Schema::new(vec![Field::new("id", DataType::Int32, true)]));
        let join = IntervalJoin {
            streams: ["bid".into(), "auction".into()],
            columns: ["ts".into(), String::new()],
            lo_ms: i64::MIN,
            hi_ms: i64::MAX,
            ttl_ms: Some(1),
            keys: [vec!["auction".into()], vec!["id".into()]],
            filters,
            windowed: [false; 2],
        };
        JoinBuffer::new(&join, [bid, auction]).unwrap()
    }

    fn bids(auctions: &[Option<i64>], ts: &[i64]) -> RecordBatch {
        let b = buffer();
        let urls: Vec<String> = ts.iter().map(|t| format!("url-{t}")).collect();
        RecordBatch::try_new(
            b.schemas[0].clone(),
            vec![
                Arc::new(Int64Array::from(auctions.to_vec())),
                Arc::new(StringArray::from(urls)),
                Arc::new(Int64Array::from(ts.to_vec())),
            ],
        )
        .unwrap()
    }

    fn auctions(ids: &[i32]) -> RecordBatch {
        let b = buffer();
        RecordBatch::try_new(
            b.schemas[1].clone(),
            vec![Arc::new(Int32Array::from(ids.to_vec()))],
        )
        .unwrap()
    }

    fn times(rows: &[RecordBatch]) -> Vec<i64> {
        let mut out: Vec<i64> = rows
            .iter()
            .flat_map(|b| {
                let ts = b.column(2).as_any().downcast_ref::<Int64Array>().unwrap();
                ts.values().to_vec()
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn a_batch_reads_back_only_the_rows_of_its_keys_and_eviction_removes_every_entry() {
        let (db, _dir) = db();
        let cf = db.cf_handle("q").unwrap();
        let b = buffer();
        let mut writes = Vec::new();
        let first = bids(&[Some(1), Some(2), None, Some(1)], &[10, 20, 30, 40]);
        b.store(&mut writes, 0, 1, &[first], RowTime::Column("ts"), 1)
            .unwrap();
        apply(&db, writes);
        let mut writes = Vec::new();
        let second = bids(&[Some(1), Some(3)], &[50, 60]);
        b.store(&mut writes, 0, 2, &[second], RowTime::Column("ts"), 1)
            .unwrap();
        apply(&db, writes);

        // New auctions 1 (an INT, as the bids' BIGINT) and 7.
        let found = b.matching(&db, cf, 0, &[auctions(&[1, 7, 1])], i64::MIN);
        assert_eq!(times(&found.unwrap()), vec![10, 40, 50]);
        assert_eq!(
            times(
                &b.matching(&db, cf, 0, &[auctions(&[3, 2])], i64::MIN)
                    .unwrap()
            ),
            vec![20, 60]
        );
        assert!(
            b.matching(&db, cf, 0, &[auctions(&[9])], i64::MIN)
                .unwrap()
                .is_empty()
        );
        // The null-keyed bid (30) matches nothing and was not kept; rows
        // kept from 45 on: auction 1's second batch only.
        assert_eq!(
            times(&b.matching(&db, cf, 0, &[auctions(&[1])], 45).unwrap()),
            vec![50]
        );

        // Auction 1's first entry's newest row is 40; auction 2's is 20.
        let mut writes = Vec::new();
        evict(&db, &mut writes, cf, 0, 41).unwrap();
        assert_eq!(writes.len(), 4, "two entries and their index entries");
        apply(&db, writes);
        let left = b
            .matching(&db, cf, 0, &[auctions(&[1, 2, 3])], i64::MIN)
            .unwrap();
        assert_eq!(times(&left), vec![50, 60]);
        let mut writes = Vec::new();
        evict(&db, &mut writes, cf, 0, i64::MAX).unwrap();
        apply(&db, writes);
        assert_eq!(db.iterator_cf(cf, rocksdb::IteratorMode::Start).count(), 0);
    }

    #[test]
    fn rows_that_fail_their_streams_filter_are_not_buffered() {
        use datafusion::logical_expr::{col, lit};
        let (db, _dir) = db();
        let cf = db.cf_handle("q").unwrap();
        // The filter's input: the bids' columns, projected and reordered
        // as a scan under the join would have them.
        let input = Arc::new(
            datafusion::common::DFSchema::try_from(Schema::new(vec![
                Field::new("ts", DataType::Int64, false),
                Field::new("auction", DataType::Int64, true),
            ]))
            .unwrap(),
        );
        let b = buffer_with([
            vec![SideFilter {
                // The last conjunct is NULL from 40 on: NULL fails,
                // as in a WHERE.
                predicate: col("ts")
                    .gt(lit(15i64))
                    .and(col("auction").not_eq(lit(3i64)))
                    .and(
                        col("ts")
                            .not_eq(lit(datafusion::common::ScalarValue::Int64(None)))
                            .or(col("ts").lt(lit(40i64))),
                    ),
                input,
            }],
            Vec::new(),
        ]);
        let mut writes = Vec::new();
        let rows = bids(&[Some(1), Some(1), Some(3), Some(2)], &[10, 20, 30, 40]);
        b.store(&mut writes, 0, 1, &[rows], RowTime::Column("ts"), 1)
            .unwrap();
        apply(&db, writes);
        let found = b
            .matching(&db, cf, 0, &[auctions(&[1, 2, 3])], i64::MIN)
            .unwrap();
        assert_eq!(times(&found), vec![20]);
    }

    #[test]
    fn a_join_without_a_key_reads_every_row() {
        let (db, _dir) = db();
        let cf = db.cf_handle("q").unwrap();
        let mut b = buffer();
        b.keys = Default::default();
        b.key_codec = None;
        let mut writes = Vec::new();
        let rows = bids(&[Some(1), None], &[10, 20]);
        b.store(&mut writes, 0, 1, &[rows], RowTime::Fixed(5), 1)
            .unwrap();
        apply(&db, writes);
        let found = b
            .matching(&db, cf, 0, &[auctions(&[42])], i64::MIN)
            .unwrap();
        assert_eq!(times(&found), vec![10, 20]);
    }

    #[test]
    fn rows_in_the_layout_before_keys_are_read_once_and_deleted() {
        let (db, _dir) = db();
        let cf = db.cf_handle("q").unwrap();
        let rows = bids(&[Some(1), Some(2)], &[10, 20]);
        let mut bytes = Vec::new();
        let mut w = StreamWriter::try_new(&mut bytes, &rows.schema()).unwrap();
        w.write(&rows).unwrap();
        w.finish().unwrap();
        drop(w);
        db.put_cf(cf, state_keys::join_key(0, 20, 7, 0), &bytes)
            .unwrap();
        db.put_cf(cf, state_keys::join_key(0, 5, 6, 0), &bytes)
            .unwrap();
        let mut writes = Vec::new();
        let legacy = take_legacy(&db, cf, 0, 10, &mut writes).unwrap();
        assert_eq!(legacy.len(), 1, "the slice kept from 10 on");
        assert_eq!((legacy[0].1, legacy[0].2), (20, 7));
        assert_eq!(legacy[0].0, rows);
        assert_eq!(writes.iter().filter(|(_, v)| v.is_none()).count(), 2);
        apply(&db, writes);
        assert!(
            take_legacy(&db, cf, 0, i64::MIN, &mut Vec::new())
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn the_matches_watermark_is_what_eviction_keeps_of_the_windowed_stream() {
        // t0 − t1 ∈ [−10, 5]: a stream-0 row at t0 can still meet stream-1
        // rows to come while t0 ≥ W1 − 10; a stream-1 row while t1 ≥ W0 − 5.
        let mut join = IntervalJoin {
            streams: ["p".into(), "a".into()],
            columns: ["ts".into(), "ts".into()],
            lo_ms: -10,
            hi_ms: 5,
            ttl_ms: None,
            keys: Default::default(),
            filters: Default::default(),
            windowed: [false; 2],
        };
        assert_eq!(join.matches_watermark(&[Some(100), Some(100)]), None);
        join.windowed = [true, false];
        assert_eq!(join.matches_watermark(&[Some(100), Some(100)]), Some(90));
        assert_eq!(join.matches_watermark(&[Some(50), Some(100)]), Some(50));
        assert_eq!(join.matches_watermark(&[None, Some(100)]), None);
        assert_eq!(join.matches_watermark(&[Some(100), None]), None);
        join.windowed = [false, true];
        assert_eq!(join.matches_watermark(&[Some(100), Some(100)]), Some(95));
        assert_eq!(join.matches_watermark(&[Some(100), Some(20)]), Some(20));
        // Both windowed: the slower of the two.
        join.windowed = [true, true];
        assert_eq!(join.matches_watermark(&[Some(100), Some(100)]), Some(90));
        join.ttl_ms = Some(1000);
        assert_eq!(join.matches_watermark(&[Some(100), Some(100)]), None);
    }
}
