//! The log store's integration tests: crash recovery with real processes,
//! injected I/O failures and property tests of the store against a model.
//!
//! Only the log layer: neither this binary nor the helpers it includes
//! reference DataFusion or `sluice::sql`.

#[path = "../common/mod.rs"]
mod common;

mod compaction;
mod crash;
mod delete_records;
// Failpoints are process-global: run under nextest (a process per test).
#[cfg(feature = "failpoints")]
mod failpoints;
mod props;
