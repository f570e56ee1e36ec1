//! The checks of a query's options against its plan, made when the job
//! is submitted: output mode, `state_ttl`, the join's bound, windows over
//! the watermark's column. Each refusal says what to change.
//!
//! This module only decides; it never plans, runs or stores anything.

use datafusion::logical_expr::LogicalPlan;

use crate::aggregation::Aggregation;
use crate::decl::SinkDecl;
use crate::error::SqlError;
use crate::incremental::OutputMode;
use crate::join::{self, IntervalJoin};
use crate::watermark::Watermark;
use crate::window::WindowUse;

/// The output mode: the sink's `mode` option, or for the console the
/// script's (`sluice sql --mode`); update when neither says.
pub(crate) fn output_mode(
    sink: Option<&SinkDecl>,
    console_mode: Option<&str>,
    line: usize,
) -> Result<OutputMode, SqlError> {
    let text = match sink {
        Some(decl) => decl.options.get("mode").map(String::as_str),
        None => console_mode,
    };
    match text {
        None => Ok(OutputMode::Update),
        Some(text) => OutputMode::parse(text).map_err(|message| SqlError::Plan { line, message }),
    }
}

/// The sink's `state_ttl` in milliseconds (at least 1).
pub(crate) fn state_ttl(sink: Option<&SinkDecl>, line: usize) -> Result<Option<i64>, SqlError> {
    let Some(text) = sink.and_then(|d| d.options.get("state_ttl")) else {
        return Ok(None);
    };
    let ms = sluice_log::units::parse_millis(text).map_err(|m| SqlError::Plan {
        line,
        message: format!("state_ttl: {m}"),
    })?;
    Ok(Some(ms.max(1) as i64))
}

/// One of the two joined streams: its name and watermark.
pub(crate) struct JoinSide<'a> {
    pub name: &'a str,
    pub watermark: Option<&'a Watermark>,
}

/// What bounds a join of two streams' state: its ON clause and both
/// watermarks, or else the sink's `state_ttl`. An aggregation over the
/// join windowed by a stream's event time (`windows`) closes its windows
/// by the matches' watermark, which only a bound and both watermarks give.
pub(crate) fn join_bound(
    logical: &LogicalPlan,
    unoptimized: &LogicalPlan,
    sides: [JoinSide; 2],
    aggregation: Option<&Aggregation>,
    windows: &[WindowUse],
    ttl_ms: Option<i64>,
    line: usize,
) -> Result<IntervalJoin, SqlError> {
    let unsupported = |message: String| SqlError::Unsupported { line, message };
    if aggregation.is_some_and(|a| a.nested) {
        return Err(unsupported(
            "an aggregation over a windowed aggregation of a join of two streams is not incremental yet: write the windowed aggregation's rows to a sink and aggregate them in another job".into(),
        ));
    }
    let windowed = aggregation.and_then(|a| a.window.as_ref());
    if windowed.is_some_and(|w| w.session.is_some()) {
        return Err(unsupported(
            "session windows over a join of two streams are not incremental yet: window the join's matches with TUMBLE(…) or HOP(…) over one stream's event time".into(),
        ));
    }
    let [a, b] = sides;
    let names = [a.name.to_owned(), b.name.to_owned()];
    join::written_inner(unoptimized, &names).map_err(unsupported)?;
    let bounded = match (a.watermark, b.watermark) {
        (Some(wa), Some(wb)) => join::derive(
            logical,
            names.clone(),
            [wa.column.clone(), wb.column.clone()],
        ),
        _ => {
            let missing = if a.watermark.is_none() {
                a.name
            } else {
                b.name
            };
            Err(format!(
                "a join of two streams keeps rows until the other stream's watermark passes them: declare WATERMARK FOR … in CREATE STREAM {missing}, or set state_ttl = '1h' on the sink to keep rows for a fixed time"
            ))
        }
    };
    let mut join = match (bounded, ttl_ms) {
        (Ok(j), None) => j,
        // Over the join, the TTL bounds the aggregation's groups.
        (Ok(j), Some(_)) if aggregation.is_some() => j,
        (Ok(_), Some(_)) => return Err(unsupported(
            "state_ttl: this interval join's state is already bounded by its ON clause and the watermarks: remove state_ttl".into(),
        )),
        (Err(message), None) => return Err(unsupported(message)),
        (Err(_), Some(_)) if windowed.is_some() => return Err(unsupported(format!(
            "a windowed aggregation over a join of two streams closes a window once no match can still fall in it, which needs both streams' watermarks and a time bound in the ON clause ({}.{} BETWEEN {}.{} - INTERVAL '10' SECOND AND {}.{} + INTERVAL '10' SECOND): state_ttl cannot say when a window is complete",
            a.name,
            a.watermark.map_or("ts", |w| w.column.as_str()),
            b.name,
            b.watermark.map_or("ts", |w| w.column.as_str()),
            b.name,
            b.watermark.map_or("ts", |w| w.column.as_str()),
        ))),
        (Err(_), Some(ms)) => join::with_ttl(logical, names, ms).map_err(unsupported)?,
    };
    if windowed.is_some() {
        join.windowed = [a.name, b.name].map(|name| windows.iter().any(|u| u.stream == name));
        if !join.windowed.contains(&true) {
            return Err(unsupported(format!(
                "a windowed aggregation over a join of two streams is windowed by one stream's event time, whose watermark (held back by the join's bound) closes the windows: window the stream in FROM, as in FROM TUMBLE({}, {}, INTERVAL '10' SECOND) JOIN {} …",
                a.name,
                a.watermark.map_or("ts", |w| w.column.as_str()),
                b.name
            )));
        }
    }
    Ok(join)
}

