//! SQL over streams: a job written in SQL runs on the same driver,
//! sources, checkpoint and atomic commit as a Rust job.
//!
//! A script declares streams over topics (`CREATE STREAM … WITH (topic,
//! format)`), sinks (`CREATE SINK … WITH (type = 'console' | 'table')`) and
//! queries (`INSERT INTO sink SELECT …`, or a bare `SELECT` for the
//! console). Every batch, each stream's records are decoded into its
//! declared columns, DataFusion plans and runs each query over them, and
//! `GROUP BY` aggregates are merged with their state in RocksDB
//! ([`incremental`]); result-table writes and aggregate state join the
//! batch's commit. Queries that cannot run incrementally are refused when
//! the job is submitted, before any record is read.
//!
//! This module owns the SQL surface; it never chooses offsets or commits
//! (the driver does), and never touches segment files.

mod error;
mod explain;
mod functions;
mod incremental;
mod join;
mod pipeline;
pub mod script;
mod session;
mod sinks;
mod stream;
mod table;
mod topics;
mod window;

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{SessionConfig, SessionContext};

pub use error::SqlError;
use error::located;
use incremental::OutputMode;
pub use script::Script;
use sinks::Sink;
use sluice_engine::checkpoint::{OperatorMeta, STATE_CF_PREFIX};
use sluice_engine::driver::StreamingContext;
use sluice_engine::plan::{BatchCx, DStream, OutputInputs, PlanError};
use sluice_engine::source::Record;
use stream::StreamShape;
pub use topics::Topics;
use topics::open_source;

/// What building a script found out about its queries.
#[derive(Debug, Clone, Copy)]
pub struct Built {
    /// Some query holds a whole batch in memory: its decoded rows (windows,
    /// joins, dead letters) or its output rows (a query without
    /// aggregation). Batches of such a job are best kept small.
    pub holds_whole_batches: bool,
}

/// Builds the streaming job of a script on `ctx`.
pub fn build(ctx: &StreamingContext, script: &Script, topics: &Topics) -> Result<Built, SqlError> {
    build_or_explain(Some(ctx), script, topics, None)
}

/// The incremental plan of every query of `script`: what runs per slice,
/// where partial results meet, which state is kept and how it is evicted.
/// Plans exactly as [`build`] does (so it refuses the same queries) but
/// opens no source and writes nothing.
pub fn explain(script: &Script, topics: &Topics) -> Result<String, SqlError> {
    let mut out = String::new();
    build_or_explain(None, script, topics, Some(&mut out))?;
    Ok(out)
}

