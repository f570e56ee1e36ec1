//! Sluice's micro-batch engine: jobs as DStreams over Arrow record batches,
//! read in direct mode and committed exactly once with their offsets.
//!
//! From the bottom up (each module imports only those above it in this
//! list, and [`sluice_log`]):
//! - [`checkpoint`] — the job's RocksDB database: versioned schema, planned
//!   and committed batches, operator state, result tables.
//! - [`source`] — direct-mode sources: partitions read by explicit offset
//!   ranges into Arrow batches with Kafka's columns (embedded store
//!   in-process, rdkafka, generator, socket, file directory). A source
//!   returns its own [`source::SourceError`]; it never sees the plan.
//! - [`corpus`] — a seeded text generator (Zipf-distributed words) behind
//!   the generator source, the demos and the benchmarks.
//! - [`data`] — element types stored as Arrow columns (`String`, integers,
//!   pairs, `Record`, …) and their byte encodings for state.
//! - [`workers`] — one job on many worker processes: membership in the
//!   job's Kafka group and the sticky, state-aware assignment of its tasks.
//! - [`sink`] — writers of one batch: console text, result-table reads,
//!   and the topic and file sinks that write idempotently per batch id.
//! - [`plan`] — the DStream API (`map`, `reduce_by_key`, `window`,
//!   `map_with_state`, outputs …) and per-batch execution: narrow operators
//!   fused per partition, wide operators shuffled by key hash.
//! - [`driver`] — `StreamingContext` and the batch loop: plan ranges →
//!   checkpoint them → run tasks → one atomic commit → progress; rate
//!   control and backpressure.
//!
//! The engine never speaks the Kafka protocol as a server (that is
//! `sluice-broker`) and never plans SQL (that is `sluice-sql`).

pub mod checkpoint;
pub mod corpus;
pub mod data;
pub mod driver;
pub mod plan;
pub mod sink;
pub mod source;
pub mod workers;
