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

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::checkpoint::{OperatorMeta, STATE_CF_PREFIX};
use crate::driver::StreamingContext;
use crate::log::LogStore;
use crate::plan::{BatchCx, PlanError};
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
    let runtime = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SqlError::Plan {
                line: 1,
                message: format!("cannot start the query runtime: {e}"),
            })?,
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
        let shape = StreamShape::new(stream_decl, topics, line)?;
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
        // Plan once over an empty batch: refuses what cannot run
        // incrementally before any record is read.
        let session =
            SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        session.register_batch(&shape.name, RecordBatch::new_empty(shape.schema.clone()))?;
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
        let operator = query
            .sink
            .clone()
            .map_or_else(|| format!("query-{}", n + 1), |s| format!("insert-{s}"));
        let state = aggregation.as_ref().map(|a| {
            let (key_type, state_type) = incremental::state_signature(a);
            OperatorMeta {
                name: operator.clone(),
                kind: "sql aggregate".into(),
                key_type,
                state_type,
            }
        });
        let sink = match &query.sink {
            None => Sink::Console,
            Some(name) => {
                let decl = script
                    .sinks
                    .iter()
                    .find(|s| &s.name == name)
                    .ok_or_else(|| SqlError::Plan {
                        line,
                        message: format!("no sink {name}"),
                    })?;
                Sink::new(decl, &plan.schema(), topics, line)?
            }
        };
        let table = sink.table_meta();
        let runner = Arc::new(QueryRunner {
            sql: query.sql.clone(),
            line,
            shape,
            runtime: runtime.clone(),
            operator: operator.clone(),
            aggregating: aggregation.is_some(),
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

struct QueryRunner {
    sql: String,
    line: usize,
    shape: StreamShape,
    runtime: Arc<tokio::runtime::Runtime>,
    operator: String,
    aggregating: bool,
    sink: Sink,
}

impl QueryRunner {
    fn run(&self, cx: &BatchCx, chunks: &[RecordBatch]) -> Result<(), SqlError> {
        let batch = self.shape.decode(cx, chunks)?;
        let session =
            SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        session.register_batch(&self.shape.name, batch)?;
        let output = self.runtime.block_on(async {
            let plan: Arc<dyn ExecutionPlan> =
                session.sql(&self.sql).await?.create_physical_plan().await?;
            if !self.aggregating {
                return Ok::<_, SqlError>(collect(plan, session.task_ctx()).await?);
            }
            let agg = incremental::analyze(&plan)
                .map_err(|message| SqlError::Unsupported {
                    line: self.line,
                    message,
                })?
                .ok_or_else(|| SqlError::Plan {
                    line: self.line,
                    message: "the query lost its aggregation between batches".into(),
                })?;
            let cf = cx
                .checkpoint
                .cf(&format!("{STATE_CF_PREFIX}{}", self.operator))
                .map_err(PlanError::from)?;
            incremental::run_batch(&session, &plan, &agg, cx, cf).await
        })?;
        self.sink.write(cx, &output)
    }
}
