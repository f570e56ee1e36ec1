//! What a query aggregates: the one `GROUP BY` of its physical plan that
//! keeps state across batches, its partial phase, and the window among
//! its group columns. Plans that cannot run incrementally (ORDER BY or
//! LIMIT over a stream, grouping sets, DISTINCT aggregates other than
//! `count`, nested windowed aggregations outside append mode, an
//! aggregation over an updating one that cannot take rows back) are
//! refused here, with what to do.
//!
//! This module only reads plans; it never runs them or touches state.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};

use crate::error::SqlError;
use crate::retraction::Outer;
use crate::window::{WINDOW_KIND_META, WINDOW_SIZE_META};

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
    pub(crate) top: Arc<dyn ExecutionPlan>,
    /// Its partial phase over the batch's rows.
    pub(crate) partial: Arc<AggregateExec>,
    /// Set when it groups by a window.
    pub window: Option<WindowColumn>,
    /// Other aggregations run above it (over its closed windows).
    pub nested: bool,
    /// Per aggregate, whether it is `count(DISTINCT …)`: its partial state
    /// is the batch's distinct values (a list), its stored state a count,
    /// and every value seen is a key of its own (see
    /// [`crate::incremental`]).
    pub distinct: Vec<bool>,
    /// The `count(DISTINCT …)` aggregates (their indices) that count the
    /// same argument, whatever their `FILTER`s: they share one key per
    /// group and value, whose value says which of them counted it (as
    /// Flink's distinct state with a filter bitmap). At most 64 per set.
    pub distinct_sets: Vec<Vec<usize>>,
    /// The types of the stored state's columns: the partial phase's
    /// states, but a count for each `count(DISTINCT …)`.
    pub stored_types: Vec<DataType>,
    /// An aggregation above this one, without windows, that takes each
    /// changed group's previous row back (see [`crate::retraction`]).
    pub outer: Option<Box<Outer>>,
    /// OVER window functions run above it, partitioned by its window: in
    /// append mode each closed window's rows come out in one batch, whole,
    /// and the functions run over them (a rank within each window, as
    /// Flink's window Top-N).
    pub ranked: bool,
    /// A top-N ranks its groups (`ROW_NUMBER() … WHERE rn <= N` over an
    /// aggregation without windows, see [`crate::ranked`]).
    pub ranked_groups: bool,
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
        let role = crate::window::window_role(field);
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

/// The sorts DataFusion puts under an OVER window.
fn sorts(plan: &dyn ExecutionPlan) -> bool {
    matches!(plan.name(), "SortExec" | "SortPreservingMergeExec")
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
    // Aggregations from the top down, and OVER windows above them (each
    // with the sort DataFusion puts under it).
    let mut found: Vec<Aggregation> = Vec::new();
    let mut windows: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
    let mut stack: Vec<(Arc<dyn ExecutionPlan>, bool, bool)> = vec![(plan.clone(), false, false)];
    while let Some((node, below_aggregate, under_window)) = stack.pop() {
        let is_window = matches!(node.name(), "BoundedWindowAggExec" | "WindowAggExec");
        if !below_aggregate {
            if is_window {
                windows.push(node.clone());
            } else if !(under_window && sorts(node.as_ref())) {
                refuse_unbounded(node.name())?;
            }
        }
        if let Some(agg) = node.downcast_ref::<AggregateExec>() {
            let aggregation = aggregation_at(&node, agg, event_time)?;
            // Below the aggregation: what its partial phase reads.
            for child in aggregation.partial.children() {
                stack.push((child.clone(), true, false));
            }
            found.push(aggregation);
            continue;
        }
        // DataFusion may put projections between a window and its sort.
        let sorts_for_window = is_window
            || (under_window
                && (is_passthrough(node.as_ref())
                    || sorts(node.as_ref())
                    || node.name() == "ProjectionExec"));
        for child in node.children() {
            stack.push((child.clone(), below_aggregate, sorts_for_window));
        }
    }
    let mut inner = innermost(found)?;
    if !windows.is_empty() {
        let Some(agg) = inner.as_mut() else {
            return Err(OVER_NOT_INCREMENTAL.into());
        };
        if ranks_groups(agg, &windows) {
            agg.ranked_groups = true;
        } else {
            ranks_whole_windows(agg, &windows)?;
            agg.ranked = true;
        }
    }
    Ok(inner)
}

/// Whether the only OVER window above `agg` is a ROW_NUMBER() over the
/// groups of an aggregation without windows: a top-N over its groups
/// (see [`crate::ranked`]).
fn ranks_groups(agg: &Aggregation, windows: &[Arc<dyn ExecutionPlan>]) -> bool {
    let [window] = windows else {
        return false;
    };
    let exprs = crate::ranked::window_exprs(window);
    let exprs_numbered = matches!(exprs.as_slice(), [e] if e.name().starts_with("row_number"));
    exprs_numbered && agg.window.is_none() && !agg.nested && agg.outer.is_none()
}

