//! `sluice explain`: the incremental plan of each query of a job — what
//! runs in parallel per slice of a batch, where partial results meet (the
//! shuffle), which state is kept and how it is evicted.
//!
//! This module only describes; it never plans, runs or writes.

use std::fmt::Write;
use std::sync::Arc;

use datafusion::physical_plan::{ExecutionPlan, displayable};

use crate::aggregation::Aggregation;
use crate::context::StaticTable;
use crate::decl::{Script, SinkDecl};
use crate::incremental::OutputMode;
use crate::join::IntervalJoin;
use crate::planner::QueryPlan;
use crate::stream::Format;
use crate::watermark::Watermark;

/// What a query reads, for the description.
struct Input<'a> {
    pub name: &'a str,
    pub topic: &'a str,
    pub format: &'a str,
    pub watermark: Option<&'a Watermark>,
}

/// Everything explained about one query.
struct Query<'a> {
    pub number: usize,
    pub line: usize,
    pub sink: Option<&'a SinkDecl>,
    pub mode: OutputMode,
    pub operator: &'a str,
    pub inputs: Vec<Input<'a>>,
    /// Tables joined: name, how they are read.
    pub tables: Vec<(&'a str, &'static str)>,
    /// The batch streams through the query (`crate::pipeline`).
    pub streaming: bool,
    pub plan: &'a Arc<dyn ExecutionPlan>,
    pub aggregation: Option<&'a Aggregation>,
    pub join: Option<&'a IntervalJoin>,
    pub top_n: Option<&'a crate::topn::TopN>,
    pub over: Option<&'a crate::over::StreamOver>,
    pub slices: usize,
}

/// Appends the description of a planned query to `out`; `tables` are
/// the job's, `slices` how many parallel slices a batch is cut into.
pub(crate) fn describe_plan(
    out: &mut String,
    plan: &QueryPlan,
    script: &Script,
    tables: &[StaticTable],
    slices: usize,
) {
    let formats: Vec<String> = plan
        .inputs
        .iter()
        .map(|i| {
            let format = script
                .streams
                .iter()
                .find(|d| d.name == i.shape.name)
                .and_then(|d| d.options.get("format").cloned())
                .unwrap_or_else(|| "text".into());
            if i.shape.format == Format::Json {
                let fields: Vec<&str> = i
                    .shape
                    .value_fields
                    .iter()
                    .map(|f| f.name().as_str())
                    .collect();
                format!("{format}, decoding {}", fields.join(", "))
            } else {
                format
            }
        })
        .collect();
    let query = Query {
        number: plan.number,
        line: plan.query.line,
        sink: plan.sink,
        mode: plan.mode,
        operator: &plan.operator,
        inputs: plan
            .inputs
            .iter()
            .zip(&formats)
            .map(|(i, f)| Input {
                name: &i.shape.name,
                topic: &i.topic,
                format: f,
                watermark: i.watermark.as_ref(),
            })
            .collect(),
        tables: tables
            .iter()
            .filter(|t| plan.reads.contains(&t.name))
            .map(|t| (t.name.as_str(), t.reading))
            .collect(),
        streaming: plan.streaming,
        plan: &plan.plan,
        aggregation: plan.aggregation.as_ref(),
        join: plan.join.as_ref(),
        top_n: plan.top_n.as_ref(),
        over: plan.over.as_ref(),
        slices,
    };
    describe(out, &query);
}

fn within(node: &Arc<dyn ExecutionPlan>, root: &Arc<dyn ExecutionPlan>) -> bool {
    Arc::ptr_eq(node, root) || root.children().iter().any(|c| within(node, c))
}