fn build_or_explain(
    ctx: Option<&StreamingContext>,
    script: &Script,
    topics: &Topics,
    mut explanation: Option<&mut String>,
) -> Result<Built, SqlError> {
    let mut built = Built {
        holds_whole_batches: false,
    };
    // DataFusion runs a batch's partitions on these threads, one per core.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("sluice-sql")
            .enable_all()
            .build()
            .map_err(|e| SqlError::Plan {
                line: 1,
                message: format!("cannot start the query runtime: {e}"),
            })?,
    );
    // Every declared stream's decoder, once (a dead-letter topic's writer
    // is opened here); each query takes the ones it reads.
    let first_line = script.queries.first().map_or(1, |q| q.line);
    let shapes = script
        .streams
        .iter()
        .map(|d| StreamShape::new(d, topics, first_line))
        .collect::<Result<Vec<_>, _>>()?;
    // Files are read now, result tables per batch; a result table of this
    // job takes its columns from the query that writes it, planned over
    // empty batches as every query is below.
    let own_job = ctx.map(|c| table::OwnJob {
        name: c.config().name.clone(),
        checkpoint: c.config().checkpoint_path(),
    });
    let tables: Arc<Vec<table::StaticTable>> = Arc::new(table::load_all(
        script,
        &runtime,
        topics,
        own_job.as_ref(),
        |writer, known| {
            let empty = shapes
                .iter()
                .map(|shape| {
                    (
                        shape.name.clone(),
                        vec![RecordBatch::new_empty(shape.schema.clone()); threads],
                    )
                })
                .collect();
            let (session, _) = session_over(empty, known)?;
            runtime
                .block_on(async {
                    let df = session.sql(&writer.sql).await?;
                    Ok::<_, datafusion::error::DataFusionError>(
                        df.create_physical_plan().await?.schema(),
                    )
                })
                .map_err(|e| located(&e, writer.line, writer.column))
        },
    )?);
    // One source per topic, shared by the queries that read it.
    let mut sources: std::collections::HashMap<String, DStream<Record>> = Default::default();
    for (n, query) in script.queries.iter().enumerate() {
        let line = query.line;
        // Plan once over empty batches of every declared stream: finds
        // the streams the query reads, and refuses what cannot run
        // incrementally before any record is read.
        let empty: Vec<(String, Vec<RecordBatch>)> = shapes
            .iter()
            .map(|shape| {
                (
                    shape.name.clone(),
                    vec![RecordBatch::new_empty(shape.schema.clone()); threads],
                )
            })
            .collect();
        let (session, window_uses) = session_over(empty, &tables)?;
        let (unoptimized, logical, plan) = runtime
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
        let used = used_columns(&logical);
        // From the query as written: a filter no row can pass leaves no
        // scan in the optimized plan, yet the query reads its stream.
        // Streams the optimized plan still reads: by a scan, or through a
        // window function (whose scan has the function's name).
        let optimized_scans = scans(&logical);
        let optimized_reads: std::collections::BTreeSet<String> =
            optimized_scans.iter().cloned().collect();
        let windowed: std::collections::BTreeSet<String> = sluice_log::common::mutex(&window_uses)
            .iter()
            .map(|u| u.stream.clone())
            .collect();
        let mut read: std::collections::BTreeSet<String> =
            scans(&unoptimized).into_iter().collect();
        read.extend(
            sluice_log::common::mutex(&window_uses)
                .iter()
                .map(|u| u.stream.clone()),
        );
        let decls: Vec<(&script::StreamDecl, StreamShape)> = script
            .streams
            .iter()
            .zip(shapes.iter().cloned())
            .filter(|(d, _)| read.contains(&d.name))
            .collect();
        if decls.is_empty() {
            return Err(SqlError::Plan {
                line,
                message: format!(
                    "the query reads no declared stream (streams: {})",
                    script
                        .streams
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        if decls.len() > 2 {
            return Err(SqlError::Unsupported {
                line,
                message: format!(
                    "the query reads {} streams; joins of more than two streams are not incremental yet",
                    decls.len()
                ),
            });
        }
        let mut inputs = Vec::new();
        let mut records = Vec::new();
        for (decl, shape) in decls {
            let topic = decl
                .options
                .get("topic")
                .cloned()
                .unwrap_or_else(|| shape.name.clone());
            if let Some(ctx) = ctx {
                let stream = match sources.get(&topic) {
                    Some(s) => s.clone(),
                    None => {
                        let s =
                            open_source(ctx, topics, &topic).map_err(|message| SqlError::Plan {
                                line,
                                message: format!("stream {}: {message}", shape.name),
                            })?;
                        sources.insert(topic.clone(), s.clone());
                        s
                    }
                };
                records.push(stream);
            }
            let watermark = window::declared(decl, &shape.schema, line)?;
            let mut needed = used.clone();
            if let Some(w) = &watermark {
                needed.insert(w.column.clone());
            }
            // A stream the optimizer removed (no row can pass) is planned
            // again each batch from the query's text: keep every column.
            // (Decoding every column of a windowed stream made Nexmark q5
            // 40 % slower: HOP copies each row's columns per window.)
            let shape = if optimized_reads.contains(&decl.name) || windowed.contains(&decl.name) {
                shape.project(&needed)
            } else {
                shape
            };
            inputs.push(StreamInput {
                shape,
                watermark,
                topic,
            });
        }
        incremental::check_logical(&logical)
            .map_err(|message| SqlError::Unsupported { line, message })?;
        let event_time = match inputs.as_slice() {
            [only] => only.watermark.as_ref().map(|w| w.column.clone()),
            _ => None,
        };
        let aggregation = incremental::analyze(&plan, event_time.as_deref())
            .map_err(|message| SqlError::Unsupported { line, message })?;
        let sink_decl =
            match &query.sink {
                None => None,
                Some(name) => Some(script.sinks.iter().find(|s| &s.name == name).ok_or_else(
                    || SqlError::Plan {
                        line,
                        message: format!("no sink {name}"),
                    },
                )?),
            };
        let mode_text = match sink_decl {
            Some(decl) => decl.options.get("mode").cloned(),
            None => script.console_mode.clone(),
        };
        let mode = match &mode_text {
            None => OutputMode::Update,
            Some(text) => {
                OutputMode::parse(text).map_err(|message| SqlError::Plan { line, message })?
            }
        };
        let ttl_ms = match sink_decl.and_then(|d| d.options.get("state_ttl")) {
            None => None,
            Some(text) => Some(
                sluice_log::units::parse_millis(text)
                    .map_err(|m| SqlError::Plan {
                        line,
                        message: format!("state_ttl: {m}"),
                    })?
                    .max(1) as i64,
            ),
        };
        let join = match inputs.as_slice() {
            [a, b] => {
                if aggregation
                    .as_ref()
                    .is_some_and(|a| a.window.is_some() || a.nested)
                {
                    return Err(SqlError::Unsupported {
                        line,
                        message: "a windowed aggregation over a join of two streams is not incremental yet: aggregate without a window (GROUP BY keys, merged across batches), or write the join's rows to a sink and window them in another job".into(),
                    });
                }
                let names = [a.shape.name.clone(), b.shape.name.clone()];
                let bounded = match (&a.watermark, &b.watermark) {
                    (Some(wa), Some(wb)) => join::derive(
                        &logical,
                        names.clone(),
                        [wa.column.clone(), wb.column.clone()],
                    ),
                    _ => {
                        let missing = if a.watermark.is_none() {
                            &a.shape.name
                        } else {
                            &b.shape.name
                        };
                        Err(format!(
                            "a join of two streams keeps rows until the other stream's watermark passes them: declare WATERMARK FOR … in CREATE STREAM {missing}, or set state_ttl = '1h' on the sink to keep rows for a fixed time"
                        ))
                    }
                };
                let unsupported = |message: String| SqlError::Unsupported { line, message };
                Some(match (bounded, ttl_ms) {
                    (Ok(j), None) => j,
                    // Over the join, the TTL bounds the aggregation's groups.
                    (Ok(j), Some(_)) if aggregation.is_some() => j,
                    (Ok(_), Some(_)) => {
                        return Err(unsupported(
                            "state_ttl: this interval join's state is already bounded by its ON clause and the watermarks: remove state_ttl".into(),
                        ));
                    }
                    (Err(message), None) => return Err(unsupported(message)),
                    (Err(_), Some(ms)) => {
                        join::with_ttl(&logical, names, ms).map_err(unsupported)?
                    }
                })
            }
            _ => None,
        };
        let state_ttl_ms = match (ttl_ms, &aggregation) {
            (None, _) => None,
            (Some(ms), Some(a)) if a.window.is_none() => Some(ms),
            (Some(_), Some(_)) => {
                return Err(SqlError::Unsupported {
                    line,
                    message: "state_ttl applies to aggregations without windows: a windowed aggregation's state is evicted by the watermark".into(),
                });
            }
            // Carried by the join.
            (Some(_), None) if join.is_some() => None,
            (Some(_), None) => {
                return Err(SqlError::Unsupported {
                    line,
                    message: "state_ttl applies to aggregations (GROUP BY) and joins of two streams: this query keeps no state that a TTL could bound".into(),
                });
            }
        };
        for input in &inputs {
            check_windows(
                &sluice_log::common::mutex(&window_uses),
                &input.shape.name,
                input.watermark.as_ref(),
                line,
            )?;
        }
        check_mode(
            mode,
            aggregation.as_ref(),
            inputs[0].watermark.as_ref(),
            &inputs[0].shape.name,
            line,
        )?;
        // A query that reads its one stream once, with nothing to apply
        // to the whole batch first (windows, join buffers, late records
        // before an aggregation, dead letters written per batch), reads
        // the batch as it arrives.
        let streaming = match inputs.as_slice() {
            [only] => {
                join.is_none()
                    && sluice_log::common::mutex(&window_uses).is_empty()
                    && optimized_scans
                        .iter()
                        .filter(|t| **t == only.shape.name)
                        .count()
                        == 1
                    && !matches!(only.shape.on_error, stream::OnError::DeadLetter(_))
                    && !(aggregation.is_some() && only.watermark.is_some())
            }
            _ => false,
        };
        built.holds_whole_batches |= !streaming || aggregation.is_none();
        let operator = query
            .sink
            .clone()
            .map_or_else(|| format!("query-{}", n + 1), |s| format!("insert-{s}"));
        let state = match (&aggregation, &join) {
            (Some(a), _) => {
                let (key_type, state_type) = incremental::state_signature(a);
                Some(OperatorMeta {
                    name: operator.clone(),
                    kind: if a.window.is_some() {
                        "sql window aggregate".into()
                    } else if let Some(j) = &join {
                        format!(
                            "sql aggregate over join of {} and {}",
                            j.streams[0], j.streams[1]
                        )
                    } else {
                        "sql aggregate".into()
                    },
                    key_type,
                    state_type,
                })
            }
            (None, Some(j)) => Some(OperatorMeta {
                name: operator.clone(),
                kind: "sql interval join".into(),
                key_type: format!("({},{})", j.streams[0], j.streams[1]),
                state_type: format!(
                    "({:?},{:?})",
                    inputs[0].shape.schema.fields(),
                    inputs[1].shape.schema.fields()
                ),
            }),
            (None, None) => None,
        };
        if let Some(out) = explanation.as_deref_mut() {
            let formats: Vec<String> = inputs
                .iter()
                .map(|i| {
                    let format = script
                        .streams
                        .iter()
                        .find(|d| d.name == i.shape.name)
                        .and_then(|d| d.options.get("format").cloned())
                        .unwrap_or_else(|| "text".into());
                    if i.shape.format == stream::Format::Json {
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
            explain::describe(
                out,
                &explain::Query {
                    number: n + 1,
                    line,
                    sink: sink_decl,
                    mode,
                    operator: &operator,
                    inputs: inputs
                        .iter()
                        .zip(&formats)
                        .map(|(i, f)| explain::Input {
                            name: &i.shape.name,
                            topic: &i.topic,
                            format: f,
                            watermark: i.watermark.as_ref(),
                        })
                        .collect(),
                    tables: tables
                        .iter()
                        .filter(|t| read.contains(&t.name))
                        .map(|t| (t.name.as_str(), t.reading))
                        .collect(),
                    streaming,
                    plan: &plan,
                    aggregation: aggregation.as_ref(),
                    join: join.as_ref(),
                    slices: threads,
                },
            );
            continue;
        }
        let sink = match sink_decl {
            None => Sink::Console,
            Some(decl) => Sink::new(decl, &plan.schema(), topics, line)?,
        };
        let table = sink.table_meta();
        let runner = Arc::new(QueryRunner {
            sql: query.sql.clone(),
            line,
            inputs,
            runtime: runtime.clone(),
            operator: operator.clone(),
            aggregating: aggregation.is_some(),
            join,
            mode,
            state_ttl_ms,
            slices: threads,
            streaming,
            tables: tables.clone(),
            sink,
        });
        DStream::output_with_context(&records, operator, state, table, move |cx, inputs| {
            runner.run(cx, inputs).map_err(PlanError::from)
        });
    }
    Ok(built)
}

/// Names of the columns a plan's scans read (all of a table's when a scan
/// has no projection), subqueries included.
fn used_columns(
    plan: &datafusion::logical_expr::LogicalPlan,
) -> std::collections::BTreeSet<String> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut out = std::collections::BTreeSet::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let datafusion::logical_expr::LogicalPlan::TableScan(scan) = node {
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
fn scans(plan: &datafusion::logical_expr::LogicalPlan) -> Vec<String> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    let mut out = Vec::new();
    let _ = plan.apply_with_subqueries(|node| {
        if let datafusion::logical_expr::LogicalPlan::TableScan(scan) = node {
            out.push(scan.table_name.table().to_owned());
        }
        Ok(TreeNodeRecursion::Continue)
    });
    out
}

/// A session with the batch's rows of each stream as a table (one
/// partition per slice), the static tables, and the window functions.
#[allow(clippy::type_complexity)]
fn session_over(
    streams: Vec<(String, Vec<RecordBatch>)>,
    tables: &[table::StaticTable],
) -> Result<
    (
        SessionContext,
        Arc<std::sync::Mutex<Vec<window::WindowUse>>>,
    ),
    SqlError,
> {
    let partitions = streams
        .iter()
        .map(|(_, p)| p.len())
        .max()
        .unwrap_or(1)
        .max(1);
    let mut config = SessionConfig::new().with_target_partitions(partitions);
    // Errors say where in the query they are.
    config.options_mut().sql_parser.collect_spans = true;
    // A batch's table knows its exact row count, so DataFusion would answer
    // count(*), min and max from statistics: one batch's answer, with no
    // aggregate left in the plan to keep state for.
    let rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new()
        .rules
        .into_iter()
        .filter(|rule| rule.name() != "aggregate_statistics")
        .collect();
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_physical_optimizer_rules(rules)
        .build();
    let session = SessionContext::new_with_state(state);
    for (name, parts) in &streams {
        let schema = parts
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| SqlError::Plan {
                line: 0,
                message: format!("stream {name}: no partitions to scan"),
            })?;
        // Each partition streams its slice in cache-sized pieces (views of
        // the same arrays), so the operators' outputs stay small.
        const PIECE_ROWS: usize = 8192;
        let table = datafusion::datasource::MemTable::try_new(
            schema,
            parts
                .iter()
                .map(|b| {
                    (0..b.num_rows().max(1))
                        .step_by(PIECE_ROWS)
                        .map(|start| b.slice(start, PIECE_ROWS.min(b.num_rows() - start)))
                        .collect()
                })
                .collect(),
        )?;
        session.register_table(name, Arc::new(table))?;
    }
    for t in tables {
        session.register_table(&t.name, t.table.clone())?;
    }
    session.register_udf(functions::split());
    let uses = window::register(&session, Arc::new(streams.into_iter().collect()));
    Ok((session, uses))
}

/// Windows must be over the stream's event-time column, or the
/// watermark cannot close them.
fn check_windows(
    uses: &[window::WindowUse],
    stream: &str,
    watermark: Option<&window::Watermark>,
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
fn check_mode(
    mode: OutputMode,
    aggregation: Option<&incremental::Aggregation>,
    watermark: Option<&window::Watermark>,
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

/// One stream a query reads.
struct StreamInput {
    shape: StreamShape,
    watermark: Option<window::Watermark>,
    /// The stream's topic (its source's name in planned batches).
    topic: String,
}

struct QueryRunner {
    sql: String,
    line: usize,
    inputs: Vec<StreamInput>,
    runtime: Arc<tokio::runtime::Runtime>,
    operator: String,
    aggregating: bool,
    join: Option<join::IntervalJoin>,
    mode: OutputMode,
    /// Groups not updated for this long (batch time) are forgotten.
    state_ttl_ms: Option<i64>,
    /// Slices a batch is cut into (DataFusion partitions).
    slices: usize,
    /// The batch flows through the query as it is read (`pipeline`)
    /// instead of being decoded whole first.
    streaming: bool,
    /// Static tables the query may join.
    tables: Arc<Vec<table::StaticTable>>,
    sink: Sink,
}

impl QueryRunner {
    fn run(&self, cx: &BatchCx, inputs: &OutputInputs) -> Result<(), SqlError> {
        let state_cf = if self.aggregating || self.join.is_some() {
            Some(
                cx.checkpoint
                    .cf(&format!("{STATE_CF_PREFIX}{}", self.operator))
                    .map_err(PlanError::from)?,
            )
        } else {
            None
        };
        if self.streaming {
            return self.run_streaming(cx, inputs, state_cf);
        }
        let chunks = (0..self.inputs.len())
            .map(|i| inputs.collect(i))
            .collect::<Result<Vec<_>, _>>()?;
        let mut streams = Vec::with_capacity(self.inputs.len());
        let mut watermarks = Vec::with_capacity(self.inputs.len());
        for (input, chunks) in self.inputs.iter().zip(&chunks) {
            // Decoded in parallel slices: each is a partition of the table
            // DataFusion scans.
            let mut parts = input.shape.decode(cx, chunks, self.slices)?;
            // Stateful queries drop late records and move the watermark.
            let mut watermark = None;
            if let (Some(spec), Some(cf)) = (&input.watermark, state_cf) {
                let (kept, late, now) = self.advance_watermark(input, spec, cx, cf, &parts)?;
                parts = kept;
                cx.count("late records", late);
                watermark = now;
            }
            streams.push((input.shape.name.clone(), parts));
            watermarks.push(watermark);
        }
        if let (Some(j), Some(cf)) = (&self.join, state_cf) {
            let output = self.run_join(cx, cf, j, streams, &watermarks)?;
            return self.sink.write(cx, &output);
        }
        let watermark = watermarks.first().copied().flatten();
        let (session, _) = session_over(streams, &self.tables)?;
        let output = self.runtime.block_on(async {
            let plan: Arc<dyn ExecutionPlan> =
                session.sql(&self.sql).await?.create_physical_plan().await?;
            let Some(cf) = state_cf else {
                return Ok::<_, SqlError>(collect(plan, session.task_ctx()).await?);
            };
            let agg = self.aggregation_of(&plan)?;
            let policy = incremental::Policy {
                mode: self.mode,
                watermark,
                ttl: self.state_ttl_ms,
            };
            incremental::run_batch(&session, &plan, &agg, policy, cx, cf).await
        })?;
        self.sink.write(cx, &output)
    }

    /// Runs the query over its one stream as the batch is read: see
    /// `pipeline`.
    fn run_streaming(
        &self,
        cx: &BatchCx,
        inputs: &OutputInputs,
        state_cf: Option<&rocksdb::ColumnFamily>,
    ) -> Result<(), SqlError> {
        let input = &self.inputs[0];
        let streamed = pipeline::streamed(&input.shape, self.slices)?;
        // Planned over empty slices (for the partition count), then the
        // stream's name points at the channels.
        let empty = vec![RecordBatch::new_empty(input.shape.schema.clone()); self.slices];
        let (session, _) = session_over(vec![(input.shape.name.clone(), empty)], &self.tables)?;
        session.deregister_table(input.shape.name.as_str())?;
        session.register_table(input.shape.name.as_str(), streamed.table.clone())?;
        let (output, bad) = streamed.run(inputs, 0, move || {
            // The session goes with this closure: once it returns nothing
            // holds the channels, so a reader waiting on them stops.
            self.runtime.block_on(async move {
                let plan: Arc<dyn ExecutionPlan> =
                    session.sql(&self.sql).await?.create_physical_plan().await?;
                let Some(cf) = state_cf else {
                    return Ok::<_, SqlError>(collect(plan, session.task_ctx()).await?);
                };
                let agg = self.aggregation_of(&plan)?;
                let policy = incremental::Policy {
                    mode: self.mode,
                    watermark: None,
                    ttl: self.state_ttl_ms,
                };
                incremental::run_batch(&session, &plan, &agg, policy, cx, cf).await
            })
        })?;
        cx.count("bad records", bad);
        self.sink.write(cx, &output)
    }

    fn aggregation_of(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
    ) -> Result<incremental::Aggregation, SqlError> {
        let event_time = match self.inputs.as_slice() {
            [only] => only.watermark.as_ref().map(|w| w.column.as_str()),
            _ => None,
        };
        incremental::analyze(plan, event_time)
            .map_err(|message| SqlError::Unsupported {
                line: self.line,
                message,
            })?
            .ok_or_else(|| SqlError::Plan {
                line: self.line,
                message: "the query lost its aggregation between batches".into(),
            })
    }

    /// The new matches of an interval join: this batch's rows of each
    /// stream against everything buffered of the other (and the other's
    /// new rows once), then buffers the new rows and evicts those the
    /// bound and the watermarks have put out of reach.
    fn run_join(
        &self,
        cx: &BatchCx,
        cf: &rocksdb::ColumnFamily,
        j: &join::IntervalJoin,
        streams: Vec<(String, Vec<RecordBatch>)>,
        watermarks: &[Option<i64>],
    ) -> Result<Vec<RecordBatch>, SqlError> {
        let db = cx.checkpoint.db();
        let [(n0, new0), (n1, new1)]: [(String, Vec<RecordBatch>); 2] =
            streams.try_into().map_err(|_| SqlError::Plan {
                line: self.line,
                message: "a join reads two streams".into(),
            })?;
        let schema0 = self.inputs[0].shape.schema.clone();
        let schema1 = self.inputs[1].shape.schema.clone();
        // With a TTL, rows brought by batches more than the TTL ago match
        // nothing (they are deleted below).
        let from = j.ttl_ms.map_or(i64::MIN, |ttl| {
            cx.batch_time_ms.saturating_sub(ttl).saturating_add(1)
        });
        let old0 = join::or_empty(join::load(db, cf, 0, from)?, &schema0);
        let old1 = join::load(db, cf, 1, from)?;
        let mut all1 = old1;
        all1.extend(new1.iter().cloned());
        let runs = [
            vec![
                (n0.clone(), new0.clone()),
                (n1.clone(), join::or_empty(all1, &schema1)),
            ],
            vec![(n0, old0), (n1, new1.clone())],
        ];
        let mut output = Vec::new();
        // An aggregation over the join: each run's partial aggregates,
        // merged once with the stored groups.
        let mut partials: Vec<Vec<ArrayRef>> = Vec::new();
        let mut last = None;
        for streams in runs {
            let (session, _) = session_over(streams, &self.tables)?;
            let plan = self
                .runtime
                .block_on(async { session.sql(&self.sql).await?.create_physical_plan().await })?;
            if self.aggregating {
                let agg = self.aggregation_of(&plan)?;
                partials.push(
                    self.runtime
                        .block_on(incremental::partial_columns(&session, &agg))?,
                );
                last = Some((session, plan, agg));
            } else {
                output.extend(self.runtime.block_on(collect(plan, session.task_ctx()))?);
            }
        }
        if let Some((session, plan, agg)) = last {
            let columns = (0..partials[0].len())
                .map(|i| {
                    let parts: Vec<&dyn datafusion::arrow::array::Array> =
                        partials.iter().map(|p| p[i].as_ref()).collect();
                    datafusion::arrow::compute::concat(&parts)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let policy = incremental::Policy {
                mode: self.mode,
                watermark: None,
                ttl: self.state_ttl_ms,
            };
            output = self.runtime.block_on(incremental::merge_batch(
                &session, &plan, &agg, policy, cx, cf, columns,
            ))?;
        }
        // Buffer the new rows, each slice under its newest event time.
        let newest =
            |rows: &[RecordBatch], column: &str| -> Result<Vec<(RecordBatch, i64)>, SqlError> {
                rows.iter()
                    .map(|b| {
                        let times = datafusion::arrow::compute::cast(
                            b.column(b.schema().index_of(column)?),
                            &datafusion::arrow::datatypes::DataType::Int64,
                        )?;
                        let max = datafusion::arrow::compute::max(
                            times
                                .as_any()
                                .downcast_ref::<datafusion::arrow::array::Int64Array>()
                                .ok_or_else(|| SqlError::Plan {
                                    line: self.line,
                                    message: format!("{column} is not a time"),
                                })?,
                        )
                        .unwrap_or(i64::MIN);
                        Ok((b.clone(), max))
                    })
                    .collect()
            };
        let mut writes = Vec::new();
        if j.ttl_ms.is_some() {
            // Kept for the TTL after the batch that brought them.
            let now = cx.batch_time_ms;
            let arrived = |rows: &[RecordBatch]| -> Vec<(RecordBatch, i64)> {
                rows.iter().map(|b| (b.clone(), now)).collect()
            };
            join::store(&mut writes, 0, cx.batch_id, &arrived(&new0))?;
            join::store(&mut writes, 1, cx.batch_id, &arrived(&new1))?;
            join::evict(db, &mut writes, cf, 0, from)?;
            join::evict(db, &mut writes, cf, 1, from)?;
        } else {
            let slices0 = newest(&new0, &j.columns[0])?;
            let slices1 = newest(&new1, &j.columns[1])?;
            join::store(&mut writes, 0, cx.batch_id, &slices0)?;
            join::store(&mut writes, 1, cx.batch_id, &slices1)?;
            // A row of stream 0 at t0 can still match a stream-1 row to
            // come (t1 ≥ W1) only if t0 ≥ W1 + lo; one of stream 1 only if
            // t1 ≥ W0 − hi.
            if let Some(w1) = watermarks[1] {
                join::evict(db, &mut writes, cf, 0, w1.saturating_add(j.lo_ms))?;
            }
            if let Some(w0) = watermarks[0] {
                join::evict(db, &mut writes, cf, 1, w0.saturating_sub(j.hi_ms))?;
            }
        }
        cx.write(|w| {
            for (key, value) in writes {
                match value {
                    Some(v) => w.put_cf(cf, key, v),
                    None => w.delete_cf(cf, key),
                }
            }
        });
        Ok(output)
    }

    /// Drops the batch's records behind the stored watermark, then
    /// advances it with the rest; stores the progress in the batch's
    /// commit. Returns the kept rows, how many were late, and the new
    /// watermark.
    fn advance_watermark(
        &self,
        input: &StreamInput,
        spec: &window::Watermark,
        cx: &BatchCx,
        cf: &rocksdb::ColumnFamily,
        parts: &[RecordBatch],
    ) -> Result<(Vec<RecordBatch>, u64, Option<i64>), SqlError> {
        use datafusion::arrow::array::{Array, AsArray, BooleanArray};
        use datafusion::arrow::datatypes::{
            DataType, Int32Type, TimeUnit, TimestampMillisecondType,
        };
        let key = incremental::watermark_key(&input.shape.name);
        let mut state: window::WatermarkState = match cx.checkpoint.db().get_cf(cf, &key)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| SqlError::Plan {
                line: self.line,
                message: format!(
                    "stored watermark of {} is unreadable: {e}",
                    input.shape.name
                ),
            })?,
            None => window::WatermarkState::default(),
        };
        let before = state.watermark;
        let mut seen: std::collections::BTreeMap<i32, i64> = Default::default();
        let mut late = 0u64;
        let mut kept = Vec::with_capacity(parts.len());
        for batch in parts {
            let times = datafusion::arrow::compute::cast(
                batch.column(batch.schema().index_of(&spec.column)?),
                &DataType::Timestamp(TimeUnit::Millisecond, None),
            )?;
            let times = times.as_primitive::<TimestampMillisecondType>();
            let partitions = batch.column(batch.schema().index_of("_partition")?);
            let partitions = partitions.as_primitive::<Int32Type>();
            let mut late_here = 0u64;
            let keep: BooleanArray = (0..batch.num_rows())
                .map(|i| {
                    if times.is_null(i) {
                        return Some(true);
                    }
                    let t = times.value(i);
                    let max = seen.entry(partitions.value(i)).or_insert(t);
                    *max = (*max).max(t);
                    let on_time = before.is_none_or(|w| t >= w);
                    late_here += u64::from(!on_time);
                    Some(on_time)
                })
                .collect();
            late += late_here;
            kept.push(if late_here == 0 {
                batch.clone()
            } else {
                datafusion::arrow::compute::filter_record_batch(batch, &keep)?
            });
        }
        let planned: Vec<i32> = cx
            .planned
            .ranges
            .get(&input.topic)
            .map(|r| r.iter().map(|r| r.partition).collect())
            .unwrap_or_default();
        let now = state.advance(spec, cx.batch_time_ms, &planned, &seen);
        let bytes = serde_json::to_vec(&state).map_err(|e| SqlError::Plan {
            line: self.line,
            message: format!("cannot store the watermark: {e}"),
        })?;
        cx.write(|w| w.put_cf(cf, &key, bytes));
        Ok((kept, late, now))
    }
}