const OVER_NOT_INCREMENTAL: &str = "OVER (…) window functions are not incremental yet: for the first row per key (ROW_NUMBER() … = 1), GROUP BY the key with first_value(col ORDER BY ts)";

/// Refuses OVER windows above `agg` unless each runs over whole windows
/// of it: partitioned by its window column (`window_start` or
/// `window_end`, however renamed), with only projections and filters
/// between them.
fn ranks_whole_windows(
    agg: &Aggregation,
    windows: &[Arc<dyn ExecutionPlan>],
) -> Result<(), String> {
    let Some(window) = agg
        .window
        .as_ref()
        .filter(|_| !agg.nested && agg.outer.is_none())
    else {
        return Err("an OVER window over an aggregation ranks rows that change: over an aggregation without windows only a top-N of its groups runs (ROW_NUMBER() OVER (PARTITION BY … ORDER BY …) AS rn … WHERE rn <= N); OVER (PARTITION BY window_start, window_end …) over one windowed aggregation in append mode ranks each window's rows when it closes".into());
    };
    let base: std::collections::HashSet<usize> = [window.column].into_iter().collect();
    for node in windows {
        let expressions = crate::ranked::window_exprs(node);
        if expressions.is_empty() {
            return Err(OVER_NOT_INCREMENTAL.into());
        }
        let input = node.children()[0].clone();
        let (windowed, _) = crate::retraction::derived_columns(&input, &agg.top, &base)
            .map_err(|why| format!("an OVER window over a windowed aggregation: {why}"))?;
        for expr in &expressions {
            let by_window = expr.partition_by().iter().any(|p| {
                p.downcast_ref::<datafusion::physical_plan::expressions::Column>()
                    .is_some_and(|c| windowed.contains(&c.index()))
            });
            if !by_window {
                return Err(format!(
                    "an OVER window over a windowed aggregation runs when each window closes, over its rows: {} must be PARTITION BY the window (window_start or window_end), or it would rank rows of windows still open",
                    expr.name()
                ));
            }
        }
    }
    Ok(())
}

/// The aggregation of a batch's plan: planned anew over the batch's
/// tables, it must be the one found when the job was planned.
pub(crate) fn expect(
    plan: &Arc<dyn ExecutionPlan>,
    event_time: Option<&str>,
    line: usize,
) -> Result<Aggregation, SqlError> {
    analyze(plan, event_time)
        .map_err(|message| SqlError::Unsupported { line, message })?
        .ok_or_else(|| SqlError::Plan {
            line,
            message: "the query lost its aggregation between batches".into(),
        })
}

/// Operators above every aggregation that need the whole, endless input.
fn refuse_unbounded(operator: &str) -> Result<(), String> {
    match operator {
        "SortExec" | "SortPreservingMergeExec" => Err("ORDER BY over an unbounded stream never finishes: sort each batch's output in the sink, or aggregate first".into()),
        "GlobalLimitExec" | "LocalLimitExec" => Err("LIMIT over an unbounded stream is not incremental: remove it (the console shows the first rows of every batch)".into()),
        "BoundedWindowAggExec" | "WindowAggExec" => Err(OVER_NOT_INCREMENTAL.into()),
        _ => Ok(()),
    }
}