fn describe(out: &mut String, q: &Query) {
    describe_reads(out, q);
    let _ = writeln!(out, "  plan:");
    render(out, q, q.plan, 2);
    if let Some(over) = q.over {
        let _ = writeln!(
            out,
            "  state: CF state.{} — the stream's rows per partition in event-time order (Arrow row format), those the watermark has not passed also indexed by time; each batch stores its rows and emits, once, every row the watermark passes, computed with DataFusion's window function over {}",
            q.operator,
            over.frame.describe()
        );
        let _ = writeln!(
            out,
            "  eviction: a row no later row's frame can reach ({}) is deleted as the watermark moves",
            over.frame.describe()
        );
    }
    if let (Some(top), Some(a)) = (q.top_n, q.aggregation) {
        let _ = writeln!(
            out,
            "  ranking: a top {} over the aggregation's groups (PARTITION BY) — every group's row kept in its partition's order with an index from group to row (CF state.{}); each batch moves the changed groups' rows and compares each touched partition's first {} rows before and after: the ranks whose row changed are emitted, rows that left the top are deleted by the sink's key",
            top.n, q.operator, top.n
        );
        describe_aggregation(out, q, a);
        let _ = writeln!(out);
        return;
    }
    if let Some(top) = q.top_n.filter(|t| t.closing) {
        let _ = writeln!(
            out,
            "  state: CF state.{} — per group (PARTITION BY, which holds the window) its top {} rows{}, best first, each with its sort key (Arrow row format), and an index of the groups by their window's end; each batch merges its on-time rows into their groups and emits nothing until the watermark passes a window's end: then its groups' rows come out once, ranked, and are deleted (Flink's window Top-N; append mode)",
            q.operator,
            top.n,
            if top.ties {
                " and every row tied with the last (RANK)"
            } else {
                ""
            }
        );
        let _ = writeln!(out);
        return;
    }
    if let Some(top) = q.top_n {
        let _ = writeln!(
            out,
            "  state: CF state.{} — per group (PARTITION BY) its top {} rows, best first, each with its sort key (Arrow row format); each batch ranks its new rows, merges them into their groups' rows (a stored row ranks before a new one of the same sort key) and emits the ranks whose row changed, keyed by {}",
            q.operator,
            top.n,
            if top.rank_in_output {
                "group and rank"
            } else if top.n > 1 {
                "the sink's key"
            } else {
                "group"
            }
        );
        if let Some(why) = &top.deletes {
            let _ = writeln!(
                out,
                "  deletes: {why}: the rows the changed ranks held go through the rest of the query too, and those whose sink key no new row has are deleted"
            );
        }
        if let Some(over) = &top.over {
            let _ = writeln!(
                out,
                "  OVER window: every slot of the top-N (group, rank) is one row, kept in the window's partition and order with an index from slot to row (not expired); each batch moves the changed slots' rows and recomputes, with DataFusion's window function, the {} rows from each changed position on (each over the {} rows before it); they are updates keyed by the slot",
                over.preceding + 1,
                over.preceding
            );
        }
        if let Some(ttl) = top.ttl_ms {
            let _ = writeln!(
                out,
                "  eviction: state_ttl — a group not changed for {ttl} ms (batch time) is forgotten (an index by last change finds it); a later row starts it afresh"
            );
        }
        if let Some(j) = q.join {
            describe_join(out, q, j);
        }
        let _ = writeln!(out);
        return;
    }
    match (q.aggregation, q.join) {
        (Some(a), _) => describe_aggregation(out, q, a),
        (None, Some(j)) => describe_join(out, q, j),
        (None, None) if q.over.is_some() => {}
        (None, None) => {
            let _ = writeln!(out, "  state: none");
        }
    }
    let _ = writeln!(out);
}

