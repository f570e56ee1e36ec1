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

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::Column;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, LogicalPlan, Operator};
use rocksdb::{ColumnFamily, DB};

/// A state change to apply in the batch's commit: put (`Some`) or delete.
pub(crate) type Change = (Vec<u8>, Option<Vec<u8>>);

use crate::error::SqlError;
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
    /// which is how a join is split over many workers. Empty when an
    /// equality compares anything but columns.
    pub keys: [Vec<String>; 2],
}

/// The columns `join`'s equalities compare, per stream (`left_stream` is
/// the stream on its left side); empty if one compares an expression.
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
        match (column(l), column(r)) {
            (Some(l), Some(r)) => {
                keys[left_stream].push(l);
                keys[1 - left_stream].push(r);
            }
            _ => return Default::default(),
        }
    }
    keys
}

/// The streams a plan scans (table names of its scans among `streams`).
fn scanned(plan: &LogicalPlan, streams: &[String; 2], out: &mut Vec<usize>) {
    if let LogicalPlan::TableScan(scan) = plan
        && let Some(i) = streams.iter().position(|s| s == scan.table_name.table())
    {
        out.push(i);
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
        streams,
        columns: Default::default(),
        lo_ms: i64::MIN,
        hi_ms: i64::MAX,
        ttl_ms: Some(ttl_ms),
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
                if join.join_type != datafusion::logical_expr::JoinType::Inner {
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
        streams,
        columns,
        lo_ms: lo,
        hi_ms: hi,
        ttl_ms: None,
    })
}

/// Rows of stream `side` buffered by earlier batches, from those keyed
/// at `from` on (all: `i64::MIN`).
pub(crate) fn load(
    db: &DB,
    cf: &ColumnFamily,
    side: u8,
    from: i64,
) -> Result<Vec<RecordBatch>, SqlError> {
    let prefix = state_keys::join_from(side, from);
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(state_keys::join_end(side));
    let mut out = Vec::new();
    for item in db.iterator_cf_opt(
        cf,
        opts,
        rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward),
    ) {
        let (_, value) = item?;
        let reader = StreamReader::try_new(Cursor::new(value.as_ref()), None)?;
        for batch in reader {
            out.push(batch?);
        }
    }
    Ok(out)
}

/// Buffers this batch's rows of stream `side`, one entry per slice keyed
/// by its newest event time (with a TTL: the batch time).
pub(crate) fn store(
    writes: &mut Vec<Change>,
    side: u8,
    batch_id: u64,
    slices: &[(RecordBatch, i64)],
) -> Result<(), SqlError> {
    for (i, (rows, newest)) in slices.iter().enumerate() {
        if rows.num_rows() == 0 {
            continue;
        }
        let key = state_keys::join_key(side, *newest, batch_id, i as u32);
        let mut bytes = Vec::new();
        {
            let mut w = StreamWriter::try_new(&mut bytes, &rows.schema())?;
            w.write(rows)?;
            w.finish()?;
        }
        writes.push((key, Some(bytes)));
    }
    Ok(())
}

/// Deletes the buffered rows of stream `side` whose newest event time
/// (with a TTL: batch time) is before `until`: nothing to come can match
/// them.
pub(crate) fn evict(
    db: &DB,
    writes: &mut Vec<Change>,
    cf: &ColumnFamily,
    side: u8,
    until: i64,
) -> Result<(), SqlError> {
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_iterate_upper_bound(state_keys::join_from(side, until));
    for item in db.iterator_cf_opt(
        cf,
        opts,
        rocksdb::IteratorMode::From(
            &state_keys::join_from(side, i64::MIN),
            rocksdb::Direction::Forward,
        ),
    ) {
        let (key, _) = item?;
        writes.push((key.to_vec(), None));
    }
    Ok(())
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
