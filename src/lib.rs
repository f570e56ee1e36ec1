//! Sluice: a micro-batch stream-processing engine with a bundled,
//! Kafka-compatible log store, in one Rust library and one binary.
//!
//! # Layout
//! - [`log`] — the bundled log store: topics, partitions, segments of Kafka
//!   RecordBatch v2 bytes with a sparse offset/time index, retention, flush
//!   policies and crash recovery. Synchronous; the only owner of data files.
//! - [`broker`] — `sluice broker`: the log store over the Kafka wire protocol
//!   (tokio), with idempotent producers and consumer groups.
//! - [`alloc`] — the binary's global allocator (lazy reservation of huge
//!   allocations, so a hostile length prefix cannot abort the broker).
//! - [`producer`] — client-side producing used by the CLI: Kafka's murmur2
//!   partitioner, RecordBatch v2 encoding (with compression), line sources
//!   including a `tail -F` follower.
//! - [`source`] — direct-mode sources: partitions read by explicit offset
//!   ranges into Arrow batches with Kafka's columns (embedded store
//!   in-process, rdkafka, generator, socket, file directory).
//! - [`plan`] — the DStream API (`map`, `reduce_by_key`, `window`,
//!   `map_with_state`, …) and per-batch execution: narrow operators fused
//!   per partition, wide operators shuffled by key hash.
//! - [`driver`] — `StreamingContext` and the batch loop: plan ranges →
//!   checkpoint them → run tasks → one atomic commit → progress; rate
//!   control and backpressure.
//! - [`checkpoint`] — the job's RocksDB database: versioned schema, planned
//!   and committed batches, operator state, result tables.
//! - [`sink`] — console output, RocksDB result tables, and the topic and
//!   file sinks that write outside the checkpoint idempotently per batch id.
//! - [`sql`] — SQL jobs over streams on DataFusion: `CREATE STREAM` (text,
//!   JSON, CSV; bad records skipped, failed on or dead-lettered; watermarks),
//!   `CREATE TABLE` (files, or result tables re-read each batch),
//!   `CREATE SINK` (console, table, topic, file, blackhole), `INSERT INTO …
//!   SELECT`, `GROUP BY` state merged across batches, event-time windows
//!   (tumbling, hopping, session), interval joins.
//! - [`nexmark`] — the Nexmark benchmark's events (people, auctions, bids)
//!   from a seed and an event number, loaded into the store as JSON.
//! - [`corpus`] — a seeded text generator (Zipf-distributed words) for demos
//!   and benchmarks.
//! - [`units`] — human sizes and durations for flags and configs.
//! - [`cli`] — the `sluice` command line: one file per subcommand. `main.rs`
//!   only parses arguments and reports errors.
//!
//! `ARCHITECTURE.md` at the repository root describes the data flow and the
//! on-disk format in more detail.

pub mod alloc;
pub mod broker;
pub mod checkpoint;
pub mod cli;
pub mod common;
pub mod corpus;
pub mod data;
pub mod driver;
pub mod log;
pub mod nexmark;
pub mod plan;
pub mod producer;
pub mod sink;
pub mod source;
pub mod sql;
pub mod units;