/// Where the query's rows come from and go, and how a batch is read.
fn describe_reads(out: &mut String, q: &Query) {
    let sink = match q.sink {
        None => "the console".to_string(),
        Some(s) => format!(
            "sink {} ({})",
            s.name,
            s.options.get("type").map_or("console", String::as_str)
        ),
    };
    let mode = match q.mode {
        OutputMode::Update => "update",
        OutputMode::Append => "append",
        OutputMode::Complete => "complete",
    };
    let _ = writeln!(
        out,
        "query {} (line {}) → {sink}, {mode} mode",
        q.number, q.line
    );
    for i in &q.inputs {
        let watermark = i.watermark.map_or_else(
            || "no watermark".to_string(),
            |w| {
                if w.processing_time {
                    format!(
                        "processing time {} (each batch's time; the watermark is the batch's time)",
                        w.column
                    )
                } else {
                    format!(
                        "watermark {} − {} ms, idle partitions ignored after {} ms",
                        w.column, w.delay_ms, w.idle_timeout_ms
                    )
                }
            },
        );
        let _ = writeln!(
            out,
            "  reads stream {} ← topic {} ({}), {watermark}",
            i.name, i.topic, i.format
        );
    }
    for (t, reading) in &q.tables {
        let _ = writeln!(out, "  joins table {t} ({reading})");
    }
    let _ = writeln!(
        out,
        "  each batch: {} {} parallel slices; {}",
        if q.streaming {
            "read as it arrives, 1 MiB chunks through bounded channels decoded in"
        } else {
            "the records are decoded whole, in"
        },
        q.slices,
        if q.top_n.is_some_and(|t| !t.closing) && q.join.is_none() {
            "every record counts (a rank has no window to be late for)"
        } else if q.aggregation.is_some()
            || q.join.is_some()
            || q.over.is_some()
            || q.top_n.is_some()
        {
            "records behind a stream's watermark are dropped and counted (late records)"
        } else {
            "every record passes (stateless)"
        }
    );
}

/// The state an aggregation keeps and how it is evicted.
fn describe_aggregation(out: &mut String, q: &Query, a: &Aggregation) {
    let groups = a.partial().group_expr().expr().len();
    let schema = a.partial().schema();
    let names: Vec<&str> = (0..groups)
        .map(|i| schema.field(i).name().as_str())
        .collect();
    let _ = writeln!(
        out,
        "  state: CF state.{} — per group ({}) the accumulators' partial state, merged with each batch's partial aggregates and committed with the offsets",
        q.operator,
        names.join(", ")
    );
    let distinct: Vec<&str> = a
        .partial()
        .aggr_expr()
        .iter()
        .zip(&a.distinct)
        .filter(|(_, d)| **d)
        .map(|(e, _)| e.name())
        .collect();
    if !distinct.is_empty() {
        let _ = writeln!(
            out,
            "  distinct values: {} — one key per group and value seen (a batch reads those of groups that existed, in one multi-get); the group's state keeps the count, its values go with it",
            distinct.join(", ")
        );
    }
    match a.window {
        Some(w) if w.session.is_some() => {
            let gap = w.session.map_or(0, |s| s.gap_ms);
            let _ = writeln!(
                out,
                "  sessions: per key, windows closer than the gap ({gap} ms) merge into one session (state keyed by key and session start, indexed by session end); sessions the watermark passes are emitted once and deleted"
            );
        }
        Some(w) => {
            let _ = writeln!(
                out,
                "  eviction: groups keyed by window end ({}{}); windows the watermark passes are {} and deleted in one range scan",
                names[w.column],
                if w.to_end_ms > 0 {
                    format!(" + {} ms", w.to_end_ms)
                } else {
                    String::new()
                },
                if q.mode == OutputMode::Append {
                    "emitted once"
                } else {
                    "final"
                }
            );
        }
        None => {
            let _ = writeln!(
                out,
                "  eviction: none (not windowed): state grows with the number of groups"
            );
        }
    }
    if a.nested {
        let _ = writeln!(
            out,
            "  above the windowed aggregation, the plan runs per batch over the windows that closed in it"
        );
    }
    if let Some(outer) = &a.outer {
        let schema = outer.agg.partial().schema();
        let names: Vec<&str> = (0..outer.agg.partial().group_expr().expr().len())
            .map(|i| schema.field(i).name().as_str())
            .collect();
        let _ = writeln!(
            out,
            "  outer aggregation: per outer group ({}) the aggregates' states, each sum's count of values, each min's or max's values with how many rows have them, and the group's row count (same CF); each batch, a group of the inner aggregation whose values changed has its previous row taken back from its outer group and its new row added (retractions); only the outer groups that changed are emitted",
            names.join(", ")
        );
        if let Some(why) = &outer.may_empty {
            let _ = writeln!(
                out,
                "  deletes: {why}; a group left empty is deleted from the sink (a table deletes its key, a keyed topic gets a tombstone)"
            );
        }
    }
    if let Some(j) = q.join {
        let _ = writeln!(
            out,
            "  the aggregation runs over the join's new matches of each batch (both runs' partial aggregates merged once)"
        );
        describe_join(out, q, j);
    }
}