/// The TTL of an aggregation's groups: `state_ttl` applies to
/// aggregations without windows (a window's state is evicted by the
/// watermark); over a join without aggregation the join carries it.
pub(crate) fn aggregation_ttl(
    ttl_ms: Option<i64>,
    aggregation: Option<&Aggregation>,
    joined: bool,
    line: usize,
) -> Result<Option<i64>, SqlError> {
    match (ttl_ms, aggregation) {
        (None, _) => Ok(None),
        (Some(ms), Some(a)) if a.window.is_none() => Ok(Some(ms)),
        (Some(_), Some(_)) => Err(SqlError::Unsupported {
            line,
            message: "state_ttl applies to aggregations without windows: a windowed aggregation's state is evicted by the watermark".into(),
        }),
        (Some(_), None) if joined => Ok(None),
        (Some(_), None) => Err(SqlError::Unsupported {
            line,
            message: "state_ttl applies to aggregations (GROUP BY) and joins of two streams: this query keeps no state that a TTL could bound".into(),
        }),
    }
}

/// Windows must be over the stream's event-time column, or the
/// watermark cannot close them.
pub(crate) fn check_windows(
    uses: &[WindowUse],
    stream: &str,
    watermark: Option<&Watermark>,
    line: usize,
) -> Result<(), SqlError> {
    for u in uses.iter().filter(|u| u.stream == stream) {
        if let Some(w) = watermark
            && w.column != u.column
        {
            return Err(SqlError::Unsupported {
                line,
                message: format!(
                    "the window is over {stream}.{}, but the stream's watermark is on {}: window by the event-time column {} so the watermark can close windows",
                    u.column, w.column, w.column
                ),
            });
        }
    }
    Ok(())
}

/// What each output mode needs, checked before any record is read.
pub(crate) fn check_mode(
    mode: OutputMode,
    aggregation: Option<&Aggregation>,
    watermark: Option<&Watermark>,
    stream: &str,
    line: usize,
) -> Result<(), SqlError> {
    let refuse = |message: String| Err(SqlError::Unsupported { line, message });
    match (mode, aggregation) {
        (OutputMode::Complete, None) => refuse(
            "complete mode needs an aggregation (GROUP BY): a query without one has no result to repeat; use mode = 'append' or 'update'".into(),
        ),
        (mode, Some(a))
            if a.window.is_some_and(|w| w.session.is_some()) && mode != OutputMode::Append =>
        {
            refuse(
                "session windows grow and merge as records arrive, so a row emitted before a session closes would stay behind under bounds that no longer exist: set mode = 'append' on the sink (sessions are emitted once, when the watermark passes their end)".into(),
            )
        }
        (mode, Some(a)) if a.outer.is_some() && mode != OutputMode::Update => refuse(format!(
            "an aggregation over an updating aggregation changes its rows whenever an inner group changes: set mode = 'update' on the sink, not '{}'",
            format!("{mode:?}").to_lowercase()
        )),
        (mode, Some(a)) if a.nested && mode != OutputMode::Append => refuse(
            "an aggregation over a windowed aggregation sees each window complete only in append mode: set mode = 'append' on the sink".into(),
        ),
        (OutputMode::Append, Some(a)) if a.window.is_none() => refuse(
            "append mode emits only final rows, and a GROUP BY without a window never finalizes: group by window_start, window_end of TUMBLE(…), HOP(…) or SESSION(…), or use mode = 'update'".into(),
        ),
        (OutputMode::Append, Some(_)) if watermark.is_none() => refuse(format!(
            "append mode needs a watermark to know when a window is final: declare WATERMARK FOR ts AS ts - INTERVAL '5' SECOND in CREATE STREAM {stream}, or use mode = 'update'"
        )),
        _ => Ok(()),
    }
}

/// Why a top-N cannot run as planned: it ranks rows that never change (a
/// stream's, or an inner join's matches; an aggregation's would need
/// retractions), and its rows are updates.
pub(crate) fn top_n_fits(
    plan: &datafusion::logical_expr::LogicalPlan,
    top: &crate::topn::TopN,
    mode: OutputMode,
) -> Result<(), String> {
    fn aggregates(plan: &datafusion::logical_expr::LogicalPlan) -> bool {
        matches!(
            plan,
            datafusion::logical_expr::LogicalPlan::Aggregate(_)
                | datafusion::logical_expr::LogicalPlan::Distinct(_)
        ) || plan.inputs().into_iter().any(aggregates)
    }
    if aggregates(plan) {
        return Err("a top-N over an aggregation ranks rows that change, which needs retractions (not supported yet): rank the stream's rows".into());
    }
    match mode {
        // Over a window's rows, each window's top rows are final once the
        // watermark passes its end (Flink's window Top-N).
        OutputMode::Append if top.window.is_some() => Ok(()),
        OutputMode::Update if top.ties => Err("RANK() keeps every row tied with the N-th, known only once the window closes: set mode = 'append' on the sink (each window's top rows are emitted once, when the watermark passes its end), or use ROW_NUMBER()".into()),
        OutputMode::Update => Ok(()),
        _ => Err(format!(
            "a top-N's rows change as better ones arrive: its sink takes them in update mode (each output row replaces the row of its group and rank), not mode = '{}'; a top-N partitioned by window_start, window_end of TUMBLE(…)/HOP(…) runs in append mode too, each window's rows emitted once it closes",
            format!("{mode:?}").to_lowercase()
        )),
    }
}
