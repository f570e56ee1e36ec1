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

mod incremental;
pub mod script;
mod sinks;
mod stream;
mod table;
mod window;

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::checkpoint::{OperatorMeta, STATE_CF_PREFIX};
use crate::driver::StreamingContext;
use crate::log::LogStore;
use crate::plan::{BatchCx, PlanError};
use incremental::OutputMode;
pub use script::Script;
use sinks::Sink;
use stream::StreamShape;

/// Errors of SQL jobs, with the line of the statement.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("line {line}: {message}")]
    Unsupported { line: usize, message: String },
    #[error("line {line}: {message}")]
    Plan { line: usize, message: String },
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("state store: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error(transparent)]
    Engine(#[from] PlanError),
}

impl From<SqlError> for PlanError {
    fn from(e: SqlError) -> PlanError {
        match e {
            SqlError::Engine(p) => p,
            other => PlanError::Invalid(other.to_string()),
        }
    }
}

/// How a SQL job reaches its topics.
pub enum Topics {
    Embedded(Arc<LogStore>),
    Brokers(String),
}

/// Builds the streaming job of a script on `ctx`.
pub fn build(ctx: &StreamingContext, script: &Script, topics: &Topics) -> Result<(), SqlError> {
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
    let tables: Arc<Vec<table::StaticTable>> = Arc::new(
        script
            .tables
            .iter()
            .map(|t| table::load(t, &runtime))
            .collect::<Result<_, _>>()?,
    );
    for (n, query) in script.queries.iter().enumerate() {
        let line = query.line;
        let stream_decl = script
            .streams
            .iter()
            .find(|s| contains_word(&query.sql, &s.name))
            .ok_or_else(|| SqlError::Plan {
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
            })?;
        let shape = StreamShape::new(stream_decl, line)?;
        let topic = stream_decl
            .options
            .get("topic")
            .cloned()
            .unwrap_or_else(|| shape.name.clone());
        let records = match topics {
            Topics::Embedded(store) => {
                ctx.embedded(store.clone(), &topic)
                    .map_err(|e| SqlError::Plan {
                        line,
                        message: format!("stream {}: {e}", shape.name),
                    })?
            }
            Topics::Brokers(brokers) => ctx.source(
                crate::source::kafka::KafkaSource::new(
                    topic.clone(),
                    brokers.clone(),
                    &topic,
                    None,
                    Vec::new(),
                )
                .map_err(|e| SqlError::Plan {
                    line,
                    message: format!("stream {}: {e}", shape.name),
                })?,
            ),
        };
        let watermark = window::declared(stream_decl, &shape.schema, line)?;
        // Plan once over an empty batch: refuses what cannot run
        // incrementally before any record is read.
        let empty = RecordBatch::new_empty(shape.schema.clone());
        let (session, window_uses) = session_over(&shape.name, vec![empty; threads], &tables)?;
        let (logical, plan) = runtime
            .block_on(async {
                let df = session.sql(&query.sql).await?;
                let logical = df.logical_plan().clone();
                Ok::<_, datafusion::error::DataFusionError>((
                    logical,
                    df.create_physical_plan().await?,
                ))
            })
            .map_err(|e| SqlError::Plan {
                line,
                message: format!("{e}"),
            })?;
        incremental::check_logical(&logical)
            .map_err(|message| SqlError::Unsupported { line, message })?;
        let aggregation = incremental::analyze(&plan)
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
        check_windows(
            &crate::log::mutex(&window_uses),
            &shape.name,
            watermark.as_ref(),
            line,
        )?;
        check_mode(
            mode,
            aggregation.as_ref(),
            watermark.as_ref(),
            &shape.name,
            line,
        )?;
        let operator = query
            .sink
            .clone()
            .map_or_else(|| format!("query-{}", n + 1), |s| format!("insert-{s}"));
        let state = aggregation.as_ref().map(|a| {
            let (key_type, state_type) = incremental::state_signature(a);
            OperatorMeta {
                name: operator.clone(),
                kind: if a.window.is_some() {
                    "sql window aggregate".into()
                } else {
                    "sql aggregate".into()
                },
                key_type,
                state_type,
            }
        });
        let sink = match sink_decl {
            None => Sink::Console,
            Some(decl) => Sink::new(decl, &plan.schema(), topics, line)?,
        };
        let table = sink.table_meta();
        let runner = Arc::new(QueryRunner {
            sql: query.sql.clone(),
            line,
            shape,
            runtime: runtime.clone(),
            operator: operator.clone(),
            aggregating: aggregation.is_some(),
            mode,
            watermark,
            topic,
            slices: threads,
            tables: tables.clone(),
            sink,
        });
        records.output_with_context(operator, state, table, move |cx, chunks| {
            runner.run(cx, &chunks).map_err(PlanError::from)
        });
    }
    Ok(())
}

fn contains_word(sql: &str, word: &str) -> bool {
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// A session with the batch's rows of `stream` as a table and the window
/// functions over them.
#[allow(clippy::type_complexity)]
fn session_over(
    stream: &str,
    parts: Vec<RecordBatch>,
    tables: &[table::StaticTable],
) -> Result<
    (
        SessionContext,
        Arc<std::sync::Mutex<Vec<window::WindowUse>>>,
    ),
    SqlError,
> {
    let partitions = parts.len().max(1);
    let session =
        SessionContext::new_with_config(SessionConfig::new().with_target_partitions(partitions));
    let schema = parts
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| SqlError::Plan {
            line: 0,
            message: format!("stream {stream}: no partitions to scan"),
        })?;
    let table = datafusion::datasource::MemTable::try_new(
        schema,
        parts.iter().map(|b| vec![b.clone()]).collect(),
    )?;
    session.register_table(stream, Arc::new(table))?;
    for t in tables {
        session.register_table(&t.name, t.table.clone())?;
    }
    let streams: std::collections::HashMap<String, Vec<RecordBatch>> =
        [(stream.to_owned(), parts)].into_iter().collect();
    let uses = window::register(&session, Arc::new(streams));
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
        (OutputMode::Append, Some(a)) if a.window.is_none() => refuse(
            "append mode emits only final rows, and a GROUP BY without a window never finalizes: group by window_start, window_end of TUMBLE(…) or HOP(…), or use mode = 'update'".into(),
        ),
        (OutputMode::Append, Some(_)) if watermark.is_none() => refuse(format!(
            "append mode needs a watermark to know when a window is final: declare WATERMARK FOR ts AS ts - INTERVAL '5' SECOND in CREATE STREAM {stream}, or use mode = 'update'"
        )),
        _ => Ok(()),
    }
}