fn render(out: &mut String, q: &Query, node: &Arc<dyn ExecutionPlan>, depth: usize) {
    let where_ = match q.aggregation {
        None if q.join.is_some() => "per batch, over new × buffered rows",
        None => "per slice, in parallel",
        Some(a) => {
            let partial_input = &a.partial().children()[0];
            if Arc::ptr_eq(node, a.top()) {
                "merge: partial states of all slices + stored state, by group key"
            } else if node.name() == "AggregateExec"
                && within(node, a.top())
                && !within(node, partial_input)
            {
                "per slice: partial aggregate"
            } else if within(node, partial_input) {
                "per slice, in parallel"
            } else if within(node, a.top()) {
                "shuffle: partial aggregates meet by group key"
            } else if let Some(outer) = &a.outer
                && within(node, outer.agg.top())
            {
                "outer: changed rows taken back and added, merged with the stored outer groups"
            } else {
                "per batch, over the emitted groups"
            }
        }
    };
    let line = displayable(node.as_ref()).one_line().to_string();
    let _ = writeln!(
        out,
        "{}{}   [{where_}]",
        "  ".repeat(depth),
        line.trim_end()
    );
    for child in node.children() {
        render(out, q, child, depth + 1);
    }
}

/// The state an interval (or TTL-bounded) join keeps and its eviction.
fn describe_join(out: &mut String, q: &Query, j: &IntervalJoin) {
    let _ = writeln!(
        out,
        "  state: CF state.{} — each stream's on-time rows by join key ({}), one entry per key and batch (Arrow row format) and an index by time; each batch runs the query twice: new {} × the buffered {} of their keys and new {}, then the buffered {} of new {}'s keys × new {}",
        q.operator,
        if j.keys[0].is_empty() {
            "no equality of columns: every row under one key".to_string()
        } else {
            format!("{} = {}", j.keys[0].join(", "), j.keys[1].join(", "))
        },
        j.streams[0],
        j.streams[1],
        j.streams[1],
        j.streams[0],
        j.streams[1],
        j.streams[1]
    );
    if let Some(ttl) = j.ttl_ms {
        let _ = writeln!(
            out,
            "  eviction: state_ttl — rows are kept {ttl} ms (batch time) after the batch that brought them, then deleted; rows of the two streams that arrive further apart never match"
        );
    } else {
        let _ = writeln!(
            out,
            "  eviction: the ON clause bounds {}.{} − {}.{} to [{} ms, {} ms]; {} rows older than {}'s watermark {:+} ms and {} rows older than {}'s watermark {:+} ms can match nothing more and are deleted",
            j.streams[0],
            j.columns[0],
            j.streams[1],
            j.columns[1],
            j.lo_ms,
            j.hi_ms,
            j.streams[0],
            j.streams[1],
            j.lo_ms,
            j.streams[1],
            j.streams[0],
            -j.hi_ms
        );
    }
    for side in (0..2).filter(|&side| j.windowed[side]) {
        let other = 1 - side;
        let offset = if side == 0 { j.lo_ms } else { -j.hi_ms };
        let _ = writeln!(
            out,
            "  windows over the matches: no match to come has {}.{} below min({}'s watermark, {}'s watermark {:+} ms), the matches' watermark; a window of the aggregation closes when it passes the window's end",
            j.streams[side], j.columns[side], j.streams[side], j.streams[other], offset
        );
    }
}
