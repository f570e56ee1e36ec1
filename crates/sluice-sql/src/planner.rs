//! Planning a query: a pure function from a query of the script to a
//! [`QueryPlan`], the description both `sluice explain` and the runner
//! use — the streams it reads and the columns it decodes of each, output
//! mode, state TTL, join bound, whether the batch streams through it, and
//! the layout of the state it keeps. Every refusal happens here, before
//! any record is read.
//!
//! This module opens no source, writes nothing and runs no query over
//! data: DataFusion plans each query over empty batches.

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::ExecutionPlan;
use sluice_engine::checkpoint::OperatorMeta;

use crate::aggregation::{self, Aggregation};
use crate::checks::{self, JoinSide};
use crate::context::StaticTable;
use crate::context::{empty_streams, session_over};
use crate::decl::{QueryDecl, Script, SinkDecl, StreamDecl};
use crate::error::{SqlError, located};
use crate::incremental::OutputMode;
use crate::join::IntervalJoin;
use crate::over;
use crate::stream::{self, StreamShape};
use crate::topn::{self, TopN};
use crate::watermark::{self, Watermark};
use crate::window::WindowUse;

/// One stream a query reads.
pub(crate) struct StreamInput {
    /// Its decoder, projected to the columns the query uses.
    pub shape: StreamShape,
    pub watermark: Option<Watermark>,
    /// The stream's topic (its source's name in planned batches).
    pub topic: String,
}

/// What a query is, as planned when the job is submitted.
pub(crate) struct QueryPlan<'s> {
    /// 1-based position among the script's queries.
    pub number: usize,
    pub query: &'s QueryDecl,
    /// `None`: the console.
    pub sink: Option<&'s SinkDecl>,
    /// The name of its output and of its state's column family.
    pub operator: String,
    pub inputs: Vec<StreamInput>,
    /// Streams and tables the query reads.
    pub reads: BTreeSet<String>,
    pub mode: OutputMode,
    /// Groups not updated for this long (batch time) are forgotten.
    pub state_ttl_ms: Option<i64>,
    pub join: Option<IntervalJoin>,
    pub aggregation: Option<Aggregation>,
    /// A top-N per group (`ROW_NUMBER() … WHERE rn <= N`).
    pub top_n: Option<TopN>,
    /// An OVER aggregate over the stream's own rows.
    pub over: Option<over::StreamOver>,
    /// The batch flows through the query as it is read (`pipeline`)
    /// instead of being decoded whole first.
    pub streaming: bool,
    /// The state it keeps, for the checkpoint's registry.
    pub state: Option<OperatorMeta>,
    /// The physical plan over empty batches.
    pub plan: Arc<dyn ExecutionPlan>,
}

impl QueryPlan<'_> {
    /// Holds a whole batch in memory: its decoded rows or its output.
    pub(crate) fn holds_whole_batches(&self) -> bool {
        !self.streaming || self.aggregation.is_none()
    }
}

/// DataFusion's plans of a query over empty batches.
struct Planned {
    /// As written: a filter no row can pass leaves no scan in the
    /// optimized plan, yet the query reads its stream.
    unoptimized: LogicalPlan,
    logical: LogicalPlan,
    physical: Arc<dyn ExecutionPlan>,
    windows: Vec<WindowUse>,
}

/// Plans the queries of one script.
pub(crate) struct Planner<'s> {
    pub script: &'s Script,
    /// Every declared stream's decoder.
    pub shapes: &'s [StreamShape],
    pub tables: &'s [StaticTable],
    pub runtime: &'s tokio::runtime::Runtime,
    /// Slices a batch is cut into (DataFusion partitions).
    pub slices: usize,
}