struct QueryRunner {
    sql: String,
    line: usize,
    shape: StreamShape,
    runtime: Arc<tokio::runtime::Runtime>,
    operator: String,
    aggregating: bool,
    mode: OutputMode,
    watermark: Option<window::Watermark>,
    /// The stream's topic (its source's name in planned batches).
    topic: String,
    /// Slices a batch is cut into (DataFusion partitions).
    slices: usize,
    /// Static tables the query may join.
    tables: Arc<Vec<table::StaticTable>>,
    sink: Sink,
}

impl QueryRunner {
    fn run(&self, cx: &BatchCx, chunks: &[RecordBatch]) -> Result<(), SqlError> {
        // Decode in slices, in parallel; each slice is a partition of the
        // table DataFusion scans.
        use rayon::prelude::*;
        let per_slice = chunks.len().div_ceil(self.slices).max(1);
        let decoded: Vec<(RecordBatch, u64)> = if chunks.is_empty() {
            vec![self.shape.decode(chunks)?]
        } else {
            chunks
                .par_chunks(per_slice)
                .map(|slice| self.shape.decode(slice))
                .collect::<Result<_, _>>()?
        };
        let mut parts: Vec<RecordBatch> = decoded.into_iter().map(|(b, _bad)| b).collect();
        let state_cf = if self.aggregating {
            Some(
                cx.checkpoint
                    .cf(&format!("{STATE_CF_PREFIX}{}", self.operator))
                    .map_err(PlanError::from)?,
            )
        } else {
            None
        };
        // Stateful queries drop late records and move the watermark.
        let mut watermark = None;
        if let (Some(spec), Some(cf)) = (&self.watermark, state_cf) {
            let (kept, late, now) = self.advance_watermark(spec, cx, cf, &parts)?;
            parts = kept;
            cx.count("late records", late);
            watermark = now;
        }
        let (session, _) = session_over(&self.shape.name, parts, &self.tables)?;
        let output = self.runtime.block_on(async {
            let plan: Arc<dyn ExecutionPlan> =
                session.sql(&self.sql).await?.create_physical_plan().await?;
            let Some(cf) = state_cf else {
                return Ok::<_, SqlError>(collect(plan, session.task_ctx()).await?);
            };
            let agg = incremental::analyze(&plan)
                .map_err(|message| SqlError::Unsupported {
                    line: self.line,
                    message,
                })?
                .ok_or_else(|| SqlError::Plan {
                    line: self.line,
                    message: "the query lost its aggregation between batches".into(),
                })?;
            incremental::run_batch(&session, &plan, &agg, self.mode, watermark, cx, cf).await
        })?;
        self.sink.write(cx, &output)
    }

    /// Drops the batch's records behind the stored watermark, then
    /// advances it with the rest; stores the progress in the batch's
    /// commit. Returns the kept rows, how many were late, and the new
    /// watermark.
    fn advance_watermark(
        &self,
        spec: &window::Watermark,
        cx: &BatchCx,
        cf: &rocksdb::ColumnFamily,
        parts: &[RecordBatch],
    ) -> Result<(Vec<RecordBatch>, u64, Option<i64>), SqlError> {
        use datafusion::arrow::array::{Array, AsArray, BooleanArray};
        use datafusion::arrow::datatypes::{
            DataType, Int32Type, TimeUnit, TimestampMillisecondType,
        };
        let key = incremental::watermark_key(&self.shape.name);
        let mut state: window::WatermarkState = match cx.checkpoint.db().get_cf(cf, &key)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| SqlError::Plan {
                line: self.line,
                message: format!("stored watermark of {} is unreadable: {e}", self.shape.name),
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
            .get(&self.topic)
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
