//! SQL jobs: results compared with plain DataFusion over the same input,
//! windows, joins, result tables, sinks, the example jobs, generated
//! queries and Nexmark.

#[path = "../common/mod.rs"]
mod common;
/// The DataFusion reference and in-process SQL runs: only this binary
/// includes them.
#[path = "../common/sql.rs"]
mod common_sql;

mod examples;
mod generated;
mod joins;
mod nexmark;
mod nexmark_suite;
mod queries;
mod result_tables;
mod sinks;
mod windows;
