//! SQL over streams: a job written in SQL runs on the same driver,
//! sources, checkpoint and atomic commit as a Rust job.
//!
//! A script declares streams over topics (`CREATE STREAM … WITH (topic,
//! format)`), sinks (`CREATE SINK … WITH (type = 'console' | 'table')`) and
//! queries (`INSERT INTO sink SELECT …`, or a bare `SELECT` for the
//! console). Every batch, each stream's records are decoded into its
//! declared columns, DataFusion plans and runs each query over them, and
//! `GROUP BY` aggregates are merged with their state in RocksDB; result-table
//! writes and aggregate state join the batch's commit. Queries that cannot
//! run incrementally are refused when the job is submitted, before any
//! record is read.
//!
//! A job goes through small steps, each a module: [`script`] parses the
//! text into declarations; `planner` plans each query into a description
//! (checked by `checks` and `aggregation`) that `explain` prints and
//! `runner` runs every batch, with `incremental`, `session_window`, `join`
//! and `watermark` keeping state under the keys `state_keys` lays out.
//!
//! This crate owns the SQL surface; it never chooses offsets or commits
//! (the driver does), and never touches segment files.

mod aggregation;
mod checks;
mod context;
mod decl;
mod error;
mod explain;
mod flat_json;
mod functions;
mod incremental;
mod join;
mod options;
mod over;
mod pipeline;
mod planner;
mod ranked;
mod retraction;
mod runner;
pub mod script;
mod session_window;
mod sinks;
mod state_keys;
mod stream;
mod table;
mod topics;
mod topn;
mod watermark;
mod window;

use std::sync::Arc;

use sluice_engine::driver::StreamingContext;

/// The DataFusion the queries run on: user functions
/// ([`Script::register_udf`]) are built against this one.
pub use datafusion;
pub use error::SqlError;
use planner::Planner;
pub use script::Script;
use stream::StreamShape;
pub use topics::Topics;

/// Sluice's scalar functions (`split`, and Flink's `split_index`,
/// `regexp_extract`, `date_format`, `hour`), for a DataFusion session of
/// one's own: a batch query that must answer as a job's queries do.
pub fn scalar_functions() -> Vec<datafusion::logical_expr::ScalarUDF> {
    vec![
        functions::split(),
        functions::split_index(),
        functions::regexp_extract(),
        functions::date_format(),
        functions::hour(),
    ]
}

/// Sluice's window table functions (`TUMBLE`, `HOP`, and `SESSION`'s
/// per-row windows, before a job merges them into sessions) over `tables`
/// (stream name → its rows), for a DataFusion session of one's own: a
/// batch query that must window rows as a job's queries do.
pub fn register_window_functions(
    session: &datafusion::prelude::SessionContext,
    tables: std::collections::HashMap<String, Vec<datafusion::arrow::array::RecordBatch>>,
) {
    window::register(session, Arc::new(tables));
}

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
    if let Some(n) = script.max_records_per_batch {
        out.push_str(&format!(
            "job: SET 'max_records_per_batch' = '{n}': at most {n} records per partition per batch (the command line's --max-records-per-batch wins)\n"
        ));
    }
    build_or_explain(None, script, topics, Some(&mut out))?;
    Ok(out)
}

fn build_or_explain(
    ctx: Option<&StreamingContext>,
    script: &Script,
    topics: &Topics,
    mut explanation: Option<&mut String>,
) -> Result<Built, SqlError> {
    // DataFusion runs a batch's partitions on these threads, one per core.
    let slices = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = Arc::new(query_runtime(slices)?);
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
    // empty batches as every query is.
    let own_job = ctx.map(|c| table::OwnJob {
        name: c.config().name.clone(),
        checkpoint: c.config().checkpoint_path(),
    });
    let mut planner = Planner {
        script,
        shapes: &shapes,
        tables: &[],
        runtime: &runtime,
        slices,
    };
    let tables = Arc::new(table::load_all(
        script,
        &runtime,
        topics,
        own_job.as_ref(),
        |writer, known| planner.output_schema(writer, known),
    )?);
    planner.tables = &tables;
    let mut built = Built {
        holds_whole_batches: false,
    };
    let functions = Arc::new(script.functions.clone());
    let mut shared = ctx.map(|ctx| runner::Shared {
        ctx,
        topics,
        runtime: &runtime,
        tables: &tables,
        functions: &functions,
        slices,
        sources: Default::default(),
    });
    for (n, query) in script.queries.iter().enumerate() {
        let plan = planner.plan(n + 1, query)?;
        built.holds_whole_batches |= plan.holds_whole_batches();
        if let Some(out) = explanation.as_deref_mut() {
            explain::describe_plan(out, &plan, script, &tables, slices);
        } else if let Some(shared) = shared.as_mut() {
            runner::attach(shared, plan)?;
        }
    }
    Ok(built)
}

/// The threads DataFusion runs a batch's slices on.
fn query_runtime(threads: usize) -> Result<tokio::runtime::Runtime, SqlError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("sluice-sql")
        .enable_all()
        .build()
        .map_err(|e| SqlError::Plan {
            line: 1,
            message: format!("cannot start the query runtime: {e}"),
        })
}
