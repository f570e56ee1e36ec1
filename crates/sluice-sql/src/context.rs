//! A DataFusion session over one batch: each stream's rows as a table
//! (one partition per slice), the static tables, and Sluice's functions
//! (`split`, the window table functions). Planning and every batch's run
//! go through it, so both see the same tables and rules.
//!
//! This module owns the session's configuration; it never runs a query
//! and never touches state.

use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::catalog::TableProvider;
use datafusion::logical_expr::ScalarUDF;
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::error::SqlError;
use crate::window::{self, WindowUse};

/// A table a query may join: a file's rows, or a result table read per
/// batch.
#[derive(Clone)]
pub(crate) struct StaticTable {
    pub name: String,
    pub table: Arc<dyn TableProvider>,
    /// How its rows are read, for `sluice explain`.
    pub reading: &'static str,
}

/// The window functions a planned query called, filled in while
/// DataFusion plans it.
pub(crate) type WindowUses = Arc<Mutex<Vec<WindowUse>>>;

/// Every declared stream as empty slices: queries are planned over these
/// before any record is read.
pub(crate) fn empty_streams(
    shapes: &[crate::stream::StreamShape],
    slices: usize,
) -> Vec<(String, Vec<RecordBatch>)> {
    shapes
        .iter()
        .map(|shape| {
            (
                shape.name.clone(),
                vec![RecordBatch::new_empty(shape.schema.clone()); slices],
            )
        })
        .collect()
}

/// A session with the batch's rows of each stream as a table (one
/// partition per slice), the static tables, and the window functions.
pub(crate) fn session_over(
    streams: Vec<(String, Vec<RecordBatch>)>,
    tables: &[StaticTable],
    functions: &[ScalarUDF],
) -> Result<(SessionContext, WindowUses), SqlError> {
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
    // A single count(DISTINCT x) would become an aggregation over a
    // GROUP BY x: two aggregations where one keeps its values exactly.
    let logical_rules = datafusion::optimizer::Optimizer::new()
        .rules
        .into_iter()
        .filter(|rule| rule.name() != "single_distinct_aggregation_to_group_by")
        .collect();
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(config)
        .with_default_features()
        .with_optimizer_rules(logical_rules)
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
    for f in crate::scalar_functions() {
        session.register_udf(f);
    }
    // A job's own functions last: they replace built-ins of their name.
    for f in functions {
        session.register_udf(f.clone());
    }
    let uses = window::register(&session, Arc::new(streams.into_iter().collect()));
    Ok((session, uses))
}