/// The aggregation whose top node is `node` (`agg`): its partial phase,
/// checked to be storable and mergeable.
fn aggregation_at(
    node: &Arc<dyn ExecutionPlan>,
    agg: &AggregateExec,
    event_time: Option<&str>,
) -> Result<Aggregation, String> {
    const GROUPING_SETS: &str = "GROUPING SETS, CUBE and ROLLUP are not incremental yet";
    if !agg.group_expr().is_single() {
        return Err(GROUPING_SETS.into());
    }
    // Final ← (repartition/coalesce)* ← Partial is one aggregation.
    let partial = match agg.mode() {
        AggregateMode::Final | AggregateMode::FinalPartitioned => {
            let mut child = agg.input().clone();
            while is_passthrough(child.as_ref()) {
                child = child.children()[0].clone();
            }
            let Some(p) = child.downcast_ref::<AggregateExec>() else {
                return Err("unexpected plan: a final aggregate without a partial one".into());
            };
            p.clone()
        }
        _ => agg.clone(),
    };
    // ROLLUP's final phase groups by plain columns; its partial
    // phase holds the grouping sets.
    if !partial.group_expr().is_single() {
        return Err(GROUPING_SETS.into());
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
    for f in partial.schema().fields() {
        if RowConverter::new(vec![SortField::new(f.data_type().clone())]).is_err() {
            return Err(format!(
                "aggregate state {} of type {} cannot be stored",
                f.name(),
                f.data_type()
            ));
        }
    }
    let window = window_column(&partial, event_time)?;
    let distinct = distinct_counts(&partial, window.as_ref())?;
    let mut stored_types = Vec::new();
    for (expr, &counted) in partial.aggr_expr().iter().zip(&distinct) {
        if counted {
            stored_types.push(DataType::Int64);
        } else {
            let states = expr.state_fields().map_err(|e| e.to_string())?;
            stored_types.extend(states.iter().map(|f| f.data_type().clone()));
        }
    }
    let distinct_sets = distinct_sets(&partial, &distinct);
    Ok(Aggregation {
        top: node.clone(),
        partial: Arc::new(partial),
        window,
        nested: false,
        distinct,
        distinct_sets,
        stored_types,
        outer: None,
        ranked: false,
        ranked_groups: false,
    })
}

/// Which aggregates of `partial` are `count(DISTINCT …)`; other DISTINCT
/// aggregates are refused. The count is kept exactly, one key per group
/// and distinct value, so it can neither be merged from two sessions nor
/// outlive a value's expiry without its keys.
fn distinct_counts(
    partial: &AggregateExec,
    window: Option<&WindowColumn>,
) -> Result<Vec<bool>, String> {
    let mut distinct = Vec::new();
    for expr in partial.aggr_expr() {
        if !expr.is_distinct() {
            distinct.push(false);
            continue;
        }
        if !expr.fun().name().eq_ignore_ascii_case("count") {
            return Err(format!(
                "{}: of the DISTINCT aggregates only count(DISTINCT …) is incremental: aggregate the distinct values in a subquery (SELECT DISTINCT … ) instead",
                expr.name()
            ));
        }
        if expr.expressions().len() != 1 {
            return Err(format!(
                "{}: count(DISTINCT …) of more than one column is not incremental: count the distinct values of one column, e.g. of concat_ws('|', a, b)",
                expr.name()
            ));
        }
        if window.is_some_and(|w| w.session.is_some()) {
            return Err(format!(
                "{}: count(DISTINCT …) over session windows is not incremental (sessions merge, and their sets of values with them): use TUMBLE or HOP windows, or approx_distinct(…)",
                expr.name()
            ));
        }
        let states = expr.state_fields().map_err(|e| e.to_string())?;
        if states.len() != 1 || !matches!(states[0].data_type(), DataType::List(_)) {
            return Err(format!(
                "{}: unexpected partial state {:?} of count(DISTINCT …)",
                expr.name(),
                states.iter().map(|f| f.data_type()).collect::<Vec<_>>()
            ));
        }
        distinct.push(true);
    }
    Ok(distinct)
}

/// The `count(DISTINCT …)` aggregates grouped by the argument they count
/// (in order of first appearance), at most 64 per set: one bit each.
fn distinct_sets(partial: &AggregateExec, distinct: &[bool]) -> Vec<Vec<usize>> {
    let mut sets: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, expr) in partial.aggr_expr().iter().enumerate() {
        if !distinct[i] {
            continue;
        }
        let argument = expr
            .expressions()
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(",");
        match sets
            .iter_mut()
            .find(|(a, members)| *a == argument && members.len() < 64)
        {
            Some((_, members)) => members.push(i),
            None => sets.push((argument, vec![i])),
        }
    }
    sets.into_iter().map(|(_, members)| members).collect()
}

/// Of the aggregations found top down, the innermost: the one whose
/// state is kept. Those above it must each see whole windows.
fn innermost(mut found: Vec<Aggregation>) -> Result<Option<Aggregation>, String> {
    let Some(mut inner) = found.pop() else {
        return Ok(None);
    };
    if !found.is_empty() {
        // An aggregation over one without windows takes back each changed
        // group's previous row and adds its new one.
        if inner.window.is_none() {
            let outer = found.pop().filter(|_| found.is_empty());
            let Some(outer) = outer.filter(|o| o.window.is_none()) else {
                return Err("only one aggregation, without windows, can run over an aggregation without windows (for distinct counts, count(DISTINCT …) is exact in one aggregation)".into());
            };
            inner.outer = Some(Box::new(Outer::of(outer, &inner)?));
            return Ok(Some(inner));
        }
        if found.iter().any(|outer| outer.window.is_none()) {
            return Err("an aggregation over a windowed aggregation must group by its window_start or window_end, so each group is complete when the window closes".into());
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
    let keys = (0..groups)
        .map(|i| schema.field(i).data_type().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut states = agg
        .stored_types
        .iter()
        .map(DataType::to_string)
        .collect::<Vec<_>>()
        .join(",");
    if let Some(outer) = &agg.outer {
        let (outer_keys, _) = state_signature(&outer.agg);
        let outer_states = outer
            .stored_types()
            .iter()
            .map(DataType::to_string)
            .collect::<Vec<_>>()
            .join(",");
        states = format!("{states});outer{outer_keys}({outer_states}");
    }
    (format!("({keys})"), format!("({states})"))
}