impl<'s> Planner<'s> {
    /// Plans query `number` (1-based) of the script.
    pub(crate) fn plan(
        &self,
        number: usize,
        query: &'s QueryDecl,
    ) -> Result<QueryPlan<'s>, SqlError> {
        let line = query.line;
        let unsupported = |message: String| SqlError::Unsupported { line, message };
        let planned = self.plan_sql(query, self.tables)?;
        let reads = self.reads(&planned, line)?;
        let inputs = self.inputs(&planned, &reads, line)?;
        aggregation::check_logical(&planned.logical).map_err(unsupported)?;
        let event_time = match inputs.as_slice() {
            [only] => only.watermark.as_ref().map(|w| w.column.as_str()),
            _ => None,
        };
        let sink = self.sink_of(query)?;
        let mode = checks::output_mode(sink, self.script.console_mode.as_deref(), line)?;
        // A top-N's window and the sort under it run over each batch's
        // new rows only; the ranking across batches is the state's.
        // An OVER aggregate over a stream's own rows runs in event time,
        // each row emitted once the watermark passes it.
        let windowed_rows = topn::has_window(&planned.logical)
            && !topn::over_aggregation(&planned.logical)
            && over::aggregates_rows(&planned.logical);
        let over = if windowed_rows {
            let [input] = inputs.as_slice() else {
                return Err(unsupported(
                    "an OVER window over a join of streams is not incremental yet: aggregate OVER one stream's rows, or rank the join's matches (ROW_NUMBER() … WHERE rn <= N)".into(),
                ));
            };
            let Some(watermark) = input.watermark.as_ref().filter(|w| !w.processing_time) else {
                return Err(unsupported(format!(
                    "an OVER window over a stream runs in event time, each row final once the watermark passes it: declare WATERMARK FOR <time column> AS <time column> - INTERVAL '5' SECOND in CREATE STREAM {}",
                    input.shape.name
                )));
            };
            Some(over::recognize_stream(&planned.logical, &watermark.column).map_err(unsupported)?)
        } else {
            None
        };
        let top_n = if topn::has_window(&planned.logical)
            && !topn::over_aggregation(&planned.logical)
            && over.is_none()
        {
            let top = topn::recognize(&planned.logical).map_err(unsupported)?;
            checks::top_n_fits(&planned.logical, &top, mode).map_err(unsupported)?;
            if mode == OutputMode::Append {
                // A window top-N: each window's rows once it closes.
                let [input] = inputs.as_slice() else {
                    return Err(unsupported("a window top-N over a join of streams is not incremental yet: rank one stream's rows in append mode, or the join's matches in update mode".into()));
                };
                if input.watermark.is_none() {
                    return Err(unsupported(format!(
                        "a window top-N emits each window's rows once the watermark passes its end: declare WATERMARK FOR <time column> AS <time column> - INTERVAL '5' SECOND in CREATE STREAM {}",
                        input.shape.name
                    )));
                }
                if top.over.is_some() {
                    return Err(unsupported(
                        "an OVER aggregate over a window top-N's rows is not incremental yet"
                            .into(),
                    ));
                }
                if checks::state_ttl(sink, line)?.is_some() {
                    return Err(unsupported("state_ttl: a window top-N's groups are deleted when the watermark closes their window: remove state_ttl".into()));
                }
            }
            Some(TopN {
                closing: mode == OutputMode::Append,
                deletes: top.deletes.filter(|_| mode != OutputMode::Append),
                ..top
            })
        } else {
            None
        };
        let aggregation = match (&top_n, &over) {
            (None, None) => {
                aggregation::analyze(&planned.physical, event_time).map_err(unsupported)?
            }
            _ => None,
        };
        // A top-N over an aggregation's groups: the aggregation keeps its
        // state, the ranking every group's row (see `ranked`).
        let top_n = match aggregation.as_ref().filter(|a| a.ranked_groups) {
            None => top_n,
            Some(agg) => {
                let top = topn::recognize(&planned.logical).map_err(unsupported)?;
                if top.over.is_some() {
                    return Err(unsupported(
                        "an OVER window over a top-N over an aggregation is not incremental yet"
                            .into(),
                    ));
                }
                if inputs.len() > 1 {
                    return Err(unsupported("a top-N over an aggregation of a join of streams is not incremental yet: rank the join's matches, or aggregate one stream".into()));
                }
                if mode != OutputMode::Update {
                    return Err(unsupported(format!(
                        "a top-N over an aggregation changes as the groups do: its sink takes it in update mode, not mode = '{}'",
                        format!("{mode:?}").to_lowercase()
                    )));
                }
                if let Some(why) = crate::ranked::refusal(&planned.physical, agg) {
                    return Err(unsupported(why));
                }
                Some(TopN {
                    deletes: Some(
                        "a top-N over an aggregation loses a row when a group falls out of its top N".into(),
                    ),
                    ..top
                })
            }
        };
        if aggregation.as_ref().is_some_and(|a| a.ranked) && mode != OutputMode::Append {
            return Err(unsupported(format!(
                "an OVER window over a windowed aggregation runs over each window's rows once the window closes, so its sink takes them in append mode (mode = 'append'), not mode = '{}'",
                format!("{mode:?}").to_lowercase()
            )));
        }
        let ttl_ms = checks::state_ttl(sink, line)?;
        let join = match inputs.as_slice() {
            [a, b] => Some(checks::join_bound(
                &planned.logical,
                &planned.unoptimized,
                [side(a), side(b)],
                aggregation.as_ref(),
                &planned.windows,
                ttl_ms,
                line,
            )?),
            _ => None,
        };
        // A top-N's groups expire by the TTL (and a join's rows under it).
        let top_n = top_n.map(|top| TopN { ttl_ms, ..top });
        let state_ttl_ms = match &top_n {
            Some(_) => None,
            None => checks::aggregation_ttl(ttl_ms, aggregation.as_ref(), join.is_some(), line)?,
        };
        for input in &inputs {
            checks::check_windows(
                &planned.windows,
                &input.shape.name,
                input.watermark.as_ref(),
                line,
            )?;
        }
        checks::check_mode(
            mode,
            aggregation.as_ref(),
            inputs[0].watermark.as_ref(),
            &inputs[0].shape.name,
            line,
        )?;
        let streaming = top_n.is_none()
            && over.is_none()
            && streams_as_read(&planned, &inputs, join.is_some(), aggregation.is_some());
        let operator = query
            .sink
            .clone()
            .map_or_else(|| format!("query-{number}"), |s| format!("insert-{s}"));
        let state = match (&top_n, &over) {
            (Some(top), None) if aggregation.is_some() => {
                state_layout(&operator, aggregation.as_ref(), join.as_ref(), &inputs).map(|meta| {
                    sluice_engine::checkpoint::OperatorMeta {
                        kind: format!("{} ranked top-{}", meta.kind, top.n),
                        state_type: format!(
                            "{}; ranked {} by {}",
                            meta.state_type, top.signature.0, top.signature.1
                        ),
                        ..meta
                    }
                })
            }
            (Some(top), _) => Some(topn::state_meta(&operator, top)),
            (None, Some(over)) => Some(sluice_engine::checkpoint::OperatorMeta {
                name: operator.clone(),
                kind: "sql over".into(),
                key_type: format!("{:?}", over.frame),
                state_type: over.signature.clone(),
            }),
            (None, None) => state_layout(&operator, aggregation.as_ref(), join.as_ref(), &inputs),
        };
        Ok(QueryPlan {
            number,
            query,
            sink,
            operator,
            inputs,
            reads: reads.all,
            mode,
            state_ttl_ms,
            join,
            aggregation,
            top_n,
            over,
            streaming,
            state,
            plan: planned.physical,
        })
    }

    /// Plans the query's SQL over empty batches of every declared stream
    /// (with the static tables `known`).
    fn plan_sql(&self, query: &QueryDecl, known: &[StaticTable]) -> Result<Planned, SqlError> {
        let (session, window_uses) = session_over(
            empty_streams(self.shapes, self.slices),
            known,
            &self.script.functions,
        )?;
        let (unoptimized, logical, physical) = self
            .runtime
            .block_on(async {
                let df = session.sql(&query.sql).await?;
                let unoptimized = df.logical_plan().clone();
                let logical = session.state().optimize(&unoptimized)?;
                Ok::<_, datafusion::error::DataFusionError>((
                    unoptimized,
                    logical,
                    df.create_physical_plan().await?,
                ))
            })
            .map_err(|e| located(&e, query.line, query.column))?;
        let windows = sluice_log::common::mutex(&window_uses).clone();
        Ok(Planned {
            unoptimized,
            logical,
            physical,
            windows,
        })
    }

    /// The schema of what a query writes (a result table of this job
    /// takes its columns from it), with the tables loaded so far.
    pub(crate) fn output_schema(
        &self,
        writer: &QueryDecl,
        known: &[StaticTable],
    ) -> Result<SchemaRef, SqlError> {
        Ok(self.plan_sql(writer, known)?.physical.schema())
    }

    /// The streams and tables the query reads, and at most two streams.
    fn reads(&self, planned: &Planned, line: usize) -> Result<Reads, SqlError> {
        let optimized_scans = scans(&planned.logical);
        let windowed: BTreeSet<String> = planned.windows.iter().map(|u| u.stream.clone()).collect();
        let mut all: BTreeSet<String> = scans(&planned.unoptimized).into_iter().collect();
        all.extend(windowed.iter().cloned());
        let streams = self
            .script
            .streams
            .iter()
            .filter(|d| all.contains(&d.name))
            .count();
        if streams == 0 {
            return Err(SqlError::Plan {
                line,
                message: format!(
                    "the query reads no declared stream (streams: {})",
                    self.script
                        .streams
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if streams > 2 {
            return Err(SqlError::Unsupported {
                line,
                message: format!(
                    "the query reads {streams} streams; joins of more than two streams are not incremental yet"
                ),
            });
        }
        Ok(Reads {
            all,
            optimized_scans,
            windowed,
        })
    }

    /// Each stream the query reads: its topic, watermark and the columns
    /// to decode.
    fn inputs(
        &self,
        planned: &Planned,
        reads: &Reads,
        line: usize,
    ) -> Result<Vec<StreamInput>, SqlError> {
        let used = used_columns(&planned.logical);
        let decls: Vec<(&StreamDecl, &StreamShape)> = self
            .script
            .streams
            .iter()
            .zip(self.shapes)
            .filter(|(d, _)| reads.all.contains(&d.name))
            .collect();
        let mut inputs = Vec::with_capacity(decls.len());
        for (decl, shape) in decls {
            let topic = decl
                .options
                .get("topic")
                .cloned()
                .unwrap_or_else(|| shape.name.clone());
            let watermark = watermark::declared(decl, &shape.schema, line)?;
            let mut needed = used.clone();
            if let Some(w) = &watermark {
                needed.insert(w.column.clone());
            }
            // A stream the optimizer removed (no row can pass) is planned
            // again each batch from the query's text: keep every column.
            // (Decoding every column of a windowed stream made Nexmark q5
            // 40 % slower: HOP copies each row's columns per window.)
            let optimized_away =
                !reads.optimized_scans.contains(&decl.name) && !reads.windowed.contains(&decl.name);
            let shape = if optimized_away {
                shape.clone()
            } else {
                shape.project(&needed)
            };
            inputs.push(StreamInput {
                shape,
                watermark,
                topic,
            });
        }
        Ok(inputs)
    }

    fn sink_of(&self, query: &QueryDecl) -> Result<Option<&'s SinkDecl>, SqlError> {
        let Some(name) = &query.sink else {
            return Ok(None);
        };
        match self.script.sinks.iter().find(|s| &s.name == name) {
            Some(decl) => Ok(Some(decl)),
            None => Err(SqlError::Plan {
                line: query.line,
                message: format!("no sink {name}"),
            }),
        }
    }
}

/// What a query reads, from its plans.
struct Reads {
    /// Streams and tables, from the query as written and its windows.
    all: BTreeSet<String>,
    /// The optimized plan's scans (a table scanned twice appears twice).
    optimized_scans: Vec<String>,
    /// Streams read through a window function (whose scan has the
    /// function's name).
    windowed: BTreeSet<String>,
}

fn side(input: &StreamInput) -> JoinSide<'_> {
    JoinSide {
        name: &input.shape.name,
        watermark: input.watermark.as_ref(),
    }
}

/// A query that reads its one stream once, with nothing to apply to the
/// whole batch first (windows, join buffers, late records before an
/// aggregation, dead letters written per batch), reads the batch as it
/// arrives.
fn streams_as_read(
    planned: &Planned,
    inputs: &[StreamInput],
    joined: bool,
    aggregating: bool,
) -> bool {
    let [only] = inputs else {
        return false;
    };
    let scans_of_stream = scans(&planned.logical)
        .iter()
        .filter(|t| **t == only.shape.name)
        .count();
    !joined
        && planned.windows.is_empty()
        && scans_of_stream == 1
        && !matches!(only.shape.on_error, stream::OnError::DeadLetter(_))
        && !(aggregating && only.watermark.is_some())
}

/// The state a query keeps, as the checkpoint's registry records it.
fn state_layout(
    operator: &str,
    aggregation: Option<&Aggregation>,
    join: Option<&IntervalJoin>,
    inputs: &[StreamInput],
) -> Option<OperatorMeta> {
    match (aggregation, join) {
        (Some(a), _) => {
            let (key_type, state_type) = aggregation::state_signature(a);
            let kind = if a.window.is_some() {
                "sql window aggregate".into()
            } else if let Some(j) = join {
                format!(
                    "sql aggregate over join of {} and {}",
                    j.streams[0], j.streams[1]
                )
            } else {
                "sql aggregate".into()
            };
            Some(OperatorMeta {
                name: operator.to_owned(),
                kind,
                key_type,
                state_type,
            })
        }
        (None, Some(j)) => Some(OperatorMeta {
            name: operator.to_owned(),
            kind: "sql interval join".into(),
            key_type: format!("({},{})", j.streams[0], j.streams[1]),
            state_type: format!(
                "({:?},{:?})",
                inputs[0].shape.schema.fields(),
                inputs[1].shape.schema.fields()
            ),
        }),
        (None, None) => None,
    }
}

/// Names of the columns a plan's scans read (all of a table's when a scan
/// has no projection), subqueries included.
fn used_columns(plan: &LogicalPlan) -> BTreeSet<String> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut out = BTreeSet::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            let schema = scan.source.schema();
            match &scan.projection {
                Some(indices) => out.extend(
                    indices
                        .iter()
                        .filter_map(|&i| schema.fields().get(i).map(|f| f.name().clone())),
                ),
                None => out.extend(schema.fields().iter().map(|f| f.name().clone())),
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// The table of every scan in a plan, subqueries included (a table
/// scanned twice appears twice).
fn scans(plan: &LogicalPlan) -> Vec<String> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut out = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            out.push(scan.table_name.table().to_owned());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}
