//! The declarations of a SQL job, as parsed: streams, tables, sinks and
//! queries with their `WITH` options and lines. Every later step (option
//! checks, planning, running) reads these.
//!
//! This module holds data only; it never parses, checks or plans, and
//! imports nothing of the crate.

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::Field;

/// A declared stream: a topic and how its values decode.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamDecl {
    pub name: String,
    /// Declared columns (for `json`: the value's fields; for `text`: at
    /// most one, the value as text).
    pub columns: Vec<Field>,
    pub options: BTreeMap<String, String>,
    /// `WATERMARK FOR column AS expression`: the column and the expression.
    pub watermark: Option<(String, String)>,
    /// `name AS PROCTIME()`: a column holding the batch's time, the
    /// stream's processing time (Flink's processing-time attribute).
    pub proctime: Option<String>,
}

/// A table queries join with their streams: a file (`CREATE TABLE …
/// WITH (path, format)`), loaded once when the job starts, or a result
/// table (`WITH (type = 'result', table, job)`), read per batch.
#[derive(Debug, Clone, PartialEq)]
pub struct TableDecl {
    pub name: String,
    /// Declared columns (may be empty for Parquet and result tables,
    /// which have a schema).
    pub columns: Vec<Field>,
    pub options: BTreeMap<String, String>,
    pub line: usize,
}

/// A declared sink.
#[derive(Debug, Clone, PartialEq)]
pub struct SinkDecl {
    pub name: String,
    pub options: BTreeMap<String, String>,
}

/// A query and where its results go.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryDecl {
    /// `None` for an ad-hoc `SELECT` (printed to the console).
    pub sink: Option<String>,
    pub sql: String,
    /// 1-based line of the query in the script (error messages).
    pub line: usize,
    /// 1-based column where the query starts on that line.
    pub column: usize,
}

/// A parsed job: its declarations and queries, in script order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    pub streams: Vec<StreamDecl>,
    pub sinks: Vec<SinkDecl>,
    pub queries: Vec<QueryDecl>,
    pub tables: Vec<TableDecl>,
    /// Output mode of bare `SELECT`s (`sluice sql --mode`); a sink's own
    /// `mode` option sets it for `INSERT INTO`.
    pub console_mode: Option<String>,
    /// Scalar functions a Rust job registered for its queries
    /// ([`Script::register_udf`]).
    pub functions: Vec<datafusion::logical_expr::ScalarUDF>,
    /// `SET 'max_records_per_batch' = 'N';`: the job's records per
    /// partition per batch, unless the command line sets it.
    pub max_records_per_batch: Option<u64>,
}
